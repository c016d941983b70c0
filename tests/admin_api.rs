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
    // Every write refused once it was a request (invalid contents, unknown leases, missing
    // keys) is counted, by kind, as QUIC counts it; bodies that do not parse never became one.
    let metrics = server.text("/metrics");
    let rejected = |kind: &str| -> u64 {
        let prefix = format!("sextant_writes_rejected_total{{kind=\"{kind}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
    };
    assert_eq!(
        rejected("instance"),
        6,
        "weight, metadata and TTL; two unknown leases; the missing deregistration: {metrics}"
    );
    assert_eq!(rejected("lease"), 0, "the 1 ms TTL is refused with its registration, no lease granted: {metrics}");
    assert_eq!(rejected("service"), 1, "the threshold of 2.0: {metrics}");
    assert_eq!(rejected("config"), 1, "the oversized content: {metrics}");
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

/// One command executor behind both doors: the same request through QUIC and through HTTP
/// gets the same answer, or the same error code and message (HTTP maps the code to a status),
/// and is counted the same way.
#[test]
fn the_same_requests_through_quic_and_http_give_the_same_answers_and_errors() {
    use sextant_core::{ConfigKey, Instance, InstanceId, LeaseId, ServiceKey, ServiceSpec};
    use sextant_proto::{Binding, Request};
    use sextant_quic::client::{Client, ClientError, ClientOptions};

    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("d"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let options = ClientOptions::new(vec![server.quic], server.data_dir.join("tls/ca.pem"));
    let client = runtime.block_on(Client::connect(options)).expect("QUIC client");
    // A QUIC answer as the HTTP API encodes it: the response without its `type`, or the error.
    let quic = |request: Request| -> Value {
        match runtime.block_on(client.request(request)) {
            Ok(answer) => {
                let mut v = serde_json::to_value(answer).unwrap();
                v.as_object_mut().unwrap().remove("type");
                v
            }
            Err(ClientError::Server { code, message }) => json!({ "error": code.to_string(), "message": message }),
            Err(e) => panic!("QUIC request failed: {e}"),
        }
    };
    let key = |s: &str| ServiceKey::parse(s).unwrap();
    let member = |service: &str, port: u16, weight: u32| {
        let mut i = Instance::new(key(service), "127.0.0.1".parse().unwrap(), port);
        i.weight = weight;
        i
    };
    let body = |i: &Instance, extra: Value| {
        let mut v = serde_json::to_value(i).unwrap();
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    };

    // Refusals: the same code and message through both doors, the status HTTP gives it.
    let ttl = member("svc", 1, 100);
    let heavy = member("svc", 2, 20_000);
    let mut persistent = member("svc", 3, 100);
    persistent.ephemeral = false;
    let threshold = ServiceSpec { service: key("svc"), protect_threshold: 1.5, metadata: Default::default() };
    let gone = LeaseId(4242);
    let nobody = InstanceId::new("nobody").unwrap();
    let config = ConfigKey {
        namespace: "default".parse().unwrap(),
        group: "default".parse().unwrap(),
        data_id: "none".parse().unwrap(),
    };
    /// What is refused: the request over QUIC, the same over HTTP (method, path, body), the
    /// HTTP status and the code both doors answer.
    type Refusal<'a> = (&'a str, Request, (&'a str, String, Option<Value>), u16, &'a str);
    let refusals: Vec<Refusal<'_>> = vec![
        (
            "TTL out of range",
            Request::Register { instance: ttl.clone(), binding: Binding::Ttl { ttl_ms: 50 } },
            ("POST", "/v1/instances".into(), Some(body(&ttl, json!({ "ttl_ms": 50 })))),
            400,
            "invalid",
        ),
        (
            "weight out of range",
            Request::Register { instance: heavy.clone(), binding: Binding::Ttl { ttl_ms: 5000 } },
            ("POST", "/v1/instances".into(), Some(body(&heavy, json!({ "ttl_ms": 5000 })))),
            400,
            "invalid",
        ),
        (
            "lease TTL out of range",
            Request::GrantLease { ttl_ms: 90_000_000 },
            ("POST", "/v1/leases".into(), Some(json!({ "ttl_ms": 90_000_000 }))),
            400,
            "invalid",
        ),
        (
            "unknown lease for a registration",
            Request::Register { instance: ttl.clone(), binding: Binding::Lease { lease: gone } },
            ("POST", "/v1/instances".into(), Some(body(&ttl, json!({ "lease": gone })))),
            404,
            "lease_not_found",
        ),
        (
            "keepalive of an unknown lease",
            Request::Keepalive { lease: gone },
            ("POST", format!("/v1/leases/{}/keepalive", gone.0), Some(json!({}))),
            404,
            "lease_not_found",
        ),
        (
            "revoking an unknown lease",
            Request::RevokeLease { lease: gone },
            ("DELETE", format!("/v1/leases/{}", gone.0), None),
            404,
            "lease_not_found",
        ),
        (
            "deregistering nobody",
            Request::Deregister { service: key("svc"), id: nobody },
            ("DELETE", "/v1/instances/default/default/svc/nobody".into(), None),
            404,
            "not_found",
        ),
        (
            "a service nobody registered",
            Request::GetService { service: key("ghost") },
            ("GET", "/v1/services/default/default/ghost".into(), None),
            404,
            "not_found",
        ),
        (
            "a threshold out of range",
            Request::PutService { spec: threshold },
            ("PUT", "/v1/services/default/default/svc".into(), Some(json!({ "protect_threshold": 1.5 }))),
            400,
            "invalid",
        ),
        (
            "deleting a config nobody wrote",
            Request::ConfigDelete { key: config },
            ("DELETE", "/v1/configs/default/default/none".into(), None),
            404,
            "not_found",
        ),
    ];
    for (what, request, (method, path, http_body), status, code) in refusals {
        let over_quic = quic(request);
        let (got_status, over_http) = server.call(method, &path, None, http_body.as_ref());
        assert_eq!(over_quic["error"], code, "{what} over QUIC: {over_quic}");
        assert_eq!(over_http, over_quic, "{what}: the same error through both doors");
        assert_eq!(got_status, status, "{what}: {over_http}");
    }
    let (_, status) = server.get("/status");
    assert_eq!(
        (status["revision"].clone(), status["leases"].clone()),
        (json!(0), json!(0)),
        "nothing stored: {status}"
    );

    // Answers: a service with only a spec exists through both doors, and reads the same.
    let spec = ServiceSpec { service: key("spec-only"), protect_threshold: 0.5, metadata: Default::default() };
    assert!(quic(Request::PutService { spec })["revision"].is_u64());
    let over_quic = quic(Request::GetService { service: key("spec-only") });
    let (got_status, over_http) = server.get("/v1/services/default/default/spec-only");
    assert_eq!(got_status, 200, "{over_http}");
    assert_eq!(over_http, over_quic, "the same service view");
    assert_eq!(over_quic["instances"], json!([]));

    // A registration through each door, read back through the other.
    let quic_written = quic(Request::Register { instance: persistent.clone(), binding: Binding::Persistent });
    let mut other = member("svc", 4, 100);
    other.ephemeral = false;
    let (got_status, http_written) = server.post("/v1/instances", &body(&other, json!({})));
    assert_eq!(got_status, 200, "{http_written}");
    assert!(http_written["revision"].as_u64() > quic_written["revision"].as_u64(), "{quic_written} {http_written}");
    let over_quic = quic(Request::GetService { service: key("svc") });
    assert_eq!(server.get("/v1/services/default/default/svc").1, over_quic);
    assert_eq!(over_quic["healthy"], json!(2), "{over_quic}");
    assert_eq!(over_quic["routable"], json!(2), "{over_quic}");

    // Writes are counted once, whichever door: two accepted registrations, and every refused
    // write above (four refused registrations and deregistrations per door, two lease writes
    // per door; keepalives and reads are not writes).
    let metrics = server.text("/metrics");
    let count = |name: &str, kind: &str| -> u64 {
        let prefix = format!("{name}{{kind=\"{kind}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.parse().unwrap())
    };
    assert_eq!(count("sextant_writes_total", "instance"), 2, "{metrics}");
    assert_eq!(count("sextant_writes_total", "service"), 1, "{metrics}");
    assert_eq!(count("sextant_writes_rejected_total", "instance"), 8, "{metrics}");
    assert_eq!(count("sextant_writes_rejected_total", "lease"), 4, "{metrics}");
    assert_eq!(count("sextant_writes_rejected_total", "service"), 2, "{metrics}");
    assert_eq!(count("sextant_writes_rejected_total", "config"), 2, "{metrics}");
}

#[test]
fn a_config_write_over_a_version_read_is_refused_when_the_entry_moved_on_through_either_door() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("d"));
    let path = "/v1/configs/shop/web/app.json";
    assert_eq!(server.put_text(path, "one").0, 200);
    let read = crate::support::http().get(&server.url(path)).call().unwrap();
    let etag = read.headers().get("etag").unwrap().to_str().unwrap().to_owned();
    let first = sextant_core::sha256_hex(b"one");
    assert_eq!(etag, format!("\"{first}\""));
    let put = |content: &str, replaces: &str| {
        let mut r = crate::support::http()
            .put(&server.url(path))
            .header("If-Match", replaces)
            .send(content.to_owned())
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let (code, body) = put("two", &etag);
    assert_eq!(code, 200, "{body}");
    // Over the version read before "two": refused, nothing written.
    let (code, body) = put("three", &etag);
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("conflict") && body.contains(&first), "{body}");
    assert_eq!(server.get(path).1["content"], "two");
    assert_eq!(put("x", "*").0, 400, "If-Match names one version");
    // Absent: a replace has nothing to replace.
    let absent = crate::support::http()
        .put(&server.url("/v1/configs/shop/web/none"))
        .header("If-Match", &etag)
        .send("x")
        .unwrap();
    assert_eq!(absent.status(), 409);
    assert_eq!(server.get("/v1/configs/shop/web/none").0, 404);

    // The same rule through QUIC: `config put --replaces`.
    let second = sextant_core::sha256_hex(b"two");
    let out =
        crate::support::run(&server, &["config", "put", "shop/web/app.json", "--content", "3", "--replaces", &first]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("conflict: "));
    let out =
        crate::support::run(&server, &["config", "put", "shop/web/app.json", "--content", "3", "--replaces", &second]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(server.get(path).1["content"], "3");

    // Every record of the scope in one read.
    assert_eq!(server.post("/v1/instances", &instance("shop/web/orders", "a", 1, false)).0, 200);
    let (code, all) = server.get("/v1/records?namespace=shop");
    assert_eq!(code, 200, "{all}");
    let kinds: Vec<&str> = all["records"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"instance") && kinds.contains(&"config"), "{all}");
    assert_eq!(server.get("/v1/records?namespace=bad%20name").0, 400);
}

