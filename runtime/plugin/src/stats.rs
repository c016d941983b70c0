//! Per-plugin-version counters and a lock-free latency histogram.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;
use sextant_core::PluginCounts;

/// Quarter-octave buckets from 1 ns to ~4 s.
const BUCKETS: usize = 128;

/// Upper bounds (ns) of the call-time buckets exported to Prometheus (`le`, in seconds
/// there), +Inf besides.
pub const CALL_TIME_BOUNDS_NS: [u64; 12] =
    [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000, 5_000_000];

/// Sampled call times as a Prometheus histogram has them: cumulative counts per bound of
/// [`CALL_TIME_BOUNDS_NS`], the count and the sum. Adds up across versions and services.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallTimes {
    /// Calls at most `CALL_TIME_BOUNDS_NS[i]` long (cumulative).
    pub at_most: [u64; CALL_TIME_BOUNDS_NS.len()],
    /// Calls sampled.
    pub count: u64,
    /// Their total time, ns.
    pub sum_ns: u64,
}

impl CallTimes {
    /// Adds another's samples.
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.at_most.iter_mut().zip(other.at_most) {
            *a += b;
        }
        self.count += other.count;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }
}

/// A histogram of call times with quarter-octave buckets (about ±10% resolution) for
/// quantiles, and the fixed buckets of [`CallTimes`] for export, updated with relaxed atomic
/// adds so any thread can record.
#[derive(Debug)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    /// Per bound of `CALL_TIME_BOUNDS_NS` (not cumulative), +Inf last.
    exported: [AtomicU64; CALL_TIME_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            exported: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

fn bucket(nanos: u64) -> usize {
    if nanos <= 1 {
        return 0;
    }
    let log2 = 63 - u64::from(nanos.leading_zeros());
    // Two bits below the leading one pick the quarter.
    let quarter = if log2 >= 2 { (nanos >> (log2 - 2)) & 3 } else { (nanos << (2 - log2)) & 3 };
    usize::try_from(log2 * 4 + quarter).unwrap_or(BUCKETS - 1).min(BUCKETS - 1)
}

fn bucket_floor(b: usize) -> u64 {
    let (log2, quarter) = ((b / 4) as u64, (b % 4) as u64);
    if log2 >= 2 { (4 + quarter) << (log2 - 2) } else { 1 << log2 }
}

impl Histogram {
    /// Records one call.
    pub fn record(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[bucket(nanos)].fetch_add(1, Relaxed);
        let slot = CALL_TIME_BOUNDS_NS.iter().position(|&b| nanos <= b).unwrap_or(CALL_TIME_BOUNDS_NS.len());
        self.exported[slot].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(nanos, Relaxed);
    }

    /// The samples in the exported buckets.
    #[must_use]
    pub fn call_times(&self) -> CallTimes {
        let mut out = CallTimes { sum_ns: self.sum_ns.load(Relaxed), ..CallTimes::default() };
        let mut seen = 0;
        for (i, c) in self.exported.iter().enumerate() {
            seen += c.load(Relaxed);
            if let Some(at) = out.at_most.get_mut(i) {
                *at = seen;
            }
        }
        out.count = seen;
        out
    }

    /// The q-quantile (0..=1) in nanoseconds (the lower edge of its bucket), or 0 when empty.
    #[must_use]
    pub fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_floor(b);
            }
        }
        bucket_floor(BUCKETS - 1)
    }
}

/// What happened to one plugin version: calls, faults, call times.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls into the plugin (every function).
    pub calls: AtomicU64,
    /// Traps.
    pub traps: AtomicU64,
    /// Deadline hits.
    pub deadlines: AtomicU64,
    /// Memory-cap hits.
    pub memory: AtomicU64,
    /// Contract violations (bad picks, wrong lengths).
    pub contract: AtomicU64,
    /// Picks answered by the native fallback because the plugin failed.
    pub fallbacks: AtomicU64,
    /// Sampled call times.
    pub call_time: Histogram,
}

