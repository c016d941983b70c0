//! Validated names and the keys built from them.
//!
//! Every name is 1..=limit bytes of `[A-Za-z0-9._:-]`, checked when it is made (also when it is
//! deserialized), so a value of these types is always valid. `/` is never allowed, which is
//! what lets keys be written as paths (`NS/GROUP/NAME`, and the store's key layout).
//!
//! Names are `Arc<str>`: the many keys that name one service (each instance's key, lease
//! bookkeeping, snapshots) share one allocation instead of copying it.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

fn check(kind: &'static str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::EmptyName { kind });
    }
    if value.len() > max {
        return Err(ValidationError::NameTooLong { kind, len: value.len(), max });
    }
    if let Some(ch) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))) {
        return Err(ValidationError::BadNameChar { kind, value: value.to_owned(), ch });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// The length limit in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                check($kind, &value, $max)?;
                Ok(Self(value.into()))
            }

            /// The name as a string slice.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, ValidationError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0.to_string()
            }
        }

        impl std::str::FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, ValidationError> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A namespace: the top level of isolation (tenants, environments).
    Namespace, "namespace", 64
);
name_type!(
    /// A group of services inside a namespace.
    Group, "group", 64
);
name_type!(
    /// A service name inside a group.
    ServiceName, "service", 128
);
name_type!(
    /// An instance id, unique inside its service (often `ip:port`).
    InstanceId, "instance id", 128
);
name_type!(
    /// A config entry's data id.
    DataId, "data id", 256
);
name_type!(
    /// A plugin's name.
    PluginName, "plugin name", 128
);

impl Namespace {
    /// The namespace used when none is given: `default`.
    #[must_use]
    pub fn default_namespace() -> Self {
        Self(Arc::from("default"))
    }
}

impl Group {
    /// The group used when none is given: `default`.
    #[must_use]
    pub fn default_group() -> Self {
        Self(Arc::from("default"))
    }
}

/// A service's full name: namespace, group, service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: Namespace,
    /// Group.
    pub group: Group,
    /// Service name.
    pub service: ServiceName,
}

impl ServiceKey {
    /// A key from its three parts.
    #[must_use]
    pub fn new(namespace: Namespace, group: Group, service: ServiceName) -> Self {
        Self { namespace, group, service }
    }

    /// Parses `NAME` (default namespace and group) or `NS/GROUP/NAME`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [name] => Ok(Self::new(Namespace::default_namespace(), Group::default_group(), ServiceName::new(*name)?)),
            [ns, group, name] => Ok(Self::new(Namespace::new(*ns)?, Group::new(*group)?, ServiceName::new(*name)?)),
            _ => Err(ValidationError::BadKeyPath(s.to_owned())),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.service)
    }
}

/// An instance's full key: its service and its id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceKey {
    /// The service.
    pub service: ServiceKey,
    /// The instance id.
    pub id: InstanceId,
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.id)
    }
}

/// A config entry's key: namespace, group, data id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConfigKey {
    /// Namespace.
    pub namespace: Namespace,
    /// Group.
    pub group: Group,
    /// Data id.
    pub data_id: DataId,
}

impl ConfigKey {
    /// Parses `DATA_ID` (default namespace and group) or `NS/GROUP/DATA_ID`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [id] => Ok(Self {
                namespace: Namespace::default_namespace(),
                group: Group::default_group(),
                data_id: DataId::new(*id)?,
            }),
            [ns, group, id] => {
                Ok(Self { namespace: Namespace::new(*ns)?, group: Group::new(*group)?, data_id: DataId::new(*id)? })
            }
            _ => Err(ValidationError::BadKeyPath(s.to_owned())),
        }
    }
}

impl fmt::Display for ConfigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.group, self.data_id)
    }
}

/// A lease's id, chosen by the caller (random in production, fixed in tests; etcd's ids on
/// etcd, which use all 64 bits).
///
/// In JSON it is a decimal string (`"7587869012"`), so clients that read numbers as doubles
/// (JavaScript, many others) do not round ids above 2^53; a JSON number is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub u64);

impl Serialize for LeaseId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LeaseId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = LeaseId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a lease id: a decimal string or a non-negative integer")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<LeaseId, E> {
                Ok(LeaseId(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<LeaseId, E> {
                u64::try_from(v).map(LeaseId).map_err(|_| E::custom(format!("lease id {v} is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LeaseId, E> {
                v.parse().map(LeaseId).map_err(|_| E::custom(format!("lease id {v:?} is not a decimal number")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(ServiceName::new("orders-v2.api_x:1").is_ok());
        assert_eq!(ServiceName::new(""), Err(ValidationError::EmptyName { kind: "service" }));
        assert!(matches!(ServiceName::new("a/b"), Err(ValidationError::BadNameChar { ch: '/', .. })));
        assert!(matches!(Namespace::new("é"), Err(ValidationError::BadNameChar { .. })));
        assert!(matches!(Namespace::new("x".repeat(65)), Err(ValidationError::NameTooLong { len: 65, max: 64, .. })));
        assert!(Namespace::new("x".repeat(64)).is_ok());
    }

    #[test]
    fn deserializing_validates() {
        let bad: Result<ServiceName, _> = serde_json::from_str("\"has space\"");
        assert!(bad.is_err());
        let good: ServiceName = serde_json::from_str("\"ok\"").unwrap();
        assert_eq!(good.as_str(), "ok");
    }

    #[test]
    fn service_keys_parse() {
        let k = ServiceKey::parse("orders").unwrap();
        assert_eq!(k.to_string(), "default/default/orders");
        let k = ServiceKey::parse("prod/payments/orders").unwrap();
        assert_eq!(k.namespace.as_str(), "prod");
        assert!(ServiceKey::parse("a/b").is_err());
        assert!(ServiceKey::parse("a//c").is_err());
    }
}
