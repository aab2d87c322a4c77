//! Chat: client frames through `Chat::handle`, connections and presence flushes, checked
//! against the model.

use crate::json::{Frame, frame, limits, room_request};
use crate::model::{About, Expect, Model, Rec, User, expect, json_lines, line_text};
use crate::{Check, config};
use chatloop::chat::broker::Alone;
use chatloop::chat::{Chat, Limits, Outcome};
use chatloop::protocol::{self, ErrorCode, LOBBY};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::rc::Rc;

/// A roster (`welcome`, `joined`, `users`): `users` lists distinct members of a room whose
/// member ids are `members`, `first` first if given, as many as `limit` allows (a roster
/// for someone always names them, even at limit 0); `total` is the true count.
fn check_roster(v: &Value, members: &[&str], limit: usize, first: Option<&str>) -> Check {
    let listed: Vec<&str> =
        v["users"].as_array().map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
    prop_assert_eq!(v["total"].as_u64(), Some(members.len() as u64), "total of {}", v);
    let cap = if first.is_some() { limit.max(1) } else { limit };
    prop_assert_eq!(listed.len(), members.len().min(cap), "listed in {}", v);
    if let Some(first) = first {
        prop_assert_eq!(listed.first().copied(), Some(first), "a roster lists its reader first: {}", v);
    }
    for (i, l) in listed.iter().enumerate() {
        prop_assert!(members.contains(l), "{v} lists {l:?}, who is not a member");
        prop_assert!(!listed[..i].contains(l), "{v} lists {l:?} twice");
    }
    Ok(())
}

const TS: u64 = 1_700_000_000_123;

