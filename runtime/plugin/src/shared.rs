//! Shared instances of 0.2.0 plugins: one component instance per worker thread serves every
//! service a plugin is bound to, each service as a resource inside it (`wit/`: `resource
//! balancer`, `resource health`, `resource scheduler`).
//!
//! A [`SharedPlugin`] is one component with one configuration, started once however many
//! slots run it (the host keeps them by sha256 and configuration, `PluginHost::shared`);
//! its instances are created and given `init(config)` when it starts. A slot reaches its
//! service's resource through a [`SharedRunner`] (plugin, resource key, instance index). A
//! resource is created on the first call that needs one (a pick, or a snapshot update of a
//! service that had one), dropped when its runner goes (the slot swapped versions or went
//! away), and dropped after `HostConfig::idle_resource` without a call; the next call
//! creates it again and the caller gives it the current snapshot.
//!
//! A trap, a missed deadline or the memory cap poisons an instance: it is dropped with every
//! resource in it (counted in `lost`) and started again on its next call, so a plugin that
//! leaks per service is bounded by the memory cap of one instance, and its services fall
//! back to the native default on the call that hit the cap, then get fresh resources.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use wasmtime::Store;
use wasmtime::component::ResourceAny;

use crate::bindings::v2;
use crate::compiled::Compiled;
use crate::kind::PluginKind;
use crate::published::Published;
use crate::runtime::Runtime;
use crate::state::{HostState, KindPre, SharedPre, arm, fault_in};
use crate::{CallFault, LoadError};

/// The guest side of one shared instance.
pub(crate) enum Guest {
    Balancer(v2::balancer::BalancerPlugin),
    Health(v2::health::HealthPlugin),
    Scheduler(v2::scheduler::SchedulerPlugin),
}

/// A running instance: its store and its exports.
pub(crate) struct Live {
    pub(crate) store: Store<HostState>,
    pub(crate) guest: Guest,
}

struct Held {
    handle: ResourceAny,
    /// The host's tick count when it was last called.
    used: u64,
}

struct Instance {
    /// None after a poisoning fault, until the next call starts it again.
    live: Option<Live>,
    /// The seed its store's generator started from.
    seed: u64,
    /// The services' resources in `live`, by runner key.
    resources: Resources,
    /// The host's tick count at the last sweep.
    last_sweep: u64,
}

/// What a shared plugin counted since it started.
#[derive(Debug, Default)]
pub(crate) struct SharedCounters {
    created: AtomicU64,
    dropped_idle: AtomicU64,
    released: AtomicU64,
    replaced: AtomicU64,
    lost: AtomicU64,
    constructor_faults: AtomicU64,
    live: AtomicU64,
}

/// One 0.2.0 plugin (component and configuration) and its instances.
pub(crate) struct SharedPlugin {
    host: Runtime,
    pub(crate) name: Arc<str>,
    pub(crate) compiled: Arc<Compiled>,
    pub(crate) config: String,
    instances: Box<[Mutex<Instance>]>,
    counters: SharedCounters,
}

impl std::fmt::Debug for SharedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPlugin").field("name", &self.name).field("sha256", &self.compiled.sha256).finish()
    }
}

/// What a shared plugin is doing, for `/metrics` and `plugin list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedStatus {
    /// The plugin's name (the first binding that started it).
    pub name: String,
    /// Its kind.
    pub kind: PluginKind,
    /// sha256 of the component.
    pub sha256: String,
    /// Component instances it runs (one per worker thread), running now.
    pub instances: u64,
    /// Per-service resources alive now.
    pub resources: u64,
    /// Resources created since it started.
    pub created: u64,
    /// Resources dropped after idling.
    pub dropped_idle: u64,
    /// Resources dropped because their slot moved on (another version, the service gone).
    pub released: u64,
    /// Instances replaced after a trap, a missed deadline or the memory cap.
    pub replaced: u64,
    /// Resources lost with a replaced instance (their services fell back on that call and
    /// got new resources on their next).
    pub lost: u64,
    /// Constructors that trapped.
    pub constructor_faults: u64,
}

/// What happened inside one call, sorted out once the published list is back with its owner.
enum Called<R> {
    Ran(Result<R, CallFault>),
    Created(ResourceAny, Result<R, CallFault>),
    NotCreated(CallFault),
}

/// Hashes a resource key (a counter) with one multiplication: the keys are the host's own,
/// not chosen by anyone who could make them collide, and this map is read on every pick.
#[derive(Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Resources = HashMap<u64, Held, std::hash::BuildHasherDefault<KeyHasher>>;

