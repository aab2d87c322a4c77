//! The local users table: one slot per connection token, and an index by id key.
//!
//! Every idle connection has a user, so this table is most of chat's memory per connection
//! (see docs/performance.md, "Memory of one idle connection"). Two choices keep it small:
//! - Slots are a `Vec` indexed by token (the server's slab key, so dense), reserved up front
//!   for `--max-conns` like the connection slab: untouched pages cost no RSS, and a slot is
//!   32 bytes with no hash table slack around it, the id inline in it up to 15 bytes.
//! - The index by id key is a `hashbrown::HashTable` of tokens (4 bytes a bucket) that hashes
//!   and compares the *folded* id in the slot (`ids::key` without building it): the id is
//!   stored once, as typed, and a lookup allocates nothing.

use crate::chat::ids::fold;
use crate::chat::resume::Private;
pub use crate::chat::user_id::UserId;
use hashbrown::HashTable;
use std::collections::HashMap;
use std::collections::hash_map::{DefaultHasher, RandomState};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};

/// The rooms a user is in (keys of `Rooms`), in the order joined: the first two inline (they
/// fill what would be the slot's padding, and nearly every user is in `lobby` and at most one
/// more), the rest in a boxed vector behind one thin pointer (8 bytes, where a boxed slice
/// took 16 in every slot), made on the third room (at most `--max-rooms-per-user`).
#[derive(Debug)]
pub struct RoomList {
    /// `NONE` where empty; a `NONE` is never followed by a room.
    inline: [u32; 2],
    // Boxed on purpose: a thin pointer in every slot, the vector's header only past two rooms.
    #[allow(clippy::box_collection)]
    rest: Option<Box<Vec<u32>>>,
}

const NONE: u32 = u32::MAX;

impl Default for RoomList {
    fn default() -> Self {
        RoomList { inline: [NONE; 2], rest: None }
    }
}

impl RoomList {
    pub fn len(&self) -> usize {
        self.inline.iter().filter(|r| **r != NONE).count() + self.rest().len()
    }

    pub fn is_empty(&self) -> bool {
        self.inline[0] == NONE
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.inline.iter().copied().filter(|r| *r != NONE).chain(self.rest().iter().copied())
    }

    pub fn contains(&self, room: u32) -> bool {
        self.iter().any(|r| r == room)
    }

    pub fn push(&mut self, room: u32) {
        match self.inline.iter().position(|r| *r == NONE) {
            Some(i) => self.inline[i] = room,
            None => {
                let v = self.rest.get_or_insert_with(Box::default);
                v.push(room);
                v.shrink_to_fit();
            }
        }
    }

    pub fn remove(&mut self, room: u32) {
        if self.contains(room) {
            *self = self.iter().filter(|r| *r != room).collect::<Vec<u32>>().into();
        }
    }

    fn rest(&self) -> &[u32] {
        self.rest.as_deref().map_or(&[], |v| v.as_slice())
    }

    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }
}

impl From<Vec<u32>> for RoomList {
    fn from(v: Vec<u32>) -> Self {
        let mut list = RoomList::default();
        for (slot, r) in list.inline.iter_mut().zip(&v) {
            *slot = *r;
        }
        list.rest = v.get(2..).filter(|r| !r.is_empty()).map(|r| Box::new(r.to_vec()));
        list
    }
}

/// A local user; its slot's index is its connection's token.
pub struct User {
    /// The id as typed: inline up to 15 bytes (`UserId`), the connection's only copy.
    pub id: UserId,
    pub rooms: RoomList,
    // Its private backlog (numbering, the last lines) is in `Users::private`, by token: most
    // users never get one, and here it took 8 bytes in every slot.
}

#[derive(Default)]
pub struct Users {
    slots: Vec<Option<User>>,
    /// The private backlogs of users that have had a private message, by token (tokens are
    /// the server's, so no per-table seed), boxed so that one moves whole to a hold.
    private: HashMap<u32, Box<Private>, BuildHasherDefault<DefaultHasher>>,
    index: HashTable<u32>,
    hasher: RandomState,
    len: usize,
}

