//! The JSON wire format, both directions.
//!
//! Client frames carry one JSON object each; server lines are JSON objects that the outbox
//! later joins with `\n` into one text message. Every server line is encoded exactly once and
//! handed around as `Bytes`, so a room message costs one encode however many people read it.

mod splice;
pub use splice::{has_cid, line_seq, split_seq, with_cid, with_pseq, with_seq};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

type Text<'a> = std::borrow::Cow<'a, str>;

/// The fields a client frame may carry. Unknown fields (a forged `from`, say) are ignored on
/// purpose: the server stamps the sender. Every field must have its type when present:
/// `"to":null` (a client's `picked ?? null`) is refused, never read as "no recipient",
/// because that would publish private text to a room.
#[derive(Debug, Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    to: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    text: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    room: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    join: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    leave: Option<Text<'a>>,
    #[serde(default, deserialize_with = "present")]
    rooms: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    last: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    since: Option<u64>,
    #[serde(borrow, default, deserialize_with = "present")]
    epoch: Option<Text<'a>>,
    #[serde(borrow, default, deserialize_with = "present")]
    cid: Option<Text<'a>>,
}

/// What a join asks of a room's history.
#[derive(Debug, PartialEq, Eq)]
pub enum Replay<'a> {
    /// Live traffic only.
    None,
    /// `"last":K`: up to K of the most recent messages first.
    Last(u64),
    /// `"since":S,"epoch":E`: every message after S of epoch E first.
    Since { seq: u64, epoch: Text<'a> },
}

/// What a client frame asks for. Names (`room`, `to`) are as sent; chat checks them.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// `{"text":T}` (to `lobby`) or `{"room":R,"text":T}`.
    Say { room: Option<Text<'a>>, text: Text<'a> },
    /// `{"to":ID,"text":T}`.
    Private { to: Text<'a>, text: Text<'a> },
    /// `{"join":R}`, with `last` or `since` and `epoch` for history.
    Join { room: Text<'a>, replay: Replay<'a> },
    /// `{"leave":R}`.
    Leave(Text<'a>),
    /// `{"rooms":true}`: the directory.
    Rooms,
}

/// A client frame: its request and its `cid`, or `None` if it is not one (see `decode_why`).
pub fn decode(frame: &str) -> Option<(Incoming<'_>, Option<Text<'_>>)> {
    decode_why(frame).ok()
}

/// A client frame: its request and its `cid`; or why it is not one, in words for the
/// `bad_message` error's `reason` (which field, and what is wrong with it).
pub fn decode_why(frame: &str) -> Result<(Incoming<'_>, Option<Text<'_>>), std::borrow::Cow<'static, str>> {
    if !frame.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        return Err("not a JSON object".into());
    }
    let mut f: Fields<'_> = serde_json::from_str(frame).map_err(|e| match e.classify() {
        serde_json::error::Category::Syntax if e.to_string().starts_with("trailing characters") => {
            std::borrow::Cow::Borrowed("one JSON object per message: more follows it")
        }
        _ => format!("{e}").into(),
    })?;
    let cid = f.cid.take();
    if cid.as_ref().is_some_and(|c| !(1..=MAX_CID).contains(&c.chars().count())) {
        return Err("cid: 1 to 64 characters".into());
    }
    let history = f.last.is_some() || f.since.is_some() || f.epoch.is_some();
    let fields = [
        f.to.is_some(),
        f.text.is_some(),
        f.room.is_some(),
        f.join.is_some(),
        f.leave.is_some(),
        f.rooms.is_some(),
    ];
    let n = fields.iter().filter(|x| **x).count();
    let only = |want: usize| n == want;
    let request = match f {
        Fields { text: Some(text), to: None, room, .. } if !history && only(1 + room.is_some() as usize) => {
            Incoming::Say { room, text }
        }
        Fields { text: Some(text), to: Some(to), .. } if !history && only(2) => {
            Incoming::Private { to, text }
        }
        Fields { join: Some(room), last, since, epoch, .. } if only(1) => {
            let replay = match (last, since, epoch) {
                (None, None, None) => Replay::None,
                (Some(k), None, None) => Replay::Last(k),
                (None, Some(seq), Some(epoch)) => Replay::Since { seq, epoch },
                (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                    return Err("last and since exclude each other".into());
                }
                _ => return Err("since and epoch go together".into()),
            };
            Incoming::Join { room, replay }
        }
        Fields { leave: Some(r), .. } if !history && only(1) => Incoming::Leave(r),
        Fields { rooms: Some(true), .. } if !history && only(1) => Incoming::Rooms,
        Fields { rooms: Some(false), .. } if !history && only(1) => return Err("rooms: only true asks".into()),
        _ if n == 0 && !history => return Err("nothing asked: send text, to and text, join, leave or rooms".into()),
        _ if history && f.join.is_none() => return Err("last, since and epoch go with join".into()),
        _ => return Err("fields that do not go together: text (with room or to), join, leave and rooms are each a request of its own".into()),
    };
    Ok((request, cid))
}

