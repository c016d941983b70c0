//! Backend load reports: what a backend says about its own load with each response, in the
//! ORCA form (Open Request Cost Aggregation, as gRPC and Envoy read it): the
//! `endpoint-load-metrics` response header, either `TEXT key=value, key=value` or
//! `JSON {"key": value, ...}` (the protobuf form, `BIN`, is not read).
//!
//! Keys: `cpu_utilization`, `mem_utilization`, `application_utilization`, `rps_fractional`
//! (requests per second), `eps` (errors per second), and three maps of named figures:
//! `named_metrics`, `request_cost` and `utilization` (`named_metrics.NAME=…` in the text form,
//! an object in JSON). Unknown keys are ignored, as ORCA's readers do.
//!
//! Parsing is bounded and every refusal has a reason a metric counts ([`ReportError::reason`]):
//! a header longer than [`MAX_REPORT_BYTES`], more than [`MAX_NAMED`] named figures, a name
//! longer than [`MAX_NAME_BYTES`], a value that is not a finite number within
//! 0..=[`MAX_VALUE`] (negative, NaN, infinite, absurd), or a report that is not one of the two
//! forms. A refused report changes nothing: the endpoint keeps its last good one (which ages).

use std::collections::BTreeMap;

use serde::Serialize;

/// The response header a backend reports its load in.
pub const HEADER: &str = "endpoint-load-metrics";
/// The longest report read.
pub const MAX_REPORT_BYTES: usize = 4096;
/// Named figures in one report, over its three maps.
pub const MAX_NAMED: usize = 16;
/// The longest name of a named figure.
pub const MAX_NAME_BYTES: usize = 64;
/// The largest value taken (a utilization, a rate or a cost); more is refused as absurd.
pub const MAX_VALUE: f64 = 1e12;

/// One backend's report of its own load.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct LoadReport {
    /// CPU utilization (1.0: all of one machine's CPUs; may exceed 1 where the backend
    /// counts per core).
    pub cpu_utilization: f64,
    /// Memory utilization, 0..=1.
    pub mem_utilization: f64,
    /// Utilization as the application defines it; when above 0 it is what weighting reads
    /// instead of the CPU's (gRPC's rule).
    pub application_utilization: f64,
    /// Requests per second the backend served.
    pub rps_fractional: f64,
    /// Errors per second.
    pub eps: f64,
    /// Named figures (`named_metrics`).
    pub named_metrics: BTreeMap<String, f64>,
    /// Costs of this request (`request_cost`).
    pub request_cost: BTreeMap<String, f64>,
    /// Named utilizations (`utilization`).
    pub utilization: BTreeMap<String, f64>,
}

impl LoadReport {
    /// The utilization weighting reads: the application's when it reports one, else the
    /// CPU's.
    #[must_use]
    pub fn effective_utilization(&self) -> f64 {
        if self.application_utilization > 0.0 { self.application_utilization } else { self.cpu_utilization }
    }

    /// What a plugin reads of this report `age_ms` after it arrived (`load.report`).
    #[must_use]
    pub fn to_backend(&self, age_ms: u64) -> BackendReport {
        BackendReport {
            utilization: self.effective_utilization(),
            rps: self.rps_fractional,
            eps: self.eps,
            named: self.named_metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            age_ms,
        }
    }

    fn named(&self) -> usize {
        self.named_metrics.len() + self.request_cost.len() + self.utilization.len()
    }

    /// Sets `key` to `value`, checked.
    fn set(&mut self, key: &str, value: f64) -> Result<(), ReportError> {
        if !value.is_finite() || !(0.0..=MAX_VALUE).contains(&value) {
            return Err(ReportError::InvalidValue { key: clip(key), value: clip(&value.to_string()) });
        }
        let map = match key.split_once('.') {
            Some(("named_metrics", name)) => Some((&mut self.named_metrics, name)),
            Some(("request_cost", name)) => Some((&mut self.request_cost, name)),
            Some(("utilization", name)) => Some((&mut self.utilization, name)),
            _ => None,
        };
        if let Some((map, name)) = map {
            if name.is_empty() || name.len() > MAX_NAME_BYTES {
                return Err(ReportError::Malformed(format!(
                    "named figure {:?}: 1 to {MAX_NAME_BYTES} bytes",
                    clip(name)
                )));
            }
            let new = !map.contains_key(name);
            map.insert(name.to_owned(), value);
            if new && self.named() > MAX_NAMED {
                return Err(ReportError::TooManyNamed);
            }
            return Ok(());
        }
        match key {
            "cpu_utilization" => self.cpu_utilization = value,
            "mem_utilization" => self.mem_utilization = value,
            "application_utilization" => self.application_utilization = value,
            "rps_fractional" => self.rps_fractional = value,
            "eps" => self.eps = value,
            _ => {}
        }
        Ok(())
    }
}