/// Hashes an id as its key (`ids::key`), so that ids that are one user hash alike.
fn hash_of(hasher: &RandomState, id: &str) -> u64 {
    let mut h = hasher.build_hasher();
    // Folded a chunk at a time into one `write` (the same stream of bytes as one `write_u8`
    // each, at a fraction of the calls: this hash was a few % of a private message's CPU).
    let mut buf = [0u8; 32];
    for chunk in id.as_bytes().chunks(buf.len()) {
        for (d, s) in buf.iter_mut().zip(chunk) {
            *d = fold(*s);
        }
        h.write(&buf[..chunk.len()]);
    }
    id.len().hash(&mut h);
    h.finish()
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

impl Users {
    /// Reserves slots for tokens below `n` (address space only, until used).
    pub fn reserve(&mut self, n: usize) {
        self.slots.reserve_exact(n.saturating_sub(self.slots.len()));
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn find(&self, id: &str) -> Option<u32> {
        let slots = &self.slots;
        let eq = |t: &u32| slots[*t as usize].as_ref().is_some_and(|u| same(&u.id, id));
        self.index.find(hash_of(&self.hasher, id), eq).copied()
    }

    /// The user whose id is `id` or means the same key (any case, any confusable), and its
    /// token.
    pub fn get(&self, id: &str) -> Option<(u32, &User)> {
        let t = self.find(id)?;
        Some((t, self.slots[t as usize].as_ref()?))
    }

    pub fn get_mut(&mut self, id: &str) -> Option<(u32, &mut User)> {
        let t = self.find(id)?;
        Some((t, self.slots[t as usize].as_mut()?))
    }

    pub fn contains(&self, id: &str) -> bool {
        self.find(id).is_some()
    }

    /// The user on connection `token`.
    pub fn by_token(&self, token: u32) -> Option<&User> {
        self.slots.get(token as usize)?.as_ref()
    }

    /// The private backlog of the user on connection `token`, if it has one.
    pub fn private_by_token(&mut self, token: u32) -> Option<&mut Private> {
        self.private.get_mut(&token).map(|p| &mut **p)
    }

    /// The private backlog of the user on connection `token`, if it has one, to read.
    pub fn private_of(&self, token: u32) -> Option<&Private> {
        self.private.get(&token).map(|p| &**p)
    }

    /// The id and private backlog of the user on connection `token`, the backlog made if it
    /// has none yet.
    pub fn with_private(&mut self, token: u32) -> Option<(&str, &mut Private)> {
        let u = self.slots.get(token as usize)?.as_ref()?;
        Some((&u.id, self.private.entry(token).or_default()))
    }

    /// Adds `user` on connection `token`, with its private backlog if it has one; its id must
    /// be free (checked by the caller) and the token's slot empty.
    pub fn insert(&mut self, token: u32, user: User, private: Option<Box<Private>>) {
        if let Some(p) = private {
            self.private.insert(token, p);
        }
        let t = token as usize;
        if self.slots.len() <= t {
            self.slots.resize_with(t + 1, || None);
        }
        let (slots, hasher) = (&self.slots, &self.hasher);
        let rehash = |t: &u32| slots[*t as usize].as_ref().map_or(0, |u| hash_of(hasher, &u.id));
        self.index.insert_unique(hash_of(hasher, &user.id), token, rehash);
        debug_assert!(self.slots[t].is_none(), "token {t} has a user already");
        self.slots[t] = Some(user);
        self.len += 1;
    }

    /// Removes the user whose id means `id`: its token, the user, and its private backlog.
    pub fn remove(&mut self, id: &str) -> Option<(u32, User, Option<Box<Private>>)> {
        let slots = &self.slots;
        let eq = |t: &u32| slots[*t as usize].as_ref().is_some_and(|u| same(&u.id, id));
        let (t, _) = self.index.find_entry(hash_of(&self.hasher, id), eq).ok()?.remove();
        self.len -= 1;
        let private = self.private.remove(&t);
        Some((t, self.slots[t as usize].take()?, private))
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &User)> {
        self.slots.iter().enumerate().filter_map(|(t, u)| Some((t as u32, u.as_ref()?)))
    }

    /// Returns memory (when the server has gone idle): the slots are given back whole.
    pub fn shrink(&mut self) {
        if self.len == 0 {
            self.slots = Vec::new();
            self.index = HashTable::new();
            self.private = HashMap::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> User {
        User { id: UserId::new(id), rooms: RoomList::default() }
    }

    #[test]
    fn ids_that_fold_alike_are_one_user_and_the_id_is_kept_as_typed() {
        let mut u = Users::default();
        u.insert(3, user("Alice"), None);
        u.insert(0, user("bob"), None);
        assert_eq!(u.get("a1ice").map(|x| x.0), Some(3));
        assert_eq!(u.get("ALICE").map(|x| &*x.1.id), Some("Alice"));
        assert!(u.contains("B0B") && !u.contains("bobby") && !u.contains("bo"));
        assert_eq!(u.by_token(0).map(|x| &*x.id), Some("bob"));
        assert!(u.by_token(1).is_none() && u.by_token(99).is_none());
        assert_eq!(u.remove("alIce").map(|x| x.0), Some(3));
        assert!(u.get("alice").is_none() && u.by_token(3).is_none());
        assert_eq!((u.len(), u.iter().count()), (1, 1));
    }

    #[test]
    fn many_users_survive_the_index_growing() {
        let mut u = Users::default();
        for t in 0..5000u32 {
            u.insert(t, user(&format!("u{t}")), None);
        }
        for t in (0..5000u32).step_by(2) {
            assert!(u.remove(&format!("U{t}")).is_some());
        }
        for t in 0..5000u32 {
            assert_eq!(u.get(&format!("u{t}")).map(|x| x.0), (t % 2 == 1).then_some(t), "u{t}");
        }
    }

    #[test]
    fn a_room_list_keeps_order_and_removes_any_entry() {
        let mut r = RoomList::default();
        assert_eq!((r.len(), r.to_vec()), (0, vec![]));
        for k in [5, 7, 9, 11] {
            r.push(k);
        }
        assert!(r.contains(7) && r.contains(11) && !r.contains(6));
        assert_eq!(r.len(), 4);
        r.remove(5);
        assert_eq!(r.to_vec(), vec![7, 9, 11]);
        r.remove(9);
        r.remove(42);
        assert_eq!(r.to_vec(), vec![7, 11]);
        r.push(3);
        assert_eq!(r.to_vec(), vec![7, 11, 3]);
        r.remove(7);
        r.remove(3);
        r.remove(11);
        assert!(r.is_empty() && r.iter().next().is_none());
        assert_eq!(RoomList::from(vec![1, 2, 3]).to_vec(), vec![1, 2, 3]);
        assert_eq!(std::mem::size_of::<Option<User>>(), 32);
    }
}
