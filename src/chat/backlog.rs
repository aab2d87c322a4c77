//! Private backlogs: the private messages kept for each recipient until it acknowledges them,
//! and the one byte budget (`--backlog-bytes`) that every backlog is charged to.
//!
//! A private message is kept from the moment it is numbered (`pseq`) until the recipient
//! acknowledges it. A pong to a ping that carried the recipient's latest `pseq` does (TCP is
//! ordered: the pong was read after everything sent before its ping), so a reader that keeps
//! up has nothing unacknowledged; only a connection that has gone quiet (its network dropped,
//! or it stopped reading) fills up, which is what a resume is for. A pong proves only that
//! the client's *socket* had the lines, though: a page that gave up on a socket it thinks
//! dead (public/connection.js `abandon`) ignores what it still delivers while the browser goes on
//! answering pings. So acknowledged lines stay as a short tail (`ACKED_MAX`, `ACKED_BYTES`),
//! still resent on a resume after the client's `pseq`, which alone is the application's own
//! word: lines up to it go for good. An unacknowledged line is never silently thrown away: it
//! is acknowledged, resent on a resume, or reported to its sender (`undelivered`, with its
//! `cid`) when it falls out; only the acknowledged tail is trimmed without a word.
//!
//! Each backlog holds at most `KEPT_MAX` lines and `KEPT_BYTES`; all of them together at most
//! the budget, charged at real cost (`LINE_COST`). When the budget is full, the largest
//! backlog gives its oldest line (`Budget::largest`): the one holding the most is the one not
//! reading, so an attacker's holds pay before anyone else's messages do.
//!
//! This file is the data and its bounds; chat's side of it (the ping payload, the pong that
//! acknowledges, making room, telling a sender) is in `private.rs`, so that this file needs
//! neither users nor holds (they hold a `Private` each).

use crate::chat::user_id::UserId;
use bytes::Bytes;
use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Lines one recipient keeps, connected or in its grace.
pub const KEPT_MAX: usize = 64;
/// The same in bytes (charged at real cost).
pub const KEPT_BYTES: usize = 256 * 1024;
/// What a kept line costs beyond its line, `from` and `cid` bytes: its 72-byte `Kept` in the
/// deque (whose doubling leaves it up to half empty), the line's `Bytes` shared header (a
/// block of its own once the line is shared with the queue), the allocator's header and
/// rounding of the line, the `from` and `cid` blocks, and the budget's index entry. Measured
/// (`measure_backlog_costs` in tests/it/bound_backlog.rs, 2026-12-06, glibc, the test build):
/// 128,000 lines of 10 characters (a 90-byte copy, 6-byte `from`, 2-byte `cid`) kept in 2,000
/// holds grew RSS by 303 B a line, about 204 B beyond the line's own bytes; charged 312 B
/// with this constant, so the budget errs on the side of the machine.
pub const LINE_COST: usize = 208;
/// The acknowledged tail each backlog keeps for a resume (see the module's doc), within the
/// bounds above: what the page's abandoned socket may have swallowed.
pub const ACKED_MAX: usize = 16;
pub const ACKED_BYTES: usize = 16 * 1024;
/// The longest `cid` kept with a line (the protocol refuses longer ones anyway: 64).
pub const CID_MAX: usize = 64;
/// Below this a backlog asks for an acknowledgement only lazily (`ACK_DELAY`); past it, at
/// once: the recipient is filling up faster than it acknowledges.
pub const URGENT_LINES: usize = KEPT_MAX / 2;
pub const URGENT_BYTES: usize = KEPT_BYTES / 2;

/// How soon after a line the recipient is asked to acknowledge it (a ping carrying its
/// `pseq`) while its backlog is small: lazily, so a chatty pair costs about one ping a second.
pub const ACK_DELAY: Duration = Duration::from_secs(1);
/// The least time between two such pings to one connection once its backlog is past half
/// (one at a time in any case): a reader that keeps up then acknowledges up to 64 lines every
/// 20 ms, far more than the rate limit lets its senders send. The pongs it answers are not
/// counted against its control-frame rate (`session.rs`): we asked for them.
pub const ACK_SPACING: Duration = Duration::from_millis(20);

