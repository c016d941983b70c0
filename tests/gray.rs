//! Gray release of config entries, end to end over both stores: a candidate written with
//! `sextant config put --beta --match RULE` reaches only the watchers its rule matches while
//! the others keep the stable version; `config promote` gives every watcher the candidate,
//! `config withdraw` gives every watcher the stable version back; bad input changes nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Server, cli, run, two_servers_on_etcd};

const KEY: &str = "shop/web/app.yaml";

/// A `sextant watch --config KEY` with reader flags, its events as JSON values.
struct Watcher {
    name: &'static str,
    child: Child,
    events: mpsc::Receiver<Value>,
}

impl Watcher {
    fn start(server: &Server, name: &'static str, reader: &[&str]) -> Self {
        let args = [&["watch", "--config", KEY][..], reader].concat();
        let mut child = cli(server, &args).stdout(Stdio::piped()).spawn().unwrap();
        let (tx, events) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(serde_json::from_str(&line).unwrap_or(Value::Null)).is_err() {
                    return;
                }
            }
        });
        Self { name, child, events }
    }

    /// The content the next event carries for the entry (a reset's record, or an upsert's).
    fn next_content(&self) -> String {
        let event = self
            .events
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("watcher {} got no event", self.name));
        let record = match event["type"].as_str() {
            Some("reset") => event["snapshot"]["records"][0].clone(),
            Some("upsert") => event["record"].clone(),
            _ => panic!("watcher {}: unexpected event {event}", self.name),
        };
        assert!(record["value"]["beta"].is_null(), "a reader is never sent the candidate itself: {event}");
        record["value"]["content"].as_str().unwrap_or_else(|| panic!("{event}")).to_owned()
    }

    /// Nothing more arrives for a moment (no event was sent twice or out of turn).
    fn quiet(&self) {
        if let Ok(event) = self.events.recv_timeout(Duration::from_millis(300)) {
            panic!("watcher {}: unexpected event {event}", self.name);
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ok(out: &Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stdout)))
}

