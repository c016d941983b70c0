//! Every message of protocol version 1, and its error codes.
//!
//! Messages are JSON objects tagged by `"type"`. A client sends [`Request`]s, the server
//! answers with [`Response`]s. Field encodings (names, records, scopes, events) are the core
//! model's serde forms; `docs/protocol.md` spells each one out.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sextant_core::{
    ConfigEntry, ConfigKey, Event, Instance, InstanceId, LeaseId, PluginRecord, Record, Revision, Scope, ServiceKey,
    ServiceSpec,
};

/// The QUIC ALPN of protocol version 1.
pub const ALPN: &[u8] = b"sextant/1";
/// The version carried in `hello` / `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// What keeps an instance registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Binding {
    /// Until deregistered; survives restarts (a persistent instance).
    Persistent,
    /// While this connection lives, plus the server's grace period after it is lost.
    Connection,
    /// While the named lease is kept alive.
    Lease {
        /// The lease.
        lease: LeaseId,
    },
    /// On a new lease with this TTL, returned in `written.lease`.
    Ttl {
        /// TTL in milliseconds.
        ttl_ms: u64,
    },
}

/// A client's request. Each travels on its own bidirectional stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// The first request of a connection: version and credentials.
    Hello {
        /// Protocol version the client speaks.
        version: u32,
        /// Access token, if the server requires one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Free-form client name for logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// Liveness and latency probe.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Register (or replace) an instance. `instance.ephemeral` is set from `binding`.
    Register {
        /// The instance.
        instance: Instance,
        /// What keeps it registered.
        binding: Binding,
    },
    /// Remove an instance.
    Deregister {
        /// Its service.
        service: ServiceKey,
        /// Its id.
        id: InstanceId,
    },
    /// Grant a lease.
    GrantLease {
        /// TTL in milliseconds (100..=86400000).
        ttl_ms: u64,
    },
    /// Keep a lease alive for another TTL.
    Keepalive {
        /// The lease.
        lease: LeaseId,
    },
    /// Revoke a lease, deregistering its instances.
    RevokeLease {
        /// The lease.
        lease: LeaseId,
    },
    /// Set a service's settings (protection threshold, metadata).
    PutService {
        /// The settings.
        spec: ServiceSpec,
    },
    /// One service's current snapshot.
    GetService {
        /// The service.
        service: ServiceKey,
    },
    /// Every record of a scope.
    List {
        /// What to list.
        scope: Scope,
    },
    /// Follow a scope from a revision: the stream carries `event` responses until closed.
    Subscribe {
        /// What to follow.
        scope: Scope,
        /// The last revision the client saw (0: none).
        from: Revision,
    },
    /// Read a config entry.
    ConfigGet {
        /// Its key.
        key: ConfigKey,
    },
    /// Write a config entry.
    ConfigPut {
        /// Its key.
        key: ConfigKey,
        /// Its content (at most 1 MiB).
        content: String,
    },
    /// Delete a config entry.
    ConfigDelete {
        /// Its key.
        key: ConfigKey,
    },
    /// Pick an instance of a service for one request (for clients without a balancer).
    Pick {
        /// The service.
        service: ServiceKey,
        /// Consistent-hash key, if the service's balancer uses one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash_key: Option<String>,
    },
    /// The plugin records.
    PluginList,
}

impl Request {
    /// The message's `type` tag, for logs and metrics.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Ping { .. } => "ping",
            Self::Register { .. } => "register",
            Self::Deregister { .. } => "deregister",
            Self::GrantLease { .. } => "grant_lease",
            Self::Keepalive { .. } => "keepalive",
            Self::RevokeLease { .. } => "revoke_lease",
            Self::PutService { .. } => "put_service",
            Self::GetService { .. } => "get_service",
            Self::List { .. } => "list",
            Self::Subscribe { .. } => "subscribe",
            Self::ConfigGet { .. } => "config_get",
            Self::ConfigPut { .. } => "config_put",
            Self::ConfigDelete { .. } => "config_delete",
            Self::Pick { .. } => "pick",
            Self::PluginList => "plugin_list",
        }
    }
}

