//! History and lossless reconnect: seq and epoch, replay with last and since, gaps, and
//! resuming a lost connection with its token.

use crate::util::*;
use serde_json::{Value, json};
use std::io::Write;
use std::time::{Duration, Instant};

fn join_room(c: &mut Client, frame: Value) -> Value {
    c.send(&frame);
    c.next_of("joined")
}

/// Reads lines of `c` until `n` messages (of room `room`) arrived; returns them and any
/// gap lines, in order.
fn messages(c: &mut Client, room: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let mut count = 0;
    while count < n {
        let l = c.next_any();
        if l["room"] == room && (l["type"] == "message" || l["type"] == "gap") {
            count += (l["type"] == "message") as usize;
            got.push(l);
        }
    }
    got
}

fn seqs(lines: &[Value]) -> Vec<u64> {
    lines.iter().filter(|l| l["type"] == "message").map(|l| l["seq"].as_u64().unwrap()).collect()
}

/// The resume token and the pseq so far of a welcome.
fn token(welcome: &Value) -> String {
    welcome["resume"].as_str().unwrap().to_string()
}

#[test]
fn since_replays_everything_missed_once_with_no_gap_against_live_traffic() {
    let s = Server::start(&["--rate-limit", "0"]);
    let mut a = s.join("alice");
    let j = join_room(&mut a, json!({"join": "dev"}));
    let epoch = j["epoch"].as_str().unwrap().to_string();
    assert_eq!(j["seq"], 0);
    for i in 0..30 {
        a.send(&json!({"room": "dev", "text": format!("m{i}")}));
    }
    assert_eq!(seqs(&messages(&mut a, "dev", 30)), (1..=30).collect::<Vec<_>>());
    // bob asks for everything after 10 while alice keeps sending: 11..=30 replayed and
    // 31..=60 live, each exactly once and in order.
    let mut b = s.join("bob");
    let frames: Vec<u8> = (30..60)
        .flat_map(|i| masked(0x1, json!({"room": "dev", "text": format!("m{i}")}).to_string().as_bytes()))
        .collect();
    b.send(&json!({"join": "dev", "since": 10, "epoch": epoch}));
    a.ws.get_mut().write_all(&frames).unwrap();
    let got = messages(&mut b, "dev", 50);
    assert_eq!(seqs(&got), (11..=60).collect::<Vec<_>>(), "{got:?}");
    assert!(got.iter().all(|l| l["type"] == "message"), "nothing was missing: no gap");
    assert!(s.metrics()["chatloop_history_replayed_total"] >= 20.0);
}

#[test]
fn last_gives_the_most_recent_and_gaps_tell_what_is_gone() {
    let s = Server::start(&["--history", "5"]);
    let mut a = s.join("alice");
    for i in 1..=8 {
        a.send(&json!({"text": format!("m{i}")}));
    }
    messages(&mut a, "lobby", 8);
    let mut b = s.join("bob");
    let j = join_room(&mut b, json!({"join": "lobby", "last": 3}));
    assert_eq!(j["seq"], 8);
    let epoch = j["epoch"].as_str().unwrap().to_string();
    assert_eq!(seqs(&messages(&mut b, "lobby", 3)), [6, 7, 8]);
    // Since 1: 2 and 3 are no longer kept (5 are): a gap at 4, then 4..=8.
    join_room(&mut b, json!({"join": "lobby", "since": 1, "epoch": epoch}));
    let got = messages(&mut b, "lobby", 5);
    assert_eq!((got[0]["type"].as_str(), got[0]["seq"].as_u64()), (Some("gap"), Some(4)), "{got:?}");
    assert_eq!(seqs(&got), [4, 5, 6, 7, 8]);
    // Another epoch (history reset, as after a restart): a gap, then everything kept.
    join_room(&mut b, json!({"join": "lobby", "since": 7, "epoch": "stale000"}));
    let got = messages(&mut b, "lobby", 5);
    assert_eq!(got[0]["type"], "gap");
    assert_eq!(seqs(&got), [4, 5, 6, 7, 8]);
    assert!(s.metrics()["chatloop_history_gaps_total"] >= 2.0);
    // since and last together: refused.
    b.send(&json!({"join": "lobby", "since": 1, "epoch": epoch, "last": 2}));
    assert_eq!(b.next_of("error")["code"], "bad_message");
}

