//! Health and scheduler slots ([`HealthSlot`], [`SchedulerSlot`]: distinct types over one
//! core). A policy keeps one state for its service (consecutive failures, outlier
//! statistics), so one instance behind a mutex serves each slot: a scheduler is called once
//! per window and a health policy per probe, but also once per finished request
//! (`on_outcome`), where that mutex is taken on the request path. The load path (compile,
//! kind and version checks, self-test, swap), the fallback to the native default on a fault,
//! and the automatic rollback are the same as for balancers, and so is what a slot keeps
//! about its versions (`crate::lifecycle`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Instant, SystemTime};

use crossbeam_queue::SegQueue;
use parking_lot::Mutex;
use sextant_builtins::{EndpointStats, HealthPolicy, Outcome, ProbeResult, Scheduler, Snapshot, Status, Verdict};
use wasmtime::Store;

use crate::balancer::synthetic;
use crate::bindings::v1::health::HealthPlugin;
use crate::bindings::v1::health::exports::sextant::plugin::health as wh;
use crate::bindings::v1::scheduler::SchedulerPlugin;
use crate::bindings::v1::scheduler::exports::sextant::plugin::scheduler as ws;
use crate::bindings::v2::health::exports::sextant::plugin::health as wh2;
use crate::bindings::v2::scheduler::exports::sextant::plugin::scheduler as ws2;
use crate::lifecycle::{self, FaultWindow, History, rollback_reason};
use crate::lifecycle::{Observer, SlotStatus, VersionStatus};
use crate::published::Published;
use crate::shared::{Guest as SharedGuest, Live, Missing, SharedRunner};
use crate::state::{HostState, KindPre, arm, fault_in};
use crate::stats::Counters;
use crate::tracker::LoadTracker;
use crate::{CallFault, LoadError, PluginHost, PluginKind, PluginSpec, SlotError};
use wasmtime::component::ResourceAny;

enum Native {
    Health(Box<dyn HealthPolicy>),
    Scheduler(Box<dyn Scheduler>),
}

enum Guest {
    Health(HealthPlugin),
    Scheduler(SchedulerPlugin),
}

enum Runner {
    Native(Native, Box<HostState>),
    Wasm(Box<(Store<HostState>, Guest)>),
    /// A 0.2.0 plugin: the service's resource in a shared instance, and the last snapshot
    /// given to it (a resource created anew gets it before its first call).
    Shared(SharedRunner, Arc<Published>),
}

/// Status and verdict conversions for one contract version's `health` interface.
macro_rules! health_conversions {
    ($status:ident, $verdict:ident, $wh:ident) => {
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
    };
}

health_conversions!(wit_status, verdict, wh);

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
health_conversions!(wit_status2, verdict2, wh2);

