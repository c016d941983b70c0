//! The plugin manager over a real registry (embedded store): validation before writing,
//! activation by binding, rollback from the record's history, deletion, picks.

use std::collections::BTreeMap;
use std::sync::Arc;

use sextant_control::{ManagerError, PluginManager};
use sextant_core::{Instance, PluginName, Record, ServiceKey};
use sextant_plugin::{Defaults, HostConfig, LoadError, PluginHost};
use sextant_plugin_artifacts as artifacts;
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};

fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(artifacts::path(name).expect("artifact")).expect("read artifact")
}

async fn setup(dir: &std::path::Path) -> (Registry<EmbeddedStore>, PluginManager<EmbeddedStore>) {
    let store = EmbeddedStore::open(dir, EmbeddedOptions::default()).unwrap();
    let registry = Registry::start(store, 1024).await.unwrap();
    let host = PluginHost::new(HostConfig { workers: 2, ..HostConfig::default() }).unwrap();
    let manager = PluginManager::start(host, registry.clone(), Defaults::default()).unwrap();
    (registry, manager)
}

async fn add(registry: &Registry<EmbeddedStore>, service: &str, port: u16) {
    let mut i = Instance::new(ServiceKey::parse(service).unwrap(), "127.0.0.1".parse().unwrap(), port);
    i.ephemeral = false;
    registry.put(Record::Instance(Arc::new(i)), None).await.unwrap();
}

