//! One balancer version: its workers (a native policy or a wasm instance each, with its
//! own store) and how a pick, a snapshot update and a fault are handled on one of them.
//!
//! A pick locks the worker of its thread's shard (falling over to any free one), so picks on
//! different threads run in parallel on different workers, each given the same snapshot. A
//! worker that missed a snapshot catches up on its next pick; one whose plugin faulted is
//! replaced, and the slot's native default answers for it meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Instant, SystemTime};

use parking_lot::{Mutex, MutexGuard};
use sextant_builtins::{Balancer, EdfWeights, Mode, Request, RingPoint, Table, mix64};
use wasmtime::Store;

use crate::bindings::v1::balancer::BalancerPlugin;
use crate::bindings::v1::balancer::exports::sextant::plugin::balancer as wit;
use crate::bindings::v2::balancer::exports::sextant::plugin::balancer as wit2;
use crate::lifecycle::FaultWindow;
use crate::published::Published;
use crate::shared::{Guest, Missing, SharedAddr, SharedRunner};
use crate::state::{KindPre, arm, fault_in};
use crate::stats::Counters;
use crate::{
    CallFault, Compiled, HostConfig, HostState, LoadError, PickRequest, PluginHost, PluginKind, PluginSpec,
    VersionStatus,
};

pub(crate) enum Exec {
    PerRequest,
    Weighted(EdfWeights),
    Ring(Vec<RingPoint>),
    Maglev(Vec<u32>),
    /// The plugin failed on this snapshot: the fallback answers until the next one.
    Fallback,
    /// A 0.2.0 plugin whose resource for this service does not exist yet (or was dropped):
    /// created and given `published` off the request path (`Version::prepare`); the native
    /// default answers meanwhile.
    Lazy,
}

pub(crate) struct WasmRunner {
    pub(crate) store: Store<HostState>,
    pub(crate) guest: BalancerPlugin,
}

pub(crate) enum Runner {
    Native(Box<dyn Balancer>, Box<HostState>),
    Wasm(Box<WasmRunner>),
    /// A 0.2.0 plugin: this service's resource in one of its shared instances, and the
    /// generator its tables draw keys from.
    Shared(SharedRunner, Box<HostState>),
    /// A wasm instance that could not be rebuilt: the fallback serves.
    Gone,
}

pub(crate) struct Worker {
    /// Epoch of the newest published list given to this instance.
    pub(crate) seen: u64,
    /// The published list `exec` and the runner index: `seen`'s, or, after the plugin failed on
    /// `seen`'s, the older one it last accepted (see `stale`).
    pub(crate) published: Arc<Published>,
    /// While the plugin serves an older published list than `seen`'s: its endpoint indices mapped to
    /// the newest published list's (`None`: no longer there, the native default answers instead).
    pub(crate) stale: Option<Vec<Option<u32>>>,
    pub(crate) exec: Exec,
    pub(crate) runner: Runner,
    pub(crate) fallback: Box<dyn Balancer>,
    pub(crate) fallback_env: HostState,
    pub(crate) calls: u64,
}

/// Built by `update` → validated table or per-request. A table must refer to endpoints in
/// range and stay within the host's table limits (`HostConfig::max_table_entries`,
/// `max_table_entries_per_endpoint`, and in bytes the instance memory cap): the host keeps a
/// copy per worker, memory spent on the plugin's behalf.
pub(crate) fn validate_mode(mode: Mode, len: usize, config: &HostConfig) -> Result<Exec, CallFault> {
    let in_range = |i: u32| (i as usize) < len;
    let within = |what: &str, entries: usize, entry_bytes: usize| -> Result<(), CallFault> {
        let per_endpoint = config.max_table_entries_per_endpoint.saturating_mul(len.max(1));
        let bytes = entries.saturating_mul(entry_bytes);
        let over = if entries > config.max_table_entries {
            Some(format!("the host's limit of {} entries (--plugin-max-table-entries)", config.max_table_entries))
        } else if entries > per_endpoint {
            Some(format!(
                "{} entries per endpoint × {len} endpoints (--plugin-max-table-entries-per-endpoint)",
                config.max_table_entries_per_endpoint
            ))
        } else if bytes > config.memory_limit {
            Some(format!("the plugin memory cap of {} bytes", config.memory_limit))
        } else {
            None
        };
        over.map_or(Ok(()), |limit| Err(CallFault::Contract(format!("{what} of {entries} entries passes {limit}"))))
    };
    Ok(match mode {
        Mode::PerRequest => Exec::PerRequest,
        Mode::Table(Table::Weighted(w)) => {
            if w.len() != len {
                return Err(CallFault::Contract(format!("weighted table of {} entries for {len} endpoints", w.len())));
            }
            Exec::Weighted(EdfWeights::new(&w))
        }
        Mode::Table(Table::Ring(mut ring)) => {
            within("ring", ring.len(), std::mem::size_of::<RingPoint>())?;
            if ring.iter().any(|p| !in_range(p.endpoint)) || (ring.is_empty() && len > 0) {
                return Err(CallFault::Contract("ring refers to endpoints out of range, or is empty".into()));
            }
            ring.sort_unstable_by_key(|p| (p.hash, p.endpoint));
            Exec::Ring(ring)
        }
        Mode::Table(Table::Maglev(t)) => {
            within("maglev table", t.len(), std::mem::size_of::<u32>())?;
            if t.iter().any(|&i| !in_range(i)) || (t.is_empty() && len > 0) {
                return Err(CallFault::Contract("maglev table refers to endpoints out of range, or is empty".into()));
            }
            Exec::Maglev(t)
        }
    })
}

