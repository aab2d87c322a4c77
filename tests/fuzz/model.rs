//! The chat as the rules describe it, written apart from `Chat`: the model the chat
//! properties check against, and what it expects one frame to get.

use crate::Check;
use crate::json::model_room_name;
use bytes::Bytes;
use chatloop::chat::{Limits, Sink, ids};
use chatloop::protocol::{self, ErrorCode, Incoming, LOBBY};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

#[derive(Default)]
pub(crate) struct Rec(pub(crate) Vec<(usize, Bytes)>);

impl Sink for Rec {
    fn push(&mut self, token: usize, line: &Bytes) {
        self.0.push((token, line.clone()));
    }
    fn offer(&mut self, token: usize, line: &Bytes) -> bool {
        self.push(token, line);
        true
    }
}

pub(crate) fn line_text(l: &[u8]) -> String {
    String::from_utf8_lossy(l).into_owned()
}

/// Every payload the chat pushes is one or more JSON objects with a `type`, one per line.
pub(crate) fn json_lines(payload: &[u8]) -> Check<Vec<Value>> {
    payload
        .split(|b| *b == b'\n')
        .map(|line| {
            let v: Value = serde_json::from_slice(line).map_err(|e| {
                TestCaseError::fail(format!(
                    "pushed a line that is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(line)
                ))
            })?;
            prop_assert!(v.get("type").and_then(Value::as_str).is_some(), "line without a type: {v}");
            Ok(v)
        })
        .collect()
}

/// One online user, as the model knows it.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) token: usize,
    pub(crate) id: String,
}

/// A room as the model knows it.
#[derive(Debug, Default)]
pub(crate) struct RoomModel {
    /// Members' tokens.
    pub(crate) members: Vec<usize>,
    /// This turn's presence events: (joined, id).
    pub(crate) events: Vec<(bool, String)>,
    /// Where a member who joined this turn finds its own join in `events`.
    pub(crate) joined_at: HashMap<usize, usize>,
    /// Above the presence limit at the last flush with events.
    pub(crate) was_quiet: bool,
}

/// The chat as the rules describe it: users, and rooms (a room with no members is gone,
/// and with it its unsent events and its quiet state).
#[derive(Debug)]
pub(crate) struct Model {
    pub(crate) limits: Limits,
    pub(crate) users: Vec<User>,
    pub(crate) rooms: BTreeMap<String, RoomModel>,
    /// The last seq of each room's history (kept after the room empties).
    pub(crate) seqs: BTreeMap<String, u64>,
    /// The last pseq given to each connection.
    pub(crate) pseqs: BTreeMap<usize, u64>,
}

impl Model {
    pub(crate) fn new(limits: Limits) -> Model {
        Model {
            limits,
            users: Vec::new(),
            rooms: BTreeMap::new(),
            seqs: BTreeMap::new(),
            pseqs: BTreeMap::new(),
        }
    }

    pub(crate) fn user(&self, token: usize) -> &User {
        self.users.iter().find(|u| u.token == token).expect("online")
    }

    pub(crate) fn by_id(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| ids::key(&u.id) == ids::key(id))
    }

    pub(crate) fn is_member(&self, room: &str, token: usize) -> bool {
        self.rooms.get(room).is_some_and(|r| r.members.contains(&token))
    }

    pub(crate) fn rooms_of(&self, token: usize) -> Vec<&str> {
        self.rooms.iter().filter(|(_, r)| r.members.contains(&token)).map(|(n, _)| n.as_str()).collect()
    }

    pub(crate) fn member_ids(&self, room: &str) -> Vec<&str> {
        self.rooms[room].members.iter().map(|t| self.user(*t).id.as_str()).collect()
    }

    /// `token` joins `room` (created if need be), which records the event.
    pub(crate) fn enter(&mut self, room: &str, token: usize) {
        let id = self.user(token).id.clone();
        let r = self.rooms.entry(room.to_string()).or_default();
        r.members.push(token);
        r.events.push((true, id));
        r.joined_at.insert(token, r.events.len() - 1);
    }

    /// `token` leaves `room`; true if that emptied it (and so it is gone).
    pub(crate) fn exit(&mut self, room: &str, token: usize) -> bool {
        let id = self.user(token).id.clone();
        let r = self.rooms.get_mut(room).expect("a room the user is in");
        r.members.retain(|t| *t != token);
        r.joined_at.remove(&token);
        r.events.push((false, id));
        let empty = r.members.is_empty();
        if empty {
            self.rooms.remove(room);
        }
        empty
    }

    /// A new connection: online, and in the lobby.
    pub(crate) fn connect(&mut self, user: User) {
        let token = user.token;
        self.users.push(user);
        self.enter(LOBBY, token);
    }

    /// A connection ends: it leaves every room. Returns the rooms that emptied, sorted.
    pub(crate) fn disconnect(&mut self, token: usize) -> Vec<String> {
        let rooms: Vec<String> = self.rooms_of(token).into_iter().map(String::from).collect();
        let emptied = rooms.into_iter().filter(|r| self.exit(r, token)).collect();
        self.users.retain(|u| u.token != token);
        emptied
    }
}

