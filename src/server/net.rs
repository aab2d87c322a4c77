//! The connections and their sockets: the `Slab<Conn>`, the turn's lists (pending writes,
//! overflows, urgent handshakes, connections cut short), queueing a line (`Net::queue`, chat's
//! `Sink`), accepting, the write with its judgement of slow consumers, and removal. With the
//! rest of `server/`, the only code that registers, deregisters or removes client sockets.

use super::{ACCEPT_BACKOFF, ACCEPT_BUDGET, IDLE_COMPACT_ABOVE, Server, give_back_free_heap};
use crate::chat::Sink;
use crate::conn::{Conn, Flag, Phase, WRITE_BUDGET};
use crate::http::{self, Status};
use crate::metrics::{Reason, Stats};
use crate::outbox::{Drain, Spare};
use crate::timers::Stamp;
use bytes::Bytes;
use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// The connections and what the turn has queued for them: the `Sink` chat delivers into.
pub(super) struct Net {
    pub(super) conns: Slab<Conn>,
    /// Connections with output queued this turn.
    pub(super) pending: Vec<usize>,
    /// Connections that went over their queue cap this turn.
    pub(super) overflowed: Vec<usize>,
    /// Connections whose output never waits for a busy loop's interval (`flush.rs`): HTTP
    /// responses and the 101 (with its welcome). The wait is for coalescing chat lines.
    pub(super) urgent: Vec<usize>,
    /// Connections whose write stopped at `WRITE_BUDGET`: pending again from the next turn.
    pub(super) later: Vec<usize>,
    /// A queue went past its soft cap since the last compaction: worth returning memory when
    /// the last connection goes, however few there were.
    pub(super) heavy: bool,
    /// Queue buffers to reuse.
    pub(super) spare: Spare,
    pub(super) stats: Stats,
}

impl Net {
    /// Sends `token` an error line, and counts it for `/metrics`.
    pub(super) fn error(&mut self, token: usize, code: crate::protocol::ErrorCode, to: Option<&str>) {
        self.push(token, &crate::protocol::error(code, to));
        self.stats.error_sent(code);
    }

    pub(super) fn mark_pending(&mut self, token: usize) {
        if let Some(c) = self.conns.get_mut(token)
            && !c.is(Flag::Pending)
        {
            c.peer.set(Flag::Pending);
            self.pending.push(token);
        }
    }
}

impl Net {
    /// Queues a line for `token`. Past the soft cap (`--queue-cap`) the kernel is offered the
    /// queue first, so only bytes it refused count as a backlog. Then a line that must arrive
    /// (`soft_only` false) is queued up to the hard cap, and the peer is judged at the flush
    /// by whether its backlog persists (`SLOW_GRACE`); past the hard cap it is a slow consumer
    /// at once. A line that may be refused (`soft_only`) is refused at the soft cap: the
    /// sender pays, not the recipient. A marked (closing or overflowed) client takes no more.
    pub(super) fn queue(&mut self, token: usize, line: &Bytes, soft_only: bool) -> bool {
        let Some(conn) = self.conns.get_mut(token) else { return true };
        let peer = &mut conn.peer;
        if peer.is(Flag::Closing) || peer.is(Flag::Overflow) {
            return true; // it is leaving: nobody to tell, nothing to charge
        }
        peer.out.reuse(&mut self.spare);
        let early = peer.early;
        peer.make_room(line.len());
        if peer.early != early {
            self.stats.early_writes += 1;
        }
        let cap = if soft_only { peer.cap as usize } else { peer.hard_cap() };
        if !peer.out.push_line(line.clone(), cap) {
            if !soft_only {
                peer.set(Flag::Overflow);
                self.overflowed.push(token);
            }
            return false;
        }
        self.heavy |= peer.out.charged() > peer.cap as usize;
        self.stats.deliveries += 1;
        if !conn.is(Flag::Pending) {
            conn.peer.set(Flag::Pending);
            self.pending.push(token);
        }
        true
    }
}

impl Sink for Net {
    fn push(&mut self, token: usize, line: &Bytes) {
        self.queue(token, line, false);
    }

    fn offer(&mut self, token: usize, line: &Bytes) -> bool {
        self.queue(token, line, true)
    }
}

