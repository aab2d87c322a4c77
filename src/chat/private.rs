//! Private messages, chat's side: the ping that asks a recipient to acknowledge its lines
//! and the pong that does (`ping_payload`, `ack`), making room in the backlog budget
//! (`make_room`), and telling a sender what never got there (`undelivered`). The backlogs
//! themselves and their bounds are `backlog.rs`.

use super::backlog::{ACK_DELAY, ACK_SPACING, Kept, Private};
use super::resume::Holds;
use super::users::Users;
use super::{Chat, Sink, key};
use crate::protocol::{self, ErrorCode};
use std::rc::Rc;
use std::time::Instant;

impl Chat {
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
            self.want_ack.push((token, due));
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
