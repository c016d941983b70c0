//! Live mode of `sextant bench strategies` (`--live`): the scenario against real loopback
//! backends through the gateway, to check the simulation against reality.
//!
//! For each (scenario, strategy): one HTTP backend per `BackendSpec` on 127.0.0.1, serving
//! `workers` requests at a time from a FIFO queue with the same log-normal service times and
//! the same faults as the simulation, on the wall clock (slow, fast 503 / 429, a partitioned
//! zone that never answers, churn through the registry, other clients' requests (antagonists)
//! sent straight to their backend, and in zone scenarios half the
//! cross-zone round trip before and after the work of a backend outside the gateway's zone),
//! each answer carrying the backend's load report (`endpoint-load-metrics`, as the simulated
//! backends report it: `sextant_sim::load`) and `GET /load` answered with the report alone
//! (the gateway's load probes); the instances in an embedded
//! registry; the HTTP gateway the example gateway runs (`sextant_gateway::proxy::Gateway`)
//! routing through a `Router` with the strategy's balancer and scheduler; open-loop Poisson
//! arrivals at the scenario's rate (bursts and keys included, seeded) from a pooled HTTP
//! client. To compare like with like, the gateway does what the simulation models and no
//! more: one attempt per request (no retries), no circuit breaker, no outlier ejection, no
//! active checks; the attempt timeout is the scenario's client timeout.
//!
//! Requests per backend are counted by the backends themselves (so requests that timed out
//! are attributed too). Key moves are not measured live.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use sextant_core::{Instance, InstanceId, Record, ServiceKey};
use sextant_gateway::proxy::{Gateway, GatewayConfig, Rule, Upstream};
use sextant_gateway::resilience::{BreakerConfig, RetryConfig};
use sextant_gateway::{LoadProbe, Router, ServicePolicy};
use sextant_plugin::{PluginHost, PluginSpec};
use sextant_sim::engine::{BUCKETS, Rng, RunResult};
use sextant_sim::load::ReportedLoad;
use sextant_sim::scenario::{BackendSpec, Fault, Keys, Scenario};
use sextant_sim::{Row, Strategy};
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};

const SERVICE: &str = "bench/live/svc";
const KEY_HEADER: &str = "x-sextant-key";

/// Why a live run could not happen.
#[derive(Debug, thiserror::Error)]
#[error("live {scenario} / {strategy}: {reason}")]
pub struct LiveError {
    scenario: String,
    strategy: String,
    reason: String,
}

/// One sample backend: its spec, its queue and what it saw.
struct LiveBackend {
    index: usize,
    spec: BackendSpec,
    faults: Vec<Fault>,
    workers: Arc<tokio::sync::Semaphore>,
    rng: Mutex<Rng>,
    start: Instant,
    duration: Duration,
    timeout: Duration,
    /// Requests received per time bucket.
    series: Vec<AtomicU64>,
    /// Half the cross-zone round trip when the backend is in another zone than the gateway
    /// (waited before the work and before the answer, as the network would).
    half_trip: Duration,
    /// Requests received and not answered (queued or served), workers busy, and what the
    /// backend reports about its load.
    rif: AtomicU32,
    busy: AtomicU32,
    load: Mutex<ReportedLoad>,
}

impl LiveBackend {
    /// Nanoseconds since the run began.
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The backend's load report, as the header's text.
    fn report(&self) -> String {
        let (busy, rif) = (self.busy.load(Relaxed), self.rif.load(Relaxed));
        self.load.lock().header(self.now_ns(), busy, self.spec.workers, rif)
    }

    fn frac(&self) -> f64 {
        self.start.elapsed().as_secs_f64() / self.duration.as_secs_f64()
    }

    fn partitioned(&self, f: f64) -> bool {
        self.faults.iter().any(|fault| {
            matches!(fault, Fault::Partition { zone, from, to } if *zone == self.spec.zone && f >= *from && f < *to)
        })
    }

