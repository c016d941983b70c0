//! Sample HTTP backends on loopback for the demo, tests and benchmarks. Their behaviour can
//! change while they run: slower, flaky (503s), hanging, resetting connections, answering
//! garbage, or serving a huge health body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// How a backend treats requests and connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers.
    Normal,
    /// Accepts and never answers.
    Hang,
    /// Resets connections (new ones at once; open ones at their next request).
    Reset,
    /// Answers new connections with bytes that are not HTTP.
    Garbage,
}

/// A backend's behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behavior {
    /// Mean service time; each request takes 0.5–1.5× this.
    pub latency: Duration,
    /// Share of requests answered with 503 (0..=1).
    pub error_rate: f64,
    /// Connection-level behaviour.
    pub mode: Mode,
    /// Status of `GET /health`.
    pub health_status: u16,
    /// Size of the `/health` body in bytes.
    pub health_body: usize,
    /// A load report sent with every answer, as `endpoint-load-metrics` (ORCA: `TEXT
    /// cpu_utilization=0.3, ...` or `JSON {...}`, or anything, to test a reader).
    pub load_report: Option<&'static str>,
    /// When set, the load report goes only with the answer to `GET` of this path (a load
    /// probe, answered at once and not counted as served), not with every answer.
    pub load_probe_path: Option<&'static str>,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(1),
            error_rate: 0.0,
            mode: Mode::Normal,
            health_status: 200,
            health_body: 2,
            load_report: None,
            load_probe_path: None,
        }
    }
}

#[derive(Debug)]
struct Shared {
    name: String,
    behavior: ArcSwap<Behavior>,
    served: AtomicU64,
    health_checks: AtomicU64,
    load_probes: AtomicU64,
}

/// A running sample backend. Dropping it (or [`Backend::kill`]) closes its listener and every
/// connection at once, like a killed process.
#[derive(Debug)]
pub struct Backend {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Starts a backend named `name` on `127.0.0.1` (a free port).
    ///
    /// # Errors
    /// When it cannot bind.
    pub async fn start(name: &str, behavior: Behavior) -> std::io::Result<Self> {
        Self::start_on(name, behavior, "127.0.0.1:0".parse().expect("a valid address")).await
    }

    /// Starts a backend on `addr` (for restarting one on the same port).
    ///
    /// # Errors
    /// When it cannot bind.
    pub async fn start_on(name: &str, behavior: Behavior, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            behavior: ArcSwap::from_pointee(behavior),
            served: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            load_probes: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept(listener, Arc::clone(&shared)));
        Ok(Self { addr, shared, task })
    }

    /// Its address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name (sent back in `x-backend`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The current behaviour.
    #[must_use]
    pub fn behavior(&self) -> Behavior {
        **self.shared.behavior.load()
    }

    /// Changes the behaviour from now on.
    pub fn set(&self, behavior: Behavior) {
        self.shared.behavior.store(Arc::new(behavior));
    }

    /// Requests answered (health checks excluded).
    #[must_use]
    pub fn served(&self) -> u64 {
        self.shared.served.load(Relaxed)
    }

    /// Health checks answered.
    #[must_use]
    pub fn health_checks(&self) -> u64 {
        self.shared.health_checks.load(Relaxed)
    }

    /// Load probes answered (`Behavior::load_probe_path`).
    #[must_use]
    pub fn load_probes(&self) -> u64 {
        self.shared.load_probes.load(Relaxed)
    }

    /// Stops at once: listener and connections closed.
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                connections.spawn(connection(stream, Arc::clone(&shared)));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    match shared.behavior.load().mode {
        Mode::Normal | Mode::Hang => {}
        Mode::Reset => {
            // Linger 0: close sends a RST, not a FIN (and does not block: nothing is unsent).
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            return;
        }
        Mode::Garbage => {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(b"\x00\x01garbage, not HTTP\r\n\r\n").await;
            return;
        }
    }
    let svc_shared = Arc::clone(&shared);
    let service = service_fn(move |request: hyper::Request<Incoming>| {
        let shared = Arc::clone(&svc_shared);
        async move { respond(&shared, &request).await }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
}

#[derive(Debug, thiserror::Error)]
#[error("connection dropped on purpose")]
struct Dropped;

async fn respond(shared: &Shared, request: &hyper::Request<Incoming>) -> Result<hyper::Response<Full<Bytes>>, Dropped> {
    let behavior = **shared.behavior.load();
    match behavior.mode {
        Mode::Normal => {}
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Reset | Mode::Garbage => return Err(Dropped),
    }
    let mut builder = hyper::Response::builder().header("x-backend", shared.name.as_str());
    let probed = behavior.load_probe_path.is_some_and(|p| request.uri().path() == p);
    if let Some(report) = behavior.load_report
        && (probed || behavior.load_probe_path.is_none())
    {
        builder = builder.header(crate::load_report::HEADER, report);
    }
    if probed {
        shared.load_probes.fetch_add(1, Relaxed);
        return Ok(builder.status(200).body(Full::new(Bytes::from_static(b"load\n"))).unwrap_or_default());
    }
    if request.uri().path() == "/health" {
        shared.health_checks.fetch_add(1, Relaxed);
        let body = if behavior.health_body <= 2 {
            Bytes::from_static(b"ok")
        } else {
            Bytes::from(vec![b'x'; behavior.health_body])
        };
        return Ok(builder.status(behavior.health_status).body(Full::new(body)).unwrap_or_default());
    }
    let (factor, fail) = {
        let mut rng = rand::rng();
        (rng.random_range(0.5..1.5), rng.random_bool(behavior.error_rate.clamp(0.0, 1.0)))
    };
    if !behavior.latency.is_zero() {
        tokio::time::sleep(behavior.latency.mul_f64(factor)).await;
    }
    shared.served.fetch_add(1, Relaxed);
    let (status, body) = if fail { (503, "unavailable\n") } else { (200, "ok\n") };
    Ok(builder.status(status).body(Full::new(Bytes::from_static(body.as_bytes()))).unwrap_or_default())
}
