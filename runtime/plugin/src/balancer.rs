//! Balancer slots: one per service, holding the active balancer version and swapping it
//! atomically.
//!
//! A version runs on `workers` instances (native policies or wasm instances, each with its
//! own store); a pick locks the instance of its thread's shard (falling over to any free
//! one), so picks on different threads run in parallel on different instances, each given
//! the same snapshot. A new snapshot is applied to every instance off the hot path
//! ([`BalancerSlot::set_snapshot`]); an instance that missed it catches up on its next pick.
//!
//! Loading: compile (cached) → kind and contract version checked by the host → self-test
//! on a synthetic snapshot → every instance initialised and given the current snapshot →
//! one atomic pointer swap. Picks in progress finish on the old version, whose instances are
//! freed when the last one lets go. A pick whose plugin call traps, misses its deadline,
//! hits the memory cap or answers out of range is answered by the slot's native default
//! instead (no pick fails), the faulty instance is replaced, and more than `max_faults`
//! faults within `fault_window` roll the slot back to the previous version.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use sextant_builtins::{Balancer, EdfWeights, Endpoint, Mode, Request, RingPoint, Snapshot, Table, mix64};
use wasmtime::Store;

use crate::bindings::balancer::BalancerPlugin;
use crate::bindings::balancer::exports::sextant::plugin::balancer as wit;
use crate::host::{KindPre, arm, fault};
use crate::lifecycle::{self, FaultWindow, History, rollback_reason};
use crate::load::{EndpointLoad, LoadTracker, RouteSnapshot};
use crate::stats::Counters;
use crate::{CallFault, Compiled, CountersSnapshot, HostState, LoadError, PluginHost, PluginKind, SlotError};

/// What to run in a slot.
#[derive(Debug, Clone)]
pub enum PluginSpec {
    /// A built-in policy, native.
    Builtin {
        /// Its name (`round-robin`, `peak-ewma`, ...).
        name: String,
        /// JSON configuration.
        config: String,
    },
    /// A wasm component.
    Wasm {
        /// A name for status and logs (the plugin record's name or the file name).
        name: String,
        /// The compiled component.
        compiled: Arc<Compiled>,
        /// JSON configuration.
        config: String,
    },
}

impl PluginSpec {
    /// A built-in with an empty configuration.
    #[must_use]
    pub fn builtin(name: &str) -> Self {
        Self::Builtin { name: name.into(), config: "{}".into() }
    }

    /// A wasm component from its bytes, with an empty configuration: hashed, compiled (or
    /// taken from `host`'s cache by sha256) and checked (a component exporting a plugin world
    /// of this contract). Compiling blocks the calling thread (about 0.2 s for a built-in in a
    /// release build, seconds in a debug one): call it on a blocking thread
    /// (`tokio::task::spawn_blocking`), not on an async worker that serves requests.
    ///
    /// # Errors
    /// What is wrong with the bytes ([`LoadError`]: not wasm, a core module, another world or
    /// contract version, ...).
    pub fn wasm(host: &PluginHost, name: &str, bytes: &[u8]) -> Result<Self, LoadError> {
        Ok(Self::Wasm { name: name.into(), compiled: host.compile(bytes)?, config: "{}".into() })
    }

    /// The same plugin with `config` (JSON text), checked by the plugin's `init` when a slot
    /// loads it.
    #[must_use]
    pub fn with_config(self, config: impl Into<String>) -> Self {
        let config = config.into();
        match self {
            Self::Builtin { name, .. } => Self::Builtin { name, config },
            Self::Wasm { name, compiled, .. } => Self::Wasm { name, compiled, config },
        }
    }

    /// The plugin's name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Builtin { name, .. } | Self::Wasm { name, .. } => name,
        }
    }
}

/// A balancing request.
#[derive(Debug, Clone, Default)]
pub struct PickRequest {
    /// Hash of the affinity key, for hash balancers.
    pub hash_key: Option<u64>,
    /// Request headers the plugin may read (moved in and out, never copied).
    pub headers: Vec<(String, String)>,
}

impl PickRequest {
    /// A request whose affinity key is `key` ([`affinity_hash`] of it), no headers.
    #[must_use]
    pub fn with_affinity(key: &str) -> Self {
        Self { hash_key: Some(affinity_hash(key)), headers: Vec::new() }
    }
}

/// The hash of an affinity key (a user id, a session cookie): FNV-1a over its bytes, then
/// mixed. The same on every platform, in wasm, through a server's `pick` and in
/// `sextant gateway` (`hash_header`), so a key lands on the same endpoint wherever it is
/// hashed.
#[must_use]
pub fn affinity_hash(key: &str) -> u64 {
    sextant_builtins::hash_str(key)
}

