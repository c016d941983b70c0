//! `sextant gateway`: the HTTP gateway of the product. It follows one or more sextant
//! servers over QUIC (failover, an on-disk cache of the view), routes by Host and path
//! prefix, health-checks, breaks, retries and rate-limits, runs the plugins bound to its
//! services in the store (fetched, cached on disk, swapped in under traffic), registers
//! itself with its zone, version and plugin reports, and on SIGTERM deregisters, stops
//! accepting and drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sextant_core::{Instance, Namespace, Scope, ServiceKey};
use sextant_gateway::config::GatewayFile;
use sextant_gateway::metrics::{CONTENT_TYPE, GatewayMetrics};
use sextant_gateway::proxy::{Gateway, Rule, Upstream};
use sextant_gateway::{FollowOptions, HealthCheck, PluginFollower, RemoteDiscovery, Router};
use sextant_plugin::{HostConfig, PluginHost};
use sextant_proto::Binding;
use sextant_quic::client::Client;

use crate::commands::{ClientArgs, Failure, client_options};

/// `sextant gateway`'s options.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Where the gateway listens (HTTP).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Configuration file (JSON): routes, balancer, health policy and checks, scheduler,
    /// breaker, retries, rate limit. --route adds to its routes.
    #[arg(long)]
    config: Option<PathBuf>,
    /// `[HOST]/PREFIX=NS/GROUP/NAME`, repeatable.
    #[arg(long = "route")]
    routes: Vec<String>,
    /// Health check path (HTTP); none: TCP connect (unless the file says otherwise).
    #[arg(long)]
    health_path: Option<String>,
    /// Namespace to follow (default: the routes' namespace when they share one, else all).
    #[arg(long)]
    namespace: Option<String>,
    /// Cache of the discovery view, the plugin records and the plugin components, served
    /// when no server answers.
    #[arg(long, default_value = "./sextant-gateway-cache")]
    cache: PathBuf,
    /// Register the gateway itself under this service (deregistered on SIGTERM).
    #[arg(long, default_value = "default/default/gateway")]
    register_as: String,
    /// Zone label of the gateway's registration.
    #[arg(long, default_value = "")]
    zone: String,
    /// Serve Prometheus metrics (`GET /metrics`) on this address: requests, latency
    /// histograms, attempts, retries, rate limits, endpoint health and breakers, plugins.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Seconds to drain requests in flight on SIGTERM.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
}

fn parse_route(text: &str) -> Result<Rule, Failure> {
    let (matcher, service) = text
        .split_once('=')
        .ok_or_else(|| Failure::usage(format!("route {text:?}: expected [HOST]/PREFIX=SERVICE")))?;
    let slash = matcher.find('/').ok_or_else(|| Failure::usage(format!("route {text:?}: the prefix starts with /")))?;
    let (host, prefix) = matcher.split_at(slash);
    Ok(Rule { host: (!host.is_empty()).then(|| host.to_owned()), ..Rule::prefix(prefix, service) })
}

fn service_of(rule: &Rule) -> Result<ServiceKey, Failure> {
    ServiceKey::parse(&rule.service).map_err(|e| Failure::usage(format!("route to {:?}: {e}", rule.service)))
}

