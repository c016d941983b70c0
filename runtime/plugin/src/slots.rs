//! What every host keeps per service: [`Slots`] (a balancer; a health policy and a scheduler
//! where traffic is) and the one set of [`Defaults`] they start on, so a server and a gateway
//! answer alike when nothing is bound.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;

use crate::{BalancerSlot, HealthSlot, LoadError, Observer, PluginHost, PluginKind, PluginSpec, SchedulerSlot};
use crate::{LoadTracker, SlotError, SlotStatus, VersionStatus, builtins::Snapshot};

/// The balancer every host runs when nothing else is configured or bound: peak EWMA (two
/// random choices by weight, the one with the lower latency × load wins).
pub const DEFAULT_BALANCER: &str = "peak-ewma";
/// The health policy every host runs when nothing else is configured or bound: consecutive
/// thresholds on active probes, outlier detection on traffic.
pub const DEFAULT_HEALTH: &str = "standard";
/// The scheduler a scheduler slot starts on (a service runs none unless one is configured or
/// bound: the registered weights stand).
pub const DEFAULT_SCHEDULER: &str = "adaptive";

/// The built-ins slots run when no plugin is bound, and the native answer behind every wasm
/// plugin (a fault falls back to it).
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Balancer (default [`DEFAULT_BALANCER`]).
    pub balancer: PluginSpec,
    /// Health policy (default [`DEFAULT_HEALTH`]).
    pub health: PluginSpec,
    /// Scheduler; none (the default) keeps the registered weights.
    pub scheduler: Option<PluginSpec>,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            balancer: PluginSpec::builtin(DEFAULT_BALANCER),
            health: PluginSpec::builtin(DEFAULT_HEALTH),
            scheduler: None,
        }
    }
}

impl Defaults {
    /// The built-in a `kind` slot starts on and falls back to: the default when it is a
    /// built-in, the crate's default built-in otherwise.
    #[must_use]
    pub fn native(&self, kind: PluginKind) -> PluginSpec {
        let (spec, name) = match kind {
            PluginKind::Balancer => (Some(&self.balancer), DEFAULT_BALANCER),
            PluginKind::Health => (Some(&self.health), DEFAULT_HEALTH),
            PluginKind::Scheduler => (self.scheduler.as_ref(), DEFAULT_SCHEDULER),
        };
        match spec {
            Some(s @ PluginSpec::Builtin { .. }) => s.clone(),
            _ => PluginSpec::builtin(name),
        }
    }

    /// Checks that `spec` runs in a `kind` slot (compile-time facts, `init` with its
    /// configuration, the self-test, then `update` with `live`, a real snapshot, when given)
    /// in a scratch slot that is dropped after. The check every host makes before a plugin
    /// reaches a service.
    ///
    /// # Errors
    /// What is wrong with the plugin.
    pub fn validate(
        &self,
        host: &PluginHost,
        kind: PluginKind,
        spec: PluginSpec,
        live: Option<Snapshot>,
    ) -> Result<VersionStatus, LoadError> {
        let scratch = "validate/scratch/slot";
        match kind {
            PluginKind::Balancer => self.try_in::<BalancerSlot>(host, scratch, spec, live),
            PluginKind::Health => self.try_in::<HealthSlot>(host, scratch, spec, live),
            PluginKind::Scheduler => self.try_in::<SchedulerSlot>(host, scratch, spec, live),
        }
    }

    /// `spec` loaded into a new `S` slot of `service` on the native default, given `live`
    /// first; the slot is dropped after.
    fn try_in<S: Slot>(
        &self,
        host: &PluginHost,
        service: &str,
        spec: PluginSpec,
        live: Option<Snapshot>,
    ) -> Result<VersionStatus, LoadError> {
        let slot = S::new(host, service, self.native(S::KIND))?;
        if let Some(s) = live {
            slot.set_snapshot(s);
        }
        slot.load(spec)
    }

    /// A new `S` slot of `service` running `spec`: a built-in as its first version, a wasm
    /// plugin loaded over the native default (given `snapshot` first, when there is one, so
    /// the plugin starts on the service's real endpoints), so a fault always has a native
    /// answer behind it.
    fn start<S: Slot>(
        &self,
        host: &PluginHost,
        service: &str,
        spec: PluginSpec,
        snapshot: Option<Snapshot>,
    ) -> Result<(S, VersionStatus), LoadError> {
        self.start_with(spec, snapshot, |first| S::new(host, service, first))
    }

    /// As [`Defaults::start`], the slot made by `make` from its first version.
    fn start_with<S: Slot>(
        &self,
        spec: PluginSpec,
        snapshot: Option<Snapshot>,
        make: impl FnOnce(PluginSpec) -> Result<S, LoadError>,
    ) -> Result<(S, VersionStatus), LoadError> {
        let (first, over) = match spec {
            PluginSpec::Builtin { .. } => (spec, None),
            PluginSpec::Wasm { .. } => (self.native(S::KIND), Some(spec)),
        };
        let slot = make(first)?;
        if let Some(s) = snapshot {
            slot.set_snapshot(s);
        }
        let version = match over {
            Some(spec) => slot.load(spec)?,
            None => slot.status().active,
        };
        Ok((slot, version))
    }
}

