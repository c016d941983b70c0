//! Exports `sextant:plugin/balancer` in versions 0.1.0 and 0.2.0 at once: the host must
//! refuse it, naming both, before anything runs.
#![allow(missing_docs, missing_debug_implementations, unsafe_code)]

wit_bindgen::generate!({ world: "both-versions", path: "wit" });

struct Both;

impl exports::sextant::plugin0_1_0::balancer::Guest for Both {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
}

impl exports::sextant::plugin0_2_0::balancer::Guest for Both {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(target_arch = "wasm32")]
export!(Both);
