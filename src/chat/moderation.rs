//! Moderation (issue 25): what a backend decided about a user, kept until a deadline: bans
//! (the id is refused at every join), mutes (its room messages, or all its messages, are
//! refused) and token revocations (its tokens issued before a moment are refused). Every
//! entry is by id key (`ids::key`, so a ban of `Alice` is one of `a1ice` too) and ends at a
//! Unix-millisecond deadline: the same clock the wire's `until` speaks, and the one every
//! node of a cluster shares through Redis (entries travel as text: `Decision::fields`).
//!
//! Each kind has a bound (`MAX_BANS`, `MAX_MUTES`, `MAX_REVOKED`; a new entry past it is
//! refused, never an old one dropped early) and an index by deadline, so expiry looks only at
//! what has expired (`expire`), and a lookup checks its entry's deadline itself: an entry
//! past its time is never honoured, whether or not the sweep came by yet.
//!
//! The chat-side actions on a user (kick from a room, drop a hold) are in `Chat`'s impl below.

use super::ids::key;
use super::resume::Away;
use super::{Chat, Gone, Sink};
use crate::events::Fact;
use crate::protocol;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

/// Bans kept at once.
pub const MAX_BANS: usize = 100_000;
/// Mutes kept at once (a global mute and each room mute count one).
pub const MAX_MUTES: usize = 100_000;
/// Room mutes one id may have besides its global one: a message's check scans them.
pub const MUTED_ROOMS_PER_ID: usize = 32;
/// Revocations kept at once (one per id: a later one for the same id widens it).
pub const MAX_REVOKED: usize = 100_000;
/// The longest a ban, mute or revocation may be kept: ten years, in seconds.
pub const MAX_SECONDS: u64 = 10 * 365 * 86_400;
/// How long a revocation is kept when its request does not say (`seconds`): 30 days. A token
/// issued before `before` that is still valid after this would be accepted again.
pub const REVOKE_KEEP_SECS: u64 = 30 * 86_400;
/// Expired entries dropped by one `expire` call at most (the sweep calls again next second).
const EXPIRE_BATCH: usize = 1024;
/// The room field of a global mute in `Decision::fields` (no room name has an `@`).
const EVERY_ROOM: &str = "@";

/// One moderation decision, as kept and announced. `id` is the id key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Ban {
        id: Rc<str>,
        until: u64,
    },
    /// `room` None: every room and private messages.
    Mute {
        id: Rc<str>,
        room: Option<Rc<str>>,
        until: u64,
    },
    Revoke {
        id: Rc<str>,
        before: u64,
        until: u64,
    },
}

/// A lifted decision (`Decision`'s opposite); `Unmute` without a room lifts every mute of the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lift {
    Unban { id: Rc<str> },
    Unmute { id: Rc<str>, room: Option<Rc<str>> },
}

/// Why an entry was not kept: its kind is at its bound (or the id's room mutes are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Decision {
    /// Its text form: `b ID UNTIL`, `m ID ROOM|@ UNTIL`, `r ID UNTIL BEFORE`.
    pub fn fields(&self) -> Vec<String> {
        match self {
            Decision::Ban { id, until } => vec!["b".into(), id.to_string(), until.to_string()],
            Decision::Mute { id, room, until } => {
                let room = room.as_deref().unwrap_or(EVERY_ROOM);
                vec!["m".into(), id.to_string(), room.to_string(), until.to_string()]
            }
            Decision::Revoke { id, before, until } => {
                vec!["r".into(), id.to_string(), until.to_string(), before.to_string()]
            }
        }
    }

    /// Parses `fields`; None for anything else (ids and rooms are checked, ids folded).
    pub fn parse(fields: &[&str]) -> Option<Decision> {
        let id = |s: &str| protocol::valid_id(s).then(|| Rc::from(key(s)));
        let n = |s: &str| s.parse::<u64>().ok();
        Some(match fields {
            ["b", i, u] => Decision::Ban { id: id(i)?, until: n(u)? },
            ["m", i, r, u] => Decision::Mute { id: id(i)?, room: room_field(r)?, until: n(u)? },
            ["r", i, u, b] => Decision::Revoke { id: id(i)?, before: n(b)?, until: n(u)? },
            _ => return None,
        })
    }

    pub fn until(&self) -> u64 {
        match self {
            Decision::Ban { until, .. } | Decision::Mute { until, .. } | Decision::Revoke { until, .. } => {
                *until
            }
        }
    }

    /// Where Redis keeps it (`b ID`, `m ID ROOM|@`, `r ID`: one entry per field) and the
    /// value there (`UNTIL`, or `UNTIL BEFORE`).
    pub fn redis_field(&self) -> (String, String) {
        let f = self.fields();
        let (field, value) = f.split_at(if matches!(self, Decision::Mute { .. }) { 3 } else { 2 });
        (field.join(" "), value.join(" "))
    }
}

