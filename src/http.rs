//! HTTP/1.1 requests in, responses out: httparse for parsing, no I/O here.
//!
//! Every connection starts as an HTTP request. The parsed request decides the route: a file
//! of the page, `/healthz`, `/metrics`, or a WebSocket upgrade on `/ws` (and `/echo` when
//! mounted). Anything else gets a status with a one-line reason and the connection closes,
//! so a body or a pipelined second request can never desync anything.
//!
//! `Host` and `Origin` are compared here as values, not strings: a page on another site can
//! rebind its own name to 127.0.0.1 (DNS rebinding), so a loopback server must check that the
//! name the browser used is one of its own (`host_allowed`), and an Origin counts only as
//! `http`/`https` scheme, host and port (`origin_allowed`).

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
    /// The `Authorization` header's value (a `Bearer` token in `--auth token`). Never logged.
    pub authorization: Option<String>,
    /// A `Content-Length` other than 0, or any `Transfer-Encoding`: the request says a body
    /// follows. Ignored (and discarded) on a plain GET; an upgrade with one is refused.
    pub body: bool,
    /// `Content-Length` as given (None: absent); a malformed or repeated one is refused.
    pub content_length: Option<u64>,
    /// Any `Transfer-Encoding` (chunked or not): the body's length is not known up front.
    pub chunked: bool,
    /// The `Content-Type` header's value.
    pub content_type: Option<String>,
    /// `Connection: close`: the client wants no further request on this connection.
    pub close: bool,
    /// `Expect: 100-continue`: the client waits for a `100 Continue` before its body (curl
    /// does for bodies over 1 KiB).
    pub expect_continue: bool,
    /// `Last-Event-ID`: where an event stream consumer left off (`GET /api/events`).
    pub last_event_id: Option<String>,
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

    /// How often `name` appears in the query string (a client that names one twice means
    /// something the server cannot guess).
    pub fn query_count(&self, name: &str) -> usize {
        self.query().split('&').filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) == name).count()
    }

    pub fn is_upgrade(&self) -> bool {
        self.upgrade_websocket
    }
}

/// Outcome of feeding the bytes read so far to the parser.
#[derive(Debug, PartialEq)]
// A `Parse` lives on the stack for one call; boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum Parse {
    /// The head is not complete yet.
    Partial,
    /// A complete head of `len` bytes; anything after it belongs to the next protocol.
    Done(Request, usize),
    /// The request cannot be served: answer with this status and one-line reason.
    Fail(Status, &'static str),
}

/// The statuses chatloop answers with, each with its reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok = 200,
    BadRequest = 400,
    Unauthorized = 401,
    Forbidden = 403,
    NotFound = 404,
    MethodNotAllowed = 405,
    RequestTimeout = 408,
    Conflict = 409,
    LengthRequired = 411,
    ContentTooLarge = 413,
    UnsupportedMediaType = 415,
    UnprocessableContent = 422,
    /// RFC 9110: this server does not answer for the Host named (DNS rebinding defence).
    Misdirected = 421,
    UpgradeRequired = 426,
    TooManyRequests = 429,
    HeadersTooLarge = 431,
    Unavailable = 503,
}

impl Status {
    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::Unauthorized => "Unauthorized",
            Status::Forbidden => "Forbidden",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::Conflict => "Conflict",
            Status::LengthRequired => "Length Required",
            Status::ContentTooLarge => "Content Too Large",
            Status::UnsupportedMediaType => "Unsupported Media Type",
            Status::UnprocessableContent => "Unprocessable Content",
            Status::TooManyRequests => "Too Many Requests",
            Status::Misdirected => "Misdirected Request",
            Status::UpgradeRequired => "Upgrade Required",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::Unavailable => "Service Unavailable",
        }
    }
}

/// The reason a head over `MAX_HEAD` or `MAX_HEADERS` gets.
const TOO_LARGE: &str = "request head over 8 KiB or 32 header lines";

