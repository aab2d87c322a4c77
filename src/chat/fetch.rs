//! Joins that read a room's history from Redis first (a cluster).
//!
//! Every node mirrors the history of the rooms it hears (`history`), but a node that has not
//! been listening to a room (no local member until now, or the link was down) may lack what
//! Redis numbered meanwhile, and its epoch may not be Redis's. A `since`, `last` or plain
//! join that such a mirror cannot answer exactly is held here instead: the member is quiet
//! (`Flow::Quiet`: live messages of the room go into the mirror, not to it), the server asks
//! Redis (`cluster::FETCH`, on the one link, never blocking), and when the reply comes the
//! lines are merged into the mirror and the join is answered from it as on one node:
//! `joined`, a `gap` if something is gone, and the paced replay (`Flow::Replay`, `Chat::pump`).
//! Because the member is quiet from the join until the merge, and the node listens to the
//! room before it asks Redis, each message after the client's seq reaches it exactly once.
//! If Redis is down or answers nonsense, the join is answered from the mirror as it is (with
//! the `gap` that deserves).

use super::Chat;
use super::rooms::Flow;
pub use crate::cluster::{Ask, Fetch};
use crate::protocol::Replay;
use bytes::Bytes;
use std::rc::Rc;

// `Ask` and `Fetch` are data of the cluster layer (what a `FETCH` asks, and for whom), so that
// cluster.rs needs nothing of chat; turning a client's `Replay` into one and back is chat's.
impl Ask {
    fn of(replay: &Replay<'_>) -> Ask {
        match replay {
            Replay::None => Ask::None,
            Replay::Last(k) => Ask::Last(*k),
            Replay::Since { seq, epoch } => Ask::Since(*seq, Rc::from(&**epoch)),
        }
    }

    fn replay(&self) -> Replay<'_> {
        match self {
            Ask::None => Replay::None,
            Ask::Last(k) => Replay::Last(*k),
            Ask::Since(seq, epoch) => Replay::Since { seq: *seq, epoch: (&**epoch).into() },
        }
    }
}

/// What Redis keeps of a room: its epoch, latest seq, and the lines asked for.
#[derive(Debug)]
pub struct Kept {
    pub epoch: String,
    pub latest: u64,
    pub lines: Vec<Bytes>,
}

impl Chat {
    /// Whether the join of `room` (key `rk`) by `token` must wait for Redis (asked only when
    /// the broker shares a history, `Broker::shares_history`): the node's mirror of the room
    /// cannot answer `replay` exactly. If so the member is made quiet and the request queued
    /// in `fetches`.
    pub(super) fn fetch_first(&mut self, token: usize, id: &str, rk: usize, replay: &Replay<'_>) -> bool {
        let room = Rc::clone(&self.rooms.room(rk).name);
        let log = self.log_of(rk);
        // A current mirror has everything Redis has from its first message on, in Redis's
        // epoch: only what it trimmed (the byte budget) could be had from Redis.
        let serves = log.current()
            && match replay {
                Replay::None => true,
                Replay::Last(k) => log.next() - log.first() >= (*k).min(log.latest()),
                Replay::Since { seq, epoch } => **epoch != *log.epoch || seq.saturating_add(1) >= log.first(),
            };
        if serves {
            return false;
        }
        self.rooms.set_flow(rk, token as u32, Flow::Quiet);
        let offer = self.offer(&room);
        self.todo.fetches.push(Fetch { token, id: Rc::from(id), room, ask: Ask::of(replay), offer });
        true
    }

    /// Redis answered `f` with `kept` (None: it could not be asked, or answered nonsense):
    /// merges it into the mirror and answers the join from there. Nothing happens if the
    /// member left the room or its connection meanwhile.
    pub fn fetched(&mut self, f: &Fetch, kept: Option<Kept>, sink: &mut impl super::Sink) {
        if self.token_of(&f.id) != Some(f.token) {
            return;
        }
        let Some(rk) = self.rooms.key(&f.room).filter(|rk| self.rooms.has_local(*rk, f.token as u32)) else {
            return;
        };
        if let Some(k) = kept.filter(|k| !k.epoch.is_empty()) {
            let lines = if consecutive_to(&k.lines, k.latest) { k.lines } else { Vec::new() };
            // The member is local, so the node listens to the room: the mirror stays current.
            self.history.merge(&f.room, &k.epoch, k.latest, lines, true);
            self.history.counters.fetched += 1;
        }
        self.answer_join(f.token, &f.id, rk, &f.ask.replay(), sink);
    }
}

