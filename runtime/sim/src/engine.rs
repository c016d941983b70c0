//! The discrete-event simulation of one (scenario, strategy, seed).
//!
//! Clients send requests (Poisson arrivals, optionally bursty, optionally keyed); the
//! gateway picks a backend through a real [`BalancerSlot`] whose load tracker runs on the
//! simulation's clock, so the strategy sees in-flight counts, peak EWMA latency and recent
//! errors exactly as in production, and the same seed gives the same run. Each backend
//! serves `workers` requests at a time from a FIFO queue. A request the backend has not
//! answered within the client's timeout fails at the timeout (the backend still does the
//! work). Registry changes (churn) reach the slot as new snapshots; a scheduler, when the
//! strategy has one, gets per-endpoint statistics every simulated second and its weights
//! become the balancer's.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sextant_plugin::builtins::{Endpoint, EndpointStats, Snapshot, mix64};
use sextant_plugin::{
    BalancerSlot, InFlight, LoadError, LoadTracker, OutcomeClass, PickRequest, Picked, PluginHost, PluginSpec,
    SchedulerSlot, StatsWindow,
};

pub use crate::rng::Rng;
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
    Done { req: usize, backend: usize },
    Timeout { req: usize },
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
    backend: usize,
    outcome: Served,
    inflight: Option<InFlight>,
}

struct Backend {
    busy: u32,
    queue: VecDeque<usize>,
    present: bool,
    weight: u32,
    window: StatsWindow,
    joined: u64,
}

fn ms(ms: f64) -> u64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let ns = (ms.max(0.0) * 1e6) as u64;
    ns
}

