//! Access control: tokens with per-namespace rights, read from a JSON file.
//!
//! ```json
//! { "tokens": [
//!     { "name": "gateway", "token": "s3cret", "namespaces": { "prod": "read" } },
//!     { "name": "deployer", "token": "t0ken", "namespaces": { "prod": "write", "*": "read" } },
//!     { "name": "ops", "token": "adm1n", "namespaces": { "*": "admin" } }
//! ] }
//! ```
//!
//! Rights are ordered `read < write < admin`; `"*"` applies to every namespace and is the
//! right needed for whole-registry requests (listing everything, plugins need `admin`).
//! With no file, the server is open: every connection has `admin` everywhere (development).
//!
//! One right stands apart: `"report_faults": true` on an entry lets it send `plugin_fault`
//! (a host's word that it rolled a plugin version back, which can roll the whole fleet
//! back). It is what a gateway's token carries beside `read`; `admin` on `*` implies it, no
//! namespace right does, so a client that may only register instances cannot forge a
//! verdict.
//!
//! One table for every door: [`permits`] decides for a [`Request`], whether it came over QUIC
//! or as its admin HTTP equivalent. Tokens are kept as SHA-256 digests and compared in constant
//! time against every entry (no early exit), so neither the table nor response timing tells an
//! attacker how much of a guess was right.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sextant_core::{Namespace, Scope};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Request;

/// A right, ordered from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Right {
    /// Read registrations and config, subscribe, pick.
    Read,
    /// Also register, deregister, leases, config writes.
    Write,
    /// Also plugins.
    Admin,
}

/// One token's entry in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRule {
    /// Who it is, for logs.
    pub name: String,
    /// The secret presented in `hello`.
    pub token: String,
    /// Namespace (or `*`) → right.
    pub namespaces: BTreeMap<String, Right>,
    /// May send `plugin_fault` (a gateway's token).
    #[serde(default)]
    pub report_faults: bool,
}

/// The file's shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclFile {
    /// Every token.
    pub tokens: Vec<TokenRule>,
}

/// Why an ACL file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// Not valid JSON of the documented shape.
    #[error("access file is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    /// A namespace key that is neither `*` nor a valid namespace.
    #[error("access file: {0:?} is not a namespace or \"*\"")]
    BadNamespace(String),
    /// Two entries share a token.
    #[error("access file: token of {0:?} is used twice")]
    DuplicateToken(String),
    /// An empty token.
    #[error("access file: token of {0:?} is empty")]
    EmptyToken(String),
}

/// Who a connection is and what it may do.
#[derive(Clone, PartialEq, Eq)]
pub struct Principal {
    /// Name from the file (`anonymous` on an open server).
    pub name: String,
    rights: BTreeMap<String, Right>,
    /// May send `plugin_fault`.
    report_faults: bool,
    /// SHA-256 of the token it authenticated with (zero for `anonymous`): how a reloaded
    /// table finds it again.
    digest: [u8; 32],
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the digest: logs are not a place for token material.
        f.debug_struct("Principal")
            .field("name", &self.name)
            .field("rights", &self.rights)
            .field("report_faults", &self.report_faults)
            .finish()
    }
}

impl Principal {
    fn anonymous_admin() -> Self {
        Self {
            name: "anonymous".into(),
            rights: BTreeMap::from([("*".into(), Right::Admin)]),
            report_faults: true,
            digest: [0; 32],
        }
    }

    /// Whether this is the open server's anonymous principal (no token involved).
    #[must_use]
    pub fn is_anonymous(&self) -> bool {
        self.digest == [0; 32]
    }

    /// The right held on `ns` (`None`: the whole registry, which only `*` grants).
    #[must_use]
    pub fn right_on(&self, ns: Option<&Namespace>) -> Option<Right> {
        let wildcard = self.rights.get("*").copied();
        let specific = ns.and_then(|ns| self.rights.get(ns.as_str()).copied());
        wildcard.max(specific)
    }

    /// Whether the principal holds at least `right` on `ns`.
    #[must_use]
    pub fn allows(&self, ns: Option<&Namespace>, right: Right) -> bool {
        self.right_on(ns).is_some_and(|r| r >= right)
    }

    /// Whether the principal may write anywhere (leases are not namespaced).
    #[must_use]
    pub fn writes_somewhere(&self) -> bool {
        self.rights.values().any(|r| *r >= Right::Write)
    }

    /// Whether the principal may send `plugin_fault`: its entry says `report_faults`, or it
    /// is `admin` on `*`.
    #[must_use]
    pub fn reports_faults(&self) -> bool {
        self.report_faults || self.allows(None, Right::Admin)
    }

