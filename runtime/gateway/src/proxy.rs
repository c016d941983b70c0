//! An HTTP/1.1 gateway on hyper: routes requests by Host and path prefix to services, picks
//! an endpoint through the [`Router`], forwards, reports the outcome, and retries failed
//! attempts (idempotent methods, or any method when the connection was never made) within
//! the service's retry budget with backoff and jitter, avoiding endpoints already tried.
//! On shutdown it stops accepting and drains the requests in flight.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use serde::{Deserialize, Serialize};
use sextant_core::ServiceKey;
use sextant_plugin::PickRequest;
use tokio::net::TcpListener;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::access_log::{AccessEntry, AccessLog};
use crate::explain::{Attempt, Excluded, Exclusion, ExplainConfig, Explanation, WHY_HEADER};
use crate::metrics::SharedMetrics;
use crate::outcome::Outcome;
use crate::request::FromHeaders;
use crate::resilience::millis;
use crate::router::{PickError, RetryPlan, Router};
use crate::trace::Propagation;

/// The response body type.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Response header naming the instance that answered.
pub const UPSTREAM_HEADER: &str = "x-sextant-upstream";

/// One routing rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Matches the `Host` header (port ignored); none matches any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Matches paths starting with this; the longest match wins, host rules first.
    #[serde(default = "root")]
    pub path_prefix: String,
    /// `NS/GROUP/NAME` (or `NAME` in `default/default`).
    pub service: String,
    /// A request header whose value is the affinity key for hash balancers.
    #[serde(default)]
    pub hash_header: Option<String>,
    /// Request headers handed to the balancer (for header-based routing).
    #[serde(default)]
    pub headers: Vec<String>,
}

impl Rule {
    /// Every request whose path starts with `path_prefix`, any host, to `service`.
    #[must_use]
    pub fn prefix(path_prefix: &str, service: &str) -> Self {
        Self {
            host: None,
            path_prefix: path_prefix.into(),
            service: service.into(),
            hash_header: None,
            headers: Vec::new(),
        }
    }
}

fn root() -> String {
    "/".into()
}

/// Gateway settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Routing rules.
    pub routes: Vec<Rule>,
    /// Timeout of one attempt (until the response headers).
    #[serde(with = "millis")]
    pub attempt_timeout: Duration,
    /// Largest request body buffered (bodies are buffered so attempts can be replayed).
    pub max_body: usize,
    /// Which requests are answered with what the gateway did and why
    /// ([`WHY_HEADER`]); none: no request is.
    pub explain: Option<ExplainConfig>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self { routes: Vec::new(), attempt_timeout: Duration::from_secs(5), max_body: 1 << 20, explain: None }
    }
}

/// A configuration the gateway cannot run: which route, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("route {index}: {problem}")]
pub struct ConfigError {
    /// Which rule.
    pub index: usize,
    /// What is wrong.
    pub problem: RuleProblem,
}

/// What is wrong with a route rule.
#[derive(Debug, thiserror::Error)]
pub enum RuleProblem {
    /// Its service is not a valid `namespace/group/name`.
    #[error("service {service:?}: {source}")]
    Service {
        /// The name given.
        service: String,
        /// Why it is invalid.
        source: sextant_core::ValidationError,
    },
    /// Its path prefix does not start with `/`.
    #[error("path_prefix {0:?} must start with /")]
    PathPrefix(String),
}

/// Where requests go.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// Through discovery and the balancer.
    Router(Router),
    /// Straight to one address: the baseline the discovery path is measured against.
    Static(SocketAddr),
}

/// [`Upstream`] as a request uses it: a static upstream's authority is made once.
#[derive(Debug)]
enum Destination {
    Router(Router),
    Static(Authority),
}

/// Requests and their fates since start.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests received.
    pub requests: AtomicU64,
    /// Requests answered with a 5xx made by the gateway (no endpoint, all attempts failed).
    pub failed: AtomicU64,
    /// Retries made.
    pub retries: AtomicU64,
    /// Requests refused by a rate limit.
    pub rate_limited: AtomicU64,
}

