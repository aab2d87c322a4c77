//! Counters for `/metrics` (Prometheus text format 0.0.4) and who may read them.
//!
//! Counters are plain `u64` fields bumped on the loop thread: no atomics, no locks, one add
//! each. Gauges (connections, sessions, queued bytes) are not kept at all: `/metrics` counts
//! them by walking the slab when someone asks, so they cost nothing on the hot path. The
//! `process_*` series every Prometheus exporter has are read from /proc/self at scrape time
//! too.

use crate::protocol::ErrorCode;
use std::fmt::Write;
use std::net::IpAddr;

/// Why a connection ended, as the `reason` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ClientClose,
    SlowConsumer,
    IdleTimeout,
    HandshakeTimeout,
    ProtocolError,
    Shutdown,
    /// The cluster found another node holding the id (claimed while Redis was away).
    IdConflict,
    /// Too many control frames, or a message that kept growing in frames but not in bytes.
    Flood,
    /// Ended without a close frame (EOF or reset): the user is held for its resume.
    Lost,
    /// A resume with the right secret took over this connection's user (close 4001).
    Replaced,
    /// `--auth token`: its token's `exp` plus `--auth-grace` passed without a refresh (close
    /// 4401): lost, not left, so the user is held for a resume with a fresh token.
    TokenExpired,
    /// A backend's moderation (issue 25): disconnected or banned (close 4403, no hold).
    Moderated,
    /// Its token was revoked (issue 25; close 4401 `revoked`): lost like `TokenExpired`.
    TokenRevoked,
}

impl Reason {
    pub const ALL: [Reason; 13] = [
        Reason::ClientClose,
        Reason::SlowConsumer,
        Reason::IdleTimeout,
        Reason::HandshakeTimeout,
        Reason::ProtocolError,
        Reason::Shutdown,
        Reason::IdConflict,
        Reason::Flood,
        Reason::Lost,
        Reason::Replaced,
        Reason::TokenExpired,
        Reason::Moderated,
        Reason::TokenRevoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ClientClose => "client_close",
            Reason::SlowConsumer => "slow_consumer",
            Reason::IdleTimeout => "idle_timeout",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::ProtocolError => "protocol_error",
            Reason::Shutdown => "shutdown",
            Reason::IdConflict => "id_conflict",
            Reason::Flood => "flood",
            Reason::Lost => "lost",
            Reason::Replaced => "replaced",
            Reason::TokenExpired => "token_expired",
            Reason::Moderated => "moderated",
            Reason::TokenRevoked => "token_revoked",
        }
    }
}

/// Every error code, in declaration order: `code as usize` indexes `Stats::errors`.
const CODES: [ErrorCode; 18] = [
    ErrorCode::BadId,
    ErrorCode::IdTaken,
    ErrorCode::UnknownRecipient,
    ErrorCode::BadMessage,
    ErrorCode::Empty,
    ErrorCode::TooLong,
    ErrorCode::RateLimited,
    ErrorCode::ClusterUnavailable,
    ErrorCode::ClusterUnconfirmed,
    ErrorCode::RecipientBusy,
    ErrorCode::BadRoom,
    ErrorCode::NotInRoom,
    ErrorCode::TooManyRooms,
    ErrorCode::Undelivered,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::Banned,
    ErrorCode::Muted,
];

#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: u64,
    pub room_received: u64,
    pub private_received: u64,
    pub deliveries: u64,
    pub bytes_sent: u64,
    disconnects: [u64; Reason::ALL.len()],
    errors: [u64; CODES.len()],
    /// Reads cut short by the per-turn byte budget (the connection waited for the next turn).
    pub read_budget_spent: u64,
    /// Writes made before the loop's own because a queue reached its soft cap.
    pub early_writes: u64,
    /// Ids held for a client the server closed, and ids taken back with a resume token.
    pub ids_held: u64,
    pub resumes: u64,
    /// Tokens refused (`--auth token`), by `auth::Reason`: at upgrades, refreshes and expiry.
    unauthorized: [u64; crate::auth::Reason::ALL.len()],
    /// Backend API answers, by status (`API_STATUSES`; any other under the last, 0).
    api: [u64; API_STATUSES.len()],
}

