//! `c3`: C3 (Suresh, Canini, Schmid, Feldmann, "C3: Cutting Tail Latency in Cloud Data
//! Stores via Adaptive Replica Selection", NSDI 2015), as sextant runs it.
//!
//! Replica ranking: each candidate's score is `Ψ = R − 1/μ + q̂³ / μ`, where `R` is the
//! response time this client sees (the host's latency EWMA), `1/μ` the service time the
//! server reports, and `q̂ = 1 + os × clients + q` its estimated queue: `os` this client's
//! requests outstanding to it, `clients` how many clients share the servers, `q` the queue the
//! server reports. The cube punishes long queues hard, so a server that looks fast but has a
//! queue is avoided before its latency shows it. Server feedback comes from each response's
//! ORCA report (`load.report`): named metrics `rif` (the server's queue, `q`) and
//! `service_ms` (its mean service time, `1/μ`), smoothed here by an EWMA (α 0.9, the
//! paper's).
//!
//! Rate control: each server has a sending rate limit adapted every `interval_ms` like CUBIC:
//! when the rate of answers received from it falls below the rate sent, the limit drops by
//! `beta` (0.2); otherwise it grows along a cubic curve back toward and past the limit
//! before the drop (`gamma` scales the curve). A pick takes the best-ranked candidate whose
//! limit lets one more request through.
//!
//! Deviations: sextant has no replica groups, so the candidates are `candidates` (3, the
//! paper's replication factor) endpoints drawn at random per pick; and a balancer cannot hold
//! a request back, so when every candidate is over its limit the best-ranked one takes it
//! (the paper queues it in a backlog until a limit allows).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{Balancer, Env, Mode, Request, Snapshot, below, index, parse_config};

/// `c3` configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct C3Config {
    /// Endpoints ranked per pick.
    candidates: u32,
    /// Clients sharing the servers (the concurrency compensation of `q̂`).
    clients: f64,
    /// The rate limits' adaptation interval.
    interval_ms: u64,
    /// The multiplicative decrease of a limit.
    beta: f64,
    /// The cubic growth's scale, in requests per interval per ms³.
    gamma: f64,
    /// Service time assumed before a server reports one.
    default_service_ms: f64,
}

impl Default for C3Config {
    fn default() -> Self {
        Self { candidates: 3, clients: 1.0, interval_ms: 20, beta: 0.2, gamma: 2e-6, default_service_ms: 1.0 }
    }
}

/// What C3 keeps of one server (by instance id).
#[derive(Debug, Clone, Copy)]
struct Server {
    /// Smoothed queue size reported.
    queue: f64,
    /// Smoothed service time reported, ms.
    service_ms: f64,
    /// When the last report taken arrived (ns).
    seen: u64,
    /// The sending rate limit, requests per interval.
    limit: f64,
    /// The limit before the last decrease, and when it happened (ns).
    before_drop: f64,
    dropped_at: u64,
    /// Requests sent this interval, and this client's requests outstanding to the server
    /// when it began.
    sent: u32,
    outstanding: u32,
}

impl Server {
    fn new(service_ms: f64, now: u64) -> Self {
        Self {
            queue: 0.0,
            service_ms,
            seen: 0,
            limit: 10.0,
            before_drop: 10.0,
            dropped_at: now,
            sent: 0,
            outstanding: 0,
        }
    }
}

/// C3: cubic replica ranking on server feedback, with rate control.
#[derive(Debug)]
pub struct C3 {
    config: C3Config,
    ids: Vec<String>,
    servers: BTreeMap<String, Server>,
    /// The current interval began at (ns).
    interval_start: u64,
}

