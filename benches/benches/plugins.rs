//! Pick cost of every built-in balancer, native and wasm, at 10 / 100 / 1000 endpoints, with
//! the empty component call (`noop`: a call that returns endpoint 0) measured in the same run
//! as the baseline; the time to swap in a component from the compile cache; and what a
//! rollout adds to a pick (a canary split, a sampled shadow call) against the plain pick of the
//! same stable version, same run.
//!
//! Run: `cargo bench -p sextant-benches --bench plugins`. Every pick goes through
//! `BalancerSlot::pick` (version load, instance lock, call, range check), so the ratios are
//! what a gateway pays. Table-mode balancers (maglev) are executed natively by the host.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sextant_benches::{endpoints, wasm_spec};
use sextant_builtins::mix64;
use sextant_plugin::{BalancerSlot, HostConfig, PickRequest, PluginHost, PluginSpec, Split};

fn host() -> PluginHost {
    PluginHost::new(HostConfig { workers: 1, max_instances: 200, ..HostConfig::default() }).expect("engine")
}

fn bench_slot(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: BenchmarkId,
    slot: &BalancerSlot,
) {
    let mut k = 0u64;
    let mut req = PickRequest::default();
    c.bench_function(id, |b| {
        b.iter(|| {
            k = k.wrapping_add(1);
            req.hash_key = Some(mix64(k));
            black_box(slot.pick(&mut req))
        });
    });
}

fn picks(c: &mut Criterion) {
    let host = host();
    let mut group = c.benchmark_group("pick");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for n in [10usize, 100, 1000] {
        let noop = BalancerSlot::new(&host, "svc", PluginSpec::builtin("round-robin")).expect("slot");
        noop.set_snapshot(endpoints(n));
        noop.load(wasm_spec(&host, "noop", "{}")).expect("noop loads");
        bench_slot(&mut group, BenchmarkId::new("wasm/empty-call", n), &noop);
        for name in sextant_builtins::BALANCERS {
            let native = BalancerSlot::new(&host, "svc", PluginSpec::builtin(name)).expect("slot");
            native.set_snapshot(endpoints(n));
            bench_slot(&mut group, BenchmarkId::new(format!("native/{name}"), n), &native);
            let wasm = BalancerSlot::new(&host, "svc", PluginSpec::builtin("round-robin")).expect("slot");
            wasm.set_snapshot(endpoints(n));
            wasm.load(wasm_spec(&host, name, "{}")).expect("built-in loads");
            bench_slot(&mut group, BenchmarkId::new(format!("wasm/{name}"), n), &wasm);
        }
    }
    group.finish();
}

fn swap(c: &mut Criterion) {
    let host = host();
    let mut group = c.benchmark_group("swap");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3)).sample_size(20);
    let slot = BalancerSlot::new(&host, "svc", PluginSpec::builtin("round-robin")).expect("slot");
    slot.set_snapshot(endpoints(100));
    let specs = [wasm_spec(&host, "round-robin", "{}"), wasm_spec(&host, "peak-ewma", "{}")];
    let mut i = 0;
    group.bench_function("cached-component/100-endpoints", |b| {
        b.iter(|| {
            i += 1;
            slot.load(specs[i % 2].clone()).expect("swap")
        });
    });
    group.finish();
}

/// A pick on a slot running wasm `peak-ewma` (100 endpoints): alone (the baseline), with a
/// wasm `round-robin` candidate taking 10 % of the picks (the split's draw, and the
/// candidate's own pick on its share), and with the candidate shadowing (one pick in 8 also
/// asks the candidate and counts its answer under a lock).
fn rollout(c: &mut Criterion) {
    let host = host();
    let mut group = c.benchmark_group("rollout");
    group.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let slot = |candidate: Option<Split>| {
        let slot = BalancerSlot::new(&host, "svc", PluginSpec::builtin("round-robin")).expect("slot");
        slot.set_snapshot(endpoints(100));
        slot.load(wasm_spec(&host, "peak-ewma", "{}")).expect("stable loads");
        if let Some(split) = candidate {
            slot.set_candidate(wasm_spec(&host, "round-robin", "{}"), split).expect("candidate loads");
        }
        slot
    };
    bench_slot(&mut group, BenchmarkId::new("plain", 100), &slot(None));
    bench_slot(&mut group, BenchmarkId::new("canary-10%", 100), &slot(Some(Split::Canary { per_mille: 100 })));
    bench_slot(&mut group, BenchmarkId::new("shadow", 100), &slot(Some(Split::Shadow)));
    group.finish();
}

criterion_group!(benches, picks, swap, rollout);
criterion_main!(benches);
