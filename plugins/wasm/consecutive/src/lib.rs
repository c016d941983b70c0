//! Active health checking by consecutive thresholds. The built-in `consecutive` health, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::Consecutive`).
sextant_plugin_sdk::export_health!(sextant_builtins::Consecutive::new);
