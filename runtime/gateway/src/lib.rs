//! The gateway data plane: what a gateway host process embeds to send traffic through
//! sextant.
//!
//! This crate owns:
//! - [`Router`], the embedding API: `pick(service, request)` through the service's balancer
//!   slot returns a [`PickGuard`]; finishing it with an [`Outcome`] feeds live load, the
//!   circuit breaker, passive health (the health plugin's outlier verdicts, ejections capped
//!   to a share of the endpoints) and the scheduler's statistics. The view comes from a local
//!   registry or a remote sextant ([`RemoteDiscovery`], through the client library and its
//!   failover cache); every time-driven decision reads the router's [`Clock`] (the system's,
//!   or a [`ManualClock`] a test or simulator moves);
//! - active health checks run by the host ([`HealthCheck`]: HTTP with a bounded body excerpt,
//!   TCP connect; interval, jitter, timeout), decided by the health plugin; persistent
//!   instances are marked unhealthy in the registry, never deleted; the protection
//!   threshold holds;
//! - resilience primitives ([`resilience`]): per-endpoint circuit breaker, retry budget with
//!   exponential backoff and jitter, per-service token bucket;
//! - an HTTP gateway on hyper ([`proxy`]): routes by Host and path prefix, retries within
//!   the budget, graceful drain on shutdown; and sample HTTP backends ([`backend`]) that
//!   turn slow, flaky, hang, reset or send garbage, for demos, tests and benchmarks;
//! - the configuration file ([`config`]): routes, policies and resilience in one JSON
//!   document, checked before anything starts;
//! - "why this endpoint" ([`explain`]): what the gateway did with a request (attempts, the
//!   balancer and version that picked, the endpoints left out and why), answered in a header
//!   to the requests the configuration allows, and the JSON-lines access log
//!   ([`access_log`]) that records it for every request; and the spans of every request and
//!   attempt, with trace context to the backends ([`trace`]);
//! - backend load reports ([`load_report`]): the ORCA `endpoint-load-metrics` header of each
//!   response (text and JSON forms), parsed within bounds, kept per endpoint with its age
//!   ([`PickGuard::report_load`] for a proxy that reads them itself) and shown in the status;
//! - the gateway's Prometheus metrics ([`metrics`]): requests, latency histograms,
//!   attempts, retries, rate limits, endpoint health and breakers; and the plugin series
//!   every host exports, servers included ([`plugin_metrics`]: versions and load times per
//!   slot, calls and faults per version, the plugin host's limits and log drops);
//! - plugins that follow the store ([`follow`]): the plugin records bound to the routed
//!   services, components fetched by sha256 and cached on disk, swapped into the services, with
//!   a per-plugin report a gateway publishes in its registration; while a record's rollout
//!   runs, its candidate beside the balancer's version, and both versions' outcome windows
//!   (`trial.rs`) reported the same way for the control plane's judge; and the gateway's own
//!   health verdicts ([`verdicts`]: down, ejected, breaker open, until when) in the same
//!   registration, so the fleet's readers see health as each gateway sees it.
#![deny(missing_docs)]
mod body;
mod builder;
mod clock;
mod discovery;
mod guard;
mod health;
mod outcome;
mod request;
mod rotation;
mod router;
mod service;
mod status;
mod trial;

pub mod access_log;
pub mod backend;
pub mod config;
pub mod explain;
pub mod follow;
pub use sextant_plugin::builtins::report as load_report;
pub mod metrics;
pub mod plugin_metrics;
pub mod proxy;
pub mod remote;
pub mod resilience;
pub mod trace;
pub mod verdicts;

pub use body::FinishOnEnd;
pub use builder::RouterBuilder;
pub use clock::{Clock, ManualClock, SystemClock};
pub use discovery::{Discovery, HealthSink};
pub use follow::{Activation, FollowOptions, PluginFollower};
pub use guard::PickGuard;
pub use health::{CheckKind, HEALTH_PORT_KEY, HealthCheck, MAX_PROBE_BODY, probe};
pub use outcome::Outcome;
pub use remote::RemoteDiscovery;
pub use request::FromHeaders;
pub use router::{PickError, RetryPlan, Router, ServiceRef, SwapError};
pub use service::{LoadProbe, ServicePolicy, WindowSummary};
pub use sextant_plugin::PickRequest;
pub use status::{EndpointStatus, ServiceStatus};

/// The former name of [`ServicePolicy`] (a service's policy: balancer, health, scheduler,
/// resilience).
#[deprecated(since = "0.1.0", note = "renamed ServicePolicy: \"route\" is kept for the gateway's HTTP rules")]
pub type RouteConfig = ServicePolicy;
/// The former name of [`PickError`].
#[deprecated(since = "0.1.0", note = "renamed PickError")]
pub type RouteError = PickError;
/// The former name of [`ServiceStatus`].
#[deprecated(since = "0.1.0", note = "renamed ServiceStatus")]
pub type RouteStatus = ServiceStatus;
