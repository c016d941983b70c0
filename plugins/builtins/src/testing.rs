//! What the built-ins' unit tests share.

use crate::report::BackendReport;
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

/// A report of these named metrics only (sorted by name, as the host hands them).
pub(crate) fn named(metrics: &[(&str, f64)]) -> Option<BackendReport> {
    let mut named: Vec<(String, f64)> = metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Some(BackendReport { named, ..BackendReport::default() })
}
