//! Command-line flags to `Config`, with every default stated once, here and in `--help`.

use crate::flags::{self, positive, whole};
use crate::metrics::Cidr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the server can be told. Defaults are in `Config::default`.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// `--public DIR`, as its real (canonical) path once parsed.
    pub public: Option<PathBuf>,
    /// `*` or `http(s)://host[:port]`, checked at start-up.
    pub allow_origin: Vec<String>,
    /// Host names (lowercase, no port) answered besides loopback ones; `*` for any.
    pub allow_host: Vec<String>,
    /// None: the open-file limit minus a margin, found at start-up.
    pub max_conns: Option<usize>,
    /// Derived from `max_text` unless given (see `message_room`).
    pub max_message: usize,
    /// In Unicode scalar values.
    pub max_text: usize,
    pub queue_cap: usize,
    pub rate_limit: u32,
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub presence_limit: usize,
    /// Rooms on the server, and rooms one connection may be in (`lobby` included).
    pub max_rooms: usize,
    pub max_rooms_per_user: usize,
    pub echo: bool,
    pub metrics_allow: Vec<Cidr>,
    pub shutdown_grace: Duration,
    pub flush_interval: Duration,
    /// Scale-out through Redis; None runs a single process.
    pub redis: Option<crate::redis::Url>,
    /// How long an id outlives a node that stopped heartbeating.
    pub redis_ttl: Duration,
    /// How long Redis may take to answer before the link counts as down.
    pub redis_timeout: Duration,
    /// SO_REUSEPORT, so that several processes can share `addr`.
    pub reuse_port: bool,
    /// How long a lost connection's user is held for its resume token (see `chat::resume`).
    pub resume_grace: Duration,
    /// Messages kept per room, bytes kept in all rooms, and how long a room's history
    /// outlives its last member.
    pub history: usize,
    pub history_bytes: usize,
    pub history_ttl: Duration,
    /// Users held in their grace at once; past it the oldest hold ends early.
    pub max_holds: usize,
    /// Bytes of private messages kept (connected users' unacknowledged ones and holds').
    pub backlog_bytes: usize,
    /// Events kept for consumers of the event stream that come back with `Last-Event-ID`.
    pub events_keep: usize,
    /// RFC 3339 UTC timestamps on log lines (journald adds its own).
    pub log_timestamps: bool,
    /// `--auth token`: every `/ws` upgrade needs a token these keys and rules accept (keys
    /// loaded at start-up); None is `--auth open`, today's chat where ids are claimed.
    pub auth: Option<std::sync::Arc<crate::auth::Verifier>>,
    /// How long past its token's `exp` a session stays open without a refresh.
    pub auth_grace: Duration,
    /// Where the page fetches fresh tokens (`GET /config` tells it); chatloop never calls it.
    pub token_url: Option<String>,
    /// `--api-key FILE`: the backend API's bearer key (the file's content, trimmed); None
    /// leaves every `/api/` path a 404.
    pub api_key: Option<std::sync::Arc<[u8]>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: "127.0.0.1:8080".parse().expect("valid"),
            public: None,
            allow_origin: Vec::new(),
            allow_host: Vec::new(),
            max_conns: None,
            max_message: message_room(1000),
            max_text: 1000,
            queue_cap: 262_144,
            rate_limit: 20,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(54),
            idle_timeout: Duration::from_secs(60),
            presence_limit: 256,
            max_rooms: 10_000,
            max_rooms_per_user: 32,
            echo: false,
            metrics_allow: Cidr::loopback(),
            shutdown_grace: Duration::from_secs(2),
            flush_interval: Duration::from_millis(5),
            redis: None,
            redis_ttl: Duration::from_secs(15),
            redis_timeout: Duration::from_secs(1),
            reuse_port: false,
            resume_grace: Duration::from_secs(60),
            history: 100,
            history_bytes: 64 << 20,
            history_ttl: Duration::from_secs(300),
            max_holds: 10_000,
            backlog_bytes: 64 << 20,
            events_keep: 10_000,
            log_timestamps: true,
            auth: None,
            auth_grace: Duration::from_secs(30),
            token_url: None,
            api_key: None,
        }
    }
}

pub const HELP: &str = "\
chatloop: a WebSocket chat server (room chat and private messages by unique id)

Usage: chatloop [FLAGS]

