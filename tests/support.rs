//! Starting and stopping `sextant serve`, and talking to its admin API.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `sextant` binary cargo built for these tests.
pub(crate) fn sextant_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sextant")
}

/// A free loopback TCP port (bound, then released).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// A free loopback UDP port (bound, then released).
pub(crate) fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("bind udp 127.0.0.1:0").port()
}

/// A running `sextant serve`.
#[derive(Debug)]
pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) addr: SocketAddr,
    pub(crate) quic: SocketAddr,
    pub(crate) data_dir: PathBuf,
    log: PathBuf,
}

/// How a server that failed to start ended.
#[derive(Debug)]
pub(crate) struct StartFailure {
    pub(crate) status: Option<ExitStatus>,
    pub(crate) log: String,
}

impl Server {
    /// Starts on `data_dir` and waits until `/healthz` answers; panics with the log if not.
    pub(crate) fn start(data_dir: &Path) -> Self {
        match Self::try_start(data_dir) {
            Ok(s) => s,
            Err(f) => panic!("sextant did not start ({:?}):\n{}", f.status, f.log),
        }
    }

    /// Starts on `data_dir`; `Err` if it exits or does not become healthy within 20 s.
    pub(crate) fn try_start(data_dir: &Path) -> Result<Self, StartFailure> {
        Self::try_start_with(data_dir, &[])
    }

