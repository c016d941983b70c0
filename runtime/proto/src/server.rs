//! The server side of one connection, without IO.
//!
//! The IO layer feeds each request decoded from a stream to [`ServerSession::on_request`]
//! and does what the returned [`Step`] says: answer directly, execute an authorized request
//! against the registry, or close the connection with an error code. The session enforces
//! the handshake (`hello` first, once, with a supported version and a known token) and
//! authorization per namespace. What a request's contents must satisfy is [`normalize`]'s,
//! which the command executor applies for every door (an instance's `ephemeral` flag follows
//! its binding; instances and TTLs are checked).

use std::sync::Arc;

use sextant_core::lease::check_ttl;

use crate::acl::{self, Acl, Principal};
use crate::{Binding, ErrorCode, PROTOCOL_VERSION, Request, Response};

/// Server-wide settings every session reads.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Token table.
    pub acl: Arc<Acl>,
    /// Server id reported in `welcome`.
    pub server_id: String,
    /// How long connection-bound instances outlive their connection.
    pub grace_ms: u64,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this response on the request's stream.
    Reply(Response),
    /// Execute this authorized request (the executor validates it with [`normalize`]).
    Execute(Request),
    /// Close the connection with this code and reason; change nothing.
    Close(ErrorCode, String),
}

#[derive(Debug)]
enum Phase {
    AwaitingHello,
    Ready(Principal),
}

/// One connection's session.
#[derive(Debug)]
pub struct ServerSession {
    settings: ServerSettings,
    phase: Phase,
}

impl ServerSession {
    /// A session waiting for `hello`.
    #[must_use]
    pub fn new(settings: ServerSettings) -> Self {
        Self { settings, phase: Phase::AwaitingHello }
    }

    /// Who the connection is, once `hello` succeeded.
    #[must_use]
    pub fn principal(&self) -> Option<&Principal> {
        match &self.phase {
            Phase::Ready(p) => Some(p),
            Phase::AwaitingHello => None,
        }
    }

    /// Handles one request.
    pub fn on_request(&mut self, request: Request) -> Step {
        let principal = match (&self.phase, request) {
            (Phase::AwaitingHello, Request::Hello { version, token, .. }) => {
                return self.hello(version, token.as_deref());
            }
            (Phase::AwaitingHello, other) => {
                return Step::Close(ErrorCode::ProtocolError, format!("expected hello, got {}", other.kind()));
            }
            (Phase::Ready(_), Request::Hello { .. }) => {
                return Step::Close(ErrorCode::ProtocolError, "hello sent twice".into());
            }
            (Phase::Ready(_), Request::Ping { nonce }) => return Step::Reply(Response::Pong { nonce }),
            (Phase::Ready(p), request) => (p, request),
        };
        let (p, request) = principal;
        if !acl::permits(p, &request) {
            return Step::Reply(Response::error(
                ErrorCode::Forbidden,
                format!("{} may not {}", p.name, request.kind()),
            ));
        }
        Step::Execute(request)
    }

    /// Applies a reloaded token table to this session: the principal keeps its token with the
    /// table's current rights. `false` when its token is no longer in the table: the IO layer
    /// closes the connection (`unauthenticated`). A session still waiting for `hello` is
    /// unaffected (its `hello` is checked against the table it was created with).
    pub fn reauthenticate(&mut self, acl: &Acl) -> bool {
        match &self.phase {
            Phase::AwaitingHello => true,
            Phase::Ready(p) => match acl.reauthenticate(p) {
                Some(p) => {
                    self.phase = Phase::Ready(p);
                    true
                }
                None => false,
            },
        }
    }

    fn hello(&mut self, version: u32, token: Option<&str>) -> Step {
        if version != PROTOCOL_VERSION {
            return Step::Close(
                ErrorCode::UnsupportedVersion,
                format!("version {version} is not supported; this server speaks {PROTOCOL_VERSION}"),
            );
        }
        let Some(principal) = self.settings.acl.authenticate(token) else {
            let why = if token.is_some() { "unknown token" } else { "a token is required" };
            return Step::Close(ErrorCode::Unauthenticated, why.into());
        };
        self.phase = Phase::Ready(principal);
        Step::Reply(Response::Welcome {
            version: PROTOCOL_VERSION,
            server: self.settings.server_id.clone(),
            grace_ms: self.settings.grace_ms,
        })
    }
}

