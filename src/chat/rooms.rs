//! Rooms: who is in each (here and on other nodes), presence per room, and the directory.
//!
//! A room exists while it has members anywhere; the last leave removes it. Rooms live in a
//! slab (a user's memberships are slab keys, so leaving all rooms at disconnect is a lookup
//! per membership, not a scan of every room) with a name index beside it.
//!
//! Presence is batched per room and per loop turn: a room's joins and leaves of one turn are
//! one shared buffer, and each local member gets the part of it after their own join. Above
//! `presence_limit` members a room goes quiet; crossing the limit either way sends every
//! member one `users` line (the list, capped, and the true total) instead of that turn's
//! events, so nobody keeps a list that the events stopped keeping up to date.

use crate::chat::Sink;
use crate::protocol::{self, RoomSize};
use bytes::Bytes;
use slab::Slab;
use std::collections::HashMap;
use std::rc::Rc;

/// `joined_at` of a member whose join is not in the current batch.
const OLD: u32 = u32::MAX;

/// A member on this node.
struct Member {
    /// The id as typed, shared with the user table and the session.
    id: Rc<str>,
    /// Index of this member's join event in the room's current batch, or OLD.
    joined_at: u32,
}

pub struct Room {
    pub name: Rc<str>,
    /// Members on this node, by connection token.
    local: HashMap<u32, Member>,
    /// Members on other nodes: id key → id as typed.
    remote: HashMap<Rc<str>, Rc<str>>,
    /// This turn's presence lines, separated by `\n`.
    events: Vec<u8>,
    /// Start of each event in `events`.
    starts: Vec<usize>,
    /// Whether the room was above the presence limit at its last flush.
    was_quiet: bool,
}

impl Room {
    fn new(name: Rc<str>) -> Room {
        Room {
            name,
            local: HashMap::new(),
            remote: HashMap::new(),
            events: Vec::new(),
            starts: Vec::new(),
            was_quiet: false,
        }
    }

    /// Members on every node.
    pub fn len(&self) -> usize {
        self.local.len() + self.remote.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn local_len(&self) -> usize {
        self.local.len()
    }

    /// Every member's id, local ones first.
    fn ids(&self) -> impl Iterator<Item = &str> {
        self.local.values().map(|m| &*m.id).chain(self.remote.values().map(|id| &**id))
    }

    /// Records a presence event; returns its index in this turn's batch.
    fn record(&mut self, joined: bool, id: &str) -> u32 {
        if !self.starts.is_empty() {
            self.events.push(b'\n');
        }
        self.starts.push(self.events.len());
        protocol::presence_into(&mut self.events, joined, &self.name, id);
        (self.starts.len() - 1) as u32
    }
}

/// What a join of a local member changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Joined {
    pub key: usize,
    /// The member was not in the room before.
    pub new: bool,
    /// The member is the room's first on this node (a cluster node subscribes then).
    pub first_local: bool,
}

#[derive(Default)]
pub struct Rooms {
    slab: Slab<Room>,
    by_name: HashMap<Rc<str>, usize>,
    /// Rooms with presence events this turn (a key may repeat; a flushed room has none left).
    dirty: Vec<usize>,
}