/// One call into a policy.
enum Call<'a> {
    Update(&'a Arc<Published>),
    Probe(&'a ProbeResult),
    Outcome(&'a Outcome),
    Schedule(&'a [EndpointStats]),
}

/// The answer of a call.
enum Answer {
    Updated,
    Verdict(Verdict),
    Weights(Vec<u32>),
}

impl Runner {
    fn native(kind: PluginKind, name: &str, config: &str, env: HostState) -> Result<Self, LoadError> {
        let native = match kind {
            PluginKind::Health => {
                Native::Health(sextant_builtins::health_policy(name, config).map_err(LoadError::UnknownBuiltin)?)
            }
            PluginKind::Scheduler => {
                Native::Scheduler(sextant_builtins::scheduler(name, config).map_err(LoadError::UnknownBuiltin)?)
            }
            PluginKind::Balancer => return Err(LoadError::UnknownBuiltin("balancers go into balancer slots".into())),
        };
        Ok(Self::Native(native, Box::new(env)))
    }

    fn build(
        host: &PluginHost,
        kind: PluginKind,
        spec: &PluginSpec,
        published: &Arc<Published>,
    ) -> Result<Self, LoadError> {
        match spec {
            PluginSpec::Builtin { name, config } => {
                Self::native(kind, name, config, host.state(Arc::from(name.as_str()), Arc::clone(published)))
            }
            PluginSpec::Wasm { name, compiled, config } if compiled.contract.shared() => {
                if compiled.kind != kind {
                    return Err(LoadError::WrongKind { expected: kind, found: compiled.kind });
                }
                let plugin = host.shared(name, compiled, config)?;
                let key = host.next_key();
                let service: Arc<str> = Arc::from(published.model.service.as_str());
                let index = usize::try_from(key).unwrap_or(0);
                Ok(Self::Shared(SharedRunner::new(&plugin, key, index, &service), Arc::clone(published)))
            }
            PluginSpec::Wasm { name, compiled, config } => {
                let mut store = host.store(Arc::from(name.as_str()), Arc::clone(published));
                let deadline = host.config().update_deadline;
                arm(&mut store, host.ticks(deadline), deadline);
                let inst = |e: wasmtime::Error| host.instantiate_error(&e);
                let init = |store: &mut Store<HostState>, r: wasmtime::Result<Result<(), String>>| match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(reason)) => Err(LoadError::Config(reason)),
                    Err(e) => Err(LoadError::SelfTest(format!("init {}", fault_in(store, &e)))),
                };
                let guest = match (&compiled.pre, kind) {
                    (KindPre::Health(pre), PluginKind::Health) => {
                        let g = pre.instantiate(&mut store).map_err(inst)?;
                        let r = g.sextant_plugin_health().call_init(&mut store, config);
                        init(&mut store, r)?;
                        Guest::Health(g)
                    }
                    (KindPre::Scheduler(pre), PluginKind::Scheduler) => {
                        let g = pre.instantiate(&mut store).map_err(inst)?;
                        let r = g.sextant_plugin_scheduler().call_init(&mut store, config);
                        init(&mut store, r)?;
                        Guest::Scheduler(g)
                    }
                    _ => return Err(LoadError::WrongKind { expected: kind, found: compiled.kind }),
                };
                Ok(Self::Wasm(Box::new((store, guest))))
            }
        }
    }

    fn call(&mut self, host: &PluginHost, call: &Call<'_>) -> Result<Answer, CallFault> {
        match self {
            Self::Native(native, env) => {
                let env: &mut HostState = env;
                Ok(match (native, call) {
                    (Native::Health(p), Call::Update(r)) => {
                        env.published = Arc::clone(r);
                        p.update(&r.model, env).map_err(CallFault::Refused)?;
                        Answer::Updated
                    }
                    (Native::Scheduler(p), Call::Update(r)) => {
                        env.published = Arc::clone(r);
                        p.update(&r.model, env).map_err(CallFault::Refused)?;
                        Answer::Updated
                    }
                    (Native::Health(p), Call::Probe(r)) => Answer::Verdict(p.on_probe(r, env)),
                    (Native::Health(p), Call::Outcome(o)) => Answer::Verdict(p.on_outcome(o, env)),
                    (Native::Scheduler(p), Call::Schedule(s)) => Answer::Weights(p.schedule(s, env)),
                    _ => Answer::Verdict(Verdict::Unchanged),
                })
            }
            Self::Wasm(boxed) => {
                let (store, guest) = &mut **boxed;
                let deadline = match call {
                    Call::Update(_) | Call::Schedule(_) => host.config().update_deadline,
                    Call::Probe(_) | Call::Outcome(_) => host.config().pick_deadline,
                };
                arm(store, host.ticks(deadline), deadline);
                let refused = |r: Result<(), String>| r.map(|()| Answer::Updated).map_err(CallFault::Refused);
                let result = match (guest, call) {
                    (Guest::Health(g), Call::Update(r)) => {
                        store.data_mut().published = Arc::clone(r);
                        g.sextant_plugin_health().call_update(&mut *store, &r.wit).map(refused)
                    }
                    (Guest::Scheduler(g), Call::Update(r)) => {
                        store.data_mut().published = Arc::clone(r);
                        g.sextant_plugin_scheduler().call_update(&mut *store, &r.wit).map(refused)
                    }
                    (Guest::Health(g), Call::Probe(p)) => {
                        let probe = wh::ProbeResult {
                            endpoint: p.endpoint,
                            status: wit_status(&p.status),
                            latency: p.latency,
                            body: p.body.clone(),
                        };
                        g.sextant_plugin_health()
                            .call_on_probe(&mut *store, &probe)
                            .map(|v| Ok(Answer::Verdict(verdict(v))))
                    }
                    (Guest::Health(g), Call::Outcome(o)) => {
                        let outcome =
                            wh::Outcome { endpoint: o.endpoint, status: wit_status(&o.status), latency: o.latency };
                        g.sextant_plugin_health()
                            .call_on_outcome(&mut *store, &outcome)
                            .map(|v| Ok(Answer::Verdict(verdict(v))))
                    }
                    (Guest::Scheduler(g), Call::Schedule(stats)) => {
                        let stats = wit_stats!(ws, stats);
                        g.sextant_plugin_scheduler().call_schedule(&mut *store, &stats).map(|w| Ok(Answer::Weights(w)))
                    }
                    _ => Ok(Ok(Answer::Verdict(Verdict::Unchanged))),
                };
                result.map_err(|e| fault_in(store, &e))?
            }
            Self::Shared(shared, last) => {
                if let Call::Update(r) = call {
                    *last = Arc::clone(r);
                }
                let published = Arc::clone(last);
                let answer = shared.call(&mut Arc::clone(last), Missing::Create, |live, handle, fresh| {
                    shared_call(host, live, handle, fresh, &published, call)
                })?;
                answer.ok_or_else(|| CallFault::Trap("the resource could not be created".into()))
            }
        }
    }
}

/// One call on a service's 0.2.0 resource; a fresh one is given `published` first.
fn shared_call(
    host: &PluginHost,
    live: &mut Live,
    handle: ResourceAny,
    fresh: bool,
    published: &Arc<Published>,
    call: &Call<'_>,
) -> Result<Answer, CallFault> {
    let Live { store, guest } = live;
    let refused = |r: Result<(), String>| r.map(|()| Answer::Updated).map_err(CallFault::Refused);
    let config = host.config();
    let deadline = match call {
        Call::Update(_) | Call::Schedule(_) => config.update_deadline,
        Call::Probe(_) | Call::Outcome(_) => config.pick_deadline,
    };
    let result = match guest {
        SharedGuest::Health(g) => {
            let g = g.sextant_plugin_health().health();
            if fresh && !matches!(call, Call::Update(_)) {
                arm(store, host.ticks(config.update_deadline), config.update_deadline);
                let r = g.call_update(&mut *store, handle, &published.wit).map_err(|e| fault_in(store, &e))?;
                refused(r)?;
            }
            arm(store, host.ticks(deadline), deadline);
            match call {
                Call::Update(r) => g.call_update(&mut *store, handle, &r.wit).map(refused),
                Call::Probe(p) => {
                    let probe = wh2::ProbeResult {
                        endpoint: p.endpoint,
                        status: wit_status2(&p.status),
                        latency: p.latency,
                        body: p.body.clone(),
                    };
                    g.call_on_probe(&mut *store, handle, &probe).map(|v| Ok(Answer::Verdict(verdict2(v))))
                }
                Call::Outcome(o) => {
                    let outcome =
                        wh2::Outcome { endpoint: o.endpoint, status: wit_status2(&o.status), latency: o.latency };
                    g.call_on_outcome(&mut *store, handle, &outcome).map(|v| Ok(Answer::Verdict(verdict2(v))))
                }
                Call::Schedule(_) => Ok(Ok(Answer::Verdict(Verdict::Unchanged))),
            }
        }
        SharedGuest::Scheduler(g) => {
            let g = g.sextant_plugin_scheduler().scheduler();
            if fresh && !matches!(call, Call::Update(_)) {
                arm(store, host.ticks(config.update_deadline), config.update_deadline);
                let r = g.call_update(&mut *store, handle, &published.wit).map_err(|e| fault_in(store, &e))?;
                refused(r)?;
            }
            arm(store, host.ticks(deadline), deadline);
            match call {
                Call::Update(r) => g.call_update(&mut *store, handle, &r.wit).map(refused),
                Call::Schedule(stats) => {
                    let stats = wit_stats!(ws2, stats);
                    g.call_schedule(&mut *store, handle, &stats).map(|w| Ok(Answer::Weights(w)))
                }
                Call::Probe(_) | Call::Outcome(_) => Ok(Ok(Answer::Verdict(Verdict::Unchanged))),
            }
        }
        SharedGuest::Balancer(_) => return Err(CallFault::Contract("a balancer in a policy slot".into())),
    };
    result.map_err(|e| fault_in(store, &e))?
}

/// Checks an answer against the contract.
fn validate(answer: Answer, call: &Call<'_>, len: usize) -> Result<Answer, CallFault> {
    match (&answer, call) {
        (Answer::Weights(w), _) if w.len() != len => {
            Err(CallFault::Contract(format!("{} weights for {len} endpoints", w.len())))
        }
        (Answer::Weights(w), _) if w.iter().any(|&x| x > sextant_core::model::MAX_WEIGHT) => {
            Err(CallFault::Contract(format!("a weight above {}", sextant_core::model::MAX_WEIGHT)))
        }
        _ => Ok(answer),
    }
}

struct State {
    version: u64,
    spec: PluginSpec,
    loaded_at: SystemTime,
    runner: Runner,
    fallback: Runner,
    published: Arc<Published>,
    counters: Arc<Counters>,
    faults: FaultWindow,
    history: History,
    /// The active policy failed on the current snapshot: the native default answers (each
    /// call counted as a fallback) until a snapshot update succeeds.
    degraded: bool,
}

/// What a health and a scheduler slot share (the kind decides which calls the policy
/// takes); used through [`HealthSlot`] and [`SchedulerSlot`].
pub(crate) struct PolicySlot {
    kind: PluginKind,
    host: PluginHost,
    service: String,
    default: PluginSpec,
    tracker: Arc<LoadTracker>,
    state: Mutex<State>,
    observer: std::sync::OnceLock<Observer>,
}

impl Drop for PolicySlot {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        self.host.retire(state.spec.version_key(self.kind), &state.counters.snapshot());
    }
}

