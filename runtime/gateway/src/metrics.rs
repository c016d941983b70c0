//! The gateway's Prometheus metrics (the Prometheus text format, via `prometheus-client`),
//! all under `sextant_gateway_`.
//!
//! Counted as requests flow: requests by route, service and status class (`2xx` … `5xx`),
//! their latency (a histogram in seconds, from the request to the response headers), upstream
//! attempts by service, endpoint and result, retries and rate-limited requests per service.
//! Read from the router at scrape time: per endpoint its health (`up`, `down`, `ejected`,
//! `open`, `out`: one series set to 1), whether its breaker is open, requests in flight, its
//! effective weight; per plugin version (kind, name, sha256) the calls, traps, deadline hits,
//! memory hits, contract violations and fallbacks, summed over every route and kept across
//! swaps (counters).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sextant_plugin::VersionKey;

use crate::Router;
use crate::plugin_metrics::{ActiveSlot, PluginMetrics, SlotLabels};
use crate::resilience::BreakerState;

/// The content type of [`GatewayMetrics::encode`]'s text (and of the server's `/metrics`):
/// the Prometheus text format, which every scraper and `promtool check metrics` read.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites `prometheus-client`'s OpenMetrics text as the Prometheus text format (0.0.4):
/// a counter family's `# HELP` and `# TYPE` name its `_total` samples, `# UNIT` and `# EOF`
/// lines go. Samples are unchanged.
#[must_use]
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let shown = if kind == "counter" { format!("{name}_total") } else { name.to_owned() };
            if let Some((_, text)) = help.take().filter(|(h, _)| *h == name) {
                let _ = writeln!(out, "# HELP {shown} {text}");
            }
            let _ = writeln!(out, "# TYPE {shown} {kind}");
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Labels of a request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matching rule: `[HOST]PREFIX` (`none`: no rule matched).
    pub route: String,
    /// `NS/GROUP/NAME` (empty when no rule matched).
    pub service: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub class: &'static str,
}

/// Labels of a latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The matching rule.
    pub route: String,
    /// The service.
    pub service: String,
}

/// Labels of an upstream attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    /// The service.
    pub service: String,
    /// `ip:port`.
    pub endpoint: String,
    /// `2xx` … `5xx`, `timeout`, `connect_error` or `error`.
    pub result: &'static str,
}

/// Labels of the attempts sent to one zone.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabels {
    /// The service.
    pub service: String,
    /// The endpoint's zone (empty: none).
    pub zone: String,
    /// `local` (the gateway's zone), `remote`, or `unzoned` (the gateway or the endpoint has
    /// no zone).
    pub locality: &'static str,
}

/// Labels of the backends' load reports read.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportLabels {
    /// The service.
    pub service: String,
    /// `ok`, or why the report was refused (`load_report::ReportError::reason`).
    pub result: &'static str,
}

/// Labels of one service.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// The service.
    pub service: String,
}

/// Labels of one endpoint.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The service.
    pub service: String,
    /// `ip:port`.
    pub endpoint: String,
}

/// Labels of a rollout's outcome series on a service.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    /// The service.
    pub service: String,
    /// `stable` or `candidate`.
    pub version: &'static str,
}

/// Labels of a rollout's requests by outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutOutcomeLabels {
    /// The service.
    pub service: String,
    /// `stable` or `candidate`.
    pub version: &'static str,
    /// `ok`, `5xx`, `4xx` or `transport`.
    pub outcome: &'static str,
}

