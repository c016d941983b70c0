//! The embedding API: [`Router::pick`] chooses an endpoint of a service through the
//! service's balancer slot and returns a [`PickGuard`]; finishing the guard with an
//! [`Outcome`] feeds live load (PeakEWMA, least-request), the circuit breaker, passive health
//! (the health plugin's outlier verdicts) and the scheduler's statistics.
//!
//! What traffic may reach is rebuilt off the pick path, whenever the registry snapshot, a
//! health verdict, an ejection, a breaker or the scheduler's weights change, by the rotation
//! rule (`crate::rotation`): the registry's selected instances, minus those active health
//! checks found down (unless the service's protection threshold would be crossed), minus
//! ejected and open-breaker endpoints (at most `max_ejected_percent` of them), weighted by the
//! scheduler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use sextant_core::{Instance, ServiceKey, ServiceSnapshot, SnapshotHandle};
use sextant_plugin::builtins::{
    Endpoint, EndpointStats, Outcome as PolicyOutcome, ProbeResult, Snapshot, Status, Verdict,
};
use sextant_plugin::{
    BalancerSlot, HealthSlot, Histogram, InFlight, LoadError, PickRequest, PluginHost, PluginKind, PluginSpec,
    SchedulerSlot, SlotStatus, VersionStatus,
};

use crate::health::{HealthCheck, Probe};
use crate::resilience::{
    Admission, Breaker, BreakerConfig, BreakerState, RateLimit, RetryBudget, RetryConfig, TokenBucket,
};
use crate::rotation::{LocalHealth, rotation};

/// Where a router learns the instances of a service.
pub trait Discovery: Send + Sync + 'static {
    /// The snapshot handle of `service` (empty until instances arrive).
    fn handle(&self, service: &ServiceKey) -> SnapshotHandle;

    /// `Some(age)` while the view is served from a cache because no server answers.
    fn stale(&self) -> Option<Duration> {
        None
    }
}

impl<S: sextant_core::store::Store + Clone + Send + Sync + 'static> Discovery for sextant_store::Registry<S> {
    fn handle(&self, service: &ServiceKey) -> SnapshotHandle {
        sextant_store::Registry::handle(self, service)
    }
}

/// Where health verdicts about persistent instances are written (they are marked
/// unhealthy, never deleted). Ephemeral instances are only taken out of local rotation.
pub trait HealthSink: Send + Sync + 'static {
    /// Marks `instance` healthy or unhealthy in the registry.
    fn set_healthy(&self, instance: &Arc<Instance>, healthy: bool);
}

impl<S: sextant_core::store::Store + Clone + Send + Sync + 'static> HealthSink for sextant_store::Registry<S> {
    fn set_healthy(&self, instance: &Arc<Instance>, healthy: bool) {
        let registry = self.clone();
        let mut updated = Instance::clone(instance);
        updated.healthy = healthy;
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        handle.spawn(async move {
            let id = updated.id.clone();
            if let Err(e) = registry.put(sextant_core::Record::Instance(Arc::new(updated)), None).await {
                tracing::warn!(%id, error = %e, "cannot write health verdict");
            }
        });
    }
}

/// How traffic to one service is handled.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The balancer (default: native `peak-ewma`).
    pub balancer: PluginSpec,
    /// The health policy (default: native `standard`: consecutive thresholds on probes,
    /// outlier detection on traffic).
    pub health: PluginSpec,
    /// The scheduler; none keeps the registered weights.
    pub scheduler: Option<PluginSpec>,
    /// How often statistics are cut (and the scheduler called).
    pub window: Duration,
    /// Active health checks; none: passive only.
    pub health_check: Option<HealthCheck>,
    /// Per-endpoint circuit breaker.
    pub breaker: BreakerConfig,
    /// Retries (used by callers that retry, such as the HTTP gateway).
    pub retry: RetryConfig,
    /// Per-service rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Ejected and open-breaker endpoints never exceed this share of the candidates.
    pub max_ejected_percent: u32,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            balancer: PluginSpec::builtin("peak-ewma"),
            health: PluginSpec::builtin("standard"),
            scheduler: None,
            window: Duration::from_secs(1),
            health_check: None,
            breaker: BreakerConfig::default(),
            retry: RetryConfig::default(),
            rate_limit: None,
            max_ejected_percent: 50,
        }
    }
}

/// Why no endpoint was picked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The service has no endpoint traffic may go to.
    #[error("service {0} has no endpoint traffic may go to")]
    NoEndpoints(String),
    /// The service's rate limit is spent.
    #[error("service {0} is over its rate limit")]
    RateLimited(String),
    /// Every endpoint the balancer offered was full or had its breaker open.
    #[error("service {0}: every endpoint offered is at its limit or has its breaker open")]
    Overloaded(String),
    /// The route could not be set up (its plugins failed to start).
    #[error("service {service}: {reason}")]
    Setup {
        /// The service.
        service: String,
        /// What failed.
        reason: String,
    },
}