    /// Whether the principal may read anywhere (plugin records and components are what any
    /// gateway needs, whatever namespaces it routes).
    #[must_use]
    pub fn reads_somewhere(&self) -> bool {
        self.rights.values().any(|r| *r >= Right::Read)
    }
}

/// The token table.
#[derive(Debug, Clone)]
pub struct Acl {
    /// Every principal with the digest of its token; `None`: open.
    tokens: Option<Vec<Principal>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Acl {
    /// No access control: everyone is admin.
    #[must_use]
    pub fn open() -> Self {
        Self { tokens: None }
    }

    /// Parses an access file.
    pub fn from_json(text: &str) -> Result<Self, AclError> {
        let file: AclFile = serde_json::from_str(text)?;
        let mut tokens: Vec<Principal> = Vec::new();
        for rule in file.tokens {
            if rule.token.is_empty() {
                return Err(AclError::EmptyToken(rule.name));
            }
            for ns in rule.namespaces.keys() {
                if ns != "*" && Namespace::new(ns.as_str()).is_err() {
                    return Err(AclError::BadNamespace(ns.clone()));
                }
            }
            let principal = Principal {
                name: rule.name.clone(),
                rights: rule.namespaces,
                report_faults: rule.report_faults,
                digest: digest(&rule.token),
            };
            if tokens.iter().any(|p| p.digest == principal.digest) {
                return Err(AclError::DuplicateToken(rule.name));
            }
            tokens.push(principal);
        }
        Ok(Self { tokens: Some(tokens) })
    }

    /// Whether tokens are required.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.tokens.is_none()
    }

    /// The principal behind `token`, if any. Compares the token's digest with every entry in
    /// constant time.
    #[must_use]
    pub fn authenticate(&self, token: Option<&str>) -> Option<Principal> {
        match &self.tokens {
            None => Some(Principal::anonymous_admin()),
            Some(_) => self.find(&digest(token?)),
        }
    }

    /// `principal` as this (possibly reloaded) table knows it now: its current rights, or
    /// `None` when its token is no longer in the table (revoked). On an open table everyone
    /// stays the anonymous admin.
    #[must_use]
    pub fn reauthenticate(&self, principal: &Principal) -> Option<Principal> {
        match &self.tokens {
            None => Some(Principal::anonymous_admin()),
            Some(_) if principal.is_anonymous() => None,
            Some(_) => self.find(&principal.digest),
        }
    }

    fn find(&self, wanted: &[u8; 32]) -> Option<Principal> {
        let mut found = None;
        for p in self.tokens.iter().flatten() {
            // No early exit: every entry is compared.
            if bool::from(p.digest.ct_eq(wanted)) {
                found = Some(p);
            }
        }
        found.cloned()
    }

    /// How many tokens the table holds (`None`: open).
    #[must_use]
    pub fn token_count(&self) -> Option<usize> {
        self.tokens.as_ref().map(Vec::len)
    }
}

/// Whether `principal` may send `request`: the one rule every door applies.
#[must_use]
pub fn permits(principal: &Principal, request: &Request) -> bool {
    match required(request) {
        Some((ns, right)) => principal.allows(ns, right),
        None => match request {
            Request::Hello { .. } | Request::Ping { .. } => true,
            Request::List { scope: Scope::Plugins }
            | Request::Subscribe { scope: Scope::Plugins, .. }
            | Request::ArtifactGet { .. } => principal.reads_somewhere(),
            Request::PluginFault { .. } => principal.reports_faults(),
            _ => principal.writes_somewhere(),
        },
    }
}

/// Whether `request` changes the registry (what the audit log records when accepted).
/// Keepalives renew a lease and change no record: they are not writes here.
#[must_use]
pub fn is_write(request: &Request) -> bool {
    write_kind(request).is_some()
}

/// The kind a write is counted and audited under (`service`, `instance`, `lease`, `config`,
/// `plugin`); `None` for reads and keepalives.
#[must_use]
pub fn write_kind(request: &Request) -> Option<&'static str> {
    match request {
        Request::Register { .. } | Request::Deregister { .. } => Some("instance"),
        Request::GrantLease { .. } | Request::RevokeLease { .. } => Some("lease"),
        Request::PutService { .. } => Some("service"),
        Request::ConfigPut { .. }
        | Request::ConfigDelete { .. }
        | Request::ConfigBeta { .. }
        | Request::ConfigPromote { .. }
        | Request::ConfigWithdraw { .. } => Some("config"),
        Request::PluginLoad { .. }
        | Request::PluginRollback { .. }
        | Request::PluginRollout { .. }
        | Request::PluginDelete { .. } => Some("plugin"),
        Request::PluginFault { .. } => Some("plugin_fault"),
        // Staged in memory: a write only once `plugin_load` names it.
        Request::Hello { .. }
        | Request::Ping { .. }
        | Request::Keepalive { .. }
        | Request::GetService { .. }
        | Request::List { .. }
        | Request::Subscribe { .. }
        | Request::ConfigGet { .. }
        | Request::Pick { .. }
        | Request::ArtifactGet { .. }
        | Request::PluginUpload { .. }
        | Request::PluginList => None,
    }
}

