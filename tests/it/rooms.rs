//! Named rooms: isolation, join and leave, presence per room, limits, old clients.

use crate::util::*;
use serde_json::{Value, json};
use std::time::Duration;

/// Lines of `c` up to and including the first for which `done` holds.
fn until(c: &mut Client, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        for l in c.lines() {
            let stop = done(&l);
            seen.push(l);
            if stop {
                return seen;
            }
        }
    }
}

fn join_room(c: &mut Client, room: &str) -> Value {
    c.send(&json!({ "join": room }));
    c.next_of("joined")
}

#[test]
fn a_room_message_reaches_that_rooms_members_only() {
    let s = Server::start(&[]);
    let (mut a, mut b, mut c) = (s.join("alice"), s.join("bob"), s.join("carol"));
    let j = join_room(&mut a, "Dev");
    assert_eq!(
        (&j["room"], &j["users"], &j["total"], &j["seq"]),
        (&json!("dev"), &json!(["alice"]), &json!(1), &json!(0))
    );
    assert_eq!(j["epoch"].as_str().map(str::len), Some(8));
    let j = join_room(&mut b, "dev");
    assert_eq!((j["users"].clone(), j["total"].clone()), (json!(["bob", "alice"]), json!(2)));
    b.send(&json!({"room": "DEV", "text": "in dev"}));
    let got = b.next_of("message");
    assert_eq!((got["room"].as_str(), got["text"].as_str()), (Some("dev"), Some("in dev")));
    let seen = until(&mut a, |l| l["text"] == "in dev");
    assert!(seen.iter().any(|l| l == &json!({"type":"join","room":"dev","id":"bob"})), "{seen:?}");
    // carol is not in dev: she sees neither the message nor dev's presence. A lobby message
    // sent after it marks the point by which she would have.
    a.send(&json!({"text": "marker"}));
    let seen = until(&mut c, |l| l["text"] == "marker");
    assert!(seen.iter().all(|l| l["room"] == "lobby" && l["text"] != "in dev"), "{seen:?}");
    assert_eq!(seen.last().unwrap()["room"], "lobby", "lobby messages carry their room");
    // And she may not send there.
    c.send(&json!({"room": "dev", "text": "let me in"}));
    let e = c.next_of("error");
    assert_eq!((e["code"].as_str(), e["room"].as_str()), (Some("not_in_room"), Some("dev")));
}

#[test]
fn leave_answers_left_and_presence_goes_to_the_rooms_members() {
    let s = Server::start(&[]);
    let (mut a, mut b) = (s.join("alice"), s.join("bob"));
    join_room(&mut a, "ops");
    join_room(&mut b, "ops");
    until(&mut a, |l| l["type"] == "join" && l["room"] == "ops");
    b.send(&json!({"leave": "ops"}));
    assert_eq!(b.next_of("left"), json!({"type":"left","room":"ops"}));
    until(&mut a, |l| l == &json!({"type":"leave","room":"ops","id":"bob"}));
    b.send(&json!({"leave": "ops"}));
    let e = b.next_of("error");
    assert_eq!((e["code"].as_str(), e["room"].as_str()), (Some("not_in_room"), Some("ops")));
    // Leaving the lobby is allowed; then a plain text has nowhere to go until b joins again.
    b.send(&json!({"leave": "lobby"}));
    b.next_of("left");
    b.send(&json!({"text": "anyone?"}));
    assert_eq!(b.next_of("error")["code"], "not_in_room");
    join_room(&mut b, "lobby");
    b.send(&json!({"text": "back"}));
    until(&mut a, |l| l["text"] == "back");
    // Joining a room you are in is not an error: joined again.
    assert_eq!(join_room(&mut b, "lobby")["room"], "lobby");
}

#[test]
fn bad_names_and_limits_are_refused_with_the_room_named() {
    let s = Server::start(&["--max-rooms", "3", "--max-rooms-per-user", "2"]);
    let (mut a, mut b) = (s.join("alice"), s.join("bob"));
    for bad in ["a b", "", "x/y", &"r".repeat(33)] {
        a.send(&json!({ "join": bad }));
        let e = a.next_of("error");
        assert_eq!((e["code"].as_str(), e["room"].as_str()), (Some("bad_room"), Some(bad)));
    }
    join_room(&mut a, "one");
    a.send(&json!({"join": "two"}));
    let e = a.next_of("error");
    assert_eq!((e["code"].as_str(), e["room"].as_str()), (Some("too_many_rooms"), Some("two")), "per user");
    join_room(&mut b, "two");
    b.send(&json!({"leave": "lobby"}));
    b.next_of("left");
    b.send(&json!({"join": "three"}));
    assert_eq!(b.next_of("error")["code"], "too_many_rooms", "lobby, one and two are the server's 3");
    assert_eq!(join_room(&mut b, "one")["total"], 2, "an existing room can still be joined");
}

