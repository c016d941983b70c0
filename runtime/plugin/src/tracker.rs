//! Live load per endpoint: in-flight requests, peak EWMA latency, recent errors and the
//! backend's last load report, kept by instance id across registry changes; the probes
//! plugins asked for, until their host takes them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use sextant_builtins::Endpoint;
use sextant_builtins::report::{BackendReport, LoadReport};

/// How long failures count as "recent".
const ERROR_WINDOW: Duration = Duration::from_secs(10);

/// Probes asked for and not yet taken by the host, per service: more asks are dropped (a
/// plugin cannot make its host probe without bound).
pub const MAX_PENDING_PROBES: usize = 64;

/// One endpoint's live load. Kept by instance id across snapshots.
#[derive(Debug, Default)]
pub struct EndpointLoad {
    in_flight: AtomicU32,
    ewma: AtomicU64,
    stamp: AtomicU64,
    errors: AtomicU32,
    errors_since: AtomicU64,
    /// The backend's last report and when it arrived (the tracker's nanoseconds).
    report: ArcSwapOption<(LoadReport, u64)>,
}

impl EndpointLoad {
    /// Requests not completed yet.
    #[must_use]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }
    /// Peak EWMA latency in ns (0: unmeasured).
    #[must_use]
    pub fn latency_ewma(&self) -> u64 {
        self.ewma.load(Relaxed)
    }
}

/// Where a tracker's time comes from: the system's clock, or its owner's (a router's
/// injected clock, which a simulation moves).
enum Clock {
    System,
    Owner(Arc<dyn Fn() -> Instant + Send + Sync>),
}

impl Clock {
    fn now(&self) -> Instant {
        match self {
            Self::System => Instant::now(),
            Self::Owner(now) => now(),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::System => "System",
            Self::Owner(_) => "Owner",
        })
    }
}

/// The load cells of one service, by instance id, and the clock and decay they use.
#[derive(Debug)]
pub struct LoadTracker {
    clock: Clock,
    /// The clock's reading when the tracker was made: the tracker's times count from it.
    base: Instant,
    decay_ns: f64,
    total_in_flight: AtomicU64,
    cells: Mutex<HashMap<String, Arc<EndpointLoad>>>,
    /// Endpoints (instance ids) plugins asked to probe, oldest first, each once.
    probes: Mutex<Vec<String>>,
}

impl LoadTracker {
    /// A tracker whose EWMA forgets with this time constant (Finagle and Linkerd use 10 s),
    /// on the system's clock.
    #[must_use]
    pub fn new(decay: Duration) -> Self {
        Self::with_clock(Clock::System, decay)
    }

    /// A tracker that reads the time from `now` (a router's clock): latencies measured from a
    /// pick and the EWMA's decay follow it, so a simulation that moves the clock runs the
    /// same arithmetic in virtual time, deterministically.
    #[must_use]
    pub fn on_clock(decay: Duration, now: Arc<dyn Fn() -> Instant + Send + Sync>) -> Self {
        Self::with_clock(Clock::Owner(now), decay)
    }

    fn with_clock(clock: Clock, decay: Duration) -> Self {
        Self {
            base: clock.now(),
            clock,
            decay_ns: decay.as_secs_f64().max(1e-3) * 1e9,
            total_in_flight: AtomicU64::new(0),
            cells: Mutex::new(HashMap::new()),
            probes: Mutex::new(Vec::new()),
        }
    }

