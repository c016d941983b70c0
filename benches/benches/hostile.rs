//! What a hostile plugin costs the requests around it, measured in one run against a
//! well-behaved one: the gateway's proxy and router (what `sextant gateway` runs) in this
//! process, one route to three loopback backends, 8 keep-alive clients, and the same
//! component (`misbehave`, a round-robin balancer that misbehaves as configured) bound to the
//! route in each phase:
//!
//! 1. well-behaved (`{}`: round robin, nothing else), the baseline;
//! 2. a constructor that spins at run time (`loop-new` once the wall clock passed a moment
//!    after the load; the resources are idle-dropped while traffic pauses, so every
//!    constructor after the pause spins until its deadline);
//! 3. a 200-byte `host.log` line at every pick (`log-pick`);
//! 4. well-behaved again (the gateway is back where it started).
//!
//! Reported per phase: requests, failed requests, client-side p50 / p99 / max, the p99 over
//! the baseline's, the bytes the gateway's log received (a tracing subscriber at `info`,
//! as `sextant gateway` logs) and per second, and the plugin's fallbacks and faults.
//!
//! Run: `cargo bench -p sextant-benches --bench hostile` (`SEXTANT_HOSTILE_SECS=N` for
//! longer phases, default 3). Loopback only; prints a table; asserts nothing. `cargo test`
//! runs it with 1 s phases and asserts what it shows: no failed request, no fallback for
//! the well-behaved plugin, a log within the host's rate.

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sextant_benches::wasm_spec;
use sextant_core::{Instance, Record, ServiceKey};
use sextant_gateway::backend::{Backend, Behavior};
use sextant_gateway::proxy::{Gateway, GatewayConfig, Rule, Upstream};
use sextant_gateway::{Router, ServicePolicy};
use sextant_plugin::{HostConfig, PluginHost, PluginKind, PluginSpec};
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};

const SERVICE: &str = "bench/hostile/web";
const CONNECTIONS: usize = 8;
/// Resources idle for this long are dropped (the spinning constructor then runs again).
const IDLE: Duration = Duration::from_secs(1);

/// A log sink that counts what it is given and keeps nothing.
#[derive(Clone)]
struct Counted(Arc<AtomicU64>);

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.fetch_add(buf.len() as u64, Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One connection's requests for `run`: latencies in µs, and failures.
async fn client(addr: SocketAddr, run: Duration) -> (Vec<u32>, u64) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    let (mut latencies, mut failed) = (Vec::new(), 0);
    let end = Instant::now() + run;
    while Instant::now() < end {
        let started = Instant::now();
        let ok = async {
            sender.ready().await.ok()?;
            let request = http::Request::get(format!("http://{addr}/x")).body(Empty::<Bytes>::new()).ok()?;
            let response = sender.send_request(request).await.ok()?;
            let ok = response.status() == 200;
            response.into_body().collect().await.ok()?;
            Some(ok)
        }
        .await;
        match ok {
            Some(true) => latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX)),
            Some(false) => failed += 1,
            None => {
                failed += 1;
                break;
            }
        }
    }
    (latencies, failed)
}

/// Every client's latencies (sorted) and failures.
async fn load(addr: SocketAddr, run: Duration) -> (Vec<u32>, u64) {
    let tasks: Vec<_> = (0..CONNECTIONS).map(|_| tokio::spawn(client(addr, run))).collect();
    let (mut all, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await.expect("client");
        all.extend(l);
        failed += f;
    }
    all.sort_unstable();
    (all, failed)
}

