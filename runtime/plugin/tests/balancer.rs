//! The balancer slot against real components built from `plugins/`: native and wasm agree,
//! hot swap under 8 picking threads, and every kind of bad plugin.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sextant_builtins::{Endpoint, Snapshot, mix64};
use sextant_plugin::{BalancerSlot, FunctionCacheStats, HostConfig, LoadError, PickRequest, PluginHost, PluginSpec};

fn host(workers: usize) -> PluginHost {
    host_with_deadline(workers, Duration::from_millis(5))
}

fn host_with_deadline(workers: usize, pick_deadline: Duration) -> PluginHost {
    PluginHost::new(HostConfig {
        workers,
        memory_limit: 16 << 20,
        max_instances: 100,
        pick_deadline,
        update_deadline: Duration::from_millis(500),
        ..HostConfig::default()
    })
    .expect("engine")
}

fn wasm(host: &PluginHost, name: &str, config: &str) -> Result<PluginSpec, LoadError> {
    let path = sextant_plugin_artifacts::path(name).unwrap_or_else(|| panic!("no artifact {name}"));
    let bytes = std::fs::read(path).expect("artifact readable");
    Ok(PluginSpec::Wasm { name: name.into(), compiled: host.compile(&bytes)?, config: config.into() })
}

fn snapshot(n: usize) -> Snapshot {
    Snapshot {
        service: "public/DEFAULT_GROUP/shop".into(),
        revision: 7,
        protection_active: false,
        endpoints: (0..n)
            .map(|i| Endpoint {
                id: format!("10.1.0.{i}:80"),
                address: format!("10.1.0.{i}:80"),
                weight: 10 + (i as u32 % 3) * 20,
                healthy: true,
                zone: String::new(),
                version: if i % 3 == 0 { "v2".into() } else { "v1".into() },
                metadata: Vec::new(),
            })
            .collect(),
    }
}

fn picks(slot: &BalancerSlot, n: u64) -> Vec<u32> {
    (0..n)
        .map(|k| {
            let mut req = PickRequest {
                hash_key: (k % 3 != 0).then(|| mix64(k)),
                headers: if k % 2 == 0 { vec![("x-version".into(), "v2".into())] } else { Vec::new() },
                ..PickRequest::default()
            };
            let p = slot.pick(&mut req).expect("an endpoint");
            assert!(!p.fallback, "pick {k} needed the fallback");
            p.index
        })
        .collect()
}

/// A tracker whose clock stands still: balancers that time themselves (`orca-wrr`'s weight
/// period, `c3`'s rate intervals) decide the same however fast each twin runs.
fn frozen() -> Arc<sextant_plugin::LoadTracker> {
    let at = std::time::Instant::now();
    Arc::new(sextant_plugin::LoadTracker::on_clock(Duration::from_secs(10), Arc::new(move || at)))
}