/// Labels of an endpoint's health.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    /// The service.
    pub service: String,
    /// `ip:port`.
    pub endpoint: String,
    /// `up`, `down`, `ejected`, `open` or `out`.
    pub health: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct GatewayMetrics {
    plugins: PluginMetrics,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    attempts: Family<AttemptLabels, Counter>,
    zone_attempts: Family<ZoneLabels, Counter>,
    load_reports: Family<ReportLabels, Counter>,
    /// The gateway's zone, for the `locality` label.
    zone: ArcSwap<String>,
    attempt_duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    retries: Family<ServiceLabel, Counter>,
    rate_limited: Family<ServiceLabel, Counter>,
    health: Family<HealthLabels, Gauge>,
    breaker_open: Family<EndpointLabels, Gauge>,
    in_flight: Family<EndpointLabels, Gauge>,
    weight: Family<EndpointLabels, Gauge>,
    identity_conflict: Gauge,
    rollout_requests: Family<RolloutOutcomeLabels, Gauge>,
    rollout_p99: Family<RolloutLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    rollout_fallbacks: Family<RolloutLabels, Gauge>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One route's request counters (by status class) and latency histogram
/// ([`GatewayMetrics::route_series`]).
#[derive(Debug, Clone)]
#[must_use]
pub struct RouteSeries {
    requests: [Counter; 5],
    duration: Histogram,
}

impl RouteSeries {
    /// Counts a request answered with `status` after `elapsed`.
    pub fn record(&self, status: u16, elapsed: Duration) {
        self.requests[class_index(status)].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// `2xx` … `5xx` for an HTTP status.
#[must_use]
pub fn class(status: u16) -> &'static str {
    CLASSES[class_index(status)]
}

/// The status classes, in [`class_index`] order.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of a status's class in [`CLASSES`].
fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

impl GatewayMetrics {
    /// Marks (or clears) a registration taken over by another gateway of the same identity.
    pub fn set_identity_conflict(&self, conflict: bool) {
        self.identity_conflict.set(i64::from(conflict));
    }

    /// Registers every metric.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sextant_gateway");
        let m = Self {
            plugins: PluginMetrics::default(),
            registry: Registry::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            attempts: Family::default(),
            zone_attempts: Family::default(),
            load_reports: Family::default(),
            zone: ArcSwap::from_pointee(String::new()),
            attempt_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            retries: Family::default(),
            rate_limited: Family::default(),
            health: Family::default(),
            breaker_open: Family::default(),
            in_flight: Family::default(),
            weight: Family::default(),
            identity_conflict: Gauge::default(),
            rollout_requests: Family::default(),
            rollout_p99: Family::default(),
            rollout_fallbacks: Family::default(),
        };
        registry.register(
            "identity_conflict",
            "1 when another gateway took over this gateway's registration (same service and id); it stopped registering",
            m.identity_conflict.clone(),
        );
        registry.register("requests", "Requests by route, service and status class", m.requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time from a request to its response headers",
            m.duration.clone(),
        );
        registry.register("upstream_attempts", "Upstream attempts by endpoint and result", m.attempts.clone());
        registry.register(
            "load_reports",
            "Backend load reports (endpoint-load-metrics) read, by result: ok or why refused",
            m.load_reports.clone(),
        );
        registry.register(
            "zone_attempts",
            "Upstream attempts by the endpoint's zone, local when it is the gateway's",
            m.zone_attempts.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from an attempt to its endpoint's response headers (or its failure), by endpoint",
            m.attempt_duration.clone(),
        );
        registry.register("retries", "Attempts after the first", m.retries.clone());
        registry.register("rate_limited", "Requests refused by the service's rate limit", m.rate_limited.clone());
        registry.register("endpoint_health", "1 for the endpoint's current health state", m.health.clone());
        registry.register("endpoint_breaker_open", "1 while the endpoint's breaker is open", m.breaker_open.clone());
        registry.register("endpoint_in_flight", "Requests in flight to the endpoint", m.in_flight.clone());
        registry.register("endpoint_weight", "Effective weight in rotation (0: out)", m.weight.clone());
        registry.register(
            "rollout_step_requests",
            "While a rollout runs on the service: requests since its step began, by version (stable, candidate) and outcome",
            m.rollout_requests.clone(),
        );
        registry.register(
            "rollout_step_p99_seconds",
            "While a rollout runs on the service: p99 latency since its step began, by version",
            m.rollout_p99.clone(),
        );
        registry.register(
            "rollout_step_fallbacks",
            "While a rollout runs on the service: picks the native default answered since its step began, by version",
            m.rollout_fallbacks.clone(),
        );
        m.plugins.register(&mut registry);
        Self { registry, ..m }
    }

    /// Counts a request answered with `status` after `elapsed`.
    pub fn request(&self, route: &str, service: &str, status: u16, elapsed: Duration) {
        let labels = RequestLabels { route: route.to_owned(), service: service.to_owned(), class: class(status) };
        self.requests.get_or_create(&labels).inc();
        let labels = RouteLabels { route: route.to_owned(), service: service.to_owned() };
        self.duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// The series of one route, resolved once: a request then costs two atomic updates
    /// instead of two lookups by label (each hashing and copying its labels).
    pub fn route_series(&self, route: &str, service: &str) -> RouteSeries {
        let requests = CLASSES.map(|class| {
            let labels = RequestLabels { route: route.to_owned(), service: service.to_owned(), class };
            self.requests.get_or_create(&labels).clone()
        });
        let labels = RouteLabels { route: route.to_owned(), service: service.to_owned() };
        RouteSeries { requests, duration: self.duration.get_or_create(&labels).clone() }
    }

    /// The gateway's zone (`--zone`), which the attempts metric compares endpoints' zones
    /// with.
    pub fn set_zone(&self, zone: &str) {
        self.zone.store(Arc::new(zone.to_owned()));
    }

    /// Counts an upstream attempt at an endpoint of `zone` that ended with `result` after
    /// `elapsed`.
    pub fn attempt(&self, service: &str, endpoint: &str, zone: &str, result: &'static str, elapsed: Duration) {
        let here = self.zone.load();
        let locality = match (here.is_empty() || zone.is_empty(), here.as_str() == zone) {
            (true, _) => "unzoned",
            (false, true) => "local",
            (false, false) => "remote",
        };
        let labels = ZoneLabels { service: service.to_owned(), zone: zone.to_owned(), locality };
        self.zone_attempts.get_or_create(&labels).inc();
        let labels = AttemptLabels { service: service.to_owned(), endpoint: endpoint.to_owned(), result };
        self.attempts.get_or_create(&labels).inc();
        let labels = EndpointLabels { service: labels.service, endpoint: labels.endpoint };
        self.attempt_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Counts a backend load report of `service` read (`ok`) or refused (the reason).
    pub fn load_report(&self, service: &str, result: &'static str) {
        self.load_reports.get_or_create(&ReportLabels { service: service.to_owned(), result }).inc();
    }

    /// Counts a retry.
    pub fn retry(&self, service: &str) {
        self.retries.get_or_create(&ServiceLabel { service: service.to_owned() }).inc();
    }

    /// Counts a rate-limited request.
    pub fn rate_limited(&self, service: &str) {
        self.rate_limited.get_or_create(&ServiceLabel { service: service.to_owned() }).inc();
    }

    /// Reads the router's endpoints and plugin versions, then encodes everything.
    #[must_use]
    pub fn encode(&self, router: Option<&Router>) -> String {
        if let Some(router) = router {
            self.read(router);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        prometheus_text(&out)
    }

    fn read(&self, router: &Router) {
        for family in [&self.breaker_open, &self.in_flight, &self.weight] {
            family.clear();
        }
        self.rollout_requests.clear();
        self.rollout_p99.clear();
        self.rollout_fallbacks.clear();
        self.health.clear();
        self.plugins.host.read(router.host());
        let mut totals = router.host().retired();
        let mut active = Vec::new();
        for service in router.services() {
            if let Some((_, stable, candidate)) = router.trial_windows(&service) {
                self.read_rollout(&service.to_string(), [("stable", &stable), ("candidate", &candidate)]);
            }
            let Some(status) = router.status(&service) else { continue };
            for e in &status.endpoints {
                let labels = EndpointLabels { service: status.service.clone(), endpoint: e.address.clone() };
                let health =
                    HealthLabels { service: status.service.clone(), endpoint: e.address.clone(), health: e.health };
                self.health.get_or_create(&health).set(1);
                self.breaker_open.get_or_create(&labels).set(i64::from(matches!(e.breaker, BreakerState::Open)));
                self.in_flight.get_or_create(&labels).set(i64::from(e.in_flight));
                self.weight.get_or_create(&labels).set(i64::from(e.weight));
            }
            let slots = [
                (sextant_plugin::PluginKind::Balancer, Some(&status.balancer)),
                (sextant_plugin::PluginKind::Health, Some(&status.health)),
                (sextant_plugin::PluginKind::Scheduler, status.scheduler.as_ref()),
            ];
            for (kind, slot) in slots {
                let Some(slot) = slot else { continue };
                let a = &slot.active;
                let sha256 = a.sha256.clone().unwrap_or_default();
                active.push(ActiveSlot {
                    labels: SlotLabels {
                        kind: kind.to_string(),
                        plugin: a.name.clone(),
                        source: a.source.to_owned(),
                        sha256: sha256.clone(),
                    },
                    loaded_at: a.loaded_at,
                });
                let key = VersionKey { kind: kind.to_string(), plugin: a.name.clone(), sha256 };
                totals.entry(key).or_default().add(&a.counters);
            }
        }
        self.plugins.set_slots(active);
        self.plugins.set_totals(&totals);
    }
}

impl GatewayMetrics {
    fn read_rollout(&self, service: &str, windows: [(&'static str, &sextant_core::rollout::VersionWindow); 2]) {
        for (version, w) in windows {
            let errors = w.status_5xx + w.status_4xx + w.transport_failures;
            let outcomes = [
                ("ok", w.requests.saturating_sub(errors)),
                ("5xx", w.status_5xx),
                ("4xx", w.status_4xx),
                ("transport", w.transport_failures),
            ];
            for (outcome, n) in outcomes {
                let labels = RolloutOutcomeLabels { service: service.to_owned(), version, outcome };
                self.rollout_requests.get_or_create(&labels).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            let labels = RolloutLabels { service: service.to_owned(), version };
            if let Some(p99) = w.latency.quantile_ms(0.99) {
                self.rollout_p99.get_or_create(&labels).set(p99 / 1000.0);
            }
            self.rollout_fallbacks.get_or_create(&labels).set(i64::try_from(w.fallbacks).unwrap_or(i64::MAX));
        }
    }
}

/// Shared metrics, cheap to clone.
pub type SharedMetrics = Arc<GatewayMetrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_class_and_timed_in_seconds() {
        let m = GatewayMetrics::new();
        m.request("/api", "ns/g/a", 200, Duration::from_millis(3));
        m.request("/api", "ns/g/a", 204, Duration::from_millis(1));
        m.request("/api", "ns/g/a", 503, Duration::from_millis(2));
        m.attempt("ns/g/a", "127.0.0.1:9", "", "timeout", Duration::from_millis(3));
        m.set_zone("eu-1");
        m.attempt("ns/g/a", "127.0.0.1:10", "eu-1", "2xx", Duration::from_millis(3));
        m.attempt("ns/g/a", "127.0.0.1:11", "eu-2", "2xx", Duration::from_millis(3));
        m.retry("ns/g/a");
        let text = m.encode(None);
        let line = |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).map(str::to_owned);
        assert_eq!(
            line(r#"sextant_gateway_requests_total{route="/api",service="ns/g/a",class="2xx"}"#).as_deref(),
            Some(r#"sextant_gateway_requests_total{route="/api",service="ns/g/a",class="2xx"} 2"#)
        );
        assert!(line(r#"sextant_gateway_requests_total{route="/api",service="ns/g/a",class="5xx"} 1"#).is_some());
        assert!(line(r#"sextant_gateway_request_duration_seconds_count{route="/api",service="ns/g/a"} 3"#).is_some());
        assert!(
            line(r#"sextant_gateway_request_duration_seconds_bucket{le="0.002",route="/api",service="ns/g/a"} 2"#)
                .is_some(),
            "1 ms and 2 ms fall in the 2 ms bucket:\n{text}"
        );
        assert!(
            line(
                r#"sextant_gateway_upstream_attempts_total{service="ns/g/a",endpoint="127.0.0.1:9",result="timeout"} 1"#
            )
            .is_some()
        );
        assert!(
            line(r#"sextant_gateway_upstream_duration_seconds_bucket{le="0.004",service="ns/g/a",endpoint="127.0.0.1:9"} 1"#)
                .is_some(),
            "{text}"
        );
        assert!(
            line(r#"sextant_gateway_upstream_duration_seconds_bucket{le="0.002",service="ns/g/a",endpoint="127.0.0.1:9"} 0"#)
                .is_some(),
            "{text}"
        );
        assert!(line(r#"sextant_gateway_retries_total{service="ns/g/a"} 1"#).is_some());
        for zone in [
            r#"zone="",locality="unzoned"} 1"#,
            r#"zone="eu-1",locality="local"} 1"#,
            r#"zone="eu-2",locality="remote"} 1"#,
        ] {
            let want = format!(r#"sextant_gateway_zone_attempts_total{{service="ns/g/a",{zone}"#);
            assert!(line(&want).is_some(), "{want}\n{text}");
        }
        assert!(text.contains("# TYPE sextant_gateway_requests_total counter\n"), "{text}");
        assert!(text.contains("# TYPE sextant_gateway_request_duration_seconds histogram\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert_eq!(class(101), "1xx");
        assert_eq!(class(302), "3xx");
        assert_eq!(class(404), "4xx");
    }
}
