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

use crate::protocol::split_seq;
use crate::redis::{Link, Url};
use bytes::Bytes;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

pub const ALL: &[u8] = b"chatloop:all";
const NODE_PREFIX: &str = "chatloop:node:";
const ROOM_PREFIX: &str = "chatloop:room:";
const ROOM_SEQ_PREFIX: &str = "chatloop:seq:";
const ROOM_EPOCH_PREFIX: &str = "chatloop:epoch:";
const ROOM_HISTORY_PREFIX: &str = "chatloop:hist:";
pub const KEY_PREFIX: &str = "chatloop:id:";
/// `chatloop:resume:<lowercased id>`: the SHA-1 (hex) of the resume secret of a user in its
/// grace, for `--resume-grace`, so that another node can let it back in (see `RESUME`).
const RESUME_PREFIX: &str = "chatloop:resume:";
/// The private messages kept for a user in its grace (a list of its copies, carrying their
/// `pseq`) and the last `pseq` it was given, for the grace; `moved <node>` in the latter once
/// another node took the user over (see `KEEP`).
const PRIVATE_PREFIX: &str = "chatloop:priv:";
const PSEQ_PREFIX: &str = "chatloop:pseq:";
/// The rate-limit bucket of a user in its grace, "LEVEL MS": its tokens when it was lost and
/// Redis's clock then (`TIME`, ms), for the grace, so that a resume on another node carries
/// it on rather than starting with a fresh burst (see `LOST`, `RESUME`).
const RATE_PREFIX: &str = "chatloop:rate:";
/// Ids per claim script call: big enough to re-register thousands quickly, small enough
/// that one call does not hold Redis for long.
pub const CLAIM_CHUNK: usize = 512;

/// Takes every key that is free or already this node's (ARGV[1]) for ARGV[2] ms; returns
/// the keys held by another node.
pub const CLAIM: &[u8] = b"local bad = {} \
for _, k in ipairs(KEYS) do \
local v = redis.call('GET', k) \
if v == false or v == ARGV[1] then redis.call('SET', k, ARGV[1], 'PX', ARGV[2]) \
else bad[#bad + 1] = k end end \
return bad";

/// Numbers a room message, publishes it and keeps it, in one round trip: the room's epoch
/// (set from ARGV[5] if the room has none yet: a Redis that lost its data starts a new
/// epoch), the next seq, the line with that seq spliced between ARGV[3] and ARGV[4],
/// published on ARGV[1] behind the header ARGV[2] and the epoch, and appended to the room's
/// history list, capped to the last ARGV[6] lines (`--history`; 0 keeps none) and kept
/// ARGV[7] ms (`--history-ttl`) after the room's latest message. Returns {seq, epoch,
/// receivers}. KEYS: the room's seq counter, its epoch, its history.
pub const NUMBER: &[u8] = b"local e = redis.call('GET', KEYS[2]) \
if not e then e = ARGV[5]; redis.call('SET', KEYS[2], e) end \
local s = redis.call('INCR', KEYS[1]) \
local line = ARGV[3] .. s .. ARGV[4] \
local n = redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. e .. '\\n' .. line) \
local k = tonumber(ARGV[6]) \
if k > 0 then redis.call('RPUSH', KEYS[3], line); redis.call('LTRIM', KEYS[3], -k, -1); \
redis.call('PEXPIRE', KEYS[3], ARGV[7]) end \
return {s, e, n}";

/// Reads a room's history for a join (see `chat::fetch`): {epoch, latest seq, lines}, the
/// lines being the room's messages after seq ARGV[1] (after 0 if ARGV[3] is neither empty
/// nor the room's epoch: the client's seqs mean nothing in this one), at most ARGV[2] of the
/// most recent, oldest first. A room Redis has no epoch for (never numbered, or lost) gets
/// ARGV[4], the node's offer, now: every node that joins it later learns the same epoch, so
/// the `joined` of a room nobody has written to yet names the epoch its messages will have.
/// KEYS as for `NUMBER`. The list ends at the latest seq, since `NUMBER` appends in the same
/// script that counts.
pub const FETCH: &[u8] = b"local e = redis.call('GET', KEYS[2]) \
if not e then e = ARGV[4]; redis.call('SET', KEYS[2], e) end \
local c = tonumber(redis.call('GET', KEYS[1]) or '0') \
local s = tonumber(ARGV[1]) \
if ARGV[3] ~= '' and ARGV[3] ~= e then s = 0 end \
local k = math.min(c - s, tonumber(ARGV[2])) \
local lines = {} \
if k > 0 then lines = redis.call('LRANGE', KEYS[3], -k, -1) end \
return {e, c, lines}";

