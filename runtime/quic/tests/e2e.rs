//! End to end over loopback QUIC: an in-process server on a real embedded store, real clients.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sextant_core::store::{Store, StoreError};
use sextant_core::{Change, Instance, Record, Revision, Scope, ServiceKey};
use sextant_proto::acl::Acl;
use sextant_proto::{Binding, ErrorCode, Request, Response, encode};
use sextant_quic::access::{Access, Limits};
use sextant_quic::client::{Client, ClientError, ClientOptions, Watch};
use sextant_quic::server::{QuicServer, ServerOptions};
use sextant_quic::tls::{self, TlsFiles};
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Node {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Node {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.await.expect("the server task ends without a panic");
    }
}

fn options(grace_ms: u64) -> ServerOptions {
    ServerOptions {
        grace: Duration::from_millis(grace_ms),
        request_timeout: Duration::from_millis(500),
        ..ServerOptions::default()
    }
}

fn start(registry: &Registry<EmbeddedStore>, files: &TlsFiles, addr: SocketAddr, opts: ServerOptions) -> Node {
    start_with(registry, tls::server_config(files, None, 64).unwrap(), addr, opts)
}

fn start_with(
    registry: &Registry<EmbeddedStore>,
    config: quinn::ServerConfig,
    addr: SocketAddr,
    opts: ServerOptions,
) -> Node {
    let server = QuicServer::bind(addr, config, registry.clone(), opts).unwrap();
    let addr = server.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Node { addr, stop: Some(tx), task }
}

async fn registry(dir: &Path) -> Registry<EmbeddedStore> {
    let store = EmbeddedStore::open(dir, EmbeddedOptions::default()).unwrap();
    Registry::start(store, 4096).await.unwrap()
}

async fn open_when_free(dir: &Path) -> EmbeddedStore {
    for _ in 0..100 {
        match EmbeddedStore::open(dir, EmbeddedOptions::default()) {
            Ok(s) => return s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("the data directory stayed locked")
}

fn instance(service: &str, port: u16) -> Instance {
    Instance::new(ServiceKey::parse(service).unwrap(), "127.0.0.1".parse().unwrap(), port)
}

fn client(files: &TlsFiles, servers: Vec<SocketAddr>) -> Client {
    Client::new(ClientOptions::new(servers, files.ca.clone())).unwrap()
}

async fn next_change(w: &mut Watch) -> Change {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap()
        .event
        .change
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_watch_and_connection_loss() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let reg = registry(&dir.path().join("data")).await;
    let node = start(&reg, &files, "127.0.0.1:0".parse().unwrap(), options(400));

    let watcher = client(&files, vec![node.addr]);
    let mut watch = watcher.watch(Scope::Service(ServiceKey::parse("orders").unwrap()));
    assert!(matches!(next_change(&mut watch).await, Change::Reset { .. }), "a fresh watch starts with a reset");

    let owner = client(&files, vec![node.addr]);
    let (rev, lease) = owner.register(instance("orders", 8080), Binding::Connection).await.unwrap();
    assert!(rev > Revision(0));
    assert_eq!(lease, None);
    match next_change(&mut watch).await {
        Change::Upsert { record: Record::Instance(i) } => assert!(i.ephemeral && i.port == 8080),
        other => panic!("expected the upsert, got {other:?}"),
    }

    // The owner vanishes: after the grace period its instance is removed.
    drop(owner);
    let started = tokio::time::Instant::now();
    assert!(matches!(next_change(&mut watch).await, Change::Remove { .. }));
    // The lease lives `grace` (400 ms) past its last keepalive, and keepalives go every
    // grace/3: the last one may have been sent up to 133 ms before the drop.
    assert!(started.elapsed() >= Duration::from_millis(400 - 400 / 3), "not before the grace period");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_resumed_without_missing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let data = dir.path().join("data");
    let reg = registry(&data).await;
    let node = start(&reg, &files, "127.0.0.1:0".parse().unwrap(), options(5000));
    let addr = node.addr;

    let owner = client(&files, vec![addr]);
    owner.register(instance("api", 1), Binding::Connection).await.unwrap();
    owner.register(instance("api", 2), Binding::Persistent).await.unwrap();
    let watcher = client(&files, vec![addr]);
    let mut watch = watcher.watch(Scope::All);
    let _ = next_change(&mut watch).await;

    node.stop().await;
    drop(reg);
    // Written while the server was down for the watcher: a persistent instance. (The old
    // registry's tasks let go of the database file shortly after the drop.)
    {
        let store = open_when_free(&data).await;
        let mut i = instance("api", 3);
        i.ephemeral = false;
        sextant_core::store::Store::put(&store, Record::Instance(i.into()), None).await.unwrap();
    }
    let reg = Registry::start(open_when_free(&data).await, 4096).await.unwrap();
    let node = start(&reg, &files, addr, options(5000));

    // The owner re-registers its connection-bound instance; the watcher resynchronizes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let view = watcher.view(&watch);
        let ports: Vec<u16> = view
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Instance(i) => Some(i.port),
                _ => None,
            })
            .collect();
        if ports == vec![1, 2, 3] && view.revision == reg.revision() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "watcher view {ports:?} at {} never caught up", view.revision);
        let _ = tokio::time::timeout(Duration::from_millis(200), watch.next()).await;
    }
    assert_eq!(
        watcher.view(&watch).records,
        reg.list(&Scope::All).records,
        "the watcher holds exactly the server's state"
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_between_two_servers_sharing_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let reg = registry(&dir.path().join("data")).await;
    let a = start(&reg, &files, "127.0.0.1:0".parse().unwrap(), options(5000));
    let b = start(&reg, &files, "127.0.0.1:0".parse().unwrap(), options(5000));

    let c = client(&files, vec![a.addr, b.addr]);
    c.register(instance("pay", 1), Binding::Ttl { ttl_ms: 3000 }).await.unwrap();
    assert_eq!(c.server(), Some(a.addr));
    let mut watch = c.watch(Scope::Service(ServiceKey::parse("pay").unwrap()));
    let _ = next_change(&mut watch).await;

    a.stop().await;
    // Requests keep working through b; the watch resumes there.
    let writer = client(&files, vec![b.addr]);
    let mut p = instance("pay", 2);
    p.ephemeral = false;
    writer.register(p, Binding::Persistent).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout(Duration::from_secs(1), watch.next()).await {
            Ok(Some(Ok(item))) if matches!(&item.event.change, Change::Upsert { record: Record::Instance(i) } if i.port == 2) =>
            {
                break;
            }
            _ => assert!(tokio::time::Instant::now() < deadline, "the watch did not resume on b"),
        }
    }
    assert_eq!(c.server(), Some(b.addr));
    // The TTL lease is kept alive through b: the instance is still there after 2 TTLs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let Response::Service(view) =
        c.request(Request::GetService { service: ServiceKey::parse("pay").unwrap() }).await.unwrap()
    else {
        panic!("expected a service")
    };
    assert_eq!(view.instances.len(), 2);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_served_stale_when_no_server_answers() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let reg = registry(&dir.path().join("data")).await;
    let node = start(&reg, &files, "127.0.0.1:0".parse().unwrap(), options(5000));
    let mut opts = ClientOptions::new(vec![node.addr], files.ca.clone());
    opts.cache_dir = Some(dir.path().join("cache"));
    opts.connect_timeout = Duration::from_millis(300);
    {
        let c = Client::new(opts.clone()).unwrap();
        let mut p = instance("cached", 1);
        p.ephemeral = false;
        c.register(p, Binding::Persistent).await.unwrap();
        let mut w = c.watch(Scope::All);
        let _ = next_change(&mut w).await;
    }
    node.stop().await;
    let c = Client::new(opts).unwrap();
    let mut w = c.watch(Scope::All);
    let item = tokio::time::timeout(Duration::from_secs(10), w.next()).await.unwrap().unwrap().unwrap();
    assert!(item.stale.is_some(), "marked stale with its age");
    match item.event.change {
        Change::Reset { snapshot } => assert_eq!(snapshot.records.len(), 1),
        other => panic!("expected the cached view, got {other:?}"),
    }
}

