//! A client's request routed (`route`), and room lines: handed to the broker for a number
//! (`broker.rs`), and delivered to the room's local members once numbered, here or by Redis
//! (`published`, the one call back for a pending line; `deliver_room` for another node's).

use super::broker::{Broker, Post, Published};
use super::users::UserId;
use super::{Chat, Outcome, Sink, Tagged, refuse};
use crate::cluster::Ticket;
use crate::events::Fact;
use crate::protocol::{self, ErrorCode, Incoming, LOBBY};
use bytes::Bytes;
use std::rc::Rc;
use std::time::Instant;

impl Chat {
    /// A room line numbered by Redis in `epoch` (from another node), for the local members
    /// of `room`; kept in the room's history.
    pub fn deliver_room(&mut self, room: &str, epoch: &str, line: &Bytes, sink: &mut impl Sink) {
        let Some(seq) = crate::protocol::line_seq(line) else { return };
        self.deliver_numbered(room, epoch, seq, line, None, sink);
    }

    /// The one call back into chat for a room message a broker took (`Published::Pending`):
    /// numbered by Redis (`numbered`: its seq and epoch), or never (None: the link failed
    /// first, or the answer made no sense), and then numbered here, in an epoch of this
    /// node's own. Either way it reaches the local members now, the sender's own copy tagged
    /// with its cid. Returns whether the room has members on other nodes, who should have
    /// heard it too, and what it became (for a backend's publish, its answer).
    pub fn published(
        &mut self,
        t: &Ticket,
        numbered: Option<(u64, &str)>,
        sink: &mut impl Sink,
    ) -> (bool, super::backend::Posted) {
        let here = self.token_of(&t.from) == Some(t.token);
        let (seq, unconfirmed) = match numbered {
            Some((seq, epoch)) => {
                let line = protocol::with_seq(&t.template, seq);
                let sender = here.then_some((t.token, t.cid.as_deref()));
                self.deliver_numbered(&t.room, epoch, seq, &line, sender, sink);
                self.events.record(|| Fact::Message(line));
                (seq, None)
            }
            None => {
                let sender = if here { t.token } else { usize::MAX };
                let line = self.number_here(&t.room, &t.template, sender, t.cid.as_deref(), sink);
                self.events.record(|| Fact::Message(line.clone()));
                (protocol::line_seq(&line).unwrap_or(0), Some(ErrorCode::ClusterUnavailable))
            }
        };
        let remote = match self.rooms.key(&t.room).map(|k| self.rooms.room(k)) {
            Some(r) => r.len() > r.local_len(),
            None => {
                // A backend's line into a room without members: its log is idle (see `pump`).
                self.rooms.closed.push(Rc::clone(&t.room));
                false
            }
        };
        let epoch = self.history.get(&t.room).map_or_else(|| Rc::from(""), |l| Rc::clone(&l.epoch));
        (remote, super::backend::Posted::Numbered { seq, epoch, unconfirmed })
    }

    /// Keeps and delivers `line`, message `seq` of `room` in `epoch`. `sender` (connection and
    /// cid) gets its own copy tagged with its cid.
    fn deliver_numbered(
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
    fn number_here(
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn route(
        &mut self,
        token: usize,
        from: &str,
        may: Option<&crate::auth::Rooms>,
        msg: Incoming<'_>,
        cid: Option<&str>,
        ts: u64,
        now: Instant,
        sink: &mut impl Sink,
        broker: &mut dyn Broker,
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
                if let Some(line) = self.mute_error(from, Some(&room), None, ts) {
                    return refuse(sink, token, line, ErrorCode::Muted);
                }
                self.log_of(rk);
                let sender = self.users.by_token(token as u32).map_or(from, |u| &*u.id);
                let encode = |seq| protocol::room_message(&room, seq, from, text, ts);
                let post = Post { room: &room, from: sender, token, cid, api: None, encode: &encode };
                match broker.publish(&mut self.history, post) {
                    Published::Now(line) => {
                        self.rooms.deliver(rk, &line, sink);
                        self.events.record(|| Fact::Message(line.clone()));
                        Outcome::Room { room, line, cid: None }
                    }
                    Published::Unconfirmed(line) => {
                        self.rooms.deliver(rk, &line, sink);
                        self.events.record(|| Fact::Message(line));
                        Outcome::Unconfirmed { room, cid: None }
                    }
                    Published::Pending => Outcome::Pending { room },
                }
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
                if let Some(line) = self.mute_error(from, None, Some(&to), ts) {
                    return refuse(sink, token, line, ErrorCode::Muted);
                }
                let sender =
                    self.users.by_token(token as u32).map_or_else(|| UserId::new(from), |u| u.id.clone());
                self.private(token, &sender, &to, text, cid, ts, now, sink)
            }
            Incoming::Join { room, replay } => {
                if let (Some(may), Some(name)) = (may, protocol::room_name(&room))
                    && !may.may_enter(&name)
                {
                    let line = protocol::room_error(ErrorCode::Forbidden, &name);
                    return refuse(sink, token, line, ErrorCode::Forbidden);
                }
                self.join_room(token, from, &room, &replay, sink, broker)
            }
            Incoming::Leave(name) => {
                let rk = match self.member_of(token, &name) {
                    Ok(rk) => rk,
                    Err((code, line)) => return refuse(sink, token, line, code),
                };
                let room = Rc::clone(&self.rooms.room(rk).name);
                match self.leave_room(token, from, rk, &protocol::left(&room), sink) {
                    Some(last_local) => Outcome::Left { room, last_local },
                    None => Outcome::Answered,
                }
            }
            Incoming::Rooms => {
                let only = may.map(|m| move |name: &str| m.may_enter(name));
                let listed = only.as_ref().map(|f| f as &dyn Fn(&str) -> bool);
                sink.push(token, &self.rooms.directory(self.limits.presence_limit, listed));
                Outcome::Answered
            }
        }
    }

