//! The backend API's HTTP side (issue 25): a request routed to `/api/` has its key and head
//! checked (`admit`), its body read without blocking the loop (`Phase::Api`, bounded by
//! `--max-message`, due by `--handshake-timeout` from the request's first byte), and is then
//! handed to `api::dispatch`, whose JSON answer goes back on a connection kept open for the
//! next request (keep-alive; pipelined requests are answered in order).
//!
//! ```text
//! Request ─(Route::Api)─ admit ─┬─ refused: 401 405 411 413 415 400, Connection: close
//!                               └─ Phase::Api: body read ─ api::dispatch ─┬─ answered ─▶ Request (next)
//!                                                                         └─ Pending: waiting ─ api_published, api_later ─▶ answered
//! ```
//!
//! `api_dispatch` is where the loop acts on an `api::Answer`: one arm per kind.
//! A refusal at the head closes the connection: its body, unread, would be taken for the next
//! request. Errors after the body (bad JSON, an unknown endpoint, `offline`) keep it open.
//! Fairness: `API_BUDGET` requests a connection a turn; pipelined ones past it wait in
//! the buffer for the next turn (`Server::again`).

use super::{Server, would_block};
use crate::api::{self, Answer};
use crate::chat::broker::{Alone, Broker};
use crate::conn::{ApiCall, Flag, Phase};
use crate::http::{self, Request, Status};
use crate::timers::Stamp;
use bytes::Bytes;
use log::{debug, warn};
use std::io::{self, Read};
use std::time::Instant;

/// Requests one connection has answered in one turn at most; pipelined ones past it wait.
pub(super) const API_BUDGET: u8 = 32;

/// `Conn::api_turn` of a connection not read while its answers wait to be written.
pub(super) const PAUSED: u8 = u8::MAX;

/// Why a request head is refused before its body is read: the status, the error's `code` and
/// its one-line message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub code: &'static str,
    pub why: &'static str,
}

const fn refusal(status: Status, code: &'static str, why: &'static str) -> Refusal {
    Refusal { status, code, why }
}

/// The key a request presents, compared with ours in constant time (`subtle`): how long the
/// comparison takes says nothing about how much of a guess was right. Lengths may differ in
/// time; a key's length is no secret worth keeping.
pub fn key_matches(req: &Request, key: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = req.authorization.as_deref().and_then(|h| h.split_once(' ')) else { return false };
    given.0.eq_ignore_ascii_case("bearer") && bool::from(given.1.trim().as_bytes().ct_eq(key))
}

