//! The embedded store and the registry over it, in process.

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use sextant_core::store::{Store, StoreError};
use sextant_core::{
    Change, ConfigEntry, ConfigKey, CoreError, Instance, PluginRecord, Record, Revision, Scope, ServiceKey,
};
use sextant_store::{DB_FILE, DiskFaults, EmbeddedOptions, EmbeddedStore, OpenError, Registry};
use tokio_stream::StreamExt;

fn instance(service: &str, port: u16, ephemeral: bool) -> Record {
    let mut i = Instance::new(ServiceKey::parse(service).unwrap(), "127.0.0.1".parse().unwrap(), port);
    i.ephemeral = ephemeral;
    Record::Instance(Arc::new(i))
}

fn open(dir: &std::path::Path) -> EmbeddedStore {
    EmbeddedStore::open(dir, EmbeddedOptions::default()).unwrap()
}

#[tokio::test]
async fn durable_records_survive_a_reopen_and_ephemeral_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let store = open(dir.path());
        store.put(instance("orders", 1, false), None).await.unwrap();
        let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
        store.put(instance("orders", 2, true), Some(lease)).await.unwrap();
        let cfg = ConfigEntry::new(ConfigKey::parse("app.yaml").unwrap(), "a: 1").unwrap();
        store.put(Record::Config(cfg.into()), None).await.unwrap();
        let sha = store.put_artifact(b"\0asm fake".to_vec()).await.unwrap();
        assert_eq!(store.get_artifact(sha.clone()).await.unwrap().as_deref(), Some(&b"\0asm fake"[..]));
        let plugin = PluginRecord {
            name: "p2c".parse().unwrap(),
            kind: "balancer".into(),
            sha256: sha,
            size: 9,
            binding: "default/default/orders".into(),
            config: r#"{"ring_size":1024}"#.into(),
            loaded_at_unix_ms: 1,
            history: Vec::new(),
            forward: Vec::new(),
            bad: Vec::new(),
            faults: Vec::new(),
            rollout: None,
        };
        store.put(Record::Plugin(plugin.into()), None).await.unwrap();
        before = store.revision();
        assert_eq!(before, Revision(4), "artifacts themselves are not revisioned records");
    }
    let store = open(dir.path());
    let all = store.list(Scope::All).await.unwrap();
    let paths: Vec<String> = all.records.iter().map(|r| r.key().path()).collect();
    assert_eq!(
        paths,
        vec!["instances/default/default/orders/127.0.0.1:1", "configs/default/default/app.yaml", "plugins/p2c"]
    );
    let Record::Plugin(plugin) = &all.records[2] else { panic!("expected the plugin record") };
    let artifact = store.get_artifact(plugin.sha256.clone()).await.unwrap();
    assert_eq!(artifact.as_deref(), Some(&b"\0asm fake"[..]), "the artifact survives with its record");
    assert!(store.revision() > before, "revisions never repeat across restarts");
    // A watcher from before the restart is reset, not replayed a different history.
    let mut w = store.watch(Scope::All, before).await.unwrap();
    assert!(matches!(w.next().await.unwrap().unwrap().change, Change::Reset { .. }));
}

/// A component larger than any one value: stored in 1 MiB chunks in one transaction, read
/// back whole and checked against its sha256, after a reopen too; storing it again is a no-op.
#[tokio::test]
async fn a_large_component_is_stored_in_chunks_and_read_back_verified() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..(5 << 20) + 17).map(|i: usize| (i * 31 % 253) as u8).collect();
    let sha = {
        let store = open(dir.path());
        let sha = store.put_artifact(bytes.clone()).await.unwrap();
        assert_eq!(sha, sextant_core::sha256_hex(&bytes));
        assert_eq!(store.put_artifact(bytes.clone()).await.unwrap(), sha, "idempotent");
        sha
    };
    let store = open(dir.path());
    assert_eq!(store.get_artifact(sha).await.unwrap(), Some(bytes));
    assert_eq!(store.get_artifact("0".repeat(64)).await.unwrap(), None);
}

