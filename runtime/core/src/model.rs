//! The records sextant stores: instances, service specs, config entries, plugin records.
//!
//! A [`Record`] is what a store holds under a [`RecordKey`]; the key's path
//! ([`RecordKey::path`]) is the documented key layout shared by every backend
//! (`instances/NS/GROUP/SERVICE/ID`, `services/NS/GROUP/SERVICE`, `configs/NS/GROUP/DATA_ID`,
//! `plugins/NAME`). Values are JSON.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod gray;
pub mod rollout;

use self::gray::{ConfigCandidate, GrayRule, Reader};
use self::rollout::{MAX_DECISIONS, Rollout};
use crate::ValidationError;
use crate::metadata::Metadata;
use crate::name::{ConfigKey, DataId, Group, InstanceId, InstanceKey, Namespace, PluginName, ServiceKey, ServiceName};

/// Largest instance weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Weight when none is given.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Limit on an instance's metadata: keys plus values, in bytes.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Limit on `zone` and `version`.
pub const MAX_LABEL_BYTES: usize = 64;
/// Limit on a config entry's content.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}
fn yes() -> bool {
    true
}

/// One instance of a service: an address traffic can be sent to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The service it belongs to.
    pub service: ServiceKey,
    /// Unique inside the service.
    pub id: InstanceId,
    /// Address.
    pub ip: IpAddr,
    /// Port (not 0).
    pub port: u16,
    /// Relative weight, 0..=10000; 0 takes no traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// An operator switch: disabled instances take no traffic.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Set by health checking.
    #[serde(default = "yes")]
    pub healthy: bool,
    /// Ephemeral instances hang on a lease and vanish with it; persistent ones stay until
    /// deregistered and survive restarts.
    #[serde(default = "yes")]
    pub ephemeral: bool,
    /// Zone (for zone-aware routing); may be empty.
    #[serde(default)]
    pub zone: String,
    /// Version label (for gray release); may be empty.
    #[serde(default)]
    pub version: String,
    /// Free-form labels, at most 4 KiB in total.
    #[serde(default)]
    pub metadata: Metadata,
}

impl Instance {
    /// An enabled, healthy, ephemeral instance with the default weight and the id `ip:port`.
    pub fn new(service: ServiceKey, ip: IpAddr, port: u16) -> Self {
        // An IP address prints as hex digits, '.' and ':', all allowed in ids, and is short.
        let id = InstanceId::new(format!("{ip}:{port}")).expect("ip:port is a valid instance id");
        Self {
            service,
            id,
            ip,
            port,
            weight: DEFAULT_WEIGHT,
            enabled: true,
            healthy: true,
            ephemeral: true,
            zone: String::new(),
            version: String::new(),
            metadata: Metadata::new(),
        }
    }

    /// This instance's key.
    #[must_use]
    pub fn key(&self) -> InstanceKey {
        InstanceKey { service: self.service.clone(), id: self.id.clone() }
    }

    /// Checks weight, port, labels and metadata size. Names are valid by construction.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.weight > MAX_WEIGHT {
            return Err(ValidationError::WeightOutOfRange(self.weight));
        }
        if self.port == 0 {
            return Err(ValidationError::ZeroPort);
        }
        for (field, value) in [("zone", &self.zone), ("version", &self.version)] {
            if value.len() > MAX_LABEL_BYTES {
                return Err(ValidationError::FieldTooLong { field, len: value.len(), max: MAX_LABEL_BYTES });
            }
        }
        // The rule `sextant gateway --zone` and the locality scheduler's priority list follow
        // too (`sextant_builtins::zone_name_error`), so every zone an instance can carry is
        // one a gateway can be in and a scheduler can name.
        if self.zone.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValidationError::InvalidZone(self.zone.clone()));
        }
        if self.metadata.keys().any(str::is_empty) {
            return Err(ValidationError::EmptyMetadataKey);
        }
        let size = self.metadata.text_len();
        if size > MAX_METADATA_BYTES {
            return Err(ValidationError::MetadataTooLarge { size, max: MAX_METADATA_BYTES });
        }
        Ok(())
    }

    /// Whether the instance may take traffic when health is ignored (protection mode).
    #[must_use]
    pub fn is_routable(&self) -> bool {
        self.enabled && self.weight > 0
    }
}

/// Per-service settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// The service.
    pub service: ServiceKey,
    /// Protection threshold, 0.0..=1.0: when the share of healthy instances falls below it,
    /// queries return every routable instance instead of only the healthy ones (Nacos'
    /// protection threshold, Envoy's panic threshold). 0 turns protection off.
    #[serde(default)]
    pub protect_threshold: f32,
    /// Free-form labels, at most 4 KiB in total.
    #[serde(default)]
    pub metadata: Metadata,
}

