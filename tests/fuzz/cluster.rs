//! Cluster messages: what another node (or anything else publishing on our channels) sends.

use crate::config;
use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

/// Header fields: ids, node ids, rooms as a roster marks them, numbers, and junk with spaces
/// or bytes we never send.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9_.-]{1,8}",
        2 => "@[a-z0-9_.@-]{0,6}",
        1 => "[0-9]{1,3}",
        1 => Just(String::new()),
        1 => any::<String>().prop_map(|s| s.chars().take(6).collect()),
    ]
}

/// An id or node id as nodes send them.
fn id_token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,32}"
}

/// A room name as stored (lowercase).
fn room_token() -> impl Strategy<Value = String> {
    "[a-z0-9_.-]{1,32}"
}

proptest! {
    #![proptest_config(config(2000))]

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn cluster_payloads_never_panic(raw in vec(any::<u8>(), 0..64)) {
        let b = Bytes::from(raw);
        let _ = chatloop::cluster::Msg::parse(&b);
    }

    /// Near-valid payloads (a known kind, a few fields, maybe a body) parse only when the
    /// header is space-separated tokens in the places the kind wants, and what parses carries
    /// exactly those tokens and the body.
    #[test]
    fn cluster_payloads_parse_exactly(
        kind in select(vec!["M", "J", "L", "j", "l", "H", "B", "G", "R", "Q", "P", "E", "K", "U", "Z", "z", "y", "V", "W", "D", "X", "m"]),
        fields in vec(field(), 0..5),
        body in proptest::option::of("[ -~\n]{0,20}"),
    ) {
        use chatloop::cluster::{Msg, payload, roster_fields};
        let mut all = vec![kind];
        all.extend(fields.iter().map(String::as_str));
        let b = Bytes::from(payload(&all, body.as_deref().map(str::as_bytes)));
        let Some(m) = Msg::parse(&b) else { return Ok(()) };
        // What the header splits into, as the sender would have meant it.
        let header = all.join(" ");
        let parts: Vec<&str> = header.split(' ').collect();
        // '@' marks a room in a roster; the rule is one for every field.
        let token = |f: &str| !f.is_empty() && f.len() <= 64
            && f.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-.@".contains(&c));
        prop_assert!(parts.iter().all(|p| token(p)), "parsed a header with a non-token field: {:?}", parts);
        let line = |l: &Bytes| std::str::from_utf8(l).map(str::to_string).unwrap_or_default();
        let with_body = matches!(m, Msg::Room { .. } | Msg::Private { .. } | Msg::Disconnect { .. });
        prop_assert_eq!(with_body, body.is_some(), "a body exactly where the kind takes one");
        match m {
            Msg::Room { node, room, epoch, line: l } => {
                prop_assert_eq!(&parts[..], &["M", node, room, epoch][..]);
                prop_assert_eq!(Some(line(&l)), body);
            }
            Msg::Private { node, to, from, line: l } => {
                prop_assert_eq!(&parts[..], &["P", node, to, from][..]);
                prop_assert_eq!(Some(line(&l)), body);
            }
            Msg::RoomJoin { node, id, room } => prop_assert_eq!(&parts[..], &["j", node, id, room][..]),
            Msg::RoomLeave { node, id, room } => prop_assert_eq!(&parts[..], &["l", node, id, room][..]),
            Msg::Join { node, id } => prop_assert_eq!(&parts[..], &["J", node, id][..]),
            Msg::Leave { node, id } => prop_assert_eq!(&parts[..], &["L", node, id][..]),
            Msg::Hello { node } => prop_assert_eq!(&parts[..], &["H", node][..]),
            Msg::Bye { node } => prop_assert_eq!(&parts[..], &["G", node][..]),
            Msg::Query { node } => prop_assert_eq!(&parts[..], &["Q", node][..]),
            Msg::Bounce { to, from } => prop_assert_eq!(&parts[..], &["E", to, from][..]),
            Msg::Undelivered { to, from } => prop_assert_eq!(&parts[..], &["U", to, from][..]),
            Msg::Busy { to, from } => prop_assert_eq!(&parts[..], &["K", to, from][..]),
            Msg::Takeover { node, id, token } => prop_assert_eq!(&parts[..], &["Z", node, id, token][..]),
            Msg::Released { node, id, ok } => {
                prop_assert_eq!(&parts[..], &[if ok { "z" } else { "y" }, node, id][..])
            }
            Msg::Moderated { node, set, fields } => {
                prop_assert_eq!(&parts[..2], &[if set { "V" } else { "W" }, node][..]);
                prop_assert_eq!(&parts[2..], &fields[..]);
            }
            Msg::Disconnect { node, id, reason } => {
                prop_assert_eq!(&parts[..], &["D", node, id][..]);
                prop_assert_eq!(Some(line(&reason)), body);
            }
            Msg::Kick { node, id, room } => prop_assert_eq!(&parts[..], &["X", node, id, room][..]),
            Msg::Beat { node, count, memberships } => {
                prop_assert_eq!(&parts[..2], &["B", node][..]);
                prop_assert_eq!(parts.len(), 4);
                prop_assert_eq!(parts[2].parse::<usize>().ok(), Some(count));
                prop_assert_eq!(parts[3].parse::<usize>().ok(), Some(memberships));
            }
            Msg::Roster { node, members } => {
                prop_assert_eq!(&parts[..2], &["R", node][..]);
                // Every field after the node is an id (no '@') followed by its rooms ('@'
                // marked), so the members, written out again, are the fields again.
                prop_assert!(members.iter().all(|(id, _)| !id.starts_with('@')), "{:?}", members);
                let again = roster_fields(members.iter().cloned());
                prop_assert_eq!(&again[..], &parts[2..]);
            }
        }
    }

    /// Every message, encoded as a node encodes it, parses back to itself.
    #[test]
    fn cluster_messages_round_trip(
        node in id_token(),
        id in id_token(),
        room in room_token(),
        counts in (any::<usize>(), any::<usize>()),
        line in "[ -~\n]{0,20}",
        members in vec((id_token(), vec(room_token(), 0..3)), 0..4),
    ) {
        use chatloop::cluster::{Msg, channel_room, payload, room_channel, roster_fields};
        let (n, m) = (counts.0.to_string(), counts.1.to_string());
        let body = Bytes::from(line.clone());
        let cases: Vec<(Vec<&str>, Option<&str>, Msg<'_>)> = vec![
            (vec!["M", &node, &room, &id], Some(&line), Msg::Room { node: &node, room: &room, epoch: &id, line: body.clone() }),
            (vec!["j", &node, &id, &room], None, Msg::RoomJoin { node: &node, id: &id, room: &room }),
            (vec!["l", &node, &id, &room], None, Msg::RoomLeave { node: &node, id: &id, room: &room }),
            (vec!["B", &node, &n, &m], None, Msg::Beat { node: &node, count: counts.0, memberships: counts.1 }),
            (vec!["P", &node, &id, &id], Some(&line), Msg::Private { node: &node, to: &id, from: &id, line: body.clone() }),
            (vec!["D", &node, &id], Some(&line), Msg::Disconnect { node: &node, id: &id, reason: body.clone() }),
            (vec!["X", &node, &id, &room], None, Msg::Kick { node: &node, id: &id, room: &room }),
            (vec!["V", &node, "b", &id, &n], None, Msg::Moderated { node: &node, set: true, fields: vec!["b", &id, &n] }),
        ];
        for (fields, body, want) in cases {
            let b = Bytes::from(payload(&fields, body.map(str::as_bytes)));
            prop_assert_eq!(Msg::parse(&b), Some(want));
        }
        let members: Vec<(&str, Vec<&str>)> =
            members.iter().map(|(id, rooms)| (id.as_str(), rooms.iter().map(String::as_str).collect())).collect();
        let fields = roster_fields(members.iter().cloned());
        let mut all = vec!["R", node.as_str()];
        all.extend(fields.iter().map(String::as_str));
        let b = Bytes::from(payload(&all, None));
        prop_assert_eq!(Msg::parse(&b), Some(Msg::Roster { node: &node, members }));
        let channel = room_channel(&room);
        prop_assert_eq!(channel_room(&channel), Some(room.as_str()));
    }
}
