//! Resilience primitives, time passed in so they test without sleeping: a per-endpoint
//! circuit breaker, a retry budget, exponential backoff with jitter, and a token bucket.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Circuit breaker settings (per endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (0: never opens).
    pub failures: u32,
    /// How long it stays open the first time; each re-open without a success in between
    /// doubles it, up to `max_open`.
    #[serde(with = "millis")]
    pub open: Duration,
    /// Longest open period.
    #[serde(with = "millis")]
    pub max_open: Duration,
    /// Requests in flight to one endpoint beyond which it takes no more (0: no limit).
    pub max_in_flight: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failures: 5, open: Duration::from_secs(5), max_open: Duration::from_secs(60), max_in_flight: 0 }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Traffic flows.
    Closed,
    /// No traffic until the instant.
    Open,
    /// One trial request at a time decides.
    HalfOpen,
}

#[derive(Debug)]
struct BreakerInner {
    state: BreakerState,
    consecutive: u32,
    opens: u32,
    until: Option<Instant>,
    trial: bool,
}

/// A per-endpoint circuit breaker: opens after consecutive failures, lets one trial request
/// through once the open period ends, closes on its success and reopens (for twice as long)
/// on its failure.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<BreakerInner>,
    /// `state` as a number (0 closed, 1 open, 2 half-open), read on the pick path without the lock.
    fast: AtomicU32,
    /// Whether failures are being counted (`consecutive > 0`): successes on a closed breaker
    /// with nothing counted, the common case, take no lock.
    counting: AtomicBool,
}

impl Breaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                consecutive: 0,
                opens: 0,
                until: None,
                trial: false,
            }),
            fast: AtomicU32::new(0),
            counting: AtomicBool::new(false),
        }
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> BreakerState {
        match self.fast.load(Relaxed) {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// When an open breaker turns half-open.
    #[must_use]
    pub fn open_until(&self) -> Option<Instant> {
        let inner = self.inner.lock();
        (inner.state == BreakerState::Open).then_some(inner.until).flatten()
    }

    fn set(&self, inner: &mut BreakerInner, state: BreakerState) {
        inner.state = state;
        self.fast.store(
            match state {
                BreakerState::Closed => 0,
                BreakerState::Open => 1,
                BreakerState::HalfOpen => 2,
            },
            Relaxed,
        );
    }

    /// Moves an open breaker whose time is up to half-open; true when it did.
    pub fn tick(&self, now: Instant) -> bool {
        if self.state() != BreakerState::Open {
            return false;
        }
        let mut inner = self.inner.lock();
        if inner.state == BreakerState::Open && inner.until.is_some_and(|u| now >= u) {
            inner.trial = false;
            self.set(&mut inner, BreakerState::HalfOpen);
            return true;
        }
        false
    }

    /// Whether a request may go to the endpoint now, given its requests in flight. In
    /// half-open, the first caller gets the trial and others are refused until it ends.
    #[must_use]
    pub fn admit(&self, in_flight: u32) -> Admission {
        let limit = self.config.max_in_flight;
        match self.state() {
            BreakerState::Closed if limit == 0 || in_flight < limit => Admission::Admitted,
            BreakerState::Closed => Admission::Full,
            BreakerState::Open => Admission::Open,
            BreakerState::HalfOpen => {
                let mut inner = self.inner.lock();
                match inner.state {
                    BreakerState::HalfOpen if !inner.trial => {
                        inner.trial = true;
                        Admission::Trial
                    }
                    BreakerState::Closed => Admission::Admitted,
                    _ => Admission::Open,
                }
            }
        }
    }

    /// Records how a request ended; true when the state changed (the route is rebuilt).
    pub fn record(&self, success: bool, trial: bool, now: Instant) -> bool {
        if self.config.failures == 0 {
            return false;
        }
        if success && !trial && self.state() == BreakerState::Closed && !self.counting.load(Relaxed) {
            return false;
        }
        let mut inner = self.inner.lock();
        if trial {
            inner.trial = false;
        }
        if success {
            inner.consecutive = 0;
            self.counting.store(false, Relaxed);
            if inner.state == BreakerState::HalfOpen && trial {
                inner.opens = 0;
                self.set(&mut inner, BreakerState::Closed);
                return true;
            }
            return false;
        }
        inner.consecutive = inner.consecutive.saturating_add(1);
        self.counting.store(true, Relaxed);
        let reopen = inner.state == BreakerState::HalfOpen && trial;
        if reopen || (inner.state == BreakerState::Closed && inner.consecutive >= self.config.failures) {
            let factor = 1u32 << inner.opens.min(16);
            let open = self.config.open.saturating_mul(factor).min(self.config.max_open);
            inner.opens = inner.opens.saturating_add(1);
            inner.until = Some(now + open);
            inner.consecutive = 0;
            self.counting.store(false, Relaxed);
            self.set(&mut inner, BreakerState::Open);
            return true;
        }
        false
    }

    /// A trial that ended without an outcome (cancelled) gives the trial back.
    pub fn release_trial(&self) {
        self.inner.lock().trial = false;
    }
}

/// A breaker's answer to [`Breaker::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go.
    Admitted,
    /// Go: this is the half-open trial.
    Trial,
    /// The endpoint is at `max_in_flight`.
    Full,
    /// The breaker is open (or another trial is running).
    Open,
}

