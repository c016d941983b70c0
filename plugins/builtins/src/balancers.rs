//! The built-in balancers. Each works on positions in the last snapshot and never copies
//! the endpoint list per pick; per-pick work is O(1) or O(log n) (ring and EDF), except
//! where bounded load walks the ring past overloaded endpoints.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use serde::Deserialize;

use crate::{
    Balancer, EndpointState, Env, Mode, Request, RingPoint, Snapshot, Table, below, hash_str, index, mix64,
    parse_config,
};

/// No configuration accepted (an empty object, or nothing).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoConfig {}

/// `new(config)` for the balancers that take no configuration.
macro_rules! unconfigured {
    ($($ty:ident),*) => {$(
        impl $ty {
            /// Takes no configuration: `{}` or nothing.
            ///
            /// # Errors
            /// Any configuration key.
            pub fn new(config: &str) -> Result<Self, String> {
                parse_config::<NoConfig>(config)?;
                Ok(Self::default())
            }
        }
    )*};
}

unconfigured!(RoundRobin, SmoothWeighted, RandomWeighted, LeastRequest, Maglev);

/// Round robin in snapshot order, ignoring weights. Each instance starts at a random
/// position so workers do not march in step.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: u32,
    len: u32,
    started: bool,
}

impl Balancer for RoundRobin {
    fn update(&mut self, snapshot: &Snapshot, env: &mut dyn Env) -> Result<Mode, String> {
        self.len = index(snapshot.endpoints.len());
        if self.len > 0 {
            if !self.started {
                self.next = below(env.random(), self.len);
                self.started = true;
            }
            self.next %= self.len;
        }
        Ok(Mode::PerRequest)
    }

    fn pick(&mut self, _request: &Request, _env: &mut dyn Env) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let i = self.next;
        self.next = if i + 1 >= self.len { 0 } else { i + 1 };
        Some(i)
    }
}

/// Earliest-deadline-first weighted scheduling (Envoy's weighted round robin): each endpoint
/// is due every `1 / weight`; a pick takes the earliest. O(log n) per pick and smooth:
/// weights 5:1:1 give `a a a b c a a`. Also the host's executor for `table::weighted`.
#[derive(Debug, Clone, Default)]
pub struct EdfWeights {
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    steps: Vec<u64>,
}

const EDF_SCALE: u64 = 1 << 32;

impl EdfWeights {
    /// A schedule over these weights (index = endpoint); weight 0 is never picked.
    #[must_use]
    pub fn new(weights: &[u32]) -> Self {
        let mut heap = BinaryHeap::with_capacity(weights.len());
        let steps: Vec<u64> = weights.iter().map(|&w| if w == 0 { 0 } else { EDF_SCALE / u64::from(w) }).collect();
        for (i, &step) in steps.iter().enumerate() {
            if step > 0 {
                // Half a period in, so equal weights interleave instead of bunching at 0.
                heap.push(Reverse((step / 2, index(i))));
            }
        }
        Self { heap, steps }
    }

    /// The next endpoint, or none when every weight is 0.
    pub fn pick(&mut self) -> Option<u32> {
        let mut top = self.heap.peek_mut()?;
        let (deadline, i) = top.0;
        top.0 = (deadline + self.steps[i as usize], i);
        drop(top);
        if deadline > 1 << 62 {
            self.rebase();
        }
        Some(i)
    }

    fn rebase(&mut self) {
        let min = self.heap.peek().map_or(0, |r| r.0.0);
        let entries: Vec<_> = self.heap.drain().map(|Reverse((d, i))| Reverse((d - min, i))).collect();
        self.heap.extend(entries);
    }
}

/// Smooth weighted round robin by earliest deadline first ([`EdfWeights`]).
#[derive(Debug, Default)]
pub struct SmoothWeighted {
    edf: EdfWeights,
}

impl Balancer for SmoothWeighted {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> {
        let weights: Vec<u32> = snapshot.endpoints.iter().map(|e| e.weight).collect();
        self.edf = EdfWeights::new(&weights);
        Ok(Mode::PerRequest)
    }

    fn pick(&mut self, _request: &Request, _env: &mut dyn Env) -> Option<u32> {
        self.edf.pick()
    }
}

