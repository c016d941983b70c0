//! Prometheus metrics for `/metrics` (text exposition format, via `prometheus-client`).
//!
//! Sizes (services, instances, revision, leases) are gauges read from the registry at scrape
//! time; events (registrations, rejections, expiries) are counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sextant_gateway::plugin_metrics::{ActiveSlot, PluginMetrics, SlotLabels};
use sextant_proto::{FaultDecision, IgnoredFault};

/// Labels of write counters: what was written.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `instance`, `service`, `config`, `lease`.
    pub kind: &'static str,
}

/// Labels of the per-zone gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabel {
    /// The zone (empty: instances without one).
    pub zone: String,
}

/// Labels of the audit counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditLabels {
    /// `quic` or `http`.
    pub door: &'static str,
    /// `accepted`, `unauthenticated`, `forbidden`, `limited`.
    pub verdict: &'static str,
}

/// Labels of the plugin fault counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    /// `pending`, `marked_bad` or `ignored`.
    pub decision: &'static str,
    /// Why an ignored fault changed nothing (`no_record`, `wrong_kind`, `already_bad`,
    /// `not_current`, `repeated`); empty otherwise.
    pub reason: &'static str,
}

/// Labels of the access file reload counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutStateLabels {
    pub plugin: String,
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub plugin: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AclReloadLabel {
    /// `ok` or `failed`.
    pub outcome: &'static str,
}

