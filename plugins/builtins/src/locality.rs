//! The `locality` scheduler: traffic stays in the host's zone while that zone's healthy
//! capacity suffices and spills, in proportion, to the next zones of a priority order as it
//! degrades (Envoy's priority levels and overprovisioning factor); traffic comes back
//! gradually when the zone recovers. It decides the zones and their shares as effective
//! weights, so any balancer that reads weights picks within them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::{EndpointStats, Env, Level, Scheduler, Snapshot, parse_config};

/// Largest weight a scheduler hands back.
const MAX: f64 = 10_000.0;
/// The longest zone name (the registry's limit on an instance's `zone`).
pub const MAX_ZONE_BYTES: usize = 64;

/// Why `zone` is not a zone name: empty, longer than [`MAX_ZONE_BYTES`], or holding
/// whitespace or control characters. The registry, the gateway's `--zone` and the locality
/// scheduler's priority list follow this rule.
#[must_use]
pub fn zone_name_error(zone: &str) -> Option<String> {
    if zone.is_empty() {
        Some("a zone name is not empty".into())
    } else if zone.len() > MAX_ZONE_BYTES {
        Some(format!("zone {zone:?} is {} bytes long; at most {MAX_ZONE_BYTES}", zone.len()))
    } else if zone.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some(format!("zone {zone:?} holds whitespace or a control character"))
    } else {
        None
    }
}

/// Locality configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LocalityConfig {
    /// The zones traffic spills to when the local zone degrades, nearest first; zones not
    /// listed come after them, together.
    priority: Vec<String>,
    /// Envoy's overprovisioning factor: a level whose healthy share is `h` takes up to
    /// `h × overprovisioning` of the traffic left to it.
    overprovisioning: f64,
    /// The most a level's share rises per `schedule` call (traffic returns gradually).
    return_step: f64,
    /// How long a zone's lost capacity is remembered (milliseconds): a zone whose instances
    /// left the registry (deregistered, leases expired) counts as degraded for this long,
    /// then its new size is its capacity.
    memory_ms: u64,
}

impl Default for LocalityConfig {
    fn default() -> Self {
        Self { priority: Vec::new(), overprovisioning: 1.4, return_step: 0.1, memory_ms: 120_000 }
    }
}

/// Locality-aware routing with zone failover.
///
/// Levels: the host's zone (`host.local-zone`) first, then each zone of `priority` in order,
/// then every other zone together. A level's health is its healthy weight over its capacity
/// (the largest total weight its zones had within `memory_ms`); it can take up to
/// `health × overprovisioning` of the traffic (at most all of it). Traffic fills the levels in
/// order; when they cannot take it all (every level degraded) the shares are their
/// availabilities normalised, as Envoy does. A level's share falls at once when it degrades
/// and rises by at most `return_step` per call when it recovers (the rest stays where it
/// was meanwhile). Each healthy endpoint's weight is its level's share spread by registered
/// weight; unhealthy endpoints and levels with no share get 0, so they leave the rotation.
/// With no local zone, or no healthy endpoint anywhere, the registered weights stand (and the
/// host's protection threshold decides).
#[derive(Debug)]
pub struct Locality {
    config: LocalityConfig,
    /// Zone, registered weight and health per endpoint, in snapshot order.
    endpoints: Vec<(String, u32, bool)>,
    /// Per zone: the largest total weight seen, and when the zone last had it (ns).
    peaks: BTreeMap<String, (u64, u64)>,
    /// Each level's share at the last call, and the local zone they were computed for.
    shares: Vec<f64>,
    local: String,
    /// Zones of `priority` already reported absent, and whether "no local zone" was.
    warned: BTreeSet<String>,
}

impl Locality {
    /// `{"priority": ["eu-2", "us-1"], "overprovisioning": 1.4, "return_step": 0.1,
    /// "memory_ms": 120000}`.
    ///
    /// # Errors
    /// Unknown keys; a priority zone that is not a zone name or is listed twice; an
    /// overprovisioning factor below 1 or above 10; a return step outside (0, 1].
    pub fn new(config: &str) -> Result<Self, String> {
        let config: LocalityConfig = parse_config(config)?;
        let mut seen = BTreeSet::new();
        for zone in &config.priority {
            if let Some(e) = zone_name_error(zone) {
                return Err(format!("priority: {e}"));
            }
            if !seen.insert(zone) {
                return Err(format!("priority lists zone {zone:?} twice"));
            }
        }
        if !(1.0..=10.0).contains(&config.overprovisioning) {
            return Err(format!("overprovisioning must be within 1..=10, not {}", config.overprovisioning));
        }
        if !(config.return_step > 0.0 && config.return_step <= 1.0) {
            return Err(format!("return_step must be within (0, 1], not {}", config.return_step));
        }
        Ok(Self {
            config,
            endpoints: Vec::new(),
            peaks: BTreeMap::new(),
            shares: Vec::new(),
            local: String::new(),
            warned: BTreeSet::new(),
        })
    }

