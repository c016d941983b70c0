//! Weighted random. The built-in `random` balancer, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::RandomWeighted`).
sextant_plugin_sdk::export_balancer!(sextant_builtins::RandomWeighted::new);