/// The answer of a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    /// Index into the route snapshot the pick was made on.
    pub index: u32,
    /// The version that answered (or whose fault the fallback covered).
    pub version: u64,
    /// True when the native fallback answered because the plugin failed.
    pub fallback: bool,
}

enum Exec {
    PerRequest,
    Weighted(EdfWeights),
    Ring(Vec<RingPoint>),
    Maglev(Vec<u32>),
    /// The plugin failed on this snapshot: the fallback answers until the next one.
    Fallback,
}

struct WasmRunner {
    store: Store<HostState>,
    guest: BalancerPlugin,
}

enum Runner {
    Native(Box<dyn Balancer>, HostState),
    Wasm(Box<WasmRunner>),
    /// A wasm instance that could not be rebuilt: the fallback serves.
    Gone,
}

struct Worker {
    /// Epoch of the newest route given to this instance.
    seen: u64,
    /// The route `exec` and the runner index: `seen`'s, or, after the plugin failed on
    /// `seen`'s, the older one it last accepted (see `stale`).
    route: Arc<RouteSnapshot>,
    /// While the plugin serves an older route than `seen`'s: its endpoint indices mapped to
    /// the newest route's (`None`: no longer there, the native default answers instead).
    stale: Option<Vec<Option<u32>>>,
    exec: Exec,
    runner: Runner,
    fallback: Box<dyn Balancer>,
    fallback_env: HostState,
    calls: u64,
}

/// Built by `update` → validated table or per-request.
fn validate_mode(mode: Mode, len: usize) -> Result<Exec, CallFault> {
    let in_range = |i: u32| (i as usize) < len;
    Ok(match mode {
        Mode::PerRequest => Exec::PerRequest,
        Mode::Table(Table::Weighted(w)) => {
            if w.len() != len {
                return Err(CallFault::Contract(format!("weighted table of {} entries for {len} endpoints", w.len())));
            }
            Exec::Weighted(EdfWeights::new(&w))
        }
        Mode::Table(Table::Ring(mut ring)) => {
            if ring.iter().any(|p| !in_range(p.endpoint)) || (ring.is_empty() && len > 0) {
                return Err(CallFault::Contract("ring refers to endpoints out of range, or is empty".into()));
            }
            ring.sort_unstable_by_key(|p| (p.hash, p.endpoint));
            Exec::Ring(ring)
        }
        Mode::Table(Table::Maglev(t)) => {
            if t.iter().any(|&i| !in_range(i)) || (t.is_empty() && len > 0) {
                return Err(CallFault::Contract("maglev table refers to endpoints out of range, or is empty".into()));
            }
            Exec::Maglev(t)
        }
    })
}

fn mode_from_wit(m: wit::Mode) -> Mode {
    match m {
        wit::Mode::PerRequest => Mode::PerRequest,
        wit::Mode::Table(wit::Table::Weighted(w)) => Mode::Table(Table::Weighted(w)),
        wit::Mode::Table(wit::Table::Maglev(t)) => Mode::Table(Table::Maglev(t)),
        wit::Mode::Table(wit::Table::Ring(r)) => {
            Mode::Table(Table::Ring(r.into_iter().map(|p| RingPoint { hash: p.hash, endpoint: p.endpoint }).collect()))
        }
    }
}

fn check_pick(answer: Option<u32>, len: usize) -> Result<Option<u32>, CallFault> {
    match answer {
        Some(i) if (i as usize) < len => Ok(Some(i)),
        None if len == 0 => Ok(None),
        Some(i) => Err(CallFault::Contract(format!("picked endpoint {i} of {len}"))),
        None => Err(CallFault::Contract(format!("picked nothing while {len} endpoints exist"))),
    }
}

impl WasmRunner {
    fn new(
        host: &PluginHost,
        compiled: &Compiled,
        label: Arc<str>,
        route: Arc<RouteSnapshot>,
        config: &str,
    ) -> Result<Self, LoadError> {
        Self::with_store(compiled, config, host, host.store(label, route))
    }

    fn with_store(
        compiled: &Compiled,
        config: &str,
        host: &PluginHost,
        mut store: Store<HostState>,
    ) -> Result<Self, LoadError> {
        let KindPre::Balancer(pre) = &compiled.pre else {
            return Err(LoadError::WrongKind { expected: PluginKind::Balancer, found: compiled.kind });
        };
        let deadline = host.config().update_deadline;
        arm(&mut store, host.ticks(deadline), deadline);
        let guest = pre.instantiate(&mut store).map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        match guest.sextant_plugin_balancer().call_init(&mut store, config) {
            Ok(Ok(())) => Ok(Self { store, guest }),
            Ok(Err(reason)) => Err(LoadError::Config(reason)),
            Err(e) => Err(LoadError::SelfTest(format!("init {}", fault(&e)))),
        }
    }

