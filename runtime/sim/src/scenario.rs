//! The scenarios: backends with service-time distributions, arrivals, and what goes wrong
//! when. Times inside a run are fractions of its duration, so `--scale` stretches a
//! scenario without changing its shape.

/// One backend.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// Instance id.
    pub id: String,
    /// Zone label.
    pub zone: &'static str,
    /// Registered weight.
    pub weight: u32,
    /// Requests it serves in parallel; the rest wait in its FIFO queue.
    pub workers: u32,
    /// Mean service time, ms.
    pub mean_ms: f64,
    /// Log-normal shape (σ of the underlying normal); 0 gives an exponential distribution.
    pub sigma: f64,
}

/// Something that happens to one backend (or a zone) during a window of the run.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Service times × `factor` while `from <= t < to` (fractions of the run).
    Slow {
        /// Backend index.
        backend: usize,
        /// Start, fraction of the run.
        from: f64,
        /// End, fraction of the run.
        to: f64,
        /// Multiplier.
        factor: f64,
    },
    /// Answers quickly with an error: 503 with probability `p503`, 429 with Retry-After
    /// with probability `p429`, after `latency_ms`.
    FastFail {
        /// Backend index.
        backend: usize,
        /// Start, fraction of the run.
        from: f64,
        /// End, fraction of the run.
        to: f64,
        /// Probability of a 503.
        p503: f64,
        /// Probability of a 429 (with Retry-After).
        p429: f64,
        /// How fast the error comes back, ms.
        latency_ms: f64,
    },
    /// The zone is unreachable: requests sent there hang until the client's timeout.
    Partition {
        /// Zone label.
        zone: &'static str,
        /// Start, fraction of the run.
        from: f64,
        /// End, fraction of the run.
        to: f64,
    },
    /// Other clients' requests (an antagonist the gateway does not see) reach the backend at
    /// `rate` a second (Poisson) while `from <= t < to`: they take its workers and queue like
    /// the gateway's, so its in-flight count at the gateway understates its load.
    Antagonist {
        /// Backend index.
        backend: usize,
        /// Start, fraction of the run.
        from: f64,
        /// End, fraction of the run.
        to: f64,
        /// Requests per second.
        rate: f64,
    },
    /// The backend leaves the registry at `at` and comes back at `back` (if below 1).
    Churn {
        /// Backend index.
        backend: usize,
        /// When it leaves, fraction of the run.
        at: f64,
        /// When it returns, fraction of the run.
        back: f64,
    },
}

/// Arrival bursts: the rate × `factor` for `on_ms`, then × `low` for `off_ms`, repeating.
#[derive(Debug, Clone, Copy)]
pub struct Burst {
    /// Length of a burst, ms.
    pub on_ms: f64,
    /// Length of a lull, ms.
    pub off_ms: f64,
    /// Rate multiplier during a burst.
    pub factor: f64,
    /// Rate multiplier during a lull.
    pub low: f64,
}

/// Request keys for hash strategies: `count` keys with Zipf exponent `zipf` (0: uniform).
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    /// Distinct keys.
    pub count: u32,
    /// Zipf exponent.
    pub zipf: f64,
}

impl Keys {
    /// The cumulative distribution over keys 0..count (key 0 the most frequent).
    #[must_use]
    pub fn cdf(&self) -> Vec<f64> {
        let weights: Vec<f64> = (1..=self.count).map(|r| 1.0 / f64::from(r).powf(self.zipf)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect()
    }

    /// A key drawn from `cdf` (none if it is empty).
    pub fn draw(cdf: &[f64], rng: &mut crate::rng::Rng) -> Option<usize> {
        (!cdf.is_empty()).then(|| cdf.partition_point(|c| *c < rng.unit()).min(cdf.len() - 1))
    }
}

/// A scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name (`--scenarios`).
    pub name: &'static str,
    /// One line for the report.
    pub description: &'static str,
    /// The backends.
    pub backends: Vec<BackendSpec>,
    /// Mean arrival rate, requests per second (Poisson).
    pub rate: f64,
    /// Bursty arrivals, if any.
    pub burst: Option<Burst>,
    /// Request keys, if any.
    pub keys: Option<Keys>,
    /// What goes wrong.
    pub faults: Vec<Fault>,
    /// Simulated seconds at scale 1.
    pub duration_s: f64,
    /// The client's timeout, ms: a request not answered by then failed.
    pub timeout_ms: f64,
    /// The zone the simulated gateway runs in (`--zone`; what `locality` keeps traffic in),
    /// if any: the report then gives the share of requests sent to other zones.
    pub gateway_zone: Option<&'static str>,
    /// Round trip added to a request served in a zone other than the gateway's, ms.
    pub cross_zone_ms: f64,
}