impl C3 {
    /// `{"candidates": 3, "clients": 1, "interval_ms": 20, "beta": 0.2, "gamma": 0.000002,
    /// "default_service_ms": 1}`.
    ///
    /// # Errors
    /// Unknown keys; candidates outside 1..=16; clients below 1; an interval of 0; beta
    /// outside 0..1; a non-positive gamma or default service time.
    pub fn new(config: &str) -> Result<Self, String> {
        let c: C3Config = parse_config(config)?;
        if c.candidates == 0 || c.candidates > 16 {
            return Err(format!("candidates must be within 1..=16, not {}", c.candidates));
        }
        if !c.clients.is_finite() || c.clients < 1.0 {
            return Err(format!("clients must be at least 1, not {}", c.clients));
        }
        if c.interval_ms == 0 {
            return Err("interval_ms must be at least 1".into());
        }
        if !(0.0..1.0).contains(&c.beta) {
            return Err(format!("beta must be within 0..1, not {}", c.beta));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(c.gamma) || !positive(c.default_service_ms) {
            return Err("gamma and default_service_ms must be positive numbers".into());
        }
        Ok(Self { config: c, ids: Vec::new(), servers: BTreeMap::new(), interval_start: 0 })
    }

    /// Adapts every limit at the end of an interval (CUBIC): a server answered fewer
    /// requests than it was sent when this client's requests outstanding to it grew.
    fn adapt(&mut self, env: &mut dyn Env, now: u64) {
        let interval = self.config.interval_ms * 1_000_000;
        if now.saturating_sub(self.interval_start) < interval {
            return;
        }
        self.interval_start = now;
        let (beta, gamma) = (self.config.beta, self.config.gamma);
        for (i, id) in self.ids.iter().enumerate() {
            let Some(s) = self.servers.get_mut(id) else { continue };
            let outstanding = env.in_flight(index(i));
            let answered = i64::from(s.sent) - (i64::from(outstanding) - i64::from(s.outstanding));
            if s.sent > 0 && answered < i64::from(s.sent) {
                s.before_drop = s.limit;
                s.limit = (s.limit * (1.0 - beta)).max(1.0);
                s.dropped_at = now;
            } else {
                // R = γ (ΔT − K)³ + R₀ with K = ∛(β R₀ / γ), ΔT in ms since the last drop:
                // (1 − β) R₀ right after it, back to R₀ at K, then beyond.
                #[allow(clippy::cast_precision_loss)]
                let t = now.saturating_sub(s.dropped_at) as f64 / 1e6;
                let k = cube_root(s.before_drop * beta / gamma);
                s.limit = (gamma * (t - k).powi(3) + s.before_drop).clamp(1.0, 1e6);
            }
            s.outstanding = outstanding;
            s.sent = 0;
        }
    }

    /// Takes each candidate's new report, then its score Ψ.
    fn score(&mut self, env: &mut dyn Env, i: u32, now: u64) -> (f64, bool) {
        let default = self.config.default_service_ms;
        let Some(id) = self.ids.get(i as usize) else { return (f64::MAX, false) };
        // Looked up before inserted: no key is allocated on a pick once the server is known.
        if !self.servers.contains_key(id) {
            self.servers.insert(id.clone(), Server::new(default, now));
        }
        let Some(s) = self.servers.get_mut(id) else { return (f64::MAX, false) };
        if let Some(r) = env.report(i) {
            let arrived = now.saturating_sub(r.age_ms.saturating_mul(1_000_000));
            if arrived > s.seen {
                s.seen = arrived;
                if let Some(q) = r.named("rif") {
                    s.queue = 0.9 * s.queue + 0.1 * q;
                }
                if let Some(ms) = r.named("service_ms").filter(|ms| *ms > 0.0) {
                    s.service_ms = 0.9 * s.service_ms + 0.1 * ms;
                }
            }
        }
        let state = env.state(i);
        #[allow(clippy::cast_precision_loss)]
        let response_ms = if state.latency_ewma == 0 { s.service_ms } else { state.latency_ewma as f64 / 1e6 };
        let q_hat = 1.0 + f64::from(state.in_flight) * self.config.clients + s.queue;
        let psi = response_ms - s.service_ms + q_hat.powi(3) * s.service_ms;
        (psi, f64::from(s.sent) < s.limit)
    }
}

/// The cube root of `x` >= 0 by Newton's method: additions, multiplications and divisions
/// only, so a native pick and a wasm pick compute the same bits (`f64::cbrt` is the platform's
/// libm, whose last digit may differ).
fn cube_root(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 0.0;
    }
    let mut y = x.max(1.0);
    for _ in 0..200 {
        let next = y - (y * y * y - x) / (3.0 * y * y);
        if (next - y).abs() <= 1e-12 * next {
            return next;
        }
        y = next;
    }
    y
}

