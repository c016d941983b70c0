//! A million instances in one server, measured from outside: the real `sextant serve` binary
//! (this package's, release build) on an embedded store in a temporary directory, and 64
//! clients (the client library, one QUIC connection each) in this process registering
//! persistent instances with 16 metadata entries of an 8-byte key and an 8-byte value
//! (256 B), 100 per service. Reported: the registration rate, and the server's resident
//! memory (`VmRSS` of its process) before and after, per instance and against the 1 GiB goal.
//!
//! Run: `cargo bench -p sextant-server --bench million` (`SEXTANT_MILLION=N` for another
//! count; `SEXTANT_MILLION_BASELINE=PATH` also measures another `sextant` binary, an earlier
//! build say, the same way in the same run). Registrations are durable (group commit), so a million takes a few minutes on a
//! slow disk. Loopback only; the server is stopped at the end. Measures; asserts nothing but
//! that every registration was acknowledged and is in the registry.

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sextant_benches::process_rss;
use sextant_core::{Instance, InstanceId, ServiceKey};
use sextant_proto::message::Binding;
use sextant_quic::client::{Client, ClientOptions};

const CLIENTS: usize = 64;
const PER_SERVICE: usize = 100;

/// The server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn instance(n: usize) -> Instance {
    let service = ServiceKey::parse(&format!("million/g/svc{:05}", n / PER_SERVICE)).expect("service name");
    let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + u32::try_from(n).expect("count")));
    let mut i = Instance::new(service, ip, 8080);
    i.id = InstanceId::new(format!("i{n}")).expect("id");
    i.ephemeral = false;
    i.metadata = (0..16).map(|k| (format!("key{k:05}"), format!("val{k:05}"))).collect();
    i
}

/// What one server did: the registration time, its RSS before and after.
struct Measured {
    elapsed: Duration,
    before: u64,
    after: u64,
}

/// Starts `binary`'s `sextant serve`, registers `total` instances into it, and stops it.
fn measure(binary: &Path, total: usize) -> Measured {
    let dir = tempfile::tempdir().expect("tempdir");
    let (admin, quic) = (free_port(), free_port());
    let server = Server(
        Command::new(binary)
            .args(["serve", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--admin", &format!("127.0.0.1:{admin}"), "--listen", &format!("127.0.0.1:{quic}")])
            // The 64 clients share one address, and so one rate limit; each holds 15,625
            // registrations of the million.
            .args(["--max-request-rate", "1000000", "--max-registrations-per-connection", "1000000"])
            .env("SEXTANT_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start sextant serve"),
    );
    let up = Instant::now();
    while ureq::get(&format!("http://127.0.0.1:{admin}/healthz")).call().is_err() {
        assert!(up.elapsed() < Duration::from_secs(30), "sextant serve did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let pid = server.0.id();
    let before = process_rss(pid);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let elapsed = rt.block_on(async {
        let server: SocketAddr = format!("127.0.0.1:{quic}").parse().expect("address");
        let options = ClientOptions::new(vec![server], dir.path().join("data/tls/ca.pem"));
        let mut clients = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            clients.push(Client::connect(options.clone()).await.expect("connect"));
        }
        let started = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(c, client)| {
                tokio::spawn(async move {
                    for n in (c..total).step_by(CLIENTS) {
                        client.register(instance(n), Binding::Persistent).await.expect("register");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a client task");
        }
        started.elapsed()
    });
    drop(rt);
    std::thread::sleep(Duration::from_secs(2));
    let after = process_rss(pid);
    let status: serde_json::Value = ureq::get(&format!("http://127.0.0.1:{admin}/status"))
        .call()
        .expect("status")
        .body_mut()
        .read_json()
        .expect("json");
    assert_eq!(status["instances"].as_u64(), Some(total as u64), "every registration is in the registry");
    Measured { elapsed, before, after }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list` probes bench binaries.
        return;
    }
    let total: usize = std::env::var("SEXTANT_MILLION").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let mut binaries = vec![("this build", PathBuf::from(env!("CARGO_BIN_EXE_sextant")))];
    if let Ok(baseline) = std::env::var("SEXTANT_MILLION_BASELINE") {
        binaries.push(("baseline", PathBuf::from(baseline)));
    }
    println!(
        "million: {total} persistent instances (16 metadata entries of 8 + 8 B, {PER_SERVICE} per service) registered over QUIC by {CLIENTS} clients"
    );
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    for (name, binary) in binaries {
        let Measured { elapsed, before, after } = measure(&binary, total);
        println!(
            "million: {name}: {:.1} s = {:.0}/s; sextant serve RSS {:.1} MiB before, {:.1} MiB after: {:.0} B/instance, {:.2} GiB in all (goal ≤ 1 GiB at 1,000,000)",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64(),
            mib(before),
            mib(after),
            after.saturating_sub(before) as f64 / total as f64,
            after as f64 / f64::from(1 << 30)
        );
    }
}
