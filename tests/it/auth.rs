//! `--auth token` (issue 24) against the real binary: every refusal reason at the upgrade
//! (error `unauthorized` then close 4401), the classic attacks (`alg: none`, algorithm
//! confusion, a tampered payload, another's token with `?id=`), the `rooms` claim on joins and
//! in the directory, a refresh, expiry at `exp` + `--auth-grace` and the lossless resume
//! after it, open mode ignoring tokens, and arbitrary bytes where a token goes.

use crate::util::{Client, Frame, Server};
use chatloop::auth::{MintRequest, SigningKey, mint, unix_ms};
use data_encoding::BASE64URL_NOPAD;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime};

pub(crate) const SECRET: &str = "src/auth/testdata/hs256.secret";
const P256_PUB: &str = "src/auth/testdata/p256.pub";
const P256_KEY: &str = "src/auth/testdata/p256.key";

fn key(path: &str) -> SigningKey {
    SigningKey::parse(&std::fs::read(path).unwrap()).unwrap()
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// A token for `sub`, valid for `ttl` (or already expired for a zero... see `expired`).
pub(crate) fn token(sub: &str, ttl: u64, rooms: Option<&[&str]>) -> String {
    let rooms: Option<Vec<String>> = rooms.map(|r| r.iter().map(|s| s.to_string()).collect());
    let req =
        MintRequest { sub, ttl: Duration::from_secs(ttl), rooms: rooms.as_deref(), ..Default::default() };
    mint(&key(SECRET), &req, now_ms()).unwrap()
}

/// An HS256 token over arbitrary claims (for the reasons `mint` refuses to make).
fn forge(header: &Value, claims: &Value, secret_file: &str) -> String {
    // Any file's bytes as an HMAC secret: a PEM public key too (the confusion attack).
    let bytes = std::fs::read(secret_file).unwrap();
    let secret = SigningKey::Hmac(bytes.trim_ascii_end().to_vec());
    let mut t = BASE64URL_NOPAD.encode(header.to_string().as_bytes());
    t.push('.');
    t.push_str(&BASE64URL_NOPAD.encode(claims.to_string().as_bytes()));
    let sig = secret.sign(chatloop::auth::Alg::parse("HS256").unwrap(), t.as_bytes()).unwrap();
    t.push('.');
    t.push_str(&BASE64URL_NOPAD.encode(&sig));
    t
}

fn server(extra: &[&str]) -> Server {
    let mut args = vec!["--auth", "token", "--auth-key", SECRET];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Connects with `path` and expects the refusal: `unauthorized` with `reason`, then 4401.
fn refused(s: &Server, path: &str, reason: &str) {
    let mut c = s.connect_path(path);
    let e = c.next_line();
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unauthorized")),
        "{path}: {e}"
    );
    assert_eq!(e["reason"], reason, "{path}: {e}");
    assert!(e["message"].is_string());
    assert_eq!(c.close_code(), Some(4401), "{path}");
}

fn signed_in(s: &Server, tok: &str) -> (Client, Value) {
    let mut c = s.connect_path(&format!("/ws?token={tok}"));
    let w = c.next_line();
    assert_eq!(w["type"], "welcome", "{w}");
    (c, w)
}

#[test]
fn every_refusal_reason_at_the_upgrade_is_told_closed_4401_and_counted() {
    let s = server(&["--auth-audience", "chat", "--auth-issuer", "us", "--auth-leeway", "0"]);
    let now = now_ms() / 1000;
    let h = json!({"alg": "HS256", "typ": "JWT"});
    let good = |extra: Value| {
        let mut c = json!({"sub": "alice", "exp": now + 600, "aud": "chat", "iss": "us"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    refused(&s, "/ws", "missing");
    refused(&s, "/ws?token=", "missing");
    refused(&s, "/ws?token=abc.def", "malformed");
    refused(&s, "/ws?token=%ZZ", "missing");
    let other = std::env::temp_dir().join(format!("chatloop-other-secret-{}", std::process::id()));
    std::fs::write(&other, "a different secret, 32 bytes or more, for nothing").unwrap();
    let wrong_key = forge(&h, &good(json!({})), other.to_str().unwrap());
    refused(&s, &format!("/ws?token={wrong_key}"), "bad_signature");
    refused(&s, &format!("/ws?token={}", forge(&h, &good(json!({"exp": now - 60})), SECRET)), "expired");
    refused(
        &s,
        &format!("/ws?token={}", forge(&h, &good(json!({"nbf": now + 600})), SECRET)),
        "not_yet_valid",
    );
    refused(&s, &format!("/ws?token={}", forge(&h, &good(json!({"aud": "else"})), SECRET)), "wrong_audience");
    refused(&s, &format!("/ws?token={}", forge(&h, &good(json!({"iss": "them"})), SECRET)), "wrong_issuer");
    refused(&s, &format!("/ws?token={}", forge(&h, &good(json!({"sub": "a b"})), SECRET)), "bad_sub");
    // The same valid token works, by query or header.
    let ok = forge(&h, &good(json!({})), SECRET);
    let (_a, w) = signed_in(&s, &ok);
    assert_eq!(w["id"], "alice");
    let m = s.metrics();
    for r in [
        "missing",
        "malformed",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "bad_sub",
    ] {
        assert!(m[&format!("chatloop_unauthorized_total{{reason=\"{r}\"}}")] >= 1.0, "{r}");
    }
    assert!(m["chatloop_errors_sent_total{code=\"unauthorized\"}"] >= 9.0);
    let log = s.log();
    assert!(
        !log.contains(&ok) && !log.contains(&wrong_key) && !log.contains("token="),
        "a token in the log:\n{log}"
    );
}

#[test]
fn the_authorization_header_carries_a_token_too() {
    let s = server(&[]);
    let tok = token("bob", 600, None);
    let sock = TcpStream::connect(s.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{}/ws", s.addr)).unwrap();
    req.headers_mut().insert("Authorization", format!("Bearer {tok}").parse().unwrap());
    let (ws, _) = tungstenite::client::client(req, sock).unwrap();
    let mut c = Client::from_ws(ws);
    let w = c.next_line();
    assert_eq!((w["type"].as_str(), w["id"].as_str()), (Some("welcome"), Some("bob")), "{w}");
    assert!(w["exp"].as_u64().unwrap() > now_ms(), "{w}");
    assert!(!s.log().contains(&tok));
}

#[test]
fn alg_none_algorithm_confusion_a_tampered_payload_and_another_id_are_refused() {
    // An EC key only: an HS256 token signed with its PEM text as the secret is the classic
    // confusion attack.
    let s = Server::start(&["--auth", "token", "--auth-key", P256_PUB]);
    let now = now_ms() / 1000;
    let claims = json!({"sub": "alice", "exp": now + 600});
    let unsigned = format!(
        "{}.{}.",
        BASE64URL_NOPAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        BASE64URL_NOPAD.encode(claims.to_string().as_bytes())
    );
    refused(&s, &format!("/ws?token={unsigned}"), "bad_signature");
    let confused = forge(&json!({"alg": "HS256"}), &claims, P256_PUB);
    refused(&s, &format!("/ws?token={confused}"), "bad_signature");
    let es = mint(
        &key(P256_KEY),
        &MintRequest { sub: "alice", ttl: Duration::from_secs(600), ..Default::default() },
        now_ms(),
    )
    .unwrap();
    // Tampered: the payload says admin, the signature is alice's.
    let parts: Vec<&str> = es.split('.').collect();
    let admin = json!({"sub": "admin", "exp": now + 600});
    let tampered =
        format!("{}.{}.{}", parts[0], BASE64URL_NOPAD.encode(admin.to_string().as_bytes()), parts[2]);
    refused(&s, &format!("/ws?token={tampered}"), "bad_signature");
    // alice's token with ?id=bob; ?id=ALICE is alice by the id fold.
    refused(&s, &format!("/ws?id=bob&token={es}"), "bad_sub");
    let mut c = s.connect_path(&format!("/ws?id=ALICE&token={es}"));
    let w = c.next_line();
    assert_eq!((w["type"].as_str(), w["id"].as_str()), (Some("welcome"), Some("alice")), "{w}");
}

#[test]
fn rooms_claim_limits_the_lobby_joins_and_the_directory() {
    let s = server(&[]);
    let (mut open, _) = signed_in(&s, &token("carol", 600, None));
    open.send(&json!({"join": "secret-plans"}));
    assert_eq!(open.next_of("joined")["room"], "secret-plans");
    open.send(&json!({"join": "team-a"}));
    assert_eq!(open.next_of("joined")["room"], "team-a");
    let (mut dave, w) = signed_in(&s, &token("dave", 600, Some(&["lobby", "team-*"])));
    assert!(w["users"].as_array().unwrap().iter().any(|u| u == "dave"), "{w}");
    dave.send(&json!({"join": "Secret-Plans"}));
    let e = dave.next_line();
    assert_eq!((e["code"].as_str(), e["room"].as_str()), (Some("forbidden"), Some("secret-plans")), "{e}");
    dave.send(&json!({"rooms": true}));
    let d = dave.next_of("rooms");
    let names: Vec<&str> =
        d["rooms"].as_array().unwrap().iter().map(|r| r["room"].as_str().unwrap()).collect();
    assert!(names.contains(&"team-a") && names.contains(&"lobby") && !names.contains(&"secret-plans"), "{d}");
    assert_eq!(d["total"], 2, "{d}");
    dave.send(&json!({"join": "team-a"}));
    assert_eq!(dave.next_of("joined")["room"], "team-a");
    // No lobby in the claim: not put there, and the welcome lists nobody in it.
    let (mut erin, w) = signed_in(&s, &token("erin", 600, Some(&["team-*"])));
    assert_eq!((w["users"].as_array().unwrap().len(), w["total"].as_u64()), (0, Some(0)), "{w}");
    erin.send(&json!({"text": "hi lobby"}));
    assert_eq!(erin.next_line()["code"], "not_in_room");
    erin.send(&json!({"join": "lobby"}));
    assert_eq!(erin.next_line()["code"], "forbidden");
    assert!(s.metrics()["chatloop_errors_sent_total{code=\"forbidden\"}"] >= 2.0);
}

#[test]
fn a_refresh_with_the_same_sub_extends_and_another_sub_is_refused() {
    let s = server(&[]);
    let (mut c, w) = signed_in(&s, &token("frank", 60, None));
    let exp = w["exp"].as_u64().unwrap();
    c.send(&json!({"token": token("grace", 600, None)}));
    let e = c.next_line();
    assert_eq!((e["code"].as_str(), e["reason"].as_str()), (Some("unauthorized"), Some("bad_sub")), "{e}");
    c.send(&json!({"token": "garbage", "cid": "r1"}));
    let e = c.next_line();
    assert_eq!((e["reason"].as_str(), e["cid"].as_str()), (Some("malformed"), Some("r1")), "{e}");
    c.send(&json!({"token": token("FRANK", 600, None)}));
    let t = c.next_line();
    assert_eq!(t["type"], "token", "{t}");
    assert!(t["exp"].as_u64().unwrap() > exp + 500_000, "{t}");
    // Still open and chatting.
    c.send(&json!({"text": "still here"}));
    assert_eq!(c.next_of("message")["text"], "still here");
}

#[test]
fn an_expired_session_closes_at_exp_plus_grace_lost_not_left_and_resumes_losslessly() {
    let s = server(&["--auth-grace", "1", "--auth-leeway", "0"]);
    let (mut watcher, _) = signed_in(&s, &token("watcher", 600, None));
    // Two seconds: `exp` is whole seconds, so a one-second token could have a millisecond
    // left when the upgrade is checked (a refused upgrade, seen once in CI).
    let (mut c, w) = signed_in(&s, &token("henry", 2, None));
    let exp = w["exp"].as_u64().unwrap();
    let resume = w["resume"].as_str().unwrap().to_string();
    let started = Instant::now();
    let e = c.next_line();
    assert_eq!((e["code"].as_str(), e["reason"].as_str()), (Some("unauthorized"), Some("expired")), "{e}");
    assert_eq!(c.close_code(), Some(4401));
    let closed_at = now_ms();
    assert!(closed_at + 50 >= exp + 1000, "closed before exp + grace: {closed_at} vs {exp}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(c);
    // While henry is away, a message in the lobby and a private one.
    watcher.send(&json!({"text": "while you were out"}));
    let sent = watcher.next_of("message");
    watcher.send(&json!({"to": "henry", "text": "psst"}));
    // Back with a fresh token and the resume token: nothing missed, nobody saw a leave.
    let tok = token("henry", 600, None);
    let mut back = s.connect_path(&format!("/ws?token={tok}&resume={resume}"));
    let w = back.next_line();
    assert_eq!((w["type"].as_str(), w["resumed"].as_bool()), (Some("welcome"), Some(true)), "{w}");
    assert_eq!(back.next_of("message")["text"], "psst");
    back.send(&json!({"join": "lobby", "last": 5}));
    let mut saw = false;
    for _ in 0..8 {
        let l = back.next_any();
        if l["text"] == "while you were out" && l["seq"] == sent["seq"] {
            saw = true;
            break;
        }
    }
    assert!(saw, "the lobby message missed");
    let m = s.metrics();
    assert_eq!(m["chatloop_disconnects_total{reason=\"token_expired\"}"], 1.0);
    assert_eq!(m["chatloop_resumes_total"], 1.0);
    let lines = watcher_lines(&mut watcher);
    assert!(!lines.iter().any(|l| l["type"] == "leave"), "a leave was seen: {lines:?}");
    // A resume without a valid token is refused like any upgrade.
    refused(&s, &format!("/ws?resume={}", w["resume"].as_str().unwrap()), "missing");
}

#[test]
fn a_narrower_rooms_claim_on_refresh_or_resume_leaves_the_rooms_it_no_longer_allows() {
    let s = server(&[]);
    let (mut ivan, _) = signed_in(&s, &token("ivan", 600, None));
    let (mut carol, _) = signed_in(&s, &token("carol", 600, None));
    for c in [&mut ivan, &mut carol] {
        for room in ["secret", "team-a"] {
            c.send(&json!({"join": room}));
            assert_eq!(c.next_of("joined")["room"], room);
        }
    }
    // A refresh whose claim drops `secret`: answered, then told it left, with the reason.
    carol.send(&json!({"token": token("carol", 600, Some(&["lobby", "team-*"])), "cid": "t1"}));
    let t = carol.next_line();
    assert_eq!((t["type"].as_str(), t["cid"].as_str()), (Some("token"), Some("t1")), "{t}");
    let l = carol.next_line();
    assert_eq!(l, json!({"type": "left", "room": "secret", "reason": "forbidden"}));
    let seen = ivan.next_of("leave");
    assert_eq!((seen["room"].as_str(), seen["id"].as_str()), (Some("secret"), Some("carol")), "{seen}");
    carol.send(&json!({"text": "still?", "room": "secret"}));
    assert_eq!(carol.next_line()["code"], "not_in_room");
    carol.send(&json!({"text": "team talk", "room": "team-a"}));
    assert_eq!(carol.next_of("message")["text"], "team talk");

    // A resume with a fresh token that allows only team-*: the lobby and secret are left.
    let (mut judy, w) = signed_in(&s, &token("judy", 600, None));
    let resume = w["resume"].as_str().unwrap().to_string();
    judy.send(&json!({"join": "secret"}));
    assert_eq!(judy.next_of("joined")["room"], "secret");
    drop(judy); // gone without a close: lost, held for a resume
    assert!(s.wait_log("session closed id=judy"), "{}", s.log());
    let tok = token("judy", 600, Some(&["team-*"]));
    let mut back = s.connect_path(&format!("/ws?token={tok}&resume={resume}"));
    let w = back.next_line();
    assert_eq!((w["type"].as_str(), w["resumed"].as_bool()), (Some("welcome"), Some(true)), "{w}");
    let mut left: Vec<Value> = vec![back.next_line(), back.next_line()];
    left.sort_by_key(|l| l["room"].as_str().unwrap().to_string());
    assert_eq!(
        left,
        vec![
            json!({"type": "left", "room": "lobby", "reason": "forbidden"}),
            json!({"type": "left", "room": "secret", "reason": "forbidden"})
        ]
    );
    let mut rooms_left: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rooms_left.len() < 2 && Instant::now() < deadline {
        let l = ivan.next_any();
        if l["type"] == "leave" && l["id"] == "judy" {
            rooms_left.push(l["room"].as_str().unwrap().to_string());
        }
    }
    rooms_left.sort();
    assert_eq!(rooms_left, ["lobby", "secret"]);
    back.send(&json!({"join": "team-a"}));
    assert_eq!(back.next_of("joined")["room"], "team-a");
}

#[test]
fn two_authorization_headers_are_a_400_in_either_mode_and_never_logged() {
    let tok = token("alice", 600, None);
    for s in [server(&[]), Server::start(&[])] {
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Authorization: Bearer {tok}\r\nAuthorization: Bearer other\r\n\r\n",
            s.addr
        );
        let r = s.raw(head.as_bytes());
        assert!(r.starts_with("HTTP/1.1 400") && r.contains("duplicate Authorization header"), "{r}");
        // The page too: the header is one value wherever it is sent.
        let page =
            format!("GET / HTTP/1.1\r\nHost: {}\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n", s.addr);
        assert!(s.raw(page.as_bytes()).starts_with("HTTP/1.1 400"));
        assert!(!s.log().contains(&tok), "a token in the log");
    }
}

fn watcher_lines(c: &mut Client) -> Vec<Value> {
    c.ws.get_mut().set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut out = Vec::new();
    while let Ok(tungstenite::Message::Text(t)) = c.ws.read() {
        out.extend(t.split('\n').map(|l| serde_json::from_str::<Value>(l).unwrap()));
    }
    out
}

#[test]
fn open_mode_ignores_tokens_entirely() {
    let s = Server::start(&[]);
    let tok = token("alice", 600, Some(&["team-*"]));
    let mut c = s.connect_path(&format!("/ws?id=bob&token={tok}"));
    let w = c.next_line();
    assert_eq!(w["id"], "bob", "{w}");
    assert!(w.get("exp").is_none(), "{w}");
    c.send(&json!({"join": "secret"}));
    assert_eq!(c.next_of("joined")["room"], "secret");
    c.send(&json!({"token": tok}));
    assert_eq!(c.next_line()["code"], "bad_message");
}

/// A tiny xorshift, so the cases are the same on every run.
fn rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn arbitrary_bytes_as_a_token_never_crash_or_stall_the_loop() {
    let s = server(&[]);
    let (mut watcher, _) = signed_in(&s, &token("watcher", 600, None));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let valid = token("x", 600, None);
    for i in 0..300 {
        let len = (rand(&mut seed) % 300) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rand(&mut seed) as u8).collect();
        if i % 3 == 0 {
            // Near misses: a valid token with a few bytes changed.
            bytes = valid.clone().into_bytes();
            for _ in 0..3 {
                let at = (rand(&mut seed) as usize) % bytes.len();
                bytes[at] = rand(&mut seed) as u8;
            }
        }
        let printable: String =
            bytes.iter().map(|b| if (0x21..0x7f).contains(b) { *b as char } else { '%' }).collect();
        let (target, header) = if i % 2 == 0 {
            (format!("/ws?token={}", printable.replace(['#', ' '], "%")), String::new())
        } else {
            let h: String =
                bytes.iter().map(|b| if (0x20..0x7f).contains(b) { *b as char } else { 'A' }).collect();
            ("/ws".to_string(), format!("Authorization: Bearer {h}\r\n"))
        };
        let mut sock = TcpStream::connect(s.addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{header}\r\n",
            s.addr
        );
        sock.write_all(req.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Until the server closes: a 400 for a target it cannot parse, else 101 + 4401.
        while let Ok(n) = sock.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            // 101, the error and the close 4401 (0x1131): done (not waiting out its grace).
            if got
                .windows(3)
                .any(|w| w == [0x88, 0x0e, 0x11] || w == [0x88, 0x0c, 0x11] || w == [0x88, 0x09, 0x11])
                || got.windows(2).any(|w| w == [0x11, 0x31])
            {
                break;
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 "), "case {i}: {text}");
        if text.starts_with("HTTP/1.1 101") {
            assert!(text.contains("unauthorized"), "case {i}: {text}");
        }
    }
    // The loop still answers at once.
    let t = Instant::now();
    watcher.send(&json!({"text": "alive"}));
    assert_eq!(watcher.next_of("message")["text"], "alive");
    assert!(t.elapsed() < Duration::from_secs(1));
    let (_c, w) = signed_in(&s, &token("last", 600, None));
    assert_eq!(w["id"], "last");
    let _ = Frame::Lines(Vec::new());
}

#[test]
fn config_tells_the_page_the_mode_and_where_tokens_come_from() {
    let body = |s: &Server| {
        let r = s.get("/config");
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("application/json"), "{r}");
        serde_json::from_str::<Value>(r.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap()
    };
    assert_eq!(body(&Server::start(&[])), json!({"auth": "open", "token_url": null}));
    let s = server(&["--token-url", "https://example.test/token"]);
    assert_eq!(body(&s), json!({"auth": "token", "token_url": "https://example.test/token"}));
    // The page may fetch from the token URL's origin (CSP connect-src), and from nowhere else.
    let csp = |s: &Server| {
        let r = s.get("/");
        let line = r.lines().find(|l| l.starts_with("Content-Security-Policy:")).unwrap_or_default();
        line.split(';').find(|d| d.trim().starts_with("connect-src")).unwrap_or_default().trim().to_string()
    };
    let here = s.addr;
    assert_eq!(csp(&s), format!("connect-src 'self' ws://{here} wss://{here} https://example.test"));
    let same = server(&["--token-url", "/auth/token"]);
    let here = same.addr;
    assert_eq!(csp(&same), format!("connect-src 'self' ws://{here} wss://{here}"));
    // An open server reads no token: a repeated one is not its concern.
    let open = Server::start(&[]);
    let mut c = open.connect_path("/ws?id=bob&token=a&token=b");
    assert_eq!(c.next_line()["id"], "bob");
}
