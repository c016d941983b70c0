//! The client library: what the CLI and gateways use to talk to sextant servers.
//!
//! - Several server addresses: a connection goes to the first that answers, starting with
//!   the last one that worked; when it is lost, a supervisor reconnects (with backoff),
//!   re-registers this client's instances and every watch resumes from the last revision it
//!   saw, so nothing is missed.
//! - Leases this client's registrations hang on are kept alive in the background.
//! - Watches keep their view in a [`ClientSession`] (with empty-push protection) and, given
//!   a cache directory, on disk; when no server answers, the cached view is served, marked
//!   stale with its age.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use quinn::{Connection, Endpoint};
use serde::{Deserialize, Serialize};
use sextant_core::{
    Change, ConfigEntry, ConfigKey, Event, Instance, InstanceKey, LeaseId, Reader, Revision, Scope, StoreSnapshot,
};
use sextant_proto::client::{Applied, ClientSession, SubId, SubState};
use sextant_proto::{Binding, ErrorCode, Request, ResetAssembler, Response, SubscriptionFrame};
use tokio::sync::{mpsc, watch};

use crate::tls::{self, TlsError};
use crate::wire::{self, FrameReader};

/// How to reach the servers.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Server addresses, tried in order.
    pub servers: Vec<SocketAddr>,
    /// Name the server certificate must carry.
    pub server_name: String,
    /// CA that signed the server certificate.
    pub ca: PathBuf,
    /// Client certificate and key, for servers that require mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Access token.
    pub token: Option<String>,
    /// Client name (server logs).
    pub name: String,
    /// Where watches keep their last view, to be served when no server answers.
    pub cache_dir: Option<PathBuf>,
    /// Time allowed to connect to one server.
    pub connect_timeout: Duration,
    /// Who this client is to config gray rules: its watches receive config entries with a
    /// candidate as the version meant for it ([`Client::config`] reads as it too). None:
    /// whole entries, candidates included.
    pub reader: Option<Reader>,
}