#[tokio::test]
async fn invalid_writes_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut bad = Instance::new(ServiceKey::parse("x").unwrap(), "127.0.0.1".parse().unwrap(), 1);
    bad.ephemeral = false;
    bad.metadata.insert("k".into(), "v".repeat(5000));
    let err = store.put(Record::Instance(bad.into()), None).await.unwrap_err();
    assert!(matches!(err, StoreError::Rejected(CoreError::Invalid(_))), "{err}");
    let err = store.put(instance("x", 1, true), Some(sextant_core::LeaseId(42))).await.unwrap_err();
    assert!(matches!(err, StoreError::Rejected(CoreError::LeaseNotFound(_))));
    assert_eq!(store.revision(), Revision(0));
    drop(store);
    assert!(open(dir.path()).list(Scope::All).await.unwrap().records.is_empty());
}

#[tokio::test(start_paused = true)]
async fn leases_expire_without_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let kept = store.grant_lease(Duration::from_secs(2)).await.unwrap();
    let dropped = store.grant_lease(Duration::from_secs(2)).await.unwrap();
    store.put(instance("s", 1, true), Some(kept)).await.unwrap();
    store.put(instance("s", 2, true), Some(dropped)).await.unwrap();
    let mut watch = store.watch(Scope::All, store.revision()).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        store.keepalive(kept).await.unwrap();
    }
    let event = watch.next().await.unwrap().unwrap();
    assert!(matches!(&event.change, Change::Remove { key } if key == &instance("s", 2, true).key()));
    assert_eq!(store.list(Scope::All).await.unwrap().records.len(), 1);
    assert_eq!(store.leases_expired(), 1);
    assert!(matches!(store.keepalive(dropped).await, Err(StoreError::Rejected(CoreError::LeaseNotFound(_)))));
}

#[tokio::test]
async fn a_damaged_file_is_a_clear_error_not_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE), b"this is not a database, but it holds someone's data").unwrap();
    let err = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap_err();
    assert!(matches!(err, OpenError::Database { .. }), "{err}");
    assert!(err.to_string().contains(DB_FILE));
    // The file is left as it was.
    assert!(std::fs::read(dir.path().join(DB_FILE)).unwrap().starts_with(b"this is not"));
}

#[tokio::test]
async fn a_data_dir_that_is_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(EmbeddedStore::open(&file, EmbeddedOptions::default()), Err(OpenError::Dir { .. })));
}

#[tokio::test]
async fn registry_subscribers_resume_and_see_live_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.put(instance("a", 1, false), None).await.unwrap();
    let registry = Registry::start(store, 1024).await.unwrap();
    assert_eq!(registry.snapshot(&ServiceKey::parse("a").unwrap()).unwrap().instances.len(), 1);

    let mut sub = registry.subscribe(Scope::Service(ServiceKey::parse("b").unwrap()), registry.revision());
    registry.put(instance("a", 2, false), None).await.unwrap();
    let rev = registry.put(instance("b", 1, false), None).await.unwrap();
    let event = sub.next().await.unwrap();
    assert_eq!(event.revision, rev, "the change to service a is filtered out");

    // A subscriber that resumes from an older revision gets exactly what it missed.
    let mut resumed = registry.subscribe(Scope::All, Revision(1));
    let a = resumed.next().await.unwrap();
    let b = resumed.next().await.unwrap();
    assert_eq!((a.revision, b.revision), (Revision(2), Revision(3)));

    // A registry's history starts where it listed the store (revision 3): a subscriber from
    // before that gets a Reset of its scope.
    let small = Registry::start(registry.store().clone(), 2).await.unwrap();
    small.put(instance("a", 3, false), None).await.unwrap();
    let mut old = small.subscribe(Scope::Service(ServiceKey::parse("a").unwrap()), Revision(1));
    match old.next().await.unwrap().change {
        Change::Reset { snapshot } => {
            assert_eq!(snapshot.revision, Revision(4));
            assert_eq!(snapshot.records.len(), 3, "instances 1..=3 of service a, not b");
        }
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[tokio::test]
async fn snapshot_handles_follow_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(open(dir.path()), 1024).await.unwrap();
    let svc = ServiceKey::parse("prod/g/api").unwrap();
    let handle = registry.handle(&svc);
    assert!(handle.load().instances.is_empty());
    let lease = registry.grant_lease(Duration::from_secs(30)).await.unwrap();
    for port in 1..=5 {
        registry.put(instance("prod/g/api", port, true), Some(lease)).await.unwrap();
    }
    assert_eq!(handle.load().instances.len(), 5);
    let before = registry.revision();
    let revoked = registry.revoke_lease(lease).await.unwrap();
    assert_eq!(revoked, Revision(before.0 + 5), "one removal each; the answer is the last one's revision");
    assert_eq!(registry.revision(), revoked, "and the view already shows it");
    assert!(handle.load().instances.is_empty());
    assert_eq!(registry.stats().instances, 0);
}

