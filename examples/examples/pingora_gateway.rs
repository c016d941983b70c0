//! A pingora proxy with sextant embedded, through the `sextant` crate alone: `upstream_peer`
//! picks an endpoint of one service (`x-user` is the affinity key) and keeps the guard in the
//! request's context, a failed connect is retried on another endpoint within the service's
//! retry budget, and `logging` finishes the guard with the outcome once the response is done.
//!
//! ```sh
//! # against a running `sextant serve` (bash scripts/run), following the service:
//! cargo run -p sextant-examples --example pingora-gateway -- \
//!     --server 127.0.0.1:7600 --ca sextant-data/tls/ca.pem --service default/default/orders
//! # or on its own: three sample backends, traffic, balancers swapped under it, a drained
//! # shutdown; fails unless every request succeeded
//! cargo run -p sextant-examples --example pingora-gateway -- --self-test
//! ```
//!
//! sextant's side (the router's maintenance, discovery, the sample backends and the test's
//! traffic) runs on a tokio runtime of its own; pingora runs its services on runtimes it
//! creates. Picks and finishes are plain calls, so they are made from pingora's threads.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::{Error, ErrorSource, HTTPStatus, HttpPeer, Server};
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use sextant::prelude::*;

#[derive(Debug, Parser)]
struct Args {
    /// sextant servers (QUIC) to follow, repeatable.
    #[arg(long = "server")]
    servers: Vec<SocketAddr>,
    /// CA certificate that signed the servers' certificates.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// The service requests go to.
    #[arg(long, default_value = "default/default/orders")]
    service: String,
    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Run on its own (sample backends, its own registry), send traffic while swapping
    /// balancers, and exit non-zero unless every request succeeded.
    #[arg(long)]
    self_test: bool,
}

/// The proxy: one service behind one router.
struct Gateway {
    router: Router,
    service: ServiceKey,
    /// Attempts made again on another endpoint after a failed connect.
    retries: Arc<AtomicU64>,
}

/// Per request: the pick in progress and the endpoints already tried.
#[derive(Default)]
struct Attempt {
    guard: Option<PickGuard>,
    tried: Vec<SocketAddr>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Attempt;

    fn new_ctx(&self) -> Attempt {
        Attempt::default()
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Attempt) -> pingora::Result<Box<HttpPeer>> {
        // Called again when a connect failed and `fail_to_connect` allowed a retry: that pick
        // is finished as a failure, and the next one avoids its endpoint.
        if let Some(failed) = ctx.guard.take() {
            ctx.tried.push(failed.addr());
            failed.finish(Outcome::Failed("connect failed".into()));
            self.retries.fetch_add(1, Relaxed);
        } else {
            // Once per request, not per attempt: what the retry budget is a share of.
            self.router.count_request(&self.service);
        }
        let mut pick = PickRequest::from_headers(&session.req_header().headers, Some("x-user"), &[]);
        let guard = self
            .router
            .pick_avoiding(&self.service, &mut pick, &ctx.tried)
            .map_err(|e| Error::explain(HTTPStatus(503), e.to_string()))?;
        let peer = HttpPeer::new(guard.addr(), false, String::new());
        ctx.guard = Some(guard);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Attempt,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent: retry on another endpoint, within the attempts and the budget.
        let attempted = u32::try_from(ctx.tried.len()).unwrap_or(u32::MAX).saturating_add(1);
        let plan = self.router.retry_plan(&self.service, attempted);
        e.set_retry(attempted < plan.attempts && self.router.retry_allowed(&self.service));
        e
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Attempt) {
        // No guard: the pick itself was refused (answered 503 above).
        let Some(guard) = ctx.guard.take() else { return };
        let outcome = match (e, session.response_written()) {
            // The client went away: not the endpoint's doing; the guard is released unrecorded.
            (Some(e), _) if matches!(e.esource(), ErrorSource::Downstream) => return,
            (Some(e), _) => Outcome::Failed(e.to_string()),
            (None, Some(head)) => Outcome::from_head(head.status, &head.headers),
            (None, None) => Outcome::Failed("no response".into()),
        };
        guard.finish(outcome);
    }
}

/// Ends `Server::run` when notified (the self-test's stop; a deployment keeps the default
/// signals: SIGTERM graceful, SIGINT fast).
struct Stop(Arc<tokio::sync::Notify>);

