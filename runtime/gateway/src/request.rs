//! Pick requests from HTTP requests.

use sextant_plugin::PickRequest;

/// Builds a [`PickRequest`] from an HTTP request's headers: `PickRequest::from_headers(..)`
/// with this trait in scope (it is in `sextant::prelude`).
pub trait FromHeaders {
    /// The affinity key is the value of the header named `affinity`, hashed with
    /// [`sextant_plugin::affinity_hash`] (none without that header); the headers named in
    /// `visible` are handed to the balancer (names lowercased, values as text, lossily
    /// decoded, in `visible`'s order; absent ones skipped).
    fn from_headers(headers: &http::HeaderMap, affinity: Option<&str>, visible: &[String]) -> Self;
}

impl FromHeaders for PickRequest {
    fn from_headers(headers: &http::HeaderMap, affinity: Option<&str>, visible: &[String]) -> Self {
        Self {
            hash_key: affinity
                .and_then(|h| headers.get(h))
                .map(|v| sextant_plugin::affinity_hash(&String::from_utf8_lossy(v.as_bytes()))),
            headers: visible
                .iter()
                .filter_map(|h| {
                    headers.get(h).map(|v| (h.to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                })
                .collect(),
            ..Self::default()
        }
    }
}
