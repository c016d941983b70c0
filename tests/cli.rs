//! The `sextant` CLI against a real `sextant serve`, over QUIC on loopback.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Server, cli, run, sextant_bin};

/// Lines of a child's stdout, read on a thread so the test can wait with a deadline.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn new(stdout: ChildStdout) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self(rx)
    }

    fn next_json(&self, within: Duration) -> Value {
        let line = self.0.recv_timeout(within).expect("a line in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"))
    }
}

fn spawn(server: &Server, args: &[&str]) -> (Child, Lines) {
    let mut child = cli(server, args).stdout(Stdio::piped()).spawn().expect("spawn sextant");
    let lines = Lines::new(child.stdout.take().unwrap());
    (child, lines)
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn register_watch_pick_and_deregister_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("d"));
    let (mut watcher, events) = spawn(&server, &["watch", "--service", "shop/web/orders"]);
    let first = events.next_json(Duration::from_secs(10));
    assert_eq!(first["type"], "reset", "{first}");

    let (mut owner, owner_out) =
        spawn(&server, &["register", "--service", "shop/web/orders", "--addr", "127.0.0.1:9000", "--meta", "k=v"]);
    let registered = owner_out.next_json(Duration::from_secs(10));
    assert_eq!(registered["registered"], "shop/web/orders/127.0.0.1:9000");
    let upsert = events.next_json(Duration::from_secs(10));
    assert_eq!(upsert["type"], "upsert");
    assert_eq!(upsert["record"]["value"]["metadata"]["k"], "v");

    let picked = run(&server, &["pick", "--service", "shop/web/orders"]);
    assert!(picked.status.success(), "{}", String::from_utf8_lossy(&picked.stderr));
    assert_eq!(String::from_utf8_lossy(&picked.stdout).trim(), "127.0.0.1:9000");
    let listed = run(&server, &["list", "--namespace", "shop", "--json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed["records"].as_array().unwrap().len(), 1);

    // SIGTERM: the ephemeral registration deregisters and exits 0.
    assert!(terminate(&mut owner).success());
    assert_eq!(owner_out.next_json(Duration::from_secs(5))["deregistered"], "shop/web/orders/127.0.0.1:9000");
    let removed = events.next_json(Duration::from_secs(10));
    assert_eq!(removed["type"], "remove");
    assert!(terminate(&mut watcher).success());
}

#[test]
fn a_killed_client_s_instances_leave_after_the_grace_period() {
    let tmp = tempfile::tempdir().unwrap();
    let server = match Server::try_start_with(&tmp.path().join("d"), &["--grace-ms", "500"]) {
        Ok(s) => s,
        Err(f) => panic!("{f:?}"),
    };
    let (mut watcher, events) = spawn(&server, &["watch", "--service", "api"]);
    assert_eq!(events.next_json(Duration::from_secs(10))["type"], "reset");
    let (mut owner, owner_out) = spawn(&server, &["register", "--service", "api", "--addr", "127.0.0.1:9001"]);
    owner_out.next_json(Duration::from_secs(10));
    assert_eq!(events.next_json(Duration::from_secs(10))["type"], "upsert");
    owner.kill().unwrap();
    owner.wait().unwrap();
    // No goodbye: the server notices the silence (QUIC idle timeout, 10 s), then the grace.
    let removed = events.next_json(Duration::from_secs(20));
    assert_eq!(removed["type"], "remove");
    terminate(&mut watcher);
}

#[test]
fn config_round_trip_and_honest_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("d"));
    let put = run(&server, &["config", "put", "prod/gw/routes.yaml", "--content", "a: 1\n"]);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let got = run(&server, &["config", "get", "prod/gw/routes.yaml"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "a: 1\n");

    let missing = run(&server, &["config", "get", "nope"]);
    assert_eq!(missing.status.code(), Some(3), "not found");
    let no_instance = run(&server, &["pick", "--service", "ghost"]);
    assert_eq!(no_instance.status.code(), Some(3));
    let invalid = run(&server, &["register", "--service", "bad name", "--addr", "127.0.0.1:1", "--persistent"]);
    assert_eq!(invalid.status.code(), Some(5), "{}", String::from_utf8_lossy(&invalid.stderr));
    let persistent = run(&server, &["register", "--service", "db", "--addr", "127.0.0.1:5432", "--persistent"]);
    assert!(persistent.status.success(), "a persistent registration returns at once");
    let gone = run(&server, &["deregister", "--service", "db", "--id", "127.0.0.1:5432"]);
    assert!(gone.status.success());
    let again = run(&server, &["deregister", "--service", "db", "--id", "127.0.0.1:5432"]);
    assert_eq!(again.status.code(), Some(3));

    let unreachable = Command::new(sextant_bin())
        .args(["list", "--server", "127.0.0.1:9", "--ca"])
        .arg(server.data_dir.join("tls/ca.pem"))
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(4), "{}", String::from_utf8_lossy(&unreachable.stderr));
    let bad_ca = Command::new(sextant_bin()).args(["list", "--ca", "/nonexistent/ca.pem"]).output().unwrap();
    assert_eq!(bad_ca.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad_ca.stderr).contains("/nonexistent/ca.pem"));
}
