//! Why a plugin operation was refused: [`ManagerError`], the one error of the plugin side of
//! a server (the executor maps it to protocol error codes).

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
    /// The store refused or could not take the write.
    #[error(transparent)]
    Store(#[from] RegistryError),
}
