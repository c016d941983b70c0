//! The built-in schedulers: they turn per-endpoint statistics into effective weights.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{EndpointStats, Env, Scheduler, Snapshot, parse_config};

/// Largest weight a scheduler hands back.
const MAX: f64 = 10_000.0;

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped to 0..=MAX first
fn weight(w: f64) -> u32 {
    w.clamp(0.0, MAX).round() as u32
}

/// Adaptive-weight configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AdaptiveConfig {
    /// The lowest share of its registered weight an endpoint keeps.
    min_factor: f64,
    /// How much of its weight an endpoint regains per clean interval.
    recover_step: f64,
    /// Error ratio above which the weight is cut.
    error_threshold: f64,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self { min_factor: 0.05, recover_step: 0.1, error_threshold: 0.05 }
    }
}

/// Adaptive weights: an endpoint that fails loses weight in proportion to its error ratio,
/// one that signals overload (429, 503 + Retry-After) is halved each interval (back-pressure,
/// not failure: it is never ejected for it), and a clean interval restores `recover_step`
/// of its weight.
#[derive(Debug)]
pub struct Adaptive {
    config: AdaptiveConfig,
    registered: Vec<(String, u32)>,
    factor: BTreeMap<String, f64>,
}

impl Adaptive {
    /// `{"min_factor": 0.05, "recover_step": 0.1, "error_threshold": 0.05}`.
    ///
    /// # Errors
    /// Unknown keys; values outside 0..=1.
    pub fn new(config: &str) -> Result<Self, String> {
        let config: AdaptiveConfig = parse_config(config)?;
        for (name, v) in [
            ("min_factor", config.min_factor),
            ("recover_step", config.recover_step),
            ("error_threshold", config.error_threshold),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be within 0..=1, not {v}"));
            }
        }
        Ok(Self { config, registered: Vec::new(), factor: BTreeMap::new() })
    }
}

impl Scheduler for Adaptive {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<(), String> {
        self.registered = snapshot.endpoints.iter().map(|e| (e.id.clone(), e.weight)).collect();
        self.factor.retain(|id, _| snapshot.endpoints.iter().any(|e| &e.id == id));
        Ok(())
    }

    fn schedule(&mut self, stats: &[EndpointStats], _env: &mut dyn Env) -> Vec<u32> {
        let c = &self.config;
        self.registered
            .iter()
            .zip(stats)
            .map(|((id, registered), s)| {
                let f = self.factor.entry(id.clone()).or_insert(1.0);
                #[allow(clippy::cast_precision_loss)]
                let error_ratio = if s.requests == 0 { 0.0 } else { s.errors as f64 / s.requests as f64 };
                if s.overloaded > 0 || s.retry_after_ms.is_some() {
                    *f *= 0.5;
                } else if error_ratio > c.error_threshold {
                    *f *= 1.0 - error_ratio;
                } else {
                    *f += c.recover_step;
                }
                *f = f.clamp(c.min_factor, 1.0);
                weight(f64::from(*registered) * *f).max(1)
            })
            .collect()
    }
}

/// Slow-start configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SlowStartConfig {
    window_ms: u64,
    min_share: f64,
    aggression: f64,
}

impl Default for SlowStartConfig {
    fn default() -> Self {
        Self { window_ms: 30_000, min_share: 0.1, aggression: 1.0 }
    }
}

/// Slow start (Envoy): a new endpoint's weight ramps from `min_share` to its registered
/// weight over `window_ms`, as `(age / window) ^ (1 / aggression)`.
#[derive(Debug)]
pub struct SlowStart {
    config: SlowStartConfig,
    registered: Vec<u32>,
}

impl SlowStart {
    /// `{"window_ms": 30000, "min_share": 0.1, "aggression": 1.0}`.
    ///
    /// # Errors
    /// Unknown keys; a window of 0, a share outside 0..=1, an aggression <= 0.
    pub fn new(config: &str) -> Result<Self, String> {
        let config: SlowStartConfig = parse_config(config)?;
        if config.window_ms == 0
            || !(0.0..=1.0).contains(&config.min_share)
            || config.aggression.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return Err("window_ms must be >= 1, min_share within 0..=1, aggression > 0".into());
        }
        Ok(Self { config, registered: Vec::new() })
    }
}

impl Scheduler for SlowStart {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<(), String> {
        self.registered = snapshot.endpoints.iter().map(|e| e.weight).collect();
        Ok(())
    }

    fn schedule(&mut self, stats: &[EndpointStats], _env: &mut dyn Env) -> Vec<u32> {
        let c = &self.config;
        self.registered
            .iter()
            .zip(stats)
            .map(|(&w, s)| {
                if s.age_ms >= c.window_ms {
                    return w;
                }
                #[allow(clippy::cast_precision_loss)]
                let progress = (s.age_ms as f64 / c.window_ms as f64).powf(1.0 / c.aggression);
                weight(f64::from(w) * progress.max(c.min_share)).max(1)
            })
            .collect()
    }
}

/// Gray-release configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrayConfig {
    /// Share of traffic per version label, e.g. `{"v1": 90, "v2": 10}`.
    split: BTreeMap<String, u32>,
}