/// Whether `lines` are messages with consecutive seqs ending at `latest` (Redis's list is;
/// anything else is not trusted, and only the room's epoch and latest seq are used).
fn consecutive_to(lines: &[Bytes], latest: u64) -> bool {
    let first = (latest + 1).checked_sub(lines.len() as u64);
    first.is_some_and(|first| {
        lines.iter().zip(first..).all(|(l, seq)| crate::protocol::line_seq(l) == Some(seq))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_consecutive_run_ending_at_the_latest_seq_is_trusted() {
        let l = |s: u64| Bytes::from(format!(r#"{{"type":"message","room":"r","seq":{s},"text":"x"}}"#));
        assert!(consecutive_to(&[l(4), l(5), l(6)], 6));
        assert!(consecutive_to(&[], 6));
        assert!(!consecutive_to(&[l(4), l(6)], 6), "a hole");
        assert!(!consecutive_to(&[l(4), l(5)], 6), "not up to the latest");
        assert!(!consecutive_to(&[l(1), l(2)], 0));
        assert!(!consecutive_to(&[Bytes::from_static(b"junk")], 1));
    }

    #[test]
    fn fetch_arguments_follow_what_the_join_asked() {
        assert_eq!(Ask::None.fetch_args(100), (u64::MAX, 0, ""));
        assert_eq!(Ask::Last(500).fetch_args(100), (0, 100, ""));
        assert_eq!(Ask::Since(7, Rc::from("Ep")).fetch_args(100), (7, 100, "Ep"));
    }
}

#[cfg(test)]
mod chat_tests {
    use super::super::{Chat, Limits};
    use super::*;
    use crate::chat::tests::{Rec, Shared};
    use std::time::Instant;

    fn msg(seq: u64) -> Bytes {
        Bytes::from(format!(r#"{{"type":"message","room":"dev","seq":{seq},"from":"z","text":"m{seq}"}}"#))
    }

    /// Types (and seqs of messages and gaps) that connection 1 got.
    fn got(r: &mut Rec) -> Vec<String> {
        std::mem::take(&mut r.0)
            .into_iter()
            .filter(|(t, _)| *t == 1)
            .map(|(_, l)| {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                match v["type"].as_str().unwrap() {
                    "message" | "gap" | "joined" => format!("{}{}", v["type"].as_str().unwrap(), v["seq"]),
                    other => other.to_string(),
                }
            })
            .collect()
    }

    #[test]
    fn a_join_the_mirror_cannot_answer_waits_quietly_for_redis_then_replays_each_message_once() {
        let mut c = Chat::new(Limits::default());
        let mut r = Rec::default();
        let t = Instant::now();
        c.join("a", 1, &[0; 16], None, 0, t, &mut r).unwrap();
        r.0.clear();
        c.handle(1, "a", r#"{"join":"dev","since":5,"epoch":"E1"}"#, 0, t, &mut r, &mut Shared);
        assert!(got(&mut r).is_empty(), "nothing until Redis answers");
        assert_eq!(c.todo.fetches.len(), 1);
        let f = c.todo.fetches.pop().unwrap();
        assert_eq!((f.token, &*f.room, &f.ask), (1, "dev", &Ask::Since(5, Rc::from("E1"))));
        // Live traffic while Redis is asked goes to the mirror only.
        c.deliver_room("dev", "E1", &msg(9), &mut r);
        c.deliver_room("dev", "E1", &msg(10), &mut r);
        assert!(got(&mut r).is_empty());
        let kept = Kept { epoch: "E1".into(), latest: 9, lines: (6..=9).map(msg).collect() };
        c.fetched(&f, Some(kept), &mut r);
        c.pump(t, &mut r);
        assert_eq!(got(&mut r), ["joined10", "message6", "message7", "message8", "message9", "message10"]);
        c.deliver_room("dev", "E1", &msg(11), &mut r);
        assert_eq!(got(&mut r), ["message11"], "live after the replay");
        // Now the mirror is current: a since join it can answer does not wait.
        c.handle(1, "a", r#"{"join":"dev","since":8,"epoch":"E1"}"#, 0, t, &mut r, &mut Shared);
        c.pump(t, &mut r);
        assert!(c.todo.fetches.is_empty());
        assert_eq!(got(&mut r), ["joined11", "message9", "message10", "message11"]);
        assert_eq!(c.history.counters.fetched, 1);
    }

    #[test]
    fn without_an_answer_from_redis_the_mirror_answers_with_the_gap_it_deserves() {
        let mut c = Chat::new(Limits::default());
        let mut r = Rec::default();
        let t = Instant::now();
        c.join("a", 1, &[0; 16], None, 0, t, &mut r).unwrap();
        c.handle(1, "a", r#"{"join":"dev","since":5,"epoch":"E1"}"#, 0, t, &mut r, &mut Shared);
        r.0.clear();
        let f = c.todo.fetches.pop().unwrap();
        c.deliver_room("dev", "E1", &msg(9), &mut r);
        c.fetched(&f, None, &mut r);
        c.pump(t, &mut r);
        assert_eq!(got(&mut r), ["joined9", "gap9", "message9"]);
        // The mirror lacks 3..=8, which Redis may keep: asked again. A reply whose lines are
        // not a run up to the latest seq is not trusted: only its epoch and seq count.
        c.handle(1, "a", r#"{"join":"dev","since":2,"epoch":"E1"}"#, 0, t, &mut r, &mut Shared);
        let f = c.todo.fetches.pop().expect("asks Redis");
        let kept = Kept { epoch: "E1".into(), latest: 9, lines: vec![msg(3), msg(5)] };
        c.fetched(&f, Some(kept), &mut r);
        c.pump(t, &mut r);
        assert_eq!(got(&mut r), ["joined9", "gap9", "message9"]);
    }
}
