//! Resume: users whose connection was lost, held for their secret through a grace period.
//!
//! A connection is *lost* when it ends without the client's close frame (EOF or reset, the
//! idle timeout, a close by the server). Its user is then held, not gone: still a member of
//! its rooms (listed, no leave announced), its id refused to anyone without the secret from
//! its last welcome, and private messages to it kept, within bounds, for delivery when it
//! comes back. A user who sends its own close has *left*: nothing is held.

use super::ids::Secret;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

/// Private messages a user in its grace keeps for a resend on resume: the last ones sent to
/// it before, since the lost connection may have swallowed them, and what arrives during
/// the grace.
pub const KEPT_MAX: usize = 64;
/// The same in bytes.
pub const KEPT_BYTES: usize = 256 * 1024;
/// What a connected user keeps (only what a connection that dies now could have swallowed):
/// far less, since every connected user may have it. 20,000 users at the limit: 320 MB.
pub const KEPT_ONLINE_MAX: usize = 16;
pub const KEPT_ONLINE_BYTES: usize = 16 * 1024;

/// A private message kept for its recipient.
pub struct Kept {
    /// Its number among the recipient's private messages.
    pub pseq: u64,
    /// The recipient's copy (carrying `pseq`).
    pub line: Bytes,
    /// The sender's id, to tell if it is never delivered.
    pub from: Rc<str>,
    /// It came while the recipient was away: nobody has seen it yet.
    pub fresh: bool,
}

/// The last private messages of one recipient, bounded by `KEPT_MAX` and `KEPT_BYTES`.
#[derive(Default)]
pub struct Private {
    /// The last pseq given out.
    pub pseq: u64,
    pub kept: VecDeque<Kept>,
    bytes: usize,
}

impl Private {
    /// Numbers the next private message to this recipient.
    pub fn number(&mut self) -> u64 {
        self.pseq += 1;
        self.pseq
    }

    /// Keeps `k`. Old, already delivered messages make room; a fresh one that finds no room
    /// is handed back (the caller tells its sender).
    pub fn keep(&mut self, k: Kept, max: usize, max_bytes: usize) -> Result<(), Kept> {
        while self.kept.len() >= max || self.bytes + k.line.len() > max_bytes {
            match self.kept.front() {
                Some(old) if !old.fresh => {
                    let old = self.kept.pop_front().expect("front");
                    self.bytes -= old.line.len();
                }
                _ => return Err(k),
            }
        }
        self.bytes += k.line.len();
        self.kept.push_back(k);
        Ok(())
    }
}

/// A user in its grace.
pub struct Away {
    /// The id as typed.
    pub id: Rc<str>,
    pub secret: Secret,
    pub until: Instant,
    /// The rooms it is still a member of (keys of `Rooms`).
    pub rooms: Vec<u32>,
    pub private: Private,
}

/// What presenting a secret for an id comes to.
pub enum Claim {
    /// Nobody is held under that key (or the grace has passed).
    Free,
    /// Held for someone else (no secret, or the wrong one).
    Held,
    /// The right secret: here is the user, out of the hold.
    Back(Box<Away>),
}

#[derive(Default)]
pub struct Holds {
    by_key: HashMap<Rc<str>, Away>,
}

impl Holds {
    pub fn hold(&mut self, key: Rc<str>, away: Away) {
        self.by_key.insert(key, away);
    }

    /// Whether `key` is held at `now` for someone other than whoever presents `presented`.
    pub fn refuses(&self, key: &str, presented: Option<&Secret>, now: Instant) -> bool {
        self.by_key
            .get(key)
            .is_some_and(|a| now < a.until && !presented.is_some_and(|p| secrets_match(p, &a.secret)))
    }

    pub fn claim(&mut self, key: &str, presented: Option<&Secret>, now: Instant) -> Claim {
        match self.by_key.get(key) {
            None => Claim::Free,
            Some(a) if now >= a.until => Claim::Free,
            Some(a) if presented.is_some_and(|p| secrets_match(p, &a.secret)) => {
                Claim::Back(Box::new(self.by_key.remove(key).expect("present")))
            }
            Some(_) => Claim::Held,
        }
    }