impl std::fmt::Debug for PolicySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySlot").field("kind", &self.kind).field("service", &self.service).finish_non_exhaustive()
    }
}

impl PolicySlot {
    fn new(kind: PluginKind, host: &PluginHost, service: &str, default: PluginSpec) -> Result<Self, LoadError> {
        if !matches!(default, PluginSpec::Builtin { .. }) {
            return Err(LoadError::UnknownBuiltin("a slot's default must be a built-in".into()));
        }
        let tracker = Arc::new(LoadTracker::new(host.config().ewma_decay));
        let published = Arc::new(Published::new(
            0,
            Snapshot { service: service.into(), ..Snapshot::default() },
            Arc::clone(&tracker),
        ));
        let runner = Runner::build(host, kind, &default, &published)?;
        let fallback = Runner::build(host, kind, &default, &published)?;
        Ok(Self {
            kind,
            host: host.clone(),
            service: service.into(),
            tracker,
            state: Mutex::new(State {
                version: 1,
                spec: default.clone(),
                loaded_at: SystemTime::now(),
                runner,
                fallback,
                published,
                counters: Arc::new(Counters::default()),
                faults: FaultWindow::default(),
                history: History::default(),
                degraded: false,
            }),
            default,
            observer: std::sync::OnceLock::new(),
        })
    }

