//! Rooms: who is in each (here and on other nodes), presence per room, and the directory.
//!
//! A room exists while it has members anywhere; the last leave removes it. Rooms live in a
//! slab (a user's memberships are slab keys, so leaving all rooms at disconnect is a lookup
//! per membership, not a scan of every room) with a name index beside it.
//!
//! Presence is batched per room and per loop turn: a room's joins and leaves of one turn are
//! one shared buffer, and each local member gets the part of it after their own join. Above
//! `presence_limit` members a room goes quiet, and loud again an eighth below it (`loud_below`);
//! either change sends every member one `users` line (the list, capped, and the true total)
//! instead of that turn's events, so nobody keeps a list that the events stopped keeping up
//! to date.

use crate::chat::Sink;
use crate::chat::members::{Member, Members, Mode, OLD};
use crate::chat::users::Users;
use crate::protocol::{self, Listing, Presence, RoomSize};
use bytes::Bytes;
use hashbrown::HashTable;
use slab::Slab;
use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::rc::Rc;

/// How far a quiet room must shrink to be loud again: an eighth below the limit (at least one
/// member), so that one id leaving and coming back at the limit does not send every member
/// the whole list each time (a 3.8 KB `users` line per request at the default 256).
fn loud_below(limit: usize) -> usize {
    limit - (limit / 8).max(1).min(limit)
}

/// Most member entries (and directory entries) `Rooms::repack` copies a call: under a
/// millisecond of the loop's time, however many rooms there are.
const REPACK_BUDGET: usize = 1 << 14;

/// Characters in an epoch (`history::new_epoch`).
const EPOCH_LEN: usize = 8;

/// Whether a local member gets the room's messages as they come. A member stores only which
/// kind (`Mode`); a replay's position lives in `Rooms::cursors`, since few members are ever
/// catching up and every member's entry is paid for by every membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Live,
    /// Restored by a resume: a member (it may send, others see it), but nothing is delivered
    /// until it asks with a join, so that what it asks to replay never arrives twice.
    Quiet,
    /// Catching up from history: the next message to send it is this one (see `Chat::pump`).
    Replay(u64),
}

/// Members that are not connected here. Boxed: a room of a single server has none most of
/// the time, and every room would pay for two empty maps.
#[derive(Default)]
struct Elsewhere {
    /// Members on other nodes: id key → id as typed.
    remote: HashMap<Rc<str>, Rc<str>>,
    /// Members of this node whose connection was lost, in their resume grace: still members
    /// (listed, counted, no leave announced), but with no connection to deliver to.
    away: HashMap<Rc<str>, Rc<str>>,
}

/// This turn's presence lines. Boxed, and only while the turn has any.
#[derive(Default)]
struct Batch {
    /// The lines, separated by `\n`.
    events: Vec<u8>,
    /// Start of each event in `events`.
    starts: Vec<usize>,
}

/// 72 bytes (it was 216 with the maps and buffers inline), so that a room of ten costs its
/// members little beyond their own entries.
pub struct Room {
    pub name: Rc<str>,
    /// The epoch `joined` names while the room has no history log (no message yet): a room
    /// gets a log with its first message, not with its first member, so a quiet room costs no
    /// log. The log starts in this epoch (`Chat::log_of`), so what members were told holds.
    /// Its 8 characters inline (`new_epoch`'s), not a block of 32 bytes.
    epoch: [u8; EPOCH_LEN],
    /// Members on this node, by connection token (`members.rs`: the form that fits its size).
    local: Members,
    elsewhere: Option<Box<Elsewhere>>,
    batch: Option<Box<Batch>>,
    /// Whether the room was above the presence limit at its last flush.
    was_quiet: bool,
    /// Whether the room is in `Rooms::orphans` (listed once, however often it is orphaned).
    orphan: bool,
    /// Its size as `Rooms::by_size` has it (0: not in it).
    listed: u32,
}