Flags:
  --addr ADDR                 address to listen on [default: 127.0.0.1:8080]
  --public DIR                serve the page from DIR instead of the embedded copy
                              (development): only regular files inside DIR, symlinks
                              leading out of it are 404
  --allow-origin ORIGIN       also allow upgrades from ORIGIN, compared as scheme, host and
                              port (e.g. https://chat.example.com); repeatable; * allows any
                              [default: same origin only]
  --allow-host NAME           also answer requests whose Host is NAME (any port), as a proxy
                              forwarding Host needs; repeatable; * allows any. Bound to a
                              loopback address, other Hosts than localhost, 127.x.x.x and
                              [::1] get 421 (DNS rebinding); bound elsewhere, Hosts are
                              checked only once this flag is given, and IP addresses pass
                              [default: loopback names only]
  --max-conns N               at most N connections; more get 503
                              [default: the open-file limit minus 64]
  --max-message BYTES         largest client message; larger closes with 1009; must hold
                              the largest legal request: a --max-text text in the worst
                              encoding (12 bytes a character, as \\uXXXX\\uXXXX escapes)
                              and every other field at its longest, escaped too
                              [default: 12 x --max-text + 1280, 13280]
  --max-text CHARS            longest chat text, in Unicode scalar values (characters, not
                              bytes); longer gets error too_long [default: 1000]
  --queue-cap BYTES           soft cap on what is queued for one connection, judged after
                              its socket was offered the bytes: a client still over it 10 s
                              later, or over 4x it at once, is closed with 1008 slow
                              consumer; private messages to a client over it are refused
                              with recipient_busy; at least 16384 [default: 262144]
  --rate-limit N              requests per second per id: every text frame costs one
                              (messages, joins, leaves, directory asks, token refreshes,
                              malformed frames); burst 2N, kept across reconnects and
                              resumes; 0 turns it off; over it the request is dropped with
                              error rate_limited [default: 20]
  --resume-grace SECS         a connection lost without the client's close frame (EOF or
                              reset, idle timeout, closed by the server) keeps its user
                              this long for the client's resume token: still in its rooms,
                              id refused to others, private messages kept [default: 60]
  --history N                 messages kept per room for replay on join (since/last) and
                              resume; 0 keeps none [default: 100]
  --history-bytes BYTES       bytes of history kept for all rooms, at real cost (a log
                              336 B + its name, a line its bytes + 64 B + a 32 B slot);
                              past it the history of rooms nobody is in goes first (the
                              longest empty first), then the oldest messages of the
                              largest rooms
                              [default: 67108864]
  --history-ttl SECS          how long a room's history outlives its last member
                              [default: 300]
  --max-holds N               users held in their resume grace at once; past it the hold
                              whose grace ends first ends now (its senders get undelivered
                              for what it never got; logged, chatloop_holds_ended_early_total)
                              [default: 10000]
  --backlog-bytes BYTES       bytes of private messages kept for a resend (each recipient's
                              last 64 lines / 256 KiB not yet acknowledged, connected or in
                              its grace), charged at real cost; past it the largest backlog
                              drops its oldest line, told to its sender as undelivered; at
                              least 262144 [default: 67108864]
  --events-keep N             events of GET /api/events kept (and at most 32 MiB of them)
                              for a consumer that reconnects with Last-Event-ID; one that
                              asks for an older one gets a gap event [default: 10000]
  --handshake-timeout SECS    the HTTP request must be complete by then [default: 10]
  --ping-interval SECS        ping every client this often; must be shorter than
                              --idle-timeout [default: 54, or 0.9 x a lower --idle-timeout]
  --idle-timeout SECS         close a client that sent nothing, not even a pong [default: 60]
  --presence-limit N          per room: above N members (and until back to 7/8 of N), no
                              join/leave events; rosters (welcome, joined) and the
                              directory list N entries [default: 256]
  --max-rooms N               rooms on the server; a join that would create one more first
                              gives up the room held longest only by users in their resume
                              grace, else gets too_many_rooms [default: 10000]
  --max-rooms-per-user N      rooms one connection may be in, lobby included
                              [default: 32]
  --metrics-allow CIDR        who else may read /metrics (e.g. 10.0.0.0/8), besides
                              loopback (127.0.0.0/8 and ::1), which always may; repeatable
  --shutdown-grace SECS       on SIGTERM/SIGINT, close every session with 1001 and drain
                              queues for up to this long; a second signal exits at once
                              [default: 2]
  --flush-interval SECS       a line for a client written less than half this long ago
                              waits until this long after that write, and lines that
                              arrive meanwhile share one frame and one writev; any other
                              line goes at the end of the loop turn it came in; 0 never
                              holds a line [default: 0.005]
  --redis URL                 join a cluster of chatloop processes through Redis 6 or newer:
                              redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]; room messages,
                              private messages and presence span every process sharing
                              that Redis and database, and ids are unique across them
                              [default: none, a single process]
  --redis-ttl SECS            an id stays claimed this long after its process stops
                              heartbeating (heartbeats go every third of it) [default: 15]
  --redis-timeout SECS        no reply from Redis for this long (or the TTL, if shorter)
                              means the link is down: joins are decided here and unconfirmed
                              messages reported; an idle link is PINGed twice as often. A Redis
                              that pauses longer (a big fork) is treated as down [default: 1]
  --reuse-port                set SO_REUSEPORT, so that several processes (with --redis)
                              can listen on one --addr and share its connections
  --echo                      mount /echo, which sends every message back (for conformance
                              suites); without it, /echo is an unknown path (404)
  --auth open|token           open: anyone may claim any free id and enter any room; token:
                              every /ws upgrade needs a signed token (Authorization: Bearer
                              or ?token=) whose sub is the id and whose rooms claim limits
                              the rooms; a bad one gets error unauthorized and close 4401
                              [default: open]
  --auth-key [KID=]FILE       a key tokens are checked with: a PEM public key (RSA, EC P-256
                              or P-384, Ed25519) or a secret of 32 bytes or more (HMAC);
                              repeatable (rotation); KID names it for tokens whose header
                              has that kid; --auth token needs at least one
  --auth-leeway SECS          clock leeway for exp, nbf and iat [default: 30]
  --auth-audience A           tokens must carry aud A [default: aud not checked]
  --auth-issuer I             tokens must carry iss I [default: iss not checked]
  --auth-grace SECS           a session whose token expired is closed (4401 expired, held
                              for its resume like a lost connection) this long after exp
                              unless the client sent a fresh {\"token\":...} [default: 30]
  --token-url URL             where the page fetches fresh tokens (told by GET /config): a
                              path here or an http(s) URL, whose origin the page's CSP then
                              allows [default: none]
  --api-key FILE              enable the backend API (/api/, see docs/api.md): requests carry
                              Authorization: Bearer KEY, KEY being FILE's content (trimmed,
                              at least 16 bytes) [default: none, every /api/ path is 404]
  --log-timestamps on|off     start log lines with an RFC 3339 UTC time; off suits journald,
                              which stamps lines itself [default: on]
  -h, --help                  print this help
  -V, --version               print the version

