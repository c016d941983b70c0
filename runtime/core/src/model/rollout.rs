//! Progressive rollout of a plugin version: the plan (steps and criteria), the rollout's
//! state as the store keeps it beside the plugin record, the window statistics gateways
//! report per version, and the judge that turns those into a decision.
//!
//! All of it is plain data and pure functions (no clock, no IO): the caller passes the time
//! and writes the result back conditionally, so two servers judging the same rollout make
//! one decision per step (the second write loses on the record's revision and re-judges the
//! rollout as the first left it).
//!
//! A plan is written `shadow:2m,1%:2m,10%:5m,50%:5m`: each step a share of requests (`N%`,
//! down to 0.1 %, or `shadow`: called beside the stable version, routing nothing) held for a
//! duration (`30s`, `2m`, `1h`). Criteria ride along as `name=value` items
//! (`max-error-ratio=1.2`); the same text may span lines of a file, with `#` comments.
//!
//! # What decides
//! A fixed threshold with a minimum sample, per gateway and in aggregate (the numbers are
//! [`Criteria`]); no statistical test. On each check, with `n` candidate requests:
//! - **roll back** when the candidate's fallbacks pass `max-fallbacks` (any `n`), or, with
//!   `n ≥ min-requests`, when its error rate passes `max-error-ratio` × the stable's plus
//!   `error-slack`, or its p99 passes `max-p99-ratio` × the stable's plus `p99-slack-ms`,
//!   on any gateway or in aggregate;
//! - **pause** when no criterion failed but a gateway refused the candidate (it could not
//!   run it there), quoting that gateway's reason; or when the step, held three times its
//!   duration (and at least a minute), still has fewer than `min-requests` candidate
//!   requests (insufficient data);
//! - **advance** (or promote, after the last step) when the step's hold time is over, the
//!   aggregate has `n ≥ min-requests`, and no criterion failed;
//! - otherwise **wait**.
//!
//! The slacks are what keeps the judge from false alarms at small counts and sub-millisecond
//! latencies: one error in 500 requests against none on the stable is an error ratio of
//! infinity, but within an `error-slack` of 0.002; a p99 of 0.9 ms against 0.6 ms is 1.5×
//! but within a `p99-slack-ms` of 1. They are not a confidence level: a candidate worse by
//! less than the slack is promoted, and a real but rare regression needs more requests than
//! `min-requests` to show. Checking every gateway as well as the aggregate makes a failure
//! confined to one gateway's traffic visible, at the price of more chances for a noisy one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::PluginVersion;

/// A step still short of `min-requests` after this many times its hold (and at least
/// [`STARVED_AFTER_MIN_MS`]) is paused.
pub const STARVED_AFTER_HOLDS: u64 = 3;
/// The least time a step is given to gather `min-requests` before it is paused: reports may
/// pause for a while (a gateway failing over to another server registers again first).
pub const STARVED_AFTER_MIN_MS: u64 = 60_000;
/// Longest plan text (bytes).
pub const MAX_PLAN_LEN: usize = 4096;
/// Most steps in a plan.
pub const MAX_STEPS: usize = 16;
/// Longest a step may be held.
pub const MAX_HOLD_SECS: u64 = 7 * 24 * 3600;
/// Decisions a rollout keeps, the most recent last.
pub const MAX_DECISIONS: usize = 32;
/// Longest `by` or `reason` of a decision (bytes).
pub const MAX_DECISION_FIELD: usize = 1024;

/// A plan or criterion that is not valid; nothing was changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// The plan's text is longer than [`MAX_PLAN_LEN`].
    #[error("a rollout plan is at most {MAX_PLAN_LEN} bytes, this one is {0}")]
    TooLong(usize),
    /// The plan has no step.
    #[error("a rollout plan needs at least one step (e.g. shadow:2m,10%:5m)")]
    NoSteps,
    /// More steps than [`MAX_STEPS`].
    #[error("a rollout plan has at most {MAX_STEPS} steps, this one has {0}")]
    TooManySteps(usize),
    /// A step that does not read as `shadow:DURATION` or `N%:DURATION`.
    #[error("step {item:?}: {why}")]
    BadStep {
        /// The step as written.
        item: String,
        /// What is wrong with it.
        why: String,
    },
    /// A share above 100 %.
    #[error("step {item:?}: a share is at most 100%")]
    OverHundred {
        /// The step as written.
        item: String,
    },
    /// A share of 0 % (a step that tries nothing).
    #[error("step {item:?}: a share must be above 0% (use shadow to route nothing)")]
    ZeroShare {
        /// The step as written.
        item: String,
    },
    /// A duration of 0 or above [`MAX_HOLD_SECS`].
    #[error("step {item:?}: a step is held for 1s to 7d")]
    BadDuration {
        /// The step as written.
        item: String,
    },
    /// A share not above the one before it, or a shadow step after a share.
    #[error("step {item:?}: shares must increase step by step, shadow steps first")]
    NotIncreasing {
        /// The step as written.
        item: String,
    },
    /// A criterion sextant does not know.
    #[error(
        "unknown criterion {0:?}; known are max-error-ratio, max-p99-ratio, min-requests, max-fallbacks, error-slack, p99-slack-ms"
    )]
    UnknownCriterion(String),
    /// A criterion whose value is out of its range.
    #[error("criterion {name}={value:?}: {why}")]
    BadCriterion {
        /// The criterion.
        name: String,
        /// The value given.
        value: String,
        /// Its range.
        why: &'static str,
    },
}

/// One step of a plan: a share of requests through the candidate (or a shadow step, where it
/// is called beside the stable version and routes nothing), held for a time. Written and
/// stored as `shadow:2m` or `10%:5m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Step {
    /// Thousandths of the requests the candidate routes; 0 in a shadow step.
    pub per_mille: u16,
    /// How long the step is held at least, seconds.
    pub hold_secs: u64,
}

