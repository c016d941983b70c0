//! `{{name}}`: a sextant traffic scheduler. Every period the host hands it what each
//! endpoint did; it keeps the registered weights, halves the weight of an endpoint whose
//! error share passed `max_error_share` (default 0.05) or that signalled overload (429, 503
//! with Retry-After), and gives every endpoint at least weight 1.
//!
//! State lives in the instance: the host runs several instances of a plugin and calls
//! `init` and `update` on each.

use std::cell::RefCell;

wit_bindgen::generate!({ path: "wit", world: "scheduler-plugin" });

use exports::sextant::plugin::scheduler::{EndpointStats, Guest};
use sextant::plugin::types::Snapshot;

#[derive(Default)]
struct State {
    max_error_share: f64,
    weights: Vec<u32>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::default();
}

struct Plugin;

impl Guest for Plugin {
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
        STATE.with_borrow_mut(|s| s.max_error_share = share);
        Ok(())
    }

    fn update(snapshot: Snapshot) -> Result<(), String> {
        STATE.with_borrow_mut(|s| s.weights = snapshot.endpoints.iter().map(|e| e.weight).collect());
        Ok(())
    }

    fn schedule(stats: Vec<EndpointStats>) -> Vec<u32> {
        STATE.with_borrow(|s| {
            s.weights
                .iter()
                .zip(stats.iter())
                .map(|(&weight, st)| {
                    let errors = if st.requests == 0 { 0.0 } else { st.errors as f64 / st.requests as f64 };
                    let troubled = errors > s.max_error_share || st.overloaded > 0;
                    if troubled { (weight / 2).max(1) } else { weight.max(1) }
                })
                .collect()
        })
    }
}

export!(Plugin);
