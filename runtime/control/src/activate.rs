//! Activation: what every server does when plugin records change. The watcher follows the
//! registry; each record change (or a service's slots being created) reconciles the slots the
//! record's binding covers: the component is fetched by sha256 (compiled once, cached), loaded
//! into the slot, and a load that fails is reported, never fatal. An automatic rollback marks
//! the faulty version bad in its record, so no server activates it again.

use std::sync::Arc;
use std::time::Duration;

use sextant_core::store::Store;
use sextant_core::{
    BadVersion, Change, PLUGIN_HISTORY, PluginBinding, PluginRecord, Record, RecordKey, Scope, ServiceKey,
};
use sextant_plugin::{AutoRollback, Compiled, PluginKind, PluginSpec};
use tokio::sync::mpsc;

use crate::slots::{Desired, KINDS, ServiceSlots, kind_index, pop_good, resolve, truncate, unix_ms};
use crate::state::{Inner, Work};

impl<S: Store + Clone> Inner<S> {
    /// Makes `slots` run what the records say.
    pub(crate) async fn reconcile(&self, slots: &ServiceSlots, records: &[Arc<PluginRecord>]) {
        slots.refresh();
        for kind in KINDS.into_iter().filter(|k| slots.slots.has(*k)) {
            let desired = resolve(records, &slots.service, kind);
            if slots.update.lock()[kind_index(kind)] == desired {
                continue;
            }
            let compiled = match &desired {
                None => Ok(None),
                Some(d) => self.fetch(&d.sha256).await.map(Some),
            };
            self.install(slots, kind, desired, compiled);
        }
    }

    /// Loads `desired` (none: the default) into `slots`' `kind` slot.
    pub(crate) fn install(
        &self,
        slots: &ServiceSlots,
        kind: PluginKind,
        desired: Option<Desired>,
        compiled: Result<Option<Arc<Compiled>>, String>,
    ) {
        let mut applied = slots.update.lock();
        if applied[kind_index(kind)] == desired {
            return;
        }
        let spec = compiled.map(|c| match (c, &desired) {
            (Some(compiled), Some(d)) => PluginSpec::Wasm {
                name: d.name.to_string(),
                compiled,
                config: if d.config.is_empty() { "{}".into() } else { d.config.clone() },
            },
            _ => self.defaults.native(kind),
        });
        let Some(loaded) = spec
            .map_or_else(|e| Some(Err(e)), |spec| slots.slots.load(kind, spec).map(|r| r.map_err(|e| e.to_string())))
        else {
            // No such slot here (a server keeps the balancer alone): nothing runs it.
            return;
        };
        match loaded {
            Ok(v) => tracing::info!(service = %slots.service, %kind, plugin = %v.name, version = v.id, "plugin active"),
            Err(e) => {
                let plugin = desired.as_ref().map_or_else(|| "default".to_owned(), |d| d.name.to_string());
                self.failed(&plugin, "store", &format!("{} {kind}: {e}", slots.service));
            }
        }
        // Recorded even when it failed, so the same record is not retried on every change;
        // the next write of the record tries again.
        applied[kind_index(kind)] = desired;
    }

    /// A slot rolled back on its own: the record naming that version marks it bad and goes
    /// back to its newest good earlier version (none: the record binds nothing until a new
    /// load), so no host activates it again, after a restart either.
    pub(crate) async fn mark_bad(&self, rollback: AutoRollback) {
        let Some(sha256) = rollback.sha256 else { return };
        let kind = rollback.kind.to_string();
        let Some(old) = self.registry.plugins().into_iter().find(|r| {
            r.name.as_str() == rollback.plugin
                && r.kind == kind
                && r.sha256 == sha256
                && r.bad_reason(&sha256).is_none()
        }) else {
            return;
        };
        let mut record = (*old).clone();
        record.bad.push(BadVersion {
            sha256: sha256.clone(),
            reason: truncate(&format!("{} {kind}: {}", rollback.service, rollback.reason), 1024),
            at_unix_ms: unix_ms(),
        });
        let excess = record.bad.len().saturating_sub(PLUGIN_HISTORY);
        record.bad.drain(..excess);
        if let Some(target) = pop_good(&mut record.history, &record.bad) {
            record.switch_to(target);
            record.loaded_at_unix_ms = unix_ms();
        }
        match self.registry.put(Record::Plugin(Arc::new(record)), None).await {
            Ok(revision) => {
                tracing::error!(plugin = %old.name, %sha256, %revision, "version marked bad after an automatic rollback");
            }
            Err(e) => self.failed(old.name.as_str(), "auto-rollback", &format!("marking {sha256} bad: {e}")),
        }
    }

