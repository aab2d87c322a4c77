//! The server's JSON lines as chatload reads them (without a JSON parser: the server's own
//! field order first), and the texts chatload's messages carry.

/// The value of a string field in one of the server's JSON lines; `key` is `"name":"`. Our
/// ids and texts never hold a quote or a backslash, so the next quote ends the value.
pub fn field<'l>(line: &'l [u8], key: &[u8]) -> Option<&'l [u8]> {
    let start = line.windows(key.len()).position(|w| w == key)? + key.len();
    let len = line[start..].iter().position(|&b| b == b'"')?;
    Some(&line[start..start + len])
}

/// `from` and `text` of a message line: a fast path for the server's field order, and a
/// search for any other.
pub fn message_fields(line: &[u8]) -> Option<(&[u8], &[u8])> {
    fn quoted(rest: &[u8]) -> Option<(&[u8], &[u8])> {
        let q = rest.iter().position(|&b| b == b'"')?;
        Some((&rest[..q], &rest[q + 1..]))
    }
    let fast = || {
        let (from, mut rest) = quoted(line.strip_prefix(br#"{"type":"message","from":""#)?)?;
        if let Some(r) = rest.strip_prefix(br#","to":""#) {
            rest = quoted(r)?.1;
        }
        let (text, _) = quoted(rest.strip_prefix(br#","text":""#)?)?;
        Some((from, text))
    };
    fast().or_else(|| Some((field(line, br#""from":""#)?, field(line, br#""text":""#)?)))
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
        let (from, text) = message_fields(line).unwrap();
        assert_eq!(from, b"cl1-m3");
        assert_eq!(parse_text(text), Some((b'p', 3, 17, 123456)));
        let other_order = br#"{"text":"r 1 2 3","ts":9,"type":"message","from":"x"}"#;
        assert_eq!(message_fields(other_order), Some((&b"x"[..], &b"r 1 2 3"[..])));
        assert_eq!(parse_text(b"hello there"), None);
        assert_eq!(parse_text(b"r 1 2"), None);
        assert_eq!(
            field(br#"{"type":"error","code":"rate_limited"}"#, br#""code":""#),
            Some(&b"rate_limited"[..])
        );
    }
}