    fn update(&mut self, host: &PluginHost, route: &Arc<RouteSnapshot>) -> Result<Mode, CallFault> {
        self.store.data_mut().route = Arc::clone(route);
        let deadline = host.config().update_deadline;
        arm(&mut self.store, host.ticks(deadline), deadline);
        match self.guest.sextant_plugin_balancer().call_update(&mut self.store, &route.wit) {
            Ok(Ok(mode)) => Ok(mode_from_wit(mode)),
            Ok(Err(reason)) => Err(CallFault::Refused(reason)),
            Err(e) => Err(fault(&e)),
        }
    }

    fn pick(&mut self, host: &PluginHost, ticks: u64, request: &mut PickRequest) -> Result<Option<u32>, CallFault> {
        arm(&mut self.store, ticks, host.config().pick_deadline);
        std::mem::swap(&mut self.store.data_mut().headers, &mut request.headers);
        let r = self
            .guest
            .sextant_plugin_balancer()
            .call_pick(&mut self.store, wit::Request { hash_key: request.hash_key });
        std::mem::swap(&mut self.store.data_mut().headers, &mut request.headers);
        r.map_err(|e| fault(&e))
    }
}

/// One balancer version in a slot.
pub struct Version {
    host: PluginHost,
    id: u64,
    spec: PluginSpec,
    loaded_at: SystemTime,
    workers: Box<[Mutex<Worker>]>,
    counters: Counters,
    faults: Mutex<FaultWindow>,
}

impl Drop for Version {
    fn drop(&mut self) {
        let mut counters = self.counters.snapshot();
        counters.calls = self.workers.iter_mut().map(|w| w.get_mut().calls).sum();
        self.host.retire(PluginKind::Balancer, &self.spec, &counters);
    }
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version").field("id", &self.id).field("spec", &self.spec).finish_non_exhaustive()
    }
}

/// A version's status, for `plugin list` and `/metrics`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VersionStatus {
    /// Version number inside the slot (rises with every load).
    pub id: u64,
    /// Plugin name.
    pub name: String,
    /// `builtin` or `wasm`.
    pub source: &'static str,
    /// sha256 of the component (wasm only).
    pub sha256: Option<String>,
    /// When it was published (Unix seconds).
    pub loaded_at: u64,
    /// Calls, faults and call times.
    #[serde(flatten)]
    pub counters: CountersSnapshot,
}

impl VersionStatus {
    pub(crate) fn of(id: u64, spec: &PluginSpec, loaded_at: SystemTime, counters: CountersSnapshot) -> Self {
        let (name, source, sha256) = match spec {
            PluginSpec::Builtin { name, .. } => (name.clone(), "builtin", None),
            PluginSpec::Wasm { name, compiled, .. } => (name.clone(), "wasm", Some(compiled.sha256.clone())),
        };
        Self {
            id,
            name,
            source,
            sha256,
            loaded_at: loaded_at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            counters,
        }
    }
}

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Relaxed)
    };
}

/// How often a call is timed (1 in N), to keep the clock off most picks.
const SAMPLE_EVERY: u64 = 64;

impl Version {
    fn build(
        host: &PluginHost,
        id: u64,
        spec: PluginSpec,
        default: &PluginSpec,
        route: &Arc<RouteSnapshot>,
    ) -> Result<Self, LoadError> {
        let label: Arc<str> = Arc::from(format!("{}#{id}", spec.name()));
        let mut workers = Vec::new();
        for _ in 0..host.config().workers.max(1) {
            let runner = match &spec {
                PluginSpec::Builtin { name, config } => Runner::Native(
                    sextant_builtins::balancer(name, config).map_err(LoadError::UnknownBuiltin)?,
                    host.state(Arc::clone(&label), Arc::clone(route)),
                ),
                PluginSpec::Wasm { compiled, config, .. } => Runner::Wasm(Box::new(WasmRunner::new(
                    host,
                    compiled,
                    Arc::clone(&label),
                    Arc::clone(route),
                    config,
                )?)),
            };
            let PluginSpec::Builtin { name, config } = default else {
                unreachable!("a slot's default is a built-in");
            };
            let fallback = sextant_builtins::balancer(name, config).map_err(LoadError::UnknownBuiltin)?;
            let mut worker = Worker {
                seen: u64::MAX,
                route: Arc::clone(route),
                stale: None,
                exec: Exec::Fallback,
                runner,
                fallback,
                fallback_env: host.state(Arc::clone(&label), Arc::clone(route)),
                calls: 0,
            };
            worker
                .apply(host, &spec, route)
                .map_err(|f| LoadError::SelfTest(format!("update with the current snapshot {f}")))?;
            workers.push(Mutex::new(worker));
        }
        Ok(Self {
            host: host.clone(),
            id,
            spec,
            loaded_at: SystemTime::now(),
            workers: workers.into_boxed_slice(),
            counters: Counters::default(),
            faults: Mutex::new(FaultWindow::default()),
        })
    }

