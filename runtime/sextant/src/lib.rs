//! # sextant, embedded in your gateway
//!
//! The one crate a gateway author depends on: service discovery (a registry of your own, or
//! one or more remote sextant servers followed over QUIC) and per-service balancing, health
//! and scheduling, each a native built-in or a WebAssembly component swapped while traffic
//! flows. [`prelude`] has what an embedding names; the modules below re-export the crates
//! sextant is built from, for everything else.
//!
//! ## Embed it: pick, forward, finish
//!
//! A [`Router`](prelude::Router) reads a [`Discovery`](prelude::Discovery) (here a local
//! registry on the embedded store). [`Router::pick`](prelude::Router::pick) chooses an
//! endpoint of a service through the service's balancer and returns a guard; forward the
//! request to [`PickGuard::addr`](prelude::PickGuard::addr), then hand the guard the
//! [`Outcome`](prelude::Outcome). The outcome feeds live load (in-flight, PeakEWMA), the
//! per-endpoint circuit breaker, passive health (outlier ejection, never more than
//! `max_ejected_percent` of the endpoints) and the scheduler's statistics. A guard dropped
//! without an outcome releases its in-flight place and reports nothing. To weigh whole
//! responses rather than their headers, wrap the upstream body in
//! [`FinishOnEnd`](prelude::FinishOnEnd): the guard finishes when the body ends (as a failure
//! if it fails; unrecorded if the client goes away first);
//! [`PickGuard::finish_with_latency`](prelude::PickGuard::finish_with_latency) takes a latency
//! you measured.
//!
//! ```
//! use std::sync::Arc;
//!
//! use sextant::prelude::*;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! // A registry of your own, durable in `dir` (or follow remote servers: see below).
//! let registry = Registry::start(EmbeddedStore::open(dir.path(), EmbeddedOptions::default())?, 1024).await?;
//! let orders = ServiceKey::parse("shop/web/orders")?;
//! for port in [8081, 8082] {
//!     let mut backend = Instance::new(orders.clone(), "127.0.0.1".parse()?, port);
//!     backend.ephemeral = false;
//!     registry.put(Record::Instance(Arc::new(backend)), None).await?;
//! }
//!
//! // One plugin host per process (wasmtime's engine, the compile cache); the router's
//! // defaults apply to every service it routes.
//! let host = PluginHost::new(HostConfig::default())?;
//! let router = Router::new(host, Arc::new(registry.clone()), ServicePolicy::default());
//!
//! // Per request: pick, forward to guard.addr(), finish with how it went.
//! let guard = router.pick(&orders, &mut PickRequest::default())?;
//! assert!([8081, 8082].contains(&guard.addr().port()));
//! guard.finish(Outcome::http(200));
//!
//! // Sticky routing: the same affinity key lands on the same endpoint with a hash balancer.
//! router.load(&orders, PluginKind::Balancer, PluginSpec::builtin("ring-hash"))?;
//! let first = router.pick(&orders, &mut PickRequest::with_affinity("user-42"))?;
//! let again = router.pick(&orders, &mut PickRequest::with_affinity("user-42"))?;
//! assert_eq!(first.addr(), again.addr());
//! drop((first, again)); // released unrecorded
//!
//! // On exit: refuse new picks, stop the background work, wait for the requests in flight.
//! let left = router.shutdown(std::time::Duration::from_secs(5)).await;
//! assert_eq!(left, 0);
//! assert!(matches!(router.pick(&orders, &mut PickRequest::default()), Err(PickError::ShutDown)));
//! # Ok(())
//! # }
//! ```
//!
//! From an HTTP request, [`PickRequest::from_headers`](prelude::FromHeaders::from_headers)
//! takes the affinity key from a header (hashed with [`affinity_hash`](prelude::affinity_hash),
//! FNV-1a over the key's bytes, then mixed: the same wherever it is computed) and hands the
//! balancer the headers you name. [`Router::pick_avoiding`](prelude::Router::pick_avoiding)
//! prefers endpoints a retry has not tried yet; [`Router::retry_plan`](prelude::Router::retry_plan)
//! and [`Router::retry_allowed`](prelude::Router::retry_allowed) give the service's attempts,
//! backoff and retry budget; [`Router::service`](prelude::Router::service) looks a service up
//! once and offers the same calls, for a proxy that makes several per request.
//! [`Router::builder`](prelude::Router::builder) takes per-service
//! configurations and a health sink; [`Router::shutdown`](prelude::Router::shutdown) refuses
//! new picks, stops the router's background work (maintenance every 25 ms, active health
//! checks, remote discovery) and waits, up to a grace period, for the requests in flight.
//!
//! Two complete gateways are in `examples/`: `axum-gateway` (axum and hyper, the guard
//! finished when the response body ends) and `pingora-gateway` (pingora's `ProxyHttp`: pick in
//! `upstream_peer`, the guard in the request context, retry a failed connect on another
//! endpoint in `fail_to_connect`, finish in `logging` with
//! [`Outcome::from_head`](prelude::Outcome::from_head)). Each runs in the test suite with
//! `--self-test`: 2,000 requests while balancers are swapped, none may fail.
//!
//! ## Load and swap a WebAssembly balancer
//!
//! [`PluginSpec::wasm`](prelude::PluginSpec::wasm) compiles and checks a component (any
//! language, built against sextant's `wit/` contract); [`Router::load`](prelude::Router::load)
//! swaps it into one service's slot after a self-test on a synthetic snapshot. In-flight
//! picks finish on the old version; no request is dropped. A component that is not wasm, a
//! core module, another world or contract version, a configuration its `init` refuses, or a
//! failed self-test is a typed [`LoadError`](prelude::LoadError) and changes nothing: the
//! active plugin keeps serving. A plugin that traps, spins past its CPU deadline or exceeds
//! its memory while serving is answered by the native default for that pick, and rolled back
//! after repeated faults.
//!
//! Costs: compiling blocks the calling thread (about 0.2 s for a built-in-sized component in
//! a release build, seconds in a debug one; the host caches by sha256, so a second compile
//! of the same bytes is free), so compile on a blocking thread
//! (`tokio::task::spawn_blocking`), not on a worker that serves requests. A swap is an atomic
//! pointer swap after the self-test (well under a millisecond). A pick through a wasm
//! balancer costs about a microsecond more than a native one.
//! [`Router::load_component`](prelude::Router::load_component) does both steps from async
//! code (the compile on a blocking thread), and
//! [`Router::set_default`](prelude::Router::set_default) makes a plugin the default of every
//! service without a configuration of its own, those routed later included.
//!
//! ```
//! # use std::sync::Arc;
//! # use sextant::prelude::*;
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let registry = Registry::start(EmbeddedStore::open(dir.path(), EmbeddedOptions::default())?, 1024).await?;
//! # let orders = ServiceKey::parse("shop/web/orders")?;
//! # let mut backend = Instance::new(orders.clone(), "127.0.0.1".parse()?, 8081);
//! # backend.ephemeral = false;
//! # registry.put(Record::Instance(Arc::new(backend)), None).await?;
//! # let router = Router::new(PluginHost::new(HostConfig::default())?, Arc::new(registry), ServicePolicy::default());
//! # let component = std::fs::read(sextant_plugin_artifacts::path("ring-hash").expect("built"))?;
//! // `component`: the bytes of a `.wasm` balancer component.
//! let host = router.host().clone();
//! let spec = tokio::task::spawn_blocking(move || PluginSpec::wasm(&host, "ring-hash", &component)).await??;
//! let version = router.load(&orders, PluginKind::Balancer, spec.with_config(r#"{"ring_size": 1024}"#))?;
//! assert_eq!(version.name, "ring-hash");
//!
//! // Not a component: a typed error, and the active balancer keeps serving.
//! let refused = PluginSpec::wasm(router.host(), "junk", b"not wasm at all");
//! assert!(matches!(refused, Err(LoadError::NotWasm)));
//! assert!(router.pick(&orders, &mut PickRequest::default()).is_ok());
//! # Ok(())
//! # }
//! ```
//!
//! ## Follow remote sextant servers
//!
//! [`RemoteDiscovery::follow`](prelude::RemoteDiscovery::follow) keeps a scope of a remote
//! registry in local snapshots through the client library: failover between the servers
//! given, resume from the last revision after a reconnect, empty-push protection, and (with
//! `cache_dir` in [`ClientOptions`](prelude::ClientOptions)) an on-disk copy served, marked stale,
//! while no server answers. A [`Router`](prelude::Router) on it also follows the servers'
//! plugin records, with nothing more to start: what `sextant plugin load --bind` binds to a
//! service you route is fetched by sha256, compiled and swapped in under traffic, a rollback
//! or a delete follows, and a version that faults often enough to be rolled back here is
//! reported to the control plane, so the fleet rolls back with you.
//! [`RouterBuilder::register_as`](prelude::RouterBuilder::register_as) registers your host and
//! keeps what it runs in the registration's metadata, as `sextant gateway` does (`sextant
//! plugin list` then shows your host); [`Router::plugins`](prelude::Router::plugins) is the
//! follower ([`PluginFollower::report`](prelude::PluginFollower::report),
//! [`activations`](prelude::PluginFollower::activations));
//! [`RouterBuilder::ignore_plugin_records`](prelude::RouterBuilder::ignore_plugin_records)
//! keeps your router on the plugins you configure.
//!
//! Until the first view arrives a pick answers
//! [`PickError::NotSynced`](prelude::PickError::NotSynced) (not
//! [`NoEndpoints`](prelude::PickError::NoEndpoints), which means the service has no endpoint
//! traffic may go to); [`Router::ready`](prelude::Router::ready) is your readiness probe and
//! [`Router::wait_ready`](prelude::Router::wait_ready) waits for it. A service outside the
//! followed scope answers [`PickError::NotFollowed`](prelude::PickError::NotFollowed).
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use sextant::prelude::*;
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let servers = vec!["10.0.0.1:7600".parse()?, "10.0.0.2:7600".parse()?];
//! // The CA that signed the servers' certificates (`sextant tls init`, or the data
//! // directory's `tls/ca.pem` of a development server).
//! let client = Client::new(ClientOptions::new(servers, "ca.pem".into()))?;
//! let shop = Scope::Namespace("shop".parse()?);
//! let discovery = RemoteDiscovery::follow(client.clone(), shop);
//! // This host in the registry: `sextant plugin list` shows what it runs.
//! let me = Instance::new(ServiceKey::parse("shop/edge/my-proxy")?, "10.0.0.9".parse()?, 8080);
//! let router = Router::builder(PluginHost::new(HostConfig::default())?, Arc::new(discovery))
//!     .register_as(me)
//!     .build();
//! // Serve once the first view is in (bounded: no server and no cache never syncs).
//! tokio::time::timeout(std::time::Duration::from_secs(10), router.wait_ready()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Defaults
//!
//! [`ServicePolicy::default`](prelude::ServicePolicy): native `peak-ewma` balancer, native
//! `standard` health policy (consecutive thresholds on probes, outlier detection on
//! traffic), no scheduler (registered weights), 1 s statistics windows, no active health
//! checks, a breaker per endpoint, retries (for callers that retry) 3 attempts within a
//! budget of 20% of the requests, no rate limit, at most 50% of the endpoints ejected.
//! [`ClientOptions::new`](prelude::ClientOptions::new): server name `localhost` in the
//! servers' certificates, no client certificate, no token, no cache, 3 s to connect. Each field's documentation gives its own default;
//! the built-ins' names and JSON configurations are in `plugins/builtins` (the
//! [`builtins`](plugin::builtins) module lists them: `BALANCERS`, `HEALTH_POLICIES`,
//! `SCHEDULERS`).
//!
//! ## Features
//!
//! - `embedded` (default): a registry of the gateway's own ([`Registry`](prelude::Registry)
//!   on the [`EmbeddedStore`](prelude::EmbeddedStore), or etcd through [`store`]) as a
//!   router's discovery and health sink. Without it (`default-features = false`) the crate
//!   follows remote sextant servers only ([`RemoteDiscovery`](prelude::RemoteDiscovery)), and
//!   neither redb nor etcd-client is built; the plugin host (wasmtime) is always there.
#![deny(missing_docs)]

