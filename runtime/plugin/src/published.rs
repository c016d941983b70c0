//! The published endpoint list a slot serves between two registry changes: the endpoints in
//! both the plain model and the WIT records, their load cells and the targets a pick hands
//! back, all built once per change.

use std::sync::Arc;

use sextant_builtins::{Endpoint, EndpointState, Snapshot};
use sextant_core::{Instance, ServiceSnapshot};

use crate::bindings::v1::balancer::sextant::plugin::types as wit;
use crate::tracker::{EndpointLoad, LoadTracker};

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
    /// Builds the published list from a plain snapshot, reusing the tracker's load cells.
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

    /// The same published list carrying `targets`, one per endpoint in the model's order.
    ///
    /// # Panics
    /// When `targets` and the model's endpoints differ in number (a caller's bug).
    #[must_use]
    pub(crate) fn with_targets<T: Send + Sync + 'static>(mut self, targets: Vec<T>) -> Self {
        assert_eq!(targets.len(), self.model.endpoints.len(), "one target per endpoint, in the snapshot's order");
        self.targets = Some(Arc::new(targets));
        self
    }

    /// What was attached to endpoint `index` when the list was published
    /// ([`BalancerSlot::set_snapshot_with`](crate::BalancerSlot::set_snapshot_with)); none
    /// without targets, or targets of another type.
    #[must_use]
    pub fn target<T: 'static>(&self, index: u32) -> Option<&T> {
        self.targets.as_deref()?.downcast_ref::<Vec<T>>()?.get(index as usize)
    }

    /// The indices of the endpoints at `addresses` (`Endpoint::address`), in that order;
    /// one no longer in the list is left out. Empty (and no allocation) when `addresses` is.
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

    /// The tracker whose load cells these are.
    #[must_use]
    pub fn tracker(&self) -> &Arc<LoadTracker> {
        &self.tracker
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
    pub(crate) fn report(&self, index: u32) -> Option<sextant_builtins::report::BackendReport> {
        self.load(index).and_then(|c| self.tracker.backend_report(c))
    }
    pub(crate) fn probe(&self, index: u32) {
        if let Some(e) = self.model.endpoints.get(index as usize) {
            self.tracker.ask_probe(&e.id);
        }
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
        metadata: i.metadata.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
    }
}
