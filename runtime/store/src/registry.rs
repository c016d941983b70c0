//! The registry a host runs: a store, mirrored into a [`RegistryView`], fanned out.
//!
//! One driver task watches the store from the view's revision, applies what arrives in
//! batches, republishes the touched services' snapshots (one atomic swap each) and broadcasts
//! the events. Subscribers resume from the view's history (the missed events, or a `Reset`),
//! so a thousand subscribers cost one store watch. When the store watch breaks (lag, etcd
//! reconnect) the driver re-watches from the view's revision: nothing is missed, and a
//! compacted revision arrives as a `Reset`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::RwLock;
use sextant_core::snapshot::Directory;
use sextant_core::store::{Store, StoreError, WatchStream};
use sextant_core::view::{RegistryView, ViewStats};
use sextant_core::{
    Change, ConfigEntry, ConfigKey, Event, LeaseId, PluginRecord, Record, RecordKey, Revision, Scope, ServiceKey,
    ServiceSnapshot, SnapshotHandle, StoreSnapshot,
};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream as RevisionChanges;

/// Events applied per batch at most (bounds the time the view's write lock is held).
const MAX_BATCH: usize = 4096;
/// Events held for subscribers that are behind, by default.
const LIVE_BUFFER: usize = 64 * 1024;
/// How long a write waits for the view to catch up before returning anyway.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The store refused or failed; nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the driver shares with readers and subscribers.
#[derive(Debug)]
struct Hub {
    view: RwLock<RegistryView>,
    directory: Arc<Directory>,
    events: broadcast::Sender<Event>,
    revision: watch::Sender<Revision>,
}

impl Hub {
    fn apply(&self, batch: Vec<Event>) {
        let mut view = self.view.write();
        let applied: Vec<Event> = batch
            .into_iter()
            .filter(|e| match view.apply(e) {
                Ok(()) => true,
                Err(err) => {
                    tracing::debug!(%err, "skipping event");
                    false
                }
            })
            .collect();
        view.publish();
        for event in applied {
            // No subscribers is fine.
            let _ = self.events.send(event);
        }
        self.revision.send_replace(view.revision());
    }
}

/// A registry over store `S`. Cheap to clone.
#[derive(Debug)]
pub struct Registry<S> {
    store: S,
    hub: Arc<Hub>,
    driver: Arc<DriverGuard>,
}

impl<S: Clone> Clone for Registry<S> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), hub: self.hub.clone(), driver: self.driver.clone() }
    }
}

