//! The wasmtime engine: configuration (pooling allocator, epoch interruption, memory cap),
//! the compile cache keyed by sha256, validation of what a component exports and imports,
//! and the store data every plugin instance gets ([`HostState`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sextant_builtins::{EndpointState, Env, Level, LocalRandom, SplitMix64};
use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder,
    UpdateDeadline,
};

use crate::bindings::balancer::sextant::plugin::{host as wit_host, load as wit_load, types as wit_types};
use crate::bindings::balancer::{BalancerPlugin, BalancerPluginPre};
use crate::bindings::health::HealthPluginPre;
use crate::bindings::scheduler::SchedulerPluginPre;
use crate::load::Published;
use crate::stats::{CountersSnapshot, Totals, VersionKey};
use crate::{CallFault, LoadError};

/// The contract version this host speaks (`wit/`).
pub const CONTRACT_VERSION: &str = "0.1.0";
const PACKAGE: &str = "sextant:plugin";

/// Limits and sizes of the plugin host.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Linear memory cap per plugin instance.
    pub memory_limit: usize,
    /// Deadline of a `pick` call (and of `on-probe`, `on-outcome`).
    pub pick_deadline: Duration,
    /// Deadline of `init`, `update` and `schedule`.
    pub update_deadline: Duration,
    /// Epoch tick: the resolution of deadlines.
    pub tick: Duration,
    /// Plugin instances alive at once (pool size), over all slots and versions.
    pub max_instances: u32,
    /// Instances per balancer version: picks on different threads run on different
    /// instances, so they scale with threads.
    pub workers: usize,
    /// Seed of the plugins' random numbers (each instance gets seed + its number).
    pub seed: u64,
    /// Compiled components kept in the cache.
    pub cache_capacity: usize,
    /// Faults (traps, deadline hits, contract violations) within `fault_window` that roll a
    /// version back automatically.
    pub max_faults: u32,
    /// See `max_faults`.
    pub fault_window: Duration,
    /// Decay time of the latency EWMA the `load` interface reports.
    pub ewma_decay: Duration,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            memory_limit: 64 << 20,
            pick_deadline: Duration::from_millis(10),
            update_deadline: Duration::from_secs(1),
            tick: Duration::from_millis(1),
            max_instances: 1000,
            workers: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            seed: 0x5e7_a47,
            cache_capacity: 64,
            max_faults: 5,
            fault_window: Duration::from_secs(10),
            ewma_decay: Duration::from_secs(10),
        }
    }
}

/// What kind of plugin a component is, by the interface it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// Exports `balancer`.
    Balancer,
    /// Exports `health`.
    Health,
    /// Exports `scheduler`.
    Scheduler,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Balancer => "balancer",
            Self::Health => "health",
            Self::Scheduler => "scheduler",
        })
    }
}

pub(crate) enum KindPre {
    Balancer(BalancerPluginPre<HostState>),
    Health(HealthPluginPre<HostState>),
    Scheduler(SchedulerPluginPre<HostState>),
}

/// A validated, compiled component: what the cache holds.
pub struct Compiled {
    /// sha256 of the bytes, hex.
    pub sha256: String,
    /// Its kind.
    pub kind: PluginKind,
    /// Size of the bytes.
    pub size: usize,
    pub(crate) pre: KindPre,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("sha256", &self.sha256)
            .field("kind", &self.kind)
            .field("size", &self.size)
            .finish()
    }
}

struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Cache = (HashMap<String, Arc<Compiled>>, VecDeque<String>);

struct Inner {
    engine: Engine,
    linker: Linker<HostState>,
    config: HostConfig,
    /// Compiled components by sha256, and their insertion order (oldest evicted first).
    cache: Mutex<Cache>,
    next_seed: AtomicU64,
    compiles: AtomicU64,
    /// `pick_deadline` in ticks, computed once (it is needed on every pick).
    pick_ticks: u64,
    /// What versions no longer running counted, so totals survive swaps.
    retired: Mutex<HashMap<VersionKey, Totals>>,
    _ticker: Ticker,
}

/// The wasmtime plugin host, shared by every slot. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost(Arc<Inner>);

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").field("config", &self.0.config).finish_non_exhaustive()
    }
}