#[tokio::test]
async fn config_watchers_see_each_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(open(dir.path()), 1024).await.unwrap();
    let key = ConfigKey::parse("prod/gw/routes.yaml").unwrap();
    let mut watch = registry.subscribe(Scope::Config(key.clone()), Revision(0));
    match watch.next().await.unwrap().change {
        Change::Reset { snapshot } => assert!(snapshot.records.is_empty(), "from 0: a reset, empty so far"),
        other => panic!("expected a reset, got {other:?}"),
    }
    let mut versions = vec![];
    for content in ["a: 1", "a: 2"] {
        let entry = ConfigEntry::new(key.clone(), content).unwrap();
        versions.push(entry.version.clone());
        registry.put(Record::Config(entry.into()), None).await.unwrap();
        // Another key in the same namespace must not reach this watcher.
        let other = ConfigEntry::new(ConfigKey::parse("prod/gw/other").unwrap(), content).unwrap();
        registry.put(Record::Config(other.into()), None).await.unwrap();
    }
    for expected in versions {
        match watch.next().await.unwrap().change {
            Change::Upsert { record: Record::Config(c) } => assert_eq!(c.version, expected),
            other => panic!("expected a config upsert, got {other:?}"),
        }
    }
    registry.delete(sextant_core::RecordKey::Config(key.clone())).await.unwrap();
    assert!(matches!(watch.next().await.unwrap().change, Change::Remove { .. }));
    assert!(registry.config(&key).is_none());
}

/// A feed whose receiver falls behind the live buffer reports the lag once, and a catch-up
/// from where it stood brings exactly the missed events; afterwards it is live again.
#[tokio::test]
async fn a_feed_that_lags_catches_up_with_exactly_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start_with_live_buffer(open(dir.path()), 1024, 4).await.unwrap();
    // Something first: a catch-up from revision 0 is a `Reset` by definition.
    registry.put(instance("prod/g/api", 100, false), None).await.unwrap();
    let mut feed = registry.feed();
    let start = feed.position();
    for port in 1..=10 {
        registry.put(instance("prod/g/api", port, false), None).await.unwrap();
    }
    let received = std::future::poll_fn(|cx| feed.poll_recv(cx)).await.unwrap();
    assert!(received.lagged, "10 events through a buffer of 4");
    let reached = received.events.last().map_or(start, |e| e.revision);
    let scope = Scope::Service(ServiceKey::parse("prod/g/api").unwrap());
    let synced = feed.sync(&[(&scope, reached)]);
    let ports: Vec<u16> = received
        .events
        .iter()
        .chain(synced.catch_up[0].iter())
        .map(|e| match &e.change {
            Change::Upsert { record: Record::Instance(i) } => i.port,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ports, (1..=10).collect::<Vec<_>>(), "every event once, in order");
    assert_eq!(feed.position(), registry.revision());
    registry.put(instance("prod/g/api", 11, false), None).await.unwrap();
    let live = std::future::poll_fn(|cx| feed.poll_recv(cx)).await.unwrap();
    assert!(!live.lagged);
    assert_eq!(live.events.len(), 1);
    assert!(matches!(&live.events[0].change, Change::Upsert { record: Record::Instance(i) } if i.port == 11));
}