Seconds take fractions (0.2). Each flag is given once; only those marked repeatable may
repeat (a flag given twice is refused, not overridden). Logs go to stderr; RUST_LOG sets
the level [default: info]. Exit status: 2 when nothing started (flags that cannot work
together, a flag given twice, an address that cannot be bound), with the reason on one
line; 0 after a graceful shutdown; 1 on a second signal or a failure while running.
";

/// Bytes a character of chat text can take in a legal message: a scalar outside the BMP
/// written as a `\uXXXX\uXXXX` surrogate pair, as encoders that escape non-ASCII do
/// (Python's `json.dumps` by default).
pub const WORST_BYTES_PER_CHAR: usize = 12;

/// Room for everything but the text in the largest legal request: every field at its
/// longest, every character escaped (`\u00XX` for ASCII, a surrogate pair for the rest) and a
/// space around every token. The largest are a join (`join`, `since`, `epoch`, `cid`: 1,169
/// bytes) and a room message (`room`, `cid`: 1,057 bytes besides its text); a test builds both
/// from the same limits. Whitespace JSON allows beyond that, and fields the server ignores, are
/// not a legal request's need.
pub const MESSAGE_OVERHEAD: usize = 1280;

/// The smallest `--max-message` that a text of `max_text` characters can never exceed, so
/// that a legal text gets `too_long` at worst, never a 1009 close.
pub const fn message_room(max_text: usize) -> usize {
    max_text.saturating_mul(WORST_BYTES_PER_CHAR).saturating_add(MESSAGE_OVERHEAD)
}

/// The smallest `--queue-cap`: a welcome listing 256 ids of 32 characters is about 9 KiB,
/// and a queue that cannot hold its own welcome would close every newcomer as a slow consumer.
pub const MIN_QUEUE_CAP: usize = 16 * 1024;

/// The flags that may be given more than once, each adding a value (`--help` says
/// "repeatable"); any other given twice is refused.
pub const REPEATABLE: &[&str] = &["--allow-origin", "--allow-host", "--metrics-allow", "--auth-key"];

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<Config>),
    Help,
    Version,
}

