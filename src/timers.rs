//! Deadlines without threads: a min-heap of (when, token, generation) and the poll timeout.
//!
//! Each connection keeps its own deadlines and has at most one *current* heap entry
//! (`Conn::timer_at`). Activity that pushes a deadline later adds nothing to the heap: the old
//! entry fires, the owner finds nothing due, and re-arms. Entries for connections that are gone
//! (or whose slab key was reused, hence the generation) are skipped when popped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u32)>>,
}

impl Timers {
    pub fn schedule(&mut self, at: Instant, token: usize, generation: u32) {
        self.heap.push(Reverse((at, token, generation)));
    }

    /// Pops one entry that is due at `now`: (when it was set for, token, generation).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// The nearest deadline, which bounds how long poll may sleep.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Timers::default();
        t.schedule(t0 + 3 * s, 3, 0);
        t.schedule(t0 + s, 1, 0);
        t.schedule(t0 + 2 * s, 2, 7);
        assert_eq!(t.next(), Some(t0 + s));
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.pop_due(t0 + 2 * s), Some((t0 + s, 1, 0)));
        assert_eq!(t.pop_due(t0 + 2 * s), Some((t0 + 2 * s, 2, 7)));
        assert_eq!(t.pop_due(t0 + 2 * s), None);
        assert_eq!(t.next(), Some(t0 + 3 * s));
    }
}
