//! One service's state: what a [`Router`](crate::Router) keeps per service (its slots, the
//! live state of each endpoint, the statistics windows) and how it is rebuilt off the pick
//! path when the registry, a health verdict, an ejection, a breaker or the scheduler's
//! weights change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock, Weak};

use std::time::{Duration, Instant};
use tokio::sync::Notify;

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sextant_core::rollout::VersionWindow;
use sextant_core::{Instance, ServiceKey, ServiceSnapshot, SnapshotHandle};
use sextant_plugin::builtins::{Endpoint, EndpointStats, ProbeResult, Snapshot, Verdict};
use sextant_plugin::{
    BalancerSlot, Defaults, HealthSlot, LoadError, LoadTracker, PluginHost, PluginSpec, SchedulerSlot, SlotPlan,
};
use sextant_plugin::{Slots, Split, StatsWindow, TrialChange, VersionStatus};

use crate::clock::Clock;
use crate::discovery::HealthSink;
use crate::explain::{Excluded, Exclusion};
use crate::health::HealthCheck;
use crate::health::Probe;
use crate::resilience::{Breaker, RetryBudget, TokenBucket, millis};
use crate::resilience::{BreakerConfig, RateLimit, RetryConfig};
use crate::rotation::{LocalHealth, rotation};
use crate::trial::TrialWindows;

/// How traffic to one service is handled.
///
/// It is also the policy part of a gateway's configuration file
/// ([`GatewayFile`](crate::config::GatewayFile)): serialized, a plugin is its built-in's name
/// (a name that is not a built-in of its kind is refused), durations are milliseconds, every
/// field may be left out (its default) and an unknown field is refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServicePolicy {
    /// The balancer (default: [`Defaults`]' native `peak-ewma`, as on every host).
    #[serde(serialize_with = "builtin::name", deserialize_with = "builtin::balancer")]
    pub balancer: PluginSpec,
    /// The health policy (default: [`Defaults`]' native `standard`: consecutive thresholds
    /// on probes, outlier detection on traffic).
    #[serde(serialize_with = "builtin::name", deserialize_with = "builtin::health")]
    pub health: PluginSpec,
    /// The scheduler; none (the default) keeps the registered weights.
    #[serde(serialize_with = "builtin::optional_name", deserialize_with = "builtin::scheduler")]
    pub scheduler: Option<PluginSpec>,
    /// How often statistics are cut (and the scheduler called).
    #[serde(with = "millis")]
    pub window: Duration,
    /// Active health checks; none: passive only.
    pub health_check: Option<HealthCheck>,
    /// Per-endpoint circuit breaker.
    pub breaker: BreakerConfig,
    /// Retries (used by callers that retry, such as the HTTP gateway).
    pub retry: RetryConfig,
    /// Per-service rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Ejected and open-breaker endpoints never exceed this share of the candidates.
    pub max_ejected_percent: u32,
    /// How the gateway answers a balancer's `load.probe` (Prequal's probes).
    pub load_probe: LoadProbe,
}

/// Load probes: what a balancer's `load.probe` makes the gateway do. It sends `GET path` to
/// the endpoint's serving port and keeps the `endpoint-load-metrics` header of the answer as
/// the endpoint's report; at most `per_second` probes a second per service (asks beyond are
/// dropped), each given `timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadProbe {
    /// The path probed.
    pub path: String,
    /// Probes a second per service, at most; 0 turns probing off.
    pub per_second: u32,
    /// A probe not answered within this time is dropped.
    #[serde(with = "millis")]
    pub timeout: Duration,
}

impl Default for LoadProbe {
    fn default() -> Self {
        Self { path: "/load".into(), per_second: 1000, timeout: Duration::from_millis(500) }
    }
}

impl Default for ServicePolicy {
    fn default() -> Self {
        let Defaults { balancer, health, scheduler } = Defaults::default();
        Self {
            balancer,
            health,
            scheduler,
            window: Duration::from_secs(1),
            health_check: None,
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            rate_limit: None,
            max_ejected_percent: 50,
            load_probe: LoadProbe::default(),
        }
    }
}