    /// Publishes a new snapshot to the policy; returns its epoch.
    pub(crate) fn set_snapshot(&self, snapshot: Snapshot) -> u64 {
        let mut state = self.state.lock();
        let epoch = state.published.epoch + 1;
        let published = Arc::new(Published::new(epoch, snapshot, Arc::clone(&self.tracker)));
        state.published = Arc::clone(&published);
        self.call(&mut state, &Call::Update(&published));
        epoch
    }

    /// Hands a probe result to the health policy.
    pub(crate) fn on_probe(&self, result: &ProbeResult) -> Verdict {
        match self.call(&mut self.state.lock(), &Call::Probe(result)) {
            Answer::Verdict(v) => v,
            _ => Verdict::Unchanged,
        }
    }

    /// Hands a request outcome to the health policy.
    pub(crate) fn on_outcome(&self, outcome: &Outcome) -> Verdict {
        match self.call(&mut self.state.lock(), &Call::Outcome(outcome)) {
            Answer::Verdict(v) => v,
            _ => Verdict::Unchanged,
        }
    }

    /// Asks the scheduler for effective weights; the registered weights when it fails.
    pub(crate) fn schedule(&self, stats: &[EndpointStats]) -> Vec<u32> {
        let mut state = self.state.lock();
        let registered: Vec<u32> = state.published.model.endpoints.iter().map(|e| e.weight).collect();
        match self.call(&mut state, &Call::Schedule(stats)) {
            Answer::Weights(w) => w,
            _ => registered,
        }
    }

