//! What nodes tell each other: one header line of space-separated fields, then, for chat
//! messages, `\n` and the client's JSON line as is (see the cluster module's doc).

use bytes::Bytes;

/// A message between nodes. `&str` fields borrow the payload.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    /// A message to `room` from `node`, numbered by Redis in the room's `epoch`; `line` is
    /// the client JSON line (carrying its `seq`).
    Room {
        node: &'a str,
        room: &'a str,
        epoch: &'a str,
        line: Bytes,
    },
    /// `id` on `node` joined `room`.
    RoomJoin {
        node: &'a str,
        id: &'a str,
        room: &'a str,
    },
    /// `id` on `node` left `room`.
    RoomLeave {
        node: &'a str,
        id: &'a str,
        room: &'a str,
    },
    Join {
        node: &'a str,
        id: &'a str,
    },
    Leave {
        node: &'a str,
        id: &'a str,
    },
    /// A node (re)connected and asks everyone for their rosters.
    Hello {
        node: &'a str,
    },
    /// A node is alive and has `count` users in `memberships` room memberships in all.
    Beat {
        node: &'a str,
        count: usize,
        memberships: usize,
    },
    /// A node is shutting down: its users are gone.
    Bye {
        node: &'a str,
    },
    /// Every user on `node` with the rooms it is in (a reply to Hello or Query). On the wire
    /// each id is followed by its rooms, each marked with `@`.
    Roster {
        node: &'a str,
        members: Vec<(&'a str, Vec<&'a str>)>,
    },
    /// `node` asks for our roster.
    Query {
        node: &'a str,
    },
    /// A private message from `from` on `node` to our user `to`.
    Private {
        node: &'a str,
        to: &'a str,
        from: &'a str,
        line: Bytes,
    },
    /// Our user `from` wrote to `to`, who was not on the node we sent it to.
    Bounce {
        to: &'a str,
        from: &'a str,
    },
    /// Our user `from` wrote to `to`, whose queue could not take it (`recipient_busy`).
    Busy {
        to: &'a str,
        from: &'a str,
    },
    /// Our user `from` wrote to `to`, who is away and has no room left for it (`undelivered`).
    Undelivered {
        to: &'a str,
        from: &'a str,
    },
    /// A client on `node` presents resume token `token` for our user `id`, still connected
    /// here as far as we know (its old connection may be half-open): if the token is right,
    /// we treat that connection as lost, which puts the user's secret in Redis, and answer
    /// `Released` so that `node` can take the user over.
    Takeover {
        node: &'a str,
        id: &'a str,
        token: &'a str,
    },
    /// The answer to `Takeover`: released (`ok`), or not (a wrong token, or no such user).
    Released {
        node: &'a str,
        id: &'a str,
        ok: bool,
    },
    /// A moderation decision taken on `node` and kept in Redis (`set`: a ban, mute or
    /// revocation; else one lifted), in chat's text form (`chat::moderation`).
    Moderated {
        node: &'a str,
        set: bool,
        fields: Vec<&'a str>,
    },
    /// A backend on `node` closes every connection of `id` and drops its hold; `reason`
    /// (the body, possibly empty) is the close's.
    Disconnect {
        node: &'a str,
        id: &'a str,
        reason: Bytes,
    },
    /// A backend on `node` takes `id` out of `room`.
    Kick {
        node: &'a str,
        id: &'a str,
        room: &'a str,
    },
}

