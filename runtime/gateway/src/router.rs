//! The embedding API: [`Router::pick`] chooses an endpoint of a service through the
//! service's balancer slot and returns a [`PickGuard`](crate::PickGuard); finishing the guard
//! with an [`Outcome`](crate::Outcome) feeds live load (PeakEWMA, least-request), the circuit
//! breaker, passive health (the health plugin's outlier verdicts) and the scheduler's
//! statistics. Here: the router (its configuration, plugin loading, shutdown and maintenance
//! task) and pick errors; how one is built is `crate::builder`; where it learns instances
//! is `crate::discovery`.
//! Per-service state lives in `crate::service`; what traffic may reach is the rotation rule
//! (`crate::rotation`), applied by the service state when the registry changes (by the first pick
//! that sees the change) or local state does (by the maintenance task).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use sextant_core::ServiceKey;
use sextant_plugin::{
    AutoRollback, Defaults, LoadError, Observer, PickRequest, PluginHost, PluginKind, PluginSpec, VersionStatus,
};
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::discovery::{Discovery, HealthSink};
use crate::guard::PickGuard;
use crate::health::Probe;
use crate::resilience::Admission;
use crate::service::{ServicePolicy, ServiceState, Shared, Target};
use crate::status::ServiceStatus;

/// Why no endpoint was picked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PickError {
    /// The service has no endpoint traffic may go to (its view has arrived).
    #[error("service {0} has no endpoint traffic may go to")]
    NoEndpoints(String),
    /// No view has arrived yet (a remote discovery waiting for its first answer, with no
    /// cache): the service's instances are not known yet. [`Router::ready`] says when.
    #[error("service {0}: no view of the registry yet (discovery has not synced)")]
    NotSynced(String),
    /// The service lies outside what the router's discovery follows (another namespace
    /// than a remote scope's): it never has instances here.
    #[error("service {0} is outside what this router's discovery follows")]
    NotFollowed(String),
    /// The service's rate limit is spent.
    #[error("service {0} is over its rate limit")]
    RateLimited(String),
    /// Every endpoint the balancer offered was full or had its breaker open.
    #[error("service {0}: every endpoint offered is at its limit or has its breaker open")]
    Overloaded(String),
    /// The router was shut down ([`Router::shutdown`]): it picks no more.
    #[error("the router is shut down")]
    ShutDown,
    /// The service state could not be set up: a configured plugin failed to start (every pick of
    /// the service gets this until its configuration changes).
    #[error("service {service}: {source}")]
    Setup {
        /// The service.
        service: String,
        /// Why the plugin failed (shared: the error is handed to every caller).
        source: Arc<LoadError>,
    },
}

/// Why [`Router::load`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The service could not be set up (its configured plugins failed to start).
    #[error(transparent)]
    Service(#[from] PickError),
    /// The plugin was rejected; the active one keeps serving.
    #[error(transparent)]
    Plugin(#[from] LoadError),
}

/// The router: one state per service, created on first use.
#[derive(Clone)]
pub struct Router(Arc<Inner>);

struct Inner {
    host: PluginHost,
    discovery: Arc<dyn Discovery>,
    sink: Option<Arc<dyn HealthSink>>,
    /// The configuration of services without one of their own ([`Router::set_default`]
    /// changes its plugins).
    defaults: RwLock<ServicePolicy>,
    overrides: RwLock<HashMap<ServiceKey, ServicePolicy>>,
    states: RwLock<HashMap<ServiceKey, Arc<ServiceState>>>,
    /// The time every decision is made on.
    clock: Arc<dyn Clock>,
    probe: Probe,
    /// Set by [`Router::shutdown`]: no more picks, no more maintenance.
    closed: AtomicBool,
    /// Guards alive (picked, not yet finished or dropped), over every service state.
    open: Arc<AtomicUsize>,
    /// Wakes the maintenance task before its next tick (rebuilds, health verdicts due).
    wake: Arc<Notify>,
    /// Who hears of automatic rollbacks ([`Router::observe_rollbacks`]).
    observers: Arc<RwLock<Vec<Observer>>>,
    /// What every service state reports its automatic rollbacks to: the observers, in turn.
    fan_out: Observer,
    /// The follower of the remote servers' plugin records (set once, by the builder).
    plugins: OnceLock<Arc<dyn RouteWatcher>>,
}

/// What a router tells the follower of plugin records it runs (`crate::follow`): service states set
/// up and rebuilt, and its shutdown.
pub(crate) trait RouteWatcher: Send + Sync + 'static {
    /// `service`'s state was set up (`rebuilt`: set up again with a new configuration).
    fn service_set_up(&self, service: ServiceKey, rebuilt: bool);
    /// The router shut down.
    fn stop(&self);
    /// The watcher itself (the router hands it back as what it is).
    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

/// A router not kept alive (what a router's own follower holds).
#[derive(Clone)]
pub(crate) struct WeakRouter(Weak<Inner>);

impl std::fmt::Debug for WeakRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.strong_count() > 0 { "WeakRouter" } else { "WeakRouter(gone)" })
    }
}

