//! # sextant-store: storage backends and the registry that sits on them
//!
//! Owns:
//! - [`EmbeddedStore`]: the default backend, durable in a data directory through
//!   [redb](https://docs.rs/redb) (an embedded, crash-safe B-tree database; every
//!   acknowledged durable write is an fsynced commit). It drives the core's sans-IO
//!   [`Engine`](sextant_core::engine::Engine) with a clock and a lease reaper.
//! - [`Registry`]: mirrors any [`Store`](sextant_core::store::Store) into lock-free
//!   per-service snapshots and fans its changes out to subscribers, who resume from a revision.
//!
//! Does not own: the model and its rules (`sextant-core`), the network protocol, plugins.
//! The etcd backend will live here too, beside the embedded one.

#![forbid(unsafe_code)]

mod embedded;
mod registry;

pub use embedded::{DB_FILE, EmbeddedOptions, EmbeddedStore, OpenError};
pub use registry::{Registry, RegistryError, Subscription};
