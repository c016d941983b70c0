//! A revisioned key space with leases: the logic of the embedded store, with no IO.
//!
//! Each mutation is two steps so the caller can make it durable in between:
//! [`Engine::prepare`] validates it and says what to persist ([`Persist`]) without changing
//! anything; [`Engine::commit`] applies it and returns the [`Event`]. A failed persist
//! therefore changes nothing. Lease expiry ([`Engine::expire`]) removes the records attached to
//! dead leases, one revision each.
//!
//! etcd plays this role for the etcd backend, which is why the shape follows etcd: a flat key
//! space, store-wide revisions, leases with attached keys, watch from a revision.

use std::hash::BuildHasher;
use std::time::Duration;

use hashbrown::HashTable;

use crate::history::{History, Resume};
use crate::lease::LeaseTable;
use crate::{
    Change, ConfigKey, CoreError, Event, InstanceId, LeaseId, Millis, PluginName, Record, RecordKey, Revision, Scope,
    ServiceKey, StoreSnapshot, ValidationError,
};

/// A mutation.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create or replace a record, attached to a lease for ephemeral instances.
    Put {
        /// The record.
        record: Record,
        /// Its lease (ephemeral instances only).
        lease: Option<LeaseId>,
    },
    /// Delete a record.
    Delete {
        /// Its key.
        key: RecordKey,
    },
}

impl Op {
    /// The key it writes.
    #[must_use]
    pub fn key(&self) -> RecordKey {
        match self {
            Self::Put { record, .. } => record.key(),
            Self::Delete { key } => key.clone(),
        }
    }
}

/// What a prepared mutation needs on disk before it may be committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persist {
    /// Nothing (ephemeral records live in memory only).
    Nothing,
    /// Write `value` under `path`.
    Put {
        /// Key path ([`RecordKey::path`]).
        path: String,
        /// JSON value ([`Record::to_value`]).
        value: Vec<u8>,
    },
    /// Remove `path`.
    Delete {
        /// Key path.
        path: String,
    },
}

/// A validated mutation that has not been applied yet.
#[derive(Debug)]
pub struct Prepared {
    revision: Revision,
    op: Op,
    persist: Persist,
}

impl Prepared {
    /// What must be made durable before [`Engine::commit`].
    #[must_use]
    pub fn persist(&self) -> &Persist {
        &self.persist
    }

    /// The revision the mutation will get.
    #[must_use]
    pub fn revision(&self) -> Revision {
        self.revision
    }
}

#[derive(Debug)]
struct Entry {
    record: Record,
    lease: Option<LeaseId>,
    /// The revision of its last write (for records loaded from disk, the revision the engine
    /// started at: a conditional write compares it as read from this engine).
    revision: Revision,
}

