//! Traces of the gateway's requests: a span per request (`gateway request`: method, path,
//! route, service, status, attempts) and one per attempt (`gateway attempt`: the endpoint,
//! the balancer plugin and version that picked it, whether the native fallback answered,
//! the outcome), under [`TRACE_TARGET`](sextant_core::TRACE_TARGET). A host that exports
//! them (OpenTelemetry) gives the gateway a [`Propagation`]: the request's span then
//! continues the trace the client sent (W3C `traceparent`), and each attempt sends its own
//! context to the backend. Without one, or without a subscriber for the target, the spans
//! are disabled and nothing is recorded.

/// How trace context crosses HTTP: read from a request's headers, written into an upstream
/// request's. The gateway crate stays free of any tracing backend; the host brings one
/// (`sextant gateway --otlp-endpoint` brings OpenTelemetry's W3C trace context).
pub trait Propagation: Send + Sync + std::fmt::Debug {
    /// Makes `span` continue the trace `headers` carry, if they carry one.
    fn extract(&self, headers: &http::HeaderMap, span: &tracing::Span);
    /// Writes `span`'s trace context into `headers` (an upstream request's).
    fn inject(&self, span: &tracing::Span, headers: &mut http::HeaderMap);
}
