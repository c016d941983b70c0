//! What a plugin version counted: the one type every host, the protocol (`plugin_list`'s
//! slots) and the metrics use for calls, faults by cause and fallbacks.

use serde::{Deserialize, Serialize};

/// Calls into a plugin version, its faults by cause, and the calls the native default
/// answered for it. Adds up across services and swaps ([`PluginCounts::add`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PluginCounts {
    /// Calls into the version (every function).
    pub calls: u64,
    /// Calls that trapped.
    pub traps: u64,
    /// Calls stopped at their deadline.
    pub deadline_hits: u64,
    /// Calls stopped at the memory cap.
    pub memory_hits: u64,
    /// Answers outside the contract (an index out of range, none while endpoints exist, a
    /// refused update).
    pub contract_violations: u64,
    /// Calls the native default answered instead.
    pub fallbacks: u64,
}

impl PluginCounts {
    /// The field names, in the order of [`PluginCounts::values`].
    pub const NAMES: [&'static str; 6] =
        ["calls", "traps", "deadline_hits", "memory_hits", "contract_violations", "fallbacks"];

    /// The counts, in the order of [`PluginCounts::NAMES`].
    #[must_use]
    pub const fn values(&self) -> [u64; 6] {
        [self.calls, self.traps, self.deadline_hits, self.memory_hits, self.contract_violations, self.fallbacks]
    }

    /// Faults of every cause.
    #[must_use]
    pub const fn faults(&self) -> u64 {
        self.traps + self.deadline_hits + self.memory_hits + self.contract_violations
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Self) {
        self.calls += other.calls;
        self.traps += other.traps;
        self.deadline_hits += other.deadline_hits;
        self.memory_hits += other.memory_hits;
        self.contract_violations += other.contract_violations;
        self.fallbacks += other.fallbacks;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_name_their_values_in_order() {
        let mut a = PluginCounts {
            calls: 10,
            traps: 1,
            deadline_hits: 2,
            memory_hits: 3,
            contract_violations: 4,
            fallbacks: 5,
        };
        a.add(&PluginCounts { calls: 1, fallbacks: 1, ..PluginCounts::default() });
        assert_eq!(a.values(), [11, 1, 2, 3, 4, 6]);
        assert_eq!(a.faults(), 10);
        let json = serde_json::to_value(a).unwrap();
        for (name, value) in PluginCounts::NAMES.iter().zip(a.values()) {
            assert_eq!(json[name], value, "{name}");
        }
    }
}
