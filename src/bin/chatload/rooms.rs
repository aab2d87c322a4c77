//! `--rooms N`: the held clients spread over rooms r0 .. r{N-1}. Client i joins r(i mod N)
//! after its welcome (staying in lobby too, where nobody sends) and counts as connected once
//! the server answers `joined`. Room senders send to their own room only (room.rs), so each
//! message is expected by the counted clients of that room; every room message line that
//! arrives is checked against the room its sender is in and the room its receiver is in.

use super::{Engine, Role};

/// The room client `i` of the held clients joins and, as a sender, sends to.
pub(super) fn room_index(i: usize, rooms: usize) -> usize {
    i % rooms
}

/// Whether a room message of sender `sender`, carrying `"room":room`, belongs at receiver
/// `receiver`: the line names the sender's room, and the receiver is in it.
pub(super) fn routed_to(receiver: usize, sender: usize, room: Option<&[u8]>, rooms: usize) -> bool {
    let k = room_index(sender, rooms);
    // The name must be exactly r<k>: no sign, no leading zero.
    let digits = room.and_then(|r| r.strip_prefix(b"r")).filter(|d| d.len() == 1 || d[0] != b'0');
    let named = digits.filter(|d| d.iter().all(u8::is_ascii_digit)).and_then(crate::lines::number::<usize>);
    named == Some(k) && room_index(receiver, rooms) == k
}

impl Engine<'_> {
    pub(super) fn room_of(&self, i: usize) -> usize {
        room_index(i, self.args.rooms)
    }

    /// After held client `i`'s welcome: asks to join its room.
    pub(super) fn join_room(&mut self, t: usize, i: usize) {
        self.mains[i].joining = true;
        let json = format!(r#"{{"join":"r{}"}}"#, self.room_of(i));
        if !self.queue_text(t, json) {
            self.mains[i].joining = false;
            self.fail(t, "join_not_sent".into());
        }
    }

    /// A `joined` line: the answer to our join, which makes the client connected.
    pub(super) fn on_joined(&mut self, t: usize, line: &[u8]) {
        let Some(Role::Main(i)) = self.conns.get(t).map(|c| c.role) else { return };
        let i = i as usize;
        if !self.mains[i].joining {
            return; // not ours to wait for (joined again: nothing new)
        }
        let want = format!(r#""room":"r{}""#, self.room_of(i));
        if !line.windows(want.len()).any(|w| w == want.as_bytes()) {
            return self.fail(t, "joined_other_room".into());
        }
        self.mains[i].joining = false;
        self.admit(i);
    }

    /// An error about a room (`bad_room`, `not_in_room`, `too_many_rooms`): while joining, the
    /// client cannot connect as asked, a connect error named after the code. Later ones are
    /// only counted (as server errors, by the caller).
    pub(super) fn on_room_error(&mut self, t: usize, code: &[u8]) {
        if let Some(Role::Main(i)) = self.conns.get(t).map(|c| c.role)
            && self.mains[i as usize].joining
        {
            self.mains[i as usize].joining = false;
            self.fail(t, format!("join_{}", String::from_utf8_lossy(code)));
        }
    }

    /// Whether our room message from `sender`, carrying `room`, belongs at held client `r`.
    pub(super) fn routed(&self, r: usize, sender: usize, room: Option<&[u8]>) -> bool {
        routed_to(r, sender, room, self.args.rooms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_belongs_to_its_senders_room_and_its_members() {
        // 10 rooms: clients 3, 13 and 23 are in r3.
        assert_eq!(room_index(23, 10), 3);
        assert!(routed_to(13, 3, Some(b"r3"), 10));
        assert!(routed_to(3, 3, Some(b"r3"), 10), "the sender gets its own message");
        assert!(!routed_to(14, 3, Some(b"r3"), 10), "receiver in another room");
        assert!(!routed_to(13, 3, Some(b"r4"), 10), "the line names another room");
        assert!(!routed_to(13, 3, Some(b"lobby"), 10), "sent to a room, arrived as lobby");
        assert!(!routed_to(13, 3, None, 10), "arrived as a private message");
        assert!(!routed_to(13, 3, Some(b"r03"), 10));
        assert!(!routed_to(13, 3, Some(b"r+3"), 10));
        assert!(routed_to(0, 0, Some(b"r0"), 1));
    }
}
