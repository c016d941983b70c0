//! Per-service snapshots: what the hot path reads.
//!
//! A [`ServiceSnapshot`] is immutable and built off the hot path whenever the service changes;
//! it is published into the service's [`SnapshotHandle`] with one atomic pointer swap
//! (pingora's `ArcSwap` selector). Readers `load()` it without locks; a reader that holds an
//! old snapshot keeps a consistent view until it lets go.
//!
//! The protection threshold is applied when the snapshot is built: if the share of healthy
//! instances among the routable ones (enabled, weight > 0) is below the service's threshold,
//! [`ServiceSnapshot::selected`] is every routable instance and
//! [`ServiceSnapshot::protection_active`] says so (Nacos' protection threshold, Envoy's panic
//! threshold), so one bad health signal cannot eject everyone.

use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use serde::Serialize;

use crate::{Instance, Revision, ServiceKey};

/// One service's instances at one revision.
#[derive(Debug, Serialize)]
pub struct ServiceSnapshot {
    /// The service.
    pub service: ServiceKey,
    /// The revision of the last change to the service (instances or spec).
    pub revision: Revision,
    /// Every instance, sorted by id.
    pub instances: Vec<Arc<Instance>>,
    /// The threshold in force.
    pub protect_threshold: f32,
    /// Indices into `instances` of those traffic may go to.
    selected: Vec<u32>,
    healthy: usize,
    routable: usize,
    protection_active: bool,
}

impl ServiceSnapshot {
    /// Builds a snapshot, applying the protection threshold.
    #[must_use]
    pub fn build(
        service: ServiceKey,
        revision: Revision,
        instances: Vec<Arc<Instance>>,
        protect_threshold: f32,
    ) -> Self {
        let index = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
        let routable: Vec<u32> =
            instances.iter().enumerate().filter(|(_, i)| i.is_routable()).map(|(n, _)| index(n)).collect();
        let healthy: Vec<u32> = routable.iter().copied().filter(|&n| instances[n as usize].healthy).collect();
        #[allow(clippy::cast_precision_loss)] // instance counts are far below 2^24
        let share = if routable.is_empty() { 1.0 } else { healthy.len() as f32 / routable.len() as f32 };
        let protection_active = !routable.is_empty() && share < protect_threshold;
        let (healthy_count, routable_count) = (healthy.len(), routable.len());
        Self {
            service,
            revision,
            instances,
            protect_threshold,
            selected: if protection_active { routable } else { healthy },
            healthy: healthy_count,
            routable: routable_count,
            protection_active,
        }
    }

    /// An empty snapshot (a service nobody registered yet, or that was emptied).
    #[must_use]
    pub fn empty(service: ServiceKey, revision: Revision) -> Self {
        Self::build(service, revision, Vec::new(), 0.0)
    }

    /// The instances traffic may go to: the healthy routable ones, or every routable one
    /// while protection is active.
    pub fn selected(&self) -> impl ExactSizeIterator<Item = &Arc<Instance>> + '_ {
        self.selected.iter().map(|&n| &self.instances[n as usize])
    }

    /// Whether the healthy share fell below the threshold, so unhealthy instances are
    /// included in [`ServiceSnapshot::selected`].
    #[must_use]
    pub fn protection_active(&self) -> bool {
        self.protection_active
    }

    /// Number of healthy routable instances.
    #[must_use]
    pub fn healthy_count(&self) -> usize {
        self.healthy
    }

    /// Number of routable (enabled, weight > 0) instances.
    #[must_use]
    pub fn routable_count(&self) -> usize {
        self.routable
    }
}

/// A service's current snapshot, swapped atomically. Clone it and keep it: `load` is one
/// atomic load.
#[derive(Debug, Clone)]
pub struct SnapshotHandle(Arc<ArcSwap<ServiceSnapshot>>);

impl SnapshotHandle {
    fn new(snapshot: ServiceSnapshot) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(snapshot)))
    }

    /// The current snapshot, lock-free; cheapest for a short read.
    #[must_use]
    pub fn load(&self) -> arc_swap::Guard<Arc<ServiceSnapshot>> {
        self.0.load()
    }

    /// The current snapshot as an owned `Arc`, to keep across awaits.
    #[must_use]
    pub fn load_full(&self) -> Arc<ServiceSnapshot> {
        self.0.load_full()
    }

    pub(crate) fn store(&self, snapshot: ServiceSnapshot) {
        self.0.store(Arc::new(snapshot));
    }
}