/// Checks a backend request's head: the key first (an unauthenticated client learns nothing
/// else), then its body's framing. Returns the body's length (0 for none).
pub fn admit(req: &Request, key: &[u8], max_body: usize) -> Result<usize, Refusal> {
    if !key_matches(req, key) {
        return Err(refusal(
            Status::Unauthorized,
            "unauthorized",
            "a wrong or missing API key (Authorization: Bearer KEY)",
        ));
    }
    if req.method != "GET" && req.method != "POST" {
        // A HEAD would get an answer without its body; other methods' bodies go unread.
        return Err(refusal(
            Status::MethodNotAllowed,
            "method_not_allowed",
            "the API takes GET and POST only",
        ));
    }
    if req.chunked {
        return Err(refusal(
            Status::LengthRequired,
            "length_required",
            "a body of unknown length (Transfer-Encoding) is not read: send Content-Length",
        ));
    }
    let post = req.method == "POST";
    let Some(len) = req.content_length else {
        if post {
            return Err(refusal(Status::LengthRequired, "length_required", "a POST needs a Content-Length"));
        }
        return Ok(0);
    };
    if !post && len > 0 {
        return Err(refusal(Status::BadRequest, "bad_request", "only a POST carries a body"));
    }
    if len > max_body as u64 {
        return Err(refusal(Status::ContentTooLarge, "too_large", "the body is over --max-message bytes"));
    }
    let json = req.content_type.as_deref().is_some_and(|t| {
        t.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if post && !json {
        return Err(refusal(
            Status::UnsupportedMediaType,
            "unsupported_media_type",
            "a body must be Content-Type: application/json",
        ));
    }
    Ok(len as usize)
}

impl Server {
    /// A request routed to the API (`Route::Api`); `rest` is what followed its head.
    pub(super) fn api_head(&mut self, token: usize, req: Request, rest: Vec<u8>, now: Instant, ts: u64) {
        let Some(key) = self.cfg.api_key.clone() else { return };
        let need = match admit(&req, &key, self.cfg.max_message) {
            Ok(need) => need,
            Err(r) => {
                let addr = self.net.conns[token].addr;
                if r.status == Status::Unauthorized {
                    // The path and the key stay out of the log: either may be a secret.
                    warn!("{addr}: api: refused: {}", r.why);
                } else {
                    debug!("{addr}: api: {} {}", r.status as u16, r.why);
                }
                return self.api_close(token, r.status, &api::error_json(r.code, r.why), now);
            }
        };
        let mut body = rest;
        // Bytes past the body are the next request's (pipelined): kept for after the answer.
        let after = if body.len() > need { body.split_off(need) } else { Vec::new() };
        if req.expect_continue && body.len() < need {
            // Its head is accepted: the body may come (else curl waits a second for it).
            let go_on = Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.net.conns[token].peer.out.push_raw(go_on, usize::MAX);
            self.net.urgent.push(token);
        }
        let call = ApiCall { req, body, need, waiting: false, after };
        self.net.conns[token].phase = Phase::Api(Box::new(call));
        self.api_read(token, now, ts);
    }

    /// Reads an API request's body, never past its length; dispatches it once complete.
    pub(super) fn api_read(&mut self, token: usize, now: Instant, ts: u64) {
        let conn = &mut self.net.conns[token];
        let Phase::Api(call) = &mut conn.phase else { return };
        if call.waiting {
            return; // the answer first; the bytes wait in the kernel
        }
        while call.body.len() < call.need {
            let have = call.body.len();
            call.body.resize(call.need, 0);
            match conn.peer.sock.read(&mut call.body[have..]) {
                Ok(0) => {
                    debug!("{}: api: left before finishing its body", conn.addr);
                    return self.doom(token);
                }
                Ok(n) => call.body.truncate(have + n),
                Err(e) => {
                    call.body.truncate(have);
                    match e {
                        e if would_block(&e) => return,
                        e if e.kind() == io::ErrorKind::Interrupted => {}
                        _ => return self.doom(token),
                    }
                }
            }
        }
        self.api_dispatch(token, now, ts);
    }

    /// Hands a complete request to `api::dispatch` and sends its answer, or waits for it.
    fn api_dispatch(&mut self, token: usize, now: Instant, ts: u64) {
        let conn = &mut self.net.conns[token];
        let generation = conn.generation;
        // Out of the slab while chat runs (chat's sink is the slab); back in before the answer.
        let Phase::Api(mut call) = std::mem::replace(&mut conn.phase, Phase::Request { buf: Vec::new() })
        else {
            return;
        };
        let broker: &mut dyn Broker = match &mut self.cluster {
            Some(c) => c,
            None => &mut Alone,
        };
        let req = api::Call {
            method: &call.req.method,
            path: call.req.path(),
            query: call.req.query(),
            body: &call.body,
            now,
            ts,
        };
        let mut cx = api::Cx {
            chat: &mut self.chat,
            sink: &mut self.net,
            broker,
            token,
            generation,
            relay: Vec::new(),
        };
        let mut answer = api::dispatch(&req, &mut cx);
        for r in std::mem::take(&mut cx.relay) {
            if !self.api_relay(&r) {
                let why = "Redis is away: the recipient's node cannot be reached";
                answer = api::fail(Status::Unavailable, "cluster_unavailable", why);
            }
        }
        match answer {
            Answer::Moderate(action) => answer = self.api_moderate(action, token, generation, now, ts),
            Answer::Read(read) => answer = self.cluster_read(read, token, generation),
            _ => {}
        }
        // What the loop does with each kind of answer: a new kind (a stream, a disconnect)
        // is one more arm here.
        match answer {
            Answer::Pending => {
                call.waiting = true;
                self.net.conns[token].phase = Phase::Api(call);
            }
            Answer::Json(status, body) => {
                self.net.conns[token].phase = Phase::Api(call);
                self.api_answer(token, status, &body, now, ts);
            }
            Answer::Moderate(_) | Answer::Read(_) => unreachable!("answered with Json or Pending above"),
            // The connection becomes an event stream consumer (`server/events.rs`).
            Answer::Stream => self.open_stream(token, &call.req, now, ts),
        }
    }

    /// Hands a backend's private line to the recipient's node (as `cluster_private` does a
    /// member's); false if the link cannot take it.
    fn api_relay(&mut self, r: &api::Relay) -> bool {
        use crate::chat::backend::API_SENDER;
        use crate::cluster::{Await, node_channel, payload};
        let Some(c) = &mut self.cluster else { return false };
        let p = payload(&["P", &c.node, &r.to, API_SENDER], Some(&r.line));
        let then =
            Await::Private { from: std::rc::Rc::from(API_SENDER), to: std::rc::Rc::clone(&r.to), cid: None };
        c.publish_awaiting(&node_channel(&r.node), &p, then)
    }

    /// The answer to a publish that waited for Redis (`Answer::Pending`), if the connection
    /// that asked is still there and waiting.
    pub(super) fn api_published(
        &mut self,
        token: usize,
        generation: u32,
        room: &str,
        posted: crate::chat::backend::Posted,
        now: Instant,
    ) {
        let Some(conn) = self.net.conns.get(token) else { return };
        if conn.generation != generation || !matches!(&conn.phase, Phase::Api(c) if c.waiting) {
            return;
        }
        if let Answer::Json(status, body) = api::speak::posted(room, posted) {
            self.api_answer(token, status, &body, now, super::now_millis());
        }
    }

    /// The answer to a request that waited for Redis (`Answer::Pending`), if the connection
    /// that asked is still there and waiting.
    pub(super) fn api_later(
        &mut self,
        token: usize,
        generation: u32,
        status: Status,
        body: &[u8],
        now: Instant,
    ) {
        let Some(conn) = self.net.conns.get(token) else { return };
        if conn.generation == generation && matches!(&conn.phase, Phase::Api(c) if c.waiting) {
            self.api_answer(token, status, body, now, super::now_millis());
        }
    }

    /// Sends an answer and readies the connection for its next request (unless the client
    /// asked to close): a new request, a new handshake deadline.
    fn api_answer(&mut self, token: usize, status: Status, body: &[u8], now: Instant, ts: u64) {
        self.net.stats.api_answered(status as u16);
        let conn = &mut self.net.conns[token];
        let Phase::Api(call) = std::mem::replace(&mut conn.phase, Phase::Request { buf: Vec::new() }) else {
            return;
        };
        if call.req.close {
            return self.respond(token, http::json(status, body, true), now);
        }
        conn.peer.out.push_raw(http::json(status, body, false), usize::MAX);
        conn.phase = Phase::Request { buf: call.after };
        conn.opened = Stamp::of(now);
        conn.peer.set(Flag::KeptAlive);
        self.net.urgent.push(token);
        self.arm(token, now);
        // A client that pipelines without reading its answers is not read further while
        // they are over its queue's cap: `Server::write` resumes it once they are written.
        if conn_over(&self.net.conns[token]) {
            self.net.conns[token].api_turn = PAUSED;
            return;
        }
        self.api_next(token, now, ts);
    }

    /// The next request on a kept-alive connection: parsed from what was read already (a
    /// pipelined one), then from the socket; `API_BUDGET` a turn.
    fn api_next(&mut self, token: usize, now: Instant, ts: u64) {
        let conn = &mut self.net.conns[token];
        conn.api_turn = conn.api_turn.saturating_add(1);
        if conn.api_turn >= API_BUDGET {
            conn.api_turn = 0;
            self.net.stats.read_budget_spent += 1;
            return self.again.push(token);
        }
        self.read_request(token, now, ts);
    }

    /// Refuses or answers with `Connection: close`; what the peer still sends is discarded.
    fn api_close(&mut self, token: usize, status: Status, body: &[u8], now: Instant) {
        self.net.stats.api_answered(status as u16);
        self.respond(token, http::json(status, body, true), now);
    }
}

/// Whether a connection's unread answers are past its queue's soft cap.
fn conn_over(conn: &crate::conn::Conn) -> bool {
    conn.peer.out.charged() > conn.peer.cap as usize
}

/// The answer `Bytes` for a body timeout (the request took longer than `--handshake-timeout`).
pub(super) fn timed_out() -> Bytes {
    http::json(
        Status::RequestTimeout,
        &api::error_json(
            "timeout",
            "the request was not complete (or not answered) within --handshake-timeout",
        ),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Parse, parse};

    fn check(head: &str) -> Result<usize, u16> {
        let raw = format!("{head}\r\n");
        let Parse::Done(req, _) = parse(raw.as_bytes()) else { panic!("{raw}") };
        admit(&req, b"0123456789abcdef", 100).map_err(|r| r.status as u16)
    }

    #[test]
    fn admit_table() {
        const AUTH: &str = "Authorization: Bearer 0123456789abcdef\r\n";
        const JSON: &str = "Content-Type: application/json\r\n";
        let cases: &[(String, Result<usize, u16>)] = &[
            (format!("GET /api/rooms HTTP/1.1\r\nHost: h\r\n{AUTH}"), Ok(0)),
            ("GET /api/rooms HTTP/1.1\r\nHost: h\r\n".into(), Err(401)),
            (
                "GET /api/rooms HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer 0123456789abcdeX\r\n".into(),
                Err(401),
            ),
            (
                "GET /api/rooms HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer 0123456789abcde\r\n".into(),
                Err(401),
            ),
            (
                "GET /api/rooms HTTP/1.1\r\nHost: h\r\nAuthorization: Basic 0123456789abcdef\r\n".into(),
                Err(401),
            ),
            (
                "GET /api/rooms HTTP/1.1\r\nHost: h\r\nauthorization: bearer  0123456789abcdef \r\n".into(),
                Ok(0),
            ),
            (format!("POST /api/publish HTTP/1.1\r\nHost: h\r\n{AUTH}{JSON}Content-Length: 12\r\n"), Ok(12)),
            (
                format!(
                    "POST /api/publish HTTP/1.1\r\nHost: h\r\n{AUTH}Content-Type: Application/JSON; charset=utf-8\r\nContent-Length: 2\r\n"
                ),
                Ok(2),
            ),
            (format!("POST /api/publish HTTP/1.1\r\nHost: h\r\n{AUTH}{JSON}"), Err(411)),
            (
                format!(
                    "POST /api/publish HTTP/1.1\r\nHost: h\r\n{AUTH}{JSON}Transfer-Encoding: chunked\r\n"
                ),
                Err(411),
            ),
            (
                format!("POST /api/publish HTTP/1.1\r\nHost: h\r\n{AUTH}{JSON}Content-Length: 101\r\n"),
                Err(413),
            ),
            (
                format!(
                    "POST /api/publish HTTP/1.1\r\nHost: h\r\n{AUTH}{JSON}Content-Length: 99999999999999\r\n"
                ),
                Err(413),
            ),
            (
                format!(
                    "POST /api/publish HTTP/1.1\r\nHost: h\r\n{AUTH}Content-Type: text/plain\r\nContent-Length: 2\r\n"
                ),
                Err(415),
            ),
            (format!("POST /api/publish HTTP/1.1\r\nHost: h\r\n{AUTH}Content-Length: 2\r\n"), Err(415)),
            (format!("GET /api/rooms HTTP/1.1\r\nHost: h\r\n{AUTH}Content-Length: 2\r\n"), Err(400)),
            (format!("HEAD /api/rooms HTTP/1.1\r\nHost: h\r\n{AUTH}"), Err(405)),
            (format!("PUT /api/publish HTTP/1.1\r\nHost: h\r\n{AUTH}{JSON}Content-Length: 2\r\n"), Err(405)),
            ("POST /api/publish HTTP/1.1\r\nHost: h\r\nContent-Length: 999\r\n".into(), Err(401)),
        ];
        for (head, want) in cases {
            assert_eq!(&check(head), want, "{head}");
        }
    }
}
