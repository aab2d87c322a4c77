//! `--faults`: what became of each room message while the cluster fails (Redis stopped or
//! killed under the load).
//!
//! A room message that did not reach every receiver counted for it is "short"; its sender must
//! have been told with one `cluster_unavailable` or `cluster_unconfirmed` error naming the
//! room. Errors carry no message id yet, so they are matched by count, per sender: a sender's
//! short messages beyond its errors are unreported; its `cluster_unavailable` errors beyond
//! its short messages were errors about messages that did arrive everywhere (over-reported).
//! A `cluster_unconfirmed` message may arrive after all (late, out of order): only a second
//! copy to the same receiver counts as a duplicate.

use super::Engine;

#[derive(Default)]
pub struct Outcomes {
    /// Per sender, per message: receivers expected (held clients connected when it was sent)
    /// and receivers reached.
    msgs: Vec<Vec<(u32, u32)>>,
    /// Per (receiver, sender): the sequence numbers received, as a bitset.
    seen: Vec<Vec<u64>>,
    senders: usize,
    /// Per sender: cluster errors about its room messages.
    unavailable: Vec<u64>,
    unconfirmed: Vec<u64>,
    duplicates: u64,
}

/// The totals for the report.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub short: u64,
    pub unavailable: u64,
    pub unconfirmed: u64,
    pub unreported: u64,
    pub overreported: u64,
    pub duplicates: u64,
}

impl Outcomes {
    pub fn new(receivers: usize, senders: usize) -> Outcomes {
        Outcomes {
            msgs: vec![Vec::new(); senders],
            seen: vec![Vec::new(); receivers * senders],
            senders,
            unavailable: vec![0; senders],
            unconfirmed: vec![0; senders],
            duplicates: 0,
        }
    }

    pub fn sent(&mut self, sender: usize, seq: u64, expected: u64) {
        let m = &mut self.msgs[sender];
        if m.len() <= seq as usize {
            m.resize(seq as usize + 1, (0, 0));
        }
        m[seq as usize].0 = expected as u32;
    }

    /// A copy reached `receiver`; false if it had one already.
    pub fn delivered(&mut self, receiver: usize, sender: usize, seq: u64) -> bool {
        let bits = &mut self.seen[receiver * self.senders + sender];
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        bits[word] |= bit;
        if let Some(m) = self.msgs[sender].get_mut(seq as usize) {
            m.1 += 1;
        }
        true
    }

    pub fn error(&mut self, sender: usize, code: &[u8]) {
        match code {
            b"cluster_unavailable" => self.unavailable[sender] += 1,
            b"cluster_unconfirmed" => self.unconfirmed[sender] += 1,
            _ => {}
        }
    }

    pub fn tally(&self) -> Tally {
        let mut t = Tally { duplicates: self.duplicates, ..Tally::default() };
        for s in 0..self.senders {
            let short = self.msgs[s].iter().filter(|(want, got)| got < want).count() as u64;
            let (u, c) = (self.unavailable[s], self.unconfirmed[s]);
            t.short += short;
            t.unavailable += u;
            t.unconfirmed += c;
            t.unreported += short.saturating_sub(u + c);
            t.overreported += u.saturating_sub(short);
        }
        t
    }
}

impl Engine<'_> {
    /// An error line on held client `i`'s connection: a cluster error about a room message.
    pub(super) fn fault_error(&mut self, i: usize, line: &[u8]) {
        let (Some(o), Some(code)) = (&mut self.outcomes, crate::lines::field(line, br#""code":""#)) else {
            return;
        };
        if i < o.senders && crate::lines::field(line, br#""room":""#).is_some() {
            o.error(i, code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_messages_are_matched_to_errors_by_count() {
        let mut o = Outcomes::new(3, 2);
        for seq in 0..4 {
            o.sent(0, seq, 3);
            o.sent(1, seq, 3);
        }
        for r in 0..3 {
            for seq in 0..4 {
                // Sender 0's messages 2 and 3 reach only its own node's receiver (0).
                if seq < 2 || r == 0 {
                    assert!(o.delivered(r, 0, seq));
                }
                assert!(o.delivered(r, 1, seq));
            }
        }
        assert!(!o.delivered(2, 1, 3), "a second copy");
        o.error(0, b"cluster_unavailable");
        let t = o.tally();
        assert_eq!(
            t,
            Tally { short: 2, unavailable: 1, unconfirmed: 0, unreported: 1, overreported: 0, duplicates: 1 }
        );
        o.error(0, b"cluster_unconfirmed");
        o.error(1, b"cluster_unavailable");
        let t = o.tally();
        assert_eq!((t.unreported, t.overreported), (0, 1), "sender 1 was told of a message that arrived");
    }
}
