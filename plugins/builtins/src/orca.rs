//! `orca-wrr`: weighted round robin on weights computed from the backends' own load reports,
//! gRPC's `weighted_round_robin` policy (gRFC A58) as sextant runs it.
//!
//! Each endpoint's weight is `rps / (utilization + eps / rps × error_utilization_penalty)`
//! from its last ORCA report (`load.report`), recomputed every `weight_update_period_ms`.
//! A report with no requests or no utilization gives no weight. An endpoint's weight counts
//! only after it has reported for `blackout_period_ms` (a fresh one's first figures are
//! noise), and stops counting when its last report is older than
//! `weight_expiration_period_ms`; an endpoint without a weight that counts gets the mean of
//! the others (all of them: plain round robin). Picks are earliest deadline first over the
//! weights, smooth like a round robin.
//!
//! Guards against a backend that lies: a weight is held within `max_weight_ratio` (10) × the
//! median weight and at least 1% of it, so a backend claiming almost no utilization takes at
//! most ten typical shares, never a stampede; a report claiming zero utilization gives no
//! weight at all (the mean). gRPC's static stride scheduler clamps to the mean, which one
//! liar's weight drags up with it: sextant clamps to the median. The host bounds what a
//! report can hold before it gets here.
//!
//! Deviations from gRPC: registered weights are ignored (as gRPC does), and the weights are
//! recomputed by the first pick after the period ends (a balancer has no timer of its own).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{Balancer, EdfWeights, Env, Mode, Request, Snapshot, parse_config};

/// `orca-wrr` configuration (gRPC's names and defaults).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct OrcaWrrConfig {
    /// How long an endpoint reports before its weight counts.
    blackout_period_ms: u64,
    /// A weight whose last report is older than this no longer counts.
    weight_expiration_period_ms: u64,
    /// How often weights are recomputed.
    weight_update_period_ms: u64,
    /// How much errors count against a weight (`eps / rps` is added to the utilization
    /// times this).
    error_utilization_penalty: f64,
    /// The most an endpoint's weight may be, as a multiple of the mean.
    max_weight_ratio: f64,
}

impl Default for OrcaWrrConfig {
    fn default() -> Self {
        Self {
            blackout_period_ms: 10_000,
            weight_expiration_period_ms: 180_000,
            weight_update_period_ms: 1_000,
            error_utilization_penalty: 1.0,
            max_weight_ratio: 10.0,
        }
    }
}

/// What `orca-wrr` remembers of one endpoint (by instance id, across snapshots).
#[derive(Debug, Clone, Copy, Default)]
struct Reported {
    /// When the endpoint's current run of reports with a weight began (ns); none when it has
    /// none.
    since: Option<u64>,
    /// When its last report with a weight arrived (ns).
    last: u64,
    /// The weight that report gave.
    weight: f64,
}

/// gRPC's weighted round robin on backends' load reports.
#[derive(Debug)]
pub struct OrcaWrr {
    config: OrcaWrrConfig,
    ids: Vec<String>,
    reported: BTreeMap<String, Reported>,
    edf: EdfWeights,
    /// When the weights were last computed (ns on the host's clock), none before the first.
    computed: Option<u64>,
    /// The weights in force, in snapshot order (for tests and logs).
    weights: Vec<f64>,
}

/// The weight a report gives: `rps / (utilization + eps / rps × penalty)`, 0 when it has no
/// requests or no utilization.
#[must_use]
pub fn orca_weight(utilization: f64, rps: f64, eps: f64, penalty: f64) -> f64 {
    if rps <= 0.0 || utilization <= 0.0 {
        return 0.0;
    }
    let u = utilization + eps / rps * penalty;
    if u > 0.0 { rps / u } else { 0.0 }
}

