//! Routes by a request header to endpoints with a matching version, zone or metadata value. The built-in `header-route` balancer, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::HeaderRoute`).
sextant_plugin_sdk::export_balancer!(sextant_builtins::HeaderRoute::new);
