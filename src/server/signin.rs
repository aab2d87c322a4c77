//! Sign-in (`--auth token`, issue 24): every `/ws` upgrade's token checked within a per-turn
//! budget (`verify_queued`), a refused one told why and closed with 4401 (`unauthorized`),
//! a refresh on a live session (`refresh`), and the close at `exp` + `--auth-grace`
//! (`token_expired`), which is lost, not left: the user is held for a resume with a fresh
//! token. No token, secret or query string reaches a log line: only reasons and ids.

use super::Server;
use crate::auth::{Claims, Reason};
use crate::chat::Sink;
use crate::chat::ids::key;
use crate::conn::{Flag, Phase, Signed};
use crate::timers::Stamp;
use log::info;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;

/// Token checks per loop turn, at most. An ES256 check costs about 0.25 ms here, EdDSA 0.05,
/// an HMAC one a few µs; the rest wait for the next turn, behind everyone already connected
/// (first come, first checked).
pub const VERIFY_BUDGET: usize = 64;
/// Time spent checking tokens per turn, at most (one check always runs). A count alone let a
/// storm of ES256 holders take 4 ms of every turn (16 checks), which the fan-out running beside
/// it felt as a p99 2.35x its own (`scripts/bench-signin.sh`); timed, a cheap algorithm still
/// checks many a turn and a dear one a few.
pub const VERIFY_TIME: std::time::Duration = std::time::Duration::from_millis(1);

/// The close code of a refused or expired token.
pub const UNAUTHORIZED: u16 = 4401;

/// An upgrade waiting for its token's check.
pub(super) struct Waiting {
    pub token: usize,
    pub generation: u32,
    /// The `?id=` asked for ("" if none): it must be the token's `sub` (by the id fold).
    pub id: String,
    /// The token as presented; None when there was none.
    pub bearer: Option<String>,
}

impl Server {
    /// Checks the tokens of waiting upgrades, oldest first, at most `VERIFY_BUDGET` and
    /// `VERIFY_TIME` a turn;
    /// each one valid begins its join under its `sub`, each one refused is closed 4401.
    pub(super) fn verify_queued(&mut self, now: Instant, ts: u64) {
        let Some(verifier) = self.cfg.auth.clone() else { return };
        let mut checked = 0;
        // The clock read here meters this turn's CPU, not time the logic depends on.
        let started = Instant::now();
        while checked < VERIFY_BUDGET && (checked == 0 || started.elapsed() < VERIFY_TIME) {
            let Some(w) = self.verifying.pop_front() else { break };
            let alive = self.net.conns.get(w.token).is_some_and(|c| {
                c.generation == w.generation && !c.peer.is(Flag::Closing) && matches!(c.phase, Phase::Ws(_))
            });
            if !alive {
                continue;
            }
            checked += 1;
            let bearer = w.bearer.as_deref().unwrap_or_default();
            let verdict = verifier.verify(bearer.as_bytes(), ts).and_then(|c| {
                if w.id.is_empty() || key(&w.id) == key(&c.sub) { Ok(c) } else { Err(Reason::BadSub) }
            });
            let verdict = verdict.and_then(|c| self.not_revoked(c, ts));
            let conn = &mut self.net.conns[w.token];
            conn.peer.clear(Flag::Claiming);
            // Frames that came behind the request were kept unread: read them now.
            self.again.push(w.token);
            match verdict {
                Err(r) => {
                    info!("refused a token from {}: {r}", conn.addr);
                    self.unauthorized(w.token, r, now);
                }
                Ok(claims) => {
                    let signed = self.signed(&claims, now, ts);
                    if let Phase::Ws(s) = &mut self.net.conns[w.token].phase {
                        s.sign(signed);
                    }
                    self.arm(w.token, now);
                    self.begin_join(w.token, &claims.sub, now);
                }
            }
        }
    }

    /// A valid token's claims, unless a revocation for its `sub` covers its `iat` (issue 25).
    fn not_revoked(&self, c: Claims, ts: u64) -> Result<Claims, Reason> {
        match self.chat.moderation().revoked(&key(&c.sub), c.iat_ms, ts) {
            true => Err(Reason::Revoked),
            false => Ok(c),
        }
    }

    /// Whether connection `token` (joining as `id`) holds a token revoked since its check.
    pub(super) fn revoked_session(&self, token: usize, id: &str) -> bool {
        let Some(Phase::Ws(s)) = self.net.conns.get(token).map(|c| &c.phase) else { return false };
        s.signed().is_some_and(|g| self.chat.moderation().revoked(&key(id), g.iat_ms, super::now_millis()))
    }

    /// What a session keeps of a valid token: its rooms and when it closes without a refresh.
    fn signed(&self, claims: &Claims, now: Instant, ts: u64) -> Signed {
        Signed {
            rooms: Rc::new(claims.rooms.clone()),
            exp_ms: claims.exp_ms,
            iat_ms: claims.iat_ms,
            close_at: self.close_at(claims.exp_ms, now, ts),
        }
    }