    fn worker(&self) -> MutexGuard<'_, Worker> {
        let n = self.workers.len();
        let start = SHARD.with(|s| *s) % n;
        for k in 0..n {
            if let Some(g) = self.workers[(start + k) % n].try_lock() {
                return g;
            }
        }
        self.workers[start].lock()
    }

    /// Records a fault; the faults within the window when the version has now faulted too
    /// often.
    fn record_fault(&self, f: &CallFault, host: &PluginHost) -> Option<usize> {
        self.counters.fault(f);
        self.faults.lock().record(Instant::now(), host.config().fault_window, host.config().max_faults)
    }

    /// Status.
    #[must_use]
    pub fn status(&self) -> VersionStatus {
        let mut counters = self.counters.snapshot();
        counters.calls = self.workers.iter().map(|w| w.lock().calls).sum();
        VersionStatus::of(self.id, &self.spec, self.loaded_at, counters)
    }
}

impl Worker {
    /// Applies a route to the plugin and the fallback. When the plugin fails on it, the
    /// plugin's own previous state keeps serving (its answers mapped to the new route, an
    /// endpoint no longer there answered by the native default); with no previous state to
    /// keep, the native default serves this route. Either way the error is returned.
    fn apply(&mut self, host: &PluginHost, spec: &PluginSpec, route: &Arc<RouteSnapshot>) -> Result<(), CallFault> {
        self.seen = route.epoch;
        self.fallback_env.route = Arc::clone(route);
        // The native default cannot fail on a valid snapshot; if it ever refused, picks
        // would find no endpoint, which the caller sees as "none".
        let _ = self.fallback.update(&route.model, &mut self.fallback_env);
        let result = match &mut self.runner {
            Runner::Native(b, env) => {
                env.route = Arc::clone(route);
                b.update(&route.model, env).map_err(CallFault::Refused)
            }
            Runner::Wasm(w) => w.update(host, route),
            Runner::Gone => Err(CallFault::Trap("instance lost".into())),
        };
        let fault = match result.and_then(|mode| validate_mode(mode, route.len())) {
            Ok(exec) => {
                self.exec = exec;
                self.route = Arc::clone(route);
                self.stale = None;
                return Ok(());
            }
            Err(f) => f,
        };
        if !self.keep_previous(host, spec) {
            self.exec = Exec::Fallback;
            self.route = Arc::clone(route);
            self.stale = None;
            return Err(fault);
        }
        let now: std::collections::HashMap<&str, u32> =
            route.model.endpoints.iter().zip(0u32..).map(|(e, i)| (e.id.as_str(), i)).collect();
        self.stale =
            Some(self.route.model.endpoints.iter().map(|e| now.get(e.id.as_str()).copied()).collect::<Vec<_>>());
        Err(fault)
    }

    /// After a failed update: whether the state that served `self.route` still can. A
    /// table stands on its own; a per-request wasm instance (which may have trapped, or
    /// half-applied the new route) is rebuilt on `self.route`; a native policy that refused
    /// is not trusted further.
    fn keep_previous(&mut self, host: &PluginHost, spec: &PluginSpec) -> bool {
        match (&self.exec, &self.runner) {
            (Exec::Fallback, _) | (_, Runner::Native(..) | Runner::Gone) => false,
            (Exec::Weighted(_) | Exec::Ring(_) | Exec::Maglev(_), Runner::Wasm(_)) => true,
            (Exec::PerRequest, Runner::Wasm(_)) => {
                let PluginSpec::Wasm { compiled, config, name } = spec else { return false };
                let previous = Arc::clone(&self.route);
                let Ok(mut fresh) =
                    WasmRunner::new(host, compiled, Arc::from(name.as_str()), Arc::clone(&previous), config)
                else {
                    return false;
                };
                let restored = fresh.update(host, &previous).and_then(|mode| validate_mode(mode, previous.len()));
                match restored {
                    Ok(exec @ Exec::PerRequest) => {
                        self.runner = Runner::Wasm(Box::new(fresh));
                        self.exec = exec;
                        true
                    }
                    _ => false,
                }
            }
        }
    }

    fn fallback_pick(&mut self, request: &PickRequest) -> Option<u32> {
        let r = Request { hash_key: request.hash_key };
        self.fallback.pick(&r, &mut self.fallback_env)
    }

