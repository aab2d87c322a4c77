//! The mio loop: every client connection, the send schedule, and the counting.
//!
//! One thread, one `Poll`, a `Slab` of connections. A connection goes
//! TCP connect (non-blocking, bound to a 127.0.0.x source) -> tungstenite client handshake
//! (resumed on readiness) -> open WebSocket, and is read to WouldBlock on every event.
//! Sends come from a heap of deadlines; each message carries the time it was queued.

use crate::args::Args;
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tungstenite::handshake::MidHandshake;
use tungstenite::handshake::client::{ClientHandshake, Response};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{HandshakeError, Message, WebSocket};

/// A connection that has not had its welcome by then counts as a connect error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After we send a close, how long the server gets to answer it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the final close of every connection may take.
const CLOSE_ALL: Duration = Duration::from_secs(2);
/// How often connections are checked against their deadlines.
const SWEEP: Duration = Duration::from_millis(250);
/// Close code recorded when the server ended a connection without a close frame.
const ABNORMAL: u16 = 1006;

const ROOM: u8 = 0;
const PRIVATE: u8 = 1;
const CHURN_CLOSE: u8 = 2;

/// Everything counted, for the report.
#[derive(Default)]
pub struct Counts {
    pub sent_room: u64,
    pub sent_private: u64,
    pub expected: u64,
    pub delivered: u64,
    /// A (receiver, sender) sequence number seen again or out of order.
    pub reordered: u64,
    /// Deliveries to clients that were not counted receivers (connected late).
    pub uncounted: u64,
    /// Message lines whose text was not ours.
    pub foreign: u64,
    /// Sends skipped because the sender (or its partner) was not connected.
    pub skipped_sends: u64,
    pub unexpected_closes: BTreeMap<u16, u64>,
    pub connect_errors: BTreeMap<String, u64>,
    pub server_errors: BTreeMap<String, u64>,
    pub churn_started: u64,
    pub churn_completed: u64,
    pub churn_skipped: u64,
    pub close_timeouts: u64,
    /// Clients connected (welcomed) when sending started.
    pub ready: u64,
    /// Largest number of open client connections at once.
    pub peak_open: u64,
    /// Most a send fell behind its schedule, ns.
    pub max_send_lag_ns: u64,
}

/// A client socket that remembers a short read. On Linux an edge-triggered epoll reports
/// every new arrival, so a read that did not fill its buffer means the socket is empty for
/// now: the next read answers WouldBlock without a syscall, until the next readiness event.
/// That halves the reads of a receiver that gets one frame per event. A short read says
/// nothing about a FIN that came with the data, though: once an event reports the read side
/// closed, every read goes to the socket, so the end of the stream is seen.
struct Sock {
    tcp: mio::net::TcpStream,
    drained: bool,
    read_closed: bool,
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained && !self.read_closed {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let r = self.tcp.read(buf);
        match &r {
            Ok(n) if *n < buf.len() => self.drained = true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.drained = true,
            _ => {}
        }
        r
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

enum State {
    Connecting(Sock),
    Handshake(Box<MidHandshake<ClientHandshake<Sock>>>),
    Open(Box<WebSocket<Sock>>),
    Empty,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Main(u32),
    Churn,
}

struct Conn {
    role: Role,
    generation: u64,
    state: State,
    started: Instant,
    welcomed: bool,
    we_closed: Option<Instant>,
    peer_closed: bool,
    dirty: bool,
}

#[derive(Default)]
struct Main {
    token: Option<usize>,
    /// Counted: connected before sending started and not closed since.
    live: bool,
    /// Connection attempt finished one way or the other (welcome, error, close).
    resolved: bool,
    failed: bool,
    room_seq: u64,
    private_seq: u64,
    /// Next expected sequence number per sender slot: room senders, then self and partner.
    next: Vec<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Connect,
    Run,
    Drain,
    Close,
}

pub struct Engine<'a> {
    args: &'a Args,
    t0: Instant,
    poll: Poll,
    events: Events,
    conns: Slab<Conn>,
    mains: Vec<Main>,
    ids: Vec<String>,
    live_count: u64,
    next_main: usize,
    mains_in_flight: usize,
    open: u64,
    churn_open: usize,
    churn_seq: u64,
    next_generation: u64,
    source_rr: u32,
    timers: BinaryHeap<Reverse<(u64, u8, u32, u64)>>,
    dirty: Vec<usize>,
    ws_config: WebSocketConfig,
    phase: Phase,
    window_start_ns: u64,
    window_end_ns: u64,
    last_sweep: Instant,
    pub counts: Counts,
    pub hist: Histogram<u64>,
    pub first_send: Option<Instant>,
    pub last_delivery: Option<Instant>,
    pad: String,
}

fn is_would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

impl<'a> Engine<'a> {
    pub fn new(args: &'a Args, t0: Instant) -> io::Result<Engine<'a>> {
        let ids = (0..args.conns).map(|i| format!("{}m{i}", args.id_prefix)).collect();
        let slots = args.senders + 2;
        let mains = (0..args.conns).map(|_| Main { next: vec![0; slots], ..Main::default() }).collect();
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(1 << 30) // never write on its own: flushed once per turn
            .max_message_size(Some(1 << 20))
            .max_frame_size(Some(1 << 20));
        Ok(Engine {
            args,
            t0,
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            conns: Slab::with_capacity(args.conns + 64),
            mains,
            ids,
            live_count: 0,
            next_main: 0,
            mains_in_flight: 0,
            open: 0,
            churn_open: 0,
            churn_seq: 0,
            next_generation: 0,
            source_rr: 0,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            ws_config,
            phase: Phase::Connect,
            window_start_ns: 0,
            window_end_ns: 0,
            last_sweep: Instant::now(),
            counts: Counts::default(),
            hist: Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds"),
            first_send: None,
            last_delivery: None,
            pad: "x".repeat(args.size),
        })
    }

    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_nanos() as u64
    }

