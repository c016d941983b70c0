//! The etcd store: sextant's records in an etcd cluster that several hosts share.
//!
//! Layout under the prefix (default `/sextant/v1/`, see docs/storage.md): each record at
//! `PREFIX` + its key path (`instances/NS/GROUP/SERVICE/ID`, `services/..`, `configs/..`,
//! `plugins/NAME`) with the same JSON value as the embedded store, so `etcdctl put` in that
//! layout reaches subscribers. Plugin artifacts live at `PREFIX artifacts/SHA256` (a small JSON
//! manifest, written last) and `PREFIX artifacts/SHA256/NNNNN` (chunks of at most 1 MiB, under
//! etcd's 1.5 MiB request limit). The records live in the key range `configs/` ..
//! `services0`, which the artifacts stay out of, so watchers never receive component bytes.
//!
//! Revisions: one etcd revision can carry several events (a lease revoked or expired deletes
//! all its keys at once), while sextant's watchers need one revision per event. A sextant
//! revision is therefore `etcd_revision << 20 | index of the event within it`; a snapshot at
//! etcd revision R has revision `R << 20 | 0xFFFFF` ("everything at R"). Resuming from
//! `R << 20 | i` watches etcd from R and skips the first `i + 1` events of R.
//!
//! Leases are etcd leases (the sextant lease id is the etcd id, so any host can keep a
//! client's lease alive). The host that granted a lease remembers what it put on it; when a
//! keepalive finds the lease gone ("requested lease not found": etcd was unreachable longer
//! than the TTL) it grants a new one, puts the keys again and maps the old id to the new lease.
//!
//! Every etcd call has a timeout. Calls that may run twice (reads, puts of a whole value,
//! lease keepalives) are tried again on failure within that timeout, each attempt bounded by a
//! third of it, so a member that died (connection refused) or stopped answering (a leader
//! lost mid-call) costs a retry on another member, not the call. Lease grants are retried the
//! same way (a grant hidden by a lost answer leaves a lease with no key, which expires);
//! revocations and deletes are tried again only when the member could not be connected to
//! (the request was never sent: a retry after a lost answer would not be the same request).
//! A watch survives etcd being down: it re-watches from the last revision delivered (or the
//! last progress notification), and a compacted revision comes out as a `Reset` built from a
//! fresh listing. While etcd is unreachable, [`Store::stale_for`] reports for how long; readers keep
//! serving the last state they have. The client's HTTP/2 keepalive pings every 10 s and only
//! while a call or watch is open: etcd's default `--grpc-keepalive-min-time` is 5 s, and more
//! frequent pings are answered with GOAWAY (`too_many_pings`), which broke every watch.
//!
//! Values in the record range that are not valid records (written by hand) are skipped with an
//! error log and counted ([`EtcdStore::invalid_values`]); they never reach a watcher or a
//! snapshot. An invalid value that replaces a valid record reaches watchers as the record's
//! removal, so every host's view agrees with what a fresh listing (which skips it) shows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions, WatchResponse,
};
use parking_lot::Mutex;
use sextant_core::model::sha256_hex;
use sextant_core::store::{Store, StoreError, WatchStream};
use sextant_core::{
    Change, CoreError, Event, LeaseId, Record, RecordKey, Revision, Scope, StoreSnapshot, ValidationError,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Bits of a sextant revision that number the events within one etcd revision.
pub const EVENT_BITS: u32 = 20;
const EVENT_MASK: u64 = (1 << EVENT_BITS) - 1;
/// Artifact chunk size: well under etcd's default 1.5 MiB request limit.
pub const CHUNK: usize = 1024 * 1024;
/// Keys fetched per page when listing.
const PAGE: i64 = 2000;
/// How often the leases granted through this host are checked against etcd's.
const LEASE_SWEEP: Duration = Duration::from_secs(2);
/// HTTP/2 keepalive ping interval: above etcd's default minimum of 5 s between pings.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Settings of an [`EtcdStore`].
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Client URLs (`http://host:2379`); the client balances and fails over between them.
    pub endpoints: Vec<String>,
    /// Key prefix; ends with `/`.
    pub prefix: String,
    /// Timeout of every etcd call (and of connecting).
    pub timeout: Duration,
}

