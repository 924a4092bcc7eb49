//! Resource kinds and the store keys that name resources.

use std::fmt;

/// The kinds of entry in the store: the resources the data plane serves, with APISIX's plural
/// names, and the control plane's own records beside them (tenants, users, change sets,
/// versions, audit, gateway nodes), kept in the same store so that one transaction can publish
/// a change together with its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Routes,
    Services,
    Upstreams,
    GlobalRules,
    PluginConfigs,
    Consumers,
    /// A consumer's credentials, each its own resource. The id is `<username>/credentials/<id>`,
    /// the form APISIX gives a credential's `id`: every credential lives under one prefix
    /// (`/pylon/credentials/`), a consumer's under `/pylon/credentials/<username>/`, and a
    /// listing of consumers never has to skip them (APISIX nests them under the consumer).
    Credentials,
    ConsumerGroups,
    Ssls,
    StreamRoutes,
    Protos,
    PluginMetadata,
    Secrets,
    Tenants,
    /// Admin API users, each with a role and its token's hash.
    Users,
    /// Changes waiting for review, in canary, or published.
    ChangeSets,
    /// A resource as one publish left it. The id is `<kind>/<resource id>/<audit sequence>`.
    Versions,
    /// The audit log, one record per sequence number, chained by hash.
    Audit,
    /// The audit chain's last sequence number and hash: one entry, `audit_head/chain`.
    AuditHead,
    /// Gateway nodes, as each registers itself.
    Nodes,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::Routes,
        Kind::Services,
        Kind::Upstreams,
        Kind::GlobalRules,
        Kind::PluginConfigs,
        Kind::Consumers,
        Kind::Credentials,
        Kind::ConsumerGroups,
        Kind::Ssls,
        Kind::StreamRoutes,
        Kind::Protos,
        Kind::PluginMetadata,
        Kind::Secrets,
    ];

    /// The control plane's kinds: stored beside the resources, never served by the data plane.
    pub const CONTROL: [Kind; 7] = [
        Kind::Tenants,
        Kind::Users,
        Kind::ChangeSets,
        Kind::Versions,
        Kind::Audit,
        Kind::AuditHead,
        Kind::Nodes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Routes => "routes",
            Kind::Services => "services",
            Kind::Upstreams => "upstreams",
            Kind::GlobalRules => "global_rules",
            Kind::PluginConfigs => "plugin_configs",
            Kind::Consumers => "consumers",
            Kind::Credentials => "credentials",
            Kind::ConsumerGroups => "consumer_groups",
            Kind::Ssls => "ssls",
            Kind::StreamRoutes => "stream_routes",
            Kind::Protos => "protos",
            Kind::PluginMetadata => "plugin_metadata",
            Kind::Secrets => "secrets",
            Kind::Tenants => "tenants",
            Kind::Users => "users",
            Kind::ChangeSets => "change_sets",
            Kind::Versions => "versions",
            Kind::Audit => "audit",
            Kind::AuditHead => "audit_head",
            Kind::Nodes => "nodes",
        }
    }

    /// A resource kind by name (the control plane's kinds are not resources).
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Any kind a store may hold, by name.
    pub fn parse_stored(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .chain(Kind::CONTROL)
            .find(|k| k.as_str() == s)
    }

    /// Whether the data plane serves entries of this kind.
    pub fn is_resource(self) -> bool {
        !matches!(self, crate::control_kinds!())
    }

    /// Whether entries of this kind only accumulate (versions, audit records): a process's
    /// copy of the store leaves them out, and they are read from the store when asked for.
    pub fn is_history(self) -> bool {
        matches!(self, Kind::Versions | Kind::Audit)
    }

    /// Whether ids of this kind have several `/`-separated parts: secrets are
    /// `<manager>/<id>` (`vault/1`), credentials `<username>/credentials/<id>`.
    pub fn has_compound_id(self) -> bool {
        matches!(self, Kind::Secrets | Kind::Credentials | Kind::Versions)
    }

    /// Consumers are named by `username`, everything else by `id`.
    pub fn id_field(self) -> &'static str {
        match self {
            Kind::Consumers => "username",
            _ => "id",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The control plane's kinds ([`Kind::CONTROL`]) as one pattern, for the matches over every
/// kind that treat them alike: `match kind { control_kinds!() => ..., Kind::Routes => ... }`.
#[macro_export]
macro_rules! control_kinds {
    () => {
        $crate::Kind::Tenants
            | $crate::Kind::Users
            | $crate::Kind::ChangeSets
            | $crate::Kind::Versions
            | $crate::Kind::Audit
            | $crate::Kind::AuditHead
            | $crate::Kind::Nodes
    };
}

/// A resource's address in the store: `/pylon/<kind>/<id>` under the default prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub kind: Kind,
    pub id: String,
}

impl Key {
    pub const DEFAULT_PREFIX: &'static str = "/pylon";

    pub fn new(kind: Kind, id: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
        }
    }

    /// The key's path under `prefix`.
    pub fn to_path(&self, prefix: &str) -> String {
        format!("{prefix}/{}/{}", self.kind, self.id)
    }

    /// Parses a resource's key as it displays, `<kind>/<id>` (`routes/1`,
    /// `credentials/jack/credentials/a`); `None` for anything else, a control plane's key
    /// included.
    pub fn parse(text: &str) -> Option<Key> {
        let (kind, id) = text.split_once('/')?;
        let kind = Kind::parse(kind)?;
        let parts_ok = !id.split('/').any(str::is_empty);
        (parts_ok && (kind.has_compound_id() || !id.contains('/'))).then(|| Key::new(kind, id))
    }

    /// Parses `<prefix>/<kind>/<id>`; `None` for anything else.
    pub fn from_path(prefix: &str, path: &str) -> Option<Key> {
        let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
        let (kind, id) = rest.split_once('/')?;
        let parts_empty = id.split('/').any(str::is_empty);
        let kind = Kind::parse_stored(kind)?;
        if parts_empty || (id.contains('/') && !kind.has_compound_id()) {
            return None;
        }
        Some(Key::new(kind, id))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths_round_trip() {
        let key = Key::new(Kind::GlobalRules, "g1");
        let path = key.to_path(Key::DEFAULT_PREFIX);
        assert_eq!(path, "/pylon/global_rules/g1");
        assert_eq!(Key::from_path(Key::DEFAULT_PREFIX, &path), Some(key));
        assert_eq!(Key::from_path("/pylon", "/pylon/nope/1"), None);
        assert_eq!(Key::from_path("/pylon", "/pylon/routes/"), None);
        assert_eq!(Key::from_path("/pylon", "/other/routes/1"), None);
        assert_eq!(Key::from_path("/pylon", "/pylon/routes/1/2"), None);
        assert_eq!(
            Key::from_path("/pylon", "/pylon/secrets/vault/1"),
            Some(Key::new(Kind::Secrets, "vault/1"))
        );
        assert_eq!(
            Key::from_path("/pylon", "/pylon/credentials/jack/credentials/a"),
            Some(Key::new(Kind::Credentials, "jack/credentials/a"))
        );
        assert_eq!(Key::from_path("/pylon", "/pylon/secrets/vault/"), None);
        assert_eq!(
            Key::parse("credentials/jack/credentials/a"),
            Some(Key::new(Kind::Credentials, "jack/credentials/a"))
        );
        assert_eq!(Key::parse("routes/1"), Some(Key::new(Kind::Routes, "1")));
        for refused in [
            "routes/1/2",
            "routes",
            "routes/",
            "nodes/gw-1",
            "secrets/vault/",
        ] {
            assert_eq!(Key::parse(refused), None, "{refused}");
        }
    }
}
