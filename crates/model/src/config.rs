//! The whole configuration: every resource by kind and id, checked as one.

use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize};

use crate::consumer::{Consumer, ConsumerGroup, Credential};
use crate::error::{join_path, FieldError, ValidationErrors};
use crate::key::{Key, Kind};
use crate::nested::{commands_of, Holders};
use crate::proto::Proto;
use crate::route::Route;
use crate::secret;
use crate::ssl::Ssl;
use crate::stream_route::StreamRoute;
use crate::upstream::Upstream;
use crate::validate;

pub type Labels = BTreeMap<String, String>;
pub type Plugins = serde_json::Map<String, serde_json::Value>;

/// Settings shared by routes: an upstream, plugins, hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    pub id: Option<String>,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A description for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Key-value pairs to tag and select resources by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    /// The upstream of the routes that use this service, by id.
    pub upstream_id: Option<String>,
    /// The upstream of the routes that use this service, written inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    /// Plugins by name, with their configuration (`GET /apisix/admin/plugins/list` names them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugins: Option<Plugins>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Hosts the routes of this service match, as a route's `hosts`.
    pub hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Whether requests may upgrade to WebSocket.
    pub enable_websocket: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// APISIX's Lua script: not supported by this build, refused when set.
    pub script: Option<String>,
    /// When the resource was created, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    /// When the resource was last changed, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

/// Plugins that run for every request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalRule {
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    pub id: Option<String>,
    /// Plugins by name, with their configuration (`GET /apisix/admin/plugins/list` names them).
    pub plugins: Plugins,
    /// When the resource was created, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    /// When the resource was last changed, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

/// A set of plugins that routes refer to by `plugin_config_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    pub id: Option<String>,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A description for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Key-value pairs to tag and select resources by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// Plugins by name, with their configuration (`GET /apisix/admin/plugins/list` names them).
    pub plugins: Plugins,
    /// When the resource was created, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    /// When the resource was last changed, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

/// The field naming the tenant a resource belongs to (Pylon's, as Weibo's `saas_id`); a
/// resource without it belongs to the tenant [`DEFAULT_TENANT`].
pub const TENANT_FIELD: &str = "tenant_id";
pub const DEFAULT_TENANT: &str = "default";

/// One resource of any kind, parsed and validated on its own.
#[derive(Debug, Clone, PartialEq)]
// Resources are parsed once per write, never per request: their size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Resource {
    Route(Route),
    Service(Service),
    Upstream(Upstream),
    GlobalRule(GlobalRule),
    PluginConfig(PluginConfig),
    Ssl(Ssl),
    StreamRoute(StreamRoute),
    /// Kinds the data plane does not use yet: kept as the JSON objects they are.
    Other(Kind, serde_json::Value),
}

