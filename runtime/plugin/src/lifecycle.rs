//! What every slot (balancer, health, scheduler) keeps about its versions, written once: the
//! earlier versions a rollback returns to, the recent events `status` shows, the fault window
//! that triggers an automatic rollback, and the report its observer gets.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

use crate::{PluginKind, PluginSpec, VersionCounts};

/// Earlier versions kept as rollback targets.
pub(crate) const MAX_PREVIOUS: usize = 4;
/// Events kept for status.
pub(crate) const MAX_EVENTS: usize = 32;

/// A slot's history: rollback targets (newest last; specs only, rebuilt from the compile
/// cache when needed, so they hold no instances) and recent events (newest last).
#[derive(Debug, Default)]
pub(crate) struct History {
    previous: Vec<PluginSpec>,
    events: VecDeque<SlotEvent>,
}

impl History {
    /// `spec` was replaced by a load: it becomes the newest rollback target (the oldest is
    /// forgotten beyond [`MAX_PREVIOUS`]).
    pub(crate) fn replaced(&mut self, spec: PluginSpec) {
        self.previous.push(spec);
        if self.previous.len() > MAX_PREVIOUS {
            self.previous.remove(0);
        }
    }

    /// What `rollback` returns to.
    pub(crate) fn rollback_target(&self) -> Option<&PluginSpec> {
        self.previous.last()
    }

    /// The rollback to [`History::rollback_target`] happened.
    pub(crate) fn rolled_back(&mut self) {
        self.previous.pop();
    }

    /// What an automatic rollback returns to: the newest earlier version, or `default`.
    pub(crate) fn take_for_auto_rollback(&mut self, default: &PluginSpec) -> PluginSpec {
        self.previous.pop().unwrap_or_else(|| default.clone())
    }

    /// Records an event about `version` (the oldest is forgotten beyond [`MAX_EVENTS`]).
    pub(crate) fn note(&mut self, version: u64, what: String) {
        self.events.push_back(SlotEvent { at: unix_now(), version, what });
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    /// The rollback targets' names, newest first.
    pub(crate) fn previous_names(&self) -> Vec<String> {
        self.previous.iter().rev().map(|s| s.name().to_owned()).collect()
    }

    /// The recent events, newest last.
    pub(crate) fn events(&self) -> Vec<SlotEvent> {
        self.events.iter().cloned().collect()
    }
}

/// The faults of one version within the sliding window.
#[derive(Debug, Default)]
pub(crate) struct FaultWindow {
    faults: VecDeque<Instant>,
}

impl FaultWindow {
    /// Records a fault at `now`; the number of faults within `window` when that is more than
    /// `max` (time for an automatic rollback).
    pub(crate) fn record(&mut self, now: Instant, window: Duration, max: u32) -> Option<usize> {
        self.faults.push_back(now);
        while self.faults.front().is_some_and(|t| now.duration_since(*t) > window) {
            self.faults.pop_front();
        }
        (self.faults.len() > max as usize).then_some(self.faults.len())
    }

