//! Every message of protocol version 1, and its error codes.
//!
//! Messages are JSON objects tagged by `"type"`. A client sends [`Request`]s, the server
//! answers with [`Response`]s. Field encodings (names, records, scopes, events) are the core
//! model's serde forms; `docs/protocol.md` spells each one out.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::frame::{FrameError, MAX_FRAME_LEN};
use sextant_core::{
    Change, ConfigEntry, ConfigKey, Event, GrayRule, Instance, InstanceId, LeaseId, PluginName, PluginRecord, Reader,
    Record, Revision, Scope, ServiceKey, ServiceSpec, StoreSnapshot,
};

/// The QUIC ALPN of protocol version 1.
pub const ALPN: &[u8] = b"sextant/1";
/// The version carried in `hello` / `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// What keeps an instance registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Binding {
    /// Until deregistered; survives restarts (a persistent instance).
    Persistent,
    /// While this connection lives, plus the server's grace period after it is lost.
    Connection,
    /// While the named lease is kept alive.
    Lease {
        /// The lease.
        lease: LeaseId,
    },
    /// On a new lease with this TTL, returned in `written.lease`.
    Ttl {
        /// TTL in milliseconds.
        ttl_ms: u64,
    },
}

/// A client's request. Each travels on its own bidirectional stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// The first request of a connection: version and credentials.
    Hello {
        /// Protocol version the client speaks.
        version: u32,
        /// Access token, if the server requires one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Free-form client name for logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// Liveness and latency probe.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Register (or replace) an instance. `instance.ephemeral` is set from `binding`.
    Register {
        /// The instance.
        instance: Instance,
        /// What keeps it registered.
        binding: Binding,
    },
    /// Remove an instance.
    Deregister {
        /// Its service.
        service: ServiceKey,
        /// Its id.
        id: InstanceId,
    },
    /// Grant a lease.
    GrantLease {
        /// TTL in milliseconds (100..=86400000).
        ttl_ms: u64,
    },
    /// Keep a lease alive for another TTL.
    Keepalive {
        /// The lease.
        lease: LeaseId,
    },
    /// Revoke a lease, deregistering its instances.
    RevokeLease {
        /// The lease.
        lease: LeaseId,
    },
    /// Set a service's settings (protection threshold, metadata).
    PutService {
        /// The settings.
        spec: ServiceSpec,
    },
    /// One service's current snapshot.
    GetService {
        /// The service.
        service: ServiceKey,
    },
    /// Every record of a scope.
    List {
        /// What to list.
        scope: Scope,
    },
    /// Follow a scope from a revision: the stream carries `event` responses until closed.
    Subscribe {
        /// What to follow.
        scope: Scope,
        /// The last revision the client saw (0: none).
        from: Revision,
        /// Who follows: config entries with a candidate come as the version meant for this
        /// reader ([`ConfigEntry::for_reader`]). None: whole entries, candidates included.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reader: Option<Reader>,
    },
    /// Read a config entry.
    ConfigGet {
        /// Its key.
        key: ConfigKey,
        /// Who reads: answered the version meant for this reader
        /// ([`ConfigEntry::for_reader`]). None: the whole entry, its candidate included.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reader: Option<Reader>,
    },
    /// Write a config entry.
    ConfigPut {
        /// Its key.
        key: ConfigKey,
        /// Its content (at most 1 MiB).
        content: String,
        /// The version (sha256 of the content) this write replaces: refused with `conflict`,
        /// nothing written, when the entry is at another version or absent. None: written
        /// whatever is there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replaces: Option<String>,
    },
    /// Delete a config entry.
    ConfigDelete {
        /// Its key.
        key: ConfigKey,
    },
    /// Write a config entry's candidate: `content` served to the readers `rule` matches, the
    /// stable version to every other (replacing any candidate it had). The entry must exist.
    ConfigBeta {
        /// Its key.
        key: ConfigKey,
        /// The candidate's content (with the stable content, at most 1 MiB).
        content: String,
        /// Who is served it.
        rule: GrayRule,
    },
    /// Make a config entry's candidate the version every reader is served.
    ConfigPromote {
        /// Its key.
        key: ConfigKey,
        /// The candidate's version this promotes: refused with `conflict`, nothing written,
        /// when the candidate is another. None: whichever it is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// Withdraw a config entry's candidate: every reader is served the stable version again.
    ConfigWithdraw {
        /// Its key.
        key: ConfigKey,
    },
    /// Pick an instance of a service for one request (for clients without a balancer).
    Pick {
        /// The service.
        service: ServiceKey,
        /// Consistent-hash key, if the service's balancer uses one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash_key: Option<String>,
        /// Request headers, for balancers that route on them (`header-route`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
        /// The instances this request already tried, by address (`IP:PORT`), in order (at
        /// most [`MAX_TRIED`]): a retry. The balancer is told them and steers past them (a
        /// sticky key goes to the next instance it would reach).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tried: Vec<String>,
    },
    /// The plugin records, and the slots this server runs (admin).
    PluginList,
    /// Validates a plugin component and, when it passes, stores it and its record: every
    /// server on the store then activates it for the services its binding covers (admin).
    PluginLoad {
        /// The record's name; loading under an existing name replaces that record's active
        /// version (the old one goes into its history, for rollback).
        name: PluginName,
        /// `balancer`, `health` or `scheduler`; must match what the component exports.
        kind: String,
        /// `NS/GROUP/NAME` (one service), `NS` (a namespace), `*` (every service) or empty.
        #[serde(default)]
        binding: String,
        /// JSON configuration for the plugin's `init`; empty means `{}`.
        #[serde(default)]
        config: String,
        /// The component bytes, base64 (standard alphabet, padded), at most
        /// [`MAX_INLINE_COMPONENT_LEN`] bytes once decoded; empty when `component_sha256`
        /// names it instead.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        component: String,
        /// The sha256 (lowercase hex) of a component sent before with `plugin_upload` (or
        /// already in the store), instead of `component`: how components larger than a frame
        /// are loaded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        component_sha256: Option<String>,
        /// Roll the component out progressively instead of at once: a plan
        /// (`shadow:2m,1%:2m,10%:5m max-error-ratio=1.2`, see the rollout section). The record
        /// must exist, with the same kind and binding, and run no other rollout; its current
        /// version stays the stable one and the component becomes the rollout's candidate.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollout: Option<String>,
    },
    /// Steers the running rollout of a plugin record (admin).
    PluginRollout {
        /// The record.
        name: PluginName,
        /// What to do.
        action: RolloutAction,
    },
    /// One chunk of a component for a later `plugin_load` by `component_sha256` (admin).
    /// Chunks go in order: the first at offset 0, each at the end of the previous one (a
    /// chunk resent at an offset already received must carry the same bytes). When the last
    /// byte arrives the server checks the whole against `sha256`.
    PluginUpload {
        /// The whole component's sha256 (lowercase hex): names the upload.
        sha256: String,
        /// The whole component's size in bytes, at most [`MAX_COMPONENT_LEN`]; the same in
        /// every chunk.
        size: u64,
        /// Where this chunk starts.
        #[serde(default)]
        offset: u64,
        /// The chunk, base64 (standard alphabet, padded): 1 to [`ARTIFACT_CHUNK`] bytes.
        data: String,
    },
    /// Goes back to the version a plugin record replaced, keeping the current one for a
    /// roll forward; with `forward`, returns to the version the last rollback left (admin).
    PluginRollback {
        /// The record.
        name: PluginName,
        /// Roll forward instead of back.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        forward: bool,
    },
    /// One chunk of a stored plugin component, by sha256 (what a gateway fetches to run
    /// the plugins bound to its services; `read` anywhere).
    ArtifactGet {
        /// The component's sha256 (lowercase hex).
        sha256: String,
        /// Byte offset of the chunk.
        #[serde(default)]
        offset: u64,
    },
    /// Deletes a plugin record: the services it covered go back to their next binding or the
    /// native default (admin).
    PluginDelete {
        /// The record.
        name: PluginName,
    },
    /// A host rolled a plugin record's version back on its own (too many faults within its
    /// window): the evidence, for the fleet's verdict. The server keeps it in the record with
    /// the other hosts' faults; once the fleet rule is met (by default one host) the version
    /// is marked bad and the record returns to its newest good version, on every host. Needs
    /// the `report_faults` right (or `admin` on `*`).
    PluginFault {
        /// The record.
        name: PluginName,
        /// The slot's kind: `balancer`, `health` or `scheduler`.
        kind: String,
        /// sha256 of the version that was rolled back.
        sha256: String,
        /// The service whose slot rolled it back.
        service: ServiceKey,
        /// Who reports (a gateway's registration `NS/GROUP/NAME/ID`): faults are counted
        /// per host. 1 to [`MAX_FAULT_FIELD`](sextant_core::MAX_FAULT_FIELD) bytes.
        host: String,
        /// Why (`N faults within ..., last: ...`), at most
        /// [`MAX_FAULT_FIELD`](sextant_core::MAX_FAULT_FIELD) bytes.
        reason: String,
    },
}

/// What `plugin_rollout` does to a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    /// Hold it at its step (its share stays); the judge decides nothing until it resumes.
    Pause,
    /// Go on from where it was paused (the pause does not count as step time).
    Resume,
    /// Go to the next step now (after the last: the candidate becomes the record's version).
    Promote,
    /// Stop it: the stable version serves everywhere.
    Abort,
}

