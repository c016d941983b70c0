//! The one module that runs `bindgen!`: host-side bindings of the worlds in `wit/` (the
//! current contract, `sextant:plugin@0.2.3`: one resource per service inside a shared
//! instance) and in `wit/legacy/0.1.0/` (the legacy shape: one instance per service). In each
//! version the `host`, `load` and `types` interfaces are generated once (with the balancer
//! world) and shared by the health and scheduler worlds; version 0.2.3 reuses 0.1.0's
//! `types` (the records are the same), so a snapshot is converted to WIT records once for
//! both.

#![allow(unsafe_code, missing_docs, missing_debug_implementations, unreachable_pub, clippy::all)]

/// `sextant:plugin@0.1.0`, the legacy contract.
pub(crate) mod v1 {
    pub(crate) mod balancer {
        wasmtime::component::bindgen!({
            world: "balancer-plugin",
            path: "../../wit/legacy/0.1.0",
        });
    }

    pub(crate) mod health {
        wasmtime::component::bindgen!({
            world: "health-plugin",
            path: "../../wit/legacy/0.1.0",
            with: {
                "sextant:plugin/host": crate::bindings::v1::balancer::sextant::plugin::host,
                "sextant:plugin/types": crate::bindings::v1::balancer::sextant::plugin::types,
            },
        });
    }

    pub(crate) mod scheduler {
        wasmtime::component::bindgen!({
            world: "scheduler-plugin",
            path: "../../wit/legacy/0.1.0",
            with: {
                "sextant:plugin/host": crate::bindings::v1::balancer::sextant::plugin::host,
                "sextant:plugin/types": crate::bindings::v1::balancer::sextant::plugin::types,
            },
        });
    }
}

/// `sextant:plugin@0.2.3`, the current contract; it serves 0.2.0, 0.2.1 and 0.2.2 components
/// too (the component model matches their names to 0.2.3 definitions).
pub(crate) mod v2 {
    pub(crate) mod balancer {
        wasmtime::component::bindgen!({
            world: "balancer-plugin",
            path: "../../wit",
            with: {
                "sextant:plugin/types": crate::bindings::v1::balancer::sextant::plugin::types,
            },
        });
    }

    pub(crate) mod health {
        wasmtime::component::bindgen!({
            world: "health-plugin",
            path: "../../wit",
            with: {
                "sextant:plugin/host": crate::bindings::v2::balancer::sextant::plugin::host,
                "sextant:plugin/types": crate::bindings::v1::balancer::sextant::plugin::types,
            },
        });
    }

    pub(crate) mod scheduler {
        wasmtime::component::bindgen!({
            world: "scheduler-plugin",
            path: "../../wit",
            with: {
                "sextant:plugin/host": crate::bindings::v2::balancer::sextant::plugin::host,
                "sextant:plugin/types": crate::bindings::v1::balancer::sextant::plugin::types,
            },
        });
    }
}
