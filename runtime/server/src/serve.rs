//! `sextant serve`: open the store, start the registry, serve admin HTTP until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use sextant_store::{EmbeddedOptions, EmbeddedStore, OpenError, Registry, RegistryError};
use tokio::net::TcpListener;

use crate::admin::{self, AppState};
use crate::metrics::Metrics;

/// What `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data directory of the embedded store.
    pub data_dir: PathBuf,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Events kept for resuming watchers.
    pub history_capacity: usize,
}

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The registry could not load the store.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The admin address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The admin server failed.
    #[error("admin HTTP server: {0}")]
    Http(std::io::Error),
}

/// Runs until `shutdown` resolves, then stops accepting, finishes in-flight requests and
/// closes the store.
pub async fn run(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let options = EmbeddedOptions { history_capacity: config.history_capacity, ..EmbeddedOptions::default() };
    let store = EmbeddedStore::open(&config.data_dir, options)?;
    let registry = Registry::start(store, config.history_capacity).await?;
    let listener =
        TcpListener::bind(config.admin).await.map_err(|source| ServeError::Bind { addr: config.admin, source })?;
    let addr = listener.local_addr().map_err(ServeError::Http)?;
    tracing::info!(%addr, data_dir = %config.data_dir.display(), revision = %registry.revision(), "sextant serving; admin HTTP listening");
    let state = AppState::new(registry, Arc::new(Metrics::new()));
    axum::serve(listener, admin::router(state)).with_graceful_shutdown(shutdown).await.map_err(ServeError::Http)?;
    tracing::info!("shut down cleanly");
    Ok(())
}
