//! One node's event stream.

use super::{Ev, Sse, is, start};
use serde_json::json;
use std::io::Write;
use std::time::Duration;

#[test]
fn every_type_is_seen_once_with_increasing_ids() {
    let s = start("types", &[]);
    let mut sse = Sse::open(&s, "", None);
    let mut alice = s.join("alice");
    alice.send(&json!({"join": "dev"}));
    alice.next_of("joined");
    alice.send(&json!({"room": "dev", "text": "hello"}));
    alice.next_of("message");
    alice.send(&json!({"leave": "dev"}));
    alice.next_of("left");
    alice.bye();
    let seen = sse.until(|e| is(e, "offline", "alice", None));
    let kinds: Vec<String> = seen.iter().map(|e| e.event.clone()).collect();
    assert_eq!(kinds, ["online", "join", "join", "message", "leave", "leave", "offline"], "{seen:?}");
    assert!(is(&seen[0], "online", "alice", None));
    assert!(is(&seen[1], "join", "alice", Some("lobby")));
    assert!(is(&seen[2], "join", "alice", Some("dev")));
    let m = &seen[3].data;
    assert_eq!(
        (&m["room"], &m["from"], &m["text"], &m["seq"]),
        (&json!("dev"), &json!("alice"), &json!("hello"), &json!(1))
    );
    assert!(is(&seen[4], "leave", "alice", Some("dev")));
    // Closing its only connection itself, it leaves its rooms and is offline at once.
    assert!(is(&seen[5], "leave", "alice", Some("lobby")));
    let ids: Vec<u64> = seen.iter().map(|e| e.id.expect("every event has an id")).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
}

/// The resume token of a welcome.
fn resume_token(w: &serde_json::Value) -> String {
    w["resume"].as_str().expect("welcome.resume").to_string()
}

#[test]
fn a_blip_is_never_an_offline_and_a_grace_that_ends_is_one() {
    let s = start("blip", &["--resume-grace", "3"]);
    let mut sse = Sse::open(&s, "?types=online,offline,message", None);
    let mut alice = s.connect("alice");
    let w = alice.next_line();
    let token = resume_token(&w);
    assert!(is(&sse.next(), "online", "alice", None));
    // Dropped without a close (a network blip), back within the grace with its token.
    drop(alice);
    assert!(s.wait_log("reason=lost"));
    let mut alice = s.connect(&format!("alice&resume={token}"));
    let w = alice.next_line();
    assert_eq!(w["resumed"], true, "{w}");
    alice.send(&json!({"text": "still here"}));
    let seen = sse.until(|e| e.event == "message");
    assert_eq!(seen.len(), 1, "nothing between the online and the message: {seen:?}");
    // Past the grace (the sweep runs once a second), it is offline, once.
    let token = resume_token(&w);
    drop(alice);
    let seen = sse.until(|e| e.event == "offline");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(is(&seen[0], "offline", "alice", None));
    // And back after its grace ended, it is online again (a fresh id: the old token is void).
    let mut again = s.connect(&format!("alice&resume={token}"));
    let w = again.next_line();
    assert_eq!(w["type"], "welcome");
    assert_ne!(w["resumed"], true, "{w}");
    assert!(is(&sse.next(), "online", "alice", None));
    assert!(sse.next_within(Duration::from_millis(500)).is_none());
}

