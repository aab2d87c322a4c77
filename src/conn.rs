//! One connection: its socket and outbox (`Peer`), and the phase it is in.
//!
//! ```text
//! Request ──(route: file, status)──> Respond ──(written, peer EOF or grace)──> removed
//!    ├────(101 on /ws or /echo)────> Ws ──(close sent or received)──> Ws closing ──> removed
//!    ├────(/api/ with its key)─────> Api (body, answer) ──(answered, keep-alive)──> Request
//!    └────(GET /api/events)────────> Events ──(EOF, slow consumer, shutdown)──> removed
//! ```
//! The phase decides what readiness means and which deadline applies; the server loop does
//! the I/O and is the only one to register, deregister or remove.

use crate::outbox::{Drain, Outbox, is_pong};
use crate::timers::{Stamp, millis};
use crate::ws::Reader;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How far past its soft cap (`--queue-cap`) a queue may grow: a burst lands whole and the
/// peer is judged by whether its backlog persists (`SLOW_GRACE`). Redis's pub/sub output
/// limits have the same shape (8 MB soft for 60 s, 32 MB hard).
pub const HARD_FACTOR: usize = 4;
/// How long a queue may stay over its soft cap, after the loop's writes, before its peer is a
/// slow consumer. A reader that keeps up drains a burst in milliseconds.
pub const SLOW_GRACE: Duration = Duration::from_secs(10);
/// Bytes written to one socket per call, so one huge queue cannot take a whole turn.
pub const WRITE_BUDGET: usize = 256 * 1024;
/// Bytes read from one socket per turn; past it the connection waits for the next turn, behind
/// everyone else. Counted in bytes because a message that never completes (endless empty
/// fragments) would never use up a budget counted in messages. 64 KiB less a byte, so that
/// what is left of it fits in a `u16` (it took a `u32`, and `Conn` 8 bytes more with padding).
pub const READ_BUDGET: u16 = u16::MAX;

/// The socket and everything queued for it. The session's own frames (pong, ping, close, echo)
/// go here too (`send`), so every byte a connection sends goes through one ordered, capped queue.
pub struct Peer<S = TcpStream> {
    pub sock: S,
    pub out: Outbox,
    /// The soft cap on the queue's charge (`--queue-cap`); the hard cap is `HARD_FACTOR` times it.
    pub cap: u32,
    /// Bytes this turn's reads may still take (`READ_BUDGET`).
    pub read_left: u16,
    /// Bytes written outside the loop's flush (`make_room`), for the byte counter.
    pub early: u32,
    /// The connection's flags (see `Flag`), changed only through `is`, `set`, `clear`, `put`
    /// and `unset`.
    state: Flags,
}

/// One yes-or-no fact about a connection. All of them live in one word per connection
/// (`Peer::state`, as Redis keeps a client's `flags`), read and changed only through methods:
/// a reader finds every state a connection can be in here, and every change by grepping for
/// its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Flag {
    // The socket.
    /// The read budget ran out: input may be waiting, come back next turn.
    Starved = 1 << 0,
    /// A write found the socket full: no early write until the loop sees it writable.
    Blocked = 1 << 1,
    /// Output was refused at the cap: this client is a slow consumer.
    Overflow = 1 << 2,
    /// Our close is queued: nothing but what is already queued goes out (the closing state).
    Closing = 1 << 3,
    /// The last read came back short: the socket was empty then, and anything arriving since
    /// raises a new edge. Cleared by each readiness event.
    Drained = 1 << 4,
    /// The current readiness event carried a FIN or an error. Data that came with it reads
    /// short, but the EOF behind it raises no further edge: read on until the kernel says so.
    Hup = 1 << 5,
    // The loop's lists.
    /// On the loop's pending-write list this turn.
    Pending = 1 << 6,
    /// Remove once the outbox is empty.
    Finishing = 1 << 7,
    /// On the loop's removal list.
    Doomed = 1 << 8,
    /// Registered for writability: a write is blocked.
    WantWritable = 1 << 9,
    // The WebSocket session (read only while the phase is `Ws`).
    /// `/echo` rather than the chat.
    Echo = 1 << 10,
    /// The client's close has arrived (and was answered): nothing more is read.
    PeerClosed = 1 << 11,
    /// The connection holds a chat id (never for `/echo`): the user in chat's slot for this
    /// connection's token (`Chat::id_of`), which keeps the id, so the session need not.
    Joined = 1 << 12,
    /// Waiting for Redis to grant the id: nothing is read from the client meanwhile.
    Claiming = 1 << 13,
    /// A backend API connection between requests (keep-alive): its deadline closes it quietly.
    KeptAlive = 1 << 14,
}

