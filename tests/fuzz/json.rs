//! JSON: client frames through `protocol::decode`; generators (shared with the chat
//! properties), then the decoding properties.

use crate::corpus::JSON_SEEDS;
use crate::mutation::{mutate, mutations, mutations_or_none};
use crate::{Check, config};
use chatloop::chat::Limits;
use chatloop::protocol::{self, Incoming, Replay};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::Value;
use std::borrow::Cow;

// ---------------------------------------------------------------------------------------------
// JSON and chat: generators

/// JSON string content that is valid: plain characters and correct escapes.
fn valid_string_body() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[ !#-\\[\\]-~]{1,6}",
        2 => select(vec![
            "\\n", "\\t", "\\r", "\\u0000", "\\u00e9", "\\u2028", "\\ud83d\\ude00", "\\\"", "\\\\", "\\/",
            "\u{2028}", "\u{a0}", "\u{3000}", "é", "😀", " ", "  ",
        ])
        .prop_map(String::from),
        1 => "[^\"\\\\\\p{C}]{1,3}",
    ];
    vec(piece, 0..8).prop_map(|ps| ps.concat())
}

/// JSON string content, escapes valid and not (lone surrogates, bad escapes, raw controls).
fn string_body() -> impl Strategy<Value = String> {
    let broken = select(vec![
        "\\ud800",
        "\\udc00",
        "\\ud800\\u0041",
        "\\x41",
        "\\u12",
        "\\U0041",
        "\\",
        "\t",
        "\n",
        "\u{1}",
        "\"",
    ]);
    prop_oneof![
        4 => valid_string_body(),
        1 => (valid_string_body(), broken, valid_string_body()).prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
}

fn json_leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => valid_string_body().prop_map(|s| format!("\"{s}\"")),
        1 => string_body().prop_map(|s| format!("\"{s}\"")),
        2 => select(vec![
            "null", "true", "false", "0", "-1", "1.5e-3", "1e999", "18446744073709551616", "\"bob\"", "\"BOB\"",
            "\"alice\"", "\"zed\"", "\"\"", "\" bob\"", "\"dev\"", "\"lobby\"",
        ])
        .prop_map(String::from),
        1 => select(vec!["NaN", "01", "-", "tru", "nul", "+1", ".5", "0x10", "Infinity"]).prop_map(String::from),
    ]
}

/// The keys `decode` reads, spelled plainly.
const KEYS: &[&str] = &["\"text\"", "\"to\"", "\"room\"", "\"join\"", "\"leave\"", "\"rooms\""];

/// A key other than a plain one of ours (some still mean one of ours once unescaped).
fn other_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "\"from\"", "\"type\"", "\"ts\"", "\"Text\"", "\"TO\"", "\"t\\u0065xt\"", "\"to \"", "\"\"", "text",
            "'text'", "\"Room\"", "\"r\\u006fom\"", "\"JOIN\"", "\"j\\u006fin\"", "\"room \"", "\"Rooms\"",
            "\"id\"", "\"users\"", "\"last\"", "\"since\"", "\"epoch\"", "\"cid\"",
        ])
        .prop_map(String::from),
        1 => string_body().prop_map(|s| format!("\"{s}\"")),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![2 => select(KEYS).prop_map(String::from), 1 => other_key()]
}

fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        16 => Just(""),
        4 => Just(" "),
        2 => select(vec!["\n", "\t", "\r\n"]),
        1 => select(vec!["\u{a0}", "\u{feff}", "\u{3000}"]),
    ]
}

