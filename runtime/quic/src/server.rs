//! The QUIC server: one task per connection, one per request stream, one for all of a
//! connection's subscriptions (its feed, `crate::feed`).
//!
//! A connection starts with `hello` on its first stream (within the request timeout); each
//! later stream carries one request, answered on the same stream, except `subscribe`, whose
//! stream joins the connection's feed and then carries events until either side closes it.
//! A malformed or oversized frame, a payload that is not a known message, anything out of
//! order, or a stream that does not finish in time closes that connection with an error code
//! (after an `error` frame on the stream); a known request with invalid contents is answered
//! `invalid`. Other connections are untouched and nothing is changed. Concurrent streams per
//! connection are capped by QUIC flow control (`max_streams`).
//!
//! Instances registered with the `connection` binding hang on one lease per connection
//! (TTL = grace period) that the server keeps alive while the connection lives. When the
//! connection is lost the keepalives stop and the instances are removed once the grace
//! period has passed (Nacos 2 / ZooKeeper ephemeral nodes).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use quinn::{Connection, Endpoint, SendStream};
use sextant_core::store::{Store, StoreError};
use sextant_core::{ConfigEntry, CoreError, Instance, InstanceKey, LeaseId, PluginRecord, Record, RecordKey};
use sextant_plugin::{ManagerError, PluginManager};
use sextant_proto::acl::Acl;
use sextant_proto::message::ServiceView;
use sextant_proto::server::{ServerSession, ServerSettings, Step};
use sextant_proto::{Binding, ErrorCode, Request, RequestError, Response};
use sextant_store::{Registry, RegistryError};
use tokio::sync::OnceCell;

use crate::feed::{FeedHandle, FrameCache};
use crate::wire::{self, WireError};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How long connection-bound instances outlive a lost connection.
    pub grace: Duration,
    /// Time a request stream has to arrive complete.
    pub request_timeout: Duration,
    /// Tokens and rights.
    pub acl: Arc<Acl>,
    /// Id reported in `welcome`.
    pub server_id: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            acl: Arc::new(Acl::open()),
            server_id: "sextant".into(),
        }
    }
}

#[derive(Debug)]
struct Shared<S> {
    registry: Registry<S>,
    options: ServerOptions,
    /// The plugin manager: picks and plugin administration. Without one, those requests
    /// are answered `unavailable`.
    plugins: Option<PluginManager<S>>,
    /// Event frames shared by every subscriber of a change.
    frames: Arc<FrameCache>,
}

/// A bound QUIC server.
#[derive(Debug)]
pub struct QuicServer<S> {
    endpoint: Endpoint,
    shared: Arc<Shared<S>>,
}

/// Answers the stream with an `error` frame (so the client can tell why), then closes the
/// connection with that code; returns `false` (the connection is closed).
async fn refuse<S>(c: &Conn<S>, mut send: SendStream, code: ErrorCode, reason: &str) -> bool {
    let _ = wire::write(&mut send, &Response::error(code, reason)).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
    close(&c.conn, code, reason);
    false
}

fn close(conn: &Connection, code: ErrorCode, reason: &str) {
    tracing::debug!(remote = %conn.remote_address(), %code, reason, "closing connection");
    conn.close(code.as_u32().into(), reason.as_bytes());
}

impl<S: Store + Clone> QuicServer<S> {
    /// Binds `addr` (UDP) with `config`.
    pub fn bind(
        addr: SocketAddr,
        config: quinn::ServerConfig,
        registry: Registry<S>,
        options: ServerOptions,
    ) -> std::io::Result<Self> {
        let endpoint = Endpoint::server(config, addr)?;
        let shared = Arc::new(Shared { registry, options, plugins: None, frames: Arc::default() });
        Ok(Self { endpoint, shared })
    }

