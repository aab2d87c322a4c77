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

pub mod ids;
pub mod rooms;

use crate::protocol::{self, ErrorCode, Incoming, LOBBY};
use bytes::Bytes;
use ids::{Claim, Reserved, Secret, key};
use rooms::Rooms;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

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
    },
    Private,
    /// For a user on another node: nothing was queued, not even the sender's copy, which the
    /// caller sends once the message is on its way.
    Remote {
        node: Rc<str>,
        to: Rc<str>,
        line: Bytes,
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            presence_limit: 256,
            max_text: 1000,
            rate_limit: 20,
            max_rooms: 10_000,
            max_rooms_per_user: 32,
        }
    }
}

struct User {
    /// u32, not usize: the map's slots stay smaller.
    token: u32,
    /// The id as typed, shared with the connection's session and the rooms.
    id: Rc<str>,
    /// The rooms this user is in (keys of `Rooms`).
    rooms: Vec<u32>,
}

/// A user on another node.
struct Remote {
    id: Rc<str>,
    node: Rc<str>,
    rooms: Vec<u32>,
}

pub struct Chat {
    /// Keyed by the id's key, which is the same allocation as `User::id` when the id is its
    /// own key (the usual case: typed in lowercase without confusables).
    users: HashMap<Rc<str>, User>,
    /// Users on other nodes, keyed like `users`. Never holds a local user's key.
    remote: HashMap<Rc<str>, Remote>,
    pub rooms: Rooms,
    /// Set by the server while the cluster is configured but unreachable (from start-up until
    /// the link is up, and from each failure until it is up again): sends that need
    /// another node are refused with `cluster_unavailable`, and ids are checked against the
    /// last known remote roster since Redis cannot be asked.
    pub cluster_down: bool,
    limits: Limits,
    /// Ids held for clients the server closed (see `ids`).
    pub reserved: Reserved,
}

