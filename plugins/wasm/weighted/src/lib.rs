//! Smooth weighted round robin (earliest deadline first). The built-in `weighted` balancer, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::SmoothWeighted`).
sextant_plugin_sdk::export_balancer!(sextant_builtins::SmoothWeighted::new);
