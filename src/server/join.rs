//! One join lifecycle, for every session, clustered or not: a join begins (`begin_join`), the
//! id is granted here or by Redis (`Granted`), and it ends in one place (`joined`): open,
//! resumed, moved in from another node (`take_over`), or refused (`refuse_id`,
//! `refuse_busy`). A connection still open for the same user is replaced (`replace`); another
//! node may ask for our user (`release_for`, `released`). Every session that ends goes
//! through `leave`: lost to a hold (`cluster_lost` tells Redis) or left; the rate-limit
//! bucket goes to the id (`bucket_to_id`) and comes back with its next join (`bucket_from_id`).

use super::Server;
use super::signin::entry_of;
use crate::chat::ids::key;
use crate::chat::moved::Backlog;
use crate::cluster::{ALL, Await, node_channel, payload};
use crate::conn::{Bucket, Flag, Phase};
use crate::metrics::Reason;
use crate::protocol::{ErrorCode, LOBBY};
use crate::redis::frame_number;
use crate::timers::Stamp;
use log::{info, warn};
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};
use std::time::Instant;
use tungstenite::protocol::frame::coding::CloseCode;

impl Server {
    /// Starts a chat session's join: locally at once without a cluster (or while it is
    /// down), otherwise once Redis grants the id. Until then the session reads nothing.
    pub(super) fn begin_join(&mut self, token: usize, id: &str, now: Instant) {
        // A hold whose grace has just passed ends before the id is claimed, as the sweep
        // would have ended it: leaves announced, the key released, in that order.
        if let Some(g) = self.chat.end_expired(id, now, &mut self.net) {
            info!(target: "chatloop::session", "session ended id={} reason=grace_over", g.id);
            self.cluster_left(&g.id, &g.emptied, now);
        }
        if let Some(until) = self.banned(id) {
            return self.refuse_banned(token, id, until, now);
        }
        let Phase::Ws(s) = &self.net.conns[token].phase else { return };
        let presented = s.asked().map(|a| a.secret);
        // The right secret while the id is still connected (a half-open connection the client
        // has given up on): the old connection is replaced, as if it had been lost just now.
        if let Some(old) = self.chat.token_of(id).filter(|o| *o != token) {
            self.replace(old, presented.as_ref(), now);
        }
        let lower = match self.chat.check(id, presented.as_ref(), now) {
            Ok(l) => l,
            Err(code) => return self.refuse_id(token, id, code, now),
        };
        let generation = self.net.conns[token].generation;
        let Some(c) = &mut self.cluster else {
            return self.joined(token, generation, id, Granted::Locally, now);
        };
        if c.claiming.contains(&lower) {
            return self.refuse_id(token, id, ErrorCode::IdTaken, now);
        }
        // With a secret, the id may be held on another node for this very client (see
        // `chat::moved`).
        let asked = match &presented {
            Some(p) => {
                let then = Await::Resume { token, generation, id: id.to_string(), asked: false };
                c.claim_resume(&lower, p, self.cfg.resume_grace, then, now)
            }
            None => c.claim_join(&lower, Await::Claim { token, generation, id: id.to_string() }),
        };
        if !asked {
            if c.is_up() {
                // Up but its queue is full: Redis is not keeping up; do not pile on.
                return self.refuse_busy(token, now);
            }
            return self.joined(token, generation, id, Granted::Locally, now);
        }
        c.claiming.insert(lower);
        let conn = &mut self.net.conns[token];
        if let Phase::Ws(_) = conn.phase {
            conn.peer.set(Flag::Claiming);
        }
    }

    /// Connection `old` of a local user is given up for a client that presents its secret
    /// (`presented`) on a new connection, here or on another node: it is closed with 4001
    /// `replaced` and its user held as if the connection had been lost now. False (nothing
    /// done) for a wrong secret.
    pub(super) fn replace(
        &mut self,
        old: usize,
        presented: Option<&crate::chat::ids::Secret>,
        now: Instant,
    ) -> bool {
        let oc = &self.net.conns[old];
        if !matches!(oc.phase, Phase::Ws(_)) || !oc.peer.is(Flag::Joined) {
            return false;
        }
        let Some(user) = self.chat.id_of(old) else { return false };
        if presented.is_none_or(|p| *p != self.secrets.of(oc.generation, user)) {
            return false;
        }
        info!(target: "chatloop::session", "session replaced id={user} peer={}", oc.addr);
        // Ended as every session ends (`leave`): the user held, its secret and rate-limit
        // bucket handed to the id (and to Redis), before the new connection's join looks.
        let why = Some(crate::metrics::Reason::Replaced);
        self.close_ws(old, CloseCode::from(4001), "replaced", why, now);
        true
    }

