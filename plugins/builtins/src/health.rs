//! The built-in health policies. State is kept per endpoint id, so it survives snapshots
//! that reorder or add endpoints.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{Env, HealthPolicy, Outcome, ProbeResult, Snapshot, Status, Verdict, parse_config};

/// Consecutive-threshold configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ConsecutiveConfig {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    /// HTTP statuses that count as success; empty: 200..=399.
    expected_status: Vec<u16>,
    /// When set, an HTTP probe succeeds only if the body excerpt contains this text.
    body_contains: Option<String>,
}

impl Default for ConsecutiveConfig {
    fn default() -> Self {
        Self { healthy_threshold: 2, unhealthy_threshold: 3, expected_status: Vec::new(), body_contains: None }
    }
}

#[derive(Debug, Clone, Copy)]
struct Streak {
    healthy: bool,
    ok: u32,
    failed: u32,
}

/// Active health checking by consecutive thresholds (Envoy's `healthy_threshold` /
/// `unhealthy_threshold`): an endpoint turns unhealthy after N failed probes in a row and
/// healthy again after M successful ones. Probes may assert on status codes and on the body.
#[derive(Debug)]
pub struct Consecutive {
    config: ConsecutiveConfig,
    ids: Vec<String>,
    state: BTreeMap<String, Streak>,
}

impl Consecutive {
    /// `{"healthy_threshold": 2, "unhealthy_threshold": 3, "expected_status": [], "body_contains": null}`.
    ///
    /// # Errors
    /// Unknown keys; thresholds of 0.
    pub fn new(config: &str) -> Result<Self, String> {
        let config: ConsecutiveConfig = parse_config(config)?;
        if config.healthy_threshold == 0 || config.unhealthy_threshold == 0 {
            return Err("thresholds must be at least 1".into());
        }
        Ok(Self { config, ids: Vec::new(), state: BTreeMap::new() })
    }

    fn success(&self, result: &ProbeResult) -> bool {
        let status_ok = match (&result.status, self.config.expected_status.is_empty()) {
            (Status::Http(code), false) => self.config.expected_status.contains(code),
            (status, _) => status.is_success(),
        };
        let body_ok = match (&self.config.body_contains, &result.status) {
            (Some(needle), Status::Http(_)) => result.body.windows(needle.len().max(1)).any(|w| w == needle.as_bytes()),
            _ => true,
        };
        status_ok && body_ok
    }
}

impl HealthPolicy for Consecutive {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<(), String> {
        self.ids = snapshot.endpoints.iter().map(|e| e.id.clone()).collect();
        let mut state = BTreeMap::new();
        for e in &snapshot.endpoints {
            let s = self.state.get(&e.id).copied().unwrap_or(Streak { healthy: e.healthy, ok: 0, failed: 0 });
            state.insert(e.id.clone(), s);
        }
        self.state = state;
        Ok(())
    }

    fn on_probe(&mut self, result: &ProbeResult, _env: &mut dyn Env) -> Verdict {
        let success = self.success(result);
        let Some(s) = self.ids.get(result.endpoint as usize).and_then(|id| self.state.get_mut(id)) else {
            return Verdict::Unchanged;
        };
        if success {
            s.ok += 1;
            s.failed = 0;
            if !s.healthy && s.ok >= self.config.healthy_threshold {
                s.healthy = true;
                return Verdict::Healthy;
            }
        } else {
            s.failed += 1;
            s.ok = 0;
            if s.healthy && s.failed >= self.config.unhealthy_threshold {
                s.healthy = false;
                return Verdict::Unhealthy;
            }
        }
        Verdict::Unchanged
    }

    fn on_outcome(&mut self, _outcome: &Outcome, _env: &mut dyn Env) -> Verdict {
        Verdict::Unchanged
    }
}

/// Outlier-detection configuration (Envoy's names).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct OutlierConfig {
    /// Consecutive 5xx responses that eject (0: off).
    consecutive_5xx: u32,
    /// Consecutive gateway errors (502/503/504, timeouts, resets) that eject (0: off).
    consecutive_gateway_errors: u32,
    /// Eject when the success rate over a window falls below this (0: off).
    min_success_rate: f64,
    /// Requests per success-rate window.
    success_rate_window: u32,
    /// First ejection time; the n-th ejection lasts n times as long.
    base_ejection_ms: u64,
    /// Longest ejection.
    max_ejection_ms: u64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 5,
            min_success_rate: 0.0,
            success_rate_window: 100,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    c5xx: u32,
    gateway: u32,
    window: u32,
    ok: u32,
    ejections: u64,
}

/// Passive outlier detection on real traffic: consecutive 5xx, consecutive gateway errors
/// and a success-rate floor eject an endpoint for a time that grows with each repeat
/// (base × n, capped). The host caps the ejected share.
#[derive(Debug)]
pub struct OutlierDetection {
    config: OutlierConfig,
    ids: Vec<String>,
    state: BTreeMap<String, Counters>,
}

