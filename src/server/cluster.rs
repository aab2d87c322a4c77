//! The loop's cluster half: the Redis link's events, joins that wait for Redis to grant the
//! id (or to check a resume token, asking the node that has the user connected if need be),
//! joins that wait for Redis's history of their room (`chat::fetch`), users taken over from
//! or by another node (`chat::moved`), private messages kept in Redis for users in their
//! grace, forwarding room and private messages to other nodes, and heartbeats.
//!
//! Nothing here blocks: every wait is a reply awaited on the one link (`Cluster::waiting`)
//! or a message from another node, with a deadline. A room message reaches local users when
//! Redis has numbered it (one round trip), or at once, numbered here, while Redis is away; a
//! node ignores its own publications when they come back.

use super::Server;
use crate::chat::Sink;
use crate::chat::fetch::{Fetch, Kept};
use crate::chat::ids::key;
use crate::chat::moved::Backlog;
use crate::cluster::{
    ALL, Await, KEY_PREFIX, Msg, Numbered, Sent, channel_room, node_channel, payload, roster_fields,
};
use crate::conn::{Bucket, Phase};
use crate::protocol::{self, ErrorCode, LOBBY};
use crate::redis::{Input, error_text};
use bytes::Bytes;
use log::{debug, info, warn};
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;

impl Server {
    /// Readiness on the Redis socket.
    pub(super) fn redis_ready(&mut self, now: Instant) {
        let Some(c) = &mut self.cluster else { return };
        let mut inputs = Vec::new();
        self.redis_again = c.link.ready(self.poll.registry(), now, &mut inputs);
        for input in inputs {
            self.cluster_input(input, now);
        }
    }

    /// Once per turn: reconnect when due, heartbeat, and forget silent nodes.
    pub(super) fn cluster_tick(&mut self, now: Instant) {
        if self.redis_again {
            self.redis_ready(now);
        }
        let Some(c) = &mut self.cluster else { return };
        if c.stalled(now) {
            // Whatever arrived since the turn's events were read counts first.
            self.redis_ready(now);
        }
        let Some(c) = &mut self.cluster else { return };
        if c.stalled(now) {
            // Logged by the link, once per outage.
            let why = format!("no reply within {:?}", c.limit());
            c.counters.stalls += 1;
            c.link.fail(self.poll.registry(), &why, now);
            self.cluster_input(Input::Down, now);
        }
        let Some(c) = &mut self.cluster else { return };
        c.link.poll_connect(self.poll.registry(), now);
        if c.beat_due(now) {
            if c.is_up() {
                let (users, memberships) = self.chat.local_counts();
                let beat = payload(&["B", &c.node, &users.to_string(), &memberships.to_string()], None);
                c.publish(ALL, &beat);
                c.claim(self.chat.local_keys(), || Await::Refresh);
            }
            for node in c.expire(now) {
                info!("cluster: node {node} silent for {:?}: its users are gone", c.ttl());
                self.chat.drop_node(&node);
            }
        }
        let Some(c) = &mut self.cluster else { return };
        if c.ping_due(now) {
            c.ping();
        }
        self.give_up_asking(now);
    }

    /// Writes what the turn queued for Redis: one write for the whole turn's publishes.
    /// True if the link failed doing so; its consequences (errors to senders, local joins)
    /// are queued, and the caller must settle again.
    pub(super) fn cluster_flush(&mut self, now: Instant) -> bool {
        self.cluster_evicted();
        self.cluster_fetches();
        self.cluster_keep();
        let Some(c) = &mut self.cluster else { return false };
        let failed = !c.link.flush(self.poll.registry(), now);
        if failed {
            self.cluster_input(Input::Down, now);
        }
        failed
    }

