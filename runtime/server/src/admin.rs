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
//! - `GET|PUT|DELETE /v1/configs/{ns}/{group}/{data_id}`: config entries (PUT body = content).
//! - `GET /v1/plugins`: plugin records, the slots this server runs (active plugin, counters),
//!   recent failed loads.
//!
//! Errors are JSON `{"error": CODE, "message": TEXT}` with a 4xx/5xx status; a refused
//! request changed nothing. Every write answers after it is durable (persistent records) and
//! visible in this host's view.
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
use serde::{Deserialize, Serialize};
use serde_json::json;
use sextant_core::store::StoreError;
use sextant_core::{
    ConfigEntry, ConfigKey, CoreError, DataId, Group, Instance, InstanceId, InstanceKey, LeaseId, Namespace, Record,
    RecordKey, Revision, Scope, ServiceKey, ServiceName, ServiceSpec, ValidationError,
};
use sextant_plugin::PluginManager;
use sextant_proto::acl::{self, Principal};
use sextant_proto::{Binding, Request};
use sextant_quic::access::{Access, AuditEvent, Door, Verdict};
use sextant_store::{AnyStore, Registry, RegistryError};

use crate::metrics::{KindLabel, Metrics};

/// Largest request body accepted (a config entry of 1 MiB plus JSON overhead).
const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// What handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    registry: Registry<AnyStore>,
    plugins: PluginManager<AnyStore>,
    metrics: Arc<Metrics>,
    access: Arc<Access>,
    started: Instant,
}

impl AppState {
    /// State over `registry` and its plugin manager, guarded by `access` (shared with QUIC).
    #[must_use]
    pub fn new(
        registry: Registry<AnyStore>,
        plugins: PluginManager<AnyStore>,
        metrics: Arc<Metrics>,
        access: Arc<Access>,
    ) -> Self {
        Self { registry, plugins, metrics, access, started: Instant::now() }
    }
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
        .route("/v1/plugins", get(plugins))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state.clone());
    metrics_router(state).merge(guarded)
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
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
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

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let RegistryError::Store(store) = e;
        let (status, code) = match &store {
            StoreError::Rejected(CoreError::Invalid(_)) => (StatusCode::BAD_REQUEST, "invalid"),
            StoreError::Rejected(CoreError::LeaseNotFound(_)) => (StatusCode::NOT_FOUND, "lease_not_found"),
            StoreError::Rejected(CoreError::KeyNotFound(_)) => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Rejected(_) => (StatusCode::CONFLICT, "conflict"),
            StoreError::Unavailable(_) | StoreError::Lagged | StoreError::Closed => {
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        };
        Self::new(status, code, store.to_string())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// A JSON body, or a typed `invalid` error naming what is wrong with it.
fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    parsed.map(|Json(v)| v).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.body_text()))
}

/// Counts a write's outcome under `kind`.
fn counted<T>(metrics: &Metrics, kind: &'static str, result: Result<T, RegistryError>) -> Result<T, ApiError> {
    let family = if result.is_ok() { &metrics.writes } else { &metrics.writes_rejected };
    family.get_or_create(&KindLabel { kind }).inc();
    result.map_err(ApiError::from)
}

fn service_key(ns: &str, group: &str, service: &str) -> Result<ServiceKey, ApiError> {
    Ok(ServiceKey::new(Namespace::new(ns)?, Group::new(group)?, ServiceName::new(service)?))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let stats = s.registry.stats();
    let store = s.registry.store();
    let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
    s.metrics.services.set(gauge(stats.services));
    s.metrics.instances.set(gauge(stats.instances));
    s.metrics.configs.set(gauge(stats.configs));
    s.metrics.revision.set(i64::try_from(stats.revision.0).unwrap_or(i64::MAX));
    s.metrics.leases.set(gauge(store.lease_count()));
    Metrics::catch_up(&s.metrics.leases_expired, store.leases_expired());
    Metrics::catch_up(&s.metrics.store_invalid_values, store.invalid_values());
    let stale = s.registry.stale_for();
    s.metrics.store_reachable.set(i64::from(stale.is_none()));
    s.metrics.store_stale_seconds.set(stale.map_or(0.0, |d| d.as_secs_f64()));
    s.metrics.set_slots(&s.plugins.status());
    s.metrics.set_totals(&s.plugins.totals());
    s.metrics.plugin_failures.set(gauge(s.plugins.failures().len()));
    s.metrics.set_access(&s.access);
    ([("content-type", sextant_gateway::metrics::CONTENT_TYPE)], s.metrics.encode())
}

