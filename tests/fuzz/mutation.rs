//! Mutations, shared by the HTTP and JSON generators: byte edits of a generated or corpus input.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};

#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
    /// Copies a slice of the input to another place (repeats a header, a segment, a key).
    Splice(Index, Index, usize),
}

/// Byte strings that tend to matter to parsers, for insertion.
#[rustfmt::skip]
const INTERESTING: &[&[u8]] = &[
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\0", b" ", b"\t", b":", b"%", b"%2e", b"%2f", b"%5c", b"%00",
    b"%%", b"..", b"/", b"//", b"\\", b"?", b"&", b"=", b"+", b"#", b"\xff", b"\xc0\xae", b"\xe2\x80\xa8",
    b"Host: x\r\n", b"\r\n folded", b"\"", b"\\u0000", b"\\ud800", b"{", b"}", b"[", b"]", b",", b"null",
];

pub(crate) fn mutation() -> impl Strategy<Value = Mutation> {
    let insert = prop_oneof![
        3 => select(INTERESTING).prop_map(|b| b.to_vec()),
        1 => vec(any::<u8>(), 1..6),
    ];
    prop_oneof![
        3 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        4 => (any::<Index>(), insert).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), 1..12usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<Index>(), 1..40usize).prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
    ]
}

pub(crate) fn mutate(buf: &mut Vec<u8>, muts: &[Mutation]) {
    for m in muts {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len + 1) };
        match m {
            Mutation::Set(i, b) if !buf.is_empty() => {
                let i = i.index(buf.len());
                buf[i] = *b;
            }
            Mutation::Set(..) => {}
            Mutation::Insert(i, bytes) => {
                let i = at(i, buf.len());
                buf.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let i = at(i, buf.len());
                let end = (i + n).min(buf.len());
                buf.drain(i..end);
            }
            Mutation::Truncate(i) => buf.truncate(at(i, buf.len())),
            Mutation::Splice(from, to, n) if !buf.is_empty() => {
                let from = from.index(buf.len());
                let piece = buf[from..(from + n).min(buf.len())].to_vec();
                let to = at(to, buf.len());
                buf.splice(to..to, piece);
            }
            Mutation::Splice(..) => {}
        }
    }
}

/// None at all with odds `clean` to 1, else one to three.
pub(crate) fn mutations_or_none(clean: u32) -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![clean => Just(Vec::new()), 1 => vec(mutation(), 1..4)]
}

pub(crate) fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    mutations_or_none(1)
}
