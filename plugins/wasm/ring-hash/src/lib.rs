//! Consistent hashing on a weighted ring with bounded load. The built-in `ring-hash` balancer, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::RingHash`).
sextant_plugin_sdk::export_balancer!(sextant_builtins::RingHash::new);
