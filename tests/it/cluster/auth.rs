//! `--auth token` across nodes (issue 24): each node checks tokens with the same key, alone. A
//! session closed 4401 at `exp` + grace on one node resumes on the other with a fresh token
//! (its welcome carries the new `exp`), missing nothing and seen by nobody to leave; a refresh
//! works there; a fresh token with a narrower `rooms` claim leaves the rooms it no longer allows.

use super::{Redis, node, room_lines, until_text, wait_metric, wait_room_size};
use crate::auth::{SECRET, token};
use crate::util::{Client, Server};
use serde_json::{Value, json};

fn signed_in(s: &Server, tok: &str) -> (Client, Value) {
    let mut c = s.connect_path(&format!("/ws?token={tok}"));
    let w = c.next_of("welcome");
    (c, w)
}

#[test]
fn expired_on_one_node_resumes_on_the_other_with_a_fresh_token_and_exp_losing_nothing() {
    let Some(redis) = Redis::start() else { return };
    let args = [
        "--rate-limit",
        "0",
        "--auth",
        "token",
        "--auth-key",
        SECRET,
        "--auth-grace",
        "1",
        "--auth-leeway",
        "0",
    ];
    let (a, b) = (node(&redis, "15", &args), node(&redis, "15", &args));
    let (mut watcher, _) = signed_in(&a, &token("watcher", 600, None));
    let (mut friend, _) = signed_in(&b, &token("friend", 600, None));
    wait_metric(&a, "chatloop_cluster_remote_users", 1.0);
    // henry's token lasts two seconds (whole seconds: one could have a millisecond left at the
    // upgrade): closed 4401 at exp + 1 s on A, and held.
    let (mut henry, w) = signed_in(&a, &token("henry", 2, None));
    let first_exp = w["exp"].as_u64().unwrap();
    let resume = w["resume"].as_str().unwrap().to_string();
    wait_metric(&b, "chatloop_cluster_remote_users", 2.0);
    henry.send(&json!({"join": "dev"}));
    let dev = henry.next_of("joined");
    friend.send(&json!({"join": "dev"}));
    friend.next_of("joined");
    wait_room_size(&mut watcher, "dev", 2);
    let e = henry.next_of("error");
    assert_eq!((e["code"].as_str(), e["reason"].as_str()), (Some("unauthorized"), Some("expired")), "{e}");
    assert_eq!(henry.close_code(), Some(4401));
    assert!(a.wait_log("reason=token_expired"), "{}", a.log());
    // While henry is away: room lines on B, and a private message.
    for i in 0..3 {
        friend.send(&json!({"room": "dev", "text": format!("dev {i}")}));
    }
    friend.send(&json!({"to": "henry", "text": "psst"}));
    friend.send(&json!({"text": "sent"}));
    let seen = until_text(&mut friend, "sent");
    assert!(seen.iter().all(|l| l["type"] != "error"), "kept for delivery, not refused: {seen:?}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Without a token the resume token alone is refused on B too.
    let mut bare = b.connect_path(&format!("/ws?resume={resume}"));
    assert_eq!(bare.next_of("error")["reason"], "missing");
    // Back on B with a fresh token: taken over, the welcome carries its exp.
    let fresh = token("henry", 600, None);
    let mut back = b.connect_path(&format!("/ws?token={fresh}&resume={resume}"));
    let w = back.next_of("welcome");
    assert_eq!((w["id"].as_str(), w["resumed"].as_bool()), (Some("henry"), Some(true)), "{w}");
    let exp = w["exp"].as_u64().unwrap_or_else(|| panic!("no exp in a take-over's welcome: {w}"));
    assert!(exp > first_exp + 500_000, "the fresh token's exp: {exp} vs {first_exp}");
    assert_eq!(until_text(&mut back, "psst").pop().unwrap()["to"], "henry");
    back.send(&json!({"join": "dev", "since": dev["seq"], "epoch": dev["epoch"]}));
    back.next_of("joined");
    let got = room_lines(&mut back, "dev", 3);
    let texts: Vec<&str> = got.iter().map(|l| l["text"].as_str().unwrap_or("(gap)")).collect();
    assert_eq!(texts, ["dev 0", "dev 1", "dev 2"]);
    // A refresh on B is answered as on any node.
    back.send(&json!({"token": token("henry", 900, None), "cid": "r"}));
    let t = back.next_of("token");
    assert!(t["exp"].as_u64().unwrap() > exp, "{t}");
    // Nobody saw henry leave or join, on either node.
    watcher.send(&json!({"text": "marker a"}));
    friend.send(&json!({"text": "marker b"}));
    for (c, marker) in [(&mut watcher, "marker b"), (&mut friend, "marker a")] {
        let seen = until_text(c, marker);
        let bad: Vec<&Value> = seen
            .iter()
            .filter(|l| (l["type"] == "join" || l["type"] == "leave") && l["id"] == "henry")
            .collect();
        assert!(bad.is_empty(), "{bad:?}");
    }
    assert_eq!(b.metrics()["chatloop_resumes_total"], 1.0);
}

#[test]
fn a_take_over_with_a_narrower_rooms_claim_leaves_the_rooms_it_no_longer_allows() {
    let Some(redis) = Redis::start() else { return };
    let args = ["--rate-limit", "0", "--auth", "token", "--auth-key", SECRET];
    let (a, b) = (node(&redis, "15", &args), node(&redis, "15", &args));
    let (mut friend, _) = signed_in(&b, &token("friend", 600, None));
    let (mut judy, w) = signed_in(&a, &token("judy", 600, None));
    let resume = w["resume"].as_str().unwrap().to_string();
    wait_metric(&b, "chatloop_cluster_remote_users", 1.0);
    for room in ["secret", "team-a"] {
        judy.send(&json!({"join": room}));
        judy.next_of("joined");
        friend.send(&json!({"join": room}));
        friend.next_of("joined");
    }
    wait_room_size(&mut friend, "secret", 2);
    drop(judy); // lost, no close frame
    assert!(a.wait_log("reason=lost"), "{}", a.log());
    let tok = token("judy", 600, Some(&["team-*"]));
    let mut back = b.connect_path(&format!("/ws?token={tok}&resume={resume}"));
    let w = back.next_of("welcome");
    assert_eq!(w["resumed"], true, "{w}");
    assert!(w["exp"].is_u64(), "{w}");
    let mut left = vec![back.next_of("left"), back.next_of("left")];
    left.sort_by_key(|l| l["room"].as_str().unwrap().to_string());
    assert_eq!(
        left,
        [
            json!({"type": "left", "room": "lobby", "reason": "forbidden"}),
            json!({"type": "left", "room": "secret", "reason": "forbidden"})
        ]
    );
    wait_room_size(&mut friend, "secret", 1);
    wait_room_size(&mut friend, "team-a", 2);
    back.send(&json!({"room": "team-a", "text": "still in team-a"}));
    until_text(&mut friend, "still in team-a");
}