    /// Runs a call on the active policy; on a fault, counts it, replaces the instance, rolls
    /// back when there were too many, and answers with the native default. A policy that
    /// failed on the current snapshot is not called again (the default answers, counted as
    /// fallbacks) until the next snapshot.
    fn call(&self, state: &mut State, call: &Call<'_>) -> Answer {
        let update = matches!(call, Call::Update(_));
        if state.degraded && !update {
            state.counters.fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return state.fallback.call(&self.host, call).unwrap_or(Answer::Verdict(Verdict::Unchanged));
        }
        let len = state.published.len();
        // Counted and (one in SAMPLE_EVERY) timed as a balancer's picks are.
        let calls = state.counters.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = calls.is_multiple_of(crate::version::SAMPLE_EVERY).then(Instant::now);
        let result = state.runner.call(&self.host, call).and_then(|a| validate(a, call, len));
        if let Some(t) = started {
            state.counters.call_time.record(t.elapsed());
        }
        match result {
            Ok(answer) => {
                if update {
                    state.degraded = false;
                }
                answer
            }
            Err(f) => {
                tracing::warn!(service = %self.service, kind = %self.kind, version = state.version, fault = %f, "plugin fault");
                state.counters.fault(&f);
                state.counters.fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let config = self.host.config();
                if let Some(faults) = state.faults.record(Instant::now(), config.fault_window, config.max_faults) {
                    let reason = rollback_reason(faults, config.fault_window, &f);
                    let target = state.history.take_for_auto_rollback(&self.default);
                    tracing::error!(service = %self.service, kind = %self.kind, %reason, "rolled back automatically");
                    let faulty = state.spec.clone();
                    if self.install(state, target, format!("auto-rollback: {reason}")).is_err() {
                        let _ = self.install(state, self.default.clone(), format!("auto-rollback: {reason}"));
                    }
                    if let Some(observe) = self.observer.get() {
                        observe(lifecycle::auto_rollback(&self.service, self.kind, &faulty, reason));
                    }
                } else {
                    let published = Arc::clone(&state.published);
                    let restored =
                        Runner::build(&self.host, self.kind, &state.spec, &published).and_then(|mut fresh| {
                            fresh
                                .call(&self.host, &Call::Update(&published))
                                .map_err(|f| LoadError::SelfTest(f.to_string()))?;
                            Ok(fresh)
                        });
                    match restored {
                        Ok(fresh) => state.runner = fresh,
                        Err(e) => {
                            if !state.degraded {
                                let what = format!(
                                    "update fault on revision {}: {e}; the native default serves",
                                    published.model.revision
                                );
                                state.history.note(state.version, what);
                            }
                            state.degraded = true;
                        }
                    }
                }
                let published = Arc::clone(&state.published);
                let _ = state.fallback.call(&self.host, &Call::Update(&published));
                state.fallback.call(&self.host, call).unwrap_or(Answer::Verdict(Verdict::Unchanged))
            }
        }
    }