/// Parses a request head from `buf`.
pub fn parse(buf: &[u8]) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parse::Fail(Status::HeadersTooLarge, TOO_LARGE);
        }
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Parse::Fail(Status::HeadersTooLarge, TOO_LARGE);
        }
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return Parse::Fail(Status::HeadersTooLarge, TOO_LARGE),
        Err(e) => return Parse::Fail(Status::BadRequest, malformed(e)),
    };
    if req.version != Some(1) {
        // HTTP/1.0 has no Host and no upgrade; nothing we serve needs it.
        return Parse::Fail(Status::BadRequest, "only HTTP/1.1 is served");
    }
    let mut out = Request {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        ..Request::default()
    };
    for h in req.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Parse::Fail(Status::BadRequest, "a header value is not UTF-8");
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
        // Two Hosts or two keys are a smuggling attempt or a broken client.
        let duplicate = if name.eq_ignore_ascii_case("host") {
            (!once(&mut out.host)).then_some("duplicate Host header")
        } else if name.eq_ignore_ascii_case("origin") {
            (!once(&mut out.origin)).then_some("duplicate Origin header")
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            (!once(&mut out.ws_key)).then_some("duplicate Sec-WebSocket-Key header")
        } else if name.eq_ignore_ascii_case("authorization") {
            (!once(&mut out.authorization)).then_some("duplicate Authorization header")
        } else if name.eq_ignore_ascii_case("last-event-id") {
            (!once(&mut out.last_event_id)).then_some("duplicate Last-Event-ID header")
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            (!once(&mut out.ws_version)).then_some("duplicate Sec-WebSocket-Version header")
        } else {
            if name.eq_ignore_ascii_case("upgrade") {
                out.upgrade_websocket |= has_token(value, "websocket");
            } else if name.eq_ignore_ascii_case("connection") {
                out.connection_upgrade |= has_token(value, "upgrade");
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                out.body = true;
                out.chunked = true;
            } else if name.eq_ignore_ascii_case("content-length") {
                // Two lengths, or one that is not digits, are how requests are smuggled.
                let Some(n) = value.bytes().all(|b| b.is_ascii_digit()).then(|| value.parse().ok()).flatten()
                else {
                    return Parse::Fail(Status::BadRequest, "malformed Content-Length");
                };
                if out.content_length.replace(n).is_some() {
                    return Parse::Fail(Status::BadRequest, "duplicate Content-Length header");
                }
                out.body |= n != 0;
            } else if name.eq_ignore_ascii_case("content-type") {
                out.content_type.get_or_insert_with(|| value.to_string());
            } else if name.eq_ignore_ascii_case("expect") {
                out.expect_continue |= value.eq_ignore_ascii_case("100-continue");
            }
            if name.eq_ignore_ascii_case("connection") {
                out.close |= has_token(value, "close");
            }
            None
        };
        if let Some(why) = duplicate {
            return Parse::Fail(Status::BadRequest, why);
        }
    }
    if out.host.is_none() {
        // RFC 9112, 3.2: without it we cannot tell which name the client used (see host_allowed).
        return Parse::Fail(Status::BadRequest, "an HTTP/1.1 request needs a Host header");
    }
    Parse::Done(out, len)
}

/// The one-line reason for a head httparse refuses.
fn malformed(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "malformed header name",
        httparse::Error::HeaderValue => "malformed header value",
        httparse::Error::NewLine => "malformed line ending",
        httparse::Error::Version => "malformed HTTP version",
        _ => "malformed request line",
    }
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

/// Splits an authority `host[:port]` (host may be a bracketed IPv6 address) into the host
/// and its port. `None` unless the host is a plain name or an IP address and the port digits:
/// userinfo, paths and anything else that could make two spellings of one host compare apart
/// (or two hosts compare equal) are refused rather than interpreted.
pub fn split_authority(a: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = match a.strip_prefix('[') {
        Some(rest) => {
            let end = rest.find(']')?;
            rest[..end].parse::<std::net::Ipv6Addr>().ok()?;
            (&a[..end + 2], &a[end + 2..])
        }
        None => a.split_at(a.find(':').unwrap_or(a.len())),
    };
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
    if name.is_empty() || !(name.starts_with('[') || name.bytes().all(plain)) {
        return None;
    }
    let port = match port.strip_prefix(':') {
        None if port.is_empty() => None,
        None => return None,
        Some("") => None, // RFC 3986 allows an empty port: the scheme's default
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((name, port))
}

/// `localhost`, `127.x.x.x` or `[::1]`.
fn loopback_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost") || ip_literal(name).is_some_and(|ip| ip.is_loopback())
}

