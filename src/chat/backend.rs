//! What the backend API (`api/`) asks of chat: a system line into a room (`publish_system`,
//! numbered by the broker like a member's message) or to a user (`send_system`, kept in its
//! backlog like any private message), and read-only views of rooms, history and users, each
//! bounded by a limit its caller passes.

use super::broker::{Broker, Post, Published};
use super::ids::key;
use super::{Chat, Nodes, Sink};
use crate::protocol::{self, ErrorCode, Listing};
use bytes::Bytes;
use std::rc::Rc;
use std::time::Instant;

/// Who a backend's private line is kept as being from: no id can be this, so an
/// `undelivered` about it reaches no one, here or on the recipient's node.
pub const API_SENDER: &str = "@api";

/// A system room line as the broker took it.
#[derive(Debug, PartialEq, Eq)]
pub enum Posted {
    /// Numbered `seq` in `epoch` and delivered to the local members; `unconfirmed` when it
    /// was numbered here because Redis did not (`cluster_unavailable`: it never had it;
    /// `cluster_unconfirmed`: it may pass it on yet), so other nodes may not have it.
    Numbered { seq: u64, epoch: Rc<str>, unconfirmed: Option<ErrorCode> },
    /// Redis numbers it: the answer comes through `Chat::published`.
    Pending,
}

/// Where a system private line went.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// To a local user, connected or in its grace: its number for it.
    Here { to: Rc<str>, pseq: u64 },
    /// To a user on another node, which numbers it: the line to relay there.
    Remote { node: Rc<str>, to: Rc<str>, line: Bytes },
}

/// One user as the API shows it.
pub enum Presence {
    /// Connected, to this node or another one.
    Online {
        id: Rc<str>,
        rooms: Vec<Rc<str>>,
    },
    /// In its resume grace here.
    Away {
        id: Rc<str>,
        rooms: Vec<Rc<str>>,
    },
    Offline,
}

/// One room as the API shows it: at most `limit` members.
pub struct RoomView<'a> {
    pub name: Rc<str>,
    pub listing: Listing<'a>,
    pub seq: u64,
    pub epoch: Rc<str>,
}

