//! The frame reader (`ws::Reader`).

use crate::config;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};

use chatloop::ws::{self, Event, Limits, Reader};

/// An event as an owned value, to compare runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<u16>, Vec<u8>),
}

fn own(ev: Event<'_>) -> Got {
    match ev {
        Event::Text(t) => Got::Text(t.into_owned()),
        Event::Binary(b) => Got::Binary(b.into_owned()),
        Event::Ping(b) => Got::Ping(b.into_owned()),
        Event::Pong(_) => Got::Pong,
        Event::Close(c, r) => Got::Close(c, r),
    }
}

/// Decodes `input` delivered in pieces ending at `cuts` (sorted positions), as the loop
/// does: each piece in a buffer of its own. Returns the events, how it ended, and whether
/// the reader was left idle.
pub fn decode(input: &[u8], cuts: &[usize], lim: &Limits) -> (Vec<Got>, Result<(), ws::Error>, bool) {
    let mut r = Reader::default();
    let mut got = Vec::new();
    let mut start = 0;
    let ends = cuts.iter().copied().filter(|&c| c > 0 && c < input.len()).chain([input.len()]);
    for end in ends {
        if end < start {
            continue;
        }
        let mut buf = input[start..end].to_vec();
        start = end;
        let mut pos = 0;
        loop {
            match r.next(&mut buf, &mut pos, lim) {
                Ok(Some(ev)) => got.push(own(ev)),
                Ok(None) => break,
                Err(e) => return (got, Err(e), r.is_idle()),
            }
        }
        if pos != buf.len() {
            return (got, Err(ws::Error::Protocol("input left undecoded")), false);
        }
    }
    (got, Ok(()), r.is_idle())
}

/// A client frame: header (with the mask bit as given), mask, masked payload.
pub fn client_frame(b0: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = ws::frame(b0 & 0x0f, payload);
    v[0] = b0;
    let hlen = v.len() - payload.len();
    v.truncate(hlen);
    if let Some(m) = mask {
        v[1] |= 0x80;
        v.extend_from_slice(&m);
        let mut p = payload.to_vec();
        ws::unmask(&mut p, m, 0);
        v.extend_from_slice(&p);
    } else {
        v.extend_from_slice(payload);
    }
    v
}

/// One message as a client may send it: text or binary, cut into fragments at `cuts`,
/// each frame with its own mask, and pings between fragments.
#[derive(Debug, Clone)]
pub struct Msg {
    pub text: bool,
    pub payload: Vec<u8>,
    pub cuts: Vec<usize>,
    pub masks: Vec<[u8; 4]>,
    pub pings: Vec<(usize, Vec<u8>)>,
}

pub fn msg() -> impl Strategy<Value = Msg> {
    (
        any::<bool>(),
        prop_oneof![
            "(?s).{0,40}".prop_map(String::into_bytes),
            vec(any::<u8>(), 0..300),
            (100usize..70_000).prop_map(|n| vec![b'x'; n]),
        ],
        vec(any::<usize>(), 0..4),
        vec(any::<[u8; 4]>(), 1..6),
        vec((any::<usize>(), vec(any::<u8>(), 0..126)), 0..2),
    )
        .prop_map(|(text, payload, cuts, masks, pings)| {
            // Text must be text: binary bytes become their lossy UTF-8.
            let payload =
                if text { String::from_utf8_lossy(&payload).into_owned().into_bytes() } else { payload };
            Msg { text, payload, cuts, masks, pings }
        })
}

