//! A gateway's configuration file: routes, policies and resilience settings in one JSON
//! document (the example gateway's `--config`).
//!
//! ```json
//! {
//!   "gateway": {"routes": [{"path_prefix": "/api", "service": "shop/web/orders", "hash_header": "x-user"}],
//!               "attempt_timeout": 2000},
//!   "balancer": "peak-ewma", "health": "standard", "scheduler": "adaptive", "window": 1000,
//!   "health_check": {"kind": "http", "path": "/healthz", "interval": 2000, "jitter": 0.1, "timeout": 500},
//!   "breaker": {"failures": 5, "open": 5000, "max_open": 60000, "max_in_flight": 0},
//!   "retry": {"attempts": 3, "budget_ratio": 0.2, "min_per_second": 10, "window": 10000, "backoff": 5, "max_backoff": 200},
//!   "rate_limit": {"per_second": 1000, "burst": 200},
//!   "max_ejected_percent": 50
//! }
//! ```
//!
//! Durations are milliseconds. Every field may be left out (the defaults of [`ServicePolicy`]
//! and [`GatewayConfig`]); an unknown field, an unknown built-in or an impossible value is
//! refused with what is wrong, before anything starts.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sextant_plugin::PluginSpec;
use sextant_plugin::builtins::{BALANCERS, HEALTH_POLICIES, SCHEDULERS};

use crate::proxy::GatewayConfig;
use crate::resilience::{BreakerConfig, RateLimit, RetryConfig, millis};
use crate::{HealthCheck, ServicePolicy};

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid JSON, or not this document (unknown fields named).
    #[error("gateway configuration: {0}")]
    Parse(#[from] serde_json::Error),
    /// A value that cannot work.
    #[error("gateway configuration: {0}")]
    Invalid(String),
}

/// The document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayFile {
    /// Routes, attempt timeout, body limit.
    pub gateway: GatewayConfig,
    /// A built-in balancer for every service.
    pub balancer: String,
    /// A built-in health policy.
    pub health: String,
    /// A built-in scheduler; none keeps the registered weights.
    pub scheduler: Option<String>,
    /// How often statistics are cut and the scheduler runs.
    #[serde(with = "millis")]
    pub window: Duration,
    /// Active health checks; none: passive only.
    pub health_check: Option<HealthCheck>,
    /// Per-endpoint circuit breaker.
    pub breaker: BreakerConfig,
    /// Retries.
    pub retry: RetryConfig,
    /// Per-service rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Cap on the share of endpoints ejected or with an open breaker.
    pub max_ejected_percent: u32,
}

impl Default for GatewayFile {
    fn default() -> Self {
        let defaults = ServicePolicy::default();
        Self {
            gateway: GatewayConfig::default(),
            balancer: sextant_plugin::DEFAULT_BALANCER.into(),
            health: sextant_plugin::DEFAULT_HEALTH.into(),
            scheduler: None,
            window: defaults.window,
            health_check: defaults.health_check,
            breaker: defaults.breaker,
            retry: defaults.retry,
            rate_limit: defaults.rate_limit,
            max_ejected_percent: defaults.max_ejected_percent,
        }
    }
}

fn known(what: &str, name: &str, valid: &[&str]) -> Result<(), ConfigFileError> {
    if valid.contains(&name) {
        Ok(())
    } else {
        Err(ConfigFileError::Invalid(format!("unknown {what} {name:?}; built-ins: {}", valid.join(", "))))
    }
}

