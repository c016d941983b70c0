//! Memory of the registry: RSS after registering 100,000 instances with 256 B of metadata
//! each (1,000 services × 100), through a `Registry` over the embedded store, so the store's
//! records, the view, the snapshots and the history window are all counted. Two shapes of
//! metadata, each measured in a process of its own: 8 entries of 32 bytes, and 16 entries of
//! an 8-byte key and an 8-byte value.
//!
//! Run: `cargo bench -p sextant-benches --bench rss`. Prints the baseline RSS (runtime and an
//! empty store), the RSS after, and the difference per instance. Measures; asserts nothing.

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::sync::Arc;
use std::time::Duration;

use sextant_benches::{instance, rss_bytes, service};
use sextant_core::store::Store;
use sextant_core::{Record, Revision};
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};

const SERVICES: usize = 1000;
const PER_SERVICE: u32 = 100;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list` and `cargo test --benches` probe bench binaries.
        return;
    }
    // Each shape in a fresh process: memory freed by one would be reused by the next.
    let Ok(shape) = std::env::var("SEXTANT_RSS_SHAPE") else {
        let me = std::env::current_exe().expect("this binary");
        for shape in ["8x32", "16x8+8"] {
            let status = std::process::Command::new(&me).env("SEXTANT_RSS_SHAPE", shape).status().expect("run");
            assert!(status.success(), "the {shape} run failed");
        }
        return;
    };
    let sixteen = shape == "16x8+8";
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).expect("open");
        let registry = Registry::start(store.clone(), 16 * 1024).await.expect("registry");
        let lease = store.grant_lease(Duration::from_secs(3600)).await.expect("lease");
        let before = rss_bytes();
        let mut last = Revision(0);
        for s in 0..SERVICES {
            let svc = service(s);
            for i in 0..PER_SERVICE {
                let mut record = instance(&svc, i, if sixteen { 0 } else { 256 }, true);
                if let (true, Record::Instance(one)) = (sixteen, &mut record) {
                    Arc::make_mut(one).metadata =
                        (0..16).map(|k| (format!("key{k:05}"), format!("val{k:05}"))).collect();
                }
                last = store.put(record, Some(lease)).await.expect("put");
            }
        }
        registry.wait_for(last).await;
        let after = rss_bytes();
        let stats = registry.stats();
        let total = (SERVICES as u64) * u64::from(PER_SERVICE);
        assert_eq!(stats.instances as u64, total);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let shape = if sixteen { "16 entries of 8 + 8 B" } else { "8 entries of 32 B" };
        println!("rss: {total} instances, 256 B metadata each ({shape}), {SERVICES} services");
        println!(
            "rss: baseline {:.1} MiB, after {:.1} MiB, delta {:.1} MiB ({:.0} B/instance)",
            mib(before),
            mib(after),
            mib(after - before),
            (after - before) as f64 / total as f64
        );
    });
}