impl ServiceSpec {
    /// Checks the threshold range and metadata size.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(0.0..=1.0).contains(&self.protect_threshold) {
            return Err(ValidationError::ThresholdOutOfRange(self.protect_threshold));
        }
        let size = self.metadata.text_len();
        if size > MAX_METADATA_BYTES {
            return Err(ValidationError::MetadataTooLarge { size, max: MAX_METADATA_BYTES });
        }
        Ok(())
    }
}

/// A config-center entry: content under namespace/group/data id, with a version hash so a
/// watcher can tell whether what it holds is current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    /// Where it lives.
    pub key: ConfigKey,
    /// The content, at most 1 MiB.
    pub content: String,
    /// Lowercase hex sha256 of `content`.
    pub version: String,
    /// The versions this one replaced, newest first, at most [`CONFIG_HISTORY`]; their
    /// contents are kept in the store as artifacts named by their version (its sha256).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ConfigVersion>,
    /// A candidate version served to the readers its rule matches instead of this one, until
    /// it is promoted or withdrawn ([`gray`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<ConfigCandidate>,
}

/// How many earlier versions a config entry remembers.
pub const CONFIG_HISTORY: usize = 20;

/// An earlier version of a config entry ([`ConfigEntry::history`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVersion {
    /// Its version (the sha256 of its content).
    pub version: String,
    /// Its content's size in bytes.
    pub size: u64,
    /// When a write replaced it (Unix ms).
    pub replaced_at_unix_ms: u64,
}

impl ConfigEntry {
    /// An entry with its version computed from the content (and no history).
    pub fn new(key: ConfigKey, content: impl Into<String>) -> Result<Self, ValidationError> {
        let content = content.into();
        let version = sha256_hex(content.as_bytes());
        let entry = Self { key, content, version, history: Vec::new(), beta: None };
        entry.validate()?;
        Ok(entry)
    }

    /// Checks the size, that the version matches the content, and the history's length; of a
    /// candidate, its version, its rule, and that both contents together keep within
    /// [`MAX_CONFIG_BYTES`].
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.content.len() > MAX_CONFIG_BYTES {
            return Err(ValidationError::ContentTooLarge { size: self.content.len(), max: MAX_CONFIG_BYTES });
        }
        if self.version != sha256_hex(self.content.as_bytes()) {
            return Err(ValidationError::ConfigVersionMismatch);
        }
        if self.history.len() > CONFIG_HISTORY {
            return Err(ValidationError::ConfigHistoryTooLong { len: self.history.len(), max: CONFIG_HISTORY });
        }
        if let Some(beta) = &self.beta {
            let size = self.content.len() + beta.content.len();
            if size > MAX_CONFIG_BYTES {
                return Err(ValidationError::CandidateTooLarge { size, max: MAX_CONFIG_BYTES });
            }
            if beta.version != sha256_hex(beta.content.as_bytes()) {
                return Err(ValidationError::ConfigVersionMismatch);
            }
            beta.rule.validate()?;
        }
        Ok(())
    }

    /// What `reader` is served: the candidate's content and version when its rule matches the
    /// reader, this entry's otherwise; the candidate itself is left out either way.
    #[must_use]
    pub fn for_reader(&self, reader: &Reader) -> Self {
        let mut view = Self {
            key: self.key.clone(),
            content: self.content.clone(),
            version: self.version.clone(),
            history: self.history.clone(),
            beta: None,
        };
        if let Some(beta) = self.beta.as_ref().filter(|b| b.rule.matches(reader)) {
            view.content.clone_from(&beta.content);
            view.version.clone_from(&beta.version);
        }
        view
    }

    /// This entry with `content` as its candidate for the readers `rule` matches (replacing
    /// any candidate it had), written at `now_unix_ms`; the stable version is kept.
    pub fn with_candidate(&self, content: String, rule: GrayRule, now_unix_ms: u64) -> Result<Self, ValidationError> {
        let version = sha256_hex(content.as_bytes());
        let mut next = self.clone();
        next.beta = Some(ConfigCandidate { content, version, rule, since_unix_ms: now_unix_ms });
        next.validate()?;
        Ok(next)
    }

    /// This entry with its candidate made the version every reader is served (the stable one
    /// first in its history, as any write that replaces it); `None` without a candidate.
    #[must_use]
    pub fn promoted(&self, now_unix_ms: u64) -> Option<Self> {
        let beta = self.beta.as_ref()?;
        let next = Self {
            key: self.key.clone(),
            content: beta.content.clone(),
            version: beta.version.clone(),
            history: Vec::new(),
            beta: None,
        };
        let mut stable = self.clone();
        stable.beta = None;
        Some(stable.replaced_by(next, now_unix_ms))
    }

    /// This entry's content replaced by `next`'s at `now_unix_ms`: `next` with this version
    /// first in its history (when it differs), the oldest dropped past [`CONFIG_HISTORY`],
    /// and this entry's candidate, still served to the readers it was.
    #[must_use]
    pub fn replaced_by(&self, mut next: Self, now_unix_ms: u64) -> Self {
        next.history.clone_from(&self.history);
        next.beta.clone_from(&self.beta);
        if next.version != self.version {
            let this = ConfigVersion {
                version: self.version.clone(),
                size: self.content.len() as u64,
                replaced_at_unix_ms: now_unix_ms,
            };
            next.history.insert(0, this);
            next.history.truncate(CONFIG_HISTORY);
        }
        next
    }
}

