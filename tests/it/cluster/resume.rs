//! Resume across nodes: a lost user comes back on the other node unseen, and the right token
//! takes over a half-open connection. (The resume races and rate-limit buckets are in
//! `bound_resume.rs`.)

use super::{Redis, join_seen, node, room_lines, until_text, wait_metric, wait_room_size};
use serde_json::{Value, json};
use std::time::Duration;

#[test]
fn a_user_lost_on_one_node_resumes_on_the_other_and_nobody_sees_it_leave() {
    let Some(redis) = Redis::start() else { return };
    let args = ["--rate-limit", "0", "--resume-grace", "2"];
    let (a, b) = (node(&redis, "15", &args), node(&redis, "15", &args));
    let mut watcher = join_seen(&a, "watcher", &b, 1.0);
    let mut friend = join_seen(&b, "friend", &a, 1.0);
    let mut v = a.connect("victim");
    let t1 = v.next_of("welcome")["resume"].as_str().unwrap().to_string();
    wait_metric(&b, "chatloop_cluster_remote_users", 2.0);
    v.send(&json!({"join": "dev"}));
    let dev = v.next_of("joined");
    friend.send(&json!({"join": "dev"}));
    friend.next_of("joined");
    v.send(&json!({"join": "lobby"}));
    let lobby = v.next_of("joined");
    wait_room_size(&mut watcher, "dev", 2);
    // One private message arrives before the loss (pseq 1), three while victim is away.
    friend.send(&json!({"to": "victim", "text": "p0"}));
    assert_eq!(v.next_of("message")["pseq"], 1);
    // The network drops: no close frame.
    drop(v);
    assert!(a.wait_log("reason=lost"), "{}", a.log());
    for i in 0..5 {
        friend.send(&json!({"room": "dev", "text": format!("dev {i}")}));
        friend.send(&json!({"text": format!("lobby {i}")}));
    }
    for i in 1..=3 {
        friend.send(&json!({"to": "victim", "text": format!("p{i}")}));
    }
    friend.send(&json!({"text": "sent"}));
    let seen = until_text(&mut friend, "sent");
    assert!(seen.iter().all(|l| l["type"] != "error"), "kept for delivery, not refused: {seen:?}");
    // Give A a moment to keep them in Redis (one that comes later follows the user anyway).
    std::thread::sleep(Duration::from_millis(200));
    // Neither a thief nor a wrong token gets the id on B.
    assert_eq!(b.connect("VICTIM").next_of("error")["code"], "id_taken");
    let wrong = "AAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(b.connect_path(&format!("/ws?id=victim&resume={wrong}")).next_of("error")["code"], "id_taken");
    // The right token on B: resumed, a new token, its rooms back, quiet until joined.
    let mut v = b.connect_path(&format!("/ws?id=victim&resume={t1}&pseq=1"));
    let w = v.next_of("welcome");
    assert_eq!(w["resumed"], true, "{w}");
    assert_ne!(w["resume"].as_str().unwrap(), t1, "the token rotates");
    // The private messages after the pseq it has, numbered on from A's.
    let mut private = Vec::new();
    while private.len() < 3 {
        let l = v.next_any();
        if l["type"] == "message" && l["to"] == "victim" {
            private.push((l["pseq"].as_u64().unwrap(), l["text"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(private, [(2, "p1".to_string()), (3, "p2".to_string()), (4, "p3".to_string())]);
    v.send(&json!({"join": "dev", "since": dev["seq"], "epoch": dev["epoch"]}));
    let j = v.next_of("joined");
    assert_eq!(j["epoch"], dev["epoch"], "{j}");
    let got = room_lines(&mut v, "dev", 5);
    assert!(got.iter().all(|l| l["type"] == "message"), "{got:?}");
    let texts: Vec<&str> = got.iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["dev 0", "dev 1", "dev 2", "dev 3", "dev 4"]);
    v.send(&json!({"join": "lobby", "since": lobby["seq"], "epoch": lobby["epoch"]}));
    v.next_of("joined");
    let got = room_lines(&mut v, "lobby", 5);
    assert!(got.iter().all(|l| l["type"] == "message"), "{got:?}");
    assert_eq!(got[0]["text"], "lobby 0");
    // It may send to its rooms at once; both nodes hear it. Its pseq goes on.
    v.send(&json!({"room": "dev", "text": "back"}));
    until_text(&mut friend, "back");
    friend.send(&json!({"to": "victim", "text": "p4"}));
    let l = until_text(&mut v, "p4").pop().unwrap();
    assert_eq!(l["pseq"], 5, "{l}");
    // The old token is spent: not even on the node that held the user.
    assert_eq!(a.connect_path(&format!("/ws?id=victim&resume={t1}")).next_of("error")["code"], "id_taken");
    // Past A's grace: still nobody was told victim left or joined, on either node.
    std::thread::sleep(Duration::from_millis(2500));
    watcher.send(&json!({"text": "marker a"}));
    friend.send(&json!({"text": "marker b"}));
    for (c, marker) in [(&mut watcher, "marker b"), (&mut friend, "marker a")] {
        let seen = until_text(c, marker);
        let bad: Vec<&Value> = seen
            .iter()
            .filter(|l| (l["type"] == "join" || l["type"] == "leave") && l["id"] == "victim")
            .collect();
        assert!(bad.is_empty(), "{bad:?}");
    }
    wait_room_size(&mut watcher, "dev", 2);
    assert_eq!(b.metrics()["chatloop_resumes_total"], 1.0);
}

#[test]
fn the_right_token_on_another_node_takes_over_a_half_open_connection() {
    // The old connection is still open as far as node A knows (the client gave up on it
    // without A noticing): B asks A, which checks the token, replaces the connection (4001)
    // and lets B take the user over, private numbering included.
    let Some(redis) = Redis::start() else { return };
    let args = ["--rate-limit", "0"];
    let (a, b) = (node(&redis, "15", &args), node(&redis, "15", &args));
    let mut friend = join_seen(&b, "friend", &a, 1.0);
    let mut old = a.connect("phone");
    let t1 = old.next_of("welcome")["resume"].as_str().unwrap().to_string();
    wait_metric(&b, "chatloop_cluster_remote_users", 1.0);
    friend.send(&json!({"to": "phone", "text": "p0"}));
    assert_eq!(old.next_of("message")["pseq"], 1);
    // A wrong token: A refuses, and the old connection stays.
    let wrong = "AAAAAAAAAAAAAAAAAAAAAA";
    assert_eq!(b.connect_path(&format!("/ws?id=phone&resume={wrong}")).next_of("error")["code"], "id_taken");
    friend.send(&json!({"to": "phone", "text": "still here"}));
    assert_eq!(old.next_of("message")["text"], "still here");
    friend.send(&json!({"text": "before"}));
    until_text(&mut friend, "before"); // phone's own join, long ago
    // The right one.
    let mut new = b.connect_path(&format!("/ws?id=phone&resume={t1}&pseq=2"));
    let w = new.next_of("welcome");
    assert_eq!(w["resumed"], true, "{w}");
    assert_eq!(old.close_code(), Some(4001));
    friend.send(&json!({"to": "phone", "text": "p3"}));
    let l = until_text(&mut new, "p3").pop().unwrap();
    assert_eq!(l["pseq"], 3, "numbered on from A's: {l}");
    friend.send(&json!({"text": "marker"}));
    let seen = until_text(&mut friend, "marker");
    assert!(
        seen.iter().all(|l| !((l["type"] == "join" || l["type"] == "leave") && l["id"] == "phone")),
        "{seen:?}"
    );
}
