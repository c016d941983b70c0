//! Slow start: new endpoints ramp up over a window. The built-in `slow-start` scheduler, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::SlowStart`).
sextant_plugin_sdk::export_scheduler!(sextant_builtins::SlowStart::new);
