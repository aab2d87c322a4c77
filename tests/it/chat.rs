//! Room and private chat, ids, errors, slow consumers and coalescing.

use crate::util::{Server, masked};
use serde_json::json;
use std::io::Write;
use std::time::Duration;

#[test]
fn room_message_reaches_every_client_including_sender() {
    let s = Server::start(&[]);
    let mut a = s.join("alice");
    let mut b = s.join("bob");
    let mut c = s.join("carol");
    a.send(&json!({"text": "  hello room  ", "from": "mallory"}));
    for cl in [&mut a, &mut b, &mut c] {
        let m = cl.next_line();
        assert_eq!(
            (m["type"].as_str(), m["from"].as_str(), m["text"].as_str()),
            (Some("message"), Some("alice"), Some("hello room"))
        );
        assert!(m.get("to").is_none());
        assert!(m["ts"].as_u64().unwrap() > 1_600_000_000_000);
    }
}

#[test]
fn welcome_lists_users_and_presence_events_flow() {
    let s = Server::start(&[]);
    let mut a = s.join("alice");
    let mut b = s.connect("bob");
    let w = b.lines();
    assert_eq!(w[0]["type"], "welcome");
    let mut users: Vec<_> =
        w[0]["users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()).collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    assert_eq!(a.lines()[0], json!({"type":"join","room":"lobby","id":"bob"}));
    b.bye();
    assert_eq!(a.lines()[0], json!({"type":"leave","room":"lobby","id":"bob"}));
}

#[test]
fn private_message_reaches_recipient_and_sender_only() {
    let s = Server::start(&[]);
    let mut a = s.join("alice");
    let mut b = s.join("bob");
    let mut c = s.join("carol");
    a.send(&json!({"to": "BOB", "text": "psst"}));
    let expect = |m: serde_json::Value| {
        assert_eq!(
            (m["from"].as_str(), m["to"].as_str(), m["text"].as_str()),
            (Some("alice"), Some("bob"), Some("psst")),
            "{m}"
        );
    };
    expect(b.next_line());
    expect(a.next_line());
    // carol's next message is a later room message, not the private one.
    a.send(&json!({"text": "public"}));
    assert_eq!(c.next_line()["text"], "public");
}

#[test]
fn unknown_recipient_is_an_error_to_the_sender() {
    let s = Server::start(&[]);
    let mut a = s.join("alice");
    a.send(&json!({"to": "ghost", "text": "hi"}));
    let e = a.next_line();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["to"].as_str()),
        (Some("error"), Some("unknown_recipient"), Some("ghost"))
    );
}

#[test]
fn taken_id_ignoring_case_closes_4409_and_bad_id_closes_4400() {
    let s = Server::start(&[]);
    let _a = s.join("alice");
    let mut dup = s.connect("ALICE");
    assert_eq!(dup.next_line()["code"], "id_taken");
    assert_eq!(dup.close_code(), Some(4409));
    for bad in ["", "has%20space", &"x".repeat(33), "%3Cscript%3E"] {
        let mut c = s.connect(bad);
        assert_eq!(c.next_line()["code"], "bad_id", "{bad:?}");
        assert_eq!(c.close_code(), Some(4400), "{bad:?}");
    }
    let mut none = s.connect_path("/ws");
    assert_eq!(none.next_line()["code"], "bad_id");
}

