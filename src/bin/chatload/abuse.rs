//! `--mode abuse`: the attacks of issue 21, run by throwaway ids beside whatever load runs at
//! the same time (scripts/soak.sh --attack runs a room load in another chatload), each at a
//! pace of its own (`--pace`), then a report of what each achieved:
//!
//! - history: an id joins 20 new rooms, posts one short line in each, closes (one burst of 40
//!   requests: within the server's default burst, so a fresh id is never refused);
//! - holds: an id takes its welcome and resets the connection (no close frame), so the server
//!   holds it through its resume grace; throwaway fillers then send it `--hold-fill` private
//!   messages of 6 kB each (1,000 U+0001 characters, which the server re-encodes as `\u0001`);
//! - replace: one id sends a burst of 40 lobby messages, then presents its resume token on a
//!   new socket while the old one is still open (which should get 4001), and again: what
//!   gets through per second is what the rate limit failed to stop;
//! - rooms: an id joins 31 new rooms (with lobby, the per-user maximum) and resets;
//! - churn: an id connects, joins a room, closes;
//! - probe: a well-behaved id creates a room of its own, posts a line and closes, once a
//!   second: its round trip, and whether it was refused (`too_many_rooms`), tell what the
//!   attacks cost a bystander.
//!
//! Frames are written raw (attack.rs's zero-key masks), server frames parsed by attack.rs.
//! Everything is bounded: new ids only during `--duration` and under `--abuse-sockets` open
//! sockets, every phase of every connection by a timeout, and the whole run by the window plus
//! `DRAIN`, so a frozen server cannot hold it; main's hard deadline stands behind it.

use crate::args::{ABUSE_KINDS, Args};
use crate::attack::{ServerFrame, frame, parse_frame};
use crate::lines::field;
use crate::net::io_reason;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::SockRef;
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Connect, upgrade and welcome, per connection.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(5);
/// For the answers to a burst (a healthy server answers in milliseconds).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// For the server's answer to our close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a replaced connection waits for its 4001.
const REPLACED_TIMEOUT: Duration = Duration::from_secs(5);
/// After the window, connections still at work get this long, then are reset.
const DRAIN: Duration = Duration::from_secs(5);
/// Rooms a history id fills.
const HISTORY_ROOMS: usize = 20;
/// Rooms a max-rooms id joins: with lobby, the default `--max-rooms-per-user` (32).
const ROOMS_JOINS: usize = 31;
/// The server's default burst (2 x 20/s): what a fresh id may send at once.
const BURST: usize = 40;
/// A filler's text: this many U+0001, 6 bytes each once the server escapes them.
const FILL_CHARS: usize = 1000;
/// Holds are filled while younger than this: the server's default grace is 60 s.
const HOLD_FILLABLE: Duration = Duration::from_secs(55);
/// Fillers connected at once.
const FILLERS_AT_ONCE: usize = 32;
/// The most the loop sleeps, so that paced starts are on time.
const TICK: Duration = Duration::from_millis(5);
/// How often deadlines are checked.
const SWEEP: Duration = Duration::from_millis(100);

const TEXT: u8 = 0x81;
const CLOSE: u8 = 0x88;
/// Close code recorded when a connection ended without a close frame.
const ABNORMAL: u16 = 1006;

/// Who a connection is. The first six are the `--attacks` names, in `ABUSE_KINDS` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    History,
    Hold,
    Replace,
    Rooms,
    Churn,
    Probe,
    /// Sends the private messages that fill holds.
    Filler,
}

const KINDS: [Kind; 7] =
    [Kind::History, Kind::Hold, Kind::Replace, Kind::Rooms, Kind::Churn, Kind::Probe, Kind::Filler];

impl Kind {
    fn index(self) -> usize {
        KINDS.iter().position(|&k| k == self).expect("listed")
    }

