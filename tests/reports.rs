//! Backends' load reports through the binaries: three backends answer with ORCA reports
//! (`endpoint-load-metrics`), one light, one heavy, one garbage; a `sextant gateway` routing
//! them with round robin spreads the traffic evenly until the `orca-wrr` component is bound
//! through `sextant plugin load`; then the gateway hands every report to the wasm plugin and
//! the traffic follows them: the light backend (utilization 0.2) takes four times the heavy
//! one's (0.8) at the same rate, the garbage report is refused, counted, and its backend
//! weighed as the mean.

use sextant_gateway::backend::{Backend, Behavior};

use crate::gateway::{Gateway, SERVICE};
use crate::support::{Server, free_port, instance, promtool_check, run, sample_sum, wait_until};

/// Requests each backend served in `n` requests (each answered 200: retries are off).
fn round(gateway: &Gateway, backends: &[Backend], n: usize) -> Vec<u64> {
    let before: Vec<u64> = backends.iter().map(Backend::served).collect();
    for k in 0..n {
        assert_eq!(gateway.get(&format!("user-{k}")), 200, "{}", gateway.log());
    }
    backends.iter().zip(before).map(|(b, was)| b.served() - was).collect()
}

/// The `sextant_gateway_load_reports_total` samples with `result`.
fn reports(gateway: &Gateway, result: &str) -> u64 {
    sample_sum(&gateway.metrics(), "sextant_gateway_load_reports_total", &format!(r#"result="{result}"}} "#))
}

#[test]
fn a_wasm_balancer_bound_through_the_control_plane_routes_by_the_backends_load_reports() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let said = [
        ("light", "TEXT cpu_utilization=0.2, rps_fractional=100"),
        ("heavy", r#"JSON {"cpu_utilization": 0.8, "rps_fractional": 100}"#),
        ("garbage", "TEXT cpu_utilization=-3"),
    ];
    let backends: Vec<Backend> = said
        .iter()
        .map(|(name, report)| {
            let b =
                runtime.block_on(Backend::start(name, Behavior { load_report: Some(report), ..Behavior::default() }));
            let b = b.unwrap();
            let (status, answer) = server.post("/v1/instances", &instance(SERVICE, name, b.addr().port(), false));
            assert_eq!(status, 200, "{answer}");
            b
        })
        .collect();
    let config = dir.path().join("gateway.json");
    let document = serde_json::json!({
        "gateway": {"routes": [{"path_prefix": "/", "service": SERVICE}]},
        "balancer": "round-robin",
        "retry": {"attempts": 1},
    });
    std::fs::write(&config, document.to_string()).unwrap();
    let gateway = Gateway::spawn(&server, dir.path(), free_port(), &["--config", config.to_str().unwrap()]);
    wait_until("the gateway routes", || gateway.get("first") == 200);

    // Round robin reads no report: an even split.
    // (one round robin per worker thread of the gateway, each starting at its own place).
    let even = round(&gateway, &backends, 90);
    assert!(even.iter().all(|&n| (20..=40).contains(&n)), "round robin: {even:?}");
    assert!(reports(&gateway, "ok") >= 60, "the gateway reads the reports:\n{}", gateway.metrics());
    assert!(reports(&gateway, "invalid_value") >= 30, "the garbage one is refused, counted");
    promtool_check(&gateway.metrics());

    // orca-wrr as a wasm component, bound through the control plane; no blackout, weights
    // recomputed every 500 ms.
    let orca = sextant_plugin_artifacts::path("orca-wrr").expect("artifact built");
    let config = r#"{"blackout_period_ms": 0, "weight_update_period_ms": 500}"#;
    let out = run(
        &server,
        &["plugin", "load", orca, "--name", "orca", "--kind", "balancer", "--bind", SERVICE, "--config", config],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Weights 100/0.2 = 500 and 100/0.8 = 125; the garbage backend has none and gets their
    // mean, 312.5: shares 53.3%, 13.3%, 33.3% (earliest deadline first on each of the
    // gateway's worker threads; which thread takes a request adds a little noise).
    wait_until("the traffic follows the reports", || {
        let r = round(&gateway, &backends, 75);
        r[0] >= 36 && r[1] <= 14
    });
    let shares = round(&gateway, &backends, 300);
    assert!((140..=180).contains(&shares[0]), "light: {shares:?}");
    assert!((25..=55).contains(&shares[1]), "heavy: {shares:?}");
    assert!((80..=120).contains(&shares[2]), "garbage, the mean: {shares:?}");
    #[allow(clippy::cast_precision_loss)]
    let ratio = shares[0] as f64 / shares[1] as f64;
    assert!((2.8..=6.0).contains(&ratio), "light takes about four times heavy's share: {shares:?}");
    let listed = run(&server, &["plugin", "list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(text.contains("orca") && text.contains("0.2.3"), "the component speaks 0.2.3: {text}");
}
