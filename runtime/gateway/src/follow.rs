//! Plugins that follow the store: a gateway runs the plugin records bound to the services it
//! routes, as every server does.
//!
//! A [`PluginFollower`] watches the plugin records of a remote sextant (scope `plugins`,
//! through the client library: failover between servers, and its on-disk cache of the
//! records when none answers). For each routed service and plugin kind it resolves the
//! binding with the servers' rule ([`sextant_plugin::bound_record`]); when that changes it
//! gets the component by sha256 (from memory, from its disk cache, or fetched in chunks from
//! a server and checked against the hash), compiles it and swaps it into the route
//! (self-test and build on a blocking thread, never on the async workers). A service whose
//! binding goes away returns to the route's configured default.
//!
//! What happened is kept per (service, kind) as an [`Activation`] (active, or failed with the
//! reason) and summarised per plugin record in [`PluginFollower::report`]: a short
//! `active SHA`, `failed SHA: REASON` or `fallback SHA: …` (loaded, but the native default
//! answers for it) a gateway publishes in its own registration's metadata, so `sextant
//! plugin list` shows which hosts run which version. A component that
//! cannot be fetched is tried again every few seconds; one that fails to load is not tried
//! again until its record changes. Nothing half-applied: a failed load leaves the route on
//! what it ran.
//!
//! A bound version this host rolls back on its own (too many faults within its window) is
//! reported to the control plane with its evidence (`plugin_fault`, sent until a server takes
//! it), and the activation says so. The control plane decides for the fleet (by default one
//! host's rollback is enough): it marks the version bad in the record and returns the record
//! to its newest good version, which every follower then loads, this one included.
//!
//! A [`Router`](crate::Router) built on a remote discovery starts its follower itself (unless told not to:
//! [`RouterBuilder::ignore_plugin_records`](crate::RouterBuilder::ignore_plugin_records)),
//! follows every service it routes, and with a registration
//! ([`RouterBuilder::register_as`](crate::RouterBuilder::register_as)) publishes the report
//! there ([`keep_reported`]), as `sextant gateway` does.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use sextant_core::rollout::RolloutReport;
use sextant_core::{Instance, Metadata, PluginRecord, Record, Scope, ServiceKey};
use sextant_plugin::{AutoRollback, Compiled, Desired, PluginKind, Split, Trial, TrialChange, desired, trial};
use sextant_proto::{Binding, ErrorCode, Request, Response};
use sextant_quic::client::Client;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::ServicePolicy;
use crate::router::WeakRouter;

use sextant_proto::PLUGIN_REPORT_PREFIX as REPORT_PREFIX;
use sextant_proto::ROLLOUT_REPORT_PREFIX;

/// Largest component a gateway fetches (bytes): the largest a server stores.
pub const MAX_FETCHED_COMPONENT: u64 = sextant_proto::MAX_COMPONENT_LEN as u64;

/// How long a component that could not be fetched waits before the next try.
const FETCH_RETRY: Duration = Duration::from_secs(2);

/// How often a host's registration is written again with its report when nothing changed:
/// whether a loaded version answers is judged between two reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// What a follower does.
#[derive(Debug, Clone)]
pub struct FollowOptions {
    /// The services the gateway routes: bindings are resolved for these.
    pub services: Vec<ServiceKey>,
    /// The route defaults: what a service returns to when no record binds it.
    pub defaults: ServicePolicy,
    /// Where fetched components are kept by sha256 (a restart with no server reachable
    /// comes up on them). None: memory only.
    pub cache_dir: Option<PathBuf>,
    /// Who this host is in the faults it reports (a gateway's registration,
    /// `NS/GROUP/NAME/ID`): the control plane counts faults per host.
    pub host: String,
}

/// The state of one (service, kind) on this host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Activation {
    /// The service.
    pub service: String,
    /// `balancer`, `health` or `scheduler`.
    pub kind: String,
    /// The record (empty: the route's default).
    pub plugin: String,
    /// The component's sha256 (empty for the default).
    pub sha256: String,
    /// The version's name for people (`SHA12`, or `SHA12+CFG8` with a configuration:
    /// [`sextant_core::version_label`]; empty for the default).
    pub version: String,
    /// `None` when active, else why it is not.
    pub error: Option<String>,
}

/// Follows the plugin records of a remote sextant for a [`Router`](crate::Router).
#[derive(Debug)]
pub struct PluginFollower {
    activations: Arc<Mutex<BTreeMap<(String, String), Activation>>>,
    /// The rollout candidates the services' balancers run (or refused), by service.
    trials: Arc<Mutex<BTreeMap<ServiceKey, Tried>>>,
    changed: watch::Receiver<u64>,
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    task: tokio::task::JoinHandle<()>,
    /// Not owned: a router holds its own follower.
    router: WeakRouter,
    /// What each (service, kind)'s active version had counted at the last report.
    seen: Mutex<HashMap<(String, String), Seen>>,
}

