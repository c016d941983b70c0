//! Health and scheduler slots. They are called per probe, per request outcome and per
//! scheduling interval, not per pick, so one instance behind a mutex serves each slot; the
//! load path (compile, kind and version checks, self-test, swap), the fallback to the
//! native default on a fault, and the automatic rollback are the same as for balancers.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use sextant_builtins::{EndpointStats, HealthPolicy, Outcome, ProbeResult, Scheduler, Snapshot, Status, Verdict};
use wasmtime::Store;

use crate::balancer::{AutoRollback, MAX_EVENTS, Observer, SlotEvent, SlotStatus, VersionStatus, synthetic, unix_now};
use crate::bindings::health::HealthPlugin;
use crate::bindings::health::exports::sextant::plugin::health as wh;
use crate::bindings::scheduler::SchedulerPlugin;
use crate::bindings::scheduler::exports::sextant::plugin::scheduler as ws;
use crate::host::{KindPre, arm, fault};
use crate::load::{LoadTracker, RouteSnapshot};
use crate::stats::Counters;
use crate::{CallFault, HostState, LoadError, PluginHost, PluginKind, PluginSpec, SlotError};

enum Native {
    Health(Box<dyn HealthPolicy>),
    Scheduler(Box<dyn Scheduler>),
}

enum Guest {
    Health(HealthPlugin),
    Scheduler(SchedulerPlugin),
}

enum Runner {
    Native(Native, HostState),
    Wasm(Box<(Store<HostState>, Guest)>),
}

fn wit_status(s: &Status) -> wh::Status {
    match s {
        Status::Http(c) => wh::Status::Http(*c),
        Status::Connected => wh::Status::Connected,
        Status::Timeout => wh::Status::Timeout,
        Status::Failed(m) => wh::Status::Failed(m.clone()),
    }
}

fn verdict(v: wh::Verdict) -> Verdict {
    match v {
        wh::Verdict::Unchanged => Verdict::Unchanged,
        wh::Verdict::Healthy => Verdict::Healthy,
        wh::Verdict::Unhealthy => Verdict::Unhealthy,
        wh::Verdict::Eject(ms) => Verdict::Eject(ms),
    }
}

/// One call into a policy.
enum Call<'a> {
    Update(&'a Arc<RouteSnapshot>),
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
        Ok(Self::Native(native, env))
    }

    fn build(
        host: &PluginHost,
        kind: PluginKind,
        spec: &PluginSpec,
        route: &Arc<RouteSnapshot>,
    ) -> Result<Self, LoadError> {
        match spec {
            PluginSpec::Builtin { name, config } => {
                Self::native(kind, name, config, host.state(Arc::from(name.as_str()), Arc::clone(route)))
            }
            PluginSpec::Wasm { name, compiled, config } => {
                let mut store = host.store(Arc::from(name.as_str()), Arc::clone(route));
                let deadline = host.config().update_deadline;
                arm(&mut store, host.ticks(deadline), deadline);
                let inst = |e: wasmtime::Error| LoadError::Instantiate(format!("{e:#}"));
                let init = |r: wasmtime::Result<Result<(), String>>| match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(reason)) => Err(LoadError::Config(reason)),
                    Err(e) => Err(LoadError::SelfTest(format!("init {}", fault(&e)))),
                };
                let guest = match (&compiled.pre, kind) {
                    (KindPre::Health(pre), PluginKind::Health) => {
                        let g = pre.instantiate(&mut store).map_err(inst)?;
                        init(g.sextant_plugin_health().call_init(&mut store, config))?;
                        Guest::Health(g)
                    }
                    (KindPre::Scheduler(pre), PluginKind::Scheduler) => {
                        let g = pre.instantiate(&mut store).map_err(inst)?;
                        init(g.sextant_plugin_scheduler().call_init(&mut store, config))?;
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
            Self::Native(native, env) => Ok(match (native, call) {
                (Native::Health(p), Call::Update(r)) => {
                    env.route = Arc::clone(r);
                    p.update(&r.model, env).map_err(CallFault::Refused)?;
                    Answer::Updated
                }
                (Native::Scheduler(p), Call::Update(r)) => {
                    env.route = Arc::clone(r);
                    p.update(&r.model, env).map_err(CallFault::Refused)?;
                    Answer::Updated
                }
                (Native::Health(p), Call::Probe(r)) => Answer::Verdict(p.on_probe(r, env)),
                (Native::Health(p), Call::Outcome(o)) => Answer::Verdict(p.on_outcome(o, env)),
                (Native::Scheduler(p), Call::Schedule(s)) => Answer::Weights(p.schedule(s, env)),
                _ => Answer::Verdict(Verdict::Unchanged),
            }),
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
                        store.data_mut().route = Arc::clone(r);
                        g.sextant_plugin_health().call_update(&mut *store, &r.wit).map(refused)
                    }
                    (Guest::Scheduler(g), Call::Update(r)) => {
                        store.data_mut().route = Arc::clone(r);
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
                        let stats: Vec<ws::EndpointStats> = stats
                            .iter()
                            .map(|s| ws::EndpointStats {
                                rps: s.rps,
                                latency_p50: s.latency_p50,
                                latency_p99: s.latency_p99,
                                requests: s.requests,
                                errors: s.errors,
                                overloaded: s.overloaded,
                                retry_after_ms: s.retry_after_ms,
                                age_ms: s.age_ms,
                            })
                            .collect();
                        g.sextant_plugin_scheduler().call_schedule(&mut *store, &stats).map(|w| Ok(Answer::Weights(w)))
                    }
                    _ => Ok(Ok(Answer::Verdict(Verdict::Unchanged))),
                };
                result.map_err(|e| fault(&e))?
            }
        }
    }
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
    route: Arc<RouteSnapshot>,
    counters: Arc<Counters>,
    faults: VecDeque<Instant>,
    previous: Vec<PluginSpec>,
    events: VecDeque<SlotEvent>,
    /// The active policy failed on the current snapshot: the native default answers (each
    /// call counted as a fallback) until a snapshot update succeeds.
    degraded: bool,
}

