//! The built-in policies of sextant, written once and compiled two ways: natively into the
//! host (the fast default, and the baseline of every benchmark) and to `wasm32-wasip2` as
//! ready-made plugins (through `sextant-plugin-sdk`).
//!
//! This crate owns the plugin-side model (the Rust mirror of `wit/`: [`Snapshot`],
//! [`Request`], [`Mode`], [`Table`], probe results, statistics), the three policy traits
//! ([`Balancer`], [`HealthPolicy`], [`Scheduler`]), the environment a policy sees ([`Env`]:
//! host clock, seeded random numbers, live load), the deterministic generator and hash both
//! sides share ([`SplitMix64`], [`hash_str`]), and the built-ins themselves. It does no IO and
//! has no dependency on wasmtime or wit-bindgen, so the same code runs in both places and a
//! native pick and a wasm pick with the same seed give the same answer. To keep that true a
//! policy uses ordered maps (`BTreeMap`: a `HashMap`'s keys are drawn inside wasm from the
//! instance's seeded generator, which would shift its draws) and no libm function whose last
//! digit may differ between platforms.
#![deny(missing_docs)]

mod balancers;
mod c3;
mod health;
mod locality;
mod orca;
mod prequal;
pub mod report;
mod scheduler;
#[cfg(test)]
mod testing;

pub use balancers::{
    EdfWeights, HeaderRoute, LeastRequest, MAGLEV_TABLE_SIZE, Maglev, PeakEwma, RandomWeighted, RingHash, RoundRobin,
    SmoothWeighted,
};
pub use c3::C3;
pub use health::{Consecutive, OutlierDetection, Standard};
pub use locality::{Locality, MAX_ZONE_BYTES, zone_name_error};
pub use orca::{OrcaWrr, orca_weight};
pub use prequal::Prequal;
pub use scheduler::{Adaptive, GraySplit, SlowStart};

/// One endpoint of a snapshot (mirror of `types.endpoint`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// Instance id.
    pub id: String,
    /// `ip:port`.
    pub address: String,
    /// Relative weight, 1..=10000.
    pub weight: u32,
    /// Last health verdict.
    pub healthy: bool,
    /// Zone label.
    pub zone: String,
    /// Version label.
    pub version: String,
    /// Metadata sorted by key.
    pub metadata: Vec<(String, String)>,
}

/// A service's endpoints at one revision (mirror of `types.snapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// `namespace/group/name`.
    pub service: String,
    /// Registry revision.
    pub revision: u64,
    /// Endpoints; `pick` answers an index into this list.
    pub endpoints: Vec<Endpoint>,
    /// Whether the protection threshold is in force.
    pub protection_active: bool,
}

/// What a balancer knows about a request (mirror of `balancer.request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Request {
    /// Hash of the affinity key.
    pub hash_key: Option<u64>,
}

/// A consistent-hash ring point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingPoint {
    /// Position on the ring.
    pub hash: u64,
    /// Owning endpoint.
    pub endpoint: u32,
}

/// A table the host executes natively (mirror of `balancer.table`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Table {
    /// One weight per endpoint.
    Weighted(Vec<u32>),
    /// A ring sorted by hash.
    Ring(Vec<RingPoint>),
    /// A Maglev lookup table.
    Maglev(Vec<u32>),
}

/// How a balancer answers after an update (mirror of `balancer.mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `pick` is called per request.
    PerRequest,
    /// The host executes the table.
    Table(Table),
}

/// Log levels (mirror of `host.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Trace.
    Trace,
    /// Debug.
    Debug,
    /// Info.
    Info,
    /// Warn.
    Warn,
    /// Error.
    Error,
}

