//! Deadlines without threads: a min-heap of (when, token) and the poll timeout.
//!
//! Each connection keeps its own deadlines and has at most one *current* heap entry
//! (`Conn::timer_at`). Activity that pushes a deadline later adds nothing to the heap: the old
//! entry fires, the owner finds nothing due, and re-arms. Entries for connections that are gone
//! are skipped when popped, and so are those of an earlier connection whose slab key was
//! reused: an entry counts only if it is the one the connection's `timer_at` names (the same
//! moment and token are the same entry, whoever set it).
//!
//! An entry is 8 bytes: the deadline in whole milliseconds since the heap's epoch (rounded up,
//! so nothing fires early; 38 bits, 8.7 years) above the token (26 bits), where it was the 32
//! of `(Instant, usize, u32)` and then 16 with nanoseconds and a generation.

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

/// Tokens a timer entry can name (26 bits): the loop takes no more connections than this.
pub const MAX_TOKENS: usize = 1 << TOKEN_BITS;
const TOKEN_BITS: u32 = 26;

pub struct Timers {
    epoch: Instant,
    heap: BinaryHeap<Reverse<u64>>,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { epoch: Instant::now(), heap: BinaryHeap::new() }
    }
}

impl Timers {
    /// Milliseconds since the epoch, rounded up (a deadline) or down (the time now).
    fn millis(&self, at: Instant, up: bool) -> u64 {
        let d = at.saturating_duration_since(self.epoch);
        let ms = d.as_millis() as u64;
        ms + (up && !d.subsec_nanos().is_multiple_of(1_000_000)) as u64
    }

    fn decode(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Schedules `token` (below `MAX_TOKENS`); returns the deadline exactly as it will be
    /// reported when popped: `at` rounded up to the millisecond.
    pub fn schedule(&mut self, at: Instant, token: usize) -> Instant {
        debug_assert!(token < MAX_TOKENS, "token {token}");
        let ms = self.millis(at, true);
        self.heap.push(Reverse(ms << TOKEN_BITS | (token & (MAX_TOKENS - 1)) as u64));
        self.decode(ms)
    }

    /// Pops one entry that is due at `now`: (when it was set for, token).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize)> {
        let Reverse(e) = *self.heap.peek()?;
        if e >> TOKEN_BITS > self.millis(now, false) {
            return None;
        }
        self.heap.pop();
        Some((self.decode(e >> TOKEN_BITS), (e & (MAX_TOKENS as u64 - 1)) as usize))
    }

    /// The nearest deadline, which bounds how long poll may sleep.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| self.decode(e >> TOKEN_BITS))
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
        assert_eq!(t.schedule(t0 + 3 * s, 3), t0 + 3 * s);
        t.schedule(t0 + s, 1);
        t.schedule(t0 + 2 * s, MAX_TOKENS - 1);
        assert_eq!(t.next(), Some(t0 + s));
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.pop_due(t0 + 2 * s), Some((t0 + s, 1)));
        assert_eq!(t.pop_due(t0 + 2 * s), Some((t0 + 2 * s, MAX_TOKENS - 1)));
        assert_eq!(t.pop_due(t0 + 2 * s), None);
        assert_eq!(t.next(), Some(t0 + 3 * s));
        // Rounded up to the millisecond: never due before its moment.
        let odd = t0 + 5 * s + Duration::from_micros(300);
        let at = t.schedule(odd, 9);
        assert_eq!(at, t0 + 5 * s + Duration::from_millis(1));
        t.pop_due(t0 + 4 * s);
        assert_eq!(t.pop_due(odd), None);
        assert_eq!(t.pop_due(at), Some((at, 9)));
        assert_eq!(std::mem::size_of::<Reverse<u64>>(), 8, "the memory table's timer entry");
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
        // Not a moment within the clock origin's first millisecond, which is stored as the
        // next (run alone, this test took its moment there and was a millisecond out).
        let now = epoch() + Duration::from_secs(5);
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
