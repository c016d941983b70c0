//! Discovery from a remote sextant: a watch through the client library (failover between
//! servers, resume from the last revision, empty-push protection, the on-disk cache when no
//! server answers) mirrored into local snapshots the router reads without locks.
//!
//! Events are applied as events: an upsert or a removal rebuilds the one service it touches,
//! whatever the size of the followed scope. The whole view is copied from the client only
//! for a `Reset`, for an event empty-push protection held back, and for the cached view
//! served while no server answers.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sextant_core::snapshot::Directory;
use sextant_core::view::RegistryView;
use sextant_core::{Change, Event, Scope, ServiceKey, SnapshotHandle};
use sextant_proto::client::Applied;
use sextant_quic::client::Client;
use tokio::sync::{Notify, watch};

use crate::discovery::Discovery;

/// A [`Discovery`] that follows a scope of a remote sextant.
#[derive(Debug)]
pub struct RemoteDiscovery {
    directory: Arc<Directory>,
    /// (age when served, when) while the view comes from the cache.
    stale: Arc<Mutex<Option<(Duration, Instant)>>>,
    /// Told after each published change ([`Discovery::on_change`]).
    wakers: Arc<Mutex<Vec<Weak<Notify>>>>,
    /// What it follows.
    scope: Scope,
    /// Set once the first view is published.
    synced: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The client it follows through (what a router follows plugin records with).
    client: Client,
}

impl RemoteDiscovery {
    /// Starts following `scope` through `client` (on the current tokio runtime).
    #[must_use]
    pub fn follow(client: Client, scope: Scope) -> Self {
        let mut view = RegistryView::new(16);
        let directory = Arc::clone(view.directory());
        let stale = Arc::new(Mutex::new(None));
        let stale_w = Arc::clone(&stale);
        let wakers: Arc<Mutex<Vec<Weak<Notify>>>> = Arc::default();
        let wakers_w = Arc::clone(&wakers);
        let (synced_tx, synced) = watch::channel(false);
        let followed = scope.clone();
        let own = client.clone();
        let task = tokio::spawn(async move {
            let mut watch = client.watch(scope);
            let mut held: std::collections::HashSet<ServiceKey> = std::collections::HashSet::new();
            while let Some(item) = watch.next().await {
                match item {
                    Ok(item) => {
                        *stale_w.lock() = item.stale.map(|age| (age, Instant::now()));
                        // Services empty-push protection held back follow the client's view
                        // (copied) until the next reset.
                        match (&item.applied, &item.event.change) {
                            (Applied::Held(services), _) => held.extend(services.iter().cloned()),
                            (_, Change::Reset { .. }) => held.clear(),
                            _ => {}
                        }
                        let touched = match &item.event.change {
                            Change::Upsert { record } => record.key().service().cloned(),
                            Change::Remove { key } => key.service().cloned(),
                            Change::Reset { .. } => None,
                        };
                        let incremental = item.applied == Applied::Changed
                            && item.stale.is_none()
                            && !matches!(item.event.change, Change::Reset { .. })
                            && touched.is_none_or(|s| !held.contains(&s));
                        if !(incremental && view.apply(&item.event).is_ok()) {
                            // The client's view has empty-push protection applied: copy it.
                            let snapshot = client.view(&watch);
                            let event = Event {
                                revision: snapshot.revision,
                                change: Change::Reset { snapshot: Arc::new(snapshot) },
                            };
                            if let Err(e) = view.apply(&event) {
                                tracing::warn!(error = %e, "cannot apply remote view");
                                continue;
                            }
                        }
                        view.publish();
                        synced_tx.send_if_modified(|s| !std::mem::replace(s, true));
                        wakers_w.lock().retain(|w| {
                            w.upgrade().is_some_and(|w| {
                                w.notify_one();
                                true
                            })
                        });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "remote discovery watch ended");
                        return;
                    }
                }
            }
        });
        Self { directory, stale, wakers, scope: followed, synced, task, client: own }
    }
}

impl Discovery for RemoteDiscovery {
    fn handle(&self, service: &ServiceKey) -> SnapshotHandle {
        self.directory.handle(service)
    }

    fn stale(&self) -> Option<Duration> {
        self.stale.lock().map(|(age, at)| age + at.elapsed())
    }

    fn follows(&self, service: &ServiceKey) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Namespace(ns) => service.namespace == *ns,
            Scope::Service(s) => s == service,
            Scope::Config(_) | Scope::Plugins => false,
        }
    }

    fn synced(&self) -> watch::Receiver<bool> {
        self.synced.clone()
    }

    fn on_change(&self, wake: Weak<Notify>) {
        self.wakers.lock().push(wake);
    }

    fn plugin_records(&self) -> Option<Client> {
        Some(self.client.clone())
    }

    fn close(&self) {
        self.task.abort();
    }
}

impl Drop for RemoteDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}