/// What a policy can ask of its host (mirror of the `host` and `load` interfaces).
pub trait Env {
    /// A pseudo-random number from the instance's seeded generator.
    fn random(&mut self) -> u64;
    /// Monotonic nanoseconds.
    fn now(&self) -> u64;
    /// A log line.
    fn log(&self, level: Level, message: &str);
    /// In-flight requests at an endpoint.
    fn in_flight(&self, endpoint: u32) -> u32;
    /// Peak EWMA latency of an endpoint in nanoseconds (0: unmeasured).
    fn latency_ewma(&self, endpoint: u32) -> u64;
    /// Recent failures at an endpoint.
    fn recent_errors(&self, endpoint: u32) -> u32;
    /// In-flight requests summed over the snapshot.
    fn total_in_flight(&self) -> u64;
    /// An endpoint's in-flight count, EWMA latency and recent errors at once.
    fn state(&self, endpoint: u32) -> EndpointState {
        EndpointState {
            in_flight: self.in_flight(endpoint),
            latency_ewma: self.latency_ewma(endpoint),
            recent_errors: self.recent_errors(endpoint),
        }
    }
    /// The states of two endpoints at once.
    fn pair(&self, a: u32, b: u32) -> (EndpointState, EndpointState) {
        (self.state(a), self.state(b))
    }
    /// A header of the current request.
    fn request_header(&self, name: &str) -> Option<String>;
    /// Which attempt at the current request this pick is for: 0 the first, 1 the first
    /// retry, … (`load.request-attempt`, contract 0.2.1).
    fn attempt(&self) -> u32 {
        0
    }
    /// The endpoints the current request already tried, as snapshot indices in the order
    /// tried (`load.request-tried`, contract 0.2.1): a balancer answers another one when it
    /// can.
    fn tried(&self) -> Vec<u32> {
        Vec::new()
    }
    /// The zone the host runs in, empty when it has none (`host.local-zone`, contract 0.2.2).
    fn local_zone(&self) -> String {
        String::new()
    }
    /// The endpoint's last load report, none when it sent none (`load.report`, contract
    /// 0.2.3).
    fn report(&self, _endpoint: u32) -> Option<report::BackendReport> {
        None
    }
    /// Asks the host to probe the endpoint for a fresh report, asynchronously (`load.probe`,
    /// contract 0.2.3): the answer arrives as the endpoint's report. The host bounds the rate
    /// and drops what it cannot do.
    fn probe(&mut self, _endpoint: u32) {}
}

/// One endpoint's live load (mirror of `load.endpoint-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointState {
    /// Requests in flight.
    pub in_flight: u32,
    /// Peak EWMA latency, ns (0: unmeasured).
    pub latency_ewma: u64,
    /// Recent failures.
    pub recent_errors: u32,
}

/// The random numbers of a plugin instance: a SplitMix64 seeded with one draw from the
/// host's generator, then advanced locally. Native instances (the host's `Env`) and wasm
/// instances (the SDK) both go through it, so with the same host seed they draw the same
/// numbers, and a wasm plugin pays for one host call per instance instead of one per number.
#[derive(Debug, Clone, Default)]
pub struct LocalRandom(Option<SplitMix64>);

impl LocalRandom {
    /// Not seeded yet.
    #[must_use]
    pub const fn new() -> Self {
        Self(None)
    }

    /// The next number; `seed` is called once, for the first.
    pub fn next(&mut self, seed: impl FnOnce() -> u64) -> u64 {
        self.0.get_or_insert_with(|| SplitMix64::new(seed())).next_u64()
    }
}

/// A load balancer (mirror of the `balancer` interface).
pub trait Balancer: Send {
    /// Applies a new snapshot; returns how requests are balanced until the next one.
    ///
    /// # Errors
    /// A message when the snapshot cannot be served (the host keeps its previous balancer).
    fn update(&mut self, snapshot: &Snapshot, env: &mut dyn Env) -> Result<Mode, String>;
    /// Chooses an endpoint index of the last snapshot.
    fn pick(&mut self, request: &Request, env: &mut dyn Env) -> Option<u32>;
}

/// How a probe or request ended (mirror of `health.status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// HTTP status code.
    Http(u16),
    /// TCP connect succeeded.
    Connected,
    /// Timed out.
    Timeout,
    /// Refused, reset or invalid.
    Failed(String),
}

impl Status {
    /// 2xx, 3xx or a TCP connect.
    #[must_use]
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Http(200..=399) | Self::Connected)
    }
    /// A gateway-style failure: 502, 503, 504, a timeout or a broken connection.
    #[must_use]
    pub fn is_gateway_error(&self) -> bool {
        matches!(self, Self::Http(502..=504) | Self::Timeout | Self::Failed(_))
    }
}

