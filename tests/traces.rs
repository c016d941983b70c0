//! Traces: `sextant serve` and `sextant gateway` with `--otlp-endpoint` export OpenTelemetry
//! spans over OTLP/HTTP to a receiver in this test (it decodes what arrives with the
//! protocol's own messages). One request through the gateway carrying the client's W3C
//! `traceparent` is one trace: the gateway's request span continues the client's, an attempt
//! span under it names the endpoint and the balancer that picked it, and the backend receives
//! the attempt's context. The server's registration write and the gateway's watch are spans too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message as _;

use crate::gateway::Gateway;
use crate::support::{Server, free_port, http, instance, run, wait_until};

const SERVICE: &str = "shop/web/orders";

/// A span as received: which process sent it, where it sits in its trace, its attributes.
#[derive(Debug, Clone)]
struct Received {
    process: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
}

impl Received {
    fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// Decodes one OTLP/HTTP export into `into`; a body that is not one is a test failure, kept
/// as such (`bad`) rather than answered.
fn receive(body: &[u8], into: &Mutex<Vec<Received>>, bad: &Mutex<Vec<String>>) {
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(r) => r,
        Err(e) => {
            bad.lock().unwrap().push(e.to_string());
            return;
        }
    };
    let mut spans = into.lock().unwrap();
    for resource in request.resource_spans {
        let process = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| text(a.value.as_ref()))
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(Received {
                process: process.clone(),
                name: span.name,
                trace: hex(&span.trace_id),
                id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                attributes: span.attributes.iter().map(|a| (a.key.clone(), text(a.value.as_ref()))).collect(),
            });
        }
    }
}

