//! `sextant gateway`: the HTTP gateway of the product. It follows one or more sextant
//! servers over QUIC (failover, an on-disk cache of the view), routes by Host and path
//! prefix, health-checks, breaks, retries and rate-limits, runs the plugins bound to its
//! services in the store (fetched, cached on disk, swapped in under traffic), registers
//! itself with its zone, version and plugin reports, and on SIGTERM deregisters, stops
//! accepting and drains.
//!
//! Its identity is its registration: `--register-as` and the address it advertises (the
//! instance id). Two gateways of one identity would overwrite each other's registration, and
//! the first to stop would deregister the other; so each registration carries a run id, and a
//! gateway that sees its registration taken over by another run stops registering (it never
//! deregisters what is no longer its own), says so in its log and in `/metrics`
//! (`sextant_gateway_identity_conflict`), and goes on serving its traffic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use std::collections::BTreeMap;

use sextant_core::{ConfigKey, Instance, Namespace, Reader, Record, Scope, ServiceKey};
use sextant_gateway::access_log::AccessLog;
use sextant_gateway::config::GatewayFile;
use sextant_gateway::follow::{ReportExtras, keep_reported};
use sextant_gateway::metrics::{CONTENT_TYPE, GatewayMetrics};
use sextant_gateway::proxy::{Gateway, GatewayConfig, Rule, Upstream};
use sextant_gateway::{HealthCheck, RemoteDiscovery, Router, ServicePolicy};
use sextant_plugin::PluginHost;
use sextant_quic::client::{Client, Watch};

/// Metadata key of the gateway's config entry status (`applied V` or `refused V: REASON`).
const CONFIG_STATUS: &str = "sextant.gateway.config";

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
    #[arg(long, conflicts_with = "config_entry")]
    config: Option<PathBuf>,
    /// The same document from a config entry in the store (`DATA_ID` or `NS/GROUP/DATA_ID`,
    /// written with `sextant config put`), followed: a new version is applied without
    /// restart; one that is not a valid document is refused (logged, and shown in the
    /// gateway's registration as `sextant.gateway.config`) and the last good one keeps
    /// serving. Routes to another namespace need --namespace.
    #[arg(long)]
    config_entry: Option<String>,
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
    /// The address registered for the gateway (default: the --listen address, which must
    /// then name an interface, not 0.0.0.0 or ::). Gateways registered under one
    /// --register-as need addresses of their own: the address is the registration's id.
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// The zone the gateway runs in: its registration's zone, its `zone` label as a reader of
    /// config entries, what plugins read as `host.local-zone` (the `locality` scheduler keeps
    /// traffic in it), and the `local`/`remote` label of `sextant_gateway_zone_attempts_total`.
    /// At most 64 bytes, no whitespace.
    #[arg(long, default_value = "")]
    zone: String,
    /// A label of this gateway, KEY=VALUE (repeatable): in its registration's metadata as
    /// `sextant.label.KEY`, and matched by the gray rules of config entries it reads (with
    /// `zone`, and the registration's IP:PORT as its reader id).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Serve Prometheus metrics (`GET /metrics`) on this address: requests, latency
    /// histograms, attempts and their latency per endpoint, retries, rate limits, endpoint
    /// health and breakers, plugins. The address goes into the gateway's registration
    /// (`sextant.gateway.metrics`), where the console reads its live traffic.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Write an access log here: one JSON line per request (client, method, host, path,
    /// status, duration, and what the gateway did: route, service, each attempt's endpoint,
    /// balancer and version, the endpoints left out and why); `-` is standard output. Lines
    /// are written off the request path; a full queue drops lines and says how many.
    #[arg(long)]
    access_log: Option<PathBuf>,
    /// Print the effective configuration document (the file or config entry with the
    /// command line applied and every default filled in, docs/gateway.md) and exit.
    #[arg(long)]
    print_config: bool,
    /// Seconds to drain requests in flight on SIGTERM.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
    /// Threads that serve requests (default: one per core). Each runs its own event loop and
    /// pool of upstream connections, and a request stays on its connection's thread.
    #[arg(long)]
    threads: Option<std::num::NonZeroUsize>,
    #[command(flatten)]
    plugin_host: crate::commands::PluginHostArgs,
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

/// What a configuration document (plus the command line) makes the gateway do.
struct Effective {
    gateway: GatewayConfig,
    /// The document's policy as written (before the command line's health path): what the
    /// routes' policies come from, compared when the document changes.
    policies: serde_json::Value,
    policy: ServicePolicy,
    services: Vec<ServiceKey>,
}