/// Why [`Router::load`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The route could not be set up.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The plugin was rejected; the active one keeps serving.
    #[error(transparent)]
    Plugin(#[from] LoadError),
    /// The route runs no scheduler to swap.
    #[error("service {0} runs no scheduler")]
    NoScheduler(String),
}

/// How a request ended, reported through [`PickGuard::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this HTTP status (and maybe a `Retry-After`).
    Http {
        /// Status code.
        status: u16,
        /// `Retry-After`, when present.
        retry_after: Option<Duration>,
    },
    /// A non-HTTP request that succeeded.
    Success,
    /// No answer in time.
    Timeout,
    /// Connection refused or reset, or an invalid response.
    Failed(String),
}

impl Outcome {
    /// An HTTP status without `Retry-After`.
    #[must_use]
    pub fn http(status: u16) -> Self {
        Self::Http { status, retry_after: None }
    }

    /// The outcome of an upstream HTTP response: its status, and its `Retry-After` when that
    /// is a number of seconds (an HTTP-date `Retry-After` is ignored).
    #[must_use]
    pub fn from_response<B>(response: &http::Response<B>) -> Self {
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Self::Http { status: response.status().as_u16(), retry_after }
    }

    /// A failure: 5xx, timeouts, broken connections (feeds PeakEWMA's penalty, the breaker
    /// and outlier detection).
    #[must_use]
    pub fn failed(&self) -> bool {
        matches!(self, Self::Http { status: 500..=599, .. } | Self::Timeout | Self::Failed(_))
    }

    /// An overload signal: 429, or 503 with `Retry-After` ("slow down", not "broken").
    #[must_use]
    pub fn overloaded(&self) -> bool {
        matches!(self, Self::Http { status: 429, .. } | Self::Http { status: 503, retry_after: Some(_) })
    }

    fn into_status(self) -> Status {
        match self {
            Self::Http { status, .. } => Status::Http(status),
            Self::Success => Status::Connected,
            Self::Timeout => Status::Timeout,
            Self::Failed(why) => Status::Failed(why),
        }
    }
}

/// Statistics of one window, per endpoint.
#[derive(Debug, Default)]
struct Window {
    requests: AtomicU64,
    errors: AtomicU64,
    overloaded: AtomicU64,
    retry_after_ms: AtomicU64,
    latency: Histogram,
}

/// A closed window, as shown by [`Router::status`].
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct WindowSummary {
    /// Requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Requests completed.
    pub requests: u64,
    /// Failures.
    pub errors: u64,
    /// Overload signals.
    pub overloaded: u64,
}

/// Live state of one endpoint, kept by instance id across snapshots.
#[derive(Debug)]
struct EndpointState {
    breaker: Breaker,
    window: ArcSwap<Window>,
    last: ArcSwap<WindowSummary>,
    joined: Instant,
    probing: AtomicBool,
    next_probe: Mutex<Instant>,
}

/// One endpoint of the published route.
#[derive(Debug)]
struct Target {
    instance: Arc<Instance>,
    addr: SocketAddr,
    state: Arc<EndpointState>,
    /// Index in the health slot's snapshot.
    health_index: u32,
}

/// What picks read: the targets in the balancer's order, tagged with its epoch.
#[derive(Debug, Default)]
struct Published {
    epoch: u64,
    targets: Vec<Arc<Target>>,
    protection: bool,
}

#[derive(Debug)]
struct RouteState {
    registry_revision: u64,
    registry: Arc<ServiceSnapshot>,
    endpoints: HashMap<String, Arc<EndpointState>>,
    /// Health slot snapshot order (every routable instance).
    health_ids: Vec<Arc<Instance>>,
    /// id → index in `health_ids`.
    health_pos: HashMap<String, u32>,
    /// Scheduler snapshot order (the registry's selected instances).
    scheduler_ids: Vec<String>,
    /// Down, ejected, reweighted: what the rotation rule reads besides the registry.
    local: LocalHealth,
    window_started: Instant,
    built: bool,
}

/// One service's route.
pub(crate) struct Route {
    service: ServiceKey,
    config: RouteConfig,
    handle: SnapshotHandle,
    balancer: BalancerSlot,
    health: HealthSlot,
    scheduler: Option<SchedulerSlot>,
    rate: Option<TokenBucket>,
    budget: RetryBudget,
    applied: AtomicU64,
    dirty: AtomicBool,
    published: ArcSwap<Published>,
    state: Mutex<RouteState>,
    sink: Option<Arc<dyn HealthSink>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route").field("service", &self.service).finish_non_exhaustive()
    }
}

fn endpoint_with_weight(i: &Instance, weight: u32) -> Endpoint {
    Endpoint { weight, ..sextant_plugin::endpoint_of(i) }
}

