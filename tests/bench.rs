//! `sextant bench strategies` from the command line.

use std::process::Command;

use crate::support::sextant_bin;

#[test]
fn bench_strategies_writes_results_and_refuses_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(sextant_bin())
        .args(["bench", "strategies", "--scenarios", "slow-node", "--strategies", "round-robin,wasm:peak-ewma"])
        .args(["--seeds", "1", "--scale", "0.2", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| wasm:peak-ewma |"), "{stdout}");
    let csv = std::fs::read_to_string(dir.path().join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(dir.path().join("cdf-slow-node.png").is_file());

    let bad = Command::new(sextant_bin()).args(["bench", "strategies", "--scenarios", "nope"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("unknown scenario \"nope\"") && stderr.contains("fast-fail"), "{stderr}");
    let bad = Command::new(sextant_bin()).args(["bench", "strategies", "--strategies", "p3c"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ring-hash"));
}