/// A policy's plugins as a configuration document names them: built-ins, by name.
mod builtin {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use sextant_plugin::PluginSpec;
    use sextant_plugin::builtins::{BALANCERS, HEALTH_POLICIES, SCHEDULERS};

    pub(super) fn name<S: Serializer>(spec: &PluginSpec, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(spec.name())
    }

    #[allow(clippy::ref_option)]
    pub(super) fn optional_name<S: Serializer>(spec: &Option<PluginSpec>, s: S) -> Result<S::Ok, S::Error> {
        match spec {
            Some(spec) => s.serialize_some(spec.name()),
            None => s.serialize_none(),
        }
    }

    fn known<'de, D: Deserializer<'de>>(d: D, what: &str, valid: &[&str]) -> Result<PluginSpec, D::Error> {
        let name = String::deserialize(d)?;
        if valid.contains(&name.as_str()) {
            Ok(PluginSpec::builtin(&name))
        } else {
            Err(D::Error::custom(format!("unknown {what} {name:?}; built-ins: {}", valid.join(", "))))
        }
    }

    pub(super) fn balancer<'de, D: Deserializer<'de>>(d: D) -> Result<PluginSpec, D::Error> {
        known(d, "balancer", BALANCERS)
    }

    pub(super) fn health<'de, D: Deserializer<'de>>(d: D) -> Result<PluginSpec, D::Error> {
        known(d, "health policy", HEALTH_POLICIES)
    }

    pub(super) fn scheduler<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PluginSpec>, D::Error> {
        #[derive(Deserialize)]
        struct Named(#[serde(deserialize_with = "scheduler_name")] PluginSpec);
        fn scheduler_name<'de, D: Deserializer<'de>>(d: D) -> Result<PluginSpec, D::Error> {
            known(d, "scheduler", SCHEDULERS)
        }
        Ok(Option::<Named>::deserialize(d)?.map(|n| n.0))
    }
}

/// A closed window, as shown by [`Router::status`](crate::Router::status).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WindowSummary {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
    /// Failures.
    pub errors: u64,
    /// Overload signals.
    pub overloaded: u64,
}

/// What the gateway tracks about one endpoint across snapshots: its breaker, its statistics
/// window and last closed summary, when it joined, and its active-probe schedule (its live
/// load and last load report are the plugin host's [`EndpointLoad`](sextant_plugin::EndpointLoad)).
#[derive(Debug)]
pub(crate) struct EndpointTracker {
    pub(crate) breaker: Breaker,
    pub(crate) window: ArcSwap<StatsWindow>,
    pub(crate) last: ArcSwap<WindowSummary>,
    pub(crate) joined: Instant,
    pub(crate) probing: AtomicBool,
    pub(crate) next_probe: Mutex<Instant>,
}

/// One endpoint in rotation: what a pick returns (carried by the balancer slot's published list).
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) instance: Arc<Instance>,
    pub(crate) addr: SocketAddr,
    pub(crate) state: Arc<EndpointTracker>,
    /// Index in the health slot's snapshot...
    pub(crate) health_index: u32,
    /// ...of this epoch (outcomes of an older one are discarded).
    pub(crate) health_epoch: u64,
    /// How HTTP names it, made at its first request.
    addressing: OnceLock<Addressing>,
}

/// How a gateway's requests name an endpoint: made once per endpoint in rotation, not per
/// request (each was a format and a parse, or a copy, per request).
#[derive(Debug)]
pub(crate) struct Addressing {
    /// `IP:PORT`, the authority of requests sent to it.
    pub(crate) authority: http::uri::Authority,
    /// The instance id as a response header value (none when it is not a valid one).
    pub(crate) id_header: Option<http::HeaderValue>,
    /// `IP:PORT` as a metrics label.
    pub(crate) label: String,
}

/// `IP:PORT` as the authority of HTTP requests sent there.
pub(crate) fn authority(addr: SocketAddr) -> http::uri::Authority {
    // An IP and a port always make an authority.
    http::uri::Authority::try_from(addr.to_string()).unwrap_or_else(|_| http::uri::Authority::from_static("invalid"))
}

impl Target {
    pub(crate) fn new(
        instance: Arc<Instance>,
        state: Arc<EndpointTracker>,
        health_index: u32,
        health_epoch: u64,
    ) -> Self {
        let addr = SocketAddr::new(instance.ip, instance.port);
        Self { instance, addr, state, health_index, health_epoch, addressing: OnceLock::new() }
    }

