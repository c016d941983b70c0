//! What a health slot and a scheduler slot share: one core, [`PolicySlot`], generic over a
//! [`PolicyKind`] that says what the kind's calls are, how each runs on a native policy, on a
//! 0.1.0 component and on a 0.2.0 resource, and what stands for an answer when even the
//! native default fails (the kinds: `health.rs`, `scheduler.rs`).
//!
//! A policy keeps one state for its service (consecutive failures, outlier statistics), so
//! one instance behind a mutex serves each slot: a scheduler is called once per window and a
//! health policy per probe, but also once per finished request (`on_outcome`, drained off the
//! request path). The load path (compile, kind and version checks, self-test, swap), the
//! fallback to the native default on a fault, and the automatic rollback are the same as for
//! balancers, and so is what a slot keeps about its versions (`crate::lifecycle`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use sextant_builtins::Snapshot;
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use crate::balancer::synthetic;
use crate::lifecycle::{self, FaultWindow, History, rollback_reason};
use crate::lifecycle::{Observer, SlotStatus, VersionStatus};
use crate::published::Published;
use crate::shared::{Guest as SharedGuest, Live, Missing, SharedRunner};
use crate::state::{HostState, KindPre, arm, fault_in};
use crate::stats::Counters;
use crate::tracker::LoadTracker;
use crate::{CallFault, HostConfig, LoadError, PluginHost, PluginKind, PluginSpec, SlotError};

