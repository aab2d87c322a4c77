//! Two nodes as one chat: rooms, private messages, presence and unique ids across nodes;
//! a graceful goodbye, a shared port, an idle link, the private-flood rule across nodes.

use super::{Redis, join_seen, node, texts, until_markers, wait_metric};
use crate::util::{Client, Server};
use serde_json::json;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

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