#[test]
fn id_is_free_again_once_its_holder_has_left() {
    let s = Server::start(&[]);
    let a = s.join("alice");
    a.bye();
    // The server may see the FIN a moment later; retry briefly.
    for _ in 0..50 {
        let mut c = s.connect("Alice");
        if c.lines()[0]["type"] == "welcome" {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("id never came free");
}

#[test]
fn bad_json_gets_an_error_and_the_connection_stays_open() {
    let s = Server::start(&[]);
    let mut a = s.join("alice");
    for (frame, code) in
        [("not json", "bad_message"), ("[1,2]", "bad_message"), (r#"{"text":"   "}"#, "empty")]
    {
        a.send_text(frame);
        assert_eq!(a.next_line()["code"], code, "{frame}");
    }
    a.send_text(&json!({"text": "x".repeat(1001)}).to_string());
    assert_eq!(a.next_line()["code"], "too_long");
    a.send(&json!({"text": "still here"}));
    assert_eq!(a.next_line()["text"], "still here");
}

#[test]
fn rate_limit_refuses_the_excess_with_an_error() {
    let s = Server::start(&["--rate-limit", "2"]);
    let mut a = s.join("alice");
    for i in 0..10 {
        a.ws.write(tungstenite::Message::text(json!({"text": format!("m{i}")}).to_string())).unwrap();
    }
    a.ws.flush().unwrap();
    let (mut delivered, mut limited) = (0, 0);
    while delivered + limited < 10 {
        for l in a.lines() {
            match (l["type"].as_str(), l["code"].as_str()) {
                (Some("message"), _) => delivered += 1,
                (Some("error"), Some("rate_limited")) => limited += 1,
                _ => panic!("{l}"),
            }
        }
    }
    assert_eq!((delivered, limited), (4, 6), "burst of 2N = 4");
}

#[test]
fn a_burst_arrives_coalesced_in_fewer_frames_than_messages() {
    let s = Server::start(&["--rate-limit", "0"]);
    let mut a = s.join("alice");
    let mut b = s.join("bob");
    for i in 0..50 {
        a.ws.write(tungstenite::Message::text(json!({"text": format!("m{i}")}).to_string())).unwrap();
    }
    a.ws.flush().unwrap();
    let (mut frames, mut texts) = (0, Vec::new());
    while texts.len() < 50 {
        frames += 1;
        texts.extend(
            b.lines()
                .into_iter()
                .filter(|l| l["type"] == "message")
                .map(|l| l["text"].as_str().unwrap().to_string()),
        );
    }
    let expected: Vec<_> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, expected, "in order, none lost");
    assert!(frames < 50, "{frames} frames for 50 messages");
}

#[test]
fn a_client_that_never_reads_is_dropped_while_another_gets_everything() {
    let s = Server::start(&["--rate-limit", "0", "--queue-cap", "65536", "--max-text", "4000"]);
    let mut sender = s.join("sender");
    let mut reader = s.join("reader");
    // A raw socket with a small receive buffer that completes the handshake, then never reads.
    let stuck = socket_with_small_rcvbuf(s.addr);
    let stuck_ws = {
        let (ws, _) = tungstenite::client::client(format!("ws://{}/ws?id=stuck", s.addr), stuck).unwrap();
        ws
    };
    // ~8 MB to each reader: past the kernel's socket buffers (4 MiB send autotuning on
    // loopback) and then far past the 64 KiB cap.
    // The stuck client reads as soon as it has been dropped (the server keeps its socket only
    // for the 2 s close grace, and pumping the rest below can take longer on a busy machine).
    let log = s.log_handle();
    let stuck_reader = std::thread::spawn(move || {
        let mut stuck_ws = stuck_ws;
        let end = std::time::Instant::now() + Duration::from_secs(60);
        while !log.lock().unwrap().contains("slow consumer id=stuck") {
            assert!(std::time::Instant::now() < end, "stuck was never dropped");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Reading at last, it finds the 1008 after what had been sent before.
        stuck_ws.get_mut().set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        loop {
            match stuck_ws.read() {
                Ok(tungstenite::Message::Close(c)) => return c.map(|c| u16::from(c.code)),
                Ok(_) => {}
                Err(e) => panic!("expected a close, got {e}"),
            }
        }
    });
    let text = "y".repeat(3000);
    let n = 2700;
    let count = |c: &mut crate::util::Client| c.lines().iter().filter(|l| l["type"] == "message").count();
    let (mut got, mut echoed) = (0, 0);
    for i in 0..n {
        sender
            .ws
            .write(tungstenite::Message::text(json!({"text": format!("{i} {text}")}).to_string()))
            .unwrap();
        if i % 20 == 19 {
            sender.ws.flush().unwrap();
            // Keep pace, so that the honest reader (and the sender, who gets its own
            // messages back) are never the slow ones.
            while got < i - 10 {
                got += count(&mut reader);
            }
            while echoed < i - 10 {
                echoed += count(&mut sender);
            }
        }
    }
    sender.ws.flush().unwrap();
    while got < n {
        got += count(&mut reader);
    }
    while echoed < n {
        echoed += count(&mut sender);
    }
    assert_eq!(got, n);
    assert!(s.wait_log("slow consumer id=stuck"), "the disconnect is logged, naming the client: {}", s.log());
    assert_eq!(stuck_reader.join().expect("stuck reader"), Some(1008));
    // The sender is unharmed.
    sender.send(&json!({"text": "after"}));
    loop {
        if reader.next_line()["text"] == "after" {
            break;
        }
    }
}

fn socket_with_small_rcvbuf(addr: std::net::SocketAddr) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: a fresh socket, configured and then owned by TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &size as *const _ as *const libc::c_void, 4);
        let sock = std::net::TcpStream::from_raw_fd(fd);
        let std::net::SocketAddr::V4(v4) = addr else { panic!("v4 only") };
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let rc =
            libc::connect(fd, &sa as *const _ as *const libc::sockaddr, std::mem::size_of_val(&sa) as u32);
        assert_eq!(rc, 0);
        let _ = (&sock).flush();
        sock
    }
}

#[test]
fn a_lone_line_goes_at_once_and_lines_for_a_client_written_within_the_interval_share_a_frame() {
    // A long interval: had the lone line waited for it, the round trip would take 1.5 s.
    let s = Server::start(&["--rate-limit", "0", "--flush-interval", "1.5"]);
    let mut a = s.join("alice");
    let mut b = s.join("bob");
    assert_eq!(a.next_any()["type"], "join", "bob's arrival");
    // Nobody has been written for a whole interval: the server is quiet.
    std::thread::sleep(Duration::from_millis(1600));
    let texts = |lines: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        lines.into_iter().filter(|l| l["type"] == "message").map(|l| l["text"].clone()).collect()
    };
    let t0 = std::time::Instant::now();
    a.send(&json!({"text": "zero"}));
    assert_eq!(texts(a.lines()), vec![json!("zero")]);
    assert_eq!(texts(b.lines()), vec![json!("zero")]);
    let rtt = t0.elapsed();
    assert!(rtt < Duration::from_millis(750), "a lone line waited {rtt:?} for the interval");
    // Both were just written: their lines now wait until the interval has passed, and share a write.
    a.send(&json!({"text": "one"}));
    std::thread::sleep(Duration::from_millis(50));
    a.send(&json!({"text": "two"}));
    assert_eq!(texts(a.lines()), vec![json!("one"), json!("two")], "two lines 50 ms apart, one frame");
    assert_eq!(texts(b.lines()), vec![json!("one"), json!("two")], "the same for the other member");
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "held until 1.5 s after the last write: {:?}",
        t0.elapsed()
    );
}