/// The whole-registry read every registry-wide route needs (`list` of scope `all`).
const LIST_ALL: Request = Request::List { scope: Scope::All };

async fn status(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<serde_json::Value> {
    caller.require(&s, &LIST_ALL, || "status".into())?;
    let stats = s.registry.stats();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "store": s.registry.store().kind(),
        "location": s.registry.store().location(),
        "stale_ms": s.registry.stale_for().map(|d| d.as_millis()),
        "invalid_values": s.registry.store().invalid_values(),
        "revision": stats.revision,
        "services": stats.services,
        "instances": stats.instances,
        "configs": stats.configs,
        "plugins": stats.plugins,
        "leases": s.registry.store().lease_count(),
        "uptime_secs": s.started.elapsed().as_secs(),
    })))
}

async fn services(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<Vec<String>> {
    caller.require(&s, &LIST_ALL, || "services".into())?;
    Ok(Json(s.registry.services().iter().map(ToString::to_string).collect()))
}

/// A service as `GET /v1/services/..` returns it.
#[derive(Debug, Serialize)]
struct ServiceView {
    service: String,
    revision: Revision,
    protect_threshold: f32,
    protection_active: bool,
    healthy: usize,
    routable: usize,
    /// Ids of the instances traffic may go to now.
    selected: Vec<String>,
    instances: Vec<Arc<Instance>>,
}

async fn service(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, name)): Path<(String, String, String)>,
) -> ApiResult<ServiceView> {
    let key = service_key(&ns, &group, &name)?;
    caller.require(&s, &Request::GetService { service: key.clone() }, || key.to_string())?;
    let snap =
        s.registry.snapshot(&key).filter(|snap| !snap.instances.is_empty()).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("service {key} has no instances"))
        })?;
    Ok(Json(ServiceView {
        service: key.to_string(),
        revision: snap.revision,
        protect_threshold: snap.protect_threshold,
        protection_active: snap.protection_active(),
        healthy: snap.healthy_count(),
        routable: snap.routable_count(),
        selected: snap.selected().map(|i| i.id.to_string()).collect(),
        instances: snap.instances.clone(),
    }))
}

#[derive(Debug, Deserialize)]
struct ServiceSettings {
    #[serde(default)]
    protect_threshold: f32,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
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
    caller.require(&s, &Request::PutService { spec: spec.clone() }, || target.clone())?;
    let revision = counted(&s.metrics, "service", s.registry.put(Record::Service(spec.into()), None).await)?;
    caller.accepted(&s, target, Some(revision));
    Ok(Json(json!({ "revision": revision })))
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
    // Validate before granting anything, so a bad request leaves no lease behind.
    instance.validate()?;
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
    caller.require(&s, &Request::Register { instance: instance.clone(), binding }, || target.clone())?;
    let (lease, fresh) = match binding {
        Binding::Ttl { ttl_ms } => {
            (Some(counted(&s.metrics, "lease", s.registry.grant_lease(Duration::from_millis(ttl_ms)).await)?), true)
        }
        Binding::Lease { lease } => (Some(lease), false),
        Binding::Persistent | Binding::Connection => (None, false),
    };
    let result = s.registry.put(Record::Instance(instance.into()), lease).await;
    if let (Err(_), true, Some(id)) = (&result, fresh, lease) {
        // The lease was granted for this registration alone: do not leave it behind.
        let _ = s.registry.revoke_lease(id).await;
    }
    let revision = counted(&s.metrics, "instance", result)?;
    caller.accepted(&s, target, Some(revision));
    Ok(Json(json!({ "revision": revision, "lease": lease })))
}

