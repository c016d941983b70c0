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

/// `pick` over QUIC names what a retry already tried: a sticky key whose instance failed
/// goes to the next instance of its ring, the same one at every retry, and past that one
/// too; an address not in the service changes nothing; more than 64 is refused.
#[test]
fn a_pick_that_names_what_it_tried_moves_a_sticky_key_on_to_the_same_next_instance() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::try_start_with(&dir.path().join("data"), &["--balancer", "ring-hash"])
        .unwrap_or_else(|f| panic!("{:?}\n{}", f.status, f.log));
    for (id, port) in [("a", 9101), ("b", 9102), ("c", 9103), ("d", 9104)] {
        let mut i = instance("orders", id, port, false);
        i["service"] = serde_json::json!({"namespace": "shop", "group": "web", "service": "orders"});
        let (status, body) = server.post("/v1/instances", &i);
        assert_eq!(status, 200, "{body}");
    }
    let pick = |key: &str, tried: &[&str]| -> String {
        let mut args = vec!["pick", "--service", SERVICE, "--hash-key", key];
        for t in tried {
            args.extend(["--tried", t]);
        }
        let out = run(&server, &args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let mut moved = 0;
    for k in 0..8 {
        let key = format!("user-{k}");
        let first = pick(&key, &[]);
        let second = pick(&key, &[&first]);
        assert_ne!(first, second, "{key}: the retry avoids what it tried");
        assert_eq!(pick(&key, &[&first]), second, "{key}: the same next instance at every retry");
        let third = pick(&key, &[&first, &second]);
        assert!(third != first && third != second, "{key}: past both tried: {third}");
        assert_eq!(pick(&key, &["127.0.0.1:1"]), first, "{key}: an address not in the service is ignored");
        moved += 1;
    }
    assert_eq!(moved, 8);

    let many: Vec<String> = (0..65).map(|i| format!("10.0.0.{i}:80")).collect();
    let mut args = vec!["pick", "--service", SERVICE, "--hash-key", "user-0"];
    for t in &many {
        args.extend(["--tried", t.as_str()]);
    }
    let out = run(&server, &args);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("65 addresses tried, at most 64"), "{stderr}");
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

/// A component with a custom section of `padding` bytes appended: the same plugin, larger.
fn padded(component: &[u8], padding: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                return;
            }
        }
    }
    let name = b"padding";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.resize(payload.len() + padding, 0x5a);
    let mut out = component.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// Components larger than a frame go up in chunks (`plugin_upload`), then load by sha256;
