//! Plugins in a running server: records in the store decide what every server runs.
//!
//! A plugin arrives (through `plugin_load` or a watched directory) as component bytes, a
//! name, a kind, a binding and a configuration. [`PluginManager::load`] validates it the way
//! a slot would (compile, world and contract version, configuration, self-test) *before*
//! anything is written; only then are the bytes stored as an artifact (by sha256) and the
//! [`PluginRecord`] put. Every server on the store (one with the embedded store, several on
//! etcd) follows the record changes and activates the plugin in the slots its binding covers,
//! so a load through one server becomes active on all of them. Rollback rewrites the record
//! from its history; deleting it sends the services back to their next binding.
//!
//! Slots are per service, created on first use (a pick), so idle services cost nothing. A
//! server carries no traffic, so it keeps a balancer slot alone (it answers `sextant pick`);
//! health policies and schedulers are validated here and run where traffic is. Which
//! record a slot runs: the most specific binding that covers the service (the service itself,
//! then its namespace, then `*`), the newest load among equals; no binding means the native
//! default built-in. A slot follows its service's registry snapshot: the watcher applies each
//! change off the hot path, and a pick that finds its slot behind applies it first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::{Mutex, RwLock};
use sextant_core::rollout::Plan;
use sextant_core::store::{Store, StoreError};
use sextant_core::{
    CoreError, Instance, PLUGIN_HISTORY, PluginBinding, PluginName, PluginRecord, PluginVersion, RecordKey, Revision,
    ServiceKey, ServiceSnapshot,
};
use sextant_proto::{FaultDecision, IgnoredFault, PluginFailure, RolloutAction, SlotView, Validation};
use sextant_store::{Registry, RegistryError};
use tokio::sync::mpsc;

use crate::activate::{reconcile_all, watch};
use crate::error::ManagerError;
use crate::fault::{Fault, FaultCounts, FaultTaken, FleetRule};
use crate::rollout::{self, Judged};
use crate::slots::{ServiceSlots, parse_kind, pop_good, push_history, unix_ms};
use crate::state::{Inner, Work};

use sextant_plugin::{
    Compiled, Defaults, LoadError, PickRequest, PluginHost, PluginKind, PluginSpec, SlotPlan, Slots, VersionCounts,
    VersionKey, snapshot_of,
};

/// Covered services whose live snapshot a load is validated on (a namespace or `*` binding
/// may cover thousands; the rest are checked when their slots activate it).
pub const LIVE_VALIDATION_SAMPLE: usize = 16;

/// What [`PluginManager::load`] wrote, and where it validated the component.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The record as stored.
    pub record: Arc<PluginRecord>,
    /// The revision of the write.
    pub revision: Revision,
    /// The live snapshots it was validated on (none: the same load again, nothing written).
    pub validated: Option<Validation>,
}

/// A pick's answer.
#[derive(Debug, Clone)]
pub struct PickedInstance {
    /// The instance.
    pub instance: Arc<Instance>,
    /// The balancer version that answered.
    pub version: u64,
    /// Whether the native default answered because the plugin faulted.
    pub fallback: bool,
    /// Whether the protection threshold was in force.
    pub protection_active: bool,
}

/// The plugin side of a server. Cheap to clone.
pub struct PluginManager<S>(Arc<Inner<S>>);

impl<S> Clone for PluginManager<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<S> std::fmt::Debug for PluginManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginManager").field("services", &self.0.services.read().len()).finish_non_exhaustive()
    }
}