/// What the server made of a `plugin_fault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultDecision {
    /// Kept in the record; not enough hosts have reported a fault yet.
    Pending,
    /// This report met the fleet rule: the version is marked bad and the record went back
    /// to its newest good version.
    MarkedBad,
    /// Changed nothing, for the reason given.
    Ignored,
}

/// Why a `plugin_fault` changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoredFault {
    /// No record by that name.
    NoRecord,
    /// The record is of another kind.
    WrongKind,
    /// The version is already marked bad (a host that kept reporting after the fleet
    /// rolled it back).
    AlreadyBad,
    /// The record's active version is another one (a fault about a version it no longer,
    /// or never, ran).
    NotCurrent,
    /// This host's fault about this version is already counted.
    Repeated,
}

impl FaultDecision {
    /// The snake-case name, as on the wire and in metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::MarkedBad => "marked_bad",
            Self::Ignored => "ignored",
        }
    }
}

impl IgnoredFault {
    /// The snake-case name, as on the wire and in metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRecord => "no_record",
            Self::WrongKind => "wrong_kind",
            Self::AlreadyBad => "already_bad",
            Self::NotCurrent => "not_current",
            Self::Repeated => "repeated",
        }
    }
}

/// Largest chunk an `artifact` answer carries (bytes, before base64).
pub const ARTIFACT_CHUNK: usize = 1024 * 1024;

/// Largest plugin component (bytes): uploaded in chunks with `plugin_upload`, stored, fetched
/// with `artifact_get` (64 MiB).
pub const MAX_COMPONENT_LEN: usize = 64 << 20;

/// Largest component `plugin_load` carries itself, in its `component` member (bytes, before
/// base64: the frame limit holds its base64 text); larger ones go through `plugin_upload`.
pub const MAX_INLINE_COMPONENT_LEN: usize = 3_000_000;

