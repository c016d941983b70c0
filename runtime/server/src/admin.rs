//! The admin HTTP API (default 127.0.0.1:7601).
//!
//! - `GET /healthz`: `ok` while serving.
//! - `GET /metrics`: Prometheus text format.
//! - `GET /status`: revision, counts, uptime (JSON).
//! - `GET /v1/services`: services with instances.
//! - `GET|PUT /v1/services/{ns}/{group}/{service}`: the service's snapshot (with the
//!   protection threshold applied) / its settings (`protect_threshold`, `metadata`).
//! - `POST /v1/instances`: register (an instance's JSON, plus `lease` or `ttl_ms` when
//!   ephemeral); `DELETE /v1/instances/{ns}/{group}/{service}/{id}`: deregister.
//! - `POST /v1/leases` (`ttl_ms`), `POST /v1/leases/{id}/keepalive`, `DELETE /v1/leases/{id}`.
//! - `GET|PUT|DELETE /v1/configs/{ns}/{group}/{data_id}`: config entries (PUT body = content),
//!   with the versions each replaced (`history`); `GET …/versions/{version}`: one's content;
//!   `GET` with `?id=ID&labels=K=V,K=V` reads as that reader (the version its candidate rule
//!   gives it). Gray release: `PUT …/beta?match=RULE` (body = the candidate's content),
//!   `POST …/promote[?version=V]`, `POST …/withdraw`.
//! - `GET /v1/plugins`: plugin records, the slots this server runs (active plugin, counters),
//!   recent failed loads. `POST /v1/artifacts` (the component's bytes as the body, at most
//!   64 MiB): stored in chunks (`plugin_upload`), answered with its `sha256`; `POST
//!   /v1/plugins` (`plugin_load`'s fields as JSON); `POST /v1/plugins/{name}/rollback[?forward=true]`;
//!   `POST /v1/plugins/{name}/rollout/{pause|resume|promote|abort}`; `DELETE /v1/plugins/{name}`.
//! - `GET /v1/records[?namespace=NS]`: every record of the scope (`sextant list --json`).
//! - `GET /v1/gateways/{ns}/{group}/{service}/{id}/metrics`: the `/metrics` text of a gateway
//!   registered there (read from the address its registration names in
//!   `sextant.gateway.metrics`), for the console's live traffic; 502 `unavailable` when it
//!   does not answer within 3 s or sends more than 8 MiB.
//! - `GET /ui`: the web console (`console.rs`), a page over the routes above.
//!
//! A write sent by a web page of another origin is refused (403) before anything else
//! (`same_origin_writes`).
//!
//! Every route but `/healthz`, `/metrics` and `/status` is a protocol request run by the same
//! [`Executor`] the QUIC door uses: the same validation, answers and error codes (mapped to
//! statuses by [`status_of`]), the same write counters. Errors are JSON
//! `{"error": CODE, "message": TEXT}` with a 4xx/5xx status; a refused request changed
//! nothing. Every write answers after it is durable (persistent records) and visible in this
//! host's view.
//!
//! Access is the QUIC door's ([`sextant_quic::access`]): with an access file, every route but
//! `/healthz` and `/metrics` needs `Authorization: Bearer TOKEN` (401 `unauthenticated`
//! without one, with an unknown one or a malformed header; 400 `invalid` for a token in the
//! query string), and the right the equivalent protocol request needs, decided by the same
//! [`acl::permits`] (403 `forbidden`). Each request counts against its client's rate (429
//! `limited`). Accepted writes and refusals go to the audit log. [`metrics_router`] serves
//! only `/metrics` and `/healthz`, for a separate scrape address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use sextant_control::{Detached, Executor, WriteCounter};
use sextant_core::{
    ConfigKey, DataId, GrayRule, Group, Instance, InstanceId, InstanceKey, LeaseId, Namespace, PluginName, Reader,
    Record, Revision, Scope, ServiceKey, ServiceName, ServiceSpec, ValidationError,
};
use sextant_proto::acl::{self, Principal};
use sextant_proto::{Binding, ErrorCode, MAX_COMPONENT_LEN, Request, Response as Answer, RolloutAction};
use sextant_quic::access::{Access, AuditEvent, Door, Verdict};
use sextant_store::{AnyStore, Registry};

use crate::metrics::{KindLabel, Metrics};