    /// Service time (ms) and status of a request starting now, as the simulation decides it.
    fn decide(&self, f: f64) -> (f64, StatusCode) {
        let mut rng = self.rng.lock();
        let mut service = rng.lognormal(self.spec.mean_ms, self.spec.sigma);
        let mut status = StatusCode::OK;
        for fault in &self.faults {
            match fault {
                Fault::Slow { backend, from, to, factor } if *backend == self.index && f >= *from && f < *to => {
                    service *= factor;
                }
                Fault::FastFail { backend, from, to, p503, p429, latency_ms }
                    if *backend == self.index && f >= *from && f < *to =>
                {
                    let u = rng.unit();
                    if u < *p503 {
                        (status, service) = (StatusCode::SERVICE_UNAVAILABLE, *latency_ms);
                    } else if u < p503 + p429 {
                        (status, service) = (StatusCode::TOO_MANY_REQUESTS, *latency_ms);
                    }
                }
                _ => {}
            }
        }
        (service, status)
    }
}

async fn handle(State(b): State<Arc<LiveBackend>>, uri: Uri) -> Response {
    if !b.half_trip.is_zero() {
        tokio::time::sleep(b.half_trip).await;
    }
    let mut answer = if uri.path() == "/load" { StatusCode::OK.into_response() } else { serve(&b).await };
    if let Ok(report) = axum::http::HeaderValue::from_str(&b.report()) {
        answer.headers_mut().insert(sextant_gateway::load_report::HEADER, report);
    }
    if !b.half_trip.is_zero() {
        tokio::time::sleep(b.half_trip).await;
    }
    answer
}

/// One request's work at `b`: queued for a worker, served, its load accounted for.
async fn work(b: Arc<LiveBackend>) -> StatusCode {
    let reached = b.now_ns();
    let rif = b.rif.fetch_add(1, Relaxed);
    let Ok(_permit) = b.workers.acquire().await else { return StatusCode::SERVICE_UNAVAILABLE };
    let started = b.now_ns();
    {
        let mut load = b.load.lock();
        load.touch(started, b.busy.fetch_add(1, Relaxed), b.spec.workers);
    }
    let (ms, status) = b.decide(b.frac());
    tokio::time::sleep(Duration::from_secs_f64(ms.max(0.0) / 1000.0)).await;
    let done = b.now_ns();
    {
        let mut load = b.load.lock();
        #[allow(clippy::cast_precision_loss)]
        let (latency, service) = ((done - reached) as f64 / 1e6, (done - started) as f64 / 1e6);
        load.finished(done, b.busy.fetch_sub(1, Relaxed), b.spec.workers, rif, latency, service);
    }
    b.rif.fetch_sub(1, Relaxed);
    status
}

async fn serve(b: &Arc<LiveBackend>) -> Response {
    let f = b.frac();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bucket = ((f * BUCKETS as f64) as usize).min(BUCKETS - 1);
    b.series[bucket].fetch_add(1, Relaxed);
    if b.partitioned(f) {
        // Unreachable: nothing comes back before the client gives up.
        tokio::time::sleep(b.timeout * 2).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    // The work runs to its end even when the gateway stops waiting, as in the simulation.
    let work = tokio::spawn(work(Arc::clone(b)));
    match work.await.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR) {
        StatusCode::TOO_MANY_REQUESTS => {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "busy").into_response()
        }
        status => (status, "ok").into_response(),
    }
}

fn instance(spec: &BackendSpec, addr: SocketAddr) -> Result<Record, String> {
    let service = ServiceKey::parse(SERVICE).map_err(|e| e.to_string())?;
    let mut i = Instance::new(service, addr.ip(), addr.port());
    i.id = InstanceId::new(spec.id.as_str()).map_err(|e| e.to_string())?;
    i.weight = spec.weight;
    i.zone = spec.zone.into();
    i.ephemeral = false;
    Ok(Record::Instance(Arc::new(i)))
}

