//! Live load per endpoint (in-flight, peak EWMA latency, recent errors) and the route
//! snapshot a slot serves: the endpoint list in both the plain model and the WIT records,
//! plus the load cells, all built once per registry change.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sextant_builtins::{Endpoint, EndpointState, Snapshot};
use sextant_core::{Instance, ServiceSnapshot};

use crate::bindings::v1::balancer::sextant::plugin::types as wit;

/// How long failures count as "recent".
const ERROR_WINDOW: Duration = Duration::from_secs(10);

/// One endpoint's live load. Kept by instance id across snapshots.
#[derive(Debug, Default)]
pub struct EndpointLoad {
    in_flight: AtomicU32,
    ewma: AtomicU64,
    stamp: AtomicU64,
    errors: AtomicU32,
    errors_since: AtomicU64,
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

/// Where a tracker's time comes from.
#[derive(Debug)]
enum Clock {
    /// Wall time since this instant.
    Wall(Instant),
    /// Set by the owner (simulations): nanoseconds.
    Manual(AtomicU64),
}

/// The load cells of one service, by instance id, and the clock and decay they use.
#[derive(Debug)]
pub struct LoadTracker {
    clock: Clock,
    decay_ns: f64,
    total_in_flight: AtomicU64,
    cells: Mutex<HashMap<String, Arc<EndpointLoad>>>,
}

impl LoadTracker {
    /// A tracker whose EWMA forgets with this time constant (Finagle and Linkerd use 10 s).
    #[must_use]
    pub fn new(decay: Duration) -> Self {
        Self::with_clock(Clock::Wall(Instant::now()), decay)
    }

    /// A tracker on a clock its owner sets ([`LoadTracker::set_now`]), starting at 0: a
    /// simulation runs the same EWMA arithmetic in virtual time, deterministically.
    #[must_use]
    pub fn manual(decay: Duration) -> Self {
        Self::with_clock(Clock::Manual(AtomicU64::new(0)), decay)
    }

