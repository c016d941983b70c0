//! `sextant serve`: open the store, start the registry, serve admin HTTP until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sextant_core::store::StoreError;
use sextant_proto::acl::{Acl, AclError};
use sextant_quic::server::{QuicServer, ServerOptions};
use sextant_quic::tls::{self, TlsError, TlsFiles};
use sextant_store::{
    AnyStore, EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, OpenError, Registry, RegistryError,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

use sextant_plugin::{Defaults, HostConfig, PluginHost, PluginManager, PluginSpec};

use crate::admin::{self, AppState};
use crate::metrics::Metrics;
use crate::plugin_dir;

/// Where `serve` keeps the registry.
#[derive(Debug, Clone, Default)]
pub enum StoreConfig {
    /// The embedded store in the data directory.
    #[default]
    Embedded,
    /// An etcd cluster shared with other hosts.
    Etcd(EtcdOptions),
}

/// What `serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data directory: the embedded store, and the development certificate (both stores).
    pub data_dir: PathBuf,
    /// The store.
    pub store: StoreConfig,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    /// Events kept for resuming watchers.
    pub history_capacity: usize,
    /// QUIC address (UDP).
    pub listen: SocketAddr,
    /// How long connection-bound instances outlive a lost connection.
    pub grace: Duration,
    /// Access file (tokens and rights); none: open server.
    pub acl: Option<PathBuf>,
    /// CA for client certificates; given, clients must present one (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Server certificate and key; none: the development certificate in the data dir.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// Directory watched for plugins (`NAME.wasm` + optional `NAME.json`).
    pub plugins_dir: Option<PathBuf>,
    /// How often it is scanned.
    pub plugins_poll: Duration,
    /// The built-in balancer of services without a bound plugin.
    pub default_balancer: String,
}

impl ServeConfig {
    /// Defaults for everything but the data directory (ports 7600/7601 on loopback).
    #[must_use]
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            store: StoreConfig::Embedded,
            admin: SocketAddr::from(([127, 0, 0, 1], 7601)),
            history_capacity: 16 * 1024,
            listen: SocketAddr::from(([127, 0, 0, 1], 7600)),
            grace: Duration::from_secs(10),
            acl: None,
            client_ca: None,
            cert: None,
            plugins_dir: None,
            plugins_poll: Duration::from_secs(1),
            default_balancer: "ring-hash".into(),
        }
    }
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
    /// The etcd cluster could not be reached at start.
    #[error("cannot start on etcd {endpoints}: {source}")]
    Etcd {
        /// The endpoints.
        endpoints: String,
        /// The cause.
        source: StoreError,
    },
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
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The access file is unreadable or invalid.
    #[error("access file {path}: {source}")]
    Acl {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: AclError,
    },
    /// The plugin host could not start, or the default balancer is not a built-in.
    #[error("plugin host: {0}")]
    Plugins(String),
    /// The access file could not be read.
    #[error("access file {path}: {source}")]
    AclRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Runs until `shutdown` resolves, then stops accepting, finishes in-flight requests, closes
/// QUIC connections and the store.
pub async fn run(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let acl = match &config.acl {
        None => Acl::open(),
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| ServeError::AclRead { path: path.clone(), source })?;
            Acl::from_json(&text).map_err(|source| ServeError::Acl { path: path.clone(), source })?
        }
    };
    let store = match &config.store {
        StoreConfig::Embedded => {
            let options = EmbeddedOptions { history_capacity: config.history_capacity, ..EmbeddedOptions::default() };
            AnyStore::Embedded(EmbeddedStore::open(&config.data_dir, options)?)
        }
        StoreConfig::Etcd(options) => AnyStore::Etcd(
            EtcdStore::connect(options.clone())
                .await
                .map_err(|source| ServeError::Etcd { endpoints: options.endpoints.join(","), source })?,
        ),
    };
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| OpenError::Dir { path: config.data_dir.clone(), source })?;
    let files = match &config.cert {
        Some((cert, key)) => {
            let dev = TlsFiles::in_data_dir(&config.data_dir);
            TlsFiles { cert: cert.clone(), key: key.clone(), ..dev }
        }
        None => tls::ensure_dev_certs(&config.data_dir)?,
    };
    let quic_config = tls::server_config(&files, config.client_ca.as_deref(), 256)?;
    let registry = Registry::start(store, config.history_capacity).await?;
    let listener =
        TcpListener::bind(config.admin).await.map_err(|source| ServeError::Bind { addr: config.admin, source })?;
    let addr = listener.local_addr().map_err(ServeError::Http)?;
    let server_options = ServerOptions {
        grace: config.grace,
        acl: Arc::new(acl),
        server_id: format!("sextant@{}", config.listen),
        ..ServerOptions::default()
    };
    let host = PluginHost::new(HostConfig::default()).map_err(|e| ServeError::Plugins(e.to_string()))?;
    let defaults = Defaults { balancer: PluginSpec::builtin(&config.default_balancer), ..Defaults::default() };
    let plugins =
        PluginManager::start(host, registry.clone(), defaults).map_err(|e| ServeError::Plugins(e.to_string()))?;
    let quic = QuicServer::bind(config.listen, quic_config, registry.clone(), server_options)
        .map_err(|source| ServeError::Bind { addr: config.listen, source })?
        .with_plugins(plugins.clone());
    let quic_addr = quic.local_addr().map_err(ServeError::Http)?;
    tracing::info!(
        admin = %addr, quic = %quic_addr, ca = %files.ca.display(), store = registry.store().kind(),
        location = %registry.store().location(), revision = %registry.revision(), "sextant serving"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let quic_task = tokio::spawn(quic.run(stopped(stop_rx.clone())));
    if let Some(dir) = &config.plugins_dir {
        tracing::info!(dir = %dir.display(), "watching for plugins");
        tokio::spawn(plugin_dir::watch(dir.clone(), config.plugins_poll, plugins.clone(), stopped(stop_rx.clone())));
    }
    let state = AppState::new(registry, plugins, Arc::new(Metrics::new()));
    let http = axum::serve(listener, admin::router(state)).with_graceful_shutdown(stopped(stop_rx)).await;
    let _ = quic_task.await;
    http.map_err(ServeError::Http)?;
    tracing::info!("shut down cleanly");
    Ok(())
}
