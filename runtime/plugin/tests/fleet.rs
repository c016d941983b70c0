//! Plugins at fleet scale (contract 0.2.0): one instance per worker thread serves thousands of
//! services as resources; idle resources are dropped; a plugin that leaks per service or
//! traps in its constructor is contained and counted; the limits are named when a load is
//! refused; a host pinned to 0.1.0 refuses 0.2.0 components and keeps serving legacy ones.

use std::time::Duration;

use sextant_builtins::{Endpoint, Snapshot};
use sextant_plugin::{
    BalancerSlot, Contract, HostConfig, LoadError, PickRequest, PluginHost, PluginSpec, SharedStatus,
};

fn host_with(config: &HostConfig) -> PluginHost {
    PluginHost::new(HostConfig {
        memory_limit: 16 << 20,
        update_deadline: Duration::from_millis(500),
        pick_deadline: Duration::from_millis(5),
        ..config.clone()
    })
    .expect("engine")
}

fn wasm(host: &PluginHost, name: &str, config: &str) -> Result<PluginSpec, LoadError> {
    let path = sextant_plugin_artifacts::path(name).unwrap_or_else(|| panic!("no artifact {name}"));
    let bytes = std::fs::read(path).expect("artifact readable");
    Ok(PluginSpec::Wasm { name: name.into(), compiled: host.compile(&bytes)?, config: config.into() })
}

fn snapshot(service: &str, n: usize) -> Snapshot {
    Snapshot {
        service: service.into(),
        revision: 3,
        protection_active: false,
        endpoints: (0..n)
            .map(|i| Endpoint {
                id: format!("10.2.0.{i}:80"),
                address: format!("10.2.0.{i}:80"),
                weight: 100,
                healthy: true,
                zone: String::new(),
                version: String::new(),
                metadata: Vec::new(),
            })
            .collect(),
    }
}

/// `n` services of 2 endpoints each, each given `spec`; the load's result per service.
fn try_services(host: &PluginHost, n: usize, spec: &PluginSpec) -> Vec<(BalancerSlot, Result<(), LoadError>)> {
    (0..n)
        .map(|i| {
            let name = format!("public/DEFAULT_GROUP/svc-{i}");
            let slot = BalancerSlot::new(host, &name, PluginSpec::builtin("round-robin")).expect("slot");
            slot.set_snapshot(snapshot(&name, 2));
            let loaded = slot.load(spec.clone()).map(drop);
            (slot, loaded)
        })
        .collect()
}

/// `n` services of 2 endpoints each, running `spec`.
fn services(host: &PluginHost, n: usize, spec: &PluginSpec) -> Vec<BalancerSlot> {
    try_services(host, n, spec)
        .into_iter()
        .map(|(slot, loaded)| {
            loaded.unwrap_or_else(|e| panic!("{}: {e}", slot.status().service));
            slot
        })
        .collect()
}

fn shared(host: &PluginHost, name: &str) -> SharedStatus {
    host.shared_status().into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name} is not running"))
}

/// 2,000 services bound to one 0.2.0 balancer on a host whose pool holds 8 instances (a
/// 0.1.0 component would need 2 per service): the load creates a resource per service and
/// worker (the current snapshot checked), every service picks from both worker threads on its own
/// plugin state, with no fallback; the plugin runs 2 instances holding one resource per
/// service and worker used; the resources go when the services' versions do.
#[test]
fn two_thousand_services_share_one_instance_per_worker() {
    let host = host_with(&HostConfig { workers: 2, max_instances: 8, ..HostConfig::default() });
    let spec = wasm(&host, "round-robin", "{}").expect("round-robin");
    let slots = services(&host, 2000, &spec);
    std::thread::scope(|scope| {
        for t in 0..2 {
            let slots = &slots;
            scope.spawn(move || {
                for (i, slot) in slots.iter().enumerate() {
                    // Two picks per service: round robin inside the service's own state.
                    let a = slot.pick(&mut PickRequest::default()).expect("a pick");
                    let b = slot.pick(&mut PickRequest::default()).expect("a pick");
                    assert!(!a.fallback && !b.fallback, "thread {t}, service {i} fell back");
                }
            });
        }
    });
    let status = shared(&host, "round-robin");
    assert_eq!(status.instances, 2, "{status:?}");
    assert!(status.created >= 2000, "one per service at load: {status:?}");
    assert!(status.resources >= 2000 && status.resources <= 4000, "one per service and worker used: {status:?}");
    assert_eq!((status.replaced, status.lost, status.constructor_faults), (0, 0, 0), "{status:?}");
    for slot in &slots {
        assert_eq!(slot.status().active.counters.counts.fallbacks, 0);
    }
    let created = status.created;
    // Another version of the same plugin on every service: the old resources go with it,
    // the new versions hold one per worker each (made at load, so no pick waits for one).
    for slot in &slots {
        slot.load(spec.clone()).expect("reload");
    }
    let status = shared(&host, "round-robin");
    assert_eq!(status.resources, 4000, "{status:?}");
    assert_eq!(status.released, created, "every old resource released: {status:?}");
    drop(slots);
    assert!(host.shared_status().is_empty(), "a plugin no slot runs is stopped");
    assert!(created >= 2000);
}

