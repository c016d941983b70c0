//! Embedding sextant's `Router` in your own proxy: follow a running `sextant serve`, run the
//! plugins bound to a service in the store, pick an endpoint per request, report how it went.
//! (`sextant gateway` is the complete HTTP gateway built on the same pieces.)
//!
//! Run `bash scripts/run` in one terminal, register an instance, then:
//!
//! ```sh
//! cargo run -p sextant-examples --example gateway -- \
//!     --server 127.0.0.1:7600 --ca sextant-data/tls/ca.pem --service default/default/orders
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sextant_core::{Instance, Scope, ServiceKey};
use sextant_gateway::{Outcome, PickRequest, RemoteDiscovery, Router};
use sextant_plugin::{HostConfig, PluginHost};
use sextant_quic::client::{Client, ClientOptions};

#[derive(Debug, Parser)]
struct Args {
    /// sextant servers (QUIC), repeatable: the client fails over between them.
    #[arg(long = "server", required = true)]
    servers: Vec<SocketAddr>,
    /// CA certificate that signed the servers' certificates.
    #[arg(long)]
    ca: PathBuf,
    /// The service to pick from.
    #[arg(long)]
    service: String,
    /// Picks to make (one per second).
    #[arg(long, default_value_t = 10)]
    picks: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let args = Args::parse();
    let service = ServiceKey::parse(&args.service)?;

    // Discovery: the service's instances, followed over QUIC (failover, resume).
    let client = Client::new(ClientOptions::new(args.servers, args.ca))?;
    let discovery = RemoteDiscovery::follow(client.clone(), Scope::Service(service.clone()));

    // The router: per-service balancer, health and breaker; native peak-ewma by default. It
    // follows the servers' plugin records too: a plugin bound to the service in the store
    // (`sextant plugin load --bind`) is swapped in, and this host, registered under
    // `default/default/example-gateway`, shows in `sextant plugin list`.
    let host = PluginHost::new(HostConfig::default())?;
    let me = Instance::new(ServiceKey::parse("default/default/example-gateway")?, "127.0.0.1".parse()?, 9);
    let router = Router::builder(host, Arc::new(discovery)).register_as(me).build();
    tokio::time::timeout(Duration::from_secs(10), router.wait_ready()).await?;

    for _ in 0..args.picks {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match router.pick(&service, &mut PickRequest::default()) {
            Ok(guard) => {
                tracing::info!(addr = %guard.addr(), balancer_version = guard.version(), "picked");
                // Forward the request to guard.addr() here; then say how it went.
                guard.finish(Outcome::http(200));
            }
            Err(e) => tracing::warn!(error = %e, "no pick"),
        }
    }
    Ok(())
}
