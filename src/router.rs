//! Decides what a complete request gets. Pure: a parsed request in, a `Route` out, so every
//! status can be tested (and fuzzed) without a socket.

use crate::assets::Assets;
use crate::http::{self, Request, Status};
use bytes::Bytes;

/// What the server should do with a request.
#[derive(Debug, PartialEq)]
pub enum Route {
    /// Complete the WebSocket handshake; `echo` picks /echo over the chat.
    /// `resume`: the token a client presents to take back an id held for it; `pseq`: the
    /// last private message number it has (0: none).
    /// `token`: a signed token, from `Authorization: Bearer` or else `?token=` (checked only
    /// with `--auth token`; `Some("")` when one was given but unreadable).
    Upgrade { echo: bool, key: String, id: String, resume: Option<String>, pseq: u64, token: Option<String> },
    /// Send this response, then close.
    Respond(Bytes),
    /// Refuse with a status and a one-line reason, then close.
    Refuse(Status, &'static str),
    /// Refuse a Host or Origin that is not ours; the server logs the value (at warn: it is the
    /// most common proxy mistake, and the sign of a rebinding attempt).
    Foreign(Foreign),
    /// The metrics page (the server renders it); `head` for HEAD.
    Metrics { head: bool },
    /// A backend API request (`/api/...` with `--api-key`): the server checks its key and
    /// body (`server/api.rs`) and `api::dispatch` answers it.
    Api,
}

/// Which header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    Host,
    Origin,
}

impl Foreign {
    pub fn status(self) -> Status {
        match self {
            Foreign::Host => Status::Misdirected,
            Foreign::Origin => Status::Forbidden,
        }
    }

    pub fn why(self) -> &'static str {
        match self {
            Foreign::Host => "this server does not answer for that Host (see --allow-host)",
            Foreign::Origin => "origin not allowed (see --allow-origin)",
        }
    }
}

/// The parts of the configuration routing depends on.
pub struct Rules<'a> {
    pub echo: bool,
    pub allow_origin: &'a [String],
    /// `--allow-host`, lowercased.
    pub allow_host: &'a [String],
    /// The listening address is a loopback one (see `http::host_allowed`).
    pub bound_to_loopback: bool,
    pub assets: &'a Assets,
    /// Whether upgrades need a signed token (`--auth token`).
    pub token_mode: bool,
    /// `GET /config`'s body: what the page must know to sign in (see `config_json`).
    pub config: &'a [u8],
    /// The `--token-url`'s origin when it is an absolute URL (`url_origin`): the page fetches
    /// tokens there, so its CSP allows connecting to it.
    pub token_origin: Option<&'a str>,
    /// Whether the backend API is on (`--api-key`); without it `/api/` is an unknown path.
    pub api: bool,
}

/// The origin (`scheme://host[:port]`, lowercased) of an absolute http(s) URL; None for a
/// path or anything else.
pub fn url_origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let origin = format!("{scheme}://{authority}").to_ascii_lowercase();
    http::parse_origin(&origin).is_some().then_some(origin)
}

/// `GET /config`: `{"auth":"open"|"token","token_url":URL|null}`, for the page to know whether
/// to sign in and where fresh tokens come from.
pub fn config_json(token_mode: bool, token_url: Option<&str>) -> Vec<u8> {
    let v = serde_json::json!({ "auth": if token_mode { "token" } else { "open" }, "token_url": token_url });
    v.to_string().into_bytes()
}

/// The token of an `Authorization: Bearer TOKEN` value (the scheme is case-insensitive);
/// None for another scheme.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