/// A WIT `mode` (of either contract version) as the plain model.
macro_rules! mode_from {
    ($name:ident, $wit:ident) => {
        pub(crate) fn $name(m: $wit::Mode) -> Mode {
            match m {
                $wit::Mode::PerRequest => Mode::PerRequest,
                $wit::Mode::Table($wit::Table::Weighted(w)) => Mode::Table(Table::Weighted(w)),
                $wit::Mode::Table($wit::Table::Maglev(t)) => Mode::Table(Table::Maglev(t)),
                $wit::Mode::Table($wit::Table::Ring(r)) => Mode::Table(Table::Ring(
                    r.into_iter().map(|p| RingPoint { hash: p.hash, endpoint: p.endpoint }).collect(),
                )),
            }
        }
    };
}

mode_from!(mode_from_wit, wit);
mode_from!(mode_from_wit2, wit2);

/// What a pick on a 0.2.0 resource gave: an answer, or (when the resource had to be created
/// first) the table its first update returned.
pub(crate) enum SharedPick {
    Answer(Option<u32>),
    Table(Mode),
    /// The resource (or its instance) is not there, or its instance is busy being
    /// prepared: the caller falls back and has it prepared off the request path.
    NotReady,
}

/// `update` on a 0.2.0 balancer resource with `published` (the store armed by the caller).
fn update_resource(
    g: &wit2::GuestBalancer<'_>,
    store: &mut Store<HostState>,
    handle: wasmtime::component::ResourceAny,
    published: &Published,
) -> Result<Mode, CallFault> {
    match g.call_update(&mut *store, handle, &published.wit) {
        Ok(Ok(mode)) => Ok(mode_from_wit2(mode)),
        Ok(Err(reason)) => Err(CallFault::Refused(reason)),
        Err(e) => Err(fault_in(store, &e)),
    }
}

/// `update` of this service's 0.2.0 resource (created first with `Missing::Create`); None
/// when it has none and `missing` is `Skip`.
pub(crate) fn shared_update(
    s: &SharedAddr,
    host: &PluginHost,
    published: &Arc<Published>,
    missing: Missing,
) -> Result<Option<Mode>, CallFault> {
    // An update is rare next to picks: a clone of the published list to move into the store is cheap.
    s.call(&mut Arc::clone(published), missing, |live, handle, _fresh| {
        arm(&mut live.store, host.ticks(host.config().update_deadline), host.config().update_deadline);
        let Guest::Balancer(g) = &live.guest else { return Err(CallFault::Contract("not a balancer".into())) };
        update_resource(&g.sextant_plugin_balancer().balancer(), &mut live.store, handle, published)
    })
}

/// Creates (if missing) and updates this service's 0.2.0 resource for `published`: what a lazy
/// worker waits for (see [`Worker::materialize`]).
fn create_resource(addr: &SharedAddr, host: &PluginHost, published: &Arc<Published>) -> Result<Exec, CallFault> {
    shared_update(addr, host, published, Missing::Create)
        .and_then(|mode| mode.ok_or_else(|| CallFault::Trap("the resource could not be created".into())))
        .and_then(|mode| validate_mode(mode, published.len(), host.config()))
}

