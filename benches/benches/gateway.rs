//! Gateway benchmarks, every baseline measured in the same run (loopback only, bounded):
//!
//! 1. **Discovery overhead**: sequential GETs through the gateway picking via the router
//!    (registry snapshot → balancer slot → pick guard → outcome) vs the same gateway with a
//!    static upstream; p50 of each, alternating rounds. Goal: ≤ +5%.
//! 2. **Throughput vs nginx**: closed loop, 32 keep-alive connections, for `SECS` seconds each,
//!    through sextant's gateway (native round robin) and through nginx (round robin, the same
//!    four backends). Goal: ≥ 0.8×. Needs `nginx` (Debian: `apt-get install nginx-light`;
//!    `scripts/bench-gateway` installs it).
//! 3. **Hot swap under load**: open loop at 70% of the gateway's measured maximum for
//!    `SWAP_SECS` seconds steady and `SWAP_SECS` seconds swapping the balancer every second
//!    (wasm round robin ↔ wasm PeakEWMA), in interleaved 5 s blocks so both see the same
//!    machine. Goals: 0 failed requests, p99 ≤ 1.2× steady (pooled, and the median pair).
//!
//! `cargo bench -p sextant-benches --bench gateway`; environment: `SEXTANT_BENCH_SECS`
//! (default 10), `SEXTANT_BENCH_SWAP_SECS` (default 60), `NGINX` (default `nginx`).

#![allow(clippy::print_stdout, clippy::cast_precision_loss)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use sextant_benches::serve;
use sextant_core::{Instance, Record, ServiceKey};
use sextant_gateway::backend::{Backend, Behavior};
use sextant_gateway::proxy::{Gateway, GatewayConfig, Rule, Upstream};
use sextant_gateway::{Router, ServicePolicy};
use sextant_plugin::{HostConfig, PluginHost, PluginKind, PluginSpec};
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};

const SERVICE: &str = "bench/gw/api";

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default))
}

fn rules() -> GatewayConfig {
    GatewayConfig { routes: vec![Rule::prefix("/", SERVICE)], ..GatewayConfig::default() }
}

struct Discovery {
    _dir: tempfile::TempDir,
    router: Router,
}

async fn discovery(backends: &[Backend], balancer: PluginSpec) -> Discovery {
    let dir = tempfile::tempdir().unwrap();
    let registry =
        Registry::start(EmbeddedStore::open(dir.path(), EmbeddedOptions::default()).unwrap(), 1024).await.unwrap();
    for b in backends {
        let mut i = Instance::new(ServiceKey::parse(SERVICE).unwrap(), b.addr().ip(), b.addr().port());
        i.ephemeral = false;
        registry.put(Record::Instance(Arc::new(i)), None).await.unwrap();
    }
    let host = PluginHost::new(HostConfig::default()).unwrap();
    let router = Router::new(host, Arc::new(registry), ServicePolicy { balancer, ..ServicePolicy::default() });
    Discovery { _dir: dir, router }
}

/// One keep-alive connection sending GETs one after another.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    uri: http::Uri,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Self { sender, uri: format!("http://{addr}/bench").parse().unwrap() }
    }

    async fn get(&mut self) -> bool {
        if self.sender.ready().await.is_err() {
            return false;
        }
        let request = http::Request::get(self.uri.clone())
            .header(http::header::HOST, self.uri.authority().map_or("x", http::uri::Authority::as_str))
            .body(Empty::new())
            .unwrap();
        match self.sender.send_request(request).await {
            Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
            Err(_) => false,
        }
    }
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[at]
}

