//! Chat's unit tests: a `Chat` driven by frames, its pushes recorded per connection (`Rec`).
//! Here: ids, rooms, presence, routing; `sessions.rs`: lost users, backlogs, history, remote users.

mod moderation;
mod sessions;

use super::broker::Alone;
use super::*;

/// Records what chat queued, by connection; also the sink of `moved` and `fetch` tests.
#[derive(Default)]
pub(super) struct Rec(pub(super) Vec<(usize, String)>);

impl Sink for Rec {
    fn push(&mut self, token: usize, line: &Bytes) {
        self.0.push((token, String::from_utf8(line.to_vec()).unwrap()));
    }
    fn offer(&mut self, token: usize, line: &Bytes) -> bool {
        // Connection 99 stands for a recipient that cannot take more right now.
        token != 99 && {
            self.push(token, line);
            true
        }
    }
}

/// A broker whose history is shared (as Redis's is, while its link is up) but that numbers
/// here, for the `fetch` tests: joins the mirror cannot answer ask for the history first.
pub(super) struct Shared;

impl broker::Broker for Shared {
    fn publish(&mut self, history: &mut History, post: broker::Post<'_>) -> broker::Published {
        broker::Published::Now(history.append(post.room, post.encode))
    }

    fn shares_history(&self) -> bool {
        true
    }
}

impl Rec {
    fn take(&mut self) -> Vec<(usize, String)> {
        std::mem::take(&mut self.0)
    }
    /// What each connection got, sorted by connection.
    fn sorted(&mut self) -> Vec<(usize, String)> {
        let mut got = self.take();
        got.sort();
        got
    }
}

fn limits(presence_limit: usize) -> Limits {
    Limits { presence_limit, max_text: 10, ..Limits::default() }
}

fn now() -> Instant {
    Instant::now()
}

fn join(c: &mut Chat, id: &str, token: usize, r: &mut Rec) -> Result<Rc<str>, ErrorCode> {
    c.join(id, token, &[0; 16], None, 0, now(), r).map(|(id, _)| id)
}

fn chat_with(ids: &[&str]) -> (Chat, Rec) {
    let mut c = Chat::new(limits(100));
    let mut r = Rec::default();
    for (t, id) in ids.iter().enumerate() {
        join(&mut c, id, t, &mut r).unwrap();
    }
    c.flush_presence(&mut r);
    r.take();
    (c, r)
}

/// `from` (connection `token`) sends `frame`.
fn say(c: &mut Chat, r: &mut Rec, token: usize, from: &str, frame: &str) -> Outcome {
    c.handle(token, from, frame, 5, now(), r, &mut Alone)
}

