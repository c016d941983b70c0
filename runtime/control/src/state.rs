//! What the plugin manager shares with its watcher: the slots by service, the compiled
//! components of the bound records, the failures `plugin list` shows, and the work queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use sextant_core::ServiceKey;
use sextant_plugin::{AutoRollback, Compiled, Defaults, PluginHost};
use sextant_proto::PluginFailure;
use sextant_store::Registry;
use tokio::sync::mpsc;

use crate::fault::{FaultCounts, FleetRule};
use crate::slots::{ServiceSlots, unix_ms};

/// Failures kept for `plugin list`.
const MAX_FAILURES: usize = 32;

/// What the watcher does besides following the registry.
pub(crate) enum Work {
    /// Activate the bound plugins of one service (its slots were just created).
    Service(ServiceKey),
    /// A slot rolled back on its own: a fault for the fleet's verdict (`verdict.rs`).
    Bad(AutoRollback),
}

/// The plugin manager's state, shared with its watcher task.
pub(crate) struct Inner<S> {
    pub(crate) host: PluginHost,
    pub(crate) registry: Registry<S>,
    pub(crate) defaults: Defaults,
    pub(crate) services: RwLock<HashMap<ServiceKey, Arc<ServiceSlots>>>,
    pub(crate) failures: Mutex<VecDeque<PluginFailure>>,
    /// Compiled components of the bound records, by sha256, so a slot created on a pick
    /// starts on its plugin at once.
    pub(crate) compiled: Mutex<HashMap<String, Arc<Compiled>>>,
    pub(crate) dirty: mpsc::UnboundedSender<Work>,
    /// One activation pass at a time (the watcher, and loads waiting for their own).
    pub(crate) reconcile: tokio::sync::Mutex<()>,
    /// One plugin record write at a time on this server (`record.rs`).
    pub(crate) writes: tokio::sync::Mutex<()>,
    /// How many hosts' faults mark a version bad (`verdict.rs`).
    pub(crate) fleet: Mutex<FleetRule>,
    /// Who this server is in the faults it reports about its own slots.
    pub(crate) identity: Mutex<String>,
    /// Faults taken, by decision and reason.
    pub(crate) fault_counts: Mutex<FaultCounts>,
}

impl<S> Inner<S> {
    /// Records a plugin that could not be loaded (the newest [`MAX_FAILURES`] are kept).
    pub(crate) fn failed(&self, plugin: &str, source: &str, error: &dyn std::fmt::Display) {
        tracing::warn!(plugin, source, %error, "plugin not loaded");
        let mut failures = self.failures.lock();
        failures.push_back(PluginFailure {
            plugin: plugin.into(),
            source: source.into(),
            error: error.to_string(),
            at: unix_ms() / 1000,
        });
        while failures.len() > MAX_FAILURES {
            failures.pop_front();
        }
    }
}