pub fn route(req: &Request, rules: &Rules<'_>) -> Route {
    let path = req.path();
    let head = req.method == "HEAD";
    // Before anything else, for every path: a rebound name must not reach the page, /ws or
    // /metrics (which trusts loopback peers, and a rebinding browser is one).
    let host = req.host.as_deref().unwrap_or_default();
    if !http::host_allowed(host, rules.allow_host, rules.bound_to_loopback) {
        return Route::Foreign(Foreign::Host);
    }
    if path == "/api" || path.starts_with("/api/") {
        if !rules.api {
            return Route::Refuse(Status::NotFound, "not found");
        }
        if !req.is_upgrade() {
            return Route::Api;
        }
    }
    if req.is_upgrade() {
        let echo = match path {
            "/ws" => false,
            "/echo" if rules.echo => true,
            _ => return Route::Refuse(Status::NotFound, "no WebSocket endpoint here"),
        };
        if req.method != "GET" {
            return Route::Refuse(Status::MethodNotAllowed, "an upgrade must be a GET");
        }
        if !req.connection_upgrade {
            return Route::Refuse(Status::BadRequest, "Connection header lacks 'upgrade'");
        }
        if req.body {
            // Its bytes would be read as WebSocket frames.
            return Route::Refuse(Status::BadRequest, "an upgrade request carries no body");
        }
        if req.ws_version.as_deref() != Some("13") {
            return Route::Refuse(Status::UpgradeRequired, "only WebSocket version 13 is spoken");
        }
        let Some(key) = req.ws_key.as_deref().filter(|k| http::valid_ws_key(k)) else {
            return Route::Refuse(Status::BadRequest, "missing or invalid Sec-WebSocket-Key");
        };
        if !http::origin_allowed(req, rules.allow_origin) {
            return Route::Foreign(Foreign::Origin);
        }
        for (name, why) in [
            ("id", "the query names id twice"),
            ("resume", "the query names resume twice"),
            ("pseq", "the query names pseq twice"),
            ("token", "the query names token twice"),
        ] {
            // An open server reads no token, so a repeated one is none of its business.
            if req.query_count(name) > 1 && (name != "token" || rules.token_mode) {
                return Route::Refuse(Status::BadRequest, why);
            }
        }
        let id = req.query_param("id").unwrap_or_default();
        let resume = req.query_param("resume");
        // Absent or empty: nothing yet. Anything but digits is refused rather than read as
        // 0, which would resend what the client may already have, or as a guess.
        let pseq = match req.query_param("pseq").filter(|p| !p.is_empty()) {
            None => 0,
            Some(p) => match p.parse::<u64>() {
                Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Route::Refuse(Status::BadRequest, "pseq is not a whole number"),
            },
        };
        let token = match &req.authorization {
            Some(h) => Some(bearer(h).unwrap_or_default().to_string()),
            None => (req.query_count("token") > 0).then(|| req.query_param("token").unwrap_or_default()),
        };
        return Route::Upgrade { echo, key: key.to_string(), id, resume, pseq, token };
    }
    if req.method != "GET" && !head {
        return Route::Refuse(Status::MethodNotAllowed, "only GET and HEAD are served");
    }
    match path {
        // /echo exists only when mounted; otherwise it is an unknown path like any other.
        "/ws" => Route::Refuse(Status::BadRequest, "this endpoint speaks WebSocket only"),
        "/echo" if rules.echo => Route::Refuse(Status::BadRequest, "this endpoint speaks WebSocket only"),
        "/healthz" => {
            Route::Respond(http::response(Status::Ok, "text/plain; charset=utf-8", "", b"ok\n", head))
        }
        "/metrics" => Route::Metrics { head },
        "/config" => Route::Respond(http::response(Status::Ok, "application/json", "", rules.config, head)),
        _ => match rules.assets.get(path) {
            Some(f) => {
                let csp = csp(req, rules.token_origin);
                Route::Respond(http::response(Status::Ok, f.content_type, &csp, &f.body, head))
            }
            None => Route::Refuse(Status::NotFound, "not found"),
        },
    }
}

