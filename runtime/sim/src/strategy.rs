//! Strategies: a balancer, optionally with a scheduler, native or wasm, run through the same
//! slots the server and gateways use.
//!
//! Names: `BALANCER[+SCHEDULER]` for the native built-ins (`peak-ewma`,
//! `peak-ewma+adaptive`), `wasm:` before it for the same built-ins compiled to components
//! (`wasm:peak-ewma+adaptive`), and `plugin:NAME` for a component given with `--plugin`.

use std::sync::Arc;

use sextant_plugin::builtins::{BALANCERS, SCHEDULERS};
use sextant_plugin::{Compiled, LoadError, PluginHost, PluginKind, PluginSpec};

/// A strategy ready to run.
#[derive(Debug, Clone)]
pub struct Strategy {
    /// Its name in the report.
    pub name: String,
    /// The balancer.
    pub balancer: PluginSpec,
    /// The scheduler feeding it effective weights, if any.
    pub scheduler: Option<PluginSpec>,
    /// The native built-in the balancer slot falls back to (and starts on).
    pub fallback: String,
}

impl Strategy {
    /// Whether this runs wasm components.
    #[must_use]
    pub fn is_wasm(&self) -> bool {
        matches!(self.balancer, PluginSpec::Wasm { .. })
    }
}

/// Why a strategy cannot run.
#[derive(Debug, thiserror::Error)]
pub enum StrategyError {
    /// Not a strategy name.
    #[error(
        "unknown strategy {name:?}; valid: BALANCER[+SCHEDULER] or wasm:BALANCER[+SCHEDULER] with balancers {balancers} and schedulers {schedulers}, or plugin:NAME for a --plugin file"
    )]
    Unknown {
        /// The name given.
        name: String,
        /// The balancers.
        balancers: String,
        /// The schedulers.
        schedulers: String,
    },
    /// A `--plugin` file that does not load.
    #[error("plugin {name} ({path}): {reason}")]
    Plugin {
        /// Its name.
        name: String,
        /// Its path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

fn unknown(name: &str) -> StrategyError {
    StrategyError::Unknown { name: name.into(), balancers: BALANCERS.join(", "), schedulers: SCHEDULERS.join(", ") }
}

/// The default set: every built-in balancer native and wasm, and P2C + PeakEWMA with the
/// adaptive (failure-aware) scheduler and with the locality scheduler, native and wasm.
#[must_use]
pub fn default_names() -> Vec<String> {
    let mut names: Vec<String> = BALANCERS.iter().map(|b| (*b).to_owned()).collect();
    names.push("peak-ewma+adaptive".into());
    names.push("peak-ewma+locality".into());
    let wasm: Vec<String> = names.iter().map(|n| format!("wasm:{n}")).collect();
    names.extend(wasm);
    names
}

fn compiled(host: &PluginHost, name: &str) -> Result<Arc<Compiled>, LoadError> {
    let bytes = sextant_plugin_artifacts::builtin_bytes(name).ok_or_else(|| LoadError::UnknownBuiltin(name.into()))?;
    host.compile(bytes)
}

/// Builds the strategy called `name`; `plugins` are the `--plugin` components by name.
///
/// # Errors
/// An unknown name (the message lists the valid ones), or a built-in that fails to compile.
pub fn build(host: &PluginHost, name: &str, plugins: &[(String, Arc<Compiled>)]) -> Result<Strategy, StrategyError> {
    if let Some(plugin) = name.strip_prefix("plugin:") {
        let (_, compiled) = plugins.iter().find(|(n, _)| n == plugin).ok_or_else(|| unknown(name))?;
        return Ok(Strategy {
            name: name.into(),
            balancer: PluginSpec::Wasm { name: plugin.into(), compiled: Arc::clone(compiled), config: "{}".into() },
            scheduler: None,
            fallback: "round-robin".into(),
        });
    }
    let (wasm, rest) = match name.strip_prefix("wasm:") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    let (balancer, scheduler) = match rest.split_once('+') {
        Some((b, s)) => (b, Some(s)),
        None => (rest, None),
    };
    if !BALANCERS.contains(&balancer) || scheduler.is_some_and(|s| !SCHEDULERS.contains(&s)) {
        return Err(unknown(name));
    }
    let spec = |built: &str| -> Result<PluginSpec, StrategyError> {
        if wasm {
            let c = compiled(host, built).map_err(|e| StrategyError::Plugin {
                name: built.into(),
                path: "built-in".into(),
                reason: e.to_string(),
            })?;
            Ok(PluginSpec::Wasm { name: format!("wasm:{built}"), compiled: c, config: bench_config(built).into() })
        } else {
            Ok(PluginSpec::Builtin { name: built.into(), config: bench_config(built).into() })
        }
    };
    Ok(Strategy {
        name: name.into(),
        balancer: spec(balancer)?,
        scheduler: scheduler.map(spec).transpose()?,
        fallback: balancer.into(),
    })
}

/// The configuration a built-in runs with in the benchmark: its defaults, except `orca-wrr`'s
/// blackout, 1 s instead of gRPC's 10 s (which would last the whole of a 10 s run, leaving
/// round robin to be measured).
#[must_use]
pub fn bench_config(built: &str) -> &'static str {
    match built {
        "orca-wrr" => r#"{"blackout_period_ms": 1000}"#,
        _ => "{}",
    }
}

/// Compiles a `--plugin` file; its name is the file stem.
///
/// # Errors
/// The file cannot be read, is not a balancer component, or fails validation.
pub fn load_plugin(host: &PluginHost, path: &std::path::Path) -> Result<(String, Arc<Compiled>), StrategyError> {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into());
    let fail = |reason: String| StrategyError::Plugin { name: name.clone(), path: path.display().to_string(), reason };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let compiled = host.compile(&bytes).map_err(|e| fail(e.to_string()))?;
    if compiled.kind != PluginKind::Balancer {
        return Err(fail(format!("a {} plugin, not a balancer", compiled.kind)));
    }
    // Self-test and init in a scratch slot, so a bad plugin is reported here, by name.
    let slot = sextant_plugin::BalancerSlot::new(host, "sim/validate", PluginSpec::builtin("round-robin"))
        .map_err(|e| fail(e.to_string()))?;
    slot.load(PluginSpec::Wasm { name: name.clone(), compiled: Arc::clone(&compiled), config: "{}".into() })
        .map_err(|e| fail(e.to_string()))?;
    Ok((name, compiled))
}
