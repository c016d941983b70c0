//! Balancer slots: one per service, holding the active balancer version (`crate::version`:
//! its workers and how a pick runs on one) and swapping it atomically. A new snapshot is
//! applied to every worker off the hot path ([`BalancerSlot::set_snapshot`]).
//!
//! Loading: compile (cached) → kind and contract version checked by the host → self-test
//! on a synthetic snapshot → every instance initialised and given the current snapshot →
//! one atomic pointer swap. Picks in progress finish on the old version, whose instances are
//! freed when the last one lets go. A pick whose plugin call traps, misses its deadline,
//! hits the memory cap or answers out of range is answered by the slot's native default
//! instead (no pick fails), the faulty instance is replaced, and more than `max_faults`
//! faults within `fault_window` roll the slot back to the previous version.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use sextant_builtins::{Endpoint, Snapshot, mix64};

use crate::bindings::v2::balancer::exports::sextant::plugin::balancer as wit2;
use crate::canary::{Candidate, CandidateStatus, Split};
use crate::kind::Contract;
use crate::lifecycle::{self, History, rollback_reason};
use crate::published::Published;
use crate::shared::{self, Guest};
use crate::state::{arm, fault_in};
use crate::tracker::{EndpointLoad, LoadTracker};
use crate::version::{Exec, SAMPLE_EVERY, Version, WasmRunner, check_pick, mode_from_wit2, validate_mode};
use crate::{
    CallFault, Compiled, LoadError, Observer, PickRequest, Picked, PluginHost, PluginKind, PluginSpec, SlotError,
    SlotStatus, TrialChange, VersionStatus,
};

