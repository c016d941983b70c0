//! What a watcher or a listing covers.

use serde::{Deserialize, Serialize};

use crate::{ConfigKey, Namespace, RecordKey, ServiceKey};

/// A set of keys: everything, a namespace (a key prefix), a service, or one config entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "scope", content = "key", rename_all = "snake_case")]
pub enum Scope {
    /// Every key, plugins included.
    All,
    /// Instances, service specs and config entries of one namespace.
    Namespace(Namespace),
    /// One service's instances and its spec.
    Service(ServiceKey),
    /// One config entry.
    Config(ConfigKey),
    /// Every plugin record (what a gateway follows to run the plugins bound to its services).
    Plugins,
}

impl Scope {
    /// Whether `key` is inside the scope.
    #[must_use]
    pub fn contains(&self, key: &RecordKey) -> bool {
        match self {
            Self::All => true,
            Self::Namespace(ns) => key.namespace() == Some(ns),
            Self::Service(s) => key.service() == Some(s),
            Self::Config(c) => matches!(key, RecordKey::Config(k) if k == c),
            Self::Plugins => matches!(key, RecordKey::Plugin(_)),
        }
    }
}