/// Makes a registration consistent with its binding (`ephemeral` unless persistent) and
/// checks instances and TTLs before anything runs: the validation every door applies (the
/// session here, the command executor for every door). `Err`: the `invalid` answer's message.
///
/// # Errors
/// An invalid instance or a TTL out of range.
pub fn normalize(request: Request) -> Result<Request, String> {
    match request {
        Request::Register { mut instance, binding } => {
            if let Binding::Ttl { ttl_ms } = binding {
                check_ttl(std::time::Duration::from_millis(ttl_ms)).map_err(|e| e.to_string())?;
            }
            instance.ephemeral = binding != Binding::Persistent;
            instance.validate().map_err(|e| e.to_string())?;
            Ok(Request::Register { instance, binding })
        }
        Request::GrantLease { ttl_ms } => {
            check_ttl(std::time::Duration::from_millis(ttl_ms)).map_err(|e| e.to_string())?;
            Ok(request)
        }
        Request::PluginFault { ref kind, ref sha256, ref host, ref reason, .. } => {
            if !sextant_core::PLUGIN_KINDS.contains(&kind.as_str()) {
                return Err(format!("plugin_fault: {kind:?} is not a plugin kind"));
            }
            sextant_core::check_sha256(sha256).map_err(|e| format!("plugin_fault: {e}"))?;
            for (field, text) in [("host", host), ("reason", reason)] {
                if text.trim().is_empty() || text.len() > sextant_core::MAX_FAULT_FIELD {
                    return Err(format!(
                        "plugin_fault: {field} must be 1 to {} bytes, not {}",
                        sextant_core::MAX_FAULT_FIELD,
                        text.len()
                    ));
                }
            }
            Ok(request)
        }
        Request::PluginLoad { rollout: Some(ref plan), .. } => {
            use sextant_core::rollout::{MAX_PLAN_LEN, Plan};
            if plan.len() > MAX_PLAN_LEN {
                return Err(format!("plugin_load: a rollout plan is at most {MAX_PLAN_LEN} bytes, not {}", plan.len()));
            }
            plan.parse::<Plan>().map_err(|e| format!("plugin_load: rollout plan: {e}"))?;
            Ok(request)
        }
        Request::ConfigGet { reader: Some(ref reader), .. } | Request::Subscribe { reader: Some(ref reader), .. } => {
            reader.validate().map_err(|e| format!("{}: reader: {e}", request.kind()))?;
            Ok(request)
        }
        Request::ConfigBeta { ref rule, .. } => {
            rule.validate().map_err(|e| format!("config_beta: {e}"))?;
            Ok(request)
        }
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use sextant_core::{Instance, ServiceKey};

    use super::*;

    fn session(acl: Acl) -> ServerSession {
        ServerSession::new(ServerSettings { acl: Arc::new(acl), server_id: "s1".into(), grace_ms: 5000 })
    }

    fn hello(token: Option<&str>) -> Request {
        Request::Hello { version: PROTOCOL_VERSION, token: token.map(str::to_owned), client: None }
    }

    fn register(ns: &str, binding: Binding) -> Request {
        let service = ServiceKey::parse(&format!("{ns}/g/s")).unwrap();
        Request::Register { instance: Instance::new(service, "127.0.0.1".parse().unwrap(), 80), binding }
    }

    #[test]
    fn gray_rules_and_readers_sent_over_the_wire_are_checked() {
        let key = serde_json::to_string(&sextant_core::ConfigKey::parse("ns/g/app").unwrap()).unwrap();
        let beta = |rule: &str| -> Request {
            let json = format!(r#"{{"type":"config_beta","key":{key},"content":"x","rule":{rule}}}"#);
            serde_json::from_str(&json).unwrap()
        };
        for bad in [r#"{"percent":100}"#, r#"{"percent":0}"#, r#"{"labels":{}}"#, r#"{"ids":[]}"#, r#"{"ids":[""]}"#] {
            let refused = normalize(beta(bad)).unwrap_err();
            assert!(
                refused.starts_with("config_beta: gray rule") || refused.contains("must not be empty"),
                "{refused}"
            );
        }
        assert!(normalize(beta(r#"{"percent":5}"#)).is_ok());
        let get = |reader: &str| -> Request {
            serde_json::from_str(&format!(r#"{{"type":"config_get","key":{key},"reader":{reader}}}"#)).unwrap()
        };
        assert!(
            normalize(get(&format!(r#"{{"id":"{}"}}"#, "x".repeat(200))))
                .unwrap_err()
                .starts_with("config_get: reader")
        );
        assert!(normalize(get(r#"{"id":"gw-1","labels":{"env":"canary"}}"#)).is_ok());
    }

    #[test]
    fn hello_comes_first_and_once() {
        let mut s = session(Acl::open());
        assert!(matches!(s.on_request(Request::Ping { nonce: 1 }), Step::Close(ErrorCode::ProtocolError, _)));
        let mut s = session(Acl::open());
        assert!(matches!(s.on_request(hello(None)), Step::Reply(Response::Welcome { grace_ms: 5000, .. })));
        assert_eq!(s.on_request(Request::Ping { nonce: 9 }), Step::Reply(Response::Pong { nonce: 9 }));
        assert!(matches!(s.on_request(hello(None)), Step::Close(ErrorCode::ProtocolError, _)));
    }

    #[test]
    fn versions_and_tokens_are_checked() {
        let mut s = session(Acl::open());
        let v2 = Request::Hello { version: 2, token: None, client: None };
        assert!(matches!(s.on_request(v2), Step::Close(ErrorCode::UnsupportedVersion, _)));
        let acl = Acl::from_json(r#"{"tokens":[{"name":"gw","token":"t","namespaces":{"prod":"read"}}]}"#).unwrap();
        let mut s = session(acl.clone());
        assert!(matches!(s.on_request(hello(None)), Step::Close(ErrorCode::Unauthenticated, _)));
        let mut s = session(acl.clone());
        assert!(matches!(s.on_request(hello(Some("wrong"))), Step::Close(ErrorCode::Unauthenticated, _)));
        let mut s = session(acl);
        assert!(matches!(s.on_request(hello(Some("t"))), Step::Reply(Response::Welcome { .. })));
        assert_eq!(s.principal().unwrap().name, "gw");
    }

    #[test]
    fn rights_are_enforced_per_namespace() {
        let acl =
            Acl::from_json(r#"{"tokens":[{"name":"gw","token":"t","namespaces":{"prod":"read","dev":"write"}}]}"#)
                .unwrap();
        let mut s = session(acl);
        s.on_request(hello(Some("t")));
        let forbidden = s.on_request(register("prod", Binding::Connection));
        assert!(matches!(forbidden, Step::Reply(Response::Error { code: ErrorCode::Forbidden, .. })));
        assert!(matches!(s.on_request(register("dev", Binding::Connection)), Step::Execute(_)));
        let read = Request::GetService { service: ServiceKey::parse("prod/g/s").unwrap() };
        assert!(matches!(s.on_request(read), Step::Execute(_)));
        assert!(matches!(
            s.on_request(Request::PluginList),
            Step::Reply(Response::Error { code: ErrorCode::Forbidden, .. })
        ));
        assert!(matches!(s.on_request(Request::GrantLease { ttl_ms: 1000 }), Step::Execute(_)));
    }

    #[test]
    fn a_reloaded_table_changes_rights_and_revokes_tokens_of_open_sessions() {
        let first = r#"{"tokens":[{"name":"gw","token":"t","namespaces":{"prod":"read"}}]}"#;
        let mut s = session(Acl::from_json(first).unwrap());
        s.on_request(hello(Some("t")));
        let put = register("prod", Binding::Connection);
        assert!(matches!(s.on_request(put.clone()), Step::Reply(Response::Error { code: ErrorCode::Forbidden, .. })));
        let upgraded = r#"{"tokens":[{"name":"gw","token":"t","namespaces":{"prod":"write"}}]}"#;
        assert!(s.reauthenticate(&Acl::from_json(upgraded).unwrap()));
        assert!(matches!(s.on_request(put), Step::Execute(_)));
        let rotated = r#"{"tokens":[{"name":"gw","token":"t2","namespaces":{"prod":"write"}}]}"#;
        assert!(!s.reauthenticate(&Acl::from_json(rotated).unwrap()), "the old token is revoked");
    }

    #[test]
    fn registrations_follow_their_binding_and_contents_are_checked() {
        let Ok(Request::Register { instance, .. }) = normalize(register("a", Binding::Persistent)) else {
            panic!("valid")
        };
        assert!(!instance.ephemeral);
        let Ok(Request::Register { instance, .. }) = normalize(register("a", Binding::Connection)) else {
            panic!("valid")
        };
        assert!(instance.ephemeral);
        let bad_ttl = normalize(register("a", Binding::Ttl { ttl_ms: 5 })).unwrap_err();
        assert!(bad_ttl.contains("lease ttl 5 ms"), "{bad_ttl}");
        let mut heavy = register("a", Binding::Persistent);
        if let Request::Register { instance, .. } = &mut heavy {
            instance.weight = 20_000;
        }
        assert!(normalize(heavy).unwrap_err().contains("20000"));
        let grant = normalize(Request::GrantLease { ttl_ms: 90_000_000 }).unwrap_err();
        assert!(grant.contains("90000000"), "{grant}");
        // The session leaves contents to the executor: it only authenticates and authorizes.
        let mut s = session(Acl::open());
        s.on_request(hello(None));
        let bad = register("a", Binding::Ttl { ttl_ms: 5 });
        assert_eq!(s.on_request(bad.clone()), Step::Execute(bad));
    }
}