/// A set of `Flag`s in one word.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl<S> Peer<S> {
    /// Whether `f` is set.
    pub fn is(&self, f: Flag) -> bool {
        self.state.0 & f as u16 != 0
    }

    pub fn set(&mut self, f: Flag) {
        self.state.0 |= f as u16;
    }

    pub fn clear(&mut self, f: Flag) {
        self.state.0 &= !(f as u16);
    }

    /// Sets or clears `f`.
    pub fn put(&mut self, f: Flag, on: bool) {
        if on { self.set(f) } else { self.clear(f) }
    }

    /// Clears `f`, returning whether it was set.
    pub fn unset(&mut self, f: Flag) -> bool {
        let was = self.is(f);
        self.clear(f);
        was
    }
}

impl<S: Read + Write> Peer<S> {
    pub fn new(sock: S, cap: u32) -> Self {
        Peer { sock, out: Outbox::default(), cap, read_left: READ_BUDGET, early: 0, state: Flags::default() }
    }

    pub fn hard_cap(&self) -> usize {
        (self.cap as usize).saturating_mul(HARD_FACTOR)
    }

    /// Before `len` more bytes take the queue past its soft cap, offers the kernel what is
    /// queued: bytes it takes at once were never a backlog, and judging a queue before that
    /// write is what made readers who kept up look slow. Once the socket is full, waits for
    /// the loop to see it writable again rather than asking at every push.
    pub fn make_room(&mut self, len: usize) {
        if self.is(Flag::Blocked) || self.is(Flag::Closing) || self.out.fits(len, self.cap as usize) {
            return;
        }
        let before = self.out.queued();
        // An error here recurs at the loop's own write, which ends the connection.
        let blocked =
            !matches!(self.out.drain(&mut self.sock, WRITE_BUDGET), Ok(Drain::Empty | Drain::Budget));
        self.put(Flag::Blocked, blocked);
        self.early = self.early.saturating_add((before - self.out.queued()) as u32);
    }
}

impl<S: Read> Read for Peer<S> {
    /// Reads within the turn's budget, and reports WouldBlock after a short read instead of
    /// asking the kernel again: that second `read` was one syscall in four on the
    /// private-message path.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.is(Flag::Drained) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.read_left == 0 {
            self.set(Flag::Starved);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let want = buf.len().min(self.read_left as usize);
        let n = self.sock.read(&mut buf[..want])?;
        self.read_left -= n as u16;
        let drained = !self.is(Flag::Hup) && n > 0 && n < want;
        self.put(Flag::Drained, drained);
        Ok(n)
    }
}

impl<S: Read + Write> Peer<S> {
    /// Queues a frame of the session's own (ping, close, echo); never writes (but see
    /// `make_room`): the loop drains the outbox.
    pub fn send(&mut self, frame: Vec<u8>) {
        self.queue_frame(frame, false);
    }

    /// Queues a pong: past a run of pongs not yet begun, it replaces the latest
    /// (`Outbox::push_pong`), so a ping flood holds a bounded few.
    pub fn send_pong(&mut self, frame: Vec<u8>) {
        let merge = is_pong(&frame);
        self.queue_frame(frame, merge);
    }

    fn queue_frame(&mut self, frame: Vec<u8>, merge: bool) {
        let len = frame.len();
        let chunk = bytes::Bytes::from(frame);
        // The close frame itself must get through a full queue (discard_unsent made room).
        if self.is(Flag::Closing) {
            self.out.push_raw(chunk, usize::MAX);
            return;
        }
        self.make_room(len);
        let cap = self.hard_cap();
        let queued = if merge { self.out.push_pong(chunk, cap) } else { self.out.push_raw(chunk, cap) };
        if !queued {
            self.set(Flag::Overflow);
        }
    }
}

