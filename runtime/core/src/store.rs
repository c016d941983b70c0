//! The storage contract every backend implements (embedded, etcd).
//!
//! Shaped after etcd so both fit: a flat key space of [`Record`]s, a store-wide [`Revision`]
//! per mutation, TTL leases that ephemeral instances hang on, and a watch that resumes from a
//! revision (the missed events, or a `Reset` when they are gone). Plugin artifacts are stored
//! by their sha256 beside the records.
//!
//! Every method either completes durably and returns the revision, or fails and changes
//! nothing: a write is acknowledged only once it is on disk (embedded) or in etcd.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;

use crate::{CoreError, Event, LeaseId, Record, RecordKey, Revision, Scope, StoreSnapshot};

/// A stream of events; it ends after yielding an error (the watcher should re-watch from the
/// last revision it saw).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event, StoreError>> + Send>>;

/// Why a store operation failed. In every case nothing was changed or acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request was invalid (bad record, unknown lease, missing key).
    #[error(transparent)]
    Rejected(#[from] CoreError),
    /// The backend could not complete the operation (disk, etcd unreachable, timeout).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A watcher fell too far behind and must re-watch from its last revision.
    #[error("watch fell behind and was dropped; re-watch from the last revision seen")]
    Lagged,
    /// The store was closed.
    #[error("store is closed")]
    Closed,
    /// A conditional write ([`Store::put_if`]) whose record was written since it was read:
    /// nothing was written.
    #[error(
        "{key} was written at revision {} since it was read at {}: this write lost to that one",
        current.map_or_else(|| "none (it is gone)".to_owned(), |r| r.0.to_string()),
        expected.map_or_else(|| "none (it was absent)".to_owned(), |r| r.0.to_string())
    )]
    Conflict {
        /// The record's key (boxed: the error stays small on every other path).
        key: Box<RecordKey>,
        /// The revision the writer read it at (None: it read no record).
        expected: Option<Revision>,
        /// The revision of the write it lost to (None: the record is gone).
        current: Option<Revision>,
    },
}

/// A registry backend.
pub trait Store: Send + Sync + 'static {
    /// Creates or replaces `record`; ephemeral instances name their `lease`.
    fn put(&self, record: Record, lease: Option<LeaseId>) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// The record under `key` as the store holds it now (not a mirror that may trail it), with
    /// the revision of its last write: what [`Store::put_if`] compares.
    fn get(&self, key: RecordKey) -> impl Future<Output = Result<Option<(Record, Revision)>, StoreError>> + Send;

    /// Creates or replaces `record` (a durable record: no lease) only if its key was last
    /// written at `expected` (None: only if no record is there); otherwise fails with
    /// [`StoreError::Conflict`] naming the revision it lost to, and changes nothing. The
    /// read-modify-write of several writers (servers on one etcd) is serialized by it.
    fn put_if(
        &self,
        record: Record,
        expected: Option<Revision>,
    ) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Deletes the record under `key`.
    fn delete(&self, key: RecordKey) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Grants a lease that lives `ttl` past each keepalive.
    fn grant_lease(&self, ttl: Duration) -> impl Future<Output = Result<LeaseId, StoreError>> + Send;

    /// Keeps `lease` alive; returns its TTL.
    fn keepalive(&self, lease: LeaseId) -> impl Future<Output = Result<Duration, StoreError>> + Send;

    /// Revokes `lease`, deleting the records attached to it; returns the revision of the
    /// revocation: its last deletion (one per record), or the store's revision when nothing
    /// was attached.
    fn revoke_lease(&self, lease: LeaseId) -> impl Future<Output = Result<Revision, StoreError>> + Send;

    /// Every record in `scope`, consistent at one revision.
    fn list(&self, scope: Scope) -> impl Future<Output = Result<StoreSnapshot, StoreError>> + Send;

    /// Events in `scope` after revision `from`: the missed ones, or a `Reset` first when
    /// they are no longer available, then live events.
    fn watch(&self, scope: Scope, from: Revision) -> impl Future<Output = Result<WatchStream, StoreError>> + Send;

    /// Stores a plugin artifact under its sha256 (returned, lowercase hex). Idempotent.
    fn put_artifact(&self, bytes: Vec<u8>) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// The artifact with this sha256, if stored.
    fn get_artifact(&self, sha256: String) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// For how long the backend has been unreachable, if it is: readers keep serving the last
    /// state they have and report it as stale. A local backend is never stale.
    fn stale_for(&self) -> Option<Duration> {
        None
    }
}
