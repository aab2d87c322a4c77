//! The backend API: request heads through `http::parse`, `router::route` and `server::api::admit`
//! (the key and body rules), and complete requests (any method, path, query and body) through
//! `api::dispatch` against a chat with members. Nothing panics; every answer is one JSON body
//! whose status fits: 200 with an object, or an error `{"error":{"code","message"}}` with a
//! one-line message.

use crate::model::Rec;
use crate::{Check, config};
use chatloop::api::{self, Answer, Call, Cx};
use chatloop::chat::broker::Alone;
use chatloop::chat::{Chat, Limits};
use chatloop::http::{self, Parse, Status};
use chatloop::server::api::admit;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

const KEY: &[u8] = b"fuzz-key-0123456789";
const MAX: usize = 2048;

/// Heads built from parts a backend request has, some wrong.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let method = select(vec!["GET", "POST", "PUT", "HEAD", "DELETE", "get"]);
    let path = select(vec![
        "/api/publish",
        "/api/send",
        "/api/rooms",
        "/api/rooms/dev",
        "/api/history?room=dev",
        "/api/users/x",
        "/api/x",
        "/api",
    ]);
    let auth = select(vec![
        "Authorization: Bearer fuzz-key-0123456789\r\n",
        "Authorization: bearer fuzz-key-0123456789 \r\n",
        "Authorization: Bearer fuzz-key-012345678\r\n",
        "Authorization: Bearer fuzz-key-01234567890\r\n",
        "Authorization: Basic fuzz-key-0123456789\r\n",
        "Authorization: Bearer\r\n",
        "",
    ]);
    let kind = select(vec![
        "Content-Type: application/json\r\n",
        "Content-Type: APPLICATION/JSON; charset=utf-8\r\n",
        "Content-Type: text/plain\r\n",
        "",
    ]);
    let len = select(vec![
        "",
        "Content-Length: 0\r\n",
        "Content-Length: 10\r\n",
        "Content-Length: 2048\r\n",
        "Content-Length: 2049\r\n",
        "Content-Length: 99999999999999999999\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 1\r\nContent-Length: 1\r\n",
    ]);
    let te = select(vec!["", "", "Transfer-Encoding: chunked\r\n", "Transfer-Encoding: identity\r\n"]);
    (method, path, auth, kind, len, te).prop_map(|(m, p, a, k, l, t)| {
        format!("{m} {p} HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}{k}{l}{t}\r\n").into_bytes()
    })
}

/// The key, the body's framing: the verdict is one of the head statuses, and a body is
/// accepted only with the right key, a JSON type on a POST, and a length within the limit.
fn check_admit(raw: &[u8]) -> Check {
    let Parse::Done(req, _) = http::parse(raw) else { return Ok(()) };
    let right_key = req.authorization.as_deref().is_some_and(|a| {
        a.split_once(' ').is_some_and(|(s, k)| s.eq_ignore_ascii_case("bearer") && k.trim().as_bytes() == KEY)
    });
    match admit(&req, KEY, MAX) {
        Ok(n) => {
            prop_assert!(right_key, "admitted without the key: {:?}", String::from_utf8_lossy(raw));
            prop_assert!(req.method == "GET" || req.method == "POST");
            prop_assert!(n <= MAX && !req.chunked);
            prop_assert_eq!(n as u64, req.content_length.unwrap_or(0));
            if n > 0 {
                prop_assert_eq!(req.method.as_str(), "POST");
            }
        }
        Err(r) => {
            prop_assert!(matches!(r.status as u16, 400 | 401 | 405 | 411 | 413 | 415), "{r:?}");
            prop_assert_eq!(r.status == Status::Unauthorized, !right_key, "{:?}", r);
            prop_assert!(!r.why.is_empty() && !r.why.contains('\n'));
            let v: Value = serde_json::from_slice(&api::error_json(r.code, r.why)).unwrap();
            prop_assert_eq!(v["error"]["code"].as_str(), Some(r.code));
        }
    }
    Ok(())
}

/// One complete request: method, path, query, body.
fn call() -> impl Strategy<Value = (String, String, String, Vec<u8>)> {
    let method = select(vec!["GET", "POST", "PUT"]).prop_map(str::to_string);
    let path = prop_oneof![
        select(vec!["/api/publish", "/api/send", "/api/rooms", "/api/history", "/api/nope"])
            .prop_map(str::to_string),
        "/api/(rooms|users)/[a-zA-Z0-9%._ -]{0,40}",
    ];
    let query = prop_oneof![
        Just(String::new()),
        "(room|since|epoch|limit)=[a-z0-9%+-]{0,12}(&(room|since|epoch|limit)=[a-z0-9%+-]{0,12}){0,3}",
    ];
    let body = prop_oneof![
        vec(any::<u8>(), 0..64),
        "\\{\"(room|to)\":\"[a-zA-Z0-9 .]{0,40}\",\"text\":\"[^\"\\\\]{0,40}\"(,\"from\":\"[a-z0-9 ]{0,34}\")?\\}"
            .prop_map(String::into_bytes),
        "\\{\"room\":\"(dev|lobby|Dev)\",\"text\":\"[a-z]{0,8}\"\\}".prop_map(String::into_bytes),
        "\\{\"to\":\"(ann|bob|ANN|zed)\",\"text\":\"[a-z]{0,8}\"\\}".prop_map(String::into_bytes),
    ];
    (method, path, query, body)
}

fn check_dispatch(chat: &mut Chat, (method, path, query, body): &(String, String, String, Vec<u8>)) -> Check {
    let mut rec = Rec::default();
    let now = std::time::Instant::now();
    let c = Call { method, path, query, body, now, ts: 1_700_000_000_000 };
    let mut cx = Cx { chat, sink: &mut rec, broker: &mut Alone, token: 99, generation: 1, relay: Vec::new() };
    let answer = api::dispatch(&c, &mut cx);
    prop_assert!(cx.relay.is_empty(), "a single node relays nothing");
    let Answer::Json(status, body) = answer else {
        return Err(TestCaseError::fail("a single node never waits"));
    };
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))?;
    prop_assert!(v.is_object());
    if status == Status::Ok {
        prop_assert!(v.get("error").is_none(), "{}", v);
    } else {
        let m = v["error"]["message"].as_str().unwrap_or_default();
        prop_assert!(v["error"]["code"].is_string() && !m.is_empty() && !m.contains('\n'), "{v}");
    }
    // Whatever went to members is one JSON line each, system lines marked.
    for (_, line) in &rec.0 {
        let l: Value = serde_json::from_slice(line).map_err(|e| TestCaseError::fail(format!("line: {e}")))?;
        if l["type"] == "message" && path == "/api/publish" {
            prop_assert_eq!(&l["system"], &Value::Bool(true));
        }
    }
    Ok(())
}

use proptest::test_runner::TestCaseError;

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn api_heads_get_a_verdict(raw in prop_oneof![head(), vec(any::<u8>(), 0..300)]) {
        check_admit(&raw)?;
    }

    #[test]
    fn api_requests_get_one_json_answer(calls in vec(call(), 1..24)) {
        let mut chat = Chat::new(Limits { max_rooms: 4, history: 3, ..Limits::default() });
        let mut rec = Rec::default();
        for (i, id) in ["ann", "bob"].iter().enumerate() {
            chat.join(id, i, &[0; 16], None, 0, std::time::Instant::now(), &mut rec).unwrap();
        }
        for c in &calls {
            check_dispatch(&mut chat, c)?;
        }
    }
}
