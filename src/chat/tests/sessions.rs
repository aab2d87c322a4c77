//! Chat's unit tests of what outlives a connection: holds and resumes, private backlogs and
//! their acknowledgement, history replays, and users on other nodes.

use super::*;

#[test]
fn a_lost_user_stays_listed_and_is_taken_back_with_its_secret_quiet_until_it_asks() {
    let (mut c, mut r) = chat_with(&["friend"]);
    let t = now();
    let secret = ids::new_secret();
    c.join("Victim", 5, &secret, None, 0, t, &mut r).unwrap();
    say(&mut c, &mut r, 5, "Victim", r#"{"join":"dev"}"#);
    c.flush_presence(&mut r);
    r.take();
    c.lose("Victim", secret, t + Duration::from_secs(60));
    c.flush_presence(&mut r);
    assert_eq!(
        r.take(),
        vec![(0, r#"{"type":"away","room":"lobby","id":"Victim"}"#.to_string())],
        "no leave for a lost connection: it is away"
    );
    // Others still see it, and cannot take its id; a private message to it is kept.
    assert_eq!(c.check("victim", None, t), Err(ErrorCode::IdTaken));
    assert_eq!(c.check("victim", Some(&ids::new_secret()), t), Err(ErrorCode::IdTaken));
    say(&mut c, &mut r, 0, "friend", r#"{"join":"dev"}"#);
    assert!(r.take()[0].1.contains(r#""users":["friend","Victim"],"away":["Victim"],"total":2"#));
    assert_eq!(say(&mut c, &mut r, 0, "friend", r#"{"to":"victim","text":"while away"}"#), Outcome::Private);
    assert_eq!(r.take().len(), 1, "the sender's copy only");
    say(&mut c, &mut r, 0, "friend", r#"{"room":"dev","text":"missed"}"#);
    assert_eq!(r.take().len(), 1, "nobody to deliver to but the sender");
    // Back with the secret, on a new connection: resumed, its private message follows the
    // welcome (it said it had none), and dev says nothing until it asks.
    let next = ids::new_secret();
    let (id, resumed) = c.join("VICTIM", 9, &next, Some(&secret), 0, t, &mut r).unwrap();
    assert_eq!((&*id, resumed), ("Victim", true));
    let got = r.take();
    assert!(got[0].1.contains(r#""resumed":true"#), "{}", got[0].1);
    assert!(
        got[1].1.starts_with(r#"{"type":"message","pseq":1,"from":"friend","to":"Victim""#),
        "{}",
        got[1].1
    );
    assert_eq!(got.len(), 2);
    c.flush_presence(&mut r);
    let mut back: Vec<String> = r.take().into_iter().map(|(t, l)| format!("{t} {l}")).collect();
    back.sort();
    let want = [
        r#"0 {"type":"back","room":"dev","id":"Victim"}"#,
        r#"0 {"type":"back","room":"lobby","id":"Victim"}"#,
    ];
    assert_eq!(back, want, "a blip shows nobody a leave/join pair, only back");
    say(&mut c, &mut r, 0, "friend", r#"{"room":"dev","text":"live"}"#);
    assert_eq!(r.take().len(), 1, "dev is quiet for the resumed member until it asks");
    // Its join with since: everything after 0, once, then live.
    let epoch = c.history.get("dev").unwrap().epoch.to_string();
    let frame = format!(r#"{{"join":"dev","since":0,"epoch":"{epoch}"}}"#);
    assert_eq!(say(&mut c, &mut r, 9, "Victim", &frame), Outcome::Answered);
    assert!(r.take()[0].1.contains(r#""type":"joined""#));
    c.pump(t, &mut r);
    let texts: Vec<String> = r.take().into_iter().map(|(_, l)| l).collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[0].contains(r#""seq":1"#) && texts[0].contains("missed"));
    assert!(texts[1].contains(r#""seq":2"#) && texts[1].contains("live"));
    say(&mut c, &mut r, 0, "friend", r#"{"room":"dev","text":"after"}"#);
    assert_eq!(r.take().len(), 2, "live again");
    // The old secret does not work twice.
    c.lose("Victim", next, t + Duration::from_secs(60));
    assert_eq!(
        c.join("victim", 10, &ids::new_secret(), Some(&secret), 0, t, &mut r),
        Err(ErrorCode::IdTaken)
    );
}

#[test]
fn a_grace_that_ends_announces_the_leave_and_tells_senders_what_was_not_delivered() {
    let (mut c, mut r) = chat_with(&["friend", "victim"]);
    let t = now();
    c.lose("victim", [7; 16], t + Duration::from_secs(1));
    say(&mut c, &mut r, 0, "friend", r#"{"to":"victim","text":"kept"}"#);
    r.take();
    assert!(c.expire(t, &mut r).is_empty());
    let gone = c.expire(t + Duration::from_secs(1), &mut r);
    assert_eq!(gone.len(), 1);
    let got = r.take();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].1.contains(r#""code":"undelivered""#) && got[0].1.contains(r#""to":"victim""#),
        "{}",
        got[0].1
    );
    c.flush_presence(&mut r);
    let presence = r#"{"type":"away","room":"lobby","id":"victim"}
{"type":"leave","room":"lobby","id":"victim"}"#;
    assert_eq!(r.take(), vec![(0, presence.to_string())], "away when lost, leave when the grace ends");
    assert_eq!(c.check("victim", None, t + Duration::from_secs(1)).as_deref(), Ok("vlctlm"));
}

#[test]
fn private_lines_are_kept_until_a_pong_or_a_resume_acknowledges_them() {
    let (mut c, mut r) = chat_with(&["a", "b"]);
    let t = now();
    for i in 1..=3 {
        say(&mut c, &mut r, 0, "a", &format!(r#"{{"to":"b","text":"m{i}","cid":"x{i}"}}"#));
    }
    assert_eq!(c.backlog.used().0, 3);
    // b is asked about a second later (lazily: its backlog is small), one ping at a time.
    assert!(c.todo.want_ack.iter().all(|(tok, due)| *tok == 1 && *due >= t + backlog::ACK_DELAY));
    assert_eq!(c.ping_payload(1, t), b"p:3");
    assert!(c.asked(1) && c.ping_payload(0, t).is_empty(), "a has nothing to acknowledge");
    c.todo.want_ack.clear();
    c.ack(1, b"hello", t);
    assert!(c.asked(1), "an unsolicited pong acknowledges nothing");
    c.ack(1, b"p:2", t);
    assert!(!c.asked(1));
    assert_eq!(c.todo.want_ack.len(), 1, "one left: asked again");
    // Lost with m3 unacknowledged; a resume saying it has pseq 1 gets m2 (acknowledged by
    // a pong: its socket had it, but the page may have given that socket up) and m3.
    let secret = [5; 16];
    c.lose("b", secret, t + Duration::from_secs(60));
    r.take();
    c.join("b", 7, &[6; 16], Some(&secret), 1, t, &mut r).unwrap();
    let got = r.take();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[1].1.contains(r#""pseq":2"#) && got[2].1.contains(r#""pseq":3"#));
    assert_eq!(c.backlog.used().0, 2, "kept until acknowledged again");
    // Its grace ends with m2 acknowledged by a pong: only m3 is reported.
    c.ack(7, b"p:2", t);
    c.lose("b", [6; 16], t);
    r.take();
    c.expire(t + Duration::from_secs(1), &mut r);
    let to_a: Vec<String> = r.take().into_iter().filter(|(tok, _)| *tok == 0).map(|(_, l)| l).collect();
    assert_eq!(to_a.len(), 1, "{to_a:?}");
    assert!(to_a[0].contains(r#""cid":"x3""#), "{to_a:?}");
    assert_eq!(c.backlog.used(), (0, 0));
}

#[test]
fn past_max_holds_the_oldest_hold_ends_and_its_senders_hear_which_messages() {
    let mut c = Chat::new(Limits { max_holds: 1, ..limits(100) });
    let mut r = Rec::default();
    for (tok, id) in ["friend", "old", "new"].into_iter().enumerate() {
        join(&mut c, id, tok, &mut r).unwrap();
    }
    let t = now();
    c.lose("old", [1; 16], t + Duration::from_secs(30));
    say(&mut c, &mut r, 0, "friend", r#"{"to":"old","text":"hi","cid":"k1"}"#);
    r.take();
    c.lose("new", [2; 16], t + Duration::from_secs(60));
    assert_eq!((c.holds.len(), c.counters.holds_ended_early), (1, 1));
    let (gone, told) = c.todo.ended_early.pop().unwrap();
    assert_eq!(&*gone.id, "old");
    let told: Vec<String> = told.iter().map(|(_, l)| String::from_utf8(l.to_vec()).unwrap()).collect();
    assert_eq!(told.len(), 1);
    assert!(told[0].contains(r#""cid":"k1""#) && told[0].contains(r#""code":"undelivered""#), "{told:?}");
    assert_eq!(c.backlog.used(), (0, 0), "its backlog was released");
    assert!(c.check("old", None, t).is_ok(), "its id is free");
}

#[test]
fn a_full_budget_takes_the_oldest_line_of_the_largest_backlog_and_tells_its_sender() {
    let (mut c, mut r) = chat_with(&["a", "b", "c"]);
    let t = now();
    // Room for a little over three short lines.
    c.backlog = Budget::new(3 * (100 + backlog::LINE_COST) + 50);
    c.lose("b", [1; 16], t + Duration::from_secs(60));
    for i in 1..=3 {
        say(&mut c, &mut r, 0, "a", &format!(r#"{{"to":"b","text":"m{i}","cid":"x{i}"}}"#));
    }
    r.take();
    assert_eq!(c.backlog.used().0, 3);
    // To c (connected, smaller): b's backlog is the largest, its oldest goes.
    assert_eq!(say(&mut c, &mut r, 0, "a", r#"{"to":"c","text":"m4","cid":"x4"}"#), Outcome::Private);
    let got = r.take();
    let to_a: Vec<&str> = got.iter().filter(|(tok, _)| *tok == 0).map(|(_, l)| l.as_str()).collect();
    assert!(to_a[0].contains(r#""code":"undelivered""#) && to_a[0].contains(r#""cid":"x1""#), "{to_a:?}");
    assert_eq!(to_a[0].matches(r#""cid""#).count(), 1, "named once, by its own cid");
    assert!(to_a[1].contains(r#""cid":"x4""#), "then the sender's copy of m4: {to_a:?}");
    assert_eq!((c.backlog.used().0, c.counters.backlog_dropped), (3, 1));
}

#[test]
fn history_replays_last_and_since_with_gaps_for_what_is_gone() {
    let mut c = Chat::new(Limits { history: 3, ..limits(100) });
    let mut r = Rec::default();
    join(&mut c, "a", 0, &mut r).unwrap();
    join(&mut c, "b", 1, &mut r).unwrap();
    for i in 1..=5 {
        say(&mut c, &mut r, 0, "a", &format!(r#"{{"text":"m{i}"}}"#));
    }
    r.take();
    let seqs = |r: &mut Rec| -> Vec<String> {
        r.take()
            .into_iter()
            .map(|(_, l)| {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                match v["type"].as_str().unwrap() {
                    "message" => format!("m{}", v["seq"]),
                    "gap" => format!("gap{}", v["seq"]),
                    other => other.to_string(),
                }
            })
            .collect()
    };
    say(&mut c, &mut r, 1, "b", r#"{"join":"lobby","last":2}"#);
    c.pump(now(), &mut r);
    assert_eq!(seqs(&mut r), ["joined", "m4", "m5"]);
    let epoch = c.history.get("lobby").unwrap().epoch.to_string();
    say(&mut c, &mut r, 1, "b", &format!(r#"{{"join":"lobby","since":1,"epoch":"{epoch}"}}"#));
    c.pump(now(), &mut r);
    assert_eq!(seqs(&mut r), ["joined", "gap3", "m3", "m4", "m5"], "2 is gone: a gap, then what is kept");
    say(&mut c, &mut r, 1, "b", r#"{"join":"lobby","since":4,"epoch":"other"}"#);
    c.pump(now(), &mut r);
    assert_eq!(seqs(&mut r), ["joined", "gap3", "m3", "m4", "m5"], "another epoch: everything kept");
    let mut d = Chat::new(limits(100));
    join(&mut d, "x", 0, &mut r).unwrap();
    say(&mut d, &mut r, 0, "x", r#"{"text":"one"}"#);
    r.take();
    say(&mut d, &mut r, 0, "x", r#"{"join":"lobby","since":0,"epoch":"notthis1"}"#);
    d.pump(now(), &mut r);
    assert_eq!(seqs(&mut r), ["joined", "gap1", "m1"], "a wrong epoch always gets a gap, even with all kept");
    say(&mut c, &mut r, 1, "b", &format!(r#"{{"join":"lobby","since":5,"epoch":"{epoch}"}}"#));
    c.pump(now(), &mut r);
    assert_eq!(seqs(&mut r), ["joined"], "nothing missed");
    let line = say(&mut c, &mut r, 0, "a", r#"{"text":"m6"}"#);
    assert!(matches!(line, Outcome::Room { .. }));
    assert_eq!(seqs(&mut r), ["m6", "m6"], "both live");
}

#[test]
fn remote_users_are_listed_announced_and_routed_to_their_node() {
    let (mut c, mut r) = chat_with(&["a"]);
    c.remote_join("n2", "Bob");
    c.remote_room("n2", "Bob", "lobby", true);
    c.remote_room("n2", "Bob", "lobby", true); // a repeat is not news
    c.remote_room("n3", "zed", "lobby", true); // makes zed known
    c.remote_room("n3", "zed", "dev", true); // a room with no local member: no events here
    c.flush_presence(&mut r);
    let got = r.take();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].1,
        "{\"type\":\"join\",\"room\":\"lobby\",\"id\":\"Bob\"}\n{\"type\":\"join\",\"room\":\"lobby\",\"id\":\"zed\"}"
    );
    assert!(join(&mut c, "x", 6, &mut r).is_ok());
    let w = &r.take()[0].1;
    assert!(w.contains(r#""total":4"#), "the welcome counts remote members of the lobby: {w}");
    assert_eq!(c.count_on("n3"), (1, 2));
    // A private message to a remote user is the caller's to forward; nothing is queued.
    match say(&mut c, &mut r, 0, "a", r#"{"to":"BOB","text":"hi"}"#) {
        Outcome::Remote { node, to, line, .. } => {
            assert_eq!((&*node, &*to), ("n2", "Bob"));
            assert!(std::str::from_utf8(&line).unwrap().contains(r#""to":"Bob""#));
        }
        other => panic!("{other:?}"),
    }
    assert!(r.take().is_empty());
    // A room line from another node reaches the local members of that room only.
    say(&mut c, &mut r, 0, "a", r#"{"join":"dev"}"#);
    r.take();
    let line = Bytes::from_static(br#"{"type":"message","room":"dev","seq":4,"from":"zed"}"#);
    c.deliver_room("dev", "RedisEp1", &line, &mut r);
    assert_eq!(r.take(), vec![(0, String::from_utf8(line.to_vec()).unwrap())]);
    let log = c.history.get("dev").unwrap();
    assert_eq!((&*log.epoch, log.latest()), ("RedisEp1", 4), "kept in Redis's numbering");
    // While the cluster is down: remote ids are taken, remote sends refused.
    c.set_nodes(Nodes::Down);
    assert_eq!(c.check("zed", None, now()), Err(ErrorCode::IdTaken));
    let out = say(&mut c, &mut r, 0, "a", r#"{"to":"nobody","text":"hi"}"#);
    assert_eq!(out, Outcome::Refused(ErrorCode::ClusterUnavailable));
    c.set_nodes(Nodes::Up);
    assert_eq!(c.check("zed", None, now()).as_deref(), Ok("zed"), "Redis decides while it is up");
}

#[test]
fn rosters_replace_a_nodes_users_and_rooms_and_a_dead_node_takes_its_users_along() {
    let (mut c, mut r) = chat_with(&["a"]);
    c.remote_roster("n2", &[("b", vec!["lobby"]), ("c", vec!["lobby", "dev"])]);
    c.remote_room("n3", "d", "lobby", true);
    c.remote_leave("n3", "b"); // b is on n2, not n3: ignored
    assert_eq!((c.remote_len(), c.count_on("n2")), (3, (2, 3)));
    c.flush_presence(&mut r);
    r.take();
    c.remote_roster("n2", &[("c", vec!["lobby"]), ("e", vec!["lobby"])]);
    c.flush_presence(&mut r);
    let got = r.take();
    assert_eq!(
        got[0].1,
        "{\"type\":\"leave\",\"room\":\"lobby\",\"id\":\"b\"}\n{\"type\":\"join\",\"room\":\"lobby\",\"id\":\"e\"}"
    );
    assert_eq!(c.rooms.key("dev"), None, "c left dev: nobody is in it");
    c.drop_node("n2");
    assert_eq!(c.remote_len(), 1);
    c.remote_join("n9", "A"); // our own user's id: Redis gave it to us, the news is stale
    assert_eq!(c.remote_len(), 1);
    // A remote user who moves here is dropped from the remote map, and its rooms, on join.
    assert!(join(&mut c, "D", 7, &mut r).is_ok());
    assert_eq!(c.remote_len(), 0);
    assert_eq!(c.rooms.room(c.rooms.key("lobby").unwrap()).len(), 2);
}

/// The event stream's facts, as kinds and who (and which room) they are about.
fn facts(c: &mut Chat) -> Vec<String> {
    use crate::events::Fact;
    c.events
        .drain()
        .map(|f| match f {
            Fact::Online(id) => format!("online {id}"),
            Fact::Offline(id) => format!("offline {id}"),
            Fact::Join(room, id) => format!("join {room} {id}"),
            Fact::Leave(room, id) => format!("leave {room} {id}"),
            Fact::Message(line) => format!("message {}", String::from_utf8_lossy(&line)),
            Fact::Moderation(m) => format!("moderation {}", serde_json::Value::Object(m)),
        })
        .collect()
}

#[test]
fn events_are_recorded_where_they_happen_and_a_blip_records_none() {
    let (mut c, mut r) = chat_with(&[]);
    c.events.set_on(true);
    let t = now();
    let secret = ids::new_secret();
    c.join("alice", 5, &secret, None, 0, t, &mut r).unwrap();
    say(&mut c, &mut r, 5, "alice", r#"{"join":"dev"}"#);
    assert_eq!(facts(&mut c), ["online alice", "join lobby alice", "join dev alice"]);
    // Lost and back within the grace: nothing at all.
    c.lose("alice", secret, t + Duration::from_secs(60));
    let next = ids::new_secret();
    c.join("alice", 6, &next, Some(&secret), 0, t, &mut r).unwrap();
    assert_eq!(facts(&mut c), Vec::<String>::new());
    // Lost, and the grace ends: it leaves its rooms and is offline.
    c.lose("alice", next, t + Duration::from_secs(1));
    c.expire(t + Duration::from_secs(2), &mut r);
    assert_eq!(facts(&mut c), ["leave lobby alice", "leave dev alice", "offline alice"]);
    c.record_moderation(|| serde_json::from_str(r#"{"action":"kick","id":"bob","room":"dev"}"#).unwrap());
    assert_eq!(facts(&mut c), [r#"moderation {"action":"kick","id":"bob","room":"dev"}"#]);
    // Off: nothing is kept.
    c.events.set_on(false);
    c.join("bob", 7, &ids::new_secret(), None, 0, t, &mut r).unwrap();
    assert!(c.events.is_empty());
}
