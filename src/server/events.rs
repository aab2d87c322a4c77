//! The event stream's consumers (`GET /api/events`, issue 25): each a connection in
//! `Phase::Events`, a cursor into the one event log (`events::Log`).
//!
//! Once a turn (`pump_events`, in `settle`) chat's recorded facts are stamped, encoded once
//! and kept in the log; then every consumer's outbox is given, by reference, the events after
//! its cursor that it asked for, as far as its queue takes them. A consumer catching up after
//! `Last-Event-ID` is paced by its queue like a room replay; one that has caught up and then
//! cannot take an event is a slow consumer and is closed at once (it resumes with
//! `Last-Event-ID`): the chat never waits for it. Work per event: one push per consumer.

use super::Server;
use crate::conn::{Flag, Phase, Stream};
use crate::events::{self, Counters, Log, Since, Types};
use crate::http::{self, Request, Status};
use crate::metrics::Reason;
use crate::timers::Stamp;
use bytes::Bytes;
use log::{debug, info, warn};
use std::time::{Duration, Instant};

/// Stream consumers at once; past it a new one is refused (503). A consumer is a backend, not
/// a user: a handful is the expected number.
pub const MAX_STREAMS: usize = 64;
/// The event log's bytes, beside its count (`--events-keep`): the oldest go first.
pub const LOG_BYTES: usize = 32 << 20;
/// How long a client waits before reconnecting (the stream's `retry:`).
const RETRY_MS: u64 = 2000;
/// A keep-alive comment at least this often, so that proxies do not time an idle stream out
/// (nginx's default `proxy_read_timeout` is 60 s); `--ping-interval` if that is shorter.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The log and who reads it.
pub(super) struct Streams {
    pub(super) log: Log,
    /// In a cluster: this node's events waiting to be numbered by Redis (while the link is
    /// down), at most `--events-keep`; and while a resync is read, the events pushed
    /// meanwhile (`server/cluster/events.rs`).
    pub(super) outgoing: std::collections::VecDeque<(events::Kind, Bytes)>,
    pub(super) syncing: bool,
    pub(super) held: Vec<(u64, events::Kind, Bytes)>,
    /// Connections in `Phase::Events`.
    consumers: Vec<usize>,
    pub(super) counters: Counters,
}

impl Streams {
    pub(super) fn new(keep: usize) -> Streams {
        Streams {
            log: Log::new(keep, LOG_BYTES),
            outgoing: Default::default(),
            syncing: false,
            held: Vec::new(),
            consumers: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// The numbers `/metrics` shows.
    pub(super) fn gauges(&self) -> events::Gauges {
        let (kept, bytes) = self.log.kept();
        events::Gauges {
            consumers: self.consumers.len(),
            appended: self.log.appended,
            kept,
            bytes,
            counters: self.counters,
        }
    }
}

/// An API error body (`{"error":{"code","message"}}`) with its status.
fn refusal(status: Status, code: &str, message: &str) -> Bytes {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    http::response(status, "application/json", "", body.as_bytes(), false)
}

/// The stream's head: no length, so the body ends when the connection does.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
X-Content-Type-Options: nosniff\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n";

/// Where a request asks to start: `Last-Event-ID`, else `?last_event_id=` (for clients that
/// cannot set headers). None: live from now.
fn last_seen(req: &Request) -> Result<Option<u64>, &'static str> {
    let given = req.last_event_id.clone().or_else(|| req.query_param("last_event_id"));
    match given.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| "Last-Event-ID: not an event id (a whole number)"),
    }
}

impl Server {
    /// `GET /api/events`, its key already checked: answers `text/event-stream` and keeps the
    /// connection as a consumer, or refuses (400 bad `types` or `Last-Event-ID`, 503 full).
    pub(super) fn open_stream(&mut self, token: usize, req: &Request, now: Instant, ts: u64) {
        let every = self.keepalive();
        let full = self.events.as_ref().is_some_and(|s| s.consumers.len() >= MAX_STREAMS);
        let asked = match (Types::parse(req.query_param("types").as_deref()), last_seen(req)) {
            _ if self.events.is_none() => Err((Status::NotFound, "not_found", "no event stream here".into())),
            (Err(why), _) => Err((Status::BadRequest, "bad_request", why)),
            (_, Err(why)) => Err((Status::BadRequest, "bad_request", why.to_string())),
            _ if full => {
                warn!(
                    "event stream refused to {}: {MAX_STREAMS} consumers already",
                    self.net.conns[token].addr
                );
                let why = "too many event stream consumers; try again later";
                Err((Status::Unavailable, "unavailable", why.to_string()))
            }
            (Ok(t), Ok(l)) => Ok((t, l)),
        };
        // Counted with the API's answers (`chatloop_api_requests_total`).
        let (types, last) = match asked {
            Ok(asked) => asked,
            Err((status, code, why)) => {
                self.net.stats.api_answered(status as u16);
                return self.respond(token, refusal(status, code, &why), now);
            }
        };
        self.net.stats.api_answered(Status::Ok as u16);
        let Some(streams) = &mut self.events else { return };
        let conn = &mut self.net.conns[token];
        conn.peer.out.push_raw(Bytes::from_static(HEAD), usize::MAX);
        conn.peer.out.push_raw(events::retry(RETRY_MS), usize::MAX);
        // Live once a pass finds it caught up (`pump_events`), not before.
        let mut stream = Stream { types, next: streams.log.next_id(), live: false };
        if let Some(last) = last {
            match streams.log.since(last) {
                Since::From(next) => stream.next = next,
                Since::Gap(first) => {
                    streams.counters.gaps += 1;
                    conn.peer.out.push_raw(events::gap(first, ts), usize::MAX);
                    stream.next = first;
                }
            }
        }
        conn.phase = Phase::Events(stream);
        conn.next_ping = Stamp::of(now).after(every);
        streams.consumers.push(token);
        streams.counters.opened += 1;
        info!("event stream opened for {} (from id {})", conn.addr, stream.next);
        self.net.urgent.push(token);
        self.arm(token, now);
        self.read_stream(token);
    }