impl<S: Store + Clone> PluginManager<S> {
    /// Starts following `registry`'s plugin records and service changes (a tokio task that
    /// ends when every handle is dropped and the registry closes).
    ///
    /// # Errors
    /// A default that is not a valid built-in.
    pub fn start(host: PluginHost, registry: Registry<S>, defaults: Defaults) -> Result<Self, LoadError> {
        // Fail now, not on the first pick, if a default does not build.
        Slots::new(&host, "default/default/probe", &defaults, &SlotPlan::routing(&defaults))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            host,
            registry,
            defaults,
            services: RwLock::new(HashMap::new()),
            failures: Mutex::new(VecDeque::new()),
            compiled: Mutex::new(HashMap::new()),
            dirty: tx,
            reconcile: tokio::sync::Mutex::new(()),
            writes: tokio::sync::Mutex::new(()),
            fleet: Mutex::new(FleetRule::default()),
            identity: Mutex::new(format!("server {}", std::process::id())),
            fault_counts: Mutex::new(FaultCounts::new()),
        });
        tokio::spawn(watch(Arc::downgrade(&inner), rx));
        tokio::spawn(judge(Arc::downgrade(&inner)));
        Ok(Self(inner))
    }

    /// The plugin host.
    #[must_use]
    pub fn host(&self) -> &PluginHost {
        &self.0.host
    }

    /// The slots of `service`, created (running the defaults, with the bound plugins
    /// activated shortly after by the watcher) on first use. None for a service the registry
    /// has never seen.
    #[must_use]
    pub fn slots(&self, service: &ServiceKey) -> Option<Arc<ServiceSlots>> {
        if let Some(s) = self.0.services.read().get(service) {
            return Some(Arc::clone(s));
        }
        self.0.registry.snapshot(service)?;
        let created = {
            let mut services = self.0.services.write();
            if let Some(s) = services.get(service) {
                return Some(Arc::clone(s));
            }
            let slots = Arc::new(self.0.new_slots(service)?);
            services.insert(service.clone(), Arc::clone(&slots));
            slots
        };
        created.refresh();
        // Bound plugins whose component is at hand start now; others once the watcher has
        // fetched them.
        let records = self.0.registry.plugins();
        let mut pending = false;
        for kind in PluginKind::ALL.into_iter().filter(|k| created.slots().has(*k)) {
            let desired = sextant_plugin::desired(&records, service, kind);
            let compiled = desired.as_ref().and_then(|d| self.0.compiled.lock().get(&d.sha256).cloned());
            match (&desired, compiled) {
                (None, _) => {}
                (Some(_), Some(c)) => {
                    let failed = self.0.install(&created, kind, desired.clone(), Ok(Some(c)));
                    self.0.report_failed(failed.into_iter().collect());
                }
                (Some(_), None) => pending = true,
            }
        }
        // A rollout's candidate is given by the watcher's activation, as on a record change.
        if pending || sextant_plugin::trial(&records, service).is_some() {
            let _ = self.0.dirty.send(Work::Service(service.clone()));
        }
        Some(created)
    }

    /// Picks an instance of `service` through its balancer slot. None when the service is
    /// unknown or has no instance traffic may go to.
    #[must_use]
    pub fn pick(
        &self,
        service: &ServiceKey,
        hash_key: Option<&str>,
        headers: Vec<(String, String)>,
        tried: Vec<String>,
    ) -> Option<PickedInstance> {
        let slots = self.slots(service)?;
        slots.refresh();
        let mut request = PickRequest {
            hash_key: hash_key.map(sextant_plugin::builtins::hash_str),
            headers,
            // A retry: its attempt number is how many were tried before it.
            attempt: u32::try_from(tried.len()).unwrap_or(u32::MAX),
            tried,
        };
        let (instance, _, picked) = slots.balancer().pick_target::<Arc<Instance>>(&mut request)?;
        Some(PickedInstance {
            instance,
            version: picked.version,
            fallback: picked.fallback,
            protection_active: slots.balancer().published().model.protection_active,
        })
    }

    /// Validates a component, stores it, and writes its record; returns once this server
    /// runs it where its binding says, with the services whose live snapshots it was
    /// validated on (the first [`LIVE_VALIDATION_SAMPLE`] the binding covers, in name order).
    /// Nothing is written when validation fails.
    ///
    /// # Errors
    /// [`ManagerError::Rejected`] with what is wrong with the component; invalid name, kind,
    /// binding or configuration; the store's refusal.
    pub async fn load(
        &self,
        name: &str,
        kind: &str,
        binding: &str,
        config: &str,
        bytes: Vec<u8>,
        source: &str,
    ) -> Result<Loaded, ManagerError> {
        self.load_with_rollout(name, kind, binding, config, bytes, source, None).await
    }

    /// As [`Self::load`]; with `rollout` (a plan, `shadow:2m,10%:5m max-p99-ratio=1.3`),
    /// the component becomes the candidate of a progressive rollout beside the record's
    /// current version instead of replacing it: the record must exist, with the same kind and
    /// binding, and run no rollout (nor may another record of its binding).
    ///
    /// # Errors
    /// As [`Self::load`]; an invalid plan; a record the rollout cannot start on.
    #[allow(clippy::too_many_arguments)]
    pub async fn load_with_rollout(
        &self,
        name: &str,
        kind: &str,
        binding: &str,
        config: &str,
        bytes: Vec<u8>,
        source: &str,
        rollout: Option<&str>,
    ) -> Result<Loaded, ManagerError> {
        let result = async {
            let plugin = PluginName::new(name)?;
            let plan = rollout.map(str::parse::<Plan>).transpose()?;
            let plugin_kind = parse_kind(kind)?;
            PluginBinding::parse(binding)?;
            if !config.trim().is_empty() {
                serde_json::from_str::<serde::de::IgnoredAny>(config)
                    .map_err(|e| ManagerError::BadConfig(e.to_string()))?;
            }
            let config = if config.trim().is_empty() { String::new() } else { config.to_owned() };
            let sha = sextant_core::sha256_hex(&bytes);
            let records = self.0.registry.plugins();
            let old = records.iter().find(|p| p.name == plugin).cloned();
            if let Some(plan) = &plan {
                // Refused now, before the component is compiled (and again on the record as
                // the store holds it when written).
                let candidate =
                    PluginVersion { sha256: sha.clone(), size: 0, config: config.clone(), loaded_at_unix_ms: 0 };
                rollout::start(old.as_deref(), &records, candidate, plan, (kind, binding), "operator")?;
            }
            if let Some(o) = &old
                && plan.is_none()
                && o.kind == kind
                && o.binding == binding
                && o.config == config
                && o.sha256 == sha
            {
                // The same load again (a restart rescanning its plugin directory): nothing to do.
                self.settle(self.0.registry.revision()).await;
                return Ok(Loaded { record: Arc::clone(o), revision: self.0.registry.revision(), validated: None });
            }
            if let Some(reason) = old.as_ref().and_then(|o| o.bad_reason(&sha)) {
                return Err(ManagerError::MarkedBad { name: name.to_string(), sha256: sha, reason: reason.to_owned() });
            }
            let rejected = |source| ManagerError::Rejected { name: name.to_string(), source };
            let bound = PluginBinding::parse(binding)?;
            // Compiling and validating keep a core busy for a while: off the async workers,
            // which go on serving connections meanwhile.
            let inner = Arc::clone(&self.0);
            let init = if config.is_empty() { "{}".to_owned() } else { config.clone() };
            let checked = plugin.clone();
            let (compiled, bytes, validated) = tokio::task::spawn_blocking(move || {
                let compiled = inner.host.compile(&bytes)?;
                inner.validate(&checked, plugin_kind, &compiled, &init, None)?;
                // Then on the live snapshots of the services the binding covers here (a
                // bounded sample): a component that passes the synthetic self-test but
                // refuses a real service is refused now, not after its record is written.
                let mut covered: Vec<(ServiceKey, Arc<ServiceSnapshot>)> = inner
                    .registry
                    .services()
                    .into_iter()
                    .filter(|s| bound.covers(s).is_some())
                    .filter_map(|s| inner.registry.snapshot(&s).map(|snapshot| (s, snapshot)))
                    .collect();
                covered.sort_by(|a, b| a.0.cmp(&b.0));
                let mut validated = Validation { services: Vec::new(), covered: covered.len() as u64 };
                for (service, snapshot) in covered.iter().take(LIVE_VALIDATION_SAMPLE) {
                    inner
                        .validate(&checked, plugin_kind, &compiled, &init, Some(snapshot))
                        .map_err(|e| LoadError::SelfTest(format!("on the live snapshot of {service}: {e}")))?;
                    validated.services.push(service.to_string());
                }
                Ok::<_, LoadError>((compiled, bytes, validated))
            })
            .await
            .map_err(|e| rejected(LoadError::SelfTest(format!("the validation task failed: {e}"))))?
            .map_err(rejected)?;
            self.0.compiled.lock().insert(sha, compiled);

            let size = bytes.len() as u64;
            let sha256 = self.0.registry.store().put_artifact(bytes).await.map_err(RegistryError::Store)?;
            // The record as the store holds it now (another load may have written it since
            // the check above): this load becomes its next version.
            let mut unchanged = None;
            let written = self
                .0
                .write_record(&plugin, |old| {
                    if let Some(plan) = &plan {
                        let candidate = PluginVersion {
                            sha256: sha256.clone(),
                            size,
                            config: config.clone(),
                            loaded_at_unix_ms: unix_ms(),
                        };
                        let others = self.0.registry.plugins();
                        let by = format!("operator via {source}");
                        return rollout::start(old, &others, candidate, plan, (kind, binding), &by).map(Some);
                    }
                    if let Some(o) = old
                        && o.kind == kind
                        && o.binding == binding
                        && o.config == config
                        && o.sha256 == sha256
                    {
                        unchanged = Some(Arc::new(o.clone()));
                        return Ok(None);
                    }
                    if let Some(reason) = old.and_then(|o| o.bad_reason(&sha256)) {
                        return Err(ManagerError::MarkedBad {
                            name: name.to_string(),
                            sha256: sha256.clone(),
                            reason: reason.to_owned(),
                        });
                    }
                    let mut history = old.map(|o| o.history.clone()).unwrap_or_default();
                    if let Some(o) = old.filter(|o| o.bad_reason(&o.sha256).is_none()) {
                        push_history(&mut history, o.current());
                    }
                    Ok(Some(PluginRecord {
                        name: plugin.clone(),
                        kind: kind.to_owned(),
                        sha256: sha256.clone(),
                        size,
                        binding: binding.to_owned(),
                        config: config.clone(),
                        loaded_at_unix_ms: unix_ms(),
                        history,
                        forward: Vec::new(),
                        bad: old.map(|o| o.bad.clone()).unwrap_or_default(),
                        // Faults were about the version this load replaces.
                        faults: Vec::new(),
                        // A running rollout ends (aborted, its log kept): this load's version
                        // serves at once.
                        rollout: old.and_then(|o| o.rollout.clone()).filter(|r| r.state.is_live()).map(|mut r| {
                            let _ = r.abort(
                                unix_ms(),
                                &format!("operator via {source}"),
                                "a plain load replaced the version",
                            );
                            r
                        }),
                    }))
                })
                .await?;
            match (written, unchanged) {
                (Some((record, revision)), _) => {
                    self.settle(revision).await;
                    Ok(Loaded { record, revision, validated: Some(validated) })
                }
                (None, Some(record)) => {
                    let revision = self.0.registry.revision();
                    self.settle(revision).await;
                    Ok(Loaded { record, revision, validated: None })
                }
                (None, None) => unreachable!("a load either writes its record or finds it written"),
            }
        }
        .await;
        if let Err(e) = &result {
            self.0.failed(name, source, e);
        }
        result
    }

    /// Rewrites `name`'s record with the version it replaced; the version it leaves is kept
    /// for [`Self::roll_forward`]. Versions marked bad are skipped (and dropped).
    ///
    /// # Errors
    /// No such record, no earlier version, or the store's refusal.
    pub async fn rollback(&self, name: &PluginName) -> Result<(Arc<PluginRecord>, Revision), ManagerError> {
        self.rewrite(name, |record| {
            let target =
                pop_good(&mut record.history, &record.bad).ok_or_else(|| ManagerError::NoPrevious(name.clone()))?;
            let left = record.switch_to(target);
            record.loaded_at_unix_ms = unix_ms();
            if record.bad_reason(&left.sha256).is_none() {
                record.forward.push(left);
                let excess = record.forward.len().saturating_sub(PLUGIN_HISTORY);
                record.forward.drain(..excess);
            }
            Ok(())
        })
        .await
    }

    /// Returns `name`'s record to the version the last rollback left.
    ///
    /// # Errors
    /// No such record, nothing to roll forward to, or the store's refusal.
    pub async fn roll_forward(&self, name: &PluginName) -> Result<(Arc<PluginRecord>, Revision), ManagerError> {
        self.rewrite(name, |record| {
            let target =
                pop_good(&mut record.forward, &record.bad).ok_or_else(|| ManagerError::NoForward(name.clone()))?;
            let left = record.switch_to(target);
            record.loaded_at_unix_ms = unix_ms();
            push_history(&mut record.history, left);
            Ok(())
        })
        .await
    }

    /// Changes `name`'s existing record with `change` (on the record as the store holds it,
    /// retried when another write came first) and waits until this server runs it.
    async fn rewrite(
        &self,
        name: &PluginName,
        change: impl Fn(&mut PluginRecord) -> Result<(), ManagerError>,
    ) -> Result<(Arc<PluginRecord>, Revision), ManagerError> {
        let written = self
            .0
            .write_record(name, |old| {
                let mut record = old.cloned().ok_or_else(|| ManagerError::NotFound(name.clone()))?;
                change(&mut record)?;
                // The stable version moved under a running rollout: it ends, its log kept.
                if let Some(r) = record.rollout.as_mut().filter(|r| r.state.is_live()) {
                    r.abort(unix_ms(), "operator via api", "the record's version was rolled back or forward")?;
                }
                Ok(Some(record))
            })
            .await?;
        let (record, revision) = written.ok_or_else(|| ManagerError::NotFound(name.clone()))?;
        self.settle(revision).await;
        Ok((record, revision))
    }

    /// Deletes `name`'s record.
    ///
    /// # Errors
    /// No such record, or the store's refusal.
    pub async fn delete(&self, name: &PluginName) -> Result<Revision, ManagerError> {
        let revision = self.0.registry.delete(RecordKey::Plugin(name.clone())).await.map_err(|e| match e {
            RegistryError::Store(StoreError::Rejected(CoreError::KeyNotFound(_))) => {
                ManagerError::NotFound(name.clone())
            }
            e => ManagerError::Store(e),
        })?;
        self.settle(revision).await;
        Ok(revision)
    }

    /// Waits until this server has seen `revision` and activated what it says.
    async fn settle(&self, revision: Revision) {
        self.0.registry.wait_for(revision).await;
        reconcile_all(&self.0).await;
    }

    /// Every slot this server runs.
    #[must_use]
    pub fn status(&self) -> Vec<SlotView> {
        let mut services: Vec<Arc<ServiceSlots>> = self.0.services.read().values().cloned().collect();
        services.sort_by(|a, b| a.service.cmp(&b.service));
        services
            .iter()
            .flat_map(|s| s.status())
            .map(|(kind, st)| {
                let a = st.active;
                SlotView {
                    service: st.service,
                    kind: kind.to_string(),
                    plugin: a.name,
                    source: a.source.into(),
                    sha256: a.sha256,
                    version: a.id,
                    loaded_at: a.loaded_at,
                    counts: a.counters.counts,
                    call_p50_ns: a.counters.call_p50_ns,
                    call_p99_ns: a.counters.call_p99_ns,
                    events: st.events.into_iter().map(|e| format!("v{} {}", e.version, e.what)).collect(),
                }
            })
            .collect()
    }

    /// Per bound record: the services it covers here, how many run it, the others grouped by
    /// why (the load error, else the slot's last event), and what its instances hold.
    #[must_use]
    pub fn bindings(&self) -> Vec<sextant_proto::BindingSummary> {
        let records = self.0.registry.plugins();
        let services: Vec<Arc<ServiceSlots>> = self.0.services.read().values().cloned().collect();
        let shared = self.0.host.shared_status();
        let mut out = Vec::new();
        for record in records.iter().filter(|r| r.bound() != sextant_core::PluginBinding::None) {
            let Ok(kind) = crate::slots::parse_kind(&record.kind) else { continue };
            let mut summary = sextant_proto::BindingSummary {
                plugin: record.name.to_string(),
                kind: record.kind.clone(),
                binding: record.binding.clone(),
                sha256: record.sha256.clone(),
                version: record.version(),
                ..Default::default()
            };
            let mut groups: std::collections::BTreeMap<String, sextant_proto::FailedGroup> =
                std::collections::BTreeMap::new();
            for slots in services.iter().filter(|s| s.slots.has(kind)) {
                if sextant_plugin::desired(&records, &slots.service, kind).is_none_or(|d| d.name != record.name) {
                    continue;
                }
                summary.services += 1;
                let Some(status) = slots.status().into_iter().find(|(k, _)| *k == kind).map(|(_, s)| s) else {
                    continue;
                };
                let active = &status.active;
                if active.name == record.name.as_str() && active.sha256.as_deref() == Some(record.sha256.as_str()) {
                    summary.running += 1;
                    continue;
                }
                let reason = slots.errors.lock()[kind.index()]
                    .clone()
                    .or_else(|| status.events.last().map(|e| e.what.clone()))
                    .unwrap_or_else(|| "not activated yet".into());
                let group = groups
                    .entry(reason.clone())
                    .or_insert_with(|| sextant_proto::FailedGroup { reason, ..Default::default() });
                group.services += 1;
                if group.examples.len() < 3 {
                    group.examples.push(slots.service.to_string());
                }
            }
            summary.failed = groups.into_values().collect();
            summary.failed.sort_by_key(|g| std::cmp::Reverse(g.services));
            if let Some(c) = self.0.compiled.lock().get(&record.sha256) {
                summary.contract = Some(c.contract.as_str().to_owned());
                summary.instances = match c.contract {
                    sextant_plugin::Contract::V0_1 => summary.running * self.0.host.config().workers as u64,
                    sextant_plugin::Contract::V0_2
                    | sextant_plugin::Contract::V0_2_1
                    | sextant_plugin::Contract::V0_2_2
                    | sextant_plugin::Contract::V0_2_3 => 0,
                };
            }
            for s in shared.iter().filter(|s| s.sha256 == record.sha256) {
                summary.instances += s.instances;
                summary.resources += s.resources;
                summary.replaced += s.replaced;
                summary.lost += s.lost;
            }
            out.push(summary);
        }
        out
    }

    /// Monotonic totals per plugin version (kind, name, sha256) over every service, the
    /// versions swapped out included: what `/metrics` exports as `_total` counters.
    #[must_use]
    pub fn totals(&self) -> Vec<(VersionKey, VersionCounts)> {
        let mut totals = self.0.host.retired();
        let services: Vec<Arc<ServiceSlots>> = self.0.services.read().values().cloned().collect();
        for slots in services {
            for (kind, status) in slots.status() {
                let a = status.active;
                let key = VersionKey { kind: kind.to_string(), plugin: a.name, sha256: a.sha256.unwrap_or_default() };
                totals.entry(key).or_default().add(&a.counters);
            }
        }
        let mut totals: Vec<_> = totals.into_iter().collect();
        totals.sort_by(|a, b| a.0.cmp(&b.0));
        totals
    }

    /// The plugin records in the store.
    #[must_use]
    pub fn records(&self) -> Vec<Arc<PluginRecord>> {
        self.0.registry.plugins()
    }

    /// Reports a failure found before the manager saw the plugin (an unreadable file).
    pub fn report(&self, plugin: &str, source: &str, error: &str) {
        self.0.failed(plugin, source, &error);
    }

    /// Sets the fleet rule: how many hosts' automatic rollbacks of a version, within what
    /// window, mark it bad for every host.
    ///
    /// # Errors
    /// A rule out of bounds ([`FleetRule::validate`]); the rule in force stays.
    pub fn set_fleet_rule(&self, rule: FleetRule) -> Result<(), String> {
        rule.validate()?;
        *self.0.fleet.lock() = rule;
        Ok(())
    }

    /// Applies an operator's `action` to `name`'s running rollout (`by` names who, for its
    /// log); returns once this server runs what it leads to.
    ///
    /// # Errors
    /// No such record, no rollout, a transition its state does not allow, the store's refusal.
    pub async fn steer_rollout(
        &self,
        name: &PluginName,
        action: RolloutAction,
        by: &str,
    ) -> Result<(Arc<PluginRecord>, Revision), ManagerError> {
        let (record, revision) = self.0.steer(name, action, by).await?;
        self.settle(revision).await;
        Ok((record, revision))
    }

    /// Judges every running rollout now (the server does it every [`JUDGE_EVERY`] on its
    /// own) and returns the decisions written.
    pub async fn judge_rollouts(&self) -> Vec<Judged> {
        let by = format!("judge@{}", self.0.identity.lock());
        self.0.judge_all(&by).await
    }

    /// Names this server in the faults it reports about its own slots (default
    /// `server PID`).
    pub fn set_identity(&self, identity: impl Into<String>) {
        *self.0.identity.lock() = identity.into();
    }

    /// Takes a host's word that it rolled a version back on its own (`plugin_fault`): kept
    /// in the record, the version marked bad for the fleet once the rule is met, or ignored
    /// with a counted reason.
    ///
    /// # Errors
    /// The store could not take the write.
    pub async fn take_fault(&self, fault: Fault) -> Result<FaultTaken, ManagerError> {
        self.0.take_fault(fault).await
    }

    /// Faults taken so far: `(decision, ignored reason, count)`.
    #[must_use]
    pub fn fault_counts(&self) -> Vec<(FaultDecision, Option<IgnoredFault>, u64)> {
        self.0.fault_counts.lock().iter().map(|((d, i), n)| (*d, *i, *n)).collect()
    }

    /// Recent failed loads and activations, oldest first.
    #[must_use]
    pub fn failures(&self) -> Vec<PluginFailure> {
        self.0.failures.lock().iter().cloned().collect()
    }
}

