//! A rollout tried in simulation: the servers' judge on the simulated gateway's figures
//! promotes a better candidate and rolls a worse one back, the same seed gives the same
//! decisions, and a shadowing candidate's picks match what the same policy does alone.

use sextant_core::rollout::RolloutState;
use sextant_plugin::{HostConfig, PluginHost};
use sextant_sim::engine::run_with;
use sextant_sim::{RolloutTrial, scenario, strategy};

fn host() -> PluginHost {
    PluginHost::new(HostConfig { workers: 1, ..HostConfig::default() }).expect("host")
}

fn trial(host: &PluginHost, plan: &str, candidate: &str) -> RolloutTrial {
    RolloutTrial {
        plan: plan.parse().expect("plan"),
        candidate: strategy::build(host, candidate, &[]).expect("strategy"),
    }
}

fn run(
    host: &PluginHost,
    scenario: &str,
    stable: &str,
    trial: &RolloutTrial,
    seed: u64,
) -> (sextant_sim::RunResult, sextant_sim::RolloutRun) {
    let sc = scenario::by_name(scenario).expect("scenario");
    let st = strategy::build(host, stable, &[]).expect("strategy");
    let r = run_with(host, &sc, &st, seed, 1.0, Some(trial)).expect("run");
    let rollout = r.rollout.clone().expect("the rollout ran");
    (r, rollout)
}

#[test]
fn a_better_candidate_is_promoted_and_a_worse_one_rolled_back_the_same_for_the_same_seed() {
    let host = host();
    // One backend of 11 turns 10x slower from 2 s to 8 s of the run.
    let better = trial(&host, "10%:2s,50%:2s min-requests=200", "peak-ewma");
    let (_, promoted) = run(&host, "slow-node", "round-robin", &better, 1);
    assert_eq!(promoted.state, RolloutState::Promoted, "{:#?}", promoted.lines());
    let (_, again) = run(&host, "slow-node", "round-robin", &better, 1);
    assert_eq!(promoted.lines(), again.lines(), "the same seed decides the same");

    let worse = trial(&host, "10%:3s,50%:3s min-requests=200", "round-robin");
    let (_, rolled_back) = run(&host, "slow-node", "peak-ewma", &worse, 1);
    assert_eq!(rolled_back.state, RolloutState::RolledBack, "{:#?}", rolled_back.lines());
    let last = rolled_back.decisions.last().unwrap();
    let evidence = last.evidence.as_ref().expect("the judge's evidence");
    assert!(evidence.failed.iter().any(|f| f.contains("p99")), "{:?}", evidence.failed);
    assert!(last.at_unix_ms >= 2_000, "rolled back once the slow node slowed, not before: {:#?}", rolled_back.lines());
}

#[test]
fn a_shadow_candidate_picks_as_the_same_policy_does_alone() {
    let host = host();
    // Weighted over 10 backends of 2, 4 or 8 workers, weights proportional to capacity: in
    // shadow beside round robin, its picks spread as a weighted balancer's alone do.
    let shadow = trial(&host, "shadow:1h", "weighted");
    let (_, rollout) = run(&host, "heterogeneous", "round-robin", &shadow, 1);
    assert_eq!(rollout.state, RolloutState::Shadow);
    let tally = rollout.shadow.expect("the tally of a candidate still shadowing");
    assert!(tally.calls > 1_000, "{} shadow picks", tally.calls);
    let sc = scenario::by_name("heterogeneous").unwrap();
    let alone =
        sextant_sim::engine::run(&host, &sc, &strategy::build(&host, "weighted", &[]).unwrap(), 1, 1.0).unwrap();
    let total_alone: u64 = alone.per_backend.iter().sum();
    for (i, b) in sc.backends.iter().enumerate() {
        let (_, candidate) = tally.picks.get(&b.id).copied().unwrap_or_default();
        #[allow(clippy::cast_precision_loss)]
        let (shadow_share, alone_share) =
            (candidate as f64 / tally.calls as f64, alone.per_backend[i] as f64 / total_alone as f64);
        assert!(
            (shadow_share - alone_share).abs() <= 0.02,
            "{}: {shadow_share:.3} of the shadow picks, {alone_share:.3} alone (tolerance 0.02)",
            b.id
        );
    }
    // The same policy in shadow of itself, on keyed requests: the same answer every time.
    let same = trial(&host, "shadow:1h", "ring-hash");
    let (_, rollout) = run(&host, "hot-keys", "ring-hash", &same, 1);
    let tally = rollout.shadow.expect("tally");
    assert!(tally.calls > 1_000);
    assert_eq!(tally.agreed, tally.calls, "two ring hashes agree on every key");
}