/// The page's Content-Security-Policy: our own origin only, WebSocket included, and the token
/// URL's origin (`token_origin`, checked at start-up: see `url_origin`) for its fetches.
fn csp(req: &Request, token_origin: Option<&str>) -> String {
    let host = req.host.as_deref().filter(|h| {
        h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b':' | b'-' | b'[' | b']'))
    });
    let mut connect = host.map_or(String::new(), |h| format!(" ws://{h} wss://{h}"));
    if let Some(o) = token_origin {
        connect.push(' ');
        connect.push_str(o);
    }
    format!(
        "Content-Security-Policy: default-src 'self'; connect-src 'self'{connect}; \
         img-src 'self' data:; frame-ancestors 'none'\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Parse, parse};

    fn route_raw(raw: &str, echo: bool) -> Route {
        let Parse::Done(req, _) = parse(raw.as_bytes()) else { panic!("{raw}") };
        let allow_host = ["h".to_string()];
        route(
            &req,
            &Rules {
                echo,
                allow_origin: &[],
                allow_host: &allow_host,
                bound_to_loopback: true,
                assets: &Assets::Embedded,
                token_mode: false,
                config: br#"{"auth":"open","token_url":null}"#,
                token_origin: None,
                api: raw.contains("/api/"),
            },
        )
    }

    fn upgrade(path: &str, extra: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn table() {
        let cases: &[(&str, bool, &str)] = &[
            ("GET / HTTP/1.1\r\nHost: h\r\n\r\n", false, "200"),
            ("HEAD /app.js HTTP/1.1\r\nHost: h\r\n\r\n", false, "200"),
            ("GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n", false, "200"),
            ("GET /config HTTP/1.1\r\nHost: h\r\n\r\n", false, "200"),
            ("GET /metrics HTTP/1.1\r\nHost: h\r\n\r\n", false, "metrics"),
            ("DELETE / HTTP/1.1\r\nHost: h\r\n\r\n", false, "405"),
            ("GET /nope HTTP/1.1\r\nHost: h\r\n\r\n", false, "404"),
            ("GET /ws HTTP/1.1\r\nHost: h\r\n\r\n", false, "400"),
            ("GET /echo HTTP/1.1\r\nHost: h\r\n\r\n", true, "400"),
            ("GET /echo HTTP/1.1\r\nHost: h\r\n\r\n", false, "404"),
            ("GET /../x HTTP/1.1\r\nHost: h\r\n\r\n", false, "404"),
            ("GET / HTTP/1.1\r\nHost: localhost:8080\r\n\r\n", false, "200"),
            ("GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n", false, "421"),
            ("GET /metrics HTTP/1.1\r\nHost: evil.example\r\n\r\n", false, "421"),
            ("GET /nope HTTP/1.1\r\nHost: evil.example\r\n\r\n", false, "421"),
            // `api` is on in these rules only for targets naming /api/ (see route_raw).
            ("GET /api/rooms HTTP/1.1\r\nHost: h\r\n\r\n", false, "api"),
            ("POST /api/publish HTTP/1.1\r\nHost: h\r\n\r\n", false, "api"),
            ("GET /api HTTP/1.1\r\nHost: h\r\n\r\n", false, "404"),
            ("POST /api HTTP/1.1\r\nHost: h\r\n\r\n", false, "404"),
            ("GET /api/rooms HTTP/1.1\r\nHost: evil.example\r\n\r\n", false, "421"),
        ];
        for (raw, echo, want) in cases {
            let got = match route_raw(raw, *echo) {
                Route::Respond(b) => String::from_utf8_lossy(&b[9..12]).into_owned(),
                Route::Refuse(s, _) => (s as u16).to_string(),
                Route::Foreign(f) => (f.status() as u16).to_string(),
                Route::Metrics { .. } => "metrics".into(),
                Route::Upgrade { .. } => "101".into(),
                Route::Api => "api".into(),
            };
            assert_eq!(&got, want, "{raw}");
        }
    }

    #[test]
    fn upgrades() {
        assert_eq!(
            route_raw(&upgrade("/ws?id=bob", KEY), false),
            Route::Upgrade {
                echo: false,
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
                id: "bob".into(),
                resume: None,
                pseq: 0,
                token: None,
            }
        );
        assert!(matches!(route_raw(&upgrade("/echo", KEY), true), Route::Upgrade { echo: true, .. }));
        let refused = |raw: String, echo| match route_raw(&raw, echo) {
            Route::Refuse(s, _) => s as u16,
            Route::Foreign(f) => f.status() as u16,
            other => panic!("{other:?}"),
        };
        assert_eq!(refused(upgrade("/echo", KEY), false), 404);
        assert_eq!(refused(upgrade("/x", KEY), false), 404);
        assert_eq!(refused(upgrade("/ws", ""), false), 400);
        assert_eq!(refused(upgrade("/ws", &format!("{KEY}Origin: http://evil\r\n")), false), 403);
        assert_eq!(refused(upgrade("/ws", KEY).replace(": 13", ": 8"), false), 426);
        assert_eq!(refused(upgrade("/ws", KEY).replace("GET", "POST"), false), 405);
        assert_eq!(refused(upgrade("/ws", &format!("{KEY}Content-Length: 3\r\n")), false), 400);
        assert_eq!(refused(upgrade("/ws", &format!("{KEY}Transfer-Encoding: chunked\r\n")), false), 400);
        assert_eq!(refused(upgrade("/ws", &format!("{KEY}Origin: ftp://h:1\r\n")), false), 403);
        assert_eq!(refused(upgrade("/ws?id=x&id=y", KEY), false), 400, "which id? the client must say");
        assert_eq!(refused(upgrade("/ws?id=x&resume=a&resume=b", KEY), false), 400);
        assert!(matches!(route_raw(&upgrade("/ws?id=x&idx=y", KEY), false), Route::Upgrade { .. }));
        for bad in ["junk", "-1", "%2B1", "0x2", "1.0", "18446744073709551616"] {
            assert_eq!(refused(upgrade(&format!("/ws?id=x&pseq={bad}"), KEY), false), 400, "pseq={bad}");
        }
        for (good, n) in [("", 0), ("0", 0), ("007", 7), ("18446744073709551615", u64::MAX)] {
            let got = route_raw(&upgrade(&format!("/ws?id=x&pseq={good}"), KEY), false);
            assert!(matches!(got, Route::Upgrade { pseq, .. } if pseq == n), "pseq={good}: {got:?}");
        }
        let rebound = upgrade("/ws", &format!("{KEY}Origin: http://evil.example\r\n"))
            .replace("Host: h:1", "Host: evil.example");
        assert_eq!(route_raw(&rebound, false), Route::Foreign(Foreign::Host));
    }

    #[test]
    fn csp_takes_only_a_clean_host() {
        let Parse::Done(req, _) = parse(b"GET / HTTP/1.1\r\nHost: a.b:8080\r\n\r\n") else { panic!() };
        assert!(csp(&req, None).contains("connect-src 'self' ws://a.b:8080 wss://a.b:8080;"));
        let sso = Some("https://sso.example");
        assert!(
            csp(&req, sso).contains("connect-src 'self' ws://a.b:8080 wss://a.b:8080 https://sso.example;")
        );
        let Parse::Done(req, _) = parse(b"GET / HTTP/1.1\r\nHost: a; script-src *\r\n\r\n") else { panic!() };
        assert!(csp(&req, None).contains("connect-src 'self';"));
    }

    #[test]
    fn a_token_urls_origin() {
        assert_eq!(
            url_origin("https://SSO.example.com:8443/a/token?x=1").as_deref(),
            Some("https://sso.example.com:8443")
        );
        assert_eq!(url_origin("http://127.0.0.1:9/t").as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(url_origin("https://[::1]#x").as_deref(), Some("https://[::1]"));
        for bad in [
            "/auth/token",
            "//sso.example/t",
            "ftp://sso.example/t",
            "https://a b/t",
            "https://u@h/t",
            "https:///t",
        ] {
            assert_eq!(url_origin(bad), None, "{bad}");
        }
    }
}
