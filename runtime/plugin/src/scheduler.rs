//! The scheduler slot ([`SchedulerSlot`]): weights per endpoint from each window's
//! statistics, through the slot core every policy kind shares (`crate::policy`), and how the
//! scheduler kind's call reaches a native scheduler, a 0.1.0 component and a 0.2.0 resource.

use std::time::Duration;

use sextant_builtins::{EndpointStats, Scheduler, Snapshot};
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use crate::bindings::v1::scheduler::SchedulerPlugin;
use crate::bindings::v1::scheduler::exports::sextant::plugin::scheduler as ws;
use crate::bindings::v2::scheduler::exports::sextant::plugin::scheduler as ws2;
use crate::lifecycle::{Observer, SlotStatus, VersionStatus};
use crate::policy::{PolicyKind, PolicySlot, SelfTestCall};
use crate::published::Published;
use crate::shared::Guest as SharedGuest;
use crate::state::{HostState, KindPre};
use crate::{CallFault, HostConfig, LoadError, PluginHost, PluginKind, PluginSpec, SlotError};

/// The scheduler kind: one call per window, the endpoints' statistics in, weights out.
pub(crate) struct Schedule;

/// Per-endpoint statistics as one contract version's `endpoint-stats` records.
macro_rules! wit_stats {
    ($ws:ident, $stats:expr) => {
        $stats
            .iter()
            .map(|s| $ws::EndpointStats {
                rps: s.rps,
                latency_p50: s.latency_p50,
                latency_p99: s.latency_p99,
                requests: s.requests,
                errors: s.errors,
                overloaded: s.overloaded,
                retry_after_ms: s.retry_after_ms,
                age_ms: s.age_ms,
            })
            .collect::<Vec<_>>()
    };
}

impl PolicyKind for Schedule {
    const KIND: PluginKind = PluginKind::Scheduler;
    type Call<'a> = &'a [EndpointStats];
    type Answer = Vec<u32>;
    type Native = Box<dyn Scheduler>;
    type Guest = SchedulerPlugin;

    fn native(name: &str, config: &str) -> Result<Self::Native, String> {
        sextant_builtins::scheduler(name, config)
    }

    fn instantiate(pre: &KindPre, store: &mut Store<HostState>) -> Option<wasmtime::Result<Self::Guest>> {
        match pre {
            KindPre::Scheduler(pre) => Some(pre.instantiate(store)),
            _ => None,
        }
    }

    fn init(guest: &Self::Guest, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Result<(), String>> {
        guest.sextant_plugin_scheduler().call_init(store, config)
    }

    fn update_native(policy: &mut Self::Native, model: &Snapshot, env: &mut HostState) -> Result<(), String> {
        policy.update(model, env)
    }

    fn call_native(policy: &mut Self::Native, stats: &[EndpointStats], env: &mut HostState) -> Vec<u32> {
        policy.schedule(stats, env)
    }

    fn update_guest(
        guest: &Self::Guest,
        store: &mut Store<HostState>,
        published: &Published,
    ) -> wasmtime::Result<Result<(), String>> {
        guest.sextant_plugin_scheduler().call_update(store, &published.wit)
    }

    fn call_guest(
        guest: &Self::Guest,
        store: &mut Store<HostState>,
        stats: &[EndpointStats],
    ) -> wasmtime::Result<Vec<u32>> {
        guest.sextant_plugin_scheduler().call_schedule(store, &wit_stats!(ws, stats))
    }

    fn update_shared(
        guest: &SharedGuest,
        store: &mut Store<HostState>,
        handle: ResourceAny,
        published: &Published,
    ) -> Option<wasmtime::Result<Result<(), String>>> {
        let SharedGuest::Scheduler(g) = guest else { return None };
        Some(g.sextant_plugin_scheduler().scheduler().call_update(store, handle, &published.wit))
    }

    fn call_shared(
        guest: &SharedGuest,
        store: &mut Store<HostState>,
        handle: ResourceAny,
        stats: &[EndpointStats],
    ) -> Option<wasmtime::Result<Vec<u32>>> {
        let SharedGuest::Scheduler(g) = guest else { return None };
        Some(g.sextant_plugin_scheduler().scheduler().call_schedule(store, handle, &wit_stats!(ws2, stats)))
    }

    /// Once per window, off the request path: the update deadline.
    fn deadline(config: &HostConfig) -> Duration {
        config.update_deadline
    }

    /// One weight per endpoint, none above the registry's maximum.
    fn check(weights: &Vec<u32>, endpoints: usize) -> Result<(), CallFault> {
        if weights.len() != endpoints {
            return Err(CallFault::Contract(format!("{} weights for {endpoints} endpoints", weights.len())));
        }
        if weights.iter().any(|&x| x > sextant_core::model::MAX_WEIGHT) {
            return Err(CallFault::Contract(format!("a weight above {}", sextant_core::model::MAX_WEIGHT)));
        }
        Ok(())
    }

    /// The registered weights.
    fn neutral(_stats: &[EndpointStats], published: &Published) -> Vec<u32> {
        published.model.endpoints.iter().map(|e| e.weight).collect()
    }

    /// One window of statistics for every endpoint of the synthetic snapshot.
    fn self_test(run: &mut SelfTestCall<'_, Self>, endpoints: usize) -> Result<(), LoadError> {
        let stats =
            vec![EndpointStats { rps: 10.0, requests: 100, age_ms: 60_000, ..EndpointStats::default() }; endpoints];
        run(&stats).map_err(|f| LoadError::SelfTest(format!("schedule {f}")))?;
        Ok(())
    }
}

/// The scheduler slot of one service: weights per endpoint from each window's statistics,
/// with the lifecycle every slot has.
#[derive(Debug)]
pub struct SchedulerSlot(PolicySlot<Schedule>);

impl SchedulerSlot {
    /// A scheduler slot running the built-in `default` (`adaptive`, `slow-start`,
    /// `gray-split`), also the native answer behind any plugin loaded later.
    ///
    /// # Errors
    /// An unknown built-in or an invalid configuration.
    pub fn new(host: &PluginHost, service: &str, default: PluginSpec) -> Result<Self, LoadError> {
        PolicySlot::new(host, service, default).map(Self)
    }

    /// Publishes a new snapshot to the scheduler.
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        self.0.set_snapshot(snapshot);
    }

    /// Weights for the snapshot's endpoints from their statistics (in the snapshot's order).
    /// When the scheduler and the native default both fail, the registered weights.
    pub fn schedule(&self, stats: &[EndpointStats]) -> Vec<u32> {
        self.0.call(stats)
    }

    /// Loads a new scheduler (a component of another kind is refused). Nothing changes when
    /// it fails.
    ///
    /// # Errors
    /// What was wrong with the plugin.
    pub fn load(&self, spec: PluginSpec) -> Result<VersionStatus, LoadError> {
        self.0.load(spec)
    }

    /// Goes back to the previous scheduler.
    ///
    /// # Errors
    /// Nothing to roll back to, or it no longer builds.
    pub fn rollback(&self) -> Result<VersionStatus, SlotError> {
        self.0.rollback()
    }

    /// Status of the active scheduler and the slot's history.
    #[must_use]
    pub fn status(&self) -> SlotStatus {
        self.0.status()
    }

    /// Sets who is told of automatic rollbacks (once; later calls are ignored).
    pub fn observe(&self, observer: Observer) {
        self.0.observe(observer);
    }
}
