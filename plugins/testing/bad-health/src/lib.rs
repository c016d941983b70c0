//! A health policy that fails on purpose, for the gateway's bad-input tests:
//! `{"fault": F, "after": N}` where F is `trap-probe`, `trap-outcome` (panic in that
//! function), `loop-probe` or `loop-outcome` (spin until the host's deadline), starting with
//! the N-th call of that function (default 0; the host's self-test makes 4 of each). Probes
//! it does not fail are answered `unhealthy`, so a host that ignored the fault would notice.
use std::hint::black_box;

use sextant_plugin_sdk::{Env, HealthPolicy, Outcome, ProbeResult, Snapshot, Verdict};

struct BadHealth {
    fault: String,
    after: u64,
    probes: u64,
    outcomes: u64,
}

fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

impl HealthPolicy for BadHealth {
    fn update(&mut self, _snapshot: &Snapshot, _env: &mut dyn Env) -> Result<(), String> {
        Ok(())
    }

    fn on_probe(&mut self, _result: &ProbeResult, _env: &mut dyn Env) -> Verdict {
        self.probes += 1;
        if self.probes <= self.after {
            return Verdict::Unchanged;
        }
        match self.fault.as_str() {
            "trap-probe" => panic!("trap-probe: as configured"),
            "loop-probe" => spin(),
            _ => Verdict::Unhealthy,
        }
    }

    fn on_outcome(&mut self, _outcome: &Outcome, _env: &mut dyn Env) -> Verdict {
        self.outcomes += 1;
        if self.outcomes <= self.after {
            return Verdict::Unchanged;
        }
        match self.fault.as_str() {
            "trap-outcome" => panic!("trap-outcome: as configured"),
            "loop-outcome" => spin(),
            _ => Verdict::Unchanged,
        }
    }
}

fn make(config: &str) -> Result<BadHealth, String> {
    // A tiny reader for {"fault": "x", "after": 4}; a real plugin would use serde.
    let field = |name: &str| -> Option<String> {
        let at = config.find(&format!("\"{name}\""))?;
        let rest = config[at + name.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim().trim_matches('"').to_owned())
    };
    let fault = field("fault").unwrap_or_default();
    let after = field("after").map_or(Ok(0), |a| a.parse::<u64>().map_err(|e| e.to_string()))?;
    Ok(BadHealth { fault, after, probes: 0, outcomes: 0 })
}

sextant_plugin_sdk::export_health!(make);