impl WeakRouter {
    pub(crate) fn upgrade(&self) -> Option<Router> {
        self.0.upgrade().map(Router)
    }
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("states", &self.0.states.read().len()).finish_non_exhaustive()
    }
}

impl Router {
    /// The router's state and its maintenance task ([`RouterBuilder::build`](crate::RouterBuilder::build)).
    pub(crate) fn assemble(
        host: PluginHost,
        discovery: Arc<dyn Discovery>,
        sink: Option<Arc<dyn HealthSink>>,
        defaults: ServicePolicy,
        services: HashMap<ServiceKey, ServicePolicy>,
        clock: Arc<dyn Clock>,
        maintained: bool,
    ) -> Self {
        let observers: Arc<RwLock<Vec<Observer>>> = Arc::default();
        let fan_out: Observer = {
            let observers = Arc::clone(&observers);
            Arc::new(move |rollback: AutoRollback| {
                for o in observers.read().iter() {
                    o(rollback.clone());
                }
            })
        };
        let inner = Arc::new(Inner {
            host,
            discovery,
            sink,
            defaults: RwLock::new(defaults),
            overrides: RwLock::new(services),
            states: RwLock::default(),
            probe: Probe::new(!maintained),
            closed: AtomicBool::new(false),
            open: Arc::new(AtomicUsize::new(0)),
            wake: Arc::new(Notify::new()),
            clock,
            observers,
            fan_out,
            plugins: OnceLock::new(),
        });
        inner.discovery.on_change(Arc::downgrade(&inner.wake));
        if maintained {
            tokio::spawn(maintain(Arc::downgrade(&inner)));
        }
        Router(inner)
    }

    /// The watcher of this router's service states, if one was set.
    pub(crate) fn watcher(&self) -> Option<Arc<dyn RouteWatcher>> {
        self.0.plugins.get().cloned()
    }

    /// Sets the watcher of this router's service states (once; later ones are ignored).
    pub(crate) fn set_watcher(&self, watcher: Arc<dyn RouteWatcher>) {
        let _ = self.0.plugins.set(watcher);
    }

    pub(crate) fn downgrade(&self) -> WeakRouter {
        WeakRouter(Arc::downgrade(&self.0))
    }

    /// The plugin host (compile wasm plugins with it before [`Router::load`]).
    #[must_use]
    pub fn host(&self) -> &PluginHost {
        &self.0.host
    }

    /// The zone this router runs in (its plugin host's; empty: none): see
    /// [`RouterBuilder::zone`](crate::RouterBuilder::zone).
    #[must_use]
    pub fn zone(&self) -> String {
        self.0.host.zone()
    }