#[test]
fn native_and_wasm_pick_the_same_for_the_same_seed() {
    let host = host(1);
    for name in sextant_builtins::BALANCERS {
        host.reseed(42);
        let native = BalancerSlot::with_tracker(&host, "svc", PluginSpec::builtin(name), frozen()).unwrap();
        host.reseed(1000);
        let slot = BalancerSlot::with_tracker(&host, "svc", PluginSpec::builtin("round-robin"), frozen()).unwrap();
        let spec = wasm(&host, name, "{}").unwrap();
        host.reseed(42);
        slot.load(spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        for s in [&native, &slot] {
            s.set_snapshot(snapshot(10));
            // The same load on both: a few requests in flight at endpoints 1 and 4.
            let published = s.published();
            let guards: Vec<_> =
                [1u32, 1, 4].iter().map(|&i| s.tracker().start(Arc::clone(published.load(i).unwrap()))).collect();
            std::mem::forget(guards);
        }
        let (a, b) = (picks(&native, 500), picks(&slot, 500));
        assert_eq!(a, b, "{name}: native and wasm disagree");
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert!(distinct.len() > 1, "{name}: picks should spread, got {distinct:?}");
    }
}

#[test]
fn hot_swap_under_eight_threads_drops_no_pick() {
    let host = host(4);
    let slot = BalancerSlot::new(&host, "svc", PluginSpec::builtin("round-robin")).unwrap();
    slot.set_snapshot(snapshot(16));
    // Loads 0, 3, 6, ...: ring hash (a fixed key always lands on one endpoint); the others:
    // round robin (0.2.0, one resource per service in shared instances) and a least-in-flight
    // round robin built against the legacy contract 0.1.0 (an instance per worker), so the
    // swaps go both ways between the two contract versions.
    let ring = wasm(&host, "ring-hash", r#"{"balance_factor": 0}"#).unwrap();
    let rr = wasm(&host, "round-robin", "{}").unwrap();
    let legacy = wasm(&host, "legacy", "{}").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (slot, stop) = (slot.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut seen: HashMap<u64, Vec<u32>> = HashMap::new();
                let (mut count, mut dropped, mut fallbacks, mut last_version) = (0u64, 0u64, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) || count < 1000 {
                    let mut req = PickRequest { hash_key: Some(0xfeed), ..PickRequest::default() };
                    match slot.pick(&mut req) {
                        Some(p) if p.fallback => fallbacks += 1,
                        Some(p) => {
                            assert!(
                                p.version >= last_version,
                                "a thread saw version {} after {last_version}",
                                p.version
                            );
                            last_version = p.version;
                            seen.entry(p.version).or_default().push(p.index);
                        }
                        None => dropped += 1,
                    }
                    count += 1;
                }
                (count, dropped, fallbacks, seen)
            })
        })
        .collect();
    let mut kinds = HashMap::new();
    for i in 0..101 {
        let spec = [&ring, &rr, &legacy][i % 3].clone();
        let status = slot.load(spec).expect("swap");
        kinds.insert(status.id, i % 3 == 0);
        // Let the pickers run on this version before the next swap (a synchronisation, not a
        // timing assertion).
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let mut versions = std::collections::BTreeSet::new();
    let mut fallbacks = 0;
    for t in threads {
        let (_, dropped, fell_back, seen) = t.join().expect("picker thread");
        assert_eq!(dropped, 0, "picks answered by nobody");
        fallbacks += fell_back;
        for (version, indices) in seen {
            versions.insert(version);
            // Each pick is consistent with the one version that answered it: a ring-hash
            // version sends the fixed key to one endpoint; a round-robin one spreads (the
            // legacy one too: the first of the least loaded after its previous pick).
            match kinds.get(&version) {
                Some(true) => {
                    assert!(
                        indices.windows(2).all(|w| w[0] == w[1]),
                        "ring-hash version {version} answered {indices:?}"
                    );
                }
                Some(false) if indices.len() >= 16 => {
                    let distinct: std::collections::BTreeSet<_> = indices.iter().collect();
                    assert!(distinct.len() > 1, "round-robin version {version} answered {indices:?}");
                }
                // The built-in that served before the first swap.
                Some(false) | None => {}
            }
        }
    }
    // A swap itself costs no fallback (the new version's resources exist before it is
    // published). A pick whose instance is held by a thread the scheduler put aside for
    // longer than the pick deadline is answered by the native default instead of waiting:
    // on a starved machine, a few in the whole run, never one per swap.
    eprintln!("hot swap: 101 swaps under 8 picking threads, {fallbacks} picks answered by the native default");
    assert!(fallbacks < 101, "{fallbacks} fallbacks over 101 swaps");
    let swapped: std::collections::BTreeSet<_> = kinds.keys().copied().collect();
    let overlap = versions.intersection(&swapped).count();
    assert!(overlap >= 2, "the pickers saw {overlap} of the swapped-in versions while they ran: {versions:?}");
    assert_eq!(slot.status().active.name, "round-robin");
    assert_eq!(slot.status().active.source, "wasm");
}

fn assert_refused(slot: &BalancerSlot, result: Result<PluginSpec, LoadError>, expect: &str) {
    let before = slot.active_version();
    let err = match result {
        Err(e) => e,
        Ok(spec) => slot.load(spec).expect_err("the load must fail"),
    };
    let text = err.to_string();
    assert!(text.contains(expect), "error {text:?} should mention {expect:?}");
    assert_eq!(slot.active_version(), before, "a failed load changed the active version");
    for _ in 0..50 {
        let p = slot.pick(&mut PickRequest::default()).expect("still picking");
        assert!(!p.fallback);
    }
}