struct CompiledRule {
    rule: Rule,
    service: ServiceKey,
    /// `[HOST]PREFIX`, the route's metrics label.
    label: String,
    /// The service as a metrics label.
    service_label: String,
    /// Its metrics series, resolved at its first request.
    series: std::sync::OnceLock<crate::metrics::RouteSeries>,
}

/// The configuration in force and its rules, swapped as one.
struct Routing {
    config: GatewayConfig,
    rules: Vec<CompiledRule>,
    /// The rules for one host, by host (lowercase), each a prefix index.
    by_host: HashMap<String, PrefixIndex>,
    /// The rules for any host.
    any_host: PrefixIndex,
}

/// The rules of one host by path prefix: which rule a prefix selects (the first of the
/// sorted rules with that prefix), and the prefix lengths present, longest first. A lookup
/// tries each length once: a hash lookup per distinct length, whatever the number of rules.
#[derive(Default)]
struct PrefixIndex {
    by_prefix: HashMap<String, usize>,
    lengths: Vec<usize>,
}

impl PrefixIndex {
    fn insert(&mut self, prefix: &str, rule: usize) {
        if !self.by_prefix.contains_key(prefix) {
            self.by_prefix.insert(prefix.to_owned(), rule);
            if let Err(at) = self.lengths.binary_search_by(|l| prefix.len().cmp(l)) {
                self.lengths.insert(at, prefix.len());
            }
        }
    }

    /// The rule of the longest prefix `path` starts with.
    fn longest(&self, path: &str) -> Option<usize> {
        self.lengths
            .iter()
            .filter(|&&l| l <= path.len() && path.is_char_boundary(l))
            .find_map(|&l| self.by_prefix.get(&path[..l]).copied())
    }
}

impl Routing {
    fn compile(config: GatewayConfig) -> Result<Self, ConfigError> {
        let mut rules = Vec::with_capacity(config.routes.len());
        for (index, rule) in config.routes.iter().enumerate() {
            let service = ServiceKey::parse(&rule.service).map_err(|source| ConfigError {
                index,
                problem: RuleProblem::Service { service: rule.service.clone(), source },
            })?;
            if !rule.path_prefix.starts_with('/') {
                return Err(ConfigError { index, problem: RuleProblem::PathPrefix(rule.path_prefix.clone()) });
            }
            let label = format!("{}{}", rule.host.as_deref().unwrap_or(""), rule.path_prefix);
            let service_label = service.to_string();
            rules.push(CompiledRule {
                rule: rule.clone(),
                service,
                label,
                service_label,
                series: std::sync::OnceLock::new(),
            });
        }
        // Host rules first, then longer prefixes; among equals, the configured order.
        rules.sort_by_key(|r| (r.rule.host.is_none(), std::cmp::Reverse(r.rule.path_prefix.len())));
        let (mut by_host, mut any_host) = (HashMap::<String, PrefixIndex>::new(), PrefixIndex::default());
        for (i, r) in rules.iter().enumerate() {
            match &r.rule.host {
                Some(h) => by_host.entry(h.to_ascii_lowercase()).or_default().insert(&r.rule.path_prefix, i),
                None => any_host.insert(&r.rule.path_prefix, i),
            }
        }
        Ok(Self { config, rules, by_host, any_host })
    }

    /// The rule for `host` (port stripped) and `path`: the longest prefix among the rules
    /// for that host, else the longest among the rules for any host.
    fn find(&self, host: Option<&str>, path: &str) -> Option<&CompiledRule> {
        let for_host = host.filter(|_| !self.by_host.is_empty()).and_then(|h| {
            // No allocation for the usual lowercase host.
            let index = if h.bytes().any(|b| b.is_ascii_uppercase()) {
                self.by_host.get(&h.to_ascii_lowercase())
            } else {
                self.by_host.get(h)
            };
            index?.longest(path)
        });
        self.rules.get(for_host.or_else(|| self.any_host.longest(path))?)
    }

