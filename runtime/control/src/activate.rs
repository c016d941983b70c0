//! Activation: what every server does when plugin records change. The watcher follows the
//! registry; each record change (or a service's slots being created) reconciles the slots the
//! record's binding covers: the component is fetched by sha256 (compiled once, cached), loaded
//! into the slot, and a load that fails is reported, never fatal. An automatic rollback is a
//! fault for the fleet's verdict (`verdict.rs`), like a gateway's.

use std::sync::Arc;
use std::time::Duration;

use sextant_core::store::Store;
use sextant_core::{Change, PluginBinding, PluginRecord, Record, RecordKey, Scope, ServiceKey};
use sextant_plugin::{Compiled, Desired, PluginKind, TrialChange};
use tokio::sync::mpsc;

use crate::slots::ServiceSlots;
use crate::state::{Inner, Work};

/// An activation that failed on one service.
pub(crate) struct Failed {
    pub(crate) plugin: String,
    pub(crate) kind: PluginKind,
    pub(crate) service: String,
    pub(crate) error: String,
}

impl<S: Store + Clone> Inner<S> {
    /// Makes `slots` run what the records say; returns the activations that failed.
    pub(crate) async fn reconcile(&self, slots: &ServiceSlots, records: &[Arc<PluginRecord>]) -> Vec<Failed> {
        slots.refresh();
        let mut failed = Vec::new();
        failed.extend(self.reconcile_trial(slots, records).await);
        for kind in PluginKind::ALL.into_iter().filter(|k| slots.slots.has(*k)) {
            let desired = sextant_plugin::desired(records, &slots.service, kind);
            if slots.update.lock()[kind.index()] == desired {
                continue;
            }
            let span = tracing::info_span!(
                target: sextant_core::TRACE_TARGET,
                "activation",
                sextant.service = %slots.service,
                sextant.kind = %kind,
                sextant.plugin = desired.as_ref().map_or("", |d| d.name.as_str()),
                sextant.sha256 = desired.as_ref().map_or("", |d| d.sha256.as_str()),
                sextant.error = tracing::field::Empty,
            );
            let compiled = match &desired {
                None => Ok(None),
                Some(d) => tracing::Instrument::instrument(self.fetch(&d.sha256), span.clone()).await.map(Some),
            };
            let refused = span.in_scope(|| self.install(slots, kind, desired, compiled));
            if let Some(f) = &refused {
                span.record("sextant.error", f.error.as_str());
            }
            failed.extend(refused);
        }
        failed
    }

    /// Makes `slots`' balancer run the candidate of the bound record's rollout beside its
    /// version (or stop running it, or promote it as it runs: [`TrialChange`]).
    async fn reconcile_trial(&self, slots: &ServiceSlots, records: &[Arc<PluginRecord>]) -> Option<Failed> {
        let wanted = sextant_plugin::trial(records, &slots.service);
        let stable = sextant_plugin::desired(records, &slots.service, PluginKind::Balancer);
        let entry = slots.trial.lock().clone();
        let (applied, refused) = entry.map_or((None, false), |(t, failed)| (Some(t), failed));
        let change = TrialChange::for_host(applied.as_ref(), refused, wanted.as_ref(), stable.as_ref());
        let spec = match &change {
            TrialChange::Keep => return None,
            TrialChange::Start(t) => match self.fetch(&t.version.sha256).await {
                Ok(c) => Some(t.version.spec(c)),
                Err(error) => {
                    *slots.trial.lock() = wanted.map(|t| (t, true));
                    return Some(Failed {
                        plugin: t.version.name.to_string(),
                        kind: PluginKind::Balancer,
                        service: slots.service.to_string(),
                        error: format!("candidate: {error}"),
                    });
                }
            },
            _ => None,
        };
        let mut applied = slots.update.lock();
        let result = slots.balancer().change_trial(&change, spec);
        if change == TrialChange::Promote && result.is_ok() {
            // The slot runs the promoted candidate: the version the records now name.
            applied[PluginKind::Balancer.index()] = stable;
        }
        drop(applied);
        let plugin = wanted.as_ref().map(|t| t.version.name.to_string());
        *slots.trial.lock() = wanted.map(|t| (t, result.is_err()));
        result.err().map(|error| Failed {
            plugin: plugin.unwrap_or_default(),
            kind: PluginKind::Balancer,
            service: slots.service.to_string(),
            error: format!("candidate: {error}"),
        })
    }

