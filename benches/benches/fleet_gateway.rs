//! Plugins at fleet scale through the gateway: the gateway's proxy and router (what `sextant
//! gateway` runs) following a namespace of 10,000 services of 2 instances each (two loopback
//! backends) over QUIC from a server on an embedded store, in this process (`RemoteDiscovery`
//! with its on-disk cache, as `sextant gateway` runs it), one route per service, every route
//! requested over HTTP. Measured in one run:
//! the native `least-request` on every route (the baseline), then the same built-in as a
//! 0.2.0 component bound to every route (a load per route, as the gateway's plugin follower
//! does for a `*` binding). Reported: bind time, failed requests, fallbacks, RSS over the
//! native run, and the time per request.
//!
//! Run: `cargo bench -p sextant-benches --bench fleet_gateway` (`SEXTANT_FLEET_SERVICES=N` for
//! another size). Loopback only; prints a table; asserts nothing. `cargo test` runs it on a few services and
//! asserts what docs/plugins.md claims of it (0 fallbacks, 0 failed requests).

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sextant_benches::{rss_bytes, wasm_spec};
use sextant_core::{Instance, Record, Scope, ServiceKey};
use sextant_gateway::backend::{Backend, Behavior};
use sextant_gateway::proxy::{Gateway, GatewayConfig, Rule, Upstream};
use sextant_gateway::{Discovery, RemoteDiscovery, Router, ServicePolicy};
use sextant_plugin::{HostConfig, PluginHost, PluginKind, PluginSpec};
use sextant_quic::client::{Client, ClientOptions};
use sextant_quic::server::{QuicServer, ServerOptions};
use sextant_quic::tls;
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};

/// Keep-alive connections sending requests at once.
const CONNECTIONS: usize = 16;

fn service(i: usize) -> String {
    format!("bench/fleet/svc-{i}")
}

/// Requests every route once over `CONNECTIONS` keep-alive connections; failed requests and
/// the time per request.
async fn request_all(addr: SocketAddr, services: usize) -> (u64, f64) {
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                stream.set_nodelay(true).expect("nodelay");
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
                tokio::spawn(conn);
                let mut failed = 0u64;
                for i in (c..services).step_by(CONNECTIONS) {
                    let ok = async {
                        sender.ready().await.ok()?;
                        let request = http::Request::get(format!("http://{addr}/s{i}/x"))
                            .header(http::header::HOST, "fleet")
                            .body(Empty::<Bytes>::new())
                            .ok()?;
                        let response = sender.send_request(request).await.ok()?;
                        let ok = response.status().is_success();
                        response.into_body().collect().await.ok()?;
                        Some(ok)
                    }
                    .await;
                    failed += u64::from(ok != Some(true));
                }
                failed
            })
        })
        .collect();
    let mut failed = 0;
    for t in tasks {
        failed += t.await.expect("requester");
    }
    (failed, started.elapsed().as_nanos() as f64 / services as f64)
}