/// The document with the command line applied: `--route` added to its routes, the health
/// check `--health-path` or the file gives (a TCP connect check when neither does). What
/// `--print-config` prints.
fn resolved(file: &GatewayFile, args: &GatewayArgs) -> Result<GatewayFile, Failure> {
    let mut gateway = file.gateway.clone();
    for route in &args.routes {
        gateway.routes.push(parse_route(route)?);
    }
    let mut policy = file.policy.clone();
    policy.health_check = match (&args.health_path, policy.health_check.take()) {
        (Some(path), _) => Some(HealthCheck::http(path, Duration::from_secs(2))),
        (None, Some(from_file)) => Some(from_file),
        (None, None) => Some(HealthCheck::tcp(Duration::from_secs(2))),
    };
    Ok(GatewayFile { gateway, policy })
}

/// `--print-config`: the resolved document, as JSON a `--config` file can hold.
fn print_config(file: &GatewayFile, args: &GatewayArgs) -> Result<(), Failure> {
    let document = resolved(file, args)?.to_json();
    crate::commands::out(&serde_json::to_string_pretty(&document).unwrap_or_default())
}

fn effective(file: &GatewayFile, args: &GatewayArgs) -> Result<Effective, Failure> {
    let GatewayFile { gateway, policy } = resolved(file, args)?;
    if gateway.routes.is_empty() {
        return Err(Failure::usage(
            "no routes: give --route [HOST]/PREFIX=SERVICE, or routes in the --config file or --config-entry",
        ));
    }
    let mut services: Vec<ServiceKey> = gateway.routes.iter().map(service_of).collect::<Result<_, _>>()?;
    services.sort();
    services.dedup();
    let policies = serde_json::to_value(&file.policy).unwrap_or_default();
    Ok(Effective { gateway, policies, policy, services })
}

/// The config entry `key` as `watch` holds it: (version, content).
fn entry_of(client: &Client, watch: &Watch, key: &ConfigKey) -> Option<(String, String)> {
    client.view(watch).records.into_iter().find_map(|r| match r {
        Record::Config(c) if c.key == *key => Some((c.version.clone(), c.content.clone())),
        _ => None,
    })
}

fn short(version: &str) -> &str {
    &version[..12.min(version.len())]
}

/// How long a starting gateway waits for its first view of the registry before it serves.
const READY_WAIT: Duration = Duration::from_secs(5);

/// Metadata key of the run id each registration carries.
const RUN_KEY: &str = "sextant.gateway.run";

/// The address the gateway registers: --advertise, else the one it listens on (which must
/// be an address others can reach).
fn advertised(args: &GatewayArgs, listening: SocketAddr) -> Result<SocketAddr, Failure> {
    match args.advertise {
        Some(addr) if addr.ip().is_unspecified() || addr.port() == 0 => {
            Err(Failure::usage(format!("--advertise {addr}: give an address and port others can reach")))
        }
        Some(addr) => Ok(addr),
        None if listening.ip().is_unspecified() => Err(Failure::usage(format!(
            "listening on {listening} registers no address others can reach: give --advertise IP:PORT"
        ))),
        None => Ok(listening),
    }
}

/// Metadata key prefix of a gateway's `--label`s in its registration.
const LABEL_PREFIX: &str = "sextant.label.";

/// The gateway's `--label KEY=VALUE` pairs.
fn labels(args: &GatewayArgs) -> Result<BTreeMap<String, String>, Failure> {
    args.labels
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(Failure::usage(format!("--label {pair:?}: expected KEY=VALUE"))),
        })
        .collect()
}

/// Who the gateway is to the gray rules of config entries: its registration's IP:PORT as id
/// (none when it has no address others can reach), its labels and its zone.
fn reader_of(args: &GatewayArgs, registered: Option<&SocketAddr>) -> Result<Reader, Failure> {
    let mut labels = labels(args)?;
    if !args.zone.is_empty() {
        labels.insert("zone".into(), args.zone.clone());
    }
    let reader = Reader { id: registered.map(ToString::to_string), labels };
    reader.validate().map_err(|e| Failure::usage(format!("--label/--zone: {e}")))?;
    Ok(reader)
}

/// A run id, unique to this process.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:x}-{nanos:x}", std::process::id())
}

