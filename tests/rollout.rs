//! Progressive rollout through the binaries: `sextant serve`, `sextant gateway` and the CLI,
//! four backends, one of them slow (100 ms), concurrent clients with retries off.
//!
//! - A candidate that ignores the registered weights (round robin over weighted endpoints,
//!   so a quarter of its requests go to the slow one) is rolled back by the servers' judge at
//!   its first canary step, on the gateway's reports; the stable version serves alone after,
//!   and the decision and its evidence are in the record.
//! - A good candidate (peak EWMA replacing round robin with the slow backend present) goes
//!   through every step to 100 % and becomes the record's version.
//! - Two servers on one etcd and three gateways: the same harmful candidate rolled back;
//!   then a good one promoted while the server that decided its first step is killed: the
//!   other decides the rest, and no step is decided twice.
//! - A gateway that refuses the candidate pauses the rollout with its reason; `abort`
//!   returns everyone to the stable version.
//! - Every request is answered 200 throughout, and requests overlapped the rollout.
//! - Bad input: malformed plans, a rollout of a record that does not exist, a second
//!   rollout, commands with no rollout running: refused with the reason, nothing changed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde_json::Value;
use sextant_gateway::backend::{Backend, Behavior};

use crate::gateway::Gateway;
use crate::support::{
    Server, dashboard_metrics, free_port, http, promtool_check, run, sample_names, two_servers_on_etcd, wait_until,
};

const SERVICE: &str = "shop/web/orders";
const CLIENTS: usize = 3;

/// Three fast backends and one slow one (100 ms), registered with `weights`, the servers
/// and the gateways routing `/` to them with `x-user` as the affinity key and no retries.
/// (Dropped in field order: the processes before the backends, etcd and their directory.)
struct Setup {
    gateways: Vec<Gateway>,
    servers: Vec<Server>,
    backends: Vec<Backend>,
    _runtime: tokio::runtime::Runtime,
    _etcd: Option<sextant_store::local_etcd::LocalEtcd>,
    dir: tempfile::TempDir,
}

impl Setup {
    /// The server commands go to.
    fn server(&self) -> &Server {
        &self.servers[0]
    }

    fn logs(&self) -> String {
        self.gateways.iter().map(Gateway::log).collect::<Vec<_>>().join("\n")
    }
}

/// One server on the embedded store, one gateway.
fn setup(weights: [u32; 4]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    fleet(dir, None, vec![server], 1, SERVICE, weights)
}

/// Two servers on one etcd, `gateways` gateways following both.
fn setup_on_etcd(weights: [u32; 4], gateways: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (etcd, a, b) = two_servers_on_etcd(dir.path(), &runtime);
    let servers = vec![a, b];
    let mut setup = fleet(dir, Some(runtime), servers, gateways, SERVICE, weights);
    setup._etcd = Some(etcd);
    setup
}

fn fleet(
    dir: tempfile::TempDir,
    runtime: Option<tokio::runtime::Runtime>,
    servers: Vec<Server>,
    gateways: usize,
    service: &str,
    weights: [u32; 4],
) -> Setup {
    let runtime = runtime.unwrap_or_else(|| tokio::runtime::Runtime::new().unwrap());
    let backends: Vec<Backend> = (0..4)
        .map(|i| {
            let latency = Duration::from_millis(if i == 3 { 100 } else { 1 });
            runtime.block_on(Backend::start(&format!("b{i}"), Behavior { latency, ..Behavior::default() })).unwrap()
        })
        .collect();
    let (ns, rest) = service.split_once('/').unwrap();
    let (group, name) = rest.split_once('/').unwrap();
    for (i, b) in backends.iter().enumerate() {
        let body = serde_json::json!({
            "service": { "namespace": ns, "group": group, "service": name },
            "id": format!("b{i}"), "ip": "127.0.0.1", "port": b.addr().port(), "ephemeral": false,
            "weight": weights[i],
        });
        let (status, answer) = servers[0].post("/v1/instances", &body);
        assert_eq!(status, 200, "{answer}");
    }
    let gateways = (0..gateways)
        .map(|g| {
            let gw_dir = dir.path().join(format!("gw{g}"));
            std::fs::create_dir(&gw_dir).unwrap();
            let config = gw_dir.join("gateway.json");
            let document = serde_json::json!({
                "gateway": {"routes": [{"path_prefix": "/", "service": service, "hash_header": "x-user"}]},
                "balancer": "round-robin",
                "retry": {"attempts": 1},
            });
            std::fs::write(&config, document.to_string()).unwrap();
            let servers: Vec<&Server> = servers.iter().collect();
            Gateway::spawn_on(&servers, &gw_dir, free_port(), &["--config", config.to_str().unwrap()])
        })
        .collect::<Vec<_>>();
    for gateway in &gateways {
        wait_until("the gateway is ready", || {
            http().get(&format!("http://{}/ready", gateway.metrics)).call().is_ok_and(|r| r.status() == 200)
        });
    }
    Setup { gateways, servers, backends, _runtime: runtime, _etcd: None, dir }
}

