//! Aggregating runs over seeds and writing `results.csv`, `results.md`, `results.json`.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::engine::RunResult;

/// One (scenario, strategy) over every seed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Strategy name.
    pub strategy: String,
    /// Seeds run.
    pub seeds: usize,
    /// Successful share of requests (mean over seeds).
    pub success_rate: f64,
    /// Latency quantiles of every request as the client saw it (failures when their error
    /// came back, unanswered requests at the timeout), ms, means over seeds.
    pub p50_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// p99.9.
    pub p999_ms: f64,
    /// Spread of p99 over seeds: lowest.
    pub p99_min_ms: f64,
    /// Spread of p99 over seeds: highest.
    pub p99_max_ms: f64,
    /// Requests per unit of weight, max / mean, over backends present the whole run.
    pub imbalance: f64,
    /// Keyed scenarios: share of requests moved off a key's still-present backend.
    pub key_moves: Option<f64>,
    /// Scenarios with a gateway zone: share of requests sent to another zone.
    pub cross_zone: Option<f64>,
    /// Scenarios of unequal capacities: in the second half of the run, the largest relative
    /// difference between a backend's share of the requests and its share of the capacity.
    pub capacity_error: Option<f64>,
    /// Picks answered by the native default because a plugin faulted.
    pub fallbacks: u64,
    /// Mean wall time of one pick, ns (timing: varies between runs).
    pub pick_ns: f64,
    /// Picks per second of pick time (timing: varies between runs).
    pub decisions_per_s: f64,
}

impl Row {
    /// Aggregates the runs of one (scenario, strategy).
    #[must_use]
    pub fn of(scenario: &str, strategy: &str, runs: &[RunResult]) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let n = runs.len().max(1) as f64;
        let mean = |f: &dyn Fn(&RunResult) -> f64| runs.iter().map(f).sum::<f64>() / n;
        let p99: Vec<f64> = runs.iter().map(|r| r.quantile_ms(0.99)).collect();
        let picks: u64 = runs.iter().map(|r| r.picks).sum();
        let pick_ns: u64 = runs.iter().map(|r| r.pick_ns).sum();
        #[allow(clippy::cast_precision_loss)]
        let per_pick = if picks == 0 { 0.0 } else { pick_ns as f64 / picks as f64 };
        Self {
            scenario: scenario.into(),
            strategy: strategy.into(),
            seeds: runs.len(),
            success_rate: mean(&RunResult::success_rate),
            p50_ms: mean(&|r| r.quantile_ms(0.5)),
            p99_ms: mean(&|r| r.quantile_ms(0.99)),
            p999_ms: mean(&|r| r.quantile_ms(0.999)),
            p99_min_ms: p99.iter().copied().fold(f64::INFINITY, f64::min),
            p99_max_ms: p99.iter().copied().fold(0.0, f64::max),
            imbalance: mean(&|r| r.imbalance),
            key_moves: runs.first().and_then(|r| r.key_moves).map(|_| mean(&|r| r.key_moves.unwrap_or(0.0))),
            cross_zone: runs
                .first()
                .and_then(RunResult::cross_zone_share)
                .map(|_| mean(&|r| r.cross_zone_share().unwrap_or(0.0))),
            capacity_error: runs
                .first()
                .and_then(|r| r.capacity_error)
                .map(|_| mean(&|r| r.capacity_error.unwrap_or(0.0))),
            fallbacks: runs.iter().map(|r| r.fallbacks).sum(),
            pick_ns: per_pick,
            decisions_per_s: if per_pick > 0.0 { 1e9 / per_pick } else { 0.0 },
        }
    }

    /// The columns that depend only on the seeds (not on timing).
    #[must_use]
    pub fn deterministic(&self) -> String {
        format!(
            "{},{},{},{:.6},{:.3},{:.3},{:.3},{:.3},{:.3},{:.4},{},{},{},{}",
            self.scenario,
            self.strategy,
            self.seeds,
            self.success_rate,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.p99_min_ms,
            self.p99_max_ms,
            self.imbalance,
            self.key_moves.map_or(String::new(), |m| format!("{m:.4}")),
            self.cross_zone.map_or(String::new(), |m| format!("{m:.4}")),
            self.capacity_error.map_or(String::new(), |m| format!("{m:.4}")),
            self.fallbacks,
        )
    }
}

/// The CSV header.
pub const CSV_HEADER: &str = "scenario,strategy,seeds,success_rate,p50_ms,p99_ms,p999_ms,p99_min_ms,p99_max_ms,imbalance,key_moves,cross_zone,capacity_error,fallbacks,pick_ns,decisions_per_s";

/// `results.csv`.
#[must_use]
pub fn csv(rows: &[Row]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for r in rows {
        let _ = writeln!(out, "{},{:.1},{:.0}", r.deterministic(), r.pick_ns, r.decisions_per_s);
    }
    out
}

/// `results.md`: one table per scenario.
#[must_use]
pub fn markdown(rows: &[Row], scenarios: &[(String, String)], seeds: &[u64], scale: f64) -> String {
    let mut out = String::from("# sextant strategy benchmark\n\n");
    let _ = writeln!(
        out,
        "Seeds {seeds:?}, scale {scale}. Latencies are of every request as the client saw it: a failure when its error came back, an unanswered request at the timeout (means over seeds; p99 spread is min–max over seeds). Imbalance is max / mean requests per unit of weight over the backends present the whole run. Vs capacity (backends of unequal capacity only): in the second half of the run, the largest relative difference between a backend's share of the requests and its share of the capacity. Pick cost is wall time per pick on this machine.\n"
    );
    for (name, description) in scenarios {
        let _ = writeln!(out, "## {name}\n\n{description}\n");
        out.push_str(
            "| strategy | success | p50 ms | p99 ms (spread) | p99.9 ms | imbalance | key moves | cross-zone | vs capacity | pick ns | decisions/s |\n",
        );
        out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for r in rows.iter().filter(|r| &r.scenario == name) {
            let _ = writeln!(
                out,
                "| {} | {:.3}% | {:.2} | {:.2} ({:.2}–{:.2}) | {:.2} | {:.3} | {} | {} | {} | {:.0} | {:.2}M |",
                r.strategy,
                r.success_rate * 100.0,
                r.p50_ms,
                r.p99_ms,
                r.p99_min_ms,
                r.p99_max_ms,
                r.p999_ms,
                r.imbalance,
                r.key_moves.map_or_else(|| "—".to_owned(), |m| format!("{:.1}%", m * 100.0)),
                r.cross_zone.map_or_else(|| "—".to_owned(), |m| format!("{:.1}%", m * 100.0)),
                r.capacity_error.map_or_else(|| "—".to_owned(), |m| format!("{:.1}%", m * 100.0)),
                r.pick_ns,
                r.decisions_per_s / 1e6,
            );
        }
        out.push('\n');
    }
    out
}

/// Writes the three result files into `dir`.
///
/// # Errors
/// The files cannot be written.
pub fn write(
    dir: &Path,
    rows: &[Row],
    scenarios: &[(String, String)],
    seeds: &[u64],
    scale: f64,
    failures: &[String],
) -> std::io::Result<()> {
    std::fs::write(dir.join("results.csv"), csv(rows))?;
    std::fs::write(dir.join("results.md"), markdown(rows, scenarios, seeds, scale))?;
    let json = serde_json::json!({
        "seeds": seeds,
        "scale": scale,
        "scenarios": scenarios.iter().map(|(n, d)| serde_json::json!({"name": n, "description": d})).collect::<Vec<_>>(),
        "rows": rows,
        "failures": failures,
    });
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(&json).unwrap_or_default())
}
