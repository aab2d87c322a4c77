//! One non-blocking RESP3 connection to Redis, driven by the server's poll loop.
//!
//! The link connects (and reconnects, with doubling back-off), says `HELLO 3`, queues
//! commands into a capped buffer and hands back decoded frames. Encoding and decoding are
//! `redis-protocol`'s; this module only moves bytes. RESP3 is used because it lets one
//! connection both publish and receive pub/sub pushes (RESP2 needs a second connection).
//!
//! Nothing here knows what the commands mean: that is `cluster`'s business.

use bytes::{Bytes, BytesMut};
use log::{info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use redis_protocol::resp3::decode::complete::decode_bytes_mut;
use redis_protocol::resp3::encode::complete::extend_encode_borrowed;
use redis_protocol::resp3::types::{BorrowedFrame, BytesFrame};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The first retry after a failure; each failure doubles it up to `MAX_BACKOFF`.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Commands queued for Redis beyond this are refused: the caller reports the cluster as
/// unavailable rather than let a stalled Redis grow our memory without bound.
pub const QUEUE_CAP: usize = 16 << 20;
/// Bytes read from Redis per loop turn before other sockets get their turn.
const READ_BUDGET: usize = 1 << 20;
/// A reply larger than this is not something we asked for: drop the link.
const MAX_FRAME: usize = 64 << 20;

/// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, resolved once at start-up (the loop never
/// blocks on DNS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub addr: SocketAddr,
    pub db: u32,
    pub auth: Option<(String, String)>,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let bad = |why: &str| format!("--redis: '{s}' {why} (expected redis://HOST:PORT[/DB])");
        let rest = s.strip_prefix("redis://").ok_or_else(|| bad("does not start with redis://"))?;
        let (rest, db) = match rest.split_once('/') {
            Some((r, "")) => (r, 0),
            Some((r, db)) => (r, db.parse().map_err(|_| bad("has a database that is not a number"))?),
            None => (rest, 0),
        };
        let (auth, host) = match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or(("", userinfo));
                let user = if user.is_empty() { "default" } else { user };
                (Some((user.to_string(), pass.to_string())), host)
            }
            None => (None, rest),
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let has_port =
            host.rsplit_once(':').is_some_and(|(h, p)| !h.ends_with(':') && p.parse::<u16>().is_ok());
        let target = if has_port { host.to_string() } else { format!("{host}:6379") };
        let addr = target
            .to_socket_addrs()
            .map_err(|e| bad(&format!("cannot be resolved: {e}")))?
            .next()
            .ok_or_else(|| bad("resolves to no address"))?;
        Ok(Url { addr, db, auth })
    }
}

/// Where the link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No socket; try again at this instant.
    Down(Instant),
    /// TCP connect or `HELLO` in flight; commands are refused until `Up`.
    Connecting,
    Up,
}

/// What reading the link produced.
#[derive(Debug)]
pub enum Input {
    /// The handshake completed: the caller may (re)subscribe and (re)register.
    Up,
    /// A reply to one of the caller's commands, in the order they were sent.
    Reply(BytesFrame),
    /// A pub/sub message.
    Message { channel: Bytes, payload: Bytes },
    /// The link failed; every reply still awaited is lost.
    Down,
}

pub struct Link {
    url: Url,
    token: Token,
    sock: Option<TcpStream>,
    state: State,
    out: BytesMut,
    inbuf: BytesMut,
    /// Replies to our own handshake (`HELLO`, `SELECT`) still to come.
    handshake: u8,
    backoff: Duration,
    want_writable: bool,
    /// Logged once per outage, not once per retry.
    warned: bool,
    /// When the current connection attempt started.
    since: Instant,
    /// Bytes handed to the socket, ever (over every connection): with `end`, tells whether a
    /// queued command has gone out.
    written: u64,
}

