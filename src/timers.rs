//! Deadlines without threads: a min-heap of (when, token, generation) and the poll timeout.
//!
//! Each connection keeps its own deadlines and has at most one *current* heap entry
//! (`Conn::timer_at`). Activity that pushes a deadline later adds nothing to the heap: the old
//! entry fires, the owner finds nothing due, and re-arms. Entries for connections that are gone
//! (or whose slab key was reused, hence the generation) are skipped when popped.
//!
//! An entry is 16 bytes (nanoseconds since the heap's epoch, token, generation) rather than
//! the 32 of `(Instant, usize, u32)`: at 10,000 idle connections that is 160 KB less.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The process's clock origin for `Stamp`s and rate-limit buckets.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the process's clock origin, wrapping every 49.7 days.
pub fn millis(t: Instant) -> u32 {
    let e = epoch();
    match t.checked_duration_since(e) {
        Some(d) => d.as_millis() as u32,
        None => 0u32.wrapping_sub(e.duration_since(t).as_millis() as u32),
    }
}

/// The longest span a `Stamp` may be from now: half the 32-bit wrap, with room to spare.
/// Durations added to a stamp (timeouts, intervals) are capped to it.
pub const MAX_SPAN: Duration = Duration::from_secs(20 * 24 * 3600);

/// A moment in 4 bytes rather than `Instant`'s 16 (24 as an `Option`): milliseconds since the
/// process's clock origin, wrapping every 49.7 days, compared by their wrapping difference.
/// So any two stamps compare correctly while they are within 24 days of each other, which
/// every connection deadline is (`MAX_SPAN`). 0 is stored as 1 (a millisecond later) so that
/// `Option<Stamp>` is 4 bytes too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(NonZeroU32);

impl Stamp {
    pub fn of(t: Instant) -> Stamp {
        Stamp::raw(millis(t))
    }

    fn raw(ms: u32) -> Stamp {
        Stamp(NonZeroU32::new(ms).unwrap_or(NonZeroU32::MIN))
    }

    /// `d` later (at most `MAX_SPAN`).
    pub fn after(self, d: Duration) -> Stamp {
        Stamp::raw(self.0.get().wrapping_add(d.min(MAX_SPAN).as_millis() as u32))
    }

    /// Signed milliseconds from `self` to `other`.
    fn until(self, other: Stamp) -> i32 {
        other.0.get().wrapping_sub(self.0.get()) as i32
    }

    /// Whether `now` is at or past this stamp.
    pub fn reached(self, now: Stamp) -> bool {
        self.until(now) >= 0
    }

    pub fn earlier(self, other: Stamp) -> Stamp {
        if self.until(other) < 0 { other } else { self }
    }

    /// The `Instant` of this stamp, resolved near `now`.
    pub fn instant(self, now: Instant) -> Instant {
        let ms = Stamp::of(now).until(self);
        let base = now
            - Duration::from_nanos(now.saturating_duration_since(epoch()).subsec_nanos() as u64 % 1_000_000);
        if ms >= 0 {
            base + Duration::from_millis(ms as u64)
        } else {
            base.checked_sub(Duration::from_millis(ms.unsigned_abs() as u64)).unwrap_or(now)
        }
    }

    /// How long from this stamp to `now` (for logs; wraps after 49.7 days).
    pub fn elapsed(self, now: Stamp) -> Duration {
        Duration::from_millis(now.0.get().wrapping_sub(self.0.get()) as u64)
    }
}

pub struct Timers {
    epoch: Instant,
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { epoch: Instant::now(), heap: BinaryHeap::new() }
    }
}

impl Timers {
    fn encode(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn decode(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    /// Schedules `token`; returns the deadline exactly as it will be reported when popped.
    pub fn schedule(&mut self, at: Instant, token: usize, generation: u32) -> Instant {
        let n = self.encode(at);
        self.heap.push(Reverse((n, token as u32, generation)));
        self.decode(n)
    }

    /// Pops one entry that is due at `now`: (when it was set for, token, generation).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= self.encode(now) => {
                self.heap.pop().map(|Reverse((at, t, g))| (self.decode(at), t as usize, g))
            }
            _ => None,
        }
    }

    /// The nearest deadline, which bounds how long poll may sleep.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| self.decode(*at))
    }

    /// Reserves room for `n` entries (one per connection; address space only, until used):
    /// a heap grown by doubling would be up to half empty.
    pub fn reserve(&mut self, n: usize) {
        self.heap.reserve_exact(n.saturating_sub(self.heap.len()));
    }

    /// Drops every entry and its memory: for when no connection is left to own one.
    pub fn clear(&mut self) {
        self.heap = BinaryHeap::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let mut t = Timers::default();
        let t0 = t.epoch;
        let s = Duration::from_secs(1);
        assert_eq!(t.schedule(t0 + 3 * s, 3, 0), t0 + 3 * s);
        t.schedule(t0 + s, 1, 0);
        t.schedule(t0 + 2 * s, 2, 7);
        assert_eq!(t.next(), Some(t0 + s));
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.pop_due(t0 + 2 * s), Some((t0 + s, 1, 0)));
        assert_eq!(t.pop_due(t0 + 2 * s), Some((t0 + 2 * s, 2, 7)));
        assert_eq!(t.pop_due(t0 + 2 * s), None);
        assert_eq!(t.next(), Some(t0 + 3 * s));
    }

    #[test]
    fn stamps_compare_across_the_wrap_and_resolve_to_instants() {
        let near_wrap = Stamp::raw(u32::MAX - 5);
        let later = near_wrap.after(Duration::from_millis(10));
        assert_eq!(later.0.get(), 4);
        assert!(later.reached(later) && !later.reached(near_wrap) && near_wrap.reached(later));
        assert_eq!(near_wrap.earlier(later), near_wrap);
        assert_eq!(later.earlier(near_wrap), near_wrap);
        assert_eq!(near_wrap.elapsed(later), Duration::from_millis(10));
        let now = Instant::now();
        let at = Stamp::of(now).after(Duration::from_millis(1500));
        let i = at.instant(now);
        assert!(
            i > now + Duration::from_millis(1498) && i <= now + Duration::from_millis(1500),
            "{:?}",
            i - now
        );
        assert_eq!(Stamp::of(i), at, "round trip");
        assert!(at.reached(Stamp::of(i)));
        assert_eq!(Stamp::of(now).after(Duration::from_secs(1 << 40)), Stamp::of(now).after(MAX_SPAN));
    }
}
