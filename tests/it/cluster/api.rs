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