/// The plugin kinds, one per WIT world.
pub const PLUGIN_KINDS: [&str; 3] = ["balancer", "health", "scheduler"];

/// A plugin known to the store: its artifact (by sha256), its configuration, where it is
/// bound, the versions it replaced (newest last) for `plugin rollback`, the versions rolled
/// back from (for `plugin rollback --forward`), the versions a host found faulty, and the
/// progressive rollout of a candidate version ([`Rollout`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// Name.
    pub name: PluginName,
    /// `balancer`, `health` or `scheduler`.
    pub kind: String,
    /// sha256 of the component bytes (the artifact's address).
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// What it is bound to: a service (`NS/GROUP/NAME`), a namespace (`NS`), every service
    /// (`*`), or empty for none.
    #[serde(default)]
    pub binding: String,
    /// JSON configuration handed to the plugin's `init` (empty: `{}`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config: String,
    /// Wall-clock time of the load, milliseconds since the Unix epoch.
    pub loaded_at_unix_ms: u64,
    /// The versions this one replaced, oldest first, at most [`PLUGIN_HISTORY`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<PluginVersion>,
    /// The versions rolled back from, the most recent last, at most [`PLUGIN_HISTORY`]:
    /// `plugin rollback --forward` returns to them; a new load clears them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward: Vec<PluginVersion>,
    /// Versions a host rolled back automatically (too many faults), at most
    /// [`PLUGIN_HISTORY`]: no host activates them again, and loading one is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad: Vec<BadVersion>,
    /// Faults of the active version from hosts that rolled it back on their own, waiting
    /// for the fleet rule (how many hosts within what window) to mark it bad; at most
    /// [`MAX_PENDING_FAULTS`], one per host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<HostFault>,
    /// The rollout of a candidate version beside this one: while it runs, and after it ended
    /// (promoted, rolled back or aborted) until the next load, so its decisions stay readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// A host's word that it rolled a plugin version back on its own (too many faults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFault {
    /// sha256 of the component.
    pub sha256: String,
    /// Who reported (a gateway's registration, `NS/GROUP/NAME/ID`, or a server).
    pub host: String,
    /// What went wrong, where (`SERVICE KIND: N faults within ..., last: ...`).
    pub reason: String,
    /// When the report arrived, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// Host faults a plugin record keeps while they wait for the fleet rule.
pub const MAX_PENDING_FAULTS: usize = 16;
/// Longest host name or reason in a host fault (bytes).
pub const MAX_FAULT_FIELD: usize = 1024;

/// A plugin version a host found faulty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadVersion {
    /// sha256 of the component.
    pub sha256: String,
    /// What went wrong, where (`SERVICE KIND: N faults within ..., last: ...`).
    pub reason: String,
    /// When it was marked, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

/// Versions kept per plugin record for rollback.
pub const PLUGIN_HISTORY: usize = 8;
/// Longest plugin configuration (bytes of JSON).
pub const MAX_PLUGIN_CONFIG: usize = 64 * 1024;

/// An earlier version of a plugin record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginVersion {
    /// sha256 of the component.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// Its configuration.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub config: String,
    /// When it was loaded, milliseconds since the Unix epoch.
    pub loaded_at_unix_ms: u64,
}

/// What a plugin record is bound to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PluginBinding {
    /// Nothing: stored, validated, not active.
    None,
    /// Every service.
    All,
    /// Every service of a namespace.
    Namespace(Namespace),
    /// One service.
    Service(ServiceKey),
}

impl PluginBinding {
    /// Parses `""`, `*`, `NS` or `NS/GROUP/NAME`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "" => Ok(Self::None),
            "*" => Ok(Self::All),
            s if s.contains('/') => Ok(Self::Service(ServiceKey::parse(s)?)),
            s => Ok(Self::Namespace(Namespace::new(s)?)),
        }
    }

    /// How specifically this binding covers `service`: 3 for the service itself, 2 for its
    /// namespace, 1 for `*`, none when it does not cover it.
    #[must_use]
    pub fn covers(&self, service: &ServiceKey) -> Option<u8> {
        match self {
            Self::None => None,
            Self::All => Some(1),
            Self::Namespace(ns) => (*ns == service.namespace).then_some(2),
            Self::Service(s) => (s == service).then_some(3),
        }
    }
}

