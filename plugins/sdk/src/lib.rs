//! The sextant plugin SDK: a plugin is one `lib.rs`.
//!
//! ```no_run
//! use sextant_plugin_sdk::{Balancer, Env, Mode, Request, Snapshot};
//!
//! struct First;
//! impl Balancer for First {
//!     fn update(&mut self, _s: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> { Ok(Mode::PerRequest) }
//!     fn pick(&mut self, _r: &Request, _env: &mut dyn Env) -> Option<u32> { Some(0) }
//! }
//! sextant_plugin_sdk::export_balancer!(|_config: &str| Ok(First));
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`) and
//! load the `.wasm` with `sextant plugin load`.
//!
//! The component speaks `sextant:plugin@0.2.3`: one instance per worker thread of the host
//! serves every service the plugin is bound to, each service as a resource holding its own
//! `First` (made by the factory, from the configuration `init` checked).
//!
//! Plugins get a deterministic WASI subset (docs/plugins.md §5): no environment, output to
//! the host log, the host's clocks, and random numbers from the instance's seeded generator
//! (so `std::collections::HashMap::new()` works, and a seeded run repeats); no files,
//! sockets or HTTP. [`Env`] reaches the same time and random numbers without WASI, plus the
//! live load of the endpoints. The guide for plugin authors, in every language, is
//! `docs/plugins.md`. The SDK owns the `wit-bindgen` bindings of the
//! three worlds in `wit/` (balancer, health, scheduler), the conversions between the WIT
//! records and the plain Rust model of `sextant-builtins`, and the [`Env`] that reaches the
//! host imports. The policy traits are the same ones the host runs natively, so a built-in is
//! written once and runs in both places.
#![deny(missing_docs)]

pub use sextant_builtins::{
    Balancer, Endpoint, EndpointStats, Env, HealthPolicy, Level, Mode, Outcome, ProbeResult, Request, RingPoint,
    Scheduler, Snapshot, Status, Table, Verdict,
};

/// Bindings of the `balancer-plugin` world.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod balancer_world {
    wit_bindgen::generate!({
        world: "balancer-plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_balancer_world",
        default_bindings_module: "::sextant_plugin_sdk::balancer_world",
    });
}

/// Bindings of the `health-plugin` world.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod health_world {
    wit_bindgen::generate!({
        world: "health-plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_health_world",
        default_bindings_module: "::sextant_plugin_sdk::health_world",
    });
}

/// Bindings of the `scheduler-plugin` world.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod scheduler_world {
    wit_bindgen::generate!({
        world: "scheduler-plugin",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_scheduler_world",
        default_bindings_module: "::sextant_plugin_sdk::scheduler_world",
    });
}

/// Conversions and environments for one world's generated `types` and `host` modules.
macro_rules! world_glue {
    ($world:ident) => {
        impl $world::sextant::plugin::types::Snapshot {
            /// Moves the WIT snapshot into the plain model.
            pub fn into_model(self) -> Snapshot {
                Snapshot {
                    service: self.service,
                    revision: self.revision,
                    protection_active: self.protection_active,
                    endpoints: self
                        .endpoints
                        .into_iter()
                        .map(|e| Endpoint {
                            id: e.id,
                            address: e.address,
                            weight: e.weight,
                            healthy: e.healthy,
                            zone: e.zone,
                            version: e.version,
                            metadata: e.metadata,
                        })
                        .collect(),
                }
            }
        }

        impl From<Level> for $world::sextant::plugin::host::Level {
            fn from(l: Level) -> Self {
                match l {
                    Level::Trace => Self::Trace,
                    Level::Debug => Self::Debug,
                    Level::Info => Self::Info,
                    Level::Warn => Self::Warn,
                    Level::Error => Self::Error,
                }
            }
        }
    };
}

world_glue!(balancer_world);
world_glue!(health_world);
world_glue!(scheduler_world);

/// The instance's random numbers: one draw from the host seeds a local generator (a
/// component instance is single-threaded; the lock is never contended).
static LOCAL_RANDOM: std::sync::Mutex<sextant_builtins::LocalRandom> =
    std::sync::Mutex::new(sextant_builtins::LocalRandom::new());

fn local_random(seed: fn() -> u64) -> u64 {
    match LOCAL_RANDOM.lock() {
        Ok(mut r) => r.next(seed),
        // Poisoned only if a pick panicked mid-draw, which traps the instance anyway.
        Err(_) => seed(),
    }
}

/// The environment of a balancer inside wasm: load reads are host imports (`pair` reads
/// two endpoints in one); random numbers come from a local generator seeded by the host.
#[derive(Debug, Default)]
pub struct BalancerEnv;

impl Env for BalancerEnv {
    fn random(&mut self) -> u64 {
        local_random(balancer_world::sextant::plugin::host::random)
    }
    fn state(&self, endpoint: u32) -> sextant_builtins::EndpointState {
        state(balancer_world::sextant::plugin::load::state(endpoint))
    }
    fn pair(&self, a: u32, b: u32) -> (sextant_builtins::EndpointState, sextant_builtins::EndpointState) {
        let (x, y) = balancer_world::sextant::plugin::load::pair(a, b);
        (state(x), state(y))
    }
    fn now(&self) -> u64 {
        balancer_world::sextant::plugin::host::monotonic_now()
    }
    fn log(&self, level: Level, message: &str) {
        balancer_world::sextant::plugin::host::log(level.into(), message);
    }
    fn in_flight(&self, endpoint: u32) -> u32 {
        balancer_world::sextant::plugin::load::in_flight(endpoint)
    }
    fn latency_ewma(&self, endpoint: u32) -> u64 {
        balancer_world::sextant::plugin::load::latency_ewma(endpoint)
    }
    fn recent_errors(&self, endpoint: u32) -> u32 {
        balancer_world::sextant::plugin::load::recent_errors(endpoint)
    }
    fn total_in_flight(&self) -> u64 {
        balancer_world::sextant::plugin::load::total_in_flight()
    }
    fn request_header(&self, name: &str) -> Option<String> {
        balancer_world::sextant::plugin::load::request_header(name)
    }
    fn attempt(&self) -> u32 {
        balancer_world::sextant::plugin::load::request_attempt()
    }
    fn tried(&self) -> Vec<u32> {
        balancer_world::sextant::plugin::load::request_tried()
    }
    fn local_zone(&self) -> String {
        balancer_world::sextant::plugin::host::local_zone()
    }
    fn report(&self, endpoint: u32) -> Option<sextant_builtins::report::BackendReport> {
        balancer_world::sextant::plugin::load::report(endpoint).map(|r| sextant_builtins::report::BackendReport {
            utilization: r.utilization,
            rps: r.rps,
            eps: r.eps,
            named: r.named,
            age_ms: r.age_ms,
        })
    }
    fn probe(&mut self, endpoint: u32) {
        balancer_world::sextant::plugin::load::probe(endpoint);
    }
}

fn state(s: balancer_world::sextant::plugin::load::EndpointState) -> sextant_builtins::EndpointState {
    sextant_builtins::EndpointState {
        in_flight: s.in_flight,
        latency_ewma: s.latency_ewma,
        recent_errors: s.recent_errors,
    }
}

/// Health and scheduler plugins see the host interface only: load reads as zero.
macro_rules! policy_env {
    ($name:ident, $world:ident) => {
        /// The environment of this plugin kind inside wasm (no live load).
        #[derive(Debug, Default)]
        pub struct $name;

        impl Env for $name {
            fn random(&mut self) -> u64 {
                local_random($world::sextant::plugin::host::random)
            }
            fn now(&self) -> u64 {
                $world::sextant::plugin::host::monotonic_now()
            }
            fn log(&self, level: Level, message: &str) {
                $world::sextant::plugin::host::log(level.into(), message);
            }
            fn in_flight(&self, _endpoint: u32) -> u32 {
                0
            }
            fn latency_ewma(&self, _endpoint: u32) -> u64 {
                0
            }
            fn recent_errors(&self, _endpoint: u32) -> u32 {
                0
            }
            fn total_in_flight(&self) -> u64 {
                0
            }
            fn request_header(&self, _name: &str) -> Option<String> {
                None
            }
            fn local_zone(&self) -> String {
                $world::sextant::plugin::host::local_zone()
            }
        }
    };
}

policy_env!(HealthEnv, health_world);
policy_env!(SchedulerEnv, scheduler_world);

/// A policy from a plugin's configuration (what the export macros are given, boxed).
type Make<T> = fn(&str) -> Result<Box<T>, String>;

/// What a plugin's `init` received and the factory its resources are made with (a component
/// instance is single-threaded: thread-locals are per instance).
struct Factory<T: ?Sized> {
    make: Option<Make<T>>,
    config: String,
}

impl<T: ?Sized> Factory<T> {
    const fn new() -> Self {
        Self { make: None, config: String::new() }
    }

    /// `init`: checks the configuration by building one policy from it, and keeps both.
    fn init(&mut self, make: Make<T>, config: String) -> Result<(), String> {
        make(&config)?;
        self.make = Some(make);
        self.config = config;
        Ok(())
    }

    /// A resource's policy, made from the configuration `init` accepted.
    fn build(&self, service: &str) -> Box<T> {
        let Some(make) = self.make else { panic!("{service}: a resource was created before init") };
        match make(&self.config) {
            Ok(policy) => policy,
            Err(e) => panic!("{service}: the configuration init accepted was refused: {e}"),
        }
    }
}

/// Glue between the generated `balancer` export and a [`Balancer`]; used by
/// [`export_balancer!`].
pub mod balancer_glue {
    use std::cell::RefCell;

    use super::balancer_world::exports::sextant::plugin::balancer as wit;
    use super::{Balancer, BalancerEnv, Factory, Mode, Request, Table};

    thread_local! {
        static FACTORY: RefCell<Factory<dyn Balancer>> = const { RefCell::new(Factory::new()) };
    }

    /// `init`: checks the configuration (the factory builds one balancer from it) and keeps
    /// the factory for the services' resources.
    ///
    /// # Errors
    /// The factory's error.
    pub fn init(make: fn(&str) -> Result<Box<dyn Balancer>, String>, config: String) -> Result<(), String> {
        FACTORY.with(|f| f.borrow_mut().init(make, config))
    }

    /// One service's balancer: the `balancer` resource.
    pub struct Resource(RefCell<Box<dyn Balancer>>);

    impl std::fmt::Debug for Resource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("balancer resource")
        }
    }

    impl wit::GuestBalancer for Resource {
        fn new(service: String) -> Self {
            Self(RefCell::new(FACTORY.with(|f| f.borrow().build(&service))))
        }

        fn update(
            &self,
            snapshot: super::balancer_world::sextant::plugin::types::Snapshot,
        ) -> Result<wit::Mode, String> {
            let snapshot = snapshot.into_model();
            Ok(match self.0.borrow_mut().update(&snapshot, &mut BalancerEnv)? {
                Mode::PerRequest => wit::Mode::PerRequest,
                Mode::Table(Table::Weighted(w)) => wit::Mode::Table(wit::Table::Weighted(w)),
                Mode::Table(Table::Maglev(t)) => wit::Mode::Table(wit::Table::Maglev(t)),
                Mode::Table(Table::Ring(r)) => wit::Mode::Table(wit::Table::Ring(
                    r.into_iter().map(|p| wit::RingPoint { hash: p.hash, endpoint: p.endpoint }).collect(),
                )),
            })
        }

        fn pick(&self, request: wit::Request) -> Option<u32> {
            self.0.borrow_mut().pick(&Request { hash_key: request.hash_key }, &mut BalancerEnv)
        }
    }
}

/// Glue for the `health` export; used by [`export_health!`].
pub mod health_glue {
    use std::cell::RefCell;

    use super::health_world::exports::sextant::plugin::health as wit;
    use super::{Factory, HealthEnv, HealthPolicy, Outcome, ProbeResult, Status, Verdict};

    thread_local! {
        static FACTORY: RefCell<Factory<dyn HealthPolicy>> = const { RefCell::new(Factory::new()) };
    }

    fn status(s: wit::Status) -> Status {
        match s {
            wit::Status::Http(code) => Status::Http(code),
            wit::Status::Connected => Status::Connected,
            wit::Status::Timeout => Status::Timeout,
            wit::Status::Failed(m) => Status::Failed(m),
        }
    }

    fn verdict(v: Verdict) -> wit::Verdict {
        match v {
            Verdict::Unchanged => wit::Verdict::Unchanged,
            Verdict::Healthy => wit::Verdict::Healthy,
            Verdict::Unhealthy => wit::Verdict::Unhealthy,
            Verdict::Eject(ms) => wit::Verdict::Eject(ms),
        }
    }

    /// `init`: checks the configuration and keeps the factory.
    ///
    /// # Errors
    /// The factory's error.
    pub fn init(make: fn(&str) -> Result<Box<dyn HealthPolicy>, String>, config: String) -> Result<(), String> {
        FACTORY.with(|f| f.borrow_mut().init(make, config))
    }

    /// One service's health policy: the `health` resource.
    pub struct Resource(RefCell<Box<dyn HealthPolicy>>);

    impl std::fmt::Debug for Resource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("health resource")
        }
    }

    impl wit::GuestHealth for Resource {
        fn new(service: String) -> Self {
            Self(RefCell::new(FACTORY.with(|f| f.borrow().build(&service))))
        }

        fn update(&self, snapshot: super::health_world::sextant::plugin::types::Snapshot) -> Result<(), String> {
            self.0.borrow_mut().update(&snapshot.into_model(), &mut HealthEnv)
        }

        fn on_probe(&self, r: wit::ProbeResult) -> wit::Verdict {
            let r = ProbeResult { endpoint: r.endpoint, status: status(r.status), latency: r.latency, body: r.body };
            verdict(self.0.borrow_mut().on_probe(&r, &mut HealthEnv))
        }

        fn on_outcome(&self, o: wit::Outcome) -> wit::Verdict {
            let o = Outcome { endpoint: o.endpoint, status: status(o.status), latency: o.latency };
            verdict(self.0.borrow_mut().on_outcome(&o, &mut HealthEnv))
        }
    }
}

/// Glue for the `scheduler` export; used by [`export_scheduler!`].
pub mod scheduler_glue {
    use std::cell::RefCell;

    use super::scheduler_world::exports::sextant::plugin::scheduler as wit;
    use super::{EndpointStats, Factory, Scheduler, SchedulerEnv};

    thread_local! {
        static FACTORY: RefCell<Factory<dyn Scheduler>> = const { RefCell::new(Factory::new()) };
    }

    /// `init`: checks the configuration and keeps the factory.
    ///
    /// # Errors
    /// The factory's error.
    pub fn init(make: fn(&str) -> Result<Box<dyn Scheduler>, String>, config: String) -> Result<(), String> {
        FACTORY.with(|f| f.borrow_mut().init(make, config))
    }

    /// One service's scheduler: the `scheduler` resource.
    pub struct Resource(RefCell<Box<dyn Scheduler>>);

    impl std::fmt::Debug for Resource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("scheduler resource")
        }
    }

    impl wit::GuestScheduler for Resource {
        fn new(service: String) -> Self {
            Self(RefCell::new(FACTORY.with(|f| f.borrow().build(&service))))
        }

        fn update(&self, snapshot: super::scheduler_world::sextant::plugin::types::Snapshot) -> Result<(), String> {
            self.0.borrow_mut().update(&snapshot.into_model(), &mut SchedulerEnv)
        }

        fn schedule(&self, stats: Vec<wit::EndpointStats>) -> Vec<u32> {
            let stats: Vec<EndpointStats> = stats
                .into_iter()
                .map(|s| EndpointStats {
                    rps: s.rps,
                    latency_p50: s.latency_p50,
                    latency_p99: s.latency_p99,
                    requests: s.requests,
                    errors: s.errors,
                    overloaded: s.overloaded,
                    retry_after_ms: s.retry_after_ms,
                    age_ms: s.age_ms,
                })
                .collect();
            self.0.borrow_mut().schedule(&stats, &mut SchedulerEnv)
        }
    }
}

/// Exports a balancer plugin. The argument is a factory `Fn(&str) -> Result<T, String>` (a
/// closure that captures nothing, or a function) given the plugin's JSON configuration; `T`
/// implements [`Balancer`]. `init` calls it once to check the configuration, and every
/// service's `balancer` resource gets its own `T` from it.
#[macro_export]
macro_rules! export_balancer {
    ($make:expr) => {
        #[doc(hidden)]
        pub struct __SextantBalancer;

        impl $crate::balancer_world::exports::sextant::plugin::balancer::Guest for __SextantBalancer {
            type Balancer = $crate::balancer_glue::Resource;

            fn init(config: String) -> Result<(), String> {
                $crate::balancer_glue::init(
                    |c| ($make)(c).map(|b| Box::new(b) as Box<dyn $crate::Balancer>),
                    config,
                )
            }
        }

        // Only a wasm build exports the component's functions; a native build of the plugin
        // crate (workspace checks) compiles the glue without exporting anything.
        #[cfg(target_arch = "wasm32")]
        $crate::balancer_world::__export_balancer_world!(__SextantBalancer with_types_in $crate::balancer_world);
    };
}

/// Exports a health-policy plugin; the factory returns a [`HealthPolicy`] (one per service's
/// `health` resource).
#[macro_export]
macro_rules! export_health {
    ($make:expr) => {
        #[doc(hidden)]
        pub struct __SextantHealth;

        impl $crate::health_world::exports::sextant::plugin::health::Guest for __SextantHealth {
            type Health = $crate::health_glue::Resource;

            fn init(config: String) -> Result<(), String> {
                $crate::health_glue::init(|c| ($make)(c).map(|p| Box::new(p) as Box<dyn $crate::HealthPolicy>), config)
            }
        }

        // Only a wasm build exports the component's functions; a native build of the plugin
        // crate (workspace checks) compiles the glue without exporting anything.
        #[cfg(target_arch = "wasm32")]
        $crate::health_world::__export_health_world!(__SextantHealth with_types_in $crate::health_world);
    };
}

/// Exports a scheduler plugin; the factory returns a [`Scheduler`] (one per service's
/// `scheduler` resource).
#[macro_export]
macro_rules! export_scheduler {
    ($make:expr) => {
        #[doc(hidden)]
        pub struct __SextantScheduler;

        impl $crate::scheduler_world::exports::sextant::plugin::scheduler::Guest for __SextantScheduler {
            type Scheduler = $crate::scheduler_glue::Resource;

            fn init(config: String) -> Result<(), String> {
                $crate::scheduler_glue::init(
                    |c| ($make)(c).map(|p| Box::new(p) as Box<dyn $crate::Scheduler>),
                    config,
                )
            }
        }

        // Only a wasm build exports the component's functions; a native build of the plugin
        // crate (workspace checks) compiles the glue without exporting anything.
        #[cfg(target_arch = "wasm32")]
        $crate::scheduler_world::__export_scheduler_world!(__SextantScheduler with_types_in $crate::scheduler_world);
    };
}
