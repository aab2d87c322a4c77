//! The backend API across two nodes: a publish numbered by Redis reaches members on both,
//! a send reaches a user on the other node, reads see the whole cluster, and a publish while
//! Redis is gone gets one answer that says so.

use super::{Redis, join_seen, node, until_text};
use crate::api::{Conn, key_file};
use serde_json::json;

#[test]
fn a_publish_on_one_node_is_numbered_by_redis_and_reaches_members_on_both() {
    let Some(mut redis) = Redis::start() else { return };
    let key = key_file();
    let a = node(&redis, "15", &["--api-key", &key, "--redis-timeout", "0.5"]);
    let b = node(&redis, "15", &["--api-key", &key, "--redis-timeout", "0.5"]);
    let mut alice = join_seen(&a, "alice", &b, 1.0);
    let mut bob = join_seen(&b, "bob", &a, 1.0);
    let mut api_a = Conn::open(&a);
    let mut api_b = Conn::open(&b);

    // A member's message first, then the backend's: one numbering for the room.
    alice.send(&json!({"text": "from alice"}));
    until_text(&mut bob, "from alice");
    let r = api_a.post("/api/publish", &json!({"room": "lobby", "text": "deployed", "from": "ci"}));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let answer = r.json();
    assert_eq!(answer["seq"], 2, "numbered after alice's 1: {answer}");
    for c in [&mut alice, &mut bob] {
        let line = until_text(c, "deployed").pop().unwrap();
        assert_eq!((line["seq"].as_u64(), line["system"].as_bool()), (Some(2), Some(true)), "{line}");
        assert_eq!(line["from"], "ci");
    }
    // The other node answers for the same room, in the same epoch, with the next number.
    let r = api_b.post("/api/publish", &json!({"room": "lobby", "text": "again"})).json();
    assert_eq!((r["seq"].as_u64(), &r["epoch"]), (Some(3), &answer["epoch"]), "{r}");
    until_text(&mut alice, "again");

    // A send from node A to bob on node B goes through B, which numbers it.
    let r = api_a.post("/api/send", &json!({"to": "bob", "text": "psst"})).json();
    assert_eq!(r, json!({"to": "bob", "pseq": null}));
    let line = until_text(&mut bob, "psst").pop().unwrap();
    assert_eq!((line["pseq"].as_u64(), line["system"].as_bool()), (Some(1), Some(true)), "{line}");
    // Reads see the whole cluster.
    assert_eq!(api_a.get("/api/users/bob").json()["status"], "online");
    assert_eq!(api_b.get("/api/rooms/lobby").json()["total"], 2);

    // Redis gone: one answer, numbered here and saying the others cannot have it.
    redis.kill();
    let r = api_a.post("/api/publish", &json!({"room": "lobby", "text": "alone"}));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["unconfirmed"], "cluster_unavailable", "{:?}", r.json());
    until_text(&mut alice, "alone");
    assert_eq!(api_a.get("/api/rooms").status, 200, "the connection goes on");
}

#[test]
fn a_publish_during_a_redis_stall_gets_one_answer_and_its_line_one_number() {
    let Some(redis) = Redis::start() else { return };
    let key = key_file();
    let a = node(&redis, "30", &["--api-key", &key]);
    let mut alice = a.join("alice");
    let mut api = Conn::open(&a);
    assert_eq!(api.post("/api/publish", &json!({"room": "lobby", "text": "before"})).json()["seq"], 1);
    until_text(&mut alice, "before");
    let pid = redis.child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // NUMBER is sent and never answered: after --redis-timeout the link is down and the
    // publish is numbered here; its one answer says so (Redis had the command: it may yet
    // pass it on, as for a member's message told `cluster_unconfirmed`).
    let r = api.post("/api/publish", &json!({"room": "lobby", "text": "stalled"}));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["unconfirmed"], "cluster_unconfirmed", "{v}");
    let seq = v["seq"].as_u64().unwrap();
    let lines = until_text(&mut alice, "stalled");
    let line = lines.last().unwrap();
    assert_eq!(line["seq"].as_u64(), Some(seq), "the line has the number the answer gave: {line}");
    assert_eq!(lines.iter().filter(|l| l["text"] == "stalled").count(), 1);
    // Nothing more comes for it: the connection's next answer is the next request's.
    assert_eq!(api.get("/api/users/alice").json()["status"], "online");
}

