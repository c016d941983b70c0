//! TTL leases, the way ephemeral instances stay alive.
//!
//! An ephemeral instance is attached to a lease. The owner keeps the lease alive (heartbeat);
//! when a lease's deadline passes without a keepalive, [`LeaseTable::take_expired`] hands back
//! the keys attached to it so the caller can remove them. Time is passed in.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

pub use crate::name::LeaseId;
use crate::{CoreError, Millis, RecordKey, ValidationError};

/// Shortest TTL a lease may have.
pub const MIN_TTL: Duration = Duration::from_millis(100);
/// Longest TTL a lease may have.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Millis,
    keys: HashSet<RecordKey>,
}

/// All live leases and their deadlines.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: HashMap<LeaseId, Lease>,
    deadlines: BTreeSet<(Millis, LeaseId)>,
}

/// Checks that a TTL is within [`MIN_TTL`]..=[`MAX_TTL`].
pub fn check_ttl(ttl: Duration) -> Result<(), ValidationError> {
    if ttl < MIN_TTL || ttl > MAX_TTL {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        return Err(ValidationError::TtlOutOfRange { ttl_ms: ms(ttl), min_ms: ms(MIN_TTL), max_ms: ms(MAX_TTL) });
    }
    Ok(())
}

impl LeaseTable {
    /// Grants lease `id` with `ttl`, alive until `now + ttl`.
    pub fn grant(&mut self, now: Millis, id: LeaseId, ttl: Duration) -> Result<(), CoreError> {
        check_ttl(ttl)?;
        if self.leases.contains_key(&id) {
            return Err(CoreError::LeaseExists(id));
        }
        let deadline = now.saturating_add(ttl);
        self.leases.insert(id, Lease { ttl, deadline, keys: HashSet::new() });
        self.deadlines.insert((deadline, id));
        Ok(())
    }

    /// Pushes the deadline of `id` to `now + ttl`; returns the TTL.
    pub fn keepalive(&mut self, now: Millis, id: LeaseId) -> Result<Duration, CoreError> {
        let lease = self.live_mut(now, id)?;
        let old = lease.deadline;
        lease.deadline = now.saturating_add(lease.ttl);
        let (ttl, new) = (lease.ttl, lease.deadline);
        self.deadlines.remove(&(old, id));
        self.deadlines.insert((new, id));
        Ok(ttl)
    }

    /// Whether `id` exists and its deadline has not passed at `now`.
    #[must_use]
    pub fn is_live(&self, now: Millis, id: LeaseId) -> bool {
        self.leases.get(&id).is_some_and(|l| l.deadline > now)
    }

    fn live_mut(&mut self, now: Millis, id: LeaseId) -> Result<&mut Lease, CoreError> {
        match self.leases.get_mut(&id) {
            Some(l) if l.deadline > now => Ok(l),
            _ => Err(CoreError::LeaseNotFound(id)),
        }
    }

    /// Attaches `key` to lease `id` (which must be live).
    pub fn attach(&mut self, now: Millis, id: LeaseId, key: RecordKey) -> Result<(), CoreError> {
        self.live_mut(now, id)?.keys.insert(key);
        Ok(())
    }

    /// Detaches `key` from lease `id`, if attached.
    pub fn detach(&mut self, id: LeaseId, key: &RecordKey) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.remove(key);
        }
    }

    /// Number of keys attached to lease `id`.
    pub fn key_count(&self, id: LeaseId) -> Result<usize, CoreError> {
        self.leases.get(&id).map(|l| l.keys.len()).ok_or(CoreError::LeaseNotFound(id))
    }

    /// Removes lease `id`, returning its attached keys.
    pub fn revoke(&mut self, id: LeaseId) -> Result<Vec<RecordKey>, CoreError> {
        let lease = self.leases.remove(&id).ok_or(CoreError::LeaseNotFound(id))?;
        self.deadlines.remove(&(lease.deadline, id));
        let mut keys: Vec<_> = lease.keys.into_iter().collect();
        keys.sort();
        Ok(keys)
    }

    /// The number of keys attached to leases whose deadline is at or before `now`.
    #[must_use]
    pub fn due_keys(&self, now: Millis) -> usize {
        self.due(now).map(|id| self.leases.get(&id).map_or(0, |l| l.keys.len())).sum()
    }

    fn due(&self, now: Millis) -> impl Iterator<Item = LeaseId> + '_ {
        self.deadlines.range(..=(now, LeaseId(u64::MAX))).map(|(_, id)| *id)
    }

    /// Removes every lease whose deadline is at or before `now`; returns them with their keys.
    pub fn take_expired(&mut self, now: Millis) -> Vec<(LeaseId, Vec<RecordKey>)> {
        let due: Vec<LeaseId> = self.due(now).collect();
        due.into_iter().filter_map(|id| self.revoke(id).ok().map(|keys| (id, keys))).collect()
    }

    /// The earliest deadline, for scheduling the next expiry check.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Millis> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Number of live leases.
    #[must_use]
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there are no leases.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalive_extends_and_expiry_takes_keys() {
        let mut t = LeaseTable::default();
        let id = LeaseId(7);
        t.grant(Millis(0), id, Duration::from_secs(10)).unwrap();
        let key = RecordKey::parse_path("instances/a/b/c/d").unwrap();
        t.attach(Millis(1), id, key.clone()).unwrap();
        assert_eq!(t.keepalive(Millis(9_000), id).unwrap(), Duration::from_secs(10));
        assert!(t.take_expired(Millis(10_000)).is_empty(), "keepalive at 9s moved the deadline to 19s");
        assert_eq!(t.due_keys(Millis(19_000)), 1);
        assert_eq!(t.take_expired(Millis(19_000)), vec![(id, vec![key])]);
        assert!(t.is_empty());
        assert_eq!(t.keepalive(Millis(19_001), id), Err(CoreError::LeaseNotFound(id)));
    }

    #[test]
    fn a_lease_past_its_deadline_is_dead_before_it_is_collected() {
        let mut t = LeaseTable::default();
        t.grant(Millis(0), LeaseId(1), Duration::from_secs(1)).unwrap();
        assert!(t.is_live(Millis(999), LeaseId(1)));
        assert!(!t.is_live(Millis(1000), LeaseId(1)));
        assert_eq!(t.keepalive(Millis(1000), LeaseId(1)), Err(CoreError::LeaseNotFound(LeaseId(1))));
    }

    #[test]
    fn ttl_and_ids_are_checked() {
        let mut t = LeaseTable::default();
        assert!(matches!(
            t.grant(Millis(0), LeaseId(1), Duration::from_millis(10)),
            Err(CoreError::Invalid(ValidationError::TtlOutOfRange { .. }))
        ));
        t.grant(Millis(0), LeaseId(1), Duration::from_secs(1)).unwrap();
        assert_eq!(t.grant(Millis(0), LeaseId(1), Duration::from_secs(1)), Err(CoreError::LeaseExists(LeaseId(1))));
    }

    #[test]
    fn lease_ids_are_strings_in_json_and_numbers_are_accepted() {
        let big = LeaseId(7_587_869_012_345_678_901);
        assert_eq!(serde_json::to_string(&big).unwrap(), "\"7587869012345678901\"");
        assert_eq!(serde_json::from_str::<LeaseId>("\"7587869012345678901\"").unwrap(), big);
        assert_eq!(serde_json::from_str::<LeaseId>("42").unwrap(), LeaseId(42));
        for bad in ["\"12x\"", "-1", "1.5", "\"\"", "null", "\"-3\""] {
            assert!(serde_json::from_str::<LeaseId>(bad).is_err(), "{bad}");
        }
    }
}