    fn with_clock(clock: Clock, decay: Duration) -> Self {
        Self {
            clock,
            decay_ns: decay.as_secs_f64().max(1e-3) * 1e9,
            total_in_flight: AtomicU64::new(0),
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// Moves a manual clock to `ns` (no effect on a wall clock).
    pub fn set_now(&self, ns: u64) {
        if let Clock::Manual(now) = &self.clock {
            now.store(ns, Relaxed);
        }
    }

    fn now_ns(&self) -> u64 {
        match &self.clock {
            Clock::Wall(base) => u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX),
            Clock::Manual(now) => now.load(Relaxed),
        }
    }

    /// Requests in flight over the whole service.
    #[must_use]
    pub fn total_in_flight(&self) -> u64 {
        self.total_in_flight.load(Relaxed)
    }

    fn cells_for(&self, endpoints: &[Endpoint]) -> Vec<Arc<EndpointLoad>> {
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
        InFlight { tracker: Arc::clone(self), cell, started: Instant::now(), done: false }
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

    fn recent_errors(&self, cell: &EndpointLoad) -> u32 {
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
        self.tracker.finish(&self.cell, self.started.elapsed(), failed);
    }

    /// Records the outcome with a latency measured elsewhere (a simulation's virtual time).
    pub fn finish_after(mut self, latency: Duration, failed: bool) {
        self.done = true;
        self.tracker.finish(&self.cell, latency, failed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.tracker.finish(&self.cell, self.started.elapsed(), true);
        }
    }
}

/// What a slot publishes to its workers between two registry changes: the endpoints (plain
/// for native policies, as WIT records for wasm ones), their load cells, and the targets a
/// pick hands back ([`BalancerSlot::set_snapshot_with`](crate::BalancerSlot::set_snapshot_with)).
#[derive(Debug)]
pub struct Published {
    /// Bumped by every change; workers compare it to what they applied.
    pub epoch: u64,
    /// The plain model (native policies).
    pub model: Snapshot,
    /// The same as WIT records (wasm policies), built once.
    pub(crate) wit: wit::Snapshot,
    /// Load cells, by snapshot index.
    pub(crate) loads: Vec<Arc<EndpointLoad>>,
    pub(crate) tracker: Arc<LoadTracker>,
    /// What the slot's user attached to each endpoint, in snapshot order (a `Vec<T>`, see
    /// [`BalancerSlot::set_snapshot_with`](crate::BalancerSlot::set_snapshot_with)): published
    /// with the model, so an index a balancer chose always names the right one.
    targets: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Published {
    /// Builds the route from a plain snapshot, reusing the tracker's load cells.
    #[must_use]
    pub fn new(epoch: u64, model: Snapshot, tracker: Arc<LoadTracker>) -> Self {
        let loads = tracker.cells_for(&model.endpoints);
        let wit = wit::Snapshot {
            service: model.service.clone(),
            revision: model.revision,
            protection_active: model.protection_active,
            endpoints: model
                .endpoints
                .iter()
                .map(|e| wit::Endpoint {
                    id: e.id.clone(),
                    address: e.address.clone(),
                    weight: e.weight,
                    healthy: e.healthy,
                    zone: e.zone.clone(),
                    version: e.version.clone(),
                    metadata: e.metadata.clone(),
                })
                .collect(),
        };
        Self { epoch, model, wit, loads, tracker, targets: None }
    }

    /// The same route carrying `targets`, one per endpoint in the model's order.
    ///
    /// # Panics
    /// When `targets` and the model's endpoints differ in number (a caller's bug).
    #[must_use]
    pub(crate) fn with_targets<T: Send + Sync + 'static>(mut self, targets: Vec<T>) -> Self {
        assert_eq!(targets.len(), self.model.endpoints.len(), "one target per endpoint, in the snapshot's order");
        self.targets = Some(Arc::new(targets));
        self
    }

    /// What was attached to endpoint `index` when the route was published
    /// ([`BalancerSlot::set_snapshot_with`](crate::BalancerSlot::set_snapshot_with)); none
    /// without targets, or targets of another type.
    #[must_use]
    pub fn target<T: 'static>(&self, index: u32) -> Option<&T> {
        self.targets.as_deref()?.downcast_ref::<Vec<T>>()?.get(index as usize)
    }

    /// The indices of the endpoints at `addresses` (`Endpoint::address`), in that order;
    /// one no longer in the route is left out. Empty (and no allocation) when `addresses` is.
    pub(crate) fn indices_of(&self, addresses: &[String]) -> Vec<u32> {
        addresses
            .iter()
            .filter_map(|a| self.model.endpoints.iter().position(|e| e.address == *a))
            .filter_map(|i| u32::try_from(i).ok())
            .collect()
    }

    /// Number of endpoints.
    #[must_use]
    pub fn len(&self) -> usize {
        self.model.endpoints.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.model.endpoints.is_empty()
    }

    /// The load cell of an endpoint.
    #[must_use]
    pub fn load(&self, index: u32) -> Option<&Arc<EndpointLoad>> {
        self.loads.get(index as usize)
    }

    pub(crate) fn in_flight(&self, index: u32) -> u32 {
        self.load(index).map_or(0, |c| c.in_flight())
    }
    pub(crate) fn latency_ewma(&self, index: u32) -> u64 {
        self.load(index).map_or(0, |c| c.latency_ewma())
    }
    pub(crate) fn recent_errors(&self, index: u32) -> u32 {
        self.load(index).map_or(0, |c| self.tracker.recent_errors(c))
    }
    pub(crate) fn state(&self, index: u32) -> EndpointState {
        self.load(index).map_or_else(EndpointState::default, |c| EndpointState {
            in_flight: c.in_flight(),
            latency_ewma: c.latency_ewma(),
            recent_errors: self.tracker.recent_errors(c),
        })
    }
}

/// The plugin-side snapshot of a registry service: the instances traffic may go to (healthy
/// ones, or every routable one while the protection threshold holds), sorted by id.
#[must_use]
pub fn snapshot_of(service: &ServiceSnapshot) -> Snapshot {
    Snapshot {
        service: service.service.to_string(),
        revision: service.revision.0,
        protection_active: service.protection_active(),
        endpoints: service.selected().map(|i| endpoint_of(i)).collect(),
    }
}

/// The plugin-side endpoint of a registry instance.
#[must_use]
pub fn endpoint_of(i: &Instance) -> Endpoint {
    Endpoint {
        id: i.id.to_string(),
        address: std::net::SocketAddr::new(i.ip, i.port).to_string(),
        weight: i.weight,
        healthy: i.healthy,
        zone: i.zone.clone(),
        version: i.version.clone(),
        metadata: i.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}
