//! The docs are checked against the real server.
//!
//! - Every ```transcript block of docs/protocol.md is replayed against a fresh server (the
//!   binary, started with the block's `$ chatloop FLAGS` line, if any): what the block says a
//!   client sends is sent as written, and every line the block says a client receives must be
//!   the next line that client receives, with the same keys and the same values (see
//!   `matches` for the few that differ from run to run). After the block, no client may have
//!   received a line the block does not show.
//! - Every line type and every error code the server can send (read from src/protocol/mod.rs)
//!   appears in a replayed block, bar the exemptions named in `NOT_REPLAYED`.
//! - Every series and label value `/metrics` renders (with `--redis`, so the cluster's series
//!   too) is named in docs/operations.md.
//!
//! The transcript format (one step a line; `#` lines and blank lines are comments):
//!
//! ```text
//! $ chatloop --rate-limit 1        the server's flags (first line only; default: none)
//! alice connects                   opens /ws?id=alice
//! mallory connects /ws?id=a1ice    opens that path
//! alice < {"type":"welcome",...}   the next line alice receives
//! alice > {"text":"hi"}            sends that text frame as written
//! alice < close 4409               the next thing alice receives is a close with that code
//! alice < http 400                 the upgrade was refused with that status
//! bob < ping p:1                   the next thing bob receives is a ping with that payload
//! alice drops                      the socket goes without a close frame (a lost connection)
//! alice closes                     sends a close frame and waits for the server's
//! alice > {"text":"m{n}"} ×3       the step three times, {n} counting 1, 2, 3
//! ```

#[path = "it/util.rs"]
mod util;

use serde_json::Value;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};
use util::Server;

/// Keys whose values differ from run to run: only their type is compared. A string's value
/// in the doc stands for the real one from then on (a `resume` token presented later, an
/// `epoch` asked for in a `since` join).
const VOLATILE: &[&str] = &["ts", "resume", "epoch"];