async fn latency_overhead() {
    let backend = Backend::start("b", Behavior { latency: Duration::ZERO, ..Behavior::default() }).await.unwrap();
    let d = discovery(std::slice::from_ref(&backend), PluginSpec::builtin("peak-ewma")).await;
    let routed = serve(Gateway::new(rules(), Upstream::Router(d.router.clone())).unwrap()).await;
    let fixed = serve(Gateway::new(rules(), Upstream::Static(backend.addr())).unwrap()).await;
    let (mut a, mut b) = (Conn::open(routed).await, Conn::open(fixed).await);
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    for _ in 0..500 {
        a.get().await;
        b.get().await;
    }
    for _ in 0..10 {
        for (conn, out) in [(&mut a, &mut ra), (&mut b, &mut rb)] {
            for _ in 0..2000 {
                let t = Instant::now();
                assert!(conn.get().await);
                out.push(u64::try_from(t.elapsed().as_nanos()).unwrap());
            }
        }
    }
    ra.sort_unstable();
    rb.sort_unstable();
    let (pa, pb) = (quantile(&ra, 0.5), quantile(&rb, 0.5));
    println!("## 1. Proxied request latency, discovery path vs static upstream (20,000 each, sequential)");
    println!("| path | p50 µs | p99 µs |");
    println!("|---|---|---|");
    println!("| static upstream | {:.1} | {:.1} |", pb as f64 / 1e3, quantile(&rb, 0.99) as f64 / 1e3);
    println!("| discovery (router, peak-ewma) | {:.1} | {:.1} |", pa as f64 / 1e3, quantile(&ra, 0.99) as f64 / 1e3);
    println!("p50 ratio discovery/static: {:.3} (goal ≤ 1.05)\n", pa as f64 / pb as f64);
}