/// Encodes component bytes for `plugin_load`.
#[must_use]
pub fn encode_component(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The `plugin_upload` of the chunk of `bytes` (a whole component) that starts at `offset`:
/// at most [`ARTIFACT_CHUNK`] bytes, named by the component's `sha256`. An uploader sends the
/// next one at the `received` its answer gives, until that is the size.
#[must_use]
pub fn upload_chunk(sha256: &str, bytes: &[u8], offset: u64) -> Request {
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
    let end = bytes.len().min(start.saturating_add(ARTIFACT_CHUNK));
    Request::PluginUpload {
        sha256: sha256.to_owned(),
        size: bytes.len() as u64,
        offset,
        data: encode_component(&bytes[start..end]),
    }
}

/// Decodes `plugin_load`'s component field.
///
/// # Errors
/// Not base64, or larger than [`MAX_INLINE_COMPONENT_LEN`].
pub fn decode_component(text: &str) -> Result<Vec<u8>, String> {
    decode_limited(text, MAX_INLINE_COMPONENT_LEN, "the component")
        .map_err(|e| format!("{e} (larger components go through plugin_upload)"))
}

/// Decodes `plugin_upload`'s data field.
///
/// # Errors
/// Not base64, empty, or larger than [`ARTIFACT_CHUNK`].
pub fn decode_chunk(text: &str) -> Result<Vec<u8>, String> {
    let bytes = decode_limited(text, ARTIFACT_CHUNK, "the chunk")?;
    if bytes.is_empty() {
        return Err("the chunk is empty".into());
    }
    Ok(bytes)
}

fn decode_limited(text: &str, limit: usize, what: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    if text.len() / 4 * 3 > limit + 3 {
        return Err(format!("{what} is larger than {limit} bytes"));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("{what} is not valid base64: {e}"))?;
    if bytes.len() > limit {
        return Err(format!("{what} is {} bytes, the limit is {limit}", bytes.len()));
    }
    Ok(bytes)
}

/// Every request `type`.
pub const REQUEST_TYPES: &[&str] = &[
    "hello",
    "ping",
    "register",
    "deregister",
    "grant_lease",
    "keepalive",
    "revoke_lease",
    "put_service",
    "get_service",
    "list",
    "subscribe",
    "config_get",
    "config_put",
    "config_delete",
    "config_beta",
    "config_promote",
    "config_withdraw",
    "pick",
    "plugin_list",
    "plugin_load",
    "plugin_upload",
    "plugin_rollback",
    "plugin_rollout",
    "plugin_delete",
    "artifact_get",
    "plugin_fault",
];

/// Why a request payload is not a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Not a JSON object with a known `type`: a protocol error (the connection is closed).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A known request whose members are missing, of the wrong JSON type or invalid (a name,
    /// an address, a port, a binding, a scope): answered `invalid`, the connection stays.
    #[error("invalid {kind}: {message}")]
    Invalid {
        /// The request's `type`.
        kind: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Request {
    /// Decodes one request payload (a frame's JSON), telling a malformed message from a
    /// known request with invalid contents.
    pub fn decode(payload: &[u8]) -> Result<Self, RequestError> {
        let error = match serde_json::from_slice::<Self>(payload) {
            Ok(request) => return Ok(request),
            Err(e) => e,
        };
        // Only on the error path: look at what it was meant to be.
        let value: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| RequestError::Malformed(e.to_string()))?;
        let Some(kind) = value.get("type").and_then(serde_json::Value::as_str) else {
            return Err(RequestError::Malformed("not a JSON object with a string `type`".into()));
        };
        match REQUEST_TYPES.iter().find(|k| **k == kind) {
            Some(kind) => Err(RequestError::Invalid { kind, message: error.to_string() }),
            None => Err(RequestError::Malformed(format!("unknown request type `{kind}`"))),
        }
    }

    /// The message's `type` tag, for logs and metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Ping { .. } => "ping",
            Self::Register { .. } => "register",
            Self::Deregister { .. } => "deregister",
            Self::GrantLease { .. } => "grant_lease",
            Self::Keepalive { .. } => "keepalive",
            Self::RevokeLease { .. } => "revoke_lease",
            Self::PutService { .. } => "put_service",
            Self::GetService { .. } => "get_service",
            Self::List { .. } => "list",
            Self::Subscribe { .. } => "subscribe",
            Self::ConfigGet { .. } => "config_get",
            Self::ConfigPut { .. } => "config_put",
            Self::ConfigDelete { .. } => "config_delete",
            Self::ConfigBeta { .. } => "config_beta",
            Self::ConfigPromote { .. } => "config_promote",
            Self::ConfigWithdraw { .. } => "config_withdraw",
            Self::Pick { .. } => "pick",
            Self::PluginList => "plugin_list",
            Self::PluginLoad { .. } => "plugin_load",
            Self::PluginUpload { .. } => "plugin_upload",
            Self::PluginRollback { .. } => "plugin_rollback",
            Self::PluginRollout { .. } => "plugin_rollout",
            Self::PluginDelete { .. } => "plugin_delete",
            Self::ArtifactGet { .. } => "artifact_get",
            Self::PluginFault { .. } => "plugin_report",
        }
    }
}

/// A service's snapshot as the protocol carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    /// The service.
    pub service: ServiceKey,
    /// Revision of its last change.
    pub revision: Revision,
    /// Protection threshold in force.
    pub protect_threshold: f32,
    /// Whether the healthy share is below it (then `selected` includes unhealthy instances).
    pub protection_active: bool,
    /// Healthy routable instances.
    #[serde(default)]
    pub healthy: usize,
    /// Routable instances (enabled, weight > 0).
    #[serde(default)]
    pub routable: usize,
    /// Ids of the instances traffic may go to.
    pub selected: Vec<InstanceId>,
    /// Every instance.
    pub instances: Vec<Arc<Instance>>,
    /// Set while the server cannot reach its store (etcd): for how long, in ms. The answer is
    /// the last state the server knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_ms: Option<u64>,
}