#[tokio::test]
async fn conditional_writes_compare_the_revision_read_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        conformance::conditional_writes(&store).await;
    }
    // Reopened: records read from disk carry the revision the store starts at, and a write
    // over that revision (as `get` answers it) goes through.
    let store = open(dir.path());
    let entry = Record::Config(Arc::new(ConfigEntry::new(ConfigKey::parse("a").unwrap(), "1").unwrap()));
    let at = store.put_if(entry.clone(), None).await.unwrap();
    drop(store);
    let store = open(dir.path());
    let (read, loaded_at) = store.get(entry.key()).await.unwrap().expect("durable");
    assert_eq!(read, entry);
    assert!(loaded_at >= at);
    let next = Record::Config(Arc::new(ConfigEntry::new(ConfigKey::parse("a").unwrap(), "2").unwrap()));
    store.put_if(next, Some(loaded_at)).await.expect("over the revision read after the reopen");
}

/// The ports of the instances `store` holds.
async fn instance_ports(store: &EmbeddedStore) -> std::collections::BTreeSet<u16> {
    let all = store.list(Scope::All).await.unwrap();
    all.records
        .iter()
        .filter_map(|r| match r {
            Record::Instance(i) => Some(i.port),
            _ => None,
        })
        .collect()
}

/// A disk that fills up during registrations: every write refused while it is full gets a
/// typed error (`Unavailable`, naming the cause) and changes nothing, reads go on, and once
/// space returns the same store takes writes again, without a restart. After a reopen the
/// store holds exactly what was acknowledged.
#[tokio::test]
async fn a_full_disk_refuses_writes_with_a_typed_error_loses_nothing_acknowledged_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskFaults::default();
    let store = EmbeddedStore::open_on(dir.path(), EmbeddedOptions::default(), disk.clone()).unwrap();
    let mut acknowledged = std::collections::BTreeSet::new();
    for port in 1..=20 {
        store.put(instance("shop/web/orders", port, false), None).await.expect("a write with room");
        acknowledged.insert(port);
    }

    disk.fill();
    let mut refused = 0;
    for port in 21..=40 {
        match store.put(instance("shop/web/orders", port, false), None).await {
            Ok(_) => {
                acknowledged.insert(port);
            }
            Err(StoreError::Unavailable(reason)) => {
                assert!(reason.contains("No space left on device"), "the cause is named: {reason}");
                refused += 1;
            }
            Err(other) => panic!("a full disk is `unavailable`, not {other:?}"),
        }
    }
    assert!(refused > 0, "the full disk refused writes");
    // A delete is a write too.
    let key = instance("shop/web/orders", 1, false).key();
    assert!(matches!(store.delete(key).await, Err(StoreError::Unavailable(_))));
    let listed = store.list(Scope::All).await.unwrap().records.len();
    assert_eq!(listed, acknowledged.len(), "a refused write changed nothing, and reads go on");

    disk.free();
    for port in 41..=60 {
        store.put(instance("shop/web/orders", port, false), None).await.expect("writes resume once space returns");
        acknowledged.insert(port);
    }
    drop(store);

    let ports = instance_ports(&open(dir.path())).await;
    assert_eq!(ports, acknowledged, "exactly what was acknowledged, after a reopen");
}

/// A commit whose last sync fails may be on disk although its client was told it failed:
/// before its next write the store makes the disk hold exactly what was acknowledged, so a
/// restart never brings back a write that was refused.
#[tokio::test]
async fn a_write_refused_at_its_last_sync_does_not_come_back_after_a_restart() {
    // The commit's own sync (redb syncs once per durable commit), and the one after it.
    for nth in 1..=2 {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskFaults::default();
        let store = EmbeddedStore::open_on(dir.path(), EmbeddedOptions::default(), disk.clone()).unwrap();
        for port in 1..=5 {
            store.put(instance("shop/web/orders", port, false), None).await.unwrap();
        }
        disk.fail_sync(nth);
        let refused = store.put(instance("shop/web/orders", 6, false), None).await;
        let mut acknowledged: std::collections::BTreeSet<u16> = (1..=5).collect();
        match refused {
            Ok(_) => {
                acknowledged.insert(6);
            }
            Err(StoreError::Unavailable(reason)) => assert!(reason.contains("Input/output error"), "{reason}"),
            Err(other) => panic!("{other:?}"),
        }
        // The next write, tried until the disk takes it (a failing sync refuses it too).
        let mut next = 0;
        while store.put(instance("shop/web/orders", 7, false), None).await.is_err() {
            next += 1;
            assert!(next < 3, "sync {nth} failed: the disk never takes a write again");
        }
        acknowledged.insert(7);
        drop(store);
        let ports = instance_ports(&open(dir.path())).await;
        assert_eq!(ports, acknowledged, "sync {nth} failed: exactly what was acknowledged after a restart");
    }
}

