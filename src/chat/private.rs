//! Private messages, chat's side: the ping that asks a recipient to acknowledge its lines
//! and the pong that does (`ping_payload`, `ack`), making room in the backlog budget
//! (`make_room`), and telling a sender what never got there (`undelivered`). The backlogs
//! themselves and their bounds are `backlog.rs`.

use super::backlog::{ACK_DELAY, ACK_SPACING, Kept, Private};
use super::resume::Holds;
use super::users::Users;
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
        self.deliver_to(&key(to), from, None, line, now, sink)
    }

    /// Numbers `line` (the sender's copy of a private message from `from`, `cid` its id for
    /// the message) for local user `k`, connected or away, and delivers it and keeps it
    /// until acknowledged. No room to keep it (the recipient's own bounds, or the budget with
    /// nothing left to take from larger backlogs): refused, `recipient_busy` if connected
    /// (it is not acknowledging), `undelivered` if away.
    pub(super) fn deliver_to(
        &mut self,
        k: &str,
        from: &str,
        cid: Option<&str>,
        line: &Bytes,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Result<(), ErrorCode> {
        let cid: Option<Rc<str>> = cid.map(|c| Rc::from(&c[..c.len().min(backlog::CID_MAX)]));
        let (owner, pseq, token) = if let Some((t, u)) = self.users.get_mut(k) {
            let p = u.private.get_or_insert_with(Box::default);
            (Rc::clone(&u.id), p.pseq + 1, Some(t as usize))
        } else if let Some(a) = self.holds.get_mut(k, now) {
            (Rc::clone(&a.id), a.private.pseq + 1, None)
        } else {
            return Err(ErrorCode::UnknownRecipient);
        };
        let refusal = if token.is_some() { ErrorCode::RecipientBusy } else { ErrorCode::Undelivered };
        let copy = protocol::with_pseq(line, pseq);
        let kept = Kept { pseq, line: copy.clone(), from: Rc::from(from), cid };
        let cost = kept.cost();
        let room = private_of(&mut self.users, &mut self.holds, k, now).is_some_and(|p| {
            self.backlog.make_room_in(&owner, p, cost);
            p.has_room(cost)
        });
        if !room || !self.make_room(cost, sink) {
            return Err(refusal);
        }
        if let Some(t) = token {
            // The recipient is judged by what it does, not by what others send it: if it
            // cannot take this now, the sender hears so and nobody is disconnected.
            if !sink.offer(t, &copy) {
                return Err(ErrorCode::RecipientBusy);
            }
        }
        let Some(p) = private_of(&mut self.users, &mut self.holds, k, now) else {
            return Err(refusal);
        };
        p.number();
        let from = Rc::clone(&kept.from);
        self.backlog.keep(&owner, p, kept);
        if let Some(t) = token {
            if !p.asked {
                let due = if p.urgent() { now } else { now + backlog::ACK_DELAY };
                self.todo.want_ack.push((t, due.max(p.asked_at.map_or(now, |a| a + backlog::ACK_SPACING))));
            }
        } else if self.nodes != Nodes::Alone {
            // In Redis too, for a resume on another node (see `moved`).
            self.todo.kept_away.push(super::moved::KeptAway {
                to: owner,
                pseq,
                copy,
                from,
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
        let k = key(to);
        // The recipient's id as its owner typed it, and its connection if it has one.
        let here = self.users.get(&k).map(|(t, u)| (Rc::clone(&u.id), Some(t as usize)));
        let found = here.or_else(|| self.holds.get_mut(&k, now).map(|a| (Rc::clone(&a.id), None)));
        let Some((rcpt, rcpt_token)) = found else {
            return match self.remote.get(k.as_str()) {
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
        // The sender's copy; the recipient's carries its `pseq`.
        let line = protocol::private_message(from, &rcpt, text, ts);
        if let Err(code) = self.deliver_to(&k, from, cid, &line, now, sink) {
            return refuse(sink, token, protocol::error(code, Some(&rcpt)), code);
        }
        if rcpt_token != Some(token) {
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
            let p = match self.users.get_mut(&largest) {
                Some((_, u)) => u.private.as_deref_mut(),
                None => self.holds.get_any(&key(&largest)).map(|a| &mut a.private),
            };
            let Some(p) = p else {
                debug_assert!(false, "a charged backlog without its user: {largest}");
                return false;
            };
            let Some((k, acked)) = self.backlog.pop(&largest, p) else { return false };
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
        let Some((id, p)) = self.users.by_token_mut(token as u32) else { return };
        p.asked = false;
        let id = Rc::clone(id);
        self.backlog.acked(&id, p, n);
        if p.unacked() > 0 {
            let due = if p.urgent() { now + ACK_SPACING } else { now + ACK_DELAY };
            self.todo.want_ack.push((token, due));
        }
    }
}

/// The private backlog of local user `k`, connected or in its grace.
pub(super) fn private_of<'a>(
    users: &'a mut Users,
    holds: &'a mut Holds,
    k: &str,
    now: Instant,
) -> Option<&'a mut Private> {
    match users.get_mut(k) {
        Some((_, u)) => u.private.as_deref_mut(),
        None => holds.get_mut(k, now).map(|a| &mut a.private),
    }
}
