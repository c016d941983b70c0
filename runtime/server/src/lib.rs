//! # sextant-server: the composition root
//!
//! Owns `sextant serve`: it opens the store, starts the [`Registry`](sextant_store::Registry)
//! over it, serves the admin HTTP API (health, Prometheus metrics, status, and a JSON API for
//! instances, leases, services and config entries) and the web console over it (`/ui`), starts the plugin manager (picks and
//! plugin administration over QUIC, the `--plugins` directory), applies one access model to
//! both doors (tokens, rights, limits and audit from `sextant_quic::access`; TLS for the admin
//! API; a separate metrics address), and shuts down gracefully.
//! Also `sextant demo` ([`demo`]): sample backends, the gateway and traffic, with a live view;
//! and live mode of `sextant bench strategies` ([`live`]): the simulated scenarios against
//! real loopback backends through the gateway, reported beside the simulation.
//!
//! Does not own: the model and its rules (`sextant-core`), storage (`sextant-store`), the
//! protocol (`sextant-proto`, `sextant-quic`), plugins (`sextant-plugin`).
//! Everything here is wiring; the logic lives in those crates.

#![forbid(unsafe_code)]

pub mod admin;
mod console;
pub mod demo;
mod https;
pub mod live;
pub mod metrics;
mod plugin_dir;
pub mod serve;
pub mod template;

pub use serve::{ServeConfig, ServeError, StoreConfig, run};
