//! `POST /api/publish` and `POST /api/send`.

use super::{Conn, start};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Polls `GET /api/users/ID` until its status is `want` (the server notices a lost
/// connection when it reads its EOF).
pub fn until_status(c: &mut Conn, id: &str, want: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let v = c.get(&format!("/api/users/{id}")).json();
        if v["status"] == want || Instant::now() > end {
            assert_eq!(v["status"], want, "{v}");
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_publish_reaches_every_member_as_a_system_line_and_is_replayed_from_history() {
    let s = start(&[]);
    let mut alice = s.join("alice");
    let mut api = Conn::open(&s);
    let r = api
        .post("/api/publish", &json!({"room": "Lobby", "text": " deploy finished ", "from": "deploy-bot"}));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(r.body.starts_with(br#"{"room":"lobby","seq":1,"epoch":""#), "the issue's order");
    let a = r.json();
    assert_eq!((a["room"].as_str(), a["seq"].as_u64()), (Some("lobby"), Some(1)), "{a}");
    let epoch = a["epoch"].as_str().unwrap().to_string();
    assert_eq!(a.as_object().unwrap().len(), 3, "exactly room, seq, epoch: {a}");
    let line = alice.next_of("message");
    assert_eq!(line["system"], true, "{line}");
    assert_eq!((line["room"].as_str(), line["seq"].as_u64()), (Some("lobby"), Some(1)));
    assert_eq!((line["from"].as_str(), line["text"].as_str()), (Some("deploy-bot"), Some("deploy finished")));
    // Without from: none in the line; numbered after a member's message.
    alice.send(&json!({"text": "hi"}));
    assert_eq!(alice.next_of("message")["seq"], 2);
    let a = api.post("/api/publish", &json!({"room": "lobby", "text": "second"})).json();
    assert_eq!(a["seq"], 3);
    let line = alice.next_of("message");
    assert_eq!((line["seq"].as_u64(), line["system"].as_bool()), (Some(3), Some(true)));
    assert!(line.get("from").is_none(), "no from unless given: {line}");
    // A newcomer asking for what it missed gets both, exactly as members got them.
    let mut bob = s.join("bob");
    bob.send(&json!({"join": "lobby", "since": 0, "epoch": epoch}));
    let replayed: Vec<Value> = (0..3).map(|_| bob.next_of("message")).collect();
    assert_eq!(replayed[0]["from"], "deploy-bot");
    assert_eq!(replayed[0]["system"], true);
    assert_eq!(replayed[2]["text"], "second");
    assert!(replayed[2].get("from").is_none());
    // And the history endpoint has the same three lines.
    let h = api.get(&format!("/api/history?room=lobby&since=0&epoch={epoch}")).json();
    let lines = h["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{h}");
    assert_eq!(lines[0], replayed[0]);
    assert!(h.get("gap").is_none());
}

#[test]
fn a_publish_into_a_room_without_members_is_kept_for_its_first_join() {
    let s = start(&[]);
    let mut api = Conn::open(&s);
    let a = api.post("/api/publish", &json!({"room": "orders", "text": "order 1 shipped"})).json();
    assert_eq!(a["seq"], 1, "{a}");
    let r = api.get("/api/rooms/orders").json();
    assert_eq!((r["total"].as_u64(), r["seq"].as_u64()), (Some(0), Some(1)), "{r}");
    assert_eq!(r["epoch"], a["epoch"]);
    let mut carol = s.join("carol");
    carol.send(&json!({"join": "orders", "last": 10}));
    let line = carol.next_of("message");
    assert_eq!((line["text"].as_str(), line["system"].as_bool()), (Some("order 1 shipped"), Some(true)));
}

#[test]
fn publish_refusals_name_what_is_wrong() {
    let s = start(&["--max-rooms", "1", "--max-text", "10"]);
    let _alice = s.join("alice"); // the lobby: the one room allowed
    let mut api = Conn::open(&s);
    for (body, status, code) in [
        (json!({"room": "a b", "text": "x"}), 400, "bad_room"),
        (json!({"room": "lobby", "text": "x", "from": "not an id"}), 400, "bad_id"),
        (json!({"room": "lobby", "text": "  "}), 400, "empty"),
        (json!({"room": "lobby", "text": "x".repeat(11)}), 400, "too_long"),
        (json!({"room": "lobby"}), 400, "bad_request"),
        (json!({"room": "lobby", "text": "x", "frm": "typo"}), 400, "bad_request"),
        (json!({"room": "lobby", "text": 3}), 400, "bad_request"),
        (json!({"room": "another", "text": "x"}), 503, "too_many_rooms"),
    ] {
        let r = api.post("/api/publish", &body);
        assert_eq!((r.status, r.code()), (status, code.to_string()), "{body}");
    }
    assert_eq!(api.post("/api/publish", &json!({"room": "lobby", "text": "x"})).status, 200);
}

#[test]
fn send_reaches_a_user_and_a_held_one_gets_it_on_resume() {
    let s = start(&[]);
    let mut api = Conn::open(&s);
    let mut bob = s.join("bob");
    let a = api.post("/api/send", &json!({"to": "B0B", "text": "your order shipped", "from": "shop"})).json();
    assert_eq!(a, json!({"to": "bob", "pseq": 1}));
    let line = bob.next_of("message");
    assert_eq!((line["pseq"].as_u64(), line["system"].as_bool()), (Some(1), Some(true)), "{line}");
    assert_eq!((line["to"].as_str(), line["from"].as_str()), (Some("bob"), Some("shop")));
    let r = api.post("/api/send", &json!({"to": "nobody", "text": "hi"}));
    assert_eq!((r.status, r.code().as_str()), (404, "offline"));
    let r = api.post("/api/send", &json!({"to": "no body", "text": "hi"}));
    assert_eq!((r.status, r.code().as_str()), (400, "bad_id"));

    // Held: the connection drops without a close; the user is away, and a send is kept.
    let mut dave = s.connect("dave");
    let token = dave.next_of("welcome")["resume"].as_str().unwrap().to_string();
    drop(dave);
    until_status(&mut api, "dave", "away");
    let a = api.post("/api/send", &json!({"to": "dave", "text": "while you were out"})).json();
    assert_eq!(a, json!({"to": "dave", "pseq": 1}));
    let mut back = s.connect_path(&format!("/ws?id=dave&resume={token}&pseq=0"));
    assert_eq!(back.next_of("welcome")["resumed"], true);
    let line = back.next_of("message");
    assert_eq!(
        (line["text"].as_str(), line["pseq"].as_u64()),
        (Some("while you were out"), Some(1)),
        "{line}"
    );
    assert!(line.get("from").is_none());
}