#[derive(Debug)]
struct DriverGuard(JoinHandle<()>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<S: Store + Clone> Registry<S> {
    /// Loads the store's contents and starts following it.
    pub async fn start(store: S, history_capacity: usize) -> Result<Self, RegistryError> {
        Self::start_with_live_buffer(store, history_capacity, LIVE_BUFFER).await
    }

    /// [`Registry::start`] with `live_buffer` events held for subscribers that are behind
    /// (past it they resume from the history, or get a `Reset`).
    pub async fn start_with_live_buffer(
        store: S,
        history_capacity: usize,
        live_buffer: usize,
    ) -> Result<Self, RegistryError> {
        let (events, _) = broadcast::channel(live_buffer.max(1));
        let view = RegistryView::new(history_capacity);
        let directory = view.directory().clone();
        let hub =
            Arc::new(Hub { view: RwLock::new(view), directory, events, revision: watch::Sender::new(Revision(0)) });
        // A watch from revision 0 starts with a Reset holding everything: apply it before
        // returning, so the registry starts complete, then follow from there.
        let mut stream = store.watch(Scope::All, Revision(0)).await?;
        match stream.next().await {
            Some(Ok(first)) => hub.apply(vec![first]),
            Some(Err(e)) => return Err(e.into()),
            None => return Err(StoreError::Closed.into()),
        }
        let driver = tokio::spawn(drive(store.clone(), hub.clone(), stream));
        Ok(Self { store, hub, driver: Arc::new(DriverGuard(driver)) })
    }

    /// The store underneath.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Writes `record` and waits until this registry's view shows it.
    pub async fn put(&self, record: Record, lease: Option<LeaseId>) -> Result<Revision, RegistryError> {
        let revision = self.store.put(record, lease).await?;
        self.wait_for(revision).await;
        Ok(revision)
    }

    /// Writes `record` only if its key was last written at `expected` (None: only if absent;
    /// see [`Store::put_if`]), and waits until this registry's view shows it.
    pub async fn put_if(&self, record: Record, expected: Option<Revision>) -> Result<Revision, RegistryError> {
        let revision = self.store.put_if(record, expected).await?;
        self.wait_for(revision).await;
        Ok(revision)
    }

    /// Deletes `key` and waits until this registry's view shows it.
    pub async fn delete(&self, key: RecordKey) -> Result<Revision, RegistryError> {
        let revision = self.store.delete(key).await?;
        self.wait_for(revision).await;
        Ok(revision)
    }

    /// Grants a lease.
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, RegistryError> {
        Ok(self.store.grant_lease(ttl).await?)
    }

    /// Keeps a lease alive.
    pub async fn keepalive(&self, lease: LeaseId) -> Result<Duration, RegistryError> {
        Ok(self.store.keepalive(lease).await?)
    }

    /// Revokes a lease and its instances; returns the revocation's revision (its last
    /// removal) once this registry's view shows it.
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<Revision, RegistryError> {
        let revision = self.store.revoke_lease(lease).await?;
        self.wait_for(revision).await;
        Ok(revision)
    }

    /// For how long the store has been unreachable, if it is: this registry then serves the
    /// last state it has, which may be stale.
    pub fn stale_for(&self) -> Option<Duration> {
        self.store.stale_for()
    }

    /// Waits (bounded) until the view has applied `revision`.
    pub async fn wait_for(&self, revision: Revision) {
        let mut rx = self.hub.revision.subscribe();
        if tokio::time::timeout(CATCH_UP, rx.wait_for(|r| *r >= revision)).await.is_err() {
            tracing::warn!(%revision, "view did not catch up in time");
        }
    }
}

impl<S> Registry<S> {
    /// Changes each time the view applies a revision (the value is the view's revision): a
    /// reader that keeps something derived from the snapshots rebuilds it on this, off its
    /// own request path.
    #[must_use]
    pub fn revisions(&self) -> watch::Receiver<Revision> {
        self.hub.revision.subscribe()
    }

    /// The view's revision.
    #[must_use]
    pub fn revision(&self) -> Revision {
        *self.hub.revision.borrow()
    }

    /// The current snapshot of `service`, if it was ever seen.
    #[must_use]
    pub fn snapshot(&self, service: &ServiceKey) -> Option<Arc<ServiceSnapshot>> {
        self.hub.directory.get(service)
    }

    /// A handle to `service`'s snapshot to keep on the hot path (`load` is one atomic load).
    #[must_use]
    pub fn handle(&self, service: &ServiceKey) -> SnapshotHandle {
        self.hub.directory.handle(service)
    }

    /// Services that have instances.
    #[must_use]
    pub fn services(&self) -> Vec<ServiceKey> {
        self.hub.directory.services()
    }

    /// A config entry.
    #[must_use]
    pub fn config(&self, key: &ConfigKey) -> Option<Arc<ConfigEntry>> {
        self.hub.view.read().config(key)
    }

    /// Plugin records.
    #[must_use]
    pub fn plugins(&self) -> Vec<Arc<PluginRecord>> {
        self.hub.view.read().plugins()
    }

    /// Every record of `scope` as this host sees it.
    #[must_use]
    pub fn list(&self, scope: &Scope) -> StoreSnapshot {
        self.hub.view.read().snapshot(scope)
    }

    /// Instances and healthy instances per zone, for metrics (walks every instance).
    #[must_use]
    pub fn zone_counts(&self) -> std::collections::BTreeMap<String, (usize, usize)> {
        self.hub.view.read().zone_counts()
    }

    /// Sizes for status and metrics.
    #[must_use]
    pub fn stats(&self) -> ViewStats {
        self.hub.view.read().stats()
    }

    /// Follows `scope` from revision `from` (0: from the start): first the missed events or
    /// a `Reset`, then live events.
    #[must_use]
    pub fn subscribe(&self, scope: Scope, from: Revision) -> Subscription {
        let view = self.hub.view.read();
        let pending = view.watch_from(from, &scope).into();
        let rx = self.hub.events.subscribe();
        drop(view);
        Subscription { hub: self.hub.clone(), scope, pending, rx, last: from }
    }

    /// A [`Feed`]: one live receiver for several scopes, for a server that serves many
    /// subscriptions of one connection from one task.
    #[must_use]
    pub fn feed(&self) -> Feed {
        let view = self.hub.view.read();
        let rx = self.hub.events.subscribe();
        let position = view.revision();
        drop(view);
        let changed = RevisionChanges::from_changes(self.hub.revision.subscribe());
        Feed { hub: self.hub.clone(), rx, changed, position }
    }
}

async fn drive<S: Store>(store: S, hub: Arc<Hub>, mut stream: WatchStream) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match stream.next().await {
            Some(Ok(event)) => {
                backoff = Duration::from_millis(50);
                let mut batch = vec![event];
                let broken = drain_ready(&mut stream, &mut batch);
                hub.apply(batch);
                if let Some(err) = broken {
                    stream = rewatch(&store, &hub, &err, &mut backoff).await;
                }
            }
            Some(Err(err)) => stream = rewatch(&store, &hub, &err, &mut backoff).await,
            None => stream = rewatch(&store, &hub, &StoreError::Closed, &mut backoff).await,
        }
    }
}