impl Resource {
    /// Parses and validates one resource; error paths are relative to the resource.
    /// A resource's owner, [`TENANT_FIELD`], is the control plane's: it is not part of what
    /// the data plane parses.
    pub fn from_json(kind: Kind, value: &serde_json::Value) -> Result<Resource, ValidationErrors> {
        let without_tenant;
        let value = match value.as_object() {
            Some(fields) if fields.contains_key(TENANT_FIELD) => {
                let mut fields = fields.clone();
                fields.remove(TENANT_FIELD);
                without_tenant = serde_json::Value::Object(fields);
                &without_tenant
            }
            _ => value,
        };
        fn parse<T: serde::de::DeserializeOwned>(
            value: &serde_json::Value,
        ) -> Result<T, ValidationErrors> {
            serde_path_to_error::deserialize(value).map_err(|e| {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                FieldError::new(path, e.into_inner().to_string()).into()
            })
        }
        let mut errors = Vec::new();
        let resource = match kind {
            Kind::Routes => Resource::Route(parse(value)?),
            Kind::Services => Resource::Service(parse(value)?),
            Kind::Upstreams => Resource::Upstream(parse(value)?),
            Kind::GlobalRules => Resource::GlobalRule(parse(value)?),
            Kind::PluginConfigs => Resource::PluginConfig(parse(value)?),
            Kind::Ssls => Resource::Ssl(parse(value)?),
            // Checked as their types, kept as the JSON they are: the plugins crate reads them.
            Kind::Consumers => {
                let consumer: Consumer = parse(value)?;
                consumer.validate(&mut errors);
                validate::plugin_objects(consumer.plugins.as_ref(), &mut errors);
                Resource::Other(kind, value.clone())
            }
            Kind::Credentials => {
                let credential: Credential = parse(value)?;
                credential.validate(&mut errors);
                validate::plugin_objects(Some(&credential.plugins), &mut errors);
                Resource::Other(kind, value.clone())
            }
            Kind::ConsumerGroups => {
                let group: ConsumerGroup = parse(value)?;
                validate::plugin_objects(Some(&group.plugins), &mut errors);
                Resource::Other(kind, value.clone())
            }
            Kind::StreamRoutes => {
                let route: StreamRoute = parse(value)?;
                route.validate(&mut errors);
                Resource::StreamRoute(route)
            }
            Kind::Protos => {
                parse::<Proto>(value)?.validate(&mut errors);
                Resource::Other(kind, value.clone())
            }
            _ if !value.is_object() => {
                return Err(FieldError::new("", "must be an object").into());
            }
            Kind::Secrets => {
                secret::validate(value, &mut errors);
                Resource::Other(kind, value.clone())
            }
            Kind::PluginMetadata => Resource::Other(kind, value.clone()),
            crate::control_kinds!() => {
                return Err(FieldError::new("", format!("{kind} is not a resource kind")).into())
            }
        };
        errors.extend(validate::resource(&resource));
        validate::descriptive_fields(kind, value, &mut errors);
        validate::id_fields(kind, value, &mut errors);
        validate::timestamps(value, &mut errors);
        checked(resource, errors)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let value = match self {
            Resource::Route(r) => serde_json::to_value(r),
            Resource::Service(s) => serde_json::to_value(s),
            Resource::Upstream(u) => serde_json::to_value(u),
            Resource::GlobalRule(g) => serde_json::to_value(g),
            Resource::PluginConfig(p) => serde_json::to_value(p),
            Resource::Ssl(s) => serde_json::to_value(s),
            Resource::StreamRoute(r) => serde_json::to_value(r),
            Resource::Other(_, v) => return v.clone(),
        };
        // Serializing plain data structs into a JSON value cannot fail.
        value.expect("resource serializes to JSON")
    }
}

fn checked(resource: Resource, errors: Vec<FieldError>) -> Result<Resource, ValidationErrors> {
    if errors.is_empty() {
        Ok(resource)
    } else {
        Err(ValidationErrors(errors))
    }
}

/// The errors `value` has as a `kind`, each as `path: message`; none when it is valid.
#[cfg(test)]
pub(crate) fn resource_errors(kind: Kind, value: serde_json::Value) -> Vec<String> {
    match Resource::from_json(kind, &value) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// Every resource of one configuration version, by id, after each was validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub routes: BTreeMap<String, Route>,
    pub services: BTreeMap<String, Service>,
    pub upstreams: BTreeMap<String, Upstream>,
    pub global_rules: BTreeMap<String, GlobalRule>,
    pub plugin_configs: BTreeMap<String, PluginConfig>,
    pub ssls: BTreeMap<String, Ssl>,
    pub stream_routes: BTreeMap<String, StreamRoute>,
    /// Resources of the kinds the data plane does not use yet.
    pub others: BTreeMap<Key, serde_json::Value>,
}

