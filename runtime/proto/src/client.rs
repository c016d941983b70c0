//! The client side, without IO: what a client must remember to survive reconnects.
//!
//! - **Registrations** it made, so that after a reconnect (to the same server or another one
//!   sharing the store) it registers them again: connection-bound ones on the new connection,
//!   lease-bound ones on the same lease while it lives, or on a new one if it expired.
//! - **Subscriptions** with the last revision seen and the resulting view, so that it
//!   re-subscribes from that revision and misses nothing (the server answers with the missed
//!   events or a `Reset`).
//! - **Empty-push protection** (on by default, as in Nacos): a `Reset` that would empty a
//!   service that had healthy instances is held for that service (the old instances stay,
//!   flagged as held) unless the service's spec was deleted too. The next real change to
//!   the service releases it.

use std::collections::{BTreeMap, BTreeSet};

use sextant_core::{
    Change, Event, Instance, InstanceKey, LeaseId, Reader, Record, RecordKey, Revision, Scope, ServiceKey,
    StoreSnapshot,
};

use crate::{Binding, ErrorCode, PROTOCOL_VERSION, Request, Response};

/// A subscription's handle inside a [`ClientSession`].
pub type SubId = u64;

#[derive(Debug, Clone)]
struct Registration {
    instance: Instance,
    /// As the caller asked.
    binding: Binding,
    /// The lease it currently hangs on (for `Ttl` and `Lease` bindings).
    lease: Option<LeaseId>,
}

/// A subscription's state: scope, resume point, and the resulting view.
#[derive(Debug, Clone)]
pub struct SubState {
    /// What it follows.
    pub scope: Scope,
    /// Last revision applied.
    pub last: Revision,
    /// The records as the client sees them.
    pub records: BTreeMap<RecordKey, Record>,
    /// Services whose emptying was held back by empty-push protection.
    pub held: BTreeSet<ServiceKey>,
}

impl SubState {
    /// The view as a snapshot at the last revision applied.
    #[must_use]
    pub fn snapshot(&self) -> StoreSnapshot {
        StoreSnapshot { revision: self.last, records: self.records.values().cloned().collect() }
    }
}

/// What applying an event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The view changed.
    Changed,
    /// Applied, but empty-push protection kept these services' old instances.
    Held(Vec<ServiceKey>),
    /// Already seen (a replay overlap after a reconnect): ignored.
    Duplicate,
}

/// Everything a client remembers across connections.
#[derive(Debug, Default)]
pub struct ClientSession {
    token: Option<String>,
    registrations: BTreeMap<InstanceKey, Registration>,
    /// How many registrations hang on each lease: [`ClientSession::leases`] without a walk
    /// over every registration (the keepalive loop asks several times a second, and a client
    /// may hold many persistent registrations that hang on none).
    lease_refs: BTreeMap<LeaseId, usize>,
    subs: BTreeMap<SubId, SubState>,
    next_sub: SubId,
    protect_empty: bool,
    /// Who this client is to gray rules: sent with every subscription.
    reader: Option<Reader>,
}

impl ClientSession {
    /// A session presenting `token`, with empty-push protection on.
    #[must_use]
    pub fn new(token: Option<String>) -> Self {
        Self { token, protect_empty: true, ..Self::default() }
    }

    /// Turns empty-push protection off (every push is applied as is).
    #[must_use]
    pub fn without_empty_push_protection(mut self) -> Self {
        self.protect_empty = false;
        self
    }

    /// Subscriptions say they are read by `reader`: config entries with a candidate come as
    /// the version meant for it.
    #[must_use]
    pub fn with_reader(mut self, reader: Option<Reader>) -> Self {
        self.reader = reader;
        self
    }

    /// Who this client is to gray rules.
    #[must_use]
    pub fn reader(&self) -> Option<&Reader> {
        self.reader.as_ref()
    }

    /// The `hello` for a new connection.
    #[must_use]
    pub fn hello(&self, client: &str) -> Request {
        Request::Hello { version: PROTOCOL_VERSION, token: self.token.clone(), client: Some(client.to_owned()) }
    }

    /// Remembers a registration and returns its request.
    pub fn register(&mut self, instance: Instance, binding: Binding) -> Request {
        let lease = match binding {
            Binding::Lease { lease } => Some(lease),
            _ => None,
        };
        hold(&mut self.lease_refs, lease);
        let old =
            self.registrations.insert(instance.key(), Registration { instance: instance.clone(), binding, lease });
        if let Some(old) = old {
            let_go(&mut self.lease_refs, old.lease);
        }
        Request::Register { instance, binding }
    }