/// A version's calls, faults and fallbacks as one report saw them, and whether the plugin
/// answered: `Some(n)` when, since the report before, the native default answered `n` calls
/// and the plugin none.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    sha256: String,
    counts: Counts,
    silent: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    calls: u64,
    faults: u64,
    fallbacks: u64,
}

impl Counts {
    fn of(c: &sextant_plugin::VersionCounts) -> Self {
        Self { calls: c.counts.calls, faults: c.counts.faults(), fallbacks: c.counts.fallbacks }
    }

    /// Whether the plugin answered between `before` and now: `None` when nothing was asked
    /// of it (the verdict stays what it was), else `Some(n)` with `n` the calls the native
    /// default answered while the plugin answered none (0: the plugin answered).
    fn silent_since(self, before: Self) -> Option<u64> {
        if self == before {
            return None;
        }
        let fallbacks = self.fallbacks.saturating_sub(before.fallbacks);
        // A call that faulted was answered by the native default, not by the plugin; a pick
        // on a worker still waiting for its resource counts no call, only a fallback.
        let answered =
            self.calls.saturating_sub(before.calls).saturating_sub(self.faults.saturating_sub(before.faults));
        Some(if answered == 0 { fallbacks } else { 0 })
    }
}

/// A change of what the follower covers.
#[derive(Debug)]
enum Control {
    /// These services from now on.
    Set {
        services: Vec<ServiceKey>,
        defaults: Box<ServicePolicy>,
        /// Services whose routes were rebuilt (their slots start on the defaults again).
        reset: Vec<ServiceKey>,
    },
    /// One more service (its route was just set up, or rebuilt: `reset`).
    Add { service: ServiceKey, reset: bool },
}

impl PluginFollower {
    /// Starts following (on the current tokio runtime).
    #[must_use]
    pub fn start(router: &crate::Router, client: Client, options: FollowOptions) -> Self {
        let activations = Arc::new(Mutex::new(BTreeMap::new()));
        let trials = Arc::new(Mutex::new(BTreeMap::new()));
        let (tx, changed) = watch::channel(0);
        let (control, control_rx) = tokio::sync::mpsc::unbounded_channel();
        let (rolled_back, rollbacks) = tokio::sync::mpsc::unbounded_channel();
        router.observe_rollbacks(Arc::new(move |rollback| {
            let _ = rolled_back.send(rollback);
        }));
        let router = router.downgrade();
        let state = Follow {
            router: router.clone(),
            client,
            options,
            applied: HashMap::new(),
            compiled: HashMap::new(),
            activations: Arc::clone(&activations),
            trials: Arc::clone(&trials),
            changed: tx,
        };
        let task = tokio::spawn(state.run(control_rx, rollbacks));
        Self { activations, trials, changed, control, task, router, seen: Mutex::new(HashMap::new()) }
    }

    /// Follows for `services` from now on, with `defaults` for services no record binds;
    /// `reset` names services whose routes were rebuilt (reconfigured), so their bound
    /// plugins are loaded again.
    pub fn set_services(&self, services: Vec<ServiceKey>, defaults: ServicePolicy, reset: Vec<ServiceKey>) {
        let _ = self.control.send(Control::Set { services, defaults: Box::new(defaults), reset });
    }

    /// Follows `service` too (a router does this when it sets a route up; `reset` when it
    /// rebuilt one, so its bound plugins are loaded again).
    pub fn follow_service(&self, service: ServiceKey, reset: bool) {
        let _ = self.control.send(Control::Add { service, reset });
    }

    /// Stops following: what is loaded stays loaded.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Every (service, kind) the follower has acted on.
    #[must_use]
    pub fn activations(&self) -> Vec<Activation> {
        self.activations.lock().values().cloned().collect()
    }

    /// Per plugin record: `active VERSION` when every service it binds here runs it and it
    /// answers; `failed VERSION: REASON (N of M services)` when services refused it; else
    /// `fallback VERSION: the native default answered N calls and the plugin none (K of M
    /// services)` when, since the previous report, the version answered nothing that was
    /// asked of it (its instances or resources cannot be made, or every call faulted).
    /// VERSION is `SHA12`, or `SHA12+CFG8` with a configuration; keyed
    /// `sextant.plugin.NAME`. Call it periodically: whether a version answers is judged
    /// between two calls.
    #[must_use]
    pub fn report(&self) -> BTreeMap<String, String> {
        let activations = self.activations.lock().clone();
        let silent = self.silent(&activations);
        let mut out = report(&activations, &silent);
        out.extend(self.rollout_reports());
        out
    }