fn content_as(server: &Server, reader: &[&str]) -> String {
    let out = run(server, &[&["config", "get", KEY][..], reader].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn whole_entry(server: &Server) -> Value {
    ok(&run(server, &["config", "get", KEY, "--json"]))
}

/// The scenario, writing through `writer` and reading through `reader` (the same server, or
/// two servers sharing one etcd).
fn gray_release(writer: &Server, reader: &Server) {
    ok(&run(writer, &["config", "put", KEY, "--content", "v1"]));
    let canary = Watcher::start(reader, "canary", &["--reader-label", "env=canary", "--reader-id", "gw-1"]);
    let prod = Watcher::start(reader, "prod", &["--reader-label", "env=prod", "--reader-id", "gw-2"]);
    assert_eq!(canary.next_content(), "v1");
    assert_eq!(prod.next_content(), "v1");

    // Bad input: a clear error, nothing written (the watchers see no event).
    let refused = |args: &[&str], code: i32, says: &str| {
        let out = run(writer, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    };
    let beta = |rule: &'static str| -> Vec<&'static str> {
        vec!["config", "put", KEY, "--content", "v2", "--beta", "--match", rule]
    };
    refused(&beta("percent=100"), 5, "out of range 1..=99");
    refused(&beta("percent=0"), 5, "out of range 1..=99");
    refused(&beta("ids="), 5, "must not be empty");
    refused(&beta("env"), 5, "is not percent=N");
    refused(&["config", "put", KEY, "--content", "v1", "--beta", "--match", "env=canary"], 5, "is the stable version");
    refused(
        &["config", "put", "shop/web/none.yaml", "--content", "x", "--beta", "--match", "env=canary"],
        3,
        "not found",
    );
    refused(&["config", "promote", KEY], 3, "has no candidate");
    refused(&["config", "withdraw", KEY], 3, "has no candidate");
    canary.quiet();
    prod.quiet();
    assert!(whole_entry(writer)["beta"].is_null());

    // A candidate for the canary label: only the canary watcher is served it.
    let written = ok(&run(writer, &beta("env=canary")));
    let v2 = written["version"].as_str().unwrap().to_owned();
    assert_eq!(canary.next_content(), "v2");
    assert_eq!(prod.next_content(), "v1");
    assert_eq!(content_as(reader, &["--reader-label", "env=canary"]), "v2");
    assert_eq!(content_as(reader, &["--reader-label", "env=prod"]), "v1");
    let whole = whole_entry(reader);
    assert_eq!((whole["content"].as_str(), whole["beta"]["content"].as_str()), (Some("v1"), Some("v2")), "{whole}");
    assert_eq!(whole["beta"]["rule"], serde_json::json!({"labels": {"env": "canary"}}), "{whole}");
    let as_canary = ok(&run(reader, &["config", "get", KEY, "--json", "--reader-label", "env=canary"]));
    assert_eq!(as_canary["version"].as_str(), Some(v2.as_str()), "the version says which: {as_canary}");

    // Promote a version that is not the candidate: refused; then the candidate: everyone.
    let zeros = "0".repeat(64);
    refused(&["config", "promote", KEY, "--version", zeros.as_str()], 1, "not 0000");
    let promoted = ok(&run(writer, &["config", "promote", KEY, "--version", v2.as_str()]));
    assert_eq!(promoted["version"].as_str(), Some(v2.as_str()));
    assert_eq!(canary.next_content(), "v2");
    assert_eq!(prod.next_content(), "v2");
    let whole = whole_entry(reader);
    assert!(whole["beta"].is_null(), "{whole}");
    assert_eq!(whole["history"][0]["version"].as_str().map(str::len), Some(64), "v1 went into the history: {whole}");

    // A candidate for one reader id, then withdrawn: everyone back on v2.
    ok(&run(writer, &["config", "put", KEY, "--content", "v3", "--beta", "--match", "ids=gw-2"]));
    assert_eq!(canary.next_content(), "v2");
    assert_eq!(prod.next_content(), "v3");
    assert_eq!(content_as(reader, &["--reader-id", "gw-2"]), "v3");
    assert_eq!(content_as(reader, &["--reader-id", "gw-9"]), "v2");
    let withdrawn = ok(&run(writer, &["config", "withdraw", KEY]));
    assert_eq!(withdrawn["version"].as_str(), Some(v2.as_str()));
    assert_eq!(canary.next_content(), "v2");
    assert_eq!(prod.next_content(), "v2");
    assert!(whole_entry(reader)["beta"].is_null());

    // A candidate survives a write of the stable version, and a watcher that starts late is
    // sent the version meant for it in its first reset.
    ok(&run(writer, &["config", "put", KEY, "--content", "v4", "--beta", "--match", "env=canary"]));
    ok(&run(writer, &["config", "put", KEY, "--content", "v5"]));
    assert_eq!((canary.next_content(), canary.next_content()), ("v4".to_owned(), "v4".to_owned()));
    assert_eq!((prod.next_content(), prod.next_content()), ("v2".to_owned(), "v5".to_owned()));
    let late = Watcher::start(reader, "late", &["--reader-label", "env=canary"]);
    assert_eq!(late.next_content(), "v4");
}

#[test]
fn a_candidate_reaches_the_readers_its_rule_matches_and_promote_and_withdraw_reach_all_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    gray_release(&server, &server);
    // Durable: the candidate is still served after a restart.
    let server = server.restart(&[]);
    assert_eq!(content_as(&server, &["--reader-label", "env=canary"]), "v4");
    assert_eq!(content_as(&server, &["--reader-label", "env=prod"]), "v5");
}

#[test]
fn a_candidate_written_through_one_server_reaches_the_matching_watchers_of_another_on_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_etcd, a, b) = two_servers_on_etcd(dir.path(), &runtime);
    gray_release(&a, &b);
}
