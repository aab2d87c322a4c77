//! Fuzzing of everything a client controls before and after the handshake, with proptest:
//! HTTP request heads through `http::parse` and `router::route`, and client frames through
//! `protocol::decode` and `Chat::handle`. Arbitrary bytes and near-valid inputs (built from
//! parts, or mutated from the corpus) go in; the properties say that nothing panics and every
//! input gets a clear answer: a 4xx with a one-line reason, an embedded file, a 101, a chat
//! line, or exactly one error line to the sender.
//!
//! Each property runs a fixed number of cases so `cargo test` stays quick; `FUZZ_CASES=200000
//! cargo test --release --test fuzz` runs longer. Hand-made hostile inputs live in
//! tests/corpus/{http,json}/*.txt, one raw input per file, named `EXPECTED-what.txt`; they run
//! through the same properties and must give the expected answer. Failures proptest finds are
//! kept in tests/fuzz.proptest-regressions and replayed first on every run.

use bytes::Bytes;
use chatloop::assets::{self, Assets};
use chatloop::chat::{Chat, Outcome, Sink, ids};
use chatloop::http::{self, Parse, Request, Status};
use chatloop::protocol::{self, ErrorCode};
use chatloop::router::{self, Foreign, Route, Rules};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

type Check<T = ()> = Result<T, TestCaseError>;

// ---------------------------------------------------------------------------------------------
// Configuration and corpus

/// Cases per property: `FUZZ_CASES` when set, else `default` (sized for a quick debug run).
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig {
        cases,
        max_shrink_iters: 4096,
        // tests/fuzz.proptest-regressions, replayed before new cases.
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    }
}

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(kind)
}

/// (file name, raw bytes) of every `*.txt` in tests/corpus/KIND, sorted by name.
fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(kind);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("corpus file"))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no corpus in {}", dir.display());
    out
}

/// The answer a corpus file expects: its name up to the first `-`.
fn expected_label(name: &str) -> &str {
    name.split_once('-').map_or(name.trim_end_matches(".txt"), |(label, _)| label)
}

static HTTP_SEEDS: LazyLock<Vec<Vec<u8>>> =
    LazyLock::new(|| corpus("http").into_iter().map(|(_, b)| b).collect());
static JSON_SEEDS: LazyLock<Vec<Vec<u8>>> =
    LazyLock::new(|| corpus("json").into_iter().map(|(_, b)| b).collect());

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
// Mutations, shared by the HTTP and JSON generators