/// The statuses the backend API answers with (docs/api.md's table), as `/metrics` labels them.
pub const API_STATUSES: [u16; 12] = [200, 400, 401, 404, 405, 408, 409, 411, 413, 415, 503, 0];

/// Gauges counted at scrape time.
pub struct Gauges {
    pub connections: usize,
    pub websockets: usize,
    pub queued_bytes: usize,
    /// Room history: messages and bytes kept, gaps sent, messages replayed, joins answered
    /// from a read of Redis's history.
    pub history: (usize, usize, u64, u64, u64),
    /// Users in their resume grace.
    pub held: usize,
    /// Private backlogs: (lines, bytes charged) kept, and what their bounds did.
    pub backlog: ((usize, usize), crate::chat::Counters),
    /// Rooms that exist, and rooms given up so far at `--max-rooms` because only users in
    /// their grace were in them.
    pub rooms: usize,
    pub rooms_evicted: u64,
    /// With `--redis` only.
    pub cluster: Option<ClusterGauges>,
    /// While the event stream is served.
    pub events: Option<crate::events::Gauges>,
}

/// The cluster's state and counters, read at scrape time.
pub struct ClusterGauges {
    pub up: bool,
    pub nodes: usize,
    pub remote_users: usize,
    pub queued_bytes: usize,
    pub counters: crate::cluster::Counters,
}

impl Stats {
    pub fn disconnect(&mut self, r: Reason) {
        self.disconnects[r as usize] += 1;
    }

    pub fn unauthorized(&mut self, r: crate::auth::Reason) {
        self.unauthorized[r as usize] += 1;
        self.error_sent(ErrorCode::Unauthorized);
    }

    /// A backend API answer sent with `status`.
    pub fn api_answered(&mut self, status: u16) {
        let i = API_STATUSES.iter().position(|s| *s == status).unwrap_or(API_STATUSES.len() - 1);
        self.api[i] += 1;
    }

    pub fn error_sent(&mut self, code: ErrorCode) {
        self.errors[code as usize] += 1;
    }

    pub fn render(&self, g: &Gauges) -> String {
        let mut o = String::with_capacity(2048);
        self.render_traffic(&mut o, g);
        render_kept(&mut o, g);
        if let Some(c) = &g.cluster {
            render_cluster(&mut o, c);
        }
        if let Some(e) = &g.events {
            render_events(&mut o, e);
        }
        process(&mut o);
        o
    }

    /// Connections, messages, deliveries and what ended them.
    fn render_traffic(&self, o: &mut String, g: &Gauges) {
        metric(o, "connections", "gauge", "Open TCP connections.", &[("", g.connections as u64)]);
        metric(o, "websockets", "gauge", "Open WebSocket sessions.", &[("", g.websockets as u64)]);
        metric(
            o,
            "connections_accepted_total",
            "counter",
            "TCP connections accepted.",
            &[("", self.accepted)],
        );
        metric(
            o,
            "messages_received_total",
            "counter",
            "Chat messages accepted from clients.",
            &[("{kind=\"room\"}", self.room_received), ("{kind=\"private\"}", self.private_received)],
        );
        metric(
            o,
            "deliveries_total",
            "counter",
            "Chat lines queued to recipients.",
            &[("", self.deliveries)],
        );
        metric(o, "bytes_sent_total", "counter", "Bytes written to sockets.", &[("", self.bytes_sent)]);
        let labels: Vec<String> =
            Reason::ALL.iter().map(|r| format!("{{reason=\"{}\"}}", r.as_str())).collect();
        let samples: Vec<(&str, u64)> = Reason::ALL
            .iter()
            .zip(&labels)
            .map(|(r, l)| (l.as_str(), self.disconnects[*r as usize]))
            .collect();
        metric(o, "disconnects_total", "counter", "Connections closed, by reason.", &samples);
        let labels: Vec<String> = CODES.iter().map(|c| format!("{{code=\"{}\"}}", c.as_str())).collect();
        let samples: Vec<(&str, u64)> =
            CODES.iter().zip(&labels).map(|(c, l)| (l.as_str(), self.errors[*c as usize])).collect();
        metric(o, "errors_sent_total", "counter", "Error lines sent to clients, by code.", &samples);
        let all = crate::auth::Reason::ALL;
        let labels: Vec<String> = all.iter().map(|r| format!("{{reason=\"{}\"}}", r.as_str())).collect();
        let samples: Vec<(&str, u64)> =
            all.iter().zip(&labels).map(|(r, l)| (l.as_str(), self.unauthorized[*r as usize])).collect();
        metric(o, "unauthorized_total", "counter", "Tokens refused (--auth token), by reason.", &samples);
        let labels: Vec<String> = API_STATUSES.iter().map(|s| format!("{{status=\"{s}\"}}")).collect();
        let samples: Vec<(&str, u64)> = labels.iter().zip(&self.api).map(|(l, n)| (l.as_str(), *n)).collect();
        metric(o, "api_requests_total", "counter", "Backend API requests answered, by status.", &samples);
        metric(
            o,
            "read_budget_spent_total",
            "counter",
            "Reads cut short by the per-connection, per-turn byte budget.",
            &[("", self.read_budget_spent)],
        );
        metric(
            o,
            "early_writes_total",
            "counter",
            "Writes made before the loop's own because a queue reached its soft cap.",
            &[("", self.early_writes)],
        );
        metric(
            o,
            "ids_held_total",
            "counter",
            "Ids held for a client the server closed, until it resumes or the grace ends.",
            &[("", self.ids_held)],
        );
        metric(o, "resumes_total", "counter", "Ids taken back with a resume token.", &[("", self.resumes)]);
    }
}

