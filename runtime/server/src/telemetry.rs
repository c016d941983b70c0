//! Logs and traces of the `sextant` binary: logs to standard error (text or JSON lines,
//! `SEXTANT_LOG`), and with `--otlp-endpoint URL` the spans of
//! [`TRACE_TARGET`](sextant_core::TRACE_TARGET) exported as OpenTelemetry traces over
//! OTLP/HTTP (protobuf) to a collector, with W3C trace context read from and written to the
//! gateway's HTTP requests.
//!
//! Logs never show the trace spans, and without an exporter nothing enables them: a request
//! through the gateway then pays a check of a cached flag for each.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use sextant_core::TRACE_TARGET;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer as _, fmt};

/// How often spans are sent to the collector, at most.
const EXPORT_EVERY: Duration = Duration::from_millis(500);

/// A running trace exporter: flushed and stopped when dropped.
#[derive(Debug)]
pub(crate) struct Traces {
    provider: SdkTracerProvider,
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "the trace exporter did not flush");
        }
    }
}

/// The collector's traces URL: `URL` as given when it names a path, else `URL/v1/traces`.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    let has_path = base.split_once("://").is_some_and(|(_, rest)| rest.contains('/'));
    if has_path { base.to_owned() } else { format!("{base}/v1/traces") }
}

/// Installs the process's subscriber: logs in `json` or text at `default` (or `SEXTANT_LOG`),
/// and, with `otlp`, the trace exporter (`service` names the process in the traces).
///
/// # Errors
/// The exporter cannot be built (a URL it refuses).
pub(crate) fn init(json: bool, default: &str, otlp: Option<&str>, service: &str) -> Result<Option<Traces>, String> {
    let filter = EnvFilter::try_from_env("SEXTANT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // The trace spans are for the exporter, never for the logs.
    let filter = filter.add_directive(format!("{TRACE_TARGET}=off").parse().map_err(|e| format!("{e}"))?);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = if json { logs.json().with_filter(filter).boxed() } else { logs.with_filter(filter).boxed() };
    let Some(endpoint) = otlp else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(None);
    };
    // The blocking HTTP client starts a runtime of its own, which cannot be done from
    // within the binary's: it is built on a thread of its own.
    let build = || opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(traces_url(endpoint)).build();
    let exporter = std::thread::scope(|s| s.spawn(build).join())
        .map_err(|_| format!("--otlp-endpoint {endpoint}: the exporter panicked"))?
        .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(BatchConfigBuilder::default().with_scheduled_delay(EXPORT_EVERY).build())
        .build();
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned()).build();
    let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
    let tracer = provider.tracer("sextant");
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target(TRACE_TARGET, tracing::Level::INFO));
    tracing_subscriber::registry().with(logs).with(spans).init();
    Ok(Some(Traces { provider }))
}

/// W3C trace context (`traceparent`, `tracestate`) on the gateway's HTTP requests.
#[derive(Debug, Default)]
pub(crate) struct TraceContext(TraceContextPropagator);

struct Read<'a>(&'a http::HeaderMap);

impl Extractor for Read<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct Write<'a>(&'a mut http::HeaderMap);

impl Injector for Write<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

impl sextant_gateway::trace::Propagation for TraceContext {
    fn extract(&self, headers: &http::HeaderMap, span: &tracing::Span) {
        let parent = self.0.extract(&Read(headers));
        // No usable context in the headers: the span starts a trace of its own.
        let _ = span.set_parent(parent);
    }

    fn inject(&self, span: &tracing::Span, headers: &mut http::HeaderMap) {
        self.0.inject_context(&span.context(), &mut Write(headers));
    }
}

/// The gateway's propagation of W3C trace context.
pub(crate) fn propagation() -> Arc<dyn sextant_gateway::trace::Propagation> {
    Arc::new(TraceContext::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collector_address_gets_the_traces_path_and_a_full_url_stays() {
        assert_eq!(traces_url("http://127.0.0.1:4318"), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(traces_url("http://collector:4318/"), "http://collector:4318/v1/traces");
        assert_eq!(traces_url("https://otel.example/custom/traces"), "https://otel.example/custom/traces");
    }
}