impl EtcdOptions {
    /// Defaults (prefix `/sextant/v1/`, 5 s timeout) for `endpoints`.
    #[must_use]
    pub fn new(endpoints: Vec<String>) -> Self {
        Self { endpoints, prefix: "/sextant/v1/".into(), timeout: Duration::from_secs(5) }
    }
}

/// The etcd-backed store. Cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("prefix", &self.inner.prefix).finish_non_exhaustive()
    }
}

struct Inner {
    client: Client,
    endpoints: Vec<String>,
    prefix: String,
    timeout: Duration,
    /// Leases this host granted, by the id handed out.
    leases: Mutex<HashMap<u64, Held>>,
    /// Since when etcd has been unreachable (a call failed or a watch broke), if it is.
    down_since: Mutex<Option<Instant>>,
    invalid: AtomicU64,
    regranted: AtomicU64,
    /// Leases granted through this host that expired (no keepalive for their TTL).
    expired: AtomicU64,
    /// Times etcd became unreachable (a call failed or a watch broke while it was reachable).
    outages: AtomicU64,
}

#[derive(Debug, Clone)]
struct Held {
    /// The etcd lease currently standing for it (a new one after a loss).
    current: i64,
    ttl_secs: i64,
    records: BTreeMap<RecordKey, Record>,
    /// The last grant or keepalive through this host (attempted: while etcd is unreachable
    /// the owner keeps trying, and the lease is granted again when it answers).
    touched: Instant,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    size: usize,
    chunks: usize,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd: {e}"))
}

fn lease_gone(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    text.contains("requested lease not found") || text.contains("lease not found")
}

/// The sextant revision of the single event an etcd write made at `etcd_rev`.
fn event_revision(etcd_rev: i64, index: u64) -> Revision {
    Revision((u64::try_from(etcd_rev).unwrap_or(0) << EVENT_BITS) | index.min(EVENT_MASK - 1))
}

/// The sextant revision of a snapshot taken at `etcd_rev`.
fn snapshot_revision(etcd_rev: i64) -> Revision {
    Revision((u64::try_from(etcd_rev).unwrap_or(0) << EVENT_BITS) | EVENT_MASK)
}

impl EtcdStore {
    /// Connects to the cluster and checks that it answers (within the timeout).
    pub async fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        let mut prefix = options.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let connect = ConnectOptions::new()
            .with_connect_timeout(options.timeout)
            .with_keep_alive(KEEPALIVE_INTERVAL, options.timeout.max(Duration::from_secs(1)))
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        let client = tokio::time::timeout(options.timeout, Client::connect(&options.endpoints, Some(connect)))
            .await
            .map_err(|_| unavailable(format!("connecting to {:?} timed out", options.endpoints)))?
            .map_err(unavailable)?;
        let store = Self {
            inner: Arc::new(Inner {
                client,
                endpoints: options.endpoints.clone(),
                prefix,
                timeout: options.timeout,
                leases: Mutex::new(HashMap::new()),
                down_since: Mutex::new(None),
                invalid: AtomicU64::new(0),
                regranted: AtomicU64::new(0),
                expired: AtomicU64::new(0),
                outages: AtomicU64::new(0),
            }),
        };
        // One round trip, so a wrong endpoint fails here and not at the first write.
        store.inner.current_revision().await?;
        let weak = Arc::downgrade(&store.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(LEASE_SWEEP).await;
                let Some(inner) = weak.upgrade() else { return };
                // Unreachable: the next sweep tries again (reachability is recorded by the call).
                let _ = inner.sweep_leases().await;
            }
        });
        tracing::info!(endpoints = ?options.endpoints, prefix = %store.inner.prefix, "etcd store connected");
        Ok(store)
    }

    /// The key prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Values skipped because they are not valid records.
    #[must_use]
    pub fn invalid_values(&self) -> u64 {
        self.inner.invalid.load(Ordering::Relaxed)
    }

    /// Leases found lost and granted again (their keys put again).
    #[must_use]
    pub fn leases_regranted(&self) -> u64 {
        self.inner.regranted.load(Ordering::Relaxed)
    }

    /// Leases granted through this host that etcd holds (checked every 2 s; one whose
    /// keepalives stopped and that etcd dropped is counted in [`EtcdStore::leases_expired`]).
    #[must_use]
    pub fn held_leases(&self) -> usize {
        self.inner.leases.lock().len()
    }

    /// Leases granted through this host that expired: etcd dropped them after their owner's
    /// keepalives stopped.
    #[must_use]
    pub fn leases_expired(&self) -> u64 {
        self.inner.expired.load(Ordering::Relaxed)
    }

    /// Times etcd became unreachable from this host (a call failed or a watch broke).
    #[must_use]
    pub fn outages(&self) -> u64 {
        self.inner.outages.load(Ordering::Relaxed)
    }

    /// The client URLs.
    #[must_use]
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The etcd lease currently standing for `lease` (differs after a re-grant).
    #[must_use]
    pub fn etcd_lease(&self, lease: LeaseId) -> i64 {
        self.inner.resolve(lease)
    }
}