/// Watches the gateway's own registration. `written` is the revision of this run's newest
/// registration (0: none yet); a view at or past it that shows the registration written by
/// another run is a takeover (an older version, say of a previous run still within its
/// grace period, can only show in views before it): `conflict` is set and the task ends.
async fn watch_identity(
    client: Client,
    me: Instance,
    run: String,
    written: Arc<AtomicU64>,
    conflict: tokio::sync::watch::Sender<Option<String>>,
    metrics: Arc<GatewayMetrics>,
) {
    let mut watch = client.watch(Scope::Service(me.service.clone()));
    while let Some(item) = watch.next().await {
        if item.is_err() {
            continue;
        }
        let view = client.view(&watch);
        let mine = written.load(Ordering::Acquire);
        if mine == 0 || view.revision.0 < mine {
            continue;
        }
        let theirs = view.records.into_iter().find_map(|r| match r {
            Record::Instance(i) if i.id == me.id => {
                Some(i.metadata.get(RUN_KEY).map(str::to_owned).unwrap_or_default())
            }
            _ => None,
        });
        if let Some(other) = theirs.filter(|r| *r != run) {
            tracing::error!(
                service = %me.service, id = %me.id, run = %run, other = %other,
                "another gateway registered with this gateway's identity (same --register-as and address); \
                 this one stops registering and goes on serving: give each gateway its own --advertise or --register-as"
            );
            metrics.set_identity_conflict(true);
            conflict.send_replace(Some(other));
            return;
        }
    }
}