    /// Per plugin record whose rollout runs on this host's services: a [`RolloutReport`]
    /// (JSON, keyed `sextant.rollout.NAME`) with both versions' windows of the current step
    /// added up over those services, or the reason the candidate was refused.
    #[must_use]
    pub fn rollout_reports(&self) -> BTreeMap<String, String> {
        let trials = self.trials.lock().clone();
        let router = self.router.upgrade();
        let mut by_plugin: BTreeMap<String, RolloutReport> = BTreeMap::new();
        for (service, tried) in &trials {
            let t = &tried.trial;
            let report = by_plugin.entry(t.version.name.to_string()).or_insert_with(|| RolloutReport {
                candidate: t.version.sha256.clone(),
                step: t.step,
                since_unix_ms: t.since_unix_ms,
                ..RolloutReport::default()
            });
            if let Some(e) = &tried.error {
                report.refused.get_or_insert_with(|| format!("{service}: {e}"));
                continue;
            }
            if let Some(e) = &tried.faulted {
                report.faulted.get_or_insert_with(|| format!("{service}: {e}"));
            }
            let state = router.as_ref().and_then(|r| r.existing(service));
            let windows = state.as_ref().and_then(|s| s.trial_windows());
            if let Some((step, stable, candidate)) = windows.filter(|w| w.0 == t.step) {
                debug_assert_eq!(step, report.step);
                report.stable.add(&stable);
                report.candidate_window.add(&candidate);
            }
            let shadow = state.and_then(|s| s.balancer().candidate()).filter(|c| c.split == Split::Shadow);
            if let Some(c) = shadow {
                *report.agreed.get_or_insert(0) += c.shadow.agreed;
            }
        }
        by_plugin
            .into_iter()
            .filter_map(|(plugin, r)| {
                Some((format!("{ROLLOUT_REPORT_PREFIX}{plugin}"), serde_json::to_string(&r).ok()?))
            })
            .collect()
    }

    /// The (service, kind)s whose active version answered nothing since the last report, with
    /// the calls the native default answered for them.
    fn silent(&self, activations: &BTreeMap<(String, String), Activation>) -> BTreeMap<(String, String), u64> {
        let mut seen = self.seen.lock();
        let mut kept = HashMap::new();
        let mut silent = BTreeMap::new();
        for (key, a) in activations.iter().filter(|(_, a)| !a.plugin.is_empty() && a.error.is_none()) {
            let Ok(service) = ServiceKey::parse(&a.service) else { continue };
            let Some(status) = self.router.upgrade().and_then(|r| r.status(&service)) else { continue };
            let slot = match a.kind.as_str() {
                "balancer" => Some(&status.balancer),
                "health" => Some(&status.health),
                _ => status.scheduler.as_ref(),
            };
            // A swap under way: judged at the next report.
            let Some(slot) = slot.filter(|s| s.active.sha256.as_deref() == Some(a.sha256.as_str())) else { continue };
            let counts = Counts::of(&slot.active.counters);
            let before = seen.remove(key).filter(|b| b.sha256 == a.sha256);
            let verdict = match &before {
                Some(b) => counts.silent_since(b.counts).map_or(b.silent, |n| (n > 0).then_some(n)),
                None => None,
            };
            if let Some(n) = verdict {
                silent.insert(key.clone(), n);
            }
            kept.insert(key.clone(), Seen { sha256: a.sha256.clone(), counts, silent: verdict });
        }
        *seen = kept;
        silent
    }

    /// Changes whenever an activation changed.
    #[must_use]
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }
}

impl crate::router::RouteWatcher for PluginFollower {
    fn service_set_up(&self, service: ServiceKey, rebuilt: bool) {
        self.follow_service(service, rebuilt);
    }

