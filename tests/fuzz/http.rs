//! HTTP: request heads through `http::parse` and `router::route`; generators, then properties.

use crate::corpus::HTTP_SEEDS;
use crate::mutation::{mutate, mutation, mutations};
use crate::{Check, config};
use chatloop::assets::{self, Assets};
use chatloop::http::{self, Parse, Request, Status};
use chatloop::router::{self, Foreign, Route, Rules};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;
use std::path::Path;
use std::sync::LazyLock;

/// What the embedded page may serve: (name, body, content type) for each file of public/ that
/// `Assets::Embedded` knows. A served body must be one of these bodies, under its own name.
static FILES: LazyLock<Vec<(String, Vec<u8>, &'static str)>> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("public");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("public/") {
        let path = entry.expect("public/ entry").path();
        if !path.is_file() {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(f) = Assets::Embedded.get(&format!("/{name}")) {
            out.push((name, f.body.into_owned(), f.content_type));
        }
    }
    assert!(out.iter().any(|(n, ..)| n == "index.html"), "index.html is not embedded");
    out
});

// ---------------------------------------------------------------------------------------------
// HTTP: generators

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => Just("GET".to_string()),
        3 => Just("HEAD".to_string()),
        2 => select(vec!["POST", "DELETE", "OPTIONS", "PUT", "get", "Get", "CONNECT", "TRACE", "PRI"])
            .prop_map(String::from),
        1 => "[A-Za-z!#$%&'*+.^_`|~-]{0,8}",
    ]
}

fn segment() -> impl Strategy<Value = String> {
    let hostile = select(vec![
        "..",
        ".",
        "...",
        "%2e%2e",
        "%2E%2e",
        ".%2e",
        "%2e.",
        "%252e%252e",
        "%25",
        "..\\",
        "\\",
        "%5c",
        "%5C..",
        "%00",
        "\0",
        "%c0%ae%c0%ae",
        "%e0%80%ae",
        "%2f",
        "%2F..%2F",
        "",
        ".git",
        ".hidden",
        "a..b",
        "..;",
        "%2e%2e%2f%2e%2e",
        "..%00",
        "%u002e",
        "%",
        "%zz",
        "%2",
        "~",
        "*",
        "@",
        ":",
        "C:",
        "etc",
        "passwd",
    ])
    .prop_map(String::from);
    let known =
        select(vec!["index.html", "app.js", "style.css", "ws", "echo", "healthz", "metrics", "favicon.ico"])
            .prop_map(String::from);
    prop_oneof![
        4 => hostile,
        4 => known,
        2 => "[a-zA-Z0-9_.-]{1,10}",
        1 => any::<u8>().prop_map(|b| format!("%{b:02x}")),
        1 => any::<u8>().prop_map(|b| format!("%{b:02X}")),
        1 => "[!-~]{1,6}",
        1 => "\\PC{1,3}",
    ]
}

fn query() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        "[A-Za-z0-9_.-]{0,34}",
        "[A-Za-z0-9_.%+&=-]{0,20}",
        any::<u8>().prop_map(|b| format!("%{b:02X}")),
        Just("%zz".to_string()),
        Just("al%69ce".to_string()),
        Just("%c3%28".to_string()),
    ];
    let param = (select(vec!["id", "id", "id", "ID", "id%20", "x", "", "id%3d"]), value)
        .prop_map(|(k, v)| format!("{k}={v}"));
    prop_oneof![
        2 => Just(String::new()),
        3 => vec(param, 0..4).prop_map(|ps| format!("?{}", ps.join("&"))),
        1 => "\\?[!-~]{0,12}",
    ]
}

