//! `--attack KIND`: a handful of hostile clients, each doing one thing a fair server must
//! survive, for `--duration`; then a report of what they achieved. Frames are written raw (a
//! client frame with an all-zero mask key carries its payload unchanged), because tungstenite
//! will not write an unfinished fragmented message, and server frames are parsed here.
//!
//! Every loop is bounded: the window by `--duration`, each client's turn by a byte budget,
//! connecting and the handshake by timeouts; main's hard deadline stands behind them all.

use crate::args::{Args, AttackKind};
use crate::lines::field;
use crate::net::io_reason;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Connecting and the HTTP upgrade, per client.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most one client writes, and reads, per loop turn; then the others get their turn.
const TURN_BUDGET: usize = 1 << 20;
/// ping-noread's receive buffer (the kernel doubles it and keeps a floor).
const NOREAD_RCVBUF: usize = 4096;
/// One text of private-flood: 1,000 emoji, 4,000 bytes of UTF-8.
const EMOJI: &str = "😀";
const EMOJI_COUNT: usize = 1000;
/// Repeated frames are written from a buffer of this many.
const PATTERN_FRAMES: usize = 8192;

/// What the attack achieved, for the report.
#[derive(Default)]
pub struct Tally {
    pub connected: u64,
    pub connect_errors: BTreeMap<String, u64>,
    /// Whole frames written (the fragments' opening text frame included).
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub pongs: u64,
    /// Private messages that came back: private-flood's echoes. (The attackers are in the
    /// room too; room traffic is not counted.)
    pub echoes: u64,
    /// Error lines by code.
    pub errors: BTreeMap<String, u64>,
    /// Close frames from the server by code; 1006 when the socket ended without one.
    pub close_codes: BTreeMap<u16, u64>,
    /// Writes that failed (the server dropped the connection), by reason.
    pub write_errors: BTreeMap<String, u64>,
}

struct Client {
    tcp: mio::net::TcpStream,
    /// One-shot bytes to write first: the opening text frame, or a burst of messages.
    pending: Vec<u8>,
    pending_pos: usize,
    /// Bytes written over and over once `pending` is out (pings, continuations).
    pattern: Vec<u8>,
    pattern_pos: usize,
    /// The length of every frame this client writes, to count whole frames.
    frame_len: usize,
    written: u64,
    reads: bool,
    inbuf: Vec<u8>,
    /// Waiting for a writable event (the socket said WouldBlock).
    write_blocked: bool,
    /// Waiting for a readable event.
    read_blocked: bool,
    dead: bool,
    saw_close: bool,
    /// private-flood's token bucket: a burst goes out when it is full.
    tokens: f64,
    refilled: Instant,
}

/// A masked client frame: `b0` is FIN and opcode; the mask key is zero, so the payload goes
/// as it is.
pub fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(b0);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 1 << 16 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

const PING: u8 = 0x89; // FIN + ping
const TEXT_UNFINISHED: u8 = 0x01; // no FIN, text
const CONTINUATION_UNFINISHED: u8 = 0x00; // no FIN, continuation
const TEXT: u8 = 0x81; // FIN + text

/// What one server frame was, as far as the report cares.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    Text(&'a [u8]),
    Close(u16),
    Pong,
    Other,
}

/// The first whole server frame in `buf` and its length; `None` until one is complete.
/// Server frames are unmasked; a masked one is skipped over all the same.
pub fn parse_frame(buf: &[u8]) -> Option<(ServerFrame<'_>, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    let (len, mut at): (usize, usize) = match b1 & 0x7f {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    if b1 & 0x80 != 0 {
        at += 4;
    }
    let payload = buf.get(at..at.checked_add(len)?)?;
    let f = match b0 & 0x0f {
        0x1 => ServerFrame::Text(payload),
        0x8 => ServerFrame::Close(payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]))),
        0xA => ServerFrame::Pong,
        _ => ServerFrame::Other,
    };
    Some((f, at + len))
}