/// Sends `frame` from connection `token` and checks the one outcome, and every line it
/// queued, against the model; then brings the model up to date.
pub(crate) fn check_handle(chat: &mut Chat, model: &mut Model, token: usize, frame: &str) -> Check<Outcome> {
    let sender = model.user(token).clone();
    let mut rec = Rec::default();
    let outcome = chat.handle(token, &sender.id, frame, TS, std::time::Instant::now(), &mut rec, &mut Alone);
    let mut lines = Vec::new();
    let cid = protocol::decode(frame).and_then(|(_, c)| c).map(|c| c.to_string());
    for (token, line) in &rec.0 {
        prop_assert!(!line.contains(&b'\n'), "a single line holds a newline: {line:?}");
        let mut v = json_lines(line)?.remove(0);
        // Every line to the sender of a frame with a cid carries it; the rest is checked
        // without it.
        if *token == sender.token
            && let Some(cid) = &cid
        {
            let got = v.as_object_mut().unwrap().remove("cid");
            prop_assert_eq!(
                got.as_ref().and_then(Value::as_str),
                Some(cid.as_str()),
                "cid on {}",
                line_text(line)
            );
        }
        lines.push((*token, v));
    }
    let msg = protocol::decode(frame).map(|(m, _)| m);
    let want = expect(model, &sender, msg.as_ref());
    let tokens: Vec<usize> = lines.iter().map(|(t, _)| *t).collect();
    let only_to_sender = |what: &str| -> Check<&Value> {
        prop_assert_eq!(&tokens, &vec![sender.token], "{} sends one line to the sender alone", what);
        Ok(&lines[0].1)
    };
    match &want {
        Expect::Refused(code, about) => {
            prop_assert_eq!(&outcome, &Outcome::Refused(*code), "frame {:?}", frame);
            let v = only_to_sender("a refusal")?;
            prop_assert_eq!(v["type"].as_str(), Some("error"));
            prop_assert_eq!(v["code"].as_str(), Some(code.as_str()));
            prop_assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
            let (to, room) = match about {
                About::Nothing => (None, None),
                About::To(to) => (Some(to.as_str()), None),
                About::Room(room) => (None, Some(room.as_str())),
            };
            prop_assert_eq!(v.get("to").map(|t| t.as_str()), to.map(Some), "`to` of {}", v);
            prop_assert_eq!(v.get("room").map(|r| r.as_str()), room.map(Some), "`room` of {}", v);
        }
        Expect::Room { room, text } => {
            let Outcome::Room { room: got_room, line, .. } = &outcome else {
                return Err(TestCaseError::fail(format!("frame {frame:?}: {outcome:?}, want {want:?}")));
            };
            prop_assert_eq!(&**got_room, room.as_str());
            let mut got = tokens.clone();
            let mut members = model.rooms[room].members.clone();
            got.sort_unstable();
            members.sort_unstable();
            prop_assert_eq!(got, members, "a room message reaches every member of {} once", room);
            let others = rec.0.iter().filter(|(t, _)| cid.is_none() || *t != sender.token);
            prop_assert!(others.clone().all(|(_, l)| l == line), "one line for all, the one in the outcome");
            let v = &lines[0].1;
            prop_assert_eq!(v["type"].as_str(), Some("message"));
            prop_assert_eq!(v["room"].as_str(), Some(room.as_str()), "the line names the room as stored");
            prop_assert_eq!(v["from"].as_str(), Some(sender.id.as_str()));
            prop_assert_eq!(v["text"].as_str(), Some(text.as_str()));
            prop_assert_eq!(v["ts"].as_u64(), Some(TS));
            prop_assert!(v.get("to").is_none());
            // Numbered in its room's history, which outlives the room's members.
            let seq = model.seqs.entry(room.clone()).or_insert(0);
            *seq += 1;
            prop_assert_eq!(v["seq"].as_u64(), Some(*seq), "room {} numbers its messages 1, 2, ...", room);
        }
        Expect::Private { rcpt, text } => {
            prop_assert_eq!(&outcome, &Outcome::Private, "frame {:?}", frame);
            let mut want_tokens = vec![rcpt.token];
            if rcpt.token != sender.token {
                want_tokens.push(sender.token);
            }
            prop_assert_eq!(tokens, want_tokens, "a private message reaches the recipient, then the sender");
            // The recipient's copy is numbered for it (pseq 1, 2, ...); the sender's is not.
            let pseq = model.pseqs.entry(rcpt.token).or_insert(0);
            *pseq += 1;
            prop_assert_eq!(lines[0].1["pseq"].as_u64(), Some(*pseq), "{}", lines[0].1);
            if let Some((_, mine)) = lines.get(1) {
                prop_assert!(mine.get("pseq").is_none(), "the sender's copy is not numbered: {}", mine);
                let mut theirs = lines[0].1.clone();
                theirs.as_object_mut().unwrap().remove("pseq");
                prop_assert_eq!(&theirs, mine, "the same message otherwise");
            }
            let v = &lines[0].1;
            prop_assert_eq!(v["type"].as_str(), Some("message"));
            prop_assert_eq!(v["from"].as_str(), Some(sender.id.as_str()));
            prop_assert_eq!(
                v["to"].as_str(),
                Some(rcpt.id.as_str()),
                "`to` names the id as its owner typed it"
            );
            prop_assert_eq!(v["text"].as_str(), Some(text.as_str()));
            prop_assert!(v.get("room").is_none(), "a private message is in no room: {}", v);
        }
        Expect::Joined { room, first_local } => {
            let want_outcome = Outcome::Joined { room: Rc::from(room.as_str()), first_local: *first_local };
            prop_assert_eq!(&outcome, &want_outcome, "frame {:?}", frame);
            model.enter(room, sender.token);
            let v = only_to_sender("a join")?;
            prop_assert_eq!(v["type"].as_str(), Some("joined"));
            prop_assert_eq!(v["room"].as_str(), Some(room.as_str()));
            check_roster(v, &model.member_ids(room), model.limits.presence_limit, Some(&sender.id))?;
        }
        Expect::AlreadyIn { room } => {
            prop_assert_eq!(&outcome, &Outcome::Answered, "frame {:?}", frame);
            let v = only_to_sender("a repeated join")?;
            prop_assert_eq!(v["type"].as_str(), Some("joined"));
            prop_assert_eq!(v["room"].as_str(), Some(room.as_str()));
            check_roster(v, &model.member_ids(room), model.limits.presence_limit, Some(&sender.id))?;
            // The roster lists everyone as of now: of this turn's events, only later ones follow.
            let r = model.rooms.get_mut(room).expect("a room the sender is in");
            match r.events.len() {
                0 => r.joined_at.remove(&sender.token),
                n => r.joined_at.insert(sender.token, n - 1),
            };
        }
        Expect::Left { room, last_local } => {
            let want_outcome = Outcome::Left { room: Rc::from(room.as_str()), last_local: *last_local };
            prop_assert_eq!(&outcome, &want_outcome, "frame {:?}", frame);
            model.exit(room, sender.token);
            let v = only_to_sender("a leave")?;
            prop_assert_eq!(v, &serde_json::json!({"type": "left", "room": room}));
        }
        Expect::Directory => {
            prop_assert_eq!(&outcome, &Outcome::Answered, "frame {:?}", frame);
            let v = only_to_sender("the directory")?;
            let mut sizes: Vec<(&str, usize)> =
                model.rooms.iter().map(|(n, r)| (n.as_str(), r.members.len())).collect();
            sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let entries: Vec<Value> = sizes
                .iter()
                .take(model.limits.presence_limit)
                .map(|(room, users)| serde_json::json!({"room": room, "users": users}))
                .collect();
            let directory = serde_json::json!({"type": "rooms", "rooms": entries, "total": sizes.len()});
            prop_assert_eq!(v, &directory, "the largest rooms first, ties by name");
        }
    }
    Ok(outcome)
}