/// Largest request body accepted (a config entry of 1 MiB plus JSON overhead).
const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    executor: Arc<Executor<AnyStore>>,
    metrics: Arc<Metrics>,
    access: Arc<Access>,
    started: Instant,
    /// Reads gateways' metrics for the console (one connection pool for every read).
    gateways: GatewayClient,
}

type GatewayClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

impl AppState {
    /// State over `executor` (shared with QUIC, counting writes into `metrics`), guarded by
    /// `access` (shared with QUIC).
    #[must_use]
    pub fn new(executor: Arc<Executor<AnyStore>>, metrics: Arc<Metrics>, access: Arc<Access>) -> Self {
        let gateways = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        Self { executor, metrics, access, started: Instant::now(), gateways }
    }

    fn registry(&self) -> &Registry<AnyStore> {
        self.executor.registry()
    }

    /// The one path of every API route: the right, the executor, the audit. An error answer
    /// becomes its status.
    async fn execute(&self, caller: &Caller, request: Request, target: String) -> Result<Answer, ApiError> {
        caller.require(self, &request, || target.clone())?;
        let write = acl::is_write(&request);
        match self.executor.execute(&Detached, request).await {
            Answer::Error { code, message } => Err(ApiError::new(status_of(code), code.to_string(), message)),
            answer => {
                if write {
                    let revision = match &answer {
                        Answer::Written { revision, .. } | Answer::PluginWritten { revision, .. } => Some(*revision),
                        _ => None,
                    };
                    caller.accepted(self, target, revision);
                }
                Ok(answer)
            }
        }
    }
}

impl WriteCounter for Metrics {
    fn count(&self, kind: &'static str, accepted: bool) {
        let family = if accepted { &self.writes } else { &self.writes_rejected };
        family.get_or_create(&KindLabel { kind }).inc();
    }
}

/// The HTTP status of a protocol error code.
#[must_use]
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Invalid | ErrorCode::ProtocolError | ErrorCode::UnsupportedVersion => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound | ErrorCode::LeaseNotFound => StatusCode::NOT_FOUND,
        ErrorCode::Timeout => StatusCode::REQUEST_TIMEOUT,
        ErrorCode::PluginRejected => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Limited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An answer the route did not expect from its request (a server bug).
fn unexpected(answer: &Answer) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("unexpected answer: {answer:?}"))
}

/// The peer, from either listener (plain TCP or TLS): its address, and the subject of the
/// client certificate it presented over TLS.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The subject of its client certificate (`--admin-tls` with `--client-ca`).
    pub certificate: Option<Arc<str>>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Self { addr: *stream.remote_addr(), certificate: None }
    }
}

/// Only `/healthz` and `/metrics`: what a scrape address serves (`--metrics ADDR`).
pub fn metrics_router(state: AppState) -> axum::Router {
    axum::Router::new().route("/healthz", get(|| async { "ok\n" })).route("/metrics", get(metrics)).with_state(state)
}

/// The routes above. Serve it with connect info ([`Peer`]): access checks need the peer.
pub fn router(state: AppState) -> axum::Router {
    let guarded = axum::Router::new()
        .route("/status", get(status))
        .route("/v1/services", get(services))
        .route("/v1/services/{ns}/{group}/{service}", get(service).put(put_service))
        .route("/v1/instances", post(register))
        .route("/v1/instances/{ns}/{group}/{service}/{id}", axum::routing::delete(deregister))
        .route("/v1/leases", post(grant))
        .route("/v1/leases/{id}/keepalive", post(keepalive))
        .route("/v1/leases/{id}", axum::routing::delete(revoke))
        .route("/v1/configs/{ns}/{group}/{data_id}", get(get_config).put(put_config).delete(delete_config))
        .route("/v1/configs/{ns}/{group}/{data_id}/versions/{version}", get(get_config_version))
        .route("/v1/configs/{ns}/{group}/{data_id}/beta", axum::routing::put(put_config_beta))
        .route("/v1/configs/{ns}/{group}/{data_id}/promote", post(promote_config))
        .route("/v1/configs/{ns}/{group}/{data_id}/withdraw", post(withdraw_config))
        .route("/v1/plugins", get(plugins).post(load_plugin))
        .route("/v1/plugins/{name}", axum::routing::delete(delete_plugin))
        .route("/v1/plugins/{name}/rollback", post(rollback_plugin))
        .route("/v1/plugins/{name}/rollout/{action}", post(steer_rollout))
        .route("/v1/artifacts", post(upload_artifact))
        .route("/v1/gateways/{ns}/{group}/{service}/{id}/metrics", get(gateway_metrics))
        .route("/v1/records", get(records))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route_layer(middleware::from_fn(same_origin_writes))
        .with_state(state.clone());
    metrics_router(state).merge(guarded).merge(crate::console::router())
}