impl OrcaWrr {
    /// `{"blackout_period_ms": 10000, "weight_expiration_period_ms": 180000,
    /// "weight_update_period_ms": 1000, "error_utilization_penalty": 1.0,
    /// "max_weight_ratio": 10}`.
    ///
    /// # Errors
    /// Unknown keys; an update period of 0; a negative or non-finite penalty; a ratio below 1.
    pub fn new(config: &str) -> Result<Self, String> {
        let config: OrcaWrrConfig = parse_config(config)?;
        if config.weight_update_period_ms == 0 {
            return Err("weight_update_period_ms must be at least 1".into());
        }
        if !config.error_utilization_penalty.is_finite() || config.error_utilization_penalty < 0.0 {
            return Err(format!(
                "error_utilization_penalty must be a non-negative number, not {}",
                config.error_utilization_penalty
            ));
        }
        if !config.max_weight_ratio.is_finite() || config.max_weight_ratio < 1.0 {
            return Err(format!("max_weight_ratio must be at least 1, not {}", config.max_weight_ratio));
        }
        Ok(Self {
            config,
            ids: Vec::new(),
            reported: BTreeMap::new(),
            edf: EdfWeights::default(),
            computed: None,
            weights: Vec::new(),
        })
    }

    /// The weights in force, in snapshot order.
    #[must_use]
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Reads every endpoint's report and recomputes the weights at `now` (ns).
    fn compute(&mut self, env: &mut dyn Env, now: u64) {
        let ms = 1_000_000u64;
        let previous = self.computed;
        let mut weights = Vec::with_capacity(self.ids.len());
        for (i, id) in self.ids.iter().enumerate() {
            let r = self.reported.entry(id.clone()).or_default();
            if let Some(report) = env.report(crate::index(i)) {
                let arrived = now.saturating_sub(report.age_ms.saturating_mul(ms));
                // A report that arrived since the last computation is new.
                let new = previous.is_none_or(|p| arrived + ms > p);
                let w = orca_weight(report.utilization, report.rps, report.eps, self.config.error_utilization_penalty);
                if new && w > 0.0 {
                    r.since.get_or_insert(arrived);
                    r.last = arrived;
                    r.weight = w;
                }
            }
            let expired = now.saturating_sub(r.last) >= self.config.weight_expiration_period_ms * ms;
            if expired {
                r.since = None;
            }
            let counts = r.since.is_some_and(|s| now.saturating_sub(s) >= self.config.blackout_period_ms * ms);
            weights.push(if counts { r.weight } else { 0.0 });
        }
        // Clamped around the median of the weights that count (not the mean, which one
        // liar's huge weight would drag up with it); an endpoint without one gets the mean.
        let mut counted: Vec<f64> = weights.iter().copied().filter(|w| *w > 0.0).collect();
        counted.sort_by(f64::total_cmp);
        let median = counted.get(counted.len() / 2).copied().unwrap_or(1.0);
        let (low, high) = (median * 0.01, median * self.config.max_weight_ratio);
        let clamped: Vec<f64> = counted.iter().map(|w| w.clamp(low, high)).collect();
        #[allow(clippy::cast_precision_loss)]
        let mean = if clamped.is_empty() { 1.0 } else { clamped.iter().sum::<f64>() / clamped.len() as f64 };
        for w in &mut weights {
            *w = if *w > 0.0 { w.clamp(low, high) } else { mean };
        }
        let top = weights.iter().copied().fold(0.0, f64::max);
        let scaled: Vec<u32> = weights
            .iter()
            .map(|w| {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // within 1..=1e6
                let s = (w / top * 1e6).round().max(1.0) as u32;
                s
            })
            .collect();
        self.edf = EdfWeights::new(&scaled);
        self.weights = weights;
        self.computed = Some(now);
    }
}

impl Balancer for OrcaWrr {
    fn update(&mut self, snapshot: &Snapshot, env: &mut dyn Env) -> Result<Mode, String> {
        self.ids = snapshot.endpoints.iter().map(|e| e.id.clone()).collect();
        let ids = &self.ids;
        self.reported.retain(|id, _| ids.contains(id));
        let now = env.now();
        self.compute(env, now);
        Ok(Mode::PerRequest)
    }