/// The longest `cid` a client may send, in characters (of any kind).
pub const MAX_CID: usize = 64;

/// The longest room name, in bytes (ASCII letters, digits, `_`, `-`, `.`).
pub const MAX_ROOM: usize = 32;

/// The longest user id, in bytes (the same characters as a room name).
pub const MAX_ID: usize = 32;

pub fn room_name(name: &str) -> Option<Text<'_>> {
    let ok = (1..=MAX_ROOM).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        return None;
    }
    Some(match name.bytes().any(|b| b.is_ascii_uppercase()) {
        true => Text::Owned(name.to_ascii_lowercase()),
        false => Text::Borrowed(name),
    })
}

/// The room every connection starts in, and where `{"text":T}` goes.
pub const LOBBY: &str = "lobby";

/// A field that may be missing but, when present, must have its type (not null).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Error codes a client can be sent; the names are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadId,
    IdTaken,
    UnknownRecipient,
    BadMessage,
    Empty,
    TooLong,
    RateLimited,
    ClusterUnavailable,
    ClusterUnconfirmed,
    RecipientBusy,
    BadRoom,
    NotInRoom,
    TooManyRooms,
    Undelivered,
    /// `--auth token`: a token refused (at the upgrade, then close 4401; or a refresh).
    Unauthorized,
    /// `--auth token`: a join of a room outside the token's `rooms` claim.
    Forbidden,
    /// Moderation: the id is banned (at the upgrade, or when the ban comes; close 4403).
    Banned,
    /// Moderation: the sender is muted in that room, or everywhere.
    Muted,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadId => "bad_id",
            ErrorCode::IdTaken => "id_taken",
            ErrorCode::UnknownRecipient => "unknown_recipient",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::Empty => "empty",
            ErrorCode::TooLong => "too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
            ErrorCode::ClusterUnconfirmed => "cluster_unconfirmed",
            ErrorCode::RecipientBusy => "recipient_busy",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::Undelivered => "undelivered",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Banned => "banned",
            ErrorCode::Muted => "muted",
        }
    }

    fn human(self) -> &'static str {
        match self {
            ErrorCode::BadId => "an id is 1 to 32 characters from A-Z a-z 0-9 _ - .",
            ErrorCode::IdTaken => "that id is already online",
            ErrorCode::UnknownRecipient => "no one with that id is online",
            ErrorCode::BadMessage => {
                "send one JSON object such as {\"text\":\"hi\"}, {\"room\":\"dev\",\"text\":\"hi\"}, \
                 {\"to\":\"bob\",\"text\":\"hi\"}, {\"join\":\"dev\"}, {\"leave\":\"dev\"} or {\"rooms\":true}"
            }
            ErrorCode::Empty => "the message is empty",
            ErrorCode::TooLong => "the message is too long",
            ErrorCode::RateLimited => "too many messages: slow down",
            ErrorCode::ClusterUnavailable => {
                "the other chat servers cannot be reached right now; users on this server still can"
            }
            ErrorCode::ClusterUnconfirmed => "the other servers may or may not have this message",
            ErrorCode::RecipientBusy => {
                "the recipient cannot take messages this fast right now; this one was not delivered"
            }
            ErrorCode::BadRoom => "a room name is 1 to 32 characters from a-z 0-9 _ - .",
            ErrorCode::NotInRoom => "you are not in that room: join it first",
            ErrorCode::TooManyRooms => "too many rooms: leave one first, or the server has no room for more",
            ErrorCode::Undelivered => {
                "the recipient lost its connection and did not come back in time (or too much was waiting for it): \
                 this message was not delivered"
            }
            ErrorCode::Unauthorized => "sign in again: the token was refused (see reason)",
            ErrorCode::Forbidden => "your sign-in does not allow that room",
            ErrorCode::Banned => "you are banned from this chat until the time in until (Unix ms)",
            ErrorCode::Muted => "you are muted: your messages are refused until the time in until (Unix ms)",
        }
    }
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    r#type: &'static str,
    code: &'static str,
    message: &'static str,
    /// What exactly was wrong (a `bad_message`'s field and why).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    /// Until when a moderation decision lasts (Unix ms: `banned`, `muted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    until: Option<u64>,
}

