//! Prometheus metrics for `/metrics` (text exposition format, via `prometheus-client`).
//!
//! Sizes (services, instances, revision, leases) are gauges read from the registry at scrape
//! time; events (registrations, rejections, expiries) are counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sextant_gateway::metrics::CallTimeHistogram;

/// Labels of write counters: what was written.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `instance`, `service`, `config`, `lease`.
    pub kind: &'static str,
}

/// Labels of the audit counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuditLabels {
    /// `quic` or `http`.
    pub door: &'static str,
    /// `accepted`, `unauthenticated`, `forbidden`, `limited`.
    pub verdict: &'static str,
}

/// Labels of the access file reload counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `ok` or `failed`.
    pub outcome: &'static str,
}

/// Labels of plugin slot metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    /// `NS/GROUP/NAME`.
    pub service: String,
    /// `balancer`, `health`, `scheduler`.
    pub kind: String,
    /// The active plugin (record name or built-in).
    pub plugin: String,
    /// `builtin` or `wasm`.
    pub source: String,
    /// sha256 of the active component, empty for built-ins.
    pub sha256: String,
}

/// Labels of plugin version totals.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// `balancer`, `health`, `scheduler`.
    pub kind: String,
    /// Record name or built-in.
    pub plugin: String,
    /// sha256 of the component, empty for built-ins.
    pub sha256: String,
}