impl Inner {
    fn key(&self, key: &RecordKey) -> String {
        format!("{}{}", self.prefix, key.path())
    }

    fn record_range(&self) -> (String, String) {
        (format!("{}configs/", self.prefix), format!("{}services0", self.prefix))
    }

    fn artifact_key(&self, sha: &str) -> String {
        format!("{}artifacts/{sha}", self.prefix)
    }

    /// etcd's current revision (one count-only read of the record range).
    async fn current_revision(&self) -> Result<i64, StoreError> {
        let (start, end) = self.record_range();
        let options = GetOptions::new().with_range(end).with_count_only();
        let resp = self.retry(|| self.get(start.clone(), Some(options.clone()))).await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    fn resolve(&self, lease: LeaseId) -> i64 {
        self.leases.lock().get(&lease.0).map_or(i64::try_from(lease.0).unwrap_or(i64::MAX), |h| h.current)
    }

    fn mark(&self, ok: bool) {
        let mut down = self.down_since.lock();
        match (ok, down.is_some()) {
            (true, true) => {
                tracing::info!("etcd reachable again");
                *down = None;
            }
            (false, false) => {
                tracing::warn!("etcd unreachable; serving the last known state");
                *down = Some(Instant::now());
                self.outages.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Runs one etcd call with the timeout, recording reachability.
    async fn call<T>(&self, fut: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, StoreError> {
        self.call_within(self.timeout, fut).await
    }

    /// [`Inner::call`] with another timeout.
    async fn call_within<T>(
        &self,
        timeout: Duration,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => {
                self.mark(true);
                Ok(v)
            }
            Ok(Err(e)) if lease_gone(&e) => {
                self.mark(true);
                Err(StoreError::Rejected(CoreError::LeaseNotFound(LeaseId(0))))
            }
            Ok(Err(e)) => {
                self.mark(false);
                Err(unavailable(e))
            }
            Err(_) => {
                self.mark(false);
                Err(unavailable(format!("no answer within {timeout:?}")))
            }
        }
    }

    fn get(
        &self,
        key: String,
        options: Option<GetOptions>,
    ) -> impl Future<Output = Result<etcd_client::GetResponse, etcd_client::Error>> + use<> {
        let mut kv = self.client.kv_client();
        async move { kv.get(key, options).await }
    }

    /// [`Inner::call`] for requests that may run twice (reads, puts of a whole value, lease
    /// keepalives): each attempt has a third of the timeout (at least 500 ms); when the cluster
    /// could not be reached (a member died and the client has not dropped it yet) or did not
    /// answer in time (its leader was lost mid-call), it tries again after a short pause
    /// (50 ms doubling), the client's balancer picking a member that answers, until the
    /// timeout is spent.
    async fn retry<T, F: Future<Output = Result<T, etcd_client::Error>>>(
        &self,
        op: impl FnMut() -> F,
    ) -> Result<T, StoreError> {
        self.retry_if(op, |_| true).await
    }

    /// [`Inner::retry`] for requests that must not run twice (revocations, deletes):
    /// tried again only when the member could not even be connected to, so the request was
    /// never sent.
    async fn retry_unsent<T, F: Future<Output = Result<T, etcd_client::Error>>>(
        &self,
        op: impl FnMut() -> F,
    ) -> Result<T, StoreError> {
        self.retry_if(op, |e| e.contains("tcp connect error") || e.contains("Connection refused")).await
    }

    async fn retry_if<T, F: Future<Output = Result<T, etcd_client::Error>>>(
        &self,
        mut op: impl FnMut() -> F,
        again: impl Fn(&str) -> bool,
    ) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.timeout;
        let per_attempt = (self.timeout / 3).max(Duration::from_millis(500));
        let mut pause = Duration::from_millis(50);
        let mut attempt = 0u32;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.call_within(per_attempt.min(left), op()).await {
                Err(StoreError::Unavailable(e))
                    if again(&e) && deadline.saturating_duration_since(Instant::now()) > pause =>
                {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "etcd call failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(800));
                }
                other => return other,
            }
        }
    }

    /// Decodes one key-value of the record range; `None` (logged, counted) if it is not a
    /// valid record.
    fn decode(&self, kv: &KeyValue) -> Option<Record> {
        let key = self.decode_key(kv.key())?;
        match Record::from_value(&key, kv.value()) {
            Ok(r) => Some(r),
            Err(e) => {
                self.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::error!(key = %String::from_utf8_lossy(kv.key()), error = %e, "skipping invalid value in etcd");
                None
            }
        }
    }

    fn decode_key(&self, raw: &[u8]) -> Option<RecordKey> {
        let parsed = std::str::from_utf8(raw)
            .ok()
            .and_then(|k| k.strip_prefix(&self.prefix))
            .ok_or_else(|| ValidationError::BadKeyPath(String::from_utf8_lossy(raw).into_owned()))
            .and_then(RecordKey::parse_path);
        match parsed {
            Ok(k) => Some(k),
            Err(e) => {
                self.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "skipping a key in etcd that is not a record key");
                None
            }
        }
    }

    /// Every valid record in the record range at one etcd revision, paged.
    async fn list_all(&self) -> Result<(i64, Vec<Record>), StoreError> {
        let (mut from, end) = self.record_range();
        let mut revision = 0;
        let mut records = Vec::new();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = self.retry(|| self.get(from.clone(), Some(options.clone()))).await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            records.extend(resp.kvs().iter().filter_map(|kv| self.decode(kv)));
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    let mut next = last.key().to_vec();
                    next.push(0);
                    from = String::from_utf8_lossy(&next).into_owned();
                }
                _ => break,
            }
        }
        records.sort_by_key(Record::key);
        Ok((revision, records))
    }

    async fn put_raw(&self, record: &Record, etcd_lease: Option<i64>) -> Result<i64, StoreError> {
        let (key, value) = (self.key(&record.key()), record.to_value());
        let options = etcd_lease.map(|l| PutOptions::new().with_lease(l));
        let resp = self
            .retry(|| {
                let (mut kv, key, value, options) =
                    (self.client.kv_client(), key.clone(), value.clone(), options.clone());
                async move { kv.put(key, value, options).await }
            })
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Drops the leases granted through this host that etcd no longer has and that nobody
    /// kept alive through this host for their TTL (they expired), counting them. Only those
    /// are asked about (one `LeaseTimeToLive` each: kept leases cost nothing); a lease another
    /// host keeps alive stays, and one that is gone while its owner still sends keepalives is
    /// granted again at its next keepalive.
    async fn sweep_leases(&self) -> Result<(), StoreError> {
        let candidates: Vec<(u64, i64)> = self
            .leases
            .lock()
            .iter()
            .filter(|(_, h)| h.touched.elapsed() > Duration::from_secs(u64::try_from(h.ttl_secs).unwrap_or(0)))
            .map(|(id, h)| (*id, h.current))
            .collect();
        for (id, current) in candidates {
            let resp = self.call(self.client.lease_client().time_to_live(current, None)).await?;
            if resp.ttl() > 0 {
                continue;
            }
            let mut leases = self.leases.lock();
            // Still unkept (no keepalive came meanwhile) and still the same etcd lease.
            let expired = leases.get(&id).is_some_and(|h| {
                h.current == current
                    && h.touched.elapsed() > Duration::from_secs(u64::try_from(h.ttl_secs).unwrap_or(0))
            });
            if expired {
                leases.remove(&id);
                self.expired.fetch_add(1, Ordering::Relaxed);
                tracing::info!(lease = id, "lease expired in etcd");
            }
        }
        Ok(())
    }

    /// Grants a new etcd lease for a lost `lease` and puts its records again.
    async fn regrant(&self, lease: LeaseId, held: Held) -> Result<Duration, StoreError> {
        let grant = || {
            let mut leases = self.client.lease_client();
            async move { leases.grant(held.ttl_secs, None).await }
        };
        // As for a first grant: an unseen extra lease holds no key and expires.
        let resp = self.retry(grant).await?;
        let fresh = resp.id();
        tracing::warn!(%lease, old = held.current, new = fresh, keys = held.records.len(), "etcd lease lost; granted a new one and putting its keys again");
        for record in held.records.values() {
            self.put_raw(record, Some(fresh)).await?;
        }
        if let Some(h) = self.leases.lock().get_mut(&lease.0) {
            h.current = fresh;
        }
        self.regranted.fetch_add(1, Ordering::Relaxed);
        Ok(Duration::from_secs(u64::try_from(resp.ttl()).unwrap_or(0)))
    }
}