/// A health or scheduler slot of one service.
pub struct PolicySlot {
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
        self.host.retire(self.kind, &state.spec, &state.counters.snapshot());
    }
}

impl std::fmt::Debug for PolicySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySlot").field("kind", &self.kind).field("service", &self.service).finish_non_exhaustive()
    }
}

impl PolicySlot {
    /// A health slot running the built-in `default` (`consecutive`, `outlier`).
    ///
    /// # Errors
    /// An unknown built-in or an invalid configuration.
    pub fn health(host: &PluginHost, service: &str, default: PluginSpec) -> Result<Self, LoadError> {
        Self::new(PluginKind::Health, host, service, default)
    }

    /// A scheduler slot running the built-in `default` (`adaptive`, `slow-start`, `gray-split`).
    ///
    /// # Errors
    /// An unknown built-in or an invalid configuration.
    pub fn scheduler(host: &PluginHost, service: &str, default: PluginSpec) -> Result<Self, LoadError> {
        Self::new(PluginKind::Scheduler, host, service, default)
    }

    fn new(kind: PluginKind, host: &PluginHost, service: &str, default: PluginSpec) -> Result<Self, LoadError> {
        if !matches!(default, PluginSpec::Builtin { .. }) {
            return Err(LoadError::UnknownBuiltin("a slot's default must be a built-in".into()));
        }
        let tracker = Arc::new(LoadTracker::new(host.config().ewma_decay));
        let route = Arc::new(RouteSnapshot::new(
            0,
            Snapshot { service: service.into(), ..Snapshot::default() },
            Arc::clone(&tracker),
        ));
        let runner = Runner::build(host, kind, &default, &route)?;
        let fallback = Runner::build(host, kind, &default, &route)?;
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
                route,
                counters: Arc::new(Counters::default()),
                faults: VecDeque::new(),
                previous: Vec::new(),
                events: VecDeque::new(),
                degraded: false,
            }),
            default,
            observer: std::sync::OnceLock::new(),
        })
    }

    /// Publishes a new snapshot to the policy.
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        let mut state = self.state.lock();
        let epoch = state.route.epoch + 1;
        let route = Arc::new(RouteSnapshot::new(epoch, snapshot, Arc::clone(&self.tracker)));
        state.route = Arc::clone(&route);
        self.call(&mut state, &Call::Update(&route));
    }

    /// Hands a probe result to the health policy.
    pub fn on_probe(&self, result: &ProbeResult) -> Verdict {
        match self.call(&mut self.state.lock(), &Call::Probe(result)) {
            Answer::Verdict(v) => v,
            _ => Verdict::Unchanged,
        }
    }

    /// Hands a request outcome to the health policy.
    pub fn on_outcome(&self, outcome: &Outcome) -> Verdict {
        match self.call(&mut self.state.lock(), &Call::Outcome(outcome)) {
            Answer::Verdict(v) => v,
            _ => Verdict::Unchanged,
        }
    }

    /// Asks the scheduler for effective weights; the registered weights when it fails.
    pub fn schedule(&self, stats: &[EndpointStats]) -> Vec<u32> {
        let mut state = self.state.lock();
        let registered: Vec<u32> = state.route.model.endpoints.iter().map(|e| e.weight).collect();
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
        let len = state.route.len();
        let result = state.runner.call(&self.host, call).and_then(|a| validate(a, call, len));
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
                let now = Instant::now();
                state.faults.push_back(now);
                let window: Duration = self.host.config().fault_window;
                while state.faults.front().is_some_and(|t| now.duration_since(*t) > window) {
                    state.faults.pop_front();
                }
                if state.faults.len() > self.host.config().max_faults as usize {
                    let reason = format!("{} faults within {window:?}, last: {f}", state.faults.len());
                    let target = state.previous.pop().unwrap_or_else(|| self.default.clone());
                    tracing::error!(service = %self.service, kind = %self.kind, %reason, "rolled back automatically");
                    let faulty = state.spec.clone();
                    if self.install(state, target, format!("auto-rollback: {reason}")).is_err() {
                        let _ = self.install(state, self.default.clone(), format!("auto-rollback: {reason}"));
                    }
                    if let Some(observe) = self.observer.get() {
                        observe(AutoRollback {
                            service: self.service.clone(),
                            kind: self.kind,
                            plugin: faulty.name().to_owned(),
                            sha256: match &faulty {
                                PluginSpec::Wasm { compiled, .. } => Some(compiled.sha256.clone()),
                                PluginSpec::Builtin { .. } => None,
                            },
                            reason,
                        });
                    }
                } else {
                    let route = Arc::clone(&state.route);
                    let restored = Runner::build(&self.host, self.kind, &state.spec, &route).and_then(|mut fresh| {
                        fresh
                            .call(&self.host, &Call::Update(&route))
                            .map_err(|f| LoadError::SelfTest(f.to_string()))?;
                        Ok(fresh)
                    });
                    match restored {
                        Ok(fresh) => state.runner = fresh,
                        Err(e) => {
                            if !state.degraded {
                                let what = format!(
                                    "update fault on revision {}: {e}; the native default serves",
                                    route.model.revision
                                );
                                state.events.push_back(SlotEvent { at: unix_now(), version: state.version, what });
                                while state.events.len() > MAX_EVENTS {
                                    state.events.pop_front();
                                }
                            }
                            state.degraded = true;
                        }
                    }
                }
                let route = Arc::clone(&state.route);
                let _ = state.fallback.call(&self.host, &Call::Update(&route));
                state.fallback.call(&self.host, call).unwrap_or(Answer::Verdict(Verdict::Unchanged))
            }
        }
    }

    /// Sets who is told of automatic rollbacks (once; later calls are ignored).
    pub fn observe(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    fn self_test(&self, spec: &PluginSpec) -> Result<(), LoadError> {
        let tracker = Arc::new(LoadTracker::new(self.host.config().ewma_decay));
        let route = Arc::new(RouteSnapshot::new(1, synthetic(), tracker));
        let mut runner = Runner::build(&self.host, self.kind, spec, &route)?;
        let fail = |what: &str, f: CallFault| LoadError::SelfTest(format!("{what} {f}"));
        runner.call(&self.host, &Call::Update(&route)).map_err(|f| fail("update", f))?;
        let n = route.len();
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
        let mut runner = Runner::build(&self.host, self.kind, &spec, &state.route)?;
        let route = Arc::clone(&state.route);
        runner
            .call(&self.host, &Call::Update(&route))
            .map_err(|f| LoadError::SelfTest(format!("update with the current snapshot {f}")))?;
        state.runner = runner;
        self.host.retire(self.kind, &state.spec, &state.counters.snapshot());
        state.spec = spec;
        state.version += 1;
        state.loaded_at = SystemTime::now();
        state.counters = Arc::new(Counters::default());
        state.faults.clear();
        state.degraded = false;
        state.events.push_back(SlotEvent { at: unix_now(), version: state.version, what });
        while state.events.len() > MAX_EVENTS {
            state.events.pop_front();
        }
        Ok(Self::version_status(state))
    }

    /// Loads a new policy: kind check, self-test, swap. Nothing changes when it fails.
    ///
    /// # Errors
    /// What was wrong with the plugin.
    pub fn load(&self, spec: PluginSpec) -> Result<VersionStatus, LoadError> {
        if let PluginSpec::Wasm { compiled, .. } = &spec {
            if compiled.kind != self.kind {
                return Err(LoadError::WrongKind { expected: self.kind, found: compiled.kind });
            }
            self.self_test(&spec)?;
        }
        let mut state = self.state.lock();
        let old = state.spec.clone();
        let status = self.install(&mut state, spec, "load".into())?;
        state.previous.push(old);
        if state.previous.len() > 4 {
            state.previous.remove(0);
        }
        Ok(status)
    }

    /// Goes back to the previous policy.
    ///
    /// # Errors
    /// Nothing to roll back to, or it no longer builds.
    pub fn rollback(&self) -> Result<VersionStatus, SlotError> {
        let mut state = self.state.lock();
        let target = state.previous.last().cloned().ok_or(SlotError::NoPrevious)?;
        let status = self.install(&mut state, target, "rollback".into())?;
        state.previous.pop();
        Ok(status)
    }

    fn version_status(state: &State) -> VersionStatus {
        VersionStatus::of(state.version, &state.spec, state.loaded_at, state.counters.snapshot())
    }

    /// Status of the active policy and the slot's history.
    #[must_use]
    pub fn status(&self) -> SlotStatus {
        let state = self.state.lock();
        SlotStatus {
            service: self.service.clone(),
            active: Self::version_status(&state),
            previous: state.previous.iter().rev().map(|s| s.name().to_owned()).collect(),
            events: state.events.iter().cloned().collect(),
        }
    }
}