/// Refuses (403) a write sent by a page of another origin: a browser sends `Origin` with
/// every cross-origin write, and one without a token would otherwise reach a server that
/// has no access file (a plain-text `PUT` or a bodiless `POST` needs no preflight). Reads,
/// and requests without `Origin` (the CLI, scripts), go on.
async fn same_origin_writes(request: axum::extract::Request, next: Next) -> Response {
    let safe = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    let headers = request.headers();
    let cross_site = headers.get("sec-fetch-site").is_some_and(|v| v == "cross-site" || v == "same-site");
    let origin = headers.get(header::ORIGIN).map(|o| o.to_str().unwrap_or("null"));
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let foreign = origin.is_some_and(|o| {
        let authority = o.split_once("://").map(|(_, a)| a);
        authority.is_none_or(|a| Some(a) != host)
    });
    if !safe && (cross_site || foreign) {
        let message = format!(
            "a write from another origin ({}) is refused: the console and the API take writes from their own origin only",
            origin.unwrap_or("a cross-site page")
        );
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
    }
    next.run(request).await
}

#[derive(Debug, Deserialize)]
struct RecordsQuery {
    namespace: Option<String>,
}

/// `GET /v1/records[?namespace=NS]`: every record of the scope (`sextant list --json`).
async fn records(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Query(query): axum::extract::Query<RecordsQuery>,
) -> ApiResult<serde_json::Value> {
    let scope = match query.namespace {
        Some(ns) => Scope::Namespace(Namespace::new(ns)?),
        None => Scope::All,
    };
    let target = format!("{scope:?}");
    match s.execute(&caller, Request::List { scope }, target).await? {
        Answer::Records { revision, records, stale_ms } => {
            Ok(Json(json!({ "revision": revision, "records": records, "stale_ms": stale_ms })))
        }
        other => Err(unexpected(&other)),
    }
}

/// Who sent a request that passed authentication, and from where.
#[derive(Debug, Clone)]
struct Caller {
    principal: Principal,
    peer: SocketAddr,
    certificate: Option<Arc<str>>,
    /// `METHOD /path`, for the audit log.
    what: String,
}

impl Caller {
    fn audit(
        &self,
        access: &Access,
        verdict: Verdict,
        target: Option<String>,
        revision: Option<u64>,
        reason: Option<&str>,
    ) {
        access.audit(&AuditEvent {
            door: Door::Http,
            verdict,
            who: &self.principal.name,
            certificate: self.certificate.as_deref(),
            from: self.peer,
            what: &self.what,
            target,
            revision,
            reason,
        });
    }

    /// Refuses (403, audited) unless the caller may send `request`, the equivalent protocol
    /// request: the one rule both doors apply.
    fn require(&self, s: &AppState, request: &Request, target: impl Fn() -> String) -> Result<(), ApiError> {
        if acl::permits(&self.principal, request) {
            return Ok(());
        }
        let message = format!("{} may not {}", self.principal.name, request.kind());
        self.audit(&s.access, Verdict::Forbidden, Some(target()), None, Some(&message));
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", message))
    }

    /// Audits an accepted write.
    fn accepted(&self, s: &AppState, target: String, revision: Option<Revision>) {
        self.audit(&s.access, Verdict::Accepted, Some(target), revision.map(|r| r.0), None);
    }
}

/// Query parameters that carry credentials by convention; refused so tokens never end up in
/// URLs (and so in logs and browser histories).
const TOKEN_PARAMS: [&str; 4] = ["token", "access_token", "auth", "authorization"];

/// The bearer token of a request: `Ok(None)` without an `Authorization` header, `Err` for a
/// header that is not exactly one `Bearer TOKEN` in visible ASCII.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err("more than one Authorization header");
    }
    let text = value.to_str().map_err(|_| "the Authorization header is not visible ASCII")?;
    let (scheme, token) = text.split_once(' ').ok_or("the Authorization header is not `Bearer TOKEN`")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the Authorization scheme is not Bearer");
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err("the Authorization header is not `Bearer TOKEN`");
    }
    Ok(Some(token))
}

