//! The time a router runs on: every decision of its per-service state (ejections, breakers,
//! retry budgets, rate limits, statistics windows, latencies) reads it here, never the
//! system clock directly, so a test or a simulator can drive a real router through minutes
//! of its life without waiting ([`ManualClock`], [`RouterBuilder::clock`](crate::RouterBuilder::clock)).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Where a router reads the time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now.
    fn now(&self) -> Instant;
}

/// The system's monotonic clock (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told ([`ManualClock::advance`]); clones share it. A router on
/// it does its time-driven work when [`Router::tick`](crate::Router::tick) is called.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Instant>>);

impl ManualClock {
    /// A clock standing at the system's now.
    #[must_use]
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Instant::now())))
    }

    /// Moves the clock on by `by`.
    pub fn advance(&self, by: Duration) {
        *self.0.lock() += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock()
    }
}