fn lease_error(e: StoreError, lease: LeaseId) -> StoreError {
    match e {
        StoreError::Rejected(CoreError::LeaseNotFound(_)) => StoreError::Rejected(CoreError::LeaseNotFound(lease)),
        other => other,
    }
}

impl Store for EtcdStore {
    async fn put(&self, record: Record, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        record.validate().map_err(CoreError::from)?;
        match (&record, lease) {
            (Record::Instance(i), lease) if i.ephemeral != lease.is_some() => {
                return Err(CoreError::from(ValidationError::LeaseMismatch).into());
            }
            (Record::Instance(_), _) | (_, None) => {}
            (_, Some(_)) => return Err(CoreError::from(ValidationError::LeaseOnNonInstance).into()),
        }
        let inner = &self.inner;
        let etcd_lease = lease.map(|l| inner.resolve(l));
        let rev = inner.put_raw(&record, etcd_lease).await.map_err(|e| match lease {
            Some(l) => lease_error(e, l),
            None => e,
        })?;
        let key = record.key();
        let mut leases = inner.leases.lock();
        for held in leases.values_mut() {
            held.records.remove(&key);
        }
        if let Some(held) = lease.and_then(|l| leases.get_mut(&l.0)) {
            held.records.insert(key, record);
        }
        Ok(event_revision(rev, 0))
    }

