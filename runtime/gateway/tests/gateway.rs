//! The gateway data plane end to end on loopback: sample backends registered in an embedded
//! registry, the router, the HTTP gateway, real requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sextant_core::{Instance, Record, ServiceKey, ServiceSpec};
use sextant_gateway::backend::{Backend, Behavior, Mode};
use sextant_gateway::proxy::{Gateway, GatewayConfig, Rule, UPSTREAM_HEADER, Upstream};
use sextant_gateway::resilience::{BreakerConfig, RetryConfig};
use sextant_gateway::{HealthCheck, Router, ServicePolicy};
use sextant_plugin::{HostConfig, PluginHost, PluginKind, PluginSpec};
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};
use tokio::sync::oneshot;

const SERVICE: &str = "shop/web/api";

fn service() -> ServiceKey {
    ServiceKey::parse(SERVICE).unwrap()
}

fn host() -> PluginHost {
    PluginHost::new(HostConfig { workers: 2, ..HostConfig::default() }).unwrap()
}

fn wasm(host: &PluginHost, name: &str, config: &str) -> PluginSpec {
    let bytes = std::fs::read(sextant_plugin_artifacts::path(name).expect("artifact")).unwrap();
    PluginSpec::Wasm { name: name.into(), compiled: host.compile(&bytes).unwrap(), config: config.into() }
}

