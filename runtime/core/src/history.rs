//! The bounded window of recent events that lets a watcher resume from a revision.
//!
//! A watcher that last saw revision `R` gets exactly the events after `R` while they are all
//! still in the window; otherwise it must be sent a `Reset` (etcd's compaction, in memory).

use std::collections::VecDeque;

use crate::{Event, Revision, Scope};

/// Default number of events kept.
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

/// The last `capacity` events.
#[derive(Debug)]
pub struct History {
    events: VecDeque<Event>,
    capacity: usize,
    /// Every event at or before this revision has been dropped (or was never seen).
    compacted: Revision,
}

/// What a watcher resuming from a revision needs.
#[derive(Debug, PartialEq)]
pub enum Resume {
    /// Exactly these events (possibly none) bring it up to date.
    Replay(Vec<Event>),
    /// The window no longer covers its revision: it needs a full `Reset`.
    Reset,
}

impl History {
    /// An empty window that starts after `start` (events at or before it are unknown).
    #[must_use]
    pub fn new(capacity: usize, start: Revision) -> Self {
        Self { events: VecDeque::with_capacity(capacity.min(1024)), capacity: capacity.max(1), compacted: start }
    }

    /// Appends an event (revisions must increase).
    pub fn push(&mut self, event: Event) {
        debug_assert!(self.events.back().is_none_or(|e| e.revision < event.revision));
        if self.events.len() == self.capacity
            && let Some(old) = self.events.pop_front()
        {
            self.compacted = old.revision;
        }
        self.events.push_back(event);
    }

    /// Forgets everything and starts over after `start` (after a `Reset` from upstream).
    pub fn reset(&mut self, start: Revision) {
        self.events.clear();
        self.compacted = start;
    }

    /// The oldest revision a watcher may resume from and still get a replay.
    #[must_use]
    pub fn compacted(&self) -> Revision {
        self.compacted
    }

    /// The events in `scope` after `from`, given the store is at `current`. `from` 0 means
    /// "I hold nothing": always a `Reset`, so a new watcher starts from a full state.
    #[must_use]
    pub fn since(&self, from: Revision, current: Revision, scope: &Scope) -> Resume {
        if from == Revision(0) || from > current || from < self.compacted {
            return Resume::Reset;
        }
        let start = self.events.partition_point(|e| e.revision <= from);
        Resume::Replay(
            self.events.range(start..).filter(|e| e.key().is_some_and(|k| scope.contains(&k))).cloned().collect(),
        )
    }
}
