//! One connection: its socket and outbox (`Peer`), and the phase it is in.
//!
//! ```text
//! Request ──(route: file, status)──> Respond ──(written, peer EOF or grace)──> removed
//!    └────(101 on /ws or /echo)────> Ws ──(close sent or received)──> Ws closing ──> removed
//! ```
//! The phase decides what readiness means and which deadline applies; the server loop does
//! the I/O and is the only one to register, deregister or remove.

use crate::outbox::{Drain, Outbox, is_pong};
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tungstenite::protocol::WebSocketContext;

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
/// fragments) would never use up a budget counted in messages.
pub const READ_BUDGET: u32 = 64 * 1024;

/// The socket and everything queued for it. tungstenite writes its frames (pong, close, echo)
/// here too, so every byte a connection sends goes through one ordered, capped queue.
pub struct Peer<S = TcpStream> {
    pub sock: S,
    pub out: Outbox,
    /// The soft cap on the queue's charge (`--queue-cap`); the hard cap is `HARD_FACTOR` times it.
    pub cap: u32,
    /// Bytes this turn's reads may still take (`READ_BUDGET`).
    pub read_left: u32,
    /// Wire bytes read since the last complete message: bounds a message's frame overhead.
    pub since_message: u32,
    /// Bytes written outside the loop's flush (`make_room`), for the byte counter.
    pub early: u32,
    /// The read budget ran out: input may be waiting, come back next turn.
    pub starved: bool,
    /// A write found the socket full: no early write until the loop sees it writable.
    pub blocked: bool,
    /// Output was refused at the cap: this client is a slow consumer.
    pub overflow: bool,
    /// Our close is queued: nothing but what is already queued goes out.
    pub closing: bool,
    /// The last read came back short: the socket was empty then, and anything arriving since
    /// raises a new edge. Cleared by each readiness event.
    pub drained: bool,
    /// The current readiness event carried a FIN or an error. Data that came with it reads
    /// short, but the EOF behind it raises no further edge: read on until the kernel says so.
    pub hup: bool,
}

impl<S: Read + Write> Peer<S> {
    pub fn new(sock: S, cap: u32) -> Self {
        Peer {
            sock,
            out: Outbox::default(),
            cap,
            read_left: READ_BUDGET,
            since_message: 0,
            early: 0,
            starved: false,
            blocked: false,
            overflow: false,
            closing: false,
            drained: false,
            hup: false,
        }
    }

    pub fn hard_cap(&self) -> usize {
        (self.cap as usize).saturating_mul(HARD_FACTOR)
    }

    /// Before `len` more bytes take the queue past its soft cap, offers the kernel what is
    /// queued: bytes it takes at once were never a backlog, and judging a queue before that
    /// write is what made readers who kept up look slow. Once the socket is full, waits for
    /// the loop to see it writable again rather than asking at every push.
    pub fn make_room(&mut self, len: usize) {
        if self.blocked || self.closing || self.out.fits(len, self.cap as usize) {
            return;
        }
        let before = self.out.queued();
        // An error here recurs at the loop's own write, which ends the connection.
        self.blocked =
            !matches!(self.out.drain(&mut self.sock, WRITE_BUDGET), Ok(Drain::Empty | Drain::Budget));
        self.early = self.early.saturating_add((before - self.out.queued()) as u32);
    }
}

impl<S: Read> Read for Peer<S> {
    /// Reads within the turn's budget, and reports WouldBlock after a short read instead of
    /// asking the kernel again: that second `read` was one syscall in four on the
    /// private-message path.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.read_left == 0 {
            self.starved = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let want = buf.len().min(self.read_left as usize);
        let n = self.sock.read(&mut buf[..want])?;
        self.read_left -= n as u32;
        self.since_message = self.since_message.saturating_add(n as u32);
        self.drained = !self.hup && n > 0 && n < want;
        Ok(n)
    }
}

