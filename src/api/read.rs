//! The read endpoints: the room directory, one room, a room's history, one user. Each answer
//! is bounded: at most `--max-rooms` rooms (`?limit=` takes fewer), `MAX_MEMBERS` members,
//! `MAX_LINES` history lines (`--history` per room caps them anyway), `MAX_ROOMS_OF_USER`
//! rooms of a user.
//!
//! In a cluster a room's history (its lines, `seq` and `epoch`) is Redis's: `room` and
//! `history` answer `Answer::Read`, the server asks Redis (`cluster::READ`) and answers with
//! `shared` when the reply comes, or 503 `cluster_unavailable` if it cannot be had.

use super::{Answer, Call, Cx, fail, ok};
use crate::chat::backend::{Presence, replay_from};
use crate::chat::{Chat, Sink};
use crate::cluster::{Read, Shared};
use crate::http::Status;
use crate::protocol;
use serde::Serialize;

#[derive(Serialize)]
struct RoomSize<'a> {
    room: &'a str,
    users: usize,
    away: usize,
}

#[derive(Serialize)]
struct Directory<'a> {
    rooms: Vec<RoomSize<'a>>,
    total: usize,
}

#[derive(Serialize)]
struct RoomAnswer<'a> {
    room: &'a str,
    users: &'a [&'a str],
    away: &'a [&'a str],
    total: usize,
    seq: u64,
    epoch: &'a str,
}

#[derive(Serialize)]
struct HistoryHead<'a> {
    room: &'a str,
    epoch: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    gap: Option<u64>,
}

#[derive(Serialize)]
struct UserAnswer<'a> {
    id: &'a str,
    status: &'static str,
    rooms: Vec<&'a str>,
}

/// Members `GET /api/rooms/NAME` lists at most (`?limit=` takes fewer; `total` counts all).
pub const MAX_MEMBERS: usize = 10_000;
/// History lines one answer holds at most (`?limit=` takes fewer).
pub const MAX_LINES: usize = 1_000;
/// Rooms one user's answer lists at most (`--max-rooms-per-user` is lower by default).
pub const MAX_ROOMS_OF_USER: usize = 1_000;

/// `?limit=N`: at most `max`, `default` when absent.
fn limit(call: &Call<'_>, default: usize, max: usize) -> Result<usize, Answer> {
    match call.query_param("limit")? {
        None => Ok(default.min(max)),
        Some(v) => match v.parse::<usize>() {
            Ok(n) => Ok(n.min(max)),
            Err(_) => Err(fail(Status::BadRequest, "bad_request", "limit: not a whole number")),
        },
    }
}

/// The name after `prefix` in the path, percent-decoded.
fn tail(call: &Call<'_>, prefix: &str) -> Option<String> {
    let raw = call.path.strip_prefix(prefix)?;
    crate::http::percent_decode(raw).and_then(|b| String::from_utf8(b).ok())
}

/// `GET /api/rooms[?limit=N]` → `{"rooms":[{"room","users","away"}],"total"}`: every room
/// (up to `limit`), the largest first.
pub fn rooms<S: Sink>(call: &Call<'_>, cx: &mut Cx<'_, S>) -> Answer {
    let n = match limit(call, usize::MAX, usize::MAX) {
        Ok(n) => n,
        Err(a) => return a,
    };
    let (list, total) = cx.chat.room_sizes(n);
    let rooms = list.into_iter().map(|(room, users, away)| RoomSize { room, users, away }).collect();
    ok(&Directory { rooms, total })
}

/// `GET /api/rooms/NAME[?limit=N]` → `{"room","users","away","total","seq","epoch"}`:
/// `users` lists members (connected or away, at most `limit`), `away` those in their grace.
pub fn room<S: Sink>(call: &Call<'_>, cx: &mut Cx<'_, S>) -> Answer {
    let Some(name) = tail(call, "/api/rooms/").and_then(|n| protocol::room_name(&n).map(|r| r.to_string()))
    else {
        return fail(
            Status::BadRequest,
            "bad_room",
            "not a room name (1 to 32 characters from A-Z a-z 0-9 _ - .)",
        );
    };
    let n = match limit(call, MAX_MEMBERS, MAX_MEMBERS) {
        Ok(n) => n,
        Err(a) => return a,
    };
    if cx.broker.clustered() {
        let read = Read { room: name.as_str().into(), since: 0, epoch: None, limit: 0, members: Some(n) };
        return Answer::Read(Box::new(read));
    }
    room_answer(cx.chat, &name, n, None)
}

