//! Users by id, room and private routing, and presence.
//!
//! Chat never touches a socket: it pushes encoded lines to connections through a [`Sink`],
//! which the server implements over its outboxes (and the tests over a Vec). Ids are unique
//! ignoring ASCII case; the maps are keyed by the lowercased id and keep the id as typed.
//!
//! With a cluster, users on other nodes are kept in a second map (`remote`): they appear in
//! welcomes and presence, and a private message to one comes back as [`Outcome::Remote`] for
//! the server to forward. Chat itself never talks to Redis.
//!
//! Presence is batched per loop turn: joins and leaves of one turn become one shared buffer,
//! and each user gets the part of it that happened after their own join. Above
//! `presence_limit` users nobody gets join/leave events and the welcome lists only that many
//! ids (`total` still counts everyone), so a mass connect costs linear, not quadratic, traffic.

use crate::protocol::{self, ErrorCode};
use bytes::Bytes;
use std::collections::HashMap;
use std::rc::Rc;

/// Where chat lines go. `token` names a connection.
pub trait Sink {
    fn push(&mut self, token: usize, line: &Bytes);
}

/// What a client frame turned into, for the caller's counters, logs and the cluster.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered to every local user; other nodes still need `0`.
    Room(Bytes),
    Private,
    /// For a user on another node: nothing was queued, not even the sender's copy, which the
    /// caller sends once the message is on its way.
    Remote {
        node: Rc<str>,
        to: Rc<str>,
        line: Bytes,
    },
    Refused(ErrorCode),
}

const OLD: u32 = u32::MAX;

struct User {
    /// u32, not usize: with `joined_at` it packs the map's slots 8 bytes smaller.
    token: u32,
    /// The id as typed, shared with the connection's session.
    id: Rc<str>,
    /// Index of this user's join event in the current turn's batch, or OLD.
    joined_at: u32,
}

/// A user on another node.
struct Remote {
    id: Rc<str>,
    node: Rc<str>,
}

pub struct Chat {
    /// Keyed by the lowercased id, which is the same allocation as `User::id` when the id
    /// was typed in lowercase (the usual case): one string per user, not three.
    users: HashMap<Rc<str>, User>,
    /// Users on other nodes, keyed like `users`. Never holds a local user's key.
    remote: HashMap<Rc<str>, Remote>,
    /// Set by the server while the cluster is configured but unreachable (from start-up until
    /// the link is up, and from each failure until it is up again): sends that need
    /// another node are refused with `cluster_unavailable`, and ids are checked against the
    /// last known remote roster since Redis cannot be asked.
    pub cluster_down: bool,
    /// This turn's presence lines, separated by `\n`.
    events: Vec<u8>,
    /// Start of each event in `events`.
    starts: Vec<usize>,
    presence_limit: usize,
    max_text: usize,
}

impl Chat {
    pub fn new(presence_limit: usize, max_text: usize) -> Self {
        Chat {
            users: HashMap::new(),
            remote: HashMap::new(),
            cluster_down: false,
            events: Vec::new(),
            starts: Vec::new(),
            presence_limit,
            max_text,
        }
    }

    /// Local users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Users on other nodes, as far as this node knows.
    pub fn remote_len(&self) -> usize {
        self.remote.len()
    }

    /// Whether `id` could join here as far as this node can tell: valid, not local, and (while
    /// the cluster is down) not known on another node. Returns the lowercased id.
    pub fn check(&self, id: &str) -> Result<String, ErrorCode> {
        if !protocol::valid_id(id) {
            return Err(ErrorCode::BadId);
        }
        let lower = id.to_ascii_lowercase();
        if self.users.contains_key(lower.as_str())
            || (self.cluster_down && self.remote.contains_key(lower.as_str()))
        {
            return Err(ErrorCode::IdTaken);
        }
        Ok(lower)
    }

