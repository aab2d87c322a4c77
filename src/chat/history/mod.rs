//! Room history: each room's recent messages by sequence number, under a per-room count
//! (`--history`) and one byte budget for all rooms (`--history-bytes`).
//!
//! A room's log is a `VecDeque` of the very `Bytes` lines that fan-out already queued, indexed
//! by `seq - first`: no map, no copy. Every room has an epoch, a short random string that
//! changes whenever its history is lost (a new process, a log that expired), so that a client
//! can tell "nothing missed" from "history was reset". A log outlives its room's last member
//! by `--history-ttl` (less when the budget needs it), so that a member who left and comes
//! back finds it. A room gets its log with its
//! first message; until then `joined` names the room's own epoch (`rooms::Room::epoch`), and
//! the log starts in it (`Chat::log_of`).
//!
//! The budget is charged what the allocator really spends (`LOG_COST`, `LINE_COST`, the
//! deque's slots), and past it history is given up in the order `order` keeps, at O(log n)
//! per line or log: logs of rooms that are gone are freed whole, oldest first, so the budget
//! bounds their number too; a room that exists only gives up lines, never its log, because
//! the log carries its numbering (seq and epoch) and a new log would restart it.

mod order;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use hashbrown::HashTable;
use order::Order;
use slab::Slab;
use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A kept line's slot in its log's `VecDeque`, charged per slot of capacity.
const SLOT: usize = std::mem::size_of::<Bytes>();

/// What one kept line costs beyond its bytes and its slot: the 32-byte block `Bytes` allocates
/// for its shared header when fan-out first clones the line, glibc's 8-byte header and
/// rounding to 16 on the line's own buffer, and the deque's earlier buffers left as holes.
/// Measured with `tests::real_cost_of_a_line` (release build, 300,000 lines of 70-130 B,
/// 100 in each of 3,000 logs): RSS grew 61.2 MB, 62 B a line beyond its bytes and slot.
pub const LINE_COST: usize = 64;

/// What one log costs beyond its name's bytes, its slots and its lines, once its room is gone
/// and it alone holds its name and epoch: the boxed `Log` (120 B: a 128 B block), its slab
/// slot (16 B, with the vector's slack ~24), its name-index bucket (4 B and a control byte,
/// at 7/16 to 7/8 load ~8), the `Rc<str>` blocks of its name and epoch (32 each), its entry
/// in `order` (24 B in B-tree nodes about half full: ~50). Measured two ways, release build:
/// `tests::real_cost_of_a_log` (200,000 one-line logs made as the server makes them, rooms
/// gone) gave 293 B; the server itself under a flood (30,000 throwaway ids each joining 19
/// rooms, one line in each, then closing: 570,000 one-line logs; default flags, so 132,177
/// logs kept at the 64 MiB budget) grew RSS
/// 77.5 MB, of which ~5 MB the flood's own (a run with `--history-ttl 0.5`): ~549 B a log
/// against 507 charged with 296 here, so 336: glibc's holes between a room's freed blocks
/// and the log's survivors cost the server about 40 B a log more than a clean heap. While the
/// room exists the log shares its name and epoch, and the charge is ~60 B high: the safe
/// side.
pub const LOG_COST: usize = 336;

