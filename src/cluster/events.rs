//! The cluster's one event stream (issue 25): every node appends its events through `EMIT`,
//! which numbers them from one counter and keeps them in a Redis stream, and publishes each
//! on one channel that every node hears. So every node's log holds the same events, with the
//! same ids, in the same order, and a `Last-Event-ID` from one node is valid on any.
//!
//! A node that (re)connects reads what it missed from the stream (`events_since`), holding
//! the pushes that arrive meanwhile until the read is in (`server/cluster/events.rs`).

use super::{Await, Cluster};

/// The channel every event is published on: `<id> <type>\n<data>`.
pub const EVENTS_CHANNEL: &[u8] = b"chatloop:events";
/// The stream that keeps the last `--events-keep` (about: `MAXLEN ~`), with ids `<id>-0`.
const EVENTS_STREAM: &str = "chatloop:events";
/// The counter that numbers them.
const EVENTS_SEQ: &str = "chatloop:events:seq";

/// Numbers an event, keeps it and publishes it: the next id from KEYS[1] (which starts at
/// ARGV[4], the highest id the node has seen, if Redis has lost it: ids never go back), the
/// event kept in the stream KEYS[2] as `<id>-0` with fields `t` (type ARGV[1]) and `d` (data
/// ARGV[2]), the stream trimmed to about ARGV[3] entries, and published on ARGV[5]. Returns
/// the id.
pub const EMIT: &[u8] =
    b"if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[4]) end \
local n = redis.call('INCR', KEYS[1]) \
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], n .. '-0', 't', ARGV[1], 'd', ARGV[2]) \
redis.call('PUBLISH', ARGV[5], n .. ' ' .. ARGV[1] .. '\\n' .. ARGV[2]) \
return n";

/// Events a dead node's users never got (it stopped without a goodbye), appended once for the
/// whole cluster: by the first node to run this for it, which takes the key KEYS[3] (for
/// ARGV[5] ms) with its id ARGV[4]; any other node finds it taken and appends nothing. Each
/// pair ARGV[6], ARGV[7], ... (type, data) is appended as `EMIT` does (KEYS[1], KEYS[2],
/// ARGV[1..3] as there). Returns 1 if it appended them.
pub const EMIT_GONE: &[u8] = b"local v = redis.call('GET', KEYS[3]) \
if v and v ~= ARGV[4] then return 0 end \
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5]) \
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[2]) end \
for i = 6, #ARGV, 2 do \
local n = redis.call('INCR', KEYS[1]) \
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], n .. '-0', 't', ARGV[i], 'd', ARGV[i + 1]) \
redis.call('PUBLISH', ARGV[3], n .. ' ' .. ARGV[i] .. '\\n' .. ARGV[i + 1]) end \
return 1";

/// Pairs of events per `EMIT_GONE` call.
const GONE_CHUNK: usize = 256;

/// A pushed event: its id, type and data; None if malformed.
pub fn parse_event(payload: &[u8]) -> Option<(u64, &str, &[u8])> {
    let nl = payload.iter().position(|b| *b == b'\n')?;
    let head = std::str::from_utf8(&payload[..nl]).ok()?;
    let (id, kind) = head.split_once(' ')?;
    Some((id.parse().ok()?, kind, &payload[nl + 1..]))
}

impl Cluster {
    /// Starts hearing the event channel (on every link up, before `events_since`).
    pub fn listen_events(&mut self) -> bool {
        self.link.send(&[b"SUBSCRIBE", EVENTS_CHANNEL])
    }

    /// Appends an event of type `kind` with `data` (see `EMIT`); `seen` is the highest id this
    /// node has, `keep` the stream's length. False if the link refused.
    pub fn emit(&mut self, kind: &str, data: &[u8], seen: u64, keep: usize, then: Await) -> bool {
        let (keep, seen) = (keep.to_string(), seen.to_string());
        let args: [&[u8]; 10] = [
            b"EVAL",
            EMIT,
            b"2",
            EVENTS_SEQ.as_bytes(),
            EVENTS_STREAM.as_bytes(),
            kind.as_bytes(),
            data,
            keep.as_bytes(),
            seen.as_bytes(),
            EVENTS_CHANNEL,
        ];
        if !self.link.send(&args) {
            return false;
        }
        self.counters.published += 1;
        self.awaiting(then);
        true
    }

    /// Appends, once for the cluster, the events of `node`'s users (see `EMIT_GONE`): (type,
    /// data) pairs. False if the link refused.
    pub fn emit_gone(&mut self, node: &str, events: &[(&str, Vec<u8>)], seen: u64, keep: usize) -> bool {
        let gone = format!("{EVENTS_SEQ}:gone:{node}");
        let (keep, seen) = (keep.to_string(), seen.to_string());
        let me = std::rc::Rc::clone(&self.node);
        for chunk in events.chunks(GONE_CHUNK) {
            let mut args: Vec<&[u8]> = vec![b"EVAL", EMIT_GONE, b"3"];
            args.extend([EVENTS_SEQ.as_bytes(), EVENTS_STREAM.as_bytes(), gone.as_bytes()]);
            args.extend([keep.as_bytes(), seen.as_bytes(), EVENTS_CHANNEL, me.as_bytes(), b"600000"]);
            for (kind, data) in chunk {
                args.extend([kind.as_bytes(), &data[..]]);
            }
            if !self.link.send(&args) {
                return false;
            }
            self.awaiting(Await::Ignore);
        }
        true
    }

    /// Reads the kept events from id `from` on, at most `most`, newest first (`XREVRANGE`),
    /// for a node that (re)connects. False if the link refused.
    pub fn events_since(&mut self, from: u64, most: usize) -> bool {
        let (start, most) = (format!("{from}-0"), most.to_string());
        let args: [&[u8]; 6] =
            [b"XREVRANGE", EVENTS_STREAM.as_bytes(), b"+", start.as_bytes(), b"COUNT", most.as_bytes()];
        if !self.link.send(&args) {
            return false;
        }
        self.awaiting(Await::Events);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pushed_event_parses_and_junk_does_not() {
        assert_eq!(parse_event(b"12 join\n{\"a\":1}"), Some((12, "join", &b"{\"a\":1}"[..])));
        for junk in [&b"12 join"[..], b"x join\n{}", b"12\n{}", b"\n"] {
            assert_eq!(parse_event(junk), None, "{junk:?}");
        }
    }
}