    fn cluster_input(&mut self, input: Input, now: Instant) {
        let Some(c) = &mut self.cluster else { return };
        if matches!(input, Input::Reply(_) | Input::Message { .. }) && c.heard(now) {
            // Redis was silent for a whole timeout and is back: another node may have dropped
            // its link meanwhile, and what Redis now runs from our queue may count that dead
            // connection as a receiver. What we await can no longer be confirmed.
            for w in c.unconfirm() {
                match w {
                    Await::Private { from, to, cid } => {
                        self.tell(&from, ErrorCode::ClusterUnconfirmed, Some(&to), cid.as_deref())
                    }
                    Await::Room { from, room, cid, number } => {
                        self.unnumbered(&from, &room, cid.as_deref(), &number);
                        self.tell_room(&from, ErrorCode::ClusterUnconfirmed, &room, cid.as_deref())
                    }
                    _ => {}
                }
            }
        }
        let Some(c) = &mut self.cluster else { return };
        match input {
            Input::Up => {
                self.chat.cluster_down = false;
                // Whatever Redis numbered while we were away passed the mirrors by.
                self.chat.history.stale_all();
                c.subscribed(self.chat.local_rooms());
                c.clock_sent(now);
                // Re-register whoever joined while Redis was away (or before it restarted),
                // and tell everyone who is here and in which rooms.
                c.claim(self.chat.local_keys(), || Await::Refresh);
                let roster = self.roster();
                self.cluster_mut().publish(ALL, &roster);
            }
            Input::Down => {
                self.chat.cluster_down = true;
                self.chat.history.stale_all();
                // Claims in flight are decided locally, as joins are while Redis is away. Each
                // message Redis did not confirm gets its sender one error: `cluster_unavailable`
                // if it was still queued (dropped, never sent), `cluster_unconfirmed` if it was
                // written (Redis may have passed it on, or may yet when it resumes).
                for (w, sent) in c.take_waiting() {
                    let code = match sent {
                        Sent::Written => ErrorCode::ClusterUnconfirmed,
                        Sent::Unwritten => ErrorCode::ClusterUnavailable,
                    };
                    match w {
                        Await::Claim { token, generation, id }
                        | Await::Resume { token, generation, id, .. } => {
                            self.cluster_mut().claiming.remove(&key(&id));
                            self.joined(token, generation, &id, Granted::Locally, now);
                        }
                        Await::Private { from, to, cid } => self.tell(&from, code, Some(&to), cid.as_deref()),
                        Await::Room { from, room, cid, number } => {
                            self.unnumbered(&from, &room, cid.as_deref(), &number);
                            self.tell_room(&from, code, &room, cid.as_deref())
                        }
                        Await::Fetch { generation, fetch } => self.fetch_done(generation, &fetch, None),
                        // Still kept here: the user gets it if it resumes on this node.
                        Await::Keep { .. } => {}
                        Await::Refresh | Await::Ignore | Await::Clock { .. } => {}
                    }
                }
            }
            Input::Reply(frame) => {
                let Some(w) = c.answered(now) else {
                    warn!("cluster: a reply nobody asked for: {frame:?}");
                    return;
                };
                self.reply(w, frame, now);
            }
            Input::Message { channel, payload } => {
                c.counters.received += 1;
                let on = if &channel[..] == ALL {
                    Channel::All
                } else if let Some(room) = channel_room(&channel) {
                    Channel::Room(room.to_string())
                } else {
                    Channel::Mine
                };
                match Msg::parse(&payload) {
                    Some(m) => self.message(m, &on, now),
                    None => debug!("cluster: ignored a malformed message ({} bytes)", payload.len()),
                }
            }
        }
    }

    fn cluster_mut(&mut self) -> &mut crate::cluster::Cluster {
        self.cluster.as_mut().expect("cluster configured")
    }

