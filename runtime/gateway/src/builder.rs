//! Building a [`Router`]: its defaults, per-service configurations, health sink, and what it
//! does with the remote servers' plugin records (followed by default, through a
//! [`PluginFollower`] the builder starts; [`keep_reported`] when the router registers itself).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use sextant_core::{Instance, ServiceKey};
use sextant_plugin::PluginHost;

use crate::clock::{Clock, SystemClock};
use crate::discovery::{Discovery, HealthSink};
use crate::follow::{FollowOptions, PluginFollower, ReportExtras, keep_reported};
use crate::router::Router;
use crate::service::ServicePolicy;

/// Builds a [`Router`] ([`Router::builder`]).
pub struct RouterBuilder {
    host: PluginHost,
    discovery: Arc<dyn Discovery>,
    sink: Option<Arc<dyn HealthSink>>,
    defaults: ServicePolicy,
    services: HashMap<ServiceKey, ServicePolicy>,
    follow_records: bool,
    plugin_cache: Option<PathBuf>,
    reporting_as: Option<String>,
    register: Option<Instance>,
    clock: Arc<dyn Clock>,
    maintained: bool,
    zone: Option<String>,
}

impl std::fmt::Debug for RouterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("defaults", &self.defaults)
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .field("sink", &self.sink.is_some())
            .field("follow_records", &self.follow_records)
            .field("register", &self.register.as_ref().map(Instance::key))
            .finish_non_exhaustive()
    }
}

impl RouterBuilder {
    /// The configuration of every service without one of its own (default:
    /// [`ServicePolicy::default`]).
    #[must_use]
    pub fn defaults(mut self, defaults: ServicePolicy) -> Self {
        self.defaults = defaults;
        self
    }

    /// `service`'s own configuration (as [`Router::configure`] sets it later).
    #[must_use]
    pub fn service(mut self, service: ServiceKey, config: ServicePolicy) -> Self {
        self.services.insert(service, config);
        self
    }