/// chunks out of order or missing, a hash that does not match, an incomplete or unknown
/// upload and a component above the limit are refused, naming what is wrong, and nothing
/// is stored or changed.
#[test]
fn large_components_upload_in_chunks_and_bad_uploads_change_nothing() {
    use sextant_proto::{ARTIFACT_CHUNK, ErrorCode, MAX_COMPONENT_LEN, Request, Response, encode_component};
    use sextant_quic::client::{Client, ClientError, ClientOptions};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    for (id, port) in [("a", 9001), ("b", 9002)] {
        let mut i = instance("orders", id, port, false);
        i["service"] = serde_json::json!({"namespace": "shop", "group": "web", "service": "orders"});
        assert_eq!(server.post("/v1/instances", &i).0, 200);
    }
    // Three chunks and a bit: through the CLI, which uploads it, then loads it by hash.
    let big = padded(&std::fs::read(artifact("round-robin")).unwrap(), 3 * ARTIFACT_CHUNK);
    let file = dir.path().join("big-rr.wasm");
    std::fs::write(&file, &big).unwrap();
    let out = load(&server, &[file.to_str().unwrap(), "--bind", SERVICE]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(picks(&server, 4).len(), 2, "the padded round robin serves both");
    assert_eq!(active(&server).unwrap(), ("big-rr".into(), sextant_core::sha256_hex(&big)));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let options = ClientOptions::new(vec![server.quic], server.data_dir.join("tls/ca.pem"));
    let client = rt.block_on(Client::connect(options)).unwrap();
    let refused = |request: Request| match rt.block_on(client.request(request)) {
        Err(ClientError::Server { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    let other = padded(&std::fs::read(artifact("random")).unwrap(), 2 * ARTIFACT_CHUNK);
    let sha = sextant_core::sha256_hex(&other);
    let size = other.len() as u64;
    let chunk = |offset: usize| {
        let end = other.len().min(offset + ARTIFACT_CHUNK);
        Request::PluginUpload {
            sha256: sha.clone(),
            size,
            offset: offset as u64,
            data: encode_component(&other[offset..end]),
        }
    };
    let (code, message) = refused(chunk(ARTIFACT_CHUNK));
    assert_eq!(code, ErrorCode::Invalid);
    assert!(message.contains("start at offset 0"), "{message}");
    match rt.block_on(client.request(chunk(0))).unwrap() {
        Response::Uploaded { received, .. } => assert_eq!(received, ARTIFACT_CHUNK as u64),
        other => panic!("{other:?}"),
    }
    let (_, message) = refused(chunk(2 * ARTIFACT_CHUNK));
    assert!(message.contains("a chunk is missing"), "{message}");
    let load_by_hash = |sha: &str| Request::PluginLoad {
        name: "partial".parse().unwrap(),
        kind: "balancer".into(),
        binding: SERVICE.into(),
        config: String::new(),
        component: String::new(),
        component_sha256: Some(sha.to_owned()),
        rollout: None,
    };
    let (code, message) = refused(load_by_hash(&sha));
    assert_eq!(code, ErrorCode::Invalid);
    assert!(message.contains("incomplete"), "{message}");
    // The same bytes announced under another hash: dropped once complete, nothing stored.
    let wrong = sextant_core::sha256_hex(b"another component");
    for offset in (0..other.len()).step_by(ARTIFACT_CHUNK) {
        let end = other.len().min(offset + ARTIFACT_CHUNK);
        let request = Request::PluginUpload {
            sha256: wrong.clone(),
            size,
            offset: offset as u64,
            data: encode_component(&other[offset..end]),
        };
        let answer = rt.block_on(client.request(request));
        if end == other.len() {
            let Err(ClientError::Server { code, message }) = answer else { panic!("{answer:?}") };
            assert_eq!(code, ErrorCode::Invalid);
            assert!(message.contains("hash to") && message.contains("nothing stored"), "{message}");
        } else {
            answer.unwrap();
        }
    }
    let (code, message) = refused(load_by_hash(&wrong));
    assert_eq!(code, ErrorCode::NotFound, "{message}");
    let (code, message) = refused(Request::PluginUpload {
        sha256: sha.clone(),
        size: MAX_COMPONENT_LEN as u64 + 1,
        offset: 0,
        data: encode_component(b"x"),
    });
    assert_eq!(code, ErrorCode::Invalid);
    assert!(message.contains(&MAX_COMPONENT_LEN.to_string()), "{message}");
    // Above the limit: the CLI refuses before sending anything.
    let huge = dir.path().join("huge.wasm");
    std::fs::write(&huge, padded(&big, MAX_COMPONENT_LEN)).unwrap();
    let out = load(&server, &[huge.to_str().unwrap(), "--bind", SERVICE]);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the limit is"));
    // None of that changed the plugins: the first upload still serves, alone.
    assert_eq!(active(&server).unwrap(), ("big-rr".into(), sextant_core::sha256_hex(&big)));
    let records = plugin_list(&server)["plugins"].as_array().unwrap().len();
    assert_eq!(records, 1);
    // A component already stored loads by hash with no upload (another name, same bytes).
    let again = rt.block_on(client.request(Request::PluginLoad {
        name: "same-bytes".parse().unwrap(),
        kind: "balancer".into(),
        binding: String::new(),
        config: String::new(),
        component: String::new(),
        component_sha256: Some(sextant_core::sha256_hex(&big)),
        rollout: None,
    }));
    assert!(matches!(again, Ok(Response::PluginWritten { .. })), "{again:?}");
}

/// The summary of one binding in `plugin list --json`.
fn binding(server: &Server, plugin: &str) -> Option<Value> {
    plugin_list(server)["bindings"].as_array()?.iter().find(|b| b["plugin"] == plugin).cloned()
}

/// Eight services bound with `*` on a server whose plugin pool holds 6 instances: a 0.1.0
/// component (an instance per service and worker thread) runs on a few of them and fails on
/// the rest, which `plugin list` sums up in one line per binding with the failures grouped by
/// reason (the pool, and the flag that raises it), and the log says once; the same services
/// bound to a 0.2.0 component all run it, on one instance per worker thread, and `/metrics`
/// shows the limits and what is in use.
#[test]
fn a_binding_over_many_services_is_summed_up_with_its_failures_grouped() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        Server::try_start_with(dir.path(), &["--plugin-instances", "6"]).unwrap_or_else(|f| panic!("{}", f.log));
    let services: Vec<String> = (0..8).map(|i| format!("fleet/web/s{i}")).collect();
    for (i, service) in services.iter().enumerate() {
        for k in 0..2u16 {
            let port = 9300 + u16::try_from(i).unwrap() * 2 + k;
            assert_eq!(server.post("/v1/instances", &instance(service, &format!("i{k}"), port, false)).0, 200);
        }
        // A server keeps a balancer slot per service it was asked to pick for.
        assert!(run(&server, &["pick", "--service", service]).status.success());
    }

    let out = load(&server, &[artifact("legacy"), "--name", "old", "--bind", "*"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("every covered service activated", || {
        binding(&server, "old").is_some_and(|b| {
            let failed: u64 =
                b["failed"].as_array().map_or(0, |f| f.iter().filter_map(|g| g["services"].as_u64()).sum());
            b["running"].as_u64().unwrap_or(0) + failed == 8
        })
    });
    let old = binding(&server, "old").unwrap();
    assert_eq!((old["services"].as_u64(), old["contract"].as_str()), (Some(8), Some("0.1.0")), "{old}");
    let running = old["running"].as_u64().unwrap();
    let groups = old["failed"].as_array().unwrap();
    assert!(running >= 1 && groups.len() == 1, "one reason for every failed service: {old}");
    let failed = groups[0]["services"].as_u64().unwrap();
    let reason = groups[0]["reason"].as_str().unwrap();
    assert!(failed >= 1 && running + failed == 8, "{old}");
    assert!(reason.contains("plugin instances (the pool)") && reason.contains("--plugin-instances"), "{reason}");
    assert!(!groups[0]["examples"].as_array().unwrap().is_empty(), "{old}");
    let text = String::from_utf8_lossy(&run(&server, &["plugin", "list"]).stdout).into_owned();
    assert!(
        text.lines().any(|l| l.starts_with("binding old balancer * (")
            && l.contains(&format!("this server 8 services, {running} running, {failed} failed"))),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with(&format!("  failed on {failed} services (e.g. "))), "{text}");
    // One log line for the failures of one pass, not one per service.
    let lines = server.log().lines().filter(|l| l.contains("plugin not loaded") && l.contains("old")).count();
    assert!(lines >= 1 && (failed < 2 || lines < usize::try_from(failed).unwrap()), "{lines} lines:\n{}", server.log());

    // The same services on a 0.2.3 component: all run it, on one instance per worker thread.
    assert!(run(&server, &["plugin", "delete", "old"]).status.success());
    let out = load(&server, &[artifact("round-robin"), "--name", "new", "--bind", "*"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("every covered service runs the 0.2.3 plugin", || {
        binding(&server, "new").is_some_and(|b| b["running"].as_u64() == Some(8))
    });
    let new = binding(&server, "new").unwrap();
    assert_eq!(new["contract"].as_str(), Some("0.2.3"), "{new}");
    assert!(new["failed"].as_array().unwrap().is_empty(), "{new}");
    let instances = new["instances"].as_u64().unwrap();
    assert!((1..=6).contains(&instances) && new["resources"].as_u64().unwrap() >= 8, "{new}");
    for service in &services {
        assert!(run(&server, &["pick", "--service", service]).status.success());
    }
    let metrics = server.text("/metrics");
    for line in ["sextant_plugin_instances_limit 6", "sextant_plugin_plugins_running 1"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    let shared = format!(
        "sextant_plugin_shared_instances{{kind=\"balancer\",plugin=\"new\",sha256=\"{}\"}} {instances}",
        sha256_of(artifact("round-robin"))
    );
    assert!(metrics.lines().any(|l| l == shared), "{shared} in:\n{metrics}");
    crate::support::promtool_check(&metrics);
}