/// Moves the events that are ready right now into `batch`, without waiting; returns the error
/// that ended the stream, if one did.
fn drain_ready(stream: &mut WatchStream, batch: &mut Vec<Event>) -> Option<StoreError> {
    let mut cx = Context::from_waker(Waker::noop());
    while batch.len() < MAX_BATCH {
        match stream.as_mut().poll_next(&mut cx) {
            Poll::Ready(Some(Ok(e))) => batch.push(e),
            Poll::Ready(Some(Err(e))) => return Some(e),
            Poll::Ready(None) => return Some(StoreError::Closed),
            Poll::Pending => break,
        }
    }
    None
}

async fn rewatch<S: Store>(store: &S, hub: &Hub, cause: &StoreError, backoff: &mut Duration) -> WatchStream {
    loop {
        let from = *hub.revision.borrow();
        tracing::warn!(error = %cause, %from, "store watch broke; re-watching");
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
        match store.watch(Scope::All, from).await {
            Ok(stream) => return stream,
            Err(err) => tracing::warn!(error = %err, "re-watch failed"),
        }
    }
}

/// A subscriber's stream of events for one scope.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    scope: Scope,
    pending: VecDeque<Event>,
    rx: broadcast::Receiver<Event>,
    last: Revision,
}

impl Subscription {
    /// The next event; `None` once the registry is gone.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.last = event.revision;
                return Some(event);
            }
            match self.rx.recv().await {
                Ok(event) => {
                    self.last = event.revision;
                    match &event.change {
                        Change::Reset { snapshot } => {
                            let snapshot = Arc::new(snapshot.filtered(&self.scope));
                            return Some(Event { revision: event.revision, change: Change::Reset { snapshot } });
                        }
                        _ if event.key().is_some_and(|k| self.scope.contains(&k)) => return Some(event),
                        _ => {}
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the live channel: resume from the history (or reset).
                    let view = self.hub.view.read();
                    self.pending = view.watch_from(self.last, &self.scope).into();
                    self.rx = self.hub.events.subscribe();
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The revision of the last event returned (or the starting revision).
    #[must_use]
    pub fn revision(&self) -> Revision {
        self.last
    }
}

/// What [`Feed::poll_recv`] took.
#[derive(Debug)]
pub struct Received {
    /// Events, in order (every scope: the owner filters).
    pub events: Vec<Event>,
    /// After `events` the receiver fell behind the broadcast buffer and was replaced: events
    /// are missing after the last one taken, so every member must catch up with
    /// [`Feed::sync`].
    pub lagged: bool,
}

/// One live receiver for several scopes (a connection's subscriptions, served by one task),
/// so one change reaches all of them in a single pass instead of waking a task each.
///
/// The owner keeps the revision its members have reached (the last event it took, or the
/// position of the last sync); a member that stopped taking events (it just joined, its queue
/// is full, the receiver lagged) rejoins with [`Feed::sync`] from the revision it had reached,
/// which drains the receiver under the view's lock so that the catch-up and the live events
/// neither overlap nor leave a gap.
#[derive(Debug)]
pub struct Feed {
    hub: Arc<Hub>,
    rx: broadcast::Receiver<Event>,
    changed: RevisionChanges<Revision>,
    position: Revision,
}

/// What [`Feed::sync`] returns.
#[derive(Debug, Default)]
pub struct Synced {
    /// Events the receiver held, for the members already fed (in order).
    pub backlog: Vec<Event>,
    /// The receiver had lagged: the members already fed are missing events after the
    /// position they had before this call, and must catch up too.
    pub lagged: bool,
    /// For each joining member, the events that bring it to [`Feed::position`]: its
    /// scope's missed events, or a `Reset`.
    pub catch_up: Vec<Vec<Event>>,
}

impl Feed {
    /// The live position when the feed was made or last synced: the revision every member
    /// fed the backlog, and every joiner given its catch-up, has reached then.
    #[must_use]
    pub fn position(&self) -> Revision {
        self.position
    }

    /// Waits for events; `Ready(None)` once the registry is gone.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        loop {
            let mut received = Received { events: Vec::new(), lagged: false };
            loop {
                match self.rx.try_recv() {
                    Ok(event) => received.events.push(event),
                    Err(broadcast::error::TryRecvError::Empty) => break,
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {
                        // Reported once: the events before the gap go out with the flag.
                        self.rx = self.hub.events.subscribe();
                        received.lagged = true;
                        break;
                    }
                    Err(broadcast::error::TryRecvError::Closed) => return Poll::Ready(None),
                }
            }
            if received.lagged || !received.events.is_empty() {
                return Poll::Ready(Some(received));
            }
            // The revision is published after the events it covers: a change seen here means
            // there may be events to take.
            match tokio_stream::Stream::poll_next(std::pin::Pin::new(&mut self.changed), cx) {
                Poll::Ready(Some(_)) => {}
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Brings `joining` members (scope, revision reached) to the live position: under the
    /// view's read lock, takes what the receiver holds (the `backlog`, for the members already
    /// fed) and computes each joiner's catch-up to exactly that point.
    pub fn sync(&mut self, joining: &[(&Scope, Revision)]) -> Synced {
        let view = self.hub.view.read();
        let mut synced = Synced::default();
        loop {
            match self.rx.try_recv() {
                Ok(event) => synced.backlog.push(event),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    synced.lagged = true;
                    self.rx = self.hub.events.subscribe();
                    break;
                }
                Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed) => break,
            }
        }
        // Every applied event is broadcast under the write lock, so with the lock held and
        // the receiver drained (or just replaced) the view's revision is the live position.
        self.position = view.revision();
        synced.catch_up = joining.iter().map(|(scope, from)| view.watch_from(*from, scope)).collect();
        synced
    }
}