impl Step {
    /// Whether the candidate only shadows the stable version in this step.
    #[must_use]
    pub fn is_shadow(&self) -> bool {
        self.per_mille == 0
    }
}

fn parse_duration(text: &str) -> Option<u64> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(scale)
}

fn show_duration(secs: u64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match secs {
        s if s > 0 && s.is_multiple_of(86_400) => write!(f, "{}d", s / 86_400),
        s if s > 0 && s.is_multiple_of(3600) => write!(f, "{}h", s / 3600),
        s if s > 0 && s.is_multiple_of(60) => write!(f, "{}m", s / 60),
        s => write!(f, "{s}s"),
    }
}

/// `12.5` (percent, at most one decimal) as thousandths; None when it does not read so.
fn parse_per_mille(text: &str) -> Option<u32> {
    let (whole, tenth) = match text.split_once('.') {
        Some((w, t)) if t.len() == 1 => (w, t),
        Some(_) => return None,
        None => (text, "0"),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !tenth.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u32 = whole.parse().ok()?;
    whole.checked_mul(10)?.checked_add(tenth.parse().ok()?)
}

impl FromStr for Step {
    type Err = PlanError;

    fn from_str(item: &str) -> Result<Self, PlanError> {
        let bad = |why: &str| PlanError::BadStep { item: item.to_owned(), why: why.to_owned() };
        let (target, hold) = item.split_once(':').ok_or_else(|| bad("expected SHARE:DURATION, e.g. 10%:5m"))?;
        let hold_secs = parse_duration(hold.trim()).ok_or_else(|| bad("a duration is N followed by s, m, h or d"))?;
        if hold_secs == 0 || hold_secs > MAX_HOLD_SECS {
            return Err(PlanError::BadDuration { item: item.to_owned() });
        }
        let target = target.trim();
        let per_mille = if target == "shadow" {
            0
        } else {
            let number = target.strip_suffix('%').ok_or_else(|| bad("a share is shadow or N% (e.g. 12.5%)"))?;
            let per_mille = parse_per_mille(number).ok_or_else(|| bad("a share is N% with at most one decimal"))?;
            if per_mille > 1000 {
                return Err(PlanError::OverHundred { item: item.to_owned() });
            }
            if per_mille == 0 {
                return Err(PlanError::ZeroShare { item: item.to_owned() });
            }
            u16::try_from(per_mille).map_err(|_| PlanError::OverHundred { item: item.to_owned() })?
        };
        Ok(Self { per_mille, hold_secs })
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_shadow() {
            f.write_str("shadow")?;
        } else if self.per_mille.is_multiple_of(10) {
            write!(f, "{}%", self.per_mille / 10)?;
        } else {
            write!(f, "{}.{}%", self.per_mille / 10, self.per_mille % 10)?;
        }
        f.write_str(":")?;
        show_duration(self.hold_secs, f)
    }
}

impl TryFrom<String> for Step {
    type Error = PlanError;
    fn try_from(s: String) -> Result<Self, PlanError> {
        s.parse()
    }
}

impl From<Step> for String {
    fn from(s: Step) -> Self {
        s.to_string()
    }
}

/// When a candidate is rolled back and when it may advance (see the module's "What
/// decides").
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Criteria {
    /// The candidate's error rate may be at most this many times the stable's (plus
    /// `error_slack`). Default 1.2.
    pub max_error_ratio: f64,
    /// The candidate's p99 may be at most this many times the stable's (plus
    /// `p99_slack_ms`). Default 1.3.
    pub max_p99_ratio: f64,
    /// Candidate requests a window needs (per gateway, and in aggregate) before its ratios
    /// count, and the aggregate before a step advances. Default 500.
    pub min_requests: u64,
    /// Fallbacks (faults answered by the native default) the candidate may have in a
    /// window; one more rolls it back. Default 0.
    pub max_fallbacks: u64,
    /// Absolute error-rate tolerance added to the stable's scaled rate. Default 0.002.
    pub error_slack: f64,
    /// Absolute p99 tolerance added to the stable's scaled p99, milliseconds. Default 1.
    pub p99_slack_ms: f64,
}

impl Default for Criteria {
    fn default() -> Self {
        Self {
            max_error_ratio: 1.2,
            max_p99_ratio: 1.3,
            min_requests: 500,
            max_fallbacks: 0,
            error_slack: 0.002,
            p99_slack_ms: 1.0,
        }
    }
}

impl Criteria {
    /// Sets the criterion `name` (as written in a plan: `max-error-ratio`, …) to `value`.
    ///
    /// # Errors
    /// An unknown criterion, or a value out of its range; nothing changed.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), PlanError> {
        let bad = |why| PlanError::BadCriterion { name: name.to_owned(), value: value.to_owned(), why };
        let ratio = || match value.trim().parse::<f64>() {
            Ok(r) if r.is_finite() && (1.0..=1000.0).contains(&r) => Ok(r),
            _ => Err(bad("a ratio from 1 to 1000")),
        };
        let slack = |max: f64| match value.trim().parse::<f64>() {
            Ok(r) if r.is_finite() && (0.0..=max).contains(&r) => Ok(r),
            _ => Err(bad("a number from 0 up to its limit (error-slack 1, p99-slack-ms 60000)")),
        };
        match name.trim() {
            "max-error-ratio" => self.max_error_ratio = ratio()?,
            "max-p99-ratio" => self.max_p99_ratio = ratio()?,
            "min-requests" => {
                self.min_requests = match value.trim().parse::<u64>() {
                    Ok(n) if (1..=1_000_000_000).contains(&n) => n,
                    _ => return Err(bad("a count from 1 to 1000000000")),
                };
            }
            "max-fallbacks" => {
                self.max_fallbacks = value.trim().parse().map_err(|_| bad("a count from 0"))?;
            }
            "error-slack" => self.error_slack = slack(1.0)?,
            "p99-slack-ms" => self.p99_slack_ms = slack(60_000.0)?,
            other => return Err(PlanError::UnknownCriterion(other.to_owned())),
        }
        Ok(())
    }
}

