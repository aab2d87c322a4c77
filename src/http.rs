//! HTTP/1.1 requests in, responses out: httparse for parsing, no I/O here.
//!
//! Every connection starts as an HTTP request. The parsed request decides the route: a file
//! of the page, `/healthz`, `/metrics`, or a WebSocket upgrade on `/ws` (and `/echo` when
//! mounted). Anything else gets a status with a one-line reason and the connection closes,
//! so a body or a pipelined second request can never desync anything.

use bytes::Bytes;

/// Request heads larger than this get 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Header lines parsed at most; more get 431 too.
pub const MAX_HEADERS: usize = 32;

/// The parts of a request that routing and the upgrade need, owned so the read buffer can move.
#[derive(Debug, Default, PartialEq)]
pub struct Request {
    pub method: String,
    /// The request target as sent, query included.
    pub target: String,
    pub host: Option<String>,
    pub origin: Option<String>,
    pub upgrade_websocket: bool,
    pub connection_upgrade: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// The value of `name` in the query string, percent-decoded. `None` when absent or undecodable.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query().split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if k != name {
                return None;
            }
            let v = v.replace('+', " ");
            percent_decode(&v).and_then(|b| String::from_utf8(b).ok())
        })
    }

    pub fn is_upgrade(&self) -> bool {
        self.upgrade_websocket
    }
}

/// Outcome of feeding the bytes read so far to the parser.
#[derive(Debug, PartialEq)]
pub enum Parse {
    /// The head is not complete yet.
    Partial,
    /// A complete head of `len` bytes; anything after it belongs to the next protocol.
    Done(Request, usize),
    /// The request cannot be served: answer with this status.
    Fail(Status),
}

/// The statuses chatloop answers with, each with its reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok = 200,
    BadRequest = 400,
    Forbidden = 403,
    NotFound = 404,
    MethodNotAllowed = 405,
    UpgradeRequired = 426,
    HeadersTooLarge = 431,
    Unavailable = 503,
}

impl Status {
    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::UpgradeRequired => "Upgrade Required",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::Unavailable => "Service Unavailable",
        }
    }
}

/// Parses a request head from `buf`.
pub fn parse(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parse::Fail(Status::HeadersTooLarge);
        }
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Parse::Fail(Status::HeadersTooLarge);
        }
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return Parse::Fail(Status::HeadersTooLarge),
        Err(_) => return Parse::Fail(Status::BadRequest),
    };
    if req.version != Some(1) {
        // HTTP/1.0 has no Host and no upgrade; nothing we serve needs it.
        return Parse::Fail(Status::BadRequest);
    }
    let mut out = Request {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        ..Request::default()
    };
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Parse::Fail(Status::BadRequest);
        };
        let value = value.trim();
        let name = h.name;
        let once = |slot: &mut Option<String>| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(value.to_string());
            true
        };
        let unique = if name.eq_ignore_ascii_case("host") {
            once(&mut out.host)
        } else if name.eq_ignore_ascii_case("origin") {
            once(&mut out.origin)
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            once(&mut out.ws_key)
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            once(&mut out.ws_version)
        } else {
            if name.eq_ignore_ascii_case("upgrade") {
                out.upgrade_websocket |= has_token(value, "websocket");
            } else if name.eq_ignore_ascii_case("connection") {
                out.connection_upgrade |= has_token(value, "upgrade");
            }
            true
        };
        if !unique {
            // Two Hosts or two keys are a smuggling attempt or a broken client.
            return Parse::Fail(Status::BadRequest);
        }
    }
    Parse::Done(out, len)
}