impl PluginRecord {
    /// Checks kind, sha256 format, binding, configuration and history.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if !PLUGIN_KINDS.contains(&self.kind.as_str()) {
            return Err(ValidationError::BadPluginKind(self.kind.clone()));
        }
        check_sha256(&self.sha256)?;
        if self.binding.len() > 512 {
            return Err(ValidationError::FieldTooLong { field: "binding", len: self.binding.len(), max: 512 });
        }
        PluginBinding::parse(&self.binding)?;
        if self.config.len() > MAX_PLUGIN_CONFIG {
            return Err(ValidationError::FieldTooLong {
                field: "config",
                len: self.config.len(),
                max: MAX_PLUGIN_CONFIG,
            });
        }
        for (field, len) in [("history", self.history.len()), ("forward", self.forward.len()), ("bad", self.bad.len())]
        {
            if len > PLUGIN_HISTORY {
                return Err(ValidationError::FieldTooLong { field, len, max: PLUGIN_HISTORY });
            }
        }
        for b in &self.bad {
            check_sha256(&b.sha256)?;
            if b.reason.len() > MAX_FAULT_FIELD {
                return Err(ValidationError::FieldTooLong {
                    field: "reason",
                    len: b.reason.len(),
                    max: MAX_FAULT_FIELD,
                });
            }
        }
        if self.faults.len() > MAX_PENDING_FAULTS {
            return Err(ValidationError::FieldTooLong {
                field: "faults",
                len: self.faults.len(),
                max: MAX_PENDING_FAULTS,
            });
        }
        for r in &self.faults {
            check_sha256(&r.sha256)?;
            for (field, len) in [("host", r.host.len()), ("reason", r.reason.len())] {
                if len > MAX_FAULT_FIELD {
                    return Err(ValidationError::FieldTooLong { field, len, max: MAX_FAULT_FIELD });
                }
            }
        }
        if let Some(r) = &self.rollout {
            check_sha256(&r.candidate.sha256)?;
            r.plan.validate().map_err(|e| ValidationError::Rollout(e.to_string()))?;
            if r.step >= r.plan.steps.len() {
                return Err(ValidationError::Rollout(format!("step {} of a {}-step plan", r.step, r.plan.steps.len())));
            }
            if r.log.len() > MAX_DECISIONS {
                return Err(ValidationError::FieldTooLong {
                    field: "rollout log",
                    len: r.log.len(),
                    max: MAX_DECISIONS,
                });
            }
            if r.candidate.config.len() > MAX_PLUGIN_CONFIG {
                return Err(ValidationError::FieldTooLong {
                    field: "config",
                    len: r.candidate.config.len(),
                    max: MAX_PLUGIN_CONFIG,
                });
            }
        }
        for v in self.history.iter().chain(&self.forward) {
            check_sha256(&v.sha256)?;
            if v.config.len() > MAX_PLUGIN_CONFIG {
                return Err(ValidationError::FieldTooLong {
                    field: "config",
                    len: v.config.len(),
                    max: MAX_PLUGIN_CONFIG,
                });
            }
        }
        Ok(())
    }

    /// The parsed binding (records in the store are validated, so this is infallible there;
    /// an unparsable binding reads as none).
    #[must_use]
    pub fn bound(&self) -> PluginBinding {
        PluginBinding::parse(&self.binding).unwrap_or(PluginBinding::None)
    }

    /// The active version, as a history entry.
    #[must_use]
    pub fn current(&self) -> PluginVersion {
        PluginVersion {
            sha256: self.sha256.clone(),
            size: self.size,
            config: self.config.clone(),
            loaded_at_unix_ms: self.loaded_at_unix_ms,
        }
    }

    /// Makes `version` the active one (its load time stays the caller's to set); returns the
    /// version it replaced.
    pub fn switch_to(&mut self, version: PluginVersion) -> PluginVersion {
        let left = self.current();
        // Faults are about the version that leaves.
        self.faults.clear();
        self.sha256 = version.sha256;
        self.size = version.size;
        self.config = version.config;
        left
    }

    /// The active version's name for people ([`version_label`]).
    #[must_use]
    pub fn version(&self) -> String {
        version_label(&self.sha256, &self.config)
    }

    /// Why `sha256` was marked bad, if it was.
    #[must_use]
    pub fn bad_reason(&self, sha256: &str) -> Option<&str> {
        self.bad.iter().find(|b| b.sha256 == sha256).map(|b| b.reason.as_str())
    }

    /// The configuration, `{}` when empty.
    #[must_use]
    pub fn config_or_default(&self) -> &str {
        if self.config.is_empty() { "{}" } else { &self.config }
    }
}

