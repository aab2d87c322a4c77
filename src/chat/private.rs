//! Private messages, chat's side: the ping that asks a recipient to acknowledge its lines
//! and the pong that does (`ping_payload`, `ack`), making room in the backlog budget
//! (`make_room`), and telling a sender what never got there (`undelivered`). The backlogs
//! themselves and their bounds are `backlog.rs`.

use super::backlog::{ACK_DELAY, ACK_SPACING, Kept, Private};
use super::resume::Holds;
use super::users::{UserId, Users};
use super::{Chat, Nodes, Outcome, Sink, backlog, key, refuse};
use crate::protocol::{self, ErrorCode};
use bytes::Bytes;
use std::rc::Rc;
use std::time::Instant;

impl Chat {
    /// A private line (the sender's copy) from another node for local user `to`:
    /// `unknown_recipient` if `to` is not here, `recipient_busy` if its queue cannot take it
    /// now, `undelivered` if it is away and no more can be kept for it.
    pub fn deliver_private(
        &mut self,
        from: &str,
        to: &str,
        line: &Bytes,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Result<(), ErrorCode> {
        let k = key(to);
        let at = match self.users.get(to) {
            Some((t, _)) => At::Here(t as usize),
            None => At::Held(&k),
        };
        self.deliver_to(at, from, None, line, now, sink)
    }

    /// Numbers `line` (the sender's copy of a private message from `from`, `cid` its id for
    /// the message) for local user `at`, connected or away, and delivers it and keeps it
    /// until acknowledged. No room to keep it (the recipient's own bounds, or more than the
    /// whole budget): refused, `recipient_busy` if connected (it is not acknowledging),
    /// `undelivered` if away. A connected recipient is offered the line before the budget
    /// makes room for it (larger backlogs giving lines up), so a refused offer costs nobody
    /// else a line.
    pub(super) fn deliver_to(
        &mut self,
        at: At<'_>,
        from: &str,
        cid: Option<&str>,
        line: &Bytes,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Result<(), ErrorCode> {
        let (token, refusal) = match at {
            At::Here(t) => (Some(t), ErrorCode::RecipientBusy),
            At::Held(_) => (None, ErrorCode::Undelivered),
        };
        let Some((owner, p)) = recipient(&mut self.users, &mut self.holds, at, now) else {
            return Err(ErrorCode::UnknownRecipient);
        };
        let owner = UserId::new(owner);
        let pseq = p.pseq + 1;
        let copy = protocol::with_pseq(line, pseq);
        let cid: Option<Rc<str>> = cid.map(|c| Rc::from(&c[..c.len().min(backlog::CID_MAX)]));
        let kept = Kept { pseq, line: copy, from: UserId::new(from), cid };
        let cost = kept.cost();
        self.backlog.make_room_in(p, cost);
        if !p.has_room(cost) || !self.backlog.could_fit(cost) {
            return Err(refusal);
        }
        // The recipient is judged by what it does, not by what others send it: if it cannot
        // take this now, the sender hears so and nobody is disconnected.
        if let Some(t) = token
            && !sink.offer(t, &kept.line)
        {
            return Err(ErrorCode::RecipientBusy);
        }
        let made = self.make_room(cost, sink);
        debug_assert!(made, "a cost within the budget always finds room");
        // Looked up again: making room may have taken lines from this very backlog.
        let Some((_, p)) = recipient(&mut self.users, &mut self.holds, at, now) else { return Err(refusal) };
        p.number();
        let copy = kept.line.clone();
        self.backlog.keep(&owner, p, kept);
        if let Some(t) = token {
            if !p.asked {
                let due = if p.urgent() { now } else { now + backlog::ACK_DELAY };
                self.todo.want_ack.push((t, due.max(p.asked_at.map_or(now, |a| a + backlog::ACK_SPACING))));
            }
        } else if self.nodes != Nodes::Alone {
            // In Redis too, for a resume on another node (see `moved`).
            self.todo.kept_away.push(super::moved::KeptAway {
                to: Rc::from(&*owner),
                pseq,
                copy,
                from: Rc::from(from),
                line: line.clone(),
            });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn private(
        &mut self,
        token: usize,
        from: &str,
        to: &str,
        text: &str,
        cid: Option<&str>,
        ts: u64,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Outcome {
        // The recipient's id as its owner typed it, and where it is: the user index folds
        // case and confusables itself, so only a held or remote recipient needs the key.
        let k;
        let found = match self.users.get(to) {
            Some((t, u)) => Some((u.id.clone(), At::Here(t as usize))),
            None => {
                k = key(to);
                self.holds.get_mut(&k, now).map(|a| (UserId::new(&a.id), At::Held(&k)))
            }
        };
        let Some((rcpt, at)) = found else {
            return match self.remote.get(key(to).as_str()) {
                _ if self.nodes == Nodes::Down => {
                    let code = ErrorCode::ClusterUnavailable;
                    refuse(sink, token, protocol::error(code, Some(to)), code)
                }
                Some(r) => Outcome::Remote {
                    node: Rc::clone(&r.node),
                    to: Rc::clone(&r.id),
                    line: protocol::private_message(from, &r.id, text, ts),
                    cid: None,
                },
                None => {
                    let code = ErrorCode::UnknownRecipient;
                    refuse(sink, token, protocol::error(code, Some(to)), code)
                }
            };
        };
        let to_self = matches!(at, At::Here(t) if t == token);
        // The sender's copy; the recipient's carries its `pseq`.
        let line = protocol::private_message(from, &rcpt, text, ts);
        if let Err(code) = self.deliver_to(at, from, cid, &line, now, sink) {
            return refuse(sink, token, protocol::error(code, Some(&rcpt)), code);
        }
        if !to_self {
            sink.push(token, &line);
        }
        Outcome::Private
    }

    /// Tells the sender of `kept` (if it is connected here) that it never reached `to`.
    pub(super) fn undelivered(&self, kept: &Kept, to: &str, sink: &mut impl Sink) {
        if let Some((from, _)) = self.users.get(&kept.from) {
            let cid = kept.cid.as_deref();
            sink.push(from as usize, &protocol::error_about(ErrorCode::Undelivered, Some(to), cid));
        }
    }

    /// Makes room for `cost` in the budget: the largest backlogs give their oldest lines,
    /// each reported to its sender (`owner`'s own, if it is the largest). False if there is
    /// nothing left to take.
    pub(super) fn make_room(&mut self, cost: usize, sink: &mut impl Sink) -> bool {
        while !self.backlog.fits(cost) {
            let Some(largest) = self.backlog.largest() else { return false };
            let p = match self.users.get(&largest) {
                Some((t, _)) => self.users.private_by_token(t),
                None => self.holds.get_any(&key(&largest)).map(|a| &mut a.private),
            };
            let Some(p) = p else {
                debug_assert!(false, "a charged backlog without its user: {largest}");
                return false;
            };
            let Some((k, acked)) = self.backlog.pop(p) else { return false };
            if !acked {
                self.counters.backlog_dropped += 1;
                self.undelivered(&k, &largest, sink);
            }
        }
        true
    }

    /// The payload of the ping about to go to connection `token`: its user's latest `pseq`
    /// (`p:N`), if it has lines to acknowledge; the pong will echo it (see `ack`).
    pub fn ping_payload(&mut self, token: usize, now: Instant) -> Vec<u8> {
        let Some(p) = self.users.private_by_token(token as u32) else { return Vec::new() };
        if p.unacked() == 0 {
            return Vec::new();
        }
        p.asked = true;
        p.asked_at = Some(now);
        format!("p:{}", p.pseq).into_bytes()
    }

    /// Whether connection `token` owes us a pong to a ping that carried its pseq.
    pub fn asked(&mut self, token: usize) -> bool {
        self.users.private_by_token(token as u32).is_some_and(|p| p.asked)
    }

    /// A pong from connection `token` echoing `payload`: if it is one of our `p:N`, the
    /// client's socket read every line sent before that ping, so its lines up to `N` are
    /// acknowledged (kept only as the short tail a resume may still want, see `backlog`). If
    /// more are waiting, another such ping is wanted.
    pub fn ack(&mut self, token: usize, payload: &[u8], now: Instant) {
        let Some(n) = payload.strip_prefix(b"p:") else { return };
        let Some(n) = std::str::from_utf8(n).ok().and_then(|n| n.parse::<u64>().ok()) else { return };
        let Some(p) = self.users.private_by_token(token as u32) else { return };
        p.asked = false;
        self.backlog.acked(p, n);
        if p.unacked() > 0 {
            let due = if p.urgent() { now + ACK_SPACING } else { now + ACK_DELAY };
            self.todo.want_ack.push((token, due));
        }
    }
}

/// Where a private message's recipient is: connected here (its connection) or held in its
/// grace (its key).
#[derive(Clone, Copy)]
pub(super) enum At<'k> {
    Here(usize),
    Held(&'k str),
}

/// The id and private backlog of the recipient at `at` (a connected user's backlog made if it
/// has none yet).
fn recipient<'a>(
    users: &'a mut Users,
    holds: &'a mut Holds,
    at: At<'_>,
    now: Instant,
) -> Option<(&'a str, &'a mut Private)> {
    match at {
        At::Here(t) => users.with_private(t as u32),
        At::Held(k) => holds.get_mut(k, now).map(|a| (&*a.id, &mut a.private)),
    }
}
