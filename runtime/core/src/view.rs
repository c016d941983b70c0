//! A store's contents mirrored from its change stream, as the hot path wants them.
//!
//! [`RegistryView`] applies [`Event`]s from any store (embedded or etcd) in revision order,
//! publishes a new [`ServiceSnapshot`] of each service a batch touched ([`RegistryView::publish`],
//! O(1) in the service's size: the snapshot shares the instance lists the events changed)
//! and keeps a history window, so that the many subscribers of one host resume from it
//! rather than each opening a watch on the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::engine::resume;
use crate::history::History;
use crate::snapshot::{Directory, InstanceSet};
use crate::{
    Change, ConfigEntry, ConfigKey, Event, PluginName, PluginRecord, Record, RecordKey, Revision, Scope, ServiceKey,
    ServiceSnapshot, ServiceSpec, StoreSnapshot,
};

#[derive(Debug, Default)]
struct ServiceEntry {
    instances: InstanceSet,
    spec: Option<Arc<ServiceSpec>>,
    revision: Revision,
}

/// Why an event was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// The event is not newer than what the view already holds (a duplicate after a resume).
    #[error("event at revision {event} is not newer than the view's revision {view}")]
    Stale {
        /// The event's revision.
        event: Revision,
        /// The view's revision.
        view: Revision,
    },
}

/// The mirrored registry.
#[derive(Debug)]
pub struct RegistryView {
    revision: Revision,
    services: HashMap<ServiceKey, ServiceEntry>,
    configs: BTreeMap<ConfigKey, Arc<ConfigEntry>>,
    plugins: BTreeMap<PluginName, Arc<PluginRecord>>,
    history: History,
    directory: Arc<Directory>,
    dirty: HashSet<ServiceKey>,
}

impl RegistryView {
    /// An empty view at revision 0 keeping `history_capacity` events.
    #[must_use]
    pub fn new(history_capacity: usize) -> Self {
        Self {
            revision: Revision(0),
            services: HashMap::new(),
            configs: BTreeMap::new(),
            plugins: BTreeMap::new(),
            history: History::new(history_capacity, Revision(0)),
            directory: Arc::default(),
            dirty: HashSet::new(),
        }
    }

    /// The revision of the last event applied.
    #[must_use]
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The directory readers resolve services through.
    #[must_use]
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    /// Applies one event. Snapshots are rebuilt by [`RegistryView::publish`], once per batch.
    pub fn apply(&mut self, event: &Event) -> Result<(), ViewError> {
        if let Change::Reset { snapshot } = &event.change {
            self.reset(snapshot);
            return Ok(());
        }
        if event.revision <= self.revision {
            return Err(ViewError::Stale { event: event.revision, view: self.revision });
        }
        self.revision = event.revision;
        match &event.change {
            Change::Upsert { record } => self.upsert(event.revision, record.clone()),
            Change::Remove { key } => self.remove(event.revision, key),
            Change::Reset { .. } => {}
        }
        self.history.push(event.clone());
        Ok(())
    }

    fn upsert(&mut self, revision: Revision, record: Record) {
        match record {
            Record::Instance(i) => {
                let entry = self.touch(&i.service, revision);
                entry.instances.upsert(i);
            }
            Record::Service(s) => {
                let key = s.service.clone();
                self.touch(&key, revision).spec = Some(s);
            }
            Record::Config(c) => {
                self.configs.insert(c.key.clone(), c);
            }
            Record::Plugin(p) => {
                self.plugins.insert(p.name.clone(), p);
            }
        }
    }

    fn remove(&mut self, revision: Revision, key: &RecordKey) {
        match key {
            RecordKey::Instance(k) => {
                self.touch(&k.service, revision).instances.remove(&k.id);
            }
            RecordKey::Service(s) => self.touch(s, revision).spec = None,
            RecordKey::Config(c) => {
                self.configs.remove(c);
            }
            RecordKey::Plugin(p) => {
                self.plugins.remove(p);
            }
        }
    }

    fn touch(&mut self, service: &ServiceKey, revision: Revision) -> &mut ServiceEntry {
        self.dirty.insert(service.clone());
        let entry = self.services.entry(service.clone()).or_default();
        entry.revision = revision;
        entry
    }

    fn reset(&mut self, snapshot: &StoreSnapshot) {
        let old: Vec<ServiceKey> = self.services.keys().cloned().collect();
        self.dirty.extend(old);
        self.services.clear();
        self.configs.clear();
        self.plugins.clear();
        self.revision = snapshot.revision;
        for record in &snapshot.records {
            self.upsert(snapshot.revision, record.clone());
        }
        self.history.reset(snapshot.revision);
    }