/// Core instances (and tables) one plugin component may create: componentize-py's CPython
/// links 38 (its --stub-wasi build), a Rust component 4 to 6.
pub(crate) const CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// Instances a plugin's store may hold (the component and its core instances).
const INSTANCES_PER_STORE: usize = 1 + CORE_INSTANCES_PER_COMPONENT as usize;

fn engine(config: &HostConfig) -> wasmtime::Result<Engine> {
    let mut pool = PoolingAllocationConfig::default();
    // A component built by Rust for wasm32-wasip2 holds one main module (one memory, one
    // table) plus small shim modules for its imports; componentize-py links CPython from
    // shared libraries (38 core instances, one memory); componentize-js adds its own shims.
    pool.total_component_instances(config.max_instances)
        .total_core_instances(config.max_instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_memories(config.max_instances.saturating_mul(2))
        .max_memories_per_component(4)
        .total_tables(config.max_instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .max_tables_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memory_size(config.memory_limit)
        .max_unused_warm_slots(config.max_instances / 10);
    let mut c = Config::new();
    c.epoch_interruption(true)
        .wasm_component_model(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&c)
}

/// The key `spec`'s counters add up under.
fn version_key(kind: PluginKind, spec: &crate::PluginSpec) -> VersionKey {
    let (plugin, sha256) = match spec {
        crate::PluginSpec::Builtin { name, .. } => (name.clone(), String::new()),
        crate::PluginSpec::Wasm { name, compiled, .. } => (name.clone(), compiled.sha256.clone()),
    };
    VersionKey { kind: kind.to_string(), plugin, sha256 }
}

impl PluginHost {
    /// Starts the engine and its epoch ticker.
    ///
    /// # Errors
    /// When wasmtime cannot set up the engine (for example the pool cannot reserve memory).
    pub fn new(config: HostConfig) -> Result<Self, crate::HostError> {
        let engine = engine(&config)?;
        let mut linker = Linker::new(&engine);
        BalancerPlugin::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (engine, stop, tick) = (engine.clone(), Arc::clone(&stop), config.tick);
            std::thread::Builder::new().name("sextant-epoch".into()).spawn(move || {
                while !stop.load(Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })?
        };
        let pick_ticks = ticks(&config, config.pick_deadline);
        Ok(Self(Arc::new(Inner {
            engine,
            linker,
            pick_ticks,
            next_seed: AtomicU64::new(config.seed),
            config,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
            compiles: AtomicU64::new(0),
            retired: Mutex::new(HashMap::new()),
            _ticker: Ticker { stop, thread: Some(thread) },
        })))
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &HostConfig {
        &self.0.config
    }

    /// Keeps what a version that stops running counted (its slot swapped it out or went away).
    pub(crate) fn retire(&self, kind: PluginKind, spec: &crate::PluginSpec, counters: &CountersSnapshot) {
        let mut totals = Totals::default();
        totals.add(counters);
        if totals.is_zero() {
            return;
        }
        let key = version_key(kind, spec);
        let mut retired = self.0.retired.lock();
        let entry = retired.entry(key).or_default();
        entry.add(counters);
    }

    /// What the versions no longer running counted, by version.
    #[must_use]
    pub fn retired(&self) -> HashMap<VersionKey, Totals> {
        self.0.retired.lock().clone()
    }

    /// How many components were compiled (cache misses) since start.
    #[must_use]
    pub fn compiles(&self) -> u64 {
        self.0.compiles.load(Relaxed)
    }

    /// Hashes, compiles (or takes from the cache) and validates a component: the first steps
    /// of every load. Nothing changes anywhere when this fails.
    ///
    /// # Errors
    /// Each way the bytes can be wrong, named ([`LoadError`]).
    pub fn compile(&self, bytes: &[u8]) -> Result<Arc<Compiled>, LoadError> {
        let sha256 = hex::encode(Sha256::digest(bytes));
        if let Some(hit) = self.0.cache.lock().0.get(&sha256) {
            return Ok(Arc::clone(hit));
        }
        match bytes.get(..8) {
            Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => return Err(LoadError::CoreModule),
            Some([0, b'a', b's', b'm', ..]) => {}
            _ => return Err(LoadError::NotWasm),
        }
        self.0.compiles.fetch_add(1, Relaxed);
        let component = Component::new(&self.0.engine, bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let kind = self.check_exports(&component)?;
        self.check_imports(&component)?;
        let mut linker = self.0.linker.clone();
        // The WASI subset plugins get (`wasi.rs`), under the names this component imports it
        // by; what else of those interfaces it imports traps when called.
        crate::wasi::define(&mut linker, &self.0.engine, &component)?;
        linker.define_unknown_imports_as_traps(&component).map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let mismatch = |e: wasmtime::Error| LoadError::Mismatch { kind, reason: format!("{e:#}") };
        let pre = match kind {
            PluginKind::Balancer => KindPre::Balancer(BalancerPluginPre::new(instance_pre).map_err(mismatch)?),
            PluginKind::Health => KindPre::Health(HealthPluginPre::new(instance_pre).map_err(mismatch)?),
            PluginKind::Scheduler => KindPre::Scheduler(SchedulerPluginPre::new(instance_pre).map_err(mismatch)?),
        };
        let compiled = Arc::new(Compiled { sha256: sha256.clone(), kind, size: bytes.len(), pre });
        let mut cache = self.0.cache.lock();
        let (map, order) = &mut *cache;
        if map.insert(sha256.clone(), Arc::clone(&compiled)).is_none() {
            order.push_back(sha256);
        }
        while order.len() > self.0.config.cache_capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        Ok(compiled)
    }

    fn check_exports(&self, component: &Component) -> Result<PluginKind, LoadError> {
        let ty = component.component_type();
        let mut names = Vec::new();
        let mut found = None;
        for (name, item) in ty.exports(&self.0.engine) {
            names.push(name.to_owned());
            if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
                continue;
            }
            let Some(rest) = name.strip_prefix(PACKAGE).and_then(|r| r.strip_prefix('/')) else { continue };
            let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
            if version != CONTRACT_VERSION {
                return Err(LoadError::VersionMismatch { export: name.to_owned(), host: CONTRACT_VERSION });
            }
            found = Some(match iface {
                "balancer" => PluginKind::Balancer,
                "health" => PluginKind::Health,
                "scheduler" => PluginKind::Scheduler,
                _ => continue,
            });
        }
        found.ok_or_else(|| LoadError::NoPluginExport {
            exports: if names.is_empty() { "nothing".into() } else { names.join(", ") },
        })
    }

    fn check_imports(&self, component: &Component) -> Result<(), LoadError> {
        for (name, _) in component.component_type().imports(&self.0.engine) {
            if crate::wasi::refused(name) {
                return Err(LoadError::DeniedImport(name.to_owned()));
            }
            if name.starts_with("wasi:") {
                continue;
            }
            let Some(rest) = name.strip_prefix(PACKAGE).and_then(|r| r.strip_prefix('/')) else {
                return Err(LoadError::UnknownImport(name.to_owned()));
            };
            let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
            if version != CONTRACT_VERSION {
                return Err(LoadError::VersionMismatch { export: name.to_owned(), host: CONTRACT_VERSION });
            }
            if !matches!(iface, "host" | "load" | "types") {
                return Err(LoadError::UnknownImport(name.to_owned()));
            }
        }
        Ok(())
    }

    /// A fresh store for one plugin instance, with its own seeded generator.
    pub(crate) fn store(&self, label: Arc<str>, route: Arc<Published>) -> Store<HostState> {
        let seed = self.0.next_seed.fetch_add(1, Relaxed);
        self.store_seeded(label, route, seed)
    }

    /// A store with a given seed (the self-test, which must not shift other instances' seeds).
    pub(crate) fn store_seeded(&self, label: Arc<str>, route: Arc<Published>, seed: u64) -> Store<HostState> {
        let state = self.state_seeded(label, route, seed);
        let mut store = Store::new(&self.0.engine, state);
        store.limiter(|s| &mut s.limits);
        // Deadlines count CPU time, not wall time: when the wall-clock deadline passes, the
        // thread's CPU clock is read, and the call is interrupted only once it has burnt a
        // further `budget` of CPU. A thread that was merely descheduled (many threads on
        // few cores) is given more ticks instead of being punished for the scheduler.
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            match state.probe {
                None => {
                    state.probe = Some(cpu_time::ThreadTime::now().as_duration());
                    Ok(UpdateDeadline::Continue(1))
                }
                Some(start) if cpu_time::ThreadTime::now().as_duration().saturating_sub(start) >= state.budget => {
                    Ok(UpdateDeadline::Interrupt)
                }
                Some(_) => Ok(UpdateDeadline::Continue(1)),
            }
        });
        store
    }

    /// Host state for a native policy or a wasm store.
    pub(crate) fn state(&self, label: Arc<str>, route: Arc<Published>) -> HostState {
        let seed = self.0.next_seed.fetch_add(1, Relaxed);
        self.state_seeded(label, route, seed)
    }

    fn state_seeded(&self, label: Arc<str>, route: Arc<Published>, seed: u64) -> HostState {
        HostState {
            rng: SplitMix64::new(seed),
            local: LocalRandom::default(),
            label,
            route,
            headers: Vec::new(),
            clock: Instant::now(),
            output: None,
            budget: Duration::ZERO,
            probe: None,
            limits: StoreLimitsBuilder::new()
                .memory_size(self.0.config.memory_limit)
                .trap_on_grow_failure(true)
                .instances(INSTANCES_PER_STORE)
                .build(),
        }
    }

    /// Epoch ticks for a deadline (rounded up, plus the tick in progress).
    pub(crate) fn ticks(&self, deadline: Duration) -> u64 {
        ticks(&self.0.config, deadline)
    }

    /// [`HostConfig::pick_deadline`] in ticks.
    pub(crate) fn pick_ticks(&self) -> u64 {
        self.0.pick_ticks
    }

    /// Resets the seed counter: the next instances get `seed`, `seed + 1`, ... (tests that
    /// compare native and wasm picks).
    pub fn reseed(&self, seed: u64) {
        self.0.next_seed.store(seed, Relaxed);
    }
}

/// Epoch ticks for a deadline (rounded up, plus the tick in progress).
fn ticks(config: &HostConfig, deadline: Duration) -> u64 {
    let tick = config.tick.as_nanos().max(1);
    u64::try_from(deadline.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX).saturating_add(1)
}

/// Classifies an error out of a guest call on `store`; a trap's reason carries what the
/// plugin wrote just before (a Rust panic's message, an exception's traceback).
pub(crate) fn fault_in(store: &mut Store<HostState>, e: &wasmtime::Error) -> CallFault {
    match fault(e) {
        CallFault::Trap(text) => {
            let wrote = store.data_mut().output.as_mut().map(|o| o.take_tail()).unwrap_or_default();
            if wrote.is_empty() {
                CallFault::Trap(text)
            } else {
                CallFault::Trap(format!("{text}; the plugin wrote: {wrote}"))
            }
        }
        other => {
            if let Some(o) = store.data_mut().output.as_mut() {
                o.take_tail();
            }
            other
        }
    }
}

/// Classifies an error out of a guest call.
pub(crate) fn fault(e: &wasmtime::Error) -> CallFault {
    if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return CallFault::Deadline;
    }
    let text = format!("{e:#}");
    if text.contains("forcing trap when growing memory") || text.contains("memory minimum size") {
        return CallFault::Memory;
    }
    // The cause, without the wasm backtrace wasmtime adds as context (dozens of frames for
    // an interpreter such as CPython: noise in a reason).
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => CallFault::Trap(trap.to_string()),
        None => CallFault::Trap(e.root_cause().to_string()),
    }
}