impl Msg {
    /// The frames, and what the reader must make of them (pings first where they fall).
    pub fn frames(&self, out: &mut Vec<u8>, want: &mut Vec<Got>) {
        let n = self.payload.len();
        let mut cuts: Vec<usize> = self.cuts.iter().map(|c| c % (n + 1)).collect();
        cuts.sort();
        cuts.dedup();
        cuts.retain(|&c| c > 0 && c < n);
        let bounds: Vec<usize> = std::iter::once(0).chain(cuts).chain([n]).collect();
        let last = bounds.len() - 2;
        for (i, w) in bounds.windows(2).enumerate() {
            let op = if i > 0 {
                0x0
            } else if self.text {
                0x1
            } else {
                0x2
            };
            let fin = if i == last { 0x80 } else { 0 };
            let mask = self.masks[i % self.masks.len()];
            out.extend(client_frame(fin | op, &self.payload[w[0]..w[1]], Some(mask)));
            for (at, ping) in &self.pings {
                if at % (last + 1) == i && i < last {
                    out.extend(client_frame(0x89, ping, Some(mask)));
                    want.push(Got::Ping(ping.clone()));
                }
            }
        }
        want.push(if self.text {
            Got::Text(String::from_utf8(self.payload.clone()).expect("text"))
        } else {
            Got::Binary(self.payload.clone())
        });
    }
}

pub const LIM: Limits = Limits { max_message: 1 << 20, max_wire: u32::MAX };

/// Bytes that look like frames often enough to reach past the first header: random first
/// bytes and lengths, mostly masked, payloads of any bytes.
pub fn frame_soup() -> impl Strategy<Value = Vec<u8>> {
    vec(
        (
            prop_oneof![any::<u8>(), select(vec![0x01u8, 0x81, 0x00, 0x80, 0x82, 0x89, 0x8a, 0x88, 0x02])],
            prop_oneof![Just(None), any::<[u8; 4]>().prop_map(Some), any::<[u8; 4]>().prop_map(Some)],
            vec(any::<u8>(), 0..200),
        )
            .prop_map(|(b0, mask, payload)| client_frame(b0, &payload, mask)),
        0..8,
    )
    .prop_map(|frames| frames.concat())
}

proptest! {
    #![proptest_config(config(2000))]

    /// Arbitrary bytes never panic, whatever the limits, and split anywhere they decode the
    /// same as whole: the same events, then the same end.
    #[test]
    fn ws_arbitrary_bytes(
        input in prop_oneof![vec(any::<u8>(), 0..600), frame_soup()],
        cuts in vec(any::<Index>(), 0..8),
        max_message in prop_oneof![Just(1usize << 20), 0usize..300],
        max_wire in prop_oneof![Just(u32::MAX), 0u32..2000],
    ) {
        let lim = chatloop::ws::Limits { max_message, max_wire };
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        cuts.sort();
        let _ = decode(&input, &cuts, &lim);
        let lim = chatloop::ws::Limits { max_message, max_wire: u32::MAX };
        let whole = decode(&input, &[], &lim);
        let split = decode(&input, &cuts, &lim);
        prop_assert_eq!(&whole.0, &split.0);
        prop_assert_eq!(whole.1, split.1);
        if whole.1.is_ok() {
            prop_assert_eq!(whole.2, split.2, "idle alike");
        }
    }

    /// Messages framed any way a client may (fragments, masks, pings between fragments)
    /// decode to exactly those messages, whole or split at random points, and leave the
    /// reader holding nothing.
    #[test]
    fn ws_framed_messages_decode_exactly(
        msgs in vec(msg(), 1..5),
        cuts in vec(any::<Index>(), 0..12),
        closing in any::<Option<u16>>(),
    ) {
        let (mut input, mut want) = (Vec::new(), Vec::new());
        for m in &msgs {
            m.frames(&mut input, &mut want);
        }
        if let Some(code) = closing {
            input.extend(client_frame(0x88, &[&code.to_be_bytes()[..], b"bye"].concat(), Some([7, 7, 7, 7])));
            want.push(Got::Close(Some(code), b"bye".to_vec()));
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        cuts.sort();
        for cuts in [&[][..], &cuts[..]] {
            let (got, end, idle) = decode(&input, cuts, &LIM);
            prop_assert_eq!(end, Ok(()));
            prop_assert_eq!(&got, &want);
            prop_assert!(idle, "nothing held after the last message");
        }
    }
}
