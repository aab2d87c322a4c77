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
use chatloop::chat::{Chat, Limits, Outcome, Sink, ids};
use chatloop::http::{self, Parse, Request, Status};
use chatloop::protocol::{self, ErrorCode, Incoming, LOBBY, Replay};
use chatloop::router::{self, Foreign, Route, Rules};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
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
            "\"alice\"", "\"zed\"", "\"\"", "\" bob\"", "\"dev\"", "\"lobby\"",
        ])
        .prop_map(String::from),
        1 => select(vec!["NaN", "01", "-", "tru", "nul", "+1", ".5", "0x10", "Infinity"]).prop_map(String::from),
    ]
}

/// The keys `decode` reads, spelled plainly.
const KEYS: &[&str] = &["\"text\"", "\"to\"", "\"room\"", "\"join\"", "\"leave\"", "\"rooms\""];

/// A key other than a plain one of ours (some still mean one of ours once unescaped).
fn other_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(vec![
            "\"from\"", "\"type\"", "\"ts\"", "\"Text\"", "\"TO\"", "\"t\\u0065xt\"", "\"to \"", "\"\"", "text",
            "'text'", "\"Room\"", "\"r\\u006fom\"", "\"JOIN\"", "\"j\\u006fin\"", "\"room \"", "\"Rooms\"",
            "\"id\"", "\"users\"", "\"last\"", "\"since\"", "\"epoch\"", "\"cid\"",
        ])
        .prop_map(String::from),
        1 => string_body().prop_map(|s| format!("\"{s}\"")),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![2 => select(KEYS).prop_map(String::from), 1 => other_key()]
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

/// Room names as a client might send them: valid in any case, the edges of the length rule,
/// characters outside the set, and an escape that spells `dev` once unescaped.
const ROOM_NAMES: &[&str] = &[
    "lobby",
    "LOBBY",
    "dev",
    "Dev",
    "d.e-v_9",
    "abcdefghijklmnopqrstuvwxyz012345", // 32: the longest valid name
    "",
    "bad room",
    "abcdefghijklmnopqrstuvwxyz0123456", // 33
    "lobby ",
    "dév",
    "d\\u0065v",
    "a/b",
];

/// The value of `room`, `join` or `leave`: mostly a name, sometimes not a string at all.
fn room_value() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => select(ROOM_NAMES).prop_map(|n| format!("\"{n}\"")),
        1 => Just("null".to_string()),
        1 => select(vec!["0", "1", "-1", "1.5", "[\"dev\"]", "{}", "true"]).prop_map(String::from),
        1 => json_leaf(),
    ]
}

/// The value of `rooms`: only `true` asks for the directory.
fn rooms_value() -> impl Strategy<Value = String> {
    select(vec!["true", "true", "false", "null", "1", "\"true\"", "[]"]).prop_map(String::from)
}