/// What the connection is doing.
pub enum Phase {
    /// Reading the HTTP request head into `buf`.
    Request { buf: Vec<u8> },
    /// Sending an HTTP response; then the connection closes. `eof`: the peer has finished sending.
    Respond { eof: bool },
    /// A WebSocket session, in place: boxing it cost a pointer and the allocator's 16 bytes.
    Ws(Session),
    /// A backend API request past its head (`server/api.rs`): its body being read, or its
    /// answer awaited from Redis. Boxed: rare, and the head is kept whole.
    Api(Box<ApiCall>),
    /// A consumer of the event stream (`GET /api/events`, `server/events.rs`): it only reads.
    Events(Stream),
}

/// A backend API request whose head was accepted: the head, and its body as read so far.
pub struct ApiCall {
    pub req: crate::http::Request,
    pub body: Vec<u8>,
    /// The body's length (`Content-Length`); the body is complete at `body.len() == need`.
    pub need: usize,
    /// Dispatched, and its answer waits for Redis (a pending publish): nothing more is read.
    pub waiting: bool,
    /// Bytes read past the body: the next request's (pipelined).
    pub after: Vec<u8>,
}

/// An event stream consumer: which types it wants and where it is in the log.
#[derive(Debug, Clone, Copy)]
pub struct Stream {
    pub types: crate::events::Types,
    /// The id of the next event it should get.
    pub next: u64,
    /// Found caught up with the log once: from then on an event that does not fit in its
    /// queue makes it a slow consumer (until then it is replaying, paced by its queue).
    pub live: bool,
}

pub struct Session {
    /// Frames not yet complete; nothing while idle (see `ws`).
    pub reader: Reader,
    // Its flags (echo, the client's close, joined, claiming) are the connection's: `Flag`.
    /// Messages: `--rate-limit`. It outlives the connection (see `Server::buckets`).
    pub bucket: Bucket,
    /// Pings and pongs from the peer (`CONTROL_RATE`).
    pub control: Bucket,
    // The secret that lets this client take its id back is derived when needed
    // (`chat::ids::Secrets`, from the connection's generation and the id), not kept here.
    /// What only some sessions have, boxed so that the others pay one pointer: what a
    /// resuming client presented (until the join is decided), and with `--auth token` the
    /// token's claims. None in open mode except for a moment during a resume.
    pub extra: Option<Box<Extra>>,
}

/// A session's rarer parts (see `Session::extra`).
#[derive(Debug, Default)]
pub struct Extra {
    pub asked: Option<Asked>,
    pub signed: Option<Signed>,
}

/// What a session's valid token allows (`--auth token`), kept with the connection.
#[derive(Debug)]
pub struct Signed {
    /// The rooms it may enter (shared with each message chat routes for it).
    pub rooms: std::rc::Rc<crate::auth::Rooms>,
    /// The token's `exp`, Unix milliseconds.
    pub exp_ms: u64,
    /// The token's `iat`, Unix milliseconds (a revocation compares it; None: before any).
    pub iat_ms: Option<u64>,
    /// When `exp` + `--auth-grace` is due by the loop's clock (at most `timers::MAX_SPAN`
    /// ahead: checked against the wall clock when reached, and moved on if early).
    pub close_at: Stamp,
}

impl Session {
    pub fn asked(&self) -> Option<&Asked> {
        self.extra.as_ref()?.asked.as_ref()
    }

    pub fn take_asked(&mut self) -> Option<Asked> {
        self.extra.as_mut()?.asked.take()
    }

    pub fn signed(&self) -> Option<&Signed> {
        self.extra.as_ref()?.signed.as_ref()
    }

    pub fn signed_mut(&mut self) -> Option<&mut Signed> {
        self.extra.as_mut()?.signed.as_mut()
    }

    /// Keeps a valid token's claims with the session.
    pub fn sign(&mut self, signed: Signed) {
        self.extra.get_or_insert_with(Box::default).signed = Some(signed);
    }
}