/// What the server can send that no transcript replays, each with the reason and where it
/// is tested instead. docs/protocol.md must still show it.
const NOT_REPLAYED: &[(&str, &str)] = &[
    (
        "cluster_unconfirmed",
        "needs a Redis that stalls after reading a message: tests/it/cluster.rs stops a real one",
    ),
    ("banned", "needs the backend API (POST /api/ban): tests/it/moderation.rs"),
    ("muted", "needs the backend API (POST /api/mute): tests/it/moderation.rs"),
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Block {
    /// Line number in the file of the block's first line.
    line: usize,
    lines: Vec<(usize, String)>,
}

/// The ```transcript blocks of a markdown file.
fn transcripts(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut cur: Option<Block> = None;
    for (i, l) in md.lines().enumerate() {
        let n = i + 1;
        match &mut cur {
            None if l.trim_end() == "```transcript" => cur = Some(Block { line: n + 1, lines: Vec::new() }),
            None => {}
            Some(_) if l.starts_with("```") => out.push(cur.take().unwrap()),
            Some(b) => b.lines.push((n, l.to_string())),
        }
    }
    assert!(cur.is_none(), "an unclosed transcript block");
    out
}

#[allow(clippy::large_enum_variant)] // a handful of clients per block
enum Conn {
    Open(WebSocket<TcpStream>, VecDeque<String>),
    Refused(u16),
    Gone,
}

struct Run {
    server: Server,
    clients: HashMap<String, Conn>,
    /// Doc value -> real value, for the volatile strings seen so far.
    subst: Vec<(String, String)>,
    /// Line types and error codes seen in expected lines.
    seen: BTreeSet<String>,
}

impl Run {
    fn substitute(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (doc, real) in &self.subst {
            s = s.replace(doc.as_str(), real);
        }
        s
    }

    fn ws(&mut self, who: &str) -> Result<&mut WebSocket<TcpStream>, String> {
        match self.clients.get_mut(who) {
            Some(Conn::Open(ws, _)) => Ok(ws),
            _ => Err(format!("{who} is not connected")),
        }
    }

    /// The next line for `who`, or what came instead (a close, nothing within `wait`).
    fn next(&mut self, who: &str, wait: Duration) -> Result<Next, String> {
        let Some(Conn::Open(ws, backlog)) = self.clients.get_mut(who) else {
            return Err(format!("{who} is not connected"));
        };
        if let Some(l) = backlog.pop_front() {
            return Ok(Next::Line(l));
        }
        let end = Instant::now() + wait;
        loop {
            let left = end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            ws.get_ref().set_read_timeout(Some(left)).unwrap();
            match ws.read() {
                Ok(Message::Text(t)) => {
                    let mut lines = t.split('\n').map(str::to_string);
                    let first = lines.next().unwrap();
                    backlog.extend(lines);
                    return Ok(Next::Line(first));
                }
                Ok(Message::Close(c)) => {
                    let _ = ws.flush();
                    return Ok(Next::Close(c.map(|c| u16::from(c.code))));
                }
                Ok(Message::Ping(p)) => return Ok(Next::Ping(String::from_utf8_lossy(&p).into_owned())),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    if Instant::now() >= end {
                        return Ok(Next::Nothing);
                    }
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(Next::Close(None));
                }
                Err(e) => return Err(format!("{who}: read: {e}")),
            }
        }
    }

    /// The next line or close, skipping pings (which tungstenite answers).
    fn next_data(&mut self, who: &str, wait: Duration) -> Result<Next, String> {
        loop {
            match self.next(who, wait)? {
                Next::Ping(_) => {}
                other => return Ok(other),
            }
        }
    }

    fn step(&mut self, step: &str) -> Result<(), String> {
        let (who, rest) = step.split_once(' ').ok_or("no step")?;
        let rest = rest.trim_start();
        if let Some(path) = rest.strip_prefix("connects") {
            let path = match path.trim() {
                "" => format!("/ws?id={who}"),
                p => self.substitute(p),
            };
            let sock = TcpStream::connect(self.server.addr).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let url = format!("ws://{}{path}", self.server.addr);
            let conn = match tungstenite::client::client(url, sock) {
                Ok((ws, _)) => Conn::Open(ws, VecDeque::new()),
                Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                    Conn::Refused(r.status().as_u16())
                }
                Err(e) => return Err(format!("handshake: {e}")),
            };
            self.clients.insert(who.to_string(), conn);
            return Ok(());
        }
        if rest == "drops" {
            self.ws(who)?;
            self.clients.insert(who.to_string(), Conn::Gone);
            return Ok(());
        }
        if rest == "closes" {
            let ws = self.ws(who)?;
            ws.close(None).map_err(|e| e.to_string())?;
            loop {
                match self.next(who, Duration::from_secs(5))? {
                    Next::Close(_) => break,
                    Next::Line(l) => return Err(format!("{who} got a line after its close: {l}")),
                    Next::Nothing => return Err(format!("{who}: no close came back")),
                    Next::Ping(_) => {}
                }
            }
            self.clients.insert(who.to_string(), Conn::Gone);
            return Ok(());
        }
        if let Some(text) = rest.strip_prefix("> ") {
            let text = self.substitute(text);
            return self.ws(who)?.send(Message::text(text)).map_err(|e| e.to_string());
        }
        let Some(want) = rest.strip_prefix("< ") else { return Err(format!("unknown step {rest:?}")) };
        if let Some(status) = want.strip_prefix("http ") {
            return match self.clients.get(who) {
                Some(Conn::Refused(s)) if s.to_string() == status => Ok(()),
                Some(Conn::Refused(s)) => Err(format!("{who}: refused with {s}, not {status}")),
                _ => Err(format!("{who}: the upgrade was not refused")),
            };
        }
        if let Some(code) = want.strip_prefix("close ") {
            let got = self.next_data(who, Duration::from_secs(5))?;
            self.clients.insert(who.to_string(), Conn::Gone);
            return match got {
                Next::Close(Some(c)) if c.to_string() == code => Ok(()),
                other => Err(format!("{who}: expected close {code}, got {other:?}")),
            };
        }
        if let Some(payload) = want.strip_prefix("ping ") {
            return match self.next(who, Duration::from_secs(5))? {
                Next::Ping(p) if p == payload => Ok(()),
                other => Err(format!("{who}: expected a ping {payload:?}, got {other:?}")),
            };
        }
        let want: Value =
            serde_json::from_str(want).map_err(|e| format!("the doc's line is not JSON: {e}"))?;
        let got = match self.next_data(who, Duration::from_secs(5))? {
            Next::Line(l) => l,
            other => return Err(format!("{who}: expected {want}, got {other:?}")),
        };
        let got_v: Value =
            serde_json::from_str(&got).map_err(|e| format!("server sent non-JSON {got:?}: {e}"))?;
        let mut subst = Vec::new();
        matches(&want, &got_v, "", &mut subst)
            .map_err(|e| format!("{who}: {e}\n  doc:    {want}\n  server: {got}"))?;
        for (d, r) in subst {
            if !self.subst.iter().any(|(x, _)| *x == d) {
                self.subst.push((d, r));
            }
        }
        if let Some(t) = want["type"].as_str() {
            self.seen.insert(t.to_string());
        }
        if let Some(c) = want["code"].as_str() {
            self.seen.insert(c.to_string());
        }
        Ok(())
    }

    /// After a block: nobody got a line the block does not show.
    fn quiet(&mut self) -> Result<(), String> {
        let mut names: Vec<String> = self.clients.keys().cloned().collect();
        names.sort();
        for who in names {
            if !matches!(self.clients.get(&who), Some(Conn::Open(..))) {
                continue;
            }
            match self.next_data(&who, Duration::from_millis(150))? {
                Next::Nothing => {}
                other => return Err(format!("{who} received more than the block shows: {other:?}")),
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Next {
    Line(String),
    Close(Option<u16>),
    Ping(String),
    Nothing,
}

/// `got` has exactly `want`'s keys, with the same values, except: a volatile key's value need
/// only have the same JSON type (its doc string is recorded to stand for the real one), and
/// the `users` and `away` lists are compared as sets, though a welcome's or joined's first
/// user (the client itself) must be first.
fn matches(want: &Value, got: &Value, key: &str, subst: &mut Vec<(String, String)>) -> Result<(), String> {
    if VOLATILE.contains(&key) {
        return match (want, got) {
            (Value::String(w), Value::String(g)) => {
                subst.push((w.clone(), g.clone()));
                Ok(())
            }
            (Value::Number(_), Value::Number(_)) => Ok(()),
            _ => Err(format!("{key}: {got} is not of the type of {want}")),
        };
    }
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let wk: BTreeSet<&String> = w.keys().collect();
            let gk: BTreeSet<&String> = g.keys().collect();
            if wk != gk {
                return Err(format!("keys differ: doc {wk:?}, server {gk:?}"));
            }
            for (k, wv) in w {
                matches(wv, &g[k], k, subst)?;
            }
            if let (Some("welcome" | "joined"), Some(Value::Array(wu)), Some(Value::Array(gu))) =
                (w.get("type").and_then(Value::as_str), w.get("users"), g.get("users"))
                && wu.first() != gu.first()
            {
                return Err(format!("users: the client itself first: doc {wu:?}, server {gu:?}"));
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) if key == "users" || key == "away" => {
            let mut w: Vec<String> = w.iter().map(Value::to_string).collect();
            let mut g: Vec<String> = g.iter().map(Value::to_string).collect();
            w.sort();
            g.sort();
            if w == g { Ok(()) } else { Err(format!("{key}: doc {w:?}, server {g:?}")) }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                return Err(format!("{key}: {} entries in the doc, {} from the server", w.len(), g.len()));
            }
            w.iter().zip(g).try_for_each(|(w, g)| matches(w, g, key, subst))
        }
        _ if want == got => Ok(()),
        _ => Err(format!("{key}: doc {want}, server {got}")),
    }
}

fn run_block(b: &Block, seen: &mut BTreeSet<String>) -> Result<(), String> {
    let mut steps: Vec<(usize, String)> = Vec::new();
    let mut flags: Vec<String> = Vec::new();
    for (n, l) in &b.lines {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(f) = l.strip_prefix("$ chatloop") {
            if !steps.is_empty() {
                return Err(format!("line {n}: `$ chatloop` must come first"));
            }
            flags = f.split_whitespace().map(str::to_string).collect();
            continue;
        }
        // `STEP ×N`: N times, {n} counting from 1.
        match l.rsplit_once(" ×") {
            Some((step, times)) if times.parse::<usize>().is_ok() => {
                for i in 1..=times.parse::<usize>().unwrap() {
                    steps.push((*n, step.replace("{n}", &i.to_string())));
                }
            }
            _ => steps.push((*n, l.to_string())),
        }
    }
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut run = Run {
        server: Server::start(&args),
        clients: HashMap::new(),
        subst: Vec::new(),
        seen: BTreeSet::new(),
    };
    for (n, step) in &steps {
        run.step(step).map_err(|e| format!("docs/protocol.md:{n}: {step}\n  {e}"))?;
    }
    run.quiet().map_err(|e| format!("docs/protocol.md, the block at line {}: {e}", b.line))?;
    seen.append(&mut run.seen);
    Ok(())
}

/// The line types and error codes src/protocol/ can produce (its lines are made in mod.rs).
fn protocol_names() -> (BTreeSet<String>, BTreeSet<String>) {
    let src = read("src/protocol/mod.rs");
    let quoted_after = |marker: &str| -> BTreeSet<String> {
        src.match_indices(marker)
            .filter_map(|(i, _)| {
                let rest = &src[i + marker.len()..];
                let end = rest.find('"')?;
                let name = &rest[..end];
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_').then(|| name.to_string())
            })
            .collect()
    };
    let mut types = quoted_after("r#type: \"");
    // The presence lines get their type from a match.
    types.extend(quoted_after("Presence::Join => \""));
    types.extend(quoted_after("Presence::Leave => \""));
    types.extend(quoted_after("Presence::Away => \""));
    types.extend(quoted_after("Presence::Back => \""));
    let body = src.split("pub fn as_str(self)").nth(1).expect("ErrorCode::as_str");
    let body = &body[..body.find("\n    }\n").expect("end of as_str")];
    let codes: BTreeSet<String> =
        body.lines().filter_map(|l| l.split("=> \"").nth(1)?.split('"').next().map(str::to_string)).collect();
    assert!(types.len() >= 12 && codes.len() >= 14, "{types:?} {codes:?}");
    (types, codes)
}

#[test]
fn every_protocol_example_replays_against_the_server() {
    let md = read("docs/protocol.md");
    let blocks = transcripts(&md);
    assert!(blocks.len() >= 10, "docs/protocol.md has {} transcript blocks", blocks.len());
    let mut seen = BTreeSet::new();
    let failures: Vec<String> = blocks.iter().filter_map(|b| run_block(b, &mut seen).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} blocks failed:\n\n{}",
        failures.len(),
        blocks.len(),
        failures.join("\n\n")
    );

    let (types, codes) = protocol_names();
    for name in types.iter().chain(&codes) {
        if let Some((_, why)) = NOT_REPLAYED.iter().find(|(n, _)| n == name) {
            assert!(md.contains(&format!("\"{name}\"")), "docs/protocol.md does not show {name} ({why})");
            continue;
        }
        assert!(seen.contains(name), "no transcript in docs/protocol.md shows a line with {name:?}");
    }
}