/// Flushes presence and checks every payload against the model's batches, room by room: each
/// member of a room with events this turn gets the events after its own join, nothing while
/// the room is quiet (above the limit, and until an eighth below it), and one `users` line
/// instead when the room went quiet or loud since its last flush with events.
fn check_flush(chat: &mut Chat, model: &mut Model) -> Check {
    let mut rec = Rec::default();
    chat.flush_presence(&mut rec);
    let limit = model.limits.presence_limit;
    let mut got: BTreeMap<(usize, String), Vec<Value>> = BTreeMap::new();
    for (token, payload) in &rec.0 {
        let lines = json_lines(payload)?;
        let room = lines[0]["room"].as_str().unwrap_or_default().to_string();
        prop_assert!(
            lines.iter().all(|l| l["room"].as_str() == Some(room.as_str())),
            "a payload mixes rooms: {lines:?}"
        );
        let before = got.insert((*token, room), lines);
        prop_assert!(before.is_none(), "two payloads for one room and member in one flush: {:?}", rec.0);
    }
    let mut want: BTreeMap<(usize, String), Vec<Value>> = BTreeMap::new();
    let mut truths = Vec::new();
    for (name, r) in model.rooms.iter_mut() {
        if r.events.is_empty() {
            continue; // a room without news this turn sends nothing, whatever its size
        }
        // Quiet above the limit; loud again an eighth below it (at least one member).
        let loud_below = limit - (limit / 8).max(1).min(limit);
        let quiet = r.members.len() > if r.was_quiet { loud_below } else { limit };
        let crossed = quiet != r.was_quiet;
        r.was_quiet = quiet;
        if crossed {
            truths.push(name.clone());
        } else if !quiet {
            for t in &r.members {
                let from = r.joined_at.get(t).map_or(0, |at| at + 1);
                let lines: Vec<Value> = r.events[from..]
                    .iter()
                    .map(|(j, id)| serde_json::json!({"type": if *j { "join" } else { "leave" }, "room": name, "id": id}))
                    .collect();
                if !lines.is_empty() {
                    want.insert((*t, name.clone()), lines);
                }
            }
        }
        r.events.clear();
        r.joined_at.clear();
    }
    for name in truths {
        let members = model.member_ids(&name);
        for t in &model.rooms[&name].members {
            let lines = got.remove(&(*t, name.clone()));
            prop_assert!(lines.as_ref().is_some_and(|l| l.len() == 1), "{name} crossed the limit: {lines:?}");
            let v = &lines.unwrap()[0];
            prop_assert_eq!(v["type"].as_str(), Some("users"), "{} crossed the limit", name);
            check_roster(v, &members, limit, None)?;
        }
    }
    prop_assert_eq!(got, want, "presence batches");
    Ok(())
}