    fn rule(&self, request: &Request<Incoming>) -> Option<&CompiledRule> {
        let host =
            request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| request.uri().host()).map(
                |h| {
                    h.rsplit_once(':')
                        .map_or(h, |(name, port)| if port.chars().all(|c| c.is_ascii_digit()) { name } else { h })
                },
            );
        self.find(host, request.uri().path())
    }
}

/// A pool of keep-alive connections to the upstreams.
type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// A pool for one runtime: its connections' tasks run where they were made (on a worker
/// thread's own runtime, they never leave it).
fn upstream_client(connect_timeout: Duration) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// What a request needs to know of its connection.
struct Peer {
    addr: SocketAddr,
    /// The client's address as an `x-forwarded-for` value, made once per connection.
    forwarded: Option<HeaderValue>,
}

impl Peer {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, forwarded: HeaderValue::from_str(&addr.ip().to_string()).ok() }
    }
}

struct Inner {
    routing: ArcSwap<Routing>,
    upstream: Destination,
    /// The pool of [`Gateway::serve`] and [`Gateway::handle`]; each worker thread of
    /// [`Gateway::serve_on_threads`] has its own.
    client: UpstreamClient,
    connect_timeout: Duration,
    stats: Stats,
    metrics: Option<SharedMetrics>,
    access_log: std::sync::OnceLock<AccessLog>,
    propagation: std::sync::OnceLock<Arc<dyn Propagation>>,
}

/// The HTTP gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway(Arc<Inner>);

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("routes", &self.0.routing.load().config.routes).finish_non_exhaustive()
    }
}

const HOP_BY_HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

impl Gateway {
    /// A gateway with these rules, sending traffic to `upstream`.
    ///
    /// # Errors
    /// A rule with an invalid service name or a path prefix not starting with `/`.
    pub fn new(config: GatewayConfig, upstream: Upstream) -> Result<Self, ConfigError> {
        Self::with_metrics(config, upstream, None)
    }

    /// A gateway that also counts its requests, attempts, retries and rate-limited requests
    /// in `metrics`.
    ///
    /// # Errors
    /// As [`Gateway::new`].
    pub fn with_metrics(
        config: GatewayConfig,
        upstream: Upstream,
        metrics: Option<SharedMetrics>,
    ) -> Result<Self, ConfigError> {
        let routing = Routing::compile(config)?;
        let connect_timeout = routing.config.attempt_timeout;
        let client = upstream_client(connect_timeout);
        let routing = ArcSwap::from_pointee(routing);
        let upstream = match upstream {
            Upstream::Router(router) => Destination::Router(router),
            Upstream::Static(addr) => Destination::Static(crate::service::authority(addr)),
        };
        Ok(Self(Arc::new(Inner {
            routing,
            upstream,
            client,
            connect_timeout,
            stats: Stats::default(),
            metrics,
            access_log: std::sync::OnceLock::new(),
            propagation: std::sync::OnceLock::new(),
        })))
    }

    /// Continues the clients' traces and sends each attempt's trace context to the backend
    /// through `propagation` (once: a second one is refused and handed back).
    ///
    /// # Errors
    /// The gateway propagates traces already.
    pub fn propagate_traces(&self, propagation: Arc<dyn Propagation>) -> Result<(), Arc<dyn Propagation>> {
        self.0.propagation.set(propagation)
    }

    /// Writes every request to `log` from now on (once: a second log is refused and
    /// handed back).
    ///
    /// # Errors
    /// The gateway writes to a log already.
    pub fn log_access(&self, log: AccessLog) -> Result<(), AccessLog> {
        self.0.access_log.set(log)
    }

    /// Replaces the routes, the attempt timeout and the body limit while serving (requests
    /// in flight finish on the rules they started with). Nothing changes when `config` is
    /// refused. The connect timeout stays the one the gateway started with.
    ///
    /// # Errors
    /// As [`Gateway::new`].
    pub fn set_config(&self, config: GatewayConfig) -> Result<(), ConfigError> {
        let routing = Routing::compile(config)?;
        self.0.routing.store(Arc::new(routing));
        Ok(())
    }