/// A rollout plan: its steps, in order, and its criteria.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The steps; after the last one the candidate becomes the version of the record.
    pub steps: Vec<Step>,
    /// When it is rolled back, and when a step may advance.
    #[serde(default)]
    pub criteria: Criteria,
}

impl Plan {
    /// Checks the steps: at least one, at most [`MAX_STEPS`], shadow steps first, shares
    /// increasing, each held 1 s to 7 d.
    ///
    /// # Errors
    /// The first rule a step breaks.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.steps.is_empty() {
            return Err(PlanError::NoSteps);
        }
        if self.steps.len() > MAX_STEPS {
            return Err(PlanError::TooManySteps(self.steps.len()));
        }
        let mut last: Option<Step> = None;
        for step in &self.steps {
            if step.hold_secs == 0 || step.hold_secs > MAX_HOLD_SECS {
                return Err(PlanError::BadDuration { item: step.to_string() });
            }
            if step.per_mille > 1000 {
                return Err(PlanError::OverHundred { item: step.to_string() });
            }
            if let Some(l) = last
                && !(l.is_shadow() && step.is_shadow() || step.per_mille > l.per_mille)
            {
                return Err(PlanError::NotIncreasing { item: step.to_string() });
            }
            last = Some(*step);
        }
        Ok(())
    }
}

impl FromStr for Plan {
    type Err = PlanError;

    /// Reads `shadow:2m,1%:2m,10%:5m max-error-ratio=1.5`: items separated by commas,
    /// blanks or lines, `#` to the end of a line a comment; an item with `=` is a criterion,
    /// any other a step.
    fn from_str(text: &str) -> Result<Self, PlanError> {
        if text.len() > MAX_PLAN_LEN {
            return Err(PlanError::TooLong(text.len()));
        }
        let mut plan = Self { steps: Vec::new(), criteria: Criteria::default() };
        let items = text
            .lines()
            .map(|l| l.split_once('#').map_or(l, |(before, _)| before))
            .flat_map(|l| l.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|i| !i.is_empty());
        for item in items {
            match item.split_once('=') {
                Some((name, value)) => plan.criteria.set(name, value)?,
                None => {
                    if plan.steps.len() == MAX_STEPS {
                        return Err(PlanError::TooManySteps(MAX_STEPS + 1));
                    }
                    plan.steps.push(item.parse()?);
                }
            }
        }
        plan.validate()?;
        Ok(plan)
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

/// Latency bucket bounds: bucket 0 holds up to 100 µs, bucket `i` up to 100 µs × 2^(i/4)
/// (a quarter octave, about ±9 %), the last everything above ~100 s.
pub const LATENCY_BUCKETS: usize = 81;

/// A mergeable latency histogram with the bounds of [`LATENCY_BUCKETS`]: what a gateway
/// reports per version, added up across gateways for the aggregate. Stored as the counts,
/// trailing empty buckets left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Latencies(Vec<u64>);

fn bucket_upper_us(i: usize) -> f64 {
    100.0 * 2f64.powf(i as f64 / 4.0)
}

impl Latencies {
    /// Counts one request that took `micros`.
    pub fn record_us(&mut self, micros: u64) {
        let i = if micros <= 100 {
            0
        } else {
            // 4 × log2(µs / 100), rounded up: the first bucket whose bound holds it.
            let b = (4.0 * (micros as f64 / 100.0).log2()).ceil();
            if b >= (LATENCY_BUCKETS - 1) as f64 { LATENCY_BUCKETS - 1 } else { b as usize }
        };
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        self.0[i] += 1;
    }

    /// Adds another histogram's counts.
    pub fn add(&mut self, other: &Self) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a = a.saturating_add(*b);
        }
    }

    /// Requests counted.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.0.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// The `q` quantile in milliseconds, interpolated linearly inside its bucket; None when
    /// empty.
    #[must_use]
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut below = 0u64;
        for (i, &n) in self.0.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (below + n) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { bucket_upper_us(i - 1) };
                let within = (rank - below as f64) / n as f64;
                return Some((lower + (bucket_upper_us(i) - lower) * within) / 1000.0);
            }
            below += n;
        }
        Some(bucket_upper_us(self.0.len().saturating_sub(1)) / 1000.0)
    }

    /// Whether the histogram is well formed: at most [`LATENCY_BUCKETS`] buckets.
    #[must_use]
    pub fn is_valid(&self) -> bool {
        self.0.len() <= LATENCY_BUCKETS
    }
}

/// One version's outcomes on one gateway over a report window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionWindow {
    /// Requests it routed (in a shadow step: calls made beside the stable version).
    pub requests: u64,
    /// Answers with a 5xx status.
    #[serde(default)]
    pub status_5xx: u64,
    /// Answers with a 4xx status (not counted as errors: the client's fault).
    #[serde(default)]
    pub status_4xx: u64,
    /// Requests that got no answer (connect, reset, timeout).
    #[serde(default)]
    pub transport_failures: u64,
    /// Retries the gateway made.
    #[serde(default)]
    pub retries: u64,
    /// Picks the native default answered because the plugin faulted.
    #[serde(default)]
    pub fallbacks: u64,
    /// Time to the answer's head.
    #[serde(default)]
    pub latency: Latencies,
}

impl VersionWindow {
    /// Errors: 5xx answers and transport failures.
    #[must_use]
    pub fn errors(&self) -> u64 {
        self.status_5xx.saturating_add(self.transport_failures)
    }

