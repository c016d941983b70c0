//! What a plugin instance's store holds ([`HostState`]: its generator, clock, published list, the
//! request's headers, its output and limits) and what the host implements on it (the
//! contract's `host` and `load` imports in both versions, the WASI subset's state, the native
//! [`Env`]); arming a store for one call and classifying what a call's error was; the
//! pre-instantiated exports of a compiled component ([`KindPre`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sextant_builtins::{EndpointState, Env, Level, LocalRandom, SplitMix64};
use wasmtime::{Store, StoreLimits};

use crate::CallFault;
use crate::bindings::v1::balancer::sextant::plugin::{host as wit_host, load as wit_load, types as wit_types};
use crate::bindings::v2::balancer::sextant::plugin::{host as wit_host2, load as wit_load2};
use crate::bindings::{v1, v2};
use crate::log::LogBudget;
use crate::published::Published;

pub(crate) enum KindPre {
    Balancer(v1::balancer::BalancerPluginPre<HostState>),
    Health(v1::health::HealthPluginPre<HostState>),
    Scheduler(v1::scheduler::SchedulerPluginPre<HostState>),
    /// A 0.2.0 component of any kind (its instances are shared: `crate::shared`).
    Shared(SharedPre),
}

pub(crate) enum SharedPre {
    Balancer(v2::balancer::BalancerPluginPre<HostState>),
    Health(v2::health::HealthPluginPre<HostState>),
    Scheduler(v2::scheduler::SchedulerPluginPre<HostState>),
}

/// Classifies an error out of a guest call on `store`; a trap's reason carries what the
/// plugin wrote just before (a Rust panic's message, an exception's traceback).
pub(crate) fn fault_in(store: &mut Store<HostState>, e: &wasmtime::Error) -> CallFault {
    match fault(e) {
        CallFault::Trap(text) => {
            let wrote = store.data_mut().output.as_mut().map(|o| o.take_tail()).unwrap_or_default();
            if wrote.is_empty() {
                CallFault::Trap(text)
            } else {
                CallFault::Trap(format!("{text}; the plugin wrote: {wrote}"))
            }
        }
        other => {
            if let Some(o) = store.data_mut().output.as_mut() {
                o.take_tail();
            }
            other
        }
    }
}

/// Classifies an error out of a guest call.
pub(crate) fn fault(e: &wasmtime::Error) -> CallFault {
    if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) {
        return CallFault::Deadline;
    }
    let text = format!("{e:#}");
    if text.contains("forcing trap when growing memory") || text.contains("memory minimum size") {
        return CallFault::Memory;
    }
    // The cause, without the wasm backtrace wasmtime adds as context (dozens of frames for
    // an interpreter such as CPython: noise in a reason).
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => CallFault::Trap(trap.to_string()),
        None => CallFault::Trap(e.root_cause().to_string()),
    }
}

/// What each plugin instance can reach: its generator, its clock, the published list it serves (for
/// the `load` interface) and the current request's headers. Native policies get the same
/// state through [`Env`].
#[derive(Debug)]
pub struct HostState {
    pub(crate) rng: SplitMix64,
    /// The instance's numbers (native policies); wasm guests keep theirs in the SDK.
    pub(crate) local: LocalRandom,
    pub(crate) label: Arc<str>,
    /// The plugin's log budget on this host (shared by its instances).
    pub(crate) log: Arc<LogBudget>,
    pub(crate) published: Arc<Published>,
    pub(crate) headers: Vec<(String, String)>,
    /// The request's attempt number and the endpoints it tried (snapshot indices), during a
    /// pick.
    pub(crate) attempt: u32,
    pub(crate) tried: Vec<u32>,
    pub(crate) clock: Instant,
    /// The host's zone (`host.local-zone`), read at each call: the host may be moved.
    pub(crate) zone: Arc<ArcSwap<String>>,
    /// What the instance wrote to stdout and stderr (`wasi.rs`), once it writes.
    pub(crate) output: Option<Box<crate::wasi::Output>>,
    pub(crate) limits: StoreLimits,
    pub(crate) budget: Duration,
    /// The thread's CPU time when the wall-clock deadline passed.
    pub(crate) probe: Option<Duration>,
}

/// Arms a store for one call: the wall-clock deadline in ticks, then `budget` of CPU time.
pub(crate) fn arm(store: &mut Store<HostState>, ticks: u64, budget: Duration) {
    let state = store.data_mut();
    state.budget = budget;
    state.probe = None;
    store.set_epoch_deadline(ticks);
}

impl crate::wasi::WasiState for HostState {
    fn next_random(&mut self) -> u64 {
        self.rng.next_u64()
    }
    fn started(&self) -> Instant {
        self.clock
    }
    fn write_output(&mut self, stream: u32, bytes: &[u8]) {
        let label = Arc::clone(&self.label);
        self.output.get_or_insert_with(Box::default).write(&label, stream, bytes);
    }
}

/// Where `host.monotonic-now` counts from: an hour before the process first asked, so a clock
/// made a little earlier (a router's) still reads after it.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(3600)).unwrap_or(now)
    })
}

