//! The plugin metrics every host exports, written once: servers (`sextant_plugin_*`) and
//! gateways (`sextant_gateway_plugin_*`) register the same series under their own prefix.
//!
//! - per version (kind, name, source, sha256), the slots it is active in and when it was last
//!   published in one (`plugin_slots`, `plugin_loaded_at`): series that grow with the versions
//!   running, not with the services (per-service detail is the API's: `GET /v1/plugins`,
//!   `plugin list`, a gateway's status);
//! - per version (kind, name, sha256), over every service and across swaps, the calls, the
//!   faults by cause and the fallbacks (the plugin host's [`VersionCounts`]s), and the sampled
//!   call times as a histogram in seconds;
//! - the plugin host's limits, its shared (0.2.0) plugins and the lines their log budget
//!   dropped ([`PluginHostMetrics`]).

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use sextant_plugin::{CALL_TIME_BOUNDS_NS, CallTimes, VersionCounts, VersionKey};

/// Labels of the version active in some slots (a service's balancer, health policy or
/// scheduler).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    /// `balancer`, `health`, `scheduler`.
    pub kind: String,
    /// The active plugin (record name or built-in).
    pub plugin: String,
    /// `builtin` or `wasm`.
    pub source: String,
    /// sha256 of the active component, empty for built-ins.
    pub sha256: String,
}

/// Labels of a plugin version's counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// `balancer`, `health` or `scheduler`.
    pub kind: String,
    /// The plugin record's name, or the built-in's.
    pub plugin: String,
    /// sha256 of the component; empty for a built-in.
    pub sha256: String,
}

impl From<&VersionKey> for VersionLabels {
    fn from(key: &VersionKey) -> Self {
        Self { kind: key.kind.clone(), plugin: key.plugin.clone(), sha256: key.sha256.clone() }
    }
}

/// One slot's active version, as the gauges count it.
#[derive(Debug, Clone)]
pub struct ActiveSlot {
    /// The version's labels.
    pub labels: SlotLabels,
    /// When it was published in this slot (Unix seconds).
    pub loaded_at: u64,
}

/// The version totals' counters, in the order of
/// [`PluginCounts::values`](sextant_core::PluginCounts::values).
const TOTALS: [(&str, &str); 6] = [
    ("plugin_calls", "Calls into a plugin version, all services, kept across swaps"),
    ("plugin_traps", "Calls into a plugin version that trapped"),
    ("plugin_deadline_hits", "Calls into a plugin version stopped at their deadline"),
    ("plugin_memory_hits", "Calls into a plugin version stopped at the memory cap"),
    ("plugin_contract_violations", "Answers of a plugin version outside the contract, refused updates included"),
    ("plugin_fallbacks", "Calls the native default answered for a plugin version"),
];

/// Every plugin series of a host.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    slots: Family<SlotLabels, Gauge>,
    loaded_at: Family<SlotLabels, Gauge>,
    totals: [Family<VersionLabels, Counter>; 6],
    call_time: Family<VersionLabels, CallTimeHistogram>,
    /// The plugin host's limits, shared plugins and log drops.
    pub host: PluginHostMetrics,
}

impl PluginMetrics {
    /// Registers the series in `registry` (under its prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("plugin_slots", "Slots (service and kind) a plugin version is active in", self.slots.clone());
        registry.register(
            "plugin_loaded_at",
            "When a plugin version was last published in a slot (Unix s)",
            self.loaded_at.clone(),
        );
        for ((name, help), family) in TOTALS.into_iter().zip(&self.totals) {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "plugin_call_duration_seconds",
            "Sampled call times of a plugin version, all services, kept across swaps",
            self.call_time.clone(),
        );
        self.host.register(registry);
    }

    /// Replaces the slot gauges with the versions active in `slots`: one series per version,
    /// however many services run it.
    pub fn set_slots(&self, slots: impl IntoIterator<Item = ActiveSlot>) {
        let mut versions: std::collections::HashMap<SlotLabels, (u64, u64)> = std::collections::HashMap::new();
        for s in slots {
            let (count, newest) = versions.entry(s.labels).or_default();
            *count += 1;
            *newest = (*newest).max(s.loaded_at);
        }
        self.slots.clear();
        self.loaded_at.clear();
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (labels, (count, newest)) in versions {
            self.slots.get_or_create(&labels).set(g(count));
            self.loaded_at.get_or_create(&labels).set(g(newest));
        }
    }

    /// Brings the per-version totals (kept across swaps by their owner) into the exposition.
    pub fn set_totals<'a>(&self, totals: impl IntoIterator<Item = (&'a VersionKey, &'a VersionCounts)>) {
        for (key, t) in totals {
            let labels = VersionLabels::from(key);
            let values = t.counts.values();
            for (family, total) in self.totals.iter().zip(values) {
                catch_up(&family.get_or_create(&labels), total);
            }
            if t.call_times.count > 0 {
                self.call_time.get_or_create(&labels).set(t.call_times);
            }
        }
    }
}

