//! A service's slots on a server and which plugin record each runs: the most specific
//! binding that covers the service, the newest load among equals, no binding the native
//! default; and the record history rules (bad versions skipped, the history capped).
//!
//! A server answers picks (`sextant pick`) but carries no traffic, so it keeps the balancer
//! alone ([`SlotPlan::picks_only`]): health policies and schedulers run where traffic is (a
//! gateway's router, the same [`Slots`] bundle), and a server validates them at load only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use sextant_core::{
    BadVersion, PLUGIN_HISTORY, PluginVersion, ServiceKey, ServiceSnapshot, SnapshotHandle, ValidationError,
};
#[cfg(doc)]
use sextant_plugin::SlotPlan;
use sextant_plugin::{BalancerSlot, Desired, PluginKind, SlotStatus, Slots, Trial, snapshot_of};

/// The slots of one service on a server.
#[derive(Debug)]
pub struct ServiceSlots {
    pub(crate) service: ServiceKey,
    pub(crate) handle: SnapshotHandle,
    /// Revision of the snapshot the slots run (`u64::MAX`: none yet).
    pub(crate) applied: AtomicU64,
    /// Serializes snapshot application and activations.
    pub(crate) update: Mutex<[Option<Desired>; 3]>,
    /// Why the last activation of each kind failed (none: it succeeded, or none was tried).
    pub(crate) errors: Mutex<[Option<String>; 3]>,
    /// The candidate the balancer runs beside its version while a rollout runs: what was
    /// last applied, and whether it failed (then it is not tried again until the rollout
    /// changes, and the slot has no candidate).
    pub(crate) trial: Mutex<Option<(Trial, bool)>>,
    pub(crate) slots: Slots,
}

impl ServiceSlots {
    /// The balancer slot.
    #[must_use]
    pub fn balancer(&self) -> &BalancerSlot {
        self.slots.balancer()
    }

    /// The bundle (a server's holds the balancer alone).
    #[must_use]
    pub fn slots(&self) -> &Slots {
        &self.slots
    }

    /// The registry snapshot the slots follow.
    #[must_use]
    pub fn snapshot(&self) -> Arc<ServiceSnapshot> {
        self.handle.load_full()
    }

    /// Applies the service's current snapshot if the slots run an older one.
    pub fn refresh(&self) {
        let current = self.handle.load();
        if current.revision.0 == self.applied.load(Relaxed) {
            return;
        }
        let _guard = self.update.lock();
        let current = self.handle.load_full();
        if current.revision.0 == self.applied.load(Relaxed) {
            return;
        }
        let model = snapshot_of(&current);
        // The balancer's route carries the instances (the model's order: the selected ones).
        self.slots.balancer().set_snapshot_with(model, current.selected().cloned().collect::<Vec<_>>());
        self.applied.store(current.revision.0, Relaxed);
    }

    pub(crate) fn status(&self) -> Vec<(PluginKind, SlotStatus)> {
        self.slots.status()
    }
}

pub(crate) fn parse_kind(kind: &str) -> Result<PluginKind, ValidationError> {
    match kind {
        "balancer" => Ok(PluginKind::Balancer),
        "health" => Ok(PluginKind::Health),
        "scheduler" => Ok(PluginKind::Scheduler),
        other => Err(ValidationError::BadPluginKind(other.into())),
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Takes the newest version not marked bad off `versions` (dropping bad ones on the way).
pub(crate) fn pop_good(versions: &mut Vec<PluginVersion>, bad: &[BadVersion]) -> Option<PluginVersion> {
    while let Some(v) = versions.pop() {
        if !bad.iter().any(|b| b.sha256 == v.sha256) {
            return Some(v);
        }
    }
    None
}

pub(crate) fn push_history(history: &mut Vec<PluginVersion>, version: PluginVersion) {
    history.push(version);
    let excess = history.len().saturating_sub(PLUGIN_HISTORY);
    history.drain(..excess);
}