/// Closed loop: `connections` keep-alive connections for `secs`; requests per second.
async fn closed_loop(addr: SocketAddr, connections: usize, secs: Duration) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (stop, done, failed) = (Arc::clone(&stop), Arc::clone(&done), Arc::clone(&failed));
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            while !stop.load(Relaxed) {
                if conn.get().await {
                    done.fetch_add(1, Relaxed);
                } else {
                    failed.fetch_add(1, Relaxed);
                    conn = Conn::open(addr).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (start_done, started) = (done.load(Relaxed), Instant::now());
    tokio::time::sleep(secs).await;
    let total = done.load(Relaxed) - start_done;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (total as f64 / elapsed, failed.load(Relaxed))
}

fn start_nginx(backends: &[Backend]) -> Result<(std::process::Child, SocketAddr, tempfile::TempDir), String> {
    let nginx = std::env::var("NGINX").unwrap_or_else(|_| "nginx".into());
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let servers: String = backends.iter().map(|b| format!("    server {};\n", b.addr())).collect();
    let p = dir.path().display();
    let conf = format!(
        "worker_processes auto;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
           fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
           upstream be {{\n{servers}    keepalive 64;\n  }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 10000000;\n    location / {{\n      proxy_pass http://be;\n\
             proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let child = std::process::Command::new(&nginx)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {nginx} ({e}); on Debian: apt-get install nginx-light"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().map_err(|e: std::net::AddrParseError| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err("nginx did not start listening within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, addr, dir))
}

async fn throughput(secs: Duration) {
    let mut backends = Vec::new();
    for n in 0..4 {
        backends.push(
            Backend::start(&format!("b{n}"), Behavior { latency: Duration::ZERO, ..Behavior::default() })
                .await
                .unwrap(),
        );
    }
    let d = discovery(&backends, PluginSpec::builtin("round-robin")).await;
    let ours = serve(Gateway::new(rules(), Upstream::Router(d.router.clone())).unwrap()).await;
    let (sextant, sextant_failed) = closed_loop(ours, 32, secs).await;
    println!(
        "## 2. Throughput, closed loop, 32 keep-alive connections, {} s each, 4 backends, round robin",
        secs.as_secs()
    );
    println!("| gateway | requests/s | failed |");
    println!("|---|---|---|");
    println!("| sextant (native round-robin) | {sextant:.0} | {sextant_failed} |");
    match start_nginx(&backends) {
        Ok((mut child, addr, _dir)) => {
            let (nginx, nginx_failed) = closed_loop(addr, 32, secs).await;
            let _ = child.kill();
            let _ = child.wait();
            println!("| nginx (round robin, keepalive 64) | {nginx:.0} | {nginx_failed} |");
            println!("ratio sextant/nginx: {:.2} (goal ≥ 0.8)\n", sextant / nginx);
        }
        Err(e) => println!("nginx: NOT MEASURED: {e}\n"),
    }
}

/// Open loop at `rate` for `secs`, optionally swapping the balancer every second.
/// Open loop at `rate` for `secs` over 64 keep-alive connections (requests are queued per
/// connection; latency counts from the scheduled send, so queueing is not hidden), optionally
/// swapping the balancer every second.
async fn open_loop(addr: SocketAddr, rate: f64, secs: Duration, swap: Option<(&Router, [PluginSpec; 2])>) -> Phase {
    const CONNECTIONS: usize = 64;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicU64::new(0));
    let mut queues = Vec::with_capacity(CONNECTIONS);
    let mut workers = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Instant>(64);
        queues.push(tx);
        let (latencies, failed) = (Arc::clone(&latencies), Arc::clone(&failed));
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut local = Vec::new();
            while let Some(scheduled) = rx.recv().await {
                if conn.get().await {
                    local.push(u64::try_from(scheduled.elapsed().as_nanos()).unwrap_or(u64::MAX));
                } else {
                    failed.fetch_add(1, Relaxed);
                    conn = Conn::open(addr).await;
                }
            }
            latencies.lock().extend(local);
        }));
    }
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let per_tick = rate / 1000.0;
    let (mut owed, started, mut next_swap) = (0.0, Instant::now(), Duration::from_secs(1));
    let (mut swaps, mut failed_swaps, mut shed, mut next) = (0u64, 0u64, 0u64, 0usize);
    let mut swap_tasks = Vec::new();
    while started.elapsed() < secs {
        ticker.tick().await;
        owed += per_tick;
        let now = Instant::now();
        while owed >= 1.0 {
            owed -= 1.0;
            next = (next + 1) % CONNECTIONS;
            // A full queue (64 waiting on that connection) sheds the request, counted.
            if queues[next].try_send(now).is_err() {
                shed += 1;
            }
        }
        if let Some((router, specs)) = &swap
            && started.elapsed() >= next_swap
        {
            next_swap += Duration::from_secs(1);
            let spec = specs[usize::try_from(swaps % 2).unwrap()].clone();
            swaps += 1;
            // A swap compiles nothing (cached) but instantiates and self-tests: CPU work, done
            // off the runtime's workers as a gateway would, so traffic never waits for it.
            let router = (*router).clone();
            swap_tasks.push(tokio::task::spawn_blocking(move || {
                router.load(&ServiceKey::parse(SERVICE).unwrap(), PluginKind::Balancer, spec)
            }));
        }
    }
    for t in swap_tasks {
        if let Err(e) = t.await.expect("swap task") {
            eprintln!("swap refused (the active balancer keeps serving): {e}");
            failed_swaps += 1;
        }
    }
    drop(queues);
    for w in workers {
        let _ = w.await;
    }
    let mut l = std::mem::take(&mut *latencies.lock());
    l.sort_unstable();
    Phase { latencies: l, failed: failed.load(Relaxed), shed, swaps, failed_swaps }
}

struct Phase {
    latencies: Vec<u64>,
    failed: u64,
    shed: u64,
    swaps: u64,
    failed_swaps: u64,
}

