//! Resource kinds and the store keys that name resources.

use std::fmt;

/// The kinds of resource, with APISIX's plural names.
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
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether ids of this kind have several `/`-separated parts: secrets are
    /// `<manager>/<id>` (`vault/1`), credentials `<username>/credentials/<id>`.
    pub fn has_compound_id(self) -> bool {
        matches!(self, Kind::Secrets | Kind::Credentials)
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

    /// Parses `<prefix>/<kind>/<id>`; `None` for anything else.
    pub fn from_path(prefix: &str, path: &str) -> Option<Key> {
        let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
        let (kind, id) = rest.split_once('/')?;
        let parts_empty = id.split('/').any(str::is_empty);
        let kind = Kind::parse(kind)?;
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
    }
}