/// What each plugin instance can reach: its generator, its clock, the route it serves (for
/// the `load` interface) and the current request's headers. Native policies get the same
/// state through [`Env`].
#[derive(Debug)]
pub struct HostState {
    pub(crate) rng: SplitMix64,
    /// The instance's numbers (native policies); wasm guests keep theirs in the SDK.
    local: LocalRandom,
    pub(crate) label: Arc<str>,
    pub(crate) route: Arc<Published>,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) clock: Instant,
    /// What the instance wrote to stdout and stderr (`wasi.rs`), once it writes.
    pub(crate) output: Option<Box<crate::wasi::Output>>,
    limits: StoreLimits,
    budget: Duration,
    /// The thread's CPU time when the wall-clock deadline passed.
    probe: Option<Duration>,
}

/// Arms a store for one call: the wall-clock deadline in ticks, then `budget` of CPU time.
pub(crate) fn arm(store: &mut Store<HostState>, ticks: u64, budget: Duration) {
    let state = store.data_mut();
    state.budget = budget;
    state.probe = None;
    store.set_epoch_deadline(ticks);
}

fn log_line(label: &str, level: Level, message: &str) {
    let mut end = message.len().min(1024);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message[..end];
    match level {
        Level::Trace => tracing::trace!(plugin = label, "{message}"),
        Level::Debug => tracing::debug!(plugin = label, "{message}"),
        Level::Info => tracing::info!(plugin = label, "{message}"),
        Level::Warn => tracing::warn!(plugin = label, "{message}"),
        Level::Error => tracing::error!(plugin = label, "{message}"),
    }
}