impl OutlierDetection {
    /// See the fields of the configuration; `{}` gives Envoy's defaults.
    ///
    /// # Errors
    /// Unknown keys; a success rate outside 0..=1; a window of 0; base > max.
    pub fn new(config: &str) -> Result<Self, String> {
        let config: OutlierConfig = parse_config(config)?;
        if !(0.0..=1.0).contains(&config.min_success_rate) {
            return Err(format!("min_success_rate must be within 0..=1, not {}", config.min_success_rate));
        }
        if config.success_rate_window == 0 {
            return Err("success_rate_window must be at least 1".into());
        }
        if config.base_ejection_ms == 0 || config.base_ejection_ms > config.max_ejection_ms {
            return Err("base_ejection_ms must be at least 1 and at most max_ejection_ms".into());
        }
        Ok(Self { config, ids: Vec::new(), state: BTreeMap::new() })
    }
}

impl HealthPolicy for OutlierDetection {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<(), String> {
        self.ids = snapshot.endpoints.iter().map(|e| e.id.clone()).collect();
        let mut state = BTreeMap::new();
        for id in &self.ids {
            state.insert(id.clone(), self.state.get(id).copied().unwrap_or_default());
        }
        self.state = state;
        Ok(())
    }

    fn on_probe(&mut self, _result: &ProbeResult, _env: &mut dyn Env) -> Verdict {
        Verdict::Unchanged
    }

    fn on_outcome(&mut self, outcome: &Outcome, _env: &mut dyn Env) -> Verdict {
        let cfg = &self.config;
        let Some(c) = self.ids.get(outcome.endpoint as usize).and_then(|id| self.state.get_mut(id)) else {
            return Verdict::Unchanged;
        };
        let is_5xx = matches!(outcome.status, Status::Http(500..=599));
        c.c5xx = if is_5xx { c.c5xx + 1 } else { 0 };
        c.gateway = if outcome.status.is_gateway_error() { c.gateway + 1 } else { 0 };
        c.window += 1;
        if outcome.status.is_success() || matches!(outcome.status, Status::Http(400..=499)) {
            c.ok += 1;
        }
        let mut eject = (cfg.consecutive_5xx > 0 && c.c5xx >= cfg.consecutive_5xx)
            || (cfg.consecutive_gateway_errors > 0 && c.gateway >= cfg.consecutive_gateway_errors);
        if c.window >= cfg.success_rate_window {
            if cfg.min_success_rate > 0.0 && f64::from(c.ok) / f64::from(c.window) < cfg.min_success_rate {
                eject = true;
            }
            c.window = 0;
            c.ok = 0;
        }
        if !eject {
            return Verdict::Unchanged;
        }
        c.ejections += 1;
        let ejections = c.ejections;
        *c = Counters { ejections, ..Counters::default() };
        Verdict::Eject(cfg.base_ejection_ms.saturating_mul(ejections).min(cfg.max_ejection_ms))
    }
}

/// `standard` configuration: the two halves, each with its own defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StandardConfig {
    active: Option<serde_json::Value>,
    passive: Option<serde_json::Value>,
}

/// Active and passive health checking together, what a gateway runs by default: probes go to
/// [`Consecutive`] (thresholds, status and body assertions), outcomes of real traffic to
/// [`OutlierDetection`] (ejections that grow with each repeat).
#[derive(Debug)]
pub struct Standard {
    active: Consecutive,
    passive: OutlierDetection,
}

impl Standard {
    /// `{"active": {consecutive's configuration}, "passive": {outlier's configuration}}`,
    /// both optional.
    ///
    /// # Errors
    /// Unknown keys; what either half rejects.
    pub fn new(config: &str) -> Result<Self, String> {
        let config: StandardConfig = parse_config(config)?;
        let text = |v: Option<serde_json::Value>| v.map_or_else(String::new, |v| v.to_string());
        Ok(Self {
            active: Consecutive::new(&text(config.active)).map_err(|e| format!("active: {e}"))?,
            passive: OutlierDetection::new(&text(config.passive)).map_err(|e| format!("passive: {e}"))?,
        })
    }
}

impl HealthPolicy for Standard {
    fn update(&mut self, snapshot: &Snapshot, env: &mut dyn Env) -> Result<(), String> {
        self.active.update(snapshot, env)?;
        self.passive.update(snapshot, env)
    }

    fn on_probe(&mut self, result: &ProbeResult, env: &mut dyn Env) -> Verdict {
        self.active.on_probe(result, env)
    }

