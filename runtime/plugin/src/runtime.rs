//! The wasmtime runtime under every plugin: the engine (pooling allocator sized from
//! [`HostConfig`], epoch interruption, a memory cap per instance, the store of compiled
//! functions it reuses across components), its epoch ticker (the clock
//! of deadlines and of idleness), the stores plugin instances get (their data is
//! `crate::state`'s [`HostState`], with each plugin's log budget) and the thread that does
//! plugin work off the request path. [`PluginHost`](crate::PluginHost) adds what it keeps of
//! plugins (compiled components, running shared plugins, totals) on top; a running shared
//! plugin holds the runtime alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use sextant_builtins::{LocalRandom, SplitMix64};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder, UpdateDeadline,
};

use crate::LoadError;
use crate::bindings::{v1, v2};
use crate::function_cache::{FunctionCache, FunctionCacheStats};
use crate::kind::Contract;
use crate::log::{LogBudget, LogDrops};
use crate::published::Published;
use crate::state::HostState;
use crate::tracker::LoadTracker;

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
    /// Plugin instances alive at once (pool size), over all slots and versions. A 0.2.0
    /// plugin takes `workers` instances however many services it serves (plus as many more
    /// while a replacement is being loaded); a 0.1.0 plugin takes `workers` per service.
    /// [`HostConfig::sized`] derives it from the workers and `max_plugins`.
    pub max_instances: u32,
    /// Distinct 0.2.0 plugins (component and configuration) running at once; a load that
    /// would start one more is refused, naming this limit.
    pub max_plugins: u32,
    /// The newest contract version the host accepts: a host pinned to
    /// [`Contract::V0_1`] refuses 0.2.x components, one pinned to [`Contract::V0_2`] 0.2.1 and
    /// 0.2.2 ones, one pinned to [`Contract::V0_2_1`] 0.2.2 ones, and so on.
    pub contract: Contract,
    /// A service's plugin resource that made no call for this long is dropped (it is created
    /// again, with the current snapshot, when next needed).
    pub idle_resource: Duration,
    /// Whether the host's own thread drops idle resources (every quarter of `idle_resource`,
    /// at least every 250 ms); off, only calls passing and [`PluginHost::sweep_idle`] do.
    ///
    /// [`PluginHost::sweep_idle`]: crate::PluginHost::sweep_idle
    pub sweep_idle: bool,
    /// Instances per balancer version: picks on different threads run on different
    /// instances, so they scale with threads.
    pub workers: usize,
    /// Seed of the plugins' random numbers (each instance gets seed + its number).
    pub seed: u64,
    /// The zone the host runs in, what `host.local-zone` answers (empty: none); see
    /// [`Runtime::set_zone`].
    pub zone: String,
    /// Compiled components kept in the cache.
    pub cache_capacity: usize,
    /// Bytes of compiled functions kept so that a component repeating another's functions (two
    /// Python or JavaScript plugins carry the same interpreter) compiles only what differs;
    /// 0 keeps none (`function_cache.rs`).
    pub function_cache_bytes: usize,
    /// Faults (traps, deadline hits, contract violations) within `fault_window` that roll a
    /// version back automatically.
    pub max_faults: u32,
    /// See `max_faults`.
    pub fault_window: Duration,
    /// Decay time of the latency EWMA the `load` interface reports.
    pub ewma_decay: Duration,
    /// Lines a plugin may write through `host.log` per second on this host (all its
    /// instances together); the excess is dropped and counted.
    pub log_lines_per_sec: u32,
    /// Bytes a plugin may write through `host.log` per second on this host; see
    /// `log_lines_per_sec`.
    pub log_bytes_per_sec: u32,
    /// Entries a balancer's table (weights, ring, Maglev) may have in all; a larger one is
    /// refused at load, or at the update that returned it (the previous table keeps serving).
    /// The host keeps a copy per worker, counted against `memory_limit` too.
    pub max_table_entries: usize,
    /// Entries per endpoint a ring or Maglev table may have (a single-endpoint service may
    /// still have the usual 65,537-entry Maglev table).
    pub max_table_entries_per_endpoint: usize,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            memory_limit: 64 << 20,
            pick_deadline: Duration::from_millis(10),
            update_deadline: Duration::from_secs(1),
            tick: Duration::from_millis(1),
            max_instances: 1000,
            max_plugins: 64,
            contract: Contract::V0_2_3,
            idle_resource: Duration::from_secs(300),
            sweep_idle: true,
            workers: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            seed: 0x5e7_a47,
            zone: String::new(),
            cache_capacity: 64,
            function_cache_bytes: 128 << 20,
            max_faults: 5,
            fault_window: Duration::from_secs(10),
            ewma_decay: Duration::from_secs(10),
            log_lines_per_sec: 100,
            log_bytes_per_sec: 64 << 10,
            max_table_entries: 1 << 20,
            max_table_entries_per_endpoint: 65_537,
        }
    }
}