/// Parses flags (without the program name). Errors are one line, ready to print.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut cfg = Config::default();
    let mut cli = flags::Cli::new(args).repeatable(REPEATABLE);
    let mut metrics_allow: Vec<Cidr> = Vec::new();
    let mut ping_given = false;
    let mut max_message: Option<usize> = None;
    let mut auth = Auth::default();
    while let Some(flag) = cli.next_flag()? {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--echo" => cfg.echo = true,
            "--reuse-port" => cfg.reuse_port = true,
            "--redis" => cfg.redis = Some(crate::redis::Url::parse(&cli.value()?)?),
            "--redis-ttl" => cfg.redis_ttl = flags::seconds(&flag, &cli.value()?, false, 86_400.0)?,
            "--redis-timeout" => cfg.redis_timeout = flags::seconds(&flag, &cli.value()?, false, 3_600.0)?,
            "--addr" => {
                let v = cli.value()?;
                cfg.addr =
                    v.parse().map_err(|_| format!("--addr: '{v}' is not an address like 127.0.0.1:8080"))?;
            }
            "--public" => cfg.public = Some(PathBuf::from(cli.value()?)),
            "--allow-origin" => cfg.allow_origin.push(allow_origin(&cli.value()?)?),
            "--allow-host" => cfg.allow_host.push(allow_host(&cli.value()?)?),
            "--log-timestamps" => {
                cfg.log_timestamps = match cli.value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => return Err(format!("--log-timestamps: '{v}' is neither on nor off")),
                }
            }
            "--max-conns" => cfg.max_conns = Some(positive(&flag, &cli.value()?)?),
            "--max-message" => max_message = Some(positive(&flag, &cli.value()?)?),
            "--max-text" => cfg.max_text = positive(&flag, &cli.value()?)?,
            "--queue-cap" => cfg.queue_cap = positive(&flag, &cli.value()?)?,
            "--presence-limit" => cfg.presence_limit = whole(&flag, &cli.value()?)?,
            "--max-rooms" => cfg.max_rooms = positive(&flag, &cli.value()?)?,
            "--max-rooms-per-user" => cfg.max_rooms_per_user = positive(&flag, &cli.value()?)?,
            "--rate-limit" => {
                cfg.rate_limit =
                    u32::try_from(whole(&flag, &cli.value()?)?).map_err(|_| format!("{flag}: too large"))?
            }
            "--metrics-allow" => {
                let v = cli.value()?;
                metrics_allow.push(
                    Cidr::parse(&v)
                        .ok_or_else(|| format!("--metrics-allow: '{v}' is not an address or CIDR block"))?,
                );
            }
            "--shutdown-grace" => cfg.shutdown_grace = seconds(&flag, &cli.value()?)?,
            "--flush-interval" => {
                cfg.flush_interval = flags::seconds(&flag, &cli.value()?, true, 1e9)?;
            }
            "--handshake-timeout" => cfg.handshake_timeout = seconds(&flag, &cli.value()?)?,
            "--ping-interval" => {
                cfg.ping_interval = seconds(&flag, &cli.value()?)?;
                ping_given = true;
            }
            "--idle-timeout" => cfg.idle_timeout = seconds(&flag, &cli.value()?)?,
            "--resume-grace" => cfg.resume_grace = seconds(&flag, &cli.value()?)?,
            "--history" => cfg.history = whole(&flag, &cli.value()?)?,
            "--history-bytes" => cfg.history_bytes = whole(&flag, &cli.value()?)?,
            "--max-holds" => cfg.max_holds = positive(&flag, &cli.value()?)?,
            "--backlog-bytes" => cfg.backlog_bytes = whole(&flag, &cli.value()?)?,
            "--events-keep" => cfg.events_keep = positive(&flag, &cli.value()?)?,
            "--history-ttl" => cfg.history_ttl = seconds(&flag, &cli.value()?)?,
            "--auth" => {
                auth.token = match cli.value()?.as_str() {
                    "open" => false,
                    "token" => true,
                    v => return Err(format!("--auth: '{v}' is neither open nor token")),
                }
            }
            "--auth-key" => auth.keys.push(cli.value()?),
            "--auth-leeway" => auth.leeway = flags::seconds(&flag, &cli.value()?, true, 86_400.0)?,
            "--auth-audience" => auth.audience = Some(cli.value()?),
            "--auth-issuer" => auth.issuer = Some(cli.value()?),
            "--auth-grace" => cfg.auth_grace = flags::seconds(&flag, &cli.value()?, true, 86_400.0)?,
            "--token-url" => cfg.token_url = Some(token_url(&cli.value()?)?),
            "--api-key" => cfg.api_key = Some(api_key(&cli.value()?)?),
            _ => return Err(format!("unknown flag '{flag}' (see --help)")),
        }
    }
    let mut cfg = settle(cfg, metrics_allow, ping_given, max_message)?;
    cfg.auth = auth.load()?;
    Ok(Command::Run(Box::new(cfg)))
}

/// The shortest `--api-key` accepted: a key a script could guess is no key.
pub const MIN_API_KEY: usize = 16;

/// `--api-key FILE`'s key: the file's content, trimmed of surrounding whitespace (a trailing
/// newline is how editors and `echo` leave it).
fn api_key(path: &str) -> Result<std::sync::Arc<[u8]>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("--api-key: {path}: {e}"))?;
    let key = raw.trim_ascii();
    if key.len() < MIN_API_KEY {
        return Err(format!(
            "--api-key: {path}: the key is {} bytes; give at least {MIN_API_KEY} (e.g. head -c 32 /dev/urandom | base64)",
            key.len()
        ));
    }
    Ok(std::sync::Arc::from(key))
}