/// What every slot kind offers (a balancer, health or scheduler slot): it starts on a
/// built-in, is given snapshots, loads a new version (a hot swap that changes nothing when
/// it fails), rolls back, shows its status and reports automatic rollbacks.
pub trait Slot: Sized + Send + Sync + 'static {
    /// The kind of plugin the slot runs.
    const KIND: PluginKind;

    /// A slot of `service` running the built-in `default`, also the native answer behind
    /// any plugin loaded later.
    ///
    /// # Errors
    /// An unknown built-in or an invalid configuration.
    fn new(host: &PluginHost, service: &str, default: PluginSpec) -> Result<Self, LoadError>;
    /// Publishes a new snapshot of the service.
    fn set_snapshot(&self, snapshot: Snapshot);
    /// Loads a new version (a component of another kind is refused).
    ///
    /// # Errors
    /// What was wrong with the plugin; nothing changed.
    fn load(&self, spec: PluginSpec) -> Result<VersionStatus, LoadError>;
    /// Goes back to the previous version.
    ///
    /// # Errors
    /// Nothing to roll back to, or it no longer builds.
    fn rollback(&self) -> Result<VersionStatus, SlotError>;
    /// The active version and the slot's history.
    fn status(&self) -> SlotStatus;
    /// Sets who is told of automatic rollbacks (once; later calls are ignored).
    fn observe(&self, observer: Observer);
}

/// The [`Slot`] of a slot type, by its inherent methods.
macro_rules! slot {
    ($slot:ident, $kind:ident) => {
        impl Slot for $slot {
            const KIND: PluginKind = PluginKind::$kind;

            fn new(host: &PluginHost, service: &str, default: PluginSpec) -> Result<Self, LoadError> {
                $slot::new(host, service, default)
            }
            fn set_snapshot(&self, snapshot: Snapshot) {
                $slot::set_snapshot(self, snapshot);
            }
            fn load(&self, spec: PluginSpec) -> Result<VersionStatus, LoadError> {
                $slot::load(self, spec)
            }
            fn rollback(&self) -> Result<VersionStatus, SlotError> {
                $slot::rollback(self)
            }
            fn status(&self) -> SlotStatus {
                $slot::status(self)
            }
            fn observe(&self, observer: Observer) {
                $slot::observe(self, observer);
            }
        }
    };
}

slot!(BalancerSlot, Balancer);
slot!(HealthSlot, Health);
slot!(SchedulerSlot, Scheduler);

/// Which slots a host keeps for a service, and what each starts with.
#[derive(Debug, Clone)]
pub struct SlotPlan {
    /// The balancer.
    pub balancer: PluginSpec,
    /// The health policy; none on a host that carries no traffic (a health policy judges
    /// the outcomes of requests and probes, which only a router has).
    pub health: Option<PluginSpec>,
    /// The scheduler; none keeps the registered weights.
    pub scheduler: Option<PluginSpec>,
}

impl SlotPlan {
    /// The plan of a host that carries traffic (a router): every slot `defaults` names.
    #[must_use]
    pub fn routing(defaults: &Defaults) -> Self {
        Self {
            balancer: defaults.balancer.clone(),
            health: Some(defaults.health.clone()),
            scheduler: defaults.scheduler.clone(),
        }
    }

    /// The plan of a host that answers picks but carries no traffic (a server's
    /// `sextant pick`): the balancer alone.
    #[must_use]
    pub fn picks_only(defaults: &Defaults) -> Self {
        Self { balancer: defaults.balancer.clone(), health: None, scheduler: None }
    }
}

/// A service's plugin slots: the one bundle a server and a gateway both keep per service.
pub struct Slots {
    host: PluginHost,
    service: String,
    balancer: BalancerSlot,
    health: Option<HealthSlot>,
    /// Comes and goes with a scheduler binding ([`Slots::attach_scheduler`]).
    scheduler: ArcSwapOption<SchedulerSlot>,
    /// What a scheduler slot attached later starts on.
    defaults: Defaults,
    observer: OnceLock<Observer>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots").field("service", &self.service).finish_non_exhaustive()
    }
}

impl Slots {
    /// The slots of `service` as `plan` says. A configured built-in is a slot's first
    /// version; a wasm plugin is loaded over the native default (`defaults.native`), so a
    /// fault always has a native answer behind it.
    ///
    /// # Errors
    /// A plugin of the plan that does not load.
    pub fn new(host: &PluginHost, service: &str, defaults: &Defaults, plan: &SlotPlan) -> Result<Self, LoadError> {
        let tracker = Arc::new(LoadTracker::new(host.config().ewma_decay));
        Self::with_tracker(host, service, defaults, plan, tracker)
    }

