//! The instances one QUIC connection registered: what its registration limit counts, and the
//! records of the connection-bound ones, put again on a new lease when the store lost the old.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use sextant_core::{Instance, InstanceId, InstanceKey, ServiceKey};

/// One registration: the record as registered (its key is the record's own), and whether it
/// hangs on the connection's lease.
#[derive(Debug)]
struct Held {
    instance: Arc<Instance>,
    bound: bool,
}

/// The registrations, keyed by instance key. A slot is a pointer and a flag: the key's parts are
/// the record's, shared with the registry (a map from [`InstanceKey`] would copy 64 bytes of
/// key into every slot, at a million registrations a tenth of the server's memory). A record
/// replaced or removed through another door stays here until this connection registers or
/// deregisters its key again, as the key alone did before: the registration limit bounds it.
#[derive(Debug, Default)]
pub(crate) struct Registrations {
    table: HashTable<Held>,
    hasher: foldhash::fast::RandomState,
}

fn parts(key: &InstanceKey) -> (&ServiceKey, &InstanceId) {
    (&key.service, &key.id)
}

fn parts_of(instance: &Instance) -> (&ServiceKey, &InstanceId) {
    (&instance.service, &instance.id)
}

impl Registrations {
    /// Number of registrations held.
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether `key` is held.
    pub(crate) fn contains(&self, key: &InstanceKey) -> bool {
        let key = parts(key);
        self.table.find(self.hasher.hash_one(key), |h| parts_of(&h.instance) == key).is_some()
    }

    /// Holds `instance` (`bound`: on the connection's lease), replacing a registration of its key.
    pub(crate) fn insert(&mut self, instance: Arc<Instance>, bound: bool) {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(parts_of(&instance));
        let held = Held { instance, bound };
        match self.table.entry(
            hash,
            |h| parts_of(&h.instance) == parts_of(&held.instance),
            |h| hasher.hash_one(parts_of(&h.instance)),
        ) {
            Entry::Occupied(mut slot) => *slot.get_mut() = held,
            Entry::Vacant(slot) => {
                slot.insert(held);
            }
        }
    }

    /// Lets `key` go.
    pub(crate) fn remove(&mut self, key: &InstanceKey) {
        let key = parts(key);
        if let Ok(slot) = self.table.find_entry(self.hasher.hash_one(key), |h| parts_of(&h.instance) == key) {
            slot.remove();
        }
    }

    /// The connection-bound registrations' records.
    pub(crate) fn bound(&self) -> impl Iterator<Item = &Arc<Instance>> {
        self.table.iter().filter(|h| h.bound).map(|h| &h.instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(port: u16) -> Arc<Instance> {
        Arc::new(Instance::new(ServiceKey::parse("ns/g/orders").unwrap(), "10.0.0.1".parse().unwrap(), port))
    }

    #[test]
    fn counts_keys_once_and_keeps_the_bound_records() {
        let mut held = Registrations::default();
        for port in 1..=100 {
            held.insert(instance(port), port % 2 == 0);
        }
        held.insert(instance(2), false);
        held.insert(instance(3), true);
        assert_eq!(held.len(), 100, "a key registered again is counted once");
        assert!(held.contains(&instance(7).key()));
        held.remove(&instance(7).key());
        held.remove(&instance(7).key());
        assert!(!held.contains(&instance(7).key()));
        assert!(!held.contains(&instance(101).key()));
        let mut bound: Vec<u16> = held.bound().map(|i| i.port).collect();
        bound.sort_unstable();
        let expected: Vec<u16> = (1..=100).filter(|p| (p % 2 == 0 && *p != 2) || *p == 3).collect();
        assert_eq!(bound, expected, "the last registration of a key says whether it is bound");
        assert_eq!(held.len(), 99);
    }
}