/// A private message kept for its recipient.
pub struct Kept {
    /// Its number among the recipient's private messages.
    pub pseq: u64,
    /// The recipient's copy (carrying `pseq`).
    pub line: Bytes,
    /// The sender's id, to tell it if the message is never delivered ("" if unknown: a
    /// backlog taken over from another node). Inline up to 15 bytes, like the user slot's
    /// (the slot has no `Rc` to share).
    pub from: UserId,
    /// The sender's id for the message, so that such a report names it.
    pub cid: Option<Rc<str>>,
}

impl Kept {
    /// What the budget is charged for it.
    pub fn cost(&self) -> usize {
        self.line.len() + self.from.len() + self.cid.as_ref().map_or(0, |c| c.len()) + LINE_COST
    }
}

/// One recipient's private numbering and its kept lines, oldest first: the acknowledged tail,
/// then the lines not acknowledged.
#[derive(Default)]
pub struct Private {
    /// The last pseq given out.
    pub pseq: u64,
    pub kept: VecDeque<Kept>,
    /// Its owner's id as typed, as the budget files it (by address: see `Owner`); made with
    /// its first kept line, and it moves with the backlog between user and hold (a user's id
    /// is inline in its slot, with no `Rc` of its own to share).
    owner: Option<Rc<str>>,
    /// What `kept` is charged (at most `KEPT_BYTES`).
    bytes: u32,
    /// How many of the first lines of `kept` were acknowledged by a pong, and their charge.
    acked: u32,
    acked_bytes: u32,
    /// A ping carrying `pseq` is out and its pong has not come back (at most one at a time).
    pub asked: bool,
    /// When the last such ping went (see `ACK_SPACING`).
    pub asked_at: Option<Instant>,
}

impl Private {
    /// Numbers the next private message to this recipient.
    pub fn number(&mut self) -> u64 {
        self.pseq += 1;
        self.pseq
    }

    pub fn bytes(&self) -> usize {
        self.bytes as usize
    }

    /// The id its budget entry is filed under, once it has kept a line.
    pub fn owner(&self) -> Option<&Rc<str>> {
        self.owner.as_ref()
    }

    /// Whether a line of `cost` fits this backlog's own bounds, once its acknowledged tail
    /// has made what room it can (`Budget::make_room_in`).
    pub fn has_room(&self, cost: usize) -> bool {
        self.kept.len() < KEPT_MAX && self.bytes as usize + cost <= KEPT_BYTES
    }

    /// Lines not acknowledged.
    pub fn unacked(&self) -> usize {
        self.kept.len() - self.acked as usize
    }

    /// The unacknowledged lines, oldest first.
    pub fn unacked_lines(&self) -> impl Iterator<Item = &Kept> {
        self.kept.iter().skip(self.acked as usize)
    }

    /// Whether it fills faster than it is acknowledged (see `URGENT_LINES`).
    pub fn urgent(&self) -> bool {
        self.unacked() > URGENT_LINES || (self.bytes - self.acked_bytes) as usize > URGENT_BYTES
    }
}

/// The global budget, and every non-empty backlog by size (for `largest`).
pub struct Budget {
    max: usize,
    used: usize,
    lines: usize,
    /// (bytes charged, owner's id as typed: the `Rc` shared with its user or hold).
    by_size: BTreeSet<(usize, Owner)>,
}

/// A backlog's owner in `Budget::by_size`, told apart from others of the same size by its
/// `Rc`'s address rather than by comparing ids: every line kept or given up moves an entry,
/// and equal sizes are the rule when one sender's lines go to many.
#[derive(Clone)]
struct Owner(Rc<str>);

impl Owner {
    fn addr(&self) -> usize {
        Rc::as_ptr(&self.0) as *const u8 as usize
    }
}

impl PartialEq for Owner {
    fn eq(&self, other: &Owner) -> bool {
        self.addr() == other.addr()
    }
}

impl Eq for Owner {}

impl PartialOrd for Owner {
    fn partial_cmp(&self, other: &Owner) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Owner {
    fn cmp(&self, other: &Owner) -> std::cmp::Ordering {
        self.addr().cmp(&other.addr())
    }
}

impl Budget {
    pub fn new(max: usize) -> Self {
        Budget { max, used: 0, lines: 0, by_size: BTreeSet::new() }
    }