/// Weighted random: one random number, a binary search over prefix sums (or a plain
/// multiply when every weight is equal).
#[derive(Debug, Default)]
pub struct RandomWeighted {
    prefix: Vec<u64>,
    uniform: bool,
}

impl Balancer for RandomWeighted {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> {
        let mut sum = 0;
        self.prefix = snapshot
            .endpoints
            .iter()
            .map(|e| {
                sum += u64::from(e.weight);
                sum
            })
            .collect();
        self.uniform = snapshot.endpoints.windows(2).all(|w| w[0].weight == w[1].weight);
        Ok(Mode::PerRequest)
    }

    fn pick(&mut self, _request: &Request, env: &mut dyn Env) -> Option<u32> {
        let total = *self.prefix.last()?;
        let len = index(self.prefix.len());
        if self.uniform || total == 0 {
            return Some(below(env.random(), len));
        }
        let r = env.random() % total;
        Some(index(self.prefix.partition_point(|&p| p <= r)))
    }
}

/// Two distinct random endpoints (the power of two choices).
fn two_choices(len: u32, env: &mut dyn Env) -> (u32, u32) {
    let a = below(env.random(), len);
    let mut b = below(env.random(), len - 1);
    if b >= a {
        b += 1;
    }
    (a, b)
}

/// The endpoints the power of two choices draws from: uniformly when every weight is the
/// same, otherwise in proportion to weight. The weight decides how often an endpoint is a
/// candidate, the load which candidate wins, so at equal load an endpoint's share of traffic
/// is its share of the weight: an endpoint a scheduler gave 1% of the weight (`locality`'s
/// spill to another zone) takes about 1% of the requests, not as many as any other (a uniform
/// draw), nor far fewer (a draw by weight whose winner is also judged by load per unit of
/// weight counts the weight twice).
#[derive(Debug, Default)]
struct Candidates {
    len: usize,
    /// Running sums of the weights; empty when they are all equal.
    prefix: Vec<u64>,
}

impl Candidates {
    fn of(snapshot: &Snapshot) -> Self {
        let weights: Vec<u32> = snapshot.endpoints.iter().map(|e| e.weight.max(1)).collect();
        let prefix = if weights.windows(2).all(|w| w[0] == w[1]) {
            Vec::new()
        } else {
            weights
                .iter()
                .scan(0u64, |sum, &w| {
                    *sum += u64::from(w);
                    Some(*sum)
                })
                .collect()
        };
        Self { len: weights.len(), prefix }
    }

    /// One endpoint drawn by weight (`prefix` is not empty).
    fn by_weight(&self, env: &mut dyn Env) -> u32 {
        let total = self.prefix.last().copied().unwrap_or(1);
        #[allow(clippy::cast_possible_truncation)] // < total
        let r = ((u128::from(env.random()) * u128::from(total)) >> 64) as u64;
        index(self.prefix.partition_point(|&p| p <= r))
    }

    /// Two distinct endpoints: uniform when the weights are equal; by weight otherwise, the
    /// second drawn again (three times at most) while it is the first, then the first's
    /// neighbour (one endpoint holds nearly all the weight).
    fn two(&self, len: u32, env: &mut dyn Env) -> (u32, u32) {
        if self.prefix.is_empty() {
            return two_choices(len, env);
        }
        let a = self.by_weight(env);
        for _ in 0..3 {
            let b = self.by_weight(env);
            if b != a {
                return (a, b);
            }
        }
        (a, (a + 1) % len)
    }
}

/// The power of two choices over weighted endpoints: of two distinct endpoints drawn as
/// [`Candidates`] says, the one with the lower cost (the first on a tie).
fn p2c(candidates: &Candidates, env: &mut dyn Env, cost: impl Fn(&EndpointState) -> u128) -> Option<u32> {
    match index(candidates.len) {
        0 => None,
        1 => Some(0),
        len => {
            let (a, b) = candidates.two(len, env);
            let (sa, sb) = env.pair(a, b);
            Some(if cost(&sb) < cost(&sa) { b } else { a })
        }
    }
}

/// Least request by the power of two choices: of two random endpoints (drawn in proportion to
/// weight when weights differ), the one with fewer in-flight requests.
#[derive(Debug, Default)]
pub struct LeastRequest {
    candidates: Candidates,
}