    /// Another node asks for our user `id` on behalf of a client presenting `token` (see
    /// `Msg::Takeover`): with the right token the user's connection here is replaced (its
    /// secret goes to Redis in the same stream, before the answer), and `node` is told.
    pub(super) fn release_for(&mut self, node: &str, id: &str, token: &str, now: Instant) {
        let presented = crate::chat::ids::parse_token(token);
        let k = key(id);
        let ok = match self.chat.token_of(id) {
            // A join of this id is waiting for Redis here (a client presenting the token, as
            // likely as not this very one): the token is being spent here, so it is not
            // released, and above all its hash is not written again, which would let the
            // asking node's second `RESUME` take the user over after ours had spent it.
            _ if self.cluster_mut().claiming.contains(&k) => false,
            Some(old) => self.replace(old, presented.as_ref(), now),
            // Lost here meanwhile: its secret should be in Redis already, but may not be if
            // the link was down when it was lost; written again (before the answer) to be sure.
            None => {
                let ok = self.chat.held_for(&k, presented.as_ref(), now);
                if let Some(secret) = presented.filter(|_| ok) {
                    self.cluster_lost(id, &secret, now);
                }
                ok
            }
        };
        let c = self.cluster_mut();
        let answer = payload(&[if ok { "z" } else { "y" }, &c.node, id], None);
        c.publish(&node_channel(node), &answer);
    }

    /// The node that had `id` connected answered our `Takeover`: ask Redis again (the user's
    /// secret is there now), or refuse the join.
    pub(super) fn released(&mut self, id: &str, ok: bool, now: Instant) {
        let lower = key(id);
        let Some(a) = self.cluster_mut().asking.remove(&lower) else { return };
        let presented = match self.net.conns.get(a.token).map(|c| &c.phase) {
            Some(Phase::Ws(s)) => s.asked().map(|a| a.secret),
            _ => None,
        };
        let grace = self.cfg.resume_grace;
        let c = self.cluster_mut();
        let then = Await::Resume { token: a.token, generation: a.generation, id: a.id.clone(), asked: true };
        let sent = ok && presented.is_some_and(|p| c.claim_resume(&lower, &p, grace, then, now));
        if !sent {
            c.claiming.remove(&lower);
            let verdict = if ok { Granted::Failed } else { Granted::No };
            self.joined(a.token, a.generation, &a.id, verdict, now);
        }
    }

    /// Joins whose `Takeover` went unanswered past their deadline: the other node is gone or
    /// not keeping up, and the id stays its: refused (`id_taken`).
    pub(super) fn give_up_asking(&mut self, now: Instant) {
        let Some(c) = &mut self.cluster else { return };
        let due: Vec<String> =
            c.asking.iter().filter(|(_, a)| a.until <= now).map(|(k, _)| k.clone()).collect();
        for k in due {
            let Some(a) = self.cluster_mut().asking.remove(&k) else { continue };
            self.cluster_mut().claiming.remove(&k);
            self.joined(a.token, a.generation, &a.id, Granted::No, now);
        }
    }