/// One plugin slot as a server runs it (`plugin_list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotView {
    /// The service (`NS/GROUP/NAME`).
    pub service: String,
    /// `balancer`, `health` or `scheduler`.
    pub kind: String,
    /// The active plugin: a record name, or a built-in's name.
    pub plugin: String,
    /// `builtin` or `wasm`.
    pub source: String,
    /// sha256 of the active component (wasm only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The slot's version number (rises with every load, rollback or automatic rollback).
    pub version: u64,
    /// When the active version was published, Unix seconds.
    pub loaded_at: u64,
    /// Calls into the active version, its faults by cause and the calls the native default
    /// answered for it (each a field of its own in the JSON form).
    #[serde(flatten)]
    pub counts: sextant_core::PluginCounts,
    /// Sampled call time p50, nanoseconds.
    pub call_p50_ns: u64,
    /// Sampled call time p99, nanoseconds.
    pub call_p99_ns: u64,
    /// The slot's recent history (`load`, `rollback`, `auto-rollback: ...`), newest last.
    #[serde(default)]
    pub events: Vec<String>,
}

/// A plugin load or activation that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginFailure {
    /// The plugin (record name or file name).
    pub plugin: String,
    /// Where it came from: `api`, `dir`, `store`.
    pub source: String,
    /// What was wrong.
    pub error: String,
    /// When, Unix seconds.
    pub at: u64,
}

/// What one plugin record's binding runs on the server that answered `plugin_list`: how many
/// of the services it covers there run it, why the others do not (grouped by reason), and,
/// for a 0.2.0 component, what its shared instances hold.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BindingSummary {
    /// The plugin record's name.
    pub plugin: String,
    /// `balancer`, `health` or `scheduler`.
    pub kind: String,
    /// The record's binding (`*`, a namespace, `NS/GROUP/NAME`).
    pub binding: String,
    /// sha256 of the record's current component.
    pub sha256: String,
    /// The current version's name for people (`SHA12`, `SHA12+CFG8` with a configuration;
    /// see `sextant_core::version_label`).
    #[serde(default)]
    pub version: String,
    /// The slots on this server the binding covers (services it is the most specific
    /// binding for).
    pub services: u64,
    /// How many of them run the record's component.
    pub running: u64,
    /// The others, grouped by why.
    #[serde(default)]
    pub failed: Vec<FailedGroup>,
    /// The contract version of the running component (`0.1.0`, `0.2.0`), when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// Component instances the plugin runs (0.2.0: one per worker thread however many
    /// services; 0.1.0: per service and worker thread).
    #[serde(default)]
    pub instances: u64,
    /// Per-service resources alive in those instances (0.2.0).
    #[serde(default)]
    pub resources: u64,
    /// Instances replaced after a trap, a missed deadline or the memory cap (0.2.0).
    #[serde(default)]
    pub replaced: u64,
    /// Resources lost with them: their services fell back on that call (0.2.0).
    #[serde(default)]
    pub lost: u64,
    /// Other hosts (gateways) whose registration reports running the record's current
    /// version (`active VERSION`, see `hosts`).
    #[serde(default)]
    pub hosts_running: u64,
    /// Other hosts reporting anything else for this record: a refusal, a rollback, or
    /// another version (a swap under way).
    #[serde(default)]
    pub hosts_other: u64,
}

impl BindingSummary {
    /// Counts the hosts of `reports` that run this record's current version and the others.
    pub fn count_hosts(&mut self, reports: &[HostReport]) {
        let active = format!("active {}", self.version);
        for r in reports.iter().filter(|r| r.plugin == self.plugin) {
            if r.state == active {
                self.hosts_running += 1;
            } else {
                self.hosts_other += 1;
            }
        }
    }
}

/// Services of a binding that do not run it, for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FailedGroup {
    /// Why (the load error, or the slot's last event).
    pub reason: String,
    /// How many services.
    pub services: u64,
    /// Up to three of them.
    pub examples: Vec<String>,
}

/// What another host (a gateway) reports about a plugin: read from the
/// `sextant.plugin.NAME` metadata of its registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostReport {
    /// The host's registration: `NS/GROUP/NAME/ID`.
    pub host: String,
    /// Its zone label.
    #[serde(default)]
    pub zone: String,
    /// The plugin record's name.
    pub plugin: String,
    /// `active VERSION`, `failed VERSION: REASON (N of M services)`, or `fallback VERSION: …`
    /// (loaded, but the native default answers for it); see docs/protocol.md.
    pub state: String,
}

/// Where `plugin_load` validated a component on the server that answered: the live
/// snapshots of the services its binding covers there (a bounded sample of them).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Validation {
    /// The services whose live snapshot the component passed on, in name order (at most
    /// the server's sample size, 16).
    pub services: Vec<String>,
    /// How many services with instances the binding covers on that server.
    pub covered: u64,
}

/// Most addresses a `pick` may name as already tried.
pub const MAX_TRIED: usize = 64;

/// Metadata key prefix of a host's plugin reports.
pub const PLUGIN_REPORT_PREFIX: &str = "sextant.plugin.";

/// Metadata key of a gateway's registration: `IP:PORT` of its metrics listener (`GET
/// /metrics`), where a server's admin API reads its live traffic for the console.
pub const GATEWAY_METRICS_KEY: &str = "sextant.gateway.metrics";

/// A gateway's report about a plugin's rollout, as `plugin_list` carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutHostReport {
    /// The plugin record.
    pub plugin: String,
    /// The gateway (`NS/GROUP/NAME/ID`).
    pub host: String,
    /// What it reports.
    pub report: sextant_core::rollout::RolloutReport,
}

/// Metadata key prefix of a gateway's rollout reports (`sextant.rollout.PLUGIN`, a
/// [`RolloutReport`](sextant_core::rollout::RolloutReport) as JSON).
pub const ROLLOUT_REPORT_PREFIX: &str = "sextant.rollout.";