/// A service's snapshot as the protocol carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    /// The service.
    pub service: ServiceKey,
    /// Revision of its last change.
    pub revision: Revision,
    /// Protection threshold in force.
    pub protect_threshold: f32,
    /// Whether the healthy share is below it (then `selected` includes unhealthy instances).
    pub protection_active: bool,
    /// Ids of the instances traffic may go to.
    pub selected: Vec<InstanceId>,
    /// Every instance.
    pub instances: Vec<Arc<Instance>>,
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    /// Answer to `hello`.
    Welcome {
        /// Protocol version the server speaks.
        version: u32,
        /// Server id (for logs).
        server: String,
        /// How long connection-bound instances outlive a lost connection, in ms.
        grace_ms: u64,
    },
    /// Answer to `ping`.
    Pong {
        /// The request's nonce.
        nonce: u64,
    },
    /// A write was applied (and is durable where the record is).
    Written {
        /// Its revision.
        revision: Revision,
        /// The lease the instance hangs on, for `register` with a lease binding.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<LeaseId>,
        /// The config version, for `config_put`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// A lease and its TTL.
    Lease {
        /// The lease.
        lease: LeaseId,
        /// TTL in ms.
        ttl_ms: u64,
    },
    /// Answer to `get_service`.
    Service(ServiceView),
    /// Answer to `list`.
    Records {
        /// Revision the list is consistent at.
        revision: Revision,
        /// The records, sorted by key.
        records: Vec<Record>,
    },
    /// One event of a subscription.
    Event {
        /// The event.
        event: Event,
    },
    /// Answer to `config_get`.
    Config {
        /// The entry, if it exists.
        entry: Option<Arc<ConfigEntry>>,
    },
    /// Answer to `pick`.
    Picked {
        /// The chosen instance; none if no instance may take traffic.
        instance: Option<Arc<Instance>>,
        /// Whether protection was active.
        protection_active: bool,
    },
    /// Answer to `plugin_list`.
    Plugins {
        /// The records.
        plugins: Vec<Arc<PluginRecord>>,
    },
    /// The request failed; nothing changed.
    Error {
        /// What failed.
        code: ErrorCode,
        /// For people.
        message: String,
    },
}

impl Response {
    /// An error response.
    pub fn error(code: ErrorCode, message: impl fmt::Display) -> Self {
        Self::Error { code, message: message.to_string() }
    }
}

/// Error codes: in `error` responses by name, and as QUIC application close codes by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed, truncated or oversized frame, unknown message type, or a message out of
    /// order (anything before `hello`). Closes the connection.
    ProtocolError,
    /// The client's version is not spoken here. Closes the connection.
    UnsupportedVersion,
    /// Missing or unknown token. Closes the connection.
    Unauthenticated,
    /// A request stream did not complete in time. Closes the connection.
    Timeout,
    /// The token lacks the right for this namespace.
    Forbidden,
    /// Invalid name, weight, metadata, TTL, binding...
    Invalid,
    /// No such instance, service or config entry.
    NotFound,
    /// The lease expired, was revoked or never existed.
    LeaseNotFound,
    /// The store could not complete the request; nothing was acknowledged.
    Unavailable,
    /// A server bug.
    Internal,
}

impl ErrorCode {
    /// The number used as QUIC application error code (0 is a normal close).
    #[must_use]
    pub fn as_u32(self) -> u32 {
        match self {
            Self::ProtocolError => 1,
            Self::UnsupportedVersion => 2,
            Self::Unauthenticated => 3,
            Self::Timeout => 4,
            Self::Forbidden => 10,
            Self::Invalid => 11,
            Self::NotFound => 12,
            Self::LeaseNotFound => 13,
            Self::Unavailable => 14,
            Self::Internal => 15,
        }
    }

    /// The code with number `n`.
    #[must_use]
    pub fn from_u32(n: u32) -> Option<Self> {
        [
            Self::ProtocolError,
            Self::UnsupportedVersion,
            Self::Unauthenticated,
            Self::Timeout,
            Self::Forbidden,
            Self::Invalid,
            Self::NotFound,
            Self::LeaseNotFound,
            Self::Unavailable,
            Self::Internal,
        ]
        .into_iter()
        .find(|c| c.as_u32() == n)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms_are_stable() {
        let hello = Request::Hello { version: 1, token: None, client: None };
        assert_eq!(serde_json::to_string(&hello).unwrap(), r#"{"type":"hello","version":1}"#);
        let sub = Request::Subscribe { scope: Scope::Namespace("prod".parse().unwrap()), from: Revision(42) };
        assert_eq!(
            serde_json::to_string(&sub).unwrap(),
            r#"{"type":"subscribe","scope":{"scope":"namespace","key":"prod"},"from":42}"#
        );
        let b = Binding::Ttl { ttl_ms: 5000 };
        assert_eq!(serde_json::to_string(&b).unwrap(), r#"{"kind":"ttl","ttl_ms":5000}"#);
        let e = Response::error(ErrorCode::LeaseNotFound, "gone");
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"type":"error","code":"lease_not_found","message":"gone"}"#);
        assert_eq!(serde_json::to_string(&Request::PluginList).unwrap(), r#"{"type":"plugin_list"}"#);
    }

    #[test]
    fn error_codes_round_trip_as_numbers() {
        for n in 0..20 {
            if let Some(c) = ErrorCode::from_u32(n) {
                assert_eq!(c.as_u32(), n);
            }
        }
        assert_eq!(ErrorCode::from_u32(0), None, "0 is a normal close");
        assert_eq!(ErrorCode::Forbidden.to_string(), "forbidden");
    }
}
