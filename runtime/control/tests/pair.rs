//! A simulated client/server pair, no sockets (the quinn-proto way): the client session and
//! the server session exchange frames as bytes, and the server executes with the real
//! command executor over a real registry (embedded store), as the QUIC door does. A reconnect
//! (a new server session) resumes without a missed or repeated event.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sextant_control::{Executor, Origin};
use sextant_core::store::{Store, StoreError};
use sextant_core::{
    Change, CoreError, Event, Instance, InstanceKey, LeaseId, Record, RecordKey, Revision, Scope, ServiceKey,
};
use sextant_proto::acl::Acl;
use sextant_proto::client::{Applied, ClientSession};
use sextant_proto::server::{ServerSession, ServerSettings, Step};
use sextant_proto::{Binding, FrameDecoder, Request, Response, encode};
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry, RegistryError};

/// Bytes on the wire in both directions, through the real codec.
fn over_the_wire<T: serde::Serialize + serde::de::DeserializeOwned>(message: &T) -> T {
    let bytes = encode(message).unwrap();
    let mut d = FrameDecoder::new();
    // Deliver in two pieces, as a network might.
    let (a, b) = bytes.split_at(bytes.len() / 2);
    d.push(a);
    assert!(d.decode::<T>().unwrap().is_none());
    d.push(b);
    let out = d.decode().unwrap().unwrap();
    d.finish().unwrap();
    out
}

/// One simulated connection: its lease for connection-bound instances (long enough that it
/// outlives the test, as a lease kept alive would).
struct Connection<S> {
    registry: Registry<S>,
    lease: Mutex<Option<LeaseId>>,
}

impl<S: Store + Clone> Origin for Connection<S> {
    async fn connection_lease(&self) -> Option<Result<LeaseId, RegistryError>> {
        if let Some(id) = *self.lease.lock() {
            return Some(Ok(id));
        }
        let granted = self.registry.grant_lease(Duration::from_secs(600)).await;
        if let Ok(id) = &granted {
            *self.lease.lock() = Some(*id);
        }
        Some(granted)
    }

    async fn renew_connection_lease(&self, old: LeaseId) -> Result<LeaseId, RegistryError> {
        Err(RegistryError::Store(StoreError::Rejected(CoreError::LeaseNotFound(old))))
    }

    fn admit_registration(&self, _: &InstanceKey) -> Result<(), String> {
        Ok(())
    }

    fn registered(&self, _: &Arc<Instance>, _: bool) {}

    fn deregistered(&self, _: &InstanceKey) {}
}

/// The server side: a session per connection over one executor.
struct Server {
    registry: Registry<EmbeddedStore>,
    executor: Executor<EmbeddedStore>,
}

impl Server {
    fn connect(&self) -> (ServerSession, Connection<EmbeddedStore>) {
        let session =
            ServerSession::new(ServerSettings { acl: Arc::new(Acl::open()), server_id: "sim".into(), grace_ms: 1000 });
        (session, Connection { registry: self.registry.clone(), lease: Mutex::new(None) })
    }

    /// One request from the client; the answer frames (several for `subscribe`: the events
    /// up to the registry's current revision, as a replay delivers them).
    async fn handle(
        &self,
        (session, conn): &mut (ServerSession, Connection<EmbeddedStore>),
        request: &Request,
    ) -> Vec<Response> {
        match session.on_request(over_the_wire(request)) {
            Step::Reply(r) => vec![over_the_wire(&r)],
            Step::Close(code, why) => panic!("closed: {code} {why}"),
            Step::Execute(Request::Subscribe { scope, from, .. }) => {
                let mut subscription = self.registry.subscribe(scope, from);
                let mut answers = vec![];
                while subscription.revision() < self.registry.revision() {
                    let event = subscription.next().await.expect("the registry lives");
                    answers.push(over_the_wire(&Response::Event { event }));
                }
                answers
            }
            Step::Execute(request) => vec![over_the_wire(&self.executor.execute(conn, request).await)],
        }
    }

    /// A write by somebody else.
    async fn external_write(&self, port: u16) {
        let mut i = Instance::new(orders(), "10.0.0.9".parse().unwrap(), port);
        i.ephemeral = false;
        self.registry.put(Record::Instance(i.into()), None).await.unwrap();
    }
}

fn orders() -> ServiceKey {
    ServiceKey::parse("orders").unwrap()
}

