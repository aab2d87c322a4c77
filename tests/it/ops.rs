//! Operations: metrics, health, graceful shutdown, logs.

use crate::util::{Server, masked, upgrade_request};
use serde_json::json;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[test]
fn metrics_move_as_traffic_flows_and_parse_as_prometheus_text() {
    let s = Server::start(&[]);
    let m0 = s.metrics();
    for series in [
        "chatloop_connections",
        "chatloop_websockets",
        "chatloop_connections_accepted_total",
        "chatloop_messages_received_total{kind=\"room\"}",
        "chatloop_messages_received_total{kind=\"private\"}",
        "chatloop_deliveries_total",
        "chatloop_bytes_sent_total",
        "chatloop_disconnects_total{reason=\"client_close\"}",
        "chatloop_disconnects_total{reason=\"slow_consumer\"}",
        "chatloop_disconnects_total{reason=\"idle_timeout\"}",
        "chatloop_disconnects_total{reason=\"handshake_timeout\"}",
        "chatloop_disconnects_total{reason=\"protocol_error\"}",
        "chatloop_disconnects_total{reason=\"shutdown\"}",
        "chatloop_errors_sent_total{code=\"bad_message\"}",
        "chatloop_outbound_queue_bytes",
    ] {
        assert!(m0.contains_key(series), "missing {series}");
    }
    assert_eq!(m0["chatloop_websockets"], 0.0);
    let mut a = s.join("alice");
    let mut b = s.join("bob");
    a.send(&json!({"text": "room"}));
    a.send(&json!({"to": "bob", "text": "private"}));
    a.send_text("nonsense");
    assert_eq!(a.next_line()["text"], "room");
    assert_eq!(a.next_line()["text"], "private");
    assert_eq!(a.next_line()["code"], "bad_message");
    assert_eq!(b.next_line()["text"], "room");
    let m = s.metrics();
    assert_eq!(m["chatloop_websockets"], 2.0);
    assert_eq!(m["chatloop_connections"], 3.0, "two sessions and this scrape");
    assert_eq!(m["chatloop_messages_received_total{kind=\"room\"}"], 1.0);
    assert_eq!(m["chatloop_messages_received_total{kind=\"private\"}"], 1.0);
    assert_eq!(m["chatloop_errors_sent_total{code=\"bad_message\"}"], 1.0);
    // 2 welcomes + 1 join + 2 room + 2 private + 1 error
    assert_eq!(m["chatloop_deliveries_total"], 8.0);
    assert!(m["chatloop_bytes_sent_total"] > m0["chatloop_bytes_sent_total"] + 300.0);
    assert!(m["chatloop_connections_accepted_total"] >= 4.0);
    b.bye();
    assert!(s.wait_log("session closed id=bob"));
    let m = s.metrics();
    assert_eq!(m["chatloop_websockets"], 1.0);
    assert_eq!(m["chatloop_disconnects_total{reason=\"client_close\"}"], 1.0);
}

#[test]
fn metrics_allow_adds_networks_and_never_takes_loopback_away() {
    // Every peer a test can be is loopback: the refusal of others is `metrics::tests`'s
    // (CIDR matching) and `config::tests`'s (the list a flag gives).
    let s = Server::start(&["--metrics-allow", "10.0.0.0/8"]);
    assert!(s.get("/metrics").starts_with("HTTP/1.1 200"), "loopback keeps its access");
}

#[test]
fn sigterm_closes_every_session_with_1001_and_exits_0() {
    let mut s = Server::start(&["--shutdown-grace", "3"]);
    let mut a = s.join("alice");
    let mut b = s.join("bob");
    let t0 = Instant::now();
    s.signal(libc::SIGTERM);
    assert_eq!(a.close_code(), Some(1001));
    assert_eq!(b.close_code(), Some(1001));
    let st = s.wait_exit(Duration::from_secs(5)).expect("exited");
    assert!(st.success(), "{st:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "clients answered, no need to wait out the grace");
    assert!(s.wait_log("shutdown complete"));
    assert!(s.log().contains("reason=shutdown"));
}

#[test]
fn shutdown_waits_no_longer_than_the_grace_for_a_silent_peer() {
    let mut s = Server::start(&["--shutdown-grace", "0.5"]);
    let _silent = s.raw_ws("silent"); // never reads, never answers the close
    let t0 = Instant::now();
    s.signal(libc::SIGINT);
    let st = s.wait_exit(Duration::from_secs(5)).expect("exited");
    assert!(st.success());
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut s = Server::start(&["--shutdown-grace", "30"]);
    let _silent = s.raw_ws("silent");
    s.signal(libc::SIGTERM);
    assert!(s.wait_log("shutting down"));
    let t0 = Instant::now();
    s.signal(libc::SIGTERM);
    let st = s.wait_exit(Duration::from_secs(5)).expect("exited");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(st.code(), Some(1), "a cut-short drain is not a clean exit");
}

#[test]
fn logs_name_sessions_opening_and_closing_but_never_message_text() {
    let s = Server::start(&[]);
    let mut a = s.join("alice");
    a.send(&json!({"text": "secret words"}));
    a.next_line();
    a.bye();
    assert!(s.wait_log("session open id=alice peer=127.0.0.1:"));
    assert!(s.wait_log("session closed id=alice"));
    assert!(s.log().contains("reason=client_close"));
    assert!(!s.log().contains("secret words"), "message text must not reach the logs");
}

#[test]
fn version_and_help_tell_the_truth() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatloop")).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("chatloop {}", env!("CARGO_PKG_VERSION"))
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatloop")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && help.contains("--queue-cap BYTES") && help.contains("[default: 262144]"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatloop")).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flag '--bogus'"));
}