/// Authentication and the rate limit, before any route: 401, 400 or 429 (audited), or the
/// request goes on with its [`Caller`].
async fn authenticate(
    State(s): State<AppState>,
    ConnectInfo(Peer { addr: peer, certificate }): ConnectInfo<Peer>,
    mut request: axum::extract::Request,
    next: Next,
) -> Response {
    let what = format!("{} {}", request.method(), request.uri().path());
    let refuse = |verdict: Verdict, who: &str, status: StatusCode, code: &'static str, message: String| {
        s.access.audit(&AuditEvent {
            door: Door::Http,
            verdict,
            who,
            certificate: certificate.as_deref(),
            from: peer,
            what: &what,
            target: None,
            revision: None,
            reason: Some(&message),
        });
        let mut response = ApiError::new(status, code, message).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    };
    let in_query = request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|pair| TOKEN_PARAMS.iter().any(|p| pair.split('=').next().is_some_and(|k| k.eq_ignore_ascii_case(p))))
    });
    if in_query {
        let message = "a token in the query string is refused: send it as `Authorization: Bearer TOKEN`".to_owned();
        return refuse(Verdict::Unauthenticated, "-", StatusCode::BAD_REQUEST, "invalid", message);
    }
    let acl = s.access.acl();
    // A server without an access file ignores credentials, as QUIC ignores `hello.token`.
    let header = if acl.is_open() { Ok(None) } else { bearer(request.headers()) };
    let principal = match header {
        Err(why) => {
            return refuse(Verdict::Unauthenticated, "-", StatusCode::UNAUTHORIZED, "unauthenticated", why.into());
        }
        Ok(token) => match acl.authenticate(token) {
            Some(p) => p,
            None => {
                let why =
                    if token.is_some() { "unknown token" } else { "a token is required (Authorization: Bearer TOKEN)" };
                return refuse(Verdict::Unauthenticated, "-", StatusCode::UNAUTHORIZED, "unauthenticated", why.into());
            }
        },
    };
    if let Err(e) = s.access.check_rate(&principal, peer.ip()) {
        let mut response =
            refuse(Verdict::Limited, &principal.name, StatusCode::TOO_MANY_REQUESTS, "limited", e.to_string());
        if let sextant_quic::access::LimitError::Rate { retry_after, .. } = e {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
        }
        return response;
    }
    request.extensions_mut().insert(Caller { principal, peer, certificate, what });
    next.run(request).await
}

/// An API error: status, code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status, code: code.into(), message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.code, "message": self.message }))).into_response()
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", e.to_string())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// A JSON body, or a typed `invalid` error naming what is wrong with it.
fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    parsed.map(|Json(v)| v).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.body_text()))
}

fn service_key(ns: &str, group: &str, service: &str) -> Result<ServiceKey, ApiError> {
    Ok(ServiceKey::new(Namespace::new(ns)?, Group::new(group)?, ServiceName::new(service)?))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let stats = s.registry().stats();
    let store = s.registry().store();
    let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    s.metrics.services.set(gauge(stats.services));
    s.metrics.instances.set(gauge(stats.instances));
    s.metrics.set_zones(&s.registry().zone_counts());
    s.metrics.configs.set(gauge(stats.configs));
    s.metrics.revision.set(i64::try_from(stats.revision.0).unwrap_or(i64::MAX));
    s.metrics.leases.set(gauge(store.lease_count()));
    Metrics::catch_up(&s.metrics.leases_expired, store.leases_expired());
    Metrics::catch_up(&s.metrics.store_invalid_values, store.invalid_values());
    if let Some(commits) = store.commit_stats() {
        Metrics::catch_up(&s.metrics.store_commits, commits.commits);
        Metrics::catch_up(&s.metrics.store_committed_writes, commits.writes);
    }
    let stale = s.registry().stale_for();
    s.metrics.store_reachable.set(i64::from(stale.is_none()));
    s.metrics.store_stale_seconds.set(stale.map_or(0.0, |d| d.as_secs_f64()));
    if let Some(plugins) = s.executor.plugins() {
        s.metrics.set_slots(&plugins.status());
        s.metrics.plugins.set_totals(plugins.totals().iter().map(|(k, t)| (k, t)));
        s.metrics.plugin_failures.set(gauge(plugins.failures().len()));
        s.metrics.set_faults(&plugins.fault_counts());
        s.metrics.set_rollouts(&plugins.records());
        s.metrics.plugins.host.read(plugins.host());
    }
    s.metrics.set_access(&s.access);
    ([("content-type", sextant_gateway::metrics::CONTENT_TYPE)], s.metrics.encode())
}