impl Room {
    fn new(name: Rc<str>) -> Room {
        let mut epoch = [0u8; EPOCH_LEN];
        let fresh = crate::chat::history::new_epoch();
        epoch.copy_from_slice(&fresh.as_bytes()[..EPOCH_LEN]);
        Room {
            name,
            epoch,
            local: Members::default(),
            elsewhere: None,
            batch: None,
            was_quiet: false,
            orphan: false,
            listed: 0,
        }
    }

    /// The epoch its members are told while it has no log (see `epoch`).
    pub fn epoch(&self) -> &str {
        // Copied whole from a base64url `str` (`new`), so always UTF-8.
        std::str::from_utf8(&self.epoch).unwrap_or_default()
    }

    fn away_len(&self) -> usize {
        self.elsewhere.as_ref().map_or(0, |e| e.away.len())
    }

    fn remote_len(&self) -> usize {
        self.elsewhere.as_ref().map_or(0, |e| e.remote.len())
    }

    fn elsewhere_mut(&mut self) -> &mut Elsewhere {
        self.elsewhere.get_or_insert_with(Box::default)
    }

    /// Removes `ukey` from the away (`away`) or remote members; drops the box once empty.
    fn take_elsewhere(&mut self, ukey: &str, away: bool) -> Option<(Rc<str>, Rc<str>)> {
        let e = self.elsewhere.as_mut()?;
        let taken = if away { e.away.remove_entry(ukey) } else { e.remote.remove_entry(ukey) };
        if e.away.is_empty() && e.remote.is_empty() {
            self.elsewhere = None;
        }
        taken
    }

    /// Members on every node, those in their resume grace included.
    pub fn len(&self) -> usize {
        self.local.len() + self.away_len() + self.remote_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Members of this node, connected or in their grace: while there are any, the node
    /// needs the room's traffic.
    pub fn local_len(&self) -> usize {
        self.local.len() + self.away_len()
    }

    /// Held only by members in their resume grace: nobody connected anywhere is in it.
    fn orphaned(&self) -> bool {
        self.local.is_empty() && self.remote_len() == 0 && self.away_len() > 0
    }

    /// Every member's id, local ones first (`users` has the local ones), with whether it is
    /// away (in its resume grace here).
    fn ids<'a>(&'a self, users: &'a Users) -> impl Iterator<Item = (&'a str, bool)> {
        let local = self.local.keys().filter_map(|t| users.by_token(t).map(|u| (&*u.id, false)));
        let e = self.elsewhere.as_deref();
        let here = local.chain(e.into_iter().flat_map(|e| e.away.values().map(|id| (&**id, true))));
        here.chain(e.into_iter().flat_map(|e| e.remote.values().map(|id| (&**id, false))))
    }

    /// At most `limit` members, `first` (if given) ahead of the rest.
    fn listing<'a>(&'a self, first: Option<&'a str>, limit: usize, users: &'a Users) -> Listing<'a> {
        let (mut listed, mut away) = (Vec::new(), Vec::new());
        listed.extend(first);
        let others = self.ids(users).filter(|(m, _)| Some(*m) != first);
        for (id, is_away) in others.take(limit.saturating_sub(listed.len())) {
            listed.push(id);
            if is_away {
                away.push(id);
            }
        }
        Listing { users: listed, away, total: self.len() }
    }

    /// Records a presence event; returns its index in this turn's batch.
    fn record(&mut self, joined: Presence, id: &str) -> u32 {
        let b = self.batch.get_or_insert_with(Box::default);
        if !b.starts.is_empty() {
            b.events.push(b'\n');
        }
        b.starts.push(b.events.len());
        protocol::presence_into(&mut b.events, joined, &self.name, id);
        (b.starts.len() - 1) as u32
    }
}

/// What a join of a local member changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Joined {
    pub key: usize,
    /// The member is the room's first on this node (a cluster node subscribes then).
    pub first_local: bool,
}