/// Whether a call may create the service's resource when it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    /// Starts the instance again if a fault dropped it, and creates the resource (off the
    /// request path: `init` and the constructor run up to the update deadline).
    Create,
    /// Calls the resource only if it exists (the instance may still be started again).
    Skip,
    /// The request path: calls the resource only if it and its instance are there and the
    /// instance is free within the pick deadline (another thread may be starting it, or
    /// creating a resource in it); None otherwise, and the caller falls back.
    Ready,
}

/// A fault that leaves the instance unusable (wasmtime does not enter a component instance
/// again after a trap).
fn poisons(f: &CallFault) -> bool {
    matches!(f, CallFault::Trap(_) | CallFault::Deadline | CallFault::Memory)
}

impl SharedPlugin {
    /// Starts `instances` instances of a 0.2.0 component, each given `init(config)`.
    pub(crate) fn start(
        host: &Runtime,
        name: &str,
        compiled: &Arc<Compiled>,
        config: &str,
        instances: usize,
    ) -> Result<Self, LoadError> {
        let plugin = Self {
            host: host.clone(),
            name: Arc::from(name),
            compiled: Arc::clone(compiled),
            config: config.to_owned(),
            instances: (0..instances.max(1))
                .map(|_| {
                    Mutex::new(Instance {
                        live: None,
                        seed: 0,
                        resources: Resources::default(),
                        last_sweep: host.tick_count(),
                    })
                })
                .collect(),
            counters: SharedCounters::default(),
        };
        for i in plugin.instances.iter() {
            let mut i = i.lock();
            i.seed = host.take_seed();
            i.live = Some(plugin.instantiate(host.empty_published(), i.seed)?);
        }
        Ok(plugin)
    }

    /// A fresh instance, given `init(config)`.
    fn instantiate(&self, published: Arc<Published>, seed: u64) -> Result<Live, LoadError> {
        instantiate(&self.host, &self.compiled, &self.config, self.store(published, seed))
    }

    fn store(&self, published: Arc<Published>, seed: u64) -> Store<HostState> {
        self.host.store_seeded(Arc::clone(&self.name), published, seed)
    }

    /// The seed instance `index` started from: a slot's worker on that instance draws the
    /// keys of its tables from a generator with the same seed (as a native policy and a
    /// 0.1.0 instance draw both from one), so a seeded run repeats.
    pub(crate) fn seed(&self, index: usize) -> u64 {
        self.instances[index % self.instances.len()].lock().seed
    }

    /// How many instances it runs.
    pub(crate) fn len(&self) -> usize {
        self.instances.len()
    }

    /// Runs `f` on the resource `key` of instance `index` (creating the resource for `service`
    /// with `Missing::Create` when there is none; `f` learns it is fresh and must give it a
    /// snapshot first). `published` is what the `load` interface reads meanwhile: it is moved into
    /// the store for the call and back (no reference count touched on the pick path; `f`
    /// finds it in the store's data). None when there is no resource and `missing` is
    /// `Skip`. A fault that poisons the instance drops it and every resource in it.
    pub(crate) fn call<R>(
        &self,
        index: usize,
        key: u64,
        service: &str,
        published: &mut Arc<Published>,
        missing: Missing,
        f: impl FnOnce(&mut Live, ResourceAny, bool) -> Result<R, CallFault>,
    ) -> Result<Option<R>, CallFault> {
        // `index` is in range: a `SharedRunner` reduced it once (no division per pick).
        let mut guard = match missing {
            Missing::Ready => match self.instances[index].try_lock_for(self.host.config().pick_deadline) {
                Some(g) => g,
                None => return Ok(None),
            },
            Missing::Create | Missing::Skip => self.instances[index].lock(),
        };
        let inst = &mut *guard;
        let now = self.host.tick_count();
        if inst.live.is_none() {
            if missing != Missing::Create {
                return Ok(None);
            }
            inst.seed = self.host.take_seed();
            match start_live(&self.host, &self.compiled, &self.config, self.store(Arc::clone(published), inst.seed)) {
                Ok(live) => inst.live = Some(live),
                // What `init` did, as any call's fault is counted (a deadline is a deadline).
                Err(StartError::Init(fault)) => return Err(fault),
                Err(StartError::Load(e)) => {
                    return Err(CallFault::Trap(format!("the instance could not be started again: {e}")));
                }
            }
        }
        self.sweep(inst, now);
        let existing = match inst.resources.get_mut(&key) {
            Some(held) => {
                held.used = now;
                Some(held.handle)
            }
            None if missing != Missing::Create => return Ok(None),
            None => None,
        };
        let Some(live) = inst.live.as_mut() else { return Ok(None) };
        std::mem::swap(&mut live.store.data_mut().published, published);
        let called = match existing {
            Some(handle) => Called::Ran(f(live, handle, false)),
            None => {
                let deadline = self.host.config().update_deadline;
                arm(&mut live.store, self.host.ticks(deadline), deadline);
                match construct(live, service) {
                    Ok(handle) => Called::Created(handle, f(live, handle, true)),
                    Err(fault) => Called::NotCreated(fault),
                }
            }
        };
        // Back before anything else: a poisoned instance's store is dropped below.
        std::mem::swap(&mut live.store.data_mut().published, published);
        let result = match called {
            Called::Ran(result) => result,
            Called::Created(handle, result) => {
                inst.resources.insert(key, Held { handle, used: now });
                self.counters.created.fetch_add(1, Relaxed);
                self.counters.live.fetch_add(1, Relaxed);
                result
            }
            Called::NotCreated(fault) => {
                self.counters.constructor_faults.fetch_add(1, Relaxed);
                Err(fault)
            }
        };
        match result {
            Ok(r) => Ok(Some(r)),
            Err(fault) => {
                if poisons(&fault) {
                    self.poison(inst);
                }
                Err(fault)
            }
        }
    }

