//! The connect phase read as a handshake-rate measurement (issue 24's sign-in bench,
//! `scripts/bench-signin.sh`): every held client's TCP connect, WebSocket upgrade (with its
//! `--token-key` token, minted before the phase: `Engine::premint`) and welcome,
//! `--connect-concurrency` at a time. One line: how many were welcomed, how fast, and with `--pid` the server's CPU
//! per handshake over that phase alone, before any load starts.

use crate::procstat::{Sample, own_cpu_seconds};
use std::time::Duration;

/// `handshakes welcomed=N secs=S per_sec=R load_cpu_s=C [server_cpu_s=X server_cpu_us_per_handshake=U]`,
/// `before` and `after` being the server's samples at the start and the end of the phase.
pub fn report(welcomed: u64, took: Duration, before: Option<Sample>, after: Option<Sample>) {
    let secs = took.as_secs_f64().max(1e-9);
    let mut line = format!(
        "handshakes welcomed={welcomed} secs={secs:.3} per_sec={:.0} load_cpu_s={:.3}",
        welcomed as f64 / secs,
        // Since start-up: the tokens' minting included, then the connect phase.
        own_cpu_seconds()
    );
    if let (Some(b), Some(a)) = (before, after) {
        let cpu = a.cpu_s - b.cpu_s;
        let per = if welcomed > 0 { cpu * 1e6 / welcomed as f64 } else { 0.0 };
        line += &format!(" server_cpu_s={cpu:.3} server_cpu_us_per_handshake={per:.1}");
    }
    println!("{line}");
}
