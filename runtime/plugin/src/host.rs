//! The wasmtime engine: configuration (pooling allocator sized from threads × plugins, epoch
//! interruption, memory cap), the compile cache keyed by sha256, validation of what a
//! component exports and imports (kind, contract version: [`Contract`]), the running 0.2.0
//! plugins by component and configuration (`crate::shared`), and the stores every plugin
//! instance gets (their data is `crate::state`'s [`HostState`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sextant_builtins::{LocalRandom, SplitMix64};
use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimitsBuilder, UpdateDeadline,
};

use crate::LoadError;
use crate::bindings::{v1, v2};
use crate::load::{LoadTracker, Published};
use crate::log::{LogBudget, LogDrops};
use crate::shared::{SharedPlugin, SharedStatus};
use crate::state::{HostState, KindPre, SharedPre};
use crate::stats::{CountersSnapshot, Totals, VersionKey};

/// The contract version this host speaks (`wit/`): `sextant:plugin@0.2.0`, where one
/// component instance per worker thread serves every service as resources.
pub const CONTRACT_VERSION: &str = "0.2.0";
/// The legacy contract version the host still serves (`wit/legacy/0.1.0/`): one instance
/// per service and worker.
pub const LEGACY_CONTRACT_VERSION: &str = "0.1.0";
const PACKAGE: &str = "sextant:plugin";

/// A version of the plugin contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Contract {
    /// `sextant:plugin@0.1.0`: one instance per service (legacy).
    #[serde(rename = "0.1.0")]
    V0_1,
    /// `sextant:plugin@0.2.0`: resources per service inside shared instances.
    #[serde(rename = "0.2.0")]
    V0_2,
}

impl Contract {
    /// Every version this build knows, oldest first.
    pub const ALL: [Self; 2] = [Self::V0_1, Self::V0_2];

    /// `0.1.0`, `0.2.0`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1 => LEGACY_CONTRACT_VERSION,
            Self::V0_2 => CONTRACT_VERSION,
        }
    }

    /// The version named `text` (`0.1.0`, `0.2.0`).
    ///
    /// # Errors
    /// Another text: the message lists the versions this build knows.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|c| c.as_str() == text).ok_or_else(|| {
            format!(
                "unknown plugin contract {text:?}: this build speaks {LEGACY_CONTRACT_VERSION} and {CONTRACT_VERSION}"
            )
        })
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PACKAGE}@{}", self.as_str())
    }
}

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
    /// [`Contract::V0_1`] refuses 0.2.0 components.
    pub contract: Contract,
    /// A service's plugin resource that made no call for this long is dropped (it is created
    /// again, with the current snapshot, when next needed).
    pub idle_resource: Duration,
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
            contract: Contract::V0_2,
            idle_resource: Duration::from_secs(300),
            workers: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            seed: 0x5e7_a47,
            cache_capacity: 64,
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

/// What kind of plugin a component is, by the interface it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
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

/// A validated, compiled component: what the cache holds.
pub struct Compiled {
    /// sha256 of the bytes, hex.
    pub sha256: String,
    /// Its kind.
    pub kind: PluginKind,
    /// Size of the bytes.
    pub size: usize,
    /// The contract version it was built for.
    pub contract: Contract,
    pub(crate) pre: KindPre,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("sha256", &self.sha256)
            .field("kind", &self.kind)
            .field("size", &self.size)
            .field("contract", &self.contract)
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
    /// `idle_resource` in ticks, computed once (a shared plugin's calls check it).
    idle_ticks: u64,
    /// What versions no longer running counted, so totals survive swaps.
    retired: Mutex<HashMap<VersionKey, Totals>>,
    /// The 0.2.0 plugins running, by sha256 and configuration.
    shared: Mutex<HashMap<(String, String), std::sync::Weak<SharedPlugin>>>,
    /// Keys of the resources slots hold in shared plugins.
    next_key: AtomicU64,
    /// Components and configurations whose self-test passed (it is not repeated per service).
    self_tested: Mutex<std::collections::HashSet<(String, String)>>,
    /// Epoch ticks since start: a clock for idleness that costs one load to read.
    tick_count: Arc<AtomicU64>,
    /// Each plugin's log budget, by name (`log.rs`).
    logs: Mutex<HashMap<String, Arc<LogBudget>>>,
    /// Work kept off the request path (starting instances, creating resources): one thread,
    /// started on first use, ending when the host goes.
    off_path: Mutex<Option<std::sync::mpsc::Sender<OffPathJob>>>,
    _ticker: Ticker,
}

