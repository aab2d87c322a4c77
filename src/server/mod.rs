//! The poll loop: one `mio::Poll`, the listener, signals, and every connection in a `Slab`.
//!
//! This module (with `request` and `session`, its halves for the two protocols) is the only
//! code that registers, deregisters or removes sockets. One turn:
//! 1. poll, sleeping until the nearest deadline (or not at all if input was left unread);
//! 2. accept until WouldBlock; read every readable connection until WouldBlock (or its
//!    per-turn budget); mark writable ones pending; note signals;
//! 3. fire due timers (handshake, ping, idle, close grace);
//! 4. settle: send the turn's presence batch, close slow consumers, write handshakes and HTTP
//!    responses at once and every other pending outbox unless it was written less than
//!    `--flush-interval` ago (then once that long has passed, `flush.rs`), a chunk a turn
//!    (one `writev` per frame); remove finished connections; repeat until nothing changes,
//!    because a removal's `leave` can fill someone else's queue.
//!
//! Fairness: each connection gets a bounded share of a turn (`READ_BUDGET` bytes and
//! `MESSAGE_BUDGET` messages read, `WRITE_BUDGET` bytes written), and a queue is judged after
//! the kernel was offered its bytes, never before (see `Net::queue`).

pub mod api;
mod cluster;
mod events;
mod flush;
mod heap;
mod join;
pub mod moderation;
mod net;
mod request;
mod session;
mod signin;

use heap::give_back_free_heap;

use crate::assets::Assets;
use crate::chat::{Chat, Nodes, Sink};
use crate::config::Config;
use crate::conn::{Bucket, Flag, Phase, SLOW_GRACE};
use crate::metrics::{Gauges, Reason, Stats};
use crate::outbox::Spare;
use crate::timers::Stamp;
use log::{debug, info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tungstenite::protocol::frame::coding::CloseCode;

use net::{Net, room_for, would_block};

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const REDIS: Token = Token(usize::MAX - 2);
/// How long a closing peer gets to answer our close or read our response.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// After EMFILE/ENFILE, how long to wait before accepting again (unless a socket frees first).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most this many connections accepted a turn; the rest wait in the kernel's backlog for the
/// next turn (a zero poll timeout). A storm of connects then costs each turn a bounded share
/// (each accepted one's request, 101 and join come in later turns, at most this many a turn),
/// so those already chatting are not stalled behind thousands of handshakes.
const ACCEPT_BUDGET: usize = 64;
/// `compact` runs when the last connection goes, if more than this many came since the last.
const IDLE_COMPACT_ABOVE: usize = 64;
/// How long after the last handshake or room join the heap is trimmed (`trim_heap`): a crowd
/// arriving is trimmed once it has settled, not once per connection.
const TRIM_AFTER: Duration = Duration::from_millis(300);

/// Where a shutdown stands.
enum Shutdown {
    Running,
    /// Signalled: closing everyone until the deadline.
    Draining(Instant),
}

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: signal_hook_mio::v1_0::Signals,
    net: Net,
    chat: Chat,
    cfg: Config,
    assets: Assets,
    /// `GET /config`'s body (`router::config_json`), fixed at start-up.
    config_json: Vec<u8>,
    /// The `--token-url`'s origin if it is another server's, for the page's CSP.
    token_origin: Option<String>,
    timers: crate::timers::Timers,
    max_conns: usize,
    /// The one buffer every session reads into (`session::READ_BUFFER`); a session keeps only
    /// what is incomplete (`ws::Reader`).
    read_buf: Box<[u8]>,
    /// Connections to remove at the end of the turn.
    doomed: Vec<usize>,
    /// Connections whose input was not read to WouldBlock (read budget spent).
    again: Vec<usize>,
    /// `--auth token`: upgrades waiting for their token's check, first come first checked,
    /// `signin::VERIFY_TIME` a turn.
    verifying: std::collections::VecDeque<signin::Waiting>,
    /// When to accept again: after EMFILE (`ACCEPT_BACKOFF`), or at once when a turn's
    /// `ACCEPT_BUDGET` was spent with connections still waiting.
    accept_paused_until: Option<Instant>,
    /// Which connections were written less than `--flush-interval` ago, and which of them
    /// hold lines (`flush.rs`); `flush_due` is when the loop must wake to write them.
    flush: flush::Flush,
    flush_due: Option<Instant>,
    next_generation: u32,
    /// Each session's resume secret, derived from its connection's generation and its id.
    secrets: crate::chat::ids::Secrets,
    shutdown: Shutdown,
    /// Scale-out through Redis (`--redis`).
    cluster: Option<crate::cluster::Cluster>,
    /// The Redis link's read budget ran out with input left: read it next turn.
    redis_again: bool,
    /// The event stream's log and consumers (`GET /api/events`); None while it is off.
    events: Option<events::Streams>,
    /// Rate-limit buckets of ids whose session ended, until they would have refilled: the
    /// limit belongs to the id, so reconnecting does not buy a fresh burst.
    buckets: std::collections::HashMap<String, Bucket>,
    /// Rate-limit and busy-recipient refusals, for their throttled warn lines.
    rate_refusals: session::Refusals,
    busy_refusals: session::Refusals,
    /// When `buckets` and the id holds are next swept.
    next_sweep: Instant,
    /// When the last compaction ran (at most one a second), and how many connections had
    /// been accepted by then.
    compacted_at: Option<Instant>,
    /// When to give freed heap back to the system (see `trim_heap`).
    trim_due: Option<Instant>,
    compacted_after: u64,
}

fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Server {
    pub fn new(cfg: Config, listener: TcpListener, max_conns: usize) -> io::Result<Server> {
        // A timer entry names its connection in 26 bits (67 million: far past any open-file
        // limit this loop could use).
        let max_conns = max_conns.min(crate::timers::MAX_TOKENS);
        let poll = Poll::new()?;
        let mut listener = listener;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = signal_hook_mio::v1_0::Signals::new([libc::SIGTERM, libc::SIGINT])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let assets = cfg.public.clone().map_or(Assets::Embedded, Assets::Dir);
        let now = Instant::now();
        let cluster = cfg.redis.clone().map(|url| {
            let mut c = crate::cluster::Cluster::new(url, REDIS, cfg.redis_ttl, cfg.redis_timeout, now);
            (c.history, c.history_ttl) = (cfg.history, cfg.history_ttl);
            c
        });
        if let Some(c) = &cluster {
            info!(
                "cluster: node {} joining through Redis at {}",
                c.node,
                cfg.redis.as_ref().expect("set").addr
            );
        }
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            net: Net {
                conns: room_for(max_conns),
                pending: Vec::new(),
                overflowed: Vec::new(),
                urgent: Vec::new(),
                later: Vec::new(),
                heavy: false,
                spare: Spare::default(),
                stats: Stats::default(),
            },
            chat: {
                let mut chat = Chat::new(crate::chat::Limits {
                    presence_limit: cfg.presence_limit,
                    max_text: cfg.max_text,
                    rate_limit: cfg.rate_limit,
                    max_rooms: cfg.max_rooms,
                    max_rooms_per_user: cfg.max_rooms_per_user,
                    history: cfg.history,
                    history_bytes: cfg.history_bytes,
                    history_ttl: cfg.history_ttl,
                    max_holds: cfg.max_holds,
                    backlog_bytes: cfg.backlog_bytes,
                });
                // Down until the link's handshake says otherwise (`Input::Up`).
                chat.set_nodes(if cluster.is_some() { Nodes::Down } else { Nodes::Alone });
                chat.reserve(max_conns);
                chat.events.set_on(cfg.api_key.is_some());
                chat
            },
            assets,
            config_json: crate::router::config_json(cfg.auth.is_some(), cfg.token_url.as_deref()),
            token_origin: cfg.token_url.as_deref().and_then(crate::router::url_origin),
            timers: {
                let mut t = crate::timers::Timers::default();
                t.reserve(max_conns);
                t
            },
            max_conns,
            read_buf: vec![0; session::READ_BUFFER].into_boxed_slice(),
            doomed: Vec::new(),
            again: Vec::new(),
            verifying: Default::default(),
            accept_paused_until: None,
            flush: flush::Flush::new(cfg.flush_interval),
            flush_due: None,
            next_generation: 0,
            secrets: Default::default(),
            shutdown: Shutdown::Running,
            cluster,
            redis_again: false,
            events: cfg.api_key.is_some().then(|| {
                let mut s = events::Streams::new(cfg.events_keep);
                s.log.shared_ids = cfg.redis.is_some();
                s
            }),
            buckets: Default::default(),
            rate_refusals: Default::default(),
            busy_refusals: Default::default(),
            next_sweep: now,
            compacted_at: None,
            trim_due: None,
            compacted_after: 0,
            cfg,
        })
    }

    /// Runs until a signal's graceful shutdown completes (Ok) or poll fails.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            if let Shutdown::Draining(deadline) = self.shutdown
                && (self.net.conns.is_empty() || now >= deadline)
            {
                info!("shutdown complete, {} connections cut at the deadline", self.net.conns.len());
                self.cluster_drain();
                return Ok(());
            }
            let busy = !self.again.is_empty() || self.redis_again || !self.verifying.is_empty();
            let timeout = if busy { Some(Duration::ZERO) } else { self.timeout(now) };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            self.turn(&events, now, now_millis());
        }
    }

    fn timeout(&self, now: Instant) -> Option<Duration> {
        let wake = [
            self.timers.next(),
            self.accept_paused_until,
            self.flush_due,
            self.trim_due,
            self.cluster.as_ref().and_then(|c| c.deadline()),
            // Holds, buckets and idle histories end with time, not with traffic.
            (self.chat.has_holds() || !self.buckets.is_empty() || self.chat.history_idle())
                .then_some(self.next_sweep),
            match self.shutdown {
                Shutdown::Draining(t) => Some(t),
                Shutdown::Running => None,
            },
        ];
        wake.into_iter().flatten().min().map(|t| t.saturating_duration_since(now))
    }

    /// One loop turn after poll returned. `now` and `ts` (wall-clock ms) are read once per turn.
    fn turn(&mut self, events: &Events, now: Instant, ts: u64) {
        for ev in events.iter() {
            match ev.token() {
                LISTENER => self.accept_all(now),
                SIGNALS => self.signalled(now),
                REDIS => self.redis_ready(now),
                Token(t) => {
                    if ev.is_writable() {
                        self.net.mark_pending(t);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        if let Some(c) = self.net.conns.get_mut(t) {
                            c.peer.clear(Flag::Drained);
                            c.peer.put(Flag::Hup, ev.is_read_closed() || ev.is_error());
                        }
                        self.readable(t, now, ts);
                    }
                }
            }
        }
        for t in std::mem::take(&mut self.again) {
            self.readable(t, now, ts);
        }
        self.verify_queued(now, ts);
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_all(now);
        }
        self.cluster_tick(now);
        self.fire_timers(now, ts);
        self.sweep(now);
        self.trim_heap(now);
        self.settle(now, ts);
    }

    /// Handshakes and room joins leave freed memory behind (request heads, welcomes, rosters
    /// queued by the thousand during a crowd's arrival); glibc keeps it, so RSS would stay at
    /// the arrival's peak. Some time after the last of them, give it back.
    fn heap_churned(&mut self, now: Instant) {
        self.trim_due = Some(now + TRIM_AFTER);
    }

    fn trim_heap(&mut self, now: Instant) {
        if self.trim_due.is_none_or(|t| now < t) {
            return;
        }
        self.trim_due = None;
        let started = Instant::now();
        // The arrival filled the spare list with queue buffers made at its peak, scattered
        // over pages it would keep resident (up to 1,024 of them, ~240 KB); the next fan-out
        // makes them again, once. Chat's tables made during the arrival move first (`heap`).
        self.net.spare.clear();
        self.chat.repack();
        give_back_free_heap();
        debug!("heap trimmed in {:?}", started.elapsed());
    }

    /// Holds that `--max-holds` ended early this turn (see `Chat::lose`): their senders are
    /// told what never got there, and they are gone as if their grace had passed.
    fn ended_early(&mut self, now: Instant) {
        for (g, lines) in std::mem::take(&mut self.chat.todo.ended_early) {
            for (token, line) in lines {
                self.net.push(token, &line);
            }
            warn!(
                target: "chatloop::session",
                "session ended id={} reason=hold_ended_early (--max-holds {} reached)",
                g.id,
                self.cfg.max_holds
            );
            self.cluster_left(&g.id, &g.emptied, now);
        }
    }

    /// Brings forward the next ping of connections whose users have private lines to
    /// acknowledge (see `chat::backlog`): it will carry their latest pseq.
    fn ask_acks(&mut self, now: Instant) {
        for (token, due) in std::mem::take(&mut self.chat.todo.want_ack) {
            let Some(c) = self.net.conns.get_mut(token) else { continue };
            c.next_ping = c.next_ping.earlier(Stamp::of(due));
            self.arm(token, now);
        }
    }

    /// Once a second: forget rate-limit buckets that have refilled, and end id holds whose
    /// grace has passed (giving their keys back to Redis).
    fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + Duration::from_secs(1);
        let rate = self.cfg.rate_limit;
        self.buckets.retain(|_, b| !b.full(rate, now));
        for g in self.chat.expire(now, &mut self.net) {
            info!(target: "chatloop::session", "session ended id={} reason=grace_over", g.id);
            self.cluster_left(&g.id, &g.emptied, now);
        }
        if self.chat.expired_left(now) {
            // More graces ended than one sweep ends (`Chat::expire`): the rest next turn.
            self.next_sweep = now;
        }
        self.chat.expire_history(now);
        if self.chat.moderation_mut().expire(now_millis()) {
            self.next_sweep = now; // more bans, mutes or revocations ended than one batch
        }
        // After what the ended holds left behind is freed, not before it: malloc_trim can only
        // give back what is free.
        // The last holds may have gone while a connection was open (a scrape, say).
        self.compact_if_idle(now);
    }

    fn signalled(&mut self, now: Instant) {
        let signals: Vec<i32> = self.signals.pending().collect();
        for sig in signals {
            if let Shutdown::Draining(_) = self.shutdown {
                warn!("second signal ({sig}): exiting at once");
                std::process::exit(1);
            }
            info!("signal {sig}: shutting down, closing {} connections", self.net.conns.len());
            self.shutdown = Shutdown::Draining(now + self.cfg.shutdown_grace);
            self.cluster_goodbye();
            if let Some(mut l) = self.listener.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
            self.accept_paused_until = None;
            let tokens: Vec<usize> = self.net.conns.iter().map(|(t, _)| t).collect();
            for t in tokens {
                match self.net.conns[t].phase {
                    Phase::Ws(_) => {
                        self.close_ws(t, CloseCode::Away, "going away", Some(Reason::Shutdown), now)
                    }
                    Phase::Request { .. } | Phase::Api(_) | Phase::Events(_) => self.doom(t),
                    Phase::Respond { .. } => {} // its response is on the way; it closes by itself
                }
                if let Some(c) = self.net.conns.get_mut(t) {
                    c.give_up = Some(Stamp::of(now).after(self.cfg.shutdown_grace));
                }
            }
        }
    }

    fn readable(&mut self, token: usize, now: Instant, ts: u64) {
        let Some(conn) = self.net.conns.get_mut(token) else { return };
        match conn.phase {
            Phase::Request { .. } => self.read_request(token, now, ts),
            Phase::Respond { .. } => self.read_discard(token),
            Phase::Ws(_) => self.read_ws(token, now, ts),
            Phase::Api(_) => self.api_read(token, now, ts),
            Phase::Events(_) => self.read_stream(token),
        }
    }

    fn fire_timers(&mut self, now: Instant, ts: u64) {
        while let Some((at, token)) = self.timers.pop_due(now) {
            let Some(conn) = self.net.conns.get_mut(token) else { continue };
            if conn.timer_at != Some(Stamp::of(at)) {
                continue; // stale: the connection is gone or has a newer entry
            }
            conn.timer_at = None;
            let stamp = Stamp::of(now);
            if conn.give_up.is_some_and(|t| t.reached(stamp)) {
                debug!("{}: gave up on close", conn.addr);
                self.doom(token);
                continue;
            }
            match &mut conn.phase {
                Phase::Request { buf } if conn.opened.after(self.cfg.handshake_timeout).reached(stamp) => {
                    if conn.peer.is(Flag::KeptAlive) && buf.is_empty() {
                        debug!("{}: api: idle between requests, closed", conn.addr);
                        // An answer still being written gets the close grace to finish.
                        conn.phase = Phase::Respond { eof: false };
                        conn.give_up = Some(stamp.after(CLOSE_GRACE));
                        self.net.mark_pending(token);
                        self.arm(token, now);
                        continue;
                    }
                    warn!("{}: handshake timeout", conn.addr);
                    conn.reason.get_or_insert(Reason::HandshakeTimeout);
                    self.doom(token);
                    continue;
                }
                Phase::Events(_) if conn.give_up.is_none() && conn.next_ping.reached(stamp) => {
                    self.stream_ping(token, now);
                }
                Phase::Api(_) if conn.opened.after(self.cfg.handshake_timeout).reached(stamp) => {
                    warn!(
                        "{}: api: request timeout (its body incomplete, or its answer not back)",
                        conn.addr
                    );
                    conn.reason.get_or_insert(Reason::HandshakeTimeout);
                    self.net.stats.api_answered(crate::http::Status::RequestTimeout as u16);
                    self.respond(token, api::timed_out(), now);
                    continue;
                }
                Phase::Ws(s) if conn.give_up.is_none() => {
                    if s.signed().is_some() && self.token_due(token, now, ts) {
                        continue;
                    }
                    let conn = &mut self.net.conns[token];
                    if conn.over_since.is_some_and(|t| t.after(SLOW_GRACE).reached(stamp)) {
                        self.drop_slow(token, now);
                        continue;
                    }
                    if conn.last_read.after(self.cfg.idle_timeout).reached(stamp) {
                        self.close_ws(token, CloseCode::Away, "idle timeout", Some(Reason::IdleTimeout), now);
                        continue;
                    }
                    if conn.next_ping.reached(stamp) {
                        // With the user's latest pseq if it has lines to acknowledge: its pong
                        // says it read them (`Chat::ack`).
                        let payload = if conn.peer.is(Flag::Joined) {
                            self.chat.ping_payload(token, now)
                        } else {
                            Vec::new()
                        };
                        conn.peer.send(crate::ws::frame(crate::ws::OP_PING, &payload));
                        conn.next_ping = stamp.after(self.cfg.ping_interval);
                        self.net.mark_pending(token);
                    }
                }
                _ => {}
            }
            self.arm(token, now);
        }
    }

    /// Runs the end-of-turn work until it stops producing more. Pending outboxes are written
    /// at the end of the turn that filled them, unless written less than `--flush-interval`
    /// ago (then once that long has passed, `flush.rs`), a chunk a turn: so that under load
    /// each socket gets one `writev` for many lines rather than one per line, and a long
    /// fan-out lets the loop read between its chunks.
    fn settle(&mut self, now: Instant, ts: u64) {
        self.flush.tick(now, &mut self.net.pending);
        let mut chunk = flush::Flush::chunk(self.net.pending.len());
        loop {
            self.ended_early(now);
            self.chat.pump(now, &mut self.net);
            self.chat.flush_presence(&mut self.net);
            self.pump_events(ts);
            self.ask_acks(now);
            for token in std::mem::take(&mut self.net.overflowed) {
                self.drop_slow(token, now);
            }
            // What the turn told Redis goes before what it tells clients: a client that has
            // read its welcome or its close may act on another node at once, and Redis must
            // have had the claim or the leave first (the one link is read in order).
            let link_failed = self.cluster_flush(now);
            for token in std::mem::take(&mut self.net.urgent) {
                self.write(token, now);
            }
            chunk = self.write_pending(chunk, now);
            let settled =
                self.doomed.is_empty() && self.net.overflowed.is_empty() && self.net.urgent.is_empty();
            if settled && !link_failed {
                break;
            }
            for token in std::mem::take(&mut self.doomed) {
                self.remove(token);
            }
        }
        if self.cluster_flush(now) {
            return self.settle(now, ts); // the link failed: settle what that queued (once more)
        }
        for token in std::mem::take(&mut self.net.later) {
            self.flush.cool(token); // cut by its budget, not hot: the rest goes next turn
            self.net.mark_pending(token);
        }
        self.flush_due = self.flush.wake(!self.net.pending.is_empty(), now);
    }

    /// Writes pending connections in order, holding the hot ones (`flush.rs`), until `chunk`
    /// writes are done; what is left stays first on the list. Returns the chunk's remainder.
    fn write_pending(&mut self, mut chunk: usize, now: Instant) -> usize {
        for token in self.flush.take_due(&mut self.net.pending, &mut chunk, now) {
            self.write(token, now);
        }
        chunk
    }

    /// The `/metrics` body; gauges are counted here, not kept on the hot path.
    fn metrics(&self) -> String {
        let cluster = self.cluster.as_ref().map(|c| crate::metrics::ClusterGauges {
            up: c.is_up(),
            nodes: c.node_count(),
            remote_users: self.chat.remote_len(),
            queued_bytes: c.link.queued(),
            counters: c.counters,
        });
        let chat = self.chat.gauges();
        let mut g = Gauges {
            connections: self.net.conns.len(),
            websockets: 0,
            queued_bytes: 0,
            history: chat.history,
            held: chat.held,
            backlog: chat.backlog,
            rooms: chat.rooms,
            rooms_evicted: chat.rooms_evicted,
            cluster,
            events: self.events.as_ref().map(|s| s.gauges()),
        };
        for (_, c) in &self.net.conns {
            g.websockets += matches!(c.phase, Phase::Ws(_)) as usize;
            g.queued_bytes += c.peer.out.queued();
        }
        self.net.stats.render(&g)
    }
}
