//! When the loop writes the queues lines went to: at the end of the turn that queued them,
//! unless the loop is busy writing.
//!
//! Holding a line pays only when another is coming for the same client before it would go:
//! then both share one frame and one `writev`. On a quiet server nothing is coming, and the
//! hold would be latency bought for nothing, so a line goes out at the end of the turn it
//! arrived in (as Redis writes before it sleeps: whatever one poll returned is one batch).
//! Once the loop writes often, lines keep coming, and holding them saves the kernel's
//! per-call work, which is most of the server's CPU under load. The loop counts as busy while
//! its last write was less than `QUIET` intervals (`--flush-interval`) ago; then the first
//! line held opens a window of one interval, and the lines that arrive in it share its write
//! (the fixed window every line waited for before issue 26, which under load batches as many
//! lines per write). So a line waits at most `--flush-interval`, and only on a busy loop.
//!
//! Why not less: timing the window from the last write (a throttle) wrote a third more often
//! at 500 msg/s, and so did calling the loop quiet after a single interval without a write
//! (gaps of 5 to 20 ms are common at 200 to 500 messages a second, each then costing one more
//! `writev` per client): counted with `perf stat -e syscalls:sys_enter_writev`.
//!
//! Handshakes skip this (`Net::urgent`), and a queue reaching its soft cap is written at once
//! (`Peer::make_room`): holding bytes the kernel would take is what made readers look slow.

use std::time::{Duration, Instant};

/// How many intervals without a write make the loop quiet (its next line goes at once).
pub(super) const QUIET: u32 = 4;

/// The write decision: the interval (`--flush-interval`), when the loop last wrote, and since
/// when lines have been held.
#[derive(Debug)]
pub(super) struct Flush {
    /// How long since the last write counts as busy, and how long a busy loop holds lines.
    interval: Duration,
    /// When the pending queues were last written; `None` before the first write.
    last: Option<Instant>,
    /// When the first line now held was held: the window it opened ends `interval` later.
    held: Option<Instant>,
}

impl Flush {
    pub(super) fn new(interval: Duration) -> Flush {
        Flush { interval, last: None, held: None }
    }

    /// Whether the loop wrote less than `QUIET` intervals before `now`.
    fn busy(&self, now: Instant) -> bool {
        self.last.is_some_and(|t| now.saturating_duration_since(t) < self.interval * QUIET)
    }

    /// Whether the pending queues are written at the end of this turn: once the window the
    /// first held line opened has passed; with none held, unless the loop is busy.
    pub(super) fn due(&self, now: Instant) -> bool {
        match self.held {
            Some(h) => now.saturating_duration_since(h) >= self.interval,
            None => !self.busy(now),
        }
    }

    /// The pending queues were written at `now`.
    pub(super) fn wrote(&mut self, now: Instant) {
        self.last = Some(now);
        self.held = None;
    }

    /// When the loop must wake to write queues still pending after this turn (none if
    /// nothing is pending): at once on a quiet loop (lines queued after its write, or a write
    /// cut by its budget, `WRITE_BUDGET`), else when the window of the first held line ends.
    pub(super) fn wake(&mut self, pending: bool, now: Instant) -> Option<Instant> {
        if !pending {
            self.held = None;
            return None;
        }
        if let Some(h) = self.held {
            // The window holds even if the loop has turned quiet meanwhile: its end is due.
            return Some(h + self.interval);
        }
        if !self.busy(now) {
            return Some(now);
        }
        self.held = Some(now);
        Some(now + self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_lone_line_on_a_quiet_loop_is_written_in_the_turn_it_came() {
        let t0 = Instant::now();
        let mut f = Flush::new(5 * MS);
        assert!(f.due(t0), "never written: nothing to wait for");
        f.wrote(t0);
        // No write for QUIET intervals: the next line goes at once, however long the interval.
        assert!(!f.due(t0 + 19 * MS), "busy: written 19 ms ago");
        assert!(f.due(t0 + 20 * MS) && f.due(t0 + 60_000 * MS));
        let mut long = Flush::new(Duration::from_secs(3600));
        assert!(long.due(t0));
        long.wrote(t0);
        assert!(long.due(t0 + Duration::from_secs(4 * 3600)));
    }

    #[test]
    fn while_the_loop_writes_often_a_held_line_opens_a_window_of_the_interval() {
        let t0 = Instant::now();
        let mut f = Flush::new(5 * MS);
        f.wrote(t0);
        // A line 1 ms after a write is held: its window ends 5 ms later, not 5 ms after the
        // write, so that lines under load share writes as they did with a fixed window.
        assert!(!f.due(t0 + MS));
        assert_eq!(f.wake(true, t0 + MS), Some(t0 + 6 * MS));
        assert_eq!(f.wake(true, t0 + 3 * MS), Some(t0 + 6 * MS), "the window is the first line's");
        assert!(!f.due(t0 + 5 * MS) && f.due(t0 + 6 * MS));
        f.wrote(t0 + 6 * MS);
        // Lines every millisecond: one write per 6 ms (the window, and the line that opens
        // the next one), each line waiting at most 5 ms.
        let (mut writes, mut longest, mut first_held) = (0, Duration::ZERO, None::<Instant>);
        for ms in 7..=102u32 {
            let now = t0 + ms * MS;
            let due = f.due(now);
            if due {
                f.wrote(now);
                writes += 1;
                longest = longest.max(first_held.take().map_or(Duration::ZERO, |h| now - h));
            } else {
                first_held.get_or_insert(now);
            }
            f.wake(!due, now);
        }
        assert_eq!((writes, longest), (16, 5 * MS), "96 ms of lines");
        assert_eq!(f.wake(false, t0 + 103 * MS), None, "nothing pending, nothing to wake for");
        // Quiet again for QUIET intervals: the next line goes at once.
        assert!(!f.due(t0 + 102 * MS + 19 * MS) && f.due(t0 + 102 * MS + 20 * MS));
        // A window ends when it ends, however often the loop wakes meanwhile.
        let mut f = Flush::new(5 * MS);
        f.wrote(t0);
        assert_eq!(f.wake(true, t0 + 4 * MS), Some(t0 + 9 * MS));
        assert!(!f.due(t0 + 6 * MS));
        assert_eq!(f.wake(true, t0 + 6 * MS), Some(t0 + 9 * MS));
        assert!(f.due(t0 + 9 * MS));
    }

    #[test]
    fn a_zero_interval_writes_every_turn_and_budget_cut_writes_go_on_next_turn() {
        let t0 = Instant::now();
        let mut f = Flush::new(Duration::ZERO);
        f.wrote(t0);
        assert!(f.due(t0));
        assert_eq!(f.wake(true, t0), Some(t0));
        // With an interval, what is left after its write's budget waits for a window; on a
        // loop quiet for the interval, it goes at once.
        let mut f = Flush::new(5 * MS);
        f.wrote(t0);
        assert_eq!(f.wake(true, t0), Some(t0 + 5 * MS));
        let mut f = Flush::new(5 * MS);
        f.wrote(t0);
        assert_eq!(f.wake(true, t0 + 20 * MS), Some(t0 + 20 * MS));
        assert_eq!(Flush::new(5 * MS).wake(true, t0), Some(t0));
    }
}