impl Config {
    /// Builds a configuration from store entries, validating each resource and then the
    /// references between them. Error paths start with `<kind>/<id>`.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a Key, &'a serde_json::Value)>,
    ) -> Result<Config, ValidationErrors> {
        Config::from_parsed(
            entries
                .into_iter()
                .map(|(key, value)| (key, Resource::from_json(key.kind, value))),
        )
    }

    /// [`Config::from_entries`] over entries already parsed, each with its own outcome: a
    /// resource parsed once (a write, checked on its own first) is not parsed again.
    pub fn from_parsed<'a>(
        entries: impl IntoIterator<Item = (&'a Key, Result<Resource, ValidationErrors>)>,
    ) -> Result<Config, ValidationErrors> {
        let mut config = Config::default();
        let mut errors = Vec::new();
        for (key, parsed) in entries {
            match parsed {
                Ok(resource) => config.insert(key, resource),
                Err(e) => errors.extend(e.0.into_iter().map(|e| e.within(&key.to_string()))),
            }
        }
        errors.extend(config.check_references(|key| key.to_string()));
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ValidationErrors(errors))
        }
    }

    /// Adds or replaces one resource (already validated on its own).
    pub fn insert(&mut self, key: &Key, resource: Resource) {
        let id = key.id.clone();
        match resource {
            Resource::Route(r) => drop(self.routes.insert(id, r)),
            Resource::Service(s) => drop(self.services.insert(id, s)),
            Resource::Upstream(u) => drop(self.upstreams.insert(id, u)),
            Resource::GlobalRule(g) => drop(self.global_rules.insert(id, g)),
            Resource::PluginConfig(p) => drop(self.plugin_configs.insert(id, p)),
            Resource::Ssl(s) => drop(self.ssls.insert(id, s)),
            Resource::StreamRoute(r) => drop(self.stream_routes.insert(id, r)),
            Resource::Other(_, v) => drop(self.others.insert(key.clone(), v)),
        }
    }

    /// The key of every resource.
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        fn of<V>(kind: Kind, map: &BTreeMap<String, V>) -> impl Iterator<Item = Key> + '_ {
            map.keys().map(move |id| Key::new(kind, id))
        }
        of(Kind::Routes, &self.routes)
            .chain(of(Kind::Services, &self.services))
            .chain(of(Kind::Upstreams, &self.upstreams))
            .chain(of(Kind::GlobalRules, &self.global_rules))
            .chain(of(Kind::PluginConfigs, &self.plugin_configs))
            .chain(of(Kind::Ssls, &self.ssls))
            .chain(of(Kind::StreamRoutes, &self.stream_routes))
            .chain(self.others.keys().cloned())
    }

    /// Whether the resource at `key` is part of this configuration.
    pub fn contains(&self, key: &Key) -> bool {
        let id = key.id.as_str();
        match key.kind {
            Kind::Routes => self.routes.contains_key(id),
            Kind::Services => self.services.contains_key(id),
            Kind::Upstreams => self.upstreams.contains_key(id),
            Kind::GlobalRules => self.global_rules.contains_key(id),
            Kind::PluginConfigs => self.plugin_configs.contains_key(id),
            Kind::Ssls => self.ssls.contains_key(id),
            Kind::StreamRoutes => self.stream_routes.contains_key(id),
            _ => self.others.contains_key(key),
        }
    }

    /// Where each resource holds nested references (see [`NESTED_REFERENCES`]).
    ///
    /// [`NESTED_REFERENCES`]: crate::NESTED_REFERENCES
    pub fn holders(&self) -> impl Iterator<Item = (Key, Holders<'_>)> + '_ {
        fn with_plugins<'c, V>(
            kind: Kind,
            map: &'c BTreeMap<String, V>,
            plugins: impl Fn(&V) -> Option<&Plugins> + 'c,
        ) -> impl Iterator<Item = (Key, Holders<'c>)> + 'c {
            map.iter().map(move |(id, resource)| {
                let holders = Holders {
                    plugins: plugins(resource),
                    commands: None,
                };
                (Key::new(kind, id), holders)
            })
        }
        let streams = self.stream_routes.iter().map(|(id, route)| {
            let holders = Holders {
                plugins: route.plugins.as_ref(),
                commands: route.protocol.as_ref().and_then(|p| commands_of(&p.conf)),
            };
            (Key::new(Kind::StreamRoutes, id), holders)
        });
        with_plugins(Kind::Routes, &self.routes, |r| r.plugins.as_ref())
            .chain(with_plugins(Kind::Services, &self.services, |s| {
                s.plugins.as_ref()
            }))
            .chain(with_plugins(Kind::GlobalRules, &self.global_rules, |g| {
                Some(&g.plugins)
            }))
            .chain(with_plugins(
                Kind::PluginConfigs,
                &self.plugin_configs,
                |p| Some(&p.plugins),
            ))
            .chain(streams)
            .chain(
                self.others
                    .iter()
                    .map(|(key, value)| (key.clone(), Holders::of(key.kind, value))),
            )
    }

    /// Removes one resource, if present.
    pub fn remove(&mut self, key: &Key) {
        let id = key.id.as_str();
        match key.kind {
            Kind::Routes => drop(self.routes.remove(id)),
            Kind::Services => drop(self.services.remove(id)),
            Kind::Upstreams => drop(self.upstreams.remove(id)),
            Kind::GlobalRules => drop(self.global_rules.remove(id)),
            Kind::PluginConfigs => drop(self.plugin_configs.remove(id)),
            Kind::Ssls => drop(self.ssls.remove(id)),
            Kind::StreamRoutes => drop(self.stream_routes.remove(id)),
            _ => drop(self.others.remove(key)),
        }
    }

    /// Errors for every reference to a resource that does not exist; `locate` names the
    /// referring resource in the error path.
    pub(crate) fn check_references(&self, locate: impl Fn(&Key) -> String) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut check =
            |key: Key, field: &str, target: Option<&String>, exists: &dyn Fn(&str) -> bool| {
                if let Some(id) = target {
                    if !exists(id) {
                        let kind = field.trim_end_matches("_id");
                        errors.push(FieldError::new(
                            format!("{}.{field}", locate(&key)),
                            format!("{kind} `{id}` does not exist"),
                        ));
                    }
                }
            };
        for (id, route) in &self.routes {
            let key = Key::new(Kind::Routes, id);
            check(key.clone(), "service_id", route.service_id.as_ref(), &|i| {
                self.services.contains_key(i)
            });
            check(
                key.clone(),
                "upstream_id",
                route.upstream_id.as_ref(),
                &|i| self.upstreams.contains_key(i),
            );
            check(
                key,
                "plugin_config_id",
                route.plugin_config_id.as_ref(),
                &|i| self.plugin_configs.contains_key(i),
            );
        }
        for (id, service) in &self.services {
            check(
                Key::new(Kind::Services, id),
                "upstream_id",
                service.upstream_id.as_ref(),
                &|i| self.upstreams.contains_key(i),
            );
        }
        for (id, route) in &self.stream_routes {
            let key = Key::new(Kind::StreamRoutes, id);
            check(key.clone(), "service_id", route.service_id.as_ref(), &|i| {
                self.services.contains_key(i)
            });
            check(key, "upstream_id", route.upstream_id.as_ref(), &|i| {
                self.upstreams.contains_key(i)
            });
        }
        errors.extend(self.check_stream_upstreams(&locate));
        for (key, holders) in self.holders() {
            let missing = holders
                .references()
                .into_iter()
                .filter(|found| !self.contains(&found.target));
            errors.extend(missing.map(|found| found.missing().within(&locate(&key))));
        }
        for (id, route) in &self.routes {
            // As APISIX's schema: a route with plugins needs no upstream (they answer it).
            let has_upstream = route.plugins.is_some()
                || route.plugin_config_id.is_some()
                || route.upstream.is_some()
                || route.upstream_id.is_some()
                || route
                    .service_id
                    .as_ref()
                    .and_then(|s| self.services.get(s))
                    .is_some_and(|s| s.upstream.is_some() || s.upstream_id.is_some());
            let service_missing = route
                .service_id
                .as_ref()
                .is_some_and(|s| !self.services.contains_key(s));
            if !has_upstream && !service_missing {
                errors.push(FieldError::new(
                    locate(&Key::new(Kind::Routes, id)),
                    "has no upstream: set `upstream`, `upstream_id`, a `service_id` whose service has one, or `plugins` that answer",
                ));
            }
        }
        errors
    }
}