    /// As [`Slots::new`], the balancer's live load kept by `tracker` (a router's, on the
    /// router's clock).
    ///
    /// # Errors
    /// A plugin of the plan that does not load.
    pub fn with_tracker(
        host: &PluginHost,
        service: &str,
        defaults: &Defaults,
        plan: &SlotPlan,
        tracker: Arc<LoadTracker>,
    ) -> Result<Self, LoadError> {
        let (balancer, _) = defaults.start_with(plan.balancer.clone(), None, |first| {
            BalancerSlot::with_tracker(host, service, first, tracker)
        })?;
        let health = match &plan.health {
            Some(spec) => Some(defaults.start::<HealthSlot>(host, service, spec.clone(), None)?.0),
            None => None,
        };
        let scheduler = match &plan.scheduler {
            Some(spec) => Some(Arc::new(defaults.start::<SchedulerSlot>(host, service, spec.clone(), None)?.0)),
            None => None,
        };
        Ok(Self {
            host: host.clone(),
            service: service.to_owned(),
            balancer,
            health,
            scheduler: ArcSwapOption::new(scheduler),
            defaults: defaults.clone(),
            observer: OnceLock::new(),
        })
    }

    /// Runs `spec` as the service's scheduler: loaded into the scheduler slot, or, when the
    /// bundle has none, in a new one (on the native default, given `snapshot` before `spec`
    /// is loaded, so the plugin starts on the service's real endpoints). Nothing changes when
    /// it fails.
    ///
    /// # Errors
    /// What is wrong with the plugin.
    pub fn attach_scheduler(&self, spec: PluginSpec, snapshot: Snapshot) -> Result<VersionStatus, LoadError> {
        if let Some(slot) = self.scheduler.load_full() {
            return slot.load(spec);
        }
        let (slot, version) = self.defaults.start::<SchedulerSlot>(&self.host, &self.service, spec, Some(snapshot))?;
        if let Some(observer) = self.observer.get() {
            slot.observe(Observer::clone(observer));
        }
        self.scheduler.store(Some(Arc::new(slot)));
        Ok(version)
    }

    /// Drops the scheduler slot (the registered weights stand again). False when there was none.
    pub fn detach_scheduler(&self) -> bool {
        self.scheduler.swap(None).is_some()
    }

    /// The balancer slot.
    #[must_use]
    pub fn balancer(&self) -> &BalancerSlot {
        &self.balancer
    }

    /// The health slot, on a host that carries traffic.
    #[must_use]
    pub fn health(&self) -> Option<&HealthSlot> {
        self.health.as_ref()
    }

    /// The scheduler slot, when the service runs one.
    #[must_use]
    pub fn scheduler(&self) -> Option<Arc<SchedulerSlot>> {
        self.scheduler.load_full()
    }

    /// Whether this bundle has a `kind` slot.
    #[must_use]
    pub fn has(&self, kind: PluginKind) -> bool {
        match kind {
            PluginKind::Balancer => true,
            PluginKind::Health => self.health.is_some(),
            PluginKind::Scheduler => self.scheduler.load().is_some(),
        }
    }

    /// Loads `spec` into the `kind` slot (hot swap; nothing changes when it fails). None when
    /// the bundle has no such slot.
    ///
    /// # Errors
    /// What is wrong with the plugin.
    pub fn load(&self, kind: PluginKind, spec: PluginSpec) -> Option<Result<VersionStatus, LoadError>> {
        match kind {
            PluginKind::Balancer => Some(self.balancer.load(spec)),
            PluginKind::Health => self.health.as_ref().map(|s| s.load(spec)),
            PluginKind::Scheduler => self.scheduler.load().as_ref().map(|s| s.load(spec)),
        }
    }

    /// The status of every slot the bundle has.
    #[must_use]
    pub fn status(&self) -> Vec<(PluginKind, SlotStatus)> {
        let mut all = vec![(PluginKind::Balancer, self.balancer.status())];
        all.extend(self.health.as_ref().map(|s| (PluginKind::Health, s.status())));
        all.extend(self.scheduler.load().as_ref().map(|s| (PluginKind::Scheduler, s.status())));
        all
    }

    /// Reports every slot's automatic rollbacks to `observer` (a scheduler slot attached
    /// later included). Only the first observer counts.
    pub fn observe(&self, observer: &Observer) {
        if self.observer.set(Observer::clone(observer)).is_err() {
            return;
        }
        self.balancer.observe(Observer::clone(observer));
        if let Some(s) = &self.health {
            s.observe(Observer::clone(observer));
        }
        if let Some(s) = self.scheduler.load().as_ref() {
            s.observe(Observer::clone(observer));
        }
    }
}
