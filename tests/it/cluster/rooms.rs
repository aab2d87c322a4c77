//! Rooms across nodes: who hears what, numbering once for the whole cluster, epochs, and
//! history replayed from Redis (or from the mirror, with a gap, when Redis does not answer).

use super::{Redis, join_seen, node, room_lines, texts, until_markers, wait_room_size};
use serde_json::{Value, json};
use std::io::Write;
use std::time::{Duration, Instant};

#[test]
fn rooms_span_nodes_and_a_node_hears_only_rooms_its_users_are_in() {
    let Some(redis) = Redis::start() else { return };
    // Off: alice sends more than one burst here.
    let (a, b) = (node(&redis, "15", &["--rate-limit", "0"]), node(&redis, "15", &["--rate-limit", "0"]));
    let mut alice = join_seen(&a, "alice", &b, 1.0);
    let mut bob = join_seen(&b, "bob", &a, 1.0);
    alice.send(&json!({"join": "dev"}));
    alice.next_of("joined");
    wait_room_size(&mut bob, "dev", 1);
    // Nobody on B is in dev: B does not even receive dev's traffic.
    let before = b.metrics()["chatloop_cluster_received_total"];
    for i in 0..20 {
        alice.send(&json!({"room": "dev", "text": format!("unheard {i}")}));
    }
    alice.send(&json!({"text": "lobby marker"}));
    until_markers(&mut bob, &["lobby marker"]);
    let unheard = b.metrics()["chatloop_cluster_received_total"] - before;
    assert!(unheard <= 2.0, "B received {unheard} messages for a room it has nobody in");
    // bob joins: the roster counts both nodes, and dev's messages reach him, exactly once.
    bob.send(&json!({"join": "DEV"}));
    let j = bob.next_of("joined");
    assert_eq!((j["total"].as_u64(), j["users"].clone()), (Some(2), json!(["bob", "alice"])), "{j}");
    // (next_line skips presence: read whole frames for it.)
    while !alice.lines().contains(&json!({"type":"join","room":"dev","id":"bob"})) {}
    let before = b.metrics()["chatloop_cluster_received_total"];
    for i in 0..20 {
        alice.send(&json!({"room": "dev", "text": format!("heard {i}")}));
    }
    let markers: Vec<String> = (0..20).map(|i| format!("heard {i}")).collect();
    let markers: Vec<&str> = markers.iter().map(|m| m.as_str()).collect();
    let got = until_markers(&mut bob, &markers);
    let texts = texts(&got);
    for m in &markers {
        assert_eq!(texts.iter().filter(|t| t == m).count(), 1, "{m} exactly once");
    }
    assert!(got.iter().filter(|l| l["type"] == "message").all(|l| l["room"] == "dev"));
    let heard = b.metrics()["chatloop_cluster_received_total"] - before;
    println!(
        "B received {unheard} cluster messages for 20 dev messages with no member there, {heard} with one"
    );
    assert!(heard >= 20.0);
    // The directory counts both nodes; bob leaving takes B off dev's channel again.
    wait_room_size(&mut alice, "dev", 2);
    bob.send(&json!({"leave": "dev"}));
    bob.next_of("left");
    wait_room_size(&mut alice, "dev", 1);
}