/// Runs the binary with `args` and returns its exit status and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatloop"))
        .args(["--addr", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn flags_that_cannot_work_are_refused_at_start_up_with_one_line() {
    let empty = std::env::temp_dir().join(format!("chatloop-no-index-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let empty = empty.to_str().unwrap();
    for (args, needle) in [
        (&["--reuse-port"][..], "--reuse-port needs --redis"),
        (&["--allow-origin", "chat.example"], "needs a scheme: https://chat.example"),
        (&["--allow-host", "chat.example:443"], "without a port"),
        (&["--public", "/nonexistent/chatloop"], "is not a directory"),
        (&["--public", empty], "has no index.html"),
        (&["--max-message", "4096"], "give at least 13280, or --max-text 234 or less"),
        (&["--max-message", "100"], "give at least 13280, (no --max-text fits in less than 1292)"),
        (&["--rate-limit", "5", "--rate-limit", "7"], "--rate-limit given twice: give it once"),
        (&["--addr", "127.0.0.1:0"], "--addr given twice: give it once"),
    ] {
        let (code, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("chatloop: ") && err.contains(needle), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir(empty);
}

#[test]
fn a_thousand_emoji_escaped_as_python_does_are_a_room_message_not_a_1009() {
    let s = Server::start(&[]);
    let mut a = s.join("alice");
    // json.dumps({"text": "😀" * 1000}): ensure_ascii writes each as a surrogate pair.
    let frame = format!("{{\"text\": \"{}\"}}", "\\ud83d\\ude00".repeat(1000));
    assert_eq!(frame.len(), 12_012);
    a.send_text(&frame);
    let line = a.next_line();
    assert_eq!(line["type"], "message", "{line}");
    assert_eq!(line["text"].as_str().unwrap().chars().count(), 1000);
    assert!(line["text"].as_str().unwrap().chars().all(|c| c == '😀'));
    // Every field at its longest: a room, and a cid of 64 non-BMP characters escaped too.
    let emoji = "\\ud83d\\ude00";
    let frame = format!(r#"{{"room":"lobby","text":"{}","cid":"{}"}}"#, emoji.repeat(1000), emoji.repeat(64));
    assert_eq!(frame.len(), 12_803);
    a.send_text(&frame);
    let line = a.next_line();
    assert_eq!(line["type"], "message", "{line}");
    assert_eq!(line["cid"].as_str().map(|c| c.chars().count()), Some(64), "{line}");
    // The worst case for --max-text 10: ten non-BMP characters, a 32-character id escaped
    // character by character, and spaces around every token.
    let s = Server::start(&["--max-text", "10"]);
    let mut b = s.join(&"b".repeat(32));
    let frame = format!(
        "{{ \"to\" : \"{}\" , \"text\" : \"{}\" }}",
        "\\u0062".repeat(32),
        "\\ud83d\\ude00".repeat(10)
    );
    b.send_text(&frame);
    assert_eq!(b.next_line()["type"], "message");
    b.send_text(&frame.replace("\"text\" : \"", "\"text\" : \"x"));
    assert_eq!(b.next_line()["code"], "too_long", "one more character: refused, not closed");
}

#[test]
fn logs_carry_rfc3339_utc_timestamps_the_address_and_a_session_target() {
    let s = Server::start(&[]);
    assert!(s.wait_log(&format!("listening on http://{}", s.addr)), "address logged on stderr");
    let mut a = s.join("alice");
    a.send(&json!({"text": "hi"}));
    a.next_line();
    assert!(s.wait_log("chatloop::session] session open id=alice"));
    let log = s.log();
    for line in log.lines() {
        // [2026-11-29T02:51:00.123Z INFO  chatloop] ...
        let b = line.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        let stamped = b.len() > 26
            && b[0] == b'['
            && digits(1..5)
            && b[5] == b'-'
            && b[11] == b'T'
            && b[20] == b'.'
            && &b[24..26] == b"Z ";
        assert!(stamped, "no timestamp: {line}");
    }
    let s = Server::start(&["--log-timestamps", "off"]);
    assert!(s.wait_log("listening on"));
    assert!(s.log().lines().all(|l| l.starts_with("[INFO") || l.starts_with("[DEBUG")), "{}", s.log());
}

#[test]
fn metrics_carry_the_process_series_and_the_version() {
    let s = Server::start(&[]);
    let _a = s.join("alice");
    let m = s.metrics();
    let started = m["process_start_time_seconds"];
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - 120.0..=now + 1.0).contains(&started), "start {started}, now {now}");
    assert!(m["process_resident_memory_bytes"] > 500_000.0);
    // stdin, stdout, stderr, the listener, epoll, the signal pipe, alice, this scrape.
    assert!(m["process_open_fds"] >= 7.0, "{}", m["process_open_fds"]);
    assert!(m["process_max_fds"] >= m["process_open_fds"]);
    assert!(m["process_cpu_seconds_total"] >= 0.0);
    let version = format!("chatloop_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(m.get(&version), Some(&1.0), "{version}");
}

#[test]
fn upgrade_frames_are_not_cut_by_the_derived_max_message() {
    // A single 12 KiB frame right behind the request head, as a client in a hurry sends it.
    let s = Server::start(&[]);
    let mut t = std::net::TcpStream::connect(s.addr).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let frame = format!("{{\"text\":\"{}\"}}", "\\u00e9".repeat(1000));
    let mut out = upgrade_request("/ws?id=hurry").into_bytes();
    out.extend(masked(0x1, frame.as_bytes()));
    t.write_all(&out).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(&"é".repeat(1000)) {
        let n = t.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}
