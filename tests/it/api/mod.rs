//! The backend API (issue 25) against the real binary: `access.rs` (the key, bodies, the HTTP
//! rules, keep-alive), `speak.rs` (publish, send), `read.rs` (rooms, history, users).
//! The helpers speak HTTP/1.1 by hand over one kept-alive socket, so every byte is the test's.

pub mod access;
mod read;
mod speak;

use super::util::Server;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const KEY: &str = "test-api-key-0123456789";

/// A key file holding `KEY` and a newline (trimmed by the server), for `--api-key`.
pub fn key_file() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("chatloop-api-key-{}-{n}", std::process::id()));
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    path.to_string_lossy().into_owned()
}

/// A server with the API on, and `extra` flags.
pub fn start(extra: &[&str]) -> Server {
    let key = key_file();
    let mut args = vec!["--api-key", key.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// One response: status, headers (lowercased names), body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The error's code (`{"error":{"code":...}}`), checking the shape on the way.
    pub fn code(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty() && !m.contains('\n')), "{v}");
        e["code"].as_str().unwrap_or_else(|| panic!("no error code: {v}")).to_string()
    }
}

/// One kept-alive connection to the API.
pub struct Conn {
    pub sock: TcpStream,
    buf: Vec<u8>,
    host: String,
}

impl Conn {
    pub fn open(s: &Server) -> Conn {
        let sock = TcpStream::connect(s.addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn { sock, buf: Vec::new(), host: s.addr.to_string() }
    }

    /// A request with the key; `body` as JSON for a POST.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&Value>) -> Response {
        self.send(method, path, body);
        self.response().expect("a response")
    }

    pub fn send(&mut self, method: &str, path: &str, body: Option<&Value>) {
        let raw = request(&self.host, method, path, body);
        self.sock.write_all(raw.as_bytes()).unwrap();
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    pub fn post(&mut self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(body))
    }

    /// Reads one response (None: the server closed first).
    pub fn response(&mut self) -> Option<Response> {
        let mut scanned: usize = 0;
        loop {
            // Only what arrived since the last look is searched for the head's end.
            let from = scanned.saturating_sub(3);
            if let Some(at) = self.buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                let end = from + at;
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while self.buf.len() < end + 4 + len {
                    if !self.fill() {
                        return None;
                    }
                }
                let status = head[9..12].parse().unwrap();
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Some(Response { status, head, body });
            }
            scanned = self.buf.len();
            if !self.fill() {
                return None;
            }
        }
    }

    /// Reads what the socket has; false at EOF.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        loop {
            match self.sock.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return true;
                }
                // A signal to the test process (another test's child exiting) is no answer.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("reading a response: {e} ({:?}), {} bytes so far", e.kind(), self.buf.len()),
            }
        }
    }

    /// Whether the server closed the connection (EOF within the read timeout).
    pub fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.sock.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// A request's bytes, with the key.
pub fn request(host: &str, method: &str, path: &str, body: Option<&Value>) -> String {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let typed = if method == "POST" {
        format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n{typed}\r\n{body}")
}
