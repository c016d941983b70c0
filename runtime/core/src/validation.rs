//! Input the core refuses before anything changes: [`ValidationError`], one variant per
//! rule (names, weights, metadata, records, TTLs).

/// Input that is not a valid name, weight, metadata map or record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// A name is empty.
    #[error("{kind} must not be empty")]
    EmptyName {
        /// Which name ("namespace", "service", ...).
        kind: &'static str,
    },
    /// A name is longer than its limit.
    #[error("{kind} is {len} bytes long, the limit is {max}")]
    NameTooLong {
        /// Which name.
        kind: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name holds a character outside `[A-Za-z0-9._:-]`.
    #[error("{kind} {value:?} has the character {ch:?}; allowed are A-Z a-z 0-9 . _ : -")]
    BadNameChar {
        /// Which name.
        kind: &'static str,
        /// The rejected value.
        value: String,
        /// The first bad character.
        ch: char,
    },
    /// A weight outside 0..=10000.
    #[error("weight {0} is out of range 0..=10000")]
    WeightOutOfRange(u32),
    /// Metadata bigger than 4 KiB in total (keys plus values).
    #[error("metadata is {size} bytes in total, the limit is {max}")]
    MetadataTooLarge {
        /// Total size of keys and values.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An empty metadata key.
    #[error("metadata keys must not be empty")]
    EmptyMetadataKey,
    /// A zone holding whitespace or a control character.
    #[error("zone {0:?} holds whitespace or a control character")]
    InvalidZone(String),
    /// Zone or version longer than its limit.
    #[error("{field} is {len} bytes long, the limit is {max}")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Port 0 is not an address an instance can serve on.
    #[error("port must not be 0")]
    ZeroPort,
    /// A protection threshold outside 0.0..=1.0.
    #[error("protection threshold {0} is out of range 0.0..=1.0")]
    ThresholdOutOfRange(f32),
    /// Config content above its limit.
    #[error("config content is {size} bytes, the limit is {max}")]
    ContentTooLarge {
        /// Size of the content.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A config version that is not the sha256 of its content.
    #[error("config version does not match the sha256 of its content")]
    ConfigVersionMismatch,
    /// A config entry remembering more earlier versions than it may.
    #[error("config history has {len} versions, the limit is {max}")]
    ConfigHistoryTooLong {
        /// Versions in the history.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A config entry's content and its candidate's together above the content limit (the
    /// record must stay under etcd's request limit).
    #[error("config content and its candidate are {size} bytes together, the limit is {max}")]
    CandidateTooLarge {
        /// Both contents' sizes added.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A gray-release rule that is malformed, or matches no reader or every one.
    #[error("gray rule: {0}")]
    GrayRule(String),
    /// A sha256 that is not 64 lowercase hex digits.
    #[error("{0:?} is not a sha256 (64 lowercase hex digits)")]
    BadSha256(String),
    /// A plugin kind that sextant does not know.
    #[error("plugin kind {0:?} is not one of balancer, health, scheduler")]
    BadPluginKind(String),
    /// A lease TTL outside the allowed range.
    #[error("lease ttl {ttl_ms} ms is out of range {min_ms}..={max_ms} ms")]
    TtlOutOfRange {
        /// Requested TTL.
        ttl_ms: u64,
        /// Minimum.
        min_ms: u64,
        /// Maximum.
        max_ms: u64,
    },
    /// A key path that does not follow the documented layout.
    #[error("{0:?} is not a sextant key path")]
    BadKeyPath(String),
    /// A stored value under a valid key path that is not a valid record for it.
    #[error("the value at {path} is not a valid record: {reason}")]
    InvalidValue {
        /// The key path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `ephemeral` and the presence of a lease disagree.
    #[error("an ephemeral instance needs a lease and a persistent one must not have one")]
    LeaseMismatch,
    /// Only instances hang on leases.
    #[error("only ephemeral instances can be attached to a lease")]
    LeaseOnNonInstance,
    /// A plugin record's rollout that is not valid (its plan, its step, its log).
    #[error("rollout: {0}")]
    Rollout(String),
}