    async fn get(&self, key: RecordKey) -> Result<Option<(Record, Revision)>, StoreError> {
        let inner = &self.inner;
        let path = inner.key(&key);
        let resp = inner
            .retry(|| {
                let (mut kv, path) = (inner.client.kv_client(), path.clone());
                async move { kv.get(path, None).await }
            })
            .await?;
        // A put is the only event of its etcd revision: index 0, as `put` answers.
        Ok(resp.kvs().first().and_then(|kv| inner.decode(kv).map(|r| (r, event_revision(kv.mod_revision(), 0)))))
    }

    async fn put_if(&self, record: Record, expected: Option<Revision>) -> Result<Revision, StoreError> {
        record.validate().map_err(CoreError::from)?;
        if matches!(&record, Record::Instance(i) if i.ephemeral) {
            return Err(CoreError::from(ValidationError::LeaseMismatch).into());
        }
        let inner = &self.inner;
        let key = record.key();
        let path = inner.key(&key);
        // One transaction: the put when the key's last write is the one read (or it is
        // absent), else the key as it is now, to name the write this one lost to.
        let compare = match expected {
            None => Compare::version(path.clone(), CompareOp::Equal, 0),
            Some(r) => Compare::mod_revision(
                path.clone(),
                CompareOp::Equal,
                i64::try_from(r.0 >> EVENT_BITS).unwrap_or(i64::MAX),
            ),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(path.clone(), record.to_value(), None)])
            .or_else([TxnOp::get(path.clone(), None)]);
        // Not sent twice: a lost answer to an applied put would come back as a conflict with
        // itself.
        let resp = inner
            .retry_unsent(|| {
                let (mut kv, txn) = (inner.client.kv_client(), txn.clone());
                async move { kv.txn(txn).await }
            })
            .await?;
        if !resp.succeeded() {
            let current = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| event_revision(kv.mod_revision(), 0)),
                _ => None,
            });
            return Err(StoreError::Conflict { key: Box::new(key), expected, current });
        }
        for held in inner.leases.lock().values_mut() {
            held.records.remove(&key);
        }
        Ok(event_revision(resp.header().map_or(0, |h| h.revision()), 0))
    }

    async fn delete(&self, key: RecordKey) -> Result<Revision, StoreError> {
        let inner = &self.inner;
        let path = inner.key(&key);
        let delete = || {
            let (mut kv, path) = (inner.client.kv_client(), path.clone());
            async move { kv.delete(path, None).await }
        };
        let resp = inner.retry_unsent(delete).await?;
        for held in inner.leases.lock().values_mut() {
            held.records.remove(&key);
        }
        if resp.deleted() == 0 {
            return Err(CoreError::KeyNotFound(key).into());
        }
        Ok(event_revision(resp.header().map_or(0, |h| h.revision()), 0))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = i64::try_from(ttl.as_millis().div_ceil(1000)).unwrap_or(i64::MAX).max(1);
        let inner = &self.inner;
        let grant = || {
            let mut leases = inner.client.lease_client();
            async move { leases.grant(secs, None).await }
        };
        // Retried after any failure: if a lost answer hid a grant, that lease holds no key and
        // expires after its TTL, harming nothing.
        let resp = inner.retry(grant).await?;
        let id = LeaseId(u64::try_from(resp.id()).unwrap_or(0));
        let held = Held { current: resp.id(), ttl_secs: resp.ttl(), records: BTreeMap::new(), touched: Instant::now() };
        inner.leases.lock().insert(id.0, held);
        Ok(id)
    }

    async fn keepalive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let inner = &self.inner;
        let current = inner.resolve(lease);
        // Whether the owner kept trying within the TTL: then a lease etcd lost (it was
        // unreachable) is granted again; otherwise it expired, as the protocol says.
        let kept_trying = inner.leases.lock().get_mut(&lease.0).is_some_and(|held| {
            let ttl = Duration::from_secs(u64::try_from(held.ttl_secs).unwrap_or(0));
            let recent = held.touched.elapsed() <= ttl;
            held.touched = Instant::now();
            recent
        });
        let keep = || {
            let mut leases = inner.client.lease_client();
            async move { leases.keep_alive(current).await }
        };
        match inner.retry(keep).await {
            Ok(_) => {}
            Err(StoreError::Rejected(CoreError::LeaseNotFound(_))) => {
                let held = inner.leases.lock().get(&lease.0).cloned();
                return match held {
                    Some(held) if kept_trying => inner.regrant(lease, held).await,
                    Some(_) => {
                        // Nobody kept it alive for its TTL: it expired.
                        if inner.leases.lock().remove(&lease.0).is_some() {
                            inner.expired.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(CoreError::LeaseNotFound(lease).into())
                    }
                    None => Err(CoreError::LeaseNotFound(lease).into()),
                };
            }
            Err(e) => return Err(e),
        }
        let known = inner.leases.lock().get(&lease.0).map(|h| h.ttl_secs);
        let ttl = match known {
            Some(t) => t,
            None => inner.call(inner.client.lease_client().time_to_live(current, None)).await?.granted_ttl(),
        };
        Ok(Duration::from_secs(u64::try_from(ttl).unwrap_or(0)))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<Revision, StoreError> {
        let inner = &self.inner;
        let current = inner.resolve(lease);
        // etcd deletes the lease's keys at one revision, one event each; the revocation's
        // revision is its last event's. The records of a lease another host granted are not
        // known here: then the first event's.
        let attached = inner.leases.lock().get(&lease.0).map_or(0, |h| h.records.len() as u64);
        let revoke = || {
            let mut leases = inner.client.lease_client();
            async move { leases.revoke(current).await }
        };
        let result = inner.retry_unsent(revoke).await.map_err(|e| lease_error(e, lease));
        if !matches!(result, Err(StoreError::Unavailable(_))) {
            inner.leases.lock().remove(&lease.0);
        }
        let response = result?;
        let etcd_rev = response.header().map_or(0, etcd_client::ResponseHeader::revision);
        Ok(event_revision(etcd_rev, attached.saturating_sub(1)))
    }

    async fn list(&self, scope: Scope) -> Result<StoreSnapshot, StoreError> {
        let (revision, records) = self.inner.list_all().await?;
        let records = records.into_iter().filter(|r| scope.contains(&r.key())).collect();
        Ok(StoreSnapshot { revision: snapshot_revision(revision), records })
    }

    async fn watch(&self, scope: Scope, from: Revision) -> Result<WatchStream, StoreError> {
        let (tx, rx) = mpsc::channel(1024);
        let mut watch = Watch { inner: self.inner.clone(), scope, tx, last: from };
        // The first step runs here, so an unreachable etcd fails the call instead of
        // producing a stream that waits.
        let stream = watch.open().await?;
        tokio::spawn(async move { watch.run(stream).await });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn put_artifact(&self, bytes: Vec<u8>) -> Result<String, StoreError> {
        let inner = &self.inner;
        let sha = sha256_hex(&bytes);
        let head = inner.artifact_key(&sha);
        let kv = inner.client.kv_client();
        if !inner.retry(|| inner.get(head.clone(), None)).await?.kvs().is_empty() {
            return Ok(sha);
        }
        let chunks = bytes.chunks(CHUNK).count();
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            inner.call(kv.clone().put(format!("{head}/{i:05}"), chunk.to_vec(), None)).await?;
        }
        // The manifest last: an artifact without one is incomplete and never read.
        let manifest = serde_json::to_vec(&Manifest { size: bytes.len(), chunks }).map_err(unavailable)?;
        inner.call(kv.clone().put(head, manifest, None)).await?;
        Ok(sha)
    }

    async fn get_artifact(&self, sha256: String) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = &self.inner;
        let head = inner.artifact_key(&sha256);
        let resp = inner.retry(|| inner.get(head.clone(), None)).await?;
        let Some(first) = resp.kvs().first() else { return Ok(None) };
        let manifest: Manifest = serde_json::from_slice(first.value())
            .map_err(|e| unavailable(format!("artifact {sha256}: bad manifest: {e}")))?;
        let mut bytes = Vec::with_capacity(manifest.size);
        for i in 0..manifest.chunks {
            let resp = inner.retry(|| inner.get(format!("{head}/{i:05}"), None)).await?;
            let chunk =
                resp.kvs().first().ok_or_else(|| unavailable(format!("artifact {sha256}: chunk {i} missing")))?;
            bytes.extend_from_slice(chunk.value());
        }
        if sha256_hex(&bytes) != sha256 {
            return Err(unavailable(format!("artifact {sha256}: content does not match its sha256")));
        }
        Ok(Some(bytes))
    }

    fn stale_for(&self) -> Option<Duration> {
        self.inner.down_since.lock().map(|t| t.elapsed())
    }
}

