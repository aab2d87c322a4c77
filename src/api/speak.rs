//! The speaking endpoints: `POST /api/publish` (a system line into a room, numbered and kept
//! like a member's message) and `POST /api/send` (a private system line to a user).

use super::{Answer, Call, Cx, fail, ok};
use crate::chat::Sink;
use crate::chat::backend::{Posted, Sent};
use crate::http::Status;
use crate::protocol::{self, ErrorCode};
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct PublishAnswer<'a> {
    room: &'a str,
    seq: u64,
    epoch: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    unconfirmed: Option<&'static str>,
}

#[derive(Serialize)]
struct SendAnswer<'a> {
    to: &'a str,
    pseq: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish<'a> {
    #[serde(borrow)]
    room: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    from: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Send<'a> {
    #[serde(borrow)]
    to: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    text: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    from: Option<std::borrow::Cow<'a, str>>,
}

/// `from`, if given, must pass the id rule a member's id does.
fn from_ok(from: Option<&str>) -> Result<(), Answer> {
    match from {
        Some(f) if !protocol::valid_id(f) => Err(fail(
            Status::BadRequest,
            "bad_id",
            "from: not an id (1 to 32 characters from A-Z a-z 0-9 _ - .)",
        )),
        _ => Ok(()),
    }
}

/// `POST /api/publish {"room","text","from"?}` → `{"room","seq","epoch"}`; in a cluster the
/// answer waits for Redis's number (`Answer::Pending`, then `posted`).
pub fn publish<S: Sink>(call: &Call<'_>, cx: &mut Cx<'_, S>) -> Answer {
    let p: Publish<'_> = match call.json() {
        Ok(p) => p,
        Err(a) => return a,
    };
    let Some(room) = protocol::room_name(&p.room) else {
        return fail(Status::BadRequest, "bad_room", "room: 1 to 32 characters from A-Z a-z 0-9 _ - .");
    };
    if let Err(a) = from_ok(p.from.as_deref()) {
        return a;
    }
    let asker = (cx.token, cx.generation);
    match cx.chat.publish_system(&room, &p.text, p.from.as_deref(), asker, call.ts, cx.sink, cx.broker) {
        Ok(Posted::Pending) => Answer::Pending,
        Ok(posted) => posted_answer(&room, posted),
        Err(code) => refused(code),
    }
}

/// The answer to a publish once numbered: `{"room","seq","epoch"}`, with
/// `"unconfirmed":"cluster_unavailable"` when Redis was away and it was numbered on this node
/// only (delivered here; other nodes' members cannot have it).
pub fn posted(room: &str, posted: Posted) -> Answer {
    posted_answer(room, posted)
}

fn posted_answer(room: &str, posted: Posted) -> Answer {
    match posted {
        Posted::Numbered { seq, epoch, unconfirmed } => {
            ok(&PublishAnswer { room, seq, epoch: &epoch, unconfirmed: unconfirmed.map(ErrorCode::as_str) })
        }
        Posted::Pending => Answer::Pending,
    }
}

/// `POST /api/send {"to","text","from"?}` → `{"to","pseq"}` (`pseq` null when the recipient
/// is on another node, which numbers it), or `offline`.
pub fn send<S: Sink>(call: &Call<'_>, cx: &mut Cx<'_, S>) -> Answer {
    let s: Send<'_> = match call.json() {
        Ok(s) => s,
        Err(a) => return a,
    };
    if !protocol::valid_id(&s.to) {
        return fail(
            Status::BadRequest,
            "bad_id",
            "to: not an id (1 to 32 characters from A-Z a-z 0-9 _ - .)",
        );
    }
    if let Err(a) = from_ok(s.from.as_deref()) {
        return a;
    }
    match cx.chat.send_system(&s.to, &s.text, s.from.as_deref(), call.ts, call.now, cx.sink) {
        Ok(Sent::Here { to, pseq }) => ok(&SendAnswer { to: &to, pseq: Some(pseq) }),
        Ok(Sent::Remote { node, to, line }) => {
            cx.relay.push(super::Relay { node, to: std::rc::Rc::clone(&to), line });
            ok(&SendAnswer { to: &to, pseq: None })
        }
        Err(code) => refused(code),
    }
}

/// What chat refused, as an API error: the client's code (`offline` for a recipient that
/// is nowhere) with the status that fits.
fn refused(code: ErrorCode) -> Answer {
    let (status, name, why) = match code {
        ErrorCode::UnknownRecipient => {
            (Status::NotFound, "offline", "the recipient is not connected nor in its resume grace")
        }
        ErrorCode::Empty => (Status::BadRequest, code.as_str(), "text: empty"),
        ErrorCode::TooLong => (Status::BadRequest, code.as_str(), "text: over --max-text characters"),
        ErrorCode::TooManyRooms => (
            Status::Unavailable,
            code.as_str(),
            "--max-rooms reached and no room held only by users in their grace",
        ),
        ErrorCode::RecipientBusy => (
            Status::Unavailable,
            code.as_str(),
            "the recipient is not reading: its queue cannot take more now",
        ),
        ErrorCode::Undelivered => {
            (Status::Unavailable, code.as_str(), "no room left to keep it for the recipient in its grace")
        }
        ErrorCode::ClusterUnavailable => {
            (Status::Unavailable, code.as_str(), "Redis is away: the recipient's node cannot be reached")
        }
        _ => (Status::BadRequest, code.as_str(), "refused"),
    };
    fail(status, name, why)
}
