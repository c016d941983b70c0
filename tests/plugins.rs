//! Plugins in a running `sextant serve`: the watched directory, `sextant plugin
//! load|list|rollback|delete`, picks through the active plugin, bad components refused with
//! the active plugin untouched, per-plugin metrics.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{Server, instance, run, wait_until};

const SERVICE: &str = "shop/web/orders";

fn artifact(name: &str) -> &'static str {
    sextant_plugin_artifacts::path(name).expect("artifact built")
}

fn plugin_list(server: &Server) -> Value {
    let out = run(server, &["plugin", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("plugin list --json is JSON")
}

/// The balancer slot of SERVICE: (plugin, sha256).
fn active(server: &Server) -> Option<(String, String)> {
    let list = plugin_list(server);
    list["slots"].as_array()?.iter().find(|s| s["service"] == SERVICE && s["kind"] == "balancer").map(|s| {
        (s["plugin"].as_str().unwrap_or_default().to_owned(), s["sha256"].as_str().unwrap_or_default().to_owned())
    })
}

fn picks(server: &Server, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            let out = run(server, &["pick", "--service", SERVICE]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        })
        .collect()
}

/// `n` picks with one consistent-hash key: the instances they landed on.
fn picks_for_key(server: &Server, n: usize, key: &str) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            let out = run(server, &["pick", "--service", SERVICE, "--hash-key", key]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        })
        .collect()
}

fn sha256_of(path: &str) -> String {
    let list = std::process::Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&list.stdout).split_whitespace().next().unwrap().to_owned()
}

fn load(server: &Server, args: &[&str]) -> std::process::Output {
    let mut all = vec!["plugin", "load"];
    all.extend_from_slice(args);
    run(server, &all)
}