    fn pick(&mut self, _request: &Request, env: &mut dyn Env) -> Option<u32> {
        if self.ids.is_empty() {
            return None;
        }
        let now = env.now();
        if self.computed.is_none_or(|c| now.saturating_sub(c) >= self.config.weight_update_period_ms * 1_000_000) {
            self.compute(env, now);
        }
        self.edf.pick()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestEnv;
    use crate::report::BackendReport;
    use crate::testing::snapshot;

    fn report(utilization: f64, rps: f64) -> Option<BackendReport> {
        Some(BackendReport { utilization, rps, ..BackendReport::default() })
    }

    fn shares(b: &mut OrcaWrr, env: &mut TestEnv, n: usize, picks: usize) -> Vec<f64> {
        let mut counts = vec![0usize; n];
        for _ in 0..picks {
            counts[b.pick(&Request::default(), env).unwrap() as usize] += 1;
        }
        #[allow(clippy::cast_precision_loss)]
        counts.iter().map(|&c| c as f64 / picks as f64).collect()
    }

    #[test]
    fn weights_follow_reported_capacity_after_the_blackout_and_expire() {
        let mut b = OrcaWrr::new(r#"{"blackout_period_ms": 1000, "weight_expiration_period_ms": 5000}"#).unwrap();
        let mut env = TestEnv::seeded(1);
        // Same rps, utilization 0.8 vs 0.4 vs 0.2: capacities 1 : 2 : 4.
        env.reports = vec![report(0.8, 100.0), report(0.4, 100.0), report(0.2, 100.0)];
        b.update(&snapshot(3), &mut env).unwrap();
        let s = shares(&mut b, &mut env, 3, 700);
        assert!(s.iter().all(|x| (x - 1.0 / 3.0).abs() < 0.01), "round robin in the blackout: {s:?}");
        env.now = 1_500_000_000;
        let s = shares(&mut b, &mut env, 3, 700);
        for (got, want) in s.iter().zip([1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0]) {
            assert!((got - want).abs() < 0.01, "shares follow capacity: {s:?}");
        }
        // The reports stop (they age): past the expiration every weight is the mean again.
        for r in env.reports.iter_mut().flatten() {
            r.age_ms = 6_000;
        }
        env.now = 7_500_000_000;
        let s = shares(&mut b, &mut env, 3, 700);
        assert!(s.iter().all(|x| (x - 1.0 / 3.0).abs() < 0.01), "expired weights: {s:?}");
    }

    #[test]
    fn a_backend_claiming_no_load_cannot_take_the_traffic() {
        let mut b = OrcaWrr::new(r#"{"blackout_period_ms": 0}"#).unwrap();
        let mut env = TestEnv::seeded(2);
        // One claims a utilization of 0.000001 at 100 rps (a weight of 1e8), three report
        // honestly (200 each), one claims none at all.
        env.reports = vec![report(1e-6, 100.0), report(0.5, 100.0), report(0.5, 100.0), report(0.5, 100.0)];
        env.reports.push(report(0.0, 100.0)); // zero utilization: no weight, the mean
        b.update(&snapshot(5), &mut env).unwrap();
        let w = b.weights().to_vec();
        assert!((w[0] - 10.0 * w[1]).abs() < 1e-6, "the liar's weight is ten times the median: {w:?}");
        let s = shares(&mut b, &mut env, 5, 10_000);
        // 2000 of 200 + 200 + 200 + 2000 + the mean (650).
        assert!((s[0] - 2000.0 / 3250.0).abs() < 0.01, "the liar's share is capped: {s:?}");
        assert!(s[1..].iter().all(|x| *x > 0.05), "the others still serve: {s:?}");
        assert!((s[4] - 650.0 / 3250.0).abs() < 0.01, "a zero-utilization report counts as the mean: {s:?}");
        assert!(OrcaWrr::new(r#"{"weight_update_period_ms": 0}"#).is_err());
        assert!(OrcaWrr::new(r#"{"max_weight_ratio": 0.5}"#).is_err());
        assert!(OrcaWrr::new(r#"{"error_utilization_penalty": -1}"#).is_err());
        assert!(OrcaWrr::new(r#"{"bogus": 1}"#).is_err());
    }

    #[test]
    fn errors_count_against_a_weight() {
        assert!((orca_weight(0.5, 100.0, 0.0, 1.0) - 200.0).abs() < 1e-9);
        assert!((orca_weight(0.5, 100.0, 50.0, 1.0) - 100.0).abs() < 1e-9, "half the requests fail: half the weight");
        assert!(orca_weight(0.5, 0.0, 0.0, 1.0).abs() < 1e-12 && orca_weight(0.0, 10.0, 0.0, 1.0).abs() < 1e-12);
    }
}