    /// How HTTP names this endpoint.
    pub(crate) fn addressing(&self) -> &Addressing {
        self.addressing.get_or_init(|| Addressing {
            authority: authority(self.addr),
            id_header: http::HeaderValue::from_str(self.instance.id.as_str()).ok(),
            label: self.addr.to_string(),
        })
    }
}

#[derive(Debug)]
pub(crate) struct LiveState {
    registry_revision: u64,
    registry: Arc<ServiceSnapshot>,
    pub(crate) endpoints: HashMap<String, Arc<EndpointTracker>>,
    /// Health slot snapshot order (every routable instance).
    pub(crate) health_ids: Vec<Arc<Instance>>,
    /// id → index in `health_ids`.
    health_pos: HashMap<String, u32>,
    /// Scheduler snapshot order (the registry's selected instances).
    pub(crate) scheduler_ids: Vec<String>,
    /// The endpoints the scheduler was last given, their health as this gateway sees it (the
    /// registry's, less what it found down, ejected or breaker-open); none: it must be given
    /// its snapshot.
    scheduler_view: Option<Vec<Endpoint>>,
    /// Down, ejected, reweighted: what the rotation rule reads besides the registry.
    pub(crate) local: LocalHealth,
    window_started: Instant,
    built: bool,
}

/// One service's state.
pub(crate) struct ServiceState {
    pub(crate) service: ServiceKey,
    pub(crate) config: ServicePolicy,
    handle: SnapshotHandle,
    /// The bundle every host keeps (here with a health slot, and a scheduler when configured).
    slots: Slots,
    pub(crate) rate: Option<TokenBucket>,
    pub(crate) budget: RetryBudget,
    applied: AtomicU64,
    pub(crate) dirty: AtomicBool,
    pub(crate) state: Mutex<LiveState>,
    sink: Option<Arc<dyn HealthSink>>,
    /// The router's count of guards alive ([`Router::in_flight`](crate::Router::in_flight)).
    pub(crate) open: Arc<AtomicUsize>,
    /// Wakes the router's maintenance task (a rebuild or health verdicts are due).
    pub(crate) wake: Arc<Notify>,
    /// The router's clock.
    pub(crate) clock: Arc<dyn Clock>,
    /// While a rollout's candidate runs beside the balancer's version: both versions'
    /// outcome windows (`trial.rs`).
    pub(crate) trial: ArcSwapOption<TrialWindows>,
    /// The registry's instances the rotation leaves out, and why (set with each rotation).
    left: ArcSwap<Vec<LeftOut>>,
    /// The balancer's live load: where reports are kept and plugins' probe asks wait.
    tracker: Arc<LoadTracker>,
    /// Load probes the service may still send, and when that was counted.
    probe_tokens: Mutex<(f64, Instant)>,
}

/// An instance the rotation left out: why, and until when.
#[derive(Debug)]
struct LeftOut {
    instance: Arc<Instance>,
    why: Exclusion,
    until: Option<Instant>,
}

impl std::fmt::Debug for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceState").field("service", &self.service).finish_non_exhaustive()
    }
}

fn endpoint_with_weight(i: &Instance, weight: u32) -> Endpoint {
    Endpoint { weight, ..sextant_plugin::endpoint_of(i) }
}

/// What every service state of one router shares with it.
#[derive(Clone)]
pub(crate) struct Shared {
    /// Where health verdicts about persistent instances are written.
    pub(crate) sink: Option<Arc<dyn HealthSink>>,
    /// Guards alive over the router.
    pub(crate) open: Arc<AtomicUsize>,
    /// Wakes the router's maintenance task.
    pub(crate) wake: Arc<Notify>,
    /// The router's clock.
    pub(crate) clock: Arc<dyn Clock>,
}