fn target() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        12 => Just("/"),
        1 => Just("//"),
        1 => Just(""),
        1 => Just("http://h:1/"),
        1 => Just("*"),
        1 => Just("\\"),
    ];
    let built =
        (prefix, vec(segment(), 0..5), query()).prop_map(|(p, segs, q)| format!("{p}{}{q}", segs.join("/")));
    let known = (
        select(vec!["/ws", "/echo", "/", "/app.js", "/index.html", "/style.css", "/healthz", "/metrics"]),
        query(),
    )
        .prop_map(|(p, q)| format!("{p}{q}"));
    prop_oneof![2 => built, 1 => known]
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn header_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        20 => select(vec![
            "Host", "host", "HOST", "Origin", "Upgrade", "Connection", "Sec-WebSocket-Key", "sec-websocket-key",
            "Sec-WebSocket-Version", "Content-Length", "Transfer-Encoding", "Cookie", "X-Forwarded-Host",
            "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol", "Expect",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        1 => "[!-~]{0,10}".prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..8),
    ]
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        16 => select(vec![
            "websocket", "WebSocket", "Upgrade", "keep-alive, Upgrade", "upgrade,", "13", "8", "13, 8", KEY,
            "dGhlIHNhbXBsZSBub25jZQ=", "h:1", "http://h:1", "https://h:1", "null", "http://evil", "chunked",
            "5", "0", "-1", "", " ", "a; script-src *", "100-continue", "permessage-deflate",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        2 => "[ -~]{0,30}".prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..12),
        // Long values cross MAX_HEAD (8 KiB) now and then.
        1 => (7800..8400usize).prop_map(|n| vec![b'a'; n]),
    ]
}