impl HostConfig {
    /// The configuration with the pool sized from the work, not the services: every 0.2.0
    /// plugin's instances twice (the running version and a replacement being loaded), plus
    /// `legacy_instances` for 0.1.0 components (which take `workers` instances per service).
    #[must_use]
    pub fn sized(mut self, legacy_instances: u32) -> Self {
        let workers = u32::try_from(self.workers.max(1)).unwrap_or(u32::MAX);
        self.max_instances =
            workers.saturating_mul(self.max_plugins).saturating_mul(2).saturating_add(legacy_instances);
        self
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

/// A job for the runtime's off-path thread.
pub(crate) type OffPathJob = Box<dyn FnOnce() + Send>;

struct Inner {
    engine: Engine,
    /// The engine's store of compiled functions, when it keeps one.
    functions: Option<Arc<FunctionCache>>,
    linker: Linker<HostState>,
    config: HostConfig,
    next_seed: AtomicU64,
    /// The host's zone (`host.local-zone`), shared with every store.
    zone: Arc<ArcSwap<String>>,
    /// `pick_deadline` in ticks, computed once (it is needed on every pick).
    pick_ticks: u64,
    /// `idle_resource` in ticks, computed once (a shared plugin's calls check it).
    idle_ticks: u64,
    /// Keys of the resources slots hold in shared plugins.
    next_key: AtomicU64,
    /// Epoch ticks since start: a clock for idleness that costs one load to read.
    tick_count: Arc<AtomicU64>,
    /// Each plugin's log budget, by name (`log.rs`).
    logs: Mutex<HashMap<String, Arc<LogBudget>>>,
    /// Work kept off the request path (starting instances, creating resources): one thread,
    /// started on first use, ending when the runtime goes.
    off_path: Mutex<Option<std::sync::mpsc::Sender<OffPathJob>>>,
    _ticker: Ticker,
}

/// The wasmtime engine, its clock and its stores, shared by every plugin of a host. Cheap to
/// clone. A [`PluginHost`](crate::PluginHost) dereferences to its runtime.
#[derive(Clone)]
pub struct Runtime(Arc<Inner>);

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("config", &self.0.config).finish_non_exhaustive()
    }
}

/// Core instances (and tables) one plugin component may create: componentize-py's CPython
/// links 38 (its --stub-wasi build), a Rust component 4 to 6.
pub(crate) const CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// Instances a plugin's store may hold (the component and its core instances).
const INSTANCES_PER_STORE: usize = 1 + CORE_INSTANCES_PER_COMPONENT as usize;

fn engine(config: &HostConfig, functions: Option<Arc<FunctionCache>>) -> wasmtime::Result<Engine> {
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
    if let Some(functions) = functions {
        c.enable_incremental_compilation(functions)?;
    }
    Engine::new(&c)
}