impl ServiceState {
    pub(crate) fn new(
        host: &PluginHost,
        service: ServiceKey,
        config: ServicePolicy,
        handle: SnapshotHandle,
        shared: &Shared,
    ) -> Result<Self, LoadError> {
        let Shared { sink, open, wake, clock } = shared.clone();
        let now = clock.now();
        let plan = SlotPlan {
            balancer: config.balancer.clone(),
            health: Some(config.health.clone()),
            scheduler: config.scheduler.clone(),
        };
        // The balancer's live load (latencies, the EWMA's decay) runs on the router's clock.
        let tracker = {
            let clock = Arc::clone(&clock);
            Arc::new(LoadTracker::on_clock(host.config().ewma_decay, Arc::new(move || clock.now())))
        };
        let slots = Slots::with_tracker(host, &service.to_string(), &Defaults::default(), &plan, Arc::clone(&tracker))?;
        let registry = handle.load_full();
        Ok(Self {
            rate: config.rate_limit.map(|l| TokenBucket::new(l, now)),
            budget: RetryBudget::new(config.retry, now),
            service,
            handle,
            slots,
            applied: AtomicU64::new(u64::MAX),
            dirty: AtomicBool::new(true),
            state: Mutex::new(LiveState {
                registry_revision: u64::MAX,
                registry,
                endpoints: HashMap::new(),
                health_ids: Vec::new(),
                health_pos: HashMap::new(),
                scheduler_ids: Vec::new(),
                scheduler_view: None,
                local: LocalHealth::default(),
                window_started: now,
                built: false,
            }),
            sink,
            open,
            wake,
            clock,
            config,
            trial: ArcSwapOption::empty(),
            left: ArcSwap::from_pointee(Vec::new()),
            tracker,
            probe_tokens: Mutex::new((0.0, now)),
        })
    }

    /// Makes the balancer's candidate what `change` says (`spec`: what a start runs) and
    /// starts the outcome windows of its step (none once it is promoted or gone).
    pub(crate) fn change_trial(&self, change: &TrialChange, spec: Option<PluginSpec>) -> Result<bool, String> {
        let slot = self.balancer();
        let changed = slot.change_trial(change, spec)?;
        match change {
            TrialChange::Start(t) | TrialChange::Step(t) => {
                let candidate = slot.candidate().map(|c| c.version.id);
                self.trial.store(candidate.map(|id| Arc::new(TrialWindows::new(id, t.step))));
            }
            TrialChange::Promote | TrialChange::Stop => self.trial.store(None),
            TrialChange::Keep => {}
        }
        Ok(changed)
    }

    /// The running trial's step and both versions' windows `(stable, candidate)`: in a
    /// shadow step the candidate's are its shadow picks and fallbacks.
    pub(crate) fn trial_windows(&self) -> Option<(usize, VersionWindow, VersionWindow)> {
        let trial = self.trial.load_full()?;
        let (stable, mut tried) = trial.windows();
        // (A candidate dropped after faults leaves its windows counted; the follower says why.)
        if let Some(candidate) = self.balancer().candidate().filter(|c| c.split == Split::Shadow) {
            tried.requests = candidate.shadow.calls;
            tried.fallbacks = candidate.version.counters.counts.fallbacks;
        }
        Some((trial.step, stable, tried))
    }

    /// The registry's instances left out of the picks now, and why.
    pub(crate) fn excluded(&self) -> Vec<Excluded> {
        let now = self.clock.now();
        self.left
            .load()
            .iter()
            .map(|l| Excluded {
                endpoint: l.instance.id.to_string(),
                address: SocketAddr::new(l.instance.ip, l.instance.port).to_string(),
                why: l.why,
                for_ms: l
                    .until
                    .map(|u| u64::try_from(u.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)),
            })
            .collect()
    }

    /// Reports the service state's automatic rollbacks to `observer` (the router's fan-out).
    pub(crate) fn observe(&self, observer: &sextant_plugin::Observer) {
        self.slots.observe(observer);
    }

    pub(crate) fn balancer(&self) -> &BalancerSlot {
        self.slots.balancer()
    }

    pub(crate) fn health(&self) -> &HealthSlot {
        self.slots
            .health()
            .unwrap_or_else(|| unreachable!("a service's state is built with a health slot (ServiceState::new)"))
    }

    pub(crate) fn scheduler(&self) -> Option<Arc<SchedulerSlot>> {
        self.slots.scheduler()
    }