    /// Claims `id` for `token` and queues its welcome; returns the id to keep for the session.
    /// Fails with `bad_id` or `id_taken`. With a cluster, Redis has already granted the id,
    /// so a stale remote entry for it (a user who moved here) is dropped.
    pub fn join(&mut self, id: &str, token: usize, sink: &mut impl Sink) -> Result<Rc<str>, ErrorCode> {
        let lower = self.check(id)?;
        self.remote.remove(lower.as_str());
        let shared: Rc<str> = Rc::from(id);
        let key = if lower == id { Rc::clone(&shared) } else { Rc::from(lower) };
        let local = self.users.values().map(|u| &*u.id);
        let others =
            local.chain(self.remote.values().map(|r| &*r.id)).take(self.presence_limit.saturating_sub(1));
        let total = self.users.len() + self.remote.len() + 1;
        let welcome = protocol::welcome(id, std::iter::once(id).chain(others), total);
        sink.push(token, &welcome);
        let joined_at = self.record(true, id);
        self.users.insert(key, User { token: token as u32, id: Rc::clone(&shared), joined_at });
        Ok(shared)
    }

    /// Returns the user table's and presence buffers' memory (when the server has gone idle).
    pub fn shrink(&mut self) {
        self.users.shrink_to_fit();
        self.remote.shrink_to_fit();
        self.events.shrink_to_fit();
        self.starts.shrink_to_fit();
    }

    /// Frees `id` at once, so it can be claimed again in the same turn.
    pub fn leave(&mut self, id: &str) {
        if self.users.remove(&*id.to_ascii_lowercase()).is_some() {
            self.record(false, id);
        }
    }

    /// The lowercased ids of every local user (for registering them in Redis).
    pub fn local_keys(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(|k| &**k)
    }

    /// The ids, as typed, of every local user (for a roster).
    pub fn local_ids(&self) -> impl Iterator<Item = &str> {
        self.users.values().map(|u| &*u.id)
    }

    /// The connection of local user `id`, if any.
    pub fn token_of(&self, id: &str) -> Option<usize> {
        self.users.get(&*id.to_ascii_lowercase()).map(|u| u.token as usize)
    }

    /// `id` is on `node`. A local user of that id wins: Redis gave it to us, so the remote
    /// news is stale or a conflict that re-registration will settle.
    pub fn remote_join(&mut self, node: &str, id: &str) {
        if !protocol::valid_id(id) {
            return;
        }
        let lower = id.to_ascii_lowercase();
        if self.users.contains_key(lower.as_str()) {
            return;
        }
        match self.remote.get_mut(lower.as_str()) {
            Some(r) if &*r.node == node && &*r.id == id => {}
            Some(r) => {
                r.node = Rc::from(node);
                r.id = Rc::from(id);
            }
            None => {
                self.remote.insert(Rc::from(lower), Remote { id: Rc::from(id), node: Rc::from(node) });
                self.record(true, id);
            }
        }
    }

    /// `id` left `node`; ignored if we know it on another node since (it moved).
    pub fn remote_leave(&mut self, node: &str, id: &str) {
        let lower = id.to_ascii_lowercase();
        if self.remote.get(lower.as_str()).is_some_and(|r| &*r.node == node)
            && let Some(r) = self.remote.remove(lower.as_str())
        {
            self.record(false, &r.id);
        }
    }

    /// Everyone on `node`, replacing what we knew: joins and leaves for the difference.
    pub fn remote_roster(&mut self, node: &str, ids: &[&str]) {
        let listed: std::collections::HashSet<String> = ids.iter().map(|i| i.to_ascii_lowercase()).collect();
        let gone: Vec<Rc<str>> = self
            .remote
            .iter()
            .filter(|(k, r)| &*r.node == node && !listed.contains(&***k))
            .map(|(_, r)| Rc::clone(&r.id))
            .collect();
        for id in gone {
            self.remote_leave(node, &id);
        }
        for id in ids {
            self.remote_join(node, id);
        }
    }

    /// `node` is gone: so are its users.
    pub fn drop_node(&mut self, node: &str) {
        self.remote_roster(node, &[]);
    }