    /// Drops the resource `key` of instance `index`, if it has one (its guest destructor runs).
    pub(crate) fn release(&self, index: usize, key: u64) {
        let mut guard = self.instances[index % self.instances.len()].lock();
        let inst = &mut *guard;
        if let Some(held) = inst.resources.remove(&key) {
            self.counters.live.fetch_sub(1, Relaxed);
            self.counters.released.fetch_add(1, Relaxed);
            self.drop_resource(inst, held.handle);
        }
    }

    fn drop_resource(&self, inst: &mut Instance, handle: ResourceAny) {
        let Some(live) = inst.live.as_mut() else { return };
        let deadline = self.host.config().update_deadline;
        arm(&mut live.store, self.host.ticks(deadline), deadline);
        if let Err(e) = handle.resource_drop(&mut live.store) {
            let fault = fault_in(&mut live.store, &e);
            tracing::warn!(plugin = %self.name, %fault, "a resource's destructor failed; the instance is replaced");
            self.poison(inst);
        }
    }

    /// Drops the resources of `inst` idle for longer than the host's `idle_resource`
    /// (checked at most every quarter of it), on the host's tick count.
    fn sweep(&self, inst: &mut Instance, now: u64) {
        let idle = self.host.idle_ticks();
        if now.saturating_sub(inst.last_sweep) < idle / 4 {
            return;
        }
        inst.last_sweep = now;
        let stale: Vec<u64> =
            inst.resources.iter().filter(|(_, h)| now.saturating_sub(h.used) >= idle).map(|(k, _)| *k).collect();
        for key in stale {
            if let Some(held) = inst.resources.remove(&key) {
                self.counters.live.fetch_sub(1, Relaxed);
                self.counters.dropped_idle.fetch_add(1, Relaxed);
                self.drop_resource(inst, held.handle);
            }
        }
    }

    /// Drops every resource of idle services now, in every instance not busy (the host's
    /// housekeeping; calls also sweep as they pass).
    pub(crate) fn sweep_all(&self) {
        let now = self.host.tick_count();
        for i in self.instances.iter() {
            if let Some(mut inst) = i.try_lock() {
                self.sweep(&mut inst, now);
            }
        }
    }

    fn poison(&self, inst: &mut Instance) {
        let lost = inst.resources.len() as u64;
        inst.live = None;
        inst.resources.clear();
        self.counters.live.fetch_sub(lost, Relaxed);
        self.counters.lost.fetch_add(lost, Relaxed);
        self.counters.replaced.fetch_add(1, Relaxed);
        tracing::warn!(plugin = %self.name, lost, "a plugin instance faulted: replaced, with its services' resources");
    }

    /// What it is doing.
    pub(crate) fn status(&self) -> SharedStatus {
        let c = &self.counters;
        SharedStatus {
            name: self.name.to_string(),
            kind: self.compiled.kind,
            sha256: self.compiled.sha256.clone(),
            instances: self.instances.iter().filter(|i| i.lock().live.is_some()).count() as u64,
            resources: c.live.load(Relaxed),
            created: c.created.load(Relaxed),
            dropped_idle: c.dropped_idle.load(Relaxed),
            released: c.released.load(Relaxed),
            replaced: c.replaced.load(Relaxed),
            lost: c.lost.load(Relaxed),
            constructor_faults: c.constructor_faults.load(Relaxed),
        }
    }
}

/// Why an instance did not start.
pub(crate) enum StartError {
    /// It could not be instantiated, or `init` refused its configuration.
    Load(LoadError),
    /// `init` faulted (a trap, its deadline, the memory cap).
    Init(CallFault),
}

