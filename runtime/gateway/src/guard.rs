//! The guard a pick returns: the endpoint, and the in-flight place held until the request
//! is finished (its outcome recorded) or the guard dropped (released unrecorded).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use sextant_core::Instance;
use sextant_plugin::builtins;
use sextant_plugin::{InFlight, Picked};

use crate::outcome::Outcome;
use crate::service::{Addressing, ServiceState, Target};

/// An endpoint picked for one request. Finish it with the outcome; dropping it unfinished
/// counts as a cancelled request (in-flight released, nothing recorded).
#[derive(Debug)]
pub struct PickGuard {
    svc: Arc<ServiceState>,
    target: Arc<Target>,
    in_flight: Option<InFlight>,
    started: Instant,
    trial: bool,
    version: u64,
    fallback: bool,
    /// Which attempt at its request this pick is for (0: the first; more: a retry).
    attempt: u32,
}

impl PickGuard {
    /// A guard holding `in_flight` on `target` (counted in the router's requests in flight
    /// until it is finished or dropped), for attempt `attempt` at its request.
    pub(crate) fn new(
        svc: &Arc<ServiceState>,
        target: Arc<Target>,
        in_flight: InFlight,
        trial: bool,
        picked: &Picked,
        attempt: u32,
    ) -> Self {
        svc.open.fetch_add(1, Relaxed);
        Self {
            svc: Arc::clone(svc),
            target,
            in_flight: Some(in_flight),
            started: svc.clock.now(),
            trial,
            version: picked.version,
            fallback: picked.fallback,
            attempt,
        }
    }

    /// The endpoint's address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.target.addr
    }

    /// The instance picked.
    #[must_use]
    pub fn instance(&self) -> &Arc<Instance> {
        &self.target.instance
    }

    /// How HTTP names the endpoint (made once per endpoint, not per request).
    pub(crate) fn addressing(&self) -> &Addressing {
        self.target.addressing()
    }

    /// The balancer version that answered.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the native fallback answered because the plugin faulted.
    #[must_use]
    pub fn fallback(&self) -> bool {
        self.fallback
    }

    /// Reports how the request ended; its latency is the time since the pick (call it when
    /// the response is complete: at the end of its body, not at its headers, when the body
    /// is what the balancer should weigh). A guard dropped without `finish` releases its
    /// in-flight place and reports nothing.
    pub fn finish(self, outcome: Outcome) {
        let now = self.svc.clock.now();
        let latency = now.saturating_duration_since(self.started);
        self.finish_at(outcome, latency, now);
    }

    /// Records the load the endpoint reported with its response (a proxy that reads
    /// `endpoint-load-metrics` itself hands the parsed report here; `sextant gateway` does it
    /// for every response carrying one). It replaces the endpoint's previous report; its age
    /// counts from now.
    pub fn report_load(&self, report: crate::load_report::LoadReport) {
        if let Some(f) = &self.in_flight {
            f.report(report);
        }
    }

    /// Reports how the request ended with a latency the caller measured (a gateway that times
    /// its upstream exchange itself, or replays outcomes).
    pub fn finish_with_latency(self, outcome: Outcome, latency: Duration) {
        let now = self.svc.clock.now();
        self.finish_at(outcome, latency, now);
    }

    /// Records the outcome, `now` read once by the caller.
    fn finish_at(mut self, outcome: Outcome, latency: Duration, now: Instant) {
        let failed = outcome.failed();
        if let Some(f) = self.in_flight.take() {
            f.finish_after(latency, failed);
        }
        let es = &self.target.state;
        es.window.load().record(latency, outcome.class());
        if let Some(trial) = self.svc.trial.load().as_deref() {
            trial.record(self.version, &outcome, latency, self.fallback, self.attempt > 0);
        }
        let svc = &self.svc;
        let breaker_moved = es.breaker.record(!failed, self.trial, now);
        self.trial = false;
        // To the health policy through its queue: the maintenance task hands the queue over
        // and applies the verdicts, so no request waits on the policy.
        svc.health().report(
            self.target.health_epoch,
            builtins::Outcome {
                endpoint: self.target.health_index,
                status: outcome.into_status(),
                latency: u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
            },
        );
        if breaker_moved {
            svc.dirty.store(true, Relaxed);
        }
        if breaker_moved || failed {
            // A failure may eject or open a breaker: have it applied now, not at the next tick.
            svc.wake.notify_one();
        }
    }
}

impl Drop for PickGuard {
    fn drop(&mut self) {
        self.svc.open.fetch_sub(1, Relaxed);
        if let Some(f) = self.in_flight.take() {
            f.finish_after(self.svc.clock.now().saturating_duration_since(self.started), false);
        }
        if self.trial {
            self.target.state.breaker.release_trial();
        }
    }
}
