//! `sextant serve`: open the store, start the registry, serve admin HTTP until shutdown.
//!
//! Safe by default: without an access file, `serve` refuses to bind the admin API or QUIC to
//! an address other than loopback unless told `allow_open` ([`ServeError::OpenDoor`] says why
//! and how). The access file is re-read when it changes (polled) and on SIGHUP; a file that
//! does not parse leaves the previous one in force.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sextant_core::store::StoreError;
use sextant_proto::acl::Acl;
use sextant_quic::access::{Access, Limits, ReloadError, read_acl};
use sextant_quic::server::{QuicServer, ServerOptions};
use sextant_quic::tls::{self, TlsError, TlsFiles};
use sextant_store::{
    AnyStore, EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, OpenError, Registry, RegistryError,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

use sextant_control::{Executor, PluginManager};
use sextant_plugin::{Defaults, HostConfig, PluginHost, PluginSpec};

use crate::admin::{self, AppState, Peer};
use crate::https::TlsListener;
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
    /// Serve the admin API over TLS (the QUIC certificate, key and client CA).
    pub admin_tls: bool,
    /// A second address serving only `/metrics` and `/healthz` (never the API).
    pub metrics: Option<SocketAddr>,
    /// Serve without an access file on addresses other than loopback.
    pub allow_open: bool,
    /// How often the access file is checked for changes.
    pub acl_poll: Duration,
    /// Abuse limits of both doors.
    pub limits: Limits,
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
    /// The built-in balancer of services without a bound plugin (default
    /// [`sextant_plugin::DEFAULT_BALANCER`], as on every gateway).
    pub default_balancer: String,
    /// How many hosts' automatic rollbacks of a plugin version, within what window, mark it
    /// bad for the fleet (`--rollback-hosts`, `--rollback-window-secs`).
    pub fleet_rule: sextant_control::FleetRule,
    /// The plugin host's limits and contract (`--plugin-instances`, `--max-plugins`,
    /// `--plugin-contract`, `--plugin-idle-secs`).
    pub plugin_host: HostConfig,
}

impl ServeConfig {
    /// Defaults for everything but the data directory (ports 7600/7601 on loopback).
    #[must_use]
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            store: StoreConfig::Embedded,
            admin: SocketAddr::from(([127, 0, 0, 1], 7601)),
            admin_tls: false,
            metrics: None,
            allow_open: false,
            acl_poll: Duration::from_secs(1),
            limits: Limits::default(),
            history_capacity: 16 * 1024,
            listen: SocketAddr::from(([127, 0, 0, 1], 7600)),
            grace: Duration::from_secs(10),
            acl: None,
            client_ca: None,
            cert: None,
            plugins_dir: None,
            plugins_poll: Duration::from_secs(1),
            default_balancer: sextant_plugin::DEFAULT_BALANCER.into(),
            fleet_rule: sextant_control::FleetRule::default(),
            plugin_host: HostConfig::default(),
        }
    }
}

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The fleet rule is out of bounds.
    #[error("--rollback-hosts/--rollback-window-secs: {0}")]
    FleetRule(String),
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
    #[error(transparent)]
    Access(#[from] ReloadError),
    /// A door would be open to the network: no access file, an address other than loopback.
    #[error(
        "refusing to serve {door} on {addr} without an access file: anyone who reaches it could register, \
         deregister, read configs and load plugins. Give --acl FILE (see docs/security.md), bind a loopback \
         address, or pass --allow-open to serve it open anyway"
    )]
    OpenDoor {
        /// `the admin API` or `QUIC discovery`.
        door: &'static str,
        /// The address.
        addr: SocketAddr,
    },
    /// The plugin host could not start.
    #[error(transparent)]
    PluginHost(#[from] sextant_plugin::HostError),
    /// The default balancer (or another default) does not start.
    #[error("default plugin: {0}")]
    Defaults(#[from] sextant_plugin::LoadError),
}

/// Refuses an open door on the network (see the module docs).
fn check_open_doors(config: &ServeConfig) -> Result<(), ServeError> {
    if config.acl.is_some() || config.allow_open {
        return Ok(());
    }
    for (door, addr) in [("the admin API", config.admin), ("QUIC discovery", config.listen)] {
        if !addr.ip().is_loopback() {
            return Err(ServeError::OpenDoor { door, addr });
        }
    }
    Ok(())
}

/// Re-reads the access file when it changes (size or modification time, every `poll`) and on
/// SIGHUP, until `stop` resolves.
async fn watch_acl(path: PathBuf, poll: Duration, access: Arc<Access>, stop: impl Future<Output = ()>) {
    let stamp = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
    let mut seen = stamp(&path);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP; the access file is reloaded on change only"))
        .ok();
    let sighup = async |hup: &mut Option<tokio::signal::unix::Signal>| match hup {
        Some(h) => h.recv().await,
        None => std::future::pending().await,
    };
    let mut tick = tokio::time::interval(poll);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = sighup(&mut hup) => {
                tracing::info!(file = %path.display(), "SIGHUP: reloading the access file");
            }
            _ = tick.tick() => {
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
            }
        }
        seen = stamp(&path);
        // The error is logged and counted; the table in force stays.
        let _ = access.reload(&path);
    }
}

