//! Round robin in snapshot order. The built-in `round-robin` balancer, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::RoundRobin`).
sextant_plugin_sdk::export_balancer!(sextant_builtins::RoundRobin::new);