impl<S: Read + Write> Write for Peer<S> {
    /// Queues, never writes (but see `make_room`): the loop drains the outbox.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let chunk = bytes::Bytes::copy_from_slice(buf);
        // The close frame itself must get through a full queue (discard_unsent made room).
        if self.closing {
            self.out.push_raw(chunk, usize::MAX);
            return Ok(buf.len());
        }
        self.make_room(buf.len());
        let cap = self.hard_cap();
        let queued =
            if is_pong(buf) { self.out.push_pong(chunk, cap) } else { self.out.push_raw(chunk, cap) };
        if !queued {
            self.overflow = true;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the connection is doing.
pub enum Phase {
    /// Reading the HTTP request head into `buf`.
    Request { buf: Vec<u8> },
    /// Sending an HTTP response; then the connection closes. `eof`: the peer has finished sending.
    Respond { eof: bool },
    /// A WebSocket session.
    Ws(Box<Session>),
}

pub struct Session {
    pub ctx: WebSocketContext,
    /// `/echo` rather than the chat.
    pub echo: bool,
    /// The chat id, once claimed (never for `/echo`).
    pub user: Option<Rc<str>>,
    /// Waiting for Redis to grant the id: nothing is read from the client meanwhile.
    pub claiming: bool,
    /// Messages: `--rate-limit`. It outlives the connection (see `Server::buckets`).
    pub bucket: Bucket,
    /// Pings and pongs from the peer (`CONTROL_RATE`).
    pub control: Bucket,
    /// The secret that lets this client take its id back if its connection is lost.
    pub resume: crate::chat::ids::Secret,
    /// The secret the client presented (`resume=`), and the last private message number it
    /// has (`pseq=`), until the join is decided.
    pub presented: Option<crate::chat::ids::Secret>,
    pub pseq: u64,
}

/// A token bucket: `rate` per second, bursts of `2 * rate`.
pub struct Bucket {
    tokens: f32,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u32, now: Instant) -> Self {
        Bucket { tokens: 2.0 * rate as f32, last: now }
    }

    /// Whether the bucket has refilled completely by `now`: keeping it longer tells nothing.
    pub fn full(&self, rate: u32, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.tokens + elapsed * rate as f32 >= 2.0 * rate as f32
    }

    /// Takes one token if there is one. A rate of 0 means no limit.
    pub fn allow(&mut self, rate: u32, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate as f32).min(2.0 * rate as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct Conn {
    pub peer: Peer,
    pub phase: Phase,
    /// Distinguishes this connection from earlier ones with the same slab key.
    pub generation: u32,
    pub addr: SocketAddr,
    pub opened: Instant,
    pub last_read: Instant,
    pub next_ping: Instant,
    /// Set once we are closing: past it the socket is dropped whatever the peer does.
    pub give_up: Option<Instant>,
    /// The deadline of this connection's current timer entry.
    pub timer_at: Option<Instant>,
    /// On the loop's pending-write list this turn.
    pub pending: bool,
    /// Remove once the outbox is empty.
    pub finishing: bool,
    /// On the loop's removal list.
    pub doomed: bool,
    /// Registered for writability: a write is blocked.
    pub want_writable: bool,
    /// Why the connection is ending, once that is decided (first reason wins).
    pub reason: Option<crate::metrics::Reason>,
    /// Since when the queue has stayed over its soft cap after the loop's writes.
    pub over_since: Option<Instant>,
}

impl Conn {
    pub fn new(sock: TcpStream, addr: SocketAddr, cap: u32, generation: u32, now: Instant) -> Self {
        Conn {
            peer: Peer::new(sock, cap),
            phase: Phase::Request { buf: Vec::new() },
            generation,
            addr,
            opened: now,
            last_read: now,
            next_ping: now,
            give_up: None,
            timer_at: None,
            pending: false,
            finishing: false,
            doomed: false,
            want_writable: false,
            reason: None,
            over_since: None,
        }
    }

    /// The next moment something is due for this connection.
    pub fn deadline(&self, handshake_timeout: Duration, idle_timeout: Duration) -> Instant {
        if let Some(t) = self.give_up {
            return t;
        }
        match self.phase {
            Phase::Request { .. } | Phase::Respond { .. } => self.opened + handshake_timeout,
            Phase::Ws(_) => {
                let at = self.next_ping.min(self.last_read + idle_timeout);
                self.over_since.map_or(at, |t| at.min(t + SLOW_GRACE))
            }
        }
    }

    /// The chat id this connection holds, if any.
    pub fn user(&self) -> Option<&Rc<str>> {
        match &self.phase {
            Phase::Ws(s) => s.user.as_ref(),
            _ => None,
        }
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
        use tungstenite::protocol::{Role, WebSocketConfig};
        let cfg = WebSocketConfig::default().read_buffer_size(256).max_message_size(Some(64 << 20));
        let mut ctx = WebSocketContext::new(Role::Server, Some(cfg));
        let mut peer = Peer::new(Endless { read: 0 }, 1 << 20);
        for turn in 1..=3u32 {
            peer.read_left = READ_BUDGET;
            peer.starved = false;
            match ctx.read(&mut peer) {
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => panic!("turn {turn}: {other:?}"),
            }
            assert!(peer.starved, "the budget, not the socket, ended the turn");
            assert_eq!(peer.sock.read, (READ_BUDGET * turn) as usize, "exactly the budget each turn");
            assert_eq!(peer.since_message, READ_BUDGET * turn, "the message's wire bytes are counted");
        }
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
}