    /// The letter after the id prefix.
    fn letter(self) -> char {
        ['h', 'k', 'r', 'm', 'c', 'w', 'f'][self.index()]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    /// The HTTP request is out (or going); waiting for the 101.
    Upgrading,
    /// Waiting for the welcome, then for `expect` answers.
    Open,
    /// replace: done with its burst, its successor is on the way; waiting for the 4001.
    Replaced,
    /// Our close is queued; waiting for the server's close or EOF.
    Closing,
}

struct Bot {
    kind: Kind,
    id: String,
    tcp: mio::net::TcpStream,
    phase: Phase,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    deadline: Instant,
    welcomed: bool,
    /// Answers (joined, our own message back, an error) awaited, and had.
    expect: usize,
    answered: usize,
    /// When its requests were queued (probe: the round trip starts there).
    sent_at: Instant,
    /// filler: the held ids it writes to, one message each.
    targets: Vec<String>,
    /// replace: the chain's current session (not a replaced one).
    current: bool,
}

/// What one kind achieved.
#[derive(Default)]
struct Stats {
    started: u64,
    welcomed: u64,
    /// Got every answer (or gave up waiting) and went on as planned.
    done: u64,
    /// Not started: too many sockets open, or (fillers) nothing left to fill.
    skipped: u64,
    connect_errors: BTreeMap<String, u64>,
    /// Welcomes that never came, answers that never came.
    welcome_timeouts: u64,
    answer_timeouts: u64,
    /// Requests written (joins, messages).
    requests: u64,
    joined: u64,
    /// Our own messages back: room lines, or private echoes.
    echoes: u64,
    errors: BTreeMap<String, u64>,
    close_codes: BTreeMap<u16, u64>,
    /// replace: welcomes that said `"resumed":true`.
    resumed: u64,
}

/// The report: one line per attack that ran, and the summary's fields.
pub struct Report {
    pub lines: Vec<String>,
    pub fields: String,
}

struct Abuser<'a> {
    args: &'a Args,
    pace: [f64; 6],
    hold_fill: usize,
    sockets: usize,
    poll: Poll,
    bots: Slab<Bot>,
    stats: [Stats; 7],
    /// The next serial of each kind's ids.
    serial: [u64; 7],
    /// Paced starts so far, per `--attacks` kind (the schedule is start + n / pace).
    started_n: [u64; 6],
    start: Instant,
    end: Instant,
    /// Private messages still owed to holds: (id, held since, messages left).
    demand: VecDeque<(String, Instant, usize)>,
    fillers_open: usize,
    fill_frame_len: usize,
    /// Ids held by the server, as far as we know (resets after a welcome).
    holds_made: u64,
    /// replace: the chain's id and token, whether a session is at work, when the next may go.
    chain_id: String,
    chain_token: Option<String>,
    chain_busy: bool,
    chain_next: Instant,
    probe_rtt_us: Vec<u64>,
    source_rr: u32,
    room_prefix: String,
    scratch: Vec<u8>,
}

/// Runs the abuse for `--duration` (plus the drain), then returns the report.
pub fn run(args: &Args) -> io::Result<Report> {
    let ab = args.abuse.as_ref().expect("--mode abuse");
    let start = Instant::now();
    // Room names are lowercase and at most 32 characters: the prefix's last 12, lowercased.
    let lower: String = args.id_prefix.to_ascii_lowercase();
    let room_prefix = lower[lower.len().saturating_sub(12)..].to_string();
    let mut a = Abuser {
        args,
        pace: ab.pace,
        hold_fill: ab.hold_fill,
        sockets: ab.sockets,
        poll: Poll::new()?,
        bots: Slab::new(),
        stats: Default::default(),
        serial: [0; 7],
        started_n: [0; 6],
        start,
        end: start + args.duration,
        demand: VecDeque::new(),
        fillers_open: 0,
        fill_frame_len: fill_message("x").len(),
        holds_made: 0,
        chain_id: String::new(),
        chain_token: None,
        chain_busy: false,
        chain_next: start,
        probe_rtt_us: Vec::new(),
        source_rr: 0,
        room_prefix,
        scratch: vec![0; 64 * 1024],
    };
    a.chain_id = a.fresh_id(Kind::Replace);
    let on: Vec<&str> = ABUSE_KINDS.iter().zip(a.pace).filter(|(_, p)| *p > 0.0).map(|(k, _)| *k).collect();
    println!(
        "abuse: ws://{}/ws, {} for {:.1} s (paces per second: {}), at most {} sockets",
        args.host,
        on.join(","),
        args.duration.as_secs_f64(),
        ABUSE_KINDS
            .iter()
            .zip(a.pace)
            .filter(|(_, p)| *p > 0.0)
            .map(|(k, p)| format!("{k}={p}"))
            .collect::<Vec<_>>()
            .join(","),
        a.sockets
    );
    let _ = io::stdout().flush();
    a.run_loop()?;
    Ok(a.report())
}

