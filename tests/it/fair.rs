//! The fair loop: each attack from the fairness issue, run against default flags, must hurt
//! nobody but the attacker. Each test prints the numbers it measured.

use crate::util::*;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// The tests here measure latency under attack: one at a time, so that they measure the
/// server and not each other.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads lines until `want` messages of type `message` arrived or the connection closed;
/// returns (messages, errors by code, close code if any).
fn collect(c: &mut Client, want: usize, limit: Duration) -> (usize, Vec<String>, Option<u16>) {
    let end = Instant::now() + limit;
    let (mut got, mut errors) = (0, Vec::new());
    c.ws.get_mut().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    while got < want && Instant::now() < end {
        match c.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                for l in t.split('\n') {
                    let v: Value = serde_json::from_str(l).unwrap();
                    match v["type"].as_str() {
                        Some("message") => got += 1,
                        Some("error") => errors.push(v["code"].as_str().unwrap_or("").to_string()),
                        _ => {}
                    }
                }
            }
            Ok(tungstenite::Message::Close(f)) => return (got, errors, f.map(|f| u16::from(f.code))),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (got, errors, Some(0)),
        }
    }
    (got, errors, None)
}

#[test]
fn a_burst_within_the_rate_limit_disconnects_nobody_who_reads() {
    let _one = serial();
    // Attack 1: 8 senders each send 40 room messages of about 1 KB at once (within the burst
    // of 40 and within --max-text); a ninth client only reads.
    let s = Server::start(&[]);
    let text = "x".repeat(990);
    let mut reader = s.join("reader");
    let barrier = Arc::new(Barrier::new(8));
    let senders: Vec<_> = (0..8)
        .map(|i| {
            let mut c = s.join(&format!("sender{i}"));
            let (barrier, text) = (barrier.clone(), text.clone());
            thread::spawn(move || {
                let frames: Vec<u8> =
                    (0..40).flat_map(|_| masked(0x1, json!({"text": text}).to_string().as_bytes())).collect();
                barrier.wait();
                c.ws.get_mut().write_all(&frames).unwrap();
                collect(&mut c, 320, Duration::from_secs(20))
            })
        })
        .collect();
    let (got, errors, closed) = collect(&mut reader, 320, Duration::from_secs(20));
    println!("reader: {got} of 320 messages, errors {errors:?}, close {closed:?}");
    assert_eq!((got, closed), (320, None), "the reader kept up and must get every message");
    for (i, h) in senders.into_iter().enumerate() {
        let (got, errors, closed) = h.join().unwrap();
        println!("sender{i}: {got} of 320, errors {errors:?}, close {closed:?}");
        assert_eq!((got, closed), (320, None));
    }
    assert_eq!(s.metrics()["chatloop_disconnects_total{reason=\"slow_consumer\"}"], 0.0);
}

#[test]
fn a_private_flood_costs_the_senders_and_the_victim_keeps_its_id() {
    let _one = serial();
    // Attack 2: two connections each send 40 private messages of 1,000 emoji (~4 KB) to one
    // healthy reader at the same moment; a thief then tries to take the victim's id.
    let s = Server::start(&[]);
    let mut victim = s.join("victim");
    let mut friend = s.join("friend");
    let emoji = "😀".repeat(1000);
    let barrier = Arc::new(Barrier::new(2));
    let floods: Vec<_> = (0..2)
        .map(|i| {
            let mut c = s.join(&format!("flooder{i}"));
            let (barrier, emoji) = (barrier.clone(), emoji.clone());
            thread::spawn(move || {
                let line = json!({"to": "victim", "text": emoji}).to_string();
                let frames: Vec<u8> = (0..40).flat_map(|_| masked(0x1, line.as_bytes())).collect();
                barrier.wait();
                c.ws.get_mut().write_all(&frames).unwrap();
                // Every message ends as the sender's own copy or as one recipient_busy.
                let (copies, errors, closed) = collect(&mut c, 40, Duration::from_secs(5));
                let busy = errors.iter().filter(|e| *e == "recipient_busy").count();
                (copies, busy, errors.len(), closed)
            })
        })
        .collect();
    let mut outcomes = 0;
    for h in floods {
        let (copies, busy, errors, closed) = h.join().unwrap();
        println!("flooder: {copies} delivered, {busy} recipient_busy, {errors} errors, close {closed:?}");
        assert_eq!(errors, busy, "no other error");
        assert_eq!(closed, None);
        outcomes += copies + busy;
    }
    let (got, _, closed) = collect(&mut victim, 80, Duration::from_secs(2));
    println!("victim: {got} messages, close {closed:?}");
    assert_eq!(closed, None, "a reader is never dropped for what others send it");
    assert_eq!(outcomes, 80, "each message delivered or refused to its sender");
    // The id stays the victim's, and its friend still reaches it.
    let mut thief = s.connect("victim");
    assert_eq!(thief.next_line()["code"], "id_taken");
    friend.send(&json!({"to": "victim", "text": "still you?"}));
    victim.ws.get_mut().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        let l = victim.next_line();
        if l["text"] == "still you?" {
            break;
        }
    }
}