    /// Sets `service`'s configuration (replacing its service state, so live state starts over).
    pub fn configure(&self, service: ServiceKey, config: ServicePolicy) {
        self.0.states.write().remove(&service);
        self.0.overrides.write().insert(service.clone(), config);
        // Its bound plugins are loaded again into the new service state (set up with `config`).
        if let Some(f) = self.0.plugins.get() {
            f.service_set_up(service, true);
        }
    }

    /// Tells `observer` of every automatic rollback on this router's service states (a plugin that
    /// faulted too often within its window and was replaced by the version before it), on
    /// the thread that saw the last fault: keep it short (send on a channel). How a host
    /// reports them to the fleet: a [`PluginFollower`](crate::PluginFollower) does.
    pub fn observe_rollbacks(&self, observer: Observer) {
        self.0.observers.write().push(observer);
    }

    /// Makes `service`'s balancer candidate what `change` says (the rule every host applies
    /// while a record's rollout runs: [`TrialChange`](sextant_plugin::TrialChange); `spec`
    /// is what a start runs), and counts both versions' outcomes from then on, per step.
    ///
    /// # Errors
    /// The service state could not be set up; the candidate does not load (nothing changed).
    pub fn change_trial(
        &self,
        service: &ServiceKey,
        change: &sextant_plugin::TrialChange,
        spec: Option<PluginSpec>,
    ) -> Result<bool, String> {
        self.state(service).map_err(|e| e.to_string())?.change_trial(change, spec)
    }

    /// While a rollout's candidate runs on `service`: the step and both versions' outcome
    /// windows since it began `(step, stable, candidate)` (in a shadow step, the candidate's
    /// shadow picks and fallbacks).
    #[must_use]
    pub fn trial_windows(
        &self,
        service: &ServiceKey,
    ) -> Option<(usize, sextant_core::rollout::VersionWindow, sextant_core::rollout::VersionWindow)> {
        self.existing(service)?.trial_windows()
    }

    /// What `service`'s state looks like now (none before its first pick or load).
    #[must_use]
    pub fn status(&self, service: &ServiceKey) -> Option<ServiceStatus> {
        self.existing(service).map(|state| state.status())
    }

    /// `service`'s state if it has one (none is set up).
    pub(crate) fn existing(&self, service: &ServiceKey) -> Option<Arc<ServiceState>> {
        self.0.states.read().get(service).cloned()
    }

    fn state(&self, service: &ServiceKey) -> Result<Arc<ServiceState>, PickError> {
        if self.0.closed.load(Relaxed) {
            return Err(PickError::ShutDown);
        }
        if let Some(r) = self.0.states.read().get(service) {
            return Ok(Arc::clone(r));
        }
        let mut states = self.0.states.write();
        if let Some(r) = states.get(service) {
            return Ok(Arc::clone(r));
        }
        let config = self.0.overrides.read().get(service).cloned().unwrap_or_else(|| self.0.defaults.read().clone());
        let handle = self.0.discovery.handle(service);
        let state = ServiceState::new(
            &self.0.host,
            service.clone(),
            config,
            handle,
            &Shared {
                sink: self.0.sink.clone(),
                open: Arc::clone(&self.0.open),
                wake: Arc::clone(&self.0.wake),
                clock: Arc::clone(&self.0.clock),
            },
        )
        .map_err(|e| PickError::Setup { service: service.to_string(), source: Arc::new(e) })?;
        state.observe(&self.0.fan_out);
        let state = Arc::new(state);
        states.insert(service.clone(), Arc::clone(&state));
        drop(states);
        if let Some(f) = self.0.plugins.get() {
            f.service_set_up(service.clone(), false);
        }
        Ok(state)
    }

    /// One service of this router, looked up once: what a request asks of its service
    /// (counting it, its retry plan, picks, retries) without looking the service up again,
    /// as the router's methods of the same names each do. Hold it for one request.
    ///
    /// # Errors
    /// The router is shut down, or the service state could not be set up.
    pub fn service<'a>(&'a self, service: &'a ServiceKey) -> Result<ServiceRef<'a>, PickError> {
        Ok(ServiceRef { router: self, service, state: self.state(service)? })
    }