/// One series in the text format: its HELP and TYPE lines, then a sample per label set.
fn metric(o: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
    let _ = writeln!(o, "# HELP chatloop_{name} {help}\n# TYPE chatloop_{name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(o, "chatloop_{name}{labels} {v}");
    }
}

/// What the server keeps: rooms, holds, backlogs, history, queues.
/// The event stream (`GET /api/events`).
fn render_events(o: &mut String, e: &crate::events::Gauges) {
    metric(
        o,
        "event_streams",
        "gauge",
        "Open event stream consumers (GET /api/events).",
        &[("", e.consumers as u64)],
    );
    metric(o, "events_total", "counter", "Events appended to the event log.", &[("", e.appended)]);
    metric(
        o,
        "events_kept",
        "gauge",
        "Events kept for Last-Event-ID (--events-keep).",
        &[("", e.kept as u64)],
    );
    metric(o, "events_kept_bytes", "gauge", "What the kept events are charged.", &[("", e.bytes as u64)]);
    let c = e.counters;
    metric(o, "event_streams_opened_total", "counter", "Event streams opened.", &[("", c.opened)]);
    metric(
        o,
        "event_streams_slow_total",
        "counter",
        "Event stream consumers closed because their queue could not take a live event.",
        &[("", c.slow)],
    );
    metric(
        o,
        "event_gaps_total",
        "counter",
        "Gap events sent: a consumer asked for events the log no longer keeps.",
        &[("", c.gaps)],
    );
    metric(
        o,
        "events_dropped_total",
        "counter",
        "Events dropped in a cluster: more than --events-keep recorded while Redis was away.",
        &[("", c.dropped)],
    );
}

