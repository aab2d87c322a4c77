//! One event stream for a whole cluster: each node's events on every node's stream, once,
//! with the same ids, and `Last-Event-ID` valid on any node.

use super::{Ev, Sse, is, key_file};
use crate::cluster::{Redis, node};
use serde_json::json;
use std::time::Duration;

#[test]
fn an_event_on_one_node_is_on_every_nodes_stream_with_the_same_id() {
    let Some(redis) = Redis::start() else { return };
    let key = key_file("cluster");
    let api = ["--api-key", key.to_str().unwrap()];
    let a = node(&redis, "3", &api);
    let b = node(&redis, "3", &api);
    let mut on_a = Sse::open(&a, "", None);
    let mut on_b = Sse::open(&b, "", None);
    let mut alice = a.join("alice");
    alice.send(&json!({"text": "from a"}));
    alice.next_of("message");
    let mut bob = b.join("bob");
    bob.send(&json!({"text": "from b"}));
    bob.next_of("message");
    alice.bye();
    let want = |e: &Ev| is(e, "offline", "alice", None);
    let seen_a = on_a.until(want);
    let seen_b = on_b.until(want);
    let key = |e: &Ev| (e.id.unwrap(), e.event.clone(), e.data.to_string());
    let (ka, kb): (Vec<_>, Vec<_>) = (seen_a.iter().map(key).collect(), seen_b.iter().map(key).collect());
    assert_eq!(ka, kb, "the same events, ids and order on both nodes");
    let ids: Vec<u64> = ka.iter().map(|k| k.0).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "one order, no hole, none twice: {ids:?}");
    for (kind, id) in [("online", "alice"), ("online", "bob"), ("offline", "alice")] {
        assert_eq!(
            seen_b.iter().filter(|e| is(e, kind, id, None)).count(),
            1,
            "{kind} {id} once: {seen_b:?}"
        );
    }
    let texts: Vec<&str> = seen_b.iter().filter_map(|e| e.data["text"].as_str()).collect();
    assert_eq!(texts, ["from a", "from b"]);
    // An id from node A's stream is valid on node B, and on a node started after it all.
    let after = ids[1];
    let mut back = Sse::open(&b, "", Some(after));
    assert_eq!(back.next().id, Some(after + 1));
    let c = node(&redis, "3", &api);
    let mut late = Sse::open(&c, "", Some(after));
    let replay: Vec<u64> = (0..ids.len() - 2).map(|_| late.next().id.unwrap()).collect();
    assert_eq!(replay, ids[2..], "a node started later replays from Redis's stream");
    assert!(late.next_within(Duration::from_millis(300)).is_none());
}

#[test]
fn a_blip_resumed_on_another_node_is_no_offline_and_a_grace_that_ends_is_one_everywhere() {
    let Some(redis) = Redis::start() else { return };
    let key = key_file("cluster-blip");
    let extra = ["--api-key", key.to_str().unwrap(), "--resume-grace", "2"];
    let a = node(&redis, "3", &extra);
    let b = node(&redis, "3", &extra);
    let mut on_a = Sse::open(&a, "?types=online,offline", None);
    let mut on_b = Sse::open(&b, "?types=online,offline", None);
    let mut alice = a.connect("alice");
    let token = alice.next_line()["resume"].as_str().unwrap().to_string();
    // Dropped on A without a close, back on B within the grace: moved, not offline.
    drop(alice);
    assert!(a.wait_log("reason=lost"));
    let mut again = b.connect(&format!("alice&resume={token}"));
    let w = again.next_line();
    assert_eq!(w["resumed"], true, "{w}");
    // Past A's grace: nothing on either stream but the first online.
    std::thread::sleep(Duration::from_secs(4));
    for s in [&mut on_a, &mut on_b] {
        assert!(is(&s.next(), "online", "alice", None));
        assert!(s.next_within(Duration::from_millis(200)).is_none(), "no offline for a resumed blip");
    }
    // Dropped on B and not back: offline once, on both streams, with one id.
    drop(again);
    let (oa, ob) = (on_a.next(), on_b.next());
    assert!(is(&oa, "offline", "alice", None) && is(&ob, "offline", "alice", None), "{oa:?} {ob:?}");
    assert_eq!(oa.id, ob.id);
    for s in [&mut on_a, &mut on_b] {
        assert!(s.next_within(Duration::from_secs(2)).is_none(), "once");
    }
}

/// Waits up to 15 s for `series` to be `want` on `s`.
fn wait_for(s: &crate::util::Server, series: &str, want: f64) {
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < end {
        if s.metrics().get(series) == Some(&want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{series} never reached {want}");
}

#[test]
fn events_recorded_while_redis_is_away_reach_every_stream_once_it_is_back() {
    let Some(redis) = Redis::start() else { return };
    let key = key_file("cluster-away");
    let api = ["--api-key", key.to_str().unwrap()];
    let a = node(&redis, "30", &api);
    let b = node(&redis, "30", &api);
    let mut on_a = Sse::open(&a, "?types=online", None);
    let mut on_b = Sse::open(&b, "?types=online", None);
    let _bob = b.join("bob");
    let first = on_a.next();
    assert!(is(&first, "online", "bob", None) && on_b.next().id == first.id);
    let pid = redis.child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_for(&a, "chatloop_cluster_up", 0.0);
    let _alice = a.join("alice");
    assert!(on_a.next_within(Duration::from_millis(500)).is_none(), "numbered only by Redis");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    wait_for(&a, "chatloop_cluster_up", 1.0);
    let (ea, eb) = (on_a.next(), on_b.next());
    assert!(is(&ea, "online", "alice", None) && is(&eb, "online", "alice", None), "{ea:?} {eb:?}");
    assert_eq!(ea.id, eb.id);
    assert!(ea.id > first.id);
    for s in [&mut on_a, &mut on_b] {
        assert!(s.next_within(Duration::from_millis(500)).is_none(), "once");
    }
}

#[test]
fn the_users_of_a_node_that_dies_go_offline_once_for_the_whole_cluster() {
    let Some(redis) = Redis::start() else { return };
    let key = key_file("cluster-dies");
    let api = ["--api-key", key.to_str().unwrap()];
    let (a, b, c) = (node(&redis, "2", &api), node(&redis, "2", &api), node(&redis, "2", &api));
    let mut on_b = Sse::open(&b, "?types=leave,offline", None);
    let mut on_c = Sse::open(&c, "?types=leave,offline", None);
    let mut alice = crate::cluster::join_seen(&a, "alice", &b, 1.0);
    alice.send(&json!({"join": "dev"}));
    alice.next_of("joined");
    crate::cluster::wait_metric(&c, "chatloop_cluster_remote_users", 1.0);
    std::thread::sleep(Duration::from_millis(300)); // its join of dev reaches the others
    // Killed: no goodbye, no leave. Past the TTL the others drop it, and one of them says so.
    a.signal(libc::SIGKILL);
    let want = |e: &Ev| is(e, "offline", "alice", None);
    let (sb, sc) = (on_b.until(want), on_c.until(want));
    let key = |e: &Ev| (e.id, e.event.clone(), e.data["room"].clone());
    assert_eq!(sb.iter().map(key).collect::<Vec<_>>(), sc.iter().map(key).collect::<Vec<_>>());
    let kinds: Vec<String> = sb.iter().map(|e| format!("{} {}", e.event, e.data["room"])).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(kinds.contains(&"leave \"lobby\"".to_string()) && kinds.contains(&"leave \"dev\"".to_string()));
    for s in [&mut on_b, &mut on_c] {
        assert!(s.next_within(Duration::from_secs(3)).is_none(), "once, by one node");
    }
}