    /// Picks an endpoint of `service` for a request. Endpoints that are full or whose
    /// breaker refuses are skipped (three tries).
    ///
    /// # Errors
    /// No endpoint, rate limit spent, every offered endpoint refused, service set-up failed.
    pub fn pick(&self, service: &ServiceKey, request: &mut PickRequest) -> Result<PickGuard, PickError> {
        self.service(service)?.pick(request)
    }

    /// Why `service` offered no endpoint: outside the followed scope, no view yet, or
    /// really empty.
    fn why_empty(&self, service: &ServiceKey) -> PickError {
        if !self.0.discovery.follows(service) {
            PickError::NotFollowed(service.to_string())
        } else if !*self.0.discovery.synced().borrow() {
            PickError::NotSynced(service.to_string())
        } else {
            PickError::NoEndpoints(service.to_string())
        }
    }

    /// Whether the discovery's first view has arrived (always, on a local registry): what a
    /// gateway's readiness probe reports. Before it, picks answer
    /// [`PickError::NotSynced`].
    #[must_use]
    pub fn ready(&self) -> bool {
        *self.0.discovery.synced().borrow()
    }

    /// Waits until [`Router::ready`] (at once when it is). Bound it with a timeout: a
    /// discovery that never reaches a server and has no cache never syncs.
    pub async fn wait_ready(&self) {
        let mut synced = self.0.discovery.synced();
        let _ = synced.wait_for(|s| *s).await;
    }

    /// Like [`Router::pick`], for a retry that already tried the endpoints in `avoid`: the
    /// balancer is told them ([`PickRequest::tried`], and the attempt number as
    /// [`PickRequest::attempt`], `avoid`'s length), so a sticky balancer moves on to the next
    /// endpoint its key reaches (a table is walked on by the host; a wasm balancer reads
    /// `load.request-tried`). A balancer that ignores them gets up to three more picks while it
    /// offers a tried endpoint, then its last offer stands (a service whose every endpoint was
    /// tried still answers).
    ///
    /// # Errors
    /// As [`Router::pick`].
    pub fn pick_avoiding(
        &self,
        service: &ServiceKey,
        request: &mut PickRequest,
        avoid: &[SocketAddr],
    ) -> Result<PickGuard, PickError> {
        self.service(service)?.pick_avoiding(request, avoid)
    }

    /// Takes a retry from `service`'s budget; false when it is spent.
    #[must_use]
    pub fn retry_allowed(&self, service: &ServiceKey) -> bool {
        self.service(service).is_ok_and(|s| s.retry_allowed())
    }

    /// `service`'s configured attempts and the backoff before retry number `retry` (1 for
    /// the first retry; full jitter). A service without a service state (a router shut down) gets one
    /// attempt.
    #[must_use]
    pub fn retry_plan(&self, service: &ServiceKey, retry: u32) -> RetryPlan {
        self.service(service).map_or(RetryPlan { attempts: 1, backoff: Duration::ZERO }, |s| s.retry_plan(retry))
    }

    /// Counts a request in `service`'s retry budget (call once per request, not per attempt).
    pub fn count_request(&self, service: &ServiceKey) {
        if let Ok(s) = self.service(service) {
            s.count_request();
        }
    }

    /// Loads a plugin into `service`'s slot of `kind` (hot swap: in-flight picks finish on
    /// the old version, nothing is dropped). Nothing changes when it fails.
    ///
    /// # Errors
    /// What is wrong with the plugin. A scheduler loaded into a service state that runs none gets a
    /// slot of its own (its weights apply from the next window); [`Router::reset`] takes it
    /// away again.
    pub fn load(&self, service: &ServiceKey, kind: PluginKind, spec: PluginSpec) -> Result<VersionStatus, SwapError> {
        let state = self.state(service)?;
        Ok(match kind {
            PluginKind::Health => {
                state.carry_health();
                state.health().load(spec)?
            }
            PluginKind::Balancer => state.balancer().load(spec)?,
            PluginKind::Scheduler => state.attach_scheduler(spec)?,
        })
    }