/// A user's connection was lost: keeps the SHA-1 of its secret ARGV[1] in KEYS[1] for ARGV[2]
/// ms (its grace; only the hash: reading Redis does not hand out the secret), its last pseq
/// ARGV[3] in KEYS[3], its rate-limit bucket's level ARGV[4] ("" if full) with Redis's clock
/// in KEYS[4] ("LEVEL MS"), and the private messages kept for it (ARGV[5...], its copies) in
/// the list KEYS[2], all for the grace.
pub const LOST: &[u8] = b"redis.call('SET', KEYS[1], redis.sha1hex(ARGV[1]), 'PX', ARGV[2]) \
redis.call('DEL', KEYS[2]) \
if #ARGV > 4 then redis.call('RPUSH', KEYS[2], unpack(ARGV, 5)); redis.call('PEXPIRE', KEYS[2], ARGV[2]) end \
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[2]) \
if ARGV[4] == '' then redis.call('DEL', KEYS[4]) else \
local t = redis.call('TIME') \
local ms = string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000)) \
redis.call('SET', KEYS[4], ARGV[4] .. ' ' .. ms, 'PX', ARGV[2]) end \
return 0";

/// A private message kept for a user in its grace here: appends its copy ARGV[1] (pseq
/// ARGV[2]) to the list KEYS[1] (at most ARGV[4] kept) and sets its last pseq KEYS[2], for
/// ARGV[3] ms. If another node has taken the user over meanwhile (KEYS[2] says `moved
/// <node>`), nothing is kept and the reply is that node, for the message to follow the user
/// there; otherwise "".
pub const KEEP: &[u8] = b"local p = redis.call('GET', KEYS[2]) \
if p and string.sub(p, 1, 6) == 'moved ' then return string.sub(p, 7) end \
redis.call('RPUSH', KEYS[1], ARGV[1]); redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1) \
redis.call('PEXPIRE', KEYS[1], ARGV[3]); redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) \
return ''";

/// The start of a script that reads a user's rate-limit bucket: `now`, Redis's clock in ms,
/// and `bucket(k)`, the bucket kept in `k` ("LEVEL MS", see `LOST`, `LEFT`) as "LEVEL AGO"
/// (AGO: ms since it was kept), or "" if there is none.
macro_rules! now_and_bucket {
    () => {
        "local t = redis.call('TIME') \
local now = t[1] * 1000 + math.floor(t[2] / 1000) \
local function bucket(k) local r = redis.call('GET', k) \
if r then local lv, at = string.match(r, '^(%S+) (%d+)$') \
if lv then return lv .. ' ' .. string.format('%.0f', now - tonumber(at)) end end \
return '' end "
    };
}

