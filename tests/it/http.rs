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
    let head = s.raw(b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    assert!(s.get("/healthz").ends_with("\r\n\r\nok\n"));
}

#[test]
fn unknown_paths_methods_and_garbage_get_statuses() {
    let s = Server::start(&[]);
    assert!(s.get("/nope.html").starts_with("HTTP/1.1 404"));
    assert!(s.raw(b"POST / HTTP/1.1\r\nHost: localhost\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(s.raw(b"GARBAGE\r\n\r\n").starts_with("HTTP/1.1 400"));
    assert!(s.get("/echo").starts_with("HTTP/1.1 404"), "/echo is not mounted without --echo");
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
    let r = s.raw(b"GET http://evil/../Cargo.toml HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 404") || r.starts_with("HTTP/1.1 400"), "{r}");
}

#[test]
fn public_dir_serves_only_its_own_regular_files() {
    let root = std::env::temp_dir().join(format!("chatloop-public-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = root.join("pub");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("index.html"), "<!doctype html>home").unwrap();
    std::fs::write(dir.join("sub/page.txt"), "inside").unwrap();
    std::fs::write(root.join("secret.txt"), "outside").unwrap();
    std::os::unix::fs::symlink(root.join("secret.txt"), dir.join("host")).unwrap();
    std::os::unix::fs::symlink(dir.join("sub/page.txt"), dir.join("alias.txt")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("fifo").into_os_string().into_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
    // A path through the symlinked directory names the same place as the real one.
    std::os::unix::fs::symlink(&dir, root.join("link")).unwrap();
    let s = Server::start(&["--public", root.join("link").to_str().unwrap()]);
    // Nothing writes to the FIFO: an open that waited would hold the loop (and this read) up.
    for path in ["/fifo", "/host", "/sub", "/fifo"] {
        let r = s.get(path);
        assert!(r.starts_with("HTTP/1.1 404"), "{path}: {r}");
        assert!(!r.contains("outside"), "{path} leaked a file outside --public");
    }
    assert!(s.get("/healthz").ends_with("\r\n\r\nok\n"), "the loop still answers");
    assert!(s.get("/").ends_with("home"));
    assert!(s.get("/sub/page.txt").ends_with("\r\n\r\ninside"));
    assert!(s.get("/alias.txt").ends_with("\r\n\r\ninside"), "a symlink inside to inside is served");
    drop(s);
    let _ = std::fs::remove_dir_all(&root);
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

/// The body of a response: what follows the head.
fn body(r: &str) -> &str {
    r.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn every_400_carries_a_one_line_reason() {
    let s = Server::start(&[]);
    for (req, why) in [
        (&b"GET / HTTP/1.0\r\n\r\n"[..], "only HTTP/1.1 is served\n"),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n", "duplicate Host header\n"),
        (b"GARBAGE\r\n\r\n", "malformed request line\n"),
        (b"GET / HTTP/1.1\r\n\r\n", "an HTTP/1.1 request needs a Host header\n"),
    ] {
        let r = s.raw(req);
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        assert_eq!(body(&r), why);
    }
}

#[test]
fn an_upgrade_without_host_or_with_a_body_gets_400() {
    let s = Server::start(&[]);
    let no_host = upgrade("/ws?id=a", &format!("{KEY}{V13}")).replace("Host: 127.0.0.1\r\n", "");
    let r = s.raw(no_host.as_bytes());
    assert!(r.starts_with("HTTP/1.1 400") && body(&r).contains("Host"), "{r}");
    for announce in ["Content-Length: 4\r\n", "Transfer-Encoding: chunked\r\n"] {
        let r = s.raw(upgrade("/ws?id=a", &format!("{KEY}{V13}{announce}")).as_bytes());
        assert!(r.starts_with("HTTP/1.1 400") && body(&r) == "an upgrade request carries no body\n", "{r}");
    }
    let zero = upgrade("/ws?id=a", &format!("{KEY}{V13}Content-Length: 0\r\n"));
    let mut sock = std::net::TcpStream::connect(s.addr).unwrap();
    std::io::Write::write_all(&mut sock, zero.as_bytes()).unwrap();
    let mut buf = [0u8; 12];
    std::io::Read::read_exact(&mut sock, &mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101", "Content-Length: 0 is no body");
}

#[test]
fn a_loopback_server_answers_only_loopback_hosts_on_every_route() {
    let s = Server::start(&[]);
    let port = s.addr.port();
    let ask = |req: String| s.raw(req.as_bytes());
    for path in ["/", "/metrics", "/healthz", "/app.js", "/nope"] {
        let r = ask(format!("GET {path} HTTP/1.1\r\nHost: evil.example:{port}\r\n\r\n"));
        assert!(r.starts_with("HTTP/1.1 421 Misdirected Request\r\n"), "{path}: {r}");
        assert!(body(&r).contains("--allow-host") && body(&r).ends_with('\n'), "{r}");
    }
    // The rebinding attack itself: the page's own origin, rebound to 127.0.0.1.
    let rebound = upgrade("/ws?id=a", &format!("{KEY}{V13}Origin: http://evil.example:{port}\r\n"))
        .replace("Host: 127.0.0.1", &format!("Host: evil.example:{port}"));
    assert!(ask(rebound).starts_with("HTTP/1.1 421"));
    assert!(s.wait_log(&format!("refused Host \"evil.example:{port}\"")), "logged with the value");
    assert!(s.log().lines().any(|l| l.contains("WARN") && l.contains("refused Host")), "at warn");
    for host in ["localhost", "LOCALHOST:1", "127.0.0.1", "127.1.2.3:99", "[::1]", "[::1]:8080"] {
        let r = ask(format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        assert!(r.starts_with("HTTP/1.1 200"), "{host}: {r}");
    }
}

#[test]
fn allow_host_admits_a_proxied_name() {
    let s = Server::start(&["--allow-host", "chat.example", "--allow-origin", "https://chat.example"]);
    let r = s.raw(b"GET / HTTP/1.1\r\nHost: chat.example\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(s.raw(b"GET / HTTP/1.1\r\nHost: other.example\r\n\r\n").starts_with("HTTP/1.1 421"));
    let req = upgrade("/ws?id=p", &format!("{KEY}{V13}Origin: https://chat.example\r\n"))
        .replace("Host: 127.0.0.1", "Host: chat.example");
    let mut sock = std::net::TcpStream::connect(s.addr).unwrap();
    std::io::Write::write_all(&mut sock, req.as_bytes()).unwrap();
    let mut buf = [0u8; 12];
    std::io::Read::read_exact(&mut sock, &mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101");
}

#[test]
fn an_origin_is_scheme_host_and_port_and_a_refusal_is_logged_with_it() {
    let s = Server::start(&[]);
    let port = s.addr.port();
    for origin in [format!("ftp://127.0.0.1:{port}"), format!("http://127.0.0.1:{}", port ^ 1)] {
        let req = upgrade("/ws?id=a", &format!("{KEY}{V13}Origin: {origin}\r\n"))
            .replace("Host: 127.0.0.1", &format!("Host: 127.0.0.1:{port}"));
        let r = s.raw(req.as_bytes());
        assert!(r.starts_with("HTTP/1.1 403"), "{origin}: {r}");
        assert!(s.wait_log(&format!("refused Origin \"{origin}\"")), "{origin} not logged");
    }
    assert_eq!(s.log().matches("refused Origin").count(), 2, "once per connection");
}