    /// Serves `pick` and the plugin requests through `plugins`.
    #[must_use]
    pub fn with_plugins(self, plugins: PluginManager<S>) -> Self {
        let shared = Shared {
            registry: self.shared.registry.clone(),
            options: self.shared.options.clone(),
            plugins: Some(plugins),
            frames: Arc::default(),
        };
        Self { endpoint: self.endpoint, shared: Arc::new(shared) }
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Serves until `shutdown` resolves, then closes every connection and waits (briefly)
    /// for the close to be sent.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let shared = self.shared.clone();
                    tokio::spawn(async move {
                        match incoming.await {
                            Ok(conn) => connection(conn, shared).await,
                            Err(e) => tracing::debug!(error = %e, "handshake failed"),
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        self.endpoint.close(0u32.into(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Per-connection state shared by its stream tasks.
#[derive(Debug)]
struct Conn<S> {
    shared: Arc<Shared<S>>,
    conn: Connection,
    session: Mutex<ServerSession>,
    lease: OnceCell<LeaseId>,
    /// The task serving this connection's subscriptions, started by the first one.
    feed: OnceLock<FeedHandle>,
}

async fn connection<S: Store + Clone>(conn: Connection, shared: Arc<Shared<S>>) {
    let settings = ServerSettings {
        acl: shared.options.acl.clone(),
        server_id: shared.options.server_id.clone(),
        grace_ms: u64::try_from(shared.options.grace.as_millis()).unwrap_or(u64::MAX),
    };
    let timeout = shared.options.request_timeout;
    let c = Arc::new(Conn {
        shared,
        conn: conn.clone(),
        session: Mutex::new(ServerSession::new(settings)),
        lease: OnceCell::new(),
        feed: OnceLock::new(),
    });
    tracing::debug!(remote = %conn.remote_address(), "connection");

    // The handshake: the first stream must carry `hello`.
    match tokio::time::timeout(timeout, conn.accept_bi()).await {
        Ok(Ok((send, recv))) => {
            if !stream(&c, send, recv).await || c.session.lock().principal().is_none() {
                return;
            }
        }
        Ok(Err(_)) => return,
        Err(_) => return close(&conn, ErrorCode::Timeout, "no hello in time"),
    }
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let c = c.clone();
                tokio::spawn(async move {
                    stream(&c, send, recv).await;
                });
            }
            Err(e) => {
                tracing::debug!(remote = %conn.remote_address(), reason = %e, "connection closed");
                break;
            }
        }
    }
    // Dropping `c` (when the last stream task ends) stops the lease keepalive; the
    // connection's instances go after the grace period.
}

/// Handles one request stream; `false` if the connection was closed because of it.
async fn stream<S: Store + Clone>(c: &Arc<Conn<S>>, mut send: SendStream, mut recv: quinn::RecvStream) -> bool {
    let timeout = c.shared.options.request_timeout;
    let payload = match tokio::time::timeout(timeout, wire::read_payload(&mut recv)).await {
        Ok(Ok(payload)) => payload,
        // The client reset the stream or the connection went: nothing to answer.
        Ok(Err(WireError::Stream(_))) => return true,
        Ok(Err(e)) => return refuse(c, send, ErrorCode::ProtocolError, &e.to_string()).await,
        Err(_) => return refuse(c, send, ErrorCode::Timeout, "request stream did not finish in time").await,
    };
    let request = match Request::decode(&payload) {
        Ok(request) => request,
        // A known request with invalid contents is answered, once the connection has said
        // hello; before that only a valid `hello` is acceptable.
        Err(e @ RequestError::Invalid { kind, .. }) if kind != "hello" && c.session.lock().principal().is_some() => {
            if wire::write(&mut send, &Response::error(ErrorCode::Invalid, &e)).await.is_ok() {
                let _ = send.finish();
            }
            return true;
        }
        Err(e) => return refuse(c, send, ErrorCode::ProtocolError, &e.to_string()).await,
    };
    let step = c.session.lock().on_request(request);
    let response = match step {
        Step::Close(code, reason) => return refuse(c, send, code, &reason).await,
        Step::Reply(r) => r,
        Step::Execute(Request::Subscribe { scope, from }) => {
            subscribe(c, send, scope, from);
            return true;
        }
        Step::Execute(request) => execute(c, request).await,
    };
    if wire::write(&mut send, &response).await.is_ok() {
        let _ = send.finish();
    }
    true
}

fn subscribe<S: Store + Clone>(
    c: &Arc<Conn<S>>,
    send: SendStream,
    scope: sextant_core::Scope,
    from: sextant_core::Revision,
) {
    let feed = c.feed.get_or_init(|| FeedHandle::start(&c.shared.registry, c.shared.frames.clone()));
    feed.join(scope, from, send);
}

/// Whether `service` has a spec (`put_service`): then it exists without instances too.
fn has_spec<S: Store + Clone>(registry: &Registry<S>, service: &sextant_core::ServiceKey) -> bool {
    let scope = sextant_core::Scope::Service(service.clone());
    registry.list(&scope).records.iter().any(|r| matches!(r, Record::Service(_)))
}

/// How long the store has been unreachable, for answers built from the last known state.
fn stale_ms<S: Store + Clone>(registry: &Registry<S>) -> Option<u64> {
    registry.stale_for().map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn error_response(e: RegistryError) -> Response {
    let RegistryError::Store(e) = e;
    let code = match &e {
        StoreError::Rejected(CoreError::Invalid(_) | CoreError::LeaseExists(_)) => ErrorCode::Invalid,
        StoreError::Rejected(CoreError::LeaseNotFound(_)) => ErrorCode::LeaseNotFound,
        StoreError::Rejected(CoreError::KeyNotFound(_)) => ErrorCode::NotFound,
        StoreError::Unavailable(_) | StoreError::Lagged | StoreError::Closed => ErrorCode::Unavailable,
    };
    Response::error(code, e)
}

impl<S: Store + Clone> Conn<S> {
    /// This connection's lease, granted on first use and kept alive while the connection
    /// lives.
    async fn lease(self: &Arc<Self>) -> Result<LeaseId, RegistryError> {
        let grace = self.shared.options.grace;
        let id = self
            .lease
            .get_or_try_init(|| async {
                let id = self.shared.registry.grant_lease(grace).await?;
                let weak = Arc::downgrade(self);
                let registry = self.shared.registry.clone();
                let closed = self.conn.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(grace / 3);
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = closed.closed() => break,
                        }
                        if weak.strong_count() == 0 {
                            break;
                        }
                        if let Err(e) = registry.keepalive(id).await {
                            tracing::warn!(error = %e, "connection lease lost");
                            break;
                        }
                    }
                });
                Ok::<_, RegistryError>(id)
            })
            .await?;
        Ok(*id)
    }
}

async fn execute<S: Store + Clone>(c: &Arc<Conn<S>>, request: Request) -> Response {
    let registry = &c.shared.registry;
    let written = |revision| Response::Written { revision, lease: None, version: None };
    let result: Result<Response, RegistryError> = async {
        Ok(match request {
            Request::Register { instance, binding } => return register(c, instance, binding).await,
            Request::Deregister { service, id } => {
                written(registry.delete(RecordKey::Instance(InstanceKey { service, id })).await?)
            }
            Request::GrantLease { ttl_ms } => {
                let ttl = Duration::from_millis(ttl_ms);
                Response::Lease { lease: registry.grant_lease(ttl).await?, ttl_ms }
            }
            Request::Keepalive { lease } => {
                let ttl = registry.keepalive(lease).await?;
                Response::Lease { lease, ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX) }
            }
            Request::RevokeLease { lease } => written(registry.revoke_lease(lease).await?),
            Request::PutService { spec } => written(registry.put(Record::Service(spec.into()), None).await?),
            Request::GetService { service } => match registry
                .snapshot(&service)
                .filter(|s| !s.instances.is_empty() || has_spec(registry, &service))
            {
                Some(s) => Response::Service(ServiceView {
                    service,
                    revision: s.revision,
                    protect_threshold: s.protect_threshold,
                    protection_active: s.protection_active(),
                    selected: s.selected().map(|i| i.id.clone()).collect(),
                    instances: s.instances.clone(),
                    stale_ms: stale_ms(registry),
                }),
                None => Response::error(ErrorCode::NotFound, format!("service {service} has no instances and no spec")),
            },
            Request::List { scope } => {
                let snapshot = registry.list(&scope);
                Response::Records {
                    revision: snapshot.revision,
                    records: snapshot.records,
                    stale_ms: stale_ms(registry),
                }
            }
            Request::ConfigGet { key } => Response::Config { entry: registry.config(&key) },
            Request::ConfigPut { key, content } => match ConfigEntry::new(key, content) {
                Ok(entry) => {
                    let version = Some(entry.version.clone());
                    let revision = registry.put(Record::Config(entry.into()), None).await?;
                    Response::Written { revision, lease: None, version }
                }
                Err(e) => Response::error(ErrorCode::Invalid, e),
            },
            Request::ConfigDelete { key } => written(registry.delete(RecordKey::Config(key)).await?),
            Request::Pick { service, hash_key, headers } => match &c.shared.plugins {
                None => no_plugins(),
                Some(p) => {
                    let picked = p.pick(&service, hash_key.as_deref(), headers);
                    let protection_active = match &picked {
                        Some(p) => p.protection_active,
                        None => registry.snapshot(&service).is_some_and(|s| s.protection_active()),
                    };
                    Response::Picked { instance: picked.map(|p| p.instance), protection_active }
                }
            },
            Request::PluginList => Response::Plugins {
                plugins: registry.plugins(),
                slots: c.shared.plugins.as_ref().map(PluginManager::status).unwrap_or_default(),
                failures: c.shared.plugins.as_ref().map(PluginManager::failures).unwrap_or_default(),
            },
            Request::PluginLoad { name, kind, binding, config, component } => match &c.shared.plugins {
                None => no_plugins(),
                Some(p) => match sextant_proto::decode_component(&component) {
                    Err(e) => Response::error(ErrorCode::Invalid, e),
                    Ok(bytes) => plugin_written(p.load(name.as_str(), &kind, &binding, &config, bytes, "api").await),
                },
            },
            Request::PluginRollback { name } => match &c.shared.plugins {
                None => no_plugins(),
                Some(p) => plugin_written(p.rollback(&name).await),
            },
            Request::PluginDelete { name } => match &c.shared.plugins {
                None => no_plugins(),
                Some(p) => match p.delete(&name).await {
                    Ok(revision) => written(revision),
                    Err(e) => manager_error(e),
                },
            },
            Request::Hello { .. } | Request::Ping { .. } | Request::Subscribe { .. } => {
                Response::error(ErrorCode::Internal, "handled elsewhere")
            }
        })
    }
    .await;
    result.unwrap_or_else(error_response)
}

