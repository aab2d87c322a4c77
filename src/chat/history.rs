//! Room history: each room's recent messages by sequence number, under a per-room count
//! (`--history`) and one byte budget for all rooms (`--history-bytes`).
//!
//! A room's log is a `VecDeque` of the very `Bytes` lines that fan-out already queued, indexed
//! by `seq - first`: no map, no copy. Every room has an epoch, a short random string that
//! changes whenever its history is lost (a new process, a log that expired), so that a client
//! can tell "nothing missed" from "history was reset". A log outlives its room's last member
//! by `--history-ttl`, so that a member who blips back finds it. A room gets its log with its
//! first message; until then `joined` names the room's own epoch (`rooms::Room::epoch`), and
//! the log starts in it (`Chat::log_of`).

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// What one kept line costs beyond its bytes: its `VecDeque` slot (a `Bytes`).
const LINE_COST: usize = std::mem::size_of::<Bytes>();

pub struct Log {
    pub epoch: Rc<str>,
    /// The seq of `lines[0]`.
    first: u64,
    /// The seq the next message gets (1 for a new room).
    next: u64,
    lines: VecDeque<Bytes>,
    bytes: usize,
    /// Since when the room has had no member (the log goes `ttl` after).
    idle_since: Option<Instant>,
    /// The epoch and seqs are Redis's (a cluster numbers room messages there); false for an
    /// epoch of this node's own.
    shared: bool,
    /// A cluster node has heard every message of the room from `first` on, up to Redis's
    /// latest: it has listened to the room's channel since before its latest message, or
    /// since it read the room from Redis. Until then the log may lack messages numbered while
    /// the node was not listening, and a join must ask Redis (see `chat::fetch`).
    current: bool,
}

impl Log {
    /// An empty log in an epoch of this node's own.
    fn new() -> Box<Log> {
        Box::new(Log {
            epoch: new_epoch(),
            first: 1,
            next: 1,
            lines: VecDeque::new(),
            bytes: 0,
            idle_since: None,
            shared: false,
            current: false,
        })
    }

    /// The latest message's seq (0: none yet).
    pub fn latest(&self) -> u64 {
        self.next - 1
    }

    /// The seq the next message gets.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The oldest seq still kept, or `next` when nothing is kept.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Whether the log follows Redis and has missed nothing since (see the field).
    pub fn current(&self) -> bool {
        self.current
    }

    /// Message `seq`, if kept.
    pub fn line(&self, seq: u64) -> Option<&Bytes> {
        self.lines.get(seq.checked_sub(self.first)? as usize)
    }