impl Route {
    fn new(
        host: &PluginHost,
        service: ServiceKey,
        config: RouteConfig,
        handle: SnapshotHandle,
        sink: Option<Arc<dyn HealthSink>>,
    ) -> Result<Self, LoadError> {
        let name = service.to_string();
        let now = Instant::now();
        // A configured built-in is the slot's first version (and its native answer when a
        // later plugin faults); a configured wasm plugin is loaded over a native default, so
        // it always has a native answer behind it.
        let first = |spec: &PluginSpec, native: &str| -> (PluginSpec, Option<PluginSpec>) {
            match spec {
                PluginSpec::Builtin { .. } => (spec.clone(), None),
                PluginSpec::Wasm { .. } => (PluginSpec::builtin(native), Some(spec.clone())),
            }
        };
        let (default, over) = first(&config.balancer, "round-robin");
        let balancer = BalancerSlot::new(host, &name, default)?;
        if let Some(spec) = over {
            balancer.load(spec)?;
        }
        let (default, over) = first(&config.health, "standard");
        let health = HealthSlot::new(host, &name, default)?;
        if let Some(spec) = over {
            health.load(spec)?;
        }
        let scheduler = match &config.scheduler {
            Some(spec) => {
                let (default, over) = first(spec, "adaptive");
                let slot = SchedulerSlot::new(host, &name, default)?;
                if let Some(spec) = over {
                    slot.load(spec)?;
                }
                Some(slot)
            }
            None => None,
        };
        let registry = handle.load_full();
        Ok(Self {
            rate: config.rate_limit.map(|l| TokenBucket::new(l, now)),
            budget: RetryBudget::new(config.retry, now),
            service,
            handle,
            balancer,
            health,
            scheduler,
            applied: AtomicU64::new(u64::MAX),
            dirty: AtomicBool::new(true),
            published: ArcSwap::from_pointee(Published::default()),
            state: Mutex::new(RouteState {
                registry_revision: u64::MAX,
                registry,
                endpoints: HashMap::new(),
                health_ids: Vec::new(),
                health_pos: HashMap::new(),
                scheduler_ids: Vec::new(),
                local: LocalHealth::default(),
                window_started: now,
                built: false,
            }),
            sink,
            config,
        })
    }

    /// Rebuilds when the registry moved or local state changed. Picks never wait for a
    /// rebuild someone else is doing, except the very first.
    fn refresh(&self) {
        let revision = self.handle.load().revision.0;
        if revision == self.applied.load(Relaxed) && !self.dirty.load(Relaxed) {
            return;
        }
        let state =
            if self.applied.load(Relaxed) == u64::MAX { Some(self.state.lock()) } else { self.state.try_lock() };
        if let Some(mut state) = state {
            self.rebuild(&mut state, Instant::now());
        }
    }

    fn rebuild(&self, state: &mut RouteState, now: Instant) {
        self.dirty.store(false, Relaxed);
        let registry = self.handle.load_full();
        if registry.revision.0 != state.registry_revision || !state.built {
            self.apply_registry(state, &registry, now);
        }
        let open = |id: &str| state.endpoints.get(id).and_then(|e| e.breaker.open_until());
        let next = rotation(&registry, &state.local, &open, self.config.max_ejected_percent, now);
        let protection = next.protection;
        let mut targets = Vec::with_capacity(next.members.len());
        let mut endpoints = Vec::with_capacity(next.members.len());
        for (i, weight) in next.members {
            let Some(es) = state.endpoints.get(i.id.as_str()) else { continue };
            let Some(&health_index) = state.health_pos.get(i.id.as_str()) else { continue };
            endpoints.push(endpoint_with_weight(i, weight));
            targets.push(Arc::new(Target {
                instance: Arc::clone(i),
                addr: SocketAddr::new(i.ip, i.port),
                state: Arc::clone(es),
                health_index,
            }));
        }
        let snapshot = Snapshot {
            service: self.service.to_string(),
            revision: registry.revision.0,
            endpoints,
            protection_active: protection,
        };
        self.balancer.set_snapshot(snapshot);
        let epoch = self.balancer.route().epoch;
        self.published.store(Arc::new(Published { epoch, targets, protection }));
        self.applied.store(registry.revision.0, Relaxed);
        state.built = true;
    }

