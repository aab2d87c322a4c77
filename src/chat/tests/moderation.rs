//! Chat's unit tests of moderation (issue 25): the state's deadlines, bounds and text form,
//! and the actions on users (mutes refusing messages, kicks, holds dropped).

use super::super::moderation::*;
use super::*;

/// An id key, as moderation keeps them (`ids::key`: `alice` is `allce`).
fn id(s: &str) -> Rc<str> {
    Rc::from(ids::key(s))
}

fn ban(who: &str, until: u64) -> Decision {
    Decision::Ban { id: id(who), until }
}

#[test]
fn a_ban_lasts_until_its_deadline_and_is_dropped_from_the_front_of_the_index() {
    let mut m = Moderation::default();
    m.apply(&ban("alice", 1_000), 0).unwrap();
    m.apply(&ban("bob", 2_000), 0).unwrap();
    assert_eq!(m.banned(&id("alice"), 999), Some(1_000));
    assert_eq!(m.banned(&id("alice"), 1_000), None, "over at its deadline, swept or not");
    assert_eq!(m.banned(&id("carol"), 0), None);
    // Banned again: the new deadline stands, shorter or not.
    m.apply(&ban("bob", 1_500), 0).unwrap();
    assert_eq!(m.banned(&id("bob"), 1_499), Some(1_500));
    assert!(!m.expire(1_200), "nothing more to drop");
    assert_eq!(m.counts(), (1, 0, 0), "alice dropped, bob kept");
    m.expire(1_500);
    assert_eq!(m.counts(), (0, 0, 0));
    // Already over: not kept at all. Unban lifts at once.
    m.apply(&ban("dave", 10), 10).unwrap();
    assert_eq!(m.counts(), (0, 0, 0));
    m.apply(&ban("erin", 100), 0).unwrap();
    assert!(m.lift(&Lift::Unban { id: id("erin") }));
    assert!(!m.lift(&Lift::Unban { id: id("erin") }), "nothing left to lift");
    assert_eq!(m.banned(&id("erin"), 0), None);
}

#[test]
fn a_full_kind_refuses_a_new_entry_until_an_old_one_expires_and_keeps_every_old_one() {
    let mut m = Moderation::default();
    for i in 0..MAX_BANS {
        m.apply(&ban(&format!("u{i}"), 1_000 + i as u64), 0).unwrap();
    }
    assert_eq!(m.apply(&ban("late", 5_000), 0), Err(Full));
    assert_eq!(m.banned(&id("u0"), 999), Some(1_000), "no earlier ban given up for it");
    // A ban of an id already banned is no new entry.
    m.apply(&ban("u5", 9_000), 0).unwrap();
    // Once the earliest has passed, it makes room (dropped by the insert's own expiry).
    m.apply(&ban("late", 5_000), 1_000).unwrap();
    assert_eq!(m.banned(&id("late"), 1_000), Some(5_000));
    assert_eq!(m.counts().0, MAX_BANS);
}

#[test]
fn mutes_per_room_and_global_decide_each_message_and_unmute_lifts_one_or_all() {
    let mut m = Moderation::default();
    let mute =
        |room: Option<&str>, until| Decision::Mute { id: id("alice"), room: room.map(Rc::from), until };
    m.apply(&mute(Some("dev"), 500), 0).unwrap();
    assert_eq!(m.muted(&id("alice"), Some("dev"), 0), Some(500));
    assert_eq!(m.muted(&id("alice"), Some("lobby"), 0), None);
    assert_eq!(m.muted(&id("alice"), None, 0), None, "a room mute leaves private messages alone");
    m.apply(&mute(None, 300), 0).unwrap();
    assert_eq!(m.muted(&id("alice"), Some("lobby"), 0), Some(300));
    assert_eq!(m.muted(&id("alice"), None, 0), Some(300));
    assert_eq!(m.muted(&id("alice"), Some("dev"), 0), Some(500), "the later of the two");
    assert_eq!(m.muted(&id("alice"), Some("dev"), 300), Some(500), "the global one is over");
    assert_eq!(m.counts().1, 2);
    assert!(m.lift(&Lift::Unmute { id: id("alice"), room: Some(Rc::from("dev")) }));
    assert_eq!(m.muted(&id("alice"), Some("dev"), 0), Some(300), "the global one stays");
    m.apply(&mute(Some("dev"), 500), 0).unwrap();
    assert!(m.lift(&Lift::Unmute { id: id("alice"), room: None }), "every mute of alice");
    assert_eq!((m.muted(&id("alice"), Some("dev"), 0), m.counts().1), (None, 0));
    // Expiry takes a mute out of the id's list too.
    m.apply(&mute(Some("a"), 10), 0).unwrap();
    m.apply(&mute(Some("b"), 20), 0).unwrap();
    m.expire(10);
    assert_eq!((m.muted(&id("alice"), Some("a"), 0), m.muted(&id("alice"), Some("b"), 0)), (None, Some(20)));
    m.expire(20);
    assert_eq!(m.counts().1, 0);
    // An id has at most MUTED_ROOMS_PER_ID room mutes.
    for i in 0..MUTED_ROOMS_PER_ID {
        m.apply(&mute(Some(&format!("r{i}")), 100), 0).unwrap();
    }
    assert_eq!(m.apply(&mute(Some("one-more"), 100), 0), Err(Full));
    m.apply(&mute(None, 100), 0).expect("a global mute is not a room mute");
}

