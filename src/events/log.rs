//! The bounded event log: the last `--events-keep` events (and at most `max_bytes` of them),
//! each with its id and its Server-Sent Events frame encoded once.

use super::{Fact, Kind, sse};
use bytes::Bytes;
use std::collections::VecDeque;

/// What an entry costs beyond its frame's bytes: its deque slot and the frame's allocation.
pub const ENTRY_COST: usize = std::mem::size_of::<Entry>() + 32;

/// One event: its id, its type, and its whole SSE frame (`id:`, `event:`, `data:`, blank line).
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: u64,
    pub kind: Kind,
    pub frame: Bytes,
}

/// Where a consumer that last saw an event starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Since {
    /// Every event from this id on is kept (none yet, if it is the next id).
    From(u64),
    /// Some are gone: a `gap` naming the first kept (or the next id, if none is kept), then
    /// on from there.
    Gap(u64),
}

#[derive(Debug)]
pub struct Log {
    entries: VecDeque<Entry>,
    keep: usize,
    max_bytes: usize,
    bytes: usize,
    /// The id the next event gets (one node alone; a cluster's ids come from Redis).
    next: u64,
    /// Events appended since start, and those trimmed.
    pub appended: u64,
    pub trimmed: u64,
    /// Ids are given elsewhere (a cluster's, by Redis), and outlive this process: an id past
    /// the last one here is one this log has yet to hear of, not one from another run.
    pub shared_ids: bool,
}

impl Log {
    /// A log of at most `keep` events and `max_bytes` charged (`ENTRY_COST` each beyond the
    /// frame); ids start at 1.
    pub fn new(keep: usize, max_bytes: usize) -> Log {
        Log {
            entries: VecDeque::new(),
            keep,
            max_bytes,
            bytes: 0,
            next: 1,
            appended: 0,
            trimmed: 0,
            shared_ids: false,
        }
    }

    /// Stamps `fact` with the next id and time `ts` (Unix ms), encodes it once, keeps it and
    /// returns it.
    pub fn append(&mut self, fact: &Fact, ts: u64) -> &Entry {
        let id = self.next;
        self.insert(id, fact.kind(), &fact.data(ts)).expect("the next id")
    }

    /// Keeps an event whose id was given elsewhere (a cluster's, from Redis), encoding it
    /// once. An id not above the last is refused (None): each event once, in one order.
    pub fn insert(&mut self, id: u64, kind: Kind, data: &[u8]) -> Option<&Entry> {
        if id < self.next {
            return None;
        }
        let frame = sse::frame(id, kind.as_str(), data);
        self.bytes += frame.len() + ENTRY_COST;
        self.entries.push_back(Entry { id, kind, frame });
        self.next = id + 1;
        self.appended += 1;
        while self.entries.len() > self.keep.max(1) || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            let e = self.entries.pop_front().expect("not empty");
            self.bytes -= e.frame.len() + ENTRY_COST;
            self.trimmed += 1;
        }
        self.entries.back()
    }

    /// The id the next event will have (one past the last).
    pub fn next_id(&self) -> u64 {
        self.next
    }

    /// Moves the next id on to `id` if it is ahead (a cluster's log read from Redis starts
    /// where the stream is).
    pub fn skip_to(&mut self, id: u64) {
        self.next = self.next.max(id);
    }

    /// The first id still kept (the next id if none is).
    pub fn first_id(&self) -> u64 {
        self.entries.front().map_or(self.next, |e| e.id)
    }

    /// Where a consumer whose last event was `last` starts: after it, if the log still has
    /// everything from there; otherwise a gap. A `last` from the future is a gap too on one
    /// node (it is from another run: what it missed cannot be known); with `shared_ids` it is
    /// where this node has yet to catch up to (it waits there).
    pub fn since(&self, last: u64) -> Since {
        let want = last.saturating_add(1);
        if want > self.next {
            return if self.shared_ids { Since::From(want) } else { Since::Gap(self.next) };
        }
        let first = self.first_id();
        if want < first { Since::Gap(first) } else { Since::From(want) }
    }

    /// The kept events from id `from` on, oldest first.
    pub fn from(&self, from: u64) -> impl Iterator<Item = &Entry> {
        let at = self.entries.partition_point(|e| e.id < from);
        self.entries.range(at..)
    }

    /// Events kept, and their charge in bytes.
    pub fn kept(&self) -> (usize, usize) {
        (self.entries.len(), self.bytes)
    }
}
