//! The WebSocket half of the loop: read frames (`ws::Reader`, through the loop's shared read
//! buffer), hand chat text to `Chat`, echo on `/echo`, and run the close handshake in both
//! directions.

use super::{CLOSE_GRACE, Server, would_block};
use crate::chat::broker::{Alone, Broker};
use crate::chat::users::UserId;
use crate::chat::{Outcome, Sink};
use crate::conn::{Flag, Phase};
use crate::metrics::Reason;
use crate::protocol::ErrorCode;
use crate::timers::Stamp;
use crate::ws::{self, Event};
use log::{debug, warn};
use std::io::Read;
use std::ops::ControlFlow;
use std::time::Instant;
use tungstenite::protocol::frame::coding::CloseCode;

/// Refusals that mark an attack (rate limits, busy recipients): logged at warn at most once a
/// second, with how many the line stands for, so an operator sees a flood without a line per
/// refused message.
#[derive(Default)]
pub(super) struct Refusals {
    since: Option<Instant>,
    counted: u32,
}

impl Refusals {
    /// Counts one; returns how many a line now due stands for, if one is due.
    pub(super) fn note(&mut self, now: Instant) -> Option<u32> {
        self.counted += 1;
        if self.since.is_some_and(|t| now < t + std::time::Duration::from_secs(1)) {
            return None;
        }
        self.since = Some(now);
        Some(std::mem::take(&mut self.counted))
    }
}

/// Messages read from one connection per turn before others get their turn (besides the
/// byte budget, `conn::READ_BUDGET`).
const MESSAGE_BUDGET: usize = 256;
/// Pings and pongs a peer may send per second, in bursts of twice that. A browser sends none;
/// a command-line client pings every few seconds. A flood past it is closed (1008).
pub(super) const CONTROL_RATE: u32 = 16;
/// Frame overhead a message may carry beyond its payload, besides the payload itself again:
/// a message that takes more than `2 × --max-message + FRAME_SLACK` wire bytes (endless empty
/// fragments, say) is closed with 1009. Normal fragmentation is far below it.
const FRAME_SLACK: u32 = 4096;
/// The loop's read buffer, shared by every connection: one read takes a whole turn's budget.
pub(super) const READ_BUFFER: usize = crate::conn::READ_BUDGET as usize;

impl Server {
    /// Reads and acts on what a session sent, within its share of the turn.
    pub(super) fn read_ws(&mut self, token: usize, now: Instant, ts: u64) {
        let Some(conn) = self.net.conns.get_mut(token) else { return };
        conn.peer.read_left = crate::conn::READ_BUDGET;
        conn.peer.clear(Flag::Starved);
        // The buffer leaves `self` for the call, so that messages borrowed from it can go to
        // `chat` (which needs `self`). Reads never nest; if one did, it would get a buffer of
        // its own.
        let mut buf = std::mem::take(&mut self.read_buf);
        if buf.is_empty() {
            buf = vec![0; READ_BUFFER].into_boxed_slice();
        }
        self.read_frames(token, now, ts, &mut buf);
        self.read_buf = buf;
    }