#[async_trait]
impl ShutdownSignalWatch for Stop {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let service = ServiceKey::parse(&args.service)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    if args.self_test {
        return self_test(&runtime, service);
    }
    let ca = args.ca.ok_or("--ca is needed to follow servers")?;
    let router = runtime.block_on(async {
        let client = Client::new(ClientOptions::new(args.servers, ca))?;
        let discovery = RemoteDiscovery::follow(client, Scope::Service(service.clone()));
        Ok::<_, Box<dyn std::error::Error>>(Router::new(
            PluginHost::new(HostConfig::default())?,
            Arc::new(discovery),
            ServicePolicy::default(),
        ))
    })?;
    let mut server = Server::new(None)?;
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Gateway { router, service, retries: Arc::default() });
    proxy.add_tcp(&args.listen.to_string());
    server.add_service(proxy);
    server.run_forever()
}

/// Three sample backends in a registry of sextant's own; 4 clients send 500 requests each
/// through pingora while the balancer is swapped every 50 ms (built-ins and a wasm
/// component); then the router is shut down (drained: nothing left in flight) and pingora
/// stopped. Every request must succeed.
fn self_test(runtime: &tokio::runtime::Runtime, service: ServiceKey) -> Result<(), Box<dyn std::error::Error>> {
    use sextant::gateway::backend::{Backend, Behavior};
    let dir = tempfile::tempdir()?;
    let (router, registry, backends) = runtime.block_on(async {
        let registry = Registry::start(EmbeddedStore::open(dir.path(), EmbeddedOptions::default())?, 1024).await?;
        let mut backends = Vec::new();
        for name in ["a", "b", "c"] {
            let backend = Backend::start(name, Behavior::default()).await?;
            let mut instance = Instance::new(service.clone(), backend.addr().ip(), backend.addr().port());
            instance.ephemeral = false;
            registry.put(Record::Instance(Arc::new(instance)), None).await?;
            backends.push(backend);
        }
        let router =
            Router::new(PluginHost::new(HostConfig::default())?, Arc::new(registry.clone()), ServicePolicy::default());
        Ok::<_, Box<dyn std::error::Error>>((router, registry, backends))
    })?;
    // pingora binds the address itself: take a free loopback port.
    let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;

    let mut server = Server::new(None)?;
    server.bootstrap();
    let retries = Arc::new(AtomicU64::new(0));
    let gateway = Gateway { router: router.clone(), service: service.clone(), retries: Arc::clone(&retries) };
    let mut proxy = http_proxy_service(&server.configuration, gateway);
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    let stop = Arc::new(tokio::sync::Notify::new());
    let traffic = runtime.spawn(drive(listen, router, registry, service, Arc::clone(&stop)));
    // Blocks until `drive` notifies `stop`.
    server.run(RunArgs { shutdown_signal: Box::new(Stop(stop)) });
    let report = runtime.block_on(traffic)??;
    let served_by: Vec<u64> = backends.iter().map(Backend::served).collect();
    let retries = retries.load(Relaxed);
    println!(
        "pingora-gateway: {} requests answered 200, {} failed, {} balancer swaps; with a dead endpoint {} of {} \
         answered 200 ({retries} connects retried, the endpoint {}); {} in flight after the shutdown; per backend \
         {served_by:?}",
        report.ok, report.failed, report.swaps, report.dead_ok, DEAD_PHASE, report.dead_health, report.left
    );
    if report.failed > 0 || report.ok != 2000 || report.swaps < 2 || report.left != 0 {
        return Err("expected 2000 answered, 0 failed, swaps, and nothing in flight after the shutdown".into());
    }
    // Out of rotation by outlier ejection or by its breaker, whichever counted first.
    if report.dead_ok != DEAD_PHASE || retries == 0 || !["ejected", "open"].contains(&report.dead_health.as_str()) {
        return Err(
            "expected every request answered past a dead endpoint, by retries, and the endpoint taken out".into()
        );
    }
    Ok(())
}

struct Report {
    ok: u64,
    failed: u64,
    swaps: u32,
    dead_ok: u64,
    dead_health: String,
    left: usize,
}

/// Requests sent while a registered endpoint refuses connections.
const DEAD_PHASE: u64 = 100;