/// A job for the host's off-path thread.
pub(crate) type OffPathJob = Box<dyn FnOnce() + Send>;

/// The wasmtime plugin host, shared by every slot. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost(Arc<Inner>);

/// A [`PluginHost`] that does not keep it alive (a housekeeping task's).
#[derive(Clone, Debug)]
pub struct WeakHost(std::sync::Weak<Inner>);

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
            linker,
            pick_ticks,
            idle_ticks,
            next_seed: AtomicU64::new(config.seed),
            config,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
            compiles: AtomicU64::new(0),
            retired: Mutex::new(HashMap::new()),
            shared: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            self_tested: Mutex::new(std::collections::HashSet::new()),
            tick_count,
            logs: Mutex::new(HashMap::new()),
            off_path: Mutex::new(None),
            _ticker: Ticker { stop, thread: Some(thread) },
        })))
    }

    /// A handle that does not keep the host alive.
    #[must_use]
    pub fn downgrade(&self) -> WeakHost {
        WeakHost(Arc::downgrade(&self.0))
    }

    /// The host, while something else keeps it alive.
    #[must_use]
    pub fn upgrade(weak: &WeakHost) -> Option<Self> {
        weak.0.upgrade().map(Self)
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

    /// The running 0.2.0 plugin for `compiled` with `config`, started (its instances given
    /// `init`) when none runs.
    ///
    /// # Errors
    /// Starting it would pass `max_plugins` or the instance pool, or `init` refused.
    pub(crate) fn shared(
        &self,
        name: &str,
        compiled: &Arc<Compiled>,
        config: &str,
    ) -> Result<Arc<SharedPlugin>, LoadError> {
        let key = (compiled.sha256.clone(), config.to_owned());
        let mut shared = self.0.shared.lock();
        if let Some(running) = shared.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(running);
        }
        shared.retain(|_, w| w.strong_count() > 0);
        let limit = self.0.config.max_plugins;
        if shared.len() as u64 >= u64::from(limit) {
            return Err(LoadError::Limit {
                what: "distinct 0.2.0 plugins (component and configuration) running",
                used: shared.len() as u64,
                limit: u64::from(limit),
                raise: "raise --max-plugins, or bind fewer distinct plugins",
            });
        }
        let plugin = Arc::new(SharedPlugin::start(self, name, compiled, config, self.0.config.workers)?);
        shared.insert(key, Arc::downgrade(&plugin));
        Ok(plugin)
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

    /// What each running 0.2.0 plugin is doing.
    #[must_use]
    pub fn shared_status(&self) -> Vec<SharedStatus> {
        let running: Vec<Arc<SharedPlugin>> =
            self.0.shared.lock().values().filter_map(std::sync::Weak::upgrade).collect();
        let mut status: Vec<SharedStatus> = running.iter().map(|p| p.status()).collect();
        status.sort_by(|a, b| (&a.name, &a.sha256).cmp(&(&b.name, &b.sha256)));
        status
    }

    /// Drops the resources of services idle for longer than `idle_resource` in every running
    /// 0.2.0 plugin (calls also do it as they pass; call this periodically so a plugin no
    /// service calls any more gives its memory back too).
    pub fn sweep_idle(&self) {
        let running: Vec<Arc<SharedPlugin>> =
            self.0.shared.lock().values().filter_map(std::sync::Weak::upgrade).collect();
        for p in running {
            p.sweep_all();
        }
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

    /// Whether `compiled` with `config` passed its self-test already; `test` runs it when not.
    pub(crate) fn self_test_once(
        &self,
        compiled: &Compiled,
        config: &str,
        test: impl FnOnce() -> Result<(), LoadError>,
    ) -> Result<(), LoadError> {
        let key = (compiled.sha256.clone(), config.to_owned());
        if self.0.self_tested.lock().contains(&key) {
            return Ok(());
        }
        test()?;
        let mut tested = self.0.self_tested.lock();
        if tested.len() >= 4 * self.0.config.cache_capacity {
            tested.clear();
        }
        tested.insert(key);
        Ok(())
    }

    /// A route with no endpoints (what an instance sees before its first call).
    pub(crate) fn empty_route(&self) -> Arc<Published> {
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
        let (kind, contract) = self.check_exports(&component)?;
        self.check_imports(&component, contract)?;
        let mut linker = self.0.linker.clone();
        // The WASI subset plugins get (`wasi.rs`), under the names this component imports it
        // by; what else of those interfaces it imports traps when called.
        crate::wasi::define(&mut linker, &self.0.engine, &component)?;
        linker.define_unknown_imports_as_traps(&component).map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let mismatch = |e: wasmtime::Error| LoadError::Mismatch { kind, reason: format!("{e:#}") };
        let pre = match (contract, kind) {
            (Contract::V0_1, PluginKind::Balancer) => {
                KindPre::Balancer(v1::balancer::BalancerPluginPre::new(instance_pre).map_err(mismatch)?)
            }
            (Contract::V0_1, PluginKind::Health) => {
                KindPre::Health(v1::health::HealthPluginPre::new(instance_pre).map_err(mismatch)?)
            }
            (Contract::V0_1, PluginKind::Scheduler) => {
                KindPre::Scheduler(v1::scheduler::SchedulerPluginPre::new(instance_pre).map_err(mismatch)?)
            }
            (Contract::V0_2, PluginKind::Balancer) => KindPre::Shared(SharedPre::Balancer(
                v2::balancer::BalancerPluginPre::new(instance_pre).map_err(mismatch)?,
            )),
            (Contract::V0_2, PluginKind::Health) => {
                KindPre::Shared(SharedPre::Health(v2::health::HealthPluginPre::new(instance_pre).map_err(mismatch)?))
            }
            (Contract::V0_2, PluginKind::Scheduler) => KindPre::Shared(SharedPre::Scheduler(
                v2::scheduler::SchedulerPluginPre::new(instance_pre).map_err(mismatch)?,
            )),
        };
        let compiled = Arc::new(Compiled { sha256: sha256.clone(), kind, size: bytes.len(), contract, pre });
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

    /// The plugin kind and contract version of a component, from its exports: exactly one
    /// plugin interface of one contract version this host accepts.
    fn check_exports(&self, component: &Component) -> Result<(PluginKind, Contract), LoadError> {
        let ty = component.component_type();
        let mut names = Vec::new();
        let mut found: Option<(PluginKind, Contract, String)> = None;
        for (name, item) in ty.exports(&self.0.engine) {
            names.push(name.to_owned());
            if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
                continue;
            }
            let Some(rest) = name.strip_prefix(PACKAGE).and_then(|r| r.strip_prefix('/')) else { continue };
            let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
            let contract = self.accepted(name, version)?;
            let kind = match iface {
                "balancer" => PluginKind::Balancer,
                "health" => PluginKind::Health,
                "scheduler" => PluginKind::Scheduler,
                _ => continue,
            };
            if let Some((_, other, first)) = &found
                && *other != contract
            {
                return Err(LoadError::BothContracts { first: first.clone(), second: name.to_owned() });
            }
            found = Some((kind, contract, name.to_owned()));
        }
        found.map(|(kind, contract, _)| (kind, contract)).ok_or_else(|| LoadError::NoPluginExport {
            exports: if names.is_empty() { "nothing".into() } else { names.join(", ") },
        })
    }

    /// The contract `version` (of `name`, an export or import) names, when this host accepts it.
    fn accepted(&self, name: &str, version: &str) -> Result<Contract, LoadError> {
        let pinned = self.0.config.contract;
        match Contract::parse(version) {
            Ok(c) if c <= pinned => Ok(c),
            _ => Err(LoadError::VersionMismatch {
                export: name.to_owned(),
                host: if pinned == Contract::V0_1 {
                    "0.1.0 (pinned: it refuses newer versions)"
                } else {
                    "0.2.0 and the legacy 0.1.0"
                },
            }),
        }
    }

    fn check_imports(&self, component: &Component, contract: Contract) -> Result<(), LoadError> {
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
            if self.accepted(name, version)? != contract {
                return Err(LoadError::BothContracts { first: contract.to_string(), second: name.to_owned() });
            }
            if !matches!(iface, "host" | "load" | "types") {
                return Err(LoadError::UnknownImport(name.to_owned()));
            }
        }
        Ok(())
    }

    /// The next instance's seed.
    pub(crate) fn take_seed(&self) -> u64 {
        self.0.next_seed.fetch_add(1, Relaxed)
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

    pub(crate) fn state_seeded(&self, label: Arc<str>, route: Arc<Published>, seed: u64) -> HostState {
        let log = self.log_budget(crate::log::plugin_of(&label));
        HostState {
            log,
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
}

/// Epoch ticks for a deadline (rounded up, plus the tick in progress).
fn ticks(config: &HostConfig, deadline: Duration) -> u64 {
    let tick = config.tick.as_nanos().max(1);
    u64::try_from(deadline.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX).saturating_add(1)
}