impl Config {
    /// Each upstream serves the kind of route that uses it: a stream route needs one that
    /// carries bytes (`tcp`/`tls`, or `http`/`https` read as those), an HTTP route one that
    /// speaks HTTP; and a stream route has an upstream at all.
    fn check_stream_upstreams(&self, locate: &impl Fn(&Key) -> String) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (id, route) in &self.routes {
            let (field, upstream) =
                self.upstream_through(&route.upstream, &route.upstream_id, &route.service_id);
            if let Some(u) = upstream.filter(|u| u.scheme.is_stream_only()) {
                errors.push(FieldError::new(
                    join_path(&locate(&Key::new(Kind::Routes, id)), field),
                    format!(
                        "its upstream's scheme `{}` is for stream routes; an HTTP route's upstream speaks http, https, grpc or grpcs",
                        u.scheme.as_str()
                    ),
                ));
            }
        }
        for (id, route) in &self.stream_routes {
            let at = locate(&Key::new(Kind::StreamRoutes, id));
            let (field, upstream) =
                self.upstream_through(&route.upstream, &route.upstream_id, &route.service_id);
            let missing_reference = route
                .upstream_id
                .as_ref()
                .is_some_and(|u| !self.upstreams.contains_key(u))
                || route
                    .service_id
                    .as_ref()
                    .is_some_and(|s| !self.services.contains_key(s));
            match upstream {
                // An inline upstream's scheme is checked with the route itself.
                Some(_) if route.upstream.is_some() => {}
                Some(u) if u.scheme.is_grpc() => errors.push(FieldError::new(
                    join_path(&at, field),
                    format!(
                        "its upstream's scheme `{}` is for HTTP routes; a stream route's upstream is `tcp`, `tls` or `udp`",
                        u.scheme.as_str()
                    ),
                )),
                Some(_) => {}
                None if !missing_reference && route.protocol.is_none() => errors.push(FieldError::new(
                    at,
                    "has no upstream: set `upstream`, `upstream_id`, a `service_id` whose service has one, or a `protocol`",
                )),
                None => {}
            }
        }
        errors
    }

    /// A route's upstream, with the field it comes through: its own (`upstream.scheme`, the
    /// field a scheme error is about), its `upstream_id`'s, or its service's.
    fn upstream_through<'a>(
        &'a self,
        own: &'a Option<Upstream>,
        upstream_id: &Option<String>,
        service_id: &Option<String>,
    ) -> (&'static str, Option<&'a Upstream>) {
        let by_id = |id: &Option<String>| id.as_ref().and_then(|i| self.upstreams.get(i));
        match (own, by_id(upstream_id)) {
            (Some(u), _) => ("upstream.scheme", Some(u)),
            (None, Some(u)) => ("upstream_id", Some(u)),
            (None, None) => {
                let service = service_id.as_ref().and_then(|s| self.services.get(s));
                let upstream =
                    service.and_then(|s| s.upstream.as_ref().or_else(|| by_id(&s.upstream_id)));
                ("service_id", upstream)
            }
        }
    }
}