#[derive(Serialize)]
struct MessageLine<'a> {
    r#type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    /// A line from the backend API (`POST /api/publish`, `/api/send`), not from a member.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    system: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    text: &'a str,
    ts: u64,
}

/// The first line a client gets: who it is, who is online (at most `--presence-limit` ids,
/// its own first; `total` is the true count), the limits it should enforce before sending,
/// and the token that takes its id back if the server closes it.
#[derive(Serialize)]
pub struct Welcome<'a> {
    pub id: &'a str,
    pub users: Vec<&'a str>,
    /// Those of `users` whose connection was lost, in their resume grace (absent if none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub away: Vec<&'a str>,
    pub total: usize,
    /// Unicode scalar values per text (`--max-text`).
    pub max_text: usize,
    /// Messages per second (`--rate-limit`; 0: none), in bursts of up to `burst`.
    pub rate_limit: u32,
    pub burst: u32,
    pub resume: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
    /// `--auth token`: the token's `exp` in Unix milliseconds (absent in open mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

#[derive(Serialize)]
struct Typed<'a, T: Serialize> {
    r#type: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// `users` (the whole list again); `joined` (the answer to a join) is this plus where the room stands.
#[derive(Serialize)]
struct RosterLine<'a> {
    r#type: &'static str,
    room: &'a str,
    users: Vec<&'a str>,
    /// Those of `users` in their resume grace (absent if none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    away: Vec<&'a str>,
    total: usize,
}

/// A room's members as a roster gives them: at most the presence limit, the asker first,
/// those away among them, and the true count.
pub struct Listing<'a> {
    pub users: Vec<&'a str>,
    pub away: Vec<&'a str>,
    pub total: usize,
}

#[derive(Serialize)]
struct PresenceLine<'a> {
    r#type: &'static str,
    room: &'a str,
    id: &'a str,
}

#[derive(Serialize)]
struct RoomLine<'a> {
    r#type: &'static str,
    room: &'a str,
    /// `left` because a backend took the user out (`POST /api/kick`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    kicked: bool,
}

#[derive(Serialize)]
struct LeftLine<'a> {
    r#type: &'static str,
    room: &'a str,
    reason: &'a str,
}

/// One entry of the directory.
#[derive(Serialize)]
pub struct RoomSize<'a> {
    pub room: &'a str,
    pub users: usize,
    /// Of `users`, those in their resume grace (absent if none).
    #[serde(skip_serializing_if = "is_zero")]
    pub away: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct RoomsLine<'a> {
    r#type: &'static str,
    rooms: &'a [RoomSize<'a>],
    total: usize,
}

fn encode<T: Serialize>(v: &T) -> Bytes {
    // Serializing our own structs of strings and integers cannot fail.
    Bytes::from(serde_json::to_vec(v).expect("serializable"))
}