fn weighted(service: &str, port: u16, weight: u32) -> Record {
    let mut i = Instance::new(ServiceKey::parse(service).unwrap(), "127.0.0.1".parse().unwrap(), port);
    i.weight = weight;
    i.ephemeral = false;
    Record::Instance(Arc::new(i))
}

/// A group commit lets the store's state go while it syncs: reads, lease grants and
/// keepalives are answered while a sync is held (they used to wait for it, each holding one of
/// the runtime's workers), and what takes a revision (an ephemeral registration, a lease
/// revocation) waits for the group without holding a thread, then comes after it.
#[test]
fn a_syncing_commit_holds_up_no_reader_and_no_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskFaults::default();
    // Lease reaping's first round runs at once, then not for an hour.
    let options = EmbeddedOptions { reap_interval: Duration::from_secs(3600), ..EmbeddedOptions::default() };
    let store = runtime.block_on(async { EmbeddedStore::open_on(dir.path(), options, disk.clone()) }).unwrap();
    let (lease, doomed) = runtime.block_on(async {
        let lease = store.grant_lease(Duration::from_secs(600)).await.unwrap();
        let doomed = store.grant_lease(Duration::from_secs(600)).await.unwrap();
        store.put(instance("shop/web/orders", 1, true), Some(lease)).await.unwrap();
        store.put(instance("shop/web/orders", 9, true), Some(doomed)).await.unwrap();
        (lease, doomed)
    });
    std::thread::sleep(Duration::from_millis(200));
    let waited = std::time::Instant::now();
    let until = |done: &dyn Fn() -> bool| {
        while !done() && waited.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(2));
        }
        done()
    };

    disk.hold_syncs();
    let held = runtime.spawn({
        let store = store.clone();
        async move { store.put(instance("shop/web/orders", 2, false), None).await }
    });
    let syncing = until(&|| disk.syncs_waiting() == 1);
    let reads: Vec<_> = (0..8)
        .map(|n| {
            let store = store.clone();
            runtime.spawn(async move {
                match n % 4 {
                    0 => store.get(instance("shop/web/orders", 1, true).key()).await.map(|_| ()),
                    1 => store.keepalive(lease).await.map(|_| ()),
                    2 => store.grant_lease(Duration::from_secs(60)).await.map(|_| ()),
                    _ => store.list(Scope::All).await.map(|_| ()),
                }
            })
        })
        .collect();
    let ephemeral = runtime.spawn({
        let store = store.clone();
        async move { store.put(instance("shop/web/orders", 3, true), Some(lease)).await }
    });
    let revoked = runtime.spawn({
        let store = store.clone();
        async move { store.revoke_lease(doomed).await }
    });
    let answered = until(&|| reads.iter().all(tokio::task::JoinHandle::is_finished));
    let waiting = [held.is_finished(), ephemeral.is_finished(), revoked.is_finished()];
    // Released before asserting, so a failure ends the test instead of holding its threads.
    disk.release_syncs();
    assert!(syncing, "the first commit never reached its sync");
    assert!(answered, "reads, keepalives and grants are answered while a commit syncs");
    assert_eq!(waiting, [false; 3], "the write syncing, then what takes a revision after it, wait");

    runtime.block_on(async {
        for read in reads {
            read.await.unwrap().expect("a read or lease upkeep");
        }
        let first = held.await.unwrap().expect("the held write");
        let after = ephemeral.await.unwrap().expect("the ephemeral registration");
        let revocation = revoked.await.unwrap().expect("the revocation");
        assert!(after > first && revocation > first, "{first} then {after} and {revocation}");
        assert!(store.get(instance("shop/web/orders", 9, true).key()).await.unwrap().is_none(), "revoked");
    });
}