    /// Errors per request (0 with no request).
    #[must_use]
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors() as f64 / self.requests as f64 }
    }

    /// Adds another window's counts.
    pub fn add(&mut self, o: &Self) {
        self.requests = self.requests.saturating_add(o.requests);
        self.status_5xx = self.status_5xx.saturating_add(o.status_5xx);
        self.status_4xx = self.status_4xx.saturating_add(o.status_4xx);
        self.transport_failures = self.transport_failures.saturating_add(o.transport_failures);
        self.retries = self.retries.saturating_add(o.retries);
        self.fallbacks = self.fallbacks.saturating_add(o.fallbacks);
        self.latency.add(&o.latency);
    }

    /// The window's figures, as evidence.
    #[must_use]
    pub fn figures(&self) -> Figures {
        Figures {
            requests: self.requests,
            errors: self.errors(),
            error_rate: self.error_rate(),
            p99_ms: self.latency.quantile_ms(0.99),
            fallbacks: self.fallbacks,
        }
    }
}

/// What one gateway saw of a rollout's two versions since the step began.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayReport {
    /// Who reports (its registration, `NS/GROUP/NAME/ID`).
    pub host: String,
    /// The stable version's outcomes.
    pub stable: VersionWindow,
    /// The candidate's.
    pub candidate: VersionWindow,
    /// Why the gateway does not run the candidate, when it refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Why the gateway dropped the candidate while it ran (too many faults within its
    /// window): a failed criterion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faulted: Option<String>,
}

/// What a gateway publishes about a rollout it takes part in (in its registration's
/// metadata, keyed `sextant.rollout.PLUGIN`, as JSON): which candidate and step the windows
/// are about, the windows since the step began on this gateway (added up over the services
/// the record binds here), or why it refused the candidate. Servers judge the reports whose
/// candidate and step are the rollout's current ones and ignore the others.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutReport {
    /// The candidate's sha256.
    pub candidate: String,
    /// The step the windows are about.
    pub step: usize,
    /// When the gateway began counting them, milliseconds since the Unix epoch.
    pub since_unix_ms: u64,
    /// The stable version's outcomes.
    #[serde(default)]
    pub stable: VersionWindow,
    /// The candidate's outcomes (in a shadow step: its shadow picks and fallbacks).
    #[serde(default, rename = "trial")]
    pub candidate_window: VersionWindow,
    /// Why the gateway does not run the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Why the gateway dropped the candidate while it ran (too many faults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faulted: Option<String>,
    /// In a shadow step: of the candidate's shadow picks (`trial.requests`), how many chose
    /// the endpoint the stable version chose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreed: Option<u64>,
}

impl RolloutReport {
    /// Whether the report is about `rollout`'s current candidate and step, and well formed.
    #[must_use]
    pub fn is_about(&self, rollout: &Rollout) -> bool {
        self.candidate == rollout.candidate.sha256
            && self.step == rollout.step
            && self.stable.latency.is_valid()
            && self.candidate_window.latency.is_valid()
    }

    /// As the judge takes it, from `host`.
    #[must_use]
    pub fn for_judge(self, host: String) -> GatewayReport {
        GatewayReport {
            host,
            stable: self.stable,
            candidate: self.candidate_window,
            refused: self.refused,
            faulted: self.faulted,
        }
    }
}

/// A version's figures in a decision's evidence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Requests.
    pub requests: u64,
    /// 5xx answers and transport failures.
    pub errors: u64,
    /// Errors per request.
    pub error_rate: f64,
    /// p99 latency, ms (none without a request).
    pub p99_ms: Option<f64>,
    /// Fallbacks.
    pub fallbacks: u64,
}

impl fmt::Display for Figures {
    /// `1200 req, 3 errors (0.0025), p99 12.4 ms, 0 fallbacks`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} req, {} errors ({:.4}), p99 ", self.requests, self.errors, self.error_rate)?;
        match self.p99_ms {
            Some(p99) => write!(f, "{p99:.1} ms")?,
            None => f.write_str("-")?,
        }
        write!(f, ", {} fallbacks", self.fallbacks)
    }
}

/// What a decision was made on: the aggregate over the reporting gateways, and what failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Gateways whose reports counted.
    pub gateways: usize,
    /// The stable version, all gateways.
    pub stable: Figures,
    /// The candidate, all gateways.
    pub candidate: Figures,
    /// The criteria that failed, where (`HOST: p99 104.2 ms > 1.3 × 0.9 ms + 1 ms`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

impl fmt::Display for Evidence {
    /// `3 gateways: candidate …; stable …`, then `; failed: …` when something failed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} gateways: candidate {}; stable {}", self.gateways, self.candidate, self.stable)?;
        if !self.failed.is_empty() {
            write!(f, "; failed: {}", self.failed.join("; "))?;
        }
        Ok(())
    }
}

/// The judge's answer for a running step.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Keep the step: its time is not over, or data is short.
    Wait(String),
    /// Go to the next step (or promote, after the last).
    Advance(Evidence),
    /// Roll back to the stable version everywhere.
    RollBack(Evidence),
    /// Stop where it is until an operator resumes or aborts: a gateway refused the candidate.
    Pause(String),
}

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// In a shadow step.
    Shadow,
    /// In a canary step.
    Canary,
    /// Held at its step by an operator or by a gateway's refusal.
    Paused,
    /// Done: the candidate is the record's version.
    Promoted,
    /// Done: the candidate failed a criterion; the stable serves.
    RolledBack,
    /// Done: an operator stopped it; the stable serves.
    Aborted,
}

impl RolloutState {
    /// Every state.
    pub const ALL: [Self; 6] =
        [Self::Shadow, Self::Canary, Self::Paused, Self::Promoted, Self::RolledBack, Self::Aborted];

