//! Access for every door: the token table in force, abuse limits and the audit log.
//!
//! One [`Access`] is shared by the QUIC server and the admin HTTP API, so both doors apply the
//! same table ([`sextant_proto::acl::permits`]), the same limits and write the same audit log:
//! - **The table in force** can be replaced while serving ([`Access::reload`], from the access
//!   file on change or SIGHUP): new requests see the new table at once, open QUIC connections
//!   are re-checked (a revoked token's connections are closed), and a file that does not parse
//!   leaves the old table in force.
//! - **Limits** ([`Limits`]): a request rate per client (GCRA, [`governor`]), where a client is
//!   the principal (token name, or `anonymous` on an open server) from one IP address, shared by
//!   both doors; registrations and watches held by one QUIC connection. Exceeding one is
//!   answered with the typed `limited` error naming the limit and the option that raises it.
//! - **Audit**: every accepted write and every refusal is one structured log line under the
//!   `sextant::audit` target (door, outcome, who, client certificate, from, what, target,
//!   revision, reason) and one count per (door, outcome), exported as
//!   `sextant_audit_events_total`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sextant_proto::acl::{Acl, AclError, Principal};
use tokio::sync::watch;

/// Abuse limits. The defaults ([`Limits::default`]) are far above what a normal gateway or
/// instance does; [`Limits::unlimited`] turns them off (tests and benchmarks of the library).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests per second one client (principal from one IP address) may send, sustained,
    /// over both doors together; `None`: no limit.
    pub requests_per_second: Option<NonZeroU32>,
    /// Requests a client may send at once above that rate.
    pub burst: NonZeroU32,
    /// Instances one QUIC connection may hold registered.
    pub registrations_per_connection: usize,
    /// Subscriptions one QUIC connection may hold open. QUIC flow control allows 256 open
    /// streams per connection (watches and requests in flight together), so a value above
    /// 255 only makes further watches wait instead of being refused.
    pub watches_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            requests_per_second: NonZeroU32::new(10_000),
            burst: NonZeroU32::new(20_000).unwrap_or(NonZeroU32::MIN),
            registrations_per_connection: 10_000,
            watches_per_connection: 200,
        }
    }
}

impl Limits {
    /// No limit at all.
    #[must_use]
    pub fn unlimited() -> Self {
        Self {
            requests_per_second: None,
            burst: NonZeroU32::MAX,
            registrations_per_connection: usize::MAX,
            watches_per_connection: usize::MAX,
        }
    }
}

/// Which door a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Door {
    /// The QUIC discovery protocol.
    Quic,
    /// The admin HTTP API.
    Http,
}

impl Door {
    /// `quic` or `http`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Http => "http",
        }
    }
}

/// What became of a request, as the audit log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// A write that was carried out.
    Accepted,
    /// No token, an unknown or revoked token, or a malformed credential.
    Unauthenticated,
    /// A known token without the right.
    Forbidden,
    /// An abuse limit was reached.
    Limited,
}

impl Verdict {
    /// Every verdict, in a fixed order.
    pub const ALL: [Self; 4] = [Self::Accepted, Self::Unauthenticated, Self::Forbidden, Self::Limited];

    /// `accepted`, `unauthenticated`, `forbidden`, `limited`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::Limited => "limited",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Accepted => 0,
            Self::Unauthenticated => 1,
            Self::Forbidden => 2,
            Self::Limited => 3,
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    /// The door.
    pub door: Door,
    /// The verdict.
    pub verdict: Verdict,
    /// Token name (`anonymous` on an open server, `-` when nobody authenticated).
    pub who: &'a str,
    /// Subject of the client certificate (mTLS), if one was presented.
    pub certificate: Option<&'a str>,
    /// The peer's address.
    pub from: SocketAddr,
    /// The request: a protocol message type, or `METHOD /path` over HTTP.
    pub what: &'a str,
    /// What it was about (a service, config key, plugin, lease), when known.
    pub target: Option<String>,
    /// The revision an accepted write produced.
    pub revision: Option<u64>,
    /// Why it was refused.
    pub reason: Option<&'a str>,
}

/// Why a request was limited: the limit and how to raise it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The client's request rate.
    #[error(
        "request rate limit reached: {rate} requests/s (burst {burst}) for {client}; \
         retry in {retry_after:?}, or raise `sextant serve --max-request-rate`"
    )]
    Rate {
        /// The client key.
        client: String,
        /// The sustained rate.
        rate: u32,
        /// The burst.
        burst: u32,
        /// When the client may send again.
        retry_after: std::time::Duration,
    },
    /// Registrations held by one connection.
    #[error(
        "this connection holds {limit} registrations, the limit; use another connection, or \
         raise `sextant serve --max-registrations-per-connection`"
    )]
    Registrations {
        /// The limit.
        limit: usize,
    },
    /// Watches held by one connection.
    #[error(
        "this connection holds {limit} subscriptions, the limit; close one, use another \
         connection, or raise `sextant serve --max-watches-per-connection`"
    )]
    Watches {
        /// The limit.
        limit: usize,
    },
}

