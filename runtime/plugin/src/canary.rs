//! A candidate version beside a balancer slot's active (stable) one, as a progressive
//! rollout runs it: [`Split`] says what share of the picks it makes, and while it only
//! shadows, [`ShadowTally`] counts how its picks compare with the stable version's.
//!
//! - **Canary** (`Split::Canary`): a pick goes to the candidate when a draw below the
//!   share's thousandths says so. The draw is the request's affinity hash when it has one
//!   (mixed with a salt, so the same key always lands on the same version and a user does not
//!   flip between them), the candidate's own sequence otherwise (one relaxed atomic add).
//! - **Shadow** (`Split::Shadow`): every pick is the stable version's; one pick in
//!   [`SHADOW_SAMPLE_EVERY`] also asks the candidate, on the same request and
//!   published list, and only counts its answer. A shadow pick costs one more plugin call
//!   on that share of the requests and nothing on the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use serde::Serialize;
use sextant_builtins::mix64;

use crate::VersionStatus;
use crate::version::Version;

/// One pick in this many is also made by a shadowing candidate.
pub const SHADOW_SAMPLE_EVERY: u64 = 8;
/// Endpoints a shadow tally keeps apart; picks of endpoints beyond them are counted in
/// the totals only.
pub const SHADOW_MAX_ENDPOINTS: usize = 1024;
/// Mixed into affinity hashes before they are drawn, so the canary's split is independent
/// of the balancers' own use of the hash (a ring's position, a Maglev slot).
const SALT: u64 = 0x5ce7_a47c_a4a7_2d1b;

/// How a candidate takes part in the picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum Split {
    /// It answers a sample of the picks beside the stable version, routing none.
    Shadow,
    /// It makes this many thousandths of the picks (1..=1000).
    Canary {
        /// Thousandths of the picks.
        per_mille: u16,
    },
}

/// How a shadowing candidate's picks compare with the stable version's, since it was set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShadowTally {
    /// Picks both versions made.
    pub calls: u64,
    /// Of those, picks where both chose the same endpoint.
    pub agreed: u64,
    /// Picks the stable version answered and the candidate did not (no endpoint).
    pub candidate_none: u64,
    /// Per endpoint id: how often the stable version and the candidate chose it.
    pub picks: BTreeMap<String, (u64, u64)>,
}

impl ShadowTally {
    /// Counts one pair of answers (endpoint ids).
    pub(crate) fn count(&mut self, stable: Option<&str>, candidate: Option<&str>) {
        self.calls += 1;
        if stable == candidate {
            self.agreed += 1;
        }
        if stable.is_some() && candidate.is_none() {
            self.candidate_none += 1;
        }
        for (id, which) in [(stable, 0), (candidate, 1)] {
            let Some(id) = id else { continue };
            let room = self.picks.len() < SHADOW_MAX_ENDPOINTS;
            let entry = match self.picks.get_mut(id) {
                Some(e) => e,
                None if room => self.picks.entry(id.to_owned()).or_default(),
                None => continue,
            };
            if which == 0 {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
    }

    /// The share of picks where both versions agreed (1 with no pick).
    #[must_use]
    pub fn agreement(&self) -> f64 {
        if self.calls == 0 { 1.0 } else { self.agreed as f64 / self.calls as f64 }
    }
}

/// A slot's candidate: its version (built, self-tested and warmed like any load), its split
/// and, while it shadows, its tally.
pub(crate) struct Candidate {
    pub(crate) version: Arc<Version>,
    pub(crate) split: Split,
    pub(crate) tally: Mutex<ShadowTally>,
    /// The draws of picks without an affinity key and of shadow samples: a sequence, so a
    /// run on one thread (the simulator's) splits the same way every time.
    pub(crate) draws: AtomicU64,
}

/// What a slot's candidate is and has done.
#[derive(Debug, Clone, Serialize)]
pub struct CandidateStatus {
    /// Its version (calls, faults, fallbacks, call times).
    pub version: VersionStatus,
    /// Its split.
    pub split: Split,
    /// How its shadow picks compared with the stable version's.
    pub shadow: ShadowTally,
}

impl Candidate {
    /// Whether a pick with affinity `hash_key` goes to the candidate.
    pub(crate) fn takes(&self, hash_key: Option<u64>) -> bool {
        let Split::Canary { per_mille } = self.split else { return false };
        let draw = mix64(hash_key.unwrap_or_else(|| self.draws.fetch_add(1, Relaxed)) ^ SALT);
        draw % 1000 < u64::from(per_mille)
    }

    /// Whether this pick is also made by the shadowing candidate.
    pub(crate) fn shadows(&self) -> bool {
        self.draws.fetch_add(1, Relaxed).is_multiple_of(SHADOW_SAMPLE_EVERY)
    }

    pub(crate) fn status(&self) -> CandidateStatus {
        CandidateStatus { version: self.version.status(), split: self.split, shadow: self.tally.lock().clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_agreement_and_bounds_its_endpoints() {
        let mut t = ShadowTally::default();
        t.count(Some("a"), Some("a"));
        t.count(Some("a"), Some("b"));
        t.count(Some("b"), None);
        assert_eq!((t.calls, t.agreed, t.candidate_none), (3, 1, 1));
        assert_eq!(t.picks["a"], (2, 1));
        assert_eq!(t.picks["b"], (1, 1));
        assert!((t.agreement() - 1.0 / 3.0).abs() < 1e-9);
        for i in 0..SHADOW_MAX_ENDPOINTS * 2 {
            t.count(Some(&format!("e{i}")), None);
        }
        assert_eq!(t.picks.len(), SHADOW_MAX_ENDPOINTS);
    }
}
