//! The etcd store against plain etcd, on one local etcd member (Debian's `etcd-server`, started
//! on free loopback ports with a temporary data directory), both measured in the same run:
//!
//! 1. **Write → event**: sequential puts of an instance; for each put, the time until a plain
//!    etcd watch on the prefix sees it and the time until a subscriber of sextant's registry
//!    on the etcd store sees it (etcd watch → store watch → registry view → subscription).
//!    p50 / p99 of each. Goal: sextant p99 ≤ 2× plain.
//! 2. **Registration throughput**: 64 concurrent writers for `SECS` seconds, registering
//!    persistent instances through sextant's registry (`put` returns once the registry's own
//!    view shows the write) vs raw etcd puts of the same JSON; alternating rounds. Goal ≥ 0.5×.
//! 3. **Durable writes, embedded store**: 64 concurrent QUIC clients registering persistent
//!    instances with a sextant QUIC server on the embedded store (each acknowledged after its
//!    fsynced group commit), data directory on the same disk as etcd's, vs the raw etcd puts
//!    of (2); alternating rounds. Goal ≥ 2×. Also prints the writes per commit.
//!
//! `cargo bench -p sextant-benches --bench etcd`; `SEXTANT_BENCH_SECS` (default 5),
//! `SEXTANT_BENCH_EVENTS` (default 2000). Prints numbers; asserts nothing.

#![allow(clippy::print_stdout, clippy::cast_precision_loss, clippy::cast_possible_truncation)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use etcd_client::{Client, WatchOptions};
use sextant_core::{Change, Record, Revision, Scope};
use sextant_proto::Binding;
use sextant_quic::client::{Client as QuicClient, ClientOptions};
use sextant_quic::server::{QuicServer, ServerOptions};
use sextant_quic::tls;
use sextant_store::local_etcd::LocalEtcd;
use sextant_store::{EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, Registry};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn record(n: u32) -> Record {
    sextant_benches::instance(&sextant_benches::service(n as usize % 16), n, 256, false)
}

