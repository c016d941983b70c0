//! Plugins by language: the balancer of `sextant plugin new` in Rust, Python and JavaScript,
//! built with the pinned toolchains, against the native `least-request` and the empty
//! component call (`noop`) measured in the same run. Per language and mode (per-request:
//! a plugin call per pick; table: the plugin returns weights once per update, the host
//! picks natively): pick cost, load time (compile from cache excluded: self-test, one
//! instance, `init`, `update`), memory per instance (RSS growth over 16 instances: the same
//! component with 16 configurations is 16 plugins) and per service (RSS growth over 1,000
//! services sharing one instance, each picked once: its resource).
//!
//! Run: `bash scripts/bench-languages` (builds the three components, then this bench with
//! `SEXTANT_BENCH_COMPONENTS=rust=FILE,python=FILE,js=FILE`). Prints a table; asserts nothing.

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::time::{Duration, Instant};

use sextant_benches::{endpoints, rss_bytes, wasm_spec};
use sextant_plugin::{BalancerSlot, HostConfig, PickRequest, PluginHost, PluginSpec};

const PICKS: u32 = 20_000;
const ROUNDS: usize = 7;
const INSTANCES: usize = 16;
const SERVICES: usize = 1000;

/// Median over rounds of the mean time per pick, in ns.
fn pick_ns(slot: &BalancerSlot) -> f64 {
    let mut req = PickRequest::default();
    for _ in 0..1000 {
        std::hint::black_box(slot.pick(&mut req));
    }
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..PICKS {
                std::hint::black_box(slot.pick(&mut req));
            }
            started.elapsed().as_nanos() as f64 / f64::from(PICKS)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

fn slot(host: &PluginHost, spec: PluginSpec) -> (BalancerSlot, Duration) {
    let slot = BalancerSlot::new(host, "svc", PluginSpec::builtin("round-robin")).expect("slot");
    slot.set_snapshot(endpoints(10));
    let started = Instant::now();
    slot.load(spec).expect("the plugin loads");
    (slot, started.elapsed())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let host = PluginHost::new(HostConfig { workers: 1, max_instances: 200, ..HostConfig::default() }).expect("engine");
    let (empty, _) = slot(&host, wasm_spec(&host, "noop", "{}"));
    let empty_ns = pick_ns(&empty);
    let (native, _) = slot(&host, PluginSpec::builtin("least-request"));
    let native_ns = pick_ns(&native);
    drop((empty, native));
    println!("languages: the empty call {empty_ns:.0} ns, native least-request {native_ns:.0} ns per pick");
    println!();
    println!(
        "| plugin | mode | pick ns | × empty call | × native | load ms | RSS per instance MiB | RSS per service KiB | component MB |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let components = std::env::var("SEXTANT_BENCH_COMPONENTS").unwrap_or_default();
    if components.is_empty() {
        println!("(no SEXTANT_BENCH_COMPONENTS: run `bash scripts/bench-languages`)");
    }
    for entry in components.split(',').filter(|e| !e.is_empty()) {
        let (lang, file) = entry.split_once('=').expect("LANG=FILE");
        let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        let compiled = PluginSpec::wasm(&host, lang, &bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        for (mode, config) in [("per-request", "{}"), ("table", r#"{"mode": "table"}"#)] {
            let spec = compiled.clone().with_config(config);
            let (one, load) = slot(&host, spec.clone());
            let ns = pick_ns(&one);
            let picked = |slot: BalancerSlot| {
                std::hint::black_box(slot.pick(&mut PickRequest::default()));
                slot
            };
            let before = rss_bytes();
            let many: Vec<_> = (0..INSTANCES)
                .map(|i| {
                    // Another configuration (the templates ignore the extra field): another
                    // plugin, so another instance.
                    let config = format!(r#"{{"mode": "{mode}", "instance": {i}}}"#);
                    picked(slot(&host, compiled.clone().with_config(&config)).0)
                })
                .collect();
            let per_instance = (rss_bytes().saturating_sub(before)) as f64 / INSTANCES as f64 / (1024.0 * 1024.0);
            drop(many);
            let before = rss_bytes();
            let services: Vec<_> = (0..SERVICES).map(|_| picked(slot(&host, spec.clone()).0)).collect();
            let per_service = (rss_bytes().saturating_sub(before)) as f64 / SERVICES as f64 / 1024.0;
            drop(services);
            println!(
                "| {lang} | {mode} | {ns:.0} | {:.2} | {:.2} | {:.1} | {per_instance:.2} | {per_service:.1} | {:.1} |",
                ns / empty_ns,
                ns / native_ns,
                load.as_secs_f64() * 1e3,
                bytes.len() as f64 / 1e6
            );
        }
    }
}