    /// The compiled component with this sha256, from the cache or the store.
    pub(crate) async fn fetch(&self, sha256: &str) -> Result<Arc<Compiled>, String> {
        if let Some(c) = self.compiled.lock().get(sha256) {
            return Ok(Arc::clone(c));
        }
        let bytes =
            tokio::time::timeout(Duration::from_secs(10), self.registry.store().get_artifact(sha256.to_owned()))
                .await
                .map_err(|_| format!("reading artifact {sha256} timed out"))?
                .map_err(|e| format!("reading artifact {sha256}: {e}"))?
                .ok_or_else(|| format!("artifact {sha256} is not in the store"))?;
        let host = self.host.clone();
        let compiled = tokio::task::spawn_blocking(move || host.compile(&bytes))
            .await
            .map_err(|e| format!("compiling artifact {sha256}: {e}"))?
            .map_err(|e| e.to_string())?;
        self.compiled.lock().insert(sha256.to_owned(), Arc::clone(&compiled));
        Ok(compiled)
    }
}

pub(crate) async fn reconcile_all<S: Store + Clone>(inner: &Inner<S>) {
    let _pass = inner.reconcile.lock().await;
    let records = inner.registry.plugins();
    // Keep the components of bound balancer records compiled (slots created later start on
    // them at once; a server hosts no other kind); drop the rest.
    inner.compiled.lock().retain(|sha, _| records.iter().any(|r| &r.sha256 == sha));
    let balancer = PluginKind::Balancer.to_string();
    for r in records.iter().filter(|r| r.bound() != PluginBinding::None && r.kind == balancer) {
        if let Err(e) = inner.fetch(&r.sha256).await {
            inner.failed(r.name.as_str(), "store", &e);
        }
    }
    let services: Vec<Arc<ServiceSlots>> = inner.services.read().values().cloned().collect();
    for slots in services {
        inner.reconcile(&slots, &records).await;
    }
}

pub(crate) async fn reconcile_one<S: Store + Clone>(inner: &Inner<S>, service: &ServiceKey) {
    let Some(slots) = inner.services.read().get(service).cloned() else { return };
    let _pass = inner.reconcile.lock().await;
    inner.reconcile(&slots, &inner.registry.plugins()).await;
}

/// Follows the registry: plugin records re-resolve every slot, a service change refreshes
/// that service's slots, an automatic rollback marks its version bad.
pub(crate) async fn watch<S: Store + Clone>(inner: std::sync::Weak<Inner<S>>, mut work: mpsc::UnboundedReceiver<Work>) {
    let mut sub = {
        let Some(i) = inner.upgrade() else { return };
        i.registry.subscribe(Scope::All, i.registry.revision())
    };
    loop {
        let service = tokio::select! {
            event = sub.next() => match event {
                None => return,
                Some(event) => match &event.change {
                    Change::Upsert { record: Record::Plugin(_) } | Change::Remove { key: RecordKey::Plugin(_) }
                    | Change::Reset { .. } => None,
                    Change::Upsert { record } => match record.key().service() {
                        Some(s) => Some(s.clone()),
                        None => continue,
                    },
                    Change::Remove { key } => match key.service() {
                        Some(s) => Some(s.clone()),
                        None => continue,
                    },
                },
            },
            job = work.recv() => match job {
                None => return,
                Some(Work::Service(s)) => Some(s),
                Some(Work::Bad(rollback)) => {
                    let Some(inner) = inner.upgrade() else { return };
                    inner.mark_bad(rollback).await;
                    continue;
                }
            },
        };
        let Some(inner) = inner.upgrade() else { return };
        match service {
            Some(s) => reconcile_one(&inner, &s).await,
            None => reconcile_all(&inner).await,
        }
    }
}