/// A join presenting a resume secret (ARGV[3]), run only before ARGV[5], a deadline in
/// Redis's clock (ms): a Redis that stalled runs it after the node has given up waiting and
/// decided the join itself (see `Cluster::claim_resume`), and then it does nothing: {-3}.
///
/// Otherwise it takes the id key KEYS[1] for this node (ARGV[1]) for ARGV[2] ms if it is free
/// or ours ({0}, as `CLAIM` does). If the user is in its grace (KEYS[2] holds its secret's
/// SHA-1) and this is its secret, the token is spent in the same step, wherever the user is
/// held: the hash is deleted with the kept private messages (KEYS[3]), the last pseq (KEYS[4])
/// and the bucket (KEYS[5]). On the node that holds the user that is what makes a resume there
/// exclusive: a `RESUME` for the same token on another node, run just after, finds no hash
/// (and the key ours), and must ask us (`Msg::Takeover`), which refuses a spent token. Ours
/// with a hash but another secret: {-1}.
///
/// The reply {0} carries the id's rate-limit bucket (KEYS[5]; see `now_and_bucket`) too.
///
/// If another node holds the key for a user in its grace there whose secret this is, the
/// secret is spent (as above), KEYS[4] says `moved <this node>` for the rest of the grace
/// (ARGV[4] ms; see `KEEP`), and the reply is {1, that node, last pseq, messages, bucket},
/// the bucket being "LEVEL AGO" (AGO: ms since it was kept, by Redis's clock) or "". Another
/// node's user that is not in its grace there (no hash: it is connected, as far as that node
/// knows) is {-2, that node}: only that node can check the secret (see `Msg::Takeover`). A
/// wrong secret is {-1}: the id is taken.
pub const RESUME: &[u8] = concat!(
    now_and_bucket!(),
    "if now > tonumber(ARGV[5]) then return {-3} end \
local v = redis.call('GET', KEYS[1]) \
local h = redis.call('GET', KEYS[2]) \
local mine = h and h == redis.sha1hex(ARGV[3]) \
if v == false or v == ARGV[1] then \
if h and not mine and v then return {-1} end \
local b = bucket(KEYS[5]) \
if mine then redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5]) end \
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); return {0, b} end \
if not h then return {-2, v} end \
if not mine then return {-1} end \
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); redis.call('DEL', KEYS[2]) \
local p = redis.call('GET', KEYS[4]) \
if not p or string.sub(p, 1, 6) == 'moved ' then p = '0' end \
local kept = redis.call('LRANGE', KEYS[3], 0, -1) \
redis.call('DEL', KEYS[3]); redis.call('SET', KEYS[4], 'moved ' .. ARGV[1], 'PX', ARGV[4]) \
local rate = bucket(KEYS[5]) \
redis.call('DEL', KEYS[5]) \
return {1, v, p, kept, rate}"
)
.as_bytes();

/// A join without a resume token: takes the id key KEYS[1] for this node (ARGV[1]) for
/// ARGV[2] ms if it is free or ours, and answers {0, the bucket the id left in KEYS[2]} (see
/// `LEFT`; "LEVEL AGO" or ""), so that a fresh join on another node buys no fresh burst;
/// {-1} if another node holds the id.
pub const JOIN: &[u8] = concat!(
    now_and_bucket!(),
    "local v = redis.call('GET', KEYS[1]) \
if v and v ~= ARGV[1] then return {-1} end \
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) \
return {0, bucket(KEYS[2])}"
)
.as_bytes();

/// A user left here (its client's close, or its hold's grace ended): frees the id key KEYS[1]
/// if it is still this node's (ARGV[1]), and keeps its rate-limit bucket's level ARGV[2]
/// with Redis's clock in KEYS[2] ("LEVEL MS") for ARGV[3] ms, until it would have refilled,
/// for a join elsewhere (`JOIN`); "" (a full bucket) deletes it.
pub const LEFT: &[u8] = b"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end \
if ARGV[2] == '' then redis.call('DEL', KEYS[2]) else \
local t = redis.call('TIME') \
local ms = string.format('%.0f', t[1] * 1000 + math.floor(t[2] / 1000)) \
redis.call('SET', KEYS[2], ARGV[2] .. ' ' .. ms, 'PX', ARGV[3]) end \
return 0";

/// Deletes every key that is still this node's.
pub const RELEASE: &[u8] = b"for _, k in ipairs(KEYS) do \
if redis.call('GET', k) == ARGV[1] then redis.call('DEL', k) end end \
return 0";