/// Why the access file could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read.
    #[error("access file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a valid access file.
    #[error("access file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        source: AclError,
    },
}

/// Reads and checks an access file.
pub fn read_acl(path: &Path) -> Result<Acl, ReloadError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ReloadError::Read { path: shown.clone(), source })?;
    Acl::from_json(&text).map_err(|source| ReloadError::Parse { path: shown, source })
}

/// The access state shared by every door.
pub struct Access {
    acl: ArcSwap<Acl>,
    generation: watch::Sender<u64>,
    limits: Limits,
    rates: Option<DefaultKeyedRateLimiter<String>>,
    checks: AtomicU64,
    audit: [[AtomicU64; 4]; 2],
    reloads: [AtomicU64; 2],
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("acl", &self.acl.load()).field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl Default for Access {
    /// An open server without limits.
    fn default() -> Self {
        Self::new(Acl::open(), Limits::unlimited())
    }
}

impl Access {
    /// `acl` in force, with `limits`.
    #[must_use]
    pub fn new(acl: Acl, limits: Limits) -> Self {
        let rates = limits
            .requests_per_second
            .map(|rate| RateLimiter::dashmap(Quota::per_second(rate).allow_burst(limits.burst)));
        Self {
            acl: ArcSwap::from_pointee(acl),
            generation: watch::Sender::new(0),
            limits,
            rates,
            checks: AtomicU64::new(0),
            audit: Default::default(),
            reloads: Default::default(),
        }
    }

    /// The table in force now.
    #[must_use]
    pub fn acl(&self) -> Arc<Acl> {
        self.acl.load_full()
    }

    /// The limits.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Puts `acl` in force: later requests see it, open connections are re-checked.
    pub fn replace(&self, acl: Acl) {
        self.acl.store(Arc::new(acl));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Re-reads the access file at `path`; on any error the table in force stays and the
    /// error is returned (and counted).
    pub fn reload(&self, path: &Path) -> Result<(), ReloadError> {
        match read_acl(path) {
            Ok(acl) => {
                let tokens = acl.token_count().unwrap_or(0);
                self.replace(acl);
                self.reloads[0].fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "sextant::audit", file = %path.display(), tokens, "access file reloaded");
                Ok(())
            }
            Err(e) => {
                self.reloads[1].fetch_add(1, Ordering::Relaxed);
                tracing::error!(target: "sextant::audit", error = %e, "access file not reloaded; the previous one stays in force");
                Err(e)
            }
        }
    }

    /// Reloads so far: `(succeeded, failed)`.
    #[must_use]
    pub fn reloads(&self) -> (u64, u64) {
        (self.reloads[0].load(Ordering::Relaxed), self.reloads[1].load(Ordering::Relaxed))
    }

    /// Changes whenever another table is put in force.
    #[must_use]
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Counts one request of `principal` from `ip` against its rate.
    pub fn check_rate(&self, principal: &Principal, ip: IpAddr) -> Result<(), LimitError> {
        let (Some(rates), Some(rate)) = (&self.rates, self.limits.requests_per_second) else {
            return Ok(());
        };
        let key = format!("{}@{ip}", principal.name);
        // Keys of clients that went quiet are dropped now and then, so addresses that come
        // and go do not grow the table without bound.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 65_536 == 65_535 {
            rates.retain_recent();
        }
        rates.check_key(&key).map_err(|not_until| LimitError::Rate {
            client: key,
            rate: rate.get(),
            burst: self.limits.burst.get(),
            retry_after: not_until.wait_time_from(rates.clock().now()),
        })
    }

    /// Takes one of a connection's watch places from `held`, or refuses at the limit.
    pub fn take_watch(&self, held: &Arc<AtomicUsize>) -> Result<WatchPermit, LimitError> {
        let limit = self.limits.watches_per_connection;
        held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .map(|_| WatchPermit(held.clone()))
            .map_err(|_| LimitError::Watches { limit })
    }

    /// Writes `event` to the audit log and counts it.
    pub fn audit(&self, event: &AuditEvent<'_>) {
        let door = match event.door {
            Door::Quic => 0,
            Door::Http => 1,
        };
        self.audit[door][event.verdict.index()].fetch_add(1, Ordering::Relaxed);
        let AuditEvent { door, verdict, who, certificate, from, what, target, revision, reason } = event;
        let accepted = *verdict == Verdict::Accepted;
        let (door, verdict) = (door.as_str(), verdict.as_str());
        if accepted {
            tracing::info!(target: "sextant::audit", door, verdict, who, certificate, %from, what, target, revision, "write");
        } else {
            tracing::warn!(target: "sextant::audit", door, verdict, who, certificate, %from, what, target, reason, "refused");
        }
    }