#[test]
fn a_revocation_refuses_tokens_issued_before_its_moment_and_one_without_iat() {
    let mut m = Moderation::default();
    let revoke = |before, until| Decision::Revoke { id: id("alice"), before, until };
    m.apply(&revoke(1_000, 10_000), 0).unwrap();
    assert!(m.revoked(&id("alice"), Some(999), 0));
    assert!(!m.revoked(&id("alice"), Some(1_000), 0), "issued at the moment: not before it");
    assert!(m.revoked(&id("alice"), None, 0), "no iat counts as issued before");
    assert!(!m.revoked(&id("bob"), None, 0));
    // Again with an earlier moment: the later one stands (a revocation never un-revokes).
    m.apply(&revoke(500, 5_000), 0).unwrap();
    assert!(m.revoked(&id("alice"), Some(999), 9_999));
    assert!(!m.revoked(&id("alice"), Some(999), 10_000), "kept until its deadline only");
    m.forget(&revoke(0, 0));
    assert!(!m.revoked(&id("alice"), None, 0), "forgotten");
    assert_eq!(m.counts(), (0, 0, 0));
}

#[test]
fn entries_travel_as_text_and_junk_is_refused() {
    let all = [
        ban("alice", 5),
        Decision::Mute { id: id("bob"), room: Some(Rc::from("dev")), until: 6 },
        Decision::Mute { id: id("bob"), room: None, until: 7 },
        Decision::Revoke { id: id("carol"), before: 3, until: 8 },
    ];
    for e in &all {
        let f = e.fields();
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        assert_eq!(Decision::parse(&f).as_ref(), Some(e), "{f:?}");
    }
    assert_eq!(all[1].redis_field(), ("m bob dev".to_string(), "6".to_string()));
    assert_eq!(all[3].redis_field(), ("r carol".to_string(), "8 3".to_string()));
    // Ids are folded as everywhere else: a ban of A1ice is one of alice.
    assert_eq!(Decision::parse(&["b", "A1ice", "5"]), Some(ban("alice", 5)));
    for junk in [&["b", "a b", "5"][..], &["b", "al", "x"], &["m", "al", "Not A Room", "1"], &["q"], &[]] {
        assert_eq!(Decision::parse(junk), None, "{junk:?}");
    }
    for l in [
        Lift::Unban { id: id("al") },
        Lift::Unmute { id: id("al"), room: None },
        Lift::Unmute { id: id("al"), room: Some(Rc::from("dev")) },
    ] {
        let f = l.fields();
        let f: Vec<&str> = f.iter().map(String::as_str).collect();
        assert_eq!(Lift::parse(&f).as_ref(), Some(&l));
    }
    let mut m = Moderation::default();
    let refused = m.load(all.into_iter().chain([ban("gone", 1)]), 2);
    assert_eq!((refused, m.counts()), (0, (1, 2, 1)), "what is over is not loaded");
}