    fn instant(&self, ns: u64) -> Instant {
        self.t0 + Duration::from_nanos(ns)
    }

    // ---- phases ----------------------------------------------------------------------------

    /// Connects the held clients; returns when all are in (or failed) or at `deadline`.
    pub fn connect_phase(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            self.start_mains();
            let now = Instant::now();
            // Every attempt started and none still in flight: each one ended one way or the other.
            if (self.next_main >= self.args.conns && self.mains_in_flight == 0) || now >= deadline {
                break;
            }
            self.turn(Some(deadline))?;
        }
        for m in &mut self.mains {
            if !m.live && !m.failed {
                m.failed = true;
                *self.counts.connect_errors.entry("not_ready_by_end_of_warmup".into()).or_default() += 1;
            }
        }
        self.counts.ready = self.live_count;
        Ok(())
    }

    /// Sends for `duration` from now. Returns the window's start.
    pub fn run_phase(&mut self, duration: Duration) -> io::Result<Instant> {
        let start = Instant::now();
        self.phase = Phase::Run;
        self.window_start_ns = self.ns(start);
        self.window_end_ns = self.window_start_ns + duration.as_nanos() as u64;
        let args = self.args;
        if args.modes.room {
            for i in 0..args.senders {
                self.timers.push(Reverse((self.send_due(i, args.senders, 0), ROOM, i as u32, 0)));
            }
        }
        if args.modes.private {
            let n = args.conns & !1;
            for i in 0..n {
                self.timers.push(Reverse((self.send_due(i, n, 0), PRIVATE, i as u32, 0)));
            }
        }
        let end = self.instant(self.window_end_ns);
        while Instant::now() < end {
            self.turn(Some(end))?;
        }
        // A loop that fell behind still owes the sends scheduled inside the window: send them
        // now (late, which shows as send lag), so `sent` is the schedule, not the machine's mood.
        self.fire_timers();
        self.flush_dirty();
        Ok(start)
    }

    /// Waits up to `drain` for every expected delivery.
    pub fn drain_phase(&mut self, drain: Duration) -> io::Result<()> {
        self.phase = Phase::Drain;
        let end = Instant::now() + drain;
        while Instant::now() < end && self.counts.delivered < self.counts.expected {
            self.turn(Some(end))?;
        }
        Ok(())
    }