/// A record's key, borrowed from the record or from a [`RecordKey`]: what the table hashes and
/// compares, so a slot holds only its [`Entry`] (the record carries its own key).
#[derive(PartialEq, Eq, Hash)]
enum KeyRef<'a> {
    Instance(&'a ServiceKey, &'a InstanceId),
    Service(&'a ServiceKey),
    Config(&'a ConfigKey),
    Plugin(&'a PluginName),
}

impl<'a> KeyRef<'a> {
    fn of(record: &'a Record) -> Self {
        match record {
            Record::Instance(i) => Self::Instance(&i.service, &i.id),
            Record::Service(s) => Self::Service(&s.service),
            Record::Config(c) => Self::Config(&c.key),
            Record::Plugin(p) => Self::Plugin(&p.name),
        }
    }

    fn from_key(key: &'a RecordKey) -> Self {
        match key {
            RecordKey::Instance(k) => Self::Instance(&k.service, &k.id),
            RecordKey::Service(k) => Self::Service(k),
            RecordKey::Config(k) => Self::Config(k),
            RecordKey::Plugin(k) => Self::Plugin(k),
        }
    }
}

/// The records by key. A slot is an [`Entry`] alone: a map from [`RecordKey`] would hold each
/// key twice (its parts are in the record too), 72 more bytes per slot, which at a million
/// records is a sixth of the server's memory.
#[derive(Default)]
struct Records {
    table: HashTable<Entry>,
    hasher: foldhash::fast::RandomState,
}

impl Records {
    fn hash(&self, key: &KeyRef<'_>) -> u64 {
        self.hasher.hash_one(key)
    }

    fn get(&self, key: &RecordKey) -> Option<&Entry> {
        let key = KeyRef::from_key(key);
        self.table.find(self.hash(&key), |e| KeyRef::of(&e.record) == key)
    }

    /// Room for `additional` more entries without growing.
    fn reserve(&mut self, additional: usize) {
        let hasher = &self.hasher;
        self.table.reserve(additional, |e| hasher.hash_one(KeyRef::of(&e.record)));
    }

    /// Puts `entry` under its record's key; returns the entry it replaces.
    fn insert(&mut self, entry: Entry) -> Option<Entry> {
        let hash = self.hash(&KeyRef::of(&entry.record));
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |e| KeyRef::of(&e.record) == KeyRef::of(&entry.record),
            |e| hasher.hash_one(KeyRef::of(&e.record)),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => Some(std::mem::replace(slot.get_mut(), entry)),
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(entry);
                None
            }
        }
    }

    fn remove(&mut self, key: &RecordKey) -> Option<Entry> {
        let key = KeyRef::from_key(key);
        let hash = self.hash(&key);
        self.table.find_entry(hash, |e| KeyRef::of(&e.record) == key).ok().map(|slot| slot.remove().0)
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.table.iter()
    }
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").field("len", &self.table.len()).finish_non_exhaustive()
    }
}

/// The key space, its revision, its leases and its recent history.
#[derive(Debug)]
pub struct Engine {
    revision: Revision,
    records: Records,
    leases: LeaseTable,
    history: History,
}

impl Engine {
    /// An engine at `revision` holding `records` (loaded from disk), with a history window
    /// of `history_capacity` events. Watchers from before `revision` get a `Reset`.
    #[must_use]
    pub fn new(revision: Revision, records: Vec<Record>, history_capacity: usize) -> Self {
        let mut table = Records::default();
        table.reserve(records.len());
        for record in records {
            table.insert(Entry { record, lease: None, revision });
        }
        Self {
            revision,
            records: table,
            leases: LeaseTable::default(),
            history: History::new(history_capacity, revision),
        }
    }