/// How a plugin version is named to people (`plugin list`, hosts' reports): the first 12 hex
/// digits of its component's sha256, then `+` and the first 8 of its configuration's sha256
/// when it has one (not empty, not `{}`), so two versions of one component that differ only
/// in configuration read apart.
#[must_use]
pub fn version_label(sha256: &str, config: &str) -> String {
    let sha12 = &sha256[..12.min(sha256.len())];
    match config.trim() {
        "" | "{}" => sha12.to_owned(),
        c => format!("{sha12}+{}", &sha256_hex(c.as_bytes())[..8]),
    }
}

/// Lowercase hex sha256 of `bytes`.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks that `s` is 64 lowercase hex digits.
pub fn check_sha256(s: &str) -> Result<(), ValidationError> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(ValidationError::BadSha256(s.to_owned()))
    }
}

/// Anything a store holds. Cheap to clone (one `Arc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Record {
    /// A service instance.
    Instance(Arc<Instance>),
    /// Per-service settings.
    Service(Arc<ServiceSpec>),
    /// A config entry.
    Config(Arc<ConfigEntry>),
    /// A plugin record.
    Plugin(Arc<PluginRecord>),
}

impl Record {
    /// The key it is stored under.
    #[must_use]
    pub fn key(&self) -> RecordKey {
        match self {
            Self::Instance(i) => RecordKey::Instance(i.key()),
            Self::Service(s) => RecordKey::Service(s.service.clone()),
            Self::Config(c) => RecordKey::Config(c.key.clone()),
            Self::Plugin(p) => RecordKey::Plugin(p.name.clone()),
        }
    }

    /// Validates the record's fields.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Self::Instance(i) => i.validate(),
            Self::Service(s) => s.validate(),
            Self::Config(c) => c.validate(),
            Self::Plugin(p) => p.validate(),
        }
    }

    /// Whether it must survive a restart: everything but ephemeral instances.
    #[must_use]
    pub fn is_durable(&self) -> bool {
        !matches!(self, Self::Instance(i) if i.ephemeral)
    }

    /// The record's value as stored: the JSON of the inner type (not of this enum; the
    /// key path already says the kind).
    #[must_use]
    pub fn to_value(&self) -> Vec<u8> {
        let v = match self {
            Self::Instance(i) => serde_json::to_vec(&**i),
            Self::Service(s) => serde_json::to_vec(&**s),
            Self::Config(c) => serde_json::to_vec(&**c),
            Self::Plugin(p) => serde_json::to_vec(&**p),
        };
        // Serializing these plain structs cannot fail (string keys, no custom serializers).
        v.unwrap_or_default()
    }

    /// Decodes a stored value for `key`, validating it and checking that it belongs there.
    pub fn from_value(key: &RecordKey, value: &[u8]) -> Result<Self, ValidationError> {
        let bad = |e: serde_json::Error| ValidationError::InvalidValue { path: key.path(), reason: e.to_string() };
        let record = match key {
            RecordKey::Instance(_) => Self::Instance(Arc::new(serde_json::from_slice(value).map_err(bad)?)),
            RecordKey::Service(_) => Self::Service(Arc::new(serde_json::from_slice(value).map_err(bad)?)),
            RecordKey::Config(_) => Self::Config(Arc::new(serde_json::from_slice(value).map_err(bad)?)),
            RecordKey::Plugin(_) => Self::Plugin(Arc::new(serde_json::from_slice(value).map_err(bad)?)),
        };
        record.validate()?;
        if &record.key() != key {
            return Err(ValidationError::InvalidValue {
                path: key.path(),
                reason: format!("the value belongs under {}", record.key().path()),
            });
        }
        Ok(record)
    }
}

/// The key of a [`Record`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "key", rename_all = "snake_case")]
pub enum RecordKey {
    /// An instance.
    Instance(InstanceKey),
    /// A service's settings.
    Service(ServiceKey),
    /// A config entry.
    Config(ConfigKey),
    /// A plugin record.
    Plugin(PluginName),
}

impl RecordKey {
    /// The key's path in the documented layout, without a backend prefix.
    #[must_use]
    pub fn path(&self) -> String {
        match self {
            Self::Instance(k) => {
                format!("instances/{}/{}/{}/{}", k.service.namespace, k.service.group, k.service.service, k.id)
            }
            Self::Service(k) => format!("services/{}/{}/{}", k.namespace, k.group, k.service),
            Self::Config(k) => format!("configs/{}/{}/{}", k.namespace, k.group, k.data_id),
            Self::Plugin(n) => format!("plugins/{n}"),
        }
    }