    fn read_frames(&mut self, token: usize, now: Instant, ts: u64, buf: &mut [u8]) {
        let max_wire = (self.cfg.max_message as u32).saturating_mul(2).saturating_add(FRAME_SLACK);
        let lim = ws::Limits { max_message: self.cfg.max_message, max_wire };
        let (mut pos, mut end) = (0, 0);
        let mut events = 0;
        loop {
            let Some(conn) = self.net.conns.get_mut(token) else { return };
            let Phase::Ws(s) = &mut conn.phase else { return };
            let claiming = conn.peer.is(Flag::Claiming);
            if claiming || events == MESSAGE_BUDGET {
                // Keep what is unread: for when Redis has answered (see `joined`), or for the
                // next turn, after everyone else.
                s.reader.keep_input(&buf[pos..end]);
                if !claiming {
                    self.net.stats.read_budget_spent += 1;
                    self.again.push(token);
                }
                return;
            }
            if pos == end {
                pos = 0;
                end = s.reader.take_input(buf);
                if end > 0 {
                    continue;
                }
                match conn.peer.read(buf) {
                    Ok(0) if conn.peer.is(Flag::PeerClosed) => return self.finish(token),
                    Ok(0) => {
                        // Gone without a close frame: lost, not left (the user is held).
                        self.leave(token, Reason::Lost);
                        return self.doom(token);
                    }
                    Ok(n) if conn.peer.is(Flag::PeerClosed) => {
                        debug!("{}: {n} bytes after its close, dropped", conn.addr);
                        continue;
                    }
                    Ok(n) => end = n,
                    Err(e) if would_block(&e) => {
                        let starved = conn.peer.is(Flag::Starved);
                        if !conn.peer.out.is_empty() {
                            // A sender whose own queue is empty need not be visited at the flush.
                            self.net.mark_pending(token);
                        }
                        if starved {
                            // Budget spent with input still waiting: next turn, after everyone else.
                            self.net.stats.read_budget_spent += 1;
                            self.again.push(token);
                        }
                        return;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        debug!("{}: read: {e}", conn.addr);
                        self.leave(token, Reason::Lost);
                        return self.doom(token);
                    }
                }
                continue;
            }
            let ev = match s.reader.next(&mut buf[..end], &mut pos, &lim) {
                Ok(Some(ev)) => ev,
                Ok(None) => continue,
                Err(ws::Error::Overhead) => {
                    return self.flooded(
                        token,
                        CloseCode::Size,
                        "message too big (counting its frames)",
                        now,
                    );
                }
                Err(e) => return self.ws_failed(token, e, now),
            };
            events += 1;
            conn.last_read = Stamp::of(now);
            // A pong we asked for (a ping carrying the user's pseq, one at a time) is not the
            // peer's to ration: only its own pings and unsolicited pongs count.
            let asked = matches!(&ev, Event::Pong(p) if p.starts_with(b"p:"))
                && conn.peer.is(Flag::Joined)
                && self.chat.asked(token);
            if matches!(ev, Event::Ping(_) | Event::Pong(_)) && !asked && !s.control.allow(CONTROL_RATE, now)
            {
                return self.flooded(token, CloseCode::Policy, "too many control frames", now);
            }
            if self.on_event(token, ev, now, ts).is_break() {
                return;
            }
        }
    }

    /// One decoded event of connection `token`'s session; `Break` when its reading is over
    /// (closed, failed, or handed on).
    fn on_event(&mut self, token: usize, ev: Event<'_>, now: Instant, ts: u64) -> ControlFlow<()> {
        let conn = &self.net.conns[token];
        let Phase::Ws(_) = conn.phase else { return ControlFlow::Break(()) };
        let echo = conn.peer.is(Flag::Echo);
        let user = if conn.peer.is(Flag::Joined) { self.chat.id_of(token).cloned() } else { None };
        match (ev, echo, user) {
            (Event::Text(text), true, _) => self.echo(token, ws::OP_TEXT, text.as_bytes()),
            (Event::Binary(data), true, _) => self.echo(token, ws::OP_BINARY, &data),
            (Event::Text(text), false, Some(user)) => self.on_text(token, user, &text, now, ts),
            // After a refused id, until the close completes: nothing to do.
            (Event::Text(_) | Event::Binary(_), false, None) => {}
            (Event::Binary(_), false, Some(_)) => {
                let why = "binary frames are not supported";
                self.close_ws(token, CloseCode::Unsupported, why, Some(Reason::ProtocolError), now);
                return ControlFlow::Break(());
            }
            (Event::Close(code, reason), ..) => {
                self.on_close(token, code, &reason, now);
                return ControlFlow::Break(());
            }
            (Event::Ping(payload), ..) => return self.on_ping(token, &payload, now),
            (Event::Pong(payload), _, Some(_)) => {
                // Echoing a ping that carried the user's latest pseq: it has read every
                // line before that ping (TCP is ordered), so they need not be kept.
                self.chat.ack(token, &payload, now);
            }
            (Event::Pong(_), ..) => {}
        }
        ControlFlow::Continue(())
    }