impl Admission {
    /// Whether the request may go.
    #[must_use]
    pub fn admitted(self) -> bool {
        matches!(self, Self::Admitted | Self::Trial)
    }
}

/// Retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per request, the first included (1: no retries).
    pub attempts: u32,
    /// Retries may add at most this share of the requests (linkerd's and Finagle's budget).
    pub budget_ratio: f64,
    /// Retries allowed per second regardless of the ratio, so quiet services can retry.
    pub min_per_second: u32,
    /// The window the budget counts over.
    #[serde(with = "millis")]
    pub window: Duration,
    /// First backoff; each further retry doubles it, up to `max_backoff`, with full jitter.
    #[serde(with = "millis")]
    pub backoff: Duration,
    /// Longest backoff.
    #[serde(with = "millis")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            budget_ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
            backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(200),
        }
    }
}

/// Counts requests and retries per second over a window; a retry is allowed while retries
/// stay under `min_per_second × window + ratio × requests`. Lock-free: one slot per second of
/// the window, reused in turn (counting is on the request path). Concurrent callers at a
/// second's boundary or on the last retry of the budget may miscount by one each; a budget
/// needs no more.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryConfig,
    slots: Box<[Second]>,
    origin: Instant,
}

/// One second of a [`RetryBudget`]'s window.
#[derive(Debug)]
struct Second {
    /// Which second (since the budget's origin) the counts are of; `u64::MAX`: none yet.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    /// An empty budget.
    #[must_use]
    pub fn new(config: RetryConfig, origin: Instant) -> Self {
        let len = usize::try_from(config.window.as_secs().max(1)).unwrap_or(usize::MAX).min(3600);
        let slots = (0..len)
            .map(|_| Second {
                second: AtomicU64::new(u64::MAX),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
            })
            .collect();
        Self { config, slots, origin }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// The slot of `second`, emptied first when it still counts an older second.
    fn slot(&self, second: u64) -> &Second {
        let len = self.slots.len() as u64;
        let slot = &self.slots[usize::try_from(second % len).unwrap_or(0)];
        let seen = slot.second.load(Acquire);
        if seen != second && slot.second.compare_exchange(seen, second, AcqRel, Acquire).is_ok() {
            slot.requests.store(0, Relaxed);
            slot.retries.store(0, Relaxed);
        }
        slot
    }

    /// Counts a request (its first attempt).
    pub fn deposit(&self, now: Instant) {
        self.slot(self.second(now)).requests.fetch_add(1, Relaxed);
    }

    /// Takes a retry from the budget; false when it is spent.
    pub fn withdraw(&self, now: Instant) -> bool {
        let second = self.second(now);
        let window = self.slots.len() as u64;
        let current = self.slot(second);
        let (requests, retries) = self
            .slots
            .iter()
            .filter(|s| s.second.load(Acquire).checked_add(window).is_some_and(|end| end > second))
            .fold((0, 0), |(q, r), s| (q + s.requests.load(Relaxed), r + s.retries.load(Relaxed)));
        let floor = u64::from(self.config.min_per_second) * window;
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let allowed = floor + (requests as f64 * self.config.budget_ratio.max(0.0)) as u64;
        if retries >= allowed {
            return false;
        }
        current.retries.fetch_add(1, Relaxed);
        true
    }

    /// The backoff before retry number `retry` (1 for the first retry): a uniform draw in
    /// `0..=min(max_backoff, backoff × 2^(retry-1))` ("full jitter").
    #[must_use]
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap =
            self.config.backoff.saturating_mul(1u32 << retry.saturating_sub(1).min(16)).min(self.config.max_backoff);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    /// The configured attempts.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.config.attempts.max(1)
    }
}