#[test]
fn a_join_again_gets_a_roster_and_no_event_the_roster_already_lists() {
    let (mut c, mut r) = chat_with(&["a", "b"]);
    say(&mut c, &mut r, 0, "a", r#"{"join":"d"}"#);
    c.flush_presence(&mut r);
    r.take();
    // One turn: b joins, then a asks again; a's roster lists b.
    say(&mut c, &mut r, 1, "b", r#"{"join":"d"}"#);
    say(&mut c, &mut r, 0, "a", r#"{"join":"d"}"#);
    c.flush_presence(&mut r);
    let to_a: Vec<String> = r.take().into_iter().filter(|(t, _)| *t == 0).map(|(_, l)| l).collect();
    assert_eq!(to_a.len(), 1, "{to_a:?}");
    assert!(to_a[0].contains(r#""type":"joined""#) && to_a[0].contains(r#""b""#), "{to_a:?}");
    // Events after the roster still come.
    say(&mut c, &mut r, 1, "b", r#"{"leave":"d"}"#);
    c.flush_presence(&mut r);
    let to_a: Vec<String> = r.take().into_iter().filter(|(t, _)| *t == 0).map(|(_, l)| l).collect();
    assert_eq!(to_a, vec![r#"{"type":"leave","room":"d","id":"b"}"#.to_string()]);
}

#[test]
fn a_room_left_and_joined_again_in_one_turn_keeps_its_history() {
    let (mut c, mut r) = chat_with(&["a"]);
    say(&mut c, &mut r, 0, "a", r#"{"join":"r"}"#);
    say(&mut c, &mut r, 0, "a", r#"{"room":"r","text":"kept"}"#);
    c.pump(now(), &mut r);
    // One turn: the room empties (and is gone) and comes back.
    say(&mut c, &mut r, 0, "a", r#"{"leave":"r"}"#);
    say(&mut c, &mut r, 0, "a", r#"{"join":"r"}"#);
    c.pump(now(), &mut r);
    c.history.expire(now() + Duration::from_secs(301));
    assert!(!c.history.any_idle(), "an occupied room's history has no idle clock");
    assert_eq!(c.history.get("r").map(|l| l.latest()), Some(1), "its history outlives the TTL");
}

#[test]
fn a_quiet_room_has_no_log_and_its_first_message_keeps_the_epoch_joined_named() {
    let (mut c, mut r) = chat_with(&["a", "b"]);
    say(&mut c, &mut r, 0, "a", r#"{"join":"dev"}"#);
    let got = r.take();
    let joined: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!((joined["type"].as_str(), joined["seq"].as_u64()), (Some("joined"), Some(0)));
    let epoch = joined["epoch"].as_str().unwrap().to_string();
    assert!(c.history.get("dev").is_none(), "no message yet, so no log");
    say(&mut c, &mut r, 0, "a", r#"{"room":"dev","text":"first"}"#);
    assert_eq!(&*c.history.get("dev").unwrap().epoch, epoch, "the log starts in that epoch");
    r.take();
    // b was told nothing of dev; with the epoch a told, since 0 replays the message, no gap.
    let frame = format!(r#"{{"join":"dev","since":0,"epoch":"{epoch}"}}"#);
    say(&mut c, &mut r, 1, "b", &frame);
    c.pump(now(), &mut r);
    let to_b: Vec<String> = r.take().into_iter().filter(|(t, _)| *t == 1).map(|(_, l)| l).collect();
    assert!(to_b[0].contains(r#""type":"joined""#) && to_b[0].contains(&epoch), "{to_b:?}");
    assert!(!to_b.iter().any(|l| l.contains(r#""type":"gap""#)), "{to_b:?}");
    assert!(to_b.iter().any(|l| l.contains(r#""seq":1"#) && l.contains("first")), "{to_b:?}");
}

#[test]
fn ids_are_unique_ignoring_case_and_free_again_on_leave() {
    let (mut c, mut r) = chat_with(&["alice"]);
    assert_eq!(join(&mut c, "ALICE", 9, &mut r), Err(ErrorCode::IdTaken));
    assert_eq!(join(&mut c, "no spaces", 9, &mut r), Err(ErrorCode::BadId));
    assert!(r.take().is_empty(), "a refused join queues nothing");
    c.leave("Alice");
    assert_eq!(join(&mut c, "ALICE", 9, &mut r).as_deref(), Ok("ALICE"));
}

#[test]
fn a_lobby_message_reaches_everyone_in_it_including_the_sender() {
    let (mut c, mut r) = chat_with(&["a", "b", "c"]);
    let line = r#"{"type":"message","room":"lobby","seq":1,"from":"b","text":"hi","ts":5}"#.to_string();
    let out = say(&mut c, &mut r, 1, "b", r#"{"text":"  hi ","from":"x"}"#);
    assert_eq!(out, Outcome::Room { room: Rc::from("lobby"), line: Bytes::from(line.clone()), cid: None });
    assert_eq!(r.sorted(), vec![(0, line.clone()), (1, line.clone()), (2, line.clone())]);
    // Naming the lobby, in any case, is the same.
    assert!(matches!(say(&mut c, &mut r, 1, "b", r#"{"room":"LOBBY","text":"hi"}"#), Outcome::Room { .. }));
    assert_eq!(r.take().len(), 3);
}

#[test]
fn a_room_message_reaches_that_rooms_members_only() {
    let (mut c, mut r) = chat_with(&["a", "b", "c"]);
    assert_eq!(
        say(&mut c, &mut r, 0, "a", r#"{"join":"Dev"}"#),
        Outcome::Joined { room: Rc::from("dev"), first_local: true }
    );
    let got = r.take();
    assert_eq!((got.len(), got[0].0), (1, 0));
    assert!(
        got[0].1.starts_with(r#"{"type":"joined","room":"dev","users":["a"],"total":1,"seq":"#),
        "{}",
        got[0].1
    );
    assert_eq!(
        say(&mut c, &mut r, 1, "b", r#"{"join":"dev"}"#),
        Outcome::Joined { room: Rc::from("dev"), first_local: false }
    );
    let got = r.take();
    assert_eq!((got.len(), got[0].0), (1, 1));
    assert!(
        got[0].1.starts_with(r#"{"type":"joined","room":"dev","users":["b","a"],"total":2,"seq":"#),
        "{}",
        got[0].1
    );
    c.flush_presence(&mut r);
    assert_eq!(r.take(), vec![(0, r#"{"type":"join","room":"dev","id":"b"}"#.to_string())]);
    assert!(matches!(say(&mut c, &mut r, 1, "b", r#"{"room":"dev","text":"psst"}"#), Outcome::Room { .. }));
    let got = r.sorted();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![0, 1], "c is not in dev");
    assert!(got[0].1.starts_with(r#"{"type":"message","room":"dev","seq":1,"from":"b""#), "{}", got[0].1);
    // c is not a member: refused, and nobody hears it.
    let out = say(&mut c, &mut r, 2, "c", r#"{"room":"dev","text":"let me in"}"#);
    assert_eq!(out, Outcome::Refused(ErrorCode::NotInRoom));
    let got = r.take();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].1.contains(r#""code":"not_in_room""#) && got[0].1.contains(r#""room":"dev""#),
        "{}",
        got[0].1
    );
}

#[test]
fn joining_again_answers_joined_and_leaving_answers_left() {
    let (mut c, mut r) = chat_with(&["a", "b"]);
    assert_eq!(say(&mut c, &mut r, 0, "a", r#"{"join":"lobby"}"#), Outcome::Answered);
    let got = r.take();
    assert_eq!((got.len(), got[0].0), (1, 0));
    assert!(
        got[0].1.starts_with(r#"{"type":"joined","room":"lobby","users":["a","b"],"total":2,"seq":"#),
        "{}",
        got[0].1
    );
    say(&mut c, &mut r, 0, "a", r#"{"join":"dev"}"#);
    r.take();
    assert_eq!(
        say(&mut c, &mut r, 0, "a", r#"{"leave":"DEV"}"#),
        Outcome::Left { room: Rc::from("dev"), last_local: true }
    );
    assert_eq!(r.take(), vec![(0, r#"{"type":"left","room":"dev"}"#.to_string())]);
    assert_eq!(c.rooms.len(), 1, "a room with no members is gone");
    assert_eq!(say(&mut c, &mut r, 0, "a", r#"{"leave":"dev"}"#), Outcome::Refused(ErrorCode::NotInRoom));
    r.take();
    // Leaving the lobby is allowed; then a plain text has nowhere to go.
    assert_eq!(
        say(&mut c, &mut r, 0, "a", r#"{"leave":"lobby"}"#),
        Outcome::Left { room: Rc::from("lobby"), last_local: false }
    );
    r.take();
    assert_eq!(say(&mut c, &mut r, 0, "a", r#"{"text":"hi"}"#), Outcome::Refused(ErrorCode::NotInRoom));
    assert!(r.take()[0].1.contains(r#""room":"lobby""#));
    c.flush_presence(&mut r);
    assert_eq!(r.take(), vec![(1, r#"{"type":"leave","room":"lobby","id":"a"}"#.to_string())]);
}

#[test]
fn bad_names_and_limits_are_refused_with_the_room_named() {
    let mut c = Chat::new(Limits { max_rooms: 3, max_rooms_per_user: 2, ..limits(100) });
    let mut r = Rec::default();
    join(&mut c, "a", 0, &mut r).unwrap();
    join(&mut c, "b", 1, &mut r).unwrap();
    r.take();
    for frame in [r#"{"join":"a b"}"#, r#"{"join":""}"#, r#"{"leave":"é"}"#, r#"{"room":"x/y","text":"hi"}"#]
    {
        assert_eq!(say(&mut c, &mut r, 0, "a", frame), Outcome::Refused(ErrorCode::BadRoom), "{frame}");
        assert!(r.take()[0].1.contains(r#""code":"bad_room""#));
    }
    assert!(matches!(say(&mut c, &mut r, 0, "a", r#"{"join":"one"}"#), Outcome::Joined { .. }));
    // Per user: lobby and one are two.
    assert_eq!(say(&mut c, &mut r, 0, "a", r#"{"join":"two"}"#), Outcome::Refused(ErrorCode::TooManyRooms));
    assert!(matches!(say(&mut c, &mut r, 1, "b", r#"{"join":"two"}"#), Outcome::Joined { .. }));
    r.take();
    // On the server: lobby, one and two are three.
    say(&mut c, &mut r, 1, "b", r#"{"leave":"lobby"}"#);
    let out = say(&mut c, &mut r, 1, "b", r#"{"join":"three"}"#);
    assert_eq!(out, Outcome::Refused(ErrorCode::TooManyRooms));
    assert!(r.take().last().unwrap().1.contains(r#""room":"three""#));
    // An existing room can still be joined.
    assert!(matches!(say(&mut c, &mut r, 1, "b", r#"{"join":"one"}"#), Outcome::Joined { .. }));
}

#[test]
fn at_max_rooms_a_room_kept_only_by_holds_gives_way_to_a_connected_users_join() {
    let mut c = Chat::new(Limits { max_rooms: 4, ..limits(100) });
    let mut r = Rec::default();
    let t = now();
    join(&mut c, "live", 0, &mut r).unwrap();
    for (n, id) in ["gone1", "gone2"].iter().enumerate() {
        let token = n + 1;
        join(&mut c, id, token, &mut r).unwrap();
        say(&mut c, &mut r, token, id, &format!(r#"{{"join":"{id}-room"}}"#));
    }
    // "shared" has a connected member besides a held one: it is never given up.
    say(&mut c, &mut r, 0, "live", r#"{"join":"shared"}"#);
    say(&mut c, &mut r, 1, "gone1", r#"{"join":"shared"}"#);
    for id in ["gone1", "gone2"] {
        c.lose(id, [0; 16], t + Duration::from_secs(60));
    }
    assert_eq!(c.rooms.len(), 4, "lobby, gone1-room, gone2-room, shared");
    r.take();
    // The room orphaned longest goes first, then the next; then there is nothing to give.
    for (room, gone) in [("new1", "gone1-room"), ("new2", "gone2-room")] {
        let frame = format!(r#"{{"join":"{room}"}}"#);
        assert!(matches!(say(&mut c, &mut r, 0, "live", &frame), Outcome::Joined { .. }), "{room}");
        assert_eq!(c.rooms.key(gone), None, "{gone} gave way to {room}");
    }
    assert_eq!(c.rooms_evicted, 2);
    let told: Vec<String> = c.todo.evicted.drain(..).map(|(id, room)| format!("{id}:{room}")).collect();
    assert_eq!(told, ["gone1:gone1-room", "gone2:gone2-room"]);
    let out = say(&mut c, &mut r, 0, "live", r#"{"join":"x"}"#);
    assert_eq!(out, Outcome::Refused(ErrorCode::TooManyRooms), "every room has a connected member");
    // gone1 comes back a member of what was left it: lobby and shared, not its own room.
    r.take();
    let (_, resumed) = c.join("gone1", 7, &[1; 16], Some(&[0; 16]), 0, t, &mut r).unwrap();
    assert!(resumed);
    let mut rooms: Vec<&str> = c.local_rooms().collect();
    rooms.sort();
    assert_eq!(rooms, ["lobby", "new1", "new2", "shared"], "lobby and shared only are gone1's");
    assert_eq!(c.users.get("gone1").unwrap().1.rooms.len(), 2);
}

#[test]
fn the_directory_lists_the_largest_rooms_first_within_the_limit() {
    let mut c = Chat::new(limits(2));
    let mut r = Rec::default();
    for (t, id) in ["a", "b", "c"].iter().enumerate() {
        join(&mut c, id, t, &mut r).unwrap();
    }
    say(&mut c, &mut r, 0, "a", r#"{"join":"zz"}"#);
    say(&mut c, &mut r, 1, "b", r#"{"join":"zz"}"#);
    say(&mut c, &mut r, 2, "c", r#"{"join":"aa"}"#);
    r.take();
    assert_eq!(say(&mut c, &mut r, 2, "c", r#"{"rooms":true}"#), Outcome::Answered);
    assert_eq!(
        r.take(),
        vec![(
            2,
            r#"{"type":"rooms","rooms":[{"room":"lobby","users":3},{"room":"zz","users":2}],"total":3}"#
                .to_string()
        )]
    );
}

#[test]
fn a_disconnect_leaves_every_room_and_names_the_rooms_left_empty_here() {
    let (mut c, mut r) = chat_with(&["a", "b"]);
    say(&mut c, &mut r, 0, "a", r#"{"join":"dev"}"#);
    say(&mut c, &mut r, 0, "a", r#"{"join":"ops"}"#);
    say(&mut c, &mut r, 1, "b", r#"{"join":"ops"}"#);
    c.flush_presence(&mut r);
    r.take();
    let mut emptied: Vec<String> = c.leave("a").iter().map(|x| x.to_string()).collect();
    emptied.sort();
    assert_eq!(emptied, ["dev"]);
    c.flush_presence(&mut r);
    assert_eq!(
        r.sorted(),
        vec![
            (1, r#"{"type":"leave","room":"lobby","id":"a"}"#.to_string()),
            (1, r#"{"type":"leave","room":"ops","id":"a"}"#.to_string()),
        ]
    );
    assert_eq!(c.rooms.len(), 2);
}

#[test]
fn private_message_reaches_recipient_and_echoes_to_sender_only() {
    let (mut c, mut r) = chat_with(&["a", "Bob", "c"]);
    assert_eq!(say(&mut c, &mut r, 0, "a", r#"{"to":"BOB","text":"psst"}"#), Outcome::Private);
    let line = r#"{"type":"message","from":"a","to":"Bob","text":"psst","ts":5}"#.to_string();
    let theirs = r#"{"type":"message","pseq":1,"from":"a","to":"Bob","text":"psst","ts":5}"#.to_string();
    assert_eq!(r.take(), vec![(1, theirs), (0, line)], "the recipient's copy is numbered");
    // To yourself: one copy.
    say(&mut c, &mut r, 0, "a", r#"{"to":"a","text":"me"}"#);
    assert_eq!(r.take().len(), 1);
}

#[test]
fn refusals_go_to_the_sender_alone() {
    let (mut c, mut r) = chat_with(&["a", "b"]);
    let cases = [
        (r#"{"to":"zed","text":"x"}"#, ErrorCode::UnknownRecipient, "\"to\":\"zed\""),
        ("not json", ErrorCode::BadMessage, "bad_message"),
        (r#"{"text":"   "}"#, ErrorCode::Empty, "\"empty\""),
        (r#"{"text":"12345678901"}"#, ErrorCode::TooLong, "too_long"),
    ];
    for (frame, code, needle) in cases {
        assert_eq!(say(&mut c, &mut r, 1, "b", frame), Outcome::Refused(code));
        let got = r.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 1);
        assert!(got[0].1.contains(needle), "{}", got[0].1);
    }
    // Ten characters of two bytes each are within a ten-character limit.
    assert!(matches!(say(&mut c, &mut r, 1, "b", r#"{"text":"éééééééééé"}"#), Outcome::Room { .. }));
}

#[test]
fn presence_is_batched_per_room_and_each_joiner_sees_only_later_events() {
    let (mut c, mut r) = chat_with(&["old"]);
    join(&mut c, "n1", 1, &mut r).unwrap();
    join(&mut c, "n2", 2, &mut r).unwrap();
    c.leave("old");
    let welcomes = r.take();
    assert!(welcomes[0].1.contains(r#""users":["n1","old"]"#), "{}", welcomes[0].1);
    assert!(welcomes[1].1.contains(r#""total":3"#));
    c.flush_presence(&mut r);
    assert_eq!(
        r.sorted(),
        vec![
            (
                1,
                "{\"type\":\"join\",\"room\":\"lobby\",\"id\":\"n2\"}\n{\"type\":\"leave\",\"room\":\"lobby\",\"id\":\"old\"}"
                    .to_string()
            ),
            (2, "{\"type\":\"leave\",\"room\":\"lobby\",\"id\":\"old\"}".to_string()),
        ]
    );
    c.flush_presence(&mut r);
    assert!(r.take().is_empty(), "a turn without events sends nothing");
}

#[test]
fn above_the_limit_presence_goes_quiet_and_welcome_is_capped() {
    let mut c = Chat::new(limits(2));
    let mut r = Rec::default();
    for (t, id) in ["a", "b", "c"].iter().enumerate() {
        join(&mut c, id, t, &mut r).unwrap();
    }
    let last = &r.take()[2].1;
    assert!(last.starts_with(r#"{"type":"welcome","id":"c","users":["c","#), "{last}");
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["users"].as_array().unwrap().len(), 2, "{last}");
    assert!(last.contains(r#""total":3,"max_text":10,"rate_limit":20,"burst":40,"resume":""#), "{last}");
    // Crossing the limit: no events, but everyone learns the list is now partial.
    c.flush_presence(&mut r);
    let got = r.take();
    assert_eq!(got.len(), 3);
    for (_, line) in &got {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!((v["type"].as_str(), v["room"].as_str()), (Some("users"), Some("lobby")), "{line}");
        assert_eq!(v["total"].as_u64(), Some(3));
        assert_eq!(v["users"].as_array().unwrap().len(), 2);
    }
    c.leave("a");
    join(&mut c, "d", 3, &mut r).unwrap();
    r.take();
    c.flush_presence(&mut r);
    assert!(r.take().is_empty(), "quiet while above the limit");
}

#[test]
fn presence_tells_the_whole_truth_again_when_the_crowd_shrinks_back_under_the_limit() {
    // The README-contract issue's case: a and b online, c joins above the limit, b leaves.
    let mut c = Chat::new(limits(2));
    let mut r = Rec::default();
    join(&mut c, "a", 0, &mut r).unwrap();
    join(&mut c, "b", 1, &mut r).unwrap();
    c.flush_presence(&mut r);
    join(&mut c, "c", 2, &mut r).unwrap();
    c.flush_presence(&mut r);
    r.take();
    // At the limit again but not an eighth below it (at least one): still quiet.
    c.leave("b");
    c.flush_presence(&mut r);
    assert_eq!(r.take(), vec![], "2 members: quiet until 1");
    c.leave("c");
    c.flush_presence(&mut r);
    let got = r.take();
    let to_a: Vec<&String> = got.iter().filter(|(t, _)| *t == 0).map(|(_, l)| l).collect();
    assert_eq!(to_a.len(), 1, "{got:?}");
    let v: serde_json::Value = serde_json::from_str(to_a[0]).unwrap();
    assert_eq!(v["type"], "users", "a leave alone would leave a believing it is alone: {v}");
    let ids: Vec<&str> = v["users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    assert_eq!((ids, v["total"].as_u64()), (vec!["a"], Some(1)));
    // Loud again: events flow.
    join(&mut c, "d", 3, &mut r).unwrap();
    c.flush_presence(&mut r);
    let to_a: Vec<String> = r.take().into_iter().filter(|(t, _)| *t == 0).map(|(_, l)| l).collect();
    assert_eq!(to_a, vec![r#"{"type":"join","room":"lobby","id":"d"}"#.to_string()]);
}

#[test]
fn a_private_message_to_a_busy_recipient_is_refused_to_its_sender_alone() {
    let (mut c, mut r) = chat_with(&["a", "b"]);
    let (_, b, p) = c.users.remove("b").unwrap();
    c.users.insert(99, b, p); // see Rec::offer
    let out = say(&mut c, &mut r, 0, "a", r#"{"to":"b","text":"hi"}"#);
    assert_eq!(out, Outcome::Refused(ErrorCode::RecipientBusy));
    let got = r.take();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 0);
    assert!(
        got[0].1.contains(r#""code":"recipient_busy""#) && got[0].1.contains(r#""to":"b""#),
        "{}",
        got[0].1
    );
}

#[test]
fn a_to_that_is_not_an_id_is_refused_and_reaches_nobody() {
    let (mut c, mut r) = chat_with(&["a", "b"]);
    for frame in [
        r#"{"to":null,"text":"secret"}"#,
        r#"{"to":"","text":"secret"}"#,
        r#"{"to":"a b","text":"secret"}"#,
        r#"{"to":5,"text":"secret"}"#,
        r#"{"to":["b"],"text":"secret"}"#,
        r#"{"to":{"id":"b"},"text":"secret"}"#,
        r#"{"to":false,"text":"secret"}"#,
    ] {
        assert_eq!(say(&mut c, &mut r, 0, "a", frame), Outcome::Refused(ErrorCode::BadMessage), "{frame}");
        let got = r.take();
        assert_eq!(got.len(), 1, "{frame}: {got:?}");
        assert_eq!(got[0].0, 0);
        assert!(!got[0].1.contains("secret"));
    }
}

#[test]
fn confusable_ids_are_one_user() {
    let (mut c, mut r) = chat_with(&["alice", "bob"]);
    for twin in ["aIice", "a1ice", "ALICE", "b0b", "B0B"] {
        assert_eq!(join(&mut c, twin, 9, &mut r), Err(ErrorCode::IdTaken), "{twin}");
    }
    // A private message finds the user under any spelling of its key.
    assert_eq!(say(&mut c, &mut r, 1, "bob", r#"{"to":"a1ice","text":"hi"}"#), Outcome::Private);
    assert!(r.take()[0].1.contains(r#""to":"alice""#));
}