fn has_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Decodes `%XX` escapes; `None` for a malformed escape.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A Sec-WebSocket-Key must be the base64 of 16 bytes (RFC 6455, 4.1).
pub fn valid_ws_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b.ends_with(b"==")
        && b[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// Gorilla's default: an Origin must name the same host:port as Host, unless allowed.
/// No Origin at all (a non-browser client) is fine.
pub fn origin_allowed(req: &Request, allowed: &[String]) -> bool {
    let Some(origin) = req.origin.as_deref() else {
        return true;
    };
    if allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    match (authority, req.host.as_deref()) {
        (Some(a), Some(host)) => a.eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// A complete response that closes the connection. `head_only` answers HEAD.
pub fn response(status: Status, content_type: &str, extra: &str, body: &[u8], head_only: bool) -> Bytes {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
         X-Content-Type-Options: nosniff\r\nCache-Control: no-cache\r\n{}\r\n",
        status as u16,
        status.reason(),
        content_type,
        body.len(),
        extra
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    Bytes::from(out)
}

/// A plain-text error response carrying a one-line reason.
pub fn error(status: Status, why: &str) -> Bytes {
    let extra = if status == Status::UpgradeRequired { "Sec-WebSocket-Version: 13\r\n" } else { "" };
    response(status, "text/plain; charset=utf-8", extra, format!("{why}\n").as_bytes(), false)
}

/// The 101 that completes a WebSocket handshake.
pub fn switching_protocols(key: &str) -> Bytes {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(raw: &str) -> Request {
        match parse(raw.as_bytes()) {
            Parse::Done(r, n) => {
                assert_eq!(n, raw.find("\r\n\r\n").unwrap() + 4);
                r
            }
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    macro_rules! fails {
        ($($name:ident: $raw:expr => $status:expr;)*) => {$(
            #[test]
            fn $name() {
                assert_eq!(parse($raw.as_ref()), Parse::Fail($status));
            }
        )*};
    }

    fails! {
        garbage_request_line: "HELLO\r\n\r\n" => Status::BadRequest;
        space_in_target: "GET /a b HTTP/1.1\r\n\r\n" => Status::BadRequest;
        http_1_0: "GET / HTTP/1.0\r\n\r\n" => Status::BadRequest;
        bad_header_name: "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n" => Status::BadRequest;
        two_hosts: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" => Status::BadRequest;
        too_many_headers: format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(MAX_HEADERS + 1)) => Status::HeadersTooLarge;
        head_too_large: format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD)) => Status::HeadersTooLarge;
        partial_too_large: format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD + 1)) => Status::HeadersTooLarge;
    }

    #[test]
    fn partial_until_blank_line() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n"), Parse::Partial);
        assert_eq!(parse(b""), Parse::Partial);
    }

    #[test]
    fn upgrade_request_fields() {
        let r = done(
            "GET /ws?id=al%69ce&x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: WebSocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nOrigin: http://127.0.0.1:8080\r\n\r\n",
        );
        assert_eq!(r.path(), "/ws");
        assert_eq!(r.query_param("id").as_deref(), Some("alice"));
        assert_eq!(r.query_param("nope"), None);
        assert!(r.upgrade_websocket && r.connection_upgrade);
        assert!(valid_ws_key(r.ws_key.as_deref().unwrap()));
        assert_eq!(r.ws_version.as_deref(), Some("13"));
        assert!(origin_allowed(&r, &[]));
    }

    #[test]
    fn trailing_bytes_are_not_part_of_the_head() {
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x81\x85";
        match parse(raw) {
            Parse::Done(_, n) => assert_eq!(n, raw.len() - 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn origin_rules() {
        let mut r = Request { host: Some("Example.com:80".into()), ..Request::default() };
        assert!(origin_allowed(&r, &[]), "no Origin is a non-browser client");
        r.origin = Some("http://example.com:80".into());
        assert!(origin_allowed(&r, &[]));
        r.origin = Some("http://evil.com".into());
        assert!(!origin_allowed(&r, &[]));
        assert!(origin_allowed(&r, &["http://evil.com".into()]));
        assert!(origin_allowed(&r, &["*".into()]));
        r.origin = Some("null".into());
        assert!(!origin_allowed(&r, &[]));
    }

    #[test]
    fn ws_keys() {
        assert!(valid_ws_key("dGhlIHNhbXBsZSBub25jZQ=="));
        for bad in
            ["", "abc", "dGhlIHNhbXBsZSBub25jZQ=", "dGhlIHNhbXBsZSBub25j!Q==", "dGhlIHNhbXBsZSBub25jZQAA"]
        {
            assert!(!valid_ws_key(bad), "{bad}");
        }
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        let r = switching_protocols("dGhlIHNhbXBsZSBub25jZQ==");
        assert!(
            std::str::from_utf8(&r)
                .unwrap()
                .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n")
        );
    }

    #[test]
    fn responses() {
        let r = response(Status::Ok, "text/plain", "", b"hello", true);
        let s = std::str::from_utf8(&r).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("Content-Length: 5\r\n"));
        assert!(s.ends_with("\r\n\r\n"), "HEAD has no body");
        let s = String::from_utf8(error(Status::UpgradeRequired, "v13 only").to_vec()).unwrap();
        assert!(s.contains("Sec-WebSocket-Version: 13\r\n") && s.ends_with("v13 only\n"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2e%2E/%00").unwrap(), b"a../\0");
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
    }
}
