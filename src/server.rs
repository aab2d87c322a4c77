//! The poll loop: one `mio::Poll`, the listener, and every connection in a `Slab`.
//!
//! This is the only module that registers, deregisters or removes sockets. One turn:
//! 1. poll, sleeping until the nearest deadline (or not at all if input was left unread);
//! 2. accept until WouldBlock; read every readable connection until WouldBlock (or its
//!    per-turn budget); mark writable ones pending;
//! 3. fire due timers (handshake, ping, idle, close grace);
//! 4. settle: send the turn's presence batch, close slow consumers, drain every pending
//!    outbox with `writev`, remove finished connections; repeat until nothing changes,
//!    because a removal's `leave` can fill someone else's queue.

use crate::assets::Assets;
use crate::chat::{Chat, Outcome, Sink};
use crate::config::Config;
use crate::conn::{Bucket, Conn, Kind, Phase, Session};
use crate::http::{self, Parse, Request, Status};
use crate::outbox::Drain;
use crate::router::{self, Route, Rules};
use bytes::Bytes;
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::Message;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

const LISTENER: Token = Token(usize::MAX);
/// How long a closing peer gets to answer our close or read our response.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// After EMFILE/ENFILE, how long to wait before accepting again (unless a socket frees first).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Messages read from one connection per turn before others get their turn.
const READ_BUDGET: usize = 256;
/// tungstenite's read chunk: small, so an idle connection holds little.
const READ_BUFFER: usize = 1024;

pub struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    chat: Chat,
    cfg: Config,
    assets: Assets,
    timers: crate::timers::Timers,
    max_conns: usize,
    ws_config: WebSocketConfig,
    /// Connections with output queued this turn.
    pending: Vec<usize>,
    /// Connections that went over their queue cap this turn.
    overflowed: Vec<usize>,
    /// Connections to remove at the end of the turn.
    doomed: Vec<usize>,
    /// Connections whose input was not read to WouldBlock (read budget spent).
    again: Vec<usize>,
    accept_paused_until: Option<Instant>,
    next_generation: u32,
}

/// Why a session ended, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    ClientClose,
    SlowConsumer,
    IdleTimeout,
    ProtocolError,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::ClientClose => "client_close",
            Reason::SlowConsumer => "slow_consumer",
            Reason::IdleTimeout => "idle_timeout",
            Reason::ProtocolError => "protocol_error",
        }
    }
}

/// Delivers chat lines into outboxes. A marked (closing or overflowed) client takes no more.
struct Deliver<'a> {
    conns: &'a mut Slab<Conn>,
    pending: &'a mut Vec<usize>,
    overflowed: &'a mut Vec<usize>,
}

impl Sink for Deliver<'_> {
    fn push(&mut self, token: usize, line: &Bytes) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        let peer = &mut conn.peer;
        if peer.closing || peer.overflow {
            return;
        }
        if !peer.out.push_line(line.clone(), peer.cap) {
            peer.overflow = true;
            self.overflowed.push(token);
            return;
        }
        if !conn.pending {
            conn.pending = true;
            self.pending.push(token);
        }
    }
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