/// The `--auth*` flags as given, until the keys are loaded.
struct Auth {
    token: bool,
    keys: Vec<String>,
    leeway: Duration,
    audience: Option<String>,
    issuer: Option<String>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth { token: false, keys: Vec::new(), leeway: Duration::from_secs(30), audience: None, issuer: None }
    }
}

impl Auth {
    /// The verifier of `--auth token`, its keys read now (a file that is no key: the reason,
    /// one line); None in open mode, where the other `--auth-*` flags are refused rather than
    /// silently ignored.
    fn load(self) -> Result<Option<std::sync::Arc<crate::auth::Verifier>>, String> {
        if !self.token {
            if !self.keys.is_empty() || self.audience.is_some() || self.issuer.is_some() {
                return Err("--auth-key, --auth-audience and --auth-issuer need --auth token".into());
            }
            return Ok(None);
        }
        if self.keys.is_empty() {
            return Err("--auth token needs at least one --auth-key [KID=]FILE".into());
        }
        let mut keys = crate::auth::KeySet::new();
        for spec in &self.keys {
            keys.load(spec).map_err(|e| format!("--auth-key: {e}"))?;
        }
        let mut v = crate::auth::Verifier::new(keys);
        (v.leeway, v.audience, v.issuer) = (self.leeway, self.audience, self.issuer);
        Ok(Some(std::sync::Arc::new(v)))
    }
}

/// The flags taken together, after they were all read: defaults that follow from others
/// (the ping interval, `--max-message`), and combinations that cannot work, refused.
fn settle(
    mut cfg: Config,
    metrics_allow: Vec<Cidr>,
    ping_given: bool,
    max_message: Option<usize>,
) -> Result<Config, String> {
    if cfg.backlog_bytes < crate::chat::backlog::KEPT_BYTES {
        return Err(format!(
            "--backlog-bytes: at least {} (one recipient's whole backlog)",
            crate::chat::backlog::KEPT_BYTES
        ));
    }
    if cfg.ping_interval >= cfg.idle_timeout && !ping_given {
        // Only --idle-timeout was lowered: ping at nine tenths of it, as gorilla's example does.
        cfg.ping_interval = cfg.idle_timeout.mul_f64(0.9);
    }
    if cfg.ping_interval >= cfg.idle_timeout {
        return Err("--ping-interval: must be shorter than --idle-timeout, or quiet clients that \
                    answer every ping are closed anyway"
            .into());
    }
    let room = message_room(cfg.max_text);
    cfg.max_message = match max_message {
        None => room,
        Some(m) if m < room => {
            let fits = m.saturating_sub(MESSAGE_OVERHEAD) / WORST_BYTES_PER_CHAR;
            let or = match fits {
                0 => format!("(no --max-text fits in less than {})", message_room(1)),
                n => format!("or --max-text {n} or less"),
            };
            return Err(format!(
                "--max-message: {m} bytes cannot hold the largest legal request with a --max-text \
                 {} text ({WORST_BYTES_PER_CHAR} bytes a character escaped, {MESSAGE_OVERHEAD} for \
                 the rest): give at least {room}, {or}",
                cfg.max_text
            ));
        }
        Some(m) => m,
    };
    if cfg.reuse_port && cfg.redis.is_none() {
        return Err("--reuse-port needs --redis: without it, processes sharing the port are \
                    separate chats, each with its own users and ids"
            .into());
    }
    if let Some(dir) = &cfg.public {
        if !dir.is_dir() {
            return Err(format!("--public: '{}' is not a directory", dir.display()));
        }
        if !dir.join("index.html").is_file() {
            return Err(format!("--public: '{}' has no index.html, so / would be a 404", dir.display()));
        }
        // Real paths only: a file is served if its own real path is inside this one.
        let real = dir.canonicalize().map_err(|e| format!("--public: '{}': {e}", dir.display()))?;
        cfg.public = Some(real);
    }
    if cfg.redis_ttl < Duration::from_millis(300) {
        return Err("--redis-ttl: at least 0.3 seconds, or heartbeats cannot keep ids alive".into());
    }
    if cfg.redis_timeout < Duration::from_millis(100) {
        return Err("--redis-timeout: at least 0.1 seconds (an idle link is PINGed every half of it)".into());
    }
    // Added to loopback, never instead of it: a local scraper (and the proxy of the deploy
    // recipes, which blocks /metrics itself) must not lose access because a network was added.
    cfg.metrics_allow.extend(metrics_allow);
    if cfg.queue_cap > u32::MAX as usize {
        return Err("--queue-cap: at most 4294967295 bytes".into());
    }
    // Each listed id costs at most 35 bytes of JSON ("id", quotes, comma).
    let need = MIN_QUEUE_CAP.max(cfg.presence_limit.saturating_mul(35).saturating_add(1024));
    if cfg.queue_cap < need {
        return Err(format!(
            "--queue-cap: must be at least {need} bytes, room for the largest welcome \
             (--presence-limit ids of up to 32 characters)"
        ));
    }
    Ok(cfg)
}