/// The rollout reports about `plugin` in the registrations of `instances`, with the host
/// (`NS/GROUP/NAME/ID`) that made each; a value that does not parse is an `Err` with the
/// reason (the caller ignores it and says so).
pub fn rollout_reports<'a>(
    instances: impl IntoIterator<Item = &'a Instance>,
    plugin: &str,
) -> Vec<(String, Result<sextant_core::rollout::RolloutReport, String>)> {
    let key = format!("{ROLLOUT_REPORT_PREFIX}{plugin}");
    instances
        .into_iter()
        .filter_map(|i| {
            let value = i.metadata.get(&key)?;
            Some((format!("{}/{}", i.service, i.id), serde_json::from_str(value).map_err(|e| e.to_string())))
        })
        .collect()
}

/// The plugin reports in the registrations of `instances`, sorted by plugin then host.
pub fn host_reports<'a>(instances: impl IntoIterator<Item = &'a Instance>) -> Vec<HostReport> {
    let mut reports: Vec<HostReport> = instances
        .into_iter()
        .flat_map(|i| {
            i.metadata.iter().filter_map(move |(k, v)| {
                k.strip_prefix(PLUGIN_REPORT_PREFIX).map(|plugin| HostReport {
                    host: format!("{}/{}", i.service, i.id),
                    zone: i.zone.clone(),
                    plugin: plugin.to_owned(),
                    state: v.to_owned(),
                })
            })
        })
        .collect();
    reports.sort_by(|a, b| (&a.plugin, &a.host).cmp(&(&b.plugin, &b.host)));
    reports
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to `hello`.
    Welcome {
        /// Protocol version the server speaks.
        version: u32,
        /// Server id (for logs).
        server: String,
        /// How long connection-bound instances outlive a lost connection, in ms.
        grace_ms: u64,
    },
    /// Answer to `ping`.
    Pong {
        /// The request's nonce.
        nonce: u64,
    },
    /// A write was applied (and is durable where the record is).
    Written {
        /// Its revision.
        revision: Revision,
        /// The lease the instance hangs on, for `register` with a lease binding.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<LeaseId>,
        /// The config version, for `config_put`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// A lease and its TTL.
    Lease {
        /// The lease.
        lease: LeaseId,
        /// TTL in ms.
        ttl_ms: u64,
    },
    /// Answer to `get_service`.
    Service(ServiceView),
    /// Answer to `list`.
    Records {
        /// Revision the list is consistent at.
        revision: Revision,
        /// The records, sorted by key.
        records: Vec<Record>,
        /// Set while the server cannot reach its store: for how long, in ms.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stale_ms: Option<u64>,
    },
    /// One event of a subscription.
    Event {
        /// The event.
        event: Event,
    },
    /// Part of a `Reset` too large for one frame ([`event_frames`]): records that come
    /// before those of the `Reset` event that follows, in order.
    ResetChunk {
        /// The revision of the `Reset` it belongs to.
        revision: Revision,
        /// Consecutive records of the snapshot (sorted by key).
        records: Vec<Record>,
    },
    /// Answer to `config_get`.
    Config {
        /// The entry, if it exists.
        entry: Option<Arc<ConfigEntry>>,
    },
    /// Answer to `pick`.
    Picked {
        /// The chosen instance; none if no instance may take traffic.
        instance: Option<Arc<Instance>>,
        /// Whether protection was active.
        protection_active: bool,
    },
    /// Answer to `plugin_list`.
    Plugins {
        /// The records.
        plugins: Vec<Arc<PluginRecord>>,
        /// The slots this server runs: one per (service, kind) that has been used, what is
        /// active in each and its counters.
        #[serde(default)]
        slots: Vec<SlotView>,
        /// What other hosts (gateways) report running, from their registrations.
        #[serde(default)]
        hosts: Vec<HostReport>,
        /// Recent plugin loads or activations that failed on this server, newest last.
        #[serde(default)]
        failures: Vec<PluginFailure>,
        /// Per bound record: how many of the services it covers here run it, the others
        /// grouped by reason.
        #[serde(default)]
        bindings: Vec<BindingSummary>,
        /// What gateways report about the rollouts they take part in, from their
        /// registrations.
        #[serde(default)]
        rollouts: Vec<RolloutHostReport>,
    },
    /// Answer to `artifact_get`: at most [`ARTIFACT_CHUNK`] bytes from `offset`.
    Artifact {
        /// The component's sha256.
        sha256: String,
        /// Where this chunk starts.
        offset: u64,
        /// The component's whole size.
        total: u64,
        /// The chunk, base64 (standard alphabet, padded).
        data: String,
    },
    /// Answer to `plugin_upload`: how much of the component the server holds.
    Uploaded {
        /// The component's sha256.
        sha256: String,
        /// Bytes received so far (from offset 0, without gaps).
        received: u64,
        /// The component's whole size.
        size: u64,
    },
    /// Answer to `plugin_load` and `plugin_rollback`: the record as stored.
    PluginWritten {
        /// The record.
        record: Arc<PluginRecord>,
        /// The store revision of the write.
        revision: Revision,
        /// For a `plugin_load` that validated the component: where. Absent for a rollback,
        /// and for a load identical to the record (nothing written).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        validated: Option<Validation>,
    },
    /// Answer to `plugin_fault`.
    PluginFaultTaken {
        /// What the report did.
        decision: FaultDecision,
        /// Why it changed nothing (with `ignored`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ignored: Option<IgnoredFault>,
        /// Hosts whose faults about this version are counted now (with `pending` and
        /// `marked_bad`).
        #[serde(default)]
        hosts: u32,
        /// Hosts the fleet rule asks for.
        #[serde(default)]
        needed: u32,
        /// The store revision of the record's write (none when nothing was written).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revision: Option<Revision>,
    },
    /// The request failed; nothing changed.
    Error {
        /// What failed.
        code: ErrorCode,
        /// For people.
        message: String,
    },
}

impl Response {
    /// An error response.
    pub fn error(code: ErrorCode, message: impl fmt::Display) -> Self {
        Self::Error { code, message: message.to_string() }
    }
}

/// A frame on a subscription stream: an `event`, or the `error` that refused the
/// subscription. Decodes the same bytes as [`Response`] in one pass (an internally tagged
/// enum makes serde buffer the whole frame first), which matters to a client following
/// many subscriptions.
#[derive(Debug, Deserialize)]
#[serde(try_from = "SubscriptionWire")]
pub enum SubscriptionFrame {
    /// `{"type": "event", "event": EVENT}`.
    Event(Event),
    /// `{"type": "reset_chunk", "revision": R, "records": [RECORD…]}`: the first records of
    /// the `Reset` at `revision` that follows (see [`event_frames`]).
    ResetChunk {
        /// The revision of that `Reset`.
        revision: Revision,
        /// Its records, in order.
        records: Vec<Record>,
    },
    /// `{"type": "error", "code": CODE, "message": TEXT}`.
    Error {
        /// What failed.
        code: ErrorCode,
        /// For people.
        message: String,
    },
}

/// The frames that carry `event` on a subscription stream: one `event` frame; or, for a
/// `Reset` too large for one frame ([`MAX_FRAME_LEN`]), `reset_chunk` frames of consecutive
/// records (about half a frame each) followed by the `Reset` event carrying the rest. A
/// client joins them in order ([`ResetAssembler`]).
///
/// # Errors
/// An event other than a `Reset` that does not fit a frame, or a single record that does not
/// (neither can come from the registry, which caps record sizes).
pub fn event_frames(event: &Event) -> Result<Vec<Vec<u8>>, FrameError> {
    let err = match crate::encode(&Response::Event { event: event.clone() }) {
        Ok(frame) => return Ok(vec![frame]),
        Err(e) => e,
    };
    let (FrameError::TooLarge { .. }, Change::Reset { snapshot }) = (&err, &event.change) else { return Err(err) };
    let budget = MAX_FRAME_LEN / 2;
    let records = &snapshot.records;
    let mut groups: Vec<&[Record]> = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, record) in records.iter().enumerate() {
        let len = serde_json::to_vec(record).map_or(budget, |v| v.len() + 1);
        if size + len > budget && i > start {
            groups.push(&records[start..i]);
            (start, size) = (i, 0);
        }
        size += len;
    }
    groups.push(&records[start..]);
    let Some((last, chunks)) = groups.split_last() else { return Err(err) };
    let mut frames = Vec::with_capacity(groups.len());
    for chunk in chunks {
        frames.push(crate::encode(&Response::ResetChunk { revision: event.revision, records: chunk.to_vec() })?);
    }
    let rest = StoreSnapshot { revision: snapshot.revision, records: last.to_vec() };
    let reset = Event { revision: event.revision, change: Change::Reset { snapshot: Arc::new(rest) } };
    frames.push(crate::encode(&Response::Event { event: reset })?);
    Ok(frames)
}