    /// Starts on `data_dir` with extra `serve` arguments.
    pub(crate) fn try_start_with(data_dir: &Path, extra: &[&str]) -> Result<Self, StartFailure> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        Self::try_start_on(data_dir, addr, quic, extra)
    }

    /// A server that does not run: its addresses answer nothing, its data directory (and
    /// CA) are `data_dir`'s. For clients that must cope with no server.
    pub(crate) fn unreachable(data_dir: &Path) -> Self {
        Self {
            child: None,
            addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            quic: format!("127.0.0.1:{}", free_udp_port()).parse().unwrap(),
            data_dir: data_dir.to_owned(),
            log: data_dir.with_extension("unreachable.log"),
        }
    }

    /// Stops (SIGTERM) and starts again on the same addresses and data directory.
    pub(crate) fn restart(self, extra: &[&str]) -> Self {
        let (data_dir, addr, quic) = (self.data_dir.clone(), self.addr, self.quic);
        let (status, log) = self.terminate();
        assert!(status.success(), "clean exit before the restart:\n{log}");
        Self::try_start_on(&data_dir, addr, quic, extra).unwrap_or_else(|f| panic!("{:?}\n{}", f.status, f.log))
    }

    fn try_start_on(data_dir: &Path, addr: SocketAddr, quic: SocketAddr, extra: &[&str]) -> Result<Self, StartFailure> {
        let log = data_dir.with_extension(format!("{}.log", addr.port()));
        let child = Command::new(sextant_bin())
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--admin", &addr.to_string(), "--listen", &quic.to_string()])
            .args(extra)
            .env("SEXTANT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create log file"))
            .spawn()
            .expect("spawn sextant");
        let mut server = Self { child: Some(child), addr, quic, data_dir: data_dir.to_owned(), log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                server.child = None;
                return Err(StartFailure { status: Some(status), log: server.log() });
            }
            if http().get(&server.url("/healthz")).call().is_ok_and(|r| r.status() == 200) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(StartFailure { status: None, log: server.log() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://ADDR{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The server process's id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the server logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub(crate) fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reap");
        }
    }

    /// SIGTERM, then waits (at most 10 s) for the exit.
    pub(crate) fn terminate(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, self.log());
            }
            assert!(Instant::now() < deadline, "sextant did not exit within 10 s of SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn get(&self, path: &str) -> (u16, Value) {
        read(http().get(&self.url(path)).call())
    }

    pub(crate) fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        read(http().post(&self.url(path)).send_json(body))
    }

    pub(crate) fn put_text(&self, path: &str, body: &str) -> (u16, Value) {
        read(http().put(&self.url(path)).send(body))
    }

    pub(crate) fn put_json(&self, path: &str, body: &Value) -> (u16, Value) {
        read(http().put(&self.url(path)).send_json(body))
    }

    pub(crate) fn delete(&self, path: &str) -> (u16, Value) {
        read(http().delete(&self.url(path)).call())
    }

    /// `method path` with `Authorization: Bearer token` (when given) and a JSON body (when
    /// given).
    pub(crate) fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
        let mut request = ureq::http::Request::builder().method(method).uri(self.url(path));
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        match body {
            Some(b) => {
                request = request.header("content-type", "application/json");
                read(http().run(request.body(b.to_string()).expect("request")))
            }
            None => read(http().run(request.body(ureq::SendBody::none()).expect("request"))),
        }
    }

    pub(crate) fn text(&self, path: &str) -> String {
        http().get(&self.url(path)).call().expect("GET").body_mut().read_to_string().expect("body")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A local etcd (on `runtime`) and two servers `a` and `b` on it, with data directories under
/// `dir` and certificates from one CA (so a gateway or client trusts either).
pub(crate) fn two_servers_on_etcd(
    dir: &Path,
    runtime: &tokio::runtime::Runtime,
) -> (sextant_store::local_etcd::LocalEtcd, Server, Server) {
    let etcd = runtime
        .block_on(sextant_store::local_etcd::LocalEtcd::start(&dir.join("etcd"), 1))
        .expect("start a local etcd (bash scripts/setup installs etcd-server)");
    let endpoints = etcd.endpoints().join(",");
    let endpoints = endpoints.as_str();
    let fleet = dir.join("fleet");
    let out = Command::new(sextant_bin())
        .args(["tls", "init", "--dir", fleet.to_str().unwrap()])
        .args(["--host", "a=localhost,127.0.0.1", "--host", "b=localhost,127.0.0.1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let start = |name: &str| {
        let data = dir.join(name);
        std::fs::create_dir_all(data.join("tls")).unwrap();
        std::fs::copy(fleet.join("ca.pem"), data.join("tls/ca.pem")).unwrap();
        let (cert, key) = (fleet.join(format!("{name}.pem")), fleet.join(format!("{name}.key")));
        let args = ["--store", "etcd", "--etcd-endpoints", endpoints, "--etcd-timeout-ms", "3000"];
        let args = [&args[..], &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]].concat();
        Server::try_start_with(&data, &args).unwrap_or_else(|f| panic!("{:?}\n{}", f.status, f.log))
    };
    let (a, b) = (start("a"), start("b"));
    (etcd, a, b)
}

/// Waits (polling every 50 ms) until `f` holds; the 20 s bound only catches hangs.
pub(crate) fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP client that returns 4xx/5xx as responses and never waits long.
pub(crate) fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn read(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut r = r.expect("HTTP request");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// An instance registration body.
pub(crate) fn instance(service: &str, id: &str, port: u16, ephemeral: bool) -> Value {
    let (ns, group, name) = match service.split('/').collect::<Vec<_>>()[..] {
        [n] => ("default", "default", n),
        [ns, g, n] => (ns, g, n),
        _ => panic!("bad service {service}"),
    };
    serde_json::json!({
        "service": { "namespace": ns, "group": group, "service": name },
        "id": id, "ip": "127.0.0.1", "port": port, "ephemeral": ephemeral,
    })
}

/// A `sextant` command line aimed at `server` (its QUIC address and CA).
pub(crate) fn cli(server: &Server, args: &[&str]) -> Command {
    let mut cmd = Command::new(sextant_bin());
    let ca = server.data_dir.join("tls/ca.pem");
    cmd.args(args)
        .args(["--server", &server.quic.to_string(), "--ca", ca.to_str().unwrap()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a CLI command against `server` to completion.
pub(crate) fn run(server: &Server, args: &[&str]) -> Output {
    cli(server, args).stdout(Stdio::piped()).output().expect("run sextant")
}

/// Runs `promtool check metrics` (from PATH, or where `scripts/setup` puts it) on `text`;
/// panics with what it says unless it accepts the text without a remark.
pub(crate) fn promtool_check(text: &str) {
    let cached = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sextant/bin/promtool"));
    let on_path = std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("promtool")).find(|p| p.is_file()));
    let promtool = on_path.or(cached.filter(|p| p.is_file())).expect("promtool: run `bash scripts/setup`");
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool ends");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");
}

/// The metric names `docs/grafana/sextant.json`'s queries read (`sextant_…`), and its panels
/// checked on the way: ids unique, every panel on the dashboard's data source variable.
pub(crate) fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana/sextant.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut names = std::collections::BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "panel ids are unique: {panel}");
        let Some(targets) = panel["targets"].as_array() else { continue };
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("sextant_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    assert!(names.len() > 30, "{names:?}");
    names
}

/// The sum of the samples of counter `name` whose labels contain `labels` (for example
/// `result="ok"}`) in a Prometheus text exposition.
pub(crate) fn sample_sum(text: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The names of the samples in a Prometheus text exposition.
pub(crate) fn sample_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}
