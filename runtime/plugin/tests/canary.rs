//! A candidate beside a balancer slot's active version: the canary's share and its
//! stickiness, shadow picks that route nothing, a faulty candidate leaving on its own, and
//! promotion.

use std::collections::HashMap;
use std::time::Duration;

use sextant_builtins::{Endpoint, Snapshot, mix64};
use sextant_plugin::{
    BalancerSlot, HostConfig, LoadError, PickRequest, PluginHost, PluginSpec, SHADOW_SAMPLE_EVERY, Split,
};

fn host() -> PluginHost {
    PluginHost::new(HostConfig {
        workers: 1,
        memory_limit: 16 << 20,
        max_instances: 100,
        pick_deadline: Duration::from_millis(5),
        update_deadline: Duration::from_millis(500),
        ..HostConfig::default()
    })
    .expect("engine")
}

fn snapshot(n: usize) -> Snapshot {
    Snapshot {
        service: "public/DEFAULT_GROUP/shop".into(),
        revision: 3,
        protection_active: false,
        endpoints: (0..n)
            .map(|i| Endpoint {
                id: format!("e{i}"),
                address: format!("10.2.0.{i}:80"),
                weight: 10,
                healthy: true,
                zone: String::new(),
                version: String::new(),
                metadata: Vec::new(),
            })
            .collect(),
    }
}

fn slot(host: &PluginHost, active: &str) -> BalancerSlot {
    let slot = BalancerSlot::new(host, "svc", PluginSpec::builtin(active)).unwrap();
    slot.set_snapshot(snapshot(8));
    slot
}

#[test]
fn a_canary_takes_its_share_and_a_key_stays_on_one_version() {
    let host = host();
    let slot = slot(&host, "round-robin");
    let stable = slot.active_version();
    let candidate = slot.set_candidate(PluginSpec::builtin("ring-hash"), Split::Canary { per_mille: 100 }).unwrap();
    assert_ne!(candidate.id, stable);

    let n = 20_000;
    let mut by_version: HashMap<u64, u32> = HashMap::new();
    for _ in 0..n {
        let p = slot.pick(&mut PickRequest::default()).expect("an endpoint");
        *by_version.entry(p.version).or_default() += 1;
    }
    assert_eq!(by_version.len(), 2, "{by_version:?}");
    let share = f64::from(by_version[&candidate.id]) / f64::from(n);
    assert!((0.08..0.12).contains(&share), "the candidate made {share:.3} of the picks, not about 0.1");
    assert_eq!(slot.candidate().unwrap().version.counters.counts.calls, u64::from(by_version[&candidate.id]));

    // A request with an affinity key goes to the same version every time.
    let mut on_candidate = 0;
    for k in 0..1_000u64 {
        let pick = |_| slot.pick(&mut PickRequest { hash_key: Some(mix64(k)), ..PickRequest::default() }).unwrap();
        let first = pick(0);
        for again in 1..5 {
            let p = pick(again);
            assert_eq!(p.version, first.version, "key {k} moved between versions");
            if p.version == candidate.id {
                assert_eq!(p.index, first.index, "ring hash keeps key {k} on one endpoint");
            }
        }
        on_candidate += u32::from(first.version == candidate.id);
    }
    assert!((50..150).contains(&on_candidate), "{on_candidate} of 1000 keys on the candidate, not about 100");

    // The next step: a bigger share of the same candidate (counters kept).
    let calls = slot.candidate().unwrap().version.counters.counts.calls;
    assert!(slot.set_split(Split::Canary { per_mille: 500 }));
    let moved = (0..4_000).filter(|_| slot.pick(&mut PickRequest::default()).unwrap().version == candidate.id).count();
    assert!((1_600..2_400).contains(&moved), "{moved} of 4000 at 50%");
    assert!(slot.candidate().unwrap().version.counters.counts.calls >= calls + moved as u64);

    assert!(slot.clear_candidate());
    assert!(!slot.clear_candidate());
    assert!((0..1_000).all(|_| slot.pick(&mut PickRequest::default()).unwrap().version == stable));
    assert!(!slot.set_split(Split::Shadow), "no candidate to change");
}