impl ClientOptions {
    /// Options for `servers`, trusting `ca`.
    #[must_use]
    pub fn new(servers: Vec<SocketAddr>, ca: PathBuf) -> Self {
        Self {
            servers,
            server_name: "localhost".into(),
            ca,
            client_cert: None,
            token: None,
            name: "sextant-client".into(),
            cache_dir: None,
            connect_timeout: Duration::from_secs(3),
            reader: None,
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TLS files are missing or invalid.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The local UDP socket could not be bound.
    #[error("binding the client socket: {0}")]
    Io(#[from] std::io::Error),
    /// No server answered.
    #[error("no server reachable ({0})")]
    Unreachable(String),
    /// The server refused the request; nothing changed.
    #[error("{code}: {message}")]
    Server {
        /// Error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server answered something this client does not expect.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The server's error code, if the server refused.
    #[must_use]
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Inner {
    options: ClientOptions,
    endpoint: Endpoint,
    session: Mutex<ClientSession>,
    /// The live connection and its generation (bumped on every reconnect).
    conn: watch::Sender<Option<(u64, Connection)>>,
    /// The server answering now (index into `options.servers`).
    preferred: Mutex<usize>,
    connecting: tokio::sync::Mutex<()>,
    lease_ttls: Mutex<HashMap<LeaseId, Duration>>,
    /// The last event frame a watch decoded: the client's other watches of that scope receive
    /// the same bytes and take the event from here instead of parsing it again.
    frames: Arc<LastFrame>,
}

/// Frames larger than this are parsed by every watch (a cached one is compared byte for byte).
const MAX_SHARED_FRAME: usize = 16 * 1024;

/// The payload of the last change event decoded on any of a client's subscriptions, and the
/// event. A change reaches every subscription of a client whose scope covers it as identical
/// bytes; the first decodes it and the others compare and clone (its record is one `Arc`, so
/// they also share one copy of it in memory).
#[derive(Debug, Default)]
struct LastFrame {
    last: Mutex<Option<(Box<[u8]>, Event)>>,
}

impl LastFrame {
    fn decode(&self, payload: &[u8]) -> Result<SubscriptionFrame, serde_json::Error> {
        if let Some((bytes, event)) = &*self.last.lock()
            && **bytes == *payload
        {
            return Ok(SubscriptionFrame::Event(event.clone()));
        }
        let frame = serde_json::from_slice(payload)?;
        if let SubscriptionFrame::Event(event @ Event { change: Change::Upsert { .. } | Change::Remove { .. }, .. }) =
            &frame
            && payload.len() <= MAX_SHARED_FRAME
        {
            *self.last.lock() = Some((payload.into(), event.clone()));
        }
        Ok(frame)
    }
}

/// A connection to sextant. Cheap to clone; background tasks stop when the last clone drops.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// A client that connects on first use and reconnects in the background.
    pub fn new(options: ClientOptions) -> Result<Self, ClientError> {
        let config =
            tls::client_config(&options.ca, options.client_cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())))?;
        let bind: SocketAddr = if options.servers.iter().any(SocketAddr::is_ipv6) { "[::]:0" } else { "0.0.0.0:0" }
            .parse()
            .map_err(|_| ClientError::Protocol("bad bind address".into()))?;
        let mut endpoint = Endpoint::client(bind)?;
        endpoint.set_default_client_config(config);
        let inner = Arc::new(Inner {
            session: Mutex::new(ClientSession::new(options.token.clone()).with_reader(options.reader.clone())),
            options,
            endpoint,
            conn: watch::Sender::new(None),
            preferred: Mutex::new(0),
            connecting: tokio::sync::Mutex::new(()),
            lease_ttls: Mutex::new(HashMap::new()),
            frames: Arc::default(),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner)));
        tokio::spawn(keep_leases_alive(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// A client connected to one of the servers (or an error if none answers).
    pub async fn connect(options: ClientOptions) -> Result<Self, ClientError> {
        let client = Self::new(options)?;
        client.inner.connection().await?;
        Ok(client)
    }

    /// The server currently connected to, if any.
    #[must_use]
    pub fn server(&self) -> Option<SocketAddr> {
        self.inner.conn.borrow().as_ref().filter(|(_, c)| c.close_reason().is_none()).map(|(_, c)| c.remote_address())
    }

    /// Sends one request and returns the server's answer (errors as `Err`).
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        self.inner.request(request).await
    }

    /// Round-trip time of one `ping`.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = tokio::time::Instant::now();
        match self.request(Request::Ping { nonce: 1 }).await? {
            Response::Pong { .. } => Ok(start.elapsed()),
            other => Err(unexpected(&other)),
        }
    }

    /// Registers `instance`, remembered so it is registered again after a reconnect.
    /// Returns the revision and the lease it hangs on (for `ttl` and `lease` bindings).
    pub async fn register(
        &self,
        instance: Instance,
        binding: Binding,
    ) -> Result<(Revision, Option<LeaseId>), ClientError> {
        let key = instance.key();
        // Connect first, so the restore a new connection does cannot send this one twice.
        self.inner.connection().await?;
        let request = self.inner.session.lock().register(instance, binding);
        let response = self.inner.register(&key, request).await?;
        match response {
            Response::Written { revision, lease, .. } => {
                if let (Some(lease), Binding::Ttl { ttl_ms }) = (lease, binding) {
                    self.inner.lease_ttls.lock().insert(lease, Duration::from_millis(ttl_ms));
                }
                Ok((revision, lease))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Deregisters an instance (and forgets it).
    pub async fn deregister(&self, key: &InstanceKey) -> Result<Revision, ClientError> {
        let request = self.inner.session.lock().deregister(key);
        match self.request(request).await? {
            Response::Written { revision, .. } => Ok(revision),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads a stored plugin component by its sha256, chunk by chunk (`artifact_get`), and
    /// checks that the bytes hash to it. At most `max_len` bytes are accepted.
    ///
    /// # Errors
    /// The server's refusal (`not_found` when no component has that hash), no server, or a
    /// [`ClientError::Protocol`] when the chunks do not add up or do not hash to `sha256`.
    pub async fn fetch_artifact(&self, sha256: &str, max_len: u64) -> Result<Vec<u8>, ClientError> {
        let mut bytes = Vec::new();
        loop {
            let offset = bytes.len() as u64;
            let request = Request::ArtifactGet { sha256: sha256.to_owned(), offset };
            let (chunk_offset, total, data) = match self.request(request).await? {
                Response::Artifact { offset, total, data, .. } => (offset, total, data),
                other => return Err(unexpected(&other)),
            };
            if chunk_offset != offset || total > max_len {
                return Err(ClientError::Protocol(format!(
                    "component {sha256}: chunk at {chunk_offset} (asked {offset}), {total} bytes (at most {max_len})"
                )));
            }
            let chunk = sextant_proto::decode_component(&data)
                .map_err(|e| ClientError::Protocol(format!("component {sha256}: chunk at {offset}: {e}")))?;
            if chunk.is_empty() && offset < total {
                return Err(ClientError::Protocol(format!("component {sha256}: empty chunk at {offset} of {total}")));
            }
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > total {
                return Err(ClientError::Protocol(format!("component {sha256}: more than {total} bytes")));
            }
            if bytes.len() as u64 == total {
                break;
            }
        }
        let got = sextant_core::sha256_hex(&bytes);
        if got != sha256 {
            return Err(ClientError::Protocol(format!("component {sha256}: the bytes hash to {got}")));
        }
        Ok(bytes)
    }

    /// Sends a plugin component to the server in chunks (`plugin_upload`, at most
    /// [`ARTIFACT_CHUNK`](sextant_proto::ARTIFACT_CHUNK) bytes each), for a `plugin_load` that
    /// names it by the sha256 this returns. Each chunk starts where the server's last answer
    /// says it holds the upload, so an upload interrupted by a reconnect resumes.
    ///
    /// # Errors
    /// The server's refusal (`invalid` names the chunk or the hash, `limited` when the
    /// server holds too many uploads), no server, or a [`ClientError::Protocol`] when the
    /// answers do not add up.
    pub async fn upload_component(&self, bytes: &[u8]) -> Result<String, ClientError> {
        let sha256 = sextant_core::sha256_hex(bytes);
        let size = bytes.len() as u64;
        let mut offset = 0u64;
        while offset < size {
            let received = match self.request(sextant_proto::upload_chunk(&sha256, bytes, offset)).await? {
                Response::Uploaded { received, .. } => received,
                other => return Err(unexpected(&other)),
            };
            if received <= offset || received > size {
                return Err(ClientError::Protocol(format!(
                    "component {sha256}: the server holds {received} bytes after a chunk at {offset} of {size}"
                )));
            }
            offset = received;
        }
        Ok(sha256)
    }

    /// Reads a config entry as this client's reader ([`ClientOptions::reader`]) is served it.
    ///
    /// # Errors
    /// The server's refusal, or no server.
    pub async fn config(&self, key: &ConfigKey) -> Result<Option<Arc<ConfigEntry>>, ClientError> {
        let reader = self.inner.options.reader.clone();
        match self.request(Request::ConfigGet { key: key.clone(), reader }).await? {
            Response::Config { entry } => Ok(entry),
            other => Err(unexpected(&other)),
        }
    }

    /// Follows `scope`: the current state (a `Reset` or the events since the cached view),
    /// then every change, across reconnects.
    pub fn watch(&self, scope: Scope) -> Watch {
        let cache = self.inner.options.cache_dir.as_ref().map(|dir| cache_path(dir, &scope));
        let cached = cache.as_deref().and_then(read_cache);
        let id = {
            let mut session = self.inner.session.lock();
            match &cached {
                Some(c) => session.subscribe_from(scope, c.snapshot.clone()).0,
                None => session.subscribe(scope).0,
            }
        };
        let (tx, rx) = mpsc::channel(1024);
        let cache = cache.map(|path| CacheWriter { path, pending: Arc::new(AtomicBool::new(false)) });
        let task = tokio::spawn(run_watch(Arc::downgrade(&self.inner), id, cache.clone(), cached, tx));
        Watch { rx, task, client: self.clone(), id, cache }
    }

    /// The records a watch currently holds.
    #[must_use]
    pub fn view(&self, watch: &Watch) -> StoreSnapshot {
        let session = self.inner.session.lock();
        session.state(watch.id).map_or_else(StoreSnapshot::default, SubState::snapshot)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Tell the server now (code 0, a normal close) rather than leaving it to notice the
        // silence after the idle timeout.
        if let Some((_, conn)) = self.conn.borrow().as_ref() {
            conn.close(0u32.into(), b"client closed");
        }
    }
}

fn unexpected(response: &Response) -> ClientError {
    match response {
        Response::Error { code, message } => ClientError::Server { code: *code, message: message.clone() },
        other => ClientError::Protocol(format!("unexpected answer {other:?}")),
    }
}

impl Inner {
    /// The live connection, connecting first if there is none.
    async fn connection(self: &Arc<Self>) -> Result<Connection, ClientError> {
        if let Some((_, c)) = self.conn.borrow().as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let _guard = self.connecting.lock().await;
        // Someone else may have connected while we waited.
        if let Some((_, c)) = self.conn.borrow().as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let conn = self.dial().await?;
        self.restore(&conn).await;
        self.conn.send_modify(|slot| {
            let generation = slot.as_ref().map_or(0, |(g, _)| g + 1);
            *slot = Some((generation, conn.clone()));
        });
        Ok(conn)
    }

    /// Connects to the first server that answers `hello`, starting with the preferred one.
    async fn dial(&self) -> Result<Connection, ClientError> {
        let servers = &self.options.servers;
        if servers.is_empty() {
            return Err(ClientError::Unreachable("no server address given".into()));
        }
        let start = *self.preferred.lock();
        let mut errors = Vec::new();
        for n in 0..servers.len() {
            let index = (start + n) % servers.len();
            let addr = servers[index];
            match tokio::time::timeout(self.options.connect_timeout, self.handshake(addr)).await {
                Ok(Ok(conn)) => {
                    *self.preferred.lock() = index;
                    tracing::debug!(%addr, "connected");
                    return Ok(conn);
                }
                Ok(Err(ClientError::Server { code, message })) => {
                    // Refused (version, token): every server would say the same.
                    return Err(ClientError::Server { code, message });
                }
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: timed out")),
            }
        }
        Err(ClientError::Unreachable(errors.join("; ")))
    }

    async fn handshake(&self, addr: SocketAddr) -> Result<Connection, ClientError> {
        let connecting = self
            .endpoint
            .connect(addr, &self.options.server_name)
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        let conn = connecting.await.map_err(|e| ClientError::Unreachable(describe(&e)))?;
        let hello = self.session.lock().hello(&self.options.name);
        match roundtrip(&conn, &hello).await? {
            Response::Welcome { .. } => Ok(conn),
            other => Err(unexpected(&other)),
        }
    }

    /// Registers this client's instances again on a new connection.
    async fn restore(&self, conn: &Connection) {
        let registrations = self.session.lock().reregistrations();
        for (key, request) in registrations {
            let mut request = Some(request);
            while let Some(r) = request.take() {
                match roundtrip(conn, &r).await {
                    Ok(response) => {
                        request = self.session.lock().on_registered(&key, &response);
                        if let Response::Error { code, message } = &response
                            && request.is_none()
                        {
                            tracing::warn!(instance = %key, %code, message, "re-registration refused");
                        }
                    }
                    Err(e) => tracing::warn!(instance = %key, error = %e, "re-registration failed"),
                }
            }
        }
    }

    async fn register(self: &Arc<Self>, key: &InstanceKey, request: Request) -> Result<Response, ClientError> {
        let mut request = Some(request);
        let mut last = None;
        while let Some(r) = request.take() {
            let response = match self.request(r).await {
                Ok(r) => r,
                Err(ClientError::Server { code, message }) => Response::Error { code, message },
                Err(e) => return Err(e),
            };
            request = self.session.lock().on_registered(key, &response);
            last = Some(response);
        }
        match last {
            Some(Response::Error { code, message }) => Err(ClientError::Server { code, message }),
            Some(r) => Ok(r),
            None => Err(ClientError::Protocol("no answer".into())),
        }
    }

    /// One request; retried once on a fresh connection if the connection broke under it.
    async fn request(self: &Arc<Self>, request: Request) -> Result<Response, ClientError> {
        let mut attempt = 0;
        loop {
            let conn = self.connection().await?;
            match roundtrip(&conn, &request).await {
                Ok(Response::Error { code, message }) => return Err(ClientError::Server { code, message }),
                Ok(r) => return Ok(r),
                Err(e) if attempt == 0 && conn.close_reason().is_some() => {
                    tracing::debug!(error = %e, "connection lost during a request; retrying");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

async fn roundtrip(conn: &Connection, request: &Request) -> Result<Response, ClientError> {
    // A stream error says only "connection lost": the connection's close says why.
    let lost = |e: String| match closed_because(conn) {
        Some(why) => ClientError::Unreachable(format!("{e}: {why}")),
        None => ClientError::Unreachable(e),
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
    wire::write(&mut send, request).await.map_err(|e| lost(e.to_string()))?;
    send.finish().map_err(|e| lost(e.to_string()))?;
    wire::read_one(&mut recv).await.map_err(|e| lost(e.to_string()))
}

/// Why `conn` was closed, if it was, with the TLS alert spelled out when the close carries one
/// (a refused client certificate shows as `CertificateRequired` or `BadCertificate`).
fn closed_because(conn: &Connection) -> Option<String> {
    conn.close_reason().map(|reason| describe(&reason))
}

/// A connection error, with the TLS alert it carries spelled out.
fn describe(reason: &quinn::ConnectionError) -> String {
    let code = match reason {
        quinn::ConnectionError::ConnectionClosed(c) => Some(u64::from(c.error_code)),
        quinn::ConnectionError::TransportError(t) => Some(u64::from(t.code)),
        _ => None,
    };
    // QUIC carries TLS alerts as transport error codes 0x100 + alert.
    match code.and_then(|c| c.checked_sub(0x100)).and_then(|a| u8::try_from(a).ok()) {
        Some(alert) => format!("{reason} (TLS alert {:?})", rustls::AlertDescription::from(alert)),
        None => reason.to_string(),
    }
}

/// Reconnects whenever the connection is lost (after it was first made), so registrations
/// come back without waiting for the application's next call.
async fn supervise(inner: Weak<Inner>) {
    let mut rx = match inner.upgrade() {
        Some(i) => i.conn.subscribe(),
        None => return,
    };
    loop {
        let current = rx.borrow_and_update().as_ref().map(|(_, c)| c.clone());
        let Some(conn) = current else {
            // Not connected yet; the sender lives in `Inner`, so an error means it is gone.
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            _ = conn.closed() => {}
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        // Hold no handle while reconnecting: a dropped client must let its connection go.
        drop(conn);
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(inner) = inner.upgrade() else { return };
            match inner.connection().await {
                Ok(_) => break,
                Err(e) => tracing::debug!(error = %e, "reconnect failed"),
            }
            drop(inner);
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

/// Half of `backoff` plus a random part of the other half, so clients that lost the same
/// server do not all come back in the same instant.
fn jittered(backoff: Duration) -> Duration {
    backoff / 2 + backoff.mul_f64(rand::random::<f64>() / 2.0)
}

/// Keeps the leases of TTL registrations alive (every third of their TTL).
async fn keep_leases_alive(inner: Weak<Inner>) {
    let mut last: HashMap<LeaseId, tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let leases = inner.session.lock().leases();
        let ttls = inner.lease_ttls.lock().clone();
        for lease in leases {
            let ttl = ttls.get(&lease).copied().unwrap_or(Duration::from_secs(3));
            let now = tokio::time::Instant::now();
            if last.get(&lease).is_some_and(|t| now.duration_since(*t) < ttl / 3) {
                continue;
            }
            let live = inner.conn.borrow().as_ref().is_some_and(|(_, c)| c.close_reason().is_none());
            if !live {
                continue;
            }
            match inner.request(Request::Keepalive { lease }).await {
                Ok(_) => {
                    last.insert(lease, now);
                }
                Err(e) => tracing::debug!(%lease, error = %e, "keepalive failed"),
            }
        }
    }
}

/// One item of a [`Watch`].
#[derive(Debug, Clone)]
pub struct WatchItem {
    /// The event as received (or, from the cache, a `Reset` of the cached view).
    pub event: Event,
    /// What applying it to the local view did (empty-push protection may hold services).
    pub applied: Applied,
    /// `Some(age)` when served from the on-disk cache because no server answered.
    pub stale: Option<Duration>,
}

/// A stream of changes to a scope that survives reconnects.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchItem, ClientError>>,
    task: tokio::task::JoinHandle<()>,
    client: Client,
    id: SubId,
    cache: Option<CacheWriter>,
}

/// Where a watch keeps its view, and whether a change is not written yet.
#[derive(Debug, Clone)]
struct CacheWriter {
    path: PathBuf,
    pending: Arc<AtomicBool>,
}

impl CacheWriter {
    /// Writes the view of `id` if a change is pending.
    fn flush(&self, inner: &Inner, id: SubId) -> Option<(PathBuf, StoreSnapshot)> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return None;
        }
        let view = inner.session.lock().state(id).map(SubState::snapshot)?;
        Some((self.path.clone(), view))
    }
}

impl Watch {
    /// The next change; an `Err` is final (for example a refused subscription).
    pub async fn next(&mut self) -> Option<Result<WatchItem, ClientError>> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
        // The last changes, not written yet by the debounced writer.
        if let Some((path, view)) = self.cache.as_ref().and_then(|c| c.flush(&self.client.inner, self.id)) {
            write_cache(&path, view);
        }
        self.client.inner.session.lock().unsubscribe(self.id);
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    saved_at_unix_ms: u64,
    snapshot: StoreSnapshot,
}

fn cache_path(dir: &Path, scope: &Scope) -> PathBuf {
    let name = serde_json::to_string(scope).unwrap_or_default();
    let digest = sextant_core::model::sha256_hex(name.as_bytes());
    dir.join(format!("watch-{}.json", &digest[..16]))
}

fn read_cache(path: &Path) -> Option<CacheFile> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable watch cache");
            None
        }
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn write_cache(path: &Path, snapshot: StoreSnapshot) {
    let file = CacheFile { saved_at_unix_ms: now_unix_ms(), snapshot };
    let result = (|| -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // One temporary file per write: the debounced writer and a watch's drop may overlap.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("{}.{n}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(&file).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot write watch cache");
    }
}

/// Longest a watch's cache lags behind its view.
const CACHE_DEBOUNCE: Duration = Duration::from_millis(500);

/// Writes a watch's view after changes, debounced; ends with the watch.
async fn write_cache_when_dirty(inner: Weak<Inner>, id: SubId, writer: CacheWriter, mut dirty: watch::Receiver<()>) {
    while dirty.changed().await.is_ok() {
        tokio::time::sleep(CACHE_DEBOUNCE).await;
        dirty.mark_unchanged();
        let Some(client) = inner.upgrade() else { return };
        let taken = writer.flush(&client, id);
        drop(client);
        if let Some((path, view)) = taken {
            let _ = tokio::task::spawn_blocking(move || write_cache(&path, view)).await;
        }
    }
}

async fn run_watch(
    inner: Weak<Inner>,
    id: SubId,
    cache: Option<CacheWriter>,
    mut cached: Option<CacheFile>,
    tx: mpsc::Sender<Result<WatchItem, ClientError>>,
) {
    // The cache is written by its own task, at most every CACHE_DEBOUNCE and off the async
    // workers: a burst of changes costs one write, not one per event (the watch's drop
    // writes what is left).
    let dirty = cache.map(|writer| {
        let (dirty, rx) = watch::channel(());
        tokio::spawn(write_cache_when_dirty(inner.clone(), id, writer.clone(), rx));
        (dirty, writer.pending)
    });
    // A cached view is served at once, marked stale with its age: a gateway restarted on its
    // cache routes from its first request, server up or not. Once a server answers, the
    // session (which starts from the cached records and asks only for what changed since
    // their revision, maybe nothing) is handed on as a fresh `Reset`, so a consumer that
    // copies the view on a reset holds the cached records, with the server's changes applied
    // on top as they arrive.
    let mut served_stale = false;
    if let Some(c) = cached.take() {
        let age = Duration::from_millis(now_unix_ms().saturating_sub(c.saved_at_unix_ms));
        tracing::info!(age_ms = age.as_millis() as u64, "serving the cached view until a server answers");
        let event = Event { revision: c.snapshot.revision, change: Change::Reset { snapshot: Arc::new(c.snapshot) } };
        if tx.send(Ok(WatchItem { event, applied: Applied::Changed, stale: Some(age) })).await.is_err() {
            return;
        }
        served_stale = true;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(client) = inner.upgrade() else { return };
        let conn = match client.connection().await {
            Ok(c) => c,
            Err(ClientError::Unreachable(why)) => {
                if served_stale {
                    tracing::warn!(%why, "no server reachable; still serving the cached view");
                }
                drop(client);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        backoff = Duration::from_millis(100);
        let Some(request) = client.session.lock().resubscribe(id) else { return };
        let opened = async {
            let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            wire::write(&mut send, &request).await.map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            Ok::<_, String>((send, FrameReader::new(recv)))
        };
        let (_send, mut reader) = match opened.await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "subscribe failed; retrying");
                continue;
            }
        };
        if std::mem::take(&mut served_stale) {
            // Before any frame is read: the session is still at the cached revision, and
            // what the server sends next applies on top of it.
            let view = client.session.lock().state(id).map(SubState::snapshot);
            if let Some(snapshot) = view {
                let event =
                    Event { revision: snapshot.revision, change: Change::Reset { snapshot: Arc::new(snapshot) } };
                if tx.send(Ok(WatchItem { event, applied: Applied::Changed, stale: None })).await.is_err() {
                    return;
                }
            }
        }
        let frames = Arc::clone(&client.frames);
        drop(client);
        let mut chunks = ResetAssembler::default();
        loop {
            match reader.next_with(|payload| frames.decode(payload)).await {
                Ok(Some(SubscriptionFrame::ResetChunk { revision, records })) => chunks.chunk(revision, records),
                Ok(Some(SubscriptionFrame::Event(event))) => {
                    let event = match chunks.event(event) {
                        Ok(event) => event,
                        Err(e) => {
                            tracing::warn!(error = %e, "bad reset chunks on a subscription; resubscribing");
                            tokio::time::sleep(backoff).await;
                            break;
                        }
                    };
                    let Some(client) = inner.upgrade() else { return };
                    let applied = client.session.lock().on_event(id, &event);
                    if applied == Applied::Duplicate {
                        continue;
                    }
                    if let Some((d, pending)) = &dirty {
                        pending.store(true, Ordering::Release);
                        d.send_replace(());
                    }
                    if tx.send(Ok(WatchItem { event, applied, stale: None })).await.is_err() {
                        return;
                    }
                }
                Ok(Some(SubscriptionFrame::Error { code, message })) => {
                    let _ = tx.send(Err(ClientError::Server { code, message })).await;
                    return;
                }
                Err(wire::WireError::Frame(e)) => {
                    // Not a server of this protocol: resubscribe, but not in a tight loop.
                    tracing::warn!(error = %e, "bad frame on a subscription; resubscribing");
                    tokio::time::sleep(backoff).await;
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sextant_core::{Record, ServiceKey};

    use super::*;

    /// The payload the server sends for `event` (the frame without its length prefix).
    fn payload(event: &Event) -> Vec<u8> {
        serde_json::to_vec(&Response::Event { event: event.clone() }).unwrap()
    }

    fn upsert(revision: u64, port: u16) -> Event {
        let i = Instance::new(ServiceKey::parse("ns/g/orders").unwrap(), "10.0.0.1".parse().unwrap(), port);
        Event { revision: Revision(revision), change: Change::Upsert { record: Record::Instance(i.into()) } }
    }

    fn event(frame: SubscriptionFrame) -> Event {
        match frame {
            SubscriptionFrame::Event(e) => e,
            other => panic!("an event, not {other:?}"),
        }
    }

    fn record(event: &Event) -> Arc<Instance> {
        match &event.change {
            Change::Upsert { record: Record::Instance(i) } => i.clone(),
            other => panic!("an upsert, not {other:?}"),
        }
    }

    #[test]
    fn watches_share_the_decoding_of_an_identical_event_frame() {
        let frames = LastFrame::default();
        let first = payload(&upsert(7, 80));
        let a = event(frames.decode(&first).unwrap());
        let b = event(frames.decode(&first).unwrap());
        assert_eq!(a, upsert(7, 80));
        assert!(Arc::ptr_eq(&record(&a), &record(&b)), "the second watch takes the first's event");
        // Another event (another revision, same record) is parsed, not mistaken for the last.
        let c = event(frames.decode(&payload(&upsert(8, 80))).unwrap());
        assert_eq!(c, upsert(8, 80));
        assert!(!Arc::ptr_eq(&record(&a), &record(&c)));
        // A malformed frame is an error, and leaves the last event in place.
        assert!(frames.decode(b"{\"type\":\"event\",\"event\":").is_err());
        let again = event(frames.decode(&payload(&upsert(8, 80))).unwrap());
        assert!(Arc::ptr_eq(&record(&c), &record(&again)));
        // A reset is particular to its subscription's scope: never shared.
        let snapshot = StoreSnapshot { revision: Revision(9), records: vec![] };
        let reset = Event { revision: Revision(9), change: Change::Reset { snapshot: Arc::new(snapshot) } };
        assert_eq!(event(frames.decode(&payload(&reset)).unwrap()), reset);
        assert!(frames.last.lock().as_ref().is_some_and(|(_, e)| e.revision == Revision(8)));
    }
}