/// A message between nodes. `&str` fields borrow the payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    /// A message to `room` from `node`, numbered by Redis in the room's `epoch`; `line` is
    /// the client JSON line (carrying its `seq`).
    Room {
        node: &'a str,
        room: &'a str,
        epoch: &'a str,
        line: Bytes,
    },
    /// `id` on `node` joined `room`.
    RoomJoin {
        node: &'a str,
        id: &'a str,
        room: &'a str,
    },
    /// `id` on `node` left `room`.
    RoomLeave {
        node: &'a str,
        id: &'a str,
        room: &'a str,
    },
    Join {
        node: &'a str,
        id: &'a str,
    },
    Leave {
        node: &'a str,
        id: &'a str,
    },
    /// A node (re)connected and asks everyone for their rosters.
    Hello {
        node: &'a str,
    },
    /// A node is alive and has `count` users in `memberships` room memberships in all.
    Beat {
        node: &'a str,
        count: usize,
        memberships: usize,
    },
    /// A node is shutting down: its users are gone.
    Bye {
        node: &'a str,
    },
    /// Every user on `node` with the rooms it is in (a reply to Hello or Query). On the wire
    /// each id is followed by its rooms, each marked with `@`.
    Roster {
        node: &'a str,
        members: Vec<(&'a str, Vec<&'a str>)>,
    },
    /// `node` asks for our roster.
    Query {
        node: &'a str,
    },
    /// A private message from `from` on `node` to our user `to`.
    Private {
        node: &'a str,
        to: &'a str,
        from: &'a str,
        line: Bytes,
    },
    /// Our user `from` wrote to `to`, who was not on the node we sent it to.
    Bounce {
        to: &'a str,
        from: &'a str,
    },
    /// Our user `from` wrote to `to`, whose queue could not take it (`recipient_busy`).
    Busy {
        to: &'a str,
        from: &'a str,
    },
    /// Our user `from` wrote to `to`, who is away and has no room left for it (`undelivered`).
    Undelivered {
        to: &'a str,
        from: &'a str,
    },
    /// A client on `node` presents resume token `token` for our user `id`, still connected
    /// here as far as we know (its old connection may be half-open): if the token is right,
    /// we treat that connection as lost, which puts the user's secret in Redis, and answer
    /// `Released` so that `node` can take the user over.
    Takeover {
        node: &'a str,
        id: &'a str,
        token: &'a str,
    },
    /// The answer to `Takeover`: released (`ok`), or not (a wrong token, or no such user).
    Released {
        node: &'a str,
        id: &'a str,
        ok: bool,
    },
}

impl<'a> Msg<'a> {
    /// The node that sent it (a bounce does not say).
    pub fn node(&self) -> Option<&'a str> {
        match *self {
            Msg::Bounce { .. } | Msg::Busy { .. } | Msg::Undelivered { .. } => None,
            Msg::Room { node, .. }
            | Msg::RoomJoin { node, .. }
            | Msg::RoomLeave { node, .. }
            | Msg::Join { node, .. }
            | Msg::Leave { node, .. }
            | Msg::Hello { node }
            | Msg::Beat { node, .. }
            | Msg::Bye { node }
            | Msg::Roster { node, .. }
            | Msg::Query { node }
            | Msg::Private { node, .. }
            | Msg::Takeover { node, .. }
            | Msg::Released { node, .. } => Some(node),
        }
    }

    /// Parses a payload; `None` for anything malformed (a newer or foreign publisher).
    pub fn parse(payload: &'a Bytes) -> Option<Msg<'a>> {
        let (head, body) = match payload.iter().position(|&b| b == b'\n') {
            Some(i) => (&payload[..i], Some(payload.slice(i + 1..))),
            None => (&payload[..], None),
        };
        let head = std::str::from_utf8(head).ok()?;
        // Every field we send is a kind, a node id, an id, a room (`@room` in a roster) or a
        // count: 1 to 64 of A-Z a-z 0-9 _ - . @ (an empty one would mean a double space).
        // Anything else is not our format.
        let token = |f: &str| {
            (1..=64).contains(&f.len())
                && f.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
        };
        if !head.split(' ').all(token) {
            return None;
        }
        let mut f = head.split(' ');
        let kind = f.next()?;
        let node = f.next()?;
        let msg = match (kind, body) {
            ("M", Some(line)) => Msg::Room { node, room: f.next()?, epoch: f.next()?, line },
            ("J", None) => Msg::Join { node, id: f.next()? },
            ("L", None) => Msg::Leave { node, id: f.next()? },
            ("j", None) => Msg::RoomJoin { node, id: f.next()?, room: f.next()? },
            ("l", None) => Msg::RoomLeave { node, id: f.next()?, room: f.next()? },
            ("H", None) => Msg::Hello { node },
            ("B", None) => {
                Msg::Beat { node, count: f.next()?.parse().ok()?, memberships: f.next()?.parse().ok()? }
            }
            ("G", None) => Msg::Bye { node },
            ("R", None) => {
                let mut members: Vec<(&str, Vec<&str>)> = Vec::new();
                for field in f {
                    match (field.strip_prefix('@'), members.last_mut()) {
                        (Some(room), Some((_, rooms))) => rooms.push(room),
                        (Some(_), None) => return None, // a room before any id
                        (None, _) => members.push((field, Vec::new())),
                    }
                }
                return Some(Msg::Roster { node, members });
            }
            ("Q", None) => Msg::Query { node },
            ("P", Some(line)) => Msg::Private { node, to: f.next()?, from: f.next()?, line },
            // A bounce names no node: its first field is the recipient.
            ("E", None) => Msg::Bounce { to: node, from: f.next()? },
            ("K", None) => Msg::Busy { to: node, from: f.next()? },
            ("U", None) => Msg::Undelivered { to: node, from: f.next()? },
            ("Z", None) => Msg::Takeover { node, id: f.next()?, token: f.next()? },
            ("z", None) => Msg::Released { node, id: f.next()?, ok: true },
            ("y", None) => Msg::Released { node, id: f.next()?, ok: false },
            _ => return None,
        };
        f.next().is_none().then_some(msg)
    }
}