/// Joins the `reset_chunk` frames of a subscription to the `Reset` they precede.
#[derive(Debug, Default)]
pub struct ResetAssembler {
    pending: Option<(Revision, Vec<Record>)>,
}

impl ResetAssembler {
    /// Keeps a chunk's records. Chunks of another revision than those kept replace them (a
    /// `Reset` that never came).
    pub fn chunk(&mut self, revision: Revision, records: Vec<Record>) {
        match &mut self.pending {
            Some((r, kept)) if *r == revision => kept.extend(records),
            _ => self.pending = Some((revision, records)),
        }
    }

    /// The event whole: a `Reset` with the records of the chunks before its own.
    ///
    /// # Errors
    /// Chunks that belong to no `Reset` of their revision (a peer that breaks the protocol):
    /// they are dropped.
    pub fn event(&mut self, event: Event) -> Result<Event, String> {
        let Some((revision, mut records)) = self.pending.take() else { return Ok(event) };
        match &event.change {
            Change::Reset { snapshot } if revision == event.revision => {
                records.extend(snapshot.records.iter().cloned());
                let whole = StoreSnapshot { revision: snapshot.revision, records };
                Ok(Event { revision: event.revision, change: Change::Reset { snapshot: Arc::new(whole) } })
            }
            _ => Err(format!(
                "{} reset_chunk records of revision {revision} not followed by their reset (got an event of revision {})",
                records.len(),
                event.revision
            )),
        }
    }
}

#[derive(Deserialize)]
struct SubscriptionWire {
    #[serde(rename = "type")]
    kind: String,
    event: Option<Event>,
    code: Option<ErrorCode>,
    message: Option<String>,
    revision: Option<Revision>,
    records: Option<Vec<Record>>,
}

impl TryFrom<SubscriptionWire> for SubscriptionFrame {
    type Error = String;

    fn try_from(w: SubscriptionWire) -> Result<Self, String> {
        match (w.kind.as_str(), w.event, w.code) {
            ("event", Some(event), _) => Ok(Self::Event(event)),
            ("reset_chunk", ..) => match (w.revision, w.records) {
                (Some(revision), Some(records)) => Ok(Self::ResetChunk { revision, records }),
                (None, _) => Err("missing field `revision`".into()),
                (_, None) => Err("missing field `records`".into()),
            },
            ("error", _, Some(code)) => Ok(Self::Error { code, message: w.message.unwrap_or_default() }),
            ("event", None, _) => Err("missing field `event`".into()),
            ("error", _, None) => Err("missing field `code`".into()),
            (other, ..) => Err(format!("unexpected `{other}` frame on a subscription stream")),
        }
    }
}

