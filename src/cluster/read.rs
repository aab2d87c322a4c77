//! The backend API's reads of a room's history in a cluster (`GET /api/history`, and a room's
//! `seq` and `epoch` for `GET /api/rooms/NAME`): Redis keeps the cluster's copy, which a node
//! with no member in the room does not mirror, so the API reads it there (`READ`), as a join
//! does (`FETCH`), and answers when the reply comes (`Await::Read`).

use super::scripts::room_keys;
use super::{Await, Cluster};
use crate::protocol::line_seq;
use crate::redis::frame_number;
use bytes::Bytes;
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};
use std::rc::Rc;

/// What a backend asked of a room's history, owned until Redis answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub room: Rc<str>,
    /// The lines after this seq, in `epoch` (None: the room's).
    pub since: u64,
    pub epoch: Option<Rc<str>>,
    /// Lines wanted at most (0: only the room's epoch and latest seq).
    pub limit: usize,
    /// `GET /api/rooms/NAME`: its members listed at most; None for `GET /api/history`.
    pub members: Option<usize>,
}

/// Reads a room's history for the API: {epoch ("" if Redis has none for the room: it was
/// never numbered, or is gone), latest seq, how many lines the list keeps, lines}. The lines
/// are at most ARGV[3] of the kept ones, oldest first, from seq ARGV[1] + 1 (from the first
/// kept if ARGV[2] is neither empty nor the room's epoch, or if ARGV[1] + 1 is no longer
/// kept). The list ends at the latest seq (`NUMBER` appends in the script that counts), so
/// its first line is the latest seq + 1 - its length. Writes nothing. KEYS as for `NUMBER`.
pub const READ: &[u8] = b"local e = redis.call('GET', KEYS[2]) \
if not e then return {'', 0, 0, {}} end \
local c = tonumber(redis.call('GET', KEYS[1]) or '0') \
local n = redis.call('LLEN', KEYS[3]) \
local first = c - n + 1 \
local from = tonumber(ARGV[1]) + 1 \
if (ARGV[2] ~= '' and ARGV[2] ~= e) or from < first then from = first end \
local k = tonumber(ARGV[3]) \
local lines = {} \
if k > 0 and from <= c then lines = redis.call('LRANGE', KEYS[3], from - first, from - first + k - 1) end \
return {e, c, n, lines}";

/// Redis's copy of a room's history, as `READ` answers.
#[derive(Debug, PartialEq, Eq)]
pub struct Shared {
    /// Empty if Redis has no history for the room.
    pub epoch: String,
    pub latest: u64,
    /// The first seq still kept (`latest + 1` when none is).
    pub first: u64,
    /// Consecutive messages from the seq the read starts at.
    pub lines: Vec<Bytes>,
}

impl Shared {
    /// A `READ` reply; None for anything else, or lines that are not consecutive messages
    /// within what the list keeps (not trusted).
    pub fn of(frame: &BytesFrame) -> Option<Shared> {
        let BytesFrame::Array { data, .. } = frame else { return None };
        let [epoch, latest, kept, BytesFrame::Array { data: lines, .. }] = &data[..] else { return None };
        let latest = u64::try_from(frame_number(latest)?).ok()?;
        let first = (latest + 1).checked_sub(u64::try_from(frame_number(kept)?).ok()?)?;
        let lines = lines.iter().map(|l| match l {
            BytesFrame::BlobString { data, .. } => Some(data.clone()),
            _ => None,
        });
        let lines = lines.collect::<Option<Vec<Bytes>>>()?;
        let start = lines.first().map_or(Some(first), |l| line_seq(l))?;
        let run = lines.iter().zip(start..).all(|(l, seq)| line_seq(l) == Some(seq));
        let within = start >= first && start + lines.len() as u64 <= latest + 1;
        let epoch = epoch.as_str()?.to_string();
        (run && within).then_some(Shared { epoch, latest, first, lines })
    }
}

impl Cluster {
    /// Asks Redis for what `read` wants of its room (see `READ`), answered to the API's
    /// connection `token` of `generation`; false if the link cannot take it now.
    pub fn read(&mut self, token: usize, generation: u32, read: Box<Read>) -> bool {
        let keys = room_keys(&read.room);
        let (since, limit) = (read.since.to_string(), read.limit.to_string());
        let epoch = read.epoch.as_deref().unwrap_or("");
        let mut args: Vec<&[u8]> = vec![b"EVAL", READ, b"3"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        args.extend([since.as_bytes(), epoch.as_bytes(), limit.as_bytes()]);
        if !self.link.send(&args) {
            return false;
        }
        self.awaiting(Await::Read { token, generation, read });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(epoch: &str, latest: i64, kept: i64, lines: &[u64]) -> BytesFrame {
        let line = |s: &u64| BytesFrame::BlobString {
            data: Bytes::from(format!(r#"{{"type":"message","room":"r","seq":{s},"text":"x"}}"#)),
            attributes: None,
        };
        let data = vec![
            BytesFrame::BlobString { data: Bytes::from(epoch.to_string()), attributes: None },
            BytesFrame::Number { data: latest, attributes: None },
            BytesFrame::Number { data: kept, attributes: None },
            BytesFrame::Array { data: lines.iter().map(line).collect(), attributes: None },
        ];
        BytesFrame::Array { data, attributes: None }
    }

    #[test]
    fn a_reply_is_trusted_only_as_a_run_of_messages_within_what_the_list_keeps() {
        let s = Shared::of(&reply("E", 9, 4, &[7, 8])).expect("a run within 6..=9");
        assert_eq!((s.epoch.as_str(), s.latest, s.first, s.lines.len()), ("E", 9, 6, 2));
        assert_eq!(Shared::of(&reply("", 0, 0, &[])).map(|s| s.first), Some(1), "no history");
        assert_eq!(Shared::of(&reply("E", 9, 0, &[])).map(|s| s.first), Some(10), "all expired");
        assert!(Shared::of(&reply("E", 9, 4, &[7, 9])).is_none(), "a hole");
        assert!(Shared::of(&reply("E", 9, 4, &[5, 6])).is_none(), "before the first kept");
        assert!(Shared::of(&reply("E", 9, 4, &[9, 10])).is_none(), "past the latest");
        assert!(Shared::of(&reply("E", 3, 9, &[])).is_none(), "more kept than numbered");
        assert!(Shared::of(&BytesFrame::Null).is_none());
    }
}
