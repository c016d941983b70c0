//! A progressive rollout tried in simulation (`sextant bench strategies --rollout PLAN
//! --candidate STRATEGY`): the run's strategy is the stable version, the candidate runs beside
//! it in the simulated gateway's balancer exactly as a rollout runs it on a real one
//! ([`TrialChange`] on the router), and the servers' judge ([`Rollout::judge`]) decides each
//! step on the gateway's own per-version windows, once a simulated second. So a plan and its
//! criteria can be tried on a scenario before they touch traffic.

use std::time::Duration;

use sextant_core::rollout::{Decision, GatewayReport, Plan, Rollout, RolloutState, Verdict};
use sextant_core::{PluginName, PluginVersion, ServiceKey};
use sextant_gateway::Router;
use sextant_plugin::{ShadowTally, Trial, TrialChange};

use crate::strategy::Strategy;

/// How often the simulated servers judge the rollout.
const JUDGE_EVERY: Duration = Duration::from_secs(1);

/// A rollout to try: its plan and the candidate strategy.
#[derive(Debug, Clone)]
pub struct RolloutTrial {
    /// The plan and its criteria.
    pub plan: Plan,
    /// The candidate (its balancer; a scheduler it names is not rolled out).
    pub candidate: Strategy,
}

/// What a simulated rollout did.
#[derive(Debug, Clone)]
pub struct RolloutRun {
    /// Where it ended (or stood when the run ended).
    pub state: RolloutState,
    /// The step it ended at (index into the plan).
    pub step: usize,
    /// Its decisions; `at_unix_ms` is simulated time since the run began.
    pub decisions: Vec<Decision>,
    /// How the candidate's shadow picks compared with the stable version's, when it still
    /// ran at the end of the run.
    pub shadow: Option<ShadowTally>,
}

/// Drives one rollout inside a simulation run.
pub(crate) struct Driver {
    rollout: Rollout,
    candidate: Strategy,
    next_judge_ns: u64,
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

impl Driver {
    /// Starts `trial` on `service` of `router` at simulated time 0.
    pub(crate) fn start(router: &Router, service: &ServiceKey, trial: &RolloutTrial) -> Result<Self, String> {
        let candidate = PluginVersion {
            sha256: sextant_core::sha256_hex(trial.candidate.name.as_bytes()),
            size: 0,
            config: String::new(),
            loaded_at_unix_ms: 0,
        };
        let rollout = Rollout::start(candidate, trial.plan.clone(), 0, "sim").map_err(|e| e.to_string())?;
        let driver = Self { rollout, candidate: trial.candidate.clone(), next_judge_ns: JUDGE_EVERY.as_nanos() as u64 };
        let start = TrialChange::Start(Trial::of(&driver.name(), &driver.rollout));
        router.change_trial(service, &start, Some(driver.candidate.balancer.clone()))?;
        Ok(driver)
    }

    fn name(&self) -> PluginName {
        PluginName::new("candidate").unwrap_or_else(|_| unreachable!("a valid name"))
    }

    /// At simulated time `now_ns`: judges the step when it is time, and applies the decision
    /// to the router as every host would.
    pub(crate) fn tick(&mut self, router: &Router, service: &ServiceKey, now_ns: u64) -> Result<(), String> {
        if now_ns < self.next_judge_ns || !self.rollout.state.is_live() {
            return Ok(());
        }
        self.next_judge_ns = now_ns + JUDGE_EVERY.as_nanos() as u64;
        let Some((step, stable, candidate)) = router.trial_windows(service) else { return Ok(()) };
        if step != self.rollout.step {
            return Ok(());
        }
        let report = GatewayReport { host: "sim".into(), stable, candidate, refused: None, faulted: None };
        let now = ms(now_ns);
        match self.rollout.judge(&[report], now) {
            Verdict::Wait(_) => Ok(()),
            Verdict::Advance(e) => {
                self.rollout.advance(now, "judge@sim", "step passed", Some(e)).map_err(|e| e.to_string())?;
                let change = if self.rollout.state == RolloutState::Promoted {
                    TrialChange::Promote
                } else {
                    TrialChange::Step(Trial::of(&self.name(), &self.rollout))
                };
                router.change_trial(service, &change, None).map(drop)
            }
            Verdict::RollBack(e) => {
                self.rollout.roll_back(now, "judge@sim", e).map_err(|e| e.to_string())?;
                router.change_trial(service, &TrialChange::Stop, None).map(drop)
            }
            Verdict::Pause(why) => self.rollout.pause(now, "judge@sim", &why).map_err(|e| e.to_string()),
        }
    }

    /// What it did.
    pub(crate) fn finish(self, router: &Router, service: &ServiceKey) -> RolloutRun {
        let shadow = router.status(service).and_then(|s| s.candidate).map(|c| c.shadow);
        RolloutRun { state: self.rollout.state, step: self.rollout.step, decisions: self.rollout.log, shadow }
    }
}

impl RolloutRun {
    /// One line per decision: `12.0 s canary (step 2): step passed …`.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        self.decisions
            .iter()
            .map(|d| {
                let figures = d.evidence.as_ref().map_or(String::new(), |e| format!(" [{e}]"));
                #[allow(clippy::cast_precision_loss)]
                let at = d.at_unix_ms as f64 / 1000.0;
                format!("{at:.1} s {} (step {}): {}{figures}", d.state, d.step + 1, d.reason)
            })
            .collect()
    }
}
