//! `sextant demo` from the command line: it runs its timeline, stops by itself, and the
//! gateway keeps answering through a slow backend, a flaky one, two hot swaps and a kill.

use std::process::Command;

use serde_json::Value;

use crate::support::sextant_bin;

#[test]
fn demo_runs_its_timeline_and_stops_by_itself() {
    let out = Command::new(sextant_bin())
        .args(["demo", "--duration", "8", "--rps", "200", "--listen", "127.0.0.1:0", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON lines")).collect();
    let (summary, frames) = lines.split_last().expect("frames and a summary");
    let summary = &summary["summary"];
    // A frame per second of the wall clock: how many a busy machine renders is not the point;
    // that they come, and show what happened, is.
    assert!(frames.len() >= 2, "frames while it runs: {}", frames.len());

    let events: Vec<&str> = summary["events"].as_array().unwrap().iter().map(|e| e[1].as_str().unwrap()).collect();
    for expected in
        ["b3 turns slow", "b4 turns flaky", "balancer wasm:round-robin", "balancer wasm:peak-ewma", "b2 killed"]
    {
        assert!(events.iter().any(|e| e.contains(expected)), "{expected:?} not in {events:?}");
    }
    // The balancer really changed while traffic flowed.
    let balancers: Vec<&str> = frames.iter().map(|f| f["balancer"].as_str().unwrap()).collect();
    assert!(balancers.iter().any(|b| b.starts_with("peak-ewma ")), "{balancers:?}");
    assert!(balancers.iter().any(|b| b.starts_with("wasm:peak-ewma ")), "{balancers:?}");
    // The flaky backend was ejected at some point.
    let ejected = frames
        .iter()
        .any(|f| f["endpoints"].as_array().unwrap().iter().any(|e| e[0] == "b4" && e[1]["health"] == "ejected"));
    assert!(ejected, "b4 was never ejected");

    let sent = summary["sent"].as_u64().unwrap();
    let failed = summary["failed"].as_u64().unwrap();
    assert!(sent >= 100, "traffic flowed: {summary}");
    // Retries cover the flaky backend and the kill; timeouts on a loaded debug build may cost
    // a few more, never a tenth.
    assert!(failed * 10 <= sent, "{failed} of {sent} failed: {summary}");
}