#[test]
fn a_node_with_no_member_in_a_room_reads_its_history_and_seq_from_redis() {
    let Some(mut redis) = Redis::start() else { return };
    let key = key_file();
    let flags = ["--api-key", &key, "--history", "4", "--redis-timeout", "0.5"];
    let a = node(&redis, "15", &flags);
    let b = node(&redis, "15", &flags);
    let mut alice = join_seen(&a, "alice", &b, 1.0);
    let (mut api_a, mut api_b) = (Conn::open(&a), Conn::open(&b));
    let say = |alice: &mut crate::util::Client, text: &str| {
        alice.send(&json!({"text": text}));
        until_text(alice, text); // numbered by Redis before it comes back
    };
    let texts = |v: &serde_json::Value| -> Vec<String> {
        v["lines"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap().to_string()).collect()
    };
    for t in ["m1", "m2", "m3"] {
        say(&mut alice, t);
    }
    // Node B never heard the room (no member there): its answers are Redis's, the same as A's.
    let room_a = api_a.get("/api/rooms/lobby").json();
    let epoch = room_a["epoch"].as_str().unwrap().to_string();
    let r = api_b.get("/api/rooms/lobby");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let room_b = r.json();
    assert_eq!((&room_b["seq"], &room_b["epoch"]), (&json!(3), &room_a["epoch"]), "{room_b} vs {room_a}");
    assert_eq!(room_b["users"], json!(["alice"]), "members as this node knows them: {room_b}");
    let v = api_b.get("/api/history?room=lobby").json();
    assert_eq!((texts(&v), v.get("gap")), (vec!["m1".into(), "m2".into(), "m3".into()], None), "{v}");
    assert_eq!((&v["epoch"], &v["lines"][0]["seq"]), (&json!(epoch), &json!(1)), "{v}");

    // Past --history: a gap when the log no longer reaches `since`, on both nodes alike.
    for t in ["m4", "m5", "m6"] {
        say(&mut alice, t);
    }
    assert_eq!(api_b.get("/api/rooms/lobby").json()["seq"], 6);
    for q in [
        "/api/history?room=lobby".to_string(),
        format!("/api/history?room=lobby&since=1&epoch={epoch}"),
        format!("/api/history?room=lobby&since=4&epoch={epoch}"),
        format!("/api/history?room=lobby&since=3&epoch={epoch}&limit=2"),
        "/api/history?room=lobby&since=5&epoch=other".to_string(),
    ] {
        assert_eq!(api_b.get(&q).json(), api_a.get(&q).json(), "{q}");
    }
    let v = api_b.get(&format!("/api/history?room=lobby&since=1&epoch={epoch}")).json();
    assert_eq!(
        (v["gap"].as_u64(), texts(&v)),
        (Some(3), vec!["m3".into(), "m4".into(), "m5".into(), "m6".into()])
    );
    let v = api_b.get(&format!("/api/history?room=lobby&since=3&epoch={epoch}&limit=2")).json();
    assert_eq!((v.get("gap"), texts(&v)), (None, vec!["m4".into(), "m5".into()]), "{v}");
    let r = api_b.get("/api/history?room=nowhere");
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));

    // Redis stalls with the read past --redis-timeout, then is gone: this node's copy is not
    // the cluster's, so the read is refused, not guessed.
    let pid = redis.child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let r = api_b.get("/api/history?room=lobby");
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!((r.status, r.code().as_str()), (503, "cluster_unavailable"), "a stall");
    redis.kill();
    for q in ["/api/history?room=lobby", "/api/rooms/lobby"] {
        let r = api_b.get(q);
        assert_eq!((r.status, r.code().as_str()), (503, "cluster_unavailable"), "{q}");
    }
    assert_eq!(api_b.get("/api/rooms").status, 200, "the connection goes on");
}
