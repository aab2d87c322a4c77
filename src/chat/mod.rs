//! Users by id, rooms, private routing, and presence.
//!
//! Chat never touches a socket: it pushes encoded lines to connections through a [`Sink`],
//! which the server implements over its outboxes (and the tests over a Vec). Ids are unique
//! ignoring ASCII case and confusable characters; the maps are keyed by `ids::key` and keep
//! the id as typed.
//!
//! Every session starts in the room `lobby`; `rooms` keeps who is in which room and sends
//! presence per room. A room message is encoded once and queued by reference to every
//! member, so coalescing still works across rooms: a client in three busy rooms gets one frame
//! per flush.
//!
//! With a cluster, users on other nodes are kept in a second map (`remote`), with the rooms
//! they are in: they appear in rosters, presence and the directory, and a private message to
//! one comes back as [`Outcome::Remote`] for the server to forward. Chat itself never talks
//! to Redis.

pub mod backlog;
pub mod fetch;
pub mod history;
pub mod ids;
pub mod moved;
mod private;
pub mod resume;
pub mod rooms;
pub mod users;

use crate::protocol::{self, ErrorCode, Incoming, LOBBY, Replay};
use backlog::Budget;
use bytes::Bytes;
use history::History;
use ids::{Secret, key};
use resume::{Away, Claim, Holds, Kept, Private};
use rooms::{Flow, Rooms};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;
use std::time::Instant;
use users::{User, Users};

/// Where chat lines go. `token` names a connection.
pub trait Sink {
    /// Queues a line the recipient must get (room, presence, replies); a recipient that
    /// cannot hold it is the sink's to judge.
    fn push(&mut self, token: usize, line: &Bytes);
    /// Queues a line only if the recipient can take it now; false means it was not queued and
    /// the cost falls on whoever sent it (a private message to a busy recipient).
    fn offer(&mut self, token: usize, line: &Bytes) -> bool;
}

/// What a client frame turned into, for the caller's counters, logs and the cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered to room `room`'s local members; other nodes still need `line`.
    Room {
        room: Rc<str>,
        line: Bytes,
        /// The client's id for the message (`cid`), for an error about it later.
        cid: Option<Rc<str>>,
    },
    /// For Redis to number (a cluster with the link up): nothing was delivered yet. `template`
    /// is the line with seq 0; the caller hands the numbered line to `deliver_numbered`.
    Number {
        room: Rc<str>,
        template: Bytes,
        cid: Option<Rc<str>>,
    },
    Private,
    /// For a user on another node: nothing was queued, not even the sender's copy, which the
    /// caller sends once the message is on its way.
    Remote {
        node: Rc<str>,
        to: Rc<str>,
        line: Bytes,
        cid: Option<Rc<str>>,
    },
    /// The sender joined `room` (`first_local`: the first member on this node, so the node
    /// must start hearing the room's traffic from other nodes).
    Joined {
        room: Rc<str>,
        first_local: bool,
    },
    /// The sender left `room` (`last_local`: this node has no member left in it).
    Left {
        room: Rc<str>,
        last_local: bool,
    },
    /// Answered and nothing else to do (the directory, a join of a room already joined).
    Answered,
    Refused(ErrorCode),
}

/// The limits chat enforces and announces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Ids listed per roster, and members above which a room's presence goes quiet.
    pub presence_limit: usize,
    /// Unicode scalar values per text.
    pub max_text: usize,
    /// Messages per second (for the welcome; the server enforces it).
    pub rate_limit: u32,
    /// Rooms on the server.
    pub max_rooms: usize,
    /// Rooms one connection is in, `lobby` included.
    pub max_rooms_per_user: usize,
    /// Messages kept per room (`--history`), bytes kept in all (`--history-bytes`), and how
    /// long a room's history outlives its last member (`--history-ttl`).
    pub history: usize,
    pub history_bytes: usize,
    pub history_ttl: Duration,
    /// Users held in their grace at once (`--max-holds`); past it the oldest hold ends early.
    pub max_holds: usize,
    /// Bytes of private backlogs kept in all (`--backlog-bytes`, see `backlog`).
    pub backlog_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            presence_limit: 256,
            max_text: 1000,
            rate_limit: 20,
            max_rooms: 10_000,
            max_rooms_per_user: 32,
            history: 100,
            history_bytes: 64 << 20,
            history_ttl: Duration::from_secs(300),
            max_holds: 10_000,
            backlog_bytes: 64 << 20,
        }
    }
}

/// A user on another node.
struct Remote {
    id: Rc<str>,
    node: Rc<str>,
    rooms: Vec<u32>,
}

pub struct Chat {
    /// Local users, by connection token and by id key.
    users: Users,
    /// Users on other nodes, keyed like `users`. Never holds a local user's key.
    remote: HashMap<Rc<str>, Remote>,
    pub rooms: Rooms,
    pub history: History,
    /// Set by the server while the cluster is configured but unreachable (from start-up until
    /// the link is up, and from each failure until it is up again): sends that need
    /// another node are refused with `cluster_unavailable`, and ids are checked against the
    /// last known remote roster since Redis cannot be asked.
    pub cluster_down: bool,
    limits: Limits,
    /// Users whose connection was lost, in their grace (see `resume`).
    pub holds: Holds,
    /// Part of a cluster: while its link is up (`!cluster_down`) Redis numbers room messages,
    /// so that every node gives them the same seq and epoch (`handle` returns
    /// `Outcome::Number`).
    pub clustered: bool,
    /// Joins waiting for Redis's history of their room, for the server to send (see `fetch`).
    pub fetches: Vec<fetch::Fetch>,
    /// Private messages kept for users in their grace, for the server to keep in Redis too.
    pub kept_away: Vec<moved::KeptAway>,
    /// Memberships of users in their grace given up with an orphaned room (id, room), for the
    /// server to announce to other nodes (see `Rooms::evict_orphan`).
    pub evicted: Vec<(Rc<str>, Rc<str>)>,
    /// Rooms given up so far for a connected user's join at `--max-rooms`.
    pub rooms_evicted: u64,
    /// Every private backlog's charge (`--backlog-bytes`).
    pub backlog: Budget,
    /// Connections whose next ping should come by then, carrying their latest `pseq`: they
    /// have lines to acknowledge (see `backlog`). For the server to act on at the end of the
    /// turn.
    pub want_ack: Vec<(usize, Instant)>,
    pub counters: Counters,
    /// Holds ended early by `lose` (`--max-holds`), with the lines for their senders, for the
    /// server to send, log and announce at the end of the turn.
    pub ended_early: Vec<(Gone, Vec<(usize, Bytes)>)>,
}

/// What the bounds on holds and backlogs did, for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Holds whose grace ended early to make room under `--max-holds`.
    pub holds_ended_early: u64,
    /// Kept private lines taken out of the largest backlog to make room in the budget (each
    /// reported to its sender).
    pub backlog_dropped: u64,
}

/// Holds ended by one `Chat::expire` call at most (see there).
const EXPIRE_BATCH: usize = 1024;

/// A user whose grace ended without a resume: gone for good now.
pub struct Gone {
    pub id: Rc<str>,
    /// Rooms that have no member of this node left.
    pub emptied: Vec<Rc<str>>,
}

impl Chat {
    pub fn new(limits: Limits) -> Self {
        Chat {
            users: Users::default(),
            remote: HashMap::new(),
            rooms: Rooms::default(),
            history: History::new(limits.history, limits.history_bytes, limits.history_ttl),
            cluster_down: false,
            limits,
            holds: Holds::default(),
            clustered: false,
            fetches: Vec::new(),
            kept_away: Vec::new(),
            evicted: Vec::new(),
            rooms_evicted: 0,
            backlog: Budget::new(limits.backlog_bytes),
            want_ack: Vec::new(),
            counters: Counters::default(),
            ended_early: Vec::new(),
        }
    }

    /// Local users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Users on other nodes, as far as this node knows.
    pub fn remote_len(&self) -> usize {
        self.remote.len()
    }

    /// Whether `id` could join here, presenting `presented`, as far as this node can tell:
    /// valid, not local, not held for someone else, and (while the cluster is down) not known
    /// on another node. Returns its key.
    pub fn check(&self, id: &str, presented: Option<&Secret>, now: Instant) -> Result<String, ErrorCode> {
        if !protocol::valid_id(id) {
            return Err(ErrorCode::BadId);
        }
        let k = key(id);
        if self.users.contains(id)
            || self.holds.refuses(&k, presented, now)
            || (self.cluster_down && self.remote.contains_key(k.as_str()))
        {
            return Err(ErrorCode::IdTaken);
        }
        Ok(k)
    }

    /// Claims `id` for `token` and queues its welcome (the lobby's roster, the limits, and
    /// `secret` as the next resume token); returns the id to keep for the session and whether
    /// it resumed. A new user is put in the lobby. One presenting the secret of a user in its
    /// grace (`presented`) is that user again: its rooms are restored (quiet until it asks
    /// for each with a join), and its private messages after `pseq` follow the welcome.
    /// Fails with `bad_id` or `id_taken`. With a cluster, Redis has already granted the id,
    /// so a stale remote entry for it (a user who moved here) is dropped.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        id: &str,
        token: usize,
        secret: &Secret,
        presented: Option<&Secret>,
        pseq: u64,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Result<(Rc<str>, bool), ErrorCode> {
        // The server ends an expired hold before it claims the id (`begin_join`); one that
        // ran out while Redis was asked ends here (a cluster's leave for it then waits for
        // the next roster).
        let _ = self.end_expired(id, now, sink);
        let k = self.check(id, presented, now)?;
        if let Some(r) = self.remote.remove(k.as_str()) {
            for room in r.rooms {
                self.rooms.leave_remote(room as usize, &k);
            }
        }
        let back = match self.holds.claim(&k, presented, now) {
            Claim::Back(away) => Some(away),
            _ => None,
        };
        let (shared, rooms, private) = match back {
            Some(away) => {
                for room in &away.rooms {
                    self.rooms.set_back(*room as usize, &k, token as u32, true);
                }
                (away.id, away.rooms.into(), Some(Box::new(away.private)))
            }
            None => {
                let shared: Rc<str> = Rc::from(id);
                let lobby = self.rooms.join_local(LOBBY, token as u32, &shared);
                self.history.set_idle(LOBBY, None);
                let mut rooms = users::RoomList::default();
                rooms.push(lobby.key as u32);
                (shared, rooms, None)
            }
        };
        let resumed = private.is_some();
        let welcome = self.welcome(&shared, secret, resumed);
        sink.push(token, &welcome);
        let mut private = private;
        if let Some(p) = &mut private {
            // The client has everything up to `pseq`; the rest goes again, in order, and is
            // kept until acknowledged.
            p.asked = false;
            self.backlog.ack(&shared, p, pseq);
            for kept in &p.kept {
                sink.push(token, &kept.line);
            }
            if !p.kept.is_empty() {
                self.want_ack.push((token, now + backlog::ACK_DELAY));
            }
        }
        self.users.insert(token as u32, User { id: Rc::clone(&shared), rooms, private });
        Ok((shared, resumed))
    }

