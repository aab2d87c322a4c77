//! The backend API (issue 25): what an application behind chatloop asks over HTTP, as JSON in
//! and JSON out. This module holds the request and answer shapes and their handlers; the HTTP
//! side (the key, reading bodies, keep-alive) is the server's (`server/api.rs`), which hands
//! every complete, authorized request to `dispatch`.
//!
//! The seam: `dispatch` is one `match` from (method, path) to a handler, one file per group of
//! endpoints (`speak.rs`: publish and send; `read.rs`: rooms, history, users). A handler takes
//! the request (`Call`) and what it may act on (`Cx`: chat, the sink lines go to, the broker
//! that numbers room lines) and returns an `Answer`. Adding a group is a file and an arm per
//! endpoint, e.g. `("POST", "/api/ban") => moderate::ban(call, cx),`; an answer the server must
//! do more with than send (a stream, a disconnect) is one more `Answer` variant.
//!
//! Every error is `{"error":{"code":"...","message":"..."}}` with a status that fits (`fail`).
//! What each answer can cost is bounded (`read::MAX_LIMIT`, `read::MAX_ROOMS`; ARCHITECTURE.md's
//! Memory model).

pub mod moderate;
pub mod read;
pub mod speak;

use crate::chat::broker::Broker;
use crate::chat::{Chat, Sink};
use crate::http::Status;
use serde::Deserialize;
use std::time::Instant;

/// One authorized request with its complete body.
pub struct Call<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The query string, undecoded (`query_param` decodes one value).
    pub query: &'a str,
    pub body: &'a [u8],
    pub now: Instant,
    /// Wall-clock milliseconds, as lines carry them.
    pub ts: u64,
}

impl Call<'_> {
    /// The value of `name` in the query, percent-decoded; an error if it is not decodable or
    /// named twice.
    pub fn query_param(&self, name: &str) -> Result<Option<String>, Answer> {
        let mut found = None;
        for kv in self.query.split('&') {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if k != name {
                continue;
            }
            if found.is_some() {
                return Err(fail(Status::BadRequest, "bad_request", &format!("{name}: given twice")));
            }
            let v = crate::http::percent_decode(&v.replace('+', " ")).and_then(|b| String::from_utf8(b).ok());
            found =
                Some(v.ok_or_else(|| {
                    fail(Status::BadRequest, "bad_request", &format!("{name}: not decodable"))
                })?);
        }
        Ok(found)
    }

    /// The body as `T`, or a 400 naming what is wrong with it.
    pub fn json<'b, T: Deserialize<'b>>(&'b self) -> Result<T, Answer> {
        serde_json::from_slice(self.body).map_err(|e| {
            let why = format!("the body is not the JSON this endpoint takes: {e}");
            fail(Status::BadRequest, "bad_request", &why)
        })
    }
}

/// What a handler may act on.
pub struct Cx<'a, S: Sink> {
    pub chat: &'a mut Chat,
    /// Where lines for the chat's clients go (the loop's outboxes).
    pub sink: &'a mut S,
    /// Numbers room lines: the room's history alone, Redis in a cluster.
    pub broker: &'a mut dyn Broker,
    /// The asking connection and its generation: a pending answer finds its way back by them.
    pub token: usize,
    pub generation: u32,
    /// Private lines for users on other nodes, for the server to relay (`POST /api/send`).
    pub relay: Vec<Relay>,
}

/// A private line for user `to` on node `node`.
#[derive(Debug)]
pub struct Relay {
    pub node: std::rc::Rc<str>,
    pub to: std::rc::Rc<str>,
    pub line: bytes::Bytes,
}

/// A handler's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A status and its JSON body.
    Json(Status, Vec<u8>),
    /// Redis will answer (a publish in a cluster): the server sends the answer once
    /// `Chat::published` has it, nothing else is read meanwhile.
    Pending,
    /// A moderation action for the server to take (it closes connections and tells the
    /// cluster); its `Done` or refusal is the answer (`server/moderation.rs`).
    Moderate(moderate::Action),
    /// A room's history to read from Redis (a cluster): the server asks it (`cluster::READ`)
    /// and answers with `read::shared` when the reply comes.
    Read(Box<crate::cluster::Read>),
    /// `GET /api/events`: the connection becomes an event stream consumer
    /// (`server/events.rs`).
    Stream,
}

/// A 200 with `value` as its body (a struct, so that its fields keep their order).
pub fn ok(value: &impl serde::Serialize) -> Answer {
    Answer::Json(Status::Ok, serde_json::to_vec(value).expect("serializable"))
}

/// An error answer: `{"error":{"code":CODE,"message":WHY}}`.
pub fn fail(status: Status, code: &str, why: &str) -> Answer {
    Answer::Json(status, error_json(code, why))
}

/// The code of an error the HTTP layer gives before the API sees the request (a head it
/// cannot parse, a foreign Host): the same as the API's own where it has one.
pub fn code_of(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::BadRequest => "bad_request",
        Status::Unauthorized => "unauthorized",
        Status::Forbidden => "forbidden",
        Status::NotFound => "not_found",
        Status::MethodNotAllowed => "method_not_allowed",
        Status::RequestTimeout => "timeout",
        Status::Conflict => "conflict",
        Status::LengthRequired => "length_required",
        Status::ContentTooLarge => "too_large",
        Status::UnsupportedMediaType => "unsupported_media_type",
        Status::UnprocessableContent => "unprocessable",
        Status::Misdirected => "misdirected",
        Status::UpgradeRequired => "upgrade_required",
        Status::TooManyRequests => "rate_limited",
        Status::HeadersTooLarge => "headers_too_large",
        Status::Unavailable => "unavailable",
    }
}

/// The body of every error.
pub fn error_json(code: &str, why: &str) -> Vec<u8> {
    serde_json::json!({ "error": { "code": code, "message": why } }).to_string().into_bytes()
}

/// Answers one request: the seam every endpoint is added to, one arm each naming its method.
pub fn dispatch<S: Sink>(call: &Call<'_>, cx: &mut Cx<'_, S>) -> Answer {
    let path = call.path;
    match path {
        "/api/publish" => only("POST", call, cx, speak::publish),
        "/api/events" => only("GET", call, cx, |_, _| Answer::Stream),
        "/api/send" => only("POST", call, cx, speak::send),
        "/api/rooms" => only("GET", call, cx, read::rooms),
        _ if path.starts_with("/api/rooms/") => only("GET", call, cx, read::room),
        "/api/history" => only("GET", call, cx, read::history),
        _ if path.starts_with("/api/users/") => only("GET", call, cx, read::user),
        _ if moderate::ACTIONS.iter().any(|a| path.strip_prefix("/api/") == Some(a)) => {
            only("POST", call, cx, moderate::handle)
        }
        _ => fail(Status::NotFound, "not_found", "no such endpoint (see docs/api.md)"),
    }
}

/// A handler.
pub type Handler<S> = fn(&Call<'_>, &mut Cx<'_, S>) -> Answer;

/// Runs `handler` if the request's method is `method`, else 405 naming it.
fn only<S: Sink>(method: &str, call: &Call<'_>, cx: &mut Cx<'_, S>, handler: Handler<S>) -> Answer {
    if call.method != method {
        let why = format!("{} takes {method}, not {}", call.path, call.method);
        return fail(Status::MethodNotAllowed, "method_not_allowed", &why);
    }
    handler(call, cx)
}