fn render_kept(o: &mut String, g: &Gauges) {
    metric(o, "rooms", "gauge", "Rooms with members.", &[("", g.rooms as u64)]);
    metric(
        o,
        "rooms_evicted_total",
        "counter",
        "Rooms held only by users in their grace, given up for a new room at --max-rooms.",
        &[("", g.rooms_evicted)],
    );
    metric(o, "users_held", "gauge", "Users in their resume grace.", &[("", g.held as u64)]);
    let ((lines, bytes), counters) = g.backlog;
    metric(
        o,
        "backlog_lines",
        "gauge",
        "Private messages kept until their recipient acknowledges them (connected or held).",
        &[("", lines as u64)],
    );
    metric(
        o,
        "backlog_bytes",
        "gauge",
        "What the kept private messages are charged (--backlog-bytes).",
        &[("", bytes as u64)],
    );
    metric(
        o,
        "holds_ended_early_total",
        "counter",
        "Holds whose grace ended early to make room under --max-holds.",
        &[("", counters.holds_ended_early)],
    );
    metric(
        o,
        "backlog_dropped_total",
        "counter",
        "Kept private messages dropped from the largest backlog to make room in --backlog-bytes (each reported undelivered).",
        &[("", counters.backlog_dropped)],
    );
    let (kept, bytes, gaps, replayed, fetched) = g.history;
    metric(o, "history_messages", "gauge", "Room messages kept for replay.", &[("", kept as u64)]);
    metric(o, "history_bytes", "gauge", "Bytes of room history kept.", &[("", bytes as u64)]);
    metric(
        o,
        "history_gaps_total",
        "counter",
        "Gap lines sent (asked-for history no longer kept).",
        &[("", gaps)],
    );
    metric(o, "history_replayed_total", "counter", "Room messages replayed from history.", &[("", replayed)]);
    metric(
        o,
        "history_fetched_total",
        "counter",
        "Joins answered after reading the room's history from Redis (a cluster).",
        &[("", fetched)],
    );
    metric(
        o,
        "outbound_queue_bytes",
        "gauge",
        "Bytes queued for clients, summed over connections.",
        &[("", g.queued_bytes as u64)],
    );
}

/// The Redis link's series (only with `--redis`).
fn render_cluster(o: &mut String, c: &ClusterGauges) {
    metric(o, "cluster_up", "gauge", "1 while the Redis link is up.", &[("", c.up as u64)]);
    metric(o, "cluster_nodes", "gauge", "Other nodes heard from within the TTL.", &[("", c.nodes as u64)]);
    metric(o, "cluster_remote_users", "gauge", "Users on other nodes.", &[("", c.remote_users as u64)]);
    metric(o, "cluster_queue_bytes", "gauge", "Bytes queued for Redis.", &[("", c.queued_bytes as u64)]);
    let n = &c.counters;
    metric(o, "cluster_published_total", "counter", "Messages published to Redis.", &[("", n.published)]);
    metric(o, "cluster_received_total", "counter", "Messages received from Redis.", &[("", n.received)]);
    metric(o, "cluster_connects_total", "counter", "Successful connections to Redis.", &[("", n.connects)]);
    metric(
        o,
        "cluster_stalls_total",
        "counter",
        "Times the Redis link was dropped because Redis did not answer within --redis-timeout.",
        &[("", n.stalls)],
    );
}

/// The standard process series (as Prometheus' client libraries name them) and the build.
/// A series whose source cannot be read is left out rather than reported as 0.
fn process(o: &mut String) {
    let mut gauge = |name: &str, kind: &str, help: &str, v: String| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    // SAFETY: sysconf has no preconditions.
    let (tick, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name (which may hold spaces): state is field 3.
    let f: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    if let (Some(utime), Some(stime), true) = (field(14), field(15), tick > 0) {
        let secs = (utime + stime) as f64 / tick as f64;
        gauge(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds.",
            secs.to_string(),
        );
    }
    if let (Some(rss), true) = (field(24), page > 0) {
        gauge(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            (rss * page as u64).to_string(),
        );
    }
    // The directory's own descriptor is counted too, as the Go and Python clients count it.
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge("process_open_fds", "gauge", "Number of open file descriptors.", fds.count().to_string());
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        gauge(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            lim.rlim_cur.to_string(),
        );
    }
    // starttime is in ticks since boot; btime (in /proc/stat) is the boot's Unix time.
    let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<u64>().ok())
    });
    if let (Some(btime), Some(start), true) = (btime, field(22), tick > 0) {
        let secs = btime as f64 + start as f64 / tick as f64;
        gauge(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            secs.to_string(),
        );
    }
    let _ = writeln!(
        o,
        "# HELP chatloop_build_info The version of chatloop running.\n# TYPE chatloop_build_info gauge\n\
         chatloop_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
}

