//! The event stream across a cluster (see `cluster/events.rs`): this node's events sent to
//! Redis to be numbered (`cluster_emit`), the whole cluster's coming back on one channel into
//! the log (`event_pushed`), and what a node missed while its link was down read from the
//! Redis stream when it is back (`events_resync`, `events_read`).

use super::Server;
use crate::cluster::{Await, parse_event};
use crate::events::{Fact, Kind};
use bytes::Bytes;
use log::{debug, info, warn};
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};
use std::rc::Rc;

impl Server {
    /// The link is up: hear the channel, then read what was missed since our last id. Pushes
    /// that come before that read is answered are held (they may be in it too).
    pub(in crate::server) fn events_resync(&mut self) {
        let (Some(c), Some(s)) = (&mut self.cluster, &mut self.events) else { return };
        s.held.clear();
        s.syncing = c.listen_events() && c.events_since(s.log.next_id(), self.cfg.events_keep);
    }

    /// This node's events, numbered by Redis (`EMIT`): sent while the link takes them, the
    /// rest kept (bounded) until it is back.
    pub(in crate::server) fn cluster_emit(&mut self) {
        let (Some(c), Some(s)) = (&mut self.cluster, &mut self.events) else { return };
        if !c.is_up() {
            return;
        }
        let seen = s.log.next_id().saturating_sub(1);
        while let Some((kind, data)) = s.outgoing.pop_front() {
            let then = Await::Emit(Box::new((kind, data.clone())));
            if !c.emit(kind.as_str(), &data, seen, self.cfg.events_keep, then) {
                s.outgoing.push_front((kind, data));
                return;
            }
        }
    }

    /// An event written before the link failed may have been run; one still queued was not,
    /// and goes again (first) when the link is back.
    pub(in crate::server) fn emit_lost(&mut self, w: (Kind, Bytes), written: bool) {
        let Some(s) = &mut self.events else { return };
        if written {
            debug!("cluster: an event was written before the link failed; it may be in the stream or not");
            return;
        }
        let (kind, data) = w;
        s.outgoing.push_front((kind, data));
    }

    /// `node` stopped without a goodbye: its users are gone (their leaves and offlines were
    /// never sent). Appended once for the cluster, by whichever node notices first; not at all
    /// if the link is down then.
    pub(in crate::server) fn node_gone_events(&mut self, node: &str, ts: u64) {
        let (Some(c), Some(s)) = (&mut self.cluster, &self.events) else { return };
        let mut events: Vec<(&str, Vec<u8>)> = Vec::new();
        for (id, rooms) in self.chat.users_on(node) {
            for room in rooms {
                events.push(("leave", Fact::Leave(room, Rc::clone(&id)).data(ts)));
            }
            events.push(("offline", Fact::Offline(id).data(ts)));
        }
        let seen = s.log.next_id().saturating_sub(1);
        if !events.is_empty() && !c.emit_gone(node, &events, seen, self.cfg.events_keep) {
            warn!(
                "cluster: the leaves and offlines of node {node}'s {} events could not be sent",
                events.len()
            );
        }
    }

    /// An event from the channel (any node's, ours included).
    pub(in crate::server) fn event_pushed(&mut self, payload: &Bytes) {
        let Some(s) = &mut self.events else { return };
        let Some((id, kind, data)) = parse_event(payload) else {
            return debug!("cluster: ignored a malformed event ({} bytes)", payload.len());
        };
        let Some(kind) = Kind::parse(kind) else { return };
        if s.syncing {
            if s.held.len() < self.cfg.events_keep {
                s.held.push((id, kind, payload.slice_ref(data)));
            }
            return;
        }
        if id > s.log.next_id() && s.log.appended > 0 {
            warn!("cluster: events {} to {} were missed", s.log.next_id(), id - 1);
        }
        s.log.insert(id, kind, data);
    }

    /// The answer to `events_since`: the kept events, newest first, as
    /// `[[<id>-0, [t, TYPE, d, DATA]], ...]`; then what was held meanwhile.
    pub(in crate::server) fn events_read(&mut self, frame: BytesFrame) {
        let Some(s) = &mut self.events else { return };
        s.syncing = false;
        let BytesFrame::Array { data: entries, .. } = frame else {
            return warn!("cluster: could not read the event stream: {frame:?}");
        };
        let before = s.log.next_id();
        for e in entries.iter().rev() {
            let BytesFrame::Array { data: pair, .. } = e else { continue };
            let [id, BytesFrame::Array { data: fields, .. }] = &pair[..] else { continue };
            let id = id.as_str().and_then(|i| i.strip_suffix("-0")).and_then(|i| i.parse::<u64>().ok());
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|f| f[0].as_str() == Some(name))
                    .and_then(|f| f.get(1))
                    .and_then(|v| v.as_bytes())
            };
            if let (Some(id), Some(kind), Some(data)) =
                (id, field("t").and_then(|t| std::str::from_utf8(t).ok()).and_then(Kind::parse), field("d"))
            {
                s.log.insert(id, kind, data);
            }
        }
        for (id, kind, data) in std::mem::take(&mut s.held) {
            s.log.insert(id, kind, &data);
        }
        if s.log.next_id() > before {
            info!("cluster: event stream read from Redis, ids {} to {}", before, s.log.next_id() - 1);
        }
    }
}