/// What the gateway does in live mode: the strategy and nothing the simulation lacks.
fn policy(strategy: &Strategy) -> ServicePolicy {
    ServicePolicy {
        balancer: strategy.balancer.clone(),
        scheduler: strategy.scheduler.clone(),
        health: PluginSpec::builtin("consecutive"),
        health_check: None,
        breaker: BreakerConfig { failures: 0, max_in_flight: 0, ..BreakerConfig::default() },
        retry: RetryConfig { attempts: 1, ..RetryConfig::default() },
        rate_limit: None,
        max_ejected_percent: 0,
        load_probe: LoadProbe { per_second: sextant_sim::engine::PROBES_PER_SECOND, ..LoadProbe::default() },
        ..ServicePolicy::default()
    }
}

/// Runs `scenario` with `strategy` for `scale` × its duration on the wall clock.
///
/// # Errors
/// Sockets, the registry or the gateway could not be set up.
#[allow(clippy::too_many_lines)]
pub async fn run(
    host: &PluginHost,
    scenario: &Scenario,
    strategy: &Strategy,
    seed: u64,
    scale: f64,
) -> Result<RunResult, LiveError> {
    let fail = |reason: String| LiveError { scenario: scenario.name.into(), strategy: strategy.name.clone(), reason };
    let duration = Duration::from_secs_f64(scenario.duration_s * scale);
    let timeout = Duration::from_secs_f64(scenario.timeout_ms / 1000.0);
    let dir = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).map_err(|e| fail(e.to_string()))?;
    let registry = Registry::start(store, 1024).await.map_err(|e| fail(e.to_string()))?;

    let start = Instant::now();
    let mut backends = Vec::new();
    let mut servers = Vec::new();
    let mut records = Vec::new();
    for (index, spec) in scenario.backends.iter().enumerate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| fail(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
        let backend = Arc::new(LiveBackend {
            index,
            spec: spec.clone(),
            faults: scenario.faults.clone(),
            workers: Arc::new(tokio::sync::Semaphore::new(spec.workers as usize)),
            rng: Mutex::new(Rng::new(seed.wrapping_mul(1000).wrapping_add(index as u64 + 1))),
            start,
            duration,
            timeout,
            series: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            half_trip: match scenario.gateway_zone {
                Some(z) if z != spec.zone => Duration::from_secs_f64(scenario.cross_zone_ms / 2000.0),
                _ => Duration::ZERO,
            },
            rif: AtomicU32::new(0),
            busy: AtomicU32::new(0),
            load: Mutex::new(ReportedLoad::default()),
        });
        let app = axum::Router::new().fallback(handle).with_state(Arc::clone(&backend));
        servers.push(tokio::spawn(async move { axum::serve(listener, app).await }));
        let record = instance(spec, addr).map_err(fail)?;
        registry.put(record.clone(), None).await.map_err(|e| fail(e.to_string()))?;
        records.push(record);
        backends.push(backend);
    }

    let router = Router::builder(host.clone(), Arc::new(registry.clone()))
        .defaults(policy(strategy))
        .zone(scenario.gateway_zone.unwrap_or(""))
        .build();
    let mut rule = Rule::prefix("/", SERVICE);
    rule.hash_header = Some(KEY_HEADER.into());
    let config = GatewayConfig { routes: vec![rule], attempt_timeout: timeout, ..GatewayConfig::default() };
    let gateway = Gateway::new(config, Upstream::Router(router)).map_err(|e| fail(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| fail(e.to_string()))?;
    let gateway_addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway_task = tokio::spawn(async move {
        gateway.serve(listener, async move { drop(stop_rx.await) }, Duration::from_millis(100)).await
    });

    // Churn: backends leave and come back through the registry, on the wall clock.
    let mut churn = Vec::new();
    for fault in &scenario.faults {
        if let Fault::Churn { backend, at, back } = fault {
            let (registry, record) = (registry.clone(), records[*backend].clone());
            let (at, back) = (duration.mul_f64(*at), (*back < 1.0).then(|| duration.mul_f64(*back)));
            churn.push(tokio::spawn(async move {
                tokio::time::sleep_until((start + at).into()).await;
                let _ = registry.delete(record.key()).await;
                if let Some(back) = back {
                    tokio::time::sleep_until((start + back).into()).await;
                    let _ = registry.put(record, None).await;
                }
            }));
        }
    }

    // Other clients' requests (antagonists), straight to their backend, as the simulation
    // draws them.
    for (k, fault) in scenario.faults.iter().enumerate() {
        if let Fault::Antagonist { backend, from, to, rate } = *fault {
            let b = Arc::clone(&backends[backend]);
            let mut rng = Rng::new(seed.wrapping_mul(7919).wrapping_add(k as u64 + 1));
            let (from, to) = (duration.mul_f64(from), duration.mul_f64(to.min(1.0)));
            churn.push(tokio::spawn(async move {
                let mut t = from.as_secs_f64();
                loop {
                    t += rng.exp(1.0 / rate.max(1e-9));
                    if t >= to.as_secs_f64() {
                        break;
                    }
                    tokio::time::sleep_until((start + Duration::from_secs_f64(t)).into()).await;
                    tokio::spawn(work(Arc::clone(&b)));
                }
            }));
        }
    }

    // Open-loop arrivals, as the simulation draws them.
    let client: Client<_, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build_http();
    let samples: Arc<Mutex<Vec<(u32, bool)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut rng = Rng::new(seed);
    let cdf = scenario.keys.map(|k| k.cdf()).unwrap_or_default();
    let end_ms = duration.as_secs_f64() * 1000.0;
    let mut t_ms = 0.0;
    let mut sent = 0u64;
    let limit = timeout + Duration::from_millis(200);
    let timeout_us = u32::try_from(timeout.as_micros()).unwrap_or(u32::MAX);
    loop {
        t_ms += rng.exp(1000.0 / scenario.rate_at(t_ms).max(1e-9));
        if t_ms >= end_ms {
            break;
        }
        tokio::time::sleep_until((start + Duration::from_secs_f64(t_ms / 1000.0)).into()).await;
        let mut request = http::Request::get(format!("http://{gateway_addr}/"));
        if let Some(key) = Keys::draw(&cdf, &mut rng) {
            request = request.header(KEY_HEADER, key.to_string());
        }
        let request = request.body(Empty::new()).map_err(|e| fail(e.to_string()))?;
        let (client, samples) = (client.clone(), Arc::clone(&samples));
        sent += 1;
        tokio::spawn(async move {
            let began = Instant::now();
            let answer = tokio::time::timeout(limit, async {
                let response = client.request(request).await.ok()?;
                let ok = response.status().is_success();
                response.into_body().collect().await.ok()?;
                Some(ok)
            })
            .await;
            let latency = u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX).min(timeout_us);
            let ok = matches!(answer, Ok(Some(true))) && latency < timeout_us;
            samples.lock().push((if matches!(answer, Ok(Some(_))) { latency } else { timeout_us }, ok));
        });
    }
    // Every request ends by its timeout.
    let deadline = Instant::now() + limit + Duration::from_millis(500);
    while (samples.lock().len() as u64) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), gateway_task).await;
    servers.iter().for_each(tokio::task::JoinHandle::abort);
    churn.iter().for_each(tokio::task::JoinHandle::abort);

    let samples = std::mem::take(&mut *samples.lock());
    let n = backends.len();
    let mut result = RunResult {
        requests: sent,
        // Requests never answered at all (none, normally) count as failures at the timeout.
        latencies_us: samples.iter().map(|(l, _)| *l).chain((samples.len() as u64..sent).map(|_| timeout_us)).collect(),
        ok: samples.iter().filter(|(_, ok)| *ok).count() as u64,
        series: (0..BUCKETS).map(|k| backends.iter().map(|b| b.series[k].load(Relaxed) as u32).collect()).collect(),
        picks: sent,
        ..RunResult::default()
    };
    result.per_backend = (0..n).map(|b| backends[b].series.iter().map(|c| c.load(Relaxed)).sum()).collect();
    result.cross_zone = scenario
        .gateway_zone
        .map(|z| backends.iter().zip(&result.per_backend).filter(|(b, _)| b.spec.zone != z).map(|(_, n)| *n).sum());
    result.latencies_us.sort_unstable();
    result.imbalance = scenario.imbalance(&result.per_backend);
    result.capacity_error = scenario.capacity_error(&result.series);
    Ok(result)
}

