//! The strategy benchmark: determinism, native == wasm, per-scenario sanity, the headline
//! comparisons, outputs, and bad input.

use sextant_sim::{BenchError, BenchOptions, Row, run};

fn options(scenarios: &[&str], strategies: &[&str], seeds: u32, scale: f64) -> BenchOptions {
    BenchOptions {
        scenarios: scenarios.iter().map(|s| (*s).to_owned()).collect(),
        strategies: strategies.iter().map(|s| (*s).to_owned()).collect(),
        seeds,
        scale,
        plots: false,
        ..BenchOptions::default()
    }
}

fn row<'a>(rows: &'a [Row], scenario: &str, strategy: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.scenario == scenario && r.strategy == strategy)
        .unwrap_or_else(|| panic!("no row for {scenario} / {strategy}"))
}

#[test]
fn the_same_seeds_give_the_same_table_and_native_and_wasm_agree() {
    let o = options(
        &["slow-node", "churn"],
        &["round-robin", "wasm:round-robin", "peak-ewma", "wasm:peak-ewma", "ring-hash", "wasm:ring-hash"],
        2,
        0.3,
    );
    let a = run(&o).unwrap();
    let b = run(&o).unwrap();
    let table = |rows: &[Row]| rows.iter().map(Row::deterministic).collect::<Vec<_>>();
    assert_eq!(table(&a.rows), table(&b.rows));
    for r in &a.rows {
        if let Some(native) = r.strategy.strip_prefix("wasm:") {
            let n = row(&a.rows, &r.scenario, native);
            assert_eq!(
                n.deterministic().replacen(native, &r.strategy, 1),
                r.deterministic(),
                "{} differs from its native twin",
                r.strategy
            );
        }
    }
    // Another seed is another run.
    let other = run(&BenchOptions { first_seed: 7, ..o }).unwrap();
    assert_ne!(table(&a.rows), table(&other.rows));
}

#[test]
fn each_scenario_behaves_as_it_should() {
    let o = options(
        &["homogeneous", "heterogeneous", "slow-node", "fast-fail", "churn", "hot-keys"],
        &["round-robin", "weighted", "peak-ewma", "peak-ewma+adaptive", "ring-hash", "maglev"],
        1,
        // The scenarios' own length: the scheduler adapts once a (simulated) second.
        1.0,
    );
    let rows = run(&o).unwrap().rows;
    // Round robin spreads evenly on identical backends, and fails weak ones when capacity differs.
    assert!(row(&rows, "homogeneous", "round-robin").imbalance < 1.01);
    assert!(row(&rows, "homogeneous", "round-robin").success_rate > 0.9999);
    assert!(row(&rows, "heterogeneous", "weighted").success_rate > 0.9999);
    assert!(row(&rows, "heterogeneous", "round-robin").success_rate < 0.9);
    // Linkerd's slow node: P2C + PeakEWMA keeps the tail; round robin does not.
    let (rr, ewma) = (row(&rows, "slow-node", "round-robin"), row(&rows, "slow-node", "peak-ewma"));
    assert!(ewma.p99_ms <= 0.2 * rr.p99_ms, "peak-ewma p99 {} vs round robin {}", ewma.p99_ms, rr.p99_ms);
    assert!(ewma.success_rate >= 0.999, "{}", ewma.success_rate);
    // Fast failures fool PeakEWMA; the failure-aware scheduler halves (at least) its errors.
    let (plain, aware) = (row(&rows, "fast-fail", "peak-ewma"), row(&rows, "fast-fail", "peak-ewma+adaptive"));
    let (e_plain, e_aware) = (1.0 - plain.success_rate, 1.0 - aware.success_rate);
    assert!(e_plain > 1.0 - row(&rows, "fast-fail", "round-robin").success_rate, "PeakEWMA is not fooled?");
    assert!(e_aware <= 0.5 * e_plain, "adaptive {e_aware} vs plain {e_plain}");
    // Hash strategies keep keys where they were; the others scatter them.
    let moves = |s: &str, st: &str| row(&rows, s, st).key_moves.unwrap();
    for scenario in ["churn", "hot-keys"] {
        assert!(moves(scenario, "maglev") < 0.02, "{scenario}: maglev moves {}", moves(scenario, "maglev"));
        assert!(moves(scenario, "round-robin") > 0.8);
        assert!(moves(scenario, "ring-hash") < 0.6 * moves(scenario, "round-robin"));
    }
    assert!(row(&rows, "slow-node", "peak-ewma").key_moves.is_none(), "unkeyed scenarios report no key moves");
    assert!(row(&rows, "slow-node", "peak-ewma").cross_zone.is_none(), "a gateway without a zone: no cross-zone share");
}

