//! P2C + PeakEWMA: latency EWMA x (in-flight + 1). The built-in `peak-ewma` balancer, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::PeakEwma`).
sextant_plugin_sdk::export_balancer!(sextant_builtins::PeakEwma::new);
