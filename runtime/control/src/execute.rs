//! The one command path: a protocol request in, its response out, for every door.
//!
//! A door (the QUIC server, the admin HTTP API, a test) authenticates the caller and checks
//! the right ([`sextant_proto::acl::permits`]) itself; everything after that is here:
//! validation ([`sextant_proto::server::normalize`], the rule the protocol documents), the
//! registry call, the error code ([`error_code`]), the answer, and the write counters. A
//! refused request changed nothing.
//!
//! What only some doors have comes through [`Origin`]: a QUIC connection has a lease for its
//! connection-bound instances and a registration limit; an HTTP request has neither
//! ([`Detached`]: the `connection` binding is refused as invalid).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sextant_core::store::{Store, StoreError};
use sextant_core::{
    ConfigEntry, ConfigKey, CoreError, Instance, InstanceKey, LeaseId, PluginRecord, Record, RecordKey, Revision,
};
use sextant_proto::acl::write_kind;
use sextant_proto::message::ServiceView;
use sextant_proto::{Binding, ErrorCode, Request, Response};
use sextant_store::{Registry, RegistryError};

use crate::upload::Uploads;

/// How many times a config write reads and tries again when another writer came between.
const CONFIG_WRITE_TRIES: usize = 8;

use crate::{ManagerError, PluginManager};

/// What the executor needs from the door a request came through.
pub trait Origin: Send + Sync {
    /// The lease connection-bound instances of this origin hang on (granted on first use and
    /// kept alive by the door); `None` for a door without connections.
    fn connection_lease(&self) -> impl Future<Output = Option<Result<LeaseId, RegistryError>>> + Send;

    /// The connection's lease `old` is gone from the store: a new one, with the origin's
    /// connection-bound instances put on it again.
    fn renew_connection_lease(&self, old: LeaseId) -> impl Future<Output = Result<LeaseId, RegistryError>> + Send;

    /// Whether one more registration of `key` is within the origin's limit (`Err`: the
    /// message of the `limited` answer).
    fn admit_registration(&self, key: &InstanceKey) -> Result<(), String>;

    /// `instance` was registered through this origin (`connection_bound`: with the connection
    /// binding).
    fn registered(&self, instance: &Arc<Instance>, connection_bound: bool);

    /// `key` was deregistered through this origin.
    fn deregistered(&self, key: &InstanceKey);
}

/// A door without connections or per-caller limits (the HTTP API, a test).
#[derive(Debug, Clone, Copy, Default)]
pub struct Detached;

impl Origin for Detached {
    async fn connection_lease(&self) -> Option<Result<LeaseId, RegistryError>> {
        None
    }

    async fn renew_connection_lease(&self, old: LeaseId) -> Result<LeaseId, RegistryError> {
        Err(RegistryError::Store(StoreError::Rejected(CoreError::LeaseNotFound(old))))
    }

    fn admit_registration(&self, _: &InstanceKey) -> Result<(), String> {
        Ok(())
    }

    fn registered(&self, _: &Arc<Instance>, _: bool) {}

    fn deregistered(&self, _: &InstanceKey) {}
}

/// Counts writes by kind (`service`, `instance`, `lease`, `config`, `plugin`): accepted, or
/// refused after the right check (invalid, refused or not taken by the store).
pub trait WriteCounter: Send + Sync + std::fmt::Debug {
    /// One write of `kind`, `accepted` or not.
    fn count(&self, kind: &'static str, accepted: bool);
}

/// The error code of a store error: the one mapping every door answers with.
#[must_use]
pub fn error_code(e: &StoreError) -> ErrorCode {
    match e {
        StoreError::Rejected(CoreError::Invalid(_) | CoreError::LeaseExists(_)) => ErrorCode::Invalid,
        StoreError::Rejected(CoreError::LeaseNotFound(_)) => ErrorCode::LeaseNotFound,
        StoreError::Rejected(CoreError::KeyNotFound(_)) => ErrorCode::NotFound,
        StoreError::Unavailable(_) | StoreError::Lagged | StoreError::Closed => ErrorCode::Unavailable,
        StoreError::Conflict { .. } => ErrorCode::Conflict,
    }
}

fn store_error(e: RegistryError) -> Response {
    let RegistryError::Store(e) = e;
    Response::error(error_code(&e), e)
}

/// Components kept for chunked reads (`artifact_get`): a gateway reads one in chunks, and
/// the store is not read once per chunk.
const ARTIFACTS_KEPT: usize = 4;

/// Executes requests against a registry and, when the server runs one, its plugin manager.
/// Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Executor<S> {
    registry: Registry<S>,
    plugins: Option<PluginManager<S>>,
    counter: Option<Arc<dyn WriteCounter>>,
    artifacts: Mutex<VecDeque<(String, Arc<Vec<u8>>)>>,
    uploads: Uploads,
}

