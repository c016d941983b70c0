//! # sextant-core: the registry core
//!
//! Owns the data model (namespace → group → service → instance, config entries and their
//! gray release ([`gray`]: a candidate version for the readers a rule matches), plugin
//! records and their progressive rollouts: [`rollout`], the plan, the gateways' reports and
//! the judge), its validation, store-wide revisions, the change stream (`Upsert` / `Remove` /
//! `Reset`), TTL leases, the bounded history window that lets a watcher resume from a
//! revision, the per-service snapshots that the hot path reads lock-free, and the
//! [`Store`](store::Store) trait every backend implements.
//!
//! It does **no IO**: time ([`Millis`]), lease ids and randomness are parameters, results are
//! return values (the quinn-proto way). Sockets, disks, etcd and timers live in
//! `sextant-store` and `sextant-server`.
//!
//! Two state machines live here:
//! - [`engine::Engine`] is a revisioned key space with leases: the logic of the embedded
//!   store (etcd plays this role for the etcd backend).
//! - [`view::RegistryView`] mirrors any store's change stream into per-service
//!   [`ServiceSnapshot`]s (with the protection threshold applied) and a history window that
//!   subscribers resume from.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod counts;
pub mod engine;
pub mod error;
pub mod history;
pub mod lease;
pub mod metadata;
pub mod model;
pub mod name;
pub mod revision;
pub mod scope;
pub mod snapshot;
pub mod store;
pub mod time;
pub mod validation;
pub mod view;

pub use counts::PluginCounts;
pub use error::CoreError;
pub use metadata::Metadata;
pub use model::gray::{ConfigCandidate, GrayRule, Reader};
pub use model::{
    BadVersion, CONFIG_HISTORY, ConfigEntry, ConfigVersion, HostFault, Instance, MAX_FAULT_FIELD, MAX_PENDING_FAULTS,
    MAX_PLUGIN_CONFIG, PLUGIN_HISTORY, PLUGIN_KINDS, PluginBinding, PluginRecord, PluginVersion, Record, RecordKey,
    ServiceSpec, check_sha256, sha256_hex, version_label,
};
pub use model::{gray, rollout};
pub use name::{
    ConfigKey, DataId, Group, InstanceId, InstanceKey, LeaseId, Namespace, PluginName, ServiceKey, ServiceName,
};
pub use revision::{Change, Event, Revision, StoreSnapshot};
pub use scope::Scope;
pub use snapshot::{InstanceSet, Instances, ServiceSnapshot, SnapshotHandle};
pub use time::Millis;
pub use validation::ValidationError;

/// The `tracing` target of the spans exported as OpenTelemetry traces (`--otlp-endpoint`):
/// a request through a gateway and its attempts, writes to the registry, watch resumes,
/// plugin activations and rollout decisions. Logs never show them; without an exporter
/// they are disabled and cost a check of a cached flag.
pub const TRACE_TARGET: &str = "sextant::trace";