/// A service that makes no call for `idle_resource` loses its resource (the sweep), and gets
/// a new one, given its current snapshot, off the request path: the pick that found it gone
/// is answered by the native default, the plugin answers once it is made.
#[test]
fn idle_resources_are_dropped_and_created_again_when_needed() {
    // Swept here only, so nothing drops the resources made again before the picks use them.
    let host = host_with(&HostConfig {
        workers: 1,
        idle_resource: Duration::from_millis(50),
        sweep_idle: false,
        ..HostConfig::default()
    });
    let spec = wasm(&host, "least-request", "{}").expect("least-request");
    let slots = services(&host, 3, &spec);
    for slot in &slots {
        assert!(!slot.pick(&mut PickRequest::default()).expect("a pick").fallback);
    }
    let status = shared(&host, "least-request");
    assert_eq!((status.resources, status.created), (3, 3), "made at load, used by the picks: {status:?}");
    // Idleness is counted in the host's epoch ticks (1 ms each, or later on a busy machine):
    // sweep until it has passed, bounded.
    let started = std::time::Instant::now();
    while shared(&host, "least-request").resources > 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "never swept: {:?}", shared(&host, "least-request"));
        std::thread::sleep(Duration::from_millis(20));
        host.sweep_idle();
    }
    let status = shared(&host, "least-request");
    assert_eq!((status.resources, status.dropped_idle), (0, 3), "{status:?}");
    for slot in &slots {
        let p = slot.pick(&mut PickRequest::default()).expect("a pick");
        assert!(p.fallback, "the pick that found its resource gone did not wait for a new one");
        slot.prepare_now();
        let p = slot.pick(&mut PickRequest::default()).expect("a pick");
        assert!(!p.fallback, "the resource made again answers");
        assert_eq!(slot.status().active.counters.counts.fallbacks, 1);
    }
    let status = shared(&host, "least-request");
    assert_eq!((status.resources, status.created), (3, 6), "{status:?}");
}

