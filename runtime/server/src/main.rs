//! The `sextant` command line. See `sextant --help` and DESIGN.md's CLI contract.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use sextant_server::{ServeConfig, run};
use tracing_subscriber::EnvFilter;

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
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the registry: embedded store, admin HTTP API (health, metrics, status, JSON API).
    Serve {
        /// Data directory of the embedded store.
        #[arg(long, default_value = "./sextant-data", env = "SEXTANT_DATA_DIR")]
        data_dir: PathBuf,
        /// Admin HTTP address (health, metrics, status, JSON API).
        #[arg(long, default_value = "127.0.0.1:7601", env = "SEXTANT_ADMIN")]
        admin: SocketAddr,
        /// Storage backend.
        #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
        store: StoreKind,
        /// Events kept so watchers can resume from a revision.
        #[arg(long, default_value_t = 16 * 1024)]
        history: usize,
    },
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SEXTANT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
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
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Serve { data_dir, admin, store: StoreKind::Embedded, history } => {
            let config = ServeConfig { data_dir, admin, history_capacity: history };
            run(config, shutdown_signal()).await.context("sextant serve failed")
        }
    }
}
