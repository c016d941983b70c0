//! Real etcd members on loopback, for tests, benchmarks and trying sextant out.
//!
//! [`LocalEtcd::start`] runs `etcd` (Debian's `etcd-server`; `scripts/setup` installs it) as
//! one or several members on free loopback ports, each with its own data directory under the
//! directory given, and waits until the cluster answers. Members can be killed and started
//! again on the same ports and data; everything is killed on drop. Timings are short
//! (heartbeat 50 ms, election 500 ms) so leases can be as short as one second.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LocalEtcdError {
    /// The `etcd` binary is not installed.
    #[error("cannot run `etcd` ({0}); install Debian's etcd-server (bash scripts/setup does)")]
    Missing(std::io::Error),
    /// Something else failed (ports, directories).
    #[error("local etcd: {0}")]
    Io(#[from] std::io::Error),
    /// A member did not answer a linearizable read in time (the limit is sized for a loaded
    /// machine): what its log said last.
    #[error("local etcd member {member} did not answer within {limit:?}; the end of its log:\n{log}")]
    NotReady {
        /// How long it was given.
        limit: Duration,
        /// The member.
        member: String,
        /// The last lines of its log.
        log: String,
    },
    /// A member exited while starting: what its log said last.
    #[error("local etcd member {member} exited ({status}); the end of its log:\n{log}")]
    Exited {
        /// The member.
        member: String,
        /// How it exited.
        status: std::process::ExitStatus,
        /// The last lines of its log.
        log: String,
    },
}

/// How long members get to answer: generous, so a busy 2-core machine running tests in
/// parallel does not fail a test for being slow; a member that exits fails at once.
pub const READY_LIMIT: Duration = Duration::from_secs(120);

/// Starts tried when a member loses its port to another process between choosing it and
/// binding it (ports are chosen free, then released for etcd to bind).
const START_ATTEMPTS: usize = 3;

#[derive(Debug)]
struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    /// Behind a lock so waiting (`&self`) can notice a member that exited.
    child: std::sync::Mutex<Option<Child>>,
}

impl Member {
    fn running(&self) -> bool {
        self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_some()
    }

    /// How the member exited, if it did.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        child.as_mut()?.try_wait().ok().flatten()
    }

    /// The last lines of the member's log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// A local etcd cluster.
#[derive(Debug)]
pub struct LocalEtcd {
    members: Vec<Member>,
    cluster: String,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalEtcd {
    /// Starts `members` members under `dir` and waits until all answer (see [`READY_LIMIT`]).
    /// A member that loses its port to another process is started again on new ports.
    pub async fn start(dir: &Path, members: usize) -> Result<Self, LocalEtcdError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut list = Vec::new();
            for i in 0..members.max(1) {
                let name = format!("m{i}");
                let dir = dir.join(&name);
                // A failed attempt's data would make etcd refuse the new cluster.
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)?;
                let (client, peer) = (free_port()?, free_port()?);
                list.push(Member { name, client, peer, dir, child: std::sync::Mutex::new(None) });
            }
            let cluster =
                list.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect::<Vec<_>>().join(",");
            let mut etcd = Self { members: list, cluster };
            for i in 0..etcd.members.len() {
                etcd.spawn(i)?;
            }
            match etcd.wait_ready().await {
                Ok(()) => return Ok(etcd),
                Err(LocalEtcdError::Exited { log, .. })
                    if attempt < START_ATTEMPTS && log.contains("address already in use") =>
                {
                    drop(etcd);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(&mut self, i: usize) -> Result<(), LocalEtcdError> {
        let cluster = self.cluster.clone();
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(m.dir.join("etcd.log"))?;
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(m.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster, "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "sextant-local"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => LocalEtcdError::Missing(e),
                _ => LocalEtcdError::Io(e),
            })?;
        *m.child.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(child);
        Ok(())
    }

    /// Waits until every running member answers a linearizable read (which needs a leader
    /// and a quorum), up to [`READY_LIMIT`]; a member that exits meanwhile fails at once.
    pub async fn wait_ready(&self) -> Result<(), LocalEtcdError> {
        let start = Instant::now();
        for m in self.members.iter().filter(|m| m.running()) {
            let endpoint = format!("http://127.0.0.1:{}", m.client);
            loop {
                let ready = async {
                    let mut c = etcd_client::Client::connect([endpoint.as_str()], None).await.ok()?;
                    c.get("/sextant-ready", None).await.ok()
                };
                if tokio::time::timeout(Duration::from_secs(2), ready).await.ok().flatten().is_some() {
                    break;
                }
                if let Some(status) = self.members.iter().find_map(|m| m.exited().map(|s| (m, s))) {
                    let (m, status) = status;
                    return Err(LocalEtcdError::Exited { member: m.name.clone(), status, log: m.log_tail() });
                }
                if start.elapsed() > READY_LIMIT {
                    return Err(LocalEtcdError::NotReady {
                        limit: READY_LIMIT,
                        member: m.name.clone(),
                        log: m.log_tail(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The index of the running member that leads the cluster, once one does (up to 10 s).
    pub async fn leader(&self) -> Option<usize> {
        for _ in 0..100 {
            for (i, m) in self.members.iter().enumerate().filter(|(_, m)| m.running()) {
                let endpoint = format!("http://127.0.0.1:{}", m.client);
                let status = async {
                    let mut c = etcd_client::Client::connect([endpoint.as_str()], None).await.ok()?;
                    c.status().await.ok()
                };
                if let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(2), status).await
                    && s.header().is_some_and(|h| h.member_id() == s.leader())
                {
                    return Some(i);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Client URLs of every member.
    #[must_use]
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://127.0.0.1:{}", m.client)).collect()
    }

    /// Members in the cluster.
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kills member `i` (SIGKILL) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) =
            self.members[i].child.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its ports and data (does not wait for it).
    pub fn restart(&mut self, i: usize) -> Result<(), LocalEtcdError> {
        if !self.members[i].running() {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Kills every member.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Starts every stopped member and waits until all answer.
    pub async fn restart_all(&mut self) -> Result<(), LocalEtcdError> {
        for i in 0..self.members.len() {
            self.restart(i)?;
        }
        self.wait_ready().await
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.kill_all();
    }
}