    /// Closes every connection and waits (briefly) for the server's answers.
    pub fn close_phase(&mut self) -> io::Result<()> {
        self.phase = Phase::Close;
        let tokens: Vec<usize> = self.conns.iter().map(|(t, _)| t).collect();
        for t in tokens {
            let open = matches!(self.conns[t].state, State::Open(_));
            if open {
                self.close_conn(t);
            } else {
                self.remove(t);
            }
        }
        self.flush_dirty();
        let end = Instant::now() + CLOSE_ALL;
        while !self.conns.is_empty() && Instant::now() < end {
            self.turn(Some(end))?;
        }
        Ok(())
    }

    /// When sender `i` of `n` sends its `k`th message: spread evenly over one period.
    fn send_due(&self, i: usize, n: usize, k: u64) -> u64 {
        let period = 1e9 / self.args.rate;
        self.window_start_ns + ((k as f64 + i as f64 / n as f64) * period) as u64
    }

    // ---- the loop --------------------------------------------------------------------------

    fn turn(&mut self, until: Option<Instant>) -> io::Result<()> {
        let now = Instant::now();
        let mut timeout = SWEEP;
        if let Some(Reverse((due, ..))) = self.timers.peek() {
            timeout = timeout.min(self.instant(*due).saturating_duration_since(now));
        }
        if self.phase == Phase::Run && self.args.modes.churn {
            timeout = timeout.min(self.instant(self.churn_due()).saturating_duration_since(now));
        }
        if let Some(u) = until {
            timeout = timeout.min(u.saturating_duration_since(now));
        }
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        match self.poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            self.on_event(ev.token().0, ev.is_read_closed() || ev.is_error());
        }
        self.events = events;
        self.fire_timers();
        if self.phase == Phase::Run && self.args.modes.churn {
            self.start_churn();
        }
        if self.phase == Phase::Connect {
            self.start_mains();
        }
        self.flush_dirty();
        if self.last_sweep.elapsed() >= SWEEP {
            self.sweep();
        }
        Ok(())
    }

    fn flush_dirty(&mut self) {
        for t in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(t) else { continue };
            conn.dirty = false;
            if let State::Open(ws) = &mut conn.state {
                // WouldBlock: the rest goes out on the writable event. Other errors show up
                // on the read side too, where they are counted.
                let _ = ws.flush();
            }
        }
    }

    fn mark_dirty(&mut self, t: usize) {
        if let Some(c) = self.conns.get_mut(t)
            && !c.dirty
        {
            c.dirty = true;
            self.dirty.push(t);
        }
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        self.last_sweep = now;
        let mut late = Vec::new();
        for (t, c) in self.conns.iter() {
            if !c.welcomed && now.duration_since(c.started) >= CONNECT_TIMEOUT && c.we_closed.is_none() {
                late.push((t, true));
            } else if c.we_closed.is_some_and(|at| now.duration_since(at) >= CLOSE_TIMEOUT) {
                late.push((t, false));
            }
        }
        for (t, connecting) in late {
            if connecting {
                self.fail(t, "timeout".into());
            } else {
                self.counts.close_timeouts += 1;
                self.remove(t);
            }
        }
    }

    // ---- connecting ------------------------------------------------------------------------

    fn start_mains(&mut self) {
        while self.next_main < self.args.conns && self.mains_in_flight < self.args.connect_concurrency {
            let i = self.next_main;
            self.next_main += 1;
            self.mains_in_flight += 1;
            match self.open_conn(Role::Main(i as u32)) {
                Ok(t) => self.mains[i].token = Some(t),
                Err(e) => {
                    self.mains_in_flight -= 1;
                    self.mains[i].resolved = true;
                    self.mains[i].failed = true;
                    *self.counts.connect_errors.entry(io_reason(&e)).or_default() += 1;
                }
            }
        }
    }

    fn churn_due(&self) -> u64 {
        self.window_start_ns + (self.churn_seq as f64 * 1e9 / self.args.churn) as u64
    }

    fn start_churn(&mut self) {
        let now_ns = self.ns(Instant::now());
        let cap = ((self.args.churn * (self.args.churn_hold.as_secs_f64() + 10.0)) as usize).max(100);
        while self.churn_due() <= now_ns && self.churn_due() < self.window_end_ns {
            self.churn_seq += 1;
            if self.churn_open >= cap {
                self.counts.churn_skipped += 1;
                continue;
            }
            self.counts.churn_started += 1;
            match self.open_conn(Role::Churn) {
                Ok(_) => self.churn_open += 1,
                Err(e) => *self.counts.connect_errors.entry(io_reason(&e)).or_default() += 1,
            }
        }
    }

    /// Starts a non-blocking connect from the next source address.
    fn open_conn(&mut self, role: Role) -> io::Result<usize> {
        let target = self.args.addr;
        let sock = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)?;
        sock.set_tcp_nodelay(true)?;
        if let IpAddr::V4(v4) = target.ip()
            && v4.is_loopback()
            && self.args.sources > 1
        {
            let k = self.source_rr % self.args.sources as u32;
            self.source_rr = self.source_rr.wrapping_add(1);
            let src = Ipv4Addr::new(127, 0, 0, 1 + k as u8);
            set_bind_no_port(&sock);
            sock.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(src), 0)))?;
        }
        match sock.connect(&SockAddr::from(target)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut stream = mio::net::TcpStream::from_std(std::net::TcpStream::from(sock));
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        self.poll.registry().register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE)?;
        let generation = self.next_generation;
        self.next_generation += 1;
        entry.insert(Conn {
            role,
            generation,
            state: State::Connecting(Sock { tcp: stream, drained: false, read_closed: false }),
            started: Instant::now(),
            welcomed: false,
            we_closed: None,
            peer_closed: false,
            dirty: false,
        });
        Ok(token)
    }

    fn on_event(&mut self, t: usize, read_closed: bool) {
        let Some(conn) = self.conns.get_mut(t) else { return };
        match std::mem::replace(&mut conn.state, State::Empty) {
            State::Connecting(mut stream) => {
                stream.drained = false;
                stream.read_closed |= read_closed;
                self.connected(t, stream)
            }
            State::Handshake(mut mid) => {
                let sock = mid.get_mut().get_mut();
                sock.drained = false;
                sock.read_closed |= read_closed;
                self.handshaken(t, mid.handshake())
            }
            State::Open(mut ws) => {
                let sock = ws.get_mut();
                sock.drained = false;
                sock.read_closed |= read_closed;
                conn.state = State::Open(ws);
                self.pump(t);
            }
            State::Empty => {}
        }
    }

    fn connected(&mut self, t: usize, stream: Sock) {
        match stream.tcp.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return self.fail(t, io_reason(&e)),
        }
        match stream.tcp.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                self.conns[t].state = State::Connecting(stream);
                return;
            }
            Err(e) => return self.fail(t, io_reason(&e)),
        }
        let id = match self.conns[t].role {
            Role::Main(i) => self.ids[i as usize].clone(),
            Role::Churn => format!("{}c{}", self.args.id_prefix, self.conns[t].generation),
        };
        let url = format!("ws://{}/ws?id={id}", self.args.host);
        let res = tungstenite::client::client_with_config(url.as_str(), stream, Some(self.ws_config));
        self.handshaken(t, res);
    }

    fn handshaken(
        &mut self,
        t: usize,
        res: Result<(WebSocket<Sock>, Response), HandshakeError<ClientHandshake<Sock>>>,
    ) {
        match res {
            Ok((ws, _)) => {
                self.conns[t].state = State::Open(Box::new(ws));
                self.open += 1;
                self.counts.peak_open = self.counts.peak_open.max(self.open);
                // The welcome may have come with the response: read it now.
                self.pump(t);
            }
            Err(HandshakeError::Interrupted(mid)) => self.conns[t].state = State::Handshake(Box::new(mid)),
            Err(HandshakeError::Failure(e)) => {
                let reason = match &e {
                    tungstenite::Error::Http(r) => format!("http_{}", r.status().as_u16()),
                    tungstenite::Error::Io(io) => io_reason(io),
                    other => format!("handshake_{}", first_word(&other.to_string())),
                };
                self.fail(t, reason);
            }
        }
    }

    /// A connection failed before its welcome.
    fn fail(&mut self, t: usize, reason: String) {
        *self.counts.connect_errors.entry(reason).or_default() += 1;
        if let Some(Role::Main(i)) = self.conns.get(t).map(|c| c.role) {
            self.mains[i as usize].failed = true;
        }
        self.remove(t);
    }

    /// Drops a connection and settles what it was counted in.
    fn remove(&mut self, t: usize) {
        if !self.conns.contains(t) {
            return;
        }
        let mut conn = self.conns.remove(t);
        match &mut conn.state {
            State::Connecting(s) => {
                let _ = self.poll.registry().deregister(&mut s.tcp);
            }
            State::Handshake(mid) => {
                let _ = self.poll.registry().deregister(&mut mid.get_mut().get_mut().tcp);
            }
            State::Open(ws) => {
                self.open -= 1;
                let _ = self.poll.registry().deregister(&mut ws.get_mut().tcp);
            }
            State::Empty => {}
        }
        match conn.role {
            Role::Main(i) => {
                let m = &mut self.mains[i as usize];
                m.token = None;
                if !m.resolved {
                    m.resolved = true;
                    self.mains_in_flight -= 1;
                }
                if m.live {
                    m.live = false;
                    self.live_count -= 1;
                }
            }
            Role::Churn => self.churn_open -= 1,
        }
    }

    // ---- an open connection ----------------------------------------------------------------

    /// Reads every message waiting on `t`, then flushes what tungstenite queued (pongs, close
    /// replies).
    fn pump(&mut self, t: usize) {
        // One clock reading per socket wake-up: what one read brought arrived together.
        let now = Instant::now();
        loop {
            let Some(conn) = self.conns.get_mut(t) else { return };
            let State::Open(ws) = &mut conn.state else { return };
            match ws.read() {
                Ok(Message::Text(text)) => self.on_text(t, text.as_str(), now),
                Ok(Message::Close(frame)) => {
                    conn.peer_closed = true;
                    if conn.we_closed.is_none() {
                        let code = frame.map_or(1005, |f| u16::from(f.code));
                        self.unexpected_close(t, code);
                    }
                }
                Ok(_) => {}
                Err(e) if is_would_block(&e) => break,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return self.ended(t);
                }
                Err(_) => {
                    if conn.we_closed.is_none() && !conn.peer_closed {
                        self.unexpected_close(t, ABNORMAL);
                    }
                    return self.ended(t);
                }
            }
        }
        self.mark_dirty(t);
    }

    /// The connection is over (clean close handshake or not).
    fn ended(&mut self, t: usize) {
        if let Some(c) = self.conns.get(t)
            && c.role == Role::Churn
            && c.we_closed.is_some()
            && c.welcomed
        {
            self.counts.churn_completed += 1;
        }
        self.remove(t);
    }

    fn unexpected_close(&mut self, t: usize, code: u16) {
        *self.counts.unexpected_closes.entry(code).or_default() += 1;
        if let Some(Role::Main(i)) = self.conns.get(t).map(|c| c.role) {
            let m = &mut self.mains[i as usize];
            if m.live {
                m.live = false;
                self.live_count -= 1;
            }
            if !m.resolved {
                m.resolved = true;
                m.failed = true;
                self.mains_in_flight -= 1;
            }
        }
    }

    fn close_conn(&mut self, t: usize) {
        let Some(conn) = self.conns.get_mut(t) else { return };
        if conn.we_closed.is_some() {
            return;
        }
        conn.we_closed = Some(Instant::now());
        if let State::Open(ws) = &mut conn.state {
            let _ = ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }));
        }
        self.mark_dirty(t);
    }

    fn on_text(&mut self, t: usize, text: &str, now: Instant) {
        for line in text.as_bytes().split(|&b| b == b'\n') {
            if line.starts_with(br#"{"type":"message""#) {
                self.on_message(t, line, now);
            } else if line.starts_with(br#"{"type":"welcome""#) {
                self.on_welcome(t);
            } else if line.starts_with(br#"{"type":"error""#) {
                let code = field(line, br#""code":""#).unwrap_or(b"?");
                *self.counts.server_errors.entry(String::from_utf8_lossy(code).into_owned()).or_default() +=
                    1;
            }
        }
    }

    fn on_welcome(&mut self, t: usize) {
        let now_ns = self.ns(Instant::now());
        let conn = &mut self.conns[t];
        if conn.welcomed {
            return;
        }
        conn.welcomed = true;
        match conn.role {
            Role::Main(i) => {
                let m = &mut self.mains[i as usize];
                if !m.resolved {
                    m.resolved = true;
                    self.mains_in_flight -= 1;
                }
                if self.phase == Phase::Connect && !m.failed {
                    m.live = true;
                    self.live_count += 1;
                }
            }
            Role::Churn => {
                let due = now_ns + self.args.churn_hold.as_nanos() as u64;
                let generation = conn.generation;
                self.timers.push(Reverse((due, CHURN_CLOSE, t as u32, generation)));
            }
        }
    }

    fn on_message(&mut self, t: usize, line: &[u8], now: Instant) {
        let Role::Main(r) = self.conns[t].role else { return };
        let r = r as usize;
        let Some((from, text)) = message_fields(line) else {
            self.counts.foreign += 1;
            return;
        };
        let Some((kind, sender, seq, sent_ns)) = parse_text(text) else {
            self.counts.foreign += 1;
            return;
        };
        if sender >= self.args.conns || from != self.ids[sender].as_bytes() {
            self.counts.foreign += 1;
            return;
        }
        let slot = match kind {
            b'r' if sender < self.args.senders => sender,
            b'p' if sender == r => self.args.senders,
            b'p' if sender == r ^ 1 => self.args.senders + 1,
            _ => {
                self.counts.foreign += 1;
                return;
            }
        };
        let m = &mut self.mains[r];
        if !m.live {
            self.counts.uncounted += 1;
            return;
        }
        let next = &mut m.next[slot];
        if seq < *next {
            self.counts.reordered += 1;
            return;
        }
        *next = seq + 1;
        self.counts.delivered += 1;
        self.last_delivery = Some(now);
        let latency = self.ns(now).saturating_sub(sent_ns);
        self.hist.saturating_record(latency.max(1));
    }

    // ---- sending ---------------------------------------------------------------------------

    fn fire_timers(&mut self) {
        let now_ns = self.ns(Instant::now());
        while let Some(&Reverse((due, kind, a, b))) = self.timers.peek() {
            if due > now_ns {
                break;
            }
            self.timers.pop();
            match kind {
                CHURN_CLOSE => {
                    let t = a as usize;
                    if self.conns.get(t).is_some_and(|c| c.generation == b) {
                        self.close_conn(t);
                    }
                }
                _ if self.phase != Phase::Run => {}
                _ => {
                    self.counts.max_send_lag_ns = self.counts.max_send_lag_ns.max(now_ns - due);
                    let i = a as usize;
                    // Stamped with the time it is queued (and flushed, at the end of this
                    // turn): latency is the server's and the network's, not our timer's.
                    let (n, sent) = if kind == ROOM {
                        (self.args.senders, self.send_room(i, now_ns))
                    } else {
                        (self.args.conns & !1, self.send_private(i, now_ns))
                    };
                    if !sent {
                        self.counts.skipped_sends += 1;
                    }
                    let next = self.send_due(i, n, b + 1);
                    if next < self.window_end_ns {
                        self.timers.push(Reverse((next, kind, a, b + 1)));
                    }
                }
            }
        }
    }

    fn send_room(&mut self, i: usize, stamp: u64) -> bool {
        let m = &mut self.mains[i];
        let (true, Some(t)) = (m.live, m.token) else { return false };
        let seq = m.room_seq;
        let mut json = String::with_capacity(48 + self.pad.len());
        let _ = write!(json, r#"{{"text":"r {i} {seq} {stamp}{}"}}"#, self.pad);
        if !self.write(t, json) {
            return false;
        }
        self.mains[i].room_seq += 1;
        self.counts.sent_room += 1;
        self.counts.expected += self.live_count;
        true
    }

    fn send_private(&mut self, i: usize, stamp: u64) -> bool {
        let j = i ^ 1;
        let (m, p) = (&self.mains[i], &self.mains[j]);
        let (true, true, Some(t)) = (m.live, p.live, m.token) else { return false };
        let seq = m.private_seq;
        let mut json = String::with_capacity(64 + self.pad.len());
        let _ = write!(json, r#"{{"to":"{}","text":"p {i} {seq} {stamp}{}"}}"#, self.ids[j], self.pad);
        if !self.write(t, json) {
            return false;
        }
        self.mains[i].private_seq += 1;
        self.counts.sent_private += 1;
        self.counts.expected += 2;
        true
    }

    /// Queues one text message; it goes out at the end of the turn.
    fn write(&mut self, t: usize, json: String) -> bool {
        let Some(conn) = self.conns.get_mut(t) else { return false };
        let State::Open(ws) = &mut conn.state else { return false };
        match ws.write(Message::text(json)) {
            Ok(()) => {}
            Err(e) if is_would_block(&e) => {} // queued; the rest goes on writable
            Err(_) => return false,
        }
        if self.first_send.is_none() {
            self.first_send = Some(Instant::now());
        }
        self.mark_dirty(t);
        true
    }

    pub fn live_count(&self) -> u64 {
        self.live_count
    }

    pub fn open_count(&self) -> u64 {
        self.open
    }
}

/// The value of a string field in one of the server's JSON lines; `key` is `"name":"`. Our
/// ids and texts never hold a quote or a backslash, so the next quote ends the value.
fn field<'l>(line: &'l [u8], key: &[u8]) -> Option<&'l [u8]> {
    let start = line.windows(key.len()).position(|w| w == key)? + key.len();
    let len = line[start..].iter().position(|&b| b == b'"')?;
    Some(&line[start..start + len])
}