    /// Whether the rollout still runs (or is paused): not promoted, rolled back or aborted.
    #[must_use]
    pub fn is_live(self) -> bool {
        matches!(self, Self::Shadow | Self::Canary | Self::Paused)
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Shadow => "shadow",
            Self::Canary => "canary",
            Self::Paused => "paused",
            Self::Promoted => "promoted",
            Self::RolledBack => "rolled-back",
            Self::Aborted => "aborted",
        })
    }
}

/// One transition of a rollout, with who made it and on what evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// When, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The step it was made in (index into the plan).
    pub step: usize,
    /// The state it led to.
    pub state: RolloutState,
    /// Who decided: `judge@SERVER` or `operator@WHO`.
    pub by: String,
    /// Why, in words.
    pub reason: String,
    /// The figures it was made on, when the judge made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

/// A transition a rollout in its state cannot make.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    /// The rollout is over.
    #[error("the rollout is {0}; nothing to change")]
    Finished(RolloutState),
    /// Pause of a paused rollout.
    #[error("the rollout is already paused")]
    AlreadyPaused,
    /// Resume of a rollout that is not paused.
    #[error("the rollout is not paused (it is {0})")]
    NotPaused(RolloutState),
}

/// A rollout of a plugin record's candidate version, kept in the record beside its stable
/// (current) version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The version being rolled out.
    pub candidate: PluginVersion,
    /// The plan.
    pub plan: Plan,
    /// The current step (index into the plan's steps).
    pub step: usize,
    /// When the current step began (or, while paused, the time it had run is kept by
    /// moving this forward on resume), milliseconds since the Unix epoch.
    pub step_since_unix_ms: u64,
    /// Where it is.
    pub state: RolloutState,
    /// Its decisions, the most recent last, at most [`MAX_DECISIONS`].
    #[serde(default)]
    pub log: Vec<Decision>,
    /// While paused: when it was paused (so resuming does not count the pause as step time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at_unix_ms: Option<u64>,
}

fn state_of(step: Step) -> RolloutState {
    if step.is_shadow() { RolloutState::Shadow } else { RolloutState::Canary }
}

impl Rollout {
    /// A rollout of `candidate` starting at the plan's first step at `now`.
    ///
    /// # Errors
    /// An invalid plan.
    pub fn start(candidate: PluginVersion, plan: Plan, now: u64, by: &str) -> Result<Self, PlanError> {
        plan.validate()?;
        let state = state_of(plan.steps[0]);
        let mut r =
            Self { candidate, plan, step: 0, step_since_unix_ms: now, state, log: Vec::new(), paused_at_unix_ms: None };
        r.note(now, by, &format!("started: {}", r.plan), None);
        Ok(r)
    }

    /// The current step.
    #[must_use]
    pub fn current_step(&self) -> Step {
        self.plan.steps[self.step.min(self.plan.steps.len() - 1)]
    }

    /// Thousandths of the requests the candidate routes now (0 in a shadow step, when
    /// finished; a paused rollout keeps its step's share).
    #[must_use]
    pub fn per_mille(&self) -> u16 {
        if self.state.is_live() { self.current_step().per_mille } else { 0 }
    }

    /// Whether the candidate shadows the stable version now.
    #[must_use]
    pub fn shadowing(&self) -> bool {
        self.state.is_live() && self.current_step().is_shadow()
    }

    fn note(&mut self, now: u64, by: &str, reason: &str, evidence: Option<Evidence>) {
        if self.log.len() == MAX_DECISIONS {
            self.log.remove(0);
        }
        let clip = |s: &str| {
            let mut end = s.len().min(MAX_DECISION_FIELD);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        };
        self.log.push(Decision {
            at_unix_ms: now,
            step: self.step,
            state: self.state,
            by: clip(by),
            reason: clip(reason),
            evidence,
        });
    }

    fn live(&self) -> Result<(), RolloutError> {
        if self.state.is_live() { Ok(()) } else { Err(RolloutError::Finished(self.state)) }
    }

    /// Goes to the next step, or promotes after the last one (then the caller makes the
    /// candidate the record's version).
    ///
    /// # Errors
    /// The rollout is over.
    pub fn advance(
        &mut self,
        now: u64,
        by: &str,
        reason: &str,
        evidence: Option<Evidence>,
    ) -> Result<(), RolloutError> {
        self.live()?;
        if self.step + 1 >= self.plan.steps.len() {
            self.state = RolloutState::Promoted;
        } else {
            self.step += 1;
            self.state = state_of(self.current_step());
        }
        self.step_since_unix_ms = now;
        self.paused_at_unix_ms = None;
        self.note(now, by, reason, evidence);
        Ok(())
    }

    /// Ends it with the stable version serving everywhere: `evidence` failed a criterion.
    ///
    /// # Errors
    /// The rollout is over.
    pub fn roll_back(&mut self, now: u64, by: &str, evidence: Evidence) -> Result<(), RolloutError> {
        let reason = format!("rolled back: {}", evidence.failed.join("; "));
        self.end(RolloutState::RolledBack, now, by, &reason, Some(evidence))
    }

    /// Ends it with the stable version serving everywhere, on an operator's word.
    ///
    /// # Errors
    /// The rollout is over.
    pub fn abort(&mut self, now: u64, by: &str, reason: &str) -> Result<(), RolloutError> {
        self.end(RolloutState::Aborted, now, by, reason, None)
    }

    fn end(
        &mut self,
        state: RolloutState,
        now: u64,
        by: &str,
        reason: &str,
        evidence: Option<Evidence>,
    ) -> Result<(), RolloutError> {
        self.live()?;
        self.state = state;
        self.paused_at_unix_ms = None;
        self.note(now, by, reason, evidence);
        Ok(())
    }

