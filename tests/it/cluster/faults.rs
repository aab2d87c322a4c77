//! Faults: a killed node, a restarted, unreachable, hung, stopped or killed Redis; local chat
//! goes on and every message ends delivered once or reported once.

use super::{Redis, join_seen, node, wait_metric};
use crate::util::{Client, Frame, Server};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[test]
fn a_killed_node_bounces_private_messages_and_frees_its_ids_after_the_ttl() {
    let Some(redis) = Redis::start() else { return };
    let mut a = node(&redis, "2", &[]);
    let b = node(&redis, "2", &[]);
    let _alice = join_seen(&a, "alice", &b, 1.0);
    let mut carol = join_seen(&b, "carol", &a, 1.0);

    a.signal(libc::SIGKILL);
    a.wait_exit(Duration::from_secs(5)).expect("node A exits");
    let killed = Instant::now();
    // B still lists alice, but her node is gone: PUBLISH reaches nobody, so carol hears so.
    carol.send(&json!({"to": "alice", "text": "are you there"}));
    let e = carol.next_of("error");
    assert_eq!((e["code"].as_str(), e["to"].as_str()), (Some("unknown_recipient"), Some("alice")));
    // B listed her all along (the list only shrinks), so that error was the bounce, not a
    // lookup that found nobody.
    assert_eq!(b.metrics()["chatloop_cluster_remote_users"], 1.0);
    // Her id is still claimed until the TTL runs out...
    let mut early = b.connect("alice");
    if killed.elapsed() < Duration::from_millis(1200) {
        assert_eq!(early.close_code(), Some(4409), "claimed until the TTL runs out");
    }
    drop(early);
    // ...then B drops the silent node's users and the id is free.
    assert_eq!(carol.next_of("leave")["id"], "alice");
    assert!(killed.elapsed() < Duration::from_secs(5), "expired in {:?}", killed.elapsed());
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let mut again = b.connect("alice");
        match again.frame() {
            Frame::Lines(l) if l[0]["type"] == "welcome" => break,
            other => assert!(Instant::now() < end, "alice still taken: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn redis_restart_keeps_local_chat_refuses_cross_node_sends_then_recovers() {
    let Some(mut redis) = Redis::start() else { return };
    let a = node(&redis, "15", &[]);
    let b = node(&redis, "15", &[]);
    let mut alice = join_seen(&a, "alice", &b, 1.0);
    let mut bob = join_seen(&b, "bob", &a, 1.0);
    let mut amy = a.connect("amy");
    amy.next_of("welcome");

    redis.kill();
    wait_metric(&a, "chatloop_cluster_up", 0.0);
    wait_metric(&b, "chatloop_cluster_up", 0.0);

    // Local delivery goes on; the sender learns the other node did not get it.
    alice.send(&json!({"text": "local only"}));
    assert_eq!(amy.next_of("message")["text"], "local only");
    assert_eq!(alice.next_of("message")["text"], "local only");
    assert_eq!(alice.next_of("error")["code"], "cluster_unavailable");
    alice.send(&json!({"to": "bob", "text": "lost?"}));
    let e = alice.next_of("error");
    assert_eq!((e["code"].as_str(), e["to"].as_str()), (Some("cluster_unavailable"), Some("bob")));
    alice.send(&json!({"to": "amy", "text": "same node"}));
    assert_eq!(amy.next_of("message")["text"], "same node");
    assert_eq!(alice.next_of("message")["text"], "same node");

    // Redis comes back empty (no persistence): both nodes reconnect and re-register.
    let port = redis.port;
    drop(redis);
    let _redis = Redis::start_on(port).expect("redis restarts on its port");
    wait_metric(&a, "chatloop_cluster_up", 1.0);
    wait_metric(&b, "chatloop_cluster_up", 1.0);
    wait_metric(&a, "chatloop_cluster_connects_total", 2.0);
    let mut dup = b.connect("Alice");
    assert_eq!(dup.close_code(), Some(4409), "alice re-registered after the restart");

    alice.send(&json!({"to": "bob", "text": "after"}));
    assert_eq!(bob.next_of("message")["text"], "after");
    assert_eq!(alice.next_of("message")["text"], "after", "the sender's copy");
    bob.send(&json!({"text": "room again"}));
    assert_eq!(alice.next_of("message")["text"], "room again");
    assert_eq!(amy.next_of("message")["text"], "room again");
}

#[test]
fn an_unreachable_redis_leaves_a_working_single_node() {
    // Nothing listens on this port: the node runs alone, says why, and keeps retrying.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{port}");
    let s = Server::start(&["--redis", &url]);
    assert!(s.wait_log("unavailable"), "{}", s.log());
    let mut a = s.connect("a");
    a.next_of("welcome");
    let mut b = s.connect("b");
    b.next_of("welcome");
    a.send(&json!({"to": "b", "text": "hi"}));
    assert_eq!(b.next_of("message")["text"], "hi");
    a.send(&json!({"to": "c", "text": "hi"}));
    assert_eq!(a.next_of("error")["code"], "cluster_unavailable", "c may be on a node we cannot see");
    assert_eq!(s.metrics()["chatloop_cluster_up"], 0.0);
    // Each such error names the message it is about, by the client's cid.
    a.send(&json!({"text": "to everyone", "cid": "r-1"}));
    let mine = a.next_of("message");
    assert_eq!(
        (mine["cid"].as_str(), mine["text"].as_str()),
        (Some("r-1"), Some("to everyone")),
        "delivered here"
    );
    let e = a.next_of("error");
    assert_eq!(
        (e["code"].as_str(), e["room"].as_str(), e["cid"].as_str()),
        (Some("cluster_unavailable"), Some("lobby"), Some("r-1"))
    );
    a.send(&json!({"to": "zed", "text": "hi", "cid": "p-1"}));
    let e = a.next_of("error");
    assert_eq!(
        (e["code"].as_str(), e["to"].as_str(), e["cid"].as_str()),
        (Some("cluster_unavailable"), Some("zed"), Some("p-1"))
    );
}

#[test]
fn a_hung_redis_does_not_hold_joins() {
    let Some(redis) = Redis::start() else { return };
    // A long TTL: the stall limit is --redis-timeout (1 s by default), whatever the TTL.
    let a = node(&redis, "30", &[]);
    let pid = redis.child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // The claim gets no answer; a second later (sooner if an idle PING was already waiting)
    // the node gives up on the link and decides the join itself.
    let t = Instant::now();
    let mut zoe = a.connect("zoe");
    assert_eq!(zoe.next_of("welcome")["id"], "zoe");
    let waited = t.elapsed();
    println!("a join during a Redis stall was answered in {waited:?}");
    assert!(waited <= Duration::from_millis(1500), "the join waited {waited:?}");
    assert!(a.wait_log("no reply within 1s"), "{}", a.log());
    assert_eq!(a.metrics()["chatloop_cluster_stalls_total"], 1.0);
    unsafe { libc::kill(pid, libc::SIGCONT) };
    wait_metric(&a, "chatloop_cluster_connects_total", 2.0);
    wait_metric(&a, "chatloop_cluster_up", 1.0);
}

/// What one client of the fault test saw.
#[derive(Default, Debug)]
struct Side {
    sent: u64,
    /// The peer's messages, by text: each must come at most once.
    got: std::collections::HashMap<String, u32>,
    unavailable: u64,
    unconfirmed: u64,
}

impl Side {
    /// Reads what is waiting (the socket has a short read timeout); `peer` is the peer's
    /// message prefix.
    fn read(&mut self, c: &mut Client, peer: &str, presence: &mut Vec<Value>) {
        loop {
            match c.ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    for l in t.split('\n') {
                        let v: Value = serde_json::from_str(l).unwrap();
                        match v["type"].as_str() {
                            Some("message") => {
                                let text = v["text"].as_str().unwrap();
                                if text.starts_with(peer) {
                                    *self.got.entry(text.to_string()).or_default() += 1;
                                }
                            }
                            Some("error") => {
                                assert_eq!(v["room"], "lobby", "a room error names its room: {v}");
                                match v["code"].as_str() {
                                    Some("cluster_unavailable") => self.unavailable += 1,
                                    Some("cluster_unconfirmed") => self.unconfirmed += 1,
                                    _ => panic!("unexpected error {v}"),
                                }
                            }
                            _ => presence.push(v),
                        }
                    }
                }
                Ok(tungstenite::Message::Close(f)) => panic!("closed: {f:?}"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return;
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

/// Checks one direction: every message sent was delivered once, or named in one error
/// (both allowed only for `cluster_unconfirmed`), nothing twice.
fn settle(dir: &str, sender: &Side, receiver: &Side) -> u64 {
    let dups: Vec<_> = receiver.got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "{dir}: duplicated {dups:?}");
    let delivered = receiver.got.len() as u64;
    let (u, c) = (sender.unavailable, sender.unconfirmed);
    println!(
        "{dir}: sent {}, delivered {delivered}, cluster_unavailable {u}, cluster_unconfirmed {c}",
        sender.sent
    );
    assert!(
        delivered + u <= sender.sent && sender.sent <= delivered + u + c,
        "{dir}: sent {} = delivered {delivered} + unavailable {u} (+ up to {c} unconfirmed) fails",
        sender.sent
    );
    sender.sent - delivered
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// SIGSTOP for 5 s, then SIGCONT: a hung Redis.
    Stop,
    /// SIGKILL, and a new (empty) Redis on the same port 5 s later.
    Kill,
}

/// alice on A and bob on B each send a lobby message every 100 ms; 1 s in, Redis fails for
/// 5 s (`fault`); carol joins A 0.3 s into the outage. Every message ends delivered once or
/// reported once, the outage is noticed within 1.5 s, carol's join is answered within 1.5 s,
/// and afterwards traffic and presence recover.
fn traffic_through(fault: Fault) {
    let Some(mut redis) = Redis::start() else { return };
    let flags = ["--rate-limit", "0"];
    let (a, b) = (node(&redis, "15", &flags), node(&redis, "15", &flags));
    let mut alice = join_seen(&a, "alice", &b, 1.0);
    let mut bob = join_seen(&b, "bob", &a, 1.0);
    let short = Some(Duration::from_millis(2));
    alice.ws.get_mut().set_read_timeout(short).unwrap();
    bob.ws.get_mut().set_read_timeout(short).unwrap();
    let (mut sa, mut sb) = (Side::default(), Side::default());
    let mut presence = Vec::new();
    let port = redis.port;
    let pid = redis.child.id() as i32;

    let start = Instant::now();
    let (fault_at, fault_end) = (Duration::from_secs(1), Duration::from_secs(6));
    let stop_sending = fault_end + Duration::from_millis(2500);
    let (mut faulted, mut healed) = (false, false);
    let mut noticed: [Option<Duration>; 2] = [None, None];
    let mut next_send = Duration::ZERO;
    let mut carol_wait = None;
    std::thread::scope(|scope| {
        let mut carol = None;
        while start.elapsed() < stop_sending {
            let t = start.elapsed();
            if !faulted && t >= fault_at {
                faulted = true;
                match fault {
                    // SAFETY: kill(2) on our own child.
                    Fault::Stop => unsafe {
                        libc::kill(pid, libc::SIGSTOP);
                    },
                    Fault::Kill => redis.kill(),
                }
            }
            if faulted && carol.is_none() && t >= fault_at + Duration::from_millis(300) {
                let a = &a;
                carol = Some(scope.spawn(move || {
                    let t = Instant::now();
                    let mut c = a.connect("carol");
                    c.next_of("welcome");
                    (t.elapsed(), c)
                }));
            }
            if faulted && !healed && t >= fault_end {
                healed = true;
                match fault {
                    Fault::Stop => unsafe {
                        libc::kill(pid, libc::SIGCONT);
                    },
                    Fault::Kill => redis = Redis::start_on(port).expect("redis restarts on its port"),
                }
            }
            if faulted && !healed {
                for (i, n) in [&a, &b].iter().enumerate() {
                    if noticed[i].is_none() && n.metrics()["chatloop_cluster_up"] == 0.0 {
                        noticed[i] = Some(t - fault_at);
                    }
                }
            }
            if t >= next_send {
                let k = sa.sent;
                alice.send(&json!({"text": format!("a {k}")}));
                bob.send(&json!({"text": format!("b {k}")}));
                sa.sent += 1;
                sb.sent += 1;
                next_send += Duration::from_millis(100);
            }
            sa.read(&mut alice, "b ", &mut presence);
            sb.read(&mut bob, "a ", &mut presence);
            std::thread::sleep(Duration::from_millis(5));
        }
        carol_wait = Some(carol.expect("carol joined").join().unwrap());
    });
    let (carol_wait, _carol) = carol_wait.unwrap();
    println!("{fault:?}: outage noticed by A after {:?}, by B after {:?}", noticed[0], noticed[1]);
    println!("{fault:?}: carol's join during the outage answered in {carol_wait:?}");
    for (i, n) in noticed.iter().enumerate() {
        let n = n.unwrap_or_else(|| panic!("node {i} never noticed the outage"));
        assert!(n <= Duration::from_millis(1500), "node {i} noticed after {n:?}");
    }
    assert!(carol_wait <= Duration::from_millis(1500), "carol waited {carol_wait:?}");

    // Recovery: both nodes up, and the last messages cross both ways.
    wait_metric(&a, "chatloop_cluster_up", 1.0);
    wait_metric(&b, "chatloop_cluster_up", 1.0);
    for (c, s, tag) in [(&mut alice, &mut sa, "a"), (&mut bob, &mut sb, "b")] {
        c.send(&json!({"text": format!("{tag} {}", s.sent)}));
        s.sent += 1;
    }
    let end = Instant::now() + Duration::from_secs(5);
    let (last_a, last_b) = (format!("a {}", sa.sent - 1), format!("b {}", sb.sent - 1));
    while !(sb.got.contains_key(&last_a) && sa.got.contains_key(&last_b)) {
        assert!(Instant::now() < end, "traffic did not recover: {sa:?} {sb:?}");
        sa.read(&mut alice, "b ", &mut presence);
        sb.read(&mut bob, "a ", &mut presence);
    }
    let settle_end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle_end {
        sa.read(&mut alice, "b ", &mut presence);
        sb.read(&mut bob, "a ", &mut presence);
    }
    let lost_ab = settle("alice -> bob", &sa, &sb);
    let lost_ba = settle("bob -> alice", &sb, &sa);
    assert!(sa.unavailable + sa.unconfirmed > 0 && lost_ab > 0 && lost_ba > 0, "the outage cost nothing?");
    // Presence recovered: carol, who joined A during the outage, is known on B, and her id
    // (and alice's) is registered in Redis again.
    wait_metric(&b, "chatloop_cluster_remote_users", 2.0);
    wait_metric(&a, "chatloop_cluster_remote_users", 1.0);
    for id in ["carol", "alice"] {
        let mut dup = b.connect(id);
        assert_eq!(dup.close_code(), Some(4409), "{id} is registered again");
    }
}

#[test]
fn a_stopped_redis_costs_each_message_one_outcome() {
    traffic_through(Fault::Stop);
}

#[test]
fn a_killed_and_restarted_redis_costs_each_message_one_outcome() {
    traffic_through(Fault::Kill);
}