    /// Ends a join of `id` (as typed): the welcome and presence, or a refusal. A grant that
    /// cannot be used (the connection went meanwhile, or the id was taken here) is given back.
    pub(super) fn joined(&mut self, token: usize, generation: u32, id: &str, verdict: Granted, now: Instant) {
        let alive = self
            .net
            .conns
            .get(token)
            .is_some_and(|c| c.generation == generation && !c.peer.is(Flag::Closing));
        if !alive {
            return self.give_back(verdict, id);
        }
        let conn = &mut self.net.conns[token];
        if let Phase::Ws(_) = conn.phase
            && conn.peer.unset(Flag::Claiming)
        {
            self.again.push(token); // read whatever the client sent while it waited
        }
        match verdict {
            Granted::No => return self.refuse_id(token, id, ErrorCode::IdTaken, now),
            Granted::Failed => return self.refuse_busy(token, now),
            Granted::Moved(backlog, carried) => return self.take_over(token, id, *backlog, carried, now),
            Granted::Yes(_) | Granted::Locally => {}
        }
        // Banned (or its token revoked) while Redis was asked: refused after all.
        if let Some(until) = self.banned(id) {
            self.give_back(verdict, id);
            return self.refuse_banned(token, id, until, now);
        }
        if self.revoked_session(token, id) {
            self.give_back(verdict, id);
            return self.unauthorized(token, crate::auth::Reason::Revoked, now);
        }
        // The bucket the id left in Redis, wherever it was last used (see `cluster::JOIN`).
        let carried = match &verdict {
            Granted::Yes(b) => *b,
            _ => None,
        };
        let secret = self.secrets.of(self.net.conns[token].generation, id);
        let Phase::Ws(s) = &mut self.net.conns[token].phase else { return };
        let (presented, pseq) = s.take_asked().map_or((None, 0), |a| (Some(a.secret), a.pseq));
        let entry = entry_of(s);
        match self.chat.join_as(id, token, &secret, presented.as_ref(), pseq, entry, now, &mut self.net) {
            Ok((user, true)) => {
                // Back within its grace: still a member everywhere, nothing to announce. Its
                // old secret must not let it in on another node either.
                self.net.stats.resumes += 1;
                // Granted by Redis, the token was spent by `RESUME` itself, atomically with the
                // claim (see there); decided here alone, it is spent when Redis hears of it.
                if let (Some(c), Granted::Locally) = (&mut self.cluster, &verdict) {
                    c.spent(&key(&user));
                }
                let conn = &mut self.net.conns[token];
                info!(target: "chatloop::session", "session resumed id={user} peer={}", conn.addr);
                if let Phase::Ws(_) = conn.phase {
                    conn.peer.set(Flag::Joined);
                }
                self.bucket_from_id(token, &key(&user), carried, now);
                // Its new token may allow fewer rooms than the one it was held with.
                self.narrow(token, &user);
            }
            Ok((user, false)) => {
                let conn = &mut self.net.conns[token];
                info!(target: "chatloop::session", "session open id={user} peer={}", conn.addr);
                if let Phase::Ws(_) = conn.phase {
                    conn.peer.set(Flag::Joined);
                }
                // The rate limit belongs to the id: a reconnect does not buy a new burst, here
                // or on another node.
                self.bucket_from_id(token, &key(&user), carried, now);
                if let Some(c) = &mut self.cluster {
                    c.publish(ALL, &payload(&["J", &c.node, &user], None));
                }
                if entry.lobby {
                    let first = self.chat.local_count(LOBBY) == 1;
                    self.cluster_joined(&user, LOBBY, first);
                }
            }
            Err(code) => {
                self.give_back(verdict, id);
                self.refuse_id(token, id, code, now)
            }
        }
    }

    /// Redis let `id` in on connection `token` with its resume secret, taken over from the
    /// node that held it in its grace: welcome it back in its rooms and announce it as ours
    /// (that node then lets its hold go, and nobody sees a leave: see `chat::moved`).
    pub(super) fn take_over(
        &mut self,
        token: usize,
        id: &str,
        backlog: Backlog,
        carried: Option<Bucket>,
        now: Instant,
    ) {
        let secret = self.secrets.of(self.net.conns[token].generation, id);
        let Phase::Ws(s) = &mut self.net.conns[token].phase else { return };
        let pseq = s.take_asked().map_or(0, |a| a.pseq);
        let entry = entry_of(s);
        let t = match self.chat.take_over(id, token, &secret, pseq, backlog, entry, &mut self.net) {
            Ok(t) => t,
            Err(code) => {
                self.give_back(Granted::Moved(Box::default(), None), id);
                return self.refuse_id(token, id, code, now);
            }
        };
        self.net.stats.resumes += 1;
        let conn = &mut self.net.conns[token];
        info!(target: "chatloop::session", "session resumed id={} peer={} from=another-node", t.id, conn.addr);
        if let Phase::Ws(_) = conn.phase {
            conn.peer.set(Flag::Joined);
        }
        // The bucket it had on the other node, carried by Redis: no fresh burst for moving.
        self.bucket_from_id(token, &key(&t.id), carried, now);
        if let Some(c) = &mut self.cluster {
            c.publish(ALL, &payload(&["J", &c.node, &t.id], None));
        }
        for (room, first) in &t.rooms {
            self.cluster_joined(&t.id, room, *first);
        }
        self.narrow(token, &t.id);
    }

    /// The secret presented on connection `token`, if it is a WebSocket session.
    pub(super) fn token_of_ws(&self, token: usize) -> Option<crate::chat::ids::Secret> {
        match &self.net.conns.get(token)?.phase {
            Phase::Ws(s) => s.asked().map(|a| a.secret),
            _ => None,
        }
    }

    pub(super) fn give_back(&mut self, verdict: Granted, id: &str) {
        if matches!(verdict, Granted::Yes(_) | Granted::Moved(..))
            && let Some(c) = &mut self.cluster
        {
            c.release(&key(id));
        }
    }