/// A client restarted on its cache while the server is up and nothing changed since: the
/// server has nothing to send (it resumes from the cached revision), yet the watch hands on
/// the cached records at once (stale), then fresh once the server answered, and the server's
/// later changes apply on top. Before the fix, such a watch said nothing at all: a gateway
/// restarted on its cache served 503 on every route with its server up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_is_handed_on_when_the_server_answers_with_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let reg = registry(&dir.path().join("data")).await;
    let node = start(&reg, &files, "127.0.0.1:0".parse().unwrap(), options(5000));
    let mut opts = ClientOptions::new(vec![node.addr], files.ca.clone());
    opts.cache_dir = Some(dir.path().join("cache"));
    let writer = Client::new(opts.clone()).unwrap();
    {
        let c = Client::new(opts.clone()).unwrap();
        let mut p = instance("cached", 1);
        p.ephemeral = false;
        c.register(p, Binding::Persistent).await.unwrap();
        let mut w = c.watch(Scope::All);
        let _ = next_change(&mut w).await;
    }
    let c = Client::new(opts).unwrap();
    let mut w = c.watch(Scope::All);
    let first = tokio::time::timeout(Duration::from_secs(10), w.next()).await.unwrap().unwrap().unwrap();
    assert!(first.stale.is_some(), "the cache first, marked stale: {first:?}");
    let fresh = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("the server answered with nothing new: the cached view is handed on fresh")
        .unwrap()
        .unwrap();
    assert!(fresh.stale.is_none(), "{fresh:?}");
    match &fresh.event.change {
        Change::Reset { snapshot } => assert_eq!(snapshot.records.len(), 1, "the cached record"),
        other => panic!("expected the view as a reset, got {other:?}"),
    }
    // The server's changes apply on top of the cached records.
    let mut later = instance("later", 2);
    later.ephemeral = false;
    writer.register(later, Binding::Persistent).await.unwrap();
    let change = tokio::time::timeout(Duration::from_secs(10), w.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(change.event.change, Change::Upsert { .. }), "{change:?}");
    assert_eq!(c.view(&w).records.len(), 2, "the cached record and the new one");
    node.stop().await;
}

/// Raw QUIC: a connection that says `hello`, then does `f` with it.
async fn raw(files: &TlsFiles, addr: SocketAddr) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(tls::client_config(&files.ca, None).unwrap());
    endpoint.connect(addr, "localhost").unwrap().await.unwrap()
}

