//! A component the host validated and compiled ([`Compiled`]): what the compile cache holds
//! and every running instance is made from.

use crate::kind::{Contract, PluginKind};
use crate::state::KindPre;

/// A validated, compiled component: what the cache holds.
pub struct Compiled {
    /// sha256 of the bytes, hex.
    pub sha256: String,
    /// Its kind.
    pub kind: PluginKind,
    /// Size of the bytes.
    pub size: usize,
    /// The contract version it was built for.
    pub contract: Contract,
    pub(crate) pre: KindPre,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("sha256", &self.sha256)
            .field("kind", &self.kind)
            .field("size", &self.size)
            .field("contract", &self.contract)
            .finish()
    }
}