/// The whole-registry read every registry-wide route needs (`list` of scope `all`).
const LIST_ALL: Request = Request::List { scope: Scope::All };

async fn status(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<serde_json::Value> {
    caller.require(&s, &LIST_ALL, || "status".into())?;
    let registry = s.registry();
    let stats = registry.stats();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "store": registry.store().kind(),
        "location": registry.store().location(),
        "stale_ms": registry.stale_for().map(|d| d.as_millis()),
        "invalid_values": registry.store().invalid_values(),
        "revision": stats.revision,
        "services": stats.services,
        "instances": stats.instances,
        "configs": stats.configs,
        "plugins": stats.plugins,
        "leases": registry.store().lease_count(),
        "uptime_secs": s.started.elapsed().as_secs(),
    })))
}

async fn services(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Vec<String>> {
    caller.require(&s, &LIST_ALL, || "services".into())?;
    Ok(Json(s.registry().services().iter().map(ToString::to_string).collect()))
}

async fn service(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, name)): Path<(String, String, String)>,
) -> ApiResult<sextant_proto::message::ServiceView> {
    let key = service_key(&ns, &group, &name)?;
    let target = key.to_string();
    match s.execute(&caller, Request::GetService { service: key }, target).await? {
        Answer::Service(view) => Ok(Json(view)),
        other => Err(unexpected(&other)),
    }
}

#[derive(Debug, Deserialize)]
struct ServiceSettings {
    #[serde(default)]
    protect_threshold: f32,
    #[serde(default)]
    metadata: sextant_core::Metadata,
}

/// `{"revision": R}` (and the written config's `version`, when there is one).
fn written(answer: Answer) -> ApiResult<serde_json::Value> {
    match answer {
        Answer::Written { revision, version: Some(version), .. } => {
            Ok(Json(json!({ "revision": revision, "version": version })))
        }
        Answer::Written { revision, .. } => Ok(Json(json!({ "revision": revision }))),
        other => Err(unexpected(&other)),
    }
}

async fn put_service(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, name)): Path<(String, String, String)>,
    settings: Result<Json<ServiceSettings>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let body = body(settings)?;
    let spec = ServiceSpec {
        service: service_key(&ns, &group, &name)?,
        protect_threshold: body.protect_threshold,
        metadata: body.metadata,
    };
    let target = spec.service.to_string();
    written(s.execute(&caller, Request::PutService { spec }, target).await?)
}

/// `POST /v1/instances`.
#[derive(Debug, Deserialize)]
struct RegisterRequest {
    #[serde(flatten)]
    instance: Instance,
    /// An existing lease for an ephemeral instance.
    lease: Option<LeaseId>,
    /// Or: grant a new lease with this TTL.
    ttl_ms: Option<u64>,
}

async fn register(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: Result<Json<RegisterRequest>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let RegisterRequest { instance, lease, ttl_ms } = body(req)?;
    let binding = match (instance.ephemeral, lease, ttl_ms) {
        (false, None, None) => Binding::Persistent,
        (false, _, _) => return Err(ValidationError::LeaseMismatch.into()),
        (true, Some(lease), None) => Binding::Lease { lease },
        (true, None, Some(ttl_ms)) => Binding::Ttl { ttl_ms },
        (true, _, _) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                "an ephemeral instance needs exactly one of `lease` or `ttl_ms`",
            ));
        }
    };
    let target = format!("{}/{}", instance.service, instance.id);
    match s.execute(&caller, Request::Register { instance, binding }, target).await? {
        Answer::Written { revision, lease, .. } => Ok(Json(json!({ "revision": revision, "lease": lease }))),
        other => Err(unexpected(&other)),
    }
}

async fn deregister(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, name, id)): Path<(String, String, String, String)>,
) -> ApiResult<serde_json::Value> {
    let key = InstanceKey { service: service_key(&ns, &group, &name)?, id: InstanceId::new(id)? };
    let target = key.to_string();
    written(s.execute(&caller, Request::Deregister { service: key.service, id: key.id }, target).await?)
}

#[derive(Debug, Deserialize)]
struct GrantRequest {
    ttl_ms: u64,
}

/// `{"lease": ID, "ttl_ms": N}`.
fn lease_answer(answer: Answer) -> ApiResult<serde_json::Value> {
    match answer {
        Answer::Lease { lease, ttl_ms } => Ok(Json(json!({ "lease": lease, "ttl_ms": ttl_ms }))),
        other => Err(unexpected(&other)),
    }
}

