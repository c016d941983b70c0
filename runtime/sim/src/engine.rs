//! The discrete-event simulation of one (scenario, strategy, seed).
//!
//! Clients send requests (Poisson arrivals, optionally bursty, optionally keyed); the
//! gateway is a real [`Router`], the one `sextant gateway` runs, on a [`ManualClock`] the
//! simulation moves and driven by this one thread (`RouterBuilder::ticked_by_caller`): each
//! request is a [`Router::pick`] and a [`PickGuard::finish`] with its outcome, so the
//! strategy sees in-flight counts, peak EWMA latency and recent errors exactly as behind a
//! gateway, the statistics windows, the scheduler's weights and the rotation are the
//! gateway's own code, and the same seed gives the same run. Each backend serves `workers`
//! requests at a time from a FIFO queue. A request the backend has not answered within the
//! client's timeout fails at the timeout (the backend still does the work). Registry changes
//! (churn) are published to the router's discovery as a registry would; the router does its
//! time-driven work every 25 simulated ms, as its maintenance task does.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sextant_core::snapshot::Directory;
use sextant_core::{Instance, InstanceId, Revision, ServiceKey, ServiceSnapshot};
use sextant_gateway::load_report::LoadReport;
use sextant_gateway::resilience::BreakerConfig;
use sextant_gateway::{
    Discovery, LoadProbe, ManualClock, Outcome, PickGuard, PickRequest, Router, ServicePolicy, SwapError,
};
use sextant_plugin::builtins::mix64;
use sextant_plugin::{PluginHost, PluginKind, PluginSpec};

use crate::load::ReportedLoad;
pub use crate::rng::Rng;
use crate::rollout::{Driver, RolloutRun, RolloutTrial};
use crate::scenario::{Fault, Keys, Scenario};
use crate::strategy::Strategy;

/// Buckets of the load-over-time series.
pub const BUCKETS: usize = 100;

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// Requests sent.
    pub requests: u64,
    /// Requests answered successfully within the timeout.
    pub ok: u64,
    /// Latency of every request as the client saw it, µs, sorted: a failure at the time
    /// its error came back, a request with no answer at the timeout, one that found no
    /// endpoint at 0.
    pub latencies_us: Vec<u32>,
    /// Requests routed to each backend.
    pub per_backend: Vec<u64>,
    /// Requests routed per backend per time bucket (`BUCKETS` rows).
    pub series: Vec<Vec<u32>>,
    /// Load imbalance: max / mean of requests per unit of weight, over the backends present
    /// the whole run.
    pub imbalance: f64,
    /// For keyed scenarios: the share of keyed requests sent elsewhere than the key's
    /// previous backend although that backend was still there.
    pub key_moves: Option<f64>,
    /// Wall time spent in picks, ns.
    pub pick_ns: u64,
    /// Picks made.
    pub picks: u64,
    /// Picks the native default answered because the plugin faulted.
    pub fallbacks: u64,
    /// What the rollout tried in the run did (`--rollout`).
    pub rollout: Option<RolloutRun>,
    /// Scenarios with a gateway zone: requests routed to a backend of another zone.
    pub cross_zone: Option<u64>,
    /// Scenarios of unequal capacities: how far the second half's traffic is from following
    /// capacity ([`Scenario::capacity_error`]).
    pub capacity_error: Option<f64>,
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The strategy did not load.
    #[error(transparent)]
    Swap(#[from] SwapError),
    /// The rollout's candidate did not load, or a step could not be applied.
    #[error("rollout: {0}")]
    Rollout(String),
}

impl RunResult {
    /// The `q` quantile of request latencies, ms.
    #[must_use]
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let i = ((self.latencies_us.len() as f64 * q).ceil() as usize).clamp(1, self.latencies_us.len()) - 1;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    /// Scenarios with a gateway zone: the share of the routed requests (those that reached a
    /// backend, in live mode) that went to another zone.
    #[must_use]
    pub fn cross_zone_share(&self) -> Option<f64> {
        let routed: u64 = self.per_backend.iter().sum();
        #[allow(clippy::cast_precision_loss)]
        self.cross_zone.map(|n| if routed == 0 { 0.0 } else { n as f64 / routed as f64 })
    }

