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

use crate::{Instance, InstanceId, Revision, ServiceKey};
use arc_swap::ArcSwap;
use dashmap::DashMap;

/// A service's instances as a snapshot holds them, sorted by id: a persistent ordered set,
/// so a snapshot built after a change shares all but the changed paths with the one before.
#[derive(Clone, Default)]
pub struct Instances(imbl::OrdSet<ById>);

impl Instances {
    /// Every instance, sorted by id.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<Instance>> + '_ {
        self.0.iter().map(|i| &i.0)
    }

    /// Number of instances.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Puts `instance` in if it `belongs` here (replacing the one with its id), takes the
    /// one with its id out if it does not.
    fn place(&mut self, instance: Arc<Instance>, belongs: bool) {
        if belongs {
            self.0.insert(ById(instance));
        } else {
            self.0.remove(&instance.id);
        }
    }
}

impl std::fmt::Debug for Instances {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl FromIterator<Arc<Instance>> for Instances {
    fn from_iter<T: IntoIterator<Item = Arc<Instance>>>(iter: T) -> Self {
        Self(iter.into_iter().map(ById).collect())
    }
}

/// An instance, ordered (and found) by its id.
#[derive(Debug, Clone)]
struct ById(Arc<Instance>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.id.cmp(&other.0.id)
    }
}

impl std::borrow::Borrow<InstanceId> for ById {
    fn borrow(&self) -> &InstanceId {
        &self.0.id
    }
}

/// One service's instances at one revision.
#[derive(Debug, Clone)]
pub struct ServiceSnapshot {
    /// The service.
    pub service: ServiceKey,
    /// The revision of the last change to the service (instances or spec).
    pub revision: Revision,
    /// Every instance, sorted by id.
    pub instances: Instances,
    /// The threshold in force.
    pub protect_threshold: f32,
    /// The routable instances (enabled, weight > 0), sorted by id.
    routable: Instances,
    /// The routable instances that are healthy, sorted by id.
    healthy: Instances,
    protection_active: bool,
}

impl ServiceSnapshot {
    /// Builds a snapshot of `instances` (one per id: a later one replaces an earlier one),
    /// applying the protection threshold. O(n log n): a registry keeps an [`InstanceSet`] and
    /// uses [`ServiceSnapshot::of`].
    #[must_use]
    pub fn build(
        service: ServiceKey,
        revision: Revision,
        instances: Vec<Arc<Instance>>,
        protect_threshold: f32,
    ) -> Self {
        let mut set = InstanceSet::default();
        for instance in instances {
            set.upsert(instance);
        }
        Self::of(service, revision, &set, protect_threshold)
    }

    /// The snapshot of `set`, applying the protection threshold: O(1) in the number of
    /// instances (it shares the set's ordered sets instead of copying them).
    #[must_use]
    pub fn of(service: ServiceKey, revision: Revision, set: &InstanceSet, protect_threshold: f32) -> Self {
        let (healthy, routable) = (set.healthy().len(), set.routable().len());
        #[allow(clippy::cast_precision_loss)] // instance counts are far below 2^24
        let share = if routable == 0 { 1.0 } else { healthy as f32 / routable as f32 };
        Self {
            service,
            revision,
            instances: set.all.clone(),
            protect_threshold,
            routable: set.routable().clone(),
            healthy: set.healthy().clone(),
            protection_active: routable > 0 && share < protect_threshold,
        }
    }

    /// An empty snapshot (a service nobody registered yet, or that was emptied).
    #[must_use]
    pub fn empty(service: ServiceKey, revision: Revision) -> Self {
        Self::of(service, revision, &InstanceSet::default(), 0.0)
    }

    /// The instances traffic may go to: the healthy routable ones, or every routable one
    /// while protection is active.
    pub fn selected(&self) -> impl ExactSizeIterator<Item = &Arc<Instance>> + '_ {
        if self.protection_active { self.routable.iter() } else { self.healthy.iter() }
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
        self.healthy.len()
    }

    /// Number of routable (enabled, weight > 0) instances.
    #[must_use]
    pub fn routable_count(&self) -> usize {
        self.routable.len()
    }
}

/// A service's instances, with the routable ones and the healthy routable ones kept beside
/// them: what a registry changes as events arrive. A change to one instance costs O(log n)
/// per set, and [`ServiceSnapshot::of`] shares the sets instead of copying them. While every
/// instance is routable and healthy (the usual case) only one set is kept; the others are
/// made (once, O(n)) when the first instance that is not arrives, and kept from then on.
#[derive(Debug, Clone, Default)]
pub struct InstanceSet {
    all: Instances,
    /// The routable instances; `None` while every instance is.
    routable: Option<Instances>,
    /// The healthy routable instances; `None` while every routable instance is healthy.
    healthy: Option<Instances>,
}