    /// Puts `service`'s `kind` slot back on what its service state is configured with (its own
    /// configuration, else the router's defaults): a plugin bound and then unbound leaves
    /// nothing behind. A scheduler the service state is configured without goes away, and the
    /// registered weights stand again. Returns the version now active (none: no scheduler).
    ///
    /// # Errors
    /// The service state could not be set up; the configured plugin no longer loads.
    pub fn reset(&self, service: &ServiceKey, kind: PluginKind) -> Result<Option<VersionStatus>, SwapError> {
        let state = self.state(service)?;
        let config = self.0.overrides.read().get(service).cloned().unwrap_or_else(|| self.0.defaults.read().clone());
        let spec = match kind {
            PluginKind::Balancer => Some(config.balancer),
            PluginKind::Health => Some(config.health),
            PluginKind::Scheduler => config.scheduler,
        };
        match spec {
            Some(spec) => self.load(service, kind, spec).map(Some),
            None => {
                state.detach_scheduler();
                Ok(None)
            }
        }
    }

    /// Compiles a wasm component on a blocking thread (never on the async worker that calls
    /// it), then loads it as [`Router::load`] does.
    ///
    /// # Errors
    /// What is wrong with the component or its configuration. Nothing changes when it fails.
    pub async fn load_component(
        &self,
        service: &ServiceKey,
        kind: PluginKind,
        name: &str,
        component: Vec<u8>,
        config: &str,
    ) -> Result<VersionStatus, SwapError> {
        let (host, name) = (self.0.host.clone(), name.to_owned());
        let spec = tokio::task::spawn_blocking(move || PluginSpec::wasm(&host, &name, &component))
            .await
            .map_err(|e| LoadError::Compile(format!("the compile thread failed: {e}")))??;
        self.load(service, kind, spec.with_config(config))
    }

    /// Makes `spec` the `kind` plugin of every service without a configuration of its own
    /// ([`Router::configure`]): services routed from now on start with it, and it is loaded
    /// into the service states that exist (a scheduler into a service state that ran none gets a slot of its
    /// own). It is checked first (a self-test on a synthetic snapshot): a plugin that fails
    /// changes nothing. Returns the service states that refused it;
    /// they keep the plugin they ran.
    ///
    /// # Errors
    /// What is wrong with the plugin.
    pub fn set_default(&self, kind: PluginKind, spec: &PluginSpec) -> Result<Vec<(ServiceKey, SwapError)>, LoadError> {
        Defaults::default().validate(&self.0.host, kind, spec.clone(), None)?;
        {
            let mut defaults = self.0.defaults.write();
            match kind {
                PluginKind::Balancer => defaults.balancer = spec.clone(),
                PluginKind::Health => defaults.health = spec.clone(),
                PluginKind::Scheduler => defaults.scheduler = Some(spec.clone()),
            }
        }
        let overrides = self.0.overrides.read().keys().cloned().collect::<std::collections::HashSet<_>>();
        let states: Vec<ServiceKey> =
            self.0.states.read().keys().filter(|s| !overrides.contains(*s)).cloned().collect();
        let mut refused = Vec::new();
        for service in states {
            if let Err(e) = self.load(&service, kind, spec.clone()) {
                refused.push((service, e));
            }
        }
        Ok(refused)
    }

    /// The load probes `service`'s balancer asked for (`load.probe`) that its rate
    /// (`load_probe.per_second`) lets out now, as instance ids, oldest first; asks beyond it
    /// are dropped. A router ticked by its caller
    /// ([`RouterBuilder::ticked_by_caller`](crate::RouterBuilder::ticked_by_caller)) sends
    /// none itself: its caller takes them here and answers with [`Router::record_load`].
    #[must_use]
    pub fn take_load_probes(&self, service: &ServiceKey) -> Vec<String> {
        self.existing(service).map(|s| s.due_load_probes(self.0.clock.now())).unwrap_or_default()
    }