    /// How many users we believe `node` has.
    pub fn count_on(&self, node: &str) -> usize {
        self.remote.values().filter(|r| &*r.node == node).count()
    }

    /// A room line from another node, for every local user.
    pub fn deliver_room(&self, line: &Bytes, sink: &mut impl Sink) {
        for u in self.users.values() {
            sink.push(u.token as usize, line);
        }
    }

    /// A private line from another node for local user `to`; false if `to` is not here.
    pub fn deliver_private(&self, to: &str, line: &Bytes, sink: &mut impl Sink) -> bool {
        match self.users.get(&*to.to_ascii_lowercase()) {
            Some(u) => {
                sink.push(u.token as usize, line);
                true
            }
            None => false,
        }
    }

    fn record(&mut self, joined: bool, id: &str) -> u32 {
        if !self.starts.is_empty() {
            self.events.push(b'\n');
        }
        self.starts.push(self.events.len());
        protocol::presence_into(&mut self.events, joined, id);
        (self.starts.len() - 1) as u32
    }

    /// Routes one client text frame from `from` (connection `token`), stamped with `ts`.
    pub fn handle(
        &mut self,
        token: usize,
        from: &str,
        frame: &str,
        ts: u64,
        sink: &mut impl Sink,
    ) -> Outcome {
        let refuse = |sink: &mut dyn FnMut(&Bytes), code, to: Option<&str>| {
            sink(&protocol::error(code, to));
            Outcome::Refused(code)
        };
        let mut reply = |line: &Bytes| sink.push(token, line);
        let Some(msg) = protocol::decode(frame) else {
            return refuse(&mut reply, ErrorCode::BadMessage, None);
        };
        let text = msg.text.trim();
        if text.is_empty() {
            return refuse(&mut reply, ErrorCode::Empty, None);
        }
        if text.len() > self.max_text && text.chars().count() > self.max_text {
            return refuse(&mut reply, ErrorCode::TooLong, None);
        }
        match msg.to.as_deref() {
            None => {
                let line = protocol::message(from, None, text, ts);
                self.deliver_room(&line, sink);
                Outcome::Room(line)
            }
            Some(to) => {
                let lower = to.to_ascii_lowercase();
                let Some(rcpt) = self.users.get(lower.as_str()) else {
                    return match self.remote.get(lower.as_str()) {
                        _ if self.cluster_down => refuse(&mut reply, ErrorCode::ClusterUnavailable, Some(to)),
                        Some(r) => Outcome::Remote {
                            node: Rc::clone(&r.node),
                            to: Rc::clone(&r.id),
                            line: protocol::message(from, Some(&r.id), text, ts),
                        },
                        None => refuse(&mut reply, ErrorCode::UnknownRecipient, Some(to)),
                    };
                };
                let line = protocol::message(from, Some(&rcpt.id), text, ts);
                sink.push(rcpt.token as usize, &line);
                if rcpt.token as usize != token {
                    sink.push(token, &line);
                }
                Outcome::Private
            }
        }
    }