/// Per-service rate limit settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Bucket size: requests that may go at once after a quiet period.
    pub burst: u32,
}

/// A token bucket.
#[derive(Debug)]
pub struct TokenBucket {
    limit: RateLimit,
    /// (tokens, last refill).
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    #[must_use]
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        Self { limit, state: Mutex::new((f64::from(limit.burst), now)) }
    }

    /// Takes a token; false when there is none.
    pub fn try_acquire(&self, now: Instant) -> bool {
        let mut s = self.state.lock();
        let elapsed = now.saturating_duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.limit.per_second).min(f64::from(self.limit.burst.max(1)));
        s.1 = s.1.max(now);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Durations as integer milliseconds in configuration files.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let t0 = Instant::now();
        let config = BreakerConfig {
            failures: 3,
            open: Duration::from_secs(1),
            max_open: Duration::from_secs(3),
            ..BreakerConfig::default()
        };
        let b = Breaker::new(config);
        assert!(!b.record(false, false, t0));
        assert!(!b.record(false, false, t0));
        assert!(b.record(false, false, t0), "third failure opens");
        assert_eq!(b.admit(0), Admission::Open);
        assert!(!b.tick(t0 + Duration::from_millis(999)));
        assert!(b.tick(t0 + Duration::from_secs(1)));
        assert_eq!(b.admit(0), Admission::Trial);
        assert_eq!(b.admit(0), Admission::Open, "one trial at a time");
        // The trial fails: open again, twice as long.
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.record(false, true, t1));
        assert_eq!(b.open_until(), Some(t1 + Duration::from_secs(2)));
        assert!(b.tick(t1 + Duration::from_secs(2)));
        assert_eq!(b.admit(0), Admission::Trial);
        assert!(b.record(true, true, t1 + Duration::from_secs(2)), "a successful trial closes");
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(5), Admission::Admitted);
        // A success in between resets the count.
        b.record(false, false, t1);
        b.record(false, false, t1);
        b.record(true, false, t1);
        assert!(!b.record(false, false, t1));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn breaker_limits_in_flight_and_can_be_off() {
        let b = Breaker::new(BreakerConfig { max_in_flight: 2, ..BreakerConfig::default() });
        assert_eq!(b.admit(1), Admission::Admitted);
        assert_eq!(b.admit(2), Admission::Full);
        let off = Breaker::new(BreakerConfig { failures: 0, ..BreakerConfig::default() });
        for _ in 0..100 {
            assert!(!off.record(false, false, Instant::now()));
        }
        assert_eq!(off.admit(1000), Admission::Admitted);
    }

    #[test]
    fn retry_budget_allows_the_ratio_plus_the_floor() {
        let t0 = Instant::now();
        let config = RetryConfig {
            budget_ratio: 0.1,
            min_per_second: 1,
            window: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        let budget = RetryBudget::new(config, t0);
        for _ in 0..100 {
            budget.deposit(t0);
        }
        // floor 1/s × 10 s + 10% of 100 = 20 retries.
        let granted = (0..50).filter(|_| budget.withdraw(t0)).count();
        assert_eq!(granted, 20);
        // Eleven seconds later the window has moved on: the floor is available again.
        let later = t0 + Duration::from_secs(11);
        let granted = (0..50).filter(|_| budget.withdraw(later)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn backoff_grows_and_is_capped_with_jitter() {
        let config = RetryConfig {
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            ..RetryConfig::default()
        };
        let budget = RetryBudget::new(config, Instant::now());
        for retry in 1..10 {
            let cap = Duration::from_millis(10 * (1 << (retry - 1).min(2)));
            let draws: Vec<Duration> = (0..200).map(|_| budget.backoff(retry)).collect();
            assert!(draws.iter().all(|d| *d <= cap), "retry {retry}: {draws:?}");
            assert!(draws.iter().any(|d| *d > cap / 2), "retry {retry}: jitter spans the range");
            assert!(draws.iter().any(|d| *d < cap / 2), "retry {retry}: jitter spans the range");
        }
    }

    #[test]
    fn token_bucket_refills_at_the_rate() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(RateLimit { per_second: 10.0, burst: 5 }, t0);
        assert_eq!((0..20).filter(|_| bucket.try_acquire(t0)).count(), 5, "the burst");
        assert!(!bucket.try_acquire(t0 + Duration::from_millis(50)));
        assert!(bucket.try_acquire(t0 + Duration::from_millis(100)), "one token per 100 ms");
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!((0..20).filter(|_| bucket.try_acquire(t1)).count(), 5, "never more than the burst");
    }
}
