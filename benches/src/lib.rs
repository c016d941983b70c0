//! Shared helpers for sextant's benchmarks: building instances and services in bulk.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use sextant_core::{Instance, Record, ServiceKey};

/// Whether a measurement program runs as a test: `cargo test` runs the bench targets marked
/// `test = true` without `--bench` (a short run that asserts the claims the docs make of
/// it, so a claim cannot rot unseen), `cargo bench` with it (the full run, asserting
/// nothing).
#[must_use]
pub fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// The service `bench/g/svc-{n}`.
#[must_use]
pub fn service(n: usize) -> ServiceKey {
    ServiceKey::parse(&format!("bench/g/svc-{n}")).expect("valid service name")
}

/// Instance number `n` of `service`, with `meta_bytes` of metadata (in 8 entries).
#[must_use]
pub fn instance(service: &ServiceKey, n: u32, meta_bytes: usize, ephemeral: bool) -> Record {
    let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
    let mut i = Instance::new(service.clone(), ip, 8080);
    i.ephemeral = ephemeral;
    let mut metadata = BTreeMap::new();
    if meta_bytes > 0 {
        let per = meta_bytes / 8;
        for k in 0..8 {
            let key = format!("k{k}");
            let value = "v".repeat(per.saturating_sub(key.len()));
            metadata.insert(key, value);
        }
    }
    i.metadata = metadata.into();
    Record::Instance(Arc::new(i))
}

/// Resident set size of this process in bytes (Linux `/proc/self/status`), or 0 elsewhere.
#[must_use]
pub fn rss_bytes() -> u64 {
    process_rss(std::process::id())
}

/// Resident set size of process `pid` in bytes (its `VmRSS` in Linux `/proc/PID/status`), or
/// 0 elsewhere or when there is no such process.
#[must_use]
pub fn process_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()))
        })
        .map_or(0, |kb| kb * 1024)
}

/// A plugin-side snapshot of `n` endpoints with weights 10/30/50 and versions v1/v2.
#[must_use]
pub fn endpoints(n: usize) -> sextant_builtins::Snapshot {
    sextant_builtins::Snapshot {
        service: "bench/g/svc".into(),
        revision: 1,
        protection_active: false,
        endpoints: (0..n)
            .map(|i| sextant_builtins::Endpoint {
                id: format!("10.2.{}.{}:80", i / 256, i % 256),
                address: format!("10.2.{}.{}:80", i / 256, i % 256),
                weight: 10 + u32::try_from(i % 3).unwrap_or(0) * 20,
                healthy: true,
                version: if i % 4 == 0 { "v2".into() } else { "v1".into() },
                ..sextant_builtins::Endpoint::default()
            })
            .collect(),
    }
}

/// A wasm plugin built by `sextant-plugin-artifacts`, compiled by `host`.
///
/// # Panics
/// When the artifact is missing or does not load (benches have nothing to measure then).
#[must_use]
pub fn wasm_spec(host: &sextant_plugin::PluginHost, name: &str, config: &str) -> sextant_plugin::PluginSpec {
    let path = sextant_plugin_artifacts::path(name).unwrap_or_else(|| panic!("no plugin artifact {name}"));
    let bytes = std::fs::read(path).expect("artifact readable");
    sextant_plugin::PluginSpec::Wasm {
        name: name.into(),
        compiled: host.compile(&bytes).expect("artifact compiles"),
        config: config.into(),
    }
}

/// Serves `gateway` on a loopback port of its own (on the current tokio runtime, for as long
/// as the process runs): its address.
///
/// # Panics
/// When no loopback port can be bound.
pub async fn serve(gateway: sextant_gateway::proxy::Gateway) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listen on loopback");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(
        async move { gateway.serve(listener, std::future::pending(), std::time::Duration::from_secs(1)).await },
    );
    addr
}