    /// The revision of the last mutation.
    #[must_use]
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Number of records held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no records are held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.records.len() == 0
    }

    /// Number of live leases.
    #[must_use]
    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// The record under `key`.
    #[must_use]
    pub fn get(&self, key: &RecordKey) -> Option<&Record> {
        self.records.get(key).map(|e| &e.record)
    }

    /// The record under `key` and the revision of its last write.
    #[must_use]
    pub fn get_with_revision(&self, key: &RecordKey) -> Option<(&Record, Revision)> {
        self.records.get(key).map(|e| (&e.record, e.revision))
    }

    /// Validates `op` at `now` and works out what to persist. Changes nothing.
    pub fn prepare(&self, now: Millis, op: Op) -> Result<Prepared, CoreError> {
        self.prepare_in_group(now, op, 0)
    }

    /// [`Engine::prepare`] for the member of a group commit that follows `ahead` members
    /// prepared but not committed yet: it gets the revision after theirs, and is committed
    /// after them, in order. The caller keeps a group to one member per key (a member is
    /// validated against the records as they are before the group, which is what it will
    /// find only if no earlier member writes its key).
    pub fn prepare_in_group(&self, now: Millis, op: Op, ahead: usize) -> Result<Prepared, CoreError> {
        let previous = |key: &RecordKey| self.records.get(key).map(|e| &e.record);
        let persist = match &op {
            Op::Put { record, lease } => {
                record.validate()?;
                match (record, lease) {
                    (Record::Instance(i), lease) if i.ephemeral != lease.is_some() => {
                        return Err(ValidationError::LeaseMismatch.into());
                    }
                    (Record::Instance(_), _) | (_, None) => {}
                    (_, Some(_)) => return Err(ValidationError::LeaseOnNonInstance.into()),
                }
                if let Some(id) = lease
                    && !self.leases.is_live(now, *id)
                {
                    return Err(CoreError::LeaseNotFound(*id));
                }
                let key = record.key();
                if record.is_durable() {
                    Persist::Put { path: key.path(), value: record.to_value() }
                } else if previous(&key).is_some_and(Record::is_durable) {
                    Persist::Delete { path: key.path() }
                } else {
                    Persist::Nothing
                }
            }
            Op::Delete { key } => match previous(key) {
                None => return Err(CoreError::KeyNotFound(key.clone())),
                Some(r) if r.is_durable() => Persist::Delete { path: key.path() },
                Some(_) => Persist::Nothing,
            },
        };
        Ok(Prepared { revision: Revision(self.revision.0 + 1 + ahead as u64), op, persist })
    }

    /// Applies a mutation prepared against the current state.
    ///
    /// # Panics
    /// If another mutation was committed since `prepared` was made (a caller bug: prepare
    /// and commit must happen under one lock).
    pub fn commit(&mut self, now: Millis, prepared: Prepared) -> Event {
        assert_eq!(prepared.revision, self.revision.next(), "prepare and commit must not interleave");
        let change = match prepared.op {
            Op::Put { record, lease } => {
                let key = record.key();
                let replaced =
                    self.records.insert(Entry { record: record.clone(), lease, revision: prepared.revision });
                // Detached before attaching: a record put again on the same lease stays on it.
                if let Some(old) = replaced.and_then(|e| e.lease) {
                    self.leases.detach(old, &key);
                }
                if let Some(id) = lease {
                    // Checked live in prepare, at the same `now`, under the same lock.
                    let _ = self.leases.attach(now, id, key);
                }
                Change::Upsert { record }
            }
            Op::Delete { key } => {
                if let Some(old) = self.records.remove(&key).and_then(|e| e.lease) {
                    self.leases.detach(old, &key);
                }
                Change::Remove { key }
            }
        };
        self.push(change)
    }

    /// Prepares and commits in one step, for callers with nothing to persist (tests, benches).
    pub fn apply(&mut self, now: Millis, op: Op) -> Result<Event, CoreError> {
        let prepared = self.prepare(now, op)?;
        Ok(self.commit(now, prepared))
    }

    fn push(&mut self, change: Change) -> Event {
        self.revision = self.revision.next();
        let event = Event { revision: self.revision, change };
        self.history.push(event.clone());
        event
    }

    /// Grants lease `id` with `ttl`.
    pub fn grant_lease(&mut self, now: Millis, id: LeaseId, ttl: Duration) -> Result<(), CoreError> {
        self.leases.grant(now, id, ttl)
    }

    /// Keeps lease `id` alive for another TTL; returns the TTL.
    pub fn keepalive(&mut self, now: Millis, id: LeaseId) -> Result<Duration, CoreError> {
        self.leases.keepalive(now, id)
    }

    /// Number of records attached to lease `id`.
    pub fn lease_key_count(&self, id: LeaseId) -> Result<usize, CoreError> {
        self.leases.key_count(id)
    }

    /// Revokes lease `id`, removing its records (one revision each).
    pub fn revoke_lease(&mut self, id: LeaseId) -> Result<Vec<Event>, CoreError> {
        let keys = self.leases.revoke(id)?;
        Ok(self.remove_all(keys))
    }

    /// How many records [`Engine::expire`] at `now` would remove (so the caller can reserve
    /// revisions first).
    #[must_use]
    pub fn due_removals(&self, now: Millis) -> usize {
        self.leases.due_keys(now)
    }

    /// The earliest lease deadline.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Millis> {
        self.leases.next_deadline()
    }

    /// Removes every lease whose deadline passed at `now` and the records attached to them.
    pub fn expire(&mut self, now: Millis) -> Vec<Event> {
        let keys: Vec<RecordKey> = self.leases.take_expired(now).into_iter().flat_map(|(_, keys)| keys).collect();
        self.remove_all(keys)
    }

    fn remove_all(&mut self, keys: Vec<RecordKey>) -> Vec<Event> {
        let mut events = Vec::with_capacity(keys.len());
        for key in keys {
            if self.records.remove(&key).is_some() {
                events.push(self.push(Change::Remove { key }));
            }
        }
        events
    }

    /// Every record in `scope`, sorted by key, at the current revision.
    #[must_use]
    pub fn snapshot(&self, scope: &Scope) -> StoreSnapshot {
        let mut records: Vec<Record> =
            self.records.iter().filter(|e| scope.contains(&e.record.key())).map(|e| e.record.clone()).collect();
        records.sort_by_cached_key(Record::key);
        StoreSnapshot { revision: self.revision, records }
    }

    /// What a watcher of `scope` that last saw `from` needs: the missed events, or one
    /// `Reset` when they are no longer all in the history window.
    #[must_use]
    pub fn watch_from(&self, from: Revision, scope: &Scope) -> Vec<Event> {
        resume(&self.history, from, self.revision, scope, || self.snapshot(scope))
    }
}