impl Lift {
    /// Its text form: `b ID`, `m ID` (every mute) or `m ID ROOM`.
    pub fn fields(&self) -> Vec<String> {
        match self {
            Lift::Unban { id } => vec!["b".into(), id.to_string()],
            Lift::Unmute { id, room } => {
                let mut f = vec!["m".into(), id.to_string()];
                f.extend(room.as_deref().map(str::to_string));
                f
            }
        }
    }

    /// The Redis fields it lifts, as `m` holds them now (an unmute without a room lifts
    /// every mute of the id it has).
    pub fn redis_fields(&self, m: &Moderation) -> Vec<String> {
        match self {
            Lift::Unban { id } => vec![format!("b {id}")],
            Lift::Unmute { id, room: Some(r) } => vec![format!("m {id} {r}")],
            Lift::Unmute { id, room: None } => {
                let Some(muted) = m.mutes.get(id) else { return Vec::new() };
                let global = muted.global.map(|_| format!("m {id} {EVERY_ROOM}"));
                global.into_iter().chain(muted.rooms.iter().map(|(r, _)| format!("m {id} {r}"))).collect()
            }
        }
    }

    pub fn parse(fields: &[&str]) -> Option<Lift> {
        let id = |s: &str| protocol::valid_id(s).then(|| Rc::from(key(s)));
        Some(match fields {
            ["b", i] => Lift::Unban { id: id(i)? },
            ["m", i] => Lift::Unmute { id: id(i)?, room: None },
            ["m", i, r] => Lift::Unmute { id: id(i)?, room: Some(Rc::from(&*protocol::room_name(r)?)) },
            _ => return None,
        })
    }
}

/// A mute's room field: `@` for every room, else a room name (folded).
fn room_field(r: &str) -> Option<Option<Rc<str>>> {
    if r == EVERY_ROOM {
        return Some(None);
    }
    protocol::room_name(r).map(|n| Some(Rc::from(&*n)))
}

/// One id's mutes: everywhere (`global`) and per room, each with its deadline.
#[derive(Debug, Default)]
struct Muted {
    global: Option<u64>,
    rooms: Vec<(Rc<str>, u64)>,
}

/// Bans, mutes and revocations, each with its index by deadline (see the module's doc).
#[derive(Default)]
pub struct Moderation {
    bans: HashMap<Rc<str>, u64>,
    bans_due: BTreeSet<(u64, Rc<str>)>,
    mutes: HashMap<Rc<str>, Muted>,
    /// (until, id, room): "" for a global mute.
    mutes_due: BTreeSet<(u64, Rc<str>, Rc<str>)>,
    /// id → (before, until).
    revoked: HashMap<Rc<str>, (u64, u64)>,
    revoked_due: BTreeSet<(u64, Rc<str>)>,
}