    fn pick(
        &mut self,
        host: &PluginHost,
        ticks: u64,
        request: &mut PickRequest,
        len: usize,
    ) -> Result<Option<u32>, CallFault> {
        self.calls += 1;
        // Tables draw keys for key-less requests from the instance's own generator, so a
        // native and a wasm instance with the same seed agree.
        let hash_key = request.hash_key;
        let key = |runner: &mut Runner, fallback_env: &mut HostState| {
            hash_key.unwrap_or_else(|| {
                let env = match runner {
                    Runner::Native(_, env) => env,
                    Runner::Wasm(w) => w.store.data_mut(),
                    Runner::Gone => fallback_env,
                };
                mix64(sextant_builtins::Env::random(env))
            })
        };
        match &mut self.exec {
            Exec::Fallback => Ok(self.fallback_pick(request)),
            Exec::Weighted(edf) => Ok(edf.pick()),
            Exec::Ring(ring) => {
                if ring.is_empty() {
                    return Ok(None);
                }
                let k = key(&mut self.runner, &mut self.fallback_env);
                let p = ring.partition_point(|p| p.hash < k);
                Ok(Some(ring[if p == ring.len() { 0 } else { p }].endpoint))
            }
            Exec::Maglev(table) => {
                if table.is_empty() {
                    return Ok(None);
                }
                let k = key(&mut self.runner, &mut self.fallback_env);
                Ok(Some(table[(k % table.len() as u64) as usize]))
            }
            Exec::PerRequest => {
                let answer = match &mut self.runner {
                    Runner::Native(b, env) => {
                        std::mem::swap(&mut env.headers, &mut request.headers);
                        let a = b.pick(&Request { hash_key: request.hash_key }, env);
                        std::mem::swap(&mut env.headers, &mut request.headers);
                        a
                    }
                    Runner::Wasm(w) => w.pick(host, ticks, request)?,
                    Runner::Gone => return Ok(self.fallback_pick(request)),
                };
                check_pick(answer, len)
            }
        }
    }

    /// After a fault the wasm instance may be poisoned (a trapped component cannot be
    /// entered again): replace it with a fresh one, initialised and given the route.
    fn replace_instance(&mut self, host: &PluginHost, spec: &PluginSpec, route: &Arc<RouteSnapshot>) {
        let PluginSpec::Wasm { compiled, config, name } = spec else { return };
        if !matches!(self.runner, Runner::Wasm(_)) {
            return;
        }
        self.runner = match WasmRunner::new(host, compiled, Arc::from(name.as_str()), Arc::clone(route), config) {
            Ok(w) => Runner::Wasm(Box::new(w)),
            Err(e) => {
                tracing::warn!(plugin = %name, error = %e, "could not replace a faulted instance; the fallback serves");
                Runner::Gone
            }
        };
        self.stale = None;
        self.exec = Exec::Fallback;
        let _ = self.apply(host, spec, route);
    }
}

/// A change of a slot's active version, kept for status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotEvent {
    /// Unix seconds.
    pub at: u64,
    /// The version that became active.
    pub version: u64,
    /// What happened: `load`, `rollback`, `auto-rollback: REASON`.
    pub what: String,
}

/// A slot's status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotStatus {
    /// The service.
    pub service: String,
    /// The active version.
    pub active: VersionStatus,
    /// Versions that can be rolled back to, newest first.
    pub previous: Vec<String>,
    /// Recent changes, newest last.
    pub events: Vec<SlotEvent>,
}

struct SlotInner {
    host: PluginHost,
    service: String,
    tracker: Arc<LoadTracker>,
    route: ArcSwap<RouteSnapshot>,
    epoch: AtomicU64,
    active: ArcSwap<Version>,
    default: PluginSpec,
    /// Rollback targets and recent events.
    history: Mutex<History>,
    next_id: AtomicU64,
    /// Serialises loads and rollbacks.
    admin: Mutex<()>,
    /// Epoch of the last route whose update fault was put in `events` (one line per route,
    /// not one per instance).
    update_fault_noted: AtomicU64,
    /// Told of every automatic rollback (the plugin manager marks the version bad).
    observer: std::sync::OnceLock<Observer>,
}

/// What a slot tells its owner when it rolled back on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoRollback {
    /// The service.
    pub service: String,
    /// The slot's kind.
    pub kind: PluginKind,
    /// The faulty plugin's name.
    pub plugin: String,
    /// Its sha256 (wasm only).
    pub sha256: Option<String>,
    /// Why (`N faults within ..., last: ...`).
    pub reason: String,
}

/// Receives a slot's automatic rollbacks (called on the thread that saw the last fault:
/// keep it short, e.g. send on a channel).
pub type Observer = Arc<dyn Fn(AutoRollback) + Send + Sync>;

/// The balancer slot of one service. Cheap to clone; picks are `&self` and lock-free
/// except for the per-instance lock of the thread's shard.
#[derive(Clone)]
pub struct BalancerSlot(Arc<SlotInner>);

impl std::fmt::Debug for BalancerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancerSlot").field("service", &self.0.service).finish_non_exhaustive()
    }
}