/// Gray release: traffic is split between version labels in the configured proportions
/// (e.g. 90/10), each version's share spread over its endpoints by registered weight.
/// Endpoints of unlisted versions get nothing while any listed version has endpoints; a
/// listed version with no endpoint gives its share to the others.
#[derive(Debug)]
pub struct GraySplit {
    split: BTreeMap<String, u32>,
    endpoints: Vec<(String, u32)>,
}

impl GraySplit {
    /// `{"split": {"v1": 90, "v2": 10}}`.
    ///
    /// # Errors
    /// A missing or empty split, or one whose shares are all 0.
    pub fn new(config: &str) -> Result<Self, String> {
        let c: GrayConfig = parse_config(config)?;
        if c.split.values().all(|&s| s == 0) {
            return Err("split needs at least one version with a share above 0".into());
        }
        Ok(Self { split: c.split, endpoints: Vec::new() })
    }

    /// The effective weights for the current endpoints (statistics are not needed).
    fn weights(&self) -> Vec<u32> {
        let mut per_version: BTreeMap<&str, u64> = BTreeMap::new();
        for (v, w) in &self.endpoints {
            if self.split.contains_key(v) {
                *per_version.entry(v).or_default() += u64::from(*w);
            }
        }
        if per_version.is_empty() {
            return self.endpoints.iter().map(|(_, w)| *w).collect();
        }
        #[allow(clippy::cast_precision_loss)]
        let raw: Vec<f64> = self
            .endpoints
            .iter()
            .map(|(v, w)| match (self.split.get(v), per_version.get(v.as_str())) {
                (Some(&share), Some(&sum)) if sum > 0 => f64::from(share) * f64::from(*w) / sum as f64,
                _ => 0.0,
            })
            .collect();
        let max = raw.iter().copied().fold(0.0, f64::max);
        if max <= 0.0 {
            return vec![0; raw.len()];
        }
        raw.iter().map(|r| if *r > 0.0 { weight(r * MAX / max).max(1) } else { 0 }).collect()
    }
}

impl Scheduler for GraySplit {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<(), String> {
        self.endpoints = snapshot.endpoints.iter().map(|e| (e.version.clone(), e.weight)).collect();
        Ok(())
    }

    fn schedule(&mut self, _stats: &[EndpointStats], _env: &mut dyn Env) -> Vec<u32> {
        self.weights()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Endpoint, TestEnv};

    fn snap(versions: &[&str]) -> Snapshot {
        Snapshot {
            endpoints: versions
                .iter()
                .enumerate()
                .map(|(i, v)| Endpoint {
                    id: format!("e{i}"),
                    weight: 100,
                    version: (*v).into(),
                    ..Endpoint::default()
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn gray_split_90_10() {
        let mut env = TestEnv::default();
        let mut s = GraySplit::new(r#"{"split": {"v1": 90, "v2": 10}}"#).unwrap();
        s.update(&snap(&["v1", "v1", "v1", "v2", "v3"]), &mut env).unwrap();
        let w = s.schedule(&[EndpointStats::default(); 5], &mut env);
        let total: u32 = w.iter().sum();
        let v2_share = f64::from(w[3]) / f64::from(total);
        assert!((v2_share - 0.10).abs() < 0.001, "{w:?}");
        assert_eq!(w[4], 0, "unlisted versions get nothing");
        s.update(&snap(&["v1", "v3"]), &mut env).unwrap();
        assert_eq!(s.schedule(&[EndpointStats::default(); 2], &mut env), vec![10_000, 0], "v2's share goes to v1");
        assert!(GraySplit::new(r#"{"split": {}}"#).is_err());
    }

    #[test]
    fn adaptive_backs_off_on_overload_and_recovers() {
        let mut env = TestEnv::default();
        let mut s = Adaptive::new("{}").unwrap();
        s.update(&snap(&["", ""]), &mut env).unwrap();
        let busy = EndpointStats { requests: 100, overloaded: 30, ..EndpointStats::default() };
        let clean = EndpointStats { requests: 100, ..EndpointStats::default() };
        assert_eq!(s.schedule(&[busy, clean], &mut env), vec![50, 100]);
        assert_eq!(s.schedule(&[busy, clean], &mut env), vec![25, 100]);
        assert_eq!(s.schedule(&[clean, clean], &mut env), vec![35, 100]);
        let failing = EndpointStats { requests: 100, errors: 50, ..EndpointStats::default() };
        assert_eq!(s.schedule(&[clean, failing], &mut env), vec![45, 50]);
    }

    #[test]
    fn slow_start_ramps() {
        let mut env = TestEnv::default();
        let mut s = SlowStart::new(r#"{"window_ms": 1000, "min_share": 0.1}"#).unwrap();
        s.update(&snap(&["", "", ""]), &mut env).unwrap();
        let at = |ms| EndpointStats { age_ms: ms, ..EndpointStats::default() };
        assert_eq!(s.schedule(&[at(0), at(500), at(5000)], &mut env), vec![10, 50, 100]);
    }
}