/// Holds `disk`'s syncs and starts a durable write (an instance on `port`) that reaches its
/// sync and waits there; its task. Fails (with the syncs released) if it never gets there.
async fn write_held_in_its_sync(
    store: &EmbeddedStore,
    disk: &DiskFaults,
    port: u16,
) -> tokio::task::JoinHandle<Result<Revision, StoreError>> {
    disk.hold_syncs();
    let task = tokio::spawn({
        let store = store.clone();
        async move { store.put(instance("shop/web/orders", port, false), None).await }
    });
    let waited = std::time::Instant::now();
    while disk.syncs_waiting() == 0 {
        if waited.elapsed() > Duration::from_secs(60) {
            disk.release_syncs();
            panic!("the first commit never reached its sync");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    task
}

/// A lease expiring while a group commit syncs: the reaper puts its round off (expiry takes
/// revisions, and the syncing group holds the next ones), and the task leading the commits
/// runs it once the group is applied, so expiry keeps up under a steady stream of durable
/// writes. The reaper here runs once at the start and then not for an hour: only the commit
/// can have removed the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_put_off_by_a_syncing_commit_runs_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskFaults::default();
    let options = EmbeddedOptions { reap_interval: Duration::from_secs(3600), ..EmbeddedOptions::default() };
    let store = EmbeddedStore::open_on(dir.path(), options, disk.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lease = store.grant_lease(Duration::from_millis(300)).await.unwrap();
    let leased = instance("shop/web/orders", 1, true);
    store.put(leased.clone(), Some(lease)).await.unwrap();

    let held = write_held_in_its_sync(&store, &disk, 2).await;
    // Past the lease's deadline while the sync is held.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let still_there = store.get(leased.key()).await.unwrap().is_some();
    disk.release_syncs();
    assert!(still_there, "nothing expires while the group syncs");

    held.await.unwrap().expect("the held write");
    assert!(store.get(leased.key()).await.unwrap().is_none(), "expired once the group was applied");
    assert_eq!(store.leases_expired(), 1);
}

/// Group commit: a durable write waiting for its commit holds no thread. On a runtime whose
/// blocking pool has two threads, one of them held in the commit's sync, 200 writes queue for
/// the next commit (a writer that waited on a thread of its own would find none), and all of
/// them are answered by one commit once the sync returns.
#[test]
fn waiting_durable_writes_hold_no_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskFaults::default();
        // No lease reaping while the sync is held (its first round runs at once, then not for
        // an hour): it would wait for the store's state, which the held commit keeps, on one of
        // the two workers.
        let options = EmbeddedOptions { reap_interval: Duration::from_secs(3600), ..EmbeddedOptions::default() };
        let store = EmbeddedStore::open_on(dir.path(), options, disk.clone()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let in_flight = write_held_in_its_sync(&store, &disk, 1).await;
        let waited = std::time::Instant::now();
        let before = store.commit_stats();
        let queued: Vec<_> = (1000..1200)
            .map(|port| {
                let store = store.clone();
                tokio::spawn(async move { store.put(instance("shop/web/orders", port, false), None).await })
            })
            .collect();
        while store.writes_waiting() < queued.len() && waited.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let waiting = store.writes_waiting();
        // Released before asserting, so a failure ends the test instead of holding its threads.
        disk.release_syncs();
        assert_eq!(waiting, queued.len(), "writes queued behind the held commit");
        in_flight.await.unwrap().expect("the write in flight");
        for task in queued {
            task.await.unwrap().expect("a queued write");
        }
        let stats = store.commit_stats();
        // The held commit, then one for the 200 writes queued behind it.
        assert_eq!((stats.commits - before.commits, stats.writes - before.writes), (2, 201), "{before:?} -> {stats:?}");
        drop(store);
        assert_eq!(instance_ports(&open(dir.path())).await.len(), 201, "every acknowledged write, after a reopen");
    });
}

