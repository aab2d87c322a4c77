//! Is chatload honest? It runs against the real server while an independent client, written
//! here with blocking tungstenite and serde_json, counts what chatload's senders really sent.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// The server, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server(extra: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatloop"));
    cmd.args(["--addr", "127.0.0.1:0"]);
    // The rate limit off unless the test sets one: a flag is given once.
    if !extra.contains(&"--rate-limit") {
        cmd.args(["--rate-limit", "0"]);
    }
    let mut child = cmd
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chatloop");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read listening line");
    let addr =
        line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("{line:?}")).to_string();
    // Keep the pipe open (and drained) for as long as the server runs.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Server { child, addr }
}

/// Runs chatload to the end (bounded by its own deadline and this one).
fn chatload(args: &[&str]) -> (Output, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatload"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chatload");
    let deadline = Instant::now() + Duration::from_secs(40);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chatload ran past 40 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (out, stdout)
}

/// A chatload command line, flag by flag in the order written: `Argv::to(&srv.addr)` starts
/// with `--addr`, each method adds one `--flag value`, and `run` runs [`chatload`] on exactly
/// those arguments.
#[derive(Default)]
struct Argv(Vec<String>);

impl Argv {
    fn to(addr: &str) -> Argv {
        Argv::default().addr(addr)
    }
    fn flag(mut self, name: &str, value: impl std::fmt::Display) -> Argv {
        self.0.extend([name.to_string(), value.to_string()]);
        self
    }
    /// Arguments as given, after the ones so far.
    fn args(mut self, args: &[&str]) -> Argv {
        self.0.extend(args.iter().map(|a| a.to_string()));
        self
    }
    fn addr(self, addr: &str) -> Argv {
        self.flag("--addr", addr)
    }
    fn mode(self, mode: &str) -> Argv {
        self.flag("--mode", mode)
    }
    fn conns(self, n: u32) -> Argv {
        self.flag("--conns", n)
    }
    fn senders(self, n: u32) -> Argv {
        self.flag("--senders", n)
    }
    fn rooms(self, n: u32) -> Argv {
        self.flag("--rooms", n)
    }
    fn rate(self, per_sec: u32) -> Argv {
        self.flag("--rate", per_sec)
    }
    fn duration(self, secs: impl std::fmt::Display) -> Argv {
        self.flag("--duration", secs)
    }
    fn drain(self, secs: impl std::fmt::Display) -> Argv {
        self.flag("--drain", secs)
    }
    fn prefix(self, prefix: &str) -> Argv {
        self.flag("--id-prefix", prefix)
    }
    fn pid(self, pid: impl std::fmt::Display) -> Argv {
        self.flag("--pid", pid)
    }
    fn run(&self) -> (Output, String) {
        chatload(&self.0.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// The key=value pairs of the last line, which must be the summary.
fn summary(stdout: &str) -> HashMap<String, String> {
    let last = stdout.lines().last().unwrap_or_default();
    let rest =
        last.strip_prefix("summary ").unwrap_or_else(|| panic!("last line is not a summary: {last:?}"));
    rest.split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("not key=value: {kv:?}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn num(s: &HashMap<String, String>, key: &str) -> u64 {
    s.get(key).unwrap_or_else(|| panic!("summary lacks {key}")).parse().unwrap_or_else(|_| panic!("{key}"))
}

fn connect(addr: &str, id: &str) -> WebSocket<MaybeTlsStream<TcpStream>> {
    let (ws, _) = tungstenite::connect(format!("ws://{addr}/ws?id={id}")).expect("observer connects");
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    }
    ws
}

/// Joins `room` and waits for the server's `joined`.
fn join(ws: &mut WebSocket<MaybeTlsStream<TcpStream>>, room: &str) {
    ws.send(Message::text(format!(r#"{{"join":"{room}"}}"#))).expect("send join");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                for line in t.as_str().split('\n') {
                    let v: serde_json::Value = serde_json::from_str(line).expect("server sends JSON lines");
                    if v["type"] == "joined" && v["room"] == room {
                        return;
                    }
                    assert_ne!(v["type"], "error", "join {room}: {line}");
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                    && Instant::now() < deadline => {}
            Err(e) => panic!("no joined for {room}: {e}"),
        }
    }
}

/// A room message as the observer saw it: its room (`lobby` included; the server names it on
/// every room line), sender and text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Seen {
    room: String,
    from: String,
    text: String,
}

/// Reads room messages until told to stop and 500 ms have passed without one. Returns every
/// one it saw, counted by its own JSON parsing.
fn observe(mut ws: WebSocket<MaybeTlsStream<TcpStream>>, stop: Arc<AtomicBool>) -> JoinHandle<Vec<Seen>> {
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut last = Instant::now();
        let hard = Instant::now() + Duration::from_secs(60);
        loop {
            match ws.read() {
                Ok(Message::Text(t)) => {
                    for line in t.as_str().split('\n') {
                        let v: serde_json::Value =
                            serde_json::from_str(line).expect("server sends JSON lines");
                        if v["type"] == "message" && v.get("to").is_none() {
                            seen.push(Seen {
                                room: v["room"].as_str().expect("a room line names its room").to_string(),
                                from: v["from"].as_str().unwrap().to_string(),
                                text: v["text"].as_str().unwrap().to_string(),
                            });
                            last = Instant::now();
                        }
                    }
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("observer lost its connection: {e}"),
            }
            let quiet = last.elapsed() > Duration::from_millis(500);
            if (stop.load(Ordering::Relaxed) && quiet) || Instant::now() > hard {
                return seen;
            }
        }
    })
}

#[test]
fn room_counts_match_an_independent_observer() {
    let srv = server(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let observer = observe(connect(&srv.addr, "observer"), Arc::clone(&stop));
    let (out, stdout) = Argv::to(&srv.addr)
        .mode("room")
        .conns(50)
        .senders(5)
        .rate(20)
        .duration(3)
        .prefix("hon-")
        .pid(srv.child.id())
        .run();
    stop.store(true, Ordering::Relaxed);
    let seen = observer.join().expect("observer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chatload failed: {:?}\n{stdout}\n{stderr}", out.status);
    let s = summary(&stdout);

    // What the observer saw is what chatload says it sent: every room message reaches everyone.
    let sent = num(&s, "sent");
    assert_eq!(seen.len() as u64, sent, "observer count vs chatload's sent\n{stdout}");
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "the observer saw a message twice");
    assert!(
        seen.iter().all(|m| m.room == "lobby" && m.from.starts_with("hon-m") && m.text.starts_with("r ")),
        "{seen:?}"
    );
    let senders: HashSet<_> = seen.iter().map(|m| m.from.as_str()).collect();
    assert_eq!(senders.len(), 5, "{senders:?}");
    // 5 senders x 20/s x 3 s: every send scheduled inside the window is made (late, if the
    // machine is slow), so the count is exact.
    assert_eq!(sent, 300, "{stdout}");

    // And its own books balance: 50 receivers each got every message.
    assert_eq!(num(&s, "ready"), 50);
    assert_eq!(num(&s, "expected"), sent * 50, "{stdout}");
    assert_eq!(num(&s, "delivered"), num(&s, "expected"), "{stdout}");
    assert_eq!(num(&s, "lost"), 0);
    assert_eq!(num(&s, "reordered"), 0);
    assert_eq!(num(&s, "unexpected_closes"), 0);
    assert_eq!(num(&s, "connect_errors"), 0);
    assert_eq!(s["ok"], "1");
    assert_eq!(s["server_alive"], "1");
    assert!(num(&s, "server_rss_kb") > 0);
    let (p50, p99, max) = (num(&s, "p50_us"), num(&s, "p99_us"), num(&s, "max_us"));
    assert!(p50 > 0 && p50 <= p99 && p99 <= max, "{stdout}");
    // Every frame is timed on its own, on both clocks: each delivery is one sample, each
    // carries the kernel's arrival stamp, and no frame is read before it arrived, so no
    // quantile of the read clock is below the arrival clock's.
    let delivered = num(&s, "delivered");
    assert_eq!(num(&s, "stamped"), delivered, "{stdout}");
    assert!(
        stdout.contains(&format!("({delivered} samples, {delivered} stamped by the kernel)")),
        "{stdout}"
    );
    for q in ["p50_us", "p99_us", "p999_us"] {
        assert!(num(&s, &format!("read_{q}")) >= num(&s, q), "{q}: {stdout}");
    }
    assert!(s.contains_key("read_delay_p99_us"), "{stdout}");
}

#[test]
fn rooms_counts_match_observers_and_rooms_stay_apart() {
    // 30 clients in rooms r0, r1, r2 (10 each, client i in r(i mod 3)), senders 0..5: two per
    // room (m0 and m3 in r0, m1 and m4 in r1). Observers outside chatload: one in r0, one in
    // r1, one in lobby only.
    let srv = server(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut observers = Vec::new();
    for (id, room) in [("obs-r0", Some("r0")), ("obs-r1", Some("r1")), ("obs-lobby", None)] {
        let mut ws = connect(&srv.addr, id);
        if let Some(room) = room {
            join(&mut ws, room);
        }
        observers.push(observe(ws, Arc::clone(&stop)));
    }
    let (out, stdout) = Argv::to(&srv.addr)
        .rooms(3)
        .conns(30)
        .senders(6)
        .rate(20)
        .duration(3)
        .prefix("rms-")
        .pid(srv.child.id())
        .run();
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Vec<Seen>> = observers.into_iter().map(|o| o.join().expect("observer")).collect();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chatload failed: {:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("30 clients in 3 rooms (r0..r2, 10 clients each"), "{stdout}");
    let s = summary(&stdout);
    assert_eq!((s["rooms"].as_str(), num(&s, "misrouted")), ("3", 0), "{stdout}");

    // 6 senders x 20/s x 3 s, every scheduled send made: 120 messages per room.
    let sent = num(&s, "sent");
    assert_eq!(sent, 360, "{stdout}");
    for (k, room_seen) in seen[..2].iter().enumerate() {
        let room = format!("r{k}");
        assert_eq!(room_seen.len(), 120, "observer in {room} vs chatload's 120 sends there\n{stdout}");
        let unique: HashSet<_> = room_seen.iter().collect();
        assert_eq!(unique.len(), room_seen.len(), "the observer in {room} saw a message twice");
        // Isolation: only its room's lines, only from that room's senders.
        let want: HashSet<String> = [format!("rms-m{k}"), format!("rms-m{}", k + 3)].into();
        for m in room_seen {
            assert_eq!(m.room, room, "{m:?}");
            assert!(want.contains(&m.from), "{room} got a message from {}: {m:?}", m.from);
            assert!(m.text.starts_with(&format!("r {} ", &m.from["rms-m".len()..])), "{m:?}");
        }
        let senders: HashSet<_> = room_seen.iter().map(|m| m.from.clone()).collect();
        assert_eq!(senders, want);
    }
    // Lobby is nobody's target here: its observer saw no message at all.
    assert!(seen[2].is_empty(), "lobby got room traffic: {:?}", &seen[2][..seen[2].len().min(5)]);

    // chatload's books: each message expected by the 10 clients of its room, and delivered.
    assert_eq!(num(&s, "ready"), 30);
    assert_eq!(num(&s, "expected"), sent * 10, "{stdout}");
    assert_eq!(num(&s, "delivered"), num(&s, "expected"), "{stdout}");
    assert_eq!((num(&s, "lost"), num(&s, "extra"), num(&s, "reordered")), (0, 0, 0), "{stdout}");
    assert_eq!(s["ok"], "1");
    assert_eq!(s["server_alive"], "1");

    // Without --rooms the summary is what it always was: no rooms keys.
    let (out, stdout) = Argv::to(&srv.addr).conns(4).senders(1).rate(5).duration(0.3).prefix("lob-").run();
    assert!(out.status.success(), "{stdout}");
    let s = summary(&stdout);
    assert!(!s.contains_key("rooms") && !s.contains_key("misrouted"), "{stdout}");
}

#[test]
fn a_pid_that_is_not_the_server_is_refused() {
    // Its CPU would be reported as the server's: this test process listens on nothing.
    let srv = server(&[]);
    let me = std::process::id().to_string();
    let (out, _) = Argv::to(&srv.addr).pid(&me).conns(1).duration(0.2).run();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("--pid {me} does not listen on port")), "{err}");
    let pid = srv.child.id().to_string();
    let (out, stdout) = Argv::to(&srv.addr).pid(&pid).conns(1).duration(0.2).run();
    assert!(out.status.success() && stdout.contains(&format!("server pid {pid}: cpu")), "{stdout}");
}

#[test]
fn rooms_join_refused_is_a_connect_error() {
    // Lobby already fills a client's one allowed room: every join is refused, and chatload
    // says so instead of sending into rooms nobody is in.
    let srv = server(&["--max-rooms-per-user", "1"]);
    let (out, stdout) = Argv::to(&srv.addr).rooms(2).conns(4).duration(0.3).prefix("full-").run();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let s = summary(&stdout);
    assert_eq!((num(&s, "ready"), num(&s, "connect_errors")), (0, 4), "{stdout}");
    assert!(stdout.contains("join_too_many_rooms x4"), "{stdout}");
    assert_eq!(num(&s, "sent"), 0, "{stdout}");
}

#[test]
fn private_pairs_deliver_twice() {
    let srv = server(&[]);
    let (out, stdout) =
        Argv::to(&srv.addr).mode("private").conns(20).rate(10).duration(1).prefix("prv-").run();
    assert!(out.status.success(), "{stdout}");
    let s = summary(&stdout);
    let sent = num(&s, "sent");
    assert_eq!(sent, 200, "{stdout}");
    assert_eq!(num(&s, "expected"), 2 * sent);
    assert_eq!(num(&s, "delivered"), 2 * sent);
}

/// `--mode blip` against a server: `extra` server flags, chatload's blip flags.
fn blip(extra: &[&str], args: &[&str], prefix: &str) -> (Output, String, HashMap<String, String>) {
    let srv = server(extra);
    let (out, stdout) = Argv::to(&srv.addr).conns(50).senders(10).prefix(prefix).args(args).run();
    let s = summary(&stdout);
    (out, stdout, s)
}

#[test]
fn blips_lose_nothing_and_double_nothing() {
    // 50 clients each drop their connection once (reset, FIN or left half-open, in turn) and
    // resume while 10 senders send room messages and the pairs send private ones.
    let (out, stdout, s) = blip(
        &[],
        &["--mode", "blip,private", "--rate", "5", "--duration", "3", "--blip-down", "0.5"],
        "blp-",
    );
    assert!(out.status.success(), "{stdout}");
    assert_eq!(num(&s, "blips"), 50, "{stdout}");
    assert_eq!(num(&s, "resumed"), 50, "{stdout}");
    for key in ["resume_failed", "blip_pending", "blip_lost", "blip_duplicated", "blip_reordered", "unasked"]
    {
        assert_eq!(num(&s, key), 0, "{key}: {stdout}");
    }
    for key in ["private_lost", "private_holes", "private_duplicated", "gaps", "lost", "unexpected_closes"] {
        assert_eq!(num(&s, key), 0, "{key}: {stdout}");
    }
    // Something was at stake: messages were sent while clients were away and replayed.
    assert!(num(&s, "final_seq") >= 100, "{stdout}");
    assert!(num(&s, "replayed") > 0 && num(&s, "private_replayed") > 0, "{stdout}");
    assert_eq!(num(&s, "expected"), num(&s, "delivered"));
}

#[test]
fn blip_counts_gaps_and_refused_resumes() {
    // History of 5: a client away up to a second at 50 room messages a second misses more than
    // is kept; it is told with gap lines, which are counted apart, not as losses.
    let (_, stdout, s) = blip(
        &["--history", "5"],
        &["--mode", "blip", "--rate", "5", "--duration", "2", "--blip-down", "1", "--blip-how", "rst"],
        "gap-",
    );
    assert!(num(&s, "gaps") > 0 && num(&s, "gap_seqs") > 0, "{stdout}");
    assert_eq!((num(&s, "blip_lost"), num(&s, "blip_duplicated"), num(&s, "lost")), (0, 0, 0), "{stdout}");
    // A grace of 50 ms: a client away longer (most of them, away up to 1 s) is refused (a
    // fresh welcome), and the run fails.
    let (out, stdout, s) = blip(
        &["--resume-grace", "0.05"],
        &["--mode", "blip", "--duration", "2", "--blip-down", "1", "--blip-how", "fin"],
        "nog-",
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(num(&s, "resume_failed") > 0, "{stdout}");
    assert_eq!(num(&s, "resume_failed") + num(&s, "resumed"), num(&s, "blips"), "{stdout}");
}

#[test]
fn failures_are_reported_not_hidden() {
    // Someone already holds "clsm0": chatload's first client is closed with 4409.
    let srv = server(&[]);
    let _holder = connect(&srv.addr, "clsm0");
    let (out, stdout) = Argv::to(&srv.addr).mode("idle").conns(3).duration(0.3).prefix("cls").run();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let s = summary(&stdout);
    assert_eq!(s["close_codes"], "4409:1", "{stdout}");
    assert_eq!(num(&s, "unexpected_closes"), 1);
    assert_eq!(num(&s, "ready"), 2);
    assert_eq!(s["ok"], "0");

    // A full server: five get in, three get 503 at the handshake.
    let srv = server(&["--max-conns", "5"]);
    let (out, stdout) =
        Argv::to(&srv.addr).mode("idle").conns(8).duration(0.3).flag("--connect-concurrency", 1).run();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let s = summary(&stdout);
    assert_eq!(num(&s, "connect_errors"), 3, "{stdout}");
    assert!(stdout.contains("http_503 x3"), "{stdout}");
    assert_eq!(num(&s, "ready"), 5);
}

#[test]
fn flags_help_and_loopback_only() {
    let (out, stdout) = chatload(&["--help"]);
    assert!(out.status.success());
    for needle in
        ["--mode", "[default: room]", "--conns", "[default: 100]", "--rate", "--pid", "--allow-remote"]
    {
        assert!(stdout.contains(needle), "help lacks {needle}");
    }
    let (out, _) = chatload(&["--conns", "many"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--conns: 'many' is not a whole number"));
    // Refused before any packet is sent.
    let (out, _) = chatload(&["--addr", "192.0.2.7:80"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside loopback"));
}

#[test]
fn conns_alone_clamps_the_default_senders() {
    // `--conns 5` and nothing else: the default 10 senders give way to the 5 clients.
    let srv = server(&[]);
    let (out, stdout) = Argv::to(&srv.addr).conns(5).rate(5).duration(0.5).prefix("few-").run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("5 clients, 5 room senders"), "{stdout}");
    let s = summary(&stdout);
    assert_eq!(num(&s, "ready"), 5);
    assert_eq!(num(&s, "lost"), 0);

    // A typed --senders above the default --conns is worded after what was typed.
    let (out, _) = chatload(&["--senders", "150"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--senders 150 is more than the 100 clients"), "{stderr}");
    assert!(!stderr.contains("--senders 10 "), "{stderr}");
}

#[test]
fn version_is_the_package_version() {
    let (out, stdout) = chatload(&["--version"]);
    assert!(out.status.success());
    assert_eq!(stdout.trim(), format!("chatload {}", env!("CARGO_PKG_VERSION")));
    let (out, stdout) = chatload(&["-V"]);
    assert!(out.status.success());
    assert!(stdout.starts_with("chatload "), "{stdout}");
    let (_, help) = chatload(&["--help"]);
    assert!(help.contains("--version"), "{help}");
    // The server answers --version too.
    let out =
        Command::new(env!("CARGO_BIN_EXE_chatloop")).arg("--version").output().expect("chatloop --version");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn rate_limited_losses_point_at_the_server_flag() {
    // The server's own flood limit (5/s, burst 10) against one sender at 100/s: most of its
    // messages are refused with rate_limited, and the report says which knob to turn.
    let srv = server(&["--rate-limit", "5"]);
    let (out, stdout) =
        Argv::to(&srv.addr).conns(3).senders(1).rate(100).duration(0.5).drain(0.5).prefix("rl-").run();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let s = summary(&stdout);
    assert!(num(&s, "lost") > 0, "{stdout}");
    assert!(num(&s, "server_errors") > 0, "{stdout}");
    assert!(stdout.contains("rate_limited x"), "{stdout}");
    let hint = stdout.lines().find(|l| l.starts_with("hint:")).unwrap_or_else(|| panic!("no hint\n{stdout}"));
    assert!(hint.contains("--rate-limit") && hint.contains("lower --rate"), "{hint}");

    // Without the limit: no losses, no hint.
    let srv = server(&[]);
    let (out, stdout) = Argv::to(&srv.addr).conns(3).senders(1).rate(100).duration(0.5).prefix("nl-").run();
    assert!(out.status.success(), "{stdout}");
    assert!(!stdout.contains("hint:"), "{stdout}");
}

/// Runs `chatload --attack ...` against `srv` and returns its summary.
fn attack(srv: &Server, args: &[&str]) -> HashMap<String, String> {
    let (out, stdout) = Argv::to(&srv.addr).prefix("atk-").args(args).pid(srv.child.id()).run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {:?}\n{stdout}\n{stderr}", out.status);
    let s = summary(&stdout);
    assert_eq!(s["server_alive"], "1", "{stdout}");
    assert_eq!(num(&s, "connected"), num(&s, "conns"), "{stdout}");
    s
}

#[test]
fn attacks_run_and_report_what_they_did() {
    // A smoke test of --attack against the real server, not a verdict on the server's
    // defences (scripts/bench.sh --attack measures those): each kind runs, sends, and counts.
    // What the server answered: pongs, or the end of the connection (a close code or a
    // write that failed), whichever its defences chose.
    let answered = |s: &HashMap<String, String>| {
        num(s, "pongs") > 0 || s["close_codes"] != "none" || num(s, "write_errors") > 0
    };
    let srv = server(&[]);
    let s = attack(&srv, &["--attack", "ping-flood", "--duration", "0.5"]);
    assert_eq!(s["attack"], "ping-flood");
    assert!(num(&s, "frames_sent") > 100, "{s:?}");
    assert!(answered(&s), "{s:?}");

    let s = attack(&srv, &["--attack", "fragments", "--duration", "0.5"]);
    assert!(num(&s, "frames_sent") > 100, "{s:?}");

    let s = attack(&srv, &["--attack", "ping-noread", "--duration", "0.5"]);
    assert_eq!(num(&s, "conns"), 4);
    assert!(num(&s, "frames_sent") > 100, "{s:?}");
    assert_eq!(num(&s, "pongs"), 0, "ping-noread never reads");

    // Two flooders, one burst each of 2 x --rate messages of ~4 KB to a connected target;
    // each message is echoed to its sender.
    let _victim = connect(&srv.addr, "victim");
    let s = attack(
        &srv,
        &["--attack", "private-flood", "--target", "victim", "--rate", "5", "--duration", "0.5"],
    );
    assert_eq!(num(&s, "conns"), 2);
    assert_eq!(num(&s, "frames_sent"), 20, "{s:?}");
    assert!(num(&s, "bytes_sent") > 20 * 4000, "{s:?}");
    // Each message comes back as its echo or as an error line (recipient_busy, say).
    assert!(num(&s, "echoes") + num(&s, "server_errors") > 0, "{s:?}");

    // And the server still serves a newcomer.
    let mut ws = connect(&srv.addr, "after");
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match ws.read() {
            Ok(Message::Text(t)) => break t.as_str().to_string(),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                    && Instant::now() < deadline => {}
            Err(e) => panic!("no welcome after the attacks: {e}"),
        }
    };
    assert!(first.starts_with(r#"{"type":"welcome""#), "{first}");

    // Refused before any packet: a kind that does not exist, a flood without a target.
    let (out, _) = chatload(&["--attack", "nuke"]);
    assert_eq!(out.status.code(), Some(2));
    let (out, _) = chatload(&["--attack", "private-flood"]);
    assert_eq!(out.status.code(), Some(2));
}

/// A tiny broadcast peer for `--proto raw`, like those in bench/peers/: every text frame goes
/// to every client, the sender included. Like gorilla's chat example it sometimes coalesces:
/// a client's frame is held until its next one (or 30 ms of quiet) and the two go out as one
/// frame joined by a newline. One thread per client reads with blocking tungstenite; frames
/// go out by hand (unmasked, as a server's are) on a clone of every socket. Stops when `stop`
/// is set, and after 60 s regardless.
fn broadcast_peer(stop: Arc<AtomicBool>) -> String {
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::Mutex;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    listener.set_nonblocking(true).expect("nonblocking");
    let outs: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let broadcast = |outs: &Mutex<Vec<TcpStream>>, text: &str| {
        let mut frame = vec![0x81u8];
        match text.len() {
            n @ 0..=125 => frame.push(n as u8),
            n => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(text.as_bytes());
        outs.lock().unwrap().retain_mut(|s| s.write_all(&frame).is_ok());
    };
    std::thread::spawn(move || {
        let hard = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < hard {
            let Ok((tcp, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            tcp.set_nonblocking(false).expect("blocking");
            let outs = Arc::clone(&outs);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(tcp) else { return };
                let tcp = ws.get_ref();
                tcp.set_read_timeout(Some(Duration::from_millis(30))).expect("timeout");
                outs.lock().unwrap().push(tcp.try_clone().expect("clone"));
                let mut held: Option<String> = None;
                while !stop.load(Ordering::Relaxed) && Instant::now() < hard {
                    match ws.read() {
                        Ok(Message::Text(t)) => match held.take() {
                            Some(h) => broadcast(&outs, &format!("{h}\n{}", t.as_str())),
                            None => held = Some(t.as_str().to_string()),
                        },
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e))
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            if let Some(h) = held.take() {
                                broadcast(&outs, &h);
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn raw_proto_counts_every_frame_from_a_plain_broadcaster() {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = broadcast_peer(Arc::clone(&stop));
    let (out, stdout) = Argv::default()
        .flag("--proto", "raw")
        .addr(&addr)
        .conns(20)
        .senders(4)
        .rate(50)
        .duration(1)
        .drain(3)
        .flag("--size", 20)
        .run();
    stop.store(true, Ordering::Relaxed);
    let s = summary(&stdout);
    assert!(out.status.success(), "{stdout}");
    let (sent, expected, delivered) = (num(&s, "sent"), num(&s, "expected"), num(&s, "delivered"));
    // 20 ms apart: most of a sender's frames go out in pairs.
    assert!(sent >= 160, "4 senders x 50/s x 1 s: {stdout}");
    // Every client, the sender included, receives every message: 20 each.
    assert_eq!((expected, delivered), (20 * sent, 20 * sent), "{stdout}");
    assert_eq!((num(&s, "lost"), num(&s, "reordered"), num(&s, "ready")), (0, 0, 20), "{stdout}");
    assert!(stdout.contains("not ours 0,"), "{stdout}");
    // Latency comes from the marker: the peer held some frames up to 30 ms.
    assert!(num(&s, "p99_us") > 0, "{stdout}");
}

#[test]
fn raw_rooms_ask_for_the_room_and_count_what_arrives_outside_it() {
    // The plain broadcaster ignores the ?room= each client asks for: every marker reaches all
    // six clients, three of them in the sender's room (expected) and three in the other
    // (misrouted), and the run fails on them.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = broadcast_peer(Arc::clone(&stop));
    let (out, stdout) = Argv::default()
        .flag("--proto", "raw")
        .flag("--rooms", 2)
        .addr(&addr)
        .conns(6)
        .senders(2)
        .rate(20)
        .duration(1)
        .drain(2)
        .run();
    stop.store(true, Ordering::Relaxed);
    let s = summary(&stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let sent = num(&s, "sent");
    assert!(sent >= 30, "2 senders x 20/s x 1 s: {stdout}");
    assert_eq!((num(&s, "expected"), num(&s, "delivered")), (3 * sent, 3 * sent), "{stdout}");
    assert_eq!((num(&s, "misrouted"), num(&s, "rooms")), (3 * sent, 2), "{stdout}");
}

#[test]
fn raw_proto_against_chatloops_json_counts_nothing() {
    // chatloop's /ws answers bare text with JSON errors and welcomes nobody in raw terms:
    // nothing it sends is a marker, so every expected delivery is lost and the run fails.
    let srv = server(&[]);
    let (out, stdout) = Argv::default()
        .flag("--proto", "raw")
        .addr(&srv.addr)
        .conns(3)
        .senders(1)
        .rate(10)
        .duration(0.5)
        .drain(0.5)
        .run();
    let s = summary(&stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(num(&s, "sent") > 0 && num(&s, "delivered") == 0 && num(&s, "lost") > 0, "{stdout}");
    assert!(!stdout.contains("not ours 0,"), "the welcome and errors are not ours: {stdout}");
}

#[test]
fn abuse_replacer_gets_its_4001_and_counts_what_an_observer_saw() {
    // The server's default rate limit, as an attacker meets it. The self-replacing id's
    // lobby messages that got through are counted twice: by chatload (its own copies back)
    // and by an observer in lobby. Whatever the server lets through, both must agree, every
    // session after the first must be a resume, and every one before the last replaced (4001).
    let srv = server(&["--rate-limit", "20"]);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = observe(connect(&srv.addr, "observer"), stop.clone());
    let (out, stdout) = Argv::to(&srv.addr)
        .mode("abuse")
        .flag("--attacks", "replace")
        .flag("--pace", "replace=4")
        .duration(2)
        .prefix("ab-")
        .run();
    stop.store(true, Ordering::Relaxed);
    let seen = seen.join().expect("observer");
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let s = summary(&stdout);
    let sessions = num(&s, "replace_sessions");
    assert!(sessions >= 5, "about 8 sessions in 2 s: {stdout}");
    assert_eq!(num(&s, "replace_resumed"), sessions - 1, "{stdout}");
    assert_eq!(num(&s, "replace_4001"), sessions - 1, "{stdout}");
    let from_replacer =
        seen.iter().filter(|m| m.room == "lobby" && m.from.starts_with("ab-r")).count() as u64;
    assert_eq!(from_replacer, num(&s, "replace_through"), "{stdout}");
    assert!(from_replacer > 0, "{stdout}");
    assert_eq!(num(&s, "timeouts") + num(&s, "connect_errors"), 0, "{stdout}");
}

/// `--token-key`: every upgrade chatload sends carries `?token=`, a token the key verifies
/// whose `sub` is that client's id. A listener of our own reads the requests (and answers
/// none: the server side of tokens is tested with the server).
#[test]
fn token_key_sends_a_token_per_client_whose_sub_is_its_id() {
    use chatloop::auth::{KeySet, Verifier, unix_ms};
    use std::io::Read;
    let dir = std::env::temp_dir().join(format!("chatload-token-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("secret");
    std::fs::write(&key, "an HS256 secret of at least 32 bytes, for this test only\n").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let heads = std::thread::spawn(move || {
        let mut heads = Vec::new();
        for _ in 0..3 {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = vec![0; 8192];
            let n = s.read(&mut buf).unwrap();
            heads.push(String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_string());
        }
        heads
    });
    let key_path = key.to_str().unwrap();
    let (out, _) = chatload(&[
        "--addr",
        &addr,
        "--mode",
        "idle",
        "--conns",
        "3",
        "--sources",
        "1",
        "--warmup",
        "1",
        "--duration",
        "1",
        "--drain",
        "0",
        "--id-prefix",
        "tk-",
        "--token-key",
        key_path,
        "--token-kid",
        "k1",
    ]);
    assert_eq!(out.status.code(), Some(1), "no server answered: {}", String::from_utf8_lossy(&out.stderr));
    let mut keys = KeySet::new();
    keys.load(&format!("k1={key_path}")).unwrap();
    let verifier = Verifier::new(keys);
    let mut subs = Vec::new();
    for head in heads.join().unwrap() {
        let query =
            head.split(' ').nth(1).and_then(|t| t.strip_prefix("/ws?")).unwrap_or_else(|| panic!("{head}"));
        let param = |name: &str| {
            query.split('&').find_map(|kv| kv.strip_prefix(name)).unwrap_or_else(|| panic!("{head}"))
        };
        let claims =
            verifier.verify(param("token=").as_bytes(), unix_ms(std::time::SystemTime::now())).unwrap();
        assert_eq!(claims.sub, param("id="));
        // Valid for the run: warmup + duration + drain + the 30 s deadline, and a minute more.
        let left = claims.exp_ms.saturating_sub(unix_ms(std::time::SystemTime::now()));
        assert!((80_000..=93_000).contains(&left), "{left} ms left");
        subs.push(claims.sub);
    }
    subs.sort();
    assert_eq!(subs, ["tk-m0", "tk-m1", "tk-m2"]);
    std::fs::remove_dir_all(&dir).unwrap();
}
