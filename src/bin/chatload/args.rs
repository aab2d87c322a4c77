//! chatload's flags: hand-written parsing, every default stated once here and in `HELP`.

use crate::token::{self, Tokens};
use chatloop::flags::{self, non_negative_f64, positive_f64, whole};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

pub const HELP: &str = "\
chatload: a load generator for chatloop (one mio loop, thousands of WebSocket clients)

Usage: chatload [FLAGS]

Target:
  --addr HOST:PORT       the server; clients open ws://HOST:PORT/ws?id=ID [default: 127.0.0.1:8080]
  --token-key FILE       for a server in --auth token mode: mint one signed token per client
                         (sub = its id, valid for the whole run) with this key (a secret of
                         32+ bytes, or a PEM private key, as for chatloop token) and send it
                         as ?token= on every connect and resume
  --token-kid K          the key's name in the tokens' header (the server's --auth-key K=FILE)
  --allow-remote         allow a target outside loopback (127.0.0.0/8, ::1); refused otherwise
  --sources N            spread connections over source addresses 127.0.0.1 .. 127.0.0.N
                         (IPv4 loopback targets only), to get past one address's ephemeral
                         ports [default: 8]
  --proto P              json: chatloop's protocol [default]; raw: for servers that only
                         broadcast every text frame to every client (idle, room and churn
                         modes): a room message is a bare text frame holding the text below,
                         every text frame in counts (each line of it, if it holds several),
                         and a client is ready once its handshake is done; with --rooms,
                         client i asks for its room in the upgrade (?id=..&room=rK) and is
                         in it from the handshake on (the rooms peer of bench/peers/uws-rooms)

Load:
  --mode M[,M..]         idle, room, private, churn, blip (or abuse, below); combine with commas (room,churn)
                         [default: room]
                         idle     hold the connections, send nothing
                         room     --senders of the --conns clients send room messages at --rate
                                  each; every client receives every one
                         private  the clients in pairs (0-1, 2-3, ..), each sending private
                                  messages to its partner at --rate; each message is delivered
                                  twice (to the partner, echoed to the sender)
                         churn    extra clients connect, hold --churn-hold, close, at --churn
                                  per second; they are not counted as receivers
                         blip     room traffic as in room mode, and every client drops its TCP
                                  connection without a close (see --blip-how) and resumes
                                  (token, pseq, a since+epoch join of lobby); counted by seq:
                                  lost, duplicated, gaps, resumes done and failed (blip.rs);
                                  with private, private pairs too, counted by pseq
  --blip-rate R          blips per second across all clients, from 5% to 80% of the window,
                         clients in a random order (again once all had one) [default: each
                         client once, at a random moment in that span]
  --blip-down SECS       a blipped client stays away a random 0 to SECS [default: 1]
  --blip-how H           rst (SO_LINGER 0, a reset), fin (shutdown, no close frame), open
                         (the old socket left open and unread: resumed over a half-open
                         connection), or mix (in turn) [default: mix]
  --conns N              clients held for the whole run [default: 100]
  --senders N            room senders among them (at most --conns; in private mode every
                         client sends) [default: 10, or --conns if fewer]
  --rate R               messages per second per sender (fractions allowed) [default: 10]
  --size BYTES           pad each message text to at least BYTES, at most 900
                         [default: 0, no padding]
  --churn C              churn connections started per second; implies --mode churn
                         [default: 20 with --mode churn, else 0]
  --churn-hold SECS      how long a churn client stays after its welcome [default: 1]
  --rooms N              spread the held clients over rooms r0 .. r{N-1}: client i joins
                         r(i mod N) after its welcome (and stays in lobby too); room senders
                         send {\"room\":\"rK\",..} to their own room only, so each message is
                         expected by the clients of that room; a message line arriving at a
                         client outside its room counts as misrouted, a failure; churn
                         clients stay in lobby [default: 0: no rooms, everything goes to lobby]
                         (with --proto raw: see there)
  --connect-concurrency N  at most N of the --conns clients connecting at once [default: 256]
  --id-prefix P          ids are P + m<i> for held clients, P + c<n> for churn ones
                         [default: cl<pid>-, e.g. cl4242-m0]

Attack (instead of --mode; loopback only like everything else):
  --attack KIND          a few hostile clients run KIND for --duration and report what they
                         achieved (frames sent, pongs, errors and close codes received):
                         ping-flood     one client sends empty pings as fast as the socket
                                        takes them and reads the pongs
                         fragments      one client sends a text frame with FIN=0, then empty
                                        continuation frames as fast as the socket takes them
                         private-flood  two clients send --target bursts of 2 x --rate private
                                        messages of 1,000 emoji (~4 KB) each, a burst whenever
                                        a token bucket of --rate per second (default 20, the
                                        server's default --rate-limit) is full again
                         ping-noread    four clients with a 4 KiB receive buffer send pings
                                        and never read
                         --conns overrides the number of clients.
  --target ID            the id private-flood sends to

Abuse (--mode abuse, alone; the attacks of issue 21 by throwaway ids, each paced, stopping
at the end of --duration; run a load beside it in another chatload):
  --attacks A[,A..]      which of: history (an id joins 20 new rooms, posts a line in each,
                         closes), holds (an id is dropped without a close after its welcome,
                         so the server holds it; fillers send it --hold-fill private messages
                         of 6 kB), replace (one id sends 40 lobby messages, then resumes on a
                         new socket while the old one is open, again and again), rooms (an
                         id joins 31 new rooms, then resets), churn (connect, join, close),
                         probe (a well-behaved id makes a room, posts a line, closes: its
                         round trip and any refusal) [default: all]
  --pace K=N[,K=N..]     starts per second of each: ids for history, holds, rooms, churn,
                         probe; sessions for replace [default: history=100,holds=20,
                         replace=5,rooms=8,churn=20,probe=1]
  --hold-fill N          private messages sent to each held id [default: 43, ~256 KiB]
  --abuse-sockets N      attacker sockets open at once, at most; starts beyond it are
                         skipped and counted [default: 1000]

Timing:
  --warmup SECS          at most this long to connect --conns clients before sending starts
                         (it starts as soon as all are in) [default: 20]
  --duration SECS        measured window: how long messages are sent [default: 10]
  --drain SECS           after sending stops, wait at most this long for deliveries
                         [default: 2]
                         A hard deadline of warmup + duration + drain + 30 s ends the run
                         regardless (exit status 3).

Report:
  --faults               the cluster may fail during the run (room mode): a room message
                         that misses some receiver must be named in one cluster_unavailable
                         or cluster_unconfirmed error to its sender (matched by count per
                         sender); reports unreported= and duplicates= (the exit status
                         checks those instead of lost and reordered)
  --pid PID              the server's process: report its CPU seconds over the measured
                         window (and per delivery), its RSS before connecting and at the
                         end of the window, and its open descriptors (from /proc);
                         repeatable (a cluster's nodes and Redis): the figures are sums
  -h, --help             print this help
  -V, --version          print chatload's version

Each message text is \"<kind> <sender> <seq> <send-ns>\", the nanoseconds since chatload
started at which it was written (senders are spread evenly over each 1/--rate s). Latency
is timed per frame on two clocks: to its arrival at the receiving client's socket (the
kernel's receive stamp of the read that brought it, never earlier than the frame: the
headline p50/p99/p99.9) and to chatload's read of it; the difference is chatload's own read
delay (one loop reads every client in turn), reported beside them. How far sends fell behind
their schedule is reported as send lag. Expected deliveries: room = each message x the held clients connected when it was
sent (a client still connecting when the window opened is never counted); private = 2 x
messages. Lost = expected - delivered. The last line printed is
'summary key=value ..'. Exit status: 0 when nothing was lost, duplicated or reordered, no
client was closed unexpectedly, every client connected and the server answered every close of
ours within 5 s; 1 otherwise; 2 for bad flags (a flag other than --pid given twice too) or
an unusable target; 3 when the hard deadline struck.
";

const DEFAULT_CONNS: usize = 100;

/// `--mode abuse`'s attacks, in the order of `Abuse::pace`.
pub const ABUSE_KINDS: [&str; 6] = ["history", "holds", "replace", "rooms", "churn", "probe"];
/// Their default paces: enough that main at fed4fd3 reaches each bug within a 10-minute run
/// (64 MiB of history at ~2,000 one-line logs/s, ~1,200 filled holds, 10,000 rooms held), and
/// the self-replacing id offers 10 times the default rate limit.
pub const ABUSE_PACE: [f64; 6] = [100.0, 20.0, 5.0, 8.0, 20.0, 1.0];

/// `--mode abuse`: see abuse.rs.
#[derive(Debug, Clone, PartialEq)]
pub struct Abuse {
    /// Starts per second, in `ABUSE_KINDS` order; 0: that attack is off.
    pub pace: [f64; 6],
    pub hold_fill: usize,
    pub sockets: usize,
}
const DEFAULT_SENDERS: usize = 10;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Modes {
    pub room: bool,
    pub private: bool,
    pub churn: bool,
    /// Implies room.
    pub blip: bool,
}

/// `--mode blip`: how clients drop and come back (see blip.rs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Blip {
    /// Blips per second; `None`: each client once.
    pub rate: Option<f64>,
    /// Longest time away.
    pub down: Duration,
    pub how: BlipHow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlipHow {
    Rst,
    Fin,
    Open,
    Mix,
}

#[derive(Debug, Clone)]
pub struct Args {
    pub host: String,
    pub addr: SocketAddr,
    pub sources: u8,
    pub modes: Modes,
    pub conns: usize,
    pub senders: usize,
    pub rate: f64,
    pub size: usize,
    pub churn: f64,
    pub churn_hold: Duration,
    /// `--rooms N`: 0 for none (everything in lobby, as before rooms existed).
    pub rooms: usize,
    pub connect_concurrency: usize,
    pub id_prefix: String,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    /// Summed over every one.
    pub pids: Vec<u32>,
    /// `--attack`: run that instead of the modes.
    pub attack: Option<Attack>,
    /// `--proto raw`: bare text frames, no JSON, no welcome (raw.rs).
    pub raw: bool,
    /// `--faults`: count each room message's outcome (see outcomes.rs).
    pub faults: bool,
    pub blip: Blip,
    /// `--mode abuse`: run that instead of the modes.
    pub abuse: Option<Abuse>,
    /// `--token-key`: a token per client (token.rs).
    pub tokens: Option<Arc<Tokens>>,
}

impl Args {
    /// `&token=TOKEN` for the client `id` with `--token-key`, else nothing.
    pub fn token_query(&self, id: &str) -> String {
        self.tokens.as_ref().map(|t| t.query(id)).unwrap_or_default()
    }
}

/// What `--attack` runs; see attack.rs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttackKind {
    PingFlood,
    Fragments,
    PrivateFlood,
    PingNoRead,
}

impl AttackKind {
    pub const ALL: [AttackKind; 4] =
        [AttackKind::PingFlood, AttackKind::Fragments, AttackKind::PrivateFlood, AttackKind::PingNoRead];

    pub fn name(self) -> &'static str {
        match self {
            AttackKind::PingFlood => "ping-flood",
            AttackKind::Fragments => "fragments",
            AttackKind::PrivateFlood => "private-flood",
            AttackKind::PingNoRead => "ping-noread",
        }
    }

    /// How many clients run it unless --conns says otherwise.
    pub fn default_conns(self) -> usize {
        match self {
            AttackKind::PingFlood | AttackKind::Fragments => 1,
            AttackKind::PrivateFlood => 2,
            AttackKind::PingNoRead => 4,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attack {
    pub kind: AttackKind,
    /// private-flood's recipient.
    pub target: Option<String>,
}

pub enum Parsed {
    Run(Box<Args>),
    Help,
    Version,
}

/// Parses the flags (without the program name). Errors are one line, ready to print.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, String> {
    let mut target = "127.0.0.1:8080".to_string();
    let mut allow_remote = false;
    let mut sources = 8u8;
    let mut mode: Option<String> = None;
    // `None`: not given on the command line, so errors can say what the user typed.
    let mut conns: Option<usize> = None;
    let mut senders: Option<usize> = None;
    let mut rate: Option<f64> = None;
    let mut size = 0usize;
    let mut churn: Option<f64> = None;
    let mut churn_hold = Duration::from_secs(1);
    let mut connect_concurrency = 256usize;
    let mut rooms = 0usize;
    let mut id_prefix = format!("cl{}-", std::process::id());
    let mut warmup = Duration::from_secs(20);
    let mut duration = Duration::from_secs(10);
    let mut drain = Duration::from_secs(2);
    let mut pids = Vec::new();
    let mut attack: Option<AttackKind> = None;
    let mut attack_target: Option<String> = None;
    let mut raw = false;
    let mut faults = false;
    let mut blip = Blip { rate: None, down: Duration::from_secs(1), how: BlipHow::Mix };
    let mut attacks: Option<String> = None;
    let mut pace: Option<String> = None;
    let mut hold_fill: Option<usize> = None;
    let mut abuse_sockets: Option<usize> = None;
    let mut token_key: Option<String> = None;
    let mut token_kid: Option<String> = None;

    let mut cli = flags::Cli::new(args).repeatable(&["--pid"]);
    while let Some(flag) = cli.next_flag()? {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "--allow-remote" => allow_remote = true,
            "--addr" => target = cli.value()?,
            "--sources" => {
                let n = whole(&flag, &cli.value()?)?;
                if !(1..=254).contains(&n) {
                    return Err(format!("{flag}: must be 1 to 254"));
                }
                sources = n as u8;
            }
            "--mode" => mode = Some(cli.value()?),
            "--proto" => raw = proto(&cli.value()?)?,
            "--conns" => conns = Some(whole(&flag, &cli.value()?)?),
            "--senders" => senders = Some(whole(&flag, &cli.value()?)?),
            "--rate" => rate = Some(positive_f64(&flag, &cli.value()?)?),
            "--attack" => {
                let v = cli.value()?;
                let names = AttackKind::ALL.map(AttackKind::name);
                attack = Some(
                    *AttackKind::ALL
                        .iter()
                        .find(|k| k.name() == v)
                        .ok_or_else(|| format!("--attack: unknown kind '{v}' ({})", names.join(", ")))?,
                );
            }
            "--target" => attack_target = Some(cli.value()?),
            "--attacks" => attacks = Some(cli.value()?),
            "--pace" => pace = Some(cli.value()?),
            "--hold-fill" => hold_fill = Some(whole(&flag, &cli.value()?)?),
            "--abuse-sockets" => {
                let n = whole(&flag, &cli.value()?)?;
                if n == 0 {
                    return Err(format!("{flag}: must be more than 0"));
                }
                abuse_sockets = Some(n);
            }
            "--faults" => faults = true,
            "--token-key" => token_key = Some(cli.value()?),
            "--token-kid" => token_kid = Some(cli.value()?),
            "--blip-rate" => blip.rate = Some(positive_f64(&flag, &cli.value()?)?),
            "--blip-down" => blip.down = seconds(&flag, &cli.value()?, true)?,
            "--blip-how" => {
                blip.how = match cli.value()?.as_str() {
                    "rst" => BlipHow::Rst,
                    "fin" => BlipHow::Fin,
                    "open" => BlipHow::Open,
                    "mix" => BlipHow::Mix,
                    v => return Err(format!("--blip-how: unknown way '{v}' (rst, fin, open, mix)")),
                }
            }
            "--size" => {
                size = whole(&flag, &cli.value()?)?;
                if size > 900 {
                    return Err(format!("{flag}: at most 900 (the server's default --max-text is 1000)"));
                }
            }
            "--churn" => churn = Some(non_negative_f64(&flag, &cli.value()?)?),
            "--churn-hold" => churn_hold = seconds(&flag, &cli.value()?, true)?,
            "--rooms" => rooms = whole(&flag, &cli.value()?)?,
            "--connect-concurrency" => {
                connect_concurrency = whole(&flag, &cli.value()?)?;
                if connect_concurrency == 0 {
                    return Err(format!("{flag}: must be more than 0"));
                }
            }
            "--id-prefix" => id_prefix = cli.value()?,
            "--warmup" => warmup = seconds(&flag, &cli.value()?, false)?,
            "--duration" => duration = seconds(&flag, &cli.value()?, false)?,
            "--drain" => drain = seconds(&flag, &cli.value()?, true)?,
            "--pid" => {
                let v = cli.value()?;
                pids.push(v.parse::<u32>().map_err(|_| format!("{flag}: '{v}' is not a process id"))?);
            }
            _ => return Err(format!("unknown flag '{flag}' (see --help)")),
        }
    }

    let abuse = if mode.as_deref().is_some_and(|m| m.split([',', '+']).any(|m| m.trim() == "abuse")) {
        if mode.as_deref() != Some("abuse") {
            return Err("--mode abuse: not combined with other modes (run a load in another chatload)".into());
        }
        if let Some(a) = attack {
            return Err(format!("--mode abuse and --attack {} exclude each other", a.name()));
        }
        mode = Some("idle".into());
        Some(abuse_flags(attacks.as_deref(), pace.as_deref(), hold_fill, abuse_sockets)?)
    } else {
        if attacks.is_some() || pace.is_some() || hold_fill.is_some() || abuse_sockets.is_some() {
            return Err("--attacks, --pace, --hold-fill and --abuse-sockets are for --mode abuse".into());
        }
        None
    };
    let attack = match (attack, attack_target) {
        (Some(kind), target) => {
            if let Some(m) = &mode {
                return Err(format!("--mode {m} and --attack {} exclude each other", kind.name()));
            }
            if kind == AttackKind::PrivateFlood && target.is_none() {
                return Err("--attack private-flood needs --target ID (the recipient)".into());
            }
            if kind != AttackKind::PrivateFlood && target.is_some() {
                return Err(format!("--target is for --attack private-flood, not {}", kind.name()));
            }
            if let Some(t) = &target
                && (t.is_empty()
                    || t.len() > 32
                    || !t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
            {
                return Err(format!("--target: '{t}' is not an id (1 to 32 of A-Z a-z 0-9 _ - .)"));
            }
            if conns.is_none_or(|c| c > 0) {
                conns = Some(conns.unwrap_or(kind.default_conns()));
            } else {
                return Err(format!("--conns 0: --attack {} needs at least one client", kind.name()));
            }
            Some(Attack { kind, target })
        }
        (None, Some(_)) => return Err("--target is for --attack private-flood".into()),
        (None, None) => None,
    };
    let rate = rate.unwrap_or(if attack.is_some() { 20.0 } else { 10.0 });
    let mode = if attack.is_some() { "idle".to_string() } else { mode.unwrap_or_else(|| "room".into()) };

    let mut modes = Modes::default();
    let mut idle = false;
    for m in mode.split([',', '+']) {
        match m.trim() {
            "idle" => idle = true,
            "room" => modes.room = true,
            "private" => modes.private = true,
            "churn" => modes.churn = true,
            "blip" => (modes.blip, modes.room) = (true, true),
            other => {
                return Err(format!("--mode: unknown mode '{other}' (idle, room, private, churn, blip)"));
            }
        }
    }
    if idle && (modes.room || modes.private) {
        return Err("--mode: idle cannot be combined with room or private".into());
    }
    if modes.blip && (idle || raw || faults) {
        return Err("--mode blip: not with idle, --proto raw or --faults".into());
    }
    if raw && (modes.private || attack.is_some()) {
        return Err(
            "--proto raw: only idle, room and churn modes (private and --attack need chatloop's protocol)"
                .into(),
        );
    }
    let churn = match churn {
        Some(c) => {
            modes.churn |= c > 0.0;
            if modes.churn && c == 0.0 {
                return Err("--churn 0 contradicts --mode churn".into());
            }
            c
        }
        None if modes.churn => 20.0,
        None => 0.0,
    };
    // Defaults give way to what was typed: --conns 5 alone means 5 senders, not an error
    // about a --senders 10 nobody wrote. Errors name only flags the user gave.
    let senders = match (senders, conns) {
        (Some(s), Some(c)) if modes.room && s > c => {
            return Err(format!("--senders {s} is more than --conns {c}"));
        }
        (Some(s), None) if modes.room && s > DEFAULT_CONNS => {
            return Err(format!(
                "--senders {s} is more than the {DEFAULT_CONNS} clients chatload holds by default; \
                 give --conns {s} or more"
            ));
        }
        (Some(0), _) if modes.room => return Err("--senders 0: room mode needs at least one sender".into()),
        (None, Some(0)) if modes.room => return Err("--conns 0: room mode needs at least one client".into()),
        (Some(s), _) => s,
        (None, c) => DEFAULT_SENDERS.min(c.unwrap_or(DEFAULT_CONNS)),
    };
    let conns = conns.unwrap_or(DEFAULT_CONNS);
    if modes.private && conns < 2 {
        return Err(format!("--conns {conns}: --mode private needs at least 2 clients (one pair)"));
    }
    if (modes.room || modes.private) && rate > 1e6 {
        return Err("--rate: at most 1000000 per sender".into());
    }
    if churn > 1e5 {
        return Err("--churn: at most 100000 per second".into());
    }
    // Ids are prefix + 'm'/'c' + up to 10 digits, and must stay within 32 valid characters.
    if id_prefix.len() > 20
        || !id_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(format!("--id-prefix: '{id_prefix}' must be at most 20 characters of A-Z a-z 0-9 _ - ."));
    }

    if rooms > 0 && modes.blip {
        return Err("--rooms: not with --mode blip (it counts lobby's seqs)".into());
    }
    if rooms > 0 && attack.is_some() {
        return Err("--rooms is for --mode, not --attack".into());
    }
    if rooms > 0 && rooms > conns {
        return Err(format!("--rooms {rooms} is more than --conns {conns}: every room needs a client"));
    }
    if rooms > 100_000 {
        return Err("--rooms: at most 100000".into());
    }

    let addr = resolve(&target)?;
    if !allow_remote && !addr.ip().is_loopback() {
        return Err(format!(
            "--addr {target} resolves to {}, outside loopback (127.0.0.0/8, ::1); pass --allow-remote to load it anyway",
            addr.ip()
        ));
    }
    let tokens = match (token_key, token_kid) {
        (Some(path), kid) => Some(Arc::new(Tokens::load(&path, kid, token::ttl(warmup, duration, drain))?)),
        (None, Some(_)) => return Err("--token-kid needs --token-key FILE".into()),
        (None, None) => None,
    };
    let host = match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    };
    Ok(Parsed::Run(Box::new(Args {
        host,
        addr,
        sources,
        modes,
        conns,
        senders: if modes.room { senders } else { 0 },
        rate,
        size,
        churn,
        churn_hold,
        rooms,
        connect_concurrency,
        id_prefix,
        warmup,
        duration,
        drain,
        pids,
        attack,
        raw,
        faults,
        blip,
        abuse,
        tokens,
    })))
}

/// `--mode abuse`'s flags: the attacks on, their paces.
fn abuse_flags(
    attacks: Option<&str>,
    pace: Option<&str>,
    hold_fill: Option<usize>,
    sockets: Option<usize>,
) -> Result<Abuse, String> {
    let index = |flag: &str, k: &str| {
        ABUSE_KINDS
            .iter()
            .position(|n| *n == k.trim())
            .ok_or_else(|| format!("{flag}: unknown attack '{}' ({})", k.trim(), ABUSE_KINDS.join(", ")))
    };
    let mut rates = ABUSE_PACE;
    if let Some(list) = attacks {
        let mut on = [false; 6];
        for k in list.split(',') {
            on[index("--attacks", k)?] = true;
        }
        for (r, on) in rates.iter_mut().zip(on) {
            if !on {
                *r = 0.0;
            }
        }
    }
    for item in pace.into_iter().flat_map(|p| p.split(',')) {
        let (k, v) = item.split_once('=').ok_or_else(|| format!("--pace: '{item}' is not KIND=N"))?;
        let i = index("--pace", k)?;
        let r = non_negative_f64("--pace", v)?;
        if r > 10_000.0 {
            return Err(format!("--pace: {k}={v}: at most 10000 a second"));
        }
        // An attack left out of --attacks stays off.
        if rates[i] > 0.0 || attacks.is_none() {
            rates[i] = r;
        }
    }
    if rates.iter().all(|&r| r == 0.0) {
        return Err("--mode abuse: every attack is off".into());
    }
    Ok(Abuse { pace: rates, hold_fill: hold_fill.unwrap_or(43), sockets: sockets.unwrap_or(1000) })
}

fn resolve(target: &str) -> Result<SocketAddr, String> {
    let target = target.strip_prefix("ws://").unwrap_or(target).trim_end_matches('/');
    let addrs: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|e| format!("--addr: cannot resolve '{target}' as HOST:PORT: {e}"))?
        .collect();
    // The server listens on 127.0.0.1 by default: prefer IPv4 when a name has both.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("--addr: '{target}' resolves to no address"))
}

