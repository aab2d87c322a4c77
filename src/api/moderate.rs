//! The acting endpoints (issue 25): `POST /api/disconnect`, `/api/ban`, `/api/unban`,
//! `/api/kick`, `/api/mute`, `/api/unmute`, `/api/revoke`. A handler only reads the request
//! (`Action::parse`, every field checked and named when wrong); the server takes the action
//! (`Answer::Moderate`, then `server/moderation.rs`), since it closes connections and tells
//! the cluster, and answers with its `Done`.

use super::{Answer, Call, Cx, fail};
use crate::chat::Sink;
use crate::chat::moderation::MAX_SECONDS;
use crate::http::Status;
use crate::protocol;
use serde::{Deserialize, Serialize};

/// The endpoints, as `/api/<name>`.
pub const ACTIONS: [&str; 7] = ["ban", "unban", "disconnect", "kick", "mute", "unmute", "revoke"];

/// `POST /api/<action>`: the action for the server to take, or why the request is refused.
pub fn handle<S: Sink>(call: &Call<'_>, _cx: &mut Cx<'_, S>) -> Answer {
    let name = call.path.strip_prefix("/api/").unwrap_or_default();
    match Action::parse(name, call.body) {
        Some(Ok(a)) => Answer::Moderate(a),
        Some(Err(r)) => fail(r.status, r.code, &r.message),
        None => fail(Status::NotFound, "not_found", "no such endpoint (see docs/api.md)"),
    }
}

/// A close frame's reason is at most 123 bytes (RFC 6455: 125 with the code).
pub const MAX_REASON: usize = 123;

/// A backend's moderation request (`POST /api/<action>`). Ids and rooms as sent; checked by
/// `parse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Disconnect {
        id: String,
        reason: Option<String>,
    },
    Ban {
        id: String,
        seconds: u64,
    },
    Unban {
        id: String,
    },
    Kick {
        id: String,
        room: String,
    },
    Mute {
        id: String,
        room: Option<String>,
        seconds: u64,
    },
    Unmute {
        id: String,
        room: Option<String>,
    },
    /// `seconds`: how long the revocation is kept (default `REVOKE_KEEP_SECS`).
    Revoke {
        id: String,
        before: u64,
        seconds: Option<u64>,
    },
}

/// What a successful action did: the API's answer as is, and the one report of it for the
/// event stream (a `moderation` event: `{"type":"moderation",...this}`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Done {
    pub action: &'static str,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Until when a ban, mute or revocation lasts (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unban, unmute: whether there was anything to lift.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifted: Option<bool>,
    /// When it was done (Unix ms).
    pub ts: u64,
}

/// Why an action was not taken: an HTTP status, a code and a one-line message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: Status,
    pub code: &'static str,
    pub message: String,
}

fn bad(message: impl Into<String>) -> Refused {
    Refused { status: Status::BadRequest, code: "bad_request", message: message.into() }
}

/// The bodies, as sent: unknown fields are refused (a typo must not pass for a default).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    id: String,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    seconds: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    before: Option<u64>,
}

impl Action {
    /// The action `name` (`ban`, `unban`, `disconnect`, `kick`, `mute`, `unmute`, `revoke`)
    /// with its JSON body; None for another name; a `bad_request` for a body that does not
    /// fit it (each field named).
    pub fn parse(name: &str, body: &[u8]) -> Option<Result<Action, Refused>> {
        ACTIONS.contains(&name).then(|| Self::parse_body(name, body))
    }

