//! Typed errors of the core. Each variant names what failed.

use crate::{LeaseId, RecordKey, ValidationError};

/// A request the core refuses: invalid input or a missing lease/key. Nothing changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    /// Invalid input.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The lease does not exist (never granted, expired or revoked).
    #[error("lease {0} not found (expired, revoked or never granted)")]
    LeaseNotFound(LeaseId),
    /// A lease id that is already in use.
    #[error("lease {0} already exists")]
    LeaseExists(LeaseId),
    /// Deleting a key that does not exist.
    #[error("{0} not found")]
    KeyNotFound(RecordKey),
}