    /// Publishes a new snapshot of every service changed since the last call (sharing its
    /// instance lists: O(1) per service, whatever its size).
    /// Services left with no instances and no spec are forgotten (their handles see an empty
    /// snapshot).
    pub fn publish(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            let snapshot = match self.services.get(&key) {
                Some(e) => ServiceSnapshot::of(
                    key.clone(),
                    e.revision,
                    &e.instances,
                    e.spec.as_ref().map_or(0.0, |s| s.protect_threshold),
                ),
                None => ServiceSnapshot::empty(key.clone(), self.revision),
            };
            if self.services.get(&key).is_some_and(|e| e.instances.is_empty() && e.spec.is_none()) {
                self.services.remove(&key);
            }
            self.directory.publish(snapshot);
        }
    }

    /// Every record in `scope` at the view's revision, sorted by key.
    #[must_use]
    pub fn snapshot(&self, scope: &Scope) -> StoreSnapshot {
        let services = self.services.iter().filter(|(k, _)| match scope {
            Scope::All => true,
            Scope::Namespace(ns) => &k.namespace == ns,
            Scope::Service(s) => *k == s,
            Scope::Config(_) | Scope::Plugins => false,
        });
        let mut records: Vec<Record> = Vec::new();
        for (_, e) in services {
            records.extend(e.spec.iter().cloned().map(Record::Service));
            records.extend(e.instances.iter().cloned().map(Record::Instance));
        }
        records.extend(
            self.configs
                .values()
                .filter(|c| scope.contains(&RecordKey::Config(c.key.clone())))
                .cloned()
                .map(Record::Config),
        );
        if matches!(scope, Scope::All | Scope::Plugins) {
            records.extend(self.plugins.values().cloned().map(Record::Plugin));
        }
        records.sort_by_cached_key(Record::key);
        StoreSnapshot { revision: self.revision, records }
    }

    /// The missed events of `scope` after `from`, or one `Reset` of the scope.
    #[must_use]
    pub fn watch_from(&self, from: Revision, scope: &Scope) -> Vec<Event> {
        resume(&self.history, from, self.revision, scope, || self.snapshot(scope))
    }

    /// A config entry.
    #[must_use]
    pub fn config(&self, key: &ConfigKey) -> Option<Arc<ConfigEntry>> {
        self.configs.get(key).cloned()
    }

    /// Every plugin record, by name.
    #[must_use]
    pub fn plugins(&self) -> Vec<Arc<PluginRecord>> {
        self.plugins.values().cloned().collect()
    }

    /// Instances and healthy instances (healthy and enabled) per zone (`""`: without one),
    /// over every service. Walks every instance.
    #[must_use]
    pub fn zone_counts(&self) -> std::collections::BTreeMap<String, (usize, usize)> {
        let mut zones: std::collections::BTreeMap<String, (usize, usize)> = std::collections::BTreeMap::new();
        for i in self.services.values().flat_map(|e| e.instances.iter()) {
            let z = match zones.get_mut(i.zone.as_str()) {
                Some(z) => z,
                None => zones.entry(i.zone.clone()).or_default(),
            };
            z.0 += 1;
            z.1 += usize::from(i.healthy && i.enabled);
        }
        zones
    }

    /// Counts for status and metrics.
    #[must_use]
    pub fn stats(&self) -> ViewStats {
        ViewStats {
            revision: self.revision,
            services: self.services.values().filter(|e| !e.instances.is_empty()).count(),
            instances: self.services.values().map(|e| e.instances.len()).sum(),
            configs: self.configs.len(),
            plugins: self.plugins.len(),
        }
    }
}

/// Sizes of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ViewStats {
    /// Revision.
    pub revision: Revision,
    /// Services with at least one instance.
    pub services: usize,
    /// Instances.
    pub instances: usize,
    /// Config entries.
    pub configs: usize,
    /// Plugin records.
    pub plugins: usize,
}