    /// A new registry snapshot: endpoint states by id, the health and scheduler snapshots.
    fn apply_registry(&self, state: &mut RouteState, registry: &Arc<ServiceSnapshot>, now: Instant) {
        let routable: Vec<Arc<Instance>> = registry.instances.iter().filter(|i| i.is_routable()).cloned().collect();
        let mut endpoints = HashMap::with_capacity(routable.len());
        for i in &routable {
            let id = i.id.to_string();
            let es = state.endpoints.remove(&id).unwrap_or_else(|| {
                Arc::new(EndpointState {
                    breaker: Breaker::new(self.config.breaker),
                    window: ArcSwap::from_pointee(Window::default()),
                    last: ArcSwap::from_pointee(WindowSummary::default()),
                    joined: now,
                    probing: AtomicBool::new(false),
                    next_probe: Mutex::new(now),
                })
            });
            endpoints.insert(id, es);
        }
        state.endpoints = endpoints;
        let known = &state.endpoints;
        state.local.down.retain(|id| known.contains_key(id));
        state.local.ejected.retain(|id, _| known.contains_key(id));
        state.local.weights.retain(|id, _| known.contains_key(id));
        let model = |list: &mut dyn Iterator<Item = &Arc<Instance>>| Snapshot {
            service: self.service.to_string(),
            revision: registry.revision.0,
            endpoints: list.map(|i| sextant_plugin::endpoint_of(i)).collect(),
            protection_active: registry.protection_active(),
        };
        self.health.set_snapshot(model(&mut routable.iter()));
        state.health_pos = routable
            .iter()
            .enumerate()
            .map(|(n, i)| (i.id.to_string(), u32::try_from(n).unwrap_or(u32::MAX)))
            .collect();
        state.health_ids = routable;
        let selected: Vec<&Arc<Instance>> = registry.selected().collect();
        state.scheduler_ids = selected.iter().map(|i| i.id.to_string()).collect();
        if let Some(s) = &self.scheduler {
            s.set_snapshot(model(&mut selected.into_iter()));
        }
        state.registry = Arc::clone(registry);
        state.registry_revision = registry.revision.0;
    }

    /// Before a new health policy is loaded: hands the health slot the endpoints as this route
    /// sees them (down or ejected here: unhealthy), so the new policy starts from the verdicts
    /// in force rather than from the registry's flags, and can bring an endpoint back.
    fn carry_health(&self) {
        let state = self.state.lock();
        let snapshot = Snapshot {
            service: self.service.to_string(),
            revision: state.registry.revision.0,
            endpoints: state
                .health_ids
                .iter()
                .map(|i| {
                    let mut e = sextant_plugin::endpoint_of(i);
                    let id = i.id.as_str();
                    if state.local.down.contains(id) || state.local.ejected.contains_key(id) {
                        e.healthy = false;
                    }
                    e
                })
                .collect(),
            protection_active: state.registry.protection_active(),
        };
        self.health.set_snapshot(snapshot);
    }

    /// Applies a health verdict about instance `id`.
    fn verdict(&self, id: &str, verdict: Verdict, now: Instant) {
        if verdict == Verdict::Unchanged {
            return;
        }
        let mut state = self.state.lock();
        let Some(&at) = state.health_pos.get(id) else { return };
        let instance = Arc::clone(&state.health_ids[at as usize]);
        tracing::info!(service = %self.service, endpoint = id, ?verdict, "health verdict");
        let changed = match verdict {
            Verdict::Unchanged => false,
            Verdict::Healthy => {
                let was = state.local.down.remove(id) | state.local.ejected.remove(id).is_some();
                if !instance.ephemeral
                    && !instance.healthy
                    && let Some(sink) = &self.sink
                {
                    sink.set_healthy(&instance, true);
                }
                was
            }
            Verdict::Unhealthy => {
                if !instance.ephemeral
                    && instance.healthy
                    && let Some(sink) = &self.sink
                {
                    sink.set_healthy(&instance, false);
                }
                state.local.down.insert(id.to_owned())
            }
            Verdict::Eject(ms) => {
                state.local.ejected.insert(id.to_owned(), (now + Duration::from_millis(ms), now));
                true
            }
        };
        if changed {
            self.rebuild(&mut state, now);
        }
    }

    fn health_index(&self, id: &str) -> Option<u32> {
        self.state.lock().health_pos.get(id).copied()
    }

    /// Time-driven work: ejections and open breakers that ended, windows to cut, probes due.
    fn tick(self: &Arc<Self>, now: Instant, probe: &Probe) {
        let mut state = self.state.lock();
        let mut changed = false;
        let before = state.local.ejected.len();
        state.local.ejected.retain(|_, (until, _)| *until > now);
        changed |= state.local.ejected.len() != before;
        for es in state.endpoints.values() {
            changed |= es.breaker.tick(now);
        }
        if now.saturating_duration_since(state.window_started) >= self.config.window {
            changed |= self.cut_window(&mut state, now);
        }
        if changed || self.dirty.load(Relaxed) || self.handle.load().revision.0 != state.registry_revision {
            self.rebuild(&mut state, now);
        }
        if let Some(check) = &self.config.health_check {
            for instance in &state.health_ids {
                let Some(es) = state.endpoints.get(instance.id.as_str()) else { continue };
                let mut next = es.next_probe.lock();
                if *next > now || es.probing.swap(true, Relaxed) {
                    continue;
                }
                *next = now + check.next_interval();
                let (route, target, state) = (Arc::downgrade(self), Arc::clone(instance), Arc::clone(es));
                probe.spawn(instance, check.clone(), move |result| probe_done(&route, &target, &state, result));
            }
        }
    }

