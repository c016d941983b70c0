//! A simulated client/server pair, no sockets (the quinn-proto way): the client session and
//! the server session exchange frames as bytes; the "registry" is the core's in-memory
//! engine. A reconnect (a new server session) resumes without a missed or repeated event.

use std::sync::Arc;
use std::time::Duration;

use sextant_core::engine::{Engine, Op};
use sextant_core::{
    Change, Event, Instance, InstanceKey, LeaseId, Millis, Record, RecordKey, Revision, Scope, ServiceKey,
};
use sextant_proto::acl::Acl;
use sextant_proto::client::{Applied, ClientSession};
use sextant_proto::server::{ServerSession, ServerSettings, Step};
use sextant_proto::{Binding, FrameDecoder, Request, Response, encode};

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

/// The server side: a session per connection over one shared engine.
struct Server {
    engine: Engine,
    now: Millis,
    connection_lease: Option<LeaseId>,
    next_lease: u64,
}

impl Server {
    fn connect(&mut self) -> ServerSession {
        self.connection_lease = None;
        ServerSession::new(ServerSettings { acl: Arc::new(Acl::open()), server_id: "sim".into(), grace_ms: 1000 })
    }

    /// One request from the client; the answer frames (several for `subscribe`).
    fn handle(&mut self, session: &mut ServerSession, request: &Request) -> Vec<Response> {
        match session.on_request(over_the_wire(request)) {
            Step::Reply(r) => vec![over_the_wire(&r)],
            Step::Close(code, why) => panic!("closed: {code} {why}"),
            Step::Execute(request) => self.execute(request).into_iter().map(|r| over_the_wire(&r)).collect(),
        }
    }

    fn execute(&mut self, request: Request) -> Vec<Response> {
        let written = |e: Event| Response::Written { revision: e.revision, lease: None, version: None };
        match request {
            Request::Register { instance, binding } => {
                let lease = match binding {
                    Binding::Persistent => None,
                    Binding::Connection => Some(*self.connection_lease.get_or_insert_with(|| {
                        self.next_lease += 1;
                        let id = LeaseId(self.next_lease);
                        self.engine.grant_lease(self.now, id, Duration::from_secs(1)).unwrap();
                        id
                    })),
                    other => panic!("not simulated: {other:?}"),
                };
                vec![written(
                    self.engine.apply(self.now, Op::Put { record: Record::Instance(instance.into()), lease }).unwrap(),
                )]
            }
            Request::Deregister { service, id } => {
                let key = RecordKey::Instance(InstanceKey { service, id });
                vec![written(self.engine.apply(self.now, Op::Delete { key }).unwrap())]
            }
            Request::Subscribe { scope, from } => {
                self.engine.watch_from(from, &scope).into_iter().map(|event| Response::Event { event }).collect()
            }
            other => panic!("not simulated: {other:?}"),
        }
    }

    /// A write by somebody else.
    fn external_write(&mut self, port: u16) {
        let mut i = Instance::new(ServiceKey::parse("orders").unwrap(), "10.0.0.9".parse().unwrap(), port);
        i.ephemeral = false;
        self.engine.apply(self.now, Op::Put { record: Record::Instance(i.into()), lease: None }).unwrap();
    }
}

fn instance(port: u16) -> Instance {
    Instance::new(ServiceKey::parse("orders").unwrap(), "10.0.0.1".parse().unwrap(), port)
}

#[test]
fn a_pair_registers_subscribes_and_resumes_after_a_reconnect() {
    let mut server = Server {
        engine: Engine::new(Revision(0), vec![], 1024),
        now: Millis(0),
        connection_lease: None,
        next_lease: 0,
    };
    let mut client = ClientSession::new(None);

    // Connection 1.
    let mut conn = server.connect();
    let welcome = server.handle(&mut conn, &client.hello("sim"));
    assert!(matches!(welcome[..], [Response::Welcome { version: 1, .. }]));
    let mine = instance(1);
    let request = client.register(mine.clone(), Binding::Connection);
    let answer = server.handle(&mut conn, &request);
    assert_eq!(client.on_registered(&mine.key(), &answer[0]), None);

    let (sub, request) = client.subscribe(Scope::Service(ServiceKey::parse("orders").unwrap()));
    let mut seen: Vec<Revision> = vec![];
    for r in server.handle(&mut conn, &request) {
        let Response::Event { event } = r else { panic!("expected events") };
        assert!(matches!(event.change, Change::Reset { .. }), "from 0: a reset");
        client.on_event(sub, &event);
        seen.push(event.revision);
    }
    server.external_write(2);
    // Live events would stream on the subscription; deliver what a replay from the last
    // revision gives (the same events, through the same session logic).
    for r in server.handle(&mut conn, &client.resubscribe(sub).unwrap()) {
        let Response::Event { event } = r else { panic!() };
        assert_eq!(client.on_event(sub, &event), Applied::Changed);
        seen.push(event.revision);
    }

    // The connection drops; meanwhile three more changes happen on the server.
    drop(conn);
    server.external_write(3);
    server.external_write(4);
    server
        .engine
        .apply(
            server.now,
            Op::Delete {
                key: RecordKey::Instance(InstanceKey {
                    service: ServiceKey::parse("orders").unwrap(),
                    id: "10.0.0.9:2".parse().unwrap(),
                }),
            },
        )
        .unwrap();

    // Connection 2: hello, re-register, resubscribe from the last revision.
    let mut conn = server.connect();
    assert!(matches!(server.handle(&mut conn, &client.hello("sim"))[..], [Response::Welcome { .. }]));
    for (key, request) in client.reregistrations() {
        let answer = server.handle(&mut conn, &request);
        assert_eq!(client.on_registered(&key, &answer[0]), None);
    }
    let resumed: Vec<Event> = server
        .handle(&mut conn, &client.resubscribe(sub).unwrap())
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
    assert_eq!(view, server.engine.snapshot(&Scope::Service(ServiceKey::parse("orders").unwrap())).records);

    // Deregistering forgets the instance: the next reconnect does not bring it back.
    let request = client.deregister(&mine.key());
    server.handle(&mut conn, &request);
    assert!(client.reregistrations().is_empty());
}