    /// Runs `spec` as the scheduler, in a slot created for it when the service state runs none (on
    /// the service state's selected endpoints); the next rebuild gives it this gateway's view of
    /// them and applies its weights.
    pub(crate) fn attach_scheduler(&self, spec: PluginSpec) -> Result<VersionStatus, LoadError> {
        let mut state = self.state.lock();
        let registry = &state.registry;
        let snapshot = Snapshot {
            service: self.service.to_string(),
            revision: registry.revision.0,
            endpoints: registry.selected().map(|i| sextant_plugin::endpoint_of(i)).collect(),
            protection_active: registry.protection_active(),
        };
        let attached = self.slots.attach_scheduler(spec, snapshot);
        // The next rebuild gives it this gateway's view of the endpoints and asks for weights.
        state.scheduler_view = None;
        drop(state);
        self.dirty.store(true, Relaxed);
        self.wake.notify_one();
        attached
    }

    /// Drops the scheduler slot: the registered weights stand again from the next rebuild.
    pub(crate) fn detach_scheduler(&self) -> bool {
        let mut state = self.state.lock();
        if !self.slots.detach_scheduler() {
            return false;
        }
        state.local.weights.clear();
        self.dirty.store(true, Relaxed);
        self.wake.notify_one();
        true
    }

    /// On the request path; rebuilds happen off it, on the router's maintenance task, which
    /// the discovery wakes on every registry change ([`Discovery::on_change`]) and requests
    /// wake on local ones (verdicts, breakers, weights: picks go on with the rotation they
    /// have until it publishes). Two exceptions keep a registration visible to the next
    /// request: the first pick builds the service state, and a pick that finds a registry change the
    /// task has not applied yet (it was woken, it has not run) applies it, or waits for the
    /// rebuild under way.
    ///
    /// [`Discovery::on_change`]: crate::Discovery::on_change
    pub(crate) fn refresh(&self) {
        let behind = || {
            let applied = self.applied.load(Relaxed);
            applied == u64::MAX || self.handle.load().revision.0 != applied
        };
        if behind() {
            let mut state = self.state.lock();
            // The maintenance task may have applied it while this pick waited.
            if behind() {
                self.rebuild(&mut state, self.clock.now());
            }
        } else if self.dirty.load(Relaxed) {
            self.wake.notify_one();
        }
    }

    /// Brings the service state up to date off the request path (a wake-up of the maintenance task,
    /// a status read): the outcomes queued go to the health policy, and the rotation is
    /// rebuilt when the registry moved or local state changed. Nothing is locked when there is
    /// nothing to do, so a wake-up costs the service states it does not concern next to nothing.
    pub(crate) fn settle(&self) {
        let unbuilt = || self.applied.load(Relaxed) == u64::MAX;
        if !unbuilt() && !self.stale() && self.health().pending() == 0 {
            return;
        }
        let now = self.clock.now();
        let mut state = self.state.lock();
        let changed = self.drain_health(&mut state, now);
        if changed || unbuilt() || self.stale() {
            self.rebuild(&mut state, now);
        }
    }

    fn stale(&self) -> bool {
        self.handle.load().revision.0 != self.applied.load(Relaxed) || self.dirty.load(Relaxed)
    }

    /// Hands the outcomes the requests reported to the health policy and applies its verdicts.
    /// True when one changed what may take traffic.
    fn drain_health(&self, state: &mut LiveState, now: Instant) -> bool {
        let mut changed = false;
        for (index, verdict) in self.health().drain() {
            let Some(instance) = state.health_ids.get(index as usize).cloned() else { continue };
            changed |= self.apply_verdict(state, &instance, verdict, now);
        }
        changed
    }