#[derive(Default)]
pub struct Rooms {
    slab: Slab<Room>,
    /// Slab keys by room name: 4-byte buckets that hash and compare the name in the slab (a
    /// map keyed by `Rc<str>` would hold 24 bytes a bucket, at up to twice as many buckets as
    /// rooms).
    by_name: HashTable<u32>,
    names_hasher: RandomState,
    /// Rooms with presence events this turn (a key may repeat; a flushed room has none left).
    dirty: Vec<usize>,
    /// Members catching up from history, (room key, token), and where each is: the next seq
    /// to send it. Exactly the members in `Mode::Replay`.
    cursors: HashMap<(usize, u32), u64>,
    /// Rooms removed since the caller last asked (their history's clock starts).
    pub closed: Vec<Rc<str>>,
    /// Rooms that became orphaned (only members in their grace), oldest first: the first to
    /// go when `--max-rooms` is reached (`evict_orphan`). An entry may be stale (the room has
    /// a connected member again, or its slab key went to another room); it is checked when
    /// popped, and the list is rebuilt when stale entries outnumber the rooms.
    orphans: VecDeque<u32>,
    /// Every room by size, largest first, ties by name: the directory reads its first entries
    /// instead of sorting every room per request, which a crowd asking for it would make the
    /// loop's main work (`reindex` keeps it, at O(log rooms) per membership change).
    by_size: BTreeSet<(Reverse<u32>, Rc<str>)>,
    /// The slab key `repack` goes on from.
    repack_from: usize,
}

