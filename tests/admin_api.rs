//! The admin HTTP API: registration, leases, protection, config, metrics, bad input.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, instance, wait_until};

#[test]
fn ephemeral_instances_live_as_long_as_their_lease() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("d"));
    let (code, lease) = server.post("/v1/leases", &json!({ "ttl_ms": 5000 }));
    assert_eq!(code, 200, "{lease}");
    let lease: u64 = lease["lease"].as_str().expect("lease ids are strings").parse().unwrap();
    let mut kept = instance("svc", "kept", 1, true);
    kept["lease"] = json!(lease);
    assert_eq!(server.post("/v1/instances", &kept).0, 200);
    let mut dropped = instance("svc", "dropped", 2, true);
    dropped["ttl_ms"] = json!(600);
    let (code, answer) = server.post("/v1/instances", &dropped);
    assert_eq!(code, 200, "{answer}");
    let dropped_lease = answer["lease"].as_str().expect("the granted lease").to_owned();

    // Keep one lease alive (its TTL leaves room for a busy machine); the other one expires.
    let ids = |server: &Server| -> Vec<Value> {
        let (_, svc) = server.get("/v1/services/default/default/svc");
        svc["instances"].as_array().map(|a| a.iter().map(|i| i["id"].clone()).collect()).unwrap_or_default()
    };
    let start = Instant::now();
    while ids(&server) != vec![json!("kept")] {
        assert!(start.elapsed() < Duration::from_secs(20), "the unkept lease expires: {:?}", ids(&server));
        assert_eq!(server.post(&format!("/v1/leases/{lease}/keepalive"), &json!({})).0, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    // A keepalive after it really expired: lease_not_found (not a new lease).
    let (code, answer) = server.post(&format!("/v1/leases/{dropped_lease}/keepalive"), &json!({}));
    assert_eq!((code, answer["error"].as_str()), (404, Some("lease_not_found")), "{answer}");
    assert_eq!(ids(&server), vec![json!("kept")]);
    let metrics = server.text("/metrics");
    assert!(metrics.lines().any(|l| l == "sextant_leases_expired_total 1"), "exactly one expired:\n{metrics}");

    // Revoking the lease deregisters its instance.
    assert_eq!(server.delete(&format!("/v1/leases/{lease}")).0, 200);
    wait_until("the service to empty", || server.get("/v1/services/default/default/svc").0 == 404);
    assert_eq!(server.post(&format!("/v1/leases/{lease}/keepalive"), &json!({})).1["error"], "lease_not_found");
}

#[test]
fn protection_threshold_returns_everyone_when_too_few_are_healthy() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("d"));
    server.put_json("/v1/services/default/default/pay", &json!({ "protect_threshold": 0.5 }));
    for (id, healthy) in [("a", true), ("b", false), ("c", false)] {
        let mut i = instance("pay", id, 1, false);
        i["healthy"] = json!(healthy);
        assert_eq!(server.post("/v1/instances", &i).0, 200);
    }
    let (_, svc) = server.get("/v1/services/default/default/pay");
    assert_eq!(svc["protection_active"], json!(true));
    assert_eq!(svc["selected"], json!(["a", "b", "c"]));
    let mut healed = instance("pay", "b", 1, false);
    healed["healthy"] = json!(true);
    server.post("/v1/instances", &healed);
    let (_, svc) = server.get("/v1/services/default/default/pay");
    assert_eq!(svc["protection_active"], json!(false));
    assert_eq!(svc["selected"], json!(["a", "b"]));
}