    fn reply(&mut self, w: Await, frame: BytesFrame, now: Instant) {
        if let Some(e) = error_text(&frame) {
            warn!("cluster: Redis refused a command: {e}");
        }
        match w {
            Await::Ignore => {}
            Await::Clock { sent } => {
                let BytesFrame::Array { data, .. } = &frame else { return };
                let n = |i: usize| data.get(i).and_then(|f| f.as_str()).and_then(|t| t.parse::<i64>().ok());
                if let (Some(secs), Some(micros)) = (n(0), n(1)) {
                    self.cluster_mut().clock_read(secs, micros, sent, now);
                }
            }
            Await::Fetch { generation, fetch } => {
                let kept = fetched(&frame);
                if kept.is_none() {
                    warn!("cluster: could not read room {}'s history from Redis: {frame:?}", fetch.room);
                }
                self.fetch_done(generation, &fetch, kept);
            }
            Await::Room { from, room, cid, number } => {
                // PUBLISH counts the connections it reached: ours (a node with members in a
                // room hears its channel) and one per other node listening. Only ours, while
                // we list members of the room elsewhere, means their node did not hear it (it
                // is reconnecting, or gone): they missed it, and the sender is told so. With
                // three or more nodes a partial miss goes unnoticed here. A numbered message
                // answers {seq, epoch, receivers} and is delivered here now.
                let BytesFrame::Array { data, .. } = frame else {
                    return self.unnumbered(&from, &room, cid.as_deref(), &number);
                };
                let (Some(seq), Some(epoch), Some(reached)) = (
                    data.first().and_then(frame_number),
                    data.get(1).and_then(|f| f.as_str()).map(str::to_string),
                    data.get(2).and_then(frame_number),
                ) else {
                    return self.unnumbered(&from, &room, cid.as_deref(), &number);
                };
                let line = protocol::with_seq(&number.template, seq as u64);
                let sender = (self.chat.token_of(&from) == Some(number.token))
                    .then_some((number.token, cid.as_deref()));
                self.chat.deliver_numbered(&room, &epoch, seq as u64, &line, sender, &mut self.net);
                let remote = self
                    .chat
                    .rooms
                    .key(&room)
                    .map(|k| self.chat.rooms.room(k))
                    .is_some_and(|r| r.len() > r.local_len());
                if reached <= 1 && remote {
                    self.tell_room(&from, ErrorCode::ClusterUnavailable, &room, cid.as_deref());
                }
            }
            Await::Claim { token, generation, id } => {
                self.cluster_mut().claiming.remove(&key(&id));
                // `JOIN`: {0, the bucket the id left} or {-1}: held elsewhere.
                let verdict = match &frame {
                    BytesFrame::Array { data, .. } => match data.first().and_then(frame_number) {
                        Some(0) => Granted::Yes(carried_bucket(data.get(1), self.cfg.rate_limit, now)),
                        Some(_) => Granted::No,
                        None => Granted::Failed,
                    },
                    _ => Granted::Failed,
                };
                self.joined(token, generation, &id, verdict, now);
            }
            Await::Resume { token, generation, id, asked } => {
                let lower = key(&id);
                let verdict = match &frame {
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
                                    let ask = payload(
                                        &["Z", &c.node, &id, &crate::chat::ids::token_text(&secret)],
                                        None,
                                    );
                                    if c.publish(&node_channel(node), &ask) {
                                        let until = now + c.limit();
                                        c.asking.insert(
                                            lower,
                                            crate::cluster::Asking { token, generation, id, until },
                                        );
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
            Await::Keep { from, to, line } => {
                // Taken over by another node meanwhile: the message follows the user there.
                let Some(node) = frame.as_str().filter(|n| !n.is_empty()).map(str::to_string) else { return };
                let c = self.cluster_mut();
                let p = payload(&["P", &c.node, &to, &from], Some(&line));
                let then = Await::Private { from: Rc::clone(&from), to: Rc::clone(&to), cid: None };
                if !c.publish_awaiting(&node_channel(&node), &p, then) {
                    self.tell(&from, ErrorCode::Undelivered, Some(&to), None);
                }
            }
            Await::Refresh => {
                let BytesFrame::Array { data, .. } = frame else { return };
                for key in data {
                    let Some(key) = key.as_str().and_then(|k| k.strip_prefix(KEY_PREFIX)) else { continue };
                    // Another node holds an id our user has: it was claimed there while we
                    // could not renew it (Redis was away longer than the TTL). Theirs stands.
                    if let Some(token) = self.chat.token_of(key) {
                        warn!("cluster: id {key} is held by another node; closing ours");
                        let why = "id_taken: claimed on another server";
                        self.net.error(token, ErrorCode::IdTaken, None);
                        self.close_ws(
                            token,
                            CloseCode::from(4409),
                            why,
                            Some(crate::metrics::Reason::IdConflict),
                            now,
                        );
                    }
                }
            }
            Await::Private { from, to, cid } => {
                // PUBLISH answers with the number of subscribers reached: none means the node
                // that held the recipient is gone.
                if matches!(frame, BytesFrame::Number { data: 0, .. }) {
                    self.tell(&from, ErrorCode::UnknownRecipient, Some(&to), cid.as_deref());
                }
            }
        }
    }

    /// Sends local user `id` (if still here) an error about a message it sent (with the
    /// client's `cid` for it, if it gave one).
    fn tell(&mut self, id: &str, code: ErrorCode, to: Option<&str>, cid: Option<&str>) {
        if let Some(token) = self.chat.token_of(id) {
            self.tagged_error(token, protocol::error(code, to), code, cid);
        }
    }

    /// Sends local user `id` (if still here) an error about a message it sent to `room`.
    fn tell_room(&mut self, id: &str, code: ErrorCode, room: &str, cid: Option<&str>) {
        if let Some(token) = self.chat.token_of(id) {
            self.room_error(token, code, room, cid);
        }
    }

    fn room_error(&mut self, token: usize, code: ErrorCode, room: &str, cid: Option<&str>) {
        self.tagged_error(token, protocol::room_error(code, room), code, cid);
    }

    fn tagged_error(&mut self, token: usize, line: Bytes, code: ErrorCode, cid: Option<&str>) {
        let line = match cid {
            Some(cid) => protocol::with_cid(&line, cid),
            None => line,
        };
        self.net.push(token, &line);
        self.net.stats.error_sent(code);
    }

    /// "R node id @room ... id @room ...": everyone here and the rooms they are in.
    fn roster(&self) -> Vec<u8> {
        let c = self.cluster.as_ref().expect("cluster configured");
        let fields = roster_fields(self.chat.local_members().into_iter());
        let mut all: Vec<&str> = vec!["R", &c.node];
        all.extend(fields.iter().map(|f| &**f));
        payload(&all, None)
    }

    fn message(&mut self, m: Msg, on: &Channel, now: Instant) {
        let to_all = *on == Channel::All;
        let c = self.cluster.as_mut().expect("cluster configured");
        let me = Rc::clone(&c.node);
        let node = m.node();
        if node == Some(&*me) {
            return; // our own publication, back from the all-channel
        }
        if let Some(n) = node
            && !matches!(m, Msg::Bye { .. })
            && c.seen(n, now)
            && !matches!(m, Msg::Hello { .. } | Msg::Roster { .. })
        {
            // A node we had not heard of (we missed its hello): ask who is there.
            c.publish(&node_channel(n), &payload(&["Q", &me], None));
        }
        match m {
            Msg::Room { room, epoch, line, .. } if *on == Channel::Room(room.to_string()) => {
                self.chat.deliver_room(room, epoch, &line, &mut self.net);
            }
            Msg::Join { node, id } => {
                // Taken over there with its resume secret, if we held it: no leave (see
                // `chat::moved`).
                let emptied = self.chat.moved(node, id);
                self.cluster_unlisten(&emptied);
                self.chat.remote_join(node, id)
            }
            Msg::Leave { node, id } => self.chat.remote_leave(node, id),
            Msg::RoomJoin { node, id, room } => self.chat.remote_room(node, id, room, true),
            Msg::RoomLeave { node, id, room } => self.chat.remote_room(node, id, room, false),
            Msg::Hello { node } | Msg::Query { node } => {
                let roster = self.roster();
                self.cluster_mut().publish(&node_channel(node), &roster);
            }
            Msg::Beat { node, count, memberships } => {
                if self.chat.count_on(node) != (count, memberships) {
                    // Drifted (a lost event, or we restarted): resynchronise.
                    let q = payload(&["Q", &me], None);
                    self.cluster_mut().publish(&node_channel(node), &q);
                }
            }
            Msg::Bye { node } => {
                self.cluster_mut().forget(node);
                self.chat.drop_node(node);
            }
            Msg::Roster { node, members } => {
                // A user of ours taken over there while we could not hear it: let it go.
                let mut emptied = Vec::new();
                for (id, _) in &members {
                    emptied.extend(self.chat.moved(node, id));
                }
                self.cluster_unlisten(&emptied);
                self.chat.remote_roster(node, &members)
            }
            Msg::Private { node, to, from, line } if !to_all => {
                if let Err(code) = self.chat.deliver_private(from, to, &line, now, &mut self.net) {
                    let kind = match code {
                        ErrorCode::RecipientBusy => "K",
                        ErrorCode::Undelivered => "U",
                        _ => "E",
                    };
                    let e = payload(&[kind, to, from], None);
                    self.cluster_mut().publish(&node_channel(node), &e);
                }
            }
            Msg::Bounce { to, from } if !to_all => {
                self.tell(from, ErrorCode::UnknownRecipient, Some(to), None)
            }
            Msg::Busy { to, from } if !to_all => self.tell(from, ErrorCode::RecipientBusy, Some(to), None),
            Msg::Undelivered { to, from } if !to_all => {
                self.tell(from, ErrorCode::Undelivered, Some(to), None)
            }
            Msg::Takeover { node, id, token } if !to_all => self.release_for(node, id, token, now),
            Msg::Released { id, ok, .. } if !to_all => self.released(id, ok, now),
            _ => debug!("cluster: ignored a message on the wrong channel"),
        }
    }

    /// Starts a chat session's join: locally at once without a cluster (or while it is
    /// down), otherwise once Redis grants the id. Until then the session reads nothing.
    pub(super) fn begin_join(&mut self, token: usize, id: &str, now: Instant) {
        // A hold whose grace has just passed ends before the id is claimed, as the sweep
        // would have ended it: leaves announced, the key released, in that order.
        if let Some(g) = self.chat.end_expired(id, now, &mut self.net) {
            info!(target: "chatloop::session", "session ended id={} reason=grace_over", g.id);
            self.cluster_left(&g.id, &g.emptied, now);
        }
        let Phase::Ws(s) = &self.net.conns[token].phase else { return };
        let presented = s.asked.as_ref().map(|a| a.secret);
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
        if let Phase::Ws(s) = &mut self.net.conns[token].phase {
            s.claiming = true;
        }
    }

    /// Connection `old` of a local user is given up for a client that presents its secret
    /// (`presented`) on a new connection, here or on another node: it is closed with 4001
    /// `replaced` and its user held as if the connection had been lost now. False (nothing
    /// done) for a wrong secret.
    fn replace(&mut self, old: usize, presented: Option<&crate::chat::ids::Secret>, now: Instant) -> bool {
        let oc = &mut self.net.conns[old];
        let Phase::Ws(os) = &mut oc.phase else { return false };
        if presented.is_none_or(|p| *p != os.resume) || !os.joined {
            return false;
        }
        let Some(user) = self.chat.id_of(old) else { return false };
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
    fn release_for(&mut self, node: &str, id: &str, token: &str, now: Instant) {
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
                let ok = self.chat.holds.get_mut(&k, now).is_some()
                    && !self.chat.holds.refuses(&k, presented.as_ref(), now);
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
    fn released(&mut self, id: &str, ok: bool, now: Instant) {
        let lower = key(id);
        let Some(a) = self.cluster_mut().asking.remove(&lower) else { return };
        let presented = match self.net.conns.get(a.token).map(|c| &c.phase) {
            Some(Phase::Ws(s)) => s.asked.as_ref().map(|a| a.secret),
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
    fn give_up_asking(&mut self, now: Instant) {
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
    fn joined(&mut self, token: usize, generation: u32, id: &str, verdict: Granted, now: Instant) {
        let alive = self.net.conns.get(token).is_some_and(|c| c.generation == generation && !c.peer.closing);
        if !alive {
            return self.give_back(verdict, id);
        }
        if let Phase::Ws(s) = &mut self.net.conns[token].phase
            && s.claiming
        {
            s.claiming = false;
            self.again.push(token); // read whatever the client sent while it waited
        }
        match verdict {
            Granted::No => return self.refuse_id(token, id, ErrorCode::IdTaken, now),
            Granted::Failed => return self.refuse_busy(token, now),
            Granted::Moved(backlog, carried) => return self.take_over(token, id, *backlog, carried, now),
            Granted::Yes(_) | Granted::Locally => {}
        }
        // The bucket the id left in Redis, wherever it was last used (see `cluster::JOIN`).
        let carried = match &verdict {
            Granted::Yes(b) => *b,
            _ => None,
        };
        let Phase::Ws(s) = &mut self.net.conns[token].phase else { return };
        let secret = s.resume;
        let (presented, pseq) = s.asked.take().map_or((None, 0), |a| (Some(a.secret), a.pseq));
        match self.chat.join(id, token, &secret, presented.as_ref(), pseq, now, &mut self.net) {
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
                if let Phase::Ws(s) = &mut conn.phase {
                    s.joined = true;
                }
                self.bucket_from_id(token, &key(&user), carried, now);
            }
            Ok((user, false)) => {
                let conn = &mut self.net.conns[token];
                info!(target: "chatloop::session", "session open id={user} peer={}", conn.addr);
                if let Phase::Ws(s) = &mut conn.phase {
                    s.joined = true;
                }
                // The rate limit belongs to the id: a reconnect does not buy a new burst, here
                // or on another node.
                self.bucket_from_id(token, &key(&user), carried, now);
                if let Some(c) = &mut self.cluster {
                    c.publish(ALL, &payload(&["J", &c.node, &user], None));
                }
                let first =
                    self.chat.rooms.key(LOBBY).is_some_and(|k| self.chat.rooms.room(k).local_len() == 1);
                self.cluster_joined(&user, LOBBY, first);
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
    fn take_over(&mut self, token: usize, id: &str, backlog: Backlog, carried: Option<Bucket>, now: Instant) {
        let Phase::Ws(s) = &mut self.net.conns[token].phase else { return };
        let secret = s.resume;
        let pseq = s.asked.take().map_or(0, |a| a.pseq);
        let t = match self.chat.take_over(id, token, &secret, pseq, backlog, &mut self.net) {
            Ok(t) => t,
            Err(code) => {
                self.give_back(Granted::Moved(Box::default(), None), id);
                return self.refuse_id(token, id, code, now);
            }
        };
        self.net.stats.resumes += 1;
        let conn = &mut self.net.conns[token];
        info!(target: "chatloop::session", "session resumed id={} peer={} from=another-node", t.id, conn.addr);
        if let Phase::Ws(s) = &mut conn.phase {
            s.joined = true;
        }
        // The bucket it had on the other node, carried by Redis: no fresh burst for moving.
        self.bucket_from_id(token, &key(&t.id), carried, now);
        if let Some(c) = &mut self.cluster {
            c.publish(ALL, &payload(&["J", &c.node, &t.id], None));
        }
        for (room, first) in &t.rooms {
            self.cluster_joined(&t.id, room, *first);
        }
    }

    /// The secret presented on connection `token`, if it is a WebSocket session.
    fn token_of_ws(&self, token: usize) -> Option<crate::chat::ids::Secret> {
        match &self.net.conns.get(token)?.phase {
            Phase::Ws(s) => s.asked.as_ref().map(|a| a.secret),
            _ => None,
        }
    }

    /// Stops hearing rooms this node has no member of any more.
    fn cluster_unlisten(&mut self, rooms: &[Rc<str>]) {
        let Some(c) = &mut self.cluster else { return };
        for room in rooms {
            c.listen(room, false);
            self.chat.history.stale(room);
        }
    }

    /// Local user `id` was lost, held for `secret`: Redis keeps the secret's hash through the
    /// grace, and the private messages kept for it, so that the client may resume on another
    /// node.
    pub(super) fn cluster_lost(&mut self, id: &str, secret: &crate::chat::ids::Secret, now: Instant) {
        let Some(c) = &mut self.cluster else { return };
        let k = key(id);
        let (pseq, kept) = match self.chat.holds.get_mut(&k, now) {
            Some(a) => (a.private.pseq, a.private.kept.iter().map(|k| k.line.clone()).collect()),
            None => (0, Vec::new()),
        };
        // The bucket the session handed to the id (`bucket_to_id`), if it was drawn on: a
        // resume on another node carries it on.
        let level = self.buckets.get(&k).map(|b| b.level(self.cfg.rate_limit, now));
        c.lost(&k, secret, self.cfg.resume_grace, pseq, &kept, level);
    }

    /// Keeps in Redis what this turn kept for users in their grace (see `cluster::KEEP`).
    fn cluster_keep(&mut self) {
        let kept = std::mem::take(&mut self.chat.kept_away);
        let Some(c) = &mut self.cluster else { return };
        for k in kept {
            let then = Await::Keep { from: k.from, to: Rc::clone(&k.to), line: k.line };
            c.keep(&key(&k.to), &k.copy, k.pseq, self.cfg.resume_grace, crate::chat::resume::KEPT_MAX, then);
        }
    }

    fn give_back(&mut self, verdict: Granted, id: &str) {
        if matches!(verdict, Granted::Yes(_) | Granted::Moved(..))
            && let Some(c) = &mut self.cluster
        {
            c.release(&key(id));
        }
    }

    fn refuse_id(&mut self, token: usize, id: &str, code: ErrorCode, now: Instant) {
        let close = if code == ErrorCode::IdTaken { 4409 } else { 4400 };
        info!("refused id {id:?} from {}: {}", self.net.conns[token].addr, code.as_str());
        self.net.error(token, code, None);
        self.close_ws(token, CloseCode::from(close), code.as_str(), None, now);
    }

    fn refuse_busy(&mut self, token: usize, now: Instant) {
        warn!("cluster: cannot register an id now; refusing {}", self.net.conns[token].addr);
        self.net.error(token, ErrorCode::ClusterUnavailable, None);
        self.close_ws(token, CloseCode::Again, "cluster_unavailable", None, now);
    }

    /// A room message chat numbered itself: in a cluster that happens only while Redis is
    /// away (with the link up, Redis numbers them: `cluster_number`), so the other nodes
    /// cannot have it, and the sender is told.
    pub(super) fn cluster_room(&mut self, token: usize, room: &str, cid: Option<&str>) {
        if self.cluster.is_some() {
            self.room_error(token, ErrorCode::ClusterUnavailable, room, cid);
        }
    }

    /// A room message for Redis to number and publish (see `cluster::NUMBER`); it reaches
    /// this node's members too once Redis answers with its seq. If the link refuses, it is
    /// numbered here, in an epoch of this node's own, and the sender told.
    pub(super) fn cluster_number(
        &mut self,
        token: usize,
        from: &Rc<str>,
        room: &Rc<str>,
        template: Bytes,
        cid: Option<Rc<str>>,
    ) {
        let Some(c) = &mut self.cluster else { return };
        // For a room Redis has no epoch for: our log's, so that the room keeps the epoch its
        // members were told in `joined` (see `History::offer`).
        let epoch = self.chat.offer(room).to_string();
        let number = Box::new(Numbered { token, template: template.clone() });
        let then = Await::Room { from: Rc::clone(from), room: Rc::clone(room), cid: cid.clone(), number };
        if !c.number(room, &template, &epoch, then) {
            self.chat.number_here(room, &template, token, cid.as_deref(), &mut self.net);
            self.room_error(token, ErrorCode::ClusterUnavailable, room, cid.as_deref());
        }
    }

    /// A room message whose numbering by Redis failed: it reaches this node's members now,
    /// numbered here (the caller tells the sender what became of it elsewhere).
    fn unnumbered(&mut self, from: &str, room: &str, cid: Option<&str>, n: &Numbered) {
        let sender = if self.chat.token_of(from) == Some(n.token) { n.token } else { usize::MAX };
        self.chat.number_here(room, &n.template, sender, cid, &mut self.net);
    }

    /// A private message for a user on `node`; the sender's copy goes once it is on its way.
    pub(super) fn cluster_private(
        &mut self,
        token: usize,
        from: &Rc<str>,
        node: &str,
        to: &Rc<str>,
        line: &Bytes,
        cid: Option<Rc<str>>,
    ) {
        let Some(c) = &mut self.cluster else { return };
        let p = payload(&["P", &c.node, to, from], Some(line));
        let then = Await::Private { from: Rc::clone(from), to: Rc::clone(to), cid: cid.clone() };
        if c.publish_awaiting(&node_channel(node), &p, then) {
            let mine = match &cid {
                Some(cid) => protocol::with_cid(line, cid),
                None => line.clone(),
            };
            self.net.push(token, &mine);
        } else {
            let code = ErrorCode::ClusterUnavailable;
            self.tagged_error(token, protocol::error(code, Some(to)), code, cid.as_deref());
        }
    }

    /// Local user `id` joined `room`: tell the others, and start hearing the room if it is
    /// its first member here.
    pub(super) fn cluster_joined(&mut self, id: &str, room: &str, first_local: bool) {
        let Some(c) = &mut self.cluster else { return };
        if first_local {
            c.listen(room, true);
        }
        c.publish(ALL, &payload(&["j", &c.node, id, room], None));
    }

    /// Local user `id` left `room`: tell the others, and stop hearing it if nobody here is in it.
    pub(super) fn cluster_room_left(&mut self, id: &str, room: &str, last_local: bool) {
        let Some(c) = &mut self.cluster else { return };
        c.publish(ALL, &payload(&["l", &c.node, id, room], None));
        if last_local {
            c.listen(room, false);
            self.chat.history.stale(room);
        }
    }

    /// Tells the other nodes of memberships given up with an orphaned room (see
    /// `Chat::evict_orphan`): each one's leave, and this node stops hearing the room.
    fn cluster_evicted(&mut self) {
        let evicted = std::mem::take(&mut self.chat.evicted);
        let mut last: Option<Rc<str>> = None;
        for (id, room) in evicted {
            if last.as_ref().is_some_and(|l| *l != room) {
                self.cluster_unlisten(&[last.take().expect("some")]);
            }
            if let Some(c) = &mut self.cluster {
                c.publish(ALL, &payload(&["l", &c.node, &id, &room], None));
            }
            last = Some(room);
        }
        if let Some(room) = last {
            self.cluster_unlisten(&[room]);
        }
    }

    /// Sends Redis the history reads that this turn's joins wait for (see `chat::fetch`),
    /// after the turn's subscriptions, so that every message numbered after the read is
    /// heard. A read the link refuses is answered from the mirror at once.
    fn cluster_fetches(&mut self) {
        for f in std::mem::take(&mut self.chat.fetches) {
            let Some(conn) = self.net.conns.get(f.token) else { continue };
            let generation = conn.generation;
            let f = Box::new(f);
            match &mut self.cluster {
                Some(c) if c.is_up() => {
                    if let Err(Await::Fetch { fetch, .. }) = c.fetch(generation, f) {
                        self.fetch_done(generation, &fetch, None);
                    }
                }
                _ => self.fetch_done(generation, &f, None),
            }
        }
    }

    /// A history read ended (`kept` None: failed): the join it held is answered, if its
    /// connection is still the one that asked.
    fn fetch_done(&mut self, generation: u32, f: &Fetch, kept: Option<Kept>) {
        if self.net.conns.get(f.token).is_some_and(|c| c.generation == generation && !c.peer.closing) {
            self.chat.fetched(f, kept, &mut self.net);
        }
    }

    /// A local user left: free the id in Redis (unless it is held for the client's resume:
    /// then it stays ours until the hold ends), tell the others (a leave takes the user out of
    /// every room), and stop hearing the rooms `emptied` of local members.
    pub(super) fn cluster_left(&mut self, id: &str, emptied: &[Rc<str>], now: Instant) {
        let Some(c) = &mut self.cluster else { return };
        // With the bucket the id leaves here (`bucket_to_id`), kept until it would have
        // refilled, for a join on another node (see `cluster::LEFT`).
        let k = key(id);
        let rate = self.cfg.rate_limit;
        let level = self.buckets.get(&k).map(|b| b.level(rate, now));
        let refill = level.map_or(Duration::ZERO, |l| {
            Duration::from_secs_f32((2.0 * rate as f32 - l).max(0.0) / rate.max(1) as f32)
        });
        c.left(&k, level, refill + Duration::from_secs(1));
        for room in emptied {
            c.listen(room, false);
            self.chat.history.stale(room);
        }
        let leave = payload(&["L", &c.node, id], None);
        c.publish(ALL, &leave);
    }

    /// Shutting down: the others drop our users at once instead of after the TTL.
    pub(super) fn cluster_goodbye(&mut self) {
        let Some(c) = &mut self.cluster else { return };
        let bye = payload(&["G", &c.node], None);
        c.publish(ALL, &bye);
    }

    /// At exit: give queued releases and the goodbye a moment to reach Redis.
    pub(super) fn cluster_drain(&mut self) {
        if let Some(c) = &mut self.cluster {
            c.link.drain_for(std::time::Duration::from_millis(200));
        }
    }
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
fn carried_bucket(f: Option<&BytesFrame>, rate: u32, now: Instant) -> Option<Bucket> {
    let (level, ago) = f?.as_str()?.split_once(' ')?;
    let ago = std::time::Duration::from_millis(ago.parse::<i64>().ok()?.max(0) as u64);
    Some(Bucket::carried(level.parse().ok()?, ago, rate, now))
}

/// A `FETCH` reply: {epoch, latest seq, lines}; None for anything else.
fn fetched(frame: &BytesFrame) -> Option<Kept> {
    let BytesFrame::Array { data, .. } = frame else { return None };
    let [epoch, latest, BytesFrame::Array { data: lines, .. }] = &data[..] else { return None };
    let lines = lines.iter().map(|l| match l {
        BytesFrame::BlobString { data, .. } => Some(data.clone()),
        _ => None,
    });
    Some(Kept {
        epoch: epoch.as_str()?.to_string(),
        latest: u64::try_from(frame_number(latest)?).ok()?,
        lines: lines.collect::<Option<Vec<Bytes>>>()?,
    })
}

/// An integer in a Redis reply.
fn frame_number(f: &BytesFrame) -> Option<i64> {
    match f {
        BytesFrame::Number { data, .. } => Some(*data),
        _ => None,
    }
}

/// Which channel a cluster message came on.
#[derive(Debug, PartialEq, Eq)]
enum Channel {
    All,
    /// This node's own channel.
    Mine,
    Room(String),
}

/// How a join's id claim ended.
#[derive(Debug)]
enum Granted {
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