/// Instantiates a 0.2.0 component in `store` and gives it `init(config)`.
pub(crate) fn instantiate(
    host: &Runtime,
    compiled: &Compiled,
    config: &str,
    store: Store<HostState>,
) -> Result<Live, LoadError> {
    start_live(host, compiled, config, store).map_err(|e| match e {
        StartError::Load(e) => e,
        StartError::Init(fault) => LoadError::SelfTest(format!("init {fault}")),
    })
}

/// [`instantiate`], telling a fault of `init` from the rest.
fn start_live(
    host: &Runtime,
    compiled: &Compiled,
    config: &str,
    mut store: Store<HostState>,
) -> Result<Live, StartError> {
    let KindPre::Shared(pre) = &compiled.pre else {
        return Err(StartError::Load(LoadError::Instantiate("not a 0.2.0 component".into())));
    };
    let deadline = host.config().update_deadline;
    arm(&mut store, host.ticks(deadline), deadline);
    let inst = |e: wasmtime::Error| StartError::Load(host.instantiate_error(&e));
    let (guest, init) = match pre {
        SharedPre::Balancer(pre) => {
            let g = pre.instantiate(&mut store).map_err(inst)?;
            let r = g.sextant_plugin_balancer().call_init(&mut store, config);
            (Guest::Balancer(g), r)
        }
        SharedPre::Health(pre) => {
            let g = pre.instantiate(&mut store).map_err(inst)?;
            let r = g.sextant_plugin_health().call_init(&mut store, config);
            (Guest::Health(g), r)
        }
        SharedPre::Scheduler(pre) => {
            let g = pre.instantiate(&mut store).map_err(inst)?;
            let r = g.sextant_plugin_scheduler().call_init(&mut store, config);
            (Guest::Scheduler(g), r)
        }
    };
    match init {
        Ok(Ok(())) => Ok(Live { store, guest }),
        Ok(Err(reason)) => Err(StartError::Load(LoadError::Config(reason))),
        Err(e) => Err(StartError::Init(fault_in(&mut store, &e))),
    }
}

/// Calls the resource constructor of `live`'s kind for `service`.
pub(crate) fn construct(live: &mut Live, service: &str) -> Result<ResourceAny, CallFault> {
    let store = &mut live.store;
    let r = match &live.guest {
        Guest::Balancer(g) => g.sextant_plugin_balancer().balancer().call_constructor(&mut *store, service),
        Guest::Health(g) => g.sextant_plugin_health().health().call_constructor(&mut *store, service),
        Guest::Scheduler(g) => g.sextant_plugin_scheduler().scheduler().call_constructor(&mut *store, service),
    };
    r.map_err(|e| match fault_in(store, &e) {
        CallFault::Trap(t) => CallFault::Trap(format!("in the constructor: {t}")),
        other => other,
    })
}

/// Where a service's resource lives in a shared plugin (plugin, resource key, instance
/// index), without owning it: calls through it reach the resource, dropping it releases
/// nothing. The host's off-path thread creates a resource through one with the worker that
/// owns the [`SharedRunner`] left free for picks.
#[derive(Clone)]
pub(crate) struct SharedAddr {
    plugin: Arc<SharedPlugin>,
    key: u64,
    index: usize,
    service: Arc<str>,
}

impl SharedAddr {
    /// See [`SharedPlugin::call`].
    pub(crate) fn call<R>(
        &self,
        published: &mut Arc<Published>,
        missing: Missing,
        f: impl FnOnce(&mut Live, ResourceAny, bool) -> Result<R, CallFault>,
    ) -> Result<Option<R>, CallFault> {
        self.plugin.call(self.index, self.key, &self.service, published, missing, f)
    }
}

/// How a slot reaches its service's resource in a shared plugin. Dropping it releases the
/// resource.
pub(crate) struct SharedRunner(SharedAddr);

impl SharedRunner {
    pub(crate) fn new(plugin: &Arc<SharedPlugin>, key: u64, index: usize, service: &Arc<str>) -> Self {
        Self(SharedAddr { plugin: Arc::clone(plugin), key, index: index % plugin.len(), service: Arc::clone(service) })
    }

    /// The resource's address, for a call made without holding this runner.
    pub(crate) fn addr(&self) -> SharedAddr {
        self.0.clone()
    }

    /// Drops the resource (the next call creates another).
    pub(crate) fn release(&self) {
        self.0.plugin.release(self.0.index, self.0.key);
    }
}

impl std::ops::Deref for SharedRunner {
    type Target = SharedAddr;

    fn deref(&self) -> &SharedAddr {
        &self.0
    }
}

impl Drop for SharedRunner {
    fn drop(&mut self) {
        self.release();
    }
}
