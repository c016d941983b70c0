//! Two `sextant serve --store etcd` processes on one real etcd (Debian's `etcd-server`, started
//! on free loopback ports with a temporary data directory): a registration through host A
//! reaches a watcher of host B, a plugin loaded through A becomes active on B, an ephemeral
//! instance of a lost connection leaves both, and while etcd is down B answers from its last
//! state marked stale and A refuses writes.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sextant_store::local_etcd::LocalEtcd;

use crate::support::{Server, cli, instance, run};

use std::collections::BTreeSet;

const SERVICE: &str = "shop/web/orders";

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn instance_ids(server: &Server) -> Vec<String> {
    let (status, body) = server.get("/v1/services/shop/web/orders");
    if status != 200 {
        return Vec::new();
    }
    body["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect()
}

fn balancer(server: &Server) -> Option<(String, String)> {
    let out = run(server, &["plugin", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    list["slots"].as_array()?.iter().find(|s| s["service"] == SERVICE && s["kind"] == "balancer").map(|s| {
        (s["plugin"].as_str().unwrap_or_default().to_owned(), s["sha256"].as_str().unwrap_or_default().to_owned())
    })
}

#[test]
fn two_hosts_on_one_etcd_share_registrations_watches_and_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut etcd = runtime
        .block_on(LocalEtcd::start(&dir.path().join("etcd"), 1))
        .expect("start a local etcd (bash scripts/setup installs etcd-server)");
    let endpoints = etcd.endpoints().join(",");
    let args = ["--store", "etcd", "--etcd-endpoints", &endpoints, "--etcd-timeout-ms", "1500", "--grace-ms", "500"];
    let start = |name: &str| {
        Server::try_start_with(&dir.path().join(name), &args).unwrap_or_else(|f| panic!("{:?}\n{}", f.status, f.log))
    };
    let (a, b) = (start("a"), start("b"));
    let (_, status) = b.get("/status");
    assert_eq!(status["store"], "etcd", "{status}");
    assert!(status["stale_ms"].is_null(), "{status}");

    // A config entry written twice through A: B reads its history and the replaced content
    // (kept in etcd as an artifact).
    let path = "/v1/configs/shop/web/app.yaml";
    assert_eq!(a.put_text(path, "timeout: 1s\n").0, 200);
    assert_eq!(a.put_text(path, "timeout: 2s\n").0, 200);
    wait_until("B sees the second version", Duration::from_secs(10), || b.get(path).1["content"] == "timeout: 2s\n");
    let (_, entry) = b.get(path);
    let replaced = entry["history"][0]["version"].as_str().unwrap_or_else(|| panic!("{entry}")).to_owned();
    let (code, old) = b.get(&format!("{path}/versions/{replaced}"));
    assert_eq!((code, &old["content"]), (200, &Value::from("timeout: 1s\n")), "{old}");

    // A watcher on B sees a registration made through A.
    let mut watch = cli(&b, &["watch", "--service", SERVICE]).stdout(Stdio::piped()).spawn().unwrap();
    let (tx, lines) = mpsc::channel::<Value>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(serde_json::from_str(&line).unwrap_or(Value::Null)).is_err() {
                return;
            }
        }
    });
    let first = lines.recv_timeout(Duration::from_secs(10)).expect("the watch starts with a reset");
    assert_eq!(first["type"], "reset", "{first}");
    for (id, port) in [("a1", 9101), ("a2", 9102), ("a3", 9103)] {
        let mut i = instance("orders", id, port, false);
        i["service"] = serde_json::json!({"namespace": "shop", "group": "web", "service": "orders"});
        let (status, body) = a.post("/v1/instances", &i);
        assert_eq!(status, 200, "{body}");
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = lines.recv_timeout(Duration::from_secs(10)).expect("B's watcher gets A's registrations");
        assert_eq!(event["type"], "upsert", "{event}");
        seen.push(event["record"]["value"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["a1", "a2", "a3"]);
    watch.kill().unwrap();
    let _ = watch.wait();

    // A plugin loaded through A becomes active on B (artifact and record come through etcd)
    // and replaces the built-in that B's slot runs.
    assert!(run(&b, &["pick", "--service", SERVICE]).status.success());
    assert_eq!(balancer(&b).unwrap().0, sextant_plugin::DEFAULT_BALANCER, "the default every host starts on");
    let rr = sextant_plugin_artifacts::path("round-robin").expect("artifact built");
    let out = run(&a, &["plugin", "load", rr, "--name", "rr", "--bind", SERVICE]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("rr active on B", Duration::from_secs(20), || balancer(&b).is_some_and(|(p, _)| p == "rr"));
    let picks: std::collections::BTreeSet<String> = (0..6)
        .map(|_| {
            let out = run(&b, &["pick", "--service", SERVICE]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        })
        .collect();
    assert_eq!(picks.len(), 3, "round robin on B reaches every instance: {picks:?}");

    // A new version through A, then a rollback through A: B reads the rolled-back version
    // from the record and runs it.
    let rr_sha = balancer(&b).unwrap().1;
    let random = sextant_plugin_artifacts::path("random").expect("artifact built");
    let out = run(&a, &["plugin", "load", random, "--name", "rr", "--bind", SERVICE]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the new version on B", Duration::from_secs(20), || balancer(&b).is_some_and(|(_, sha)| sha != rr_sha));
    let out = run(&a, &["plugin", "rollback", "rr"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the rollback on B", Duration::from_secs(20), || balancer(&b).is_some_and(|(_, sha)| sha == rr_sha));
    let out = run(&b, &["plugin", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let record = list["plugins"].as_array().unwrap().iter().find(|p| p["name"] == "rr").unwrap().clone();
    assert_eq!(record["sha256"], rr_sha.as_str(), "B's record says the rolled-back version: {record}");
    assert_eq!(record["forward"].as_array().map(Vec::len), Some(1), "the version left is kept: {record}");

    // A lease granted through A and left to expire in etcd: its instance leaves B's view,
    // then a keepalive through A is `lease_not_found`, as the protocol says (not a new lease).
    {
        use sextant_proto::{Binding, ErrorCode, Request, Response};
        let _entered = runtime.enter();
        let client = quic_client(&a);
        let lease = match runtime.block_on(client.request(Request::GrantLease { ttl_ms: 2000 })).unwrap() {
            Response::Lease { lease, .. } => lease,
            other => panic!("expected a lease, got {other:?}"),
        };
        let service = sextant_core::ServiceKey::parse(SERVICE).unwrap();
        let instance = sextant_core::Instance::new(service, "127.0.0.1".parse().unwrap(), 9400);
        let register = Request::Register { instance, binding: Binding::Lease { lease } };
        assert!(matches!(runtime.block_on(client.request(register)).unwrap(), Response::Written { .. }));
        wait_until("the leased instance on B", Duration::from_secs(10), || {
            instance_ids(&b).contains(&"127.0.0.1:9400".to_owned())
        });
        wait_until("the lease expired in etcd and its instance gone from B", Duration::from_secs(30), || {
            !instance_ids(&b).contains(&"127.0.0.1:9400".to_owned())
        });
        match runtime.block_on(client.request(Request::Keepalive { lease })) {
            Ok(Response::Error { code, .. }) => assert_eq!(code, ErrorCode::LeaseNotFound),
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::LeaseNotFound), "{e}"),
            Ok(other) => panic!("a keepalive after expiry answered {other:?}"),
        }
    }

    // An ephemeral registration through A's connection: on B while it lives, gone from both
    // once the connection is lost (grace 500 ms).
    let mut reg = cli(&a, &["register", "--service", SERVICE, "--addr", "127.0.0.1:9200"]).spawn().unwrap();
    wait_until("the ephemeral instance on B", Duration::from_secs(10), || {
        instance_ids(&b).contains(&"127.0.0.1:9200".to_owned())
    });
    reg.kill().unwrap();
    let _ = reg.wait();
    wait_until("the ephemeral instance gone from B", Duration::from_secs(30), || {
        !instance_ids(&b).contains(&"127.0.0.1:9200".to_owned())
    });

    // etcd down: B serves what it knows, marked stale; A refuses a registration.
    etcd.kill(0);
    wait_until("B reports stale", Duration::from_secs(20), || !b.get("/status").1["stale_ms"].is_null());
    assert_eq!(instance_ids(&b).len(), 3, "B still answers from its last state");
    let out = run(&b, &["list", "--service", SERVICE, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list["stale_ms"].as_u64().is_some(), "list says stale: {list}");
    assert_eq!(list["records"].as_array().unwrap().len(), 3);
    let mut i = instance("orders", "late", 9300, false);
    i["service"] = serde_json::json!({"namespace": "shop", "group": "web", "service": "orders"});
    let (status, body) = a.post("/v1/instances", &i);
    assert_eq!(status, 503, "a write that cannot be persisted is refused: {body}");
    assert!(b.text("/metrics").contains("sextant_store_reachable 0"));

    // Back: both hosts resync and the refused write left nothing.
    etcd.restart(0).unwrap();
    runtime.block_on(etcd.wait_ready()).unwrap();
    wait_until("B no longer stale", Duration::from_secs(20), || b.get("/status").1["stale_ms"].is_null());
    let (status, body) = a.post("/v1/instances", &i);
    assert_eq!(status, 200, "{body}");
    wait_until("the write after the outage on B", Duration::from_secs(20), || instance_ids(&b).len() == 4);
}

/// Instance ids a watch holds, kept by a task; what went wrong in that task (a revision that
/// did not increase, the watch failing or ending) is kept too and fails the test at the next
/// read, instead of dying with the task unseen.
struct Followed {
    ids: std::sync::Arc<parking_lot::Mutex<BTreeSet<String>>>,
    fault: std::sync::Arc<parking_lot::Mutex<Option<String>>>,
}

impl Followed {
    fn lock(&self) -> parking_lot::MutexGuard<'_, BTreeSet<String>> {
        if let Some(fault) = self.fault.lock().as_ref() {
            panic!("the watch on B: {fault}");
        }
        self.ids.lock()
    }
}

/// Follows a watch of `scope` on `server` (resets, upserts, removes; revisions checked to
/// increase).
fn follow(
    runtime: &tokio::runtime::Runtime,
    server: &Server,
    scope: sextant_core::Scope,
) -> (Followed, sextant_quic::client::Client) {
    use sextant_core::{Change, Record};
    let client = quic_client(server);
    let followed = Followed { ids: Default::default(), fault: Default::default() };
    let mut watch = client.watch(scope);
    let (view, fault) = (followed.ids.clone(), followed.fault.clone());
    runtime.spawn(async move {
        let mut last = sextant_core::Revision(0);
        let ended = loop {
            let item = match watch.next().await {
                Some(Ok(item)) => item,
                Some(Err(e)) => break format!("the watch failed: {e}"),
                None => break "the watch ended".to_owned(),
            };
            if item.event.revision <= last {
                break format!("revisions increase: {} after {last}", item.event.revision);
            }
            last = item.event.revision;
            let mut v = view.lock();
            match item.event.change {
                Change::Reset { snapshot } => {
                    *v = snapshot
                        .records
                        .iter()
                        .filter_map(|r| match r {
                            Record::Instance(i) => Some(i.id.to_string()),
                            _ => None,
                        })
                        .collect();
                }
                Change::Upsert { record: Record::Instance(i) } => {
                    v.insert(i.id.to_string());
                }
                Change::Remove { key: sextant_core::RecordKey::Instance(k) } => {
                    v.remove(k.id.as_str());
                }
                _ => {}
            }
        };
        *fault.lock() = Some(ended);
    });
    (followed, client)
}

fn quic_client(server: &Server) -> sextant_quic::client::Client {
    let options = sextant_quic::client::ClientOptions::new(vec![server.quic], server.data_dir.join("tls/ca.pem"));
    sextant_quic::client::Client::new(options).unwrap()
}

/// A 3-member etcd, a runtime for in-process clients, and two `serve` hosts on it (A and B)
/// with `extra` arguments. Enter the runtime (`runtime.enter()`) before making QUIC clients.
fn two_hosts_on_three_members(
    dir: &std::path::Path,
    extra: &[&str],
) -> (tokio::runtime::Runtime, LocalEtcd, Server, Server) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let etcd = runtime.block_on(LocalEtcd::start(&dir.join("etcd"), 3)).expect("start a local etcd");
    let endpoints = etcd.endpoints().join(",");
    let mut args = vec!["--store", "etcd", "--etcd-endpoints", &endpoints];
    args.extend_from_slice(extra);
    let start = |name: &str| {
        Server::try_start_with(&dir.join(name), &args).unwrap_or_else(|f| panic!("{:?}\n{}", f.status, f.log))
    };
    let (a, b) = (start("a"), start("b"));
    (runtime, etcd, a, b)
}

#[test]
fn connection_bound_ttl_and_persistent_registrations_survive_a_killed_follower_and_leader() {
    use sextant_proto::Binding;
    let dir = tempfile::tempdir().unwrap();
    let grace_ms = 3000u64;
    let grace = grace_ms.to_string();
    let (runtime, mut etcd, a, b) =
        two_hosts_on_three_members(dir.path(), &["--etcd-timeout-ms", "5000", "--grace-ms", &grace]);
    // The QUIC clients bind their endpoints on this runtime.
    let _entered = runtime.enter();
    let scope = sextant_core::Scope::Namespace("faults".parse().unwrap());
    let (seen_on_b, _watcher) = follow(&runtime, &b, scope);
    // Eight writers through A, each on its own connection, kept open all along.
    let writers: Vec<_> = (0..8).map(|_| quic_client(&a)).collect();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    for (round, kill_leader) in [(0u16, false), (1, true)] {
        let leader = runtime.block_on(etcd.leader()).expect("a leader");
        let victim = if kill_leader { leader } else { (leader + 1) % 3 };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let tasks: Vec<_> = writers
            .iter()
            .enumerate()
            .map(|(w, client)| {
                let (client, stop, count) = (client.clone(), stop.clone(), count.clone());
                runtime.spawn(async move {
                    let (mut ok, mut refused) = (Vec::new(), Vec::new());
                    for n in 0..200u16 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let port = 1 + round * 2000 + (w as u16) * 200 + n;
                        let service = sextant_core::ServiceKey::parse("faults/g/s").unwrap();
                        let instance = sextant_core::Instance::new(service, "127.0.0.1".parse().unwrap(), port);
                        let binding = match n % 3 {
                            0 => Binding::Connection,
                            1 => Binding::Ttl { ttl_ms: 3000 },
                            _ => Binding::Persistent,
                        };
                        match client.register(instance.clone(), binding).await {
                            Ok(_) => {
                                ok.push(instance.id.to_string());
                                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(e) => refused.push(format!("{binding:?}: {e}")),
                        }
                        tokio::time::sleep(Duration::from_millis(40)).await;
                    }
                    (ok, refused)
                })
            })
            .collect();
        let acks = |n: u64| count.load(std::sync::atomic::Ordering::Relaxed) >= n;
        wait_until("the writers running", Duration::from_secs(60), || acks(40));
        etcd.kill(victim);
        let (killed, at_kill) = (Instant::now(), count.load(std::sync::atomic::Ordering::Relaxed));
        // Down for 1.5 s at least (the scenario), and until registrations were acknowledged
        // meanwhile (the synchronisation).
        wait_until("registrations acknowledged with a member down", Duration::from_secs(60), || {
            acks(at_kill + 60) && killed.elapsed() >= Duration::from_millis(1500)
        });
        etcd.restart(victim).unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut round_acked, mut refused) = (0, Vec::new());
        for t in tasks {
            let (ok, r) = runtime.block_on(t).unwrap();
            round_acked += ok.len();
            acked.extend(ok);
            refused.extend(r);
        }
        runtime.block_on(etcd.wait_ready()).unwrap();
        let what = if kill_leader { "leader" } else { "follower" };
        // Every acknowledged registration reaches the watcher on B, and stays there for more
        // than the grace period and the TTL: the owners are still connected.
        wait_until("B's watcher to hold every acknowledged instance", Duration::from_secs(30), || {
            acked.is_subset(&seen_on_b.lock())
        });
        std::thread::sleep(Duration::from_millis(2 * grace_ms));
        let held = seen_on_b.lock().clone();
        let lost: Vec<_> = acked.difference(&held).collect();
        eprintln!(
            "{what} killed: acknowledged {round_acked} (total {}), refused {}, lost after 2x grace {}",
            acked.len(),
            refused.len(),
            lost.len()
        );
        assert!(lost.is_empty(), "lost while their owners are connected: {lost:?}");
        if !kill_leader {
            assert!(refused.is_empty(), "a follower down refuses nothing: {refused:?}");
        }
    }
    let (_, status) = a.get("/status");
    assert!(status["stale_ms"].is_null(), "{status}");
    drop(writers);
}

#[test]
fn every_instance_is_back_after_all_members_were_down_for_30_s() {
    use sextant_proto::Binding;
    let dir = tempfile::tempdir().unwrap();
    let (runtime, mut etcd, a, b) =
        two_hosts_on_three_members(dir.path(), &["--etcd-timeout-ms", "2000", "--grace-ms", "3000"]);
    let _entered = runtime.enter();
    let (seen_on_b, _watcher) = follow(&runtime, &b, sextant_core::Scope::Namespace("outage".parse().unwrap()));
    // Four owners through A, each with a connection-bound, a TTL and a persistent instance.
    let owners: Vec<_> = (0..4).map(|_| quic_client(&a)).collect();
    let mut all = BTreeSet::new();
    for (o, owner) in owners.iter().enumerate() {
        for (k, binding) in
            [Binding::Connection, Binding::Ttl { ttl_ms: 3000 }, Binding::Persistent].into_iter().enumerate()
        {
            let service = sextant_core::ServiceKey::parse("outage/g/s").unwrap();
            let port = u16::try_from(1 + o * 10 + k).unwrap();
            let instance = sextant_core::Instance::new(service, "127.0.0.1".parse().unwrap(), port);
            all.insert(instance.id.to_string());
            runtime.block_on(owner.register(instance, binding)).unwrap();
        }
    }
    wait_until("B sees all 12", Duration::from_secs(20), || seen_on_b.lock().clone() == all);

    etcd.kill_all();
    let down = Instant::now();
    wait_until("both hosts to report the store unreachable", Duration::from_secs(20), || {
        !a.get("/status").1["stale_ms"].is_null() && !b.get("/status").1["stale_ms"].is_null()
    });
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    assert_eq!(seen_on_b.lock().clone(), all, "B's watchers keep the last state meanwhile");
    let (_, listed) = b.get("/v1/services/outage/g/s");
    assert!(listed["instances"].as_array().is_some_and(|i| i.len() == 12), "B serves it, stale: {listed}");

    runtime.block_on(etcd.restart_all()).unwrap();
    let back = Instant::now();
    wait_until("both hosts reachable again, every instance in etcd and on B", Duration::from_secs(60), || {
        a.get("/status").1["stale_ms"].is_null()
            && b.get("/status").1["stale_ms"].is_null()
            && seen_on_b.lock().clone() == all
            && b.get("/v1/services/outage/g/s").1["instances"].as_array().is_some_and(|i| i.len() == 12)
    });
    let recovery = back.elapsed();
    // And they stay: the owners are connected (more than the grace period and the TTL).
    std::thread::sleep(Duration::from_secs(7));
    let held = seen_on_b.lock().clone();
    eprintln!(
        "all members down {:.0} s: recovered in {:.2} s after etcd answered; {} of 12 instances held 7 s later",
        back.duration_since(down).as_secs_f64(),
        recovery.as_secs_f64(),
        held.len()
    );
    assert_eq!(held, all, "every instance is back, connection-bound ones included");
    drop(owners);
}
