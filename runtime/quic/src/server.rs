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
//! Access ([`crate::access`]): `hello` is checked against the token table in force when the
//! connection starts; when another table is put in force, the connection's principal is
//! looked up again (new rights apply to its next request) and a connection whose token was
//! revoked is closed with `unauthenticated`. After `hello`, every request stream counts
//! against its client's rate as it is accepted (over the rate: answered `limited`, and the
//! connection's next stream is read once the client may send again); registrations and
//! watches per connection are capped; a connection has at
//! most [`MAX_IN_FLIGHT`] requests executing at once (later streams wait, so one busy
//! connection cannot take every worker). Accepted writes and refusals go to the audit log.
//!
//! Instances registered with the `connection` binding hang on one lease per connection
//! (TTL = grace period) that the server keeps alive while the connection lives. When the
//! connection is lost the keepalives stop and the instances are removed once the grace
//! period has passed (Nacos 2 / ZooKeeper ephemeral nodes). While the connection lives, a
//! failed keepalive is retried (100 ms, doubling, up to the keepalive interval); a lease the
//! store no longer has (it expired while the store was unreachable, or was revoked) is
//! replaced by a new one and the connection's instances are put again on it. Only when that is
//! refused by the store is the client told: the connection is closed (`unavailable`), and the
//! client library reconnects and registers its instances again.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use quinn::{Connection, Endpoint, SendStream};
use sextant_control::{Executor, Origin, PluginManager};
use sextant_core::store::{Store, StoreError};
use sextant_core::{CoreError, Instance, InstanceKey, LeaseId, Record};
use sextant_proto::acl;
use sextant_proto::server::{ServerSession, ServerSettings, Step};
use sextant_proto::{ErrorCode, Request, RequestError, Response};
use sextant_store::{Registry, RegistryError};
use tokio::sync::Semaphore;

use crate::access::{Access, AuditEvent, Door, LimitError, Verdict};
use crate::feed::{FeedHandle, FrameCache};
use crate::held::Registrations;
use crate::wire::{self, WireError};

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// How long connection-bound instances outlive a lost connection.
    pub grace: Duration,
    /// Time a request stream has to arrive complete.
    pub request_timeout: Duration,
    /// Tokens and rights in force, limits, audit log (shared with the admin HTTP API).
    pub access: Arc<Access>,
    /// Id reported in `welcome`.
    pub server_id: String,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            access: Arc::new(Access::default()),
            server_id: "sextant".into(),
        }
    }
}

#[derive(Debug)]
struct Shared<S> {
    /// The one command path (shared with the admin HTTP API), and the registry it runs on.
    executor: Arc<Executor<S>>,
    options: ServerOptions,
    /// Event frames shared by every subscriber of a change.
    frames: Arc<FrameCache>,
}