    /// Writes health verdicts about persistent instances to `sink` (the local registry):
    /// they are marked unhealthy there, never deleted. Without a sink, verdicts only take
    /// endpoints out of this router's rotation.
    #[must_use]
    pub fn health_sink(mut self, sink: Arc<dyn HealthSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// The zone this router runs in (as `sextant gateway --zone`): what every plugin's
    /// `host.local-zone` answers (it is the plugin host's, `PluginHost::set_zone`: a host
    /// shared by several routers has one zone), what the `locality` scheduler keeps traffic
    /// in, and the `local` label of the attempts metric. Not checked here: a gateway checks
    /// its `--zone` with [`sextant_plugin::builtins::zone_name_error`].
    #[must_use]
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Runs each service's configured plugins only, whatever the servers' plugin records
    /// bind. By default a router whose discovery follows remote servers
    /// ([`Discovery::plugin_records`]: a [`RemoteDiscovery`](crate::RemoteDiscovery)) follows
    /// their plugin records too, as `sextant gateway` does: what `sextant plugin load --bind`
    /// binds to a service this router serves is fetched, compiled and swapped in, a rollback
    /// or a delete follows, and a version this router rolls back on its own is reported to
    /// the control plane ([`PluginFollower`]).
    #[must_use]
    pub fn ignore_plugin_records(mut self) -> Self {
        self.follow_records = false;
        self
    }

    /// Keeps the components fetched for plugin records in `dir` (by sha256), so a restart
    /// with no server reachable comes up on them (default: memory only).
    #[must_use]
    pub fn plugin_cache(mut self, dir: PathBuf) -> Self {
        self.plugin_cache = Some(dir);
        self
    }

    /// Who this host is in the plugin faults it reports to the control plane (which counts
    /// them per host). Default: the key of [`RouterBuilder::register_as`]'s instance, else
    /// `embedded/PID/START` (unique to the process).
    #[must_use]
    pub fn reporting_as(mut self, host: String) -> Self {
        self.reporting_as = Some(host);
        self
    }

    /// Registers `instance` with the servers (bound to the connection: it goes when this
    /// process does) and keeps what this router runs in its metadata, as `sextant gateway`
    /// does ([`keep_reported`]): `sextant plugin list` then counts this host among those
    /// running, refusing or falling back from each plugin version. Only with a discovery that
    /// follows remote servers and plugin records followed.
    #[must_use]
    pub fn register_as(mut self, instance: Instance) -> Self {
        self.register = Some(instance);
        self
    }

    /// Runs the router on `clock` (default: the system's). With a [`ManualClock`](crate::ManualClock)
    /// time moves only when the clock is advanced, and the time-driven work (ejections
    /// ending, breakers half-opening, windows, the scheduler) happens at
    /// [`Router::tick`]: a test or a simulator drives the real router without waiting.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// No maintenance task: the time-driven work and the work a registry change or a failed
    /// request asks for happen only at [`Router::tick`] (and a pick applies a registry change
    /// it sees). With a [`ManualClock`](crate::ManualClock), a single thread drives the whole
    /// router, deterministically: what the strategy simulator does. Such a router needs no
    /// tokio runtime unless it follows remote servers, and sends no load probes itself: the
    /// caller takes them ([`Router::take_load_probes`]) and answers them
    /// ([`Router::record_load`]).
    #[must_use]
    pub fn ticked_by_caller(mut self) -> Self {
        self.maintained = false;
        self
    }

    /// The router. Spawns its maintenance task (ejections, breakers, windows, scheduler,
    /// probes every 25 ms) on the current tokio runtime; it ends at [`Router::shutdown`] or
    /// when the last clone of the router is dropped. A service's state is set up on its
    /// first pick (or [`Router::load`]). With a discovery that follows remote servers, also
    /// starts following their plugin records (unless
    /// [`RouterBuilder::ignore_plugin_records`]) for the services configured here and every
    /// service whose state is set up later; a pick before a bound plugin arrives is answered
    /// by the service's configured balancer.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn build(self) -> Router {
        if let Some(zone) = &self.zone {
            self.host.set_zone(zone);
        }
        let (discovery, configured) = (Arc::clone(&self.discovery), self.services.keys().cloned().collect());
        let router = Router::assemble(
            self.host,
            self.discovery,
            self.sink,
            self.defaults.clone(),
            self.services,
            self.clock,
            self.maintained,
        );
        if let Some(client) = self.follow_records.then(|| discovery.plugin_records()).flatten() {
            let host = self
                .reporting_as
                .or_else(|| self.register.as_ref().map(|i| i.key().to_string()))
                .unwrap_or_else(embedded_host_name);
            let mut services: Vec<ServiceKey> = configured;
            services.sort();
            let options = FollowOptions { services, defaults: self.defaults, cache_dir: self.plugin_cache, host };
            let follower = Arc::new(PluginFollower::start(&router, client.clone(), options));
            if let Some(me) = self.register {
                tokio::spawn(keep_reported(Arc::downgrade(&follower), client, me, ReportExtras::default()));
            }
            router.set_watcher(follower);
        }
        router
    }
}

impl Router {
    /// A router reading `discovery`, with `defaults` for every service: shorthand for
    /// `Router::builder(host, discovery).defaults(defaults).build()`.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    #[must_use]
    pub fn new(host: PluginHost, discovery: Arc<dyn Discovery>, defaults: ServicePolicy) -> Self {
        Self::builder(host, discovery).defaults(defaults).build()
    }

    /// A router to configure: defaults, per-service configurations, a health sink.
    #[must_use]
    pub fn builder(host: PluginHost, discovery: Arc<dyn Discovery>) -> RouterBuilder {
        RouterBuilder {
            host,
            discovery,
            sink: None,
            defaults: ServicePolicy::default(),
            services: HashMap::new(),
            follow_records: true,
            plugin_cache: None,
            reporting_as: None,
            register: None,
            clock: Arc::new(SystemClock),
            maintained: true,
            zone: None,
        }
    }

    /// The follower of the remote servers' plugin records this router runs (none on a local
    /// registry, or when built with [`RouterBuilder::ignore_plugin_records`]): what each
    /// service runs here ([`PluginFollower::activations`]), the report a host publishes
    /// ([`PluginFollower::report`]), the services followed ([`PluginFollower::set_services`]).
    #[must_use]
    pub fn plugins(&self) -> Option<Arc<PluginFollower>> {
        self.watcher()?.as_any().downcast::<PluginFollower>().ok()
    }
}

/// The name a router's follower reports faults under when it was given none: unique to the
/// process.
fn embedded_host_name() -> String {
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("embedded/{}/{started:x}", std::process::id())
}