    /// Closes the statistics window; asks the scheduler for weights. True when they changed.
    fn cut_window(&self, state: &mut RouteState, now: Instant) -> bool {
        let secs = now.saturating_duration_since(state.window_started).as_secs_f64().max(1e-3);
        state.window_started = now;
        let mut stats = HashMap::with_capacity(state.endpoints.len());
        for (id, es) in &state.endpoints {
            let w = es.window.swap(Arc::new(Window::default()));
            let requests = w.requests.load(Relaxed);
            #[allow(clippy::cast_precision_loss)]
            let summary = WindowSummary {
                rps: requests as f64 / secs,
                p50_ms: w.latency.quantile(0.5) as f64 / 1e6,
                p99_ms: w.latency.quantile(0.99) as f64 / 1e6,
                requests,
                errors: w.errors.load(Relaxed),
                overloaded: w.overloaded.load(Relaxed),
            };
            es.last.store(Arc::new(summary));
            let retry_after = w.retry_after_ms.load(Relaxed);
            stats.insert(
                id.clone(),
                EndpointStats {
                    rps: summary.rps,
                    latency_p50: w.latency.quantile(0.5),
                    latency_p99: w.latency.quantile(0.99),
                    requests,
                    errors: summary.errors,
                    overloaded: summary.overloaded,
                    retry_after_ms: (retry_after > 0).then_some(retry_after),
                    age_ms: u64::try_from(now.saturating_duration_since(es.joined).as_millis()).unwrap_or(u64::MAX),
                },
            );
        }
        let Some(scheduler) = &self.scheduler else { return false };
        let ordered: Vec<EndpointStats> =
            state.scheduler_ids.iter().map(|id| stats.remove(id).unwrap_or_default()).collect();
        let weights = scheduler.schedule(&ordered);
        let weights: HashMap<String, u32> = state.scheduler_ids.iter().cloned().zip(weights).collect();
        if weights == state.local.weights {
            return false;
        }
        state.local.weights = weights;
        true
    }
}

/// The router: one route per service, created on first use.
#[derive(Clone)]
pub struct Router(Arc<Inner>);

struct Inner {
    host: PluginHost,
    discovery: Arc<dyn Discovery>,
    sink: Option<Arc<dyn HealthSink>>,
    /// The configuration of services without one of their own ([`Router::set_default`]
    /// changes its plugins).
    defaults: RwLock<RouteConfig>,
    overrides: RwLock<HashMap<ServiceKey, RouteConfig>>,
    routes: RwLock<HashMap<ServiceKey, Arc<Route>>>,
    probe: Probe,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("routes", &self.0.routes.read().len()).finish_non_exhaustive()
    }
}