/// The resume token from a welcome read off a raw socket.
fn raw_welcome(t: &mut TcpStream) -> Value {
    let mut h = [0u8; 2];
    t.read_exact(&mut h).unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            t.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut body = vec![0u8; len];
    t.read_exact(&mut body).unwrap();
    let v: Value = serde_json::from_slice(body.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(v["type"], "welcome", "{v}");
    v
}

#[test]
fn an_id_the_server_closed_is_held_for_its_resume_token() {
    let _one = serial();
    // The second half of attack 2: after the server closes a client, its id is not up for
    // grabs. Here the close is the idle timeout of a client that stopped answering pings.
    let s = Server::start(&["--idle-timeout", "1", "--resume-grace", "5"]);
    let mut silent = s.raw_ws("victim");
    let welcome = raw_welcome(&mut silent);
    let token = welcome["resume"].as_str().unwrap().to_string();
    assert!(token.len() >= 22, "at least 128 bits: {token}");
    assert!(s.wait_log("reason=idle_timeout"), "the silent client is closed");
    let mut thief = s.connect("VICTIM");
    assert_eq!(thief.next_line()["code"], "id_taken", "a thief is refused during the grace");
    let wrong = format!("/ws?id=victim&resume={}", "A".repeat(22));
    assert_eq!(s.connect_path(&wrong).next_line()["code"], "id_taken", "a wrong token too");
    let mut back = s.connect_path(&format!("/ws?id=victim&resume={token}"));
    let w = back.next_line();
    assert_eq!((w["type"].as_str(), w["resumed"].as_bool()), (Some("welcome"), Some(true)), "{w}");
    assert_ne!(w["resume"].as_str(), Some(token.as_str()), "the token rotates");
    assert_eq!(s.metrics()["chatloop_resumes_total"], 1.0);
    // A client that closes by itself has left: its id is free at once.
    back.ws.close(None).unwrap();
    let _ = back.close_code();
    let end = Instant::now() + Duration::from_secs(2);
    loop {
        let mut c = s.connect("victim");
        if c.next_line()["type"] == "welcome" {
            break;
        }
        assert!(Instant::now() < end, "an id closed by its client must be free at once");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Round trip of one room message through `c`, and of GET /healthz.
fn probe(s: &Server, c: &mut Client, n: usize) -> (Duration, Duration) {
    let t0 = Instant::now();
    c.send(&json!({"text": format!("probe{n}")}));
    loop {
        let l = c.next_line();
        if l["text"] == format!("probe{n}") {
            break;
        }
    }
    let room = t0.elapsed();
    let t1 = Instant::now();
    assert!(s.get("/healthz").contains("200"));
    (room, t1.elapsed())
}

/// Pins process or thread `pid` (0: the calling thread) to `cpu`, if the machine has it.
fn pin(pid: i32, cpu: usize) {
    if thread::available_parallelism().map_or(1, |n| n.get()) <= cpu {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[test]
fn an_endless_fragmented_message_cannot_freeze_the_loop() {
    // Attack 3: a text frame with FIN=0, then empty continuation frames as fast as the socket
    // takes them. A big --max-message lets the stream run long enough to test the read budget
    // (by default the frame-overhead bound closes it within a few thousand frames). As the
    // issue measured it: the server on one core and the attacker on the other, so that the
    // stream outpaces the server's parsing. (conn.rs tests the same with a reader that never
    // runs dry, without timing.)
    let _one = serial();
    let s = Server::start(&["--max-message", "16777216"]);
    pin(s.pid() as i32, 0);
    pin(0, 1);
    let mut victim = s.join("victim");
    let mut t = s.raw_ws("attacker");
    t.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let attack = {
        let stop = stop.clone();
        thread::spawn(move || {
            pin(0, 1);
            t.write_all(&frame(0x01, b"x", Some([1, 2, 3, 4]))).unwrap();
            let empty = frame(0x00, b"", Some([1, 2, 3, 4]));
            let burst: Vec<u8> = empty.iter().copied().cycle().take(empty.len() * 10_000).collect();
            let (mut sent, end) = (0usize, Instant::now() + Duration::from_secs(6));
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                match t.write(&burst) {
                    Ok(n) => sent += n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            sent
        })
    };
    thread::sleep(Duration::from_millis(300));
    let mut worst = (Duration::ZERO, Duration::ZERO);
    for n in 0..10 {
        let (room, health) = probe(&s, &mut victim, n);
        worst = (worst.0.max(room), worst.1.max(health));
        thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = attack.join().unwrap();
    println!(
        "attacker streamed {:.1} MB of empty fragments; worst room round trip {:?}, /healthz {:?}",
        sent as f64 / 1e6,
        worst.0,
        worst.1
    );
    assert!(sent > 1_000_000, "the attack must really have run");
    assert!(worst.0 < Duration::from_millis(500) && worst.1 < Duration::from_millis(500), "{worst:?}");
}

#[test]
fn tiny_fragments_without_end_are_closed_with_1009() {
    let _one = serial();
    // With default flags a message may spend at most 2 x --max-message + 4 KiB of wire bytes
    // (30,656 B); 8,000 empty frames are 48,000.
    let s = Server::start(&[]);
    let mut t = s.raw_ws("fragments");
    let _ = raw_welcome(&mut t);
    t.write_all(&frame(0x01, b"x", Some([1, 2, 3, 4]))).unwrap();
    let empty = frame(0x00, b"", Some([1, 2, 3, 4]));
    let burst: Vec<u8> = empty.iter().copied().cycle().take(empty.len() * 8_000).collect();
    let _ = t.write_all(&burst);
    assert_eq!(read_close(&mut t), Some(1009));
    assert!(s.wait_log("flood id=fragments"));
    drop(t);
    let end = Instant::now() + Duration::from_secs(5);
    while s.metrics()["chatloop_disconnects_total{reason=\"flood\"}"] < 1.0 {
        assert!(Instant::now() < end, "the flood close is counted");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn private_messages_to_a_reader_that_cannot_keep_up_are_refused_to_their_sender() {
    let _one = serial();
    // The recipient_busy half of attack 2: the victim reads nothing for a moment while one
    // sender (rate limit off) sends far more than its socket and soft cap hold. The sender
    // hears recipient_busy for what did not fit; the victim is not dropped, and later gets
    // every message that was accepted.
    let s = Server::start(&["--rate-limit", "0", "--queue-cap", "16384"]);
    let mut victim = s.join("victim");
    let mut flooder = s.join("flooder");
    let line = json!({"to": "victim", "text": "😀".repeat(1000)}).to_string();
    let frames: Vec<u8> = (0..2000).flat_map(|_| masked(0x1, line.as_bytes())).collect();
    let mut raw = flooder.ws.get_ref().try_clone().unwrap();
    let writer = thread::spawn(move || raw.write_all(&frames).unwrap());
    let (copies, errors, closed) = collect(&mut flooder, 2000, Duration::from_secs(10));
    writer.join().unwrap();
    let busy = errors.iter().filter(|e| *e == "recipient_busy").count();
    let (got, _, victim_closed) = collect(&mut victim, copies, Duration::from_secs(10));
    println!("2,000 private messages of 4 KB: {copies} delivered, {busy} recipient_busy; victim got {got}");
    assert_eq!((closed, victim_closed), (None, None));
    assert!(busy > 0, "the flood should have met a full queue");
    assert_eq!(copies + busy, 2000, "every message delivered or refused to its sender: {errors:?}");
    assert_eq!(got, copies);
    assert!(s.wait_log("recipient busy: a private message from id=flooder refused"));
    assert!(s.log().matches("recipient busy:").count() < busy, "throttled, not a line per refusal");
}

#[test]
fn a_ping_flood_is_closed_and_does_not_delay_anyone() {
    let _one = serial();
    // Attack 4: one client sends empty pings as fast as it can and reads its pongs.
    let s = Server::start(&[]);
    let mut victim = s.join("victim");
    let (base, _) = probe(&s, &mut victim, 0);
    let mut t = s.raw_ws("pinger");
    let _ = raw_welcome(&mut t);
    let ping = masked(0x9, b"");
    let burst: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 20_000).collect();
    let mut reader = t.try_clone().unwrap();
    let pongs = thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut total = 0;
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let _ = t.write_all(&burst);
    let mut worst = Duration::ZERO;
    for n in 1..6 {
        worst = worst.max(probe(&s, &mut victim, n).0);
    }
    let pong_bytes = pongs.join().unwrap();
    println!(
        "20,000 pings: {pong_bytes} bytes of pongs came back; victim round trip {base:?} before, worst {worst:?} during"
    );
    assert!(s.wait_log("flood id=pinger"), "a ping flood is closed");
    assert!(pong_bytes < 20_000 * 2 / 10, "pongs are merged and the flood cut off: {pong_bytes} bytes");
    assert!(worst < Duration::from_millis(200), "{worst:?}");
}

/// A WebSocket whose receive buffer is 4 KiB from before the connect (so the window stays
/// small), with the 101 consumed.
fn deaf_ws(s: &Server, id: &str) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let mut t: TcpStream = sock.into();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(upgrade_request(&format!("/ws?id={id}")).as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        t.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    t
}

#[test]
fn non_reading_pingers_cannot_grow_memory_past_their_caps() {
    let _one = serial();
    // Attack 5: 4 clients with a small receive buffer send pings and never read.
    let s = Server::start(&[]);
    let rss0 = s.rss_kb();
    let flooders: Vec<TcpStream> = (0..4).map(|i| deaf_ws(&s, &format!("deaf{i}"))).collect();
    let ping = masked(0x9, b"");
    let burst: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 50_000).collect();
    let writers: Vec<_> = flooders
        .into_iter()
        .map(|mut t| {
            let burst = burst.clone();
            thread::spawn(move || {
                t.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
                for _ in 0..10 {
                    if t.write_all(&burst).is_err() {
                        break;
                    }
                }
                t
            })
        })
        .collect();
    let held: Vec<TcpStream> = writers.into_iter().map(|h| h.join().unwrap()).collect();
    let grown = s.rss_kb().saturating_sub(rss0);
    println!("4 deaf ping flooders: RSS grew {grown} kB");
    // Four caps of 256 KiB would be 1 MiB; allow the allocator its slack on top.
    assert!(grown < 4 * 256 + 2048, "RSS grew {grown} kB");
    drop(held);
}

#[test]
fn the_rate_limit_belongs_to_the_id_and_survives_reconnects() {
    let _one = serial();
    // Attack 6: send a full burst, reconnect under the same id, repeat.
    let s = Server::start(&[]);
    let mut observer = s.join("observer");
    let t0 = Instant::now();
    let mut limited = 0;
    for round in 0..6 {
        let mut c = s.join("spammer");
        let frames: Vec<u8> = (0..40)
            .flat_map(|i| masked(0x1, json!({"text": format!("{round}.{i}")}).to_string().as_bytes()))
            .collect();
        c.ws.get_mut().write_all(&frames).unwrap();
        let (_, errors, _) = collect(&mut c, 40, Duration::from_millis(300));
        limited += errors.iter().filter(|e| *e == "rate_limited").count();
        c.ws.close(None).unwrap();
        let _ = c.close_code();
    }
    let secs = t0.elapsed().as_secs_f64();
    let (got, _, _) = collect(&mut observer, 240, Duration::from_millis(500));
    let allowed = 40.0 + 20.0 * secs;
    println!(
        "6 reconnects in {secs:.2} s: observer got {got} of 240 messages ({allowed:.0} allowed), {limited} rate_limited"
    );
    assert!((got as f64) <= allowed + 2.0, "{got} messages in {secs:.2} s");
    assert!(limited > 0);
    // An operator sees it at warn, in a line a second or so, not one per refused message.
    assert!(s.wait_log("rate limited id=spammer"));
    let lines = s.log().matches("rate limited id=").count();
    assert!(lines <= secs.ceil() as usize + 1, "{lines} warn lines for {limited} refusals in {secs:.2} s");
}
