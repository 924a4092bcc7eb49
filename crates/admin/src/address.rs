//! What a request path names: a collection, one resource (with a sub-path for PATCH), a
//! schema, or the declarative configuration.

use pylon_model::{Key, Kind};

use crate::response::Reply;

const ADMIN_PREFIX: &str = "/apisix/admin";
const CONFIG_PATH: &str = "/pylon/admin/config";
const PYLON_PREFIX: &str = "/pylon/admin";

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    /// `HEAD /apisix/admin`: a liveness probe.
    Root,
    /// `/apisix/admin/<kind>[/<id>[/<sub-path>]]`.
    Resource(Address),
    /// `GET /apisix/admin/schema/<name>`.
    Schema(String),
    /// `POST /apisix/admin/schema/validate/<kind>`.
    Validate(String),
    /// `GET /apisix/admin/plugins/list`: the plugins' names.
    PluginList,
    /// `GET /apisix/admin/plugins?all=true`: every plugin with its priority and schemas.
    Plugins,
    /// `GET /apisix/admin/plugins/<name>` and `GET /apisix/admin/schema/plugins/<name>`: a
    /// plugin's schema.
    Plugin(String),
    /// `/pylon/admin/config`.
    Config,
    /// `/pylon/admin/<segments>`: the control plane's endpoints (tenants, users, change sets,
    /// versions, audit, nodes).
    Control(Vec<String>),
}

/// A collection or one resource in it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Address {
    pub kind: Kind,
    /// The part of the id the path fixes before the resource's own: a credential's consumer
    /// (`consumers/<username>/credentials`), a secret's manager (`secrets/<manager>`).
    pub parent: Option<String>,
    /// The resource's own id, if the path names one.
    pub id: Option<String>,
    /// Field path below the resource, for PATCH (`/routes/1/upstream/nodes`).
    pub sub_path: Vec<String>,
}

impl Address {
    /// The store key of the resource with own id `id` in this collection.
    pub fn key_for(&self, id: &str) -> Key {
        match (self.kind, &self.parent) {
            (Kind::Credentials, Some(username)) => {
                Key::new(Kind::Credentials, format!("{username}/credentials/{id}"))
            }
            (Kind::Secrets, Some(manager)) => Key::new(Kind::Secrets, format!("{manager}/{id}")),
            (kind, _) => Key::new(kind, id),
        }
    }

    /// The key of the resource the path names, if it names one.
    pub fn key(&self) -> Option<Key> {
        self.id.as_deref().map(|id| self.key_for(id))
    }

    /// Whether `key` belongs to this collection (a consumer's credentials, a manager's secrets).
    pub fn contains(&self, key: &Key) -> bool {
        key.kind == self.kind
            && match (self.kind, &self.parent) {
                (Kind::Credentials, Some(username)) => key
                    .id
                    .strip_prefix(username.as_str())
                    .is_some_and(|rest| rest.starts_with("/credentials/")),
                (Kind::Secrets, Some(manager)) => key
                    .id
                    .strip_prefix(manager.as_str())
                    .is_some_and(|rest| rest.starts_with('/')),
                _ => true,
            }
    }
}

impl Target {
    pub fn parse(path: &str) -> Result<Target, Reply> {
        if path == CONFIG_PATH {
            return Ok(Target::Config);
        }
        if let Some(rest) = path.strip_prefix(PYLON_PREFIX) {
            if rest.starts_with('/') {
                let segments = rest.split('/').filter(|s| !s.is_empty());
                return Ok(Target::Control(segments.map(str::to_owned).collect()));
            }
        }
        let Some(rest) = path.strip_prefix(ADMIN_PREFIX) else {
            return Err(Reply::error(http::StatusCode::NOT_FOUND, "not found"));
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let Some((&resource, rest)) = segments.split_first() else {
            return Ok(Target::Root);
        };
        let owned = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match (resource, rest) {
            ("plugins", []) => return Ok(Target::Plugins),
            ("plugins", ["list"]) => return Ok(Target::PluginList),
            ("plugins", [name]) | ("schema", ["plugins", name]) => {
                return Ok(Target::Plugin(name.to_string()))
            }
            ("schema", ["validate", name]) => return Ok(Target::Validate(name.to_string())),
            ("schema", [name]) => return Ok(Target::Schema(name.to_string())),
            _ => {}
        }
        let unsupported = || {
            Reply::error(
                http::StatusCode::NOT_FOUND,
                format!("Unsupported resource type: {resource}"),
            )
        };
        // Credentials are kept as their own kind, addressed under their consumer.
        let kind = Kind::parse(resource)
            .filter(|k| *k != Kind::Credentials)
            .ok_or_else(unsupported)?;
        let address = match (kind, rest) {
            (Kind::Consumers, [username, "credentials", rest @ ..]) => Address {
                kind: Kind::Credentials,
                parent: Some(username.to_string()),
                id: rest.first().map(|s| s.to_string()),
                sub_path: owned(rest.get(1..).unwrap_or_default()),
            },
            (Kind::Secrets, [manager, rest @ ..]) => Address {
                kind,
                parent: Some(manager.to_string()),
                id: rest.first().map(|s| s.to_string()),
                sub_path: owned(rest.get(1..).unwrap_or_default()),
            },
            (kind, rest) => Address {
                kind,
                parent: None,
                id: rest.first().map(|s| s.to_string()),
                sub_path: owned(rest.get(1..).unwrap_or_default()),
            },
        };
        Ok(Target::Resource(address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(path: &str) -> Address {
        match Target::parse(path).unwrap() {
            Target::Resource(a) => a,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn names_resources_as_apisix_paths_do() {
        let route = resource("/apisix/admin/routes/1/upstream/nodes");
        assert_eq!(route.key(), Some(Key::new(Kind::Routes, "1")));
        assert_eq!(route.sub_path, ["upstream", "nodes"]);
        assert_eq!(resource("/apisix/admin/routes").key(), None);

        let credential = resource("/apisix/admin/consumers/jack/credentials/auth-one");
        assert_eq!(
            credential.key(),
            Some(Key::new(Kind::Credentials, "jack/credentials/auth-one"))
        );
        let all = resource("/apisix/admin/consumers/jack/credentials");
        assert!(all.contains(&Key::new(Kind::Credentials, "jack/credentials/x")));
        assert!(!all.contains(&Key::new(Kind::Credentials, "jackie/credentials/x")));

        let secret = resource("/apisix/admin/secrets/vault/1");
        assert_eq!(secret.key(), Some(Key::new(Kind::Secrets, "vault/1")));

        assert_eq!(Target::parse("/apisix/admin").unwrap(), Target::Root);
        assert_eq!(
            Target::parse("/apisix/admin/schema/validate/routes").unwrap(),
            Target::Validate("routes".into())
        );
        assert_eq!(
            Target::parse("/pylon/admin/config").unwrap(),
            Target::Config
        );
        assert!(Target::parse("/apisix/admin/credentials/x").is_err());
        assert!(Target::parse("/apisix/admin/nope").is_err());
    }
}