    fn rebuild(&self, state: &mut LiveState, now: Instant) {
        self.dirty.store(false, Relaxed);
        let registry = self.handle.load_full();
        if registry.revision.0 != state.registry_revision || !state.built {
            self.apply_registry(state, &registry, now);
        }
        self.sync_scheduler(state, now);
        let open = |id: &str| state.endpoints.get(id).and_then(|e| e.breaker.open_until());
        let next = rotation(&registry, &state.local, &open, self.config.max_ejected_percent, now);
        let protection = next.protection;
        let left =
            next.left.iter().map(|(i, why, until)| LeftOut { instance: Arc::clone(i), why: *why, until: *until });
        self.left.store(Arc::new(left.collect()));
        let health_epoch = self.health().epoch();
        let mut targets = Vec::with_capacity(next.members.len());
        let mut endpoints = Vec::with_capacity(next.members.len());
        for (i, weight) in next.members {
            let Some(es) = state.endpoints.get(i.id.as_str()) else { continue };
            let Some(&health_index) = state.health_pos.get(i.id.as_str()) else { continue };
            endpoints.push(endpoint_with_weight(i, weight));
            targets.push(Arc::new(Target::new(Arc::clone(i), Arc::clone(es), health_index, health_epoch)));
        }
        let snapshot = Snapshot {
            service: self.service.to_string(),
            revision: registry.revision.0,
            endpoints,
            protection_active: protection,
        };
        self.balancer().set_snapshot_with(snapshot, targets);
        self.applied.store(registry.revision.0, Relaxed);
        state.built = true;
    }

    /// Gives the scheduler its endpoints with this gateway's view of their health (the
    /// registry's, less the endpoints found down, ejected or with an open breaker here) when
    /// they changed (membership, health, weight, labels), and asks it for weights at once: the
    /// window is cut early, so a scheduler that moves traffic by health (`locality`) reacts to
    /// a lost endpoint before the next window, and each `schedule` call still covers what
    /// happened since the last one. A registry change that leaves them as they were cuts
    /// nothing.
    fn sync_scheduler(&self, state: &mut LiveState, now: Instant) {
        let Some(scheduler) = self.scheduler() else {
            state.scheduler_view = None;
            return;
        };
        let up = |i: &Instance| {
            let id = i.id.as_str();
            i.healthy
                && !state.local.down.contains(id)
                && state.local.ejected.get(id).is_none_or(|(until, _)| *until <= now)
                && state.endpoints.get(id).and_then(|e| e.breaker.open_until()).is_none()
        };
        let view: Vec<Endpoint> =
            state.registry.selected().map(|i| Endpoint { healthy: up(i), ..sextant_plugin::endpoint_of(i) }).collect();
        if state.scheduler_view.as_ref() == Some(&view) {
            return;
        }
        scheduler.set_snapshot(Snapshot {
            service: self.service.to_string(),
            revision: state.registry.revision.0,
            endpoints: view.clone(),
            protection_active: state.registry.protection_active(),
        });
        state.scheduler_view = Some(view);
        self.cut_window(state, now);
    }

    /// A new registry snapshot: endpoint states by id, the health snapshot (the scheduler's
    /// follows at [`Self::sync_scheduler`]).
    fn apply_registry(&self, state: &mut LiveState, registry: &Arc<ServiceSnapshot>, now: Instant) {
        let routable: Vec<Arc<Instance>> = registry.instances.iter().filter(|i| i.is_routable()).cloned().collect();
        let mut endpoints = HashMap::with_capacity(routable.len());
        for i in &routable {
            let id = i.id.to_string();
            let es = state.endpoints.remove(&id).unwrap_or_else(|| {
                Arc::new(EndpointTracker {
                    breaker: Breaker::new(self.config.breaker),
                    window: ArcSwap::from_pointee(StatsWindow::default()),
                    last: ArcSwap::from_pointee(WindowSummary::default()),
                    joined: now,
                    probing: AtomicBool::new(false),
                    next_probe: Mutex::new(now),
                })
            });
            endpoints.insert(id, es);
        }
        state.endpoints = endpoints;
        let known = &state.endpoints;
        state.local.down.retain(|id| known.contains_key(id));
        state.local.ejected.retain(|id, _| known.contains_key(id));
        state.local.weights.retain(|id, _| known.contains_key(id));
        let model = |list: &mut dyn Iterator<Item = &Arc<Instance>>| Snapshot {
            service: self.service.to_string(),
            revision: registry.revision.0,
            endpoints: list.map(|i| sextant_plugin::endpoint_of(i)).collect(),
            protection_active: registry.protection_active(),
        };
        self.health().set_snapshot(model(&mut routable.iter()));
        state.health_pos = routable
            .iter()
            .enumerate()
            .map(|(n, i)| (i.id.to_string(), u32::try_from(n).unwrap_or(u32::MAX)))
            .collect();
        state.health_ids = routable;
        state.scheduler_ids = registry.selected().map(|i| i.id.to_string()).collect();
        state.registry = Arc::clone(registry);
        state.registry_revision = registry.revision.0;
    }