impl Moderation {
    /// Keeps `e` (replacing the id's entry of its kind: a ban or mute again sets its deadline
    /// anew; a revocation again keeps the later `before` and the later deadline). An entry
    /// already past at `now` is not kept. `Full` at the kind's bound, once expired entries
    /// are gone.
    pub fn apply(&mut self, e: &Decision, now: u64) -> Result<(), Full> {
        if e.until() <= now {
            return Ok(());
        }
        match e {
            Decision::Ban { id, until } => {
                if !self.bans.contains_key(id) && self.room_for(Kind::Ban, now) {
                    return Err(Full);
                }
                if let Some(old) = self.bans.insert(Rc::clone(id), *until) {
                    self.bans_due.remove(&(old, Rc::clone(id)));
                }
                self.bans_due.insert((*until, Rc::clone(id)));
            }
            Decision::Mute { id, room, until } => self.mute(id, room.as_ref(), *until, now)?,
            Decision::Revoke { id, before, until } => {
                let (before, until) = match self.revoked.get(id).copied() {
                    Some((b, u)) => (b.max(*before), u.max(*until)),
                    None if self.room_for(Kind::Revoke, now) => return Err(Full),
                    None => (*before, *until),
                };
                if let Some((_, old)) = self.revoked.insert(Rc::clone(id), (before, until)) {
                    self.revoked_due.remove(&(old, Rc::clone(id)));
                }
                self.revoked_due.insert((until, Rc::clone(id)));
            }
        }
        Ok(())
    }

    fn mute(&mut self, id: &Rc<str>, room: Option<&Rc<str>>, until: u64, now: u64) -> Result<(), Full> {
        let existing = self.mutes.get(id).and_then(|m| match room {
            None => m.global,
            Some(r) => m.rooms.iter().find(|(n, _)| n == r).map(|(_, u)| *u),
        });
        if existing.is_none() {
            let crowded =
                room.is_some() && self.mutes.get(id).is_some_and(|m| m.rooms.len() >= MUTED_ROOMS_PER_ID);
            if crowded || self.room_for(Kind::Mute, now) {
                return Err(Full);
            }
        }
        let slot: Rc<str> = room.map_or_else(|| Rc::from(""), Rc::clone);
        if let Some(old) = existing {
            self.mutes_due.remove(&(old, Rc::clone(id), Rc::clone(&slot)));
        }
        let m = self.mutes.entry(Rc::clone(id)).or_default();
        match room {
            None => m.global = Some(until),
            Some(r) => match m.rooms.iter_mut().find(|(n, _)| n == r) {
                Some(e) => e.1 = until,
                None => m.rooms.push((Rc::clone(r), until)),
            },
        }
        self.mutes_due.insert((until, Rc::clone(id), slot));
        Ok(())
    }

    /// Lifts a ban or mutes; returns whether anything was lifted.
    pub fn lift(&mut self, l: &Lift) -> bool {
        match l {
            Lift::Unban { id } => match self.bans.remove(id) {
                Some(until) => self.bans_due.remove(&(until, Rc::clone(id))),
                None => false,
            },
            Lift::Unmute { id, room } => {
                let Some(m) = self.mutes.get_mut(id) else { return false };
                let mut gone = Vec::new();
                if room.is_none()
                    && let Some(u) = m.global.take()
                {
                    gone.push((u, Rc::from("")));
                }
                m.rooms.retain(|(r, u)| {
                    let lift = room.as_ref().is_none_or(|want| want == r);
                    if lift {
                        gone.push((*u, Rc::clone(r)));
                    }
                    !lift
                });
                if m.global.is_none() && m.rooms.is_empty() {
                    self.mutes.remove(id);
                }
                for (u, r) in &gone {
                    self.mutes_due.remove(&(*u, Rc::clone(id), Rc::clone(r)));
                }
                !gone.is_empty()
            }
        }
    }

