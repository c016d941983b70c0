//! What a simulated backend reports about its own load (ORCA's `endpoint-load-metrics`), in
//! the simulation and in live mode alike: its utilization (busy workers' share) and answers
//! per second, averaged over the last half second, and by sextant's convention as named
//! metrics `rif` (requests queued or served), `latency_ms` and `service_ms` (service alone,
//! a moving average). `latency_ms` is what Prequal's servers report: the latency a request
//! arriving now can expect, estimated from the requests that recently arrived when as many
//! were in flight (a moving average per number in flight).

use sextant_gateway::load_report::LoadReport;

/// How fast the reported utilization and rate forget (ns): ORCA figures are recent
/// averages, not instants.
const TAU_NS: f64 = 500e6;
/// Latency is kept per number of requests in flight at arrival up to this many (more count
/// as this many).
const RIF_LEVELS: usize = 64;

/// One backend's load as it reports it. Times are nanoseconds on the caller's clock.
#[derive(Debug, Clone, Default)]
pub struct ReportedLoad {
    utilization: f64,
    rate: f64,
    stamp: u64,
    /// Time at the backend (ms, moving average) of requests that arrived with `i` in flight.
    latency_by_rif: Vec<f64>,
    service_ms: f64,
}

impl ReportedLoad {
    /// Brings the averages to `t`; `busy` of `workers` were busy since the last call (call
    /// it before `busy` changes).
    pub fn touch(&mut self, t: u64, busy: u32, workers: u32) {
        #[allow(clippy::cast_precision_loss)]
        let w = (-(t.saturating_sub(self.stamp) as f64) / TAU_NS).exp();
        self.utilization = self.utilization * w + f64::from(busy) / f64::from(workers.max(1)) * (1.0 - w);
        self.rate *= w;
        self.stamp = self.stamp.max(t);
    }

    /// A request that arrived with `rif` in flight ends at `t` after `latency_ms` at the
    /// backend, `service_ms` of it served; `busy` of `workers` were busy until now.
    pub fn finished(&mut self, t: u64, busy: u32, workers: u32, rif: u32, latency_ms: f64, service_ms: f64) {
        self.touch(t, busy, workers);
        self.rate += 1e9 / TAU_NS;
        let average = |old: f64, new: f64| if old == 0.0 { new } else { 0.8 * old + 0.2 * new };
        if self.latency_by_rif.is_empty() {
            self.latency_by_rif = vec![0.0; RIF_LEVELS];
        }
        let level = (rif as usize).min(RIF_LEVELS - 1);
        self.latency_by_rif[level] = average(self.latency_by_rif[level], latency_ms);
        self.service_ms = average(self.service_ms, service_ms);
    }

    /// The latency a request arriving with `rif` in flight can expect: what the nearest level
    /// measured (0 before anything finished).
    fn expected_latency(&self, rif: u32) -> f64 {
        let level = (rif as usize).min(RIF_LEVELS - 1);
        (0..RIF_LEVELS)
            .flat_map(|d| [level.checked_sub(d), Some(level + d)])
            .flatten()
            .find_map(|l| self.latency_by_rif.get(l).copied().filter(|v| *v > 0.0))
            .unwrap_or(0.0)
    }

    /// The report at `t`, with `busy` of `workers` busy and `rif` requests queued or served.
    #[must_use]
    pub fn report(&mut self, t: u64, busy: u32, workers: u32, rif: u32) -> LoadReport {
        self.touch(t, busy, workers);
        let mut report =
            LoadReport { cpu_utilization: self.utilization, rps_fractional: self.rate, ..LoadReport::default() };
        report.named_metrics.insert("rif".into(), f64::from(rif));
        report.named_metrics.insert("latency_ms".into(), self.expected_latency(rif));
        report.named_metrics.insert("service_ms".into(), self.service_ms);
        report
    }

    /// The report in the header's text form.
    #[must_use]
    pub fn header(&mut self, t: u64, busy: u32, workers: u32, rif: u32) -> String {
        let r = self.report(t, busy, workers, rif);
        let mut text = format!("TEXT cpu_utilization={:.4}, rps_fractional={:.2}", r.cpu_utilization, r.rps_fractional);
        for (name, value) in &r.named_metrics {
            text.push_str(&format!(", named_metrics.{name}={value:.4}"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_and_rate_follow_the_work_and_the_header_reads_back() {
        let mut load = ReportedLoad::default();
        // Two of four workers busy for 5 s, finishing 100 requests a second; those that
        // arrived with 3 in flight spent 12 ms, those with 8 in flight 30 ms.
        for k in 1..=500u64 {
            let (rif, latency) = if k % 2 == 0 { (3, 12.0) } else { (8, 30.0) };
            load.finished(k * 10_000_000, 2, 4, rif, latency, 10.0);
        }
        let r = load.report(5_000_000_000, 2, 4, 3);
        assert!((r.cpu_utilization - 0.5).abs() < 0.01, "{r:?}");
        assert!((r.rps_fractional - 100.0).abs() < 5.0, "{r:?}");
        assert_eq!(r.named_metrics.get("rif"), Some(&3.0));
        let parsed = sextant_gateway::load_report::parse(&load.header(5_000_000_000, 2, 4, 3)).unwrap();
        assert!((parsed.cpu_utilization - r.cpu_utilization).abs() < 1e-3);
        assert!((parsed.named_metrics["latency_ms"] - 12.0).abs() < 1e-3, "the latency at 3 in flight");
        assert!((load.report(5_000_000_000, 2, 4, 9).named_metrics["latency_ms"] - 30.0).abs() < 1e-3, "nearest: 8");
        assert!((parsed.named_metrics["service_ms"] - 10.0).abs() < 1e-3);
        // Idle for a second: the utilization falls to about e^-2 of what it was.
        let idle = load.report(6_000_000_000, 0, 4, 0);
        assert!(idle.cpu_utilization < 0.1, "{idle:?}");
    }
}