/// Error codes: in `error` responses by name, and as QUIC application close codes by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed, truncated or oversized frame, unknown message type, or a message out of
    /// order (anything before `hello`). Closes the connection.
    ProtocolError,
    /// The client's version is not spoken here. Closes the connection.
    UnsupportedVersion,
    /// Missing or unknown token. Closes the connection.
    Unauthenticated,
    /// A request stream did not complete in time. Closes the connection.
    Timeout,
    /// The token lacks the right for this namespace.
    Forbidden,
    /// Invalid name, weight, metadata, TTL, binding...
    Invalid,
    /// No such instance, service or config entry.
    NotFound,
    /// The lease expired, was revoked or never existed.
    LeaseNotFound,
    /// The store could not complete the request; nothing was acknowledged.
    Unavailable,
    /// A server bug.
    Internal,
    /// A plugin component failed validation (not wasm, a core module, another world or
    /// contract version, a refused configuration, a failed self-test). Nothing changed.
    PluginRejected,
    /// An abuse limit was reached (request rate, registrations or watches per connection);
    /// the message names the limit and the server option that raises it. Nothing changed.
    Limited,
    /// A write that lost to another write of the same record made at the same time (two
    /// loads of one plugin name through different servers, which kept retrying); the message
    /// names the revision it lost to. Nothing changed: read again and retry.
    Conflict,
}

impl ErrorCode {
    /// The number used as QUIC application error code (0 is a normal close).
    #[must_use]
    pub fn as_u32(self) -> u32 {
        match self {
            Self::ProtocolError => 1,
            Self::UnsupportedVersion => 2,
            Self::Unauthenticated => 3,
            Self::Timeout => 4,
            Self::Forbidden => 10,
            Self::Invalid => 11,
            Self::NotFound => 12,
            Self::LeaseNotFound => 13,
            Self::Unavailable => 14,
            Self::Internal => 15,
            Self::PluginRejected => 16,
            Self::Limited => 17,
            Self::Conflict => 18,
        }
    }