    /// Successful share of requests.
    #[must_use]
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            return 1.0;
        }
        #[allow(clippy::cast_precision_loss)]
        let r = self.ok as f64 / self.requests as f64;
        r
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival,
    /// A request sent to another zone reaches its backend (half the round trip later).
    Reach {
        req: usize,
        backend: usize,
    },
    Done {
        req: usize,
        backend: usize,
    },
    /// The answer of a request served in another zone reaches the gateway.
    Reply {
        req: usize,
    },
    /// The answer to a load probe of a backend reaches the gateway.
    ProbeAnswer {
        backend: usize,
    },
    /// Another client's request reaches a backend (`Fault::Antagonist`, by its index).
    External {
        fault: usize,
    },
    Timeout {
        req: usize,
    },
    Membership,
    Tick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Ok,
    Unavailable,
    Overloaded,
}

struct Req {
    arrival: u64,
    outcome: Served,
    /// The router's guard, until the request is answered or times out.
    guard: Option<PickGuard>,
    /// When it reached its backend, how many were in flight there then, and when a worker
    /// started it.
    reached: u64,
    rif: u32,
    started: u64,
    /// The load report its backend sent with the answer.
    report: Option<LoadReport>,
}

struct Backend {
    busy: u32,
    queue: VecDeque<usize>,
    present: bool,
    /// What it reports about its load.
    load: ReportedLoad,
}

impl Backend {
    /// Its load report at `t`.
    fn report(&mut self, t: u64, workers: u32) -> LoadReport {
        let rif = self.busy + u32::try_from(self.queue.len()).unwrap_or(u32::MAX);
        self.load.report(t, self.busy, workers, rif)
    }
}

fn ms(ms: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ns = (ms.max(0.0) * 1e6) as u64;
    ns
}

/// A load probe's round trip within a zone.
const PROBE_RTT_NS: u64 = 200_000;

/// How often the simulated gateway does its time-driven work (as a gateway's maintenance
/// task does).
const TICK_NS: u64 = 25_000_000;

/// Load probes the benchmark's gateway lets out a second (the gateway's default is 1,000):
/// Prequal's design point, about two probes per request at the scenarios' rates (2,400 to
/// 3,100 requests a second). Live mode lets as many out.
pub const PROBES_PER_SECOND: u32 = 10_000;

/// The policy the simulated gateway runs for the strategy: the strategy's balancer and
/// scheduler (their native twins first: a wasm plugin is loaded over them, as on a gateway),
/// a statistics window of one second, load probes at [`PROBES_PER_SECOND`], and the gateway's
/// passive defenses off (a health policy that judges probes only, of which there are none, and
/// no breaker), so the strategy is what the benchmark measures.
fn policy(strategy: &Strategy) -> ServicePolicy {
    ServicePolicy {
        load_probe: LoadProbe { per_second: PROBES_PER_SECOND, ..LoadProbe::default() },
        balancer: PluginSpec::builtin(&strategy.fallback),
        health: PluginSpec::builtin("consecutive"),
        scheduler: strategy.scheduler.as_ref().map(native_scheduler),
        window: Duration::from_secs(1),
        health_check: None,
        breaker: BreakerConfig { failures: 0, ..BreakerConfig::default() },
        ..ServicePolicy::default()
    }
}

/// A scheduler's native twin (a built-in is its own).
fn native_scheduler(spec: &PluginSpec) -> PluginSpec {
    match spec {
        PluginSpec::Builtin { .. } => spec.clone(),
        PluginSpec::Wasm { name, .. } => PluginSpec::builtin(name.strip_prefix("wasm:").unwrap_or("adaptive")),
    }
}