/// One watcher's state: what it covers and the last revision it delivered.
struct Watch {
    inner: Arc<Inner>,
    scope: Scope,
    tx: mpsc::Sender<Result<Event, StoreError>>,
    last: Revision,
}

type EtcdStream = etcd_client::WatchStream;

impl Watch {
    /// Sends a `Reset` built from a fresh listing; the watch then continues after it.
    async fn reset(&mut self) -> Result<(), StoreError> {
        let (etcd_rev, records) = self.inner.list_all().await?;
        let revision = snapshot_revision(etcd_rev);
        let records = records.into_iter().filter(|r| self.scope.contains(&r.key())).collect();
        let snapshot = Arc::new(StoreSnapshot { revision, records });
        self.last = revision;
        // A closed receiver shows up at the next send of the run loop.
        let _ = self.tx.send(Ok(Event { revision, change: Change::Reset { snapshot } })).await;
        Ok(())
    }

    /// Starts an etcd watch after `self.last`, resetting first when that is impossible (never
    /// seen anything, or etcd is behind the revision: its data was replaced).
    async fn open(&mut self) -> Result<EtcdStream, StoreError> {
        if self.last == Revision(0) {
            self.reset().await?;
        } else {
            let now = u64::try_from(self.inner.current_revision().await?).unwrap_or(0);
            if now < self.last.0 >> EVENT_BITS {
                tracing::warn!(etcd = now, watcher = %self.last, "etcd is behind the watcher's revision; resetting");
                self.reset().await?;
            }
        }
        let etcd_rev = self.last.0 >> EVENT_BITS;
        let start = if self.last.0 & EVENT_MASK == EVENT_MASK { etcd_rev + 1 } else { etcd_rev };
        let (key, end) = self.inner.record_range();
        let options = WatchOptions::new()
            .with_range(end)
            .with_start_revision(i64::try_from(start).unwrap_or(i64::MAX))
            .with_progress_notify();
        let (watcher, stream) = self.inner.call(self.inner.client.watch_client().watch(key, Some(options))).await?;
        // The watcher cancels the etcd watch when dropped; the stream keeps it open meanwhile.
        drop(watcher);
        Ok(stream)
    }