    /// The first line of a session: who it is, who is in the lobby (those away among them),
    /// its limits and its resume token. One builder for every way in (`join`, `take_over`).
    fn welcome(&self, id: &str, secret: &Secret, resumed: bool) -> Bytes {
        let limit = self.limits.presence_limit;
        let listing = match self.rooms.key(LOBBY) {
            Some(lobby) => self.rooms.listing(lobby, id, limit, &self.users),
            None => protocol::Listing { users: vec![id], away: Vec::new(), total: 1 },
        };
        protocol::welcome(&protocol::Welcome {
            id,
            users: listing.users,
            away: listing.away,
            total: listing.total,
            max_text: self.limits.max_text,
            rate_limit: self.limits.rate_limit,
            burst: 2 * self.limits.rate_limit,
            resume: &ids::token_text(secret),
            resumed,
        })
    }

    /// `id` (on connection `token`) lost its connection: it is held under `secret` until
    /// `until`, still a member of its rooms, with no presence event. Past `--max-holds`, the
    /// hold whose grace ends first ends now, as if its grace had passed (its senders are told
    /// what it never got): returned for the server to log and announce. The newest hold is
    /// kept, since its user is the likeliest to come back. The hold ended is gone from chat
    /// at once (its id free, its rooms left); what it tells senders waits in `ended_early`.
    pub fn lose(&mut self, id: &str, secret: Secret, until: Instant) {
        let Some((token, mut u)) = self.users.remove(id) else { return };
        let ukey: Rc<str> = Rc::from(key(id));
        for room in u.rooms.iter() {
            self.rooms.set_away(room as usize, token, &ukey, &u.id);
        }
        let mut private = u.private.take().map_or_else(Private::default, |p| *p);
        private.asked = false;
        if self.holds.len() >= self.limits.max_holds.max(1)
            && let Some((k, away)) = self.holds.take_oldest()
        {
            self.counters.holds_ended_early += 1;
            let mut told = Collect::default();
            let gone = self.end_hold(&k, away, &mut told);
            self.ended_early.push((gone, told.0));
        }
        self.holds.hold(ukey, Away { id: u.id, secret, until, rooms: u.rooms.to_vec(), private });
    }

    /// Ends the holds whose grace has passed: their users leave their rooms (announced now),
    /// and the local senders of private messages they never got are told (`undelivered`).
    /// At most `EXPIRE_BATCH` a call, so a crowd's graces ending together do not stall a
    /// turn; the server calls again at once while `expired_left` says so.
    pub fn expire(&mut self, now: Instant, sink: &mut impl Sink) -> Vec<Gone> {
        let ended = self.holds.expire(now, EXPIRE_BATCH);
        ended.into_iter().map(|(ukey, away)| self.end_hold(&ukey, away, sink)).collect()
    }

    /// Ends `id`'s hold now if its grace has passed and the once-a-second sweep has not come
    /// by yet: before the id is taken again, or the new user's own hold would replace the old
    /// one and leave the old user a member of its rooms for good.
    pub fn end_expired(&mut self, id: &str, now: Instant, sink: &mut impl Sink) -> Option<Gone> {
        let k = key(id);
        let away = self.holds.take_expired(&k, now)?;
        Some(self.end_hold(&k, away, sink))
    }

    /// Whether holds whose grace has passed are still waiting for `expire`.
    pub fn expired_left(&self, now: Instant) -> bool {
        self.holds.next_until().is_some_and(|t| t <= now)
    }

    fn end_hold(&mut self, ukey: &str, mut away: Away, sink: &mut impl Sink) -> Gone {
        let mut emptied = Vec::new();
        for room in &away.rooms {
            let name = Rc::clone(&self.rooms.room(*room as usize).name);
            if self.rooms.leave_away(*room as usize, ukey) {
                emptied.push(name);
            }
        }
        // Each sender hears which of its messages were never acknowledged (one the old
        // connection took but never acknowledged may have been read; the pongs make that
        // rare). The acknowledged tail was there only for a resume.
        for kept in self.backlog.release_unacked(&away.id, &mut away.private) {
            self.undelivered(&kept, &away.id, sink);
        }
        Gone { id: away.id, emptied }
    }

    /// Reserves the user table for connection tokens below `n` (address space only, until
    /// used; see `users`).
    pub fn reserve(&mut self, n: usize) {
        self.users.reserve(n);
    }

    /// Returns the tables' memory (when the server has gone idle).
    pub fn shrink(&mut self) {
        self.users.shrink();
        self.remote.shrink_to_fit();
        self.rooms.shrink();
        self.history.shrink();
        self.holds.shrink();
        self.want_ack.shrink_to_fit();
    }

    /// Frees `id` at once, so it can be claimed again in the same turn, and takes it out of
    /// every room. Returns the rooms this node no longer has any member in.
    pub fn leave(&mut self, id: &str) -> Vec<Rc<str>> {
        let mut emptied = Vec::new();
        if let Some((token, mut u)) = self.users.remove(id) {
            if let Some(p) = &mut u.private {
                // It closed itself: what it read, it read.
                self.backlog.release(&u.id, p);
            }
            for room in u.rooms.iter() {
                let name = Rc::clone(&self.rooms.room(room as usize).name);
                if self.rooms.leave_local(room as usize, token, &u.id) {
                    emptied.push(name);
                }
            }
        }
        emptied
    }

