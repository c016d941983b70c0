//! Plugins at fleet scale: 10,000 services of 2 instances each, one balancer bound to all of
//! them, a pick on every service from every worker thread. Measured in one run, in order:
//! the native `least-request` on every service (the baseline), then the same built-in as a
//! 0.2.0 component bound to every service (one instance per worker thread, a resource per
//! service), then the empty component call (`noop`, 0.2.0) the same way; and, for contrast,
//! a 0.1.0 component (one instance per service and worker) on 500 services.
//!
//! Reported: the time to bind the plugin to every service (a load per service's slot, as a
//! `*` binding does), fallbacks (0 expected), RSS over the native run, and the pick cost
//! across all services against the empty call and against native.
//!
//! Run: `cargo bench -p sextant-benches --bench fleet` (`SEXTANT_FLEET_SERVICES=N` for another
//! size). Prints a table; asserts nothing. `cargo test` runs it on a few services and
//! asserts what docs/plugins.md claims of it (0 fallbacks, one instance per worker).

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use sextant_benches::{endpoints, rss_bytes, wasm_spec};
use sextant_plugin::{BalancerSlot, HostConfig, PickRequest, PluginHost, PluginSpec};

const WORKERS: usize = 2;
const ROUNDS: usize = 5;

/// One pick on every service from each of `WORKERS` threads, `ROUNDS` times; the median
/// round's time per pick (per thread), and the fallbacks seen.
fn pick_all(slots: &[BalancerSlot]) -> (f64, u64) {
    pick_all_on(slots, WORKERS)
}

/// [`pick_all`] on `threads` threads.
fn pick_all_on(slots: &[BalancerSlot], threads: usize) -> (f64, u64) {
    let mut per_pick = Vec::new();
    let mut fallbacks = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let fell_back: u64 = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        let mut fell_back = 0u64;
                        let mut req = PickRequest::default();
                        // Each thread walks the services from another start.
                        let n = slots.len();
                        for k in 0..n {
                            let slot = &slots[(k + t * n / threads) % n];
                            match slot.pick(&mut req) {
                                Some(p) if !p.fallback => {}
                                _ => fell_back += 1,
                            }
                        }
                        fell_back
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().expect("picker")).sum()
        });
        fallbacks += fell_back;
        per_pick.push(started.elapsed().as_nanos() as f64 / (slots.len() * threads) as f64);
    }
    per_pick.sort_by(f64::total_cmp);
    (per_pick[ROUNDS / 2] * threads as f64, fallbacks)
}

