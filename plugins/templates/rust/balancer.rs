//! `{{name}}`: a sextant balancer. It sends each request to the endpoint with the fewest
//! requests in flight per unit of weight (per-request mode: the host calls `pick` for every
//! request), or, with the configuration `{"mode": "table"}`, returns the registered weights
//! as a table the host executes natively (table mode: no plugin call per request).
//!
//! State lives in the instance: the host runs several instances of a plugin (one per worker
//! thread) and calls `init` and `update` on each.

use std::cell::RefCell;

wit_bindgen::generate!({ path: "wit", world: "balancer-plugin" });

use exports::sextant::plugin::balancer::{Guest, Mode, Request, Table};
use sextant::plugin::host::{Level, log};
use sextant::plugin::load;
use sextant::plugin::types::Snapshot;

#[derive(Default)]
struct State {
    table: bool,
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
        let table = match config.get("mode").and_then(serde_json::Value::as_str) {
            None | Some("per-request") => false,
            Some("table") => true,
            Some(other) => return Err(format!("mode must be per-request or table, not {other}")),
        };
        STATE.with_borrow_mut(|s| s.table = table);
        log(Level::Info, &format!("{{name}} starts in {} mode", if table { "table" } else { "per-request" }));
        Ok(())
    }

    fn update(snapshot: Snapshot) -> Result<Mode, String> {
        STATE.with_borrow_mut(|s| {
            s.weights = snapshot.endpoints.iter().map(|e| e.weight.max(1)).collect();
            Ok(if s.table { Mode::Table(Table::Weighted(s.weights.clone())) } else { Mode::PerRequest })
        })
    }

    fn pick(_request: Request) -> Option<u32> {
        STATE.with_borrow(|s| {
            // Fewest in flight per unit of weight: (in_flight + 1) / weight, in integers.
            (0..s.weights.len() as u32).min_by_key(|&i| {
                let load = u64::from(load::in_flight(i)) + 1;
                (load * 1_000_000) / u64::from(s.weights[i as usize])
            })
        })
    }
}

export!(Plugin);
