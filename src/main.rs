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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

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
            std::process::exit(1);
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
