//! # sextant-sim: the strategy benchmark (`sextant bench strategies`)
//!
//! Owns a deterministic, seeded discrete-event simulation of clients, a gateway and N
//! backends ([`scenario`]: homogeneous, heterogeneous capacity, one slow node, a fast-failing
//! node, bursty arrivals, hot keys, churn, a zone split, a gateway in one of three zones and
//! that zone degrading, with a cross-zone round trip, antagonists moving between backends),
//! backends that report their load as ORCA reports and answer load probes ([`load`]), run
//! for every strategy
//! ([`strategy`]: each built-in balancer, native and wasm, optionally with a scheduler, and
//! any `--plugin FILE.wasm`) through the gateway's own `Router` on a clock the simulation
//! moves ([`engine`]). Results aggregate over several
//! seeds ([`report`]: `results.csv`, `results.md`, `results.json`) and are drawn
//! ([`plot`]: latency CDFs, load per backend over time, SVG and PNG). A progressive rollout
//! can be tried on every run ([`rollout`]: the run's strategy as the stable version, a
//! candidate beside it, the servers' judge deciding each step on simulated time).
//!
//! Does not own: the balancers themselves (`sextant-builtins`, `plugins/wasm`), the host
//! (`sextant-plugin`) or the gateway's per-service state (`sextant-gateway`).
#![deny(missing_docs)]

pub mod engine;
pub mod load;
pub mod plot;
pub mod report;
mod rng;
pub mod rollout;
pub mod scenario;
pub mod strategy;

use std::path::PathBuf;
use std::sync::Arc;

use sextant_plugin::{HostConfig, PluginHost};