impl GatewayFile {
    /// Parses and checks a document.
    ///
    /// # Errors
    /// Bad JSON, unknown fields, unknown built-ins, impossible values.
    pub fn from_json(text: &str) -> Result<Self, ConfigFileError> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        if !value.is_object() {
            return Err(ConfigFileError::Invalid("the document must be a JSON object".into()));
        }
        if let Some(check) = value.get("health_check").and_then(serde_json::Value::as_object) {
            let allowed = ["kind", "path", "interval", "jitter", "timeout"];
            if let Some(field) = check.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(ConfigFileError::Invalid(format!(
                    "health_check: unknown field `{field}`, expected one of {}",
                    allowed.join(", ")
                )));
            }
        }
        let file: Self = serde_json::from_value(value)?;
        file.check()?;
        Ok(file)
    }

    /// Reads, parses and checks `path`.
    ///
    /// # Errors
    /// As [`GatewayFile::from_json`], or the file cannot be read.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigFileError::Read { path: path.display().to_string(), source })?;
        Self::from_json(&text)
    }

    fn check(&self) -> Result<(), ConfigFileError> {
        let invalid = |m: &str| Err(ConfigFileError::Invalid(m.into()));
        known("balancer", &self.balancer, BALANCERS)?;
        known("health policy", &self.health, HEALTH_POLICIES)?;
        if let Some(s) = &self.scheduler {
            known("scheduler", s, SCHEDULERS)?;
        }
        if self.window.is_zero() {
            return invalid("window must be at least 1 ms");
        }
        if self.retry.attempts == 0 {
            return invalid("retry.attempts counts the first attempt: at least 1");
        }
        if !(0.0..=10.0).contains(&self.retry.budget_ratio) {
            return invalid("retry.budget_ratio must be within 0..=10");
        }
        if self.retry.backoff > self.retry.max_backoff {
            return invalid("retry.backoff must not exceed retry.max_backoff");
        }
        if self.breaker.open > self.breaker.max_open {
            return invalid("breaker.open must not exceed breaker.max_open");
        }
        if let Some(r) = &self.rate_limit
            && (r.per_second.is_nan() || r.per_second <= 0.0 || r.burst == 0)
        {
            return invalid("rate_limit needs per_second > 0 and burst >= 1");
        }
        if let Some(h) = &self.health_check
            && (h.interval.is_zero() || h.timeout.is_zero() || !(0.0..=1.0).contains(&h.jitter))
        {
            return invalid("health_check needs interval and timeout of at least 1 ms and jitter within 0..=1");
        }
        if self.max_ejected_percent > 100 {
            return invalid("max_ejected_percent is a percentage: 0..=100");
        }
        if self.gateway.attempt_timeout.is_zero() {
            return invalid("gateway.attempt_timeout must be at least 1 ms");
        }
        Ok(())
    }

    /// The router's defaults this file describes.
    #[must_use]
    pub fn policy(&self) -> ServicePolicy {
        ServicePolicy {
            balancer: PluginSpec::builtin(&self.balancer),
            health: PluginSpec::builtin(&self.health),
            scheduler: self.scheduler.as_deref().map(PluginSpec::builtin),
            window: self.window,
            health_check: self.health_check.clone(),
            breaker: self.breaker,
            retry: self.retry,
            rate_limit: self.rate_limit,
            max_ejected_percent: self.max_ejected_percent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_into_the_router_and_gateway_settings() {
        let doc = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```json"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        let file = GatewayFile::from_json(&doc).unwrap();
        assert_eq!(file.gateway.routes[0].service, "shop/web/orders");
        assert_eq!(file.gateway.routes[0].hash_header.as_deref(), Some("x-user"));
        assert_eq!(file.gateway.attempt_timeout, Duration::from_secs(2));
        let policy = file.policy();
        assert_eq!(policy.scheduler.map(|s| s.name().to_owned()).as_deref(), Some("adaptive"));
        assert_eq!(policy.retry.attempts, 3);
        assert_eq!(policy.rate_limit.map(|r| r.burst), Some(200));
        assert_eq!(policy.health_check.map(|h| h.timeout), Some(Duration::from_millis(500)));
    }

    #[test]
    fn an_empty_document_is_the_defaults() {
        let file = GatewayFile::from_json("{}").unwrap();
        let (ours, defaults) = (file.policy(), ServicePolicy::default());
        assert_eq!(ours.breaker, defaults.breaker);
        assert_eq!(ours.retry, defaults.retry);
        assert_eq!(ours.max_ejected_percent, defaults.max_ejected_percent);
        assert_eq!(ours.balancer.name(), defaults.balancer.name());
        assert_eq!(file.gateway, GatewayConfig::default());
    }

    #[test]
    fn mistakes_are_refused_with_what_is_wrong() {
        let cases = [
            (r#"{"retries": {}}"#, "unknown field `retries`"),
            (r#"{"retry": {"attempt": 2}}"#, "unknown field `attempt`"),
            (r#"{"balancer": "p3c"}"#, "round-robin"),
            (r#"{"scheduler": "fast"}"#, "adaptive"),
            (r#"{"retry": {"attempts": 0}}"#, "at least 1"),
            (r#"{"rate_limit": {"per_second": 0, "burst": 1}}"#, "per_second > 0"),
            (r#"{"max_ejected_percent": 150}"#, "0..=100"),
            (r#"{"gateway": {"attempt_timeout": 0}}"#, "attempt_timeout"),
            (r#"{"breaker": {"open": 9000, "max_open": 10}}"#, "max_open"),
            ("[]", "JSON object"),
            (r#"{"health_check": {"kind": "tcp", "interval": 1000, "timeout": 100, "jiter": 0.1}}"#, "`jiter`"),
            (r#"{"health_check": {"kind": "udp", "interval": 1000, "timeout": 100}}"#, "udp"),
        ];
        for (doc, expected) in cases {
            let err = GatewayFile::from_json(doc).unwrap_err().to_string();
            assert!(err.contains(expected), "{doc}: {err:?} should mention {expected:?}");
        }
    }
}
