//! What [`Router::status`](crate::Router::status) shows: a service state's slots and endpoints, each endpoint's health,
//! breaker, load and last statistics window.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Serialize;
use sextant_plugin::{CandidateStatus, SlotStatus};

use crate::resilience::BreakerState;
use crate::service::{ServiceState, WindowSummary};

/// A service as shown by [`Router::status`](crate::Router::status).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// `namespace/group/name`.
    pub service: String,
    /// Whether protection (threshold or ejection cap) keeps endpoints in rotation.
    pub protection: bool,
    /// The balancer slot.
    pub balancer: SlotStatus,
    /// The health slot.
    pub health: SlotStatus,
    /// The scheduler slot, if any.
    pub scheduler: Option<SlotStatus>,
    /// While a rollout's candidate runs beside the balancer's version: its version, split
    /// and shadow tally.
    pub candidate: Option<CandidateStatus>,
    /// Every routable instance.
    pub endpoints: Vec<EndpointStatus>,
    /// The registry's instances the rotation leaves out, and why.
    pub excluded: Vec<crate::explain::Excluded>,
}

/// One endpoint as shown by [`Router::status`](crate::Router::status).
#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    /// Instance id.
    pub id: String,
    /// `ip:port`.
    pub address: String,
    /// Effective weight in rotation (0: out).
    pub weight: u32,
    /// `up`, `down` (active checks or registry), `ejected`, `open` (breaker), `out`.
    pub health: &'static str,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Requests in flight.
    pub in_flight: u32,
    /// Peak EWMA latency, ms.
    pub latency_ewma_ms: f64,
    /// The last closed window.
    pub last: WindowSummary,
    /// The backend's last load report (ORCA), if it sent one.
    pub load_report: Option<crate::load_report::LoadReport>,
    /// Its age, ms.
    pub load_report_age_ms: Option<u64>,
}

impl ServiceState {
    /// What the service state looks like now (rebuilt first if it is behind).
    pub(crate) fn status(&self) -> ServiceStatus {
        let svc = self;
        svc.settle();
        let snap = svc.balancer().published();
        let routed: HashMap<&str, usize> =
            snap.model.endpoints.iter().enumerate().map(|(n, e)| (e.id.as_str(), n)).collect();
        let state = svc.state.lock();
        let now = self.clock.now();
        let endpoints = state
            .health_ids
            .iter()
            .map(|i| {
                let id = i.id.as_str();
                let es = state.endpoints.get(id);
                let at = routed.get(id).copied();
                let health = if at.is_some() {
                    "up"
                } else if state.local.down.contains(id) || !i.healthy {
                    "down"
                } else if state.local.ejected.get(id).is_some_and(|(u, _)| *u > now) {
                    "ejected"
                } else if es.is_some_and(|e| e.breaker.state() == BreakerState::Open) {
                    "open"
                } else {
                    "out"
                };
                let cell = at.and_then(|n| snap.load(u32::try_from(n).ok()?));
                let report = snap.tracker().report_of(id);
                #[allow(clippy::cast_precision_loss)]
                let latency_ewma_ms = cell.map_or(0.0, |c| c.latency_ewma() as f64 / 1e6);
                EndpointStatus {
                    id: id.to_owned(),
                    address: SocketAddr::new(i.ip, i.port).to_string(),
                    weight: at.map_or(0, |n| snap.model.endpoints[n].weight),
                    health,
                    breaker: es.map_or(BreakerState::Closed, |e| e.breaker.state()),
                    in_flight: cell.map_or(0, |c| c.in_flight()),
                    latency_ewma_ms,
                    last: es.map(|e| **e.last.load()).unwrap_or_default(),
                    load_report: report.as_ref().map(|r| r.0.0.clone()),
                    load_report_age_ms: report.as_ref().map(|r| r.1),
                }
            })
            .collect();
        ServiceStatus {
            service: svc.service.to_string(),
            protection: snap.model.protection_active,
            balancer: svc.balancer().status(),
            health: svc.health().status(),
            scheduler: svc.scheduler().map(|s| s.status()),
            candidate: svc.balancer().candidate(),
            endpoints,
            excluded: svc.excluded(),
        }
    }
}
