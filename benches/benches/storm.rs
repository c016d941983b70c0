//! A reconnect storm, measured: 1,000 clients (the client library, one connection each), each
//! with a connection-bound registration and a watch, see their server (in this process, on an
//! embedded store on loopback) stop and start again on the same address. Reported: the time
//! from the restarted server accepting until every client has registered again and every watch
//! has resubscribed, and the time until 5 events written then have reached all 1,000 watchers
//! (none missed). The tests run the same storm against the real binary
//! (tests/storm.rs); this is the release-build figure.
//!
//! Run: `cargo bench -p sextant-benches --bench storm`. Prints numbers; asserts nothing but
//! that nothing was missed.

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sextant_core::{Change, Instance, InstanceId, Record, Scope, ServiceKey};
use sextant_proto::Binding;
use sextant_quic::client::{Client, ClientOptions};
use sextant_quic::server::{QuicServer, ServerOptions};
use sextant_quic::tls;
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};
use tokio::sync::oneshot;

const CLIENTS: usize = 1000;

#[derive(Default)]
struct Seen {
    resets: AtomicUsize,
    probes: Mutex<BTreeSet<String>>,
}

/// A server on the store in `dir` at `addr`; stops when the sender is used or dropped.
async fn serve(
    dir: &Path,
    files: &tls::TlsFiles,
    addr: SocketAddr,
) -> (Registry<EmbeddedStore>, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let mut store = None;
    for _ in 0..200 {
        match EmbeddedStore::open(dir, EmbeddedOptions::default()) {
            Ok(s) => {
                store = Some(s);
                break;
            }
            // The previous server's last tasks still hold it.
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    let registry = Registry::start(store.expect("the data directory is free"), 64 * 1024).await.expect("registry");
    let mut server = None;
    for _ in 0..400 {
        let config = tls::server_config(files, None, 256).expect("tls");
        match QuicServer::bind(addr, config, registry.clone(), ServerOptions::default()) {
            Ok(s) => {
                server = Some(s);
                break;
            }
            // The previous endpoint is still closing its connections.
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    let server = server.expect("the address is free again");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (registry, stop, task)
}

fn members(registry: &Registry<EmbeddedStore>) -> usize {
    registry.snapshot(&ServiceKey::parse("storm/g/members").expect("key")).map_or(0, |s| s.instances.len())
}

async fn until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(300), "{what} within 300 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = tls::ensure_dev_certs(tmp.path()).expect("certs");
        let data = tmp.path().join("data");
        let addr = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("a free port");
        let (registry, stop, task) = serve(&data, &files, addr).await;
        let probe = Scope::Service(ServiceKey::parse("storm/g/probe").expect("key"));
        let (mut clients, mut seen) = (Vec::new(), Vec::new());
        for i in 0..CLIENTS {
            let client = Client::new(ClientOptions::new(vec![addr], files.ca.clone())).expect("client");
            let s = Arc::new(Seen::default());
            let mut watch = client.watch(probe.clone());
            let (c, s2) = (client.clone(), s.clone());
            tokio::spawn(async move {
                let mut member = Instance::new(
                    ServiceKey::parse("storm/g/members").expect("key"),
                    "127.0.0.1".parse().expect("ip"),
                    1,
                );
                member.id = InstanceId::new(format!("c{i}")).expect("id");
                while c.register(member.clone(), Binding::Connection).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                while let Some(Ok(item)) = watch.next().await {
                    match item.event.change {
                        Change::Reset { .. } => {
                            s2.resets.fetch_add(1, Ordering::Relaxed);
                        }
                        Change::Upsert { record: Record::Instance(i) } => {
                            s2.probes.lock().insert(i.id.to_string());
                        }
                        _ => {}
                    }
                }
            });
            clients.push(client);
            seen.push(s);
            if clients.len() % 100 == 0 {
                let n = clients.len();
                until("a wave of registrations", || members(&registry) >= n).await;
            }
        }
        until("every watch", || seen.iter().all(|s| s.resets.load(Ordering::Relaxed) >= 1)).await;

        let _ = stop.send(());
        let _ = task.await;
        drop(registry);
        let (registry, _stop, _task) = serve(&data, &files, addr).await;
        let recovery = until("every client registered again and resubscribed", || {
            members(&registry) == CLIENTS && seen.iter().all(|s| s.resets.load(Ordering::Relaxed) >= 2)
        })
        .await;
        let want: BTreeSet<String> = (0..5).map(|n| format!("p{n}")).collect();
        let start = Instant::now();
        for (n, id) in want.iter().enumerate() {
            let mut i = Instance::new(
                ServiceKey::parse("storm/g/probe").expect("key"),
                "127.0.0.1".parse().expect("ip"),
                100 + n as u16,
            );
            i.id = InstanceId::new(id.clone()).expect("id");
            i.ephemeral = false;
            registry.put(Record::Instance(Arc::new(i)), None).await.expect("put");
        }
        let delivered =
            until("every watcher to see every event", || seen.iter().all(|s| want.is_subset(&s.probes.lock())))
                .await
                .max(start.elapsed());
        println!(
            "storm: {CLIENTS} clients: all registered again and resubscribed {:.2} s after the server restarted; \
             5 events reached all {CLIENTS} watchers in {:.3} s, none missed",
            recovery.as_secs_f64(),
            delivered.as_secs_f64()
        );
        drop(clients);
    });
}