impl StoreSnapshot {
    /// The part of the snapshot inside `scope`.
    #[must_use]
    pub fn filtered(&self, scope: &Scope) -> Self {
        Self {
            revision: self.revision,
            records: self.records.iter().filter(|r| scope.contains(&r.key())).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Instance;
    use crate::engine::{Engine, Op};
    use crate::{LeaseId, Metadata, Millis};

    fn instance(service: &str, port: u16, healthy: bool) -> Record {
        let mut i = Instance::new(ServiceKey::parse(service).unwrap(), "10.0.0.1".parse().unwrap(), port);
        i.ephemeral = false;
        i.healthy = healthy;
        Record::Instance(Arc::new(i))
    }

    fn feed(view: &mut RegistryView, events: &[Event]) {
        for e in events {
            view.apply(e).unwrap();
        }
        view.publish();
    }

    #[test]
    fn mirrors_an_engine_and_publishes_snapshots() {
        let mut engine = Engine::new(Revision(0), vec![], 100);
        let mut view = RegistryView::new(100);
        let svc = ServiceKey::parse("orders").unwrap();
        let handle = view.directory().handle(&svc);
        let mut events = vec![];
        for port in 1..=3 {
            events.push(
                engine.apply(Millis(0), Op::Put { record: instance("orders", port, true), lease: None }).unwrap(),
            );
        }
        feed(&mut view, &events);
        assert_eq!(handle.load().instances.len(), 3);
        assert_eq!(handle.load().revision, Revision(3));
        let del = engine.apply(Millis(0), Op::Delete { key: instance("orders", 2, true).key() }).unwrap();
        feed(&mut view, &[del]);
        assert_eq!(handle.load().instances.iter().map(|i| i.port).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(view.snapshot(&Scope::All), engine.snapshot(&Scope::All));
    }

    #[test]
    fn duplicates_are_refused() {
        let mut engine = Engine::new(Revision(0), vec![], 100);
        let mut view = RegistryView::new(100);
        let e = engine.apply(Millis(0), Op::Put { record: instance("a", 1, true), lease: None }).unwrap();
        view.apply(&e).unwrap();
        assert_eq!(view.apply(&e), Err(ViewError::Stale { event: Revision(1), view: Revision(1) }));
    }

    #[test]
    fn protection_threshold_comes_from_the_service_spec() {
        let mut view = RegistryView::new(100);
        let svc = ServiceKey::parse("pay").unwrap();
        let spec = ServiceSpec { service: svc.clone(), protect_threshold: 0.6, metadata: Metadata::new() };
        let mut engine = Engine::new(Revision(0), vec![], 100);
        let mut events =
            vec![engine.apply(Millis(0), Op::Put { record: Record::Service(spec.into()), lease: None }).unwrap()];
        for (port, healthy) in [(1, true), (2, false), (3, false)] {
            events.push(
                engine.apply(Millis(0), Op::Put { record: instance("pay", port, healthy), lease: None }).unwrap(),
            );
        }
        feed(&mut view, &events);
        let snap = view.directory().get(&svc).unwrap();
        assert!(snap.protection_active(), "1/3 healthy is below 0.6");
        assert_eq!(snap.selected().len(), 3);
        // Heal one: 2/3 ≥ 0.6, only healthy ones are selected again.
        let heal = engine.apply(Millis(0), Op::Put { record: instance("pay", 2, true), lease: None }).unwrap();
        feed(&mut view, &[heal]);
        let snap = view.directory().get(&svc).unwrap();
        assert!(!snap.protection_active());
        assert_eq!(snap.selected().map(|i| i.port).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn reset_replaces_everything_and_empties_vanished_services() {
        let mut view = RegistryView::new(100);
        let mut engine = Engine::new(Revision(0), vec![], 100);
        let e1 = engine.apply(Millis(0), Op::Put { record: instance("gone", 1, true), lease: None }).unwrap();
        feed(&mut view, &[e1]);
        let gone = view.directory().handle(&ServiceKey::parse("gone").unwrap());
        assert_eq!(gone.load().instances.len(), 1);
        let fresh = StoreSnapshot { revision: Revision(40), records: vec![instance("kept", 1, true)] };
        let reset = Event { revision: Revision(40), change: Change::Reset { snapshot: fresh.into() } };
        feed(&mut view, &[reset]);
        assert!(gone.load().instances.is_empty());
        assert_eq!(view.revision(), Revision(40));
        assert_eq!(view.stats().instances, 1);
        // Watchers from before the reset must reset too.
        assert!(matches!(view.watch_from(Revision(1), &Scope::All)[0].change, Change::Reset { .. }));
        assert!(view.watch_from(Revision(40), &Scope::All).is_empty());
    }

    #[test]
    fn lease_expiry_reaches_the_view_as_removes() {
        let mut engine = Engine::new(Revision(0), vec![], 100);
        let mut view = RegistryView::new(100);
        engine.grant_lease(Millis(0), LeaseId(1), Duration::from_secs(3)).unwrap();
        let mut i = Instance::new(ServiceKey::parse("eph").unwrap(), "10.0.0.9".parse().unwrap(), 9);
        i.ephemeral = true;
        let put =
            engine.apply(Millis(0), Op::Put { record: Record::Instance(i.into()), lease: Some(LeaseId(1)) }).unwrap();
        feed(&mut view, &[put]);
        assert_eq!(view.stats().instances, 1);
        let removed = engine.expire(Millis(3_000));
        feed(&mut view, &removed);
        assert_eq!(view.stats().instances, 0);
        let missed = view.watch_from(Revision(1), &Scope::Service(ServiceKey::parse("eph").unwrap()));
        assert!(matches!(&missed[..], [Event { revision: Revision(2), change: Change::Remove { .. } }]));
    }
}
