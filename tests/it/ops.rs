//! Operations: metrics, health, graceful shutdown, logs.

use crate::util::Server;
use serde_json::json;
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
    drop(b);
    assert!(s.wait_log("session closed id=bob"));
    let m = s.metrics();
    assert_eq!(m["chatloop_websockets"], 1.0);
    assert_eq!(m["chatloop_disconnects_total{reason=\"client_close\"}"], 1.0);
}

#[test]
fn metrics_are_refused_outside_metrics_allow() {
    let s = Server::start(&["--metrics-allow", "10.0.0.0/8"]);
    assert!(s.get("/metrics").starts_with("HTTP/1.1 403"));
    let s = Server::start(&["--metrics-allow", "127.0.0.1"]);
    assert!(s.get("/metrics").starts_with("HTTP/1.1 200"));
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
    drop(a);
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
