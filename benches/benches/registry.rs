//! Registry benchmarks: registration throughput in process, the cost of reading a service's
//! snapshot against a `DashMap<u64, _>` get measured in the same run, and the cost of one
//! instance's change to a service's published snapshot at 10 and at 10,000 instances.
//!
//! Run: `cargo bench -p sextant-benches --bench registry`. Compare `snapshot_read/*` against
//! `snapshot_read/dashmap_u64_get` (the baseline), `register/*` per element, and
//! `snapshot_change/one_of_10000` against `snapshot_change/one_of_10` (the goal: the same cost,
//! a change does not copy the service; `copy_10000` is what copying it costs).

use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dashmap::DashMap;
use sextant_benches::{instance, service};
use sextant_core::store::Store;
use sextant_core::view::RegistryView;
use sextant_core::{Change, Event, Record, Revision, ServiceSnapshot};
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

/// One instance of a service of `size` changes (its weight), then the view publishes: the
/// event applied, the service's snapshot published.
fn snapshot_change(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot_change");
    for size in [10u32, 10_000] {
        let key = service(0);
        let mut view = RegistryView::new(1024);
        let mut revision = 0u64;
        for n in 0..size {
            revision += 1;
            let event =
                Event { revision: Revision(revision), change: Change::Upsert { record: instance(&key, n, 0, false) } };
            view.apply(&event).expect("apply");
        }
        view.publish();
        let handle = view.directory().handle(&key);
        assert_eq!(handle.load().instances.len(), size as usize);
        let Record::Instance(changing) = instance(&key, size / 2, 0, false) else { unreachable!("an instance") };
        g.bench_function(format!("one_of_{size}"), |b| {
            b.iter(|| {
                revision += 1;
                let mut changed = (*changing).clone();
                changed.weight = u32::try_from(revision % 100).unwrap_or(1) + 1;
                let event = Event {
                    revision: Revision(revision),
                    change: Change::Upsert { record: Record::Instance(Arc::new(changed)) },
                };
                view.apply(&event).expect("apply");
                view.publish();
            });
        });
        if size == 10_000 {
            // What copying the service costs (what a publish did before: every instance's
            // reference into a new list).
            g.bench_function("copy_10000", |b| {
                b.iter(|| handle.load().instances.iter().cloned().collect::<Vec<_>>());
            });
        }
    }
    g.finish();
}

criterion_group!(benches, register, snapshot_read, snapshot_change);
criterion_main!(benches);
