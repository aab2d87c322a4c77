//! `chatloop` binary: flags in, "listening on http://ADDR" out, then the loop for ever.

use chatloop::config::{self, Command};
use std::io::Write;

/// Descriptors kept back from `--max-conns`' default for the listener, logs and files.
const FD_MARGIN: usize = 64;

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

    let nofile = raise_nofile_limit();
    let max_conns = cfg.max_conns.unwrap_or(nofile.saturating_sub(FD_MARGIN).max(1));
    let listener = match std::net::TcpListener::bind(cfg.addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chatloop: cannot listen on {}: {e}", cfg.addr);
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

/// Raises the soft open-file limit to the hard one, as Go's runtime does, and returns it.
fn raise_nofile_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}