#[test]
fn bad_input_is_a_typed_error_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("d"));
    let mut cases = vec![];
    let mut bad_name = instance("svc", "a", 1, false);
    bad_name["service"]["service"] = json!("no spaces");
    cases.push(("bad name", bad_name));
    let mut weight = instance("svc", "a", 1, false);
    weight["weight"] = json!(10_001);
    cases.push(("weight", weight));
    let mut meta = instance("svc", "a", 1, false);
    meta["metadata"] = json!({ "blob": "x".repeat(5000) });
    cases.push(("metadata", meta));
    cases.push(("ephemeral without lease", instance("svc", "a", 1, true)));
    let mut ttl = instance("svc", "a", 1, true);
    ttl["ttl_ms"] = json!(1);
    cases.push(("ttl too short", ttl));
    let mut persistent_with_lease = instance("svc", "a", 1, false);
    persistent_with_lease["ttl_ms"] = json!(1000);
    cases.push(("persistent with lease", persistent_with_lease));
    cases.push(("not an instance", json!({ "hello": "world" })));
    for (what, body) in cases {
        let (code, err) = server.post("/v1/instances", &body);
        assert_eq!(code, 400, "{what}: {err}");
        assert_eq!(err["error"], "invalid", "{what}: {err}");
        assert!(!err["message"].as_str().unwrap().is_empty());
    }
    let mut unknown_lease = instance("svc", "a", 1, true);
    unknown_lease["lease"] = json!(12345);
    assert_eq!(server.post("/v1/instances", &unknown_lease).1["error"], "lease_not_found");
    unknown_lease["lease"] = json!("12345");
    assert_eq!(server.post("/v1/instances", &unknown_lease).1["error"], "lease_not_found", "ids as strings too");
    for bad in [json!("12x"), json!(-1), json!(1.5), json!({})] {
        unknown_lease["lease"] = bad.clone();
        let (code, err) = server.post("/v1/instances", &unknown_lease);
        assert_eq!((code, err["error"].as_str()), (400, Some("invalid")), "lease {bad}: {err}");
    }
    let (code, err) = server.post("/v1/leases/abc/keepalive", &json!({}));
    assert_eq!((code, err["error"].as_str()), (400, Some("invalid")), "{err}");
    assert!(err["message"].as_str().unwrap().contains("not a lease id"), "{err}");
    assert_eq!(server.delete("/v1/leases/-4").1["error"], "invalid");
    assert_eq!(server.delete("/v1/instances/default/default/svc/nope").1["error"], "not_found");
    assert_eq!(server.put_text("/v1/configs/default/default/x", &"y".repeat(1024 * 1024 + 1)).0, 400);
    assert_eq!(server.put_json("/v1/services/default/default/s", &json!({ "protect_threshold": 2.0 })).0, 400);

    let (_, status) = server.get("/status");
    assert_eq!(status["revision"], json!(0), "nothing was stored: {status}");
    assert_eq!(status["leases"], json!(0), "no lease was left behind");
    // Every refusal that reached the store is counted, by kind; the rest never got there.
    let metrics = server.text("/metrics");
    let rejected = |kind: &str| -> u64 {
        let prefix = format!("sextant_writes_rejected_total{{kind=\"{kind}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
    };
    assert_eq!(rejected("instance"), 3, "two unknown leases and the missing deregistration: {metrics}");
    assert_eq!(rejected("lease"), 1, "the 1 ms TTL, refused by the store: {metrics}");
    assert_eq!(rejected("service"), 1, "the threshold of 2.0: {metrics}");
}

#[test]
fn metrics_and_status_report_the_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("d"));
    for (svc, id) in [("a", "1"), ("a", "2"), ("b", "1")] {
        server.post("/v1/instances", &instance(svc, id, 1, false));
    }
    server.put_text("/v1/configs/default/default/c", "x");
    let metrics = server.text("/metrics");
    for line in ["sextant_services 2", "sextant_instances 3", "sextant_configs 1", "sextant_revision 4"] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in:\n{metrics}");
    }
    crate::support::promtool_check(&metrics);
    let (_, services) = server.get("/v1/services");
    assert_eq!(services, json!(["default/default/a", "default/default/b"]));
    let (_, cfg) = server.get("/v1/configs/default/default/c");
    assert_eq!(cfg["version"].as_str().unwrap().len(), 64);
    // Deleted through HTTP: gone, counted, and a second delete is not found.
    let (status, body) = server.delete("/v1/configs/default/default/c");
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get("/v1/configs/default/default/c").0, 404);
    let (status, body) = server.delete("/v1/configs/default/default/c");
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");
    assert!(server.text("/metrics").lines().any(|l| l == "sextant_configs 0"));
}
