//! Gray release of a config entry: a candidate version served only to the readers its rule
//! matches, promoted or withdrawn with one write, while every other reader keeps the stable
//! version (Nacos's beta configs).
//!
//! A reader says who it is ([`Reader`]: an id and labels) when it reads or watches; the
//! server answers the version meant for it ([`ConfigEntry::for_reader`](super::ConfigEntry::for_reader)),
//! and the version hash says which. A read without a reader is an operator's: the whole entry,
//! candidate included.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::MAX_LABEL_BYTES;
use crate::ValidationError;

/// Most labels a rule or a reader may name.
pub const MAX_GRAY_LABELS: usize = 16;
/// Most ids a rule may list.
pub const MAX_GRAY_IDS: usize = 256;
/// Longest reader id, in bytes.
pub const MAX_READER_ID_BYTES: usize = 128;

/// Who reads a config entry: what a candidate's [`GrayRule`] is matched against.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reader {
    /// The reader's id (an instance id, a host name): what `ids` rules list and `percent`
    /// rules hash. A reader without one matches neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The reader's labels, matched by `labels` rules.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Reader {
    /// Checks the id's length and the labels' number and lengths.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(id) = &self.id {
            check_text("reader id", id, MAX_READER_ID_BYTES)?;
        }
        check_labels(&self.labels)
    }
}

/// Which readers a candidate is served to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrayRule {
    /// Readers carrying every one of these labels with these values.
    Labels(BTreeMap<String, String>),
    /// Readers with one of these ids.
    Ids(Vec<String>),
    /// Readers whose id falls in this share, 1..=99 percent ([`gray_bucket`]).
    Percent(u32),
}

impl GrayRule {
    /// Whether `reader` is served the candidate.
    #[must_use]
    pub fn matches(&self, reader: &Reader) -> bool {
        match self {
            Self::Labels(want) => want.iter().all(|(k, v)| reader.labels.get(k) == Some(v)),
            Self::Ids(ids) => reader.id.as_ref().is_some_and(|id| ids.contains(id)),
            Self::Percent(p) => reader.id.as_deref().is_some_and(|id| gray_bucket(id) < *p),
        }
    }

    /// Checks that the rule is well formed and can match some readers but not every one: a
    /// rule without labels or ids, or a share of 0 or 100 percent (and beyond), is refused.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Self::Labels(labels) if labels.is_empty() => {
                Err(ValidationError::GrayRule("a labels rule names no label, so it matches every reader".into()))
            }
            Self::Labels(labels) => check_labels(labels),
            Self::Ids(ids) if ids.is_empty() => {
                Err(ValidationError::GrayRule("an ids rule lists no id, so it matches no reader".into()))
            }
            Self::Ids(ids) if ids.len() > MAX_GRAY_IDS => {
                Err(ValidationError::GrayRule(format!("{} ids, the limit is {MAX_GRAY_IDS}", ids.len())))
            }
            Self::Ids(ids) => ids.iter().try_for_each(|id| check_text("reader id", id, MAX_READER_ID_BYTES)),
            Self::Percent(p) if !(1..=99).contains(p) => Err(ValidationError::GrayRule(format!(
                "percent {p} is out of range 1..=99 (0 matches no reader, 100 every one)"
            ))),
            Self::Percent(_) => Ok(()),
        }
    }
}

impl std::fmt::Display for GrayRule {
    /// The CLI's form: `label=value,...`, `ids=a,b`, `percent=N`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Labels(labels) => {
                let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                f.write_str(&pairs.join(","))
            }
            Self::Ids(ids) => write!(f, "ids={}", ids.join(",")),
            Self::Percent(p) => write!(f, "percent={p}"),
        }
    }
}

impl std::str::FromStr for GrayRule {
    type Err = ValidationError;

    /// Reads the CLI's form: `percent=N`, `ids=ID,ID,...` or `LABEL=VALUE,LABEL=VALUE,...`
    /// (every label must match). The rule is validated.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ValidationError::GrayRule(format!("{s:?} is not percent=N, ids=ID,... or LABEL=VALUE,..."));
        let rule = if let Some(p) = s.strip_prefix("percent=") {
            Self::Percent(p.trim().parse().map_err(|_| bad())?)
        } else if let Some(ids) = s.strip_prefix("ids=") {
            Self::Ids(ids.split(',').map(|id| id.trim().to_owned()).collect())
        } else {
            let mut labels = BTreeMap::new();
            for pair in s.split(',') {
                let (k, v) = pair.split_once('=').ok_or_else(bad)?;
                labels.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            Self::Labels(labels)
        };
        rule.validate()?;
        Ok(rule)
    }
}

