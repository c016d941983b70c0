//! Revisions and the change stream.
//!
//! Every mutation of a store gets the next store-wide [`Revision`]. Watchers see a stream of
//! [`Event`]s: `Upsert` and `Remove`, each stamped with the revision that made it, and `Reset`,
//! which carries a full snapshot of the watched scope and replaces everything the watcher held
//! (after a reconnect whose revision fell out of the history window, or a compacted etcd
//! watch; linkerd's `Update::Reset`).

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Reader, Record, RecordKey};

/// A store-wide, monotonic revision. 0 means "nothing seen yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(pub u64);

impl Revision {
    /// The revision after this one.
    #[must_use]
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What happened at a revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    /// A record was created or replaced.
    Upsert {
        /// The new record.
        record: Record,
    },
    /// A record was deleted (deregistered, or its lease expired).
    Remove {
        /// Its key.
        key: RecordKey,
    },
    /// Everything in the watched scope, replacing whatever the watcher held.
    Reset {
        /// The full state of the scope at the event's revision.
        snapshot: Arc<StoreSnapshot>,
    },
}

/// A change stamped with its revision.
///
/// On the wire: `{"revision": R, "type": "upsert", "record": …}`, `{…, "type": "remove",
/// "key": …}` or `{…, "type": "reset", "snapshot": …}`. Decoded in one pass through
/// `EventWire` (a flattened, internally tagged enum would make serde buffer the whole
/// object first: the cost that dominates a client following many subscriptions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "EventWire")]
pub struct Event {
    /// The revision the change was made at (for `Reset`: the snapshot's revision).
    pub revision: Revision,
    /// The change.
    #[serde(flatten)]
    pub change: Change,
}

/// The members an [`Event`] is decoded from; unknown members are ignored.
#[derive(Deserialize)]
struct EventWire {
    revision: Revision,
    #[serde(rename = "type")]
    kind: ChangeKind,
    record: Option<Record>,
    key: Option<RecordKey>,
    snapshot: Option<Arc<StoreSnapshot>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ChangeKind {
    Upsert,
    Remove,
    Reset,
}

impl TryFrom<EventWire> for Event {
    type Error = &'static str;

    fn try_from(w: EventWire) -> Result<Self, Self::Error> {
        let change = match w.kind {
            ChangeKind::Upsert => Change::Upsert { record: w.record.ok_or("missing field `record`")? },
            ChangeKind::Remove => Change::Remove { key: w.key.ok_or("missing field `key`")? },
            ChangeKind::Reset => Change::Reset { snapshot: w.snapshot.ok_or("missing field `snapshot`")? },
        };
        Ok(Self { revision: w.revision, change })
    }
}

impl Event {
    /// The key an `Upsert` or `Remove` touched; `None` for `Reset`.
    #[must_use]
    pub fn key(&self) -> Option<RecordKey> {
        match &self.change {
            Change::Upsert { record } => Some(record.key()),
            Change::Remove { key } => Some(key.clone()),
            Change::Reset { .. } => None,
        }
    }

    /// This event as `reader` is served it: config entries with a candidate as the version
    /// meant for the reader ([`ConfigEntry::for_reader`](crate::ConfigEntry::for_reader));
    /// `None` when it reads the same for every reader (no candidate in it).
    #[must_use]
    pub fn for_reader(&self, reader: &Reader) -> Option<Self> {
        let change = match &self.change {
            Change::Upsert { record: Record::Config(c) } if c.beta.is_some() => {
                Change::Upsert { record: Record::Config(Arc::new(c.for_reader(reader))) }
            }
            Change::Reset { snapshot } => Change::Reset { snapshot: Arc::new(snapshot.for_reader(reader)?) },
            _ => return None,
        };
        Some(Self { revision: self.revision, change })
    }
}

/// Every record of a scope at one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StoreSnapshot {
    /// The revision the snapshot is consistent at.
    pub revision: Revision,
    /// The records, sorted by key.
    pub records: Vec<Record>,
}

impl StoreSnapshot {
    /// This snapshot as `reader` is served it (see [`Event::for_reader`]); `None` when it
    /// holds no config entry with a candidate.
    #[must_use]
    pub fn for_reader(&self, reader: &Reader) -> Option<Self> {
        let has_candidate = |r: &Record| matches!(r, Record::Config(c) if c.beta.is_some());
        if !self.records.iter().any(has_candidate) {
            return None;
        }
        let records = self
            .records
            .iter()
            .map(|r| match r {
                Record::Config(c) if c.beta.is_some() => Record::Config(Arc::new(c.for_reader(reader))),
                other => other.clone(),
            })
            .collect();
        Some(Self { revision: self.revision, records })
    }
}