#[test]
fn one_gateway_request_is_one_trace_from_the_client_through_the_attempt_to_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();

    // The receiver: OTLP/HTTP with protobuf, as a collector takes it.
    let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
    let bad: Arc<Mutex<Vec<String>>> = Arc::default();
    let collector = {
        let (spans, bad) = (spans.clone(), bad.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| async move {
                receive(&body, &spans, &bad);
                ([("content-type", "application/x-protobuf")], ExportTraceServiceResponse::default().encode_to_vec())
            }),
        );
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    };
    // The backend keeps the trace context each request brought.
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let backend = {
        let seen = seen.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap| async move {
            let parent = headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned);
            seen.lock().unwrap().push(parent);
            "ok"
        });
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, app).await });
        addr
    };

    let server = match Server::try_start_with(&dir.path().join("data"), &["--otlp-endpoint", &collector]) {
        Ok(s) => s,
        Err(f) => panic!("sextant did not start ({:?}):\n{}", f.status, f.log),
    };
    assert_eq!(server.post("/v1/instances", &instance(SERVICE, "orders-1", backend.port(), false)).0, 200);
    let config = dir.path().join("gateway.json");
    let document = serde_json::json!({
        "gateway": {"routes": [{"path_prefix": "/", "service": SERVICE}]},
        "balancer": "round-robin",
    });
    std::fs::write(&config, document.to_string()).unwrap();
    let gateway = Gateway::spawn(
        &server,
        dir.path(),
        free_port(),
        &["--config", config.to_str().unwrap(), "--otlp-endpoint", &collector],
    );
    let get = |traceparent: Option<&str>| {
        let mut request = http().get(&format!("http://{}/orders", gateway.addr));
        if let Some(t) = traceparent {
            request = request.header("traceparent", t);
        }
        request.call().map_or(0, |r| r.status().as_u16())
    };
    wait_until("the gateway routes", || get(None) == 200);

    // The client's trace: a trace id and the span it sent the request from.
    let (trace, client_span) = ("5ee1a5e7b0a1d2c3d4e5f60718293a4b", "00f067aa0ba902b7");
    let before = seen.lock().unwrap().len();
    assert_eq!(get(Some(&format!("00-{trace}-{client_span}-01"))), 200, "{}", gateway.log());
    let sent = seen.lock().unwrap()[before..].to_vec();
    assert_eq!(sent.len(), 1, "one attempt reached the backend: {sent:?}");
    let sent = sent[0].clone().expect("the backend received a traceparent");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[1], trace, "the backend's request is in the client's trace: {sent}");
    assert_ne!(parts[2], client_span, "the gateway's attempt is the backend's parent, not the client: {sent}");

    // The gateway's spans of that trace arrive (the exporter sends every 500 ms).
    let deadline = Instant::now() + Duration::from_secs(30);
    let of_trace = loop {
        let of_trace: Vec<Received> = spans.lock().unwrap().iter().filter(|s| s.trace == trace).cloned().collect();
        if of_trace.iter().any(|s| s.name == "gateway attempt") && of_trace.iter().any(|s| s.name == "gateway request")
        {
            break of_trace;
        }
        assert!(Instant::now() < deadline, "no trace {trace}: {of_trace:?}\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(bad.lock().unwrap().is_empty(), "undecodable exports: {:?}", bad.lock().unwrap());
    assert_eq!(of_trace.len(), 2, "one request, one attempt: {of_trace:#?}");
    let request = of_trace.iter().find(|s| s.name == "gateway request").unwrap();
    let attempt = of_trace.iter().find(|s| s.name == "gateway attempt").unwrap();
    assert_eq!(request.process, "sextant-gateway");
    assert_eq!(request.parent, client_span, "the request span continues the client's");
    assert_eq!(request.attr("http.route"), "/");
    assert_eq!(request.attr("sextant.service"), SERVICE);
    assert_eq!(request.attr("http.request.method"), "GET");
    assert_eq!(request.attr("url.path"), "/orders");
    assert_eq!(request.attr("http.response.status_code"), "200");
    assert_eq!(request.attr("sextant.attempts"), "1");
    assert_eq!(attempt.parent, request.id, "the attempt is the request's child");
    assert_eq!(attempt.id, parts[2], "the backend's parent is the attempt");
    assert_eq!(attempt.attr("sextant.endpoint"), "orders-1");
    assert_eq!(attempt.attr("server.address"), backend.to_string());
    assert_eq!(attempt.attr("sextant.balancer"), "round-robin", "{attempt:?}");
    assert_eq!(attempt.attr("sextant.fallback"), "false");
    assert_eq!(attempt.attr("sextant.outcome"), "2xx");
    assert_eq!(attempt.attr("http.response.status_code"), "200");

    // A plugin loaded and bound: a write span on the server, an activation on the gateway.
    let artifact = sextant_plugin_artifacts::path("round-robin").expect("artifact built");
    let out = run(&server, &["plugin", "load", artifact, "--name", "lb", "--bind", SERVICE]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The server's side: the registration and the load were write spans with their
    // revisions, the gateway's subscription a watch span.
    let named = |process: &str, name: &str| -> Vec<Received> {
        spans.lock().unwrap().iter().filter(|s| s.process == process && s.name == name).cloned().collect()
    };
    wait_until("the server's and the gateway's spans arrive", || {
        !named("sextant", "register").is_empty()
            && !named("sextant", "plugin_load").is_empty()
            && !named("sextant", "watch").is_empty()
            && named("sextant-gateway", "activation").iter().any(|s| s.attr("sextant.plugin") == "lb")
    });
    for name in ["register", "plugin_load"] {
        let write = &named("sextant", name)[0];
        assert!(write.attr("sextant.revision").parse::<u64>().is_ok_and(|r| r > 0), "{write:?}");
    }
    let activation = named("sextant-gateway", "activation").into_iter().find(|s| s.attr("sextant.plugin") == "lb");
    let activation = activation.unwrap();
    assert_eq!(activation.attr("sextant.service"), SERVICE, "{activation:?}");
    assert_eq!(activation.attr("sextant.kind"), "balancer", "{activation:?}");
    assert_eq!(activation.attr("sextant.error"), "", "{activation:?}");
    let spans = spans.lock().unwrap();
    assert!(spans.iter().all(|s| s.trace != "00000000000000000000000000000000"), "{spans:#?}");
    // Spans are exported, never logged.
    assert!(!server.log().contains("gateway attempt") && !gateway.log().contains("gateway attempt"));
}