impl InstanceSet {
    /// Adds `instance`, or replaces the one with its id.
    pub fn upsert(&mut self, instance: Arc<Instance>) {
        let routable = instance.is_routable();
        let healthy = instance.healthy;
        self.all.place(Arc::clone(&instance), true);
        match &mut self.routable {
            Some(set) => set.place(Arc::clone(&instance), routable),
            None if !routable => self.routable = Some(self.all.iter().filter(|i| i.is_routable()).cloned().collect()),
            None => {}
        }
        match &mut self.healthy {
            Some(set) => set.place(instance, routable && healthy),
            // Not routable: out of the routable set, so out of the healthy one it stands for.
            None if routable && !healthy => {
                self.healthy = Some(self.routable().iter().filter(|i| i.healthy).cloned().collect());
            }
            None => {}
        }
    }

    /// Removes the instance with id `id`, if there is one.
    pub fn remove(&mut self, id: &InstanceId) -> Option<Arc<Instance>> {
        for set in [&mut self.routable, &mut self.healthy].into_iter().flatten() {
            set.0.remove(id);
        }
        self.all.0.remove(id).map(|i| i.0)
    }

    /// The routable instances.
    fn routable(&self) -> &Instances {
        self.routable.as_ref().unwrap_or(&self.all)
    }

    /// The healthy routable instances.
    fn healthy(&self) -> &Instances {
        self.healthy.as_ref().unwrap_or_else(|| self.routable())
    }

    /// Number of instances.
    #[must_use]
    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Every instance, sorted by id.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Arc<Instance>> + '_ {
        self.all.iter()
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

    /// An instance set changed one instance at a time publishes what the rule says, worked
    /// out whole from a plain map of the same instances: first with every instance routable
    /// and healthy (one set kept), then with unhealthy ones arriving (the healthy set made),
    /// then with disabled and zero-weight ones too (the routable set made). A snapshot taken
    /// before a change keeps what it had.
    #[test]
    fn a_set_changed_in_place_publishes_what_the_whole_rule_says() {
        let svc = ServiceKey::parse("s").unwrap();
        let mut set = InstanceSet::default();
        let mut model: std::collections::BTreeMap<InstanceId, Arc<Instance>> = std::collections::BTreeMap::new();
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let mut earlier: Option<(ServiceSnapshot, Vec<u16>)> = None;
        let ports = |list: &mut dyn Iterator<Item = &Arc<Instance>>| list.map(|i| i.port).collect::<Vec<_>>();
        for step in 0..3000u64 {
            let port = 1000 + u16::try_from(next(400)).unwrap();
            if next(4) == 0 {
                let id = Instance::new(svc.clone(), "10.0.0.1".parse().unwrap(), port).id;
                assert_eq!(set.remove(&id).map(|i| i.port), model.remove(&id).map(|i| i.port));
            } else {
                let mut i = Instance::new(svc.clone(), "10.0.0.1".parse().unwrap(), port);
                i.healthy = step < 1000 || next(3) != 0;
                i.enabled = step < 2000 || next(10) != 0;
                i.weight = if step < 2000 { 1 } else { u32::try_from(next(3)).unwrap() };
                let i = Arc::new(i);
                set.upsert(i.clone());
                model.insert(i.id.clone(), i);
            }
            let threshold = [0.0, 0.5, 0.9][usize::try_from(step % 3).unwrap()];
            let ours = ServiceSnapshot::of(svc.clone(), Revision(step), &set, threshold);
            let routable: Vec<&Arc<Instance>> = model.values().filter(|i| i.is_routable()).collect();
            let healthy: Vec<&Arc<Instance>> = routable.iter().copied().filter(|i| i.healthy).collect();
            #[allow(clippy::cast_precision_loss)]
            let protection = !routable.is_empty() && (healthy.len() as f32 / routable.len() as f32) < threshold;
            let selected = if protection { &routable } else { &healthy };
            assert_eq!(ports(&mut ours.instances.iter()), ports(&mut model.values()), "step {step}");
            assert_eq!(ports(&mut ours.selected()), ports(&mut selected.iter().copied()), "step {step}");
            assert_eq!(
                (ours.healthy_count(), ours.routable_count(), ours.protection_active()),
                (healthy.len(), routable.len(), protection),
                "step {step}"
            );
            assert_eq!(set.len(), model.len());
            if let Some((before, then)) = &earlier {
                assert_eq!(&ports(&mut before.instances.iter()), then, "a published snapshot never changes");
            }
            if step % 500 == 0 {
                earlier = Some((ours.clone(), ports(&mut ours.instances.iter())));
            }
        }
        assert!(set.routable.is_some() && set.healthy.is_some(), "both kept sets were made");
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
