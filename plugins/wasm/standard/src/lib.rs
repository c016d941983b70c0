//! Active and passive health checking together. The built-in `standard` health policy, as a
//! wasm plugin: the same code the host runs natively (`sextant_builtins::Standard`).
sextant_plugin_sdk::export_health!(sextant_builtins::Standard::new);
