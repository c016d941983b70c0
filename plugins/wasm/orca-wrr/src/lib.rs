//! gRPC's weighted round robin on backends' ORCA load reports. The built-in `orca-wrr` balancer, as a wasm plugin: the same code the host runs
//! natively (`sextant_builtins::OrcaWrr`).
sextant_plugin_sdk::export_balancer!(sextant_builtins::OrcaWrr::new);