/// A well-formed request over a few room names (two of them the same room in another case)
/// and ids, so that sessions really join, leave, speak in and list rooms, and talk privately.
fn room_request() -> impl Strategy<Value = String> {
    let name = || select(vec!["lobby", "LOBBY", "dev", "Dev", "d.e-v_9", "ops", "bad room"]);
    let text = || select(vec!["hi", " ", "hello there"]);
    prop_oneof![
        3 => name().prop_map(|r| format!(r#"{{"join":"{r}"}}"#)),
        2 => name().prop_map(|r| format!(r#"{{"leave":"{r}"}}"#)),
        3 => (name(), text()).prop_map(|(r, t)| format!(r#"{{"room":"{r}","text":"{t}"}}"#)),
        1 => text().prop_map(|t| format!(r#"{{"text":"{t}"}}"#)),
        1 => (select(vec!["Bob", "b0b", "alice", "carol", "zed", "x"]), text())
            .prop_map(|(to, t)| format!(r#"{{"to":"{to}","text":"{t}"}}"#)),
        1 => Just(r#"{"rooms":true}"#.to_string()),
    ]
}

/// A client frame: mostly an object of roughly our shape, sometimes anything.
#[derive(Debug, Clone)]
struct Frame {
    text: String,
    /// Built without mutation from well-formed parts whose keys are all different once
    /// unescaped: such a frame decodes exactly when serde_json sees an object of our shape.
    clean: bool,
}

/// (key, value) pairs of one object.
type Fields = Vec<(String, String)>;

fn frame() -> impl Strategy<Value = Frame> {
    let quoted = |body: BoxedStrategy<String>| body.prop_map(|s| format!("\"{s}\"")).boxed();
    let text = prop_oneof![
        8 => quoted(valid_string_body().boxed()),
        1 => quoted(string_body().boxed()),
        1 => json_value(),
    ]
    .boxed();
    let to = prop_oneof![
        8 => select(vec!["Bob", "bob", "BOB", "alice", "carol", "zed", "", " bob", "d.e-f_9", "b\\u006fb"])
            .prop_map(|id| format!("\"{id}\"")),
        1 => quoted(valid_string_body().boxed()),
        1 => Just("null".to_string()),
        1 => json_leaf(),
    ]
    .boxed();
    let room = room_value().boxed();
    let kv = |k: &str, v: String| (format!("\"{k}\""), v);
    // Mostly the fields of one request, in the shape decode's rules allow; sometimes any mix
    // of our fields, so that mixed requests (`to` with `room`, `join` with `text`, ...) occur.
    let request: BoxedStrategy<Fields> = prop_oneof![
        5 => (text.clone(), prop::option::weighted(0.4, room.clone())).prop_map(move |(t, r)| {
            let mut f = vec![kv("text", t)];
            f.extend(r.map(|r| kv("room", r)));
            f
        }),
        3 => (to.clone(), text.clone()).prop_map(move |(to, t)| vec![kv("to", to), kv("text", t)]),
        2 => room.clone().prop_map(move |r| vec![kv("join", r)]),
        2 => room.clone().prop_map(move |r| vec![kv("leave", r)]),
        1 => rooms_value().prop_map(move |v| vec![kv("rooms", v)]),
        3 => (
            prop::option::weighted(0.6, text),
            prop::option::weighted(0.3, to),
            prop::option::weighted(0.3, room.clone()),
            prop::option::weighted(0.2, room.clone()),
            prop::option::weighted(0.2, room),
            prop::option::weighted(0.2, rooms_value()),
        )
            .prop_map(move |(t, to, r, j, l, rs)| {
                let mut f = Vec::new();
                f.extend(t.map(|v| kv("text", v)));
                f.extend(to.map(|v| kv("to", v)));
                f.extend(r.map(|v| kv("room", v)));
                f.extend(j.map(|v| kv("join", v)));
                f.extend(l.map(|v| kv("leave", v)));
                f.extend(rs.map(|v| kv("rooms", v)));
                f
            }),
    ]
    .boxed();
    // Extra fields mostly have other names; a repeated key of ours is a bad message.
    let extra_key = prop_oneof![6 => other_key(), 1 => json_key()];
    let extra = (extra_key, json_value());
    let fields = (request, vec(extra, 0..2), any::<Index>()).prop_map(|(mut fields, extras, rot)| {
        fields.extend(extras);
        let n = fields.len();
        fields.rotate_left(rot.index(n + 1) % n.max(1));
        fields
    });
    let spacing = vec((ws(), ws()), 6);
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
        3 => room_request().prop_map(|text| Frame { text, clean: true }),
        2 => seeded,
        1 => json_value().prop_map(|text| Frame { text, clean: false }),
        1 => "(?s).{0,200}".prop_map(|text| Frame { text, clean: false }),
        1 => any::<String>().prop_map(|text| Frame { text, clean: false }),
    ]
}

/// Limits small enough that every one of them is reached now and then.
fn limits() -> impl Strategy<Value = Limits> {
    (
        prop_oneof![0..4usize, Just(256)],
        prop_oneof![1..12usize, Just(1000)],
        prop_oneof![1..5usize, Just(10_000)],
        prop_oneof![0..4usize, Just(32)],
    )
        .prop_map(|(presence_limit, max_text, max_rooms, max_rooms_per_user)| Limits {
            presence_limit,
            max_text,
            rate_limit: 20,
            max_rooms,
            max_rooms_per_user,
            ..Limits::default()
        })
}

// ---------------------------------------------------------------------------------------------
// JSON and chat: properties

/// What `decode` must return for an object serde_json has read, by the rules of
/// `protocol::decode`: each field of ours is absent or has its type (`null` is never
/// "absent"), and a frame asks for exactly one thing; a mix of two requests is None.
fn expected_incoming(o: &serde_json::Map<String, Value>) -> Option<Incoming<'_>> {
    let string = |k: &str| match o.get(k) {
        None => Some(None),
        Some(Value::String(s)) => Some(Some(Cow::Borrowed(s.as_str()))),
        Some(_) => None,
    };
    let (text, to, room, join, leave) =
        (string("text")?, string("to")?, string("room")?, string("join")?, string("leave")?);
    let rooms = match o.get("rooms") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return None,
    };
    // History fields: whole numbers that fit u64, and the epoch a string; only with a join.
    let number = |k: &str| match o.get(k) {
        None => Some(None),
        Some(v) => v.as_u64().map(Some),
    };
    let (last, since, epoch) = (number("last")?, number("since")?, string("epoch")?);
    let history = last.is_some() || since.is_some() || epoch.is_some();
    // A cid, on any request: a string of 1 to 64 characters.
    if string("cid")?.is_some_and(|c| !(1..=64).contains(&c.chars().count())) {
        return None;
    }
    Some(match (text, to, room, join, leave, rooms) {
        (Some(text), None, room, None, None, None) if !history => Incoming::Say { room, text },
        (Some(text), Some(to), None, None, None, None) if !history => Incoming::Private { to, text },
        (None, None, None, Some(r), None, None) => {
            let replay = match (last, since, epoch) {
                (None, None, None) => Replay::None,
                (Some(k), None, None) => Replay::Last(k),
                (None, Some(seq), Some(epoch)) => Replay::Since { seq, epoch },
                _ => return None,
            };
            Incoming::Join { room: r, replay }
        }
        (None, None, None, None, Some(r), None) if !history => Incoming::Leave(r),
        (None, None, None, None, None, Some(true)) if !history => Incoming::Rooms,
        _ => return None,
    })
}

/// `decode` agrees with serde_json's own reading of the frame, and takes objects only.
fn check_decode(frame: &str, clean: bool) -> Check {
    let value: Option<Value> = serde_json::from_str(frame).ok();
    let want = value.as_ref().and_then(Value::as_object).and_then(expected_incoming);
    match protocol::decode(frame).map(|(m, _)| m) {
        Some(m) => {
            // README: "Bad JSON, or an object of another shape, gets error bad_message".
            let object = frame.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{');
            prop_assert!(object, "decoded {m:?} from {frame:?}, which is not a JSON object");
            // serde_json's Value is stricter than skipping unknown fields (it refuses lone
            // surrogates, out-of-range numbers and deep nesting anywhere), and it keeps the
            // last of repeated keys where decode refuses them; when it reads the frame at
            // all, decode must have read the same request from it.
            if value.is_some() {
                prop_assert_eq!(Some(&m), want.as_ref(), "{:?}, read by serde_json as {:?}", frame, value);
            }
        }
        None if clean => prop_assert!(want.is_none(), "{frame:?} is {want:?} but did not decode"),
        None => {}
    }
    Ok(())
}

/// The room name rule, written apart from `protocol::room_name`: 1 to 32 of a-z 0-9 _ - .
/// in any case, stored in lowercase.
fn model_room_name(name: &str) -> Option<String> {
    let ok = (1..=32).contains(&name.chars().count())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    ok.then(|| name.to_ascii_lowercase())
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

fn line_text(l: &[u8]) -> String {
    String::from_utf8_lossy(l).into_owned()
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

/// A room as the model knows it.
#[derive(Debug, Default)]
struct RoomModel {
    /// Members' tokens.
    members: Vec<usize>,
    /// This turn's presence events: (joined, id).
    events: Vec<(bool, String)>,
    /// Where a member who joined this turn finds its own join in `events`.
    joined_at: HashMap<usize, usize>,
    /// Above the presence limit at the last flush with events.
    was_quiet: bool,
}

/// The chat as the rules describe it: users, and rooms (a room with no members is gone,
/// and with it its unsent events and its quiet state).
#[derive(Debug)]
struct Model {
    limits: Limits,
    users: Vec<User>,
    rooms: BTreeMap<String, RoomModel>,
    /// The last seq of each room's history (kept after the room empties).
    seqs: BTreeMap<String, u64>,
    /// The last pseq given to each connection.
    pseqs: BTreeMap<usize, u64>,
}

impl Model {
    fn new(limits: Limits) -> Model {
        Model {
            limits,
            users: Vec::new(),
            rooms: BTreeMap::new(),
            seqs: BTreeMap::new(),
            pseqs: BTreeMap::new(),
        }
    }

    fn user(&self, token: usize) -> &User {
        self.users.iter().find(|u| u.token == token).expect("online")
    }

    fn by_id(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| ids::key(&u.id) == ids::key(id))
    }

    fn is_member(&self, room: &str, token: usize) -> bool {
        self.rooms.get(room).is_some_and(|r| r.members.contains(&token))
    }

    fn rooms_of(&self, token: usize) -> Vec<&str> {
        self.rooms.iter().filter(|(_, r)| r.members.contains(&token)).map(|(n, _)| n.as_str()).collect()
    }

    fn member_ids(&self, room: &str) -> Vec<&str> {
        self.rooms[room].members.iter().map(|t| self.user(*t).id.as_str()).collect()
    }

    /// `token` joins `room` (created if need be), which records the event.
    fn enter(&mut self, room: &str, token: usize) {
        let id = self.user(token).id.clone();
        let r = self.rooms.entry(room.to_string()).or_default();
        r.members.push(token);
        r.events.push((true, id));
        r.joined_at.insert(token, r.events.len() - 1);
    }

    /// `token` leaves `room`; true if that emptied it (and so it is gone).
    fn exit(&mut self, room: &str, token: usize) -> bool {
        let id = self.user(token).id.clone();
        let r = self.rooms.get_mut(room).expect("a room the user is in");
        r.members.retain(|t| *t != token);
        r.joined_at.remove(&token);
        r.events.push((false, id));
        let empty = r.members.is_empty();
        if empty {
            self.rooms.remove(room);
        }
        empty
    }

    /// A new connection: online, and in the lobby.
    fn connect(&mut self, user: User) {
        let token = user.token;
        self.users.push(user);
        self.enter(LOBBY, token);
    }

    /// A connection ends: it leaves every room. Returns the rooms that emptied, sorted.
    fn disconnect(&mut self, token: usize) -> Vec<String> {
        let rooms: Vec<String> = self.rooms_of(token).into_iter().map(String::from).collect();
        let emptied = rooms.into_iter().filter(|r| self.exit(r, token)).collect();
        self.users.retain(|u| u.token != token);
        emptied
    }
}

/// A refusal's line names the recipient, the room, or neither.
#[derive(Debug, Clone, PartialEq)]
enum About {
    Nothing,
    To(String),
    Room(String),
}

/// What a frame should come to, by the rules, before anything is sent.
#[derive(Debug, Clone)]
enum Expect {
    Refused(ErrorCode, About),
    Room {
        room: String,
        text: String,
    },
    Private {
        rcpt: User,
        text: String,
    },
    Joined {
        room: String,
        first_local: bool,
    },
    /// A join of a room the sender is already in: `joined` again, and of this turn's presence
    /// events it gets only those after it.
    AlreadyIn {
        room: String,
    },
    Left {
        room: String,
        last_local: bool,
    },
    Directory,
}

fn expect(model: &Model, sender: &User, msg: Option<&Incoming<'_>>) -> Expect {
    use Expect::Refused;
    let Some(msg) = msg else { return Refused(ErrorCode::BadMessage, About::Nothing) };
    let text_ok = |t: &str| {
        let t = t.trim();
        if t.is_empty() {
            Err(ErrorCode::Empty)
        } else if t.chars().count() > model.limits.max_text {
            Err(ErrorCode::TooLong)
        } else {
            Ok(t.to_string())
        }
    };
    match msg {
        Incoming::Say { room, text } => {
            // The text is judged first: an empty message to a bad room is `empty`.
            let text = match text_ok(text) {
                Ok(t) => t,
                Err(code) => return Refused(code, About::Nothing),
            };
            let name = room.as_deref().unwrap_or(LOBBY);
            let Some(room) = model_room_name(name) else {
                return Refused(ErrorCode::BadRoom, About::Room(name.to_string()));
            };
            if !model.is_member(&room, sender.token) {
                return Refused(ErrorCode::NotInRoom, About::Room(room));
            }
            Expect::Room { room, text }
        }
        Incoming::Private { to, text } => {
            // A `to` that names nobody could be is refused before anything else: it must
            // never fall back to a room message.
            if !protocol::valid_id(to) {
                return Refused(ErrorCode::BadMessage, About::Nothing);
            }
            let text = match text_ok(text) {
                Ok(t) => t,
                Err(code) => return Refused(code, About::Nothing),
            };
            match model.by_id(to) {
                Some(rcpt) => Expect::Private { rcpt: rcpt.clone(), text },
                None => Refused(ErrorCode::UnknownRecipient, About::To(to.to_string())),
            }
        }
        Incoming::Join { room: name, .. } => {
            let Some(room) = model_room_name(name) else {
                return Refused(ErrorCode::BadRoom, About::Room(name.to_string()));
            };
            if model.is_member(&room, sender.token) {
                return Expect::AlreadyIn { room };
            }
            let exists = model.rooms.contains_key(&room);
            if model.rooms_of(sender.token).len() >= model.limits.max_rooms_per_user
                || (!exists && model.rooms.len() >= model.limits.max_rooms)
            {
                return Refused(ErrorCode::TooManyRooms, About::Room(room));
            }
            Expect::Joined { room, first_local: !exists }
        }
        Incoming::Leave(name) => {
            let Some(room) = model_room_name(name) else {
                return Refused(ErrorCode::BadRoom, About::Room(name.to_string()));
            };
            if !model.is_member(&room, sender.token) {
                return Refused(ErrorCode::NotInRoom, About::Room(room));
            }
            let last_local = model.rooms[&room].members.len() == 1;
            Expect::Left { room, last_local }
        }
        Incoming::Rooms => Expect::Directory,
    }
}

/// A roster (`welcome`, `joined`, `users`): `users` lists distinct members of a room whose
/// member ids are `members`, `first` first if given, as many as `limit` allows (a roster
/// for someone always names them, even at limit 0); `total` is the true count.
fn check_roster(v: &Value, members: &[&str], limit: usize, first: Option<&str>) -> Check {
    let listed: Vec<&str> =
        v["users"].as_array().map_or(Vec::new(), |a| a.iter().filter_map(Value::as_str).collect());
    prop_assert_eq!(v["total"].as_u64(), Some(members.len() as u64), "total of {}", v);
    let cap = if first.is_some() { limit.max(1) } else { limit };
    prop_assert_eq!(listed.len(), members.len().min(cap), "listed in {}", v);
    if let Some(first) = first {
        prop_assert_eq!(listed.first().copied(), Some(first), "a roster lists its reader first: {}", v);
    }
    for (i, l) in listed.iter().enumerate() {
        prop_assert!(members.contains(l), "{v} lists {l:?}, who is not a member");
        prop_assert!(!listed[..i].contains(l), "{v} lists {l:?} twice");
    }
    Ok(())
}

const TS: u64 = 1_700_000_000_123;

/// Sends `frame` from connection `token` and checks the one outcome, and every line it
/// queued, against the model; then brings the model up to date.
fn check_handle(chat: &mut Chat, model: &mut Model, token: usize, frame: &str) -> Check<Outcome> {
    let sender = model.user(token).clone();
    let mut rec = Rec::default();
    let outcome = chat.handle(token, &sender.id, frame, TS, std::time::Instant::now(), &mut rec);
    let mut lines = Vec::new();
    let cid = protocol::decode(frame).and_then(|(_, c)| c).map(|c| c.to_string());
    for (token, line) in &rec.0 {
        prop_assert!(!line.contains(&b'\n'), "a single line holds a newline: {line:?}");
        let mut v = json_lines(line)?.remove(0);
        // Every line to the sender of a frame with a cid carries it; the rest is checked
        // without it.
        if *token == sender.token
            && let Some(cid) = &cid
        {
            let got = v.as_object_mut().unwrap().remove("cid");
            prop_assert_eq!(
                got.as_ref().and_then(Value::as_str),
                Some(cid.as_str()),
                "cid on {}",
                line_text(line)
            );
        }
        lines.push((*token, v));
    }
    let msg = protocol::decode(frame).map(|(m, _)| m);
    let want = expect(model, &sender, msg.as_ref());
    let tokens: Vec<usize> = lines.iter().map(|(t, _)| *t).collect();
    let only_to_sender = |what: &str| -> Check<&Value> {
        prop_assert_eq!(&tokens, &vec![sender.token], "{} sends one line to the sender alone", what);
        Ok(&lines[0].1)
    };
    match &want {
        Expect::Refused(code, about) => {
            prop_assert_eq!(&outcome, &Outcome::Refused(*code), "frame {:?}", frame);
            let v = only_to_sender("a refusal")?;
            prop_assert_eq!(v["type"].as_str(), Some("error"));
            prop_assert_eq!(v["code"].as_str(), Some(code.as_str()));
            prop_assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
            let (to, room) = match about {
                About::Nothing => (None, None),
                About::To(to) => (Some(to.as_str()), None),
                About::Room(room) => (None, Some(room.as_str())),
            };
            prop_assert_eq!(v.get("to").map(|t| t.as_str()), to.map(Some), "`to` of {}", v);
            prop_assert_eq!(v.get("room").map(|r| r.as_str()), room.map(Some), "`room` of {}", v);
        }
        Expect::Room { room, text } => {
            let Outcome::Room { room: got_room, line, .. } = &outcome else {
                return Err(TestCaseError::fail(format!("frame {frame:?}: {outcome:?}, want {want:?}")));
            };
            prop_assert_eq!(&**got_room, room.as_str());
            let mut got = tokens.clone();
            let mut members = model.rooms[room].members.clone();
            got.sort_unstable();
            members.sort_unstable();
            prop_assert_eq!(got, members, "a room message reaches every member of {} once", room);
            let others = rec.0.iter().filter(|(t, _)| cid.is_none() || *t != sender.token);
            prop_assert!(others.clone().all(|(_, l)| l == line), "one line for all, the one in the outcome");
            let v = &lines[0].1;
            prop_assert_eq!(v["type"].as_str(), Some("message"));
            prop_assert_eq!(v["room"].as_str(), Some(room.as_str()), "the line names the room as stored");
            prop_assert_eq!(v["from"].as_str(), Some(sender.id.as_str()));
            prop_assert_eq!(v["text"].as_str(), Some(text.as_str()));
            prop_assert_eq!(v["ts"].as_u64(), Some(TS));
            prop_assert!(v.get("to").is_none());
            // Numbered in its room's history, which outlives the room's members.
            let seq = model.seqs.entry(room.clone()).or_insert(0);
            *seq += 1;
            prop_assert_eq!(v["seq"].as_u64(), Some(*seq), "room {} numbers its messages 1, 2, ...", room);
        }
        Expect::Private { rcpt, text } => {
            prop_assert_eq!(&outcome, &Outcome::Private, "frame {:?}", frame);
            let mut want_tokens = vec![rcpt.token];
            if rcpt.token != sender.token {
                want_tokens.push(sender.token);
            }
            prop_assert_eq!(tokens, want_tokens, "a private message reaches the recipient, then the sender");
            // The recipient's copy is numbered for it (pseq 1, 2, ...); the sender's is not.
            let pseq = model.pseqs.entry(rcpt.token).or_insert(0);
            *pseq += 1;
            prop_assert_eq!(lines[0].1["pseq"].as_u64(), Some(*pseq), "{}", lines[0].1);
            if let Some((_, mine)) = lines.get(1) {
                prop_assert!(mine.get("pseq").is_none(), "the sender's copy is not numbered: {}", mine);
                let mut theirs = lines[0].1.clone();
                theirs.as_object_mut().unwrap().remove("pseq");
                prop_assert_eq!(&theirs, mine, "the same message otherwise");
            }
            let v = &lines[0].1;
            prop_assert_eq!(v["type"].as_str(), Some("message"));
            prop_assert_eq!(v["from"].as_str(), Some(sender.id.as_str()));
            prop_assert_eq!(
                v["to"].as_str(),
                Some(rcpt.id.as_str()),
                "`to` names the id as its owner typed it"
            );
            prop_assert_eq!(v["text"].as_str(), Some(text.as_str()));
            prop_assert!(v.get("room").is_none(), "a private message is in no room: {}", v);
        }
        Expect::Joined { room, first_local } => {
            let want_outcome = Outcome::Joined { room: Rc::from(room.as_str()), first_local: *first_local };
            prop_assert_eq!(&outcome, &want_outcome, "frame {:?}", frame);
            model.enter(room, sender.token);
            let v = only_to_sender("a join")?;
            prop_assert_eq!(v["type"].as_str(), Some("joined"));
            prop_assert_eq!(v["room"].as_str(), Some(room.as_str()));
            check_roster(v, &model.member_ids(room), model.limits.presence_limit, Some(&sender.id))?;
        }
        Expect::AlreadyIn { room } => {
            prop_assert_eq!(&outcome, &Outcome::Answered, "frame {:?}", frame);
            let v = only_to_sender("a repeated join")?;
            prop_assert_eq!(v["type"].as_str(), Some("joined"));
            prop_assert_eq!(v["room"].as_str(), Some(room.as_str()));
            check_roster(v, &model.member_ids(room), model.limits.presence_limit, Some(&sender.id))?;
            // The roster lists everyone as of now: of this turn's events, only later ones follow.
            let r = model.rooms.get_mut(room).expect("a room the sender is in");
            match r.events.len() {
                0 => r.joined_at.remove(&sender.token),
                n => r.joined_at.insert(sender.token, n - 1),
            };
        }
        Expect::Left { room, last_local } => {
            let want_outcome = Outcome::Left { room: Rc::from(room.as_str()), last_local: *last_local };
            prop_assert_eq!(&outcome, &want_outcome, "frame {:?}", frame);
            model.exit(room, sender.token);
            let v = only_to_sender("a leave")?;
            prop_assert_eq!(v, &serde_json::json!({"type": "left", "room": room}));
        }
        Expect::Directory => {
            prop_assert_eq!(&outcome, &Outcome::Answered, "frame {:?}", frame);
            let v = only_to_sender("the directory")?;
            let mut sizes: Vec<(&str, usize)> =
                model.rooms.iter().map(|(n, r)| (n.as_str(), r.members.len())).collect();
            sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            let entries: Vec<Value> = sizes
                .iter()
                .take(model.limits.presence_limit)
                .map(|(room, users)| serde_json::json!({"room": room, "users": users}))
                .collect();
            let directory = serde_json::json!({"type": "rooms", "rooms": entries, "total": sizes.len()});
            prop_assert_eq!(v, &directory, "the largest rooms first, ties by name");
        }
    }
    Ok(outcome)
}

/// Flushes presence and checks every payload against the model's batches, room by room: each
/// member of a room with events this turn gets the events after its own join, nothing while
/// the room is above the limit, and one `users` line instead when the room crossed the
/// limit either way since its last flush with events.
fn check_flush(chat: &mut Chat, model: &mut Model) -> Check {
    let mut rec = Rec::default();
    chat.flush_presence(&mut rec);
    let limit = model.limits.presence_limit;
    let mut got: BTreeMap<(usize, String), Vec<Value>> = BTreeMap::new();
    for (token, payload) in &rec.0 {
        let lines = json_lines(payload)?;
        let room = lines[0]["room"].as_str().unwrap_or_default().to_string();
        prop_assert!(
            lines.iter().all(|l| l["room"].as_str() == Some(room.as_str())),
            "a payload mixes rooms: {lines:?}"
        );
        let before = got.insert((*token, room), lines);
        prop_assert!(before.is_none(), "two payloads for one room and member in one flush: {:?}", rec.0);
    }
    let mut want: BTreeMap<(usize, String), Vec<Value>> = BTreeMap::new();
    let mut truths = Vec::new();
    for (name, r) in model.rooms.iter_mut() {
        if r.events.is_empty() {
            continue; // a room without news this turn sends nothing, whatever its size
        }
        let quiet = r.members.len() > limit;
        let crossed = quiet != r.was_quiet;
        r.was_quiet = quiet;
        if crossed {
            truths.push(name.clone());
        } else if !quiet {
            for t in &r.members {
                let from = r.joined_at.get(t).map_or(0, |at| at + 1);
                let lines: Vec<Value> = r.events[from..]
                    .iter()
                    .map(|(j, id)| serde_json::json!({"type": if *j { "join" } else { "leave" }, "room": name, "id": id}))
                    .collect();
                if !lines.is_empty() {
                    want.insert((*t, name.clone()), lines);
                }
            }
        }
        r.events.clear();
        r.joined_at.clear();
    }
    for name in truths {
        let members = model.member_ids(&name);
        for t in &model.rooms[&name].members {
            let lines = got.remove(&(*t, name.clone()));
            prop_assert!(lines.as_ref().is_some_and(|l| l.len() == 1), "{name} crossed the limit: {lines:?}");
            let v = &lines.unwrap()[0];
            prop_assert_eq!(v["type"].as_str(), Some("users"), "{} crossed the limit", name);
            check_roster(v, &members, limit, None)?;
        }
    }
    prop_assert_eq!(got, want, "presence batches");
    Ok(())
}

/// The chat's own tables agree with the model: users, rooms, and who is in which.
fn check_tables(chat: &Chat, model: &Model) -> Check {
    prop_assert_eq!(chat.len(), model.users.len());
    prop_assert_eq!(chat.rooms.len(), model.rooms.len());
    let mut got: Vec<(String, Vec<String>)> = chat
        .local_members()
        .into_iter()
        .map(|(id, rooms)| {
            let mut rooms: Vec<String> = rooms.into_iter().map(String::from).collect();
            rooms.sort();
            (id.to_string(), rooms)
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, Vec<String>)> = model
        .users
        .iter()
        .map(|u| (u.id.clone(), model.rooms_of(u.token).into_iter().map(String::from).collect()))
        .collect();
    want.sort();
    prop_assert_eq!(got, want, "memberships");
    Ok(())
}

/// Connects `id` as connection `token` and checks the welcome (the lobby's roster).
fn check_connect(chat: &mut Chat, model: &mut Model, id: &str, token: usize) -> Check<bool> {
    let mut rec = Rec::default();
    let got = chat.join(id, token, &[0; 16], None, 0, std::time::Instant::now(), &mut rec).map(|_| ());
    let want = if !protocol::valid_id(id) {
        Err(ErrorCode::BadId)
    } else if model.by_id(id).is_some() {
        Err(ErrorCode::IdTaken)
    } else {
        Ok(())
    };
    prop_assert_eq!(got, want, "join {:?}", id);
    if got.is_err() {
        prop_assert!(rec.0.is_empty(), "a refused join pushed {:?}", rec.0);
        return Ok(false);
    }
    model.connect(User { token, id: id.to_string() });
    prop_assert_eq!(rec.0.len(), 1);
    prop_assert_eq!(rec.0[0].0, token);
    let v = json_lines(&rec.0[0].1)?.remove(0);
    prop_assert_eq!(v["type"].as_str(), Some("welcome"));
    prop_assert_eq!(v["id"].as_str(), Some(id));
    // The welcome is the lobby's roster, as it was for a client before rooms: no `room`.
    prop_assert!(v.get("room").is_none(), "{}", v);
    check_roster(&v, &model.member_ids(LOBBY), model.limits.presence_limit, Some(id))?;
    Ok(true)
}

/// A chat of `ids` (connections 0, 1, ...), all in the lobby, presence flushed.
fn chat_with(ids: &[&str], limits: Limits) -> Check<(Chat, Model)> {
    let mut chat = Chat::new(limits);
    let mut model = Model::new(limits);
    for (token, id) in ids.iter().enumerate() {
        prop_assert!(check_connect(&mut chat, &mut model, id, token)?, "{id} did not join");
    }
    check_flush(&mut chat, &mut model)?;
    Ok((chat, model))
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

    #[test]
    fn room_names(name in prop_oneof![select(ROOM_NAMES).prop_map(String::from), "[A-Za-z0-9_.\\- é/]{0,34}"]) {
        prop_assert_eq!(protocol::room_name(&name).map(|c| c.into_owned()), model_room_name(&name), "{:?}", name);
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// One frame, after a few room requests that put the users in various rooms.
    #[test]
    fn chat_handle_frames(
        setup in vec((any::<Index>(), room_request()), 0..6),
        f in frame(),
        sender in any::<Index>(),
        limits in limits(),
    ) {
        let (mut chat, mut model) = chat_with(IDS, limits)?;
        for (i, request) in &setup {
            let token = model.users[i.index(model.users.len())].token;
            check_handle(&mut chat, &mut model, token, request)?;
        }
        let token = model.users[sender.index(model.users.len())].token;
        check_handle(&mut chat, &mut model, token, &f.text)?;
        check_tables(&chat, &model)?;
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
        3 => (any::<Index>(), frame()).prop_map(|(i, f)| Op::Handle(i, f)),
        // Room requests on their own too: sessions are about who is in which room.
        3 => (any::<Index>(), room_request()).prop_map(|(i, text)| Op::Handle(i, Frame { text, clean: true })),
        2 => Just(Op::Flush),
    ]
}

/// Connections, disconnections, frames and presence flushes in any order, against the
/// model: ids unique ignoring case, the welcome is the lobby's, rooms and presence per room
/// exactly as chat/rooms.rs says.
fn run_ops(ops: &[Op], limits: Limits) -> Check {
    let mut chat = Chat::new(limits);
    let mut model = Model::new(limits);
    let mut next_token = 0;
    for op in ops {
        match op {
            Op::Join(id) => {
                check_connect(&mut chat, &mut model, id, next_token)?;
                next_token += 1;
            }
            Op::Leave(i) => {
                if model.users.is_empty() {
                    continue;
                }
                let u = model.users[i.index(model.users.len())].clone();
                let mut emptied: Vec<String> = chat.leave(&u.id).iter().map(|r| r.to_string()).collect();
                emptied.sort();
                // Disconnecting leaves every room: one leave event in each.
                prop_assert_eq!(emptied, model.disconnect(u.token), "rooms with no member left");
            }
            Op::LeaveId(id) => {
                // (`leave` records the spelling it is given; the server always passes the
                // owner's, so a differently-cased leave of an online id is not modelled.)
                if model.by_id(id).is_none() {
                    prop_assert!(chat.leave(id).is_empty());
                }
            }
            Op::Handle(i, f) => {
                if model.users.is_empty() {
                    continue;
                }
                let token = model.users[i.index(model.users.len())].token;
                check_handle(&mut chat, &mut model, token, &f.text)?;
            }
            Op::Flush => check_flush(&mut chat, &mut model)?,
        }
        check_tables(&chat, &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(250))]

    #[test]
    fn chat_sessions(ops in vec(op(), 1..40), limits in limits()) {
        run_ops(&ops, limits)?;
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
            let (mut chat, mut model) = chat_with(&["alice", "Bob", "carol"], Limits::default())?;
            let outcome = check_handle(&mut chat, &mut model, 0, &frame)?;
            Ok(match outcome {
                Outcome::Room { .. } | Outcome::Number { .. } => "room".into(),
                Outcome::Remote { .. } => "remote".into(),
                Outcome::Private => "private".into(),
                Outcome::Joined { .. } => "joined".into(),
                Outcome::Left { .. } => "left".into(),
                Outcome::Answered => "answered".into(),
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
    for frame in
        [r#"["Bob","psst"]"#, r#"[null,"hi"]"#, r#" ["x"] "#, r#"["dev"]"#, r#"[null,null,null,"dev"]"#]
    {
        assert!(
            protocol::decode(frame).is_none(),
            "{frame:?} decodes: {:?}",
            protocol::decode(frame).map(|(m, _)| m)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Cluster messages: what another node (or anything else publishing on our channels) sends.

/// Header fields: ids, node ids, rooms as a roster marks them, numbers, and junk with spaces
/// or bytes we never send.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9_.-]{1,8}",
        2 => "@[a-z0-9_.@-]{0,6}",
        1 => "[0-9]{1,3}",
        1 => Just(String::new()),
        1 => any::<String>().prop_map(|s| s.chars().take(6).collect()),
    ]
}

/// An id or node id as nodes send them.
fn id_token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,32}"
}

/// A room name as stored (lowercase).
fn room_token() -> impl Strategy<Value = String> {
    "[a-z0-9_.-]{1,32}"
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
        kind in select(vec!["M", "J", "L", "j", "l", "H", "B", "G", "R", "Q", "P", "E", "K", "U", "Z", "z", "y", "X", "m"]),
        fields in vec(field(), 0..5),
        body in proptest::option::of("[ -~\n]{0,20}"),
    ) {
        use chatloop::cluster::{Msg, payload, roster_fields};
        let mut all = vec![kind];
        all.extend(fields.iter().map(String::as_str));
        let b = Bytes::from(payload(&all, body.as_deref().map(str::as_bytes)));
        let Some(m) = Msg::parse(&b) else { return Ok(()) };
        // What the header splits into, as the sender would have meant it.
        let header = all.join(" ");
        let parts: Vec<&str> = header.split(' ').collect();
        // '@' marks a room in a roster; the rule is one for every field.
        let token = |f: &str| !f.is_empty() && f.len() <= 64
            && f.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-.@".contains(&c));
        prop_assert!(parts.iter().all(|p| token(p)), "parsed a header with a non-token field: {:?}", parts);
        let line = |l: &Bytes| std::str::from_utf8(l).map(str::to_string).unwrap_or_default();
        let with_body = matches!(m, Msg::Room { .. } | Msg::Private { .. });
        prop_assert_eq!(with_body, body.is_some(), "a body exactly where the kind takes one");
        match m {
            Msg::Room { node, room, epoch, line: l } => {
                prop_assert_eq!(&parts[..], &["M", node, room, epoch][..]);
                prop_assert_eq!(Some(line(&l)), body);
            }
            Msg::Private { node, to, from, line: l } => {
                prop_assert_eq!(&parts[..], &["P", node, to, from][..]);
                prop_assert_eq!(Some(line(&l)), body);
            }
            Msg::RoomJoin { node, id, room } => prop_assert_eq!(&parts[..], &["j", node, id, room][..]),
            Msg::RoomLeave { node, id, room } => prop_assert_eq!(&parts[..], &["l", node, id, room][..]),
            Msg::Join { node, id } => prop_assert_eq!(&parts[..], &["J", node, id][..]),
            Msg::Leave { node, id } => prop_assert_eq!(&parts[..], &["L", node, id][..]),
            Msg::Hello { node } => prop_assert_eq!(&parts[..], &["H", node][..]),
            Msg::Bye { node } => prop_assert_eq!(&parts[..], &["G", node][..]),
            Msg::Query { node } => prop_assert_eq!(&parts[..], &["Q", node][..]),
            Msg::Bounce { to, from } => prop_assert_eq!(&parts[..], &["E", to, from][..]),
            Msg::Undelivered { to, from } => prop_assert_eq!(&parts[..], &["U", to, from][..]),
            Msg::Busy { to, from } => prop_assert_eq!(&parts[..], &["K", to, from][..]),
            Msg::Takeover { node, id, token } => prop_assert_eq!(&parts[..], &["Z", node, id, token][..]),
            Msg::Released { node, id, ok } => {
                prop_assert_eq!(&parts[..], &[if ok { "z" } else { "y" }, node, id][..])
            }
            Msg::Beat { node, count, memberships } => {
                prop_assert_eq!(&parts[..2], &["B", node][..]);
                prop_assert_eq!(parts.len(), 4);
                prop_assert_eq!(parts[2].parse::<usize>().ok(), Some(count));
                prop_assert_eq!(parts[3].parse::<usize>().ok(), Some(memberships));
            }
            Msg::Roster { node, members } => {
                prop_assert_eq!(&parts[..2], &["R", node][..]);
                // Every field after the node is an id (no '@') followed by its rooms ('@'
                // marked), so the members, written out again, are the fields again.
                prop_assert!(members.iter().all(|(id, _)| !id.starts_with('@')), "{:?}", members);
                let again = roster_fields(members.iter().cloned());
                prop_assert_eq!(&again[..], &parts[2..]);
            }
        }
    }

    /// Every message, encoded as a node encodes it, parses back to itself.
    #[test]
    fn cluster_messages_round_trip(
        node in id_token(),
        id in id_token(),
        room in room_token(),
        counts in (any::<usize>(), any::<usize>()),
        line in "[ -~\n]{0,20}",
        members in vec((id_token(), vec(room_token(), 0..3)), 0..4),
    ) {
        use chatloop::cluster::{Msg, channel_room, payload, room_channel, roster_fields};
        let (n, m) = (counts.0.to_string(), counts.1.to_string());
        let body = Bytes::from(line.clone());
        let cases: Vec<(Vec<&str>, Option<&str>, Msg<'_>)> = vec![
            (vec!["M", &node, &room, &id], Some(&line), Msg::Room { node: &node, room: &room, epoch: &id, line: body.clone() }),
            (vec!["j", &node, &id, &room], None, Msg::RoomJoin { node: &node, id: &id, room: &room }),
            (vec!["l", &node, &id, &room], None, Msg::RoomLeave { node: &node, id: &id, room: &room }),
            (vec!["B", &node, &n, &m], None, Msg::Beat { node: &node, count: counts.0, memberships: counts.1 }),
            (vec!["P", &node, &id, &id], Some(&line), Msg::Private { node: &node, to: &id, from: &id, line: body.clone() }),
        ];
        for (fields, body, want) in cases {
            let b = Bytes::from(payload(&fields, body.map(str::as_bytes)));
            prop_assert_eq!(Msg::parse(&b), Some(want));
        }
        let members: Vec<(&str, Vec<&str>)> =
            members.iter().map(|(id, rooms)| (id.as_str(), rooms.iter().map(String::as_str).collect())).collect();
        let fields = roster_fields(members.iter().cloned());
        let mut all = vec!["R", node.as_str()];
        all.extend(fields.iter().map(String::as_str));
        let b = Bytes::from(payload(&all, None));
        prop_assert_eq!(Msg::parse(&b), Some(Msg::Roster { node: &node, members }));
        let channel = room_channel(&room);
        prop_assert_eq!(channel_room(&channel), Some(room.as_str()));
    }
}

// --- The frame reader (`ws::Reader`) -----------------------------------------------------------

mod frames {
    use super::*;
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
                prop_oneof![
                    any::<u8>(),
                    select(vec![0x01u8, 0x81, 0x00, 0x80, 0x82, 0x89, 0x8a, 0x88, 0x02])
                ],
                prop_oneof![Just(None), any::<[u8; 4]>().prop_map(Some), any::<[u8; 4]>().prop_map(Some)],
                vec(any::<u8>(), 0..200),
            )
                .prop_map(|(b0, mask, payload)| client_frame(b0, &payload, mask)),
            0..8,
        )
        .prop_map(|frames| frames.concat())
    }
}

proptest! {
    #![proptest_config(config(2000))]

    /// Arbitrary bytes never panic, whatever the limits, and split anywhere they decode the
    /// same as whole: the same events, then the same end.
    #[test]
    fn ws_arbitrary_bytes(
        input in prop_oneof![vec(any::<u8>(), 0..600), frames::frame_soup()],
        cuts in vec(any::<Index>(), 0..8),
        max_message in prop_oneof![Just(1usize << 20), 0usize..300],
        max_wire in prop_oneof![Just(u32::MAX), 0u32..2000],
    ) {
        let lim = chatloop::ws::Limits { max_message, max_wire };
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        cuts.sort();
        let _ = frames::decode(&input, &cuts, &lim);
        let lim = chatloop::ws::Limits { max_message, max_wire: u32::MAX };
        let whole = frames::decode(&input, &[], &lim);
        let split = frames::decode(&input, &cuts, &lim);
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
        msgs in vec(frames::msg(), 1..5),
        cuts in vec(any::<Index>(), 0..12),
        closing in any::<Option<u16>>(),
    ) {
        let (mut input, mut want) = (Vec::new(), Vec::new());
        for m in &msgs {
            m.frames(&mut input, &mut want);
        }
        if let Some(code) = closing {
            input.extend(frames::client_frame(0x88, &[&code.to_be_bytes()[..], b"bye"].concat(), Some([7, 7, 7, 7])));
            want.push(frames::Got::Close(Some(code), b"bye".to_vec()));
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
        cuts.sort();
        for cuts in [&[][..], &cuts[..]] {
            let (got, end, idle) = frames::decode(&input, cuts, &frames::LIM);
            prop_assert_eq!(end, Ok(()));
            prop_assert_eq!(&got, &want);
            prop_assert!(idle, "nothing held after the last message");
        }
    }
}
