//! Prequal: probes of requests in flight and latency, the hot-cold lexicographic rule. The built-in `prequal` balancer, as a wasm plugin: the same code the host runs
//! natively (`sextant_builtins::Prequal`).
sextant_plugin_sdk::export_balancer!(sextant_builtins::Prequal::new);