impl Balancer for LeastRequest {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> {
        self.candidates = Candidates::of(snapshot);
        Ok(Mode::PerRequest)
    }

    fn pick(&mut self, _request: &Request, env: &mut dyn Env) -> Option<u32> {
        p2c(&self.candidates, env, |s| u128::from(s.in_flight) + 1)
    }
}

/// P2C + PeakEWMA configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PeakEwmaConfig {
    /// Latency assumed for an endpoint with no measurement yet, in milliseconds.
    default_rtt_ms: f64,
}

impl Default for PeakEwmaConfig {
    fn default() -> Self {
        Self { default_rtt_ms: 5.0 }
    }
}

/// P2C + PeakEWMA (Finagle, Linkerd): of two random endpoints (drawn in proportion to weight
/// when weights differ), the one with the lower cost = latency EWMA × (in-flight + 1). The
/// host keeps the peak-sensitive EWMA (its decay is a host setting); unmeasured endpoints
/// count `default_rtt_ms`.
#[derive(Debug)]
pub struct PeakEwma {
    candidates: Candidates,
    default_rtt: u64,
}

impl PeakEwma {
    /// `{"default_rtt_ms": 5}`.
    ///
    /// # Errors
    /// Unknown keys; a negative or non-finite default.
    pub fn new(config: &str) -> Result<Self, String> {
        let c: PeakEwmaConfig = parse_config(config)?;
        if !c.default_rtt_ms.is_finite() || c.default_rtt_ms < 0.0 {
            return Err(format!("default_rtt_ms must be a non-negative number, not {}", c.default_rtt_ms));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked finite and >= 0
        let default_rtt = (c.default_rtt_ms * 1e6) as u64;
        Ok(Self { candidates: Candidates::default(), default_rtt })
    }

    fn cost(&self, s: &EndpointState) -> u128 {
        let ewma = match s.latency_ewma {
            0 => self.default_rtt,
            v => v,
        };
        u128::from(ewma) * (u128::from(s.in_flight) + 1)
    }
}

impl Balancer for PeakEwma {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> {
        self.candidates = Candidates::of(snapshot);
        Ok(Mode::PerRequest)
    }

    fn pick(&mut self, _request: &Request, env: &mut dyn Env) -> Option<u32> {
        p2c(&self.candidates, env, |s| self.cost(s))
    }
}

/// Ring hash configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RingHashConfig {
    /// Ring points in total (at least one per endpoint), spread by weight.
    ring_size: u32,
    /// Bounded load factor c (Mirrokni et al.): an endpoint takes a key only while its
    /// in-flight count is below c × (total + 1) / endpoints; 0 turns the bound off.
    balance_factor: f64,
}

impl Default for RingHashConfig {
    fn default() -> Self {
        Self { ring_size: 4096, balance_factor: 1.25 }
    }
}

/// Builds a weighted consistent-hash ring over the snapshot, sorted by hash.
fn build_ring(snapshot: &Snapshot, ring_size: u32) -> Vec<RingPoint> {
    let total: u64 = snapshot.endpoints.iter().map(|e| u64::from(e.weight)).sum();
    let mut ring = Vec::new();
    if total == 0 {
        return ring;
    }
    for (i, e) in snapshot.endpoints.iter().enumerate() {
        let replicas = (u64::from(ring_size) * u64::from(e.weight) / total).max(1);
        let base = hash_str(&e.id);
        for r in 0..replicas {
            ring.push(RingPoint { hash: mix64(base ^ mix64(r)), endpoint: index(i) });
        }
    }
    ring.sort_unstable_by_key(|p| (p.hash, p.endpoint));
    ring
}

/// Consistent hashing on a weighted ring (keys stay on their endpoint while membership
/// changes move only the keys of the endpoints that changed), with bounded load: an
/// endpoint at its share of the in-flight requests passes the key on along the ring, and so
/// does an endpoint the request already tried (a retry).
#[derive(Debug)]
pub struct RingHash {
    ring: Vec<RingPoint>,
    len: u32,
    ring_size: u32,
    factor: f64,
}

