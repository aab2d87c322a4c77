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

pub mod backend;
pub mod backlog;
pub mod broker;
pub mod fetch;
pub mod history;
pub mod ids;
mod join;
pub mod members;
pub use join::Entry;
pub mod moderation;
pub mod moved;
mod private;
mod remote;
pub mod resume;
pub mod rooms;
mod say;
pub mod user_id;
pub mod users;

use crate::protocol::{self, ErrorCode};
use backlog::Budget;
use broker::Broker;
use bytes::Bytes;
use history::History;
use ids::{Secret, key};
use resume::Holds;
use rooms::Rooms;
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
    /// A room message numbered now (`Published::Now`) and delivered to room `room`'s members.
    Room {
        room: Rc<str>,
        line: Bytes,
        /// The client's id for the message (`cid`), for an error about it later.
        cid: Option<Rc<str>>,
    },
    /// A room message numbered here and delivered to the local members although other nodes
    /// should have had it (`Published::Unconfirmed`): the caller tells the sender.
    Unconfirmed {
        room: Rc<str>,
        cid: Option<Rc<str>>,
    },
    /// A room message handed on for a number (`Published::Pending`): nothing was delivered
    /// yet; the answer comes back as `Chat::published`.
    Pending {
        room: Rc<str>,
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

/// Other nodes, as the server sees them. Room numbering does not look at this (the
/// `Broker` does it); private messages and id checks do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nodes {
    /// No cluster configured.
    Alone,
    /// The link to Redis is up: private messages kept for a held user are kept in Redis too.
    Up,
    /// Configured but unreachable (from start-up until the link is up, and from each failure
    /// until it is up again): sends that need another node are refused with
    /// `cluster_unavailable`, and ids are checked against the last known remote roster since
    /// Redis cannot be asked.
    Down,
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
    rooms: Rooms,
    history: History,
    /// Whether other nodes exist and can be reached now (`set_nodes`).
    nodes: Nodes,
    limits: Limits,
    /// Users whose connection was lost, in their grace (see `resume`).
    holds: Holds,
    /// What chat asks of the loop (the one outbox of commands besides the `Sink`).
    pub todo: ForLoop,
    /// What happened, for the event stream (`events`): recorded here where it happens, drained
    /// by the server once a turn. Off unless the stream is served.
    pub events: crate::events::Queue,
    /// Rooms given up so far for a connected user's join at `--max-rooms`.
    rooms_evicted: u64,
    /// Every private backlog's charge (`--backlog-bytes`).
    backlog: Budget,
    counters: Counters,
    /// Bans, mutes and token revocations (issue 25; see `moderation`).
    moderation: moderation::Moderation,
}

/// What chat asks of the loop, besides lines to push: chat owns no socket, link or clock, so
/// what needs one waits here until the loop takes it (each list at its point of the turn:
/// the Redis ones when the turn's commands for Redis are flushed, the others at its end).
#[derive(Default)]
pub struct ForLoop {
    /// Joins waiting for Redis's history of their room, for the server to send (see `fetch`).
    pub fetches: Vec<fetch::Fetch>,
    /// Private messages kept for users in their grace, for the server to keep in Redis too.
    pub kept_away: Vec<moved::KeptAway>,
    /// Memberships of users in their grace given up with an orphaned room (id, room), for the
    /// server to announce to other nodes (see `Rooms::evict_orphan`).
    pub evicted: Vec<(Rc<str>, Rc<str>)>,
    /// Connections whose next ping should come by then, carrying their latest `pseq`: they
    /// have lines to acknowledge (see `backlog`). For the server to act on at the end of the
    /// turn.
    pub want_ack: Vec<(usize, Instant)>,
    /// Holds ended early by `lose` (`--max-holds`), with the lines for their senders, for the
    /// server to send, log and announce at the end of the turn.
    pub ended_early: Vec<(Gone, Vec<(usize, Bytes)>)>,
}

