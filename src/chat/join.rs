//! A user's session in chat: the id check and the join with its welcome (`check`, `join`,
//! `welcome`), a lost connection held through its grace and its end (`lose`, `expire`,
//! `end_hold`), leaving (`leave`), and joining a room with its history replayed (`join_room`,
//! `answer_join`, `pump`).

use super::broker::Broker;
use super::ids::{Secret, key};
use super::resume::{Away, Claim, Private};
use super::rooms::Flow;
use super::users::{User, UserId};
use super::{Chat, Collect, EXPIRE_BATCH, Gone, Nodes, Outcome, Sink, backlog, ids, refuse, users};
use crate::events::Fact;
use crate::protocol::{self, ErrorCode, LOBBY, Replay};
use bytes::Bytes;
use std::rc::Rc;
use std::time::Instant;

/// How a user enters (see `Chat::join_as`): whether it starts in `lobby`, and its token's
/// `exp` (Unix ms) for the welcome; `Entry::OPEN` in open mode.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub lobby: bool,
    pub exp: Option<u64>,
}

impl Entry {
    pub const OPEN: Entry = Entry { lobby: true, exp: None };
}

impl Chat {
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
            || (self.nodes == Nodes::Down && self.remote.contains_key(k.as_str()))
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
        self.join_as(id, token, secret, presented, pseq, Entry::OPEN, now, sink)
    }

    /// `join` for a signed-in user (`--auth token`): a new one starts in `lobby` only if
    /// `entry.lobby` (its token allows it), and the welcome carries `entry.exp`.
    #[allow(clippy::too_many_arguments)]
    pub fn join_as(
        &mut self,
        id: &str,
        token: usize,
        secret: &Secret,
        presented: Option<&Secret>,
        pseq: u64,
        entry: Entry,
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
                // Not held: its first connection, or back after its grace ended.
                self.events.record(|| Fact::Online(Rc::clone(&shared)));
                let mut rooms = users::RoomList::default();
                if entry.lobby {
                    let lobby = self.rooms.join_local(LOBBY, token as u32, &shared);
                    self.history.set_idle(LOBBY, None);
                    rooms.push(lobby.key as u32);
                    let room = &self.rooms.room(lobby.key).name;
                    self.events.record(|| Fact::Join(Rc::clone(room), Rc::clone(&shared)));
                }
                (shared, rooms, None)
            }
        };
        let resumed = private.is_some();
        let welcome = self.welcome_as(&shared, secret, resumed, entry);
        sink.push(token, &welcome);
        let mut private = private;
        if let Some(p) = &mut private {
            // The client has everything up to `pseq`; the rest goes again, in order, and is
            // kept until acknowledged.
            p.asked = false;
            self.backlog.ack(p, pseq);
            for kept in &p.kept {
                sink.push(token, &kept.line);
            }
            if !p.kept.is_empty() {
                self.todo.want_ack.push((token, now + backlog::ACK_DELAY));
            }
        }
        self.users.insert(token as u32, User { id: UserId::new(&shared), rooms }, private);
        Ok((shared, resumed))
    }

    /// The first line of a session: who it is, who is in the lobby (those away among them),
    /// its limits and its resume token. One builder for every way in (`join_as`,
    /// `take_over`). Signed in, with its token's `exp`; one whose token does not allow `lobby`
    /// sees nobody there (`users` empty, `total` 0), since it is not in it.
    pub(super) fn welcome_as(&self, id: &str, secret: &Secret, resumed: bool, entry: Entry) -> Bytes {
        let limit = self.limits.presence_limit;
        let listing = match self.rooms.key(LOBBY) {
            _ if !entry.lobby => protocol::Listing { users: Vec::new(), away: Vec::new(), total: 0 },
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
            exp: entry.exp,
        })
    }

    /// `id` (on connection `token`) lost its connection: it is held under `secret` until
    /// `until`, still a member of its rooms, with no presence event. Past `--max-holds`, the
    /// hold whose grace ends first ends now, as if its grace had passed (its senders are told
    /// what it never got): returned for the server to log and announce. The newest hold is
    /// kept, since its user is the likeliest to come back. The hold ended is gone from chat
    /// at once (its id free, its rooms left); what it tells senders waits in `ended_early`.
    pub fn lose(&mut self, id: &str, secret: Secret, until: Instant) {
        let Some((token, u, private)) = self.users.remove(id) else { return };
        let ukey: Rc<str> = Rc::from(key(id));
        // The hold's id: the backlog's own if it has one (one block fewer), else a new one.
        let shared = private.as_ref().and_then(|p| p.owner().cloned()).unwrap_or_else(|| Rc::from(&*u.id));
        for room in u.rooms.iter() {
            self.rooms.set_away(room as usize, token, &ukey, &shared);
        }
        let mut private = private.map_or_else(Private::default, |p| *p);
        private.asked = false;
        if self.holds.len() >= self.limits.max_holds.max(1)
            && let Some((k, away)) = self.holds.take_oldest()
        {
            self.counters.holds_ended_early += 1;
            let mut told = Collect::default();
            let gone = self.end_hold(&k, away, &mut told);
            self.todo.ended_early.push((gone, told.0));
        }
        self.holds.hold(ukey, Away { id: shared, secret, until, rooms: u.rooms.to_vec(), private });
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

    pub(super) fn end_hold(&mut self, ukey: &str, mut away: Away, sink: &mut impl Sink) -> Gone {
        let mut emptied = Vec::new();
        for room in &away.rooms {
            let name = Rc::clone(&self.rooms.room(*room as usize).name);
            self.events.record(|| Fact::Leave(Rc::clone(&name), Rc::clone(&away.id)));
            if self.rooms.leave_away(*room as usize, ukey) {
                emptied.push(name);
            }
        }
        // Its grace is over: gone for good.
        self.events.record(|| Fact::Offline(Rc::clone(&away.id)));
        // Each sender hears which of its messages were never acknowledged (one the old
        // connection took but never acknowledged may have been read; the pongs make that
        // rare). The acknowledged tail was there only for a resume.
        for kept in self.backlog.release_unacked(&mut away.private) {
            self.undelivered(&kept, &away.id, sink);
        }
        Gone { id: away.id, emptied }
    }

    /// Frees `id` at once, so it can be claimed again in the same turn, and takes it out of
    /// every room. Returns the rooms this node no longer has any member in.
    pub fn leave(&mut self, id: &str) -> Vec<Rc<str>> {
        let mut emptied = Vec::new();
        if let Some((token, u, mut private)) = self.users.remove(id) {
            if let Some(p) = &mut private {
                // It closed itself: what it read, it read.
                self.backlog.release(p);
            }
            for room in u.rooms.iter() {
                let name = Rc::clone(&self.rooms.room(room as usize).name);
                self.events.record(|| Fact::Leave(Rc::clone(&name), Rc::from(&*u.id)));
                if self.rooms.leave_local(room as usize, token, &u.id) {
                    emptied.push(name);
                }
            }
            // It closed its only connection itself: no grace to wait for.
            self.events.record(|| Fact::Offline(Rc::from(&*u.id)));
        }
        emptied
    }

    pub(super) fn join_room(
        &mut self,
        token: usize,
        from: &str,
        name: &str,
        replay: &Replay<'_>,
        sink: &mut impl Sink,
        broker: &dyn Broker,
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
        let id = u.id.clone();
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
                self.events.record(|| Fact::Join(Rc::clone(&name), Rc::from(&*id)));
                (j.key, Outcome::Joined { room: name, first_local: j.first_local })
            }
        };
        self.history.set_idle(&room, None);
        if !(broker.shares_history() && self.fetch_first(token, &id, rk, replay)) {
            self.answer_join(token, from, rk, replay, sink);
        }
        outcome
    }

    /// Makes room for a new room at `--max-rooms` by giving up the room orphaned longest (its
    /// members all in their grace), so that rooms kept only by holds never keep a connected
    /// user out. Its members come back without it; `since` still replays its history, which
    /// outlives the room as any room's does.
    pub(super) fn evict_orphan(&mut self) {
        let Some(e) = self.rooms.evict_orphan() else { return };
        self.rooms_evicted += 1;
        for (ukey, id) in e.members {
            self.events.record(|| Fact::Leave(Rc::clone(&e.name), Rc::clone(&id)));
            self.holds.forget_room(&ukey, e.key);
            self.todo.evicted.push((id, Rc::clone(&e.name)));
        }
    }

    /// `joined` for member `token` (`from`) of room `rk`, and what it asked to replay from
    /// the room's history: a gap first if some of it is gone.
    pub(super) fn answer_join(
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
            None => (0, 1, 1, Rc::from(self.rooms.room(rk).epoch())),
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
        // A join while an earlier one's replay is still under way (two in one read): the
        // replay goes on from the earlier start, so what either asked for comes, once and in
        // order. Starting over from the later one dropped what the first had not yet had.
        let start = match self.rooms.flow(rk, token as u32) {
            Some(Flow::Replay(going)) => start.min(going),
            _ => start,
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
}
