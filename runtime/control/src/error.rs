//! Why a plugin operation was refused: [`ManagerError`], the one error of the plugin side of
//! a server (the executor maps it to protocol error codes).

use sextant_core::rollout::{PlanError, RolloutError};
use sextant_core::{PluginName, ValidationError};
use sextant_plugin::LoadError;
use sextant_store::RegistryError;

/// Why a plugin operation was refused. Nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The component failed validation.
    #[error("plugin {name} rejected: {source}")]
    Rejected {
        /// The plugin.
        name: String,
        /// What was wrong.
        source: LoadError,
    },
    /// A name, kind, binding or configuration that is not valid.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The configuration is not JSON.
    #[error("plugin configuration is not JSON: {0}")]
    BadConfig(String),
    /// No record by that name.
    #[error("no plugin named {0}")]
    NotFound(PluginName),
    /// The record has no earlier version.
    #[error("plugin {0} has no earlier version to roll back to")]
    NoPrevious(PluginName),
    /// The record has no version a rollback left.
    #[error("plugin {0} has no version to roll forward to (a rollback keeps the version it left)")]
    NoForward(PluginName),
    /// The component is a version a host rolled back automatically.
    #[error(
        "plugin {name} rejected: version {sha256} was rolled back automatically ({reason}); load a fixed component, or delete the record to clear the mark"
    )]
    MarkedBad {
        /// The plugin.
        name: String,
        /// The component's sha256.
        sha256: String,
        /// Why it was marked.
        reason: String,
    },
    /// A rollout plan or criterion that is not valid.
    #[error("rollout plan: {0}")]
    Plan(#[from] PlanError),
    /// A transition the rollout's state does not allow.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// A load with a plan for a record that does not exist yet.
    #[error("a rollout needs a stable version to compare with: load the plugin without --rollout first")]
    NoStable,
    /// A load with a plan that changes the record's kind or binding.
    #[error("a rollout keeps the record's kind and binding ({kind}, {binding:?}): change them with a plain load")]
    RolloutChanges {
        /// The record's kind.
        kind: String,
        /// The record's binding.
        binding: String,
    },
    /// A rollout runs already on the record, or on another record of the same binding.
    #[error("plugin {0} runs a rollout on this binding already: let it end, or abort it")]
    RolloutRunning(PluginName),
    /// A load with a plan whose component and configuration are the record's version.
    #[error("the candidate is plugin {0}'s current version: nothing to roll out")]
    SameVersion(PluginName),
    /// A rollout command for a record with no rollout.
    #[error("plugin {0} has no rollout")]
    NoRollout(PluginName),
    /// The store refused or could not take the write.
    #[error(transparent)]
    Store(#[from] RegistryError),
}