/// A room given up for a connected user's join: its members, all in their grace, are no
/// longer in it.
pub struct Evicted {
    /// Its slab key (free again now).
    pub key: u32,
    pub name: Rc<str>,
    /// (id key, id as typed) of each member.
    pub members: Vec<(Rc<str>, Rc<str>)>,
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
        let hash = self.names_hasher.hash_one(name);
        self.by_name.find(hash, |k| *self.slab[*k as usize].name == *name).map(|k| *k as usize)
    }

    pub fn room(&self, key: usize) -> &Room {
        &self.slab[key]
    }

    /// The room `name`, created if need be.
    fn open(&mut self, name: &str) -> usize {
        if let Some(k) = self.key(name) {
            return k;
        }
        let hash = self.names_hasher.hash_one(name);
        let key = self.slab.insert(Room::new(Rc::from(name)));
        let (slab, hasher) = (&self.slab, &self.names_hasher);
        self.by_name.insert_unique(hash, key as u32, |k| hasher.hash_one(&*slab[*k as usize].name));
        key
    }

    fn close_if_empty(&mut self, key: usize) {
        if self.slab[key].is_empty() {
            let hash = self.names_hasher.hash_one(&*self.slab[key].name);
            if let Ok(entry) = self.by_name.find_entry(hash, |k| *k as usize == key) {
                entry.remove();
            }
            let room = self.slab.remove(key);
            self.by_size.remove(&(Reverse(room.listed), Rc::clone(&room.name)));
            self.closed.push(room.name);
        }
    }

    /// Brings room `key`'s entry in `by_size` up to its size; call after every change of it.
    fn reindex(&mut self, key: usize) {
        let Some(room) = self.slab.get_mut(key) else { return };
        let len = room.len() as u32;
        if len == room.listed {
            return;
        }
        if room.listed > 0 {
            self.by_size.remove(&(Reverse(room.listed), Rc::clone(&room.name)));
        }
        if len > 0 {
            self.by_size.insert((Reverse(len), Rc::clone(&room.name)));
        }
        room.listed = len;
    }

    fn record(&mut self, key: usize, joined: Presence, id: &str) -> u32 {
        let room = &mut self.slab[key];
        if room.batch.is_none() {
            self.dirty.push(key);
        }
        room.record(joined, id)
    }

    /// Local member `token` (id `id`) joins room `name`, which is created if need be.
    pub fn join_local(&mut self, name: &str, token: u32, id: &str) -> Joined {
        let key = self.open(name);
        if self.slab[key].local.contains(token) {
            return Joined { key, first_local: false };
        }
        let joined_at = self.record(key, Presence::Join, id);
        let room = &mut self.slab[key];
        room.local.insert(token, Member::new(joined_at, Mode::Live));
        let first_local = room.local_len() == 1;
        self.reindex(key);
        Joined { key, first_local }
    }

    /// Local member `token` of room `key` lost its connection: it stays a member (`ukey` its
    /// id key, `id` as typed), without a connection and without a presence event.
    pub fn set_away(&mut self, key: usize, token: u32, ukey: &Rc<str>, id: &Rc<str>) {
        self.cursors.remove(&(key, token));
        if let Some(room) = self.slab.get_mut(key)
            && room.local.remove(token)
        {
            room.elsewhere_mut().away.insert(Rc::clone(ukey), Rc::clone(id));
            self.record(key, Presence::Away, id);
            self.reindex(key);
            self.note_orphan(key);
        }
    }

    /// Lists room `key` in `orphans` if it has just become orphaned.
    fn note_orphan(&mut self, key: usize) {
        let Some(room) = self.slab.get_mut(key) else { return };
        if room.orphan || !room.orphaned() {
            return;
        }
        room.orphan = true;
        self.orphans.push_back(key as u32);
        if self.orphans.len() > 2 * self.slab.len() + 64 {
            // Mostly stale: rebuild from the rooms, so the list stays within twice their count
            // (amortized: it takes more pushes than there are rooms to get here again).
            self.orphans.clear();
            for (k, r) in self.slab.iter_mut() {
                r.orphan = r.orphaned();
                if r.orphan {
                    self.orphans.push_back(k as u32);
                }
            }
        }
    }

    /// Removes the room that has been orphaned longest, if any: for a connected user's join
    /// at `--max-rooms`, since a hold is a courtesy to a user who may never come back and must
    /// not keep the living out. No presence event (nobody connected is in it to hear one).
    pub fn evict_orphan(&mut self) -> Option<Evicted> {
        while let Some(k) = self.orphans.pop_front() {
            let key = k as usize;
            let Some(room) = self.slab.get_mut(key) else { continue };
            if !room.orphan {
                continue; // another room in a reused slot, listed under its own entry if at all
            }
            room.orphan = false;
            if !room.orphaned() {
                continue; // someone is connected in it again
            }
            let members = room.elsewhere.take().map(|e| e.away.into_iter().collect()).unwrap_or_default();
            let name = Rc::clone(&room.name);
            self.close_if_empty(key);
            return Some(Evicted { key: k, name, members });
        }
        None
    }

    /// A member in its grace is back on connection `token`: quiet until it asks (see `Flow`).
    /// `announce`: the others get `back` (a resume here); not for a member that moved from
    /// another node, which they never saw away.
    pub fn set_back(&mut self, key: usize, ukey: &str, token: u32, announce: bool) {
        if let Some(room) = self.slab.get_mut(key)
            && let Some((_, id)) = room.take_elsewhere(ukey, true)
        {
            // Its own `back` is recorded before it is a member again, and is not for it.
            let at = if announce { self.record(key, Presence::Back, &id) + 1 } else { OLD };
            self.slab[key].local.insert(token, Member::new(at, Mode::Quiet));
            self.reindex(key);
        }
    }

    /// A member moves between nodes without leaving (a resume on another node), with no
    /// presence event: `ukey` on another node becomes a member of this node in its grace
    /// (`to_remote` false; `set_back` then gives it its connection), or the reverse. Returns
    /// whether it moved.
    pub fn shift(&mut self, key: usize, ukey: &str, to_remote: bool) -> bool {
        let Some(room) = self.slab.get_mut(key) else { return false };
        let Some((k, id)) = room.take_elsewhere(ukey, to_remote) else { return false };
        let e = room.elsewhere_mut();
        if to_remote {
            e.remote.insert(k, id)
        } else {
            e.away.insert(k, id)
        };
        self.reindex(key);
        self.note_orphan(key);
        true
    }

    /// A member's grace ended: it leaves for good (the leave is announced now). Returns
    /// whether the room has no member of this node left.
    pub fn leave_away(&mut self, key: usize, ukey: &str) -> bool {
        let Some(room) = self.slab.get_mut(key) else { return false };
        let Some((_, id)) = room.take_elsewhere(ukey, true) else { return false };
        let last = room.local_len() == 0;
        self.record(key, Presence::Leave, &id);
        self.reindex(key);
        self.close_if_empty(key);
        last
    }

    /// Local member `token` of room `key` gets a roster now (a join again): of this turn's
    /// presence events it gets only those recorded after this, like a member that just joined.
    pub fn seen_until_now(&mut self, key: usize, token: u32) {
        let Some(room) = self.slab.get_mut(key) else { return };
        let recorded = room.batch.as_ref().map_or(0, |b| b.starts.len() as u32);
        if let Some(m) = room.local.get_mut(token) {
            let mode = m.mode();
            *m = Member::new(recorded.checked_sub(1).unwrap_or(OLD), mode);
        }
    }

    /// How local member `token` of room `key` gets the room's messages.
    pub fn flow(&self, key: usize, token: u32) -> Option<Flow> {
        let m = self.slab.get(key)?.local.get(token)?;
        Some(match m.mode() {
            Mode::Live => Flow::Live,
            Mode::Quiet => Flow::Quiet,
            Mode::Replay => Flow::Replay(self.cursors.get(&(key, token)).copied().unwrap_or(0)),
        })
    }

    /// Members catching up from history: (room key, token).
    pub fn replaying(&self) -> Vec<(usize, u32)> {
        self.cursors.keys().copied().collect()
    }

    /// Sets how local member `token` gets the room's messages; a replay is pumped from the
    /// end of this turn on.
    pub fn set_flow(&mut self, key: usize, token: u32, flow: Flow) {
        if let Some(m) = self.slab.get_mut(key).and_then(|r| r.local.get_mut(token)) {
            m.set_mode(match flow {
                Flow::Live => Mode::Live,
                Flow::Quiet => Mode::Quiet,
                Flow::Replay(next) => {
                    self.cursors.insert((key, token), next);
                    Mode::Replay
                }
            });
            if m.mode() != Mode::Replay {
                self.cursors.remove(&(key, token));
            }
        }
    }

    /// Local member `token` (id `id`) leaves room `key`. Returns whether it was the room's
    /// last member on this node; a room left with no members anywhere is gone.
    pub fn leave_local(&mut self, key: usize, token: u32, id: &str) -> bool {
        let Some(room) = self.slab.get_mut(key) else { return false };
        if !room.local.remove(token) {
            return false;
        }
        self.cursors.remove(&(key, token));
        let last = room.local_len() == 0;
        self.record(key, Presence::Leave, id);
        self.reindex(key);
        self.close_if_empty(key);
        self.note_orphan(key);
        last
    }

    /// A user on another node (`ukey` its id key) joins room `name`. Returns the room's key.
    pub fn join_remote(&mut self, name: &str, ukey: &Rc<str>, id: &Rc<str>) -> usize {
        let key = self.open(name);
        if self.slab[key].elsewhere.as_ref().is_none_or(|e| !e.remote.contains_key(ukey)) {
            self.record(key, Presence::Join, id);
            self.slab[key].elsewhere_mut().remote.insert(Rc::clone(ukey), Rc::clone(id));
            self.reindex(key);
        }
        key
    }

    /// A user on another node leaves room `key`.
    pub fn leave_remote(&mut self, key: usize, ukey: &str) {
        let Some(room) = self.slab.get_mut(key) else { return };
        if let Some((_, id)) = room.take_elsewhere(ukey, false) {
            self.record(key, Presence::Leave, &id);
            self.reindex(key);
            self.close_if_empty(key);
            self.note_orphan(key);
        }
    }

    /// Whether connection `token` is a member of room `key`.
    pub fn has_local(&self, key: usize, token: u32) -> bool {
        self.slab.get(key).is_some_and(|r| r.local.contains(token))
    }

    /// Queues `line` to every local member of room `key` that takes live traffic (one
    /// catching up from history gets it from there, in order).
    pub fn deliver(&self, key: usize, line: &Bytes, sink: &mut impl Sink) {
        if let Some(room) = self.slab.get(key) {
            room.local.for_each(|token, m| {
                if m.mode() == Mode::Live {
                    sink.push(token as usize, line);
                }
            });
        }
    }

    /// Room `key`'s members for `id`: `id` first, at most `limit` ids, those away among them,
    /// and how many there are.
    pub fn listing<'a>(&'a self, key: usize, id: &'a str, limit: usize, users: &'a Users) -> Listing<'a> {
        self.slab[key].listing(Some(id), limit, users)
    }

    /// The `joined` line for `id` (see `listing`), with the room's latest `seq` and `epoch`.
    pub fn roster(&self, key: usize, id: &str, limit: usize, seq: u64, epoch: &str, users: &Users) -> Bytes {
        protocol::joined(&self.slab[key].name, self.listing(key, id, limit, users), seq, epoch)
    }

    /// Every room with its name.
    pub fn names(&self) -> impl Iterator<Item = (&str, &Room)> {
        self.slab.iter().map(|(_, r)| (&*r.name, r))
    }

    /// Every room, the largest first (ties by name): (name, members, away members).
    pub fn sizes(&self) -> impl Iterator<Item = (&str, usize, usize)> {
        self.by_size.iter().map(|(Reverse(n), name)| {
            let away = self.key(name).map_or(0, |k| self.slab[k].away_len());
            (&**name, *n as usize, away)
        })
    }

    /// Room `key`'s members, at most `limit` of them listed (the backend API's view).
    pub fn members<'a>(&'a self, key: usize, limit: usize, users: &'a Users) -> Listing<'a> {
        self.slab[key].listing(None, limit, users)
    }

    /// The directory: at most `limit` rooms, the largest first (ties by name), and how many
    /// rooms there are; with `only` (a token's `rooms` claim), only the rooms it lets
    /// through, and how many of those there are.
    pub fn directory(&self, limit: usize, only: Option<&dyn Fn(&str) -> bool>) -> Bytes {
        let listed = |name: &str| only.is_none_or(|f| f(name));
        let top: Vec<RoomSize<'_>> = self
            .by_size
            .iter()
            .filter(|(_, name)| listed(name))
            .take(limit)
            .map(|(Reverse(n), name)| {
                let away = self.key(name).map_or(0, |k| self.slab[k].away_len());
                RoomSize { room: name, users: *n as usize, away }
            })
            .collect();
        let total = match only {
            None => self.slab.len(),
            Some(_) => self.by_size.iter().filter(|(_, name)| listed(name)).count(),
        };
        protocol::rooms(&top, total)
    }

    /// Sends this turn's joins and leaves, room by room; call once at the end of every turn.
    pub fn flush_presence(&mut self, limit: usize, users: &Users, sink: &mut impl Sink) {
        for key in std::mem::take(&mut self.dirty) {
            let Some(room) = self.slab.get_mut(key) else { continue };
            let Some(b) = room.batch.take() else {
                continue; // flushed already (a repeated key), or a new room in a reused slot
            };
            let Batch { events, starts } = *b;
            let batch = Bytes::from(events);
            let quiet = room.len() > if room.was_quiet { loud_below(limit) } else { limit };
            let truth = (quiet != room.was_quiet)
                .then(|| protocol::users(&room.name, room.listing(None, limit, users)));
            room.was_quiet = quiet;
            room.local.for_each_mut(|token, m| {
                let from = if m.joined_at() == OLD { 0 } else { m.joined_at() as usize + 1 };
                m.set_old();
                if m.mode() == Mode::Quiet {
                    return; // restored by a resume: its `joined` will tell it who is here
                }
                if let Some(line) = &truth {
                    sink.push(token as usize, line);
                } else if !quiet && from < starts.len() {
                    sink.push(token as usize, &batch.slice(starts[from]..));
                }
            });
        }
    }

    /// Moves member tables and the directory's nodes to fresh allocations, for the heap trim
    /// after a crowd's arrival (`server/heap.rs`): made or grown during it, amid short-lived
    /// lines, each kept a page of them resident (at 10,000 connections in rooms of 10, about
    /// 380 KiB of free heap stayed resident around these blocks). All copies are made before
    /// any old block is freed, so that a copy never takes its own old block's place. At most
    /// `REPACK_BUDGET` entries a call, from where the last call stopped.
    pub fn repack(&mut self) {
        let (mut budget, mut fresh) = (REPACK_BUDGET, Vec::new());
        let slots = self.slab.capacity();
        for _ in 0..slots {
            let k = if self.repack_from < slots { self.repack_from } else { 0 };
            // A table past half the budget stays as it is: rare, and big enough to be pages
            // of its own.
            let size = self.slab.get(k).map_or(0, |r| r.local.len());
            let cost = if size <= REPACK_BUDGET / 2 { size + 1 } else { 1 };
            if cost > budget {
                break;
            }
            budget -= cost;
            self.repack_from = k + 1;
            if cost > 1 {
                fresh.extend(self.slab.get(k).and_then(|r| r.local.packed()).map(|m| (k, m)));
            }
        }
        let dir = (self.by_size.len() <= budget)
            .then(|| self.by_size.iter().cloned().collect::<BTreeSet<(Reverse<u32>, Rc<str>)>>());
        for (k, m) in fresh {
            self.slab[k].local = m;
        }
        if let Some(dir) = dir {
            self.by_size = dir;
        }
    }

    /// Returns memory (when the server has gone idle).
    pub fn shrink(&mut self) {
        self.slab.shrink_to_fit();
        let (slab, hasher) = (&self.slab, &self.names_hasher);
        self.by_name.shrink_to_fit(|k| hasher.hash_one(&*slab[*k as usize].name));
        self.dirty.shrink_to_fit();
        self.cursors.shrink_to_fit();
        self.orphans.shrink_to_fit();
        // by_size is a B-tree: it gives nodes back as it shrinks.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_room_and_a_member_are_small() {
        // The numbers ARCHITECTURE.md's memory table gives for a room (`members.rs` pins a
        // membership's).
        assert_eq!(std::mem::size_of::<Members>(), 40);
        assert_eq!(std::mem::size_of::<Room>(), 88);
    }

    /// Repacking, however often, changes no member, flow, small room's roster order or
    /// directory entry; each call copies at most its budget, and the calls go round every room.
    #[test]
    fn repacking_changes_nothing_but_where_tables_are() {
        let mut r = Rooms::default();
        let n = 20_000u32;
        let ids: Vec<Rc<str>> = (0..n).map(|i| Rc::from(format!("u{i}"))).collect();
        // A dense room, a hash room, rooms of ten and of one: more entries than one call's budget.
        for t in 0..n {
            let room = match t {
                0..1000 => "big".to_string(),
                1000..1100 => "hundred".to_string(),
                1100..19100 => format!("ten{}", t % 1800),
                _ => format!("one{t}"),
            };
            r.join_local(&room, t, &ids[t as usize]);
        }
        let hundred = r.key("hundred").unwrap();
        r.set_flow(hundred, 1005, Flow::Replay(42));
        let state = |r: &Rooms| {
            let mut rooms: Vec<(String, Vec<u32>)> = r
                .names()
                .map(|(n, room)| {
                    let mut m: Vec<u32> = room.local.keys().collect();
                    if room.local.len() > crate::chat::members::SMALL {
                        m.sort();
                    }
                    (n.to_string(), m)
                })
                .collect();
            rooms.sort();
            (rooms, r.directory(5000, None))
        };
        let grown = |r: &Rooms| {
            let slack = |room: &Room| matches!(&room.local, Members::Small(v) if v.capacity() > v.len());
            r.names().filter(|(_, room)| slack(room)).count()
        };
        let before = state(&r);
        assert_eq!(grown(&r), 1800 + 900, "grown 4, then 12 (ten); 4 (one)");
        r.repack();
        assert!((1..2700).contains(&grown(&r)), "one call within its budget: {}", grown(&r));
        for _ in 0..3 {
            r.repack();
            assert_eq!(state(&r), before);
        }
        assert_eq!(grown(&r), 0, "every room was reached");
        assert_eq!(r.flow(hundred, 1005), Some(Flow::Replay(42)));
        assert_eq!(r.flow(hundred, 1006), Some(Flow::Live));
        let ten = r.join_local("ten7", n, &Rc::from("late")).key;
        assert_eq!(r.room(ten).len(), 11, "a packed table grows as before");
    }

    #[test]
    fn members_elsewhere_come_and_go_without_leaving_an_empty_box() {
        let mut r = Rooms::default();
        let (ukey, id): (Rc<str>, Rc<str>) = (Rc::from("bob"), Rc::from("Bob"));
        let j = r.join_local("dev", 1, &id);
        r.set_away(j.key, 1, &ukey, &id);
        assert_eq!((r.room(j.key).len(), r.room(j.key).local_len()), (1, 1));
        assert!(r.shift(j.key, "bob", true), "to another node");
        assert_eq!((r.room(j.key).len(), r.room(j.key).local_len()), (1, 0));
        r.leave_remote(j.key, "bob");
        assert_eq!(r.key("dev"), None, "its last member gone, the room is gone");
        let k = r.join_remote("ops", &ukey, &id);
        assert!(r.room(k).elsewhere.is_some());
        let k2 = r.join_local("ops", 2, &Rc::from("al"));
        assert_eq!(k, k2.key);
        r.leave_remote(k, "bob");
        assert!(r.room(k).elsewhere.is_none(), "emptied, the box is freed");
        assert_eq!(r.room(k).len(), 1);
    }

    #[test]
    fn the_directory_index_agrees_with_sorting_every_room() {
        // Joins, leaves, holds and remote members in a pseudo-random order; after each step
        // the indexed directory equals a sort of every room by (size desc, name).
        let mut r = Rooms::default();
        let mut x: u64 = 7;
        let mut rnd = |n: u64| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % n
        };
        let ids: Vec<Rc<str>> = (0..40).map(|i| Rc::from(format!("u{i}"))).collect();
        for _ in 0..3000 {
            let (room, who) = (format!("r{}", rnd(12)), rnd(40) as usize);
            let (t, id) = (who as u32, &ids[who]);
            match rnd(5) {
                0 | 1 => {
                    r.join_local(&room, t, id);
                }
                2 => {
                    if let Some(k) = r.key(&room) {
                        r.leave_local(k, t, id);
                    }
                }
                3 => {
                    r.join_remote(&room, &Rc::from(format!("x{who}")), id);
                }
                _ => {
                    if let Some(k) = r.key(&room) {
                        r.leave_remote(k, &format!("x{who}"));
                        r.set_away(k, t, id, id);
                    }
                }
            }
            let mut all: Vec<(usize, String, usize)> =
                r.names().map(|(n, room)| (room.len(), n.to_string(), room.away_len())).collect();
            all.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let entry = |(n, name, away): &(usize, String, usize)| match away {
                0 => format!(r#"{{"room":"{name}","users":{n}}}"#),
                a => format!(r#"{{"room":"{name}","users":{n},"away":{a}}}"#),
            };
            let want: Vec<String> = all.iter().take(5).map(entry).collect();
            let got = String::from_utf8(r.directory(5, None).to_vec()).unwrap();
            assert!(got.contains(&format!("[{}]", want.join(","))), "{got} vs {want:?}");
        }
    }
}
