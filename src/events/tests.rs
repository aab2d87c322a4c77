use super::*;

fn fact(n: usize) -> Fact {
    Fact::Online(Rc::from(format!("u{n}").as_str()))
}

#[test]
fn a_frame_is_exactly_the_issues_form() {
    let mut log = Log::new(10, 1 << 20);
    for _ in 0..1041 {
        log.append(&fact(0), 1);
    }
    let e = log.append(&Fact::Offline(Rc::from("alice")), 1796571499615);
    assert_eq!(
        &e.frame[..],
        b"id: 1042\nevent: offline\ndata: {\"type\":\"offline\",\"id\":\"alice\",\"ts\":1796571499615}\n\n"
    );
}

#[test]
fn each_kind_names_its_type_and_what_it_is_about() {
    let join = Fact::Join(Rc::from("dev"), Rc::from("bob")).data(5);
    assert_eq!(join, br#"{"type":"join","room":"dev","id":"bob","ts":5}"#);
    let line =
        Bytes::from_static(br#"{"type":"message","room":"dev","seq":3,"from":"bob","text":"hi","ts":7}"#);
    assert_eq!(Fact::Message(line.clone()).data(9), line.to_vec());
    let mut m = serde_json::Map::new();
    m.insert("action".into(), "ban".into());
    m.insert("id".into(), "eve".into());
    m.insert("type".into(), "not this".into());
    let v: serde_json::Value = serde_json::from_slice(&Fact::Moderation(m).data(11)).unwrap();
    assert_eq!(v, serde_json::json!({"type":"moderation","action":"ban","id":"eve","ts":11}));
}

#[test]
fn the_log_keeps_its_count_and_says_where_a_consumer_starts() {
    let mut log = Log::new(3, 1 << 20);
    assert_eq!(log.since(0), Since::From(1));
    for n in 0..5 {
        log.append(&fact(n), 1);
    }
    assert_eq!(log.kept().0, 3);
    assert_eq!(log.first_id(), 3);
    assert_eq!(log.since(2), Since::From(3));
    assert_eq!(log.since(4), Since::From(5));
    assert_eq!(log.since(5), Since::From(6));
    assert_eq!(log.since(1), Since::Gap(3));
    assert_eq!(log.since(0), Since::Gap(3));
    // An id this log never gave (another run's): what was missed cannot be known.
    assert_eq!(log.since(99), Since::Gap(6));
    log.shared_ids = true;
    assert_eq!(log.since(99), Since::From(100), "a cluster's id this node has not heard of yet");
    let ids: Vec<u64> = log.from(4).map(|e| e.id).collect();
    assert_eq!(ids, [4, 5]);
    assert_eq!(log.from(6).count(), 0);
}

#[test]
fn the_log_keeps_its_bytes_and_refuses_an_id_twice() {
    let mut log = Log::new(1000, 10 * (ENTRY_COST + 60));
    for n in 0..100 {
        log.append(&fact(n), 1);
    }
    let (count, bytes) = log.kept();
    assert!(count < 20 && bytes <= 10 * (ENTRY_COST + 60), "{count} {bytes}");
    assert!(log.insert(50, Kind::Join, b"{}").is_none());
    assert_eq!(log.insert(200, Kind::Join, b"{}").map(|e| e.id), Some(200));
    assert_eq!(log.next_id(), 201);
}

#[test]
fn types_parse_strictly() {
    let t = Types::parse(Some("online,offline")).unwrap();
    assert!(t.has(Kind::Online) && t.has(Kind::Offline) && !t.has(Kind::Message));
    assert_eq!(Types::parse(None), Ok(Types::ALL));
    assert!(Types::parse(Some("online,nope")).unwrap_err().contains("\"nope\""));
    assert!(Types::parse(Some("")).is_err());
}

#[test]
fn a_queue_that_is_off_builds_nothing() {
    let mut q = Queue::default();
    q.record(|| panic!("built while off"));
    q.set_on(true);
    q.record(|| fact(1));
    assert_eq!(q.drain().collect::<Vec<_>>(), vec![fact(1)]);
    assert!(q.is_empty());
}
