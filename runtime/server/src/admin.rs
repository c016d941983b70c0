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

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sextant_core::store::StoreError;
use sextant_core::{
    ConfigEntry, ConfigKey, CoreError, DataId, Group, Instance, InstanceId, InstanceKey, LeaseId, Namespace, Record,
    RecordKey, Revision, ServiceKey, ServiceName, ServiceSpec, ValidationError,
};
use sextant_plugin::PluginManager;
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
    started: Instant,
}

impl AppState {
    /// State over `registry` and its plugin manager.
    #[must_use]
    pub fn new(registry: Registry<AnyStore>, plugins: PluginManager<AnyStore>, metrics: Arc<Metrics>) -> Self {
        Self { registry, plugins, metrics, started: Instant::now() }
    }
}

/// The routes above.
pub fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
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
        .with_state(state)
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
    s.metrics.plugin_failures.set(gauge(s.plugins.failures().len()));
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], s.metrics.encode())
}

async fn status(State(s): State<AppState>) -> Json<serde_json::Value> {
    let stats = s.registry.stats();
    Json(json!({
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
    }))
}

async fn services(State(s): State<AppState>) -> Json<Vec<String>> {
    Json(s.registry.services().iter().map(ToString::to_string).collect())
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
    Path((ns, group, name)): Path<(String, String, String)>,
) -> ApiResult<ServiceView> {
    let key = service_key(&ns, &group, &name)?;
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
    Path((ns, group, name)): Path<(String, String, String)>,
    settings: Result<Json<ServiceSettings>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let body = body(settings)?;
    let spec = ServiceSpec {
        service: service_key(&ns, &group, &name)?,
        protect_threshold: body.protect_threshold,
        metadata: body.metadata,
    };
    let revision = counted(&s.metrics, "service", s.registry.put(Record::Service(spec.into()), None).await)?;
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
    req: Result<Json<RegisterRequest>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let RegisterRequest { instance, lease, ttl_ms } = body(req)?;
    // Validate before granting anything, so a bad request leaves no lease behind.
    instance.validate()?;
    let (lease, fresh) = match (instance.ephemeral, lease, ttl_ms) {
        (false, None, None) => (None, false),
        (false, _, _) => return Err(ValidationError::LeaseMismatch.into()),
        (true, Some(id), None) => (Some(id), false),
        (true, None, Some(ms)) => {
            (Some(counted(&s.metrics, "lease", s.registry.grant_lease(Duration::from_millis(ms)).await)?), true)
        }
        (true, _, _) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                "an ephemeral instance needs exactly one of `lease` or `ttl_ms`",
            ));
        }
    };
    let result = s.registry.put(Record::Instance(instance.into()), lease).await;
    if let (Err(_), true, Some(id)) = (&result, fresh, lease) {
        // The lease was granted for this registration alone: do not leave it behind.
        let _ = s.registry.revoke_lease(id).await;
    }
    let revision = counted(&s.metrics, "instance", result)?;
    Ok(Json(json!({ "revision": revision, "lease": lease })))
}

async fn deregister(
    State(s): State<AppState>,
    Path((ns, group, name, id)): Path<(String, String, String, String)>,
) -> ApiResult<serde_json::Value> {
    let key = InstanceKey { service: service_key(&ns, &group, &name)?, id: InstanceId::new(id)? };
    let revision = counted(&s.metrics, "instance", s.registry.delete(RecordKey::Instance(key)).await)?;
    Ok(Json(json!({ "revision": revision })))
}

#[derive(Debug, Deserialize)]
struct GrantRequest {
    ttl_ms: u64,
}

async fn grant(
    State(s): State<AppState>,
    req: Result<Json<GrantRequest>, JsonRejection>,
) -> ApiResult<serde_json::Value> {
    let req = body(req)?;
    let lease = counted(&s.metrics, "lease", s.registry.grant_lease(Duration::from_millis(req.ttl_ms)).await)?;
    Ok(Json(json!({ "lease": lease, "ttl_ms": req.ttl_ms })))
}

async fn keepalive(State(s): State<AppState>, Path(id): Path<u64>) -> ApiResult<serde_json::Value> {
    let ttl = s.registry.keepalive(LeaseId(id)).await.map_err(ApiError::from)?;
    Ok(Json(json!({ "lease": id, "ttl_ms": ttl.as_millis() })))
}

async fn revoke(State(s): State<AppState>, Path(id): Path<u64>) -> ApiResult<serde_json::Value> {
    counted(&s.metrics, "lease", s.registry.revoke_lease(LeaseId(id)).await)?;
    Ok(Json(json!({ "lease": id })))
}

fn config_key(ns: &str, group: &str, data_id: &str) -> Result<ConfigKey, ApiError> {
    Ok(ConfigKey { namespace: Namespace::new(ns)?, group: Group::new(group)?, data_id: DataId::new(data_id)? })
}

async fn get_config(
    State(s): State<AppState>,
    Path((ns, group, id)): Path<(String, String, String)>,
) -> ApiResult<Arc<ConfigEntry>> {
    let key = config_key(&ns, &group, &id)?;
    s.registry
        .config(&key)
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("config {key} not found")))
}

async fn put_config(
    State(s): State<AppState>,
    Path((ns, group, id)): Path<(String, String, String)>,
    body: String,
) -> ApiResult<serde_json::Value> {
    let entry = ConfigEntry::new(config_key(&ns, &group, &id)?, body)?;
    let version = entry.version.clone();
    let revision = counted(&s.metrics, "config", s.registry.put(Record::Config(entry.into()), None).await)?;
    Ok(Json(json!({ "revision": revision, "version": version })))
}

async fn delete_config(
    State(s): State<AppState>,
    Path((ns, group, id)): Path<(String, String, String)>,
) -> ApiResult<serde_json::Value> {
    let key = RecordKey::Config(config_key(&ns, &group, &id)?);
    let revision = counted(&s.metrics, "config", s.registry.delete(key).await)?;
    Ok(Json(json!({ "revision": revision })))
}

async fn plugins(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "plugins": s.registry.plugins(),
        "slots": s.plugins.status(),
        "failures": s.plugins.failures(),
    }))
}