/// `pick` on this service's 0.2.0 resource (`published` moved into the store for the call and
/// back). Never creates it nor starts its instance (that is off the request path:
/// [`Worker::materialize`]); a resource created off the path is given `published` on its first
/// pick.
fn shared_pick(
    s: &SharedAddr,
    host: &PluginHost,
    ticks: u64,
    published: &mut Arc<Published>,
    request: &mut PickRequest,
    tried: &mut Vec<u32>,
) -> Result<SharedPick, CallFault> {
    let picked = s.call(published, Missing::Ready, |live, handle, fresh| {
        let Guest::Balancer(g) = &live.guest else { return Err(CallFault::Contract("not a balancer".into())) };
        let g = g.sextant_plugin_balancer().balancer();
        if fresh {
            arm(&mut live.store, host.ticks(host.config().update_deadline), host.config().update_deadline);
            let published = Arc::clone(&live.store.data().published);
            let mode = update_resource(&g, &mut live.store, handle, &published)?;
            if !matches!(mode, Mode::PerRequest) {
                return Ok(SharedPick::Table(mode));
            }
        }
        arm(&mut live.store, ticks, host.config().pick_deadline);
        live.store.data_mut().swap_request(&mut request.headers, &mut request.attempt, tried);
        let r = g.call_pick(&mut live.store, handle, wit2::Request { hash_key: request.hash_key });
        live.store.data_mut().swap_request(&mut request.headers, &mut request.attempt, tried);
        r.map(SharedPick::Answer).map_err(|e| fault_in(&mut live.store, &e))
    })?;
    Ok(picked.unwrap_or(SharedPick::NotReady))
}

/// The first of `at(0)`, `at(1)`, … `at(n - 1)` that is not in `tried` (`at(0)` at once when
/// nothing was tried); None when every one was tried.
fn untried(tried: &[u32], n: usize, mut at: impl FnMut(usize) -> Option<u32>) -> Option<u32> {
    if tried.is_empty() {
        return at(0);
    }
    (0..n).map_while(&mut at).find(|e| !tried.contains(e))
}

pub(crate) fn check_pick(answer: Option<u32>, len: usize) -> Result<Option<u32>, CallFault> {
    match answer {
        Some(i) if (i as usize) < len => Ok(Some(i)),
        None if len == 0 => Ok(None),
        Some(i) => Err(CallFault::Contract(format!("picked endpoint {i} of {len}"))),
        None => Err(CallFault::Contract(format!("picked nothing while {len} endpoints exist"))),
    }
}

impl WasmRunner {
    pub(crate) fn new(
        host: &PluginHost,
        compiled: &Compiled,
        label: Arc<str>,
        published: Arc<Published>,
        config: &str,
    ) -> Result<Self, LoadError> {
        Self::with_store(compiled, config, host, host.store(label, published))
    }

    pub(crate) fn with_store(
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
        let guest = pre.instantiate(&mut store).map_err(|e| host.instantiate_error(&e))?;
        match guest.sextant_plugin_balancer().call_init(&mut store, config) {
            Ok(Ok(())) => Ok(Self { store, guest }),
            Ok(Err(reason)) => Err(LoadError::Config(reason)),
            Err(e) => Err(LoadError::SelfTest(format!("init {}", fault_in(&mut store, &e)))),
        }
    }

    pub(crate) fn update(&mut self, host: &PluginHost, published: &Arc<Published>) -> Result<Mode, CallFault> {
        self.store.data_mut().published = Arc::clone(published);
        let deadline = host.config().update_deadline;
        arm(&mut self.store, host.ticks(deadline), deadline);
        match self.guest.sextant_plugin_balancer().call_update(&mut self.store, &published.wit) {
            Ok(Ok(mode)) => Ok(mode_from_wit(mode)),
            Ok(Err(reason)) => Err(CallFault::Refused(reason)),
            Err(e) => Err(fault_in(&mut self.store, &e)),
        }
    }

    pub(crate) fn pick(
        &mut self,
        host: &PluginHost,
        ticks: u64,
        request: &mut PickRequest,
    ) -> Result<Option<u32>, CallFault> {
        arm(&mut self.store, ticks, host.config().pick_deadline);
        std::mem::swap(&mut self.store.data_mut().headers, &mut request.headers);
        let r = self
            .guest
            .sextant_plugin_balancer()
            .call_pick(&mut self.store, wit::Request { hash_key: request.hash_key });
        std::mem::swap(&mut self.store.data_mut().headers, &mut request.headers);
        r.map_err(|e| fault_in(&mut self.store, &e))
    }
}