/// The synthetic snapshot of the self-test: 8 endpoints with assorted weights, zones,
/// versions and metadata (TEST-NET addresses, never dialled).
pub(crate) fn synthetic() -> Snapshot {
    Snapshot {
        service: "sextant/self-test/synthetic".into(),
        revision: 1,
        protection_active: false,
        endpoints: (0..8u32)
            .map(|i| Endpoint {
                id: format!("self-test-{i}"),
                address: format!("192.0.2.{}:8080", i + 1),
                weight: (i + 1) * 10,
                healthy: true,
                zone: if i % 2 == 0 { "zone-a".into() } else { "zone-b".into() },
                version: if i < 6 { "v1".into() } else { "v2".into() },
                metadata: vec![("index".into(), i.to_string())],
            })
            .collect(),
    }
}

impl BalancerSlot {
    /// A slot for `service` running the built-in `default` (also the fallback of every
    /// plugin loaded into it), with an empty snapshot.
    ///
    /// # Errors
    /// An unknown built-in or an invalid configuration.
    pub fn new(host: &PluginHost, service: &str, default: PluginSpec) -> Result<Self, LoadError> {
        Self::with_tracker(host, service, default, Arc::new(LoadTracker::new(host.config().ewma_decay)))
    }

    /// A slot whose live load comes from `tracker` (a simulation's, on a manual clock).
    ///
    /// # Errors
    /// An unknown built-in or an invalid configuration.
    pub fn with_tracker(
        host: &PluginHost,
        service: &str,
        default: PluginSpec,
        tracker: Arc<LoadTracker>,
    ) -> Result<Self, LoadError> {
        if let PluginSpec::Wasm { name, .. } = &default {
            return Err(LoadError::UnknownBuiltin(format!("a slot's default must be a built-in, not {name}")));
        }
        let route = Arc::new(RouteSnapshot::new(
            0,
            Snapshot { service: service.into(), ..Snapshot::default() },
            Arc::clone(&tracker),
        ));
        let version = Version::build(host, 1, default.clone(), &default, &route)?;
        Ok(Self(Arc::new(SlotInner {
            host: host.clone(),
            service: service.into(),
            tracker,
            route: ArcSwap::new(route),
            epoch: AtomicU64::new(0),
            active: ArcSwap::from_pointee(version),
            default,
            history: Mutex::new(History::default()),
            next_id: AtomicU64::new(2),
            admin: Mutex::new(()),
            update_fault_noted: AtomicU64::new(u64::MAX),
            observer: std::sync::OnceLock::new(),
        })))
    }

    /// The load tracker (in-flight, EWMA) of this service's endpoints.
    #[must_use]
    pub fn tracker(&self) -> &Arc<LoadTracker> {
        &self.0.tracker
    }

    /// The route picks are made on now.
    #[must_use]
    pub fn route(&self) -> Arc<RouteSnapshot> {
        self.0.route.load_full()
    }

