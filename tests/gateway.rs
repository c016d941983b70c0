//! `sextant gateway` follows the control plane: a plugin bound with `sextant plugin load
//! --bind` reaches the running gateway and changes where its traffic goes, with no failed
//! request; a new version, a rollback and a delete follow; the gateway reports what it runs
//! in its registration (`plugin list` shows it per host); with the server gone it keeps
//! routing, and a restart with no server reachable comes up on its cached view and plugins.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sextant_gateway::backend::{Backend, Behavior};

use crate::support::{
    Server, free_port, http, instance, promtool_check, run, sextant_bin, two_servers_on_etcd, wait_until,
};

pub(crate) const SERVICE: &str = "shop/web/orders";

pub(crate) struct Gateway {
    child: Child,
    pub(crate) addr: String,
    pub(crate) metrics: String,
    log: std::path::PathBuf,
    /// Answers received, by status (what its metrics must count).
    answered: std::cell::RefCell<std::collections::BTreeMap<u16, u64>>,
}

impl Gateway {
    fn start(server: &Server, dir: &Path, port: u16) -> Self {
        Self::start_for(server, dir, port, SERVICE)
    }

    /// Routes `/` to `service` with round robin and `x-user` as the affinity key.
    fn start_for(server: &Server, dir: &Path, port: u16, service: &str) -> Self {
        let config = dir.join("gateway.json");
        let document = serde_json::json!({
            "gateway": {"routes": [{"path_prefix": "/", "service": service, "hash_header": "x-user"}]},
            "balancer": "round-robin",
        });
        std::fs::write(&config, document.to_string()).unwrap();
        Self::spawn(server, dir, port, &["--config", config.to_str().unwrap()])
    }

    pub(crate) fn spawn(server: &Server, dir: &Path, port: u16, extra: &[&str]) -> Self {
        Self::spawn_on(&[server], dir, port, extra)
    }

    /// Follows `servers` (in that order; they share one CA, the first's). In `zone-a` unless
    /// `extra` gives a `--zone`.
    pub(crate) fn spawn_on(servers: &[&Server], dir: &Path, port: u16, extra: &[&str]) -> Self {
        let log = dir.join(format!("gateway-{port}.log"));
        let addr = format!("127.0.0.1:{port}");
        let metrics = format!("127.0.0.1:{}", free_port());
        let ca = servers[0].data_dir.join("tls/ca.pem");
        let list = servers.iter().map(|s| s.quic.to_string()).collect::<Vec<_>>().join(",");
        let child = Command::new(sextant_bin())
            .args(["gateway", "--server", &list, "--ca", ca.to_str().unwrap()])
            .args(["--listen", &addr])
            .args(extra)
            .args(["--cache", dir.join("cache").to_str().unwrap(), "--register-as", "shop/edge/gateway"])
            .args(if extra.contains(&"--zone") { &[][..] } else { &["--zone", "zone-a"][..] })
            .args(["--drain-secs", "1", "--metrics", &metrics])
            .env("SEXTANT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn sextant gateway");
        Self { child, addr, metrics, log, answered: std::cell::RefCell::default() }
    }