/// One balancer version in a slot.
pub struct Version {
    pub(crate) host: PluginHost,
    pub(crate) id: u64,
    pub(crate) spec: PluginSpec,
    pub(crate) loaded_at: SystemTime,
    pub(crate) workers: Box<[Mutex<Worker>]>,
    pub(crate) counters: Counters,
    pub(crate) faults: Mutex<FaultWindow>,
    /// Preparation of lazy workers off the request path (`balancer.rs`).
    pub(crate) prepare: Prepare,
}

/// When a version's lazy workers may be prepared: one job at a time, and after a failed one
/// not before a backoff (doubling from [`Prepare::FIRST`] to [`Prepare::MOST`]), so a
/// constructor or `init` that keeps failing costs one off-path try per backoff, not one per
/// pick or snapshot.
#[derive(Debug, Default)]
pub(crate) struct Prepare {
    /// A job is queued or running.
    pub(crate) queued: std::sync::atomic::AtomicBool,
    /// Failed jobs in a row, and when the next may run.
    pub(crate) backoff: Mutex<(u32, Option<Instant>)>,
    /// Held while a preparation runs: the off-path thread's and a caller's
    /// ([`BalancerSlot::prepare_now`](crate::BalancerSlot::prepare_now)) take turns, so a
    /// resource waiting for its creation gets one constructor and one first `update`, not
    /// one per preparer (a stateful plugin counts its updates).
    pub(crate) running: Mutex<()>,
}

impl Prepare {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(500);
    const MOST: std::time::Duration = std::time::Duration::from_secs(60);

    /// Whether a job should be queued now (and marks it queued).
    pub(crate) fn claim(&self, now: Instant) -> bool {
        if self.backoff.lock().1.is_some_and(|at| now < at) {
            return false;
        }
        !self.queued.swap(true, Relaxed)
    }

    /// A job ended: on failure the next waits longer.
    pub(crate) fn done(&self, ok: bool, now: Instant) {
        let mut b = self.backoff.lock();
        if ok {
            *b = (0, None);
        } else {
            let wait = Self::FIRST.saturating_mul(1 << b.0.min(16)).min(Self::MOST);
            *b = (b.0.saturating_add(1), Some(now + wait));
        }
        drop(b);
        self.queued.store(false, Relaxed);
    }
}

impl Drop for Version {
    fn drop(&mut self) {
        let mut counters = self.counters.snapshot();
        counters.counts.calls = self.workers.iter_mut().map(|w| w.get_mut().calls).sum();
        self.host.retire(self.spec.version_key(PluginKind::Balancer), &counters);
    }
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version").field("id", &self.id).field("spec", &self.spec).finish_non_exhaustive()
    }
}

thread_local! {
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Relaxed)
    };
}

/// How often a call is timed (1 in N), to keep the clock off most picks.
pub(crate) const SAMPLE_EVERY: u64 = 64;

