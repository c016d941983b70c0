//! "Why this endpoint": what the gateway did with one request and why. The route and
//! service it matched, each attempt (the endpoint, the balancer and version that picked it,
//! whether the native fallback answered, how it ended), and the endpoints of the service
//! left out of the picks with the reason: the rotation's (unhealthy in the registry, down by
//! this gateway's checks, ejected, breaker open, disabled, weight 0) and the request's own
//! (avoided after a failed attempt).
//!
//! The gateway answers it in the [`WHY_HEADER`] response header to requests that carry the
//! header its configuration allows ([`ExplainConfig`]), and writes it in its access log
//! (JSON lines, `sextant gateway --access-log`).

use serde::{Deserialize, Serialize};

/// The response header carrying a request's [`Explanation`] as JSON.
pub const WHY_HEADER: &str = "x-sextant-why";

/// The largest [`WHY_HEADER`] value: beyond it the excluded list is cut, and `more` says by
/// how many.
pub const MAX_WHY_BYTES: usize = 4096;

/// Which requests are answered with their explanation: those carrying `header` (with
/// `value` when one is set: a shared secret keeps the service's endpoints from any client
/// who guesses the header's name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainConfig {
    /// The request header that asks (`x-sextant-explain`, say).
    pub header: String,
    /// The value it must have; none: any value.
    #[serde(default)]
    pub value: Option<String>,
}

impl ExplainConfig {
    /// Whether `headers` ask for the explanation.
    #[must_use]
    pub fn asked(&self, headers: &http::HeaderMap) -> bool {
        headers.get(self.header.as_str()).is_some_and(|v| self.value.as_deref().is_none_or(|want| v == want))
    }

    /// Whether the header name is one HTTP allows.
    pub(crate) fn check(&self) -> Result<(), String> {
        http::HeaderName::from_bytes(self.header.as_bytes())
            .map(|_| ())
            .map_err(|_| format!("explain.header {:?} is not a header name", self.header))
    }
}

/// Why an endpoint took no part in a pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    /// Disabled in the registry (drained).
    Disabled,
    /// Weight 0 (registered, or set by the scheduler).
    ZeroWeight,
    /// Unhealthy in the registry (and the protection threshold not in force).
    Unhealthy,
    /// Found down by this gateway's active health checks.
    Down,
    /// Ejected by the health policy, until `for_ms` from now.
    Ejected,
    /// Its circuit breaker is open, for `for_ms` more.
    BreakerOpen,
    /// An earlier attempt of this request failed there.
    Avoided,
}

/// One endpoint left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Excluded {
    /// Instance id.
    pub endpoint: String,
    /// `ip:port`.
    pub address: String,
    /// Why.
    pub why: Exclusion,
    /// For how much longer (ejections, open breakers), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_ms: Option<u64>,
}

/// One attempt at the request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attempt {
    /// Instance id picked.
    pub endpoint: String,
    /// `ip:port`.
    pub address: String,
    /// The balancer plugin that picked (its name), when it still runs.
    pub balancer: Option<String>,
    /// Its version in the slot.
    pub version: u64,
    /// Whether the native fallback answered because the plugin faulted.
    pub fallback: bool,
    /// The status class (`2xx`, `5xx`, …), or `timeout`, `connect_error`, `error` (as the
    /// attempts metric counts it).
    pub result: &'static str,
    /// The upstream's status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Until the response headers (or the failure), ms.
    pub ms: f64,
}

/// What the gateway did with one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Explanation {
    /// The route matched (`[HOST]PREFIX`).
    pub route: String,
    /// Its service.
    pub service: String,
    /// The attempts, in order.
    pub attempts: Vec<Attempt>,
    /// The endpoints left out of the picks.
    pub excluded: Vec<Excluded>,
    /// How many more were left out than `excluded` lists (the header's size bound).
    #[serde(skip_serializing_if = "is_zero")]
    pub more: usize,
    /// Why no endpoint was picked (no endpoint, rate limited), when none was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Explanation {
    /// An explanation for a request matched by `route` to `service`.
    #[must_use]
    pub fn new(route: &str, service: &str) -> Self {
        Self { route: route.to_owned(), service: service.to_owned(), ..Self::default() }
    }

    /// Adds an endpoint left out, once (the first reason stands).
    pub fn exclude(&mut self, excluded: Excluded) {
        if !self.excluded.iter().any(|e| e.endpoint == excluded.endpoint) {
            self.excluded.push(excluded);
        }
    }

    /// As a response header value: compact JSON of at most [`MAX_WHY_BYTES`] (the excluded
    /// list cut as needed; `more` counts what was cut).
    #[must_use]
    pub fn header_value(&self) -> http::HeaderValue {
        let mut shown = self.clone();
        loop {
            let json = serde_json::to_string(&shown).unwrap_or_default();
            if json.len() <= MAX_WHY_BYTES || shown.excluded.is_empty() {
                // serde_json escapes control characters; ids and addresses are ASCII.
                return http::HeaderValue::from_str(&json)
                    .unwrap_or_else(|_| http::HeaderValue::from_static("{\"error\":\"not representable\"}"));
            }
            let cut = shown.excluded.len().div_ceil(2);
            shown.excluded.truncate(shown.excluded.len() - cut);
            shown.more += cut;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn excluded(n: usize) -> Excluded {
        Excluded {
            endpoint: format!("e{n}"),
            address: format!("127.0.0.1:{n}"),
            why: Exclusion::Ejected,
            for_ms: Some(5),
        }
    }

    #[test]
    fn the_header_names_what_was_left_out_and_stays_within_its_bound() {
        let mut why = Explanation::new("/api", "shop/web/orders");
        why.exclude(excluded(1));
        why.exclude(Excluded { why: Exclusion::Avoided, ..excluded(1) });
        assert_eq!(why.excluded.len(), 1, "the first reason stands");
        let value: serde_json::Value = serde_json::from_slice(why.header_value().as_bytes()).unwrap();
        assert_eq!(value["excluded"][0]["why"], "ejected");
        assert_eq!(value["excluded"][0]["for_ms"], 5);
        assert!(value.get("more").is_none());

        for n in 2..2000 {
            why.exclude(excluded(n));
        }
        let header = why.header_value();
        assert!(header.len() <= MAX_WHY_BYTES, "{}", header.len());
        let value: serde_json::Value = serde_json::from_slice(header.as_bytes()).unwrap();
        let shown = value["excluded"].as_array().unwrap().len();
        assert!(shown > 10);
        assert_eq!(shown + usize::try_from(value["more"].as_u64().unwrap()).unwrap(), 1999);
    }

    #[test]
    fn only_requests_with_the_allowed_header_and_value_ask() {
        let config = ExplainConfig { header: "x-explain".into(), value: Some("s3cret".into()) };
        let mut headers = http::HeaderMap::new();
        assert!(!config.asked(&headers));
        headers.insert("x-explain", http::HeaderValue::from_static("guess"));
        assert!(!config.asked(&headers));
        headers.insert("x-explain", http::HeaderValue::from_static("s3cret"));
        assert!(config.asked(&headers));
        assert!(ExplainConfig { value: None, ..config }.asked(&headers));
        assert!(ExplainConfig { header: "bad header".into(), value: None }.check().is_err());
    }
}