/// The missed events from `history`, or a `Reset` built by `snapshot`.
pub(crate) fn resume(
    history: &History,
    from: Revision,
    current: Revision,
    scope: &Scope,
    snapshot: impl FnOnce() -> StoreSnapshot,
) -> Vec<Event> {
    match history.since(from, current, scope) {
        Resume::Replay(events) => events,
        Resume::Reset => {
            let snapshot = snapshot();
            vec![Event { revision: snapshot.revision, change: Change::Reset { snapshot: snapshot.into() } }]
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{ConfigEntry, ConfigKey, Instance, ServiceKey};

    fn instance(port: u16, ephemeral: bool) -> Record {
        let mut i = Instance::new(ServiceKey::parse("ns/g/orders").unwrap(), "10.0.0.1".parse().unwrap(), port);
        i.ephemeral = ephemeral;
        Record::Instance(Arc::new(i))
    }

    fn put(record: Record, lease: Option<LeaseId>) -> Op {
        Op::Put { record, lease }
    }

    #[test]
    fn every_mutation_gets_the_next_revision() {
        let mut e = Engine::new(Revision(0), vec![], 100);
        let a = e.apply(Millis(0), put(instance(1, false), None)).unwrap();
        let b = e.apply(Millis(0), put(instance(2, false), None)).unwrap();
        let c = e.apply(Millis(0), Op::Delete { key: instance(1, false).key() }).unwrap();
        assert_eq!([a.revision, b.revision, c.revision], [Revision(1), Revision(2), Revision(3)]);
        assert!(matches!(c.change, Change::Remove { .. }));
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn invalid_input_changes_nothing() {
        let mut e = Engine::new(Revision(5), vec![], 100);
        let mut bad = Instance::new(ServiceKey::parse("x").unwrap(), "10.0.0.1".parse().unwrap(), 80);
        bad.ephemeral = false;
        bad.weight = 10_001;
        let err = e.apply(Millis(0), put(Record::Instance(bad.into()), None)).unwrap_err();
        assert_eq!(err, CoreError::Invalid(ValidationError::WeightOutOfRange(10_001)));
        assert_eq!(
            e.apply(Millis(0), put(instance(1, true), None)).unwrap_err(),
            CoreError::Invalid(ValidationError::LeaseMismatch)
        );
        assert_eq!(
            e.apply(Millis(0), put(instance(1, true), Some(LeaseId(9)))).unwrap_err(),
            CoreError::LeaseNotFound(LeaseId(9))
        );
        let missing = instance(3, false).key();
        assert_eq!(
            e.apply(Millis(0), Op::Delete { key: missing.clone() }).unwrap_err(),
            CoreError::KeyNotFound(missing)
        );
        let cfg = Record::Config(ConfigEntry::new(ConfigKey::parse("a").unwrap(), "x").unwrap().into());
        e.grant_lease(Millis(0), LeaseId(1), Duration::from_secs(1)).unwrap();
        assert_eq!(
            e.apply(Millis(0), put(cfg, Some(LeaseId(1)))).unwrap_err(),
            CoreError::Invalid(ValidationError::LeaseOnNonInstance)
        );
        assert_eq!(e.revision(), Revision(5));
        assert!(e.is_empty());
    }

    #[test]
    fn persist_follows_durability() {
        let mut e = Engine::new(Revision(0), vec![], 100);
        e.grant_lease(Millis(0), LeaseId(1), Duration::from_secs(5)).unwrap();
        let p = e.prepare(Millis(0), put(instance(1, false), None)).unwrap();
        assert!(matches!(p.persist(), Persist::Put { path, .. } if path == "instances/ns/g/orders/10.0.0.1:1"));
        e.commit(Millis(0), p);
        // Replacing a persistent instance by an ephemeral one removes it from disk.
        let p = e.prepare(Millis(0), put(instance(1, true), Some(LeaseId(1)))).unwrap();
        assert_eq!(p.persist(), &Persist::Delete { path: "instances/ns/g/orders/10.0.0.1:1".into() });
        e.commit(Millis(0), p);
        let p = e.prepare(Millis(0), Op::Delete { key: instance(1, true).key() }).unwrap();
        assert_eq!(p.persist(), &Persist::Nothing);
    }

    #[test]
    fn lease_expiry_removes_ephemeral_instances() {
        let mut e = Engine::new(Revision(0), vec![], 100);
        e.grant_lease(Millis(0), LeaseId(1), Duration::from_secs(10)).unwrap();
        e.apply(Millis(0), put(instance(1, true), Some(LeaseId(1)))).unwrap();
        e.apply(Millis(0), put(instance(2, true), Some(LeaseId(1)))).unwrap();
        e.apply(Millis(0), put(instance(3, false), None)).unwrap();
        e.keepalive(Millis(5_000), LeaseId(1)).unwrap();
        assert!(e.expire(Millis(14_999)).is_empty());
        assert_eq!(e.due_removals(Millis(15_000)), 2);
        let removed = e.expire(Millis(15_000));
        assert_eq!(removed.iter().map(|ev| ev.revision).collect::<Vec<_>>(), vec![Revision(4), Revision(5)]);
        assert!(removed.iter().all(|ev| matches!(ev.change, Change::Remove { .. })));
        assert_eq!(e.len(), 1, "the persistent instance never expires");
        assert_eq!(e.keepalive(Millis(15_001), LeaseId(1)), Err(CoreError::LeaseNotFound(LeaseId(1))));
    }

    #[test]
    fn re_registering_under_a_new_lease_detaches_the_old_one() {
        let mut e = Engine::new(Revision(0), vec![], 100);
        e.grant_lease(Millis(0), LeaseId(1), Duration::from_secs(1)).unwrap();
        e.grant_lease(Millis(0), LeaseId(2), Duration::from_secs(60)).unwrap();
        e.apply(Millis(0), put(instance(1, true), Some(LeaseId(1)))).unwrap();
        e.apply(Millis(0), put(instance(1, true), Some(LeaseId(2)))).unwrap();
        assert!(e.expire(Millis(2_000)).is_empty(), "the instance moved to lease 2");
        assert_eq!(e.revoke_lease(LeaseId(2)).unwrap().len(), 1);
        assert!(e.is_empty());
    }

    #[test]
    fn re_registering_under_the_same_lease_keeps_it_attached() {
        let mut e = Engine::new(Revision(0), vec![], 100);
        e.grant_lease(Millis(0), LeaseId(1), Duration::from_secs(1)).unwrap();
        e.apply(Millis(0), put(instance(1, true), Some(LeaseId(1)))).unwrap();
        e.apply(Millis(0), put(instance(1, true), Some(LeaseId(1)))).unwrap();
        assert_eq!(e.lease_key_count(LeaseId(1)), Ok(1));
        assert_eq!(e.expire(Millis(1_000)).len(), 1);
        assert!(e.is_empty());
    }

    #[test]
    fn the_table_agrees_with_a_map_over_puts_and_deletes() {
        let mut e = Engine::new(Revision(0), vec![instance(7, false)], 10);
        let mut expected = std::collections::BTreeMap::from([(instance(7, false).key(), Revision(0))]);
        let mut x: u32 = 12_345;
        for _ in 0..3_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let record = instance(u16::try_from(x >> 16 & 0x1ff).unwrap() + 1, false);
            let key = record.key();
            if x & 0x8000 == 0 {
                let event = e.apply(Millis(0), put(record, None)).unwrap();
                expected.insert(key, event.revision);
            } else {
                let result = e.apply(Millis(0), Op::Delete { key: key.clone() });
                assert_eq!(result.is_ok(), expected.remove(&key).is_some());
            }
            assert_eq!(e.len(), expected.len());
        }
        for (key, revision) in &expected {
            assert_eq!(e.get_with_revision(key).map(|(r, rev)| (r.key(), rev)), Some((key.clone(), *revision)));
        }
        let snapshot = e.snapshot(&Scope::All);
        assert_eq!(
            snapshot.records.iter().map(Record::key).collect::<Vec<_>>(),
            expected.into_keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn watch_resumes_inside_the_window_and_resets_outside() {
        let mut e = Engine::new(Revision(0), vec![], 3);
        for port in 1..=5 {
            e.apply(Millis(0), put(instance(port, false), None)).unwrap();
        }
        let all = Scope::All;
        // Window holds revisions 3, 4, 5: resuming from 2 replays exactly 3..=5.
        let replay = e.watch_from(Revision(2), &all);
        assert_eq!(replay.iter().map(|ev| ev.revision.0).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(e.watch_from(Revision(5), &all).is_empty());
        // Revision 1 is compacted: a single Reset with everything.
        let reset = e.watch_from(Revision(1), &all);
        assert_eq!(reset.len(), 1);
        match &reset[0].change {
            Change::Reset { snapshot } => {
                assert_eq!(snapshot.revision, Revision(5));
                assert_eq!(snapshot.records.len(), 5);
            }
            other => panic!("expected a reset, got {other:?}"),
        }
        // A revision from the future (another store, or a restart) also resets.
        assert!(matches!(e.watch_from(Revision(99), &all)[0].change, Change::Reset { .. }));
    }

    #[test]
    fn a_restarted_engine_resets_old_watchers() {
        let e = Engine::new(Revision(100), vec![instance(1, false)], 10);
        assert!(matches!(e.watch_from(Revision(50), &Scope::All)[0].change, Change::Reset { .. }));
        assert!(e.watch_from(Revision(100), &Scope::All).is_empty());
    }

    #[test]
    fn watch_filters_by_scope() {
        let mut e = Engine::new(Revision(0), vec![], 10);
        e.apply(Millis(0), put(instance(1, false), None)).unwrap();
        let other = Instance::new(ServiceKey::parse("other/g/x").unwrap(), "10.0.0.2".parse().unwrap(), 1);
        let mut other = other;
        other.ephemeral = false;
        e.apply(Millis(0), put(Record::Instance(other.into()), None)).unwrap();
        let ns = Scope::Namespace("ns".parse().unwrap());
        assert_eq!(e.watch_from(Revision(1), &ns).len(), 0, "revision 2 is in another namespace");
        match &e.watch_from(Revision(0), &ns)[0].change {
            Change::Reset { snapshot } => assert_eq!(snapshot.records.len(), 1),
            other => panic!("from 0 is a reset, got {other:?}"),
        }
        assert_eq!(e.snapshot(&ns).records.len(), 1);
    }
}