/// Runs one (scenario, strategy, seed) at `scale` × the scenario's duration.
///
/// # Errors
/// The strategy's plugins fail to load into a slot.
#[allow(clippy::too_many_lines)]
pub fn run(
    host: &PluginHost,
    scenario: &Scenario,
    strategy: &Strategy,
    seed: u64,
    scale: f64,
) -> Result<RunResult, LoadError> {
    // The serving instances of a strategy's native and wasm twins get the same seeds, so
    // they make the same picks.
    let instance_seed = mix64(seed ^ 0x05e5_7a47);
    host.reseed(instance_seed);
    let mut rng = Rng::new(seed);
    let service = format!("sim/{}/{}", scenario.name, strategy.name);
    let tracker = Arc::new(LoadTracker::manual(host.config().ewma_decay));
    let slot =
        BalancerSlot::with_tracker(host, &service, PluginSpec::builtin(&strategy.fallback), Arc::clone(&tracker))?;
    if strategy.is_wasm() {
        // Native strategies run the built-in the slot was made with.
        host.reseed(instance_seed);
        slot.load(strategy.balancer.clone())?;
    }
    let scheduler = match &strategy.scheduler {
        None => None,
        Some(spec @ PluginSpec::Builtin { .. }) => Some(SchedulerSlot::new(host, &service, spec.clone())?),
        Some(spec @ PluginSpec::Wasm { name, .. }) => {
            let native = name.strip_prefix("wasm:").unwrap_or("adaptive");
            let s = SchedulerSlot::new(host, &service, PluginSpec::builtin(native))?;
            s.load(spec.clone())?;
            Some(s)
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
        .map(|b| Backend {
            busy: 0,
            queue: VecDeque::new(),
            present: true,
            weight: b.weight,
            window: StatsWindow::default(),
            joined: 0,
        })
        .collect();
    let mut events: BinaryHeap<Reverse<(u64, u64, Ev)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<Reverse<(u64, u64, Ev)>>, t: u64, ev: Ev| {
        seq += 1;
        events.push(Reverse((t, seq, ev)));
    };
    for f in &scenario.faults {
        if let Fault::Churn { at, back, .. } = f {
            push(&mut events, frac(*at), Ev::Membership);
            if *back < 1.0 {
                push(&mut events, frac(*back), Ev::Membership);
            }
        }
    }
    push(&mut events, 0, Ev::Arrival);
    if scheduler.is_some() {
        push(&mut events, ms(1000.0), Ev::Tick);
    }

    let present_at = |b: usize, t: u64| -> bool {
        scenario.faults.iter().all(|f| match f {
            Fault::Churn { backend, at, back } if *backend == b => t < frac(*at) || t >= frac(*back),
            _ => true,
        })
    };
    let mut revision = 0u64;
    let snapshot = |backends: &[Backend], revision: u64, weights: bool| Snapshot {
        service: service.clone(),
        revision,
        protection_active: false,
        endpoints: scenario
            .backends
            .iter()
            .zip(backends)
            .filter(|(_, b)| b.present)
            .map(|(spec, b)| Endpoint {
                id: spec.id.clone(),
                address: format!("127.0.0.1:{}", 9000 + index[spec.id.as_str()]),
                weight: if weights { b.weight.max(1) } else { spec.weight },
                healthy: true,
                zone: spec.zone.into(),
                version: "v1".into(),
                metadata: Vec::new(),
            })
            .collect(),
    };
    // The balancer's route carries each endpoint's backend index (the snapshot's order).
    let in_rotation =
        |backends: &[Backend]| -> Vec<usize> { (0..backends.len()).filter(|b| backends[*b].present).collect() };
    slot.set_snapshot_with(snapshot(&backends, revision, true), in_rotation(&backends));
    if let Some(s) = &scheduler {
        s.set_snapshot(snapshot(&backends, revision, false));
    }

    let mut result = RunResult { per_backend: vec![0; n], series: vec![vec![0; n]; BUCKETS], ..RunResult::default() };
    let mut reqs: Vec<Req> = Vec::new();
    let mut last_key: Vec<Option<usize>> = scenario.keys.map(|k| vec![None; k.count as usize]).unwrap_or_default();
    let zipf_cdf: Vec<f64> = scenario.keys.map(|k| k.cdf()).unwrap_or_default();
    let (mut keyed, mut moves) = (0u64, 0u64);
    let mut request = PickRequest::default();

    while let Some(Reverse((t, _, ev))) = events.pop() {
        tracker.set_now(t);
        match ev {
            Ev::Arrival => {
                if t >= end {
                    continue;
                }
                let key = Keys::draw(&zipf_cdf, &mut rng);
                request.hash_key = key.map(|k| mix64(k as u64 + 1));
                let started = Instant::now();
                let picked = slot.pick_target::<usize>(&mut request);
                result.pick_ns += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                result.picks += 1;
                result.requests += 1;
                let Some((b, cell, Picked { fallback, .. })) = picked else {
                    result.latencies_us.push(0);
                    schedule_next(scenario, &mut rng, t, &mut |t, ev| push(&mut events, t, ev));
                    continue;
                };
                {
                    result.fallbacks += u64::from(fallback);
                    let id = reqs.len();
                    reqs.push(Req { arrival: t, backend: b, outcome: Served::Ok, inflight: Some(tracker.start(cell)) });
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
                    let zone = scenario.backends[b].zone;
                    let partitioned = scenario.faults.iter().any(|f| {
                        matches!(f, Fault::Partition { zone: z, from, to } if *z == zone && t >= frac(*from) && t < frac(*to))
                    });
                    if !partitioned {
                        if backends[b].busy < scenario.backends[b].workers {
                            start(scenario, &mut backends, &mut reqs, &mut rng, b, id, t, &frac, &mut |t, ev| {
                                push(&mut events, t, ev);
                            });
                        } else {
                            backends[b].queue.push_back(id);
                        }
                    }
                }
                schedule_next(scenario, &mut rng, t, &mut |t, ev| push(&mut events, t, ev));
            }
            Ev::Done { req, backend } => {
                backends[backend].busy -= 1;
                if let Some(next) = backends[backend].queue.pop_front() {
                    start(scenario, &mut backends, &mut reqs, &mut rng, backend, next, t, &frac, &mut |t, ev| {
                        push(&mut events, t, ev);
                    });
                }
                let r = &mut reqs[req];
                if let Some(inflight) = r.inflight.take() {
                    let latency = t - r.arrival;
                    let ok = r.outcome == Served::Ok;
                    inflight.finish_after(Duration::from_nanos(latency), !ok);
                    result.latencies_us.push(u32::try_from(latency / 1000).unwrap_or(u32::MAX));
                    let ended = match r.outcome {
                        Served::Ok => {
                            result.ok += 1;
                            OutcomeClass::Ok
                        }
                        Served::Unavailable => OutcomeClass::Failed,
                        // The simulated backends ask for a second.
                        Served::Overloaded => OutcomeClass::Overloaded { retry_after: Some(Duration::from_secs(1)) },
                    };
                    backends[r.backend].window.record(Duration::from_nanos(latency), ended);
                }
            }
            Ev::Timeout { req } => {
                let r = &mut reqs[req];
                if let Some(inflight) = r.inflight.take() {
                    inflight.finish_after(Duration::from_nanos(timeout), true);
                    result.latencies_us.push(u32::try_from(timeout / 1000).unwrap_or(u32::MAX));
                    backends[r.backend].window.record(Duration::from_nanos(timeout), OutcomeClass::Failed);
                }
            }
            Ev::Membership => {
                for (b, backend) in backends.iter_mut().enumerate() {
                    let now = present_at(b, t);
                    if now && !backend.present {
                        backend.joined = t;
                    }
                    backend.present = now;
                }
                revision += 1;
                slot.set_snapshot_with(snapshot(&backends, revision, true), in_rotation(&backends));
                if let Some(s) = &scheduler {
                    s.set_snapshot(snapshot(&backends, revision, false));
                }
            }
            Ev::Tick => {
                let Some(s) = &scheduler else { continue };
                let present: Vec<usize> = (0..n).filter(|b| backends[*b].present).collect();
                // The gateway's window code: the scheduler reads the same numbers here as
                // behind a real gateway (a window of one simulated second).
                let stats: Vec<EndpointStats> = present
                    .iter()
                    .map(|b| {
                        let closed = std::mem::take(&mut backends[*b].window);
                        closed.close(Duration::from_secs(1), Duration::from_nanos(t - backends[*b].joined))
                    })
                    .collect();
                let weights = s.schedule(&stats);
                let mut changed = false;
                for (b, w) in present.iter().zip(weights) {
                    changed |= backends[*b].weight != w;
                    backends[*b].weight = w;
                }
                if changed {
                    revision += 1;
                    slot.set_snapshot_with(snapshot(&backends, revision, true), in_rotation(&backends));
                }
                if t + ms(1000.0) < end {
                    push(&mut events, t + ms(1000.0), Ev::Tick);
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
    Ok(result)
}

/// Schedules the arrival after one at `t` (bursts make the rate piecewise constant).
fn schedule_next(scenario: &Scenario, rng: &mut Rng, t: u64, push: &mut dyn FnMut(u64, Ev)) {
    #[allow(clippy::cast_precision_loss)]
    let gap = rng.exp(1e9 / scenario.rate_at(t as f64 / 1e6).max(1e-9));
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    push(t + (gap as u64).max(1), Ev::Arrival);
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
    backends[b].busy += 1;
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
