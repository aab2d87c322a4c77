//! Churn mode: extra clients connect at `--churn` per second during the window, stay
//! `--churn-hold` after their welcome, and close; they are not counted as receivers.

use super::{Engine, Role};
use crate::net::io_reason;
use std::time::Instant;

impl Engine<'_> {
    pub(super) fn churn_due(&self) -> u64 {
        self.window_start_ns + (self.churn_seq as f64 * 1e9 / self.args.churn) as u64
    }

    pub(super) fn start_churn(&mut self) {
        let now_ns = self.ns(Instant::now());
        let cap = ((self.args.churn * (self.args.churn_hold.as_secs_f64() + 10.0)) as usize).max(100);
        while self.churn_due() <= now_ns && self.churn_due() < self.window_end_ns {
            self.churn_seq += 1;
            if self.churn_open >= cap {
                self.counts.churn_skipped += 1;
                continue;
            }
            self.counts.churn_started += 1;
            match self.open_conn(Role::Churn) {
                Ok(_) => self.churn_open += 1,
                Err(e) => *self.counts.connect_errors.entry(io_reason(&e)).or_default() += 1,
            }
        }
    }
}