    async fn run(mut self, mut stream: EtcdStream) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let message = tokio::select! {
                () = self.tx.closed() => return,
                m = stream.message() => m,
            };
            match message {
                Ok(Some(resp)) => {
                    backoff = Duration::from_millis(50);
                    match self.deliver(resp).await {
                        Step::Continue => continue,
                        Step::Stop => return,
                        Step::Reopen => {}
                    }
                }
                Ok(None) => {
                    tracing::warn!(last = %self.last, "etcd watch ended; re-watching");
                    self.inner.mark(false);
                }
                Err(e) => {
                    tracing::warn!(error = %e, last = %self.last, "etcd watch broke; re-watching");
                    self.inner.mark(false);
                }
            }
            loop {
                if self.tx.is_closed() {
                    return;
                }
                match self.open().await {
                    Ok(s) => {
                        stream = s;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "re-watch failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
        }
    }

    async fn deliver(&mut self, resp: WatchResponse) -> Step {
        if resp.compact_revision() > 0 {
            tracing::warn!(compacted = resp.compact_revision(), last = %self.last, "etcd compacted past the watcher; resetting");
            // If the listing fails too, the re-watch from the old revision meets the
            // compaction again and retries this.
            if let Err(e) = self.reset().await {
                tracing::warn!(error = %e, "relisting after compaction failed");
            }
            return Step::Reopen;
        }
        if resp.canceled() {
            tracing::warn!(reason = resp.cancel_reason(), "etcd canceled the watch; re-watching");
            return Step::Reopen;
        }
        if resp.events().is_empty() {
            // A progress notification: every later event is above its revision.
            if let Some(h) = resp.header() {
                let progress = snapshot_revision(h.revision());
                self.last = self.last.max(progress);
            }
            return Step::Continue;
        }
        let mut index = 0;
        let mut at = 0;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            if kv.mod_revision() != at {
                at = kv.mod_revision();
                index = 0;
            } else {
                index += 1;
            }
            let revision = event_revision(at, index);
            if revision <= self.last {
                continue;
            }
            let change = match event.event_type() {
                // A value that is not a valid record (written by hand) is not in any listing;
                // if it replaced a record, watchers see that record go.
                EventType::Put => match self.inner.decode(kv) {
                    Some(record) => Some(Change::Upsert { record }),
                    None => self.inner.decode_key(kv.key()).map(|key| Change::Remove { key }),
                },
                EventType::Delete => self.inner.decode_key(kv.key()).map(|key| Change::Remove { key }),
            };
            self.last = revision;
            let Some(change) = change else { continue };
            let in_scope = match &change {
                Change::Upsert { record } => self.scope.contains(&record.key()),
                Change::Remove { key } => self.scope.contains(key),
                Change::Reset { .. } => true,
            };
            if in_scope && self.tx.send(Ok(Event { revision, change })).await.is_err() {
                return Step::Stop;
            }
        }
        Step::Continue
    }
}

enum Step {
    Continue,
    Reopen,
    Stop,
}
