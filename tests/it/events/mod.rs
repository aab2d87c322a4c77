//! The event stream (`GET /api/events`, issue 25) against the real binary: each type, a blip
//! that is never an offline, `?types=`, `Last-Event-ID` replay and its gap, a consumer that
//! never reads, and (in `cluster.rs`) one stream for a whole cluster.

mod cluster;
mod single;

use crate::util::Server;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const KEY: &str = "events-test-key-0123456789abcdef";

/// A key file for `--api-key`, unique to the test.
pub fn key_file(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("chatloop-events-{}-{name}.key", std::process::id()));
    std::fs::write(&p, format!("{KEY}\n")).unwrap();
    p
}

/// The server with the API (and so the stream) on, plus `args`.
pub fn start(name: &str, args: &[&str]) -> Server {
    let key = key_file(name);
    let mut all = vec!["--api-key", key.to_str().unwrap()];
    all.extend_from_slice(args);
    Server::start(&all)
}

/// One event as the stream sent it.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// A raw-TCP SSE reader.
pub struct Sse {
    pub sock: TcpStream,
    buf: Vec<u8>,
    /// Keep-alive comments seen.
    pub pings: usize,
}

/// The request for the stream, with its key and `last` as `Last-Event-ID`.
pub fn request(addr: std::net::SocketAddr, query: &str, last: Option<u64>) -> String {
    let last = last.map_or(String::new(), |l| format!("Last-Event-ID: {l}\r\n"));
    format!("GET /api/events{query} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n{last}\r\n")
}

impl Sse {
    /// Opens the stream and checks its head.
    pub fn open(s: &Server, query: &str, last: Option<u64>) -> Sse {
        let mut sock = TcpStream::connect(s.addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        sock.write_all(request(s.addr, query, last).as_bytes()).unwrap();
        let mut sse = Sse { sock, buf: Vec::new(), pings: 0 };
        let end = Instant::now() + Duration::from_secs(10);
        let head = loop {
            if let Some(at) = sse.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&sse.buf[..at]).into_owned();
                sse.buf.drain(..at + 4);
                break head;
            }
            assert!(Instant::now() < end, "no head: {:?}", String::from_utf8_lossy(&sse.buf));
            assert!(sse.fill(), "closed before its head: {:?}", String::from_utf8_lossy(&sse.buf));
        };
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
        sse
    }

    /// Reads what is there; false at EOF or a reset.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.sock.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                true
            }
            Err(_) => false,
        }
    }

    /// The next event within `limit` (comments and `retry:` skipped), None if there is none
    /// by then; panics if the stream closes.
    pub fn next_within(&mut self, limit: Duration) -> Option<Ev> {
        let end = Instant::now() + limit;
        loop {
            while let Some(at) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buf[..at].to_vec()).expect("UTF-8");
                self.buf.drain(..at + 2);
                if let Some(ev) = self.parse(&block) {
                    return Some(ev);
                }
            }
            if Instant::now() >= end {
                return None;
            }
            assert!(self.fill(), "stream closed; left: {:?}", String::from_utf8_lossy(&self.buf));
        }
    }

    fn parse(&mut self, block: &str) -> Option<Ev> {
        let (mut id, mut event, mut data) = (None, None, None);
        for line in block.lines() {
            if line.starts_with(':') {
                self.pings += 1;
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse().expect("numeric id"));
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                assert!(data.is_none(), "one data line per event: {block:?}");
                data = Some(serde_json::from_str::<Value>(v).expect("JSON data"));
            } else {
                assert!(line.starts_with("retry: "), "unexpected line {line:?}");
            }
        }
        let event = event?;
        let data = data.expect("data");
        assert_eq!(data["type"], event.as_str(), "data names its type");
        assert!(data["ts"].as_u64().is_some_and(|t| t > 1_700_000_000_000), "ts in ms: {data}");
        Some(Ev { id, event, data })
    }

    /// The next event, within 10 s.
    pub fn next(&mut self) -> Ev {
        self.next_within(Duration::from_secs(10)).expect("an event within 10 s")
    }

    /// Events until one matching `want` (which is returned last), within 15 s.
    pub fn until(&mut self, want: impl Fn(&Ev) -> bool) -> Vec<Ev> {
        let end = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        while Instant::now() < end {
            if let Some(ev) = self.next_within(Duration::from_millis(300)) {
                let done = want(&ev);
                seen.push(ev);
                if done {
                    return seen;
                }
            }
        }
        panic!("not seen within 15 s; saw {seen:?}");
    }
}

/// Whether the server closed `sock` within `limit` (what it still sends is read and dropped).
pub fn closed_within(sock: &mut TcpStream, limit: Duration) -> bool {
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let end = Instant::now() + limit;
    let mut chunk = [0u8; 65536];
    while Instant::now() < end {
        match sock.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// `ev` is `kind` about user `id` (and room `room`, if given).
pub fn is(ev: &Ev, kind: &str, id: &str, room: Option<&str>) -> bool {
    ev.event == kind && ev.data["id"] == id && room.is_none_or(|r| ev.data["room"] == r)
}