    /// The loop-clock moment of `exp_ms` + `--auth-grace` (wall-clock ms), now being `ts`.
    fn close_at(&self, exp_ms: u64, now: Instant, ts: u64) -> Stamp {
        let grace = u64::try_from(self.cfg.auth_grace.as_millis()).unwrap_or(u64::MAX);
        let left = exp_ms.saturating_add(grace).saturating_sub(ts);
        Stamp::of(now).after(Duration::from_millis(left))
    }

    /// A refused upgrade: the error line with its reason, counted, then close 4401. The
    /// session holds no id, so nothing is held or announced.
    pub(super) fn unauthorized(&mut self, token: usize, r: Reason, now: Instant) {
        self.net.stats.unauthorized(r);
        self.net.push(token, &crate::protocol::unauthorized(r.as_str()));
        self.close_ws(token, CloseCode::from(UNAUTHORIZED), r.as_str(), None, now);
    }

    /// `{"token":"NEW"}` from joined user `user`: a valid token for the same id (by the id
    /// fold) replaces the session's claims and expiry (`{"type":"token","exp":MS}`); any other
    /// gets an `unauthorized` error and changes nothing (the connection stays open).
    pub(super) fn refresh(
        &mut self,
        token: usize,
        user: &str,
        new: &str,
        cid: Option<&str>,
        now: Instant,
        ts: u64,
    ) {
        let Some(verifier) = self.cfg.auth.clone() else { return };
        let verdict = verifier
            .verify(new.as_bytes(), ts)
            .and_then(|c| if key(&c.sub) == key(user) { Ok(c) } else { Err(Reason::BadSub) })
            .and_then(|c| self.not_revoked(c, ts));
        let (line, narrowed) = match verdict {
            Ok(claims) => {
                let signed = self.signed(&claims, now, ts);
                if let Phase::Ws(s) = &mut self.net.conns[token].phase {
                    s.sign(signed);
                }
                self.arm(token, now);
                (crate::protocol::token_ok(claims.exp_ms), true)
            }
            Err(r) => {
                info!("refused a refresh from id={user}: {r}");
                self.net.stats.unauthorized(r);
                (crate::protocol::unauthorized(r.as_str()), false)
            }
        };
        let line = match cid {
            Some(cid) => crate::protocol::with_cid(&line, cid),
            None => line,
        };
        self.net.push(token, &line);
        if narrowed {
            // Answered first; then the rooms the new token no longer allows are left.
            self.narrow(token, user);
        }
    }

    /// The session's `close_at` came: past `exp` + `--auth-grace` by the wall clock, it is
    /// closed 4401 `expired` and its user held like a lost connection's (a resume with a
    /// fresh token and the resume token misses nothing); otherwise (a `Stamp` reaches only so
    /// far ahead) the deadline moves on. True if closed.
    pub(super) fn token_due(&mut self, token: usize, now: Instant, ts: u64) -> bool {
        let Phase::Ws(s) = &self.net.conns[token].phase else { return false };
        let Some(g) = s.signed() else { return false };
        if !g.close_at.reached(Stamp::of(now)) {
            return false;
        }
        let grace = u64::try_from(self.cfg.auth_grace.as_millis()).unwrap_or(u64::MAX);
        if ts < g.exp_ms.saturating_add(grace) {
            let at = self.close_at(g.exp_ms, now, ts);
            if let Phase::Ws(s) = &mut self.net.conns[token].phase
                && let Some(g) = s.signed_mut()
            {
                g.close_at = at;
            }
            return false;
        }
        let r = Reason::Expired;
        self.net.stats.unauthorized(r);
        self.net.push(token, &crate::protocol::unauthorized(r.as_str()));
        let why = Some(crate::metrics::Reason::TokenExpired);
        self.close_ws(token, CloseCode::from(UNAUTHORIZED), r.as_str(), why, now);
        true
    }

    /// Joined user `user` on `token` has a token that may allow fewer rooms than its last
    /// (a refresh, or a resume with a fresh token): it leaves the rooms it no longer may enter
    /// (`Chat::narrow`), and other nodes hear of it as of any leave.
    pub(super) fn narrow(&mut self, token: usize, user: &str) {
        let Some(may) = self.may_enter(token) else { return };
        for (room, last_local) in self.chat.narrow(token, user, &may, &mut self.net) {
            info!("id={user} left room {room}: its token no longer allows it");
            self.cluster_room_left(user, &room, last_local);
        }
    }

    /// The rooms connection `token`'s token allows (`--auth token`), for chat.
    pub(super) fn may_enter(&self, token: usize) -> Option<Rc<crate::auth::Rooms>> {
        match &self.net.conns.get(token)?.phase {
            Phase::Ws(s) => s.signed().map(|g| Rc::clone(&g.rooms)),
            _ => None,
        }
    }
}

/// How a session's user enters chat: signed in, in the lobby only if its token allows it, and
/// the welcome carries the token's `exp`; `Entry::OPEN` in open mode.
pub(super) fn entry_of(s: &crate::conn::Session) -> crate::chat::Entry {
    s.signed().map_or(crate::chat::Entry::OPEN, |g| crate::chat::Entry {
        lobby: g.rooms.may_enter(crate::protocol::LOBBY),
        exp: Some(g.exp_ms),
    })
}