fn json_value() -> impl Strategy<Value = String> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|vs| format!("[{}]", vs.join(","))),
            vec((json_key(), inner), 0..4).prop_map(|kvs| {
                let fields: Vec<String> = kvs.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// Room names as a client might send them: valid in any case, the edges of the length rule,
/// characters outside the set, and an escape that spells `dev` once unescaped.
const ROOM_NAMES: &[&str] = &[
    "lobby",
    "LOBBY",
    "dev",
    "Dev",
    "d.e-v_9",
    "abcdefghijklmnopqrstuvwxyz012345", // 32: the longest valid name
    "",
    "bad room",
    "abcdefghijklmnopqrstuvwxyz0123456", // 33
    "lobby ",
    "dév",
    "d\\u0065v",
    "a/b",
];

/// The value of `room`, `join` or `leave`: mostly a name, sometimes not a string at all.
fn room_value() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => select(ROOM_NAMES).prop_map(|n| format!("\"{n}\"")),
        1 => Just("null".to_string()),
        1 => select(vec!["0", "1", "-1", "1.5", "[\"dev\"]", "{}", "true"]).prop_map(String::from),
        1 => json_leaf(),
    ]
}

/// The value of `rooms`: only `true` asks for the directory.
fn rooms_value() -> impl Strategy<Value = String> {
    select(vec!["true", "true", "false", "null", "1", "\"true\"", "[]"]).prop_map(String::from)
}