#[test]
fn every_api_status_the_metrics_label_is_one_api_md_documents() {
    let api = read("docs/api.md");
    let documented: BTreeSet<u16> =
        api.lines().filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok()).collect();
    assert!(documented.len() >= 8, "{documented:?}");
    // 200 is every answer that is not an error; 0 counts any other status.
    let labelled = chatloop::metrics::API_STATUSES.iter().filter(|s| !matches!(**s, 0 | 200));
    let never: Vec<u16> = labelled.filter(|s| !documented.contains(s)).copied().collect();
    assert!(never.is_empty(), "labelled but never answered, per docs/api.md: {never:?}");
}

#[test]
fn operations_names_every_metric() {
    let ops = read("docs/operations.md");
    // A Redis nobody answers at: the node renders its cluster series too.
    let server = Server::start(&["--redis", "redis://127.0.0.1:1"]);
    let body = server.get("/metrics");
    let mut missing = Vec::new();
    let mut series = 0;
    for line in body.lines().filter(|l| l.starts_with("chatloop_") || l.starts_with("process_")) {
        series += 1;
        let name = line.split(['{', ' ']).next().unwrap();
        if !ops.contains(&format!("`{name}")) {
            missing.push(name.to_string());
        }
        // Label values (reasons, codes, kinds), but not the version.
        if let Some(labels) = line.split_once('{').map(|(_, l)| l.split('}').next().unwrap())
            && !labels.starts_with("version=")
        {
            let value = labels.split('"').nth(1).unwrap();
            if !ops.contains(&format!("`{value}`")) && !ops.contains(&format!("\"{value}\"")) {
                missing.push(format!("{name}{{{labels}}}"));
            }
        }
    }
    assert!(series > 40, "{body}");
    assert!(body.contains("chatloop_cluster_up"), "no cluster series with --redis:\n{body}");
    assert!(missing.is_empty(), "docs/operations.md does not name {missing:?}");
}