    /// Loads `desired` (none: the default) into `slots`' `kind` slot; what failed, if it did
    /// (the caller reports it: once per plugin and reason when many services fail alike).
    pub(crate) fn install(
        &self,
        slots: &ServiceSlots,
        kind: PluginKind,
        desired: Option<Desired>,
        compiled: Result<Option<Arc<Compiled>>, String>,
    ) -> Option<Failed> {
        let mut applied = slots.update.lock();
        if applied[kind.index()] == desired {
            return None;
        }
        let spec = compiled.map(|c| match (c, &desired) {
            (Some(compiled), Some(d)) => d.spec(compiled),
            _ => self.defaults.native(kind),
        });
        let Some(loaded) = spec
            .map_or_else(|e| Some(Err(e)), |spec| slots.slots.load(kind, spec).map(|r| r.map_err(|e| e.to_string())))
        else {
            // No such slot here (a server keeps the balancer alone): nothing runs it.
            return None;
        };
        let failed = match loaded {
            Ok(v) => {
                tracing::debug!(service = %slots.service, %kind, plugin = %v.name, version = v.id, "plugin active");
                slots.errors.lock()[kind.index()] = None;
                None
            }
            Err(error) => {
                slots.errors.lock()[kind.index()] = Some(error.clone());
                let plugin = desired.as_ref().map_or_else(|| "default".to_owned(), |d| d.name.to_string());
                Some(Failed { plugin, kind, service: slots.service.to_string(), error })
            }
        };
        // Recorded even when it failed, so the same record is not retried on every change;
        // the next write of the record tries again.
        applied[kind.index()] = desired;
        failed
    }

    /// Reports failed activations: one line (and one `plugin list` failure) per plugin, kind
    /// and reason, however many services failed alike.
    pub(crate) fn report_failed(&self, failed: Vec<Failed>) {
        let mut groups: std::collections::BTreeMap<(String, PluginKind, String), Vec<String>> =
            std::collections::BTreeMap::new();
        for f in failed {
            groups.entry((f.plugin, f.kind, f.error)).or_default().push(f.service);
        }
        for ((plugin, kind, error), services) in groups {
            let first = services.first().cloned().unwrap_or_default();
            let text = match services.len() {
                1 => format!("{first} {kind}: {error}"),
                n => format!("{kind} on {n} services ({first} and {} more): {error}", n - 1),
            };
            self.failed(&plugin, "store", &text);
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
    inner.compiled.lock().retain(|sha, _| {
        records.iter().any(|r| &r.sha256 == sha || r.rollout.as_ref().is_some_and(|o| &o.candidate.sha256 == sha))
    });
    let balancer = PluginKind::Balancer.to_string();
    for r in records.iter().filter(|r| r.bound() != PluginBinding::None && r.kind == balancer) {
        if let Err(e) = inner.fetch(&r.sha256).await {
            inner.failed(r.name.as_str(), "store", &e);
        }
    }
    let services: Vec<Arc<ServiceSlots>> = inner.services.read().values().cloned().collect();
    let mut failed = Vec::new();
    let mut activated = 0usize;
    for slots in services {
        let before = failed.len();
        failed.extend(inner.reconcile(&slots, &records).await);
        activated += usize::from(failed.len() == before);
    }
    if !failed.is_empty() {
        tracing::warn!(failed = failed.len(), services = activated, "plugin activations failed");
    }
    inner.report_failed(failed);
}

pub(crate) async fn reconcile_one<S: Store + Clone>(inner: &Inner<S>, service: &ServiceKey) {
    let Some(slots) = inner.services.read().get(service).cloned() else { return };
    let _pass = inner.reconcile.lock().await;
    let failed = inner.reconcile(&slots, &inner.registry.plugins()).await;
    inner.report_failed(failed);
}

/// Follows the registry: plugin records re-resolve every slot, a service change refreshes
/// that service's slots, an automatic rollback goes to the fleet's verdict.
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
                    inner.own_rollback(rollback).await;
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
