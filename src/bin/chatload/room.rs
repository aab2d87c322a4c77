//! Room mode: `--senders` of the held clients send room messages at `--rate` each; every
//! held client that was connected when a message was sent is expected to receive it. With
//! `--rooms`, a sender sends to its own room, and only that room's clients are expected.

use super::{Engine, ROOM};
use std::cmp::Reverse;
use std::fmt::Write as _;

impl Engine<'_> {
    /// Puts every sender's first send on the timer heap; `fire_timers` schedules the rest.
    pub(super) fn schedule_room(&mut self) {
        let n = self.args.senders;
        for i in 0..n {
            self.timers.push(Reverse((self.send_due(i, n, 0), ROOM, i as u32, 0)));
        }
    }

    pub(super) fn send_room(&mut self, i: usize, stamp: u64) -> bool {
        let m = &mut self.mains[i];
        let (true, Some(t)) = (m.live, m.token) else { return false };
        let seq = m.room_seq;
        let mut json = String::with_capacity(64 + self.pad.len());
        let receivers = if self.args.rooms > 0 {
            let k = self.room_of(i);
            let _ = write!(json, r#"{{"room":"r{k}","text":"r {i} {seq} {stamp}{}"}}"#, self.pad);
            self.room_live[k]
        } else {
            let _ = write!(json, r#"{{"text":"r {i} {seq} {stamp}{}"}}"#, self.pad);
            self.live_count
        };
        if !self.write(t, json) {
            return false;
        }
        self.mains[i].room_seq += 1;
        if let Some(o) = &mut self.outcomes {
            o.sent(i, seq, receivers);
        }
        self.counts.sent_room += 1;
        self.counts.expected += receivers;
        true
    }
}
