//! A user in its resume grace that comes back on another node (a cluster).
//!
//! The node that lost the connection (A) holds the user (`resume::Holds`) and keeps the
//! SHA-1 of its secret in Redis (`cluster::LOST`); the node the client reaches (B) lets it in
//! when Redis finds the secret right (`cluster::RESUME`) and takes the user over here
//! (`Chat::take_over`): its rooms are the ones B already lists it in as A's member, restored
//! quiet until joined, as on one node. B then announces the user as its own; A, hearing that,
//! lets its hold go without a leave (`Chat::moved`), and every other node moves the user to B
//! in place. Nobody sees a leave/join pair, since the user never left.

use super::ids::{Secret, key};
use super::join::Entry;
use super::resume::{Kept, Private};
use super::users::UserId;
use super::{Chat, Sink, User};
use crate::protocol::{self, ErrorCode, LOBBY};
use bytes::Bytes;
use std::rc::Rc;

/// A private message kept for a local user in its grace, to be kept in Redis too.
#[derive(Debug)]
pub struct KeptAway {
    /// The recipient, as typed.
    pub to: Rc<str>,
    pub pseq: u64,
    /// The recipient's copy (carrying `pseq`).
    pub copy: Bytes,
    pub from: Rc<str>,
    /// The sender's copy: what follows the recipient to another node if it moved meanwhile.
    pub line: Bytes,
}

/// What Redis kept for a user taken over: its last pseq and its private messages (its
/// copies, oldest first).
#[derive(Debug, Default)]
pub struct Backlog {
    pub pseq: u64,
    pub kept: Vec<Bytes>,
}

/// A user taken over from another node: its id as typed, and its rooms (names, and whether
/// this node had no member in it before: it must start hearing it).
pub struct TakenOver {
    pub id: Rc<str>,
    pub rooms: Vec<(Rc<str>, bool)>,
}

impl Chat {
    /// Takes `id` over on connection `token`: Redis let it in with its resume secret, held on
    /// another node. Its welcome (`resumed`, with `secret` as the next token) is queued, then
    /// the private messages of `backlog` after the `pseq` the client has; its rooms are those
    /// its node listed it in (just the lobby if this node knows none and `entry` allows it).
    /// Signed in (`--auth token`), the welcome carries `entry.exp`, as `Chat::join_as`'s does.
    #[allow(clippy::too_many_arguments)]
    pub fn take_over(
        &mut self,
        id: &str,
        token: usize,
        secret: &Secret,
        pseq: u64,
        backlog: Backlog,
        entry: Entry,
        sink: &mut impl Sink,
    ) -> Result<TakenOver, ErrorCode> {
        if !protocol::valid_id(id) {
            return Err(ErrorCode::BadId);
        }
        let k = key(id);
        if self.users.contains(id) {
            return Err(ErrorCode::IdTaken);
        }
        let (ukey, shared, keys) = match self.remote.remove_entry(k.as_str()) {
            Some((ukey, r)) => (ukey, r.id, r.rooms),
            None => (Rc::from(k.as_str()), Rc::from(id), Vec::new()),
        };
        let mut rooms = Vec::new();
        let mut kept = Vec::new();
        for rk in keys {
            if self.rooms.shift(rk as usize, &ukey, false) {
                self.rooms.set_back(rk as usize, &ukey, token as u32, false);
                let room = self.rooms.room(rk as usize);
                self.history.set_idle(&room.name, None);
                rooms.push((Rc::clone(&room.name), room.local_len() == 1));
                kept.push(rk);
            }
        }
        if kept.is_empty() && entry.lobby {
            // Nothing known of its rooms: back in the lobby, as a join (the others see one).
            let j = self.rooms.join_local(LOBBY, token as u32, &shared);
            self.history.set_idle(LOBBY, None);
            let lobby = &self.rooms.room(j.key).name;
            self.events.record(|| crate::events::Fact::Join(Rc::clone(lobby), Rc::clone(&shared)));
            rooms.push((Rc::clone(&self.rooms.room(j.key).name), j.first_local));
            kept.push(j.key as u32);
        }
        // The same welcome as `Chat::join_as` gives a resumed user.
        let welcome = self.welcome_as(&shared, secret, true, entry);
        sink.push(token, &welcome);
        // Its numbering goes on from the old node's, so the client's pseq still means the same.
        let mut private = Private::default();
        private.pseq = backlog.pseq;
        for line in backlog.kept {
            let Some(n) = kept_pseq(&line) else { continue };
            if n <= pseq {
                continue; // the client has it
            }
            sink.push(token, &line);
            // Kept until acknowledged, as on the old node (see `backlog`).
            let k = Kept { pseq: n, line, from: UserId::new(""), cid: None };
            if private.has_room(k.cost()) && self.backlog.fits(k.cost()) {
                self.backlog.keep(&shared, &mut private, k);
            }
        }
        let private = (private.pseq > 0).then(|| Box::new(private));
        let user = User { id: UserId::new(&shared), rooms: kept.into() };
        self.users.insert(token as u32, user, private);
        Ok(TakenOver { id: shared, rooms })
    }

