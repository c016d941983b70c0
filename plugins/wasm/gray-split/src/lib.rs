//! Gray release: traffic split between version labels (e.g. 90/10). The built-in `gray-split` scheduler, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::GraySplit`).
sextant_plugin_sdk::export_scheduler!(sextant_builtins::GraySplit::new);