    /// Counters since start.
    #[must_use]
    pub fn stats(&self) -> &Stats {
        &self.0.stats
    }

    /// Serves `listener` on the current runtime until `shutdown` completes, then stops
    /// accepting and waits up to `drain` for the requests in flight.
    ///
    /// # Errors
    /// Never today; kept for listener errors worth surfacing.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) -> std::io::Result<()> {
        let graceful = GracefulShutdown::new();
        let client = self.0.client.clone();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Some((stream, peer)) = accepted_or_pause(accepted).await else { continue };
                    self.spawn_connection(&graceful, stream, peer, &client);
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
            tracing::warn!(?drain, "requests still in flight after the drain period");
        }
        Ok(())
    }

    /// Serves `listener` on `threads` threads of the gateway's own, each running a
    /// single-threaded runtime with its own pool of upstream connections: connections are
    /// accepted here and dealt to the threads in turn, and from then on everything a request
    /// does (read, route, pick, forward, answer, report) happens on its connection's thread,
    /// with no handoff to another thread (as nginx's workers do). Stops accepting when
    /// `shutdown` completes; each thread then waits up to `drain` for its requests in flight.
    ///
    /// # Errors
    /// A worker thread could not be started.
    pub async fn serve_on_threads(
        &self,
        listener: TcpListener,
        threads: usize,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) -> std::io::Result<()> {
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let (connections, incoming) = tokio::sync::mpsc::unbounded_channel::<(std::net::TcpStream, SocketAddr)>();
            let (done, finished) = tokio::sync::oneshot::channel::<()>();
            let gateway = self.clone();
            std::thread::Builder::new().name(format!("sextant-gateway-{i}")).spawn(move || {
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(gateway.worker(incoming, drain)),
                    Err(e) => tracing::error!(error = %e, "a gateway worker's runtime did not start"),
                }
                drop(done);
            })?;
            workers.push((connections, finished));
        }
        tokio::pin!(shutdown);
        let mut next = 0usize;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Some((stream, peer)) = accepted_or_pause(accepted).await else { continue };
                    let Ok(stream) = stream.into_std() else { continue };
                    // A worker whose runtime failed is skipped (its channel is closed).
                    let mut connection = Some((stream, peer));
                    for _ in 0..workers.len() {
                        let Some(c) = connection.take() else { break };
                        let (connections, _) = &workers[next % workers.len()];
                        next = next.wrapping_add(1);
                        if let Err(back) = connections.send(c) {
                            connection = Some(back.0);
                        }
                    }
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        // Closing the channels tells the workers to drain.
        let finished: Vec<_> = workers.into_iter().map(|(_, finished)| finished).collect();
        for f in finished {
            let _ = f.await;
        }
        Ok(())
    }

    /// A worker thread's loop: serves the connections dealt to it with its own upstream pool
    /// until the channel closes, then drains.
    async fn worker(
        self,
        mut incoming: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
        drain: Duration,
    ) {
        let graceful = GracefulShutdown::new();
        let client = upstream_client(self.0.connect_timeout);
        while let Some((stream, peer)) = incoming.recv().await {
            match tokio::net::TcpStream::from_std(stream) {
                Ok(stream) => self.spawn_connection(&graceful, stream, peer, &client),
                Err(e) => tracing::warn!(error = %e, "a connection could not join its worker"),
            }
        }
        if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
            tracing::warn!(?drain, "requests still in flight after the drain period");
        }
    }

    /// Serves one client connection on a task of the current runtime, forwarding through
    /// `client`.
    fn spawn_connection(
        &self,
        graceful: &GracefulShutdown,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        client: &UpstreamClient,
    ) {
        let _ = stream.set_nodelay(true);
        let (gateway, client, peer) = (self.clone(), client.clone(), Arc::new(Peer::new(peer)));
        let service = service_fn(move |request| {
            let (gateway, client, peer) = (gateway.clone(), client.clone(), Arc::clone(&peer));
            async move { Ok::<_, std::convert::Infallible>(gateway.handle_on(&client, request, &peer).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended");
            }
        });
    }

    /// Handles one request.
    pub async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        self.handle_on(&self.0.client, request, &Peer::new(peer)).await
    }

    async fn handle_on(&self, client: &UpstreamClient, request: Request<Incoming>, peer: &Peer) -> Response<Body> {
        let started = std::time::Instant::now();
        self.0.stats.requests.fetch_add(1, Relaxed);
        let routing = self.0.routing.load_full();
        let log = self.0.access_log.get();
        // What the access log needs of the request, taken before it is consumed.
        let head = log.map(|_| {
            let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
            (request.method().clone(), host, request.uri().path().to_owned())
        });
        let rule = routing.rule(&request);
        let span = tracing::info_span!(
            target: sextant_core::TRACE_TARGET,
            "gateway request",
            otel.kind = "server",
            http.request.method = %request.method(),
            url.path = request.uri().path(),
            http.route = rule.map_or("", |r| r.label.as_str()),
            sextant.service = rule.map_or("", |r| r.service_label.as_str()),
            http.response.status_code = Empty,
            sextant.attempts = Empty,
        );
        if !span.is_disabled()
            && let Some(p) = self.0.propagation.get()
        {
            p.extract(request.headers(), &span);
        }
        let explain = rule.is_some() && routing.config.explain.as_ref().is_some_and(|e| e.asked(request.headers()));
        let mut why = rule.filter(|_| explain || log.is_some()).map(|r| Explanation::new(&r.label, &r.service_label));
        let mut response = match rule {
            None => text(StatusCode::NOT_FOUND, "no route\n"),
            Some(rule) => self.handle_routed(client, rule, request, peer, why.as_mut()).instrument(span.clone()).await,
        };
        span.record("http.response.status_code", response.status().as_u16());
        let elapsed = started.elapsed();
        if let Some(m) = &self.0.metrics {
            match rule {
                None => m.request("none", "", 404, elapsed),
                Some(rule) => {
                    let series = rule.series.get_or_init(|| m.route_series(&rule.label, &rule.service_label));
                    series.record(response.status().as_u16(), elapsed);
                }
            }
        }
        if explain && let Some(why) = &why {
            response.headers_mut().insert(WHY_HEADER, why.header_value());
        }
        if let (Some(log), Some((method, host, path))) = (log, head) {
            log.record(&AccessEntry {
                ts_ms: AccessLog::now_ms(),
                client: peer.addr.ip().to_string(),
                method: method.as_str(),
                host: host.as_deref(),
                path: &path,
                status: response.status().as_u16(),
                duration_ms: elapsed.as_secs_f64() * 1e3,
                why: why.as_ref(),
            });
        }
        response
    }

    async fn handle_routed(
        &self,
        client: &UpstreamClient,
        rule: &CompiledRule,
        request: Request<Incoming>,
        peer: &Peer,
        why: Option<&mut Explanation>,
    ) -> Response<Body> {
        let mut pick =
            PickRequest::from_headers(request.headers(), rule.rule.hash_header.as_deref(), &rule.rule.headers);
        let (parts, body) = request.into_parts();
        let max_body = self.0.routing.load().config.max_body;
        let body = if body.is_end_stream() {
            Bytes::new()
        } else {
            match Limited::new(body, max_body).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                        text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
                    } else {
                        text(StatusCode::BAD_REQUEST, "cannot read the request body\n")
                    };
                }
            }
        };
        match &self.0.upstream {
            Destination::Static(authority) => match self.forward(client, &parts, &body, authority, peer, None).await {
                Ok(response) => response.map(BodyExt::boxed),
                Err(_) => text(StatusCode::BAD_GATEWAY, "upstream failed\n"),
            },
            Destination::Router(router) => {
                let request = Forwarded { parts: &parts, body: &body, peer };
                self.routed(client, router, rule, &mut pick, request, why).await
            }
        }
    }

    async fn routed(
        &self,
        client: &UpstreamClient,
        router: &Router,
        rule: &CompiledRule,
        pick: &mut PickRequest,
        request: Forwarded<'_>,
        mut why: Option<&mut Explanation>,
    ) -> Response<Body> {
        let Forwarded { parts, body, peer } = request;
        let label = rule.service_label.as_str();
        // The service is looked up once for the whole request.
        let service = match router.service(&rule.service) {
            Ok(service) => service,
            Err(e) => {
                self.0.stats.failed.fetch_add(1, Relaxed);
                if let Some(why) = why {
                    why.refused = Some(e.to_string());
                }
                return text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n"));
            }
        };
        service.count_request();
        let idempotent =
            matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE);
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut attempt = 0u32;
        let mut last_failure = (StatusCode::BAD_GATEWAY, "every attempt failed\n");
        loop {
            attempt += 1;
            let RetryPlan { attempts, backoff } = service.retry_plan(attempt);
            let guard = service.pick_avoiding(pick, &tried);
            if attempt == 1
                && let Some(why) = why.as_deref_mut()
            {
                // After the first pick: a pick may rebuild the rotation this reads.
                for excluded in service.excluded() {
                    why.exclude(excluded);
                }
            }
            let guard = match guard {
                Ok(g) => g,
                Err(PickError::RateLimited(_)) => {
                    self.0.stats.rate_limited.fetch_add(1, Relaxed);
                    if let Some(m) = &self.0.metrics {
                        m.rate_limited(label);
                    }
                    if let Some(why) = why {
                        why.refused = Some("rate limited".into());
                    }
                    return text(StatusCode::TOO_MANY_REQUESTS, "rate limited\n");
                }
                Err(e) => {
                    self.0.stats.failed.fetch_add(1, Relaxed);
                    if let Some(why) = why {
                        why.refused = Some(e.to_string());
                    }
                    return text(StatusCode::SERVICE_UNAVAILABLE, &format!("{e}\n"));
                }
            };
            tried.push(guard.addr());
            let addressing = guard.addressing();
            let span = tracing::info_span!(
                target: sextant_core::TRACE_TARGET,
                "gateway attempt",
                otel.kind = "client",
                sextant.attempt = attempt,
                sextant.endpoint = guard.instance().id.as_str(),
                server.address = addressing.label.as_str(),
                sextant.balancer = Empty,
                sextant.balancer.version = guard.version(),
                sextant.fallback = guard.fallback(),
                sextant.outcome = Empty,
                http.response.status_code = Empty,
            );
            if !span.is_disabled() {
                span.record("sextant.balancer", service.balancer_name(guard.version()).unwrap_or_default());
                tracing::Span::current().record("sextant.attempts", attempt);
            }
            let trace = self.0.propagation.get().filter(|_| !span.is_disabled()).map(|p| (&**p, &span));
            let sent = std::time::Instant::now();
            let forwarded =
                self.forward(client, parts, body, &addressing.authority, peer, trace).instrument(span.clone());
            let (outcome, response, retry_safe, result) = match forwarded.await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_safe = idempotent && matches!(status, 502..=504);
                    (Outcome::from_response(&response), Some(response), retry_safe, crate::metrics::class(status))
                }
                Err(Failure::Timeout) => {
                    last_failure = (StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n");
                    (Outcome::Timeout, None, idempotent, "timeout")
                }
                Err(Failure::Connect(why)) => {
                    last_failure = (StatusCode::BAD_GATEWAY, "upstream unreachable\n");
                    (Outcome::Failed(why), None, true, "connect_error")
                }
                Err(Failure::Other(why)) => {
                    last_failure = (StatusCode::BAD_GATEWAY, "upstream failed\n");
                    (Outcome::Failed(why), None, idempotent, "error")
                }
            };
            let took = sent.elapsed();
            if let Some(m) = &self.0.metrics {
                m.attempt(label, &addressing.label, &guard.instance().zone, result, took);
            }
            if let Some(header) = response.as_ref().and_then(|r| r.headers().get(crate::load_report::HEADER)) {
                let parsed = header
                    .to_str()
                    .map_err(|_| crate::load_report::ReportError::Malformed("not visible ASCII".into()))
                    .and_then(crate::load_report::parse);
                let read = match parsed {
                    Ok(report) => {
                        guard.report_load(report);
                        "ok"
                    }
                    Err(e) => {
                        tracing::debug!(service = label, endpoint = %addressing.label, "load report refused: {e}");
                        e.reason()
                    }
                };
                if let Some(m) = &self.0.metrics {
                    m.load_report(label, read);
                }
            }
            span.record("sextant.outcome", result);
            if let Some(r) = &response {
                span.record("http.response.status_code", r.status().as_u16());
            }
            if let Some(why) = why.as_deref_mut() {
                why.attempts.push(Attempt {
                    endpoint: guard.instance().id.to_string(),
                    address: addressing.label.clone(),
                    balancer: service.balancer_name(guard.version()),
                    version: guard.version(),
                    fallback: guard.fallback(),
                    result,
                    status: response.as_ref().map(|r| r.status().as_u16()),
                    ms: took.as_secs_f64() * 1e3,
                });
            }
            let id = addressing.id_header.clone();
            let failed = outcome.failed();
            let endpoint = why.is_some().then(|| (guard.instance().id.to_string(), addressing.label.clone()));
            guard.finish(outcome);
            let retry = retry_safe && attempt < attempts && service.retry_allowed();
            if !retry {
                if let Some(response) = response {
                    let mut response = response.map(BodyExt::boxed);
                    if let Some(id) = id {
                        response.headers_mut().insert(UPSTREAM_HEADER, id);
                    }
                    return response;
                }
                self.0.stats.failed.fetch_add(1, Relaxed);
                return text(last_failure.0, last_failure.1);
            }
            if let (Some(why), Some((endpoint, address))) = (why.as_deref_mut(), endpoint)
                && failed
            {
                why.exclude(Excluded { endpoint, address, why: Exclusion::Avoided, for_ms: None });
            }
            self.0.stats.retries.fetch_add(1, Relaxed);
            if let Some(m) = &self.0.metrics {
                m.retry(label);
            }
            tokio::time::sleep(backoff).await;
        }
    }

    async fn forward(
        &self,
        client: &UpstreamClient,
        parts: &http::request::Parts,
        body: &Bytes,
        authority: &Authority,
        peer: &Peer,
        trace: Option<(&dyn Propagation, &tracing::Span)>,
    ) -> Result<Response<Incoming>, Failure> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(authority.clone());
        uri.path_and_query =
            Some(parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
        let uri = http::Uri::from_parts(uri).map_err(|e| Failure::Other(e.to_string()))?;
        let mut request = Request::builder().method(parts.method.clone()).uri(uri).version(http::Version::HTTP_11);
        if let Some(headers) = request.headers_mut() {
            copy_headers(&parts.headers, headers);
            let forwarded = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", peer.addr.ip())).ok(),
                None => peer.forwarded.clone(),
            };
            if let Some(v) = forwarded {
                headers.insert("x-forwarded-for", v);
            }
            if let Some((propagation, span)) = trace {
                propagation.inject(span, headers);
            }
        }
        let request = request.body(Full::new(body.clone())).map_err(|e| Failure::Other(e.to_string()))?;
        let timeout = self.0.routing.load().config.attempt_timeout;
        match tokio::time::timeout(timeout, client.request(request)).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(e)) if e.is_connect() => Err(Failure::Connect(e.to_string())),
            Ok(Err(e)) => Err(Failure::Other(format!(
                "{e}: {}",
                std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default()
            ))),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// An accepted connection, or none after a failed accept (the loop pauses 10 ms: a full