    /// Lines and bytes charged now (for `/metrics`).
    pub fn used(&self) -> (usize, usize) {
        (self.lines, self.used)
    }

    /// Whether a line of `cost` can be kept at all: then `Chat::make_room` always finds
    /// room for it, taking lines from the largest backlogs.
    pub fn could_fit(&self, cost: usize) -> bool {
        cost <= self.max
    }

    /// Whether `cost` more fits.
    pub fn fits(&self, cost: usize) -> bool {
        self.used + cost <= self.max
    }

    /// The owner of the largest backlog.
    pub fn largest(&self) -> Option<Rc<str>> {
        self.by_size.last().map(|(_, o)| Rc::clone(&o.0))
    }

    fn resize(&mut self, p: &Private, old: u32, new: u32) {
        if old == new {
            return;
        }
        let Some(owner) = &p.owner else {
            debug_assert!(false, "a charged backlog without its owner");
            return;
        };
        let owner = Owner(Rc::clone(owner));
        let (old, new) = (old as usize, new as usize);
        if old > 0 {
            // By address: the owner must be the very `Rc` it was filed under (the backlog's
            // own, which moves with it between user and hold).
            let filed = self.by_size.remove(&(old, owner.clone()));
            debug_assert!(filed, "a backlog filed under another Rc: {}", owner.0);
        }
        if new > 0 {
            self.by_size.insert((new, owner));
        }
        self.used = self.used + new - old;
    }

    /// Keeps `k` in `owner`'s backlog `p`; the caller has checked `has_room` and `fits`.
    pub fn keep(&mut self, owner: &str, p: &mut Private, k: Kept) {
        p.owner.get_or_insert_with(|| Rc::from(owner));
        let old = p.bytes;
        p.bytes += k.cost() as u32;
        p.kept.push_back(k);
        self.lines += 1;
        self.resize(p, old, p.bytes);
    }

    /// Takes out `p`'s oldest line, and whether it had been acknowledged (then nobody need
    /// hear of it).
    pub fn pop(&mut self, p: &mut Private) -> Option<(Kept, bool)> {
        let k = p.kept.pop_front()?;
        let old = p.bytes;
        p.bytes -= k.cost() as u32;
        let acked = p.acked > 0;
        if acked {
            p.acked -= 1;
            p.acked_bytes -= k.cost() as u32;
        }
        self.lines -= 1;
        self.resize(p, old, p.bytes);
        Some((k, acked))
    }

    /// Makes what room for `cost` the acknowledged tail of `p` can: its oldest lines go,
    /// silently, while the backlog's own bounds would refuse the line.
    pub fn make_room_in(&mut self, p: &mut Private, cost: usize) {
        while p.acked > 0 && !p.has_room(cost) {
            self.pop(p);
        }
    }

    /// The client's socket read every line up to `pseq` (a pong): they join the acknowledged
    /// tail, trimmed to its bounds.
    pub fn acked(&mut self, p: &mut Private, pseq: u64) {
        while let Some(k) = p.kept.get(p.acked as usize).filter(|k| k.pseq <= pseq) {
            p.acked_bytes += k.cost() as u32;
            p.acked += 1;
        }
        while p.acked as usize > ACKED_MAX || p.acked_bytes as usize > ACKED_BYTES {
            self.pop(p);
        }
        self.shrink(p);
    }

    /// The client itself has every line up to `pseq` (a resume says so): they go for good.
    pub fn ack(&mut self, p: &mut Private, pseq: u64) {
        while p.kept.front().is_some_and(|k| k.pseq <= pseq) {
            self.pop(p);
        }
        // What is left is resent: unacknowledged again until a pong says otherwise.
        p.acked = 0;
        p.acked_bytes = 0;
        self.shrink(p);
    }

    fn shrink(&mut self, p: &mut Private) {
        if p.kept.capacity() > 2 * KEPT_MAX.min(p.kept.len().max(4)) {
            // A burst's deque goes back: a backlog is usually short.
            p.kept.shrink_to_fit();
        }
    }