/// `--proto`: true for raw.
fn proto(v: &str) -> Result<bool, String> {
    match v {
        "json" => Ok(false),
        "raw" => Ok(true),
        _ => Err(format!("--proto: unknown protocol '{v}' (json, raw)")),
    }
}

/// chatload's durations: at most a day, so every run stays bounded.
fn seconds(flag: &str, v: &str, zero_ok: bool) -> Result<Duration, String> {
    flags::seconds(flag, v, zero_ok, 86_400.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Args, String> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Parsed::Run(a) => Ok(*a),
            Parsed::Help | Parsed::Version => panic!("help or version"),
        }
    }

    #[test]
    fn defaults_and_combinations() {
        let a = run(&[]).unwrap();
        assert_eq!(a.modes, Modes { room: true, private: false, churn: false, blip: false });
        let a = run(&["--mode", "blip,private", "--blip-rate", "50", "--blip-how", "rst"]).unwrap();
        assert!(a.modes.blip && a.modes.room && a.modes.private);
        assert_eq!((a.blip.rate, a.blip.how), (Some(50.0), BlipHow::Rst));
        assert_eq!((a.conns, a.senders, a.churn), (100, 10, 0.0));
        let a = run(&["--mode", "room", "--churn", "50"]).unwrap();
        assert!(a.modes.room && a.modes.churn);
        let a = run(&["--mode=idle,churn", "--addr", "localhost:9"]).unwrap();
        assert_eq!(a.churn, 20.0);
        assert_eq!(a.senders, 0);
        assert!(a.addr.ip().is_loopback());
        assert_eq!(a.rooms, 0, "no rooms unless asked");
        let a = run(&["--rooms", "10", "--conns", "1000", "--senders", "100"]).unwrap();
        assert_eq!((a.rooms, a.conns, a.senders), (10, 1000, 100));
        assert_eq!(run(&["--mode", "idle", "--rooms", "3", "--conns", "3"]).unwrap().rooms, 3);
        let a = run(&["--proto", "raw", "--rooms", "100", "--conns", "1000", "--senders", "100"]).unwrap();
        assert!(a.raw && a.rooms == 100);
    }

    #[test]
    fn senders_default_gives_way_to_conns() {
        // The default 10 senders would be more than 5 clients: it is clamped, not an error.
        let a = run(&["--conns", "5"]).unwrap();
        assert_eq!((a.conns, a.senders), (5, 5));
        let a = run(&["--conns", "1"]).unwrap();
        assert_eq!((a.conns, a.senders), (1, 1));
        let a = run(&["--conns", "50"]).unwrap();
        assert_eq!(a.senders, 10);
        let a = run(&["--senders", "3", "--conns", "3"]).unwrap();
        assert_eq!((a.conns, a.senders), (3, 3));
        // Idle and private modes have no room senders; --conns 0 is fine for idle.
        assert_eq!(run(&["--mode", "idle", "--conns", "0"]).unwrap().senders, 0);
        assert!(matches!(parse(["--version".to_string()]), Ok(Parsed::Version)));
        // --attack: clients per kind unless --conns says otherwise; the rate is the server's
        // default rate limit.
        let a = run(&["--attack", "ping-noread"]).unwrap();
        assert_eq!((a.attack.unwrap().kind, a.conns, a.rate), (AttackKind::PingNoRead, 4, 20.0));
        let a = run(&["--attack", "private-flood", "--target", "victim", "--conns", "3"]).unwrap();
        assert_eq!(a.attack.as_ref().unwrap().target.as_deref(), Some("victim"));
        assert_eq!((a.conns, a.senders), (3, 0));
        assert!(run(&[]).unwrap().attack.is_none());
        assert!(!run(&[]).unwrap().raw && run(&["--proto", "raw", "--mode", "idle"]).unwrap().raw);
        assert!(matches!(parse(["-V".to_string()]), Ok(Parsed::Version)));
        // --mode abuse: every attack at its default pace, or those listed, paces overridden.
        let a = run(&["--mode", "abuse"]).unwrap().abuse.unwrap();
        assert_eq!((a.pace, a.hold_fill, a.sockets), (ABUSE_PACE, 43, 1000));
        let a =
            run(&["--mode=abuse", "--attacks", "replace,holds", "--pace", "replace=5,history=9"]).unwrap();
        assert_eq!(a.abuse.unwrap().pace, [0.0, 20.0, 5.0, 0.0, 0.0, 0.0]);
        assert!(run(&[]).unwrap().abuse.is_none());
    }

    #[test]
    fn bad_flags_are_clear() {
        for (args, needle) in [
            (&["--mode", "storm"][..], "unknown mode"),
            (&["--mode", "idle,room"], "cannot be combined"),
            (&["--senders", "200"], "--senders 200 is more than the 100 clients"),
            (&["--senders", "20", "--conns", "5"], "--senders 20 is more than --conns 5"),
            (&["--senders", "0"], "--senders 0"),
            (&["--conns", "0"], "--conns 0"),
            (&["--mode", "private", "--conns", "1"], "--conns 1"),
            (&["--rate", "0"], "more than 0"),
            (&["--duration", "x"], "not a number of seconds"),
            (&["--addr", "192.0.2.1:80"], "outside loopback"),
            (&["--conns"], "needs a value"),
            (&["--frob"], "unknown flag"),
            (&["--id-prefix", "a b"], "--id-prefix"),
            (
                &["--attack", "nuke"],
                "unknown kind 'nuke' (ping-flood, fragments, private-flood, ping-noread)",
            ),
            (&["--attack", "private-flood"], "needs --target"),
            (&["--attack", "ping-flood", "--target", "x"], "--target is for"),
            (&["--target", "x"], "--target is for"),
            (&["--attack", "ping-flood", "--mode", "room"], "exclude each other"),
            (&["--attack", "private-flood", "--target", "a b"], "not an id"),
            (&["--attack", "fragments", "--conns", "0"], "--conns 0"),
            (&["--token-kid", "k1"], "--token-kid needs --token-key"),
            (&["--token-key", "/nonexistent/key"], "--token-key: /nonexistent/key"),
            (&["--proto", "xml"], "unknown protocol 'xml' (json, raw)"),
            (&["--proto", "raw", "--mode", "private"], "--proto raw: only idle, room and churn"),
            (&["--proto", "raw", "--attack", "ping-flood"], "--proto raw: only"),
            (&["--rooms", "5", "--conns", "4"], "--rooms 5 is more than --conns 4"),
            (&["--rooms", "x"], "--rooms: 'x' is not a whole number"),
            (&["--attack", "ping-flood", "--rooms", "1"], "--rooms is for --mode"),
            (&["--mode", "blip", "--faults"], "--mode blip: not with"),
            (&["--blip-how", "cut"], "unknown way 'cut'"),
            (&["--mode", "blip", "--rooms", "2"], "not with --mode blip"),
            (&["--mode", "abuse,room"], "not combined"),
            (&["--mode", "abuse", "--attack", "ping-flood"], "exclude each other"),
            (&["--attacks", "history"], "are for --mode abuse"),
            (&["--mode", "abuse", "--attacks", "nuke"], "unknown attack 'nuke'"),
            (&["--mode", "abuse", "--pace", "history"], "is not KIND=N"),
            (
                &["--mode", "abuse", "--pace", "history=0,holds=0,replace=0,rooms=0,churn=0,probe=0"],
                "every attack is off",
            ),
        ] {
            let e = run(args).err().unwrap_or_else(|| panic!("{args:?} should fail"));
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