    /// Publishes a new snapshot and applies it to every instance of the active version
    /// (off the hot path: call it from the registry watcher).
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        let epoch = self.0.epoch.fetch_add(1, Relaxed) + 1;
        self.publish_route(RouteSnapshot::new(epoch, snapshot, Arc::clone(&self.0.tracker)));
    }

    /// Publishes a new snapshot with a target per endpoint (in the snapshot's order: what the
    /// caller forwards to, an instance, a backend index), as [`BalancerSlot::set_snapshot`]
    /// does; [`BalancerSlot::pick_target`] then returns the target of the endpoint picked,
    /// from the same publication as the balancer's answer, so the two always agree.
    ///
    /// # Panics
    /// When `targets` and `snapshot.endpoints` differ in number.
    pub fn set_snapshot_with<T: Send + Sync + 'static>(&self, snapshot: Snapshot, targets: Vec<T>) {
        let epoch = self.0.epoch.fetch_add(1, Relaxed) + 1;
        self.publish_route(RouteSnapshot::new(epoch, snapshot, Arc::clone(&self.0.tracker)).with_targets(targets));
    }

    /// Makes `route` the one picks are made on, and applies it to every worker of the
    /// active version.
    fn publish_route(&self, route: RouteSnapshot) {
        let route = Arc::new(route);
        self.0.route.store(Arc::clone(&route));
        let version = self.0.active.load_full();
        for w in &version.workers {
            let mut w = w.lock();
            if w.seen != route.epoch
                && let Err(f) = w.apply(&self.0.host, &version.spec, &route)
            {
                let kept = w.stale.is_some();
                drop(w);
                self.update_fault(&version, &f, &route, kept);
            }
        }
    }

    /// Picks an endpoint and returns its target ([`BalancerSlot::set_snapshot_with`]) and its
    /// load cell (start the request's in-flight count on it with
    /// [`LoadTracker::start`](crate::LoadTracker::start)). None when the service has no
    /// endpoint, or its snapshot was published without targets of type `T`. Never fails
    /// because of a plugin, as [`BalancerSlot::pick_with`].
    pub fn pick_target<T: Clone + 'static>(&self, request: &mut PickRequest) -> Option<(T, Arc<EndpointLoad>, Picked)> {
        self.pick_with(request, |route, p| {
            Some((route.target::<T>(p.index)?.clone(), Arc::clone(route.load(p.index)?), p))
        })
        .flatten()
    }

    /// Picks an endpoint and hands it, with the route it indexes, to `f`. None when the
    /// service has no endpoint. Never fails because of a plugin: a faulty answer is
    /// replaced by the native default's.
    pub fn pick_with<R>(&self, request: &mut PickRequest, f: impl FnOnce(&RouteSnapshot, Picked) -> R) -> Option<R> {
        let version = self.0.active.load();
        let mut route = self.0.route.load();
        let host = &self.0.host;
        let mut worker = version.worker();
        if worker.seen != route.epoch {
            if worker.seen > route.epoch {
                // `set_snapshot` published and applied a newer route after our load.
                route = self.0.route.load();
            }
            if worker.seen != route.epoch
                && let Err(fault) = worker.apply(host, &version.spec, &Arc::clone(&route))
            {
                // Counted with the worker held: it now serves `route` (stale or by the
                // default), and another worker may not have applied it yet.
                self.update_fault(&version, &fault, &Arc::clone(&route), worker.stale.is_some());
            }
        }
        let ticks = host.pick_ticks();
        let sample = worker.calls.is_multiple_of(SAMPLE_EVERY);
        let started = sample.then(Instant::now);
        let len = worker.route.len();
        let result = worker.pick(host, ticks, request, len);
        if let Some(t) = started {
            version.counters.call_time.record(t.elapsed());
        }
        let picked = match result {
            // The plugin answered for the route it last accepted, older than the newest:
            // map its answer; one that is no longer there goes to the native default.
            Ok(answer) if worker.stale.is_some() => {
                let mapped =
                    answer.and_then(|i| worker.stale.as_ref().and_then(|m| m.get(i as usize).copied().flatten()));
                let answer = mapped.or_else(|| worker.fallback_pick(request));
                version.counters.fallbacks.fetch_add(1, Relaxed);
                answer.map(|index| Picked { index, version: version.id, fallback: true })
            }
            Ok(answer) => {
                let fallback = matches!(worker.exec, Exec::Fallback);
                if fallback {
                    version.counters.fallbacks.fetch_add(1, Relaxed);
                }
                answer.map(|index| Picked { index, version: version.id, fallback })
            }
            Err(fault) => {
                let answer = worker.fallback_pick(request);
                version.counters.fallbacks.fetch_add(1, Relaxed);
                let full = Arc::clone(&route);
                worker.replace_instance(host, &version.spec, &full);
                drop(worker);
                let full_version = arc_swap::Guard::into_inner(self.0.active.load());
                if full_version.id == version.id {
                    self.fault(&full_version, &fault, &full);
                }
                answer.map(|index| Picked { index, version: version.id, fallback: true })
            }
        };
        picked.map(|p| f(&route, p))
    }

    /// Picks an endpoint index.
    pub fn pick(&self, request: &mut PickRequest) -> Option<Picked> {
        self.pick_with(request, |_, p| p)
    }

    fn fault(&self, version: &Arc<Version>, fault: &CallFault, route: &Arc<RouteSnapshot>) {
        tracing::warn!(service = %self.0.service, plugin = %version.spec.name(), version = version.id, %fault, "plugin fault");
        if let Some(faults) = version.record_fault(fault, &self.0.host) {
            let reason = rollback_reason(faults, self.0.host.config().fault_window, fault);
            self.auto_rollback(version.id, &reason, route);
        }
    }

    /// A failed `update` on a live snapshot: counted as one fault (automatic rollback when
    /// there were too many) and shown in the slot's events, once per snapshot however many
    /// instances the version runs (so the rollback threshold does not depend on the core
    /// count).
    fn update_fault(&self, version: &Arc<Version>, fault: &CallFault, route: &Arc<RouteSnapshot>, kept: bool) {
        if self.0.update_fault_noted.swap(route.epoch, Relaxed) == route.epoch {
            return;
        }
        let serving = if kept { "its previous snapshot serves" } else { "the native default serves" };
        self.note(version.id, format!("update fault on revision {}: {fault}; {serving}", route.model.revision));
        self.fault(version, fault, route);
    }

    fn auto_rollback(&self, faulty: u64, reason: &str, route: &Arc<RouteSnapshot>) {
        let Some(_admin) = self.0.admin.try_lock() else { return };
        let active = self.0.active.load_full();
        if active.id != faulty {
            return;
        }
        let faulty_spec = Some(active.spec.clone());
        let target = self.0.history.lock().take_for_auto_rollback(&self.0.default);
        let id = self.0.next_id.fetch_add(1, Relaxed);
        let version = Version::build(&self.0.host, id, target, &self.0.default, route)
            .or_else(|_| Version::build(&self.0.host, id, self.0.default.clone(), &self.0.default, route));
        if let Ok(v) = version {
            tracing::error!(service = %self.0.service, version = id, plugin = %v.spec.name(), %reason, "rolled back automatically");
            self.publish(v, format!("auto-rollback: {reason}"));
        }
        if let (Some(observe), Some(faulty)) = (self.0.observer.get(), faulty_spec) {
            observe(lifecycle::auto_rollback(&self.0.service, PluginKind::Balancer, &faulty, reason.to_owned()));
        }
    }

    fn publish(&self, version: Version, what: String) {
        let id = version.id;
        self.0.active.store(Arc::new(version));
        self.note(id, what);
    }

    fn note(&self, version: u64, what: String) {
        self.0.history.lock().note(version, what);
    }

    /// Loads a new version: self-test, build, atomic swap. Nothing changes when it fails.
    ///
    /// # Errors
    /// What was wrong with the plugin ([`LoadError`]).
    pub fn load(&self, spec: PluginSpec) -> Result<VersionStatus, LoadError> {
        let _admin = self.0.admin.lock();
        if let PluginSpec::Wasm { compiled, config, .. } = &spec {
            self.self_test(compiled, config)?;
        }
        let id = self.0.next_id.fetch_add(1, Relaxed);
        let route = self.route();
        let version = Version::build(&self.0.host, id, spec, &self.0.default, &route)?;
        let status = version.status();
        let old = self.0.active.load_full();
        self.0.history.lock().replaced(old.spec.clone());
        self.publish(version, "load".into());
        Ok(status)
    }

    /// Goes back to the previous version.
    ///
    /// # Errors
    /// Nothing to roll back to, or the previous version no longer builds.
    pub fn rollback(&self) -> Result<VersionStatus, SlotError> {
        let _admin = self.0.admin.lock();
        let target = self.0.history.lock().rollback_target().cloned().ok_or(SlotError::NoPrevious)?;
        let id = self.0.next_id.fetch_add(1, Relaxed);
        let version = Version::build(&self.0.host, id, target, &self.0.default, &self.route())?;
        self.0.history.lock().rolled_back();
        let status = version.status();
        self.publish(version, "rollback".into());
        Ok(status)
    }

    /// The active version's status and the slot's history.
    #[must_use]
    pub fn status(&self) -> SlotStatus {
        let history = self.0.history.lock();
        SlotStatus {
            service: self.0.service.clone(),
            active: self.0.active.load().status(),
            previous: history.previous_names(),
            events: history.events(),
        }
    }

    /// Sets who is told of automatic rollbacks (once; later calls are ignored).
    pub fn observe(&self, observer: Observer) {
        let _ = self.0.observer.set(observer);
    }

    /// The id of the active version.
    #[must_use]
    pub fn active_version(&self) -> u64 {
        self.0.active.load().id
    }

    /// Runs a plugin on the synthetic snapshot: every pick in range, none on an empty
    /// snapshot, no trap, no deadline.
    fn self_test(&self, compiled: &Arc<Compiled>, config: &str) -> Result<(), LoadError> {
        let host = &self.0.host;
        let tracker = Arc::new(LoadTracker::new(host.config().ewma_decay));
        let route = Arc::new(RouteSnapshot::new(1, synthetic(), Arc::clone(&tracker)));
        let store = host.store_seeded(Arc::from("self-test"), Arc::clone(&route), 0);
        let mut runner = WasmRunner::with_store(compiled, config, host, store)?;
        let fail = |what: &str, f: CallFault| LoadError::SelfTest(format!("{what} {f}"));
        let mode = runner.update(host, &route).map_err(|f| fail("update", f))?;
        let exec = validate_mode(mode, route.len()).map_err(|f| fail("update", f))?;
        if matches!(exec, Exec::PerRequest) {
            let ticks = host.pick_ticks();
            for k in 0..64u64 {
                let mut request = PickRequest { hash_key: (k % 2 == 0).then(|| mix64(k)), headers: Vec::new() };
                let answer = runner.pick(host, ticks, &mut request).map_err(|f| fail("pick", f))?;
                check_pick(answer, route.len()).map_err(|f| fail("pick", f))?;
            }
            let empty = Arc::new(RouteSnapshot::new(2, Snapshot::default(), tracker));
            runner.update(host, &empty).map_err(|f| fail("update with no endpoints", f))?;
            let answer =
                runner.pick(host, ticks, &mut PickRequest::default()).map_err(|f| fail("pick with no endpoints", f))?;
            check_pick(answer, 0).map_err(|f| fail("pick with no endpoints", f))?;
        }
        Ok(())
    }
}
