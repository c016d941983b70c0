//! The one module that runs `bindgen!`: host-side bindings of the three worlds in `wit/`.
//! The `host`, `load` and `types` interfaces are generated once (with the balancer world)
//! and shared by the health and scheduler worlds.

#![allow(unsafe_code, missing_docs, missing_debug_implementations, unreachable_pub, clippy::all)]

pub(crate) mod balancer {
    wasmtime::component::bindgen!({
        world: "balancer-plugin",
        path: "../../wit",
    });
}

pub(crate) mod health {
    wasmtime::component::bindgen!({
        world: "health-plugin",
        path: "../../wit",
        with: {
            "sextant:plugin/host": crate::bindings::balancer::sextant::plugin::host,
            "sextant:plugin/types": crate::bindings::balancer::sextant::plugin::types,
        },
    });
}

pub(crate) mod scheduler {
    wasmtime::component::bindgen!({
        world: "scheduler-plugin",
        path: "../../wit",
        with: {
            "sextant:plugin/host": crate::bindings::balancer::sextant::plugin::host,
            "sextant:plugin/types": crate::bindings::balancer::sextant::plugin::types,
        },
    });
}