/// Service name → snapshot handle, shared by the writer (the view) and every reader.
#[derive(Debug, Default)]
pub struct Directory {
    map: DashMap<ServiceKey, SnapshotHandle, foldhash::fast::RandomState>,
}

impl Directory {
    /// The handle of `service`, created empty if the service is unknown so far; it fills in
    /// when instances arrive.
    #[must_use]
    pub fn handle(&self, service: &ServiceKey) -> SnapshotHandle {
        if let Some(h) = self.map.get(service) {
            return h.clone();
        }
        self.map
            .entry(service.clone())
            .or_insert_with(|| SnapshotHandle::new(ServiceSnapshot::empty(service.clone(), Revision(0))))
            .clone()
    }

    /// The current snapshot of `service`, if it has ever been seen.
    #[must_use]
    pub fn get(&self, service: &ServiceKey) -> Option<Arc<ServiceSnapshot>> {
        self.map.get(service).map(|h| h.load_full())
    }

    /// Every service with at least one instance, sorted.
    #[must_use]
    pub fn services(&self) -> Vec<ServiceKey> {
        let mut v: Vec<ServiceKey> =
            self.map.iter().filter(|e| !e.value().load().instances.is_empty()).map(|e| e.key().clone()).collect();
        v.sort();
        v
    }

    /// Makes `snapshot` its service's current one (the writer's side: a registry's view, or
    /// a test or simulation that plays the registry).
    pub fn publish(&self, snapshot: ServiceSnapshot) {
        self.handle(&snapshot.service.clone()).store(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instances(healthy: &[bool]) -> Vec<Arc<Instance>> {
        let svc = ServiceKey::parse("s").unwrap();
        healthy
            .iter()
            .enumerate()
            .map(|(n, &h)| {
                let mut i = Instance::new(svc.clone(), "10.0.0.1".parse().unwrap(), 1000 + u16::try_from(n).unwrap());
                i.healthy = h;
                Arc::new(i)
            })
            .collect()
    }

    fn build(healthy: &[bool], threshold: f32) -> ServiceSnapshot {
        ServiceSnapshot::build(ServiceKey::parse("s").unwrap(), Revision(1), instances(healthy), threshold)
    }

    #[test]
    fn healthy_only_above_the_threshold() {
        let s = build(&[true, true, false, true], 0.5);
        assert!(!s.protection_active());
        assert_eq!(s.selected().len(), 3);
        assert!(s.selected().all(|i| i.healthy));
    }

    #[test]
    fn everyone_routable_below_the_threshold() {
        let s = build(&[true, false, false, false], 0.5);
        assert!(s.protection_active());
        assert_eq!(s.selected().len(), 4);
        assert_eq!(s.healthy_count(), 1);
    }

    #[test]
    fn zero_threshold_never_protects() {
        let s = build(&[false, false], 0.0);
        assert!(!s.protection_active());
        assert_eq!(s.selected().len(), 0);
    }

    #[test]
    fn disabled_and_zero_weight_stay_out_even_under_protection() {
        let mut list = instances(&[false, false, false]);
        Arc::make_mut(&mut list[0]).enabled = false;
        Arc::make_mut(&mut list[1]).weight = 0;
        let s = ServiceSnapshot::build(ServiceKey::parse("s").unwrap(), Revision(1), list, 0.9);
        assert!(s.protection_active());
        assert_eq!(s.routable_count(), 1);
        assert_eq!(s.selected().map(|i| i.port).collect::<Vec<_>>(), vec![1002]);
    }

    #[test]
    fn handles_see_later_publishes() {
        let dir = Directory::default();
        let key = ServiceKey::parse("s").unwrap();
        let h = dir.handle(&key);
        assert!(h.load().instances.is_empty());
        dir.publish(build(&[true], 0.0));
        assert_eq!(h.load().instances.len(), 1);
        assert_eq!(dir.services(), vec![key]);
    }
}