/// One kind of policy slot: its calls and answers, and how each reaches a native policy, a
/// 0.1.0 component and a 0.2.0 resource. Every kind also takes snapshot updates (`update`).
pub(crate) trait PolicyKind: 'static {
    /// The kind.
    const KIND: PluginKind;
    /// A call other than an update.
    type Call<'a>: Copy;
    /// Its answer.
    type Answer;
    /// A native policy of this kind.
    type Native: Send;
    /// A 0.1.0 component's exports.
    type Guest: Send;

    /// The built-in `name` with `config`.
    ///
    /// # Errors
    /// An unknown built-in or an invalid configuration.
    fn native(name: &str, config: &str) -> Result<Self::Native, String>;
    /// Instantiates a 0.1.0 component; None when `pre` is of another kind.
    fn instantiate(pre: &KindPre, store: &mut Store<HostState>) -> Option<wasmtime::Result<Self::Guest>>;
    /// The component's `init`.
    fn init(guest: &Self::Guest, store: &mut Store<HostState>, config: &str) -> wasmtime::Result<Result<(), String>>;

    /// `update` on a native policy.
    fn update_native(policy: &mut Self::Native, model: &Snapshot, env: &mut HostState) -> Result<(), String>;
    /// A call on a native policy.
    fn call_native(policy: &mut Self::Native, call: Self::Call<'_>, env: &mut HostState) -> Self::Answer;
    /// `update` on a 0.1.0 component.
    fn update_guest(
        guest: &Self::Guest,
        store: &mut Store<HostState>,
        published: &Published,
    ) -> wasmtime::Result<Result<(), String>>;
    /// A call on a 0.1.0 component.
    fn call_guest(
        guest: &Self::Guest,
        store: &mut Store<HostState>,
        call: Self::Call<'_>,
    ) -> wasmtime::Result<Self::Answer>;
    /// `update` on a 0.2.0 resource; None when the shared instance is of another kind.
    fn update_shared(
        guest: &SharedGuest,
        store: &mut Store<HostState>,
        handle: ResourceAny,
        published: &Published,
    ) -> Option<wasmtime::Result<Result<(), String>>>;
    /// A call on a 0.2.0 resource; None when the shared instance is of another kind.
    fn call_shared(
        guest: &SharedGuest,
        store: &mut Store<HostState>,
        handle: ResourceAny,
        call: Self::Call<'_>,
    ) -> Option<wasmtime::Result<Self::Answer>>;

    /// How long a call may run (an update always has the update deadline).
    fn deadline(config: &HostConfig) -> Duration;
    /// Checks an answer against the contract, for a snapshot of `endpoints`.
    ///
    /// # Errors
    /// What breaks the contract.
    fn check(_answer: &Self::Answer, _endpoints: usize) -> Result<(), CallFault> {
        Ok(())
    }
    /// The answer when neither the policy nor the native default gives one.
    fn neutral(call: Self::Call<'_>, published: &Published) -> Self::Answer;
    /// The calls a new version must survive before it is swapped in (after an update with
    /// the synthetic snapshot of `endpoints`), each run through `run`.
    ///
    /// # Errors
    /// The first call that failed, named.
    fn self_test(run: &mut SelfTestCall<'_, Self>, endpoints: usize) -> Result<(), LoadError>;
}

/// How a self-test runs one call on the version under test (its answer checked against the
/// contract).
pub(crate) type SelfTestCall<'r, K> =
    dyn for<'a> FnMut(<K as PolicyKind>::Call<'a>) -> Result<<K as PolicyKind>::Answer, CallFault> + 'r;

/// One operation on a policy: a snapshot update or a call of its kind.
enum Op<'a, K: PolicyKind> {
    Update(&'a Arc<Published>),
    Call(K::Call<'a>),
}

impl<K: PolicyKind> Clone for Op<'_, K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K: PolicyKind> Copy for Op<'_, K> {}

impl<K: PolicyKind> Op<'_, K> {
    fn deadline(self, config: &HostConfig) -> Duration {
        match self {
            Self::Update(_) => config.update_deadline,
            Self::Call(_) => K::deadline(config),
        }
    }
}

/// A result of a 0.1.0 component's or a 0.2.0 resource's `update`.
fn updated(r: Result<(), String>) -> Result<Option<()>, CallFault> {
    r.map(Some).map_err(CallFault::Refused)
}

enum Runner<K: PolicyKind> {
    Native(K::Native, Box<HostState>),
    Wasm(Box<(Store<HostState>, K::Guest)>),
    /// A 0.2.0 plugin: the service's resource in a shared instance, and the last snapshot
    /// given to it (a resource created anew gets it before its first call).
    Shared(SharedRunner, Arc<Published>),
}

impl<K: PolicyKind> Runner<K> {
    fn build(host: &PluginHost, spec: &PluginSpec, published: &Arc<Published>) -> Result<Self, LoadError> {
        let kind = K::KIND;
        match spec {
            PluginSpec::Builtin { name, config } => {
                let native = K::native(name, config).map_err(LoadError::UnknownBuiltin)?;
                let env = host.state(Arc::from(name.as_str()), Arc::clone(published));
                Ok(Self::Native(native, Box::new(env)))
            }
            PluginSpec::Wasm { compiled, .. } if compiled.kind != kind => {
                Err(LoadError::WrongKind { expected: kind, found: compiled.kind })
            }
            PluginSpec::Wasm { name, compiled, config } if compiled.contract.shared() => {
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
                let guest = K::instantiate(&compiled.pre, &mut store)
                    .ok_or(LoadError::WrongKind { expected: kind, found: compiled.kind })?
                    .map_err(|e| host.instantiate_error(&e))?;
                match K::init(&guest, &mut store, config) {
                    Ok(Ok(())) => {}
                    Ok(Err(reason)) => return Err(LoadError::Config(reason)),
                    Err(e) => return Err(LoadError::SelfTest(format!("init {}", fault_in(&mut store, &e)))),
                }
                Ok(Self::Wasm(Box::new((store, guest))))
            }
        }
    }

    /// Runs `op`: `None` for an update, the answer for a call.
    fn run(&mut self, host: &PluginHost, op: Op<'_, K>) -> Result<Option<K::Answer>, CallFault> {
        match self {
            Self::Native(native, env) => {
                let env: &mut HostState = env;
                match op {
                    Op::Update(p) => {
                        env.published = Arc::clone(p);
                        K::update_native(native, &p.model, env).map_err(CallFault::Refused)?;
                        Ok(None)
                    }
                    Op::Call(call) => Ok(Some(K::call_native(native, call, env))),
                }
            }
            Self::Wasm(boxed) => {
                let (store, guest) = &mut **boxed;
                let deadline = op.deadline(host.config());
                arm(store, host.ticks(deadline), deadline);
                let result = match op {
                    Op::Update(p) => {
                        store.data_mut().published = Arc::clone(p);
                        K::update_guest(guest, store, p).map(|r| updated(r).map(|_| None))
                    }
                    Op::Call(call) => K::call_guest(guest, store, call).map(|a| Ok(Some(a))),
                };
                result.map_err(|e| fault_in(store, &e))?
            }
            Self::Shared(shared, last) => {
                if let Op::Update(p) = op {
                    *last = Arc::clone(p);
                }
                let published = Arc::clone(last);
                let answer = shared.call(&mut Arc::clone(last), Missing::Create, |live, handle, fresh| {
                    shared_run::<K>(host, live, handle, fresh, &published, op)
                })?;
                answer.ok_or_else(|| CallFault::Trap("the resource could not be created".into()))
            }
        }
    }
}

/// One operation on a service's 0.2.0 resource; a fresh one is given `published` first.
fn shared_run<K: PolicyKind>(
    host: &PluginHost,
    live: &mut Live,
    handle: ResourceAny,
    fresh: bool,
    published: &Arc<Published>,
    op: Op<'_, K>,
) -> Result<Option<K::Answer>, CallFault> {
    let Live { store, guest } = live;
    let config = host.config();
    let other = || CallFault::Contract(format!("a {} in a {} slot", guest_kind(guest), K::KIND));
    if fresh && !matches!(op, Op::Update(_)) {
        arm(store, host.ticks(config.update_deadline), config.update_deadline);
        let r = K::update_shared(guest, store, handle, published).ok_or_else(other)?;
        updated(r.map_err(|e| fault_in(store, &e))?)?;
    }
    let deadline = op.deadline(config);
    arm(store, host.ticks(deadline), deadline);
    let result = match op {
        Op::Update(p) => K::update_shared(guest, store, handle, p).ok_or_else(other)?.map(|r| updated(r).map(|_| None)),
        Op::Call(call) => K::call_shared(guest, store, handle, call).ok_or_else(other)?.map(|a| Ok(Some(a))),
    };
    result.map_err(|e| fault_in(store, &e))?
}

fn guest_kind(guest: &SharedGuest) -> PluginKind {
    match guest {
        SharedGuest::Balancer(_) => PluginKind::Balancer,
        SharedGuest::Health(_) => PluginKind::Health,
        SharedGuest::Scheduler(_) => PluginKind::Scheduler,
    }
}

pub(crate) struct State<K: PolicyKind> {
    version: u64,
    spec: PluginSpec,
    loaded_at: SystemTime,
    runner: Runner<K>,
    fallback: Runner<K>,
    pub(crate) published: Arc<Published>,
    counters: Arc<Counters>,
    faults: FaultWindow,
    history: History,
    /// The active policy failed on the current snapshot: the native default answers (each
    /// call counted as a fallback) until a snapshot update succeeds.
    degraded: bool,
}

/// What a health and a scheduler slot share; used through [`HealthSlot`] and
/// [`SchedulerSlot`].
///
/// [`HealthSlot`]: crate::HealthSlot
/// [`SchedulerSlot`]: crate::SchedulerSlot
pub(crate) struct PolicySlot<K: PolicyKind> {
    host: PluginHost,
    service: String,
    default: PluginSpec,
    tracker: Arc<LoadTracker>,
    pub(crate) state: Mutex<State<K>>,
    observer: std::sync::OnceLock<Observer>,
}

impl<K: PolicyKind> Drop for PolicySlot<K> {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        self.host.retire(state.spec.version_key(K::KIND), &state.counters.snapshot());
    }
}

