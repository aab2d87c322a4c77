//! The HTTP side: the page, statuses, upgrades refused with a reason.

use crate::util::Server;

#[test]
fn page_is_served_with_types_and_security_headers() {
    let s = Server::start(&[]);
    let r = s.get("/");
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.contains("Content-Type: text/html; charset=utf-8\r\n"));
    assert!(r.contains("X-Content-Type-Options: nosniff\r\n"));
    assert!(r.contains("Content-Security-Policy: default-src 'self'"));
    assert!(r.to_lowercase().contains("<!doctype html>"));
    for (path, ty) in [("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let r = s.get(path);
        assert!(r.starts_with("HTTP/1.1 200") && r.contains(&format!("Content-Type: {ty}")), "{path}: {r}");
    }
    let head = s.raw(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    assert!(s.get("/healthz").ends_with("\r\n\r\nok\n"));
}

#[test]
fn unknown_paths_methods_and_garbage_get_statuses() {
    let s = Server::start(&[]);
    assert!(s.get("/nope.html").starts_with("HTTP/1.1 404"));
    assert!(s.raw(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(s.raw(b"GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400"));
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert!(s.raw(big.as_bytes()).starts_with("HTTP/1.1 431"));
    assert!(s.get("/ws").starts_with("HTTP/1.1 400"), "plain GET on /ws");
}

#[test]
fn no_path_leaves_public() {
    let s = Server::start(&[]);
    for p in [
        "/../Cargo.toml",
        "/%2e%2e/Cargo.toml",
        "/%252e%252e/Cargo.toml",
        "/..%2fCargo.toml",
        "/.%2e/src/main.rs",
        "/a%00",
        "/..\\Cargo.toml",
    ] {
        let r = s.get(p);
        assert!(r.starts_with("HTTP/1.1 404") || r.starts_with("HTTP/1.1 400"), "{p}: {r}");
        assert!(!r.contains("[package]"), "{p} leaked a file");
    }
    let r = s.raw(b"GET http://evil/../Cargo.toml HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 404") || r.starts_with("HTTP/1.1 400"), "{r}");
}

fn upgrade(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
    )
}

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
const V13: &str = "Sec-WebSocket-Version: 13\r\n";

#[test]
fn bad_upgrades_get_clear_statuses() {
    let s = Server::start(&[]);
    let cases = [
        (upgrade("/ws?id=a", V13), "400"),
        (upgrade("/ws?id=a", &format!("Sec-WebSocket-Key: short\r\n{V13}")), "400"),
        (upgrade("/ws?id=a", &format!("{KEY}Sec-WebSocket-Version: 8\r\n")), "426"),
        (upgrade("/ws?id=a", &format!("{KEY}{V13}Origin: http://evil.example\r\n")), "403"),
        (upgrade("/elsewhere", &format!("{KEY}{V13}")), "404"),
        (upgrade("/echo", &format!("{KEY}{V13}")), "404"),
    ];
    for (req, status) in cases {
        let r = s.raw(req.as_bytes());
        assert!(r.starts_with(&format!("HTTP/1.1 {status}")), "{req}\n=> {r}");
        if status == "426" {
            assert!(r.contains("Sec-WebSocket-Version: 13\r\n"));
        }
    }
    assert_switches(&s, "http://127.0.0.1");
}

/// An upgrade from `origin` gets 101 (the response is not read to the end: the socket stays up).
fn assert_switches(s: &Server, origin: &str) {
    let req = upgrade("/ws?id=a", &format!("{KEY}{V13}Origin: {origin}\r\n"));
    let mut sock = std::net::TcpStream::connect(s.addr).unwrap();
    std::io::Write::write_all(&mut sock, req.as_bytes()).unwrap();
    let mut buf = [0u8; 12];
    std::io::Read::read_exact(&mut sock, &mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101", "origin {origin}");
}

#[test]
fn allow_origin_flag_lets_a_foreign_origin_in() {
    let s = Server::start(&["--allow-origin", "https://chat.example"]);
    assert_switches(&s, "https://chat.example");
    let r = s.raw(upgrade("/ws?id=b", &format!("{KEY}{V13}Origin: https://other.example\r\n")).as_bytes());
    assert!(r.starts_with("HTTP/1.1 403"), "only the allowed origin: {r}");
}

#[test]
fn incomplete_request_is_closed_at_the_handshake_timeout() {
    use std::io::{Read, Write};
    let s = Server::start(&["--handshake-timeout", "0.3"]);
    let mut slow = std::net::TcpStream::connect(s.addr).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t0 = std::time::Instant::now();
    slow.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
    let waited = t0.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(250) && waited < std::time::Duration::from_secs(3),
        "{waited:?}"
    );
    assert!(s.wait_log("handshake timeout"));
    // The server still serves others.
    assert!(s.get("/").starts_with("HTTP/1.1 200"));
}