impl<S: Store + Clone> Executor<S> {
    /// An executor over `registry`; without a plugin manager, picks and plugin requests are
    /// answered `unavailable`.
    #[must_use]
    pub fn new(registry: Registry<S>, plugins: Option<PluginManager<S>>) -> Self {
        Self { registry, plugins, counter: None, artifacts: Mutex::new(VecDeque::new()), uploads: Uploads::default() }
    }

    /// Counts writes (every door's) with `counter`.
    #[must_use]
    pub fn with_counter(mut self, counter: Arc<dyn WriteCounter>) -> Self {
        self.counter = Some(counter);
        self
    }

    /// The registry.
    #[must_use]
    pub fn registry(&self) -> &Registry<S> {
        &self.registry
    }

    /// The plugin manager, if the server runs one.
    #[must_use]
    pub fn plugins(&self) -> Option<&PluginManager<S>> {
        self.plugins.as_ref()
    }

    /// Executes `request` (authenticated and permitted by the door) for `origin`.
    /// `hello`, `ping` and `subscribe` are the session's and the door's, not commands:
    /// answered `internal`.
    pub async fn execute<O: Origin>(&self, origin: &O, request: Request) -> Response {
        let kind = write_kind(&request);
        // A write is a span of the trace (registration, config, plugin load, …).
        let span = match kind {
            Some(_) => tracing::info_span!(
                target: sextant_core::TRACE_TARGET,
                "write",
                otel.name = request.kind(),
                sextant.request = request.kind(),
                sextant.revision = tracing::field::Empty,
                sextant.error = tracing::field::Empty,
            ),
            None => tracing::Span::none(),
        };
        let response = match sextant_proto::server::normalize(request) {
            Ok(request) => tracing::Instrument::instrument(self.run(origin, request), span.clone())
                .await
                .unwrap_or_else(store_error),
            Err(message) => Response::error(ErrorCode::Invalid, message),
        };
        match &response {
            Response::Written { revision, .. } | Response::PluginWritten { revision, .. } => {
                span.record("sextant.revision", revision.0);
            }
            Response::Error { code, .. } => {
                span.record("sextant.error", code.to_string());
            }
            _ => {}
        }
        if let (Some(kind), Some(counter)) = (kind, &self.counter) {
            match &response {
                Response::Error { code: ErrorCode::Limited | ErrorCode::Forbidden | ErrorCode::Internal, .. } => {}
                Response::Error { .. } => counter.count(kind, false),
                _ => counter.count(kind, true),
            }
        }
        response
    }

