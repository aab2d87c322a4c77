//! Moderation through the backend API (issue 25) against the real binary: each action as the
//! target and a bystander see it (ban and its end, unban, mute and unmute, kick, disconnect
//! dropping the hold, revoke closing a live token and refusing an old one while a newer one
//! works), the requests refused, and a ban taken on one node refusing the id on another.

use crate::api::{Conn, key_file};
use crate::util::{Client, Frame, Server};
use chatloop::auth::{MintRequest, SigningKey, mint, unix_ms};
use serde_json::{Value, json};
use std::time::{Duration, Instant, SystemTime};

const SECRET: &str = "src/auth/testdata/hs256.secret";

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// A server with the API on and `extra` flags, and a kept-alive API connection to it.
fn start(extra: &[&str]) -> (Server, Conn) {
    let key = key_file();
    let mut args = vec!["--api-key", key.as_str()];
    args.extend_from_slice(extra);
    let s = Server::start(&args);
    let api = Conn::open(&s);
    (s, api)
}

/// `POST /api/<action>` with `body`, expecting 200; returns its JSON.
fn act(api: &mut Conn, action: &str, body: Value) -> Value {
    let r = api.post(&format!("/api/{action}"), &body);
    assert_eq!(r.status, 200, "{action} {body}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// The close after whatever lines come first: its code and reason, and those lines.
fn closed(c: &mut Client) -> (Option<u16>, String, Vec<Value>) {
    let mut lines = Vec::new();
    loop {
        match c.frame() {
            Frame::Lines(l) => lines.extend(l),
            Frame::Closed(code, why) => {
                let _ = c.ws.flush(); // our close's reply: the server counts the end once it has it
                return (code, why, lines);
            }
        }
    }
}

/// A join of `path` refused as banned: the error with `until`, then 4403.
fn refused_banned(s: &Server, path: &str) -> u64 {
    let mut c = s.connect_path(path);
    let e = c.next_line();
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("banned")), "{path}: {e}");
    assert_eq!(c.close_code(), Some(4403), "{path}");
    e["until"].as_u64().expect("until")
}

