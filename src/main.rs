//! `chatloop` binary: flags in, "listening on http://ADDR" out, then the loop for ever.

use chatloop::config::{self, Command};
use std::io::Write;

/// Descriptors kept back from `--max-conns`' default for the listener, logs and files.
const FD_MARGIN: usize = 64;

/// Listen backlog: the kernel caps it at net.core.somaxconn. A mass connect fills a short
/// backlog before the loop's first accept.
const BACKLOG: i32 = 4096;

/// Binds the listener as std would (SO_REUSEADDR on Unix), plus SO_REUSEPORT if asked.
fn listen(addr: std::net::SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

fn main() {
    // `chatloop token ...` mints a token (src/auth/cli.rs); anything else runs the server.
    if std::env::args().nth(1).as_deref() == Some("token") {
        std::process::exit(chatloop::auth::cli::main(std::env::args().skip(2)));
    }
    let cfg = match config::parse(std::env::args().skip(1)) {
        Ok(Command::Run(cfg)) => cfg,
        Ok(Command::Help) => {
            print!("{}", config::HELP);
            return;
        }
        Ok(Command::Version) => {
            println!("chatloop {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Err(e) => {
            eprintln!("chatloop: {e}");
            std::process::exit(2);
        }
    };
    let mut logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if cfg.log_timestamps {
        // env_logger's own timestamps need its "humantime" feature, which pulls in jiff for
        // one formatting call (ARCHITECTURE.md has the bytes); the format is otherwise its
        // default one, `[LEVEL target] message`.
        logger.format(|buf, r| {
            let ts = rfc3339_millis(std::time::SystemTime::now());
            writeln!(buf, "[{ts} {:<5} {}] {}", r.level(), r.target(), r.args())
        });
    }
    logger.init();

    let nofile = usize::try_from(chatloop::rlimit::raise_nofile_limit()).unwrap_or(usize::MAX);
    let max_conns = cfg.max_conns.unwrap_or(nofile.saturating_sub(FD_MARGIN).max(1));
    let listener = match listen(cfg.addr, cfg.reuse_port) {
        Ok(l) => l,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse && !cfg.reuse_port {
                " (to share the port between chatloop processes, give each --reuse-port and --redis)"
            } else {
                ""
            };
            eprintln!("chatloop: cannot listen on {}: {e}{hint}", cfg.addr);
            // Like a flag that cannot work: nothing started (see --help's exit statuses).
            std::process::exit(2);
        }
    };
    let addr = listener.local_addr().expect("bound socket has an address");
    listener.set_nonblocking(true).expect("set_nonblocking");
    let listener = mio::net::TcpListener::from_std(listener);
    log::info!(
        "limits: max-conns {max_conns}, max-message {} B, queue-cap {} B, rate-limit {}/s",
        cfg.max_message,
        cfg.queue_cap,
        cfg.rate_limit
    );
    log::info!("listening on http://{addr}");
    // Tests and scripts read this line for the port that --addr HOST:0 got.
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();

    let mut server = match chatloop::server::Server::new(*cfg, listener, max_conns) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chatloop: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = server.run() {
        eprintln!("chatloop: poll failed: {e}");
        std::process::exit(1);
    }
    // A graceful shutdown ends here, with status 0.
}

/// `2026-11-29T02:51:00.123Z`: RFC 3339 in UTC with milliseconds.
fn rfc3339_millis(t: std::time::SystemTime) -> String {
    let ms = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let (secs, ms) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's days_from_civil, inverted).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::rfc3339_millis;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |ms: u64| rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z", "leap day");
        assert_eq!(at(1_795_920_660_123), "2026-11-29T02:51:00.123Z");
        assert_eq!(at(4_107_542_399_999), "2100-02-28T23:59:59.999Z", "2100 is no leap year");
        assert_eq!(at(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
    }
}
