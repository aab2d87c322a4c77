//! `GET /api/rooms`, `/api/rooms/NAME`, `/api/history`, `/api/users/ID`.

use super::speak::until_status;
use super::{Conn, start};
use serde_json::json;

#[test]
fn the_directory_lists_every_room_largest_first() {
    let s = start(&[]);
    let mut api = Conn::open(&s);
    assert_eq!(api.get("/api/rooms").json(), json!({"rooms": [], "total": 0}));
    let mut a = s.join("a");
    let mut b = s.join("b");
    for c in [&mut a, &mut b] {
        c.send(&json!({"join": "dev"}));
        c.next_of("joined");
    }
    a.send(&json!({"join": "ops"}));
    a.next_of("joined");
    let v = api.get("/api/rooms").json();
    assert_eq!(v["total"], 3, "{v}");
    let names: Vec<&str> =
        v["rooms"].as_array().unwrap().iter().map(|r| r["room"].as_str().unwrap()).collect();
    assert_eq!(names, ["dev", "lobby", "ops"], "by size, ties by name");
    assert_eq!(v["rooms"][0], json!({"room": "dev", "users": 2, "away": 0}));
    let v = api.get("/api/rooms?limit=1").json();
    assert_eq!((v["rooms"].as_array().unwrap().len(), v["total"].as_u64()), (1, Some(3)));
    let r = api.get("/api/rooms?limit=x");
    assert_eq!((r.status, r.code().as_str()), (400, "bad_request"));
}

#[test]
fn one_room_lists_its_members_and_away_ones_with_seq_and_epoch() {
    let s = start(&[]);
    let mut api = Conn::open(&s);
    let mut a = s.join("ann");
    a.send(&json!({"join": "dev"}));
    let joined = a.next_of("joined");
    let mut b = s.connect("ben");
    b.next_of("welcome");
    b.send(&json!({"join": "dev"}));
    b.next_of("joined");
    a.send(&json!({"room": "dev", "text": "one"}));
    a.next_of("message");
    drop(b); // lost: held, away but a member
    until_status(&mut api, "ben", "away");
    let v = api.get("/api/rooms/DEV").json();
    assert_eq!(
        (v["room"].as_str(), v["total"].as_u64(), v["seq"].as_u64()),
        (Some("dev"), Some(2), Some(1)),
        "{v}"
    );
    assert_eq!(v["epoch"], joined["epoch"]);
    let mut users: Vec<&str> = v["users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    users.sort();
    assert_eq!(users, ["ann", "ben"]);
    assert_eq!(v["away"], json!(["ben"]));
    let v = api.get("/api/rooms/dev?limit=1").json();
    assert_eq!((v["users"].as_array().unwrap().len(), v["total"].as_u64()), (1, Some(2)));
    let r = api.get("/api/rooms/nowhere");
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    let r = api.get("/api/rooms/a%20b");
    assert_eq!((r.status, r.code().as_str()), (400, "bad_room"));
}

#[test]
fn history_answers_since_with_a_gap_when_the_log_no_longer_reaches_it() {
    let s = start(&["--history", "3"]);
    let mut api = Conn::open(&s);
    let mut epoch = String::new();
    for i in 1..=5 {
        let a = api.post("/api/publish", &json!({"room": "log", "text": format!("m{i}")})).json();
        assert_eq!(a["seq"], i);
        epoch = a["epoch"].as_str().unwrap().to_string();
    }
    let texts = |v: &serde_json::Value| -> Vec<String> {
        v["lines"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap().to_string()).collect()
    };
    let v = api.get(&format!("/api/history?room=log&since=3&epoch={epoch}")).json();
    assert_eq!(texts(&v), ["m4", "m5"], "{v}");
    assert!(v.get("gap").is_none());
    assert_eq!(v["lines"][0]["seq"], 4);
    let v = api.get(&format!("/api/history?room=log&since=0&epoch={epoch}")).json();
    assert_eq!((v["gap"].as_u64(), texts(&v)), (Some(3), vec!["m3".into(), "m4".into(), "m5".into()]), "{v}");
    let v = api.get("/api/history?room=log&since=4&epoch=other").json();
    assert_eq!(v["gap"], 3, "another epoch: a gap and everything kept: {v}");
    assert_eq!(texts(&v).len(), 3);
    let v = api.get(&format!("/api/history?room=log&since=2&epoch={epoch}&limit=1")).json();
    assert_eq!(texts(&v), ["m3"]);
    for (q, status, code) in [
        ("/api/history?room=nolog", 404, "not_found"),
        ("/api/history", 400, "bad_room"),
        ("/api/history?room=log&since=x", 400, "bad_request"),
        ("/api/history?room=log&room=log", 400, "bad_request"),
    ] {
        let r = api.get(q);
        assert_eq!((r.status, r.code()), (status, code.to_string()), "{q}");
    }
}

#[test]
fn a_user_is_online_away_or_offline_with_its_rooms() {
    let s = start(&[]);
    let mut api = Conn::open(&s);
    assert_eq!(api.get("/api/users/zoe").json(), json!({"id": "zoe", "status": "offline", "rooms": []}));
    let mut z = s.connect("Zoe");
    z.next_of("welcome");
    z.send(&json!({"join": "dev"}));
    z.next_of("joined");
    let v = api.get("/api/users/ZOE").json();
    assert_eq!((v["id"].as_str(), v["status"].as_str()), (Some("Zoe"), Some("online")), "{v}");
    let mut rooms: Vec<&str> = v["rooms"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    rooms.sort();
    assert_eq!(rooms, ["dev", "lobby"]);
    drop(z);
    let v = until_status(&mut api, "zoe", "away");
    assert_eq!(v["rooms"].as_array().unwrap().len(), 2);
    let r = api.get("/api/users/not%20an%20id");
    assert_eq!((r.status, r.code().as_str()), (400, "bad_id"));
}