/// What an embedding names, in one import.
pub mod prelude {
    pub use sextant_core::{Instance, InstanceKey, Metadata, Record, Scope, ServiceKey};
    pub use sextant_gateway::{
        Discovery, FinishOnEnd, FollowOptions, FromHeaders, HealthCheck, Outcome, PickError, PickGuard, PickRequest,
        PluginFollower, RemoteDiscovery, RetryPlan, Router, RouterBuilder, ServicePolicy, ServiceRef, SwapError,
    };
    pub use sextant_plugin::{HostConfig, HostError, LoadError, PluginHost, PluginKind, PluginSpec, affinity_hash};
    pub use sextant_quic::client::{Client, ClientError, ClientOptions};
    #[cfg(feature = "embedded")]
    pub use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};
}

/// The model: services, instances, revisions, snapshots (`sextant-core`).
pub use sextant_core as core;
/// The router, health checks, resilience, the HTTP proxy, remote discovery, plugin
/// following (`sextant-gateway`).
pub use sextant_gateway as gateway;
/// The plugin host: wasmtime, slots, built-ins (`sextant-plugin`).
pub use sextant_plugin as plugin;
/// The QUIC client library and TLS (`sextant-quic`).
pub use sextant_quic as quic;
/// The stores and the registry (`sextant-store`; feature `embedded`).
#[cfg(feature = "embedded")]
pub use sextant_store as store;
