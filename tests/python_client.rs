//! The Python client (`clients/python`), written from docs/protocol.md alone, runs its
//! conformance checks against the real server: with and without access control. The server
//! runs `--balancer ring-hash`, which the `pick` check needs (a `hash_key` sticks).

use std::path::PathBuf;
use std::process::Command;

use crate::support::Server;

/// The interpreter with aioquic that `scripts/setup` prepared (or `SEXTANT_PYTHON`).
fn python() -> PathBuf {
    let python = std::env::var_os("SEXTANT_PYTHON").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/sextant/python/bin/python3")
        },
        PathBuf::from,
    );
    let ready = Command::new(&python).args(["-c", "import aioquic"]).status().is_ok_and(|s| s.success());
    assert!(
        ready,
        "{} cannot import aioquic: run `bash scripts/setup` (it makes the Python environment of clients/python)",
        python.display()
    );
    python
}

fn conformance(server: &Server, extra: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../clients/python/conformance.py");
    let ca = server.data_dir.join("tls/ca.pem");
    let out = Command::new(python())
        .arg(script)
        .args(["--addr", &server.quic.to_string(), "--ca"])
        .arg(&ca)
        .args(["--grace-ms", "500"])
        .args(extra)
        .output()
        .expect("run the Python conformance checks");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "conformance failed ({}):\n{stdout}\n{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(passed >= 30, "the checks ran ({passed} passed):\n{stdout}");
    assert!(!stdout.lines().any(|l| l.starts_with("FAIL")), "{stdout}");
}

#[test]
fn the_python_client_passes_the_conformance_checks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::try_start_with(&dir.path().join("data"), &["--grace-ms", "500", "--balancer", "ring-hash"])
        .expect("server starts");
    conformance(&server, &[]);
}

#[test]
fn the_python_client_passes_them_under_access_control() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl.json");
    std::fs::write(
        &acl,
        r#"{"tokens": [
            {"name": "reader", "token": "read-secret", "namespaces": {"*": "read"}},
            {"name": "writer", "token": "write-secret", "namespaces": {"*": "write"}}
        ]}"#,
    )
    .unwrap();
    let acl = acl.to_string_lossy().into_owned();
    let server = Server::try_start_with(
        &dir.path().join("data"),
        &["--grace-ms", "500", "--balancer", "ring-hash", "--acl", &acl],
    )
    .expect("server starts");
    conformance(&server, &["--acl-token-read", "read-secret", "--acl-token-write", "write-secret"]);
}