    async fn run<O: Origin>(&self, origin: &O, request: Request) -> Result<Response, RegistryError> {
        let registry = &self.registry;
        let written = |revision| Response::Written { revision, lease: None, version: None };
        Ok(match request {
            Request::Register { instance, binding } => return self.register(origin, instance, binding).await,
            Request::Deregister { service, id } => {
                let key = InstanceKey { service, id };
                let revision = registry.delete(RecordKey::Instance(key.clone())).await?;
                origin.deregistered(&key);
                written(revision)
            }
            Request::GrantLease { ttl_ms } => {
                Response::Lease { lease: registry.grant_lease(Duration::from_millis(ttl_ms)).await?, ttl_ms }
            }
            Request::Keepalive { lease } => {
                let ttl = registry.keepalive(lease).await?;
                Response::Lease { lease, ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX) }
            }
            Request::RevokeLease { lease } => written(registry.revoke_lease(lease).await?),
            Request::PutService { spec } => written(registry.put(Record::Service(spec.into()), None).await?),
            Request::GetService { service } => self.service(service),
            Request::List { scope } => {
                let snapshot = registry.list(&scope);
                Response::Records { revision: snapshot.revision, records: snapshot.records, stale_ms: self.stale_ms() }
            }
            Request::ConfigGet { key, reader } => {
                let entry = registry.config(&key);
                Response::Config {
                    entry: match reader {
                        Some(reader) => entry.map(|e| Arc::new(e.for_reader(&reader))),
                        None => entry,
                    },
                }
            }
            request @ (Request::ConfigPut { .. }
            | Request::ConfigBeta { .. }
            | Request::ConfigPromote { .. }
            | Request::ConfigWithdraw { .. }) => return self.write_config(request).await,
            Request::ConfigDelete { key } => written(registry.delete(RecordKey::Config(key)).await?),
            Request::Pick { tried, .. } if tried.len() > sextant_proto::MAX_TRIED => Response::error(
                ErrorCode::Invalid,
                format!("pick: {} addresses tried, at most {} may be named", tried.len(), sextant_proto::MAX_TRIED),
            ),
            Request::Pick { service, hash_key, headers, tried } => match &self.plugins {
                None => no_plugins(),
                Some(p) => {
                    let picked = p.pick(&service, hash_key.as_deref(), headers, tried);
                    let protection_active = match &picked {
                        Some(p) => p.protection_active,
                        None => registry.snapshot(&service).is_some_and(|s| s.protection_active()),
                    };
                    Response::Picked { instance: picked.map(|p| p.instance), protection_active }
                }
            },
            Request::ArtifactGet { sha256, offset } => self.artifact(sha256, offset).await,
            Request::PluginList => {
                let hosts = self.host_reports();
                let mut bindings = self.plugins.as_ref().map(PluginManager::bindings).unwrap_or_default();
                for b in &mut bindings {
                    b.count_hosts(&hosts);
                }
                let plugins = registry.plugins();
                let rollouts = self.rollout_reports(&plugins);
                Response::Plugins {
                    plugins,
                    slots: self.plugins.as_ref().map(PluginManager::status).unwrap_or_default(),
                    hosts,
                    failures: self.plugins.as_ref().map(PluginManager::failures).unwrap_or_default(),
                    bindings,
                    rollouts,
                }
            }
            Request::PluginLoad { name, kind, binding, config, component, component_sha256, rollout } => match &self
                .plugins
            {
                None => no_plugins(),
                Some(p) => {
                    let (bytes, uploaded) = match self.component(component, component_sha256).await {
                        Ok(c) => c,
                        Err(refused) => return Ok(refused),
                    };
                    let sha = uploaded.then(|| sextant_core::sha256_hex(&bytes));
                    let kept = sha.as_ref().map(|_| bytes.clone());
                    match p
                        .load_with_rollout(name.as_str(), &kind, &binding, &config, bytes, "api", rollout.as_deref())
                        .await
                    {
                        Ok(l) => {
                            Response::PluginWritten { record: l.record, revision: l.revision, validated: l.validated }
                        }
                        Err(e) => {
                            // Refused: the upload stays, for a corrected load (another kind,
                            // config or binding) without sending it again.
                            if let (Some(sha), Some(bytes)) = (sha, kept) {
                                self.uploads.put_back(&sha, bytes);
                            }
                            manager_error(e)
                        }
                    }
                }
            },
            Request::PluginUpload { sha256, size, offset, data } => match &self.plugins {
                None => no_plugins(),
                Some(_) => {
                    if let Err(e) = sextant_core::check_sha256(&sha256) {
                        return Ok(Response::error(ErrorCode::Invalid, e));
                    }
                    let chunk = match sextant_proto::decode_chunk(&data) {
                        Ok(c) => c,
                        Err(e) => return Ok(Response::error(ErrorCode::Invalid, e)),
                    };
                    match self.uploads.chunk(&sha256, size, offset, &chunk) {
                        Ok(received) => Response::Uploaded { sha256, received, size },
                        Err((code, message)) => Response::error(code, message),
                    }
                }
            },
            Request::PluginRollback { name, forward } => match &self.plugins {
                None => no_plugins(),
                Some(p) => plugin_written(if forward { p.roll_forward(&name).await } else { p.rollback(&name).await }),
            },
            Request::PluginRollout { name, action } => match &self.plugins {
                None => no_plugins(),
                Some(p) => plugin_written(p.steer_rollout(&name, action, "operator via api").await),
            },
            Request::PluginDelete { name } => match &self.plugins {
                None => no_plugins(),
                Some(p) => match p.delete(&name).await {
                    Ok(revision) => written(revision),
                    Err(e) => manager_error(e),
                },
            },
            Request::PluginFault { name, kind, sha256, service, host, reason } => match &self.plugins {
                None => no_plugins(),
                Some(p) => {
                    let fault = crate::Fault { plugin: name, kind, sha256, service: service.to_string(), host, reason };
                    match p.take_fault(fault).await {
                        Ok(t) => Response::PluginFaultTaken {
                            decision: t.decision,
                            ignored: t.ignored,
                            hosts: t.hosts,
                            needed: t.needed,
                            revision: t.revision,
                        },
                        Err(e) => manager_error(e),
                    }
                }
            },
            Request::Hello { .. } | Request::Ping { .. } | Request::Subscribe { .. } => {
                Response::error(ErrorCode::Internal, "hello, ping and subscribe are the session's, not commands")
            }
        })
    }

    /// A service exists once it has instances or a spec (`put_service`).
    fn service(&self, service: sextant_core::ServiceKey) -> Response {
        let registry = &self.registry;
        let has_spec = || {
            let scope = sextant_core::Scope::Service(service.clone());
            registry.list(&scope).records.iter().any(|r| matches!(r, Record::Service(_)))
        };
        match registry.snapshot(&service).filter(|s| !s.instances.is_empty() || has_spec()) {
            Some(s) => Response::Service(ServiceView {
                revision: s.revision,
                protect_threshold: s.protect_threshold,
                protection_active: s.protection_active(),
                healthy: s.healthy_count(),
                routable: s.routable_count(),
                selected: s.selected().map(|i| i.id.clone()).collect(),
                instances: s.instances.iter().cloned().collect(),
                stale_ms: self.stale_ms(),
                service,
            }),
            None => Response::error(ErrorCode::NotFound, format!("service {service} has no instances and no spec")),
        }
    }

    /// Writes what `change` makes of a config entry (given the entry as stored, `None` when
    /// absent), by a read and a conditional write retried when another writer came between;
    /// `change` refuses with the answer to give (nothing written). A write that replaces the
    /// served version keeps the replaced content as an artifact named by its sha256, for the
    /// entry's history.
    async fn update_config(
        &self,
        key: &ConfigKey,
        change: impl Fn(Option<&ConfigEntry>) -> Result<ConfigEntry, Box<Response>>,
    ) -> Result<Result<Revision, Response>, RegistryError> {
        let record_key = RecordKey::Config(key.clone());
        let store = self.registry.store();
        for _ in 0..CONFIG_WRITE_TRIES {
            let current = match store.get(record_key.clone()).await.map_err(RegistryError::Store)? {
                Some((Record::Config(c), at)) => Some((c, at)),
                _ => None,
            };
            let next = match change(current.as_ref().map(|(c, _)| &**c)) {
                Ok(next) => next,
                Err(refused) => return Ok(Err(*refused)),
            };
            if let Err(e) = next.validate() {
                return Ok(Err(Response::error(ErrorCode::Invalid, format!("config {key}: {e}; nothing written"))));
            }
            if let Some((c, _)) = &current
                && c.version != next.version
            {
                // Idempotent: an artifact is named by its content.
                store.put_artifact(c.content.clone().into_bytes()).await.map_err(RegistryError::Store)?;
            }
            match self.registry.put_if(Record::Config(next.into()), current.map(|(_, at)| at)).await {
                Err(RegistryError::Store(StoreError::Conflict { .. })) => {}
                other => return other.map(Ok),
            }
        }
        Ok(Err(Response::error(
            ErrorCode::Unavailable,
            format!("config {key}: other writers won {CONFIG_WRITE_TRIES} times in a row; nothing written"),
        )))
    }

    /// `config_put`, `config_beta`, `config_promote` and `config_withdraw`: the entry written
    /// (answered `written` with the version it serves or, for a candidate, the candidate's).
    async fn write_config(&self, request: Request) -> Result<Response, RegistryError> {
        let now = crate::slots::unix_ms();
        let (version, result) = match request {
            Request::ConfigPut { key, content, replaces } => {
                let entry = match ConfigEntry::new(key.clone(), content) {
                    Ok(entry) => entry,
                    Err(e) => return Ok(Response::error(ErrorCode::Invalid, e)),
                };
                let version = entry.version.clone();
                let result = self
                    .update_config(&key, |current| match (current, replaces.as_deref()) {
                        (None, Some(replaces)) => Err(config_conflict(&key, "absent", replaces)),
                        (Some(c), Some(replaces)) if c.version != replaces => {
                            Err(config_conflict(&key, &format!("at version {}", c.version), replaces))
                        }
                        (None, None) => Ok(entry.clone()),
                        (Some(c), _) => Ok(c.replaced_by(entry.clone(), now)),
                    })
                    .await?;
                (version, result)
            }
            Request::ConfigBeta { key, content, rule } => {
                let version = sextant_core::sha256_hex(content.as_bytes());
                let result = self
                    .update_config(&key, |current| match current {
                        None => Err(Box::new(Response::error(
                            ErrorCode::NotFound,
                            format!("config {key} not found: a candidate needs a stable version; nothing written"),
                        ))),
                        Some(c) if c.version == version => Err(Box::new(Response::error(
                            ErrorCode::Invalid,
                            format!("config {key}: the candidate is the stable version {version}; nothing written"),
                        ))),
                        Some(c) => c.with_candidate(content.clone(), rule.clone(), now).map_err(|e| {
                            Box::new(Response::error(ErrorCode::Invalid, format!("config {key}: {e}; nothing written")))
                        }),
                    })
                    .await?;
                (version, result)
            }
            Request::ConfigPromote { key, version: expected } => {
                let promoted = Mutex::new(String::new());
                let result = self
                    .update_config(&key, |current| {
                        let candidate = current.and_then(|c| c.beta.as_ref());
                        match (candidate, expected.as_deref()) {
                            (None, _) => Err(no_candidate(&key, current.is_some())),
                            (Some(beta), Some(expected)) if beta.version != expected => Err(Box::new(Response::error(
                                ErrorCode::Conflict,
                                format!(
                                    "config {key}: the candidate is version {}, not {expected}; nothing written",
                                    beta.version
                                ),
                            ))),
                            (Some(beta), _) => {
                                promoted.lock().clone_from(&beta.version);
                                current.and_then(|c| c.promoted(now)).ok_or_else(|| no_candidate(&key, true))
                            }
                        }
                    })
                    .await?;
                (promoted.into_inner(), result)
            }
            Request::ConfigWithdraw { key } => {
                let stable = Mutex::new(String::new());
                let result = self
                    .update_config(&key, |current| match current {
                        Some(c) if c.beta.is_some() => {
                            stable.lock().clone_from(&c.version);
                            let mut next = c.clone();
                            next.beta = None;
                            Ok(next)
                        }
                        _ => Err(no_candidate(&key, current.is_some())),
                    })
                    .await?;
                (stable.into_inner(), result)
            }
            other => {
                return Ok(Response::error(ErrorCode::Internal, format!("{} is not a config write", other.kind())));
            }
        };
        Ok(match result {
            Ok(revision) => Response::Written { revision, lease: None, version: Some(version) },
            Err(refused) => refused,
        })
    }

    /// How long the store has been unreachable, for answers built from the last known state.
    fn stale_ms(&self) -> Option<u64> {
        self.registry.stale_for().map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// What other hosts report running, from their registrations' metadata: read from the
    /// services' snapshots (no copy of the registry).
    #[must_use]
    pub fn host_reports(&self) -> Vec<sextant_proto::HostReport> {
        let registry = &self.registry;
        let snapshots: Vec<_> = registry.services().iter().filter_map(|s| registry.snapshot(s)).collect();
        sextant_proto::host_reports(snapshots.iter().flat_map(|s| s.instances.iter().map(|i| &**i)))
    }

    /// What gateways report about the rollouts of `plugins` (those that have one), from
    /// their registrations' metadata.
    fn rollout_reports(&self, plugins: &[Arc<sextant_core::PluginRecord>]) -> Vec<sextant_proto::RolloutHostReport> {
        let with_rollout: Vec<_> = plugins.iter().filter(|p| p.rollout.is_some()).collect();
        if with_rollout.is_empty() {
            return Vec::new();
        }
        let registry = &self.registry;
        let snapshots: Vec<_> = registry.services().iter().filter_map(|s| registry.snapshot(s)).collect();
        let mut out = Vec::new();
        for p in with_rollout {
            let instances = snapshots.iter().flat_map(|s| s.instances.iter().map(|i| &**i));
            for (host, report) in sextant_proto::rollout_reports(instances, p.name.as_str()) {
                if let Ok(report) = report {
                    out.push(sextant_proto::RolloutHostReport { plugin: p.name.to_string(), host, report });
                }
            }
        }
        out
    }

    /// The component a `plugin_load` names: its own bytes, or an upload (`true`) or a stored
    /// component by sha256; `Err` is the answer when there is none.
    async fn component(&self, inline: String, sha256: Option<String>) -> Result<(Vec<u8>, bool), Response> {
        let sha256 = match (inline.is_empty(), sha256) {
            (false, None) => {
                return sextant_proto::decode_component(&inline)
                    .map(|b| (b, false))
                    .map_err(|e| Response::error(ErrorCode::Invalid, e));
            }
            (true, Some(sha)) => sha,
            (false, Some(_)) => {
                return Err(Response::error(ErrorCode::Invalid, "give component or component_sha256, not both"));
            }
            (true, None) => return Err(Response::error(ErrorCode::Invalid, "no component and no component_sha256")),
        };
        if let Err(e) = sextant_core::check_sha256(&sha256) {
            return Err(Response::error(ErrorCode::Invalid, e));
        }
        match self.uploads.take(&sha256) {
            Ok(Some(bytes)) => return Ok((bytes, true)),
            Ok(None) => {}
            Err(incomplete) => return Err(Response::error(ErrorCode::Invalid, incomplete)),
        }
        match self.registry.store().get_artifact(sha256.clone()).await {
            Ok(Some(bytes)) => Ok((bytes, false)),
            Ok(None) => Err(Response::error(
                ErrorCode::NotFound,
                format!("no component {sha256} was uploaded or is stored: send it with plugin_upload first"),
            )),
            Err(e) => Err(store_error(RegistryError::Store(e))),
        }
    }

    /// One chunk of a stored component.
    async fn artifact(&self, sha256: String, offset: u64) -> Response {
        if let Err(e) = sextant_core::check_sha256(&sha256) {
            return Response::error(ErrorCode::Invalid, e);
        }
        let kept = self.artifacts.lock().iter().find(|(s, _)| *s == sha256).map(|(_, b)| Arc::clone(b));
        let bytes = match kept {
            Some(b) => b,
            None => match self.registry.store().get_artifact(sha256.clone()).await {
                Ok(Some(b)) => {
                    let b = Arc::new(b);
                    let mut kept = self.artifacts.lock();
                    kept.push_back((sha256.clone(), Arc::clone(&b)));
                    while kept.len() > ARTIFACTS_KEPT {
                        kept.pop_front();
                    }
                    b
                }
                Ok(None) => return Response::error(ErrorCode::NotFound, format!("no component {sha256} in the store")),
                Err(e) => return store_error(RegistryError::Store(e)),
            },
        };
        let total = bytes.len() as u64;
        if offset > total {
            return Response::error(
                ErrorCode::Invalid,
                format!("offset {offset} is past the component's {total} bytes"),
            );
        }
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = bytes.len().min(start.saturating_add(sextant_proto::message::ARTIFACT_CHUNK));
        Response::Artifact { sha256, offset, total, data: sextant_proto::encode_component(&bytes[start..end]) }
    }

    async fn register<O: Origin>(
        &self,
        origin: &O,
        instance: Instance,
        binding: Binding,
    ) -> Result<Response, RegistryError> {
        let registry = &self.registry;
        if let Err(message) = origin.admit_registration(&instance.key()) {
            return Ok(Response::error(ErrorCode::Limited, message));
        }
        let (lease, fresh) = match binding {
            Binding::Persistent => (None, false),
            Binding::Connection => match origin.connection_lease().await {
                Some(lease) => (Some(lease?), false),
                None => {
                    return Ok(Response::error(
                        ErrorCode::Invalid,
                        "the connection binding needs a protocol connection; use a lease or a TTL here",
                    ));
                }
            },
            Binding::Lease { lease } => (Some(lease), false),
            Binding::Ttl { ttl_ms } => (Some(registry.grant_lease(Duration::from_millis(ttl_ms)).await?), true),
        };
        let mut instance = instance;
        // The instances of a service share its name (once the service is in the view): a
        // decoded instance brings three fresh allocations for namespace, group and name,
        // which a million instances of ten thousand services would each keep.
        if let Some(known) = registry.snapshot(&instance.service) {
            instance.service = known.service.clone();
        }
        let instance = Arc::new(instance);
        let mut result = registry.put(Record::Instance(instance.clone()), lease).await;
        if binding == Binding::Connection
            && let Err(RegistryError::Store(StoreError::Rejected(CoreError::LeaseNotFound(old)))) = &result
        {
            // The connection's lease was lost under this registration: once more on its
            // replacement.
            let renewed = origin.renew_connection_lease(*old).await?;
            result = registry.put(Record::Instance(instance.clone()), Some(renewed)).await;
        }
        match result {
            Ok(revision) => {
                origin.registered(&instance, binding == Binding::Connection);
                let lease = if matches!(binding, Binding::Ttl { .. } | Binding::Lease { .. }) { lease } else { None };
                Ok(Response::Written { revision, lease, version: None })
            }
            Err(e) => {
                // A lease granted for this registration alone must not outlive its failure.
                if let (true, Some(id)) = (fresh, lease) {
                    let _ = registry.revoke_lease(id).await;
                }
                Err(e)
            }
        }
    }
}