impl Server {
    pub fn new(cfg: Config, listener: TcpListener, max_conns: usize) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = listener;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(cfg.max_message))
            .max_frame_size(Some(cfg.max_message));
        let assets = cfg.public.clone().map_or(Assets::Embedded, Assets::Dir);
        Ok(Server {
            poll,
            listener,
            conns: Slab::new(),
            chat: Chat::new(cfg.presence_limit, cfg.max_text),
            assets,
            timers: Default::default(),
            max_conns,
            ws_config,
            pending: Vec::new(),
            overflowed: Vec::new(),
            doomed: Vec::new(),
            again: Vec::new(),
            accept_paused_until: None,
            next_generation: 0,
            cfg,
        })
    }

    /// Runs for ever; returns only on a poll failure.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            let timeout = if self.again.is_empty() { self.timeout(now) } else { Some(Duration::ZERO) };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            self.turn(&events, now, now_millis());
        }
    }

    fn timeout(&self, now: Instant) -> Option<Duration> {
        let paused = self.accept_paused_until.map(|t| t.saturating_duration_since(now));
        match (self.timers.timeout(now), paused) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One loop turn after poll returned. `now` and `ts` (wall-clock ms) are read once per turn.
    fn turn(&mut self, events: &Events, now: Instant, ts: u64) {
        for ev in events.iter() {
            match ev.token() {
                LISTENER => self.accept_all(now),
                Token(t) => {
                    if ev.is_writable() {
                        self.mark_pending(t);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.readable(t, now, ts);
                    }
                }
            }
        }
        for t in std::mem::take(&mut self.again) {
            self.readable(t, now, ts);
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_all(now);
        }
        self.fire_timers(now);
        self.settle(now);
    }

    fn accept_all(&mut self, now: Instant) {
        self.accept_paused_until = None;
        loop {
            match self.listener.accept() {
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
    }

    fn admit(&mut self, mut sock: TcpStream, addr: std::net::SocketAddr, now: Instant) {
        if self.conns.len() >= self.max_conns {
            // Best effort, never blocking: the 503 fits any socket buffer.
            let _ = sock.write(&http::error(Status::Unavailable, "server full, try again later"));
            debug!("refused {addr}: {} connections", self.conns.len());
            return;
        }
        let _ = sock.set_nodelay(true);
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let token = entry.key();
        let conn = entry.insert(Conn::new(sock, addr, self.cfg.queue_cap, generation, now));
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(&mut conn.peer.sock, Token(token), interest) {
            warn!("register {addr}: {e}");
            self.conns.remove(token);
            return;
        }
        self.arm(token);
    }

    fn mark_pending(&mut self, token: usize) {
        if let Some(c) = self.conns.get_mut(token)
            && !c.pending
        {
            c.pending = true;
            self.pending.push(token);
        }
    }

    /// (Re)schedules the connection's timer if its deadline is earlier than its current entry.
    fn arm(&mut self, token: usize) {
        let Some(c) = self.conns.get_mut(token) else {
            return;
        };
        let at = c.deadline(self.cfg.handshake_timeout, self.cfg.idle_timeout);
        if c.timer_at.is_none_or(|t| at < t) {
            c.timer_at = Some(at);
            self.timers.schedule(at, token, c.generation);
        }
    }

    fn readable(&mut self, token: usize, now: Instant, ts: u64) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        match conn.phase {
            Phase::Request { .. } => self.read_request(token, now, ts),
            Phase::Respond { .. } => self.read_discard(token),
            Phase::Ws(_) => self.read_ws(token, now, ts),
        }
    }

    fn read_request(&mut self, token: usize, now: Instant, ts: u64) {
        let conn = &mut self.conns[token];
        let Phase::Request { buf } = &mut conn.phase else {
            return;
        };
        let mut chunk = [0u8; 4096];
        loop {
            match conn.peer.sock.read(&mut chunk) {
                Ok(0) => {
                    debug!("{} left before finishing its request", conn.addr);
                    return self.doom(token);
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > http::MAX_HEAD {
                        break;
                    }
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.doom(token),
            }
        }
        match http::parse(buf) {
            Parse::Partial => {}
            Parse::Fail(status) => {
                warn!("{}: bad request: {}", conn.addr, status.reason());
                self.respond(token, http::error(status, status.reason()), now);
            }
            Parse::Done(req, len) => {
                let rest = buf.split_off(len);
                self.route(token, req, rest, now, ts);
            }
        }
    }

    /// Acts on a complete request (see `router::route`).
    fn route(&mut self, token: usize, req: Request, rest: Vec<u8>, now: Instant, ts: u64) {
        let rules = Rules { echo: self.cfg.echo, allow_origin: &self.cfg.allow_origin, assets: &self.assets };
        match router::route(&req, &rules) {
            Route::Upgrade { echo, key, id } => {
                let kind = if echo { Kind::Echo } else { Kind::Chat { user: None } };
                self.upgrade(token, kind, &key, &id, rest, now, ts)
            }
            Route::Respond(response) => self.respond(token, response, now),
            Route::Refuse(status, why) => self.refuse(token, status, why, now),
            Route::Metrics { head } => {
                let body = b"";
                self.respond(
                    token,
                    http::response(Status::Ok, "text/plain; version=0.0.4", "", body, head),
                    now,
                )
            }
        }
    }

    fn refuse(&mut self, token: usize, status: Status, why: &str, now: Instant) {
        debug!("{}: {} {why}", self.conns[token].addr, status as u16);
        self.respond(token, http::error(status, why), now);
    }

    /// Queues a response; the connection closes once it is written.
    fn respond(&mut self, token: usize, response: Bytes, now: Instant) {
        let conn = &mut self.conns[token];
        conn.peer.out.push_raw(response, usize::MAX);
        conn.phase = Phase::Respond { eof: false };
        conn.give_up = Some(now + CLOSE_GRACE);
        self.mark_pending(token);
        self.arm(token);
        // Read what is left (a body, a second request) so the kernel does not answer with RST.
        self.read_discard(token);
    }

    /// Reads and drops whatever the peer sends after its request. Bounded per call: a peer
    /// that keeps streaming a body at us is dropped rather than read for ever.
    fn read_discard(&mut self, token: usize) {
        let conn = &mut self.conns[token];
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            match conn.peer.sock.read(&mut sink) {
                Ok(0) => {
                    conn.phase = Phase::Respond { eof: true };
                    if conn.peer.out.is_empty() {
                        self.doom(token);
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.doom(token);
    }

    #[allow(clippy::too_many_arguments)]
    fn upgrade(
        &mut self,
        token: usize,
        kind: Kind,
        key: &str,
        id: &str,
        rest: Vec<u8>,
        now: Instant,
        ts: u64,
    ) {
        let conn = &mut self.conns[token];
        conn.peer.out.push_raw(http::switching_protocols(key), usize::MAX);
        let ctx = WebSocketContext::from_partially_read(rest, Role::Server, Some(self.ws_config));
        let is_chat = matches!(kind, Kind::Chat { .. });
        conn.phase =
            Phase::Ws(Box::new(Session { ctx, kind, bucket: Bucket::new(self.cfg.rate_limit, now) }));
        conn.last_read = now;
        conn.next_ping = now + self.cfg.ping_interval;
        conn.timer_at = None;
        self.mark_pending(token);
        self.arm(token);
        if is_chat {
            let mut sink = Deliver {
                conns: &mut self.conns,
                pending: &mut self.pending,
                overflowed: &mut self.overflowed,
            };
            match self.chat.join(id, token, &mut sink) {
                Ok(()) => {
                    let conn = &mut self.conns[token];
                    info!("session open id={id} peer={}", conn.addr);
                    if let Phase::Ws(s) = &mut conn.phase {
                        s.kind = Kind::Chat { user: Some(Rc::from(id)) };
                    }
                }
                Err(code) => {
                    let close = match code {
                        crate::protocol::ErrorCode::IdTaken => 4409,
                        _ => 4400,
                    };
                    info!("refused id {id:?} from {}: {}", self.conns[token].addr, code.as_str());
                    let line = crate::protocol::error(code, None);
                    self.conns[token].peer.out.push_line(line, usize::MAX);
                    return self.close_ws(token, CloseCode::from(close), code.as_str(), None, now);
                }
            }
        }
        // Frames sent right behind the request arrive with no readiness event of their own.
        self.read_ws(token, now, ts);
    }

    fn read_ws(&mut self, token: usize, now: Instant, ts: u64) {
        for _ in 0..READ_BUDGET {
            let Some(conn) = self.conns.get_mut(token) else {
                return;
            };
            let Phase::Ws(s) = &mut conn.phase else {
                return;
            };
            let result = s.ctx.read(&mut conn.peer);
            if conn.peer.overflow && !conn.peer.closing {
                // Our pongs or echoes went past the cap: the peer is not reading.
                return self.drop_slow(token, now);
            }
            let msg = match result {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e)) if would_block(&e) => {
                    self.mark_pending(token);
                    return;
                }
                Err(e) => return self.ws_failed(token, e, now),
            };
            conn.last_read = now;
            match (msg, &mut s.kind) {
                (Message::Text(text), Kind::Chat { user: Some(user) }) => {
                    if conn.peer.closing {
                        continue;
                    }
                    if !s.bucket.allow(self.cfg.rate_limit, now) {
                        let line = crate::protocol::error(crate::protocol::ErrorCode::RateLimited, None);
                        let mut sink = Deliver {
                            conns: &mut self.conns,
                            pending: &mut self.pending,
                            overflowed: &mut self.overflowed,
                        };
                        sink.push(token, &line);
                        continue;
                    }
                    let user = Rc::clone(user);
                    let mut sink = Deliver {
                        conns: &mut self.conns,
                        pending: &mut self.pending,
                        overflowed: &mut self.overflowed,
                    };
                    if let Outcome::Refused(code) = self.chat.handle(token, &user, &text, ts, &mut sink) {
                        debug!("{user}: refused message: {}", code.as_str());
                    }
                }
                (Message::Text(_) | Message::Binary(_), Kind::Chat { user: None }) => {}
                (Message::Binary(_), Kind::Chat { .. }) => {
                    return self.close_ws(
                        token,
                        CloseCode::Unsupported,
                        "binary frames are not supported",
                        Some(Reason::ProtocolError),
                        now,
                    );
                }
                (m @ (Message::Text(_) | Message::Binary(_)), Kind::Echo) => {
                    let _ = s.ctx.write(&mut conn.peer, m);
                    self.mark_pending(token);
                }
                (Message::Close(_), _) => {
                    // Queue tungstenite's reply (or nothing, if this answers our close); the
                    // socket goes once the outbox is written, or at the grace deadline.
                    conn.peer.closing = true;
                    let _ = s.ctx.flush(&mut conn.peer);
                    conn.give_up.get_or_insert(now + CLOSE_GRACE);
                    self.arm(token);
                    return self.finish(token);
                }
                (Message::Ping(_) | Message::Pong(_) | Message::Frame(_), _) => self.mark_pending(token),
            }
        }
        // Budget spent with input still waiting: come back next turn, after everyone else.
        self.again.push(token);
    }

    /// Maps a failed read to the close the RFC asks for, or to a plain drop.
    fn ws_failed(&mut self, token: usize, e: tungstenite::Error, now: Instant) {
        use tungstenite::error::{Error as E, ProtocolError as P};
        let (code, why) = match e {
            E::ConnectionClosed | E::AlreadyClosed => return self.finish(token),
            E::Protocol(P::ResetWithoutClosingHandshake) | E::Io(_) => {
                self.leave(token, Reason::ClientClose);
                return self.doom(token);
            }
            E::Capacity(_) => (CloseCode::Size, "message too big"),
            E::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8"),
            E::Protocol(_) => (CloseCode::Protocol, "protocol error"),
            _ => (CloseCode::Error, "internal error"),
        };
        warn!("{}: {e}", self.conns[token].addr);
        self.close_ws(token, code, why, Some(Reason::ProtocolError), now);
    }

    /// Starts our side of the close handshake. `reason` logs why a chat session ended.
    fn close_ws(&mut self, token: usize, code: CloseCode, why: &str, reason: Option<Reason>, now: Instant) {
        if let Some(r) = reason {
            self.leave(token, r);
        }
        let conn = &mut self.conns[token];
        if conn.peer.closing {
            return;
        }
        let Phase::Ws(s) = &mut conn.phase else {
            return;
        };
        if code == CloseCode::Policy {
            conn.peer.out.discard_unsent();
        }
        conn.peer.closing = true;
        let frame = CloseFrame { code, reason: why.into() };
        match s.ctx.close(&mut conn.peer, Some(frame)) {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => {}
            Err(e) => debug!("close {}: {e}", conn.addr),
        }
        conn.give_up = Some(now + CLOSE_GRACE);
        self.mark_pending(token);
        self.arm(token);
    }

    /// Closes a client whose queue would pass the cap: 1008, after what was already begun.
    fn drop_slow(&mut self, token: usize, now: Instant) {
        let Some(c) = self.conns.get(token) else {
            return;
        };
        if c.peer.closing {
            return;
        }
        let id = c.user().map_or("-", |u| u);
        warn!("slow consumer id={id} peer={}: queue past {} bytes", c.addr, self.cfg.queue_cap);
        self.close_ws(token, CloseCode::Policy, "slow consumer", Some(Reason::SlowConsumer), now);
    }

    /// Frees the connection's id, if it holds one, and logs the end of the session.
    fn leave(&mut self, token: usize, reason: Reason) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        let Phase::Ws(s) = &mut conn.phase else {
            return;
        };
        let Kind::Chat { user } = &mut s.kind else {
            return;
        };
        let Some(id) = user.take() else { return };
        self.chat.leave(&id);
        let secs = conn.opened.elapsed().as_secs_f32();
        if matches!(reason, Reason::ClientClose) {
            info!("session closed id={id} peer={} duration={secs:.1}s reason={}", conn.addr, reason.as_str());
        } else {
            warn!("session closed id={id} peer={} duration={secs:.1}s reason={}", conn.addr, reason.as_str());
        }
    }

    /// Removes the connection once its outbox is empty.
    fn finish(&mut self, token: usize) {
        self.leave(token, Reason::ClientClose);
        let conn = &mut self.conns[token];
        conn.finishing = true;
        if conn.peer.out.is_empty() {
            self.doom(token);
        } else {
            self.mark_pending(token);
        }
    }

    fn doom(&mut self, token: usize) {
        if !self.doomed.contains(&token) {
            self.doomed.push(token);
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some((at, token, generation)) = self.timers.pop_due(now) {
            let Some(conn) = self.conns.get_mut(token) else {
                continue;
            };
            if conn.generation != generation || conn.timer_at != Some(at) {
                continue; // stale: the connection is gone or has a newer entry
            }
            conn.timer_at = None;
            if conn.give_up.is_some_and(|t| t <= now) {
                debug!("{}: gave up on close", conn.addr);
                self.doom(token);
                continue;
            }
            match &mut conn.phase {
                Phase::Request { .. } if now >= conn.opened + self.cfg.handshake_timeout => {
                    warn!("{}: handshake timeout", conn.addr);
                    self.doom(token);
                    continue;
                }
                Phase::Ws(s) if conn.give_up.is_none() => {
                    if now >= conn.last_read + self.cfg.idle_timeout {
                        self.close_ws(token, CloseCode::Away, "idle timeout", Some(Reason::IdleTimeout), now);
                        continue;
                    }
                    if now >= conn.next_ping {
                        let _ = s.ctx.write(&mut conn.peer, Message::Ping(Bytes::new()));
                        conn.next_ping = now + self.cfg.ping_interval;
                        self.mark_pending(token);
                    }
                }
                _ => {}
            }
            self.arm(token);
        }
    }

    /// Runs the end-of-turn work until it stops producing more.
    fn settle(&mut self, now: Instant) {
        loop {
            let mut sink = Deliver {
                conns: &mut self.conns,
                pending: &mut self.pending,
                overflowed: &mut self.overflowed,
            };
            self.chat.flush_presence(&mut sink);
            for token in std::mem::take(&mut self.overflowed) {
                self.drop_slow(token, now);
            }
            for token in std::mem::take(&mut self.pending) {
                self.write(token);
            }
            if self.doomed.is_empty() && self.overflowed.is_empty() && self.pending.is_empty() {
                return;
            }
            for token in std::mem::take(&mut self.doomed) {
                self.remove(token);
            }
        }
    }

    fn write(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        conn.pending = false;
        let peer = &mut conn.peer;
        match peer.out.drain(&mut peer.sock) {
            Ok(Drain::Blocked) => {}
            Ok(Drain::Empty) => match conn.phase {
                Phase::Respond { eof: true } => self.doom(token),
                Phase::Respond { eof: false } => {
                    // Response out: half-close, then wait for the peer's EOF or the grace.
                    let _ = conn.peer.sock.shutdown(std::net::Shutdown::Write);
                }
                _ if conn.finishing => self.doom(token),
                _ => {}
            },
            Err(e) => {
                debug!("{}: write: {e}", conn.addr);
                self.leave(token, Reason::ClientClose);
                self.doom(token);
            }
        }
    }

    fn remove(&mut self, token: usize) {
        if !self.conns.contains(token) {
            return;
        }
        self.leave(token, Reason::ClientClose);
        let mut conn = self.conns.remove(token);
        let _ = self.poll.registry().deregister(&mut conn.peer.sock);
        if self.accept_paused_until.is_some() {
            // A descriptor just came free: the connections waiting in the backlog can have it.
            self.accept_paused_until = Some(Instant::now());
        }
    }
}