#[test]
fn plugins_from_a_directory_and_the_cli_swap_in_and_bad_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let server = Server::try_start_with(
        &dir.path().join("data"),
        &["--plugins", plugins.to_str().unwrap(), "--plugins-poll-ms", "100", "--balancer", "ring-hash"],
    )
    .unwrap_or_else(|f| panic!("{:?}\n{}", f.status, f.log));
    for (id, port) in [("a", 9001), ("b", 9002), ("c", 9003)] {
        let mut i = instance("orders", id, port, false);
        i["service"] = serde_json::json!({"namespace": "shop", "group": "web", "service": "orders"});
        let (status, body) = server.post("/v1/instances", &i);
        assert_eq!(status, 200, "{body}");
    }
    let everyone: BTreeSet<String> = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"].map(String::from).into();

    // Before any plugin: the built-in `--balancer` names, ring hash: one key, one instance,
    // every time; many keys, every instance.
    let one = picks_for_key(&server, 5, "user-7");
    assert!(one.len() == 1 && one.is_subset(&everyone), "{one:?}");
    let spread: BTreeSet<String> = (0..40).flat_map(|k| picks_for_key(&server, 1, &format!("user-{k}"))).collect();
    assert_eq!(spread, everyone, "40 keys reach every instance");
    assert_eq!(active(&server).unwrap().0, "ring-hash");

    // A plugin dropped into the directory, bound by its sidecar, swaps in.
    let rr = artifact("round-robin");
    std::fs::write(plugins.join("rr.json"), format!(r#"{{"binding": "{SERVICE}"}}"#)).unwrap();
    // Copied under another name and renamed, as a deployment would: the watcher never sees
    // a half-written component (under load it did, and reported it as a failure).
    std::fs::copy(rr, plugins.join("rr.part")).unwrap();
    std::fs::rename(plugins.join("rr.part"), plugins.join("rr.wasm")).unwrap();
    wait_until("rr from the directory", || active(&server).is_some_and(|(p, _)| p == "rr"));
    assert_eq!(active(&server).unwrap().1, sha256_of(rr));
    assert_eq!(picks(&server, 12), everyone, "round robin reaches every instance");

    // Bad components through the CLI: refused (exit 5) with what is wrong; rr keeps serving.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, "definitely not wasm").unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&[junk.to_str().unwrap(), "--name", "rr", "--bind", SERVICE], "not a WebAssembly file"),
        (&[artifact("consecutive"), "--name", "rr", "--bind", SERVICE], "cannot go into a balancer slot"),
        (&[artifact("wrong-version"), "--name", "rr", "--bind", SERVICE], "this host speaks"),
        (
            &[artifact("misbehave"), "--name", "rr", "--bind", SERVICE, "--config", r#"{"fault":"loop-pick"}"#],
            "self-test",
        ),
    ];
    for (args, expected) in cases {
        let out = load(&server, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr:?} should say {expected:?}");
        assert_eq!(active(&server).unwrap(), ("rr".into(), sha256_of(rr)), "{args:?} disturbed the active plugin");
    }
    let failures = plugin_list(&server)["failures"].as_array().unwrap().len();
    assert_eq!(failures, 4);

    // A good one through the CLI replaces rr; rollback brings round robin back, keeping
    // random for a roll forward.
    let random = artifact("random");
    let out = load(&server, &[random, "--name", "rr", "--bind", SERVICE, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let written: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(written["record"]["sha256"], sha256_of(random).as_str());
    assert_eq!(active(&server).unwrap().1, sha256_of(random), "active once the load answers");
    picks(&server, 4);
    let out = run(&server, &["plugin", "rollback", "rr"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(active(&server).unwrap().1, sha256_of(rr));
    let out = run(&server, &["plugin", "rollback", "nope"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));

    // Per plugin version, counters in /metrics that a swap does not erase: round robin's
    // 12 picks before random and 3 after the rollback, random's 4.
    picks(&server, 3);
    let metrics = server.text("/metrics");
    let total = |sha: &str| -> u64 {
        let series = format!(r#"sextant_plugin_calls_total{{kind="balancer",plugin="rr",sha256="{sha}"}} "#);
        let line =
            metrics.lines().find(|l| l.starts_with(&series)).unwrap_or_else(|| panic!("no {series} in\n{metrics}"));
        line[series.len()..].parse().unwrap()
    };
    assert_eq!(total(&sha256_of(rr)), 15);
    assert_eq!(total(&sha256_of(random)), 4, "the version rolled back from keeps its count");
    // Pick times: a histogram in seconds per version (a sample of the calls).
    let sampled = format!(
        r#"sextant_plugin_call_duration_seconds_count{{kind="balancer",plugin="rr",sha256="{}"}} "#,
        sha256_of(rr)
    );
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&sampled)?.parse().ok())
        .unwrap_or_else(|| panic!("no {sampled} in\n{metrics}"));
    assert!((1..=15).contains(&count), "{count}");
    assert!(metrics.contains("# TYPE sextant_plugin_call_duration_seconds histogram"), "{metrics}");
    assert!(!metrics.contains("call_p50_seconds"), "durations are histograms, not quantile gauges");
    crate::support::promtool_check(&metrics);

    // Roll forward to random, and back again; nothing left to roll forward to is `invalid`.
    let out = run(&server, &["plugin", "rollback", "rr", "--forward"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(active(&server).unwrap().1, sha256_of(random));
    let out = run(&server, &["plugin", "rollback", "rr", "--forward"]);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no version to roll forward to"));
    let out = run(&server, &["plugin", "rollback", "rr"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(active(&server).unwrap().1, sha256_of(rr));

    // A broken file in the directory is reported and changes nothing.
    std::fs::write(plugins.join("broken.wasm"), b"\0asm\x01\0\0\0garbage").unwrap();
    wait_until("the broken file reported", || {
        plugin_list(&server)["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["plugin"] == "broken" && f["source"] == "dir")
    });
    assert_eq!(active(&server).unwrap().0, "rr");

    // Removing the file unloads what it loaded: back to the default.
    std::fs::remove_file(plugins.join("rr.wasm")).unwrap();
    wait_until("rr unloaded", || active(&server).is_some_and(|(p, _)| p == "ring-hash"));
    let records = plugin_list(&server)["plugins"].as_array().unwrap().len();
    assert_eq!(records, 0);
    assert_eq!(picks_for_key(&server, 5, "user-7"), one, "the default answers as before");

    // `plugin delete` through the CLI: the record goes and its services fall back to the
    // default; an unknown name is not found (exit 3).
    let out = load(&server, &[random, "--name", "tmp", "--bind", SERVICE]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(active(&server).unwrap().0, "tmp");
    let out = run(&server, &["plugin", "delete", "tmp"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("tmp deleted", || active(&server).is_some_and(|(p, _)| p == "ring-hash"));
    assert_eq!(plugin_list(&server)["plugins"].as_array().unwrap().len(), 0);
    let out = run(&server, &["plugin", "delete", "tmp"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
}