    fn keepalive(&self) -> Duration {
        KEEPALIVE.min(self.cfg.ping_interval)
    }

    /// Once per settle pass: this turn's facts into the log, then every consumer fed from
    /// its cursor.
    pub(super) fn pump_events(&mut self, ts: u64) {
        let Some(streams) = &mut self.events else { return };
        if self.cluster.is_some() {
            // Numbered by Redis: they come back on the channel, into the log, in one order.
            for fact in self.chat.events.drain() {
                if streams.outgoing.len() >= self.cfg.events_keep {
                    streams.counters.dropped += 1;
                    continue;
                }
                streams.outgoing.push_back((fact.kind(), Bytes::from(fact.data(ts))));
            }
            self.cluster_emit();
        } else {
            for fact in self.chat.events.drain() {
                streams.log.append(&fact, ts);
            }
        }
        let Some(streams) = &mut self.events else { return };
        let log = &streams.log;
        // While a cluster's log is read from Redis, nobody is judged by what that read adds.
        let settled = !streams.syncing;
        let mut slow = Vec::new();
        for &token in &streams.consumers {
            let Some(c) = self.net.conns.get_mut(token) else { continue };
            let Phase::Events(s) = &mut c.phase else { continue };
            if s.next >= log.next_id() {
                s.live |= settled;
                continue;
            }
            if c.peer.is(Flag::Closing) {
                continue;
            }
            if s.next < log.first_id() {
                // Trimmed while it caught up: say so, and go on from what is kept.
                streams.counters.gaps += 1;
                s.next = log.first_id();
                c.peer.out.push_raw(events::gap(s.next, ts), usize::MAX);
            }
            for e in log.from(s.next) {
                if s.types.has(e.kind) {
                    c.peer.make_room(e.frame.len());
                    if !c.peer.out.push_raw(e.frame.clone(), c.peer.cap as usize) {
                        if s.live {
                            slow.push(token);
                        }
                        break;
                    }
                    self.net.stats.deliveries += 1;
                }
                s.next = e.id + 1;
            }
            s.live |= settled && s.next >= log.next_id();
            if !c.peer.is(Flag::Pending) {
                c.peer.set(Flag::Pending);
                self.net.pending.push(token);
            }
        }
        for token in slow {
            self.slow_stream(token);
        }
    }

    /// A consumer that could not take a live event: closed now, with what it was not sent
    /// dropped (it resumes from its last id).
    fn slow_stream(&mut self, token: usize) {
        let Some(c) = self.net.conns.get_mut(token) else { return };
        warn!("slow consumer: event stream {}: queue past {} bytes", c.addr, self.cfg.queue_cap);
        c.reason.get_or_insert(Reason::SlowConsumer);
        c.peer.set(Flag::Closing);
        c.peer.out.discard_unsent();
        if let Some(s) = &mut self.events {
            s.counters.slow += 1;
        }
        self.doom(token);
    }

    /// Its keep-alive comment is due (`fire_timers`).
    pub(super) fn stream_ping(&mut self, token: usize, now: Instant) {
        let every = self.keepalive();
        let Some(c) = self.net.conns.get_mut(token) else { return };
        c.next_ping = Stamp::of(now).after(every);
        c.peer.make_room(events::KEEPALIVE_LINE.len());
        if !c.peer.out.push_raw(Bytes::from_static(events::KEEPALIVE_LINE), c.peer.cap as usize) {
            return self.slow_stream(token);
        }
        self.net.mark_pending(token);
    }

    /// A consumer sends nothing; what it does send is read and dropped (bounded per call).
    /// Its EOF or an error ends it.
    pub(super) fn read_stream(&mut self, token: usize) {
        use std::io::Read;
        let Some(c) = self.net.conns.get_mut(token) else { return };
        let mut sink = [0u8; 4096];
        for _ in 0..16 {
            match c.peer.sock.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if super::would_block(&e) => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        debug!("event stream {} closed", c.addr);
        self.doom(token);
    }

    /// Forgets a consumer being removed.
    pub(super) fn stream_gone(&mut self, token: usize) {
        if let Some(s) = &mut self.events {
            s.consumers.retain(|t| *t != token);
        }
    }
}