async fn send_raw(conn: &quinn::Connection, bytes: &[u8], finish: bool) {
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    // Keep the stream open until the connection closes.
    let _ = tokio::time::timeout(Duration::from_secs(3), conn.closed()).await;
}

fn closed_with(conn: &quinn::Connection) -> Option<u32> {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => u32::try_from(c.error_code.into_inner()).ok(),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_closes_only_that_connection_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let reg = registry(&dir.path().join("data")).await;
    let node = start(&reg, &files, "127.0.0.1:0".parse().unwrap(), options(5000));
    let good = client(&files, vec![node.addr]);
    good.ping().await.unwrap();
    let before = reg.revision();
    let hello = encode(&Request::Hello { version: 1, token: None, client: None }).unwrap();
    let register = encode(&Request::Register { instance: instance("x", 1), binding: Binding::Persistent }).unwrap();

    let mut huge = (8u32 * 1024 * 1024).to_be_bytes().to_vec();
    huge.extend(vec![b' '; 64 * 1024]);
    let cases: Vec<(&str, Vec<u8>, bool, ErrorCode)> = vec![
        ("garbage", b"\x00\x00\x00\x05{{{{{".to_vec(), true, ErrorCode::ProtocolError),
        ("truncated", hello[..hello.len() - 3].to_vec(), true, ErrorCode::ProtocolError),
        ("unknown type", encode(&serde_json::json!({"type": "reboot"})).unwrap(), true, ErrorCode::ProtocolError),
        ("register before hello", register.clone(), true, ErrorCode::ProtocolError),
        ("oversized", huge, true, ErrorCode::ProtocolError),
        ("never finishes", hello[..2].to_vec(), false, ErrorCode::Timeout),
        (
            "wrong version",
            encode(&Request::Hello { version: 9, token: None, client: None }).unwrap(),
            true,
            ErrorCode::UnsupportedVersion,
        ),
    ];
    for (what, bytes, finish, code) in cases {
        let conn = raw(&files, node.addr).await;
        send_raw(&conn, &bytes, finish).await;
        assert_eq!(closed_with(&conn), Some(code.as_u32()), "{what}: {:?}", conn.close_reason());
    }
    // Two frames where one request belongs.
    let conn = raw(&files, node.addr).await;
    send_raw(&conn, &[hello.clone(), hello.clone()].concat(), true).await;
    assert_eq!(closed_with(&conn), Some(ErrorCode::ProtocolError.as_u32()));

    // An oversized length is refused as soon as its 4 bytes are in, without waiting for more
    // (or for the stream's end, or the request timeout).
    let conn = raw(&files, node.addr).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&(4u32 * 1024 * 1024 + 1).to_be_bytes()).await.unwrap();
    let answer = sextant_quic::wire::read_one::<Response>(&mut recv).await.unwrap();
    // Refused for its size, not at the request timeout (which would answer `timeout`).
    match &answer {
        Response::Error { code: ErrorCode::ProtocolError, message } => {
            assert!(message.contains("4194305"), "the refusal names the length: {message}");
        }
        other => panic!("expected protocol_error for the length, got {other:?}"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), conn.closed()).await;
    assert_eq!(closed_with(&conn), Some(ErrorCode::ProtocolError.as_u32()));

    // A known request with invalid contents (a name, an address, a missing member) is
    // answered `invalid` and the connection stays.
    let conn = raw(&files, node.addr).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&hello).await.unwrap();
    send.finish().unwrap();
    assert!(matches!(sextant_quic::wire::read_one::<Response>(&mut recv).await.unwrap(), Response::Welcome { .. }));
    for invalid in [
        serde_json::json!({"type": "deregister", "service": {"namespace": "a", "group": "b", "service": "bad name!"}, "id": "x"}),
        serde_json::json!({"type": "register", "binding": {"kind": "persistent"},
            "instance": {"service": {"namespace": "a", "group": "b", "service": "c"}, "id": "x", "ip": "not-an-ip", "port": 1}}),
        serde_json::json!({"type": "ping"}),
    ] {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&encode(&invalid).unwrap()).await.unwrap();
        send.finish().unwrap();
        let answer = sextant_quic::wire::read_one::<Response>(&mut recv).await.unwrap();
        assert!(matches!(answer, Response::Error { code: ErrorCode::Invalid, .. }), "{invalid}: {answer:?}");
    }
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode(&Request::Ping { nonce: 5 }).unwrap()).await.unwrap();
    send.finish().unwrap();
    let pong = sextant_quic::wire::read_one::<Response>(&mut recv).await.unwrap();
    assert_eq!(pong, Response::Pong { nonce: 5 }, "the connection still serves");

    assert_eq!(reg.revision(), before, "nothing changed");
    good.ping().await.expect("the well-behaved client is still served");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_rights_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let reg = registry(&dir.path().join("data")).await;
    let acl = Acl::from_json(
        r#"{"tokens":[{"name":"gw","token":"read-prod","namespaces":{"prod":"read"}},
                      {"name":"dep","token":"write-prod","namespaces":{"prod":"write"}},
                      {"name":"edge","token":"edge","namespaces":{"prod":"read"},"report_faults":true}]}"#,
    )
    .unwrap();
    let node = start(
        &reg,
        &files,
        "127.0.0.1:0".parse().unwrap(),
        ServerOptions { access: Arc::new(Access::new(acl, Limits::unlimited())), ..options(5000) },
    );
    let with = |token: Option<&str>| {
        let mut o = ClientOptions::new(vec![node.addr], files.ca.clone());
        o.token = token.map(str::to_owned);
        Client::new(o).unwrap()
    };
    let err = with(None).ping().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthenticated), "{err}");
    assert_eq!(with(Some("nope")).ping().await.unwrap_err().code(), Some(ErrorCode::Unauthenticated));
    let reader = with(Some("read-prod"));
    let err = reader.register(instance("prod/g/api", 1), Binding::Persistent).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    assert_eq!(reg.revision(), Revision(0), "a forbidden request changes nothing");
    let writer = with(Some("write-prod"));
    writer.register(instance("prod/g/api", 1), Binding::Persistent).await.unwrap();
    assert_eq!(
        writer.register(instance("dev/g/api", 1), Binding::Persistent).await.unwrap_err().code(),
        Some(ErrorCode::Forbidden)
    );
    let Response::Service(view) =
        reader.request(Request::GetService { service: ServiceKey::parse("prod/g/api").unwrap() }).await.unwrap()
    else {
        panic!("expected the service")
    };
    assert_eq!(view.instances.len(), 1);

    // A verdict that can roll the fleet back is a right of its own: writing instances is not
    // enough, and garbage from a host that has the right is refused as invalid.
    let fault = |sha256: &str| Request::PluginFault {
        name: "lb".parse().unwrap(),
        kind: "balancer".into(),
        sha256: sha256.into(),
        service: ServiceKey::parse("prod/g/api").unwrap(),
        host: "prod/edge/gw/1".into(),
        reason: "6 faults within 10s".into(),
    };
    let before = reg.revision();
    let forged = writer.request(fault(&"a".repeat(64))).await.unwrap_err();
    assert_eq!(forged.code(), Some(ErrorCode::Forbidden), "{forged}");
    let edge = with(Some("edge"));
    let garbage = edge.request(fault("not-a-sha")).await.unwrap_err();
    assert_eq!(garbage.code(), Some(ErrorCode::Invalid), "{garbage}");
    let mut empty = fault(&"a".repeat(64));
    if let Request::PluginFault { host, .. } = &mut empty {
        host.clear();
    }
    assert_eq!(edge.request(empty).await.unwrap_err().code(), Some(ErrorCode::Invalid));
    assert_eq!(reg.revision(), before, "refused faults change nothing");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let reg = registry(&dir.path().join("data")).await;
    let config = tls::server_config(&files, Some(&files.ca), 64).unwrap();
    let node = start_with(&reg, config, "127.0.0.1:0".parse().unwrap(), options(5000));
    let addr = node.addr;

    let mut opts = ClientOptions::new(vec![addr], files.ca.clone());
    opts.connect_timeout = Duration::from_secs(2);
    // The one right outcome: the handshake is refused for the missing certificate (not a
    // timeout, not some other error).
    let refused = Client::new(opts.clone()).unwrap().ping().await.unwrap_err();
    assert!(matches!(refused, ClientError::Unreachable(_)), "{refused:?}");
    assert!(refused.to_string().contains("CertificateRequired"), "the reason names the certificate: {refused}");
    let (cert, key) = tls::issue_client_cert(&files, "gateway-1").unwrap();
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(dir.path().join("c.key"), key).unwrap();
    opts.client_cert = Some((dir.path().join("c.pem"), dir.path().join("c.key")));
    Client::new(opts).unwrap().ping().await.expect("a certificate from the CA is accepted");
    node.stop().await;
}

