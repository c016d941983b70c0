//! One statistics window of one endpoint, as a scheduler reads it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use sextant_builtins::EndpointStats;

use crate::Histogram;

/// The class of a request's outcome, as a window counts it (the gateway's `Outcome` reduced
/// to what a scheduler reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeClass {
    /// Answered.
    Ok,
    /// A failure: 5xx, a timeout, a broken connection.
    Failed,
    /// An overload signal (429, or 503 with `Retry-After`), with its `Retry-After`.
    Overloaded {
        /// The `Retry-After` the endpoint asked for, when it gave one.
        retry_after: Option<Duration>,
    },
}

/// The former name of [`OutcomeClass`].
#[deprecated(note = "renamed `OutcomeClass`: \"outcome\" is how one request ended, in every layer")]
pub type Ended = OutcomeClass;

/// Requests to one endpoint over one statistics window: counts, overload signals, the longest
/// `Retry-After`, a latency histogram (quarter-octave buckets, about ±10%). Recorded from any
/// thread without locks; [`StatsWindow::close`] turns it into the [`EndpointStats`] a
/// scheduler's `schedule` reads. The gateway's router and the strategy simulator both count
/// through it, so a scheduler sees the same numbers in a benchmark as in production.
#[derive(Debug, Default)]
pub struct StatsWindow {
    requests: AtomicU64,
    errors: AtomicU64,
    overloaded: AtomicU64,
    retry_after_ms: AtomicU64,
    latency: Histogram,
}

impl StatsWindow {
    /// Counts one request that took `latency` and whose outcome is of `class`.
    pub fn record(&self, latency: Duration, class: OutcomeClass) {
        self.requests.fetch_add(1, Relaxed);
        self.latency.record(latency);
        match class {
            OutcomeClass::Ok => {}
            OutcomeClass::Failed => {
                self.errors.fetch_add(1, Relaxed);
            }
            OutcomeClass::Overloaded { retry_after } => {
                self.overloaded.fetch_add(1, Relaxed);
                if let Some(after) = retry_after {
                    self.retry_after_ms.fetch_max(u64::try_from(after.as_millis()).unwrap_or(u64::MAX), Relaxed);
                }
            }
        }
    }

    /// What the window saw, for a window `elapsed` long (rates are per second of it) of an
    /// endpoint that joined `age` ago.
    #[must_use]
    pub fn close(&self, elapsed: Duration, age: Duration) -> EndpointStats {
        let requests = self.requests.load(Relaxed);
        let retry_after = self.retry_after_ms.load(Relaxed);
        #[allow(clippy::cast_precision_loss)]
        let rps = requests as f64 / elapsed.as_secs_f64().max(1e-3);
        EndpointStats {
            rps,
            latency_p50: self.latency.quantile(0.5),
            latency_p99: self.latency.quantile(0.99),
            requests,
            errors: self.errors.load(Relaxed),
            overloaded: self.overloaded.load(Relaxed),
            retry_after_ms: (retry_after > 0).then_some(retry_after),
            age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_what_a_scheduler_reads() {
        let w = StatsWindow::default();
        for ms in 1..=100 {
            w.record(Duration::from_millis(ms), OutcomeClass::Ok);
        }
        w.record(Duration::from_millis(5), OutcomeClass::Failed);
        w.record(Duration::from_millis(5), OutcomeClass::Overloaded { retry_after: Some(Duration::from_secs(2)) });
        w.record(Duration::from_millis(5), OutcomeClass::Overloaded { retry_after: Some(Duration::from_millis(500)) });
        let s = w.close(Duration::from_millis(500), Duration::from_secs(3));
        assert_eq!((s.requests, s.errors, s.overloaded), (103, 1, 2));
        assert!((s.rps - 206.0).abs() < 1e-9, "per second of the window: {}", s.rps);
        assert_eq!(s.retry_after_ms, Some(2000), "the longest Retry-After");
        assert_eq!(s.age_ms, 3000);
        // Quarter-octave buckets: within about 20% below the exact quantile.
        let (p50, p99) = (s.latency_p50 as f64 / 1e6, s.latency_p99 as f64 / 1e6);
        assert!((40.0..=50.0).contains(&p50), "p50 {p50} ms");
        assert!((80.0..=99.0).contains(&p99), "p99 {p99} ms");
        let empty = StatsWindow::default().close(Duration::from_secs(1), Duration::ZERO);
        assert_eq!((empty.requests, empty.latency_p50, empty.retry_after_ms), (0, 0, None));
    }
}