async fn hot_swap(measure: Duration, secs: Duration) {
    let mut backends = Vec::new();
    for n in 0..4 {
        backends.push(
            Backend::start(&format!("s{n}"), Behavior { latency: Duration::ZERO, ..Behavior::default() })
                .await
                .unwrap(),
        );
    }
    let d = discovery(&backends, PluginSpec::builtin("round-robin")).await;
    let host = d.router.host().clone();
    let compile = |name: &str| {
        let bytes = sextant_plugin_artifacts::builtin_bytes(name).unwrap();
        PluginSpec::Wasm { name: format!("wasm:{name}"), compiled: host.compile(bytes).unwrap(), config: "{}".into() }
    };
    let specs = [compile("round-robin"), compile("peak-ewma")];
    let key = ServiceKey::parse(SERVICE).unwrap();
    d.router.load(&key, PluginKind::Balancer, specs[0].clone()).unwrap();
    let addr = serve(Gateway::new(rules(), Upstream::Router(d.router.clone())).unwrap()).await;
    // The maximum of this very set-up (64 connections, wasm round robin), then 70% of it.
    let (max_rate, _) = closed_loop(addr, 64, measure).await;
    let rate = (max_rate * 0.7).max(100.0);
    // Steady and swapping blocks interleave (S W S W ...), so drift of the machine over the
    // run (other load on the two shared cores, timer and allocator state) lands on both
    // sides alike. Steady blocks alternate the active balancer (rr, peak-ewma); swapping
    // blocks swap rr <-> peak-ewma every second.
    const BLOCK: Duration = Duration::from_secs(5);
    let pairs = (secs.as_secs() / BLOCK.as_secs()).max(1);
    let (mut steady, mut swapping) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        let spec = specs[usize::try_from(i % 2).unwrap()].clone();
        d.router.load(&key, PluginKind::Balancer, spec).unwrap();
        steady.push(open_loop(addr, rate, BLOCK, None).await);
        swapping.push(open_loop(addr, rate, BLOCK, Some((&d.router, specs.clone()))).await);
    }
    let pooled = |phases: &[Phase]| {
        let mut all: Vec<u64> = phases.iter().flat_map(|p| p.latencies.iter().copied()).collect();
        all.sort_unstable();
        all
    };
    let sum = |phases: &[Phase], f: fn(&Phase) -> u64| phases.iter().map(f).sum::<u64>();
    let (all_steady, all_swapping) = (pooled(&steady), pooled(&swapping));
    println!(
        "## 3. Hot swap every 1 s at 70% of the maximum rate (max {max_rate:.0} req/s closed loop; {rate:.0} req/s open loop over 64 connections; {pairs} steady and {pairs} swapping blocks of {} s, interleaved)",
        BLOCK.as_secs()
    );
    println!("| phase | answered | failed | shed (queue full) | swaps (refused) | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    for (name, phases, all) in
        [("steady", &steady, &all_steady), ("swapping rr <-> peak-ewma", &swapping, &all_swapping)]
    {
        println!(
            "| {name} | {} | {} | {} | {} ({}) | {:.2} | {:.2} |",
            all.len(),
            sum(phases, |p| p.failed),
            sum(phases, |p| p.shed),
            sum(phases, |p| p.swaps),
            sum(phases, |p| p.failed_swaps),
            quantile(all, 0.5) as f64 / 1e6,
            quantile(all, 0.99) as f64 / 1e6
        );
    }
    // Per pair: the swapping block's p99 over the steady block's just before it.
    let mut ratios: Vec<f64> = steady
        .iter()
        .zip(&swapping)
        .map(|(s, w)| quantile(&w.latencies, 0.99) as f64 / quantile(&s.latencies, 0.99).max(1) as f64)
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "p99 swapping / steady: pooled {:.2}, median of the {} pairs {:.2} (range {:.2}..{:.2}) (goal ≤ 1.2); failed during swaps: {} (goal 0)\n",
        quantile(&all_swapping, 0.99) as f64 / quantile(&all_steady, 0.99).max(1) as f64,
        ratios.len(),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
        sum(&swapping, |p| p.failed)
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (secs, swap_secs) = (env_secs("SEXTANT_BENCH_SECS", 10), env_secs("SEXTANT_BENCH_SWAP_SECS", 60));
    runtime.block_on(async {
        latency_overhead().await;
        throughput(secs).await;
        hot_swap(secs, swap_secs).await;
    });
}
