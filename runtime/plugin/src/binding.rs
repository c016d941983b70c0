//! Which plugin a slot runs: the binding rule every host (server or gateway) applies.

use std::sync::Arc;

use sextant_core::{PluginRecord, ServiceKey};

use crate::PluginKind;

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
