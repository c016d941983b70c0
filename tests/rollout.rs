//! Progressive rollout through the binaries: `sextant serve`, `sextant gateway` and the CLI,
//! four backends, one of them slow (100 ms), concurrent clients with retries off.
//!
//! - A candidate that ignores the registered weights (round robin over weighted endpoints,
//!   so a quarter of its requests go to the slow one) is rolled back by the servers' judge at
//!   its first canary step, on the gateway's reports; the stable version serves alone after,
//!   and the decision and its evidence are in the record.
//! - A good candidate (peak EWMA replacing round robin with the slow backend present) goes
//!   through every step to 100 % and becomes the record's version.
//! - Every request is answered 200 throughout, and requests overlapped the rollout.
//! - Bad input: malformed plans, a rollout of a record that does not exist, a second
//!   rollout, commands with no rollout running: refused with the reason, nothing changed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use serde_json::Value;
use sextant_gateway::backend::{Backend, Behavior};

use crate::gateway::Gateway;
use crate::support::{Server, free_port, http, promtool_check, run, wait_until};

const SERVICE: &str = "shop/web/orders";
const CLIENTS: usize = 3;

/// Three fast backends and one slow one (100 ms), registered with `weights`, a server and a
/// gateway routing `/` to them with `x-user` as the affinity key and no retries.
struct Setup {
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
    backends: Vec<Backend>,
    server: Server,
    gateway: Gateway,
}