#[test]
fn a_burst_read_in_one_turn_reaches_each_recipient_in_one_frame() {
    // Every turn writes (no interval): the frames one read brought are still one batch.
    let s = Server::start(&["--rate-limit", "0", "--flush-interval", "0"]);
    let mut a = s.join("alice");
    let mut b = s.join("bob");
    assert_eq!(a.next_any()["type"], "join", "bob's arrival, before the burst");
    let burst: Vec<u8> =
        (0..20).flat_map(|i| masked(0x1, json!({"text": format!("b{i}")}).to_string().as_bytes())).collect();
    a.ws.get_mut().write_all(&burst).unwrap();
    let want: Vec<_> = (0..20).map(|i| json!(format!("b{i}"))).collect();
    for c in [&mut a, &mut b] {
        let texts: Vec<_> = c.lines().into_iter().map(|l| l["text"].clone()).collect();
        assert_eq!(texts, want, "20 messages in one write: one frame each");
    }
}

#[test]
fn a_cid_comes_back_on_the_senders_own_copy_and_on_errors_about_that_message_only() {
    let s = Server::start(&["--max-text", "10"]);
    let (mut a, mut b) = (s.join("alice"), s.join("bob"));
    a.send(&json!({"text": "hi", "cid": "m-1"}));
    let mine = a.next_of("message");
    assert_eq!((mine["cid"].as_str(), mine["text"].as_str()), (Some("m-1"), Some("hi")));
    let theirs = b.next_of("message");
    assert_eq!(theirs.get("cid"), None, "a cid is the sender's own: {theirs}");
    a.send(&json!({"text": "far too long for ten", "cid": "m-2"}));
    let e = a.next_of("error");
    assert_eq!((e["code"].as_str(), e["cid"].as_str()), (Some("too_long"), Some("m-2")));
    a.send(&json!({"to": "nobody", "text": "x", "cid": "p-1"}));
    let e = a.next_of("error");
    assert_eq!(
        (e["code"].as_str(), e["to"].as_str(), e["cid"].as_str()),
        (Some("unknown_recipient"), Some("nobody"), Some("p-1"))
    );
    a.send(&json!({"text": "x", "cid": ""}));
    assert_eq!(a.next_of("error")["code"], "bad_message", "a cid is 1 to 64 characters");
}

#[test]
fn rate_limited_names_the_refused_message_by_its_cid() {
    let s = Server::start(&["--rate-limit", "1"]);
    let mut a = s.join("alice");
    let frames: Vec<u8> = (0..4)
        .flat_map(|i| {
            masked(0x1, json!({"text": format!("q{i}"), "cid": format!("c{i}")}).to_string().as_bytes())
        })
        .collect();
    use std::io::Write;
    a.ws.get_mut().write_all(&frames).unwrap();
    let mut refused = Vec::new();
    while refused.len() < 2 {
        let l = a.next_line();
        if l["code"] == "rate_limited" {
            refused.push(l["cid"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(refused, ["c2", "c3"], "a burst of 2, then each refusal names its message");
}

#[test]
fn every_request_costs_the_rate_limit_a_token_not_only_messages() {
    // --help and README say requests: a join, a directory ask and a malformed frame spend
    // the burst (2 at --rate-limit 1) as a message would. Sent in one write, so no refill.
    let s = Server::start(&["--rate-limit", "1"]);
    let mut a = s.join("alice");
    let frames: Vec<u8> =
        [r#"{"join":"dev","cid":"j"}"#, r#"{"rooms":true}"#, "not json", r#"{"text":"hi","cid":"m"}"#]
            .iter()
            .flat_map(|f| masked(0x1, f.as_bytes()))
            .collect();
    use std::io::Write;
    a.ws.get_mut().write_all(&frames).unwrap();
    let mut refused = Vec::new();
    while refused.len() < 2 {
        let l = a.next_line();
        if l["code"] == "rate_limited" {
            refused.push(l["cid"].as_str().unwrap_or("").to_string());
        }
    }
    assert_eq!(refused, ["", "m"], "the join and the directory ask took the burst");
}