#[test]
fn a_muted_user_still_reads_and_its_messages_are_refused_with_until_room_and_cid() {
    let (mut c, mut r) = chat_with(&["alice", "bob"]);
    let mute = Decision::Mute { id: id("alice"), room: Some(Rc::from("lobby")), until: 1_000 };
    c.moderation_mut().apply(&mute, 0).unwrap();
    assert_eq!(
        say(&mut c, &mut r, 0, "alice", r#"{"text":"hi","cid":"c1"}"#),
        Outcome::Refused(ErrorCode::Muted)
    );
    assert_eq!(
        r.take(),
        vec![(0, r#"{"type":"error","cid":"c1","code":"muted","message":"you are muted: your messages are refused until the time in until (Unix ms)","room":"lobby","until":1000}"#.to_string())]
    );
    // Private messages pass a room mute; bob's messages reach alice.
    assert_eq!(say(&mut c, &mut r, 0, "alice", r#"{"to":"bob","text":"psst"}"#), Outcome::Private);
    r.take();
    say(&mut c, &mut r, 1, "bob", r#"{"text":"hello"}"#);
    assert_eq!(r.sorted().iter().filter(|(t, _)| *t == 0).count(), 1, "alice still reads");
    // A global mute refuses private messages too, naming the recipient.
    c.moderation_mut().apply(&Decision::Mute { id: id("alice"), room: None, until: 2_000 }, 0).unwrap();
    assert_eq!(
        say(&mut c, &mut r, 0, "alice", r#"{"to":"bob","text":"psst"}"#),
        Outcome::Refused(ErrorCode::Muted)
    );
    let got = r.take();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].1.contains(r#""code":"muted""#) && got[0].1.contains(r#""to":"bob","until":2000"#),
        "{got:?}"
    );
    // `say` stamps ts 5: a mute over by then refuses nothing.
    c.moderation_mut().lift(&Lift::Unmute { id: id("alice"), room: None });
    c.moderation_mut().apply(&Decision::Mute { id: id("alice"), room: None, until: 5 }, 0).unwrap();
    assert!(matches!(say(&mut c, &mut r, 0, "alice", r#"{"text":"free"}"#), Outcome::Room { .. }));
}

#[test]
fn a_kick_takes_a_user_out_of_one_room_it_is_told_and_the_others_see_a_leave() {
    let (mut c, mut r) = chat_with(&["alice", "bob"]);
    say(&mut c, &mut r, 0, "alice", r#"{"join":"dev"}"#);
    say(&mut c, &mut r, 1, "bob", r#"{"join":"dev"}"#);
    c.flush_presence(&mut r);
    r.take();
    let k = c.kick("ALICE", "Dev", &mut r).unwrap();
    assert_eq!((&*k.room, &*k.id, k.last_local), ("dev", "alice", false));
    c.flush_presence(&mut r);
    assert_eq!(
        r.sorted(),
        vec![
            (0, r#"{"type":"left","room":"dev","kicked":true}"#.to_string()),
            (1, r#"{"type":"leave","room":"dev","id":"alice"}"#.to_string()),
        ]
    );
    assert_eq!(
        say(&mut c, &mut r, 0, "alice", r#"{"room":"dev","text":"x"}"#),
        Outcome::Refused(ErrorCode::NotInRoom)
    );
    assert_eq!(c.kick("alice", "dev", &mut r), None, "not a member any more");
    assert_eq!(c.kick("nobody", "lobby", &mut r), None);
    // In its grace: it leaves the room now and comes back without it.
    r.take();
    c.lose("bob", [1; 16], now() + Duration::from_secs(60));
    let k = c.kick("bob", "dev", &mut r).unwrap();
    assert!(k.last_local, "dev is empty here now");
    c.flush_presence(&mut r);
    let (_, resumed) = c.join("bob", 7, &[2; 16], Some(&[1; 16]), 0, now(), &mut r).unwrap();
    assert!(resumed);
    assert_eq!(
        say(&mut c, &mut r, 7, "bob", r#"{"room":"dev","text":"x"}"#),
        Outcome::Refused(ErrorCode::NotInRoom)
    );
}

#[test]
fn a_dropped_hold_cannot_be_resumed_and_its_rooms_see_it_leave() {
    let (mut c, mut r) = chat_with(&["alice", "bob"]);
    c.lose("alice", [1; 16], now() + Duration::from_secs(60));
    c.flush_presence(&mut r);
    r.take();
    let gone = c.drop_hold("Alice", &mut r).unwrap();
    assert_eq!(&*gone.id, "alice");
    c.flush_presence(&mut r);
    assert_eq!(r.take(), vec![(1, r#"{"type":"leave","room":"lobby","id":"alice"}"#.to_string())]);
    let (_, resumed) = c.join("alice", 5, &[2; 16], Some(&[1; 16]), 0, now(), &mut r).unwrap();
    assert!(!resumed, "a fresh session: the hold is gone");
    assert!(c.drop_hold("bob", &mut r).is_none(), "connected: no hold to drop");
}

/// Resident bytes per entry of each kind, at its bound (ARCHITECTURE.md's Memory model):
/// `cargo test --release --lib moderation_memory -- --ignored --nocapture`.
#[test]
#[ignore]
fn moderation_memory() {
    fn rss() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm.split(' ').nth(1).unwrap().parse::<usize>().unwrap() * 4096
    }
    let mut m = Moderation::default();
    let before = rss();
    for i in 0..MAX_BANS {
        m.apply(&ban(&format!("user-{i:08}"), 1_000_000 + i as u64), 0).unwrap();
    }
    let bans = rss();
    for i in 0..MAX_MUTES {
        let e = Decision::Mute {
            id: id(&format!("user-{i:08}")),
            room: Some(Rc::from("lobby")),
            until: 9 + i as u64,
        };
        m.apply(&e, 0).unwrap();
    }
    let mutes = rss();
    for i in 0..MAX_REVOKED {
        m.apply(&Decision::Revoke { id: id(&format!("user-{i:08}")), before: 5, until: 9 + i as u64 }, 0)
            .unwrap();
    }
    let revoked = rss();
    println!(
        "bytes per entry (13-character ids): ban {}, room mute {}, revocation {}",
        (bans - before) / MAX_BANS,
        (mutes - bans) / MAX_MUTES,
        (revoked - mutes) / MAX_REVOKED
    );
    assert_eq!(m.counts(), (MAX_BANS, MAX_MUTES, MAX_REVOKED));
}