/// A raw subscription: `subscribe` on a new stream of `conn`; frames are read with `next`.
async fn raw_subscribe(conn: &quinn::Connection, scope: Scope) -> sextant_quic::wire::FrameReader {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode(&Request::Subscribe { scope, from: Revision(0), reader: None }).unwrap()).await.unwrap();
    send.finish().unwrap();
    // The server keeps writing on its side; ours is finished and dropping it is fine.
    sextant_quic::wire::FrameReader::new(recv)
}

/// The ports of the `upsert`s that follow the initial `reset`, until `n` arrived (each event
/// checked to come after the one before it: none twice, none out of order).
async fn upserted_ports(reader: &mut sextant_quic::wire::FrameReader, n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    let mut last = Revision(0);
    while ports.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(10), reader.next::<Response>())
            .await
            .unwrap_or_else(|_| panic!("the next event in time (after {} of {n})", ports.len()))
            .unwrap()
            .expect("the stream stays open");
        let Response::Event { event } = frame else { panic!("expected an event, got {frame:?}") };
        assert!(event.revision > last || last == Revision(0), "revisions increase: {} after {last}", event.revision);
        last = event.revision;
        match event.change {
            Change::Reset { .. } => assert!(ports.is_empty(), "one reset, first"),
            Change::Upsert { record: Record::Instance(i) } => ports.push(i.port),
            other => panic!("unexpected {other:?}"),
        }
    }
    ports
}

