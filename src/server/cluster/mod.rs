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
use super::join::{Granted, carried_bucket};
use crate::chat::Nodes;
use crate::chat::backend::Posted;
use crate::chat::fetch::Kept;
use crate::chat::ids::key;
use crate::cluster::{
    ALL, Await, EVENTS_CHANNEL, KEY_PREFIX, Msg, Sent, Shared, Ticket, channel_room, node_channel, payload,
};
use crate::protocol::ErrorCode;
use crate::redis::{Input, error_text, frame_number};
use bytes::Bytes;
use log::{debug, info, warn};
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};
use std::rc::Rc;
use std::time::Instant;
use tungstenite::protocol::frame::coding::CloseCode;

mod events;
mod gossip;
mod relay;

pub(in crate::server) use gossip::Channel;

impl Server {
    /// Readiness on the Redis socket.
    pub(in crate::server) fn redis_ready(&mut self, now: Instant) {
        let Some(c) = &mut self.cluster else { return };
        let mut inputs = Vec::new();
        self.redis_again = c.link.ready(self.poll.registry(), now, &mut inputs);
        for input in inputs {
            self.cluster_input(input, now);
        }
    }

    /// Once per turn: reconnect when due, heartbeat, and forget silent nodes.
    pub(in crate::server) fn cluster_tick(&mut self, now: Instant) {
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
            let ttl = c.ttl();
            for node in c.expire(now) {
                info!("cluster: node {node} silent for {ttl:?}: its users are gone");
                self.node_gone_events(&node, super::now_millis());
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
    pub(in crate::server) fn cluster_flush(&mut self, now: Instant) -> bool {
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

    pub(in crate::server) fn cluster_input(&mut self, input: Input, now: Instant) {
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
                    Await::Room(t) => self.room_failed(&t, ErrorCode::ClusterUnconfirmed, now),
                    _ => {}
                }
            }
        }
        let Some(c) = &mut self.cluster else { return };
        match input {
            Input::Up => {
                self.chat.set_nodes(Nodes::Up);
                // Whatever Redis numbered while we were away passed the mirrors by.
                self.chat.all_unheard();
                c.subscribed(self.chat.local_rooms());
                c.clock_sent(now);
                // Bans, mutes and revocations taken while we could not hear them.
                c.moderation_load(super::now_millis());
                // Re-register whoever joined while Redis was away (or before it restarted),
                // and tell everyone who is here and in which rooms.
                c.claim(self.chat.local_keys(), || Await::Refresh);
                let roster = self.roster();
                self.cluster_mut().publish(ALL, &roster);
                self.events_resync();
            }
            Input::Down => {
                self.chat.set_nodes(Nodes::Down);
                self.chat.all_unheard();
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
                        Await::Room(t) => self.room_failed(&t, code, now),
                        Await::Fetch { generation, fetch } => self.fetch_done(generation, &fetch, None),
                        Await::Read { token, generation, read } => {
                            self.read_done(token, generation, &read, None, now)
                        }
                        Await::Answer { token, generation, .. } => {
                            self.api_unkept(token, generation, code == ErrorCode::ClusterUnconfirmed, now)
                        }
                        // Still kept here: the user gets it if it resumes on this node.
                        Await::Keep { .. } => {}
                        Await::Emit(e) => self.emit_lost(*e, sent == Sent::Written),
                        // Asked again when the link is up again.
                        Await::Refresh
                        | Await::Ignore
                        | Await::Clock { .. }
                        | Await::Moderation
                        | Await::Events => {}
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
            Input::Message { channel, payload } if &channel[..] == EVENTS_CHANNEL => {
                self.event_pushed(&payload);
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

    pub(in crate::server) fn cluster_mut(&mut self) -> &mut crate::cluster::Cluster {
        self.cluster.as_mut().expect("cluster configured")
    }

    pub(in crate::server) fn reply(&mut self, w: Await, frame: BytesFrame, now: Instant) {
        if let Some(e) = error_text(&frame) {
            warn!("cluster: Redis refused a command: {e}");
        }
        match w {
            Await::Ignore | Await::Emit(_) => {}
            Await::Events => self.events_read(frame),
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
            Await::Read { token, generation, read } => {
                let shared = Shared::of(&frame);
                if shared.is_none() {
                    warn!("cluster: could not read room {}'s history from Redis: {frame:?}", read.room);
                }
                self.read_done(token, generation, &read, shared, now);
            }
            Await::Room(t) => self.room_numbered(&t, frame, now),
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
                self.resume_reply(token, generation, id, asked, &frame, now)
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
            Await::Refresh => self.refresh_reply(frame, now),
            Await::Moderation => self.moderation_loaded(&frame, now),
            Await::Answer { token, generation, body } => match error_text(&frame) {
                None => self.api_later(token, generation, crate::http::Status::Ok, &body, now),
                Some(_) => self.api_unkept(token, generation, false, now),
            },
            Await::Private { from, to, cid } => {
                // PUBLISH answers with the number of subscribers reached: none means the node
                // that held the recipient is gone.
                if matches!(frame, BytesFrame::Number { data: 0, .. }) {
                    self.tell(&from, ErrorCode::UnknownRecipient, Some(&to), cid.as_deref());
                }
            }
        }
    }

    /// Redis's answer to a room message (`NUMBER`): {seq, epoch, receivers}, anything else
    /// meaning it was not numbered. One call hands it to chat (`Chat::published`), which
    /// delivers it here either way.
    fn room_numbered(&mut self, t: &Ticket, frame: BytesFrame, now: Instant) {
        // PUBLISH counts the connections it reached: ours (a node with members in a room
        // hears its channel) and one per other node listening. Only ours, while we list
        // members of the room elsewhere, means their node did not hear it (it is
        // reconnecting, or gone): they missed it, and the sender is told so. With three or
        // more nodes a partial miss goes unnoticed here.
        let numbered = match &frame {
            BytesFrame::Array { data, .. } => match (
                data.first().and_then(frame_number),
                data.get(1).and_then(|f| f.as_str()),
                data.get(2).and_then(frame_number),
            ) {
                (Some(seq), Some(epoch), Some(reached)) => Some((seq as u64, epoch, reached)),
                _ => None,
            },
            _ => None,
        };
        let answer = numbered.map(|(seq, epoch, _)| (seq, epoch));
        let (remote, posted) = self.chat.published(t, answer, &mut self.net);
        if let Some(generation) = t.api {
            return self.api_published(t.token, generation, &t.room, posted, now);
        }
        if numbered.is_some_and(|(_, _, reached)| reached <= 1) && remote {
            self.tell_room(&t.from, ErrorCode::ClusterUnavailable, &t.room, t.cid.as_deref());
        }
    }

    /// A room message Redis will not number (the link failed, or could not confirm it):
    /// numbered here (`Chat::published`), its sender told `code`.
    fn room_failed(&mut self, t: &Ticket, code: ErrorCode, now: Instant) {
        let (_, mut posted) = self.chat.published(t, None, &mut self.net);
        if let Posted::Numbered { unconfirmed, .. } = &mut posted {
            *unconfirmed = Some(code);
        }
        match t.api {
            Some(generation) => self.api_published(t.token, generation, &t.room, posted, now),
            None => self.tell_room(&t.from, code, &t.room, t.cid.as_deref()),
        }
    }

    /// A heartbeat's or re-registration's answer: the ids another node holds.
    fn refresh_reply(&mut self, frame: BytesFrame, now: Instant) {
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
}

/// A `FETCH` reply: {epoch, latest seq, lines}; None for anything else.
pub(in crate::server) fn fetched(frame: &BytesFrame) -> Option<Kept> {
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
