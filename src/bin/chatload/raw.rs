//! `--proto raw`: for servers that do not speak chatloop's JSON protocol, only broadcast every
//! text frame to every client (the sender included), like the peers in bench/peers/.
//!
//! A room sender's frame is the bare marker text "r <sender> <seq> <send-ns>[padding]" (the
//! same text chatloop's JSON would carry), and every text frame in counts: a frame that holds
//! several newline-separated markers (gorilla's chat example coalesces queued messages that
//! way) counts each. A client is live once its handshake is done: there is no welcome. With
//! `--rooms`, a client asks for its room in the upgrade's query (`&room=rK`, connect.rs), a
//! sender's marker is expected by the live clients of its room, and a marker that reaches a
//! client of another room counts as misrouted (so a server that ignores the room shows).

use super::{Engine, Role};
use crate::lines::parse_text;
use std::fmt::Write as _;
use std::time::Instant;

impl Engine<'_> {
    /// Room sender `i` sends its next marker as a bare text frame.
    pub(super) fn send_raw(&mut self, i: usize, stamp: u64) -> bool {
        let m = &mut self.mains[i];
        let (true, Some(t)) = (m.live, m.token) else { return false };
        let seq = m.room_seq;
        let mut text = String::with_capacity(40 + self.pad.len());
        let _ = write!(text, "r {i} {seq} {stamp}{}", self.pad);
        if !self.write(t, text) {
            return false;
        }
        self.mains[i].room_seq += 1;
        self.counts.sent_room += 1;
        self.counts.expected +=
            if self.args.rooms > 0 { self.room_live[self.room_of(i)] } else { self.live_count };
        true
    }

    /// A text frame arrived on `t`: each marker in it is a delivery.
    pub(super) fn on_raw_text(&mut self, t: usize, text: &str, now: Instant) {
        let Role::Main(r) = self.conns[t].role else { return }; // churn clients only listen
        let r = r as usize;
        for line in text.as_bytes().split(|&b| b == b'\n') {
            let Some((b'r', sender, seq, sent_ns)) = parse_text(line) else {
                self.counts.foreign += 1;
                continue;
            };
            if sender >= self.args.senders {
                self.counts.foreign += 1;
                continue;
            }
            if self.args.rooms > 0 && self.room_of(sender) != self.room_of(r) {
                self.counts.misrouted += 1;
                continue;
            }
            let m = &mut self.mains[r];
            if !m.live {
                self.counts.uncounted += 1;
                continue;
            }
            let next = &mut m.next[sender];
            if seq < *next {
                self.counts.reordered += 1;
                continue;
            }
            *next = seq + 1;
            self.counts.delivered += 1;
            self.delivered_at(sent_ns, now);
        }
    }
}