/// One connection's subscriptions share one feed: each gets exactly its scope's events, in
/// order, and one whose client does not read (a small stream window, so the server's queue
/// for it fills up) catches up afterwards with nothing missing and nothing twice, while the
/// others on the same connection keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_of_one_connection_each_get_their_scope_even_a_stalled_one() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let reg = registry(&dir.path().join("data")).await;
    let node = start(&reg, &files, "127.0.0.1:0".parse().unwrap(), options(5000));

    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut config = tls::client_config(&files.ca, None).unwrap();
    let mut transport = quinn::TransportConfig::default();
    // 4 KiB per stream: about 15 event frames before the server must wait for the reader.
    transport.stream_receive_window(quinn::VarInt::from_u32(4096));
    config.transport_config(Arc::new(transport));
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(node.addr, "localhost").unwrap().await.unwrap();
    let hello = encode(&Request::Hello { version: 1, token: None, client: None }).unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&hello).await.unwrap();
    send.finish().unwrap();
    let welcome = sextant_quic::wire::read_one::<Response>(&mut recv).await.unwrap();
    assert!(matches!(welcome, Response::Welcome { .. }), "{welcome:?}");

    let mut a = raw_subscribe(&conn, Scope::Service(ServiceKey::parse("feed/g/a").unwrap())).await;
    let mut b = raw_subscribe(&conn, Scope::Service(ServiceKey::parse("feed/g/b").unwrap())).await;
    let mut stalled = raw_subscribe(&conn, Scope::Service(ServiceKey::parse("feed/g/a").unwrap())).await;
    // Wait until all three have joined (their resets), so every write below is live for them.
    for r in [&mut a, &mut b, &mut stalled] {
        let first = tokio::time::timeout(Duration::from_secs(10), r.next::<Response>()).await.unwrap().unwrap();
        assert!(matches!(first, Some(Response::Event { event }) if matches!(event.change, Change::Reset { .. })));
    }

    // 2 x 400 writes: more than the stalled member's queue (256) plus its stream window.
    let per = 400u16;
    let writer = {
        let reg = reg.clone();
        tokio::spawn(async move {
            for n in 0..per {
                for service in ["feed/g/a", "feed/g/b"] {
                    reg.put(Record::Instance(persistent(service, 1000 + n).into()), None).await.unwrap();
                }
            }
        })
    };
    let expected: Vec<u16> = (0..per).map(|n| 1000 + n).collect();
    // `a` and `b` are read while the writes go on; `stalled` is not read at all meanwhile.
    let (ports_a, ports_b) =
        tokio::join!(upserted_ports(&mut a, expected.len()), upserted_ports(&mut b, expected.len()));
    assert_eq!(ports_a, expected, "service a's subscriber: every event once, in order");
    assert_eq!(ports_b, expected, "service b's subscriber: every event once, in order");
    writer.await.unwrap();
    // Now the stalled one reads: whatever was queued, then the catch-up from the history.
    let ports = upserted_ports(&mut stalled, expected.len()).await;
    assert_eq!(ports, expected, "the stalled subscriber caught up with nothing missing or repeated");
    // And it is live again.
    reg.put(Record::Instance(persistent("feed/g/a", 9999).into()), None).await.unwrap();
    assert_eq!(upserted_ports(&mut stalled, 1).await, vec![9999]);
    node.stop().await;
}

fn persistent(service: &str, port: u16) -> Instance {
    let mut i = instance(service, port);
    i.ephemeral = false;
    i
}