/// Every metric sextant exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Services with instances.
    pub services: Gauge,
    /// Instances.
    pub instances: Gauge,
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
    /// Per plugin slot, the active version's number (it rises with every load).
    pub plugin_version: Family<SlotLabels, Gauge>,
    /// When the active version was published (Unix seconds).
    pub plugin_loaded_at: Family<SlotLabels, Gauge>,
    /// Per plugin version, over every service and every swap: sampled pick times (seconds).
    pub plugin_call_duration_seconds: Family<VersionLabels, CallTimeHistogram>,
    /// Per plugin version (kind, name, sha256), over every service and every swap: calls.
    pub plugin_calls: Family<VersionLabels, Counter>,
    /// Calls that trapped.
    pub plugin_traps: Family<VersionLabels, Counter>,
    /// Calls stopped at their deadline.
    pub plugin_deadline_hits: Family<VersionLabels, Counter>,
    /// Calls stopped at the memory cap.
    pub plugin_memory_hits: Family<VersionLabels, Counter>,
    /// Answers outside the contract (and refused updates).
    pub plugin_contract_violations: Family<VersionLabels, Counter>,
    /// Calls answered by the native default instead.
    pub plugin_fallbacks: Family<VersionLabels, Counter>,
    /// Plugin loads and activations that failed.
    pub plugin_failures: Gauge,
    /// 1 while the store answers, 0 while it cannot be reached (answers are then stale).
    pub store_reachable: Gauge,
    /// For how long the store has been unreachable (0 while it answers).
    pub store_stale_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Values in the store that are not valid records (written by hand), skipped.
    pub store_invalid_values: Counter,
    /// Audited requests: accepted writes and refusals, by door and verdict.
    pub audit_events: Family<AuditLabels, Counter>,
    /// Reloads of the access file by outcome.
    pub acl_reloads: Family<OutcomeLabel, Counter>,
    /// The plugin host's limits and its shared (0.2.0) plugins.
    pub plugin_host: sextant_gateway::metrics::PluginHostMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `sextant_` prefix.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sextant");
        let m = Self {
            services: Gauge::default(),
            instances: Gauge::default(),
            configs: Gauge::default(),
            revision: Gauge::default(),
            leases: Gauge::default(),
            leases_expired: Counter::default(),
            writes: Family::default(),
            writes_rejected: Family::default(),
            plugin_version: Family::default(),
            plugin_calls: Family::default(),
            plugin_traps: Family::default(),
            plugin_deadline_hits: Family::default(),
            plugin_memory_hits: Family::default(),
            plugin_contract_violations: Family::default(),
            plugin_fallbacks: Family::default(),
            plugin_loaded_at: Family::default(),
            plugin_call_duration_seconds: Family::default(),
            plugin_failures: Gauge::default(),
            store_reachable: Gauge::default(),
            store_stale_seconds: Gauge::default(),
            store_invalid_values: Counter::default(),
            audit_events: Family::default(),
            acl_reloads: Family::default(),
            plugin_host: sextant_gateway::metrics::PluginHostMetrics::default(),
            registry: Registry::default(),
        };
        registry.register("services", "Services with at least one instance", m.services.clone());
        registry.register("instances", "Registered instances", m.instances.clone());
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
        registry.register("writes", "Accepted writes", m.writes.clone());
        registry.register("writes_rejected", "Refused writes", m.writes_rejected.clone());
        registry.register("plugin_version", "Version number of a slot's active plugin", m.plugin_version.clone());
        registry.register("plugin_calls", "Calls into a plugin version, all services", m.plugin_calls.clone());
        registry.register("plugin_traps", "Calls into a plugin version that trapped", m.plugin_traps.clone());
        registry.register(
            "plugin_deadline_hits",
            "Calls into a plugin version stopped at their deadline",
            m.plugin_deadline_hits.clone(),
        );
        registry.register(
            "plugin_memory_hits",
            "Calls into a plugin version stopped at the memory cap",
            m.plugin_memory_hits.clone(),
        );
        registry.register(
            "plugin_contract_violations",
            "Answers of a plugin version outside the contract, refused updates included",
            m.plugin_contract_violations.clone(),
        );
        registry.register(
            "plugin_fallbacks",
            "Calls the native default answered for a plugin version",
            m.plugin_fallbacks.clone(),
        );
        registry.register(
            "plugin_loaded_at",
            "When the active version was published (Unix s)",
            m.plugin_loaded_at.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Sampled pick times of a plugin version, all services, kept across swaps",
            m.plugin_call_duration_seconds.clone(),
        );
        registry.register(
            "plugin_failures",
            "Recent plugin loads or activations that failed",
            m.plugin_failures.clone(),
        );
        registry.register(
            "audit_events",
            "Accepted writes and refused requests (unauthenticated, forbidden, limited), by door",
            m.audit_events.clone(),
        );
        registry.register("acl_reloads", "Reloads of the access file, by outcome", m.acl_reloads.clone());
        m.plugin_host.register(&mut registry);
        Self { registry, ..m }
    }

    /// Brings the access counters (kept by `access`) into the exposition.
    pub fn set_access(&self, access: &sextant_quic::access::Access) {
        for (door, verdict, n) in access.audit_counts() {
            let labels = AuditLabels { door: door.as_str(), verdict: verdict.as_str() };
            Self::catch_up(&self.audit_events.get_or_create(&labels), n);
        }
        let (ok, failed) = access.reloads();
        Self::catch_up(&self.acl_reloads.get_or_create(&OutcomeLabel { outcome: "ok" }), ok);
        Self::catch_up(&self.acl_reloads.get_or_create(&OutcomeLabel { outcome: "failed" }), failed);
    }

    /// Replaces the plugin slot series with `slots`.
    pub fn set_slots(&self, slots: &[sextant_proto::SlotView]) {
        let gauges = [&self.plugin_version, &self.plugin_loaded_at];
        for f in gauges {
            f.clear();
        }
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for s in slots {
            let labels = SlotLabels {
                service: s.service.clone(),
                kind: s.kind.clone(),
                plugin: s.plugin.clone(),
                source: s.source.clone(),
                sha256: s.sha256.clone().unwrap_or_default(),
            };
            for (f, v) in gauges.iter().zip([s.version, s.loaded_at]) {
                f.get_or_create(&labels).set(g(v));
            }
        }
    }

    /// Brings the per-version totals (kept by the plugin manager, swaps included) into the
    /// exposition.
    pub fn set_totals(&self, totals: &[(sextant_plugin::VersionKey, sextant_plugin::Totals)]) {
        for (key, t) in totals {
            let labels =
                VersionLabels { kind: key.kind.clone(), plugin: key.plugin.clone(), sha256: key.sha256.clone() };
            let values = [
                (&self.plugin_calls, t.calls),
                (&self.plugin_traps, t.traps),
                (&self.plugin_deadline_hits, t.deadline_hits),
                (&self.plugin_memory_hits, t.memory_hits),
                (&self.plugin_contract_violations, t.contract_violations),
                (&self.plugin_fallbacks, t.fallbacks),
            ];
            for (family, total) in values {
                Self::catch_up(&family.get_or_create(&labels), total);
            }
            if t.call_times.count > 0 {
                self.plugin_call_duration_seconds.get_or_create(&labels).set(t.call_times);
            }
        }
    }

    /// Sets a counter that mirrors a monotonic total kept elsewhere.
    pub fn catch_up(counter: &Counter, total: u64) {
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
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