/// Loads `spec` into every slot; the time it took.
fn bind(slots: &[BalancerSlot], spec: &PluginSpec) -> Duration {
    let started = Instant::now();
    for slot in slots {
        slot.load(spec.clone()).expect("the plugin loads");
    }
    started.elapsed()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let smoke = sextant_benches::smoke();
    let services: usize = std::env::var("SEXTANT_FLEET_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 200 } else { 10_000 });
    let host = PluginHost::new(HostConfig { workers: WORKERS, ..HostConfig::default() }.sized(1000)).expect("engine");
    let start_rss = rss_bytes();
    let slots: Vec<BalancerSlot> = (0..services)
        .map(|i| {
            let name = format!("bench/g/svc-{i}");
            let slot = BalancerSlot::new(&host, &name, PluginSpec::builtin("least-request")).expect("slot");
            let mut snapshot = endpoints(2);
            snapshot.service = name;
            slot.set_snapshot(snapshot);
            slot
        })
        .collect();
    let (native_ns, native_fallbacks) = pick_all(&slots);
    let native_rss = rss_bytes();
    println!(
        "fleet: {services} services × 2 instances, {WORKERS} worker threads; native least-request: {:.1} MiB over the empty process",
        mib(native_rss.saturating_sub(start_rss))
    );

    let mut rows = Vec::new();
    for (plugin, name) in [("least-request (0.2.0)", "least-request"), ("empty call (0.2.0 noop)", "noop")] {
        let spec = wasm_spec(&host, name, "{}");
        let bind_time = bind(&slots, &spec);
        let (ns, fallbacks) = pick_all(&slots);
        let rss = rss_bytes();
        let shared = host.shared_status();
        let status = shared.iter().find(|s| s.name == name).expect("the plugin runs");
        // RSS is read after the first component only: memory given back between runs stays
        // with the allocator, so a later row would carry the earlier one's.
        let rss = rows.is_empty().then(|| mib(rss.saturating_sub(native_rss)));
        rows.push((plugin, bind_time, ns, fallbacks, rss, status.instances, status.resources));
        // Back to native between the two, so each starts from the same state.
        bind(&slots, &PluginSpec::builtin("least-request"));
    }
    if smoke {
        // What docs/plugins.md claims of this run.
        assert_eq!(native_fallbacks, 0, "native least-request fell back");
        for (plugin, _, _, fallbacks, _, instances, _) in &rows {
            assert_eq!(*fallbacks, 0, "{plugin}: 0 fallbacks");
            assert_eq!(*instances, WORKERS as u64, "{plugin}: one instance per worker thread, whatever the services");
        }
        println!("fleet (test): {services} services, 0 fallbacks native and wasm, {WORKERS} instances");
        return;
    }
    let empty_ns = rows.iter().find(|r| r.0.starts_with("empty")).map_or(f64::NAN, |r| r.2);
    // The same three on one service (one slot picked over and over by one thread, caches
    // warm): what the contract costs per call without the fleet's memory traffic.
    let one = |spec: PluginSpec| {
        let slot = BalancerSlot::new(&host, "bench/g/one", PluginSpec::builtin("least-request")).expect("slot");
        slot.set_snapshot(endpoints(2));
        slot.load(spec).expect("loads");
        pick_all_on(&vec![slot; 20_000], 1).0
    };
    let single = [
        one(PluginSpec::builtin("least-request")),
        one(wasm_spec(&host, "least-request", "{}")),
        one(wasm_spec(&host, "noop", "{}")),
        one(wasm_spec(&host, "legacy", r#"{"empty": true}"#)),
    ];

    println!();
    println!(
        "| balancer | services | bind ms | pick ns | × empty call | × native | fallbacks | instances | resources | RSS over native MiB |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| least-request (native) | {services} | - | {native_ns:.0} | {:.2} | 1.00 | {native_fallbacks} | - | - | 0.0 |",
        native_ns / empty_ns
    );
    for (plugin, bind_time, ns, fallbacks, rss, instances, resources) in &rows {
        println!(
            "| {plugin} | {services} | {:.0} | {ns:.0} | {:.2} | {:.2} | {fallbacks} | {instances} | {resources} | {} |",
            bind_time.as_secs_f64() * 1e3,
            ns / empty_ns,
            ns / native_ns,
            rss.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"))
        );
    }

    // The legacy shape, for contrast: an instance per service and worker thread.
    let legacy_services = services.min(500);
    let before = rss_bytes();
    let legacy = wasm_spec(&host, "legacy", "{}");
    let bind_time = bind(&slots[..legacy_services], &legacy);
    let (ns, fallbacks) = pick_all(&slots[..legacy_services]);
    let rss = rss_bytes();
    println!(
        "| legacy least-in-flight (0.1.0) | {legacy_services} | {:.0} | {ns:.0} | {:.2} | {:.2} | {fallbacks} | {} | - | {:.1} |",
        bind_time.as_secs_f64() * 1e3,
        ns / empty_ns,
        ns / native_ns,
        legacy_services * WORKERS,
        mib(rss.saturating_sub(before))
    );
    println!();
    println!(
        "fleet: one service picked 20000 times by one thread: native least-request {:.0} ns, least-request (0.2.0) {:.0} ns, the empty call {:.0} ns: {:.2}× the empty call; the empty call of a 0.1.0 component {:.0} ns",
        single[0],
        single[1],
        single[2],
        single[1] / single[2],
        single[3]
    );
    println!(
        "fleet: RSS over native, per service: least-request 0.2.0 {:.2} KiB; legacy 0.1.0 {:.1} KiB",
        rows.first().and_then(|r| r.4).map_or(f64::NAN, |r| r * 1024.0 / services as f64),
        mib(rss.saturating_sub(before)) * 1024.0 / legacy_services as f64
    );
}