/// A backend's last report as a plugin reads it (mirror of `load.backend-report`, contract
/// 0.2.3): the figures weighting uses, the named metrics, and how old the report is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BackendReport {
    /// The application's utilization when it reports one, else the CPU's.
    pub utilization: f64,
    /// Requests per second the backend served (`rps_fractional`).
    pub rps: f64,
    /// Errors per second.
    pub eps: f64,
    /// `named_metrics`, sorted by name. By sextant's convention `rif` is the backend's
    /// requests in flight (queued or served, from every client) and `latency_ms` its recent
    /// service latency; Prequal and C3 read them.
    pub named: Vec<(String, f64)>,
    /// Milliseconds since the report arrived.
    pub age_ms: u64,
}

impl BackendReport {
    /// A named metric.
    #[must_use]
    pub fn named(&self, name: &str) -> Option<f64> {
        self.named.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    /// Longer than [`MAX_REPORT_BYTES`].
    #[error("load report of {0} bytes; at most {MAX_REPORT_BYTES} are read")]
    TooLong(usize),
    /// Neither `TEXT …` nor `JSON …`.
    #[error("load report in an unknown form (TEXT and JSON are read): {0:?}")]
    UnknownForm(String),
    /// Not what its form says.
    #[error("malformed load report: {0}")]
    Malformed(String),
    /// A value that is not a finite number within 0..=`MAX_VALUE`.
    #[error("load report: {key} is {value}, not a number within 0..={MAX_VALUE}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The value, as written.
        value: String,
    },
    /// More than [`MAX_NAMED`] named figures.
    #[error("load report with more than {MAX_NAMED} named figures")]
    TooManyNamed,
}

impl ReportError {
    /// The metric label of this reason: `too_long`, `unknown_form`, `malformed`,
    /// `invalid_value`, `too_many_named`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLong(_) => "too_long",
            Self::UnknownForm(_) => "unknown_form",
            Self::Malformed(_) => "malformed",
            Self::InvalidValue { .. } => "invalid_value",
            Self::TooManyNamed => "too_many_named",
        }
    }
}

/// At most 64 bytes of `s` (on a character boundary), for messages.
fn clip(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Parses a report: `TEXT k=v, k=v` or `JSON {…}`.
///
/// # Errors
/// [`ReportError`]: too long, another form, malformed, a value out of range, too many named
/// figures.
pub fn parse(header: &str) -> Result<LoadReport, ReportError> {
    if header.len() > MAX_REPORT_BYTES {
        return Err(ReportError::TooLong(header.len()));
    }
    let header = header.trim();
    let (form, body) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
    match form {
        "TEXT" => text(body),
        "JSON" => json(body),
        other => Err(ReportError::UnknownForm(clip(other))),
    }
}

fn text(body: &str) -> Result<LoadReport, ReportError> {
    let mut report = LoadReport::default();
    for pair in body.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(ReportError::Malformed(format!("{:?} is not key=value", clip(pair))));
        };
        let (key, value) = (key.trim(), value.trim());
        let number: f64 =
            value.parse().map_err(|_| ReportError::InvalidValue { key: clip(key), value: clip(value) })?;
        report.set(key, number)?;
    }
    Ok(report)
}