fn cli(server: &Server, args: &[&str]) -> String {
    let out = run(server, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command's exit code and what it said on stderr.
fn refused(server: &Server, args: &[&str]) -> (i32, String) {
    let out = run(server, args);
    assert!(!out.status.success(), "{args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn artifact(name: &str) -> &'static str {
    sextant_plugin_artifacts::path(name).expect("artifact built")
}

fn sha(name: &str) -> String {
    sextant_core::sha256_hex(&std::fs::read(artifact(name)).unwrap())
}

fn record(server: &Server, name: &str) -> Value {
    let list: Value = serde_json::from_str(&cli(server, &["plugin", "list", "--json"])).unwrap();
    list["plugins"].as_array().and_then(|a| a.iter().find(|p| p["name"] == name).cloned()).unwrap_or(Value::Null)
}

/// Waits until every gateway reports running `name` at `sha` (its first 12 hex digits).
fn until_active(setup: &Setup, name: &str, sha: &str) {
    let want = format!("active {}", &sha[..12]);
    wait_until(&format!("the gateways run {name} {want}"), || {
        let list: Value = serde_json::from_str(&cli(setup.server(), &["plugin", "list", "--json"])).unwrap();
        let running = list["hosts"]
            .as_array()
            .map_or(0, |h| h.iter().filter(|h| h["plugin"] == name && h["state"] == want).count());
        running == setup.gateways.len()
    });
}

/// Clients sending requests with their own affinity keys until stopped, counting answers by
/// status (0: no answer).
struct Clients {
    stop: AtomicBool,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Clients {
    fn run(&self, addr: &str, client: usize) {
        let agent = http();
        let mut k = 0u64;
        while !self.stop.load(SeqCst) {
            k += 1;
            let status = agent
                .get(&format!("http://{addr}/orders"))
                .header("x-user", &format!("user-{client}-{k}"))
                .call()
                .map_or(0, |r| r.status().as_u16());
            if status == 200 { &self.ok } else { &self.failed }.fetch_add(1, SeqCst);
        }
    }
}

/// Runs `during` while `CLIENTS` clients send requests; returns its result, the requests
/// answered 200 before it began and while it ran, and the requests that failed in all.
fn under_load<T>(setup: &Setup, during: impl FnOnce() -> T) -> (T, u64, u64, u64) {
    let clients = Clients { stop: AtomicBool::new(false), ok: AtomicU64::new(0), failed: AtomicU64::new(0) };
    let addrs: Vec<String> = setup.gateways.iter().map(|g| g.addr.clone()).collect();
    std::thread::scope(|s| {
        for c in 0..CLIENTS.max(addrs.len()) {
            let (clients, addr) = (&clients, &addrs[c % addrs.len()]);
            s.spawn(move || clients.run(addr, c));
        }
        /// Stops the clients when dropped, so a failed assertion does not leave them running.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, SeqCst);
            }
        }
        let _stop = Stop(&clients.stop);
        wait_until("traffic flows", || clients.ok.load(SeqCst) >= 50);
        let before = clients.ok.load(SeqCst);
        let result = during();
        let ended = clients.ok.load(SeqCst);
        // Some more after the change, served by what it left.
        wait_until("traffic after the change", || clients.ok.load(SeqCst) >= ended + 50);
        (result, before, ended - before, clients.failed.load(SeqCst))
    })
}

/// Waits (up to `limit`) until the rollout of `name` is in `state`; the record.
fn until_state(setup: &Setup, server: &Server, name: &str, state: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let r = record(server, name);
        if r["rollout"]["state"] == state {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout of {name} is not {state} after {limit:?}: {}\n{}\n{}",
            r["rollout"],
            cli(server, &["plugin", "rollout", "status", name]),
            setup.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The slow backend weighs 1, the others 100 (`setup`'s weights): the stable version
/// (weighted) sends it 1 request in 300; the candidate (round robin) one in four. It is rolled
/// back at its first canary step, on the gateways' reports, and the stable serves alone after.
fn harmful_candidate_is_rolled_back(setup: &Setup) {
    cli(setup.server(), &["plugin", "load", artifact("weighted"), "--name", "lb", "--bind", SERVICE]);
    until_active(setup, "lb", &sha("weighted"));
    let plan = "10%:3s,50%:3s";
    let (decided, before, during, failed) = under_load(setup, || {
        let out = cli(
            setup.server(),
            &[
                "plugin",
                "load",
                artifact("round-robin"),
                "--name",
                "lb",
                "--bind",
                SERVICE,
                "--rollout",
                plan,
                "--min-requests",
                "40",
            ],
        );
        assert!(out.contains(&sha("round-robin")[..12]) || !out.is_empty(), "{out}");
        until_state(setup, setup.server(), "lb", "rolled-back", Duration::from_secs(90))
    });
    let rollout = &decided["rollout"];
    assert_eq!(decided["sha256"], sha("weighted"), "the stable version stays the record's");
    assert_eq!(rollout["step"], 0, "rolled back at its first canary step: {rollout}");
    let last = rollout["log"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["state"], "rolled-back");
    assert!(last["by"].as_str().unwrap().starts_with("judge@"), "{last}");
    let evidence = &last["evidence"];
    let gateways = setup.gateways.len();
    assert!(
        (1..=gateways as u64).contains(&evidence["gateways"].as_u64().unwrap()),
        "decided on the gateways' reports: {evidence}"
    );
    let (cp99, sp99) =
        (evidence["candidate"]["p99_ms"].as_f64().unwrap(), evidence["stable"]["p99_ms"].as_f64().unwrap());
    assert!(cp99 > 1.3 * sp99 + 1.0, "the evidence shows the candidate's p99 {cp99} against the stable's {sp99}");
    assert!(evidence["failed"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains("p99")), "{evidence}");
    let (c, s) =
        (evidence["candidate"]["requests"].as_u64().unwrap(), evidence["stable"]["requests"].as_u64().unwrap());
    assert!(c >= 40, "decided on at least min-requests candidate requests: {evidence}");
    eprintln!(
        "rollout ({} servers, {gateways} gateways): harmful candidate rolled back at step 1 (10%) on {} gateways' reports: {c} of {} requests through it ({:.1}%), candidate p99 {cp99:.1} ms vs stable {sp99:.1} ms; {during} requests answered during the episode, {failed} failed",
        setup.servers.len(),
        evidence["gateways"],
        c + s,
        100.0 * c as f64 / (c + s) as f64
    );
    assert_eq!(failed, 0, "every request answered 200");
    assert!(before >= 50 && during > 0, "requests overlapped the rollout");
    // The gateways dropped the candidate: their reports of the rollout are gone, and the slow
    // backend is back to the stable's share.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list: Value = serde_json::from_str(&cli(setup.server(), &["plugin", "list", "--json"])).unwrap();
        if list["rollouts"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a gateway still reports the rollout: {}\n{}",
            list["rollouts"],
            setup.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let slow = setup.backends[3].served();
    for k in 0..150 {
        let gateway = &setup.gateways[k % gateways];
        let status = http()
            .get(&format!("http://{}/orders", gateway.addr))
            .header("x-user", &format!("after-{k}"))
            .call()
            .map_or(0, |r| r.status().as_u16());
        assert_eq!(status, 200);
    }
    assert!(
        setup.backends[3].served() - slow <= 5,
        "the stable serves alone: the slow backend took {}",
        setup.backends[3].served() - slow
    );
    let status = cli(setup.server(), &["plugin", "rollout", "status", "lb"]);
    assert!(status.contains("rolled-back") && status.contains("judge@"), "{status}");
    // The decision is in the deciding server's audit log.
    let audited = setup.servers.iter().map(Server::log).find(|log| log.contains("rollout_decision"));
    let line = audited.as_deref().and_then(|log| log.lines().find(|l| l.contains("rollout_decision")));
    assert!(line.is_some_and(|l| l.contains("sextant::audit") && l.contains("rolled-back")), "{line:?}");
}

#[test]
fn a_candidate_that_ignores_weights_is_rolled_back_by_the_judge_and_the_stable_serves_on() {
    harmful_candidate_is_rolled_back(&setup([100, 100, 100, 1]));
}

#[test]
fn a_good_candidate_is_promoted_through_every_step_with_no_failed_request() {
    let setup = setup([10, 10, 10, 10]);
    cli(setup.server(), &["plugin", "load", artifact("round-robin"), "--name", "lb", "--bind", SERVICE]);
    until_active(&setup, "lb", &sha("round-robin"));
    let (promoted, before, during, failed) = under_load(&setup, || {
        cli(
            setup.server(),
            &[
                "plugin",
                "load",
                artifact("peak-ewma"),
                "--name",
                "lb",
                "--bind",
                SERVICE,
                "--rollout",
                "shadow:4s,10%:2s,50%:2s",
                "--min-requests",
                "30",
            ],
        );
        // While it shadows: the gateway's report, with the candidate's agreement, and what
        // the judge would decide now.
        wait_until("the status shows the shadow step's report", || {
            let status = cli(setup.server(), &["plugin", "rollout", "status", "lb"]);
            status.contains("lb: shadow at step 1/3")
                && status.contains("agreement ")
                && status.contains("the judge now: ")
        });
        // The gateway's per-version outcome series, while a canary step runs.
        let series = format!(
            r#"sextant_gateway_rollout_step_requests{{service="{SERVICE}",version="candidate",outcome="ok"}} "#
        );
        wait_until("the gateway exports the candidate's outcomes", || {
            let text = setup.gateways[0].metrics();
            text.lines().any(|l| l.strip_prefix(series.as_str()).is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n > 0)))
        });
        let gateway_text = setup.gateways[0].metrics();
        promtool_check(&gateway_text);
        // The dashboard's rollout panels read series the fleet exports while a rollout runs.
        let mut r = http().get(&setup.server().url("/metrics")).call().expect("GET /metrics");
        let mut exported = sample_names(&r.body_mut().read_to_string().unwrap());
        exported.extend(sample_names(&gateway_text));
        let rollout_panels: Vec<String> = dashboard_metrics().into_iter().filter(|n| n.contains("rollout")).collect();
        assert!(rollout_panels.len() >= 5, "{rollout_panels:?}");
        let missing: Vec<&String> = rollout_panels.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(missing.is_empty(), "the dashboard's rollout panels read {missing:?}, which nobody exports");
        until_state(&setup, setup.server(), "lb", "promoted", Duration::from_secs(120))
    });
    assert_eq!(promoted["sha256"], sha("peak-ewma"), "the candidate is the record's version");
    let states: Vec<&str> =
        promoted["rollout"]["log"].as_array().unwrap().iter().map(|d| d["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["shadow", "canary", "canary", "promoted"], "started in shadow, advanced twice, promoted");
    assert_eq!(failed, 0, "every request answered 200");
    assert!(before >= 50 && during > 0, "requests overlapped the rollout");
    until_active(&setup, "lb", &sha("peak-ewma"));
    let mut r = http().get(&setup.server().url("/metrics")).call().expect("GET /metrics");
    let text = r.body_mut().read_to_string().unwrap();
    assert!(text.contains(r#"sextant_plugin_rollout_state{plugin="lb",state="promoted"} 1"#), "{text}");
    assert!(text.contains(r#"sextant_plugin_rollout_state{plugin="lb",state="canary"} 0"#), "{text}");
    promtool_check(&text);
    let shadow = &promoted["rollout"]["log"][1]["evidence"]["candidate"];
    assert!(
        shadow["requests"].as_u64().unwrap() >= 30,
        "the shadow step counted the candidate's shadow picks: {shadow}"
    );
    eprintln!(
        "rollout: good candidate promoted through shadow, 10% and 50% to 100%: {during} requests during it, {failed} failed"
    );
}

#[test]
fn bad_rollout_input_is_refused_and_changes_nothing() {
    let setup = setup([10, 10, 10, 10]);
    let rr = artifact("round-robin");
    // No record to roll out over.
    let (_, e) =
        refused(setup.server(), &["plugin", "load", rr, "--name", "lb", "--bind", SERVICE, "--rollout", "10%:1m"]);
    assert!(e.contains("stable version"), "{e}");
    assert_eq!(record(setup.server(), "lb"), Value::Null, "nothing written");
    cli(setup.server(), &["plugin", "load", rr, "--name", "lb", "--bind", SERVICE]);
    let before = record(setup.server(), "lb");
    let pe = artifact("peak-ewma");
    for (plan, says) in [
        ("", "at least one step"),
        ("10%:5m,5%:5m", "increase"),
        ("150%:1m", "at most 100%"),
        ("10%:0s", "1s to 7d"),
        ("10%:1m max-latency=2", "unknown criterion"),
    ] {
        let (code, e) =
            refused(setup.server(), &["plugin", "load", pe, "--name", "lb", "--bind", SERVICE, "--rollout", plan]);
        assert_eq!(code, 2, "{plan:?}: {e}");
        assert!(e.contains(says), "{plan:?}: {e}");
    }
    // The same version as the stable one, another binding: refused by the server.
    let (_, e) =
        refused(setup.server(), &["plugin", "load", rr, "--name", "lb", "--bind", SERVICE, "--rollout", "10%:1m"]);
    assert!(e.contains("current version"), "{e}");
    let (_, e) =
        refused(setup.server(), &["plugin", "load", pe, "--name", "lb", "--bind", "shop", "--rollout", "10%:1m"]);
    assert!(e.contains("kind and binding"), "{e}");
    // No rollout to steer.
    for verb in ["pause", "resume", "promote", "abort"] {
        let (code, e) = refused(setup.server(), &["plugin", "rollout", verb, "lb"]);
        assert!(e.contains("no rollout"), "{verb}: {code} {e}");
    }
    assert_eq!(record(setup.server(), "lb"), before, "nothing changed");
    // One running (its plan from a file): a second is refused; pause, resume, abort steer it;
    // abort leaves the stable.
    let plan = setup.dir.path().join("plan.txt");
    std::fs::write(&plan, "# try it for an hour\nshadow:1h\n10%:1h  # then a tenth\nmax-p99-ratio=1.5\n").unwrap();
    cli(
        setup.server(),
        &["plugin", "load", pe, "--name", "lb", "--bind", SERVICE, "--rollout", plan.to_str().unwrap()],
    );
    let running = record(setup.server(), "lb");
    assert_eq!(running["rollout"]["plan"]["steps"], serde_json::json!(["shadow:1h", "10%:1h"]));
    assert_eq!(running["rollout"]["plan"]["criteria"]["max-p99-ratio"], 1.5);
    let (_, e) = refused(
        setup.server(),
        &["plugin", "load", artifact("random"), "--name", "lb", "--bind", SERVICE, "--rollout", "10%:1m"],
    );
    assert!(e.contains("runs a rollout"), "{e}");
    // Nor may another record of the same binding start one.
    cli(setup.server(), &["plugin", "load", artifact("random"), "--name", "lb2", "--bind", SERVICE]);
    let args = ["plugin", "load", artifact("least-request"), "--name", "lb2", "--bind", SERVICE, "--rollout", "10%:1m"];
    let (_, e) = refused(setup.server(), &args);
    assert!(e.contains("plugin lb runs a rollout"), "{e}");
    let (_, e) = refused(setup.server(), &["plugin", "rollout", "resume", "lb"]);
    assert!(e.contains("not paused"), "{e}");
    cli(setup.server(), &["plugin", "rollout", "pause", "lb"]);
    assert_eq!(record(setup.server(), "lb")["rollout"]["state"], "paused");
    cli(setup.server(), &["plugin", "rollout", "resume", "lb"]);
    assert_eq!(record(setup.server(), "lb")["rollout"]["state"], "shadow");
    cli(setup.server(), &["plugin", "rollout", "abort", "lb"]);
    let after = record(setup.server(), "lb");
    assert_eq!(after["rollout"]["state"], "aborted");
    assert_eq!(after["sha256"], sha("round-robin"), "the stable version stays");
    let (_, e) = refused(setup.server(), &["plugin", "rollout", "abort", "lb"]);
    assert!(e.contains("aborted"), "{e}");
}

/// Two servers on one etcd judge every rollout, three gateways report: a harmful candidate
/// is rolled back; then a good one is promoted while the server that decided its first step
/// is killed (SIGKILL): the other decides the rest from the store, and every step is decided
/// once.
#[test]
fn two_servers_on_one_etcd_decide_each_step_once_and_one_killed_mid_rollout_changes_nothing() {
    let mut setup = setup_on_etcd([100, 100, 100, 1], 3);
    harmful_candidate_is_rolled_back(&setup);

    // The good candidate: peak EWMA over round robin, on equal weights.
    for (i, b) in setup.backends.iter().enumerate() {
        let body = serde_json::json!({
            "service": { "namespace": "shop", "group": "web", "service": "orders" },
            "id": format!("b{i}"), "ip": "127.0.0.1", "port": b.addr().port(), "ephemeral": false, "weight": 10,
        });
        assert_eq!(setup.server().post("/v1/instances", &body).0, 200);
    }
    cli(setup.server(), &["plugin", "load", artifact("round-robin"), "--name", "lb", "--bind", SERVICE]);
    until_active(&setup, "lb", &sha("round-robin"));
    let judged = |r: &Value| -> Vec<(u64, String, String)> {
        r["rollout"]["log"]
            .as_array()
            .map(|log| {
                log.iter()
                    .filter(|d| d["by"].as_str().is_some_and(|b| b.starts_with("judge@")))
                    .map(|d| {
                        (
                            d["step"].as_u64().unwrap(),
                            d["state"].as_str().unwrap().to_owned(),
                            d["by"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (decider, before, during, failed) = under_load(&setup, || {
        let plan = "10%:3s,30%:3s,60%:3s";
        let args = ["plugin", "load", artifact("peak-ewma"), "--name", "lb", "--bind", SERVICE, "--rollout", plan];
        cli(setup.server(), &[&args[..], &["--min-requests", "20"]].concat());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = record(setup.server(), "lb");
            if let Some((_, _, by)) = judged(&r).into_iter().next() {
                break by;
            }
            assert!(Instant::now() < deadline, "no step judged: {}\n{}", r["rollout"], setup.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let killed = setup
        .servers
        .iter()
        .position(|s| decider.ends_with(&s.quic.to_string()))
        .unwrap_or_else(|| panic!("{decider} names neither server"));
    setup.servers.remove(killed).kill9();
    let (promoted, after_before, after, after_failed) =
        under_load(&setup, || until_state(&setup, setup.server(), "lb", "promoted", Duration::from_secs(120)));
    assert_eq!(promoted["sha256"], sha("peak-ewma"), "the candidate is the record's version");
    let judged = judged(&promoted);
    let steps: Vec<(u64, &str)> = judged.iter().map(|(step, state, _)| (*step, state.as_str())).collect();
    assert_eq!(steps, [(1, "canary"), (2, "canary"), (2, "promoted")], "each step decided once: {judged:?}");
    assert!(
        judged.iter().skip(1).all(|(_, _, by)| *by != decider),
        "after the kill the other server decides: {judged:?}"
    );
    until_active(&setup, "lb", &sha("peak-ewma"));
    assert_eq!(failed + after_failed, 0, "every request answered 200");
    assert!(before >= 50 && during > 0 && after_before >= 50 && after > 0, "requests overlapped the rollout");
    eprintln!(
        "rollout (etcd, 2 servers, 3 gateways): good candidate promoted in 3 steps, the first decided by {decider} (then killed), the others by the survivor; {} requests during it, 0 failed",
        during + after
    );
}

/// A gateway whose service the candidate refuses (fewer endpoints than it accepts) pauses
/// the rollout with that gateway's reason; `abort` returns everyone to the stable version.
#[test]
fn a_gateway_refusing_the_candidate_pauses_the_rollout_and_abort_returns_to_the_stable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    // Sixteen services of 4 instances (never dialled) the server validates the candidate on;
    // the gateway routes a seventeenth, of the fleet's 4 backends, where the candidate wants 5.
    for s in 0..16 {
        for port in 1..=4 {
            let body = crate::support::instance(&format!("many/g/s{s:02}"), &format!("i{port}"), port, false);
            assert_eq!(server.post("/v1/instances", &body).0, 200);
        }
        let fifth = crate::support::instance(&format!("many/g/s{s:02}"), "i5", 5, false);
        assert_eq!(server.post("/v1/instances", &fifth).0, 200);
    }
    let setup = fleet(dir, None, vec![server], 1, "many/g/s16", [10, 10, 10, 10]);
    let route = |k: usize| {
        http()
            .get(&format!("http://{}/orders", setup.gateways[0].addr))
            .header("x-user", &format!("u{k}"))
            .call()
            .map_or(0, |r| r.status().as_u16())
    };
    cli(setup.server(), &["plugin", "load", artifact("round-robin"), "--name", "lb", "--bind", "many"]);
    until_active(&setup, "lb", &sha("round-robin"));
    let config = r#"{"fault": "refuse-below", "endpoints": 5}"#;
    let args = ["plugin", "load", artifact("misbehave"), "--name", "lb", "--bind", "many", "--config", config];
    cli(setup.server(), &[&args[..], &["--rollout", "10%:1h"]].concat());
    let paused = until_state(&setup, setup.server(), "lb", "paused", Duration::from_secs(60));
    let last = paused["rollout"]["log"].as_array().unwrap().last().unwrap().clone();
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.contains("shop/edge/gateway/")
            && reason.contains("refused the candidate")
            && reason.contains("refuse-below"),
        "{last}"
    );
    assert!(last["by"].as_str().unwrap().starts_with("judge@"), "{last}");
    assert!((0..40).all(|k| route(k) == 200), "the stable keeps serving while paused");
    let status = cli(setup.server(), &["plugin", "rollout", "status", "lb"]);
    assert!(status.contains("paused") && status.contains("refused the candidate"), "{status}");
    cli(setup.server(), &["plugin", "rollout", "abort", "lb"]);
    let aborted = record(setup.server(), "lb");
    assert_eq!(aborted["rollout"]["state"], "aborted");
    assert_eq!(aborted["sha256"], sha("round-robin"));
    let served: Vec<u64> = setup.backends.iter().map(Backend::served).collect();
    assert!((0..80).all(|k| route(k) == 200));
    let spread: Vec<u64> = setup.backends.iter().zip(&served).map(|(b, n)| b.served() - n).collect();
    assert!(spread.iter().all(|&n| n >= 10), "round robin serves every backend after the abort: {spread:?}");
}
