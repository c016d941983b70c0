//! A rollout on one service of a router: the candidate its balancer slot runs beside the
//! stable version, and the outcome windows of both versions since the rollout's step began,
//! which the gateway reports to the control plane for the judge.
//!
//! Every request a guard finishes while a trial runs is counted under the version that
//! picked it (the candidate's id, or any other: the stable version): requests, 5xx and 4xx
//! answers, transport failures (timeouts, resets), fallbacks and latency in the mergeable
//! histogram of [`Latencies`](sextant_core::rollout::Latencies), and how many were retries
//! (a retry is a request of its own, counted under the version that picked it). A new step
//! starts new windows.

use std::time::Duration;

use parking_lot::Mutex;
use sextant_core::rollout::VersionWindow;

use crate::outcome::Outcome;

/// The two versions' windows of one service's running trial.
#[derive(Debug)]
pub(crate) struct TrialWindows {
    /// The candidate's version id in the balancer slot.
    pub(crate) candidate: u64,
    /// The rollout step the windows are about.
    pub(crate) step: usize,
    /// `(stable, candidate)`.
    windows: Mutex<(VersionWindow, VersionWindow)>,
}

impl TrialWindows {
    pub(crate) fn new(candidate: u64, step: usize) -> Self {
        Self { candidate, step, windows: Mutex::new(Default::default()) }
    }

    /// Counts one finished request picked by `version` (`retry`: not its request's first
    /// attempt).
    pub(crate) fn record(&self, version: u64, outcome: &Outcome, latency: Duration, fallback: bool, retry: bool) {
        let mut w = self.windows.lock();
        let w = if version == self.candidate { &mut w.1 } else { &mut w.0 };
        w.requests += 1;
        match outcome {
            Outcome::Http { status: 500..=599, .. } => w.status_5xx += 1,
            Outcome::Http { status: 400..=499, .. } => w.status_4xx += 1,
            Outcome::Timeout | Outcome::Failed(_) => w.transport_failures += 1,
            Outcome::Http { .. } | Outcome::Success => {}
        }
        w.fallbacks += u64::from(fallback);
        w.retries += u64::from(retry);
        w.latency.record_us(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
    }

    /// The windows so far: `(stable, candidate)`.
    pub(crate) fn windows(&self) -> (VersionWindow, VersionWindow) {
        self.windows.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_under_the_version_that_picked() {
        let t = TrialWindows::new(7, 1);
        t.record(7, &Outcome::http(200), Duration::from_millis(2), false, false);
        t.record(7, &Outcome::http(503), Duration::from_millis(2), true, false);
        t.record(3, &Outcome::http(404), Duration::from_millis(1), false, false);
        t.record(3, &Outcome::Timeout, Duration::from_secs(1), false, false);
        t.record(3, &Outcome::Failed("reset".into()), Duration::from_millis(1), false, true);
        let (stable, candidate) = t.windows();
        assert_eq!((candidate.requests, candidate.status_5xx, candidate.fallbacks), (2, 1, 1));
        assert_eq!((stable.requests, stable.status_4xx, stable.transport_failures, stable.errors()), (3, 1, 2, 2));
        assert_eq!((stable.retries, candidate.retries), (1, 0));
        assert_eq!(candidate.latency.count(), 2);
    }
}
