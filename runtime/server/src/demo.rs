//! `sextant demo`: sample HTTP backends on loopback, registered in an embedded registry, the
//! example HTTP gateway in front of them (router, health checks, wasm balancers), and
//! traffic, with a live view per endpoint. On a timeline scaled to the run's duration, one
//! backend turns slow, one turns flaky, the balancer is hot-swapped to wasm round robin and
//! back to wasm PeakEWMA, and one backend is killed, so a newcomer watches balancing,
//! ejection and a hot swap happen. It stops by itself, or on Ctrl-C.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sextant_core::{Instance, Record, ServiceKey};
use sextant_gateway::backend::{Backend, Behavior};
use sextant_gateway::proxy::{Gateway, GatewayConfig, Rule, Upstream};
use sextant_gateway::{EndpointStatus, HealthCheck, Router, ServicePolicy};
use sextant_plugin::{HostConfig, PluginHost, PluginKind, PluginSpec};
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};

/// The demo's service.
pub const SERVICE: &str = "demo/shop/catalog";

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Total run time; the timeline scales with it.
    pub duration: Duration,
    /// Requests per second sent through the gateway.
    pub rps: u32,
    /// Gateway address.
    pub listen: SocketAddr,
    /// Data directory (default: a temporary one, removed at the end).
    pub data_dir: Option<PathBuf>,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A socket or file.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The demo's data directory could not be opened.
    #[error(transparent)]
    Open(#[from] sextant_store::OpenError),
    /// The registry refused a write.
    #[error(transparent)]
    Registry(#[from] sextant_store::RegistryError),
    /// The plugin host could not start.
    #[error(transparent)]
    Host(#[from] sextant_plugin::HostError),
    /// A built-in component is missing from the build.
    #[error("no built-in component {0}")]
    MissingComponent(String),
    /// A built-in component did not compile.
    #[error(transparent)]
    Plugin(#[from] sextant_plugin::LoadError),
    /// The gateway's configuration was refused.
    #[error(transparent)]
    Gateway(#[from] sextant_gateway::proxy::ConfigError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Client-side counters.
#[derive(Debug, Default)]
struct Totals {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// One second of the demo.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    /// Seconds since start.
    pub t: f64,
    /// What happened last.
    pub event: String,
    /// The active balancer (`name vVERSION`).
    pub balancer: String,
    /// Requests sent, answered 2xx, answered otherwise (client side).
    pub sent: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Answered otherwise or not at all.
    pub failed: u64,
    /// Retries the gateway made.
    pub retries: u64,
    /// Per endpoint, by backend name.
    pub endpoints: Vec<(String, EndpointStatus)>,
}

/// What the run came to.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Requests sent.
    pub sent: u64,
    /// Answered 2xx.
    pub ok: u64,
    /// Answered otherwise or not at all.
    pub failed: u64,
    /// Retries the gateway made.
    pub retries: u64,
    /// Every timeline event, with its second.
    pub events: Vec<(f64, String)>,
    /// Requests each backend served.
    pub served: Vec<(String, u64)>,
}

/// Runs the demo, handing a [`Frame`] to `show` every second, until the duration is over or
/// `stop` completes.
///
/// # Errors
/// When the store, a backend or the gateway cannot start.
#[allow(clippy::too_many_lines)] // one timeline, read top to bottom
pub async fn run(
    options: DemoOptions,
    stop: impl Future<Output = ()>,
    mut show: impl FnMut(&Frame),
) -> Result<Summary, DemoError> {
    let temp = match &options.data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().map_err(io("temporary data dir"))?),
    };
    let dir = options.data_dir.clone().or_else(|| temp.as_ref().map(|t| t.path().to_path_buf())).unwrap_or_default();
    let store = EmbeddedStore::open(&dir, EmbeddedOptions::default())?;
    let registry = Registry::start(store, 1024).await?;
    let service = ServiceKey::parse(SERVICE).expect("the demo's service name is valid");

    let normal = Behavior { latency: Duration::from_millis(5), ..Behavior::default() };
    let mut backends = Vec::new();
    for name in ["b1", "b2", "b3", "b4"] {
        backends.push(Some(Backend::start(name, normal).await.map_err(io("sample backend"))?));
    }
    let names: Vec<(String, String)> =
        backends.iter().flatten().map(|b| (b.addr().to_string(), b.name().to_owned())).collect();
    for b in backends.iter().flatten() {
        let mut i = Instance::new(service.clone(), b.addr().ip(), b.addr().port());
        i.ephemeral = false;
        i.metadata.insert("name".into(), b.name().into());
        registry.put(Record::Instance(Arc::new(i)), None).await?;
    }

    let host = PluginHost::new(HostConfig::default())?;
    let config = ServicePolicy {
        balancer: PluginSpec::builtin("peak-ewma"),
        health: PluginSpec::Builtin {
            name: "standard".into(),
            config: r#"{"active": {"unhealthy_threshold": 2, "healthy_threshold": 2},
                        "passive": {"consecutive_5xx": 3, "base_ejection_ms": 3000, "max_ejection_ms": 15000}}"#
                .into(),
        },
        health_check: Some(HealthCheck::http("/health", Duration::from_millis(500))),
        ..ServicePolicy::default()
    };
    let router = Router::builder(host.clone(), Arc::new(registry.clone()))
        .health_sink(Arc::new(registry.clone()))
        .defaults(config)
        .build();
    let gateway_config = GatewayConfig {
        routes: vec![Rule::prefix("/", SERVICE)],
        attempt_timeout: Duration::from_secs(2),
        ..GatewayConfig::default()
    };
    let gateway = Gateway::new(gateway_config, Upstream::Router(router.clone()))?;
    let listener =
        tokio::net::TcpListener::bind(options.listen).await.map_err(io(format!("gateway on {}", options.listen)))?;
    let gateway_addr = listener.local_addr().map_err(io("gateway address"))?;
    let (stop_gateway, gateway_stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            gateway
                .serve(
                    listener,
                    async {
                        let _ = gateway_stopped.await;
                    },
                    Duration::from_secs(5),
                )
                .await
        })
    };

    let totals = Arc::new(Totals::default());
    let traffic = tokio::spawn(drive(gateway_addr, options.rps, Arc::clone(&totals)));

    let compile = |name: &str| -> Result<PluginSpec, DemoError> {
        let bytes = sextant_plugin_artifacts::builtin_bytes(name)
            .ok_or_else(|| DemoError::MissingComponent(name.to_owned()))?;
        let compiled = host.compile(bytes)?;
        Ok(PluginSpec::Wasm { name: format!("wasm:{name}"), compiled, config: "{}".into() })
    };
    let (wasm_rr, wasm_ewma) = (compile("round-robin")?, compile("peak-ewma")?);

    let started = Instant::now();
    let at = |share: f64| options.duration.mul_f64(share);
    let mut timeline: Vec<(Duration, Step)> = vec![
        (at(0.15), Step::Slow(2)),
        (at(0.35), Step::Flaky(3)),
        (at(0.55), Step::Swap(wasm_rr)),
        (at(0.7), Step::Swap(wasm_ewma)),
        (at(0.85), Step::Kill(1)),
    ];
    timeline.reverse();
    let mut events: Vec<(f64, String)> =
        vec![(0.0, format!("gateway on http://{gateway_addr}, balancer peak-ewma (native)"))];
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut stop => {
                events.push((started.elapsed().as_secs_f64(), "stopped by signal".into()));
                break;
            }
        }
        let elapsed = started.elapsed();
        while timeline.last().is_some_and(|(when, _)| *when <= elapsed) {
            let Some((_, step)) = timeline.pop() else { break };
            let what = match step {
                Step::Slow(n) => {
                    let b = backends[n].as_ref().map(|b| {
                        b.set(Behavior { latency: Duration::from_millis(80), ..normal });
                        b.name().to_owned()
                    });
                    format!("{} turns slow (80 ms): PeakEWMA moves traffic away", b.unwrap_or_default())
                }
                Step::Flaky(n) => {
                    let b = backends[n].as_ref().map(|b| {
                        b.set(Behavior { error_rate: 0.5, ..normal });
                        b.name().to_owned()
                    });
                    format!(
                        "{} turns flaky (50% 503): outlier detection ejects it, retries hide the errors",
                        b.unwrap_or_default()
                    )
                }
                Step::Swap(spec) => {
                    let name = spec.name().to_owned();
                    match router.load(&service, PluginKind::Balancer, spec) {
                        Ok(v) => format!("hot swap: balancer {name} v{} while traffic flows", v.id),
                        Err(e) => format!("hot swap to {name} refused: {e}"),
                    }
                }
                Step::Kill(n) => {
                    let name = backends[n].take().map(|b| {
                        let name = b.name().to_owned();
                        b.kill();
                        name
                    });
                    format!("{} killed: active health checks take it out of rotation", name.unwrap_or_default())
                }
            };
            events.push((elapsed.as_secs_f64(), what));
        }
        let status = router.status(&service);
        let frame = Frame {
            t: elapsed.as_secs_f64(),
            event: events.last().map(|e| e.1.clone()).unwrap_or_default(),
            balancer: status
                .as_ref()
                .map(|s| format!("{} v{}", s.balancer.active.name, s.balancer.active.id))
                .unwrap_or_default(),
            sent: totals.sent.load(Relaxed),
            ok: totals.ok.load(Relaxed),
            failed: totals.failed.load(Relaxed),
            retries: gateway.stats().retries.load(Relaxed),
            endpoints: status
                .map(|s| {
                    s.endpoints
                        .into_iter()
                        .map(|e| {
                            (names.iter().find(|(a, _)| *a == e.address).map(|(_, n)| n.clone()).unwrap_or_default(), e)
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        let mut frame = frame;
        frame.endpoints.sort_by(|a, b| a.0.cmp(&b.0));
        show(&frame);
        if elapsed >= options.duration {
            break;
        }
    }
    traffic.abort();
    let _ = traffic.await;
    let _ = stop_gateway.send(());
    if let Ok(Err(e)) = serving.await {
        tracing::warn!(error = %e, "gateway");
    }
    let served = backends.iter().flatten().map(|b| (b.name().to_owned(), b.served())).collect();
    Ok(Summary {
        sent: totals.sent.load(Relaxed),
        ok: totals.ok.load(Relaxed),
        failed: totals.failed.load(Relaxed),
        retries: gateway.stats().retries.load(Relaxed),
        events,
        served,
    })
}

enum Step {
    Slow(usize),
    Flaky(usize),
    Swap(PluginSpec),
    Kill(usize),
}

/// Open-loop traffic: `rps` requests per second, at most 512 in flight.
async fn drive(gateway: SocketAddr, rps: u32, totals: Arc<Totals>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let limit = Arc::new(tokio::sync::Semaphore::new(512));
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let per_tick = f64::from(rps) / 100.0;
    let mut owed = 0.0;
    let uri: http::Uri = format!("http://{gateway}/items").parse().expect("a valid URI");
    loop {
        ticker.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else { break };
            let (client, totals, uri) = (client.clone(), Arc::clone(&totals), uri.clone());
            totals.sent.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let ok = match client.get(uri).await {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        ok && r.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if ok { &totals.ok } else { &totals.failed }.fetch_add(1, Relaxed);
                drop(permit);
            });
        }
    }
}

/// The frame as a table for a terminal.
#[must_use]
pub fn render(frame: &Frame) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "sextant demo  t={:>5.1}s  balancer {}  service {SERVICE}", frame.t, frame.balancer);
    let _ = writeln!(
        s,
        "client: sent {}  ok {}  failed {}  gateway retries {}",
        frame.sent, frame.ok, frame.failed, frame.retries
    );
    let _ = writeln!(s, "last event: {}", frame.event);
    let _ = writeln!(
        s,
        "{:<5} {:<16} {:>7} {:>8} {:>8} {:>6} {:>6} {:<8} {:>9}",
        "name", "address", "rps", "p50 ms", "p99 ms", "errors", "weight", "health", "in-flight"
    );
    for (name, e) in &frame.endpoints {
        let _ = writeln!(
            s,
            "{:<5} {:<16} {:>7.0} {:>8.1} {:>8.1} {:>6} {:>6} {:<8} {:>9}",
            name, e.address, e.last.rps, e.last.p50_ms, e.last.p99_ms, e.last.errors, e.weight, e.health, e.in_flight
        );
    }
    s
}
