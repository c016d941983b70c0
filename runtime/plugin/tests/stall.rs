//! Nothing a plugin does stalls the request path: a 0.2.0 plugin's resources are created (and
//! its instances started again) on the host's off-path thread, with their deadlines, while
//! the native default answers the picks; a failure there is counted as what it was (a
//! deadline hit, not a trap) and tried again after a backoff.
//!
//! Before, a constructor that spun at run time held the picking thread for the whole update
//! deadline, at every pick that needed the resource (a gateway stalled 2.5–3 s, again at
//! every snapshot change).

use std::time::{Duration, Instant};

use sextant_builtins::{Endpoint, Snapshot};
use sextant_plugin::{BalancerSlot, HostConfig, PickRequest, PluginHost, PluginSpec};

fn snapshot(n: usize) -> Snapshot {
    Snapshot {
        service: "shop/web/orders".into(),
        revision: 3,
        protection_active: false,
        endpoints: (0..n)
            .map(|i| Endpoint {
                id: format!("10.4.0.{i}:80"),
                address: format!("10.4.0.{i}:80"),
                weight: 100,
                healthy: true,
                zone: String::new(),
                version: String::new(),
                metadata: Vec::new(),
            })
            .collect(),
    }
}

#[test]
fn a_constructor_that_spins_at_run_time_costs_fallback_picks_not_a_stalled_thread() {
    let host = PluginHost::new(HostConfig {
        workers: 1,
        update_deadline: Duration::from_secs(1),
        // The resource goes idle quickly, so the next pick needs a new one.
        idle_resource: Duration::from_millis(50),
        ..HostConfig::default()
    })
    .expect("engine");
    let slot = BalancerSlot::new(&host, "shop/web/orders", PluginSpec::builtin("round-robin")).expect("slot");
    slot.set_snapshot(snapshot(3));
    let bytes = std::fs::read(sextant_plugin_artifacts::path("misbehave").expect("artifact")).expect("readable");
    // Its constructors at load return (the self-test's, the load's); later ones spin.
    let spec = PluginSpec::Wasm {
        name: "spinner".into(),
        compiled: host.compile(&bytes).expect("compiles"),
        config: r#"{"fault": "loop-new", "after_ms": 150}"#.into(),
    };
    slot.load(spec).expect("loads: its first constructor returns");
    assert!(!slot.pick(&mut PickRequest::default()).expect("a pick").fallback, "the plugin answers");
    std::thread::sleep(Duration::from_millis(300));

    // Picks from this thread until the spinning constructor has met its deadline.
    let (mut picks, mut fallbacks) = (0u64, 0u64);
    let limit = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let picked = slot.pick(&mut PickRequest::default()).expect("every pick is answered");
        picks += 1;
        fallbacks += u64::from(picked.fallback);
        let status = slot.status();
        if status.active.counters.counts.deadline_hits >= 1 {
            break status;
        }
        assert!(Instant::now() < limit, "the constructor's deadline hit was never counted");
    };
    eprintln!("{picks} picks answered ({fallbacks} by the native default) while the constructor spun off the path");
    // On the request path the first pick would have waited out the deadline itself, and the
    // hit would have been counted after it: one pick. With the worker locked while the
    // constructor ran off the path, picks went on only until the off-path thread took it (2
    // to a few hundred, depending on when that thread woke); with the worker free they go on
    // for the whole second (hundreds of thousands here, a fallback pick costing microseconds).
    assert!(picks >= 2_000, "picks went on while the constructor spun: {picks}");
    assert_eq!(fallbacks, picks, "the native default answered each");
    assert_eq!(status.active.counters.counts.traps, 0, "a deadline hit is counted as one, not as a trap");
    assert_eq!(status.active.name, "spinner", "one fault is not a rollback: {status:?}");

    // The next try waits a backoff: picks go on, answered, without a new deadline hit at once.
    for _ in 0..200 {
        assert!(slot.pick(&mut PickRequest::default()).expect("answered").fallback);
    }
    assert_eq!(slot.status().active.counters.counts.deadline_hits, 1, "not tried again at every pick");
}
