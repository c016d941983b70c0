//! `{{name}}`: a sextant balancer. It sends each request to the endpoint with the fewest
//! requests in flight per unit of weight (per-request mode: the host calls `pick` for every
//! request), or, with the configuration `{"mode": "table"}`, returns the registered weights
//! as a table the host executes natively (table mode: no plugin call per request).
//!
//! Contract `sextant:plugin@0.2.3`: the host runs one instance of the plugin per worker
//! thread and calls `init` once in each; every service the plugin is bound to gets its own
//! `Balancer` resource in that instance (created when the service first needs it, given a
//! snapshot before its first pick, dropped when the service goes or idles). What a service
//! needs lives in its resource; what every service shares (the configuration) in the
//! instance.

use std::cell::{Cell, RefCell};

wit_bindgen::generate!({ path: "wit", world: "balancer-plugin" });

use exports::sextant::plugin::balancer::{Guest, GuestBalancer, Mode, Request, Table};
use sextant::plugin::host::{Level, log};
use sextant::plugin::load;
use sextant::plugin::types::Snapshot;

thread_local! {
    /// The configuration `init` accepted: table mode or not.
    static TABLE: Cell<bool> = const { Cell::new(false) };
}

struct Plugin;

impl Guest for Plugin {
    type Balancer = Balancer;

    fn init(config: String) -> Result<(), String> {
        let config: serde_json::Value =
            serde_json::from_str(&config).map_err(|e| format!("the configuration is not JSON: {e}"))?;
        let table = match config.get("mode").and_then(serde_json::Value::as_str) {
            None | Some("per-request") => false,
            Some("table") => true,
            Some(other) => return Err(format!("mode must be per-request or table, not {other}")),
        };
        TABLE.set(table);
        log(Level::Info, &format!("{{name}} starts in {} mode", if table { "table" } else { "per-request" }));
        Ok(())
    }
}

/// One service's balancer.
struct Balancer {
    weights: RefCell<Vec<u32>>,
}

impl GuestBalancer for Balancer {
    fn new(_service: String) -> Self {
        Self { weights: RefCell::new(Vec::new()) }
    }

    fn update(&self, snapshot: Snapshot) -> Result<Mode, String> {
        let weights: Vec<u32> = snapshot.endpoints.iter().map(|e| e.weight.max(1)).collect();
        let mode = if TABLE.get() { Mode::Table(Table::Weighted(weights.clone())) } else { Mode::PerRequest };
        *self.weights.borrow_mut() = weights;
        Ok(mode)
    }

    fn pick(&self, _request: Request) -> Option<u32> {
        let weights = self.weights.borrow();
        // A retry avoids the endpoints this request already tried (unless it tried them all).
        let tried = if load::request_attempt() > 0 { load::request_tried() } else { Vec::new() };
        let all = 0..weights.len() as u32;
        let candidates: Vec<u32> = all.clone().filter(|i| !tried.contains(i)).collect();
        let candidates = if candidates.is_empty() { all.collect() } else { candidates };
        // Fewest in flight per unit of weight: (in_flight + 1) / weight, in integers.
        candidates.into_iter().min_by_key(|&i| {
            let load = u64::from(load::in_flight(i)) + 1;
            (load * 1_000_000) / u64::from(weights[i as usize])
        })
    }
}

export!(Plugin);