/// file table should not spin it).
async fn accepted_or_pause(
    accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    match accepted {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
            None
        }
    }
}

/// A request as every attempt forwards it: its head, its buffered body, its client.
#[derive(Clone, Copy)]
struct Forwarded<'a> {
    parts: &'a http::request::Parts,
    body: &'a Bytes,
    peer: &'a Peer,
}

enum Failure {
    Timeout,
    /// The connection was never made: safe to retry whatever the method.
    Connect(String),
    Other(String),
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let named_in_connection: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for (name, value) in from {
        if HOP_BY_HOP.contains(name)
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
            || named_in_connection.iter().any(|n| n == name.as_str())
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule by the documented meaning, by a scan of the sorted rules (what the index
    /// must agree with).
    fn scan<'a>(routing: &'a Routing, host: Option<&str>, path: &str) -> Option<&'a CompiledRule> {
        routing.rules.iter().find(|r| {
            r.rule.host.as_deref().is_none_or(|want| host.is_some_and(|h| h.eq_ignore_ascii_case(want)))
                && path.starts_with(&r.rule.path_prefix)
        })
    }

    #[test]
    fn the_index_picks_what_the_rules_say_host_rules_first_then_the_longest_prefix() {
        let rule = |host: Option<&str>, prefix: &str, service: &str| Rule {
            host: host.map(str::to_owned),
            path_prefix: prefix.to_owned(),
            service: service.to_owned(),
            hash_header: None,
            headers: Vec::new(),
        };
        let routes = vec![
            rule(None, "/", "root"),
            rule(None, "/api", "api"),
            rule(None, "/api/v2", "v2"),
            rule(Some("Shop.Example"), "/", "shop"),
            rule(Some("shop.example"), "/api", "shop-api"),
            rule(None, "/api", "api-second"),
            rule(None, "/é", "accent"),
        ];
        let routing = Routing::compile(GatewayConfig { routes, ..GatewayConfig::default() }).unwrap();
        let service = |host: Option<&str>, path: &str| routing.find(host, path).map(|r| r.rule.service.as_str());
        assert_eq!(service(None, "/api/v2/x"), Some("v2"));
        assert_eq!(service(None, "/api/v1"), Some("api"), "the first of two equal prefixes");
        assert_eq!(service(None, "/other"), Some("root"));
        assert_eq!(service(Some("SHOP.example"), "/api/v2"), Some("shop-api"), "a host rule wins, any case");
        assert_eq!(service(Some("shop.example"), "/x"), Some("shop"));
        assert_eq!(service(Some("elsewhere"), "/api"), Some("api"));
        assert_eq!(service(None, "/é/x"), Some("accent"));
        assert_eq!(service(None, "/\u{e9}"), Some("accent"));

        // Against the scan, on many rules and paths (a fixed pseudo-random sequence).
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let segments = ["a", "b", "ab", "api", "v1", "é"];
        let path = |next: &mut dyn FnMut(u64) -> u64| {
            let mut p = String::from("/");
            for _ in 0..next(4) {
                p.push_str(segments[usize::try_from(next(6)).unwrap()]);
                if next(2) == 0 {
                    p.push('/');
                }
            }
            p
        };
        let hosts = [None, Some("a.example"), Some("B.example")];
        let routes: Vec<Rule> = (0..300)
            .map(|i| rule(hosts[usize::try_from(next(3)).unwrap()], &path(&mut next), &format!("s{i}")))
            .collect();
        let routing = Routing::compile(GatewayConfig { routes, ..GatewayConfig::default() }).unwrap();
        for _ in 0..5_000 {
            let host =
                [None, Some("a.example"), Some("b.EXAMPLE"), Some("c.example")][usize::try_from(next(4)).unwrap()];
            let p = path(&mut next);
            assert_eq!(
                routing.find(host, &p).map(|r| &r.rule.service),
                scan(&routing, host, &p).map(|r| &r.rule.service),
                "{host:?} {p}"
            );
        }
    }
}