/// A service name for the run (letters, digits and `-` only).
fn service_key(scenario: &Scenario, strategy: &Strategy) -> ServiceKey {
    let clean = |s: &str| -> String { s.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect() };
    ServiceKey::parse(&format!("sim/{}/{}", clean(scenario.name), clean(&strategy.name)))
        .unwrap_or_else(|_| ServiceKey::parse("sim/bench/strategy").expect("a valid service key"))
}

/// Runs one (scenario, strategy, seed) at `scale` × the scenario's duration.
///
/// # Errors
/// The strategy's plugins fail to load into the simulated gateway's slots.
pub fn run(
    host: &PluginHost,
    scenario: &Scenario,
    strategy: &Strategy,
    seed: u64,
    scale: f64,
) -> Result<RunResult, RunError> {
    run_with(host, scenario, strategy, seed, scale, None)
}

/// As [`run`], with `rollout`'s candidate rolled out beside `strategy` from the start.
///
/// # Errors
/// As [`run`]; the candidate does not load.
#[allow(clippy::too_many_lines)]
pub fn run_with(
    host: &PluginHost,
    scenario: &Scenario,
    strategy: &Strategy,
    seed: u64,
    scale: f64,
    rollout: Option<&RolloutTrial>,
) -> Result<RunResult, RunError> {
    // The serving instances of a strategy's native and wasm twins get the same seeds, so
    // they make the same picks: each is loaded right after the host is reseeded.
    let instance_seed = mix64(seed ^ 0x05e5_7a47);
    let mut rng = Rng::new(seed);
    let service = service_key(scenario, strategy);
    let clock = ManualClock::new();
    let directory = Arc::new(Directory::default());
    let router = Router::builder(host.clone(), Arc::clone(&directory) as Arc<dyn Discovery>)
        .defaults(policy(strategy))
        .ignore_plugin_records()
        .clock(Arc::new(clock.clone()))
        .ticked_by_caller()
        .zone(scenario.gateway_zone.unwrap_or(""))
        .build();
    // Half the round trip to a backend of another zone, each way.
    let half_trip = |b: usize| -> u64 {
        match scenario.gateway_zone {
            Some(z) if scenario.backends[b].zone != z => ms(scenario.cross_zone_ms / 2.0),
            _ => 0,
        }
    };

    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let end = (scenario.duration_s * scale * 1e9) as u64;
    let frac = |f: f64| -> u64 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
        let t = (f.clamp(0.0, 1.0) * end as f64) as u64;
        t
    };
    let timeout = ms(scenario.timeout_ms);
    let n = scenario.backends.len();
    let index: HashMap<&str, usize> = scenario.backends.iter().enumerate().map(|(i, b)| (b.id.as_str(), i)).collect();
    let mut backends: Vec<Backend> = scenario
        .backends
        .iter()
        .map(|_| Backend { busy: 0, queue: VecDeque::new(), present: true, load: ReportedLoad::default() })
        .collect();
    let present_at = |b: usize, t: u64| -> bool {
        scenario.faults.iter().all(|f| match f {
            Fault::Churn { backend, at, back } if *backend == b => t < frac(*at) || t >= frac(*back),
            _ => true,
        })
    };
    // The registry the simulated gateway follows: the backends present, as instances.
    let mut revision = 0u64;
    let mut publish = |backends: &[Backend]| {
        revision += 1;
        let mut instances: Vec<Arc<Instance>> = scenario
            .backends
            .iter()
            .zip(backends)
            .enumerate()
            .filter(|(_, (_, b))| b.present)
            .map(|(i, (spec, _))| {
                let port = u16::try_from(9000 + i).unwrap_or(u16::MAX);
                let mut instance = Instance::new(service.clone(), std::net::Ipv4Addr::LOCALHOST.into(), port);
                if let Ok(id) = InstanceId::new(spec.id.clone()) {
                    instance.id = id;
                }
                instance.weight = spec.weight;
                instance.zone = spec.zone.into();
                instance.version = "v1".into();
                Arc::new(instance)
            })
            .collect();
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        directory.publish(ServiceSnapshot::build(service.clone(), Revision(revision), instances, 0.0));
    };
    publish(&backends);
    host.reseed(instance_seed);
    router.load(&service, PluginKind::Balancer, strategy.balancer.clone())?;
    if let Some(spec @ PluginSpec::Wasm { .. }) = &strategy.scheduler {
        router.load(&service, PluginKind::Scheduler, spec.clone())?;
    }
    let mut driver = rollout.map(|r| Driver::start(&router, &service, r)).transpose().map_err(RunError::Rollout)?;

    let mut events: BinaryHeap<Reverse<(u64, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<Reverse<(u64, u64, Ev)>>, t: u64, ev: Ev| {
        seq += 1;
        events.push(Reverse((t, seq, ev)));
    };
    for (k, f) in scenario.faults.iter().enumerate() {
        match f {
            Fault::Churn { at, back, .. } => {
                push(&mut events, frac(*at), Ev::Membership);
                if *back < 1.0 {
                    push(&mut events, frac(*back), Ev::Membership);
                }
            }
            Fault::Antagonist { from, .. } => push(&mut events, frac(*from), Ev::External { fault: k }),
            _ => {}
        }
    }
    push(&mut events, 0, Ev::Arrival);
    push(&mut events, TICK_NS, Ev::Tick);

    let mut result = RunResult {
        per_backend: vec![0; n],
        series: vec![vec![0; n]; BUCKETS],
        cross_zone: scenario.gateway_zone.map(|_| 0),
        ..RunResult::default()
    };
    let mut reqs: Vec<Req> = Vec::new();
    let mut last_key: Vec<Option<usize>> = scenario.keys.map(|k| vec![None; k.count as usize]).unwrap_or_default();
    let zipf_cdf: Vec<f64> = scenario.keys.map(|k| k.cdf()).unwrap_or_default();
    let (mut keyed, mut moves) = (0u64, 0u64);
    let mut request = PickRequest::default();
    let mut now = 0u64;

    while let Some(Reverse((t, _, ev))) = events.pop() {
        clock.advance(Duration::from_nanos(t - now));
        now = t;
        match ev {
            Ev::Arrival => {
                if t >= end {
                    continue;
                }
                let key = Keys::draw(&zipf_cdf, &mut rng);
                request.hash_key = key.map(|k| mix64(k as u64 + 1));
                let started = Instant::now();
                let picked = router.pick(&service, &mut request);
                result.pick_ns += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                result.picks += 1;
                result.requests += 1;
                let Some((b, guard)) = picked.ok().and_then(|g| Some((*index.get(g.instance().id.as_str())?, g)))
                else {
                    result.latencies_us.push(0);
                    schedule_next(scenario, &mut rng, t, &mut |t, ev| push(&mut events, t, ev));
                    continue;
                };
                result.fallbacks += u64::from(guard.fallback());
                let id = reqs.len();
                reqs.push(Req {
                    arrival: t,
                    outcome: Served::Ok,
                    guard: Some(guard),
                    reached: t,
                    rif: 0,
                    started: t,
                    report: None,
                });
                result.per_backend[b] += 1;
                #[allow(clippy::cast_possible_truncation)]
                let bucket = ((u128::from(t) * BUCKETS as u128) / u128::from(end.max(1))) as usize;
                result.series[bucket.min(BUCKETS - 1)][b] += 1;
                if let Some(k) = key {
                    keyed += 1;
                    if let Some(prev) = last_key[k]
                        && prev != b
                        && backends[prev].present
                    {
                        moves += 1;
                    }
                    last_key[k] = Some(b);
                }
                push(&mut events, t + timeout, Ev::Timeout { req: id });
                if let (Some(n), Some(z)) = (result.cross_zone.as_mut(), scenario.gateway_zone)
                    && scenario.backends[b].zone != z
                {
                    *n += 1;
                }
                match half_trip(b) {
                    0 if arrives(scenario, &mut backends, &mut reqs, b, id, t, &frac) => {
                        start(scenario, &mut backends, &mut reqs, &mut rng, b, id, t, &frac, &mut |t, ev| {
                            push(&mut events, t, ev);
                        });
                    }
                    0 => {}
                    half => push(&mut events, t + half, Ev::Reach { req: id, backend: b }),
                }
                // The load probes the balancer asked for go out (a probe is answered after a
                // round trip, two more ways across zones).
                for id in router.take_load_probes(&service) {
                    if let Some(&p) = index.get(id.as_str()) {
                        push(&mut events, t + PROBE_RTT_NS + 2 * half_trip(p), Ev::ProbeAnswer { backend: p });
                    }
                }
                schedule_next(scenario, &mut rng, t, &mut |t, ev| push(&mut events, t, ev));
            }
            Ev::External { fault } => {
                let Fault::Antagonist { backend, to, rate, .. } = scenario.faults[fault] else { continue };
                if t >= frac(to).min(end) {
                    continue;
                }
                let id = reqs.len();
                reqs.push(Req {
                    arrival: t,
                    outcome: Served::Ok,
                    guard: None,
                    reached: t,
                    rif: 0,
                    started: t,
                    report: None,
                });
                if arrives(scenario, &mut backends, &mut reqs, backend, id, t, &frac) {
                    start(scenario, &mut backends, &mut reqs, &mut rng, backend, id, t, &frac, &mut |t, ev| {
                        push(&mut events, t, ev);
                    });
                }
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let gap = rng.exp(1e9 / rate.max(1e-9)) as u64;
                push(&mut events, t + gap.max(1), Ev::External { fault });
            }
            Ev::ProbeAnswer { backend } => {
                let report = backends[backend].report(t, scenario.backends[backend].workers);
                router.record_load(&service, &scenario.backends[backend].id, report);
            }
            Ev::Reach { req, backend } => {
                if arrives(scenario, &mut backends, &mut reqs, backend, req, t, &frac) {
                    start(scenario, &mut backends, &mut reqs, &mut rng, backend, req, t, &frac, &mut |t, ev| {
                        push(&mut events, t, ev);
                    });
                }
            }
            Ev::Done { req, backend } => {
                let workers = scenario.backends[backend].workers;
                let b = &mut backends[backend];
                #[allow(clippy::cast_precision_loss)]
                let (latency, service) = ((t - reqs[req].reached) as f64 / 1e6, (t - reqs[req].started) as f64 / 1e6);
                b.load.finished(t, b.busy, workers, reqs[req].rif, latency, service);
                b.busy -= 1;
                reqs[req].report = Some(b.report(t, workers));
                if let Some(next) = backends[backend].queue.pop_front() {
                    start(scenario, &mut backends, &mut reqs, &mut rng, backend, next, t, &frac, &mut |t, ev| {
                        push(&mut events, t, ev);
                    });
                }
                match half_trip(backend) {
                    0 => answer(&mut reqs[req], t, &mut result),
                    half => push(&mut events, t + half, Ev::Reply { req }),
                }
            }
            Ev::Reply { req } => answer(&mut reqs[req], t, &mut result),
            Ev::Timeout { req } => {
                if let Some(guard) = reqs[req].guard.take() {
                    result.latencies_us.push(u32::try_from(timeout / 1000).unwrap_or(u32::MAX));
                    guard.finish(Outcome::Timeout);
                }
            }
            Ev::Membership => {
                for (b, backend) in backends.iter_mut().enumerate() {
                    backend.present = present_at(b, t);
                }
                publish(&backends);
            }
            Ev::Tick => {
                // The gateway's own time-driven work: windows cut and the scheduler's weights
                // applied, health verdicts, breakers, a registry change not yet seen.
                router.tick();
                if let Some(d) = driver.as_mut() {
                    d.tick(&router, &service, t).map_err(RunError::Rollout)?;
                }
                if t + TICK_NS < end {
                    push(&mut events, t + TICK_NS, Ev::Tick);
                }
            }
        }
    }

    result.latencies_us.sort_unstable();
    result.key_moves = scenario.keys.map(|_| {
        #[allow(clippy::cast_precision_loss)]
        let m = if keyed == 0 { 0.0 } else { moves as f64 / keyed as f64 };
        m
    });
    result.imbalance = scenario.imbalance(&result.per_backend);
    result.capacity_error = scenario.capacity_error(&result.series);
    result.rollout = driver.map(|d| d.finish(&router, &service));
    Ok(result)
}

