//! The hold decision against simulated traffic: lines queued for tokens at given times, one
//! turn per arrival and one at each wake-up, as the loop runs them.

use super::*;

const MS: Duration = Duration::from_millis(1);

/// A loop in miniature: what is queued per token, the pending list with its flag, and what
/// the writes did.
struct Sim {
    f: Flush,
    t0: Instant,
    pending: Vec<usize>,
    flagged: Vec<bool>,
    /// When each token's oldest unwritten line was queued.
    oldest: Vec<Option<Instant>>,
    writes: Vec<usize>,
    worst: Vec<Duration>,
    turns: usize,
}

impl Sim {
    fn new(interval: Duration, tokens: usize) -> Sim {
        Sim {
            f: Flush::new(interval),
            t0: Instant::now(),
            pending: Vec::new(),
            flagged: vec![false; tokens],
            oldest: vec![None; tokens],
            writes: vec![0; tokens],
            worst: vec![Duration::ZERO; tokens],
            turns: 0,
        }
    }

    fn at(&self, us: u64) -> Instant {
        self.t0 + Duration::from_micros(us)
    }

    /// One turn at `now`: queue `lines`, then settle as `Server::settle` does.
    fn turn(&mut self, now: Instant, lines: &[usize]) {
        self.turns += 1;
        for &t in lines {
            self.oldest[t].get_or_insert(now);
            if !self.flagged[t] {
                self.flagged[t] = true;
                self.pending.push(t);
            }
        }
        self.f.tick(now, &mut self.pending);
        let mut chunk = Flush::chunk(self.pending.len());
        for t in self.f.take_due(&mut self.pending, &mut chunk, now) {
            self.flagged[t] = false;
            if let Some(q) = self.oldest[t].take() {
                self.writes[t] += 1;
                self.worst[t] = self.worst[t].max(now - q);
            }
        }
    }

    /// Runs `arrivals` (µs, token) in order, with a turn at every wake-up in between.
    fn run(&mut self, arrivals: &[(u64, usize)]) {
        for &(us, t) in arrivals {
            let now = self.at(us);
            while let Some(w) = self.f.wake(!self.pending.is_empty(), now).filter(|&w| w < now) {
                self.turn(w, &[]);
            }
            self.turn(now, &[t]);
        }
        let end = arrivals.last().map_or(self.t0, |a| self.at(a.0));
        while let Some(w) = self.f.wake(!self.pending.is_empty(), end) {
            self.turn(w.max(end), &[]);
        }
    }
}

fn every(period_us: u64, count: u64, token: usize) -> impl Iterator<Item = (u64, usize)> {
    (0..count).map(move |i| (i * period_us, token))
}

#[test]
fn a_lone_line_goes_in_its_turn_and_a_hot_clients_next_waits_for_the_window() {
    let mut s = Sim::new(5 * MS, 2);
    s.turn(s.at(0), &[0]);
    assert_eq!((s.writes[0], s.worst[0]), (1, Duration::ZERO), "an idle loop writes at once");
    // Token 0 was written 1 ms ago: its next line is held and opens a window of 5 ms. Token
    // 1, not written lately, goes at once on the same busy loop.
    s.turn(s.at(1000), &[0, 1]);
    assert_eq!((s.writes[0], s.writes[1]), (1, 1));
    assert_eq!(s.f.wake(false, s.at(1000)), Some(s.at(6000)), "the window the held line opened");
    // Token 1 was written at 1 ms: a line at 2 ms joins the window.
    s.turn(s.at(2000), &[1]);
    s.turn(s.at(4000), &[0]);
    assert_eq!((s.writes[0], s.writes[1]), (1, 1), "held: the later lines join them");
    s.turn(s.at(6000), &[]);
    assert_eq!((s.writes[0], s.worst[0]), (2, 5 * MS), "both of token 0's lines in one write");
    assert_eq!((s.writes[1], s.worst[1]), (2, 4 * MS));
    assert_eq!(s.f.wake(false, s.at(6000)), None, "nothing held");
    // A line 3 ms after its write (more than half the interval) goes at once.
    s.turn(s.at(9000), &[1]);
    assert_eq!((s.writes[1], s.worst[1]), (3, 4 * MS), "3 ms after its write: at once");
}

#[test]
fn a_client_getting_lines_further_apart_than_half_the_interval_never_waits() {
    let mut s = Sim::new(5 * MS, 4);
    // Token 0 every 50 ms, token 2 every 5.1 ms, token 3 every 2.6 ms; token 1 every
    // millisecond, on the same loop.
    let mut arrivals: Vec<(u64, usize)> = every(1000, 1000, 1).collect();
    arrivals.extend(every(50_000, 20, 0));
    arrivals.extend(every(5_100, 190, 2));
    arrivals.extend(every(2_600, 380, 3));
    arrivals.sort();
    s.run(&arrivals);
    assert_eq!((s.writes[0], s.worst[0]), (20, Duration::ZERO));
    assert_eq!((s.writes[2], s.worst[2]), (190, Duration::ZERO));
    assert_eq!((s.writes[3], s.worst[3]), (380, Duration::ZERO));
    // The busy one: about one write per interval, every line within the interval.
    assert!((160..=205).contains(&s.writes[1]), "{} writes for 1000 lines", s.writes[1]);
    assert_eq!(s.worst[1], 5 * MS);
    // Wake-ups: at most one a window beside the arrivals' own turns.
    assert!(s.turns <= 1590 + 200, "{} turns", s.turns);
}

#[test]
fn no_interval_never_holds() {
    let mut s = Sim::new(Duration::ZERO, 1);
    s.run(&every(1000, 100, 0).collect::<Vec<_>>());
    assert_eq!((s.writes[0], s.worst[0]), (100, Duration::ZERO));
    assert!(s.f.written.is_empty() && s.f.hot.is_empty());
}

#[test]
fn a_pass_is_cut_into_chunks_and_ends_within_four_turns() {
    let mut s = Sim::new(Duration::ZERO, 1000);
    let all: Vec<usize> = (0..1000).collect();
    s.turn(s.at(0), &all);
    assert_eq!(s.writes.iter().sum::<usize>(), 250, "a quarter of 1,000 pending");
    assert_eq!(s.f.wake(true, s.at(0)), Some(s.at(0)), "the rest goes on without sleeping");
    // A line for everyone while the pass goes on: those not yet written get both in one write.
    s.turn(s.at(100), &all);
    s.run(&[]);
    assert_eq!(s.writes.iter().sum::<usize>(), 1250, "the first quarter twice, the others once");
    assert_eq!(Flush::chunk(10), PASS_CHUNK);
}

#[test]
fn a_cooled_connection_is_written_next_turn_and_held_ones_go_first() {
    let mut s = Sim::new(5 * MS, 130);
    s.turn(s.at(0), &[0, 129, 64]);
    s.f.cool(129); // its write was cut by WRITE_BUDGET
    s.turn(s.at(1000), &[0, 129, 64]);
    assert_eq!((s.writes[0], s.writes[129], s.writes[64]), (1, 2, 1));
    assert_eq!(s.f.held, vec![0, 64]);
    // At the window's end the held ones go ahead of what was queued in that turn.
    let mut pending = vec![7];
    s.f.tick(s.at(6000), &mut pending);
    assert_eq!(pending, vec![0, 64, 7]);
    assert!(!is_hot(&s.f.hot, 0) && !is_hot(&s.f.hot, 64) && !is_hot(&s.f.hot, 129), "cooled");
    assert!(s.f.written.is_empty());
}