    fn parse_body(name: &str, body: &[u8]) -> Result<Action, Refused> {
        let b: Body = serde_json::from_slice(body).map_err(|e| bad(format!("body: {e}")))?;
        if !protocol::valid_id(&b.id) {
            let message = "id: 1 to 32 characters from A-Z a-z 0-9 _ - .".into();
            return Err(Refused { status: Status::BadRequest, code: "bad_id", message });
        }
        if let Some(r) = &b.room
            && protocol::room_name(r).is_none()
        {
            let message = "room: 1 to 32 characters from A-Z a-z 0-9 _ - .".into();
            return Err(Refused { status: Status::BadRequest, code: "bad_room", message });
        }
        let seconds = |s: Option<u64>| match s {
            Some(s) if (1..=MAX_SECONDS).contains(&s) => Ok(s),
            _ => Err(bad(format!("seconds: a whole number from 1 to {MAX_SECONDS}"))),
        };
        let allowed: &[&str] = match name {
            "ban" => &["seconds"],
            "mute" => &["room", "seconds"],
            "unmute" => &["room"],
            "kick" => &["room"],
            "disconnect" => &["reason"],
            "revoke" => &["before", "seconds"],
            _ => &[],
        };
        let given = [("room", b.room.is_some()), ("seconds", b.seconds.is_some())];
        let mut given =
            given.into_iter().chain([("reason", b.reason.is_some()), ("before", b.before.is_some())]);
        if let Some((f, _)) = given.find(|(f, on)| *on && !allowed.contains(f)) {
            return Err(bad(format!("{f}: not a field of {name}")));
        }
        let id = b.id;
        let room = b.room.map(|r| protocol::room_name(&r).expect("checked").into_owned());
        Ok(match name {
            "ban" => Action::Ban { id, seconds: seconds(b.seconds)? },
            "unban" => Action::Unban { id },
            "mute" => Action::Mute { id, room, seconds: seconds(b.seconds)? },
            "unmute" => Action::Unmute { id, room },
            "kick" => Action::Kick { id, room: room.ok_or_else(|| bad("room: required"))? },
            "disconnect" => {
                if b.reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
                    return Err(bad(format!(
                        "reason: at most {MAX_REASON} bytes (it goes in the close frame)"
                    )));
                }
                Action::Disconnect { id, reason: b.reason }
            }
            _ => {
                let before = b.before.ok_or_else(|| bad("before: required (Unix ms)"))?;
                let keep = b.seconds.map(|s| seconds(Some(s))).transpose()?;
                Action::Revoke { id, before, seconds: keep }
            }
        })
    }
}

impl Done {
    pub(crate) fn new(action: &'static str, id: &str, ts: u64) -> Done {
        Done {
            action,
            id: id.to_string(),
            room: None,
            until: None,
            before: None,
            reason: None,
            lifted: None,
            ts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_parses_its_own_fields_and_refuses_the_others_by_name() {
        let p = |name: &str, body: &str| Action::parse(name, body.as_bytes()).unwrap();
        assert_eq!(p("ban", r#"{"id":"al","seconds":60}"#), Ok(Action::Ban { id: "al".into(), seconds: 60 }));
        assert_eq!(
            p("mute", r#"{"id":"al","room":"Dev","seconds":1}"#),
            Ok(Action::Mute { id: "al".into(), room: Some("dev".into()), seconds: 1 })
        );
        assert_eq!(p("unmute", r#"{"id":"al"}"#), Ok(Action::Unmute { id: "al".into(), room: None }));
        assert_eq!(
            p("revoke", r#"{"id":"al","before":5}"#),
            Ok(Action::Revoke { id: "al".into(), before: 5, seconds: None })
        );
        assert_eq!(
            p("disconnect", r#"{"id":"al"}"#),
            Ok(Action::Disconnect { id: "al".into(), reason: None })
        );
        assert!(Action::parse("publish", b"{}").is_none(), "not ours");
        let why = |name: &str, body: &str| p(name, body).unwrap_err().message;
        assert!(why("ban", r#"{"id":"al"}"#).starts_with("seconds:"));
        assert!(why("ban", r#"{"id":"al","seconds":0}"#).starts_with("seconds:"));
        assert!(why("ban", r#"{"id":"a b","seconds":5}"#).starts_with("id:"));
        assert!(why("ban", r#"{"id":"al","seconds":5,"room":"x"}"#).starts_with("room: not a field of ban"));
        assert!(why("kick", r#"{"id":"al"}"#).starts_with("room: required"));
        assert!(why("kick", r#"{"id":"al","room":"a room"}"#).starts_with("room:"));
        assert!(why("revoke", r#"{"id":"al"}"#).starts_with("before:"));
        assert!(why("ban", r#"{"id":"al","secs":5}"#).starts_with("body: unknown field"));
        assert!(why("ban", "not json").starts_with("body:"));
        let long = format!(r#"{{"id":"al","reason":"{}"}}"#, "x".repeat(124));
        assert!(why("disconnect", &long).starts_with("reason:"));
    }

    #[test]
    fn done_is_the_answer_and_the_event_without_empty_fields() {
        let d = Done { until: Some(9), ..Done::new("ban", "al", 3) };
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"action":"ban","id":"al","until":9,"ts":3}"#);
    }
}