/// Connects one client and upgrades it; the bytes that came after the 101 are returned too.
fn handshake(args: &Args, id: &str, rcvbuf: Option<usize>) -> Result<(std::net::TcpStream, Vec<u8>), String> {
    let sock = Socket::new(Domain::for_address(args.addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| io_reason(&e))?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).map_err(|e| io_reason(&e))?;
    }
    sock.connect_timeout(&SockAddr::from(args.addr), HANDSHAKE_TIMEOUT).map_err(|e| io_reason(&e))?;
    let mut tcp = std::net::TcpStream::from(sock);
    tcp.set_nodelay(true).map_err(|e| io_reason(&e))?;
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(|e| io_reason(&e))?;
    let token = args.token_query(id);
    let request = format!(
        "GET /ws?id={id}{token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        args.host
    );
    tcp.write_all(request.as_bytes()).map_err(|e| io_reason(&e))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if got.len() > 16 * 1024 {
            return Err("handshake_head_too_long".into());
        }
        match tcp.read(&mut buf) {
            Ok(0) => return Err("handshake_eof".into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(io_reason(&e)),
        }
    };
    let status = got.get(9..12).and_then(|s| std::str::from_utf8(s).ok()).unwrap_or("???");
    if !got.starts_with(b"HTTP/1.1 ") || status != "101" {
        return Err(format!("http_{status}"));
    }
    tcp.set_read_timeout(None).map_err(|e| io_reason(&e))?;
    tcp.set_nonblocking(true).map_err(|e| io_reason(&e))?;
    Ok((tcp, got.split_off(head_end)))
}

/// What each kind writes: (one-shot prefix, repeated pattern, frame length).
fn plan(kind: AttackKind) -> (Vec<u8>, Vec<u8>, usize) {
    match kind {
        AttackKind::PingFlood | AttackKind::PingNoRead => {
            let ping = frame(PING, b"");
            (Vec::new(), ping.repeat(PATTERN_FRAMES), ping.len())
        }
        AttackKind::Fragments => {
            let cont = frame(CONTINUATION_UNFINISHED, b"");
            let first = frame(TEXT_UNFINISHED, b"");
            debug_assert_eq!(first.len(), cont.len());
            (first, cont.repeat(PATTERN_FRAMES), cont.len())
        }
        // The bursts are made as the bucket fills.
        AttackKind::PrivateFlood => (Vec::new(), Vec::new(), 0),
    }
}

