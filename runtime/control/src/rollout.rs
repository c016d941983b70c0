//! Progressive rollouts on a server: the record changes that start one (a load with a
//! plan), steer it (an operator's pause, resume, promote, abort) and end it, and the judge
//! that decides its steps from the gateways' reports.
//!
//! Every change is a conditional write of the plugin record (`record.rs`), made on the
//! record as the store holds it: a judge's decision is written only if the rollout is still
//! at the step and state it judged, so with several servers on one store each step is
//! decided once (the servers that lose the write find the step already decided and judge
//! the next one).

use std::sync::Arc;

use sextant_core::rollout::{GatewayReport, Plan, Rollout, RolloutState, Verdict};
use sextant_core::store::Store;
use sextant_core::{PluginName, PluginRecord, PluginVersion, Revision};
use sextant_proto::RolloutAction;

use crate::error::ManagerError;
use crate::slots::{push_history, unix_ms};
use crate::state::Inner;

/// A decision the judge wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The record.
    pub plugin: PluginName,
    /// The step judged.
    pub step: usize,
    /// The state it led to.
    pub state: RolloutState,
    /// The revision of the write.
    pub revision: Revision,
}

/// Makes a promoted rollout's candidate the record's version (the one it replaces goes
/// into the history, for `plugin rollback`).
fn finish_promotion(record: &mut PluginRecord, now: u64) {
    let Some(r) = record.rollout.as_ref().filter(|r| r.state == RolloutState::Promoted) else { return };
    let candidate = r.candidate.clone();
    let left = record.switch_to(candidate);
    push_history(&mut record.history, left);
    record.forward.clear();
    record.loaded_at_unix_ms = now;
}

/// `record` with a rollout of `candidate` on `plan` started: the checks a load with a plan
/// must pass, on the record as the store holds it.
pub(crate) fn start(
    old: Option<&PluginRecord>,
    others: &[Arc<PluginRecord>],
    candidate: PluginVersion,
    plan: &Plan,
    (kind, binding): (&str, &str),
    by: &str,
) -> Result<PluginRecord, ManagerError> {
    let o = old.ok_or(ManagerError::NoStable)?;
    if o.kind != kind || o.binding != binding {
        return Err(ManagerError::RolloutChanges { kind: o.kind.clone(), binding: o.binding.clone() });
    }
    if o.rollout.as_ref().is_some_and(|r| r.state.is_live()) {
        return Err(ManagerError::RolloutRunning(o.name.clone()));
    }
    if let Some(other) = others.iter().find(|r| {
        r.name != o.name
            && r.kind == o.kind
            && r.binding == o.binding
            && r.rollout.as_ref().is_some_and(|x| x.state.is_live())
    }) {
        return Err(ManagerError::RolloutRunning(other.name.clone()));
    }
    if o.sha256 == candidate.sha256 && o.config == candidate.config {
        return Err(ManagerError::SameVersion(o.name.clone()));
    }
    let mut next = o.clone();
    next.rollout = Some(Rollout::start(candidate, plan.clone(), unix_ms(), by)?);
    Ok(next)
}

impl<S: Store + Clone> Inner<S> {
    /// Applies an operator's `action` to `name`'s running rollout.
    ///
    /// # Errors
    /// No such record, no rollout, a transition the rollout's state does not allow, the
    /// store's refusal.
    pub(crate) async fn steer(
        &self,
        name: &PluginName,
        action: RolloutAction,
        by: &str,
    ) -> Result<(Arc<PluginRecord>, Revision), ManagerError> {
        let written = self
            .write_record(name, |old| {
                let mut record = old.cloned().ok_or_else(|| ManagerError::NotFound(name.clone()))?;
                let now = unix_ms();
                let rollout = record.rollout.as_mut().ok_or_else(|| ManagerError::NoRollout(name.clone()))?;
                match action {
                    RolloutAction::Pause => rollout.pause(now, by, "paused by an operator")?,
                    RolloutAction::Resume => rollout.resume(now, by)?,
                    RolloutAction::Promote => rollout.advance(now, by, "promoted by an operator", None)?,
                    RolloutAction::Abort => rollout.abort(now, by, "aborted by an operator")?,
                }
                finish_promotion(&mut record, now);
                Ok(Some(record))
            })
            .await?;
        written.ok_or_else(|| ManagerError::NotFound(name.clone()))
    }