pub use engine::{RunError, RunResult};
pub use report::Row;
pub use rollout::{RolloutRun, RolloutTrial};
pub use scenario::Scenario;
pub use strategy::{Strategy, StrategyError};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Scenario names; empty: all.
    pub scenarios: Vec<String>,
    /// Strategy names; empty: the default set (plus every `--plugin`).
    pub strategies: Vec<String>,
    /// Extra balancer components, each run as `plugin:FILE_STEM`.
    pub plugins: Vec<PathBuf>,
    /// Seeds: `first_seed`, `first_seed + 1`, ...
    pub seeds: u32,
    /// The first seed.
    pub first_seed: u64,
    /// Duration multiplier (1.0: each scenario's own length).
    pub scale: f64,
    /// Output directory; none: compute only.
    pub out: Option<PathBuf>,
    /// Draw plots (needs a system font for the PNGs).
    pub plots: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// A rollout to try on every run: `(plan, candidate strategy)`; each strategy run is
    /// then the stable version beside the candidate.
    pub rollout: Option<(String, String)>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            scenarios: Vec::new(),
            strategies: Vec::new(),
            plugins: Vec::new(),
            seeds: 3,
            first_seed: 1,
            scale: 1.0,
            out: None,
            plots: true,
            progress: false,
            rollout: None,
        }
    }
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Not a scenario name.
    #[error("unknown scenario {name:?}; valid: {valid}")]
    UnknownScenario {
        /// The name given.
        name: String,
        /// The valid names.
        valid: String,
    },
    /// Not a strategy name.
    #[error(transparent)]
    Strategy(StrategyError),
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The plugin host could not start.
    #[error(transparent)]
    Host(#[from] sextant_plugin::HostError),
    /// Results could not be written.
    #[error("writing results: {0}")]
    Io(#[from] std::io::Error),
}

/// What the benchmark produced.
#[derive(Debug)]
pub struct BenchReport {
    /// One row per (scenario, strategy).
    pub rows: Vec<Row>,
    /// What went wrong, with the reason: plugins or strategies that could not run, plots.
    pub failures: Vec<String>,
    /// The plugins and strategies asked for that did not run (a subset of `failures`).
    pub not_run: Vec<String>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// With a rollout: per (scenario, strategy, seed), how it ended and its decisions.
    pub rollouts: Vec<String>,
}

/// Runs the benchmark.
///
/// # Errors
/// Unknown scenario or strategy names (the message lists the valid ones), bad options, or
/// output that cannot be written. A `--plugin` that fails to load is not an error here: it is
/// reported in [`BenchReport::not_run`] and the other strategies run (the command line
/// then exits non-zero).
#[allow(clippy::too_many_lines)]
pub fn run(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    if options.seeds == 0 || !(options.scale > 0.0 && options.scale <= 100.0) {
        return Err(BenchError::Options("--seeds must be at least 1 and --scale within (0, 100]".into()));
    }
    let scenarios: Vec<Scenario> = if options.scenarios.is_empty() {
        scenario::all()
    } else {
        options
            .scenarios
            .iter()
            .map(|n| {
                scenario::by_name(n)
                    .ok_or_else(|| BenchError::UnknownScenario { name: n.clone(), valid: scenario::names().join(", ") })
            })
            .collect::<Result<_, _>>()?
    };
    let host = PluginHost::new(HostConfig { workers: 1, ..HostConfig::default() })?;
    let mut failures = Vec::new();
    let mut not_run = Vec::new();
    let mut plugins = Vec::new();
    for path in &options.plugins {
        match strategy::load_plugin(&host, path) {
            Ok(p) => plugins.push(p),
            Err(e) => {
                failures.push(e.to_string());
                not_run.push(e.to_string());
            }
        }
    }
    let names: Vec<String> = if options.strategies.is_empty() {
        let mut n = strategy::default_names();
        n.extend(plugins.iter().map(|(name, _)| format!("plugin:{name}")));
        n
    } else {
        options.strategies.clone()
    };
    let mut strategies = Vec::new();
    for name in &names {
        match strategy::build(&host, name, &plugins) {
            Ok(s) => strategies.push(s),
            // A named plugin that failed to load was reported already.
            Err(StrategyError::Unknown { .. })
                if name.strip_prefix("plugin:").is_some_and(|p| {
                    options.plugins.iter().any(|f| f.file_stem().is_some_and(|s| s.to_string_lossy() == p))
                }) => {}
            Err(e) => return Err(BenchError::Strategy(e)),
        }
    }

    let trial = match &options.rollout {
        None => None,
        Some((plan, candidate)) => Some(RolloutTrial {
            plan: plan.parse().map_err(|e| BenchError::Options(format!("--rollout: {e}")))?,
            candidate: strategy::build(&host, candidate, &plugins).map_err(BenchError::Strategy)?,
        }),
    };
    let mut rollouts = Vec::new();
    let seeds: Vec<u64> = (0..u64::from(options.seeds)).map(|k| options.first_seed + k).collect();
    let total = (scenarios.len() * strategies.len() * seeds.len()) as u64;
    let bar = if options.progress {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut rows = Vec::new();
    let mut files = Vec::new();
    if let Some(out) = &options.out {
        std::fs::create_dir_all(out)?;
    }
    for sc in &scenarios {
        let mut first_runs: Vec<(String, Arc<RunResult>, bool)> = Vec::new();
        for st in &strategies {
            bar.set_message(format!("{} / {}", sc.name, st.name));
            let mut runs = Vec::new();
            for seed in &seeds {
                match engine::run_with(&host, sc, st, *seed, options.scale, trial.as_ref()) {
                    Ok(r) => {
                        if let (Some(run), Some(t)) = (&r.rollout, &trial) {
                            rollouts.push(format!(
                                "{} / {} seed {seed}: candidate {} {} at step {} of {}",
                                sc.name,
                                st.name,
                                t.candidate.name,
                                run.state,
                                run.step + 1,
                                t.plan
                            ));
                            rollouts.extend(run.lines().into_iter().map(|l| format!("  {l}")));
                        }
                        runs.push(r);
                    }
                    Err(e) => {
                        failures.push(format!("{} in {}: {e}", st.name, sc.name));
                        not_run.push(format!("{} in {}: {e}", st.name, sc.name));
                        break;
                    }
                }
                bar.inc(1);
            }
            if runs.len() == seeds.len() {
                rows.push(Row::of(sc.name, &st.name, &runs));
                first_runs.push((st.name.clone(), Arc::new(runs.swap_remove(0)), st.is_wasm()));
            }
        }
        if let (Some(out), true) = (&options.out, options.plots) {
            // The wasm twin of a native built-in makes the same picks: plot one of the two.
            let plotted: Vec<&(String, Arc<RunResult>, bool)> = first_runs
                .iter()
                .filter(|(name, _, wasm)| {
                    !*wasm || !first_runs.iter().any(|(n, _, w)| !*w && Some(n.as_str()) == name.strip_prefix("wasm:"))
                })
                .collect();
            let series: Vec<(String, &RunResult)> = plotted.iter().map(|(n, r, _)| (n.clone(), r.as_ref())).collect();
            let ids: Vec<String> = sc.backends.iter().map(|b| b.id.clone()).collect();
            let mut draw = || -> Result<(), String> {
                files.extend(plot::cdf(out, sc.name, &series)?);
                for (name, run) in &series {
                    files.extend(plot::load(out, sc.name, name, &ids, run, sc.duration_s * options.scale)?);
                }
                Ok(())
            };
            if let Err(e) = draw() {
                failures.push(format!("plots of {}: {e}", sc.name));
            }
        }
    }
    bar.finish_and_clear();
    if let Some(out) = &options.out {
        let described: Vec<(String, String)> =
            scenarios.iter().map(|s| (s.name.to_owned(), s.description.to_owned())).collect();
        report::write(out, &rows, &described, &seeds, options.scale, &failures)?;
        for f in ["results.csv", "results.md", "results.json"] {
            files.push(out.join(f));
        }
        if !rollouts.is_empty() {
            let text = format!("# Rollouts tried in simulation\n\n```\n{}\n```\n", rollouts.join("\n"));
            std::fs::write(out.join("rollouts.md"), text)?;
            files.push(out.join("rollouts.md"));
        }
    }
    Ok(BenchReport { rows, failures, not_run, files, rollouts })
}
