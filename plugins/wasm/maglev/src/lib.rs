//! Maglev hashing; hands the host a 65537-entry table. The built-in `maglev` balancer, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::Maglev`).
sextant_plugin_sdk::export_balancer!(sextant_builtins::Maglev::new);