    /// Holds the rollout at its step (its share stays); the judge decides nothing until it
    /// is resumed.
    ///
    /// # Errors
    /// Already paused, or over.
    pub fn pause(&mut self, now: u64, by: &str, reason: &str) -> Result<(), RolloutError> {
        self.live()?;
        if self.state == RolloutState::Paused {
            return Err(RolloutError::AlreadyPaused);
        }
        self.state = RolloutState::Paused;
        self.paused_at_unix_ms = Some(now);
        self.note(now, by, reason, None);
        Ok(())
    }

    /// Resumes a paused rollout where it was (the pause does not count as step time; a step
    /// held past its duration resumes with exactly its duration held, so data short for three
    /// holds gets two more).
    ///
    /// # Errors
    /// Not paused.
    pub fn resume(&mut self, now: u64, by: &str) -> Result<(), RolloutError> {
        if self.state != RolloutState::Paused {
            return Err(RolloutError::NotPaused(self.state));
        }
        let paused_for = now.saturating_sub(self.paused_at_unix_ms.take().unwrap_or(now));
        self.step_since_unix_ms = self.step_since_unix_ms.saturating_add(paused_for).min(now);
        // Held past its duration already (a pause for insufficient data comes after three):
        // the hold counts as done, and the data gets a fresh chance.
        let hold_ms = self.current_step().hold_secs.saturating_mul(1000);
        if now.saturating_sub(self.step_since_unix_ms) > hold_ms {
            self.step_since_unix_ms = now.saturating_sub(hold_ms);
        }
        self.state = state_of(self.current_step());
        self.note(now, by, "resumed", None);
        Ok(())
    }

    /// Judges the current step on the gateways' reports at `now` (see the module's "What
    /// decides"). A paused or finished rollout waits.
    #[must_use]
    pub fn judge(&self, reports: &[GatewayReport], now: u64) -> Verdict {
        if !matches!(self.state, RolloutState::Shadow | RolloutState::Canary) {
            return Verdict::Wait(format!("the rollout is {}", self.state));
        }
        let c = &self.plan.criteria;
        let shadow = self.current_step().is_shadow();
        let (mut stable, mut candidate) = (VersionWindow::default(), VersionWindow::default());
        let mut failed = Vec::new();
        for r in reports {
            stable.add(&r.stable);
            candidate.add(&r.candidate);
            if let Some(why) = &r.faulted {
                failed.push(format!("{}: the candidate was dropped after faults: {why}", r.host));
            }
            failed.extend(check(c, &r.stable, &r.candidate, shadow).into_iter().map(|f| format!("{}: {f}", r.host)));
        }
        failed.extend(check(c, &stable, &candidate, shadow).into_iter().map(|f| format!("all gateways: {f}")));
        let evidence =
            Evidence { gateways: reports.len(), stable: stable.figures(), candidate: candidate.figures(), failed };
        // A failed criterion rolls back even when another gateway refused the candidate: its
        // traffic is what a refusal would only pause.
        if !evidence.failed.is_empty() {
            return Verdict::RollBack(evidence);
        }
        if let Some(r) = reports.iter().find(|r| r.refused.is_some()) {
            return Verdict::Pause(format!("{} refused the candidate: {}", r.host, r.refused.as_deref().unwrap_or("")));
        }
        let held_ms = now.saturating_sub(self.step_since_unix_ms);
        let hold_ms = self.current_step().hold_secs.saturating_mul(1000);
        if held_ms < hold_ms {
            return Verdict::Wait(format!("step held {}s of {}s", held_ms / 1000, hold_ms / 1000));
        }
        if candidate.requests < c.min_requests {
            let short = format!("{} candidate requests of the {} the step needs", candidate.requests, c.min_requests);
            // Still short after three times the step's hold: say so, and stop until an
            // operator resumes (more traffic, a bigger share) or aborts.
            if held_ms >= hold_ms.saturating_mul(STARVED_AFTER_HOLDS).max(STARVED_AFTER_MIN_MS) {
                return Verdict::Pause(format!(
                    "insufficient data: {short} after {}s ({STARVED_AFTER_HOLDS}× the step's hold, at least {}s)",
                    held_ms / 1000,
                    STARVED_AFTER_MIN_MS / 1000
                ));
            }
            return Verdict::Wait(short);
        }
        Verdict::Advance(evidence)
    }
}