    /// Keeps `report` as instance `id`'s last load report in `service` (a probe's answer);
    /// false when the service or the instance is not followed.
    pub fn record_load(&self, service: &ServiceKey, id: &str, report: crate::load_report::LoadReport) -> bool {
        self.existing(service).is_some_and(|s| s.tracker().record_report_for(id, report))
    }

    /// Runs the time-driven work now (the maintenance task does it every 25 ms).
    pub fn tick(&self) {
        tick_all(&self.0, self.0.clock.now());
    }

    /// Shuts the router down: picks are refused from now on ([`PickError::ShutDown`]), the
    /// maintenance task and active health checks stop (a probe under way ends at its
    /// timeout), remote discovery stops following ([`Discovery::close`]), then waits until
    /// every request already picked has finished (its guard finished or dropped), at most
    /// `grace`. Returns how many were still in flight when it stopped waiting (0: drained).
    /// Clones of the router share the shutdown; calling it again waits again.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.0.closed.store(true, Relaxed);
        self.0.discovery.close();
        if let Some(f) = self.0.plugins.get() {
            f.stop();
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let open = self.0.open.load(Relaxed);
            if open == 0 || tokio::time::Instant::now() >= deadline {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Requests picked and not yet finished, over every service.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.0.open.load(Relaxed)
    }

    /// Services with a service state, sorted.
    #[must_use]
    pub fn services(&self) -> Vec<ServiceKey> {
        let mut v: Vec<ServiceKey> = self.0.states.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether the discovery view is stale (served from a cache), and how old.
    #[must_use]
    pub fn stale(&self) -> Option<Duration> {
        self.0.discovery.stale()
    }
}

/// One service of a [`Router`], looked up once ([`Router::service`]): a request's calls on
/// its service without a lookup each (a gateway makes three to five per request).
#[derive(Debug)]
pub struct ServiceRef<'a> {
    router: &'a Router,
    service: &'a ServiceKey,
    state: Arc<ServiceState>,
}

impl ServiceRef<'_> {
    /// As [`Router::pick`].
    ///
    /// # Errors
    /// As [`Router::pick`].
    pub fn pick(&self, request: &mut PickRequest) -> Result<PickGuard, PickError> {
        let (router, service, state) = (self.router, self.service, &self.state);
        if router.0.closed.load(Relaxed) {
            return Err(PickError::ShutDown);
        }
        state.refresh();
        if let Some(rate) = &state.rate
            && !rate.try_acquire(router.0.clock.now())
        {
            return Err(PickError::RateLimited(service.to_string()));
        }
        let mut refused = None;
        for _ in 0..3 {
            // The target comes with the endpoint list the balancer picked in: nothing to reconcile.
            let Some((target, cell, picked)) = state.balancer().pick_target::<Arc<Target>>(request) else {
                return Err(router.why_empty(service));
            };
            let admission = target.state.breaker.admit(cell.in_flight());
            if !admission.admitted() {
                refused = Some(picked);
                continue;
            }
            let in_flight = state.balancer().tracker().start(cell);
            return Ok(PickGuard::new(
                state,
                target,
                in_flight,
                admission == Admission::Trial,
                &picked,
                request.attempt,
            ));
        }
        // The balancer offered only endpoints whose breakers refused (they opened since the
        // rotation was built): the next endpoint of the rotation, after its last offer, whose
        // breaker admits. Overloaded only when none does.
        if let Some(picked) = refused {
            let published = state.balancer().published();
            let n = u32::try_from(published.len()).unwrap_or(u32::MAX);
            for i in (1..=n).map(|k| (picked.index.wrapping_add(k)) % n) {
                let (Some(target), Some(cell)) = (published.target::<Arc<Target>>(i), published.load(i)) else {
                    continue;
                };
                let admission = target.state.breaker.admit(cell.in_flight());
                if admission.admitted() {
                    let in_flight = state.balancer().tracker().start(Arc::clone(cell));
                    let trial = admission == Admission::Trial;
                    return Ok(PickGuard::new(state, Arc::clone(target), in_flight, trial, &picked, request.attempt));
                }
            }
        }
        Err(PickError::Overloaded(service.to_string()))
    }