#[test]
fn a_shadow_candidate_is_asked_on_a_sample_and_routes_nothing() {
    let host = host();
    let slot = slot(&host, "ring-hash");
    let stable = slot.active_version();
    slot.set_candidate(PluginSpec::builtin("ring-hash"), Split::Shadow).unwrap();
    let n = 8_000u64;
    for k in 0..n {
        let p = slot.pick(&mut PickRequest { hash_key: Some(mix64(k)), ..PickRequest::default() }).unwrap();
        assert_eq!(p.version, stable, "a shadow candidate routed pick {k}");
    }
    let status = slot.candidate().unwrap();
    let tally = status.shadow;
    let expected = n / SHADOW_SAMPLE_EVERY;
    assert!(tally.calls.abs_diff(expected) <= 1, "{} shadow picks of {n}, expected {expected}", tally.calls);
    assert_eq!(tally.agreed, tally.calls, "two ring hashes on one snapshot agree on every key");
    assert_eq!(status.version.counters.counts.calls, tally.calls);
    let (stable_picks, candidate_picks): (u64, u64) =
        tally.picks.values().fold((0, 0), |(a, b), (s, c)| (a + s, b + c));
    assert_eq!((stable_picks, candidate_picks), (tally.calls, tally.calls));

    // A candidate that disagrees: its own distribution is kept beside the stable's.
    slot.set_candidate(PluginSpec::builtin("round-robin"), Split::Shadow).unwrap();
    for k in 0..n {
        slot.pick(&mut PickRequest { hash_key: Some(mix64(k)), ..PickRequest::default() }).unwrap();
    }
    let tally = slot.candidate().unwrap().shadow;
    assert!(tally.agreement() < 0.5, "round robin against a ring: {}", tally.agreement());
    let spread: Vec<u64> = tally.picks.values().map(|(_, c)| *c).collect();
    assert_eq!(spread.len(), 8);
    let (lo, hi) = (spread.iter().min().unwrap(), spread.iter().max().unwrap());
    assert!(hi - lo <= 1, "round robin spreads its shadow picks evenly: {spread:?}");
}

#[test]
fn a_faulty_candidate_leaves_and_the_stable_never_stops_serving() {
    let host = host();
    let slot = slot(&host, "round-robin");
    let stable = slot.active_version();
    let path = sextant_plugin_artifacts::path("misbehave").expect("artifact");
    let compiled = host.compile(&std::fs::read(path).unwrap()).unwrap();
    let spec = PluginSpec::Wasm {
        name: "misbehave".into(),
        compiled,
        config: r#"{"fault": "trap-pick", "after": 100}"#.into(),
    };
    let candidate = slot.set_candidate(spec, Split::Canary { per_mille: 500 }).unwrap();
    let limit = std::time::Instant::now() + Duration::from_secs(60);
    let (mut picks, mut fallbacks) = (0u32, 0u32);
    while slot.candidate().is_some() {
        assert!(std::time::Instant::now() < limit, "the faulty candidate is still there after {picks} picks");
        let p = slot.pick(&mut PickRequest::default()).expect("no pick fails");
        assert!(p.index < 8);
        picks += 1;
        fallbacks += u32::from(p.fallback);
        assert!(!p.fallback || p.version == candidate.id, "only the candidate's picks fall back");
    }
    assert!(fallbacks > 0);
    assert_eq!(slot.active_version(), stable, "the stable version stays active");
    let events = slot.status().events;
    assert!(events.iter().any(|e| e.what.starts_with("candidate dropped")), "{events:?}");
    assert!((0..100).all(|_| slot.pick(&mut PickRequest::default()).unwrap().version == stable));
}

#[test]
fn a_promoted_candidate_becomes_the_active_version_and_can_be_rolled_back() {
    let host = host();
    let slot = slot(&host, "round-robin");
    let stable = slot.active_version();
    assert!(slot.promote_candidate().is_err(), "nothing to promote");
    let candidate =
        slot.set_candidate(PluginSpec::builtin("least-request"), Split::Canary { per_mille: 1000 }).unwrap();
    for _ in 0..10 {
        assert_eq!(slot.pick(&mut PickRequest::default()).unwrap().version, candidate.id, "1000‰ is every pick");
    }
    let promoted = slot.promote_candidate().unwrap();
    assert_eq!(promoted.id, candidate.id);
    assert_eq!(slot.active_version(), candidate.id);
    assert!(slot.candidate().is_none());
    assert_eq!(slot.status().active.counters.counts.calls, 10, "its counters came along");
    slot.rollback().unwrap();
    assert_eq!(slot.status().active.name, "round-robin");
    assert_ne!(slot.active_version(), stable, "a rollback builds the previous version again");
}

#[test]
fn bad_candidates_are_refused_and_change_nothing() {
    let host = host();
    let slot = slot(&host, "round-robin");
    let first = slot.set_candidate(PluginSpec::builtin("ring-hash"), Split::Canary { per_mille: 10 }).unwrap();
    for share in [0, 1001] {
        let refused = slot.set_candidate(PluginSpec::builtin("maglev"), Split::Canary { per_mille: share });
        assert!(matches!(refused, Err(LoadError::BadShare(s)) if s == share), "{refused:?}");
    }
    assert!(matches!(host.compile(b"not wasm"), Err(LoadError::NotWasm)));
    let unknown = slot.set_candidate(PluginSpec::builtin("no-such-balancer"), Split::Shadow);
    assert!(matches!(unknown, Err(LoadError::UnknownBuiltin(_))), "{unknown:?}");
    let still = slot.candidate().expect("the first candidate stays");
    assert_eq!((still.version.id, still.split), (first.id, Split::Canary { per_mille: 10 }));
}
