//! Exports `sextant:plugin/balancer@0.3.0`: the host must refuse it, naming the version.
#![allow(missing_docs, missing_debug_implementations, unsafe_code)]

wit_bindgen::generate!({ world: "balancer-plugin", path: "wit" });

struct Future;

impl exports::sextant::plugin::balancer::Guest for Future {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
    fn pick(_key: u64) -> Option<u32> {
        Some(0)
    }
}

#[cfg(target_arch = "wasm32")]
export!(Future);