    /// The held user under `key`, if its grace has not passed (to keep a message for it).
    pub fn get_mut(&mut self, key: &str, now: Instant) -> Option<&mut Away> {
        self.by_key.get_mut(key).filter(|a| now < a.until)
    }

    /// Takes out the user held under `key`, whatever its grace (another node took it over).
    /// The hold of `key` if its grace has passed (see `Chat::end_expired`).
    pub fn take_expired(&mut self, key: &str, now: Instant) -> Option<Away> {
        if self.by_key.get(key).is_some_and(|a| now >= a.until) {
            return self.by_key.remove(key);
        }
        None
    }

    /// The user held under `key` is no longer a member of room `room` (it was given up).
    pub fn forget_room(&mut self, key: &str, room: u32) {
        if let Some(a) = self.by_key.get_mut(key) {
            a.rooms.retain(|r| *r != room);
        }
    }

    pub fn take(&mut self, key: &str) -> Option<Away> {
        self.by_key.remove(key)
    }

    /// Takes out the users whose grace has passed.
    pub fn expire(&mut self, now: Instant) -> Vec<(Rc<str>, Away)> {
        let gone: Vec<Rc<str>> =
            self.by_key.iter().filter(|(_, a)| now >= a.until).map(|(k, _)| Rc::clone(k)).collect();
        gone.into_iter().filter_map(|k| self.by_key.remove_entry(&k)).collect()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.by_key.keys().map(|k| &**k)
    }

    /// Every held user with its rooms (for a roster).
    pub fn iter(&self) -> impl Iterator<Item = (&Rc<str>, &Away)> {
        self.by_key.iter()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn shrink(&mut self) {
        self.by_key.shrink_to_fit();
    }
}

/// Compares secrets without an early exit, so timing does not tell how much of a guess was right.
fn secrets_match(a: &Secret, b: &Secret) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn away(secret: Secret, until: Instant) -> Away {
        Away { id: Rc::from("Victim"), secret, until, rooms: vec![], private: Private::default() }
    }

    #[test]
    fn a_hold_lets_only_its_secret_in_and_ends_with_its_grace() {
        let t0 = Instant::now();
        let mut h = Holds::default();
        let (s, wrong) = (super::super::ids::new_secret(), super::super::ids::new_secret());
        h.hold(Rc::from("victim"), away(s, t0 + Duration::from_secs(10)));
        assert!(h.refuses("victim", None, t0) && h.refuses("victim", Some(&wrong), t0));
        assert!(!h.refuses("victim", Some(&s), t0));
        assert!(matches!(h.claim("victim", Some(&wrong), t0), Claim::Held));
        assert!(matches!(h.claim("bob", None, t0), Claim::Free));
        assert!(matches!(h.claim("victim", Some(&s), t0), Claim::Back(a) if &*a.id == "Victim"));
        assert!(matches!(h.claim("victim", Some(&s), t0), Claim::Free), "a secret works once");
        h.hold(Rc::from("victim"), away(s, t0 + Duration::from_secs(10)));
        let late = t0 + Duration::from_secs(10);
        assert!(!h.refuses("victim", None, late));
        assert_eq!(h.expire(late).len(), 1);
        assert!(h.is_empty());
    }

    #[test]
    fn kept_messages_make_room_by_dropping_delivered_ones_never_fresh_ones() {
        let mut p = Private::default();
        let k = |pseq, fresh| Kept { pseq, line: Bytes::from_static(b"x"), from: Rc::from("a"), fresh };
        for _ in 0..KEPT_MAX {
            let n = p.number();
            assert!(p.keep(k(n, false), KEPT_MAX, KEPT_BYTES).is_ok());
        }
        let n = p.number();
        assert!(p.keep(k(n, true), KEPT_MAX, KEPT_BYTES).is_ok(), "an old delivered one made room");
        assert_eq!(p.kept.front().unwrap().pseq, 2);
        for _ in 0..KEPT_MAX - 1 {
            let n = p.number();
            assert!(p.keep(k(n, true), KEPT_MAX, KEPT_BYTES).is_ok());
        }
        let n = p.number();
        assert!(p.keep(k(n, true), KEPT_MAX, KEPT_BYTES).is_err(), "all fresh: no room");
        assert_eq!(p.kept.len(), KEPT_MAX);
    }
}
