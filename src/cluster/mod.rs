//! Scale-out through Redis: what nodes tell each other, and the id registry's commands.
//!
//! Every node subscribes to `chatloop:all` (presence, hello, heartbeat, goodbye),
//! `chatloop:node:<its id>` (private messages, rosters, bounces), and `chatloop:room:<name>`
//! for each room it has a member in (that room's messages): a node receives only the room
//! traffic its own users need. It subscribes on the first local join of a room and
//! unsubscribes on the last local leave.
//! Payloads are one header line of space-separated fields (ids and node ids never contain a
//! space or newline), then, for chat messages, `\n` and the JSON line exactly as clients
//! get it, so a receiving node forwards a slice of the payload without re-encoding.
//!
//! The id registry is one key per id, `chatloop:id:<lowercased id>`, holding the node id,
//! with a TTL that heartbeats refresh. Claim and release are tiny Lua scripts so that "take
//! it if free or already ours" and "delete it only if ours" are atomic.
//!
//! Each room has `chatloop:seq:<room>`, `chatloop:epoch:<room>` and its recent history,
//! `chatloop:hist:<room>` (see `NUMBER`, `FETCH`). A user in its resume grace has the hash of
//! its secret, its kept private messages, its last pseq and its rate-limit bucket under
//! `chatloop:resume:`, `chatloop:priv:`, `chatloop:pseq:` and `chatloop:rate:` (see `LOST`,
//! `KEEP`, `RESUME`); the `RESUME` that lets it back in, on any node, spends them at once.
//! A user that left keeps its bucket there too until it would have refilled (`LEFT`, `JOIN`):
//! the rate limit belongs to the id, in the whole cluster.
//!
//! This module is pure (no sockets): the server's `cluster` half drives it.

mod events;
mod msg;
mod read;
mod scripts;

pub use events::{EVENTS_CHANNEL, parse_event};
pub use msg::{Msg, new_node_id, payload, roster_fields};
pub use read::{READ, Read, Shared};
pub use scripts::{
    ALL, CLAIM, CLAIM_CHUNK, FETCH, JOIN, KEEP, KEY_PREFIX, LEFT, LOST, MOD_DEL, MOD_LOAD, MOD_PUT, NUMBER,
    RELEASE, RESUME, channel_room, node_channel, room_channel,
};

use crate::redis::{Link, Url};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A room message handed to Redis to number and publish (see `NUMBER`, and chat's `Broker`),
/// waiting for the answer: what its local delivery needs then, and whom to tell if it fails.
#[derive(Debug)]
pub struct Ticket {
    pub from: Rc<str>,
    pub room: Rc<str>,
    /// The client's id for the message, for the error about it.
    pub cid: Option<Rc<str>>,
    /// The sender's connection.
    pub token: usize,
    /// A backend's publish: the generation of connection `token` (an HTTP one), to answer.
    pub api: Option<u32>,
    /// The line with seq 0 (see `protocol::with_seq`).
    pub template: Bytes,
}

/// What a join asked to replay, owned (it outlives the client's frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    None,
    Last(u64),
    Since(u64, Rc<str>),
}

impl Ask {
    /// The arguments of `FETCH`: after which seq, at most how many, in which epoch
    /// ("" for any), given the node's `--history`.
    pub fn fetch_args(&self, per_room: usize) -> (u64, u64, &str) {
        let per_room = per_room as u64;
        match self {
            // Only the room's epoch and latest seq, for `joined`.
            Ask::None => (u64::MAX, 0, ""),
            Ask::Last(k) => (0, (*k).min(per_room), ""),
            Ask::Since(seq, epoch) => (*seq, per_room, epoch),
        }
    }
}

/// A join waiting for Redis's copy of its room's history.
#[derive(Debug)]
pub struct Fetch {
    pub token: usize,
    /// The member's id as typed.
    pub id: Rc<str>,
    pub room: Rc<str>,
    pub ask: Ask,
    /// The epoch Redis takes for the room if it has none (`History::offer`).
    pub offer: Rc<str>,
}