fn ip_literal(name: &str) -> Option<std::net::IpAddr> {
    match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => v6.parse().ok(),
        None => name.parse::<std::net::Ipv4Addr>().ok().map(Into::into),
    }
}

/// Whether the server answers a request naming `host` (the Host header).
///
/// Bound to loopback, only loopback names and `allowed` ones pass: a page that rebinds its
/// own name to 127.0.0.1 still sends that name as Host. Bound elsewhere, the check applies
/// only once the operator names hosts with `--allow-host`, and then also passes any IP
/// address (a literal address cannot be rebound); without it, every Host passes, since the
/// names a public server is reached by are unknown to it. `*` in `allowed` passes everything.
pub fn host_allowed(host: &str, allowed: &[String], bound_to_loopback: bool) -> bool {
    if (!bound_to_loopback && allowed.is_empty()) || allowed.iter().any(|a| a == "*") {
        return true;
    }
    let Some((name, _)) = split_authority(host) else { return false };
    loopback_name(name)
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
        || (!bound_to_loopback && ip_literal(name).is_some())
}

/// An origin (RFC 6454) as compared: `https`, host, port (the scheme's default if none given).
#[derive(Debug, PartialEq, Eq)]
pub struct Origin<'a> {
    pub https: bool,
    pub host: &'a str,
    pub port: u16,
}

/// Parses `scheme://host[:port]`; only http and https count (a browser sends `null` or
/// another scheme for pages that are not web origins, none of them ours).
pub fn parse_origin(s: &str) -> Option<Origin<'_>> {
    let (scheme, authority) = s.split_once("://")?;
    let https = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => return None,
    };
    let (host, port) = split_authority(authority)?;
    Some(Origin { https, host, port: port.unwrap_or(if https { 443 } else { 80 }) })
}

impl Origin<'_> {
    fn same(&self, other: &Origin<'_>) -> bool {
        self.https == other.https && self.port == other.port && self.host.eq_ignore_ascii_case(other.host)
    }
}