impl Env for HostState {
    fn random(&mut self) -> u64 {
        let rng = &mut self.rng;
        self.local.next(|| rng.next_u64())
    }
    /// Time on the clock of the load the plugin reads (a router's, which a simulation moves;
    /// the system's otherwise), so report ages and the plugin's own timing agree; counted
    /// from one epoch for the whole process, so every instance (native or wasm, whichever
    /// service it is serving) reads the same time.
    fn now(&self) -> u64 {
        let now = self.published.tracker.instant();
        u64::try_from(now.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
    }
    fn log(&self, level: Level, message: &str) {
        self.log.write(&self.label, level, message);
    }
    fn in_flight(&self, endpoint: u32) -> u32 {
        self.published.in_flight(endpoint)
    }
    fn latency_ewma(&self, endpoint: u32) -> u64 {
        self.published.latency_ewma(endpoint)
    }
    fn recent_errors(&self, endpoint: u32) -> u32 {
        self.published.recent_errors(endpoint)
    }
    fn total_in_flight(&self) -> u64 {
        self.published.tracker.total_in_flight()
    }
    fn request_header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }
    fn attempt(&self) -> u32 {
        self.attempt
    }
    fn tried(&self) -> Vec<u32> {
        self.tried.clone()
    }
    fn state(&self, endpoint: u32) -> EndpointState {
        self.published.state(endpoint)
    }
    fn local_zone(&self) -> String {
        self.zone.load().as_ref().clone()
    }
    fn report(&self, endpoint: u32) -> Option<sextant_builtins::report::BackendReport> {
        self.published.report(endpoint)
    }
    fn probe(&mut self, endpoint: u32) {
        self.published.probe(endpoint);
    }
}

impl HostState {
    /// Moves what the request being picked for brings (headers, attempt, the endpoints it
    /// tried as indices) into the store for a call; the same call after it moves them back.
    pub(crate) fn swap_request(
        &mut self,
        headers: &mut Vec<(String, String)>,
        attempt: &mut u32,
        tried: &mut Vec<u32>,
    ) {
        std::mem::swap(&mut self.headers, headers);
        std::mem::swap(&mut self.attempt, attempt);
        std::mem::swap(&mut self.tried, tried);
    }

    /// `host.log` of either contract version.
    fn plugin_log(&mut self, level: Level, message: &str) {
        self.log.write(&self.label, level, message);
        // Warnings and errors are what a plugin says before it fails (the Python template
        // logs an exception's traceback and re-raises): a trap's reason carries them.
        if matches!(level, Level::Warn | Level::Error) {
            self.output.get_or_insert_with(Box::default).remember(message);
        }
    }
}

/// The `host` and `load` imports of one contract version: the same functions in 0.1.0 and
/// 0.2.x, whose generated types differ only by module, and what a version adds to each.
macro_rules! host_imports {
    ($host:ident, $load:ident $(, host { $($host_added:tt)* }, load { $($load_added:tt)* })?) => {
        impl $host::Host for HostState {
            fn log(&mut self, level: $host::Level, message: String) {
                let level = match level {
                    $host::Level::Trace => Level::Trace,
                    $host::Level::Debug => Level::Debug,
                    $host::Level::Info => Level::Info,
                    $host::Level::Warn => Level::Warn,
                    $host::Level::Error => Level::Error,
                };
                self.plugin_log(level, &message);
            }
            fn monotonic_now(&mut self) -> u64 {
                Env::now(self)
            }
            fn random(&mut self) -> u64 {
                self.rng.next_u64()
            }
            $($($host_added)*)?
        }

        impl $load::Host for HostState {
            fn in_flight(&mut self, endpoint: u32) -> u32 {
                self.published.in_flight(endpoint)
            }
            fn latency_ewma(&mut self, endpoint: u32) -> u64 {
                self.published.latency_ewma(endpoint)
            }
            fn recent_errors(&mut self, endpoint: u32) -> u32 {
                self.published.recent_errors(endpoint)
            }
            fn total_in_flight(&mut self) -> u64 {
                self.published.tracker.total_in_flight()
            }
            fn state(&mut self, endpoint: u32) -> $load::EndpointState {
                let s: EndpointState = self.published.state(endpoint);
                $load::EndpointState {
                    in_flight: s.in_flight,
                    latency_ewma: s.latency_ewma,
                    recent_errors: s.recent_errors,
                }
            }
            fn pair(&mut self, a: u32, b: u32) -> ($load::EndpointState, $load::EndpointState) {
                ($load::Host::state(self, a), $load::Host::state(self, b))
            }
            fn request_header(&mut self, name: String) -> Option<String> {
                Env::request_header(self, &name)
            }
            $($($load_added)*)?
        }
    };
}

host_imports!(wit_host, wit_load);
// 0.2.1 adds what the request already tried, 0.2.2 the host's zone, 0.2.3 backends' load
// reports and probes.
host_imports!(wit_host2, wit_load2, host {
    fn local_zone(&mut self) -> String {
        Env::local_zone(self)
    }
}, load {
    fn request_attempt(&mut self) -> u32 {
        self.attempt
    }
    fn request_tried(&mut self) -> Vec<u32> {
        self.tried.clone()
    }
    fn report(&mut self, endpoint: u32) -> Option<wit_load2::BackendReport> {
        Env::report(self, endpoint).map(|r| wit_load2::BackendReport {
            utilization: r.utilization,
            rps: r.rps,
            eps: r.eps,
            named: r.named,
            age_ms: r.age_ms,
        })
    }
    fn probe(&mut self, endpoint: u32) {
        self.published.probe(endpoint);
    }
});

impl wit_types::Host for HostState {}
