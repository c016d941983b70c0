//! # sextant-quic: discovery over QUIC
//!
//! Owns the IO half of the protocol that `sextant-proto` specifies without IO:
//! - `server::QuicServer`: a quinn endpoint serving a registry
//!   (one task per connection, one per request stream), with connection-bound leases;
//! - [`client::Client`]: the client library used by the CLI and gateways: several servers with
//!   failover, re-registration and re-subscription from the last revision after a reconnect,
//!   lease keepalives, an on-disk cache served (marked stale) when no server answers;
//! - [`tls`]: rustls configurations and the development certificates;
//! - `access`: what every door shares: the token table in force (reloadable), abuse limits,
//!   the audit log.
//!
//! Does not own: message formats, access rules or session logic (`sextant-proto`), the
//! registry (`sextant-store`), what a request does (`sextant-control`'s executor).
//!
//! The server half (`server`, `access`) is the default feature `server`; without it
//! (`default-features = false`) the crate is the client library alone, which builds without
//! wasmtime, redb or etcd-client.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "server")]
pub mod access;
pub mod client;
#[cfg(feature = "server")]
mod feed;
#[cfg(feature = "server")]
mod held;
#[cfg(feature = "server")]
pub mod server;
pub mod tls;
pub mod wire;
