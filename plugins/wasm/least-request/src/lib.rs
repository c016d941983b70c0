//! Least request by the power of two choices. The built-in `least-request` balancer, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::LeastRequest`).
sextant_plugin_sdk::export_balancer!(sextant_builtins::LeastRequest::new);