impl Router {
    /// A router reading `discovery`, with `defaults` for every service. Spawns its
    /// maintenance task (ejections, breakers, windows, scheduler, probes) on the current
    /// tokio runtime; it ends when the last clone of the router is dropped.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn new(host: PluginHost, discovery: Arc<dyn Discovery>, defaults: RouteConfig) -> Self {
        Self::build(host, discovery, None, defaults)
    }

    /// Like [`Router::new`], also writing health verdicts about persistent instances to
    /// `sink` (the local registry).
    #[must_use]
    pub fn with_sink(
        host: PluginHost,
        discovery: Arc<dyn Discovery>,
        sink: Arc<dyn HealthSink>,
        defaults: RouteConfig,
    ) -> Self {
        Self::build(host, discovery, Some(sink), defaults)
    }

    fn build(
        host: PluginHost,
        discovery: Arc<dyn Discovery>,
        sink: Option<Arc<dyn HealthSink>>,
        defaults: RouteConfig,
    ) -> Self {
        let inner = Arc::new(Inner {
            host,
            discovery,
            sink,
            defaults: RwLock::new(defaults),
            overrides: RwLock::default(),
            routes: RwLock::default(),
            probe: Probe::new(),
        });
        tokio::spawn(maintain(Arc::downgrade(&inner)));
        Self(inner)
    }

    /// The plugin host (compile wasm plugins with it before [`Router::load`]).
    #[must_use]
    pub fn host(&self) -> &PluginHost {
        &self.0.host
    }

    /// Sets `service`'s configuration (replacing its route, so live state starts over).
    pub fn configure(&self, service: ServiceKey, config: RouteConfig) {
        self.0.routes.write().remove(&service);
        self.0.overrides.write().insert(service, config);
    }

    fn route(&self, service: &ServiceKey) -> Result<Arc<Route>, RouteError> {
        if let Some(r) = self.0.routes.read().get(service) {
            return Ok(Arc::clone(r));
        }
        let mut routes = self.0.routes.write();
        if let Some(r) = routes.get(service) {
            return Ok(Arc::clone(r));
        }
        let config = self.0.overrides.read().get(service).cloned().unwrap_or_else(|| self.0.defaults.read().clone());
        let handle = self.0.discovery.handle(service);
        let route = Route::new(&self.0.host, service.clone(), config, handle, self.0.sink.clone())
            .map_err(|e| RouteError::Setup { service: service.to_string(), reason: e.to_string() })?;
        let route = Arc::new(route);
        routes.insert(service.clone(), Arc::clone(&route));
        Ok(route)
    }

    /// Picks an endpoint of `service` for a request. Endpoints that are full or whose
    /// breaker refuses are skipped (three tries).
    ///
    /// # Errors
    /// No endpoint, rate limit spent, every offered endpoint refused, route set-up failed.
    pub fn pick(&self, service: &ServiceKey, request: &mut PickRequest) -> Result<PickGuard, RouteError> {
        let route = self.route(service)?;
        route.refresh();
        if let Some(rate) = &route.rate
            && !rate.try_acquire(Instant::now())
        {
            return Err(RouteError::RateLimited(service.to_string()));
        }
        for _ in 0..3 {
            let picked = route.balancer.pick_with(request, |snap, p| {
                let published = route.published.load();
                let target = if published.epoch == snap.epoch {
                    published.targets.get(p.index as usize).cloned()
                } else {
                    let id = snap.model.endpoints.get(p.index as usize).map(|e| e.id.as_str());
                    id.and_then(|id| {
                        published
                            .targets
                            .binary_search_by(|t| t.instance.id.as_str().cmp(id))
                            .ok()
                            .map(|at| Arc::clone(&published.targets[at]))
                    })
                };
                (target, snap.load(p.index).cloned(), p)
            });
            let Some((target, cell, picked)) = picked else {
                return Err(RouteError::NoEndpoints(service.to_string()));
            };
            let (Some(target), Some(cell)) = (target, cell) else { continue };
            let admission = target.state.breaker.admit(cell.in_flight());
            if !admission.admitted() {
                continue;
            }
            let in_flight = route.balancer.tracker().start(cell);
            return Ok(PickGuard {
                route: Arc::clone(&route),
                target,
                in_flight: Some(in_flight),
                started: Instant::now(),
                trial: admission == Admission::Trial,
                version: picked.version,
                fallback: picked.fallback,
            });
        }
        Err(RouteError::Overloaded(service.to_string()))
    }

    /// Like [`Router::pick`], preferring an endpoint not in `avoid` (those a retry already
    /// tried): up to three more picks while the balancer offers one of them, then its last
    /// offer (a service whose every endpoint was tried still answers). The balancer decides
    /// each offer, so a random one may offer an avoided endpoint four times running.
    ///
    /// # Errors
    /// As [`Router::pick`].
    pub fn pick_avoiding(
        &self,
        service: &ServiceKey,
        request: &mut PickRequest,
        avoid: &[SocketAddr],
    ) -> Result<PickGuard, RouteError> {
        let mut guard = self.pick(service, request)?;
        for _ in 0..3 {
            if !avoid.contains(&guard.addr()) {
                break;
            }
            guard = self.pick(service, request)?;
        }
        Ok(guard)
    }

    /// Takes a retry from `service`'s budget; false when it is spent.
    #[must_use]
    pub fn retry_allowed(&self, service: &ServiceKey) -> bool {
        self.route(service).is_ok_and(|r| r.budget.withdraw(Instant::now()))
    }

    /// The backoff before retry number `retry` of `service` and its configured attempts.
    #[must_use]
    pub fn retry_plan(&self, service: &ServiceKey, retry: u32) -> (u32, Duration) {
        self.route(service).map_or((1, Duration::ZERO), |r| (r.budget.attempts(), r.budget.backoff(retry)))
    }

    /// Counts a request in `service`'s retry budget (call once per request, not per attempt).
    pub fn count_request(&self, service: &ServiceKey) {
        if let Ok(r) = self.route(service) {
            r.budget.deposit(Instant::now());
        }
    }

    /// Loads a plugin into `service`'s slot of `kind` (hot swap: in-flight picks finish on
    /// the old version, nothing is dropped). Nothing changes when it fails.
    ///
    /// # Errors
    /// What is wrong with the plugin; a scheduler slot on a route configured without one.
    pub fn load(&self, service: &ServiceKey, kind: PluginKind, spec: PluginSpec) -> Result<VersionStatus, SwapError> {
        let route = self.route(service)?;
        Ok(match kind {
            PluginKind::Balancer => route.balancer.load(spec)?,
            PluginKind::Health => {
                route.carry_health();
                route.health.load(spec)?
            }
            PluginKind::Scheduler => match &route.scheduler {
                Some(s) => s.load(spec)?,
                None => return Err(SwapError::NoScheduler(service.to_string())),
            },
        })
    }

    /// Compiles a wasm component on a blocking thread (never on the async worker that calls
    /// it), then loads it as [`Router::load`] does.
    ///
    /// # Errors
    /// What is wrong with the component or its configuration; a scheduler slot on a route
    /// configured without one. Nothing changes when it fails.
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
    /// into the routes that exist (a scheduler into a route that ran none restarts that route,
    /// so its live state starts over). It is checked first (a self-test on a synthetic
    /// snapshot): a plugin that fails changes nothing. Returns the routes that refused it;
    /// they keep the plugin they ran.
    ///
    /// # Errors
    /// What is wrong with the plugin.
    pub fn set_default(&self, kind: PluginKind, spec: &PluginSpec) -> Result<Vec<(ServiceKey, SwapError)>, LoadError> {
        let probe = "default/default/probe";
        match kind {
            PluginKind::Balancer => {
                BalancerSlot::new(&self.0.host, probe, PluginSpec::builtin("round-robin"))?.load(spec.clone())?;
            }
            PluginKind::Health => {
                HealthSlot::new(&self.0.host, probe, PluginSpec::builtin("standard"))?.load(spec.clone())?;
            }
            PluginKind::Scheduler => {
                SchedulerSlot::new(&self.0.host, probe, PluginSpec::builtin("adaptive"))?.load(spec.clone())?;
            }
        }
        {
            let mut defaults = self.0.defaults.write();
            match kind {
                PluginKind::Balancer => defaults.balancer = spec.clone(),
                PluginKind::Health => defaults.health = spec.clone(),
                PluginKind::Scheduler => defaults.scheduler = Some(spec.clone()),
            }
        }
        let overrides = self.0.overrides.read().keys().cloned().collect::<std::collections::HashSet<_>>();
        let routes: Vec<(ServiceKey, Arc<Route>)> = self
            .0
            .routes
            .read()
            .iter()
            .filter(|(s, _)| !overrides.contains(*s))
            .map(|(s, r)| (s.clone(), Arc::clone(r)))
            .collect();
        let mut refused = Vec::new();
        for (service, route) in routes {
            if kind == PluginKind::Scheduler && route.scheduler.is_none() {
                self.0.routes.write().remove(&service);
                continue;
            }
            if let Err(e) = self.load(&service, kind, spec.clone()) {
                refused.push((service, e));
            }
        }
        Ok(refused)
    }

    /// Runs the time-driven work now (the maintenance task does it every 25 ms).
    pub fn tick(&self) {
        tick_all(&self.0, Instant::now());
    }

    /// Services with a route, sorted.
    #[must_use]
    pub fn services(&self) -> Vec<ServiceKey> {
        let mut v: Vec<ServiceKey> = self.0.routes.read().keys().cloned().collect();
        v.sort();
        v
    }

    /// Whether the discovery view is stale (served from a cache), and how old.
    #[must_use]
    pub fn stale(&self) -> Option<Duration> {
        self.0.discovery.stale()
    }

    /// What `service`'s route looks like now.
    #[must_use]
    pub fn status(&self, service: &ServiceKey) -> Option<RouteStatus> {
        let route = Arc::clone(self.0.routes.read().get(service)?);
        route.refresh();
        let published = route.published.load_full();
        let snap = route.balancer.route();
        let routed: HashMap<&str, usize> =
            snap.model.endpoints.iter().enumerate().map(|(n, e)| (e.id.as_str(), n)).collect();
        let state = route.state.lock();
        let now = Instant::now();
        let endpoints = state
            .health_ids
            .iter()
            .map(|i| {
                let id = i.id.as_str();
                let es = state.endpoints.get(id);
                let at = routed.get(id).copied();
                let health = if at.is_some() {
                    "up"
                } else if state.local.down.contains(id) || !i.healthy {
                    "down"
                } else if state.local.ejected.get(id).is_some_and(|(u, _)| *u > now) {
                    "ejected"
                } else if es.is_some_and(|e| e.breaker.state() == BreakerState::Open) {
                    "open"
                } else {
                    "out"
                };
                let cell = at.and_then(|n| snap.load(u32::try_from(n).ok()?));
                #[allow(clippy::cast_precision_loss)]
                let latency_ewma_ms = cell.map_or(0.0, |c| c.latency_ewma() as f64 / 1e6);
                EndpointStatus {
                    id: id.to_owned(),
                    address: SocketAddr::new(i.ip, i.port).to_string(),
                    weight: at.map_or(0, |n| snap.model.endpoints[n].weight),
                    health,
                    breaker: es.map_or(BreakerState::Closed, |e| e.breaker.state()),
                    in_flight: cell.map_or(0, |c| c.in_flight()),
                    latency_ewma_ms,
                    last: es.map(|e| **e.last.load()).unwrap_or_default(),
                }
            })
            .collect();
        Some(RouteStatus {
            service: service.to_string(),
            protection: published.protection,
            balancer: route.balancer.status(),
            health: route.health.status(),
            scheduler: route.scheduler.as_ref().map(SchedulerSlot::status),
            endpoints,
        })
    }
}