/// Runs the gateway until `shutdown`.
#[allow(clippy::too_many_lines)]
pub(crate) async fn run(
    args: GatewayArgs,
    traces: bool,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    let args = Arc::new(args);
    if let Some(e) =
        Some(args.zone.as_str()).filter(|z| !z.is_empty()).and_then(sextant_plugin::builtins::zone_name_error)
    {
        return Err(Failure::usage(format!("--zone: {e}")));
    }
    if args.print_config && args.config_entry.is_none() {
        // A file or the defaults: printed without a server.
        let file = match &args.config {
            Some(path) => GatewayFile::load(path).map_err(|e| Failure::usage(e.to_string()))?,
            None => GatewayFile::default(),
        };
        return print_config(&file, &args);
    }
    // Bound first: the registration's address is the gateway's id as a reader of config
    // entries (gray release), and --print-config shows what this gateway would be served.
    let listener = if args.print_config {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|e| Failure::other(format!("listening on {}: {e}", args.listen)))?,
        )
    };
    let addr = match &listener {
        Some(l) => l.local_addr().map_err(|e| Failure::other(e.to_string()))?,
        None => args.listen,
    };
    let registered = advertised(&args, addr);
    let mut options = client_options(&args.client);
    options.cache_dir = Some(args.cache.clone());
    options.name = "sextant-gateway".into();
    options.reader = Some(reader_of(&args, registered.as_ref().ok())?);
    let client = Client::new(options).map_err(|e| Failure::other(e.to_string()))?;

    // The document: a file, a config entry (its first value from a server or the cache), or
    // the defaults and --route.
    let mut entry = None;
    let (file, version) = match (&args.config, &args.config_entry) {
        (Some(path), _) => (GatewayFile::load(path).map_err(|e| Failure::usage(e.to_string()))?, None),
        (None, Some(key)) => {
            let key = ConfigKey::parse(key).map_err(|e| Failure::usage(format!("--config-entry: {e}")))?;
            let mut watch = client.watch(Scope::Config(key.clone()));
            match tokio::time::timeout(Duration::from_secs(20), watch.next()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(Failure::other(format!("config entry {key}: {e}"))),
                Ok(None) | Err(_) => {
                    return Err(Failure::other(format!("config entry {key}: no server answered and none is cached")));
                }
            }
            let (version, content) = entry_of(&client, &watch, &key)
                .ok_or_else(|| Failure::usage(format!("config entry {key} does not exist")))?;
            let file = GatewayFile::from_json(&content)
                .map_err(|e| Failure::usage(format!("config entry {key} (version {}): {e}", short(&version))))?;
            entry = Some((key, watch));
            (file, Some(version))
        }
        (None, None) => (GatewayFile::default(), None),
    };
    if args.print_config {
        return print_config(&file, &args);
    }
    let first = effective(&file, &args)?;
    let services = first.services.clone();
    let scope = match &args.namespace {
        Some(ns) => Scope::Namespace(Namespace::new(ns.as_str()).map_err(|e| Failure::usage(e.to_string()))?),
        None if services.iter().all(|s| s.namespace == services[0].namespace) => {
            Scope::Namespace(services[0].namespace.clone())
        }
        None => Scope::All,
    };
    let discovery = RemoteDiscovery::follow(client.clone(), scope);

    let listener = listener.ok_or_else(|| Failure::other("no listener"))?;
    let registered = registered?;
    let mut me = Instance::new(
        ServiceKey::parse(&args.register_as).map_err(|e| Failure::usage(format!("--register-as: {e}")))?,
        registered.ip(),
        registered.port(),
    );
    me.zone.clone_from(&args.zone);
    for (k, v) in labels(&args)? {
        me.metadata.insert(format!("{LABEL_PREFIX}{k}"), v);
    }
    me.version = env!("CARGO_PKG_VERSION").into();
    me.metadata.insert("sextant.role".into(), "gateway".into());
    let run = run_id();
    me.metadata.insert(RUN_KEY.into(), run.clone());
    let key = me.key();
    // The router follows the servers' plugin records for the routed services, reporting its
    // faults as this registration, and publishes what it runs there (below).
    let host = PluginHost::new(args.plugin_host.config()).map_err(|e| Failure::other(format!("plugin host: {e:#}")))?;
    let router = Router::builder(host, Arc::new(discovery))
        .defaults(first.policy.clone())
        .plugin_cache(args.cache.join("plugins"))
        .reporting_as(key.to_string())
        .zone(args.zone.clone())
        .build();
    let follower = router.plugins().ok_or_else(|| Failure::other("the router follows no plugin records"))?;
    follower.set_services(services, first.policy.clone(), Vec::new());
    let gateway_config = first.gateway.clone();
    let metrics = Arc::new(GatewayMetrics::new());
    metrics.set_zone(&args.zone);
    let gateway = Gateway::with_metrics(gateway_config, Upstream::Router(router.clone()), Some(Arc::clone(&metrics)))
        .map_err(|e| Failure::usage(e.to_string()))?;
    if let Some(path) = &args.access_log {
        let log = AccessLog::open(path).map_err(|e| Failure::other(format!("--access-log {}: {e}", path.display())))?;
        // A new gateway has no log yet.
        let _ = gateway.log_access(log);
    }
    if traces {
        // A new gateway propagates nothing yet.
        let _ = gateway.propagate_traces(crate::telemetry::propagation());
    }
    let metrics_server = match args.metrics {
        None => None,
        Some(at) => {
            let (router, metrics) = (router.clone(), Arc::clone(&metrics));
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| Failure::other(format!("listening on {at} (--metrics): {e}")))?;
            // Where the console reads this gateway's live traffic (through its server).
            let bound = listener.local_addr().map_err(|e| Failure::other(e.to_string()))?;
            let shown =
                if bound.ip().is_unspecified() { SocketAddr::new(registered.ip(), bound.port()) } else { bound };
            me.metadata.insert(sextant_proto::GATEWAY_METRICS_KEY.into(), shown.to_string());
            let ready = router.clone();
            let app = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move || {
                        let (metrics, router) = (Arc::clone(&metrics), router.clone());
                        async move { ([("content-type", CONTENT_TYPE)], metrics.encode(Some(&router))) }
                    }),
                )
                // 200 once the first view of the registry is in (from a server or the cache).
                .route(
                    "/ready",
                    axum::routing::get(move || {
                        let ready = ready.ready();
                        async move {
                            if ready {
                                (axum::http::StatusCode::OK, "ready\n")
                            } else {
                                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "no view of the registry yet\n")
                            }
                        }
                    }),
                );
            Some(tokio::spawn(async move { axum::serve(listener, app).await }))
        }
    };

    tracing::info!(%addr, %registered, %run, "gateway serving");
    let (conflict, mut conflicts) = tokio::sync::watch::channel(None::<String>);
    let written = Arc::new(AtomicU64::new(0));
    let identity = tokio::spawn(watch_identity(
        client.clone(),
        me.clone(),
        run,
        Arc::clone(&written),
        conflict,
        Arc::clone(&metrics),
    ));

    // Register, then publish what the plugins do here in the registration as it changes. A
    // gateway that starts while no server answers serves from its caches and registers
    // once one does.
    let (status, status_changes) = tokio::sync::watch::channel(BTreeMap::new());
    // Held here for as long as the gateway runs, whatever the tasks below do.
    let status = Arc::new(status);
    if let Some(v) = &version {
        status.send_replace(BTreeMap::from([(CONFIG_STATUS.to_owned(), format!("applied {}", short(v)))]));
    }
    let reporter = tokio::spawn(keep_reported(
        Arc::downgrade(&follower),
        client.clone(),
        me.clone(),
        ReportExtras { extra: Some(status_changes), stop: Some(conflicts.clone()), written: Arc::clone(&written) },
    ));

    // A followed config entry: each new version applied, or refused with the reason.
    let config_follower = entry.map(|(key, mut watch)| {
        let (client, gateway, router) = (client.clone(), gateway.clone(), router.clone());
        let (follower, status, args) = (Arc::clone(&follower), Arc::clone(&status), Arc::clone(&args));
        let mut current = (version.unwrap_or_default(), first);
        tokio::spawn(async move {
            while let Some(item) = watch.next().await {
                if item.is_err() {
                    return;
                }
                let Some((version, content)) = entry_of(&client, &watch, &key) else {
                    tracing::warn!(%key, "the gateway's config entry was deleted; the last one keeps serving");
                    continue;
                };
                if version == current.0 {
                    continue;
                }
                let next = GatewayFile::from_json(&content)
                    .map_err(|e| e.to_string())
                    .and_then(|file| effective(&file, &args).map_err(|e| e.to_string()))
                    .and_then(|next| gateway.set_config(next.gateway.clone()).map(|()| next).map_err(|e| e.to_string()));
                let line = match next {
                    Err(reason) => {
                        tracing::error!(%key, version = short(&version), %reason, "config entry refused; the last good one keeps serving");
                        format!("refused {}: {}", short(&version), reason.chars().take(200).collect::<String>())
                    }
                    Ok(next) => {
                        let policies_changed = next.policies != current.1.policies;
                        let reset: Vec<ServiceKey> = next
                            .services
                            .iter()
                            .filter(|s| policies_changed || !current.1.services.contains(s))
                            .cloned()
                            .collect();
                        // Each service set up again tells the follower itself (its bound
                        // plugins are loaded into the new state once).
                        for s in reset {
                            router.configure(s, next.policy.clone());
                        }
                        follower.set_services(next.services.clone(), next.policy.clone(), Vec::new());
                        tracing::info!(%key, version = short(&version), "config entry applied");
                        current.1 = next;
                        format!("applied {}", short(&version))
                    }
                };
                current.0 = version;
                status.send_modify(|s| {
                    s.insert(CONFIG_STATUS.to_owned(), line);
                });
            }
        })
    });

    // The gateway's own health verdicts, published beside the rest when they change.
    let verdicts = {
        let (router, status) = (router.clone(), Arc::clone(&status));
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let report = sextant_gateway::verdicts::health_report(&router);
                status.send_if_modified(|s| {
                    let old: BTreeMap<String, String> = s
                        .iter()
                        .filter(|(k, _)| k.starts_with(sextant_gateway::verdicts::HEALTH_REPORT_PREFIX))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if old == report {
                        return false;
                    }
                    s.retain(|k, _| !k.starts_with(sextant_gateway::verdicts::HEALTH_REPORT_PREFIX));
                    s.extend(report.clone());
                    true
                });
            }
        })
    };

    // Shutdown: deregister first (no new traffic is sent here), then stop accepting and drain.
    let shutdown = async {
        shutdown.await;
        reporter.abort();
        verdicts.abort();
        if let Some(task) = &config_follower {
            task.abort();
        }
        identity.abort();
        if conflicts.borrow_and_update().is_some() {
            tracing::info!("shutting down: the registration belongs to another gateway now; not deregistering");
        } else {
            tracing::info!("shutting down: deregistering");
            if let Err(e) = client.deregister(&key).await {
                tracing::warn!(error = %e, "deregister failed; the connection's end removes the instance");
            }
        }
    };
    // Requests are answered once the first view is in (from a server, or the cache at once):
    // until then every pick would be `not synced`. Connections made meanwhile wait in the
    // listener's backlog rather than being refused; with no server and no cache the gateway
    // serves after READY_WAIT anyway, answering 503 until a view arrives.
    if tokio::time::timeout(READY_WAIT, router.wait_ready()).await.is_err() {
        tracing::warn!(wait = ?READY_WAIT, "no view of the registry yet (no server answers, nothing cached): serving, 503 until one arrives");
    }
    let threads = args.threads.or_else(|| std::thread::available_parallelism().ok()).map_or(1, usize::from);
    let served = gateway.serve_on_threads(listener, threads, shutdown, Duration::from_secs(args.drain_secs)).await;
    if let Some(task) = metrics_server {
        task.abort();
    }
    served.map_err(|e| Failure::other(format!("gateway: {e}")))?;
    tracing::info!("drained");
    Ok(())
}
