//! The plugin host: runs balancers, health policies and schedulers, native built-ins or
//! WebAssembly components (`wit/`, wasmtime's component model), and swaps them while
//! traffic flows.
//!
//! This crate owns:
//! - [`PluginHost`]: the wasmtime engine (pooling allocator, epoch interruption, a memory cap
//!   per instance), the compile cache keyed by sha256, and validation of what a component
//!   exports and imports (kind, contract version) with a typed [`LoadError`] for each way a
//!   file can be wrong;
//! - [`BalancerSlot`]: one per service, the active balancer version behind an `ArcSwap`,
//!   several instances per version so picks scale with threads, self-test before publish,
//!   per-pick fallback to the native default, automatic rollback after repeated faults;
//! - [`PolicySlot`]: the same for health policies and schedulers;
//! - [`LoadTracker`]: live load per endpoint (in-flight, peak EWMA, recent errors) that the
//!   `load` interface reads;
//! - [`PluginManager`]: plugins in a running server, driven by the plugin records in the store
//!   (validate before writing, activate by binding on every server, rollback from history).
//!
//! Deadlines are CPU-time budgets checked at epoch ticks (see `HostConfig::pick_deadline`):
//! a plugin that spins is interrupted; a thread the OS merely descheduled is not.
mod balancer;
mod bindings;
mod error;
mod host;
mod load;
mod manager;
mod policy;
mod stats;

pub use balancer::{
    AutoRollback, BalancerSlot, Observer, PickRequest, Picked, PluginSpec, SlotEvent, SlotStatus, Version,
    VersionStatus,
};
pub use error::{CallFault, LoadError, SlotError};
pub use host::{CONTRACT_VERSION, Compiled, HostConfig, HostState, PluginHost, PluginKind};
pub use load::{EndpointLoad, InFlight, LoadTracker, RouteSnapshot, endpoint_of, snapshot_of};
pub use manager::{
    Defaults, LIVE_VALIDATION_SAMPLE, ManagerError, PickedInstance, PluginManager, ServiceSlots, bound_record,
};
pub use policy::PolicySlot;
pub use sextant_builtins as builtins;
pub use stats::{Counters, CountersSnapshot, Histogram, Totals, VersionKey};