/// One active probe's result (mirror of `health.probe-result`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Endpoint index.
    pub endpoint: u32,
    /// How it ended.
    pub status: Status,
    /// Nanoseconds.
    pub latency: u64,
    /// Up to 4 KiB of body.
    pub body: Vec<u8>,
}

/// One request's outcome (mirror of `health.outcome`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Endpoint index.
    pub endpoint: u32,
    /// How it ended.
    pub status: Status,
    /// Nanoseconds.
    pub latency: u64,
}

/// A health verdict (mirror of `health.verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No change.
    Unchanged,
    /// Healthy.
    Healthy,
    /// Unhealthy.
    Unhealthy,
    /// Eject for this many milliseconds.
    Eject(u64),
}

/// A health policy (mirror of the `health` interface).
pub trait HealthPolicy: Send {
    /// Applies a new snapshot.
    ///
    /// # Errors
    /// A message when the snapshot is refused.
    fn update(&mut self, snapshot: &Snapshot, env: &mut dyn Env) -> Result<(), String>;
    /// An active probe finished.
    fn on_probe(&mut self, result: &ProbeResult, env: &mut dyn Env) -> Verdict;
    /// A request finished.
    fn on_outcome(&mut self, outcome: &Outcome, env: &mut dyn Env) -> Verdict;
}

/// Per-endpoint statistics for a scheduler (mirror of `scheduler.endpoint-stats`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EndpointStats {
    /// Requests per second.
    pub rps: f64,
    /// p50 latency, ns.
    pub latency_p50: u64,
    /// p99 latency, ns.
    pub latency_p99: u64,
    /// Completed requests.
    pub requests: u64,
    /// Failures.
    pub errors: u64,
    /// 429 / 503 + Retry-After.
    pub overloaded: u64,
    /// Longest Retry-After, ms.
    pub retry_after_ms: Option<u64>,
    /// Time since the endpoint joined, ms.
    pub age_ms: u64,
}

/// A traffic scheduler (mirror of the `scheduler` interface).
pub trait Scheduler: Send {
    /// Applies a new snapshot.
    ///
    /// # Errors
    /// A message when the snapshot is refused.
    fn update(&mut self, snapshot: &Snapshot, env: &mut dyn Env) -> Result<(), String>;
    /// Effective weights, one per endpoint.
    fn schedule(&mut self, stats: &[EndpointStats], env: &mut dyn Env) -> Vec<u32>;
}

/// The built-in balancers by name.
pub const BALANCERS: &[&str] = &[
    "round-robin",
    "weighted",
    "random",
    "least-request",
    "peak-ewma",
    "ring-hash",
    "maglev",
    "header-route",
    "orca-wrr",
    "prequal",
    "c3",
];
/// The built-in health policies by name.
pub const HEALTH_POLICIES: &[&str] = &["consecutive", "outlier", "standard"];
/// The built-in schedulers by name.
pub const SCHEDULERS: &[&str] = &["adaptive", "slow-start", "gray-split", "locality"];

/// Parses a policy's JSON configuration (`""` counts as `{}`).
///
/// # Errors
/// The parser's message.
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T, String> {
    let text = if config.trim().is_empty() { "{}" } else { config };
    serde_json::from_str(text).map_err(|e| format!("invalid configuration: {e}"))
}

/// A built-in balancer by name, configured.
///
/// # Errors
/// Unknown names (listing the valid ones) and invalid configurations.
pub fn balancer(name: &str, config: &str) -> Result<Box<dyn Balancer>, String> {
    Ok(match name {
        "round-robin" => Box::new(RoundRobin::new(config)?),
        "weighted" => Box::new(SmoothWeighted::new(config)?),
        "random" => Box::new(RandomWeighted::new(config)?),
        "least-request" => Box::new(LeastRequest::new(config)?),
        "peak-ewma" => Box::new(PeakEwma::new(config)?),
        "orca-wrr" => Box::new(OrcaWrr::new(config)?),
        "prequal" => Box::new(Prequal::new(config)?),
        "c3" => Box::new(C3::new(config)?),
        "ring-hash" => Box::new(RingHash::new(config)?),
        "maglev" => Box::new(Maglev::new(config)?),
        "header-route" => Box::new(HeaderRoute::new(config)?),
        other => return Err(format!("unknown balancer {other:?}; built-ins are {}", BALANCERS.join(", "))),
    })
}

