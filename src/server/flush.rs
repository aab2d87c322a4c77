//! When the loop writes the queues lines went to: at the end of the turn that queued them,
//! unless the loop is busy writing.
//!
//! Holding a line pays only when another is coming for the same client before it would go:
//! then both share one frame and one `writev`. On a quiet server nothing is coming, and the
//! hold would be latency bought for nothing, so a line goes out at the end of the turn it
//! arrived in (as Redis writes before it sleeps: whatever one poll returned is one batch).
//! Once the loop writes often, lines keep coming, and holding them saves the kernel's
//! per-call work, which is most of the server's CPU under load. The loop counts as busy while
//! its last write was less than `--flush-interval` ago: the next write waits until that
//! interval after the last, and the lines that arrive meanwhile share it. So a line waits at
//! most `--flush-interval`, and only when the loop wrote less than that before it.
//!
//! Handshakes skip this (`Net::urgent`), and a queue reaching its soft cap is written at once
//! (`Peer::make_room`): holding bytes the kernel would take is what made readers look slow.

use std::time::{Duration, Instant};

/// The write decision: the busy interval (`--flush-interval`) and when the loop last wrote.
#[derive(Debug)]
pub(super) struct Flush {
    /// The least time between two writes of the pending queues while the loop is busy.
    interval: Duration,
    /// When the pending queues were last written; `None` before the first write.
    last: Option<Instant>,
}

impl Flush {
    pub(super) fn new(interval: Duration) -> Flush {
        Flush { interval, last: None }
    }

    /// Whether the pending queues are written at the end of this turn: yes unless the loop
    /// wrote them less than the interval ago.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.last.is_none_or(|t| now.saturating_duration_since(t) >= self.interval)
    }

    /// The pending queues were written at `now`.
    pub(super) fn wrote(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// When the loop must wake to write queues still pending after this turn (none if
    /// nothing is pending): at once if the interval since the last write has passed (a write
    /// cut by its budget, `WRITE_BUDGET`, goes on next turn), else when it will have.
    pub(super) fn wake(&self, pending: bool, now: Instant) -> Option<Instant> {
        pending.then(|| self.last.map_or(now, |t| (t + self.interval).max(now)))
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
        // Quiet for longer than the interval: the next line goes at once, however long the
        // interval, since nothing was written to make the loop busy.
        assert!(f.due(t0 + 5 * MS) && f.due(t0 + 60_000 * MS));
        let mut long = Flush::new(Duration::from_secs(3600));
        assert!(long.due(t0));
        long.wrote(t0);
        assert!(long.due(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn while_the_loop_writes_often_lines_wait_at_most_the_interval_after_the_last_write() {
        let t0 = Instant::now();
        let mut f = Flush::new(5 * MS);
        f.wrote(t0);
        // A line 1 ms after a write waits for the interval to end, no longer.
        assert!(!f.due(t0 + MS) && !f.due(t0 + 4 * MS));
        assert_eq!(f.wake(true, t0 + MS), Some(t0 + 5 * MS));
        assert_eq!(f.wake(false, t0 + MS), None, "nothing pending, nothing to wake for");
        assert!(f.due(t0 + 5 * MS));
        f.wrote(t0 + 5 * MS);
        // Lines every millisecond: one write per interval, each line waiting < 5 ms.
        let writes = (6..=100u32)
            .filter(|ms| {
                let now = t0 + *ms * MS;
                let due = f.due(now);
                if due {
                    f.wrote(now);
                }
                due
            })
            .count();
        assert_eq!(writes, 19, "one write per 5 ms over 95 ms");
    }

    #[test]
    fn a_zero_interval_writes_every_turn_and_budget_cut_writes_go_on_next_turn() {
        let t0 = Instant::now();
        let mut f = Flush::new(Duration::ZERO);
        f.wrote(t0);
        assert!(f.due(t0));
        assert_eq!(f.wake(true, t0), Some(t0));
        // With an interval, what is left after its write's budget waits for the interval;
        // once it has passed, it goes at once.
        let mut f = Flush::new(5 * MS);
        f.wrote(t0);
        assert_eq!(f.wake(true, t0), Some(t0 + 5 * MS));
        assert_eq!(f.wake(true, t0 + 9 * MS), Some(t0 + 9 * MS));
        assert_eq!(Flush::new(5 * MS).wake(true, t0), Some(t0));
    }
}