    /// Takes user `from` (on `token`) out of room `rk`, telling it with `line` (its members
    /// get a `leave`); None if there is no such user. Returns whether this node has no member
    /// of the room left.
    fn leave_room(
        &mut self,
        token: usize,
        from: &str,
        rk: usize,
        line: &Bytes,
        sink: &mut impl Sink,
    ) -> Option<bool> {
        let (_, u) = self.users.get_mut(from)?;
        u.rooms.remove(rk as u32);
        // Named before leaving: a room left empty is gone after `leave_local`.
        let room = Rc::clone(&self.rooms.room(rk).name);
        let last_local = self.rooms.leave_local(rk, token as u32, &u.id);
        self.events.record(|| Fact::Leave(room, Rc::from(&*u.id)));
        sink.push(token, line);
        Some(last_local)
    }

    /// A refreshed or resumed token narrowed user `from`'s rooms (`--auth token`): it leaves
    /// each room `may` does not allow, told `{"type":"left","room":R,"reason":"forbidden"}`,
    /// and its members see a `leave`. Returns the rooms left, each with whether this node has
    /// no member of it left. O(the user's rooms), at most `--max-rooms-per-user`.
    pub fn narrow(
        &mut self,
        token: usize,
        from: &str,
        may: &crate::auth::Rooms,
        sink: &mut impl Sink,
    ) -> Vec<(Rc<str>, bool)> {
        let Some((_, u)) = self.users.get(from) else { return Vec::new() };
        let out: Vec<usize> = u
            .rooms
            .iter()
            .map(|rk| rk as usize)
            .filter(|&rk| !may.may_enter(&self.rooms.room(rk).name))
            .collect();
        let mut left = Vec::with_capacity(out.len());
        for rk in out {
            let room = Rc::clone(&self.rooms.room(rk).name);
            let line = protocol::left_because(&room, ErrorCode::Forbidden.as_str());
            if let Some(last_local) = self.leave_room(token, from, rk, &line, sink) {
                left.push((room, last_local));
            }
        }
        left
    }

    /// The key of room `name` if connection `token` is a member; else the error to send.
    pub(super) fn member_of(&self, token: usize, name: &str) -> Result<usize, (ErrorCode, Bytes)> {
        let Some(room) = protocol::room_name(name) else {
            return Err((ErrorCode::BadRoom, protocol::room_error(ErrorCode::BadRoom, name)));
        };
        self.rooms
            .key(&room)
            .filter(|k| self.rooms.has_local(*k, token as u32))
            .ok_or_else(|| (ErrorCode::NotInRoom, protocol::room_error(ErrorCode::NotInRoom, &room)))
    }

    /// The trimmed text if it may be sent, or why not (`empty`, `too_long`).
    pub(super) fn text_ok<'t>(&self, text: &'t str) -> Result<&'t str, ErrorCode> {
        let t = text.trim();
        if t.is_empty() {
            Err(ErrorCode::Empty)
        } else if t.len() > self.limits.max_text && t.chars().count() > self.limits.max_text {
            Err(ErrorCode::TooLong)
        } else {
            Ok(t)
        }
    }
}
