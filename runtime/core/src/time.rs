//! Monotonic time as a plain number, injected by the caller.
//!
//! The core never reads a clock. Runtime code converts its monotonic clock (for example
//! `tokio::time::Instant` relative to a start instant) into [`Millis`]; tests pass numbers.

use std::time::Duration;

/// Milliseconds on a monotonic clock whose origin the caller chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + d`, saturating.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(ms))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    #[must_use]
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}
