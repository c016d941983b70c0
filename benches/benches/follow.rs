//! A gateway following a namespace, measured at two sizes (1,000 and 100,000 instances, 100
//! per service): a `RemoteDiscovery` (the client library with its on-disk cache, as `sextant
//! gateway` runs it) following the namespace over QUIC from a server on an embedded store in
//! this process. Then 200 registrations, one at a time: for each, the time from the write
//! until the router's snapshot of that service holds the new instance; and the CPU time of
//! the whole process (server, client and follower) per change. The goal: the cost of one
//! change does not grow with the namespace. The initial `Reset` of the large namespace does
//! not fit one frame (4 MiB): it arrives in `reset_chunk` frames.
//!
//! Run: `cargo bench -p sextant-benches --bench follow`. Prints numbers; asserts only that
//! every change arrived.

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use sextant_core::{Instance, Record, Scope, ServiceKey};
use sextant_gateway::{Discovery, RemoteDiscovery};
use sextant_quic::client::{Client, ClientOptions};
use sextant_quic::server::{QuicServer, ServerOptions};
use sextant_quic::tls;
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};

const PER_SERVICE: usize = 100;
const CHANGES: usize = 200;

fn service(s: usize) -> ServiceKey {
    ServiceKey::parse(&format!("big/g/s{s}")).expect("a valid service")
}

fn instance(s: usize, n: usize) -> Record {
    let port = u16::try_from(1 + n).expect("a port");
    let ip = std::net::Ipv4Addr::new(10, 0, u8::try_from(s / 256).expect("s < 65536"), u8::try_from(s % 256).unwrap());
    let mut i = Instance::new(service(s), ip.into(), port);
    i.ephemeral = false;
    Record::Instance(Arc::new(i))
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[at]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    for services in [10, 1000] {
        runtime.block_on(run(services));
    }
}

async fn run(services: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = tls::ensure_dev_certs(dir.path()).expect("certificates");
    let store = EmbeddedStore::open(&dir.path().join("data"), EmbeddedOptions::default()).expect("store");
    let registry = Registry::start(store, 64 * 1024).await.expect("registry");

    let filled = Instant::now();
    let mut writers = Vec::new();
    for w in 0..64 {
        let registry = registry.clone();
        writers.push(tokio::spawn(async move {
            for k in (w..services * PER_SERVICE).step_by(64) {
                registry.put(instance(k / PER_SERVICE, k % PER_SERVICE), None).await.expect("put");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    println!(
        "{} instances in {services} services written in {:.1} s",
        services * PER_SERVICE,
        filled.elapsed().as_secs_f64()
    );

    let config = tls::server_config(&files, None, 256).expect("tls");
    let server = QuicServer::bind("127.0.0.1:0".parse().unwrap(), config, registry.clone(), ServerOptions::default())
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let mut options = ClientOptions::new(vec![addr], files.ca.clone());
    options.cache_dir = Some(dir.path().join("cache"));
    let client = Client::new(options).expect("client");
    let synced = Instant::now();
    let discovery = RemoteDiscovery::follow(client, Scope::Namespace("big".parse().unwrap()));
    let last = discovery.handle(&service(services - 1));
    while last.load().instances.len() < PER_SERVICE {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("initial view of the namespace in {:.2} s", synced.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut latencies = Vec::with_capacity(CHANGES);
    let cpu = cpu_time::ProcessTime::now();
    let wall = Instant::now();
    for c in 0..CHANGES {
        let s = (c * 7) % services;
        let handle = discovery.handle(&service(s));
        let before = handle.load().instances.len();
        let started = Instant::now();
        registry.put(instance(s, PER_SERVICE + c), None).await.expect("put");
        while handle.load().instances.len() == before {
            assert!(started.elapsed() < Duration::from_secs(30), "change {c} never arrived");
            tokio::task::yield_now().await;
        }
        latencies.push(started.elapsed());
    }
    let cpu = cpu.elapsed();
    let wall = wall.elapsed();
    latencies.sort();
    println!(
        "one change in a namespace of {} instances, {CHANGES} changes: until the router sees it p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; process CPU per change {:.2} ms ({:.2} s CPU in {:.2} s)",
        services * PER_SERVICE,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().expect("changes").as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e3 / CHANGES as f64,
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
    );
    let _ = stop.send(());
    let _ = task.await;
}
