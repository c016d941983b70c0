//! The servers' judge over a real registry (embedded store): it decides a step on the
//! gateways' reports about that step and candidate only (garbage and reports about another
//! candidate or step are ignored), once however many judges run at the same moment; and the
//! server's own balancer runs the candidate beside the stable version.

use std::sync::Arc;
use std::time::Duration;

use sextant_control::PluginManager;
use sextant_core::rollout::{RolloutReport, RolloutState, VersionWindow};
use sextant_core::{Instance, PluginName, Record, ServiceKey};
use sextant_plugin::{Defaults, HostConfig, PluginHost};
use sextant_plugin_artifacts as artifacts;
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(artifacts::path(name).expect("artifact")).expect("read artifact")
}

fn window(requests: u64, latency_us: u64) -> VersionWindow {
    let mut w = VersionWindow { requests, ..VersionWindow::default() };
    for _ in 0..requests {
        w.latency.record_us(latency_us);
    }
    w
}

/// Registers gateway `id` with `value` under `sextant.rollout.lb` in its metadata.
async fn gateway(registry: &Registry<EmbeddedStore>, id: &str, value: String) {
    let mut i = Instance::new(ServiceKey::parse("shop/edge/gateway").unwrap(), "127.0.0.1".parse().unwrap(), 8080);
    i.id = id.parse().unwrap();
    i.ephemeral = false;
    i.metadata = [("sextant.rollout.lb".to_owned(), value)].into_iter().collect();
    registry.put(Record::Instance(Arc::new(i)), None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_judge_counts_only_reports_about_the_current_step_and_decides_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let registry = Registry::start(store, 1024).await.unwrap();
    let host = PluginHost::new(HostConfig { workers: 2, ..HostConfig::default() }).unwrap();
    let m = PluginManager::start(host, registry.clone(), Defaults::default()).unwrap();
    let service = ServiceKey::parse("shop/web/orders").unwrap();
    for port in [9001, 9002, 9003] {
        let mut i = Instance::new(service.clone(), "127.0.0.1".parse().unwrap(), port);
        i.ephemeral = false;
        registry.put(Record::Instance(Arc::new(i)), None).await.unwrap();
    }
    m.load("lb", "balancer", "shop/web/orders", "", wasm("round-robin"), "api").await.unwrap();
    let plan = "10%:1s,50%:1h min-requests=50";
    let loaded = m
        .load_with_rollout("lb", "balancer", "shop/web/orders", "", wasm("peak-ewma"), "api", Some(plan))
        .await
        .unwrap();
    let rollout = loaded.record.rollout.clone().expect("a rollout");
    assert_eq!((rollout.state, rollout.step), (RolloutState::Canary, 0));
    assert_eq!(loaded.record.sha256, sextant_core::sha256_hex(&wasm("round-robin")), "the stable stays");

    // The server's own balancer runs the candidate on a tenth of its picks (its slot is made
    // by the first pick, and given the candidate by the activation that follows).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let versions: std::collections::BTreeSet<u64> =
            (0..500).map(|_| m.pick(&service, None, Vec::new(), Vec::new()).unwrap().version).collect();
        if versions.len() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {versions:?} pick; failures {:?}", m.failures());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let candidate = rollout.candidate.sha256.clone();
    let report = |candidate: &str, step: usize, trial_latency_us: u64| {
        serde_json::to_string(&RolloutReport {
            candidate: candidate.to_owned(),
            step,
            since_unix_ms: rollout.step_since_unix_ms,
            stable: window(1_000, 800),
            candidate_window: window(100, trial_latency_us),
            refused: None,
            faulted: None,
            agreed: None,
        })
        .unwrap()
    };
    // Garbage, a report about another candidate and one about another step: ignored (each
    // would roll the candidate back if counted: its p99 is 200 ms).
    gateway(&registry, "garbage", "{not json".into()).await;
    gateway(&registry, "other-candidate", report(&"f".repeat(64), 0, 200_000)).await;
    gateway(&registry, "other-step", report(&candidate, 1, 200_000)).await;
    gateway(&registry, "good", report(&candidate, 0, 900)).await;
    // Past the step's hold (1 s), several judges at once, as several servers would.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (a, b, c) = tokio::join!(m.judge_rollouts(), m.judge_rollouts(), m.judge_rollouts());
    let record = registry.plugins().into_iter().find(|p| p.name == PluginName::new("lb").unwrap()).unwrap();
    let rollout = record.rollout.as_ref().unwrap();
    assert_eq!((rollout.state, rollout.step), (RolloutState::Canary, 1), "advanced once: {:?}", rollout.log);
    let judged: Vec<_> = rollout.log.iter().filter(|d| d.by.starts_with("judge@")).collect();
    assert_eq!(judged.len(), 1, "one decision for the step: {judged:?}");
    assert!(a.len() + b.len() + c.len() <= 1, "at most one of the judges wrote (the server's own may have)");
    let evidence = judged[0].evidence.as_ref().unwrap();
    assert_eq!(evidence.gateways, 1, "only the report about this candidate and step counted: {evidence:?}");
    assert!(evidence.failed.is_empty());
}