#[test]
fn room_messages_are_numbered_once_for_the_whole_cluster() {
    // Redis numbers every room message (one seq space and one epoch per room for all nodes),
    // so a client may resume its room on any node: the seqs it has mean the same there.
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis, "15", &["--rate-limit", "0"]), node(&redis, "15", &["--rate-limit", "0"]));
    let mut alice = join_seen(&a, "alice", &b, 1.0);
    let mut bob = join_seen(&b, "bob", &a, 1.0);
    for i in 0..10 {
        alice.send(&json!({"text": format!("a{i}")}));
        bob.send(&json!({"text": format!("b{i}")}));
    }
    let markers: Vec<String> = (0..10).flat_map(|i| [format!("a{i}"), format!("b{i}")]).collect();
    let markers: Vec<&str> = markers.iter().map(|m| m.as_str()).collect();
    let seen = |lines: Vec<Value>| -> Vec<(u64, String)> {
        lines
            .into_iter()
            .filter(|l| l["type"] == "message")
            .map(|l| (l["seq"].as_u64().unwrap(), l["text"].as_str().unwrap().to_string()))
            .collect()
    };
    let on_a = seen(until_markers(&mut alice, &markers));
    let on_b = seen(until_markers(&mut bob, &markers));
    assert_eq!(on_a.len(), 20);
    assert_eq!(on_a, on_b, "the same seq for the same message, on both nodes, in the same order");
    let seqs: Vec<u64> = on_a.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    // Both nodes name the same epoch, and a since-join on B replays what A's user sent.
    alice.send(&json!({"join": "lobby"}));
    let ja = alice.next_of("joined");
    bob.send(&json!({"join": "lobby", "since": 15, "epoch": ja["epoch"]}));
    let jb = bob.next_of("joined");
    assert_eq!((jb["epoch"].clone(), jb["seq"].as_u64()), (ja["epoch"].clone(), Some(20)));
    let mut replay = Vec::new();
    while replay.len() < 5 {
        let l = bob.next_any();
        if l["type"] == "message" {
            replay.push(l["seq"].as_u64().unwrap());
        }
        assert_ne!(l["type"], "gap");
    }
    assert_eq!(replay, [16, 17, 18, 19, 20]);
}

#[test]
fn a_rooms_epoch_does_not_change_when_redis_numbers_its_first_message() {
    // What `joined` said before the first message must still hold after it: the node offers
    // Redis its own epoch for a room Redis has not numbered yet (found by chatload's blip
    // mode: every resume got a gap and the whole history again).
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, "15", &[]);
    let mut alice = a.connect("alice");
    alice.next_of("welcome");
    alice.send(&json!({"join": "fresh"}));
    let before = alice.next_of("joined");
    alice.send(&json!({"room": "fresh", "text": "first"}));
    assert_eq!(alice.next_of("message")["seq"], 1);
    alice.send(&json!({"join": "fresh"}));
    let after = alice.next_of("joined");
    assert_eq!((before["epoch"].clone(), after["seq"].as_u64()), (after["epoch"].clone(), Some(1)));
}

fn seqs_of(lines: &[Value]) -> Vec<u64> {
    lines.iter().filter(|l| l["type"] == "message").map(|l| l["seq"].as_u64().unwrap()).collect()
}