/// Chat's numbers for `/metrics` (`Chat::gauges`).
pub struct Gauges {
    pub history: (usize, usize, u64, u64, u64),
    pub held: usize,
    pub backlog: ((usize, usize), Counters),
    pub rooms: usize,
    pub rooms_evicted: u64,
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
            nodes: Nodes::Alone,
            limits,
            holds: Holds::default(),
            rooms_evicted: 0,
            backlog: Budget::new(limits.backlog_bytes),
            counters: Counters::default(),
            todo: ForLoop::default(),
            moderation: moderation::Moderation::default(),
            events: crate::events::Queue::default(),
        }
    }

    /// Whether local user key `k` is held here (in its grace) for a client presenting
    /// `presented`.
    pub fn held_for(&mut self, k: &str, presented: Option<&Secret>, now: Instant) -> bool {
        self.holds.get_mut(k, now).is_some() && !self.holds.refuses(k, presented, now)
    }

    /// The private numbering and kept lines of local user key `k` in its grace, if held.
    pub fn held_backlog(&mut self, k: &str, now: Instant) -> Option<(u64, Vec<Bytes>)> {
        let a = self.holds.get_mut(k, now)?;
        Some((a.private.pseq, a.private.kept.iter().map(|k| k.line.clone()).collect()))
    }

    /// Whether any user is in its grace.
    pub fn has_holds(&self) -> bool {
        !self.holds.is_empty()
    }

    /// Members of `room` on this node.
    pub fn local_count(&self, room: &str) -> usize {
        self.rooms.key(room).map_or(0, |k| self.rooms.room(k).local_len())
    }

    /// Rooms with members (here or elsewhere).
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// The node stopped hearing `room` (its last local member left): what Redis numbers from
    /// now on passes its history by (`History::stale`).
    pub fn unheard(&mut self, room: &str) {
        self.history.stale(room);
    }

    /// The link to Redis went down or came back: every room's history may have missed
    /// messages (`History::stale_all`).
    pub fn all_unheard(&mut self) {
        self.history.stale_all();
    }

    /// Drops the histories of rooms idle past `--history-ttl`.
    pub fn expire_history(&mut self, now: Instant) {
        self.history.expire(now);
    }

    /// Whether a history is waiting for its TTL (the loop must wake for it).
    pub fn history_idle(&self) -> bool {
        self.history.any_idle()
    }

    /// The numbers `/metrics` shows of chat: history (kept lines, bytes, gaps, replayed,
    /// fetched), users held, backlogs (lines, bytes) and their counters, rooms, rooms evicted.
    pub fn gauges(&self) -> Gauges {
        let (kept, bytes) = self.history.kept();
        let h = self.history.counters;
        Gauges {
            history: (kept, bytes, h.gaps, h.replayed, h.fetched),
            held: self.holds.len(),
            backlog: (self.backlog.used(), self.counters),
            rooms: self.rooms.len(),
            rooms_evicted: self.rooms_evicted,
        }
    }

    /// The server tells chat whether other nodes exist and can be reached (see `Nodes`).
    pub fn set_nodes(&mut self, nodes: Nodes) {
        self.nodes = nodes;
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

    /// Reserves the user table for connection tokens below `n` (address space only, until
    /// used; see `users`).
    pub fn reserve(&mut self, n: usize) {
        self.users.reserve(n);
    }

    /// Moves tables made during a crowd's arrival to fresh allocations, before the heap is
    /// trimmed (`Rooms::repack`).
    pub fn repack(&mut self) {
        self.rooms.repack();
    }

    /// Returns the tables' memory (when the server has gone idle).
    pub fn shrink(&mut self) {
        self.users.shrink();
        self.remote.shrink_to_fit();
        self.rooms.shrink();
        self.history.shrink();
        self.holds.shrink();
        self.moderation.shrink();
        self.todo.want_ack.shrink_to_fit();
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
    pub fn id_of(&self, token: usize) -> Option<&users::UserId> {
        self.users.by_token(token as u32).map(|u| &u.id)
    }

    /// The connection of local user `id`, if any.
    pub fn token_of(&self, id: &str) -> Option<usize> {
        self.users.get(id).map(|(t, _)| t as usize)
    }

    /// Routes one client text frame from `from` (connection `token`), stamped with `ts`.
    /// With a `cid`, every line this frame sends its sender (its own copy, an answer, an
    /// error) carries it. Room messages are numbered by `broker` (see `broker.rs`).
    #[allow(clippy::too_many_arguments)]
    pub fn handle(
        &mut self,
        token: usize,
        from: &str,
        frame: &str,
        ts: u64,
        now: Instant,
        sink: &mut impl Sink,
        broker: &mut dyn Broker,
    ) -> Outcome {
        self.handle_as(token, from, None, frame, ts, now, sink, broker)
    }

    /// `handle` for a user whose token allows only the rooms `may` (`--auth token`): a join
    /// outside them is `forbidden`, and the directory lists only them. None: every room.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_as(
        &mut self,
        token: usize,
        from: &str,
        may: Option<&crate::auth::Rooms>,
        frame: &str,
        ts: u64,
        now: Instant,
        sink: &mut impl Sink,
        broker: &mut dyn Broker,
    ) -> Outcome {
        let (msg, cid) = match protocol::decode_why(frame) {
            Ok(m) => m,
            Err(why) => return refuse(sink, token, protocol::bad_message(&why), ErrorCode::BadMessage),
        };
        let Some(cid) = cid else { return self.route(token, from, may, msg, None, ts, now, sink, broker) };
        // What the caller reports on later (the cluster, when Redis answers) carries the cid.
        let tagged = &mut Tagged { inner: sink, token, cid: &cid };
        match self.route(token, from, may, msg, Some(&cid), ts, now, tagged, broker) {
            Outcome::Room { room, line, .. } => Outcome::Room { room, line, cid: Some(Rc::from(&*cid)) },
            Outcome::Unconfirmed { room, .. } => Outcome::Unconfirmed { room, cid: Some(Rc::from(&*cid)) },
            Outcome::Remote { node, to, line, .. } => {
                Outcome::Remote { node, to, line, cid: Some(Rc::from(&*cid)) }
            }
            other => other,
        }
    }

    /// Room `rk`'s history log, started in the room's epoch if it has none (see `Room::epoch`).
    fn log_of(&mut self, rk: usize) -> &history::Log {
        let room = self.rooms.room(rk);
        self.history.open(&room.name, room.epoch())
    }

    /// The epoch to offer Redis for room `name` (see `History::offer`), its log started first
    /// in the room's own epoch, the one its members were told.
    fn offer(&mut self, name: &str) -> Rc<str> {
        if let Some(rk) = self.rooms.key(name) {
            self.log_of(rk);
        }
        self.history.offer(name)
    }

    /// Records a moderation action for the event stream (`{"type":"moderation",...fields,
    /// "ts":...}`): `fields` should name the action and whom it is about, e.g.
    /// `{"action":"ban","id":"eve","seconds":60}`. Nothing is built while the stream is off.
    pub fn record_moderation(&mut self, fields: impl FnOnce() -> serde_json::Map<String, serde_json::Value>) {
        self.events.record(|| crate::events::Fact::Moderation(fields()));
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
mod tests;