/// The criteria `candidate` fails against `stable` in one window, in words. A shadow step
/// is judged on fallbacks alone (the candidate's picks route nothing, so it has no outcomes).
fn check(c: &Criteria, stable: &VersionWindow, candidate: &VersionWindow, shadow: bool) -> Vec<String> {
    let mut failed = Vec::new();
    if candidate.fallbacks > c.max_fallbacks {
        failed.push(format!("{} fallbacks > {}", candidate.fallbacks, c.max_fallbacks));
    }
    if shadow || candidate.requests < c.min_requests {
        return failed;
    }
    let (ce, se) = (candidate.error_rate(), stable.error_rate());
    if ce > c.max_error_ratio * se + c.error_slack {
        failed.push(format!("error rate {:.4} > {} × {:.4} + {}", ce, c.max_error_ratio, se, c.error_slack));
    }
    if let (Some(cp), Some(sp)) = (candidate.latency.quantile_ms(0.99), stable.latency.quantile_ms(0.99))
        && cp > c.max_p99_ratio * sp + c.p99_slack_ms
    {
        failed.push(format!("p99 {cp:.2} ms > {} × {sp:.2} ms + {} ms", c.max_p99_ratio, c.p99_slack_ms));
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version() -> PluginVersion {
        PluginVersion { sha256: "a".repeat(64), size: 10, config: String::new(), loaded_at_unix_ms: 0 }
    }

    #[test]
    fn plans_read_and_print_back() {
        let plan: Plan = "shadow:2m,1%:2m,10%:5m,50%:5m".parse().unwrap();
        assert_eq!(plan.steps.len(), 4);
        assert!(plan.steps[0].is_shadow());
        assert_eq!(plan.steps[1], Step { per_mille: 10, hold_secs: 120 });
        assert_eq!(plan.to_string(), "shadow:2m,1%:2m,10%:5m,50%:5m");
        assert_eq!(plan.criteria, Criteria::default());

        let file = "# canary for the new hash\nshadow:90s\n0.5%:1h, 100%:1d\nmax-error-ratio=1.5 min-requests=50\n";
        let plan: Plan = file.parse().unwrap();
        assert_eq!(plan.to_string(), "shadow:90s,0.5%:1h,100%:1d");
        assert!((plan.criteria.max_error_ratio - 1.5).abs() < f64::EPSILON);
        assert_eq!(plan.criteria.min_requests, 50);

        let json = serde_json::to_string(&plan).unwrap();
        assert!(json.contains(r#""steps":["shadow:90s","0.5%:1h","100%:1d"]"#), "{json}");
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan);
        assert!(serde_json::from_str::<Plan>(r#"{"steps":["150%:1m"]}"#).is_err());
    }

    #[test]
    fn malformed_plans_are_refused_with_the_rule_they_break() {
        let err = |s: &str| s.parse::<Plan>().unwrap_err();
        assert_eq!(err(""), PlanError::NoSteps);
        assert_eq!(err("  # nothing\n"), PlanError::NoSteps);
        assert_eq!(err("max-fallbacks=2"), PlanError::NoSteps);
        assert!(matches!(err("10%:5m,5%:5m"), PlanError::NotIncreasing { .. }));
        assert!(matches!(err("10%:5m,10%:5m"), PlanError::NotIncreasing { .. }));
        assert!(matches!(err("10%:5m,shadow:5m"), PlanError::NotIncreasing { .. }));
        assert!(matches!(err("101%:1m"), PlanError::OverHundred { .. }));
        assert!(matches!(err("0%:1m"), PlanError::ZeroShare { .. }));
        assert!(matches!(err("10%:0s"), PlanError::BadDuration { .. }));
        assert!(matches!(err("10%:8d"), PlanError::BadDuration { .. }));
        assert!(matches!(err("10%"), PlanError::BadStep { .. }));
        assert!(matches!(err("10:1m"), PlanError::BadStep { .. }));
        assert!(matches!(err("10%:1w"), PlanError::BadStep { .. }));
        assert!(matches!(err("1.25%:1m"), PlanError::BadStep { .. }));
        assert!(matches!(err("-1%:1m"), PlanError::BadStep { .. }));
        assert!(matches!(err("10%:5m max-latency=3"), PlanError::UnknownCriterion(n) if n == "max-latency"));
        assert!(matches!(err("10%:5m max-p99-ratio=0.5"), PlanError::BadCriterion { .. }));
        assert!(matches!(err("10%:5m max-p99-ratio=NaN"), PlanError::BadCriterion { .. }));
        assert!(matches!(err("10%:5m min-requests=0"), PlanError::BadCriterion { .. }));
        let many = (1..=17).map(|i| format!("{i}%:1m")).collect::<Vec<_>>().join(",");
        assert!(matches!(err(&many), PlanError::TooManySteps(_)));
    }

    fn window(requests: u64, errors: u64, latency_us: u64) -> VersionWindow {
        let mut w = VersionWindow { requests, status_5xx: errors, ..VersionWindow::default() };
        for _ in 0..requests {
            w.latency.record_us(latency_us);
        }
        w
    }

    fn report(host: &str, stable: VersionWindow, candidate: VersionWindow) -> GatewayReport {
        GatewayReport { host: host.into(), stable, candidate, refused: None, faulted: None }
    }

    fn canary() -> Rollout {
        Rollout::start(version(), "1%:1m,50%:1m".parse().unwrap(), 1_000, "operator@test").unwrap()
    }

    #[test]
    fn latency_quantiles_are_within_a_bucket_and_merge() {
        let mut h = Latencies::default();
        for us in 1..=1000u64 {
            h.record_us(us * 100);
        }
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((p99 - 99.0).abs() / 99.0 < 0.1, "p99 {p99} ms of 0.1..100 ms uniform");
        let p50 = h.quantile_ms(0.5).unwrap();
        assert!((p50 - 50.0).abs() / 50.0 < 0.1, "p50 {p50}");
        let mut slow = Latencies::default();
        slow.record_us(u64::MAX);
        assert!(slow.is_valid());
        h.add(&slow);
        assert_eq!(h.count(), 1001);
        assert!(Latencies::default().quantile_ms(0.99).is_none());
    }

    #[test]
    fn a_candidate_slower_on_one_gateway_is_rolled_back_even_within_its_step() {
        let r = canary();
        let good = report("gw-a", window(50_000, 0, 800), window(600, 0, 800));
        let slow = report("gw-b", window(50_000, 0, 800), window(600, 0, 100_000));
        let Verdict::RollBack(e) = r.judge(&[good.clone(), slow], 2_000) else { panic!("expected a rollback") };
        assert_eq!(e.gateways, 2);
        assert!(e.failed.iter().any(|f| f.starts_with("gw-b: p99")), "{:?}", e.failed);
        assert!(e.candidate.p99_ms.unwrap() > 90.0);
        // The same figures on the good gateway alone, over the step's time: advance.
        let Verdict::Advance(e) = r.judge(&[good], 61_000 + 1_000) else { panic!("expected an advance") };
        assert!(e.failed.is_empty());
    }

    #[test]
    fn small_samples_and_small_differences_do_not_roll_back() {
        let r = canary();
        // 1 error in 500 against none: within the error slack.
        let v = r.judge(&[report("gw", window(50_000, 0, 600), window(500, 1, 900))], 62_000);
        assert!(matches!(v, Verdict::Advance(_)), "{v:?}");
        // A bad p99 on too few requests: wait for data, do not judge it; still short after
        // three times the step's hold (1 min): pause, saying why.
        let few = report("gw", window(50_000, 0, 600), window(100, 50, 200_000));
        let v = r.judge(std::slice::from_ref(&few), 62_000);
        assert!(matches!(v, Verdict::Wait(ref w) if w.contains("100 candidate requests")), "{v:?}");
        let v = r.judge(std::slice::from_ref(&few), 1_000 + 180_000);
        assert!(matches!(v, Verdict::Pause(ref w) if w.starts_with("insufficient data: 100 candidate")), "{v:?}");
        let mut paused = r.clone();
        paused.pause(181_000, "judge@s1", "insufficient data").unwrap();
        paused.resume(200_000, "operator@a").unwrap();
        assert_eq!(paused.step_since_unix_ms, 140_000, "resumed with the hold done");
        assert!(matches!(paused.judge(std::slice::from_ref(&few), 200_000), Verdict::Wait(_)), "a fresh chance");
        // A short step is given a minute before it is called starved (reports may pause).
        let short = Rollout::start(version(), "10%:3s".parse().unwrap(), 0, "operator@a").unwrap();
        assert!(matches!(short.judge(std::slice::from_ref(&few), 9_000), Verdict::Wait(_)));
        assert!(matches!(short.judge(&[few], 60_000), Verdict::Pause(_)));
        // Errors well above the stable's on enough requests: roll back.
        let v = r.judge(&[report("gw", window(50_000, 50, 600), window(1_000, 30, 600))], 2_000);
        let Verdict::RollBack(e) = v else { panic!("{v:?}") };
        assert!(e.failed.iter().any(|f| f.contains("error rate")), "{:?}", e.failed);
    }

    #[test]
    fn fallbacks_roll_back_at_once_and_a_refusal_pauses() {
        let r = canary();
        let mut faulty = window(10, 0, 600);
        faulty.fallbacks = 1;
        assert!(matches!(r.judge(&[report("gw", window(1_000, 0, 600), faulty)], 1_500), Verdict::RollBack(_)));
        let mut dropped = report("gw-d", window(1_000, 0, 600), VersionWindow::default());
        dropped.faulted = Some("6 faults within 10s".into());
        let Verdict::RollBack(e) = r.judge(&[dropped], 1_500) else { panic!("a dropped candidate rolls back") };
        assert!(e.failed[0].contains("gw-d") && e.failed[0].contains("6 faults"), "{:?}", e.failed);
        let mut refusing = report("gw-c", VersionWindow::default(), VersionWindow::default());
        refusing.refused = Some("self-test: pick 9 out of range".into());
        let v = r.judge(&[refusing.clone()], 1_500);
        assert!(matches!(v, Verdict::Pause(ref w) if w.contains("gw-c") && w.contains("out of range")), "{v:?}");
        // A failure elsewhere rolls back rather than pausing.
        let mut slow = report("gw-e", window(1_000, 0, 600), window(600, 0, 100_000));
        slow.refused = None;
        assert!(matches!(r.judge(&[refusing, slow], 1_500), Verdict::RollBack(_)));
    }

    #[test]
    fn transitions_follow_the_plan_and_are_logged() {
        let mut r = Rollout::start(version(), "shadow:1m,10%:1m".parse().unwrap(), 0, "operator@a").unwrap();
        assert_eq!((r.state, r.per_mille(), r.shadowing()), (RolloutState::Shadow, 0, true));
        // A shadow step's slow answers do not count (nothing routed); its time does.
        let shadow = report("gw", window(1_000, 0, 600), window(1_000, 0, 90_000));
        assert!(matches!(r.judge(&[shadow], 60_000), Verdict::Advance(_)));
        r.advance(60_000, "judge@s1", "step passed", None).unwrap();
        assert_eq!((r.state, r.per_mille()), (RolloutState::Canary, 100));
        r.pause(70_000, "operator@a", "looking").unwrap();
        assert_eq!(r.pause(71_000, "operator@a", "again"), Err(RolloutError::AlreadyPaused));
        assert_eq!(r.per_mille(), 100, "a paused rollout keeps its share");
        assert!(matches!(r.judge(&[], 500_000), Verdict::Wait(_)));
        r.resume(100_000, "operator@a").unwrap();
        assert_eq!(r.step_since_unix_ms, 90_000, "the 30 s paused do not count");
        assert_eq!(r.resume(100_000, "operator@a"), Err(RolloutError::NotPaused(RolloutState::Canary)));
        r.advance(150_000, "judge@s1", "step passed", None).unwrap();
        assert_eq!((r.state, r.per_mille()), (RolloutState::Promoted, 0));
        assert_eq!(r.advance(150_001, "judge@s2", "again", None), Err(RolloutError::Finished(RolloutState::Promoted)));
        assert_eq!(
            r.log.iter().map(|d| d.state.to_string()).collect::<Vec<_>>(),
            ["shadow", "canary", "paused", "canary", "promoted"]
        );
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Rollout>(&json).unwrap(), r);
        assert!(json.contains(r#""state":"promoted""#), "{json}");
    }

    #[test]
    fn the_log_is_bounded() {
        let mut r = canary();
        for i in 0..100 {
            r.pause(i * 2, "op", &"x".repeat(5_000)).unwrap();
            r.resume(i * 2 + 1, "op").unwrap();
        }
        r.abort(1_000, "op", "stop").unwrap();
        assert_eq!(r.log.len(), MAX_DECISIONS);
        assert!(r.log.iter().all(|d| d.reason.len() <= MAX_DECISION_FIELD));
        assert_eq!(r.log.last().unwrap().state, RolloutState::Aborted);
        assert_eq!(r.per_mille(), 0);
    }
}