    /// The level of an endpoint in `zone` when the host is in `local`.
    fn level(&self, local: &str, zone: &str) -> usize {
        if zone == local {
            return 0;
        }
        let listed = self.config.priority.iter().filter(|z| z.as_str() != local);
        match listed.clone().position(|z| z == zone) {
            Some(p) => 1 + p,
            None => 1 + listed.count(),
        }
    }

    /// Each level's availability: its healthy weight over its remembered capacity, times the
    /// overprovisioning factor, at most 1.
    fn availability(&mut self, local: &str, now: u64) -> Vec<f64> {
        let levels = 2 + self.config.priority.iter().filter(|z| z.as_str() != local).count();
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        let mut healthy = vec![0u64; levels];
        for (zone, weight, up) in &self.endpoints {
            *totals.entry(zone).or_default() += u64::from(*weight);
            if *up {
                healthy[self.level(local, zone)] += u64::from(*weight);
            }
        }
        let memory = self.config.memory_ms.saturating_mul(1_000_000);
        for (zone, (peak, at)) in &mut self.peaks {
            let now_total = totals.get(zone.as_str()).copied().unwrap_or(0);
            if now_total >= *peak || now.saturating_sub(*at) > memory {
                (*peak, *at) = (now_total, now);
            }
        }
        for (zone, total) in &totals {
            self.peaks.entry((*zone).to_owned()).or_insert((*total, now));
        }
        self.peaks.retain(|_, (peak, _)| *peak > 0);
        let mut capacity = vec![0u64; levels];
        for (zone, (peak, _)) in &self.peaks {
            capacity[self.level(local, zone)] += *peak;
        }
        #[allow(clippy::cast_precision_loss)]
        healthy
            .iter()
            .zip(&capacity)
            .map(|(&h, &c)| if c == 0 { 0.0 } else { (h as f64 / c as f64 * self.config.overprovisioning).min(1.0) })
            .collect()
    }

    /// The registered weights, unchanged.
    fn registered(&self) -> Vec<u32> {
        self.endpoints.iter().map(|(_, w, _)| *w).collect()
    }

    /// Logs, once each, that the host has no zone and that a priority zone has no endpoint.
    fn warn_once(&mut self, local: &str, env: &dyn Env) {
        if local.is_empty() {
            if self.warned.insert(String::new()) {
                env.log(Level::Warn, "locality: the host has no zone (--zone); registered weights stand");
            }
            return;
        }
        for zone in &self.config.priority {
            if !self.endpoints.iter().any(|(z, _, _)| z == zone) && self.warned.insert(zone.clone()) {
                env.log(Level::Warn, &format!("locality: priority zone {zone:?} has no endpoint in this service"));
            }
        }
    }
}

/// Envoy's priority load: levels filled in order up to their availability; when they cannot
/// take everything, the availabilities normalised.
fn targets(avail: &[f64]) -> Vec<f64> {
    let mut left = 1.0;
    let mut out: Vec<f64> = avail
        .iter()
        .map(|&a| {
            let take = a.min(left);
            left -= take;
            take
        })
        .collect();
    if left > 1e-9 {
        let sum: f64 = avail.iter().sum();
        out = avail.iter().map(|a| a / sum).collect();
    }
    out
}

/// `target` with each level's rise above `previous` capped at `step`: what a capped level
/// cannot take stays on the levels it is leaving (up to their share before and their
/// availability), then goes to any level with room, in order; normalised at the end.
fn gradual(target: &[f64], previous: &[f64], avail: &[f64], step: f64) -> Vec<f64> {
    let mut share: Vec<f64> = target.iter().zip(previous).map(|(t, p)| t.min(p + step)).collect();
    let mut left = 1.0 - share.iter().sum::<f64>();
    for ((s, p), a) in share.iter_mut().zip(previous).zip(avail) {
        let back = (p.min(*a) - *s).max(0.0).min(left);
        *s += back;
        left -= back;
    }
    for (s, a) in share.iter_mut().zip(avail) {
        let more = (a - *s).max(0.0).min(left);
        *s += more;
        left -= more;
    }
    let sum: f64 = share.iter().sum();
    if sum > 0.0 {
        share.iter_mut().for_each(|s| *s /= sum);
    }
    share
}