    /// Judges every running rollout on the reports in the gateways' registrations and
    /// writes the decisions that are not "wait"; returns them.
    pub(crate) async fn judge_all(&self, by: &str) -> Vec<Judged> {
        let records = self.registry.plugins();
        let running: Vec<&Arc<PluginRecord>> = records
            .iter()
            .filter(|r| {
                r.rollout.as_ref().is_some_and(|o| matches!(o.state, RolloutState::Shadow | RolloutState::Canary))
            })
            .collect();
        if running.is_empty() {
            return Vec::new();
        }
        let snapshots: Vec<_> = self.registry.services().iter().filter_map(|s| self.registry.snapshot(s)).collect();
        let mut judged = Vec::new();
        for record in running {
            let Some(rollout) = &record.rollout else { continue };
            let instances = snapshots.iter().flat_map(|s| s.instances.iter().map(|i| &**i));
            let reports: Vec<GatewayReport> = sextant_proto::rollout_reports(instances, record.name.as_str())
                .into_iter()
                .filter_map(|(host, report)| match report {
                    Ok(r) if r.is_about(rollout) => Some(r.for_judge(host)),
                    Ok(_) => None,
                    Err(e) => {
                        tracing::warn!(%host, plugin = %record.name, error = %e, "a rollout report that does not parse; ignored");
                        None
                    }
                })
                .collect();
            let now = unix_ms();
            let verdict = rollout.judge(&reports, now);
            if let Verdict::Wait(_) = verdict {
                continue;
            }
            let (step, state, candidate) = (rollout.step, rollout.state, rollout.candidate.sha256.clone());
            let written = self
                .write_record(&record.name, |old| {
                    let Some(mut record) = old.cloned() else { return Ok(None) };
                    let Some(r) = record.rollout.as_mut() else { return Ok(None) };
                    // Decided meanwhile (by another server, or an operator): nothing to write.
                    if r.step != step || r.state != state || r.candidate.sha256 != candidate {
                        return Ok(None);
                    }
                    match &verdict {
                        Verdict::Wait(_) => return Ok(None),
                        Verdict::Advance(e) => r.advance(now, by, &format!("step passed: {e}"), Some(e.clone()))?,
                        Verdict::RollBack(e) => r.roll_back(now, by, e.clone())?,
                        Verdict::Pause(why) => r.pause(now, by, why)?,
                    }
                    finish_promotion(&mut record, now);
                    Ok(Some(record))
                })
                .await;
            match written {
                Ok(Some((record, revision))) => {
                    let state = record.rollout.as_ref().map_or(RolloutState::Aborted, |r| r.state);
                    let _span = tracing::info_span!(
                        target: sextant_core::TRACE_TARGET,
                        "rollout decision",
                        sextant.plugin = %record.name,
                        sextant.step = step,
                        sextant.state = %state,
                        sextant.revision = revision.0,
                    )
                    .entered();
                    // In the audit log beside the operators' writes: who decided what.
                    let reason = record.rollout.as_ref().and_then(|r| r.log.last()).map_or("", |d| d.reason.as_str());
                    tracing::info!(
                        target: "sextant::audit",
                        door = "judge",
                        verdict = "accepted",
                        who = by,
                        what = "rollout_decision",
                        target = %record.name,
                        revision = revision.0,
                        step,
                        %state,
                        reason,
                        "write"
                    );
                    judged.push(Judged { plugin: record.name.clone(), step, state, revision });
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(plugin = %record.name, error = %e, "a rollout decision was not written"),
            }
        }
        judged
    }
}