    /// A text message from joined user `user`: rate-limited, then handed to chat, and what
    /// chat made of it passed on (`outcome`).
    fn on_text(&mut self, token: usize, user: UserId, text: &str, now: Instant, ts: u64) {
        let conn = &mut self.net.conns[token];
        let Phase::Ws(s) = &mut conn.phase else { return };
        if conn.peer.is(Flag::Closing) {
            return;
        }
        if !s.bucket.allow(self.cfg.rate_limit, now) {
            let addr = conn.addr;
            // Decoded only to find its cid: a refusal names the message too.
            let mut line = crate::protocol::error(ErrorCode::RateLimited, None);
            if let Some((_, Some(cid))) = crate::protocol::decode(text) {
                line = crate::protocol::with_cid(&line, &cid);
            }
            self.net.push(token, &line);
            self.net.stats.error_sent(ErrorCode::RateLimited);
            if let Some(n) = self.rate_refusals.note(now) {
                warn!("rate limited id={user} peer={addr} ({n} refused since the last such line)");
            }
            return;
        }
        if self.cfg.auth.is_some()
            && let Some((new, cid)) = crate::protocol::decode_token(text)
        {
            return self.refresh(token, &user, &new, cid.as_deref(), now, ts);
        }
        // What its token allows (`--auth token`; None in open mode: every room).
        let may = self.may_enter(token);
        // The broker numbers room messages: Redis in a cluster, the room's history alone.
        let broker: &mut dyn Broker = match &mut self.cluster {
            Some(c) => c,
            None => &mut Alone,
        };
        let outcome = self.chat.handle_as(token, &user, may.as_deref(), text, ts, now, &mut self.net, broker);
        self.outcome(token, &user, outcome, now);
    }