impl RingHash {
    /// `{"ring_size": 4096, "balance_factor": 1.25}`.
    ///
    /// # Errors
    /// Unknown keys; a ring size outside 1..=1,000,000; a factor that is neither 0 nor > 1.
    pub fn new(config: &str) -> Result<Self, String> {
        let c: RingHashConfig = parse_config(config)?;
        if !(1..=1_000_000).contains(&c.ring_size) {
            return Err(format!("ring_size must be within 1..=1000000, not {}", c.ring_size));
        }
        if !(c.balance_factor == 0.0 || (c.balance_factor > 1.0 && c.balance_factor.is_finite())) {
            return Err(format!("balance_factor must be 0 (off) or greater than 1, not {}", c.balance_factor));
        }
        Ok(Self { ring: Vec::new(), len: 0, ring_size: c.ring_size, factor: c.balance_factor })
    }
}

/// The first ring position at or after `key`, wrapping.
fn ring_position(ring: &[RingPoint], key: u64) -> usize {
    let p = ring.partition_point(|p| p.hash < key);
    if p == ring.len() { 0 } else { p }
}

impl Balancer for RingHash {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> {
        self.ring = build_ring(snapshot, self.ring_size);
        self.len = index(snapshot.endpoints.len());
        Ok(Mode::PerRequest)
    }

    fn pick(&mut self, request: &Request, env: &mut dyn Env) -> Option<u32> {
        if self.ring.is_empty() {
            return None;
        }
        let key = match request.hash_key {
            Some(k) => k,
            None => env.random(),
        };
        let start = ring_position(&self.ring, key);
        // A retry walks on past the endpoints the request tried (the same neighbour every
        // time for one key); a first attempt reads nothing more.
        let tried = if env.attempt() == 0 { Vec::new() } else { env.tried() };
        let points = (0..self.ring.len()).map(|step| self.ring[(start + step) % self.ring.len()].endpoint);
        let mut untried = points.filter(|e| !tried.contains(e));
        if self.factor == 0.0 {
            return untried.next().or(Some(self.ring[start].endpoint));
        }
        // The capacity is at least 1, so an idle endpoint takes the key without the total
        // being read (one host call fewer in wasm on the common, unloaded path).
        let mut capacity = None;
        let mut first = None;
        for endpoint in untried {
            first = first.or(Some(endpoint));
            let load = u64::from(env.in_flight(endpoint));
            if load == 0 {
                return Some(endpoint);
            }
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let cap = *capacity.get_or_insert_with(|| {
                ((self.factor * (env.total_in_flight() as f64 + 1.0)) / f64::from(self.len)).ceil() as u64
            });
            if load < cap {
                return Some(endpoint);
            }
        }
        first.or(Some(self.ring[start].endpoint))
    }
}

/// The size of the Maglev lookup table (prime, as the paper requires).
pub const MAGLEV_TABLE_SIZE: u32 = 65_537;

/// Maglev hashing (Eisenbud et al., NSDI'16), weighted: builds the 65537-entry lookup table
/// at update and hands it to the host as a table, so picks run natively.
#[derive(Debug, Default)]
pub struct Maglev;

impl Maglev {
    /// The lookup table for these endpoints (empty when there are none).
    #[must_use]
    pub fn table(snapshot: &Snapshot) -> Vec<u32> {
        let n = snapshot.endpoints.len();
        let m = u64::from(MAGLEV_TABLE_SIZE);
        if n == 0 {
            return Vec::new();
        }
        let perm: Vec<(u64, u64)> = snapshot
            .endpoints
            .iter()
            .map(|e| {
                let h = hash_str(&e.id);
                (h % m, mix64(h ^ 0x5bd1_e995) % (m - 1) + 1)
            })
            .collect();
        let max_weight = snapshot.endpoints.iter().map(|e| e.weight).max().unwrap_or(1).max(1);
        let mut credit = vec![0u64; n];
        let mut next = vec![0u64; n];
        let mut table = vec![u32::MAX; MAGLEV_TABLE_SIZE as usize];
        let mut filled = 0u64;
        while filled < m {
            for i in 0..n {
                credit[i] += u64::from(snapshot.endpoints[i].weight);
                if credit[i] < u64::from(max_weight) {
                    continue;
                }
                credit[i] -= u64::from(max_weight);
                let (offset, skip) = perm[i];
                loop {
                    let slot = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = index(i);
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break;
                }
            }
        }
        table
    }
}

