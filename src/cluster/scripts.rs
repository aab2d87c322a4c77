//! The Lua scripts and the keys and channels they touch: every key chatloop keeps in Redis
//! is named here, and every script that changes them is one `EVAL` sent by a method of
//! `Cluster` below, which queues its reply's meaning (`Await`).

use super::{Await, Cluster, Fetch};
use crate::protocol::split_seq;
use bytes::Bytes;
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
/// Moderation (issue 25): every ban, mute and revocation in force, one hash field each (the
/// field and value are chat's text form, `chat::moderation::Decision::redis_field`), and
/// their deadlines (Unix ms) as the scores of a sorted set beside it. Each script drops what
/// is past (the earliest first, a bounded batch) and sets both keys to expire with the last
/// deadline, so Redis keeps nothing past its time.
const MOD_KEY: &str = "chatloop:mod";
const MOD_DUE_KEY: &str = "chatloop:mod:due";

/// The start of a moderation script: drops up to 1024 entries past ARGV[1] (ms).
macro_rules! mod_expire {
    () => {
        "local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1024) \
for _, f in ipairs(old) do redis.call('HDEL', KEYS[1], f); redis.call('ZREM', KEYS[2], f) end "
    };
}

/// The end of a script that changed the set: both keys expire with its last deadline.
macro_rules! mod_keep_until_last {
    () => {
        "local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES') \
if last[2] then redis.call('PEXPIREAT', KEYS[1], last[2]); redis.call('PEXPIREAT', KEYS[2], last[2]) end "
    };
}

/// Keeps one moderation decision and announces it, in one step: field ARGV[2] = ARGV[3]
/// until ARGV[4] (ms), then ARGV[6] published on ARGV[5]. KEYS: `MOD_KEY`, `MOD_DUE_KEY`.
pub const MOD_PUT: &[u8] = concat!(
    mod_expire!(),
    "redis.call('HSET', KEYS[1], ARGV[2], ARGV[3]); redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2]) ",
    mod_keep_until_last!(),
    "redis.call('PUBLISH', ARGV[5], ARGV[6]) return 0"
)
.as_bytes();

/// Lifts moderation decisions (fields ARGV[4...]) and announces it: ARGV[3] on ARGV[2].
pub const MOD_DEL: &[u8] = concat!(
    mod_expire!(),
    "for i = 4, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]); redis.call('ZREM', KEYS[2], ARGV[i]) end ",
    mod_keep_until_last!(),
    "redis.call('PUBLISH', ARGV[2], ARGV[3]) return 0"
)
.as_bytes();

/// Every moderation decision in force at ARGV[1] (ms): {field, value, field, value, ...}.
pub const MOD_LOAD: &[u8] = concat!(mod_expire!(), "return redis.call('HGETALL', KEYS[1])").as_bytes();

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

/// A user's keys (`id` lowercased): its id claim, its resume hash, its kept private messages,
/// its last pseq and its rate-limit bucket.
fn user_keys(id: &str) -> [String; 5] {
    [KEY_PREFIX, RESUME_PREFIX, PRIVATE_PREFIX, PSEQ_PREFIX, RATE_PREFIX].map(|p| format!("{p}{id}"))
}

/// Room `room`'s keys: its seq counter, its epoch and its history list.
pub(super) fn room_keys(room: &str) -> [String; 3] {
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
/// The channel a node listens on for messages addressed to it.
pub fn node_channel(node: &str) -> Vec<u8> {
    format!("{NODE_PREFIX}{node}").into_bytes()
}

impl Cluster {
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

    /// Keeps a moderation decision (`field` = `value` until `until`, Unix ms; `now` the same
    /// clock) in Redis and announces `announce` to every node, in one script (see `MOD_PUT`).
    pub fn moderate_put(&mut self, field: &str, value: &str, until: u64, now: u64, announce: &[u8]) -> bool {
        let (until, now) = (until.to_string(), now.to_string());
        let args: [&[u8]; 11] = [
            b"EVAL",
            MOD_PUT,
            b"2",
            MOD_KEY.as_bytes(),
            MOD_DUE_KEY.as_bytes(),
            now.as_bytes(),
            field.as_bytes(),
            value.as_bytes(),
            until.as_bytes(),
            ALL,
            announce,
        ];
        self.sent_ignored(&args)
    }

    /// Lifts moderation decisions `fields` in Redis and announces `announce` (see `MOD_DEL`).
    pub fn moderate_del(&mut self, fields: &[String], now: u64, announce: &[u8]) -> bool {
        let now = now.to_string();
        let mut args: Vec<&[u8]> = vec![
            b"EVAL",
            MOD_DEL,
            b"2",
            MOD_KEY.as_bytes(),
            MOD_DUE_KEY.as_bytes(),
            now.as_bytes(),
            ALL,
            announce,
        ];
        args.extend(fields.iter().map(|f| f.as_bytes()));
        let sent = self.link.send(&args);
        drop(args);
        if sent {
            self.awaiting(Await::Ignore);
        }
        sent
    }

    /// Asks for every moderation decision in force (the link came up): see `MOD_LOAD`.
    pub fn moderation_load(&mut self, now: u64) -> bool {
        let now = now.to_string();
        let args: [&[u8]; 6] =
            [b"EVAL", MOD_LOAD, b"2", MOD_KEY.as_bytes(), MOD_DUE_KEY.as_bytes(), now.as_bytes()];
        let sent = self.link.send(&args);
        if sent {
            self.awaiting(Await::Moderation);
        }
        sent
    }

    fn sent_ignored(&mut self, args: &[&[u8]]) -> bool {
        let sent = self.link.send(args);
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
}
