//! What a component is: its [`PluginKind`] (by the interface it exports) and the
//! [`Contract`] version it was built for.

/// The contract version this host speaks (`wit/`): `sextant:plugin@0.2.3`, where one
/// component instance per worker thread serves every service as resources, a balancer can
/// read what the request already tried (`load.request-attempt`, `load.request-tried`, 0.2.1),
/// every plugin can read the host's zone (`host.local-zone`, 0.2.2), and a balancer can read
/// backends' load reports and ask for probes (`load.report`, `load.probe`, 0.2.3).
pub const CONTRACT_VERSION: &str = "0.2.3";
/// The legacy contract version the host still serves (`wit/legacy/0.1.0/`): one instance
/// per service and worker.
pub const LEGACY_CONTRACT_VERSION: &str = "0.1.0";
pub(crate) const PACKAGE: &str = "sextant:plugin";

/// A version of the plugin contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Contract {
    /// `sextant:plugin@0.1.0`: one instance per service (legacy).
    #[serde(rename = "0.1.0")]
    V0_1,
    /// `sextant:plugin@0.2.0`: resources per service inside shared instances
    /// (`wit/legacy/0.2.0/`; served by the 0.2.1 bindings, a compatible revision).
    #[serde(rename = "0.2.0")]
    V0_2,
    /// `sextant:plugin@0.2.1`: 0.2.0 plus what a request already tried (served by the 0.2.3
    /// bindings).
    #[serde(rename = "0.2.1")]
    V0_2_1,
    /// `sextant:plugin@0.2.2`: 0.2.1 plus the host's zone (served by the 0.2.3 bindings).
    #[serde(rename = "0.2.2")]
    V0_2_2,
    /// `sextant:plugin@0.2.3`: 0.2.2 plus backends' load reports and probes.
    #[serde(rename = "0.2.3")]
    V0_2_3,
}

impl Contract {
    /// Every version this build knows, oldest first.
    pub const ALL: [Self; 5] = [Self::V0_1, Self::V0_2, Self::V0_2_1, Self::V0_2_2, Self::V0_2_3];

    /// `0.1.0`, `0.2.0`, `0.2.1`, `0.2.2`, `0.2.3`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1 => LEGACY_CONTRACT_VERSION,
            Self::V0_2 => "0.2.0",
            Self::V0_2_1 => "0.2.1",
            Self::V0_2_2 => "0.2.2",
            Self::V0_2_3 => CONTRACT_VERSION,
        }
    }

    /// Whether components of this version share their instances between services (one
    /// resource per service): 0.2.x.
    #[must_use]
    pub fn shared(self) -> bool {
        !matches!(self, Self::V0_1)
    }

    /// The version named `text` (`0.1.0`, `0.2.0`, `0.2.1`, `0.2.2`, `0.2.3`).
    ///
    /// # Errors
    /// Another text: the message lists the versions this build knows.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| format!("unknown plugin contract {text:?}: this build speaks {}", Self::known()))
    }

    /// The versions this build knows, newest first, for messages: `0.2.3, 0.2.2, 0.2.1, 0.2.0
    /// and the legacy 0.1.0`.
    #[must_use]
    pub fn known() -> &'static str {
        "0.2.3, 0.2.2, 0.2.1, 0.2.0 and the legacy 0.1.0"
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PACKAGE}@{}", self.as_str())
    }
}

/// What kind of plugin a component is, by the interface it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// Exports `balancer`.
    Balancer,
    /// Exports `health`.
    Health,
    /// Exports `scheduler`.
    Scheduler,
}

impl PluginKind {
    /// Every kind, in the order hosts walk a service's slots.
    pub const ALL: [Self; 3] = [Self::Balancer, Self::Health, Self::Scheduler];

    /// This kind's place in [`PluginKind::ALL`] (for per-kind arrays).
    #[must_use]
    pub const fn index(self) -> usize {
        match self {
            Self::Balancer => 0,
            Self::Health => 1,
            Self::Scheduler => 2,
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Balancer => "balancer",
            Self::Health => "health",
            Self::Scheduler => "scheduler",
        })
    }
}
