//! Passive outlier detection: consecutive 5xx, gateway errors, success rate. The built-in `outlier` health, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::OutlierDetection`).
sextant_plugin_sdk::export_health!(sextant_builtins::OutlierDetection::new);