#[test]
fn bad_plugins_are_refused_with_a_reason_and_change_nothing() {
    let host = host(2);
    let slot = BalancerSlot::new(&host, "svc", PluginSpec::builtin("round-robin")).unwrap();
    slot.set_snapshot(snapshot(5));
    slot.load(wasm(&host, "weighted", "{}").unwrap()).unwrap();
    let cases: Vec<(&str, Result<PluginSpec, LoadError>, &str)> = vec![
        ("not wasm", host.compile(b"#!/bin/sh\necho hello\n").map(|_| unreachable!()), "not a WebAssembly file"),
        ("core module", host.compile(b"\0asm\x01\0\0\0").map(|_| unreachable!()), "core WebAssembly module"),
        ("garbage component", host.compile(b"\0asm\x0d\0\x01\0\xff\xff").map(|_| unreachable!()), "does not compile"),
        ("other version", wasm(&host, "wrong-version", "{}"), "sextant:plugin/balancer@0.3.0"),
        (
            "both versions",
            wasm(&host, "both-versions", "{}"),
            "two contract versions (sextant:plugin/balancer@0.1.0 and sextant:plugin/balancer@0.2.0)",
        ),
        // A resource constructor that traps (in the self-test's first service).
        (
            "trap in the constructor",
            wasm(&host, "misbehave", r#"{"fault": "trap-new"}"#),
            "self-test failed: constructor trapped",
        ),
        ("other world", wasm(&host, "consecutive", "{}"), "a health plugin cannot go into a balancer slot"),
        ("bad config", wasm(&host, "ring-hash", r#"{"ring_size": 0}"#), "refused its configuration"),
        // A Rust panic: its message (written to stderr) is in the reason.
        ("trap in init", wasm(&host, "misbehave", r#"{"fault": "trap-init"}"#), "trap-init: as configured"),
        ("trap in update", wasm(&host, "misbehave", r#"{"fault": "trap-update"}"#), "trap-update: as configured"),
        ("trap in pick", wasm(&host, "misbehave", r#"{"fault": "trap-pick"}"#), "trap-pick: as configured"),
        ("imports wasi:sockets", wasm(&host, "sockets", "{}"), "imports wasi:sockets/"),
        ("loops in pick", wasm(&host, "misbehave", r#"{"fault": "loop-pick"}"#), "pick missed its deadline"),
        ("loops in update", wasm(&host, "misbehave", r#"{"fault": "loop-update"}"#), "update missed its deadline"),
        ("grows memory", wasm(&host, "misbehave", r#"{"fault": "grow-update"}"#), "exceeded its memory limit"),
        ("out of range", wasm(&host, "misbehave", r#"{"fault": "out-of-range"}"#), "picked endpoint 15 of 8"),
        (
            "none while healthy",
            wasm(&host, "misbehave", r#"{"fault": "none"}"#),
            "picked nothing while 8 endpoints exist",
        ),
        ("refuses updates", wasm(&host, "misbehave", r#"{"fault": "refuse-update"}"#), "refused the update"),
    ];
    for (what, result, expect) in cases {
        eprintln!("case: {what}");
        assert_refused(&slot, result, expect);
    }
    assert_eq!(slot.status().active.name, "weighted", "the plugin loaded first is still active");
}

/// A component that reads its environment, both clocks, random numbers and stdin, looks for
/// files and prints as it starts (what CPython, JavaScript engines and Rust's std do) loads
/// and serves: the host's WASI subset answers (an empty environment, the host's clocks, the
/// seeded generator, an empty stdin, no directory) where those imports used to trap.
#[test]
fn a_plugin_using_the_provided_wasi_loads_and_serves() {
    let host = host(2);
    let slot = BalancerSlot::new(&host, "svc", PluginSpec::builtin("round-robin")).unwrap();
    slot.set_snapshot(snapshot(4));
    let version = slot.load(wasm(&host, "misbehave", r#"{"fault": "use-wasi"}"#).unwrap()).unwrap();
    assert_eq!(slot.active_version(), version.id);
    for _ in 0..8 {
        let p = slot.pick(&mut PickRequest::default()).expect("a pick");
        assert!(!p.fallback && p.index < 4);
    }
    // 2 MiB to stdout: logged up to the cap, nothing else happens.
    let flood = slot.load(wasm(&host, "misbehave", r#"{"fault": "flood-init"}"#).unwrap()).unwrap();
    assert_eq!(slot.active_version(), flood.id);
    assert!(!slot.pick(&mut PickRequest::default()).expect("a pick").fallback);
    let refused = wasm(&host, "sockets", "{}").expect_err("refused at compile");
    assert!(matches!(&refused, LoadError::DeniedImport(i) if i.starts_with("wasi:sockets/")), "{refused}");
}

#[test]
fn live_faults_fall_back_per_pick_then_roll_back() {
    for (fault, counter) in [
        ("trap-pick", "traps"),
        ("loop-pick", "deadline_hits"),
        ("grow-pick", "memory_hits"),
        ("out-of-range", "contract_violations"),
    ] {
        // Touching 16 MiB takes a few ms of CPU on a busy machine: give the memory case a
        // deadline it cannot reach first, so it is the cap that stops it.
        let host = match fault {
            "grow-pick" => host_with_deadline(1, Duration::from_millis(500)),
            _ => host(1),
        };
        let slot = BalancerSlot::new(&host, "svc", PluginSpec::builtin("round-robin")).unwrap();
        slot.set_snapshot(snapshot(4));
        let good = slot.load(wasm(&host, "weighted", "{}").unwrap()).unwrap();
        let config = format!(r#"{{"fault": "{fault}", "after": 100}}"#);
        let bad = slot.load(wasm(&host, "misbehave", &config).unwrap()).unwrap();
        let mut fallbacks = 0;
        // A faulted resource is created again off the request path (the native default
        // answers meanwhile), so the picks until the rollback are bounded by time.
        let limit = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < limit {
            let p = slot.pick(&mut PickRequest::default()).expect("no pick fails");
            assert!(p.index < 4);
            fallbacks += u32::from(p.fallback);
            if fallbacks == 1 && p.fallback {
                // The first fault, counted once under its own kind, before any rollback.
                let c = slot.status().active.counters;
                assert_eq!(slot.active_version(), bad.id, "{fault}: one fault does not roll back");
                let kinds = [
                    ("traps", c.counts.traps),
                    ("deadline_hits", c.counts.deadline_hits),
                    ("memory_hits", c.counts.memory_hits),
                    ("contract_violations", c.counts.contract_violations),
                ];
                for (name, value) in kinds {
                    assert_eq!(value, u64::from(name == counter), "{fault}: {name} after one fault: {c:?}");
                }
                assert_eq!(c.counts.fallbacks, 1, "{fault}: {c:?}");
                assert!(c.counts.calls >= 101, "{fault}: 100 good picks and the faulty one were counted: {c:?}");
            }
            if slot.active_version() != bad.id {
                break;
            }
        }
        let status = slot.status();
        assert_ne!(status.active.id, bad.id, "{fault}: still on the faulty version");
        assert_eq!(status.active.name, "weighted", "{fault}: rolled back to the previous plugin");
        assert!(good.id < status.active.id);
        assert!(fallbacks > 0);
        let last = status.events.last().expect("events");
        assert!(last.what.starts_with("auto-rollback"), "{fault}: {last:?}");
        assert!(
            last.what.contains(match counter {
                "traps" => "trapped",
                "deadline_hits" => "deadline",
                "memory_hits" => "memory",
                _ => "contract",
            }),
            "{fault}: {last:?}"
        );
    }
}

/// The native default that answers for a plugin that faults is told what the request
/// tried: a ring-hash default moves a key on to the endpoint its ring gives next, the one
/// it gives when it is the balancer itself.
#[test]
fn the_native_default_answering_for_a_faulting_plugin_avoids_what_the_request_tried() {
    let host = host(1);
    let slot = BalancerSlot::new(&host, "svc", PluginSpec::builtin("ring-hash")).unwrap();
    slot.set_snapshot(snapshot(8));
    let ask = |key: u64, tried: &[String]| {
        let attempt = u32::try_from(tried.len()).unwrap();
        let mut request = PickRequest { hash_key: Some(key), attempt, tried: tried.to_vec(), ..PickRequest::default() };
        slot.pick_with(&mut request, |published, p| {
            (published.model.endpoints[p.index as usize].address.clone(), p.fallback)
        })
        .expect("a pick")
    };
    let keys: Vec<u64> = (0..16).map(mix64).collect();
    // The built-in as the balancer: each key's endpoint, and where its retry goes.
    let native: Vec<(String, String)> = keys
        .iter()
        .map(|&k| {
            let (first, _) = ask(k, &[]);
            let (next, _) = ask(k, std::slice::from_ref(&first));
            assert_ne!(first, next);
            (first, next)
        })
        .collect();

    // A plugin that answers out of range from its 101st pick on: the default answers.
    let config = r#"{"fault": "out-of-range", "after": 100}"#;
    slot.load(wasm(&host, "misbehave", config).unwrap()).unwrap();
    for _ in 0..100 {
        assert!(!slot.pick(&mut PickRequest::default()).unwrap().fallback);
    }
    let mut by_default = 0;
    for (&k, (first, next)) in keys.iter().zip(&native) {
        let (answer, fallback) = ask(k, std::slice::from_ref(first));
        by_default += u32::from(fallback);
        assert_eq!(&answer, next, "key {k}: the retry goes where the ring sends it next (fallback: {fallback})");
    }
    assert!(by_default > 0, "the native default answered for the plugin");
}

#[test]
fn rollback_and_compile_cache() {
    let host = host(1);
    let slot = BalancerSlot::new(&host, "svc", PluginSpec::builtin("least-request")).unwrap();
    slot.set_snapshot(snapshot(3));
    assert!(slot.rollback().is_err(), "nothing to roll back to");
    let before = host.compiles();
    let a = wasm(&host, "random", "{}").unwrap();
    let b = wasm(&host, "random", "{}").unwrap();
    assert_eq!(host.compiles(), before + 1, "the second compile of the same bytes is a cache hit");
    slot.load(a).unwrap();
    slot.load(b).unwrap();
    assert_eq!(slot.rollback().unwrap().name, "random");
    let back = slot.rollback().unwrap();
    assert_eq!((back.name.as_str(), back.source), ("least-request", "builtin"));
    assert!(slot.pick(&mut PickRequest::default()).is_some());
}

/// A component whose functions another one already compiled (here the same code with a custom
/// section added: other bytes, another hash) takes their machine code from the function cache
/// instead of compiling them again; it picks as the first does.
#[test]
fn a_component_repeating_compiled_functions_takes_them_from_the_function_cache() {
    let host = host(1);
    let bytes = std::fs::read(sextant_plugin_artifacts::path("ring-hash").expect("artifact")).unwrap();
    let first = host.compile(&bytes).unwrap();
    let after_first = host.function_cache();
    assert!(after_first.misses > 0 && after_first.entries > 0, "the first compile fills it: {after_first:?}");
    // A custom section: id 0, its size, then its name.
    let mut other = bytes.clone();
    other.extend_from_slice(&[0, 6, 5]);
    other.extend_from_slice(b"notes");
    let compiles = host.compiles();
    let second = host.compile(&other).unwrap();
    assert_ne!(first.sha256, second.sha256);
    assert_eq!(host.compiles(), compiles + 1, "other bytes: compiled, not taken from the component cache");
    let after_second = host.function_cache();
    let (found, compiled) = (after_second.hits - after_first.hits, after_second.misses - after_first.misses);
    // Most, not all: a few dozen of this component's ~500 functions are compiled again at
    // every compile (their Cranelift IR differs from one compile to the next).
    assert!(found > 5 * compiled, "found {found} functions, compiled {compiled} again: {after_second:?}");
    let picks = |compiled| {
        let slot = BalancerSlot::new(&host, "svc", PluginSpec::builtin("random")).unwrap();
        slot.set_snapshot(snapshot(8));
        slot.load(PluginSpec::Wasm { name: "ring".into(), compiled, config: "{}".into() }).unwrap();
        (0..64).map(|k| slot.pick(&mut PickRequest::with_affinity(&format!("user-{k}"))).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(picks(first), picks(second), "the same picks from found code");

    let none = PluginHost::new(HostConfig { workers: 1, function_cache_bytes: 0, ..HostConfig::default() }).unwrap();
    none.compile(&bytes).unwrap();
    assert_eq!(none.function_cache(), FunctionCacheStats::default(), "0 bytes: no cache");
}

#[test]
fn empty_service_picks_nothing() {
    let host = host(1);
    let slot = BalancerSlot::new(&host, "svc", PluginSpec::builtin("round-robin")).unwrap();
    slot.load(wasm(&host, "maglev", "{}").unwrap()).unwrap();
    assert_eq!(slot.pick(&mut PickRequest::default()), None);
    slot.set_snapshot(snapshot(3));
    assert!(slot.pick(&mut PickRequest::default()).is_some());
    slot.set_snapshot(snapshot(0));
    assert_eq!(slot.pick(&mut PickRequest::default()), None);
}

/// `snapshot(4)` with its last endpoint replaced by a new one (`10.1.0.9:80`).
fn snapshot_with_one_replaced() -> Snapshot {
    let mut s = snapshot(4);
    s.revision = 8;
    s.endpoints[3].id = "10.1.0.9:80".into();
    s.endpoints[3].address = "10.1.0.9:80".into();
    s
}

#[test]
fn an_update_fault_while_serving_keeps_the_plugins_previous_state_counted_as_fallbacks() {
    for (fault, counter) in [("trap-update", "traps"), ("refuse-update", "contract_violations")] {
        // Picks get a deadline no busy machine reaches: the faults under test are updates, and
        // a pick that missed a 5 ms deadline (a descheduled thread) would be answered by the
        // native default and look like the plugin not serving.
        let host = host_with_deadline(1, Duration::from_secs(2));
        let slot = BalancerSlot::new(&host, "svc", PluginSpec::builtin("random")).unwrap();
        slot.set_snapshot(snapshot(4));
        // The self-test runs in an instance of its own; the load creates the service's
        // resource and gives it the current snapshot (its first update): with "after": 2 the
        // second live snapshot is the first to fail.
        let config = format!(r#"{{"fault": "{fault}", "after": 2}}"#);
        let v = slot.load(wasm(&host, "misbehave", &config).unwrap()).unwrap();
        slot.set_snapshot(snapshot(4));
        let id_of = |slot: &BalancerSlot| {
            slot.pick_with(&mut PickRequest::default(), |published, p| {
                (published.model.endpoints[p.index as usize].id.clone(), p.fallback)
            })
            .expect("a pick")
        };
        assert!(!id_of(&slot).1, "{fault}: the plugin serves the snapshot it accepted");

        // Endpoint 3 leaves, 9 arrives, and the plugin fails on that snapshot.
        slot.set_snapshot(snapshot_with_one_replaced());
        // Its previous state is rebuilt off the request path (a pick meanwhile gets the
        // native default's answer); here, at once.
        slot.prepare_now();
        let status = slot.status();
        assert_eq!(status.active.id, v.id, "{fault}: one fault does not roll back");
        let c = status.active.counters;
        let kinds = [
            ("traps", c.counts.traps),
            ("contract_violations", c.counts.contract_violations),
            ("deadline_hits", c.counts.deadline_hits),
        ];
        for (name, value) in kinds {
            assert_eq!(value, u64::from(name == counter), "{fault}: {name}: {c:?}");
        }
        let last = status.events.last().expect("the fault is shown");
        assert!(
            last.what.starts_with("update fault on revision 8") && last.what.ends_with("its previous snapshot serves"),
            "{fault}: {last:?}"
        );
        // The plugin's own round robin over the 4 endpoints it knew (answers 1, 2, 3, 0, ...),
        // mapped to the new snapshot; its answer 3 is gone, so the native default answers
        // that one, from the new snapshot. Every pick is a fallback, and counted.
        let current: Vec<String> = snapshot_with_one_replaced().endpoints.into_iter().map(|e| e.id).collect();
        let fallbacks_before = slot.status().active.counters.counts.fallbacks;
        for k in 0..12 {
            let (id, fallback) = id_of(&slot);
            assert!(fallback, "{fault}: pick {k} is served while the plugin is behind");
            assert!(current.contains(&id), "{fault}: pick {k} answered {id}, which left");
            match k % 4 {
                0 => assert_eq!(id, "10.1.0.1:80", "{fault}: pick {k}"),
                1 => assert_eq!(id, "10.1.0.2:80", "{fault}: pick {k}"),
                3 => assert_eq!(id, "10.1.0.0:80", "{fault}: pick {k}"),
                _ => {}
            }
        }
        assert_eq!(slot.status().active.counters.counts.fallbacks, fallbacks_before + 12, "{fault}");

        // The next snapshot is accepted (the restored instance counts its updates afresh):
        // the plugin serves it, no fallback, once the off-path update is done (here, at once;
        // a pick before then would get the native default's answer).
        slot.set_snapshot(snapshot(4));
        slot.prepare_now();
        let after = slot.status().active.counters.counts.fallbacks;
        for _ in 0..8 {
            assert!(!id_of(&slot).1, "{fault}: back on the current snapshot");
        }
        assert_eq!(slot.status().active.counters.counts.fallbacks, after, "{fault}");
        assert_eq!(slot.active_version(), v.id);
    }
}

/// Preparations of one version run one at a time: callers of `prepare_now` racing each other
/// and the host's off-path thread give a resource that waits for its creation one constructor
/// and one first `update`, not one each (a stateful plugin counts its updates: a second one
/// here would make the next live snapshot its third, which this plugin refuses).
#[test]
fn concurrent_preparations_create_a_waiting_resource_once() {
    for round in 0..30 {
        let host = host_with_deadline(1, Duration::from_secs(2));
        let slot = BalancerSlot::new(&host, "svc", PluginSpec::builtin("random")).unwrap();
        slot.set_snapshot(snapshot(4));
        slot.load(wasm(&host, "misbehave", r#"{"fault": "trap-update", "after": 2}"#).unwrap()).unwrap();
        slot.set_snapshot(snapshot(4));
        // The fault drops the resource; the off-path thread is asked to create another.
        slot.set_snapshot(snapshot_with_one_replaced());
        let start = std::sync::Barrier::new(3);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    start.wait();
                    slot.prepare_now();
                });
            }
        });
        // Whatever the off-path thread still had queued has run once this returns.
        slot.prepare_now();
        assert_eq!(slot.status().active.counters.counts.traps, 1, "round {round}: the fault under test");
        // The restored resource had one update: this is its second, which it accepts.
        slot.set_snapshot(snapshot(4));
        let c = slot.status().active.counters;
        assert_eq!(c.counts.traps, 1, "round {round}: the resource was given its first snapshot twice: {c:?}");
    }
}

/// A published list published with targets hands back, with each pick, the target of the endpoint
/// picked: from the same publication, through native and wasm balancers and across swaps and
/// republications; a published list without targets (or with another type) hands back none.
#[test]
fn a_pick_returns_the_target_published_with_its_endpoint() {
    let host = host(2);
    let slot = BalancerSlot::new(&host, "shop", PluginSpec::builtin("round-robin")).expect("slot");
    let targets = |s: &Snapshot| -> Vec<String> { s.endpoints.iter().map(|e| format!("target of {}", e.id)).collect() };
    for (n, spec) in [(4, None), (7, Some(wasm(&host, "round-robin", "{}").expect("wasm"))), (2, None)] {
        if let Some(spec) = spec {
            slot.load(spec).expect("load");
        }
        let s = snapshot(n);
        slot.set_snapshot_with(s.clone(), targets(&s));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(n * 3) {
            let (target, load, picked) = slot.pick_target::<String>(&mut PickRequest::default()).expect("a target");
            let published = slot.published();
            assert_eq!(target, format!("target of {}", published.model.endpoints[picked.index as usize].id));
            assert!(Arc::ptr_eq(&load, published.load(picked.index).expect("a load cell")));
            seen.insert(target);
        }
        assert_eq!(seen.len(), n, "round robin reaches every target");
    }
    assert!(slot.pick_target::<u64>(&mut PickRequest::default()).is_none(), "targets of another type");
    slot.set_snapshot(snapshot(3));
    assert!(slot.pick_target::<String>(&mut PickRequest::default()).is_none(), "published without targets");
    assert!(slot.pick(&mut PickRequest::default()).is_some(), "the slot still picks indices");
}

#[test]
#[should_panic(expected = "one target per endpoint")]
fn targets_must_match_the_endpoints() {
    let slot = BalancerSlot::new(&host(1), "shop", PluginSpec::builtin("round-robin")).expect("slot");
    slot.set_snapshot_with(snapshot(3), vec![1u32, 2]);
}