#[test]
fn two_joins_in_one_read_get_every_line_either_asked_for_once() {
    let s = Server::start(&["--rate-limit", "0"]);
    let mut a = s.join("alice");
    for i in 1..=5 {
        a.send(&json!({"text": format!("m{i}")}));
    }
    messages(&mut a, "lobby", 5);
    // Both joins reach the server in one write, so both are read before any replay goes.
    let frames =
        [json!({"join": "lobby", "last": 3, "cid": "A"}), json!({"join": "lobby", "last": 2, "cid": "B"})]
            .iter()
            .flat_map(|f| masked(0x1, f.to_string().as_bytes()))
            .collect::<Vec<u8>>();
    a.ws.get_mut().write_all(&frames).unwrap();
    let mut got = Vec::new();
    while got.iter().filter(|l: &&Value| l["type"] == "message").count() < 3 {
        got.push(a.next_any());
    }
    let kinds: Vec<String> = got.iter().map(|l| format!("{} {}", l["type"], l["cid"])).collect();
    assert_eq!(kinds[..2], [r#""joined" "A""#, r#""joined" "B""#], "{kinds:?}");
    assert_eq!(seqs(&got), [3, 4, 5], "the first join's three, not only the second's two: {got:?}");
    a.send(&json!({"text": "live"}));
    assert_eq!(a.next_of("message")["seq"], 6, "and nothing twice");
}

#[test]
fn a_lost_connection_keeps_its_user_and_a_resume_misses_nothing() {
    let s = Server::start(&["--rate-limit", "0"]);
    let mut friend = s.join("friend");
    let mut v = s.connect("victim");
    let w = v.next_of("welcome");
    let t1 = token(&w);
    let j = join_room(&mut v, json!({"join": "lobby"}));
    let (seq, epoch) = (j["seq"].as_u64().unwrap(), j["epoch"].as_str().unwrap().to_string());
    // The network drops: no close frame. Nobody is told victim left.
    drop(v);
    assert!(s.wait_log("reason=lost"));
    for i in 0..20 {
        friend.send(&json!({"text": format!("while away {i}")}));
    }
    for i in 0..5 {
        friend.send(&json!({"to": "victim", "text": format!("psst {i}")}));
    }
    let seen = messages(&mut friend, "lobby", 20);
    assert!(seen.iter().all(|l| l["type"] != "leave"));
    // friend is told victim is away (not gone), and so is a newcomer's roster.
    friend.send(&json!({"join": "lobby"}));
    let j = friend.next_of("joined");
    assert_eq!((&j["users"], &j["away"]), (&json!(["friend", "victim"]), &json!(["victim"])), "{j}");
    let mut newcomer = s.connect("newcomer");
    assert_eq!(newcomer.next_of("welcome")["away"], json!(["victim"]));
    newcomer.bye();
    friend.send(&json!({"rooms": true}));
    let d = friend.next_of("rooms");
    assert_eq!(d["rooms"][0], json!({"room": "lobby", "users": 2, "away": 1}), "{d}");
    // Not a thief: the id is held.
    assert_eq!(s.connect("VICTIM").next_of("error")["code"], "id_taken");
    // Back with the token: the private messages follow the welcome, the room replays.
    let mut v = s.connect_path(&format!("/ws?id=victim&resume={t1}&pseq=0"));
    let w = v.next_of("welcome");
    assert_eq!(w["resumed"], true);
    let t2 = token(&w);
    assert_ne!(t1, t2, "the token rotates");
    let mut private = Vec::new();
    while private.len() < 5 {
        let l = v.next_any();
        if l["type"] == "message" && l["to"] == "victim" {
            private.push(l);
        }
    }
    let pseqs: Vec<u64> = private.iter().map(|l| l["pseq"].as_u64().unwrap()).collect();
    assert_eq!(pseqs, [1, 2, 3, 4, 5]);
    v.send(&json!({"join": "lobby", "since": seq, "epoch": epoch}));
    v.next_of("joined");
    let got = messages(&mut v, "lobby", 20);
    assert_eq!(got.len(), 20, "each once, no gap: {got:?}");
    assert_eq!(got[0]["text"], "while away 0");
    // No leave/join pair was ever shown to friend.
    friend.send(&json!({"text": "marker"}));
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &Value| l["text"] == "marker") {
        seen.push(friend.next_any());
    }
    assert!(seen.iter().all(|l| l["type"] != "join" && l["type"] != "leave"), "{seen:?}");
    let presence: Vec<&Value> = seen.iter().filter(|l| l["id"] == "victim").collect();
    assert!(presence.contains(&&json!({"type": "back", "room": "lobby", "id": "victim"})), "{seen:?}");
    // The old token is spent.
    v.bye();
    let mut again = s.connect_path(&format!("/ws?id=victim&resume={t1}"));
    assert_eq!(
        again.next_of("welcome")["resumed"],
        Value::Null,
        "a left id is free; the old token means nothing"
    );
}

#[test]
fn the_right_token_takes_over_a_half_open_connection() {
    let s = Server::start(&[]);
    let mut old = s.connect("phone");
    let t = token(&old.next_of("welcome"));
    // The old connection is still open as far as the server knows.
    let mut new = s.connect_path(&format!("/ws?id=phone&resume={t}"));
    assert_eq!(new.next_of("welcome")["resumed"], true);
    assert_eq!(old.close_code(), Some(4001));
    // A wrong token does not.
    let mut thief = s.connect_path(&format!("/ws?id=phone&resume={}", "A".repeat(22)));
    assert_eq!(thief.next_of("error")["code"], "id_taken");
    assert!(s.log().contains("session replaced id=phone"));
}

#[test]
fn a_grace_that_runs_out_announces_the_leave_and_reports_what_was_not_delivered() {
    let s = Server::start(&["--resume-grace", "0.3"]);
    let mut friend = s.join("friend");
    let v = s.join("victim");
    drop(v);
    assert!(s.wait_log("reason=lost"));
    friend.send(&json!({"to": "victim", "text": "you there?"}));
    let copy = friend.next_of("message");
    assert_eq!(copy["text"], "you there?", "kept for delivery: no unknown_recipient");
    let t0 = Instant::now();
    let e = friend.next_of("error");
    assert_eq!((e["code"].as_str(), e["to"].as_str()), (Some("undelivered"), Some("victim")));
    assert!(t0.elapsed() < Duration::from_secs(3));
    let mut saw_leave = false;
    friend.ws.get_mut().set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    while !saw_leave {
        saw_leave = friend.next_any() == json!({"type":"leave","room":"lobby","id":"victim"});
    }
    // And the id is free.
    s.join("victim");
}

#[test]
fn another_epoch_always_gets_a_gap_first_even_when_everything_is_kept() {
    // As after a restart: the client's epoch is not the room's, so its seq means nothing here.
    let s = Server::start(&[]);
    let mut a = s.join("alice");
    for i in 1..=3 {
        a.send(&json!({"text": format!("m{i}")}));
    }
    messages(&mut a, "lobby", 3);
    a.send(&json!({"join": "lobby", "since": 1, "epoch": "notthis1"}));
    a.next_of("joined");
    let got = messages(&mut a, "lobby", 3);
    assert_eq!((got[0]["type"].as_str(), got[0]["seq"].as_u64()), (Some("gap"), Some(1)), "{got:?}");
    assert_eq!(seqs(&got), [1, 2, 3]);
}

#[test]
fn an_id_taken_just_after_its_grace_leaves_no_ghost_in_the_old_users_rooms() {
    // The grace ends between the once-a-second sweeps: a newcomer taking the id then must
    // end the old hold first (leaves announced), or, once the newcomer is lost in turn, its
    // hold replaced the old one and the old user stayed a member of its rooms for good.
    let s = Server::start(&["--resume-grace", "0.3", "--rate-limit", "0"]);
    let mut watcher = s.join("watcher");
    for round in 0..3 {
        let mut v = s.join(&format!("Victim{round}"));
        join_room(&mut v, json!({"join": format!("secret{round}")}));
        drop(v);
        assert!(s.wait_log(&format!("session closed id=Victim{round} ")), "round {round}");
        std::thread::sleep(Duration::from_millis(350));
        let newcomer = s.join(&format!("victim{round}")); // the id is free: its grace is over
        drop(newcomer);
    }
    std::thread::sleep(Duration::from_millis(1500)); // every grace over, and swept
    for round in 0..3 {
        let joined = join_room(&mut watcher, json!({"join": format!("secret{round}")}));
        assert_eq!(joined["total"], 1, "round {round}: a ghost stayed: {joined}");
        watcher.send(&json!({"leave": format!("secret{round}")}));
        watcher.next_of("left");
    }
}