    /// Sets who is told of automatic rollbacks (once; later calls are ignored).
    pub(crate) fn observe(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    fn self_test(&self, spec: &PluginSpec) -> Result<(), LoadError> {
        let tracker = Arc::new(LoadTracker::new(self.host.config().ewma_decay));
        let published = Arc::new(Published::new(1, synthetic(), tracker));
        let mut runner = Runner::build(&self.host, self.kind, spec, &published)?;
        let fail = |what: &str, f: CallFault| LoadError::SelfTest(format!("{what} {f}"));
        runner.call(&self.host, &Call::Update(&published)).map_err(|f| fail("update", f))?;
        let n = published.len();
        match self.kind {
            PluginKind::Health => {
                for (i, status) in
                    [Status::Http(200), Status::Timeout, Status::Http(503), Status::Connected].iter().enumerate()
                {
                    let endpoint = u32::try_from(i).unwrap_or(0);
                    let probe =
                        ProbeResult { endpoint, status: status.clone(), latency: 1_000_000, body: b"ok".to_vec() };
                    runner.call(&self.host, &Call::Probe(&probe)).map_err(|f| fail("on-probe", f))?;
                    let outcome = Outcome { endpoint, status: status.clone(), latency: 1_000_000 };
                    runner.call(&self.host, &Call::Outcome(&outcome)).map_err(|f| fail("on-outcome", f))?;
                }
            }
            _ => {
                let stats =
                    vec![EndpointStats { rps: 10.0, requests: 100, age_ms: 60_000, ..EndpointStats::default() }; n];
                let call = Call::Schedule(&stats);
                let answer = runner.call(&self.host, &call).map_err(|f| fail("schedule", f))?;
                validate(answer, &call, n).map_err(|f| fail("schedule", f))?;
            }
        }
        Ok(())
    }

    fn install(&self, state: &mut State, spec: PluginSpec, what: String) -> Result<VersionStatus, LoadError> {
        let mut runner = Runner::build(&self.host, self.kind, &spec, &state.published)?;
        let published = Arc::clone(&state.published);
        runner
            .call(&self.host, &Call::Update(&published))
            .map_err(|f| LoadError::SelfTest(format!("update with the current snapshot {f}")))?;
        state.runner = runner;
        self.host.retire(state.spec.version_key(self.kind), &state.counters.snapshot());
        state.spec = spec;
        state.version += 1;
        state.loaded_at = SystemTime::now();
        state.counters = Arc::new(Counters::default());
        state.faults.clear();
        state.degraded = false;
        state.history.note(state.version, what);
        Ok(Self::version_status(state))
    }

    /// Loads a new policy: kind check, self-test, swap. Nothing changes when it fails.
    ///
    /// # Errors
    /// What was wrong with the plugin.
    pub(crate) fn load(&self, spec: PluginSpec) -> Result<VersionStatus, LoadError> {
        if let PluginSpec::Wasm { compiled, .. } = &spec {
            if compiled.kind != self.kind {
                return Err(LoadError::WrongKind { expected: self.kind, found: compiled.kind });
            }
            self.self_test(&spec)?;
        }
        let mut state = self.state.lock();
        let old = state.spec.clone();
        let status = self.install(&mut state, spec, "load".into())?;
        state.history.replaced(old);
        Ok(status)
    }

    /// Goes back to the previous policy.
    ///
    /// # Errors
    /// Nothing to roll back to, or it no longer builds.
    pub(crate) fn rollback(&self) -> Result<VersionStatus, SlotError> {
        let mut state = self.state.lock();
        let target = state.history.rollback_target().cloned().ok_or(SlotError::NoPrevious)?;
        let status = self.install(&mut state, target, "rollback".into())?;
        state.history.rolled_back();
        Ok(status)
    }

    fn version_status(state: &State) -> VersionStatus {
        VersionStatus::of(state.version, &state.spec, state.loaded_at, state.counters.snapshot())
    }

    /// Status of the active policy and the slot's history.
    #[must_use]
    pub(crate) fn status(&self) -> SlotStatus {
        let state = self.state.lock();
        SlotStatus {
            service: self.service.clone(),
            active: Self::version_status(&state),
            previous: state.history.previous_names(),
            events: state.history.events(),
        }
    }
}

/// The health slot of one service: the health policy's verdicts on probes and on request
/// outcomes, with the lifecycle every slot has (self-test before a swap, fallback to the
/// native default per call, automatic rollback, history).
#[derive(Debug)]
pub struct HealthSlot {
    slot: PolicySlot,
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
            slot: PolicySlot::new(PluginKind::Health, host, service, default)?,
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
            if let Answer::Verdict(v) = self.slot.call(&mut state, &Call::Outcome(&outcome))
                && v != Verdict::Unchanged
            {
                verdicts.push((outcome.endpoint, v));
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
        self.slot.on_probe(result)
    }

    /// The policy's verdict on a request outcome, now (the call holds the slot's lock: off
    /// the request path, prefer [`HealthSlot::report`] and [`HealthSlot::drain`]).
    pub fn on_outcome(&self, outcome: &Outcome) -> Verdict {
        self.slot.on_outcome(outcome)
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

/// The scheduler slot of one service: weights per endpoint from each window's statistics,
/// with the lifecycle every slot has.
#[derive(Debug)]
pub struct SchedulerSlot(PolicySlot);

impl SchedulerSlot {
    /// A scheduler slot running the built-in `default` (`adaptive`, `slow-start`,
    /// `gray-split`), also the native answer behind any plugin loaded later.
    ///
    /// # Errors
    /// An unknown built-in or an invalid configuration.
    pub fn new(host: &PluginHost, service: &str, default: PluginSpec) -> Result<Self, LoadError> {
        PolicySlot::new(PluginKind::Scheduler, host, service, default).map(Self)
    }

    /// Publishes a new snapshot to the scheduler.
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        self.0.set_snapshot(snapshot);
    }

    /// Weights for the snapshot's endpoints from their statistics (in the snapshot's order).
    pub fn schedule(&self, stats: &[EndpointStats]) -> Vec<u32> {
        self.0.schedule(stats)
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
