//! How a request ended, as a [`PickGuard`](crate::PickGuard) is told.

use std::time::Duration;

use sextant_plugin::OutcomeClass;
use sextant_plugin::builtins::Status;

/// How a request ended, reported through [`PickGuard::finish`](crate::PickGuard::finish).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this HTTP status (and maybe a `Retry-After`).
    Http {
        /// Status code.
        status: u16,
        /// `Retry-After`, when present.
        retry_after: Option<Duration>,
    },
    /// A non-HTTP request that succeeded.
    Success,
    /// No answer in time.
    Timeout,
    /// Connection refused or reset, or an invalid response.
    Failed(String),
}

impl Outcome {
    /// An HTTP status without `Retry-After`.
    #[must_use]
    pub fn http(status: u16) -> Self {
        Self::Http { status, retry_after: None }
    }

    /// The outcome of an upstream HTTP response: its status, and its `Retry-After` when that
    /// is a number of seconds (an HTTP-date `Retry-After` is ignored).
    #[must_use]
    pub fn from_response<B>(response: &http::Response<B>) -> Self {
        Self::from_head(response.status(), response.headers())
    }

    /// The outcome of an upstream response head (a proxy that holds the status and headers
    /// rather than an [`http::Response`], pingora's `ResponseHeader` for one), read as
    /// [`Outcome::from_response`] reads a response.
    #[must_use]
    pub fn from_head(status: http::StatusCode, headers: &http::HeaderMap) -> Self {
        let retry_after = headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Self::Http { status: status.as_u16(), retry_after }
    }

    /// A failure: 5xx, timeouts, broken connections (feeds PeakEWMA's penalty, the breaker
    /// and outlier detection).
    #[must_use]
    pub fn failed(&self) -> bool {
        matches!(self, Self::Http { status: 500..=599, .. } | Self::Timeout | Self::Failed(_))
    }

    /// An overload signal: 429, or 503 with `Retry-After` ("slow down", not "broken").
    #[must_use]
    pub fn overloaded(&self) -> bool {
        matches!(self, Self::Http { status: 429, .. } | Self::Http { status: 503, retry_after: Some(_) })
    }

    /// How a statistics window counts it: an overload signal first (it is also a 503), then
    /// a failure.
    pub(crate) fn class(&self) -> OutcomeClass {
        if self.overloaded() {
            let retry_after = match self {
                Self::Http { retry_after, .. } => *retry_after,
                _ => None,
            };
            OutcomeClass::Overloaded { retry_after }
        } else if self.failed() {
            OutcomeClass::Failed
        } else {
            OutcomeClass::Ok
        }
    }

    pub(crate) fn into_status(self) -> Status {
        match self {
            Self::Http { status, .. } => Status::Http(status),
            Self::Success => Status::Connected,
            Self::Timeout => Status::Timeout,
            Self::Failed(why) => Status::Failed(why),
        }
    }
}
