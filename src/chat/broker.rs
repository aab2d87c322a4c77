//! The seam between chat and what numbers room messages, after Centrifuge's `Broker`: chat
//! hands a room line to a `Broker` (`publish`), which answers either "numbered now" (the line,
//! with its seq, already kept in the room's history) or "pending" (Redis will number it; the
//! answer comes back through `Chat::published`, the one call into chat for it).
//!
//! Two implementations: `Alone` (one node: the room's own history numbers it) and the cluster's
//! `Cluster` (Redis numbers it with `NUMBER`; while the link is down, or its queue is full, it is
//! numbered here in an epoch of this node's own and the sender told that other nodes cannot
//! have it). Chat never asks which one it has: the server picks it once per call.
//!
//! ```text
//! Chat::route ── Broker::publish ──▶ Now(line)          deliver here        Outcome::Room
//!                                 ├▶ Unconfirmed(line)  deliver here        Outcome::Unconfirmed
//!                                 └▶ Pending (Ticket in Await::Room) ──▶ Redis ──▶ reply
//!                                      server/cluster: Chat::published(ticket, seq/epoch or none)
//! ```

use super::history::History;
use crate::cluster::{Await, Cluster, Ticket};
use bytes::Bytes;
use std::rc::Rc;

/// A room message to number: where, from whom, and how to encode it with a given seq.
pub struct Post<'a> {
    pub room: &'a Rc<str>,
    pub from: &'a str,
    /// The sender's connection, and the client's id for the message.
    pub token: usize,
    pub cid: Option<&'a str>,
    /// A backend's publish (`POST /api/publish`): the generation of the HTTP connection
    /// `token`, which the answer goes to.
    pub api: Option<u32>,
    /// The line with seq `n`; with 0 it is the template Redis splices the seq into.
    pub encode: &'a dyn Fn(u64) -> Bytes,
}

/// What became of a room message handed to a broker.
#[derive(Debug)]
pub enum Published {
    /// Numbered and kept here: deliver it to the local members now.
    Now(Bytes),
    /// Numbered and kept here although other nodes should have had it (Redis is away, or its
    /// queue is full): deliver it here, and tell the sender the others cannot have it.
    Unconfirmed(Bytes),
    /// Handed on: nothing is delivered until the answer comes (`Chat::published`).
    Pending,
}

/// Numbers and keeps room messages, and says whether joins can read a shared history.
pub trait Broker {
    /// Numbers `post` (or hands it on); `history` is the node's own, in which a line numbered
    /// here is kept.
    fn publish(&mut self, history: &mut History, post: Post<'_>) -> Published;

    /// Whether a join whose replay the node's mirror cannot answer should ask the shared
    /// history first (see `chat::fetch`).
    fn shares_history(&self) -> bool;

    /// Whether a shared history exists at all (a cluster, its link up or not): the API's
    /// history reads are Redis's to answer (`cluster::Read`), or refused while it is away.
    fn clustered(&self) -> bool {
        false
    }
}

/// One node: the room's history numbers its messages.
#[derive(Debug, Default)]
pub struct Alone;

impl Broker for Alone {
    fn publish(&mut self, history: &mut History, post: Post<'_>) -> Published {
        Published::Now(history.append(post.room, post.encode))
    }

    fn shares_history(&self) -> bool {
        false
    }
}

impl Broker for Cluster {
    fn publish(&mut self, history: &mut History, post: Post<'_>) -> Published {
        if self.is_up() {
            // For a room Redis has no epoch for: our log's, so that the room keeps the epoch
            // its members were told in `joined` (see `History::offer`).
            let epoch = history.offer(post.room);
            let template = (post.encode)(0);
            let ticket = Box::new(Ticket {
                from: Rc::from(post.from),
                room: Rc::clone(post.room),
                cid: post.cid.map(Rc::from),
                token: post.token,
                api: post.api,
                template: template.clone(),
            });
            if self.number(post.room, &template, &epoch, Await::Room(ticket)) {
                return Published::Pending;
            }
        }
        // Numbered here while Redis is away: in an epoch of this node's own, so as not to reuse
        // numbers Redis will give.
        history.fork(post.room);
        Published::Unconfirmed(history.append(post.room, post.encode))
    }

    fn shares_history(&self) -> bool {
        self.is_up()
    }

    fn clustered(&self) -> bool {
        true
    }
}