/// A raw connection that has said `hello`.
async fn raw_hello(files: &TlsFiles, addr: SocketAddr) -> quinn::Connection {
    let conn = raw(files, addr).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode(&Request::Hello { version: 1, token: None, client: None }).unwrap()).await.unwrap();
    send.finish().unwrap();
    let welcome = sextant_quic::wire::read_one::<Response>(&mut recv).await.unwrap();
    assert!(matches!(welcome, Response::Welcome { .. }), "{welcome:?}");
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_and_watches_per_connection_are_capped_with_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let reg = registry(&dir.path().join("data")).await;
    let limits = Limits { registrations_per_connection: 2, watches_per_connection: 2, ..Limits::unlimited() };
    let access = Arc::new(Access::new(Acl::open(), limits));
    let node = start(&reg, &files, "127.0.0.1:0".parse().unwrap(), ServerOptions { access, ..options(5000) });

    // Registrations: two keys, the same key again, a third key refused, room again after a
    // deregistration; another connection has its own count.
    let c = client(&files, vec![node.addr]);
    c.register(instance("lim/g/s", 1), Binding::Persistent).await.unwrap();
    c.register(instance("lim/g/s", 2), Binding::Connection).await.unwrap();
    c.register(instance("lim/g/s", 1), Binding::Persistent).await.expect("the same key again is no new registration");
    let refused = c.register(instance("lim/g/s", 3), Binding::Persistent).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::Limited), "{refused}");
    assert!(refused.to_string().contains("--max-registrations-per-connection"), "{refused}");
    let listed = reg.list(&Scope::Service(ServiceKey::parse("lim/g/s").unwrap()));
    assert_eq!(listed.records.len(), 2, "nothing stored for the refused one");
    c.deregister(&instance("lim/g/s", 1).key()).await.unwrap();
    c.register(instance("lim/g/s", 3), Binding::Persistent).await.expect("a place was given back");
    client(&files, vec![node.addr]).register(instance("lim/g/s", 4), Binding::Persistent).await.unwrap();

    // Watches: the third subscription of one connection is answered `limited`; once one is
    // stopped, a new one is served.
    let conn = raw_hello(&files, node.addr).await;
    let scope = || Scope::Service(ServiceKey::parse("lim/g/s").unwrap());
    let mut first = raw_subscribe(&conn, scope()).await;
    let mut second = raw_subscribe(&conn, scope()).await;
    for r in [&mut first, &mut second] {
        let reset = tokio::time::timeout(Duration::from_secs(10), r.next::<Response>()).await.unwrap().unwrap();
        assert!(matches!(reset, Some(Response::Event { .. })), "{reset:?}");
    }
    let mut third = raw_subscribe(&conn, scope()).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), third.next::<Response>()).await.unwrap().unwrap();
    match answer {
        Some(Response::Error { code: ErrorCode::Limited, message }) => {
            assert!(message.contains("--max-watches-per-connection"), "{message}");
        }
        other => panic!("expected `limited`, got {other:?}"),
    }
    assert!(conn.close_reason().is_none(), "a limit does not close the connection");
    // Drop the first (STOP_SENDING): its place comes back once the server has seen it.
    drop(first);
    let mut served = None;
    for _ in 0..100 {
        let mut next = raw_subscribe(&conn, scope()).await;
        match tokio::time::timeout(Duration::from_secs(10), next.next::<Response>()).await.unwrap().unwrap() {
            Some(Response::Event { .. }) => {
                served = Some(next);
                break;
            }
            Some(Response::Error { code: ErrorCode::Limited, .. }) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(served.is_some(), "a stopped watch gives its place back");
    node.stop().await;
}

/// Faults on demand around a real store: keepalives that fail as if the store were
/// unreachable, or that find the lease gone (it is revoked in the store first, as an expiry
/// during an outage would leave it).
#[derive(Debug, Clone)]
struct FaultyStore {
    inner: EmbeddedStore,
    faults: Arc<Faults>,
}

#[derive(Debug, Default)]
struct Faults {
    /// The next this many keepalives fail `Unavailable`.
    unavailable: std::sync::atomic::AtomicUsize,
    /// The next keepalive loses its lease.
    lose: std::sync::atomic::AtomicBool,
    /// Keepalives that succeeded.
    kept: std::sync::atomic::AtomicUsize,
    /// The next artifact read hangs (a server stuck, then gone, in the middle of a fetch)...
    hold_artifact: std::sync::atomic::AtomicBool,
    /// ...and says so here.
    held: tokio::sync::Notify,
}

impl sextant_core::store::Store for FaultyStore {
    async fn put(&self, r: Record, l: Option<sextant_core::LeaseId>) -> Result<Revision, StoreError> {
        self.inner.put(r, l).await
    }
    async fn get(&self, k: sextant_core::RecordKey) -> Result<Option<(Record, Revision)>, StoreError> {
        self.inner.get(k).await
    }
    async fn put_if(&self, r: Record, expected: Option<Revision>) -> Result<Revision, StoreError> {
        self.inner.put_if(r, expected).await
    }
    async fn delete(&self, k: sextant_core::RecordKey) -> Result<Revision, StoreError> {
        self.inner.delete(k).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<sextant_core::LeaseId, StoreError> {
        self.inner.grant_lease(ttl).await
    }
    async fn keepalive(&self, lease: sextant_core::LeaseId) -> Result<Duration, StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.faults.unavailable.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StoreError::Unavailable("injected: etcd member unreachable".into()));
        }
        if self.faults.lose.swap(false, SeqCst) {
            self.inner.revoke_lease(lease).await?;
        }
        let ttl = self.inner.keepalive(lease).await?;
        self.faults.kept.fetch_add(1, SeqCst);
        Ok(ttl)
    }
    async fn revoke_lease(&self, lease: sextant_core::LeaseId) -> Result<Revision, StoreError> {
        self.inner.revoke_lease(lease).await
    }
    async fn list(&self, scope: Scope) -> Result<sextant_core::StoreSnapshot, StoreError> {
        self.inner.list(scope).await
    }
    async fn watch(&self, scope: Scope, from: Revision) -> Result<sextant_core::store::WatchStream, StoreError> {
        self.inner.watch(scope, from).await
    }
    async fn put_artifact(&self, bytes: Vec<u8>) -> Result<String, StoreError> {
        self.inner.put_artifact(bytes).await
    }
    async fn get_artifact(&self, sha256: String) -> Result<Option<Vec<u8>>, StoreError> {
        if self.faults.hold_artifact.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.faults.held.notify_one();
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        self.inner.get_artifact(sha256).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_bound_instances_outlive_store_faults_while_their_connection_lives() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let faults = Arc::new(Faults::default());
    let store = FaultyStore {
        inner: EmbeddedStore::open(&dir.path().join("data"), EmbeddedOptions::default()).unwrap(),
        faults: faults.clone(),
    };
    let reg = Registry::start(store, 4096).await.unwrap();
    // Keepalives every second; a lease lives 3 s past the last one.
    let server = QuicServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        tls::server_config(&files, None, 64).unwrap(),
        reg.clone(),
        options(3000),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let owner = client(&files, vec![addr]);
    owner.register(instance("faults/g/s", 1), Binding::Connection).await.unwrap();
    let scope = Scope::Service(ServiceKey::parse("faults/g/s").unwrap());
    let present = |reg: &Registry<FaultyStore>| reg.list(&scope).records.len() == 1;
    assert!(present(&reg));

    // Transient errors: the keepalives are retried and resume; the instance never goes.
    faults.unavailable.store(3, SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while faults.unavailable.load(SeqCst) > 0 {
        assert!(tokio::time::Instant::now() < deadline, "keepalives are retried after an error");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kept = faults.kept.load(SeqCst);
    while faults.kept.load(SeqCst) <= kept {
        assert!(tokio::time::Instant::now() < deadline, "keepalives resume after transient errors");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(present(&reg), "the instance stayed through transient keepalive errors");

    // The lease is lost (revoked in the store, its instance removed): a new one is granted and
    // the instance is put again, with the connection still open and the client told nothing.
    faults.lose.store(true, SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while faults.lose.load(SeqCst) {
        assert!(tokio::time::Instant::now() < deadline, "the lease is lost");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while !present(&reg) {
        assert!(tokio::time::Instant::now() < deadline, "the instance is put again on a new lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The new lease is kept alive too, and a registration now uses it.
    let kept = faults.kept.load(SeqCst);
    while faults.kept.load(SeqCst) <= kept {
        assert!(tokio::time::Instant::now() < deadline, "the new lease is kept alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    owner.register(instance("faults/g/s", 2), Binding::Connection).await.unwrap();
    assert_eq!(reg.list(&scope).records.len(), 2);
    owner.ping().await.expect("the connection is still open");
    let _ = stop.send(());
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_are_fetched_in_chunks_checked_against_their_hash_and_plugin_records_followed() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let reg = registry(&dir.path().join("data")).await;
    let node = start(&reg, &files, "127.0.0.1:0".parse().unwrap(), options(400));
    let c = client(&files, vec![node.addr]);

    // 2.5 MiB: three chunks.
    let bytes: Vec<u8> = (0..(5u32 << 19)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let sha = reg.store().put_artifact(bytes.clone()).await.unwrap();
    assert_eq!(c.fetch_artifact(&sha, 64 << 20).await.unwrap(), bytes);
    // A limit below the size: refused before anything more is read.
    assert!(matches!(c.fetch_artifact(&sha, 1 << 20).await, Err(ClientError::Protocol(_))));

    // Bad input, each a typed refusal.
    let missing = sextant_core::sha256_hex(b"nothing stored");
    let code = |r: Result<Response, ClientError>| match r {
        Ok(Response::Error { code, .. }) => Some(code),
        Err(e) => e.code(),
        Ok(other) => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(c.fetch_artifact(&missing, 64 << 20).await.unwrap_err().code(), Some(ErrorCode::NotFound));
    let bad = Request::ArtifactGet { sha256: "not-a-sha".into(), offset: 0 };
    assert_eq!(code(c.request(bad).await), Some(ErrorCode::Invalid));
    let past = Request::ArtifactGet { sha256: sha.clone(), offset: bytes.len() as u64 + 1 };
    assert_eq!(code(c.request(past).await), Some(ErrorCode::Invalid));
    match c.request(Request::ArtifactGet { sha256: sha.clone(), offset: 1 << 20 }).await.unwrap() {
        Response::Artifact { offset, total, data, .. } => {
            assert_eq!((offset, total), (1 << 20, bytes.len() as u64));
            let chunk = sextant_proto::decode_component(&data).unwrap();
            assert_eq!(chunk, bytes[1 << 20..2 << 20]);
        }
        other => panic!("expected a chunk, got {other:?}"),
    }

    // Scope `plugins`: plugin records only, live.
    let mut watch = c.watch(Scope::Plugins);
    assert!(matches!(next_change(&mut watch).await, Change::Reset { .. }));
    c.register(instance("orders", 8080), Binding::Persistent).await.unwrap();
    let record = sextant_core::PluginRecord {
        name: "lb".parse().unwrap(),
        kind: "balancer".into(),
        sha256: sha,
        size: bytes.len() as u64,
        binding: "*".into(),
        config: String::new(),
        loaded_at_unix_ms: 1,
        history: Vec::new(),
        forward: Vec::new(),
        bad: Vec::new(),
        faults: Vec::new(),
        rollout: None,
    };
    reg.put(Record::Plugin(Arc::new(record)), None).await.unwrap();
    match next_change(&mut watch).await {
        Change::Upsert { record: Record::Plugin(p) } => assert_eq!(p.name.as_str(), "lb"),
        other => panic!("the instance is not in scope `plugins`; expected the plugin record, got {other:?}"),
    }
    node.stop().await;
}

/// A `Reset` larger than a frame (1,200 instances of ~3.9 KB metadata: about 5 MB) reaches a
/// watcher whole, in `reset_chunk` frames and the final `Reset`, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_larger_than_a_frame_arrives_whole_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let reg = registry(&dir.path().join("data")).await;
    let node = start(&reg, &files, "127.0.0.1:0".parse().unwrap(), options(400));
    const N: u16 = 1200;
    let mut writes = tokio::task::JoinSet::new();
    for worker in 0..8u16 {
        let reg = reg.clone();
        writes.spawn(async move {
            for port in (1..=N).filter(|p| p % 8 == worker) {
                let mut i = persistent("big/g/svc", port);
                i.metadata.insert("blob".into(), "x".repeat(3900));
                reg.put(Record::Instance(Arc::new(i)), None).await.unwrap();
            }
        });
    }
    while let Some(done) = writes.join_next().await {
        done.unwrap();
    }
    let snapshot = reg.snapshot(&ServiceKey::parse("big/g/svc").unwrap()).unwrap();
    let whole = sextant_proto::encode(&Response::Event {
        event: sextant_core::Event {
            revision: snapshot.revision,
            change: Change::Reset {
                snapshot: Arc::new(sextant_core::StoreSnapshot {
                    revision: snapshot.revision,
                    records: snapshot.instances.iter().map(|i| Record::Instance(Arc::clone(i))).collect(),
                }),
            },
        },
    });
    assert!(whole.is_err(), "the test needs a reset larger than one frame");

    let watcher = client(&files, vec![node.addr]);
    let mut watch = watcher.watch(Scope::Service(ServiceKey::parse("big/g/svc").unwrap()));
    match next_change(&mut watch).await {
        Change::Reset { snapshot } => {
            let ports: std::collections::BTreeSet<u16> = snapshot
                .records
                .iter()
                .filter_map(|r| match r {
                    Record::Instance(i) => Some(i.port),
                    _ => None,
                })
                .collect();
            assert_eq!(ports.len(), usize::from(N), "every instance, once");
            assert_eq!(ports.first().copied(), Some(1));
            assert_eq!(ports.last().copied(), Some(N));
        }
        other => panic!("expected the reset, got {other:?}"),
    }
    reg.put(Record::Instance(Arc::new(persistent("big/g/svc", N + 1))), None).await.unwrap();
    match next_change(&mut watch).await {
        Change::Upsert { record: Record::Instance(i) } => assert_eq!(i.port, N + 1),
        other => panic!("expected the upsert after the reset, got {other:?}"),
    }
    node.stop().await;
}

/// A server that goes away in the middle of a component fetch (stuck reading it, then
/// killed): the fetch ends, with an error or with the whole component resent by the other
/// server, never with part of it; fetching again from the other server gets it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_gone_mid_fetch_ends_the_fetch_and_another_server_serves_it_whole() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let files = tls::ensure_dev_certs(dir.path()).unwrap();
    let faults = Arc::new(Faults::default());
    let store = FaultyStore {
        inner: EmbeddedStore::open(&dir.path().join("data"), EmbeddedOptions::default()).unwrap(),
        faults: faults.clone(),
    };
    let reg = Registry::start(store, 4096).await.unwrap();
    let serve = |reg: &Registry<FaultyStore>| {
        let config = tls::server_config(&files, None, 64).unwrap();
        let server = QuicServer::bind("127.0.0.1:0".parse().unwrap(), config, reg.clone(), options(400)).unwrap();
        let addr = server.local_addr().unwrap();
        (addr, server)
    };
    // a runs on a runtime of its own, so that shutting that runtime down is a kill: every
    // task of a, its connections and its socket gone at once.
    let a_runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (a, server_a) = {
        let _entered = a_runtime.enter();
        serve(&reg)
    };
    a_runtime.spawn(server_a.run(std::future::pending::<()>()));
    let (b, server_b) = serve(&reg);
    let b_task = tokio::spawn(server_b.run(std::future::pending::<()>()));
    // 2.5 MiB: three chunks.
    let bytes: Vec<u8> = (0..(5u32 << 19)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let sha = reg.store().put_artifact(bytes.clone()).await.unwrap();

    let c = client(&files, vec![a, b]);
    c.ping().await.unwrap();
    assert_eq!(c.server(), Some(a));
    // a's read of the component from its store hangs (a server stuck under a fetch), then a
    // is killed. (A server keeps the components it reads, so later chunks never wait on the
    // store: the fetch is stuck at its first chunk.)
    faults.hold_artifact.store(true, SeqCst);
    let fetch = {
        let (c, sha) = (c.clone(), sha.clone());
        tokio::spawn(async move { c.fetch_artifact(&sha, 64 << 20).await })
    };
    tokio::time::timeout(Duration::from_secs(20), faults.held.notified()).await.expect("the fetch reached the store");
    a_runtime.shutdown_background();
    let fetched = tokio::time::timeout(Duration::from_secs(60), fetch).await.expect("the fetch ends").unwrap();
    match fetched {
        // Resent to b after the connection to a was lost: whole, checked against its hash.
        Ok(got) => assert_eq!(got, bytes),
        Err(e) => {
            assert!(e.code().is_none() || e.code() == Some(ErrorCode::Unavailable), "{e}");
            let again = tokio::time::timeout(Duration::from_secs(30), c.fetch_artifact(&sha, 64 << 20)).await;
            assert_eq!(again.expect("in time").expect("from b"), bytes);
        }
    }
    assert_eq!(c.server(), Some(b));
    b_task.abort();
}