/// Runs every (scenario, strategy) live, one seed each, and returns their rows.
///
/// # Errors
/// The first run that could not be set up.
pub async fn run_all(
    host: &PluginHost,
    scenarios: &[Scenario],
    strategies: &[Strategy],
    seed: u64,
    scale: f64,
    mut progress: impl FnMut(&str, &str),
) -> Result<Vec<Row>, LiveError> {
    let mut rows = Vec::new();
    for scenario in scenarios {
        for strategy in strategies {
            progress(scenario.name, &strategy.name);
            let result = run(host, scenario, strategy, seed, scale).await?;
            rows.push(Row::of(scenario.name, &strategy.name, &[result]));
        }
    }
    Ok(rows)
}

/// The simulation and live mode side by side, as markdown.
#[must_use]
pub fn side_by_side(sim: &[Row], live: &[Row], scale: f64) -> String {
    let by_key: BTreeMap<(&str, &str), &Row> =
        sim.iter().map(|r| ((r.scenario.as_str(), r.strategy.as_str()), r)).collect();
    let mut out = format!(
        "# Simulation vs live\n\nLive: real loopback backends through the gateway, {scale}× each scenario's duration, \
         one run each (wall clock, not deterministic). Simulation: the mean over its seeds.\n\n\
         | scenario | strategy | success sim | success live | p50 sim | p50 live | p99 sim | p99 live | p99.9 sim | p99.9 live | imbalance sim | imbalance live | cross-zone sim | cross-zone live | vs capacity sim | vs capacity live |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for l in live {
        let s = by_key.get(&(l.scenario.as_str(), l.strategy.as_str()));
        let sim = |f: &dyn Fn(&Row) -> String| s.map_or_else(|| "–".to_owned(), |r| f(r));
        out.push_str(&format!(
            "| {} | {} | {} | {:.3}% | {} | {:.1} | {} | {:.1} | {} | {:.1} | {} | {:.2} | {} | {} | {} | {} |\n",
            l.scenario,
            l.strategy,
            sim(&|r| format!("{:.3}%", r.success_rate * 100.0)),
            l.success_rate * 100.0,
            sim(&|r| format!("{:.1}", r.p50_ms)),
            l.p50_ms,
            sim(&|r| format!("{:.1}", r.p99_ms)),
            l.p99_ms,
            sim(&|r| format!("{:.1}", r.p999_ms)),
            l.p999_ms,
            sim(&|r| format!("{:.2}", r.imbalance)),
            l.imbalance,
            sim(&|r| r.cross_zone.map_or_else(|| "–".to_owned(), |c| format!("{:.1}%", c * 100.0))),
            l.cross_zone.map_or_else(|| "–".to_owned(), |c| format!("{:.1}%", c * 100.0)),
            sim(&|r| r.capacity_error.map_or_else(|| "–".to_owned(), |c| format!("{:.1}%", c * 100.0))),
            l.capacity_error.map_or_else(|| "–".to_owned(), |c| format!("{:.1}%", c * 100.0)),
        ));
    }
    out.push_str("\nLatencies in ms, as the client saw them (failures when their error came back, unanswered requests at the timeout).\n");
    out
}
