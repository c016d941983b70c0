//! Discovery from a remote sextant: a watch through the client library (failover between
//! servers, resume from the last revision, empty-push protection, the on-disk cache when no
//! server answers) mirrored into local snapshots the router reads without locks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sextant_core::snapshot::Directory;
use sextant_core::view::RegistryView;
use sextant_core::{Change, Event, Scope, ServiceKey, SnapshotHandle};
use sextant_quic::client::Client;

use crate::router::Discovery;

/// A [`Discovery`] that follows a scope of a remote sextant.
#[derive(Debug)]
pub struct RemoteDiscovery {
    directory: Arc<Directory>,
    /// (age when served, when) while the view comes from the cache.
    stale: Arc<Mutex<Option<(Duration, Instant)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RemoteDiscovery {
    /// Starts following `scope` through `client` (on the current tokio runtime).
    #[must_use]
    pub fn follow(client: Client, scope: Scope) -> Self {
        let mut view = RegistryView::new(16);
        let directory = Arc::clone(view.directory());
        let stale = Arc::new(Mutex::new(None));
        let stale_w = Arc::clone(&stale);
        let task = tokio::spawn(async move {
            let mut watch = client.watch(scope);
            while let Some(item) = watch.next().await {
                match item {
                    Ok(item) => {
                        *stale_w.lock() = item.stale.map(|age| (age, Instant::now()));
                        // The client's view already has empty-push protection applied.
                        let snapshot = client.view(&watch);
                        let event = Event {
                            revision: snapshot.revision,
                            change: Change::Reset { snapshot: Arc::new(snapshot) },
                        };
                        if let Err(e) = view.apply(&event) {
                            tracing::warn!(error = %e, "cannot apply remote view");
                            continue;
                        }
                        view.publish();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "remote discovery watch ended");
                        return;
                    }
                }
            }
        });
        Self { directory, stale, task }
    }
}

impl Discovery for RemoteDiscovery {
    fn handle(&self, service: &ServiceKey) -> SnapshotHandle {
        self.directory.handle(service)
    }

    fn stale(&self) -> Option<Duration> {
        self.stale.lock().map(|(age, at)| age + at.elapsed())
    }
}

impl Drop for RemoteDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}