pub struct Log {
    pub epoch: Rc<str>,
    name: Rc<str>,
    /// The seq of `lines[0]`.
    first: u64,
    /// The seq the next message gets (1 for a new room).
    next: u64,
    lines: VecDeque<Bytes>,
    /// The lines' bytes plus `LINE_COST` each (their slots are charged by capacity).
    line_bytes: usize,
    /// What the log was last charged (`charge`), and the key `order` filed it under.
    charged: usize,
    /// Since when the room has had no member (the log goes `ttl` after, or first under
    /// pressure); also its key in `order`.
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
    /// An empty log for `name` in `epoch`, this node's own.
    fn new(name: Rc<str>, epoch: Rc<str>) -> Box<Log> {
        Box::new(Log {
            epoch,
            name,
            first: 1,
            next: 1,
            lines: VecDeque::new(),
            line_bytes: 0,
            charged: 0,
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

    /// What the log costs the allocator (see `LOG_COST`).
    fn charge(&self) -> usize {
        LOG_COST + self.name.len() + self.lines.capacity() * SLOT + self.line_bytes
    }

    fn push(&mut self, line: &Bytes) {
        // Most logs hold one line (a room that said one thing): a slot, not the deque's
        // first growth of four (96 B more a log).
        if self.lines.capacity() == 0 {
            self.lines.reserve_exact(1);
        }
        self.lines.push_back(line.clone());
        self.line_bytes += line.len() + LINE_COST;
    }

    fn pop(&mut self) {
        if let Some(l) = self.lines.pop_front() {
            self.first += 1;
            self.line_bytes -= l.len() + LINE_COST;
        }
    }

    /// Replaces the lines (their charge follows).
    fn set_lines(&mut self, lines: VecDeque<Bytes>) {
        self.line_bytes = lines.iter().map(|l| l.len() + LINE_COST).sum();
        self.lines = lines;
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
    /// Boxed, so that a slot is 16 bytes: the slab keeps its peak length, which the budget
    /// bounds (logs of gone rooms) or `--max-rooms` does (the others).
    logs: Slab<Box<Log>>,
    /// Slab keys by room name: 4-byte buckets that hash and compare the name in the log.
    by_name: HashTable<u32>,
    hasher: RandomState,
    /// Which log gives up history first (see `order`).
    order: Order,
    per_room: usize,
    budget: usize,
    ttl: Duration,
    /// What all logs are charged (`Log::charge`).
    bytes: usize,
    /// Lines kept in all logs.
    lines: usize,
    pub counters: Counters,
}

/// Characters in an epoch.
pub const EPOCH_LEN: usize = 8;

/// A fresh epoch: 8 base64url characters (48 random bits).
pub fn new_epoch() -> Rc<str> {
    let s = super::ids::new_secret();
    Rc::from(&super::ids::token_text(&s)[..EPOCH_LEN])
}

impl History {
    pub fn new(per_room: usize, budget: usize, ttl: Duration) -> History {
        History {
            logs: Slab::new(),
            by_name: HashTable::new(),
            hasher: RandomState::new(),
            order: Order::default(),
            per_room,
            budget,
            ttl,
            bytes: 0,
            lines: 0,
            counters: Counters::default(),
        }
    }

    fn find(&self, room: &str) -> Option<usize> {
        let hash = self.hasher.hash_one(room);
        self.by_name.find(hash, |k| *self.logs[*k as usize].name == *room).map(|k| *k as usize)
    }

    /// Room `room`'s log, started (with a new epoch) if it has none. Never sheds: only the
    /// operations that add lines do, so a key found here stays valid until one of them.
    fn key(&mut self, room: &str) -> usize {
        match self.find(room) {
            Some(k) => k,
            None => self.start(Rc::from(room), new_epoch()),
        }
    }

    fn start(&mut self, name: Rc<str>, epoch: Rc<str>) -> usize {
        let hash = self.hasher.hash_one(&*name);
        let key = self.logs.insert(Log::new(name, epoch));
        let (logs, hasher) = (&self.logs, &self.hasher);
        self.by_name.insert_unique(hash, key as u32, |k| hasher.hash_one(&*logs[*k as usize].name));
        let log = &mut self.logs[key];
        log.charged = log.charge();
        self.bytes += log.charged;
        self.order.file(key as u32, log);
        key
    }

    /// Changes log `key` through `f`, keeping its charge, the totals and `order` true.
    fn edit<R>(&mut self, key: usize, f: impl FnOnce(&mut Log) -> R) -> R {
        let log = &mut self.logs[key];
        let was = order::Place::of(log);
        let (charged, lines) = (log.charged, log.lines.len());
        let r = f(log);
        log.charged = log.charge();
        self.bytes = self.bytes - charged + log.charged;
        self.lines = self.lines - lines + log.lines.len();
        self.order.refile(key as u32, was, log);
        r
    }

    /// Forgets log `key` and everything it holds.
    fn free(&mut self, key: usize) {
        let log = &self.logs[key];
        self.order.unfile(key as u32, log);
        self.bytes -= log.charged;
        self.lines -= log.lines.len();
        let hash = self.hasher.hash_one(&*log.name);
        if let Ok(entry) = self.by_name.find_entry(hash, |k| *k as usize == key) {
            entry.remove();
        }
        self.logs.remove(key);
    }

    /// Room `room`'s log, started (with a new epoch) if it has none.
    #[cfg(test)]
    pub fn log(&mut self, room: &str) -> &Log {
        let key = self.key(room);
        &self.logs[key]
    }

    /// The log of a room whose name string the caller holds (the room's own), started if it
    /// has none: a new log shares the name rather than copying it, and starts in `epoch`,
    /// the one the room's members were told while it had no log (`Room::epoch`).
    pub fn open(&mut self, room: &Rc<str>, epoch: &str) -> &Log {
        let key = match self.find(room) {
            Some(k) => k,
            None => self.start(Rc::clone(room), Rc::from(epoch)),
        };
        &self.logs[key]
    }

    pub fn get(&self, room: &str) -> Option<&Log> {
        self.find(room).map(|k| &*self.logs[k])
    }

    /// Gives the next message of `room` its seq, lets `encode` make its line, and keeps the
    /// line (trimming to `--history` and then to the byte budget). Returns the line.
    pub fn append(&mut self, room: &str, encode: impl FnOnce(u64) -> Bytes) -> Bytes {
        let key = self.key(room);
        let line = encode(self.logs[key].next);
        self.keep(key, &line);
        self.shed();
        line
    }

    /// Keeps `line`, numbered `seq` in epoch `epoch` by Redis (a cluster's room message, ours
    /// or another node's). The log follows Redis: another epoch, or a seq past the next one
    /// (messages this node never heard), starts it over from `seq`, so that a replay asked of
    /// it gets a gap rather than a hole; a seq already kept is a repeat and ignored.
    pub fn insert(&mut self, room: &str, epoch: &str, seq: u64, line: &Bytes) {
        let key = self.key(room);
        let fresh = self.edit(key, |log| {
            if *log.epoch != *epoch || !log.shared || seq > log.next {
                log.set_lines(VecDeque::new());
                if *log.epoch != *epoch {
                    log.epoch = Rc::from(epoch);
                }
                log.shared = true;
                (log.first, log.next) = (seq, seq);
            }
            // Heard on the room's channel (or numbered for us): from here on nothing is missed.
            log.current = true;
            seq >= log.next
        });
        if fresh {
            self.keep(key, line);
            self.shed();
        }
    }

    /// The epoch to offer Redis for `room` should it have none (see `cluster::NUMBER`,
    /// `cluster::FETCH`): the log's own while it has numbered nothing, so that what `joined`
    /// said still holds; a fresh one otherwise, since Redis then counts from 1 again (it lost
    /// the room) and those seqs must not reuse an epoch whose seqs meant other messages.
    pub fn offer(&mut self, room: &str) -> Rc<str> {
        let key = self.key(room);
        let log = &self.logs[key];
        if log.latest() == 0 { Rc::clone(&log.epoch) } else { new_epoch() }
    }

    /// Gives `room` an epoch of this node's own if its log follows Redis: a cluster node
    /// that numbers messages itself (Redis is away) must not reuse numbers Redis will give.
    pub fn fork(&mut self, room: &str) {
        let key = self.key(room);
        let log = &mut self.logs[key];
        if log.shared {
            log.shared = false;
            log.current = false;
            log.epoch = new_epoch();
        }
    }

    /// The node stopped hearing `room` (its last local member left): what Redis numbers from
    /// now on passes this log by.
    pub fn stale(&mut self, room: &str) {
        if let Some(k) = self.find(room) {
            self.logs[k].current = false;
        }
    }

    /// The link to Redis went down or came back: every log may have missed messages. Visits
    /// every log, which is fine for an event this rare (not a message or a turn).
    pub fn stale_all(&mut self) {
        for (_, log) in self.logs.iter_mut() {
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
        let per_room = self.per_room;
        let key = self.key(room);
        self.edit(key, |log| {
            let start = latest + 1 - run.len() as u64;
            let same = log.shared && *log.epoch == *epoch;
            let (first, next, mut lines) = if !same || log.next < start {
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
            if *log.epoch != *epoch {
                log.epoch = Rc::from(epoch);
            }
            (log.first, log.next, log.shared, log.current) = (first, next, true, current);
            let drop = lines.len().saturating_sub(per_room);
            lines.drain(..drop);
            lines.shrink_to_fit();
            log.first = log.next - lines.len() as u64;
            log.set_lines(lines);
        });
        self.shed();
    }

    /// Appends `line`, log `key`'s next message, and trims to `--history`.
    fn keep(&mut self, key: usize, line: &Bytes) {
        let per_room = self.per_room;
        self.edit(key, |log| {
            log.next += 1;
            if per_room == 0 {
                log.first = log.next;
                return;
            }
            log.push(line);
            while log.lines.len() > per_room {
                log.pop();
            }
        });
    }

    /// Down to the byte budget, in `order`'s order: each step frees a log or drops at least
    /// one line, at O(log n). What it cannot shed is the fixed cost of existing rooms' logs,
    /// which `--max-rooms` bounds.
    fn shed(&mut self) {
        while self.bytes > self.budget {
            if let Some((_, key)) = self.order.oldest_idle() {
                self.free(key as usize);
                continue;
            }
            let Some((key, runner_up)) = self.order.largest_live() else { return };
            let over = self.bytes - self.budget;
            self.edit(key as usize, |log| {
                let start = log.charge();
                // Oldest first, until the budget is met or another log is the largest.
                while !log.lines.is_empty() {
                    log.pop();
                    if start - log.charge() >= over || log.charge() < runner_up {
                        break;
                    }
                }
                // Slots of lines long gone are charged too: give them back.
                if log.lines.len() <= log.lines.capacity() / 4 {
                    log.lines.shrink_to(log.lines.len() * 2);
                }
            });
        }
    }

    /// Room `room` lost its last member (`Some(now)`) or has one again (`None`).
    pub fn set_idle(&mut self, room: &str, at: Option<Instant>) {
        if let Some(key) = self.find(room) {
            self.edit(key, |log| log.idle_since = at);
        }
    }

    /// Whether some log waits for its TTL (the loop must wake to expire it).
    pub fn any_idle(&self) -> bool {
        self.order.oldest_idle().is_some()
    }

    /// Forgets the logs of rooms idle for longer than the TTL: only those, found in order.
    pub fn expire(&mut self, now: Instant) {
        while let Some((since, key)) = self.order.oldest_idle() {
            if now < since + self.ttl {
                return;
            }
            self.free(key as usize);
        }
    }

    /// Messages kept and bytes charged, for `/metrics`.
    pub fn kept(&self) -> (usize, usize) {
        (self.lines, self.bytes)
    }

    /// Logs kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.logs.len()
    }

    /// Gives the tables' slack back; visits every log, so only for an idle server.
    pub fn shrink(&mut self) {
        self.logs.shrink_to_fit();
        let (logs, hasher) = (&self.logs, &self.hasher);
        self.by_name.shrink_to_fit(|k| hasher.hash_one(&*logs[*k as usize].name));
    }
}