    /// As [`Router::pick_avoiding`].
    ///
    /// # Errors
    /// As [`Router::pick`].
    pub fn pick_avoiding(&self, request: &mut PickRequest, avoid: &[SocketAddr]) -> Result<PickGuard, PickError> {
        request.attempt = u32::try_from(avoid.len()).unwrap_or(u32::MAX);
        request.tried.clear();
        request.tried.extend(avoid.iter().map(ToString::to_string));
        let mut guard = self.pick(request)?;
        for _ in 0..3 {
            if !avoid.contains(&guard.addr()) {
                break;
            }
            guard = self.pick(request)?;
        }
        Ok(guard)
    }

    /// As [`Router::retry_allowed`].
    #[must_use]
    pub fn retry_allowed(&self) -> bool {
        self.state.budget.withdraw(self.router.0.clock.now())
    }

    /// As [`Router::retry_plan`].
    #[must_use]
    pub fn retry_plan(&self, retry: u32) -> RetryPlan {
        RetryPlan { attempts: self.state.budget.attempts(), backoff: self.state.budget.backoff(retry) }
    }

    /// As [`Router::count_request`].
    pub fn count_request(&self) {
        self.state.budget.deposit(self.router.0.clock.now());
    }

    /// The registry's instances of the service left out of its picks now, and why (the
    /// explanation of a request, not for every request: it copies the list).
    #[must_use]
    pub fn excluded(&self) -> Vec<crate::explain::Excluded> {
        self.state.excluded()
    }

    /// The name of the balancer plugin of version `version` (a [`PickGuard::version`]),
    /// while it is the active version or the candidate.
    #[must_use]
    pub fn balancer_name(&self, version: u64) -> Option<String> {
        self.state.balancer().version_name(version)
    }
}

/// What a caller that retries does ([`Router::retry_plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPlan {
    /// Attempts per request, the first included (1: no retries).
    pub attempts: u32,
    /// How long to wait before this retry.
    pub backoff: Duration,
}

fn tick_all(inner: &Inner, now: Instant) {
    let states: Vec<Arc<ServiceState>> = inner.states.read().values().cloned().collect();
    for r in states {
        r.tick(now, &inner.probe);
    }
}

/// A wake-up between ticks (a registry change, a failed request): only what it asks for,
/// not the time-driven work of a tick.
fn settle_all(inner: &Inner) {
    let states: Vec<Arc<ServiceState>> = inner.states.read().values().cloned().collect();
    for r in states {
        r.settle();
    }
}

async fn maintain(inner: Weak<Inner>) {
    let mut interval = tokio::time::interval(Duration::from_millis(25));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let Some(wake) = inner.upgrade().map(|i| Arc::clone(&i.wake)) else { return };
    loop {
        let ticked = tokio::select! {
            _ = interval.tick() => true,
            () = wake.notified() => false,
        };
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Relaxed) {
            return;
        }
        // Plugin calls (snapshot updates, health and scheduler calls) may take up to their
        // deadline: they run on a blocking thread, never on the async workers that carry
        // requests and `/metrics`.
        let work = tokio::task::spawn_blocking(move || {
            if ticked {
                tick_all(&inner, inner.clock.now());
            } else {
                settle_all(&inner);
            }
        });
        if work.await.is_err() {
            tracing::error!("the router's maintenance failed; it goes on at the next tick");
        }
    }
}