struct Fixture {
    _dir: tempfile::TempDir,
    registry: Registry<EmbeddedStore>,
    router: Router,
    gateway: Gateway,
    addr: SocketAddr,
    shutdown: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    served: std::sync::Mutex<Option<tokio::task::JoinHandle<std::io::Result<()>>>>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

async fn fixture(config: ServicePolicy) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let registry = Registry::start(store, 1024).await.unwrap();
    let router = Router::builder(host(), Arc::new(registry.clone()))
        .health_sink(Arc::new(registry.clone()))
        .defaults(config)
        .build();
    let gateway_config = GatewayConfig {
        routes: vec![Rule::prefix("/", SERVICE)],
        attempt_timeout: Duration::from_millis(300),
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(gateway_config, Upstream::Router(router.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let g = gateway.clone();
    let served = tokio::spawn(async move {
        g.serve(
            listener,
            async {
                let _ = rx.await;
            },
            Duration::from_secs(5),
        )
        .await
    });
    let client = Client::builder(TokioExecutor::new()).build_http();
    Fixture {
        _dir: dir,
        registry,
        router,
        gateway,
        addr,
        shutdown: std::sync::Mutex::new(Some(tx)),
        served: std::sync::Mutex::new(Some(served)),
        client,
    }
}

impl Fixture {
    async fn register(&self, backend: &Backend, persistent: bool) {
        let mut i = Instance::new(service(), backend.addr().ip(), backend.addr().port());
        i.ephemeral = !persistent;
        let lease =
            if persistent { None } else { Some(self.registry.grant_lease(Duration::from_secs(60)).await.unwrap()) };
        self.registry.put(Record::Instance(Arc::new(i)), lease).await.unwrap();
    }

    /// GET through the gateway: (status, the upstream instance id).
    async fn get(&self, path: &str) -> (u16, Option<String>) {
        let uri: http::Uri = format!("http://{}{path}", self.addr).parse().unwrap();
        let response = self.client.get(uri).await.expect("the gateway answers");
        let status = response.status().as_u16();
        let upstream = response.headers().get(UPSTREAM_HEADER).map(|v| v.to_str().unwrap().to_owned());
        response.into_body().collect().await.expect("the body arrives whole");
        (status, upstream)
    }

    fn health(&self) -> BTreeMap<String, &'static str> {
        self.router
            .status(&service())
            .map(|s| s.endpoints.into_iter().map(|e| (e.id, e.health)).collect())
            .unwrap_or_default()
    }

    async fn wait_for(&self, what: &str, limit: Duration, mut ok: impl FnMut(&BTreeMap<String, &'static str>) -> bool) {
        let started = Instant::now();
        loop {
            // A pick creates the route; status needs it.
            let _ = self.router.pick(&service(), &mut sextant_gateway::PickRequest::default());
            let health = self.health();
            if ok(&health) {
                return;
            }
            assert!(started.elapsed() < limit, "{what}: still {health:?} after {limit:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Shuts the gateway down and waits for it to drain.
    async fn stop(&self) {
        if let Some(tx) = self.shutdown.lock().unwrap().take() {
            let _ = tx.send(());
        }
        let served = self.served.lock().unwrap().take();
        if let Some(served) = served {
            served.await.unwrap().unwrap();
        }
    }
}

fn id(b: &Backend) -> String {
    b.addr().to_string()
}

/// Sends `n` GETs with `concurrency` in flight; returns answers per status and per upstream.
async fn drive(f: &Arc<Fixture>, n: usize, concurrency: usize) -> (BTreeMap<u16, usize>, BTreeMap<String, usize>) {
    let mut tasks = tokio::task::JoinSet::new();
    let per = n / concurrency;
    for _ in 0..concurrency {
        let f = Arc::clone(f);
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(per);
            for _ in 0..per {
                out.push(f.get("/work").await);
            }
            out
        });
    }
    let (mut statuses, mut upstreams) = (BTreeMap::new(), BTreeMap::new());
    while let Some(r) = tasks.join_next().await {
        for (status, upstream) in r.unwrap() {
            *statuses.entry(status).or_insert(0) += 1;
            *upstreams.entry(upstream.unwrap_or_default()).or_insert(0) += 1;
        }
    }
    (statuses, upstreams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_leaves_rotation_and_comes_back_healthy() {
    let interval = Duration::from_millis(200);
    let config = ServicePolicy {
        health: PluginSpec::Builtin {
            name: "standard".into(),
            config: r#"{"active": {"unhealthy_threshold": 2, "healthy_threshold": 1}}"#.into(),
        },
        health_check: Some(HealthCheck { jitter: 0.0, ..HealthCheck::http("/health", interval) }),
        ..ServicePolicy::default()
    };
    let f = fixture(config).await;
    let a = Backend::start("a", Behavior::default()).await.unwrap();
    let b = Backend::start("b", Behavior::default()).await.unwrap();
    let c = Backend::start("c", Behavior::default()).await.unwrap();
    for x in [&a, &b, &c] {
        f.register(x, true).await;
    }
    f.wait_for("all up", Duration::from_secs(5), |h| h.len() == 3 && h.values().all(|s| *s == "up")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.health_checks() == 0 {
        assert!(Instant::now() < deadline, "the host probes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let (b_id, b_addr) = (id(&b), b.addr());
    b.kill();
    // After two failed probes (interval × threshold on an idle machine); the bound only
    // catches a hang, the figure is printed.
    let killed = Instant::now();
    f.wait_for("b out of rotation", Duration::from_secs(10), |h| h.get(&b_id).is_some_and(|s| *s != "up")).await;
    eprintln!("b left rotation {:?} after it was killed (probes every {interval:?}, threshold 2)", killed.elapsed());
    // Persistent: marked unhealthy in the registry, not deleted.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let snap = f.registry.snapshot(&service()).unwrap();
        let rec = snap.instances.iter().find(|i| i.id.as_str() == b_id).expect("never deleted");
        if !rec.healthy {
            break;
        }
        assert!(Instant::now() < deadline, "the registry record is marked unhealthy");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Traffic avoids it.
    let f = Arc::new(f);
    let (statuses, upstreams) = drive(&f, 60, 3).await;
    assert_eq!(statuses.get(&200), Some(&60), "{statuses:?}");
    assert!(!upstreams.contains_key(&b_id), "{upstreams:?}");

    // Back on the same port: healthy again after one good probe, in the registry too.
    let b = Backend::start_on("b", Behavior::default(), b_addr).await.unwrap();
    f.wait_for("b back", Duration::from_secs(5), |h| h.get(&b_id) == Some(&"up")).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f.registry.snapshot(&service()).unwrap().instances.iter().any(|i| i.id.as_str() == b_id && i.healthy) {
        assert!(Instant::now() < deadline, "the registry record is healthy again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(b);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protection_threshold_keeps_endpoints_in_rotation_when_too_many_fail_checks() {
    let config = ServicePolicy {
        health: PluginSpec::Builtin {
            name: "standard".into(),
            config: r#"{"active": {"unhealthy_threshold": 1}}"#.into(),
        },
        health_check: Some(HealthCheck::tcp(Duration::from_millis(100))),
        ..ServicePolicy::default()
    };
    let f = fixture(config).await;
    let spec = ServiceSpec { service: service(), protect_threshold: 0.6, metadata: Default::default() };
    f.registry.put(Record::Service(Arc::new(spec)), None).await.unwrap();
    let backends = [
        Backend::start("a", Behavior::default()).await.unwrap(),
        Backend::start("b", Behavior::default()).await.unwrap(),
        Backend::start("c", Behavior::default()).await.unwrap(),
    ];
    for x in &backends {
        f.register(x, false).await;
    }
    f.wait_for("all up", Duration::from_secs(5), |h| h.len() == 3 && h.values().all(|s| *s == "up")).await;
    let [a, b, c] = backends;
    let (a_id, b_id) = (id(&a), id(&b));
    a.kill();
    // One of three down: 2/3 healthy ≥ 0.6, so it leaves.
    f.wait_for("a out", Duration::from_secs(5), |h| h.get(&a_id) != Some(&"up")).await;
    b.kill();
    // Two of three down: 1/3 < 0.6, protection puts every instance back in rotation.
    f.wait_for("protection", Duration::from_secs(5), |h| h.values().all(|s| *s == "up")).await;
    let status = f.router.status(&service()).unwrap();
    assert!(status.protection, "{status:?}");
    assert_eq!(status.endpoints.iter().filter(|e| e.id == b_id).count(), 1);
    drop(c);
    f.stop().await;
}

async fn slow_share(balancer: PluginSpec) -> f64 {
    let f = fixture(ServicePolicy { balancer, ..ServicePolicy::default() }).await;
    let fast = Behavior { latency: Duration::from_millis(2), ..Behavior::default() };
    // 150 ms: far above what a busy debug build adds to the fast ones, so the difference
    // PeakEWMA sees is the backend's, not the machine's.
    let slow = Behavior { latency: Duration::from_millis(150), ..Behavior::default() };
    let backends = [
        Backend::start("f1", fast).await.unwrap(),
        Backend::start("f2", fast).await.unwrap(),
        Backend::start("slow", slow).await.unwrap(),
    ];
    for b in &backends {
        f.register(b, true).await;
    }
    let slow_id = id(&backends[2]);
    let f = Arc::new(f);
    let (statuses, upstreams) = drive(&f, 300, 6).await;
    assert_eq!(statuses.get(&200), Some(&300), "{statuses:?}");
    f.stop().await;
    #[allow(clippy::cast_precision_loss)]
    let share = upstreams.get(&slow_id).copied().unwrap_or(0) as f64 / 300.0;
    share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gets_less_traffic_under_p2c_peak_ewma_than_round_robin() {
    let rr = slow_share(PluginSpec::builtin("round-robin")).await;
    let ewma = slow_share(PluginSpec::builtin("peak-ewma")).await;
    assert!((0.25..=0.42).contains(&rr), "round robin spreads evenly: slow share {rr}");
    assert!(ewma < rr / 2.0, "peak-ewma sends the slow backend {ewma}, round robin {rr}");
}

/// Fifteen balancer swaps while eight clients keep requests flowing, the route's retries off
/// (one attempt per request: a failed pick or attempt is a failed request). Between any two
/// swaps, and before the first and after the last, requests were answered (so every swap
/// overlapped traffic); every request was answered 200 by one of the backends; no pick fell
/// back to the native default; and the calls the versions counted add up to the requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_the_balancer_under_load_drops_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    const BETWEEN: u64 = 40;
    let retries_off =
        ServicePolicy { retry: RetryConfig { attempts: 1, ..RetryConfig::default() }, ..Default::default() };
    let f = fixture(retries_off).await;
    let backends = [
        Backend::start("a", Behavior::default()).await.unwrap(),
        Backend::start("b", Behavior::default()).await.unwrap(),
        Backend::start("c", Behavior::default()).await.unwrap(),
    ];
    for b in &backends {
        f.register(b, true).await;
    }
    let f = Arc::new(f);
    let host = f.router.host().clone();
    let specs =
        [wasm(&host, "round-robin", "{}"), wasm(&host, "peak-ewma", "{}"), PluginSpec::builtin("least-request")];
    let (stop, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (f, stop, answered) = (Arc::clone(&f), Arc::clone(&stop), Arc::clone(&answered));
        clients.spawn(async move {
            let mut out = Vec::new();
            while !stop.load(SeqCst) {
                out.push(f.get("/work").await);
                answered.fetch_add(1, SeqCst);
            }
            out
        });
    }
    let traffic = |what: String| {
        let answered = Arc::clone(&answered);
        async move {
            let from = answered.load(SeqCst);
            let deadline = Instant::now() + Duration::from_secs(60);
            while answered.load(SeqCst) < from + BETWEEN {
                assert!(Instant::now() < deadline, "no traffic {what}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let mut versions = Vec::new();
    for n in 0..15 {
        traffic(format!("before swap {n}")).await;
        let status = f.router.load(&service(), PluginKind::Balancer, specs[n % 3].clone()).unwrap();
        versions.push(status.id);
    }
    traffic("after the last swap".to_owned()).await;
    stop.store(true, SeqCst);
    let (mut statuses, mut upstreams) = (BTreeMap::new(), BTreeMap::new());
    while let Some(r) = clients.join_next().await {
        for (status, upstream) in r.unwrap() {
            *statuses.entry(status).or_insert(0u64) += 1;
            *upstreams.entry(upstream.unwrap_or_default()).or_insert(0u64) += 1;
        }
    }
    let sent = answered.load(SeqCst);
    assert!(versions.windows(2).all(|w| w[1] > w[0]), "{versions:?}");
    assert_eq!(statuses.get(&200), Some(&sent), "no request dropped across 15 swaps: {statuses:?}");
    let ids: std::collections::BTreeSet<String> = backends.iter().map(id).collect();
    assert_eq!(upstreams.keys().cloned().collect::<std::collections::BTreeSet<_>>(), ids, "{upstreams:?}");
    assert_eq!(f.gateway.stats().failed.load(std::sync::atomic::Ordering::Relaxed), 0);
    // What the versions counted: the retired ones and the one active now.
    let active = f.router.status(&service()).unwrap().balancer.active.counters;
    let retired = host.retired();
    let balancers = retired.iter().filter(|(k, _)| k.kind == "balancer").map(|(_, t)| t);
    let (calls, fallbacks) = balancers
        .fold((active.counts.calls, active.counts.fallbacks), |(c, f), t| (c + t.counts.calls, f + t.counts.fallbacks));
    eprintln!("15 swaps under 8 clients: {sent} requests, all 200; balancer calls {calls}, fallbacks {fallbacks}");
    assert_eq!(fallbacks, 0, "no pick fell back to the native default");
    assert_eq!(calls, sent, "one balancer call per request, counted by the version that answered it");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backends_are_ejected_a_trapping_health_plugin_falls_back_and_no_good_request_fails() {
    let config = ServicePolicy {
        health_check: Some(HealthCheck { jitter: 0.0, ..HealthCheck::http("/health", Duration::from_millis(200)) }),
        retry: RetryConfig { attempts: 5, budget_ratio: 1.0, min_per_second: 1000, ..RetryConfig::default() },
        breaker: BreakerConfig { failures: 3, ..BreakerConfig::default() },
        max_ejected_percent: 80,
        ..ServicePolicy::default()
    };
    let f = fixture(config).await;
    let good = Backend::start("good", Behavior::default()).await.unwrap();
    // Healthy, but its health endpoint answers 8 MiB: the probe reads 4 KiB and moves on.
    let huge = Backend::start("huge", Behavior { health_body: 8 << 20, ..Behavior::default() }).await.unwrap();
    let hang = Backend::start("hang", Behavior { mode: Mode::Hang, ..Behavior::default() }).await.unwrap();
    let reset = Backend::start("reset", Behavior { mode: Mode::Reset, ..Behavior::default() }).await.unwrap();
    let garbage = Backend::start("garbage", Behavior { mode: Mode::Garbage, ..Behavior::default() }).await.unwrap();
    for b in [&good, &huge, &hang, &reset, &garbage] {
        f.register(b, true).await;
    }
    let f = Arc::new(f);
    let (statuses, upstreams) = drive(&f, 200, 4).await;
    assert_eq!(statuses.get(&200), Some(&200), "no good request fails: {statuses:?}");
    let bad: Vec<String> = [&hang, &reset, &garbage].iter().map(|b| id(b)).collect();
    assert!(upstreams.keys().all(|u| !bad.contains(u)), "{upstreams:?}");
    let (good_id, huge_id) = (id(&good), id(&huge));
    f.wait_for("bad ones out, good ones in", Duration::from_secs(5), |h| {
        h.get(&good_id) == Some(&"up") && h.get(&huge_id) == Some(&"up") && bad.iter().all(|b| h.get(b) != Some(&"up"))
    })
    .await;

    // A health plugin that traps on every probe after its self-test: the default policy
    // takes over, the gateway stays up, good requests keep succeeding.
    let host = f.router.host().clone();
    let trapping = wasm(&host, "bad-health", r#"{"fault": "trap-probe", "after": 4}"#);
    f.router.load(&service(), PluginKind::Health, trapping).unwrap();
    // Good requests keep succeeding while it traps (each fault answered by the default).
    let (statuses, _) = drive(&f, 100, 4).await;
    assert_eq!(statuses.get(&200), Some(&100), "{statuses:?}");
    // Five endpoints probed every 200 ms and a fault every fifth call of each fresh instance:
    // more than 5 faults within the 10 s window come within seconds, however slow the machine,
    // and the slot rolls back to the default policy.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = f.router.status(&service()).unwrap();
        if status.health.events.iter().any(|e| e.what.contains("auto-rollback")) {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "no automatic rollback: {:?}", status.health);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(status.health.active.name, "bad-health", "{:?}", status.health);
    let (statuses, _) = drive(&f, 100, 4).await;
    assert_eq!(statuses.get(&200), Some(&100), "after the rollback too: {statuses:?}");
    assert_eq!(f.health().get(&good_id), Some(&"up"));
    drop((hang, reset, garbage, good, huge));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_rate_limits_and_unknown_routes_get_clear_answers() {
    let config = ServicePolicy {
        rate_limit: Some(sextant_gateway::resilience::RateLimit { per_second: 1.0, burst: 3 }),
        ..ServicePolicy::default()
    };
    let f = fixture(config).await;
    assert_eq!(f.get("/x").await.0, 503, "no instance registered");
    let a = Backend::start("a", Behavior::default()).await.unwrap();
    f.register(&a, true).await;
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(f.get("/x").await.0);
    }
    assert!(codes.iter().filter(|c| **c == 429).count() >= 2, "{codes:?}");
    assert!(codes.contains(&200), "{codes:?}");
    let err = Gateway::new(
        GatewayConfig { routes: vec![Rule::prefix("x", SERVICE)], ..GatewayConfig::default() },
        Upstream::Static(a.addr()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("must start with /"), "{err}");
    assert!(
        Gateway::new(
            GatewayConfig { routes: vec![Rule::prefix("/", "bad name!")], ..GatewayConfig::default() },
            Upstream::Static(a.addr()),
        )
        .is_err()
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_requests_in_flight() {
    let f = fixture(ServicePolicy::default()).await;
    let slow =
        Backend::start("slow", Behavior { latency: Duration::from_millis(200), ..Behavior::default() }).await.unwrap();
    f.register(&slow, true).await;
    let f = Arc::new(f);
    let in_flight = {
        let f = Arc::clone(&f);
        tokio::spawn(async move { f.get("/slow").await.0 })
    };
    // In flight: picked, and the slow backend has not answered yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    while f.router.in_flight() == 0 {
        assert!(Instant::now() < deadline, "the request never went out");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    f.stop().await;
    assert_eq!(in_flight.await.unwrap(), 200, "the request in flight finished");
    // Not accepting any more.
    assert!(tokio::net::TcpStream::connect(f.addr).await.is_err());
}

/// The embedding API on its own (no HTTP): a fresh route runs the configured built-ins as
/// its first versions; picks can avoid endpoints already tried; a guard finished with a
/// measured latency or dropped unfinished leaves nothing in flight; an affinity key sticks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedding_api_picks_avoids_and_accounts_every_guard() {
    let dir = tempfile::tempdir().unwrap();
    let registry =
        Registry::start(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap(), 1024).await.unwrap();
    for port in [9101, 9102, 9103] {
        let mut i = Instance::new(service(), "127.0.0.1".parse().unwrap(), port);
        i.ephemeral = false;
        registry.put(Record::Instance(Arc::new(i)), None).await.unwrap();
    }
    let router = Router::new(host(), Arc::new(registry.clone()), ServicePolicy::default());

    // The configured default is the route's first version, not a load over another one.
    let guard = router.pick(&service(), &mut sextant_plugin::PickRequest::default()).unwrap();
    let status = router.status(&service()).unwrap();
    assert_eq!((status.balancer.active.id, status.balancer.active.name.as_str()), (1, "peak-ewma"));
    assert!(status.balancer.previous.is_empty(), "{:?}", status.balancer.previous);
    assert_eq!(status.health.active.name, "standard");
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["balancer"]["active"]["name"], "peak-ewma", "the slots are in the status JSON: {json}");

    // Avoiding: with two of three tried, the third is picked (round robin offers each of
    // the three within the four picks `pick_avoiding` makes at most).
    router.load(&service(), PluginKind::Balancer, PluginSpec::builtin("round-robin")).unwrap();
    let tried: Vec<SocketAddr> = ["127.0.0.1:9101", "127.0.0.1:9102"].iter().map(|a| a.parse().unwrap()).collect();
    for _ in 0..20 {
        let g = router.pick_avoiding(&service(), &mut sextant_plugin::PickRequest::default(), &tried).unwrap();
        assert_eq!(g.addr().port(), 9103);
        g.finish(sextant_gateway::Outcome::http(200));
    }

    // Finished with a measured latency, or dropped: nothing stays in flight.
    guard.finish_with_latency(sextant_gateway::Outcome::http(200), Duration::from_millis(7));
    let dropped: Vec<_> =
        (0..5).map(|_| router.pick(&service(), &mut sextant_plugin::PickRequest::default()).unwrap()).collect();
    let in_flight =
        |router: &Router| -> u32 { router.status(&service()).unwrap().endpoints.iter().map(|e| e.in_flight).sum() };
    assert_eq!(in_flight(&router), 5);
    drop(dropped);
    assert_eq!(in_flight(&router), 0);

    // An affinity key sticks under a hash balancer, whoever hashes it.
    router.load(&service(), PluginKind::Balancer, PluginSpec::builtin("ring-hash")).unwrap();
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", "user-42".parse().unwrap());
    let from_headers =
        <sextant_gateway::PickRequest as sextant_gateway::FromHeaders>::from_headers(&headers, Some("x-user"), &[]);
    assert_eq!(from_headers.hash_key, sextant_plugin::PickRequest::with_affinity("user-42").hash_key);
    let first = router.pick(&service(), &mut from_headers.clone()).unwrap().addr();
    for _ in 0..10 {
        let mut again = sextant_plugin::PickRequest::with_affinity("user-42");
        assert_eq!(router.pick(&service(), &mut again).unwrap().addr(), first);
    }

    // Outcome from a response: the status, and Retry-After in seconds.
    let response = http::Response::builder().status(503).header("retry-after", "2").body(()).unwrap();
    assert_eq!(
        sextant_gateway::Outcome::from_response(&response),
        sextant_gateway::Outcome::Http { status: 503, retry_after: Some(Duration::from_secs(2)) }
    );
}

/// A retry tells the balancer what the request already tried (contract 0.2.1): a sticky key
/// whose endpoint failed moves on to the next endpoint it reaches, the same one at every
/// retry: a table the host executes (ring, Maglev) is walked on by the host, a per-request
/// balancer reads `load.request-tried`. A component built against 0.2.0 is still served by the
/// 0.2.3 host, and shows what the case was before: it cannot know, so its retry lands on the
/// endpoint that failed (`pick_avoiding`'s three extra picks get the same answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_tells_the_balancer_what_was_tried_so_a_sticky_key_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let registry =
        Registry::start(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap(), 1024).await.unwrap();
    for port in [9201, 9202, 9203, 9204] {
        let mut i = Instance::new(service(), "127.0.0.1".parse().unwrap(), port);
        i.ephemeral = false;
        registry.put(Record::Instance(Arc::new(i)), None).await.unwrap();
    }
    let host = host();
    let router = Router::new(host.clone(), Arc::new(registry.clone()), ServicePolicy::default());
    let pick = |key: &str, tried: &[SocketAddr]| {
        let g = router.pick_avoiding(&service(), &mut sextant_plugin::PickRequest::with_affinity(key), tried).unwrap();
        let addr = g.addr();
        g.finish(sextant_gateway::Outcome::http(200));
        addr
    };
    let keys: Vec<String> = (0..40).map(|k| format!("user-{k}")).collect();
    let cases = [
        ("ring-hash (native)", PluginSpec::builtin("ring-hash"), "", true),
        ("ring-hash (wasm, per request)", wasm(&host, "ring-hash", "{}"), "0.2.3", true),
        ("maglev (wasm table)", wasm(&host, "maglev", "{}"), "0.2.3", true),
        ("sticky (0.2.3, per request)", wasm(&host, "sticky", "{}"), "0.2.3", true),
        ("sticky-v020 (0.2.0, per request)", wasm(&host, "sticky-v020", "{}"), "0.2.0", false),
    ];
    for (label, spec, contract, moves_on) in cases {
        if let PluginSpec::Wasm { compiled, .. } = &spec {
            assert_eq!(compiled.contract.as_str(), contract, "{label}");
        }
        router.load(&service(), PluginKind::Balancer, spec).unwrap();
        let before = router.status(&service()).unwrap().balancer.active.counters;
        let mut moved = 0;
        for key in &keys {
            let first = pick(key, &[]);
            assert_eq!(pick(key, &[]), first, "{label}: {key} sticks");
            let second = pick(key, &[first]);
            if !moves_on {
                // 0.2.0: the balancer cannot tell, the retry lands where the first failed.
                assert_eq!(second, first, "{label}: {key}");
                continue;
            }
            assert_ne!(second, first, "{label}: {key}'s retry went back to the endpoint it tried");
            assert_eq!(pick(key, &[first]), second, "{label}: {key}'s retry goes to the same neighbour every time");
            let third = pick(key, &[first, second]);
            assert!(third != first && third != second, "{label}: {key}: {first} {second} {third}");
            moved += 1;
        }
        let after = router.status(&service()).unwrap().balancer.active.counters;
        assert_eq!(
            after.counts.fallbacks, before.counts.fallbacks,
            "{label}: answered by the plugin, not the native default"
        );
        assert_eq!(after.counts.traps + after.counts.contract_violations, 0, "{label}: {after:?}");
        eprintln!("{label}: {moved} of {} keys moved on at their retry", keys.len());
    }
}

/// Shutting a router down: picks are refused with a typed error, the picks under way finish
/// (the shutdown waits for them, and for no more than its grace), clones share it. A router
/// built with a per-service configuration runs it for that service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_picks_and_waits_for_those_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let registry =
        Registry::start(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap(), 1024).await.unwrap();
    let other = ServiceKey::parse("shop/web/other").unwrap();
    for (key, port) in [(service(), 9301), (other.clone(), 9302)] {
        let mut i = Instance::new(key, "127.0.0.1".parse().unwrap(), port);
        i.ephemeral = false;
        registry.put(Record::Instance(Arc::new(i)), None).await.unwrap();
    }
    let own = ServicePolicy { balancer: PluginSpec::builtin("round-robin"), ..ServicePolicy::default() };
    let router = Router::builder(host(), Arc::new(registry.clone())).service(other.clone(), own).build();
    let pick = |router: &Router, key: &ServiceKey| router.pick(key, &mut sextant_gateway::PickRequest::default());
    let held = pick(&router, &service()).unwrap();
    let _ = pick(&router, &other).unwrap();
    assert_eq!(router.status(&other).unwrap().balancer.active.name, "round-robin", "the builder's own configuration");
    assert_eq!(router.status(&service()).unwrap().balancer.active.name, "peak-ewma", "the defaults");
    assert_eq!(router.in_flight(), 1, "the dropped guard is not in flight, the held one is");

    // With a request in flight, the shutdown waits its grace and reports it.
    let clone = router.clone();
    assert_eq!(clone.shutdown(Duration::from_millis(50)).await, 1);
    assert!(matches!(pick(&router, &service()), Err(sextant_gateway::PickError::ShutDown)), "the clone shut both");
    assert!(matches!(pick(&router, &other), Err(sextant_gateway::PickError::ShutDown)));

    // The request finishing ends the wait.
    let waiting = tokio::spawn({
        let router = router.clone();
        async move { router.shutdown(Duration::from_secs(120)).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished(), "the shutdown waits for the request in flight");
    held.finish(sextant_gateway::Outcome::http(200));
    assert_eq!(waiting.await.unwrap(), 0, "drained");
    assert_eq!(router.in_flight(), 0);
}

/// A router-wide default reaches the routes that exist and those routed later, not a service
/// configured on its own; a bad default changes nothing; a component is compiled off the
/// async workers and a bad one changes nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_wide_default_applies_to_routes_now_and_later() {
    let dir = tempfile::tempdir().unwrap();
    let registry =
        Registry::start(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap(), 1024).await.unwrap();
    let key = |name: &str| ServiceKey::parse(&format!("shop/web/{name}")).unwrap();
    let add = |name: &'static str, port: u16| {
        let registry = registry.clone();
        async move {
            let mut i = Instance::new(key(name), "127.0.0.1".parse().unwrap(), port);
            i.ephemeral = false;
            registry.put(Record::Instance(Arc::new(i)), None).await.unwrap();
        }
    };
    add("own", 9201).await;
    add("shared", 9202).await;
    let router = Router::new(host(), Arc::new(registry.clone()), ServicePolicy::default());
    router.configure(key("own"), ServicePolicy::default());
    let balancer = |router: &Router, name: &str| {
        let _ = router.pick(&key(name), &mut sextant_plugin::PickRequest::default());
        router.status(&key(name)).unwrap().balancer.active.name
    };
    assert_eq!(balancer(&router, "shared"), "peak-ewma");
    assert_eq!(balancer(&router, "own"), "peak-ewma");

    let refused = router.set_default(PluginKind::Balancer, &PluginSpec::builtin("round-robin")).unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(balancer(&router, "shared"), "round-robin", "an existing route takes it");
    assert_eq!(balancer(&router, "own"), "peak-ewma", "a service with its own configuration keeps it");
    add("later", 9203).await;
    assert_eq!(balancer(&router, "later"), "round-robin", "a service routed later starts on it");

    let bad = router.set_default(PluginKind::Balancer, &PluginSpec::builtin("no-such-balancer"));
    assert!(matches!(bad, Err(sextant_plugin::LoadError::UnknownBuiltin(_))), "{bad:?}");
    assert_eq!(balancer(&router, "shared"), "round-robin", "a refused default changes nothing");

    let bytes = std::fs::read(sextant_plugin_artifacts::path("ring-hash").expect("artifact")).unwrap();
    let version = router.load_component(&key("shared"), PluginKind::Balancer, "ring-hash", bytes, "{}").await.unwrap();
    assert_eq!((version.name.as_str(), version.source), ("ring-hash", "wasm"));
    let junk = router.load_component(&key("shared"), PluginKind::Balancer, "junk", b"junk".to_vec(), "{}").await;
    assert!(matches!(junk, Err(sextant_gateway::SwapError::Plugin(sextant_plugin::LoadError::NotWasm))), "{junk:?}");
    assert_eq!(balancer(&router, "shared"), "ring-hash");

    // A scheduler default gives the routes that ran none a scheduler slot.
    assert!(router.status(&key("shared")).unwrap().scheduler.is_none());
    router.set_default(PluginKind::Scheduler, &PluginSpec::builtin("adaptive")).unwrap();
    let _ = router.pick(&key("shared"), &mut sextant_plugin::PickRequest::default());
    let scheduler = router.status(&key("shared")).unwrap().scheduler.map(|s| s.active.name);
    assert_eq!(scheduler.as_deref(), Some("adaptive"));
}

/// A body that fails at its first frame.
struct FailingBody;

impl http_body::Body for FailingBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        std::task::Poll::Ready(Some(Err(std::io::Error::other("reset by the upstream"))))
    }
}

/// `FinishOnEnd`: the pick is finished when the body ends (in flight until then), as a
/// failure when the body fails (the breaker, set to open at the first failure, opens), and
/// released unrecorded when the body is dropped before its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_body_finishes_its_pick_at_its_end_on_error_or_when_dropped() {
    use sextant_gateway::resilience::BreakerState;
    use sextant_gateway::{FinishOnEnd, Outcome};

    let dir = tempfile::tempdir().unwrap();
    let registry =
        Registry::start(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap(), 1024).await.unwrap();
    let mut i = Instance::new(service(), "127.0.0.1".parse().unwrap(), 9301);
    i.ephemeral = false;
    registry.put(Record::Instance(Arc::new(i)), None).await.unwrap();
    let config = ServicePolicy {
        breaker: BreakerConfig { failures: 1, ..BreakerConfig::default() },
        ..ServicePolicy::default()
    };
    let router = Router::new(host(), Arc::new(registry.clone()), config);
    let endpoint = |router: &Router| router.status(&service()).unwrap().endpoints.remove(0);
    let pick = |router: &Router| router.pick(&service(), &mut sextant_plugin::PickRequest::default()).unwrap();

    // Ends: in flight until the last frame is read, then finished with its outcome.
    let body =
        FinishOnEnd::new(http_body_util::Full::new(Bytes::from_static(b"hello")), pick(&router), Outcome::http(200));
    assert_eq!(endpoint(&router).in_flight, 1);
    assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    assert_eq!(endpoint(&router).in_flight, 0);
    assert_eq!(endpoint(&router).breaker, BreakerState::Closed, "a 200 is a success");

    // Dropped before its end: released, nothing recorded (the breaker stays closed).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
    let stream = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut body = FinishOnEnd::new(stream, pick(&router), Outcome::http(500));
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"part")))).await.unwrap();
    assert!(body.frame().await.is_some());
    assert_eq!(endpoint(&router).in_flight, 1);
    drop(body);
    assert_eq!(endpoint(&router).in_flight, 0);
    assert_eq!(endpoint(&router).breaker, BreakerState::Closed, "a dropped body records no outcome, not its 500");

    // Fails: finished as a failure, which opens a breaker set to open at the first one.
    let body = FinishOnEnd::new(FailingBody, pick(&router), Outcome::http(200));
    assert!(body.collect().await.is_err());
    assert_eq!(endpoint(&router).in_flight, 0);
    assert_eq!(endpoint(&router).breaker, BreakerState::Open, "a failed body is a failure, whatever its status");
}

/// A scheduler loaded into a route that runs none gets a slot of its own and its weights
/// apply (gray split: v2 takes no traffic); `reset` takes it away and the registered weights
/// stand again. A scheduler that refuses its configuration changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_loaded_into_a_route_without_one_sets_its_weights_and_reset_takes_it_away() {
    let dir = tempfile::tempdir().unwrap();
    let registry =
        Registry::start(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap(), 1024).await.unwrap();
    for (port, version) in [(9301, "v1"), (9302, "v2")] {
        let mut i = Instance::new(service(), "127.0.0.1".parse().unwrap(), port);
        i.ephemeral = false;
        i.version = version.into();
        registry.put(Record::Instance(Arc::new(i)), None).await.unwrap();
    }
    let config = ServicePolicy { window: Duration::from_millis(50), ..ServicePolicy::default() };
    let router = Router::new(host(), Arc::new(registry.clone()), config);
    let weights = |router: &Router| -> BTreeMap<u16, u32> {
        let _ = router.pick(&service(), &mut sextant_plugin::PickRequest::default());
        let status = router.status(&service()).unwrap();
        status.endpoints.iter().map(|e| (e.address.rsplit(':').next().unwrap().parse().unwrap(), e.weight)).collect()
    };
    let registered = weights(&router);
    assert_eq!(registered.len(), 2);
    assert!(registered.values().all(|w| *w > 0), "{registered:?}");
    assert!(router.status(&service()).unwrap().scheduler.is_none());

    let refused = router.load(&service(), PluginKind::Scheduler, PluginSpec::builtin("gray-split").with_config("{}"));
    assert!(refused.is_err(), "a split with no version is refused: {refused:?}");
    assert!(router.status(&service()).unwrap().scheduler.is_none(), "and leaves no slot behind");

    let split = PluginSpec::builtin("gray-split").with_config(r#"{"split": {"v1": 100, "v2": 0}}"#);
    router.load(&service(), PluginKind::Scheduler, split).unwrap();
    let started = Instant::now();
    while weights(&router).get(&9302) != Some(&0) {
        assert!(started.elapsed() < Duration::from_secs(20), "v2 still weighted: {:?}", weights(&router));
        router.tick();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(weights(&router)[&9301] > 0);
    for _ in 0..20 {
        let picked = router.pick(&service(), &mut sextant_plugin::PickRequest::default()).unwrap();
        assert_eq!(picked.addr().port(), 9301, "v2 takes no traffic");
    }

    assert!(router.reset(&service(), PluginKind::Scheduler).unwrap().is_none());
    let started = Instant::now();
    while weights(&router) != registered {
        assert!(started.elapsed() < Duration::from_secs(20), "still {:?}", weights(&router));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(router.status(&service()).unwrap().scheduler.is_none());
}

/// A router on a manual clock makes its time-driven decisions when that clock moves and
/// nowhere else: a breaker opened by failures stays open for as long as the clock says,
/// however long the test really takes, and half-opens (one trial) once the clock passes its
/// open period. Minutes of a router's life, run in milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_on_a_manual_clock_keeps_a_breaker_open_until_that_clock_says_otherwise() {
    use sextant_gateway::{ManualClock, Outcome};
    use sextant_plugin::PickRequest;

    let dir = tempfile::tempdir().unwrap();
    let registry =
        Registry::start(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap(), 1024).await.unwrap();
    for port in [9201, 9202] {
        let mut i = Instance::new(service(), "127.0.0.1".parse().unwrap(), port);
        i.ephemeral = false;
        registry.put(Record::Instance(Arc::new(i)), None).await.unwrap();
    }
    let clock = ManualClock::new();
    let policy = ServicePolicy {
        balancer: PluginSpec::builtin("round-robin"),
        breaker: BreakerConfig {
            failures: 3,
            open: Duration::from_secs(30),
            max_open: Duration::from_secs(300),
            ..BreakerConfig::default()
        },
        // The health policy ejects nothing: the breaker alone decides.
        max_ejected_percent: 0,
        ..ServicePolicy::default()
    };
    let router =
        Router::builder(host(), Arc::new(registry.clone())).defaults(policy).clock(Arc::new(clock.clone())).build();
    let ports = |router: &Router, n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| {
                let g = router.pick(&service(), &mut PickRequest::default()).expect("a pick");
                let port = g.addr().port();
                g.finish(Outcome::http(200));
                port
            })
            .collect()
    };
    assert!(ports(&router, 10).contains(&9201));

    // 9201 fails three times in a row: its breaker opens.
    let mut failed = 0;
    while failed < 3 {
        let g = router.pick(&service(), &mut PickRequest::default()).expect("a pick");
        if g.addr().port() == 9201 {
            g.finish(Outcome::Timeout);
            failed += 1;
        } else {
            g.finish(Outcome::http(200));
        }
    }
    router.tick();
    assert!(ports(&router, 20).iter().all(|&p| p == 9202), "the breaker is open");

    // Real time passes (the maintenance task ticks every 25 ms meanwhile); the clock does not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    clock.advance(Duration::from_secs(29));
    router.tick();
    assert!(ports(&router, 20).iter().all(|&p| p == 9202), "29 s on the router's clock: still open");

    clock.advance(Duration::from_secs(2));
    router.tick();
    assert!(ports(&router, 20).contains(&9201), "31 s on the router's clock: half-open, a trial goes through");
}

/// A backend's ORCA load report (the `endpoint-load-metrics` header) is read by the gateway and
/// kept with the endpoint, with its age, in the router's status; a garbage report from another
/// backend changes nothing there; a proxy that reads the header itself hands the report to the
/// guard the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_load_report_is_kept_with_its_endpoint_and_a_garbage_one_changes_nothing() {
    // Round robin: both backends answer (P2C + PeakEWMA would keep to the first one measured).
    let policy =
        ServicePolicy { balancer: PluginSpec::builtin("round-robin"), health_check: None, ..ServicePolicy::default() };
    let f = fixture(policy).await;
    let text = "TEXT cpu_utilization=0.25, rps_fractional=40, named_metrics.queue=3";
    let good = Backend::start("good", Behavior { load_report: Some(text), ..Behavior::default() }).await.unwrap();
    let bad = Backend::start("bad", Behavior { load_report: Some("cpu=lots"), ..Behavior::default() }).await.unwrap();
    f.register(&good, true).await;
    f.register(&bad, true).await;
    for _ in 0..20 {
        assert_eq!(f.get("/").await.0, 200);
    }
    let status = f.router.status(&service()).unwrap();
    let of = |b: &Backend| status.endpoints.iter().find(|e| e.address == b.addr().to_string()).unwrap().clone();
    let report = of(&good).load_report.unwrap_or_else(|| panic!("the good backend's report is kept: {status:?}"));
    assert!((report.cpu_utilization - 0.25).abs() < 1e-12 && (report.rps_fractional - 40.0).abs() < 1e-12);
    assert_eq!(report.named_metrics.get("queue"), Some(&3.0));
    assert!(of(&good).load_report_age_ms.is_some_and(|ms| ms < 60_000));
    assert!(of(&bad).load_report.is_none(), "a refused report is not kept");

    // An embedder hands a report it parsed itself to the guard.
    let mut picked = Vec::new();
    let guard = loop {
        let g = f.router.pick(&service(), &mut sextant_plugin::PickRequest::default()).unwrap();
        if g.addr() == bad.addr() {
            break g;
        }
        picked.push(g.addr());
        assert!(picked.len() < 1000, "the bad backend is never picked: {picked:?} {status:?}");
        g.finish(sextant_gateway::Outcome::http(200));
    };
    guard.report_load(sextant_gateway::load_report::parse(r#"JSON {"application_utilization": 0.5}"#).unwrap());
    guard.finish(sextant_gateway::Outcome::http(200));
    let status = f.router.status(&service()).unwrap();
    let bad_now = status.endpoints.iter().find(|e| e.address == bad.addr().to_string()).unwrap();
    assert!(bad_now.load_report.as_ref().is_some_and(|r| (r.effective_utilization() - 0.5).abs() < 1e-12));
}

/// Prequal through a router, backends that report their load only to probes (`GET /load`):
/// the balancer asks for probes (`load.probe`), the router sends them within its rate, the
/// answers reach the balancer as reports (`load.report`), and the traffic follows them: the
/// backend with 1,000 requests in flight gets none once the answers are in, though it says it
/// is faster. The native built-in and the wasm component behave alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prequal_probes_the_backends_and_keeps_off_the_one_with_many_requests_in_flight() {
    for wasm_component in [false, true] {
        // Answers come at the router's maintenance ticks (25 ms). Each worker's instance keeps
        // its own pool, of the probes it asked, and picks at random while it is empty; an
        // answer serves up to 1,000 picks (each adding one to its RIF, so the cold backend's
        // stays below the hot one's) for 30 s, so a slow machine empties no pool.
        let config = r#"{"q_rif": 0.5, "max_age_ms": 30000, "reuse": 1000}"#;
        let native = PluginSpec::Builtin { name: "prequal".into(), config: config.into() };
        let policy = ServicePolicy { balancer: native, health_check: None, ..ServicePolicy::default() };
        let f = fixture(policy).await;
        if wasm_component {
            f.router.load(&service(), PluginKind::Balancer, wasm(f.router.host(), "prequal", config)).unwrap();
        }
        let report = |rif: u32, latency: u32| -> &'static str {
            Box::leak(format!("TEXT named_metrics.rif={rif}, named_metrics.latency_ms={latency}").into_boxed_str())
        };
        let probed = |r| Behavior { load_report: Some(r), load_probe_path: Some("/load"), ..Behavior::default() };
        let hot = Backend::start("hot", probed(report(1000, 1))).await.unwrap();
        let cold = Backend::start("cold", probed(report(1, 3))).await.unwrap();
        f.register(&hot, true).await;
        f.register(&cold, true).await;
        let began = std::time::Instant::now();
        // Until both answers to a probe are kept (no report comes with ordinary answers): a
        // backend counts a probe when it answers it, the router keeps the report when the
        // answer arrives, a moment later.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            assert_eq!(f.get("/").await.0, 200);
            let status = f.router.status(&service()).expect("a service state after a request");
            if status.endpoints.len() == 2 && status.endpoints.iter().all(|e| e.load_report.is_some()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no report from a probe answer within 60 s ({wasm_component}): {} and {} probes answered, {status:?}",
                hot.load_probes(),
                cold.load_probes()
            );
        }
        assert!(hot.load_probes() > 0 && cold.load_probes() > 0, "the reports came from probes");
        // Until every worker's pool holds both answers: 20 requests in a row to the cold
        // backend (a balancer ignoring the reports sends one of 20 there by chance one time
        // in a million).
        let mut in_a_row = 0;
        while in_a_row < 20 {
            let to_cold = cold.served();
            assert_eq!(f.get("/").await.0, 200);
            in_a_row = if cold.served() > to_cold { in_a_row + 1 } else { 0 };
            assert!(
                std::time::Instant::now() < deadline,
                "the hot backend is still picked after 60 s ({wasm_component})"
            );
        }
        let before = (hot.served(), cold.served());
        for _ in 0..100 {
            assert_eq!(f.get("/").await.0, 200);
        }
        let (to_hot, to_cold) = (hot.served() - before.0, cold.served() - before.1);
        assert_eq!(to_hot + to_cold, 100);
        assert!(to_hot <= 3, "the hot backend is avoided: {to_hot} of 100 ({wasm_component})");
        // Probes go on while traffic flows, within the service's rate: 1000 a second (a
        // slower machine only sends fewer).
        let probes = hot.load_probes() + cold.load_probes();
        let bound = 1000.0 * (began.elapsed().as_secs_f64() + 0.1);
        #[allow(clippy::cast_precision_loss)]
        let within = (probes as f64) <= bound;
        assert!(probes > 2 && within, "{probes} probes in {:?}", began.elapsed());
    }
}
