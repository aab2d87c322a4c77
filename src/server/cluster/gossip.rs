//! Gossip between nodes: what arrives on the shared, own and room channels (`message`), the
//! roster a node sends when it comes up, and telling the others who joined or left which room.

use super::super::Server;
use crate::chat::ids::key;
use crate::cluster::{ALL, Msg, node_channel, payload, roster_fields};
use crate::protocol::ErrorCode;
use log::debug;
use std::rc::Rc;
use std::time::{Duration, Instant};

impl Server {
    /// "R node id @room ... id @room ...": everyone here and the rooms they are in.
    pub(in crate::server) fn roster(&self) -> Vec<u8> {
        let c = self.cluster.as_ref().expect("cluster configured");
        let fields = roster_fields(self.chat.local_members().into_iter());
        let mut all: Vec<&str> = vec!["R", &c.node];
        all.extend(fields.iter().map(|f| &**f));
        payload(&all, None)
    }

    pub(in crate::server) fn message(&mut self, m: Msg, on: &Channel, now: Instant) {
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
            Msg::Moderated { set, fields, .. } if to_all => self.moderated(set, &fields, now),
            Msg::Disconnect { id, reason, .. } if to_all => self.disconnected(id, &reason, now),
            Msg::Kick { id, room, .. } if to_all => self.kicked(id, room),
            _ => debug!("cluster: ignored a message on the wrong channel"),
        }
    }

    /// Local user `id` joined `room`: tell the others, and start hearing the room if it is
    /// its first member here.
    pub(in crate::server) fn cluster_joined(&mut self, id: &str, room: &str, first_local: bool) {
        let Some(c) = &mut self.cluster else { return };
        if first_local {
            c.listen(room, true);
        }
        c.publish(ALL, &payload(&["j", &c.node, id, room], None));
    }

    /// Local user `id` left `room`: tell the others, and stop hearing it if nobody here is in it.
    pub(in crate::server) fn cluster_room_left(&mut self, id: &str, room: &str, last_local: bool) {
        let Some(c) = &mut self.cluster else { return };
        c.publish(ALL, &payload(&["l", &c.node, id, room], None));
        if last_local {
            c.listen(room, false);
            self.chat.unheard(room);
        }
    }

    /// A local user left: free the id in Redis (unless it is held for the client's resume:
    /// then it stays ours until the hold ends), tell the others (a leave takes the user out of
    /// every room), and stop hearing the rooms `emptied` of local members.
    pub(in crate::server) fn cluster_left(&mut self, id: &str, emptied: &[Rc<str>], now: Instant) {
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
            self.chat.unheard(room);
        }
        let leave = payload(&["L", &c.node, id], None);
        c.publish(ALL, &leave);
    }

    /// Shutting down: the others drop our users at once instead of after the TTL.
    pub(in crate::server) fn cluster_goodbye(&mut self) {
        let Some(c) = &mut self.cluster else { return };
        let bye = payload(&["G", &c.node], None);
        c.publish(ALL, &bye);
    }

    /// At exit: give queued releases and the goodbye a moment to reach Redis.
    pub(in crate::server) fn cluster_drain(&mut self) {
        if let Some(c) = &mut self.cluster {
            c.link.drain_for(std::time::Duration::from_millis(200));
        }
    }

    /// Stops hearing rooms this node has no member of any more.
    pub(in crate::server) fn cluster_unlisten(&mut self, rooms: &[Rc<str>]) {
        let Some(c) = &mut self.cluster else { return };
        for room in rooms {
            c.listen(room, false);
            self.chat.unheard(room);
        }
    }

    /// Tells the other nodes of memberships given up with an orphaned room (see
    /// `Chat::evict_orphan`): each one's leave, and this node stops hearing the room.
    pub(in crate::server) fn cluster_evicted(&mut self) {
        let evicted = std::mem::take(&mut self.chat.todo.evicted);
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
}

/// Which channel a cluster message came on.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::server) enum Channel {
    All,
    /// This node's own channel.
    Mine,
    Room(String),
}
