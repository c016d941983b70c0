//! A balancer built against the legacy contract `sextant:plugin@0.1.0` (`wit/legacy/0.1.0/`),
//! as components built before 0.2.0 are: the host keeps serving it, one instance per service
//! and worker. It picks the endpoint with the fewest requests in flight, the first of equals
//! after the previous pick (so a quiet service is balanced round robin).
#![allow(missing_docs, missing_debug_implementations, unsafe_code)]

use std::cell::Cell;

wit_bindgen::generate!({ world: "balancer-plugin", path: "../../../wit/legacy/0.1.0" });

use exports::sextant::plugin::balancer::{Guest, Mode, Request};
use sextant::plugin::load::in_flight;
use sextant::plugin::types::Snapshot;

thread_local! {
    static LEN: Cell<u32> = const { Cell::new(0) };
    static NEXT: Cell<u32> = const { Cell::new(0) };
    static EMPTY: Cell<bool> = const { Cell::new(false) };
}

struct Legacy;

impl Guest for Legacy {
    fn init(config: String) -> Result<(), String> {
        if !config.trim().starts_with('{') {
            return Err(format!("legacy: the configuration is not a JSON object: {config}"));
        }
        EMPTY.set(config.replace(' ', "").contains("\"empty\":true"));
        Ok(())
    }

    fn update(snapshot: Snapshot) -> Result<Mode, String> {
        LEN.set(u32::try_from(snapshot.endpoints.len()).unwrap_or(u32::MAX));
        Ok(Mode::PerRequest)
    }

    fn pick(_request: Request) -> Option<u32> {
        let len = LEN.get();
        if len == 0 {
            return None;
        }
        if EMPTY.get() {
            return Some(0);
        }
        let start = NEXT.get() % len;
        let best = (0..len).map(|k| (start + k) % len).min_by_key(|&i| in_flight(i))?;
        NEXT.set(best + 1);
        Some(best)
    }
}

#[cfg(target_arch = "wasm32")]
export!(Legacy);