#[test]
fn outputs_and_plots_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let o = BenchOptions {
        out: Some(dir.path().to_owned()),
        plots: true,
        ..options(&["slow-node"], &["round-robin", "peak-ewma", "wasm:peak-ewma"], 1, 0.2)
    };
    let report = run(&o).unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
    assert!(csv.starts_with("scenario,strategy,seeds,success_rate,p50_ms,p99_ms,p999_ms,"));
    assert_eq!(csv.lines().count(), 4);
    let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
    assert!(md.contains("## slow-node") && md.contains("| wasm:peak-ewma |"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 3);
    // The wasm twin is not plotted twice; every plot exists as SVG and PNG.
    for name in ["cdf-slow-node", "load-slow-node-round-robin", "load-slow-node-peak-ewma"] {
        let svg = std::fs::read_to_string(dir.path().join(format!("{name}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("slow-node"), "{name}.svg");
        let png = std::fs::read(dir.path().join(format!("{name}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}.png");
    }
    assert!(!dir.path().join("load-slow-node-wasm_peak-ewma.svg").exists());
}

#[test]
fn bad_names_list_the_valid_ones_and_a_bad_plugin_is_reported_by_name() {
    let e = run(&options(&["nope"], &[], 1, 0.1)).unwrap_err();
    assert!(matches!(e, BenchError::UnknownScenario { .. }));
    assert!(e.to_string().contains("slow-node") && e.to_string().contains("zone-split"), "{e}");
    let e = run(&options(&["homogeneous"], &["p3c"], 1, 0.1)).unwrap_err();
    assert!(e.to_string().contains("peak-ewma") && e.to_string().contains("adaptive"), "{e}");
    let e = run(&options(&["homogeneous"], &["peak-ewma+nope"], 1, 0.1)).unwrap_err();
    assert!(matches!(e, BenchError::Strategy(_)), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, "not wasm").unwrap();
    let good = sextant_plugin_artifacts::path("least-request").unwrap();
    let health = sextant_plugin_artifacts::path("outlier").unwrap();
    let o = BenchOptions { plugins: vec![junk, good.into(), health.into()], ..options(&["homogeneous"], &[], 1, 0.1) };
    let report = run(&o).unwrap();
    assert_eq!(report.failures.len(), 2, "{:?}", report.failures);
    assert!(report.failures[0].starts_with("plugin junk") && report.failures[0].contains("not a WebAssembly file"));
    assert!(
        report.failures[1].starts_with("plugin sextant_wasm_outlier") && report.failures[1].contains("not a balancer")
    );
    // The good plugin ran, with every default strategy.
    assert!(report.rows.iter().any(|r| r.strategy == "plugin:sextant_wasm_least_request"));
    assert_eq!(report.rows.len(), sextant_sim::strategy::default_names().len() + 1);
}

/// Locality: with the gateway's zone healthy, at least 95% of requests stay in it (PeakEWMA
/// alone and round robin spread over the three zones and pay the cross-zone round trip);
/// through the local zone's degradation every request succeeds, traffic spills in proportion
/// to what the zone lost and comes back gradually; the wasm twin decides the same.
#[test]
fn locality_keeps_traffic_in_the_gateways_zone_and_spills_as_it_degrades() {
    let o = options(
        &["zone-local", "zone-degraded"],
        &["round-robin", "peak-ewma", "peak-ewma+locality", "wasm:peak-ewma+locality"],
        1,
        1.0,
    );
    let rows = run(&o).unwrap().rows;
    let cross = |s: &str, st: &str| row(&rows, s, st).cross_zone.expect("zone scenarios report cross-zone traffic");
    assert!(cross("zone-local", "peak-ewma+locality") <= 0.05, "{}", cross("zone-local", "peak-ewma+locality"));
    assert!(cross("zone-local", "peak-ewma") > 0.5 && cross("zone-local", "round-robin") > 0.6);
    let (alone, local) = (row(&rows, "zone-local", "peak-ewma"), row(&rows, "zone-local", "peak-ewma+locality"));
    assert!(
        local.p50_ms < alone.p50_ms,
        "the round trip to other zones is saved: {} vs {}",
        local.p50_ms,
        alone.p50_ms
    );
    for strategy in ["peak-ewma", "peak-ewma+locality"] {
        let r = row(&rows, "zone-degraded", strategy);
        assert!(r.success_rate >= 0.999, "{strategy}: {}", r.success_rate);
    }
    let spilled = cross("zone-degraded", "peak-ewma+locality");
    assert!(spilled > 0.1 && spilled < 0.6 * cross("zone-degraded", "peak-ewma"), "{spilled}");
    let native = row(&rows, "zone-degraded", "peak-ewma+locality").deterministic();
    assert_eq!(
        native.replacen("peak-ewma+locality", "wasm:peak-ewma+locality", 1),
        row(&rows, "zone-degraded", "wasm:peak-ewma+locality").deterministic()
    );

    // Phase by phase (the run's 100 time buckets): local while healthy; 30% lost: 0.7 × 1.4 =
    // 98% of the weight stays; 70% lost: 0.3 × 1.4 = 42% of it stays (PeakEWMA then sends
    // somewhat less to the three busy local backends than their weight: it picks by load
    // among the candidates the weights draw); back: the share returns 10% per window.
    let host = sextant_plugin::PluginHost::new(sextant_plugin::HostConfig::default()).unwrap();
    let scenario = sextant_sim::scenario::by_name("zone-degraded").unwrap();
    let strategy = sextant_sim::strategy::build(&host, "peak-ewma+locality", &[]).unwrap();
    let result = sextant_sim::engine::run(&host, &scenario, &strategy, 1, 1.0).unwrap();
    let remote = |from: usize, to: usize| {
        let (mut all, mut away) = (0u64, 0u64);
        for bucket in &result.series[from..to] {
            for (b, &n) in bucket.iter().enumerate() {
                all += u64::from(n);
                if scenario.backends[b].zone != "zone-a" {
                    away += u64::from(n);
                }
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let share = away as f64 / all.max(1) as f64;
        share
    };
    let phases = [remote(2, 20), remote(25, 45), remote(52, 70), remote(72, 80), remote(92, 100)];
    assert!(phases[0] < 0.01, "healthy: {phases:?}");
    assert!(phases[1] < 0.08, "30% lost: {phases:?}");
    assert!((0.5..0.85).contains(&phases[2]), "70% lost: {phases:?}");
    assert!(phases[3] < phases[2] && phases[4] < phases[3], "coming back gradually: {phases:?}");
    assert!(phases[3] > 0.2, "not all at once: {phases:?}");
}

/// The strategies that read backends' load reports, on their papers' settings (half a run
/// each, one seed): under antagonist load Prequal's p99 is at most half round robin's and at
/// most P2C + PeakEWMA's (Prequal, NSDI 2024); on backends of unequal capacity `orca-wrr`
/// sends each backend its share of the capacity within 10% once its blackout is over (gRPC's
/// weighted round robin), where round robin is far off; C3 keeps the tail far below round
/// robin's. The wasm twins decide the same, request for request.
#[test]
fn the_load_report_strategies_reproduce_their_papers() {
    let strategies = ["round-robin", "peak-ewma", "orca-wrr", "prequal", "c3"];
    let mut all: Vec<String> = strategies.iter().map(|s| (*s).to_owned()).collect();
    all.extend(["orca-wrr", "prequal", "c3"].iter().map(|s| format!("wasm:{s}")));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let rows = run(&options(&["antagonist", "heterogeneous"], &all, 1, 0.5)).unwrap().rows;
    let (rr, ewma, prequal) = (
        row(&rows, "antagonist", "round-robin"),
        row(&rows, "antagonist", "peak-ewma"),
        row(&rows, "antagonist", "prequal"),
    );
    assert!(prequal.p99_ms <= 0.5 * rr.p99_ms, "prequal {} vs round robin {}", prequal.p99_ms, rr.p99_ms);
    assert!(prequal.p99_ms <= ewma.p99_ms, "prequal {} vs peak-ewma {}", prequal.p99_ms, ewma.p99_ms);
    assert!(prequal.success_rate > 0.9999, "{}", prequal.success_rate);
    let c3 = row(&rows, "antagonist", "c3");
    assert!(c3.p99_ms <= 0.5 * rr.p99_ms, "c3 {} vs round robin {}", c3.p99_ms, rr.p99_ms);
    let capacity = |s: &str| row(&rows, "heterogeneous", s).capacity_error.expect("unequal capacities");
    assert!(capacity("orca-wrr") <= 0.10, "orca-wrr is {:.1}% off capacity", capacity("orca-wrr") * 100.0);
    assert!(capacity("round-robin") > 0.5, "round robin ignores capacity");
    assert!(row(&rows, "antagonist", "peak-ewma").capacity_error.is_none(), "only where capacity is all that differs");
    for r in rows.iter().filter(|r| r.strategy.starts_with("wasm:")) {
        let native = r.strategy.trim_start_matches("wasm:");
        let n = row(&rows, &r.scenario, native);
        assert_eq!(n.deterministic().replacen(native, &r.strategy, 1), r.deterministic(), "{} differs", r.strategy);
    }
}