/// A histogram whose samples are counted elsewhere (a plugin version's sampled call times,
/// kept by the plugin host across swaps): set from those counts, exported as a Prometheus
/// histogram in seconds.
#[derive(Debug, Default)]
pub struct CallTimeHistogram(parking_lot::Mutex<CallTimes>);

impl CallTimeHistogram {
    /// Takes the counts (they only grow).
    pub fn set(&self, times: CallTimes) {
        *self.0.lock() = times;
    }
}

impl TypedMetric for CallTimeHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for CallTimeHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let t = *self.0.lock();
        // The encoder takes counts per bucket (it adds them up); +Inf last.
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = CALL_TIME_BOUNDS_NS
            .iter()
            .zip(t.at_most)
            .map(|(&bound, at_most)| {
                let n = at_most.saturating_sub(below);
                below = at_most;
                (bound as f64 / 1e9, n)
            })
            .collect();
        buckets.push((f64::MAX, t.count.saturating_sub(below)));
        encoder.encode_histogram::<NoLabelSet>(t.sum_ns as f64 / 1e9, t.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Labels of a running 0.2.0 plugin (a component with one configuration).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SharedLabels {
    /// `balancer`, `health`, `scheduler`.
    pub kind: String,
    /// The plugin's name (the first record that started it).
    pub plugin: String,
    /// sha256 of the component.
    pub sha256: String,
}

/// The plugin host's limits and what its shared (0.2.0) plugins hold: exported by servers and
/// gateways alike, so an operator sees how close the host is to a limit before a load is
/// refused for it.
#[derive(Debug, Default)]
pub struct PluginHostMetrics {
    /// The pool's size (`--plugin-instances`).
    instances_limit: Gauge,
    /// Distinct 0.2.0 plugins allowed at once (`--max-plugins`).
    plugins_limit: Gauge,
    /// 0.2.0 plugins running.
    plugins: Gauge,
    /// Worker threads (instances per 0.2.0 plugin).
    workers: Gauge,
    /// Memory cap per instance, bytes.
    memory_limit: Gauge,
    instances: Family<SharedLabels, Gauge>,
    resources: Family<SharedLabels, Gauge>,
    counters: [Family<SharedLabels, Counter>; 5],
    /// Lines and bytes a plugin logged past its budget (dropped), by plugin name.
    log_dropped: [Family<PluginLabel, Counter>; 2],
}

/// A plugin's name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    /// The plugin's name.
    pub plugin: String,
}