    /// `id` is now on `node` (it announced itself there). If it is a user held here in its
    /// grace, another node took it over with its secret: the hold goes without a leave, and
    /// the user stays a member of its rooms as `node`'s. The private messages kept for it are
    /// not lost: that node took them from Redis (`cluster::RESUME`), and one kept after that
    /// follows it there (`cluster::KEEP`). If it was listed on another
    /// node, it moved: it is listed on `node` now, in the same rooms, with nothing announced.
    /// Returns the rooms this node has no member of left (it stops hearing them).
    pub fn moved(&mut self, node: &str, id: &str) -> Vec<Rc<str>> {
        let k = key(id);
        if self.users.contains(id) {
            return Vec::new();
        }
        if let Some(r) = self.remote.get_mut(k.as_str()) {
            if &*r.id == id && &*r.node != node {
                r.node = Rc::from(node);
            }
            return Vec::new();
        }
        let Some(mut away) = self.holds.take(&k) else { return Vec::new() };
        self.backlog.release(&mut away.private);
        let ukey: Rc<str> = Rc::from(k.as_str());
        let mut emptied = Vec::new();
        for rk in &away.rooms {
            if self.rooms.shift(*rk as usize, &ukey, true) && self.rooms.room(*rk as usize).local_len() == 0 {
                emptied.push(Rc::clone(&self.rooms.room(*rk as usize).name));
            }
        }
        let r = super::Remote { id: away.id, node: Rc::from(node), rooms: away.rooms };
        self.remote.insert(ukey, r);
        emptied
    }
}

/// The `pseq` of a private message's recipient copy (`{"type":"message","pseq":N,...`).
fn kept_pseq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(br#"{"type":"message","pseq":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::broker::Alone;
    use crate::chat::tests::Rec;
    use crate::chat::{Limits, Outcome};
    use std::time::{Duration, Instant};

    fn chat() -> Chat {
        let mut c = Chat::new(Limits::default());
        c.set_nodes(crate::chat::Nodes::Up);
        c
    }

    #[test]
    fn a_held_user_taken_over_elsewhere_moves_without_a_leave_and_its_backlog_follows() {
        let t = Instant::now();
        let mut r = Rec::default();
        // Node A: friend and victim in the lobby, victim alone in dev; victim is lost.
        let mut a = chat();
        a.join("friend", 0, &[1; 16], None, 0, t, &mut r).unwrap();
        a.join("victim", 1, &[2; 16], None, 0, t, &mut r).unwrap();
        a.handle(1, "victim", r#"{"join":"dev"}"#, 0, t, &mut r, &mut Alone);
        a.lose("victim", [2; 16], t + Duration::from_secs(60));
        a.flush_presence(&mut r);
        r.0.clear();
        // Taken over on B: A lets the hold go, lists victim on B, announces nothing, and
        // stops hearing dev.
        let emptied = a.moved("nB", "victim");
        assert_eq!(emptied.iter().map(|e| &**e).collect::<Vec<_>>(), ["dev"]);
        assert!(a.holds.is_empty());
        assert_eq!(a.count_on("nB"), (1, 2));
        a.flush_presence(&mut r);
        assert!(r.0.is_empty(), "{:?}", r.0);
        let out = a.handle(0, "friend", r#"{"to":"victim","text":"hi"}"#, 0, t, &mut r, &mut Alone);
        assert!(matches!(out, Outcome::Remote { ref node, .. } if &**node == "nB"), "{out:?}");
        // A third node moves it in place too.
        let mut c = chat();
        c.remote_roster("nA", &[("victim", vec!["lobby"])]);
        c.flush_presence(&mut r);
        r.0.clear();
        assert!(c.moved("nB", "victim").is_empty());
        assert_eq!((c.count_on("nA"), c.count_on("nB")), ((0, 0), (1, 1)));
        // Node B takes it over: its rooms as A listed them, quiet, and the private messages
        // after the pseq the client has, numbered on from A's.
        let mut b = chat();
        b.join("friend2", 0, &[3; 16], None, 0, t, &mut r).unwrap();
        b.remote_roster("nA", &[("Victim", vec!["lobby", "dev"])]);
        b.flush_presence(&mut r);
        r.0.clear();
        let copy = |n: u64| {
            Bytes::from(format!(
                r#"{{"type":"message","pseq":{n},"from":"friend","to":"Victim","text":"p{n}"}}"#
            ))
        };
        let backlog = Backlog { pseq: 3, kept: vec![copy(1), copy(2), copy(3)] };
        let t_over = b.take_over("victim", 5, &[4; 16], 1, backlog, Entry::OPEN, &mut r).unwrap();
        assert_eq!(&*t_over.id, "Victim", "the id as typed");
        let names: Vec<(&str, bool)> = t_over.rooms.iter().map(|(n, f)| (&**n, *f)).collect();
        assert_eq!(names, [("lobby", false), ("dev", true)]);
        let got: Vec<String> = r.0.drain(..).map(|(_, l)| l).collect();
        assert!(got[0].contains(r#""resumed":true"#), "{}", got[0]);
        assert!(got[1].contains(r#""pseq":2"#) && got[2].contains(r#""pseq":3"#), "{got:?}");
        assert_eq!(got.len(), 3);
        b.flush_presence(&mut r);
        assert!(r.0.is_empty(), "nobody sees a leave/join pair: {:?}", r.0);
        assert_eq!(b.remote_len(), 0);
        b.handle(0, "friend2", r#"{"to":"victim","text":"next"}"#, 0, t, &mut r, &mut Alone);
        assert!(r.0.iter().any(|(tok, l)| *tok == 5 && l.contains(r#""pseq":4"#)), "{:?}", r.0);
        r.0.clear();
        let line = Bytes::from_static(br#"{"type":"message","room":"lobby","seq":1,"from":"x","text":"q"}"#);
        b.deliver_room("lobby", "E1", &line, &mut r);
        let to: Vec<usize> = r.0.iter().map(|(tok, _)| *tok).collect();
        assert_eq!(to, [0], "quiet until it joins");
    }
}