impl<K: PolicyKind> std::fmt::Debug for PolicySlot<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySlot").field("kind", &K::KIND).field("service", &self.service).finish_non_exhaustive()
    }
}

impl<K: PolicyKind> PolicySlot<K> {
    pub(crate) fn new(host: &PluginHost, service: &str, default: PluginSpec) -> Result<Self, LoadError> {
        if !matches!(default, PluginSpec::Builtin { .. }) {
            return Err(LoadError::UnknownBuiltin("a slot's default must be a built-in".into()));
        }
        let tracker = Arc::new(LoadTracker::new(host.config().ewma_decay));
        let published = Arc::new(Published::new(
            0,
            Snapshot { service: service.into(), ..Snapshot::default() },
            Arc::clone(&tracker),
        ));
        let runner = Runner::build(host, &default, &published)?;
        let fallback = Runner::build(host, &default, &published)?;
        Ok(Self {
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
        self.run(&mut state, Op::Update(&published));
        epoch
    }

    /// A call on the active policy, with the slot's lock taken.
    pub(crate) fn call(&self, call: K::Call<'_>) -> K::Answer {
        self.call_locked(&mut self.state.lock(), call)
    }

    /// A call on the active policy, the lock held by the caller (a batch of calls).
    pub(crate) fn call_locked(&self, state: &mut State<K>, call: K::Call<'_>) -> K::Answer {
        match self.run(state, Op::Call(call)) {
            Some(answer) => answer,
            None => K::neutral(call, &state.published),
        }
    }

    /// Runs `op` on the active policy; on a fault, counts it, replaces the instance, rolls
    /// back when there were too many, and answers with the native default. A policy that
    /// failed on the current snapshot is not called again (the default answers, counted as
    /// fallbacks) until the next snapshot.
    fn run(&self, state: &mut State<K>, op: Op<'_, K>) -> Option<K::Answer> {
        let update = matches!(op, Op::Update(_));
        if state.degraded && !update {
            state.counters.fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return state.fallback.run(&self.host, op).ok().flatten();
        }
        let len = state.published.len();
        // Counted and (one in SAMPLE_EVERY) timed as a balancer's picks are.
        let calls = state.counters.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = calls.is_multiple_of(crate::version::SAMPLE_EVERY).then(Instant::now);
        let result = state.runner.run(&self.host, op).and_then(|answer| match answer {
            Some(a) => K::check(&a, len).map(|()| Some(a)),
            None => Ok(None),
        });
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
                self.fault(state, &f);
                let published = Arc::clone(&state.published);
                let _ = state.fallback.run(&self.host, Op::Update(&published));
                state.fallback.run(&self.host, op).ok().flatten()
            }
        }
    }