impl Server {
    pub(super) fn accept_all(&mut self, now: Instant) {
        self.accept_paused_until = None;
        for _ in 0..ACCEPT_BUDGET {
            let Some(listener) = &self.listener else { return };
            match listener.accept() {
                Ok((sock, addr)) => self.admit(sock, addr, now),
                Err(e) if would_block(&e) => return,
                Err(e) if out_of_fds(&e) => {
                    // Edge-triggered: the waiting connections will not wake us again, so retry
                    // when a connection closes or after the back-off, whichever comes first.
                    warn!("accept paused: {e}");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
                Err(e) => debug!("accept: {e}"),
            }
        }
        // Budget spent before WouldBlock: edge-triggered, the listener will not wake us for
        // those still waiting, so the next turn comes at once and accepts more.
        self.accept_paused_until = Some(now);
    }

    pub(super) fn admit(&mut self, mut sock: TcpStream, addr: std::net::SocketAddr, now: Instant) {
        self.net.stats.accepted += 1;
        self.heap_churned(now);
        if self.net.conns.len() >= self.max_conns {
            // Best effort, never blocking: the 503 fits any socket buffer. Its FIN goes after
            // it, and what the client already sent is read first: a socket closed with unread
            // bytes sends a reset, which can destroy the 503 before the client reads it.
            let _ = sock.write(&http::error(Status::Unavailable, "server full, try again later"));
            let _ = sock.shutdown(std::net::Shutdown::Write);
            let mut sink = [0u8; 2048];
            for _ in 0..4 {
                if !matches!(sock.read(&mut sink), Ok(n) if n > 0) {
                    break;
                }
            }
            debug!("refused {addr}: {} connections", self.net.conns.len());
            return;
        }
        let _ = sock.set_nodelay(true);
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let entry = self.net.conns.vacant_entry();
        let token = entry.key();
        let conn = entry.insert(Conn::new(sock, addr, self.cfg.queue_cap as u32, generation, now));
        // Writability is asked for only while a write is blocked (see `write`): with it always
        // on, every ACK of every write wakes the loop with an event for that socket.
        if let Err(e) = self.poll.registry().register(&mut conn.peer.sock, Token(token), Interest::READABLE) {
            warn!("register {addr}: {e}");
            self.net.conns.remove(token);
            return;
        }
        self.arm(token, now);
    }

    /// (Re)schedules the connection's timer if its deadline is earlier than its current entry.
    pub(super) fn arm(&mut self, token: usize, now: Instant) {
        let Some(c) = self.net.conns.get_mut(token) else { return };
        let at = c.deadline(self.cfg.handshake_timeout, self.cfg.idle_timeout);
        if c.timer_at.is_none_or(|t| !t.reached(at)) {
            let when = self.timers.schedule(at.instant(now), token);
            c.timer_at = Some(Stamp::of(when));
        }
    }

    /// Queues the connection for removal at the end of the turn (once, whoever asks).
    pub(super) fn doom(&mut self, token: usize) {
        if let Some(c) = self.net.conns.get_mut(token)
            && !c.is(Flag::Doomed)
        {
            c.peer.set(Flag::Doomed);
            self.doomed.push(token);
        }
    }

    pub(super) fn write(&mut self, token: usize, now: Instant) {
        let Some(conn) = self.net.conns.get_mut(token) else { return };
        conn.peer.clear(Flag::Pending);
        let peer = &mut conn.peer;
        let before = peer.out.queued();
        let result = peer.out.drain(&mut Sendmsg(&peer.sock), WRITE_BUDGET);
        self.net.stats.bytes_sent +=
            (before - peer.out.queued()) as u64 + std::mem::take(&mut peer.early) as u64;
        let blocked = matches!(result, Ok(Drain::Blocked));
        peer.put(Flag::Blocked, blocked);
        // The judgement of a slow consumer: after the kernel was offered the queue, is there
        // still more than the soft cap? Only if that persists for SLOW_GRACE is it dropped.
        let over = peer.out.charged() > peer.cap as usize && !peer.is(Flag::Closing);
        match (over, conn.over_since) {
            (true, None) => {
                conn.over_since = Some(Stamp::of(now));
                self.arm(token, now);
            }
            (false, Some(_)) => conn.over_since = None,
            _ => {}
        }
        let Some(conn) = self.net.conns.get_mut(token) else { return };
        if blocked != conn.is(Flag::WantWritable) {
            conn.peer.put(Flag::WantWritable, blocked);
            let interest = if blocked { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            let _ = self.poll.registry().reregister(&mut conn.peer.sock, Token(token), interest);
        }
        match result {
            Ok(Drain::Blocked) => {}
            // Not pending yet: `settle` marks it so after this turn's writes (marking it now
            // would make that a no-op, and the rest of its queue would never be written).
            Ok(Drain::Budget) => self.net.later.push(token),
            Ok(Drain::Empty) => match conn.phase {
                Phase::Request { .. } if conn.api_turn == super::api::PAUSED => {
                    // Its answers are out: read its next requests (`api_answer`).
                    conn.api_turn = 0;
                    self.again.push(token);
                }
                Phase::Ws(_) | Phase::Events(_) if !conn.is(Flag::Finishing) => {
                    conn.peer.out.release(&mut self.net.spare)
                }
                Phase::Respond { eof: true } => self.doom(token),
                Phase::Respond { eof: false } => {
                    // Response out: half-close, then wait for the peer's EOF or the grace.
                    let _ = conn.peer.sock.shutdown(std::net::Shutdown::Write);
                }
                _ if conn.is(Flag::Finishing) => self.doom(token),
                _ => {}
            },
            Err(e) => {
                debug!("{}: write: {e}", conn.addr);
                self.leave(token, Reason::Lost);
                self.doom(token);
            }
        }
    }

    pub(super) fn remove(&mut self, token: usize) {
        if !self.net.conns.contains(token) {
            return;
        }
        // Sessions and connections closed for a reason count; plain page loads do not.
        let c = &self.net.conns[token];
        let counted =
            c.reason.or(matches!(c.phase, Phase::Ws(_) | Phase::Events(_)).then_some(Reason::ClientClose));
        if let Phase::Events(_) = c.phase {
            self.stream_gone(token);
        }
        self.leave(token, Reason::ClientClose);
        let mut conn = self.net.conns.remove(token);
        if let Some(r) = counted {
            self.net.stats.disconnect(r);
        }
        let _ = self.poll.registry().deregister(&mut conn.peer.sock);
        drop(conn);
        self.flush.cool(token); // the token may be reused within the tick
        self.compact_if_idle(Instant::now());
        if self.accept_paused_until.is_some() {
            // A descriptor just came free: the connections waiting in the backlog can have it.
            self.accept_paused_until = Some(Instant::now());
        }
    }

    /// Compacts once the server is idle after a crowd: no connection, and nobody held for a
    /// resume (their tables go when their grace does, see `sweep`). At most once a second.
    pub(super) fn compact_if_idle(&mut self, now: Instant) {
        // Worth it after a crowd (the table is reserved up front, so its size says nothing).
        let crowd = self.net.stats.accepted - self.compacted_after > IDLE_COMPACT_ABOVE as u64;
        let big = crowd || self.net.heavy;
        let recently = self.compacted_at.is_some_and(|t| now < t + Duration::from_secs(1));
        if self.net.conns.is_empty() && !self.chat.has_holds() && big && !recently {
            self.compacted_at = Some(now);
            self.compacted_after = self.net.stats.accepted;
            self.compact();
        }
    }

    /// The last connection is gone after a crowd: give the memory the crowd needed back to the
    /// system, so that RSS returns to where it started (glibc keeps freed memory otherwise).
    pub(super) fn compact(&mut self) {
        // Give the table back and reserve it again untouched (see `room_for`).
        self.net.conns = room_for(self.max_conns);
        self.net.pending = Vec::new();
        self.net.overflowed = Vec::new();
        self.net.urgent = Vec::new();
        self.net.later = Vec::new();
        self.net.heavy = false;
        self.net.spare.clear();
        self.doomed = Vec::new();
        self.again = Vec::new();
        self.timers.clear(); // every entry is stale now
        self.chat.shrink();
        self.buckets.shrink_to_fit();
        give_back_free_heap();
        // After the trim: reserved before it, the table would land on pages the crowd left
        // resident, and keep them so.
        self.chat.reserve(self.max_conns);
        self.timers.reserve(self.max_conns);
        debug!("idle: memory compacted");
    }
}

/// The connection table, reserved for `--max-conns` up front. The reservation is address
/// space, not memory: pages are touched only as slots fill, so RSS grows with connections
/// alone, where a growing table doubles (on average a third of it unused, and copied at each
/// doubling). Measured at 10,000 idle connections: 1,417 → about 1,375 bytes each.
pub(super) fn room_for(max_conns: usize) -> Slab<Conn> {
    Slab::with_capacity(max_conns)
}

pub(super) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

pub(super) fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// A socket written with `sendmsg(2)` rather than `writev(2)` (what `TcpStream`'s
/// `write_vectored` calls): the same bytes, without `writev`'s file layer (the position lock
/// check, `fsnotify` on every call), which the kernel runs even for sockets; `perf` put
/// `vfs_writev` and `fdget_pos` at ~12% of the server's CPU in a fan-out at 20k/s.
struct Sendmsg<'a>(&'a TcpStream);

impl Write for Sendmsg<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        socket2::SockRef::from(self.0).send(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        socket2::SockRef::from(self.0).send_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