impl Scheduler for Locality {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<(), String> {
        self.endpoints = snapshot.endpoints.iter().map(|e| (e.zone.clone(), e.weight, e.healthy)).collect();
        Ok(())
    }

    fn schedule(&mut self, _stats: &[EndpointStats], env: &mut dyn Env) -> Vec<u32> {
        let local = env.local_zone();
        self.warn_once(&local, env);
        if local.is_empty() {
            return self.registered();
        }
        if local != self.local {
            self.local.clone_from(&local);
            self.shares.clear();
        }
        let avail = self.availability(&local, env.now());
        if avail.iter().all(|&a| a <= 0.0) {
            self.shares.clear();
            return self.registered();
        }
        let target = targets(&avail);
        let share = if self.shares.len() == target.len() {
            gradual(&target, &self.shares, &avail, self.config.return_step)
        } else {
            target
        };
        let mut healthy = vec![0u64; share.len()];
        for (zone, w, up) in &self.endpoints {
            if *up {
                healthy[self.level(&local, zone)] += u64::from(*w);
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let raw: Vec<f64> = self
            .endpoints
            .iter()
            .map(|(zone, w, up)| {
                let l = self.level(&local, zone);
                if !up || share[l] <= 0.0 || healthy[l] == 0 {
                    0.0
                } else {
                    share[l] * f64::from(*w) / healthy[l] as f64
                }
            })
            .collect();
        self.shares = share;
        let max = raw.iter().copied().fold(0.0, f64::max);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped to 1..=MAX
        raw.iter().map(|r| if *r > 0.0 { (r * MAX / max).clamp(1.0, MAX).round() as u32 } else { 0 }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Endpoint, TestEnv};

    /// `(zone, healthy)` per endpoint, weight 100 each.
    fn snap(endpoints: &[(&str, bool)]) -> Snapshot {
        Snapshot {
            endpoints: endpoints
                .iter()
                .enumerate()
                .map(|(i, (zone, healthy))| Endpoint {
                    id: format!("e{i}"),
                    weight: 100,
                    zone: (*zone).into(),
                    healthy: *healthy,
                    ..Endpoint::default()
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    /// The share of traffic per zone the weights give.
    fn shares(s: &Snapshot, w: &[u32]) -> BTreeMap<String, f64> {
        let total: f64 = w.iter().map(|&x| f64::from(x)).sum();
        let mut out = BTreeMap::new();
        for (e, &x) in s.endpoints.iter().zip(w) {
            *out.entry(e.zone.clone()).or_insert(0.0) += f64::from(x) / total;
        }
        out
    }

    fn zones(a_up: usize, a_down: usize) -> Snapshot {
        let mut v = vec![("a", true); a_up];
        v.extend(std::iter::repeat_n(("a", false), a_down));
        v.extend([("b", true), ("b", true), ("c", true), ("c", true)]);
        snap(&v)
    }

    fn run(s: &mut Locality, env: &mut TestEnv, snapshot: &Snapshot) -> BTreeMap<String, f64> {
        s.update(snapshot, env).unwrap();
        let w = s.schedule(&vec![EndpointStats::default(); snapshot.endpoints.len()], env);
        shares(snapshot, &w)
    }

    #[test]
    fn stays_local_then_spills_in_priority_order_then_returns_gradually() {
        let mut env = TestEnv { zone: "a".into(), ..TestEnv::default() };
        let mut s = Locality::new(r#"{"priority": ["c", "b"]}"#).unwrap();
        let all = run(&mut s, &mut env, &zones(10, 0));
        assert!((all["a"] - 1.0).abs() < 1e-9, "{all:?}");
        // 30% of the local zone down: 0.7 × 1.4 = 0.98 stays, 0.02 goes to c (first in priority).
        let minus30 = run(&mut s, &mut env, &zones(7, 3));
        assert!((minus30["a"] - 0.98).abs() < 1e-3 && (minus30["c"] - 0.02).abs() < 1e-3, "{minus30:?}");
        assert!(minus30["b"] < 1e-9, "{minus30:?}");
        // 70% down: 0.42 stays, c takes the rest.
        let minus70 = run(&mut s, &mut env, &zones(3, 7));
        assert!((minus70["a"] - 0.42).abs() < 1e-3 && (minus70["c"] - 0.58).abs() < 1e-3, "{minus70:?}");
        // Recovered: a's share rises 0.1 per call, c keeps the rest meanwhile.
        let back = run(&mut s, &mut env, &zones(10, 0));
        assert!((back["a"] - 0.52).abs() < 1e-3 && (back["c"] - 0.48).abs() < 1e-3, "{back:?}");
        let mut last = back["a"];
        for _ in 0..10 {
            let next = run(&mut s, &mut env, &zones(10, 0))["a"];
            assert!(next >= last - 1e-3 && next <= last + 0.1 + 1e-3, "{last} -> {next}");
            last = next;
        }
        assert!((last - 1.0).abs() < 1e-3, "{last}");
    }

    #[test]
    fn lost_capacity_is_remembered_then_forgotten() {
        let mut env = TestEnv { zone: "a".into(), ..TestEnv::default() };
        let mut s = Locality::new(r#"{"memory_ms": 1000}"#).unwrap();
        run(&mut s, &mut env, &zones(10, 0));
        // Seven of ten local instances left the registry: a is at 30% of what it had.
        let gone = run(&mut s, &mut env, &zones(3, 0));
        assert!((gone["a"] - 0.42).abs() < 1e-3, "{gone:?}");
        // Unlisted zones share the spill by weight.
        assert!((gone["b"] - 0.29).abs() < 1e-3 && (gone["c"] - 0.29).abs() < 1e-3, "{gone:?}");
        env.now = 2_000_000_000;
        let forgotten = run(&mut s, &mut env, &zones(3, 0));
        assert!(forgotten["a"] > gone["a"] && forgotten["a"] <= gone["a"] + 0.1 + 1e-3, "{forgotten:?}");
    }

    #[test]
    fn every_level_degraded_normalises_and_nothing_healthy_keeps_registered_weights() {
        let mut env = TestEnv { zone: "a".into(), ..TestEnv::default() };
        let mut s = Locality::new("{}").unwrap();
        // a: 1 of 4 up (0.35), b: 1 of 4 up (0.35): together 0.7, normalised to 0.5 each.
        let half = snap(&[
            ("a", true),
            ("a", false),
            ("a", false),
            ("a", false),
            ("b", true),
            ("b", false),
            ("b", false),
            ("b", false),
        ]);
        let got = run(&mut s, &mut env, &half);
        assert!((got["a"] - 0.5).abs() < 1e-3 && (got["b"] - 0.5).abs() < 1e-3, "{got:?}");
        let none = snap(&[("a", false), ("b", false)]);
        s.update(&none, &mut env).unwrap();
        assert_eq!(s.schedule(&[EndpointStats::default(); 2], &mut env), vec![100, 100]);
    }

    #[test]
    fn without_a_local_zone_registered_weights_stand() {
        let mut env = TestEnv::default();
        let mut s = Locality::new("{}").unwrap();
        let snapshot = zones(2, 0);
        s.update(&snapshot, &mut env).unwrap();
        assert_eq!(s.schedule(&[EndpointStats::default(); 6], &mut env), vec![100; 6]);
        // A local zone with no endpoint: everything spills.
        env.zone = "z".into();
        let got = shares(&snapshot, &s.schedule(&[EndpointStats::default(); 6], &mut env));
        assert!(!got.contains_key("z") && (got["a"] + got["b"] + got["c"] - 1.0).abs() < 1e-9, "{got:?}");
    }

    #[test]
    fn bad_configurations_are_refused() {
        for (config, says) in [
            (r#"{"priority": ["b", "b"]}"#, "twice"),
            (r#"{"priority": [""]}"#, "not empty"),
            (r#"{"priority": ["eu west"]}"#, "whitespace"),
            (r#"{"overprovisioning": 0.5}"#, "overprovisioning"),
            (r#"{"return_step": 0}"#, "return_step"),
            (r#"{"zones": []}"#, "unknown field"),
        ] {
            let e = Locality::new(config).unwrap_err();
            assert!(e.contains(says), "{config}: {e}");
        }
        assert!(zone_name_error(&"z".repeat(65)).is_some() && zone_name_error("eu-west-1a").is_none());
    }
}