/// Where a reader id falls, 0..100: the first eight bytes of its sha256, big-endian, modulo
/// 100. A `percent` rule of N serves the candidate to the ids below N, so raising the share
/// keeps every reader that had the candidate.
#[must_use]
pub fn gray_bucket(id: &str) -> u32 {
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The remainder is below 100.
    u32::try_from(u64::from_be_bytes(first) % 100).unwrap_or(0)
}

/// A config entry's candidate version, served to the readers its rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigCandidate {
    /// Its content.
    pub content: String,
    /// Lowercase hex sha256 of `content`.
    pub version: String,
    /// Who is served it.
    pub rule: GrayRule,
    /// When it was written (Unix ms).
    pub since_unix_ms: u64,
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::GrayRule(format!("{field} must not be empty")));
    }
    if value.len() > max {
        return Err(ValidationError::FieldTooLong { field, len: value.len(), max });
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if labels.len() > MAX_GRAY_LABELS {
        return Err(ValidationError::GrayRule(format!("{} labels, the limit is {MAX_GRAY_LABELS}", labels.len())));
    }
    for (k, v) in labels {
        check_text("label", k, MAX_LABEL_BYTES)?;
        check_text("label value", v, MAX_LABEL_BYTES)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(id: Option<&str>, labels: &[(&str, &str)]) -> Reader {
        Reader {
            id: id.map(str::to_owned),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    #[test]
    fn rules_match_the_readers_they_name() {
        let canary: GrayRule = "env=canary,region=eu".parse().unwrap();
        assert!(canary.matches(&reader(None, &[("env", "canary"), ("region", "eu"), ("x", "y")])));
        assert!(!canary.matches(&reader(None, &[("env", "canary")])));
        assert!(!canary.matches(&reader(Some("a"), &[])));

        let ids: GrayRule = "ids=gw-1, gw-2".parse().unwrap();
        assert_eq!(ids, GrayRule::Ids(vec!["gw-1".into(), "gw-2".into()]));
        assert!(ids.matches(&reader(Some("gw-2"), &[])));
        assert!(!ids.matches(&reader(Some("gw-3"), &[])));
        assert!(!ids.matches(&reader(None, &[])));
    }

    #[test]
    fn a_percent_rule_serves_about_its_share_and_a_larger_share_keeps_the_smaller_ones_readers() {
        let ten: GrayRule = "percent=10".parse().unwrap();
        let fifty: GrayRule = "percent=50".parse().unwrap();
        let readers: Vec<Reader> = (0..10_000).map(|i| reader(Some(&format!("client-{i}")), &[])).collect();
        let served = |rule: &GrayRule| readers.iter().filter(|r| rule.matches(r)).count();
        let (at_ten, at_fifty) = (served(&ten), served(&fifty));
        assert!((800..1200).contains(&at_ten), "{at_ten} of 10,000 at 10%");
        assert!((4700..5300).contains(&at_fifty), "{at_fifty} of 10,000 at 50%");
        assert!(readers.iter().all(|r| !ten.matches(r) || fifty.matches(r)));
        assert!(!ten.matches(&reader(None, &[])), "a reader without an id is in no share");
    }

    #[test]
    fn rules_that_match_nothing_or_everything_or_are_malformed_are_refused() {
        for bad in ["percent=0", "percent=100", "percent=150", "percent=-1", "percent=x", "ids=", "env", "=v", "k="] {
            assert!(bad.parse::<GrayRule>().is_err(), "{bad:?} was accepted");
        }
        assert!(GrayRule::Labels(BTreeMap::new()).validate().is_err());
        assert!(GrayRule::Ids(Vec::new()).validate().is_err());
        let many = GrayRule::Ids((0..=MAX_GRAY_IDS).map(|i| i.to_string()).collect());
        assert!(many.validate().is_err());
        let long = reader(Some(&"x".repeat(MAX_READER_ID_BYTES + 1)), &[]);
        assert!(long.validate().is_err());
    }

    #[test]
    fn a_rule_reads_back_from_its_display_and_its_json() {
        for text in ["env=canary,region=eu", "ids=a,b", "percent=25"] {
            let rule: GrayRule = text.parse().unwrap();
            assert_eq!(rule.to_string(), text);
            let json = serde_json::to_string(&rule).unwrap();
            assert_eq!(serde_json::from_str::<GrayRule>(&json).unwrap(), rule);
        }
        assert_eq!(serde_json::to_string(&GrayRule::Percent(5)).unwrap(), r#"{"percent":5}"#);
    }
}