/// A refusal's line names the recipient, the room, or neither.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum About {
    Nothing,
    To(String),
    Room(String),
}

/// What a frame should come to, by the rules, before anything is sent.
#[derive(Debug, Clone)]
pub(crate) enum Expect {
    Refused(ErrorCode, About),
    Room {
        room: String,
        text: String,
    },
    Private {
        rcpt: User,
        text: String,
    },
    Joined {
        room: String,
        first_local: bool,
    },
    /// A join of a room the sender is already in: `joined` again, and of this turn's presence
    /// events it gets only those after it.
    AlreadyIn {
        room: String,
    },
    Left {
        room: String,
        last_local: bool,
    },
    Directory,
}

pub(crate) fn expect(model: &Model, sender: &User, msg: Option<&Incoming<'_>>) -> Expect {
    use Expect::Refused;
    let Some(msg) = msg else { return Refused(ErrorCode::BadMessage, About::Nothing) };
    let text_ok = |t: &str| {
        let t = t.trim();
        if t.is_empty() {
            Err(ErrorCode::Empty)
        } else if t.chars().count() > model.limits.max_text {
            Err(ErrorCode::TooLong)
        } else {
            Ok(t.to_string())
        }
    };
    match msg {
        Incoming::Say { room, text } => {
            // The text is judged first: an empty message to a bad room is `empty`.
            let text = match text_ok(text) {
                Ok(t) => t,
                Err(code) => return Refused(code, About::Nothing),
            };
            let name = room.as_deref().unwrap_or(LOBBY);
            let Some(room) = model_room_name(name) else {
                return Refused(ErrorCode::BadRoom, About::Room(name.to_string()));
            };
            if !model.is_member(&room, sender.token) {
                return Refused(ErrorCode::NotInRoom, About::Room(room));
            }
            Expect::Room { room, text }
        }
        Incoming::Private { to, text } => {
            // A `to` that names nobody could be is refused before anything else: it must
            // never fall back to a room message.
            if !protocol::valid_id(to) {
                return Refused(ErrorCode::BadMessage, About::Nothing);
            }
            let text = match text_ok(text) {
                Ok(t) => t,
                Err(code) => return Refused(code, About::Nothing),
            };
            match model.by_id(to) {
                Some(rcpt) => Expect::Private { rcpt: rcpt.clone(), text },
                None => Refused(ErrorCode::UnknownRecipient, About::To(to.to_string())),
            }
        }
        Incoming::Join { room: name, .. } => {
            let Some(room) = model_room_name(name) else {
                return Refused(ErrorCode::BadRoom, About::Room(name.to_string()));
            };
            if model.is_member(&room, sender.token) {
                return Expect::AlreadyIn { room };
            }
            let exists = model.rooms.contains_key(&room);
            if model.rooms_of(sender.token).len() >= model.limits.max_rooms_per_user
                || (!exists && model.rooms.len() >= model.limits.max_rooms)
            {
                return Refused(ErrorCode::TooManyRooms, About::Room(room));
            }
            Expect::Joined { room, first_local: !exists }
        }
        Incoming::Leave(name) => {
            let Some(room) = model_room_name(name) else {
                return Refused(ErrorCode::BadRoom, About::Room(name.to_string()));
            };
            if !model.is_member(&room, sender.token) {
                return Refused(ErrorCode::NotInRoom, About::Room(room));
            }
            let last_local = model.rooms[&room].members.len() == 1;
            Expect::Left { room, last_local }
        }
        Incoming::Rooms => Expect::Directory,
    }
}