/// The host sweeps by itself: resources of services that stopped calling are dropped with no
/// call and no `sweep_idle` from its embedder (a router, a server), and the thread ends with
/// the host.
#[test]
fn the_host_drops_idle_resources_by_itself() {
    let host = host_with(&HostConfig { workers: 1, idle_resource: Duration::from_millis(50), ..HostConfig::default() });
    let spec = wasm(&host, "least-request", "{}").expect("least-request");
    let slots = services(&host, 3, &spec);
    for slot in &slots {
        assert!(!slot.pick(&mut PickRequest::default()).expect("a pick").fallback);
    }
    assert_eq!(shared(&host, "least-request").resources, 3);
    let started = std::time::Instant::now();
    while shared(&host, "least-request").resources > 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "never swept: {:?}", shared(&host, "least-request"));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(shared(&host, "least-request").dropped_idle, 3);
    let weak = host.downgrade();
    drop((slots, host));
    // A sweep under way holds the host until it ends, no longer.
    let dropped = std::time::Instant::now();
    while sextant_plugin::PluginHost::upgrade(&weak).is_some() {
        assert!(dropped.elapsed() < Duration::from_secs(60), "the sweeping thread keeps the host alive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A plugin that keeps 1 MiB per service's resource hits its instance's memory cap (16 MiB)
/// after a dozen services: the call that hits it is a fault (a load then refused, naming the
/// memory limit; a pick answered by the native default), the instance is replaced with the
/// resources in it (counted), and the services get new resources on their next calls.
/// Every pick is answered; a well-behaved plugin beside it is untouched.
#[test]
fn a_plugin_leaking_per_service_is_held_by_the_memory_cap_and_counted() {
    let host = host_with(&HostConfig { workers: 1, max_faults: 1000, ..HostConfig::default() });
    let spec = wasm(&host, "misbehave", r#"{"fault": "leak-new", "leak_kib": 1024}"#).expect("misbehave");
    let loaded = try_services(&host, 60, &spec);
    let refused: Vec<String> = loaded.iter().filter_map(|(_, r)| r.as_ref().err().map(ToString::to_string)).collect();
    assert!(!refused.is_empty(), "the cap refused some loads");
    assert!(refused.iter().all(|e| e.contains("exceeded its memory limit")), "{refused:?}");
    let mut fallbacks = 0u64;
    for _ in 0..2 {
        for (slot, _) in &loaded {
            let p = slot.pick(&mut PickRequest::default()).expect("every pick is answered");
            fallbacks += u64::from(p.fallback);
        }
    }
    let status = shared(&host, "misbehave");
    assert!(status.replaced >= 3, "the cap replaced the instance: {status:?}");
    assert!(status.lost >= 10, "resources went with it: {status:?}");
    let memory_hits: u64 = loaded.iter().map(|(s, _)| s.status().active.counters.counts.memory_hits).sum();
    assert_eq!(
        memory_hits + refused.len() as u64,
        status.replaced,
        "each cap hit is counted: on the load it refused or on the service whose pick hit it"
    );
    assert!(fallbacks >= memory_hits, "each cap hit on a pick fell back: {fallbacks} for {status:?}");
    let fine = services(&host, 2, &wasm(&host, "round-robin", "{}").expect("round-robin"));
    for slot in &fine {
        assert!(!slot.pick(&mut PickRequest::default()).expect("a pick").fallback);
    }
}

/// A constructor that traps for some services (the 4th resource of an instance and on): the
/// load of such a service is refused naming the constructor, or its pick falls back, counted;
/// the instance is replaced each time; other services are served by the plugin.
#[test]
fn a_constructor_trapping_for_some_services_falls_back_for_those_and_is_counted() {
    let host = host_with(&HostConfig { workers: 1, max_faults: 1000, ..HostConfig::default() });
    // The self-test makes 2 resources in its own instance: "after": 3 passes it.
    let spec = wasm(&host, "misbehave", r#"{"fault": "trap-new", "after": 3}"#).expect("misbehave");
    let loaded = try_services(&host, 8, &spec);
    // Loads 1 to 3 make resources 1 to 3; the 4th traps (refused; the instance is replaced
    // and the 3 resources in it lost), loads 5 to 7 in the new instance, the 8th traps (3 more
    // lost).
    let refused: Vec<bool> = loaded.iter().map(|(_, r)| r.is_err()).collect();
    assert_eq!(refused, [false, false, false, true, false, false, false, true]);
    let reason = loaded[3].1.as_ref().unwrap_err().to_string();
    assert!(reason.contains("in the constructor") && reason.contains("trap-new: as configured"), "{reason}");
    let status = shared(&host, "misbehave");
    assert_eq!((status.constructor_faults, status.replaced, status.lost), (2, 2, 6), "{status:?}");
    // Picks: every one answered. The 6 services whose resource was lost are answered by the
    // native default while new ones are made off the request path (the 4th of an instance
    // traps again there: counted on that service, and the instance replaced once more).
    let mut fallbacks = 0u64;
    for (slot, _) in &loaded {
        fallbacks += u64::from(slot.pick(&mut PickRequest::default()).expect("every pick is answered").fallback);
    }
    assert_eq!(fallbacks, 6, "the services waiting for a resource, none of them a fault");
    for (slot, _) in &loaded {
        slot.prepare_now();
    }
    let traps: u64 = loaded.iter().map(|(s, _)| s.status().active.counters.counts.traps).sum();
    assert!(traps >= 1, "the 4th resource of an instance traps");
    let status = shared(&host, "misbehave");
    assert_eq!(status.constructor_faults, 2 + traps, "each constructor trap counted on its service: {status:?}");
    let served = loaded
        .iter()
        .filter(|(slot, _)| !slot.pick(&mut PickRequest::default()).expect("every pick is answered").fallback)
        .count();
    assert!(served >= 1, "the services whose resource was made are served by the plugin");
}

/// Limits are named when they refuse a load, and the slot keeps what it ran.
#[test]
fn a_load_past_a_limit_names_the_limit_and_changes_nothing() {
    let host = host_with(&HostConfig { workers: 1, max_plugins: 2, ..HostConfig::default() });
    let slots = services(&host, 1, &wasm(&host, "round-robin", "{}").expect("round-robin"));
    let slot = &slots[0];
    let other = BalancerSlot::new(&host, "public/DEFAULT_GROUP/other", PluginSpec::builtin("round-robin")).unwrap();
    other.load(wasm(&host, "least-request", "{}").unwrap()).expect("the second plugin");
    let before = slot.active_version();
    let refused = slot.load(wasm(&host, "random", "{}").unwrap()).expect_err("a third plugin passes max_plugins");
    let text = refused.to_string();
    assert!(text.contains("2 of 2") && text.contains("--max-plugins"), "{text}");
    assert_eq!(slot.active_version(), before);
    assert!(!slot.pick(&mut PickRequest::default()).expect("a pick").fallback);
    // A running component with another configuration is another plugin.
    let refused = slot.load(wasm(&host, "least-request", "{ }").unwrap()).expect_err("another configuration");
    assert!(refused.to_string().contains("--max-plugins"), "{refused}");

    // The pool: 0.1.0 components take an instance per service and worker.
    let host = host_with(&HostConfig { workers: 1, max_instances: 3, ..HostConfig::default() });
    let legacy = wasm(&host, "legacy", "{}").expect("legacy");
    let mut slots = Vec::new();
    let refused = (0..4)
        .find_map(|i| {
            let slot = BalancerSlot::new(&host, &format!("svc-{i}"), PluginSpec::builtin("round-robin")).unwrap();
            let r = slot.load(legacy.clone()).err();
            slots.push(slot);
            r
        })
        .expect("the pool runs out");
    let text = refused.to_string();
    assert!(text.contains("plugin instances (the pool)") && text.contains("--plugin-instances"), "{text}");
}

/// A host pinned to contract 0.1.0 refuses a 0.2.x component, naming the contract, and serves
/// a legacy component; one pinned to 0.2.0 refuses a 0.2.3 component and serves a 0.2.0 one;
/// ones pinned to 0.2.1 or 0.2.2 refuse a 0.2.3 component; the default host serves them all.
#[test]
fn a_host_pinned_to_the_legacy_contract_refuses_the_new_one() {
    let pinned = host_with(&HostConfig { workers: 1, contract: Contract::V0_1, ..HostConfig::default() });
    let text = wasm(&pinned, "round-robin", "{}").expect_err("0.2.3 on a 0.1.0 host").to_string();
    assert!(text.contains("sextant:plugin/balancer@0.2.3") && text.contains("0.1.0 (pinned"), "{text}");
    let text = wasm(&pinned, "sticky-v020", "{}").expect_err("0.2.0 on a 0.1.0 host").to_string();
    assert!(text.contains("sextant:plugin/balancer@0.2.0") && text.contains("0.1.0 (pinned"), "{text}");
    let pinned_02 = host_with(&HostConfig { workers: 1, contract: Contract::V0_2, ..HostConfig::default() });
    for (contract, speaks) in [
        (Contract::V0_2, "0.2.0 and the legacy 0.1.0 (pinned"),
        (Contract::V0_2_1, "0.2.1, 0.2.0 and the legacy 0.1.0 (pinned"),
        (Contract::V0_2_2, "0.2.2, 0.2.1, 0.2.0 and the legacy 0.1.0 (pinned"),
    ] {
        let pinned = host_with(&HostConfig { workers: 1, contract, ..HostConfig::default() });
        let text = wasm(&pinned, "round-robin", "{}").expect_err("0.2.3 on an older host").to_string();
        assert!(text.contains("sextant:plugin/balancer@0.2.3") && text.contains(speaks), "{text}");
    }
    let slot = BalancerSlot::new(&pinned_02, "svc", PluginSpec::builtin("round-robin")).unwrap();
    slot.set_snapshot(snapshot("svc", 3));
    slot.load(wasm(&pinned_02, "sticky-v020", "{}").expect("a 0.2.0 component")).expect("loads");
    assert!(!slot.pick(&mut PickRequest::default()).expect("a pick").fallback);
    let default = host_with(&HostConfig { workers: 1, ..HostConfig::default() });
    for name in ["legacy", "sticky-v020", "sticky"] {
        let slot = BalancerSlot::new(&default, "svc", PluginSpec::builtin("round-robin")).unwrap();
        slot.set_snapshot(snapshot("svc", 3));
        slot.load(wasm(&default, name, "{}").expect("a component the default host serves")).expect("loads");
        assert!(!slot.pick(&mut PickRequest::default()).expect("a pick").fallback, "{name}");
    }
    let slot = BalancerSlot::new(&pinned, "svc", PluginSpec::builtin("round-robin")).unwrap();
    slot.set_snapshot(snapshot("svc", 3));
    slot.load(wasm(&pinned, "legacy", "{}").expect("a legacy component")).expect("loads");
    assert!(!slot.pick(&mut PickRequest::default()).expect("a pick").fallback);
    assert_eq!(Contract::parse("0.1.0"), Ok(Contract::V0_1));
    assert_eq!(Contract::parse("0.2.0"), Ok(Contract::V0_2));
    assert_eq!(Contract::parse("0.2.1"), Ok(Contract::V0_2_1));
    assert_eq!(Contract::parse("0.2.2"), Ok(Contract::V0_2_2));
    assert_eq!(Contract::parse("0.2.3"), Ok(Contract::V0_2_3));
    assert!(Contract::parse("0.3.0").unwrap_err().contains("0.2.3, 0.2.2, 0.2.1, 0.2.0 and the legacy 0.1.0"));
}