impl Balancer for C3 {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> {
        self.ids = snapshot.endpoints.iter().map(|e| e.id.clone()).collect();
        let ids = &self.ids;
        self.servers.retain(|id, _| ids.contains(id));
        Ok(Mode::PerRequest)
    }

    fn pick(&mut self, _request: &Request, env: &mut dyn Env) -> Option<u32> {
        let len = index(self.ids.len());
        if len == 0 {
            return None;
        }
        let now = env.now();
        self.adapt(env, now);
        let d = self.config.candidates.min(len);
        let mut ranked: Vec<(f64, bool, u32)> = Vec::with_capacity(d as usize);
        while index(ranked.len()) < d {
            let i = below(env.random(), len);
            if ranked.iter().any(|r| r.2 == i) {
                continue;
            }
            let (psi, allowed) = self.score(env, i, now);
            ranked.push((psi, allowed, i));
        }
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
        let chosen = ranked.iter().find(|r| r.1).unwrap_or(&ranked[0]).2;
        if let Some(s) = self.servers.get_mut(&self.ids[chosen as usize]) {
            s.sent += 1;
        }
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestEnv;
    use crate::report::BackendReport;
    use crate::testing::{named, snapshot};

    fn feedback(rif: f64, service_ms: f64) -> Option<BackendReport> {
        named(&[("rif", rif), ("service_ms", service_ms)])
    }

    #[test]
    fn a_long_queue_loses_to_a_slower_empty_server() {
        let mut b = C3::new(r#"{"candidates": 2}"#).unwrap();
        let mut env = TestEnv::seeded(5);
        b.update(&snapshot(2), &mut env).unwrap();
        // Server 0 serves in 1 ms with 6 queued; server 1 in 4 ms with none: 1 × 7³ > 4 × 1³.
        env.reports = vec![feedback(6.0, 1.0), feedback(0.0, 4.0)];
        let mut picks = [0u32; 2];
        for n in 0..200u64 {
            env.now = 1_000_000 + n * 100_000_000;
            for r in env.reports.iter_mut().flatten() {
                r.age_ms = 0;
            }
            picks[b.pick(&Request::default(), &mut env).unwrap() as usize] += 1;
        }
        assert!(picks[1] > 190, "the cube of the queue decides: {picks:?}");
        // This client's own outstanding requests count too (`os` × clients).
        let mut b = C3::new(r#"{"candidates": 2, "clients": 10}"#).unwrap();
        b.update(&snapshot(2), &mut env).unwrap();
        env.reports = vec![feedback(0.0, 1.0), feedback(0.0, 1.0)];
        env.in_flight = vec![2, 0];
        assert_eq!(b.pick(&Request::default(), &mut env), Some(1));
    }

    #[test]
    fn the_cube_root_is_the_cube_root() {
        for x in [1e-6, 0.5, 1.0, 27.0, 1e3, 5e9] {
            let y = cube_root(x);
            assert!((y * y * y - x).abs() <= 1e-9 * x.max(1.0), "{x}: {y}");
        }
        assert!(cube_root(0.0).abs() < f64::EPSILON && cube_root(-1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn a_server_that_falls_behind_gets_a_lower_limit() {
        let mut b = C3::new(r#"{"candidates": 1}"#).unwrap();
        let mut env = TestEnv::seeded(9);
        b.update(&snapshot(1), &mut env).unwrap();
        // Requests go out and stay outstanding: at each interval the limit drops by beta.
        for n in 0..40u64 {
            env.now = n * 1_000_000;
            b.pick(&Request::default(), &mut env);
            env.in_flight = vec![u32::try_from(n).unwrap() + 1];
        }
        let limit = b.servers["e0"].limit;
        assert!(limit < 10.0, "{limit}");
        assert!(C3::new(r#"{"candidates": 0}"#).is_err());
        assert!(C3::new(r#"{"beta": 1.5}"#).is_err());
        assert!(C3::new(r#"{"clients": 0}"#).is_err());
    }
}