/// One private-flood message frame to `target`.
fn flood_message(target: &str) -> Vec<u8> {
    frame(TEXT, format!(r#"{{"to":"{target}","text":"{}"}}"#, EMOJI.repeat(EMOJI_COUNT)).as_bytes())
}

/// Runs the attack for `args.duration`, then returns the tally.
pub fn run(args: &Args) -> io::Result<Tally> {
    let attack = args.attack.as_ref().expect("--attack");
    let kind = attack.kind;
    let mut tally = Tally::default();
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(256);
    let (prefix, pattern, mut frame_len) = plan(kind);
    let message = attack.target.as_deref().map(flood_message).unwrap_or_default();
    if kind == AttackKind::PrivateFlood {
        frame_len = message.len();
    }
    let burst = (2.0 * args.rate).ceil().max(1.0);
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..args.conns {
        let id = format!("{}a{i}", args.id_prefix);
        let rcvbuf = (kind == AttackKind::PingNoRead).then_some(NOREAD_RCVBUF);
        match handshake(args, &id, rcvbuf) {
            Ok((tcp, rest)) => {
                let mut tcp = mio::net::TcpStream::from_std(tcp);
                poll.registry().register(
                    &mut tcp,
                    Token(clients.len()),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
                tally.connected += 1;
                clients.push(Client {
                    tcp,
                    pending: prefix.clone(),
                    pending_pos: 0,
                    pattern: pattern.clone(),
                    pattern_pos: 0,
                    frame_len,
                    written: 0,
                    reads: kind != AttackKind::PingNoRead,
                    inbuf: rest,
                    write_blocked: false,
                    read_blocked: false,
                    dead: false,
                    saw_close: false,
                    tokens: burst,
                    refilled: Instant::now(),
                });
            }
            Err(reason) => *tally.connect_errors.entry(reason).or_default() += 1,
        }
    }
    println!(
        "attack {}: {} of {} clients connected to ws://{}/ws{}",
        kind.name(),
        tally.connected,
        args.conns,
        args.host,
        attack.target.as_ref().map(|t| format!(", target {t}")).unwrap_or_default()
    );
    let _ = io::stdout().flush();

    let end = Instant::now() + args.duration;
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        if now >= end || clients.iter().all(|c| c.dead) {
            break;
        }
        // Someone with budget left over or a burst due: poll without sleeping.
        let busy = clients
            .iter()
            .any(|c| !c.dead && ((!c.write_blocked && c.has_output()) || (c.reads && !c.read_blocked)));
        let mut timeout = end - now;
        if busy {
            timeout = Duration::ZERO;
        } else if kind == AttackKind::PrivateFlood {
            timeout = timeout.min(Duration::from_millis(5));
        }
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            if let Some(c) = clients.get_mut(ev.token().0) {
                c.write_blocked &= !ev.is_writable();
                c.read_blocked &= !(ev.is_readable() || ev.is_read_closed() || ev.is_error());
            }
        }
        for c in clients.iter_mut().filter(|c| !c.dead) {
            if kind == AttackKind::PrivateFlood {
                c.refill(args.rate, burst, &message);
            }
            // Reads first, so that a close the server sent is seen before a write fails on
            // the connection it ended.
            if c.reads && !c.read_blocked {
                c.read_some(&mut scratch, &mut tally);
            }
            if !c.write_blocked && !c.dead {
                c.write_some(&mut tally);
            }
        }
    }
    for c in &clients {
        tally.frames_sent += c.written / c.frame_len.max(1) as u64;
        tally.bytes_sent += c.written;
    }
    Ok(tally)
}

impl Client {
    fn has_output(&self) -> bool {
        self.pending_pos < self.pending.len() || !self.pattern.is_empty()
    }

    /// private-flood: when the bucket is full again and the last burst is out, queue the next.
    /// It refills 2% slower than `rate`, so that a server limiting at that rate (whose bucket
    /// started a little later) has refilled too.
    fn refill(&mut self, rate: f64, burst: f64, message: &[u8]) {
        let now = Instant::now();
        let gained = now.duration_since(self.refilled).as_secs_f64() * rate * 0.98;
        self.tokens = (self.tokens + gained).min(burst);
        self.refilled = now;
        if self.tokens >= burst && self.pending_pos >= self.pending.len() {
            self.tokens -= burst;
            self.pending = message.repeat(burst as usize);
            self.pending_pos = 0;
        }
    }

    /// Writes until the socket refuses or the turn's budget is spent.
    fn write_some(&mut self, tally: &mut Tally) {
        let mut budget = TURN_BUDGET;
        while budget > 0 && self.has_output() {
            let (buf, pos) = if self.pending_pos < self.pending.len() {
                (&self.pending, &mut self.pending_pos)
            } else {
                (&self.pattern, &mut self.pattern_pos)
            };
            let chunk = &buf[*pos..buf.len().min(*pos + budget)];
            match self.tcp.write(chunk) {
                Ok(0) => return self.died(tally, "write_zero".into()),
                Ok(n) => {
                    *pos += n;
                    if std::ptr::eq(buf, &self.pattern) && *pos == buf.len() {
                        *pos = 0;
                    }
                    self.written += n as u64;
                    budget -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.write_blocked = true;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.died(tally, io_reason(&e)),
            }
        }
    }

    /// Reads until WouldBlock, EOF or the turn's budget, tallying whole frames.
    fn read_some(&mut self, scratch: &mut [u8], tally: &mut Tally) {
        let mut budget = TURN_BUDGET;
        while budget > 0 {
            match self.tcp.read(scratch) {
                Ok(0) => {
                    self.tally_frames(tally);
                    if !self.saw_close {
                        *tally.close_codes.entry(1006).or_default() += 1;
                    }
                    self.dead = true;
                    return;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&scratch[..n]);
                    budget = budget.saturating_sub(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.read_blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.tally_frames(tally);
                    if !self.saw_close {
                        *tally.close_codes.entry(1006).or_default() += 1;
                    }
                    self.dead = true;
                    return;
                }
            }
        }
        self.tally_frames(tally);
    }

    fn tally_frames(&mut self, tally: &mut Tally) {
        let mut at = 0;
        while let Some((f, len)) = parse_frame(&self.inbuf[at..]) {
            match f {
                ServerFrame::Pong => tally.pongs += 1,
                ServerFrame::Close(code) => {
                    self.saw_close = true;
                    *tally.close_codes.entry(code).or_default() += 1;
                }
                ServerFrame::Text(text) => {
                    for line in text.split(|&b| b == b'\n') {
                        if line.starts_with(br#"{"type":"message""#) {
                            if field(line, br#""to":""#).is_some() {
                                tally.echoes += 1;
                            }
                        } else if line.starts_with(br#"{"type":"error""#) {
                            let code = field(line, br#""code":""#).unwrap_or(b"?");
                            *tally.errors.entry(String::from_utf8_lossy(code).into_owned()).or_default() += 1;
                        }
                    }
                }
                ServerFrame::Other => {}
            }
            at += len;
        }
        self.inbuf.drain(..at);
    }

    /// A write failed: the server has dropped us (or never will read again).
    fn died(&mut self, tally: &mut Tally, reason: String) {
        *tally.write_errors.entry(reason).or_default() += 1;
        if self.reads {
            // What came before the end may hold the close frame: read what is there. The
            // reset is reported once, by the first read; queued bytes may follow it.
            let mut scratch = vec![0u8; 64 * 1024];
            for _ in 0..64 {
                match self.tcp.read(&mut scratch) {
                    Ok(0) => break,
                    Ok(n) => self.inbuf.extend_from_slice(&scratch[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {}
                }
            }
            self.tally_frames(tally);
        }
        self.dead = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_both_ways() {
        assert_eq!(frame(PING, b""), [0x89, 0x80, 0, 0, 0, 0]);
        assert_eq!(frame(TEXT_UNFINISHED, b"")[0] & 0x80, 0, "no FIN");
        let msg = flood_message("victim");
        assert_eq!(msg[1], 0x80 | 126);
        let len = u16::from_be_bytes([msg[2], msg[3]]) as usize;
        assert_eq!(len, msg.len() - 8);
        assert!((4000..4096).contains(&len), "~4 KB, within the default --max-message: {len}");

        // Server frames: a pong, a close with its code, a text, then half a frame.
        let mut buf =
            vec![0x8a, 0x00, 0x88, 0x02, 0x03, 0xf0, 0x81, 0x03, b'a', b'\n', b'b', 0x81, 0x7e, 0x01];
        let (f, n) = parse_frame(&buf).unwrap();
        assert_eq!((f, n), (ServerFrame::Pong, 2));
        buf.drain(..n);
        assert_eq!(parse_frame(&buf).unwrap(), (ServerFrame::Close(1008), 4));
        buf.drain(..4);
        assert_eq!(parse_frame(&buf).unwrap(), (ServerFrame::Text(b"a\nb"), 5));
        buf.drain(..5);
        assert_eq!(parse_frame(&buf), None);
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(parse_frame(&long).unwrap().1, 260);
    }
}