    /// Before a new health policy is loaded: hands the health slot the endpoints as this service state
    /// sees them (down or ejected here: unhealthy), so the new policy starts from the verdicts
    /// in force rather than from the registry's flags, and can bring an endpoint back.
    pub(crate) fn carry_health(&self) {
        let state = self.state.lock();
        let snapshot = Snapshot {
            service: self.service.to_string(),
            revision: state.registry.revision.0,
            endpoints: state
                .health_ids
                .iter()
                .map(|i| {
                    let mut e = sextant_plugin::endpoint_of(i);
                    let id = i.id.as_str();
                    if state.local.down.contains(id) || state.local.ejected.contains_key(id) {
                        e.healthy = false;
                    }
                    e
                })
                .collect(),
            protection_active: state.registry.protection_active(),
        };
        self.health().set_snapshot(snapshot);
    }

    /// Applies a health verdict about instance `id` (a probe's).
    pub(crate) fn verdict(&self, id: &str, verdict: Verdict, now: Instant) {
        if verdict == Verdict::Unchanged {
            return;
        }
        let mut state = self.state.lock();
        let Some(&at) = state.health_pos.get(id) else { return };
        let instance = Arc::clone(&state.health_ids[at as usize]);
        if self.apply_verdict(&mut state, &instance, verdict, now) {
            self.rebuild(&mut state, now);
        }
    }

    /// Records a verdict in the local health state (and the sink); true when the rotation
    /// must be rebuilt.
    fn apply_verdict(&self, state: &mut LiveState, instance: &Arc<Instance>, verdict: Verdict, now: Instant) -> bool {
        let id = instance.id.as_str();
        tracing::info!(service = %self.service, endpoint = id, ?verdict, "health verdict");
        match verdict {
            Verdict::Unchanged => false,
            Verdict::Healthy => {
                let was = state.local.down.remove(id) | state.local.ejected.remove(id).is_some();
                if !instance.ephemeral
                    && !instance.healthy
                    && let Some(sink) = &self.sink
                {
                    sink.set_healthy(instance, true);
                }
                was
            }
            Verdict::Unhealthy => {
                if !instance.ephemeral
                    && instance.healthy
                    && let Some(sink) = &self.sink
                {
                    sink.set_healthy(instance, false);
                }
                state.local.down.insert(id.to_owned())
            }
            Verdict::Eject(ms) => {
                state.local.ejected.insert(id.to_owned(), (now + Duration::from_millis(ms), now));
                true
            }
        }
    }

    fn health_index(&self, id: &str) -> Option<u32> {
        self.state.lock().health_pos.get(id).copied()
    }

    /// Time-driven work: ejections and open breakers that ended, windows to cut, probes due.
    pub(crate) fn tick(self: &Arc<Self>, now: Instant, probe: &Probe) {
        let mut state = self.state.lock();
        let mut changed = self.drain_health(&mut state, now);
        let before = state.local.ejected.len();
        state.local.ejected.retain(|_, (until, _)| *until > now);
        changed |= state.local.ejected.len() != before;
        for es in state.endpoints.values() {
            changed |= es.breaker.tick(now);
        }
        if now.saturating_duration_since(state.window_started) >= self.config.window {
            changed |= self.cut_window(&mut state, now);
        }
        if changed || self.dirty.load(Relaxed) || self.handle.load().revision.0 != state.registry_revision {
            self.rebuild(&mut state, now);
        }
        if let Some(check) = &self.config.health_check {
            for instance in &state.health_ids {
                let Some(es) = state.endpoints.get(instance.id.as_str()) else { continue };
                let mut next = es.next_probe.lock();
                if *next > now || es.probing.swap(true, Relaxed) {
                    continue;
                }
                *next = now + check.next_interval();
                let (svc, target, state) = (Arc::downgrade(self), Arc::clone(instance), Arc::clone(es));
                probe.spawn(instance, check.clone(), move |result, report| {
                    probe_done(&svc, &target, &state, result, report);
                });
            }
        }
        self.send_load_probes(&state, now, probe);
    }