    /// Now, on the tracker's clock.
    pub(crate) fn instant(&self) -> Instant {
        self.clock.now()
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.instant().saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Requests in flight over the whole service.
    #[must_use]
    pub fn total_in_flight(&self) -> u64 {
        self.total_in_flight.load(Relaxed)
    }

    /// Keeps `report` as `cell`'s last one, arrived now.
    pub fn record_report(&self, cell: &EndpointLoad, report: LoadReport) {
        cell.report.store(Some(Arc::new((report, self.now_ns()))));
    }

    /// Keeps `report` as endpoint `id`'s last one (a probe's answer); false when the tracker
    /// does not follow `id` (it left).
    pub fn record_report_for(&self, id: &str, report: LoadReport) -> bool {
        let Some(cell) = self.cells.lock().get(id).cloned() else { return false };
        self.record_report(&cell, report);
        true
    }

    /// `cell`'s last report and its age in milliseconds.
    #[must_use]
    pub fn report(&self, cell: &EndpointLoad) -> Option<(Arc<(LoadReport, u64)>, u64)> {
        let report = cell.report.load_full()?;
        let age = self.now_ns().saturating_sub(report.1) / 1_000_000;
        Some((report, age))
    }

    /// Endpoint `id`'s last report and its age in milliseconds, while the tracker follows it.
    #[must_use]
    pub fn report_of(&self, id: &str) -> Option<(Arc<(LoadReport, u64)>, u64)> {
        let cell = self.cells.lock().get(id).cloned()?;
        self.report(&cell)
    }

    /// What a plugin reads of `cell`'s last report.
    pub(crate) fn backend_report(&self, cell: &EndpointLoad) -> Option<BackendReport> {
        let (report, age) = self.report(cell)?;
        Some(report.0.to_backend(age))
    }

    /// A plugin asks for a probe of endpoint `id`: kept once until the host takes it, and
    /// dropped beyond [`MAX_PENDING_PROBES`].
    pub(crate) fn ask_probe(&self, id: &str) {
        let mut probes = self.probes.lock();
        if probes.len() < MAX_PENDING_PROBES && !probes.iter().any(|p| p == id) {
            probes.push(id.to_owned());
        }
    }

    /// The probes plugins asked for since the last call (instance ids, oldest first).
    #[must_use]
    pub fn take_probes(&self) -> Vec<String> {
        let mut probes = self.probes.lock();
        if probes.is_empty() { Vec::new() } else { std::mem::take(&mut *probes) }
    }

    pub(crate) fn cells_for(&self, endpoints: &[Endpoint]) -> Vec<Arc<EndpointLoad>> {
        let mut cells = self.cells.lock();
        let fresh: Vec<Arc<EndpointLoad>> =
            endpoints.iter().map(|e| Arc::clone(cells.entry(e.id.clone()).or_default())).collect();
        // Forget endpoints that left and have nothing in flight.
        cells.retain(|id, cell| endpoints.iter().any(|e| &e.id == id) || cell.in_flight() > 0);
        fresh
    }

    /// Marks a request as sent to `cell`; the returned guard completes it.
    #[must_use]
    pub fn start(self: &Arc<Self>, cell: Arc<EndpointLoad>) -> InFlight {
        cell.in_flight.fetch_add(1, Relaxed);
        self.total_in_flight.fetch_add(1, Relaxed);
        InFlight { tracker: Arc::clone(self), cell, started: self.instant(), done: false }
    }

    fn finish(&self, cell: &EndpointLoad, latency: Duration, failed: bool) {
        cell.in_flight.fetch_sub(1, Relaxed);
        self.total_in_flight.fetch_sub(1, Relaxed);
        let now = self.now_ns();
        let rtt = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let prev = cell.ewma.load(Relaxed);
        let elapsed = now.saturating_sub(cell.stamp.swap(now, Relaxed));
        let next = if rtt > prev || prev == 0 {
            rtt // peak-sensitive: a slower response is taken at once
        } else {
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            {
                let w = (-(elapsed as f64) / self.decay_ns).exp();
                (prev as f64 * w + rtt as f64 * (1.0 - w)) as u64
            }
        };
        cell.ewma.store(next, Relaxed);
        if failed {
            let window = u64::try_from(ERROR_WINDOW.as_nanos()).unwrap_or(u64::MAX);
            if now.saturating_sub(cell.errors_since.load(Relaxed)) > window {
                cell.errors_since.store(now, Relaxed);
                cell.errors.store(0, Relaxed);
            }
            cell.errors.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn recent_errors(&self, cell: &EndpointLoad) -> u32 {
        // No failure recorded: no need to read the clock (the common case, on every pick).
        if cell.errors.load(Relaxed) == 0 {
            return 0;
        }
        let window = u64::try_from(ERROR_WINDOW.as_nanos()).unwrap_or(u64::MAX);
        if self.now_ns().saturating_sub(cell.errors_since.load(Relaxed)) > window {
            0
        } else {
            cell.errors.load(Relaxed)
        }
    }
}

/// A request in flight to one endpoint. Complete it with [`InFlight::finish`]; dropping it
/// unfinished counts as a failure of unknown latency (a cancelled request).
#[derive(Debug)]
pub struct InFlight {
    tracker: Arc<LoadTracker>,
    cell: Arc<EndpointLoad>,
    started: Instant,
    done: bool,
}

impl InFlight {
    /// Records the outcome: latency since the pick, and whether it failed.
    pub fn finish(mut self, failed: bool) {
        self.done = true;
        let latency = self.tracker.instant().saturating_duration_since(self.started);
        self.tracker.finish(&self.cell, latency, failed);
    }

    /// Keeps the load report the endpoint sent with this request's response.
    pub fn report(&self, report: LoadReport) {
        self.tracker.record_report(&self.cell, report);
    }

    /// Records the outcome with a latency measured elsewhere (by the caller, on its clock).
    pub fn finish_after(mut self, latency: Duration, failed: bool) {
        self.done = true;
        self.tracker.finish(&self.cell, latency, failed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            let latency = self.tracker.instant().saturating_duration_since(self.started);
            self.tracker.finish(&self.cell, latency, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracker_on_its_owners_clock_measures_and_decays_in_that_time() {
        let base = Instant::now();
        let offset = Arc::new(AtomicU64::new(0));
        let now = {
            let offset = Arc::clone(&offset);
            Arc::new(move || base + Duration::from_nanos(offset.load(Relaxed)))
        };
        let tracker = Arc::new(LoadTracker::on_clock(Duration::from_secs(10), now));
        let cell = Arc::new(EndpointLoad::default());
        // 40 ms pass on the owner's clock (none on the system's): the latency is 40 ms.
        let in_flight = tracker.start(Arc::clone(&cell));
        assert_eq!(cell.in_flight(), 1);
        offset.store(40_000_000, Relaxed);
        in_flight.finish(false);
        assert_eq!(cell.latency_ewma(), 40_000_000);
        assert_eq!(cell.in_flight(), 0);
        // A faster answer 10 s later (one time constant) moves the EWMA by 1 - 1/e toward it.
        offset.store(10_040_000_000, Relaxed);
        tracker.start(Arc::clone(&cell)).finish_after(Duration::from_millis(10), true);
        let expected = 40e6 / std::f64::consts::E + 10e6 * (1.0 - 1.0 / std::f64::consts::E);
        #[allow(clippy::cast_precision_loss)]
        let got = cell.latency_ewma() as f64;
        assert!((got - expected).abs() < 1e3, "{got} vs {expected}");
        assert_eq!(tracker.recent_errors(&cell), 1);
        // Ten seconds more on the owner's clock and the failure is no longer recent.
        offset.store(20_100_000_000, Relaxed);
        assert_eq!(tracker.recent_errors(&cell), 0);
    }
}
