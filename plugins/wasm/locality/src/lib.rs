//! Locality-aware routing with zone failover: traffic stays in the host's zone while its healthy capacity suffices, spills in priority order as it degrades, returns gradually. The built-in `locality` scheduler, as a wasm plugin: the
//! same code the host runs natively (`sextant_builtins::Locality`).
sextant_plugin_sdk::export_scheduler!(sextant_builtins::Locality::new);
