//! Relaying chat over Redis: a room message handed to Redis for numbering (`cluster_number`)
//! and what happens when it cannot be (`unnumbered`), private messages to users on other
//! nodes or kept in Redis for users in their grace, joins waiting for a room's history, and
//! the errors their senders get.

use super::super::Server;
use crate::chat::Sink;
use crate::chat::fetch::{Fetch, Kept};
use crate::chat::ids::key;
use crate::cluster::{Await, Numbered, node_channel, payload};
use crate::protocol::{self, ErrorCode};
use bytes::Bytes;
use std::rc::Rc;

impl Server {
    /// Sends local user `id` (if still here) an error about a message it sent (with the
    /// client's `cid` for it, if it gave one).
    pub(in crate::server) fn tell(&mut self, id: &str, code: ErrorCode, to: Option<&str>, cid: Option<&str>) {
        if let Some(token) = self.chat.token_of(id) {
            self.tagged_error(token, protocol::error(code, to), code, cid);
        }
    }

    /// Sends local user `id` (if still here) an error about a message it sent to `room`.
    pub(in crate::server) fn tell_room(&mut self, id: &str, code: ErrorCode, room: &str, cid: Option<&str>) {
        if let Some(token) = self.chat.token_of(id) {
            self.room_error(token, code, room, cid);
        }
    }

    pub(in crate::server) fn room_error(
        &mut self,
        token: usize,
        code: ErrorCode,
        room: &str,
        cid: Option<&str>,
    ) {
        self.tagged_error(token, protocol::room_error(code, room), code, cid);
    }

    pub(in crate::server) fn tagged_error(
        &mut self,
        token: usize,
        line: Bytes,
        code: ErrorCode,
        cid: Option<&str>,
    ) {
        let line = match cid {
            Some(cid) => protocol::with_cid(&line, cid),
            None => line,
        };
        self.net.push(token, &line);
        self.net.stats.error_sent(code);
    }

    /// A room message chat numbered itself: in a cluster that happens only while Redis is
    /// away (with the link up, Redis numbers them: `cluster_number`), so the other nodes
    /// cannot have it, and the sender is told.
    pub(in crate::server) fn cluster_room(&mut self, token: usize, room: &str, cid: Option<&str>) {
        if self.cluster.is_some() {
            self.room_error(token, ErrorCode::ClusterUnavailable, room, cid);
        }
    }

    /// A room message for Redis to number and publish (see `cluster::NUMBER`); it reaches
    /// this node's members too once Redis answers with its seq. If the link refuses, it is
    /// numbered here, in an epoch of this node's own, and the sender told.
    pub(in crate::server) fn cluster_number(
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
    pub(in crate::server) fn unnumbered(&mut self, from: &str, room: &str, cid: Option<&str>, n: &Numbered) {
        let sender = if self.chat.token_of(from) == Some(n.token) { n.token } else { usize::MAX };
        self.chat.number_here(room, &n.template, sender, cid, &mut self.net);
    }

    /// A private message for a user on `node`; the sender's copy goes once it is on its way.
    pub(in crate::server) fn cluster_private(
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

    /// Keeps in Redis what this turn kept for users in their grace (see `cluster::KEEP`).
    pub(in crate::server) fn cluster_keep(&mut self) {
        let kept = std::mem::take(&mut self.chat.kept_away);
        let Some(c) = &mut self.cluster else { return };
        for k in kept {
            let then = Await::Keep { from: k.from, to: Rc::clone(&k.to), line: k.line };
            c.keep(&key(&k.to), &k.copy, k.pseq, self.cfg.resume_grace, crate::chat::resume::KEPT_MAX, then);
        }
    }

    /// Sends Redis the history reads that this turn's joins wait for (see `chat::fetch`),
    /// after the turn's subscriptions, so that every message numbered after the read is
    /// heard. A read the link refuses is answered from the mirror at once.
    pub(in crate::server) fn cluster_fetches(&mut self) {
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
    pub(in crate::server) fn fetch_done(&mut self, generation: u32, f: &Fetch, kept: Option<Kept>) {
        if self.net.conns.get(f.token).is_some_and(|c| c.generation == generation && !c.peer.closing) {
            self.chat.fetched(f, kept, &mut self.net);
        }
    }
}