fn no_plugins() -> Response {
    Response::error(ErrorCode::Unavailable, "this server runs no plugin host")
}

fn plugin_written(result: Result<(Arc<PluginRecord>, Revision), ManagerError>) -> Response {
    match result {
        Ok((record, revision)) => Response::PluginWritten { record, revision, validated: None },
        Err(e) => manager_error(e),
    }
}

fn manager_error(e: ManagerError) -> Response {
    match e {
        ManagerError::Rejected { .. } | ManagerError::MarkedBad { .. } => Response::error(ErrorCode::PluginRejected, e),
        ManagerError::Invalid(_)
        | ManagerError::BadConfig(_)
        | ManagerError::NoPrevious(_)
        | ManagerError::NoForward(_)
        | ManagerError::Plan(_)
        | ManagerError::Rollout(_)
        | ManagerError::NoStable
        | ManagerError::RolloutChanges { .. }
        | ManagerError::RolloutRunning(_)
        | ManagerError::SameVersion(_) => Response::error(ErrorCode::Invalid, e),
        ManagerError::NotFound(_) | ManagerError::NoRollout(_) => Response::error(ErrorCode::NotFound, e),
        ManagerError::Store(e) => store_error(e),
    }
}

/// The `conflict` answer to a `config_put` whose `replaces` is not the entry's version.
fn config_conflict(key: &ConfigKey, now: &str, replaces: &str) -> Box<Response> {
    Box::new(Response::error(
        ErrorCode::Conflict,
        format!("config {key} is {now}, not version {replaces}; nothing written"),
    ))
}

/// The `not_found` answer to promoting or withdrawing a candidate that is not there.
fn no_candidate(key: &ConfigKey, exists: bool) -> Box<Response> {
    let what = if exists { "has no candidate" } else { "not found" };
    Box::new(Response::error(ErrorCode::NotFound, format!("config {key} {what}; nothing written")))
}