impl<S: Store + Clone> Inner<S> {
    fn new_slots(&self, service: &ServiceKey) -> Option<ServiceSlots> {
        let name = service.to_string();
        let build = || -> Result<ServiceSlots, LoadError> {
            Ok(ServiceSlots {
                service: service.clone(),
                handle: self.registry.handle(service),
                applied: AtomicU64::new(u64::MAX),
                update: Mutex::new([None, None, None]),
                errors: Mutex::new([None, None, None]),
                trial: Mutex::new(None),
                slots: Slots::new(&self.host, &name, &self.defaults, &SlotPlan::picks_only(&self.defaults))?,
            })
        };
        // The defaults were checked in `start`; this cannot fail short of a host bug.
        let slots = build().map_err(|e| tracing::error!(%service, error = %e, "cannot build slots")).ok()?;
        let dirty = self.dirty.clone();
        let observer: sextant_plugin::Observer = Arc::new(move |rollback| {
            let _ = dirty.send(Work::Bad(rollback));
        });
        slots.slots.observe(&observer);
        Some(slots)
    }

    /// Validates `compiled` for `kind` the way a slot will (self-test, `init` with `config`,
    /// then `update` with `live`, a service's snapshot, when given), in a scratch slot.
    fn validate(
        &self,
        name: &PluginName,
        kind: PluginKind,
        compiled: &Arc<Compiled>,
        config: &str,
        live: Option<&ServiceSnapshot>,
    ) -> Result<(), LoadError> {
        if compiled.kind != kind {
            return Err(LoadError::WrongKind { expected: kind, found: compiled.kind });
        }
        let spec =
            PluginSpec::Wasm { name: name.to_string(), compiled: Arc::clone(compiled), config: config.to_owned() };
        self.defaults.validate(&self.host, kind, spec, live.map(snapshot_of)).map(drop)
    }
}

/// How often a server judges the running rollouts.
pub const JUDGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Judges the running rollouts every [`JUDGE_EVERY`] while the manager lives.
async fn judge<S: Store + Clone>(inner: std::sync::Weak<Inner<S>>) {
    let mut tick = tokio::time::interval(JUDGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let by = format!("judge@{}", inner.identity.lock());
        inner.judge_all(&by).await;
    }
}
