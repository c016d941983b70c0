//! Which plugin a slot runs: the binding rule every host (server or gateway) applies.

use std::sync::Arc;

use sextant_core::{PluginName, PluginRecord, ServiceKey};

use crate::{Compiled, PluginKind, PluginSpec};

/// What one slot of a host runs as the records decide: a record's current version, with the
/// configuration the plugin receives (`{}` when the record has none). Where an
/// `Option<Desired>` is expected, `None` is the slot's configured default. Servers and
/// gateways compare what they run against it, and load it the same way ([`Desired::spec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The record.
    pub name: PluginName,
    /// Its component's sha256.
    pub sha256: String,
    /// Its configuration, as the plugin receives it.
    pub config: String,
}

impl Desired {
    /// What `record`'s current version runs as.
    #[must_use]
    pub fn of(record: &PluginRecord) -> Self {
        Self { name: record.name.clone(), sha256: record.sha256.clone(), config: record.config_or_default().to_owned() }
    }

    /// The spec to load, once its component (by [`Desired::sha256`]) is compiled.
    #[must_use]
    pub fn spec(&self, compiled: Arc<Compiled>) -> PluginSpec {
        PluginSpec::Wasm { name: self.name.to_string(), compiled, config: self.config.clone() }
    }

    /// The version's name for people: `SHA12`, or `SHA12+CFG8` with a configuration
    /// ([`sextant_core::version_label`]).
    #[must_use]
    pub fn version(&self) -> String {
        sextant_core::version_label(&self.sha256, &self.config)
    }
}

/// What `service`'s `kind` slot runs on every host (server or gateway): the version of the
/// record [`bound_record`] names, or `None` (the slot's default).
#[must_use]
pub fn desired(records: &[Arc<PluginRecord>], service: &ServiceKey, kind: PluginKind) -> Option<Desired> {
    bound_record(records, service, kind).map(|r| Desired::of(r))
}

/// The record `service`'s `kind` slot should run: the most specific binding (the service,
/// then its namespace, then `*`), the newest load among equals (then the name); a record
/// whose current version is marked bad binds nothing. The one rule every host (server or
/// gateway) applies.
#[must_use]
pub fn bound_record<'a>(
    records: &'a [Arc<PluginRecord>],
    service: &ServiceKey,
    kind: PluginKind,
) -> Option<&'a Arc<PluginRecord>> {
    let kind = kind.to_string();
    records
        .iter()
        .filter(|r| r.kind == kind && r.bad_reason(&r.sha256).is_none())
        .filter_map(|r| r.bound().covers(service).map(|rank| (rank, r.loaded_at_unix_ms, r)))
        .max_by(|a, b| (a.0, a.1, &b.2.name).cmp(&(b.0, b.1, &a.2.name)))
        .map(|(_, _, r)| r)
}