fn fallbacks(router: &Router, services: usize) -> u64 {
    (0..services)
        .filter_map(|i| router.status(&ServiceKey::parse(&service(i)).ok()?))
        .map(|s| s.balancer.active.counters.counts.fallbacks)
        .sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let smoke = sextant_benches::smoke();
    let services: usize = std::env::var("SEXTANT_FLEET_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 100 } else { 10_000 });
    let backends = [
        Backend::start("a", Behavior::default()).await.expect("backend"),
        Backend::start("b", Behavior::default()).await.expect("backend"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let files = tls::ensure_dev_certs(dir.path()).expect("certificates");
    let store = EmbeddedStore::open(&dir.path().join("data"), EmbeddedOptions::default()).expect("store");
    let registry = Registry::start(store, 64 * 1024).await.expect("registry");
    let started = Instant::now();
    let mut writes = tokio::task::JoinSet::new();
    for i in 0..services {
        for b in &backends {
            let mut instance =
                Instance::new(ServiceKey::parse(&service(i)).expect("key"), b.addr().ip(), b.addr().port());
            instance.ephemeral = false;
            let registry = registry.clone();
            writes.spawn(async move { registry.put(Record::Instance(Arc::new(instance)), None).await.map(drop) });
            while writes.len() >= 64 {
                writes.join_next().await.expect("a write").expect("joined").expect("written");
            }
        }
    }
    while let Some(w) = writes.join_next().await {
        w.expect("joined").expect("written");
    }
    println!("fleet_gateway: {services} services × 2 instances registered in {:.1?}", started.elapsed());

    // The server, and the gateway's discovery following the namespace from it.
    let config = tls::server_config(&files, None, 256).expect("tls");
    let server =
        QuicServer::bind("127.0.0.1:0".parse().expect("address"), config, registry.clone(), ServerOptions::default())
            .expect("bind");
    let quic = server.local_addr().expect("address");
    tokio::spawn(server.run(std::future::pending()));
    let mut options = ClientOptions::new(vec![quic], files.ca.clone());
    options.cache_dir = Some(dir.path().join("cache"));
    let client = Client::new(options).expect("client");
    let started = Instant::now();
    let discovery = RemoteDiscovery::follow(client, Scope::Namespace("bench".parse().expect("namespace")));
    let last = discovery.handle(&ServiceKey::parse(&service(services - 1)).expect("key"));
    while last.load().instances.len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(120), "the namespace never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("fleet_gateway: the gateway's view of the namespace in {:.2?}", started.elapsed());

    let host = PluginHost::new(HostConfig { workers: 2, ..HostConfig::default() }.sized(1000)).expect("engine");
    let native = PluginSpec::builtin("least-request");
    let router = Router::new(
        host.clone(),
        Arc::new(registry.clone()),
        ServicePolicy { balancer: native.clone(), ..ServicePolicy::default() },
    );
    let rules = (0..services).map(|i| Rule::prefix(&format!("/s{i}/"), &service(i))).collect();
    let gateway =
        Gateway::new(GatewayConfig { routes: rules, ..GatewayConfig::default() }, Upstream::Router(router.clone()))
            .expect("gateway");
    let addr = sextant_benches::serve(gateway).await;

    let empty_rss = rss_bytes();
    // Twice: the first creates every route.
    let _ = request_all(addr, services).await;
    let (native_failed, native_ns) = request_all(addr, services).await;
    let native_rss = rss_bytes();
    println!(
        "fleet_gateway: native least-request on every route: {:.1} MiB over the gateway before its routes",
        (native_rss.saturating_sub(empty_rss)) as f64 / (1024.0 * 1024.0)
    );

    let spec = wasm_spec(&host, "least-request", "{}");
    let started = Instant::now();
    let mut refused = 0;
    for i in 0..services {
        let key = ServiceKey::parse(&service(i)).expect("key");
        refused += u64::from(router.load(&key, PluginKind::Balancer, spec.clone()).is_err());
    }
    let bind = started.elapsed();
    let _ = request_all(addr, services).await;
    let (failed, ns) = request_all(addr, services).await;
    let rss = rss_bytes();
    let shared = host.shared_status();
    let status = shared.iter().find(|s| s.name == "least-request");
    println!();
    println!(
        "| balancer | routes | bind ms | refused | failed requests | fallbacks | instances | resources | µs per request | RSS over native MiB |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| least-request (native) | {services} | - | - | {native_failed} | - | - | - | {:.1} | 0.0 |",
        native_ns / 1e3
    );
    println!(
        "| least-request (0.2.0) | {services} | {:.0} | {refused} | {failed} | {} | {} | {} | {:.1} | {:.1} |",
        bind.as_secs_f64() * 1e3,
        fallbacks(&router, services),
        status.map_or(0, |s| s.instances),
        status.map_or(0, |s| s.resources),
        ns / 1e3,
        (rss.saturating_sub(native_rss)) as f64 / (1024.0 * 1024.0)
    );
    if smoke {
        // What docs/plugins.md claims of this run.
        assert_eq!((native_failed, failed, refused), (0, 0, 0), "failed requests (native, wasm), refused binds");
        assert_eq!(fallbacks(&router, services), 0, "0 fallbacks");
    }
    drop(backends);
}