/// Schedules the arrival after one at `t` (bursts make the rate piecewise constant).
fn schedule_next(scenario: &Scenario, rng: &mut Rng, t: u64, push: &mut dyn FnMut(u64, Ev)) {
    #[allow(clippy::cast_precision_loss)]
    let gap = rng.exp(1e9 / scenario.rate_at(t as f64 / 1e6).max(1e-9));
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    push(t + (gap as u64).max(1), Ev::Arrival);
}

/// The answer to `r` reaches the client at `t` (unless it timed out already), with its
/// backend's load report.
fn answer(r: &mut Req, t: u64, result: &mut RunResult) {
    if let Some(guard) = r.guard.take() {
        if let Some(report) = r.report.take() {
            guard.report_load(report);
        }
        // The guard measures the same latency on the router's clock (now - the pick).
        result.latencies_us.push(u32::try_from((t - r.arrival) / 1000).unwrap_or(u32::MAX));
        let outcome = match r.outcome {
            Served::Ok => {
                result.ok += 1;
                Outcome::http(200)
            }
            Served::Unavailable => Outcome::http(503),
            // The simulated backends ask for a second.
            Served::Overloaded => Outcome::Http { status: 429, retry_after: Some(Duration::from_secs(1)) },
        };
        guard.finish(outcome);
    }
}

