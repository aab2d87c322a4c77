//! The JSON wire format, both directions.
//!
//! Client frames carry one JSON object each; server lines are JSON objects that the outbox
//! later joins with `\n` into one text message. Every server line is encoded exactly once and
//! handed around as `Bytes`, so a room message costs one encode however many people read it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What a client may send: a room message, or a private one when `to` is set.
/// Unknown fields (a forged `from`, say) are ignored on purpose: the server stamps the sender.
/// `to` must be a string when present: `"to":null` (a client's `picked ?? null`) is refused,
/// never read as "no recipient", because that would publish private text to the room.
#[derive(Debug, Deserialize, PartialEq)]
pub struct Incoming<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    pub to: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    pub text: std::borrow::Cow<'a, str>,
}

/// Decodes one client frame. `None` means "not an object of our shape" (`bad_message`).
pub fn decode(frame: &str) -> Option<Incoming<'_>> {
    // serde's derive also reads a struct from an array by position (`["bob","hi"]`); the
    // protocol is objects only.
    if !frame.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        return None;
    }
    serde_json::from_str(frame).ok()
}

/// A field that may be missing but, when present, must be a string (not null).
fn present<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::borrow::Cow<'a, str>>, D::Error> {
    <std::borrow::Cow<'a, str> as Deserialize>::deserialize(d).map(Some)
}

/// Error codes a client can be sent; the names are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadId,
    IdTaken,
    UnknownRecipient,
    BadMessage,
    Empty,
    TooLong,
    RateLimited,
    ClusterUnavailable,
    RecipientBusy,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadId => "bad_id",
            ErrorCode::IdTaken => "id_taken",
            ErrorCode::UnknownRecipient => "unknown_recipient",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::Empty => "empty",
            ErrorCode::TooLong => "too_long",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
            ErrorCode::RecipientBusy => "recipient_busy",
        }
    }

    fn human(self) -> &'static str {
        match self {
            ErrorCode::BadId => "an id is 1 to 32 characters from A-Z a-z 0-9 _ - .",
            ErrorCode::IdTaken => "that id is already online",
            ErrorCode::UnknownRecipient => "no one with that id is online",
            ErrorCode::BadMessage => {
                "send a JSON object such as {\"text\":\"hi\"} or {\"to\":\"bob\",\"text\":\"hi\"}"
            }
            ErrorCode::Empty => "the message is empty",
            ErrorCode::TooLong => "the message is too long",
            ErrorCode::RateLimited => "too many messages: slow down",
            ErrorCode::ClusterUnavailable => {
                "the other chat servers cannot be reached right now; users on this server still can"
            }
            ErrorCode::RecipientBusy => {
                "the recipient cannot take messages this fast right now; this one was not delivered"
            }
        }
    }
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    r#type: &'static str,
    code: &'static str,
    message: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
}

#[derive(Serialize)]
struct MessageLine<'a> {
    r#type: &'static str,
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    text: &'a str,
    ts: u64,
}

/// The first line a client gets: who it is, who is online (at most `--presence-limit` ids,
/// its own first; `total` is the true count), the limits it should enforce before sending,
/// and the token that takes its id back if the server closes it.
#[derive(Serialize)]
pub struct Welcome<'a> {
    pub id: &'a str,
    pub users: Vec<&'a str>,
    pub total: usize,
    /// Unicode scalar values per text (`--max-text`).
    pub max_text: usize,
    /// Messages per second (`--rate-limit`; 0: none), in bursts of up to `burst`.
    pub rate_limit: u32,
    pub burst: u32,
    pub resume: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resumed: bool,
}

#[derive(Serialize)]
struct Typed<'a, T: Serialize> {
    r#type: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

#[derive(Serialize)]
struct UsersLine<'a> {
    r#type: &'static str,
    users: Vec<&'a str>,
    total: usize,
}

#[derive(Serialize)]
struct PresenceLine<'a> {
    r#type: &'static str,
    id: &'a str,
}

fn encode<T: Serialize>(v: &T) -> Bytes {
    // Serializing our own structs of strings and integers cannot fail.
    Bytes::from(serde_json::to_vec(v).expect("serializable"))
}

/// `{"type":"error",...}`; `to` names the recipient of a private message that failed.
pub fn error(code: ErrorCode, to: Option<&str>) -> Bytes {
    encode(&ErrorLine { r#type: "error", code: code.as_str(), message: code.human(), to })
}

/// A room message (`to` = None) or a private one.
pub fn message(from: &str, to: Option<&str>, text: &str, ts: u64) -> Bytes {
    encode(&MessageLine { r#type: "message", from, to, text, ts })
}

/// `{"type":"welcome",...}`.
pub fn welcome(w: &Welcome<'_>) -> Bytes {
    encode(&Typed { r#type: "welcome", body: w })
}

/// `{"type":"users","users":[...],"total":N}`: the whole list again (see `Chat::flush_presence`).
pub fn users<'a>(ids: impl Iterator<Item = &'a str>, total: usize) -> Bytes {
    encode(&UsersLine { r#type: "users", users: ids.collect(), total })
}

/// Appends a `join` or `leave` line (no trailing newline) to a presence batch.
pub fn presence_into(buf: &mut Vec<u8>, joined: bool, id: &str) {
    let line = PresenceLine { r#type: if joined { "join" } else { "leave" }, id };
    serde_json::to_writer(buf, &line).expect("serializable");
}

/// True when `id` is 1 to 32 characters from `A-Z a-z 0-9 _ - .`.
pub fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_room_and_private_and_ignores_forged_from() {
        let m = decode(r#"{"text":"hi","from":"mallory"}"#).unwrap();
        assert_eq!(m.text, "hi");
        assert_eq!(m.to, None);
        let m = decode(r#"{"to":"bob","text":"psst"}"#).unwrap();
        assert_eq!(m.to.as_deref(), Some("bob"));
        // Escapes force an owned Cow; the decoded text must still be right.
        let m = decode(r#"{"text":"a\nb\u00e9"}"#).unwrap();
        assert_eq!(m.text, "a\nbé");
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
            &message("alice", None, "hi \"there\"", 7)[..],
            br#"{"type":"message","from":"alice","text":"hi \"there\"","ts":7}"#
        );
        assert_eq!(
            &message("alice", Some("bob"), "x", 1)[..],
            br#"{"type":"message","from":"alice","to":"bob","text":"x","ts":1}"#
        );
        assert_eq!(
            &error(ErrorCode::UnknownRecipient, Some("zed"))[..],
            br#"{"type":"error","code":"unknown_recipient","message":"no one with that id is online","to":"zed"}"#
        );
        let w = Welcome {
            id: "a",
            users: vec!["a", "b"],
            total: 2,
            max_text: 2000,
            rate_limit: 20,
            burst: 40,
            resume: "tok",
            resumed: false,
        };
        assert_eq!(
            &welcome(&w)[..],
            &br#"{"type":"welcome","id":"a","users":["a","b"],"total":2,"max_text":2000,"rate_limit":20,"burst":40,"resume":"tok"}"#[..]
        );
        assert!(welcome(&Welcome { resumed: true, ..w }).ends_with(br#""resume":"tok","resumed":true}"#));
        assert_eq!(&users(["a"].into_iter(), 3)[..], br#"{"type":"users","users":["a"],"total":3}"#);
        let mut b = Vec::new();
        presence_into(&mut b, false, "bob");
        assert_eq!(&b[..], br#"{"type":"leave","id":"bob"}"#);
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
}