/// Group commit: durable writes that arrive while a commit is in flight (its sync held back
/// here) share the next commit, one transaction and one sync, and each gets its own answer:
/// a revision of its own, a conflict for a stale condition, a not-found for a delete of
/// nothing. A second write to a key already in the group goes to the group after it, so the
/// later one wins. Every acknowledged write is there after a reopen, and watchers see each
/// revision once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_arriving_during_a_commit_share_the_next_one_and_each_is_answered_for_itself() {
    let dir = tempfile::tempdir().unwrap();
    let disk = DiskFaults::default();
    let store = EmbeddedStore::open_on(dir.path(), EmbeddedOptions::default(), disk.clone()).unwrap();
    let stale = store.put(instance("shop/web/orders", 1, false), None).await.unwrap();
    store.put(instance("shop/web/orders", 1, false), None).await.unwrap();
    let mut watch = store.watch(Scope::All, store.revision()).await.unwrap();
    let before = store.commit_stats();

    let in_flight = write_held_in_its_sync(&store, &disk, 2).await;
    let waited = std::time::Instant::now();
    // Queued while it is in flight: 16 new instances, a stale conditional write, a delete
    // of a key that does not exist, and two writes of one key.
    let mut queued = Vec::new();
    for port in 10..26 {
        let store = store.clone();
        queued.push((
            format!("new {port}"),
            tokio::spawn(async move { store.put(instance("shop/web/orders", port, false), None).await }),
        ));
    }
    {
        let store = store.clone();
        queued.push((
            "stale".into(),
            tokio::spawn(async move { store.put_if(weighted("shop/web/orders", 1, 7), Some(stale)).await }),
        ));
    }
    {
        let store = store.clone();
        let key = instance("shop/web/orders", 99, false).key();
        queued.push(("missing".into(), tokio::spawn(async move { store.delete(key).await })));
    }
    for weight in [1, 2] {
        let store = store.clone();
        queued.push((
            format!("twice {weight}"),
            tokio::spawn(async move { store.put(weighted("shop/web/orders", 100, weight), None).await }),
        ));
    }
    while store.writes_waiting() < queued.len() {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "{} of {} writes queued",
            store.writes_waiting(),
            queued.len()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(!in_flight.is_finished(), "the first write waits for its sync");
    disk.release_syncs();

    let first = in_flight.await.unwrap().expect("the write in flight");
    let mut revisions = vec![first];
    let mut twice = Vec::new();
    for (what, task) in queued {
        match (what.as_str(), task.await.unwrap()) {
            ("stale", Err(StoreError::Conflict { .. })) => {}
            ("missing", Err(StoreError::Rejected(CoreError::KeyNotFound(_)))) => {}
            (w, Ok(revision)) if w.starts_with("new") => revisions.push(revision),
            (w, Ok(revision)) if w.starts_with("twice") => {
                revisions.push(revision);
                twice.push((revision, w.ends_with('2')));
            }
            (w, other) => panic!("{w}: {other:?}"),
        }
    }
    let mut sorted = revisions.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), revisions.len(), "each write has a revision of its own: {revisions:?}");
    assert_eq!(sorted.last().unwrap().0 - sorted[0].0, revisions.len() as u64 - 1, "and none is skipped: {sorted:?}");

    let stats = store.commit_stats();
    // The write in flight, the group, and the group after it (the second write of port 100).
    assert_eq!(stats.commits - before.commits, 3, "{before:?} -> {stats:?}");
    assert_eq!(stats.writes - before.writes, revisions.len() as u64, "{before:?} -> {stats:?}");

    // The later of the two writes of one key is what is stored.
    twice.sort();
    let (last_revision, last_is_weight_2) = twice[1];
    let (stored, at) = store.get(weighted("shop/web/orders", 100, 0).key()).await.unwrap().expect("port 100");
    let Record::Instance(i) = stored else { panic!("an instance") };
    assert_eq!((at, i.weight == 2), (last_revision, last_is_weight_2));

    // Watchers see every revision once, in order.
    for expected in &sorted {
        let event = tokio::time::timeout(Duration::from_secs(30), watch.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(event.revision, *expected);
    }
    drop(store);
    let ports = instance_ports(&open(dir.path())).await;
    let expected: std::collections::BTreeSet<u16> = [1, 2, 100].into_iter().chain(10..26).collect();
    assert_eq!(ports, expected, "every acknowledged write, after a reopen");
}