    /// Counts a fault and acts on it: an automatic rollback when there were too many in the
    /// window, otherwise a fresh instance (or, when even that fails on the current snapshot,
    /// the native default until the next one).
    fn fault(&self, state: &mut State<K>, f: &CallFault) {
        let kind = K::KIND;
        tracing::warn!(service = %self.service, %kind, version = state.version, fault = %f, "plugin fault");
        state.counters.fault(f);
        state.counters.fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let config = self.host.config();
        if let Some(faults) = state.faults.record(Instant::now(), config.fault_window, config.max_faults) {
            let reason = rollback_reason(faults, config.fault_window, f);
            let target = state.history.take_for_auto_rollback(&self.default);
            tracing::error!(service = %self.service, %kind, %reason, "rolled back automatically");
            let faulty = state.spec.clone();
            if self.install(state, target, format!("auto-rollback: {reason}")).is_err() {
                let _ = self.install(state, self.default.clone(), format!("auto-rollback: {reason}"));
            }
            if let Some(observe) = self.observer.get() {
                observe(lifecycle::auto_rollback(&self.service, kind, &faulty, reason));
            }
            return;
        }
        let published = Arc::clone(&state.published);
        let restored = Runner::build(&self.host, &state.spec, &published).and_then(|mut fresh| {
            fresh.run(&self.host, Op::Update(&published)).map_err(|f| LoadError::SelfTest(f.to_string()))?;
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

    /// Sets who is told of automatic rollbacks (once; later calls are ignored).
    pub(crate) fn observe(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    fn self_test(&self, spec: &PluginSpec) -> Result<(), LoadError> {
        let tracker = Arc::new(LoadTracker::new(self.host.config().ewma_decay));
        let published = Arc::new(Published::new(1, synthetic(), tracker));
        let mut runner = Runner::<K>::build(&self.host, spec, &published)?;
        runner.run(&self.host, Op::Update(&published)).map_err(|f| LoadError::SelfTest(format!("update {f}")))?;
        let n = published.len();
        K::self_test(
            &mut |call| {
                let answer = runner.run(&self.host, Op::Call(call))?;
                let answer = answer.ok_or_else(|| CallFault::Contract("no answer".into()))?;
                K::check(&answer, n)?;
                Ok(answer)
            },
            n,
        )
    }

    fn install(&self, state: &mut State<K>, spec: PluginSpec, what: String) -> Result<VersionStatus, LoadError> {
        let mut runner = Runner::build(&self.host, &spec, &state.published)?;
        let published = Arc::clone(&state.published);
        runner
            .run(&self.host, Op::Update(&published))
            .map_err(|f| LoadError::SelfTest(format!("update with the current snapshot {f}")))?;
        state.runner = runner;
        self.host.retire(state.spec.version_key(K::KIND), &state.counters.snapshot());
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
            if compiled.kind != K::KIND {
                return Err(LoadError::WrongKind { expected: K::KIND, found: compiled.kind });
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

    fn version_status(state: &State<K>) -> VersionStatus {
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
