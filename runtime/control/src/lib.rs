//! The control plane of a sextant server, the same whichever door a request came through.
//!
//! This crate owns:
//! - [`Executor`]: the one command path. The QUIC server and the admin HTTP API both hand it
//!   a protocol [`Request`](sextant_proto::Request) (after authentication and the right
//!   check, which stay with each door) and send back the [`Response`](sextant_proto::Response)
//!   it gives: the same validation, the same answers, the same error codes
//!   ([`error_code`] is the one store-error → code mapping; the HTTP API maps codes to
//!   statuses), the same write counters. What depends on the door (a connection's lease and
//!   its registration limit) comes in through [`Origin`].
//! - [`PluginManager`]: plugins in a running server, driven by the plugin records in the
//!   store (validate before writing, activate by binding on every server, rollback from
//!   history). The slots and the wasm host it drives are `sextant-plugin`'s. Progressive
//!   rollouts (`rollout.rs`): a load with a plan starts one in the record, operators steer
//!   it, and every server's judge decides its steps from the gateways' reports, once per step.
//!
//! It does no IO of its own beyond the registry's: no sockets, no HTTP, no QUIC.
#![deny(missing_docs)]
mod activate;
mod error;
mod execute;
mod fault;
mod manager;
mod record;
mod rollout;
mod slots;
mod state;
mod upload;
mod verdict;

pub use error::ManagerError;
pub use execute::{Detached, Executor, Origin, WriteCounter, error_code};
pub use fault::{Fault, FaultTaken, FleetRule};
pub use manager::{JUDGE_EVERY, LIVE_VALIDATION_SAMPLE, Loaded, PickedInstance, PluginManager};
pub use rollout::Judged;
pub use slots::ServiceSlots;
