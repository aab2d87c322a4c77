//! The event stream's data (issue 25): what happened in the chat, as events with increasing
//! ids, kept in a bounded log and encoded once as Server-Sent Events.
//!
//! Chat never sees a stream consumer: it records facts (`Fact`) into a `Queue`, which the
//! server drains once a turn (`Log::append` stamps each with an id and the turn's time and
//! encodes it once, as a shared `Bytes` every consumer's outbox holds by reference). A
//! consumer is a cursor into the log, so a live one and one replaying after `Last-Event-ID`
//! are served by the same code (`server/events.rs`).
//!
//! Types: `online`, `offline`, `join`, `leave`, `message`, `moderation`; `gap` is not
//! recorded, it is what a consumer gets when the log no longer reaches its cursor.

mod log;
mod sse;

pub use log::{ENTRY_COST, Entry, Log, Since};
pub use sse::{KEEPALIVE_LINE, gap, retry};

use bytes::Bytes;
use std::rc::Rc;

/// An event's type (`event:` and the data's `"type"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Online,
    Offline,
    Join,
    Leave,
    Message,
    Moderation,
}

impl Kind {
    pub const ALL: [Kind; 6] =
        [Kind::Online, Kind::Offline, Kind::Join, Kind::Leave, Kind::Message, Kind::Moderation];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Online => "online",
            Kind::Offline => "offline",
            Kind::Join => "join",
            Kind::Leave => "leave",
            Kind::Message => "message",
            Kind::Moderation => "moderation",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// This kind's bit in a `Types` mask.
    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// Which kinds a consumer wants (`?types=a,b`), as one bit per `Kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Types(u8);

impl Types {
    pub const ALL: Types = Types(0b11_1111);

    /// `?types=` as given: a comma-separated list of kinds, at least one; an unknown name is
    /// an error naming it. None (no `types` in the query): every kind.
    pub fn parse(list: Option<&str>) -> Result<Types, String> {
        let Some(list) = list else { return Ok(Types::ALL) };
        let mut mask = 0;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match Kind::parse(name) {
                Some(k) => mask |= k.bit(),
                None => {
                    let name: String = name.chars().take(40).collect();
                    return Err(format!(
                        "types: unknown event type {name:?} (online, offline, join, leave, message, moderation)"
                    ));
                }
            }
        }
        if mask == 0 {
            return Err("types: name at least one event type".into());
        }
        Ok(Types(mask))
    }

    pub fn has(self, k: Kind) -> bool {
        self.0 & k.bit() != 0
    }
}

/// Something that happened, as chat records it (the server stamps id and time).
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    /// A user's first connection opened, or it came back after its grace had ended.
    Online(Rc<str>),
    /// A user's last connection is gone and its grace (if any) has ended.
    Offline(Rc<str>),
    /// `id` joined or left `room` (room, id).
    Join(Rc<str>, Rc<str>),
    Leave(Rc<str>, Rc<str>),
    /// A room line (members' or system), as its members get it: it names its type, room and
    /// time already, so it is the event's data as it is.
    Message(Bytes),
    /// A moderation action: its fields (an object: `"action"`, `"id"`, ...), to which the
    /// type and the time are added.
    Moderation(serde_json::Map<String, serde_json::Value>),
}

impl Fact {
    pub fn kind(&self) -> Kind {
        match self {
            Fact::Online(_) => Kind::Online,
            Fact::Offline(_) => Kind::Offline,
            Fact::Join(..) => Kind::Join,
            Fact::Leave(..) => Kind::Leave,
            Fact::Message(_) => Kind::Message,
            Fact::Moderation(_) => Kind::Moderation,
        }
    }

    /// The event's `data:` (one JSON object, no newline), stamped `ts` (Unix ms): its type
    /// first, then what it is about, then the time.
    pub fn data(&self, ts: u64) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct About<'a> {
            r#type: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            room: Option<&'a str>,
            id: &'a str,
            ts: u64,
        }
        let t = self.kind().as_str();
        let about = match self {
            Fact::Online(id) | Fact::Offline(id) => About { r#type: t, room: None, id, ts },
            Fact::Join(room, id) | Fact::Leave(room, id) => About { r#type: t, room: Some(room), id, ts },
            Fact::Message(line) => return line.to_vec(),
            Fact::Moderation(fields) => {
                let mut b = format!("{{\"type\":\"{t}\"").into_bytes();
                for (k, v) in fields.iter().filter(|(k, _)| *k != "type" && *k != "ts") {
                    b.push(b',');
                    serde_json::to_writer(&mut b, k).expect("serializable");
                    b.push(b':');
                    serde_json::to_writer(&mut b, v).expect("serializable");
                }
                b.extend_from_slice(format!(",\"ts\":{ts}}}").as_bytes());
                return b;
            }
        };
        serde_json::to_vec(&about).expect("serializable")
    }
}

/// What the stream's consumers met, for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Streams opened, consumers closed as slow, and gap events sent.
    pub opened: u64,
    pub slow: u64,
    pub gaps: u64,
    /// In a cluster: events dropped because the link was down for more than `--events-keep`
    /// of them.
    pub dropped: u64,
}

/// The stream's numbers for `/metrics`, read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    /// Open streams; events appended since start; events kept and their charge in bytes.
    pub consumers: usize,
    pub appended: u64,
    pub kept: usize,
    pub bytes: usize,
    pub counters: Counters,
}

/// Where chat records facts; the server drains it once a turn. Off (records nothing, costs
/// one branch) unless the server serves the stream (`--api-key`).
#[derive(Debug, Default)]
pub struct Queue {
    on: bool,
    facts: Vec<Fact>,
}

impl Queue {
    pub fn set_on(&mut self, on: bool) {
        self.on = on;
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Records the fact `make` builds, if the stream is on (so nothing is built otherwise).
    pub fn record(&mut self, make: impl FnOnce() -> Fact) {
        if self.on {
            self.facts.push(make());
        }
    }

    /// This turn's facts, in the order they happened; the queue keeps its capacity, so a busy
    /// stream does not allocate a new one every turn.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Fact> {
        self.facts.drain(..)
    }

    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }
}

#[cfg(test)]
mod tests;