/// An `--allow-origin` value: `*`, or an origin as a browser sends it (one trailing `/`, as
/// copied from an address bar, is dropped).
fn allow_origin(v: &str) -> Result<String, String> {
    let v = v.strip_suffix('/').unwrap_or(v);
    if v == "*" || crate::http::parse_origin(v).is_some() {
        return Ok(v.to_string());
    }
    let hint = match v.split_once("://") {
        None => format!("it needs a scheme: https://{v} or http://{v}"),
        Some((scheme, _)) if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") => {
            "only http and https origins can load the page".to_string()
        }
        Some(_) => "an origin is scheme://host[:port], with no path".to_string(),
    };
    Err(format!("--allow-origin: '{v}' is not an origin; {hint}"))
}

/// A `--token-url` value: a path on this server (`/auth/token`) or an http(s) URL. Its origin
/// goes into the page's Content-Security-Policy (`connect-src`) when it is another server's,
/// so it may hold no character that CSP or JSON would read as structure.
fn token_url(v: &str) -> Result<String, String> {
    let clean = v.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'\'' | b'"' | b'\\'));
    if clean && (crate::router::url_origin(v).is_some() || (v.starts_with('/') && !v.starts_with("//"))) {
        return Ok(v.to_string());
    }
    Err(format!(
        "--token-url: '{v}' is neither a path on this server (/auth/token) nor an http(s) URL \
         (https://sso.example.com/chat-token)"
    ))
}

/// An `--allow-host` value: `*`, or a host name or IP address without a port.
fn allow_host(v: &str) -> Result<String, String> {
    if v == "*" {
        return Ok(v.to_string());
    }
    match crate::http::split_authority(v) {
        Some((name, None)) => Ok(name.to_ascii_lowercase()),
        Some((name, Some(_))) => {
            Err(format!("--allow-host: give '{name}' without a port (any port is answered)"))
        }
        None => Err(format!("--allow-host: '{v}' is not a host name or IP address")),
    }
}