/// The chat's own tables agree with the model: users, rooms, and who is in which.
fn check_tables(chat: &Chat, model: &Model) -> Check {
    prop_assert_eq!(chat.len(), model.users.len());
    prop_assert_eq!(chat.room_count(), model.rooms.len());
    let mut got: Vec<(String, Vec<String>)> = chat
        .local_members()
        .into_iter()
        .map(|(id, rooms)| {
            let mut rooms: Vec<String> = rooms.into_iter().map(String::from).collect();
            rooms.sort();
            (id.to_string(), rooms)
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, Vec<String>)> = model
        .users
        .iter()
        .map(|u| (u.id.clone(), model.rooms_of(u.token).into_iter().map(String::from).collect()))
        .collect();
    want.sort();
    prop_assert_eq!(got, want, "memberships");
    Ok(())
}

/// Connects `id` as connection `token` and checks the welcome (the lobby's roster).
fn check_connect(chat: &mut Chat, model: &mut Model, id: &str, token: usize) -> Check<bool> {
    let mut rec = Rec::default();
    let got = chat.join(id, token, &[0; 16], None, 0, std::time::Instant::now(), &mut rec).map(|_| ());
    let want = if !protocol::valid_id(id) {
        Err(ErrorCode::BadId)
    } else if model.by_id(id).is_some() {
        Err(ErrorCode::IdTaken)
    } else {
        Ok(())
    };
    prop_assert_eq!(got, want, "join {:?}", id);
    if got.is_err() {
        prop_assert!(rec.0.is_empty(), "a refused join pushed {:?}", rec.0);
        return Ok(false);
    }
    model.connect(User { token, id: id.to_string() });
    prop_assert_eq!(rec.0.len(), 1);
    prop_assert_eq!(rec.0[0].0, token);
    let v = json_lines(&rec.0[0].1)?.remove(0);
    prop_assert_eq!(v["type"].as_str(), Some("welcome"));
    prop_assert_eq!(v["id"].as_str(), Some(id));
    // The welcome is the lobby's roster, as it was for a client before rooms: no `room`.
    prop_assert!(v.get("room").is_none(), "{}", v);
    check_roster(&v, &model.member_ids(LOBBY), model.limits.presence_limit, Some(id))?;
    Ok(true)
}

/// A chat of `ids` (connections 0, 1, ...), all in the lobby, presence flushed.
pub(crate) fn chat_with(ids: &[&str], limits: Limits) -> Check<(Chat, Model)> {
    let mut chat = Chat::new(limits);
    let mut model = Model::new(limits);
    for (token, id) in ids.iter().enumerate() {
        prop_assert!(check_connect(&mut chat, &mut model, id, token)?, "{id} did not join");
    }
    check_flush(&mut chat, &mut model)?;
    Ok((chat, model))
}

const IDS: &[&str] = &["alice", "Bob", "carol", "d.e-f_9", "Zed_0123456789abcdefghijklmnopqr"];

proptest! {
    #![proptest_config(config(1000))]

    /// One frame, after a few room requests that put the users in various rooms.
    #[test]
    fn chat_handle_frames(
        setup in vec((any::<Index>(), room_request()), 0..6),
        f in frame(),
        sender in any::<Index>(),
        limits in limits(),
    ) {
        let (mut chat, mut model) = chat_with(IDS, limits)?;
        for (i, request) in &setup {
            let token = model.users[i.index(model.users.len())].token;
            check_handle(&mut chat, &mut model, token, request)?;
        }
        let token = model.users[sender.index(model.users.len())].token;
        check_handle(&mut chat, &mut model, token, &f.text)?;
        check_tables(&chat, &model)?;
    }
}

#[derive(Debug, Clone)]
enum Op {
    Join(String),
    /// Leave an online user (by index), as the server does: with the id as its owner typed it.
    Leave(Index),
    /// Leave an id that is not online in any spelling: nothing happens.
    LeaveId(String),
    Handle(Index, Frame),
    Flush,
}

fn id_attempt() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec!["alice", "ALICE", "Bob", "bob", "carol", "x", "a.b-c_d", "-", ".", "_"]).prop_map(String::from),
        1 => select(vec!["", "a b", "é", "<x>", "al\0ice", "bob\n", " bob", "a/b"]).prop_map(String::from),
        2 => "[A-Za-z0-9_.-]{0,34}",
        1 => "\\PC{0,6}",
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => id_attempt().prop_map(Op::Join),
        2 => any::<Index>().prop_map(Op::Leave),
        1 => id_attempt().prop_map(Op::LeaveId),
        3 => (any::<Index>(), frame()).prop_map(|(i, f)| Op::Handle(i, f)),
        // Room requests on their own too: sessions are about who is in which room.
        3 => (any::<Index>(), room_request()).prop_map(|(i, text)| Op::Handle(i, Frame { text, clean: true })),
        2 => Just(Op::Flush),
    ]
}

/// Connections, disconnections, frames and presence flushes in any order, against the
/// model: ids unique ignoring case, the welcome is the lobby's, rooms and presence per room
/// exactly as chat/rooms.rs says.
fn run_ops(ops: &[Op], limits: Limits) -> Check {
    let mut chat = Chat::new(limits);
    let mut model = Model::new(limits);
    let mut next_token = 0;
    for op in ops {
        match op {
            Op::Join(id) => {
                check_connect(&mut chat, &mut model, id, next_token)?;
                next_token += 1;
            }
            Op::Leave(i) => {
                if model.users.is_empty() {
                    continue;
                }
                let u = model.users[i.index(model.users.len())].clone();
                let mut emptied: Vec<String> = chat.leave(&u.id).iter().map(|r| r.to_string()).collect();
                emptied.sort();
                // Disconnecting leaves every room: one leave event in each.
                prop_assert_eq!(emptied, model.disconnect(u.token), "rooms with no member left");
            }
            Op::LeaveId(id) => {
                // (`leave` records the spelling it is given; the server always passes the
                // owner's, so a differently-cased leave of an online id is not modelled.)
                if model.by_id(id).is_none() {
                    prop_assert!(chat.leave(id).is_empty());
                }
            }
            Op::Handle(i, f) => {
                if model.users.is_empty() {
                    continue;
                }
                let token = model.users[i.index(model.users.len())].token;
                check_handle(&mut chat, &mut model, token, &f.text)?;
            }
            Op::Flush => check_flush(&mut chat, &mut model)?,
        }
        check_tables(&chat, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(250))]

    #[test]
    fn chat_sessions(ops in vec(op(), 1..40), limits in limits()) {
        run_ops(&ops, limits)?;
    }
}