/// APISIX ids are strings or integers; both become strings.
pub(crate) fn de_opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Str(String),
        Int(u64),
    }
    match Option::<Id>::deserialize(d) {
        Ok(Some(Id::Str(s))) => Ok(Some(s)),
        Ok(Some(Id::Int(n))) => Ok(Some(n.to_string())),
        Ok(None) => Ok(None),
        Err(_) => Err(serde::de::Error::custom(
            "must be a string or a non-negative integer",
        )),
    }
}

/// What [`de_opt_id`] accepts, for `#[schemars(schema_with)]` on id fields.
pub(crate) fn id_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "A string, or a non-negative integer (kept as its decimal string).",
        "type": ["string", "integer", "null"],
        // Constrains the integer form only: JSON Schema ignores `minimum` for strings and null.
        "minimum": 0
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn config(entries: &[(Key, Value)]) -> Result<Config, Vec<String>> {
        Config::from_entries(entries.iter().map(|(k, v)| (k, v)))
            .map_err(|e| e.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_route_answered_by_its_plugins_needs_no_upstream() {
        let route = Key::new(Kind::Routes, "r");
        let plugin_config = (
            Key::new(Kind::PluginConfigs, "p"),
            json!({"plugins": {"echo": {}}}),
        );
        let answered = [
            json!({"uri": "/a", "plugins": {"echo": {}}}),
            json!({"uri": "/a", "plugin_config_id": "p"}),
        ];
        for value in answered {
            let entries = [(route.clone(), value.clone()), plugin_config.clone()];
            assert!(config(&entries).is_ok(), "{value}");
        }
        assert_eq!(
            config(&[(route, json!({"uri": "/a"})), plugin_config]).unwrap_err(),
            ["routes/r: has no upstream: set `upstream`, `upstream_id`, a `service_id` whose service has one, or `plugins` that answer"]
        );
    }

    #[test]
    fn keys_name_every_resource_typed_or_kept_as_json() {
        let entries = [
            (
                Key::new(Kind::Upstreams, "u"),
                json!({"nodes": {"127.0.0.1:80": 1}}),
            ),
            (
                Key::new(Kind::Routes, "r"),
                json!({"uri": "/a", "upstream_id": "u"}),
            ),
            (
                Key::new(Kind::Consumers, "jack"),
                json!({"username": "jack"}),
            ),
            (
                Key::new(Kind::Protos, "1"),
                json!({"content": "syntax = \"proto3\";"}),
            ),
        ];
        let mut keys: Vec<Key> = config(&entries).unwrap().keys().collect();
        keys.sort();
        let mut expected: Vec<Key> = entries.into_iter().map(|(k, _)| k).collect();
        expected.sort();
        assert_eq!(keys, expected);
    }
}
