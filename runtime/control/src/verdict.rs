//! The fleet's verdict on a faulty plugin version. A host (a gateway carrying traffic, or this
//! server answering picks) that rolled a version back on its own says so with its evidence; the
//! fault is kept in the plugin record beside the other hosts' faults, and once the fleet rule
//! is met (by default one host) the version is marked bad there and the record returns to its
//! newest good version. Every host follows the record, so the whole fleet runs the same good
//! version, and no host (a restarted one included) activates the bad one again.
//!
//! The decision is a conditional write of the record (`record.rs`): with several servers on
//! one store it is taken once. A fault that cannot change anything (no such record, another
//! kind, a version already bad or no longer active, a host already counted) is ignored and
//! counted by reason; the rest of the fleet sees nothing.

use sextant_core::store::Store;
use sextant_core::{BadVersion, HostFault, MAX_FAULT_FIELD, MAX_PENDING_FAULTS, PLUGIN_HISTORY, PluginName};
use sextant_plugin::AutoRollback;
use sextant_proto::{FaultDecision, IgnoredFault};

use crate::error::ManagerError;
use crate::fault::{Fault, FaultTaken};
use crate::slots::{pop_good, truncate, unix_ms};
use crate::state::Inner;

impl<S: Store + Clone> Inner<S> {
    /// Takes a host's fault: kept in the record, the version marked bad once the fleet rule
    /// is met, or ignored with a reason.
    ///
    /// # Errors
    /// The store could not take the write.
    pub(crate) async fn take_fault(&self, fault: Fault) -> Result<FaultTaken, ManagerError> {
        let rule = *self.fleet.lock();
        let now = unix_ms();
        let window = u64::try_from(rule.window.as_millis()).unwrap_or(u64::MAX);
        let ignored = |why| FaultTaken {
            decision: FaultDecision::Ignored,
            ignored: Some(why),
            hosts: 0,
            needed: rule.hosts,
            revision: None,
        };
        let mut taken = ignored(IgnoredFault::NoRecord);
        let written = self
            .write_record(&fault.plugin, |old| {
                let Some(old) = old else {
                    taken = ignored(IgnoredFault::NoRecord);
                    return Ok(None);
                };
                let why = if old.kind != fault.kind {
                    Some(IgnoredFault::WrongKind)
                } else if old.bad_reason(&fault.sha256).is_some() {
                    Some(IgnoredFault::AlreadyBad)
                } else if old.sha256 != fault.sha256 {
                    Some(IgnoredFault::NotCurrent)
                } else {
                    None
                };
                if let Some(why) = why {
                    taken = ignored(why);
                    return Ok(None);
                }
                let mut record = old.clone();
                record.faults.retain(|f| f.sha256 == fault.sha256 && now.saturating_sub(f.at_unix_ms) <= window);
                if record.faults.iter().any(|f| f.host == fault.host) {
                    taken = FaultTaken { hosts: count(record.faults.len()), ..ignored(IgnoredFault::Repeated) };
                    return Ok(None);
                }
                record.faults.push(HostFault {
                    sha256: fault.sha256.clone(),
                    host: truncate(&fault.host, MAX_FAULT_FIELD),
                    reason: truncate(&format!("{} {}: {}", fault.service, fault.kind, fault.reason), MAX_FAULT_FIELD),
                    at_unix_ms: now,
                });
                let excess = record.faults.len().saturating_sub(MAX_PENDING_FAULTS);
                record.faults.drain(..excess);
                let hosts = count(record.faults.len());
                if hosts < rule.hosts {
                    taken = FaultTaken {
                        decision: FaultDecision::Pending,
                        ignored: None,
                        hosts,
                        needed: rule.hosts,
                        revision: None,
                    };
                    return Ok(Some(record));
                }
                // The rule is met: the evidence of the first host, and who else said so.
                let first = record.faults.first().map(|f| f.reason.clone()).unwrap_or_default();
                let reason = match record.faults.len() {
                    1 => format!("{first} (reported by {})", fault.host),
                    n => format!("{first} (reported by {n} hosts: {})", hosts_of(&record.faults)),
                };
                record.bad.push(BadVersion {
                    sha256: fault.sha256.clone(),
                    reason: truncate(&reason, MAX_FAULT_FIELD),
                    at_unix_ms: now,
                });
                let excess = record.bad.len().saturating_sub(PLUGIN_HISTORY);
                record.bad.drain(..excess);
                record.faults.clear();
                if let Some(target) = pop_good(&mut record.history, &record.bad) {
                    record.switch_to(target);
                    record.loaded_at_unix_ms = now;
                }
                taken = FaultTaken {
                    decision: FaultDecision::MarkedBad,
                    ignored: None,
                    hosts,
                    needed: rule.hosts,
                    revision: None,
                };
                Ok(Some(record))
            })
            .await;
        let result = written.map(|w| FaultTaken { revision: w.as_ref().map(|(_, r)| *r), ..taken });
        if let Ok(t) = &result {
            *self.fault_counts.lock().entry((t.decision, t.ignored)).or_default() += 1;
            match (t.decision, t.ignored) {
                (FaultDecision::MarkedBad, _) => tracing::error!(
                    plugin = %fault.plugin, sha256 = %fault.sha256, host = %fault.host, hosts = t.hosts,
                    "version marked bad for the fleet after automatic rollbacks"
                ),
                (FaultDecision::Pending, _) => tracing::warn!(
                    plugin = %fault.plugin, sha256 = %fault.sha256, host = %fault.host, hosts = t.hosts, needed = t.needed,
                    "a host rolled a plugin version back; waiting for the fleet rule"
                ),
                (FaultDecision::Ignored, why) => tracing::info!(
                    plugin = %fault.plugin, sha256 = %fault.sha256, host = %fault.host, reason = ?why,
                    "plugin fault ignored"
                ),
            }
        }
        result
    }

    /// This server's own slot rolled back: the same fault any host reports.
    pub(crate) async fn own_rollback(&self, rollback: AutoRollback) {
        // A built-in that faulted has no record to mark.
        let Some(sha256) = rollback.sha256 else { return };
        let Ok(plugin) = PluginName::new(&rollback.plugin) else { return };
        let fault = Fault {
            plugin,
            kind: rollback.kind.to_string(),
            sha256: sha256.clone(),
            service: rollback.service,
            host: self.identity.lock().clone(),
            reason: rollback.reason,
        };
        let name = fault.plugin.to_string();
        if let Err(e) = self.take_fault(fault).await {
            self.failed(&name, "auto-rollback", &format!("reporting {sha256}'s rollback: {e}"));
        }
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn hosts_of(faults: &[HostFault]) -> String {
    let hosts: Vec<&str> = faults.iter().map(|f| f.host.as_str()).collect();
    hosts.join(", ")
}