    /// Parses a path made by [`RecordKey::path`].
    pub fn parse_path(path: &str) -> Result<Self, ValidationError> {
        let bad = || ValidationError::BadKeyPath(path.to_owned());
        let parts: Vec<&str> = path.split('/').collect();
        let service = |ns: &str, g: &str, s: &str| -> Result<ServiceKey, ValidationError> {
            Ok(ServiceKey::new(Namespace::new(ns)?, Group::new(g)?, ServiceName::new(s)?))
        };
        match parts.as_slice() {
            ["instances", ns, g, s, id] => {
                Ok(Self::Instance(InstanceKey { service: service(ns, g, s)?, id: InstanceId::new(*id)? }))
            }
            ["services", ns, g, s] => Ok(Self::Service(service(ns, g, s)?)),
            ["configs", ns, g, id] => Ok(Self::Config(ConfigKey {
                namespace: Namespace::new(*ns)?,
                group: Group::new(*g)?,
                data_id: DataId::new(*id)?,
            })),
            ["plugins", name] => Ok(Self::Plugin(PluginName::new(*name)?)),
            _ => Err(bad()),
        }
    }

    /// The namespace the key lives in; plugins live in none.
    #[must_use]
    pub fn namespace(&self) -> Option<&Namespace> {
        match self {
            Self::Instance(k) => Some(&k.service.namespace),
            Self::Service(k) => Some(&k.namespace),
            Self::Config(k) => Some(&k.namespace),
            Self::Plugin(_) => None,
        }
    }

