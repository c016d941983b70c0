//! A reverse proxy in axum with sextant embedded, through the `sextant` crate alone: each
//! request picks an endpoint of one service (`x-user` is the affinity key), is forwarded with
//! hyper, and reports its outcome; `PUT /admin/balancer/{name}` swaps the service's balancer
//! while traffic flows: an empty body loads the built-in `name`, a body is a wasm component.
//!
//! ```sh
//! # against a running `sextant serve` (bash scripts/run), following the service:
//! cargo run -p sextant-examples --example axum-gateway -- \
//!     --server 127.0.0.1:7600 --ca sextant-data/tls/ca.pem --service default/default/orders
//! curl -X PUT localhost:8080/admin/balancer/ring-hash
//! # or on its own: three sample backends, traffic, swaps; fails unless every request succeeded
//! cargo run -p sextant-examples --example axum-gateway -- --self-test
//! ```

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
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

#[derive(Clone)]
struct Proxy {
    router: Router,
    service: ServiceKey,
    client: HttpClient<HttpConnector, Body>,
}

/// Pick, forward, finish.
async fn forward(State(p): State<Proxy>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut pick = PickRequest::from_headers(&parts.headers, Some("x-user"), &[]);
    let guard = match p.router.pick(&p.service, &mut pick) {
        Ok(guard) => guard,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    };
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut upstream =
        axum::http::Request::builder().method(parts.method).uri(format!("http://{}{path}", guard.addr()));
    for (name, value) in parts.headers.iter().filter(|(name, _)| *name != header::HOST) {
        upstream = upstream.header(name, value);
    }
    let Ok(upstream) = upstream.body(body) else {
        return (StatusCode::BAD_REQUEST, "bad request\n").into_response();
    };
    match p.client.request(upstream).await {
        Ok(response) => {
            // The pick is finished when the body ends (the latency the balancer weighs is
            // the whole response's), as a failure if it breaks, unrecorded if the client
            // goes away first.
            let outcome = Outcome::from_response(&response);
            response.map(|body| Body::new(FinishOnEnd::new(body, guard, outcome)))
        }
        Err(e) => {
            guard.finish(Outcome::Failed(e.to_string()));
            (StatusCode::BAD_GATEWAY, "upstream failed\n").into_response()
        }
    }
}

/// Swaps the balancer: the built-in `name`, or the wasm component in the body (compiled on
/// a blocking thread, never on the workers that serve traffic).
async fn swap(State(p): State<Proxy>, Path(name): Path<String>, component: Bytes) -> Response {
    let spec = if component.is_empty() {
        PluginSpec::builtin(&name)
    } else {
        let host = p.router.host().clone();
        match tokio::task::spawn_blocking(move || PluginSpec::wasm(&host, &name, &component)).await {
            Ok(Ok(spec)) => spec,
            Ok(Err(e)) => return (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response(),
            Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        }
    };
    match p.router.load(&p.service, PluginKind::Balancer, spec) {
        Ok(version) => format!("{} is version {}\n", version.name, version.id).into_response(),
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response(),
    }
}

fn app(proxy: Proxy) -> axum::Router {
    axum::Router::new().route("/admin/balancer/{name}", axum::routing::put(swap)).fallback(forward).with_state(proxy)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let service = ServiceKey::parse(&args.service)?;
    let client = HttpClient::builder(TokioExecutor::new()).build_http();
    if args.self_test {
        return self_test(service, client).await;
    }
    let ca = args.ca.ok_or("--ca is needed to follow servers")?;
    let discovery =
        RemoteDiscovery::follow(Client::new(ClientOptions::new(args.servers, ca))?, Scope::Service(service.clone()));
    let router = Router::new(PluginHost::new(HostConfig::default())?, Arc::new(discovery), ServicePolicy::default());
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    axum::serve(listener, app(Proxy { router, service, client })).await?;
    Ok(())
}

/// Three sample backends in a registry of its own; 4 clients send 500 requests each through
/// the proxy while the balancer is swapped every 50 ms (built-ins and a wasm component); every
/// request must succeed.
async fn self_test(
    service: ServiceKey,
    client: HttpClient<HttpConnector, Body>,
) -> Result<(), Box<dyn std::error::Error>> {
    use sextant::gateway::backend::{Backend, Behavior};
    let dir = tempfile::tempdir()?;
    let registry = Registry::start(EmbeddedStore::open(dir.path(), EmbeddedOptions::default())?, 1024).await?;
    let mut backends = Vec::new();
    for name in ["a", "b", "c"] {
        let backend = Backend::start(name, Behavior::default()).await?;
        let mut instance = Instance::new(service.clone(), backend.addr().ip(), backend.addr().port());
        instance.ephemeral = false;
        registry.put(Record::Instance(Arc::new(instance)), None).await?;
        backends.push(backend);
    }
    let router = Router::new(PluginHost::new(HostConfig::default())?, Arc::new(registry), ServicePolicy::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = Proxy { router: router.clone(), service, client: client.clone() };
    let served = tokio::spawn(async move {
        axum::serve(listener, app(proxy))
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|n| {
            let (client, ok, failed) = (client.clone(), Arc::clone(&ok), Arc::clone(&failed));
            tokio::spawn(async move {
                for k in 0..500 {
                    let request = axum::http::Request::get(format!("http://{addr}/orders/{k}"))
                        .header("x-user", format!("user-{n}-{}", k % 7))
                        .body(Body::empty())
                        .expect("a valid request");
                    let good = match client.request(request).await {
                        Ok(r) => {
                            r.status() == StatusCode::OK
                                && http_body_util::BodyExt::collect(r.into_body()).await.is_ok()
                        }
                        Err(_) => false,
                    };
                    if good { &ok } else { &failed }.fetch_add(1, Relaxed);
                }
            })
        })
        .collect();
    let wasm = std::fs::read(sextant_plugin_artifacts::path("round-robin").ok_or("the wasm round-robin is built")?)?;
    let mut swaps = 0u32;
    while clients.iter().any(|c| !c.is_finished()) {
        let (name, body) = match swaps % 4 {
            0 => ("peak-ewma", Vec::new()),
            1 => ("wasm-round-robin", wasm.clone()),
            2 => ("ring-hash", Vec::new()),
            _ => ("least-request", Vec::new()),
        };
        let request =
            axum::http::Request::put(format!("http://{addr}/admin/balancer/{name}")).body(Body::from(body))?;
        let answer = client.request(request).await?;
        if answer.status() != StatusCode::OK {
            return Err(format!("swap to {name} answered {}", answer.status()).into());
        }
        swaps += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in clients {
        c.await?;
    }
    let refused = client
        .request(axum::http::Request::put(format!("http://{addr}/admin/balancer/junk")).body(Body::from("not wasm"))?)
        .await?;
    let _ = stop.send(());
    served.await??;
    // Every guard finished with its body or released: nothing left in flight.
    let left = router.shutdown(Duration::from_secs(10)).await;
    let (ok, failed) = (ok.load(Relaxed), failed.load(Relaxed));
    let served_by: Vec<u64> = backends.iter().map(Backend::served).collect();
    println!(
        "axum-gateway: {ok} requests answered 200, {failed} failed, {swaps} balancer swaps, {left} in flight after the \
         shutdown, per backend {served_by:?}"
    );
    if failed > 0 || ok != 2000 || swaps < 2 || left != 0 || refused.status() != StatusCode::UNPROCESSABLE_ENTITY {
        return Err(format!(
            "expected 2000 answered, 0 failed, swaps, nothing in flight, and junk refused (got {})",
            refused.status()
        )
        .into());
    }
    Ok(())
}