/// The right a request needs and where: `(namespace or whole registry, right)`; `None` for
/// requests anyone may send (`hello`, `ping`), for leases (see
/// [`Principal::writes_somewhere`]), for plugin records and components (see
/// [`Principal::reads_somewhere`]) and for `plugin_fault` (see
/// [`Principal::reports_faults`]); [`permits`] applies it.
#[must_use]
pub fn required(request: &Request) -> Option<(Option<&Namespace>, Right)> {
    Some(match request {
        Request::Hello { .. } | Request::Ping { .. } => return None,
        Request::GrantLease { .. } | Request::Keepalive { .. } | Request::RevokeLease { .. } => return None,
        // Plugin records and components: whoever may read some namespace (a gateway).
        Request::List { scope: Scope::Plugins }
        | Request::Subscribe { scope: Scope::Plugins, .. }
        | Request::ArtifactGet { .. } => return None,
        // Its own right (see the module docs).
        Request::PluginFault { .. } => return None,
        Request::Register { instance, .. } => (Some(&instance.service.namespace), Right::Write),
        Request::Deregister { service, .. } => (Some(&service.namespace), Right::Write),
        Request::PutService { spec } => (Some(&spec.service.namespace), Right::Write),
        Request::ConfigPut { key, .. }
        | Request::ConfigDelete { key }
        | Request::ConfigBeta { key, .. }
        | Request::ConfigPromote { key, .. }
        | Request::ConfigWithdraw { key } => (Some(&key.namespace), Right::Write),
        Request::GetService { service } | Request::Pick { service, .. } => (Some(&service.namespace), Right::Read),
        Request::ConfigGet { key, .. } => (Some(&key.namespace), Right::Read),
        Request::List { scope } | Request::Subscribe { scope, .. } => (scope_namespace(scope), Right::Read),
        Request::PluginList
        | Request::PluginLoad { .. }
        | Request::PluginUpload { .. }
        | Request::PluginRollback { .. }
        | Request::PluginRollout { .. }
        | Request::PluginDelete { .. } => (None, Right::Admin),
    })
}