/// `req` reaches backend `b` at `t`: true when a worker is free to start it now; otherwise it
/// is queued, or lost in a partition.
fn arrives(
    scenario: &Scenario,
    backends: &mut [Backend],
    reqs: &mut [Req],
    b: usize,
    req: usize,
    t: u64,
    frac: &dyn Fn(f64) -> u64,
) -> bool {
    let zone = scenario.backends[b].zone;
    let partitioned = scenario.faults.iter().any(
        |f| matches!(f, Fault::Partition { zone: z, from, to } if *z == zone && t >= frac(*from) && t < frac(*to)),
    );
    if partitioned {
        return false;
    }
    reqs[req].reached = t;
    reqs[req].rif = backends[b].busy + u32::try_from(backends[b].queue.len()).unwrap_or(u32::MAX);
    if backends[b].busy < scenario.backends[b].workers {
        return true;
    }
    backends[b].queue.push_back(req);
    false
}

/// Starts serving `req` on `b` at `t`: decides its outcome and schedules its answer.
#[allow(clippy::too_many_arguments)]
fn start(
    scenario: &Scenario,
    backends: &mut [Backend],
    reqs: &mut [Req],
    rng: &mut Rng,
    b: usize,
    req: usize,
    t: u64,
    frac: &dyn Fn(f64) -> u64,
    push: &mut dyn FnMut(u64, Ev),
) {
    let backend = &mut backends[b];
    backend.load.touch(t, backend.busy, scenario.backends[b].workers);
    backend.busy += 1;
    reqs[req].started = t;
    let spec = &scenario.backends[b];
    let mut service = rng.lognormal(spec.mean_ms, spec.sigma);
    let mut outcome = Served::Ok;
    for f in &scenario.faults {
        match f {
            Fault::Slow { backend, from, to, factor } if *backend == b && t >= frac(*from) && t < frac(*to) => {
                service *= factor;
            }
            Fault::FastFail { backend, from, to, p503, p429, latency_ms }
                if *backend == b && t >= frac(*from) && t < frac(*to) =>
            {
                let u = rng.unit();
                if u < *p503 {
                    outcome = Served::Unavailable;
                    service = *latency_ms;
                } else if u < p503 + p429 {
                    outcome = Served::Overloaded;
                    service = *latency_ms;
                }
            }
            _ => {}
        }
    }
    reqs[req].outcome = outcome;
    push(t + ms(service).max(1), Ev::Done { req, backend: b });
}
