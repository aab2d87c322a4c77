//! Private mode: the held clients in pairs (0-1, 2-3, ..), each sending private messages to
//! its partner at `--rate`; each message is expected twice (partner, and echoed to the sender).

use super::{Engine, PRIVATE};
use std::cmp::Reverse;
use std::fmt::Write as _;

impl Engine<'_> {
    /// The clients that send: every one of a pair (an odd one out only receives nothing).
    pub(super) fn private_senders(&self) -> usize {
        self.args.conns & !1
    }

    /// Puts every sender's first send on the timer heap; `fire_timers` schedules the rest.
    pub(super) fn schedule_private(&mut self) {
        let n = self.private_senders();
        for i in 0..n {
            self.timers.push(Reverse((self.send_due(i, n, 0), PRIVATE, i as u32, 0)));
        }
    }

    pub(super) fn send_private(&mut self, i: usize, stamp: u64) -> bool {
        let j = i ^ 1;
        let (m, p) = (&self.mains[i], &self.mains[j]);
        let (true, true, Some(t)) = (m.live, p.live, m.token) else { return false };
        let seq = m.private_seq;
        let mut json = String::with_capacity(64 + self.pad.len());
        let _ = write!(json, r#"{{"to":"{}","text":"p {i} {seq} {stamp}{}"}}"#, self.ids[j], self.pad);
        if !self.write(t, json) {
            return false;
        }
        self.mains[i].private_seq += 1;
        self.counts.sent_private += 1;
        self.counts.expected += 2;
        true
    }
}