fn setup(weights: [u32; 4]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let backends: Vec<Backend> = (0..4)
        .map(|i| {
            let latency = Duration::from_millis(if i == 3 { 100 } else { 1 });
            runtime.block_on(Backend::start(&format!("b{i}"), Behavior { latency, ..Behavior::default() })).unwrap()
        })
        .collect();
    let server = Server::start(&dir.path().join("data"));
    for (i, b) in backends.iter().enumerate() {
        let body = serde_json::json!({
            "service": { "namespace": "shop", "group": "web", "service": "orders" },
            "id": format!("b{i}"), "ip": "127.0.0.1", "port": b.addr().port(), "ephemeral": false,
            "weight": weights[i],
        });
        let (status, answer) = server.post("/v1/instances", &body);
        assert_eq!(status, 200, "{answer}");
    }
    let gw_dir = dir.path().join("gw");
    std::fs::create_dir(&gw_dir).unwrap();
    let config = gw_dir.join("gateway.json");
    let document = serde_json::json!({
        "gateway": {"routes": [{"path_prefix": "/", "service": SERVICE, "hash_header": "x-user"}]},
        "balancer": "round-robin",
        "retry": {"attempts": 1},
    });
    std::fs::write(&config, document.to_string()).unwrap();
    let gateway = Gateway::spawn(&server, &gw_dir, free_port(), &["--config", config.to_str().unwrap()]);
    wait_until("the gateway is ready", || {
        http().get(&format!("http://{}/ready", gateway.metrics)).call().is_ok_and(|r| r.status() == 200)
    });
    Setup { _dir: dir, _runtime: runtime, backends, server, gateway }
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

/// Waits until the gateway reports running `name` at `version` (its sha256's first 12).
fn until_active(setup: &Setup, name: &str, sha: &str) {
    let want = format!("active {}", &sha[..12]);
    wait_until(&format!("the gateway runs {name} {want}"), || {
        let list: Value = serde_json::from_str(&cli(&setup.server, &["plugin", "list", "--json"])).unwrap();
        list["hosts"].as_array().is_some_and(|h| h.iter().any(|h| h["plugin"] == name && h["state"] == want))
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
    let addr = setup.gateway.addr.clone();
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let (clients, addr) = (&clients, &addr);
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
fn until_state(setup: &Setup, name: &str, state: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let r = record(&setup.server, name);
        if r["rollout"]["state"] == state {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "the rollout of {name} is not {state} after {limit:?}: {}\n{}\n{}",
            r["rollout"],
            cli(&setup.server, &["plugin", "rollout", "status", name]),
            setup.gateway.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_candidate_that_ignores_weights_is_rolled_back_by_the_judge_and_the_stable_serves_on() {
    // The slow backend weighs 1, the others 100: the stable (weighted) sends it 1 request in
    // 300; the candidate (round robin) one in four.
    let setup = setup([100, 100, 100, 1]);
    cli(&setup.server, &["plugin", "load", artifact("weighted"), "--name", "lb", "--bind", SERVICE]);
    until_active(&setup, "lb", &sha("weighted"));
    let plan = "10%:3s,50%:3s";
    let (decided, before, during, failed) = under_load(&setup, || {
        let out = cli(
            &setup.server,
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
        until_state(&setup, "lb", "rolled-back", Duration::from_secs(90))
    });
    let rollout = &decided["rollout"];
    assert_eq!(decided["sha256"], sha("weighted"), "the stable version stays the record's");
    assert_eq!(rollout["step"], 0, "rolled back at its first canary step: {rollout}");
    let last = rollout["log"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["state"], "rolled-back");
    assert!(last["by"].as_str().unwrap().starts_with("judge@"), "{last}");
    let evidence = &last["evidence"];
    assert_eq!(evidence["gateways"], 1, "decided on the gateway's report: {evidence}");
    let (cp99, sp99) =
        (evidence["candidate"]["p99_ms"].as_f64().unwrap(), evidence["stable"]["p99_ms"].as_f64().unwrap());
    assert!(cp99 > 1.3 * sp99 + 1.0, "the evidence shows the candidate's p99 {cp99} against the stable's {sp99}");
    assert!(evidence["failed"].as_array().unwrap().iter().any(|f| f.as_str().unwrap().contains("p99")), "{evidence}");
    let (c, s) =
        (evidence["candidate"]["requests"].as_u64().unwrap(), evidence["stable"]["requests"].as_u64().unwrap());
    assert!(c >= 40, "decided on at least min-requests candidate requests: {evidence}");
    eprintln!(
        "rollout: harmful candidate rolled back at step 1 (10%): {c} of {} requests through it ({:.1}%), candidate p99 {cp99:.1} ms vs stable {sp99:.1} ms; {during} requests answered during the episode, {failed} failed",
        c + s,
        100.0 * c as f64 / (c + s) as f64
    );
    assert_eq!(failed, 0, "every request answered 200");
    assert!(before >= 50 && during > 0, "requests overlapped the rollout");
    // The gateway dropped the candidate: its report of the rollout is gone, and the slow
    // backend is back to the stable's share.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list: Value = serde_json::from_str(&cli(&setup.server, &["plugin", "list", "--json"])).unwrap();
        if list["rollouts"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway still reports the rollout: {}\n{}",
            list["rollouts"],
            setup.gateway.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let slow = setup.backends[3].served();
    for k in 0..150 {
        let status = http()
            .get(&format!("http://{}/orders", setup.gateway.addr))
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
    let status = cli(&setup.server, &["plugin", "rollout", "status", "lb"]);
    assert!(status.contains("rolled-back") && status.contains("judge@"), "{status}");
}

#[test]
fn a_good_candidate_is_promoted_through_every_step_with_no_failed_request() {
    let setup = setup([10, 10, 10, 10]);
    cli(&setup.server, &["plugin", "load", artifact("round-robin"), "--name", "lb", "--bind", SERVICE]);
    until_active(&setup, "lb", &sha("round-robin"));
    let (promoted, before, during, failed) = under_load(&setup, || {
        cli(
            &setup.server,
            &[
                "plugin",
                "load",
                artifact("peak-ewma"),
                "--name",
                "lb",
                "--bind",
                SERVICE,
                "--rollout",
                "shadow:2s,10%:2s,50%:2s",
                "--min-requests",
                "30",
            ],
        );
        // The gateway's per-version outcome series, while a canary step runs.
        let series = format!(
            r#"sextant_gateway_rollout_step_requests{{service="{SERVICE}",version="candidate",outcome="ok"}} "#
        );
        wait_until("the gateway exports the candidate's outcomes", || {
            let text = setup.gateway.metrics();
            text.lines().any(|l| l.strip_prefix(series.as_str()).is_some_and(|n| n.parse::<u64>().is_ok_and(|n| n > 0)))
        });
        promtool_check(&setup.gateway.metrics());
        until_state(&setup, "lb", "promoted", Duration::from_secs(120))
    });
    assert_eq!(promoted["sha256"], sha("peak-ewma"), "the candidate is the record's version");
    let states: Vec<&str> =
        promoted["rollout"]["log"].as_array().unwrap().iter().map(|d| d["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["shadow", "canary", "canary", "promoted"], "started in shadow, advanced twice, promoted");
    assert_eq!(failed, 0, "every request answered 200");
    assert!(before >= 50 && during > 0, "requests overlapped the rollout");
    until_active(&setup, "lb", &sha("peak-ewma"));
    let mut r = http().get(&setup.server.url("/metrics")).call().expect("GET /metrics");
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
        refused(&setup.server, &["plugin", "load", rr, "--name", "lb", "--bind", SERVICE, "--rollout", "10%:1m"]);
    assert!(e.contains("stable version"), "{e}");
    assert_eq!(record(&setup.server, "lb"), Value::Null, "nothing written");
    cli(&setup.server, &["plugin", "load", rr, "--name", "lb", "--bind", SERVICE]);
    let before = record(&setup.server, "lb");
    let pe = artifact("peak-ewma");
    for (plan, says) in [
        ("", "at least one step"),
        ("10%:5m,5%:5m", "increase"),
        ("150%:1m", "at most 100%"),
        ("10%:0s", "1s to 7d"),
        ("10%:1m max-latency=2", "unknown criterion"),
    ] {
        let (code, e) =
            refused(&setup.server, &["plugin", "load", pe, "--name", "lb", "--bind", SERVICE, "--rollout", plan]);
        assert_eq!(code, 2, "{plan:?}: {e}");
        assert!(e.contains(says), "{plan:?}: {e}");
    }
    // The same version as the stable one, another binding: refused by the server.
    let (_, e) =
        refused(&setup.server, &["plugin", "load", rr, "--name", "lb", "--bind", SERVICE, "--rollout", "10%:1m"]);
    assert!(e.contains("current version"), "{e}");
    let (_, e) =
        refused(&setup.server, &["plugin", "load", pe, "--name", "lb", "--bind", "shop", "--rollout", "10%:1m"]);
    assert!(e.contains("kind and binding"), "{e}");
    // No rollout to steer.
    for verb in ["pause", "resume", "promote", "abort"] {
        let (code, e) = refused(&setup.server, &["plugin", "rollout", verb, "lb"]);
        assert!(e.contains("no rollout"), "{verb}: {code} {e}");
    }
    assert_eq!(record(&setup.server, "lb"), before, "nothing changed");
    // One running: a second is refused; pause, resume, abort steer it; abort leaves the stable.
    cli(&setup.server, &["plugin", "load", pe, "--name", "lb", "--bind", SERVICE, "--rollout", "shadow:1h,10%:1h"]);
    let (_, e) = refused(
        &setup.server,
        &["plugin", "load", artifact("random"), "--name", "lb", "--bind", SERVICE, "--rollout", "10%:1m"],
    );
    assert!(e.contains("runs a rollout"), "{e}");
    let (_, e) = refused(&setup.server, &["plugin", "rollout", "resume", "lb"]);
    assert!(e.contains("not paused"), "{e}");
    cli(&setup.server, &["plugin", "rollout", "pause", "lb"]);
    assert_eq!(record(&setup.server, "lb")["rollout"]["state"], "paused");
    cli(&setup.server, &["plugin", "rollout", "resume", "lb"]);
    assert_eq!(record(&setup.server, "lb")["rollout"]["state"], "shadow");
    cli(&setup.server, &["plugin", "rollout", "abort", "lb"]);
    let after = record(&setup.server, "lb");
    assert_eq!(after["rollout"]["state"], "aborted");
    assert_eq!(after["sha256"], sha("round-robin"), "the stable version stays");
    let (_, e) = refused(&setup.server, &["plugin", "rollout", "abort", "lb"]);
    assert!(e.contains("aborted"), "{e}");
}