    /// What chat made of a client's message, for the loop: counters, and the cluster's part.
    fn outcome(&mut self, token: usize, user: &str, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Room { .. } | Outcome::Pending { .. } => self.net.stats.room_received += 1,
            Outcome::Unconfirmed { room, cid } => {
                // Numbered here, so other nodes cannot have it (Redis is away).
                self.net.stats.room_received += 1;
                self.room_error(token, ErrorCode::ClusterUnavailable, &room, cid.as_deref());
            }
            Outcome::Joined { room, first_local } => {
                self.heap_churned(now);
                self.cluster_joined(user, &room, first_local)
            }
            Outcome::Left { room, last_local } => self.cluster_room_left(user, &room, last_local),
            Outcome::Answered => {}
            Outcome::Private => self.net.stats.private_received += 1,
            Outcome::Remote { node, to, line, cid } => {
                self.net.stats.private_received += 1;
                self.cluster_private(token, user, &node, &to, &line, cid);
            }
            Outcome::Refused(code) => {
                self.net.stats.error_sent(code);
                debug!("{user}: refused message: {}", code.as_str());
                if code == ErrorCode::RecipientBusy
                    && let Some(n) = self.busy_refusals.note(now)
                {
                    warn!(
                        "recipient busy: a private message from id={user} refused ({n} since the last such line)"
                    );
                }
            }
        }
    }

    /// The client's close: answered (unless it answers ours) with its own code as tungstenite
    /// did, or 1002 for a code a client may not send; the socket goes once the outbox is
    /// written, or at the grace deadline.
    fn on_close(&mut self, token: usize, code: Option<u16>, reason: &[u8], now: Instant) {
        let conn = &mut self.net.conns[token];
        let Phase::Ws(_) = conn.phase else { return };
        conn.peer.set(Flag::PeerClosed);
        if !conn.peer.is(Flag::Closing) {
            conn.peer.set(Flag::Closing);
            let reply = match code {
                None => ws::frame(ws::OP_CLOSE, &[]),
                Some(c) if ws::close_code_allowed(c) => ws::close_frame(c, reason),
                Some(_) => ws::close_frame(1002, b"Protocol violation"),
            };
            conn.peer.send(reply);
        }
        conn.give_up.get_or_insert(Stamp::of(now).after(CLOSE_GRACE));
        self.arm(token, now);
        self.finish(token);
    }

    /// A ping: answered with a pong, except once we have sent our close. Past a run of pongs
    /// not yet begun, a new one replaces the latest (`Outbox::push_pong`).
    fn on_ping(&mut self, token: usize, payload: &[u8], now: Instant) -> ControlFlow<()> {
        let conn = &mut self.net.conns[token];
        if !conn.peer.is(Flag::Closing) {
            conn.peer.send_pong(ws::frame(ws::OP_PONG, payload));
            if conn.peer.is(Flag::Overflow) {
                // Our pongs went past the hard cap: the peer is not reading.
                self.drop_slow(token, now);
                return ControlFlow::Break(());
            }
            self.net.mark_pending(token);
        }
        ControlFlow::Continue(())
    }

    /// Sends an `/echo` message back as it came.
    fn echo(&mut self, token: usize, op: u8, payload: &[u8]) {
        let conn = &mut self.net.conns[token];
        if conn.peer.is(Flag::Closing) {
            return;
        }
        conn.peer.send(ws::frame(op, payload));
        if conn.peer.is(Flag::Overflow) {
            // Our echoes went past the hard cap: the peer is not reading.
            return self.drop_slow(token, Instant::now());
        }
        self.net.mark_pending(token);
    }

    /// Closes a peer that floods us with frames: after this nothing more is parsed (as after
    /// a protocol error), because it may have stopped mid-frame.
    fn flooded(&mut self, token: usize, code: CloseCode, why: &str, now: Instant) {
        let c = &self.net.conns[token];
        let id = self.chat.id_of(token).filter(|_| c.joined()).map_or("-", |u| u);
        warn!("flood id={id} peer={}: {why}", c.addr);
        self.close_ws(token, code, why, Some(Reason::Flood), now);
        self.net.conns[token].phase = Phase::Respond { eof: false };
    }

    /// Maps a reading error to the close the RFC asks for.
    fn ws_failed(&mut self, token: usize, e: ws::Error, now: Instant) {
        let (code, why) = match e {
            ws::Error::TooBig | ws::Error::Overhead => (CloseCode::Size, "message too big"),
            ws::Error::Utf8 => (CloseCode::Invalid, "invalid UTF-8"),
            ws::Error::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        };
        warn!("protocol error peer={}: {e}", self.net.conns[token].addr);
        self.close_ws(token, code, why, Some(Reason::ProtocolError), now);
        // The frame stream can no longer be trusted (we may be mid-frame): stop parsing, send
        // the close, then discard input until the peer's EOF or the grace, as for an HTTP
        // response.
        self.net.conns[token].phase = Phase::Respond { eof: false };
    }

    /// Starts our side of the close handshake. `reason` ends the chat session, if any.
    pub(super) fn close_ws(
        &mut self,
        token: usize,
        code: CloseCode,
        why: &str,
        reason: Option<Reason>,
        now: Instant,
    ) {
        if let Some(r) = reason {
            self.leave(token, r);
        }
        let conn = &mut self.net.conns[token];
        if conn.peer.is(Flag::Closing) {
            return;
        }
        let Phase::Ws(_) = &conn.phase else { return };
        if code == CloseCode::Policy {
            conn.peer.out.discard_unsent();
        }
        conn.peer.set(Flag::Closing);
        conn.peer.send(ws::close_frame(code.into(), why.as_bytes()));
        conn.give_up = Some(Stamp::of(now).after(CLOSE_GRACE));
        self.net.mark_pending(token);
        self.arm(token, now);
    }

    /// Closes a client whose queue would pass the cap: 1008, after what was already begun.
    pub(super) fn drop_slow(&mut self, token: usize, now: Instant) {
        let Some(c) = self.net.conns.get(token) else { return };
        if c.peer.is(Flag::Closing) {
            return;
        }
        let id = self.chat.id_of(token).filter(|_| c.joined()).map_or("-", |u| u);
        warn!("slow consumer id={id} peer={}: queue past {} bytes", c.addr, self.cfg.queue_cap);
        self.close_ws(token, CloseCode::Policy, "slow consumer", Some(Reason::SlowConsumer), now);
    }

    /// Removes the connection once its outbox is empty.
    pub(super) fn finish(&mut self, token: usize) {
        self.leave(token, Reason::ClientClose);
        let conn = &mut self.net.conns[token];
        conn.peer.set(Flag::Finishing);
        if conn.peer.out.is_empty() {
            self.doom(token);
        } else {
            self.net.mark_pending(token);
        }
    }
}