impl Version {
    pub(crate) fn build(
        host: &PluginHost,
        id: u64,
        spec: PluginSpec,
        default: &PluginSpec,
        published: &Arc<Published>,
    ) -> Result<Self, LoadError> {
        let label: Arc<str> = Arc::from(format!("{}#{id}", spec.name()));
        let shared = match &spec {
            PluginSpec::Wasm { name, compiled, config } if compiled.contract.shared() => Some((
                host.shared(name, compiled, config)?,
                host.next_key(),
                Arc::<str>::from(published.model.service.as_str()),
            )),
            _ => None,
        };
        let mut workers = Vec::new();
        for index in 0..host.config().workers.max(1) {
            let runner = match &spec {
                PluginSpec::Wasm { .. } if let Some((plugin, key, service)) = &shared => {
                    let env = host.state_seeded(Arc::clone(&label), Arc::clone(published), plugin.seed(index));
                    Runner::Shared(SharedRunner::new(plugin, *key, index, service), Box::new(env))
                }
                PluginSpec::Builtin { name, config } => Runner::Native(
                    sextant_builtins::balancer(name, config).map_err(LoadError::UnknownBuiltin)?,
                    Box::new(host.state(Arc::clone(&label), Arc::clone(published))),
                ),
                PluginSpec::Wasm { compiled, config, .. } => Runner::Wasm(Box::new(WasmRunner::new(
                    host,
                    compiled,
                    Arc::clone(&label),
                    Arc::clone(published),
                    config,
                )?)),
            };
            let PluginSpec::Builtin { name, config } = default else {
                unreachable!("a slot's default is a built-in");
            };
            let fallback = sextant_builtins::balancer(name, config).map_err(LoadError::UnknownBuiltin)?;
            let mut worker = Worker {
                seen: u64::MAX,
                published: Arc::clone(published),
                stale: None,
                exec: Exec::Fallback,
                runner,
                fallback,
                fallback_env: host.state(Arc::clone(&label), Arc::clone(published)),
                calls: 0,
            };
            worker
                .apply(host, &spec, published)
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
            prepare: Prepare::default(),
        })
    }

    /// Creates this service's resource in the first worker's instance now and gives it the
    /// current snapshot, if the version runs a 0.2.0 plugin (see [`Worker::materialize`]).
    pub(crate) fn warm(&self) -> Result<(), LoadError> {
        for worker in &self.workers {
            let result = worker.lock().materialize(&self.host);
            result.map_err(|f| LoadError::SelfTest(format!("update with the current snapshot {f}")))?;
        }
        Ok(())
    }

    /// Gives every lazy worker its resource (off the request path: the host's off-path
    /// thread runs this); the first fault stops it. The plugin's constructor and first
    /// `update` run with the worker unlocked, so picks that reach it meanwhile are answered
    /// (by the native default) instead of waiting out the plugin's deadline.
    pub(crate) fn prepare(&self) -> Result<(), CallFault> {
        let _one_at_a_time = self.prepare.running.lock();
        for worker in &self.workers {
            let Some((addr, published)) = worker.lock().lazy_resource() else { continue };
            let made = create_resource(&addr, &self.host, &published);
            worker.lock().install(made, &published)?;
        }
        Ok(())
    }

    pub(crate) fn worker(&self) -> MutexGuard<'_, Worker> {
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
    pub(crate) fn record_fault(&self, f: &CallFault, host: &PluginHost) -> Option<usize> {
        self.counters.fault(f);
        self.faults.lock().record(Instant::now(), host.config().fault_window, host.config().max_faults)
    }

    /// Status.
    #[must_use]
    pub fn status(&self) -> VersionStatus {
        let mut counters = self.counters.snapshot();
        counters.counts.calls = self.workers.iter().map(|w| w.lock().calls).sum();
        VersionStatus::of(self.id, &self.spec, self.loaded_at, counters)
    }
}

impl Worker {
    /// Applies a published list to the plugin and the fallback. When the plugin fails on it, the
    /// plugin's own previous state keeps serving (its answers mapped to the new published list, an
    /// endpoint no longer there answered by the native default); with no previous state to
    /// keep, the native default serves this published list. Either way the error is returned.
    pub(crate) fn apply(
        &mut self,
        host: &PluginHost,
        spec: &PluginSpec,
        published: &Arc<Published>,
    ) -> Result<(), CallFault> {
        self.seen = published.epoch;
        self.fallback_env.published = Arc::clone(published);
        // The native default cannot fail on a valid snapshot; if it ever refused, picks
        // would find no endpoint, which the caller sees as "none".
        let _ = self.fallback.update(&published.model, &mut self.fallback_env);
        let result = match &mut self.runner {
            Runner::Native(b, env) => {
                env.published = Arc::clone(published);
                b.update(&published.model, &mut **env).map_err(CallFault::Refused)
            }
            Runner::Wasm(w) => w.update(host, published),
            Runner::Shared(shared, _) => match shared_update(shared, host, published, Missing::Skip) {
                Ok(Some(mode)) => Ok(mode),
                Ok(None) => {
                    // No resource for this service here: the next pick creates one.
                    self.exec = Exec::Lazy;
                    self.published = Arc::clone(published);
                    self.stale = None;
                    return Ok(());
                }
                Err(f) => Err(f),
            },
            Runner::Gone => Err(CallFault::Trap("instance lost".into())),
        };
        let fault = match result.and_then(|mode| validate_mode(mode, published.len(), host.config())) {
            Ok(exec) => {
                self.exec = exec;
                self.published = Arc::clone(published);
                self.stale = None;
                return Ok(());
            }
            Err(f) => f,
        };
        if !self.keep_previous(host, spec) {
            self.exec = Exec::Fallback;
            self.published = Arc::clone(published);
            self.stale = None;
            return Err(fault);
        }
        let now: std::collections::HashMap<&str, u32> =
            published.model.endpoints.iter().zip(0u32..).map(|(e, i)| (e.id.as_str(), i)).collect();
        self.stale =
            Some(self.published.model.endpoints.iter().map(|e| now.get(e.id.as_str()).copied()).collect::<Vec<_>>());
        Err(fault)
    }

