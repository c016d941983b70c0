//! `prequal`: Prequal (Wydrowski, Kleinberg, Rumble, Kasturi, "Load is not what you should
//! balance: Introducing Prequal", NSDI 2024), as sextant runs it.
//!
//! The balancer keeps a small pool of recent probe answers, each a backend's requests in
//! flight (RIF, from every client, queued or served) and its recent latency. With each pick
//! it asks the host to probe `probe_rate` random backends (`load.probe`, asynchronous: the
//! answer arrives later as the backend's report, named metrics `rif` and `latency_ms`), and
//! takes the answers that came in since into the pool. The pick follows the hot-cold
//! lexicographic rule: a probe is hot when its RIF is above the `q_rif` quantile of the
//! pool's RIFs; among the cold ones the lowest latency wins (the quantile is taken over the
//! pool itself, so one probe at least is cold: with `q_rif` 0, the lowest RIF wins).
//! The chosen probe's RIF is raised by one (the request just sent), and never reads below
//! what this host has in flight to the backend (a guard against a backend claiming no load to
//! attract the traffic: it turns hot as the requests pile up); a probe is used at most
//! `reuse` times; probes older than `max_age_ms` leave the pool, and when the pool is full
//! the oldest goes. With an empty pool the pick is uniformly random.
//!
//! Parameters: a pool of 16 as in the paper; `q_rif` 0.84, two probes per pick and a reuse
//! budget of 2 are sextant's choices within the ranges the paper explores. Deviations: probes are answered by
//! the host's prober (a gateway's GET of the probe path, a simulated backend) rather than by
//! an RPC to the replica, and probes are only asked on picks (no idle probing). The
//! balancer does not read CPU: that is the paper's point.

use serde::Deserialize;

use crate::{Balancer, Env, Mode, Request, Snapshot, below, index, parse_config};

/// `prequal` configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PrequalConfig {
    /// Probe answers kept.
    pool: usize,
    /// Probes asked per pick (may be fractional: 0.5 asks one every other pick).
    probe_rate: f64,
    /// The RIF quantile beyond which a probe is hot.
    q_rif: f64,
    /// How many picks one probe answer may serve.
    reuse: u32,
    /// Probe answers older than this leave the pool.
    max_age_ms: u64,
}

impl Default for PrequalConfig {
    fn default() -> Self {
        Self { pool: 16, probe_rate: 2.0, q_rif: 0.84, reuse: 2, max_age_ms: 500 }
    }
}

/// One probe answer in the pool.
#[derive(Debug, Clone, Copy)]
struct Probe {
    endpoint: u32,
    rif: f64,
    latency_ms: f64,
    /// When the answer arrived (host ns).
    at: u64,
    uses: u32,
}

/// A probe asked and not answered yet.
#[derive(Debug, Clone, Copy)]
struct Asked {
    endpoint: u32,
    at: u64,
}

/// Prequal: probes of requests in flight and latency, and the hot-cold lexicographic rule.
#[derive(Debug)]
pub struct Prequal {
    config: PrequalConfig,
    len: u32,
    pool: Vec<Probe>,
    asked: Vec<Asked>,
    /// Fractional probes owed (`probe_rate` below 1).
    owed: f64,
    /// The pool's RIFs, where a choice finds their quantile.
    rifs: Vec<f64>,
}

impl Prequal {
    /// `{"pool": 16, "probe_rate": 2, "q_rif": 0.84, "reuse": 2, "max_age_ms": 500}`.
    ///
    /// # Errors
    /// Unknown keys; a pool of 0 or above 1024; a probe rate outside 0..=16; a quantile
    /// outside 0..=1; a reuse of 0.
    pub fn new(config: &str) -> Result<Self, String> {
        let config: PrequalConfig = parse_config(config)?;
        if config.pool == 0 || config.pool > 1024 {
            return Err(format!("pool must be within 1..=1024, not {}", config.pool));
        }
        if !(0.0..=16.0).contains(&config.probe_rate) {
            return Err(format!("probe_rate must be within 0..=16, not {}", config.probe_rate));
        }
        if !(0.0..=1.0).contains(&config.q_rif) {
            return Err(format!("q_rif must be within 0..=1, not {}", config.q_rif));
        }
        if config.reuse == 0 {
            return Err("reuse must be at least 1".into());
        }
        Ok(Self { config, len: 0, pool: Vec::new(), asked: Vec::new(), owed: 0.0, rifs: Vec::new() })
    }

