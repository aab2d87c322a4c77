//! When the loop writes a connection's queued lines: at the end of the turn that queued them,
//! unless that connection was written moments ago; and how much of a turn writing may take
//! before the loop reads again.
//!
//! Holding a line pays only when another is coming for the same client before it would go:
//! then both share one frame and one `writev`, and on loopback a write costs ~1-5 µs of
//! kernel time whatever it carries (the kernel was 88% of the server's CPU in a fan-out at
//! 500k deliveries/s, `perf`). Whether more is coming is a property of the client, not of the
//! loop: a member of a busy room gets a line every few milliseconds while a member of a quiet
//! one, on the same busy server, gets one a minute. So the decision is made per connection
//! from its own recent past: a line for a connection written less than half an interval
//! (`--flush-interval`) ago is held; the first line held opens a window of one interval, and
//! every held connection is written when it ends, each in one `writev` with whatever came
//! meanwhile. Every other line is written at the end of the turn it came in (as Redis writes
//! before it sleeps: whatever one poll returned is one batch). So a lone line on an idle
//! server goes out in the turn it arrived; a client getting lines further apart than half an
//! interval never waits; one getting them faster gets about one `writev` an interval, each
//! line waiting at most one interval.
//!
//! Before issue 26's end the loop as a whole was called busy when it had written in the last
//! four intervals, and then every line waited for the window: fanning out to 100 rooms of 10
//! at 20k deliveries/s each line waited ~5 ms although no client got a second line within it
//! (p99 6.4 ms against uWebSockets' 0.33 ms, for no saving of CPU). Two variants were measured
//! and dropped: holding every client written in the current window (not in the last half
//! interval) held clients whose lines come about an interval apart for up to an interval each
//! time (p99 2x uWebSockets' at 200k/s in one room); releasing each connection an interval
//! after its own write (a deadline each: writes spread out, no burst at a window's end) gave
//! at 500k/s in one room a p99 of 6.7 against 8.1 ms but 1.27 against 1.14 µs of CPU a
//! delivery (2.5 lines a `sendto` against 2.7, 50% more wake-ups; medians of 3, alternately,
//! 2026-12-07: uWebSockets 1.50 µs, 9.6 ms): the window keeps the CPU, and its p99 is
//! already below uWebSockets' there.
//!
//! A pass over the pending connections writes at least `PASS_CHUNK` of them a turn and at
//! least a quarter of them; the rest go first in the next turn, which polls without sleeping.
//! So a message that arrives while a fan-out to a thousand sockets is being written is read
//! within the pass, and the clients not yet written get both lines in one `writev`.
//!
//! Handshakes skip this (`Net::urgent`), and a queue reaching its soft cap is written at once
//! (`Peer::make_room`): holding bytes the kernel would take is what made readers look slow.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// At least this many connections are written in one turn (and at least a quarter of those
/// pending, so that a pass ends within four turns however much the turns read); the pass goes
/// on in the next turn, after the loop has read what arrived meanwhile.
pub(super) const PASS_CHUNK: usize = 128;

/// The hold decision: the interval (`--flush-interval`), which connections were written
/// less than half an interval ago, and the lines held until the window's end.
#[derive(Debug, Default)]
pub(super) struct Flush {
    interval: Duration,
    /// One bit a token: written less than half an interval ago (a few KiB at `--max-conns`).
    hot: Vec<u64>,
    /// The writes that made tokens hot, oldest first, to cool them half an interval later:
    /// at most one entry a hot token (plus ones left by `cool`, popped in time).
    written: VecDeque<(Instant, u32)>,
    /// Connections with lines waiting for the window's end (still flagged pending). Each is
    /// on it once: a held connection is on no other list until its release.
    held: Vec<usize>,
    /// When the window the first held line opened ends.
    window_end: Option<Instant>,
}

fn is_hot(bits: &[u64], token: usize) -> bool {
    bits.get(token / 64).is_some_and(|w| w & (1 << (token % 64)) != 0)
}

impl Flush {
    pub(super) fn new(interval: Duration) -> Flush {
        Flush { interval, ..Flush::default() }
    }

    /// How many connections to write this turn, with `pending` on the list.
    pub(super) fn chunk(pending: usize) -> usize {
        PASS_CHUNK.max(pending.div_ceil(4))
    }

    /// Moves the clock to `now`: tokens written half an interval ago or more are no longer
    /// hot, and once the window has ended the held connections go to the front of `pending`,
    /// ahead of anything queued since.
    pub(super) fn tick(&mut self, now: Instant, pending: &mut Vec<usize>) {
        while let Some(&(at, token)) = self.written.front() {
            if now < at + self.interval / 2 {
                break;
            }
            self.written.pop_front();
            self.cool(token as usize);
        }
        if self.window_end.is_some_and(|t| now >= t) {
            self.window_end = None;
            self.held.append(pending);
            std::mem::swap(&mut self.held, pending);
        }
    }

    /// Takes from the front of `pending` the connections to write now, at most `chunk` of
    /// them, marking each written at `now`; hot ones go to `held` and what is past the chunk
    /// stays on `pending`, first. The caller writes what is returned, in order.
    pub(super) fn take_due(
        &mut self,
        pending: &mut Vec<usize>,
        chunk: &mut usize,
        now: Instant,
    ) -> Vec<usize> {
        let mut due = std::mem::take(pending);
        let (mut kept, mut seen) = (0, 0);
        while seen < due.len() && *chunk > 0 {
            let token = due[seen];
            seen += 1;
            if self.hold(token, now) {
                continue;
            }
            self.wrote(token, now);
            due[kept] = token;
            kept += 1;
            *chunk -= 1;
        }
        pending.extend_from_slice(&due[seen..]);
        due.truncate(kept);
        due
    }

    /// Whether `token`'s lines wait for the window's end (then it is kept in `held`, and the
    /// first one held opens the window).
    fn hold(&mut self, token: usize, now: Instant) -> bool {
        let hot = is_hot(&self.hot, token);
        if hot {
            self.held.push(token);
            self.window_end.get_or_insert(now + self.interval);
        }
        hot
    }

    /// `token` was written at `now`: it is hot for half an interval. With no interval nothing
    /// is ever held, so nothing is recorded.
    fn wrote(&mut self, token: usize, now: Instant) {
        if self.interval.is_zero() || is_hot(&self.hot, token) {
            return;
        }
        let word = token / 64;
        if self.hot.len() <= word {
            self.hot.resize(word + 1, 0);
        }
        self.hot[word] |= 1 << (token % 64);
        self.written.push_back((now, token as u32));
    }

    /// `token` is not hot now: half an interval has passed, its write was cut by
    /// `WRITE_BUDGET` and must go on next turn, or it was removed and its token may be reused.
    pub(super) fn cool(&mut self, token: usize) {
        if let Some(w) = self.hot.get_mut(token / 64) {
            *w &= !(1 << (token % 64));
        }
    }

    /// When the loop must wake to write: at once if a pass was cut (or a write by its
    /// budget), else when the window ends if a line is held, else never.
    pub(super) fn wake(&self, pending: bool, now: Instant) -> Option<Instant> {
        if pending { Some(now) } else { self.window_end.filter(|_| !self.held.is_empty()) }
    }
}

#[cfg(test)]
mod tests;
