//! The wire format's unit tests: each line and request, both directions.

use super::*;

/// The request of a frame, without its cid.
fn req(frame: &str) -> Option<Incoming<'_>> {
    decode(frame).map(|(r, _)| r)
}

#[test]
fn a_cid_is_taken_from_any_request_and_spliced_into_lines_for_its_sender() {
    assert_eq!(decode(r#"{"text":"hi","cid":"m-1"}"#).unwrap().1.as_deref(), Some("m-1"));
    assert_eq!(decode(r#"{"join":"dev","cid":"j"}"#).unwrap().1.as_deref(), Some("j"));
    for bad in [r#"{"text":"hi","cid":""}"#, r#"{"text":"hi","cid":5}"#, r#"{"text":"hi","cid":null}"#] {
        assert!(decode(bad).is_none(), "{bad}");
    }
    assert!(decode(&format!(r#"{{"text":"hi","cid":"{}"}}"#, "é".repeat(64))).is_some(), "64 characters");
    assert!(decode(&format!(r#"{{"text":"hi","cid":"{}"}}"#, "x".repeat(65))).is_none());
    assert_eq!(
        &with_cid(&error(ErrorCode::Empty, None), "a\"b")[..],
        &br#"{"type":"error","cid":"a\"b","code":"empty","message":"the message is empty"}"#[..]
    );
    assert_eq!(&with_cid(b"{}", "x")[..], br#"{"cid":"x"}"#);
    let named = error_about(ErrorCode::Undelivered, Some("bob"), Some("L1"));
    assert!(has_cid(&named) && named.starts_with(br#"{"type":"error","cid":"L1","code":"undelivered""#));
    assert!(!has_cid(&error(ErrorCode::Undelivered, Some("bob"))));
    assert!(!has_cid(br#"{"type":"message","text":"\"cid\":1"}"#), "in a text it is escaped");
}

#[test]
fn decodes_every_request_and_ignores_forged_from() {
    use std::borrow::Cow;
    let say = |room: Option<&'static str>, text: &'static str| Incoming::Say {
        room: room.map(Cow::Borrowed),
        text: Cow::Borrowed(text),
    };
    assert_eq!(req(r#"{"text":"hi","from":"mallory"}"#), Some(say(None, "hi")));
    assert_eq!(req(r#"{"room":"Dev","text":"hi"}"#), Some(say(Some("Dev"), "hi")));
    assert_eq!(
        req(r#"{"to":"bob","text":"psst"}"#),
        Some(Incoming::Private { to: "bob".into(), text: "psst".into() })
    );
    assert_eq!(req(r#"{"join":"dev"}"#), Some(Incoming::Join { room: "dev".into(), replay: Replay::None }));
    assert_eq!(
        req(r#"{"join":"dev","last":50}"#),
        Some(Incoming::Join { room: "dev".into(), replay: Replay::Last(50) })
    );
    assert_eq!(
        req(r#"{"join":"dev","since":7,"epoch":"AbCd"}"#),
        Some(Incoming::Join { room: "dev".into(), replay: Replay::Since { seq: 7, epoch: "AbCd".into() } })
    );
    assert_eq!(req(r#"{"leave":"lobby","type":"x"}"#), Some(Incoming::Leave("lobby".into())));
    assert_eq!(req(r#"{"rooms":true}"#), Some(Incoming::Rooms));
    // Escapes force an owned Cow; the decoded text must still be right.
    let Some(Incoming::Say { text, .. }) = req(r#"{"text":"a\nb\u00e9"}"#) else { panic!() };
    assert_eq!(text, "a\nbé");
}

#[test]
fn room_names_are_folded_to_lowercase_and_checked() {
    assert_eq!(room_name("Dev.Team-1_x").as_deref(), Some("dev.team-1_x"));
    assert_eq!(room_name(&"a".repeat(32)).as_deref(), Some(&*"a".repeat(32)));
    for bad in ["", &"a".repeat(33), "a b", "é", "a/b", "<x>"] {
        assert_eq!(room_name(bad), None, "{bad:?}");
    }
}

#[test]
fn rejects_other_shapes() {
    for bad in [
        "",
        "null",
        "[]",
        "\"hi\"",
        "{}",
        r#"{"text":5}"#,
        r#"{"to":5,"text":"x"}"#,
        r#"{"to":null,"text":"x"}"#,
        r#"{"to":["bob"],"text":"x"}"#,
        r#"{"to":{},"text":"x"}"#,
        r#"{"to":true,"text":"x"}"#,
        // Two requests in one, or a request with a field of another: never guessed.
        r#"{"to":"bob","room":"dev","text":"x"}"#,
        r#"{"join":"dev","text":"x"}"#,
        r#"{"join":"dev","leave":"dev"}"#,
        r#"{"leave":"dev","room":"dev"}"#,
        r#"{"rooms":true,"join":"dev"}"#,
        r#"{"rooms":false}"#,
        r#"{"rooms":"true"}"#,
        r#"{"join":null}"#,
        r#"{"room":null,"text":"x"}"#,
        r#"{"room":"dev"}"#,
        r#"{"join":"dev","since":1,"last":2,"epoch":"e"}"#,
        r#"{"join":"dev","since":1}"#,
        r#"{"join":"dev","epoch":"e"}"#,
        r#"{"join":"dev","last":-1}"#,
        r#"{"text":"x","last":1}"#,
        "{\"text\":",
        r#"{"text":"a","text":"b"}"#,
        r#"["bob","psst"]"#,
        r#" [null,"hi"]"#,
    ] {
        assert!(decode(bad).is_none(), "{bad:?} should be bad_message");
    }
}

#[test]
fn encodes_lines_exactly() {
    assert_eq!(
        &room_message("lobby", 3, "alice", "hi \"there\"", 7)[..],
        br#"{"type":"message","room":"lobby","seq":3,"from":"alice","text":"hi \"there\"","ts":7}"#
    );
    assert_eq!(
        &with_pseq(&private_message("alice", "bob", "x", 1), 12)[..],
        br#"{"type":"message","pseq":12,"from":"alice","to":"bob","text":"x","ts":1}"#
    );
    assert_eq!(&gap("dev", 4)[..], br#"{"type":"gap","room":"dev","seq":4}"#);
    assert_eq!(
        &private_message("alice", "bob", "x", 1)[..],
        br#"{"type":"message","from":"alice","to":"bob","text":"x","ts":1}"#
    );
    assert_eq!(
        &error(ErrorCode::UnknownRecipient, Some("zed"))[..],
        br#"{"type":"error","code":"unknown_recipient","message":"no one with that id is online","to":"zed"}"#
    );
    let w = Welcome {
        id: "a",
        users: vec!["a", "b"],
        away: Vec::new(),
        total: 2,
        max_text: 2000,
        rate_limit: 20,
        burst: 40,
        resume: "tok",
        resumed: false,
        exp: None,
    };
    assert_eq!(
        &welcome(&w)[..],
        &br#"{"type":"welcome","id":"a","users":["a","b"],"total":2,"max_text":2000,"rate_limit":20,"burst":40,"resume":"tok"}"#[..]
    );
    assert!(welcome(&Welcome { resumed: true, ..w }).ends_with(br#""resume":"tok","resumed":true}"#));
    let listing = |users: Vec<&'static str>, away: Vec<&'static str>, total| Listing { users, away, total };
    assert_eq!(
        &users("dev", listing(vec!["a"], vec![], 3))[..],
        br#"{"type":"users","room":"dev","users":["a"],"total":3}"#
    );
    assert_eq!(
        &joined("dev", listing(vec!["a", "b"], vec!["b"], 2), 9, "Ep0ch")[..],
        br#"{"type":"joined","room":"dev","users":["a","b"],"away":["b"],"total":2,"seq":9,"epoch":"Ep0ch"}"#
    );
    assert_eq!(&left("dev")[..], br#"{"type":"left","room":"dev"}"#);
    assert_eq!(
        &rooms(&[RoomSize { room: "lobby", users: 12, away: 0 }, RoomSize { room: "x", users: 2, away: 1 }], 3)[..],
        br#"{"type":"rooms","rooms":[{"room":"lobby","users":12},{"room":"x","users":2,"away":1}],"total":3}"#
    );
    assert_eq!(
        &room_error(ErrorCode::NotInRoom, "dev")[..],
        br#"{"type":"error","code":"not_in_room","message":"you are not in that room: join it first","room":"dev"}"#
    );
    let mut b = Vec::new();
    presence_into(&mut b, Presence::Leave, "dev", "bob");
    assert_eq!(&b[..], br#"{"type":"leave","room":"dev","id":"bob"}"#);
    b.clear();
    presence_into(&mut b, Presence::Away, "dev", "bob");
    assert_eq!(&b[..], br#"{"type":"away","room":"dev","id":"bob"}"#);
}

#[test]
fn a_bad_message_says_which_field_and_why() {
    let why = |frame: &str| decode_why(frame).err().map(|e| e.into_owned()).unwrap_or_default();
    assert_eq!(why(r#"{"join":"r","since":3}"#), "since and epoch go together");
    assert_eq!(why(r#"{"join":"r","since":3,"last":2,"epoch":"e"}"#), "last and since exclude each other");
    assert!(
        why(r#"{"join":"r","last":-1}"#).starts_with("invalid value: integer `-1`"),
        "{}",
        why(r#"{"join":"r","last":-1}"#)
    );
    assert_eq!(why(&format!(r#"{{"text":"x","cid":"{}"}}"#, "c".repeat(65))), "cid: 1 to 64 characters");
    assert_eq!(why("{\"text\":\"a\"}\n{\"text\":\"b\"}"), "one JSON object per message: more follows it");
    assert_eq!(why("[1]"), "not a JSON object");
    assert_eq!(why("{}"), "nothing asked: send text, to and text, join, leave or rooms");
    assert_eq!(why(r#"{"text":"x","last":1}"#), "last, since and epoch go with join");
    assert_eq!(why(r#"{"rooms":false}"#), "rooms: only true asks");
    assert!(why(r#"{"text":"x","join":"r"}"#).starts_with("fields that do not go together"));
    let line = bad_message("cid: 1 to 64 characters");
    assert!(line.ends_with(br#","reason":"cid: 1 to 64 characters"}"#), "{line:?}");
}

#[test]
fn id_rules() {
    for ok in ["a", "Alice_01", "x.y-z", &"a".repeat(32)] {
        assert!(valid_id(ok), "{ok}");
    }
    for bad in ["", &"a".repeat(33), "a b", "é", "a/b", "<x>", "a\0"] {
        assert!(!valid_id(bad), "{bad:?}");
    }
}