/// What a reply from Redis answers, in the order the commands were sent.
#[derive(Debug)]
pub enum Await {
    /// A new session's claim of `id` (as typed) for connection `token`.
    Claim {
        token: usize,
        generation: u32,
        id: String,
    },
    /// A private message `from` wrote to `to` on another node: 0 receivers means that node
    /// is gone.
    Private {
        from: Rc<str>,
        to: Rc<str>,
        /// The client's id for the message, for the error about it.
        cid: Option<Rc<str>>,
    },
    /// A room message, with the line to deliver here once Redis has numbered it (see `NUMBER`): if the link fails before Redis answers, other nodes
    /// may not have it, and the sender is told so; Redis's count of receivers says whether a
    /// node that should have heard it did not (it was reconnecting).
    Room(Box<Ticket>),
    /// A join waiting for the room's history (`FETCH`), from connection `token` of
    /// `generation`.
    Fetch {
        generation: u32,
        fetch: Box<Fetch>,
    },
    /// A private message `from` wrote to `to`, kept here for `to` in its grace and in Redis
    /// (see `KEEP`): if another node took `to` over meanwhile, `line` (the sender's copy)
    /// follows it there.
    Keep {
        from: Rc<str>,
        to: Rc<str>,
        line: Bytes,
    },
    /// A join presenting a resume secret (see `RESUME`); `asked`: the node that had the user
    /// connected has already released it once for this join.
    Resume {
        token: usize,
        generation: u32,
        id: String,
        asked: bool,
    },
    /// Redis's `TIME`, asked at `sent` (see `Cluster::clock_read`).
    Clock {
        sent: Instant,
    },
    /// A heartbeat or re-registration: the reply lists ids another node holds.
    Refresh,
    /// Every moderation decision in force (`MOD_LOAD`), asked when the link came up.
    Moderation,
    /// A backend API request (connection `token` of `generation`) whose answer waits for
    /// Redis to keep what it asked (a moderation decision): `body` once it has.
    Answer {
        token: usize,
        generation: u32,
        body: Vec<u8>,
    },
    /// A backend API read of a room's history (`READ`), for connection `token` of
    /// `generation`.
    Read {
        token: usize,
        generation: u32,
        read: Box<Read>,
    },
    /// An event appended through `EMIT` (type and data): if the link fails before it was
    /// written, it is sent again once the link is back.
    Emit(Box<(crate::events::Kind, bytes::Bytes)>),
    /// The kept events a (re)connected node missed (`events_since`).
    Events,
    Ignore,
}

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub published: u64,
    pub received: u64,
    pub connects: u64,
    /// Times the link was given up because Redis did not answer within the timeout.
    pub stalls: u64,
}

/// This node's side of the cluster: the link, who else is alive, and what we wait for.
pub struct Cluster {
    pub link: Link,
    pub node: Rc<str>,
    mine: Vec<u8>,
    ttl: Duration,
    /// How long Redis may take to answer (`--redis-timeout`).
    timeout: Duration,
    /// Replies awaited, oldest first, each with where its command ends in the link's byte
    /// stream (`Link::end`): if the link fails, that says whether the command went out.
    waiting: VecDeque<(u64, Await)>,
    /// Other nodes and when we last heard from them.
    nodes: HashMap<Rc<str>, Instant>,
    /// Lowercased ids whose claim is in flight (so a second local claim waits its turn).
    pub claiming: HashSet<String>,
    next_beat: Instant,
    /// When a reply last arrived, or replies began to be awaited (nothing awaited before).
    progress: Instant,
    /// When Redis last sent anything (a reply or a push), or the link came up.
    heard: Instant,
    pub counters: Counters,
    /// Room messages Redis keeps per room (`--history`), and for how long after the room's
    /// latest message (`--history-ttl`): see `NUMBER`.
    pub history: usize,
    pub history_ttl: Duration,
    /// Joins waiting for another node to release a user it has connected (see
    /// `Msg::Takeover`), by lowercased id, each given up at its deadline.
    pub asking: HashMap<String, Asking>,
    /// Redis's clock: `offset` ms plus the ms since `origin` (see `redis_ms`). Until `TIME`
    /// answers, this host's wall clock stands in for it.
    origin: Instant,
    offset: i64,
}

/// A join waiting for another node's `Released`.
#[derive(Debug)]
pub struct Asking {
    pub token: usize,
    pub generation: u32,
    /// The id as typed.
    pub id: String,
    pub until: Instant,
}

/// Whether a command of the link's byte stream went out before the link failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Handed to the socket: Redis may have run it, or may yet (a stopped Redis reads its
    /// buffered input when it resumes). Unconfirmed, not failed.
    Written,
    /// Still queued when the link failed: dropped, never sent.
    Unwritten,
}