    pub(crate) fn metrics(&self) -> String {
        let mut r = http().get(&format!("http://{}/metrics", self.metrics)).call().expect("GET /metrics");
        assert_eq!(r.status(), 200);
        let kind = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        r.body_mut().read_to_string().unwrap()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One request with the affinity key `user`: the status.
    pub(crate) fn get(&self, user: &str) -> u16 {
        let status = http()
            .get(&format!("http://{}/orders", self.addr))
            .header("x-user", user)
            .call()
            .map_or(0, |r| r.status().as_u16());
        if status != 0 {
            *self.answered.borrow_mut().entry(status).or_default() += 1;
        }
        status
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` requests with one affinity key, each answered 200: how many each backend served.
fn send(gateway: &Gateway, backends: &[Backend], n: usize) -> Vec<u64> {
    let before: Vec<u64> = backends.iter().map(Backend::served).collect();
    for k in 0..n {
        let status = gateway.get("user-7");
        assert_eq!(status, 200, "request {k} failed\n{}", gateway.log());
    }
    backends.iter().zip(before).map(|(b, n)| b.served() - n).collect()
}

/// Sends rounds of `n` requests until `want` holds for one round's spread (every request
/// must succeed meanwhile); returns the rounds sent.
fn until_spread(gateway: &Gateway, backends: &[Backend], n: usize, what: &str, want: impl Fn(&[u64]) -> bool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rounds = 0;
    loop {
        rounds += 1;
        let spread = send(gateway, backends, n);
        if want(&spread) {
            return rounds;
        }
        assert!(Instant::now() < deadline, "{what}: still {spread:?}\n{}", gateway.log());
    }
}

/// Requests in a round that must all reach one backend to call a balancer sticky: round robin
/// keeps one rotation per worker thread, so a few requests can land on one backend by chance;
/// thirty over three backends cannot.
const STICKY_ROUND: usize = 30;

fn sticky(spread: &[u64]) -> bool {
    spread.iter().filter(|&&n| n > 0).count() == 1
}

/// Round robin runs one rotation per plugin instance (one per worker thread), so a round
/// is not split exactly evenly: every backend takes a fair share.
fn spread_out(spread: &[u64]) -> bool {
    let total: u64 = spread.iter().sum();
    spread.iter().all(|&n| n * 10 >= total)
}

fn plugin_list(server: &Server) -> Value {
    let out = run(server, &["plugin", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What the gateways report for `plugin` in their registrations, one state per gateway.
fn reported(server: &Server, plugin: &str) -> Vec<String> {
    plugin_list(server)["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .filter(|h| {
                    h["plugin"] == plugin && h["host"].as_str().is_some_and(|s| s.starts_with("shop/edge/gateway/"))
                })
                .map(|h| h["state"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn load(server: &Server, artifact: &str, name: &str) {
    let path = sextant_plugin_artifacts::path(artifact).expect("artifact built");
    let out = run(server, &["plugin", "load", path, "--name", name, "--bind", SERVICE]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn sha12(artifact: &str) -> String {
    let bytes = std::fs::read(sextant_plugin_artifacts::path(artifact).unwrap()).unwrap();
    sextant_core::sha256_hex(&bytes)[..12].to_owned()
}

#[test]
fn the_gateway_follows_plugin_loads_rollbacks_and_deletes_and_keeps_routing_without_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backends: Vec<Backend> =
        (0..3).map(|i| runtime.block_on(Backend::start(&format!("b{i}"), Behavior::default())).unwrap()).collect();
    let server = Server::start(&dir.path().join("data"));
    for (i, b) in backends.iter().enumerate() {
        let (status, body) = server.post("/v1/instances", &instance(SERVICE, &format!("b{i}"), b.addr().port(), false));
        assert_eq!(status, 200, "{body}");
    }
    let gw_dir = dir.path().join("gw");
    std::fs::create_dir(&gw_dir).unwrap();
    let port = free_port();
    let mut gateway = Gateway::start(&server, &gw_dir, port);
    let gw2_dir = dir.path().join("gw2");
    std::fs::create_dir(&gw2_dir).unwrap();
    let second = Gateway::start(&server, &gw2_dir, free_port());
    wait_until("the gateways route", || gateway.get("user-7") == 200 && second.get("user-7") == 200);

    // The route's default, round robin: one key or not, every backend alike.
    until_spread(&gateway, &backends, 30, "round robin", spread_out);
    until_spread(&second, &backends, 30, "round robin on the second gateway", spread_out);

    // Bound through the control plane: ring hash sends one key to one backend, on both.
    let loaded = Instant::now();
    let path = sextant_plugin_artifacts::path("ring-hash").expect("artifact built");
    let out = run(&server, &["plugin", "load", path, "--name", "sticky", "--bind", SERVICE, "--wait", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("2 hosts run sticky {}", sha12("ring-hash"))), "{said}");
    eprintln!("plugin load --bind --wait 2 → both gateways report running it: {:.2} s", loaded.elapsed().as_secs_f64());
    until_spread(&gateway, &backends, STICKY_ROUND, "the bound ring hash on the gateway", sticky);
    until_spread(&second, &backends, STICKY_ROUND, "the bound ring hash on the second gateway", sticky);
    eprintln!("plugin load --bind → both gateways run it: {:.2} s", loaded.elapsed().as_secs_f64());
    let active = |artifact: &str| vec![format!("active {}", sha12(artifact)); 2];
    wait_until("both gateways report the plugin", || reported(&server, "sticky") == active("ring-hash"));
    let sticky_spread = send(&gateway, &backends, STICKY_ROUND);
    assert!(sticky(&sticky_spread), "{sticky_spread:?}");

    // A new version (round robin as a wasm component), then a rollback to ring hash.
    load(&server, "round-robin", "sticky");
    until_spread(&gateway, &backends, 30, "the new version on the gateway", spread_out);
    until_spread(&second, &backends, 30, "the new version on the second gateway", spread_out);
    wait_until("both gateways report the new version", || reported(&server, "sticky") == active("round-robin"));
    let out = run(&server, &["plugin", "rollback", "sticky"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    until_spread(&gateway, &backends, STICKY_ROUND, "the rollback on the gateway", sticky);
    until_spread(&second, &backends, STICKY_ROUND, "the rollback on the second gateway", sticky);
    let both = second.answered.borrow().values().sum::<u64>() + gateway.answered.borrow().values().sum::<u64>();
    let failed: u64 = [&gateway, &second]
        .iter()
        .flat_map(|g| g.answered.borrow().iter().filter(|(s, _)| **s != 200).map(|(_, n)| *n).collect::<Vec<_>>())
        .sum();
    eprintln!("through both gateways: {both} requests, {failed} not answered 200 (before the first route)");
    drop(second);

    // Deleted: back to the route's default; bound again: the cached component, at once.
    let out = run(&server, &["plugin", "delete", "sticky"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    until_spread(&gateway, &backends, 30, "the default after the delete", spread_out);
    load(&server, "ring-hash", "sticky");
    until_spread(&gateway, &backends, STICKY_ROUND, "bound again", sticky);

    // The gateway's metrics: every answer counted by class, the endpoints up, the bound
    // plugin's calls per version (ring hash: two versions' worth, kept across the swaps).
    let metrics = gateway.metrics();
    let value = |series: &str| -> Option<u64> {
        metrics.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let answered = gateway.answered.borrow().clone();
    for (class, range) in [("2xx", 200..300), ("5xx", 500..600)] {
        let want: u64 = answered.iter().filter(|(s, _)| range.contains(*s)).map(|(_, n)| n).sum();
        let series = format!(r#"sextant_gateway_requests_total{{route="/",service="{SERVICE}",class="{class}"}} "#);
        assert_eq!(value(&series).unwrap_or(0), want, "{class}: {answered:?}\n{metrics}");
    }
    for b in &backends {
        let series =
            format!(r#"sextant_gateway_endpoint_health{{service="{SERVICE}",endpoint="{}",health="up"}} "#, b.addr());
        assert_eq!(value(&series), Some(1), "{series}\n{metrics}");
    }
    let ring_sha = {
        let bytes = std::fs::read(sextant_plugin_artifacts::path("ring-hash").unwrap()).unwrap();
        sextant_core::sha256_hex(&bytes)
    };
    let calls =
        format!(r#"sextant_gateway_plugin_calls_total{{kind="balancer",plugin="sticky",sha256="{ring_sha}"}} "#);
    assert!(value(&calls).is_some_and(|n| n >= 4 * STICKY_ROUND as u64), "{calls}\n{metrics}");
    let fallbacks =
        format!(r#"sextant_gateway_plugin_fallbacks_total{{kind="balancer",plugin="sticky",sha256="{ring_sha}"}} "#);
    assert_eq!(value(&fallbacks), Some(0), "{metrics}");
    let sampled = format!(
        r#"sextant_gateway_plugin_call_duration_seconds_count{{kind="balancer",plugin="sticky",sha256="{ring_sha}"}} "#
    );
    assert!(value(&sampled).is_some_and(|n| n >= 1), "{sampled}\n{metrics}");
    assert!(metrics.contains("sextant_gateway_request_duration_seconds_bucket{"), "{metrics}");
    crate::support::promtool_check(&metrics);

    // A health policy bound through the control plane runs where traffic is: this one calls
    // every probe unhealthy, and the gateway's endpoints go down; deleted, they come back.
    let health = sextant_plugin_artifacts::path("bad-health").expect("artifact built");
    let out = run(
        &server,
        &["plugin", "load", health, "--name", "strict", "--kind", "health", "--bind", SERVICE, "--config", "{}"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let health_of = |state: &str| {
        let metrics = gateway.metrics();
        backends
            .iter()
            .filter(|b| {
                metrics.lines().any(|l| {
                    l == format!(
                        r#"sextant_gateway_endpoint_health{{service="{SERVICE}",endpoint="{}",health="{state}"}} 1"#,
                        b.addr()
                    )
                })
            })
            .count()
    };
    wait_until("the health policy takes the endpoints down on the gateway", || health_of("up") == 0);
    // What the operator is shown is what ran: the policy that ejected them counts its calls.
    let bad_health = {
        let bytes = std::fs::read(sextant_plugin_artifacts::path("bad-health").unwrap()).unwrap();
        sextant_core::sha256_hex(&bytes)
    };
    let health_calls =
        format!(r#"sextant_gateway_plugin_calls_total{{kind="health",plugin="strict",sha256="{bad_health}"}} "#);
    let metrics = gateway.metrics();
    assert!(
        metrics
            .lines()
            .find(|l| l.starts_with(&health_calls))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .is_some_and(|n| n >= 3),
        "{health_calls}\n{metrics}"
    );
    let out = run(&server, &["plugin", "delete", "strict"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the endpoints up again", || health_of("up") == 3);
    until_spread(&gateway, &backends, STICKY_ROUND, "ring hash after the health policy left", sticky);

    // The server goes away: the gateway keeps routing with its plugin.
    drop(server);
    let spread = send(&gateway, &backends, STICKY_ROUND);
    assert!(sticky(&spread), "still ring hash with no server: {spread:?}");

    // Restarted with no server reachable: the cached view and the cached component.
    let _ = Command::new("kill").args(["-TERM", &gateway.child.id().to_string()]).status();
    let _ = gateway.child.wait();
    let fake = Server::unreachable(&dir.path().join("data"));
    gateway = Gateway::start(&fake, &gw_dir, port);
    wait_until("the restarted gateway routes", || gateway.get("user-7") == 200);
    until_spread(&gateway, &backends, STICKY_ROUND, "the cached plugin after a restart with no server", sticky);
    let log = gateway.log();
    assert!(log.contains("plugin active"), "the cached component was swapped in:\n{log}");
}

/// The gateway's own registration, as the server holds it.
fn registration(server: &Server) -> Option<Value> {
    let (status, body) = server.get("/v1/services/shop/edge/gateway");
    (status == 200).then(|| body["instances"][0].clone())
}

/// What the gateway says of its config entry in its registration.
fn config_status(server: &Server) -> String {
    registration(server)
        .and_then(|i| i["metadata"]["sextant.gateway.config"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn config_put(server: &Server, content: &str) {
    let out = run(server, &["config", "put", "shop/edge/gateway", "--content", content]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_gateway_follows_its_config_entry_and_a_bad_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backends: Vec<Backend> =
        ["a", "b"].iter().map(|n| runtime.block_on(Backend::start(n, Behavior::default())).unwrap()).collect();
    let server = Server::start(&dir.path().join("data"));
    for (name, b) in ["a", "b"].iter().zip(&backends) {
        let service = format!("shop/web/{name}");
        let (status, body) = server.post("/v1/instances", &instance(&service, name, b.addr().port(), false));
        assert_eq!(status, 200, "{body}");
    }
    let to = |service: &str| {
        serde_json::json!({"gateway": {"routes": [{"path_prefix": "/", "service": service}]}, "balancer": "round-robin"})
            .to_string()
    };
    config_put(&server, &to("shop/web/a"));
    let gw_dir = dir.path().join("gw");
    std::fs::create_dir(&gw_dir).unwrap();
    let gateway = Gateway::spawn(&server, &gw_dir, free_port(), &["--config-entry", "shop/edge/gateway"]);
    wait_until("the gateway routes", || gateway.get("u") == 200);
    assert_eq!(send(&gateway, &backends, 8), vec![8, 0], "the entry routes / to a");
    wait_until("the gateway reports its entry applied", || config_status(&server).starts_with("applied "));

    // A new version of the entry: routed to b, without a restart.
    config_put(&server, &to("shop/web/b"));
    until_spread(&gateway, &backends, 4, "the new entry routes / to b", |s| s == [0, 4]);

    // Not JSON, then an unknown balancer: refused, shown, and b keeps serving.
    for (bad, says) in [("{not json", "gateway configuration"), (r#"{"balancer": "nope"}"#, "unknown balancer")] {
        config_put(&server, bad);
        wait_until("the refusal in the registration", || {
            let status = config_status(&server);
            status.starts_with("refused ") && status.contains(says)
        });
        assert_eq!(send(&gateway, &backends, 6), vec![0, 6], "the last good entry keeps serving");
    }
    assert!(gateway.log().contains("config entry refused"), "{}", gateway.log());

    // Gray release: a candidate document for the gateways labelled canary=yes reaches the
    // second gateway alone; promoted, it reaches both.
    config_put(&server, &to("shop/web/b"));
    until_spread(&gateway, &backends, 4, "a good entry again", |s| s == [0, 4]);
    let canary_dir = dir.path().join("canary");
    std::fs::create_dir(&canary_dir).unwrap();
    let canary_args = ["--config-entry", "shop/edge/gateway", "--label", "canary=yes"];
    let canary = Gateway::spawn(&server, &canary_dir, free_port(), &canary_args);
    wait_until("the canary gateway routes", || canary.get("u") == 200);
    until_spread(&canary, &backends, 4, "the canary gateway starts on the stable entry", |s| s == [0, 4]);
    let candidate = to("shop/web/a");
    let beta =
        ["config", "put", "shop/edge/gateway", "--content", candidate.as_str(), "--beta", "--match", "canary=yes"];
    let out = run(&server, &beta);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    until_spread(&canary, &backends, 4, "the candidate routes the canary gateway to a", |s| s == [4, 0]);
    assert_eq!(send(&gateway, &backends, 6), vec![0, 6], "the other gateway keeps the stable entry");
    let (_, registered) = server.get("/v1/services/shop/edge/gateway");
    assert!(
        registered["instances"].as_array().unwrap().iter().any(|i| i["metadata"]["sextant.label.canary"] == "yes"),
        "the label is in the canary's registration: {registered}"
    );
    let out = run(&server, &["config", "promote", "shop/edge/gateway"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    until_spread(&gateway, &backends, 4, "promoted, the other gateway routes to a", |s| s == [4, 0]);
    assert_eq!(send(&canary, &backends, 6), vec![6, 0]);
}

#[test]
fn a_plugin_that_fails_only_on_a_gateway_is_reported_for_that_host_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backends: Vec<Backend> =
        ["a", "b"].iter().map(|n| runtime.block_on(Backend::start(n, Behavior::default())).unwrap()).collect();
    let server = Server::start(&dir.path().join("data"));
    // Sixteen services of 4 instances (never dialled), then the one the gateway routes: 2.
    for s in 0..16 {
        for port in 1..=4 {
            let body = instance(&format!("many/g/s{s:02}"), &format!("i{port}"), port, false);
            assert_eq!(server.post("/v1/instances", &body).0, 200);
        }
    }
    for (name, b) in ["a", "b"].iter().zip(&backends) {
        assert_eq!(server.post("/v1/instances", &instance("many/g/s16", name, b.addr().port(), false)).0, 200);
    }
    let gw_dir = dir.path().join("gw");
    std::fs::create_dir(&gw_dir).unwrap();
    let gateway = Gateway::start_for(&server, &gw_dir, free_port(), "many/g/s16");
    wait_until("the gateway routes", || gateway.get("u") == 200);

    // Refuses snapshots of fewer than 4 endpoints: the server validates the first 16 services
    // of the namespace (4 each) and accepts it; the gateway's service has 2.
    let misbehave = sextant_plugin_artifacts::path("misbehave").expect("artifact built");
    let config = r#"{"fault": "refuse-below", "endpoints": 4}"#;
    let out = run(
        &server,
        &["plugin", "load", misbehave, "--name", "small", "--bind", "many", "--config", config, "--wait", "1"],
    );
    // Written (the server accepted it), then --wait sees the gateway refuse it: exit 5.
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused small") && stderr.contains("refuse-below: 2 endpoints"), "{stderr}");
    // The server says where it validated: a sample of 16 of the namespace's 17 services.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sample = (0..16).map(|s| format!("many/g/s{s:02}")).collect::<Vec<_>>().join(", ");
    assert!(
        stdout.contains(&format!("validated on the live snapshots of 16 of the 17 services the binding covers on this server (a sample: the others are checked as each host activates it): {sample}\n")),
        "{stdout}"
    );
    wait_until("the gateway reports the refusal", || {
        reported(&server, "small").iter().any(|s| s.starts_with("failed ") && s.contains("refuse-below: 2 endpoints"))
    });
    let list = run(&server, &["plugin", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("host shop/edge/gateway/") && l.contains("plugin small: failed")),
        "{text}"
    );
    // The route keeps its round robin: every request answered, both backends used.
    let spread = send(&gateway, &backends, 20);
    assert!(spread_out(&spread), "{spread:?}\n{}", gateway.log());
}

/// The weight each backend carries in the gateway's rotation, from its `/metrics`.
fn weights(gateway: &Gateway, backends: &[Backend]) -> Vec<Option<u64>> {
    let metrics = gateway.metrics();
    backends
        .iter()
        .map(|b| {
            let series = format!(r#"sextant_gateway_endpoint_weight{{service="{SERVICE}",endpoint="{}"}} "#, b.addr());
            metrics.lines().find_map(|l| l.strip_prefix(&series)?.parse().ok())
        })
        .collect()
}

#[test]
fn a_scheduler_bound_through_the_control_plane_sets_the_gateways_weights() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backends: Vec<Backend> =
        ["v1", "v2"].iter().map(|n| runtime.block_on(Backend::start(n, Behavior::default())).unwrap()).collect();
    let server = Server::start(&dir.path().join("data"));
    for (version, b) in ["v1", "v2"].iter().zip(&backends) {
        let mut body = instance(SERVICE, version, b.addr().port(), false);
        body["version"] = serde_json::json!(version);
        let (status, answer) = server.post("/v1/instances", &body);
        assert_eq!(status, 200, "{answer}");
    }
    let gw_dir = dir.path().join("gw");
    std::fs::create_dir(&gw_dir).unwrap();
    let gateway = Gateway::start(&server, &gw_dir, free_port());
    wait_until("the gateway routes", || gateway.get("u") == 200);
    until_spread(&gateway, &backends, 20, "round robin over both", spread_out);
    let registered = weights(&gateway, &backends);
    assert!(registered.iter().all(|w| w.is_some_and(|w| w > 0)), "{registered:?}");

    // The gateway's route runs no scheduler; one bound to the service gets a slot there and
    // its weights apply: the gray split sends nothing to v2.
    let split = sextant_plugin_artifacts::path("gray-split").expect("artifact built");
    let config = r#"{"split": {"v1": 100, "v2": 0}}"#;
    let out = run(
        &server,
        &["plugin", "load", split, "--name", "canary", "--kind", "scheduler", "--bind", SERVICE, "--config", config],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("v2's weight is 0 on the gateway", || weights(&gateway, &backends)[1] == Some(0));
    assert_eq!(send(&gateway, &backends, 10), vec![10, 0], "v2 takes no traffic");
    wait_until("the gateway reports the scheduler", || {
        reported(&server, "canary").first().is_some_and(|s| s.starts_with("active "))
    });

    // Unbound: the slot goes, the registered weights stand again.
    let out = run(&server, &["plugin", "delete", "canary"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the registered weights again", || weights(&gateway, &backends) == registered);
    until_spread(&gateway, &backends, 20, "both backends again", spread_out);
}

/// The run ids of the gateway registrations the server holds.
fn registered_runs(server: &Server) -> Vec<String> {
    let (status, body) = server.get("/v1/services/shop/edge/gateway");
    if status != 200 {
        return Vec::new();
    }
    body["instances"]
        .as_array()
        .map(|all| {
            all.iter().filter_map(|i| i["metadata"]["sextant.gateway.run"].as_str().map(str::to_owned)).collect()
        })
        .unwrap_or_default()
}

fn conflict_gauge(gateway: &Gateway) -> Option<u64> {
    gateway.metrics().lines().find_map(|l| l.strip_prefix("sextant_gateway_identity_conflict ")?.parse().ok())
}

#[test]
fn two_gateways_of_one_identity_are_told_apart_and_neither_deregisters_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backend = runtime.block_on(Backend::start("a", Behavior::default())).unwrap();
    let server = Server::start(&dir.path().join("data"));
    assert_eq!(server.post("/v1/instances", &instance(SERVICE, "a", backend.addr().port(), false)).0, 200);

    // Listening on every interface registers no reachable address: refused, with the fix.
    let out = Command::new(sextant_bin())
        .args(["gateway", "--server", &server.quic.to_string()])
        .args(["--ca", server.data_dir.join("tls/ca.pem").to_str().unwrap()])
        .args(["--listen", &format!("0.0.0.0:{}", free_port()), "--route", &format!("/={SERVICE}")])
        .args(["--cache", dir.path().join("c0").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give --advertise"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Two gateways advertising one address under one service: one identity.
    let advertise = format!("127.0.0.1:{}", free_port());
    let start = |name: &str| {
        let gw_dir = dir.path().join(name);
        std::fs::create_dir(&gw_dir).unwrap();
        let config = gw_dir.join("gateway.json");
        let document = serde_json::json!({"gateway": {"routes": [{"path_prefix": "/", "service": SERVICE}]}});
        std::fs::write(&config, document.to_string()).unwrap();
        Gateway::spawn(
            &server,
            &gw_dir,
            free_port(),
            &["--config", config.to_str().unwrap(), "--advertise", &advertise],
        )
    };
    let first = start("gw1");
    wait_until("the first gateway registered", || registered_runs(&server).len() == 1);
    let first_run = registered_runs(&server)[0].clone();
    let second = start("gw2");
    wait_until("the second gateway's registration replaces the first's", || {
        registered_runs(&server).first().is_some_and(|r| *r != first_run)
    });
    // The first sees the takeover: it stops registering (no tug of war), says so, and
    // serves on.
    wait_until("the first gateway reports the conflict", || conflict_gauge(&first) == Some(1));
    assert_eq!(conflict_gauge(&second), Some(0));
    assert!(first.log().contains("another gateway registered with this gateway's identity"), "{}", first.log());
    let second_run = registered_runs(&server)[0].clone();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(registered_runs(&server), vec![second_run.clone()], "the first does not take it back");
    wait_until("both gateways route", || first.get("u") == 200 && second.get("u") == 200);

    // The first stops: the registration is the second's, so it stays.
    let mut first = first;
    let _ = Command::new("kill").args(["-TERM", &first.child.id().to_string()]).status();
    let _ = first.child.wait();
    assert!(first.log().contains("not deregistering"), "{}", first.log());
    assert_eq!(registered_runs(&server), vec![second_run], "the second gateway is still registered");
}

/// The same flow with two servers on one etcd: gateways following both (A first), a plugin
/// loaded, replaced and rolled back through B reaches both gateways; A killed, the gateways
/// go on through B and follow a delete made there.
#[test]
fn two_servers_on_one_etcd_drive_the_gateways_and_one_going_away_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (etcd, a, b) = two_servers_on_etcd(dir.path(), &runtime);
    let backends: Vec<Backend> =
        (0..3).map(|i| runtime.block_on(Backend::start(&format!("b{i}"), Behavior::default())).unwrap()).collect();
    for (i, backend) in backends.iter().enumerate() {
        let (status, body) =
            a.post("/v1/instances", &instance(SERVICE, &format!("b{i}"), backend.addr().port(), false));
        assert_eq!(status, 200, "{body}");
    }
    let gateway = |name: &str| {
        let gw_dir = dir.path().join(name);
        std::fs::create_dir(&gw_dir).unwrap();
        let config = gw_dir.join("gateway.json");
        let document = serde_json::json!({
            "gateway": {"routes": [{"path_prefix": "/", "service": SERVICE, "hash_header": "x-user"}]},
            "balancer": "round-robin",
        });
        std::fs::write(&config, document.to_string()).unwrap();
        Gateway::spawn_on(&[&a, &b], &gw_dir, free_port(), &["--config", config.to_str().unwrap()])
    };
    let (one, two) = (gateway("gw1"), gateway("gw2"));
    wait_until("both gateways route", || one.get("u") == 200 && two.get("u") == 200);
    // Counted from here: answers before the first view came are not failures.
    one.answered.borrow_mut().clear();
    two.answered.borrow_mut().clear();
    until_spread(&one, &backends, 30, "round robin", spread_out);
    until_spread(&two, &backends, 30, "round robin on the second", spread_out);

    // Through B: ring hash reaches both gateways (reported per host, through etcd).
    let loaded = Instant::now();
    let ring = sextant_plugin_artifacts::path("ring-hash").expect("artifact built");
    let out = run(&b, &["plugin", "load", ring, "--name", "sticky", "--bind", SERVICE, "--wait", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("etcd: plugin load through B --wait 2: {:.2} s", loaded.elapsed().as_secs_f64());
    until_spread(&one, &backends, STICKY_ROUND, "ring hash on the first", sticky);
    until_spread(&two, &backends, STICKY_ROUND, "ring hash on the second", sticky);
    // A new version through B, then a rollback through A: both gateways follow each.
    load(&b, "round-robin", "sticky");
    until_spread(&one, &backends, 30, "the new version on the first", spread_out);
    until_spread(&two, &backends, 30, "the new version on the second", spread_out);
    let out = run(&a, &["plugin", "rollback", "sticky"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    until_spread(&one, &backends, STICKY_ROUND, "the rollback on the first", sticky);
    until_spread(&two, &backends, STICKY_ROUND, "the rollback on the second", sticky);

    // A goes away: the gateways keep routing (through B now) and follow what B is told.
    let (status, _) = a.terminate();
    assert!(status.success());
    let spread = send(&one, &backends, STICKY_ROUND);
    assert!(sticky(&spread), "still ring hash with A gone: {spread:?}");
    let out = run(&b, &["plugin", "delete", "sticky"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    until_spread(&one, &backends, 30, "the delete through B on the first", spread_out);
    until_spread(&two, &backends, 30, "the delete through B on the second", spread_out);
    let failed: u64 = [&one, &two]
        .iter()
        .flat_map(|g| g.answered.borrow().iter().filter(|(s, _)| **s != 200).map(|(_, n)| *n).collect::<Vec<_>>())
        .sum();
    assert_eq!(failed, 0, "no request failed through the swaps and A's exit");
    drop(etcd);
}

/// Requests from `clients` threads to `addr` until `stop`: answers by status (0: no answer,
/// the gateway's port closed while it restarts), with keep-alive connections and no retry
/// (the gateway's own retries are off in the route's configuration).
fn load_until(
    addr: &str,
    clients: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> std::collections::BTreeMap<u16, u64> {
    use std::sync::atomic::Ordering::Relaxed;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || {
                    let agent = http();
                    let mut answers = std::collections::BTreeMap::new();
                    let mut k = 0u64;
                    while !stop.load(Relaxed) {
                        k += 1;
                        let status = agent
                            .get(&format!("http://{addr}/orders"))
                            .header("x-user", &format!("user-{c}-{k}"))
                            .call()
                            .map_or(0, |r| r.status().as_u16());
                        *answers.entry(status).or_insert(0u64) += 1;
                        if status == 0 {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    answers
                })
            })
            .collect();
        let mut all = std::collections::BTreeMap::new();
        for h in handles {
            for (status, n) in h.join().expect("client thread") {
                *all.entry(status).or_insert(0) += n;
            }
        }
        all
    })
}

/// What the fleet tests start from: three backends registered (persistent) on a fresh
/// server, and a gateway directory whose config routes `/` to them with round robin and
/// retries off (one attempt per request), `hash_header` as the affinity key when given.
struct Fleet {
    dir: tempfile::TempDir,
    /// The backends run on it.
    runtime: tokio::runtime::Runtime,
    backends: Vec<Backend>,
    server: Server,
    gw_dir: std::path::PathBuf,
    config: std::path::PathBuf,
}

fn fleet(hash_header: Option<&str>) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backends: Vec<Backend> =
        (0..3).map(|i| runtime.block_on(Backend::start(&format!("b{i}"), Behavior::default())).unwrap()).collect();
    let server = Server::start(&dir.path().join("data"));
    for (i, b) in backends.iter().enumerate() {
        let (status, body) = server.post("/v1/instances", &instance(SERVICE, &format!("b{i}"), b.addr().port(), false));
        assert_eq!(status, 200, "{body}");
    }
    let gw_dir = dir.path().join("gw");
    std::fs::create_dir(&gw_dir).unwrap();
    let config = gw_dir.join("gateway.json");
    let mut route = serde_json::json!({"path_prefix": "/", "service": SERVICE});
    if let Some(h) = hash_header {
        route["hash_header"] = h.into();
    }
    let document = serde_json::json!({
        "gateway": {"routes": [route]},
        "balancer": "round-robin",
        "retry": {"attempts": 1},
    });
    std::fs::write(&config, document.to_string()).unwrap();
    Fleet { dir, runtime, backends, server, gw_dir, config }
}

/// A gateway killed (SIGKILL, then SIGTERM) and restarted on its cache under load, first while
/// its server is up and nothing changed (the server has nothing to send it: it resumes from the
/// cached revision), then with its server gone (nothing to resume from): either way it routes on
/// the cached view from its first request. Before the fix it answered 503 ("no endpoint
/// traffic may go to") on every request with its server up, for good.
#[test]
fn a_gateway_restarted_on_its_cache_with_its_server_up_or_down_answers_no_503() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    let Fleet { dir: _dir, runtime: _runtime, backends, server, gw_dir, config } = fleet(None);
    let start =
        |server: &Server| Gateway::spawn(server, &gw_dir, port_of(&gw_dir), &["--config", config.to_str().unwrap()]);
    let mut gateway = start(&server);
    wait_until("the gateway routes", || gateway.get("u") == 200);
    wait_until("the gateway's cache is on disk", || {
        std::fs::read_dir(gw_dir.join("cache")).is_ok_and(|d| d.filter_map(Result::ok).count() > 0)
    });
    // The cache is written at most every 500 ms after a change.
    std::thread::sleep(Duration::from_secs(1));

    /// Stops the load when dropped, so a failed wait does not leave the clients running.
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Relaxed);
        }
    }
    let served = || backends.iter().map(Backend::served).sum::<u64>();
    // Four clients while the gateway is killed and restarted twice; the answers by status.
    let restarts = |gateway: &mut Gateway, server: &Server| {
        let stop = AtomicBool::new(false);
        let addr = gateway.addr.clone();
        std::thread::scope(|s| {
            let load = s.spawn(|| load_until(&addr, 4, &stop));
            let _stop = Stop(&stop);
            for signal in ["-KILL", "-TERM"] {
                let before = served();
                wait_until("traffic through the running gateway", || served() > before + 50);
                let _ = Command::new("kill").args([signal, &gateway.child.id().to_string()]).status();
                let _ = gateway.child.wait();
                *gateway = start(server);
                let restarted = served();
                // The load overlapped the restart: the new process served it.
                wait_until("traffic through the restarted gateway", || served() > restarted + 50);
            }
            stop.store(true, Relaxed);
            load.join().expect("load")
        })
    };
    let check = |phase: &str, answers: &std::collections::BTreeMap<u16, u64>, gateway: &Gateway| {
        eprintln!("restarts on the cache under load, {phase}: answers {answers:?}");
        let failed: u64 = answers.iter().filter(|(s, _)| **s != 200 && **s != 0).map(|(_, n)| n).sum();
        assert_eq!(
            failed,
            0,
            "{phase}: answers other than 200 (0: port closed while restarting): {answers:?}\n{}",
            gateway.log()
        );
        assert!(answers.get(&200).copied().unwrap_or(0) > 100, "{phase}: {answers:?}");
        // Every backend serves again: the cached endpoints, not only those a server re-sent.
        until_spread(gateway, &backends, 30, "all three cached backends", spread_out);
    };

    let answers = restarts(&mut gateway, &server);
    check("server up", &answers, &gateway);

    // The server goes away; the gateway restarts with nothing to reach.
    let data = server.data_dir.clone();
    drop(server);
    let gone = Server::unreachable(&data);
    let answers = restarts(&mut gateway, &gone);
    check("server down", &answers, &gateway);
}

/// The listen port a test's gateway keeps across restarts (one per directory).
fn port_of(dir: &Path) -> u16 {
    let file = dir.join("port");
    if let Ok(text) = std::fs::read_to_string(&file) {
        return text.trim().parse().expect("a port");
    }
    let port = free_port();
    std::fs::write(&file, port.to_string()).unwrap();
    port
}

/// The plugin record `name` as `plugin list` shows it.
fn record(server: &Server, name: &str) -> Value {
    plugin_list(server)["plugins"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

fn sha(artifact: &str) -> String {
    sextant_core::sha256_hex(&std::fs::read(sextant_plugin_artifacts::path(artifact).unwrap()).unwrap())
}

#[test]
fn a_gateway_that_rolls_a_faulty_version_back_rolls_the_fleet_back_and_a_restarted_gateway_never_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backends: Vec<Backend> =
        (0..3).map(|i| runtime.block_on(Backend::start(&format!("b{i}"), Behavior::default())).unwrap()).collect();
    let server = Server::start(&dir.path().join("data"));
    for (i, b) in backends.iter().enumerate() {
        let (status, body) = server.post("/v1/instances", &instance(SERVICE, &format!("b{i}"), b.addr().port(), false));
        assert_eq!(status, 200, "{body}");
    }
    let dirs: Vec<std::path::PathBuf> = (0..2)
        .map(|i| {
            let d = dir.path().join(format!("gw{i}"));
            std::fs::create_dir(&d).unwrap();
            d
        })
        .collect();
    let port = free_port();
    let mut busy = Gateway::start(&server, &dirs[0], port);
    let idle = Gateway::start(&server, &dirs[1], free_port());
    wait_until("the gateways route", || busy.get("u") == 200 && idle.get("u") == 200);
    let ready = http().get(&format!("http://{}/ready", busy.metrics)).call().unwrap();
    assert_eq!(ready.status(), 200, "a gateway that routes is ready");

    // A good version, then a faulty one under the same name: it traps on every 101st pick of
    // an instance, so the busy gateway falls back per pick and then rolls back on its own.
    load(&server, "round-robin", "lb");
    let active = |artifact: &str| vec![format!("active {}", sha12(artifact)); 2];
    wait_until("both gateways run the good version", || reported(&server, "lb") == active("round-robin"));
    let path = sextant_plugin_artifacts::path("misbehave").unwrap();
    let faulty = r#"{"fault":"trap-pick","after":100}"#;
    let out = run(&server, &["plugin", "load", path, "--name", "lb", "--bind", SERVICE, "--config", faulty]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Named with its configuration: the same component with another one reads apart.
    let faulty_version = sextant_core::version_label(&sha("misbehave"), faulty);
    assert!(faulty_version.starts_with(&format!("{}+", sha12("misbehave"))), "{faulty_version}");
    wait_until("both gateways run the faulty version", || {
        reported(&server, "lb") == vec![format!("active {faulty_version}"); 2]
    });

    // Traffic through the busy gateway only, until the fleet has marked the version bad.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sent = 0;
    let marked = loop {
        for _ in 0..50 {
            let status = busy.get("u");
            assert_eq!(status, 200, "request {sent}: a fallback pick still answers\n{}", busy.log());
            sent += 1;
        }
        let r = record(&server, "lb");
        if r["bad"].as_array().is_some_and(|b| !b.is_empty()) {
            break r;
        }
        assert!(Instant::now() < deadline, "the busy gateway's rollback never reached the record: {r}\n{}", busy.log());
    };
    eprintln!("{sent} requests through the busy gateway before the fleet marked the version bad");
    assert_eq!(marked["bad"][0]["sha256"], sha("misbehave"), "{marked}");
    let reason = marked["bad"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("{SERVICE} balancer: 6 faults within"))
            && reason.contains("(reported by shop/edge/gateway/"),
        "the evidence and who gave it: {reason}"
    );
    assert_eq!(marked["sha256"], sha("round-robin"), "the record went back to the good version: {marked}");

    // Every gateway runs the same good version, the one that never saw a fault included.
    wait_until("both gateways report the good version again", || reported(&server, "lb") == active("round-robin"));
    // The binding's summary counts the hosts running it (the server itself carries none).
    let list = plugin_list(&server);
    let binding = list["bindings"].as_array().and_then(|b| b.iter().find(|b| b["plugin"] == "lb")).unwrap();
    assert_eq!((binding["hosts_running"].as_u64(), binding["hosts_other"].as_u64()), (Some(2), Some(0)), "{binding}");
    let text = String::from_utf8_lossy(&run(&server, &["plugin", "list"]).stdout).into_owned();
    let line = format!("binding lb balancer {SERVICE} ({}): hosts 2 running, 0 other;", sha12("round-robin"));
    assert!(text.lines().any(|l| l.starts_with(&line)), "{line}\n{text}");
    until_spread(&idle, &backends, 30, "round robin on the idle gateway", spread_out);
    until_spread(&busy, &backends, 30, "round robin on the busy gateway", spread_out);

    // A restarted gateway comes up on the good version and never runs the bad one.
    let _ = Command::new("kill").args(["-TERM", &busy.child.id().to_string()]).status();
    let _ = busy.child.wait();
    busy = Gateway::start(&server, &dirs[0], port);
    wait_until("the restarted gateway routes", || busy.get("u") == 200);
    wait_until("the restarted gateway reports the good version", || reported(&server, "lb") == active("round-robin"));
    until_spread(&busy, &backends, 30, "round robin after the restart", spread_out);
    let metrics = busy.metrics();
    assert!(!metrics.contains(&sha("misbehave")), "the restarted gateway loaded the bad version:\n{metrics}");
    let server_metrics = server.text("/metrics");
    assert!(
        server_metrics.contains(r#"sextant_plugin_faults_total{decision="marked_bad",reason=""} 1"#),
        "{server_metrics}"
    );
}

#[test]
fn an_embedded_router_tells_not_synced_from_empty_from_not_followed_and_says_when_it_is_ready() {
    use sextant_gateway::{PickError, RemoteDiscovery, Router, ServicePolicy};
    use sextant_plugin::{HostConfig, PickRequest, PluginHost};
    use sextant_quic::client::{Client, ClientOptions};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let (status, body) = server.post("/v1/instances", &instance(SERVICE, "b0", free_port(), false));
    assert_eq!(status, 200, "{body}");
    let ca = server.data_dir.join("tls/ca.pem");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let shop = sextant_core::Scope::Namespace("shop".parse().unwrap());
        let router = |servers: Vec<std::net::SocketAddr>| {
            let mut options = ClientOptions::new(servers, ca.clone());
            options.connect_timeout = Duration::from_millis(300);
            let discovery = RemoteDiscovery::follow(Client::new(options).unwrap(), shop.clone());
            let host = PluginHost::new(HostConfig { workers: 1, ..HostConfig::default() }).unwrap();
            Router::new(host, std::sync::Arc::new(discovery), ServicePolicy::default())
        };
        let orders = sextant_core::ServiceKey::parse(SERVICE).unwrap();
        let empty = sextant_core::ServiceKey::parse("shop/web/nothing").unwrap();
        let elsewhere = sextant_core::ServiceKey::parse("billing/web/orders").unwrap();
        let pick = |r: &Router, s: &sextant_core::ServiceKey| r.pick(s, &mut PickRequest::default()).map(drop);

        // No server answers and nothing is cached: not "no endpoints", but "not synced".
        let dark = router(vec![format!("127.0.0.1:{}", free_port()).parse().unwrap()]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!dark.ready());
        assert!(matches!(pick(&dark, &orders), Err(PickError::NotSynced(_))), "{:?}", pick(&dark, &orders));
        assert!(tokio::time::timeout(Duration::from_millis(200), dark.wait_ready()).await.is_err());
        assert!(matches!(pick(&dark, &elsewhere), Err(PickError::NotFollowed(_))));

        // A server answers: ready, then each case says what it is.
        let live = router(vec![server.quic]);
        tokio::time::timeout(Duration::from_secs(20), live.wait_ready()).await.expect("the first view arrives");
        assert!(live.ready());
        pick(&live, &orders).expect("a registered instance is picked once ready");
        assert!(matches!(pick(&live, &empty), Err(PickError::NoEndpoints(_))), "{:?}", pick(&live, &empty));
        let outside = pick(&live, &elsewhere).unwrap_err();
        assert!(matches!(outside, PickError::NotFollowed(_)), "{outside:?}");
        assert_eq!(outside.to_string(), "service billing/web/orders is outside what this router's discovery follows");
    });
}

/// A `Router` embedded in someone's proxy, built on a remote discovery and nothing else,
/// runs what `sextant plugin load --bind` binds to a service it routes (a service it learned
/// by routing it, not one it was told of), and with a registration it is counted in `plugin
/// list` like a gateway; one built to ignore the records stays on its own balancer.
#[test]
fn an_embedded_router_runs_the_plugin_bound_in_the_store_with_nothing_started_and_shows_in_plugin_list() {
    use sextant_gateway::{RemoteDiscovery, Router};
    use sextant_plugin::{HostConfig, PickRequest, PluginHost};
    use sextant_quic::client::{Client, ClientOptions};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    for i in 0..3 {
        let (status, body) = server.post("/v1/instances", &instance(SERVICE, &format!("b{i}"), free_port(), false));
        assert_eq!(status, 200, "{body}");
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    let ca = server.data_dir.join("tls/ca.pem");
    let builder = || {
        let client = Client::new(ClientOptions::new(vec![server.quic], ca.clone())).unwrap();
        let discovery = RemoteDiscovery::follow(client, sextant_core::Scope::Namespace("shop".parse().unwrap()));
        let host = PluginHost::new(HostConfig { workers: 1, ..HostConfig::default() }).unwrap();
        Router::builder(host, std::sync::Arc::new(discovery))
    };
    let me = sextant_core::Instance::new(
        sextant_core::ServiceKey::parse("shop/edge/embedded").unwrap(),
        "127.0.0.1".parse().unwrap(),
        free_port(),
    );
    let embedded = builder().register_as(me).build();
    let own = builder().ignore_plugin_records().build();
    assert!(embedded.plugins().is_some() && own.plugins().is_none());
    let orders = sextant_core::ServiceKey::parse(SERVICE).unwrap();
    let balancer_sha = |router: &Router| router.status(&orders).and_then(|s| s.balancer.active.sha256);
    for router in [&embedded, &own] {
        wait_until("the first view", || router.ready());
        // The service's route is set up by its first pick: the follower learns it then.
        router.pick(&orders, &mut PickRequest::default()).expect("a pick").finish(sextant_gateway::Outcome::http(200));
        assert_eq!(balancer_sha(router), None, "the configured native balancer serves");
    }

    load(&server, "round-robin", "lb");
    let loaded = sha("round-robin");
    wait_until("the embedded router runs the bound version", || balancer_sha(&embedded).as_ref() == Some(&loaded));
    let guard = embedded.pick(&orders, &mut PickRequest::default()).expect("a pick");
    assert_eq!(guard.version(), embedded.status(&orders).unwrap().balancer.active.id, "the pick came from it");
    guard.finish(sextant_gateway::Outcome::http(200));
    let activations = embedded.plugins().unwrap().activations();
    assert!(activations.iter().any(|a| a.plugin == "lb" && a.sha256 == loaded && a.error.is_none()), "{activations:?}");

    // Its registration says what it runs, as a gateway's does.
    let states = || -> Vec<String> {
        plugin_list(&server)["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h["plugin"] == "lb" && h["host"].as_str().is_some_and(|s| s.starts_with("shop/edge/embedded/")))
            .map(|h| h["state"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let active = format!("active {}", sha12("round-robin"));
    wait_until("plugin list shows the embedded host", || states() == [active.clone()]);

    // The router that ignores the records had the same time to see the record: it did not
    // take it.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(balancer_sha(&own), None, "a router built with ignore_plugin_records keeps its own balancer");
}

/// One request as a client saw it: when it was sent, when it was answered, the status (0: no
/// answer, the gateway's port closed while it restarted).
#[derive(Clone, Copy)]
struct Sent {
    start: Instant,
    end: Instant,
    status: u16,
}

/// Clients that keep requests flowing through a gateway until stopped, and can be paused so
/// that counters read while nothing is in flight add up exactly.
struct Clients {
    stop: std::sync::atomic::AtomicBool,
    paused: std::sync::atomic::AtomicBool,
    in_flight: std::sync::atomic::AtomicUsize,
    answered: std::sync::atomic::AtomicU64,
}

impl Clients {
    fn new() -> Self {
        Self { stop: false.into(), paused: false.into(), in_flight: 0.into(), answered: 0.into() }
    }

    /// One client's loop: its requests, in order. Every request carries its own affinity key.
    fn run(&self, addr: &str, client: usize) -> Vec<Sent> {
        use std::sync::atomic::Ordering::SeqCst;
        let agent = http();
        let mut sent = Vec::new();
        while !self.stop.load(SeqCst) {
            if self.paused.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            self.in_flight.fetch_add(1, SeqCst);
            // Checked again once counted in flight, so `pause` never misses this request.
            if self.paused.load(SeqCst) {
                self.in_flight.fetch_sub(1, SeqCst);
                continue;
            }
            let start = Instant::now();
            let status = agent
                .get(&format!("http://{addr}/orders"))
                .header("x-user", &format!("user-{client}-{}", sent.len() % 50))
                .call()
                .map_or(0, |r| r.status().as_u16());
            let end = Instant::now();
            self.in_flight.fetch_sub(1, SeqCst);
            self.answered.fetch_add(u64::from(status != 0), SeqCst);
            sent.push(Sent { start, end, status });
            if status == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        sent
    }

    /// Waits until `n` more requests were answered.
    fn wait_answers(&self, n: u64, what: &str) {
        let from = self.answered.load(std::sync::atomic::Ordering::SeqCst);
        wait_until(what, || self.answered.load(std::sync::atomic::Ordering::SeqCst) >= from + n);
    }

    /// Holds every client before its next request and waits until none is in flight.
    fn pause(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.paused.store(true, SeqCst);
        wait_until("no request in flight", || self.in_flight.load(SeqCst) == 0);
    }

    fn resume(&self) {
        self.paused.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Sums the samples of `family` whose labels contain every one of `with`.
fn sum_of(metrics: &str, family: &str, with: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A balancer as a gateway's metrics name it: (plugin, sha256, source).
type Balancer = (String, String, String);

/// The balancer a gateway's metrics say runs for the service (the gateway routes one
/// service: the version active in one balancer slot).
fn active_balancer(metrics: &str) -> Option<Balancer> {
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("sextant_gateway_plugin_slots{") && l.contains(r#"kind="balancer""#))
        .collect();
    assert!(lines.len() <= 1 && lines.iter().all(|l| l.ends_with(" 1")), "one balancer slot: {lines:?}");
    let line = lines.first()?;
    let label = |name: &str| -> String {
        let value = || {
            let from = line.find(&format!(r#"{name}=""#))? + name.len() + 2;
            Some(line[from..].split('"').next()?.to_owned())
        };
        value().unwrap_or_default()
    };
    Some((label("plugin"), label("sha256"), label("source")))
}

/// The fleet's central promise, tested so that nothing can hide a fault: four clients keep
/// requests flowing through the `sextant gateway` binary (its retries off: one attempt per
/// request) while the control plane loads a balancer, replaces it, rolls it back, deletes it,
/// the gateway restarts on its cache, and a balancer is loaded again. Every change must have
/// requests in flight across it, every request must be answered 200 (the only other outcome
/// allowed is no answer while the gateway's port is closed for its restart), the gateway
/// retried nothing and no pick fell back to the native default, and its per-version call
/// counters add up to the requests it answered, read while nothing was in flight.
#[test]
fn concurrent_clients_across_load_replace_rollback_delete_and_a_restart_all_answered_200() {
    use std::sync::atomic::Ordering::SeqCst;
    const CLIENTS: usize = 4;
    let Fleet { dir: _dir, runtime: _runtime, backends, server, gw_dir, config } = fleet(Some("x-user"));
    let port = port_of(&gw_dir);
    let start = || Gateway::spawn(&server, &gw_dir, port, &["--config", config.to_str().unwrap()]);
    let mut gateway = start();
    let ready = |gateway: &Gateway| {
        http().get(&format!("http://{}/ready", gateway.metrics)).call().is_ok_and(|r| r.status() == 200)
    };
    wait_until("the gateway is ready", || ready(&gateway));
    // Ready, it answers at once; the first request makes the service's route (and its series).
    assert_eq!(gateway.get("u"), 200, "{}", gateway.log());
    let served_before: u64 = backends.iter().map(Backend::served).sum();
    let default = ("round-robin".to_owned(), String::new(), "builtin".to_owned());
    assert_eq!(active_balancer(&gateway.metrics()), Some(default.clone()), "{}", gateway.metrics());
    let wasm = |artifact: &str| ("lb".to_owned(), sha(artifact), "wasm".to_owned());

    let clients = Clients::new();
    let addr = gateway.addr.clone();
    // (what changed, when it was asked for, when the gateway was seen running it)
    let mut changes: Vec<(&str, Instant, Instant)> = Vec::new();
    let mut first_process = String::new();
    let mut paused_at = None;
    let sent: Vec<Sent> = std::thread::scope(|s| {
        let loads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                s.spawn({
                    let (clients, addr) = (&clients, &addr);
                    move || clients.run(addr, c)
                })
            })
            .collect();
        /// Stops the clients when dropped, so a failed assertion does not leave them running.
        struct Stop<'a>(&'a Clients);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.resume();
                self.0.stop.store(true, SeqCst);
            }
        }
        let _stop = Stop(&clients);
        let cli = |args: &[&str]| {
            let out = run(&server, args);
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let artifact = |name: &str| sextant_plugin_artifacts::path(name).expect("artifact built");
        let (ring_hash, round_robin) = (artifact("ring-hash"), artifact("round-robin"));
        let steps: [(&str, Vec<&str>, Balancer); 4] = [
            ("load", vec!["plugin", "load", ring_hash, "--name", "lb", "--bind", SERVICE], wasm("ring-hash")),
            ("replace", vec!["plugin", "load", round_robin, "--name", "lb", "--bind", SERVICE], wasm("round-robin")),
            ("rollback", vec!["plugin", "rollback", "lb"], wasm("ring-hash")),
            ("delete", vec!["plugin", "delete", "lb"], default.clone()),
        ];
        for (what, args, want) in &steps {
            clients.wait_answers(40, &format!("traffic before the {what}"));
            let asked = Instant::now();
            cli(args);
            wait_until(&format!("the gateway runs what the {what} asked for"), || {
                active_balancer(&gateway.metrics()).as_ref() == Some(want)
            });
            changes.push((*what, asked, Instant::now()));
            clients.wait_answers(40, &format!("traffic after the {what}"));
        }

        // Everything the first process answered, read while nothing is in flight.
        clients.pause();
        first_process = gateway.metrics();
        paused_at = Some(Instant::now());
        clients.resume();

        // The gateway restarts on its cache (SIGTERM: it drains, then exits), server up.
        clients.wait_answers(40, "traffic before the restart");
        let asked = Instant::now();
        let _ = Command::new("kill").args(["-TERM", &gateway.child.id().to_string()]).status();
        let _ = gateway.child.wait();
        gateway = start();
        wait_until("the restarted gateway runs the route's default", || {
            ready(&gateway) && active_balancer(&gateway.metrics()).as_ref() == Some(&default)
        });
        changes.push(("restart", asked, Instant::now()));
        clients.wait_answers(40, "traffic through the restarted gateway");

        // And the restarted gateway follows the control plane: a load, under the same traffic.
        let asked = Instant::now();
        cli(&["plugin", "load", artifact("ring-hash"), "--name", "lb", "--bind", SERVICE]);
        wait_until("the restarted gateway runs the load", || {
            active_balancer(&gateway.metrics()) == Some(wasm("ring-hash"))
        });
        changes.push(("load after the restart", asked, Instant::now()));
        clients.wait_answers(40, "traffic after the last load");
        clients.pause();
        clients.stop.store(true, SeqCst);
        clients.resume();
        loads.into_iter().flat_map(|h| h.join().expect("client thread")).collect()
    });
    let second_process = gateway.metrics();

    // Every answer was 200; no answer only while the port was closed for the restart.
    let (_, killed, restarted) = *changes.iter().find(|c| c.0 == "restart").unwrap();
    let mut answers = std::collections::BTreeMap::<u16, u64>::new();
    for r in &sent {
        *answers.entry(r.status).or_default() += 1;
        assert!(
            r.status == 200 || (r.status == 0 && r.start >= killed && r.start <= restarted),
            "a request answered {} (0: no answer outside the restart), {:?} after the first change\n{}",
            r.status,
            r.start.saturating_duration_since(changes[0].1),
            gateway.log()
        );
    }
    // Every change overlapped the traffic: at least as many requests as there are clients were
    // in flight at some point between asking for it and seeing it run.
    for (what, asked, seen) in &changes {
        let across = sent.iter().filter(|r| r.start <= *seen && r.end >= *asked).count();
        assert!(across >= CLIENTS, "the {what} overlapped only {across} requests");
    }
    let ok = answers.get(&200).copied().unwrap_or(0);
    let served: u64 = backends.iter().map(Backend::served).sum::<u64>() - served_before;
    assert_eq!(served, ok, "every 200 came from a backend, once: {answers:?}");

    // No retry, no fallback, one attempt per request: nothing hid a fault.
    for metrics in [&first_process, &second_process] {
        assert_eq!(sum_of(metrics, "sextant_gateway_retries_total", &[]), 0, "{metrics}");
        assert_eq!(sum_of(metrics, "sextant_gateway_plugin_fallbacks_total", &[]), 0, "{metrics}");
        let requests = sum_of(metrics, "sextant_gateway_requests_total", &[]);
        let ok = sum_of(metrics, "sextant_gateway_requests_total", &[r#"class="2xx""#]);
        assert_eq!(requests, ok, "{metrics}");
        assert_eq!(sum_of(metrics, "sextant_gateway_upstream_attempts_total", &[]), requests, "{metrics}");
    }
    // What the first process had answered when its counters were read (nothing in flight) is
    // what the clients had received, and its per-version balancer calls add up to it.
    let paused_at = paused_at.expect("the first process was read");
    // (and the test's own first request)
    let before_pause = sent.iter().filter(|r| r.end <= paused_at).count() as u64 + 1;
    let first_ok = sum_of(&first_process, "sextant_gateway_requests_total", &[]);
    assert_eq!(first_ok, before_pause, "{first_process}");
    let mut calls = std::collections::BTreeMap::new();
    for line in first_process
        .lines()
        .filter(|l| l.starts_with("sextant_gateway_plugin_calls_total{") && l.contains(r#"kind="balancer""#))
    {
        let (series, n) = line.rsplit_once(' ').unwrap();
        calls.insert(series.to_owned(), n.parse::<f64>().unwrap() as u64);
    }
    assert_eq!(calls.values().sum::<u64>(), first_ok, "per-version calls add up to the requests: {calls:#?}");
    assert!(calls.values().filter(|n| **n > 0).count() >= 3, "the default and both versions answered: {calls:#?}");
    let second_ok = sum_of(&second_process, "sextant_gateway_requests_total", &[]);
    assert_eq!(
        sum_of(&second_process, "sextant_gateway_plugin_calls_total", &[r#"kind="balancer""#]),
        second_ok,
        "{second_process}"
    );
    let names: Vec<&str> = changes.iter().map(|c| c.0).collect();
    eprintln!(
        "fleet: {} requests from {CLIENTS} clients, {} answered 200, {} unanswered while the port was closed; {} changes overlapped ({}); retries 0, fallbacks 0; balancer calls by version {:?} (first process), {second_ok} (second)",
        sent.len(),
        ok,
        answers.get(&0).copied().unwrap_or(0),
        changes.len(),
        names.join(", "),
        calls.values().collect::<Vec<_>>(),
    );
}

/// A version that loads (its constructors at load return) but then answers nothing (every
/// resource made later spins to its deadline) is reported `fallback`, not `active`: the
/// native default answers every request meanwhile (all 200), the gateway's report and
/// `plugin list`'s binding line say the host does not run it. Before, such a version was
/// reported active for as long as it ran.
#[test]
fn a_loaded_version_that_answers_nothing_is_reported_falling_back_not_active() {
    let Fleet { dir: _dir, runtime: _runtime, backends: _backends, server, gw_dir, config } = fleet(None);
    // Resources idle for a second are dropped, so the next request needs a new one.
    let gateway = Gateway::spawn(
        &server,
        &gw_dir,
        free_port(),
        &["--config", config.to_str().unwrap(), "--plugin-idle-secs", "1"],
    );
    wait_until("the gateway routes", || gateway.get("u") == 200);

    // Its constructors return until a moment on the wall clock (the loads, on the server and
    // the gateway, come before it), and spin after it, in any instance.
    let unix_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    // 10 s: loading takes under half a second here; a busy machine has twenty times that.
    let turns = unix_ms() + 10_000;
    let path = sextant_plugin_artifacts::path("misbehave").unwrap();
    let spinner = format!(r#"{{"fault":"loop-new","after_unix_ms":{turns}}}"#);
    let out = run(&server, &["plugin", "load", path, "--name", "lb", "--bind", SERVICE, "--config", &spinner]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let version = sextant_core::version_label(&sha("misbehave"), &spinner);
    wait_until("the gateway runs it, and it answers", || {
        assert_eq!(gateway.get("u"), 200);
        reported(&server, "lb") == vec![format!("active {version}")]
    });
    let left = turns.saturating_sub(unix_ms());
    eprintln!("loaded and answering with {left} ms to spare before its constructors spin");
    assert!(left > 0, "loaded after its constructors turned to spinning: a slower machine than planned");
    std::thread::sleep(Duration::from_millis(u64::try_from(turns.saturating_sub(unix_ms())).unwrap_or(0) + 100));

    // Idle past a second: its resources go; the next ones it makes spin.
    let dropped = format!(r#"plugin="lb",sha256="{}""#, sha("misbehave"));
    wait_until("the idle resources dropped", || {
        sum_of(&gateway.metrics(), "sextant_gateway_plugin_resources_dropped_idle_total", &[&dropped]) > 0
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let state = loop {
        for _ in 0..20 {
            let status = gateway.get("u");
            assert_eq!(status, 200, "the native default answers meanwhile\n{}", gateway.log());
        }
        let state = reported(&server, "lb");
        if state.first().is_some_and(|s| !s.starts_with("active ")) {
            break state;
        }
        assert!(Instant::now() < deadline, "still reported {state:?}\n{}", gateway.log());
    };
    assert_eq!(state.len(), 1, "{state:?}");
    let prefix = format!("fallback {version}: the native default answered ");
    assert!(
        state[0].starts_with(&prefix) && state[0].ends_with(" calls and the plugin none (1 of 1 services)"),
        "{state:?}"
    );
    let list = plugin_list(&server);
    let binding = list["bindings"].as_array().and_then(|b| b.iter().find(|b| b["plugin"] == "lb")).unwrap();
    assert_eq!((binding["hosts_running"].as_u64(), binding["hosts_other"].as_u64()), (Some(0), Some(1)), "{binding}");
    let metrics = gateway.metrics();
    let series = [r#"kind="balancer""#, r#"plugin="lb""#];
    assert!(sum_of(&metrics, "sextant_gateway_plugin_fallbacks_total", &series) > 0, "{metrics}");
    // The constructor that spins is stopped at its deadline and counted then, which on a
    // busy machine can come after the report that saw the version answer nothing.
    wait_until("the spinning constructor counted as a deadline hit", || {
        sum_of(&gateway.metrics(), "sextant_gateway_plugin_deadline_hits_total", &series) > 0
    });
}

/// One request asking why: its status and the `x-sextant-why` header, parsed.
fn asking_why(gateway: &Gateway, value: &str) -> (u16, Option<Value>) {
    let r = http().get(&format!("http://{}/orders", gateway.addr)).header("x-sextant-explain", value).call().unwrap();
    let header = r.headers().get("x-sextant-why").map(|v| serde_json::from_slice(v.as_bytes()).unwrap());
    (r.status().as_u16(), header)
}

/// The reason `why` gives for leaving out `endpoint`.
fn left_out<'a>(why: &'a Value, endpoint: &str) -> Option<&'a Value> {
    why["excluded"].as_array()?.iter().find(|e| e["endpoint"] == endpoint)
}

#[test]
fn the_why_header_names_the_endpoint_a_retry_avoided_and_then_the_one_ejected_and_the_access_log_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let good = runtime.block_on(Backend::start("good", Behavior::default())).unwrap();
    let failing = Behavior { error_rate: 1.0, ..Behavior::default() };
    let bad = runtime.block_on(Backend::start("bad", failing)).unwrap();
    let server = Server::start(&dir.path().join("data"));
    for (id, b) in [("good", &good), ("bad", &bad)] {
        assert_eq!(server.post("/v1/instances", &instance(SERVICE, id, b.addr().port(), false)).0, 200);
    }
    // Round robin; the breaker out of the way, so the health policy's outlier detection is
    // what takes `bad` out (5 gateway errors in a row).
    let config = dir.path().join("gateway.json");
    let document = serde_json::json!({
        "gateway": {"routes": [{"path_prefix": "/", "service": SERVICE}],
                    "explain": {"header": "x-sextant-explain", "value": "let-me-see"}},
        "balancer": "round-robin",
        "breaker": {"failures": 1000},
        "retry": {"attempts": 3, "min_per_second": 1000},
    });
    std::fs::write(&config, document.to_string()).unwrap();
    let access = dir.path().join("access.log");
    let gateway = Gateway::spawn(
        &server,
        dir.path(),
        free_port(),
        &["--config", config.to_str().unwrap(), "--access-log", access.to_str().unwrap()],
    );
    wait_until("the gateway routes", || gateway.get("u") == 200);

    // Until a request whose first attempt went to `bad`: retried on `good`, answered 200,
    // and the header says so (retries are on: this test is about what they did).
    let mut avoided = None;
    for _ in 0..20 {
        let (status, why) = asking_why(&gateway, "let-me-see");
        assert_eq!(status, 200, "{why:?}\n{}", gateway.log());
        let why = why.expect("the allowed header and value are answered");
        if why["attempts"][0]["endpoint"] == "bad" {
            avoided = Some(why);
            break;
        }
    }
    let why = avoided.expect("round robin sends some first attempt to bad");
    assert_eq!(why["route"], "/");
    assert_eq!(why["service"], SERVICE);
    let attempts = why["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{why}");
    assert_eq!((&attempts[0]["result"], &attempts[0]["status"]), (&Value::from("5xx"), &Value::from(503)));
    assert_eq!((&attempts[1]["endpoint"], &attempts[1]["result"]), (&Value::from("good"), &Value::from("2xx")));
    assert_eq!(attempts[1]["balancer"], "round-robin", "{why}");
    assert_eq!(attempts[1]["address"], good.addr().to_string());
    assert_eq!(left_out(&why, "bad").map(|e| &e["why"]), Some(&Value::from("avoided")), "{why}");

    // Failures go on until the health policy ejects `bad`: then a request is never sent
    // there, and the header names it with the reason and for how long.
    let mut ejected = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ejected.is_none() {
        assert!(Instant::now() < deadline, "bad never ejected\n{}", gateway.log());
        let (status, why) = asking_why(&gateway, "let-me-see");
        assert_eq!(status, 200);
        let why = why.unwrap();
        if left_out(&why, "bad").is_some_and(|e| e["why"] == "ejected") {
            ejected = Some(why);
        }
    }
    let why = ejected.unwrap();
    let bad_entry = left_out(&why, "bad").unwrap();
    assert!(bad_entry["for_ms"].as_u64().is_some_and(|ms| ms > 0 && ms <= 30_000), "{why}");
    assert_eq!(bad_entry["address"], bad.addr().to_string());
    assert_eq!(why["attempts"].as_array().map(Vec::len), Some(1), "one attempt, to good: {why}");
    assert_eq!(why["attempts"][0]["endpoint"], "good");

    // The gateway tells the fleet: its registration carries its verdict about `bad`.
    wait_until("the gateway's registration reports bad ejected", || {
        registration(&server).is_some_and(|r| {
            r["metadata"][format!("sextant.health.{SERVICE}")]
                .as_str()
                .is_some_and(|v| v.split("; ").any(|e| e.starts_with("ejected bad ")))
        })
    });

    // Without the header, or with another value: nothing is said.
    for value in ["guess", ""] {
        let (status, why) = asking_why(&gateway, value);
        assert_eq!((status, why), (200, None), "value {value:?}");
    }

    // The access log has every request as a JSON line with the same fields.
    let mut lines = Vec::new();
    wait_until("the access log has the requests", || {
        lines = std::fs::read_to_string(&access)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        lines.iter().any(|l| left_out(l, "bad").is_some_and(|e| e["why"] == "ejected"))
    });
    let retried = lines
        .iter()
        .find(|l| l["attempts"].as_array().is_some_and(|a| a.len() == 2))
        .expect("a retried request is logged");
    assert_eq!(
        (&retried["method"], &retried["path"], &retried["status"]),
        (&"GET".into(), &"/orders".into(), &200.into())
    );
    assert_eq!(retried["client"], "127.0.0.1");
    assert_eq!(left_out(retried, "bad").map(|e| &e["why"]), Some(&Value::from("avoided")));
    assert!(lines.iter().all(|l| l.get("dropped").is_none()), "no line dropped");
}

#[test]
fn print_config_shows_the_document_in_force_which_reads_back_the_same_and_a_mistake_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.json");
    std::fs::write(&file, r#"{"balancer": "maglev", "retry": {"attempts": 2}}"#).unwrap();
    let print = |config: &Path, extra: &[&str]| {
        let out = Command::new(sextant_bin())
            .args(["gateway", "--print-config", "--config", config.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // No server, no CA: the document alone.
    let (code, printed, stderr) = print(&file, &["--route", "api.example/v1=shop/web/orders", "--health-path", "/hz"]);
    assert_eq!(code, Some(0), "{stderr}");
    let doc: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(doc["balancer"], "maglev");
    assert_eq!(doc["retry"]["attempts"], 2);
    assert_eq!(doc["retry"]["budget_ratio"], 0.2, "defaults are filled in");
    assert_eq!(doc["health_check"]["path"], "/hz");
    let route = &doc["gateway"]["routes"][0];
    assert_eq!(
        (&route["host"], &route["path_prefix"], &route["service"]),
        (&"api.example".into(), &"/v1".into(), &SERVICE.into())
    );
    let again = dir.path().join("again.json");
    std::fs::write(&again, &printed).unwrap();
    let (code, reprinted, _) = print(&again, &[]);
    assert_eq!((code, reprinted), (Some(0), printed), "the printed document is a valid --config of itself");

    std::fs::write(&file, r#"{"gateway": {"explain": {"header": "x-why", "token": "t"}}}"#).unwrap();
    let (code, _, stderr) = print(&file, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("unknown field `token`") && stderr.contains("`header`"), "{stderr}");
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_a_server_and_a_gateway_export() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Each sends a load report with its answers: a good one, and one the gateway refuses.
    let report = Some("TEXT cpu_utilization=0.2, rps_fractional=10");
    let good =
        runtime.block_on(Backend::start("good", Behavior { load_report: report, ..Behavior::default() })).unwrap();
    let refused = Behavior { error_rate: 1.0, load_report: Some("TEXT cpu_utilization=-1"), ..Behavior::default() };
    let bad = runtime.block_on(Backend::start("bad", refused)).unwrap();
    let server = Server::start(&dir.path().join("data"));
    for (id, b) in [("good", &good), ("bad", &bad)] {
        assert_eq!(server.post("/v1/instances", &instance(SERVICE, id, b.addr().port(), false)).0, 200);
    }
    // A refused write, so the refused-writes panel has its series.
    let mut heavy = instance(SERVICE, "heavy", 1, false);
    heavy["weight"] = 1_000_000.into();
    assert_eq!(server.post("/v1/instances", &heavy).0, 400);
    // Retries (the failing backend), ejections, and a rate limit that refuses some requests.
    let config = dir.path().join("gateway.json");
    let document = serde_json::json!({
        "gateway": {"routes": [{"path_prefix": "/", "service": SERVICE}]},
        "balancer": "round-robin",
        "rate_limit": {"per_second": 20, "burst": 5},
    });
    std::fs::write(&config, document.to_string()).unwrap();
    let gateway = Gateway::spawn(&server, dir.path(), free_port(), &["--config", config.to_str().unwrap()]);
    wait_until("the gateway routes", || gateway.get("u") == 200);
    load(&server, "round-robin", "lb");
    wait_until("the gateway runs the plugin", || {
        active_balancer(&gateway.metrics()).is_some_and(|(plugin, _, source)| plugin == "lb" && source == "wasm")
    });
    // Picks made by the server itself (`sextant pick`) run its own slot.
    let out = run(&server, &["pick", "--service", SERVICE]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut limited = 0;
    for _ in 0..60 {
        limited += usize::from(gateway.get("u") == 429);
    }
    assert!(limited > 0, "the rate limit refused some of 60 requests sent at once");

    let server_text = {
        let mut r = http().get(&server.url("/metrics")).call().expect("GET /metrics");
        r.body_mut().read_to_string().unwrap()
    };
    let gateway_text = gateway.metrics();
    promtool_check(&server_text);
    promtool_check(&gateway_text);
    for result in ["ok", "invalid_value"] {
        let reports = sum_of(&gateway_text, "sextant_gateway_load_reports_total", &[&format!(r#"result="{result}""#)]);
        assert!(reports > 0, "load reports {result}: {gateway_text}");
    }
    let mut exported = crate::support::sample_names(&server_text);
    exported.extend(crate::support::sample_names(&gateway_text));
    // Rollout series exist while a rollout runs: tests/rollout.rs checks those.
    let missing: Vec<String> = crate::support::dashboard_metrics()
        .into_iter()
        .filter(|name| !name.contains("rollout") && !exported.contains(name))
        .collect();
    assert!(missing.is_empty(), "the dashboard reads metrics nobody exports: {missing:?}\n{exported:?}");
}