fn json(body: &str) -> Result<LoadReport, ReportError> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| ReportError::Malformed(format!("JSON: {e}")))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(ReportError::Malformed("JSON: not an object".into()));
    };
    let mut report = LoadReport::default();
    let number = |key: &str, v: &serde_json::Value| {
        v.as_f64().ok_or_else(|| ReportError::InvalidValue { key: clip(key), value: clip(&v.to_string()) })
    };
    for (key, v) in &fields {
        match key.as_str() {
            "named_metrics" | "request_cost" | "utilization" => {
                let serde_json::Value::Object(map) = v else {
                    return Err(ReportError::Malformed(format!("JSON: {key} is not an object")));
                };
                if map.len() > MAX_NAMED {
                    return Err(ReportError::TooManyNamed);
                }
                for (name, v) in map {
                    report.set(&format!("{key}.{name}"), number(name, v)?)?;
                }
            }
            "cpu_utilization" | "mem_utilization" | "application_utilization" | "rps_fractional" | "eps" => {
                report.set(key, number(key, v)?)?;
            }
            _ => {}
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_read_the_same_report() {
        let text = parse("TEXT cpu_utilization=0.3, mem_utilization=0.8, rps_fractional=120, eps=2, named_metrics.queue=7, utilization.gpu=0.5, unknown=1").unwrap();
        let json = parse(r#"JSON {"cpu_utilization": 0.3, "mem_utilization": 0.8, "rps_fractional": 120, "eps": 2, "named_metrics": {"queue": 7}, "utilization": {"gpu": 0.5}, "unknown": "x"}"#).unwrap();
        assert_eq!(text, json);
        assert!((text.cpu_utilization - 0.3).abs() < 1e-12 && (text.rps_fractional - 120.0).abs() < 1e-12);
        assert_eq!(text.named_metrics.get("queue"), Some(&7.0));
        assert!((text.effective_utilization() - 0.3).abs() < 1e-12);
        let app = parse("TEXT cpu_utilization=0.9, application_utilization=0.2").unwrap();
        assert!((app.effective_utilization() - 0.2).abs() < 1e-12, "the application's utilization wins");
        assert_eq!(parse("TEXT ").unwrap(), LoadReport::default(), "an empty report is a report of nothing");
    }

    #[test]
    fn hostile_reports_are_refused_with_a_reason() {
        let many: String = (0..=MAX_NAMED).map(|i| format!("named_metrics.m{i}=1")).collect::<Vec<_>>().join(",");
        let long_name = format!("TEXT named_metrics.{}=1", "n".repeat(MAX_NAME_BYTES + 1));
        let huge = format!("TEXT cpu_utilization={}", "9".repeat(MAX_REPORT_BYTES));
        let cases: Vec<(String, &str)> = vec![
            ("garbage".into(), "unknown_form"),
            ("BIN AAAA".into(), "unknown_form"),
            ("TEXT cpu_utilization".into(), "malformed"),
            ("TEXT cpu_utilization=-0.5".into(), "invalid_value"),
            ("TEXT cpu_utilization=NaN".into(), "invalid_value"),
            ("TEXT cpu_utilization=inf".into(), "invalid_value"),
            ("TEXT rps_fractional=1e300".into(), "invalid_value"),
            ("TEXT cpu_utilization=zero".into(), "invalid_value"),
            (r#"JSON {"cpu_utilization": "0.5"}"#.into(), "invalid_value"),
            (r#"JSON {"cpu_utilization": -1}"#.into(), "invalid_value"),
            ("JSON [1, 2]".into(), "malformed"),
            ("JSON {".into(), "malformed"),
            (r#"JSON {"named_metrics": 3}"#.into(), "malformed"),
            (format!("TEXT {many}"), "too_many_named"),
            (long_name, "malformed"),
            ("TEXT named_metrics.=1".into(), "malformed"),
            (huge, "too_long"),
        ];
        for (header, reason) in cases {
            let e = parse(&header).expect_err(&header);
            assert_eq!(e.reason(), reason, "{header:.80}: {e}");
            assert!(e.to_string().len() < 300, "a bounded message: {e}");
        }
        let json_many: serde_json::Map<String, serde_json::Value> =
            (0..=MAX_NAMED).map(|i| (format!("m{i}"), serde_json::json!(1))).collect();
        let header = format!("JSON {}", serde_json::json!({ "named_metrics": json_many }));
        assert_eq!(parse(&header).unwrap_err().reason(), "too_many_named");
    }

    /// Any bytes at all: an answer (a report or a reason), never a panic.
    #[test]
    fn arbitrary_input_is_answered() {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let alphabet = b"TEXTJSON {}[]\",=.:-+0123456789eE nameduilzto_cpqrsf\t\xc3\xa9";
        for n in 0..5000 {
            let mut s = if n % 2 == 0 { b"TEXT ".to_vec() } else { b"JSON ".to_vec() };
            for _ in 0..(n % 97) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(alphabet[usize::try_from(x % alphabet.len() as u64).unwrap_or(0)]);
            }
            let text = String::from_utf8_lossy(&s);
            let _ = parse(&text);
        }
    }
}
