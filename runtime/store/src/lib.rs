//! # sextant-store: storage backends and the registry that sits on them
//!
//! Owns:
//! - [`EmbeddedStore`]: the default backend, durable in a data directory through
//!   [redb](https://docs.rs/redb) (an embedded, crash-safe B-tree database; every
//!   acknowledged durable write is an fsynced commit). It drives the core's sans-IO
//!   [`Engine`](sextant_core::engine::Engine) with a clock and a lease reaper. A write the
//!   disk refuses is `Unavailable` and changes nothing; the store opens its file again and
//!   takes writes once the cause is gone ([`DiskFaults`] makes a disk full on purpose).
//! - [`EtcdStore`]: the shared backend, several hosts on one etcd cluster (etcd-client; the
//!   key layout is in docs/storage.md); [`AnyStore`] is whichever of the two `serve` runs.
//! - [`local_etcd`]: starts real etcd members on loopback (tests, benchmarks, trying it out).
//! - [`Registry`]: mirrors any [`Store`](sextant_core::store::Store) into lock-free
//!   per-service snapshots and fans its changes out to subscribers, who resume from a revision.
//!
//! Does not own: the model and its rules (`sextant-core`), the network protocol, plugins.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod any;
mod disk;
mod embedded;
mod etcd;
pub mod local_etcd;
mod registry;

pub use any::AnyStore;
pub use disk::DiskFaults;
pub use embedded::{CommitStats, DB_FILE, EmbeddedOptions, EmbeddedStore, OpenError};
pub use etcd::{CHUNK, EVENT_BITS, EtcdOptions, EtcdStore};
pub use registry::{Feed, Received, Registry, RegistryError, Subscription, Synced};
