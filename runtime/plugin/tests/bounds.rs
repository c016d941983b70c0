//! What a plugin can make the host keep is bounded: a balancer's table (entries in all, per
//! endpoint, and bytes against the memory cap) is refused at load or at the update that
//! returned it, naming the limit; lines written through `host.log` are held to a budget per
//! plugin, the excess dropped and counted.
//!
//! Before these bounds, a 10-million-entry Maglev table was accepted (a server went from 66
//! to 524 MiB after one pick on six services) and a plugin logging in `pick` wrote 852 MB
//! to a gateway's log in 8 s.

use std::time::{Duration, Instant};

use sextant_builtins::{Endpoint, Snapshot};
use sextant_plugin::{BalancerSlot, HostConfig, LoadError, PickRequest, PluginHost, PluginSpec};

fn host_with(config: &HostConfig) -> PluginHost {
    PluginHost::new(HostConfig { workers: 1, update_deadline: Duration::from_secs(2), ..config.clone() })
        .expect("engine")
}

fn misbehave(host: &PluginHost, config: &str) -> PluginSpec {
    let path = sextant_plugin_artifacts::path("misbehave").expect("the misbehave artifact");
    let bytes = std::fs::read(path).expect("artifact readable");
    PluginSpec::Wasm {
        name: "misbehave".into(),
        compiled: host.compile(&bytes).expect("compiles"),
        config: config.into(),
    }
}

fn snapshot(n: usize) -> Snapshot {
    Snapshot {
        service: "shop/web/orders".into(),
        revision: 3,
        protection_active: false,
        endpoints: (0..n)
            .map(|i| Endpoint {
                id: format!("10.3.0.{i}:80"),
                address: format!("10.3.0.{i}:80"),
                weight: 100,
                healthy: true,
                zone: String::new(),
                version: String::new(),
                metadata: Vec::new(),
            })
            .collect(),
    }
}

fn slot(host: &PluginHost, endpoints: usize) -> BalancerSlot {
    let slot = BalancerSlot::new(host, "shop/web/orders", PluginSpec::builtin("round-robin")).expect("slot");
    slot.set_snapshot(snapshot(endpoints));
    slot
}

#[test]
fn a_table_past_the_hosts_limit_is_refused_at_load_naming_it() {
    let host = host_with(&HostConfig::default());
    let slot = slot(&host, 6);
    // 2 million Maglev entries (8 MB in the guest, well within its memory cap).
    let err = slot.load(misbehave(&host, r#"{"fault": "maglev", "entries": 2000000}"#)).expect_err("refused");
    let text = err.to_string();
    assert!(matches!(err, LoadError::SelfTest(_)), "{err:?}");
    assert!(
        text.contains("maglev table of 2000000 entries passes the host's limit of 1048576 entries")
            && text.contains("--plugin-max-table-entries"),
        "{text}"
    );
    // The active version (the built-in) still serves, with no fault counted against it.
    let picked = slot.pick(&mut PickRequest::default()).expect("a pick");
    assert!(!picked.fallback);
    // The same plugin with the usual Maglev size is accepted, and picks from its table.
    slot.load(misbehave(&host, r#"{"fault": "maglev", "entries": 65537}"#)).expect("a usual table loads");
    let picked = slot.pick(&mut PickRequest { hash_key: Some(7), ..PickRequest::default() }).expect("a pick");
    assert!(!picked.fallback, "{picked:?}");
}

#[test]
fn a_ring_past_its_share_per_endpoint_is_refused_at_the_update_and_the_previous_table_serves() {
    let host = host_with(&HostConfig { max_table_entries_per_endpoint: 1000, ..HostConfig::default() });
    // 5,000 points: fine for the self-test's 8 endpoints and for this service's 6 (6,000).
    let slot = slot(&host, 6);
    slot.load(misbehave(&host, r#"{"fault": "ring", "entries": 5000}"#)).expect("within 1,000 per endpoint");
    let before = slot.status().active.counters;
    // The service shrinks to 2 endpoints: 5,000 points pass 2 × 1,000.
    slot.set_snapshot(snapshot(2));
    for _ in 0..50 {
        let picked = slot.pick(&mut PickRequest { hash_key: Some(42), ..PickRequest::default() }).expect("a pick");
        assert!(picked.index < 2, "{picked:?}");
    }
    let after = slot.status().active.counters;
    assert!(
        after.counts.contract_violations > before.counts.contract_violations,
        "the refused table is a contract violation: {after:?}"
    );
}

#[test]
fn a_table_is_refused_at_load_on_a_small_live_service() {
    let host = host_with(&HostConfig { max_table_entries_per_endpoint: 1000, ..HostConfig::default() });
    // The self-test (8 endpoints) passes; this service has 2, so 5,000 points are too many.
    let slot = slot(&host, 2);
    let err = slot.load(misbehave(&host, r#"{"fault": "ring", "entries": 5000}"#)).expect_err("refused");
    assert!(err.to_string().contains("--plugin-max-table-entries-per-endpoint"), "{err}");
}

#[test]
fn a_plugin_logging_in_pick_is_held_to_its_budget_and_the_excess_counted() {
    let host = host_with(&HostConfig { log_lines_per_sec: 20, log_bytes_per_sec: 1 << 20, ..HostConfig::default() });
    let slot = slot(&host, 3);
    slot.load(misbehave(&host, r#"{"fault": "log-pick"}"#)).expect("loads");
    let started = Instant::now();
    let picks = 5000u64;
    for _ in 0..picks {
        let picked = slot.pick(&mut PickRequest::default()).expect("a pick");
        assert!(!picked.fallback, "logging is not a fault");
    }
    // At most a second's worth at the start, then 20 a second: whatever the machine's speed.
    let allowed = 20 * (started.elapsed().as_secs() + 2);
    let drops = host.log_drops();
    let ours = drops.iter().find(|d| d.plugin == "misbehave").unwrap_or_else(|| panic!("nothing dropped: {drops:?}"));
    assert!(ours.lines + allowed >= picks, "{} of {picks} lines dropped, {allowed} allowed", ours.lines);
    assert!(ours.bytes >= ours.lines * 200, "each line is 200 bytes: {ours:?}");
    eprintln!(
        "log-pick: {picks} lines of 200 bytes in {:.2} s, {} dropped ({} bytes), at most {allowed} written",
        started.elapsed().as_secs_f64(),
        ours.lines,
        ours.bytes
    );
}