/// The namespace a scope lies in; `None` for the whole registry.
fn scope_namespace(scope: &Scope) -> Option<&Namespace> {
    match scope {
        Scope::All => None,
        Scope::Namespace(ns) => Some(ns),
        Scope::Service(s) => Some(&s.namespace),
        Scope::Config(c) => Some(&c.namespace),
        // Answered by `required` before this is asked.
        Scope::Plugins => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{ "tokens": [
        { "name": "gw", "token": "g", "namespaces": { "prod": "read" } },
        { "name": "dep", "token": "d", "namespaces": { "prod": "write", "*": "read" } },
        { "name": "ops", "token": "o", "namespaces": { "*": "admin" } }
    ] }"#;

    #[test]
    fn rights_by_namespace_and_wildcard() {
        let acl = Acl::from_json(FILE).unwrap();
        let prod: Namespace = "prod".parse().unwrap();
        let dev: Namespace = "dev".parse().unwrap();
        let gw = acl.authenticate(Some("g")).unwrap();
        assert!(gw.allows(Some(&prod), Right::Read));
        assert!(!gw.allows(Some(&prod), Right::Write));
        assert!(!gw.allows(Some(&dev), Right::Read));
        assert!(!gw.allows(None, Right::Read), "whole-registry reads need *");
        assert!(!gw.writes_somewhere());
        // A gateway reading one namespace may follow the plugin records and fetch components,
        // not list everything.
        let sha = "a".repeat(64);
        assert!(permits(&gw, &Request::ArtifactGet { sha256: sha, offset: 0 }));
        assert!(permits(
            &gw,
            &Request::Subscribe { scope: Scope::Plugins, from: sextant_core::Revision(0), reader: None }
        ));
        assert!(permits(&gw, &Request::List { scope: Scope::Plugins }));
        assert!(!permits(&gw, &Request::List { scope: Scope::All }));
        assert!(!permits(&gw, &Request::PluginList));
        let dep = acl.authenticate(Some("d")).unwrap();
        assert!(dep.allows(Some(&prod), Right::Write));
        assert!(dep.allows(Some(&dev), Right::Read));
        assert!(!dep.allows(Some(&dev), Right::Write));
        assert!(dep.allows(None, Right::Read));
        assert!(acl.authenticate(Some("o")).unwrap().allows(None, Right::Admin));
        assert!(acl.authenticate(Some("nope")).is_none());
        assert!(acl.authenticate(None).is_none());
        assert!(Acl::open().authenticate(None).unwrap().allows(None, Right::Admin));
    }

    #[test]
    fn a_reloaded_table_keeps_known_tokens_with_their_new_rights_and_drops_revoked_ones() {
        let acl = Acl::from_json(FILE).unwrap();
        let gw = acl.authenticate(Some("g")).unwrap();
        let dep = acl.authenticate(Some("d")).unwrap();
        let prod: Namespace = "prod".parse().unwrap();
        // The new file: gw's token now writes prod, dep's token is gone, a new token appears.
        let next = Acl::from_json(
            r#"{ "tokens": [
            { "name": "gw", "token": "g", "namespaces": { "prod": "write" } },
            { "name": "new", "token": "n", "namespaces": { "*": "read" } }
        ] }"#,
        )
        .unwrap();
        let gw2 = next.reauthenticate(&gw).unwrap();
        assert!(gw2.allows(Some(&prod), Right::Write));
        assert_eq!(next.reauthenticate(&dep), None, "a revoked token finds nobody");
        assert_eq!(next.authenticate(Some("d")), None);
        assert_eq!(next.reauthenticate(&Acl::open().authenticate(None).unwrap()), None);
        assert_eq!(next.token_count(), Some(2));
        assert!(!format!("{gw:?}").contains("digest"), "no token material in Debug");
    }

    #[test]
    fn only_a_token_given_the_fault_right_or_admin_everywhere_may_report_a_plugin_fault() {
        let acl = Acl::from_json(
            r#"{ "tokens": [
            { "name": "edge", "token": "e", "namespaces": { "prod": "read" }, "report_faults": true },
            { "name": "app", "token": "a", "namespaces": { "prod": "write" } },
            { "name": "prod-admin", "token": "p", "namespaces": { "prod": "admin" } },
            { "name": "ops", "token": "o", "namespaces": { "*": "admin" } }
        ] }"#,
        )
        .unwrap();
        let fault = Request::PluginFault {
            name: "lb".parse().unwrap(),
            kind: "balancer".into(),
            sha256: "a".repeat(64),
            service: sextant_core::ServiceKey::parse("prod/g/s").unwrap(),
            host: "prod/edge/gw/1".into(),
            reason: "6 faults".into(),
        };
        let who = |token| acl.authenticate(Some(token)).unwrap();
        assert!(permits(&who("e"), &fault), "a gateway's token");
        assert!(!permits(&who("e"), &Request::PluginList), "the fault right is not admin");
        assert!(!permits(&who("a"), &fault), "registering instances is not enough");
        assert!(!permits(&who("p"), &fault), "a namespace's admin is not enough");
        assert!(permits(&who("o"), &fault));
        assert!(Acl::open().authenticate(None).unwrap().reports_faults());
        assert_eq!(write_kind(&fault), Some("plugin_fault"), "audited like any write");
        assert!(format!("{:?}", who("e")).contains("report_faults: true"));
    }

    #[test]
    fn one_rule_decides_for_every_request() {
        let acl = Acl::from_json(FILE).unwrap();
        let gw = acl.authenticate(Some("g")).unwrap();
        let ops = acl.authenticate(Some("o")).unwrap();
        let dep = acl.authenticate(Some("d")).unwrap();
        let lease = Request::GrantLease { ttl_ms: 1000 };
        assert!(!permits(&gw, &lease), "leases need a write right somewhere");
        assert!(permits(&dep, &lease));
        assert!(permits(&gw, &Request::Ping { nonce: 1 }));
        assert!(!permits(&dep, &Request::PluginList));
        assert!(permits(&ops, &Request::PluginList));
        assert!(is_write(&lease));
        assert!(!is_write(&Request::Keepalive { lease: sextant_core::LeaseId(1) }));
        assert!(!is_write(&Request::PluginList));
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(matches!(Acl::from_json("{}"), Err(AclError::Parse(_))));
        let bad_ns = r#"{"tokens":[{"name":"x","token":"t","namespaces":{"a b":"read"}}]}"#;
        assert!(matches!(Acl::from_json(bad_ns), Err(AclError::BadNamespace(_))));
        let dup = r#"{"tokens":[{"name":"x","token":"t","namespaces":{}},{"name":"y","token":"t","namespaces":{}}]}"#;
        assert!(matches!(Acl::from_json(dup), Err(AclError::DuplicateToken(_))));
        let right = r#"{"tokens":[{"name":"x","token":"t","namespaces":{"*":"root"}}]}"#;
        assert!(matches!(Acl::from_json(right), Err(AclError::Parse(_))));
    }
}