/// Room `name` with at most `n` members listed, in the `seq` and `epoch` Redis has for it
/// (`shared`; this node's copy's without).
fn room_answer(chat: &Chat, name: &str, n: usize, shared: Option<(u64, &str)>) -> Answer {
    let view = chat.room_view(name, n);
    let (seq, epoch) = match (&view, shared) {
        (_, Some((seq, epoch))) => (seq, epoch),
        (Some(v), None) => (v.seq, &*v.epoch),
        (None, None) => {
            return fail(Status::NotFound, "not_found", "no such room (no members and no history)");
        }
    };
    let (users, away, total) = match &view {
        Some(v) => (&v.listing.users[..], &v.listing.away[..], v.listing.total),
        None => (&[][..], &[][..], 0),
    };
    ok(&RoomAnswer { room: name, users, away, total, seq, epoch })
}

/// `GET /api/history?room=R[&since=S&epoch=E][&limit=N]` → `{"room","epoch","gap"?,"lines"}`:
/// the kept lines after `since`, as a client's replay has them; `gap` (the first seq still
/// kept) when `since` is no longer reached or `epoch` is not the room's.
pub fn history<S: Sink>(call: &Call<'_>, cx: &mut Cx<'_, S>) -> Answer {
    let q = |name| call.query_param(name);
    let (room, since, epoch) = match (q("room"), q("since"), q("epoch")) {
        (Ok(r), Ok(s), Ok(e)) => (r, s, e),
        (Err(a), ..) | (_, Err(a), _) | (.., Err(a)) => return a,
    };
    let Some(room) = room.as_deref().and_then(protocol::room_name).map(|r| r.to_string()) else {
        return fail(Status::BadRequest, "bad_room", "room: missing, or not a room name");
    };
    let since = match since.as_deref().map(str::parse::<u64>) {
        None => 0,
        Some(Ok(s)) => s,
        Some(Err(_)) => return fail(Status::BadRequest, "bad_request", "since: not a whole number"),
    };
    let n = match limit(call, MAX_LINES, MAX_LINES) {
        Ok(n) => n,
        Err(a) => return a,
    };
    if cx.broker.clustered() {
        let epoch = epoch.as_deref().map(std::rc::Rc::from);
        let read = Read { room: room.as_str().into(), since, epoch, limit: n, members: None };
        return Answer::Read(Box::new(read));
    }
    let Some((epoch, gap, lines)) = cx.chat.history_view(&room, since, epoch.as_deref(), n) else {
        return fail(Status::NotFound, "not_found", "no history for that room");
    };
    history_answer(&room, &epoch, gap, &lines)
}

/// The answer to `read` from Redis's copy of its room (`shared`; None: Redis could not be
/// asked, did not answer within `--redis-timeout`, or answered nonsense).
pub fn shared(chat: &Chat, read: &Read, shared: Option<Shared>) -> Answer {
    let Some(s) = shared else { return unavailable() };
    let known = !s.epoch.is_empty();
    if let Some(n) = read.members {
        return room_answer(chat, &read.room, n, known.then_some((s.latest, s.epoch.as_str())));
    }
    if !known {
        return fail(Status::NotFound, "not_found", "no history for that room");
    }
    let same = read.epoch.as_deref().is_none_or(|e| *e == *s.epoch);
    let (_, gap) = replay_from(read.since, same, s.first, s.latest + 1);
    history_answer(&read.room, &s.epoch, gap, &s.lines)
}

/// A read Redis cannot answer: this node's copy may lack lines, so it is not the answer.
pub fn unavailable() -> Answer {
    let why = "Redis cannot be reached or did not answer: the cluster's history cannot be read now";
    fail(Status::Unavailable, "cluster_unavailable", why)
}

/// `{"room","epoch","gap"?,"lines"}`.
fn history_answer(room: &str, epoch: &str, gap: Option<u64>, lines: &[impl AsRef<[u8]>]) -> Answer {
    // The lines go in as they are kept: valid JSON objects, copied, never re-encoded.
    let mut body = serde_json::to_vec(&HistoryHead { room, epoch, gap }).expect("serializable");
    body.pop(); // the closing brace
    body.extend_from_slice(b",\"lines\":[");
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(l.as_ref());
    }
    body.extend_from_slice(b"]}");
    Answer::Json(Status::Ok, body)
}

/// `GET /api/users/ID` → `{"id","status":"online"|"away"|"offline","rooms"}`.
pub fn user<S: Sink>(call: &Call<'_>, cx: &mut Cx<'_, S>) -> Answer {
    let Some(id) = tail(call, "/api/users/").filter(|i| protocol::valid_id(i)) else {
        return fail(Status::BadRequest, "bad_id", "not an id (1 to 32 characters from A-Z a-z 0-9 _ - .)");
    };
    let (status, id, rooms) = match cx.chat.presence(&id, MAX_ROOMS_OF_USER, call.now) {
        Presence::Online { id, rooms } => ("online", id, rooms),
        Presence::Away { id, rooms } => ("away", id, rooms),
        Presence::Offline => ("offline", std::rc::Rc::from(id.as_str()), Vec::new()),
    };
    ok(&UserAnswer { id: &id, status, rooms: names(&rooms) })
}

fn names(rooms: &[std::rc::Rc<str>]) -> Vec<&str> {
    rooms.iter().map(|r| &**r).collect()
}
