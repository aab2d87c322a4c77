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
        Server::spawn(Command::new(env!("CARGO_BIN_EXE_chatloop")), args)
    }

    fn spawn(mut cmd: Command, args: &[&str]) -> Server {
        // An ephemeral port unless the test names an address: a flag is given once.
        if !args.contains(&"--addr") {
            cmd.args(["--addr", "127.0.0.1:0"]);
        }
        let mut child = cmd
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

    /// The log as it grows, for a thread that waits on it.
    pub fn log_handle(&self) -> Arc<Mutex<String>> {
        Arc::clone(&self.log)
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
        Client { ws, backlog: Default::default() }
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
    /// Lines of a coalesced frame not yet handed out by `next_line`.
    backlog: std::collections::VecDeque<Value>,
}

/// What the next frame was.
#[derive(Debug)]
pub enum Frame {
    Lines(Vec<Value>),
    Closed(Option<u16>, String),
}

impl Client {
    /// A client over a WebSocket the caller opened (e.g. to time its handshake).
    pub fn from_ws(ws: WebSocket<TcpStream>) -> Client {
        Client { ws, backlog: Default::default() }
    }

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

    /// The next line of any type (presence included), lines kept from an earlier frame first.
    pub fn next_any(&mut self) -> Value {
        loop {
            if let Some(l) = self.backlog.pop_front() {
                return l;
            }
            let lines = self.lines();
            self.backlog.extend(lines);
        }
    }

    /// The next line, skipping presence events; later lines of the same frame are kept.
    pub fn next_line(&mut self) -> Value {
        loop {
            while let Some(l) = self.backlog.pop_front() {
                if l["type"] != "join" && l["type"] != "leave" {
                    return l;
                }
            }
            let lines = self.lines();
            self.backlog.extend(lines);
        }
    }

    /// The next line of type `kind`, skipping (and dropping) lines of other types before it;
    /// lines after it stay for the next call.
    pub fn next_of(&mut self, kind: &str) -> Value {
        loop {
            while let Some(l) = self.backlog.pop_front() {
                if l["type"] == kind {
                    return l;
                }
            }
            match self.frame() {
                Frame::Lines(lines) => self.backlog.extend(lines),
                Frame::Closed(code, why) => panic!("closed {code:?} {why} while waiting for {kind}"),
            }
        }
    }

    /// Leaves as a well-behaved client does: sends its close frame and waits for the
    /// server's. (Dropping a client without one is a lost connection: its user is held for
    /// `--resume-grace`.)
    pub fn bye(mut self) {
        let _ = self.ws.close(None);
        loop {
            match self.ws.read() {
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    /// Reads until a close frame arrives and sends the reply; returns its code.
    pub fn close_code(&mut self) -> Option<u16> {
        loop {
            if let Frame::Closed(code, _) = self.frame() {
                let _ = self.ws.flush();
                return code;
            }
        }
    }
}

pub fn code(c: CloseCode) -> u16 {
    c.into()
}

impl Server {
    /// Starts the binary with RLIMIT_NOFILE set to `nofile` (soft and hard) before exec.
    pub fn start_limited(args: &[&str], nofile: u64) -> Server {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatloop"));
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Server::spawn(cmd, args)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// `/metrics` as a map from series (with labels) to value; panics on a malformed line.
    pub fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let r = self.get("/metrics");
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"));
        let mut out = std::collections::HashMap::new();
        for line in body.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
            let name_ok =
                series.split('{').next().unwrap().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            assert!(name_ok && (!series.contains('{') || series.ends_with('}')), "bad series {line:?}");
            out.insert(series.to_string(), value.parse().unwrap_or_else(|_| panic!("bad value {line:?}")));
        }
        out
    }

    /// The server's resident set, from /proc.
    pub fn rss_kb(&self) -> u64 {
        self.status_kb("VmRSS:")
    }

    /// The server's anonymous resident memory (heap and stacks, not mapped code), from /proc.
    pub fn anon_kb(&self) -> u64 {
        self.status_kb("RssAnon:")
    }

    fn status_kb(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// CPU seconds (user + system) the server has used, from /proc.
    pub fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    /// Completes a WebSocket handshake by hand and returns the raw socket (101 consumed).
    pub fn raw_ws(&self, id: &str) -> TcpStream {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(upgrade_request(&format!("/ws?id={id}")).as_bytes()).unwrap();
        // Peek, then take exactly the head: the frames behind it stay for the caller.
        let mut buf = [0u8; 1024];
        let len = loop {
            let n = s.peek(&mut buf).unwrap();
            assert!(n > 0, "EOF in handshake");
            if let Some(i) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let mut head = vec![0u8; len];
        s.read_exact(&mut head).unwrap();
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        s
    }
}

pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// One client frame. `first` is the first byte (FIN, RSV, opcode); masked unless `mask` is None.
pub fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![first];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n < 65536 => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// A masked frame with FIN set and opcode `op`.
pub fn masked(op: u8, payload: &[u8]) -> Vec<u8> {
    frame(0x80 | op, payload, Some([1, 2, 3, 4]))
}

/// Reads server frames until a close frame (its code) or EOF/reset (None).
pub fn read_close(s: &mut TcpStream) -> Option<u16> {
    let mut read = |n: usize| -> Option<Vec<u8>> {
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).ok()?;
        Some(b)
    };
    loop {
        let h = read(2)?;
        let len = match h[1] & 0x7f {
            126 => u16::from_be_bytes(read(2)?.try_into().unwrap()) as usize,
            127 => u64::from_be_bytes(read(8)?.try_into().unwrap()) as usize,
            n => n as usize,
        };
        let body = read(len)?;
        if h[0] & 0x0f == 8 {
            return Some(if body.len() >= 2 { u16::from_be_bytes([body[0], body[1]]) } else { 1005 });
        }
    }
}