impl<'a> Msg<'a> {
    /// The node that sent it (a bounce does not say).
    pub fn node(&self) -> Option<&'a str> {
        match *self {
            Msg::Bounce { .. } | Msg::Busy { .. } | Msg::Undelivered { .. } => None,
            Msg::Room { node, .. }
            | Msg::RoomJoin { node, .. }
            | Msg::RoomLeave { node, .. }
            | Msg::Join { node, .. }
            | Msg::Leave { node, .. }
            | Msg::Hello { node }
            | Msg::Beat { node, .. }
            | Msg::Bye { node }
            | Msg::Roster { node, .. }
            | Msg::Query { node }
            | Msg::Private { node, .. }
            | Msg::Takeover { node, .. }
            | Msg::Released { node, .. }
            | Msg::Moderated { node, .. }
            | Msg::Disconnect { node, .. }
            | Msg::Kick { node, .. } => Some(node),
        }
    }

    /// Parses a payload; `None` for anything malformed (a newer or foreign publisher).
    pub fn parse(payload: &'a Bytes) -> Option<Msg<'a>> {
        let (head, body) = match payload.iter().position(|&b| b == b'\n') {
            Some(i) => (&payload[..i], Some(payload.slice(i + 1..))),
            None => (&payload[..], None),
        };
        let head = std::str::from_utf8(head).ok()?;
        // Every field we send is a kind, a node id, an id, a room (`@room` in a roster) or a
        // count: 1 to 64 of A-Z a-z 0-9 _ - . @ (an empty one would mean a double space).
        // Anything else is not our format.
        let token = |f: &str| {
            (1..=64).contains(&f.len())
                && f.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
        };
        if !head.split(' ').all(token) {
            return None;
        }
        let mut f = head.split(' ');
        let kind = f.next()?;
        let node = f.next()?;
        let msg = match (kind, body) {
            ("M", Some(line)) => Msg::Room { node, room: f.next()?, epoch: f.next()?, line },
            ("J", None) => Msg::Join { node, id: f.next()? },
            ("L", None) => Msg::Leave { node, id: f.next()? },
            ("j", None) => Msg::RoomJoin { node, id: f.next()?, room: f.next()? },
            ("l", None) => Msg::RoomLeave { node, id: f.next()?, room: f.next()? },
            ("H", None) => Msg::Hello { node },
            ("B", None) => {
                Msg::Beat { node, count: f.next()?.parse().ok()?, memberships: f.next()?.parse().ok()? }
            }
            ("G", None) => Msg::Bye { node },
            ("R", None) => {
                let mut members: Vec<(&str, Vec<&str>)> = Vec::new();
                for field in f {
                    match (field.strip_prefix('@'), members.last_mut()) {
                        (Some(room), Some((_, rooms))) => rooms.push(room),
                        (Some(_), None) => return None, // a room before any id
                        (None, _) => members.push((field, Vec::new())),
                    }
                }
                return Some(Msg::Roster { node, members });
            }
            ("Q", None) => Msg::Query { node },
            ("P", Some(line)) => Msg::Private { node, to: f.next()?, from: f.next()?, line },
            // A bounce names no node: its first field is the recipient.
            ("E", None) => Msg::Bounce { to: node, from: f.next()? },
            ("K", None) => Msg::Busy { to: node, from: f.next()? },
            ("U", None) => Msg::Undelivered { to: node, from: f.next()? },
            ("Z", None) => Msg::Takeover { node, id: f.next()?, token: f.next()? },
            ("z", None) => Msg::Released { node, id: f.next()?, ok: true },
            ("y", None) => Msg::Released { node, id: f.next()?, ok: false },
            ("V" | "W", None) => {
                let fields: Vec<&str> = f.collect();
                return (!fields.is_empty()).then_some(Msg::Moderated { node, set: kind == "V", fields });
            }
            ("D", Some(reason)) => Msg::Disconnect { node, id: f.next()?, reason },
            ("X", None) => Msg::Kick { node, id: f.next()?, room: f.next()? },
            _ => return None,
        };
        f.next().is_none().then_some(msg)
    }
}

/// Encodes a header and an optional body.
pub fn payload(fields: &[&str], body: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + body.map_or(0, <[u8]>::len));
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(f.as_bytes());
    }
    if let Some(b) = body {
        out.push(b'\n');
        out.extend_from_slice(b);
    }
    out
}

/// The fields of a roster of `members` (id, then its rooms as `@room`), after "R node".
pub fn roster_fields<'a>(members: impl Iterator<Item = (&'a str, Vec<&'a str>)>) -> Vec<String> {
    let mut out = Vec::new();
    for (id, rooms) in members {
        out.push(id.to_string());
        out.extend(rooms.into_iter().map(|r| format!("@{r}")));
    }
    out
}

/// A fresh node id: 16 hex digits, random per process, so that a restarted node never
/// mistakes its previous life's keys for its own.
pub fn new_node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness; mixing in the pid and time guards
    // against a platform where it is not.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
}
