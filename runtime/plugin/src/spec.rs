//! What a slot runs ([`PluginSpec`]) and what a pick asks ([`PickRequest`]) and answers
//! ([`Picked`]).

use std::sync::Arc;

use crate::compiled::Compiled;
use crate::kind::PluginKind;
use crate::stats::VersionKey;
use crate::{LoadError, PluginHost};

/// What to run in a slot.
#[derive(Debug, Clone)]
pub enum PluginSpec {
    /// A built-in policy, native.
    Builtin {
        /// Its name (`round-robin`, `peak-ewma`, ...).
        name: String,
        /// JSON configuration.
        config: String,
    },
    /// A wasm component.
    Wasm {
        /// A name for status and logs (the plugin record's name or the file name).
        name: String,
        /// The compiled component.
        compiled: Arc<Compiled>,
        /// JSON configuration.
        config: String,
    },
}

impl PluginSpec {
    /// The key this spec's counters add up under as a `kind` plugin.
    #[must_use]
    pub(crate) fn version_key(&self, kind: PluginKind) -> VersionKey {
        let (plugin, sha256) = match self {
            Self::Builtin { name, .. } => (name.clone(), String::new()),
            Self::Wasm { name, compiled, .. } => (name.clone(), compiled.sha256.clone()),
        };
        VersionKey { kind: kind.to_string(), plugin, sha256 }
    }

    /// A built-in with an empty configuration.
    #[must_use]
    pub fn builtin(name: &str) -> Self {
        Self::Builtin { name: name.into(), config: "{}".into() }
    }

    /// A wasm component from its bytes, with an empty configuration: hashed, compiled (or
    /// taken from `host`'s cache by sha256) and checked (a component exporting a plugin world
    /// of this contract). Compiling blocks the calling thread (about 0.2 s for a built-in in a
    /// release build, seconds in a debug one): call it on a blocking thread
    /// (`tokio::task::spawn_blocking`), not on an async worker that serves requests.
    ///
    /// # Errors
    /// What is wrong with the bytes ([`LoadError`]: not wasm, a core module, another world or
    /// contract version, ...).
    pub fn wasm(host: &PluginHost, name: &str, bytes: &[u8]) -> Result<Self, LoadError> {
        Ok(Self::Wasm { name: name.into(), compiled: host.compile(bytes)?, config: "{}".into() })
    }

    /// The same plugin with `config` (JSON text), checked by the plugin's `init` when a slot
    /// loads it.
    #[must_use]
    pub fn with_config(self, config: impl Into<String>) -> Self {
        let config = config.into();
        match self {
            Self::Builtin { name, .. } => Self::Builtin { name, config },
            Self::Wasm { name, compiled, .. } => Self::Wasm { name, compiled, config },
        }
    }

    /// The plugin's name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Self::Builtin { name, .. } | Self::Wasm { name, .. } => name,
        }
    }
}

/// A balancing request.
#[derive(Debug, Clone, Default)]
pub struct PickRequest {
    /// Hash of the affinity key, for hash balancers.
    pub hash_key: Option<u64>,
    /// Request headers the plugin may read (moved in and out, never copied).
    pub headers: Vec<(String, String)>,
    /// Which attempt at the request this pick is for: 0 the first, 1 the first retry, …
    /// (`load.request-attempt`).
    pub attempt: u32,
    /// The endpoints this request already tried, by address (`Endpoint::address`), in
    /// order: the balancer is told them as snapshot indices (`load.request-tried`), and a
    /// table is walked past them (the next ring point, Maglev slot or weighted pick), so a
    /// sticky balancer's retry goes to the next endpoint its key would reach.
    pub tried: Vec<String>,
}

impl PickRequest {
    /// A request whose affinity key is `key` ([`affinity_hash`] of it), no headers.
    #[must_use]
    pub fn with_affinity(key: &str) -> Self {
        Self { hash_key: Some(affinity_hash(key)), ..Self::default() }
    }
}

/// The hash of an affinity key (a user id, a session cookie): FNV-1a over its bytes, then
/// mixed. The same on every platform, in wasm, through a server's `pick` and in
/// `sextant gateway` (`hash_header`), so a key lands on the same endpoint wherever it is
/// hashed.
#[must_use]
pub fn affinity_hash(key: &str) -> u64 {
    sextant_builtins::hash_str(key)
}

/// The answer of a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    /// Index of the endpoint in the snapshot the pick was made on.
    pub index: u32,
    /// The version that answered (or whose fault the fallback covered).
    pub version: u64,
    /// True when the native fallback answered because the plugin failed.
    pub fallback: bool,
}