/// One filler message to `to`: 1,000 U+0001, written escaped (6 bytes each) as the server
/// will write them back.
fn fill_message(to: &str) -> Vec<u8> {
    frame(TEXT, format!(r#"{{"to":"{to}","text":"{}"}}"#, "\\u0001".repeat(FILL_CHARS)).as_bytes())
}

fn text_frame(json: &str) -> Vec<u8> {
    frame(TEXT, json.as_bytes())
}

impl Abuser<'_> {
    fn fresh_id(&mut self, kind: Kind) -> String {
        let n = &mut self.serial[kind.index()];
        *n += 1;
        format!("{}{}{}", self.args.id_prefix, kind.letter(), *n - 1)
    }

    fn run_loop(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let hard_end = self.end + DRAIN;
        let mut next_sweep = self.start + SWEEP;
        loop {
            let now = Instant::now();
            if now >= hard_end || (now >= self.end && self.bots.is_empty()) {
                break;
            }
            if now < self.end {
                self.start_due(now);
            }
            match self.poll.poll(&mut events, Some(TICK)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for ev in events.iter() {
                let k = ev.token().0;
                if self.bots.contains(k) {
                    self.drive(k, now);
                }
            }
            if now >= next_sweep {
                next_sweep = now + SWEEP;
                self.sweep(now);
            }
        }
        // Whatever is still open goes now, without a close: the run is over.
        let left: Vec<usize> = self.bots.iter().map(|(k, _)| k).collect();
        for k in left {
            let kind = self.bots[k].kind;
            if !self.bots[k].welcomed {
                self.stats[kind.index()].welcome_timeouts += 1;
            } else if self.bots[k].phase == Phase::Open {
                self.stats[kind.index()].answer_timeouts += 1;
            }
            self.remove(k, true);
        }
        Ok(())
    }

    /// Starts every paced connection that is due, and fillers for holds that are owed.
    fn start_due(&mut self, now: Instant) {
        for (i, &kind) in KINDS[..6].iter().enumerate() {
            let pace = self.pace[i];
            if pace <= 0.0 || kind == Kind::Replace {
                continue;
            }
            // Bounded: at most pace x duration starts in all.
            while self.start + Duration::from_secs_f64(self.started_n[i] as f64 / pace) <= now {
                self.started_n[i] += 1;
                let id = self.fresh_id(kind);
                self.open(kind, id, String::new(), now);
            }
        }
        if self.pace[Kind::Replace.index()] > 0.0 && !self.chain_busy && now >= self.chain_next {
            let pace = self.pace[Kind::Replace.index()];
            self.chain_next = now + Duration::from_secs_f64(1.0 / pace);
            let extra = self.chain_token.as_ref().map(|t| format!("&resume={t}&pseq=0")).unwrap_or_default();
            let id = self.chain_id.clone();
            if let Some(k) = self.open(Kind::Replace, id, extra, now) {
                self.bots[k].current = true;
                self.chain_busy = true;
            }
        }
        while self.fillers_open < FILLERS_AT_ONCE && !self.demand.is_empty() {
            let mut targets = Vec::with_capacity(BURST);
            while targets.len() < BURST {
                let Some((id, since, left)) = self.demand.front_mut() else { break };
                if now.duration_since(*since) > HOLD_FILLABLE {
                    // Its grace is (nearly) over: what it still lacks is not sent.
                    self.stats[Kind::Filler.index()].skipped += *left as u64;
                    self.demand.pop_front();
                    continue;
                }
                let take = (*left).min(BURST - targets.len());
                targets.extend(std::iter::repeat_n(id.clone(), take));
                *left -= take;
                if *left == 0 {
                    self.demand.pop_front();
                }
            }
            if targets.is_empty() {
                break;
            }
            let id = self.fresh_id(Kind::Filler);
            match self.open(Kind::Filler, id, String::new(), now) {
                Some(k) => {
                    self.bots[k].targets = targets;
                    self.fillers_open += 1;
                }
                None => break,
            }
        }
    }

    /// Opens a connection for `id` (`extra` is appended to the query). `None` when it could
    /// not start (counted).
    fn open(&mut self, kind: Kind, id: String, extra: String, now: Instant) -> Option<usize> {
        if self.bots.len() >= self.sockets {
            self.stats[kind.index()].skipped += 1;
            return None;
        }
        self.stats[kind.index()].started += 1;
        match self.connect() {
            Ok(mut tcp) => {
                let entry = self.bots.vacant_entry();
                let k = entry.key();
                if let Err(e) =
                    self.poll.registry().register(&mut tcp, Token(k), Interest::READABLE | Interest::WRITABLE)
                {
                    *self.stats[kind.index()].connect_errors.entry(io_reason(&e)).or_default() += 1;
                    return None;
                }
                let token = self.args.token_query(&id);
                let request = format!(
                    "GET /ws?id={id}{extra}{token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                    self.args.host
                );
                entry.insert(Bot {
                    kind,
                    id,
                    tcp,
                    phase: Phase::Connecting,
                    out: request.into_bytes(),
                    out_pos: 0,
                    inbuf: Vec::new(),
                    deadline: now + WELCOME_TIMEOUT,
                    welcomed: false,
                    expect: 0,
                    answered: 0,
                    sent_at: now,
                    targets: Vec::new(),
                    current: false,
                });
                Some(k)
            }
            Err(e) => {
                *self.stats[kind.index()].connect_errors.entry(io_reason(&e)).or_default() += 1;
                None
            }
        }
    }

    /// A non-blocking connect from the next 127.0.0.x source (see `net::connect_from`).
    fn connect(&mut self) -> io::Result<mio::net::TcpStream> {
        crate::net::connect_from(self.args.addr, self.args.sources, &mut self.source_rr)
    }

    /// Readiness on `k`: finish connecting, write what is queued, read to WouldBlock, act.
    fn drive(&mut self, k: usize, now: Instant) {
        if self.bots[k].phase == Phase::Connecting {
            let b = &mut self.bots[k];
            match b.tcp.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail(k, io_reason(&e)),
            }
            match b.tcp.peer_addr() {
                Ok(_) => b.phase = Phase::Upgrading,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.fail(k, io_reason(&e)),
            }
        }
        if !self.flush(k) {
            return;
        }
        let (scratch, b) = (&mut self.scratch, &mut self.bots[k]);
        let mut eof = false;
        loop {
            match b.tcp.read(scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => b.inbuf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if !self.parse(k, now) {
            return;
        }
        if eof {
            return self.ended(k, None);
        }
        self.flush(k);
    }

    /// Writes what is queued until the socket refuses. False when the connection is gone.
    fn flush(&mut self, k: usize) -> bool {
        let b = &mut self.bots[k];
        if b.phase == Phase::Connecting {
            return true;
        }
        while b.out_pos < b.out.len() {
            match b.tcp.write(&b.out[b.out_pos..]) {
                Ok(0) => break,
                Ok(n) => b.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The server dropped us: what it said first may still be readable.
                    self.ended(k, None);
                    return false;
                }
            }
        }
        b.out.clear();
        b.out_pos = 0;
        true
    }

    fn queue(&mut self, k: usize, bytes: &[u8]) {
        self.bots[k].out.extend_from_slice(bytes);
    }

    /// Takes the 101 and every whole frame out of the input. False when the connection is gone.
    fn parse(&mut self, k: usize, now: Instant) -> bool {
        let mut buf = std::mem::take(&mut self.bots[k].inbuf);
        let mut at = 0;
        if self.bots[k].phase == Phase::Upgrading {
            let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                if buf.len() > 16 * 1024 {
                    self.fail(k, "handshake_head_too_long".into());
                    return false;
                }
                self.bots[k].inbuf = buf;
                return true;
            };
            let status = buf.get(9..12).and_then(|s| std::str::from_utf8(s).ok()).unwrap_or("???");
            if !buf.starts_with(b"HTTP/1.1 ") || status != "101" {
                let reason = format!("http_{status}");
                self.fail(k, reason);
                return false;
            }
            self.bots[k].phase = Phase::Open;
            at = p + 4;
        }
        while let Some((f, len)) = parse_frame(&buf[at..]) {
            at += len;
            match f {
                ServerFrame::Text(text) => {
                    for line in text.split(|&b| b == b'\n') {
                        if !self.on_line(k, line, now) {
                            return false;
                        }
                    }
                }
                ServerFrame::Close(code) => {
                    self.ended(k, Some(code));
                    return false;
                }
                ServerFrame::Pong | ServerFrame::Other => {}
            }
        }
        buf.drain(..at);
        self.bots[k].inbuf = buf;
        true
    }

    /// One server line. False when the connection is gone.
    fn on_line(&mut self, k: usize, line: &[u8], now: Instant) -> bool {
        let kind = self.bots[k].kind;
        let Some(ty) = field(line, br#""type":""#) else { return true };
        match ty {
            b"welcome" => return self.on_welcome(k, line, now),
            b"joined" => {
                self.stats[kind.index()].joined += 1;
                self.bots[k].answered += 1;
            }
            b"message" => {
                if field(line, br#""from":""#) != Some(self.bots[k].id.as_bytes()) {
                    return true; // the load's lobby traffic, or another attacker's
                }
                self.stats[kind.index()].echoes += 1;
                self.bots[k].answered += 1;
                if kind == Kind::Probe {
                    self.probe_rtt_us.push(now.duration_since(self.bots[k].sent_at).as_micros() as u64);
                }
            }
            b"error" => {
                let code = String::from_utf8_lossy(field(line, br#""code":""#).unwrap_or(b"?")).into_owned();
                *self.stats[kind.index()].errors.entry(code).or_default() += 1;
                self.bots[k].answered += 1;
            }
            _ => return true,
        }
        let b = &self.bots[k];
        if b.phase == Phase::Open && b.expect > 0 && b.answered >= b.expect {
            return self.finish(k, now, false);
        }
        true
    }

    /// The welcome: each kind starts its work. False when the connection is gone.
    fn on_welcome(&mut self, k: usize, line: &[u8], now: Instant) -> bool {
        let kind = self.bots[k].kind;
        if self.bots[k].welcomed {
            return true;
        }
        self.bots[k].welcomed = true;
        self.stats[kind.index()].welcomed += 1;
        let rp = self.room_prefix.clone();
        let n = &self.bots[k].id[self.args.id_prefix.len() + 1..];
        let n = n.to_string();
        let mut frames: Vec<Vec<u8>> = Vec::new();
        match kind {
            Kind::Hold => {
                // Into its grace: the server keeps it, and private messages to it.
                self.holds_made += 1;
                let id = self.bots[k].id.clone();
                self.demand.push_back((id, now, self.hold_fill));
                self.stats[kind.index()].done += 1;
                self.remove(k, true);
                return false;
            }
            Kind::History => {
                for r in 0..HISTORY_ROOMS {
                    frames.push(text_frame(&format!(r#"{{"join":"{rp}h{n}-{r}"}}"#)));
                }
                for r in 0..HISTORY_ROOMS {
                    frames.push(text_frame(&format!(r#"{{"room":"{rp}h{n}-{r}","text":"x"}}"#)));
                }
            }
            Kind::Rooms => {
                for r in 0..ROOMS_JOINS {
                    frames.push(text_frame(&format!(r#"{{"join":"{rp}m{n}-{r}"}}"#)));
                }
            }
            Kind::Churn => frames.push(text_frame(&format!(r#"{{"join":"{rp}c{}"}}"#, self.serial[4] % 50))),
            Kind::Probe => {
                frames.push(text_frame(&format!(r#"{{"join":"{rp}w{n}"}}"#)));
                frames.push(text_frame(&format!(r#"{{"room":"{rp}w{n}","text":"probe"}}"#)));
            }
            Kind::Replace => {
                let resumed = br#""resumed":true"#;
                if line.windows(resumed.len()).any(|w| w == resumed) {
                    self.stats[kind.index()].resumed += 1;
                    // A resumed lobby stays quiet until asked: join it for live traffic, so
                    // that our own messages come back and can be counted.
                    frames.push(text_frame(r#"{"join":"lobby"}"#));
                }
                self.chain_token =
                    field(line, br#""resume":""#).map(|t| String::from_utf8_lossy(t).into_owned());
                for i in 0..BURST {
                    frames.push(text_frame(&format!(r#"{{"text":"replace {n} {i}"}}"#)));
                }
            }
            Kind::Filler => {
                for t in std::mem::take(&mut self.bots[k].targets) {
                    frames.push(fill_message(&t));
                }
            }
        }
        self.stats[kind.index()].requests += frames.len() as u64;
        let b = &mut self.bots[k];
        b.expect = frames.len();
        b.sent_at = now;
        b.deadline = now + ANSWER_TIMEOUT;
        for f in &frames {
            b.out.extend_from_slice(f);
        }
        if b.expect == 0 {
            return self.finish(k, now, false);
        }
        true
    }

    /// Every answer came (or `timed_out`): the kind's last act. False when the connection is
    /// gone.
    fn finish(&mut self, k: usize, now: Instant, timed_out: bool) -> bool {
        let kind = self.bots[k].kind;
        let s = &mut self.stats[kind.index()];
        if timed_out {
            s.answer_timeouts += 1;
        } else {
            s.done += 1;
        }
        match kind {
            Kind::Rooms | Kind::Hold => {
                // Gone without a close: held through the grace, rooms and all.
                self.remove(k, true);
                false
            }
            Kind::Replace => {
                // The next session presents the token while this one is still open.
                self.chain_busy = false;
                let b = &mut self.bots[k];
                b.current = false;
                b.phase = Phase::Replaced;
                b.deadline = now + REPLACED_TIMEOUT;
                true
            }
            Kind::History | Kind::Churn | Kind::Probe | Kind::Filler => {
                if kind == Kind::Filler {
                    self.fillers_open -= 1;
                    self.bots[k].targets.clear();
                }
                // A clean close: the id is free at once, not held.
                self.queue(k, &frame(CLOSE, &1000u16.to_be_bytes()));
                let b = &mut self.bots[k];
                b.phase = Phase::Closing;
                b.deadline = now + CLOSE_TIMEOUT;
                self.flush(k)
            }
        }
    }

    /// Deadlines: a welcome or answers that never came, a close never answered.
    fn sweep(&mut self, now: Instant) {
        // After the window no successor comes: a replaced session waits for nothing.
        let over = now >= self.end;
        let due: Vec<usize> = self
            .bots
            .iter()
            .filter(|(_, b)| b.deadline <= now || (over && b.phase == Phase::Replaced))
            .map(|(k, _)| k)
            .collect();
        for k in due {
            let b = &self.bots[k];
            match b.phase {
                _ if !b.welcomed => {
                    self.stats[b.kind.index()].welcome_timeouts += 1;
                    self.lost_early(k);
                    self.remove(k, true);
                }
                Phase::Open => {
                    self.finish(k, now, true);
                }
                _ => self.remove(k, true),
            }
        }
    }

    /// The server closed (`code`) or dropped (`None`) the connection.
    fn ended(&mut self, k: usize, code: Option<u16>) {
        let b = &self.bots[k];
        let kind = b.kind;
        if code.is_some() || b.phase != Phase::Closing {
            *self.stats[kind.index()].close_codes.entry(code.unwrap_or(ABNORMAL)).or_default() += 1;
        }
        if !b.welcomed {
            self.lost_early(k);
        } else if b.phase == Phase::Open {
            // Cut short before its answers: its last act will not happen.
            if kind == Kind::Replace && b.current {
                self.chain_busy = false;
            }
            if kind == Kind::Filler {
                self.fillers_open -= 1;
            }
        }
        self.remove(k, code.is_some());
    }

    /// A connection ended before its welcome: a replace chain starts over with a fresh id.
    fn lost_early(&mut self, k: usize) {
        let (kind, current) = (self.bots[k].kind, self.bots[k].current);
        if kind == Kind::Replace && current {
            self.chain_busy = false;
            self.chain_token = None;
            self.chain_id = self.fresh_id(Kind::Replace);
        }
        if kind == Kind::Filler {
            self.fillers_open -= 1;
        }
    }

    fn fail(&mut self, k: usize, reason: String) {
        let kind = self.bots[k].kind;
        *self.stats[kind.index()].connect_errors.entry(reason).or_default() += 1;
        self.lost_early(k);
        self.remove(k, true);
    }

    /// Drops the connection; `reset`: without a FIN (SO_LINGER 0), as a lost client would.
    fn remove(&mut self, k: usize, reset: bool) {
        let mut b = self.bots.remove(k);
        let _ = self.poll.registry().deregister(&mut b.tcp);
        if reset {
            let _ = SockRef::from(&b.tcp).set_linger(Some(Duration::ZERO));
        }
    }

    fn report(&self) -> Report {
        let secs = self.args.duration.as_secs_f64().max(1e-9);
        let s = |k: Kind| &self.stats[k.index()];
        let err = |k: Kind, code: &str| s(k).errors.get(code).copied().unwrap_or(0);
        let on = |k: Kind| k == Kind::Filler || self.pace[k.index()] > 0.0;
        let mut lines = Vec::new();
        let common = |k: Kind| {
            let st = s(k);
            format!(
                "{} started, {} welcomed, {} skipped; connect errors {}; timeouts: welcome {}, answers {}; \
                 server errors {}; close codes {}",
                st.started,
                st.welcomed,
                st.skipped,
                map_or_none(&st.connect_errors),
                st.welcome_timeouts,
                st.answer_timeouts,
                map_or_none(&st.errors),
                map_or_none(&st.close_codes)
            )
        };
        if on(Kind::History) {
            let h = s(Kind::History);
            lines.push(format!(
                "abuse history: {} ids made {} rooms and posted {} lines in them ({:.0} rooms/s); {}",
                h.welcomed,
                h.joined,
                h.echoes,
                h.joined as f64 / secs,
                common(Kind::History)
            ));
        }
        if on(Kind::Hold) {
            let f = s(Kind::Filler);
            lines.push(format!(
                "abuse holds: {} ids dropped without a close after their welcome (held for their grace); \
                 {} fillers sent them {} private messages of {} B ({:.1} MB): {} echoed (kept or delivered), \
                 undelivered {}, recipient_busy {}, unknown_recipient {}, rate_limited {}; {} not sent (grace \
                 nearly over); holds: {}; fillers: {}",
                self.holds_made,
                f.welcomed,
                f.requests,
                self.fill_frame_len,
                f.requests as f64 * self.fill_frame_len as f64 / 1e6,
                f.echoes,
                err(Kind::Filler, "undelivered"),
                err(Kind::Filler, "recipient_busy"),
                err(Kind::Filler, "unknown_recipient"),
                err(Kind::Filler, "rate_limited"),
                f.skipped,
                common(Kind::Hold),
                common(Kind::Filler)
            ));
        }
        if on(Kind::Replace) {
            let r = s(Kind::Replace);
            lines.push(format!(
                "abuse replace: {} sessions ({} resumed with the last token), {} replaced with 4001; \
                 {} lobby messages sent, {} through ({:.1}/s against the server's 20/s), rate_limited {}; {}",
                r.welcomed,
                r.resumed,
                r.close_codes.get(&4001).copied().unwrap_or(0),
                r.requests,
                r.echoes,
                r.echoes as f64 / secs,
                err(Kind::Replace, "rate_limited"),
                common(Kind::Replace)
            ));
        }
        if on(Kind::Rooms) {
            let m = s(Kind::Rooms);
            lines.push(format!(
                "abuse rooms: {} ids joined {} rooms then reset ({:.0}/s), too_many_rooms {}; {}",
                m.welcomed,
                m.joined,
                m.joined as f64 / secs,
                err(Kind::Rooms, "too_many_rooms"),
                common(Kind::Rooms)
            ));
        }
        if on(Kind::Churn) {
            lines.push(format!(
                "abuse churn: {} ids connected, joined, closed; {}",
                s(Kind::Churn).done,
                common(Kind::Churn)
            ));
        }
        let mut rtt = self.probe_rtt_us.clone();
        rtt.sort_unstable();
        let q = |p: f64| if rtt.is_empty() { 0 } else { rtt[((rtt.len() - 1) as f64 * p).round() as usize] };
        let p = s(Kind::Probe);
        let probe_failed = p.started - p.echoes.min(p.started);
        if on(Kind::Probe) {
            lines.push(format!(
                "abuse probe: {} well-behaved ids each made a room and posted a line: {} got it back, \
                 {} did not (too_many_rooms {}); round trip p50 {} us, p99 {} us, max {} us; {}",
                p.started,
                p.echoes,
                probe_failed,
                err(Kind::Probe, "too_many_rooms"),
                q(0.5),
                q(0.99),
                rtt.last().copied().unwrap_or(0),
                common(Kind::Probe)
            ));
        }
        let r = s(Kind::Replace);
        let fields = format!(
            "history_ids={} history_rooms={} history_lines={} holds={} hold_messages={} hold_echoed={} \
             hold_undelivered={} hold_busy={} replace_sessions={} replace_resumed={} replace_4001={} \
             replace_sent={} replace_through={} replace_per_sec={:.1} replace_rate_limited={} rooms_ids={} \
             rooms_joined={} rooms_refused={} churn_done={} probes={} probe_ok={} probe_failed={} \
             probe_refused={} probe_p99_us={} probe_max_us={} timeouts={} connect_errors={} skipped={}",
            s(Kind::History).welcomed,
            s(Kind::History).joined,
            s(Kind::History).echoes,
            self.holds_made,
            s(Kind::Filler).requests,
            s(Kind::Filler).echoes,
            err(Kind::Filler, "undelivered"),
            err(Kind::Filler, "recipient_busy"),
            r.welcomed,
            r.resumed,
            r.close_codes.get(&4001).copied().unwrap_or(0),
            r.requests,
            r.echoes,
            r.echoes as f64 / secs,
            err(Kind::Replace, "rate_limited"),
            s(Kind::Rooms).welcomed,
            s(Kind::Rooms).joined,
            err(Kind::Rooms, "too_many_rooms"),
            s(Kind::Churn).done,
            p.started,
            p.echoes,
            probe_failed,
            err(Kind::Probe, "too_many_rooms"),
            q(0.99),
            rtt.last().copied().unwrap_or(0),
            self.stats.iter().map(|s| s.welcome_timeouts + s.answer_timeouts).sum::<u64>(),
            self.stats.iter().map(|s| s.connect_errors.values().sum::<u64>()).sum::<u64>(),
            self.stats[..6].iter().map(|s| s.skipped).sum::<u64>(),
        );
        Report { lines, fields }
    }
}

fn map_or_none<K: std::fmt::Display>(m: &BTreeMap<K, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_messages_are_six_kilobytes_within_the_default_max_message() {
        let f = fill_message("someone");
        let (len, at) = (u16::from_be_bytes([f[2], f[3]]) as usize, 8);
        assert_eq!(f.len(), at + len);
        assert!((6000..12512).contains(&len), "{len}");
        assert_eq!(KINDS.map(Kind::letter).len(), 7);
        for (i, k) in KINDS[..6].iter().enumerate() {
            assert_eq!(k.index(), i, "the first six follow ABUSE_KINDS");
        }
    }
}