impl Chat {
    pub fn new(limits: Limits) -> Self {
        Chat {
            users: HashMap::new(),
            remote: HashMap::new(),
            rooms: Rooms::default(),
            cluster_down: false,
            limits,
            reserved: Reserved::default(),
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

    /// Whether `id` could join here as far as this node can tell: valid, not local, not held
    /// for a closed client, and (while the cluster is down) not known on another node.
    /// Returns its key.
    pub fn check(&self, id: &str, now: Instant) -> Result<String, ErrorCode> {
        if !protocol::valid_id(id) {
            return Err(ErrorCode::BadId);
        }
        let k = key(id);
        if self.users.contains_key(k.as_str())
            || self.reserved.is_held(&k, now)
            || (self.cluster_down && self.remote.contains_key(k.as_str()))
        {
            return Err(ErrorCode::IdTaken);
        }
        Ok(k)
    }

    /// Takes back `id` held for a closed client if `presented` is its secret; true if so.
    pub fn resume(&mut self, id: &str, presented: Option<&Secret>, now: Instant) -> bool {
        presented.is_some() && self.reserved.claim(&key(id), presented, now) == Claim::Resumed
    }

    /// Claims `id` for `token`, puts it in the lobby and queues its welcome (the lobby's
    /// roster, the limits, and `secret` as the resume token); returns the id to keep for the
    /// session. Fails with `bad_id` or `id_taken`. With a cluster, Redis has already granted
    /// the id, so a stale remote entry for it (a user who moved here) is dropped.
    pub fn join(
        &mut self,
        id: &str,
        token: usize,
        secret: &Secret,
        resumed: bool,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Result<Rc<str>, ErrorCode> {
        let k = self.check(id, now)?;
        if let Some(r) = self.remote.remove(k.as_str()) {
            for room in r.rooms {
                self.rooms.leave_remote(room as usize, &k);
            }
        }
        let shared: Rc<str> = Rc::from(id);
        let ukey = if k == id { Rc::clone(&shared) } else { Rc::from(k) };
        let lobby = self.rooms.join_local(LOBBY, token as u32, &shared);
        let (users, total) = self.rooms.listing(lobby.key, id, self.limits.presence_limit);
        let welcome = protocol::welcome(&protocol::Welcome {
            id,
            users,
            total,
            max_text: self.limits.max_text,
            rate_limit: self.limits.rate_limit,
            burst: 2 * self.limits.rate_limit,
            resume: &ids::token_text(secret),
            resumed,
        });
        sink.push(token, &welcome);
        let user = User { token: token as u32, id: Rc::clone(&shared), rooms: vec![lobby.key as u32] };
        self.users.insert(ukey, user);
        Ok(shared)
    }

    /// Returns the tables' memory (when the server has gone idle).
    pub fn shrink(&mut self) {
        self.users.shrink_to_fit();
        self.remote.shrink_to_fit();
        self.rooms.shrink();
        self.reserved.shrink();
    }

    /// Frees `id` at once, so it can be claimed again in the same turn, and takes it out of
    /// every room. Returns the rooms this node no longer has any member in.
    pub fn leave(&mut self, id: &str) -> Vec<Rc<str>> {
        let mut emptied = Vec::new();
        if let Some(u) = self.users.remove(&*key(id)) {
            for room in u.rooms {
                let name = Rc::clone(&self.rooms.room(room as usize).name);
                if self.rooms.leave_local(room as usize, u.token) {
                    emptied.push(name);
                }
            }
        }
        emptied
    }

    /// The keys of every local user, and of ids held for closed clients (for registering
    /// them in Redis: a held id stays ours cluster-wide).
    pub fn local_keys(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(|k| &**k).chain(self.reserved.keys())
    }

    /// Every local user as typed, with the names of the rooms it is in (for a roster).
    pub fn local_members(&self) -> impl Iterator<Item = (&str, Vec<&str>)> {
        self.users
            .values()
            .map(|u| (&*u.id, u.rooms.iter().map(|r| &*self.rooms.room(*r as usize).name).collect()))
    }

    /// Memberships of local users in all (for a heartbeat's consistency check).
    pub fn local_memberships(&self) -> usize {
        self.users.values().map(|u| u.rooms.len()).sum()
    }

    /// Rooms with at least one local member (a node hears the traffic of these).
    pub fn local_rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.names().filter_map(|(name, room)| (room.local_len() > 0).then_some(name))
    }

    /// The connection of local user `id`, if any.
    pub fn token_of(&self, id: &str) -> Option<usize> {
        self.users.get(&*key(id)).map(|u| u.token as usize)
    }

    /// `id` is on `node`. A local user of that id wins: Redis gave it to us, so the remote
    /// news is stale or a conflict that re-registration will settle.
    pub fn remote_join(&mut self, node: &str, id: &str) {
        if !protocol::valid_id(id) {
            return;
        }
        let k = key(id);
        if self.users.contains_key(k.as_str()) {
            return;
        }
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
            let wanted: Vec<String> = rooms.iter().filter_map(|n| protocol::room_name(n)).collect();
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

    /// A room line from another node, for the local members of `room`.
    pub fn deliver_room(&self, room: &str, line: &Bytes, sink: &mut impl Sink) {
        if let Some(k) = self.rooms.key(room) {
            self.rooms.deliver(k, line, sink);
        }
    }

    /// A private line from another node for local user `to`: `unknown_recipient` if `to` is
    /// not here, `recipient_busy` if its queue cannot take it now (as for a local sender).
    pub fn deliver_private(&self, to: &str, line: &Bytes, sink: &mut impl Sink) -> Result<(), ErrorCode> {
        let u = self.users.get(&*key(to)).ok_or(ErrorCode::UnknownRecipient)?;
        if sink.offer(u.token as usize, line) { Ok(()) } else { Err(ErrorCode::RecipientBusy) }
    }

    /// Routes one client text frame from `from` (connection `token`), stamped with `ts`.
    pub fn handle(
        &mut self,
        token: usize,
        from: &str,
        frame: &str,
        ts: u64,
        sink: &mut impl Sink,
    ) -> Outcome {
        let Some(msg) = protocol::decode(frame) else {
            return refuse(sink, token, protocol::error(ErrorCode::BadMessage, None), ErrorCode::BadMessage);
        };
        match msg {
            Incoming::Say { room, text } => {
                let text = match self.text_ok(&text) {
                    Ok(t) => t,
                    Err(code) => return refuse(sink, token, protocol::error(code, None), code),
                };
                let name = room.as_deref().unwrap_or(LOBBY);
                let Some(room) = protocol::room_name(name) else {
                    return refuse(
                        sink,
                        token,
                        protocol::room_error(ErrorCode::BadRoom, name),
                        ErrorCode::BadRoom,
                    );
                };
                let at = self.rooms.key(&room).filter(|k| self.rooms.has_local(*k, token as u32));
                let Some(rk) = at else {
                    return refuse(
                        sink,
                        token,
                        protocol::room_error(ErrorCode::NotInRoom, &room),
                        ErrorCode::NotInRoom,
                    );
                };
                let room = Rc::clone(&self.rooms.room(rk).name);
                let line = protocol::message(Some(&room), from, None, text, ts);
                self.rooms.deliver(rk, &line, sink);
                Outcome::Room { room, line }
            }
            Incoming::Private { to, text } => {
                if !protocol::valid_id(&to) {
                    // A `to` that names nobody could be (`""`, `"a b"`) is a client bug, not a
                    // room message: refusing it keeps private text private.
                    return refuse(
                        sink,
                        token,
                        protocol::error(ErrorCode::BadMessage, None),
                        ErrorCode::BadMessage,
                    );
                }
                let text = match self.text_ok(&text) {
                    Ok(t) => t,
                    Err(code) => return refuse(sink, token, protocol::error(code, None), code),
                };
                self.private(token, from, &to, text, ts, sink)
            }
            Incoming::Join(name) => self.join_room(token, from, &name, sink),
            Incoming::Leave(name) => {
                let Some(room) = protocol::room_name(&name) else {
                    return refuse(
                        sink,
                        token,
                        protocol::room_error(ErrorCode::BadRoom, &name),
                        ErrorCode::BadRoom,
                    );
                };
                let Some(rk) = self.rooms.key(&room).filter(|k| self.rooms.has_local(*k, token as u32))
                else {
                    return refuse(
                        sink,
                        token,
                        protocol::room_error(ErrorCode::NotInRoom, &room),
                        ErrorCode::NotInRoom,
                    );
                };
                let room = Rc::clone(&self.rooms.room(rk).name);
                if let Some(u) = self.users.get_mut(&*key(from)) {
                    u.rooms.retain(|r| *r != rk as u32);
                }
                let last_local = self.rooms.leave_local(rk, token as u32);
                sink.push(token, &protocol::left(&room));
                Outcome::Left { room, last_local }
            }
            Incoming::Rooms => {
                sink.push(token, &self.rooms.directory(self.limits.presence_limit));
                Outcome::Answered
            }
        }
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

    fn private(
        &mut self,
        token: usize,
        from: &str,
        to: &str,
        text: &str,
        ts: u64,
        sink: &mut impl Sink,
    ) -> Outcome {
        let k = key(to);
        let Some(rcpt) = self.users.get(k.as_str()) else {
            return match self.remote.get(k.as_str()) {
                _ if self.cluster_down => {
                    let code = ErrorCode::ClusterUnavailable;
                    refuse(sink, token, protocol::error(code, Some(to)), code)
                }
                Some(r) => Outcome::Remote {
                    node: Rc::clone(&r.node),
                    to: Rc::clone(&r.id),
                    line: protocol::message(None, from, Some(&r.id), text, ts),
                },
                None => {
                    let code = ErrorCode::UnknownRecipient;
                    refuse(sink, token, protocol::error(code, Some(to)), code)
                }
            };
        };
        let line = protocol::message(None, from, Some(&rcpt.id), text, ts);
        // The recipient is judged by what it does, not by what others send it: if it cannot
        // take this now, the sender hears so and nobody is disconnected.
        if !sink.offer(rcpt.token as usize, &line) {
            let code = ErrorCode::RecipientBusy;
            let to = Rc::clone(&rcpt.id);
            return refuse(sink, token, protocol::error(code, Some(&to)), code);
        }
        if rcpt.token as usize != token {
            sink.push(token, &line);
        }
        Outcome::Private
    }

    fn join_room(&mut self, token: usize, from: &str, name: &str, sink: &mut impl Sink) -> Outcome {
        let Some(room) = protocol::room_name(name) else {
            return refuse(sink, token, protocol::room_error(ErrorCode::BadRoom, name), ErrorCode::BadRoom);
        };
        let limit = self.limits.presence_limit;
        let existing = self.rooms.key(&room);
        if let Some(rk) = existing.filter(|k| self.rooms.has_local(*k, token as u32)) {
            sink.push(token, &self.rooms.roster(rk, from, limit));
            return Outcome::Answered;
        }
        let Some(u) = self.users.get(&*key(from)) else { return Outcome::Answered };
        if u.rooms.len() >= self.limits.max_rooms_per_user
            || (existing.is_none() && self.rooms.len() >= self.limits.max_rooms)
        {
            let code = ErrorCode::TooManyRooms;
            return refuse(sink, token, protocol::room_error(code, &room), code);
        }
        let id = Rc::clone(&u.id);
        let j = self.rooms.join_local(&room, token as u32, &id);
        self.users.get_mut(&*key(from)).expect("checked").rooms.push(j.key as u32);
        sink.push(token, &self.rooms.roster(j.key, from, limit));
        Outcome::Joined { room: Rc::clone(&self.rooms.room(j.key).name), first_local: j.first_local }
    }

    /// Sends this turn's joins and leaves; call once at the end of every loop turn.
    pub fn flush_presence(&mut self, sink: &mut impl Sink) {
        self.rooms.flush_presence(self.limits.presence_limit, sink);
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

    #[derive(Default)]
    struct Rec(Vec<(usize, String)>);

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
        c.join(id, token, &[0; 16], false, now(), r)
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
        c.handle(token, from, frame, 5, r)
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
        let line = r#"{"type":"message","room":"lobby","from":"b","text":"hi","ts":5}"#.to_string();
        let out = say(&mut c, &mut r, 1, "b", r#"{"text":"  hi ","from":"x"}"#);
        assert_eq!(out, Outcome::Room { room: Rc::from("lobby"), line: Bytes::from(line.clone()) });
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
        assert_eq!(
            r.take(),
            vec![(0, r#"{"type":"joined","room":"dev","users":["a"],"total":1}"#.to_string())]
        );
        assert_eq!(
            say(&mut c, &mut r, 1, "b", r#"{"join":"dev"}"#),
            Outcome::Joined { room: Rc::from("dev"), first_local: false }
        );
        assert_eq!(
            r.take(),
            vec![(1, r#"{"type":"joined","room":"dev","users":["b","a"],"total":2}"#.to_string())]
        );
        c.flush_presence(&mut r);
        assert_eq!(r.take(), vec![(0, r#"{"type":"join","room":"dev","id":"b"}"#.to_string())]);
        assert!(matches!(
            say(&mut c, &mut r, 1, "b", r#"{"room":"dev","text":"psst"}"#),
            Outcome::Room { .. }
        ));
        let got = r.sorted();
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![0, 1], "c is not in dev");
        assert!(got[0].1.starts_with(r#"{"type":"message","room":"dev","from":"b""#), "{}", got[0].1);
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
        assert_eq!(
            r.take(),
            vec![(0, r#"{"type":"joined","room":"lobby","users":["a","b"],"total":2}"#.to_string())]
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
        assert_eq!(r.take(), vec![(1, line.clone()), (0, line)]);
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
        c.users.get_mut("b").unwrap().token = 99; // see Rec::offer
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
    fn a_held_id_is_refused_to_others_and_taken_back_with_its_secret() {
        let (mut c, mut r) = chat_with(&["x"]);
        let t = now();
        let secret = ids::new_secret();
        c.reserved.hold(key("Victim"), secret, t + std::time::Duration::from_secs(10));
        assert_eq!(c.check("victim", t), Err(ErrorCode::IdTaken));
        assert!(!c.resume("victim", Some(&ids::new_secret()), t), "a wrong secret");
        assert!(!c.resume("victim", None, t));
        assert!(c.resume("VICTIM", Some(&secret), t));
        assert_eq!(c.join("victim", 5, &ids::new_secret(), true, t, &mut r).as_deref(), Ok("victim"));
        assert!(r.take()[0].1.contains(r#""resumed":true"#));
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
            Outcome::Remote { node, to, line } => {
                assert_eq!((&*node, &*to), ("n2", "Bob"));
                assert!(std::str::from_utf8(&line).unwrap().contains(r#""to":"Bob""#));
            }
            other => panic!("{other:?}"),
        }
        assert!(r.take().is_empty());
        // A room line from another node reaches the local members of that room only.
        say(&mut c, &mut r, 0, "a", r#"{"join":"dev"}"#);
        r.take();
        c.deliver_room("dev", &Bytes::from_static(b"{}"), &mut r);
        assert_eq!(r.take(), vec![(0, "{}".to_string())]);
        // While the cluster is down: remote ids are taken, remote sends refused.
        c.cluster_down = true;
        assert_eq!(c.check("zed", now()), Err(ErrorCode::IdTaken));
        let out = say(&mut c, &mut r, 0, "a", r#"{"to":"nobody","text":"hi"}"#);
        assert_eq!(out, Outcome::Refused(ErrorCode::ClusterUnavailable));
        c.cluster_down = false;
        assert_eq!(c.check("zed", now()).as_deref(), Ok("zed"), "Redis decides while it is up");
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