/// A route as shown by [`Router::status`].
#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    /// `namespace/group/name`.
    pub service: String,
    /// Whether protection (threshold or ejection cap) keeps endpoints in rotation.
    pub protection: bool,
    /// The balancer slot.
    pub balancer: SlotStatus,
    /// The health slot.
    pub health: SlotStatus,
    /// The scheduler slot, if any.
    pub scheduler: Option<SlotStatus>,
    /// Every routable instance.
    pub endpoints: Vec<EndpointStatus>,
}

/// One endpoint as shown by [`Router::status`].
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    /// Instance id.
    pub id: String,
    /// `ip:port`.
    pub address: String,
    /// Effective weight in rotation (0: out).
    pub weight: u32,
    /// `up`, `down` (active checks or registry), `ejected`, `open` (breaker), `out`.
    pub health: &'static str,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Requests in flight.
    pub in_flight: u32,
    /// Peak EWMA latency, ms.
    pub latency_ewma_ms: f64,
    /// The last closed window.
    pub last: WindowSummary,
}

fn tick_all(inner: &Inner, now: Instant) {
    let routes: Vec<Arc<Route>> = inner.routes.read().values().cloned().collect();
    for r in routes {
        r.tick(now, &inner.probe);
    }
}

async fn maintain(inner: Weak<Inner>) {
    let mut interval = tokio::time::interval(Duration::from_millis(25));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        tick_all(&inner, Instant::now());
    }
}

