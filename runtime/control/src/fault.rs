//! What the fleet's verdict (`verdict.rs`) works on: the rule that marks a version bad, a
//! host's fault as it arrives, and the answer it gets.

use std::collections::BTreeMap;
use std::time::Duration;

use sextant_core::{MAX_PENDING_FAULTS, PluginName, Revision};
use sextant_proto::{FaultDecision, IgnoredFault};

/// How many hosts must report a version's automatic rollback, within what window, before the
/// fleet marks it bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetRule {
    /// Distinct hosts (1 to [`MAX_PENDING_FAULTS`]); default 1: one host with enough faults
    /// to roll back is enough.
    pub hosts: u32,
    /// How long a host's fault counts; default ten minutes.
    pub window: Duration,
}

impl Default for FleetRule {
    fn default() -> Self {
        Self { hosts: 1, window: Duration::from_secs(600) }
    }
}

impl FleetRule {
    /// Checks the bounds.
    ///
    /// # Errors
    /// `hosts` outside 1 to [`MAX_PENDING_FAULTS`], or a zero window.
    pub fn validate(&self) -> Result<(), String> {
        let most = u32::try_from(MAX_PENDING_FAULTS).unwrap_or(u32::MAX);
        if !(1..=most).contains(&self.hosts) {
            return Err(format!("the fleet rule counts 1 to {most} hosts, not {}", self.hosts));
        }
        if self.window.is_zero() {
            return Err("the fleet rule's window must be longer than zero".into());
        }
        Ok(())
    }
}

/// A host's word that it rolled a plugin version back on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The record.
    pub plugin: PluginName,
    /// The slot's kind.
    pub kind: String,
    /// The version rolled back.
    pub sha256: String,
    /// The service whose slot rolled it back.
    pub service: String,
    /// Who says so.
    pub host: String,
    /// Why (`N faults within ..., last: ...`).
    pub reason: String,
}

/// What a [`Fault`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultTaken {
    /// Kept, decided, or ignored.
    pub decision: FaultDecision,
    /// Why it was ignored.
    pub ignored: Option<IgnoredFault>,
    /// Hosts counted for this version now.
    pub hosts: u32,
    /// Hosts the fleet rule asks for.
    pub needed: u32,
    /// The record's write, if there was one.
    pub revision: Option<Revision>,
}

/// Faults taken, by decision and (for ignored ones) reason: what `/metrics` shows.
pub(crate) type FaultCounts = BTreeMap<(FaultDecision, Option<IgnoredFault>), u64>;