async fn write_to_event(etcd: &LocalEtcd, registry: &Registry<EtcdStore>, events: u32) {
    let mut raw = Client::connect(etcd.endpoints(), None).await.unwrap();
    let (_watcher, mut plain) =
        raw.watch("/sextant/v1/instances/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let mut sub = registry.subscribe(Scope::All, registry.revision());
    let (mut plain_lat, mut sextant_lat) = (Vec::new(), Vec::new());
    for n in 0..events {
        let record = record(100_000 + n);
        let key = format!("/sextant/v1/{}", record.key().path());
        let start = Instant::now();
        raw.put(key.clone(), record.to_value(), None).await.unwrap();
        // Both watchers are read after the put; each event is timestamped as it is taken.
        let (a, b) = tokio::join!(
            async {
                loop {
                    let resp = plain.message().await.unwrap().unwrap();
                    if resp.events().iter().any(|e| e.kv().is_some_and(|kv| kv.key() == key.as_bytes())) {
                        return start.elapsed();
                    }
                }
            },
            async {
                loop {
                    let event = sub.next().await.unwrap();
                    if matches!(&event.change, Change::Upsert { record: r } if r.key() == record.key()) {
                        return start.elapsed();
                    }
                }
            }
        );
        plain_lat.push(a);
        sextant_lat.push(b);
    }
    plain_lat.sort();
    sextant_lat.sort();
    let (p50a, p99a) = (percentile(&plain_lat, 0.5), percentile(&plain_lat, 0.99));
    let (p50b, p99b) = (percentile(&sextant_lat, 0.5), percentile(&sextant_lat, 0.99));
    println!("write → event, {events} sequential puts (each seen by both watchers):");
    println!("  plain etcd watch          p50 {:8.1} µs  p99 {:8.1} µs", us(p50a), us(p99a));
    println!("  sextant registry (etcd)   p50 {:8.1} µs  p99 {:8.1} µs", us(p50b), us(p99b));
    println!(
        "  ratio sextant / plain     p50 {:.2}×  p99 {:.2}×  (goal p99 ≤ 2×)",
        us(p50b) / us(p50a),
        us(p99b) / us(p99a)
    );
}

/// One of 64 concurrent writers: how it writes a record.
enum Writer {
    /// A raw etcd put of the record's JSON.
    Etcd(Box<Client>),
    /// sextant's registry on the etcd store (`put` returns once its own view shows it).
    Registry(Registry<EtcdStore>),
    /// A QUIC client registering the record as a persistent instance.
    Quic(QuicClient),
}

impl Writer {
    async fn write(&mut self, record: Record) {
        match self {
            Self::Etcd(raw) => {
                raw.put(format!("/sextant/v1/{}", record.key().path()), record.to_value(), None).await.unwrap();
            }
            Self::Registry(registry) => {
                registry.put(record, None).await.unwrap();
            }
            Self::Quic(client) => {
                let Record::Instance(i) = record else { unreachable!("instances only") };
                client.register((*i).clone(), Binding::Persistent).await.expect("register");
            }
        }
    }
}

async fn etcd_writers(etcd: &LocalEtcd) -> Vec<Writer> {
    let mut writers = Vec::new();
    for _ in 0..64 {
        writers.push(Writer::Etcd(Box::new(Client::connect(etcd.endpoints(), None).await.unwrap())));
    }
    writers
}

/// Registrations per second by `writers`, all writing at once during `secs`.
async fn throughput(writers: Vec<Writer>, secs: Duration, base: u32) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (w, mut writer) in (0u32..).zip(writers) {
        let (stop, done) = (stop.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Relaxed) {
                writer.write(record(base + w * 100_000 + n)).await;
                n += 1;
                done.fetch_add(1, Relaxed);
            }
        }));
    }
    let start = Instant::now();
    tokio::time::sleep(secs).await;
    stop.store(true, Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// A QUIC server on an embedded store in `dir`; the store (for its commit counters) and the
/// options to reach it.
async fn embedded_server(dir: &std::path::Path) -> (EmbeddedStore, ClientOptions) {
    let files = tls::ensure_dev_certs(dir).expect("certs");
    let store = EmbeddedStore::open(&dir.join("data"), EmbeddedOptions::default()).expect("store");
    let registry = Registry::start(store.clone(), 64 * 1024).await.expect("registry");
    let config = tls::server_config(&files, None, 1024).expect("tls");
    let server = QuicServer::bind("127.0.0.1:0".parse().expect("addr"), config, registry, ServerOptions::default())
        .expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.run(std::future::pending()));
    (store, ClientOptions::new(vec![addr], files.ca.clone()))
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let etcd = LocalEtcd::start(dir.path(), 1).await.expect("start etcd (bash scripts/setup installs etcd-server)");
        let store = EtcdStore::connect(EtcdOptions::new(etcd.endpoints())).await.unwrap();
        let registry = Registry::start(store, 16 * 1024).await.unwrap();
        assert!(registry.revision() > Revision(0));

        write_to_event(&etcd, &registry, env_num("SEXTANT_BENCH_EVENTS", 2000) as u32).await;

        let secs = Duration::from_secs(env_num("SEXTANT_BENCH_SECS", 5));
        let (mut raw, mut ours) = (Vec::new(), Vec::new());
        for round in 0..2u32 {
            raw.push(throughput(etcd_writers(&etcd).await, secs, 10_000_000 + round * 10_000_000).await);
            let writers = (0..64).map(|_| Writer::Registry(registry.clone())).collect();
            ours.push(throughput(writers, secs, 50_000_000 + round * 10_000_000).await);
        }
        let (raw, ours) = (raw.iter().sum::<f64>() / 2.0, ours.iter().sum::<f64>() / 2.0);
        println!("registration throughput, 64 concurrent writers, 2 alternating rounds of {secs:?}:");
        println!("  raw etcd puts             {raw:9.0} /s");
        println!("  sextant registry.put      {ours:9.0} /s");
        println!("  ratio sextant / raw       {:.2}×  (goal ≥ 0.5×)", ours / raw);

        // 3. Durable writes: the embedded store over QUIC, its data beside etcd's.
        let (embedded, options) = embedded_server(&dir.path().join("embedded")).await;
        let before = embedded.commit_stats();
        let (mut raw, mut quic) = (Vec::new(), Vec::new());
        for round in 0..2u32 {
            raw.push(throughput(etcd_writers(&etcd).await, secs, 100_000_000 + round * 10_000_000).await);
            let mut writers = Vec::new();
            for _ in 0..64 {
                writers.push(Writer::Quic(QuicClient::connect(options.clone()).await.expect("connect")));
            }
            quic.push(throughput(writers, secs, 200_000_000 + round * 10_000_000).await);
        }
        let after = embedded.commit_stats();
        let (raw, quic) = (raw.iter().sum::<f64>() / 2.0, quic.iter().sum::<f64>() / 2.0);
        let per_commit = (after.writes - before.writes) as f64 / (after.commits - before.commits).max(1) as f64;
        println!("durable writes, 64 concurrent writers, 2 alternating rounds of {secs:?}, same disk:");
        println!("  raw etcd puts                     {raw:9.0} /s");
        println!("  sextant over QUIC, embedded store {quic:9.0} /s  ({per_commit:.1} writes per fsynced commit)");
        println!("  ratio sextant / etcd              {:.2}×  (goal ≥ 2×)", quic / raw);
    });
}