/// Runs until `shutdown` resolves, then stops accepting, finishes in-flight requests, closes
/// QUIC connections and the store.
pub async fn run(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    check_open_doors(&config)?;
    let acl = match &config.acl {
        None => Acl::open(),
        Some(path) => read_acl(path)?,
    };
    let access = Arc::new(Access::new(acl, config.limits));
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
    let https =
        if config.admin_tls { Some(tls::https_server_config(&files, config.client_ca.as_deref())?) } else { None };
    let registry = Registry::start(store, config.history_capacity).await?;
    let listener =
        TcpListener::bind(config.admin).await.map_err(|source| ServeError::Bind { addr: config.admin, source })?;
    let addr = listener.local_addr().map_err(ServeError::Http)?;
    let metrics_listener = match config.metrics {
        None => None,
        Some(a) => Some(TcpListener::bind(a).await.map_err(|source| ServeError::Bind { addr: a, source })?),
    };
    let server_options = ServerOptions {
        grace: config.grace,
        access: access.clone(),
        server_id: format!("sextant@{}", config.listen),
        ..ServerOptions::default()
    };
    let host = PluginHost::new(config.plugin_host.clone())?;
    let defaults = Defaults { balancer: PluginSpec::builtin(&config.default_balancer), ..Defaults::default() };
    let plugins = PluginManager::start(host, registry.clone(), defaults)?;
    plugins.set_fleet_rule(config.fleet_rule).map_err(ServeError::FleetRule)?;
    plugins.set_identity(format!("server sextant@{}", config.listen));
    let metrics = Arc::new(Metrics::new());
    // One command path for both doors, counting their writes together.
    let executor = Arc::new(Executor::new(registry.clone(), Some(plugins.clone())).with_counter(metrics.clone()));
    let quic = QuicServer::bind(config.listen, quic_config, registry.clone(), server_options)
        .map_err(|source| ServeError::Bind { addr: config.listen, source })?
        .with_executor(executor.clone());
    let quic_addr = quic.local_addr().map_err(ServeError::Http)?;
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    tracing::info!(
        admin = %addr, admin_tls = config.admin_tls, metrics = ?metrics_addr, quic = %quic_addr,
        ca = %files.ca.display(), store = registry.store().kind(), location = %registry.store().location(),
        revision = %registry.revision(), access = if config.acl.is_some() { "tokens" } else { "open" },
        "sextant serving"
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
    if let Some(path) = &config.acl {
        tokio::spawn(watch_acl(path.clone(), config.acl_poll, access.clone(), stopped(stop_rx.clone())));
    }
    let state = AppState::new(executor, metrics, access);
    let metrics_task = metrics_listener.map(|l| {
        let app = admin::metrics_router(state.clone()).into_make_service();
        let stop = stopped(stop_rx.clone());
        tokio::spawn(async move { axum::serve(l, app).with_graceful_shutdown(stop).await })
    });
    let app = admin::router(state).into_make_service_with_connect_info::<Peer>();
    let http = match https {
        None => axum::serve(listener, app).with_graceful_shutdown(stopped(stop_rx)).await,
        Some(tls) => {
            let listener = TlsListener::new(listener, tls).map_err(ServeError::Http)?;
            axum::serve(listener, app).with_graceful_shutdown(stopped(stop_rx)).await
        }
    };
    let _ = quic_task.await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    http.map_err(ServeError::Http)?;
    tracing::info!("shut down cleanly");
    Ok(())
}
