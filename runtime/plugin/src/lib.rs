//! The plugin host: runs balancers, health policies and schedulers, native built-ins or
//! WebAssembly components (`wit/`, wasmtime's component model), and swaps them while
//! traffic flows.
//!
//! This crate owns:
//! - [`Runtime`] (`runtime.rs`): the wasmtime engine (pooling allocator, epoch interruption, a
//!   memory cap per instance), the linker, the budgets ([`HostConfig`]) and the stores every
//!   instance runs in, and the engine's store of compiled functions (`function_cache.rs`, so a
//!   component repeating functions already compiled, such as a Python plugin's interpreter,
//!   compiles only what differs: [`FunctionCacheStats`]); [`PluginHost`] (`host.rs`) adds the
//!   compile cache keyed by sha256 and validation of what a component exports and imports
//!   (kind, contract version: [`Contract`], `kind.rs`) with a typed [`LoadError`] for each way
//!   a file can be wrong;
//! - the two contract shapes: `sextant:plugin@0.2.x` (`wit/`, 0.2.3: 0.2.1 added what a
//!   request tried, 0.2.2 the host's zone, `host.local-zone`, [`Runtime::set_zone`], 0.2.3
//!   backends' load reports and probes, `load.report`, `load.probe`, kept per endpoint by the
//!   [`LoadTracker`]; 0.2.0, 0.2.1 and 0.2.2 components are served by the 0.2.3 bindings),
//!   where one instance per
//!   worker thread serves every service a plugin is bound to, each service a resource
//!   created when first needed and dropped after idling (`shared.rs`, [`SharedStatus`]: so
//!   instances follow threads × plugins, not services), and the legacy
//!   `sextant:plugin@0.1.0` (`wit/legacy/0.1.0/`), one instance per service and worker;
//! - [`BalancerSlot`]: one per service, the active balancer version behind an `ArcSwap`,
//!   one worker per thread so picks scale with threads, self-test before publish,
//!   per-pick fallback to the native default, automatic rollback after repeated faults;
//!   nothing that may run to a deadline on the picking thread: a resource or instance a pick
//!   lacks is prepared on the host's off-path thread ([`BalancerSlot::prepare_now`] does it
//!   on the caller's), with a backoff after a failure, while the native default answers;
//!   and, while a progressive rollout tries one, a candidate version beside the active one
//!   (`canary.rs`: [`Split`], a canary share sticky per affinity key, or shadow picks
//!   counted in a [`ShadowTally`] and routing nothing);
//! - [`HealthSlot`] and [`SchedulerSlot`]: the same for health policies and schedulers (the
//!   lifecycle every slot has, its history, events, fault window and rollback report, is
//!   written once in `lifecycle`);
//! - [`LoadTracker`]: live load per endpoint (in-flight, peak EWMA, recent errors) that the
//!   `load` interface reads;
//! - [`Slots`], [`SlotPlan`] and [`Defaults`]: what every host (server or gateway) keeps
//!   per service and the one set of built-ins it starts on; [`bound_record`]: which plugin a
//!   slot runs, the one rule every host applies.
//!
//! It knows nothing of the store or the protocol: the plugin records that drive a running
//! server are `sextant-control`'s, and a gateway follows them through `sextant-gateway`.
//!
//! Plugins get a deterministic WASI subset (`wasi.rs`): an empty environment, the instance's
//! seeded generator, the host's clocks, stdout and stderr to the log (and into the reason of
//! a trap); a component importing files, sockets or HTTP is refused at load
//! ([`LoadError::DeniedImport`]).
//!
//! What a plugin can make the host keep is bounded: `host.log` lines and bytes per plugin and
//! second (`log.rs`, the excess dropped and counted: [`LogDrops`]), and a balancer's table in
//! entries, entries per endpoint and bytes (`HostConfig::max_table_entries`, refused at load or
//! at the update that returned it).
//!
//! Deadlines are CPU-time budgets checked at epoch ticks (see `HostConfig::pick_deadline`):
//! a plugin that spins is interrupted; a thread the OS merely descheduled is not.
#![deny(missing_docs)]
mod balancer;
mod binding;
mod bindings;
mod canary;
mod compiled;
mod error;
mod function_cache;
mod health;
mod host;
mod kind;
mod lifecycle;
mod log;
mod policy;
mod published;
mod runtime;
mod scheduler;
mod shared;
mod slots;
mod spec;
mod state;
mod stats;
mod tracker;
mod version;
mod wasi;
mod window;

pub use balancer::BalancerSlot;
pub use binding::{Desired, Trial, TrialChange, bound_record, desired, trial};
pub use canary::{CandidateStatus, SHADOW_MAX_ENDPOINTS, SHADOW_SAMPLE_EVERY, ShadowTally, Split};
pub use compiled::Compiled;
pub use error::{CallFault, HostError, LoadError, SlotError};
pub use function_cache::FunctionCacheStats;
pub use health::{HealthSlot, OUTCOME_QUEUE};
pub use host::{PluginHost, WeakHost};
pub use kind::{CONTRACT_VERSION, Contract, LEGACY_CONTRACT_VERSION, PluginKind};
pub use lifecycle::{AutoRollback, Observer, SlotEvent, SlotStatus, VersionStatus};
pub use log::LogDrops;
pub use published::{Published, endpoint_of, snapshot_of};
pub use runtime::{HostConfig, Runtime};
pub use scheduler::SchedulerSlot;
pub use sextant_builtins as builtins;
pub use shared::SharedStatus;
pub use slots::{DEFAULT_BALANCER, DEFAULT_HEALTH, DEFAULT_SCHEDULER, Defaults, Slot, SlotPlan, Slots};
pub use spec::{PickRequest, Picked, PluginSpec, affinity_hash};
pub use state::HostState;
pub use stats::{CALL_TIME_BOUNDS_NS, CallTimes, Counters, Histogram, VersionCounts, VersionKey};
pub use tracker::{EndpointLoad, InFlight, LoadTracker, MAX_PENDING_PROBES};
pub use version::Version;
#[allow(deprecated)]
pub use window::{Ended, OutcomeClass, StatsWindow};
