//! One flooding client against 50 ordinary ones, on one QUIC server (loopback, in-process).
//!
//! Each ordinary client (a token of its own, one connection) sends a `get_service` every
//! 20 ms; the flooder (token `flood`, one connection) sends `get_service` from 64 concurrent
//! tasks as fast as the server answers. Three phases, each measured the same way in this run:
//! 1. baseline: no flooder;
//! 2. flood without a rate limit;
//! 3. flood with a rate limit of 500 requests/s per client (an ordinary client sends 50/s,
//!    so only the flooder meets it).
//!
//! Reported: the ordinary clients' p50 / p99 / max latency and failures, the flooder's
//! answered and `limited` counts, and each phase's p99 as a ratio of the baseline's.
//!
//! Run: `cargo bench -p sextant-benches --bench flood`. Prints numbers; asserts nothing.

#![allow(clippy::print_stdout, clippy::cast_precision_loss, clippy::cast_possible_truncation)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sextant_core::{Instance, ServiceKey};
use sextant_proto::acl::Acl;
use sextant_proto::{Binding, ErrorCode, Request};
use sextant_quic::access::{Access, Limits};
use sextant_quic::client::{Client, ClientOptions};
use sextant_quic::server::{QuicServer, ServerOptions};
use sextant_quic::tls;
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};

const ORDINARY: usize = 50;
const INTERVAL: Duration = Duration::from_millis(20);
const FLOOD_TASKS: usize = 64;
const PHASE: Duration = Duration::from_secs(5);

/// A token per ordinary client (`gw0`..), and the flooder's.
fn acl() -> Acl {
    let mut tokens: Vec<String> = (0..ORDINARY)
        .map(|i| format!(r#"{{"name":"gw{i}","token":"gw{i}","namespaces":{{"bench":"write"}}}}"#))
        .collect();
    tokens.push(r#"{"name":"flood","token":"flood","namespaces":{"bench":"write"}}"#.into());
    Acl::from_json(&format!(r#"{{"tokens":[{}]}}"#, tokens.join(","))).expect("acl")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Phase {
    name: &'static str,
    latencies: Vec<Duration>,
    failures: u64,
    flood_ok: u64,
    flood_limited: u64,
}

async fn phase(name: &'static str, flood: bool, limits: Limits) -> Phase {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = tls::ensure_dev_certs(dir.path()).expect("certs");
    let store = EmbeddedStore::open(&dir.path().join("data"), EmbeddedOptions::default()).expect("store");
    let registry = Registry::start(store, 4096).await.expect("registry");
    let config = tls::server_config(&files, None, 1024).expect("tls");
    let access = Arc::new(Access::new(acl(), limits));
    let options = ServerOptions { access, ..ServerOptions::default() };
    let server = QuicServer::bind("127.0.0.1:0".parse().expect("addr"), config, registry, options).expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.run(std::future::pending()));
    let client = |token: &str| {
        let mut o = ClientOptions::new(vec![addr], files.ca.clone());
        o.token = Some(token.to_owned());
        Client::new(o).expect("client")
    };
    let service = ServiceKey::parse("bench/g/orders").expect("service");
    client("gw0")
        .register(Instance::new(service.clone(), "127.0.0.1".parse().expect("ip"), 80), Binding::Persistent)
        .await
        .expect("register");
    let get = || Request::GetService { service: service.clone() };

    let stop = Arc::new(AtomicBool::new(false));
    let (flood_ok, flood_limited) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut flooders = Vec::new();
    if flood {
        let flooder = client("flood");
        flooder.ping().await.expect("flooder connects");
        for _ in 0..FLOOD_TASKS {
            let (flooder, stop, ok, limited, request) =
                (flooder.clone(), stop.clone(), flood_ok.clone(), flood_limited.clone(), get());
            flooders.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match flooder.request(request.clone()).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) if e.code() == Some(ErrorCode::Limited) => limited.fetch_add(1, Ordering::Relaxed),
                        Err(_) => 0,
                    };
                }
            }));
        }
        // Let the flood reach its pace before measuring.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut ordinary = Vec::new();
    for i in 0..ORDINARY {
        let (c, request) = (client(&format!("gw{i}")), get());
        ordinary.push(tokio::spawn(async move {
            c.ping().await.expect("connects");
            let (mut latencies, mut failures) = (Vec::new(), 0u64);
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let end = Instant::now() + PHASE;
            while Instant::now() < end {
                tick.tick().await;
                let start = Instant::now();
                match c.request(request.clone()).await {
                    Ok(_) => latencies.push(start.elapsed()),
                    Err(_) => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let (mut latencies, mut failures) = (Vec::new(), 0);
    for task in ordinary {
        let (l, f) = task.await.expect("client task");
        latencies.extend(l);
        failures += f;
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    latencies.sort();
    Phase {
        name,
        latencies,
        failures,
        flood_ok: flood_ok.load(Ordering::Relaxed),
        flood_limited: flood_limited.load(Ordering::Relaxed),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let limited = Limits {
        requests_per_second: NonZeroU32::new(500),
        burst: NonZeroU32::new(500).expect("burst"),
        ..Limits::default()
    };
    let phases = runtime.block_on(async {
        vec![
            phase("baseline (no flood)", false, Limits::unlimited()).await,
            phase("flood, no rate limit", true, Limits::unlimited()).await,
            phase("flood, 500/s per client", true, limited).await,
        ]
    });
    let base_p99 = percentile(&phases[0].latencies, 0.99);
    println!(
        "flood: {ORDINARY} clients x 1 get_service / {} ms, flooder {FLOOD_TASKS} tasks, {} s per phase",
        INTERVAL.as_millis(),
        PHASE.as_secs()
    );
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12} {:>10}",
        "phase", "requests", "failed", "p50 ms", "p99 ms", "max ms", "flood ok", "flood limited", "p99 ratio"
    );
    for p in &phases {
        let p99 = percentile(&p.latencies, 0.99);
        println!(
            "{:<28} {:>9} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>12} {:>12} {:>9.2}x",
            p.name,
            p.latencies.len(),
            p.failures,
            ms(percentile(&p.latencies, 0.5)),
            ms(p99),
            ms(p.latencies.last().copied().unwrap_or_default()),
            p.flood_ok,
            p.flood_limited,
            p99.as_secs_f64() / base_p99.as_secs_f64().max(1e-9),
        );
    }
}