struct SlotInner {
    host: PluginHost,
    service: String,
    tracker: Arc<LoadTracker>,
    published: ArcSwap<Published>,
    epoch: AtomicU64,
    active: ArcSwap<Version>,
    /// A version beside the active one while a rollout tries it (`crate::canary`).
    candidate: ArcSwapOption<Candidate>,
    default: PluginSpec,
    /// Rollback targets and recent events.
    history: Mutex<History>,
    next_id: AtomicU64,
    /// Serialises loads and rollbacks.
    admin: Mutex<()>,
    /// Epoch of the last published list whose update fault was put in `events` (one line per published list,
    /// not one per instance).
    update_fault_noted: AtomicU64,
    /// Told of every automatic rollback (the plugin manager marks the version bad).
    observer: std::sync::OnceLock<Observer>,
}

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

    /// A slot whose live load comes from `tracker` (a router's, on the router's clock).
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
        let published = Arc::new(Published::new(
            0,
            Snapshot { service: service.into(), ..Snapshot::default() },
            Arc::clone(&tracker),
        ));
        let version = Version::build(host, 1, default.clone(), &default, &published)?;
        Ok(Self(Arc::new(SlotInner {
            host: host.clone(),
            service: service.into(),
            tracker,
            published: ArcSwap::new(published),
            epoch: AtomicU64::new(0),
            active: ArcSwap::from_pointee(version),
            candidate: ArcSwapOption::empty(),
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

    /// What picks are made on now.
    #[must_use]
    pub fn published(&self) -> Arc<Published> {
        self.0.published.load_full()
    }

    /// Publishes a new snapshot and applies it to every instance of the active version
    /// (off the hot path: call it from the registry watcher).
    pub fn set_snapshot(&self, snapshot: Snapshot) {
        let epoch = self.0.epoch.fetch_add(1, Relaxed) + 1;
        self.publish_list(Published::new(epoch, snapshot, Arc::clone(&self.0.tracker)));
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
        self.publish_list(Published::new(epoch, snapshot, Arc::clone(&self.0.tracker)).with_targets(targets));
    }

    /// Makes `published` the one picks are made on, and applies it to every worker of the
    /// active version.
    fn publish_list(&self, published: Published) {
        let published = Arc::new(published);
        self.0.published.store(Arc::clone(&published));
        self.apply_to(&self.0.active.load_full(), &published);
        if let Some(candidate) = self.0.candidate.load_full() {
            self.apply_to(&candidate.version, &published);
        }
    }

    /// Applies `published` to every worker of `version`.
    fn apply_to(&self, version: &Arc<Version>, published: &Arc<Published>) {
        let mut lazy = false;
        for w in &version.workers {
            let mut w = w.lock();
            if w.seen != published.epoch
                && let Err(f) = w.apply(&self.0.host, &version.spec, published)
            {
                let (kept, waits) = (w.stale.is_some(), matches!(w.exec, Exec::Lazy));
                drop(w);
                self.update_fault(version, &f, published, kept);
                lazy |= waits;
                continue;
            }
            lazy |= matches!(w.exec, Exec::Lazy);
        }
        // Not waiting for a pick to find them: prepared off the path now.
        if lazy {
            self.prepare(version);
        }
    }

    /// Picks an endpoint and returns its target ([`BalancerSlot::set_snapshot_with`]) and its
    /// load cell (start the request's in-flight count on it with
    /// [`LoadTracker::start`](crate::LoadTracker::start)). None when the service has no
    /// endpoint, or its snapshot was published without targets of type `T`. Never fails
    /// because of a plugin, as [`BalancerSlot::pick_with`].
    pub fn pick_target<T: Clone + 'static>(&self, request: &mut PickRequest) -> Option<(T, Arc<EndpointLoad>, Picked)> {
        self.pick_with(request, |published, p| {
            Some((published.target::<T>(p.index)?.clone(), Arc::clone(published.load(p.index)?), p))
        })
        .flatten()
    }

    /// Picks an endpoint and hands it, with the published list it indexes, to `f`. None when the
    /// service has no endpoint. Never fails because of a plugin: a faulty answer is
    /// replaced by the native default's.
    pub fn pick_with<R>(&self, request: &mut PickRequest, f: impl FnOnce(&Published, Picked) -> R) -> Option<R> {
        let active = self.0.active.load();
        let candidate = self.0.candidate.load();
        let Some(candidate) = candidate.as_deref() else { return self.pick_on(&active, request, f) };
        match candidate.split {
            Split::Canary { .. } if candidate.takes(request.hash_key) => self.pick_on(&candidate.version, request, f),
            Split::Shadow if candidate.shadows() => {
                let id = |p: &Published, i: u32| p.model.endpoints.get(i as usize).map(|e| e.id.clone());
                let (stable, answer) =
                    match self.pick_on(&active, request, |p, picked| (id(p, picked.index), f(p, picked))) {
                        Some((stable, answer)) => (stable, Some(answer)),
                        None => (None, None),
                    };
                let shadow = self.pick_on(&candidate.version, request, |p, picked| id(p, picked.index)).flatten();
                candidate.tally.lock().count(stable.as_deref(), shadow.as_deref());
                answer
            }
            _ => self.pick_on(&active, request, f),
        }
    }

    /// A pick made by `version` (the active one or the candidate).
    fn pick_on<R>(
        &self,
        version: &Arc<Version>,
        request: &mut PickRequest,
        f: impl FnOnce(&Published, Picked) -> R,
    ) -> Option<R> {
        let mut published = self.0.published.load();
        let host = &self.0.host;
        let mut worker = version.worker();
        if worker.seen != published.epoch {
            if worker.seen > published.epoch {
                // `set_snapshot` published and applied a newer published list after our load.
                published = self.0.published.load();
            }
            if worker.seen != published.epoch
                && let Err(fault) = worker.apply(host, &version.spec, &Arc::clone(&published))
            {
                // Counted with the worker held: it now serves `published` (stale or by the
                // default), and another worker may not have applied it yet.
                self.update_fault(version, &fault, &Arc::clone(&published), worker.stale.is_some());
            }
        }
        let ticks = host.pick_ticks();
        let sample = worker.calls.is_multiple_of(SAMPLE_EVERY);
        let started = sample.then(Instant::now);
        let len = worker.published.len();
        // A lazy worker waits for its resource (prepared off the request path): the native
        // default answers, on the newest published list.
        let result = if matches!(worker.exec, Exec::Lazy) {
            Ok(worker.fallback_pick(request))
        } else {
            worker.pick(host, ticks, request, len)
        };
        if let Some(t) = started {
            version.counters.call_time.record(t.elapsed());
        }
        let picked = match result {
            // Lazy, or made lazy by this pick (its resource gone or its instance busy): the
            // answer is the native default's.
            Ok(answer) if matches!(worker.exec, Exec::Lazy) => {
                version.counters.fallbacks.fetch_add(1, Relaxed);
                drop(worker);
                self.prepare(version);
                answer.map(|index| Picked { index, version: version.id, fallback: true })
            }
            // The plugin answered for the published list it last accepted, older than the newest:
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
                let full = Arc::clone(&published);
                worker.replace_instance(host, &version.spec, &full);
                drop(worker);
                self.fault(version, &fault, &full);
                answer.map(|index| Picked { index, version: version.id, fallback: true })
            }
        };
        picked.map(|p| f(&published, p))
    }

    /// Has `version`'s lazy workers given their resources on the host's off-path thread
    /// (starting the plugin's instance again if a fault dropped it): `init`, the constructor
    /// and the first `update` run there with their deadlines, never on a request's thread,
    /// which the native default answers meanwhile. A fault there is counted as any call's
    /// (automatic rollback included) and the next try waits a backoff.
    fn prepare(&self, version: &Arc<Version>) {
        if !version.prepare.claim(Instant::now()) {
            return;
        }
        let (slot, id) = (Arc::downgrade(&self.0), version.id);
        self.0.host.off_path(Box::new(move || {
            let Some(slot) = slot.upgrade().map(BalancerSlot) else { return };
            // Swapped out meanwhile: nothing to prepare (the new version's picks ask for theirs).
            if let Some(version) = slot.version(id) {
                slot.prepare_version(&version);
            }
        }));
    }

    /// The active version or the candidate, by id.
    fn version(&self, id: u64) -> Option<Arc<Version>> {
        let active = self.0.active.load_full();
        if active.id == id {
            return Some(active);
        }
        self.0.candidate.load_full().filter(|c| c.version.id == id).map(|c| Arc::clone(&c.version))
    }

    fn prepare_version(&self, version: &Arc<Version>) {
        let result = version.prepare();
        version.prepare.done(result.is_ok(), Instant::now());
        if let Err(fault) = result {
            let published = self.0.published.load_full();
            self.fault(version, &fault, &published);
        }
    }

    /// Gives the workers that wait for their resource (a 0.2.0 plugin's, dropped after a
    /// fault, for idleness, or not created yet) their resource now, on the calling thread,
    /// as the host's off-path thread otherwise does after a pick found one waiting: for a
    /// caller off the request path that wants the plugin answering before traffic. A
    /// preparation already running (the off-path thread's) is waited for, not repeated. A
    /// fault is counted as any call's; the plugin's backoff is not waited for.
    pub fn prepare_now(&self) {
        let version = self.0.active.load_full();
        self.prepare_version(&version);
    }

    /// Picks an endpoint index.
    pub fn pick(&self, request: &mut PickRequest) -> Option<Picked> {
        self.pick_with(request, |_, p| p)
    }

    fn fault(&self, version: &Arc<Version>, fault: &CallFault, published: &Arc<Published>) {
        tracing::warn!(service = %self.0.service, plugin = %version.spec.name(), version = version.id, %fault, "plugin fault");
        if let Some(faults) = version.record_fault(fault, &self.0.host) {
            let reason = rollback_reason(faults, self.0.host.config().fault_window, fault);
            self.auto_rollback(version.id, &reason, published);
        }
    }

    /// A failed `update` on a live snapshot: counted as one fault (automatic rollback when
    /// there were too many) and shown in the slot's events, once per snapshot however many
    /// instances the version runs (so the rollback threshold does not depend on the core
    /// count).
    fn update_fault(&self, version: &Arc<Version>, fault: &CallFault, published: &Arc<Published>, kept: bool) {
        if self.0.update_fault_noted.swap(published.epoch, Relaxed) == published.epoch {
            return;
        }
        let serving = if kept { "its previous snapshot serves" } else { "the native default serves" };
        self.note(version.id, format!("update fault on revision {}: {fault}; {serving}", published.model.revision));
        self.fault(version, fault, published);
    }

    fn auto_rollback(&self, faulty: u64, reason: &str, published: &Arc<Published>) {
        let Some(_admin) = self.0.admin.try_lock() else { return };
        if let Some(candidate) = self.0.candidate.load_full().filter(|c| c.version.id == faulty) {
            // A candidate that faults too often leaves; the active version never stopped serving.
            self.0.candidate.store(None);
            tracing::error!(service = %self.0.service, version = faulty, plugin = %candidate.version.spec.name(), %reason, "candidate dropped automatically");
            self.note(faulty, format!("candidate dropped: {reason}"));
            if let Some(observe) = self.0.observer.get() {
                let spec = &candidate.version.spec;
                observe(lifecycle::auto_rollback(&self.0.service, PluginKind::Balancer, spec, reason.to_owned()));
            }
            return;
        }
        let active = self.0.active.load_full();
        if active.id != faulty {
            return;
        }
        let faulty_spec = Some(active.spec.clone());
        let target = self.0.history.lock().take_for_auto_rollback(&self.0.default);
        let id = self.0.next_id.fetch_add(1, Relaxed);
        let version = Version::build(&self.0.host, id, target, &self.0.default, published)
            .or_else(|_| Version::build(&self.0.host, id, self.0.default.clone(), &self.0.default, published));
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
        let version = self.checked_version(spec)?;
        let status = version.status();
        let old = self.0.active.load_full();
        self.0.history.lock().replaced(old.spec.clone());
        self.publish(version, "load".into());
        Ok(status)
    }

    /// Runs `spec` as a candidate beside the active version, making `split` of the picks
    /// (`crate::canary`): checked and built as a load is (self-test, every worker given the
    /// current snapshot); the active version keeps serving the other picks, and serves alone
    /// again when the candidate is cleared or faults too often. A candidate already there is
    /// replaced. Nothing changes when it fails.
    ///
    /// # Errors
    /// What was wrong with the plugin ([`LoadError`]); a share of 0 or above 1000.
    pub fn set_candidate(&self, spec: PluginSpec, split: Split) -> Result<VersionStatus, LoadError> {
        if let Split::Canary { per_mille } = split
            && !(1..=1000).contains(&per_mille)
        {
            return Err(LoadError::BadShare(per_mille));
        }
        let _admin = self.0.admin.lock();
        let version = self.checked_version(spec)?;
        let status = version.status();
        let id = version.id;
        let tally = parking_lot::Mutex::default();
        let draws = AtomicU64::new(0);
        self.0.candidate.store(Some(Arc::new(Candidate { version: Arc::new(version), split, tally, draws })));
        self.note(id, format!("candidate ({split:?})"));
        Ok(status)
    }

    /// Changes the running candidate's split (a rollout's next step), keeping its version,
    /// counters and tally. False when there is no candidate.
    pub fn set_split(&self, split: Split) -> bool {
        let _admin = self.0.admin.lock();
        let Some(current) = self.0.candidate.load_full() else { return false };
        if current.split == split {
            return true;
        }
        let tally = parking_lot::Mutex::new(current.tally.lock().clone());
        let draws = AtomicU64::new(current.draws.load(Relaxed));
        let next = Candidate { version: Arc::clone(&current.version), split, tally, draws };
        self.0.candidate.store(Some(Arc::new(next)));
        self.note(current.version.id, format!("candidate ({split:?})"));
        true
    }

    /// Drops the candidate: the active version makes every pick again. False when there was
    /// none.
    pub fn clear_candidate(&self) -> bool {
        let _admin = self.0.admin.lock();
        let Some(gone) = self.0.candidate.swap(None) else { return false };
        self.note(gone.version.id, "candidate cleared".into());
        true
    }

    /// Makes the candidate the active version (the one it replaces becomes the rollback
    /// target), as it runs: no rebuild, its counters kept.
    ///
    /// # Errors
    /// [`SlotError::NoPrevious`] when there is no candidate.
    pub fn promote_candidate(&self) -> Result<VersionStatus, SlotError> {
        let _admin = self.0.admin.lock();
        let candidate = self.0.candidate.swap(None).ok_or(SlotError::NoPrevious)?;
        let old = self.0.active.load_full();
        self.0.history.lock().replaced(old.spec.clone());
        let status = candidate.version.status();
        let id = candidate.version.id;
        self.0.active.store(Arc::clone(&candidate.version));
        self.note(id, "candidate promoted".into());
        Ok(status)
    }

    /// Makes the slot's candidate what `change` says (the rule every host applies while a
    /// record's rollout runs: [`TrialChange`]); `spec` is what a [`TrialChange::Start`] runs
    /// (a host makes it from the candidate's component with [`crate::Desired::spec`]).
    /// Returns whether the slot changed.
    ///
    /// # Errors
    /// A candidate that does not load (the slot keeps what it ran), or a promotion with no
    /// candidate to promote.
    pub fn change_trial(&self, change: &TrialChange, spec: Option<PluginSpec>) -> Result<bool, String> {
        match change {
            TrialChange::Keep => Ok(false),
            TrialChange::Start(t) => {
                let spec = spec.ok_or_else(|| format!("component {} not at hand", t.version.sha256))?;
                self.set_candidate(spec, t.split).map(|_| true).map_err(|e| e.to_string())
            }
            TrialChange::Step(t) => Ok(self.set_split(t.split)),
            TrialChange::Promote => self.promote_candidate().map(|_| true).map_err(|e| e.to_string()),
            TrialChange::Stop => Ok(self.clear_candidate()),
        }
    }

    /// The candidate, when there is one: its version, split and shadow tally.
    #[must_use]
    pub fn candidate(&self) -> Option<CandidateStatus> {
        self.0.candidate.load().as_deref().map(Candidate::status)
    }

    /// `spec` as a new version of this slot, self-tested and built on the current snapshot
    /// (with the admin lock held).
    fn checked_version(&self, spec: PluginSpec) -> Result<Version, LoadError> {
        if let PluginSpec::Wasm { compiled, config, .. } = &spec {
            let host = &self.0.host;
            host.self_test_once(compiled, config, || match compiled.contract {
                Contract::V0_1 => self.self_test(compiled, config),
                Contract::V0_2 | Contract::V0_2_1 | Contract::V0_2_2 | Contract::V0_2_3 => {
                    self_test_shared(host, compiled, config)
                }
            })?;
        }
        let id = self.0.next_id.fetch_add(1, Relaxed);
        let published = self.published();
        let version = Version::build(&self.0.host, id, spec, &self.0.default, &published)?;
        // A 0.2.0 plugin creates a service's resources lazily; one is created now and given
        // the current snapshot, so a plugin that refuses this service is refused here, as a
        // 0.1.0 one is when its instances are built.
        version.warm()?;
        Ok(version)
    }

    /// Goes back to the previous version.
    ///
    /// # Errors
    /// Nothing to roll back to, or the previous version no longer builds.
    pub fn rollback(&self) -> Result<VersionStatus, SlotError> {
        let _admin = self.0.admin.lock();
        let target = self.0.history.lock().rollback_target().cloned().ok_or(SlotError::NoPrevious)?;
        let id = self.0.next_id.fetch_add(1, Relaxed);
        let version = Version::build(&self.0.host, id, target, &self.0.default, &self.published())?;
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

    /// The plugin name of version `id` (what [`Picked::version`] names) while it is the
    /// active version or the candidate; none once it is neither.
    #[must_use]
    pub fn version_name(&self, id: u64) -> Option<String> {
        let active = self.0.active.load();
        if active.id == id {
            return Some(active.spec.name().to_owned());
        }
        let candidate = self.0.candidate.load();
        candidate.as_deref().filter(|c| c.version.id == id).map(|c| c.version.spec.name().to_owned())
    }

    /// Runs a 0.1.0 plugin on the synthetic snapshot: every pick in range, none on an empty
    /// snapshot, no trap, no deadline.
    fn self_test(&self, compiled: &Arc<Compiled>, config: &str) -> Result<(), LoadError> {
        let host = &self.0.host;
        let tracker = Arc::new(LoadTracker::new(host.config().ewma_decay));
        let published = Arc::new(Published::new(1, synthetic(), Arc::clone(&tracker)));
        let store = host.store_seeded(Arc::from("self-test"), Arc::clone(&published), 0);
        let mut runner = WasmRunner::with_store(compiled, config, host, store)?;
        let fail = |what: &str, f: CallFault| LoadError::SelfTest(format!("{what} {f}"));
        let mode = runner.update(host, &published).map_err(|f| fail("update", f))?;
        let exec = validate_mode(mode, published.len(), host.config()).map_err(|f| fail("update", f))?;
        if matches!(exec, Exec::PerRequest) {
            let ticks = host.pick_ticks();
            for k in 0..64u64 {
                let mut request = PickRequest { hash_key: (k % 2 == 0).then(|| mix64(k)), ..PickRequest::default() };
                let answer = runner.pick(host, ticks, &mut request).map_err(|f| fail("pick", f))?;
                check_pick(answer, published.len()).map_err(|f| fail("pick", f))?;
            }
            let empty = Arc::new(Published::new(2, Snapshot::default(), tracker));
            runner.update(host, &empty).map_err(|f| fail("update with no endpoints", f))?;
            let answer =
                runner.pick(host, ticks, &mut PickRequest::default()).map_err(|f| fail("pick with no endpoints", f))?;
            check_pick(answer, 0).map_err(|f| fail("pick with no endpoints", f))?;
        }
        Ok(())
    }
}

/// The self-test of a 0.2.0 balancer, in an instance of its own: two services' resources side
/// by side, one given the synthetic snapshot (every pick in range), the other an empty one
/// (none), then both dropped; no trap, no deadline.
fn self_test_shared(host: &PluginHost, compiled: &Compiled, config: &str) -> Result<(), LoadError> {
    let tracker = Arc::new(LoadTracker::new(host.config().ewma_decay));
    let full = Arc::new(Published::new(1, synthetic(), Arc::clone(&tracker)));
    let empty = Arc::new(Published::new(2, Snapshot::default(), tracker));
    let store = host.store_seeded(Arc::from("self-test"), Arc::clone(&full), 0);
    let mut live = shared::instantiate(host, compiled, config, store)?;
    let fail = |what: &str, f: CallFault| LoadError::SelfTest(format!("{what} {f}"));
    let Guest::Balancer(guest) = &live.guest else {
        return Err(LoadError::WrongKind { expected: PluginKind::Balancer, found: compiled.kind });
    };
    let guest = guest.sextant_plugin_balancer().balancer();
    let store = &mut live.store;
    let update_ticks = host.ticks(host.config().update_deadline);
    let mut resources = Vec::new();
    for (service, published) in [("sextant/self-test/synthetic", &full), ("sextant/self-test/empty", &empty)] {
        arm(store, update_ticks, host.config().update_deadline);
        store.data_mut().published = Arc::clone(published);
        let handle =
            guest.call_constructor(&mut *store, service).map_err(|e| fail("constructor", fault_in(store, &e)))?;
        let mode = match guest.call_update(&mut *store, handle, &published.wit) {
            Ok(Ok(mode)) => mode_from_wit2(mode),
            Ok(Err(reason)) => return Err(fail("update", CallFault::Refused(reason))),
            Err(e) => return Err(fail("update", fault_in(store, &e))),
        };
        let exec = validate_mode(mode, published.len(), host.config()).map_err(|f| fail("update", f))?;
        if matches!(exec, Exec::PerRequest) {
            let ticks = host.pick_ticks();
            for k in 0..if published.is_empty() { 1 } else { 64u64 } {
                arm(store, ticks, host.config().pick_deadline);
                let request = wit2::Request { hash_key: (k % 2 == 0).then(|| mix64(k)) };
                let answer =
                    guest.call_pick(&mut *store, handle, request).map_err(|e| fail("pick", fault_in(store, &e)))?;
                let what = if published.is_empty() { "pick with no endpoints" } else { "pick" };
                check_pick(answer, published.len()).map_err(|f| fail(what, f))?;
            }
        }
        resources.push(handle);
    }
    for handle in resources {
        arm(store, update_ticks, host.config().update_deadline);
        handle.resource_drop(&mut *store).map_err(|e| fail("drop", fault_in(store, &e)))?;
    }
    Ok(())
}
