//! `{{name}}`: a sextant health policy. An endpoint becomes unhealthy after
//! `unhealthy_after` (default 3) failed probes or requests in a row (a timeout, a refused
//! connection or a 5xx), and healthy again after one success.
//!
//! Contract `sextant:plugin@0.2.3`: one instance per worker thread, `init` once in each;
//! every service gets its own `Health` resource (its failure counts), created when first
//! needed and given the service's snapshot before any probe or outcome.

use std::cell::{Cell, RefCell};

wit_bindgen::generate!({ path: "wit", world: "health-plugin" });

use exports::sextant::plugin::health::{Guest, GuestHealth, Outcome, ProbeResult, Status, Verdict};
use sextant::plugin::types::Snapshot;

thread_local! {
    /// The configuration `init` accepted.
    static UNHEALTHY_AFTER: Cell<u32> = const { Cell::new(3) };
}

struct Plugin;

impl Guest for Plugin {
    type Health = Health;

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
        UNHEALTHY_AFTER.set(unhealthy_after);
        Ok(())
    }
}

/// One service's health policy: failures in a row, per endpoint of the last snapshot.
struct Health {
    failures: RefCell<Vec<u32>>,
}

impl Health {
    fn judge(&self, endpoint: u32, status: &Status) -> Verdict {
        let failed = match status {
            Status::Http(code) => *code >= 500,
            Status::Connected => false,
            Status::Timeout | Status::Failed(_) => true,
        };
        let limit = UNHEALTHY_AFTER.get();
        let mut failures = self.failures.borrow_mut();
        let Some(count) = failures.get_mut(endpoint as usize) else { return Verdict::Unchanged };
        if !failed {
            let was = *count;
            *count = 0;
            return if was >= limit { Verdict::Healthy } else { Verdict::Unchanged };
        }
        *count += 1;
        if *count == limit { Verdict::Unhealthy } else { Verdict::Unchanged }
    }
}

impl GuestHealth for Health {
    fn new(_service: String) -> Self {
        Self { failures: RefCell::new(Vec::new()) }
    }

    fn update(&self, snapshot: Snapshot) -> Result<(), String> {
        *self.failures.borrow_mut() = vec![0; snapshot.endpoints.len()];
        Ok(())
    }

    fn on_probe(&self, probe: ProbeResult) -> Verdict {
        self.judge(probe.endpoint, &probe.status)
    }

    fn on_outcome(&self, outcome: Outcome) -> Verdict {
        self.judge(outcome.endpoint, &outcome.status)
    }
}

export!(Plugin);