    /// Takes out the id's entry of `d`'s kind (a decision that could not be shared).
    pub fn forget(&mut self, d: &Decision) {
        match d {
            Decision::Ban { id, .. } => {
                self.lift(&Lift::Unban { id: Rc::clone(id) });
            }
            Decision::Mute { id, room, .. } => {
                self.lift(&Lift::Unmute { id: Rc::clone(id), room: room.clone() });
            }
            Decision::Revoke { id, .. } => {
                if let Some((_, until)) = self.revoked.remove(id) {
                    self.revoked_due.remove(&(until, Rc::clone(id)));
                }
            }
        }
    }

    /// Until when id key `id` is banned, if it is at `now`.
    pub fn banned(&self, id: &str, now: u64) -> Option<u64> {
        self.bans.get(id).copied().filter(|u| *u > now)
    }

    /// Until when id key `id` may not send to `room` (None: a private message, which only a
    /// global mute refuses), if it may not at `now`: the later of its global and room mutes.
    pub fn muted(&self, id: &str, room: Option<&str>, now: u64) -> Option<u64> {
        if self.mutes.is_empty() {
            return None;
        }
        let m = self.mutes.get(id)?;
        let here = room.and_then(|r| m.rooms.iter().find(|(n, _)| &**n == r).map(|(_, u)| *u));
        m.global.into_iter().chain(here).filter(|u| *u > now).max()
    }

    /// Whether a token of id key `id` issued at `iat` (Unix ms; None counts as before any
    /// moment) is revoked at `now`.
    pub fn revoked(&self, id: &str, iat: Option<u64>, now: u64) -> bool {
        self.revoked.get(id).is_some_and(|&(before, until)| until > now && iat.is_none_or(|i| i < before))
    }

    /// Drops entries whose deadline has passed, the earliest first, at most `EXPIRE_BATCH`
    /// of each kind; returns whether some may be left.
    pub fn expire(&mut self, now: u64) -> bool {
        let mut left = false;
        for kind in [Kind::Ban, Kind::Mute, Kind::Revoke] {
            left |= self.expire_kind(kind, now, EXPIRE_BATCH);
        }
        left
    }

    /// Whether `kind` is at its bound after dropping up to a batch of its expired entries.
    fn room_for(&mut self, kind: Kind, now: u64) -> bool {
        self.expire_kind(kind, now, EXPIRE_BATCH);
        let (len, max) = match kind {
            Kind::Ban => (self.bans.len(), MAX_BANS),
            Kind::Mute => (self.mutes_due.len(), MAX_MUTES),
            Kind::Revoke => (self.revoked.len(), MAX_REVOKED),
        };
        len >= max
    }

    fn expire_kind(&mut self, kind: Kind, now: u64, batch: usize) -> bool {
        for _ in 0..batch {
            match kind {
                Kind::Ban => match self.bans_due.first() {
                    Some((u, _)) if *u <= now => {
                        let (_, id) = self.bans_due.pop_first().expect("first");
                        self.bans.remove(&id);
                    }
                    _ => return false,
                },
                Kind::Revoke => match self.revoked_due.first() {
                    Some((u, _)) if *u <= now => {
                        let (_, id) = self.revoked_due.pop_first().expect("first");
                        self.revoked.remove(&id);
                    }
                    _ => return false,
                },
                Kind::Mute => match self.mutes_due.first() {
                    Some((u, _, _)) if *u <= now => {
                        let (_, id, room) = self.mutes_due.pop_first().expect("first");
                        let room = (!room.is_empty()).then_some(room);
                        self.lift_due(&id, room);
                    }
                    _ => return false,
                },
            }
        }
        true
    }

    /// Takes out one mute whose index entry is already gone.
    fn lift_due(&mut self, id: &Rc<str>, room: Option<Rc<str>>) {
        let Some(m) = self.mutes.get_mut(id) else { return };
        match room {
            None => m.global = None,
            Some(r) => m.rooms.retain(|(n, _)| *n != r),
        }
        if m.global.is_none() && m.rooms.is_empty() {
            self.mutes.remove(id);
        }
    }

