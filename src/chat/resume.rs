//! Resume: users whose connection was lost, held for their secret through a grace period.
//!
//! A connection is *lost* when it ends without the client's close frame (EOF or reset, the
//! idle timeout, a close by the server). Its user is then held, not gone: still a member of
//! its rooms (listed, no leave announced), its id refused to anyone without the secret from
//! its last welcome, and private messages to it kept, within bounds, for delivery when it
//! comes back. A user who sends its own close has *left*: nothing is held.

use super::ids::Secret;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Instant;

// The kept lines and their bounds live with the budget they are charged to.
pub use super::backlog::{KEPT_BYTES, KEPT_MAX, Kept, Private};

/// What one hold really costs, its backlog apart (that is charged to `--backlog-bytes`): the
/// `Away` in the map, its key and deadline entries, its room list, and its place in its rooms
/// (`Room::away`). Not charged anywhere: holds are bounded by count (`--max-holds`), so this
/// is for the memory model. Measured (`measure_backlog_costs` in tests/it/bound_backlog.rs,
/// 2026-12-06): 2,000 users dropped without a close, each in the lobby, grew RSS by 831 B
/// each.
pub const HOLD_COST: usize = 832;

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

/// The users in their grace, by id key, and by deadline (so that a sweep, and the end of the
/// oldest when `--max-holds` is reached, never scan them all).
#[derive(Default)]
pub struct Holds {
    by_key: HashMap<Rc<str>, Away>,
    by_until: BTreeSet<(Instant, Rc<str>)>,
}

impl Holds {
    pub fn hold(&mut self, key: Rc<str>, away: Away) {
        self.by_until.insert((away.until, Rc::clone(&key)));
        if let Some((k, old)) = self.by_key.remove_entry(&key) {
            self.by_until.remove(&(old.until, k));
        }
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
                Claim::Back(Box::new(self.take(key).expect("present")))
            }
            Some(_) => Claim::Held,
        }
    }

    /// The held user under `key`, if its grace has not passed (to keep a message for it).
    pub fn get_mut(&mut self, key: &str, now: Instant) -> Option<&mut Away> {
        self.by_key.get_mut(key).filter(|a| now < a.until)
    }

    /// The held user under `key`, whatever its grace (to account for its backlog).
    pub fn get_any(&mut self, key: &str) -> Option<&mut Away> {
        self.by_key.get_mut(key)
    }

    /// The hold of `key` if its grace has passed (see `Chat::end_expired`).
    pub fn take_expired(&mut self, key: &str, now: Instant) -> Option<Away> {
        if self.by_key.get(key).is_some_and(|a| now >= a.until) {
            return self.take(key);
        }
        None
    }

    /// The user held under `key` is no longer a member of room `room` (it was given up).
    pub fn forget_room(&mut self, key: &str, room: u32) {
        if let Some(a) = self.by_key.get_mut(key) {
            a.rooms.retain(|r| *r != room);
        }
    }

    /// Takes out the user held under `key`, whatever its grace (another node took it over).
    pub fn take(&mut self, key: &str) -> Option<Away> {
        let (k, away) = self.by_key.remove_entry(key)?;
        self.by_until.remove(&(away.until, k));
        Some(away)
    }

    /// Takes out the users whose grace has passed, at most `limit` of them (the earliest):
    /// the index by deadline finds them without looking at the others.
    pub fn expire(&mut self, now: Instant, limit: usize) -> Vec<(Rc<str>, Away)> {
        let mut gone = Vec::new();
        while gone.len() < limit && self.by_until.first().is_some_and(|(t, _)| *t <= now) {
            let (_, k) = self.by_until.pop_first().expect("first");
            if let Some(a) = self.by_key.remove(&k) {
                gone.push((k, a));
            }
        }
        gone
    }

    /// When the first grace ends.
    pub fn next_until(&self) -> Option<Instant> {
        self.by_until.first().map(|(t, _)| *t)
    }

    /// Takes out the hold whose grace ends first (to make room under `--max-holds`).
    pub fn take_oldest(&mut self) -> Option<(Rc<str>, Away)> {
        let (_, k) = self.by_until.pop_first()?;
        let a = self.by_key.remove(&k)?;
        Some((k, a))
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
        assert_eq!(h.expire(late, 10).len(), 1);
        assert!(h.is_empty());
    }

    #[test]
    fn holds_expire_and_give_way_in_deadline_order() {
        let t0 = Instant::now();
        let mut h = Holds::default();
        for (i, k) in ["c", "a", "b", "d"].into_iter().enumerate() {
            h.hold(Rc::from(k), away([i as u8; 16], t0 + Duration::from_secs([3, 1, 2, 4][i])));
        }
        // Held again (a new grace): the old deadline no longer counts.
        h.hold(Rc::from("d"), away([9; 16], t0 + Duration::from_secs(9)));
        assert_eq!(h.len(), 4);
        assert_eq!(h.take_oldest().map(|(k, _)| k).as_deref(), Some("a"));
        let late = t0 + Duration::from_secs(5);
        let gone: Vec<String> = h.expire(late, 1).into_iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(gone, ["b"], "at most the limit, earliest first");
        let gone: Vec<String> = h.expire(late, 10).into_iter().map(|(k, _)| k.to_string()).collect();
        assert_eq!(gone, ["c"]);
        assert!(h.take("d").is_some() && h.is_empty() && h.take_oldest().is_none());
    }
}