    /// Takes out every line of `p` (it ends: its user left, its grace ended, it moved).
    pub fn release(&mut self, p: &mut Private) -> VecDeque<Kept> {
        let kept = std::mem::take(&mut p.kept);
        self.lines -= kept.len();
        self.resize(p, p.bytes, 0);
        p.bytes = 0;
        p.acked = 0;
        p.acked_bytes = 0;
        kept
    }

    /// Takes out every line of `p` and hands back those not acknowledged (to report).
    pub fn release_unacked(&mut self, p: &mut Private) -> Vec<Kept> {
        let acked = p.acked as usize;
        self.release(p).into_iter().skip(acked).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(pseq: u64, len: usize) -> Kept {
        Kept { pseq, line: Bytes::from(vec![b'x'; len]), from: UserId::new("a"), cid: Some(Rc::from("c")) }
    }

    #[test]
    fn the_budget_is_charged_at_cost_and_finds_the_largest_backlog() {
        let (a, b): (Rc<str>, Rc<str>) = (Rc::from("a"), Rc::from("b"));
        let (mut pa, mut pb) = (Private::default(), Private::default());
        let mut budget = Budget::new(1 << 20);
        for _ in 1..=3 {
            let k = kept(pa.number(), 100);
            assert!(pa.has_room(k.cost()) && budget.fits(k.cost()));
            budget.keep(&a, &mut pa, k);
        }
        let k = kept(pb.number(), 1000);
        budget.keep(&b, &mut pb, k);
        let one = 100 + 1 + 1 + LINE_COST;
        assert_eq!(budget.used(), (4, 3 * one + 1000 + 2 + LINE_COST));
        assert_eq!(budget.largest().as_deref(), Some("b"));
        budget.ack(&mut pb, 1);
        assert_eq!(budget.largest().as_deref(), Some("a"));
        // A pong: acknowledged, still kept (a resume may yet need them), not reported.
        budget.acked(&mut pa, 2);
        assert_eq!((pa.kept.len(), pa.unacked(), pa.unacked_lines().next().unwrap().pseq), (3, 1, 3));
        assert!(matches!(budget.pop(&mut pa), Some((k, true)) if k.pseq == 1));
        // A resume's pseq: gone for good, and the rest is unacknowledged again.
        budget.ack(&mut pa, 2);
        assert_eq!((pa.kept.len(), pa.unacked(), budget.used()), (1, 1, (1, one)));
        assert_eq!(budget.release_unacked(&mut pa).len(), 1);
        assert_eq!((budget.used(), budget.largest()), ((0, 0), None));
        // The memory model counts these (ARCHITECTURE.md).
        assert_eq!((std::mem::size_of::<Private>(), std::mem::size_of::<Kept>()), (88, 72));
    }

    #[test]
    fn a_backlog_is_bounded_by_count_and_bytes() {
        let mut p = Private::default();
        let mut budget = Budget::new(usize::MAX / 2);
        let o: Rc<str> = Rc::from("o");
        while p.has_room(kept(0, 10).cost()) {
            let k = kept(p.number(), 10);
            budget.keep(&o, &mut p, k);
        }
        assert_eq!(p.kept.len(), KEPT_MAX);
        assert!(p.urgent());
        // Acknowledged: a tail of ACKED_MAX stays, and it makes room for new lines silently.
        budget.acked(&mut p, KEPT_MAX as u64);
        assert_eq!((p.kept.len(), p.unacked(), p.urgent()), (ACKED_MAX, 0, false));
        for _ in 0..KEPT_MAX {
            let k = kept(p.number(), 10);
            budget.make_room_in(&mut p, k.cost());
            assert!(p.has_room(k.cost()));
            budget.keep(&o, &mut p, k);
        }
        assert_eq!((p.kept.len(), p.unacked()), (KEPT_MAX, KEPT_MAX));
        budget.make_room_in(&mut p, 10);
        assert!(!p.has_room(kept(0, 10).cost()), "nothing acknowledged left to give");
        budget.release(&mut p);
        assert!(!p.has_room(kept(0, KEPT_BYTES).cost()), "one line over the bytes never fits");
    }
}
