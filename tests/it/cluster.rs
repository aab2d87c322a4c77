//! Scale-out through Redis: two real chatloop processes and a real redis-server, all on
//! loopback. Each test starts its own redis-server on a free port (so that one test can kill
//! and restart it). Without redis-server on PATH the tests say so and pass, except under
//! CI=true, where `.ci/run` installs it and a missing server is a failure.

use crate::util::{Client, Frame, Server};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Redis {
    pub(crate) port: u16,
    pub(crate) child: Child,
}

impl Redis {
    /// A fresh redis-server on a free loopback port; None (test skipped) if there is none.
    pub(crate) fn start() -> Option<Redis> {
        if Command::new("redis-server").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "CI needs redis-server (apt-get install redis-server)");
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        for _ in 0..10 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if let Some(r) = Redis::start_on(port) {
                return Some(r);
            }
        }
        panic!("redis-server did not start");
    }

    /// None if it did not come up (the port was taken meanwhile).
    fn start_on(port: u16) -> Option<Redis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let mut r = Redis { port, child };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if r.child.try_wait().unwrap().is_some() {
                return None;
            }
            if r.ping() {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let _ = s.write_all(b"PING\r\n");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("+PONG")
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node joined to `redis`, with a short TTL so that expiry can be watched.
pub(crate) fn node(redis: &Redis, ttl: &str, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--redis", url.as_str(), "--redis-ttl", ttl];
    args.extend_from_slice(extra);
    let s = Server::start(&args);
    assert!(s.wait_log("cluster: connected to Redis"), "{}", s.log());
    s
}

/// Waits up to 5 s for a metric to reach `want`.
pub(crate) fn wait_metric(s: &Server, series: &str, want: f64) {
    let end = Instant::now() + Duration::from_secs(5);
    let mut got = None;
    while Instant::now() < end {
        got = s.metrics().get(series).copied();
        if got == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{series} stayed {got:?}, wanted {want}");
}

/// `id` joins on `on`; returns once node `seen_by` counts `remote` users elsewhere, so that
/// the join has crossed the cluster.
pub(crate) fn join_seen(on: &Server, id: &str, seen_by: &Server, remote: f64) -> Client {
    let mut c = on.connect(id);
    assert_eq!(c.next_of("welcome")["id"], id);
    wait_metric(seen_by, "chatloop_cluster_remote_users", remote);
    c
}

/// Every line up to and including the frames that carry all of `markers` (message texts).
fn until_markers(c: &mut Client, markers: &[&str]) -> Vec<Value> {
    let mut seen: Vec<Value> = Vec::new();
    while !markers.iter().all(|m| seen.iter().any(|l| l["text"] == *m)) {
        seen.extend(c.lines());
    }
    seen
}

fn texts(lines: &[Value]) -> Vec<String> {
    lines.iter().filter(|l| l["type"] == "message").map(|l| l["text"].as_str().unwrap().to_string()).collect()
}

#[test]
fn two_nodes_are_one_chat_room_private_presence_and_unique_ids() {
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, "15", &[]);
    let b = node(&redis, "15", &[]);
    wait_metric(&a, "chatloop_cluster_up", 1.0);

    let mut alice = a.connect("alice");
    assert_eq!(alice.next_of("welcome")["users"], json!(["alice"]));
    wait_metric(&b, "chatloop_cluster_remote_users", 1.0);

    let mut bob = b.connect("bob");
    let w = bob.next_of("welcome");
    assert_eq!(w["users"], json!(["bob", "alice"]), "the welcome lists the whole cluster");
    assert_eq!(w["total"], 2);
    assert_eq!(alice.next_of("join")["id"], "bob", "presence crosses nodes");

    // Room, both ways, each message exactly once everywhere.
    alice.send(&json!({"text": "from a"}));
    bob.send(&json!({"text": "from b"}));
    alice.send(&json!({"text": "end a"}));
    bob.send(&json!({"text": "end b"}));
    for c in [&mut alice, &mut bob] {
        let mut got = texts(&until_markers(c, &["end a", "end b"]));
        got.sort();
        assert_eq!(got, ["end a", "end b", "from a", "from b"], "exactly once each");
    }

    // Private, A to B (by any case), echoed to the sender alone.
    alice.send(&json!({"to": "BOB", "text": "psst"}));
    let m = bob.next_of("message");
    assert_eq!(
        (m["from"].as_str(), m["to"].as_str(), m["text"].as_str()),
        (Some("alice"), Some("bob"), Some("psst"))
    );
    assert_eq!(alice.next_of("message")["text"], "psst", "the sender's copy");
    bob.send(&json!({"to": "alice", "text": "back"}));
    assert_eq!(alice.next_of("message")["text"], "back");
    assert_eq!(bob.next_of("message")["text"], "back");

    // Nobody anywhere: unknown_recipient, as on one node.
    bob.send(&json!({"to": "zed", "text": "x"}));
    let e = bob.next_of("error");
    assert_eq!((e["code"].as_str(), e["to"].as_str()), (Some("unknown_recipient"), Some("zed")));

    // Ids are unique across the cluster, ignoring case.
    let mut dup = b.connect("ALICE");
    assert_eq!(dup.next_of("error")["code"], "id_taken");
    assert_eq!(dup.close_code(), Some(4409));
    let mut dup = a.connect("Bob");
    assert_eq!(dup.close_code(), Some(4409));

    // Leaving is seen on the other node, and frees the id cluster-wide.
    bob.bye();
    assert_eq!(alice.next_of("leave")["id"], "bob");
    let mut bob2 = a.connect("BOB");
    assert_eq!(bob2.next_of("welcome")["id"], "BOB");
    let m = a.metrics();
    assert!(m["chatloop_cluster_published_total"] > 0.0 && m["chatloop_cluster_received_total"] > 0.0);
}

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
fn a_node_shutting_down_says_goodbye_and_frees_its_ids_at_once() {
    let Some(redis) = Redis::start() else { return };
    let mut a = node(&redis, "30", &[]);
    let b = node(&redis, "30", &[]);
    let mut alice = join_seen(&a, "alice", &b, 1.0);
    let mut carol = join_seen(&b, "carol", &a, 1.0);

    a.signal(libc::SIGTERM);
    assert_eq!(alice.close_code(), Some(1001));
    let st = a.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(st.success());
    assert_eq!(carol.next_of("leave")["id"], "alice", "well before the 30 s TTL");
    let mut again = b.connect("alice");
    assert_eq!(again.next_of("welcome")["id"], "alice", "released, not left to expire");
}

#[test]
fn reuse_port_lets_two_nodes_share_one_port() {
    let Some(redis) = Redis::start() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let a = node(&redis, "15", &["--addr", &addr, "--reuse-port"]);
    let b = node(&redis, "15", &["--addr", &addr, "--reuse-port"]);
    assert_eq!((a.addr.port(), b.addr.port()), (port, port));

    // The kernel spreads connections over both (by a hash of the client's port: all 24 on
    // one node has odds of 2 in 16 million); the chat is one either way.
    let mut clients: Vec<Client> = (0..24).map(|i| a.connect(&format!("u{i}"))).collect();
    for c in clients.iter_mut() {
        c.next_of("welcome");
    }
    let opened = |s: &Server| s.log().matches("session open").count();
    // The logs are read by threads of this test: give a busy machine a moment.
    let end = Instant::now() + Duration::from_secs(5);
    while opened(&a) + opened(&b) < 24 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(opened(&a) + opened(&b), 24);
    assert!(opened(&a) > 0 && opened(&b) > 0, "both nodes took connections");
    clients[0].send(&json!({"text": "to all"}));
    for c in clients.iter_mut() {
        assert_eq!(c.next_of("message")["text"], "to all");
    }

    // Without --reuse-port the port is refused, with a hint.
    let out = Command::new(env!("CARGO_BIN_EXE_chatloop")).args(["--addr", &addr]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen") && err.contains("--reuse-port"), "{err}");
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

#[test]
fn an_idle_node_sleeps_between_pings() {
    // Nothing to do but a PING every half second (half of --redis-timeout) and a heartbeat
    // every 20 s: the loop must sleep in between, not spin.
    let Some(redis) = Redis::start() else { return };
    let a = node(&redis, "60", &[]);
    let before = (a.cpu_secs(), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let used = a.cpu_secs() - before.0;
    assert!(used < 0.3, "an idle node used {used:.2} s of CPU in 5 s");
    // ...and it does keep the link known to be alive: about two PINGs a second.
    let mut s = TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    s.write_all(b"INFO commandstats\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut info = String::new();
    let mut buf = [0; 8192];
    while !info.contains("\r\n\r\n") || !info.trim_end().ends_with(|c: char| c.is_ascii_digit()) {
        match std::io::Read::read(&mut s, &mut buf) {
            Ok(n) if n > 0 => info.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    let pings: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_ping:calls=")?.split(',').next()?.parse().ok())
        .unwrap_or(0);
    let secs = before.1.elapsed().as_secs_f64() + 1.0; // and the second before
    println!("an idle node sent {pings} PINGs in about {secs:.1} s");
    assert!(pings >= 6 && (pings as f64) <= 2.0 * secs + 2.0, "{pings} PINGs in {secs:.1} s:\n{info}");
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

#[test]
fn a_private_flood_across_nodes_is_refused_to_its_sender_not_the_victim() {
    // The fair loop's private-flood rule holds across nodes: the recipient's node refuses what
    // its queue cannot take, and the sender on the other node hears `recipient_busy`.
    let Some(redis) = Redis::start() else { return };
    let limits = ["--rate-limit", "0", "--queue-cap", "16384"];
    let (a, b) = (node(&redis, "15", &limits), node(&redis, "15", &limits));
    let mut victim = join_seen(&a, "victim", &b, 1.0);
    let mut flooder = join_seen(&b, "flooder", &a, 1.0);
    let line = json!({"to": "victim", "text": "😀".repeat(1000)}).to_string();
    let frames: Vec<u8> = (0..2000).flat_map(|_| crate::util::masked(0x1, line.as_bytes())).collect();
    // Written from a thread while this one reads: the sender's own copies must not make the
    // flooder itself a slow consumer.
    let mut raw = flooder.ws.get_ref().try_clone().unwrap();
    let writer = std::thread::spawn(move || raw.write_all(&frames).unwrap());
    // Every message must end at the victim or as one recipient_busy at the flooder.
    let short = Some(Duration::from_millis(100));
    flooder.ws.get_mut().set_read_timeout(short).unwrap();
    victim.ws.get_mut().set_read_timeout(short).unwrap();
    let (mut copies, mut busy, mut got) = (0, 0, 0);
    let end = Instant::now() + Duration::from_secs(30);
    while busy + got < 2000 || copies < 2000 {
        assert!(Instant::now() < end, "{copies} copies; {got} delivered + {busy} recipient_busy of 2000");
        while let Ok(m) = flooder.ws.read() {
            let tungstenite::Message::Text(t) = m else { continue };
            copies += t.matches("\"type\":\"message\"").count();
            busy += t.matches("\"code\":\"recipient_busy\",").count();
        }
        loop {
            match victim.ws.read() {
                Ok(tungstenite::Message::Text(t)) => got += t.matches("\"type\":\"message\"").count(),
                Ok(tungstenite::Message::Close(f)) => panic!("victim closed {f:?}"),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    writer.join().unwrap();
    println!("across nodes: 2,000 private messages, {got} delivered, {busy} recipient_busy");
    assert!(busy > 0, "the victim's node must have refused some");
    assert_eq!(busy + got, 2000);
}

/// Asks `c` for the directory until `room` shows `users` members (the cluster's view).
fn wait_room_size(c: &mut Client, room: &str, users: u64) {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        c.send(&json!({"rooms": true}));
        let d = c.next_of("rooms");
        let n = d["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["room"] == room)
            .map_or(0, |r| r["users"].as_u64().unwrap());
        if n == users {
            return;
        }
        assert!(Instant::now() < end, "{room} stayed at {n} users: {d}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

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

/// Room `room`'s messages and gaps on `c` until `n` messages came (each read bounded by the
/// client's read timeout).
fn room_lines(c: &mut Client, room: &str, n: usize) -> Vec<Value> {
    let mut got: Vec<Value> = Vec::new();
    while got.iter().filter(|l| l["type"] == "message").count() < n {
        let l = c.next_any();
        if l["room"] == room && (l["type"] == "message" || l["type"] == "gap") {
            got.push(l);
        }
    }
    got
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

/// Lines of `c` up to and including the message with text `marker` (sent by the caller).
pub(crate) fn until_text(c: &mut Client, marker: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &Value| l["text"] == marker) {
        seen.push(c.next_any());
    }
    seen
}

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