    fn pop(&mut self) -> usize {
        match self.lines.pop_front() {
            Some(l) => {
                self.first += 1;
                let cost = l.len() + LINE_COST;
                self.bytes -= cost;
                cost
            }
            None => 0,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub gaps: u64,
    pub replayed: u64,
    /// Joins answered from a read of Redis's history (a cluster).
    pub fetched: u64,
}

pub struct History {
    /// Boxed: a map sized for N rooms has up to 2N slots, and a slot with the 96-byte `Log`
    /// inline cost every room about 230 bytes at 1,000 rooms, where a pointer costs 50.
    logs: HashMap<Rc<str>, Box<Log>>,
    per_room: usize,
    budget: usize,
    ttl: Duration,
    /// Bytes kept in all logs, with `LINE_COST` per line.
    bytes: usize,
    /// Logs waiting for their TTL.
    idle: usize,
    pub counters: Counters,
}

/// A fresh epoch: 8 base64url characters (48 random bits).
pub fn new_epoch() -> Rc<str> {
    let s = super::ids::new_secret();
    Rc::from(&super::ids::token_text(&s)[..8])
}

impl History {
    pub fn new(per_room: usize, budget: usize, ttl: Duration) -> History {
        History {
            logs: HashMap::new(),
            per_room,
            budget,
            ttl,
            bytes: 0,
            idle: 0,
            counters: Counters::default(),
        }
    }

    /// Room `room`'s log, started (with a new epoch) if it has none.
    pub fn log(&mut self, room: &str) -> &mut Log {
        if !self.logs.contains_key(room) {
            self.logs.insert(Rc::from(room), Log::new());
        }
        self.logs.get_mut(room).expect("inserted")
    }

    /// `log`, for a room whose name string the caller holds (the room's own): a new log
    /// shares it rather than copying it, one block less for every room, and starts in
    /// `epoch`, the one the room's members were told while it had no log (`Room::epoch`).
    pub fn open(&mut self, room: &Rc<str>, epoch: &Rc<str>) -> &mut Log {
        if !self.logs.contains_key(&**room) {
            let mut log = Log::new();
            log.epoch = Rc::clone(epoch);
            self.logs.insert(Rc::clone(room), log);
        }
        self.logs.get_mut(&**room).expect("opened")
    }

    pub fn get(&self, room: &str) -> Option<&Log> {
        self.logs.get(room).map(|l| &**l)
    }

    /// Gives the next message of `room` its seq, lets `encode` make its line, and keeps the
    /// line (trimming to `--history` and then to the byte budget). Returns the line.
    pub fn append(&mut self, room: &str, encode: impl FnOnce(u64) -> Bytes) -> Bytes {
        let line = encode(self.log(room).next);
        self.keep(room, &line);
        line
    }

    /// Keeps `line`, numbered `seq` in epoch `epoch` by Redis (a cluster's room message, ours
    /// or another node's). The log follows Redis: another epoch, or a seq past the next one
    /// (messages this node never heard), starts it over from `seq`, so that a replay asked of
    /// it gets a gap rather than a hole; a seq already kept is a repeat and ignored.
    pub fn insert(&mut self, room: &str, epoch: &str, seq: u64, line: &Bytes) {
        let log = self.log(room);
        let mut freed = 0;
        if *log.epoch != *epoch || !log.shared || seq > log.next {
            freed = std::mem::take(&mut log.bytes);
            log.lines.clear();
            if *log.epoch != *epoch {
                log.epoch = Rc::from(epoch);
            }
            log.shared = true;
            (log.first, log.next) = (seq, seq);
        }
        // Heard on the room's channel (or numbered for us): from here on nothing is missed.
        log.current = true;
        let fresh = seq >= log.next;
        self.bytes -= freed;
        if fresh {
            self.keep(room, line);
        }
    }

    /// The epoch to offer Redis for `room` should it have none (see `cluster::NUMBER`,
    /// `cluster::FETCH`): the log's own while it has numbered nothing, so that what `joined`
    /// said still holds; a fresh one otherwise, since Redis then counts from 1 again (it lost
    /// the room) and those seqs must not reuse an epoch whose seqs meant other messages.
    pub fn offer(&mut self, room: &str) -> Rc<str> {
        let log = self.log(room);
        if log.latest() == 0 { Rc::clone(&log.epoch) } else { new_epoch() }
    }

    /// Gives `room` an epoch of this node's own if its log follows Redis: a cluster node
    /// that numbers messages itself (Redis is away) must not reuse numbers Redis will give.
    pub fn fork(&mut self, room: &str) {
        let log = self.log(room);
        if log.shared {
            log.shared = false;
            log.current = false;
            log.epoch = new_epoch();
        }
    }

    /// The node stopped hearing `room` (its last local member left): what Redis numbers from
    /// now on passes this log by.
    pub fn stale(&mut self, room: &str) {
        if let Some(log) = self.logs.get_mut(room) {
            log.current = false;
        }
    }

    /// The link to Redis went down or came back: every log may have missed messages.
    pub fn stale_all(&mut self) {
        for log in self.logs.values_mut() {
            log.current = false;
        }
    }

    /// Merges what Redis keeps of `room`: `run`, its messages up to `latest` (the room's
    /// latest seq), in `epoch`. Messages the log heard live while Redis was being asked stay;
    /// the log becomes Redis's run joined with them, or the run alone if the log is of
    /// another epoch or ends before the run begins (a hole). `current`: the node still hears
    /// the room, so from now on it misses nothing. The run must be consecutive seqs ending at
    /// `latest` (the caller checks).
    pub fn merge(&mut self, room: &str, epoch: &str, latest: u64, run: Vec<Bytes>, current: bool) {
        let (per_room, budget) = (self.per_room, self.budget);
        let log = self.log(room);
        let start = latest + 1 - run.len() as u64;
        let same = log.shared && *log.epoch == *epoch;
        let (first, next, lines) = if !same || log.next < start {
            (start, latest + 1, run.into_iter().collect())
        } else if log.first > latest + 1 {
            // Newer than Redis's latest: cannot happen with one Redis; keep what was heard.
            (log.first, log.next, std::mem::take(&mut log.lines))
        } else {
            // Overlapping or adjacent: Redis's older ones, the log, then Redis's newer ones.
            let mut lines: VecDeque<Bytes> = VecDeque::new();
            let older = log.first.saturating_sub(start).min(run.len() as u64) as usize;
            lines.extend(run[..older].iter().cloned());
            lines.extend(std::mem::take(&mut log.lines));
            let newer = (log.next.saturating_sub(start) as usize).min(run.len());
            lines.extend(run[newer..].iter().cloned());
            (start.min(log.first), (latest + 1).max(log.next), lines)
        };
        let old = log.bytes;
        if *log.epoch != *epoch {
            log.epoch = Rc::from(epoch);
        }
        (log.first, log.next, log.lines, log.shared, log.current) = (first, next, lines, true, current);
        if per_room == 0 {
            log.lines.clear();
            log.first = log.next;
        }
        while log.lines.len() > per_room {
            log.lines.pop_front();
            log.first += 1;
        }
        log.bytes = log.lines.iter().map(|l| l.len() + LINE_COST).sum();
        let new = log.bytes;
        self.bytes = self.bytes - old + new;
        if self.bytes > budget {
            self.shed();
        }
    }

    /// Appends `line`, the log's next message, and trims.
    fn keep(&mut self, room: &str, line: &Bytes) {
        let per_room = self.per_room;
        let log = self.log(room);
        log.next += 1;
        if per_room == 0 {
            log.first = log.next;
            return;
        }
        log.lines.push_back(line.clone());
        let cost = line.len() + LINE_COST;
        log.bytes += cost;
        let mut freed = 0;
        while log.lines.len() > per_room {
            freed += log.pop();
        }
        self.bytes = self.bytes + cost - freed;
        if self.bytes > self.budget {
            self.shed();
        }
    }

    /// Over the byte budget: the oldest messages of the largest logs go first, down to 7/8
    /// of the budget, so that a full budget costs one scan per many messages, not per message.
    fn shed(&mut self) {
        let goal = self.budget - self.budget / 8;
        while self.bytes > goal {
            let Some(log) = self.logs.values_mut().max_by_key(|l| l.bytes) else { return };
            if log.lines.is_empty() {
                return;
            }
            let target = log.bytes / 2;
            while log.bytes > target && self.bytes > goal {
                self.bytes -= log.pop();
            }
        }
    }

    /// Room `room` lost its last member (`Some(now)`) or has one again (`None`).
    pub fn set_idle(&mut self, room: &str, at: Option<Instant>) {
        if let Some(log) = self.logs.get_mut(room) {
            self.idle = self.idle + at.is_some() as usize - log.idle_since.is_some() as usize;
            log.idle_since = at;
        }
    }

    /// Whether some log waits for its TTL (the loop must wake to expire it).
    pub fn any_idle(&self) -> bool {
        self.idle > 0
    }

    /// Forgets the logs of rooms idle for longer than the TTL.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        let (mut freed, mut gone) = (0, 0);
        self.logs.retain(|_, l| {
            let keep = l.idle_since.is_none_or(|t| now < t + ttl);
            if !keep {
                freed += l.bytes;
                gone += 1;
            }
            keep
        });
        self.bytes -= freed;
        self.idle -= gone;
    }

    /// Messages and bytes kept, for `/metrics`.
    pub fn kept(&self) -> (usize, usize) {
        (self.logs.values().map(|l| l.lines.len()).sum(), self.bytes)
    }

    pub fn shrink(&mut self) {
        self.logs.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, size: usize) -> Bytes {
        Bytes::from(format!("{seq:0size$}"))
    }

    #[test]
    fn seqs_start_at_one_and_only_the_last_n_are_kept() {
        let mut h = History::new(3, usize::MAX, Duration::from_secs(1));
        assert_eq!(h.log("r").latest(), 0);
        for _ in 0..5 {
            h.append("r", |s| line(s, 4));
        }
        let log = h.get("r").unwrap();
        assert_eq!((log.first(), log.latest(), log.next()), (3, 5, 6));
        assert_eq!(log.line(2), None);
        assert_eq!(log.line(3).map(|b| &b[..]), Some(&b"0003"[..]));
        assert_eq!(log.line(6), None);
        assert_eq!(h.kept(), (3, 3 * (4 + LINE_COST)));
    }

    #[test]
    fn zero_history_still_numbers_messages() {
        let mut h = History::new(0, usize::MAX, Duration::from_secs(1));
        h.append("r", |s| line(s, 1));
        h.append("r", |s| line(s, 1));
        let log = h.get("r").unwrap();
        assert_eq!((log.first(), log.latest(), log.line(2)), (3, 2, None));
        assert_eq!(h.kept(), (0, 0));
    }

    #[test]
    fn over_the_byte_budget_the_largest_room_gives_up_its_oldest_first() {
        let per = 100 + LINE_COST;
        let mut h = History::new(1000, 10 * per, Duration::from_secs(1));
        for _ in 0..8 {
            h.append("big", |s| line(s, 100));
        }
        for _ in 0..2 {
            h.append("small", |s| line(s, 100));
        }
        assert_eq!(h.kept().1, 10 * per);
        h.append("small", |s| line(s, 100));
        let (big, small) = (h.get("big").unwrap(), h.get("small").unwrap());
        assert!(h.kept().1 <= 10 * per - 10 * per / 8, "{:?}", h.kept());
        assert_eq!(small.first(), 1, "the small room kept everything");
        assert!(big.first() > 1 && big.latest() == 8, "the big room lost its oldest: {}", big.first());
    }

    #[test]
    fn a_cluster_log_follows_redis_seqs_and_epochs_and_forks_when_numbering_alone() {
        let mut h = History::new(10, usize::MAX, Duration::from_secs(1));
        h.append("r", |s| line(s, 1)); // before Redis: this node's own epoch
        h.insert("r", "RedisEp1", 7, &line(7, 1));
        let log = h.get("r").unwrap();
        assert_eq!(
            (&*log.epoch, log.first(), log.latest()),
            ("RedisEp1", 7, 7),
            "Redis's epoch, from its seq"
        );
        h.insert("r", "RedisEp1", 8, &line(8, 1));
        h.insert("r", "RedisEp1", 8, &line(8, 1)); // a repeat
        h.insert("r", "RedisEp1", 11, &line(11, 1)); // 9 and 10 never heard here
        let log = h.get("r").unwrap();
        assert_eq!((log.first(), log.latest(), log.line(8)), (11, 11, None), "a hole starts the log over");
        assert_eq!(h.kept(), (1, 2 + LINE_COST));
        h.fork("r"); // Redis is away: numbered here, in an epoch of our own
        let line12 = h.append("r", |s| line(s, 2));
        let log = h.get("r").unwrap();
        assert_ne!(&*log.epoch, "RedisEp1");
        assert_eq!((&line12[..], log.latest()), (&b"12"[..], 12));
        h.insert("r", "RedisEp1", 12, &line(12, 1)); // Redis is back: its epoch again
        assert_eq!((&*h.get("r").unwrap().epoch, h.get("r").unwrap().first()), ("RedisEp1", 12));
    }

    #[test]
    fn a_merge_joins_redis_run_with_what_was_heard_meanwhile_or_replaces_a_stale_log() {
        let run = |from: u64, to: u64| (from..=to).map(|s| line(s, 2)).collect::<Vec<_>>();
        let seqs = |h: &History| {
            let log = h.get("r").unwrap();
            (log.first()..log.next()).map(|s| log.line(s).map(|l| l.to_vec())).collect::<Vec<_>>()
        };
        let mut h = History::new(10, usize::MAX, Duration::from_secs(1));
        h.append("r", |s| line(s, 2)); // an epoch of this node's own: replaced
        assert!(!h.get("r").unwrap().current());
        h.insert("r", "E1", 9, &line(9, 2)); // heard live while Redis was asked
        h.insert("r", "E1", 10, &line(10, 2));
        h.merge("r", "E1", 9, run(4, 9), true);
        let log = h.get("r").unwrap();
        assert_eq!((&*log.epoch, log.first(), log.latest(), log.current()), ("E1", 4, 10, true));
        assert_eq!(seqs(&h), run(4, 10).into_iter().map(|l| Some(l.to_vec())).collect::<Vec<_>>());
        assert_eq!(h.kept(), (7, 7 * (2 + LINE_COST)));
        // A stale log (it stopped hearing the room at 10; Redis is at 14): replaced, no hole.
        h.stale("r");
        h.merge("r", "E1", 14, run(12, 14), true);
        let log = h.get("r").unwrap();
        assert_eq!((log.first(), log.latest()), (12, 14));
        assert_eq!(h.kept(), (3, 3 * (2 + LINE_COST)));
        // Only the epoch and latest (a plain join, or Redis kept nothing): an empty log there.
        h.merge("r", "E2", 30, Vec::new(), true);
        let log = h.get("r").unwrap();
        assert_eq!((&*log.epoch, log.first(), log.next()), ("E2", 31, 31));
        assert_eq!(h.kept(), (0, 0));
        // Capped to --history like any log.
        h.merge("r", "E2", 50, run(31, 50), true);
        assert_eq!((h.get("r").unwrap().first(), h.kept().0), (41, 10));
        h.stale_all();
        assert!(!h.get("r").unwrap().current());
    }

    #[test]
    fn a_log_outlives_its_rooms_last_member_by_the_ttl_then_a_new_epoch_starts() {
        let t0 = Instant::now();
        let mut h = History::new(10, usize::MAX, Duration::from_secs(300));
        h.append("r", |s| line(s, 1));
        let epoch = Rc::clone(&h.get("r").unwrap().epoch);
        h.set_idle("r", Some(t0));
        h.expire(t0 + Duration::from_secs(299));
        assert_eq!(h.get("r").unwrap().latest(), 1);
        h.expire(t0 + Duration::from_secs(300));
        assert!(h.get("r").is_none());
        assert_eq!(h.kept(), (0, 0));
        assert_ne!(h.log("r").epoch, epoch);
        assert_eq!(h.log("r").latest(), 0);
    }
}
