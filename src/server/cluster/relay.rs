//! Relaying chat over Redis: private messages to users on other
//! nodes or kept in Redis for users in their grace, joins and backend API reads waiting for a
//! room's history, and the errors their senders get.

use super::super::Server;
use crate::api::{self, Answer};
use crate::chat::Sink;
use crate::chat::fetch::{Fetch, Kept};
use crate::chat::ids::key;
use crate::cluster::{Await, Read, Shared, node_channel, payload};
use crate::conn::Flag;
use crate::protocol::{self, ErrorCode};
use bytes::Bytes;
use std::rc::Rc;
use std::time::Instant;

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

    /// A private message for a user on `node`; the sender's copy goes once it is on its way.
    pub(in crate::server) fn cluster_private(
        &mut self,
        token: usize,
        from: &str,
        node: &str,
        to: &Rc<str>,
        line: &Bytes,
        cid: Option<Rc<str>>,
    ) {
        let Some(c) = &mut self.cluster else { return };
        let p = payload(&["P", &c.node, to, from], Some(line));
        let then = Await::Private { from: Rc::from(from), to: Rc::clone(to), cid: cid.clone() };
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
        let kept = std::mem::take(&mut self.chat.todo.kept_away);
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
        for f in std::mem::take(&mut self.chat.todo.fetches) {
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
        if self
            .net
            .conns
            .get(f.token)
            .is_some_and(|c| c.generation == generation && !c.peer.is(Flag::Closing))
        {
            self.chat.fetched(f, kept, &mut self.net);
        }
    }

    /// A backend's read of a room's history (`Answer::Read`) for connection `token` of
    /// `generation`: `Pending` once asked of Redis (`cluster::READ`), or 503 now if the link
    /// is down or cannot take it (this node's copy may lack lines: it is not the answer).
    pub(in crate::server) fn cluster_read(
        &mut self,
        read: Box<Read>,
        token: usize,
        generation: u32,
    ) -> Answer {
        match &mut self.cluster {
            Some(c) if c.is_up() => match c.read(token, generation, read) {
                true => Answer::Pending,
                false => api::read::unavailable(),
            },
            _ => api::read::unavailable(),
        }
    }

    /// Redis answered a backend's read (`shared` None: it failed, or the link went down or
    /// stalled before it did): the answer goes to the connection, if it still waits.
    pub(in crate::server) fn read_done(
        &mut self,
        token: usize,
        generation: u32,
        read: &Read,
        shared: Option<Shared>,
        now: Instant,
    ) {
        if let Answer::Json(status, body) = api::read::shared(&self.chat, read, shared) {
            self.api_later(token, generation, status, &body, now);
        }
    }
}