/// Who answers `n` picks of `service`: (active plugin, picks per port).
fn spread(m: &PluginManager<EmbeddedStore>, service: &str, n: usize) -> (String, BTreeMap<u16, usize>) {
    let key = ServiceKey::parse(service).unwrap();
    let mut ports = BTreeMap::new();
    for _ in 0..n {
        let p = m.pick(&key, None, Vec::new(), Vec::new()).expect("a pick");
        assert!(!p.fallback);
        *ports.entry(p.instance.port).or_insert(0) += 1;
    }
    let active = m
        .status()
        .into_iter()
        .find(|s| s.service == key.to_string() && s.kind == "balancer")
        .map(|s| s.plugin)
        .unwrap();
    (active, ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_choose_the_most_specific_record_and_rollback_and_delete_follow_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, m) = setup(dir.path()).await;
    for port in [9001, 9002, 9003] {
        add(&registry, "shop/web/orders", port).await;
        add(&registry, "shop/web/carts", port).await;
    }
    // First use creates the slots on the default every host starts on; a server carries no
    // traffic, so it keeps a balancer slot alone (no health or scheduler slot nothing calls).
    assert_eq!(spread(&m, "shop/web/orders", 3).0, sextant_plugin::DEFAULT_BALANCER);
    let kinds: Vec<String> =
        m.status().into_iter().filter(|s| s.service == "shop/web/orders").map(|s| s.kind).collect();
    assert_eq!(kinds, ["balancer"]);

    // A namespace binding covers both services; round robin spreads exactly evenly.
    let loaded = m.load("rr", "balancer", "shop", "", wasm("round-robin"), "api").await.unwrap();
    let validated = loaded.validated.expect("a load that writes says where it validated");
    assert_eq!((validated.services, validated.covered), (vec!["shop/web/carts".into(), "shop/web/orders".into()], 2));
    let (active, ports) = spread(&m, "shop/web/orders", 300);
    assert_eq!(active, "rr");
    assert_eq!(ports.values().copied().collect::<Vec<_>>(), vec![100, 100, 100]);
    assert_eq!(spread(&m, "shop/web/carts", 3).0, "rr");

    // A service binding beats the namespace one, for that service only.
    m.load("hdr", "balancer", "shop/web/carts", r#"{"header":"x-canary"}"#, wasm("header-route"), "api").await.unwrap();
    assert_eq!(spread(&m, "shop/web/carts", 3).0, "hdr");
    assert_eq!(spread(&m, "shop/web/orders", 3).0, "rr");

    // Reloading "rr" with another component keeps the old one in its history; rollback
    // brings it back (and the record's sha256 with it).
    let first = m.load("rr", "balancer", "shop", "", wasm("round-robin"), "api").await.unwrap().record;
    let second = m.load("rr", "balancer", "shop", "", wasm("random"), "api").await.unwrap().record;
    assert_ne!(first.sha256, second.sha256);
    assert_eq!(second.history.last().unwrap().sha256, first.sha256);
    let slot = |m: &PluginManager<EmbeddedStore>| {
        m.status().into_iter().find(|s| s.service == "shop/web/orders" && s.kind == "balancer").unwrap()
    };
    assert_eq!(slot(&m).sha256.as_deref(), Some(second.sha256.as_str()));
    let (back, _) = m.rollback(&PluginName::new("rr").unwrap()).await.unwrap();
    assert_eq!(back.sha256, first.sha256);
    assert_eq!(slot(&m).sha256.as_deref(), Some(first.sha256.as_str()));

    // The same load twice writes nothing.
    let before = registry.revision();
    let again = m.load("rr", "balancer", "shop", "", wasm("round-robin"), "api").await.unwrap();
    assert_eq!(registry.revision(), before);
    assert!(again.validated.is_none(), "nothing validated, nothing written");

    // Deleting the namespace record sends orders back to the default; carts keeps its own.
    m.delete(&PluginName::new("rr").unwrap()).await.unwrap();
    assert_eq!(spread(&m, "shop/web/orders", 3).0, sextant_plugin::DEFAULT_BALANCER);
    assert_eq!(spread(&m, "shop/web/carts", 3).0, "hdr");

    // Errors that name the problem.
    assert!(matches!(m.rollback(&PluginName::new("nope").unwrap()).await, Err(ManagerError::NotFound(_))));
    assert!(matches!(m.rollback(&PluginName::new("hdr").unwrap()).await, Err(ManagerError::NoPrevious(_))));
    // A service with no instances ever: no slot, no pick.
    assert!(m.pick(&ServiceKey::parse("shop/web/ghost").unwrap(), None, Vec::new(), Vec::new()).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_plugin_writes_nothing_and_disturbs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, m) = setup(dir.path()).await;
    add(&registry, "shop/web/orders", 9001).await;
    add(&registry, "shop/web/orders", 9002).await;
    m.load("rr", "balancer", "*", "", wasm("round-robin"), "api").await.unwrap();
    assert_eq!(spread(&m, "shop/web/orders", 2).0, "rr");
    let before = (registry.revision(), registry.plugins());

    let rejected = |r: Result<_, ManagerError>| match r {
        Err(ManagerError::Rejected { source, .. }) => source,
        other => panic!("expected a rejection, got {other:?}"),
    };
    let e = rejected(m.load("rr", "balancer", "*", "", b"plain text".to_vec(), "api").await);
    assert!(matches!(e, LoadError::NotWasm), "{e}");
    let e = rejected(m.load("rr", "balancer", "*", "", wasm("outlier"), "api").await);
    assert!(matches!(e, LoadError::WrongKind { .. }), "{e}");
    let e = rejected(m.load("rr", "balancer", "*", "", wasm("wrong-version"), "api").await);
    assert!(matches!(e, LoadError::VersionMismatch { .. }), "{e}");
    let e = rejected(m.load("rr", "balancer", "*", r#"{"fault":"trap-pick"}"#, wasm("misbehave"), "api").await);
    assert!(matches!(e, LoadError::SelfTest(_)), "{e}");
    let e = rejected(m.load("rr", "balancer", "*", r#"{"ring_size":0}"#, wasm("ring-hash"), "api").await);
    assert!(matches!(e, LoadError::Config(_)), "{e}");
    // Passes the synthetic self-test (8 endpoints, then none) but refuses the live snapshot
    // of a service the binding covers (2 endpoints): refused, naming the service.
    let small = r#"{"fault":"refuse-below","endpoints":4}"#;
    let e = rejected(m.load("rr", "balancer", "shop", small, wasm("misbehave"), "api").await);
    let text = e.to_string();
    assert!(
        matches!(e, LoadError::SelfTest(_))
            && text.contains("on the live snapshot of shop/web/orders")
            && text.contains("refuse-below: 2 endpoints"),
        "{text}"
    );
    assert!(matches!(
        m.load("rr", "balancer", "*", "{not json", wasm("round-robin"), "api").await,
        Err(ManagerError::BadConfig(_))
    ));
    assert!(matches!(
        m.load("rr", "balancer", "a/b", "", wasm("round-robin"), "api").await,
        Err(ManagerError::Invalid(_))
    ));
    assert!(matches!(m.load("rr", "router", "*", "", wasm("round-robin"), "api").await, Err(ManagerError::Invalid(_))));
    assert!(matches!(
        m.load("bad name!", "balancer", "*", "", wasm("round-robin"), "api").await,
        Err(ManagerError::Invalid(_))
    ));

    assert_eq!((registry.revision(), registry.plugins()), before, "nothing written");
    assert_eq!(spread(&m, "shop/web/orders", 4).0, "rr", "the active plugin keeps serving");
    // Bound where no service is small, the same component loads.
    m.load("small", "balancer", "other", small, wasm("misbehave"), "api").await.unwrap();
    let failures = m.failures();
    assert_eq!(failures.len(), 10);
    assert!(failures.iter().all(|f| f.plugin == "rr" || f.plugin == "bad name!"));
    assert!(failures[0].error.contains("not a WebAssembly file"), "{}", failures[0].error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_of_equal_bindings_wins_and_a_rollback_is_read_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rolled_back = {
        let (registry, m) = setup(dir.path()).await;
        for port in [9001, 9002, 9003] {
            add(&registry, "shop/web/orders", port).await;
        }
        // Two records bound to the same namespace: the one loaded last serves.
        m.load("a", "balancer", "shop", "", wasm("round-robin"), "api").await.unwrap();
        m.load("b", "balancer", "shop", "", wasm("random"), "api").await.unwrap();
        assert_eq!(spread(&m, "shop/web/orders", 3).0, "b");
        // Loading "a" again (another component) makes it the newest.
        let a2 = m.load("a", "balancer", "shop", "", wasm("peak-ewma"), "api").await.unwrap().record;
        assert_eq!(spread(&m, "shop/web/orders", 3).0, "a");
        // Rolled back: "a" runs round robin again; the record says so.
        let (back, _) = m.rollback(&PluginName::new("a").unwrap()).await.unwrap();
        assert_ne!(back.sha256, a2.sha256);
        let slot = m.status().into_iter().find(|s| s.service == "shop/web/orders" && s.kind == "balancer").unwrap();
        assert_eq!(slot.sha256.as_deref(), Some(back.sha256.as_str()));
        back.sha256.clone()
    };
    // A restart reads the rolled-back version from the store: not the faulty newer one.
    let mut reopened = None;
    for _ in 0..100 {
        match EmbeddedStore::open(dir.path(), EmbeddedOptions::default()) {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let registry = Registry::start(reopened.expect("the store reopens"), 1024).await.unwrap();
    let host = PluginHost::new(HostConfig { workers: 2, ..HostConfig::default() }).unwrap();
    let m = PluginManager::start(host, registry.clone(), Defaults::default()).unwrap();
    let record = registry.plugins().into_iter().find(|p| p.name.as_str() == "a").expect("the record");
    assert_eq!(record.sha256, rolled_back);
    // The slot starts on the default and swaps the stored plugin in once it has compiled.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while spread(&m, "shop/web/orders", 1).0 != "a" {
        assert!(std::time::Instant::now() < deadline, "the stored binding is activated after the restart");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let slot = m.status().into_iter().find(|s| s.service == "shop/web/orders" && s.kind == "balancer").unwrap();
    assert_eq!(slot.sha256.as_deref(), Some(rolled_back.as_str()), "the rolled-back version runs after the restart");
}

async fn reopen(dir: &std::path::Path) -> (Registry<EmbeddedStore>, PluginManager<EmbeddedStore>) {
    for _ in 0..100 {
        match EmbeddedStore::open(dir, EmbeddedOptions::default()) {
            Ok(store) => {
                let registry = Registry::start(store, 1024).await.unwrap();
                let host = PluginHost::new(HostConfig { workers: 2, ..HostConfig::default() }).unwrap();
                let m = PluginManager::start(host, registry.clone(), Defaults::default()).unwrap();
                return (registry, m);
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    panic!("the store does not reopen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_rollback_marks_the_version_bad_in_the_record_for_every_host_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let name = PluginName::new("lb").unwrap();
    let (good, faulty) = {
        let (registry, m) = setup(dir.path()).await;
        for port in [9001, 9002, 9003] {
            add(&registry, "shop/web/orders", port).await;
        }
        let good = m.load("lb", "balancer", "shop", "", wasm("round-robin"), "api").await.unwrap().record;
        // Traps on every 101st pick of an instance: the slot falls back per pick, then rolls
        // back on its own after the sixth fault within the window.
        let config = r#"{"fault": "trap-pick", "after": 100}"#;
        let faulty = m.load("lb", "balancer", "shop", config, wasm("misbehave"), "api").await.unwrap().record;
        let key = ServiceKey::parse("shop/web/orders").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let record = registry.plugins().into_iter().find(|p| p.name == name).unwrap();
            if !record.bad.is_empty() {
                assert_eq!(record.bad.len(), 1);
                assert_eq!(record.bad[0].sha256, faulty.sha256);
                assert!(
                    record.bad[0].reason.starts_with("shop/web/orders balancer: 6 faults within"),
                    "{:?}",
                    record.bad[0]
                );
                // The record went back to its previous version, and nothing is left to roll back to.
                assert_eq!(record.sha256, good.sha256);
                assert!(record.history.is_empty() && record.forward.is_empty(), "{record:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the automatic rollback reaches the record");
            for _ in 0..200 {
                assert!(m.pick(&key, None, Vec::new(), Vec::new()).is_some(), "no pick fails");
            }
            tokio::task::yield_now().await;
        }
        // Every slot follows the record: round robin again, no fallback.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let slot = m.status().into_iter().find(|s| s.service == "shop/web/orders" && s.kind == "balancer").unwrap();
            if slot.sha256.as_deref() == Some(good.sha256.as_str()) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the slot runs the record's version: {slot:?}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(spread(&m, "shop/web/orders", 30).1.values().copied().collect::<Vec<_>>(), vec![10, 10, 10]);
        // The faulty version cannot be loaded again under that name.
        match m.load("lb", "balancer", "shop", config, wasm("misbehave"), "api").await {
            Err(ManagerError::MarkedBad { sha256, reason, .. }) => {
                assert_eq!(sha256, faulty.sha256);
                assert!(reason.contains("faults within"), "{reason}");
            }
            other => panic!("a version marked bad was loaded again: {other:?}"),
        }
        assert!(matches!(m.rollback(&name).await, Err(ManagerError::NoPrevious(_))));
        (good, faulty)
    };
    // After a restart the record still says which version is bad, and the good one runs.
    let (registry, m) = reopen(dir.path()).await;
    let record = registry.plugins().into_iter().find(|p| p.name == name).unwrap();
    assert_eq!((record.sha256.as_str(), record.bad[0].sha256.as_str()), (good.sha256.as_str(), faulty.sha256.as_str()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while spread(&m, "shop/web/orders", 1).0 != "lb" {
        assert!(std::time::Instant::now() < deadline, "the stored binding is activated after the restart");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let slot = m.status().into_iter().find(|s| s.service == "shop/web/orders" && s.kind == "balancer").unwrap();
    assert_eq!(slot.sha256.as_deref(), Some(good.sha256.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_keeps_the_version_it_left_for_a_roll_forward() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, m) = setup(dir.path()).await;
    for port in [9001, 9002] {
        add(&registry, "shop/web/orders", port).await;
    }
    let name = PluginName::new("lb").unwrap();
    let first = m.load("lb", "balancer", "shop", "", wasm("round-robin"), "api").await.unwrap().record;
    assert_eq!(spread(&m, "shop/web/orders", 2).0, "lb", "the service's slots exist from here on");
    let second = m.load("lb", "balancer", "shop", "", wasm("random"), "api").await.unwrap().record;
    assert!(matches!(m.roll_forward(&name).await, Err(ManagerError::NoForward(_))), "nothing rolled back yet");
    let (back, _) = m.rollback(&name).await.unwrap();
    assert_eq!(back.sha256, first.sha256);
    assert_eq!(back.forward.iter().map(|v| v.sha256.as_str()).collect::<Vec<_>>(), vec![second.sha256.as_str()]);
    let running = |m: &PluginManager<EmbeddedStore>| {
        m.status().into_iter().find(|s| s.service == "shop/web/orders" && s.kind == "balancer").unwrap().sha256
    };
    assert_eq!(running(&m).as_deref(), Some(first.sha256.as_str()));
    let (forward, _) = m.roll_forward(&name).await.unwrap();
    assert_eq!(forward.sha256, second.sha256);
    assert!(forward.forward.is_empty());
    assert_eq!(forward.history.last().map(|v| v.sha256.as_str()), Some(first.sha256.as_str()));
    assert_eq!(running(&m).as_deref(), Some(second.sha256.as_str()));
    assert!(matches!(m.roll_forward(&name).await, Err(ManagerError::NoForward(_))));
    // A new load clears what a rollback left.
    m.rollback(&name).await.unwrap();
    let third = m.load("lb", "balancer", "shop", "", wasm("peak-ewma"), "api").await.unwrap().record;
    assert!(third.forward.is_empty());
}

/// Two servers on one store (two registries and managers over one embedded store, so neither
/// server's lock serializes them: only the store's compare-and-swap does) load different
/// components under one name at the same moment: both loads succeed, each becomes a version,
/// and the history holds both. Before, both read the same record, both wrote a history without
/// the other's version, and one load vanished; a rollback skipped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_of_one_name_through_two_servers_both_enter_the_history() {
    use sextant_core::RecordKey;
    use sextant_core::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let start = || async {
        let registry = Registry::start(store.clone(), 1024).await.unwrap();
        let host = PluginHost::new(HostConfig { workers: 1, ..HostConfig::default() }).unwrap();
        let manager = PluginManager::start(host, registry.clone(), Defaults::default()).unwrap();
        (registry, manager)
    };
    let (r1, m1) = start().await;
    let (r2, m2) = start().await;
    add(&r1, "shop/web/orders", 9001).await;
    add(&r1, "shop/web/orders", 9002).await;
    let v0 = m1.load("rr", "balancer", "shop", "", wasm("round-robin"), "api").await.unwrap();
    r2.wait_for(v0.revision).await;
    let (a, b) = tokio::join!(
        m1.load("rr", "balancer", "shop", "", wasm("random"), "api"),
        m2.load("rr", "balancer", "shop", "", wasm("peak-ewma"), "api"),
    );
    let (a, b) = (a.expect("the first load"), b.expect("the second load"));
    assert_ne!(a.revision, b.revision);
    let (first, last) = if a.revision < b.revision { (a, b) } else { (b, a) };
    let name = PluginName::new("rr").unwrap();
    let Some((Record::Plugin(stored), _)) = store.get(RecordKey::Plugin(name.clone())).await.unwrap() else {
        panic!("no record")
    };
    assert_eq!(stored.sha256, last.record.sha256, "the later load is the current version");
    let history: Vec<&str> = stored.history.iter().map(|v| v.sha256.as_str()).collect();
    assert_eq!(
        history,
        [v0.record.sha256.as_str(), first.record.sha256.as_str()],
        "both loads are versions, in the order they were written"
    );
    r1.wait_for(last.revision).await;
    assert_eq!(m1.rollback(&name).await.unwrap().0.sha256, first.record.sha256, "a rollback reaches the first load");
    assert_eq!(m2.rollback(&name).await.unwrap().0.sha256, v0.record.sha256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_faults_mark_a_version_bad_once_the_fleet_rule_is_met_and_the_rest_are_ignored_with_a_reason() {
    use sextant_control::{Fault, FleetRule};
    use sextant_proto::{FaultDecision as D, IgnoredFault as I};
    let dir = tempfile::tempdir().unwrap();
    let (registry, m) = setup(dir.path()).await;
    add(&registry, "shop/web/orders", 9001).await;
    assert!(m.set_fleet_rule(FleetRule { hosts: 0, ..FleetRule::default() }).is_err());
    assert!(m.set_fleet_rule(FleetRule { hosts: 17, ..FleetRule::default() }).is_err());
    m.set_fleet_rule(FleetRule { hosts: 2, window: std::time::Duration::from_secs(60) }).unwrap();
    let good = m.load("lb", "balancer", "shop", "", wasm("round-robin"), "api").await.unwrap().record;
    let next = m.load("lb", "balancer", "shop", "", wasm("ring-hash"), "api").await.unwrap().record;
    let fault = |host: &str, sha256: &str| Fault {
        plugin: PluginName::new("lb").unwrap(),
        kind: "balancer".into(),
        sha256: sha256.into(),
        service: "shop/web/orders".into(),
        host: host.into(),
        reason: "6 faults within 10s, last: trap".into(),
    };
    let record = || registry.plugins().into_iter().find(|p| p.name.as_str() == "lb").unwrap();
    let taken = |t: &sextant_control::FaultTaken| (t.decision, t.ignored, t.hosts, t.needed);

    // Nothing to decide: no record, another kind, a version the record does not run.
    let mut none = fault("gw-1", &next.sha256);
    none.plugin = PluginName::new("nope").unwrap();
    assert_eq!(taken(&m.take_fault(none).await.unwrap()), (D::Ignored, Some(I::NoRecord), 0, 2));
    let mut kind = fault("gw-1", &next.sha256);
    kind.kind = "health".into();
    assert_eq!(taken(&m.take_fault(kind).await.unwrap()), (D::Ignored, Some(I::WrongKind), 0, 2));
    let old = m.take_fault(fault("gw-1", &good.sha256)).await.unwrap();
    assert_eq!(taken(&old), (D::Ignored, Some(I::NotCurrent), 0, 2));
    assert_eq!(record().sha256, next.sha256, "ignored faults change nothing");
    assert!(record().faults.is_empty());

    // One host of the two the rule asks for: kept in the record, nothing marked.
    let first = m.take_fault(fault("gw-1", &next.sha256)).await.unwrap();
    assert_eq!(taken(&first), (D::Pending, None, 1, 2));
    assert!(first.revision.is_some());
    assert_eq!(record().faults.len(), 1);
    assert!(record().bad.is_empty());
    // The same host again counts once.
    let again = m.take_fault(fault("gw-1", &next.sha256)).await.unwrap();
    assert_eq!(taken(&again), (D::Ignored, Some(I::Repeated), 1, 2));
    assert_eq!(again.revision, None);

    // A second host meets the rule: marked bad once, the record back on the good version.
    let second = m.take_fault(fault("gw-2", &next.sha256)).await.unwrap();
    assert_eq!(taken(&second), (D::MarkedBad, None, 2, 2));
    let r = record();
    assert_eq!(r.sha256, good.sha256);
    assert_eq!(r.bad.len(), 1);
    assert_eq!(r.bad[0].sha256, next.sha256);
    assert!(
        r.bad[0].reason.starts_with("shop/web/orders balancer: 6 faults within 10s")
            && r.bad[0].reason.contains("reported by 2 hosts: gw-1, gw-2"),
        "{}",
        r.bad[0].reason
    );
    assert!(r.faults.is_empty());
    // A host that keeps reporting the version the fleet rolled back changes nothing.
    let late = m.take_fault(fault("gw-3", &next.sha256)).await.unwrap();
    assert_eq!(taken(&late), (D::Ignored, Some(I::AlreadyBad), 0, 2));
    assert_eq!(record(), r);

    let counts: BTreeMap<_, _> = m.fault_counts().into_iter().map(|(d, i, n)| ((d, i), n)).collect();
    assert_eq!(counts[&(D::MarkedBad, None)], 1);
    assert_eq!(counts[&(D::Pending, None)], 1);
    for why in [I::NoRecord, I::WrongKind, I::NotCurrent, I::Repeated, I::AlreadyBad] {
        assert_eq!(counts[&(D::Ignored, Some(why))], 1, "{why:?}");
    }
}