impl Balancer for Maglev {
    fn update(&mut self, snapshot: &Snapshot, _env: &mut dyn Env) -> Result<Mode, String> {
        if snapshot.endpoints.iter().all(|e| e.weight == 0) {
            return Ok(Mode::Table(Table::Maglev(Vec::new())));
        }
        Ok(Mode::Table(Table::Maglev(Self::table(snapshot))))
    }

    fn pick(&mut self, _request: &Request, _env: &mut dyn Env) -> Option<u32> {
        // Table mode: the host never calls pick.
        None
    }
}

/// Header routing configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct HeaderRouteConfig {
    /// The request header whose value selects endpoints.
    header: String,
    /// What the header value is matched against: `version`, `zone`, or `metadata:KEY`.
    field: String,
}

impl Default for HeaderRouteConfig {
    fn default() -> Self {
        Self { header: "x-version".into(), field: "version".into() }
    }
}

/// Header-based routing: a request carrying the header goes round robin among the endpoints
/// whose field (version, zone or a metadata key) equals the header's value; other requests,
/// and requests whose value matches nothing, go round robin among all.
#[derive(Debug)]
pub struct HeaderRoute {
    header: String,
    field: String,
    groups: BTreeMap<String, (Vec<u32>, usize)>,
    all: RoundRobin,
}

impl HeaderRoute {
    /// `{"header": "x-version", "field": "version"}`.
    ///
    /// # Errors
    /// Unknown keys, an empty header, or a field other than `version`, `zone`, `metadata:KEY`.
    pub fn new(config: &str) -> Result<Self, String> {
        let c: HeaderRouteConfig = parse_config(config)?;
        if c.header.is_empty() {
            return Err("header must not be empty".into());
        }
        if !(c.field == "version"
            || c.field == "zone"
            || c.field.strip_prefix("metadata:").is_some_and(|k| !k.is_empty()))
        {
            return Err(format!("field must be version, zone or metadata:KEY, not {:?}", c.field));
        }
        Ok(Self { header: c.header, field: c.field, groups: BTreeMap::new(), all: RoundRobin::default() })
    }
}