const PLUGIN_ACL: &str = r#"{ "tokens": [
    { "name": "reader", "token": "read-all", "namespaces": { "*": "read" } },
    { "name": "ops", "token": "admin-all", "namespaces": { "*": "admin" } }
] }"#;

/// `POST /v1/artifacts` with `bytes` as the body: (status, answer).
fn upload(server: &Server, token: &str, bytes: &[u8]) -> (u16, Value) {
    let request = ureq::http::Request::builder()
        .method("POST")
        .uri(server.url("/v1/artifacts"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/wasm")
        .body(bytes.to_vec())
        .unwrap();
    let mut response = crate::support::http().run(request).expect("POST /v1/artifacts");
    let status = response.status().as_u16();
    (status, response.body_mut().read_json().unwrap_or(Value::Null))
}

#[test]
fn plugins_are_uploaded_loaded_rolled_back_and_deleted_over_http_with_the_clis_rights_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.json");
    std::fs::write(&acl, PLUGIN_ACL).unwrap();
    let server = Server::try_start_with(&dir.path().join("data"), &["--acl", acl.to_str().unwrap()])
        .unwrap_or_else(|f| panic!("{:?}\n{}", f.status, f.log));
    let ops = Some("admin-all");
    let service = "shop/web/orders";
    let read = |name: &str| std::fs::read(sextant_plugin_artifacts::path(name).expect("artifact built")).unwrap();
    let (first, second) = (read("round-robin"), read("ring-hash"));

    // A reader may not upload: refused before the body is stored.
    let (code, answer) = upload(&server, "read-all", &first);
    assert_eq!((code, &answer["error"]), (403, &Value::from("forbidden")), "{answer}");
    let (code, answer) = upload(&server, "admin-all", b"");
    assert_eq!((code, &answer["error"]), (400, &Value::from("invalid")), "{answer}");

    // Uploaded, then loaded by its sha256.
    let (code, answer) = upload(&server, "admin-all", &first);
    assert_eq!(code, 200, "{answer}");
    let sha = sextant_core::sha256_hex(&first);
    assert_eq!((&answer["sha256"], &answer["size"]), (&Value::from(sha.clone()), &Value::from(first.len())));
    let load = |sha: &str, binding: &str| {
        let body = json!({"name": "lb", "kind": "balancer", "binding": binding, "component_sha256": sha});
        server.call("POST", "/v1/plugins", ops, Some(&body))
    };
    let (code, answer) = load(&sha, service);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        (&answer["record"]["sha256"], &answer["record"]["binding"]),
        (&Value::from(sha.clone()), &Value::from(service))
    );
    assert!(answer["revision"].as_u64().is_some_and(|r| r > 0), "{answer}");
    assert!(answer["validated"].is_object(), "{answer}");

    // Bytes that are not a component, uploaded in several chunks: stored whole (its sha256
    // answered), refused at load.
    let junk: Vec<u8> = (0..5 * sextant_proto::ARTIFACT_CHUNK / 2).map(|i| (i * 7 % 251) as u8).collect();
    let (code, answer) = upload(&server, "admin-all", &junk);
    assert_eq!((code, &answer["size"]), (200, &Value::from(junk.len())), "{answer}");
    let junk_sha = sextant_core::sha256_hex(&junk);
    assert_eq!(answer["sha256"], junk_sha.as_str());
    let not_a_component = json!({"name": "junk", "kind": "balancer", "component_sha256": junk_sha});
    let (code, answer) = server.call("POST", "/v1/plugins", ops, Some(&not_a_component));
    assert_eq!((code, &answer["error"]), (422, &Value::from("plugin_rejected")), "{answer}");

    // Bad input changes nothing: an unknown sha, a wrong kind, a bad name, an unknown field,
    // a reader's load, an unknown rollout action.
    let record = |server: &Server| server.call("GET", "/v1/plugins", ops, None).1["plugins"][0].clone();
    let before = record(&server);
    let (code, answer) = load(&"0".repeat(64), service);
    assert!(code >= 400 && answer["error"].is_string(), "{code} {answer}");
    let wrong_kind = json!({"name": "lb", "kind": "health", "binding": service, "component_sha256": sha});
    let (code, answer) = server.call("POST", "/v1/plugins", ops, Some(&wrong_kind));
    assert_eq!((code, &answer["error"]), (422, &Value::from("plugin_rejected")), "{answer}");
    let bad_name = json!({"name": "no spaces", "kind": "balancer", "component_sha256": sha});
    assert_eq!(server.call("POST", "/v1/plugins", ops, Some(&bad_name)).1["error"], "invalid");
    let unknown = json!({"name": "lb", "kind": "balancer", "component_sha256": sha, "colour": "red"});
    assert_eq!(server.call("POST", "/v1/plugins", ops, Some(&unknown)).1["error"], "invalid");
    let as_reader = json!({"name": "lb", "kind": "balancer", "component_sha256": sha});
    assert_eq!(server.call("POST", "/v1/plugins", Some("read-all"), Some(&as_reader)).0, 403);
    let (code, answer) = server.call("POST", "/v1/plugins/lb/rollout/explode", ops, None);
    assert_eq!((code, &answer["error"]), (400, &Value::from("invalid")), "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("pause, resume, promote or abort"), "{answer}");
    assert_eq!(record(&server), before, "nothing changed");

    // A second version replaces the first, which a rollback brings back; forward again.
    let (code, answer) = upload(&server, "admin-all", &second);
    assert_eq!(code, 200, "{answer}");
    let sha2 = sextant_core::sha256_hex(&second);
    assert_eq!(load(&sha2, service).0, 200);
    let (code, answer) = server.call("POST", "/v1/plugins/lb/rollback", ops, None);
    assert_eq!((code, &answer["record"]["sha256"]), (200, &Value::from(sha.clone())), "{answer}");
    let (code, answer) = server.call("POST", "/v1/plugins/lb/rollback?forward=true", ops, None);
    assert_eq!((code, &answer["record"]["sha256"]), (200, &Value::from(sha2.clone())), "{answer}");
    assert_eq!(server.call("POST", "/v1/plugins/lb/rollback", Some("read-all"), None).0, 403);

    // Deleted; a second delete finds nothing.
    let (code, answer) = server.call("DELETE", "/v1/plugins/lb", ops, None);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(server.call("DELETE", "/v1/plugins/lb", ops, None).0, 404);
    assert_eq!(server.call("GET", "/v1/plugins", ops, None).1["plugins"], json!([]));
}

#[test]
fn a_config_entry_keeps_the_versions_it_replaced_and_their_contents() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let path = "/v1/configs/shop/web/app.yaml";
    let mut versions = Vec::new();
    for content in ["timeout: 1s\n", "timeout: 2s\n", "timeout: 2s\n", "timeout: 3s\n"] {
        let (code, answer) = server.put_text(path, content);
        assert_eq!(code, 200, "{answer}");
        versions.push((answer["version"].as_str().unwrap().to_owned(), content));
    }
    let (code, entry) = server.get(path);
    assert_eq!(code, 200, "{entry}");
    assert_eq!(entry["content"], "timeout: 3s\n");
    // Newest first; writing the same content again replaced nothing.
    let history: Vec<&str> =
        entry["history"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert_eq!(history, [versions[1].0.as_str(), versions[0].0.as_str()], "{entry}");
    assert_eq!(entry["history"][0]["size"], 12);
    assert!(entry["history"][0]["replaced_at_unix_ms"].as_u64().is_some_and(|t| t > 0), "{entry}");
    for (version, content) in [&versions[0], &versions[1], &versions[3]] {
        let (code, old) = server.get(&format!("{path}/versions/{version}"));
        assert_eq!((code, &old["content"]), (200, &Value::from(*content)), "{old}");
    }
    // A version the entry never had, even one the store holds as an artifact of another.
    let other = "/v1/configs/shop/web/other.yaml";
    assert_eq!(server.put_text(other, "a").0, 200);
    assert_eq!(server.put_text(other, "b").0, 200);
    let (_, elsewhere) = server.get(other);
    let foreign = elsewhere["history"][0]["version"].as_str().unwrap().to_owned();
    let (code, answer) = server.get(&format!("{path}/versions/{foreign}"));
    assert_eq!((code, &answer["error"]), (404, &Value::from("not_found")), "{answer}");

    // Twenty are kept: the oldest go.
    for n in 4..30 {
        assert_eq!(server.put_text(path, &format!("timeout: {n}s\n")).0, 200);
    }
    let (_, entry) = server.get(path);
    let history = entry["history"].as_array().unwrap();
    assert_eq!(history.len(), sextant_core::CONFIG_HISTORY, "{entry}");
    assert!(history.iter().all(|v| v["version"] != versions[0].0.as_str()), "the first version went");
    assert_eq!(server.get(&format!("{path}/versions/{}", versions[0].0)).0, 404);
}
