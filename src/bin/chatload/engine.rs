//! The mio loop: every client connection, the send schedule, and the counting.
//!
//! One thread, one `Poll`, a `Slab` of connections. A connection goes
//! TCP connect (non-blocking, bound to a 127.0.0.x source) -> tungstenite client handshake
//! (resumed on readiness) -> open WebSocket (connect.rs), and is read to WouldBlock on every
//! event. Sends come from a heap of deadlines, scheduled by each mode's module (room.rs,
//! private.rs, churn.rs); each message carries the time it was written, and each frame read
//! is timed on its own, on two clocks (latency.rs). With `--rooms`,
//! rooms.rs joins each client to its room and checks where room messages arrive.

// Each mode's scheduling and sending lives in a module of its own; the loop, connections and
// counting stay here. Children of this module, they see the engine's private state.
#[path = "blip.rs"]
mod blip;
#[path = "churn.rs"]
mod churn;
#[path = "connect.rs"]
mod connect;
#[path = "latency.rs"]
mod latency;
#[path = "outcomes.rs"]
mod outcomes;
#[path = "private.rs"]
mod private;
#[path = "raw.rs"]
mod raw;
#[path = "room.rs"]
mod room;
#[path = "rooms.rs"]
mod rooms;

use crate::args::Args;
use crate::lines::{MessageLine, field, message_fields, parse_text};
use crate::net::{Sock, is_would_block};
use latency::Latency;
pub use latency::quantiles_us;
use mio::{Events, Poll};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io;
use std::time::{Duration, Instant};
use tungstenite::handshake::MidHandshake;
use tungstenite::handshake::client::ClientHandshake;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

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
    /// `--rooms`: our room messages that arrived outside their room (wrong `room` field, or a
    /// receiver not in it).
    pub misrouted: u64,
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
    /// `--token-key`: `&token=..` for this client, minted at its first connect.
    auth: Option<String>,
    /// Counted: connected before sending started and not closed since.
    live: bool,
    /// Connection attempt finished one way or the other (welcome, error, close).
    resolved: bool,
    failed: bool,
    /// `--rooms`: welcomed, its join sent, its `joined` not yet read.
    joining: bool,
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
    /// `--rooms`: the counted (live) clients of each room.
    room_live: Vec<u64>,
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
    pub latency: Latency,
    /// The kernel's receive stamp of the read that brought the frame being handled (net.rs).
    rx_ns: u64,
    pub first_send: Option<Instant>,
    pub last_delivery: Option<Instant>,
    pad: String,
    /// `--faults`: each room message's outcome.
    pub outcomes: Option<outcomes::Outcomes>,
    /// `--mode blip`: every client's blips and what it read (blip.rs).
    blip: Option<blip::Blip>,
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
            room_live: vec![0; args.rooms],
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
            latency: Latency::new(),
            rx_ns: 0,
            first_send: None,
            last_delivery: None,
            pad: "x".repeat(args.size),
            outcomes: args.faults.then(|| outcomes::Outcomes::new(args.conns, args.senders)),
            blip: args.modes.blip.then(|| blip::Blip::new(args.conns)),
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
        self.latency.sync(self.t0);
        self.window_start_ns = self.ns(start);
        self.window_end_ns = self.window_start_ns + duration.as_nanos() as u64;
        if self.args.modes.room {
            self.schedule_room();
        }
        if self.args.modes.private {
            self.schedule_private();
        }
        if self.blip.is_some() {
            self.schedule_blips();
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
        while Instant::now() < end && (self.counts.delivered < self.counts.expected || self.blip_pending()) {
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
        self.latency.sync(self.t0);
        let now = Instant::now();
        self.last_sweep = now;
        let mut late = Vec::new();
        for (t, c) in self.conns.iter() {
            // Connected means welcomed and, with --rooms, joined.
            let pending = !c.welcomed || matches!(c.role, Role::Main(i) if self.mains[i as usize].joining);
            if pending && now.duration_since(c.started) >= CONNECT_TIMEOUT && c.we_closed.is_none() {
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
                self.unlive(i as usize);
            }
            Role::Churn => self.churn_open -= 1,
        }
    }

    // ---- an open connection ----------------------------------------------------------------

    /// Reads every message waiting on `t`, then flushes what tungstenite queued (pongs, close
    /// replies).
    fn pump(&mut self, t: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(t) else { return };
            let State::Open(ws) = &mut conn.state else { return };
            match ws.read() {
                Ok(Message::Text(text)) => {
                    self.rx_ns = ws.get_ref().rx_ns;
                    self.on_text(t, text.as_str(), Instant::now())
                }
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
            self.unlive(i as usize);
            let m = &mut self.mains[i as usize];
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
        if self.args.raw {
            return self.on_raw_text(t, text, now);
        }
        if self.blip.is_some() {
            return self.on_blip_text(t, text, now);
        }
        for line in text.as_bytes().split(|&b| b == b'\n') {
            if line.starts_with(br#"{"type":"message""#) {
                self.on_message(t, line, now);
            } else if line.starts_with(br#"{"type":"welcome""#) {
                self.on_welcome(t);
            } else if line.starts_with(br#"{"type":"joined""#) {
                self.on_joined(t, line);
            } else if line.starts_with(br#"{"type":"error""#) {
                let code = field(line, br#""code":""#).unwrap_or(b"?");
                *self.counts.server_errors.entry(String::from_utf8_lossy(code).into_owned()).or_default() +=
                    1;
                if let Role::Main(i) = self.conns[t].role {
                    self.fault_error(i as usize, line);
                }
                if line.windows(8).any(|w| w == br#""room":""#) {
                    self.on_room_error(t, code);
                }
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
            Role::Main(i) if self.args.rooms > 0 && !self.args.raw => self.join_room(t, i as usize),
            Role::Main(i) => self.admit(i as usize),
            Role::Churn => {
                let due = now_ns + self.args.churn_hold.as_nanos() as u64;
                let generation = conn.generation;
                self.timers.push(Reverse((due, CHURN_CLOSE, t as u32, generation)));
            }
        }
    }

    /// Held client `i` is connected (welcomed and, with --rooms, joined): counted as a
    /// receiver if sending has not started.
    fn admit(&mut self, i: usize) {
        let m = &mut self.mains[i];
        if !m.resolved {
            m.resolved = true;
            self.mains_in_flight -= 1;
        }
        if self.phase == Phase::Connect && !m.failed {
            m.live = true;
            self.live_count += 1;
            if self.args.rooms > 0 {
                let k = self.room_of(i);
                self.room_live[k] += 1;
            }
        }
    }

    /// Held client `i` no longer counts as a receiver.
    fn unlive(&mut self, i: usize) {
        let m = &mut self.mains[i];
        if m.live {
            m.live = false;
            self.live_count -= 1;
            if self.args.rooms > 0 {
                let k = self.room_of(i);
                self.room_live[k] -= 1;
            }
        }
    }

    fn on_message(&mut self, t: usize, line: &[u8], now: Instant) {
        let Role::Main(r) = self.conns[t].role else { return };
        let r = r as usize;
        let Some(MessageLine { room, from, text }) = message_fields(line) else {
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
        if self.args.rooms > 0 && kind == b'r' && !self.routed(r, sender, room) {
            self.counts.misrouted += 1;
            return;
        }
        let m = &mut self.mains[r];
        if !m.live {
            self.counts.uncounted += 1;
            return;
        }
        if let (b'r', Some(o)) = (kind, &mut self.outcomes) {
            // A message Redis did not confirm may come late: only a second copy is wrong.
            if !o.delivered(r, sender, seq) {
                return;
            }
        } else {
            let next = &mut m.next[slot];
            if seq < *next {
                self.counts.reordered += 1;
                return;
            }
            *next = seq + 1;
        }
        self.counts.delivered += 1;
        self.delivered_at(sent_ns, now);
    }

    /// A delivery of a message stamped `sent_ns`, read at `now` from a read the kernel
    /// stamped `self.rx_ns`: its latency, on both clocks (latency.rs).
    fn delivered_at(&mut self, sent_ns: u64, now: Instant) {
        self.last_delivery = Some(now);
        self.latency.record(sent_ns, self.ns(now), self.rx_ns);
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
                blip::BLIP_DROP | blip::BLIP_BACK => self.blip_timer(kind, a, b),
                _ if self.phase != Phase::Run => {}
                _ => {
                    self.counts.max_send_lag_ns = self.counts.max_send_lag_ns.max(now_ns - due);
                    let i = a as usize;
                    // Stamped as it is written (each send its own clock reading, written at
                    // once): latency is the server's and the network's, not our timer's.
                    let now_ns = self.ns(Instant::now());
                    let blip = self.blip.is_some();
                    let (n, sent) = if kind == ROOM {
                        let sent = if self.args.raw {
                            self.send_raw(i, now_ns)
                        } else if blip {
                            self.send_blip_room(i, now_ns)
                        } else {
                            self.send_room(i, now_ns)
                        };
                        (self.args.senders, sent)
                    } else if blip {
                        (self.private_senders(), self.send_blip_private(i, now_ns))
                    } else {
                        (self.private_senders(), self.send_private(i, now_ns))
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

    /// Writes one text message at once (what cannot go now goes on writable), so that its
    /// stamp, taken just before, is when it left.
    fn write(&mut self, t: usize, json: String) -> bool {
        if !self.queue_text(t, json) {
            return false;
        }
        if let Some(Conn { state: State::Open(ws), .. }) = self.conns.get_mut(t) {
            let _ = ws.flush(); // errors show on the read side, where they are counted
        }
        if self.first_send.is_none() {
            self.first_send = Some(Instant::now());
        }
        true
    }

    /// Queues one text frame (a message or a request) and marks the connection for flushing.
    fn queue_text(&mut self, t: usize, json: String) -> bool {
        let Some(conn) = self.conns.get_mut(t) else { return false };
        let State::Open(ws) = &mut conn.state else { return false };
        match ws.write(Message::text(json)) {
            Ok(()) => {}
            Err(e) if is_would_block(&e) => {} // queued; the rest goes on writable
            Err(_) => return false,
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