impl Scenario {
    /// The arrival rate at `t_ms` into the run (bursts make it piecewise constant).
    #[must_use]
    pub fn rate_at(&self, t_ms: f64) -> f64 {
        match self.burst {
            None => self.rate,
            Some(b) => self.rate * if t_ms % (b.on_ms + b.off_ms) < b.on_ms { b.factor } else { b.low },
        }
    }

    /// Whether backend `b` is registered for the whole run (no churn).
    #[must_use]
    pub fn always_present(&self, b: usize) -> bool {
        !self.faults.iter().any(|f| matches!(f, Fault::Churn { backend, .. } if *backend == b))
    }

    /// Load imbalance of a run: max / mean of requests per unit of weight, over the backends
    /// present the whole run.
    #[must_use]
    pub fn imbalance(&self, per_backend: &[u64]) -> f64 {
        let loads: Vec<f64> = (0..per_backend.len().min(self.backends.len()))
            .filter(|b| self.always_present(*b))
            .map(|b| {
                #[allow(clippy::cast_precision_loss)]
                let per_weight = per_backend[b] as f64 / f64::from(self.backends[b].weight.max(1));
                per_weight
            })
            .collect();
        #[allow(clippy::cast_precision_loss)]
        let mean = loads.iter().sum::<f64>() / loads.len().max(1) as f64;
        let max = loads.iter().copied().fold(0.0, f64::max);
        if mean > 0.0 { max / mean } else { 0.0 }
    }

    /// Scenarios whose backends differ in capacity and nothing else happens to them: how far
    /// the traffic is from following capacity in the second half of a run (`series`, requests
    /// per backend per time bucket), as the largest relative difference between a backend's
    /// share of the requests and its share of the capacity. None for other scenarios.
    #[must_use]
    pub fn capacity_error(&self, series: &[Vec<u32>]) -> Option<f64> {
        let capacities: Vec<f64> = self.backends.iter().map(|b| f64::from(b.workers) * 1000.0 / b.mean_ms).collect();
        let first = capacities.first()?;
        if !self.faults.is_empty() || capacities.iter().all(|c| (c - first).abs() < 1e-9) {
            return None;
        }
        let mut served = vec![0u64; capacities.len()];
        for bucket in &series[series.len() / 2..] {
            for (n, &r) in served.iter_mut().zip(bucket) {
                *n += u64::from(r);
            }
        }
        let total: u64 = served.iter().sum();
        let capacity: f64 = capacities.iter().sum();
        #[allow(clippy::cast_precision_loss)]
        let error = served
            .iter()
            .zip(&capacities)
            .map(|(&n, c)| ((n as f64 / total.max(1) as f64) / (c / capacity) - 1.0).abs())
            .fold(0.0, f64::max);
        Some(error)
    }

    /// Total capacity in requests per second (workers / mean service time).
    #[must_use]
    pub fn capacity(&self) -> f64 {
        self.backends.iter().map(|b| f64::from(b.workers) * 1000.0 / b.mean_ms).sum()
    }
}

fn backends(n: usize, workers: u32, mean_ms: f64) -> Vec<BackendSpec> {
    (0..n)
        .map(|i| BackendSpec {
            id: format!("b{i:02}"),
            zone: if i % 2 == 0 { "zone-a" } else { "zone-b" },
            weight: 100,
            workers,
            mean_ms,
            sigma: 0.5,
        })
        .collect()
}