/// A request built from parts: by default a valid upgrade, with parts dropped, replaced,
/// repeated and surrounded by noise.
fn structured_request() -> impl Strategy<Value = Vec<u8>> {
    let version = prop_oneof![
        12 => Just("HTTP/1.1"),
        1 => select(vec!["HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "http/1.1", "HTTP/1.10", "HTTP/1", ""]),
    ];
    let eol = prop_oneof![24 => Just("\r\n"), 2 => Just("\n"), 1 => Just("\r"), 1 => Just("\r\r\n")];
    let standard = [
        ("Host", "h:1"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", KEY),
    ];
    let keep = vec(prop::bool::weighted(0.85), standard.len());
    let extras = vec((header_name(), header_value()), 0..4);
    let trailing = prop_oneof![
        4 => Just(Vec::new()),
        1 => vec(any::<u8>(), 0..32),
        1 => Just(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
    ];
    (method(), target(), version, eol, keep, extras, any::<Index>(), trailing, mutations()).prop_map(
        move |(method, target, version, eol, keep, extras, at, trailing, muts)| {
            let mut headers: Vec<(Vec<u8>, Vec<u8>)> = standard
                .iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|((n, v), _)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect();
            let pos = at.index(headers.len() + 1);
            headers.splice(pos..pos, extras);
            let mut buf = format!("{method} {target} {version}{eol}").into_bytes();
            for (name, value) in headers {
                buf.extend_from_slice(&name);
                buf.extend_from_slice(b": ");
                buf.extend_from_slice(&value);
                buf.extend_from_slice(eol.as_bytes());
            }
            buf.extend_from_slice(eol.as_bytes());
            buf.extend_from_slice(&trailing);
            mutate(&mut buf, &muts);
            buf
        },
    )
}

/// HTTP-ish tokens glued at random: closer to a request than uniform bytes, far from valid.
fn token_soup() -> impl Strategy<Value = Vec<u8>> {
    let tokens: Vec<&[u8]> = vec![
        b"GET",
        b"HEAD",
        b"POST",
        b" ",
        b"/",
        b"/ws",
        b"/echo",
        b"/app.js",
        b"?id=",
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"\r\n",
        b"\n",
        b"\r\n\r\n",
        b":",
        b": ",
        b"Host",
        b"Upgrade",
        b"websocket",
        b"Connection",
        b"Sec-WebSocket-Key",
        KEY.as_bytes(),
        b"Sec-WebSocket-Version",
        b"13",
        b"Origin",
        b"%2e",
        b"..",
        b"\0",
        b"\xff",
        b"\t",
        b",",
    ];
    vec(select(tokens), 0..60).prop_map(|ts| ts.concat())
}

fn http_seed_mutated() -> impl Strategy<Value = Vec<u8>> {
    (select(HTTP_SEEDS.clone()), vec(mutation(), 1..5)).prop_map(|(mut buf, muts)| {
        mutate(&mut buf, &muts);
        buf
    })
}

/// The configuration routing sees, owned so that strategies can generate it.
#[derive(Debug, Clone)]
pub(crate) struct RuleSet {
    pub(crate) echo: bool,
    pub(crate) allow_origin: Vec<String>,
    pub(crate) allow_host: Vec<String>,
    pub(crate) bound_to_loopback: bool,
    /// `--api-key` given: `/api/` routes to the backend API.
    pub(crate) api: bool,
}

impl RuleSet {
    /// What the corpus labels are checked under: /echo mounted, no `--allow-origin`, bound
    /// to loopback with `--allow-host h` (the corpus's requests name host `h`).
    pub(crate) fn corpus() -> RuleSet {
        RuleSet {
            echo: true,
            allow_origin: vec![],
            allow_host: vec!["h".into()],
            bound_to_loopback: true,
            api: false,
        }
    }

    pub(crate) fn rules(&self) -> Rules<'_> {
        Rules {
            echo: self.echo,
            allow_origin: &self.allow_origin,
            allow_host: &self.allow_host,
            bound_to_loopback: self.bound_to_loopback,
            assets: &Assets::Embedded,
            token_mode: false,
            config: br#"{"auth":"open","token_url":null}"#,
            api: self.api,
        }
    }
}

/// Routing rules vary too: /echo mounted or not, three `--allow-origin` settings, three
/// `--allow-host` settings, a loopback or other listening address, and the API on or off.
fn rules_parts() -> impl Strategy<Value = RuleSet> {
    let allow_origin = select(vec![vec![], vec!["*".to_string()], vec!["http://evil".to_string()]]);
    let allow_host = select(vec![vec![], vec!["*".to_string()], vec!["h".to_string()]]);
    (any::<bool>(), allow_origin, allow_host, any::<bool>(), any::<bool>()).prop_map(
        |(echo, allow_origin, allow_host, bound_to_loopback, api)| RuleSet {
            echo,
            allow_origin,
            allow_host,
            bound_to_loopback,
            api,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP: properties

/// Header (lowercased name, value) pairs.
type Headers = Vec<(String, String)>;

/// Status, headers and body of a response we produce.
fn parse_response(raw: &[u8]) -> Check<(u16, Headers, Vec<u8>)> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(raw) {
        Ok(httparse::Status::Complete(len)) => len,
        other => return Err(TestCaseError::fail(format!("our response does not parse: {other:?}: {raw:?}"))),
    };
    let headers = res
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    Ok((res.code.unwrap_or(0), headers, raw[len..].to_vec()))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The response a status with a one-line reason turns into must be complete and say just that.
fn check_error_response(status: Status, why: &str) -> Check {
    prop_assert!((400..500).contains(&(status as u16)), "not a 4xx: {status:?}");
    prop_assert!(!why.is_empty() && !why.contains(['\r', '\n']), "reason is not one line: {why:?}");
    let (code, headers, body) = parse_response(&http::error(status, why))?;
    prop_assert_eq!(code, status as u16);
    prop_assert_eq!(body, format!("{why}\n").into_bytes());
    prop_assert_eq!(header(&headers, "content-length"), Some(&*(why.len() + 1).to_string()));
    prop_assert_eq!(header(&headers, "connection"), Some("close"));
    if status == Status::UpgradeRequired {
        prop_assert_eq!(header(&headers, "sec-websocket-version"), Some("13"));
    }
    Ok(())
}

/// True for a path that must never be served as a file, whatever the file system: `..` once or
/// twice decoded, backslashes, NUL, `//`, or an escape that does not decode.
fn hostile_path(path: &str) -> bool {
    let Some(once) = http::percent_decode(path) else { return true };
    let twice = http::percent_decode(&String::from_utf8_lossy(&once)).unwrap_or_default();
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    [&once, &twice].iter().any(|d| has(d, b"..") || has(d, b"\\") || has(d, b"\0") || d.starts_with(b"//"))
}

/// Parses `buf` as the server does after a read, routes it, and checks the answer. Returns
/// the answer's label: a status code, `101`, `metrics` or `partial`.
pub(crate) fn check_http(buf: &[u8], rules: &Rules<'_>) -> Check<String> {
    match http::parse(buf) {
        Parse::Partial => {
            // The server stops reading past MAX_HEAD; by then it must have an answer.
            prop_assert!(buf.len() <= http::MAX_HEAD, "Partial after {} bytes", buf.len());
            Ok("partial".into())
        }
        Parse::Fail(status, why) => {
            prop_assert!(
                matches!(status, Status::BadRequest | Status::HeadersTooLarge),
                "parse failed with {status:?}"
            );
            check_error_response(status, why)?;
            Ok((status as u16).to_string())
        }
        Parse::Done(req, len) => {
            prop_assert!(0 < len && len <= buf.len() && len <= http::MAX_HEAD, "head length {len}");
            prop_assert!(buf[..len].ends_with(b"\n"), "head does not end with a line break");
            // Whatever follows the head (a body, a frame, a second request) changes nothing.
            match http::parse(&buf[..len]) {
                Parse::Done(again, l) => {
                    prop_assert!(again == req && l == len, "trailing bytes changed the head")
                }
                other => prop_assert!(false, "the head alone parses as {other:?}"),
            }
            prop_assert!(!req.method.is_empty() && !req.target.is_empty());
            prop_assert!(req.host.is_some(), "a request without Host was routed");
            let route = router::route(&req, rules);
            check_route(&req, &route, rules)
        }
    }
}

/// A request split across reads: any strict prefix of a complete head is still Partial.
pub(crate) fn check_prefix(buf: &[u8], cut: usize) -> Check {
    if let Parse::Done(_, len) = http::parse(buf)
        && cut < len
    {
        let got = http::parse(&buf[..cut]);
        prop_assert!(got == Parse::Partial, "prefix of {cut} of a {len}-byte head: {got:?}");
    }
    Ok(())
}

/// An oracle written apart from `http::host_allowed`: Host names a loopback address.
fn names_loopback(host: &str) -> bool {
    if let Some(rest) = host.strip_prefix('[') {
        let v6 = rest.split(']').next().and_then(|a| a.parse::<std::net::Ipv6Addr>().ok());
        return v6.is_some_and(|a| a.is_loopback());
    }
    let name = host.split(':').next().unwrap_or_default();
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::Ipv4Addr>().is_ok_and(|a| a.is_loopback())
}

fn check_route(req: &Request, route: &Route, rules: &Rules<'_>) -> Check<String> {
    let path = req.path();
    let head = req.method == "HEAD";
    let host = req.host.as_deref().unwrap_or_default();
    let host_ok = http::host_allowed(host, rules.allow_host, rules.bound_to_loopback);
    // A Host the server does not answer for gets 421 on every path, before anything else.
    prop_assert_eq!(host_ok, *route != Route::Foreign(Foreign::Host), "Host {:?}: {:?}", host, route);
    if rules.bound_to_loopback && rules.allow_host.is_empty() {
        prop_assert!(!host_ok || names_loopback(host), "a loopback server answered Host {:?}", host);
    }
    let api_path = path == "/api" || path.starts_with("/api/");
    if host_ok && !req.is_upgrade() && api_path {
        // With the API on, every /api/ request is its (key and body checked by the server);
        // without it, every /api/ path is unknown.
        let want = if rules.api { Route::Api } else { Route::Refuse(Status::NotFound, "not found") };
        prop_assert_eq!(route, &want);
        return Ok(if rules.api { "api".into() } else { "404".into() });
    }
    if host_ok && !req.is_upgrade() && !head && req.method != "GET" {
        prop_assert!(
            matches!(route, Route::Refuse(Status::MethodNotAllowed, _)),
            "{} served: {route:?}",
            req.method
        );
    }
    match route {
        Route::Upgrade { echo, key, id, .. } => {
            prop_assert!(req.is_upgrade());
            prop_assert!(
                (path == "/ws" && !echo) || (path == "/echo" && *echo && rules.echo),
                "upgrade on {path:?} (echo {echo}, mounted {})",
                rules.echo
            );
            prop_assert_eq!(req.method.as_str(), "GET");
            prop_assert!(req.connection_upgrade);
            prop_assert_eq!(req.ws_version.as_deref(), Some("13"));
            prop_assert!(http::valid_ws_key(key) && req.ws_key.as_deref() == Some(key.as_str()));
            prop_assert!(http::origin_allowed(req, rules.allow_origin));
            prop_assert!(!req.body, "an upgrade announcing a body was accepted");
            prop_assert_eq!(id, &req.query_param("id").unwrap_or_default());
            let (code, headers, body) = parse_response(&http::switching_protocols(key))?;
            prop_assert_eq!(code, 101);
            prop_assert!(body.is_empty());
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            prop_assert_eq!(header(&headers, "sec-websocket-accept"), Some(accept.as_str()));
            Ok("101".into())
        }
        Route::Respond(raw) => {
            prop_assert!(!req.is_upgrade() && (head || req.method == "GET"));
            let (code, headers, body) = parse_response(raw)?;
            prop_assert_eq!(code, 200);
            prop_assert_eq!(header(&headers, "connection"), Some("close"));
            let expected: &[u8] = if path == "/healthz" {
                b"ok\n"
            } else {
                // A file: it must be one of public/'s embedded files, under its own safe name.
                prop_assert!(!hostile_path(path), "served a file for hostile path {path:?}");
                let name = assets::safe_name(path);
                prop_assert!(name.is_some(), "served a file for unsafe path {path:?}");
                let name = name.unwrap();
                let file = FILES.iter().find(|(n, ..)| *n == name);
                prop_assert!(file.is_some(), "served {name:?} for {path:?}, not an embedded file");
                let (_, body, content_type) = file.unwrap();
                prop_assert_eq!(header(&headers, "content-type"), Some(*content_type));
                prop_assert!(header(&headers, "content-security-policy").is_some());
                body
            };
            prop_assert_eq!(header(&headers, "content-length"), Some(&*expected.len().to_string()));
            if head {
                prop_assert!(body.is_empty(), "HEAD got a body");
            } else {
                prop_assert!(body == expected, "served body is not the file for {path:?}");
            }
            Ok("200".into())
        }
        Route::Api => unreachable!("checked above"),
        Route::Refuse(status, why) => {
            check_error_response(*status, why)?;
            if path == "/echo" && !rules.echo && !req.is_upgrade() && (head || req.method == "GET") {
                prop_assert_eq!(*status, Status::NotFound, "/echo unmounted is an unknown path");
            }
            Ok((*status as u16).to_string())
        }
        Route::Foreign(f) => {
            check_error_response(f.status(), f.why())?;
            if *f == Foreign::Origin {
                prop_assert!(req.is_upgrade() && !http::origin_allowed(req, rules.allow_origin));
            }
            Ok((f.status() as u16).to_string())
        }
        Route::Metrics { head: h } => {
            prop_assert!(
                !req.is_upgrade() && path == "/metrics" && *h == head && (head || req.method == "GET")
            );
            Ok("metrics".into())
        }
    }
}

fn check_http_all(buf: &[u8], rules: &RuleSet, cut: Index) -> Check {
    check_http(buf, &rules.rules())?;
    check_prefix(buf, cut.index(buf.len().max(1)))
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn http_arbitrary_bytes(buf in vec(any::<u8>(), 0..1024), rules in rules_parts(), cut in any::<Index>()) {
        check_http_all(&buf, &rules, cut)?;
    }

    #[test]
    fn http_token_soup(buf in token_soup(), rules in rules_parts(), cut in any::<Index>()) {
        check_http_all(&buf, &rules, cut)?;
    }

    #[test]
    fn http_structured(buf in structured_request(), rules in rules_parts(), cut in any::<Index>()) {
        check_http_all(&buf, &rules, cut)?;
    }

    #[test]
    fn http_corpus_mutated(buf in http_seed_mutated(), rules in rules_parts(), cut in any::<Index>()) {
        check_http_all(&buf, &rules, cut)?;
    }

    /// Paths alone, in a request that is otherwise a plain GET: traversal never serves a file.
    #[test]
    fn http_paths(target in target(), head in any::<bool>()) {
        let method = if head { "HEAD" } else { "GET" };
        let buf = format!("{method} {target} HTTP/1.1\r\nHost: h\r\n\r\n");
        let label = check_http(buf.as_bytes(), &RuleSet::corpus().rules())?;
        let path = target.split_once('?').map_or(target.as_str(), |(p, _)| p);
        if hostile_path(path) {
            prop_assert!(label != "200", "{target:?} gave 200");
        }
    }
}
