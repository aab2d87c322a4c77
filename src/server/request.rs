//! The HTTP half of the loop: read a request head, route it, answer it or upgrade it.

use super::{CLOSE_GRACE, Server, would_block};

use crate::conn::{Bucket, Flag, Phase, Session};
use crate::http::{self, Parse, Request, Status};

use crate::router::{self, Foreign, Route, Rules};
use crate::timers::Stamp;
use bytes::Bytes;
use log::{debug, warn};
use std::io::{self, Read};
use std::time::Instant;

impl Server {
    pub(super) fn read_request(&mut self, token: usize, now: Instant, ts: u64) {
        let conn = &mut self.net.conns[token];
        if conn.api_turn == super::api::PAUSED {
            return; // its answers first (`Server::write` reads it again once they are out)
        }
        let Phase::Request { buf } = &mut conn.phase else { return };
        // A pipelined request already read goes before anything more is read: reading on
        // pulled a whole pipeline into `buf`, whose rest was then copied once a request
        // (16,000 pipelined API requests took 2.8 s of CPU, and a client not reading its
        // answers was read without end). Only a kept-alive connection's buffer can hold one
        // not yet parsed (the rest of its last request's read); any other was parsed, as
        // incomplete, when it was read.
        let carried = conn.peer.is(Flag::KeptAlive) && !buf.is_empty();
        let parsed = if carried { http::parse(buf) } else { Parse::Partial };
        if !matches!(parsed, Parse::Partial) {
            return self.parsed(token, parsed, now, ts);
        }
        let mut chunk = [0u8; 4096];
        loop {
            match conn.peer.sock.read(&mut chunk) {
                Ok(0) => {
                    debug!("{} left before finishing its request", conn.addr);
                    return self.doom(token);
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > http::MAX_HEAD {
                        break; // parse says 431; the rest is never read
                    }
                    if n < chunk.len() && !conn.peer.is(Flag::Hup) {
                        break; // short read: empty for now, and new bytes raise a new edge
                    }
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.doom(token),
            }
        }
        let parsed = http::parse(buf);
        self.parsed(token, parsed, now, ts)
    }

    /// Acts on what `read_request` parsed from the connection's buffer.
    fn parsed(&mut self, token: usize, parsed: Parse, now: Instant, ts: u64) {
        let conn = &mut self.net.conns[token];
        let Phase::Request { buf } = &mut conn.phase else { return };
        match parsed {
            Parse::Partial => {}
            Parse::Fail(status, why) => {
                warn!("{}: bad request: {} {why}", conn.addr, status as u16);
                self.refuse(token, status, why, now);
            }
            Parse::Done(req, len) => {
                let rest = buf.split_off(len);
                self.route(token, req, rest, now, ts);
            }
        }
    }

    /// Acts on a complete request (see `router::route`).
    fn route(&mut self, token: usize, req: Request, rest: Vec<u8>, now: Instant, ts: u64) {
        let rules = Rules {
            echo: self.cfg.echo,
            allow_origin: &self.cfg.allow_origin,
            allow_host: &self.cfg.allow_host,
            bound_to_loopback: self.cfg.addr.ip().is_loopback(),
            assets: &self.assets,
            token_mode: self.cfg.auth.is_some(),
            config: &self.config_json,
            token_origin: self.token_origin.as_deref(),
            api: self.cfg.api_key.is_some(),
        };
        match router::route(&req, &rules) {
            Route::Upgrade { echo, key, id, resume, pseq, token: bearer } => {
                let presented = resume.as_deref().and_then(crate::chat::ids::parse_token);
                self.upgrade(token, echo, &key, (id, bearer), (presented, pseq), rest, now, ts)
            }
            Route::Respond(response) => self.respond(token, response, now),
            Route::Api => self.api_head(token, req, rest, now, ts),
            Route::Refuse(status, why) => self.refuse(token, status, why, now),
            Route::Foreign(f) => {
                // One request per connection, so this is once per connection.
                let value = match f {
                    Foreign::Host => req.host.as_deref(),
                    Foreign::Origin => req.origin.as_deref(),
                };
                let value: String = value.unwrap_or_default().chars().take(200).collect();
                warn!("{}: refused {f:?} {value:?}: {}", self.net.conns[token].addr, f.why());
                self.refuse(token, f.status(), f.why(), now)
            }
            Route::Metrics { head } => {
                let peer = self.net.conns[token].addr.ip();
                if !self.cfg.metrics_allow.iter().any(|c| c.contains(peer)) {
                    return self.refuse(
                        token,
                        Status::Forbidden,
                        "metrics are not open to you (--metrics-allow)",
                        now,
                    );
                }
                let body = self.metrics();
                let response =
                    http::response(Status::Ok, "text/plain; version=0.0.4", "", body.as_bytes(), head);
                self.respond(token, response, now)
            }
        }
    }

    /// Refuses the request and closes: as the API's JSON error if it named an `/api/` path
    /// on a server with the API on (its clients parse every answer as JSON), else plain text.
    fn refuse(&mut self, token: usize, status: Status, why: &str, now: Instant) {
        let conn = &self.net.conns[token];
        debug!("{}: {} {why}", conn.addr, status as u16);
        let api = self.cfg.api_key.is_some()
            && matches!(&conn.phase, Phase::Request { buf } if http::targets_api(buf));
        let response = if api {
            http::json(status, &crate::api::error_json(crate::api::code_of(status), why), true)
        } else {
            http::error(status, why)
        };
        self.respond(token, response, now);
    }

    /// Queues a response; the connection closes once it is written.
    pub(super) fn respond(&mut self, token: usize, response: Bytes, now: Instant) {
        let conn = &mut self.net.conns[token];
        conn.peer.out.push_raw(response, usize::MAX);
        conn.phase = Phase::Respond { eof: false };
        conn.give_up = Some(Stamp::of(now).after(CLOSE_GRACE));
        self.net.urgent.push(token);
        self.arm(token, now);
        // Read what is left (a body, a second request) so the kernel does not answer with RST.
        self.read_discard(token);
    }

    /// Reads and drops whatever the peer sends after its request. Bounded per call: a peer
    /// that keeps streaming a body at us is dropped rather than read for ever.
    pub(super) fn read_discard(&mut self, token: usize) {
        let conn = &mut self.net.conns[token];
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            match conn.peer.sock.read(&mut sink) {
                Ok(0) => {
                    conn.phase = Phase::Respond { eof: true };
                    if conn.peer.out.is_empty() {
                        self.doom(token);
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.doom(token);
    }

    /// Sends the 101 and starts the session; for the chat, claims the id first.
    #[allow(clippy::too_many_arguments)]
    fn upgrade(
        &mut self,
        token: usize,
        echo: bool,
        key: &str,
        (id, bearer): (String, Option<String>),
        (presented, pseq): (Option<crate::chat::ids::Secret>, u64),
        rest: Vec<u8>,
        now: Instant,
        ts: u64,
    ) {
        let conn = &mut self.net.conns[token];
        conn.peer.out.push_raw(http::switching_protocols(key), usize::MAX);
        let bucket = Bucket::new(self.cfg.rate_limit, now);
        conn.phase = Phase::Ws(Session {
            // Frames sent right behind the request wait in the reader until read below.
            reader: crate::ws::Reader::with_input(rest),
            bucket,
            control: Bucket::new(super::session::CONTROL_RATE, now),
            extra: presented.map(|secret| {
                Box::new(crate::conn::Extra {
                    asked: Some(crate::conn::Asked { secret, pseq }),
                    signed: None,
                })
            }),
        });
        conn.peer.put(Flag::Echo, echo);
        conn.last_read = Stamp::of(now);
        conn.next_ping = Stamp::of(now).after(self.cfg.ping_interval);
        self.net.urgent.push(token);
        self.arm(token, now);
        if !echo && self.cfg.auth.is_some() {
            // Signed in: the id is the token's, once checked (`signin::verify_queued`, this
            // turn or a later one); nothing is read meanwhile.
            self.net.conns[token].peer.set(Flag::Claiming);
            let generation = self.net.conns[token].generation;
            self.verifying.push_back(super::signin::Waiting { token, generation, id, bearer });
        } else if !echo {
            self.begin_join(token, &id, now);
        }
        // Frames sent right behind the request arrive with no readiness event of their own.
        self.read_ws(token, now, ts);
    }
}
