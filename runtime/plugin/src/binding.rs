//! Which plugin a slot runs: the binding rule every host (server or gateway) applies.

use std::sync::Arc;

use sextant_core::rollout::Rollout;
use sextant_core::{PluginName, PluginRecord, ServiceKey};

use crate::{Compiled, PluginKind, PluginSpec, Split};

/// What one slot of a host runs as the records decide: a record's current version, with the
/// configuration the plugin receives (`{}` when the record has none). Where an
/// `Option<Desired>` is expected, `None` is the slot's configured default. Servers and
/// gateways compare what they run against it, and load it the same way ([`Desired::spec`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The record.
    pub name: PluginName,
    /// Its component's sha256.
    pub sha256: String,
    /// Its configuration, as the plugin receives it.
    pub config: String,
}

impl Desired {
    /// What `record`'s current version runs as.
    #[must_use]
    pub fn of(record: &PluginRecord) -> Self {
        Self { name: record.name.clone(), sha256: record.sha256.clone(), config: record.config_or_default().to_owned() }
    }

    /// The spec to load, once its component (by [`Desired::sha256`]) is compiled.
    #[must_use]
    pub fn spec(&self, compiled: Arc<Compiled>) -> PluginSpec {
        PluginSpec::Wasm { name: self.name.to_string(), compiled, config: self.config.clone() }
    }

    /// The version's name for people: `SHA12`, or `SHA12+CFG8` with a configuration
    /// ([`sextant_core::version_label`]).
    #[must_use]
    pub fn version(&self) -> String {
        sextant_core::version_label(&self.sha256, &self.config)
    }
}

/// The candidate a balancer slot runs beside its [`Desired`] version while the bound
/// record's rollout runs (shadow, canary or paused): the version, and how it shares the picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trial {
    /// The candidate version (the record's name, the candidate's sha256 and configuration).
    pub version: Desired,
    /// Its share of the picks, or shadow.
    pub split: Split,
    /// The rollout's step (a new step starts new outcome windows).
    pub step: usize,
    /// When the step began, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
}

/// What `service`'s balancer runs as a candidate on every host: the live rollout of the
/// record [`bound_record`] names, if it has one.
#[must_use]
pub fn trial(records: &[Arc<PluginRecord>], service: &ServiceKey) -> Option<Trial> {
    let record = bound_record(records, service, PluginKind::Balancer)?;
    let rollout = record.rollout.as_ref().filter(|r| r.state.is_live())?;
    Some(Trial::of(&record.name, rollout))
}

impl Trial {
    /// What `rollout` (of record `name`) has a host run now.
    #[must_use]
    pub fn of(name: &PluginName, rollout: &Rollout) -> Self {
        let c = &rollout.candidate;
        let config = if c.config.is_empty() { "{}".to_owned() } else { c.config.clone() };
        let split = match rollout.current_step().per_mille {
            0 => Split::Shadow,
            per_mille => Split::Canary { per_mille },
        };
        Self {
            version: Desired { name: name.clone(), sha256: c.sha256.clone(), config },
            split,
            step: rollout.step,
            since_unix_ms: rollout.step_since_unix_ms,
        }
    }
}

/// What a host does to its balancer slot's candidate to go from the trial it `applied` to
/// the one `wanted`, given the version its slot is to run (`stable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrialChange {
    /// Nothing.
    Keep,
    /// Run this candidate (its component needed): none ran, or another one did.
    Start(Trial),
    /// Same candidate, another step: change its split.
    Step(Trial),
    /// The candidate is now the version to run: promote it as it runs (no rebuild).
    Promote,
    /// No candidate any more (rolled back, aborted, unbound).
    Stop,
}

impl TrialChange {
    /// The change a host makes from the trial it last `applied` (`refused`: it could not run
    /// it, so its slot has no candidate) to the one `wanted`, with `stable` to run: a refused
    /// trial is not tried again until the rollout changes, and then started anew.
    #[must_use]
    pub fn for_host(applied: Option<&Trial>, refused: bool, wanted: Option<&Trial>, stable: Option<&Desired>) -> Self {
        match (refused, applied == wanted) {
            (true, true) => Self::Keep,
            (true, false) => Self::between(None, wanted, stable),
            (false, _) => Self::between(applied, wanted, stable),
        }
    }

    /// The change from `applied` to `wanted` with `stable` to run.
    #[must_use]
    pub fn between(applied: Option<&Trial>, wanted: Option<&Trial>, stable: Option<&Desired>) -> Self {
        match (applied, wanted) {
            (None, None) => Self::Keep,
            (Some(a), None) if stable == Some(&a.version) => Self::Promote,
            (Some(_), None) => Self::Stop,
            (Some(a), Some(w)) if a == w => Self::Keep,
            (Some(a), Some(w)) if a.version == w.version => Self::Step(w.clone()),
            (_, Some(w)) => Self::Start(w.clone()),
        }
    }
}

/// What `service`'s `kind` slot runs on every host (server or gateway): the version of the
/// record [`bound_record`] names, or `None` (the slot's default).
#[must_use]
pub fn desired(records: &[Arc<PluginRecord>], service: &ServiceKey, kind: PluginKind) -> Option<Desired> {
    bound_record(records, service, kind).map(|r| Desired::of(r))
}

/// The record `service`'s `kind` slot should run: the most specific binding (the service,
/// then its namespace, then `*`), the newest load among equals (then the name); a record
/// whose current version is marked bad binds nothing. The one rule every host (server or
/// gateway) applies.
#[must_use]
pub fn bound_record<'a>(
    records: &'a [Arc<PluginRecord>],
    service: &ServiceKey,
    kind: PluginKind,
) -> Option<&'a Arc<PluginRecord>> {
    let kind = kind.to_string();
    records
        .iter()
        .filter(|r| r.kind == kind && r.bad_reason(&r.sha256).is_none())
        .filter_map(|r| r.bound().covers(service).map(|rank| (rank, r.loaded_at_unix_ms, r)))
        .max_by(|a, b| (a.0, a.1, &b.2.name).cmp(&(b.0, b.1, &a.2.name)))
        .map(|(_, _, r)| r)
}
