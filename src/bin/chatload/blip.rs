//! `--mode blip`: room traffic as in room mode while every client drops its TCP connection
//! without a close and resumes, and the count of what a blip cost, by the server's numbers.
//!
//! A client connects, reads its welcome (keeping the `resume` token) and joins `lobby` plainly
//! to learn the room's `seq` and `epoch`: it is counted from there. At its moment (each client
//! once at a random moment from 5% to 80% of the window, or `--blip-rate` per second) it drops
//! the connection (`--blip-how`: a reset, a FIN, or the socket left open and unread), stays
//! away a random 0 to `--blip-down`, then connects with `?id=ID&resume=TOKEN&pseq=P` and, once
//! the welcome says `"resumed":true`, sends `{"join":"lobby","since":S,"epoch":E}` with S the
//! last seq it read. Anything but a resumed welcome (`id_taken`, a fresh welcome, a connect
//! error) is a failed resume; such a client is not counted further.
//!
//! Counting is by `seq`, not by chatload's own texts: a client must read every seq of its
//! epoch after the one its first `joined` gave, up to the highest seq anyone read, once each.
//! Lost = never read, less what a `gap` line declared no longer kept (counted apart);
//! duplicated = read twice; reordered = read after a higher one. A room line read between a
//! resumed welcome and the answer to its join is "unasked" (restored rooms must stay quiet
//! until asked). With `--mode blip,private`, the pairs of private mode send to each other too:
//! a recipient must read every `pseq` from 1 up to its highest once (holes, duplicates), and
//! every message whose sender read its own copy (so the server took it) must reach the
//! partner. Latency is recorded for live lines only; replayed ones (seq up to the rejoin's
//! `joined` seq) are counted apart.

use super::{Engine, Phase, Role, State};
use crate::args::BlipHow;
use crate::lines::{field, number, parse_text};
use hdrhistogram::Histogram;
use std::cmp::Reverse;
use std::fmt::Write as _;
use std::net::Shutdown;
use std::time::Instant;

pub(super) const BLIP_DROP: u8 = 3;
pub(super) const BLIP_BACK: u8 = 4;

/// Where a client is in its blip cycle.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
enum Stage {
    /// Connecting for the first time; `Joining` once its welcome came.
    #[default]
    First,
    Joining,
    /// Connected and joined.
    Up,
    /// Dropped; reconnecting at its `BLIP_BACK` timer.
    Away,
    /// Reconnecting with its token.
    Resuming,
    /// Resumed; its since-join sent, its `joined` not yet read.
    Rejoining,
    /// Its resume was refused or failed: no longer counted.
    Failed,
}

#[derive(Default)]
struct Client {
    stage: Stage,
    token: String,
    epoch: String,
    /// The lobby's seq at its first join: it is owed every seq after it.
    base: u64,
    /// Highest seq read.
    last: u64,
    /// Bit k: seq base + 1 + k read (or declared gone by a gap).
    seen: Vec<u64>,
    /// Seqs declared gone by gap lines (marked in `seen`).
    gone: u64,
    /// Seqs up to this one are replays (the rejoin's `joined` seq).
    replay_until: u64,
    /// Highest pseq read, and which (bit p - 1).
    pseq: u64,
    pseen: Vec<u64>,
    /// Private messages from its partner read (bit: the partner's own count), and its own
    /// that the server echoed.
    from_partner: Vec<u64>,
    echoed: Vec<u64>,
    /// The old socket of an `open` or `fin` blip, dropped once the resume is done.
    old: Option<mio::net::TcpStream>,
    reconnect_at: Option<Instant>,
    blips: u32,
}

/// The totals for the report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub blips: u64,
    pub blips_skipped: u64,
    pub resumed: u64,
    pub resume_failed: u64,
    /// Still away or resuming when the run ended.
    pub pending: u64,
    pub lost: u64,
    pub clients_with_losses: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub gap_lines: u64,
    pub gap_seqs: u64,
    pub unasked: u64,
    pub epoch_changes: u64,
    pub replayed: u64,
    pub final_seq: u64,
    pub private_lost: u64,
    pub private_holes: u64,
    pub private_duplicated: u64,
    pub private_replayed: u64,
    pub resume_p50_us: u64,
    pub resume_p99_us: u64,
    pub resume_max_us: u64,
}

pub struct Blip {
    clients: Vec<Client>,
    rng: u64,
    /// Highest lobby seq anyone read, and the clients counted for it.
    final_seq: u64,
    counted: u64,
    resume_hist: Histogram<u64>,
    tally: Tally,
}