/// `from` and `text` of a message line: a fast path for the server's field order, and a
/// search for any other.
fn message_fields(line: &[u8]) -> Option<(&[u8], &[u8])> {
    fn quoted(rest: &[u8]) -> Option<(&[u8], &[u8])> {
        let q = rest.iter().position(|&b| b == b'"')?;
        Some((&rest[..q], &rest[q + 1..]))
    }
    let fast = || {
        let (from, mut rest) = quoted(line.strip_prefix(br#"{"type":"message","from":""#)?)?;
        if let Some(r) = rest.strip_prefix(br#","to":""#) {
            rest = quoted(r)?.1;
        }
        let (text, _) = quoted(rest.strip_prefix(br#","text":""#)?)?;
        Some((from, text))
    };
    fast().or_else(|| Some((field(line, br#""from":""#)?, field(line, br#""text":""#)?)))
}

fn number<T: std::str::FromStr>(b: &[u8]) -> Option<T> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// "<kind> <sender> <seq> <ns>[padding]" -> its parts.
fn parse_text(text: &[u8]) -> Option<(u8, usize, u64, u64)> {
    let mut it = text.split(|&b| b == b' ');
    let kind = match it.next()? {
        b"r" => b'r',
        b"p" => b'p',
        _ => return None,
    };
    let sender = number(it.next()?)?;
    let seq = number(it.next()?)?;
    let ns = it.next()?;
    let digits = ns.iter().take_while(|b| b.is_ascii_digit()).count();
    Some((kind, sender, seq, number(&ns[..digits])?))
}

fn first_word(s: &str) -> String {
    s.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| !w.is_empty())
        .unwrap_or("error")
        .to_ascii_lowercase()
}

fn io_reason(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(libc::EADDRNOTAVAIL) => "no_source_port".into(),
        Some(libc::EMFILE | libc::ENFILE) => "out_of_fds".into(),
        Some(libc::ETIMEDOUT) => "timeout".into(),
        _ => first_word(&format!("{:?}", e.kind())),
    }
}

/// Lets the kernel pick the source port at connect time, per destination, instead of at bind
/// (where every bound port is reserved for all destinations).
fn set_bind_no_port(sock: &Socket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads an int from a pointer valid for its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_texts() {
        let line = br#"{"type":"message","from":"cl1-m3","to":"cl1-m2","text":"p 3 17 123456xxxx","ts":9}"#;
        let (from, text) = message_fields(line).unwrap();
        assert_eq!(from, b"cl1-m3");
        assert_eq!(parse_text(text), Some((b'p', 3, 17, 123456)));
        let other_order = br#"{"text":"r 1 2 3","ts":9,"type":"message","from":"x"}"#;
        assert_eq!(message_fields(other_order), Some((&b"x"[..], &b"r 1 2 3"[..])));
        assert_eq!(parse_text(b"hello there"), None);
        assert_eq!(parse_text(b"r 1 2"), None);
        assert_eq!(
            field(br#"{"type":"error","code":"rate_limited"}"#, br#""code":""#),
            Some(&b"rate_limited"[..])
        );
    }
}