/// A well-formed request over a few room names (two of them the same room in another case)
/// and ids, so that sessions really join, leave, speak in and list rooms, and talk privately.
pub(crate) fn room_request() -> impl Strategy<Value = String> {
    let name = || select(vec!["lobby", "LOBBY", "dev", "Dev", "d.e-v_9", "ops", "bad room"]);
    let text = || select(vec!["hi", " ", "hello there"]);
    prop_oneof![
        3 => name().prop_map(|r| format!(r#"{{"join":"{r}"}}"#)),
        2 => name().prop_map(|r| format!(r#"{{"leave":"{r}"}}"#)),
        3 => (name(), text()).prop_map(|(r, t)| format!(r#"{{"room":"{r}","text":"{t}"}}"#)),
        1 => text().prop_map(|t| format!(r#"{{"text":"{t}"}}"#)),
        1 => (select(vec!["Bob", "b0b", "alice", "carol", "zed", "x"]), text())
            .prop_map(|(to, t)| format!(r#"{{"to":"{to}","text":"{t}"}}"#)),
        1 => Just(r#"{"rooms":true}"#.to_string()),
    ]
}

/// A client frame: mostly an object of roughly our shape, sometimes anything.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub(crate) text: String,
    /// Built without mutation from well-formed parts whose keys are all different once
    /// unescaped: such a frame decodes exactly when serde_json sees an object of our shape.
    pub(crate) clean: bool,
}

/// (key, value) pairs of one object.
type Fields = Vec<(String, String)>;

pub(crate) fn frame() -> impl Strategy<Value = Frame> {
    let quoted = |body: BoxedStrategy<String>| body.prop_map(|s| format!("\"{s}\"")).boxed();
    let text = prop_oneof![
        8 => quoted(valid_string_body().boxed()),
        1 => quoted(string_body().boxed()),
        1 => json_value(),
    ]
    .boxed();
    let to = prop_oneof![
        8 => select(vec!["Bob", "bob", "BOB", "alice", "carol", "zed", "", " bob", "d.e-f_9", "b\\u006fb"])
            .prop_map(|id| format!("\"{id}\"")),
        1 => quoted(valid_string_body().boxed()),
        1 => Just("null".to_string()),
        1 => json_leaf(),
    ]
    .boxed();
    let room = room_value().boxed();
    let kv = |k: &str, v: String| (format!("\"{k}\""), v);
    // Mostly the fields of one request, in the shape decode's rules allow; sometimes any mix
    // of our fields, so that mixed requests (`to` with `room`, `join` with `text`, ...) occur.
    let request: BoxedStrategy<Fields> = prop_oneof![
        5 => (text.clone(), prop::option::weighted(0.4, room.clone())).prop_map(move |(t, r)| {
            let mut f = vec![kv("text", t)];
            f.extend(r.map(|r| kv("room", r)));
            f
        }),
        3 => (to.clone(), text.clone()).prop_map(move |(to, t)| vec![kv("to", to), kv("text", t)]),
        2 => room.clone().prop_map(move |r| vec![kv("join", r)]),
        2 => room.clone().prop_map(move |r| vec![kv("leave", r)]),
        1 => rooms_value().prop_map(move |v| vec![kv("rooms", v)]),
        3 => (
            prop::option::weighted(0.6, text),
            prop::option::weighted(0.3, to),
            prop::option::weighted(0.3, room.clone()),
            prop::option::weighted(0.2, room.clone()),
            prop::option::weighted(0.2, room),
            prop::option::weighted(0.2, rooms_value()),
        )
            .prop_map(move |(t, to, r, j, l, rs)| {
                let mut f = Vec::new();
                f.extend(t.map(|v| kv("text", v)));
                f.extend(to.map(|v| kv("to", v)));
                f.extend(r.map(|v| kv("room", v)));
                f.extend(j.map(|v| kv("join", v)));
                f.extend(l.map(|v| kv("leave", v)));
                f.extend(rs.map(|v| kv("rooms", v)));
                f
            }),
    ]
    .boxed();
    // Extra fields mostly have other names; a repeated key of ours is a bad message.
    let extra_key = prop_oneof![6 => other_key(), 1 => json_key()];
    let extra = (extra_key, json_value());
    let fields = (request, vec(extra, 0..2), any::<Index>()).prop_map(|(mut fields, extras, rot)| {
        fields.extend(extras);
        let n = fields.len();
        fields.rotate_left(rot.index(n + 1) % n.max(1));
        fields
    });
    let spacing = vec((ws(), ws()), 6);
    let object = (fields, spacing, ws(), ws(), mutations_or_none(3)).prop_map(
        |(fields, spacing, lead, tail, muts)| {
            let parts: Vec<String> = fields
                .iter()
                .zip(spacing.iter().cycle())
                .map(|((k, v), (a, b))| format!("{a}{k}{b}:{a}{v}{b}"))
                .collect();
            let mut text = format!("{lead}{{{}}}{tail}", parts.join(",")).into_bytes();
            let keys: Vec<Option<String>> =
                fields.iter().map(|(k, _)| serde_json::from_str(k).ok()).collect();
            let unique = keys.iter().all(Option::is_some)
                && keys.iter().enumerate().all(|(i, k)| !keys[..i].contains(k));
            let clean = muts.is_empty() && unique;
            mutate(&mut text, &muts);
            Frame { text: String::from_utf8_lossy(&text).into_owned(), clean }
        },
    );
    let seeded = (select(JSON_SEEDS.clone()), mutations()).prop_map(|(mut b, muts)| {
        mutate(&mut b, &muts);
        Frame { text: String::from_utf8_lossy(&b).into_owned(), clean: false }
    });
    prop_oneof![
        12 => object,
        3 => room_request().prop_map(|text| Frame { text, clean: true }),
        2 => seeded,
        1 => json_value().prop_map(|text| Frame { text, clean: false }),
        1 => "(?s).{0,200}".prop_map(|text| Frame { text, clean: false }),
        1 => any::<String>().prop_map(|text| Frame { text, clean: false }),
    ]
}

/// Limits small enough that every one of them is reached now and then.
pub(crate) fn limits() -> impl Strategy<Value = Limits> {
    (
        prop_oneof![0..4usize, Just(256)],
        prop_oneof![1..12usize, Just(1000)],
        prop_oneof![1..5usize, Just(10_000)],
        prop_oneof![0..4usize, Just(32)],
    )
        .prop_map(|(presence_limit, max_text, max_rooms, max_rooms_per_user)| Limits {
            presence_limit,
            max_text,
            rate_limit: 20,
            max_rooms,
            max_rooms_per_user,
            ..Limits::default()
        })
}

// ---------------------------------------------------------------------------------------------
// JSON and chat: properties

/// What `decode` must return for an object serde_json has read, by the rules of
/// `protocol::decode`: each field of ours is absent or has its type (`null` is never
/// "absent"), and a frame asks for exactly one thing; a mix of two requests is None.
fn expected_incoming(o: &serde_json::Map<String, Value>) -> Option<Incoming<'_>> {
    let string = |k: &str| match o.get(k) {
        None => Some(None),
        Some(Value::String(s)) => Some(Some(Cow::Borrowed(s.as_str()))),
        Some(_) => None,
    };
    let (text, to, room, join, leave) =
        (string("text")?, string("to")?, string("room")?, string("join")?, string("leave")?);
    let rooms = match o.get("rooms") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return None,
    };
    // History fields: whole numbers that fit u64, and the epoch a string; only with a join.
    let number = |k: &str| match o.get(k) {
        None => Some(None),
        Some(v) => v.as_u64().map(Some),
    };
    let (last, since, epoch) = (number("last")?, number("since")?, string("epoch")?);
    let history = last.is_some() || since.is_some() || epoch.is_some();
    // A cid, on any request: a string of 1 to 64 characters.
    if string("cid")?.is_some_and(|c| !(1..=64).contains(&c.chars().count())) {
        return None;
    }
    Some(match (text, to, room, join, leave, rooms) {
        (Some(text), None, room, None, None, None) if !history => Incoming::Say { room, text },
        (Some(text), Some(to), None, None, None, None) if !history => Incoming::Private { to, text },
        (None, None, None, Some(r), None, None) => {
            let replay = match (last, since, epoch) {
                (None, None, None) => Replay::None,
                (Some(k), None, None) => Replay::Last(k),
                (None, Some(seq), Some(epoch)) => Replay::Since { seq, epoch },
                _ => return None,
            };
            Incoming::Join { room: r, replay }
        }
        (None, None, None, None, Some(r), None) if !history => Incoming::Leave(r),
        (None, None, None, None, None, Some(true)) if !history => Incoming::Rooms,
        _ => return None,
    })
}

/// `decode` agrees with serde_json's own reading of the frame, and takes objects only.
pub(crate) fn check_decode(frame: &str, clean: bool) -> Check {
    let value: Option<Value> = serde_json::from_str(frame).ok();
    let want = value.as_ref().and_then(Value::as_object).and_then(expected_incoming);
    match protocol::decode(frame).map(|(m, _)| m) {
        Some(m) => {
            // README: "Bad JSON, or an object of another shape, gets error bad_message".
            let object = frame.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{');
            prop_assert!(object, "decoded {m:?} from {frame:?}, which is not a JSON object");
            // serde_json's Value is stricter than skipping unknown fields (it refuses lone
            // surrogates, out-of-range numbers and deep nesting anywhere), and it keeps the
            // last of repeated keys where decode refuses them; when it reads the frame at
            // all, decode must have read the same request from it.
            if value.is_some() {
                prop_assert_eq!(Some(&m), want.as_ref(), "{:?}, read by serde_json as {:?}", frame, value);
            }
        }
        None if clean => prop_assert!(want.is_none(), "{frame:?} is {want:?} but did not decode"),
        None => {}
    }
    Ok(())
}

/// The room name rule, written apart from `protocol::room_name`: 1 to 32 of a-z 0-9 _ - .
/// in any case, stored in lowercase.
pub(crate) fn model_room_name(name: &str) -> Option<String> {
    let ok = (1..=32).contains(&name.chars().count())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    ok.then(|| name.to_ascii_lowercase())
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn json_decode_arbitrary(s in "(?s).{0,300}") {
        check_decode(&s, false)?;
    }

    #[test]
    fn json_decode_structured(f in frame()) {
        check_decode(&f.text, f.clean)?;
    }

    #[test]
    fn room_names(name in prop_oneof![select(ROOM_NAMES).prop_map(String::from), "[A-Za-z0-9_.\\- é/]{0,34}"]) {
        prop_assert_eq!(protocol::room_name(&name).map(|c| c.into_owned()), model_room_name(&name), "{:?}", name);
    }
}

/// Found by this fuzzer: serde's derive read `["bob","hi"]` as a private message by position.
#[test]
fn regression_decode_took_json_arrays() {
    for frame in
        [r#"["Bob","psst"]"#, r#"[null,"hi"]"#, r#" ["x"] "#, r#"["dev"]"#, r#"[null,null,null,"dev"]"#]
    {
        assert!(
            protocol::decode(frame).is_none(),
            "{frame:?} decodes: {:?}",
            protocol::decode(frame).map(|(m, _)| m)
        );
    }
}