/// Brings a counter up to a total kept elsewhere.
pub fn catch_up(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

impl PluginHostMetrics {
    /// Registers the series in `registry` (under its prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "plugin_instances_limit",
            "Plugin instances the pool holds (--plugin-instances)",
            self.instances_limit.clone(),
        );
        registry.register(
            "plugin_plugins_limit",
            "Distinct 0.2.0 plugins allowed at once (--max-plugins)",
            self.plugins_limit.clone(),
        );
        registry.register(
            "plugin_plugins_running",
            "0.2.0 plugins running (component and configuration)",
            self.plugins.clone(),
        );
        registry.register("plugin_workers", "Worker threads: instances per 0.2.0 plugin", self.workers.clone());
        registry.register(
            "plugin_memory_limit_bytes",
            "Linear memory cap per plugin instance",
            self.memory_limit.clone(),
        );
        registry.register("plugin_shared_instances", "Instances a 0.2.0 plugin runs now", self.instances.clone());
        registry.register(
            "plugin_resources",
            "Per-service resources alive in a 0.2.0 plugin's instances",
            self.resources.clone(),
        );
        let names = [
            ("plugin_resources_created", "Per-service resources a 0.2.0 plugin created"),
            ("plugin_resources_dropped_idle", "Resources dropped after their service made no call for the idle time"),
            ("plugin_instances_replaced", "0.2.0 plugin instances replaced after a trap, a deadline or the memory cap"),
            (
                "plugin_resources_lost",
                "Resources lost with a replaced instance (their services fell back on that call)",
            ),
            ("plugin_constructor_faults", "Resource constructors that trapped"),
        ];
        for ((name, help), family) in names.into_iter().zip(&self.counters) {
            registry.register(name, help, family.clone());
        }
        registry.register(
            "plugin_log_dropped_lines",
            "Lines a plugin wrote through host.log past its budget (--plugin-log-lines-per-sec), dropped",
            self.log_dropped[0].clone(),
        );
        registry.register(
            "plugin_log_dropped_bytes",
            "Bytes a plugin wrote through host.log past its budget (--plugin-log-bytes-per-sec), dropped",
            self.log_dropped[1].clone(),
        );
    }

    /// Reads the host's limits and its shared plugins.
    pub fn read(&self, host: &sextant_plugin::PluginHost) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let config = host.config();
        self.instances_limit.set(i64::from(config.max_instances));
        self.plugins_limit.set(i64::from(config.max_plugins));
        self.workers.set(g(config.workers as u64));
        self.memory_limit.set(g(config.memory_limit as u64));
        let shared = host.shared_status();
        self.plugins.set(g(shared.len() as u64));
        self.instances.clear();
        self.resources.clear();
        for s in shared {
            let labels = SharedLabels { kind: s.kind.to_string(), plugin: s.name.clone(), sha256: s.sha256.clone() };
            self.instances.get_or_create(&labels).set(g(s.instances));
            self.resources.get_or_create(&labels).set(g(s.resources));
            let totals = [s.created, s.dropped_idle, s.replaced, s.lost, s.constructor_faults];
            for (family, total) in self.counters.iter().zip(totals) {
                catch_up(&family.get_or_create(&labels), total);
            }
        }
        for d in host.log_drops() {
            let labels = PluginLabel { plugin: d.plugin };
            catch_up(&self.log_dropped[0].get_or_create(&labels), d.lines);
            catch_up(&self.log_dropped[1].get_or_create(&labels), d.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_series_grow_with_the_versions_running_not_with_the_services() {
        let metrics = PluginMetrics::default();
        let mut registry = Registry::with_prefix("sextant");
        metrics.register(&mut registry);
        let labels = |plugin: &str| SlotLabels {
            kind: "balancer".into(),
            plugin: plugin.into(),
            source: "builtin".into(),
            sha256: String::new(),
        };
        // 10,000 services on one built-in, two of them on a plugin loaded later.
        let slots = (0..10_000u64)
            .map(|n| ActiveSlot { labels: labels(if n < 2 { "p2c-wasm" } else { "peak-ewma" }), loaded_at: 1_000 + n });
        metrics.set_slots(slots);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sextant_plugin_slots") || l.starts_with("sextant_plugin_loaded_at"))
            .collect();
        assert_eq!(series.len(), 4, "{series:?}");
        assert!(series.iter().any(|l| l.contains(r#"plugin="peak-ewma""#)
            && l.starts_with("sextant_plugin_slots")
            && l.ends_with(" 9998")));
        assert!(series.iter().any(|l| l.contains(r#"plugin="p2c-wasm""#)
            && l.starts_with("sextant_plugin_loaded_at")
            && l.ends_with(" 1001")));
        // A version no slot runs any more leaves the exposition.
        metrics.set_slots([ActiveSlot { labels: labels("peak-ewma"), loaded_at: 5 }]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("p2c-wasm"), "{text}");
    }
}