    fn stop(&self) {
        PluginFollower::stop(self);
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

impl Drop for PluginFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn short(sha: &str) -> &str {
    &sha[..12.min(sha.len())]
}

/// Services a plugin version covers, and the failed ones by reason.
type Tally = (usize, BTreeMap<String, usize>);

fn report(
    activations: &BTreeMap<(String, String), Activation>,
    silent: &BTreeMap<(String, String), u64>,
) -> BTreeMap<String, String> {
    // Per (plugin, sha256): the services, and the failed ones grouped by reason (one line
    // however many services failed alike).
    let mut by_plugin: BTreeMap<(&str, &str), Tally> = BTreeMap::new();
    // Per (plugin, sha256): services whose version answered nothing, and the default's calls.
    let mut silent_by_plugin: BTreeMap<(&str, &str), (usize, u64)> = BTreeMap::new();
    for (key, a) in activations.iter().filter(|(_, a)| !a.plugin.is_empty()) {
        let entry = by_plugin.entry((a.plugin.as_str(), a.version.as_str())).or_default();
        entry.0 += 1;
        if let Some(e) = &a.error {
            *entry.1.entry(e.chars().take(160).collect()).or_default() += 1;
        } else if let Some(n) = silent.get(key) {
            let s = silent_by_plugin.entry((a.plugin.as_str(), a.version.as_str())).or_default();
            s.0 += 1;
            s.1 += n;
        }
    }
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for ((plugin, version), (services, failed)) in by_plugin {
        let value = if failed.is_empty() {
            match silent_by_plugin.get(&(plugin, version)) {
                Some((quiet, calls)) => format!(
                    "fallback {version}: the native default answered {calls} calls and the plugin none ({quiet} of {services} services)"
                ),
                None => format!("active {version}"),
            }
        } else {
            let mut groups: Vec<(String, usize)> = failed.into_iter().collect();
            groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let reasons: Vec<String> =
                groups.iter().take(3).map(|(reason, n)| format!("{reason} ({n} of {services} services)")).collect();
            let more = groups.len().saturating_sub(3);
            let more = if more > 0 { format!("; and {more} other reasons") } else { String::new() };
            format!("failed {version}: {}{more}", reasons.join("; "))
        };
        // One line per plugin: when two versions are reported (a swap in progress), a
        // refusal wins.
        let key = format!("{REPORT_PREFIX}{plugin}");
        match out.get(&key) {
            Some(v) if v.starts_with("failed ") => {}
            _ => {
                out.insert(key, value);
            }
        }
    }
    out
}

struct Follow {
    router: WeakRouter,
    client: Client,
    options: FollowOptions,
    /// What each (service, kind) was last given (also after a failed load: not retried
    /// until the record changes).
    applied: HashMap<(ServiceKey, PluginKind), Option<Desired>>,
    compiled: HashMap<String, Arc<Compiled>>,
    activations: Arc<Mutex<BTreeMap<(String, String), Activation>>>,
    trials: Arc<Mutex<BTreeMap<ServiceKey, Tried>>>,
    changed: watch::Sender<u64>,
}

/// A rollout candidate as a service's balancer was given it: running, or refused (why).
#[derive(Debug, Clone)]
struct Tried {
    trial: Trial,
    error: Option<String>,
    /// Why the slot dropped the candidate while it ran (too many faults).
    faulted: Option<String>,
}

impl Follow {
    async fn run(
        mut self,
        mut control: tokio::sync::mpsc::UnboundedReceiver<Control>,
        mut rollbacks: tokio::sync::mpsc::UnboundedReceiver<AutoRollback>,
    ) {
        let mut watch = self.client.watch(Scope::Plugins);
        let mut records: Vec<Arc<PluginRecord>> = Vec::new();
        let mut retry = false;
        loop {
            if self.router.upgrade().is_none() {
                return;
            }
            let retry_in = if retry { FETCH_RETRY } else { Duration::from_secs(3600) };
            let item = tokio::select! {
                item = watch.next() => Some(item),
                () = tokio::time::sleep(retry_in) => None,
                Some(rollback) = rollbacks.recv() => {
                    self.rolled_back(rollback);
                    continue;
                }
                change = control.recv() => {
                    let Some(c) = change else { return };
                    self.control(c);
                    None
                }
            };
            match item {
                None => {}
                Some(None) => return,
                Some(Some(Err(e))) => {
                    tracing::error!(error = %e, "the plugin record watch ended: plugins stay as they are");
                    return;
                }
                Some(Some(Ok(_))) => {
                    records = self
                        .client
                        .view(&watch)
                        .records
                        .into_iter()
                        .filter_map(|r| match r {
                            Record::Plugin(p) => Some(p),
                            _ => None,
                        })
                        .collect();
                }
            }
            retry = self.reconcile(&records).await;
        }
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Set { services, defaults, reset } => {
                self.activations.lock().retain(|(s, _), _| services.iter().any(|k| k.to_string() == *s));
                self.applied.retain(|(s, _), _| services.contains(s) && !reset.contains(s));
                self.options.services = services;
                self.options.defaults = *defaults;
                self.changed.send_modify(|n| *n += 1);
            }
            Control::Add { service, reset } => {
                if reset {
                    self.applied.retain(|(s, _), _| *s != service);
                }
                if !self.options.services.contains(&service) {
                    self.options.services.push(service);
                }
            }
        }
    }

    /// Makes every routed service run what the records say; true when a component could
    /// not be fetched (to be tried again).
    async fn reconcile(&mut self, records: &[Arc<PluginRecord>]) -> bool {
        let mut retry = false;
        self.trials.lock().retain(|s, _| self.options.services.contains(s));
        for service in self.options.services.clone() {
            match self.reconcile_trial(records, &service).await {
                Some(again) => retry |= again,
                // The router is gone: nothing left to follow for.
                None => return false,
            }
            for kind in PluginKind::ALL {
                let desired = desired(records, &service, kind);
                let key = (service.clone(), kind);
                if self.applied.get(&key).is_some_and(|d| *d == desired) {
                    continue;
                }
                if !self.applied.contains_key(&key) && desired.is_none() {
                    // Never touched and nothing bound: the route runs its default already.
                    self.applied.insert(key, None);
                    continue;
                }
                let span = tracing::info_span!(
                    target: sextant_core::TRACE_TARGET,
                    "activation",
                    sextant.service = %service,
                    sextant.kind = %kind,
                    sextant.plugin = desired.as_ref().map_or("", |d| d.name.as_str()),
                    sextant.sha256 = desired.as_ref().map_or("", |d| d.sha256.as_str()),
                    sextant.error = tracing::field::Empty,
                );
                // None: back to what the route is configured with.
                let spec = match &desired {
                    None => Ok(None),
                    Some(d) => match self.component(&d.sha256).instrument(span.clone()).await {
                        Ok(compiled) => Ok(Some(d.spec(compiled))),
                        Err(Fetch::Retry(e)) => {
                            tracing::warn!(%service, plugin = %d.name, error = %e, "component not fetched; trying again");
                            span.record("sextant.error", e.as_str());
                            self.note(&service, kind, desired.as_ref(), Some(e));
                            retry = true;
                            continue;
                        }
                        Err(Fetch::Refused(e)) => Err(e),
                    },
                };
                let result = match spec {
                    Err(e) => Err(e),
                    Ok(spec) => {
                        // The router is gone: nothing left to follow for.
                        let Some(router) = self.router.upgrade() else { return false };
                        let s = service.clone();
                        tokio::task::spawn_blocking(move || {
                            match spec {
                                Some(spec) => router.load(&s, kind, spec).map(drop),
                                None => router.reset(&s, kind).map(drop),
                            }
                            .map_err(|e| e.to_string())
                        })
                        .instrument(span.clone())
                        .await
                        .unwrap_or_else(|e| Err(format!("the load task failed: {e}")))
                        .map(drop)
                    }
                };
                match &result {
                    Ok(()) => {
                        tracing::info!(%service, %kind, plugin = ?desired.as_ref().map(|d| &d.name), "plugin active")
                    }
                    Err(e) => {
                        span.record("sextant.error", e.as_str());
                        tracing::warn!(%service, %kind, error = %e, "plugin refused; the service keeps what it ran")
                    }
                }
                self.note(&service, kind, desired.as_ref(), result.err());
                self.applied.insert(key, desired);
            }
        }
        // Keep only the components still bound (stable versions and rollout candidates).
        self.compiled.retain(|sha, _| {
            records.iter().any(|r| &r.sha256 == sha || r.rollout.as_ref().is_some_and(|o| &o.candidate.sha256 == sha))
        });
        retry
    }

    /// Makes `service`'s balancer run the candidate of its bound record's rollout beside its
    /// version, change its share, promote it as it runs, or drop it ([`TrialChange`]);
    /// `Some(true)` when the component could not be fetched (tried again), `None` when the
    /// router is gone.
    async fn reconcile_trial(&mut self, records: &[Arc<PluginRecord>], service: &ServiceKey) -> Option<bool> {
        let wanted = trial(records, service);
        let stable = desired(records, service, PluginKind::Balancer);
        let entry = self.trials.lock().get(service).cloned();
        let (applied, refused) = entry.map_or((None, false), |t| (Some(t.trial), t.error.is_some()));
        let change = TrialChange::for_host(applied.as_ref(), refused, wanted.as_ref(), stable.as_ref());
        if change == TrialChange::Keep {
            return Some(false);
        }
        let spec = match &change {
            TrialChange::Start(t) => match self.component(&t.version.sha256).await {
                Ok(c) => Ok(Some(t.version.spec(c))),
                Err(Fetch::Retry(e)) => {
                    tracing::warn!(%service, plugin = %t.version.name, error = %e, "candidate not fetched; trying again");
                    return Some(true);
                }
                Err(Fetch::Refused(e)) => Err(e),
            },
            _ => Ok(None),
        };
        let router = self.router.upgrade()?;
        let result = match spec {
            Err(e) => Err(e),
            Ok(spec) => {
                let (s, c) = (service.clone(), change.clone());
                // A candidate's self-test and build keep a core busy: off the async workers.
                tokio::task::spawn_blocking(move || router.change_trial(&s, &c, spec))
                    .await
                    .unwrap_or_else(|e| Err(format!("the candidate task failed: {e}")))
            }
        };
        match &result {
            Ok(_) => tracing::info!(%service, change = ?change_name(&change), "rollout candidate changed"),
            Err(e) => tracing::warn!(%service, error = %e, "rollout candidate refused; the service keeps its version"),
        }
        if change == TrialChange::Promote && result.is_ok() {
            // The slot runs the promoted candidate: the version the records now name.
            self.applied.insert((service.clone(), PluginKind::Balancer), stable.clone());
            self.note(service, PluginKind::Balancer, stable.as_ref(), None);
        }
        let mut trials = self.trials.lock();
        match wanted {
            Some(trial) => {
                // A candidate dropped after faults stays dropped through its next steps.
                let faulted = match &change {
                    TrialChange::Step(_) => trials.get(service).and_then(|t| t.faulted.clone()),
                    _ => None,
                };
                trials.insert(service.clone(), Tried { trial, error: result.err(), faulted });
            }
            None => {
                trials.remove(service);
            }
        }
        drop(trials);
        self.changed.send_modify(|n| *n += 1);
        Some(false)
    }

    /// A slot rolled a version back on its own: when it is the version a record bound here,
    /// the activation says so and the fault goes to the control plane. The slot runs the
    /// version before it meanwhile; the record's next change (the fleet's verdict) is loaded
    /// as usual.
    fn rolled_back(&self, rollback: AutoRollback) {
        let Ok(service) = ServiceKey::parse(&rollback.service) else { return };
        if rollback.kind == PluginKind::Balancer
            && let Some(tried) = self.trials.lock().get_mut(&service)
            && rollback.sha256.as_deref() == Some(tried.trial.version.sha256.as_str())
        {
            // A rollout's candidate dropped on this host: the judge hears it in the report
            // (a failed criterion), not the fleet's fault rule (the record's version is fine).
            tried.faulted = Some(rollback.reason);
            self.changed.send_modify(|n| *n += 1);
            return;
        }
        let Some(Some(desired)) = self.applied.get(&(service.clone(), rollback.kind)) else {
            // The route's own configuration, not a record: nothing for the fleet to decide.
            return;
        };
        if rollback.sha256.as_deref() != Some(desired.sha256.as_str()) {
            return;
        }
        let name = desired.name.clone();
        self.note(
            &service,
            rollback.kind,
            Some(desired),
            Some(format!("rolled back on this host: {}", rollback.reason)),
        );
        let fault = Request::PluginFault {
            name,
            kind: rollback.kind.to_string(),
            sha256: desired.sha256.clone(),
            service,
            host: self.options.host.clone(),
            reason: rollback.reason,
        };
        tokio::spawn(send_fault(self.client.clone(), fault));
    }

    fn note(&self, service: &ServiceKey, kind: PluginKind, desired: Option<&Desired>, error: Option<String>) {
        let activation = Activation {
            service: service.to_string(),
            kind: kind.to_string(),
            plugin: desired.map(|d| d.name.to_string()).unwrap_or_default(),
            sha256: desired.map(|d| d.sha256.clone()).unwrap_or_default(),
            version: desired.map(Desired::version).unwrap_or_default(),
            error,
        };
        let mut all = self.activations.lock();
        let key = (activation.service.clone(), activation.kind.clone());
        if all.get(&key) != Some(&activation) {
            all.insert(key, activation);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// The compiled component: from memory, the disk cache, or a server.
    async fn component(&mut self, sha256: &str) -> Result<Arc<Compiled>, Fetch> {
        if let Some(c) = self.compiled.get(sha256) {
            return Ok(Arc::clone(c));
        }
        let path = self.options.cache_dir.as_ref().map(|d| d.join(format!("{sha256}.wasm")));
        let cached =
            path.as_ref().and_then(|p| std::fs::read(p).ok()).filter(|bytes| sextant_core::sha256_hex(bytes) == sha256);
        let bytes = match cached {
            Some(b) => b,
            None => {
                let bytes = self
                    .client
                    .fetch_artifact(sha256, MAX_FETCHED_COMPONENT)
                    .await
                    .map_err(|e| Fetch::Retry(format!("fetching {}: {e}", short(sha256))))?;
                if let Some(p) = &path {
                    write_atomically(p, &bytes);
                }
                bytes
            }
        };
        let host = self.router.upgrade().ok_or_else(|| Fetch::Retry("the router is gone".into()))?.host().clone();
        let compiled = tokio::task::spawn_blocking(move || host.compile(&bytes))
            .await
            .map_err(|e| Fetch::Refused(format!("the compile task failed: {e}")))?
            .map_err(|e| Fetch::Refused(e.to_string()))?;
        self.compiled.insert(sha256.to_owned(), Arc::clone(&compiled));
        Ok(compiled)
    }
}

/// How many times a fault is sent before this host gives up on it (about ten minutes of
/// tries with the backoff below).
const FAULT_TRIES: u32 = 25;

/// Sends a fault until a server takes it (whatever it decides), or refuses it for good.
async fn send_fault(client: Client, fault: Request) {
    let mut backoff = Duration::from_millis(500);
    for _ in 0..FAULT_TRIES {
        match client.request(fault.clone()).await {
            Ok(Response::PluginFaultTaken { decision, ignored, hosts, needed, .. }) => {
                tracing::warn!(?decision, ?ignored, hosts, needed, "the control plane took this host's plugin fault");
                return;
            }
            Ok(Response::Error { code, message })
            | Err(sextant_quic::client::ClientError::Server { code, message })
                if !matches!(
                    code,
                    ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::Limited | ErrorCode::Conflict
                ) =>
            {
                tracing::error!(%code, %message, "the control plane refused this host's plugin fault");
                return;
            }
            Ok(other) => tracing::warn!(answer = ?other, "unexpected answer to a plugin fault; sending it again"),
            Err(e) => tracing::warn!(error = %e, "plugin fault not sent; trying again"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    tracing::error!("a plugin fault could not be sent to any server; the fleet does not know of it");
}

/// What a host publishes beside its plugin report, and when it must stop writing its
/// registration.
#[derive(Debug, Default)]
pub struct ReportExtras {
    /// More metadata to publish (a gateway's config status); a change is published at once.
    pub extra: Option<watch::Receiver<BTreeMap<String, String>>>,
    /// Set (`Some(why)`) when another process holds this host's identity: writing again
    /// would take the registration back, so the task ends.
    pub stop: Option<watch::Receiver<Option<String>>>,
    /// The revision of the last registration written, kept up to date (0: none yet).
    pub written: Arc<AtomicU64>,
}

/// Registers `me` (bound to the client's connection) with `follower`'s report in its
/// metadata (keys `sextant.plugin.NAME`, cut to fit the metadata limit), and writes it again
/// whenever the report or the extras change, and every [`REPORT_EVERY`]: `sextant plugin
/// list` shows per host what it runs. A registration refused (no server answers) is tried
/// again every two seconds. Ends with the follower, or when `extras.stop` is set.
pub async fn keep_reported(
    follower: std::sync::Weak<PluginFollower>,
    client: Client,
    me: Instance,
    extras: ReportExtras,
) {
    let ReportExtras { mut extra, mut stop, written } = extras;
    let Some(mut changes) = follower.upgrade().map(|f| f.changes()) else { return };
    let mut published = None;
    loop {
        if stop.as_mut().is_some_and(|s| s.borrow_and_update().is_some()) {
            return;
        }
        let Some(mut report) = follower.upgrade().map(|f| f.report()) else { return };
        if let Some(extra) = &mut extra {
            report.extend(extra.borrow_and_update().clone());
        }
        if published.as_ref() != Some(&report) {
            let mut instance = me.clone();
            fit_report(&mut instance.metadata, &report);
            match client.register(instance, Binding::Connection).await {
                Ok((revision, _)) => {
                    written.fetch_max(revision.0, Ordering::AcqRel);
                    published = Some(report);
                }
                Err(e) => {
                    tracing::warn!(error = %e, host = %me.key(), "cannot register this host; trying again");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
            }
        }
        let (extra_changed, stopped) = (changed_or_never(extra.as_mut()), changed_or_never(stop.as_mut()));
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = extra_changed => {}
            () = stopped => {}
            () = tokio::time::sleep(REPORT_EVERY) => {}
        }
    }
}

/// Resolves when `receiver` sees a new value; never when there is none or it closed (a
/// closed channel never changes again).
async fn changed_or_never<T>(receiver: Option<&mut watch::Receiver<T>>) {
    if let Some(r) = receiver
        && r.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Adds `report` to a registration's `metadata` within the registry's metadata limit: long
/// reasons are shortened first, then the entries that do not fit are counted in
/// `sextant.plugin.more` (a registration that does not fit would be refused, and the host
/// would not be seen at all).
pub fn fit_report(metadata: &mut Metadata, report: &BTreeMap<String, String>) {
    let budget = sextant_core::model::MAX_METADATA_BYTES - 256;
    let whole = metadata.text_len() + report.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    let mut size = metadata.text_len();
    let mut added = Vec::with_capacity(report.len() + 1);
    let mut more = 0;
    for (k, v) in report {
        // A rollout report is JSON: whole or not at all.
        let shorten = whole > budget && !k.starts_with(ROLLOUT_REPORT_PREFIX);
        let value: String = if shorten { v.chars().take(60).collect() } else { v.clone() };
        if size + k.len() + value.len() > budget {
            more += 1;
            continue;
        }
        size += k.len() + value.len();
        added.push((k.clone(), value));
    }
    if more > 0 {
        added.push((format!("{REPORT_PREFIX}more"), format!("{more} more plugins not shown")));
    }
    // One packing for the whole report; a report entry replaces a key the registration had.
    *metadata = metadata.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).chain(added).collect();
}

/// A change's name for the log.
fn change_name(change: &TrialChange) -> String {
    match change {
        TrialChange::Keep => "keep".into(),
        TrialChange::Start(t) => format!("start {} {:?}", short(&t.version.sha256), t.split),
        TrialChange::Step(t) => format!("step {} {:?}", t.step, t.split),
        TrialChange::Promote => "promote".into(),
        TrialChange::Stop => "stop".into(),
    }
}

enum Fetch {
    /// Not fetched now (no server, server gone mid-fetch, bad chunks): tried again.
    Retry(String),
    /// Fetched but not a loadable component: not tried again until the record changes.
    Refused(String),
}

fn write_atomically(path: &std::path::Path, bytes: &[u8]) {
    let result = (|| -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot cache a component");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activation(service: &str, plugin: &str, sha: &str, error: Option<&str>) -> ((String, String), Activation) {
        let a = Activation {
            service: service.into(),
            kind: "balancer".into(),
            plugin: plugin.into(),
            sha256: sha.into(),
            version: sextant_core::version_label(sha, if plugin == "canary" { r#"{"share": 5}"# } else { "{}" }),
            error: error.map(str::to_owned),
        };
        ((a.service.clone(), a.kind.clone()), a)
    }

    #[test]
    fn the_report_says_per_plugin_what_runs_and_what_failed_where() {
        let sha = "a".repeat(64);
        let all: BTreeMap<_, _> = [
            activation("ns/g/a", "lb", &sha, None),
            activation("ns/g/b", "lb", &sha, Some("self-test: update trapped")),
            activation("ns/g/c", "lb", &sha, None),
            activation("ns/g/d", "", "", None),
            activation("ns/g/e", "canary", &"b".repeat(64), None),
        ]
        .into_iter()
        .collect();
        let report = report(&all, &BTreeMap::new());
        assert_eq!(report.len(), 2, "{report:?}");
        let cfg8 = &sextant_core::sha256_hex(br#"{"share": 5}"#)[..8];
        assert_eq!(
            report["sextant.plugin.canary"],
            format!("active bbbbbbbbbbbb+{cfg8}"),
            "a configuration names the version"
        );
        assert_eq!(report["sextant.plugin.lb"], "failed aaaaaaaaaaaa: self-test: update trapped (1 of 3 services)");

        // A version that answered nothing since the last report is not called active.
        let quiet = BTreeMap::from([(("ns/g/e".to_owned(), "balancer".to_owned()), 40)]);
        let report = super::report(&all, &quiet);
        assert_eq!(
            report["sextant.plugin.canary"],
            format!(
                "fallback bbbbbbbbbbbb+{cfg8}: the native default answered 40 calls and the plugin none (1 of 1 services)"
            )
        );
        assert!(report["sextant.plugin.lb"].starts_with("failed "), "a refusal still wins: {report:?}");
    }

    #[test]
    fn a_report_too_large_for_a_registration_is_shortened_then_counted() {
        let mut metadata = Metadata::from([("sextant.role", "gateway")]);
        let report: BTreeMap<String, String> =
            (0..80).map(|i| (format!("sextant.plugin.p{i:02}"), format!("failed abc: {}", "x".repeat(150)))).collect();
        fit_report(&mut metadata, &report);
        let size: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(size <= sextant_core::model::MAX_METADATA_BYTES, "{size}");
        assert!(
            metadata.iter().filter(|(k, _)| k.starts_with("sextant.plugin.p")).all(|(_, v)| v.len() == 60),
            "every reason shortened: {metadata:?}"
        );
        let shown = metadata.keys().filter(|k| k.starts_with("sextant.plugin.p")).count();
        assert!(shown > 0 && shown < 80, "{shown}");
        assert_eq!(metadata["sextant.plugin.more"], format!("{} more plugins not shown", 80 - shown));
    }

    #[test]
    fn a_version_answers_when_a_call_since_the_last_report_did_not_fault() {
        let at = |calls, faults, fallbacks| Counts { calls, faults, fallbacks };
        let before = at(100, 0, 0);
        assert_eq!(at(100, 0, 0).silent_since(before), None, "nothing asked: the verdict stays");
        assert_eq!(at(150, 0, 0).silent_since(before), Some(0), "answered");
        assert_eq!(at(150, 1, 1).silent_since(before), Some(0), "answered, one call faulted");
        assert_eq!(at(100, 0, 30).silent_since(before), Some(30), "no resource yet: only the default answered");
        assert_eq!(at(100, 1, 30).silent_since(before), Some(30), "its constructor missed its deadline");
        assert_eq!(at(130, 30, 30).silent_since(before), Some(30), "every call faulted");
    }
}
