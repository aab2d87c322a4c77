//! The order in which history is given up past `--history-bytes`, kept as two ordered sets
//! so that finding the next victim is O(log n) rather than a scan of every log.
//!
//! Logs of rooms that no longer exist (`idle`, by when the room went) go first and whole:
//! their only readers are users who left and might rejoin, and freeing the log frees its
//! fixed cost too, so the budget bounds how many such logs there are. This is an early TTL:
//! the oldest goes first, as it would at its TTL, and `expire` walks the same set. Only when
//! no such log is left do rooms that exist give up lines, oldest first from the largest
//! (`live`, by charged size), so one busy room cannot starve many quiet ones of their
//! history. Size rather than age among live rooms because a flood of new rooms is all new
//! lines: by age, it would push out every established room's history first.
//!
//! An entry is the log's slab key and the key it was filed under, which the log keeps
//! (`Log::idle_since`, `Log::charged`): the owner removes an entry before it changes either
//! and files it again after (`History::edit`), so no entry is ever stale.

use super::Log;
use std::collections::BTreeSet;
use std::time::Instant;

#[derive(Default)]
pub(super) struct Order {
    idle: BTreeSet<(Instant, u32)>,
    /// Logs of existing rooms with at least one line: those are the ones a shed can shrink.
    live: BTreeSet<(usize, u32)>,
}

/// Where a log is filed: what `Order` keys it by.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    Idle(Instant),
    Live(usize),
    /// A live log with no line: nothing to shed.
    Nowhere,
}

impl Place {
    pub fn of(log: &Log) -> Place {
        match log.idle_since {
            Some(t) => Place::Idle(t),
            None if !log.lines.is_empty() => Place::Live(log.charged),
            None => Place::Nowhere,
        }
    }
}

impl Order {
    pub fn file(&mut self, key: u32, log: &Log) {
        match Place::of(log) {
            Place::Idle(t) => {
                self.idle.insert((t, key));
            }
            Place::Live(c) => {
                self.live.insert((c, key));
            }
            Place::Nowhere => {}
        }
    }

    pub fn unfile(&mut self, key: u32, log: &Log) {
        self.remove(key, Place::of(log));
    }

    fn remove(&mut self, key: u32, place: Place) {
        match place {
            Place::Idle(t) => {
                self.idle.remove(&(t, key));
            }
            Place::Live(c) => {
                self.live.remove(&(c, key));
            }
            Place::Nowhere => {}
        }
    }

    /// Files log `key` again after a change, if it moved from `was`: a full log whose new
    /// line is as long as the one it pushed out (most of a busy room's lines) stays put.
    pub fn refile(&mut self, key: u32, was: Place, log: &Log) {
        if Place::of(log) != was {
            self.remove(key, was);
            self.file(key, log);
        }
    }

    /// The log of the room that has been gone longest, and since when.
    pub fn oldest_idle(&self) -> Option<(Instant, u32)> {
        self.idle.first().copied()
    }

    /// Entries (idle, live), for tests.
    #[cfg(test)]
    pub fn len(&self) -> (usize, usize) {
        (self.idle.len(), self.live.len())
    }

    /// The largest log of an existing room, and the charge of the one after it.
    pub fn largest_live(&self) -> Option<(u32, usize)> {
        let mut top = self.live.iter().rev();
        let (_, key) = *top.next()?;
        Some((key, top.next().map_or(0, |(c, _)| *c)))
    }
}
