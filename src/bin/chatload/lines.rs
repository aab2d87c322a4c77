//! The server's JSON lines as chatload reads them (without a JSON parser: the server's own
//! field order first), and the texts chatload's messages carry.

/// The value of a string field in one of the server's JSON lines; `key` is `"name":"`. Our
/// ids and texts never hold a quote or a backslash, so the next quote ends the value.
pub fn field<'l>(line: &'l [u8], key: &[u8]) -> Option<&'l [u8]> {
    let start = line.windows(key.len()).position(|w| w == key)? + key.len();
    let len = line[start..].iter().position(|&b| b == b'"')?;
    Some(&line[start..start + len])
}

/// The fields of a message line chatload checks.
#[derive(Debug, PartialEq, Eq)]
pub struct MessageLine<'l> {
    /// `Some` for a room message (`"lobby"` included), `None` for a private one.
    pub room: Option<&'l [u8]>,
    pub from: &'l [u8],
    pub text: &'l [u8],
}

/// `room`, `from` and `text` of a message line: a fast path for the server's field order
/// (`type`, then `pseq`, `room` or `seq` if present, `from`, `to` if present, `text`), and a
/// search for any other.
pub fn message_fields(line: &[u8]) -> Option<MessageLine<'_>> {
    fn quoted(rest: &[u8]) -> Option<(&[u8], &[u8])> {
        let q = rest.iter().position(|&b| b == b'"')?;
        Some((&rest[..q], &rest[q + 1..]))
    }
    /// After `"key":`, a number and its comma.
    fn skip_number(rest: &[u8]) -> Option<&[u8]> {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        rest[digits..].strip_prefix(b",")
    }
    let fast = || {
        let mut rest = line.strip_prefix(br#"{"type":"message","#)?;
        let mut room = None;
        if let Some(r) = rest.strip_prefix(br#""pseq":"#) {
            rest = skip_number(r)?;
        }
        if let Some(r) = rest.strip_prefix(br#""room":""#) {
            let (name, r) = quoted(r)?;
            room = Some(name);
            rest = r.strip_prefix(b",")?;
        }
        if let Some(r) = rest.strip_prefix(br#""seq":"#) {
            rest = skip_number(r)?;
        }
        let (from, mut rest) = quoted(rest.strip_prefix(br#""from":""#)?)?;
        if let Some(r) = rest.strip_prefix(br#","to":""#) {
            rest = quoted(r)?.1;
        }
        let (text, _) = quoted(rest.strip_prefix(br#","text":""#)?)?;
        Some(MessageLine { room, from, text })
    };
    fast().or_else(|| {
        Some(MessageLine {
            room: field(line, br#""room":""#),
            from: field(line, br#""from":""#)?,
            text: field(line, br#""text":""#)?,
        })
    })
}

pub fn number<T: std::str::FromStr>(b: &[u8]) -> Option<T> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// "<kind> <sender> <seq> <ns>[padding]" -> its parts.
pub fn parse_text(text: &[u8]) -> Option<(u8, usize, u64, u64)> {
    let mut it = text.split(|&b| b == b' ');
    let kind = match it.next()? {
        b"r" => b'r',
        b"p" => b'p',
        _ => return None,
    };
    let sender = number(it.next()?)?;
    let seq = number(it.next()?)?;
    let ns = it.next()?;
    let digits = ns.iter().take_while(|b| b.is_ascii_digit()).count();
    Some((kind, sender, seq, number(&ns[..digits])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_texts() {
        let line = br#"{"type":"message","from":"cl1-m3","to":"cl1-m2","text":"p 3 17 123456xxxx","ts":9}"#;
        let m = message_fields(line).unwrap();
        assert_eq!((m.room, m.from), (None, &b"cl1-m3"[..]));
        assert_eq!(parse_text(m.text), Some((b'p', 3, 17, 123456)));
        // The server's lines as they are: room messages with their number, private copies
        // to the recipient with theirs.
        let room = br#"{"type":"message","room":"r7","seq":42,"from":"cl1-m7","text":"r 7 0 5","ts":9}"#;
        let want = MessageLine { room: Some(b"r7"), from: b"cl1-m7", text: b"r 7 0 5" };
        assert_eq!(message_fields(room), Some(want));
        let private = br#"{"type":"message","pseq":7,"from":"cl1-m3","to":"cl1-m2","text":"p 3 1 5","ts":9}"#;
        let want = MessageLine { room: None, from: b"cl1-m3", text: b"p 3 1 5" };
        assert_eq!(message_fields(private), Some(want));
        let room = br#"{"type":"message","room":"r7","from":"cl1-m7","text":"r 7 0 5","ts":9}"#;
        assert_eq!(message_fields(room).unwrap().room, Some(&b"r7"[..]));
        let other_order = br#"{"text":"r 1 2 3","ts":9,"type":"message","from":"x"}"#;
        let want = MessageLine { room: None, from: b"x", text: b"r 1 2 3" };
        assert_eq!(message_fields(other_order), Some(want));
        let other_order = br#"{"from":"x","text":"r 1 2 3","room":"lobby","type":"message"}"#;
        assert_eq!(message_fields(other_order).unwrap().room, Some(&b"lobby"[..]));
        assert_eq!(parse_text(b"hello there"), None);
        assert_eq!(parse_text(b"r 1 2"), None);
        assert_eq!(
            field(br#"{"type":"error","code":"rate_limited"}"#, br#""code":""#),
            Some(&b"rate_limited"[..])
        );
    }
}
