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

    let nofile = usize::try_from(chatloop::rlimit::raise_nofile_limit()).unwrap_or(usize::MAX);
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
