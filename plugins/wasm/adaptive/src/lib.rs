//! Adaptive weights: failures and overload (429, Retry-After) lower weight, clean intervals restore it. The built-in `adaptive` scheduler, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::Adaptive`).
sextant_plugin_sdk::export_scheduler!(sextant_builtins::Adaptive::new);
