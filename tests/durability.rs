//! Acknowledged writes survive `kill -9`; a damaged data directory is a loud error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::support::{Server, instance};

#[test]
fn acknowledged_writes_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);

    // Config, service settings and an ephemeral instance first.
    assert_eq!(server.put_text("/v1/configs/default/default/app.yaml", "retries: 3").0, 200);
    let (code, _) = server.put_json("/v1/services/prod/pay/api", &json!({ "protect_threshold": 0.5 }));
    assert_eq!(code, 200);
    let mut eph = instance("prod/pay/api", "eph", 9000, true);
    eph["ttl_ms"] = json!(60_000);
    assert_eq!(server.post("/v1/instances", &eph).0, 200);

    // Eight writers register persistent instances as fast as they can, each recording the
    // ids the server acknowledged, until the server dies under them: writes arrive while
    // others are being committed, so the kill lands among group commits.
    const WRITERS: u32 = 8;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let acked = acked.clone();
            let url = server.url("/v1/instances");
            std::thread::spawn(move || {
                for n in (w..100_000u32).step_by(WRITERS as usize) {
                    let port = 10_000 + u16::try_from(n % 50_000).unwrap();
                    let body = instance("prod/pay/api", &format!("i{n}"), port, false);
                    match crate::support::http().post(&url).send_json(&body) {
                        Ok(r) if r.status() == 200 => acked.lock().unwrap().push(n),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    // Let them acknowledge a good number of writes, some of them carried by a commit with
    // others (the store's counters say so), then kill without warning.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let grouped = || {
        let metrics = server.text("/metrics");
        let value = |name: &str| -> u64 {
            metrics.lines().find_map(|l| l.strip_prefix(name)).map_or(0, |v| v.trim().parse().unwrap())
        };
        let (commits, writes) = (value("sextant_store_commits_total "), value("sextant_store_committed_writes_total "));
        (writes > commits).then_some((commits, writes))
    };
    let mut groups = None;
    while (acked.lock().unwrap().len() < 200 || groups.is_none()) && std::time::Instant::now() < deadline {
        groups = grouped();
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill9();
    for writer in writers {
        writer.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200, "only {} writes acknowledged in 30 s", acked.len());
    let (commits, writes) = groups.expect("no commit carried more than one write in 30 s");
    eprintln!("{} writes acknowledged; before the kill {writes} writes in {commits} commits", acked.len());

    let server = Server::start(&data);
    let (code, svc) = server.get("/v1/services/prod/pay/api");
    assert_eq!(code, 200, "{svc}");
    let ids: Vec<&str> = svc["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    for n in &acked {
        assert!(ids.contains(&format!("i{n}").as_str()), "acknowledged instance i{n} was lost");
    }
    assert!(!ids.contains(&"eph"), "ephemeral instances are not resurrected after a restart");
    assert_eq!(svc["protect_threshold"], json!(0.5), "service settings survive");
    let (code, cfg) = server.get("/v1/configs/default/default/app.yaml");
    assert_eq!(code, 200);
    assert_eq!(cfg["content"], "retries: 3");
}

#[test]
fn revisions_keep_rising_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let (_, first) = server.post("/v1/instances", &instance("a", "1", 1, false));
    let before = first["revision"].as_u64().unwrap();
    let (status, log) = server.terminate();
    assert!(status.success(), "graceful shutdown exits 0:\n{log}");
    assert!(log.contains("shut down cleanly"), "{log}");

    let server = Server::start(&data);
    let (_, second) = server.post("/v1/instances", &instance("a", "2", 2, false));
    assert!(second["revision"].as_u64().unwrap() > before);
}

#[test]
fn a_damaged_data_file_stops_the_start_and_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let file = data.join("sextant.redb");
    let garbage = b"definitely not a redb file, but somebody's bytes".repeat(100);
    std::fs::write(&file, &garbage).unwrap();
    let failure = Server::try_start(&data).expect_err("a damaged file must not be served");
    assert!(failure.status.is_some_and(|s| !s.success()), "exits with an error code: {failure:?}");
    assert!(failure.log.contains("sextant.redb"), "the error names the file:\n{}", failure.log);
    assert_eq!(std::fs::read(&file).unwrap(), garbage, "never a silent reset");
}

#[test]
fn a_record_that_does_not_decode_stops_the_start() {
    // A valid database whose record was damaged: serve once, then edit the value in place.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    assert_eq!(server.post("/v1/instances", &instance("a", "x", 1, false)).0, 200);
    server.terminate();
    let file = data.join("sextant.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    let needle = br#""port":1"#;
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("the record's JSON is in the file");
    bytes[at + 7] = b'x'; // "port":x : no longer JSON
    std::fs::write(&file, &bytes).unwrap();
    let failure = Server::try_start(&data).expect_err("a corrupt record must not be served");
    assert!(failure.status.is_some_and(|s| !s.success()), "exits with an error code, no hang: {failure:?}");
    assert!(failure.log.contains("instances/default/default/a/x"), "the error names the record:\n{}", failure.log);
}