    fn on_outcome(&mut self, outcome: &Outcome, env: &mut dyn Env) -> Verdict {
        self.passive.on_outcome(outcome, env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Endpoint, TestEnv};

    fn snap(n: usize) -> Snapshot {
        Snapshot {
            endpoints: (0..n)
                .map(|i| Endpoint { id: format!("e{i}"), weight: 1, healthy: true, ..Endpoint::default() })
                .collect(),
            ..Snapshot::default()
        }
    }

    fn probe(endpoint: u32, status: Status, body: &str) -> ProbeResult {
        ProbeResult { endpoint, status, latency: 1000, body: body.as_bytes().to_vec() }
    }

    #[test]
    fn consecutive_thresholds() {
        let mut env = TestEnv::default();
        let mut p =
            Consecutive::new(r#"{"unhealthy_threshold": 2, "healthy_threshold": 2, "body_contains": "ok"}"#).unwrap();
        p.update(&snap(2), &mut env).unwrap();
        assert_eq!(p.on_probe(&probe(0, Status::Timeout, ""), &mut env), Verdict::Unchanged);
        assert_eq!(
            p.on_probe(&probe(0, Status::Http(200), "not good"), &mut env),
            Verdict::Unhealthy,
            "body assertion fails"
        );
        assert_eq!(p.on_probe(&probe(0, Status::Http(200), "all ok"), &mut env), Verdict::Unchanged);
        // A new snapshot that reorders endpoints keeps the state by id.
        let mut s = snap(2);
        s.endpoints.reverse();
        p.update(&s, &mut env).unwrap();
        assert_eq!(p.on_probe(&probe(1, Status::Http(204), "ok"), &mut env), Verdict::Healthy);
        assert_eq!(p.on_probe(&probe(9, Status::Timeout, ""), &mut env), Verdict::Unchanged, "out of range is ignored");
        assert!(Consecutive::new(r#"{"healthy_threshold": 0}"#).is_err());
    }

    #[test]
    fn outlier_ejection_grows_and_is_capped() {
        let mut env = TestEnv::default();
        let mut p = OutlierDetection::new(r#"{"consecutive_5xx": 3, "base_ejection_ms": 100, "max_ejection_ms": 250}"#)
            .unwrap();
        p.update(&snap(1), &mut env).unwrap();
        let out = |status| Outcome { endpoint: 0, status, latency: 1 };
        let mut verdicts = Vec::new();
        for _ in 0..9 {
            verdicts.push(p.on_outcome(&out(Status::Http(500)), &mut env));
        }
        let ejects: Vec<_> = verdicts.into_iter().filter(|v| *v != Verdict::Unchanged).collect();
        assert_eq!(ejects, vec![Verdict::Eject(100), Verdict::Eject(200), Verdict::Eject(250)]);
        // A success in between resets the streak.
        p.on_outcome(&out(Status::Http(500)), &mut env);
        p.on_outcome(&out(Status::Http(200)), &mut env);
        assert_eq!(p.on_outcome(&out(Status::Http(500)), &mut env), Verdict::Unchanged);
    }

    #[test]
    fn outlier_success_rate_and_429_is_not_failure() {
        let mut env = TestEnv::default();
        let mut p = OutlierDetection::new(
            r#"{"consecutive_5xx": 0, "consecutive_gateway_errors": 0, "min_success_rate": 0.9, "success_rate_window": 10}"#,
        )
        .unwrap();
        p.update(&snap(1), &mut env).unwrap();
        for _ in 0..10 {
            assert_eq!(
                p.on_outcome(&Outcome { endpoint: 0, status: Status::Http(429), latency: 1 }, &mut env),
                Verdict::Unchanged
            );
        }
        let mut last = Verdict::Unchanged;
        for i in 0..10 {
            let status = if i % 3 == 0 { Status::Failed("reset".into()) } else { Status::Http(200) };
            last = p.on_outcome(&Outcome { endpoint: 0, status, latency: 1 }, &mut env);
        }
        assert!(matches!(last, Verdict::Eject(_)), "60% success in a window ejects");
    }

    #[test]
    fn standard_combines_probes_and_outcomes() {
        let mut env = TestEnv::default();
        let mut p = Standard::new(
            r#"{"active": {"unhealthy_threshold": 1}, "passive": {"consecutive_5xx": 2, "base_ejection_ms": 50}}"#,
        )
        .unwrap();
        p.update(&snap(2), &mut env).unwrap();
        assert_eq!(p.on_probe(&probe(1, Status::Timeout, ""), &mut env), Verdict::Unhealthy);
        let out = Outcome { endpoint: 0, status: Status::Http(502), latency: 1 };
        assert_eq!(p.on_outcome(&out, &mut env), Verdict::Unchanged);
        assert_eq!(p.on_outcome(&out, &mut env), Verdict::Eject(50));
        assert!(Standard::new(r#"{"active": {"healthy_threshold": 0}}"#).unwrap_err().starts_with("active:"));
        assert!(Standard::new(r#"{"other": 1}"#).is_err());
    }
}
