//! The plugin host: a [`Runtime`] (engine, clock, stores) and what it keeps of plugins: the
//! compile cache keyed by sha256 with validation of what a component exports and imports
//! (kind, contract version: [`Contract`]), the running 0.2.0 plugins by component and
//! configuration (`crate::shared`), the self-tests passed, and what retired versions counted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use crate::LoadError;
use crate::bindings::{v1, v2};
use crate::compiled::Compiled;
use crate::kind::{Contract, PACKAGE, PluginKind};
use crate::runtime::{HostConfig, Runtime};
use crate::shared::{SharedPlugin, SharedStatus};
use crate::state::{KindPre, SharedPre};
use crate::stats::{VersionCounts, VersionKey};

type Cache = (HashMap<String, Arc<Compiled>>, VecDeque<String>);

struct Inner {
    runtime: Runtime,
    /// Compiled components by sha256, and their insertion order (oldest evicted first).
    cache: Mutex<Cache>,
    compiles: AtomicU64,
    /// What versions no longer running counted, so totals survive swaps.
    retired: Mutex<HashMap<VersionKey, VersionCounts>>,
    /// The 0.2.0 plugins running, by sha256 and configuration.
    shared: Mutex<HashMap<(String, String), std::sync::Weak<SharedPlugin>>>,
    /// Components and configurations whose self-test passed (it is not repeated per service).
    self_tested: Mutex<std::collections::HashSet<(String, String)>>,
    /// Dropped with the host, which ends its sweeping thread at once.
    _sweeper: std::sync::mpsc::Sender<()>,
}

/// The wasmtime plugin host, shared by every slot. Cheap to clone. It dereferences to its
/// [`Runtime`] (the configuration, the stores, the clock).
#[derive(Clone)]
pub struct PluginHost(Arc<Inner>);

/// A [`PluginHost`] that does not keep it alive (a housekeeping task's).
#[derive(Clone, Debug)]
pub struct WeakHost(std::sync::Weak<Inner>);

impl std::fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginHost").field("config", self.config()).finish_non_exhaustive()
    }
}

impl std::ops::Deref for PluginHost {
    type Target = Runtime;

    fn deref(&self) -> &Runtime {
        &self.0.runtime
    }
}

