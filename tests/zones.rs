//! Zones through the binaries: backends registered in three zones and two `sextant gateway`s
//! in two of them. With the `locality` scheduler (configured on the gateways, then bound
//! through `sextant plugin load` as the wasm component) each gateway keeps its traffic in its
//! own zone, spills to the others when its zone's backends are killed (its active health
//! checks find them down), and takes the traffic back when they return; `sextant list
//! --zone`, the server's per-zone gauges and the gateways' per-zone attempts show it. Bad
//! zones are refused with nothing changed.

use std::path::Path;

use sextant_gateway::backend::{Backend, Behavior};

use crate::gateway::{Gateway, SERVICE};
use crate::support::{Server, free_port, instance, promtool_check, run, sample_sum, wait_until};

const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

/// Two backends per zone, in `ZONES` order.
struct Backends {
    runtime: tokio::runtime::Runtime,
    each: Vec<Option<Backend>>,
    addrs: Vec<std::net::SocketAddr>,
}

impl Backends {
    fn start(server: &Server) -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut each = Vec::new();
        for (n, zone) in ZONES.iter().flat_map(|z| [z, z]).enumerate() {
            let b = runtime.block_on(Backend::start(&format!("{zone}-{n}"), Behavior::default())).unwrap();
            let mut body = instance(SERVICE, &format!("{zone}-{n}"), b.addr().port(), false);
            body["zone"] = serde_json::json!(zone);
            let (status, answer) = server.post("/v1/instances", &body);
            assert_eq!(status, 200, "{answer}");
            each.push(Some(b));
        }
        let addrs = each.iter().flatten().map(Backend::addr).collect();
        Self { runtime, each, addrs }
    }

    /// Requests each zone served since `before`.
    fn per_zone(&self, before: &[u64]) -> [u64; 3] {
        let mut out = [0; 3];
        for (n, (b, was)) in self.each.iter().zip(before).enumerate() {
            out[n / 2] += b.as_ref().map_or(0, |b| b.served() - was);
        }
        out
    }

    fn served(&self) -> Vec<u64> {
        self.each.iter().map(|b| b.as_ref().map_or(0, Backend::served)).collect()
    }

    /// Kills (or restarts, on the same address) both backends of zone `z`.
    fn kill_zone(&mut self, z: usize) {
        for n in [2 * z, 2 * z + 1] {
            self.each[n].take().expect("running").kill();
        }
    }

    fn restart_zone(&mut self, z: usize) {
        for n in [2 * z, 2 * z + 1] {
            let b = self.runtime.block_on(Backend::start_on(&format!("again-{n}"), Behavior::default(), self.addrs[n]));
            self.each[n] = Some(b.expect("the port is free again"));
        }
    }
}

/// Sends `n` requests through `gateway` (retries off: each attempt is the answer); the
/// statuses that were not 200, and the requests each zone served.
fn round(gateway: &Gateway, backends: &Backends, n: usize) -> (usize, [u64; 3]) {
    let before = backends.served();
    let failed = (0..n).filter(|k| gateway.get(&format!("user-{k}")) != 200).count();
    (failed, backends.per_zone(&before))
}

/// Sends rounds until one is served entirely by the zones `want` allows (every request 200);
/// panics after a minute with the last round.
fn until_round(gateway: &Gateway, backends: &Backends, what: &str, want: impl Fn([u64; 3]) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (failed, zones) = round(gateway, backends, 30);
        if failed == 0 && want(zones) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: last round {zones:?}, {failed} failed\n{}",
            gateway.log()
        );
    }
}

/// A gateway in `zone` routing the service with round robin, retries off, TCP health checks
/// every 100 ms, a 200 ms statistics window, and `scheduler` if any.
fn gateway(server: &Server, dir: &Path, zone: &str, scheduler: Option<&str>) -> Gateway {
    let dir = dir.join(zone);
    std::fs::create_dir_all(&dir).unwrap();
    let mut document = serde_json::json!({
        "gateway": {"routes": [{"path_prefix": "/", "service": SERVICE}]},
        "balancer": "round-robin",
        "retry": {"attempts": 1},
        "window": 200,
        "health_check": {"kind": "tcp", "interval": 100, "timeout": 100, "jitter": 0.0},
    });
    if let Some(s) = scheduler {
        document["scheduler"] = serde_json::json!(s);
    }
    let config = dir.join("gateway.json");
    std::fs::write(&config, document.to_string()).unwrap();
    let gateway = Gateway::spawn(server, &dir, free_port(), &["--config", config.to_str().unwrap(), "--zone", zone]);
    wait_until("the gateway routes", || gateway.get("first") == 200);
    gateway
}