async fn grant(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: Result<Json<GrantRequest>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let req = body(req)?;
    lease_answer(s.execute(&caller, Request::GrantLease { ttl_ms: req.ttl_ms }, "lease".into()).await?)
}

/// A lease id from a path: the decimal `{id}`, or a typed `invalid`.
fn lease_id(text: &str) -> Result<LeaseId, ApiError> {
    text.parse().map(LeaseId).map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("{text:?} is not a lease id (a decimal number)"))
    })
}

async fn keepalive(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<serde_json::Value> {
    let lease = lease_id(&id)?;
    lease_answer(s.execute(&caller, Request::Keepalive { lease }, format!("lease {}", lease.0)).await?)
}

async fn revoke(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<serde_json::Value> {
    let lease = lease_id(&id)?;
    match s.execute(&caller, Request::RevokeLease { lease }, format!("lease {}", lease.0)).await? {
        Answer::Written { revision, .. } => Ok(Json(json!({ "lease": lease, "revision": revision }))),
        other => Err(unexpected(&other)),
    }
}

fn config_key(ns: &str, group: &str, data_id: &str) -> Result<ConfigKey, ApiError> {
    Ok(ConfigKey { namespace: Namespace::new(ns)?, group: Group::new(group)?, data_id: DataId::new(data_id)? })
}

/// `?id=ID&labels=K=V,K=V`: who reads a config entry (none of either: an operator, who is
/// shown the whole entry).
#[derive(Debug, Deserialize)]
struct ReaderQuery {
    id: Option<String>,
    labels: Option<String>,
}

impl ReaderQuery {
    fn reader(self) -> Result<Option<Reader>, ApiError> {
        if self.id.is_none() && self.labels.is_none() {
            return Ok(None);
        }
        let mut labels = std::collections::BTreeMap::new();
        for pair in self.labels.iter().flat_map(|l| l.split(',')).filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("label {pair:?} is not KEY=VALUE"))
            })?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        Ok(Some(Reader { id: self.id, labels }))
    }
}

async fn get_config(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, id)): Path<(String, String, String)>,
    axum::extract::Query(query): axum::extract::Query<ReaderQuery>,
) -> Result<Response, ApiError> {
    let key = config_key(&ns, &group, &id)?;
    let target = key.to_string();
    let reader = query.reader()?;
    match s.execute(&caller, Request::ConfigGet { key: key.clone(), reader }, target).await? {
        Answer::Config { entry: Some(entry) } => {
            let mut response = Json(Arc::clone(&entry)).into_response();
            // A version is lowercase hex: always a header value.
            if let Ok(etag) = header::HeaderValue::from_str(&format!("\"{}\"", entry.version)) {
                response.headers_mut().insert(header::ETAG, etag);
            }
            Ok(response)
        }
        Answer::Config { entry: None } => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("config {key} not found")))
        }
        other => Err(unexpected(&other)),
    }
}

/// `GET /v1/configs/{ns}/{group}/{data_id}/versions/{version}`: the content of the entry's
/// current version or of one in its history, with the right to read the entry.
async fn get_config_version(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, id, version)): Path<(String, String, String, String)>,
) -> ApiResult<serde_json::Value> {
    let key = config_key(&ns, &group, &id)?;
    let request = Request::ConfigGet { key: key.clone(), reader: None };
    let entry = match s.execute(&caller, request, key.to_string()).await? {
        Answer::Config { entry: Some(entry) } => entry,
        Answer::Config { entry: None } => {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("config {key} not found")));
        }
        other => return Err(unexpected(&other)),
    };
    if entry.version == version {
        return Ok(Json(json!({ "key": key, "version": version, "content": entry.content })));
    }
    if let Some(beta) = entry.beta.as_ref().filter(|b| b.version == version) {
        return Ok(Json(json!({ "key": key, "version": version, "content": beta.content })));
    }
    let not_kept = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("config {key} has no version {version} in its history"),
        )
    };
    if !entry.history.iter().any(|v| v.version == version) {
        return Err(not_kept());
    }
    let bytes = sextant_core::store::Store::get_artifact(s.registry().store(), version.clone()).await.map_err(|e| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("reading version {version}: {e}"))
    })?;
    let content = bytes.and_then(|b| String::from_utf8(b).ok()).ok_or_else(not_kept)?;
    Ok(Json(json!({ "key": key, "version": version, "content": content })))
}

