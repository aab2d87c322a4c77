//! Latency, frame by frame, on two clocks: when the frame reached the receiving client's socket
//! (the kernel's receive timestamp, SO_TIMESTAMPNS) and when chatload's loop read it.
//!
//! One loop reads a thousand clients in turn, so a frame can wait in its socket while the loop
//! reads the others: that wait is chatload's, not the server's, and a client of its own would
//! not have it. The arrival clock leaves it out; the read clock keeps it; their difference,
//! frame by frame, is chatload's own read delay, reported beside the figures it would skew.
//! A read brings every byte that waited, and the kernel stamps the read with its newest byte,
//! so an arrival stamp is never early: a frame that waited behind a later one is charged up to
//! that one's arrival.

use hdrhistogram::Histogram;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct Latency {
    /// Send to arrival at the socket (read time for a frame the kernel did not stamp).
    pub arrival: Histogram<u64>,
    /// Send to chatload's read of the frame.
    pub read: Histogram<u64>,
    /// Read minus arrival: chatload's own delay.
    pub delay: Histogram<u64>,
    /// Frames that carried a kernel stamp.
    pub stamped: u64,
    /// CLOCK_REALTIME minus chatload's clock (ns since its start), to read kernel stamps.
    offset_ns: i128,
}

/// p50, p99, p99.9 and max of a histogram, in µs (zeros when empty).
pub fn quantiles_us(h: &Histogram<u64>) -> [u64; 4] {
    if h.is_empty() {
        return [0; 4];
    }
    [h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.value_at_quantile(0.999), h.max()]
        .map(|ns| ns / 1000)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

impl Latency {
    pub fn new() -> Latency {
        Latency { arrival: histogram(), read: histogram(), delay: histogram(), stamped: 0, offset_ns: 0 }
    }

    /// Takes the two clocks' offset again (cheap; done every sweep, so a step of the wall
    /// clock is followed within one).
    pub fn sync(&mut self, t0: Instant) {
        self.offset_ns = realtime_offset(t0);
    }

    /// One frame sent at `sent_ns`, read at `read_ns` (both ns since `t0`), whose read the
    /// kernel stamped `rx_realtime_ns` (0: no stamp).
    pub fn record(&mut self, sent_ns: u64, read_ns: u64, rx_realtime_ns: u64) {
        let arrived_ns = if rx_realtime_ns == 0 {
            read_ns
        } else {
            self.stamped += 1;
            // Within the send and the read: the offset is taken to a microsecond or so.
            ((rx_realtime_ns as i128 - self.offset_ns).max(0) as u64).clamp(sent_ns, read_ns.max(sent_ns))
        };
        self.arrival.saturating_record(arrived_ns.saturating_sub(sent_ns).max(1));
        self.read.saturating_record(read_ns.saturating_sub(sent_ns).max(1));
        self.delay.saturating_record(read_ns.saturating_sub(arrived_ns).max(1));
    }
}

/// CLOCK_REALTIME minus ns since `t0`, from the closest of a few paired readings.
fn realtime_offset(t0: Instant) -> i128 {
    let mut best = (Duration::MAX, 0i128);
    for _ in 0..5 {
        let a = Instant::now();
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let gap = a.elapsed();
        if gap < best.0 {
            let mid = a.saturating_duration_since(t0) + gap / 2;
            best = (gap, wall.as_nanos() as i128 - mid.as_nanos() as i128);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_stamp_is_read_on_chatloads_clock_and_kept_within_send_and_read() {
        let t0 = Instant::now();
        let mut l = Latency::new();
        l.sync(t0);
        let offset = l.offset_ns;
        let wall = |ns_since_t0: u64| (offset + ns_since_t0 as i128) as u64;
        // Sent at 1 ms, arrived at 3 ms, read at 10 ms.
        let rx = wall(3_000_000);
        l.record(1_000_000, 10_000_000, rx);
        // Not stamped: arrival is the read.
        l.record(1_000_000, 4_000_000, 0);
        // A stamp outside [send, read] (a clock step) is clamped into it.
        l.record(5_000_000, 6_000_000, wall(9_000_000));
        assert_eq!((l.stamped, l.arrival.len(), l.read.len()), (2, 3, 3));
        let near = |h: &Histogram<u64>, v: u64| h.count_between(v - v / 100, v + v / 100);
        assert_eq!(near(&l.arrival, 2_000_000), 1, "3 ms - 1 ms");
        assert_eq!(near(&l.arrival, 3_000_000), 1, "unstamped: the read");
        assert_eq!(near(&l.arrival, 1_000_000), 1, "clamped to the read");
        assert_eq!(near(&l.read, 9_000_000), 1);
        assert_eq!(near(&l.delay, 7_000_000), 1, "10 ms - 3 ms: chatload's own wait");
        assert_eq!(quantiles_us(&Latency::new().read), [0; 4]);
    }
}