fn quantile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[i]) / 1e3
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let smoke = sextant_benches::smoke();
    let secs: u64 =
        std::env::var("SEXTANT_HOSTILE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(if smoke { 1 } else { 3 });
    let run = Duration::from_secs(secs);
    let logged = Arc::new(AtomicU64::new(0));
    let sink = Counted(Arc::clone(&logged));
    tracing_subscriber::fmt().with_env_filter("info").with_writer(move || sink.clone()).init();

    let backends = [
        Backend::start("a", Behavior::default()).await.expect("backend"),
        Backend::start("b", Behavior::default()).await.expect("backend"),
        Backend::start("c", Behavior::default()).await.expect("backend"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("data"), EmbeddedOptions::default()).expect("store");
    let registry = Registry::start(store, 1024).await.expect("registry");
    let key = ServiceKey::parse(SERVICE).expect("key");
    for b in &backends {
        let mut instance = Instance::new(key.clone(), b.addr().ip(), b.addr().port());
        instance.ephemeral = false;
        registry.put(Record::Instance(Arc::new(instance)), None).await.expect("registered");
    }
    let host = PluginHost::new(HostConfig { workers: 2, idle_resource: IDLE, ..HostConfig::default() }).expect("host");
    let defaults = ServicePolicy { balancer: PluginSpec::builtin("round-robin"), ..ServicePolicy::default() };
    let router = Router::new(host.clone(), Arc::new(registry.clone()), defaults);
    let rules = vec![Rule::prefix("/", SERVICE)];
    let gateway =
        Gateway::new(GatewayConfig { routes: rules, ..GatewayConfig::default() }, Upstream::Router(router.clone()))
            .expect("gateway");
    let addr = sextant_benches::serve(gateway).await;

    println!(
        "| phase | requests | failed | p50 ms | p99 ms | max ms | p99 / well-behaved | log bytes | log bytes/s | fallbacks | faults |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut baseline = None;
    for (phase, hostile) in [
        ("well-behaved", None),
        ("constructor spins at run time", Some("loop-new")),
        ("host.log at every pick", Some("log-pick")),
        ("well-behaved again", None),
    ] {
        let config = match hostile {
            None => "{}".to_owned(),
            // Constructors spin once the wall clock passed this moment: those of the load
            // return, those after the idle pause below spin.
            Some("loop-new") => format!(r#"{{"fault": "loop-new", "after_unix_ms": {}}}"#, unix_ms() + 500),
            Some(fault) => format!(r#"{{"fault": "{fault}"}}"#),
        };
        let version = router.load(&key, PluginKind::Balancer, wasm_spec(&host, "misbehave", &config)).expect("loads");
        let _ = load(addr, Duration::from_millis(300)).await;
        if hostile == Some("loop-new") {
            // No traffic: the service's resources are idle-dropped, and made again (by a
            // spinning constructor) when traffic returns.
            tokio::time::sleep(IDLE * 3).await;
        }
        let before = router.status(&key).expect("route").balancer;
        let before = before.active.counters;
        let from = logged.load(Relaxed);
        let (latencies, failed) = load(addr, run).await;
        let bytes = logged.load(Relaxed) - from;
        let status = router.status(&key).expect("route").balancer;
        // The version may have been rolled back by now: count from its own status.
        let counters = if status.active.id == version.id { status.active.counters } else { before };
        let faults = counters.counts.faults() - before.counts.faults();
        let p99 = quantile(&latencies, 0.99);
        let base = *baseline.get_or_insert(p99);
        let rolled = if status.active.id == version.id { "" } else { " (rolled back)" };
        println!(
            "| {phase}{rolled} | {} | {failed} | {:.2} | {:.2} | {:.2} | {:.2} | {bytes} | {:.0} | {} | {faults} |",
            latencies.len(),
            quantile(&latencies, 0.5),
            p99,
            quantile(&latencies, 1.0),
            p99 / base,
            bytes as f64 / run.as_secs_f64(),
            counters.counts.fallbacks.saturating_sub(before.counts.fallbacks),
        );
        if smoke {
            // What this run shows: no request fails whatever the plugin does, a well-behaved
            // plugin is never answered for, and the log stays within the host's rate.
            assert_eq!(failed, 0, "{phase}: failed requests");
            assert!(!latencies.is_empty(), "{phase}: requests were served");
            if hostile.is_none() {
                assert_eq!(counters.counts.fallbacks, before.counts.fallbacks, "{phase}: fallbacks");
            }
            let limits = HostConfig::default();
            let bound = (u64::from(limits.log_bytes_per_sec) + u64::from(limits.log_lines_per_sec) * 256) * (secs + 2);
            assert!(bytes <= bound, "{phase}: {bytes} log bytes, over the host's rate ({bound})");
        }
    }
    drop(backends);
}