impl Link {
    /// A link that will first connect at `now`.
    pub fn new(url: Url, token: Token, now: Instant) -> Link {
        Link {
            url,
            token,
            sock: None,
            state: State::Down(now),
            out: BytesMut::new(),
            inbuf: BytesMut::new(),
            handshake: 0,
            backoff: FIRST_BACKOFF,
            want_writable: false,
            warned: false,
            since: now,
            written: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// When the loop must wake for this link: a retry, or the moment a connection attempt
    /// that has not finished counts as overdue (`limit` after it began).
    pub fn deadline(&self, limit: Duration) -> Option<Instant> {
        match self.state {
            State::Down(at) => Some(at),
            State::Connecting => Some(self.since + limit),
            State::Up => None,
        }
    }

    /// Whether a connection attempt (TCP and `HELLO`) has taken longer than `limit`.
    pub fn connect_overdue(&self, now: Instant, limit: Duration) -> bool {
        self.state == State::Connecting && now.duration_since(self.since) >= limit
    }

    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Where the stream of bytes queued for Redis ends now: a command queued just before has
    /// gone out once `written` reaches this.
    pub fn end(&self) -> u64 {
        self.written + self.out.len() as u64
    }

    /// Bytes handed to the socket so far. When the link fails, its unwritten queue is dropped
    /// (never sent later), so a command whose `end` is past this never reached Redis.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Starts a connection if one is due. Failures are reported by `fail`'s back-off.
    pub fn poll_connect(&mut self, registry: &Registry, now: Instant) {
        let State::Down(at) = self.state else { return };
        if now < at {
            return;
        }
        match TcpStream::connect(self.url.addr) {
            Ok(mut sock) => {
                if let Err(e) =
                    registry.register(&mut sock, self.token, Interest::READABLE | Interest::WRITABLE)
                {
                    return self.down(registry, &e.to_string(), now);
                }
                let _ = sock.set_nodelay(true);
                self.sock = Some(sock);
                self.want_writable = true;
                self.state = State::Connecting;
                self.since = now;
                self.queue_handshake();
            }
            Err(e) => self.down(registry, &e.to_string(), now),
        }
    }

    fn queue_handshake(&mut self) {
        let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
        if let Some((user, pass)) = &self.url.auth {
            hello.extend([b"AUTH".as_slice(), user.as_bytes(), pass.as_bytes()]);
        }
        encode(&mut self.out, &hello);
        self.handshake = 1;
        if self.url.db != 0 {
            let db = self.url.db.to_string();
            encode(&mut self.out, &[b"SELECT", db.as_bytes()]);
            self.handshake += 1;
        }
    }

    /// Queues one command; false (and nothing queued) if the link is not up or the queue is
    /// full. The bytes go out at the next `flush`.
    pub fn send(&mut self, args: &[&[u8]]) -> bool {
        let len: usize = args.iter().map(|a| a.len() + 24).sum();
        if self.state != State::Up || self.out.len() + len > QUEUE_CAP {
            return false;
        }
        encode(&mut self.out, args);
        true
    }

    /// Writes what is queued until the socket would block. False if the link failed here
    /// (the caller then treats it as `Input::Down`).
    pub fn flush(&mut self, registry: &Registry, now: Instant) -> bool {
        let Some(sock) = &mut self.sock else { return true };
        let mut blocked = false;
        while !self.out.is_empty() {
            match sock.write(&self.out) {
                Ok(0) => {
                    self.down(registry, "wrote 0 bytes", now);
                    return false;
                }
                Ok(n) => {
                    let _ = self.out.split_to(n);
                    self.written += n as u64;
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::NotConnected =>
                {
                    blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.down(registry, &e.to_string(), now);
                    return false;
                }
            }
        }
        if self.out.capacity() > 64 << 10 && self.out.is_empty() {
            self.out = BytesMut::new(); // a burst is over: give its buffer back
        }
        if blocked != self.want_writable {
            self.want_writable = blocked;
            let interest = if blocked { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let _ = registry.reregister(sock, self.token, interest);
        }
        true
    }

    /// Gives up on the connection (Redis stopped answering) and schedules a retry.
    pub fn fail(&mut self, registry: &Registry, why: &str, now: Instant) {
        if self.sock.is_some() {
            self.down(registry, why, now);
        }
    }

    /// Handles a readiness event: completes a connect, then reads and decodes what arrived,
    /// up to a budget. True means the budget ran out with input left: come back next turn.
    pub fn ready(&mut self, registry: &Registry, now: Instant, out: &mut Vec<Input>) -> bool {
        match self.read_all(out) {
            Ok(again) => again,
            Err(why) => {
                self.down(registry, &why, now);
                out.push(Input::Down);
                false
            }
        }
    }

    /// `ready`'s work; an error is why the link failed.
    fn read_all(&mut self, out: &mut Vec<Input>) -> Result<bool, String> {
        let Some(sock) = &mut self.sock else { return Ok(false) };
        if self.state == State::Connecting
            && let Some(e) = sock.take_error().ok().flatten().or_else(|| sock.peer_addr().err())
        {
            if e.kind() == io::ErrorKind::NotConnected {
                return Ok(false); // not yet: a later event completes it
            }
            return Err(e.to_string());
        }
        let mut read = 0;
        while read < READ_BUDGET {
            let start = self.inbuf.len();
            self.inbuf.resize(start + (16 << 10), 0);
            let result = sock.read(&mut self.inbuf[start..]);
            self.inbuf.truncate(start + *result.as_ref().unwrap_or(&0));
            match result {
                Ok(0) => return Err("connection closed by Redis".into()),
                Ok(n) => read += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        self.decode(out)?;
        Ok(read >= READ_BUDGET)
    }

    fn decode(&mut self, out: &mut Vec<Input>) -> Result<(), String> {
        loop {
            let frame = match decode_bytes_mut(&mut self.inbuf) {
                Ok(Some((frame, _, _))) => frame,
                Ok(None) if self.inbuf.len() > MAX_FRAME => return Err("reply too large".into()),
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("bad reply: {e:?}")),
            };
            if self.handshake > 0 {
                self.handshake -= 1;
                if let Some(e) = error_text(&frame) {
                    // HELLO is unknown before Redis 6; AUTH and SELECT fail on a wrong URL.
                    return Err(format!("handshake refused: {e} (chatloop needs Redis 6 or newer)"));
                }
                if self.handshake == 0 {
                    info!("cluster: connected to Redis at {}", self.url.addr);
                    self.state = State::Up;
                    self.backoff = FIRST_BACKOFF;
                    self.warned = false;
                    out.push(Input::Up);
                }
                continue;
            }
            match frame {
                BytesFrame::Push { data, .. } => {
                    // ["message", channel, payload]; subscribe confirmations are ignored.
                    if let [kind, channel, payload] = &data[..]
                        && blob(kind).is_some_and(|k| k == "message")
                        && let (Some(channel), Some(payload)) = (blob(channel), blob(payload))
                    {
                        out.push(Input::Message { channel, payload });
                    }
                }
                frame => out.push(Input::Reply(frame)),
            }
        }
    }

    /// Drops the socket and schedules the next attempt.
    fn down(&mut self, registry: &Registry, why: &str, now: Instant) {
        if let Some(mut sock) = self.sock.take() {
            let _ = registry.deregister(&mut sock);
        }
        let retry = self.backoff;
        if !self.warned {
            warn!(
                "cluster: Redis at {} unavailable ({why}); retrying, every {retry:?} at first",
                self.url.addr
            );
            self.warned = true;
        }
        self.state = State::Down(now + retry);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        // What was not written is dropped, not sent on the next connection: its senders are
        // told it failed (`written` stays, so the caller can tell which commands went out).
        self.out.clear();
        self.inbuf.clear();
        self.handshake = 0;
        self.want_writable = false;
    }

    /// Best effort at exit: writes what is queued, waiting at most `limit` in total.
    pub fn drain_for(&mut self, limit: Duration) {
        let Some(sock) = &mut self.sock else { return };
        let end = Instant::now() + limit;
        while !self.out.is_empty() && Instant::now() < end {
            match sock.write(&self.out) {
                Ok(n) if n > 0 => {
                    let _ = self.out.split_to(n);
                    self.written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                _ => return,
            }
        }
    }
}

#[cfg(test)]
impl Link {
    /// As if connected: commands are taken (and stay queued, with no socket to write them).
    pub fn pretend_up(&mut self) {
        self.state = State::Up;
    }

    /// As if the socket had taken `n` bytes of the queue.
    pub fn pretend_written(&mut self, n: u64) {
        let _ = self.out.split_to(n as usize);
        self.written += n;
    }
}

/// The bytes of a string-like frame (Redis sends channel names and payloads as blobs).
fn blob(f: &BytesFrame) -> Option<Bytes> {
    match f {
        BytesFrame::BlobString { data, .. } | BytesFrame::SimpleString { data, .. } => Some(data.clone()),
        _ => None,
    }
}

/// Appends `args` as a RESP array of blob strings, which is how every command is sent.
fn encode(out: &mut BytesMut, args: &[&[u8]]) {
    let parts: Vec<BorrowedFrame> =
        args.iter().map(|a| BorrowedFrame::BlobString { data: a, attributes: None }).collect();
    let frame = BorrowedFrame::Array { data: &parts, attributes: None };
    // Encoding blob strings into a growable buffer cannot fail.
    extend_encode_borrowed(out, &frame, false).expect("RESP encode");
}

/// An integer in a Redis reply.
pub fn frame_number(f: &BytesFrame) -> Option<i64> {
    match f {
        BytesFrame::Number { data, .. } => Some(*data),
        _ => None,
    }
}

/// Whether a reply is an error, and its text.
pub fn error_text(f: &BytesFrame) -> Option<String> {
    match f {
        BytesFrame::SimpleError { data, .. } => Some(data.to_string()),
        BytesFrame::BlobError { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_refuse_nonsense() {
        let u = Url::parse("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!((u.addr, u.db, u.auth), ("127.0.0.1:6380".parse().unwrap(), 2, None));
        assert_eq!(Url::parse("redis://127.0.0.1").unwrap().addr.port(), 6379);
        assert_eq!(Url::parse("redis://[::1]:7000/").unwrap().addr, "[::1]:7000".parse().unwrap());
        assert_eq!(Url::parse("redis://[::1]").unwrap().addr.port(), 6379);
        let a = Url::parse("redis://:s3cret@127.0.0.1:1").unwrap().auth;
        assert_eq!(a, Some(("default".into(), "s3cret".into())));
        let a = Url::parse("redis://bob:pw@127.0.0.1:1").unwrap().auth;
        assert_eq!(a, Some(("bob".into(), "pw".into())));
        for bad in ["127.0.0.1:6379", "redis://", "redis://127.0.0.1:6379/x", "http://h:1"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn commands_are_resp_arrays_of_blobs_and_the_cap_refuses_when_down() {
        let mut out = BytesMut::new();
        encode(&mut out, &[b"PUBLISH", b"ch", b"a b"]);
        assert_eq!(&out[..], b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$3\r\na b\r\n");
        let url = Url::parse("redis://127.0.0.1:1").unwrap();
        let mut link = Link::new(url, Token(0), Instant::now());
        assert!(!link.send(&[b"PING"]), "a link that is not up takes nothing");
        assert_eq!(link.queued(), 0);
    }

    #[test]
    fn pushes_become_messages_and_replies_stay_in_order() {
        let url = Url::parse("redis://127.0.0.1:1").unwrap();
        let mut link = Link::new(url, Token(0), Instant::now());
        link.inbuf.extend_from_slice(b"%1\r\n+server\r\n+redis\r\n"); // HELLO's map
        link.handshake = 1;
        link.inbuf.extend_from_slice(
            b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n:7\r\n>3\r\n$9\r\nsubscribe",
        );
        let mut got = Vec::new();
        link.decode(&mut got).unwrap();
        assert!(matches!(got[0], Input::Up));
        assert!(
            matches!(&got[1], Input::Message { channel, payload } if &channel[..] == b"ch" && &payload[..] == b"hello")
        );
        assert!(matches!(&got[2], Input::Reply(BytesFrame::Number { data: 7, .. })));
        assert_eq!(got.len(), 3, "an incomplete frame waits for more bytes");
        link.inbuf.extend_from_slice(b"\r\n$2\r\nch\r\n:1\r\n");
        got.clear();
        link.decode(&mut got).unwrap();
        assert!(got.is_empty(), "subscribe confirmations are not replies");
    }

    #[test]
    fn a_refused_hello_is_an_error() {
        let url = Url::parse("redis://127.0.0.1:1").unwrap();
        let mut link = Link::new(url, Token(0), Instant::now());
        link.handshake = 1;
        link.inbuf.extend_from_slice(b"-ERR unknown command 'HELLO'\r\n");
        let err = link.decode(&mut Vec::new()).unwrap_err();
        assert!(err.contains("Redis 6"), "{err}");
    }
}