/// `If-Match: "VERSION"` (or the bare version): the version a write replaces.
fn if_match(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let text =
        value.to_str().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid", "If-Match is not ASCII"))?;
    let version = text.trim().trim_matches('"');
    if version.is_empty() || version == "*" {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid", "If-Match names one version (\"SHA256\")"));
    }
    Ok(Some(version.to_owned()))
}

async fn put_config(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: String,
) -> ApiResult<serde_json::Value> {
    let key = config_key(&ns, &group, &id)?;
    let target = key.to_string();
    let replaces = if_match(&headers)?;
    written(s.execute(&caller, Request::ConfigPut { key, content: body, replaces }, target).await?)
}

#[derive(Debug, Deserialize)]
struct BetaQuery {
    #[serde(rename = "match")]
    rule: String,
}

/// `PUT /v1/configs/{ns}/{group}/{data_id}/beta?match=RULE`: the body is the candidate's
/// content, served to the readers RULE (`percent=N`, `ids=A,B`, `K=V,K=V`) matches.
async fn put_config_beta(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, id)): Path<(String, String, String)>,
    axum::extract::Query(query): axum::extract::Query<BetaQuery>,
    body: String,
) -> ApiResult<serde_json::Value> {
    let key = config_key(&ns, &group, &id)?;
    let rule: GrayRule = query.rule.parse()?;
    let target = key.to_string();
    written(s.execute(&caller, Request::ConfigBeta { key, content: body, rule }, target).await?)
}

#[derive(Debug, Deserialize)]
struct PromoteQuery {
    version: Option<String>,
}

async fn promote_config(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, id)): Path<(String, String, String)>,
    axum::extract::Query(query): axum::extract::Query<PromoteQuery>,
) -> ApiResult<serde_json::Value> {
    let key = config_key(&ns, &group, &id)?;
    let target = key.to_string();
    written(s.execute(&caller, Request::ConfigPromote { key, version: query.version }, target).await?)
}

async fn withdraw_config(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, id)): Path<(String, String, String)>,
) -> ApiResult<serde_json::Value> {
    let key = config_key(&ns, &group, &id)?;
    let target = key.to_string();
    written(s.execute(&caller, Request::ConfigWithdraw { key }, target).await?)
}

async fn delete_config(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, id)): Path<(String, String, String)>,
) -> ApiResult<serde_json::Value> {
    let key = config_key(&ns, &group, &id)?;
    let target = key.to_string();
    written(s.execute(&caller, Request::ConfigDelete { key }, target).await?)
}

async fn plugins(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<serde_json::Value> {
    match s.execute(&caller, Request::PluginList, "plugins".into()).await? {
        Answer::Plugins { plugins, slots, hosts, failures, bindings, rollouts } => Ok(Json(json!({
            "plugins": plugins, "slots": slots, "hosts": hosts, "failures": failures, "bindings": bindings,
            "rollouts": rollouts,
        }))),
        other => Err(unexpected(&other)),
    }
}

/// `{"revision", "record", "validated"}`: a plugin write's answer.
fn plugin_written(answer: Answer) -> ApiResult<serde_json::Value> {
    match answer {
        Answer::PluginWritten { record, revision, validated } => {
            Ok(Json(json!({ "revision": revision, "record": record, "validated": validated })))
        }
        other => Err(unexpected(&other)),
    }
}

/// `POST /v1/plugins`: the fields of `plugin_load` (docs/protocol.md), the component inline
/// (`component`, base64) or named by the sha256 `POST /v1/artifacts` answered.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadRequest {
    name: String,
    kind: String,
    #[serde(default)]
    binding: String,
    #[serde(default)]
    config: String,
    #[serde(default)]
    component: String,
    component_sha256: Option<String>,
    rollout: Option<String>,
}

async fn load_plugin(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: Result<Json<LoadRequest>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let LoadRequest { name, kind, binding, config, component, component_sha256, rollout } = body(req)?;
    let name = PluginName::new(name)?;
    let target = name.to_string();
    let request = Request::PluginLoad { name, kind, binding, config, component, component_sha256, rollout };
    plugin_written(s.execute(&caller, request, target).await?)
}

#[derive(Debug, Deserialize)]
struct RollbackQuery {
    #[serde(default)]
    forward: bool,
}

async fn rollback_plugin(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<RollbackQuery>,
) -> ApiResult<serde_json::Value> {
    let name = PluginName::new(name)?;
    let target = name.to_string();
    plugin_written(s.execute(&caller, Request::PluginRollback { name, forward: query.forward }, target).await?)
}

