//! Moderation on the loop (issue 25): a backend's action (`api::moderate::Action`) applied here and, in a cluster, kept in Redis and announced to every node
//! in the same script (`moderate`); what other nodes announce (`moderated`, `disconnected`,
//! `kicked`) and the set loaded when the link comes up (`moderation_loaded`); the check at the
//! door (`refuse_banned`; a revoked token is refused in `signin`).
//!
//! Closes: a ban or a disconnect is 4403 and a leave (no hold: nothing to resume), a revoked
//! token 4401 `revoked`, lost like an expired one (a fresh token and the resume token take the
//! user back). Every successful action is described by one `Done`: the API's answer and the
//! event stream's `moderation` event.

use super::Server;
use crate::api::Answer;
use crate::api::moderate::{Action, Done, MAX_REASON, Refused};
use crate::chat::Sink;
use crate::chat::ids::key;
use crate::chat::moderation::{Decision, Lift, REVOKE_KEEP_SECS};
use crate::cluster::Await;
use crate::cluster::{ALL, payload};
use crate::conn::Phase;
use crate::http::Status;
use crate::metrics::Reason;
use crate::protocol::{self, ErrorCode};
use bytes::Bytes;
use log::{info, warn};
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};
use std::rc::Rc;
use std::time::Instant;
use tungstenite::protocol::frame::coding::CloseCode;

/// The close code of a moderation close: banned or disconnected ("do not come back").
pub const MODERATED: u16 = 4403;

/// Redis cannot take the action now: nothing was done.
fn unavailable() -> Refused {
    let message = "Redis cannot be reached: nothing was done, try again".into();
    Refused { status: Status::Unavailable, code: "cluster_unavailable", message }
}

impl Server {
    /// Takes `action` here and, in a cluster, everywhere (kept in Redis and announced in one
    /// script, so every node has it within one round trip; a node that was away loads the set
    /// when its link comes up). Refused, with nothing done, while Redis cannot be reached.
    pub(super) fn moderate(&mut self, action: Action, now: Instant, ts: u64) -> Result<Done, Refused> {
        if self.cluster.as_ref().is_some_and(|c| !c.is_up()) {
            return Err(unavailable());
        }
        let until = |secs: u64| ts.saturating_add(secs.saturating_mul(1000));
        let done = match action {
            Action::Ban { id, seconds } => {
                let d = Decision::Ban { id: Rc::from(key(&id)), until: until(seconds) };
                self.decide(&d, ts)?;
                self.ban_here(&key(&id), d.until(), now);
                Done { until: Some(d.until()), ..Done::new("ban", &id, ts) }
            }
            Action::Mute { id, room, seconds } => {
                let r = room.as_deref().map(Rc::from);
                self.decide(&Decision::Mute { id: Rc::from(key(&id)), room: r, until: until(seconds) }, ts)?;
                Done { room, until: Some(until(seconds)), ..Done::new("mute", &id, ts) }
            }
            Action::Revoke { id, before, seconds } => {
                if self.cfg.auth.is_none() {
                    return Err(Refused {
                        status: Status::Conflict,
                        code: "auth_open",
                        message: "revoke needs --auth token: this server checks no tokens".into(),
                    });
                }
                let keep = until(seconds.unwrap_or(REVOKE_KEEP_SECS));
                self.decide(&Decision::Revoke { id: Rc::from(key(&id)), before, until: keep }, ts)?;
                self.revoke_here(&key(&id), now, ts);
                Done { before: Some(before), until: Some(keep), ..Done::new("revoke", &id, ts) }
            }
            Action::Unban { id } => {
                let lifted = self.lift(&Lift::Unban { id: Rc::from(key(&id)) }, ts);
                Done { lifted: Some(lifted), ..Done::new("unban", &id, ts) }
            }
            Action::Unmute { id, room } => {
                let lifted = self
                    .lift(&Lift::Unmute { id: Rc::from(key(&id)), room: room.as_deref().map(Rc::from) }, ts);
                Done { room, lifted: Some(lifted), ..Done::new("unmute", &id, ts) }
            }
            Action::Disconnect { id, reason } => {
                let why = reason.as_deref().unwrap_or("disconnected");
                self.announce(&["D", &id], Some(why.as_bytes()))?;
                self.disconnect_here(&id, why, None, now);
                Done { reason, ..Done::new("disconnect", &id, ts) }
            }
            Action::Kick { id, room } => {
                self.announce(&["X", &id, &room], None)?;
                self.kick_here(&id, &room);
                Done { room: Some(room), ..Done::new("kick", &id, ts) }
            }
        };
        self.moderation_done(&done);
        Ok(done)
    }

