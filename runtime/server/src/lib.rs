//! # sextant-server: the composition root
//!
//! Owns `sextant serve`: it opens the store, starts the [`Registry`](sextant_store::Registry)
//! over it, serves the admin HTTP API (health, Prometheus metrics, status, and a JSON API for
//! instances, leases, services and config entries), and shuts down gracefully.
//!
//! Does not own: the model and its rules (`sextant-core`), storage (`sextant-store`).
//! Everything here is wiring; the logic lives in those crates.

#![forbid(unsafe_code)]

pub mod admin;
pub mod metrics;
pub mod serve;

pub use serve::{ServeConfig, ServeError, run};