/// A point-in-time copy of [`Counters`]; also what a version counted in all (the
/// `_total` counters of `/metrics`), added up across services and swaps
/// ([`VersionCounts::add`]).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct VersionCounts {
    /// Calls, faults by cause, fallbacks.
    #[serde(flatten)]
    pub counts: PluginCounts,
    /// Sampled call time p50, ns.
    pub call_p50_ns: u64,
    /// Sampled call time p99, ns.
    pub call_p99_ns: u64,
    /// Sampled call times, for export.
    #[serde(skip)]
    pub call_times: CallTimes,
}

impl VersionCounts {
    /// Adds a version's counters (the quantiles stay those of `self`; the call times add).
    pub fn add(&mut self, c: &Self) {
        self.counts.add(&c.counts);
        self.call_times.add(&c.call_times);
    }

    /// Whether nothing was counted.
    #[must_use]
    pub fn is_zero(&self) -> bool {
        self.counts == PluginCounts::default() && self.call_times.count == 0
    }
}

/// Which plugin version counters add up under: the slot kind, the plugin's name and its
/// sha256 (empty for built-ins). Every service running that version adds to the same totals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct VersionKey {
    /// `balancer`, `health` or `scheduler`.
    pub kind: String,
    /// The plugin record's name, or the built-in's.
    pub plugin: String,
    /// sha256 of the component; empty for a built-in.
    pub sha256: String,
}

impl Counters {
    /// Reads every counter.
    #[must_use]
    pub fn snapshot(&self) -> VersionCounts {
        VersionCounts {
            counts: PluginCounts {
                calls: self.calls.load(Relaxed),
                traps: self.traps.load(Relaxed),
                deadline_hits: self.deadlines.load(Relaxed),
                memory_hits: self.memory.load(Relaxed),
                contract_violations: self.contract.load(Relaxed),
                fallbacks: self.fallbacks.load(Relaxed),
            },
            call_p50_ns: self.call_time.quantile(0.5),
            call_p99_ns: self.call_time.quantile(0.99),
            call_times: self.call_time.call_times(),
        }
    }

    /// Counts a fault by kind.
    pub fn fault(&self, fault: &crate::CallFault) {
        let c = match fault {
            crate::CallFault::Trap(_) => &self.traps,
            crate::CallFault::Deadline => &self.deadlines,
            crate::CallFault::Memory => &self.memory,
            crate::CallFault::Contract(_) | crate::CallFault::Refused(_) => &self.contract,
        };
        c.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_quantiles_land_near_the_value() {
        let mut last = 0;
        for n in 1..100_000u64 {
            let b = bucket(n);
            assert!(b >= last, "bucket({n}) went down");
            assert!(bucket_floor(b) <= n, "floor of bucket({n}) above it");
            last = b;
        }
        let h = Histogram::default();
        for _ in 0..99 {
            h.record(Duration::from_nanos(200));
        }
        h.record(Duration::from_micros(50));
        let p50 = h.quantile(0.5);
        assert!((160..=200).contains(&p50), "{p50}");
        assert!(h.quantile(1.0) > 40_000);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }

    #[test]
    fn exported_call_times_are_cumulative_per_bound_and_add_up() {
        let h = Histogram::default();
        for nanos in [500, 1_000, 1_500, 40_000, 10_000_000] {
            h.record(Duration::from_nanos(nanos));
        }
        let t = h.call_times();
        assert_eq!(t.count, 5);
        assert_eq!(t.sum_ns, 500 + 1_000 + 1_500 + 40_000 + 10_000_000);
        // ≤1 µs: 2; ≤2 µs: 3; ≤50 µs: 4; the 10 ms call only in +Inf (count).
        assert_eq!(t.at_most, [2, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4]);
        let mut total = VersionCounts::default();
        total.add(&VersionCounts { call_times: t, ..VersionCounts::default() });
        total.add(&VersionCounts { call_times: t, ..VersionCounts::default() });
        assert_eq!((total.call_times.count, total.call_times.at_most[0]), (10, 4));
    }
}