    /// The balancer's live load.
    pub(crate) fn tracker(&self) -> &Arc<LoadTracker> {
        &self.tracker
    }

    /// The load probes plugins asked for that the service's rate lets out now (instance ids,
    /// oldest first); the others are dropped.
    pub(crate) fn due_load_probes(&self, now: Instant) -> Vec<String> {
        let mut asked = self.tracker.take_probes();
        if asked.is_empty() {
            // The bucket fills the same whether counted now or at the next ask (it is capped).
            return asked;
        }
        let rate = f64::from(self.config.load_probe.per_second);
        let mut tokens = self.probe_tokens.lock();
        let elapsed = now.saturating_duration_since(tokens.1).as_secs_f64();
        *tokens = ((tokens.0 + elapsed * rate).min(rate.max(1.0)), now);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // within 0..=rate
        let allowed = tokens.0.floor().max(0.0) as usize;
        asked.truncate(allowed);
        #[allow(clippy::cast_precision_loss)]
        let sent = asked.len() as f64;
        tokens.0 -= sent;
        asked
    }

    /// Sends the load probes plugins asked for, within the service's rate (unless its caller
    /// sends them).
    fn send_load_probes(&self, state: &LiveState, now: Instant, probe: &Probe) {
        if probe.load_by_caller {
            return;
        }
        let config = &self.config.load_probe;
        for id in self.due_load_probes(now) {
            let Some(instance) = state.registry.instances.iter().find(|i| i.id.as_str() == id) else { continue };
            let tracker = Arc::downgrade(&self.tracker);
            probe.spawn_load(instance, &config.path, config.timeout, move |header| {
                if let (Some(tracker), Some(header)) = (tracker.upgrade(), header) {
                    record_header(&tracker, &id, &header);
                }
            });
        }
    }

    /// Closes the statistics window; asks the scheduler for weights. True when they changed.
    fn cut_window(&self, state: &mut LiveState, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(state.window_started);
        state.window_started = now;
        let mut stats = HashMap::with_capacity(state.endpoints.len());
        for (id, es) in &state.endpoints {
            let closed = es.window.swap(Arc::new(StatsWindow::default()));
            let s = closed.close(elapsed, now.saturating_duration_since(es.joined));
            #[allow(clippy::cast_precision_loss)]
            es.last.store(Arc::new(WindowSummary {
                rps: s.rps,
                p50_ms: s.latency_p50 as f64 / 1e6,
                p99_ms: s.latency_p99 as f64 / 1e6,
                requests: s.requests,
                errors: s.errors,
                overloaded: s.overloaded,
            }));
            stats.insert(id.clone(), s);
        }
        let Some(scheduler) = self.scheduler() else { return false };
        let ordered: Vec<EndpointStats> =
            state.scheduler_ids.iter().map(|id| stats.remove(id).unwrap_or_default()).collect();
        let weights = scheduler.schedule(&ordered);
        let weights: HashMap<String, u32> = state.scheduler_ids.iter().cloned().zip(weights).collect();
        if weights == state.local.weights {
            return false;
        }
        state.local.weights = weights;
        true
    }
}

/// Keeps a load report an endpoint sent with a probe's answer; one refused changes nothing.
fn record_header(tracker: &LoadTracker, id: &str, header: &str) {
    match crate::load_report::parse(header) {
        Ok(report) => {
            tracker.record_report_for(id, report);
        }
        Err(e) => tracing::debug!(endpoint = id, reason = e.reason(), "load report refused: {e}"),
    }
}

/// A probe's result, handed back by the prober, and the load report its answer carried.
fn probe_done(
    svc: &Weak<ServiceState>,
    instance: &Instance,
    state: &EndpointTracker,
    mut result: ProbeResult,
    report: Option<String>,
) {
    state.probing.store(false, Relaxed);
    let Some(svc) = svc.upgrade() else { return };
    let id = instance.id.as_str();
    if let Some(header) = report {
        record_header(&svc.tracker, id, &header);
    }
    let Some(index) = svc.health_index(id) else { return };
    result.endpoint = index;
    let verdict = svc.health().on_probe(&result);
    svc.verdict(id, verdict, svc.clock.now());
}