    /// A new version starts with no faults.
    pub(crate) fn clear(&mut self) {
        self.faults.clear();
    }
}

/// Why a slot rolled back on its own, as its log line and its observer say it.
pub(crate) fn rollback_reason(faults: usize, window: Duration, last: &dyn std::fmt::Display) -> String {
    format!("{faults} faults within {window:?}, last: {last}")
}

/// The report an observer gets when `faulty` was rolled back automatically.
pub(crate) fn auto_rollback(service: &str, kind: PluginKind, faulty: &PluginSpec, reason: String) -> AutoRollback {
    AutoRollback {
        service: service.to_owned(),
        kind,
        plugin: faulty.name().to_owned(),
        sha256: match faulty {
            PluginSpec::Wasm { compiled, .. } => Some(compiled.sha256.clone()),
            PluginSpec::Builtin { .. } => None,
        },
        reason,
    }
}

/// Seconds since the Unix epoch, for events.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_newest_targets_and_events() {
        let mut h = History::default();
        for n in 0..6 {
            h.replaced(PluginSpec::builtin(&format!("p{n}")));
        }
        assert_eq!(h.previous_names(), ["p5", "p4", "p3", "p2"], "at most {MAX_PREVIOUS}, newest first");
        assert_eq!(h.rollback_target().map(PluginSpec::name), Some("p5"));
        h.rolled_back();
        let default = PluginSpec::builtin("default");
        assert_eq!(h.take_for_auto_rollback(&default).name(), "p4");
        for _ in 0..3 {
            h.take_for_auto_rollback(&default);
        }
        assert_eq!(h.take_for_auto_rollback(&default).name(), "default", "nothing left: the default");
        for n in 0..40 {
            h.note(n, format!("e{n}"));
        }
        let events = h.events();
        assert_eq!(events.len(), MAX_EVENTS);
        assert_eq!((events[0].version, events[MAX_EVENTS - 1].version), (8, 39), "the newest kept, newest last");
    }

    #[test]
    fn the_fault_window_slides_and_says_when_there_were_too_many() {
        let mut w = FaultWindow::default();
        let t0 = Instant::now();
        let window = Duration::from_secs(10);
        assert_eq!(w.record(t0, window, 2), None);
        assert_eq!(w.record(t0 + Duration::from_secs(1), window, 2), None);
        assert_eq!(w.record(t0 + Duration::from_secs(2), window, 2), Some(3));
        // The first two slide out of the window.
        assert_eq!(w.record(t0 + Duration::from_secs(11) + Duration::from_millis(500), window, 2), None);
        w.clear();
        assert_eq!(w.record(t0 + Duration::from_secs(12), window, 0), Some(1));
    }
}

/// A version's status, for `plugin list` and `/metrics`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VersionStatus {
    /// Version number inside the slot (rises with every load).
    pub id: u64,
    /// Plugin name.
    pub name: String,
    /// `builtin` or `wasm`.
    pub source: &'static str,
    /// sha256 of the component (wasm only).
    pub sha256: Option<String>,
    /// When it was published (Unix seconds).
    pub loaded_at: u64,
    /// Calls, faults and call times.
    #[serde(flatten)]
    pub counters: VersionCounts,
}

impl VersionStatus {
    pub(crate) fn of(id: u64, spec: &PluginSpec, loaded_at: SystemTime, counters: VersionCounts) -> Self {
        let (name, source, sha256) = match spec {
            PluginSpec::Builtin { name, .. } => (name.clone(), "builtin", None),
            PluginSpec::Wasm { name, compiled, .. } => (name.clone(), "wasm", Some(compiled.sha256.clone())),
        };
        Self {
            id,
            name,
            source,
            sha256,
            loaded_at: loaded_at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            counters,
        }
    }
}

/// A change of a slot's active version, kept for status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotEvent {
    /// Unix seconds.
    pub at: u64,
    /// The version that became active.
    pub version: u64,
    /// What happened: `load`, `rollback`, `auto-rollback: REASON`.
    pub what: String,
}

/// A slot's status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SlotStatus {
    /// The service.
    pub service: String,
    /// The active version.
    pub active: VersionStatus,
    /// Versions that can be rolled back to, newest first.
    pub previous: Vec<String>,
    /// Recent changes, newest last.
    pub events: Vec<SlotEvent>,
}

/// What a slot tells its owner when it rolled back on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoRollback {
    /// The service.
    pub service: String,
    /// The slot's kind.
    pub kind: PluginKind,
    /// The faulty plugin's name.
    pub plugin: String,
    /// Its sha256 (wasm only).
    pub sha256: Option<String>,
    /// Why (`N faults within ..., last: ...`).
    pub reason: String,
}

/// Receives a slot's automatic rollbacks (called on the thread that saw the last fault:
/// keep it short, e.g. send on a channel).
pub type Observer = Arc<dyn Fn(AutoRollback) + Send + Sync>;