/// A built-in health policy by name, configured.
///
/// # Errors
/// Unknown names and invalid configurations.
pub fn health_policy(name: &str, config: &str) -> Result<Box<dyn HealthPolicy>, String> {
    Ok(match name {
        "consecutive" => Box::new(Consecutive::new(config)?),
        "outlier" => Box::new(OutlierDetection::new(config)?),
        "standard" => Box::new(Standard::new(config)?),
        other => return Err(format!("unknown health policy {other:?}; built-ins are {}", HEALTH_POLICIES.join(", "))),
    })
}

/// A built-in scheduler by name, configured.
///
/// # Errors
/// Unknown names and invalid configurations.
pub fn scheduler(name: &str, config: &str) -> Result<Box<dyn Scheduler>, String> {
    Ok(match name {
        "adaptive" => Box::new(Adaptive::new(config)?),
        "slow-start" => Box::new(SlowStart::new(config)?),
        "gray-split" => Box::new(GraySplit::new(config)?),
        "locality" => Box::new(Locality::new(config)?),
        other => return Err(format!("unknown scheduler {other:?}; built-ins are {}", SCHEDULERS.join(", "))),
    })
}

/// The generator behind `host.random`: SplitMix64, so the host (for wasm plugins) and a
/// native policy given the same seed produce the same sequence.
#[derive(Debug, Clone, Default)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator with this seed.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
}

/// SplitMix64's finaliser: a fast, well-spread 64-bit mix.
#[must_use]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over the bytes, then mixed: a stable hash of a string (endpoint ids, header
/// values) that is the same on every platform and in wasm.
#[must_use]
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

/// `random % n` without the modulo bias mattering for balancing (Lemire's multiply-shift).
#[must_use]
pub fn below(random: u64, n: u32) -> u32 {
    // (random_hi32 * n) >> 32 is < n for n <= u32::MAX.
    u32::try_from(((random >> 32) * u64::from(n)) >> 32).unwrap_or(0)
}

/// Converts a `usize` index to the wire's `u32` (snapshots never exceed u32 endpoints).
#[must_use]
pub fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// An [`Env`] for tests and simulations: seeded random, fixed load, no headers.
#[derive(Debug, Clone, Default)]
pub struct TestEnv {
    /// The generator.
    pub rng: SplitMix64,
    /// Clock value returned by `now`.
    pub now: u64,
    /// In-flight per endpoint.
    pub in_flight: Vec<u32>,
    /// EWMA per endpoint.
    pub ewma: Vec<u64>,
    /// Recent errors per endpoint.
    pub errors: Vec<u32>,
    /// Request headers.
    pub headers: Vec<(String, String)>,
    /// The host's zone.
    pub zone: String,
    /// Load reports per endpoint.
    pub reports: Vec<Option<report::BackendReport>>,
    /// Probes asked for, in order.
    pub probes: Vec<u32>,
}

impl TestEnv {
    /// A test environment with this seed.
    #[must_use]
    pub fn seeded(seed: u64) -> Self {
        Self { rng: SplitMix64::new(seed), ..Self::default() }
    }
}

impl Env for TestEnv {
    fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }
    fn now(&self) -> u64 {
        self.now
    }
    fn log(&self, _level: Level, _message: &str) {}
    fn in_flight(&self, endpoint: u32) -> u32 {
        self.in_flight.get(endpoint as usize).copied().unwrap_or(0)
    }
    fn latency_ewma(&self, endpoint: u32) -> u64 {
        self.ewma.get(endpoint as usize).copied().unwrap_or(0)
    }
    fn recent_errors(&self, endpoint: u32) -> u32 {
        self.errors.get(endpoint as usize).copied().unwrap_or(0)
    }
    fn total_in_flight(&self) -> u64 {
        self.in_flight.iter().map(|&n| u64::from(n)).sum()
    }
    fn request_header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    }
    fn local_zone(&self) -> String {
        self.zone.clone()
    }
    fn report(&self, endpoint: u32) -> Option<report::BackendReport> {
        self.reports.get(endpoint as usize).cloned().flatten()
    }
    fn probe(&mut self, endpoint: u32) {
        self.probes.push(endpoint);
    }
}
