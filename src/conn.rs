//! One connection: its socket and outbox (`Peer`), and the phase it is in.
//!
//! ```text
//! Request ──(route: file, status)──> Respond ──(written, peer EOF or grace)──> removed
//!    └────(101 on /ws or /echo)────> Ws ──(close sent or received)──> Ws closing ──> removed
//! ```
//! The phase decides what readiness means and which deadline applies; the server loop does
//! the I/O and is the only one to register, deregister or remove.

use crate::outbox::Outbox;
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tungstenite::protocol::WebSocketContext;

/// The socket and everything queued for it. tungstenite writes its frames (pong, close, echo)
/// here too, so every byte a connection sends goes through one ordered, capped queue.
pub struct Peer {
    pub sock: TcpStream,
    pub out: Outbox,
    pub cap: u32,
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

impl Read for Peer {
    /// Reads, but reports WouldBlock after a short read instead of asking the kernel again:
    /// that second `read` was one syscall in four on the private-message path.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.drained {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.sock.read(buf)?;
        self.drained = !self.hup && n > 0 && n < buf.len();
        Ok(n)
    }
}

impl Write for Peer {
    /// Queues, never writes: the loop drains the outbox once per turn.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The close frame itself must get through a full queue (discard_unsent made room).
        let cap = if self.closing { usize::MAX } else { self.cap as usize };
        if !self.out.push_raw(bytes::Bytes::copy_from_slice(buf), cap) {
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
    pub bucket: Bucket,
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
}

impl Conn {
    pub fn new(sock: TcpStream, addr: SocketAddr, cap: u32, generation: u32, now: Instant) -> Self {
        Conn {
            peer: Peer {
                sock,
                out: Outbox::default(),
                cap,
                overflow: false,
                closing: false,
                drained: false,
                hup: false,
            },
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
        }
    }

    /// The next moment something is due for this connection.
    pub fn deadline(&self, handshake_timeout: Duration, idle_timeout: Duration) -> Instant {
        if let Some(t) = self.give_up {
            return t;
        }
        match self.phase {
            Phase::Request { .. } | Phase::Respond { .. } => self.opened + handshake_timeout,
            Phase::Ws(_) => self.next_ping.min(self.last_read + idle_timeout),
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
