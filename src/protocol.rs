//! The JSON wire format, both directions.
//!
//! Client frames carry one JSON object each; server lines are JSON objects that the outbox
//! later joins with `\n` into one text message. Every server line is encoded exactly once and
//! handed around as `Bytes`, so a room message costs one encode however many people read it.

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
    if cid.as_ref().is_some_and(|c| !(1..=64).contains(&c.chars().count())) {
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

pub fn room_name(name: &str) -> Option<Text<'_>> {
    let ok = (1..=32).contains(&name.len())
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
    encode(&ErrorLine {
        r#type: "error",
        code: code.as_str(),
        message: code.human(),
        reason: None,
        to,
        room: None,
    })
}

/// `{"type":"error","code":"unauthorized",...,"reason":R}`: a token refused, and why
/// (`auth::Reason::as_str`). Never carries the token.
pub fn unauthorized(reason: &str) -> Bytes {
    let code = ErrorCode::Unauthorized;
    encode(&ErrorLine {
        r#type: "error",
        code: code.as_str(),
        message: code.human(),
        reason: Some(reason),
        to: None,
        room: None,
    })
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
    let code = ErrorCode::BadMessage;
    encode(&ErrorLine {
        r#type: "error",
        code: code.as_str(),
        message: code.human(),
        reason: Some(reason),
        to: None,
        room: None,
    })
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
    encode(&ErrorLine {
        r#type: "error",
        code: code.as_str(),
        message: code.human(),
        reason: None,
        to: None,
        room: Some(room),
    })
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

/// A room message's template (encoded with seq 0) numbered `seq`.
pub fn with_seq(template: &[u8], seq: u64) -> Bytes {
    match split_seq(template) {
        Some((pre, post)) => Bytes::from([pre, seq.to_string().as_bytes(), post].concat()),
        None => Bytes::copy_from_slice(template),
    }
}

/// A room message line around its `"seq":0`: what comes before the number and after it.
pub fn split_seq(template: &[u8]) -> Option<(&[u8], &[u8])> {
    const SEQ0: &[u8] = b"\"seq\":0,";
    let at = template.windows(SEQ0.len()).position(|w| w == SEQ0)?;
    Some((&template[..at + SEQ0.len() - 2], &template[at + SEQ0.len() - 1..]))
}

/// The seq of a numbered room message line (`"seq":N` after its room).
pub fn line_seq(line: &[u8]) -> Option<u64> {
    const SEQ: &[u8] = b"\"seq\":";
    let at = line.windows(SEQ.len()).position(|w| w == SEQ)? + SEQ.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits]).ok()?.parse().ok()
}

/// Whether `line` (a server line) names a message already. Inside a JSON string a quote is
/// escaped, so `"cid":` can only be a key.
pub fn has_cid(line: &[u8]) -> bool {
    line.windows(6).any(|w| w == b"\"cid\":")
}

/// `line` with `"cid":CID` spliced in after its type (the first field): the sender's copy of
/// its message, or an error about it, carrying the client's own id for it.
pub fn with_cid(line: &[u8], cid: &str) -> Bytes {
    let mut field = b"\"cid\":".to_vec();
    serde_json::to_writer(&mut field, cid).expect("a string serializes");
    let mut out = Vec::with_capacity(line.len() + field.len() + 1);
    match line.iter().position(|b| *b == b',') {
        Some(i) => {
            out.extend_from_slice(&line[..=i]);
            out.extend_from_slice(&field);
            out.push(b',');
            out.extend_from_slice(&line[i + 1..]);
        }
        // One field or none: only ours, or ours after it.
        None => {
            let body = &line[..line.len().saturating_sub(1)];
            out.extend_from_slice(body);
            if body.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(&field);
            out.push(b'}');
        }
    }
    Bytes::from(out)
}