/// Gorilla's default, with the scheme counted: an Origin must name the host and port of
/// Host, unless allowed. No Origin at all (a non-browser client) is fine.
pub fn origin_allowed(req: &Request, allowed: &[String]) -> bool {
    let Some(origin) = req.origin.as_deref() else {
        return true;
    };
    if allowed.iter().any(|a| a == "*") {
        return true;
    }
    let Some(origin) = parse_origin(origin) else { return false };
    if allowed.iter().filter_map(|a| parse_origin(a)).any(|a| a.same(&origin)) {
        return true;
    }
    // Host carries no scheme: its port defaults to the Origin's scheme's, as the browser's did.
    match req.host.as_deref().and_then(split_authority) {
        Some((host, port)) => {
            let default = if origin.https { 443 } else { 80 };
            origin.host.eq_ignore_ascii_case(host) && port.unwrap_or(default) == origin.port
        }
        None => false,
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

/// A JSON response that keeps the connection open for the next request (the backend API's),
/// unless `close`.
pub fn json(status: Status, body: &[u8], close: bool) -> Bytes {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\
         Cache-Control: no-store\r\n\r\n",
        status as u16,
        status.reason(),
        body.len(),
        if close { "Connection: close\r\n" } else { "" },
    )
    .into_bytes();
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// Whether a raw request head names an `/api/` path, read from its request line alone so that
/// a head too malformed to parse is still told apart.
pub fn targets_api(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    line.split(|&b| b == b' ').nth(1).is_some_and(|target| target.starts_with(b"/api/"))
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
                match parse($raw.as_ref()) {
                    Parse::Fail(status, why) => {
                        assert_eq!(status, $status);
                        assert!(!why.is_empty() && !why.contains('\n'), "{why:?}");
                    }
                    other => panic!("{other:?}"),
                }
            }
        )*};
    }

    fails! {
        garbage_request_line: "HELLO\r\n\r\n" => Status::BadRequest;
        space_in_target: "GET /a b HTTP/1.1\r\n\r\n" => Status::BadRequest;
        http_1_0: "GET / HTTP/1.0\r\n\r\n" => Status::BadRequest;
        http_1_1_without_host: "GET / HTTP/1.1\r\n\r\n" => Status::BadRequest;
        bad_header_name: "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n" => Status::BadRequest;
        two_hosts: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" => Status::BadRequest;
        too_many_headers: format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(MAX_HEADERS + 1)) => Status::HeadersTooLarge;
        head_too_large: format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD)) => Status::HeadersTooLarge;
        partial_too_large: format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD + 1)) => Status::HeadersTooLarge;
    }

    #[test]
    fn every_400_says_why() {
        for (raw, why) in [
            (&b"GET / HTTP/1.0\r\n\r\n"[..], "only HTTP/1.1 is served"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", "duplicate Host header"),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\nauthorization: Bearer y\r\n\r\n",
                "duplicate Authorization header",
            ),
            (b"GARBAGE\r\n\r\n", "malformed request line"),
            (b"GET / HTTP/1.1\r\n\r\n", "an HTTP/1.1 request needs a Host header"),
        ] {
            assert_eq!(parse(raw), Parse::Fail(Status::BadRequest, why));
        }
    }

    #[test]
    fn a_body_is_noted() {
        for (header, body) in [
            ("Content-Length: 0", false),
            ("Content-Length: 5", true),
            ("Transfer-Encoding: chunked", true),
            ("X: y", false),
        ] {
            let r = done(&format!("GET / HTTP/1.1\r\nHost: h\r\n{header}\r\n\r\n"));
            assert_eq!(r.body, body, "{header}");
        }
    }

    #[test]
    fn hosts_when_bound_to_loopback() {
        let allow = ["chat.example".to_string()];
        for host in [
            "localhost",
            "LocalHost:8080",
            "127.0.0.1",
            "127.9.8.7:1",
            "[::1]",
            "[::1]:80",
            "chat.example:443",
        ] {
            assert!(host_allowed(host, &allow, true), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1",
            "[::2]",
            "localhost:x",
            "localhost@evil",
            "",
            "[::1",
            "a; script-src *",
        ] {
            assert!(!host_allowed(host, &allow, true), "{host}");
        }
        assert!(host_allowed("evil.example", &["*".into()], true));
    }

    #[test]
    fn hosts_when_bound_elsewhere() {
        assert!(host_allowed("anything", &[], false), "no --allow-host: no check");
        let allow = ["chat.example".to_string()];
        for host in ["chat.example", "127.0.0.1", "192.0.2.7:8080", "[2001:db8::1]"] {
            assert!(host_allowed(host, &allow, false), "{host}");
        }
        assert!(!host_allowed("evil.example", &allow, false));
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        assert_eq!(parse_origin("HTTPS://A.b"), Some(Origin { https: true, host: "A.b", port: 443 }));
        assert_eq!(parse_origin("http://a:8080"), Some(Origin { https: false, host: "a", port: 8080 }));
        for bad in
            ["ftp://a", "a.b", "null", "http://a/path", "http://u@a", "http://", "http://a:x", "file:///"]
        {
            assert_eq!(parse_origin(bad), None, "{bad}");
        }
        let req = |host: &str, origin: &str| Request {
            host: Some(host.into()),
            origin: Some(origin.into()),
            ..Request::default()
        };
        assert!(origin_allowed(&req("h:8080", "http://h:8080"), &[]));
        assert!(origin_allowed(&req("h", "http://h:80"), &[]));
        assert!(origin_allowed(&req("h", "https://h"), &[]), "a TLS proxy forwarding Host");
        assert!(!origin_allowed(&req("h:8080", "ftp://h:8080"), &[]), "scheme counts");
        assert!(!origin_allowed(&req("h", "http://h:8080"), &[]), "port counts");
        assert!(!origin_allowed(&req("h:443", "http://h"), &[]));
        let allow = ["https://chat.example".to_string()];
        assert!(origin_allowed(&req("h", "https://chat.example:443"), &allow));
        assert!(!origin_allowed(&req("h", "http://chat.example"), &allow), "scheme counts when allowed too");
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
