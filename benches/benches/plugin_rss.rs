//! Memory across hot swaps: RSS after the first swap and after 1,000 more (a wasm balancer
//! alternating between two built-ins on a 100-endpoint service, picking between swaps), so a
//! leak of instances, stores or compiled code would show.
//!
//! Run: `cargo bench -p sextant-benches --bench plugin_rss`. Prints both RSS values and the
//! ratio. Measures; asserts nothing.

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use sextant_benches::{endpoints, rss_bytes, wasm_spec};
use sextant_plugin::{BalancerSlot, HostConfig, PickRequest, PluginHost, PluginSpec};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let host = PluginHost::new(HostConfig { workers: 2, max_instances: 200, ..HostConfig::default() }).expect("engine");
    let slot = BalancerSlot::new(&host, "svc", PluginSpec::builtin("round-robin")).expect("slot");
    slot.set_snapshot(endpoints(100));
    let specs = [wasm_spec(&host, "round-robin", "{}"), wasm_spec(&host, "ring-hash", "{}")];
    let swap = |i: usize| {
        slot.load(specs[i % 2].clone()).expect("swap");
        for k in 0..100u64 {
            let _ = slot.pick(&mut PickRequest { hash_key: Some(k), ..PickRequest::default() });
        }
    };
    // Warm both versions and the pool once, then measure.
    swap(0);
    swap(1);
    let first = rss_bytes();
    let started = std::time::Instant::now();
    for i in 0..1000 {
        swap(i);
    }
    let elapsed = started.elapsed();
    let after = rss_bytes();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "plugin_rss: after first swaps {:.1} MiB, after 1000 more {:.1} MiB, ratio {:.3}",
        mib(first),
        mib(after),
        after as f64 / first as f64
    );
    println!(
        "plugin_rss: 1000 swaps (each with self-test, 2 instances, 100 picks) took {elapsed:.2?}, {:.0} us per swap",
        elapsed.as_secs_f64() * 1e3
    );
    println!("plugin_rss: components compiled: {} (the rest came from the cache)", host.compiles());
}
