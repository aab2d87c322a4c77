//! A room's members on this node, by connection token, in the form that costs least for the
//! room's size: what each membership costs is mostly this table's entry and slack.
//!
//! - `Small` (at most `SMALL` members): (token, member) pairs in join order, room for 4, 12,
//!   then 32. A room of ten holds 12 entries of 8 bytes (112 bytes with malloc's header),
//!   where the smallest hash table for ten took 176.
//! - `Hash`: keyed by token, as every room was. Tokens are assigned by the server, so no
//!   client can make them collide: no per-table seed.
//! - `Dense`: indexed by token, 4 bytes a token, for a room that most connections are in
//!   (`lobby`): a member costs 4 to 8 bytes (doubling growth; 6 at 10,000) instead of a hash
//!   entry's 8 and the table's slack (about 15 bytes a member at 10,000). Chosen when the
//!   hash table would grow and its tokens span at most twice its members; left when members
//!   fall below a quarter of the span, by a leave or by a join on a token past it, so that
//!   whatever tokens join, a table is never more than 16 bytes a member.
//!
//! Iteration (delivery, rosters) is in join order, hash order or token order; a client never
//! learns a room's internal order from anything but a roster's order, which was never sorted.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;

/// Member tables are keyed by connection token, which the server assigns: no client can pick
/// keys that collide, so they need no per-table random seed (16 bytes in every room).
type ByToken = BuildHasherDefault<DefaultHasher>;

/// `joined_at` of a member whose join is not in the current batch (30 bits: see `Member`).
pub const OLD: u32 = (1 << 30) - 1;

/// Most members a `Small` table holds; one more makes it a hash table.
pub const SMALL: usize = 32;
/// Fewest members a `Dense` table is made for.
const DENSE_MIN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Live = 0,
    Quiet = 1,
    Replay = 2,
}

/// A member on this node: 4 bytes, 8 with its token as the key, since this entry is what each
/// further room membership costs (and every connection has one, in `lobby`). Its id is the
/// user table's (`Users::by_token`), not a copy. Packed: the mode in the top 2 bits, and in
/// the low 30 the index of its join event in the room's current batch, or OLD (a turn has
/// far fewer events than 2^30: at most one per connection). All ones (mode 3) is no member:
/// an empty place in a `Dense` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member(u32);

const ABSENT: Member = Member(u32::MAX);

impl Member {
    pub fn new(joined_at: u32, mode: Mode) -> Member {
        Member(joined_at.min(OLD) | (mode as u32) << 30)
    }

    pub fn joined_at(self) -> u32 {
        self.0 & OLD
    }

    pub fn mode(self) -> Mode {
        match self.0 >> 30 {
            0 => Mode::Live,
            1 => Mode::Quiet,
            _ => Mode::Replay,
        }
    }

    pub fn set_mode(&mut self, mode: Mode) {
        *self = Member::new(self.joined_at(), mode);
    }

    pub fn set_old(&mut self) {
        *self = Member::new(OLD, self.mode());
    }
}

pub enum Members {
    Small(Vec<(u32, Member)>),
    Hash(HashMap<u32, Member, ByToken>),
    /// `len` of `slots` hold a member; the last slot always does.
    Dense {
        slots: Vec<Member>,
        len: usize,
    },
}

impl Default for Members {
    fn default() -> Self {
        Members::Small(Vec::new())
    }
}

