//! chatload: drives thousands of WebSocket clients against chatloop from one mio loop and
//! reports what arrived, how fast, and what it cost the server. See `--help` (args.rs).

// A crate root's modules live beside it, so the modules' directory is named explicitly.
#[path = "chatload/abuse.rs"]
mod abuse;
#[path = "chatload/args.rs"]
mod args;
#[path = "chatload/attack.rs"]
mod attack;
#[path = "chatload/engine.rs"]
mod engine;
#[path = "chatload/handshakes.rs"]
mod handshakes;
#[path = "chatload/lines.rs"]
mod lines;
#[path = "chatload/net.rs"]
mod net;
#[path = "chatload/procstat.rs"]
mod procstat;
#[path = "chatload/token.rs"]
mod token;

use args::{Args, Parsed};
use engine::Engine;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

/// The hard deadline is warmup + duration + drain + this.
const DEADLINE_SLACK: Duration = Duration::from_secs(30);

fn main() {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => {
            print!("{}", args::HELP);
            return;
        }
        Ok(Parsed::Version) => {
            println!("chatload {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Err(e) => {
            eprintln!("chatload: {e}");
            std::process::exit(2);
        }
    };
    // A --pid that is not the server would report some other process's CPU as the server's.
    for &pid in &args.pids {
        if procstat::listens_on(pid, args.addr.port()) == Some(false) {
            eprintln!(
                "chatload: --pid {pid} does not listen on port {}: is it the server?",
                args.addr.port()
            );
            std::process::exit(2);
        }
    }
    let nofile = chatloop::rlimit::raise_nofile_limit();
    let needed = args.conns as u64 + (args.churn * (args.churn_hold.as_secs_f64() + 10.0)) as u64 + 64;
    if nofile < needed {
        eprintln!(
            "chatload: warning: open-file limit {nofile} is below the ~{needed} descriptors this run may need"
        );
    }
    let budget = args.warmup + args.duration + args.drain + DEADLINE_SLACK;
    std::thread::spawn(move || {
        std::thread::sleep(budget);
        eprintln!("chatload: hard deadline of {:.0} s reached, giving up", budget.as_secs_f64());
        println!("summary aborted=hard_deadline");
        let _ = std::io::stdout().flush();
        std::process::exit(3);
    });
    let result = if args.abuse.is_some() {
        run_abuse(&args)
    } else if args.attack.is_some() {
        run_attack(&args)
    } else {
        run(&args)
    };
    match result {
        Ok(ok) => std::process::exit(if ok { 0 } else { 1 }),
        Err(e) => {
            eprintln!("chatload: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs the phases and prints the report. `Ok(true)` when every check passed.
fn run(args: &Args) -> std::io::Result<bool> {
    let t0 = Instant::now();
    let before = procstat::sample_start(&args.pids)?;
    println!("{}", describe(args));
    let mut e = Engine::new(args, t0)?;
    e.premint();
    let connecting = Instant::now();
    e.connect_phase(Instant::now() + args.warmup)?;
    println!("connected {} of {} clients in {:.2} s", e.live_count(), args.conns, t0.elapsed().as_secs_f64());
    let _ = std::io::stdout().flush();
    let at_start = procstat::sample_all(&args.pids);
    handshakes::report(e.live_count(), connecting.elapsed(), before, at_start);
    let own_start = procstat::own_cpu_seconds();
    let window_start = e.run_phase(args.duration)?;
    e.drain_phase(args.drain)?;
    let at_end = procstat::sample_all(&args.pids);
    let own_cpu = procstat::own_cpu_seconds() - own_start;
    let window = window_start.elapsed();
    let open_at_end = e.open_count();
    e.close_phase()?;

    let c = &e.counts;
    let lost = c.expected.saturating_sub(c.delivered);
    let extra = c.delivered.saturating_sub(c.expected);
    let sent = c.sent_room + c.sent_private;
    let connect_errors: u64 = c.connect_errors.values().sum();
    let unexpected: u64 = c.unexpected_closes.values().sum();
    let deliveries_per_sec = match (e.last_delivery, c.delivered) {
        (Some(last), n) if n > 0 => n as f64 / last.duration_since(window_start).as_secs_f64().max(1e-9),
        _ => 0.0,
    };
    let offered_per_sec = c.expected as f64 / args.duration.as_secs_f64();
    let l = &e.latency;
    let [p50, p99, p999, max_us] = engine::quantiles_us(&l.arrival);
    let [r50, r99, r999, rmax] = engine::quantiles_us(&l.read);
    let [_, d99, d999, _] = engine::quantiles_us(&l.delay);

    println!(
        "messages: sent {sent} (room {}, private {}), expected deliveries {}, delivered {}, lost {lost}{}",
        c.sent_room,
        c.sent_private,
        c.expected,
        c.delivered,
        if extra > 0 { format!(", EXTRA {extra}") } else { String::new() }
    );
    println!(
        "checks: reordered or duplicate {}, skipped sends {}, not ours {}, to late joiners {}{}",
        c.reordered,
        c.skipped_sends,
        c.foreign,
        c.uncounted,
        if args.rooms > 0 {
            format!(", MISROUTED (outside their room) {}", c.misrouted)
        } else {
            String::new()
        }
    );
    println!(
        "throughput: {deliveries_per_sec:.0} deliveries/s (offered {offered_per_sec:.0}/s); send lag max {} us; \
         chatload's own cpu {own_cpu:.2} s ({:.0}% of one core)",
        c.max_send_lag_ns / 1000,
        100.0 * own_cpu / window.as_secs_f64()
    );
    println!(
        "latency (send to arrival at the receiving socket, by the kernel's stamp): p50 {p50} us, p99 {p99} us, \
         p99.9 {p999} us, max {max_us} us ({} samples, {} stamped by the kernel)",
        l.arrival.len(),
        l.stamped
    );
    println!(
        "latency (send to chatload's read): p50 {r50} us, p99 {r99} us, p99.9 {r999} us, max {rmax} us; \
         chatload's own read delay p99 {d99} us, p99.9 {d999} us"
    );
    println!(
        "connections: {} ready, peak open {}, open at end {open_at_end}; connect errors: {}; unexpected closes: {}",
        c.ready,
        c.peak_open,
        map_or_none(&c.connect_errors),
        map_or_none(&c.unexpected_closes)
    );
    println!(
        "server errors: {}; churn: started {}, completed {}, skipped {}; close timeouts {}",
        map_or_none(&c.server_errors),
        c.churn_started,
        c.churn_completed,
        c.churn_skipped,
        c.close_timeouts
    );
    let faults = e.outcomes.as_ref().map(|o| o.tally());
    if let Some(t) = &faults {
        println!(
            "faults: {} room messages missed some receiver; their senders got {} cluster_unavailable and {} \
             cluster_unconfirmed; unreported {}, over-reported {}, duplicates {}",
            t.short, t.unavailable, t.unconfirmed, t.unreported, t.overreported, t.duplicates
        );
    }
    let blip = e.blip_tally();
    if let Some(b) = &blip {
        println!(
            "blip: {} blips ({} skipped: not up at their moment), resumed {}, failed {}, still away {}; \
             resume p50 {} us, p99 {} us, max {} us",
            b.blips,
            b.blips_skipped,
            b.resumed,
            b.resume_failed,
            b.pending,
            b.resume_p50_us,
            b.resume_p99_us,
            b.resume_max_us
        );
        println!(
            "blip: room seqs 1..{}: lost {} (at {} clients), duplicated {}, reordered {}, replayed {}; gap lines {} \
             declaring {} seqs gone; unasked {}; epoch changes {}",
            b.final_seq,
            b.lost,
            b.clients_with_losses,
            b.duplicated,
            b.reordered,
            b.replayed,
            b.gap_lines,
            b.gap_seqs,
            b.unasked,
            b.epoch_changes
        );
        if args.modes.private {
            println!(
                "blip: private: lost {} (the server echoed them to their sender), pseq holes {}, duplicated {}, \
                 replayed {}",
                b.private_lost, b.private_holes, b.private_duplicated, b.private_replayed
            );
        }
    }
    if let Some(hint) = rate_limit_hint(lost, &c.server_errors, args.rate) {
        println!("{hint}");
    }
    let mut server = String::new();
    if !args.pids.is_empty() {
        let pid = args.pids.iter().map(u32::to_string).collect::<Vec<_>>().join("+");
        match (before, at_start, at_end) {
            (Some(b), Some(s), Some(end)) => {
                let cpu = end.cpu_s - s.cpu_s;
                let secs = window.as_secs_f64();
                let per_delivery = if c.delivered > 0 {
                    format!("{:.3}", cpu * 1e6 / c.delivered as f64)
                } else {
                    "0".into()
                };
                println!(
                    "server pid {pid}: cpu {cpu:.2} s over {secs:.2} s ({:.0}%), {per_delivery} us cpu/delivery; \
                     rss {} kB (before connecting {} kB), {} fds",
                    100.0 * cpu / secs,
                    end.rss_kb,
                    b.rss_kb,
                    end.fds
                );
                server = format!(
                    " server_alive=1 server_cpu_s={cpu:.3} server_cpu_us_per_delivery={per_delivery} \
                     server_rss_kb={} server_rss_start_kb={} server_fds={}",
                    end.rss_kb, b.rss_kb, end.fds
                );
            }
            _ => {
                println!("server pid {pid}: GONE during the run");
                server = " server_alive=0".into();
            }
        }
    }
    // Under --faults, losses and late arrivals are expected: each must have been reported.
    let delivery_ok = match &faults {
        Some(t) => t.unreported == 0 && t.overreported == 0 && t.duplicates == 0,
        None => lost == 0 && c.reordered == 0,
    };
    let fault_fields = faults.as_ref().map_or(String::new(), |t| {
        format!(
            " short={} cluster_unavailable={} cluster_unconfirmed={} unreported={} overreported={} duplicates={}",
            t.short, t.unavailable, t.unconfirmed, t.unreported, t.overreported, t.duplicates
        )
    });
    let blip_ok = blip.as_ref().is_none_or(|b| {
        b.lost == 0
            && b.duplicated == 0
            && b.reordered == 0
            && b.unasked == 0
            && b.resume_failed == 0
            && b.pending == 0
            && b.resumed == b.blips
            && b.private_lost == 0
            && b.private_holes == 0
            && b.private_duplicated == 0
    });
    let blip_fields = blip.as_ref().map_or(String::new(), |b| {
        format!(
            " blips={} blips_skipped={} resumed={} resume_failed={} blip_pending={} blip_lost={} blip_duplicated={} \
             blip_reordered={} gaps={} gap_seqs={} unasked={} epoch_changes={} replayed={} final_seq={} \
             private_lost={} private_holes={} private_duplicated={} private_replayed={} resume_p99_us={}",
            b.blips,
            b.blips_skipped,
            b.resumed,
            b.resume_failed,
            b.pending,
            b.lost,
            b.duplicated,
            b.reordered,
            b.gap_lines,
            b.gap_seqs,
            b.unasked,
            b.epoch_changes,
            b.replayed,
            b.final_seq,
            b.private_lost,
            b.private_holes,
            b.private_duplicated,
            b.private_replayed,
            b.resume_p99_us
        )
    });
    let ok = delivery_ok
        && blip_ok
        && extra == 0
        && unexpected == 0
        && connect_errors == 0
        && c.close_timeouts == 0
        && c.misrouted == 0
        && !server.contains("server_alive=0");
    // Only with --rooms, so that the summary of a run without it is what it always was.
    let rooms = if args.rooms > 0 {
        format!(" rooms={} misrouted={}", args.rooms, c.misrouted)
    } else {
        String::new()
    };
    println!(
        "summary mode={} conns={} ready={} sent={sent} expected={} delivered={} lost={lost} extra={extra} \
         reordered={} unexpected_closes={unexpected} close_codes={} connect_errors={connect_errors} \
         server_errors={} churn_started={} churn_completed={} deliveries_per_sec={deliveries_per_sec:.0} \
         offered_per_sec={offered_per_sec:.0} p50_us={p50} p99_us={p99} p999_us={p999} max_us={max_us} \
         read_p50_us={r50} read_p99_us={r99} read_p999_us={r999} read_delay_p99_us={d99} \
         read_delay_p999_us={d999} stamped={} \
         close_timeouts={} window_s={:.3} peak_open={} load_cpu_s={own_cpu:.3}{rooms}{server}{fault_fields}{blip_fields} ok={}",
        mode_name(args),
        args.conns,
        c.ready,
        c.expected,
        c.delivered,
        c.reordered,
        compact(&c.unexpected_closes),
        c.server_errors.values().sum::<u64>(),
        c.churn_started,
        c.churn_completed,
        l.stamped,
        c.close_timeouts,
        window.as_secs_f64(),
        c.peak_open,
        u8::from(ok)
    );
    let _ = std::io::stdout().flush();
    Ok(ok)
}

/// `--attack`: runs it and prints what it achieved. `Ok(true)` when every attacker connected
/// (what the server then did to them is the finding, not a failure).
fn run_attack(args: &Args) -> std::io::Result<bool> {
    let kind = args.attack.as_ref().expect("--attack").kind;
    let before = procstat::sample_start(&args.pids)?;
    let start = Instant::now();
    let t = attack::run(args)?;
    let window = start.elapsed().as_secs_f64();
    let after = procstat::sample_all(&args.pids);
    let connect_errors: u64 = t.connect_errors.values().sum();
    println!(
        "attack {}: {} frames sent ({:.1} MB) in {window:.2} s ({:.0}/s); received {} pongs, {} private echoes",
        kind.name(),
        t.frames_sent,
        t.bytes_sent as f64 / 1e6,
        t.frames_sent as f64 / window.max(1e-9),
        t.pongs,
        t.echoes
    );
    println!(
        "attack {}: server errors: {}; close codes: {}; write errors: {}; connect errors: {}",
        kind.name(),
        map_or_none(&t.errors),
        map_or_none(&t.close_codes),
        map_or_none(&t.write_errors),
        map_or_none(&t.connect_errors)
    );
    if t.connected > 0 && window < args.duration.as_secs_f64() * 0.99 {
        println!(
            "attack {}: the server ended every attacker's connection after {window:.2} s of the {:.2} s asked",
            kind.name(),
            args.duration.as_secs_f64()
        );
    }
    let mut server = String::new();
    if !args.pids.is_empty() {
        let pid = args.pids.iter().map(u32::to_string).collect::<Vec<_>>().join("+");
        match (before, after) {
            (Some(b), Some(a)) => {
                let cpu = a.cpu_s - b.cpu_s;
                println!(
                    "server pid {pid}: cpu {cpu:.2} s over {window:.2} s ({:.0}%); rss {} kB (before {} kB), {} fds",
                    100.0 * cpu / window.max(1e-9),
                    a.rss_kb,
                    b.rss_kb,
                    a.fds
                );
                server = format!(
                    " server_alive=1 server_cpu_s={cpu:.3} server_rss_kb={} server_rss_start_kb={}",
                    a.rss_kb, b.rss_kb
                );
            }
            _ => {
                println!("server pid {pid}: GONE during the attack");
                server = " server_alive=0".into();
            }
        }
    }
    let ok = t.connected == args.conns as u64;
    println!(
        "summary attack={} conns={} connected={} frames_sent={} bytes_sent={} frames_per_sec={:.0} pongs={} \
         echoes={} server_errors={} error_codes={} close_codes={} write_errors={} connect_errors={connect_errors} \
         window_s={window:.3}{server} ok={}",
        kind.name(),
        args.conns,
        t.connected,
        t.frames_sent,
        t.bytes_sent,
        t.frames_sent as f64 / window.max(1e-9),
        t.pongs,
        t.echoes,
        t.errors.values().sum::<u64>(),
        compact(&t.errors),
        compact(&t.close_codes),
        t.write_errors.values().sum::<u64>(),
        u8::from(ok)
    );
    let _ = std::io::stdout().flush();
    Ok(ok)
}

/// `--mode abuse`: runs it and prints what each attack achieved, and the server's CPU and RSS.
/// `Ok(true)` when it ran: what the server did to the attackers is the finding, not a failure.
fn run_abuse(args: &Args) -> std::io::Result<bool> {
    let before = procstat::sample_start(&args.pids)?;
    let start = Instant::now();
    let report = abuse::run(args)?;
    let window = start.elapsed().as_secs_f64();
    let after = procstat::sample_all(&args.pids);
    for line in &report.lines {
        println!("{line}");
    }
    let mut server = String::new();
    if !args.pids.is_empty() {
        match (before, after) {
            (Some(b), Some(a)) => {
                let cpu = a.cpu_s - b.cpu_s;
                println!(
                    "server: cpu {cpu:.2} s over {window:.2} s ({:.0}%); rss {} kB (before {} kB), {} fds",
                    100.0 * cpu / window.max(1e-9),
                    a.rss_kb,
                    b.rss_kb,
                    a.fds
                );
                server = format!(" server_alive=1 server_cpu_s={cpu:.3} server_rss_kb={}", a.rss_kb);
            }
            _ => {
                println!("server: GONE during the abuse");
                server = " server_alive=0".into();
            }
        }
    }
    println!("summary mode=abuse {} window_s={window:.3}{server}", report.fields);
    let _ = std::io::stdout().flush();
    Ok(true)
}

fn mode_name(a: &Args) -> String {
    let mut parts = Vec::new();
    if a.modes.blip {
        parts.push("blip");
    } else if a.modes.room {
        parts.push("room");
    }
    if a.modes.private {
        parts.push("private");
    }
    if parts.is_empty() {
        parts.push("idle");
    }
    if a.modes.churn {
        parts.push("churn");
    }
    parts.join(",")
}

fn describe(a: &Args) -> String {
    let mut s = format!("chatload: ws://{}/ws, mode {}, {} clients", a.host, mode_name(a), a.conns);
    if let Some(few) = a.conns.checked_div(a.rooms) {
        let many = a.conns.div_ceil(a.rooms);
        let each = if few == many { few.to_string() } else { format!("{few}-{many}") };
        s += &format!(" in {} rooms (r0..r{}, {each} clients each, and lobby)", a.rooms, a.rooms - 1);
    }
    if a.modes.room {
        s += &format!(", {} room senders at {}/s", a.senders, a.rate);
        if a.rooms > 0 {
            s += " to their own room";
        }
    }
    if a.modes.private {
        s += &format!(", {} private pairs at {}/s each way", a.conns / 2, a.rate);
    }
    if a.modes.churn {
        s += &format!(", churn {}/s holding {:.1} s", a.churn, a.churn_hold.as_secs_f64());
    }
    if a.modes.blip {
        match a.blip.rate {
            Some(r) => s += &format!(", blips at {r}/s"),
            None => s += ", each client blips once",
        }
        s += &format!(" ({:?}), away up to {:.1} s", a.blip.how, a.blip.down.as_secs_f64());
    }
    s += &format!(
        "; warmup <= {:.1} s, window {:.1} s, drain <= {:.1} s",
        a.warmup.as_secs_f64(),
        a.duration.as_secs_f64(),
        a.drain.as_secs_f64()
    );
    s
}

fn map_or_none<K: std::fmt::Display>(m: &BTreeMap<K, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", ")
}

/// `1008:3,4409:1`, or `none`: one token for the summary line.
fn compact<K: std::fmt::Display>(m: &BTreeMap<K, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(",")
}

/// When messages were lost and the server refused some as `rate_limited`, the cause is most
/// likely the server's own flood limit, not a fault: say which knob to turn.
fn rate_limit_hint(lost: u64, server_errors: &BTreeMap<String, u64>, rate: f64) -> Option<String> {
    let refused = server_errors.get("rate_limited").copied().unwrap_or(0);
    if lost == 0 || refused == 0 {
        return None;
    }
    Some(format!(
        "hint: the server refused {refused} message(s) with rate_limited, which explains losses: \
         its --rate-limit (default 20/s per client, burst 40) is below this run's --rate {rate}/s \
         per sender; start the server with --rate-limit 0 (off) or above {rate}, or lower --rate"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_losses_get_a_hint() {
        let mut errors = BTreeMap::new();
        assert_eq!(rate_limit_hint(5, &errors, 50.0), None);
        errors.insert("rate_limited".to_string(), 7);
        assert_eq!(rate_limit_hint(0, &errors, 50.0), None, "nothing lost, nothing to explain");
        let hint = rate_limit_hint(5, &errors, 50.0).unwrap();
        assert!(
            hint.contains("--rate-limit") && hint.contains("--rate 50/s") && hint.contains("7"),
            "{hint}"
        );
        errors.clear();
        errors.insert("too_long".to_string(), 7);
        assert_eq!(rate_limit_hint(5, &errors, 50.0), None);
    }
}