impl Cluster {
    /// `timeout`: Redis may take this long (or the TTL, if shorter) to answer before the link
    /// is dropped; while nothing is awaited, a PING goes out after half that long without a
    /// reply.
    pub fn new(url: Url, token: mio::Token, ttl: Duration, timeout: Duration, now: Instant) -> Cluster {
        let node: Rc<str> = Rc::from(new_node_id());
        Cluster {
            link: Link::new(url, token, now),
            mine: node_channel(&node),
            node,
            ttl,
            timeout,
            waiting: VecDeque::new(),
            nodes: HashMap::new(),
            claiming: HashSet::new(),
            history: 0,
            history_ttl: Duration::ZERO,
            asking: HashMap::new(),
            origin: now,
            offset: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
            next_beat: now,
            progress: now,
            heard: now,
            counters: Counters::default(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Heartbeats go out three times per TTL, so one lost beat never expires anything.
    pub fn beat_interval(&self) -> Duration {
        self.ttl / 3
    }

    pub fn is_up(&self) -> bool {
        self.link.is_up()
    }

    /// How long Redis may take to answer (or to accept a connection) before the link is
    /// dropped: the timeout, or the TTL if shorter.
    pub fn limit(&self) -> Duration {
        self.timeout.min(self.ttl)
    }

    /// When the loop must wake for the cluster: a reconnect, a connection attempt overdue,
    /// the next heartbeat, the moment awaited replies count as stalled, or (nothing awaited)
    /// the next PING. Each of these is at least half a timeout apart while Redis is quiet, so
    /// an idle node wakes about twice a timeout, not in a loop.
    pub fn deadline(&self) -> Option<Instant> {
        let limit = self.limit();
        let mut next = self.link.deadline(limit).map_or(self.next_beat, |t| t.min(self.next_beat));
        if self.is_up() {
            let wait = if self.waiting.is_empty() { limit / 2 } else { limit };
            next = next.min(self.progress + wait);
        }
        if let Some(ask) = self.asking.values().map(|a| a.until).min() {
            next = next.min(ask);
        }
        Some(next)
    }

    /// Whether the link is up, nothing is awaited and nothing has come for half a limit: then
    /// a PING keeps the link known to be alive (a silent Redis is noticed within one and a
    /// half limits even when nobody sends anything). Half, not a whole one: a healthy idle
    /// link then never goes a whole limit without input, which `heard` takes for a Redis that
    /// stalled (a message sent just under a limit after the last reply was reported
    /// `cluster_unconfirmed` while it had gone through).
    pub fn ping_due(&self, now: Instant) -> bool {
        self.is_up() && self.waiting.is_empty() && now.duration_since(self.progress) >= self.limit() / 2
    }

    pub fn ping(&mut self) {
        if self.link.send(&[b"PING"]) {
            self.awaiting(Await::Ignore);
        } else {
            self.progress = Instant::now(); // refused (queue full): try again a timeout later
        }
    }

    /// Records a reply to wait for, for the command just queued. The stall clock starts when
    /// replies begin to be awaited, not at the last reply, which may be long ago.
    fn awaiting(&mut self, then: Await) {
        if self.waiting.is_empty() {
            self.progress = Instant::now();
        }
        self.waiting.push_back((self.link.end(), then));
    }

    /// How many replies are awaited now: the place of the next command's (`then_at`).
    pub fn awaited(&self) -> usize {
        self.waiting.len()
    }

    /// The reply awaited in place `at` (`awaited` before its command was queued, no reply
    /// having come since) will answer `then` instead; false if there is none.
    pub fn then_at(&mut self, at: usize, then: Await) -> bool {
        match self.waiting.get_mut(at) {
            Some((_, w)) => {
                *w = then;
                true
            }
            None => false,
        }
    }

    /// What the reply that just arrived answers (the oldest command awaited).
    pub fn answered(&mut self, now: Instant) -> Option<Await> {
        self.progress = now;
        self.waiting.pop_front().map(|(_, w)| w)
    }

    /// Redis sent something. True if it had been silent for a whole limit before: long
    /// enough for another node to have given up its link meanwhile, while Redis still lists
    /// that dead connection as a subscriber; what Redis runs now from our queue may be
    /// counted as reaching that node and not reach it (see `unconfirm`).
    pub fn heard(&mut self, now: Instant) -> bool {
        let late = now.duration_since(self.heard) >= self.limit();
        self.heard = now;
        late
    }

    /// The room and private messages awaited now, taken over by the caller: their replies
    /// will be ignored.
    pub fn unconfirm(&mut self) -> Vec<Await> {
        let mut out = Vec::new();
        for (_, w) in self.waiting.iter_mut() {
            if matches!(w, Await::Room(_) | Await::Private { .. }) {
                out.push(std::mem::replace(w, Await::Ignore));
            }
        }
        out
    }

    /// The link failed: everything still awaited, oldest first, with whether it went out.
    pub fn take_waiting(&mut self) -> Vec<(Await, Sent)> {
        let written = self.link.written();
        let sent = |end: u64| if end <= written { Sent::Written } else { Sent::Unwritten };
        std::mem::take(&mut self.waiting).into_iter().map(|(end, w)| (w, sent(end))).collect()
    }

    /// Whether a heartbeat is due (and schedules the next one).
    pub fn beat_due(&mut self, now: Instant) -> bool {
        if now < self.next_beat {
            return false;
        }
        self.next_beat = now + self.beat_interval();
        true
    }

    /// The link just came up: subscribe (to the shared channels and to `rooms`, the rooms
    /// with local members), then say hello so that the others send rosters.
    pub fn subscribed<'a>(&mut self, rooms: impl Iterator<Item = &'a str>) -> bool {
        self.counters.connects += 1;
        self.heard = Instant::now();
        let mine = self.mine.clone();
        let channels: Vec<Vec<u8>> = rooms.map(room_channel).collect();
        let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE", ALL, &mine];
        args.extend(channels.iter().map(|c| &c[..]));
        self.link.send(&args) && self.publish(ALL, &payload(&["H", &self.node], None))
    }

    /// Starts (`on`) or stops hearing room `room`'s messages. Redis confirms with a push,
    /// not a reply, so nothing is awaited.
    pub fn listen(&mut self, room: &str, on: bool) -> bool {
        let verb: &[u8] = if on { b"SUBSCRIBE" } else { b"UNSUBSCRIBE" };
        self.link.send(&[verb, &room_channel(room)])
    }

    /// Whether replies are awaited and none has come within the limit, or connecting does
    /// not finish (a black-holed address, a Redis that accepts and never answers `HELLO`).
    pub fn stalled(&self, now: Instant) -> bool {
        let limit = self.limit();
        self.link.connect_overdue(now, limit)
            || (self.is_up() && !self.waiting.is_empty() && now.duration_since(self.progress) >= limit)
    }

    /// Notes that `node` is alive; true if we had not heard of it (ask for its roster).
    pub fn seen(&mut self, node: &str, now: Instant) -> bool {
        match self.nodes.get_mut(node) {
            Some(t) => {
                *t = now;
                false
            }
            None => {
                self.nodes.insert(Rc::from(node), now);
                true
            }
        }
    }

    /// Forgets `node` (it said goodbye).
    pub fn forget(&mut self, node: &str) {
        self.nodes.remove(node);
    }

    /// Nodes silent for a whole TTL: they are gone, and so are their users.
    pub fn expire(&mut self, now: Instant) -> Vec<Rc<str>> {
        let ttl = self.ttl;
        let dead: Vec<Rc<str>> = self
            .nodes
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= ttl)
            .map(|(n, _)| Rc::clone(n))
            .collect();
        for n in &dead {
            self.nodes.remove(n);
        }
        dead
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{line_seq, split_seq};

    fn parse(s: &'static str) -> Option<Msg<'static>> {
        // Leaked so the borrowed fields outlive this helper; a test-only convenience.
        let b: &'static Bytes = Box::leak(Box::new(Bytes::from_static(s.as_bytes())));
        Msg::parse(b)
    }

    #[test]
    fn every_message_round_trips_and_junk_is_refused() {
        let line = r#"{"type":"message","from":"a","text":"x y\nz","ts":1}"#;
        let p = payload(&["M", "n1", "lobby", "Ep0ch123"], Some(line.as_bytes()));
        let b = Bytes::from(p);
        assert_eq!(
            Msg::parse(&b),
            Some(Msg::Room { node: "n1", room: "lobby", epoch: "Ep0ch123", line: Bytes::from(line) })
        );
        let template = br#"{"type":"message","room":"dev","seq":0,"from":"a","text":"seq":0,"ts":1}"#;
        let (pre, post) = split_seq(template).unwrap();
        assert_eq!(
            (pre, post),
            (&br#"{"type":"message","room":"dev","seq":"#[..], &br#","from":"a","text":"seq":0,"ts":1}"#[..])
        );
        assert_eq!(line_seq(&[pre, b"42", post].concat()), Some(42));
        assert_eq!(parse("j n1 alice dev"), Some(Msg::RoomJoin { node: "n1", id: "alice", room: "dev" }));
        assert_eq!(parse("l n1 alice dev"), Some(Msg::RoomLeave { node: "n1", id: "alice", room: "dev" }));
        assert_eq!(parse("J n1 alice"), Some(Msg::Join { node: "n1", id: "alice" }));
        assert_eq!(parse("L n1 alice"), Some(Msg::Leave { node: "n1", id: "alice" }));
        assert_eq!(parse("H n1"), Some(Msg::Hello { node: "n1" }));
        assert_eq!(parse("B n1 12 30"), Some(Msg::Beat { node: "n1", count: 12, memberships: 30 }));
        assert_eq!(parse("G n1"), Some(Msg::Bye { node: "n1" }));
        assert_eq!(parse("R n1"), Some(Msg::Roster { node: "n1", members: vec![] }));
        assert_eq!(
            parse("R n1 a @lobby @dev b"),
            Some(Msg::Roster { node: "n1", members: vec![("a", vec!["lobby", "dev"]), ("b", vec![])] })
        );
        let fields = roster_fields([("a", vec!["lobby", "dev"]), ("b", vec![])].into_iter());
        assert_eq!(fields, ["a", "@lobby", "@dev", "b"]);
        assert_eq!(channel_room(&room_channel("dev")), Some("dev"));
        assert_eq!(channel_room(ALL), None);
        assert_eq!(parse("Q n1"), Some(Msg::Query { node: "n1" }));
        assert_eq!(
            parse("P n1 bob alice\n{}"),
            Some(Msg::Private { node: "n1", to: "bob", from: "alice", line: Bytes::from("{}") })
        );
        assert_eq!(parse("E bob alice"), Some(Msg::Bounce { to: "bob", from: "alice" }));
        assert_eq!(parse("K bob alice"), Some(Msg::Busy { to: "bob", from: "alice" }));
        assert_eq!(
            parse("Z n1 bob AbC-_9xyzAbC-_9xyzAb"),
            Some(Msg::Takeover { node: "n1", id: "bob", token: "AbC-_9xyzAbC-_9xyzAb" })
        );
        assert_eq!(parse("z n1 bob"), Some(Msg::Released { node: "n1", id: "bob", ok: true }));
        assert_eq!(parse("y n1 bob"), Some(Msg::Released { node: "n1", id: "bob", ok: false }));
        assert_eq!(
            parse("V n1 m bob @ 12"),
            Some(Msg::Moderated { node: "n1", set: true, fields: vec!["m", "bob", "@", "12"] })
        );
        assert_eq!(
            parse("W n1 b bob"),
            Some(Msg::Moderated { node: "n1", set: false, fields: vec!["b", "bob"] })
        );
        assert_eq!(
            parse("D n1 bob\nspam, twice"),
            Some(Msg::Disconnect { node: "n1", id: "bob", reason: Bytes::from("spam, twice") })
        );
        assert_eq!(
            parse("D n1 bob\n"),
            Some(Msg::Disconnect { node: "n1", id: "bob", reason: Bytes::new() })
        );
        assert_eq!(parse("X n1 bob dev"), Some(Msg::Kick { node: "n1", id: "bob", room: "dev" }));
        for junk in [
            "",
            "M n1",
            "M n1 lobby",
            "j n1 a",
            "R n1 @dev a",
            "J n1",
            "J n1 a b",
            "B n1 x",
            "B n1 1",
            "Z n1",
            "P n1 bob",
            "H n1\nbody",
            "\u{0}",
            "P  x\n{}",
            "R n1 ",
            "V n1",
            "D n1 bob",
            "X n1 bob",
        ] {
            assert_eq!(parse(junk), None, "{junk:?}");
        }
        assert_eq!(Msg::parse(&Bytes::from_static(b"J \xff a")), None);
        assert_eq!(parse("J n1 al/ce"), None, "not an id");
    }

    #[test]
    fn node_ids_differ_and_nodes_expire_after_a_silent_ttl() {
        assert_ne!(new_node_id(), new_node_id());
        assert_eq!(new_node_id().len(), 16);
        let t0 = Instant::now();
        let url = Url::parse("redis://127.0.0.1:1").unwrap();
        let mut c = Cluster::new(url, mio::Token(0), Duration::from_secs(3), Duration::from_secs(1), t0);
        assert!(c.seen("a", t0), "a new node");
        assert!(!c.seen("a", t0 + Duration::from_secs(2)), "known");
        assert!(c.seen("b", t0));
        assert_eq!(c.expire(t0 + Duration::from_secs(4)), vec![Rc::<str>::from("b")]);
        assert_eq!(c.expire(t0 + Duration::from_secs(5)), vec![Rc::<str>::from("a")]);
        assert_eq!(c.node_count(), 0);
    }

    #[test]
    fn heartbeats_come_three_times_per_ttl() {
        let t0 = Instant::now();
        let url = Url::parse("redis://127.0.0.1:1").unwrap();
        let mut c = Cluster::new(url, mio::Token(0), Duration::from_secs(3), Duration::from_secs(1), t0);
        assert!(c.beat_due(t0));
        assert!(!c.beat_due(t0 + Duration::from_millis(999)));
        assert!(c.beat_due(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn a_stall_is_replies_awaited_and_none_coming_and_an_idle_link_pings() {
        let t0 = Instant::now();
        let url = Url::parse("redis://127.0.0.1:1").unwrap();
        let sec = Duration::from_secs(1);
        let mut c = Cluster::new(url, mio::Token(0), Duration::from_secs(3), sec, t0);
        assert!(!c.stalled(t0 + Duration::from_secs(60)), "nothing awaited: never stalled");
        assert!(!c.ping_due(t0 + Duration::from_secs(60)), "a link that is down is not pinged");
        c.link.pretend_up();
        // Idle: a PING half a limit after the last reply, and no stall however long it is quiet.
        let t1 = Instant::now();
        c.progress = t1;
        assert!(!c.ping_due(t1 + Duration::from_millis(499)));
        assert!(c.ping_due(t1 + Duration::from_millis(500)));
        assert!(!c.stalled(t1 + Duration::from_secs(60)));
        assert_eq!(c.deadline(), Some((t1 + sec / 2).min(c.next_beat)));
        c.ping();
        assert!(!c.ping_due(t1 + Duration::from_secs(5)), "one PING at a time");
        // Awaited: the clock started when the PING went out, and the limit is the timeout
        // (shorter than the TTL here).
        let started = c.progress;
        assert!(started >= t1);
        assert!(!c.stalled(started + Duration::from_millis(999)));
        assert!(c.stalled(started + sec));
        assert_eq!(c.deadline(), Some((started + sec).min(c.next_beat)));
        let t2 = started + Duration::from_millis(500);
        assert!(matches!(c.answered(t2), Some(Await::Ignore)));
        assert!(!c.stalled(t2 + Duration::from_secs(5)), "answered: idle again");
        assert!(c.ping_due(t2 + sec));
    }

    #[test]
    fn a_healthy_idle_link_is_never_silent_for_a_whole_limit() {
        // A message sent just under a limit after the last reply must not find the link
        // "silent for a whole limit" when its reply comes: the idle PING came in between.
        let t0 = Instant::now();
        let url = Url::parse("redis://127.0.0.1:1").unwrap();
        let sec = Duration::from_secs(1);
        let mut c = Cluster::new(url, mio::Token(0), Duration::from_secs(3), sec, t0);
        c.link.pretend_up();
        (c.progress, c.heard) = (t0, t0);
        let mut now = t0;
        for _ in 0..10 {
            // The loop wakes for the PING; its reply comes a millisecond later.
            assert!(!c.ping_due(now + sec / 2 - Duration::from_millis(1)));
            now += sec / 2;
            assert!(c.ping_due(now));
            c.ping();
            c.progress = now;
            now += Duration::from_millis(1);
            assert!(!c.heard(now), "a healthy idle link heard from within the limit");
            assert!(matches!(c.answered(now), Some(Await::Ignore)));
        }
        // So whenever a room message goes out, the last input is at most half a limit (and a
        // round trip) old, and its reply, however slow within reason, is not "late". Before,
        // the PING came a whole limit after the last reply, and a message sent just before
        // it had its reply judged late (a false `cluster_unconfirmed`).
        assert!(!c.heard(now + sec / 2 + Duration::from_millis(400)));
    }

    fn ticket(from: &str, room: &str) -> Box<Ticket> {
        Box::new(Ticket {
            from: Rc::from(from),
            room: Rc::from(room),
            cid: None,
            token: 0,
            api: None,
            template: Bytes::new(),
        })
    }

    #[test]
    fn a_failed_link_tells_written_commands_from_dropped_ones() {
        let url = Url::parse("redis://127.0.0.1:1").unwrap();
        let mut c =
            Cluster::new(url, mio::Token(0), Duration::from_secs(3), Duration::from_secs(1), Instant::now());
        c.link.pretend_up();
        let room = |n: &str| Await::Room(ticket("alice", n));
        assert!(c.publish_awaiting(b"chatloop:room:a", b"M n a\n{}", room("a")));
        let first = c.link.end();
        assert!(c.publish_awaiting(b"chatloop:room:b", b"M n b\n{}", room("b")));
        // The socket took the first command and part of the second.
        c.link.pretend_written(first + 3);
        let got: Vec<(String, Sent)> = c
            .take_waiting()
            .into_iter()
            .map(|(w, s)| match w {
                Await::Room(t) => (t.room.to_string(), s),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, [("a".to_string(), Sent::Written), ("b".to_string(), Sent::Unwritten)]);
        assert!(c.take_waiting().is_empty());
    }

    #[test]
    fn input_after_a_silence_of_a_whole_limit_unconfirms_what_is_awaited() {
        let t0 = Instant::now();
        let url = Url::parse("redis://127.0.0.1:1").unwrap();
        let mut c = Cluster::new(url, mio::Token(0), Duration::from_secs(3), Duration::from_secs(1), t0);
        c.link.pretend_up();
        c.heard = t0;
        assert!(!c.heard(t0 + Duration::from_millis(999)));
        let room = Await::Room(ticket("alice", "lobby"));
        assert!(c.publish_awaiting(b"chatloop:room:lobby", b"M n lobby\n{}", room));
        assert!(c.publish_awaiting(b"chatloop:room:lobby", b"M n lobby\n{}", Await::Refresh));
        assert!(c.heard(t0 + Duration::from_millis(1999)), "silent for 1 s");
        let taken = c.unconfirm();
        assert!(matches!(&taken[..], [Await::Room(_)]), "{taken:?}");
        // The replies still come, in order, and are ignored.
        assert!(matches!(c.answered(t0), Some(Await::Ignore)));
        assert!(matches!(c.answered(t0), Some(Await::Refresh)));
    }

    #[test]
    fn a_resume_deadline_is_half_a_limit_after_the_stall_clock_starts_in_redis_time() {
        let t0 = Instant::now();
        let url = Url::parse("redis://127.0.0.1:1").unwrap();
        let ms = Duration::from_millis;
        let mut c = Cluster::new(url, mio::Token(0), Duration::from_secs(3), Duration::from_secs(1), t0);
        c.link.pretend_up();
        // Asked at t0, answered 10 ms later: Redis read 1000.000 s half way between.
        c.clock_read(1000, 0, t0, t0 + ms(10));
        assert_eq!(c.redis_ms(t0 + ms(5)), 1_000_000);
        // Nothing awaited: half a limit from now.
        let now = t0 + ms(1000);
        assert_eq!(c.claim_deadline(now), 1_000_000 + 995 + 500);
        // Replies awaited since `progress`: half a limit from then, so a whole limit (when the
        // link is given up) leaves half a limit for a reply to a script run in time.
        assert!(c.publish(ALL, b"H x"));
        c.progress = t0 + ms(200);
        assert_eq!(c.claim_deadline(now), 1_000_000 + 195 + 500);
    }

    #[test]
    fn nothing_is_queued_or_awaited_while_the_link_is_down() {
        let url = Url::parse("redis://127.0.0.1:1").unwrap();
        let mut c =
            Cluster::new(url, mio::Token(0), Duration::from_secs(3), Duration::from_secs(1), Instant::now());
        assert!(!c.publish(ALL, b"H x"));
        assert!(!c.claim(["a"].into_iter(), || Await::Refresh));
        assert!(!c.release("a"));
        assert!(c.take_waiting().is_empty());
    }
}