    /// Records the server's answer to a registration of `key`; returns a request to retry
    /// with, when the answer calls for one (a lease that expired while we were away: ask
    /// for a new one with the original TTL).
    pub fn on_registered(&mut self, key: &InstanceKey, response: &Response) -> Option<Request> {
        let reg = self.registrations.get_mut(key)?;
        match response {
            Response::Written { lease, .. } => {
                if lease.is_some() {
                    hold(&mut self.lease_refs, *lease);
                    let_go(&mut self.lease_refs, std::mem::replace(&mut reg.lease, *lease));
                }
                None
            }
            Response::Error { code: ErrorCode::LeaseNotFound, .. } => match reg.binding {
                Binding::Ttl { .. } if reg.lease.is_some() => {
                    let_go(&mut self.lease_refs, reg.lease.take());
                    Some(Request::Register { instance: reg.instance.clone(), binding: reg.binding })
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Forgets a registration and returns the deregistration request.
    pub fn deregister(&mut self, key: &InstanceKey) -> Request {
        if let Some(old) = self.registrations.remove(key) {
            let_go(&mut self.lease_refs, old.lease);
        }
        Request::Deregister { service: key.service.clone(), id: key.id.clone() }
    }

    /// The requests that restore every registration on a new connection.
    #[must_use]
    pub fn reregistrations(&self) -> Vec<(InstanceKey, Request)> {
        self.registrations
            .iter()
            .map(|(key, reg)| {
                let binding = match (reg.binding, reg.lease) {
                    (Binding::Ttl { .. }, Some(lease)) => Binding::Lease { lease },
                    (b, _) => b,
                };
                (key.clone(), Request::Register { instance: reg.instance.clone(), binding })
            })
            .collect()
    }

    /// Leases this client's registrations hang on, to keep alive.
    #[must_use]
    pub fn leases(&self) -> BTreeSet<LeaseId> {
        self.lease_refs.keys().copied().collect()
    }

    /// Starts a subscription; returns its id and the request.
    pub fn subscribe(&mut self, scope: Scope) -> (SubId, Request) {
        let id = self.next_sub;
        self.next_sub += 1;
        let state =
            SubState { scope: scope.clone(), last: Revision(0), records: BTreeMap::new(), held: BTreeSet::new() };
        self.subs.insert(id, state);
        (id, Request::Subscribe { scope, from: Revision(0), reader: self.reader.clone() })
    }

    /// Starts a subscription from a cached view (for example read from disk), so the server
    /// only sends what changed since.
    pub fn subscribe_from(&mut self, scope: Scope, cached: StoreSnapshot) -> (SubId, Request) {
        let (id, _) = self.subscribe(scope.clone());
        let from = cached.revision;
        if let Some(s) = self.subs.get_mut(&id) {
            s.last = from;
            s.records = cached.records.into_iter().map(|r| (r.key(), r)).collect();
        }
        (id, Request::Subscribe { scope, from, reader: self.reader.clone() })
    }

    /// The request that resumes subscription `id` on a new connection.
    #[must_use]
    pub fn resubscribe(&self, id: SubId) -> Option<Request> {
        self.subs.get(&id).map(|s| Request::Subscribe {
            scope: s.scope.clone(),
            from: s.last,
            reader: self.reader.clone(),
        })
    }

    /// Every subscription id.
    #[must_use]
    pub fn subscriptions(&self) -> Vec<SubId> {
        self.subs.keys().copied().collect()
    }

    /// Ends a subscription.
    pub fn unsubscribe(&mut self, id: SubId) {
        self.subs.remove(&id);
    }

    /// A subscription's state.
    #[must_use]
    pub fn state(&self, id: SubId) -> Option<&SubState> {
        self.subs.get(&id)
    }

    /// Applies an event received on subscription `id`.
    pub fn on_event(&mut self, id: SubId, event: &Event) -> Applied {
        let protect = self.protect_empty;
        let Some(sub) = self.subs.get_mut(&id) else { return Applied::Duplicate };
        match &event.change {
            Change::Reset { snapshot } => {
                let next: BTreeMap<RecordKey, Record> = snapshot.records.iter().map(|r| (r.key(), r.clone())).collect();
                let held = if protect { hold_emptied(&sub.records, &next) } else { Vec::new() };
                let mut next = next;
                for service in &held {
                    for (k, r) in sub.records.iter().filter(|(k, _)| is_instance_of(k, service)) {
                        next.insert(k.clone(), r.clone());
                    }
                }
                sub.records = next;
                sub.held = held.iter().cloned().collect();
                sub.last = event.revision;
                if held.is_empty() { Applied::Changed } else { Applied::Held(held) }
            }
            _ if event.revision <= sub.last => Applied::Duplicate,
            Change::Upsert { record } => {
                release(sub, record.key().service());
                sub.records.insert(record.key(), record.clone());
                sub.last = event.revision;
                Applied::Changed
            }
            Change::Remove { key } => {
                release(sub, key.service());
                sub.records.remove(key);
                sub.last = event.revision;
                Applied::Changed
            }
        }
    }
}

/// One more registration hangs on `lease`.
fn hold(refs: &mut BTreeMap<LeaseId, usize>, lease: Option<LeaseId>) {
    if let Some(lease) = lease {
        *refs.entry(lease).or_default() += 1;
    }
}

/// One registration less hangs on `lease`.
fn let_go(refs: &mut BTreeMap<LeaseId, usize>, lease: Option<LeaseId>) {
    if let Some(lease) = lease
        && let std::collections::btree_map::Entry::Occupied(mut count) = refs.entry(lease)
    {
        *count.get_mut() -= 1;
        if *count.get() == 0 {
            count.remove();
        }
    }
}

fn is_instance_of(key: &RecordKey, service: &ServiceKey) -> bool {
    matches!(key, RecordKey::Instance(k) if &k.service == service)
}

/// A real change to a held service: drop the stale instances kept for it.
fn release(sub: &mut SubState, service: Option<&ServiceKey>) {
    if let Some(service) = service
        && sub.held.remove(service)
    {
        sub.records.retain(|k, _| !is_instance_of(k, service));
    }
}

/// Services that had a healthy instance in `old`, have none in `new`, and were not deleted
/// (their spec did not vanish).
fn hold_emptied(old: &BTreeMap<RecordKey, Record>, new: &BTreeMap<RecordKey, Record>) -> Vec<ServiceKey> {
    let healthy: BTreeSet<&ServiceKey> = old
        .values()
        .filter_map(|r| match r {
            Record::Instance(i) if i.healthy && i.is_routable() => Some(&i.service),
            _ => None,
        })
        .collect();
    healthy
        .into_iter()
        .filter(|s| !new.keys().any(|k| is_instance_of(k, s)))
        .filter(|s| {
            // Deleted = its spec existed and is gone now.
            let spec = RecordKey::Service((*s).clone());
            !old.contains_key(&spec) || new.contains_key(&spec)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sextant_core::ServiceSpec;

    use super::*;

    fn inst(service: &str, port: u16) -> Instance {
        Instance::new(ServiceKey::parse(service).unwrap(), "127.0.0.1".parse().unwrap(), port)
    }

    fn upsert(rev: u64, i: Instance) -> Event {
        Event { revision: Revision(rev), change: Change::Upsert { record: Record::Instance(Arc::new(i)) } }
    }

    fn reset(rev: u64, records: Vec<Record>) -> Event {
        Event {
            revision: Revision(rev),
            change: Change::Reset { snapshot: Arc::new(StoreSnapshot { revision: Revision(rev), records }) },
        }
    }

    #[test]
    fn resubscribes_from_the_last_revision_and_ignores_overlap() {
        let mut c = ClientSession::new(None);
        let (id, req) = c.subscribe(Scope::All);
        assert_eq!(req, Request::Subscribe { scope: Scope::All, from: Revision(0), reader: None });
        assert_eq!(c.on_event(id, &upsert(3, inst("a", 1))), Applied::Changed);
        assert_eq!(c.on_event(id, &upsert(4, inst("a", 2))), Applied::Changed);
        assert_eq!(c.resubscribe(id), Some(Request::Subscribe { scope: Scope::All, from: Revision(4), reader: None }));
        assert_eq!(c.on_event(id, &upsert(4, inst("a", 2))), Applied::Duplicate);
        assert_eq!(c.state(id).unwrap().records.len(), 2);
    }

    #[test]
    fn an_empty_push_is_held_unless_the_service_was_deleted() {
        let mut c = ClientSession::new(None);
        let (id, _) = c.subscribe(Scope::All);
        c.on_event(id, &upsert(1, inst("a", 1)));
        c.on_event(id, &upsert(2, inst("b", 1)));
        let spec_b = Record::Service(Arc::new(ServiceSpec {
            service: ServiceKey::parse("b").unwrap(),
            protect_threshold: 0.0,
            metadata: sextant_core::Metadata::new(),
        }));
        c.on_event(id, &Event { revision: Revision(3), change: Change::Upsert { record: spec_b } });
        // A reset without any instance of a or b, and without b's spec (b was deleted).
        let applied = c.on_event(id, &reset(10, vec![]));
        assert_eq!(applied, Applied::Held(vec![ServiceKey::parse("a").unwrap()]));
        let s = c.state(id).unwrap();
        assert_eq!(s.records.len(), 1, "a's instance is kept, b is gone");
        assert!(s.held.contains(&ServiceKey::parse("a").unwrap()));
        // The next real change to a releases it.
        c.on_event(id, &upsert(11, inst("a", 7)));
        let s = c.state(id).unwrap();
        assert!(s.held.is_empty());
        assert_eq!(s.records.keys().cloned().collect::<Vec<_>>(), vec![Record::Instance(inst("a", 7).into()).key()]);
    }

    #[test]
    fn protection_can_be_turned_off() {
        let mut c = ClientSession::new(None).without_empty_push_protection();
        let (id, _) = c.subscribe(Scope::All);
        c.on_event(id, &upsert(1, inst("a", 1)));
        assert_eq!(c.on_event(id, &reset(5, vec![])), Applied::Changed);
        assert!(c.state(id).unwrap().records.is_empty());
    }

    #[test]
    fn registrations_are_restored_on_their_lease_or_a_new_one() {
        let mut c = ClientSession::new(None);
        let conn = inst("a", 1);
        let ttl = inst("a", 2);
        c.register(conn.clone(), Binding::Connection);
        c.register(ttl.clone(), Binding::Ttl { ttl_ms: 3000 });
        let written = Response::Written { revision: Revision(2), lease: Some(LeaseId(77)), version: None };
        assert_eq!(c.on_registered(&ttl.key(), &written), None);
        assert_eq!(c.leases(), BTreeSet::from([LeaseId(77)]));
        let again = c.reregistrations();
        assert_eq!(again[0].1, Request::Register { instance: conn.clone(), binding: Binding::Connection });
        assert_eq!(
            again[1].1,
            Request::Register { instance: ttl.clone(), binding: Binding::Lease { lease: LeaseId(77) } }
        );
        // The lease expired while the client was away: retry with a fresh TTL lease.
        let gone = Response::error(ErrorCode::LeaseNotFound, "gone");
        assert_eq!(
            c.on_registered(&ttl.key(), &gone),
            Some(Request::Register { instance: ttl.clone(), binding: Binding::Ttl { ttl_ms: 3000 } })
        );
        c.deregister(&conn.key());
        assert_eq!(c.reregistrations().len(), 1);
    }

    #[test]
    fn the_leases_to_keep_alive_follow_every_registration_change() {
        let mut c = ClientSession::new(None);
        let written = |lease| Response::Written { revision: Revision(2), lease: Some(LeaseId(lease)), version: None };
        let (a, b, d) = (inst("a", 1), inst("a", 2), inst("a", 3));
        c.register(a.clone(), Binding::Lease { lease: LeaseId(5) });
        c.register(b.clone(), Binding::Lease { lease: LeaseId(5) });
        c.register(d.clone(), Binding::Persistent);
        assert_eq!(c.leases(), BTreeSet::from([LeaseId(5)]));
        // `a` moves to a TTL lease the server grants: 5 is still held by `b`.
        c.register(a.clone(), Binding::Ttl { ttl_ms: 3000 });
        c.on_registered(&a.key(), &written(6));
        assert_eq!(c.leases(), BTreeSet::from([LeaseId(5), LeaseId(6)]));
        // The server answers with the lease `b` already hangs on: counted once.
        c.on_registered(&b.key(), &written(5));
        c.deregister(&b.key());
        assert_eq!(c.leases(), BTreeSet::from([LeaseId(6)]));
        // `a`'s lease expired while away: nothing to keep alive until it has a new one.
        c.on_registered(&a.key(), &Response::error(ErrorCode::LeaseNotFound, "gone"));
        assert!(c.leases().is_empty());
        c.on_registered(&a.key(), &written(7));
        assert_eq!(c.leases(), BTreeSet::from([LeaseId(7)]));
        c.deregister(&a.key());
        c.deregister(&d.key());
        assert!(c.leases().is_empty());
    }
}
