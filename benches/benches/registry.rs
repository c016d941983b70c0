//! Registry benchmarks: registration throughput in process, and the cost of reading a
//! service's snapshot against a `DashMap<u64, _>` get measured in the same run.
//!
//! Run: `cargo bench -p sextant-benches --bench registry`. Compare `snapshot_read/*` against
//! `snapshot_read/dashmap_u64_get` (the baseline) and `register/*` per element.

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dashmap::DashMap;
use sextant_benches::{instance, service};
use sextant_core::store::Store;
use sextant_core::{Revision, ServiceSnapshot};
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};

const SERVICES: usize = 1000;
const PER_SERVICE: u32 = 10;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

fn register(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = rt.block_on(async { EmbeddedStore::open(dir.path(), EmbeddedOptions::default()) }).expect("open");
    let registry = rt.block_on(Registry::start(store.clone(), 16 * 1024)).expect("registry");
    let lease = rt.block_on(store.grant_lease(Duration::from_secs(3600))).expect("lease");
    // Registrations cycle through 1,000 services of 100 instances (then replace them), so
    // each snapshot rebuild covers a realistic service size.
    let services: Vec<_> = (0..SERVICES).map(service).collect();
    let mut n = 0u32;
    let mut next = move |ephemeral: bool| {
        n = n.wrapping_add(1);
        let m = n % 100_000;
        instance(&services[m as usize % SERVICES], m, 256, ephemeral)
    };
    let mut g = c.benchmark_group("register");
    g.throughput(Throughput::Elements(1));
    g.bench_function("store_put_ephemeral", |b| {
        b.iter_batched(
            || next(true),
            |rec| rt.block_on(store.put(rec, Some(lease))).expect("put"),
            BatchSize::SmallInput,
        );
    });
    g.bench_function("registry_put_ephemeral_visible", |b| {
        b.iter_batched(
            || next(true),
            |rec| rt.block_on(registry.put(rec, Some(lease))).expect("put"),
            BatchSize::SmallInput,
        );
    });
    g.sample_size(20);
    g.bench_function("store_put_persistent_fsync", |b| {
        b.iter_batched(|| next(false), |rec| rt.block_on(store.put(rec, None)).expect("put"), BatchSize::SmallInput);
    });
    g.finish();
}

fn snapshot_read(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = rt.block_on(async {
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open");
        let lease = store.grant_lease(Duration::from_secs(3600)).await.expect("lease");
        for s in 0..SERVICES {
            for i in 0..PER_SERVICE {
                store.put(instance(&service(s), i, 0, true), Some(lease)).await.expect("put");
            }
        }
        let registry = Registry::start(store, 1024).await.expect("registry");
        registry.wait_for(Revision((SERVICES as u64) * u64::from(PER_SERVICE))).await;
        registry
    });
    let keys: Vec<_> = (0..SERVICES).map(service).collect();
    let handles: Vec<_> = keys.iter().map(|k| registry.handle(k)).collect();
    // The baseline: the same snapshots in a DashMap keyed by u64.
    let baseline: DashMap<u64, Arc<ServiceSnapshot>> =
        keys.iter().enumerate().map(|(n, k)| (n as u64, registry.snapshot(k).expect("snapshot"))).collect();
    assert!(handles.iter().all(|h| h.load().instances.len() == PER_SERVICE as usize));

    let mut g = c.benchmark_group("snapshot_read");
    let mut n = 0usize;
    g.bench_function("dashmap_u64_get", |b| {
        b.iter(|| {
            n = (n + 1) % SERVICES;
            baseline.get(&(n as u64)).map(|s| s.instances.len())
        });
    });
    g.bench_function("handle_load", |b| {
        b.iter(|| {
            n = (n + 1) % SERVICES;
            handles[n].load().instances.len()
        });
    });
    g.bench_function("by_name", |b| {
        b.iter(|| {
            n = (n + 1) % SERVICES;
            registry.snapshot(&keys[n]).map(|s| s.instances.len())
        });
    });
    g.finish();
}

criterion_group!(benches, register, snapshot_read);
criterion_main!(benches);