    /// Sends this turn's joins and leaves; call once at the end of every loop turn.
    pub fn flush_presence(&mut self, sink: &mut impl Sink) {
        if self.starts.is_empty() {
            return;
        }
        let batch = Bytes::from(std::mem::take(&mut self.events));
        let quiet = self.users.len() + self.remote.len() > self.presence_limit;
        for u in self.users.values_mut() {
            let from = if u.joined_at == OLD { 0 } else { u.joined_at as usize + 1 };
            u.joined_at = OLD;
            if !quiet && from < self.starts.len() {
                sink.push(u.token as usize, &batch.slice(self.starts[from]..));
            }
        }
        self.starts.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Rec(Vec<(usize, String)>);

    impl Sink for Rec {
        fn push(&mut self, token: usize, line: &Bytes) {
            self.0.push((token, String::from_utf8(line.to_vec()).unwrap()));
        }
    }

    impl Rec {
        fn take(&mut self) -> Vec<(usize, String)> {
            std::mem::take(&mut self.0)
        }
    }

    fn chat_with(ids: &[&str]) -> (Chat, Rec) {
        let mut c = Chat::new(100, 10);
        let mut r = Rec::default();
        for (t, id) in ids.iter().enumerate() {
            c.join(id, t, &mut r).unwrap();
        }
        c.flush_presence(&mut r);
        r.take();
        (c, r)
    }

    #[test]
    fn ids_are_unique_ignoring_case_and_free_again_on_leave() {
        let (mut c, mut r) = chat_with(&["alice"]);
        assert_eq!(c.join("ALICE", 9, &mut r), Err(ErrorCode::IdTaken));
        assert_eq!(c.join("no spaces", 9, &mut r), Err(ErrorCode::BadId));
        assert!(r.take().is_empty(), "a refused join queues nothing");
        c.leave("Alice");
        assert_eq!(c.join("ALICE", 9, &mut r).as_deref(), Ok("ALICE"));
    }

    #[test]
    fn room_message_reaches_everyone_including_sender() {
        let (mut c, mut r) = chat_with(&["a", "b", "c"]);
        let line = r#"{"type":"message","from":"b","text":"hi","ts":5}"#.to_string();
        let out = c.handle(1, "b", r#"{"text":"  hi ","from":"x"}"#, 5, &mut r);
        assert_eq!(out, Outcome::Room(Bytes::from(line.clone())));
        let mut got = r.take();
        got.sort();
        assert_eq!(got, vec![(0, line.clone()), (1, line.clone()), (2, line)]);
    }

    #[test]
    fn private_message_reaches_recipient_and_echoes_to_sender_only() {
        let (mut c, mut r) = chat_with(&["a", "Bob", "c"]);
        assert_eq!(c.handle(0, "a", r#"{"to":"BOB","text":"psst"}"#, 1, &mut r), Outcome::Private);
        let line = r#"{"type":"message","from":"a","to":"Bob","text":"psst","ts":1}"#.to_string();
        assert_eq!(r.take(), vec![(1, line.clone()), (0, line)]);
        // To yourself: one copy.
        c.handle(0, "a", r#"{"to":"a","text":"me"}"#, 1, &mut r);
        assert_eq!(r.take().len(), 1);
    }

    #[test]
    fn refusals_go_to_the_sender_alone() {
        let (mut c, mut r) = chat_with(&["a", "b"]);
        let cases = [
            (r#"{"to":"zed","text":"x"}"#, ErrorCode::UnknownRecipient, "\"to\":\"zed\""),
            ("not json", ErrorCode::BadMessage, "bad_message"),
            (r#"{"text":"   "}"#, ErrorCode::Empty, "\"empty\""),
            (r#"{"text":"12345678901"}"#, ErrorCode::TooLong, "too_long"),
        ];
        for (frame, code, needle) in cases {
            assert_eq!(c.handle(1, "b", frame, 1, &mut r), Outcome::Refused(code));
            let got = r.take();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, 1);
            assert!(got[0].1.contains(needle), "{}", got[0].1);
        }
        // Ten characters of two bytes each are within a ten-character limit.
        assert!(matches!(c.handle(1, "b", r#"{"text":"éééééééééé"}"#, 1, &mut r), Outcome::Room(_)));
    }

    #[test]
    fn presence_is_batched_and_each_joiner_sees_only_later_events() {
        let (mut c, mut r) = chat_with(&["old"]);
        c.join("n1", 1, &mut r).unwrap();
        c.join("n2", 2, &mut r).unwrap();
        c.leave("old");
        let welcomes = r.take();
        assert!(welcomes[0].1.contains(r#""users":["n1","old"]"#), "{}", welcomes[0].1);
        assert!(welcomes[1].1.contains(r#""total":3"#));
        c.flush_presence(&mut r);
        let mut got = r.take();
        got.sort();
        assert_eq!(
            got,
            vec![
                (1, "{\"type\":\"join\",\"id\":\"n2\"}\n{\"type\":\"leave\",\"id\":\"old\"}".to_string()),
                (2, "{\"type\":\"leave\",\"id\":\"old\"}".to_string()),
            ]
        );
        c.flush_presence(&mut r);
        assert!(r.take().is_empty(), "a turn without events sends nothing");
    }

    #[test]
    fn above_the_limit_presence_goes_quiet_and_welcome_is_capped() {
        let mut c = Chat::new(2, 10);
        let mut r = Rec::default();
        for (t, id) in ["a", "b", "c"].iter().enumerate() {
            c.join(id, t, &mut r).unwrap();
        }
        let last = &r.take()[2].1;
        assert!(last.starts_with(r#"{"type":"welcome","id":"c","users":["c","#), "{last}");
        let v: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(v["users"].as_array().unwrap().len(), 2, "{last}");
        assert!(last.ends_with(r#""total":3}"#));
        c.flush_presence(&mut r);
        assert!(r.take().is_empty());
    }

    #[test]
    fn remote_users_are_listed_announced_and_routed_to_their_node() {
        let (mut c, mut r) = chat_with(&["a"]);
        c.remote_join("n2", "Bob");
        c.remote_join("n2", "Bob"); // a repeat is not news
        c.remote_join("n3", "zed");
        c.flush_presence(&mut r);
        let got = r.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, "{\"type\":\"join\",\"id\":\"Bob\"}\n{\"type\":\"join\",\"id\":\"zed\"}");
        assert!(c.join("x", 6, &mut r).is_ok());
        let w = &r.take()[0].1;
        assert!(w.contains(r#""total":4"#), "the welcome counts remote users: {w}");
        // A private message to a remote user is the caller's to forward; nothing is queued.
        match c.handle(0, "a", r#"{"to":"BOB","text":"hi"}"#, 1, &mut r) {
            Outcome::Remote { node, to, line } => {
                assert_eq!((&*node, &*to), ("n2", "Bob"));
                assert!(std::str::from_utf8(&line).unwrap().contains(r#""to":"Bob""#));
            }
            other => panic!("{other:?}"),
        }
        assert!(r.take().is_empty());
        // While the cluster is down: remote ids are taken, remote sends refused.
        c.cluster_down = true;
        assert_eq!(c.check("zed"), Err(ErrorCode::IdTaken));
        let out = c.handle(0, "a", r#"{"to":"nobody","text":"hi"}"#, 1, &mut r);
        assert_eq!(out, Outcome::Refused(ErrorCode::ClusterUnavailable));
        c.cluster_down = false;
        assert_eq!(c.check("zed").as_deref(), Ok("zed"), "Redis decides while it is up");
    }

    #[test]
    fn rosters_replace_a_nodes_users_and_a_dead_node_takes_its_users_along() {
        let (mut c, mut r) = chat_with(&["a"]);
        c.remote_roster("n2", &["b", "c"]);
        c.remote_join("n3", "d");
        c.remote_leave("n3", "b"); // b is on n2, not n3: ignored
        assert_eq!((c.remote_len(), c.count_on("n2")), (3, 2));
        c.flush_presence(&mut r);
        r.take();
        c.remote_roster("n2", &["c", "e"]);
        c.flush_presence(&mut r);
        let got = r.take();
        assert_eq!(got[0].1, "{\"type\":\"leave\",\"id\":\"b\"}\n{\"type\":\"join\",\"id\":\"e\"}");
        c.drop_node("n2");
        assert_eq!(c.remote_len(), 1);
        c.remote_join("n9", "A"); // our own user's id: Redis gave it to us, the news is stale
        assert_eq!(c.remote_len(), 1);
        // A remote user who moves here is dropped from the remote map on join.
        assert!(c.join("D", 7, &mut r).is_ok());
        assert_eq!(c.remote_len(), 0);
    }
}