#[test]
fn types_narrow_the_stream_and_a_bad_one_is_refused() {
    let s = start("filter", &[]);
    let mut only = Sse::open(&s, "?types=online,offline", None);
    let mut msgs = Sse::open(&s, "?types=message", None);
    let mut alice = s.join("alice");
    alice.send(&json!({"text": "one"}));
    alice.next_of("message");
    let _bob = s.join("bob");
    alice.bye();
    let seen: Vec<(String, String)> = only
        .until(|e| e.event == "offline")
        .iter()
        .map(|e| (e.event.clone(), e.data["id"].as_str().unwrap().to_string()))
        .collect();
    let want = [("online", "alice"), ("online", "bob"), ("offline", "alice")];
    assert_eq!(seen, want.map(|(a, b)| (a.to_string(), b.to_string())));
    let m = msgs.next();
    assert_eq!((m.event.as_str(), &m.data["text"]), ("message", &json!("one")));
    assert!(msgs.next_within(Duration::from_millis(500)).is_none(), "only messages");
    for bad in ["?types=online,nope", "?types=", "?last_event_id=x"] {
        let r = s.raw(super::request(s.addr, bad, None).as_bytes());
        assert!(r.starts_with("HTTP/1.1 400"), "{bad}: {r}");
        assert!(r.contains(r#"{"error":{"code":"#), "{r}");
    }
    // Counted with the API's answers: the two streams opened, the three refused.
    let m = s.metrics();
    assert_eq!(m[r#"chatloop_api_requests_total{status="200"}"#], 2.0);
    assert_eq!(m[r#"chatloop_api_requests_total{status="400"}"#], 3.0);
}

/// Room messages from `alice` with texts `m0`.. `m{n-1}`.
fn say(c: &mut crate::util::Client, from: usize, n: usize) {
    for i in from..from + n {
        c.send(&json!({"text": format!("m{i}")}));
        c.next_of("message");
    }
}

#[test]
fn a_consumer_that_comes_back_with_last_event_id_gets_each_event_once() {
    let s = start("resume", &[]);
    let mut sse = Sse::open(&s, "?types=message", None);
    let mut alice = s.join("alice");
    say(&mut alice, 0, 3);
    let seen: Vec<Ev> = sse.until(|e| e.data["text"] == "m2");
    let last = seen.last().unwrap().id.unwrap();
    drop(sse);
    say(&mut alice, 3, 4);
    // Header or query: the same.
    for (query, header) in [("", Some(last)), (&*format!("?types=message&last_event_id={last}"), None)] {
        let query = if query.is_empty() { "?types=message" } else { query };
        let mut back = Sse::open(&s, query, header);
        let texts: Vec<String> =
            (0..4).map(|_| back.next().data["text"].as_str().unwrap().to_string()).collect();
        assert_eq!(texts, ["m3", "m4", "m5", "m6"]);
        assert!(back.next_within(Duration::from_millis(300)).is_none(), "each once");
    }
    // ... and then live.
    let mut back = Sse::open(&s, "", Some(last));
    for _ in 0..4 {
        back.next();
    }
    say(&mut alice, 7, 1);
    assert_eq!(back.next().data["text"], "m7");
}

#[test]
fn past_events_keep_a_consumer_gets_a_gap_naming_the_first_kept() {
    let s = start("gap", &["--events-keep", "5"]);
    let mut alice = s.join("alice");
    say(&mut alice, 0, 10);
    // online, join lobby, then m0..m9: ids 1..12, the last five kept (8..12).
    let mut back = Sse::open(&s, "", Some(1));
    let gap = back.next();
    assert_eq!((gap.event.as_str(), gap.id), ("gap", None), "{gap:?}");
    assert_eq!(gap.data["first"], 8);
    let rest: Vec<(Option<u64>, String)> =
        (0..5).map(|_| back.next()).map(|e| (e.id, e.data["text"].as_str().unwrap().to_string())).collect();
    assert_eq!(rest, (8..13).map(|i| (Some(i), format!("m{}", i - 3))).collect::<Vec<_>>());
    // Within the log: no gap.
    let mut fine = Sse::open(&s, "", Some(9));
    assert_eq!(fine.next().id, Some(10));
    assert_eq!(s.metrics()["chatloop_event_gaps_total"], 1.0);
}

#[test]
fn a_consumer_that_never_reads_is_closed_and_the_chat_goes_on() {
    let s = start("slow", &["--queue-cap", "16384", "--rate-limit", "0"]);
    // A small receive buffer, so the kernel takes little of what it is sent.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let mut stuck: std::net::TcpStream = sock.into();
    stuck.write_all(super::request(s.addr, "", None).as_bytes()).unwrap();
    let mut reader = s.join("reader");
    let mut alice = s.join("alice");
    let text = "x".repeat(900);
    let mut closed = false;
    for round in 0..400 {
        for _ in 0..10 {
            alice.send(&json!({"text": text}));
        }
        for _ in 0..10 {
            assert_eq!(reader.next_of("message")["text"], text.as_str(), "round {round}");
        }
        if s.metrics().get("chatloop_event_streams_slow_total").copied().unwrap_or(0.0) >= 1.0 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the consumer that never reads was not closed");
    assert!(s.wait_log("slow consumer: event stream"));
    // The chat went on: a last message arrives, and the stream is gone from the gauge.
    alice.send(&json!({"text": "after"}));
    assert_eq!(reader.next_of("message")["text"], "after");
    assert_eq!(s.metrics()["chatloop_event_streams"], 0.0);
    assert!(super::closed_within(&mut stuck, Duration::from_secs(10)), "its socket was closed");
}

#[test]
fn an_idle_stream_gets_keep_alive_comments() {
    let s = start("ping", &["--ping-interval", "0.3", "--idle-timeout", "5"]);
    let mut sse = Sse::open(&s, "", None);
    assert!(sse.next_within(Duration::from_millis(1500)).is_none());
    assert!(sse.pings >= 2, "{} pings", sse.pings);
}

#[test]
fn the_stream_has_the_apis_access_rules_and_shows_system_lines() {
    let plain = crate::util::Server::start(&[]);
    assert!(plain.raw(super::request(plain.addr, "", None).as_bytes()).starts_with("HTTP/1.1 404"));
    let s = start("access", &[]);
    for auth in ["", "Authorization: Bearer wrong-key-0123456789abcdef\r\n"] {
        let r = s.raw(format!("GET /api/events HTTP/1.1\r\nHost: {}\r\n{auth}\r\n", s.addr).as_bytes());
        assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    }
    let r = s.raw(
        format!(
            "POST /api/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
            s.addr,
            super::KEY
        )
        .as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    let mut sse = Sse::open(&s, "?types=message", None);
    let body = r#"{"room":"news","text":"deploy finished"}"#;
    let r = s.raw(
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            s.addr,
            super::KEY,
            body.len()
        )
        .as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let m = sse.next();
    assert_eq!(
        (&m.data["room"], &m.data["text"], &m.data["system"]),
        (&json!("news"), &json!("deploy finished"), &json!(true))
    );
}