/// Every scenario, in report order.
#[must_use]
pub fn all() -> Vec<Scenario> {
    let base = |name, description| Scenario {
        name,
        description,
        backends: backends(10, 4, 10.0),
        rate: 0.0,
        burst: None,
        keys: None,
        faults: Vec::new(),
        duration_s: 10.0,
        timeout_ms: 1000.0,
        gateway_zone: None,
        cross_zone_ms: 0.0,
    };
    let at = |mut s: Scenario, utilisation: f64| {
        s.rate = s.capacity() * utilisation;
        s
    };
    let mut heterogeneous =
        base("heterogeneous", "10 backends of 2, 4 or 8 workers, weights proportional to capacity; 70% load");
    for (i, b) in heterogeneous.backends.iter_mut().enumerate() {
        b.workers = [2, 4, 8][i % 3];
        b.weight = b.workers * 25;
    }
    let mut slow =
        base("slow-node", "Linkerd's experiment: 11 backends, one 10x slower from 20% to 80% of the run; 60% load");
    slow.backends = backends(11, 4, 10.0);
    slow.faults.push(Fault::Slow { backend: 3, from: 0.2, to: 0.8, factor: 10.0 });
    let mut fast_fail = base(
        "fast-fail",
        "one of 10 backends answers 503 (60%) or 429 (30%) within 0.5 ms from 20% of the run; 60% load",
    );
    fast_fail.faults.push(Fault::FastFail { backend: 5, from: 0.2, to: 1.0, p503: 0.6, p429: 0.3, latency_ms: 0.5 });
    let mut bursty = base("bursty", "bursts of 2.6x the mean rate for 200 ms, lulls of 0.6x for 800 ms; 60% mean load");
    bursty.burst = Some(Burst { on_ms: 200.0, off_ms: 800.0, factor: 2.6, low: 0.6 });
    let mut hot = base("hot-keys", "requests carry keys, Zipf(1.1) over 1000 keys; 60% load");
    hot.keys = Some(Keys { count: 1000, zipf: 1.1 });
    let mut churn = base(
        "churn",
        "keyed requests (1000 uniform keys); 3 backends leave and come back through registry changes; 60% load",
    );
    churn.keys = Some(Keys { count: 1000, zipf: 0.0 });
    churn.faults.extend([
        Fault::Churn { backend: 1, at: 0.2, back: 0.5 },
        Fault::Churn { backend: 4, at: 0.4, back: 0.7 },
        Fault::Churn { backend: 7, at: 0.6, back: 0.9 },
    ]);
    let mut zone = base(
        "zone-split",
        "zone-b (half the backends) unreachable from 30% to 60% of the run, requests there hang until the 1 s timeout; 40% load",
    );
    zone.faults.push(Fault::Partition { zone: "zone-b", from: 0.3, to: 0.6 });
    let zoned = |name, description| {
        let mut s = base(name, description);
        s.backends = (0..30)
            .map(|i| BackendSpec {
                id: format!("b{i:02}"),
                zone: ["zone-a", "zone-b", "zone-c"][i / 10],
                weight: 100,
                workers: 4,
                mean_ms: 10.0,
                sigma: 0.5,
            })
            .collect();
        s.gateway_zone = Some("zone-a");
        s.cross_zone_ms = 2.0;
        // One gateway of three, one per zone: its traffic is half of its own zone's capacity.
        s.rate = s.capacity() / 3.0 * 0.5;
        s
    };
    let local = zoned(
        "zone-local",
        "3 zones of 10 backends, the gateway in zone-a; another zone costs 2 ms more per request; the gateway's traffic is 50% of its zone's capacity",
    );
    let mut degraded = zoned(
        "zone-degraded",
        "as zone-local; zone-a loses 30% of its backends at 20% of the run, 70% at 45%, and gets them back at 70%",
    );
    for b in 0..7 {
        let at = if b < 3 { 0.2 } else { 0.45 };
        degraded.faults.push(Fault::Churn { backend: b, at, back: 0.7 });
    }
    // Prequal's setting: backends shared with other clients whose load moves (antagonists
    // the gateway cannot see), one weaker backend (hot), high utilization.
    let mut antagonist = base(
        "antagonist",
        "10 backends, one 2x slower throughout; other clients send 250 req/s (62% of a backend) to three of them at a time, moving every 1/8 of the run; the gateway's 60% of the nominal load makes 83% of what is there",
    );
    antagonist.faults.push(Fault::Slow { backend: 9, from: 0.0, to: 1.0, factor: 2.0 });
    for k in 0..8u32 {
        let (from, to) = (f64::from(k) / 8.0, f64::from(k + 1) / 8.0);
        for b in [3 * k as usize, 3 * k as usize + 1, 3 * k as usize + 2] {
            antagonist.faults.push(Fault::Antagonist { backend: b % 9, from, to, rate: 250.0 });
        }
    }
    vec![
        at(base("homogeneous", "10 identical backends (4 workers, 10 ms log-normal service); 70% load"), 0.7),
        at(heterogeneous, 0.7),
        at(slow, 0.6),
        at(fast_fail, 0.6),
        at(bursty, 0.6),
        at(hot, 0.6),
        at(churn, 0.6),
        at(zone, 0.4),
        local,
        degraded,
        at(antagonist, 0.6),
    ]
}

/// The scenario called `name`.
#[must_use]
pub fn by_name(name: &str) -> Option<Scenario> {
    all().into_iter().find(|s| s.name == name)
}

/// Every scenario's name.
#[must_use]
pub fn names() -> Vec<&'static str> {
    all().iter().map(|s| s.name).collect()
}