/// `encode`, for a line that may be kept a long time (a room's history, a private backlog):
/// `Bytes` keeps the vector's whole allocation, and its doubling could leave up to twice the
/// line, charged to nobody. Shrinking a heap block is done in place, without a copy. Not for
/// every line: shrinking the rosters a crowd's joins send left their remainders between
/// long-lived blocks, which cost idle memberships more than it saved.
fn encode_kept<T: Serialize>(v: &T) -> Bytes {
    let mut line = serde_json::to_vec(v).expect("serializable");
    line.shrink_to_fit();
    Bytes::from(line)
}

/// `{"type":"error",...}`; `to` names the recipient of a private message that failed.
pub fn error(code: ErrorCode, to: Option<&str>) -> Bytes {
    error_line(code, None, to, None, None)
}

/// Every error line: its code's message, and the fields that say what it is about.
fn error_line(code: ErrorCode, reason: Opt<'_>, to: Opt<'_>, room: Opt<'_>, until: Option<u64>) -> Bytes {
    let (message, code) = (code.human(), code.as_str());
    encode(&ErrorLine { r#type: "error", code, message, reason, to, room, until })
}

/// An optional name an error line carries.
type Opt<'a> = Option<&'a str>;

/// `{"type":"error","code":"unauthorized",...,"reason":R}`: a token refused, and why
/// (`auth::Reason::as_str`). Never carries the token.
pub fn unauthorized(reason: &str) -> Bytes {
    error_line(ErrorCode::Unauthorized, Some(reason), None, None, None)
}

#[derive(Serialize)]
struct TokenLine {
    r#type: &'static str,
    exp: u64,
}

/// `{"type":"token","exp":MS}`: a refresh accepted; the session now lasts until `exp`.
pub fn token_ok(exp: u64) -> Bytes {
    encode(&TokenLine { r#type: "token", exp })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFrame {
    token: String,
    #[serde(default)]
    cid: Option<String>,
}

/// A refresh, `{"token":"NEW"}` (with an optional `cid`): the token and cid, or None for any
/// other frame. Only `--auth token` asks; in open mode such a frame is a `bad_message`.
pub fn decode_token(frame: &str) -> Option<(String, Option<String>)> {
    if !frame.contains("\"token\"") {
        return None;
    }
    serde_json::from_str::<TokenFrame>(frame).ok().map(|t| (t.token, t.cid))
}

/// `{"type":"error","code":"bad_message",...,"reason":R}`: which field, and what is wrong.
pub fn bad_message(reason: &str) -> Bytes {
    error_line(ErrorCode::BadMessage, Some(reason), None, None, None)
}

/// An error about one message: with its `cid` (the client's id for it) when it had one, so
/// that the client can tell which of its messages it is about.
pub fn error_about(code: ErrorCode, to: Option<&str>, cid: Option<&str>) -> Bytes {
    let line = error(code, to);
    match cid {
        Some(cid) => with_cid(&line, cid),
        None => line,
    }
}

/// `{"type":"error",...,"room":R}`: an error about room `room`.
pub fn room_error(code: ErrorCode, room: &str) -> Bytes {
    error_line(code, None, None, Some(room), None)
}

/// A moderation refusal (`banned`, `muted`) until `until` (Unix ms), naming `room` or `to`.
pub fn moderated(code: ErrorCode, until: u64, room: Option<&str>, to: Option<&str>) -> Bytes {
    error_line(code, None, to, room, Some(until))
}

/// `{"type":"left","room":R,"kicked":true}`: a backend took the user out of room `room`.
pub fn kicked(room: &str) -> Bytes {
    encode(&RoomLine { r#type: "left", room, kicked: true })
}

/// A message to room `room`, number `seq` in it.
pub fn room_message(room: &str, seq: u64, from: &str, text: &str, ts: u64) -> Bytes {
    encode_kept(&MessageLine {
        r#type: "message",
        room: Some(room),
        seq: Some(seq),
        system: false,
        from: Some(from),
        to: None,
        text,
        ts,
    })
}

/// A system line for room `room` from the backend API, number `seq` in it; `from` only if
/// the backend named one.
pub fn system_message(room: &str, seq: u64, from: Option<&str>, text: &str, ts: u64) -> Bytes {
    encode_kept(&MessageLine {
        r#type: "message",
        room: Some(room),
        seq: Some(seq),
        system: true,
        from,
        to: None,
        text,
        ts,
    })
}

/// A private system line from the backend API for `to` (its copy gets its `pseq`).
pub fn system_private(from: Option<&str>, to: &str, text: &str, ts: u64) -> Bytes {
    private_line(true, from, to, text, ts)
}

/// A private message, as its sender gets it; the recipient's copy is this `with_pseq`.
pub fn private_message(from: &str, to: &str, text: &str, ts: u64) -> Bytes {
    private_line(false, Some(from), to, text, ts)
}

fn private_line(system: bool, from: Option<&str>, to: &str, text: &str, ts: u64) -> Bytes {
    encode_kept(&MessageLine {
        r#type: "message",
        room: None,
        seq: None,
        system,
        from,
        to: Some(to),
        text,
        ts,
    })
}

/// `{"type":"joined","room":R,"users":[...],"total":N,"seq":S,"epoch":E}`: the answer to a
/// join; `seq` is the room's latest message number (0: none yet).
pub fn joined(room: &str, listing: Listing<'_>, seq: u64, epoch: &str) -> Bytes {
    #[derive(Serialize)]
    struct Joined<'a> {
        #[serde(flatten)]
        roster: RosterLine<'a>,
        seq: u64,
        epoch: &'a str,
    }
    let Listing { users, away, total } = listing;
    let roster = RosterLine { r#type: "joined", room, users, away, total };
    encode(&Joined { roster, seq, epoch })
}

/// `{"type":"gap","room":R,"seq":S}`: messages before S that were asked for are no longer kept
/// (or the epoch asked for is not the room's); S is the oldest kept, or the next to come.
pub fn gap(room: &str, seq: u64) -> Bytes {
    #[derive(Serialize)]
    struct Gap<'a> {
        r#type: &'static str,
        room: &'a str,
        seq: u64,
    }
    encode(&Gap { r#type: "gap", room, seq })
}

/// `{"type":"left","room":R}`: the answer to a leave.
pub fn left(room: &str) -> Bytes {
    encode(&RoomLine { r#type: "left", room, kicked: false })
}

/// `{"type":"left","room":R,"reason":WHY}`: the server took the user out of `room` (`forbidden`:
/// a refreshed or resumed token's `rooms` claim no longer allows it).
pub fn left_because(room: &str, reason: &str) -> Bytes {
    encode(&LeftLine { r#type: "left", room, reason })
}

/// `{"type":"rooms","rooms":[{"room":R,"users":N},...],"total":T}`: the directory.
pub fn rooms(list: &[RoomSize<'_>], total: usize) -> Bytes {
    encode(&RoomsLine { r#type: "rooms", rooms: list, total })
}

/// `{"type":"welcome",...}`.
pub fn welcome(w: &Welcome<'_>) -> Bytes {
    encode(&Typed { r#type: "welcome", body: w })
}

/// `{"type":"users","room":R,"users":[...],"total":N}`: room R's whole list again (see
/// `Rooms::flush_presence`).
pub fn users(room: &str, listing: Listing<'_>) -> Bytes {
    let Listing { users, away, total } = listing;
    encode(&RosterLine { r#type: "users", room, users, away, total })
}

/// A member's change of presence in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Join,
    Leave,
    /// Its connection was lost: still a member, in its resume grace.
    Away,
    /// Resumed within its grace.
    Back,
}

/// Appends a `join`, `leave`, `away` or `back` line of room `room` (no trailing newline) to a
/// presence batch.
pub fn presence_into(buf: &mut Vec<u8>, kind: Presence, room: &str, id: &str) {
    let r#type = match kind {
        Presence::Join => "join",
        Presence::Leave => "leave",
        Presence::Away => "away",
        Presence::Back => "back",
    };
    serde_json::to_writer(buf, &PresenceLine { r#type, room, id }).expect("serializable");
}

/// True when `id` is 1 to 32 characters from `A-Z a-z 0-9 _ - .`.
pub fn valid_id(id: &str) -> bool {
    (1..=MAX_ID).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests;