/// The secret a client presented (`resume=`), and the last private message number it has
/// (`pseq=`).
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    pub secret: crate::chat::ids::Secret,
    pub pseq: u64,
}

/// A token bucket: `rate` per second, bursts of `2 * rate`. 8 bytes: the time of the last
/// draw is in milliseconds (`timers::millis`), whose 49.7-day wrap can at worst hand a bucket
/// untouched for that long fewer tokens than it is owed, once.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f32,
    last: u32,
}

impl Bucket {
    pub fn new(rate: u32, now: Instant) -> Self {
        Bucket { tokens: 2.0 * rate as f32, last: millis(now) }
    }

    fn elapsed(&self, now: Instant) -> f32 {
        millis(now).wrapping_sub(self.last) as f32 / 1000.0
    }

    /// Whether the bucket has refilled completely by `now`: keeping it longer tells nothing.
    pub fn full(&self, rate: u32, now: Instant) -> bool {
        self.tokens + self.elapsed(now) * rate as f32 >= 2.0 * rate as f32
    }

    /// The tokens it holds at `now` (refilled since its last draw, at most a burst): what
    /// another node needs to carry it on (`cluster::LOST`), since `last` means nothing there.
    pub fn level(&self, rate: u32, now: Instant) -> f32 {
        (self.tokens + self.elapsed(now) * rate as f32).min(2.0 * rate as f32)
    }

    /// A bucket that held `level` tokens `ago` before `now` (carried from another node: see
    /// `cluster::RESUME`), refilled since at `rate`. A level that is not a number counts as
    /// empty, so that a garbled value never buys a burst.
    pub fn carried(level: f32, ago: std::time::Duration, rate: u32, now: Instant) -> Self {
        let level = if level.is_finite() { level.max(0.0) } else { 0.0 };
        // Both ends are whole milliseconds (Redis's clock for `ago`, `millis` for the stamp
        // set here): 2 ms are not counted, so that the rounding never favours the client,
        // however often it moves (item 3 of issue 21 moved 140 times in 3 s).
        let ago = ago.saturating_sub(std::time::Duration::from_millis(2));
        let tokens = (level + ago.as_secs_f32() * rate as f32).min(2.0 * rate as f32);
        Bucket { tokens, last: millis(now) }
    }

    /// Takes one token if there is one. A rate of 0 means no limit.
    pub fn allow(&mut self, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = self.elapsed(now);
        self.last = millis(now);
        self.tokens = (self.tokens + elapsed * rate as f32).min(2.0 * rate as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The peer's address in 18 bytes rather than `SocketAddr`'s 32, for logs and
/// `--metrics-allow` (an IPv6 scope id and flow label are not kept). An IPv4 peer is kept as
/// `::a.b.c.d` (the deprecated IPv4-compatible form, which no peer uses; an IPv6 socket's
/// IPv4 peer stays `::ffff:a.b.c.d`, as it was): no flag byte, which cost `Conn` 8 bytes
/// with padding. `::` and `::1` are IPv6 (no IPv4 peer is in `0.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    ip: [u8; 16],
    port: u16,
}

impl Addr {
    pub fn ip(&self) -> IpAddr {
        match self.ip {
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, a, b, c, d] if a != 0 => {
                IpAddr::V4(Ipv4Addr::new(a, b, c, d))
            }
            ip => IpAddr::V6(Ipv6Addr::from(ip)),
        }
    }
}

impl From<SocketAddr> for Addr {
    fn from(a: SocketAddr) -> Addr {
        let ip = match a.ip() {
            IpAddr::V4(v4) => {
                let mut ip = [0u8; 16];
                ip[12..].copy_from_slice(&v4.octets());
                ip
            }
            IpAddr::V6(v6) => v6.octets(),
        };
        Addr { ip, port: a.port() }
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        SocketAddr::new(self.ip(), self.port).fmt(f)
    }
}

impl Default for Addr {
    fn default() -> Addr {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into()
    }
}

/// One connection. Its times are `Stamp`s (4 bytes each), not `Instant`s (16, or 24 as an
/// `Option`): docs/performance.md, "Memory of one idle connection", has what each field costs.
pub struct Conn {
    pub peer: Peer,
    pub phase: Phase,
    /// Distinguishes this connection from earlier ones with the same slab key.
    pub generation: u32,
    pub addr: Addr,
    pub opened: Stamp,
    pub last_read: Stamp,
    pub next_ping: Stamp,
    /// Set once we are closing: past it the socket is dropped whatever the peer does.
    pub give_up: Option<Stamp>,
    /// The deadline of this connection's current timer entry.
    pub timer_at: Option<Stamp>,
    /// Why the connection is ending, once that is decided (first reason wins).
    pub reason: Option<crate::metrics::Reason>,
    /// Since when the queue has stayed over its soft cap after the loop's writes.
    pub over_since: Option<Stamp>,
    /// Backend API requests answered since this connection last yielded its turn
    /// (`server/api.rs`, `API_BUDGET`).
    pub api_turn: u8,
}

impl Conn {
    pub fn new(sock: TcpStream, addr: SocketAddr, cap: u32, generation: u32, now: Instant) -> Self {
        let now = Stamp::of(now);
        Conn {
            peer: Peer::new(sock, cap),
            phase: Phase::Request { buf: Vec::new() },
            generation,
            addr: addr.into(),
            opened: now,
            last_read: now,
            next_ping: now,
            give_up: None,
            timer_at: None,
            reason: None,
            over_since: None,
            api_turn: 0,
        }
    }

