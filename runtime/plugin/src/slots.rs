//! What every host keeps per service: [`Slots`] (a balancer; a health policy and a scheduler
//! where traffic is) and the one set of [`Defaults`] they start on, so a server and a gateway
//! answer alike when nothing is bound.

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;

use crate::{BalancerSlot, HealthSlot, LoadError, Observer, PluginHost, PluginKind, PluginSpec, SchedulerSlot};
use crate::{SlotStatus, VersionStatus, builtins::Snapshot};

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
        let native = self.native(kind);
        match kind {
            PluginKind::Balancer => {
                let slot = BalancerSlot::new(host, scratch, native)?;
                if let Some(s) = live {
                    slot.set_snapshot(s);
                }
                slot.load(spec)
            }
            PluginKind::Health => {
                let slot = HealthSlot::new(host, scratch, native)?;
                if let Some(s) = live {
                    slot.set_snapshot(s);
                }
                slot.load(spec)
            }
            PluginKind::Scheduler => {
                let slot = SchedulerSlot::new(host, scratch, native)?;
                if let Some(s) = live {
                    slot.set_snapshot(s);
                }
                slot.load(spec)
            }
        }
    }
}

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
    /// The native default of a scheduler slot attached later.
    native_scheduler: PluginSpec,
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
        // The first version and, for a wasm plugin, what is loaded over it.
        let first = |spec: &PluginSpec, kind: PluginKind| -> (PluginSpec, Option<PluginSpec>) {
            match spec {
                PluginSpec::Builtin { .. } => (spec.clone(), None),
                PluginSpec::Wasm { .. } => (defaults.native(kind), Some(spec.clone())),
            }
        };
        let (default, over) = first(&plan.balancer, PluginKind::Balancer);
        let balancer = BalancerSlot::new(host, service, default)?;
        if let Some(spec) = over {
            balancer.load(spec)?;
        }
        let health = match &plan.health {
            Some(spec) => {
                let (default, over) = first(spec, PluginKind::Health);
                let slot = HealthSlot::new(host, service, default)?;
                if let Some(spec) = over {
                    slot.load(spec)?;
                }
                Some(slot)
            }
            None => None,
        };
        let scheduler = match &plan.scheduler {
            Some(spec) => {
                let (default, over) = first(spec, PluginKind::Scheduler);
                let slot = SchedulerSlot::new(host, service, default)?;
                if let Some(spec) = over {
                    slot.load(spec)?;
                }
                Some(Arc::new(slot))
            }
            None => None,
        };
        Ok(Self {
            host: host.clone(),
            service: service.to_owned(),
            balancer,
            health,
            scheduler: ArcSwapOption::new(scheduler),
            native_scheduler: defaults.native(PluginKind::Scheduler),
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
        let (native, over) = match spec {
            PluginSpec::Builtin { .. } => (spec, None),
            PluginSpec::Wasm { .. } => (self.native_scheduler.clone(), Some(spec)),
        };
        let slot = SchedulerSlot::new(&self.host, &self.service, native)?;
        slot.set_snapshot(snapshot);
        let version = match over {
            Some(spec) => slot.load(spec)?,
            None => slot.status().active,
        };
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
