//! Server-Sent Events framing (WHATWG HTML, "Server-sent events"): what goes on the wire.

use bytes::Bytes;

/// A comment line with nothing in it but a name: proxies see bytes, clients ignore it.
pub const KEEPALIVE_LINE: &[u8] = b": ping\n\n";

/// One event: `id: N`, `event: TYPE`, `data: JSON`, and the blank line that ends it. `data`
/// is one JSON object, so it holds no newline (JSON escapes them).
pub fn frame(id: u64, kind: &str, data: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(data.len() + kind.len() + 40);
    b.extend_from_slice(b"id: ");
    b.extend_from_slice(id.to_string().as_bytes());
    b.extend_from_slice(b"\nevent: ");
    b.extend_from_slice(kind.as_bytes());
    b.extend_from_slice(b"\ndata: ");
    b.extend_from_slice(data);
    b.extend_from_slice(b"\n\n");
    Bytes::from(b)
}

/// The event a consumer gets when the log no longer reaches its `Last-Event-ID`: the first id
/// it still has (`first`). It has no `id:` line, so a client's last id stays the one it had.
pub fn gap(first: u64, ts: u64) -> Bytes {
    let data = serde_json::json!({ "type": "gap", "first": first, "ts": ts });
    let mut b = b"event: gap\ndata: ".to_vec();
    b.extend_from_slice(data.to_string().as_bytes());
    b.extend_from_slice(b"\n\n");
    Bytes::from(b)
}

/// The stream's first line: how long a client waits before reconnecting (`retry:`, ms).
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}
