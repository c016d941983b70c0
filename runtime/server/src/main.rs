//! The `sextant` command line. See `sextant --help` and the README.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error (also `serve` refusing an open door), 3 not
//! found, 4 no server reachable, 5 refused (unauthenticated, forbidden, invalid, limited).

mod commands;
mod gateway;
mod telemetry;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sextant_server::{ServeConfig, StoreConfig, run};
use sextant_store::EtcdOptions;

use crate::commands::{ClientArgs, ConfigCommand, PluginCommand, ReaderArgs, ScopeArgs};

#[derive(Debug, Parser)]
#[command(
    name = "sextant",
    version,
    about = "Service discovery for gateways, with hot-swappable WebAssembly balancers"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SEXTANT_LOG_FORMAT")]
    log_format: LogFormat,
    /// Export traces (registry writes, watch resumes, plugin activations, rollout decisions,
    /// each gateway request and attempt) to this OpenTelemetry collector, over OTLP/HTTP
    /// with protobuf (`http://HOST:4318`, or the full traces URL).
    #[arg(long, global = true, env = "SEXTANT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StoreKind {
    /// Durable in --data-dir (redb).
    Embedded,
    /// Shared with other hosts through an etcd cluster (--etcd-endpoints).
    Etcd,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registry: embedded store, QUIC discovery, admin HTTP (health, metrics, API).
    Serve {
        /// Data directory of the embedded store (and the development TLS certificate).
        #[arg(long, default_value = "./sextant-data", env = "SEXTANT_DATA_DIR")]
        data_dir: PathBuf,
        /// QUIC address (UDP) for discovery clients.
        #[arg(long, default_value = "127.0.0.1:7600", env = "SEXTANT_LISTEN")]
        listen: SocketAddr,
        /// Admin HTTP address (health, metrics, status, JSON API).
        #[arg(long, default_value = "127.0.0.1:7601", env = "SEXTANT_ADMIN")]
        admin: SocketAddr,
        /// Storage backend.
        #[arg(long, value_enum, default_value_t = StoreKind::Embedded, env = "SEXTANT_STORE")]
        store: StoreKind,
        /// etcd client URLs, comma-separated (with --store etcd).
        #[arg(long, value_delimiter = ',', env = "SEXTANT_ETCD_ENDPOINTS", default_value = "http://127.0.0.1:2379")]
        etcd_endpoints: Vec<String>,
        /// Key prefix in etcd (with --store etcd).
        #[arg(long, default_value = "/sextant/v1/")]
        etcd_prefix: String,
        /// Timeout of every etcd call, in milliseconds (with --store etcd).
        #[arg(long, default_value_t = 5000)]
        etcd_timeout_ms: u64,
        /// Events kept so watchers can resume from a revision.
        #[arg(long, default_value_t = 16 * 1024)]
        history: usize,
        /// How long instances bound to a lost connection stay, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        grace_ms: u64,
        /// Access file: tokens with per-namespace rights (JSON), for QUIC and the admin API
        /// alike; re-read when it changes and on SIGHUP. Without it, the server is open and
        /// binds loopback addresses only (see --allow-open).
        #[arg(long, env = "SEXTANT_ACL")]
        acl: Option<PathBuf>,
        /// How often the access file is checked for changes, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        acl_poll_ms: u64,
        /// Serve without an access file on addresses other than loopback (anyone who reaches
        /// them may do everything).
        #[arg(long)]
        allow_open: bool,
        /// Serve the admin API over HTTPS with the QUIC certificate (and --client-ca).
        #[arg(long)]
        admin_tls: bool,
        /// Also serve /metrics and /healthz (and nothing else) on this address, for scrapers.
        #[arg(long, env = "SEXTANT_METRICS")]
        metrics: Option<SocketAddr>,
        /// Requests per second one client (token, or anonymous, from one IP address) may send
        /// over both doors; 0: no limit.
        #[arg(long, default_value_t = 10_000)]
        max_request_rate: u32,
        /// Requests a client may send at once above --max-request-rate.
        #[arg(long, default_value_t = 20_000)]
        max_request_burst: u32,
        /// Instances one QUIC connection may hold registered.
        #[arg(long, default_value_t = 10_000)]
        max_registrations_per_connection: usize,
        /// Subscriptions one QUIC connection may hold open.
        #[arg(long, default_value_t = 200)]
        max_watches_per_connection: usize,
        /// Require client certificates signed by this CA (mutual TLS).
        #[arg(long)]
        client_ca: Option<PathBuf>,
        /// Server certificate (PEM); default: the development certificate in the data dir.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Server key (PEM), with --cert.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Watch this directory for plugins: NAME.wasm, with an optional NAME.json
        /// (`{"kind": "balancer", "binding": "NS/GROUP/NAME", "config": {...}}`); a new or
        /// changed file is validated and swapped in, a removed one unloaded.
        #[arg(long, env = "SEXTANT_PLUGINS")]
        plugins: Option<PathBuf>,
        /// How often the plugin directory is scanned, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        plugins_poll_ms: u64,
        /// Balancer of services no plugin is bound to (a built-in: round-robin, weighted,
        /// random, least-request, peak-ewma, ring-hash, maglev, header-route); the default is
        /// the one every host (server and gateway) starts on.
        #[arg(long, default_value = sextant_plugin::DEFAULT_BALANCER)]
        balancer: String,
        /// The fleet rule: how many hosts (gateways, servers) must report rolling a plugin
        /// version back on its own before it is marked bad for every host (1 to 16). Give
        /// every server on one store the same rule.
        #[arg(long, default_value_t = 1)]
        rollback_hosts: u32,
        /// How long a host's report of a rollback counts toward the fleet rule, in seconds.
        #[arg(long, default_value_t = 600)]
        rollback_window_secs: u64,
        #[command(flatten)]
        plugin_host: commands::PluginHostArgs,
    },
    /// Register an instance. Ephemeral (the default) runs until SIGTERM/SIGINT, then
    /// deregisters; --persistent registers and exits.
    Register {
        #[command(flatten)]
        client: ClientArgs,
        /// Service: NAME or NS/GROUP/NAME.
        #[arg(long)]
        service: String,
        /// Instance address.
        #[arg(long)]
        addr: SocketAddr,
        /// Instance id (default: IP:PORT).
        #[arg(long)]
        id: Option<String>,
        /// Weight 0..=10000.
        #[arg(long, default_value_t = 100)]
        weight: u32,
        /// Metadata, repeatable.
        #[arg(long = "meta", value_name = "K=V")]
        meta: Vec<String>,
        /// Zone label.
        #[arg(long, default_value = "")]
        zone: String,
        /// Version label.
        #[arg(long = "instance-version", default_value = "")]
        instance_version: String,
        /// Stay registered until deregistered, across restarts.
        #[arg(long, conflicts_with = "ttl")]
        persistent: bool,
        /// Hang on a lease with this TTL (seconds) instead of the connection.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Deregister an instance.
    Deregister {
        #[command(flatten)]
        client: ClientArgs,
        /// Service: NAME or NS/GROUP/NAME.
        #[arg(long)]
        service: String,
        /// Instance id (IP:PORT by default).
        #[arg(long)]
        id: String,
    },
    /// List records (instances, service settings, configs), with the instances and healthy
    /// instances per zone.
    List {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Only the instances of this zone (and no other records).
        #[arg(long)]
        zone: Option<String>,
    },
    /// Follow changes as JSON lines, resuming across reconnects; until SIGINT/SIGTERM.
    Watch {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        scope: ScopeArgs,
        #[command(flatten)]
        reader: ReaderArgs,
        /// Keep the view here and serve it (stale) when no server answers.
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Pick an instance of a service.
    Pick {
        #[command(flatten)]
        client: ClientArgs,
        /// Service: NAME or NS/GROUP/NAME.
        #[arg(long)]
        service: String,
        /// Consistent-hash key.
        #[arg(long)]
        hash_key: Option<String>,
        /// A request header for header-routing balancers, repeatable.
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// An instance this request already tried (a retry), repeatable, in order: the
        /// balancer steers past it.
        #[arg(long = "tried", value_name = "IP:PORT")]
        tried: Vec<String>,
    },
    /// Config entries.
    Config {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Plugins.
    Plugin {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// The HTTP gateway: routes by Host and path prefix to services discovered from the
    /// servers, runs the plugins bound to them in the store (swapped in without restart),
    /// registers itself; on SIGTERM deregisters and drains.
    Gateway(gateway::GatewayArgs),
    /// Sample backends + registry + gateway + traffic, with a live table per endpoint:
    /// watch balancing, ejection and a hot swap happen. Stops by itself, or on Ctrl-C.
    Demo {
        /// Run time in seconds; the timeline scales with it.
        #[arg(long, default_value_t = 40)]
        duration: u64,
        /// Requests per second through the gateway.
        #[arg(long, default_value_t = 400)]
        rps: u32,
        /// Gateway address (HTTP).
        #[arg(long, default_value = "127.0.0.1:7680")]
        listen: SocketAddr,
        /// Data directory (default: a temporary one).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// One JSON object per second, and the summary, instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Certificates.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// One CA for several hosts: writes DIR/ca.pem and ca.key (unless present), a certificate
    /// and key per --host (for `serve --cert DIR/NAME.pem --key DIR/NAME.key`) and per
    /// --client (for mTLS). Clients of every host then take one `--ca DIR/ca.pem`.
    Init {
        /// Where to write (created if missing).
        #[arg(long, default_value = "./sextant-tls")]
        dir: PathBuf,
        /// A server: NAME, or NAME=SAN,SAN,... with the DNS names and IP addresses clients dial
        /// (default: NAME alone). Repeatable.
        #[arg(long = "host", value_name = "NAME[=SAN,...]", required = true)]
        hosts: Vec<String>,
        /// A client certificate for mutual TLS, named NAME. Repeatable.
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
    },
}

fn tls_init(dir: &std::path::Path, hosts: &[String], clients: &[String]) -> Result<(), commands::Failure> {
    let servers: Vec<(String, Vec<String>)> = hosts
        .iter()
        .map(|h| match h.split_once('=') {
            Some((name, sans)) => {
                (name.to_owned(), sans.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            }
            None => (h.clone(), Vec::new()),
        })
        .collect();
    let written =
        sextant_quic::tls::init_fleet(dir, &servers, clients).map_err(|e| commands::Failure::usage(e.to_string()))?;
    let verb = if written.new_ca { "wrote" } else { "kept" };
    commands::out(&format!("{verb} the CA {} (clients: --ca {})", written.ca.display(), written.ca.display()))?;
    for (name, cert, key) in &written.servers {
        commands::out(&format!("server {name}: --cert {} --key {}", cert.display(), key.display()))?;
    }
    for (name, cert, key) in &written.clients {
        commands::out(&format!("client {name}: --client-cert {} --client-key {}", cert.display(), key.display()))?;
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Simulate every scenario with every strategy (seeded, deterministic) and write
    /// results.csv, results.md, results.json and plots into --out.
    Strategies {
        /// Scenarios, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// Strategies, comma-separated: BALANCER[+SCHEDULER], wasm:BALANCER[+SCHEDULER],
        /// plugin:NAME (default: every built-in balancer native and wasm, and
        /// peak-ewma+adaptive, plus every --plugin).
        #[arg(long, value_delimiter = ',')]
        strategies: Vec<String>,
        /// A balancer component to benchmark too, as plugin:FILE_STEM; repeatable.
        #[arg(long = "plugin")]
        plugins: Vec<PathBuf>,
        /// Seeds per (scenario, strategy).
        #[arg(long, default_value_t = 3)]
        seeds: u32,
        /// The first seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Duration multiplier for every scenario.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Output directory.
        #[arg(long, default_value = "./bench-results")]
        out: PathBuf,
        /// Skip the plots.
        #[arg(long)]
        no_plots: bool,
        /// List the scenarios and strategies and exit.
        #[arg(long)]
        list: bool,
        /// Also run the scenarios live: real loopback backends through the gateway (wall
        /// clock: scale × each scenario's duration per strategy), reported beside the
        /// simulation in live.md, live.csv and live.json.
        #[arg(long)]
        live: bool,
        /// Strategies for live mode, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "round-robin,least-request,peak-ewma,peak-ewma+adaptive")]
        live_strategies: Vec<String>,
        /// Try a progressive rollout on every run (a plan, as `plugin load --rollout` takes):
        /// each strategy is the stable version and --candidate runs beside it, judged on the
        /// simulated gateway's figures; the decisions go to rollouts.md.
        #[arg(long, requires = "candidate")]
        rollout: Option<String>,
        /// The strategy rolled out with --rollout.
        #[arg(long, requires = "rollout")]
        candidate: Option<String>,
    },
}

async fn bench(command: BenchCommand) -> Result<(), commands::Failure> {
    let BenchCommand::Strategies {
        scenarios,
        strategies,
        plugins,
        seeds,
        seed,
        scale,
        out,
        no_plots,
        list,
        live,
        live_strategies,
        rollout,
        candidate,
    } = command;
    if list {
        for s in sextant_sim::scenario::all() {
            commands::out(&format!("scenario {:<14} {}", s.name, s.description))?;
        }
        for s in sextant_sim::strategy::default_names() {
            commands::out(&format!("strategy {s}"))?;
        }
        return commands::out(
            "strategy BALANCER+SCHEDULER (schedulers: adaptive, slow-start, gray-split, locality), plugin:NAME with --plugin",
        );
    }
    let options = sextant_sim::BenchOptions {
        scenarios: scenarios.clone(),
        strategies,
        plugins: plugins.clone(),
        seeds,
        first_seed: seed,
        scale,
        out: Some(out.clone()),
        plots: !no_plots,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        rollout: rollout.zip(candidate),
    };
    let report = sextant_sim::run(&options).map_err(|e| match e {
        sextant_sim::BenchError::UnknownScenario { .. }
        | sextant_sim::BenchError::Strategy(_)
        | sextant_sim::BenchError::Options(_) => commands::Failure::usage(e.to_string()),
        e => commands::Failure::other(e.to_string()),
    })?;
    for f in &report.failures {
        eprintln!("sextant: not run: {f}");
    }
    commands::out(&std::fs::read_to_string(out.join("results.md")).unwrap_or_default())?;
    for line in &report.rollouts {
        commands::out(line)?;
    }
    let mut files = report.files.len();
    let mut not_run = report.not_run.clone();
    if live {
        let (written, failed) =
            bench_live(&report.rows, &scenarios, &plugins, &live_strategies, seed, scale, &out).await?;
        files += written;
        not_run.extend(failed.into_iter().map(|f| format!("live: {f}")));
    }
    commands::out(&format!("{files} files in {}", out.display()))?;
    if not_run.is_empty() {
        return Ok(());
    }
    // The results of what ran are written; what was asked for and did not run fails the command.
    Err(commands::Failure::plugin(format!("{} asked for did not run: {}", not_run.len(), not_run.join("; "))))
}

/// Live mode: the same scenarios through the real gateway; writes live.md, live.csv, live.json.
/// Returns the files written and the plugins or strategies that did not run.
async fn bench_live(
    sim: &[sextant_sim::Row],
    scenarios: &[String],
    plugins: &[PathBuf],
    strategies: &[String],
    seed: u64,
    scale: f64,
    out: &std::path::Path,
) -> Result<(usize, Vec<String>), commands::Failure> {
    let mut failed = Vec::new();
    let scenarios: Vec<_> = if scenarios.is_empty() {
        sextant_sim::scenario::all()
    } else {
        // Checked by the simulation already.
        scenarios.iter().filter_map(|n| sextant_sim::scenario::by_name(n)).collect()
    };
    let host = sextant_plugin::PluginHost::new(sextant_plugin::HostConfig::default())
        .map_err(|e| commands::Failure::other(e.to_string()))?;
    let mut loaded = Vec::new();
    for path in plugins {
        match sextant_sim::strategy::load_plugin(&host, path) {
            Ok(p) => loaded.push(p),
            Err(e) => {
                eprintln!("sextant: live: not run: {e}");
                failed.push(e.to_string());
            }
        }
    }
    let mut built = Vec::new();
    for name in strategies {
        match sextant_sim::strategy::build(&host, name, &loaded) {
            Ok(s) => built.push(s),
            Err(e) if name.starts_with("plugin:") => {
                eprintln!("sextant: live: not run: {e}");
                failed.push(e.to_string());
            }
            Err(e) => return Err(commands::Failure::usage(format!("--live-strategies: {e}"))),
        }
    }
    let total = scenarios.len() * built.len();
    let secs: f64 = scenarios.iter().map(|s| s.duration_s * scale).sum::<f64>() * built.len() as f64;
    eprintln!("sextant: live mode: {total} runs, about {secs:.0} s");
    let mut done = 0;
    let rows = sextant_server::live::run_all(&host, &scenarios, &built, seed, scale, |scenario, strategy| {
        done += 1;
        eprintln!("sextant: live {done}/{total}: {scenario} / {strategy}");
    })
    .await
    .map_err(|e| commands::Failure::other(e.to_string()))?;
    let table = sextant_server::live::side_by_side(sim, &rows, scale);
    let write = |name: &str, text: String| {
        std::fs::write(out.join(name), text).map_err(|e| commands::Failure::other(format!("writing {name}: {e}")))
    };
    write("live.md", table.clone())?;
    write("live.csv", sextant_sim::report::csv(&rows))?;
    write("live.json", serde_json::to_string_pretty(&rows).unwrap_or_default())?;
    commands::out(&table)?;
    Ok((3, failed))
}

async fn demo(options: sextant_server::demo::DemoOptions, json: bool) -> Result<(), commands::Failure> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut broken = None;
    let summary = sextant_server::demo::run(options, shutdown_signal(), |frame| {
        let text = if json {
            serde_json::to_string(frame).unwrap_or_default()
        } else if terminal {
            format!("\x1b[2J\x1b[H{}", sextant_server::demo::render(frame))
        } else {
            sextant_server::demo::render(frame)
        };
        if let Err(e) = commands::out(&text) {
            broken.get_or_insert(e);
        }
    })
    .await
    .map_err(|e| commands::Failure::other(e.to_string()))?;
    if let Some(e) = broken {
        return Err(e);
    }
    if json {
        return commands::out(&serde_json::json!({ "summary": summary }).to_string());
    }
    commands::out("\ntimeline:")?;
    for (t, what) in &summary.events {
        commands::out(&format!("  {t:>5.1}s  {what}"))?;
    }
    let served: Vec<String> = summary.served.iter().map(|(n, c)| format!("{n} {c}")).collect();
    commands::out(&format!(
        "sent {}, ok {}, failed {}, gateway retries {}; served: {}",
        summary.sent,
        summary.ok,
        summary.failed,
        summary.retries,
        served.join(", ")
    ))
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops sextant");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve { .. } | Command::Gateway(_));
    let name = match cli.command {
        Command::Gateway(_) => "sextant-gateway",
        _ => "sextant",
    };
    let json = matches!(cli.log_format, LogFormat::Json);
    // Held until the end of main: dropping it flushes the spans not sent yet.
    let traces = match telemetry::init(json, if serving { "info" } else { "warn" }, cli.otlp_endpoint.as_deref(), name)
    {
        Ok(traces) => traces,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "sextant: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve {
            data_dir,
            listen,
            admin,
            store,
            etcd_endpoints,
            etcd_prefix,
            etcd_timeout_ms,
            history,
            grace_ms,
            acl,
            acl_poll_ms,
            allow_open,
            admin_tls,
            metrics,
            max_request_rate,
            max_request_burst,
            max_registrations_per_connection,
            max_watches_per_connection,
            client_ca,
            cert,
            key,
            plugins,
            plugins_poll_ms,
            balancer,
            rollback_hosts,
            rollback_window_secs,
            plugin_host,
        } => {
            let store = match store {
                StoreKind::Embedded => StoreConfig::Embedded,
                StoreKind::Etcd => StoreConfig::Etcd(EtcdOptions {
                    endpoints: etcd_endpoints,
                    prefix: etcd_prefix,
                    timeout: Duration::from_millis(etcd_timeout_ms.max(1)),
                }),
            };
            let limits = sextant_quic::access::Limits {
                requests_per_second: std::num::NonZeroU32::new(max_request_rate),
                burst: std::num::NonZeroU32::new(max_request_burst).unwrap_or(std::num::NonZeroU32::MIN),
                registrations_per_connection: max_registrations_per_connection,
                watches_per_connection: max_watches_per_connection,
            };
            let config = ServeConfig {
                data_dir,
                store,
                admin,
                admin_tls,
                metrics,
                allow_open,
                acl_poll: Duration::from_millis(acl_poll_ms.max(10)),
                limits,
                history_capacity: history,
                listen,
                grace: Duration::from_millis(grace_ms),
                acl,
                client_ca,
                cert: cert.zip(key),
                plugins_dir: plugins,
                plugins_poll: Duration::from_millis(plugins_poll_ms.max(10)),
                default_balancer: balancer,
                fleet_rule: sextant_control::FleetRule {
                    hosts: rollback_hosts,
                    window: Duration::from_secs(rollback_window_secs),
                },
                plugin_host: plugin_host.config(),
            };
            run(config, shutdown_signal()).await.map_err(commands::Failure::from)
        }
        Command::Register { client, service, addr, id, weight, meta, zone, instance_version, persistent, ttl } => {
            let spec = commands::RegisterSpec {
                service,
                addr,
                id,
                weight,
                meta,
                zone,
                version: instance_version,
                persistent,
                ttl,
            };
            commands::register(&client, spec).await
        }
        Command::Deregister { client, service, id } => commands::deregister(&client, &service, &id).await,
        Command::List { client, scope, zone } => commands::list(&client, &scope, zone.as_deref()).await,
        Command::Watch { client, scope, reader, cache } => commands::watch(&client, &scope, &reader, cache).await,
        Command::Pick { client, service, hash_key, headers, tried } => {
            commands::pick(&client, &service, hash_key, &headers, tried).await
        }
        Command::Config { client, command } => commands::config(&client, command).await,
        Command::Plugin { client, command } => commands::plugin(&client, command).await,
        Command::Gateway(args) => gateway::run(args, traces.is_some(), shutdown_signal()).await,
        Command::Bench { command } => bench(command).await,
        Command::Tls { command: TlsCommand::Init { dir, hosts, clients } } => tls_init(&dir, &hosts, &clients),
        Command::Demo { duration, rps, listen, data_dir, json } => {
            let options = sextant_server::demo::DemoOptions {
                duration: Duration::from_secs(duration.max(1)),
                rps: rps.max(1),
                listen,
                data_dir,
            };
            demo(options, json).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("sextant: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}