/// Runs the gateway until `shutdown`.
pub(crate) async fn run(args: GatewayArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Failure> {
    let file = match &args.config {
        Some(path) => GatewayFile::load(path).map_err(|e| Failure::usage(e.to_string()))?,
        None => GatewayFile::default(),
    };
    let mut gateway_config = file.gateway.clone();
    for route in &args.routes {
        gateway_config.routes.push(parse_route(route)?);
    }
    if gateway_config.routes.is_empty() {
        return Err(Failure::usage("no routes: give --route [HOST]/PREFIX=SERVICE or a --config file with routes"));
    }
    let mut services: Vec<ServiceKey> = gateway_config.routes.iter().map(service_of).collect::<Result<_, _>>()?;
    services.sort();
    services.dedup();
    let scope = match &args.namespace {
        Some(ns) => Scope::Namespace(Namespace::new(ns.as_str()).map_err(|e| Failure::usage(e.to_string()))?),
        None if services.iter().all(|s| s.namespace == services[0].namespace) => {
            Scope::Namespace(services[0].namespace.clone())
        }
        None => Scope::All,
    };

    let mut options = client_options(&args.client);
    options.cache_dir = Some(args.cache.clone());
    options.name = "sextant-gateway".into();
    let client = Client::new(options).map_err(|e| Failure::other(e.to_string()))?;
    let discovery = RemoteDiscovery::follow(client.clone(), scope);

    let host = PluginHost::new(HostConfig::default()).map_err(|e| Failure::other(format!("plugin host: {e:#}")))?;
    let mut config = file.route_config();
    config.health_check = match (&args.health_path, config.health_check.take()) {
        (Some(path), _) => Some(HealthCheck::http(path, Duration::from_secs(2))),
        (None, Some(from_file)) => Some(from_file),
        (None, None) => Some(HealthCheck::tcp(Duration::from_secs(2))),
    };
    let router = Router::new(host, Arc::new(discovery), config.clone());
    let follower = PluginFollower::start(
        router.clone(),
        client.clone(),
        FollowOptions { services, defaults: config, cache_dir: Some(args.cache.join("plugins")) },
    );
    let metrics = Arc::new(GatewayMetrics::new());
    let gateway = Gateway::with_metrics(gateway_config, Upstream::Router(router.clone()), Some(Arc::clone(&metrics)))
        .map_err(|e| Failure::usage(e.to_string()))?;
    let metrics_server = match args.metrics {
        None => None,
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| Failure::other(format!("listening on {at} (--metrics): {e}")))?;
            let app = axum::Router::new().route(
                "/metrics",
                axum::routing::get(move || {
                    let (metrics, router) = (Arc::clone(&metrics), router.clone());
                    async move { ([("content-type", CONTENT_TYPE)], metrics.encode(Some(&router))) }
                }),
            );
            Some(tokio::spawn(async move { axum::serve(listener, app).await }))
        }
    };

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Failure::other(format!("listening on {}: {e}", args.listen)))?;
    let addr = listener.local_addr().map_err(|e| Failure::other(e.to_string()))?;
    let mut me = Instance::new(
        ServiceKey::parse(&args.register_as).map_err(|e| Failure::usage(format!("--register-as: {e}")))?,
        addr.ip(),
        addr.port(),
    );
    me.zone.clone_from(&args.zone);
    me.version = env!("CARGO_PKG_VERSION").into();
    me.metadata.insert("sextant.role".into(), "gateway".into());
    let key = me.key();
    tracing::info!(%addr, "gateway serving");

    // Register, then publish what the plugins do here in the registration as it changes. A
    // gateway that starts while no server answers serves from its caches and registers
    // once one does.
    let reporter = {
        let (client, mut changes) = (client.clone(), follower.changes());
        let follower = Arc::new(follower);
        tokio::spawn(async move {
            let mut published = None;
            loop {
                let report = follower.report();
                if published.as_ref() != Some(&report) {
                    let mut instance = me.clone();
                    instance.metadata.extend(report.clone());
                    match client.register(instance, Binding::Connection).await {
                        Ok(_) => published = Some(report),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot register the gateway; trying again");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            continue;
                        }
                    }
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
    };

    // Shutdown: deregister first (no new traffic is sent here), then stop accepting and drain.
    let shutdown = async {
        shutdown.await;
        reporter.abort();
        tracing::info!("shutting down: deregistering");
        if let Err(e) = client.deregister(&key).await {
            tracing::warn!(error = %e, "deregister failed; the connection's end removes the instance");
        }
    };
    let served = gateway.serve(listener, shutdown, Duration::from_secs(args.drain_secs)).await;
    if let Some(task) = metrics_server {
        task.abort();
    }
    served.map_err(|e| Failure::other(format!("gateway: {e}")))?;
    tracing::info!("drained");
    Ok(())
}