    /// The keys of every local user, those in their grace included (for registering them in
    /// Redis: a held id stays ours cluster-wide).
    pub fn local_keys(&self) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
        let live = self.users.iter().map(|(_, u)| std::borrow::Cow::Owned(key(&u.id)));
        live.chain(self.holds.keys().map(std::borrow::Cow::Borrowed))
    }

    /// Every local user as typed (those in their grace too), with the names of the rooms it
    /// is in (for a roster).
    pub fn local_members(&self) -> Vec<(&str, Vec<&str>)> {
        let name = |r: u32| &*self.rooms.room(r as usize).name;
        let live = self.users.iter().map(|(_, u)| (&*u.id, u.rooms.iter().map(name).collect()));
        live.chain(self.holds.iter().map(|(_, a)| (&*a.id, a.rooms.iter().map(|r| name(*r)).collect())))
            .collect()
    }

    /// Local users, those in their grace included, and their memberships in all (for a
    /// heartbeat's consistency check).
    pub fn local_counts(&self) -> (usize, usize) {
        let live: usize = self.users.iter().map(|(_, u)| u.rooms.len()).sum();
        let away: usize = self.holds.iter().map(|(_, a)| a.rooms.len()).sum();
        (self.users.len() + self.holds.len(), live + away)
    }

    /// Rooms with at least one local member (a node hears the traffic of these).
    pub fn local_rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.names().filter_map(|(name, room)| (room.local_len() > 0).then_some(name))
    }

    /// The id of the local user on connection `token`, if any.
    pub fn id_of(&self, token: usize) -> Option<&Rc<str>> {
        self.users.by_token(token as u32).map(|u| &u.id)
    }

    /// The connection of local user `id`, if any.
    pub fn token_of(&self, id: &str) -> Option<usize> {
        self.users.get(id).map(|(t, _)| t as usize)
    }

    /// `id` is on `node`. A local user of that id wins: Redis gave it to us, so the remote
    /// news is stale or a conflict that re-registration will settle.
    pub fn remote_join(&mut self, node: &str, id: &str) {
        if !protocol::valid_id(id) {
            return;
        }
        if self.users.contains(id) {
            return;
        }
        let k = key(id);
        match self.remote.get_mut(k.as_str()) {
            Some(r) if &*r.node == node && &*r.id == id => {}
            Some(_) => {
                // Moved, or renamed in case: start over from what `node` says next.
                self.remote_forget(&k);
                self.remote_join(node, id);
            }
            None => {
                let r = Remote { id: Rc::from(id), node: Rc::from(node), rooms: Vec::new() };
                self.remote.insert(Rc::from(k), r);
            }
        }
    }

    /// `id` on `node` joined (`joined`) or left room `room`. A join of an unknown user makes
    /// it known (an event may overtake the user's own join).
    pub fn remote_room(&mut self, node: &str, id: &str, room: &str, joined: bool) {
        let Some(room) = protocol::room_name(room) else { return };
        if joined {
            self.remote_join(node, id);
        }
        let k = key(id);
        let Some((ukey, r)) = self.remote.get_key_value(k.as_str()) else { return };
        if &*r.node != node {
            return;
        }
        let (ukey, rid) = (Rc::clone(ukey), Rc::clone(&r.id));
        let at = self.rooms.key(&room).filter(|rk| r.rooms.contains(&(*rk as u32)));
        match (joined, at) {
            (true, None) => {
                if self.rooms.len() >= self.limits.max_rooms && self.rooms.key(&room).is_none() {
                    return; // over our own limit: this node does not track more rooms
                }
                let rk = self.rooms.join_remote(&room, &ukey, &rid);
                self.remote.get_mut(&*ukey).expect("known").rooms.push(rk as u32);
            }
            (false, Some(rk)) => {
                self.rooms.leave_remote(rk, &ukey);
                self.remote.get_mut(&*ukey).expect("known").rooms.retain(|x| *x != rk as u32);
            }
            _ => {}
        }
    }

    /// `id` left `node` (and every room); ignored if we know it on another node since.
    pub fn remote_leave(&mut self, node: &str, id: &str) {
        let k = key(id);
        if self.remote.get(k.as_str()).is_some_and(|r| &*r.node == node) {
            self.remote_forget(&k);
        }
    }

    fn remote_forget(&mut self, k: &str) {
        if let Some(r) = self.remote.remove(k) {
            for room in r.rooms {
                self.rooms.leave_remote(room as usize, k);
            }
        }
    }

    /// Everyone on `node` with their rooms, replacing what we knew: joins and leaves for the
    /// difference.
    pub fn remote_roster(&mut self, node: &str, members: &[(&str, Vec<&str>)]) {
        let listed: std::collections::HashSet<String> = members.iter().map(|(i, _)| key(i)).collect();
        let gone: Vec<Rc<str>> = self
            .remote
            .iter()
            .filter(|(k, r)| &*r.node == node && !listed.contains(&***k))
            .map(|(_, r)| Rc::clone(&r.id))
            .collect();
        for id in gone {
            self.remote_leave(node, &id);
        }
        for (id, rooms) in members {
            self.remote_join(node, id);
            let k = key(id);
            let Some(r) = self.remote.get(k.as_str()).filter(|r| &*r.node == node) else { continue };
            let wanted: Vec<String> =
                rooms.iter().filter_map(|n| protocol::room_name(n).map(String::from)).collect();
            let stale: Vec<Rc<str>> = r
                .rooms
                .iter()
                .map(|rk| Rc::clone(&self.rooms.room(*rk as usize).name))
                .filter(|n| !wanted.iter().any(|w| **w == **n))
                .collect();
            for room in stale {
                self.remote_room(node, id, &room, false);
            }
            for room in &wanted {
                self.remote_room(node, id, room, true);
            }
        }
    }

    /// `node` is gone: so are its users.
    pub fn drop_node(&mut self, node: &str) {
        self.remote_roster(node, &[]);
    }

    /// How many users, and memberships, we believe `node` has.
    pub fn count_on(&self, node: &str) -> (usize, usize) {
        self.remote.values().filter(|r| &*r.node == node).fold((0, 0), |(u, m), r| (u + 1, m + r.rooms.len()))
    }

    /// A room line numbered by Redis in `epoch` (from another node), for the local members
    /// of `room`; kept in the room's history.
    pub fn deliver_room(&mut self, room: &str, epoch: &str, line: &Bytes, sink: &mut impl Sink) {
        let Some(seq) = crate::protocol::line_seq(line) else { return };
        self.deliver_numbered(room, epoch, seq, line, None, sink);
    }

    /// Keeps and delivers `line`, message `seq` of `room` in `epoch`. `sender` (connection and
    /// cid) gets its own copy tagged with its cid.
    pub fn deliver_numbered(
        &mut self,
        room: &str,
        epoch: &str,
        seq: u64,
        line: &Bytes,
        sender: Option<(usize, Option<&str>)>,
        sink: &mut impl Sink,
    ) {
        self.history.insert(room, epoch, seq, line);
        let Some(rk) = self.rooms.key(room) else { return };
        match sender {
            Some((token, Some(cid))) => self.rooms.deliver(rk, line, &mut Tagged { inner: sink, token, cid }),
            _ => self.rooms.deliver(rk, line, sink),
        }
    }

    /// A message Redis did not number (the link failed first): numbered here, in an epoch of
    /// this node's own, and delivered to the local members. Returns the line.
    pub fn number_here(
        &mut self,
        room: &str,
        template: &Bytes,
        sender: usize,
        cid: Option<&str>,
        sink: &mut impl Sink,
    ) -> Bytes {
        if let Some(rk) = self.rooms.key(room) {
            self.log_of(rk);
        }
        self.history.fork(room);
        let line = self.history.append(room, |seq| protocol::with_seq(template, seq));
        if let Some(rk) = self.rooms.key(room) {
            match cid {
                Some(cid) => self.rooms.deliver(rk, &line, &mut Tagged { inner: sink, token: sender, cid }),
                None => self.rooms.deliver(rk, &line, sink),
            }
        }
        line
    }

    /// A private line (the sender's copy) from another node for local user `to`:
    /// `unknown_recipient` if `to` is not here, `recipient_busy` if its queue cannot take it
    /// now, `undelivered` if it is away and no more can be kept for it.
    pub fn deliver_private(
        &mut self,
        from: &str,
        to: &str,
        line: &Bytes,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Result<(), ErrorCode> {
        self.deliver_to(&key(to), from, None, line, now, sink)
    }

    /// Numbers `line` (the sender's copy of a private message from `from`, `cid` its id for
    /// the message) for local user `k`, connected or away, and delivers it and keeps it
    /// until acknowledged. No room to keep it (the recipient's own bounds, or the budget with
    /// nothing left to take from larger backlogs): refused, `recipient_busy` if connected
    /// (it is not acknowledging), `undelivered` if away.
    fn deliver_to(
        &mut self,
        k: &str,
        from: &str,
        cid: Option<&str>,
        line: &Bytes,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Result<(), ErrorCode> {
        let cid: Option<Rc<str>> = cid.map(|c| Rc::from(&c[..c.len().min(backlog::CID_MAX)]));
        let (owner, pseq, token) = if let Some((t, u)) = self.users.get_mut(k) {
            let p = u.private.get_or_insert_with(Box::default);
            (Rc::clone(&u.id), p.pseq + 1, Some(t as usize))
        } else if let Some(a) = self.holds.get_mut(k, now) {
            (Rc::clone(&a.id), a.private.pseq + 1, None)
        } else {
            return Err(ErrorCode::UnknownRecipient);
        };
        let refusal = if token.is_some() { ErrorCode::RecipientBusy } else { ErrorCode::Undelivered };
        let copy = protocol::with_pseq(line, pseq);
        let kept = Kept { pseq, line: copy.clone(), from: Rc::from(from), cid };
        let cost = kept.cost();
        let room = private::private_of(&mut self.users, &mut self.holds, k, now).is_some_and(|p| {
            self.backlog.make_room_in(&owner, p, cost);
            p.has_room(cost)
        });
        if !room || !self.make_room(cost, sink) {
            return Err(refusal);
        }
        if let Some(t) = token {
            // The recipient is judged by what it does, not by what others send it: if it
            // cannot take this now, the sender hears so and nobody is disconnected.
            if !sink.offer(t, &copy) {
                return Err(ErrorCode::RecipientBusy);
            }
        }
        let Some(p) = private::private_of(&mut self.users, &mut self.holds, k, now) else {
            return Err(refusal);
        };
        p.number();
        let from = Rc::clone(&kept.from);
        self.backlog.keep(&owner, p, kept);
        if let Some(t) = token {
            if !p.asked {
                let due = if p.urgent() { now } else { now + backlog::ACK_DELAY };
                self.want_ack.push((t, due.max(p.asked_at.map_or(now, |a| a + backlog::ACK_SPACING))));
            }
        } else if self.clustered {
            // In Redis too, for a resume on another node (see `moved`).
            self.kept_away.push(moved::KeptAway { to: owner, pseq, copy, from, line: line.clone() });
        }
        Ok(())
    }

    /// Routes one client text frame from `from` (connection `token`), stamped with `ts`.
    /// With a `cid`, every line this frame sends its sender (its own copy, an answer, an
    /// error) carries it.
    pub fn handle(
        &mut self,
        token: usize,
        from: &str,
        frame: &str,
        ts: u64,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Outcome {
        let (msg, cid) = match protocol::decode_why(frame) {
            Ok(m) => m,
            Err(why) => return refuse(sink, token, protocol::bad_message(&why), ErrorCode::BadMessage),
        };
        let Some(cid) = cid else { return self.route(token, from, msg, None, ts, now, sink) };
        // What the caller reports on later (the cluster, when Redis answers) carries the cid.
        match self.route(token, from, msg, Some(&cid), ts, now, &mut Tagged { inner: sink, token, cid: &cid })
        {
            Outcome::Room { room, line, .. } => Outcome::Room { room, line, cid: Some(Rc::from(&*cid)) },
            Outcome::Number { room, template, .. } => {
                Outcome::Number { room, template, cid: Some(Rc::from(&*cid)) }
            }
            Outcome::Remote { node, to, line, .. } => {
                Outcome::Remote { node, to, line, cid: Some(Rc::from(&*cid)) }
            }
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn route(
        &mut self,
        token: usize,
        from: &str,
        msg: Incoming<'_>,
        cid: Option<&str>,
        ts: u64,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Outcome {
        match msg {
            Incoming::Say { room, text } => {
                let text = match self.text_ok(&text) {
                    Ok(t) => t,
                    Err(code) => return refuse(sink, token, protocol::error(code, None), code),
                };
                let rk = match self.member_of(token, room.as_deref().unwrap_or(LOBBY)) {
                    Ok(rk) => rk,
                    Err((code, line)) => return refuse(sink, token, line, code),
                };
                let room = Rc::clone(&self.rooms.room(rk).name);
                if self.clustered && !self.cluster_down {
                    let template = protocol::room_message(&room, 0, from, text, ts);
                    return Outcome::Number { room, template, cid: None };
                }
                self.log_of(rk);
                if self.cluster_down {
                    // Numbered here while Redis is away: in an epoch of this node's own.
                    self.history.fork(&room);
                }
                let line =
                    self.history.append(&room, |seq| protocol::room_message(&room, seq, from, text, ts));
                self.rooms.deliver(rk, &line, sink);
                Outcome::Room { room, line, cid: None }
            }
            Incoming::Private { to, text } => {
                if !protocol::valid_id(&to) {
                    // A `to` that names nobody could be (`""`, `"a b"`) is a client bug, not a
                    // room message: refusing it keeps private text private.
                    let why = "to: not an id (1 to 32 characters from A-Z a-z 0-9 _ - .)";
                    return refuse(sink, token, protocol::bad_message(why), ErrorCode::BadMessage);
                }
                let text = match self.text_ok(&text) {
                    Ok(t) => t,
                    Err(code) => return refuse(sink, token, protocol::error(code, None), code),
                };
                self.private(token, from, &to, text, cid, ts, now, sink)
            }
            Incoming::Join { room, replay } => self.join_room(token, from, &room, &replay, sink),
            Incoming::Leave(name) => {
                let rk = match self.member_of(token, &name) {
                    Ok(rk) => rk,
                    Err((code, line)) => return refuse(sink, token, line, code),
                };
                let room = Rc::clone(&self.rooms.room(rk).name);
                let Some((_, u)) = self.users.get_mut(from) else { return Outcome::Answered };
                u.rooms.remove(rk as u32);
                let last_local = self.rooms.leave_local(rk, token as u32, &u.id);
                sink.push(token, &protocol::left(&room));
                Outcome::Left { room, last_local }
            }
            Incoming::Rooms => {
                sink.push(token, &self.rooms.directory(self.limits.presence_limit));
                Outcome::Answered
            }
        }
    }

    /// The key of room `name` if connection `token` is a member; else the error to send.
    fn member_of(&self, token: usize, name: &str) -> Result<usize, (ErrorCode, Bytes)> {
        let Some(room) = protocol::room_name(name) else {
            return Err((ErrorCode::BadRoom, protocol::room_error(ErrorCode::BadRoom, name)));
        };
        self.rooms
            .key(&room)
            .filter(|k| self.rooms.has_local(*k, token as u32))
            .ok_or_else(|| (ErrorCode::NotInRoom, protocol::room_error(ErrorCode::NotInRoom, &room)))
    }

    /// The trimmed text if it may be sent, or why not (`empty`, `too_long`).
    fn text_ok<'t>(&self, text: &'t str) -> Result<&'t str, ErrorCode> {
        let t = text.trim();
        if t.is_empty() {
            Err(ErrorCode::Empty)
        } else if t.len() > self.limits.max_text && t.chars().count() > self.limits.max_text {
            Err(ErrorCode::TooLong)
        } else {
            Ok(t)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn private(
        &mut self,
        token: usize,
        from: &str,
        to: &str,
        text: &str,
        cid: Option<&str>,
        ts: u64,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Outcome {
        let k = key(to);
        // The recipient's id as its owner typed it, and its connection if it has one.
        let here = self.users.get(&k).map(|(t, u)| (Rc::clone(&u.id), Some(t as usize)));
        let found = here.or_else(|| self.holds.get_mut(&k, now).map(|a| (Rc::clone(&a.id), None)));
        let Some((rcpt, rcpt_token)) = found else {
            return match self.remote.get(k.as_str()) {
                _ if self.cluster_down => {
                    let code = ErrorCode::ClusterUnavailable;
                    refuse(sink, token, protocol::error(code, Some(to)), code)
                }
                Some(r) => Outcome::Remote {
                    node: Rc::clone(&r.node),
                    to: Rc::clone(&r.id),
                    line: protocol::private_message(from, &r.id, text, ts),
                    cid: None,
                },
                None => {
                    let code = ErrorCode::UnknownRecipient;
                    refuse(sink, token, protocol::error(code, Some(to)), code)
                }
            };
        };
        // The sender's copy; the recipient's carries its `pseq`.
        let line = protocol::private_message(from, &rcpt, text, ts);
        if let Err(code) = self.deliver_to(&k, from, cid, &line, now, sink) {
            return refuse(sink, token, protocol::error(code, Some(&rcpt)), code);
        }
        if rcpt_token != Some(token) {
            sink.push(token, &line);
        }
        Outcome::Private
    }

    fn join_room(
        &mut self,
        token: usize,
        from: &str,
        name: &str,
        replay: &Replay<'_>,
        sink: &mut impl Sink,
    ) -> Outcome {
        let Some(room) = protocol::room_name(name) else {
            return refuse(sink, token, protocol::room_error(ErrorCode::BadRoom, name), ErrorCode::BadRoom);
        };
        let existing = self.rooms.key(&room);
        let member = existing.filter(|k| self.rooms.has_local(*k, token as u32));
        if existing.is_none() && self.rooms.len() >= self.limits.max_rooms {
            self.evict_orphan();
        }
        let Some((_, u)) = self.users.get(from) else { return Outcome::Answered };
        if member.is_none()
            && (u.rooms.len() >= self.limits.max_rooms_per_user
                || (existing.is_none() && self.rooms.len() >= self.limits.max_rooms))
        {
            let code = ErrorCode::TooManyRooms;
            return refuse(sink, token, protocol::room_error(code, &room), code);
        }
        let id = Rc::clone(&u.id);
        let (rk, outcome) = match member {
            Some(rk) => {
                // Its `joined` lists everyone as of now: this turn's earlier events are in it.
                self.rooms.seen_until_now(rk, token as u32);
                (rk, Outcome::Answered)
            }
            None => {
                let j = self.rooms.join_local(&room, token as u32, &id);
                self.users.get_mut(from).expect("checked").1.rooms.push(j.key as u32);
                let name = Rc::clone(&self.rooms.room(j.key).name);
                (j.key, Outcome::Joined { room: name, first_local: j.first_local })
            }
        };
        self.history.set_idle(&room, None);
        if !self.fetch_first(token, &id, rk, replay) {
            self.answer_join(token, from, rk, replay, sink);
        }
        outcome
    }

    /// Makes room for a new room at `--max-rooms` by giving up the room orphaned longest (its
    /// members all in their grace), so that rooms kept only by holds never keep a connected
    /// user out. Its members come back without it; `since` still replays its history, which
    /// outlives the room as any room's does.
    fn evict_orphan(&mut self) {
        let Some(e) = self.rooms.evict_orphan() else { return };
        self.rooms_evicted += 1;
        for (ukey, id) in e.members {
            self.holds.forget_room(&ukey, e.key);
            self.evicted.push((id, Rc::clone(&e.name)));
        }
    }

    /// `joined` for member `token` (`from`) of room `rk`, and what it asked to replay from
    /// the room's history: a gap first if some of it is gone.
    fn answer_join(
        &mut self,
        token: usize,
        from: &str,
        rk: usize,
        replay: &Replay<'_>,
        sink: &mut impl Sink,
    ) {
        let limit = self.limits.presence_limit;
        let room = Rc::clone(&self.rooms.room(rk).name);
        // A room with no log has had no message: seq 0 in the room's own epoch.
        let (latest, first, next, epoch) = match self.history.get(&room) {
            Some(log) => (log.latest(), log.first(), log.next(), Rc::clone(&log.epoch)),
            None => (0, 1, 1, Rc::clone(&self.rooms.room(rk).epoch)),
        };
        sink.push(token, &self.rooms.roster(rk, from, limit, latest, &epoch, &self.users));
        // Where its replay starts; a gap first if some of what it asks for is gone.
        let start = match replay {
            Replay::None => next,
            Replay::Last(k) => first.max(next.saturating_sub(*k)),
            Replay::Since { seq, epoch: e } => {
                // Another epoch: its seqs mean nothing here, so whatever the numbers say, the
                // client is told (gap) and gets everything kept.
                let same = **e == *epoch;
                let from_seq = if same { seq.saturating_add(1) } else { first };
                if !same || (from_seq < first && from_seq < next) {
                    self.history.counters.gaps += 1;
                    sink.push(token, &protocol::gap(&room, first));
                }
                from_seq.max(first)
            }
        };
        let flow = if start >= next { Flow::Live } else { Flow::Replay(start) };
        self.rooms.set_flow(rk, token as u32, flow);
    }

    /// Once per turn: moves replays on (each member as far as its queue takes now, the rest
    /// next turn: a replay is paced by the same outbox and cap as live traffic), and starts
    /// the history clock of rooms that lost their last member.
    pub fn pump(&mut self, now: Instant, sink: &mut impl Sink) {
        for name in std::mem::take(&mut self.rooms.closed) {
            // A room left empty and joined again in the same turn is not idle.
            if self.rooms.key(&name).is_none() {
                self.history.set_idle(&name, Some(now));
            }
        }
        for (rk, token) in self.rooms.replaying() {
            let Some(Flow::Replay(mut next)) = self.rooms.flow(rk, token) else { continue };
            let name = Rc::clone(&self.rooms.room(rk).name);
            let log = self.log_of(rk);
            if next < log.first() {
                // Trimmed while it caught up: say so, and go on from what is kept.
                sink.push(token as usize, &protocol::gap(&name, log.first()));
                next = log.first();
                self.history.counters.gaps += 1;
            }
            let log = self.history.get(&name).expect("opened");
            let from = next;
            while next < log.next() {
                let line = log.line(next).expect("kept");
                if !sink.offer(token as usize, line) {
                    break;
                }
                next += 1;
            }
            let flow = if next >= log.next() { Flow::Live } else { Flow::Replay(next) };
            self.history.counters.replayed += next - from;
            self.rooms.set_flow(rk, token, flow);
        }
    }

    /// Room `rk`'s history log, started in the room's epoch if it has none (see `Room::epoch`).
    fn log_of(&mut self, rk: usize) -> &history::Log {
        let room = self.rooms.room(rk);
        self.history.open(&room.name, &room.epoch)
    }

    /// The epoch to offer Redis for room `name` (see `History::offer`), its log started first
    /// in the room's own epoch, the one its members were told.
    pub fn offer(&mut self, name: &str) -> Rc<str> {
        if let Some(rk) = self.rooms.key(name) {
            self.log_of(rk);
        }
        self.history.offer(name)
    }

    /// Sends this turn's joins and leaves; call once at the end of every loop turn.
    pub fn flush_presence(&mut self, sink: &mut impl Sink) {
        self.rooms.flush_presence(self.limits.presence_limit, &self.users, sink);
    }
}

/// A sink that keeps what it is given, for later.
#[derive(Default)]
struct Collect(Vec<(usize, Bytes)>);

impl Sink for Collect {
    fn push(&mut self, token: usize, line: &Bytes) {
        self.0.push((token, line.clone()));
    }

    fn offer(&mut self, token: usize, line: &Bytes) -> bool {
        self.push(token, line);
        true
    }
}

/// A sink that tags every line to the sender (`token`) with the frame's `cid`.
struct Tagged<'a, S> {
    inner: &'a mut S,
    token: usize,
    cid: &'a str,
}

impl<S: Sink> Sink for Tagged<'_, S> {
    fn push(&mut self, token: usize, line: &Bytes) {
        // A line that names a message already (an `undelivered` about an earlier one, which
        // this frame made room for) keeps its own cid.
        if token == self.token && !protocol::has_cid(line) {
            self.inner.push(token, &protocol::with_cid(line, self.cid));
        } else {
            self.inner.push(token, line);
        }
    }

    fn offer(&mut self, token: usize, line: &Bytes) -> bool {
        if token == self.token {
            self.inner.offer(token, &protocol::with_cid(line, self.cid))
        } else {
            self.inner.offer(token, line)
        }
    }
}

/// Queues `line` (an error) to the sender alone and reports the refusal.
fn refuse(sink: &mut impl Sink, token: usize, line: Bytes, code: ErrorCode) -> Outcome {
    sink.push(token, &line);
    Outcome::Refused(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what chat queued, by connection; also the sink of `moved` and `fetch` tests.
    #[derive(Default)]
    pub(super) struct Rec(pub(super) Vec<(usize, String)>);

    impl Sink for Rec {
        fn push(&mut self, token: usize, line: &Bytes) {
            self.0.push((token, String::from_utf8(line.to_vec()).unwrap()));
        }
        fn offer(&mut self, token: usize, line: &Bytes) -> bool {
            // Connection 99 stands for a recipient that cannot take more right now.
            token != 99 && {
                self.push(token, line);
                true
            }
        }
    }

    impl Rec {
        fn take(&mut self) -> Vec<(usize, String)> {
            std::mem::take(&mut self.0)
        }
        /// What each connection got, sorted by connection.
        fn sorted(&mut self) -> Vec<(usize, String)> {
            let mut got = self.take();
            got.sort();
            got
        }
    }

    fn limits(presence_limit: usize) -> Limits {
        Limits { presence_limit, max_text: 10, ..Limits::default() }
    }

    fn now() -> Instant {
        Instant::now()
    }

    fn join(c: &mut Chat, id: &str, token: usize, r: &mut Rec) -> Result<Rc<str>, ErrorCode> {
        c.join(id, token, &[0; 16], None, 0, now(), r).map(|(id, _)| id)
    }

    fn chat_with(ids: &[&str]) -> (Chat, Rec) {
        let mut c = Chat::new(limits(100));
        let mut r = Rec::default();
        for (t, id) in ids.iter().enumerate() {
            join(&mut c, id, t, &mut r).unwrap();
        }
        c.flush_presence(&mut r);
        r.take();
        (c, r)
    }

    /// `from` (connection `token`) sends `frame`.
    fn say(c: &mut Chat, r: &mut Rec, token: usize, from: &str, frame: &str) -> Outcome {
        c.handle(token, from, frame, 5, now(), r)
    }

    #[test]
    fn a_join_again_gets_a_roster_and_no_event_the_roster_already_lists() {
        let (mut c, mut r) = chat_with(&["a", "b"]);
        say(&mut c, &mut r, 0, "a", r#"{"join":"d"}"#);
        c.flush_presence(&mut r);
        r.take();
        // One turn: b joins, then a asks again; a's roster lists b.
        say(&mut c, &mut r, 1, "b", r#"{"join":"d"}"#);
        say(&mut c, &mut r, 0, "a", r#"{"join":"d"}"#);
        c.flush_presence(&mut r);
        let to_a: Vec<String> = r.take().into_iter().filter(|(t, _)| *t == 0).map(|(_, l)| l).collect();
        assert_eq!(to_a.len(), 1, "{to_a:?}");
        assert!(to_a[0].contains(r#""type":"joined""#) && to_a[0].contains(r#""b""#), "{to_a:?}");
        // Events after the roster still come.
        say(&mut c, &mut r, 1, "b", r#"{"leave":"d"}"#);
        c.flush_presence(&mut r);
        let to_a: Vec<String> = r.take().into_iter().filter(|(t, _)| *t == 0).map(|(_, l)| l).collect();
        assert_eq!(to_a, vec![r#"{"type":"leave","room":"d","id":"b"}"#.to_string()]);
    }

    #[test]
    fn a_room_left_and_joined_again_in_one_turn_keeps_its_history() {
        let (mut c, mut r) = chat_with(&["a"]);
        say(&mut c, &mut r, 0, "a", r#"{"join":"r"}"#);
        say(&mut c, &mut r, 0, "a", r#"{"room":"r","text":"kept"}"#);
        c.pump(now(), &mut r);
        // One turn: the room empties (and is gone) and comes back.
        say(&mut c, &mut r, 0, "a", r#"{"leave":"r"}"#);
        say(&mut c, &mut r, 0, "a", r#"{"join":"r"}"#);
        c.pump(now(), &mut r);
        c.history.expire(now() + Duration::from_secs(301));
        assert!(!c.history.any_idle(), "an occupied room's history has no idle clock");
        assert_eq!(c.history.get("r").map(|l| l.latest()), Some(1), "its history outlives the TTL");
    }

    #[test]
    fn a_quiet_room_has_no_log_and_its_first_message_keeps_the_epoch_joined_named() {
        let (mut c, mut r) = chat_with(&["a", "b"]);
        say(&mut c, &mut r, 0, "a", r#"{"join":"dev"}"#);
        let got = r.take();
        let joined: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
        assert_eq!((joined["type"].as_str(), joined["seq"].as_u64()), (Some("joined"), Some(0)));
        let epoch = joined["epoch"].as_str().unwrap().to_string();
        assert!(c.history.get("dev").is_none(), "no message yet, so no log");
        say(&mut c, &mut r, 0, "a", r#"{"room":"dev","text":"first"}"#);
        assert_eq!(&*c.history.get("dev").unwrap().epoch, epoch, "the log starts in that epoch");
        r.take();
        // b was told nothing of dev; with the epoch a told, since 0 replays the message, no gap.
        let frame = format!(r#"{{"join":"dev","since":0,"epoch":"{epoch}"}}"#);
        say(&mut c, &mut r, 1, "b", &frame);
        c.pump(now(), &mut r);
        let to_b: Vec<String> = r.take().into_iter().filter(|(t, _)| *t == 1).map(|(_, l)| l).collect();
        assert!(to_b[0].contains(r#""type":"joined""#) && to_b[0].contains(&epoch), "{to_b:?}");
        assert!(!to_b.iter().any(|l| l.contains(r#""type":"gap""#)), "{to_b:?}");
        assert!(to_b.iter().any(|l| l.contains(r#""seq":1"#) && l.contains("first")), "{to_b:?}");
    }

    #[test]
    fn ids_are_unique_ignoring_case_and_free_again_on_leave() {
        let (mut c, mut r) = chat_with(&["alice"]);
        assert_eq!(join(&mut c, "ALICE", 9, &mut r), Err(ErrorCode::IdTaken));
        assert_eq!(join(&mut c, "no spaces", 9, &mut r), Err(ErrorCode::BadId));
        assert!(r.take().is_empty(), "a refused join queues nothing");
        c.leave("Alice");
        assert_eq!(join(&mut c, "ALICE", 9, &mut r).as_deref(), Ok("ALICE"));
    }

    #[test]
    fn a_lobby_message_reaches_everyone_in_it_including_the_sender() {
        let (mut c, mut r) = chat_with(&["a", "b", "c"]);
        let line = r#"{"type":"message","room":"lobby","seq":1,"from":"b","text":"hi","ts":5}"#.to_string();
        let out = say(&mut c, &mut r, 1, "b", r#"{"text":"  hi ","from":"x"}"#);
        assert_eq!(
            out,
            Outcome::Room { room: Rc::from("lobby"), line: Bytes::from(line.clone()), cid: None }
        );
        assert_eq!(r.sorted(), vec![(0, line.clone()), (1, line.clone()), (2, line.clone())]);
        // Naming the lobby, in any case, is the same.
        assert!(matches!(
            say(&mut c, &mut r, 1, "b", r#"{"room":"LOBBY","text":"hi"}"#),
            Outcome::Room { .. }
        ));
        assert_eq!(r.take().len(), 3);
    }

    #[test]
    fn a_room_message_reaches_that_rooms_members_only() {
        let (mut c, mut r) = chat_with(&["a", "b", "c"]);
        assert_eq!(
            say(&mut c, &mut r, 0, "a", r#"{"join":"Dev"}"#),
            Outcome::Joined { room: Rc::from("dev"), first_local: true }
        );
        let got = r.take();
        assert_eq!((got.len(), got[0].0), (1, 0));
        assert!(
            got[0].1.starts_with(r#"{"type":"joined","room":"dev","users":["a"],"total":1,"seq":"#),
            "{}",
            got[0].1
        );
        assert_eq!(
            say(&mut c, &mut r, 1, "b", r#"{"join":"dev"}"#),
            Outcome::Joined { room: Rc::from("dev"), first_local: false }
        );
        let got = r.take();
        assert_eq!((got.len(), got[0].0), (1, 1));
        assert!(
            got[0].1.starts_with(r#"{"type":"joined","room":"dev","users":["b","a"],"total":2,"seq":"#),
            "{}",
            got[0].1
        );
        c.flush_presence(&mut r);
        assert_eq!(r.take(), vec![(0, r#"{"type":"join","room":"dev","id":"b"}"#.to_string())]);
        assert!(matches!(
            say(&mut c, &mut r, 1, "b", r#"{"room":"dev","text":"psst"}"#),
            Outcome::Room { .. }
        ));
        let got = r.sorted();
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![0, 1], "c is not in dev");
        assert!(got[0].1.starts_with(r#"{"type":"message","room":"dev","seq":1,"from":"b""#), "{}", got[0].1);
        // c is not a member: refused, and nobody hears it.
        let out = say(&mut c, &mut r, 2, "c", r#"{"room":"dev","text":"let me in"}"#);
        assert_eq!(out, Outcome::Refused(ErrorCode::NotInRoom));
        let got = r.take();
        assert_eq!(got.len(), 1);
        assert!(
            got[0].1.contains(r#""code":"not_in_room""#) && got[0].1.contains(r#""room":"dev""#),
            "{}",
            got[0].1
        );
    }

    #[test]
    fn joining_again_answers_joined_and_leaving_answers_left() {
        let (mut c, mut r) = chat_with(&["a", "b"]);
        assert_eq!(say(&mut c, &mut r, 0, "a", r#"{"join":"lobby"}"#), Outcome::Answered);
        let got = r.take();
        assert_eq!((got.len(), got[0].0), (1, 0));
        assert!(
            got[0].1.starts_with(r#"{"type":"joined","room":"lobby","users":["a","b"],"total":2,"seq":"#),
            "{}",
            got[0].1
        );
        say(&mut c, &mut r, 0, "a", r#"{"join":"dev"}"#);
        r.take();
        assert_eq!(
            say(&mut c, &mut r, 0, "a", r#"{"leave":"DEV"}"#),
            Outcome::Left { room: Rc::from("dev"), last_local: true }
        );
        assert_eq!(r.take(), vec![(0, r#"{"type":"left","room":"dev"}"#.to_string())]);
        assert_eq!(c.rooms.len(), 1, "a room with no members is gone");
        assert_eq!(say(&mut c, &mut r, 0, "a", r#"{"leave":"dev"}"#), Outcome::Refused(ErrorCode::NotInRoom));
        r.take();
        // Leaving the lobby is allowed; then a plain text has nowhere to go.
        assert_eq!(
            say(&mut c, &mut r, 0, "a", r#"{"leave":"lobby"}"#),
            Outcome::Left { room: Rc::from("lobby"), last_local: false }
        );
        r.take();
        assert_eq!(say(&mut c, &mut r, 0, "a", r#"{"text":"hi"}"#), Outcome::Refused(ErrorCode::NotInRoom));
        assert!(r.take()[0].1.contains(r#""room":"lobby""#));
        c.flush_presence(&mut r);
        assert_eq!(r.take(), vec![(1, r#"{"type":"leave","room":"lobby","id":"a"}"#.to_string())]);
    }

    #[test]
    fn bad_names_and_limits_are_refused_with_the_room_named() {
        let mut c = Chat::new(Limits { max_rooms: 3, max_rooms_per_user: 2, ..limits(100) });
        let mut r = Rec::default();
        join(&mut c, "a", 0, &mut r).unwrap();
        join(&mut c, "b", 1, &mut r).unwrap();
        r.take();
        for frame in
            [r#"{"join":"a b"}"#, r#"{"join":""}"#, r#"{"leave":"é"}"#, r#"{"room":"x/y","text":"hi"}"#]
        {
            assert_eq!(say(&mut c, &mut r, 0, "a", frame), Outcome::Refused(ErrorCode::BadRoom), "{frame}");
            assert!(r.take()[0].1.contains(r#""code":"bad_room""#));
        }
        assert!(matches!(say(&mut c, &mut r, 0, "a", r#"{"join":"one"}"#), Outcome::Joined { .. }));
        // Per user: lobby and one are two.
        assert_eq!(
            say(&mut c, &mut r, 0, "a", r#"{"join":"two"}"#),
            Outcome::Refused(ErrorCode::TooManyRooms)
        );
        assert!(matches!(say(&mut c, &mut r, 1, "b", r#"{"join":"two"}"#), Outcome::Joined { .. }));
        r.take();
        // On the server: lobby, one and two are three.
        say(&mut c, &mut r, 1, "b", r#"{"leave":"lobby"}"#);
        let out = say(&mut c, &mut r, 1, "b", r#"{"join":"three"}"#);
        assert_eq!(out, Outcome::Refused(ErrorCode::TooManyRooms));
        assert!(r.take().last().unwrap().1.contains(r#""room":"three""#));
        // An existing room can still be joined.
        assert!(matches!(say(&mut c, &mut r, 1, "b", r#"{"join":"one"}"#), Outcome::Joined { .. }));
    }

    #[test]
    fn at_max_rooms_a_room_kept_only_by_holds_gives_way_to_a_connected_users_join() {
        let mut c = Chat::new(Limits { max_rooms: 4, ..limits(100) });
        let mut r = Rec::default();
        let t = now();
        join(&mut c, "live", 0, &mut r).unwrap();
        for (n, id) in ["gone1", "gone2"].iter().enumerate() {
            let token = n + 1;
            join(&mut c, id, token, &mut r).unwrap();
            say(&mut c, &mut r, token, id, &format!(r#"{{"join":"{id}-room"}}"#));
        }
        // "shared" has a connected member besides a held one: it is never given up.
        say(&mut c, &mut r, 0, "live", r#"{"join":"shared"}"#);
        say(&mut c, &mut r, 1, "gone1", r#"{"join":"shared"}"#);
        for id in ["gone1", "gone2"] {
            c.lose(id, [0; 16], t + Duration::from_secs(60));
        }
        assert_eq!(c.rooms.len(), 4, "lobby, gone1-room, gone2-room, shared");
        r.take();
        // The room orphaned longest goes first, then the next; then there is nothing to give.
        for (room, gone) in [("new1", "gone1-room"), ("new2", "gone2-room")] {
            let frame = format!(r#"{{"join":"{room}"}}"#);
            assert!(matches!(say(&mut c, &mut r, 0, "live", &frame), Outcome::Joined { .. }), "{room}");
            assert_eq!(c.rooms.key(gone), None, "{gone} gave way to {room}");
        }
        assert_eq!(c.rooms_evicted, 2);
        let told: Vec<String> = c.evicted.drain(..).map(|(id, room)| format!("{id}:{room}")).collect();
        assert_eq!(told, ["gone1:gone1-room", "gone2:gone2-room"]);
        let out = say(&mut c, &mut r, 0, "live", r#"{"join":"x"}"#);
        assert_eq!(out, Outcome::Refused(ErrorCode::TooManyRooms), "every room has a connected member");
        // gone1 comes back a member of what was left it: lobby and shared, not its own room.
        r.take();
        let (_, resumed) = c.join("gone1", 7, &[1; 16], Some(&[0; 16]), 0, t, &mut r).unwrap();
        assert!(resumed);
        let mut rooms: Vec<&str> = c.local_rooms().collect();
        rooms.sort();
        assert_eq!(rooms, ["lobby", "new1", "new2", "shared"], "lobby and shared only are gone1's");
        assert_eq!(c.users.get("gone1").unwrap().1.rooms.len(), 2);
    }

    #[test]
    fn the_directory_lists_the_largest_rooms_first_within_the_limit() {
        let mut c = Chat::new(limits(2));
        let mut r = Rec::default();
        for (t, id) in ["a", "b", "c"].iter().enumerate() {
            join(&mut c, id, t, &mut r).unwrap();
        }
        say(&mut c, &mut r, 0, "a", r#"{"join":"zz"}"#);
        say(&mut c, &mut r, 1, "b", r#"{"join":"zz"}"#);
        say(&mut c, &mut r, 2, "c", r#"{"join":"aa"}"#);
        r.take();
        assert_eq!(say(&mut c, &mut r, 2, "c", r#"{"rooms":true}"#), Outcome::Answered);
        assert_eq!(
            r.take(),
            vec![(
                2,
                r#"{"type":"rooms","rooms":[{"room":"lobby","users":3},{"room":"zz","users":2}],"total":3}"#
                    .to_string()
            )]
        );
    }

    #[test]
    fn a_disconnect_leaves_every_room_and_names_the_rooms_left_empty_here() {
        let (mut c, mut r) = chat_with(&["a", "b"]);
        say(&mut c, &mut r, 0, "a", r#"{"join":"dev"}"#);
        say(&mut c, &mut r, 0, "a", r#"{"join":"ops"}"#);
        say(&mut c, &mut r, 1, "b", r#"{"join":"ops"}"#);
        c.flush_presence(&mut r);
        r.take();
        let mut emptied: Vec<String> = c.leave("a").iter().map(|x| x.to_string()).collect();
        emptied.sort();
        assert_eq!(emptied, ["dev"]);
        c.flush_presence(&mut r);
        assert_eq!(
            r.sorted(),
            vec![
                (1, r#"{"type":"leave","room":"lobby","id":"a"}"#.to_string()),
                (1, r#"{"type":"leave","room":"ops","id":"a"}"#.to_string()),
            ]
        );
        assert_eq!(c.rooms.len(), 2);
    }

    #[test]
    fn private_message_reaches_recipient_and_echoes_to_sender_only() {
        let (mut c, mut r) = chat_with(&["a", "Bob", "c"]);
        assert_eq!(say(&mut c, &mut r, 0, "a", r#"{"to":"BOB","text":"psst"}"#), Outcome::Private);
        let line = r#"{"type":"message","from":"a","to":"Bob","text":"psst","ts":5}"#.to_string();
        let theirs = r#"{"type":"message","pseq":1,"from":"a","to":"Bob","text":"psst","ts":5}"#.to_string();
        assert_eq!(r.take(), vec![(1, theirs), (0, line)], "the recipient's copy is numbered");
        // To yourself: one copy.
        say(&mut c, &mut r, 0, "a", r#"{"to":"a","text":"me"}"#);
        assert_eq!(r.take().len(), 1);
    }

    #[test]
    fn refusals_go_to_the_sender_alone() {
        let (mut c, mut r) = chat_with(&["a", "b"]);
        let cases = [
            (r#"{"to":"zed","text":"x"}"#, ErrorCode::UnknownRecipient, "\"to\":\"zed\""),
            ("not json", ErrorCode::BadMessage, "bad_message"),
            (r#"{"text":"   "}"#, ErrorCode::Empty, "\"empty\""),
            (r#"{"text":"12345678901"}"#, ErrorCode::TooLong, "too_long"),
        ];
        for (frame, code, needle) in cases {
            assert_eq!(say(&mut c, &mut r, 1, "b", frame), Outcome::Refused(code));
            let got = r.take();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, 1);
            assert!(got[0].1.contains(needle), "{}", got[0].1);
        }
        // Ten characters of two bytes each are within a ten-character limit.
        assert!(matches!(say(&mut c, &mut r, 1, "b", r#"{"text":"éééééééééé"}"#), Outcome::Room { .. }));
    }

    #[test]
    fn presence_is_batched_per_room_and_each_joiner_sees_only_later_events() {
        let (mut c, mut r) = chat_with(&["old"]);
        join(&mut c, "n1", 1, &mut r).unwrap();
        join(&mut c, "n2", 2, &mut r).unwrap();
        c.leave("old");
        let welcomes = r.take();
        assert!(welcomes[0].1.contains(r#""users":["n1","old"]"#), "{}", welcomes[0].1);
        assert!(welcomes[1].1.contains(r#""total":3"#));
        c.flush_presence(&mut r);
        assert_eq!(
            r.sorted(),
            vec![
                (
                    1,
                    "{\"type\":\"join\",\"room\":\"lobby\",\"id\":\"n2\"}\n{\"type\":\"leave\",\"room\":\"lobby\",\"id\":\"old\"}"
                        .to_string()
                ),
                (2, "{\"type\":\"leave\",\"room\":\"lobby\",\"id\":\"old\"}".to_string()),
            ]
        );
        c.flush_presence(&mut r);
        assert!(r.take().is_empty(), "a turn without events sends nothing");
    }

    #[test]
    fn above_the_limit_presence_goes_quiet_and_welcome_is_capped() {
        let mut c = Chat::new(limits(2));
        let mut r = Rec::default();
        for (t, id) in ["a", "b", "c"].iter().enumerate() {
            join(&mut c, id, t, &mut r).unwrap();
        }
        let last = &r.take()[2].1;
        assert!(last.starts_with(r#"{"type":"welcome","id":"c","users":["c","#), "{last}");
        let v: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(v["users"].as_array().unwrap().len(), 2, "{last}");
        assert!(last.contains(r#""total":3,"max_text":10,"rate_limit":20,"burst":40,"resume":""#), "{last}");
        // Crossing the limit: no events, but everyone learns the list is now partial.
        c.flush_presence(&mut r);
        let got = r.take();
        assert_eq!(got.len(), 3);
        for (_, line) in &got {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!((v["type"].as_str(), v["room"].as_str()), (Some("users"), Some("lobby")), "{line}");
            assert_eq!(v["total"].as_u64(), Some(3));
            assert_eq!(v["users"].as_array().unwrap().len(), 2);
        }
        c.leave("a");
        join(&mut c, "d", 3, &mut r).unwrap();
        r.take();
        c.flush_presence(&mut r);
        assert!(r.take().is_empty(), "quiet while above the limit");
    }

    #[test]
    fn presence_tells_the_whole_truth_again_when_the_crowd_shrinks_back_under_the_limit() {
        // The README-contract issue's case: a and b online, c joins above the limit, b leaves.
        let mut c = Chat::new(limits(2));
        let mut r = Rec::default();
        join(&mut c, "a", 0, &mut r).unwrap();
        join(&mut c, "b", 1, &mut r).unwrap();
        c.flush_presence(&mut r);
        join(&mut c, "c", 2, &mut r).unwrap();
        c.flush_presence(&mut r);
        r.take();
        c.leave("b");
        c.flush_presence(&mut r);
        let got = r.take();
        let to_a: Vec<&String> = got.iter().filter(|(t, _)| *t == 0).map(|(_, l)| l).collect();
        assert_eq!(to_a.len(), 1, "{got:?}");
        let v: serde_json::Value = serde_json::from_str(to_a[0]).unwrap();
        assert_eq!(v["type"], "users", "a leave alone would leave a believing it is alone: {v}");
        let mut ids: Vec<&str> = v["users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
        ids.sort();
        assert_eq!((ids, v["total"].as_u64()), (vec!["a", "c"], Some(2)));
        // Back under the limit, events flow again.
        c.leave("c");
        c.flush_presence(&mut r);
        assert_eq!(r.take(), vec![(0, r#"{"type":"leave","room":"lobby","id":"c"}"#.to_string())]);
    }

    #[test]
    fn a_private_message_to_a_busy_recipient_is_refused_to_its_sender_alone() {
        let (mut c, mut r) = chat_with(&["a", "b"]);
        let (_, b) = c.users.remove("b").unwrap();
        c.users.insert(99, b); // see Rec::offer
        let out = say(&mut c, &mut r, 0, "a", r#"{"to":"b","text":"hi"}"#);
        assert_eq!(out, Outcome::Refused(ErrorCode::RecipientBusy));
        let got = r.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 0);
        assert!(
            got[0].1.contains(r#""code":"recipient_busy""#) && got[0].1.contains(r#""to":"b""#),
            "{}",
            got[0].1
        );
    }

    #[test]
    fn a_to_that_is_not_an_id_is_refused_and_reaches_nobody() {
        let (mut c, mut r) = chat_with(&["a", "b"]);
        for frame in [
            r#"{"to":null,"text":"secret"}"#,
            r#"{"to":"","text":"secret"}"#,
            r#"{"to":"a b","text":"secret"}"#,
            r#"{"to":5,"text":"secret"}"#,
            r#"{"to":["b"],"text":"secret"}"#,
            r#"{"to":{"id":"b"},"text":"secret"}"#,
            r#"{"to":false,"text":"secret"}"#,
        ] {
            assert_eq!(
                say(&mut c, &mut r, 0, "a", frame),
                Outcome::Refused(ErrorCode::BadMessage),
                "{frame}"
            );
            let got = r.take();
            assert_eq!(got.len(), 1, "{frame}: {got:?}");
            assert_eq!(got[0].0, 0);
            assert!(!got[0].1.contains("secret"));
        }
    }

    #[test]
    fn confusable_ids_are_one_user() {
        let (mut c, mut r) = chat_with(&["alice", "bob"]);
        for twin in ["aIice", "a1ice", "ALICE", "b0b", "B0B"] {
            assert_eq!(join(&mut c, twin, 9, &mut r), Err(ErrorCode::IdTaken), "{twin}");
        }
        // A private message finds the user under any spelling of its key.
        assert_eq!(say(&mut c, &mut r, 1, "bob", r#"{"to":"a1ice","text":"hi"}"#), Outcome::Private);
        assert!(r.take()[0].1.contains(r#""to":"alice""#));
    }

    #[test]
    fn a_lost_user_stays_listed_and_is_taken_back_with_its_secret_quiet_until_it_asks() {
        let (mut c, mut r) = chat_with(&["friend"]);
        let t = now();
        let secret = ids::new_secret();
        c.join("Victim", 5, &secret, None, 0, t, &mut r).unwrap();
        say(&mut c, &mut r, 5, "Victim", r#"{"join":"dev"}"#);
        c.flush_presence(&mut r);
        r.take();
        c.lose("Victim", secret, t + Duration::from_secs(60));
        c.flush_presence(&mut r);
        assert_eq!(
            r.take(),
            vec![(0, r#"{"type":"away","room":"lobby","id":"Victim"}"#.to_string())],
            "no leave for a lost connection: it is away"
        );
        // Others still see it, and cannot take its id; a private message to it is kept.
        assert_eq!(c.check("victim", None, t), Err(ErrorCode::IdTaken));
        assert_eq!(c.check("victim", Some(&ids::new_secret()), t), Err(ErrorCode::IdTaken));
        say(&mut c, &mut r, 0, "friend", r#"{"join":"dev"}"#);
        assert!(r.take()[0].1.contains(r#""users":["friend","Victim"],"away":["Victim"],"total":2"#));
        assert_eq!(
            say(&mut c, &mut r, 0, "friend", r#"{"to":"victim","text":"while away"}"#),
            Outcome::Private
        );
        assert_eq!(r.take().len(), 1, "the sender's copy only");
        say(&mut c, &mut r, 0, "friend", r#"{"room":"dev","text":"missed"}"#);
        assert_eq!(r.take().len(), 1, "nobody to deliver to but the sender");
        // Back with the secret, on a new connection: resumed, its private message follows the
        // welcome (it said it had none), and dev says nothing until it asks.
        let next = ids::new_secret();
        let (id, resumed) = c.join("VICTIM", 9, &next, Some(&secret), 0, t, &mut r).unwrap();
        assert_eq!((&*id, resumed), ("Victim", true));
        let got = r.take();
        assert!(got[0].1.contains(r#""resumed":true"#), "{}", got[0].1);
        assert!(
            got[1].1.starts_with(r#"{"type":"message","pseq":1,"from":"friend","to":"Victim""#),
            "{}",
            got[1].1
        );
        assert_eq!(got.len(), 2);
        c.flush_presence(&mut r);
        let mut back: Vec<String> = r.take().into_iter().map(|(t, l)| format!("{t} {l}")).collect();
        back.sort();
        let want = [
            r#"0 {"type":"back","room":"dev","id":"Victim"}"#,
            r#"0 {"type":"back","room":"lobby","id":"Victim"}"#,
        ];
        assert_eq!(back, want, "a blip shows nobody a leave/join pair, only back");
        say(&mut c, &mut r, 0, "friend", r#"{"room":"dev","text":"live"}"#);
        assert_eq!(r.take().len(), 1, "dev is quiet for the resumed member until it asks");
        // Its join with since: everything after 0, once, then live.
        let epoch = c.history.get("dev").unwrap().epoch.to_string();
        let frame = format!(r#"{{"join":"dev","since":0,"epoch":"{epoch}"}}"#);
        assert_eq!(say(&mut c, &mut r, 9, "Victim", &frame), Outcome::Answered);
        assert!(r.take()[0].1.contains(r#""type":"joined""#));
        c.pump(t, &mut r);
        let texts: Vec<String> = r.take().into_iter().map(|(_, l)| l).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[0].contains(r#""seq":1"#) && texts[0].contains("missed"));
        assert!(texts[1].contains(r#""seq":2"#) && texts[1].contains("live"));
        say(&mut c, &mut r, 0, "friend", r#"{"room":"dev","text":"after"}"#);
        assert_eq!(r.take().len(), 2, "live again");
        // The old secret does not work twice.
        c.lose("Victim", next, t + Duration::from_secs(60));
        assert_eq!(
            c.join("victim", 10, &ids::new_secret(), Some(&secret), 0, t, &mut r),
            Err(ErrorCode::IdTaken)
        );
    }

    #[test]
    fn a_grace_that_ends_announces_the_leave_and_tells_senders_what_was_not_delivered() {
        let (mut c, mut r) = chat_with(&["friend", "victim"]);
        let t = now();
        c.lose("victim", [7; 16], t + Duration::from_secs(1));
        say(&mut c, &mut r, 0, "friend", r#"{"to":"victim","text":"kept"}"#);
        r.take();
        assert!(c.expire(t, &mut r).is_empty());
        let gone = c.expire(t + Duration::from_secs(1), &mut r);
        assert_eq!(gone.len(), 1);
        let got = r.take();
        assert_eq!(got.len(), 1);
        assert!(
            got[0].1.contains(r#""code":"undelivered""#) && got[0].1.contains(r#""to":"victim""#),
            "{}",
            got[0].1
        );
        c.flush_presence(&mut r);
        let presence = r#"{"type":"away","room":"lobby","id":"victim"}
{"type":"leave","room":"lobby","id":"victim"}"#;
        assert_eq!(r.take(), vec![(0, presence.to_string())], "away when lost, leave when the grace ends");
        assert_eq!(c.check("victim", None, t + Duration::from_secs(1)).as_deref(), Ok("vlctlm"));
    }

    #[test]
    fn private_lines_are_kept_until_a_pong_or_a_resume_acknowledges_them() {
        let (mut c, mut r) = chat_with(&["a", "b"]);
        let t = now();
        for i in 1..=3 {
            say(&mut c, &mut r, 0, "a", &format!(r#"{{"to":"b","text":"m{i}","cid":"x{i}"}}"#));
        }
        assert_eq!(c.backlog.used().0, 3);
        // b is asked about a second later (lazily: its backlog is small), one ping at a time.
        assert!(c.want_ack.iter().all(|(tok, due)| *tok == 1 && *due >= t + backlog::ACK_DELAY));
        assert_eq!(c.ping_payload(1, t), b"p:3");
        assert!(c.asked(1) && c.ping_payload(0, t).is_empty(), "a has nothing to acknowledge");
        c.want_ack.clear();
        c.ack(1, b"hello", t);
        assert!(c.asked(1), "an unsolicited pong acknowledges nothing");
        c.ack(1, b"p:2", t);
        assert!(!c.asked(1));
        assert_eq!(c.want_ack.len(), 1, "one left: asked again");
        // Lost with m3 unacknowledged; a resume saying it has pseq 1 gets m2 (acknowledged by
        // a pong: its socket had it, but the page may have given that socket up) and m3.
        let secret = [5; 16];
        c.lose("b", secret, t + Duration::from_secs(60));
        r.take();
        c.join("b", 7, &[6; 16], Some(&secret), 1, t, &mut r).unwrap();
        let got = r.take();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[1].1.contains(r#""pseq":2"#) && got[2].1.contains(r#""pseq":3"#));
        assert_eq!(c.backlog.used().0, 2, "kept until acknowledged again");
        // Its grace ends with m2 acknowledged by a pong: only m3 is reported.
        c.ack(7, b"p:2", t);
        c.lose("b", [6; 16], t);
        r.take();
        c.expire(t + Duration::from_secs(1), &mut r);
        let to_a: Vec<String> = r.take().into_iter().filter(|(tok, _)| *tok == 0).map(|(_, l)| l).collect();
        assert_eq!(to_a.len(), 1, "{to_a:?}");
        assert!(to_a[0].contains(r#""cid":"x3""#), "{to_a:?}");
        assert_eq!(c.backlog.used(), (0, 0));
    }

    #[test]
    fn past_max_holds_the_oldest_hold_ends_and_its_senders_hear_which_messages() {
        let mut c = Chat::new(Limits { max_holds: 1, ..limits(100) });
        let mut r = Rec::default();
        for (tok, id) in ["friend", "old", "new"].into_iter().enumerate() {
            join(&mut c, id, tok, &mut r).unwrap();
        }
        let t = now();
        c.lose("old", [1; 16], t + Duration::from_secs(30));
        say(&mut c, &mut r, 0, "friend", r#"{"to":"old","text":"hi","cid":"k1"}"#);
        r.take();
        c.lose("new", [2; 16], t + Duration::from_secs(60));
        assert_eq!((c.holds.len(), c.counters.holds_ended_early), (1, 1));
        let (gone, told) = c.ended_early.pop().unwrap();
        assert_eq!(&*gone.id, "old");
        let told: Vec<String> = told.iter().map(|(_, l)| String::from_utf8(l.to_vec()).unwrap()).collect();
        assert_eq!(told.len(), 1);
        assert!(told[0].contains(r#""cid":"k1""#) && told[0].contains(r#""code":"undelivered""#), "{told:?}");
        assert_eq!(c.backlog.used(), (0, 0), "its backlog was released");
        assert!(c.check("old", None, t).is_ok(), "its id is free");
    }

    #[test]
    fn a_full_budget_takes_the_oldest_line_of_the_largest_backlog_and_tells_its_sender() {
        let (mut c, mut r) = chat_with(&["a", "b", "c"]);
        let t = now();
        // Room for a little over three short lines.
        c.backlog = Budget::new(3 * (100 + backlog::LINE_COST) + 50);
        c.lose("b", [1; 16], t + Duration::from_secs(60));
        for i in 1..=3 {
            say(&mut c, &mut r, 0, "a", &format!(r#"{{"to":"b","text":"m{i}","cid":"x{i}"}}"#));
        }
        r.take();
        assert_eq!(c.backlog.used().0, 3);
        // To c (connected, smaller): b's backlog is the largest, its oldest goes.
        assert_eq!(say(&mut c, &mut r, 0, "a", r#"{"to":"c","text":"m4","cid":"x4"}"#), Outcome::Private);
        let got = r.take();
        let to_a: Vec<&str> = got.iter().filter(|(tok, _)| *tok == 0).map(|(_, l)| l.as_str()).collect();
        assert!(to_a[0].contains(r#""code":"undelivered""#) && to_a[0].contains(r#""cid":"x1""#), "{to_a:?}");
        assert_eq!(to_a[0].matches(r#""cid""#).count(), 1, "named once, by its own cid");
        assert!(to_a[1].contains(r#""cid":"x4""#), "then the sender's copy of m4: {to_a:?}");
        assert_eq!((c.backlog.used().0, c.counters.backlog_dropped), (3, 1));
    }

    #[test]
    fn history_replays_last_and_since_with_gaps_for_what_is_gone() {
        let mut c = Chat::new(Limits { history: 3, ..limits(100) });
        let mut r = Rec::default();
        join(&mut c, "a", 0, &mut r).unwrap();
        join(&mut c, "b", 1, &mut r).unwrap();
        for i in 1..=5 {
            say(&mut c, &mut r, 0, "a", &format!(r#"{{"text":"m{i}"}}"#));
        }
        r.take();
        let seqs = |r: &mut Rec| -> Vec<String> {
            r.take()
                .into_iter()
                .map(|(_, l)| {
                    let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                    match v["type"].as_str().unwrap() {
                        "message" => format!("m{}", v["seq"]),
                        "gap" => format!("gap{}", v["seq"]),
                        other => other.to_string(),
                    }
                })
                .collect()
        };
        say(&mut c, &mut r, 1, "b", r#"{"join":"lobby","last":2}"#);
        c.pump(now(), &mut r);
        assert_eq!(seqs(&mut r), ["joined", "m4", "m5"]);
        let epoch = c.history.get("lobby").unwrap().epoch.to_string();
        say(&mut c, &mut r, 1, "b", &format!(r#"{{"join":"lobby","since":1,"epoch":"{epoch}"}}"#));
        c.pump(now(), &mut r);
        assert_eq!(seqs(&mut r), ["joined", "gap3", "m3", "m4", "m5"], "2 is gone: a gap, then what is kept");
        say(&mut c, &mut r, 1, "b", r#"{"join":"lobby","since":4,"epoch":"other"}"#);
        c.pump(now(), &mut r);
        assert_eq!(seqs(&mut r), ["joined", "gap3", "m3", "m4", "m5"], "another epoch: everything kept");
        let mut d = Chat::new(limits(100));
        join(&mut d, "x", 0, &mut r).unwrap();
        say(&mut d, &mut r, 0, "x", r#"{"text":"one"}"#);
        r.take();
        say(&mut d, &mut r, 0, "x", r#"{"join":"lobby","since":0,"epoch":"notthis1"}"#);
        d.pump(now(), &mut r);
        assert_eq!(
            seqs(&mut r),
            ["joined", "gap1", "m1"],
            "a wrong epoch always gets a gap, even with all kept"
        );
        say(&mut c, &mut r, 1, "b", &format!(r#"{{"join":"lobby","since":5,"epoch":"{epoch}"}}"#));
        c.pump(now(), &mut r);
        assert_eq!(seqs(&mut r), ["joined"], "nothing missed");
        let line = say(&mut c, &mut r, 0, "a", r#"{"text":"m6"}"#);
        assert!(matches!(line, Outcome::Room { .. }));
        assert_eq!(seqs(&mut r), ["m6", "m6"], "both live");
    }

    #[test]
    fn remote_users_are_listed_announced_and_routed_to_their_node() {
        let (mut c, mut r) = chat_with(&["a"]);
        c.remote_join("n2", "Bob");
        c.remote_room("n2", "Bob", "lobby", true);
        c.remote_room("n2", "Bob", "lobby", true); // a repeat is not news
        c.remote_room("n3", "zed", "lobby", true); // makes zed known
        c.remote_room("n3", "zed", "dev", true); // a room with no local member: no events here
        c.flush_presence(&mut r);
        let got = r.take();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].1,
            "{\"type\":\"join\",\"room\":\"lobby\",\"id\":\"Bob\"}\n{\"type\":\"join\",\"room\":\"lobby\",\"id\":\"zed\"}"
        );
        assert!(join(&mut c, "x", 6, &mut r).is_ok());
        let w = &r.take()[0].1;
        assert!(w.contains(r#""total":4"#), "the welcome counts remote members of the lobby: {w}");
        assert_eq!(c.count_on("n3"), (1, 2));
        // A private message to a remote user is the caller's to forward; nothing is queued.
        match say(&mut c, &mut r, 0, "a", r#"{"to":"BOB","text":"hi"}"#) {
            Outcome::Remote { node, to, line, .. } => {
                assert_eq!((&*node, &*to), ("n2", "Bob"));
                assert!(std::str::from_utf8(&line).unwrap().contains(r#""to":"Bob""#));
            }
            other => panic!("{other:?}"),
        }
        assert!(r.take().is_empty());
        // A room line from another node reaches the local members of that room only.
        say(&mut c, &mut r, 0, "a", r#"{"join":"dev"}"#);
        r.take();
        let line = Bytes::from_static(br#"{"type":"message","room":"dev","seq":4,"from":"zed"}"#);
        c.deliver_room("dev", "RedisEp1", &line, &mut r);
        assert_eq!(r.take(), vec![(0, String::from_utf8(line.to_vec()).unwrap())]);
        let log = c.history.get("dev").unwrap();
        assert_eq!((&*log.epoch, log.latest()), ("RedisEp1", 4), "kept in Redis's numbering");
        // While the cluster is down: remote ids are taken, remote sends refused.
        c.cluster_down = true;
        assert_eq!(c.check("zed", None, now()), Err(ErrorCode::IdTaken));
        let out = say(&mut c, &mut r, 0, "a", r#"{"to":"nobody","text":"hi"}"#);
        assert_eq!(out, Outcome::Refused(ErrorCode::ClusterUnavailable));
        c.cluster_down = false;
        assert_eq!(c.check("zed", None, now()).as_deref(), Ok("zed"), "Redis decides while it is up");
    }

    #[test]
    fn rosters_replace_a_nodes_users_and_rooms_and_a_dead_node_takes_its_users_along() {
        let (mut c, mut r) = chat_with(&["a"]);
        c.remote_roster("n2", &[("b", vec!["lobby"]), ("c", vec!["lobby", "dev"])]);
        c.remote_room("n3", "d", "lobby", true);
        c.remote_leave("n3", "b"); // b is on n2, not n3: ignored
        assert_eq!((c.remote_len(), c.count_on("n2")), (3, (2, 3)));
        c.flush_presence(&mut r);
        r.take();
        c.remote_roster("n2", &[("c", vec!["lobby"]), ("e", vec!["lobby"])]);
        c.flush_presence(&mut r);
        let got = r.take();
        assert_eq!(
            got[0].1,
            "{\"type\":\"leave\",\"room\":\"lobby\",\"id\":\"b\"}\n{\"type\":\"join\",\"room\":\"lobby\",\"id\":\"e\"}"
        );
        assert_eq!(c.rooms.key("dev"), None, "c left dev: nobody is in it");
        c.drop_node("n2");
        assert_eq!(c.remote_len(), 1);
        c.remote_join("n9", "A"); // our own user's id: Redis gave it to us, the news is stale
        assert_eq!(c.remote_len(), 1);
        // A remote user who moves here is dropped from the remote map, and its rooms, on join.
        assert!(join(&mut c, "D", 7, &mut r).is_ok());
        assert_eq!(c.remote_len(), 0);
        assert_eq!(c.rooms.room(c.rooms.key("lobby").unwrap()).len(), 2);
    }
}