    /// Every action taken (on this node's API; another node's are reported there): the one
    /// place to report it, e.g. as the event stream's `moderation` event.
    fn moderation_done(&mut self, done: &Done) {
        info!("moderation: {} id={}", done.action, done.id);
        // The event stream's `moderation` event: the API's answer, as it was given.
        self.chat.record_moderation(|| match serde_json::to_value(done) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => serde_json::Map::new(),
        });
    }

    /// Tells every other node (`fields` after the kind, then our node id); refused if the
    /// link cannot take it now (its queue is full), before anything is done.
    fn announce(&mut self, fields: &[&str], body: Option<&[u8]>) -> Result<(), Refused> {
        let Some(c) = &mut self.cluster else { return Ok(()) };
        let mut all = vec![fields[0], &c.node];
        all.extend(&fields[1..]);
        match c.publish(ALL, &payload(&all, body)) {
            true => Ok(()),
            false => Err(unavailable()),
        }
    }

    /// `moderate` for the API's connection `token` of `generation`: the answer now, or (a
    /// decision Redis keeps) `Pending` until Redis has kept it (`Await::Answer`).
    pub(super) fn api_moderate(
        &mut self,
        action: Action,
        token: usize,
        generation: u32,
        now: Instant,
        ts: u64,
    ) -> Answer {
        let writes = !matches!(action, Action::Disconnect { .. } | Action::Kick { .. });
        // The decision's script is the first command an action that writes queues.
        let first = self.cluster.as_ref().map(|c| c.awaited());
        match self.moderate(action, now, ts) {
            Ok(done) => {
                let body = serde_json::to_vec(&done).expect("serializable");
                let then = Await::Answer { token, generation, body: body.clone() };
                let pending = match (&mut self.cluster, first) {
                    (Some(c), Some(at)) if writes => c.then_at(at, then),
                    _ => false,
                };
                if pending { Answer::Pending } else { Answer::Json(Status::Ok, body) }
            }
            Err(r) => crate::api::fail(r.status, r.code, &r.message),
        }
    }

    /// A decision Redis did not confirm (the link failed, or Redis refused the script): the
    /// API's answer says so (`written`: it went out, and Redis may yet keep it). This node's
    /// copy stands until the link is up again, when the cluster's set replaces it.
    pub(super) fn api_unkept(&mut self, token: usize, generation: u32, written: bool, now: Instant) {
        let (code, why) = match written {
            true => ("cluster_unconfirmed", "Redis may or may not have kept it: check, or do it again"),
            false => ("cluster_unavailable", "Redis cannot be reached: it was not kept, try again"),
        };
        self.api_later(token, generation, Status::Unavailable, &crate::api::error_json(code, why), now);
    }

    /// Keeps decision `d` here and, in a cluster, in Redis (announced to every node).
    fn decide(&mut self, d: &Decision, ts: u64) -> Result<(), Refused> {
        if self.chat.moderation_mut().apply(d, ts).is_err() {
            return Err(Refused {
                status: Status::Unavailable,
                code: "moderation_full",
                message: "as many of these are kept as the server allows (see ARCHITECTURE.md): lift one or wait for one to end".into(),
            });
        }
        if let Some(c) = &mut self.cluster {
            let (field, value) = d.redis_field();
            let fields = d.fields();
            let mut all: Vec<&str> = vec!["V", &c.node];
            all.extend(fields.iter().map(String::as_str));
            let announce = payload(&all, None);
            if !c.moderate_put(&field, &value, d.until(), ts, &announce) {
                // The link's queue is full: kept nowhere else, so not here either.
                self.chat.moderation_mut().forget(d);
                return Err(unavailable());
            }
        }
        Ok(())
    }

    /// Lifts `l` here and, in a cluster, in Redis (announced); whether anything was lifted.
    fn lift(&mut self, l: &Lift, ts: u64) -> bool {
        let fields = l.redis_fields(self.chat.moderation());
        let lifted = self.chat.moderation_mut().lift(l);
        if let Some(c) = &mut self.cluster {
            let lf = l.fields();
            let mut all: Vec<&str> = vec!["W", &c.node];
            all.extend(lf.iter().map(String::as_str));
            let announce = payload(&all, None);
            c.moderate_del(&fields, ts, &announce);
        }
        lifted
    }

    /// Closes local user `id`'s connection with 4403 `why` (after `line`, if any) as a
    /// leave, or drops its hold if it is in its grace: no resume either way.
    fn disconnect_here(&mut self, id: &str, why: &str, line: Option<Bytes>, now: Instant) {
        if let Some(token) = self.chat.token_of(id) {
            if let Some(line) = line {
                self.net.push(token, &line);
            }
            info!(target: "chatloop::session", "session disconnected id={id} by moderation: {why}");
            self.close_ws(token, CloseCode::from(MODERATED), why, Some(Reason::Moderated), now);
        } else if let Some(g) = self.chat.drop_hold(id, &mut self.net) {
            info!(target: "chatloop::session", "session ended id={} reason=moderated (its hold dropped)", g.id);
            self.cluster_left(&g.id, &g.emptied, now);
            // Its resume hash too: no node lets the old token back in.
            if let Some(c) = &mut self.cluster {
                c.spent(&key(id));
            }
        }
    }

    /// Id key `k` was banned until `until`: its connection here is told and closed.
    fn ban_here(&mut self, k: &str, until: u64, now: Instant) {
        let line = protocol::moderated(ErrorCode::Banned, until, None, None);
        if self.chat.token_of(k).is_some() {
            self.net.stats.error_sent(ErrorCode::Banned);
        }
        self.disconnect_here(k, "banned", Some(line), now);
    }

    /// Takes local user `id` out of `room`, and tells the other nodes of the leave.
    fn kick_here(&mut self, id: &str, room: &str) {
        if let Some(k) = self.chat.kick(id, room, &mut self.net) {
            info!(target: "chatloop::session", "kicked id={} room={}", k.id, k.room);
            self.cluster_room_left(&k.id, &k.room, k.last_local);
        }
    }

    /// Closes local user `k`'s connection (4401 `revoked`) if its token is revoked now.
    fn revoke_here(&mut self, k: &str, now: Instant, ts: u64) {
        let Some(token) = self.chat.token_of(k) else { return };
        let Phase::Ws(s) = &self.net.conns[token].phase else { return };
        let Some(g) = s.signed() else { return };
        if !self.chat.moderation().revoked(k, g.iat_ms, ts) {
            return;
        }
        let r = crate::auth::Reason::Revoked;
        self.net.stats.unauthorized(r);
        self.net.push(token, &protocol::unauthorized(r.as_str()));
        let why = Some(Reason::TokenRevoked);
        self.close_ws(token, CloseCode::from(super::signin::UNAUTHORIZED), r.as_str(), why, now);
    }

    /// A join of a banned id (until `until`): told, and closed 4403; it holds no id.
    pub(super) fn refuse_banned(&mut self, token: usize, id: &str, until: u64, now: Instant) {
        info!("refused id {id:?} from {}: banned", self.net.conns[token].addr);
        self.net.push(token, &protocol::moderated(ErrorCode::Banned, until, None, None));
        self.net.stats.error_sent(ErrorCode::Banned);
        self.close_ws(token, CloseCode::from(MODERATED), "banned", None, now);
    }

    /// Until when `id` is banned, if it is now.
    pub(super) fn banned(&self, id: &str) -> Option<u64> {
        self.chat.moderation().banned(&key(id), super::now_millis())
    }

    /// Another node's moderation decision (`set`), or one it lifted, in chat's text form.
    pub(super) fn moderated(&mut self, set: bool, fields: &[&str], now: Instant) {
        let ts = super::now_millis();
        if !set {
            match Lift::parse(fields) {
                Some(l) => {
                    self.chat.moderation_mut().lift(&l);
                }
                None => warn!("cluster: a moderation lift not understood: {fields:?}"),
            }
            return;
        }
        let Some(d) = Decision::parse(fields) else {
            return warn!("cluster: a moderation decision not understood: {fields:?}");
        };
        if self.chat.moderation_mut().apply(&d, ts).is_err() {
            warn!("cluster: a moderation decision dropped here: this node keeps no more of its kind");
        }
        self.enforce(&d, now, ts);
    }

    /// What decision `d` does to the users here now.
    fn enforce(&mut self, d: &Decision, now: Instant, ts: u64) {
        match d {
            Decision::Ban { id, until } if *until > ts => self.ban_here(id, *until, now),
            Decision::Revoke { id, .. } => self.revoke_here(id, now, ts),
            _ => {}
        }
    }

    /// Another node's disconnect of `id`.
    pub(super) fn disconnected(&mut self, id: &str, reason: &[u8], now: Instant) {
        let why = String::from_utf8_lossy(reason);
        let mut end = why.len().min(MAX_REASON);
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        let why = if end == 0 { "disconnected" } else { &why[..end] };
        self.disconnect_here(id, why, None, now);
    }

    /// Another node's kick of `id` out of `room`.
    pub(super) fn kicked(&mut self, id: &str, room: &str) {
        self.kick_here(id, room);
    }

    /// Redis's answer to `MOD_LOAD` (the link came up): the cluster's set replaces ours, and
    /// is enforced on the users here (a ban taken while this node could not hear it).
    pub(super) fn moderation_loaded(&mut self, frame: &BytesFrame, now: Instant) {
        let ts = super::now_millis();
        let BytesFrame::Array { data, .. } = frame else {
            return warn!("cluster: could not read the moderation set from Redis: {frame:?}");
        };
        let texts: Vec<&str> = data.iter().filter_map(|f| f.as_str()).collect();
        let decisions: Vec<Decision> = texts
            .chunks(2)
            .filter_map(|fv| {
                let [field, value] = fv else { return None };
                let all: Vec<&str> = field.split(' ').chain(value.split(' ')).collect();
                Decision::parse(&all)
            })
            .collect();
        let refused = self.chat.moderation_mut().load(decisions.iter().cloned(), ts);
        if refused > 0 {
            warn!("cluster: {refused} moderation decisions not kept here (past this node's bounds)");
        }
        for d in &decisions {
            self.enforce(d, now, ts);
        }
    }
}
