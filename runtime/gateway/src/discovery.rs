//! Where a router learns the instances of a service ([`Discovery`]) and where it writes its
//! health verdicts ([`HealthSink`]); a local `sextant_store::Registry` is both (feature
//! `registry`), `RemoteDiscovery` follows remote servers, and a `sextant_core::snapshot::Directory`
//! serves snapshots published by hand (tests, the strategy simulator).

use std::sync::{Arc, Weak};
use std::time::Duration;

use sextant_core::snapshot::Directory;
use sextant_core::{Instance, ServiceKey, SnapshotHandle};
use tokio::sync::{Notify, watch};

/// Where a router learns the instances of a service.
pub trait Discovery: Send + Sync + 'static {
    /// The snapshot handle of `service` (empty until instances arrive).
    fn handle(&self, service: &ServiceKey) -> SnapshotHandle;

    /// `Some(age)` while the view is served from a cache because no server answers.
    fn stale(&self) -> Option<Duration> {
        None
    }

    /// Whether `service` lies in what this discovery follows (a remote scope); a service
    /// outside it never has instances here. A local registry holds every service.
    fn follows(&self, service: &ServiceKey) -> bool {
        let _ = service;
        true
    }

    /// True once the first view has arrived (from a server, or from the cache while none
    /// answers): before, an empty service means "not known yet", not "no instances". A local
    /// registry is synced from the start.
    fn synced(&self) -> watch::Receiver<bool> {
        watch::channel(true).1
    }

    /// Arranges for `wake` to be notified whenever a snapshot changes, for as long as it
    /// lives: the router rebuilds its routes then, off the request path. Without it (the
    /// default), a change is applied by the router's periodic maintenance or the first pick
    /// that sees it.
    fn on_change(&self, wake: Weak<Notify>) {
        let _ = wake;
    }

    /// The remote servers whose plugin records a router on this discovery follows by default
    /// ([`RouterBuilder::ignore_plugin_records`](crate::RouterBuilder::ignore_plugin_records)
    /// opts out): a remote discovery's client. None for a local registry (its server runs
    /// the records itself).
    fn plugin_records(&self) -> Option<sextant_quic::client::Client> {
        None
    }

    /// Stops following (called by [`Router::shutdown`](crate::Router::shutdown)); the
    /// snapshots handed out stay readable. Nothing to stop for a local registry.
    fn close(&self) {}
}

#[cfg(feature = "registry")]
impl<S: sextant_core::store::Store + Clone + Send + Sync + 'static> Discovery for sextant_store::Registry<S> {
    fn handle(&self, service: &ServiceKey) -> SnapshotHandle {
        sextant_store::Registry::handle(self, service)
    }

    fn on_change(&self, wake: Weak<Notify>) {
        let mut revisions = self.revisions();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        // Ends with the router (its `Notify` gone) or the registry (the sender dropped).
        runtime.spawn(async move {
            while revisions.changed().await.is_ok() {
                let Some(wake) = wake.upgrade() else { return };
                wake.notify_one();
            }
        });
    }
}

/// Snapshots published by hand ([`Directory::publish`]): a router of a test or a simulation
/// that plays the registry itself. Synced from the start; a change is applied at the next pick
/// or tick.
impl Discovery for Directory {
    fn handle(&self, service: &ServiceKey) -> SnapshotHandle {
        Directory::handle(self, service)
    }
}

/// Where health verdicts about persistent instances are written (they are marked
/// unhealthy, never deleted). Ephemeral instances are only taken out of local rotation.
pub trait HealthSink: Send + Sync + 'static {
    /// Marks `instance` healthy or unhealthy in the registry.
    fn set_healthy(&self, instance: &Arc<Instance>, healthy: bool);
}

#[cfg(feature = "registry")]
impl<S: sextant_core::store::Store + Clone + Send + Sync + 'static> HealthSink for sextant_store::Registry<S> {
    fn set_healthy(&self, instance: &Arc<Instance>, healthy: bool) {
        let registry = self.clone();
        let mut updated = Instance::clone(instance);
        updated.healthy = healthy;
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        handle.spawn(async move {
            let id = updated.id.clone();
            if let Err(e) = registry.put(sextant_core::Record::Instance(Arc::new(updated)), None).await {
                tracing::warn!(%id, error = %e, "cannot write health verdict");
            }
        });
    }
}