impl<S: Store + Clone> Shared<S> {
    fn registry(&self) -> &Registry<S> {
        self.executor.registry()
    }
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
        let executor = Arc::new(Executor::new(registry, None));
        let shared = Arc::new(Shared { executor, options, frames: Arc::default() });
        Ok(Self { endpoint, shared })
    }

    /// Serves `pick` and the plugin requests through `plugins`.
    #[must_use]
    pub fn with_plugins(self, plugins: PluginManager<S>) -> Self {
        let executor = Arc::new(Executor::new(self.shared.registry().clone(), Some(plugins)));
        self.with_executor(executor)
    }

    /// Executes requests with `executor` (the one the admin HTTP API uses too, so both doors
    /// share its counters and caches).
    #[must_use]
    pub fn with_executor(self, executor: Arc<Executor<S>>) -> Self {
        let shared = Shared { executor, options: self.shared.options.clone(), frames: Arc::default() };
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

/// Requests of one connection executing at once; later streams wait for a place.
pub const MAX_IN_FLIGHT: usize = 32;

/// Per-connection state shared by its stream tasks.
#[derive(Debug)]
struct Conn<S> {
    shared: Arc<Shared<S>>,
    conn: Connection,
    remote: SocketAddr,
    /// Subject of the client certificate (mTLS), for the audit log.
    certificate: Option<String>,
    session: Mutex<ServerSession>,
    /// The connection's lease, once granted (replaced when the store lost it).
    lease: tokio::sync::Mutex<Option<LeaseId>>,
    /// The task serving this connection's subscriptions, started by the first one.
    feed: OnceLock<FeedHandle>,
    /// Instances registered through this connection (the registration limit); the
    /// connection-bound ones with their record, to put them again on a new lease.
    registered: Mutex<Registrations>,
    /// Subscriptions open on this connection (the watch limit).
    watches: Arc<AtomicUsize>,
    /// Places for executing requests.
    in_flight: Arc<Semaphore>,
}

impl<S> Conn<S> {
    fn access(&self) -> &Access {
        &self.shared.options.access
    }

    fn audit(&self, verdict: Verdict, what: &str, target: Option<String>, revision: Option<u64>, reason: Option<&str>) {
        let who = self.session.lock().principal().map_or_else(|| "-".to_owned(), |p| p.name.clone());
        self.access().audit(&AuditEvent {
            door: Door::Quic,
            verdict,
            who: &who,
            certificate: self.certificate.as_deref(),
            from: self.remote,
            what,
            target,
            revision,
            reason,
        });
    }
}

/// The subject of the certificate the peer presented, if any.
fn peer_certificate(conn: &Connection) -> Option<String> {
    let chain = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    crate::tls::certificate_subject(chain.first()?)
}

async fn connection<S: Store + Clone>(conn: Connection, shared: Arc<Shared<S>>) {
    let mut changes = shared.options.access.changes();
    let settings = ServerSettings {
        acl: shared.options.access.acl(),
        server_id: shared.options.server_id.clone(),
        grace_ms: u64::try_from(shared.options.grace.as_millis()).unwrap_or(u64::MAX),
    };
    let timeout = shared.options.request_timeout;
    let c = Arc::new(Conn {
        shared,
        conn: conn.clone(),
        remote: conn.remote_address(),
        certificate: peer_certificate(&conn),
        session: Mutex::new(ServerSession::new(settings)),
        lease: tokio::sync::Mutex::new(None),
        feed: OnceLock::new(),
        registered: Mutex::new(Registrations::default()),
        watches: Arc::new(AtomicUsize::new(0)),
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
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
    changes.mark_unchanged();
    let mut watching = true;
    loop {
        // A place first (the semaphore is never closed), then the next stream or a new table.
        let Ok(permit) = c.in_flight.clone().acquire_owned().await else { break };
        let accepted = tokio::select! {
            streams = conn.accept_bi() => streams.map(|streams| (streams, permit)),
            changed = changes.changed(), if watching => {
                if changed.is_err() {
                    // The access state is gone (the server is stopping): no more tables.
                    watching = false;
                    continue;
                }
                let acl = c.access().acl();
                if !c.session.lock().reauthenticate(&acl) {
                    c.audit(Verdict::Unauthenticated, "connection", None, None, Some("token revoked"));
                    close(&conn, ErrorCode::Unauthenticated, "token revoked");
                    break;
                }
                continue;
            }
        };
        match accepted {
            Ok(((send, recv), permit)) => {
                // Every request after hello counts against its client's rate, here, one
                // stream at a time: a stream over the rate is answered `limited` and the
                // next one is not read before the client may send again, so a client over
                // its rate costs the server about one refusal per request it may send.
                let limited = {
                    let session = c.session.lock();
                    session.principal().and_then(|p| c.access().check_rate(p, c.remote.ip()).err())
                };
                let pause = match &limited {
                    Some(LimitError::Rate { retry_after, .. }) => Some(*retry_after),
                    _ => None,
                };
                let c = c.clone();
                tokio::spawn(async move {
                    match limited {
                        None => {
                            stream(&c, send, recv).await;
                        }
                        Some(e) => refuse_limited(&c, send, recv, &e).await,
                    }
                    drop(permit);
                });
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
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
        Ok(Err(WireError::Read(_) | WireError::Write(_))) => return true,
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
    let kind = request.kind();
    let write = acl::is_write(&request);
    // What the request is about, only for the ones the audit log may record (writes, watches,
    // refusals): reads that go through, picks above all, build no string.
    let audited = write
        || matches!(request, Request::Subscribe { .. })
        || c.session.lock().principal().is_some_and(|p| !acl::permits(p, &request));
    let target = if audited { target_of(&request) } else { None };
    let step = c.session.lock().on_request(request);
    let response = match step {
        Step::Close(code, reason) => {
            if code == ErrorCode::Unauthenticated {
                c.audit(Verdict::Unauthenticated, kind, None, None, Some(&reason));
            }
            return refuse(c, send, code, &reason).await;
        }
        Step::Reply(r) => {
            if let Response::Error { code: ErrorCode::Forbidden, message } = &r {
                c.audit(Verdict::Forbidden, kind, target, None, Some(message));
            }
            r
        }
        Step::Execute(Request::Subscribe { scope, from, reader }) => {
            // A watch (resumed when `from` names a revision the client saw) is a span.
            let span = tracing::info_span!(
                target: sextant_core::TRACE_TARGET,
                "watch",
                sextant.scope = ?scope,
                sextant.from = from.0,
                sextant.resumed = from.0 > 0,
                sextant.error = tracing::field::Empty,
            );
            return match span.in_scope(|| c.access().take_watch(&c.watches)) {
                Ok(slot) => {
                    span.in_scope(|| {
                        let feed =
                            c.feed.get_or_init(|| FeedHandle::start(c.shared.registry(), c.shared.frames.clone()));
                        feed.join(scope, from, reader, send, slot);
                    });
                    true
                }
                Err(e) => {
                    span.record("sextant.error", tracing::field::display(&e));
                    c.audit(Verdict::Limited, kind, target, None, Some(&e.to_string()));
                    answer(send, Response::error(ErrorCode::Limited, e)).await
                }
            };
        }
        Step::Execute(request) => {
            let response = c.shared.executor.execute(&ConnOrigin(c), request).await;
            match &response {
                Response::Error { code: ErrorCode::Limited, message } => {
                    c.audit(Verdict::Limited, kind, target, None, Some(message));
                }
                Response::Written { revision, .. } | Response::PluginWritten { revision, .. } if write => {
                    c.audit(Verdict::Accepted, kind, target, Some(revision.0), None);
                }
                Response::Lease { .. } if write => c.audit(Verdict::Accepted, kind, target, None, None),
                Response::PluginFaultTaken { revision, .. } => {
                    c.audit(Verdict::Accepted, kind, target, revision.map(|r| r.0), None);
                }
                _ => {}
            }
            response
        }
    };
    answer(send, response).await
}

/// Answers a stream over its client's rate `limited` (after reading it, within the request
/// timeout, for the audit log); the connection stays.
async fn refuse_limited<S>(c: &Conn<S>, send: SendStream, mut recv: quinn::RecvStream, e: &LimitError) {
    let read = tokio::time::timeout(c.shared.options.request_timeout, wire::read_payload(&mut recv)).await;
    let request = read.ok().and_then(Result::ok).and_then(|payload| Request::decode(&payload).ok());
    let kind = request.as_ref().map_or("request", Request::kind);
    c.audit(Verdict::Limited, kind, request.as_ref().and_then(target_of), None, Some(&e.to_string()));
    answer(send, Response::error(ErrorCode::Limited, e)).await;
}

/// Writes `response` on the stream and finishes it; `true` (the connection stays).
async fn answer(mut send: SendStream, response: Response) -> bool {
    if wire::write(&mut send, &response).await.is_ok() {
        let _ = send.finish();
    }
    true
}

/// What a request is about, for the audit log.
fn target_of(request: &Request) -> Option<String> {
    match request {
        Request::Register { instance, .. } => Some(format!("{}/{}", instance.service, instance.id)),
        Request::Deregister { service, id } => Some(format!("{service}/{id}")),
        Request::PutService { spec } => Some(spec.service.to_string()),
        Request::GetService { service } | Request::Pick { service, .. } => Some(service.to_string()),
        Request::ConfigGet { key, .. }
        | Request::ConfigPut { key, .. }
        | Request::ConfigDelete { key }
        | Request::ConfigBeta { key, .. }
        | Request::ConfigPromote { key, .. }
        | Request::ConfigWithdraw { key } => Some(key.to_string()),
        Request::List { scope } | Request::Subscribe { scope, .. } => Some(format!("{scope:?}")),
        Request::Keepalive { lease } | Request::RevokeLease { lease } => Some(format!("lease {}", lease.0)),
        Request::PluginLoad { name, binding, .. } => Some(format!("{name} -> {binding}")),
        Request::PluginRollback { name, .. } | Request::PluginDelete { name } => Some(name.to_string()),
        Request::PluginRollout { name, action } => Some(format!("{name} {action:?}")),
        Request::ArtifactGet { sha256, .. } | Request::PluginUpload { sha256, .. } => Some(sha256.clone()),
        Request::PluginFault { name, sha256, host, .. } => {
            Some(format!("{name} {} from {host}", &sha256[..sha256.len().min(12)]))
        }
        Request::Hello { .. } | Request::Ping { .. } | Request::GrantLease { .. } | Request::PluginList => None,
    }
}

impl<S: Store + Clone> Conn<S> {
    /// This connection's lease, granted on first use and kept alive while the connection
    /// lives (see the module docs).
    async fn lease(self: &Arc<Self>) -> Result<LeaseId, RegistryError> {
        let mut slot = self.lease.lock().await;
        if let Some(id) = *slot {
            return Ok(id);
        }
        let id = self.shared.registry().grant_lease(self.shared.options.grace).await?;
        *slot = Some(id);
        tokio::spawn(keep_lease(Arc::downgrade(self), id, self.conn.clone(), self.shared.options.grace));
        Ok(id)
    }

    /// Replaces the lost lease `old` with a new one and puts the connection's instances on it.
    /// Registrations wait meanwhile (they need the lease), so none is missed.
    async fn renew_lease(&self, old: LeaseId) -> Result<LeaseId, RegistryError> {
        let registry = self.shared.registry();
        let mut slot = self.lease.lock().await;
        if *slot != Some(old) {
            // Renewed already.
            return (*slot).ok_or(RegistryError::Store(StoreError::Rejected(CoreError::LeaseNotFound(old))));
        }
        let new = registry.grant_lease(self.shared.options.grace).await?;
        let bound: Vec<Arc<Instance>> = self.registered.lock().bound().cloned().collect();
        for instance in &bound {
            if let Err(e) = registry.put(Record::Instance(instance.clone()), Some(new)).await {
                let _ = registry.revoke_lease(new).await;
                return Err(e);
            }
        }
        *slot = Some(new);
        tracing::warn!(remote = %self.remote, %old, %new, instances = bound.len(), "connection lease was lost; re-granted and its instances put again");
        Ok(new)
    }
}

/// First retry after a failed keepalive; doubled up to the keepalive interval.
const KEEPALIVE_RETRY: Duration = Duration::from_millis(100);

/// Keeps a connection's lease alive while the connection lives: retries failed keepalives and
/// replaces a lost lease (see the module docs).
async fn keep_lease<S: Store + Clone>(
    conn: std::sync::Weak<Conn<S>>,
    mut id: LeaseId,
    closed: Connection,
    grace: Duration,
) {
    let interval = grace / 3;
    let mut wait = interval;
    let mut retry = KEEPALIVE_RETRY;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = closed.closed() => return,
        }
        let Some(c) = conn.upgrade() else { return };
        let result = match c.shared.registry().keepalive(id).await {
            Err(RegistryError::Store(StoreError::Rejected(CoreError::LeaseNotFound(_)))) => c.renew_lease(id).await,
            other => other.map(|_| id),
        };
        match result {
            Ok(current) => {
                id = current;
                wait = interval;
                retry = KEEPALIVE_RETRY;
            }
            Err(RegistryError::Store(StoreError::Rejected(e))) => {
                tracing::warn!(remote = %c.remote, error = %e, "connection lease cannot be renewed; closing the connection so the client registers again");
                close(&c.conn, ErrorCode::Unavailable, "connection lease lost; reconnect and register again");
                return;
            }
            Err(e) => {
                tracing::warn!(remote = %c.remote, error = %e, retry_ms = retry.as_millis() as u64, "connection lease keepalive failed; retrying");
                wait = retry;
                retry = (retry * 2).min(interval);
            }
        }
    }
}

/// A connection as the executor sees it: its lease for connection-bound instances and its
/// registration limit.
struct ConnOrigin<'a, S>(&'a Arc<Conn<S>>);

impl<S: Store + Clone> Origin for ConnOrigin<'_, S> {
    async fn connection_lease(&self) -> Option<Result<LeaseId, RegistryError>> {
        Some(self.0.lease().await)
    }

    async fn renew_connection_lease(&self, old: LeaseId) -> Result<LeaseId, RegistryError> {
        self.0.renew_lease(old).await
    }

    fn admit_registration(&self, key: &InstanceKey) -> Result<(), String> {
        let limit = self.0.access().limits().registrations_per_connection;
        let held = self.0.registered.lock();
        if !held.contains(key) && held.len() >= limit {
            return Err(LimitError::Registrations { limit }.to_string());
        }
        Ok(())
    }

    fn registered(&self, instance: &Arc<Instance>, connection_bound: bool) {
        self.0.registered.lock().insert(Arc::clone(instance), connection_bound);
    }

    fn deregistered(&self, key: &InstanceKey) {
        self.0.registered.lock().remove(key);
    }
}