impl PluginHost {
    /// Starts the engine, its epoch ticker, and (unless [`HostConfig::sweep_idle`] is off) a
    /// thread that drops idle plugin resources every quarter of [`HostConfig::idle_resource`]
    /// (at least every 250 ms), so every embedder of the host gets it; both end with the host.
    ///
    /// # Errors
    /// When wasmtime cannot set up the engine (for example the pool cannot reserve memory).
    pub fn new(config: HostConfig) -> Result<Self, crate::HostError> {
        let period = (config.idle_resource / 4).max(std::time::Duration::from_millis(250));
        let sweep = config.sweep_idle;
        let (sweeper, stop) = std::sync::mpsc::channel();
        let host = Self(Arc::new(Inner {
            runtime: Runtime::new(config)?,
            cache: Mutex::new((HashMap::new(), VecDeque::new())),
            compiles: AtomicU64::new(0),
            retired: Mutex::new(HashMap::new()),
            shared: Mutex::new(HashMap::new()),
            self_tested: Mutex::new(std::collections::HashSet::new()),
            _sweeper: sweeper,
        }));
        if !sweep {
            return Ok(host);
        }
        let weak = host.downgrade();
        let sweeping = std::thread::Builder::new().name("sextant-plugin-sweep".into()).spawn(move || {
            // Ends when the host goes (its sender dropped) or is gone at the next period.
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(period) {
                let Some(host) = Self::upgrade(&weak) else { return };
                host.sweep_idle();
            }
        });
        if let Err(e) = sweeping {
            // Calls still drop idle resources as they pass; only idle plugins keep theirs.
            tracing::warn!(error = %e, "cannot start the plugin sweeping thread");
        }
        Ok(host)
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

    /// Keeps what a version that stops running counted (its slot swapped it out or went away).
    pub(crate) fn retire(&self, key: VersionKey, counters: &VersionCounts) {
        if counters.is_zero() {
            return;
        }
        let mut retired = self.0.retired.lock();
        let entry = retired.entry(key).or_default();
        entry.add(counters);
    }

    /// What the versions no longer running counted, by version.
    #[must_use]
    pub fn retired(&self) -> HashMap<VersionKey, VersionCounts> {
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
        let limit = self.config().max_plugins;
        if shared.len() as u64 >= u64::from(limit) {
            return Err(LoadError::Limit {
                what: "distinct 0.2.0 plugins (component and configuration) running",
                used: shared.len() as u64,
                limit: u64::from(limit),
                raise: "raise --max-plugins, or bind fewer distinct plugins",
            });
        }
        let plugin = Arc::new(SharedPlugin::start(self, name, compiled, config, self.config().workers)?);
        shared.insert(key, Arc::downgrade(&plugin));
        Ok(plugin)
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
    /// 0.2.0 plugin (calls also do it as they pass, and the host's own thread every quarter of
    /// `idle_resource`, so a plugin no service calls any more gives its memory back too).
    pub fn sweep_idle(&self) {
        let running: Vec<Arc<SharedPlugin>> =
            self.0.shared.lock().values().filter_map(std::sync::Weak::upgrade).collect();
        for p in running {
            p.sweep_all();
        }
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
        if tested.len() >= 4 * self.config().cache_capacity {
            tested.clear();
        }
        tested.insert(key);
        Ok(())
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
        let (started, functions) = (std::time::Instant::now(), self.function_cache());
        let component = Component::new(self.engine(), bytes).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let now = self.function_cache();
        // (Compiles running at once share the counts: these are what happened meanwhile.)
        tracing::info!(
            sha256 = &sha256[..12],
            bytes = bytes.len(),
            ms = started.elapsed().as_millis(),
            functions_compiled = now.misses - functions.misses,
            functions_found = now.hits - functions.hits,
            "component compiled"
        );
        let (kind, contract) = self.check_exports(&component)?;
        self.check_imports(&component, contract)?;
        let mut linker = self.linker().clone();
        // The WASI subset plugins get (`wasi.rs`), under the names this component imports it
        // by; what else of those interfaces it imports traps when called.
        crate::wasi::define(&mut linker, self.engine(), &component)?;
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
            (Contract::V0_2 | Contract::V0_2_1 | Contract::V0_2_2 | Contract::V0_2_3, PluginKind::Balancer) => {
                KindPre::Shared(SharedPre::Balancer(
                    v2::balancer::BalancerPluginPre::new(instance_pre).map_err(mismatch)?,
                ))
            }
            (Contract::V0_2 | Contract::V0_2_1 | Contract::V0_2_2 | Contract::V0_2_3, PluginKind::Health) => {
                KindPre::Shared(SharedPre::Health(v2::health::HealthPluginPre::new(instance_pre).map_err(mismatch)?))
            }
            (Contract::V0_2 | Contract::V0_2_1 | Contract::V0_2_2 | Contract::V0_2_3, PluginKind::Scheduler) => {
                KindPre::Shared(SharedPre::Scheduler(
                    v2::scheduler::SchedulerPluginPre::new(instance_pre).map_err(mismatch)?,
                ))
            }
        };
        let compiled = Arc::new(Compiled { sha256: sha256.clone(), kind, size: bytes.len(), contract, pre });
        let mut cache = self.0.cache.lock();
        let (map, order) = &mut *cache;
        if map.insert(sha256.clone(), Arc::clone(&compiled)).is_none() {
            order.push_back(sha256);
        }
        while order.len() > self.config().cache_capacity {
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
        for (name, item) in ty.exports(self.engine()) {
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
        let pinned = self.config().contract;
        match Contract::parse(version) {
            Ok(c) if c <= pinned => Ok(c),
            _ => Err(LoadError::VersionMismatch {
                export: name.to_owned(),
                host: match pinned {
                    Contract::V0_1 => "0.1.0 (pinned: it refuses newer versions)",
                    Contract::V0_2 => "0.2.0 and the legacy 0.1.0 (pinned: it refuses newer versions)",
                    Contract::V0_2_1 => "0.2.1, 0.2.0 and the legacy 0.1.0 (pinned: it refuses newer versions)",
                    Contract::V0_2_2 => "0.2.2, 0.2.1, 0.2.0 and the legacy 0.1.0 (pinned: it refuses newer versions)",
                    Contract::V0_2_3 => Contract::known(),
                },
            }),
        }
    }

    fn check_imports(&self, component: &Component, contract: Contract) -> Result<(), LoadError> {
        for (name, _) in component.component_type().imports(self.engine()) {
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
}
