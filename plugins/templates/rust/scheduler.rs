//! `{{name}}`: a sextant traffic scheduler. Every period the host hands it what each
//! endpoint did; it keeps the registered weights, halves the weight of an endpoint whose
//! error share passed `max_error_share` (default 0.05) or that signalled overload (429, 503
//! with Retry-After), and gives every endpoint at least weight 1.
//!
//! Contract `sextant:plugin@0.2.3`: one instance per worker thread, `init` once in each;
//! every service gets its own `Scheduler` resource (its registered weights), created when
//! first needed and given the service's snapshot before its first `schedule`.

use std::cell::{Cell, RefCell};

wit_bindgen::generate!({ path: "wit", world: "scheduler-plugin" });

use exports::sextant::plugin::scheduler::{EndpointStats, Guest, GuestScheduler};
use sextant::plugin::types::Snapshot;

thread_local! {
    /// The configuration `init` accepted.
    static MAX_ERROR_SHARE: Cell<f64> = const { Cell::new(0.05) };
}

struct Plugin;

impl Guest for Plugin {
    type Scheduler = Scheduler;

    fn init(config: String) -> Result<(), String> {
        let config: serde_json::Value =
            serde_json::from_str(&config).map_err(|e| format!("the configuration is not JSON: {e}"))?;
        let share = match config.get("max_error_share") {
            None => 0.05,
            Some(v) => v
                .as_f64()
                .filter(|s| (0.0..=1.0).contains(s))
                .ok_or_else(|| format!("max_error_share must be a number from 0 to 1, not {v}"))?,
        };
        MAX_ERROR_SHARE.set(share);
        Ok(())
    }
}

/// One service's scheduler: the registered weights of its last snapshot.
struct Scheduler {
    weights: RefCell<Vec<u32>>,
}

impl GuestScheduler for Scheduler {
    fn new(_service: String) -> Self {
        Self { weights: RefCell::new(Vec::new()) }
    }

    fn update(&self, snapshot: Snapshot) -> Result<(), String> {
        *self.weights.borrow_mut() = snapshot.endpoints.iter().map(|e| e.weight).collect();
        Ok(())
    }

    fn schedule(&self, stats: Vec<EndpointStats>) -> Vec<u32> {
        let max_error_share = MAX_ERROR_SHARE.get();
        self.weights
            .borrow()
            .iter()
            .zip(stats.iter())
            .map(|(&weight, st)| {
                let errors = if st.requests == 0 { 0.0 } else { st.errors as f64 / st.requests as f64 };
                let troubled = errors > max_error_share || st.overloaded > 0;
                if troubled { (weight / 2).max(1) } else { weight.max(1) }
            })
            .collect()
    }
}

export!(Plugin);
