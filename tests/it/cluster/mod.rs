//! Scale-out through Redis: two real chatloop processes and a real redis-server, all on
//! loopback. Each test starts its own redis-server on a free port (so that one test can kill
//! and restart it). Without redis-server on PATH the tests say so and pass, except under
//! CI=true, where `.ci/run` installs it and a missing server is a failure.
//!
//! This file is the harness (a redis-server per test, nodes joined to it, waits on metrics and
//! lines); the tests are in `basics`, `faults`, `rooms` and `resume`.

use crate::util::{Client, Server};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Redis {
    pub(crate) port: u16,
    pub(crate) child: Child,
}

impl Redis {
    /// A fresh redis-server on a free loopback port; None (test skipped) if there is none.
    pub(crate) fn start() -> Option<Redis> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "CI needs redis-server (apt-get install redis-server)");
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        for _ in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if let Some(r) = Redis::start_on(port) {
                return Some(r);
            }
        }
        panic!("redis-server did not start");
    }

    /// None if it did not come up (the port was taken meanwhile).
    fn start_on(port: u16) -> Option<Redis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let mut r = Redis { port, child };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if r.child.try_wait().unwrap().is_some() {
                return None;
            }
            if r.ping() {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let _ = s.write_all(b"PING\r\n");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("+PONG")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node joined to `redis`, with a short TTL so that expiry can be watched.
pub(crate) fn node(redis: &Redis, ttl: &str, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str(), "--redis-ttl", ttl];
    args.extend_from_slice(extra);
    let s = Server::start(&args);
    assert!(s.wait_log("cluster: connected to Redis"), "{}", s.log());
    s
}

/// Waits up to 5 s for a metric to reach `want`.
pub(crate) fn wait_metric(s: &Server, series: &str, want: f64) {
    let end = Instant::now() + Duration::from_secs(5);
    let mut got = None;
    while Instant::now() < end {
        got = s.metrics().get(series).copied();
        if got == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{series} stayed {got:?}, wanted {want}");
}

/// `id` joins on `on`; returns once node `seen_by` counts `remote` users elsewhere, so that
/// the join has crossed the cluster.
pub(crate) fn join_seen(on: &Server, id: &str, seen_by: &Server, remote: f64) -> Client {
    let mut c = on.connect(id);
    assert_eq!(c.next_of("welcome")["id"], id);
    wait_metric(seen_by, "chatloop_cluster_remote_users", remote);
    c
}

/// Every line up to and including the frames that carry all of `markers` (message texts).
fn until_markers(c: &mut Client, markers: &[&str]) -> Vec<Value> {
    let mut seen: Vec<Value> = Vec::new();
    while !markers.iter().all(|m| seen.iter().any(|l| l["text"] == *m)) {
        seen.extend(c.lines());
    }
    seen
}

fn texts(lines: &[Value]) -> Vec<String> {
    lines.iter().filter(|l| l["type"] == "message").map(|l| l["text"].as_str().unwrap().to_string()).collect()
}

/// Asks `c` for the directory until `room` shows `users` members (the cluster's view).
fn wait_room_size(c: &mut Client, room: &str, users: u64) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        c.send(&json!({"rooms": true}));
        let d = c.next_of("rooms");
        let n = d["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["room"] == room)
            .map_or(0, |r| r["users"].as_u64().unwrap());
        if n == users {
            return;
        }
        assert!(Instant::now() < end, "{room} stayed at {n} users: {d}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Room `room`'s messages and gaps on `c` until `n` messages came (each read bounded by the
/// client's read timeout).
fn room_lines(c: &mut Client, room: &str, n: usize) -> Vec<Value> {
    let mut got: Vec<Value> = Vec::new();
    while got.iter().filter(|l| l["type"] == "message").count() < n {
        let l = c.next_any();
        if l["room"] == room && (l["type"] == "message" || l["type"] == "gap") {
            got.push(l);
        }
    }
    got
}

/// Lines of `c` up to and including the message with text `marker` (sent by the caller).
pub(crate) fn until_text(c: &mut Client, marker: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &Value| l["text"] == marker) {
        seen.push(c.next_any());
    }
    seen
}

mod api;
mod basics;
mod faults;
mod resume;
mod rooms;