impl Rooms {
    /// Rooms that exist (with members on any node).
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    pub fn key(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn room(&self, key: usize) -> &Room {
        &self.slab[key]
    }

    /// The room `name`, created if need be.
    fn open(&mut self, name: &str) -> usize {
        if let Some(k) = self.by_name.get(name) {
            return *k;
        }
        let name: Rc<str> = Rc::from(name);
        let key = self.slab.insert(Room::new(Rc::clone(&name)));
        self.by_name.insert(name, key);
        key
    }

    fn close_if_empty(&mut self, key: usize) {
        if self.slab[key].is_empty() {
            let room = self.slab.remove(key);
            self.by_name.remove(&room.name);
        }
    }

    fn record(&mut self, key: usize, joined: bool, id: &str) -> u32 {
        let room = &mut self.slab[key];
        if room.starts.is_empty() {
            self.dirty.push(key);
        }
        room.record(joined, id)
    }

    /// Local member `token` (id `id`) joins room `name`, which is created if need be.
    pub fn join_local(&mut self, name: &str, token: u32, id: &Rc<str>) -> Joined {
        let key = self.open(name);
        if self.slab[key].local.contains_key(&token) {
            return Joined { key, new: false, first_local: false };
        }
        let joined_at = self.record(key, true, id);
        let room = &mut self.slab[key];
        room.local.insert(token, Member { id: Rc::clone(id), joined_at });
        Joined { key, new: true, first_local: room.local.len() == 1 }
    }

    /// Local member `token` leaves room `key`. Returns whether it was the room's last member
    /// on this node; a room left with no members anywhere is gone.
    pub fn leave_local(&mut self, key: usize, token: u32) -> bool {
        let Some(room) = self.slab.get_mut(key) else { return false };
        let Some(m) = room.local.remove(&token) else { return false };
        let last = room.local.is_empty();
        self.record(key, false, &m.id);
        self.close_if_empty(key);
        last
    }

    /// A user on another node (`ukey` its id key) joins room `name`. Returns the room's key.
    pub fn join_remote(&mut self, name: &str, ukey: &Rc<str>, id: &Rc<str>) -> usize {
        let key = self.open(name);
        if !self.slab[key].remote.contains_key(ukey) {
            self.record(key, true, id);
            self.slab[key].remote.insert(Rc::clone(ukey), Rc::clone(id));
        }
        key
    }

    /// A user on another node leaves room `key`.
    pub fn leave_remote(&mut self, key: usize, ukey: &str) {
        let Some(room) = self.slab.get_mut(key) else { return };
        if let Some(id) = room.remote.remove(ukey) {
            self.record(key, false, &id);
            self.close_if_empty(key);
        }
    }

    /// Whether connection `token` is a member of room `key`.
    pub fn has_local(&self, key: usize, token: u32) -> bool {
        self.slab.get(key).is_some_and(|r| r.local.contains_key(&token))
    }

    /// Queues `line` to every local member of room `key`.
    pub fn deliver(&self, key: usize, line: &Bytes, sink: &mut impl Sink) {
        if let Some(room) = self.slab.get(key) {
            for token in room.local.keys() {
                sink.push(*token as usize, line);
            }
        }
    }

    /// Room `key`'s members for `id`: `id` first, at most `limit` ids; and how many there are.
    pub fn listing<'a>(&'a self, key: usize, id: &'a str, limit: usize) -> (Vec<&'a str>, usize) {
        let room = &self.slab[key];
        let others = room.ids().filter(|m| *m != id).take(limit.saturating_sub(1));
        (std::iter::once(id).chain(others).collect(), room.len())
    }

    /// The `joined` line for `id` (see `listing`).
    pub fn roster(&self, key: usize, id: &str, limit: usize) -> Bytes {
        let (ids, total) = self.listing(key, id, limit);
        protocol::joined(&self.slab[key].name, ids.into_iter(), total)
    }

    /// Every room with its name.
    pub fn names(&self) -> impl Iterator<Item = (&str, &Room)> {
        self.slab.iter().map(|(_, r)| (&*r.name, r))
    }

    /// The directory: at most `limit` rooms, the largest first (ties by name), and how many
    /// rooms there are.
    pub fn directory(&self, limit: usize) -> Bytes {
        let mut all: Vec<RoomSize<'_>> =
            self.slab.iter().map(|(_, r)| RoomSize { room: &r.name, users: r.len() }).collect();
        let by_size = |a: &RoomSize<'_>, b: &RoomSize<'_>| b.users.cmp(&a.users).then(a.room.cmp(b.room));
        if all.len() > limit {
            all.select_nth_unstable_by(limit, by_size);
            all.truncate(limit);
        }
        all.sort_by(by_size);
        protocol::rooms(&all, self.slab.len())
    }

    /// Sends this turn's joins and leaves, room by room; call once at the end of every turn.
    pub fn flush_presence(&mut self, limit: usize, sink: &mut impl Sink) {
        for key in std::mem::take(&mut self.dirty) {
            let Some(room) = self.slab.get_mut(key) else { continue };
            if room.starts.is_empty() {
                continue; // flushed already (a repeated key), or a new room in a reused slot
            }
            let batch = Bytes::from(std::mem::take(&mut room.events));
            let quiet = room.len() > limit;
            let truth = (quiet != room.was_quiet).then(|| {
                let ids = room.local.values().map(|m| &*m.id).chain(room.remote.values().map(|id| &**id));
                protocol::users(&room.name, ids.take(limit), room.len())
            });
            room.was_quiet = quiet;
            for (token, m) in room.local.iter_mut() {
                let from = if m.joined_at == OLD { 0 } else { m.joined_at as usize + 1 };
                m.joined_at = OLD;
                if let Some(line) = &truth {
                    sink.push(*token as usize, line);
                } else if !quiet && from < room.starts.len() {
                    sink.push(*token as usize, &batch.slice(room.starts[from]..));
                }
            }
            room.starts.clear();
        }
    }

    /// Returns memory (when the server has gone idle).
    pub fn shrink(&mut self) {
        self.slab.shrink_to_fit();
        self.by_name.shrink_to_fit();
        self.dirty.shrink_to_fit();
    }
}