impl Chat {
    /// A system line into `room` (a valid room name) from the backend, `from` (a valid id)
    /// only if it named one. The room need not have members: its log keeps the line, and is
    /// idle from now on (it goes after `--history-ttl` like a gone room's). A room that does
    /// not exist is counted against `--max-rooms` as a join would be: the longest orphan gives
    /// way, else `too_many_rooms`.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_system(
        &mut self,
        room: &str,
        text: &str,
        from: Option<&str>,
        (token, generation): (usize, u32),
        ts: u64,
        sink: &mut impl Sink,
        broker: &mut dyn Broker,
    ) -> Result<Posted, ErrorCode> {
        let text = self.text_ok(text)?;
        let existing = self.rooms.key(room);
        if existing.is_none() && self.rooms.len() >= self.limits.max_rooms {
            self.evict_orphan();
            if self.rooms.len() >= self.limits.max_rooms {
                return Err(ErrorCode::TooManyRooms);
            }
        }
        let name: Rc<str> = match existing {
            Some(rk) => {
                self.log_of(rk);
                Rc::clone(&self.rooms.room(rk).name)
            }
            None => Rc::from(room),
        };
        // The sender of a ticket is a connection's user; a backend is none (no id is "").
        let sender = "";
        let encode = |seq| protocol::system_message(&name, seq, from, text, ts);
        let post =
            Post { room: &name, from: sender, token, cid: None, api: Some(generation), encode: &encode };
        let (line, unconfirmed) = match broker.publish(&mut self.history, post) {
            Published::Now(line) => (line, None),
            Published::Unconfirmed(line) => (line, Some(ErrorCode::ClusterUnavailable)),
            Published::Pending => return Ok(Posted::Pending),
        };
        Ok(self.posted(&name, &line, unconfirmed, sink))
    }

    /// Delivers a system line numbered here and says what it got.
    fn posted(
        &mut self,
        room: &Rc<str>,
        line: &Bytes,
        unconfirmed: Option<ErrorCode>,
        sink: &mut impl Sink,
    ) -> Posted {
        match self.rooms.key(room) {
            Some(rk) => self.rooms.deliver(rk, line, sink),
            // No members: its log is idle from the end of this turn (see `pump`).
            None => self.rooms.closed.push(Rc::clone(room)),
        }
        self.events.record(|| crate::events::Fact::Message(line.clone()));
        let seq = protocol::line_seq(line).unwrap_or(0);
        let epoch = self.history.get(room).map_or_else(|| Rc::from(""), |l| Rc::clone(&l.epoch));
        Posted::Numbered { seq, epoch, unconfirmed }
    }

    /// A system private line for `to` from the backend: numbered and kept like a member's
    /// (a user in its grace gets it from its backlog when it resumes). `offline` when `to`
    /// is nowhere (`unknown_recipient`); `recipient_busy` / `undelivered` as for a member's message.
    pub fn send_system(
        &mut self,
        to: &str,
        text: &str,
        from: Option<&str>,
        ts: u64,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Result<Sent, ErrorCode> {
        let text = self.text_ok(text)?;
        let k = key(to);
        let rcpt = match self.users.get(&k) {
            Some((_, u)) => Rc::from(&*u.id),
            None => match self.holds.get_mut(&k, now) {
                Some(a) => Rc::clone(&a.id),
                None => {
                    return match self.remote.get(k.as_str()) {
                        _ if self.nodes == Nodes::Down => Err(ErrorCode::ClusterUnavailable),
                        Some(r) => Ok(Sent::Remote {
                            node: Rc::clone(&r.node),
                            to: Rc::clone(&r.id),
                            line: protocol::system_private(from, &r.id, text, ts),
                        }),
                        None => Err(ErrorCode::UnknownRecipient),
                    };
                }
            },
        };
        let line = protocol::system_private(from, &rcpt, text, ts);
        let at = match self.users.get(&k) {
            Some((t, _)) => super::private::At::Here(t as usize),
            None => super::private::At::Held(&k),
        };
        self.deliver_to(at, API_SENDER, None, &line, now, sink)?;
        let pseq = match self.users.get(&k) {
            Some((t, _)) => self.users.private_of(t).map_or(0, |p| p.pseq),
            None => self.holds.get_mut(&k, now).map_or(0, |a| a.private.pseq),
        };
        Ok(Sent::Here { to: rcpt, pseq })
    }

    /// The directory: at most `limit` rooms, the largest first, as (name, members, away),
    /// and how many rooms there are.
    pub fn room_sizes(&self, limit: usize) -> (Vec<(&str, usize, usize)>, usize) {
        (self.rooms.sizes().take(limit).collect(), self.rooms.len())
    }

    /// Room `name` (a valid name) with at most `limit` members listed; None if it has no
    /// members and no history.
    pub fn room_view(&self, name: &str, limit: usize) -> Option<RoomView<'_>> {
        let rk = self.rooms.key(name);
        let log = self.history.get(name);
        let (seq, epoch) = match (log, rk) {
            (Some(l), _) => (l.latest(), Rc::clone(&l.epoch)),
            (None, Some(rk)) => (0, Rc::from(self.rooms.room(rk).epoch())),
            (None, None) => return None,
        };
        let listing = match rk {
            Some(rk) => self.rooms.members(rk, limit, &self.users),
            None => Listing { users: Vec::new(), away: Vec::new(), total: 0 },
        };
        Some(RoomView { name: Rc::from(name), listing, seq, epoch })
    }

    /// Room `name`'s kept lines after `since` (at most `limit`), as a client's replay gets
    /// them: its epoch, the seq a gap starts from when `since` (in `epoch`, if given) is no
    /// longer reached, and the lines. None if the room has no history.
    pub fn history_view(
        &self,
        name: &str,
        since: u64,
        epoch: Option<&str>,
        limit: usize,
    ) -> Option<(Rc<str>, Option<u64>, Vec<&Bytes>)> {
        let log = self.history.get(name)?;
        let (first, next) = (log.first(), log.next());
        let same = epoch.is_none_or(|e| *e == *log.epoch);
        let (start, gap) = replay_from(since, same, first, next);
        let lines = (start..next).take(limit).filter_map(|s| log.line(s)).collect();
        Some((Rc::clone(&log.epoch), gap, lines))
    }

    /// Whether `id` is online (here or on another node), away (in its grace here), or
    /// offline, and its rooms (at most `limit`).
    pub fn presence(&mut self, id: &str, limit: usize, now: Instant) -> Presence {
        let k = key(id);
        let names = |rooms: &mut dyn Iterator<Item = u32>, chat: &Chat| -> Vec<Rc<str>> {
            rooms.take(limit).map(|rk| Rc::clone(&chat.rooms.room(rk as usize).name)).collect()
        };
        if let Some((_, u)) = self.users.get(&k) {
            return Presence::Online { id: Rc::from(&*u.id), rooms: names(&mut u.rooms.iter(), self) };
        }
        if let Some(r) = self.remote.get(k.as_str()) {
            return Presence::Online {
                id: Rc::clone(&r.id),
                rooms: names(&mut r.rooms.iter().copied(), self),
            };
        }
        let Some(a) = self.holds.get_mut(&k, now) else { return Presence::Offline };
        let (id, rooms) = (Rc::clone(&a.id), a.rooms.clone());
        Presence::Away { id, rooms: names(&mut rooms.into_iter(), self) }
    }
}

/// Where a read of a log kept from `first` to `next - 1` starts for a reader at `since`
/// (`same`: in the log's epoch), and the `gap` it gets (the first seq kept) when `since` is no
/// longer reached or its epoch is not the log's: one rule for this node's logs and Redis's.
pub fn replay_from(since: u64, same: bool, first: u64, next: u64) -> (u64, Option<u64>) {
    let from = if same { since.saturating_add(1) } else { first };
    let gap = (!same || (from < first && from < next)).then_some(first);
    (from.max(first), gap)
}