    /// Replaces everything with `entries` (the cluster's set, as Redis keeps it), as far as
    /// the bounds allow; returns how many were not kept.
    pub fn load(&mut self, entries: impl Iterator<Item = Decision>, now: u64) -> usize {
        *self = Moderation::default();
        entries.filter(|e| self.apply(e, now).is_err()).count()
    }

    /// Bans, mutes and revocations kept now (expired ones the sweep has not dropped included).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.bans.len(), self.mutes_due.len(), self.revoked.len())
    }

    pub fn shrink(&mut self) {
        self.bans.shrink_to_fit();
        self.mutes.shrink_to_fit();
        self.revoked.shrink_to_fit();
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Ban,
    Mute,
    Revoke,
}

/// What a kick did on this node.
#[derive(Debug, PartialEq, Eq)]
pub struct Kicked {
    /// The room as named.
    pub room: Rc<str>,
    /// The user's id as typed.
    pub id: Rc<str>,
    /// Whether this node has no member of the room left.
    pub last_local: bool,
}

impl Chat {
    /// The moderation state (bans, mutes, revocations).
    pub fn moderation(&self) -> &Moderation {
        &self.moderation
    }

    pub fn moderation_mut(&mut self) -> &mut Moderation {
        &mut self.moderation
    }

    /// Takes local user `id` (connected or in its grace) out of room `name`: a connected one
    /// gets `{"type":"left","room":R,"kicked":true}`, and the other members a `leave`. None if
    /// the user is not a member here.
    pub fn kick(&mut self, id: &str, name: &str, sink: &mut impl Sink) -> Option<Kicked> {
        let room = protocol::room_name(name)?;
        let rk = self.rooms.key(&room)?;
        let k = key(id);
        let rname = Rc::clone(&self.rooms.room(rk).name);
        if let Some((token, u)) = self.users.get_mut(&k) {
            if !u.rooms.contains(rk as u32) {
                return None;
            }
            u.rooms.remove(rk as u32);
            let id: Rc<str> = Rc::from(&*u.id);
            let last_local = self.rooms.leave_local(rk, token, &id);
            sink.push(token as usize, &protocol::kicked(&rname));
            self.events.record(|| Fact::Leave(Rc::clone(&rname), Rc::clone(&id)));
            return Some(Kicked { room: rname, id, last_local });
        }
        // In its grace: it comes back without the room (and learns it from the leave it
        // missed only by the room's absence: its rooms are restored quiet, this one not).
        let away = self.holds.get_any(&k)?;
        if !away.rooms.contains(&(rk as u32)) {
            return None;
        }
        let id = Rc::clone(&away.id);
        self.holds.forget_room(&k, rk as u32);
        let last_local = self.rooms.leave_away(rk, &k);
        self.events.record(|| Fact::Leave(Rc::clone(&rname), Rc::clone(&id)));
        Some(Kicked { room: rname, id, last_local })
    }

    /// Ends local user `id`'s hold now, if it is in its grace: no resume, its rooms left
    /// (announced), its senders told what it never got. For the server to announce.
    pub fn drop_hold(&mut self, id: &str, sink: &mut impl Sink) -> Option<Gone> {
        let k = key(id);
        let away: Away = self.holds.take(&k)?;
        Some(self.end_hold(&k, away, sink))
    }

    /// A user's message refused for a mute: the error (with `until`, and the room or the
    /// recipient), or None if `from` may send it at `ts`.
    pub(super) fn mute_error(
        &self,
        from: &str,
        room: Option<&str>,
        to: Option<&str>,
        ts: u64,
    ) -> Option<bytes::Bytes> {
        if self.moderation.mutes.is_empty() {
            return None;
        }
        let until = self.moderation.muted(&key(from), room, ts)?;
        Some(protocol::moderated(protocol::ErrorCode::Muted, until, room, to))
    }
}