impl Members {
    pub fn len(&self) -> usize {
        match self {
            Members::Small(v) => v.len(),
            Members::Hash(m) => m.len(),
            Members::Dense { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, token: u32) -> Option<&Member> {
        match self {
            Members::Small(v) => v.iter().find(|(t, _)| *t == token).map(|(_, m)| m),
            Members::Hash(m) => m.get(&token),
            Members::Dense { slots, .. } => slots.get(token as usize).filter(|m| **m != ABSENT),
        }
    }

    pub fn get_mut(&mut self, token: u32) -> Option<&mut Member> {
        match self {
            Members::Small(v) => v.iter_mut().find(|(t, _)| *t == token).map(|(_, m)| m),
            Members::Hash(m) => m.get_mut(&token),
            Members::Dense { slots, .. } => slots.get_mut(token as usize).filter(|m| **m != ABSENT),
        }
    }

    pub fn contains(&self, token: u32) -> bool {
        self.get(token).is_some()
    }

    /// Adds member `token`, or replaces its entry.
    pub fn insert(&mut self, token: u32, member: Member) {
        debug_assert!(member != ABSENT);
        if let Some(m) = self.get_mut(token) {
            *m = member;
            return;
        }
        match self {
            Members::Small(v) if v.len() < SMALL => {
                if v.len() == v.capacity() {
                    // 4, 12, then 32: a small room's table is most of what it costs, and each
                    // step leaves the last one's block behind as a hole in the heap (grown 4 at
                    // a time, a room of 100 left 8 of them: 12 bytes a member).
                    let next = if v.is_empty() {
                        4
                    } else if v.len() < 12 {
                        12
                    } else {
                        SMALL
                    };
                    v.reserve_exact(next - v.len());
                }
                v.push((token, member));
            }
            Members::Small(v) => {
                let mut m = HashMap::with_capacity_and_hasher(SMALL + 1, ByToken::default());
                m.extend(v.drain(..));
                m.insert(token, member);
                *self = Members::Hash(m);
            }
            Members::Hash(m) => {
                if m.len() == m.capacity() && m.len() >= DENSE_MIN {
                    let span = m.keys().copied().chain([token]).max().unwrap_or(0) as usize + 1;
                    if span <= 2 * (m.len() + 1) {
                        let len = m.len() + 1;
                        let mut slots = vec![ABSENT; span];
                        for (t, mm) in m.drain() {
                            slots[t as usize] = mm;
                        }
                        slots[token as usize] = member;
                        *self = Members::Dense { slots, len };
                        return;
                    }
                }
                m.insert(token, member);
            }
            Members::Dense { slots, len } => {
                let t = token as usize;
                if t >= 4 * (*len + 1) {
                    // Past four times its members the table would be mostly holes (a client
                    // on a high token joining a dense room): a hash table again, so that no
                    // table is ever more than 16 bytes a member.
                    let mut m = HashMap::with_capacity_and_hasher(*len + 1, ByToken::default());
                    m.extend(iter_dense(slots).map(|(t, mm)| (t, *mm)));
                    m.insert(token, member);
                    *self = Members::Hash(m);
                    return;
                }
                if t >= slots.len() {
                    // Doubled (Vec's own growth): grown by an eighth it saved 2 bytes a
                    // connection, but its trail of freed blocks (8 times its size) left holes
                    // that other rooms' tables pinned.
                    slots.resize(t + 1, ABSENT);
                }
                slots[t] = member;
                *len += 1;
            }
        }
    }

    /// Removes member `token`; whether it was one.
    pub fn remove(&mut self, token: u32) -> bool {
        match self {
            Members::Small(v) => {
                let Some(i) = v.iter().position(|(t, _)| *t == token) else { return false };
                // In order: a roster lists the members in join order.
                v.remove(i);
                if v.capacity() > 2 * v.len() + 4 {
                    v.shrink_to(v.len() + 4);
                }
                true
            }
            Members::Hash(m) => {
                if m.remove(&token).is_none() {
                    return false;
                }
                if m.len() <= SMALL / 2 {
                    let mut v = Vec::with_capacity(m.len() + 4);
                    v.extend(m.drain());
                    *self = Members::Small(v);
                }
                true
            }
            Members::Dense { slots, len } => {
                let Some(m) = slots.get_mut(token as usize).filter(|m| **m != ABSENT) else { return false };
                *m = ABSENT;
                *len -= 1;
                while slots.last() == Some(&ABSENT) {
                    slots.pop();
                }
                if *len < DENSE_MIN / 2 || *len * 4 < slots.len() {
                    let mut m = HashMap::with_capacity_and_hasher(*len, ByToken::default());
                    m.extend(iter_dense(slots).map(|(t, mm)| (t, *mm)));
                    *self = Members::Hash(m);
                } else if slots.capacity() > 4 * slots.len() + 16 {
                    // Only well past what doubling leaves, so that joins and leaves at the
                    // edge never copy the table back and forth.
                    slots.shrink_to(2 * slots.len());
                }
                true
            }
        }
    }

    /// A copy in a fresh allocation of the size its members need, for a table made or grown
    /// during a crowd's arrival (`Rooms::repack`); none for a `Dense` table (one per server
    /// at most, and large: glibc maps its own pages for it).
    pub fn packed(&self) -> Option<Members> {
        match self {
            Members::Small(v) => Some(Members::Small(v.to_vec())),
            Members::Hash(m) => {
                let mut n = HashMap::with_capacity_and_hasher(m.len(), ByToken::default());
                n.extend(m.iter().map(|(t, mm)| (*t, *mm)));
                Some(Members::Hash(n))
            }
            Members::Dense { .. } => None,
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter().map(|(t, _)| t)
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = (u32, &Member)> + '_> {
        match self {
            Members::Small(v) => Box::new(v.iter().map(|(t, m)| (*t, m))),
            Members::Hash(m) => Box::new(m.iter().map(|(t, m)| (*t, m))),
            Members::Dense { slots, .. } => Box::new(iter_dense(slots)),
        }
    }

    /// Calls `f` for every member: the delivery loop, without an iterator's boxing.
    pub fn for_each(&self, mut f: impl FnMut(u32, Member)) {
        match self {
            Members::Small(v) => v.iter().for_each(|(t, m)| f(*t, *m)),
            Members::Hash(m) => m.iter().for_each(|(t, m)| f(*t, *m)),
            Members::Dense { slots, .. } => iter_dense(slots).for_each(|(t, m)| f(t, *m)),
        }
    }

    /// Calls `f` for every member, which it may change.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(u32, &mut Member)) {
        match self {
            Members::Small(v) => v.iter_mut().for_each(|(t, m)| f(*t, m)),
            Members::Hash(m) => m.iter_mut().for_each(|(t, m)| f(*t, m)),
            Members::Dense { slots, .. } => {
                for (t, m) in slots.iter_mut().enumerate() {
                    if *m != ABSENT {
                        f(t as u32, m);
                    }
                }
            }
        }
    }
}

fn iter_dense(slots: &[Member]) -> impl Iterator<Item = (u32, &Member)> {
    slots.iter().enumerate().filter(|(_, m)| **m != ABSENT).map(|(t, m)| (t as u32, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_member_is_four_bytes_and_keeps_its_mode_and_join() {
        assert_eq!(std::mem::size_of::<Member>(), 4);
        let mut m = Member::new(5, Mode::Replay);
        assert_eq!((m.joined_at(), m.mode()), (5, Mode::Replay));
        m.set_old();
        m.set_mode(Mode::Quiet);
        assert_eq!((m.joined_at(), m.mode()), (OLD, Mode::Quiet));
        assert_eq!(Member::new(OLD, Mode::Live).mode(), Mode::Live);
        assert_ne!(Member::new(u32::MAX, Mode::Replay), ABSENT, "no member is the empty place");
    }

    /// Joins and leaves in a pseudo-random order, over token spans that take a table through
    /// every form; after each step the table agrees with a plain map.
    #[test]
    fn every_form_agrees_with_a_map() {
        let mut x: u64 = 11;
        let mut rnd = |n: u64| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        for (span, steps) in [(20, 400), (60, 2000), (300, 6000), (5000, 6000)] {
            let (mut t, mut want) = (Members::default(), BTreeMap::new());
            let mut forms = [false; 3];
            for step in 0..steps {
                // Mostly joins for the first half, mostly leaves for the second.
                let join = rnd(10) < if step < steps / 2 { 8 } else { 3 };
                let tok = rnd(span) as u32;
                if join {
                    let m = Member::new(step, Mode::Live);
                    t.insert(tok, m);
                    want.insert(tok, m);
                } else {
                    assert_eq!(t.remove(tok), want.remove(&tok).is_some());
                }
                forms[match t {
                    Members::Small(_) => 0,
                    Members::Hash(_) => 1,
                    Members::Dense { .. } => 2,
                }] = true;
                assert_eq!(t.len(), want.len());
                let mut got: Vec<(u32, Member)> = t.iter().map(|(k, m)| (k, *m)).collect();
                got.sort_by_key(|(k, _)| *k);
                assert_eq!(got, want.iter().map(|(k, m)| (*k, *m)).collect::<Vec<_>>());
                assert_eq!(t.contains(tok), want.contains_key(&tok));
            }
            if span == 300 {
                assert!(forms.iter().all(|f| *f), "span {span}: {forms:?}");
            }
        }
    }

    #[test]
    fn a_far_token_never_stretches_a_dense_table() {
        let mut t = Members::default();
        for tok in 0..200 {
            t.insert(tok, Member::new(0, Mode::Live));
        }
        assert!(matches!(t, Members::Dense { .. }));
        t.insert(1_000_000, Member::new(0, Mode::Live));
        assert!(matches!(t, Members::Hash(_)), "a hash table again, not 4 MB of holes");
        assert_eq!((t.len(), t.contains(1_000_000), t.contains(199)), (201, true, true));
    }

    #[test]
    fn a_packed_table_has_the_same_members_in_a_block_of_their_size() {
        for n in [3u32, 10, 100] {
            let mut t = Members::default();
            for tok in 0..n {
                t.insert(tok * 7, Member::new(tok, Mode::Quiet));
            }
            let p = t.packed().expect("a small or hash table");
            let list = |t: &Members| {
                let mut v: Vec<(u32, Member)> = t.iter().map(|(k, m)| (k, *m)).collect();
                if n > SMALL as u32 {
                    v.sort_by_key(|(k, _)| *k); // hash order is no order
                }
                v
            };
            assert_eq!((list(&p), p.len()), (list(&t), n as usize));
            match p {
                Members::Small(v) => assert_eq!(v.capacity(), n as usize, "in join order, no slack"),
                Members::Hash(m) => assert!(m.capacity() < 2 * n as usize),
                Members::Dense { .. } => panic!("no dense table from a hash table"),
            }
        }
        let mut d = Members::default();
        for tok in 0..200 {
            d.insert(tok, Member::new(0, Mode::Live));
        }
        assert!(matches!(d, Members::Dense { .. }) && d.packed().is_none());
    }

    #[test]
    fn a_small_table_lists_in_join_order() {
        let mut t = Members::default();
        for tok in [9, 3, 7, 1] {
            t.insert(tok, Member::new(0, Mode::Live));
        }
        t.remove(3);
        assert_eq!(t.keys().collect::<Vec<_>>(), vec![9, 7, 1]);
    }
}