    /// The code with number `n`.
    #[must_use]
    pub fn from_u32(n: u32) -> Option<Self> {
        [
            Self::ProtocolError,
            Self::UnsupportedVersion,
            Self::Unauthenticated,
            Self::Timeout,
            Self::Forbidden,
            Self::Invalid,
            Self::NotFound,
            Self::LeaseNotFound,
            Self::Unavailable,
            Self::Internal,
            Self::PluginRejected,
            Self::Limited,
            Self::Conflict,
        ]
        .into_iter()
        .find(|c| c.as_u32() == n)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms_are_stable() {
        let hello = Request::Hello { version: 1, token: None, client: None };
        assert_eq!(serde_json::to_string(&hello).unwrap(), r#"{"type":"hello","version":1}"#);
        let sub =
            Request::Subscribe { scope: Scope::Namespace("prod".parse().unwrap()), from: Revision(42), reader: None };
        assert_eq!(
            serde_json::to_string(&sub).unwrap(),
            r#"{"type":"subscribe","scope":{"scope":"namespace","key":"prod"},"from":42}"#
        );
        let b = Binding::Ttl { ttl_ms: 5000 };
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"{"kind":"ttl","ttl_ms":5000}"#);
        let e = Response::error(ErrorCode::LeaseNotFound, "gone");
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"type":"error","code":"lease_not_found","message":"gone"}"#);
        assert_eq!(serde_json::to_string(&Request::PluginList).unwrap(), r#"{"type":"plugin_list"}"#);
        let rb = Request::PluginRollback { name: "p2c".parse().unwrap(), forward: false };
        assert_eq!(serde_json::to_string(&rb).unwrap(), r#"{"type":"plugin_rollback","name":"p2c"}"#);
        let rf = Request::PluginRollback { name: "p2c".parse().unwrap(), forward: true };
        assert_eq!(serde_json::to_string(&rf).unwrap(), r#"{"type":"plugin_rollback","name":"p2c","forward":true}"#);
    }

    #[test]
    fn subscription_frames_decode_in_any_member_order() {
        let instance = sextant_core::Instance::new(
            sextant_core::ServiceKey::parse("ns/g/orders").unwrap(),
            std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
            8080,
        );
        let event = Event {
            revision: Revision(7),
            change: sextant_core::Change::Upsert { record: sextant_core::Record::Instance(instance.into()) },
        };
        let bytes = serde_json::to_vec(&Response::Event { event: event.clone() }).unwrap();
        let SubscriptionFrame::Event(decoded) = serde_json::from_slice(&bytes).unwrap() else { panic!() };
        assert_eq!(decoded, event);
        // A client in another language may order members as it likes, and add some.
        let json = r#"{"event":{"key":{"kind":"service","key":{"namespace":"ns","group":"g","service":"orders"}},
            "extra":1,"type":"remove","revision":9},"type":"event"}"#;
        let SubscriptionFrame::Event(e) = serde_json::from_str(json).unwrap() else { panic!() };
        assert_eq!(e.revision, Revision(9));
        assert!(matches!(e.change, sextant_core::Change::Remove { .. }));
        let error = serde_json::from_str(r#"{"type":"error","code":"forbidden","message":"no"}"#).unwrap();
        assert!(matches!(error, SubscriptionFrame::Error { code: ErrorCode::Forbidden, .. }));
        // A change without what it needs, or another message, is refused.
        for bad in [
            r#"{"type":"event","event":{"revision":1,"type":"upsert"}}"#,
            r#"{"type":"event","event":{"revision":1,"type":"rename","record":null}}"#,
            r#"{"type":"pong","nonce":1}"#,
            r#"{"type":"event"}"#,
        ] {
            assert!(serde_json::from_str::<SubscriptionFrame>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_with_invalid_contents_are_told_from_malformed_ones() {
        let ok = Request::decode(br#"{"type":"ping","nonce":3,"extra":true}"#).unwrap();
        assert_eq!(ok, Request::Ping { nonce: 3 });
        // Every known type with nothing in it: invalid (members missing), not malformed.
        for kind in REQUEST_TYPES.iter().filter(|k| **k != "plugin_list") {
            let payload = format!(r#"{{"type":"{kind}"}}"#);
            match Request::decode(payload.as_bytes()) {
                Err(RequestError::Invalid { kind: k, .. }) => assert_eq!(k, *kind),
                other => panic!("{kind}: {other:?}"),
            }
        }
        let bad_name =
            br#"{"type":"deregister","service":{"namespace":"a","group":"b","service":"bad name!"},"id":"x"}"#;
        assert!(matches!(Request::decode(bad_name), Err(RequestError::Invalid { kind: "deregister", .. })));
        for malformed in [&b"{{{"[..], b"[1,2]", br#"{"nonce":1}"#, br#"{"type":7}"#, br#"{"type":"reboot"}"#] {
            assert!(matches!(Request::decode(malformed), Err(RequestError::Malformed(_))), "{malformed:?}");
        }
    }

    #[test]
    fn components_round_trip_and_are_bounded() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        assert_eq!(decode_component(&encode_component(&bytes)).unwrap(), bytes);
        assert!(decode_component("not base64!").unwrap_err().contains("base64"));
        let big = encode_component(&vec![0u8; MAX_INLINE_COMPONENT_LEN + 1]);
        let e = decode_component(&big).unwrap_err();
        assert!(e.contains("limit") && e.contains("plugin_upload"), "{e}");
        let huge = "A".repeat(MAX_INLINE_COMPONENT_LEN * 2);
        assert!(decode_component(&huge).unwrap_err().contains("larger"), "refused before decoding");
        // An upload chunk: 1 to ARTIFACT_CHUNK bytes.
        assert_eq!(decode_chunk(&encode_component(&bytes)).unwrap(), bytes);
        assert!(decode_chunk("").unwrap_err().contains("empty"));
        let e = decode_chunk(&encode_component(&vec![1u8; ARTIFACT_CHUNK + 1])).unwrap_err();
        assert!(e.contains("limit"), "{e}");
        // The largest inline component's base64 fits a frame, with room for the rest.
        assert!(MAX_INLINE_COMPONENT_LEN.div_ceil(3) * 4 + 64 * 1024 < MAX_FRAME_LEN);
    }

    /// The numbers and names are the ones docs/protocol.md's table gives, every row of it,
    /// and no code is missing from the table.
    #[test]
    fn error_codes_are_the_documented_names_and_numbers() {
        let doc = include_str!("../../../docs/protocol.md");
        let table = doc.split("## 7. Error codes").nth(1).and_then(|t| t.split("\n## ").next()).unwrap();
        let mut rows = 0;
        for line in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (name, number) = (cells[1].trim_matches('`'), cells[2].parse::<u32>().unwrap());
            let code = ErrorCode::from_u32(number).unwrap_or_else(|| panic!("{number} is documented as {name}"));
            assert_eq!(code.to_string(), name, "number {number}");
            assert_eq!(code.as_u32(), number);
            let parsed: ErrorCode = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(parsed, code);
            rows += 1;
        }
        let known = (0..64).filter_map(ErrorCode::from_u32).count();
        assert_eq!(rows, known, "every code has a row, every row a code");
        assert_eq!(rows, 13);
        assert_eq!(ErrorCode::from_u32(0), None, "0 is a normal close");
    }

    fn big_reset(n: u16) -> Event {
        let records: Vec<Record> = (1..=n)
            .map(|port| {
                let mut i = Instance::new(ServiceKey::parse("big/g/svc").unwrap(), "10.0.0.1".parse().unwrap(), port);
                i.metadata.insert("blob".into(), "x".repeat(3900));
                Record::Instance(Arc::new(i))
            })
            .collect();
        let snapshot = StoreSnapshot { revision: Revision(9), records };
        Event { revision: Revision(9), change: Change::Reset { snapshot: Arc::new(snapshot) } }
    }

    fn decode_all(frames: &[Vec<u8>]) -> Vec<SubscriptionFrame> {
        let mut decoder = crate::FrameDecoder::new();
        let mut out = Vec::new();
        for f in frames {
            assert!(f.len() <= MAX_FRAME_LEN + 4, "every frame fits: {}", f.len());
            decoder.push(f);
            while let Some(frame) = decoder.decode::<SubscriptionFrame>().unwrap() {
                out.push(frame);
            }
        }
        out
    }

    #[test]
    fn a_reset_too_large_for_a_frame_goes_in_chunks_and_is_joined_whole() {
        let small = big_reset(10);
        assert_eq!(event_frames(&small).unwrap().len(), 1, "a reset that fits is one event frame");

        let event = big_reset(2500);
        let frames = event_frames(&event).unwrap();
        assert!(frames.len() >= 3, "about 10 MB in half-frame chunks: {}", frames.len());
        let decoded = decode_all(&frames);
        let mut assembler = ResetAssembler::default();
        let mut whole = None;
        for (n, frame) in decoded.into_iter().enumerate() {
            match frame {
                SubscriptionFrame::ResetChunk { revision, records } => {
                    assert!(n + 1 < frames.len(), "chunks come first");
                    assembler.chunk(revision, records);
                }
                SubscriptionFrame::Event(e) => whole = Some(assembler.event(e).unwrap()),
                SubscriptionFrame::Error { .. } => panic!("no error frame"),
            }
        }
        assert_eq!(whole, Some(event), "the records joined in order: the reset as it was");

        // Chunks not followed by their reset: an error, and they are dropped.
        let mut assembler = ResetAssembler::default();
        assembler.chunk(Revision(3), Vec::new());
        let upsert = Event {
            revision: Revision(4),
            change: Change::Remove { key: sextant_core::RecordKey::Service(ServiceKey::parse("a/b/c").unwrap()) },
        };
        assert!(assembler.event(upsert.clone()).is_err());
        assert_eq!(assembler.event(upsert.clone()).unwrap(), upsert, "nothing left over");
        assert!(serde_json::from_str::<SubscriptionFrame>(r#"{"type":"reset_chunk","revision":3}"#).is_err());
    }
}