#[test]
fn a_ban_closes_the_user_refuses_it_until_it_ends_and_an_unban_lifts_it_at_once() {
    let (s, mut api) = start(&[]);
    let mut alice = s.join("alice");
    let mut bob = s.join("bob");
    let t0 = now_ms();
    let done = act(&mut api, "ban", json!({"id": "alice", "seconds": 2}));
    assert_eq!((done["action"].as_str(), done["id"].as_str()), (Some("ban"), Some("alice")), "{done}");
    let until = done["until"].as_u64().unwrap();
    assert!(until >= t0 + 2000 && until <= now_ms() + 2000, "{done}");
    // The target: told until when, closed 4403; the bystander: its leave (no hold, no away).
    let (code, why, lines) = closed(&mut alice);
    assert_eq!((code, why.as_str()), (Some(4403), "banned"));
    assert!(lines.iter().any(|l| l["code"] == "banned" && l["until"] == until), "{lines:?}");
    let leave = bob.next_any();
    assert_eq!((leave["type"].as_str(), leave["id"].as_str()), (Some("leave"), Some("alice")), "{leave}");
    // Refused at every join, by the fold rule too, until it ends; then let in.
    assert_eq!(refused_banned(&s, "/ws?id=alice"), until);
    assert_eq!(refused_banned(&s, "/ws?id=A1ICE"), until);
    while now_ms() <= until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut back = s.connect("alice");
    assert_eq!(back.next_line()["type"], "welcome");
    // A long ban, lifted: in at once.
    act(&mut api, "ban", json!({"id": "bob", "seconds": 3600}));
    assert_eq!(closed(&mut bob).0, Some(4403));
    refused_banned(&s, "/ws?id=bob");
    assert_eq!(act(&mut api, "unban", json!({"id": "bob"}))["lifted"], true);
    assert_eq!(act(&mut api, "unban", json!({"id": "bob"}))["lifted"], false, "nothing left to lift");
    s.join("bob");
    let end = Instant::now() + Duration::from_secs(5);
    let counted = |m: &std::collections::HashMap<String, f64>| {
        m["chatloop_errors_sent_total{code=\"banned\"}"] >= 4.0
            && m["chatloop_disconnects_total{reason=\"moderated\"}"] >= 2.0
    };
    while !counted(&s.metrics()) {
        assert!(Instant::now() < end, "not counted: {:?}", s.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_muted_user_still_reads_its_messages_are_refused_until_unmute() {
    let (s, mut api) = start(&[]);
    let mut alice = s.join("alice");
    let mut bob = s.join("bob");
    let done = act(&mut api, "mute", json!({"id": "alice", "room": "lobby", "seconds": 600}));
    let until = done["until"].as_u64().unwrap();
    assert_eq!(done["room"], "lobby");
    alice.send(&json!({"text": "hi", "cid": "m-1"}));
    let e = alice.next_line();
    assert_eq!(
        (e["code"].as_str(), e["cid"].as_str(), e["room"].as_str(), e["until"].as_u64()),
        (Some("muted"), Some("m-1"), Some("lobby"), Some(until)),
        "{e}"
    );
    // It still reads, and a room mute leaves private messages alone.
    bob.send(&json!({"text": "you can read this"}));
    assert_eq!(alice.next_line()["text"], "you can read this");
    alice.send(&json!({"to": "bob", "text": "psst"}));
    assert_eq!(bob.next_of("message")["text"], "you can read this");
    assert_eq!(bob.next_of("message")["text"], "psst");
    alice.next_of("message");
    // Muted everywhere: private messages too, naming the recipient.
    act(&mut api, "mute", json!({"id": "alice", "seconds": 600}));
    alice.send(&json!({"to": "bob", "text": "psst", "cid": "p-1"}));
    let e = alice.next_line();
    assert_eq!(
        (e["code"].as_str(), e["to"].as_str(), e["cid"].as_str()),
        (Some("muted"), Some("bob"), Some("p-1"))
    );
    // Unmute without a room lifts both: the message goes through.
    assert_eq!(act(&mut api, "unmute", json!({"id": "alice"}))["lifted"], true);
    alice.send(&json!({"text": "free again"}));
    assert_eq!(bob.next_of("message")["text"], "free again");
    assert_eq!(alice.next_line()["text"], "free again");
}

#[test]
fn a_kick_takes_the_user_out_of_one_room_and_the_others_see_it_leave() {
    let (s, mut api) = start(&[]);
    let mut alice = s.join("alice");
    let mut bob = s.join("bob");
    for c in [&mut alice, &mut bob] {
        c.send(&json!({"join": "dev"}));
        c.next_of("joined");
    }
    let done = act(&mut api, "kick", json!({"id": "Alice", "room": "dev"}));
    assert_eq!((done["action"].as_str(), done["room"].as_str()), (Some("kick"), Some("dev")));
    assert_eq!(alice.next_of("left"), json!({"type": "left", "room": "dev", "kicked": true}));
    let leave = loop {
        let l = bob.next_any();
        if l["type"] == "leave" {
            break l;
        }
    };
    assert_eq!(leave, json!({"type": "leave", "room": "dev", "id": "alice"}));
    // Still connected and in the lobby; dev refuses its message now.
    alice.send(&json!({"room": "dev", "text": "x"}));
    assert_eq!(alice.next_line()["code"], "not_in_room");
    alice.send(&json!({"text": "still here"}));
    assert_eq!(bob.next_of("message")["text"], "still here");
}

#[test]
fn a_disconnect_closes_4403_with_its_reason_and_drops_the_hold() {
    let (s, mut api) = start(&["--resume-grace", "60"]);
    let mut alice = s.connect("alice");
    let resume = alice.next_line()["resume"].as_str().unwrap().to_string();
    let mut bob = s.join("bob");
    act(&mut api, "disconnect", json!({"id": "alice", "reason": "spam"}));
    let (code, why, _) = closed(&mut alice);
    assert_eq!((code, why.as_str()), (Some(4403), "spam"));
    assert_eq!(bob.next_any()["type"], "leave", "no away: nothing is held");
    // Its resume token opens a fresh session, not the old one.
    let mut again = s.connect_path(&format!("/ws?id=alice&resume={resume}"));
    let w = again.next_line();
    assert_eq!(w["type"], "welcome");
    assert!(w.get("resumed").is_none(), "{w}");
    // A user in its grace (lost): its hold is dropped, the bystander sees the leave.
    let resume = w["resume"].as_str().unwrap().to_string();
    bob.next_of("join");
    drop(again);
    assert_eq!(bob.next_any()["type"], "away");
    act(&mut api, "disconnect", json!({"id": "alice"}));
    assert_eq!(bob.next_any(), json!({"type": "leave", "room": "lobby", "id": "alice"}));
    let w = s.connect_path(&format!("/ws?id=alice&resume={resume}")).next_line();
    assert!(w["type"] == "welcome" && w.get("resumed").is_none(), "{w}");
}

/// A token for `sub` issued `ago` ms before now, for ten minutes.
fn token(sub: &str, ago: u64) -> String {
    let key = SigningKey::parse(&std::fs::read(SECRET).unwrap()).unwrap();
    let req = MintRequest { sub, ttl: Duration::from_secs(600), ..Default::default() };
    mint(&key, &req, now_ms() - ago).unwrap()
}

#[test]
fn a_revoke_closes_a_live_old_token_4401_refuses_it_again_and_a_newer_one_resumes() {
    let (s, mut api) = start(&["--auth", "token", "--auth-key", SECRET]);
    let old = token("alice", 60_000);
    let mut alice = s.connect_path(&format!("/ws?token={old}"));
    let resume = alice.next_line()["resume"].as_str().unwrap().to_string();
    let mut bob = s.connect_path(&format!("/ws?token={}", token("bob", 60_000)));
    bob.next_line();
    let before = now_ms() - 30_000;
    let done = act(&mut api, "revoke", json!({"id": "alice", "before": before}));
    assert_eq!((done["before"].as_u64(), done["action"].as_str()), (Some(before), Some("revoke")));
    let (code, why, lines) = closed(&mut alice);
    assert_eq!((code, why.as_str()), (Some(4401), "revoked"));
    assert!(lines.iter().any(|l| l["code"] == "unauthorized" && l["reason"] == "revoked"), "{lines:?}");
    // Lost, not left: bob sees it away; the old token is refused from now on.
    assert_eq!(bob.next_any()["type"], "away");
    let mut again = s.connect_path(&format!("/ws?token={old}&resume={resume}"));
    let e = again.next_line();
    assert_eq!((e["code"].as_str(), e["reason"].as_str()), (Some("unauthorized"), Some("revoked")));
    assert_eq!(again.close_code(), Some(4401));
    // A token issued after the moment takes it back with its resume token, nothing lost.
    let mut back = s.connect_path(&format!("/ws?token={}&resume={resume}", token("alice", 0)));
    let w = back.next_line();
    assert_eq!((w["type"].as_str(), w["resumed"].as_bool()), (Some("welcome"), Some(true)), "{w}");
    assert_eq!(bob.next_any()["type"], "back");
    // It speaks again; bob's token, as old as alice's, is untouched.
    back.send(&json!({"text": "back again"}));
    assert_eq!(bob.next_of("message")["text"], "back again");
    assert!(s.metrics()["chatloop_unauthorized_total{reason=\"revoked\"}"] >= 2.0);
    // A ban in token mode: a valid token does not get a banned id in.
    act(&mut api, "ban", json!({"id": "bob", "seconds": 600}));
    assert_eq!(closed(&mut bob).0, Some(4403));
    refused_banned(&s, &format!("/ws?token={}", token("bob", 0)));
}

#[test]
fn bad_requests_are_refused_with_the_field_named_and_revoke_needs_token_mode() {
    let (_s, mut api) = start(&[]);
    for (action, body, field, code) in [
        ("ban", json!({"id": "alice"}), "seconds", "bad_request"),
        ("ban", json!({"id": "a b", "seconds": 5}), "id", "bad_id"),
        ("ban", json!({"id": "alice", "seconds": 0}), "seconds", "bad_request"),
        ("mute", json!({"id": "alice", "room": "No Room", "seconds": 5}), "room", "bad_room"),
        ("kick", json!({"id": "alice"}), "room", "bad_request"),
        ("disconnect", json!({"id": "alice", "reason": "x".repeat(124)}), "reason", "bad_request"),
        ("ban", json!({"id": "alice", "seconds": 5, "room": "dev"}), "room", "bad_request"),
        ("unban", json!({"id": "alice", "sec": 5}), "body", "bad_request"),
    ] {
        let r = api.post(&format!("/api/{action}"), &body);
        assert_eq!((r.status, r.code()), (400, code.to_string()), "{action} {body}");
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.starts_with(&format!("{field}:")), "{action} {body}: {message}");
    }
    let r = api.post("/api/revoke", &json!({"id": "alice", "before": 1}));
    assert_eq!((r.status, r.code()), (409, "auth_open".to_string()));
    let r = api.get("/api/ban");
    assert_eq!(r.status, 405);
}

#[test]
fn a_ban_on_one_node_refuses_the_id_on_another_and_a_node_started_later_loads_it() {
    use crate::cluster::{Redis, join_seen, node};
    let Some(redis) = Redis::start() else { return };
    let key = key_file();
    let api_args = ["--api-key", key.as_str()];
    let a = node(&redis, "3", &api_args);
    let b = node(&redis, "3", &api_args);
    let mut bob = join_seen(&a, "bob", &b, 1.0);
    let mut alice = join_seen(&b, "alice", &a, 1.0);
    let mut api = Conn::open(&a);
    // A mute taken on A refuses alice's messages on B within a round trip.
    act(&mut api, "mute", json!({"id": "alice", "seconds": 600}));
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        alice.send(&json!({"text": "anyone?", "cid": "q"}));
        let l = alice.next_line();
        if l["code"] == "muted" {
            break;
        }
        assert!(Instant::now() < end, "never muted on B: {l}");
        std::thread::sleep(Duration::from_millis(50));
    }
    act(&mut api, "unmute", json!({"id": "alice"}));
    // A kick and a ban on A reach alice on B; bob on A sees the leaves.
    alice.send(&json!({"join": "dev"}));
    alice.next_of("joined");
    act(&mut api, "kick", json!({"id": "alice", "room": "dev"}));
    assert_eq!(alice.next_of("left")["kicked"], true);
    let until = act(&mut api, "ban", json!({"id": "alice", "seconds": 600}))["until"].as_u64().unwrap();
    let (code, _, lines) = closed(&mut alice);
    assert_eq!(code, Some(4403));
    assert!(lines.iter().any(|l| l["code"] == "banned"), "{lines:?}");
    let leave = loop {
        let l = bob.next_any();
        if l["type"] == "leave" {
            break l;
        }
    };
    assert_eq!(leave["id"], "alice");
    assert_eq!(refused_banned(&b, "/ws?id=alice"), until);
    assert_eq!(refused_banned(&a, "/ws?id=alice"), until);
    // A node that starts now loads the set from Redis.
    let c = node(&redis, "3", &api_args);
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let mut t = c.connect("alice");
        let first = t.next_line();
        if first["code"] == "banned" {
            break;
        }
        assert!(Instant::now() < end, "node C let alice in: {first}");
        t.bye();
        std::thread::sleep(Duration::from_millis(50));
    }
    // Lifted on B: A and C let alice in again.
    act(&mut Conn::open(&b), "unban", json!({"id": "alice"}));
    let end = Instant::now() + Duration::from_secs(5);
    let mut alice = loop {
        let mut t = c.connect("alice");
        if t.next_line()["type"] == "welcome" {
            break t;
        }
        assert!(Instant::now() < end, "still banned on C");
        std::thread::sleep(Duration::from_millis(50));
    };
    // A disconnect on A closes her on C.
    act(&mut api, "disconnect", json!({"id": "alice", "reason": "bye from A"}));
    let (code, why, _) = closed(&mut alice);
    assert_eq!((code, why.as_str()), (Some(4403), "bye from A"));
}

#[test]
fn a_ban_waits_for_redis_to_keep_it_a_stall_says_unconfirmed_and_a_link_down_refuses() {
    use crate::cluster::{Redis, node};
    let Some(mut redis) = Redis::start() else { return };
    let key = key_file();
    let a = node(&redis, "30", &["--api-key", &key, "--redis-timeout", "1"]);
    let mut api = Conn::open(&a);
    let pid = redis.child.id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // The script is written and never answered: after --redis-timeout one answer says Redis
    // may or may not have kept it; this node enforces it meanwhile.
    let r = api.post("/api/ban", &json!({"id": "mallory", "seconds": 600}));
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!((r.status, r.code()), (503, "cluster_unconfirmed".to_string()));
    // Redis gone: refused at once, nothing done.
    redis.kill();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let r = api.post("/api/mute", &json!({"id": "eve", "seconds": 600}));
        if r.status == 503 && r.code() == "cluster_unavailable" {
            break;
        }
        assert!(Instant::now() < end, "still taken while Redis is gone: {}", r.status);
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut eve = a.join("eve");
    eve.send(&json!({"text": "not muted"}));
    assert_eq!(eve.next_line()["text"], "not muted");
}