    /// After a failed update: whether the state that served `self.published list` still can. A
    /// table stands on its own; a per-request wasm instance (which may have trapped, or
    /// half-applied the new published list) is rebuilt on `self.published list`; a native policy that refused
    /// is not trusted further.
    pub(crate) fn keep_previous(&mut self, host: &PluginHost, spec: &PluginSpec) -> bool {
        match (&self.exec, &self.runner) {
            (Exec::Fallback, _) | (_, Runner::Native(..) | Runner::Gone) => false,
            (Exec::Weighted(_) | Exec::Ring(_) | Exec::Maglev(_), Runner::Wasm(_) | Runner::Shared(..)) => true,
            // The resource may have half-applied the new published list (or gone with its instance):
            // a new one is created on `self.published list` by the next pick.
            (Exec::PerRequest | Exec::Lazy, Runner::Shared(shared, _)) => {
                shared.release();
                self.exec = Exec::Lazy;
                true
            }
            (Exec::Lazy, Runner::Wasm(_)) => false,
            (Exec::PerRequest, Runner::Wasm(_)) => {
                let PluginSpec::Wasm { compiled, config, name } = spec else { return false };
                let previous = Arc::clone(&self.published);
                let Ok(mut fresh) =
                    WasmRunner::new(host, compiled, Arc::from(name.as_str()), Arc::clone(&previous), config)
                else {
                    return false;
                };
                let restored =
                    fresh.update(host, &previous).and_then(|mode| validate_mode(mode, previous.len(), host.config()));
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

    /// Creates this service's resource now, if it waits for its first pick (`Exec::Lazy`),
    /// and gives it the published list: what the first pick would do, without the pick.
    pub(crate) fn materialize(&mut self, host: &PluginHost) -> Result<(), CallFault> {
        let Some((addr, published)) = self.lazy_resource() else { return Ok(()) };
        let made = create_resource(&addr, host, &published);
        self.install(made, &published)
    }

    /// Where a lazy worker's resource is to be created, and for which published list.
    fn lazy_resource(&self) -> Option<(SharedAddr, Arc<Published>)> {
        let (Exec::Lazy, Runner::Shared(shared, _)) = (&self.exec, &self.runner) else { return None };
        Some((shared.addr(), Arc::clone(&self.published)))
    }

    /// Installs what [`create_resource`] made for `published`. When the worker moved to another
    /// published list meanwhile it stays lazy (its next pick asks again; the resource exists by then,
    /// so that try is an `update`).
    fn install(&mut self, made: Result<Exec, CallFault>, published: &Arc<Published>) -> Result<(), CallFault> {
        if !matches!(self.exec, Exec::Lazy) {
            return Ok(());
        }
        match made {
            Ok(exec) if self.published.epoch == published.epoch => {
                self.exec = exec;
                Ok(())
            }
            Ok(_) => Ok(()),
            // Still lazy: tried again off the path after a backoff (`Prepare`).
            Err(f) => Err(f),
        }
    }

    /// The native default's answer on the newest published list, told the request's attempt and what
    /// it tried (a ring-hash default walks its ring past them, as the plugin's table would).
    pub(crate) fn fallback_pick(&mut self, request: &PickRequest) -> Option<u32> {
        let r = Request { hash_key: request.hash_key };
        if request.tried.is_empty() && request.attempt == 0 {
            return self.fallback.pick(&r, &mut self.fallback_env);
        }
        let (mut headers, mut attempt) = (Vec::new(), request.attempt);
        let mut tried = self.fallback_env.published.indices_of(&request.tried);
        self.fallback_env.swap_request(&mut headers, &mut attempt, &mut tried);
        let answer = self.fallback.pick(&r, &mut self.fallback_env);
        self.fallback_env.swap_request(&mut headers, &mut attempt, &mut tried);
        answer
    }

    pub(crate) fn pick(
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
                    Runner::Shared(_, env) => env,
                    Runner::Gone => fallback_env,
                };
                mix64(sextant_builtins::Env::random(env))
            })
        };
        // What a retry already tried, as indices into the published list the plugin answers for.
        let mut tried = self.published.indices_of(&request.tried);
        // Never called lazy: the slot answers those with the native default and has the
        // resource prepared off the request path.
        match &mut self.exec {
            Exec::Fallback | Exec::Lazy => Ok(self.fallback_pick(request)),
            Exec::Weighted(edf) => {
                let first = edf.pick();
                // The next picks of the same table, until one was not tried (all tried: the
                // first).
                Ok(first.map(|f| untried(&tried, len, |i| if i == 0 { Some(f) } else { edf.pick() }).unwrap_or(f)))
            }
            Exec::Ring(ring) => {
                if ring.is_empty() {
                    return Ok(None);
                }
                let k = key(&mut self.runner, &mut self.fallback_env);
                let p = ring.partition_point(|p| p.hash < k);
                // On around the ring past the endpoints tried.
                let n = ring.len();
                let at = |i: usize| Some(ring[(p + i) % n].endpoint);
                Ok(untried(&tried, n, at).or_else(|| at(0)))
            }
            Exec::Maglev(table) => {
                if table.is_empty() {
                    return Ok(None);
                }
                let k = key(&mut self.runner, &mut self.fallback_env);
                let (n, slot) = (table.len(), (k % table.len() as u64) as usize);
                // The next slots of the table, past the endpoints tried.
                let at = |i: usize| Some(table[(slot + i) % n]);
                Ok(untried(&tried, n, at).or_else(|| at(0)))
            }
            Exec::PerRequest => {
                let answer = match &mut self.runner {
                    Runner::Native(b, env) => {
                        env.swap_request(&mut request.headers, &mut request.attempt, &mut tried);
                        let a = b.pick(&Request { hash_key: request.hash_key }, &mut **env);
                        env.swap_request(&mut request.headers, &mut request.attempt, &mut tried);
                        a
                    }
                    Runner::Wasm(w) => w.pick(host, ticks, request)?,
                    Runner::Shared(shared, _) => {
                        match shared_pick(shared, host, ticks, &mut self.published, request, &mut tried)? {
                            SharedPick::Answer(answer) => answer,
                            // A resource created off the path answers with a table: executed
                            // from now on.
                            SharedPick::Table(mode) => {
                                self.exec = validate_mode(mode, self.published.len(), host.config())?;
                                return self.pick(host, ticks, request, len);
                            }
                            // Dropped (idle, or its instance replaced), or its instance busy:
                            // prepared again off the path; the native default answers.
                            SharedPick::NotReady => {
                                self.exec = Exec::Lazy;
                                return Ok(self.fallback_pick(request));
                            }
                        }
                    }
                    Runner::Gone => return Ok(self.fallback_pick(request)),
                };
                check_pick(answer, len)
            }
        }
    }

    /// After a fault the wasm instance may be poisoned (a trapped component cannot be
    /// entered again): replace it with a fresh one, initialised and given the published list.
    pub(crate) fn replace_instance(&mut self, host: &PluginHost, spec: &PluginSpec, published: &Arc<Published>) {
        if let Runner::Shared(shared, _) = &self.runner {
            // The shared instance replaced itself if the fault poisoned it; this service's
            // resource is dropped either way and created again by a later pick, unless it
            // could not be created on this published list (then the fallback serves until the next).
            shared.release();
            self.stale = None;
            if matches!(self.exec, Exec::Fallback) {
                self.seen = published.epoch;
                self.published = Arc::clone(published);
            } else {
                self.exec = Exec::Lazy;
                let _ = self.apply(host, spec, published);
            }
            return;
        }
        let PluginSpec::Wasm { compiled, config, name } = spec else { return };
        if !matches!(self.runner, Runner::Wasm(_)) {
            return;
        }
        self.runner = match WasmRunner::new(host, compiled, Arc::from(name.as_str()), Arc::clone(published), config) {
            Ok(w) => Runner::Wasm(Box::new(w)),
            Err(e) => {
                tracing::warn!(plugin = %name, error = %e, "could not replace a faulted instance; the fallback serves");
                Runner::Gone
            }
        };
        self.stale = None;
        self.exec = Exec::Fallback;
        let _ = self.apply(host, spec, published);
    }
}