async fn steer_rollout(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<serde_json::Value> {
    let name = PluginName::new(name)?;
    let action: RolloutAction = serde_json::from_value(json!(action)).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("no rollout action `{action}`: pause, resume, promote or abort"),
        )
    })?;
    let target = name.to_string();
    plugin_written(s.execute(&caller, Request::PluginRollout { name, action }, target).await?)
}

async fn delete_plugin(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<serde_json::Value> {
    let name = PluginName::new(name)?;
    let target = name.to_string();
    written(s.execute(&caller, Request::PluginDelete { name }, target).await?)
}

/// `POST /v1/artifacts`: the body is a component; stored with `plugin_upload` in chunks (the
/// right is checked before the body is read), answered `{"sha256", "size"}` for a load that
/// names it.
async fn upload_artifact(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Body,
) -> ApiResult<serde_json::Value> {
    let probe = Request::PluginUpload { sha256: String::new(), size: 0, offset: 0, data: String::new() };
    caller.require(&s, &probe, || "artifact".to_owned())?;
    let bytes = axum::body::to_bytes(body, MAX_COMPONENT_LEN).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid",
            format!("a component is at most {MAX_COMPONENT_LEN} bytes"),
        )
    })?;
    if bytes.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid", "the body is empty: send the component's bytes"));
    }
    let sha256 = sextant_core::sha256_hex(&bytes);
    let size = bytes.len() as u64;
    let mut offset = 0u64;
    while offset < size {
        let request = sextant_proto::upload_chunk(&sha256, &bytes, offset);
        match s.execute(&caller, request, format!("artifact {sha256}")).await? {
            Answer::Uploaded { received, .. } if received > offset && received <= size => offset = received,
            other => return Err(unexpected(&other)),
        }
    }
    Ok(Json(json!({ "sha256": sha256, "size": size })))
}

/// How long a read of a gateway's metrics may take.
const GATEWAY_READ: Duration = Duration::from_secs(3);
/// Largest metrics text read from a gateway.
const GATEWAY_METRICS_LIMIT: usize = 8 << 20;

/// `GET /v1/gateways/{ns}/{group}/{service}/{id}/metrics`: the gateway's `/metrics`, read at
/// the address its registration names, with the right to read that registration. Only a
/// registration that says it is a gateway, only an `IP:PORT` (no name to resolve), only
/// `GET /metrics`, bounded in time and size.
async fn gateway_metrics(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, name, id)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let key = InstanceKey { service: service_key(&ns, &group, &name)?, id: InstanceId::new(id)? };
    let request = Request::List { scope: Scope::Service(key.service.clone()) };
    let records = match s.execute(&caller, request, key.to_string()).await? {
        Answer::Records { records, .. } => records,
        other => return Err(unexpected(&other)),
    };
    let not_found = |what: &str| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{key}: {what}"));
    let instance = records
        .iter()
        .find_map(|r| match r {
            Record::Instance(i) if i.id == key.id => Some(i),
            _ => None,
        })
        .ok_or_else(|| not_found("no such instance"))?;
    if instance.metadata.get("sextant.role") != Some("gateway") {
        return Err(not_found("not a gateway"));
    }
    let addr = instance
        .metadata
        .get(sextant_proto::GATEWAY_METRICS_KEY)
        .ok_or_else(|| not_found("the gateway serves no metrics (started without --metrics)"))?;
    let unavailable =
        |why: String| ApiError::new(StatusCode::BAD_GATEWAY, "unavailable", format!("{key} at {addr}: {why}"));
    let addr: SocketAddr = addr.parse().map_err(|_| unavailable("not an IP:PORT".into()))?;
    let uri: axum::http::Uri = format!("http://{addr}/metrics").parse().map_err(|_| unavailable("not a URL".into()))?;
    let read = async {
        let response = s.gateways.get(uri).await.map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(format!("answered {}", response.status()));
        }
        let body = http_body_util::Limited::new(response.into_body(), GATEWAY_METRICS_LIMIT);
        let bytes = http_body_util::BodyExt::collect(body).await.map_err(|e| e.to_string())?.to_bytes();
        Ok(bytes)
    };
    let text = tokio::time::timeout(GATEWAY_READ, read)
        .await
        .map_err(|_| unavailable(format!("no answer within {} s", GATEWAY_READ.as_secs())))?
        .map_err(unavailable)?;
    Ok(([(header::CONTENT_TYPE, sextant_gateway::metrics::CONTENT_TYPE)], text).into_response())
}
