//! `{{name}}`: a sextant health policy. An endpoint becomes unhealthy after
//! `unhealthy_after` (default 3) failed probes or requests in a row (a timeout, a refused
//! connection or a 5xx), and healthy again after one success.
//!
//! State lives in the instance: the host runs several instances of a plugin and calls
//! `init` and `update` on each.

use std::cell::RefCell;

wit_bindgen::generate!({ path: "wit", world: "health-plugin" });

use exports::sextant::plugin::health::{Guest, Outcome, ProbeResult, Status, Verdict};
use sextant::plugin::types::Snapshot;

#[derive(Default)]
struct State {
    unhealthy_after: u32,
    /// Failures in a row, per endpoint of the last snapshot.
    failures: Vec<u32>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::default();
}

fn judge(endpoint: u32, status: &Status) -> Verdict {
    let failed = match status {
        Status::Http(code) => *code >= 500,
        Status::Connected => false,
        Status::Timeout | Status::Failed(_) => true,
    };
    STATE.with_borrow_mut(|s| {
        let limit = s.unhealthy_after;
        let Some(count) = s.failures.get_mut(endpoint as usize) else { return Verdict::Unchanged };
        if !failed {
            let was = *count;
            *count = 0;
            return if was >= limit { Verdict::Healthy } else { Verdict::Unchanged };
        }
        *count += 1;
        if *count == limit { Verdict::Unhealthy } else { Verdict::Unchanged }
    })
}

struct Plugin;

impl Guest for Plugin {
    fn init(config: String) -> Result<(), String> {
        let config: serde_json::Value =
            serde_json::from_str(&config).map_err(|e| format!("the configuration is not JSON: {e}"))?;
        let unhealthy_after = match config.get("unhealthy_after") {
            None => 3,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("unhealthy_after must be a positive integer, not {v}"))?,
        };
        STATE.with_borrow_mut(|s| s.unhealthy_after = unhealthy_after);
        Ok(())
    }

    fn update(snapshot: Snapshot) -> Result<(), String> {
        STATE.with_borrow_mut(|s| s.failures = vec![0; snapshot.endpoints.len()]);
        Ok(())
    }

    fn on_probe(probe: ProbeResult) -> Verdict {
        judge(probe.endpoint, &probe.status)
    }

    fn on_outcome(outcome: Outcome) -> Verdict {
        judge(outcome.endpoint, &outcome.status)
    }
}

export!(Plugin);
