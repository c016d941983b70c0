//! Writes of a plugin record, serialized: the record is read from the store (not from this
//! server's view, which may trail it), changed, and written back only if nobody wrote it in
//! between (`Store::put_if` on the revision read: a transaction on etcd, a check under the
//! write lock in the embedded store). A write that lost is tried again on the record as it
//! now is, so two loads of one name at the same moment, through one server or two, both
//! become versions in its history, in some order; none vanishes.
//!
//! Inside one server the writes also take a lock, so they do not spend their retries on
//! each other.

use std::sync::Arc;

use sextant_core::store::{Store, StoreError};
use sextant_core::{PluginName, PluginRecord, Record, RecordKey, Revision};
use sextant_store::RegistryError;

use crate::error::ManagerError;
use crate::state::Inner;

/// Rounds a write may lose to other servers' writes of the same record before it gives up
/// (each round, one of the writers wins).
const ROUNDS: usize = 16;

impl<S: Store + Clone> Inner<S> {
    /// Applies `change` to `name`'s record as the store holds it (None: no record) and writes
    /// what it returns (None: nothing to write), retried when another write came first.
    /// Returns the record written and its revision.
    ///
    /// # Errors
    /// What `change` refused; the store's refusal; [`ManagerError::Store`] with
    /// [`StoreError::Conflict`] naming the last write it lost to after [`ROUNDS`] rounds.
    pub(crate) async fn write_record(
        &self,
        name: &PluginName,
        mut change: impl FnMut(Option<&PluginRecord>) -> Result<Option<PluginRecord>, ManagerError>,
    ) -> Result<Option<(Arc<PluginRecord>, Revision)>, ManagerError> {
        let _one_at_a_time = self.writes.lock().await;
        let key = RecordKey::Plugin(name.clone());
        let mut lost = None;
        for _ in 0..ROUNDS {
            let current = self.registry.store().get(key.clone()).await.map_err(RegistryError::Store)?;
            let (record, at) = match current {
                Some((Record::Plugin(p), at)) => (Some(p), Some(at)),
                _ => (None, None),
            };
            let Some(next) = change(record.as_deref())? else { return Ok(None) };
            let next = Arc::new(next);
            match self.registry.put_if(Record::Plugin(Arc::clone(&next)), at).await {
                Ok(revision) => return Ok(Some((next, revision))),
                Err(RegistryError::Store(e @ StoreError::Conflict { .. })) => {
                    tracing::debug!(plugin = %name, error = %e, "plugin record written meanwhile; applying again");
                    lost = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegistryError::Store(lost.unwrap_or(StoreError::Conflict {
            key: Box::new(key),
            expected: None,
            current: None,
        }))
        .into())
    }
}