/// Every metric sextant exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Services with instances.
    pub services: Gauge,
    /// Instances.
    pub instances: Gauge,
    /// Instances per zone, read at scrape.
    pub zone_instances: Family<ZoneLabel, Gauge>,
    /// Healthy (and enabled) instances per zone, read at scrape.
    pub zone_healthy: Family<ZoneLabel, Gauge>,
    /// Config entries.
    pub configs: Gauge,
    /// Store revision.
    pub revision: Gauge,
    /// Live leases.
    pub leases: Gauge,
    /// Leases expired since start.
    pub leases_expired: Counter,
    /// Accepted writes by kind.
    pub writes: Family<KindLabel, Counter>,
    /// Refused writes by kind (invalid input, unknown lease, store unavailable).
    pub writes_rejected: Family<KindLabel, Counter>,
    /// Per slot and per plugin version, and the plugin host (the series every host exports).
    pub plugins: PluginMetrics,
    /// Plugin loads and activations that failed.
    pub plugin_failures: Gauge,
    /// Hosts' automatic rollbacks taken (`plugin_fault`), by decision and reason.
    pub plugin_faults: Family<FaultLabels, Counter>,
    /// 1 while the store answers, 0 while it cannot be reached (answers are then stale).
    pub store_reachable: Gauge,
    /// For how long the store has been unreachable (0 while it answers).
    pub store_stale_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Values in the store that are not valid records (written by hand), skipped.
    pub store_invalid_values: Counter,
    /// Durable transactions the embedded store committed for writes (one fsync each).
    pub store_commits: Counter,
    /// Writes those transactions carried; per commit, the mean group size.
    pub store_committed_writes: Counter,
    /// Audited requests: accepted writes and refusals, by door and verdict.
    pub audit_events: Family<AuditLabels, Counter>,
    /// Reloads of the access file by outcome.
    pub acl_reloads: Family<AclReloadLabel, Counter>,
    pub rollout_state: Family<RolloutStateLabels, Gauge>,
    pub rollout_step: Family<PluginLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Sets the per-zone gauges from `counts` (zone → instances, healthy), dropping zones
    /// that no longer have instances.
    pub fn set_zones(&self, counts: &std::collections::BTreeMap<String, (usize, usize)>) {
        self.zone_instances.clear();
        self.zone_healthy.clear();
        let gauge = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        for (zone, (n, healthy)) in counts {
            let label = ZoneLabel { zone: zone.clone() };
            self.zone_instances.get_or_create(&label).set(gauge(*n));
            self.zone_healthy.get_or_create(&label).set(gauge(*healthy));
        }
    }

    /// Registers every metric under the `sextant_` prefix.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sextant");
        let m = Self {
            services: Gauge::default(),
            instances: Gauge::default(),
            zone_instances: Family::default(),
            zone_healthy: Family::default(),
            configs: Gauge::default(),
            revision: Gauge::default(),
            leases: Gauge::default(),
            leases_expired: Counter::default(),
            writes: Family::default(),
            writes_rejected: Family::default(),
            plugins: PluginMetrics::default(),
            plugin_failures: Gauge::default(),
            plugin_faults: Family::default(),
            store_reachable: Gauge::default(),
            store_stale_seconds: Gauge::default(),
            store_invalid_values: Counter::default(),
            store_commits: Counter::default(),
            store_committed_writes: Counter::default(),
            audit_events: Family::default(),
            acl_reloads: Family::default(),
            rollout_state: Family::default(),
            rollout_step: Family::default(),
            registry: Registry::default(),
        };
        registry.register("services", "Services with at least one instance", m.services.clone());
        registry.register("instances", "Registered instances", m.instances.clone());
        registry.register("zone_instances", "Registered instances per zone", m.zone_instances.clone());
        registry.register("zone_healthy_instances", "Healthy and enabled instances per zone", m.zone_healthy.clone());
        registry.register("configs", "Config entries", m.configs.clone());
        registry.register("revision", "Current store revision", m.revision.clone());
        registry.register("leases", "Live leases", m.leases.clone());
        registry.register("leases_expired", "Leases expired without keepalive", m.leases_expired.clone());
        registry.register(
            "store_reachable",
            "1 while the store answers, 0 while it is unreachable",
            m.store_reachable.clone(),
        );
        registry.register(
            "store_stale_seconds",
            "How long the store has been unreachable (answers are the last known state)",
            m.store_stale_seconds.clone(),
        );
        registry.register(
            "store_invalid_values",
            "Values in the store that are not valid records, skipped",
            m.store_invalid_values.clone(),
        );
        registry.register(
            "store_commits",
            "Durable transactions the embedded store committed for writes, one fsync each",
            m.store_commits.clone(),
        );
        registry.register(
            "store_committed_writes",
            "Writes the embedded store's durable transactions carried (group commit)",
            m.store_committed_writes.clone(),
        );
        registry.register("writes", "Accepted writes", m.writes.clone());
        registry.register("writes_rejected", "Refused writes", m.writes_rejected.clone());
        m.plugins.register(&mut registry);
        registry.register(
            "plugin_failures",
            "Recent plugin loads or activations that failed",
            m.plugin_failures.clone(),
        );
        registry.register(
            "plugin_faults",
            "Hosts' automatic rollbacks of plugin versions taken, by decision (pending, marked_bad, ignored) and reason",
            m.plugin_faults.clone(),
        );
        registry.register(
            "audit_events",
            "Accepted writes and refused requests (unauthenticated, forbidden, limited), by door",
            m.audit_events.clone(),
        );
        registry.register("acl_reloads", "Reloads of the access file, by outcome", m.acl_reloads.clone());
        registry.register(
            "plugin_rollout_state",
            "1 for the state of each plugin record's rollout (shadow, canary, paused, promoted, rolled-back, aborted)",
            m.rollout_state.clone(),
        );
        registry.register(
            "plugin_rollout_step",
            "The step (from 1) each plugin record's rollout is at",
            m.rollout_step.clone(),
        );
        Self { registry, ..m }
    }

    /// Brings the access counters (kept by `access`) into the exposition.
    pub fn set_access(&self, access: &sextant_quic::access::Access) {
        for (door, verdict, n) in access.audit_counts() {
            let labels = AuditLabels { door: door.as_str(), verdict: verdict.as_str() };
            Self::catch_up(&self.audit_events.get_or_create(&labels), n);
        }
        let (ok, failed) = access.reloads();
        Self::catch_up(&self.acl_reloads.get_or_create(&AclReloadLabel { outcome: "ok" }), ok);
        Self::catch_up(&self.acl_reloads.get_or_create(&AclReloadLabel { outcome: "failed" }), failed);
    }

    /// Brings the plugin fault counters (kept by the plugin manager) into the exposition.
    pub fn set_faults(&self, counts: &[(FaultDecision, Option<IgnoredFault>, u64)]) {
        for (decision, reason, n) in counts {
            let labels = FaultLabels { decision: decision.as_str(), reason: reason.map_or("", IgnoredFault::as_str) };
            Self::catch_up(&self.plugin_faults.get_or_create(&labels), *n);
        }
    }

    /// Replaces the plugin slot series with `slots`.
    /// The rollouts of `records`: one state series per record that has one (1 for its state,
    /// 0 for the others) and its step.
    pub fn set_rollouts(&self, records: &[std::sync::Arc<sextant_core::PluginRecord>]) {
        self.rollout_state.clear();
        self.rollout_step.clear();
        for record in records {
            let Some(r) = &record.rollout else { continue };
            for state in sextant_core::rollout::RolloutState::ALL {
                let labels = RolloutStateLabels { plugin: record.name.to_string(), state: state.to_string() };
                self.rollout_state.get_or_create(&labels).set(i64::from(r.state == state));
            }
            let step = i64::try_from(r.step + 1).unwrap_or(i64::MAX);
            self.rollout_step.get_or_create(&PluginLabel { plugin: record.name.to_string() }).set(step);
        }
    }

    pub fn set_slots(&self, slots: &[sextant_proto::SlotView]) {
        self.plugins.set_slots(slots.iter().map(|s| ActiveSlot {
            labels: SlotLabels {
                kind: s.kind.clone(),
                plugin: s.plugin.clone(),
                source: s.source.clone(),
                sha256: s.sha256.clone().unwrap_or_default(),
            },
            loaded_at: s.loaded_at,
        }));
    }

    /// Sets a counter that mirrors a monotonic total kept elsewhere.
    pub fn catch_up(counter: &Counter, total: u64) {
        sextant_gateway::plugin_metrics::catch_up(counter, total);
    }

    /// The text exposition.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        sextant_gateway::metrics::prometheus_text(&out)
    }
}