#[test]
fn a_join_on_a_node_that_never_heard_the_room_replays_it_from_redis() {
    // dev has members on A only, so B never heard its messages: B reads them from Redis's
    // history (the numbering script keeps them there) for a `last` or `since` join, and the
    // replay meets live traffic with no gap and no duplicate.
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (node(&redis, "15", &["--rate-limit", "0"]), node(&redis, "15", &["--rate-limit", "0"]));
    let mut alice = join_seen(&a, "alice", &b, 1.0);
    alice.send(&json!({"join": "dev"}));
    alice.next_of("joined");
    for i in 1..=20 {
        alice.send(&json!({"room": "dev", "text": format!("m{i}")}));
    }
    assert_eq!(seqs_of(&room_lines(&mut alice, "dev", 20)), (1..=20).collect::<Vec<_>>());
    alice.send(&json!({"join": "dev"}));
    let epoch = alice.next_of("joined")["epoch"].clone();
    // A plain join on B names Redis's epoch and latest seq, not a fresh mirror's.
    let mut carol = join_seen(&b, "carol", &a, 1.0);
    carol.send(&json!({"join": "dev"}));
    let j = carol.next_of("joined");
    assert_eq!((j["epoch"].clone(), j["seq"].as_u64()), (epoch.clone(), Some(20)), "{j}");
    carol.bye();
    wait_room_size(&mut alice, "dev", 1);
    // last: the four most recent, from Redis (B stopped hearing dev when carol left).
    let mut dave = join_seen(&b, "dave", &a, 1.0);
    dave.send(&json!({"join": "dev", "last": 4}));
    assert_eq!(dave.next_of("joined")["seq"], 20);
    let got = room_lines(&mut dave, "dev", 4);
    assert_eq!(seqs_of(&got), [17, 18, 19, 20], "{got:?}");
    dave.bye();
    wait_room_size(&mut alice, "dev", 1);
    // since 5 while alice keeps sending: 6..=20 from Redis, 21..=40 live, each once, no gap.
    let mut bob = join_seen(&b, "bob", &a, 1.0);
    let frames: Vec<u8> = (21..=40)
        .flat_map(|i| {
            crate::util::masked(0x1, json!({"room": "dev", "text": format!("m{i}")}).to_string().as_bytes())
        })
        .collect();
    bob.send(&json!({"join": "dev", "since": 5, "epoch": epoch}));
    alice.ws.get_mut().write_all(&frames).unwrap();
    let j = bob.next_of("joined");
    assert_eq!(j["epoch"], epoch);
    let got = room_lines(&mut bob, "dev", 35);
    assert!(got.iter().all(|l| l["type"] == "message"), "nothing is missing: no gap: {got:?}");
    assert_eq!(seqs_of(&got), (6..=40).collect::<Vec<_>>());
    let texts: Vec<String> = got.iter().map(|l| l["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(texts, (6..=40).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // Nothing more: send a marker and see it come next.
    alice.send(&json!({"room": "dev", "text": "marker"}));
    let next = room_lines(&mut bob, "dev", 1);
    assert_eq!((next[0]["seq"].as_u64(), next[0]["text"].as_str()), (Some(41), Some("marker")));
    assert!(b.metrics()["chatloop_history_fetched_total"] >= 3.0);
}

#[test]
fn a_history_read_that_redis_never_answers_falls_back_to_the_mirror_with_a_gap() {
    // B never heard dev; while Redis hangs, a since-join there cannot be read from Redis: it
    // waits (the loop does not), and when the link is given up it is answered from what B
    // has, which is nothing of Redis's epoch: a gap, not a silent hole.
    let Some(redis) = Redis::start() else { return };
    let args = ["--rate-limit", "0"];
    let (a, b) = (node(&redis, "30", &args), node(&redis, "30", &args));
    let mut alice = join_seen(&a, "alice", &b, 1.0);
    let mut bob = join_seen(&b, "bob", &a, 1.0);
    alice.send(&json!({"join": "dev"}));
    alice.next_of("joined");
    for i in 1..=5 {
        alice.send(&json!({"room": "dev", "text": format!("m{i}")}));
    }
    room_lines(&mut alice, "dev", 5);
    alice.send(&json!({"join": "dev"}));
    let epoch = alice.next_of("joined")["epoch"].clone();
    let pid = redis.child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let t = Instant::now();
    bob.send(&json!({"join": "dev", "since": 2, "epoch": epoch}));
    // Meanwhile B's loop serves other requests.
    assert!(b.get("/healthz").ends_with("ok\n"));
    let j = bob.next_of("joined");
    let waited = t.elapsed();
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // It asked Redis (a node that did not would answer at once) and gave up with the link.
    assert!(waited >= Duration::from_millis(500), "answered after {waited:?}: Redis was not asked");
    assert!(waited <= Duration::from_millis(2500), "answered after {waited:?}");
    assert_ne!(j["epoch"], epoch, "B's own epoch: it has nothing of Redis's: {j}");
    let gap = bob.next_of("gap");
    assert_eq!(gap["room"], "dev");
    println!("a since-join during a Redis stall was answered from the mirror in {waited:?}: {gap}");
}
