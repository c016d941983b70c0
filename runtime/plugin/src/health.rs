//! The health slot ([`HealthSlot`]): a health policy's verdicts on probes and on request
//! outcomes, through the slot core every policy kind shares (`crate::policy`), and how the
//! health kind's calls reach a native policy, a 0.1.0 component and a 0.2.0 resource.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crossbeam_queue::SegQueue;
use sextant_builtins::{HealthPolicy, Outcome, ProbeResult, Snapshot, Status, Verdict};
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use crate::bindings::v1::health::HealthPlugin;
use crate::bindings::v1::health::exports::sextant::plugin::health as wh;
use crate::bindings::v2::health::exports::sextant::plugin::health as wh2;
use crate::lifecycle::{Observer, SlotStatus, VersionStatus};
use crate::policy::{PolicyKind, PolicySlot, SelfTestCall};
use crate::published::Published;
use crate::shared::Guest as SharedGuest;
use crate::state::{HostState, KindPre};
use crate::{CallFault, HostConfig, LoadError, PluginHost, PluginKind, PluginSpec, SlotError};

/// The health kind: calls on probes and on request outcomes, each answered by a verdict.
pub(crate) struct Health;

/// A call on a health policy.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HealthCall<'a> {
    Probe(&'a ProbeResult),
    Outcome(&'a Outcome),
}

/// Status and verdict conversions for one contract version's `health` interface.
macro_rules! health_conversions {
    ($status:ident, $verdict:ident, $probe:ident, $outcome:ident, $wh:ident) => {
        fn $status(s: &Status) -> $wh::Status {
            match s {
                Status::Http(c) => $wh::Status::Http(*c),
                Status::Connected => $wh::Status::Connected,
                Status::Timeout => $wh::Status::Timeout,
                Status::Failed(m) => $wh::Status::Failed(m.clone()),
            }
        }

        fn $verdict(v: $wh::Verdict) -> Verdict {
            match v {
                $wh::Verdict::Unchanged => Verdict::Unchanged,
                $wh::Verdict::Healthy => Verdict::Healthy,
                $wh::Verdict::Unhealthy => Verdict::Unhealthy,
                $wh::Verdict::Eject(ms) => Verdict::Eject(ms),
            }
        }

        fn $probe(p: &ProbeResult) -> $wh::ProbeResult {
            $wh::ProbeResult {
                endpoint: p.endpoint,
                status: $status(&p.status),
                latency: p.latency,
                body: p.body.clone(),
            }
        }

        fn $outcome(o: &Outcome) -> $wh::Outcome {
            $wh::Outcome { endpoint: o.endpoint, status: $status(&o.status), latency: o.latency }
        }
    };
}

health_conversions!(wit_status, verdict, wit_probe, wit_outcome, wh);
health_conversions!(wit_status2, verdict2, wit_probe2, wit_outcome2, wh2);

impl PolicyKind for Health {
    const KIND: PluginKind = PluginKind::Health;
    type Call<'a> = HealthCall<'a>;
    type Answer = Verdict;
    type Native = Box<dyn HealthPolicy>;
    type Guest = HealthPlugin;

    fn native(name: &str, config: &str) -> Result<Self::Native, String> {
        sextant_builtins::health_policy(name, config)
    }

    fn instantiate(pre: &KindPre, store: &mut Store<HostState>) -> Option<wasmtime::Result<Self::Guest>> {
        match pre {
            KindPre::Health(pre) => Some(pre.instantiate(store)),
            _ => None,
        }
    }

    fn init(guest: &Self::Guest, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Result<(), String>> {
        guest.sextant_plugin_health().call_init(store, config)
    }

    fn update_native(policy: &mut Self::Native, model: &Snapshot, env: &mut HostState) -> Result<(), String> {
        policy.update(model, env)
    }

    fn call_native(policy: &mut Self::Native, call: HealthCall<'_>, env: &mut HostState) -> Verdict {
        match call {
            HealthCall::Probe(p) => policy.on_probe(p, env),
            HealthCall::Outcome(o) => policy.on_outcome(o, env),
        }
    }

    fn update_guest(
        guest: &Self::Guest,
        store: &mut Store<HostState>,
        published: &Published,
    ) -> wasmtime::Result<Result<(), String>> {
        guest.sextant_plugin_health().call_update(store, &published.wit)
    }

    fn call_guest(
        guest: &Self::Guest,
        store: &mut Store<HostState>,
        call: HealthCall<'_>,
    ) -> wasmtime::Result<Verdict> {
        let g = guest.sextant_plugin_health();
        match call {
            HealthCall::Probe(p) => g.call_on_probe(store, &wit_probe(p)).map(verdict),
            HealthCall::Outcome(o) => g.call_on_outcome(store, &wit_outcome(o)).map(verdict),
        }
    }

    fn update_shared(
        guest: &SharedGuest,
        store: &mut Store<HostState>,
        handle: ResourceAny,
        published: &Published,
    ) -> Option<wasmtime::Result<Result<(), String>>> {
        let SharedGuest::Health(g) = guest else { return None };
        Some(g.sextant_plugin_health().health().call_update(store, handle, &published.wit))
    }

    fn call_shared(
        guest: &SharedGuest,
        store: &mut Store<HostState>,
        handle: ResourceAny,
        call: HealthCall<'_>,
    ) -> Option<wasmtime::Result<Verdict>> {
        let SharedGuest::Health(g) = guest else { return None };
        let g = g.sextant_plugin_health().health();
        Some(match call {
            HealthCall::Probe(p) => g.call_on_probe(store, handle, &wit_probe2(p)).map(verdict2),
            HealthCall::Outcome(o) => g.call_on_outcome(store, handle, &wit_outcome2(o)).map(verdict2),
        })
    }

    /// Probes and outcomes are answered at the pace of requests: the pick deadline.
    fn deadline(config: &HostConfig) -> Duration {
        config.pick_deadline
    }

    fn neutral(_call: HealthCall<'_>, _published: &Published) -> Verdict {
        Verdict::Unchanged
    }

    /// A probe and an outcome of each status on every endpoint of the synthetic snapshot.
    fn self_test(run: &mut SelfTestCall<'_, Self>, _endpoints: usize) -> Result<(), LoadError> {
        let fail = |what: &str, f: CallFault| LoadError::SelfTest(format!("{what} {f}"));
        for (i, status) in [Status::Http(200), Status::Timeout, Status::Http(503), Status::Connected].iter().enumerate()
        {
            let endpoint = u32::try_from(i).unwrap_or(0);
            let probe = ProbeResult { endpoint, status: status.clone(), latency: 1_000_000, body: b"ok".to_vec() };
            run(HealthCall::Probe(&probe)).map_err(|f| fail("on-probe", f))?;
            let outcome = Outcome { endpoint, status: status.clone(), latency: 1_000_000 };
            run(HealthCall::Outcome(&outcome)).map_err(|f| fail("on-outcome", f))?;
        }
        Ok(())
    }
}

/// The health slot of one service: the health policy's verdicts on probes and on request
/// outcomes, with the lifecycle every slot has (self-test before a swap, fallback to the
/// native default per call, automatic rollback, history).
#[derive(Debug)]
pub struct HealthSlot {
    slot: PolicySlot<Health>,
    /// Outcomes reported and not yet drained, each with the epoch of the snapshot its
    /// endpoint index refers to.
    /// (Grows in small blocks as outcomes arrive: an idle service's slot holds none.)
    outcomes: SegQueue<(u64, Outcome)>,
    /// How many are queued (the bound is kept with it).
    queued: AtomicUsize,
    /// The epoch of the snapshot the policy has (mirrored for [`HealthSlot::epoch`]).
    epoch: AtomicU64,
    /// Outcomes not queued because the queue was full.
    dropped: AtomicU64,
}

/// How many outcomes wait for [`HealthSlot::drain`] at most; more are dropped (counted).
pub const OUTCOME_QUEUE: usize = 16_384;

impl HealthSlot {
    /// A health slot running the built-in `default` (`standard`, `consecutive`, `outlier`),
    /// also the native answer behind any plugin loaded later.
    ///
    /// # Errors
    /// An unknown built-in or an invalid configuration.
    pub fn new(host: &PluginHost, service: &str, default: PluginSpec) -> Result<Self, LoadError> {
        Ok(Self {
            slot: PolicySlot::new(host, service, default)?,
            outcomes: SegQueue::new(),
            queued: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Publishes a new snapshot to the policy. Outcomes reported against an older one are
    /// discarded when drained (their endpoint indices may name other endpoints now).
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        let epoch = self.slot.set_snapshot(snapshot);
        self.epoch.store(epoch, Relaxed);
    }

    /// The epoch of the snapshot the policy has: endpoint indices are valid for it. A caller
    /// that reports outcomes later keeps the epoch its indices came from.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Relaxed)
    }

    /// Queues a request outcome for the policy, without a lock and without calling it (the
    /// request path): [`HealthSlot::drain`] hands the queue to the policy and returns its
    /// verdicts. `epoch` is the snapshot epoch `outcome.endpoint` indexes. False when the
    /// queue is full ([`OUTCOME_QUEUE`]): the outcome is dropped and counted.
    pub fn report(&self, epoch: u64, outcome: Outcome) -> bool {
        if self.queued.fetch_add(1, Relaxed) >= OUTCOME_QUEUE {
            self.queued.fetch_sub(1, Relaxed);
            self.dropped.fetch_add(1, Relaxed);
            return false;
        }
        self.outcomes.push((epoch, outcome));
        true
    }

    /// Hands the queued outcomes to the policy, in the order they were reported (one lock for
    /// the batch), and returns the verdicts that change something, with the endpoint index
    /// each is about (of the current snapshot). Outcomes of an older snapshot are discarded.
    pub fn drain(&self) -> Vec<(u32, Verdict)> {
        let mut verdicts = Vec::new();
        if self.outcomes.is_empty() {
            return verdicts;
        }
        let mut state = self.slot.state.lock();
        let current = state.published.epoch;
        while let Some((epoch, outcome)) = self.outcomes.pop() {
            self.queued.fetch_sub(1, Relaxed);
            if epoch != current {
                continue;
            }
            let verdict = self.slot.call_locked(&mut state, HealthCall::Outcome(&outcome));
            if verdict != Verdict::Unchanged {
                verdicts.push((outcome.endpoint, verdict));
            }
        }
        verdicts
    }

    /// Outcomes waiting for [`HealthSlot::drain`].
    #[must_use]
    pub fn pending(&self) -> usize {
        self.queued.load(Relaxed)
    }

    /// Outcomes dropped because the queue was full.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// The policy's verdict on a probe result.
    pub fn on_probe(&self, result: &ProbeResult) -> Verdict {
        self.slot.call(HealthCall::Probe(result))
    }

    /// The policy's verdict on a request outcome, now (the call holds the slot's lock: off
    /// the request path, prefer [`HealthSlot::report`] and [`HealthSlot::drain`]).
    pub fn on_outcome(&self, outcome: &Outcome) -> Verdict {
        self.slot.call(HealthCall::Outcome(outcome))
    }

    /// Loads a new health policy (a component of another kind is refused). Nothing changes
    /// when it fails.
    ///
    /// # Errors
    /// What was wrong with the plugin.
    pub fn load(&self, spec: PluginSpec) -> Result<VersionStatus, LoadError> {
        self.slot.load(spec)
    }

    /// Goes back to the previous policy.
    ///
    /// # Errors
    /// Nothing to roll back to, or it no longer builds.
    pub fn rollback(&self) -> Result<VersionStatus, SlotError> {
        self.slot.rollback()
    }

    /// Status of the active policy and the slot's history.
    #[must_use]
    pub fn status(&self) -> SlotStatus {
        self.slot.status()
    }

    /// Sets who is told of automatic rollbacks (once; later calls are ignored).
    pub fn observe(&self, observer: Observer) {
        self.slot.observe(observer);
    }
}