/// Config's durations: more than zero, and sane.
fn seconds(flag: &str, v: &str) -> Result<Duration, String> {
    flags::seconds(flag, v, false, 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Command::Run(c) => Ok(*c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_and_values() {
        let c = run(&[]).unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:8080");
        assert_eq!((c.max_message, c.queue_cap, c.rate_limit), (13_280, 262_144, 20));
        assert!(c.log_timestamps && c.allow_host.is_empty());
        let c = run(&["--addr", "127.0.0.1:0", "--handshake-timeout=0.2", "--allow-origin", "*", "--echo"])
            .unwrap();
        assert_eq!(c.addr.port(), 0);
        assert_eq!(c.handshake_timeout, Duration::from_millis(200));
        assert_eq!(c.allow_origin, vec!["*"]);
        assert_eq!(run(&["--flush-interval", "0.0"]).unwrap().flush_interval, Duration::ZERO);
        let lowered = run(&["--idle-timeout", "10"]).unwrap();
        assert_eq!(lowered.ping_interval, Duration::from_secs(9), "derived when only the timeout is lowered");
        assert_eq!(run(&["--flush-interval", "0.02"]).unwrap().flush_interval, Duration::from_millis(20));
        assert!(c.echo);
    }

    #[test]
    fn max_message_follows_max_text_or_must_hold_it() {
        assert_eq!(run(&["--max-text", "10"]).unwrap().max_message, 10 * 12 + 1280);
        assert_eq!(run(&["--max-text", "10", "--max-message", "1400"]).unwrap().max_message, 1400);
        assert_eq!(run(&["--max-message", "20000"]).unwrap().max_message, 20_000);
        let e = run(&["--max-message", "4096"]).unwrap_err();
        assert!(e.contains("give at least 13280, or --max-text 234 or less"), "{e}");
        assert!(run(&["--max-message", "4096", "--max-text", "234"]).is_ok());
        // Below what any --max-text needs, the advice names no --max-text (0 is refused).
        let e = run(&["--max-message", "100"]).unwrap_err();
        assert!(e.contains("give at least 13280, (no --max-text fits in less than 1292)"), "{e}");
        assert!(!e.contains("--max-text 0"), "{e}");
        assert!(run(&["--max-message", "1292", "--max-text", "1"]).is_ok());
    }

    /// Every character of `s` as a JSON escape: `\u00XX` for ASCII, a surrogate pair beyond
    /// the BMP, the longest way a legal client may spell it.
    fn escaped(s: &str) -> String {
        s.encode_utf16().map(|u| format!("\\u{u:04x}")).collect()
    }

    /// `{ "k" : v , ... }`, keys escaped: the widest spelling of an object, short of the
    /// unbounded whitespace JSON allows, with a space around every token as `json.dumps`'s
    /// separators and pretty printers add.
    fn widest(fields: &[(&str, String)]) -> String {
        let pairs: Vec<String> = fields.iter().map(|(k, v)| format!("\"{}\" : {v}", escaped(k))).collect();
        format!("{{ {} }}", pairs.join(" , "))
    }

    #[test]
    fn the_largest_legal_request_fits_the_default_max_message() {
        use crate::protocol::{self, Incoming, MAX_CID, MAX_ID, MAX_ROOM};
        let string = |s: String| format!("\"{}\"", escaped(&s));
        let cid = string("\u{1F600}".repeat(MAX_CID));
        let join = widest(&[
            ("join", string("r".repeat(MAX_ROOM))),
            ("since", u64::MAX.to_string()),
            ("epoch", string("e".repeat(crate::chat::history::EPOCH_LEN))),
            ("cid", cid.clone()),
        ]);
        assert!(matches!(protocol::decode_why(&join), Ok((Incoming::Join { .. }, Some(_)))), "{join}");
        assert!(join.len() <= message_room(1), "{} for a join", join.len());
        for max_text in [1, 10, 1000, 4000] {
            let text = string("\u{1F600}".repeat(max_text));
            let say = widest(&[
                ("room", string("r".repeat(MAX_ROOM))),
                ("text", text.clone()),
                ("cid", cid.clone()),
            ]);
            let private = widest(&[("to", string("i".repeat(MAX_ID))), ("text", text), ("cid", cid.clone())]);
            for (request, kind) in [(say, "room message"), (private, "private message")] {
                let Ok((Incoming::Say { text, .. } | Incoming::Private { text, .. }, Some(c))) =
                    protocol::decode_why(&request)
                else {
                    panic!("{kind} is not legal: {request}")
                };
                assert_eq!((text.chars().count(), c.chars().count()), (max_text, MAX_CID));
                assert!(request.len() <= message_room(max_text), "{kind}: {} for {max_text}", request.len());
            }
        }
        // The probe's request, without the spaces: 12,803 bytes, closed with 1009 at 12,512.
        let probe = format!(
            r#"{{"room":"lobby","text":"{}","cid":"{}"}}"#,
            "\\ud83d\\ude00".repeat(1000),
            "\\ud83d\\ude00".repeat(64)
        );
        assert_eq!(probe.len(), 12_803);
        assert!(probe.len() <= Config::default().max_message);
    }

    #[test]
    fn metrics_allow_adds_to_loopback() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let c = run(&["--metrics-allow", "10.0.0.0/8"]).unwrap();
        let allowed = |a: &str| c.metrics_allow.iter().any(|n| n.contains(ip(a)));
        assert!(allowed("10.1.2.3") && allowed("127.0.0.1") && allowed("::1"));
        assert!(!allowed("192.168.0.1"), "nobody else");
        let d = run(&[]).unwrap();
        assert!(!d.metrics_allow.iter().any(|n| n.contains(ip("10.1.2.3"))), "loopback only by default");
    }

    #[test]
    fn origins_and_hosts_are_checked_at_start_up() {
        let c = run(&["--allow-origin", "https://Chat.example/", "--allow-host", "Chat.example"]).unwrap();
        assert_eq!(
            (c.allow_origin, c.allow_host),
            (vec!["https://Chat.example".into()], vec!["chat.example".into()])
        );
        assert_eq!(run(&["--allow-host", "[::1]"]).unwrap().allow_host, vec!["[::1]"]);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        for (args, needle) in [
            (&["--max-conns", "x"][..], "not a whole number"),
            (&["--max-message", "0"], "more than 0"),
            (&["--idle-timeout", "-1"], "more than 0 seconds"),
            (&["--idle-timeout", "NaN"], "more than 0 seconds"),
            (&["--addr"], "needs a value"),
            (&["--addr", "nowhere"], "not an address"),
            (&["--frobnicate"], "unknown flag"),
            (&["--queue-cap", "10"], "at least 16384"),
            (&["--presence-limit", "10000"], "--queue-cap: must be at least 351024"),
            (&["--metrics-allow", "10.0.0.0/99"], "not an address or CIDR"),
            (&["--ping-interval", "60"], "shorter than --idle-timeout"),
            (&["--idle-timeout", "5", "--ping-interval", "5"], "shorter than --idle-timeout"),
            (&["--allow-origin", "chat.example"], "needs a scheme: https://chat.example"),
            (&["--allow-origin", "ftp://chat.example"], "only http and https"),
            (&["--allow-origin", "https://chat.example/app"], "no path"),
            (&["--allow-host", "chat.example:443"], "without a port"),
            (&["--allow-host", "a/b"], "not a host name"),
            (&["--reuse-port"], "--reuse-port needs --redis"),
            (&["--public", "/nonexistent/chatloop"], "not a directory"),
            (&["--public", "/"], "has no index.html"),
            (&["--log-timestamps", "maybe"], "neither on nor off"),
            (&["--redis-timeout", "0.01"], "at least 0.1 seconds"),
            (&["--auth", "token"], "--auth token needs at least one --auth-key"),
            (&["--auth", "maybe"], "neither open nor token"),
            (&["--auth-key", "src/auth/testdata/hs256.secret"], "need --auth token"),
            (&["--auth", "token", "--auth-key", "/nonexistent/key"], "--auth-key: /nonexistent/key"),
            (&["--auth", "token", "--auth-key", "src/auth/testdata/rsa1024.pub"], "--auth-key: "),
            (&["--token-url", "sso.example/token"], "neither a path on this server"),
            (&["--token-url", "//sso.example/token"], "neither a path on this server"),
            (&["--token-url", "https://sso.example/t;script-src *"], "neither a path on this server"),
            (&["--token-url", "javascript:alert(1)"], "neither a path on this server"),
        ] {
            let e = run(args).unwrap_err();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn auth_token_loads_its_keys_at_start_up() {
        assert!(run(&[]).unwrap().auth.is_none(), "open by default");
        let c = run(&[
            "--auth",
            "token",
            "--auth-key",
            "src/auth/testdata/hs256.secret",
            "--auth-key=k2=src/auth/testdata/p256.pub",
            "--auth-leeway",
            "5",
            "--auth-audience",
            "chat",
            "--auth-grace",
            "2",
        ])
        .unwrap();
        let v = c.auth.expect("token mode");
        assert_eq!(
            (v.keys.len(), v.leeway, v.audience.as_deref()),
            (2, Duration::from_secs(5), Some("chat"))
        );
        assert_eq!(c.auth_grace, Duration::from_secs(2));
        for url in ["/auth/token", "https://sso.example.com/chat-token?aud=chat"] {
            assert_eq!(run(&["--token-url", url]).unwrap().token_url.as_deref(), Some(url));
        }
    }

    #[test]
    fn a_flag_is_given_once_unless_help_calls_it_repeatable() {
        let e = run(&["--rate-limit", "5", "--rate-limit", "7"]).unwrap_err();
        assert_eq!(e, "--rate-limit given twice: give it once");
        assert!(run(&["--echo", "--echo"]).unwrap_err().contains("--echo given twice"));
        let c = run(&["--allow-origin", "https://a.example", "--allow-origin=https://b.example"]).unwrap();
        assert_eq!(c.allow_origin.len(), 2);
        // REPEATABLE is exactly the flags --help marks repeatable.
        let mut marked = Vec::new();
        let mut current = "";
        let flags = HELP.split("\nSeconds take fractions").next().unwrap();
        for line in flags.lines() {
            if let Some(flag) = line.trim_start().strip_prefix("--").and_then(|l| l.split(' ').next()) {
                current = flag;
            }
            if line.contains("repeatable") {
                marked.push(format!("--{current}"));
            }
        }
        marked.dedup();
        assert_eq!(marked, REPEATABLE, "{marked:?}");
    }

    #[test]
    fn help_states_the_costs_and_defaults_the_code_uses() {
        // Help text is wrapped: compare with runs of whitespace as one space.
        let help = HELP.split_whitespace().collect::<Vec<_>>().join(" ");
        use crate::chat::history::{LINE_COST, LOG_COST};
        let slot = std::mem::size_of::<bytes::Bytes>();
        let history =
            format!("(a log {LOG_COST} B + its name, a line its bytes + {LINE_COST} B + a {slot} B slot)");
        assert!(help.contains(&history), "--history-bytes should say {history}");
        let max_message = format!("[default: 12 x --max-text + {MESSAGE_OVERHEAD}, {}]", message_room(1000));
        assert!(help.contains(&max_message), "--max-message should say {max_message}");
        assert_eq!(WORST_BYTES_PER_CHAR, 12);
    }

    #[test]
    fn help_lists_every_flag() {
        for f in [
            "--addr",
            "--public",
            "--allow-origin",
            "--allow-host",
            "--log-timestamps",
            "--max-conns",
            "--max-message",
            "--queue-cap",
            "--rate-limit",
            "--handshake-timeout",
            "--ping-interval",
            "--idle-timeout",
            "--echo",
        ] {
            assert!(HELP.contains(f), "{f}");
        }
        assert!(matches!(parse(["--help".to_string()]), Ok(Command::Help)));
    }
}