impl Runtime {
    /// Starts the engine and its epoch ticker.
    ///
    /// # Errors
    /// When wasmtime cannot set up the engine (for example the pool cannot reserve memory).
    pub(crate) fn new(config: HostConfig) -> Result<Self, crate::HostError> {
        let functions =
            (config.function_cache_bytes > 0).then(|| Arc::new(FunctionCache::new(config.function_cache_bytes)));
        let engine = engine(&config, functions.clone())?;
        let mut linker = Linker::new(&engine);
        v1::balancer::BalancerPlugin::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        v2::balancer::BalancerPlugin::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
        let stop = Arc::new(AtomicBool::new(false));
        let tick_count = Arc::new(AtomicU64::new(0));
        let thread = {
            let (engine, stop, tick, count) = (engine.clone(), Arc::clone(&stop), config.tick, Arc::clone(&tick_count));
            std::thread::Builder::new().name("sextant-epoch".into()).spawn(move || {
                while !stop.load(Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                    count.fetch_add(1, Relaxed);
                }
            })?
        };
        let pick_ticks = ticks(&config, config.pick_deadline);
        let idle_ticks = ticks(&config, config.idle_resource);
        Ok(Self(Arc::new(Inner {
            engine,
            functions,
            linker,
            pick_ticks,
            idle_ticks,
            next_seed: AtomicU64::new(config.seed),
            zone: Arc::new(ArcSwap::from_pointee(config.zone.clone())),
            config,
            next_key: AtomicU64::new(1),
            tick_count,
            logs: Mutex::new(HashMap::new()),
            off_path: Mutex::new(None),
            _ticker: Ticker { stop, thread: Some(thread) },
        })))
    }

    /// The engine components are compiled for.
    pub(crate) fn engine(&self) -> &Engine {
        &self.0.engine
    }

    /// What the store of compiled functions did (all zero when `function_cache_bytes` is 0).
    #[must_use]
    pub fn function_cache(&self) -> FunctionCacheStats {
        self.0.functions.as_ref().map(|f| f.stats()).unwrap_or_default()
    }

    /// The linker with the host's imports defined (the WASI subset is added per component).
    pub(crate) fn linker(&self) -> &Linker<HostState> {
        &self.0.linker
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &HostConfig {
        &self.0.config
    }

    /// The log budget of the plugin named `plugin` (one per name on this host).
    fn log_budget(&self, plugin: &str) -> Arc<LogBudget> {
        let mut logs = self.0.logs.lock();
        if let Some(b) = logs.get(plugin) {
            return Arc::clone(b);
        }
        let c = &self.0.config;
        let b = Arc::new(LogBudget::new(c.log_lines_per_sec, c.log_bytes_per_sec, Instant::now()));
        logs.insert(plugin.to_owned(), Arc::clone(&b));
        b
    }

    /// What each plugin's log budget dropped on this host, by plugin name (those that
    /// dropped nothing are left out).
    #[must_use]
    pub fn log_drops(&self) -> Vec<LogDrops> {
        let mut drops: Vec<LogDrops> = self
            .0
            .logs
            .lock()
            .iter()
            .filter_map(|(name, b)| {
                let (lines, bytes) = b.dropped();
                (lines > 0).then(|| LogDrops { plugin: name.clone(), lines, bytes })
            })
            .collect();
        drops.sort_by(|a, b| a.plugin.cmp(&b.plugin));
        drops
    }

    /// Runs `job` on the host's off-path thread (in order, one at a time): where plugin work
    /// that may take up to a deadline runs instead of a request's thread (instances started
    /// again, resources created and given their first snapshot).
    pub(crate) fn off_path(&self, job: OffPathJob) {
        let mut sender = self.0.off_path.lock();
        let job = match sender.as_ref() {
            None => job,
            Some(s) => match s.send(job) {
                Ok(()) => return,
                Err(std::sync::mpsc::SendError(job)) => job,
            },
        };
        let (tx, rx) = std::sync::mpsc::channel::<OffPathJob>();
        let started = std::thread::Builder::new().name("sextant-plugin-prepare".into()).spawn(move || {
            // Ends when the host (the sender) goes.
            while let Ok(job) = rx.recv() {
                job();
            }
        });
        match started {
            Ok(_) => {
                let _ = tx.send(job);
                *sender = Some(tx);
            }
            // No thread to be had: the work runs here rather than never.
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the plugin preparation thread; preparing inline");
                drop(sender);
                job();
            }
        }
    }

