//! Server lines edited as bytes, never re-encoded: a room message numbered (`with_seq`,
//! `split_seq`, `line_seq`), a `cid` added (`has_cid`, `with_cid`), a private copy's `pseq`
//! (`with_pseq`). A line is encoded once and queued to many; these keep that true when one
//! copy must differ.

use bytes::Bytes;

/// A room message's template (encoded with seq 0) numbered `seq`.
pub fn with_seq(template: &[u8], seq: u64) -> Bytes {
    match split_seq(template) {
        Some((pre, post)) => Bytes::from([pre, seq.to_string().as_bytes(), post].concat()),
        None => Bytes::copy_from_slice(template),
    }
}

/// A room message line around its `"seq":0`: what comes before the number and after it.
pub fn split_seq(template: &[u8]) -> Option<(&[u8], &[u8])> {
    const SEQ0: &[u8] = b"\"seq\":0,";
    let at = template.windows(SEQ0.len()).position(|w| w == SEQ0)?;
    Some((&template[..at + SEQ0.len() - 2], &template[at + SEQ0.len() - 1..]))
}

/// The seq of a numbered room message line (`"seq":N` after its room).
pub fn line_seq(line: &[u8]) -> Option<u64> {
    const SEQ: &[u8] = b"\"seq\":";
    let at = line.windows(SEQ.len()).position(|w| w == SEQ)? + SEQ.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&line[at..at + digits]).ok()?.parse().ok()
}

/// Whether `line` (a server line) names a message already. Inside a JSON string a quote is
/// escaped, so `"cid":` can only be a key.
pub fn has_cid(line: &[u8]) -> bool {
    line.windows(6).any(|w| w == b"\"cid\":")
}

/// `line` with `"cid":CID` spliced in after its type (the first field): the sender's copy of
/// its message, or an error about it, carrying the client's own id for it.
pub fn with_cid(line: &[u8], cid: &str) -> Bytes {
    let mut field = b"\"cid\":".to_vec();
    serde_json::to_writer(&mut field, cid).expect("a string serializes");
    let mut out = Vec::with_capacity(line.len() + field.len() + 1);
    match line.iter().position(|b| *b == b',') {
        Some(i) => {
            out.extend_from_slice(&line[..=i]);
            out.extend_from_slice(&field);
            out.push(b',');
            out.extend_from_slice(&line[i + 1..]);
        }
        // One field or none: only ours, or ours after it.
        None => {
            let body = &line[..line.len().saturating_sub(1)];
            out.extend_from_slice(body);
            if body.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(&field);
            out.push(b'}');
        }
    }
    Bytes::from(out)
}

/// The recipient's copy of a private message: the sender's copy (`{"type":"message",...`)
/// with `"pseq":N` spliced in after its type, so a line from another node is numbered here
/// without being decoded and encoded again.
pub fn with_pseq(line: &[u8], pseq: u64) -> Bytes {
    const HEAD: &[u8] = br#"{"type":"message","#;
    let rest = line.strip_prefix(HEAD).unwrap_or(line);
    let mut out = Vec::with_capacity(line.len() + 24);
    out.extend_from_slice(HEAD);
    out.extend_from_slice(b"\"pseq\":");
    out.extend_from_slice(pseq.to_string().as_bytes());
    out.push(b',');
    out.extend_from_slice(rest);
    Bytes::from(out)
}