#[test]
fn the_directory_lists_rooms_largest_first() {
    let s = Server::start(&["--presence-limit", "2"]);
    let (mut a, mut b, mut c) = (s.join("a"), s.join("b"), s.join("c"));
    join_room(&mut a, "zz");
    join_room(&mut b, "zz");
    join_room(&mut c, "aa");
    c.send(&json!({"rooms": true}));
    assert_eq!(
        c.next_of("rooms"),
        json!({"type":"rooms","rooms":[{"room":"lobby","users":3},{"room":"zz","users":2}],"total":3})
    );
}

#[test]
fn every_room_request_costs_a_rate_limit_token() {
    // Joining and leaving cannot flood presence: 2N room operations in a burst, then refused.
    let s = Server::start(&["--rate-limit", "5"]);
    let mut a = s.join("alice");
    let frames: Vec<u8> = (0..30)
        .flat_map(|i| {
            masked(0x1, json!({ if i % 2 == 0 { "join" } else { "leave" }: "dev" }).to_string().as_bytes())
        })
        .collect();
    use std::io::Write;
    a.ws.get_mut().write_all(&frames).unwrap();
    let (mut answered, mut limited) = (0, 0);
    a.ws.get_mut().set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    while answered + limited < 30 {
        for l in a.lines() {
            match (l["type"].as_str(), l["code"].as_str()) {
                (Some("joined" | "left"), _) => answered += 1,
                (Some("error"), Some("rate_limited")) => limited += 1,
                _ => {}
            }
        }
    }
    assert_eq!((answered, limited), (10, 20), "a burst of 2 x 5, then refused");
}

#[test]
fn a_client_written_for_the_one_room_protocol_still_works() {
    // It sends {"text"} and {"to","text"} and reads type, from, to and text: nothing else
    // changed for it but a new room field on lines.
    let s = Server::start(&[]);
    let (mut a, mut b) = (s.join("alice"), s.join("bob"));
    a.send(&json!({"text": "hello room"}));
    let m = b.next_of("message");
    assert_eq!((m["from"].as_str(), m["text"].as_str()), (Some("alice"), Some("hello room")));
    a.send(&json!({"to": "bob", "text": "psst"}));
    let m = b.next_of("message");
    assert_eq!((m["to"].as_str(), m["text"].as_str(), m.get("room")), (Some("bob"), Some("psst"), None));
}

/// Issue 21, item 4: throwaway ids fill `--max-rooms` and drop their connections, so that only
/// their holds keep the rooms. A connected user's new room must still be granted: the rooms
/// kept only by holds give way, oldest first.
#[test]
fn rooms_kept_only_by_holds_never_keep_a_connected_user_out() {
    let s = Server::start(&["--max-rooms", "100"]);
    let mut made = 0;
    for n in 0..4 {
        let id = format!("thrower{n}");
        let mut c = s.join(&id);
        for r in 0..31 {
            c.send(&json!({ "join": format!("t{n}-{r}") }));
            let seen = until(&mut c, |l| l["type"] == "joined" || l["type"] == "error");
            if seen.last().unwrap()["type"] == "joined" {
                made += 1;
            }
        }
        drop(c); // no close frame: the id is held in its grace, still a member of its rooms
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.metrics()["chatloop_users_held"] < 4.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = s.metrics();
    println!("attacker rooms made {made}, rooms {}, held {}", m["chatloop_rooms"], m["chatloop_users_held"]);
    assert_eq!(m["chatloop_rooms"], 100.0, "the attack filled --max-rooms");
    // The last thrower's joins already took the places of earlier throwers' held rooms.
    let before = m["chatloop_rooms_evicted_total"];
    let mut real = s.join("real");
    for r in 0..5 {
        let j = join_room(&mut real, &format!("mine{r}"));
        assert_eq!(j["room"], format!("mine{r}"), "{j}");
    }
    let m = s.metrics();
    println!("after 5 joins: rooms {}, evicted {}", m["chatloop_rooms"], m["chatloop_rooms_evicted_total"]);
    assert_eq!(m["chatloop_rooms_evicted_total"] - before, 5.0, "one held room for each new room");
    assert!(m["chatloop_rooms"] <= 100.0);
}

#[test]
fn one_member_coming_and_going_at_the_presence_limit_sends_no_lists() {
    let s = Server::start(&["--presence-limit", "8", "--rate-limit", "0"]);
    let mut watcher = s.join("watcher");
    let mut others: Vec<Client> = (0..7).map(|i| s.join(&format!("m{i}"))).collect();
    let mut flapper = s.join("flapper");
    assert_eq!(watcher.next_of("users")["total"], 9, "above 8: quiet, with the list once");
    for _ in 0..5 {
        flapper.send(&json!({"leave": "lobby"}));
        flapper.next_of("left");
        flapper.send(&json!({"join": "lobby"}));
        flapper.next_of("joined");
    }
    // 8 and 9 members by turns: still quiet (loud again at 7), so no list each time. Two
    // leave: 7, loud, and the whole list once more.
    others.pop().unwrap().bye();
    others.pop().unwrap().bye();
    let l = watcher.next_of("users");
    assert_eq!(l["total"], 7, "the next list is the one at 7, none from the flapping: {l}");
}