    /// The service the key belongs to, if any.
    #[must_use]
    pub fn service(&self) -> Option<&ServiceKey> {
        match self {
            Self::Instance(k) => Some(&k.service),
            Self::Service(k) => Some(k),
            Self::Config(_) | Self::Plugin(_) => None,
        }
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ServiceKey {
        ServiceKey::parse("prod/g/orders").unwrap()
    }

    #[test]
    fn instance_validation() {
        let mut i = Instance::new(svc(), "10.0.0.1".parse().unwrap(), 8080);
        assert_eq!(i.id.as_str(), "10.0.0.1:8080");
        assert!(i.validate().is_ok());
        i.weight = 10_001;
        assert_eq!(i.validate(), Err(ValidationError::WeightOutOfRange(10_001)));
        i.weight = 10_000;
        i.metadata.insert("k".into(), "v".repeat(4095));
        assert_eq!(i.validate(), Ok(()), "exactly 4096 bytes is allowed");
        i.metadata.insert("k".into(), "v".repeat(4096));
        assert!(matches!(i.validate(), Err(ValidationError::MetadataTooLarge { size: 4097, max: 4096 })));
        i.metadata.clear();
        i.port = 0;
        assert_eq!(i.validate(), Err(ValidationError::ZeroPort));
    }

    #[test]
    fn ipv6_ids_are_valid() {
        let i = Instance::new(svc(), "::1".parse().unwrap(), 80);
        assert_eq!(i.id.as_str(), "::1:80");
        i.validate().expect("an instance on an IPv6 address validates");
        let k = RecordKey::Instance(i.key());
        assert_eq!(RecordKey::parse_path(&k.path()).unwrap(), k, "its key path round-trips");
        let full = Instance::new(svc(), "2001:db8::8a2e:370:7334".parse().unwrap(), 65535);
        full.validate().expect("a long IPv6 address validates");
    }

    #[test]
    fn paths_round_trip() {
        let i = Instance::new(svc(), "10.0.0.1".parse().unwrap(), 8080);
        let k = RecordKey::Instance(i.key());
        assert_eq!(k.path(), "instances/prod/g/orders/10.0.0.1:8080");
        assert_eq!(RecordKey::parse_path(&k.path()).unwrap(), k);
        assert!(RecordKey::parse_path("instances/prod/g").is_err());
        assert!(RecordKey::parse_path("other/x").is_err());
    }

    #[test]
    fn values_are_checked_against_their_key() {
        let i = Instance::new(svc(), "10.0.0.1".parse().unwrap(), 8080);
        let rec = Record::Instance(Arc::new(i));
        let value = rec.to_value();
        assert_eq!(Record::from_value(&rec.key(), &value).unwrap(), rec);
        let other = RecordKey::parse_path("instances/prod/g/orders/other").unwrap();
        let moved = Record::from_value(&other, &value).unwrap_err();
        assert!(matches!(&moved, ValidationError::InvalidValue { path, .. } if *path == other.path()), "{moved}");
        assert!(moved.to_string().contains(&format!("belongs under {}", rec.key().path())), "{moved}");
        let garbage = Record::from_value(&rec.key(), b"{not json").unwrap_err();
        assert!(matches!(garbage, ValidationError::InvalidValue { .. }), "{garbage}");
        assert!(!garbage.to_string().contains("is not a sextant key path"), "the key path is fine: {garbage}");
        let mut bad: serde_json::Value = serde_json::from_slice(&value).unwrap();
        bad["weight"] = 20_000.into();
        assert!(Record::from_value(&rec.key(), bad.to_string().as_bytes()).is_err());
    }

    #[test]
    fn config_versions_follow_content() {
        let key = ConfigKey::parse("app.yaml").unwrap();
        let a = ConfigEntry::new(key.clone(), "a: 1").unwrap();
        let b = ConfigEntry::new(key.clone(), "a: 2").unwrap();
        assert_ne!(a.version, b.version);
        let mut forged = a.clone();
        forged.content = "a: 3".into();
        assert_eq!(forged.validate(), Err(ValidationError::ConfigVersionMismatch));
        assert!(matches!(
            ConfigEntry::new(key, "x".repeat(MAX_CONFIG_BYTES + 1)),
            Err(ValidationError::ContentTooLarge { .. })
        ));
    }

    #[test]
    fn a_config_entry_remembers_what_it_replaced_newest_first_and_twenty_at_most() {
        let key = ConfigKey::parse("ns/g/app").unwrap();
        let mut entry = ConfigEntry::new(key.clone(), "v0").unwrap();
        let first = entry.version.clone();
        for n in 1..=25u64 {
            let next = ConfigEntry::new(key.clone(), format!("v{n}")).unwrap();
            let (before, size) = (entry.version.clone(), entry.content.len() as u64);
            entry = entry.replaced_by(next, 1000 + n);
            assert_eq!(entry.history[0].version, before);
            assert_eq!((entry.history[0].size, entry.history[0].replaced_at_unix_ms), (size, 1000 + n));
            entry.validate().unwrap();
        }
        assert_eq!(entry.history.len(), CONFIG_HISTORY);
        assert!(entry.history.iter().all(|v| v.version != first), "the oldest went");
        // The same content again replaces nothing.
        let same = ConfigEntry::new(key, "v25").unwrap();
        assert_eq!(entry.replaced_by(same, 9999).history, entry.history);
        let mut long = entry.clone();
        long.history.push(long.history[0].clone());
        assert!(matches!(long.validate(), Err(ValidationError::ConfigHistoryTooLong { len: 21, max: 20 })));
    }

    #[test]
    fn a_candidate_is_served_to_the_readers_its_rule_matches_promoted_with_history_and_bounded_with_the_content() {
        use crate::{Change, Event, Revision, StoreSnapshot};
        let key = ConfigKey::parse("ns/g/app").unwrap();
        let stable = ConfigEntry::new(key.clone(), "v1").unwrap();
        let rule: GrayRule = "env=canary".parse().unwrap();
        let gray = stable.with_candidate("v2".into(), rule, 5).unwrap();
        let canary = Reader { id: None, labels: [("env".to_owned(), "canary".to_owned())].into() };
        let prod = Reader { id: Some("gw-1".into()), labels: [("env".to_owned(), "prod".to_owned())].into() };
        let (as_canary, as_prod) = (gray.for_reader(&canary), gray.for_reader(&prod));
        assert_eq!((as_canary.content.as_str(), as_prod.content.as_str()), ("v2", "v1"));
        assert_eq!(as_canary.version, sha256_hex(b"v2"));
        assert!(as_canary.beta.is_none() && as_prod.beta.is_none(), "a reader is not sent the candidate");
        as_canary.validate().unwrap();

        // A write of the stable version keeps the candidate; promoting puts the stable version
        // first in the history.
        let rewritten = gray.replaced_by(ConfigEntry::new(key.clone(), "v1b").unwrap(), 6);
        assert_eq!(rewritten.beta, gray.beta);
        let promoted = rewritten.promoted(7).unwrap();
        assert_eq!((promoted.content.as_str(), promoted.beta.as_ref()), ("v2", None));
        assert_eq!(promoted.history[0].version, sha256_hex(b"v1b"));
        assert_eq!(promoted.history[1].version, sha256_hex(b"v1"));
        assert!(promoted.promoted(8).is_none(), "nothing left to promote");

        // Both contents together are bounded; a tampered candidate version is refused.
        let big = ConfigEntry::new(key.clone(), "x".repeat(MAX_CONFIG_BYTES - 10)).unwrap();
        let too_big = big.with_candidate("y".repeat(11), "ids=a".parse().unwrap(), 0);
        assert!(matches!(too_big, Err(ValidationError::CandidateTooLarge { .. })), "{too_big:?}");
        let mut tampered = gray.clone();
        if let Some(b) = tampered.beta.as_mut() {
            b.content.push('!');
        }
        assert_eq!(tampered.validate(), Err(ValidationError::ConfigVersionMismatch));

        // Events and snapshots: tailored only when they hold a candidate.
        let event = |record: Record| Event { revision: Revision(3), change: Change::Upsert { record } };
        let plain = event(Record::Config(Arc::new(stable.clone())));
        assert!(plain.for_reader(&canary).is_none());
        let tailored = event(Record::Config(Arc::new(gray.clone()))).for_reader(&canary).unwrap();
        assert!(matches!(&tailored.change, Change::Upsert { record: Record::Config(c) } if c.content == "v2"));
        let snapshot = StoreSnapshot { revision: Revision(3), records: vec![Record::Config(Arc::new(gray))] };
        let reset = Event { revision: Revision(3), change: Change::Reset { snapshot: Arc::new(snapshot) } };
        let tailored = reset.for_reader(&prod).unwrap();
        assert!(
            matches!(&tailored.change, Change::Reset { snapshot } if matches!(&snapshot.records[0], Record::Config(c) if c.content == "v1" && c.beta.is_none()))
        );
    }

    #[test]
    fn plugin_bindings_and_validation() {
        let orders = svc();
        let other = ServiceKey::parse("dev/g/orders").unwrap();
        assert_eq!(PluginBinding::parse("").unwrap(), PluginBinding::None);
        assert_eq!(PluginBinding::parse("*").unwrap().covers(&orders), Some(1));
        assert_eq!(PluginBinding::parse("prod").unwrap().covers(&orders), Some(2));
        assert_eq!(PluginBinding::parse("prod").unwrap().covers(&other), None);
        assert_eq!(PluginBinding::parse("prod/g/orders").unwrap().covers(&orders), Some(3));
        assert_eq!(PluginBinding::parse("prod/g/orders").unwrap().covers(&other), None);
        assert_eq!(PluginBinding::None.covers(&orders), None);
        assert!(PluginBinding::parse("a/b").is_err());
        assert!(PluginBinding::parse("bad name!").is_err());

        let sha = sha256_hex(b"x");
        let mut p = PluginRecord {
            name: PluginName::new("p2c").unwrap(),
            kind: "balancer".into(),
            sha256: sha.clone(),
            size: 1,
            binding: "prod".into(),
            config: String::new(),
            loaded_at_unix_ms: 0,
            history: Vec::new(),
            forward: Vec::new(),
            bad: Vec::new(),
            faults: Vec::new(),
            rollout: None,
        };
        assert!(p.validate().is_ok());
        assert_eq!(p.config_or_default(), "{}");
        // Versions read apart by configuration; none (or `{}`) adds nothing.
        assert_eq!(p.version(), sha[..12]);
        assert_eq!(version_label(&sha, "{}"), sha[..12]);
        let a = version_label(&sha, r#"{"share": 5}"#);
        let b = version_label(&sha, r#"{"share": 6}"#);
        assert!(a.starts_with(&format!("{}+", &sha[..12])) && a.len() == 21 && a != b, "{a} {b}");
        p.binding = "a/b".into();
        assert!(p.validate().is_err(), "a binding that parses as neither namespace nor service");
        p.binding = "*".into();
        p.config = "x".repeat(MAX_PLUGIN_CONFIG + 1);
        assert!(matches!(p.validate(), Err(ValidationError::FieldTooLong { field: "config", .. })));
        p.config = String::new();
        let v = PluginVersion { sha256: sha, size: 1, config: String::new(), loaded_at_unix_ms: 0 };
        p.history = vec![v; PLUGIN_HISTORY + 1];
        assert!(matches!(p.validate(), Err(ValidationError::FieldTooLong { field: "history", .. })));
        p.history.clear();
        p.bad = vec![BadVersion { sha256: "not-a-sha".into(), reason: "traps".into(), at_unix_ms: 1 }];
        assert!(p.validate().is_err(), "a bad version's sha256 is checked");
        p.bad[0].sha256 = sha256_hex(b"x");
        assert!(p.validate().is_ok());
        assert_eq!(p.bad_reason(&sha256_hex(b"x")), Some("traps"));
        assert_eq!(p.bad_reason(&sha256_hex(b"y")), None);
        // Records written before `config` and `history` existed still read.
        let old = r#"{"name":"p","kind":"health","sha256":"SHA","size":3,"loaded_at_unix_ms":5}"#;
        let old: PluginRecord = serde_json::from_str(&old.replace("SHA", &sha256_hex(b"y"))).unwrap();
        assert!(old.validate().is_ok() && old.history.is_empty() && old.binding.is_empty());
    }
}
