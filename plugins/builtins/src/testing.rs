//! What the built-ins' unit tests share.

use crate::{Endpoint, Snapshot};

/// `n` healthy endpoints `e0`, `e1`, ... of weight 100.
pub(crate) fn snapshot(n: usize) -> Snapshot {
    Snapshot {
        endpoints: (0..n)
            .map(|i| Endpoint { id: format!("e{i}"), weight: 100, healthy: true, ..Endpoint::default() })
            .collect(),
        ..Snapshot::default()
    }
}