    /// Takes the answers to asked probes that arrived since they were asked, drops old and
    /// spent ones.
    fn collect(&mut self, env: &mut dyn Env, now: u64) {
        let max_age = self.config.max_age_ms.saturating_mul(1_000_000);
        let mut i = 0;
        while i < self.asked.len() {
            let a = self.asked[i];
            let answer = env.report(a.endpoint).and_then(|r| {
                let arrived = now.saturating_sub(r.age_ms.saturating_mul(1_000_000));
                // Reports keep millisecond ages: one that arrived within the millisecond the
                // probe was asked counts as its answer.
                (arrived + 1_000_000 > a.at).then(|| (r.named("rif"), r.named("latency_ms"), arrived))
            });
            match answer {
                Some((Some(rif), latency, arrived)) => {
                    self.asked.swap_remove(i);
                    self.pool.retain(|p| p.endpoint != a.endpoint);
                    if self.pool.len() >= self.config.pool {
                        // The oldest answer goes.
                        if let Some(oldest) = (0..self.pool.len()).min_by_key(|&k| self.pool[k].at) {
                            self.pool.swap_remove(oldest);
                        }
                    }
                    self.pool.push(Probe {
                        endpoint: a.endpoint,
                        rif,
                        latency_ms: latency.unwrap_or(0.0),
                        at: arrived,
                        uses: 0,
                    });
                }
                // No answer yet; one never answered is forgotten after the maximum age.
                _ if now.saturating_sub(a.at) > max_age => {
                    self.asked.swap_remove(i);
                }
                _ => i += 1,
            }
        }
        let reuse = self.config.reuse;
        self.pool.retain(|p| p.uses < reuse && now.saturating_sub(p.at) <= max_age);
    }

    /// Asks the probes this pick owes.
    fn ask(&mut self, env: &mut dyn Env, now: u64) {
        self.owed += self.config.probe_rate;
        while self.owed >= 1.0 {
            self.owed -= 1.0;
            // Bounded: at most a pool's worth waiting.
            if self.asked.len() >= self.config.pool {
                break;
            }
            let endpoint = below(env.random(), self.len);
            if self.asked.iter().any(|a| a.endpoint == endpoint) {
                continue;
            }
            env.probe(endpoint);
            self.asked.push(Asked { endpoint, at: now });
        }
    }

    /// The hot-cold lexicographic choice over the pool: its index.
    fn choose(&mut self) -> Option<usize> {
        if self.pool.is_empty() {
            return None;
        }
        // The quantile is the `at`-th smallest RIF, selected in a buffer kept between picks
        // (no allocation, no full sort, on a pick).
        let rifs = &mut self.rifs;
        rifs.clear();
        rifs.extend(self.pool.iter().map(|p| p.rif));
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let at = ((rifs.len() as f64 * self.config.q_rif).ceil() as usize).clamp(1, rifs.len()) - 1;
        let threshold = *rifs.select_nth_unstable_by(at, f64::total_cmp).1;
        // The quantile is one of the pool's RIFs, so at least one probe is cold.
        (0..self.pool.len())
            .filter(|&k| self.pool[k].rif <= threshold)
            .min_by(|&a, &b| self.pool[a].latency_ms.total_cmp(&self.pool[b].latency_ms))
    }
}

impl Balancer for Prequal {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> {
        // Indices refer to the new snapshot from now on: what was learnt of the old one goes.
        self.len = index(snapshot.endpoints.len());
        self.pool.clear();
        self.asked.clear();
        Ok(Mode::PerRequest)
    }