    /// Audit counts so far, per door and verdict.
    #[must_use]
    pub fn audit_counts(&self) -> Vec<(Door, Verdict, u64)> {
        let mut out = Vec::new();
        for (d, door) in [Door::Quic, Door::Http].into_iter().enumerate() {
            for verdict in Verdict::ALL {
                out.push((door, verdict, self.audit[d][verdict.index()].load(Ordering::Relaxed)));
            }
        }
        out
    }
}

/// One open watch of a connection; gives its place back when dropped.
#[derive(Debug)]
pub struct WatchPermit(Arc<AtomicUsize>);

impl Drop for WatchPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32) -> Limits {
        Limits {
            requests_per_second: NonZeroU32::new(rate),
            burst: NonZeroU32::new(burst).unwrap(),
            registrations_per_connection: 2,
            watches_per_connection: 2,
        }
    }

    #[test]
    fn the_rate_is_per_principal_and_address() {
        let acl = Acl::from_json(
            r#"{"tokens":[{"name":"a","token":"x","namespaces":{}},{"name":"b","token":"y","namespaces":{}}]}"#,
        )
        .unwrap();
        let (a, b) = (acl.authenticate(Some("x")).unwrap(), acl.authenticate(Some("y")).unwrap());
        // One per hour: the burst is all a client gets within this test.
        let access = Access::new(acl, Limits { requests_per_second: None, ..limits(1, 3) });
        let one: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..100 {
            access.check_rate(&a, one).unwrap();
        }
        let access = Access::new(Acl::open(), limits(1, 3));
        for _ in 0..3 {
            access.check_rate(&a, one).unwrap();
        }
        let refused = access.check_rate(&a, one).unwrap_err();
        assert!(refused.to_string().contains("--max-request-rate"), "{refused}");
        assert!(refused.to_string().contains("a@127.0.0.1"), "{refused}");
        access.check_rate(&b, one).unwrap();
        access.check_rate(&a, "127.0.0.2".parse().unwrap()).unwrap();
    }

    #[test]
    fn watch_places_are_given_back() {
        let access = Access::new(Acl::open(), limits(1, 1));
        let held = Arc::new(AtomicUsize::new(0));
        let first = access.take_watch(&held).unwrap();
        let _second = access.take_watch(&held).unwrap();
        assert_eq!(access.take_watch(&held).unwrap_err(), LimitError::Watches { limit: 2 });
        drop(first);
        assert!(access.take_watch(&held).is_ok());
    }

    #[test]
    fn a_bad_file_leaves_the_table_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl.json");
        std::fs::write(&path, r#"{"tokens":[{"name":"a","token":"x","namespaces":{"*":"read"}}]}"#).unwrap();
        let access = Access::new(read_acl(&path).unwrap(), Limits::unlimited());
        let changes = access.changes();
        std::fs::write(&path, "{ not json").unwrap();
        assert!(matches!(access.reload(&path), Err(ReloadError::Parse { .. })));
        assert!(access.acl().authenticate(Some("x")).is_some());
        assert!(!changes.has_changed().unwrap());
        std::fs::write(&path, r#"{"tokens":[{"name":"a","token":"z","namespaces":{"*":"read"}}]}"#).unwrap();
        access.reload(&path).unwrap();
        assert!(changes.has_changed().unwrap());
        assert!(access.acl().authenticate(Some("x")).is_none());
        assert!(access.acl().authenticate(Some("z")).is_some());
        assert_eq!(access.reloads(), (1, 1));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(access.reload(&path), Err(ReloadError::Read { .. })));
        assert_eq!(access.reloads(), (1, 2));
    }

    #[test]
    fn audit_events_are_counted_by_door_and_verdict() {
        let access = Access::default();
        let event = AuditEvent {
            door: Door::Http,
            verdict: Verdict::Forbidden,
            who: "a",
            certificate: None,
            from: "127.0.0.1:1".parse().unwrap(),
            what: "POST /v1/instances",
            target: None,
            revision: None,
            reason: Some("no"),
        };
        access.audit(&event);
        access.audit(&event);
        access.audit(&AuditEvent { door: Door::Quic, verdict: Verdict::Accepted, ..event });
        let counts = access.audit_counts();
        let count = |d, v| counts.iter().find(|(dd, vv, _)| *dd == d && *vv == v).unwrap().2;
        assert_eq!(count(Door::Http, Verdict::Forbidden), 2);
        assert_eq!(count(Door::Quic, Verdict::Accepted), 1);
        assert_eq!(count(Door::Quic, Verdict::Forbidden), 0);
    }
}