fn set(bits: &mut Vec<u64>, k: u64) -> bool {
    let (w, b) = ((k / 64) as usize, k % 64);
    if bits.len() <= w {
        bits.resize(w + 1, 0);
    }
    let was = bits[w] >> b & 1 == 1;
    bits[w] |= 1 << b;
    !was
}

fn has(bits: &[u64], k: u64) -> bool {
    bits.get((k / 64) as usize).is_some_and(|w| w >> (k % 64) & 1 == 1)
}

fn ones(bits: &[u64]) -> u64 {
    bits.iter().map(|w| u64::from(w.count_ones())).sum()
}

/// A number field (`"seq":`) of a server line.
fn num_field(line: &[u8], key: &[u8]) -> Option<u64> {
    let start = line.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = line[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    number(&line[start..start + digits])
}

impl Blip {
    pub fn new(clients: usize) -> Blip {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        Blip {
            clients: (0..clients).map(|_| Client::default()).collect(),
            rng: seed | 1,
            final_seq: 0,
            counted: 0,
            resume_hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            tally: Tally::default(),
        }
    }

    /// xorshift64*: a uniform number in [0, 1).
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Engine<'_> {
    fn bl(&mut self) -> &mut Blip {
        self.blip.as_mut().expect("--mode blip")
    }

    /// At the window's start: who is counted from which seq, and every blip's moment.
    pub(super) fn schedule_blips(&mut self) {
        let window = (self.window_end_ns - self.window_start_ns) as f64;
        let (from, to) =
            (self.window_start_ns as f64 + 0.05 * window, self.window_start_ns as f64 + 0.8 * window);
        let n = self.args.conns;
        let live: Vec<bool> = self.mains.iter().map(|m| m.live).collect();
        let rate = self.args.blip.rate;
        let b = self.bl();
        // Clients that are live but never joined cannot be: admit() follows the joined line.
        b.final_seq =
            b.clients.iter().zip(&live).filter(|(_, l)| **l).map(|(c, _)| c.base).max().unwrap_or(0);
        b.counted = live.iter().filter(|l| **l).count() as u64;
        let owed: u64 =
            b.clients.iter().zip(&live).filter(|(_, l)| **l).map(|(c, _)| b.final_seq - c.base).sum();
        // A random order of the clients (Fisher-Yates).
        let mut order: Vec<u32> = (0..n as u32).collect();
        for k in (1..order.len()).rev() {
            let j = (b.random() * (k + 1) as f64) as usize;
            order.swap(k, j.min(k));
        }
        let mut due = Vec::new();
        match rate {
            None => {
                for &c in &order {
                    due.push(((from + b.random() * (to - from)) as u64, c));
                }
            }
            Some(r) => {
                let count = ((to - from) / 1e9 * r) as usize;
                for k in 0..count {
                    due.push(((from + k as f64 * 1e9 / r) as u64, order[k % n.max(1)]));
                }
            }
        }
        self.counts.expected += owed;
        for (at, c) in due {
            self.timers.push(Reverse((at, BLIP_DROP, c, 0)));
        }
    }

    /// A blip timer: drop a client, or bring it back.
    pub(super) fn blip_timer(&mut self, kind: u8, i: u32, _b: u64) {
        let i = i as usize;
        if kind == BLIP_DROP {
            if self.phase == Phase::Run {
                self.drop_client(i);
            }
        } else if matches!(self.phase, Phase::Run | Phase::Drain) {
            self.resume_client(i);
        }
    }

    fn drop_client(&mut self, i: usize) {
        let live = self.mains[i].live;
        let token = self.mains[i].token;
        let stage = self.bl().clients[i].stage;
        let Some(t) =
            token.filter(|&t| live && stage == Stage::Up && matches!(self.conns[t].state, State::Open(_)))
        else {
            self.bl().tally.blips_skipped += 1;
            return;
        };
        let conn = self.conns.remove(t);
        let State::Open(ws) = conn.state else { unreachable!("checked open") };
        self.open -= 1;
        self.mains[i].token = None;
        let mut tcp = ws.into_inner().tcp;
        let _ = self.poll.registry().deregister(&mut tcp);
        let how = match self.args.blip.how {
            BlipHow::Mix => [BlipHow::Rst, BlipHow::Fin, BlipHow::Open][self.bl().tally.blips as usize % 3],
            h => h,
        };
        let down = self.args.blip.down.as_secs_f64();
        let b = self.bl();
        b.tally.blips += 1;
        let away = b.random() * down;
        let c = &mut b.clients[i];
        c.stage = Stage::Away;
        c.blips += 1;
        match how {
            BlipHow::Rst => {
                // SO_LINGER 0: close() sends a reset, not a FIN.
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO));
                drop(tcp);
            }
            BlipHow::Fin => {
                let _ = tcp.shutdown(Shutdown::Write);
                c.old = Some(tcp);
            }
            BlipHow::Open | BlipHow::Mix => c.old = Some(tcp),
        }
        let due = self.ns(Instant::now()) + (away * 1e9) as u64;
        self.timers.push(Reverse((due, BLIP_BACK, i as u32, 0)));
    }

    fn resume_client(&mut self, i: usize) {
        if !self.mains[i].live || self.bl().clients[i].stage != Stage::Away {
            return;
        }
        match self.open_conn(Role::Main(i as u32)) {
            Ok(t) => {
                self.mains[i].token = Some(t);
                let c = &mut self.bl().clients[i];
                c.stage = Stage::Resuming;
                c.reconnect_at = Some(Instant::now());
            }
            Err(e) => {
                *self.counts.connect_errors.entry(crate::net::io_reason(&e)).or_default() += 1;
                self.resume_failed(i);
            }
        }
    }

    /// `&resume=TOKEN&pseq=P` for a client coming back, else nothing.
    pub(super) fn blip_query(&self, i: usize) -> String {
        match &self.blip {
            Some(b) if b.clients[i].stage == Stage::Resuming => {
                let c = &b.clients[i];
                format!("&resume={}&pseq={}", c.token, c.pseq)
            }
            _ => String::new(),
        }
    }

    /// The client is no longer counted: what it was owed and read leave the totals.
    fn resume_failed(&mut self, i: usize) {
        let b = self.blip.as_mut().expect("blip");
        let c = &mut b.clients[i];
        if c.stage == Stage::Failed {
            return;
        }
        c.stage = Stage::Failed;
        c.old = None;
        b.tally.resume_failed += 1;
        if self.mains[i].live {
            b.counted -= 1;
            self.counts.expected -= (b.final_seq - c.base).saturating_sub(c.gone);
            self.counts.delivered -= (ones(&c.seen).min(b.final_seq - c.base)).saturating_sub(c.gone);
            self.unlive(i);
        }
    }

    /// A connection of client `i` failed before its welcome: if it was a resume, it failed.
    pub(super) fn blip_connect_failed(&mut self, i: usize) {
        if self.blip.as_ref().is_some_and(|b| b.clients[i].stage == Stage::Resuming) {
            self.resume_failed(i);
        }
    }

    /// Still owed: a client away or resuming (and not failed).
    pub(super) fn blip_pending(&self) -> bool {
        let Some(b) = &self.blip else { return false };
        b.clients
            .iter()
            .zip(&self.mains)
            .any(|(c, m)| m.live && matches!(c.stage, Stage::Away | Stage::Resuming | Stage::Rejoining))
            || b.clients.iter().enumerate().any(|(i, c)| self.private_owed(c, i) > 0)
    }

    /// Private messages of `i`'s partner that the server echoed but `i` has not read.
    fn private_owed(&self, c: &Client, i: usize) -> u64 {
        if !self.args.modes.private || (i ^ 1) >= self.args.conns || !self.mains[i].live {
            return 0;
        }
        let b = self.blip.as_ref().expect("blip");
        let p = &b.clients[i ^ 1];
        let mut owed = 0;
        for (w, e) in p.echoed.iter().enumerate() {
            owed += u64::from((e & !c.from_partner.get(w).copied().unwrap_or(0)).count_ones());
        }
        owed
    }

    /// Room sender `i` sends its next message (not while away: it has no connection).
    pub(super) fn send_blip_room(&mut self, i: usize, stamp: u64) -> bool {
        let stage = self.bl().clients[i].stage;
        let m = &self.mains[i];
        let (true, Some(t), Stage::Up | Stage::Rejoining) = (m.live, m.token, stage) else { return false };
        let seq = m.room_seq;
        let mut json = String::with_capacity(48 + self.pad.len());
        let _ = write!(json, r#"{{"text":"r {i} {seq} {stamp}{}"}}"#, self.pad);
        if !self.write(t, json) {
            return false;
        }
        self.mains[i].room_seq += 1;
        self.counts.sent_room += 1;
        true
    }

    /// Private sender `i` sends to its partner (away or not: the server keeps it).
    pub(super) fn send_blip_private(&mut self, i: usize, stamp: u64) -> bool {
        let j = i ^ 1;
        let stage = self.bl().clients[i].stage;
        let (m, p) = (&self.mains[i], &self.mains[j]);
        let (true, true, Some(t), Stage::Up | Stage::Rejoining) = (m.live, p.live, m.token, stage) else {
            return false;
        };
        let seq = m.private_seq;
        let mut json = String::with_capacity(64 + self.pad.len());
        let _ = write!(json, r#"{{"to":"{}","text":"p {i} {seq} {stamp}{}"}}"#, self.ids[j], self.pad);
        if !self.write(t, json) {
            return false;
        }
        self.mains[i].private_seq += 1;
        self.counts.sent_private += 1;
        true
    }

    /// Every line of a text frame to a held client in blip mode.
    pub(super) fn on_blip_text(&mut self, t: usize, text: &str, now: Instant) {
        let Role::Main(i) = self.conns[t].role else { return };
        let i = i as usize;
        for line in text.as_bytes().split(|&b| b == b'\n') {
            if line.starts_with(br#"{"type":"message""#) {
                self.blip_message(i, line, now);
            } else if line.starts_with(br#"{"type":"welcome""#) {
                self.blip_welcome(t, i, line, now);
            } else if line.starts_with(br#"{"type":"joined""#) {
                self.blip_joined(t, i, line);
            } else if line.starts_with(br#"{"type":"gap""#) {
                self.blip_gap(i, line);
            } else if line.starts_with(br#"{"type":"error""#) {
                let code = field(line, br#""code":""#).unwrap_or(b"?");
                *self.counts.server_errors.entry(String::from_utf8_lossy(code).into_owned()).or_default() +=
                    1;
                if self.bl().clients[i].stage == Stage::Resuming {
                    self.resume_failed(i);
                }
            }
        }
    }

    fn blip_welcome(&mut self, t: usize, i: usize, line: &[u8], now: Instant) {
        let token = field(line, br#""resume":""#).map(|v| String::from_utf8_lossy(v).into_owned());
        let key = br#""resumed":true"#;
        let resumed = line.windows(key.len()).any(|w| w == key);
        let b = self.bl();
        let c = &mut b.clients[i];
        let stage = c.stage;
        if let Some(tok) = token {
            c.token = tok;
        }
        let join = match stage {
            Stage::First => {
                c.stage = Stage::Joining;
                r#"{"join":"lobby"}"#.to_string()
            }
            Stage::Resuming if resumed => {
                c.stage = Stage::Rejoining;
                c.old = None; // an `open` blip's socket: the server has replaced it
                let since = c.last;
                let join = format!(r#"{{"join":"lobby","since":{since},"epoch":"{}"}}"#, c.epoch);
                if let Some(at) = c.reconnect_at.take() {
                    let us = now.saturating_duration_since(at).as_micros() as u64;
                    b.resume_hist.saturating_record(us.max(1));
                }
                b.tally.resumed += 1;
                self.conns[t].welcomed = true;
                join
            }
            Stage::Resuming => {
                // A fresh session: the resume was refused.
                self.conns[t].welcomed = true;
                return self.resume_failed(i);
            }
            _ => return,
        };
        let _ = self.queue_text(t, join);
    }

    fn blip_joined(&mut self, t: usize, i: usize, line: &[u8]) {
        if field(line, br#""room":""#) != Some(b"lobby") {
            return;
        }
        let seq = num_field(line, br#""seq":"#).unwrap_or(0);
        let epoch =
            field(line, br#""epoch":""#).map(|e| String::from_utf8_lossy(e).into_owned()).unwrap_or_default();
        let b = self.bl();
        let c = &mut b.clients[i];
        match c.stage {
            Stage::Joining => {
                c.stage = Stage::Up;
                c.base = seq;
                c.last = seq;
                c.epoch = epoch;
                // Counted from here: the engine's welcome (live, if sending has not started).
                self.on_welcome(t);
            }
            Stage::Rejoining => {
                c.stage = Stage::Up;
                c.replay_until = seq;
                if epoch != c.epoch {
                    b.tally.epoch_changes += 1;
                }
            }
            _ => {}
        }
    }

    fn blip_gap(&mut self, i: usize, line: &[u8]) {
        let Some(oldest) = num_field(line, br#""seq":"#) else { return };
        let b = self.blip.as_mut().expect("blip");
        b.tally.gap_lines += 1;
        let c = &mut b.clients[i];
        // Everything after what it had, before the oldest kept, is declared gone.
        for s in c.last + 1..oldest {
            if s > c.base && set(&mut c.seen, s - c.base - 1) {
                b.tally.gap_seqs += 1;
                c.gone += 1;
                // No longer owed: expected deliveries are what the server still has.
                self.counts.expected -= 1;
            }
        }
        c.last = c.last.max(oldest.saturating_sub(1));
    }

    fn blip_message(&mut self, i: usize, line: &[u8], now: Instant) {
        if !self.mains[i].live {
            self.counts.uncounted += 1;
            return;
        }
        let text = field(line, br#""text":""#).unwrap_or_default();
        let stamp = parse_text(text);
        if let Some(pseq) = num_field(line, br#""pseq":"#) {
            return self.blip_private(i, pseq, stamp, now);
        }
        let Some(seq) = num_field(line, br#""seq":"#) else {
            // A private message without pseq: the sender's own copy.
            if let Some((b'p', s, k, _)) = stamp
                && s == i
            {
                set(&mut self.bl().clients[i].echoed, k);
            }
            return;
        };
        if field(line, br#""room":""#) != Some(b"lobby") {
            self.counts.foreign += 1;
            return;
        }
        let counted = self.bl().counted;
        let b = self.blip.as_mut().expect("blip");
        let c = &mut b.clients[i];
        if c.stage == Stage::Rejoining {
            b.tally.unasked += 1;
        }
        if seq <= c.base {
            self.counts.uncounted += 1;
            return;
        }
        if !set(&mut c.seen, seq - c.base - 1) {
            b.tally.duplicated += 1;
            return;
        }
        if seq < c.last {
            b.tally.reordered += 1;
            self.counts.reordered += 1;
        }
        c.last = c.last.max(seq);
        let replay = seq <= c.replay_until;
        self.counts.delivered += 1;
        if seq > b.final_seq {
            self.counts.expected += (seq - b.final_seq) * counted;
            b.final_seq = seq;
        }
        if replay {
            b.tally.replayed += 1;
        } else if let Some((b'r', _, _, sent_ns)) = stamp {
            self.delivered_at(sent_ns, now);
        }
    }

    fn blip_private(&mut self, i: usize, pseq: u64, stamp: Option<(u8, usize, u64, u64)>, now: Instant) {
        let b = self.blip.as_mut().expect("blip");
        let c = &mut b.clients[i];
        if pseq == 0 || !set(&mut c.pseen, pseq - 1) {
            b.tally.private_duplicated += 1;
            return;
        }
        let replay = c.stage != Stage::Up && c.stage != Stage::Joining;
        c.pseq = c.pseq.max(pseq);
        if let Some((b'p', s, k, sent_ns)) = stamp
            && s == i ^ 1
        {
            set(&mut c.from_partner, k);
            if replay {
                b.tally.private_replayed += 1;
            } else {
                self.delivered_at(sent_ns, now);
            }
        }
    }

    /// The totals, once the run is over.
    pub fn blip_tally(&self) -> Option<Tally> {
        let b = self.blip.as_ref()?;
        let mut t = b.tally.clone();
        t.final_seq = b.final_seq;
        for (i, (c, m)) in b.clients.iter().zip(&self.mains).enumerate() {
            if c.stage == Stage::Failed {
                continue;
            }
            if m.live && matches!(c.stage, Stage::Away | Stage::Resuming | Stage::Rejoining) {
                t.pending += 1;
            }
            if !m.live {
                continue;
            }
            let owed = b.final_seq - c.base;
            let read = (0..owed).filter(|&k| has(&c.seen, k)).count() as u64;
            if read < owed {
                t.lost += owed - read;
                t.clients_with_losses += 1;
            }
            t.private_holes += c.pseq - ones(&c.pseen).min(c.pseq);
            t.private_lost += self.private_owed(c, i);
        }
        let h = &b.resume_hist;
        if !h.is_empty() {
            (t.resume_p50_us, t.resume_p99_us, t.resume_max_us) =
                (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max());
        }
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_and_fields() {
        let mut v = Vec::new();
        assert!(set(&mut v, 0) && set(&mut v, 130) && !set(&mut v, 130));
        assert!(has(&v, 130) && !has(&v, 129) && !has(&v, 10_000));
        assert_eq!(ones(&v), 2);
        let line = br#"{"type":"message","room":"lobby","seq":42,"from":"a","text":"r 1 2 3","ts":9}"#;
        assert_eq!(num_field(line, br#""seq":"#), Some(42));
        assert_eq!(num_field(line, br#""pseq":"#), None);
        let p = br#"{"type":"message","pseq":7,"from":"a","to":"b","text":"p 1 2 3","ts":9}"#;
        assert_eq!(num_field(p, br#""pseq":"#), Some(7));
        assert_eq!(num_field(p, br#""seq":"#), None, "pseq is not seq");
        let mut b = Blip::new(1);
        for _ in 0..1000 {
            let x = b.random();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
