//! Starts the real binary on an ephemeral port and talks to it over real sockets.
//! Shared by the test areas; not every area uses every helper.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub struct Server {
    pub addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatloop"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chatloop");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("{line}"));
        let log = Arc::new(Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        Server { addr: addr.parse().unwrap(), child, log }
    }

    /// Waits up to 5 s for `needle` to appear in the server's stderr.
    pub fn wait_log(&self, needle: &str) -> bool {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if self.log.lock().unwrap().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self, id: &str) -> Client {
        self.connect_path(&format!("/ws?id={id}"))
    }

    pub fn connect_path(&self, path: &str) -> Client {
        let sock = TcpStream::connect(self.addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let url = format!("ws://{}{path}", self.addr);
        let (ws, _) = tungstenite::client::client(url, sock).expect("handshake");
        Client { ws }
    }

    /// Connects and reads the welcome.
    pub fn join(&self, id: &str) -> Client {
        let mut c = self.connect(id);
        let w = c.next_line();
        assert_eq!(w["type"], "welcome", "{w}");
        c
    }

    /// Sends raw bytes and reads until the server closes: the whole HTTP response.
    pub fn raw(&self, request: &[u8]) -> String {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    pub fn get(&self, path: &str) -> String {
        self.raw(format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr).as_bytes())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<_> = log.lines().filter(|l| !l.starts_with("[DEBUG")).rev().take(30).collect();
            eprintln!("--- server log (last non-debug lines) ---");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

/// What the next frame was.
#[derive(Debug)]
pub enum Frame {
    Lines(Vec<Value>),
    Closed(Option<u16>, String),
}

impl Client {
    pub fn send(&mut self, v: &Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    pub fn send_text(&mut self, t: &str) {
        self.ws.send(Message::text(t)).unwrap();
    }

    /// The next data frame split into JSON lines, or the close.
    pub fn frame(&mut self) -> Frame {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return Frame::Lines(t.split('\n').map(|l| serde_json::from_str(l).expect(l)).collect());
                }
                Ok(Message::Close(c)) => {
                    return Frame::Closed(
                        c.as_ref().map(|c| u16::from(c.code)),
                        c.map(|c| c.reason.to_string()).unwrap_or_default(),
                    );
                }
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed) => {
                    return Frame::Closed(None, "eof".into());
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    pub fn lines(&mut self) -> Vec<Value> {
        match self.frame() {
            Frame::Lines(l) => l,
            other => panic!("expected lines, got {other:?}"),
        }
    }

    /// The next line, skipping presence events.
    pub fn next_line(&mut self) -> Value {
        loop {
            for l in self.lines() {
                if l["type"] != "join" && l["type"] != "leave" {
                    return l;
                }
            }
        }
    }

    /// Reads until a close frame arrives; returns its code.
    pub fn close_code(&mut self) -> Option<u16> {
        loop {
            if let Frame::Closed(code, _) = self.frame() {
                return code;
            }
        }
    }
}

pub fn code(c: CloseCode) -> u16 {
    c.into()
}