    /// The next moment something is due for this connection.
    pub fn deadline(&self, handshake_timeout: Duration, idle_timeout: Duration) -> Stamp {
        if let Some(t) = self.give_up {
            return t;
        }
        match self.phase {
            Phase::Request { .. } | Phase::Respond { .. } | Phase::Api(_) => {
                self.opened.after(handshake_timeout)
            }
            // It sends nothing, so no idle deadline: only its keep-alive comment.
            Phase::Events(_) => self.next_ping,
            Phase::Ws(ref s) => {
                let mut at = self.next_ping.earlier(self.last_read.after(idle_timeout));
                if let Some(g) = s.signed() {
                    at = at.earlier(g.close_at);
                }
                self.over_since.map_or(at, |t| at.earlier(t.after(SLOW_GRACE)))
            }
        }
    }

    /// Whether this connection holds a chat id (see `Flag::Joined`).
    pub fn joined(&self) -> bool {
        matches!(self.phase, Phase::Ws(_)) && self.peer.is(Flag::Joined)
    }

    /// Whether `f` is set (see `Peer::is`).
    pub fn is(&self, f: Flag) -> bool {
        self.peer.is(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that never runs dry: after one text frame with FIN=0, empty continuation frames
    /// for ever. Writes go nowhere.
    struct Endless {
        read: usize,
    }

    impl Read for Endless {
        /// Fills the whole buffer, as a socket with plenty queued does (frames split anywhere).
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            const FIRST: [u8; 7] = [0x01, 0x81, 1, 2, 3, 4, b'x' ^ 1]; // "x", FIN=0, masked
            const EMPTY: [u8; 6] = [0x00, 0x80, 1, 2, 3, 4]; // continuation, masked, empty
            for b in buf.iter_mut() {
                *b = match self.read.checked_sub(FIRST.len()) {
                    None => FIRST[self.read],
                    Some(i) => EMPTY[i % EMPTY.len()],
                };
                self.read += 1;
            }
            Ok(buf.len())
        }
    }

    impl Write for Endless {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_message_that_never_ends_on_a_socket_that_never_runs_dry_yields_after_the_budget() {
        use crate::ws::{Limits, Reader};
        let lim = Limits { max_message: 64 << 20, max_wire: u32::MAX };
        let mut reader = Reader::default();
        let mut peer = Peer::new(Endless { read: 0 }, 1 << 20);
        let mut buf = vec![0u8; 16 * 1024];
        for turn in 1..=3u32 {
            peer.read_left = READ_BUDGET;
            peer.clear(Flag::Starved);
            loop {
                match peer.read(&mut buf) {
                    Ok(n) => {
                        let mut pos = 0;
                        assert_eq!(reader.next(&mut buf[..n], &mut pos, &lim), Ok(None), "turn {turn}");
                        assert_eq!(pos, n, "all of it decoded");
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("turn {turn}: {e}"),
                }
            }
            assert!(peer.is(Flag::Starved), "the budget, not the socket, ended the turn");
            assert_eq!(peer.sock.read, READ_BUDGET as usize * turn as usize, "exactly the budget each turn");
            assert!(!reader.is_idle(), "the message is still open");
        }
    }

    #[test]
    fn an_idle_session_is_small() {
        // The numbers ARCHITECTURE.md's memory table gives; a change here belongs there too.
        assert_eq!(std::mem::size_of::<Reader>(), 8);
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 4);
        assert_eq!(std::mem::size_of::<Bucket>(), 8);
        println!(
            "Conn {} Peer {} Phase {} Session {} Outbox {} Addr {}",
            std::mem::size_of::<Conn>(),
            std::mem::size_of::<Peer>(),
            std::mem::size_of::<Phase>(),
            std::mem::size_of::<Session>(),
            std::mem::size_of::<Outbox>(),
            std::mem::size_of::<Addr>()
        );
        // The memory table's rows; on 64-bit targets, where it was measured.
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(std::mem::size_of::<Outbox>(), 8);
            // mio's sockets carry a selector id for its checks in debug builds. Pinned, so
            // that a field that grows them fails here: 128 and 32 in release before issue 26's
            // last steps.
            let (conn, peer) = if cfg!(debug_assertions) { (128, 40) } else { (112, 24) };
            assert_eq!((std::mem::size_of::<Conn>(), std::mem::size_of::<Peer>()), (conn, peer));
            assert_eq!(std::mem::size_of::<Phase>(), 40);
        }
    }

    #[test]
    fn an_address_keeps_its_family() {
        for a in [
            "1.2.3.4:80",
            "127.0.0.1:1",
            "255.255.255.255:65535",
            "[::1]:9",
            "[::]:9",
            "[::ffff:1.2.3.4]:7",
            "[2001:db8::5]:443",
        ] {
            let sa: SocketAddr = a.parse().unwrap();
            let ad = Addr::from(sa);
            assert_eq!((ad.ip(), ad.to_string()), (sa.ip(), sa.to_string()), "{a}");
        }
        assert_eq!(std::mem::size_of::<Addr>(), 18);
    }

    #[test]
    fn bucket_allows_a_burst_of_twice_the_rate_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(5, t0);
        let burst = (0..20).filter(|_| b.allow(5, t0)).count();
        assert_eq!(burst, 10);
        assert!(!b.allow(5, t0 + Duration::from_millis(100)));
        assert!(b.allow(5, t0 + Duration::from_millis(300)));
        let mut off = Bucket::new(0, t0);
        assert!((0..1000).all(|_| off.allow(0, t0)));
    }

    #[test]
    fn a_carried_bucket_keeps_its_level_and_refills_from_when_it_was_read() {
        let t0 = Instant::now();
        let mut b = Bucket::new(5, t0);
        assert!((0..10).all(|_| b.allow(5, t0)));
        let t1 = t0 + Duration::from_millis(400);
        // 2 tokens (to the millisecond the stamps keep).
        assert!((b.level(5, t1) - 2.0).abs() < 0.01, "{}", b.level(5, t1));
        // Read at t1, taken up elsewhere 300 ms later: 1.5 more tokens, not a fresh burst.
        let mut c = Bucket::carried(b.level(5, t1), Duration::from_millis(300), 5, t1);
        assert_eq!((0..10).filter(|_| c.allow(5, t1)).count(), 3);
        assert_eq!(
            Bucket::carried(1.0, Duration::from_secs(60), 5, t0).level(5, t0),
            10.0,
            "at most a burst"
        );
        assert_eq!(Bucket::carried(f32::NAN, Duration::ZERO, 5, t0).level(5, t0), 0.0);
        assert_eq!(Bucket::carried(-3.0, Duration::ZERO, 5, t0).level(5, t0), 0.0);
    }
}