/// The recipient's copy of a private message: the sender's copy (`{"type":"message",...`)
/// with `"pseq":N` spliced in after its type, so a line from another node is numbered here
/// without being decoded and encoded again.
pub fn with_pseq(line: &[u8], pseq: u64) -> Bytes {
    const HEAD: &[u8] = br#"{"type":"message","#;
    let rest = line.strip_prefix(HEAD).unwrap_or(line);
    let mut out = Vec::with_capacity(line.len() + 24);
    out.extend_from_slice(HEAD);
    out.extend_from_slice(b"\"pseq\":");
    out.extend_from_slice(pseq.to_string().as_bytes());
    out.push(b',');
    out.extend_from_slice(rest);
    Bytes::from(out)
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
    encode(&RoomLine { r#type: "left", room })
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
    (1..=32).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request of a frame, without its cid.
    fn req(frame: &str) -> Option<Incoming<'_>> {
        decode(frame).map(|(r, _)| r)
    }

    #[test]
    fn a_cid_is_taken_from_any_request_and_spliced_into_lines_for_its_sender() {
        assert_eq!(decode(r#"{"text":"hi","cid":"m-1"}"#).unwrap().1.as_deref(), Some("m-1"));
        assert_eq!(decode(r#"{"join":"dev","cid":"j"}"#).unwrap().1.as_deref(), Some("j"));
        for bad in [r#"{"text":"hi","cid":""}"#, r#"{"text":"hi","cid":5}"#, r#"{"text":"hi","cid":null}"#] {
            assert!(decode(bad).is_none(), "{bad}");
        }
        assert!(decode(&format!(r#"{{"text":"hi","cid":"{}"}}"#, "é".repeat(64))).is_some(), "64 characters");
        assert!(decode(&format!(r#"{{"text":"hi","cid":"{}"}}"#, "x".repeat(65))).is_none());
        assert_eq!(
            &with_cid(&error(ErrorCode::Empty, None), "a\"b")[..],
            &br#"{"type":"error","cid":"a\"b","code":"empty","message":"the message is empty"}"#[..]
        );
        assert_eq!(&with_cid(b"{}", "x")[..], br#"{"cid":"x"}"#);
        let named = error_about(ErrorCode::Undelivered, Some("bob"), Some("L1"));
        assert!(has_cid(&named) && named.starts_with(br#"{"type":"error","cid":"L1","code":"undelivered""#));
        assert!(!has_cid(&error(ErrorCode::Undelivered, Some("bob"))));
        assert!(!has_cid(br#"{"type":"message","text":"\"cid\":1"}"#), "in a text it is escaped");
    }

    #[test]
    fn decodes_every_request_and_ignores_forged_from() {
        use std::borrow::Cow;
        let say = |room: Option<&'static str>, text: &'static str| Incoming::Say {
            room: room.map(Cow::Borrowed),
            text: Cow::Borrowed(text),
        };
        assert_eq!(req(r#"{"text":"hi","from":"mallory"}"#), Some(say(None, "hi")));
        assert_eq!(req(r#"{"room":"Dev","text":"hi"}"#), Some(say(Some("Dev"), "hi")));
        assert_eq!(
            req(r#"{"to":"bob","text":"psst"}"#),
            Some(Incoming::Private { to: "bob".into(), text: "psst".into() })
        );
        assert_eq!(
            req(r#"{"join":"dev"}"#),
            Some(Incoming::Join { room: "dev".into(), replay: Replay::None })
        );
        assert_eq!(
            req(r#"{"join":"dev","last":50}"#),
            Some(Incoming::Join { room: "dev".into(), replay: Replay::Last(50) })
        );
        assert_eq!(
            req(r#"{"join":"dev","since":7,"epoch":"AbCd"}"#),
            Some(Incoming::Join {
                room: "dev".into(),
                replay: Replay::Since { seq: 7, epoch: "AbCd".into() }
            })
        );
        assert_eq!(req(r#"{"leave":"lobby","type":"x"}"#), Some(Incoming::Leave("lobby".into())));
        assert_eq!(req(r#"{"rooms":true}"#), Some(Incoming::Rooms));
        // Escapes force an owned Cow; the decoded text must still be right.
        let Some(Incoming::Say { text, .. }) = req(r#"{"text":"a\nb\u00e9"}"#) else { panic!() };
        assert_eq!(text, "a\nbé");
    }

    #[test]
    fn room_names_are_folded_to_lowercase_and_checked() {
        assert_eq!(room_name("Dev.Team-1_x").as_deref(), Some("dev.team-1_x"));
        assert_eq!(room_name(&"a".repeat(32)).as_deref(), Some(&*"a".repeat(32)));
        for bad in ["", &"a".repeat(33), "a b", "é", "a/b", "<x>"] {
            assert_eq!(room_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "",
            "null",
            "[]",
            "\"hi\"",
            "{}",
            r#"{"text":5}"#,
            r#"{"to":5,"text":"x"}"#,
            r#"{"to":null,"text":"x"}"#,
            r#"{"to":["bob"],"text":"x"}"#,
            r#"{"to":{},"text":"x"}"#,
            r#"{"to":true,"text":"x"}"#,
            // Two requests in one, or a request with a field of another: never guessed.
            r#"{"to":"bob","room":"dev","text":"x"}"#,
            r#"{"join":"dev","text":"x"}"#,
            r#"{"join":"dev","leave":"dev"}"#,
            r#"{"leave":"dev","room":"dev"}"#,
            r#"{"rooms":true,"join":"dev"}"#,
            r#"{"rooms":false}"#,
            r#"{"rooms":"true"}"#,
            r#"{"join":null}"#,
            r#"{"room":null,"text":"x"}"#,
            r#"{"room":"dev"}"#,
            r#"{"join":"dev","since":1,"last":2,"epoch":"e"}"#,
            r#"{"join":"dev","since":1}"#,
            r#"{"join":"dev","epoch":"e"}"#,
            r#"{"join":"dev","last":-1}"#,
            r#"{"text":"x","last":1}"#,
            "{\"text\":",
            r#"{"text":"a","text":"b"}"#,
            r#"["bob","psst"]"#,
            r#" [null,"hi"]"#,
        ] {
            assert!(decode(bad).is_none(), "{bad:?} should be bad_message");
        }
    }

    #[test]
    fn encodes_lines_exactly() {
        assert_eq!(
            &room_message("lobby", 3, "alice", "hi \"there\"", 7)[..],
            br#"{"type":"message","room":"lobby","seq":3,"from":"alice","text":"hi \"there\"","ts":7}"#
        );
        assert_eq!(
            &with_pseq(&private_message("alice", "bob", "x", 1), 12)[..],
            br#"{"type":"message","pseq":12,"from":"alice","to":"bob","text":"x","ts":1}"#
        );
        assert_eq!(&gap("dev", 4)[..], br#"{"type":"gap","room":"dev","seq":4}"#);
        assert_eq!(
            &private_message("alice", "bob", "x", 1)[..],
            br#"{"type":"message","from":"alice","to":"bob","text":"x","ts":1}"#
        );
        assert_eq!(
            &error(ErrorCode::UnknownRecipient, Some("zed"))[..],
            br#"{"type":"error","code":"unknown_recipient","message":"no one with that id is online","to":"zed"}"#
        );
        let w = Welcome {
            id: "a",
            users: vec!["a", "b"],
            away: Vec::new(),
            total: 2,
            max_text: 2000,
            rate_limit: 20,
            burst: 40,
            resume: "tok",
            resumed: false,
            exp: None,
        };
        assert_eq!(
            &welcome(&w)[..],
            &br#"{"type":"welcome","id":"a","users":["a","b"],"total":2,"max_text":2000,"rate_limit":20,"burst":40,"resume":"tok"}"#[..]
        );
        assert!(welcome(&Welcome { resumed: true, ..w }).ends_with(br#""resume":"tok","resumed":true}"#));
        let listing =
            |users: Vec<&'static str>, away: Vec<&'static str>, total| Listing { users, away, total };
        assert_eq!(
            &users("dev", listing(vec!["a"], vec![], 3))[..],
            br#"{"type":"users","room":"dev","users":["a"],"total":3}"#
        );
        assert_eq!(
            &joined("dev", listing(vec!["a", "b"], vec!["b"], 2), 9, "Ep0ch")[..],
            br#"{"type":"joined","room":"dev","users":["a","b"],"away":["b"],"total":2,"seq":9,"epoch":"Ep0ch"}"#
        );
        assert_eq!(&left("dev")[..], br#"{"type":"left","room":"dev"}"#);
        assert_eq!(
            &rooms(&[RoomSize { room: "lobby", users: 12, away: 0 }, RoomSize { room: "x", users: 2, away: 1 }], 3)[..],
            br#"{"type":"rooms","rooms":[{"room":"lobby","users":12},{"room":"x","users":2,"away":1}],"total":3}"#
        );
        assert_eq!(
            &room_error(ErrorCode::NotInRoom, "dev")[..],
            br#"{"type":"error","code":"not_in_room","message":"you are not in that room: join it first","room":"dev"}"#
        );
        let mut b = Vec::new();
        presence_into(&mut b, Presence::Leave, "dev", "bob");
        assert_eq!(&b[..], br#"{"type":"leave","room":"dev","id":"bob"}"#);
        b.clear();
        presence_into(&mut b, Presence::Away, "dev", "bob");
        assert_eq!(&b[..], br#"{"type":"away","room":"dev","id":"bob"}"#);
    }

    #[test]
    fn a_bad_message_says_which_field_and_why() {
        let why = |frame: &str| decode_why(frame).err().map(|e| e.into_owned()).unwrap_or_default();
        assert_eq!(why(r#"{"join":"r","since":3}"#), "since and epoch go together");
        assert_eq!(
            why(r#"{"join":"r","since":3,"last":2,"epoch":"e"}"#),
            "last and since exclude each other"
        );
        assert!(
            why(r#"{"join":"r","last":-1}"#).starts_with("invalid value: integer `-1`"),
            "{}",
            why(r#"{"join":"r","last":-1}"#)
        );
        assert_eq!(why(&format!(r#"{{"text":"x","cid":"{}"}}"#, "c".repeat(65))), "cid: 1 to 64 characters");
        assert_eq!(why("{\"text\":\"a\"}\n{\"text\":\"b\"}"), "one JSON object per message: more follows it");
        assert_eq!(why("[1]"), "not a JSON object");
        assert_eq!(why("{}"), "nothing asked: send text, to and text, join, leave or rooms");
        assert_eq!(why(r#"{"text":"x","last":1}"#), "last, since and epoch go with join");
        assert_eq!(why(r#"{"rooms":false}"#), "rooms: only true asks");
        assert!(why(r#"{"text":"x","join":"r"}"#).starts_with("fields that do not go together"));
        let line = bad_message("cid: 1 to 64 characters");
        assert!(line.ends_with(br#","reason":"cid: 1 to 64 characters"}"#), "{line:?}");
    }

    #[test]
    fn id_rules() {
        for ok in ["a", "Alice_01", "x.y-z", &"a".repeat(32)] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", &"a".repeat(33), "a b", "é", "a/b", "<x>", "a\0"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