    /// Epoch ticks since the host started (`HostConfig::tick` each, at least; a busy machine
    /// may tick late): the clock of resource idleness, read on every call without a syscall.
    pub(crate) fn tick_count(&self) -> u64 {
        self.0.tick_count.load(Relaxed)
    }

    /// A fresh key for a slot's resource in a shared plugin.
    pub(crate) fn next_key(&self) -> u64 {
        self.0.next_key.fetch_add(1, Relaxed)
    }

    /// A published list with no endpoints (what an instance sees before its first call).
    pub(crate) fn empty_published(&self) -> Arc<Published> {
        Arc::new(Published::new(
            0,
            sextant_builtins::Snapshot::default(),
            Arc::new(LoadTracker::new(self.0.config.ewma_decay)),
        ))
    }

    /// Why instantiating failed, naming the pool's limit when that is what stopped it.
    pub(crate) fn instantiate_error(&self, e: &wasmtime::Error) -> LoadError {
        let text = format!("{e:#}");
        if text.contains("maximum concurrent limit") || text.contains("concurrent") && text.contains("limit") {
            let limit = u64::from(self.0.config.max_instances);
            return LoadError::Limit {
                what: "plugin instances (the pool)",
                used: limit,
                limit,
                raise: "raise --plugin-instances; a 0.2.0 plugin takes one instance per worker thread, a 0.1.0 one per service and worker thread",
            };
        }
        LoadError::Instantiate(text)
    }

    /// The next instance's seed.
    pub(crate) fn take_seed(&self) -> u64 {
        self.0.next_seed.fetch_add(1, Relaxed)
    }

    /// A fresh store for one plugin instance, with its own seeded generator.
    pub(crate) fn store(&self, label: Arc<str>, published: Arc<Published>) -> Store<HostState> {
        let seed = self.0.next_seed.fetch_add(1, Relaxed);
        self.store_seeded(label, published, seed)
    }

    /// A store with a given seed (the self-test, which must not shift other instances' seeds).
    pub(crate) fn store_seeded(&self, label: Arc<str>, published: Arc<Published>, seed: u64) -> Store<HostState> {
        let state = self.state_seeded(label, published, seed);
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
    pub(crate) fn state(&self, label: Arc<str>, published: Arc<Published>) -> HostState {
        let seed = self.0.next_seed.fetch_add(1, Relaxed);
        self.state_seeded(label, published, seed)
    }

    pub(crate) fn state_seeded(&self, label: Arc<str>, published: Arc<Published>, seed: u64) -> HostState {
        let log = self.log_budget(crate::log::plugin_of(&label));
        HostState {
            log,
            rng: SplitMix64::new(seed),
            local: LocalRandom::default(),
            label,
            published,
            headers: Vec::new(),
            attempt: 0,
            tried: Vec::new(),
            clock: Instant::now(),
            zone: Arc::clone(&self.0.zone),
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

    /// [`HostConfig::idle_resource`] in ticks.
    pub(crate) fn idle_ticks(&self) -> u64 {
        self.0.idle_ticks
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

    /// Moves the host to `zone` (empty: none): what every plugin's `host.local-zone` answers
    /// from its next call on, running instances included. The gateway sets it from `--zone`;
    /// a simulation sets it per run.
    pub fn set_zone(&self, zone: &str) {
        self.0.zone.store(Arc::new(zone.to_owned()));
    }

    /// The zone the host runs in (empty: none).
    #[must_use]
    pub fn zone(&self) -> String {
        self.0.zone.load().as_ref().clone()
    }
}

/// Epoch ticks for a deadline (rounded up, plus the tick in progress).
fn ticks(config: &HostConfig, deadline: Duration) -> u64 {
    let tick = config.tick.as_nanos().max(1);
    u64::try_from(deadline.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX).saturating_add(1)
}
