//! [`AnyStore`]: the backend `sextant serve` was started with, chosen at run time.

use std::time::Duration;

use sextant_core::store::{Store, StoreError, WatchStream};
use sextant_core::{LeaseId, Record, RecordKey, Revision, Scope, StoreSnapshot};

use crate::{CommitStats, EmbeddedStore, EtcdStore};

/// The embedded store or the etcd store. Cheap to clone.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// Durable in a local data directory.
    Embedded(EmbeddedStore),
    /// Shared through an etcd cluster.
    Etcd(EtcdStore),
}

impl AnyStore {
    /// The backend's name, for status and logs.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Embedded(_) => "embedded",
            Self::Etcd(_) => "etcd",
        }
    }

    /// Live leases: all of them (embedded), those granted through this host (etcd).
    #[must_use]
    pub fn lease_count(&self) -> usize {
        match self {
            Self::Embedded(s) => s.lease_count(),
            Self::Etcd(s) => s.held_leases(),
        }
    }

    /// Leases that expired (etcd: those granted through this host, found dropped by etcd after
    /// their keepalives stopped).
    #[must_use]
    pub fn leases_expired(&self) -> u64 {
        match self {
            Self::Embedded(s) => s.leases_expired(),
            Self::Etcd(s) => s.leases_expired(),
        }
    }

    /// What the embedded store's group commit did (durable transactions and the writes they
    /// carried); etcd commits in its own process, so None.
    #[must_use]
    pub fn commit_stats(&self) -> Option<CommitStats> {
        match self {
            Self::Embedded(s) => Some(s.commit_stats()),
            Self::Etcd(_) => None,
        }
    }

    /// Where the data is: the database file, or the etcd endpoints and prefix.
    #[must_use]
    pub fn location(&self) -> String {
        match self {
            Self::Embedded(s) => s.path().display().to_string(),
            Self::Etcd(s) => format!("{} {}", s.endpoints().join(","), s.prefix()),
        }
    }

    /// Values skipped because they were not valid records (etcd only; the embedded store
    /// refuses to open with one).
    #[must_use]
    pub fn invalid_values(&self) -> u64 {
        match self {
            Self::Embedded(_) => 0,
            Self::Etcd(s) => s.invalid_values(),
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Embedded($s) => $e,
            AnyStore::Etcd($s) => $e,
        }
    };
}

impl Store for AnyStore {
    async fn put(&self, record: Record, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        each!(self, s => s.put(record, lease).await)
    }

    async fn get(&self, key: RecordKey) -> Result<Option<(Record, Revision)>, StoreError> {
        each!(self, s => s.get(key).await)
    }

    async fn put_if(&self, record: Record, expected: Option<Revision>) -> Result<Revision, StoreError> {
        each!(self, s => s.put_if(record, expected).await)
    }

    async fn delete(&self, key: RecordKey) -> Result<Revision, StoreError> {
        each!(self, s => s.delete(key).await)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        each!(self, s => s.grant_lease(ttl).await)
    }

    async fn keepalive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        each!(self, s => s.keepalive(lease).await)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<Revision, StoreError> {
        each!(self, s => s.revoke_lease(lease).await)
    }

    async fn list(&self, scope: Scope) -> Result<StoreSnapshot, StoreError> {
        each!(self, s => s.list(scope).await)
    }

    async fn watch(&self, scope: Scope, from: Revision) -> Result<WatchStream, StoreError> {
        each!(self, s => s.watch(scope, from).await)
    }

    async fn put_artifact(&self, bytes: Vec<u8>) -> Result<String, StoreError> {
        each!(self, s => s.put_artifact(bytes).await)
    }

    async fn get_artifact(&self, sha256: String) -> Result<Option<Vec<u8>>, StoreError> {
        each!(self, s => s.get_artifact(sha256).await)
    }

    fn stale_for(&self) -> Option<Duration> {
        each!(self, s => s.stale_for())
    }
}