/// Encodes a header and an optional body.
pub fn payload(fields: &[&str], body: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + body.map_or(0, <[u8]>::len));
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(f.as_bytes());
    }
    if let Some(b) = body {
        out.push(b'\n');
        out.extend_from_slice(b);
    }
    out
}

/// The channel a node listens on for messages addressed to it.
pub fn node_channel(node: &str) -> Vec<u8> {
    format!("{NODE_PREFIX}{node}").into_bytes()
}

/// What a room message waiting to be numbered by Redis needs for its local delivery.
#[derive(Debug)]
pub struct Numbered {
    /// The sender's connection.
    pub token: usize,
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

/// A user's keys (`id` lowercased): its id claim, its resume hash, its kept private messages,
/// its last pseq and its rate-limit bucket.
fn user_keys(id: &str) -> [String; 5] {
    [KEY_PREFIX, RESUME_PREFIX, PRIVATE_PREFIX, PSEQ_PREFIX, RATE_PREFIX].map(|p| format!("{p}{id}"))
}

/// Room `room`'s keys: its seq counter, its epoch and its history list.
fn room_keys(room: &str) -> [String; 3] {
    [ROOM_SEQ_PREFIX, ROOM_EPOCH_PREFIX, ROOM_HISTORY_PREFIX].map(|p| format!("{p}{room}"))
}

/// The channel of room `room`'s messages.
pub fn room_channel(room: &str) -> Vec<u8> {
    format!("{ROOM_PREFIX}{room}").into_bytes()
}

/// The room a room channel carries, if `channel` is one.
pub fn channel_room(channel: &[u8]) -> Option<&str> {
    std::str::from_utf8(channel.strip_prefix(ROOM_PREFIX.as_bytes())?).ok()
}

/// The fields of a roster of `members` (id, then its rooms as `@room`), after "R node".
pub fn roster_fields<'a>(members: impl Iterator<Item = (&'a str, Vec<&'a str>)>) -> Vec<String> {
    let mut out = Vec::new();
    for (id, rooms) in members {
        out.push(id.to_string());
        out.extend(rooms.into_iter().map(|r| format!("@{r}")));
    }
    out
}