async fn deregister(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, name, id)): Path<(String, String, String, String)>,
) -> ApiResult<serde_json::Value> {
    let key = InstanceKey { service: service_key(&ns, &group, &name)?, id: InstanceId::new(id)? };
    let request = Request::Deregister { service: key.service.clone(), id: key.id.clone() };
    caller.require(&s, &request, || key.to_string())?;
    let target = key.to_string();
    let revision = counted(&s.metrics, "instance", s.registry.delete(RecordKey::Instance(key)).await)?;
    caller.accepted(&s, target, Some(revision));
    Ok(Json(json!({ "revision": revision })))
}

#[derive(Debug, Deserialize)]
struct GrantRequest {
    ttl_ms: u64,
}

async fn grant(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: Result<Json<GrantRequest>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let req = body(req)?;
    caller.require(&s, &Request::GrantLease { ttl_ms: req.ttl_ms }, || "lease".into())?;
    let lease = counted(&s.metrics, "lease", s.registry.grant_lease(Duration::from_millis(req.ttl_ms)).await)?;
    caller.accepted(&s, format!("lease {}", lease.0), None);
    Ok(Json(json!({ "lease": lease, "ttl_ms": req.ttl_ms })))
}

/// A lease id from a path: the decimal `{id}`, or a typed `invalid`.
fn lease_id(text: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", format!("{text:?} is not a lease id (a decimal number)"))
    })
}

async fn keepalive(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<serde_json::Value> {
    let id = lease_id(&id)?;
    caller.require(&s, &Request::Keepalive { lease: LeaseId(id) }, || format!("lease {id}"))?;
    let ttl = s.registry.keepalive(LeaseId(id)).await.map_err(ApiError::from)?;
    Ok(Json(json!({ "lease": LeaseId(id), "ttl_ms": ttl.as_millis() })))
}

async fn revoke(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<serde_json::Value> {
    let id = lease_id(&id)?;
    caller.require(&s, &Request::RevokeLease { lease: LeaseId(id) }, || format!("lease {id}"))?;
    let revision = counted(&s.metrics, "lease", s.registry.revoke_lease(LeaseId(id)).await)?;
    caller.accepted(&s, format!("lease {id}"), Some(revision));
    Ok(Json(json!({ "lease": LeaseId(id) })))
}

fn config_key(ns: &str, group: &str, data_id: &str) -> Result<ConfigKey, ApiError> {
    Ok(ConfigKey { namespace: Namespace::new(ns)?, group: Group::new(group)?, data_id: DataId::new(data_id)? })
}

async fn get_config(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, id)): Path<(String, String, String)>,
) -> ApiResult<Arc<ConfigEntry>> {
    let key = config_key(&ns, &group, &id)?;
    caller.require(&s, &Request::ConfigGet { key: key.clone() }, || key.to_string())?;
    s.registry
        .config(&key)
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("config {key} not found")))
}

async fn put_config(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, id)): Path<(String, String, String)>,
    body: String,
) -> ApiResult<serde_json::Value> {
    let key = config_key(&ns, &group, &id)?;
    caller.require(&s, &Request::ConfigPut { key: key.clone(), content: body.clone() }, || key.to_string())?;
    let entry = ConfigEntry::new(key.clone(), body)?;
    let version = entry.version.clone();
    let revision = counted(&s.metrics, "config", s.registry.put(Record::Config(entry.into()), None).await)?;
    caller.accepted(&s, key.to_string(), Some(revision));
    Ok(Json(json!({ "revision": revision, "version": version })))
}

async fn delete_config(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((ns, group, id)): Path<(String, String, String)>,
) -> ApiResult<serde_json::Value> {
    let key = config_key(&ns, &group, &id)?;
    caller.require(&s, &Request::ConfigDelete { key: key.clone() }, || key.to_string())?;
    let revision = counted(&s.metrics, "config", s.registry.delete(RecordKey::Config(key.clone())).await)?;
    caller.accepted(&s, key.to_string(), Some(revision));
    Ok(Json(json!({ "revision": revision })))
}

async fn plugins(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> ApiResult<serde_json::Value> {
    caller.require(&s, &Request::PluginList, || "plugins".into())?;
    Ok(Json(json!({
        "plugins": s.registry.plugins(),
        "slots": s.plugins.status(),
        "hosts": sextant_quic::server::host_reports(&s.registry),
        "failures": s.plugins.failures(),
    })))
}