#[derive(Debug, Clone)]
enum Mutation {
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

fn mutation() -> impl Strategy<Value = Mutation> {
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

fn mutate(buf: &mut Vec<u8>, muts: &[Mutation]) {
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
fn mutations_or_none(clean: u32) -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![clean => Just(Vec::new()), 1 => vec(mutation(), 1..4)]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    mutations_or_none(1)
}

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
struct RuleSet {
    echo: bool,
    allow_origin: Vec<String>,
    allow_host: Vec<String>,
    bound_to_loopback: bool,
}

impl RuleSet {
    /// What the corpus labels are checked under: /echo mounted, no `--allow-origin`, bound
    /// to loopback with `--allow-host h` (the corpus's requests name host `h`).
    fn corpus() -> RuleSet {
        RuleSet { echo: true, allow_origin: vec![], allow_host: vec!["h".into()], bound_to_loopback: true }
    }

    fn rules(&self) -> Rules<'_> {
        Rules {
            echo: self.echo,
            allow_origin: &self.allow_origin,
            allow_host: &self.allow_host,
            bound_to_loopback: self.bound_to_loopback,
            assets: &Assets::Embedded,
        }
    }
}

/// Routing rules vary too: /echo mounted or not, three `--allow-origin` settings, three
/// `--allow-host` settings, and a loopback or other listening address.
fn rules_parts() -> impl Strategy<Value = RuleSet> {
    let allow_origin = select(vec![vec![], vec!["*".to_string()], vec!["http://evil".to_string()]]);
    let allow_host = select(vec![vec![], vec!["*".to_string()], vec!["h".to_string()]]);
    (any::<bool>(), allow_origin, allow_host, any::<bool>()).prop_map(
        |(echo, allow_origin, allow_host, bound_to_loopback)| RuleSet {
            echo,
            allow_origin,
            allow_host,
            bound_to_loopback,
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
fn check_http(buf: &[u8], rules: &Rules<'_>) -> Check<String> {
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
fn check_prefix(buf: &[u8], cut: usize) -> Check {
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

#[test]
fn http_corpus() {
    let mut failures = Vec::new();
    for (name, buf) in corpus("http") {
        let want = expected_label(&name);
        let run = || -> Check<String> {
            // The label is checked under the corpus's rules ...
            let label = check_http(&buf, &RuleSet::corpus().rules())?;
            // ... and every other rule set must give some clear answer too.
            for (echo, allow_origin, allow_host, bound_to_loopback) in [
                (false, vec![], vec![], true),
                (true, vec!["*".to_string()], vec!["*".to_string()], true),
                (false, vec!["http://evil".into()], vec![], false),
                (true, vec![], vec!["h".into()], false),
            ] {
                check_http(&buf, &RuleSet { echo, allow_origin, allow_host, bound_to_loopback }.rules())?;
            }
            // Every split point of the head, as reads may deliver it.
            let step = (buf.len() / 2048).max(1);
            for cut in (0..buf.len()).step_by(step) {
                check_prefix(&buf, cut)?;
            }
            Ok(label)
        };
        match run() {
            Ok(label) if label == want => {}
            Ok(label) => failures.push(format!("{name}: expected {want}, got {label}")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "http corpus:\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// JSON and chat: generators

/// JSON string content that is valid: plain characters and correct escapes.
fn valid_string_body() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[ !#-\\[\\]-~]{1,6}",
        2 => select(vec![
            "\\n", "\\t", "\\r", "\\u0000", "\\u00e9", "\\u2028", "\\ud83d\\ude00", "\\\"", "\\\\", "\\/",
            "\u{2028}", "\u{a0}", "\u{3000}", "é", "😀", " ", "  ",
        ])
        .prop_map(String::from),
        1 => "[^\"\\\\\\p{C}]{1,3}",
    ];
    vec(piece, 0..8).prop_map(|ps| ps.concat())
}

/// JSON string content, escapes valid and not (lone surrogates, bad escapes, raw controls).
fn string_body() -> impl Strategy<Value = String> {
    let broken = select(vec![
        "\\ud800",
        "\\udc00",
        "\\ud800\\u0041",
        "\\x41",
        "\\u12",
        "\\U0041",
        "\\",
        "\t",
        "\n",
        "\u{1}",
        "\"",
    ]);
    prop_oneof![
        4 => valid_string_body(),
        1 => (valid_string_body(), broken, valid_string_body()).prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
}

fn json_leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => valid_string_body().prop_map(|s| format!("\"{s}\"")),
        1 => string_body().prop_map(|s| format!("\"{s}\"")),
        2 => select(vec![
            "null", "true", "false", "0", "-1", "1.5e-3", "1e999", "18446744073709551616", "\"bob\"", "\"BOB\"",
            "\"alice\"", "\"zed\"", "\"\"", "\" bob\"",
        ])
        .prop_map(String::from),
        1 => select(vec!["NaN", "01", "-", "tru", "nul", "+1", ".5", "0x10", "Infinity"]).prop_map(String::from),
    ]
}

/// A key other than a plain `"text"` or `"to"` (some still mean them once unescaped).
fn other_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "\"from\"", "\"type\"", "\"ts\"", "\"Text\"", "\"TO\"", "\"t\\u0065xt\"", "\"to \"", "\"\"", "text",
            "'text'",
        ])
        .prop_map(String::from),
        1 => string_body().prop_map(|s| format!("\"{s}\"")),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![2 => select(vec!["\"text\"", "\"to\""]).prop_map(String::from), 1 => other_key()]
}

fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        16 => Just(""),
        4 => Just(" "),
        2 => select(vec!["\n", "\t", "\r\n"]),
        1 => select(vec!["\u{a0}", "\u{feff}", "\u{3000}"]),
    ]
}

fn json_value() -> impl Strategy<Value = String> {
    json_leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|vs| format!("[{}]", vs.join(","))),
            vec((json_key(), inner), 0..4).prop_map(|kvs| {
                let fields: Vec<String> = kvs.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// A client frame: mostly an object of roughly our shape, sometimes anything.
#[derive(Debug, Clone)]
struct Frame {
    text: String,
    /// Built without mutation from well-formed parts whose keys are all different once
    /// unescaped: such a frame decodes exactly when serde_json sees an object of our shape.
    clean: bool,
}

fn frame() -> impl Strategy<Value = Frame> {
    let quoted = |body: BoxedStrategy<String>| body.prop_map(|s| format!("\"{s}\"")).boxed();
    let text = prop_oneof![
        8 => quoted(valid_string_body().boxed()),
        1 => quoted(string_body().boxed()),
        1 => json_value(),
    ];
    let to = prop_oneof![
        8 => select(vec!["Bob", "bob", "BOB", "alice", "carol", "zed", "", " bob", "d.e-f_9", "b\\u006fb"])
            .prop_map(|id| format!("\"{id}\"")),
        1 => quoted(valid_string_body().boxed()),
        1 => Just("null".to_string()),
        1 => json_leaf(),
    ];
    // Extra fields mostly have other names; a repeated `text` or `to` is a bad message.
    let extra_key = prop_oneof![6 => other_key(), 1 => json_key()];
    let extra = (extra_key, json_value());
    let fields = (
        prop::option::weighted(0.9, text),
        prop::option::weighted(0.4, to),
        vec(extra, 0..2),
        any::<Index>(),
    )
        .prop_map(|(text, to, extras, rot)| {
            let mut fields: Vec<(String, String)> = Vec::new();
            fields.extend(text.map(|v| ("\"text\"".to_string(), v)));
            fields.extend(to.map(|v| ("\"to\"".to_string(), v)));
            fields.extend(extras);
            let n = fields.len();
            fields.rotate_left(rot.index(n + 1) % n.max(1));
            fields
        });
    let spacing = vec((ws(), ws()), 5);
    let object = (fields, spacing, ws(), ws(), mutations_or_none(3)).prop_map(
        |(fields, spacing, lead, tail, muts)| {
            let parts: Vec<String> = fields
                .iter()
                .zip(spacing.iter().cycle())
                .map(|((k, v), (a, b))| format!("{a}{k}{b}:{a}{v}{b}"))
                .collect();
            let mut text = format!("{lead}{{{}}}{tail}", parts.join(",")).into_bytes();
            let keys: Vec<Option<String>> =
                fields.iter().map(|(k, _)| serde_json::from_str(k).ok()).collect();
            let unique = keys.iter().all(Option::is_some)
                && keys.iter().enumerate().all(|(i, k)| !keys[..i].contains(k));
            let clean = muts.is_empty() && unique;
            mutate(&mut text, &muts);
            Frame { text: String::from_utf8_lossy(&text).into_owned(), clean }
        },
    );
    let seeded = (select(JSON_SEEDS.clone()), mutations()).prop_map(|(mut b, muts)| {
        mutate(&mut b, &muts);
        Frame { text: String::from_utf8_lossy(&b).into_owned(), clean: false }
    });
    prop_oneof![
        12 => object,
        2 => seeded,
        1 => json_value().prop_map(|text| Frame { text, clean: false }),
        1 => "(?s).{0,200}".prop_map(|text| Frame { text, clean: false }),
        1 => any::<String>().prop_map(|text| Frame { text, clean: false }),
    ]
}

// ---------------------------------------------------------------------------------------------
// JSON and chat: properties

/// `decode` agrees with serde_json's own reading of the frame, and takes objects only.
fn check_decode(frame: &str, clean: bool) -> Check {
    let value: Option<Value> = serde_json::from_str(frame).ok();
    let shape = value.as_ref().and_then(Value::as_object).and_then(|o| {
        let text = o.get("text")?.as_str()?;
        let to = match o.get("to") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return None,
        };
        Some((text, to))
    });
    match protocol::decode(frame) {
        Some(m) => {
            // README: "Bad JSON, or an object of another shape, gets error bad_message".
            let object = frame.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{');
            prop_assert!(object, "decoded {m:?} from {frame:?}, which is not a JSON object");
            // serde_json's Value is stricter than skipping unknown fields (it refuses lone
            // surrogates, out-of-range numbers and deep nesting anywhere); when it reads the
            // frame at all, it must read the same text and recipient.
            if object && value.is_some() {
                prop_assert!(
                    shape.is_some(),
                    "decoded {m:?} from {frame:?}, which serde_json reads as {value:?}"
                );
                let (text, to) = shape.unwrap();
                prop_assert_eq!(&*m.text, text);
                prop_assert_eq!(m.to.as_deref(), to);
            }
        }
        None if clean => prop_assert!(shape.is_none(), "{frame:?} has our shape but did not decode"),
        None => {}
    }
    Ok(())
}

#[derive(Default)]
struct Rec(Vec<(usize, Bytes)>);

impl Sink for Rec {
    fn push(&mut self, token: usize, line: &Bytes) {
        self.0.push((token, line.clone()));
    }
    fn offer(&mut self, token: usize, line: &Bytes) -> bool {
        self.push(token, line);
        true
    }
}

/// Every payload the chat pushes is one or more JSON objects with a `type`, one per line.
fn json_lines(payload: &[u8]) -> Check<Vec<Value>> {
    payload
        .split(|b| *b == b'\n')
        .map(|line| {
            let v: Value = serde_json::from_slice(line).map_err(|e| {
                TestCaseError::fail(format!(
                    "pushed a line that is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(line)
                ))
            })?;
            prop_assert!(v.get("type").and_then(Value::as_str).is_some(), "line without a type: {v}");
            Ok(v)
        })
        .collect()
}

/// One online user, as the model knows it.
#[derive(Debug, Clone)]
struct User {
    token: usize,
    id: String,
}

const TS: u64 = 1_700_000_000_123;

/// Sends `frame` from `sender` and checks the one outcome against a model of the rules.
fn check_handle(
    chat: &mut Chat,
    users: &[User],
    sender: &User,
    frame: &str,
    max_text: usize,
) -> Check<Outcome> {
    let mut rec = Rec::default();
    let outcome = chat.handle(sender.token, &sender.id, frame, TS, &mut rec);
    // The room line itself is checked below, line by line, against what each user got.
    let outcome = match outcome {
        Outcome::Room(_) => Outcome::Room(bytes::Bytes::new()),
        o => o,
    };
    let mut lines = Vec::new();
    for (token, line) in &rec.0 {
        prop_assert!(!line.contains(&b'\n'), "a single line holds a newline: {line:?}");
        let v = json_lines(line)?.remove(0);
        lines.push((*token, v));
    }
    // The model: what should have happened.
    let msg = protocol::decode(frame);
    let text = msg.as_ref().map(|m| m.text.trim().to_string());
    let want = match (&msg, &text) {
        (None, _) => Outcome::Refused(ErrorCode::BadMessage),
        (_, Some(t)) if t.is_empty() => Outcome::Refused(ErrorCode::Empty),
        (_, Some(t)) if t.chars().count() > max_text => Outcome::Refused(ErrorCode::TooLong),
        (Some(m), _) => match m.to.as_deref() {
            None => Outcome::Room(bytes::Bytes::new()),
            Some(to) if !protocol::valid_id(to) => Outcome::Refused(ErrorCode::BadMessage),
            Some(to) if users.iter().any(|u| ids::key(&u.id) == ids::key(to)) => Outcome::Private,
            Some(_) => Outcome::Refused(ErrorCode::UnknownRecipient),
        },
    };
    prop_assert_eq!(&outcome, &want, "frame {:?}", frame);
    match &outcome {
        Outcome::Refused(code) => {
            prop_assert_eq!(lines.len(), 1, "a refusal sends exactly one line: {:?}", lines);
            let (token, v) = &lines[0];
            prop_assert_eq!(*token, sender.token, "the error went to someone else");
            prop_assert_eq!(v["type"].as_str(), Some("error"));
            prop_assert_eq!(v["code"].as_str(), Some(code.as_str()));
            prop_assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
            let to = msg.as_ref().and_then(|m| m.to.as_deref());
            if *code == ErrorCode::UnknownRecipient {
                prop_assert_eq!(v["to"].as_str(), to);
            } else {
                prop_assert!(v.get("to").is_none());
            }
        }
        Outcome::Room(_) => {
            let mut got: Vec<usize> = lines.iter().map(|(t, _)| *t).collect();
            let mut all: Vec<usize> = users.iter().map(|u| u.token).collect();
            got.sort_unstable();
            all.sort_unstable();
            prop_assert_eq!(got, all, "a room message reaches everyone once");
            prop_assert!(rec.0.windows(2).all(|w| w[0].1 == w[1].1), "one line for all");
            let v = &lines[0].1;
            prop_assert_eq!(v["type"].as_str(), Some("message"));
            prop_assert_eq!(v["from"].as_str(), Some(sender.id.as_str()));
            prop_assert_eq!(v["text"].as_str(), text.as_deref());
            prop_assert_eq!(v["ts"].as_u64(), Some(TS));
            prop_assert!(v.get("to").is_none());
        }
        Outcome::Private => {
            let to = msg.as_ref().and_then(|m| m.to.as_deref()).unwrap();
            let rcpt = users.iter().find(|u| ids::key(&u.id) == ids::key(to)).unwrap();
            let mut want_tokens = vec![rcpt.token];
            if rcpt.token != sender.token {
                want_tokens.push(sender.token);
            }
            let got: Vec<usize> = lines.iter().map(|(t, _)| *t).collect();
            prop_assert_eq!(got, want_tokens, "a private message reaches the recipient, then the sender");
            let v = &lines[0].1;
            prop_assert_eq!(v["type"].as_str(), Some("message"));
            prop_assert_eq!(v["from"].as_str(), Some(sender.id.as_str()));
            prop_assert_eq!(
                v["to"].as_str(),
                Some(rcpt.id.as_str()),
                "`to` names the id as its owner typed it"
            );
            prop_assert_eq!(v["text"].as_str(), text.as_deref());
        }
        // The model has no other nodes, and `want` never is Remote: asserted equal above.
        Outcome::Remote { .. } => unreachable!("no remote users here"),
    }
    Ok(outcome)
}

fn chat_with(ids: &[&str], presence_limit: usize, max_text: usize) -> (Chat, Vec<User>) {
    let mut chat = Chat::new(presence_limit, max_text, 20);
    let mut rec = Rec::default();
    let users: Vec<User> =
        ids.iter().enumerate().map(|(token, id)| User { token, id: id.to_string() }).collect();
    for u in &users {
        chat.join(&u.id, u.token, &[0; 16], false, std::time::Instant::now(), &mut rec).expect("valid id");
    }
    chat.flush_presence(&mut rec);
    (chat, users)
}

const IDS: &[&str] = &["alice", "Bob", "carol", "d.e-f_9", "Zed_0123456789abcdefghijklmnopqr"];

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn json_decode_arbitrary(s in "(?s).{0,300}") {
        check_decode(&s, false)?;
    }

    #[test]
    fn json_decode_structured(f in frame()) {
        check_decode(&f.text, f.clean)?;
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn chat_handle_frames(f in frame(), sender in any::<Index>(), max_text in prop_oneof![1..12usize, Just(1000)]) {
        let (mut chat, users) = chat_with(IDS, 256, max_text);
        let sender = users[sender.index(users.len())].clone();
        check_handle(&mut chat, &users, &sender, &f.text, max_text)?;
    }
}

#[derive(Debug, Clone)]
enum Op {
    Join(String),
    /// Leave an online user (by index), as the server does: with the id as its owner typed it.
    Leave(Index),
    /// Leave an id that is not online in any spelling: nothing happens.
    LeaveId(String),
    Handle(Index, Frame),
    Flush,
}

fn id_attempt() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(vec!["alice", "ALICE", "Bob", "bob", "carol", "x", "a.b-c_d", "-", ".", "_"]).prop_map(String::from),
        1 => select(vec!["", "a b", "é", "<x>", "al\0ice", "bob\n", " bob", "a/b"]).prop_map(String::from),
        2 => "[A-Za-z0-9_.-]{0,34}",
        1 => "\\PC{0,6}",
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => id_attempt().prop_map(Op::Join),
        2 => any::<Index>().prop_map(Op::Leave),
        1 => id_attempt().prop_map(Op::LeaveId),
        4 => (any::<Index>(), frame()).prop_map(|(i, f)| Op::Handle(i, f)),
        2 => Just(Op::Flush),
    ]
}

/// Joins, leaves, messages and presence flushes in any order, against a model: ids unique
/// ignoring case, welcomes and presence batches exactly as ARCHITECTURE.md says.
fn run_ops(ops: &[Op], presence_limit: usize, max_text: usize) -> Check {
    let mut chat = Chat::new(presence_limit, max_text, 20);
    let mut online: Vec<User> = Vec::new();
    // This turn's presence events, and where each online user's own join sits in them.
    let mut events: Vec<(bool, String)> = Vec::new();
    let mut joined_at: Vec<(usize, usize)> = Vec::new();
    let mut was_quiet = false;
    let mut next_token = 0;
    for op in ops {
        match op {
            Op::Join(id) => {
                let token = next_token;
                next_token += 1;
                let mut rec = Rec::default();
                let got =
                    chat.join(id, token, &[0; 16], false, std::time::Instant::now(), &mut rec).map(|_| ());
                let want = if !protocol::valid_id(id) {
                    Err(ErrorCode::BadId)
                } else if online.iter().any(|u| ids::key(&u.id) == ids::key(id)) {
                    Err(ErrorCode::IdTaken)
                } else {
                    Ok(())
                };
                prop_assert_eq!(got, want, "join {:?}", id);
                if got.is_err() {
                    prop_assert!(rec.0.is_empty(), "a refused join pushed {:?}", rec.0);
                    continue;
                }
                online.push(User { token, id: id.clone() });
                prop_assert_eq!(rec.0.len(), 1);
                prop_assert_eq!(rec.0[0].0, token);
                let v = json_lines(&rec.0[0].1)?.remove(0);
                prop_assert_eq!(v["type"].as_str(), Some("welcome"));
                prop_assert_eq!(v["id"].as_str(), Some(id.as_str()));
                prop_assert_eq!(v["total"].as_u64(), Some(online.len() as u64));
                let listed: Vec<&str> =
                    v["users"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
                prop_assert_eq!(listed.first().copied(), Some(id.as_str()), "the welcome lists you first");
                prop_assert_eq!(listed.len(), online.len().min(presence_limit.max(1)));
                for l in &listed {
                    prop_assert!(online.iter().any(|u| u.id == *l), "welcome lists {l:?}, who is not online");
                }
                events.push((true, id.clone()));
                joined_at.push((token, events.len() - 1));
            }
            Op::Leave(i) => {
                if online.is_empty() {
                    continue;
                }
                let u = online.remove(i.index(online.len()));
                chat.leave(&u.id);
                joined_at.retain(|(t, _)| *t != u.token);
                events.push((false, u.id));
            }
            Op::LeaveId(id) => {
                // (`leave` records the spelling it is given; the server always passes the
                // owner's, so a differently-cased leave of an online id is not modelled.)
                if !online.iter().any(|u| ids::key(&u.id) == ids::key(id)) {
                    chat.leave(id);
                }
            }
            Op::Handle(i, f) => {
                if online.is_empty() {
                    continue;
                }
                let sender = online[i.index(online.len())].clone();
                check_handle(&mut chat, &online, &sender, &f.text, max_text)?;
            }
            Op::Flush => {
                let mut rec = Rec::default();
                chat.flush_presence(&mut rec);
                let quiet = online.len() > presence_limit;
                let mut want: Vec<(usize, Vec<Value>)> = Vec::new();
                let crossed = !events.is_empty() && quiet != was_quiet;
                if !events.is_empty() {
                    was_quiet = quiet;
                }
                if crossed {
                    // Crossing the limit: everyone gets the whole (capped) list once instead.
                    prop_assert_eq!(rec.0.len(), online.len(), "one users line each: {:?}", rec.0);
                    for (token, payload) in &rec.0 {
                        let v = json_lines(payload)?.remove(0);
                        prop_assert!(online.iter().any(|u| u.token == *token));
                        prop_assert_eq!(v["type"].as_str(), Some("users"));
                        prop_assert_eq!(v["total"].as_u64(), Some(online.len() as u64));
                        let listed = v["users"].as_array().unwrap();
                        prop_assert_eq!(listed.len(), online.len().min(presence_limit));
                        for l in listed {
                            prop_assert!(
                                online.iter().any(|u| Some(u.id.as_str()) == l.as_str()),
                                "{l} is not online"
                            );
                        }
                    }
                    events.clear();
                    joined_at.clear();
                    continue;
                }
                if !quiet {
                    for u in &online {
                        let from = joined_at.iter().find(|(t, _)| *t == u.token).map_or(0, |(_, at)| at + 1);
                        let lines: Vec<Value> = events[from.min(events.len())..]
                            .iter()
                            .map(|(j, id)| serde_json::json!({"type": if *j { "join" } else { "leave" }, "id": id}))
                            .collect();
                        if !lines.is_empty() {
                            want.push((u.token, lines));
                        }
                    }
                }
                let mut got = Vec::new();
                for (token, payload) in &rec.0 {
                    got.push((*token, json_lines(payload)?));
                }
                got.sort_by_key(|(t, _)| *t);
                want.sort_by_key(|(t, _)| *t);
                prop_assert_eq!(got, want, "presence batch");
                events.clear();
                joined_at.clear();
            }
        }
        prop_assert_eq!(chat.len(), online.len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(250))]

    #[test]
    fn chat_sessions(
        ops in vec(op(), 1..40),
        presence_limit in prop_oneof![0..4usize, Just(256)],
        max_text in prop_oneof![1..12usize, Just(1000)],
    ) {
        run_ops(&ops, presence_limit, max_text)?;
    }
}

#[test]
fn json_corpus() {
    let mut failures = Vec::new();
    for (name, raw) in corpus("json") {
        let want = expected_label(&name);
        let Ok(frame) = String::from_utf8(raw) else {
            failures.push(format!("{name}: not UTF-8 (a text frame always is)"));
            continue;
        };
        let run = || -> Check<String> {
            check_decode(&frame, false)?;
            let (mut chat, users) = chat_with(&["alice", "Bob", "carol"], 256, 1000);
            let outcome = check_handle(&mut chat, &users, &users[0], &frame, 1000)?;
            Ok(match outcome {
                Outcome::Room(_) => "room".into(),
                Outcome::Remote { .. } => "remote".into(),
                Outcome::Private => "private".into(),
                Outcome::Refused(code) => code.as_str().into(),
            })
        };
        match run() {
            Ok(label) if label == want => {}
            Ok(label) => failures.push(format!("{name}: expected {want}, got {label}")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "json corpus:\n{}", failures.join("\n"));
}

/// Found by this fuzzer: serde's derive read `["bob","hi"]` as a private message by position.
#[test]
fn regression_decode_took_json_arrays() {
    for frame in [r#"["Bob","psst"]"#, r#"[null,"hi"]"#, r#" ["x"] "#] {
        assert!(protocol::decode(frame).is_none(), "{frame:?} decodes: {:?}", protocol::decode(frame));
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster messages: what another node (or anything else publishing on our channels) sends.

/// Header fields: ids, node ids, numbers, and junk with spaces or bytes we never send.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_.-]{1,8}",
        "[0-9]{1,3}",
        Just(String::new()),
        any::<String>().prop_map(|s| s.chars().take(6).collect()),
    ]
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
        kind in select(vec!["M", "J", "L", "H", "B", "G", "R", "Q", "P", "E", "K", "X"]),
        fields in vec(field(), 0..4),
        body in proptest::option::of("[ -~\n]{0,20}"),
    ) {
        use chatloop::cluster::{Msg, payload};
        let mut all = vec![kind];
        all.extend(fields.iter().map(String::as_str));
        let b = Bytes::from(payload(&all, body.as_deref().map(str::as_bytes)));
        let Some(m) = Msg::parse(&b) else { return Ok(()) };
        // What the header splits into, as the sender would have meant it.
        let header = all.join(" ");
        let parts: Vec<&str> = header.split(' ').collect();
        let token = |f: &str| !f.is_empty() && f.len() <= 64
            && f.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-.".contains(&c));
        prop_assert!(parts.iter().all(|p| token(p)), "parsed a header with a non-token field: {:?}", parts);
        let line = |l: &Bytes| std::str::from_utf8(l).map(str::to_string).unwrap_or_default();
        let with_body = matches!(m, Msg::Room { .. } | Msg::Private { .. });
        prop_assert_eq!(with_body, body.is_some(), "a body exactly where the kind takes one");
        match m {
            Msg::Room { node, line: l } => {
                prop_assert_eq!(&parts[..], &["M", node][..]);
                prop_assert_eq!(Some(line(&l)), body);
            }
            Msg::Private { node, to, from, line: l } => {
                prop_assert_eq!(&parts[..], &["P", node, to, from][..]);
                prop_assert_eq!(Some(line(&l)), body);
            }
            Msg::Join { node, id } => prop_assert_eq!(&parts[..], &["J", node, id][..]),
            Msg::Leave { node, id } => prop_assert_eq!(&parts[..], &["L", node, id][..]),
            Msg::Hello { node } => prop_assert_eq!(&parts[..], &["H", node][..]),
            Msg::Bye { node } => prop_assert_eq!(&parts[..], &["G", node][..]),
            Msg::Query { node } => prop_assert_eq!(&parts[..], &["Q", node][..]),
            Msg::Bounce { to, from } => prop_assert_eq!(&parts[..], &["E", to, from][..]),
            Msg::Busy { to, from } => prop_assert_eq!(&parts[..], &["K", to, from][..]),
            Msg::Beat { node, count } => {
                prop_assert_eq!(&parts[..2], &["B", node][..]);
                prop_assert_eq!(parts.len(), 3);
                prop_assert_eq!(parts[2].parse::<usize>().ok(), Some(count));
            }
            Msg::Roster { node, ids } => {
                prop_assert_eq!(&parts[..2], &["R", node][..]);
                prop_assert_eq!(&parts[2..], &ids[..]);
            }
        }
    }
}
