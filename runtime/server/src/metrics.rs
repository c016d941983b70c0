//! Prometheus metrics for `/metrics` (text exposition format, via `prometheus-client`).
//!
//! Sizes (services, instances, revision, leases) are gauges read from the registry at scrape
//! time; events (registrations, rejections, expiries) are counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of write counters: what was written.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `instance`, `service`, `config`, `lease`.
    pub kind: &'static str,
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
            registry: Registry::default(),
        };
        registry.register("services", "Services with at least one instance", m.services.clone());
        registry.register("instances", "Registered instances", m.instances.clone());
        registry.register("configs", "Config entries", m.configs.clone());
        registry.register("revision", "Current store revision", m.revision.clone());
        registry.register("leases", "Live leases", m.leases.clone());
        registry.register("leases_expired", "Leases expired without keepalive", m.leases_expired.clone());
        registry.register("writes", "Accepted writes", m.writes.clone());
        registry.register("writes_rejected", "Refused writes", m.writes_rejected.clone());
        Self { registry, ..m }
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
        out
    }
}
