//! Active health checks run by the host: HTTP (`GET path`, status and the first 4 KiB of the
//! body handed to the health plugin) and TCP connect, each with an interval, jitter and a
//! timeout. The plugin decides (thresholds, status and body assertions); the router applies
//! its verdict.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sextant_core::Instance;
use sextant_plugin::builtins::{ProbeResult, Status};
use tokio::net::TcpStream;

use crate::resilience::millis;

/// The most body bytes a probe reads and hands to the health plugin.
pub const MAX_PROBE_BODY: usize = 4096;

/// Instance metadata key naming another port to probe.
pub const HEALTH_PORT_KEY: &str = "health_port";

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CheckKind {
    /// `GET path` over HTTP/1.1.
    Http {
        /// Request path (with query, if any).
        path: String,
    },
    /// A TCP connect.
    Tcp,
}

/// An active health check. (serde cannot refuse unknown fields next to a flattened enum;
/// [`crate::config::GatewayFile`] checks them itself.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// HTTP or TCP.
    #[serde(flatten)]
    pub kind: CheckKind,
    /// Time between probes of one endpoint.
    #[serde(with = "millis")]
    pub interval: Duration,
    /// Each interval is stretched or shrunk by up to this share, at random (0..=1), so probes
    /// of many endpoints do not arrive together.
    #[serde(default)]
    pub jitter: f64,
    /// A probe without an answer within this time counts as `timeout`.
    #[serde(with = "millis")]
    pub timeout: Duration,
}

impl HealthCheck {
    /// `GET path` every `interval`, 10% jitter, timeout half the interval.
    #[must_use]
    pub fn http(path: &str, interval: Duration) -> Self {
        Self { kind: CheckKind::Http { path: path.to_owned() }, interval, jitter: 0.1, timeout: interval / 2 }
    }

    /// TCP connect every `interval`, 10% jitter, timeout half the interval.
    #[must_use]
    pub fn tcp(interval: Duration) -> Self {
        Self { kind: CheckKind::Tcp, interval, jitter: 0.1, timeout: interval / 2 }
    }

    pub(crate) fn next_interval(&self) -> Duration {
        let jitter = self.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 {
            return self.interval;
        }
        self.interval.mul_f64(1.0 + rand::rng().random_range(-jitter..=jitter))
    }
}

/// Starts probes (on the tokio runtime the router runs on).
#[derive(Debug, Default)]
pub(crate) struct Probe {
    /// Load probes are the caller's to send ([`Router::take_load_probes`](crate::Router::take_load_probes)).
    pub(crate) load_by_caller: bool,
    /// The connections load probes go over, kept alive between them (a balancer may ask for
    /// hundreds a second); made at the first one.
    load_client: std::sync::OnceLock<Client<HttpConnector, Empty<Bytes>>>,
}

impl Probe {
    pub(crate) fn new(load_by_caller: bool) -> Self {
        Self { load_by_caller, load_client: std::sync::OnceLock::new() }
    }

    /// Probes `instance` with `check` on a task; `done` gets the result and the load report
    /// the answer carried (`endpoint-load-metrics`), if any.
    pub(crate) fn spawn(
        &self,
        instance: &Instance,
        check: HealthCheck,
        done: impl FnOnce(ProbeResult, Option<String>) + Send + 'static,
    ) {
        let port = instance.metadata.get(HEALTH_PORT_KEY).and_then(|p| p.parse().ok()).unwrap_or(instance.port);
        let addr = SocketAddr::new(instance.ip, port);
        tokio::spawn(async move {
            let (result, report) = probe_reporting(addr, &check).await;
            done(result, report);
        });
    }

    /// Asks `instance` for its load (a plugin's `load.probe`): `GET path` on its serving
    /// port, over a kept-alive connection; `done` gets the `endpoint-load-metrics` header of
    /// the answer, if any (none when it failed or took longer than `timeout`).
    pub(crate) fn spawn_load(
        &self,
        instance: &Instance,
        path: &str,
        timeout: Duration,
        done: impl FnOnce(Option<String>) + Send + 'static,
    ) {
        let client = self
            .load_client
            .get_or_init(|| Client::builder(TokioExecutor::new()).pool_max_idle_per_host(16).build_http())
            .clone();
        let request = http::Request::get(format!("http://{}{path}", SocketAddr::new(instance.ip, instance.port)))
            .header(http::header::USER_AGENT, "sextant-load-probe")
            .body(Empty::<Bytes>::new());
        tokio::spawn(async move {
            let Ok(request) = request else { return done(None) };
            let answer = tokio::time::timeout(timeout, client.request(request)).await;
            done(answer.ok().and_then(Result::ok).and_then(|r| {
                let header = r.headers().get(crate::load_report::HEADER)?;
                Some(String::from_utf8_lossy(header.as_bytes()).into_owned())
            }));
        });
    }
}

/// Runs one probe against `addr`. The endpoint index is filled in by the router.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> ProbeResult {
    probe_reporting(addr, check).await.0
}

/// [`probe`], and the load report its answer carried (`endpoint-load-metrics`, unparsed).
async fn probe_reporting(addr: SocketAddr, check: &HealthCheck) -> (ProbeResult, Option<String>) {
    let started = Instant::now();
    let outcome = tokio::time::timeout(check.timeout, async {
        match &check.kind {
            CheckKind::Tcp => match TcpStream::connect(addr).await {
                Ok(_) => (Status::Connected, Vec::new(), None),
                Err(e) => (Status::Failed(e.to_string()), Vec::new(), None),
            },
            CheckKind::Http { path } => match http_probe(addr, path).await {
                Ok(r) => r,
                Err(e) => (Status::Failed(e), Vec::new(), None),
            },
        }
    })
    .await;
    let (status, body, report) = outcome.unwrap_or((Status::Timeout, Vec::new(), None));
    let latency = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    (ProbeResult { endpoint: 0, status, latency, body }, report)
}

async fn http_probe(addr: SocketAddr, path: &str) -> Result<(Status, Vec<u8>, Option<String>), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "sextant-health")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let report = response
            .headers()
            .get(crate::load_report::HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let mut body = response.into_body();
        let mut excerpt = Vec::new();
        // Read at most MAX_PROBE_BODY bytes, then drop the connection: a huge body costs
        // nothing more.
        while excerpt.len() < MAX_PROBE_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let take = data.len().min(MAX_PROBE_BODY - excerpt.len());
                        excerpt.extend_from_slice(&data[..take]);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => break,
            }
        }
        Ok((Status::Http(status), excerpt, report))
    }
    .await;
    conn.abort();
    result
}
