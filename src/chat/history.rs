//! Room history: each room's recent messages by sequence number, under a per-room count
//! (`--history`) and one byte budget for all rooms (`--history-bytes`).
//!
//! A room's log is a `VecDeque` of the very `Bytes` lines that fan-out already queued, indexed
//! by `seq - first`: no map, no copy. Every room has an epoch, a short random string that
//! changes whenever its history is lost (a new process, a log that expired), so that a client
//! can tell "nothing missed" from "history was reset". A log outlives its room's last member
//! by `--history-ttl`, so that a member who blips back finds it.

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
}

impl Log {
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
}

pub struct History {
    logs: HashMap<Rc<str>, Log>,
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
fn new_epoch() -> Rc<str> {
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
            let log = Log {
                epoch: new_epoch(),
                first: 1,
                next: 1,
                lines: VecDeque::new(),
                bytes: 0,
                idle_since: None,
                shared: false,
            };
            self.logs.insert(Rc::from(room), log);
        }
        self.logs.get_mut(room).expect("inserted")
    }

    pub fn get(&self, room: &str) -> Option<&Log> {
        self.logs.get(room)
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
        let fresh = seq >= log.next;
        self.bytes -= freed;
        if fresh {
            self.keep(room, line);
        }
    }

    /// Gives `room` an epoch of this node's own if its log follows Redis: a cluster node
    /// that numbers messages itself (Redis is away) must not reuse numbers Redis will give.
    pub fn fork(&mut self, room: &str) {
        let log = self.log(room);
        if log.shared {
            log.shared = false;
            log.epoch = new_epoch();
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