impl crate::wasi::WasiState for HostState {
    fn next_random(&mut self) -> u64 {
        self.rng.next_u64()
    }
    fn started(&self) -> Instant {
        self.clock
    }
    fn write_output(&mut self, stream: u32, bytes: &[u8]) {
        let label = Arc::clone(&self.label);
        self.output.get_or_insert_with(Box::default).write(&label, stream, bytes);
    }
}

impl Env for HostState {
    fn random(&mut self) -> u64 {
        let rng = &mut self.rng;
        self.local.next(|| rng.next_u64())
    }
    fn now(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
    fn log(&self, level: Level, message: &str) {
        log_line(&self.label, level, message);
    }
    fn in_flight(&self, endpoint: u32) -> u32 {
        self.route.in_flight(endpoint)
    }
    fn latency_ewma(&self, endpoint: u32) -> u64 {
        self.route.latency_ewma(endpoint)
    }
    fn recent_errors(&self, endpoint: u32) -> u32 {
        self.route.recent_errors(endpoint)
    }
    fn total_in_flight(&self) -> u64 {
        self.route.tracker.total_in_flight()
    }
    fn request_header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }
    fn state(&self, endpoint: u32) -> EndpointState {
        self.route.state(endpoint)
    }
}

impl wit_host::Host for HostState {
    fn log(&mut self, level: wit_host::Level, message: String) {
        let level = match level {
            wit_host::Level::Trace => Level::Trace,
            wit_host::Level::Debug => Level::Debug,
            wit_host::Level::Info => Level::Info,
            wit_host::Level::Warn => Level::Warn,
            wit_host::Level::Error => Level::Error,
        };
        log_line(&self.label, level, &message);
        // Warnings and errors are what a plugin says before it fails (the Python template
        // logs an exception's traceback and re-raises): a trap's reason carries them.
        if matches!(level, Level::Warn | Level::Error) {
            self.output.get_or_insert_with(Box::default).remember(&message);
        }
    }
    fn monotonic_now(&mut self) -> u64 {
        Env::now(self)
    }
    fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }
}

impl wit_load::Host for HostState {
    fn in_flight(&mut self, endpoint: u32) -> u32 {
        self.route.in_flight(endpoint)
    }
    fn latency_ewma(&mut self, endpoint: u32) -> u64 {
        self.route.latency_ewma(endpoint)
    }
    fn recent_errors(&mut self, endpoint: u32) -> u32 {
        self.route.recent_errors(endpoint)
    }
    fn total_in_flight(&mut self) -> u64 {
        self.route.tracker.total_in_flight()
    }
    fn state(&mut self, endpoint: u32) -> wit_load::EndpointState {
        wit_state(self.route.state(endpoint))
    }
    fn pair(&mut self, a: u32, b: u32) -> (wit_load::EndpointState, wit_load::EndpointState) {
        (wit_state(self.route.state(a)), wit_state(self.route.state(b)))
    }
    fn request_header(&mut self, name: String) -> Option<String> {
        Env::request_header(self, &name)
    }
}

impl wit_types::Host for HostState {}

fn wit_state(s: EndpointState) -> wit_load::EndpointState {
    wit_load::EndpointState { in_flight: s.in_flight, latency_ewma: s.latency_ewma, recent_errors: s.recent_errors }
}
