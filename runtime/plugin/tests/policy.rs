//! Health and scheduler slots with the wasm built-ins.

use sextant_builtins::{Endpoint, EndpointStats, Outcome, ProbeResult, Snapshot, Status, Verdict};
use sextant_plugin::{HealthSlot, HostConfig, PluginHost, PluginSpec, SchedulerSlot};

fn spec(host: &PluginHost, name: &str, config: &str) -> PluginSpec {
    let bytes = std::fs::read(sextant_plugin_artifacts::path(name).expect("artifact")).expect("readable");
    PluginSpec::Wasm { name: name.into(), compiled: host.compile(&bytes).expect("compiles"), config: config.into() }
}

fn snapshot(versions: &[&str]) -> Snapshot {
    Snapshot {
        endpoints: versions
            .iter()
            .enumerate()
            .map(|(i, v)| Endpoint {
                id: format!("e{i}"),
                weight: 100,
                healthy: true,
                version: (*v).into(),
                ..Endpoint::default()
            })
            .collect(),
        ..Snapshot::default()
    }
}

#[test]
fn wasm_health_policies_decide_like_the_native_ones() {
    let host = PluginHost::new(HostConfig { workers: 1, max_instances: 50, ..HostConfig::default() }).unwrap();
    let config = r#"{"unhealthy_threshold": 3, "healthy_threshold": 2}"#;
    let native =
        HealthSlot::new(&host, "svc", PluginSpec::Builtin { name: "consecutive".into(), config: config.into() })
            .unwrap();
    let wasm = HealthSlot::new(&host, "svc", PluginSpec::builtin("consecutive")).unwrap();
    wasm.load(spec(&host, "consecutive", config)).unwrap();
    let script = [
        Status::Timeout,
        Status::Timeout,
        Status::Failed("reset".into()),
        Status::Http(200),
        Status::Http(200),
        Status::Http(500),
    ];
    for slot in [&native, &wasm] {
        slot.set_snapshot(snapshot(&["v1", "v1"]));
    }
    let verdicts = |slot: &HealthSlot| -> Vec<Verdict> {
        script
            .iter()
            .map(|s| slot.on_probe(&ProbeResult { endpoint: 1, status: s.clone(), latency: 1, body: Vec::new() }))
            .collect()
    };
    let (a, b) = (verdicts(&native), verdicts(&wasm));
    assert_eq!(a, b);
    assert_eq!(a[2], Verdict::Unhealthy);
    assert_eq!(a[4], Verdict::Healthy);

    let outlier = HealthSlot::new(&host, "svc", PluginSpec::builtin("consecutive")).unwrap();
    outlier.load(spec(&host, "outlier", r#"{"consecutive_5xx": 2, "base_ejection_ms": 1000}"#)).unwrap();
    outlier.set_snapshot(snapshot(&["v1"]));
    let o = Outcome { endpoint: 0, status: Status::Http(502), latency: 1 };
    assert_eq!(outlier.on_outcome(&o), Verdict::Unchanged);
    assert_eq!(outlier.on_outcome(&o), Verdict::Eject(1000));
    assert_eq!(outlier.status().active.source, "wasm");
}

#[test]
fn wasm_gray_split_and_slot_errors() {
    let host = PluginHost::new(HostConfig { workers: 1, max_instances: 50, ..HostConfig::default() }).unwrap();
    let slot = SchedulerSlot::new(&host, "svc", PluginSpec::builtin("slow-start")).unwrap();
    slot.set_snapshot(snapshot(&["v1", "v1", "v2"]));
    let err = slot.load(spec(&host, "maglev", "{}")).unwrap_err().to_string();
    assert!(err.contains("a balancer plugin cannot go into a scheduler slot"), "{err}");
    let err = slot.load(spec(&host, "gray-split", r#"{"split": {}}"#)).unwrap_err().to_string();
    assert!(err.contains("refused its configuration"), "{err}");
    assert_eq!(slot.status().active.name, "slow-start");
    slot.load(spec(&host, "gray-split", r#"{"split": {"v1": 90, "v2": 10}}"#)).unwrap();
    let w = slot.schedule(&[EndpointStats::default(); 3]);
    let total: u32 = w.iter().sum();
    assert!((f64::from(w[2]) / f64::from(total) - 0.1).abs() < 0.001, "{w:?}");
    assert_eq!(slot.rollback().unwrap().name, "slow-start");
    assert!(slot.rollback().is_err());
}

/// Outcomes reported on the request path reach the policy when drained, in order, with their
/// verdicts; those reported against an older snapshot are discarded (their indices may name
/// other endpoints now); a full queue drops and counts.
#[test]
fn reported_outcomes_are_drained_in_order_and_an_old_snapshot_s_are_discarded() {
    let host = PluginHost::new(HostConfig { workers: 1, max_instances: 50, ..HostConfig::default() }).unwrap();
    let config = r#"{"consecutive_5xx": 3, "base_ejection_ms": 1000}"#;
    let slot =
        HealthSlot::new(&host, "svc", PluginSpec::Builtin { name: "outlier".into(), config: config.into() }).unwrap();
    slot.set_snapshot(snapshot(&["v1", "v1"]));
    let epoch = slot.epoch();
    let failed = |endpoint| Outcome { endpoint, status: Status::Http(502), latency: 1 };
    assert!(slot.drain().is_empty(), "nothing reported");
    // Two failures on endpoint 1, one success in between on endpoint 0, then the third.
    for o in [failed(1), Outcome { endpoint: 0, status: Status::Http(200), latency: 1 }, failed(1)] {
        assert!(slot.report(epoch, o));
    }
    assert!(slot.drain().is_empty(), "two failures eject no one");
    assert!(slot.report(epoch, failed(1)));
    assert_eq!(slot.drain(), vec![(1, Verdict::Eject(1000))], "the third, in order, ejects");

    // Reported against the snapshot before this one: discarded.
    assert!(slot.report(epoch, failed(0)));
    assert!(slot.report(epoch, failed(0)));
    slot.set_snapshot(snapshot(&["v1", "v1"]));
    assert_ne!(slot.epoch(), epoch);
    assert!(slot.report(epoch, failed(0)));
    assert!(slot.drain().is_empty(), "three failures, all of an old snapshot");

    for _ in 0..sextant_plugin::OUTCOME_QUEUE {
        assert!(slot.report(slot.epoch(), Outcome { endpoint: 0, status: Status::Http(200), latency: 1 }));
    }
    assert!(!slot.report(slot.epoch(), failed(0)), "the queue is full");
    assert_eq!(slot.dropped(), 1);
    assert!(slot.drain().is_empty());
    assert!(slot.report(slot.epoch(), failed(0)), "drained, it takes outcomes again");
}