    pub(super) fn refuse_id(&mut self, token: usize, id: &str, code: ErrorCode, now: Instant) {
        let close = if code == ErrorCode::IdTaken { 4409 } else { 4400 };
        info!("refused id {id:?} from {}: {}", self.net.conns[token].addr, code.as_str());
        self.net.error(token, code, None);
        self.close_ws(token, CloseCode::from(close), code.as_str(), None, now);
    }

    pub(super) fn refuse_busy(&mut self, token: usize, now: Instant) {
        warn!("cluster: cannot register an id now; refusing {}", self.net.conns[token].addr);
        self.net.error(token, ErrorCode::ClusterUnavailable, None);
        self.close_ws(token, CloseCode::Again, "cluster_unavailable", None, now);
    }

    /// Records why the connection ends (first reason wins), frees its id if it holds one, and
    /// logs the end of the session. A client that sent its own close has left: its id is
    /// free at once. Any other end is a lost connection: the user is held for its resume
    /// token (`--resume-grace`), still in its rooms and listed, with nothing announced. The
    /// rate-limit bucket stays with the id either way (`bucket_to_id`).
    pub(super) fn leave(&mut self, token: usize, reason: Reason) {
        let Some(conn) = self.net.conns.get_mut(token) else { return };
        let reason = *conn.reason.get_or_insert(reason);
        let Phase::Ws(s) = &mut conn.phase else { return };
        if !conn.peer.unset(Flag::Joined) {
            return;
        }
        let Some(id) = self.chat.id_of(token).cloned() else { return };
        let key = crate::chat::ids::key(&id);
        let now = Instant::now();
        // A moderation close leaves too: nothing is held for a resume.
        let left = matches!(reason, Reason::ClientClose | Reason::Shutdown | Reason::Moderated);
        let emptied = if left {
            self.chat.leave(&id)
        } else {
            self.chat.lose(&id, self.secrets.of(conn.generation, &id), now + self.cfg.resume_grace);
            self.net.stats.ids_held += 1;
            Vec::new()
        };
        let bucket = std::mem::replace(&mut s.bucket, Bucket::new(0, now));
        let secs = conn.opened.elapsed(Stamp::of(now)).as_secs_f32();
        let (peer, why) = (conn.addr, reason.as_str());
        match reason {
            Reason::ClientClose | Reason::Shutdown | Reason::Moderated => {
                info!(target: "chatloop::session", "session closed id={id} peer={peer} duration={secs:.1}s reason={why}")
            }
            _ => {
                warn!(target: "chatloop::session", "session closed id={id} peer={peer} duration={secs:.1}s reason={why}")
            }
        }
        // Before `cluster_lost`, which carries it to Redis with the resume data.
        self.bucket_to_id(key, bucket, now);
        if left {
            self.cluster_left(&id, &emptied, now);
        } else if let Phase::Ws(_) = &self.net.conns[token].phase {
            let secret = self.secrets.of(self.net.conns[token].generation, &id);
            self.cluster_lost(&id, &secret, now);
        }
    }

    /// Hands an ended session's rate-limit bucket to its id (lowercased `key`). Every way a
    /// session ends goes through here, by way of `leave`: left, lost, replaced by a resume
    /// (here or asked by another node), closed by the server. The bucket is kept until it
    /// would have refilled (the sweep forgets it then, and a hold that expires leaves it
    /// here), so a reconnect does not buy a new burst; in a cluster `cluster_lost` (beside the
    /// resume hash) and `cluster_left` (when the id is freed) also put its level in Redis, for
    /// a session of the id on another node. Only a bucket that has been drawn on says
    /// anything: a full one is what a newcomer gets.
    pub(super) fn bucket_to_id(&mut self, key: String, bucket: Bucket, now: Instant) {
        if bucket.full(self.cfg.rate_limit, now) {
            self.buckets.remove(&key);
        } else {
            self.buckets.insert(key, bucket);
        }
    }

    /// The other half: a session that takes id `key` (lowercased) on connection `token`, new,
    /// resumed or taken over from another node, starts from the bucket the id left here or
    /// the one `carried` in Redis from wherever it was last used (see `cluster::RESUME`,
    /// `cluster::JOIN`), whichever holds fewer tokens now; a fresh burst only if there is
    /// neither.
    pub(super) fn bucket_from_id(&mut self, token: usize, key: &str, carried: Option<Bucket>, now: Instant) {
        let rate = self.cfg.rate_limit;
        let pick = match (self.buckets.remove(key), carried) {
            (Some(a), Some(b)) => Some(if a.level(rate, now) <= b.level(rate, now) { a } else { b }),
            (a, b) => a.or(b),
        };
        if let (Some(b), Some(Phase::Ws(s))) = (pick, self.net.conns.get_mut(token).map(|c| &mut c.phase)) {
            s.bucket = b;
        }
    }

