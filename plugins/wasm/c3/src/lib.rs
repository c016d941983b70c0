//! C3: cubic replica ranking on server feedback, with rate control. The built-in `c3` balancer, as a wasm plugin: the same code the host runs
//! natively (`sextant_builtins::C3`).
sextant_plugin_sdk::export_balancer!(sextant_builtins::C3::new);