/// A fresh node id: 16 hex digits, random per process, so that a restarted node never
/// mistakes its previous life's keys for its own.
pub fn new_node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness; mixing in the pid and time guards
    // against a platform where it is not.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
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
    /// A message from `from` to `room`, with (`number`) the line to deliver here once Redis
    /// has numbered it (see `NUMBER`): if the link fails before Redis answers, other nodes
    /// may not have it, and the sender is told so; Redis's count of receivers says whether a
    /// node that should have heard it did not (it was reconnecting).
    Room {
        from: Rc<str>,
        room: Rc<str>,
        cid: Option<Rc<str>>,
        number: Box<Numbered>,
    },
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
            if matches!(w, Await::Room { .. } | Await::Private { .. }) {
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

    /// Publishes to a channel; false if the link is down or full.
    /// Has Redis number a message of `room` from this node and publish it (see `NUMBER`):
    /// `template` is its line with seq 0; the reply carries the seq. False if the link refused.
    pub fn number(&mut self, room: &str, template: &[u8], epoch: &str, then: Await) -> bool {
        let Some((prefix, suffix)) = split_seq(template) else { return false };
        let header = format!("M {} {room}", self.node);
        let [seq_key, epoch_key, history_key] = room_keys(room);
        let (keep, ttl) = (self.history.to_string(), self.history_ttl.as_millis().max(1).to_string());
        let args: [&[u8]; 13] = [
            b"EVAL",
            NUMBER,
            b"3",
            seq_key.as_bytes(),
            epoch_key.as_bytes(),
            history_key.as_bytes(),
            &room_channel(room),
            header.as_bytes(),
            prefix,
            suffix,
            epoch.as_bytes(),
            keep.as_bytes(),
            ttl.as_bytes(),
        ];
        if !self.link.send(&args) {
            return false;
        }
        self.counters.published += 1;
        self.awaiting(then);
        true
    }

    /// Asks Redis for the history a join waits for (see `FETCH`); if the link refuses, the
    /// request comes back.
    pub fn fetch(&mut self, generation: u32, fetch: Box<Fetch>) -> Result<(), Await> {
        let keys = room_keys(&fetch.room);
        let (after, most, epoch) = fetch.ask.fetch_args(self.history);
        let (after, most) = (after.to_string(), most.to_string());
        let mut args: Vec<&[u8]> = vec![b"EVAL", FETCH, b"3"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        args.extend([after.as_bytes(), most.as_bytes(), epoch.as_bytes(), fetch.offer.as_bytes()]);
        let sent = self.link.send(&args);
        drop(args);
        let then = Await::Fetch { generation, fetch };
        if !sent {
            return Err(then);
        }
        self.awaiting(then);
        Ok(())
    }

    pub fn publish(&mut self, channel: &[u8], payload: &[u8]) -> bool {
        self.publish_awaiting(channel, payload, Await::Ignore)
    }

    pub fn publish_awaiting(&mut self, channel: &[u8], payload: &[u8], then: Await) -> bool {
        if !self.link.send(&[b"PUBLISH", channel, payload]) {
            return false;
        }
        self.counters.published += 1;
        self.awaiting(then);
        true
    }

    /// Runs the claim script over `ids` (lowercased), in chunks; false if the link refused.
    pub fn claim<S: AsRef<str>>(&mut self, ids: impl Iterator<Item = S>, then: impl Fn() -> Await) -> bool {
        let keys: Vec<String> = ids.map(|id| format!("{KEY_PREFIX}{}", id.as_ref())).collect();
        let ttl_ms = self.ttl.as_millis().to_string();
        for chunk in keys.chunks(CLAIM_CHUNK) {
            if !self.script(CLAIM, chunk, &ttl_ms) {
                return false;
            }
            self.awaiting(then());
        }
        true
    }

    /// Claims `id` (lowercased) for a join that presents `secret`: see `RESUME`; `grace` is
    /// `--resume-grace`. False if the link refused.
    ///
    /// The script carries a deadline (`claim_deadline`), so that it can never take effect
    /// after this node has stopped waiting for it: a Redis that stalls runs its queued input
    /// when it resumes, and a `RESUME` that took the user over then, with nobody to welcome it,
    /// would leave the user's token spent and its old node's hold marked moved: locked out
    /// and listed on two nodes until the key expired.
    pub fn claim_resume(
        &mut self,
        id: &str,
        secret: &[u8],
        grace: Duration,
        then: Await,
        now: Instant,
    ) -> bool {
        let (ttl_ms, grace_ms) = (self.ttl.as_millis().to_string(), grace.as_millis().max(1).to_string());
        let deadline = self.claim_deadline(now).to_string();
        let keys = user_keys(id);
        let mut args: Vec<&[u8]> = vec![b"EVAL", RESUME, b"5"];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        args.extend([
            self.node.as_bytes(),
            ttl_ms.as_bytes(),
            secret,
            grace_ms.as_bytes(),
            deadline.as_bytes(),
        ]);
        let sent = self.link.send(&args);
        drop(args);
        if sent {
            self.awaiting(then);
        }
        sent
    }

    /// The moment (Redis's clock, ms) after which a `RESUME` sent now must do nothing: half a
    /// limit after the stall clock's start (`progress` if replies are awaited, else now).
    /// The link is given up a whole limit after that start at the earliest, so a script run
    /// in time has half a limit for its reply to arrive, and one run later (Redis stalled)
    /// finds its deadline passed. Half a limit after the clock's start may already be past
    /// if Redis has been silent that long: then the join is refused as if Redis were busy.
    pub fn claim_deadline(&self, now: Instant) -> i64 {
        let start = if self.waiting.is_empty() { now } else { self.progress };
        self.redis_ms(start + self.limit() / 2)
    }

    /// `at` in Redis's clock (ms since the Unix epoch as its `TIME` says), from the offset
    /// measured when the link came up (`clock_sent`, `clock_read`).
    pub fn redis_ms(&self, at: Instant) -> i64 {
        let since = match at.checked_duration_since(self.origin) {
            Some(d) => d.as_millis() as i64,
            None => -(self.origin.duration_since(at).as_millis() as i64),
        };
        since + self.offset
    }

    /// Asks Redis for its clock (the link just came up): deadlines for it are in its time,
    /// not ours (`claim_deadline`).
    pub fn clock_sent(&mut self, now: Instant) {
        if self.link.send(&[b"TIME"]) {
            self.awaiting(Await::Clock { sent: now });
        }
    }

    /// Redis's `TIME` ({seconds, microseconds}) for a request sent at `sent`, read `now`:
    /// its clock is taken to be read half way between.
    pub fn clock_read(&mut self, secs: i64, micros: i64, sent: Instant, now: Instant) {
        let mid = sent + now.duration_since(sent) / 2;
        let here = self.redis_ms(mid) - self.offset;
        self.offset = secs * 1000 + micros / 1000 - here;
    }

    /// Local user `id` (lowercased) was lost: another node may let it back in with `secret`
    /// within `grace`, with the private messages kept for it (`kept`, its copies), its last
    /// `pseq` and its rate-limit bucket's `level` (None: full) (see `LOST`).
    pub fn lost(
        &mut self,
        id: &str,
        secret: &[u8],
        grace: Duration,
        pseq: u64,
        kept: &[Bytes],
        level: Option<f32>,
    ) -> bool {
        let [_, resume, private, last, rate] = user_keys(id);
        let (ms, pseq) = (grace.as_millis().max(1).to_string(), pseq.to_string());
        let level = level.map_or(String::new(), |l| format!("{l:.3}"));
        let mut args: Vec<&[u8]> = vec![
            b"EVAL",
            LOST,
            b"4",
            resume.as_bytes(),
            private.as_bytes(),
            last.as_bytes(),
            rate.as_bytes(),
        ];
        args.extend([secret, ms.as_bytes(), pseq.as_bytes(), level.as_bytes()]);
        args.extend(kept.iter().map(|l| &l[..]));
        let sent = self.link.send(&args);
        drop(args);
        if sent {
            self.awaiting(Await::Ignore);
        }
        sent
    }

    /// A private message for local user `to` (lowercased `key`) in its grace, its copy
    /// `copy` numbered `pseq`: kept in Redis too, for a resume on another node (see `KEEP`),
    /// at most `cap` lines (chat's bound on a backlog, passed down: this layer knows no chat).
    pub fn keep(
        &mut self,
        key: &str,
        copy: &[u8],
        pseq: u64,
        grace: Duration,
        cap: usize,
        then: Await,
    ) -> bool {
        let [_, _, private, last, _] = user_keys(key);
        let (pseq, ms) = (pseq.to_string(), grace.as_millis().max(1).to_string());
        let cap = cap.to_string();
        let args: [&[u8]; 9] = [
            b"EVAL",
            KEEP,
            b"2",
            private.as_bytes(),
            last.as_bytes(),
            copy,
            pseq.as_bytes(),
            ms.as_bytes(),
            cap.as_bytes(),
        ];
        if !self.link.send(&args) {
            return false;
        }
        self.awaiting(then);
        true
    }

    /// Local user `id` (lowercased) is back here: its old secret must not let it in on
    /// another node, and what Redis kept for it is delivered here.
    pub fn spent(&mut self, id: &str) -> bool {
        let [_, resume, private, last, rate] = user_keys(id);
        let sent = self.link.send(&[
            b"DEL",
            resume.as_bytes(),
            private.as_bytes(),
            last.as_bytes(),
            rate.as_bytes(),
        ]);
        if sent {
            self.awaiting(Await::Ignore);
        }
        sent
    }

    /// Claims `id` (lowercased) for a join without a resume token (see `JOIN`). False if the
    /// link refused.
    pub fn claim_join(&mut self, id: &str, then: Await) -> bool {
        let [key, _, _, _, rate] = user_keys(id);
        let ttl_ms = self.ttl.as_millis().to_string();
        let args: [&[u8]; 7] =
            [b"EVAL", JOIN, b"2", key.as_bytes(), rate.as_bytes(), self.node.as_bytes(), ttl_ms.as_bytes()];
        let sent = self.link.send(&args);
        if sent {
            self.awaiting(then);
        }
        sent
    }

    /// Local user `id` (lowercased) left: frees its key if this node holds it, and keeps its
    /// rate-limit bucket's `level` (None: full) for `refill` (see `LEFT`).
    pub fn left(&mut self, id: &str, level: Option<f32>, refill: Duration) -> bool {
        let [key, _, _, _, rate] = user_keys(id);
        let level = level.map_or(String::new(), |l| format!("{l:.3}"));
        let ms = refill.as_millis().max(1).to_string();
        let args: [&[u8]; 8] = [
            b"EVAL",
            LEFT,
            b"2",
            key.as_bytes(),
            rate.as_bytes(),
            self.node.as_bytes(),
            level.as_bytes(),
            ms.as_bytes(),
        ];
        let sent = self.link.send(&args);
        if sent {
            self.awaiting(Await::Ignore);
        }
        sent
    }

    /// Frees `id` (lowercased) if this node holds it.
    pub fn release(&mut self, id: &str) -> bool {
        let key = format!("{KEY_PREFIX}{id}");
        let sent = self.script(RELEASE, std::slice::from_ref(&key), "0");
        if sent {
            self.awaiting(Await::Ignore);
        }
        sent
    }

    fn script(&mut self, script: &[u8], keys: &[String], arg: &str) -> bool {
        let n = keys.len().to_string();
        let node = Rc::clone(&self.node);
        let mut args: Vec<&[u8]> = vec![b"EVAL", script, n.as_bytes()];
        args.extend(keys.iter().map(|k| k.as_bytes()));
        args.extend([node.as_bytes(), arg.as_bytes()]);
        self.link.send(&args)
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
    use crate::protocol::line_seq;

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

    fn numbered() -> Box<Numbered> {
        Box::new(Numbered { token: 0, template: Bytes::new() })
    }

    #[test]
    fn a_failed_link_tells_written_commands_from_dropped_ones() {
        let url = Url::parse("redis://127.0.0.1:1").unwrap();
        let mut c =
            Cluster::new(url, mio::Token(0), Duration::from_secs(3), Duration::from_secs(1), Instant::now());
        c.link.pretend_up();
        let room = |n: &str| Await::Room {
            from: Rc::from("alice"),
            room: Rc::from(n),
            cid: None,
            number: numbered(),
        };
        assert!(c.publish_awaiting(b"chatloop:room:a", b"M n a\n{}", room("a")));
        let first = c.link.end();
        assert!(c.publish_awaiting(b"chatloop:room:b", b"M n b\n{}", room("b")));
        // The socket took the first command and part of the second.
        c.link.pretend_written(first + 3);
        let got: Vec<(String, Sent)> = c
            .take_waiting()
            .into_iter()
            .map(|(w, s)| match w {
                Await::Room { room, .. } => (room.to_string(), s),
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
        let room =
            Await::Room { from: Rc::from("alice"), room: Rc::from("lobby"), cid: None, number: numbered() };
        assert!(c.publish_awaiting(b"chatloop:room:lobby", b"M n lobby\n{}", room));
        assert!(c.publish_awaiting(b"chatloop:room:lobby", b"M n lobby\n{}", Await::Refresh));
        assert!(c.heard(t0 + Duration::from_millis(1999)), "silent for 1 s");
        let taken = c.unconfirm();
        assert!(matches!(&taken[..], [Await::Room { .. }]), "{taken:?}");
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