impl Balancer for HeaderRoute {
    fn update(&mut self, snapshot: &Snapshot, env: &mut dyn Env) -> Result<Mode, String> {
        self.groups.clear();
        for (i, e) in snapshot.endpoints.iter().enumerate() {
            let value = match self.field.strip_prefix("metadata:") {
                Some(key) => e.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()),
                None if self.field == "zone" => Some(e.zone.as_str()),
                None => Some(e.version.as_str()),
            };
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                self.groups.entry(v.to_owned()).or_default().0.push(index(i));
            }
        }
        self.all.update(snapshot, env)
    }

    fn pick(&mut self, request: &Request, env: &mut dyn Env) -> Option<u32> {
        if let Some(value) = env.request_header(&self.header)
            && let Some((members, next)) = self.groups.get_mut(&value)
        {
            let i = members[*next % members.len()];
            *next = next.wrapping_add(1);
            return Some(i);
        }
        self.all.pick(request, env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Endpoint, TestEnv};

    fn snapshot(weights: &[u32]) -> Snapshot {
        Snapshot {
            service: "public/DEFAULT_GROUP/svc".into(),
            revision: 1,
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, &w)| Endpoint {
                    id: format!("10.0.0.{i}:80"),
                    address: format!("10.0.0.{i}:80"),
                    weight: w,
                    healthy: true,
                    version: if i % 4 == 0 { "v2".into() } else { "v1".into() },
                    ..Endpoint::default()
                })
                .collect(),
            protection_active: false,
        }
    }

    /// P2C draws its candidates by weight when weights differ: twenty endpoints holding 2% of
    /// the weight (a zone a scheduler spills 2% to) get about that at equal load, not the
    /// 95% a uniform draw would give them (the first holds the rest).
    #[test]
    fn p2c_draws_candidates_by_weight() {
        let mut weights = vec![9800; 1];
        weights.extend([10; 20]);
        for b in [&mut LeastRequest::default() as &mut dyn Balancer, &mut PeakEwma::new("{}").unwrap()] {
            let mut env = TestEnv::seeded(7);
            b.update(&snapshot(&weights), &mut env).unwrap();
            let c = counts(b, &mut env, weights.len(), 10_000);
            let small: usize = c[1..].iter().sum();
            assert!((100..400).contains(&small), "{small} of 10000 picks went to the 2% endpoints: {c:?}");
        }
    }

    fn counts(b: &mut dyn Balancer, env: &mut TestEnv, n: usize, picks: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for k in 0..picks {
            let req = Request { hash_key: Some(mix64(k as u64)) };
            c[b.pick(&req, env).expect("an endpoint") as usize] += 1;
        }
        c
    }

    #[test]
    fn round_robin_visits_each_in_turn() {
        let mut env = TestEnv::seeded(7);
        let mut b = RoundRobin::new("{}").unwrap();
        assert_eq!(b.pick(&Request::default(), &mut env), None, "no snapshot, no endpoint");
        b.update(&snapshot(&[1, 1, 1, 1]), &mut env).unwrap();
        let first = b.pick(&Request::default(), &mut env).unwrap();
        let next: Vec<u32> = (0..4).map(|_| b.pick(&Request::default(), &mut env).unwrap()).collect();
        assert_eq!(next, (1..=4).map(|k| (first + k) % 4).collect::<Vec<_>>());
        b.update(&snapshot(&[1, 1]), &mut env).unwrap();
        assert!(b.pick(&Request::default(), &mut env).unwrap() < 2, "shrinking keeps picks in range");
    }

    #[test]
    fn weighted_is_proportional_and_smooth() {
        let mut env = TestEnv::seeded(1);
        let mut b = SmoothWeighted::new("").unwrap();
        b.update(&snapshot(&[5, 1, 1]), &mut env).unwrap();
        let seq: Vec<u32> = (0..7).map(|_| b.pick(&Request::default(), &mut env).unwrap()).collect();
        assert_eq!(seq.iter().filter(|&&i| i == 0).count(), 5, "{seq:?}");
        assert!(seq.windows(4).all(|w| w.contains(&0)), "no long gap for the heavy one: {seq:?}");
        assert_eq!(counts(&mut b, &mut env, 3, 7000), vec![5000, 1000, 1000]);
        b.update(&snapshot(&[0, 3]), &mut env).unwrap();
        assert_eq!(counts(&mut b, &mut env, 2, 100), vec![0, 100], "weight 0 takes nothing");
    }

    #[test]
    fn random_follows_weights() {
        let mut env = TestEnv::seeded(3);
        let mut b = RandomWeighted::new("{}").unwrap();
        b.update(&snapshot(&[1, 3]), &mut env).unwrap();
        let c = counts(&mut b, &mut env, 2, 40_000);
        assert!((9_000..11_000).contains(&c[0]), "{c:?}");
        b.update(&snapshot(&[2, 2, 2, 2]), &mut env).unwrap();
        let c = counts(&mut b, &mut env, 4, 40_000);
        assert!(c.iter().all(|&n| (9_000..11_000).contains(&n)), "{c:?}");
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let mut env = TestEnv::seeded(5);
        env.in_flight = vec![0, 50, 0, 0];
        let mut b = LeastRequest::new("{}").unwrap();
        b.update(&snapshot(&[1, 1, 1, 1]), &mut env).unwrap();
        let c = counts(&mut b, &mut env, 4, 10_000);
        assert_eq!(c[1], 0, "the busy endpoint loses every comparison: {c:?}");
    }

    #[test]
    fn peak_ewma_prefers_the_fast_endpoint() {
        let mut env = TestEnv::seeded(9);
        env.ewma = vec![1_000_000, 10_000_000, 1_000_000, 1_000_000];
        let mut b = PeakEwma::new(r#"{"default_rtt_ms": 2}"#).unwrap();
        b.update(&snapshot(&[1, 1, 1, 1]), &mut env).unwrap();
        let c = counts(&mut b, &mut env, 4, 10_000);
        assert_eq!(c[1], 0, "{c:?}");
        assert!(PeakEwma::new(r#"{"default_rtt_ms": -1}"#).is_err());
        assert!(PeakEwma::new(r#"{"decay": 1}"#).unwrap_err().contains("unknown field"));
    }

    #[test]
    fn ring_hash_is_sticky_and_moves_few_keys() {
        let mut env = TestEnv::seeded(11);
        let mut b = RingHash::new(r#"{"balance_factor": 0}"#).unwrap();
        let eight = snapshot(&[1; 8]);
        b.update(&eight, &mut env).unwrap();
        let keys: Vec<u64> = (0..2000).map(mix64).collect();
        let before: Vec<String> = keys
            .iter()
            .map(|&k| eight.endpoints[b.pick(&Request { hash_key: Some(k) }, &mut env).unwrap() as usize].id.clone())
            .collect();
        let again: Vec<String> = keys
            .iter()
            .map(|&k| eight.endpoints[b.pick(&Request { hash_key: Some(k) }, &mut env).unwrap() as usize].id.clone())
            .collect();
        assert_eq!(before, again, "the same key goes to the same endpoint");
        let mut nine = snapshot(&[1; 9]);
        nine.endpoints.rotate_left(3); // order does not matter, ids do
        b.update(&nine, &mut env).unwrap();
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|&(&k, id)| {
                nine.endpoints[b.pick(&Request { hash_key: Some(k) }, &mut env).unwrap() as usize].id != *id
            })
            .count();
        assert!(moved < 2000 * 2 / 9, "adding one of nine endpoints moved {moved} of 2000 keys");
    }

    #[test]
    fn ring_hash_bounded_load_passes_keys_on() {
        let mut env = TestEnv::seeded(13);
        let mut b = RingHash::new("{}").unwrap();
        b.update(&snapshot(&[1; 4]), &mut env).unwrap();
        let key = Request { hash_key: Some(42) };
        let home = b.pick(&key, &mut env).unwrap();
        env.in_flight = vec![0; 4];
        env.in_flight[home as usize] = 10;
        let other = b.pick(&key, &mut env).unwrap();
        assert_ne!(other, home, "an endpoint over c x average passes the key on");
        assert!(RingHash::new(r#"{"balance_factor": 0.5}"#).is_err());
    }

    #[test]
    fn maglev_table_is_full_weighted_and_stable() {
        let snap = snapshot(&[1, 1, 2, 1]);
        let table = Maglev::table(&snap);
        assert_eq!(table.len(), MAGLEV_TABLE_SIZE as usize);
        let mut c = [0usize; 4];
        for &i in &table {
            c[i as usize] += 1;
        }
        assert!(c[2] > c[0] * 17 / 10 && c[2] < c[0] * 23 / 10, "weight 2 gets about twice: {c:?}");
        let mut fewer = snap.clone();
        fewer.endpoints.remove(3);
        let t2 = Maglev::table(&fewer);
        let kept = table.iter().zip(&t2).filter(|&(&a, &b)| a != 3 && a == b).count();
        let owned = table.iter().filter(|&&a| a != 3).count();
        assert!(kept * 100 / owned >= 90, "removing one endpoint keeps most slots: {kept}/{owned}");
        assert_eq!(
            Maglev.update(&Snapshot::default(), &mut TestEnv::default()).unwrap(),
            Mode::Table(Table::Maglev(vec![]))
        );
    }

    #[test]
    fn header_route_selects_by_version() {
        let mut env = TestEnv::seeded(17);
        let mut b = HeaderRoute::new("{}").unwrap();
        let snap = snapshot(&[1; 8]);
        b.update(&snap, &mut env).unwrap();
        env.headers = vec![("X-Version".into(), "v2".into())];
        for _ in 0..20 {
            let i = b.pick(&Request::default(), &mut env).unwrap();
            assert_eq!(snap.endpoints[i as usize].version, "v2");
        }
        env.headers = vec![("x-version".into(), "v9".into())];
        let c = counts(&mut b, &mut env, 8, 800);
        assert!(c.iter().all(|&n| n == 100), "unmatched values spread over all: {c:?}");
        assert!(HeaderRoute::new(r#"{"field": "color"}"#).is_err());
    }

    #[test]
    fn every_builtin_is_constructible_and_unknown_names_list_the_valid_ones() {
        for name in crate::BALANCERS {
            crate::balancer(name, "{}").unwrap();
        }
        let e = crate::balancer("fastest", "{}").err().unwrap();
        assert!(e.contains("round-robin") && e.contains("maglev"), "{e}");
    }
}