fn instance(port: u16) -> Instance {
    Instance::new(orders(), "10.0.0.1".parse().unwrap(), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_registers_subscribes_and_resumes_after_a_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let registry = Registry::start(store, 1024).await.unwrap();
    let server = Server { registry: registry.clone(), executor: Executor::new(registry, None) };
    let mut client = ClientSession::new(None);

    // Connection 1.
    let mut conn = server.connect();
    let welcome = server.handle(&mut conn, &client.hello("sim")).await;
    assert!(matches!(welcome[..], [Response::Welcome { version: 1, .. }]));
    let mine = instance(1);
    let request = client.register(mine.clone(), Binding::Connection);
    let answer = server.handle(&mut conn, &request).await;
    assert_eq!(client.on_registered(&mine.key(), &answer[0]), None);

    let (sub, request) = client.subscribe(Scope::Service(orders()));
    let mut seen: Vec<Revision> = vec![];
    for r in server.handle(&mut conn, &request).await {
        let Response::Event { event } = r else { panic!("expected events") };
        assert!(matches!(event.change, Change::Reset { .. }), "from 0: a reset");
        client.on_event(sub, &event);
        seen.push(event.revision);
    }
    server.external_write(2).await;
    // Live events would stream on the subscription; deliver what a replay from the last
    // revision gives (the same events, through the same session logic).
    for r in server.handle(&mut conn, &client.resubscribe(sub).unwrap()).await {
        let Response::Event { event } = r else { panic!() };
        assert_eq!(client.on_event(sub, &event), Applied::Changed);
        seen.push(event.revision);
    }

    // The connection drops; meanwhile three more changes happen on the server.
    drop(conn);
    server.external_write(3).await;
    server.external_write(4).await;
    let gone = RecordKey::Instance(InstanceKey { service: orders(), id: "10.0.0.9:2".parse().unwrap() });
    server.registry.delete(gone).await.unwrap();

    // Connection 2: hello, re-register, resubscribe from the last revision.
    let mut conn = server.connect();
    assert!(matches!(server.handle(&mut conn, &client.hello("sim")).await[..], [Response::Welcome { .. }]));
    for (key, request) in client.reregistrations() {
        let answer = server.handle(&mut conn, &request).await;
        assert_eq!(client.on_registered(&key, &answer[0]), None);
    }
    let resumed: Vec<Event> = server
        .handle(&mut conn, &client.resubscribe(sub).unwrap())
        .await
        .into_iter()
        .map(|r| match r {
            Response::Event { event } => event,
            other => panic!("{other:?}"),
        })
        .collect();
    // Exactly the missed events, each once: two upserts, one remove, and our re-registration.
    assert_eq!(resumed.len(), 4, "{resumed:?}");
    for event in &resumed {
        assert_eq!(client.on_event(sub, event), Applied::Changed);
        seen.push(event.revision);
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "no event twice: {seen:?}");
    // The client's view is exactly the server's state.
    let view: Vec<Record> = client.state(sub).unwrap().records.values().cloned().collect();
    assert_eq!(view, server.registry.list(&Scope::Service(orders())).records);

    // Invalid contents are refused by the executor with the session's protocol code, and
    // change nothing.
    let before = server.registry.revision();
    let mut heavy = instance(9);
    heavy.weight = 20_000;
    let refused = server.handle(&mut conn, &Request::Register { instance: heavy, binding: Binding::Persistent }).await;
    assert!(
        matches!(&refused[..], [Response::Error { code: sextant_proto::ErrorCode::Invalid, message }] if message.contains("20000")),
        "{refused:?}"
    );
    assert_eq!(server.registry.revision(), before);

    // Deregistering forgets the instance: the next reconnect does not bring it back.
    let request = client.deregister(&mine.key());
    server.handle(&mut conn, &request).await;
    assert!(client.reregistrations().is_empty());
}

/// Instances registered in one service share its name's allocations (each arrives decoded
/// from its own frame, with its own copies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instances_of_a_service_share_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap();
    let registry = Registry::start(store, 1024).await.unwrap();
    let server = Server { registry: registry.clone(), executor: Executor::new(registry.clone(), None) };
    let mut client = ClientSession::new(None);
    let mut conn = server.connect();
    server.handle(&mut conn, &client.hello("sim")).await;
    for port in [1, 2, 3] {
        let mut i = instance(port);
        i.ephemeral = false;
        match &server.handle(&mut conn, &client.register(i, Binding::Persistent)).await[..] {
            // The service is in the view once its first instance is.
            [Response::Written { revision, .. }] => registry.wait_for(*revision).await,
            other => panic!("{other:?}"),
        }
    }
    let snapshot = registry.snapshot(&orders()).unwrap();
    let names: Vec<*const u8> = snapshot
        .instances
        .iter()
        .flat_map(|i| [i.service.namespace.as_str(), i.service.group.as_str(), i.service.service.as_str()])
        .map(str::as_ptr)
        .collect();
    assert_eq!(names.len(), 9);
    assert!(names.chunks(3).all(|n| n == &names[..3]), "one allocation per name: {names:?}");
}