    /// Local user `id` was lost, held for `secret`: Redis keeps the secret's hash through the
    /// grace, and the private messages kept for it, so that the client may resume on another
    /// node.
    pub(super) fn cluster_lost(&mut self, id: &str, secret: &crate::chat::ids::Secret, now: Instant) {
        let Some(c) = &mut self.cluster else { return };
        let k = key(id);
        let (pseq, kept) = self.chat.held_backlog(&k, now).unwrap_or_default();
        // The bucket the session handed to the id (`bucket_to_id`), if it was drawn on: a
        // resume on another node carries it on.
        let level = self.buckets.get(&k).map(|b| b.level(self.cfg.rate_limit, now));
        c.lost(&k, secret, self.cfg.resume_grace, pseq, &kept, level);
    }

    /// Redis's answer to a join presenting a resume secret (`RESUME`).
    pub(super) fn resume_reply(
        &mut self,
        token: usize,
        generation: u32,
        id: String,
        asked: bool,
        frame: &BytesFrame,
        now: Instant,
    ) {
        let lower = key(&id);
        let verdict = match frame {
            BytesFrame::Array { data, .. } => match data.first().and_then(frame_number) {
                Some(0) => Granted::Yes(carried_bucket(data.get(1), self.cfg.rate_limit, now)),
                Some(1) => {
                    let carried = carried_bucket(data.get(4), self.cfg.rate_limit, now);
                    Granted::Moved(Box::new(backlog(&data[1..])), carried)
                }
                // Redis ran it after its deadline (it had stalled): it did nothing.
                Some(-3) => Granted::Failed,
                Some(-2) if !asked => {
                    match (data.get(1).and_then(|f| f.as_str()), self.token_of_ws(token)) {
                        // Connected on that node as far as it knows: ask it (the join
                        // keeps its claim on the id meanwhile).
                        (Some(node), Some(secret)) => {
                            let c = self.cluster_mut();
                            let ask =
                                payload(&["Z", &c.node, &id, &crate::chat::ids::token_text(&secret)], None);
                            if c.publish(&node_channel(node), &ask) {
                                let until = now + c.limit();
                                c.asking
                                    .insert(lower, crate::cluster::Asking { token, generation, id, until });
                                return;
                            }
                            Granted::Failed
                        }
                        _ => Granted::No,
                    }
                }
                Some(_) => Granted::No,
                None => Granted::Failed,
            },
            _ => Granted::Failed,
        };
        self.cluster_mut().claiming.remove(&lower);
        self.joined(token, generation, &id, verdict, now);
    }
}

/// How a join's id claim ended.
#[derive(Debug)]
pub(super) enum Granted {
    /// Redis gave it to us, with the rate-limit bucket the id left there (see `cluster::JOIN`).
    Yes(Option<Bucket>),
    /// Another node holds it.
    No,
    /// Redis answered with an error.
    Failed,
    /// Redis gave it to us with the resume secret of a user held on another node, with what
    /// it kept for that user and its rate-limit bucket there.
    Moved(Box<Backlog>, Option<Bucket>),
    /// No cluster, or Redis is away: decided by this node alone.
    Locally,
}

/// What a `RESUME` reply after its {1} carries: {node, last pseq, messages}. Anything
/// unreadable counts as nothing kept.
fn backlog(data: &[BytesFrame]) -> Backlog {
    let pseq = data.get(1).and_then(|f| f.as_str()).and_then(|p| p.parse().ok()).unwrap_or(0);
    let kept = match data.get(2) {
        Some(BytesFrame::Array { data, .. }) => data
            .iter()
            .filter_map(|l| match l {
                BytesFrame::BlobString { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Backlog { pseq, kept }
}

/// The rate-limit bucket a `RESUME` or `JOIN` reply carries from the id's last session:
/// "LEVEL AGO", its tokens and how many ms ago (by Redis's clock) they were counted; None if
/// none was kept (it was full) or the field is unreadable.
pub(super) fn carried_bucket(f: Option<&BytesFrame>, rate: u32, now: Instant) -> Option<Bucket> {
    let (level, ago) = f?.as_str()?.split_once(' ')?;
    let ago = std::time::Duration::from_millis(ago.parse::<i64>().ok()?.max(0) as u64);
    Some(Bucket::carried(level.parse().ok()?, ago, rate, now))
}