/// An endpoint picked for one request. Finish it with the outcome; dropping it unfinished
/// counts as a cancelled request (in-flight released, nothing recorded).
#[derive(Debug)]
pub struct PickGuard {
    route: Arc<Route>,
    target: Arc<Target>,
    in_flight: Option<InFlight>,
    started: Instant,
    trial: bool,
    version: u64,
    fallback: bool,
}

impl PickGuard {
    /// The endpoint's address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.target.addr
    }

    /// The instance picked.
    #[must_use]
    pub fn instance(&self) -> &Arc<Instance> {
        &self.target.instance
    }

    /// The balancer version that answered.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the native fallback answered because the plugin faulted.
    #[must_use]
    pub fn fallback(&self) -> bool {
        self.fallback
    }

    /// Reports how the request ended; its latency is the time since the pick (call it when
    /// the response is complete: at the end of its body, not at its headers, when the body
    /// is what the balancer should weigh). A guard dropped without `finish` releases its
    /// in-flight place and reports nothing.
    pub fn finish(self, outcome: Outcome) {
        let latency = self.started.elapsed();
        self.finish_with_latency(outcome, latency);
    }

    /// Reports how the request ended with a latency the caller measured (a gateway that times
    /// its upstream exchange itself, or replays outcomes).
    pub fn finish_with_latency(mut self, outcome: Outcome, latency: Duration) {
        let now = Instant::now();
        let failed = outcome.failed();
        if let Some(f) = self.in_flight.take() {
            f.finish_after(latency, failed);
        }
        let es = &self.target.state;
        let w = es.window.load();
        w.requests.fetch_add(1, Relaxed);
        w.latency.record(latency);
        let overloaded = outcome.overloaded();
        if overloaded {
            w.overloaded.fetch_add(1, Relaxed);
            if let Outcome::Http { retry_after: Some(after), .. } = &outcome {
                w.retry_after_ms.fetch_max(u64::try_from(after.as_millis()).unwrap_or(u64::MAX), Relaxed);
            }
        } else if failed {
            w.errors.fetch_add(1, Relaxed);
        }
        drop(w);
        let route = &self.route;
        if es.breaker.record(!failed, self.trial, now) {
            route.dirty.store(true, Relaxed);
            route.refresh();
        }
        self.trial = false;
        let verdict = route.health.on_outcome(&PolicyOutcome {
            endpoint: self.target.health_index,
            status: outcome.into_status(),
            latency: u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
        });
        route.verdict(self.target.instance.id.as_str(), verdict, now);
    }
}

impl Drop for PickGuard {
    fn drop(&mut self) {
        if let Some(f) = self.in_flight.take() {
            f.finish_after(self.started.elapsed(), false);
        }
        if self.trial {
            self.target.state.breaker.release_trial();
        }
    }
}

/// A probe's result, handed back by the prober.
fn probe_done(route: &Weak<Route>, instance: &Instance, state: &EndpointState, mut result: ProbeResult) {
    state.probing.store(false, Relaxed);
    let Some(route) = route.upgrade() else { return };
    let id = instance.id.as_str();
    let Some(index) = route.health_index(id) else { return };
    result.endpoint = index;
    let verdict = route.health.on_probe(&result);
    route.verdict(id, verdict, Instant::now());
}
