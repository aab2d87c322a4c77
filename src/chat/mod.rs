//! Users by id, room and private routing, and presence.
//!
//! Chat never touches a socket: it pushes encoded lines to connections through a [`Sink`],
//! which the server implements over its outboxes (and the tests over a Vec). Ids are unique
//! ignoring ASCII case and confusable characters; the maps are keyed by `ids::key` and keep
//! the id as typed.
//!
//! With a cluster, users on other nodes are kept in a second map (`remote`): they appear in
//! welcomes and presence, and a private message to one comes back as [`Outcome::Remote`] for
//! the server to forward. Chat itself never talks to Redis.
//!
//! Presence is batched per loop turn: joins and leaves of one turn become one shared buffer,
//! and each user gets the part of it that happened after their own join. Above
//! `presence_limit` users nobody gets join/leave events and the welcome lists only that many
//! ids (`total` still counts everyone), so a mass connect costs linear, not quadratic, traffic.
//! Whenever the crowd crosses the limit, in either direction, everyone gets one `users` line
//! (the list and the true total), so nobody is left believing a list that events stopped
//! keeping up to date.

pub mod ids;

use crate::protocol::{self, ErrorCode};
use bytes::Bytes;
use ids::{Claim, Reserved, Secret, key};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

/// Where chat lines go. `token` names a connection.
pub trait Sink {
    /// Queues a line the recipient must get (room, presence, replies); a recipient that
    /// cannot hold it is the sink's to judge.
    fn push(&mut self, token: usize, line: &Bytes);
    /// Queues a line only if the recipient can take it now; false means it was not queued and
    /// the cost falls on whoever sent it (a private message to a busy recipient).
    fn offer(&mut self, token: usize, line: &Bytes) -> bool;
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
    /// Messages per second (`--rate-limit`), for the welcome.
    rate_limit: u32,
    /// Whether presence was quiet (above the limit) at the last flush.
    was_quiet: bool,
    /// Ids held for clients the server closed (see `ids`).
    pub reserved: Reserved,
}

