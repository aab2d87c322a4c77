//! Issue 21, item 1: a flood of one-line room logs (throwaway ids each join fresh rooms, post
//! one line in each and close) must neither freeze the loop once `--history-bytes` is reached
//! nor hold more memory than the budget allows.

use crate::util::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Rooms each throwaway id makes: 19 joins and 19 messages stay inside the default burst of 40
/// (`--rate-limit 20`), and 20 rooms with the lobby inside `--max-rooms-per-user 32`.
const ROOMS_PER_ID: usize = 19;

/// One throwaway id: handshake, 19 joins and 19 one-line messages in one write, its close
/// frame, then it waits for the server's close (so every frame was read and acted on).
/// Returns whether the server answered within the read timeout.
fn throwaway(s: &Server, n: usize) -> bool {
    let mut t = s.raw_ws(&format!("fl{n}"));
    let mut out = Vec::new();
    for k in 0..ROOMS_PER_ID {
        let room = format!("h{n}x{k}");
        out.extend(masked(0x1, json!({"join": room}).to_string().as_bytes()));
        out.extend(masked(0x1, json!({"room": room, "text": "x"}).to_string().as_bytes()));
    }
    out.extend(masked(0x8, &1000u16.to_be_bytes()));
    if t.write_all(&out).is_err() {
        return false;
    }
    drain_until_close(&mut t)
}

/// Reads (and discards) until the server closes the socket.
fn drain_until_close(t: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16384];
    loop {
        match t.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn a_flood_of_one_line_logs_neither_freezes_the_loop_nor_outgrows_the_budget() {
    const BUDGET: usize = 1 << 20;
    const FLOODERS: usize = 3;
    const IDS: usize = 2400; // 45,600 one-line logs: ~45 budgets' worth at real cost
    let s = Arc::new(Server::start(&["--history-bytes", &BUDGET.to_string()]));
    let mut watcher = s.join("watcher");
    watcher.send(&json!({"join": "calm"}));
    watcher.next_of("joined");
    let rss0 = s.rss_kb();

    let (done, made, stuck) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let end = Instant::now() + Duration::from_secs(12);
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|f| {
            let (s, made, stuck) = (Arc::clone(&s), Arc::clone(&made), Arc::clone(&stuck));
            thread::spawn(move || {
                // The flood's own CPU yields to the server's: what is measured is the loop,
                // not this test's threads crowding two cores.
                // SAFETY: setpriority on this thread's own tid.
                unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10) };
                for n in (f..IDS).step_by(FLOODERS) {
                    if Instant::now() > end {
                        break;
                    }
                    if throwaway(&s, n) {
                        made.fetch_add(ROOMS_PER_ID, Ordering::Relaxed);
                    } else {
                        stuck.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let sampler = {
        let (s, done) = (Arc::clone(&s), Arc::clone(&done));
        thread::spawn(move || {
            let mut peak = 0;
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(s.rss_kb());
                thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };

    // The bystander's round trip, every ~50 ms while the flood runs. A frozen loop shows as
    // the client's 5 s read timeout (a panic in `next_of`), so each probe is bounded too.
    // A probe of 100 ms or more is the loop's fault when the server was on a CPU for 100 ms
    // of it (its turns were that long: the unfixed shed ran 1.4 s at 100% CPU); one where it
    // was not is this shared two-core machine running something else (seen: 144 ms with 0 ms
    // of server CPU, at a load average of 8-11). Both are printed.
    let (mut worst, mut probes, mut slow, mut busy) = (Duration::ZERO, 0, 0, 0.0f64);
    let mut n = 0;
    while flooders.iter().any(|f| !f.is_finished()) && Instant::now() < end + Duration::from_secs(5) {
        n += 1;
        let (t0, cpu0) = (Instant::now(), s.cpu_secs());
        watcher.send(&json!({"room": "calm", "text": format!("p{n}")}));
        let rt = loop {
            let l = watcher.next_of("message");
            if l["text"] == format!("p{n}") {
                break t0.elapsed();
            }
        };
        if rt >= Duration::from_millis(100) {
            let cpu = s.cpu_secs() - cpu0;
            println!("slow probe: {rt:?}, server on CPU {:.0} ms of it", cpu * 1e3);
            (slow, busy) = (slow + 1, busy.max(cpu));
        }
        (worst, probes) = (worst.max(rt), probes + 1);
        thread::sleep(Duration::from_millis(50));
    }
    for f in flooders {
        f.join().unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let m = s.metrics();
    let (kept, bytes) = (m["chatloop_history_messages"], m["chatloop_history_bytes"]);
    let logs = made.load(Ordering::Relaxed);
    // What the budget allows: itself, once more for what glibc keeps of freed lines and logs
    // (holes between survivors), and 4 MiB for everything else the flood leaves behind
    // (request heads, outboxes, rate-limit buckets of the ids). Measured: +1.8 MB; before
    // the fix +10.5 MB for half the flood (the loop stalled), and growing with it.
    let bound_kb = rss0 + 2 * BUDGET as u64 / 1024 + 4 * 1024;
    println!(
        "flood: {logs} one-line logs from {} ids ({} stuck); bystander: {probes} probes, worst {worst:?}, {slow} >= 100 ms (most server CPU in one: {:.0} ms); \
         RSS {rss0} kB -> peak {peak} kB (bound {bound_kb} kB); history kept {kept} lines, {bytes} B charged",
        logs / ROOMS_PER_ID,
        stuck.load(Ordering::Relaxed),
        busy * 1e3,
    );
    assert!(probes >= 20, "{probes} probes");
    assert!(
        busy < 0.1,
        "a bystander waited {worst:?} while the server was on a CPU for {:.0} ms of a probe",
        busy * 1e3
    );
    // Whoever is to blame, a second is a freeze (the unfixed shed: 1.4-4.4 s).
    assert!(worst < Duration::from_secs(1), "a bystander waited {worst:?}");
    assert!(peak <= bound_kb, "RSS peaked at {peak} kB, over {bound_kb} kB");
    assert!(bytes <= BUDGET as f64, "charged {bytes} B over the budget");
    assert!(logs >= 20 * BUDGET / 1000, "the flood made too few logs to test anything: {logs}");
    assert_eq!(stuck.load(Ordering::Relaxed), 0, "every throwaway id got its close");
}