    fn pick(&mut self, _request: &Request, env: &mut dyn Env) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let now = env.now();
        self.collect(env, now);
        self.ask(env, now);
        // A backend has at least the requests this host has in flight to it: a probe that
        // says fewer (a backend claiming no load to attract traffic, or an answer overtaken by
        // what was sent since) is raised to them, and the choice made again.
        let mut chosen = self.choose();
        for _ in 0..3 {
            let Some(k) = chosen else { break };
            let mine = f64::from(env.in_flight(self.pool[k].endpoint));
            if mine <= self.pool[k].rif {
                break;
            }
            self.pool[k].rif = mine;
            chosen = self.choose();
        }
        match chosen {
            Some(k) => {
                let p = &mut self.pool[k];
                p.uses += 1;
                p.rif += 1.0;
                Some(p.endpoint)
            }
            None => Some(below(env.random(), self.len)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TestEnv;
    use crate::report::BackendReport;
    use crate::testing::{named, snapshot};

    fn answer(rif: f64, latency_ms: f64) -> Option<BackendReport> {
        named(&[("latency_ms", latency_ms), ("rif", rif)])
    }

    #[test]
    fn cold_probes_win_by_latency() {
        let mut b = Prequal::new(r#"{"probe_rate": 4, "reuse": 100, "q_rif": 0.5}"#).unwrap();
        let mut env = TestEnv::seeded(7);
        b.update(&snapshot(4), &mut env).unwrap();
        // First pick: nothing in the pool, a random answer; probes are asked.
        assert!(b.pick(&Request::default(), &mut env).is_some());
        assert!(!env.probes.is_empty() && env.probes.len() <= 4, "{:?}", env.probes);
        // Every endpoint answers: 0 and 1 are hot (many in flight) but fast, 2 is cold and
        // slow, 3 cold and fastest of the cold.
        env.now = 2_000_000;
        env.reports = vec![answer(50.0, 1.0), answer(40.0, 1.0), answer(2.0, 9.0), answer(3.0, 5.0)];
        b.asked = (0..4).map(|endpoint| Asked { endpoint, at: 1_000_000 }).collect();
        assert_eq!(b.pick(&Request::default(), &mut env), Some(3), "the coldest half, lowest latency");
        // Answers that arrived before the probes were asked are not answers.
        let mut late = Prequal::new("{}").unwrap();
        late.update(&snapshot(4), &mut env).unwrap();
        late.asked = vec![Asked { endpoint: 0, at: 5_000_000 }];
        env.now = 6_000_000;
        for r in env.reports.iter_mut().flatten() {
            r.age_ms = 4;
        }
        late.collect(&mut env, 6_000_000);
        assert!(late.pool.is_empty(), "a stale report is not a probe's answer");
        // q_rif 0: only the lowest RIF is cold.
        let mut all_hot = Prequal::new(r#"{"q_rif": 0.0, "reuse": 100}"#).unwrap();
        all_hot.update(&snapshot(4), &mut env).unwrap();
        all_hot.pool = [50.0, 40.0, 20.0, 30.0]
            .iter()
            .enumerate()
            .map(|(i, &rif)| Probe { endpoint: index(i), rif, latency_ms: 1.0, at: 6_000_000, uses: 0 })
            .collect();
        let k = all_hot.choose().unwrap();
        assert_eq!(all_hot.pool[k].endpoint, 2, "q 0: only the least loaded probe is cold");
    }

    #[test]
    fn a_backend_claiming_no_load_turns_hot_as_requests_pile_up_on_it() {
        let mut b = Prequal::new(r#"{"reuse": 1000, "probe_rate": 0}"#).unwrap();
        let mut env = TestEnv::seeded(11);
        b.update(&snapshot(8), &mut env).unwrap();
        // Endpoint 0 says it has nothing in flight and answers in no time; the others are
        // honest (4 to 10 in flight, 10 ms). This host already has 30 requests in flight to
        // the liar: its probe reads 30, above the 0.84 quantile of the pool.
        b.pool = (0..8)
            .map(|i| {
                let (rif, latency_ms) = if i == 0 { (0.0, 0.0) } else { (f64::from(i) + 3.0, 10.0) };
                Probe { endpoint: i, rif, latency_ms, at: 0, uses: 0 }
            })
            .collect();
        env.in_flight = vec![30, 4, 5, 6, 7, 8, 9, 10];
        let picked: Vec<u32> = (0..20).filter_map(|_| b.pick(&Request::default(), &mut env)).collect();
        assert!(picked.iter().all(|&e| e != 0), "the liar is hot by what this host sent it: {picked:?}");
        // With nothing in flight to it, the same claim wins (it may be true).
        let mut b2 = Prequal::new(r#"{"reuse": 1000, "probe_rate": 0}"#).unwrap();
        b2.update(&snapshot(8), &mut env).unwrap();
        b2.pool = b.pool.iter().map(|p| Probe { rif: if p.endpoint == 0 { 0.0 } else { p.rif }, ..*p }).collect();
        env.in_flight = vec![0, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!(b2.pick(&Request::default(), &mut env), Some(0));
    }

    #[test]
    fn probes_are_spent_aged_and_bounded() {
        let mut b = Prequal::new(r#"{"probe_rate": 16, "pool": 4, "reuse": 1, "max_age_ms": 10}"#).unwrap();
        let mut env = TestEnv::seeded(3);
        b.update(&snapshot(100), &mut env).unwrap();
        b.pick(&Request::default(), &mut env);
        assert!(b.asked.len() <= 4, "asks wait at most a pool's worth: {}", b.asked.len());
        env.reports = (0..100).map(|_| answer(1.0, 1.0)).collect();
        env.now = 1_000_000;
        let first = b.pick(&Request::default(), &mut env).unwrap();
        assert!(b.pool.len() <= 4);
        assert!(b.pool.iter().all(|p| p.endpoint != first || p.uses == 1));
        env.now = 1_000_000 + 11_000_000;
        for r in env.reports.iter_mut().flatten() {
            r.age_ms = 11;
        }
        let now = env.now;
        b.collect(&mut env, now);
        assert!(b.pool.is_empty(), "answers older than max_age_ms leave: {:?}", b.pool);
        assert!(Prequal::new(r#"{"pool": 0}"#).is_err());
        assert!(Prequal::new(r#"{"q_rif": 2}"#).is_err());
        assert!(Prequal::new(r#"{"reuse": 0}"#).is_err());
        assert!(Prequal::new(r#"{"probe_rate": 1000}"#).is_err());
    }
}