/// An address block such as `127.0.0.0/8` or `::1/128`; a bare address means just itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
        let net: IpAddr = addr.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() { max } else { prefix.parse().ok()? };
        (prefix <= max).then_some(Cidr { net, prefix })
    }

    /// The default for `--metrics-allow`: loopback only.
    pub fn loopback() -> Vec<Cidr> {
        vec![Cidr::parse("127.0.0.0/8").expect("valid"), Cidr::parse("::1/128").expect("valid")]
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, b, bits) = match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n) as u128, u32::from(i) as u128, 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let shift = bits - self.prefix as u32;
        shift >= bits || (a >> shift) == (b >> shift)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_its_counter() {
        for (i, c) in CODES.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?} out of order");
        }
        // No wildcard: a new code fails to compile here until it is added to CODES too.
        let last = |c: ErrorCode| match c {
            ErrorCode::BadId
            | ErrorCode::IdTaken
            | ErrorCode::UnknownRecipient
            | ErrorCode::BadMessage
            | ErrorCode::Empty
            | ErrorCode::TooLong
            | ErrorCode::RateLimited
            | ErrorCode::ClusterUnavailable
            | ErrorCode::ClusterUnconfirmed
            | ErrorCode::RecipientBusy
            | ErrorCode::BadRoom
            | ErrorCode::NotInRoom
            | ErrorCode::TooManyRooms
            | ErrorCode::Undelivered
            | ErrorCode::Unauthorized
            | ErrorCode::Forbidden
            | ErrorCode::Banned => false,
            ErrorCode::Muted => true,
        };
        assert!(last(CODES[CODES.len() - 1]));
    }

    #[test]
    fn cidr_matching() {
        let lo = Cidr::loopback();
        let allowed = |ip: &str| lo.iter().any(|c| c.contains(ip.parse().unwrap()));
        assert!(
            allowed("127.0.0.1") && allowed("127.9.9.9") && allowed("::1") && allowed("::ffff:127.0.0.2")
        );
        assert!(!allowed("10.0.0.1") && !allowed("::2") && !allowed("128.0.0.1"));
        let any = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(any.contains("8.8.8.8".parse().unwrap()));
        let one = Cidr::parse("192.168.1.7").unwrap();
        assert!(
            one.contains("192.168.1.7".parse().unwrap()) && !one.contains("192.168.1.8".parse().unwrap())
        );
        for bad in ["", "1.2.3.4/33", "::/129", "nope/8", "1.2.3.4/x"] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn render_has_every_series_in_text_format() {
        let mut s = Stats { deliveries: 5, ..Stats::default() };
        s.disconnect(Reason::SlowConsumer);
        s.error_sent(ErrorCode::RateLimited);
        let out = s.render(&Gauges {
            connections: 3,
            websockets: 2,
            queued_bytes: 10,
            history: (0, 0, 0, 0, 0),
            held: 0,
            rooms: 0,
            rooms_evicted: 0,
            backlog: ((7, 4096), crate::chat::Counters { holds_ended_early: 2, backlog_dropped: 1 }),
            cluster: None,
            events: Some(crate::events::Gauges { consumers: 2, appended: 9, ..Default::default() }),
        });
        for line in [
            "chatloop_event_streams 2",
            "chatloop_events_total 9",
            "chatloop_connections 3",
            "chatloop_websockets 2",
            "chatloop_deliveries_total 5",
            "chatloop_backlog_lines 7",
            "chatloop_backlog_bytes 4096",
            "chatloop_holds_ended_early_total 2",
            "chatloop_backlog_dropped_total 1",
            "chatloop_disconnects_total{reason=\"slow_consumer\"} 1",
            "chatloop_disconnects_total{reason=\"shutdown\"} 0",
            "chatloop_errors_sent_total{code=\"rate_limited\"} 1",
            "chatloop_messages_received_total{kind=\"private\"} 0",
            "chatloop_outbound_queue_bytes 10",
            "# TYPE chatloop_bytes_sent_total counter",
            "# TYPE process_cpu_seconds_total counter",
            concat!("chatloop_build_info{version=\"", env!("CARGO_PKG_VERSION"), "\"} 1"),
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        for series in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            let v = out.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' '));
            let v: f64 = v.unwrap_or_else(|| panic!("missing {series}")).parse().unwrap();
            assert!(v >= 0.0, "{series} {v}");
        }
    }
}