fn only(zone: usize) -> impl Fn([u64; 3]) -> bool {
    move |zones| zones.iter().enumerate().all(|(z, &n)| (z == zone) == (n > 0))
}

fn without(zone: usize) -> impl Fn([u64; 3]) -> bool {
    move |zones| zones[zone] == 0 && zones.iter().filter(|&&n| n > 0).count() == 2
}

/// The `sextant_gateway_zone_attempts_total` samples of `gateway` with these labels.
fn zone_attempts(gateway: &Gateway, zone: &str, locality: &str) -> u64 {
    let want = format!(r#"service="{SERVICE}",zone="{zone}",locality="{locality}"}} "#);
    sample_sum(&gateway.metrics(), "sextant_gateway_zone_attempts_total", &want)
}

#[test]
fn each_gateway_keeps_its_traffic_in_its_zone_spills_when_the_zone_dies_and_takes_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let mut backends = Backends::start(&server);

    // The registry per zone: `list --zone` and the server's gauges.
    let out = run(&server, &["list", "--zone", "zone-b", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["records"].as_array().map(Vec::len), Some(2), "{listed}");
    assert_eq!(listed["zones"]["zone-b"], serde_json::json!({"instances": 2, "healthy": 2}), "{listed}");
    let out = run(&server, &["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("# zones: zone-a 2 (2 healthy), zone-b 2 (2 healthy), zone-c 2 (2 healthy)"), "{text}");
    let metrics = server.text("/metrics");
    promtool_check(&metrics);
    for zone in ZONES {
        assert!(metrics.contains(&format!("sextant_zone_healthy_instances{{zone=\"{zone}\"}} 2")), "{metrics}");
    }

    // Gateways in zone-a and zone-b running `locality` natively: each stays home.
    let a = gateway(&server, dir.path(), "zone-a", Some("locality"));
    let b = gateway(&server, dir.path(), "zone-b", Some("locality"));
    until_round(&a, &backends, "gateway a in zone-a", only(0));
    until_round(&b, &backends, "gateway b in zone-b", only(1));
    assert_eq!(round(&a, &backends, 30), (0, [30, 0, 0]));

    // zone-a's backends die: gateway a spills to the two other zones; b does not move.
    backends.kill_zone(0);
    until_round(&a, &backends, "gateway a spills", without(0));
    assert_eq!(round(&b, &backends, 30), (0, [0, 30, 0]), "gateway b stays in zone-b");
    assert!(zone_attempts(&a, "zone-a", "local") > 0 && zone_attempts(&a, "zone-b", "remote") > 0);
    promtool_check(&a.metrics());

    // They come back: gateway a takes its traffic home again.
    backends.restart_zone(0);
    until_round(&a, &backends, "gateway a back in zone-a", only(0));
    drop((a, b));

    // Gateways without a scheduler spread over every zone until `locality` (the wasm
    // component) is bound through the control plane; then each stays home and spills.
    let c = gateway(&server, dir.path(), "zone-c", None);
    until_round(&c, &backends, "round robin over all zones", |z| z.iter().all(|&n| n > 0));
    let locality = sextant_plugin_artifacts::path("locality").expect("artifact built");
    let out = run(
        &server,
        &["plugin", "load", locality, "--name", "zones", "--kind", "scheduler", "--bind", SERVICE, "--config", "{}"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    until_round(&c, &backends, "gateway c in zone-c with the bound plugin", only(2));
    backends.kill_zone(2);
    until_round(&c, &backends, "gateway c spills", without(2));
    backends.restart_zone(2);
    until_round(&c, &backends, "gateway c back in zone-c", only(2));

    // Bad input changes nothing: a zone with a space, a priority naming a zone twice.
    let bad = std::process::Command::new(crate::support::sextant_bin())
        .args(["gateway", "--server", &server.quic.to_string(), "--zone", "zone a", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--zone"), "{}", String::from_utf8_lossy(&bad.stderr));
    let out = run(
        &server,
        &[
            "plugin",
            "load",
            locality,
            "--name",
            "zones",
            "--kind",
            "scheduler",
            "--bind",
            SERVICE,
            "--config",
            r#"{"priority": ["zone-b", "zone-b"]}"#,
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("twice"), "{}", String::from_utf8_lossy(&out.stderr));
    let mut body = instance(SERVICE, "spaced", 9999, false);
    body["zone"] = serde_json::json!("zone\tb");
    let (status, answer) = server.post("/v1/instances", &body);
    assert_eq!(status, 400, "{answer}");
    let out = run(&server, &["list", "--zone", "zone b"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    until_round(&c, &backends, "gateway c still in zone-c", only(2));
}