async fn register<S: Store + Clone>(
    c: &Arc<Conn<S>>,
    instance: Instance,
    binding: Binding,
) -> Result<Response, RegistryError> {
    let registry = &c.shared.registry;
    let (lease, fresh) = match binding {
        Binding::Persistent => (None, false),
        Binding::Connection => (Some(c.lease().await?), false),
        Binding::Lease { lease } => (Some(lease), false),
        Binding::Ttl { ttl_ms } => (Some(registry.grant_lease(Duration::from_millis(ttl_ms)).await?), true),
    };
    match registry.put(Record::Instance(instance.into()), lease).await {
        Ok(revision) => {
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

fn no_plugins() -> Response {
    Response::error(ErrorCode::Unavailable, "this server runs no plugin host")
}

fn plugin_written(result: Result<(Arc<PluginRecord>, sextant_core::Revision), ManagerError>) -> Response {
    match result {
        Ok((record, revision)) => Response::PluginWritten { record, revision },
        Err(e) => manager_error(e),
    }
}

fn manager_error(e: ManagerError) -> Response {
    match e {
        ManagerError::Rejected { .. } => Response::error(ErrorCode::PluginRejected, e),
        ManagerError::Invalid(_) | ManagerError::BadConfig(_) | ManagerError::NoPrevious(_) => {
            Response::error(ErrorCode::Invalid, e)
        }
        ManagerError::NotFound(_) => Response::error(ErrorCode::NotFound, e),
        ManagerError::Store(e) => error_response(e),
    }
}