impl Chat {
    pub fn new(presence_limit: usize, max_text: usize, rate_limit: u32) -> Self {
        Chat {
            users: HashMap::new(),
            remote: HashMap::new(),
            cluster_down: false,
            events: Vec::new(),
            starts: Vec::new(),
            presence_limit,
            max_text,
            rate_limit,
            was_quiet: false,
            reserved: Reserved::default(),
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

    /// Whether `id` could join here as far as this node can tell: valid, not local, not held
    /// for a closed client, and (while the cluster is down) not known on another node.
    /// Returns its key.
    pub fn check(&self, id: &str, now: Instant) -> Result<String, ErrorCode> {
        if !protocol::valid_id(id) {
            return Err(ErrorCode::BadId);
        }
        let k = key(id);
        if self.users.contains_key(k.as_str())
            || self.reserved.is_held(&k, now)
            || (self.cluster_down && self.remote.contains_key(k.as_str()))
        {
            return Err(ErrorCode::IdTaken);
        }
        Ok(k)
    }

    /// Takes back `id` held for a closed client if `presented` is its secret; true if so.
    pub fn resume(&mut self, id: &str, presented: Option<&Secret>, now: Instant) -> bool {
        presented.is_some() && self.reserved.claim(&key(id), presented, now) == Claim::Resumed
    }

    /// Claims `id` for `token` and queues its welcome (carrying `secret`, the client's resume
    /// token); returns the id to keep for the session. Fails with `bad_id` or `id_taken`.
    /// With a cluster, Redis has already granted the id, so a stale remote entry for it (a
    /// user who moved here) is dropped.
    pub fn join(
        &mut self,
        id: &str,
        token: usize,
        secret: &Secret,
        resumed: bool,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Result<Rc<str>, ErrorCode> {
        let k = self.check(id, now)?;
        self.remote.remove(k.as_str());
        let shared: Rc<str> = Rc::from(id);
        let key = if k == id { Rc::clone(&shared) } else { Rc::from(k) };
        let local = self.users.values().map(|u| &*u.id);
        let others =
            local.chain(self.remote.values().map(|r| &*r.id)).take(self.presence_limit.saturating_sub(1));
        let total = self.users.len() + self.remote.len() + 1;
        let welcome = protocol::welcome(&protocol::Welcome {
            id,
            users: std::iter::once(id).chain(others).collect(),
            total,
            max_text: self.max_text,
            rate_limit: self.rate_limit,
            burst: 2 * self.rate_limit,
            resume: &ids::token_text(secret),
            resumed,
        });
        sink.push(token, &welcome);
        let joined_at = self.record(true, id);
        self.users.insert(key, User { token: token as u32, id: Rc::clone(&shared), joined_at });
        Ok(shared)
    }

    /// Returns the user table's and presence buffers' memory (when the server has gone idle).
    pub fn shrink(&mut self) {
        self.users.shrink_to_fit();
        self.remote.shrink_to_fit();
        self.reserved.shrink();
        self.events.shrink_to_fit();
        self.starts.shrink_to_fit();
    }

    /// Frees `id` at once, so it can be claimed again in the same turn.
    pub fn leave(&mut self, id: &str) {
        if self.users.remove(&*key(id)).is_some() {
            self.record(false, id);
        }
    }

    /// The keys of every local user, and of ids held for closed clients (for registering
    /// them in Redis: a held id stays ours cluster-wide).
    pub fn local_keys(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(|k| &**k).chain(self.reserved.keys())
    }

    /// The ids, as typed, of every local user (for a roster).
    pub fn local_ids(&self) -> impl Iterator<Item = &str> {
        self.users.values().map(|u| &*u.id)
    }

    /// The connection of local user `id`, if any.
    pub fn token_of(&self, id: &str) -> Option<usize> {
        self.users.get(&*key(id)).map(|u| u.token as usize)
    }

    /// `id` is on `node`. A local user of that id wins: Redis gave it to us, so the remote
    /// news is stale or a conflict that re-registration will settle.
    pub fn remote_join(&mut self, node: &str, id: &str) {
        if !protocol::valid_id(id) {
            return;
        }
        let lower = key(id);
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
        let lower = key(id);
        if self.remote.get(lower.as_str()).is_some_and(|r| &*r.node == node)
            && let Some(r) = self.remote.remove(lower.as_str())
        {
            self.record(false, &r.id);
        }
    }

    /// Everyone on `node`, replacing what we knew: joins and leaves for the difference.
    pub fn remote_roster(&mut self, node: &str, ids: &[&str]) {
        let listed: std::collections::HashSet<String> = ids.iter().map(|i| key(i)).collect();
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

    /// A private line from another node for local user `to`: `unknown_recipient` if `to` is
    /// not here, `recipient_busy` if its queue cannot take it now (as for a local sender).
    pub fn deliver_private(&self, to: &str, line: &Bytes, sink: &mut impl Sink) -> Result<(), ErrorCode> {
        let u = self.users.get(&*key(to)).ok_or(ErrorCode::UnknownRecipient)?;
        if sink.offer(u.token as usize, line) { Ok(()) } else { Err(ErrorCode::RecipientBusy) }
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
            // A `to` that names nobody could be (`""`, `"a b"`) is a client bug, not a room
            // message: refusing it keeps private text private.
            Some(to) if !protocol::valid_id(to) => refuse(&mut reply, ErrorCode::BadMessage, None),
            Some(to) => {
                let lower = key(to);
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
                // The recipient is judged by what it does, not by what others send it: if it
                // cannot take this now, the sender hears so and nobody is disconnected.
                if !sink.offer(rcpt.token as usize, &line) {
                    let to = Rc::clone(&rcpt.id);
                    return refuse(&mut |l: &Bytes| sink.push(token, l), ErrorCode::RecipientBusy, Some(&to));
                }
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
        let total = self.users.len() + self.remote.len();
        let quiet = total > self.presence_limit;
        // Crossing the limit either way: events alone would leave lists wrong (quiet turns
        // hid joins that a later leave does not undo), so everyone gets the whole list again.
        let truth = (quiet != self.was_quiet).then(|| {
            let local = self.users.values().map(|u| &*u.id);
            let ids = local.chain(self.remote.values().map(|r| &*r.id)).take(self.presence_limit);
            protocol::users(ids, total)
        });
        self.was_quiet = quiet;
        for u in self.users.values_mut() {
            let from = if u.joined_at == OLD { 0 } else { u.joined_at as usize + 1 };
            u.joined_at = OLD;
            if let Some(line) = &truth {
                sink.push(u.token as usize, line);
            } else if !quiet && from < self.starts.len() {
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
        fn offer(&mut self, token: usize, line: &Bytes) -> bool {
            // Connection 99 stands for a recipient that cannot take more right now.
            token != 99 && {
                self.push(token, line);
                true
            }
        }
    }

    impl Rec {
        fn take(&mut self) -> Vec<(usize, String)> {
            std::mem::take(&mut self.0)
        }
    }

    fn chat_with(ids: &[&str]) -> (Chat, Rec) {
        let mut c = Chat::new(100, 10, 20);
        let mut r = Rec::default();
        for (t, id) in ids.iter().enumerate() {
            c.join(id, t, &[0; 16], false, std::time::Instant::now(), &mut r).unwrap();
        }
        c.flush_presence(&mut r);
        r.take();
        (c, r)
    }

    #[test]
    fn ids_are_unique_ignoring_case_and_free_again_on_leave() {
        let (mut c, mut r) = chat_with(&["alice"]);
        assert_eq!(
            c.join("ALICE", 9, &[0; 16], false, std::time::Instant::now(), &mut r),
            Err(ErrorCode::IdTaken)
        );
        assert_eq!(
            c.join("no spaces", 9, &[0; 16], false, std::time::Instant::now(), &mut r),
            Err(ErrorCode::BadId)
        );
        assert!(r.take().is_empty(), "a refused join queues nothing");
        c.leave("Alice");
        assert_eq!(
            c.join("ALICE", 9, &[0; 16], false, std::time::Instant::now(), &mut r).as_deref(),
            Ok("ALICE")
        );
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
        c.join("n1", 1, &[0; 16], false, std::time::Instant::now(), &mut r).unwrap();
        c.join("n2", 2, &[0; 16], false, std::time::Instant::now(), &mut r).unwrap();
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
        let mut c = Chat::new(2, 10, 20);
        let mut r = Rec::default();
        for (t, id) in ["a", "b", "c"].iter().enumerate() {
            c.join(id, t, &[0; 16], false, std::time::Instant::now(), &mut r).unwrap();
        }
        let last = &r.take()[2].1;
        assert!(last.starts_with(r#"{"type":"welcome","id":"c","users":["c","#), "{last}");
        let v: serde_json::Value = serde_json::from_str(last).unwrap();
        assert_eq!(v["users"].as_array().unwrap().len(), 2, "{last}");
        assert!(last.contains(r#""total":3,"max_text":10,"rate_limit":20,"burst":40,"resume":""#), "{last}");
        // Crossing the limit: no events, but everyone learns the list is now partial.
        c.flush_presence(&mut r);
        let got = r.take();
        assert_eq!(got.len(), 3);
        for (_, line) in &got {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!((v["type"].as_str(), v["total"].as_u64()), (Some("users"), Some(3)), "{line}");
            assert_eq!(v["users"].as_array().unwrap().len(), 2);
        }
        c.leave("a");
        c.join("d", 3, &[0; 16], false, std::time::Instant::now(), &mut r).unwrap();
        r.take();
        c.flush_presence(&mut r);
        assert!(r.take().is_empty(), "quiet while above the limit");
    }

    #[test]
    fn presence_tells_the_whole_truth_again_when_the_crowd_shrinks_back_under_the_limit() {
        // The issue's case: a and b online, c joins above the limit, then b leaves.
        let mut c = Chat::new(2, 10, 20);
        let mut r = Rec::default();
        let now = std::time::Instant::now();
        c.join("a", 0, &[0; 16], false, now, &mut r).unwrap();
        c.join("b", 1, &[0; 16], false, now, &mut r).unwrap();
        c.flush_presence(&mut r);
        c.join("c", 2, &[0; 16], false, now, &mut r).unwrap();
        c.flush_presence(&mut r);
        r.take();
        c.leave("b");
        c.flush_presence(&mut r);
        let got = r.take();
        let to_a: Vec<&String> = got.iter().filter(|(t, _)| *t == 0).map(|(_, l)| l).collect();
        assert_eq!(to_a.len(), 1, "{got:?}");
        let v: serde_json::Value = serde_json::from_str(to_a[0]).unwrap();
        assert_eq!(v["type"], "users", "a leave alone would leave a believing it is alone: {v}");
        let mut ids: Vec<&str> = v["users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
        ids.sort();
        assert_eq!((ids, v["total"].as_u64()), (vec!["a", "c"], Some(2)));
        // Back under the limit, events flow again.
        c.leave("c");
        c.flush_presence(&mut r);
        assert_eq!(r.take(), vec![(0, r#"{"type":"leave","id":"c"}"#.to_string())]);
    }

    #[test]
    fn a_private_message_to_a_busy_recipient_is_refused_to_its_sender_alone() {
        let (mut c, mut r) = chat_with(&["a", "b"]);
        c.users.get_mut("b").unwrap().token = 99; // see Rec::offer
        let out = c.handle(0, "a", r#"{"to":"b","text":"hi"}"#, 1, &mut r);
        assert_eq!(out, Outcome::Refused(ErrorCode::RecipientBusy));
        let got = r.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 0);
        assert!(
            got[0].1.contains(r#""code":"recipient_busy""#) && got[0].1.contains(r#""to":"b""#),
            "{}",
            got[0].1
        );
    }

    #[test]
    fn a_to_that_is_not_an_id_is_refused_and_reaches_nobody() {
        let (mut c, mut r) = chat_with(&["a", "b"]);
        for frame in [
            r#"{"to":null,"text":"secret"}"#,
            r#"{"to":"","text":"secret"}"#,
            r#"{"to":"a b","text":"secret"}"#,
            r#"{"to":5,"text":"secret"}"#,
            r#"{"to":["b"],"text":"secret"}"#,
            r#"{"to":{"id":"b"},"text":"secret"}"#,
            r#"{"to":false,"text":"secret"}"#,
        ] {
            assert_eq!(
                c.handle(0, "a", frame, 1, &mut r),
                Outcome::Refused(ErrorCode::BadMessage),
                "{frame}"
            );
            let got = r.take();
            assert_eq!(got.len(), 1, "{frame}: {got:?}");
            assert_eq!(got[0].0, 0);
            assert!(!got[0].1.contains("secret"));
        }
    }

    #[test]
    fn confusable_ids_are_one_user() {
        let (mut c, mut r) = chat_with(&["alice", "bob"]);
        for twin in ["aIice", "a1ice", "ALICE", "b0b", "B0B"] {
            assert_eq!(
                c.join(twin, 9, &[0; 16], false, std::time::Instant::now(), &mut r),
                Err(ErrorCode::IdTaken),
                "{twin}"
            );
        }
        // A private message finds the user under any spelling of its key.
        assert_eq!(c.handle(1, "bob", r#"{"to":"a1ice","text":"hi"}"#, 1, &mut r), Outcome::Private);
        assert!(r.take()[0].1.contains(r#""to":"alice""#));
    }

    #[test]
    fn a_held_id_is_refused_to_others_and_taken_back_with_its_secret() {
        let (mut c, mut r) = chat_with(&["x"]);
        let now = std::time::Instant::now();
        let secret = ids::new_secret();
        c.reserved.hold(key("Victim"), secret, now + std::time::Duration::from_secs(10));
        assert_eq!(c.check("victim", now), Err(ErrorCode::IdTaken));
        assert!(!c.resume("victim", Some(&ids::new_secret()), now), "a wrong secret");
        assert!(!c.resume("victim", None, now));
        assert!(c.resume("VICTIM", Some(&secret), now));
        assert_eq!(c.join("victim", 5, &ids::new_secret(), true, now, &mut r).as_deref(), Ok("victim"));
        assert!(r.take()[0].1.contains(r#""resumed":true"#));
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
        assert!(c.join("x", 6, &[0; 16], false, std::time::Instant::now(), &mut r).is_ok());
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
        assert_eq!(c.check("zed", std::time::Instant::now()), Err(ErrorCode::IdTaken));
        let out = c.handle(0, "a", r#"{"to":"nobody","text":"hi"}"#, 1, &mut r);
        assert_eq!(out, Outcome::Refused(ErrorCode::ClusterUnavailable));
        c.cluster_down = false;
        assert_eq!(
            c.check("zed", std::time::Instant::now()).as_deref(),
            Ok("zed"),
            "Redis decides while it is up"
        );
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
        assert!(c.join("D", 7, &[0; 16], false, std::time::Instant::now(), &mut r).is_ok());
        assert_eq!(c.remote_len(), 0);
    }
}