/// The self-test's traffic and swaps, on sextant's runtime.
async fn drive(
    proxy: SocketAddr,
    router: Router,
    registry: Registry<EmbeddedStore>,
    service: ServiceKey,
    stop: Arc<tokio::sync::Notify>,
) -> Result<Report, String> {
    use hyper_util::client::legacy::Client as HttpClient;
    use hyper_util::rt::TokioExecutor;
    let result = async {
        let client = HttpClient::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<bytes::Bytes>>();
        let get = move |path: String, user: String| {
            let client = client.clone();
            async move {
                let request = hyper::Request::get(format!("http://{proxy}{path}"))
                    .header("x-user", user)
                    .body(http_body_util::Empty::new())
                    .map_err(|e| e.to_string())?;
                let response = client.request(request).await.map_err(|e| e.to_string())?;
                let status = response.status();
                http_body_util::BodyExt::collect(response.into_body()).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(status)
            }
        };
        // pingora is listening once it answers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while get("/ready".into(), "probe".into()).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                return Err("pingora did not start listening".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let clients: Vec<_> = (0..4)
            .map(|n| {
                let (get, ok, failed) = (get.clone(), Arc::clone(&ok), Arc::clone(&failed));
                tokio::spawn(async move {
                    for k in 0..500 {
                        let good = get(format!("/orders/{k}"), format!("user-{n}-{}", k % 7)).await;
                        if good.is_ok_and(|s| s == hyper::StatusCode::OK) { &ok } else { &failed }
                            .fetch_add(1, Relaxed);
                    }
                })
            })
            .collect();
        let wasm = std::fs::read(sextant_plugin_artifacts::path("round-robin").ok_or("the wasm round-robin is built")?)
            .map_err(|e| e.to_string())?;
        let mut swaps = 0u32;
        while clients.iter().any(|c| !c.is_finished()) {
            let swapped = match swaps % 4 {
                0 => router.load(&service, PluginKind::Balancer, PluginSpec::builtin("peak-ewma")),
                1 => {
                    router.load_component(&service, PluginKind::Balancer, "wasm-round-robin", wasm.clone(), "{}").await
                }
                2 => router.load(&service, PluginKind::Balancer, PluginSpec::builtin("ring-hash")),
                _ => router.load(&service, PluginKind::Balancer, PluginSpec::builtin("least-request")),
            };
            swapped.map_err(|e| format!("swap {swaps}: {e}"))?;
            swaps += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for c in clients {
            c.await.map_err(|e| e.to_string())?;
        }
        // An endpoint registered but refusing connections (its port bound, then closed), under
        // round robin, one request at a time: each connect to it fails before anything is
        // sent, `fail_to_connect` retries on the next endpoint, and passive health ejects it.
        router.load(&service, PluginKind::Balancer, PluginSpec::builtin("round-robin")).map_err(|e| e.to_string())?;
        let dead =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?;
        let mut instance = Instance::new(service.clone(), dead.ip(), dead.port());
        instance.ephemeral = false;
        let dead_id = instance.id.to_string();
        registry.put(Record::Instance(Arc::new(instance)), None).await.map_err(|e| e.to_string())?;
        let routed = |router: &Router| router.status(&service).map_or(0, |s| s.endpoints.len());
        while routed(&router) < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut dead_ok = 0;
        for k in 0..DEAD_PHASE {
            if get(format!("/dead/{k}"), "u".into()).await == Ok(hyper::StatusCode::OK) {
                dead_ok += 1;
            }
        }
        let dead_health = router
            .status(&service)
            .and_then(|s| s.endpoints.into_iter().find(|e| e.id == dead_id))
            .map_or("gone", |e| e.health)
            .to_owned();

        // Not a component: refused, the active balancer keeps serving.
        let junk = router.load_component(&service, PluginKind::Balancer, "junk", b"not wasm".to_vec(), "{}").await;
        if !matches!(junk, Err(SwapError::Plugin(LoadError::NotWasm))) {
            return Err(format!("junk was not refused as not wasm: {junk:?}"));
        }
        if get("/after-junk".into(), "u".into()).await != Ok(hyper::StatusCode::OK) {
            return Err("the active balancer stopped serving after a refused load".to_owned());
        }
        // Drained: every guard was finished in `logging` (or released).
        let left = router.shutdown(Duration::from_secs(10)).await;
        // A router shut down refuses picks: pingora answers 503.
        let refused = get("/after-shutdown".into(), "u".into()).await;
        if refused != Ok(hyper::StatusCode::SERVICE_UNAVAILABLE) {
            return Err(format!("a pick after the shutdown answered {refused:?}, not 503"));
        }
        Ok(Report { ok: ok.load(Relaxed), failed: failed.load(Relaxed), swaps, dead_ok, dead_health, left })
    }
    .await;
    stop.notify_one();
    result
}
