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
//! Every field, its default and an example per feature: `docs/gateway.md` (its examples and
//! its table of defaults are checked by this module's tests).
//!
//! Beside `gateway`, the fields are [`ServicePolicy`]'s, defined once there. Durations are
//! milliseconds. Every field may be left out (the defaults of [`ServicePolicy`] and
//! [`GatewayConfig`]); an unknown field, an unknown built-in or an impossible value is
//! refused with what is wrong, before anything starts.

use std::path::Path;

use crate::ServicePolicy;
use crate::proxy::GatewayConfig;

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

/// The document: the `gateway` part ([`GatewayConfig`]) and, beside it, the policy every
/// service gets ([`ServicePolicy`], its fields at the top level: the one definition of each
/// field and its default).
#[derive(Debug, Clone, Default)]
pub struct GatewayFile {
    /// Routes, attempt timeout, body limit.
    pub gateway: GatewayConfig,
    /// The router's defaults: balancer, health policy, scheduler, checks, resilience.
    pub policy: ServicePolicy,
}

impl GatewayFile {
    /// Parses and checks a document.
    ///
    /// # Errors
    /// Bad JSON, unknown fields, unknown built-ins, impossible values.
    pub fn from_json(text: &str) -> Result<Self, ConfigFileError> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        let serde_json::Value::Object(mut fields) = value else {
            return Err(ConfigFileError::Invalid("the document must be a JSON object".into()));
        };
        if let Some(check) = fields.get("health_check").and_then(serde_json::Value::as_object) {
            let allowed = ["kind", "path", "interval", "jitter", "timeout"];
            if let Some(field) = check.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(ConfigFileError::Invalid(format!(
                    "health_check: unknown field `{field}`, expected one of {}",
                    allowed.join(", ")
                )));
            }
        }
        // serde cannot refuse unknown fields next to a flattened struct: the `gateway` part
        // is taken out, and the rest is the policy (which refuses what it does not know).
        let gateway = match fields.remove("gateway") {
            Some(gateway) => serde_json::from_value(gateway)?,
            None => GatewayConfig::default(),
        };
        let policy = serde_json::from_value(serde_json::Value::Object(fields))?;
        let file = Self { gateway, policy };
        file.check()?;
        Ok(file)
    }

    /// The document as JSON: `from_json` of it is this file again.
    #[must_use]
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::to_value(&self.policy).unwrap_or_default();
        if let serde_json::Value::Object(fields) = &mut doc {
            fields.insert("gateway".into(), serde_json::to_value(&self.gateway).unwrap_or_default());
        }
        doc
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
        let p = &self.policy;
        if p.window.is_zero() {
            return invalid("window must be at least 1 ms");
        }
        if p.retry.attempts == 0 {
            return invalid("retry.attempts counts the first attempt: at least 1");
        }
        if !(0.0..=10.0).contains(&p.retry.budget_ratio) {
            return invalid("retry.budget_ratio must be within 0..=10");
        }
        if p.retry.backoff > p.retry.max_backoff {
            return invalid("retry.backoff must not exceed retry.max_backoff");
        }
        if p.breaker.open > p.breaker.max_open {
            return invalid("breaker.open must not exceed breaker.max_open");
        }
        if let Some(r) = &p.rate_limit
            && (r.per_second.is_nan() || r.per_second <= 0.0 || r.burst == 0)
        {
            return invalid("rate_limit needs per_second > 0 and burst >= 1");
        }
        if let Some(h) = &p.health_check
            && (h.interval.is_zero() || h.timeout.is_zero() || !(0.0..=1.0).contains(&h.jitter))
        {
            return invalid("health_check needs interval and timeout of at least 1 ms and jitter within 0..=1");
        }
        if p.max_ejected_percent > 100 {
            return invalid("max_ejected_percent is a percentage: 0..=100");
        }
        let probe = &p.load_probe;
        if !probe.path.starts_with('/') || probe.path.len() > 1024 || probe.path.chars().any(char::is_control) {
            return invalid(
                "load_probe.path is a path: it starts with '/', has no control characters and at most 1024 bytes",
            );
        }
        if probe.timeout.is_zero() || probe.per_second > 100_000 {
            return invalid("load_probe needs a timeout of at least 1 ms and at most 100000 probes per second");
        }
        if self.gateway.attempt_timeout.is_zero() {
            return invalid("gateway.attempt_timeout must be at least 1 ms");
        }
        if let Some(explain) = &self.gateway.explain {
            explain.check().map_err(|e| ConfigFileError::Invalid(format!("gateway.{e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
        let policy = file.policy.clone();
        assert_eq!(policy.scheduler.map(|s| s.name().to_owned()).as_deref(), Some("adaptive"));
        assert_eq!(policy.retry.attempts, 3);
        assert_eq!(policy.rate_limit.map(|r| r.burst), Some(200));
        assert_eq!(policy.health_check.map(|h| h.timeout), Some(Duration::from_millis(500)));
    }

    #[test]
    fn every_example_of_the_gateway_documentation_is_a_valid_document() {
        let doc = include_str!("../../../docs/gateway.md");
        let mut examples = 0;
        let mut lines = doc.lines();
        while let Some(line) = lines.next() {
            if line.trim() == "```json" {
                let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
                let block = block.join("\n");
                GatewayFile::from_json(&block).unwrap_or_else(|e| panic!("{block}\n{e}"));
                examples += 1;
            }
        }
        assert!(examples >= 8, "{examples} examples");
    }

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let doc = include_str!("../../../docs/gateway.md");
        let table = doc.split("## Every field").nth(1).and_then(|s| s.split("### A route").next()).unwrap();
        // The gateway command checks endpoints with TCP every 2 s when the document says nothing.
        let mut file = GatewayFile::default();
        file.policy.health_check = Some(crate::HealthCheck::tcp(Duration::from_secs(2)));
        let defaults = file.to_json();
        let mut checked = 0;
        for row in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (field, default) = (cells[1].trim_matches('`'), cells[2]);
            let Some(default) = default.strip_prefix('`').and_then(|d| d.strip_suffix('`')) else { continue };
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = defaults.pointer(&pointer).unwrap_or_else(|| panic!("{field} is not a field"));
            let documented: serde_json::Value = serde_json::from_str(default).unwrap();
            assert_eq!(actual, &documented, "{field}");
            checked += 1;
        }
        assert!(checked >= 20, "{checked} defaults checked");
    }

    #[test]
    fn an_empty_document_is_the_defaults() {
        let file = GatewayFile::from_json("{}").unwrap();
        let (ours, defaults) = (file.policy.clone(), ServicePolicy::default());
        assert_eq!(ours.breaker, defaults.breaker);
        assert_eq!(ours.retry, defaults.retry);
        assert_eq!(ours.max_ejected_percent, defaults.max_ejected_percent);
        assert_eq!(ours.balancer.name(), defaults.balancer.name());
        assert_eq!(file.gateway, GatewayConfig::default());
    }

    #[test]
    fn a_document_written_back_reads_the_same() {
        let doc = r#"{"gateway": {"routes": [{"path_prefix": "/", "service": "a/b/c"}]},
                      "balancer": "least-request", "scheduler": "adaptive", "window": 250,
                      "health_check": {"kind": "tcp", "interval": 1000, "timeout": 100, "jitter": 0.0},
                      "max_ejected_percent": 30}"#;
        let file = GatewayFile::from_json(doc).unwrap();
        let again = GatewayFile::from_json(&file.to_json().to_string()).unwrap();
        assert_eq!(again.to_json(), file.to_json());
        assert_eq!(again.policy.balancer.name(), "least-request");
        assert_eq!(again.policy.window, Duration::from_millis(250));
        assert_eq!(again.policy.max_ejected_percent, 30);
        assert_eq!(again.gateway, file.gateway);
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
            (r#"{"gateway": {"explain": {"header": "x why"}}}"#, "not a header name"),
            (r#"{"gateway": {"explain": {"header": "x-why", "secret": "s"}}}"#, "unknown field `secret`"),
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
