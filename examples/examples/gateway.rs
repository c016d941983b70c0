//! An HTTP gateway embedding sextant: it follows a running `sextant serve` over QUIC (with
//! failover between servers and an on-disk cache), routes by Host and path prefix, picks
//! through wasm (or native) balancers, health-checks the backends, retries within a budget,
//! registers itself, and on SIGTERM deregisters, stops accepting and drains.
//!
//! Run `bash scripts/run` in one terminal, then:
//!
//! ```sh
//! cargo run --release -p sextant-examples --example gateway -- \
//!     --server 127.0.0.1:7600 --ca sextant-data/tls/ca.pem --listen 127.0.0.1:8080 \
//!     --route /=default/default/orders \
//!     --wasm target/wasm-plugins/wasm32-wasip2/release/sextant_wasm_peak_ewma.wasm
//! ```
//!
//! `--route` is `[HOST]/PREFIX=NS/GROUP/NAME`, repeatable. `--config FILE` takes everything
//! else too (routes, balancer, health policy and checks, scheduler, circuit breaker, retry
//! budget, rate limit; the document is in `sextant_gateway::config`), checked before start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use sextant_core::{Instance, Namespace, Scope, ServiceKey};
use sextant_gateway::config::GatewayFile;
use sextant_gateway::proxy::{Gateway, Rule, Upstream};
use sextant_gateway::{HealthCheck, RemoteDiscovery, Router};
use sextant_plugin::{HostConfig, PluginHost, PluginSpec};
use sextant_proto::message::Binding;
use sextant_quic::client::{Client, ClientOptions};

#[derive(Debug, Parser)]
struct Args {
    /// sextant servers (QUIC), repeatable: the client fails over between them.
    #[arg(long = "server", required = true)]
    servers: Vec<SocketAddr>,
    /// CA certificate that signed the servers' certificates.
    #[arg(long)]
    ca: PathBuf,
    /// Namespace to follow.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Where the gateway listens (HTTP).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Configuration file (JSON, see `sextant_gateway::config`): routes, balancer, health
    /// policy and checks, scheduler, breaker, retries, rate limit. Flags add to it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `[HOST]/PREFIX=NS/GROUP/NAME`, repeatable (after the file's routes).
    #[arg(long = "route")]
    routes: Vec<String>,
    /// A balancer component to run for every service (default: native peak-ewma).
    #[arg(long)]
    wasm: Option<PathBuf>,
    /// Health check path (HTTP); none: TCP connect.
    #[arg(long)]
    health_path: Option<String>,
    /// Cache of the discovery view, served when no server answers.
    #[arg(long, default_value = "./gateway-cache")]
    cache: PathBuf,
    /// Register the gateway itself under this service (deregistered on SIGTERM).
    #[arg(long, default_value = "default/default/gateway")]
    register_as: String,
}

fn parse_route(text: &str) -> anyhow::Result<Rule> {
    let (matcher, service) = text.split_once('=').context("a route is [HOST]/PREFIX=SERVICE")?;
    let slash = matcher.find('/').context("a route's prefix starts with /")?;
    let (host, prefix) = matcher.split_at(slash);
    Ok(Rule { host: (!host.is_empty()).then(|| host.to_owned()), ..Rule::prefix(prefix, service) })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let args = Args::parse();
    let file = match &args.config {
        Some(path) => GatewayFile::load(path)?,
        None => GatewayFile::default(),
    };
    let mut gateway_config = file.gateway.clone();
    for route in &args.routes {
        gateway_config.routes.push(parse_route(route)?);
    }
    if gateway_config.routes.is_empty() {
        bail!("no routes: give --route [HOST]/PREFIX=SERVICE or a --config file with routes");
    }

    let mut options = ClientOptions::new(args.servers.clone(), args.ca.clone());
    options.cache_dir = Some(args.cache.clone());
    options.name = "example-gateway".into();
    let client = Client::new(options)?;
    let discovery = RemoteDiscovery::follow(client.clone(), Scope::Namespace(Namespace::new(args.namespace.as_str())?));

    let host = PluginHost::new(HostConfig::default()).map_err(|e| anyhow::anyhow!("plugin host: {e}"))?;
    let mut config = file.route_config();
    if let Some(path) = &args.wasm {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        config.balancer =
            PluginSpec::Wasm { name: path.display().to_string(), compiled: host.compile(&bytes)?, config: "{}".into() };
    }
    config.health_check = match (&args.health_path, config.health_check.take()) {
        (Some(path), _) => Some(HealthCheck::http(path, Duration::from_secs(2))),
        (None, Some(from_file)) => Some(from_file),
        (None, None) => Some(HealthCheck::tcp(Duration::from_secs(2))),
    };
    let router = Router::new(host, Arc::new(discovery), config);
    let gateway = Gateway::new(gateway_config, Upstream::Router(router))?;

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    let me = Instance::new(ServiceKey::parse(&args.register_as)?, addr.ip(), addr.port());
    let key = me.key();
    if let Err(e) = client.register(me, Binding::Connection).await {
        bail!("cannot register the gateway as {}: {e}", args.register_as);
    }
    tracing::info!(%addr, "gateway serving");

    // SIGTERM: deregister first (no new traffic is sent here), then stop accepting and drain.
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down: deregistering");
        if let Err(e) = client.deregister(&key).await {
            tracing::warn!(error = %e, "deregister failed; the connection's end removes the instance");
        }
    };
    gateway.serve(listener, shutdown, Duration::from_secs(10)).await?;
    tracing::info!("drained; bye");
    Ok(())
}
