//! Building the chains of one configuration version: the plugins' metadata, global rules,
//! every route's plugins merged by APISIX's precedence, and the consumers with their
//! credentials.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use pylon_frames::FramesConfig;
use pylon_model::{Config, FieldError, Key, Kind, Route, FRAMES_PROTOCOL};
use pylon_plugin::{Chain, ChainBuilder, Consumer, Entry, Meta};
use pylon_protobuf::MessageDescriptor;
use pylon_push::PushConfig;
use pylon_redis::Redis;
use serde_json::{Map, Value};

use crate::catalog::find;
use crate::config::resolve_env;
use crate::credentials::{Credential, Credentials};
use crate::descriptor::{BuildEnv, Metadata, Scope};
use crate::limit_conn::stream_conn_key;
use crate::limits::redis::shared_redis;
use crate::protos::{check_proto, Protos};

type Plugins = Map<String, Value>;

/// The plugins of one configuration version, as the snapshot holds them.
pub struct CompiledPlugins {
    /// The plugins of every global rule: they run for every request, first.
    pub global: Chain,
    env: Environment,
    /// The plugins of each service and plugin config, built once and shared by every route
    /// that uses them (one instance, so one jwt-auth token cache, say), across versions
    /// while it is unchanged (see [`CompiledPlugins::update`]); or why they could not be
    /// built.
    shared: HashMap<Key, Result<Vec<Entry>, FieldError>>,
}

impl CompiledPlugins {
    /// Builds the plugins' metadata, the consumers, global rules, services' and plugin
    /// configs' plugins of `config`. What cannot be built is left out and reported, the rest
    /// serves: a plugin whose metadata is refused is built as if it had none.
    pub fn compile(config: &Config) -> (CompiledPlugins, Vec<FieldError>) {
        Self::compile_with(config, Protos::none())
    }

    /// As [`CompiledPlugins::compile`], taking the protos whose content did not change from
    /// `previous`, compiled.
    fn compile_with(config: &Config, previous: &Protos) -> (CompiledPlugins, Vec<FieldError>) {
        let mut errors = Vec::new();
        let mut env = Environment {
            credentials: Arc::default(),
            metadata: compile_metadata(config, &mut errors),
            protos: Protos::compile(config, previous),
        };
        // A consumer's own plugins are built before any credential is known.
        let mut clashes = Vec::new();
        env.credentials = Arc::new(consumers(config, &env, &mut errors, &mut clashes));
        errors.extend(clashes);
        let global = global_chain(config, &env, &mut errors);
        let services = config
            .services
            .keys()
            .map(|id| Key::new(Kind::Services, id));
        let plugin_configs = config
            .plugin_configs
            .keys()
            .map(|id| Key::new(Kind::PluginConfigs, id));
        let shared = services
            .chain(plugin_configs)
            .filter_map(|key| {
                let built = build_shared(config, &key, &env)?;
                Some((key, built))
            })
            .collect();
        let compiled = CompiledPlugins {
            global,
            env,
            shared,
        };
        (compiled, errors)
    }

    /// Brings these plugins in step with `config`, which differs from the version they were
    /// built from by the resources at `changed`. Consumers and metadata feed every plugin, so
    /// a change to them builds everything again; otherwise only the changed services', plugin
    /// configs' and (if one changed) global rules' plugins are built again, and every other
    /// instance carries on with its state (a token cache, say).
    pub fn update(&mut self, config: &Config, changed: &[Key]) -> Vec<FieldError> {
        if changed.iter().any(|key| builds_every_plugin(key.kind)) {
            let (compiled, errors) = Self::compile_with(config, &self.env.protos);
            *self = compiled;
            return errors;
        }
        let mut errors = Vec::new();
        let shared_places = changed
            .iter()
            .filter(|key| matches!(key.kind, Kind::Services | Kind::PluginConfigs));
        for key in shared_places {
            match build_shared(config, key, &self.env) {
                Some(built) => drop(self.shared.insert(key.clone(), built)),
                None => drop(self.shared.remove(key)),
            }
        }
        if changed.iter().any(|key| key.kind == Kind::GlobalRules) {
            self.global = global_chain(config, &self.env, &mut errors);
        }
        errors
    }

    /// The compiled `protos` the plugins read: framed-protocol stream routes take their
    /// message types from them too.
    pub fn protos(&self) -> &Protos {
        &self.env.protos
    }

    /// A route's chain: its service's plugins, then its plugin config's, then its own, a
    /// later place replacing an earlier one's plugin of the same name.
    pub fn route_chain(&self, id: &str, route: &Route) -> Result<Chain, FieldError> {
        let mut builder = ChainBuilder::new();
        let places = [
            route
                .service_id
                .as_ref()
                .map(|s| Key::new(Kind::Services, s)),
            route
                .plugin_config_id
                .as_ref()
                .map(|p| Key::new(Kind::PluginConfigs, p)),
        ];
        for key in places.iter().flatten() {
            if let Some(built) = self.shared.get(key) {
                for entry in built.as_ref().map_err(Clone::clone)? {
                    builder.add(entry.clone());
                }
            }
        }
        if let Some(plugins) = &route.plugins {
            let mut errors = Vec::new();
            add_all(
                &mut builder,
                plugins,
                &self.env,
                &format!("routes/{id}"),
                &mut errors,
            );
            if let Some(error) = errors.into_iter().next() {
                return Err(error);
            }
        }
        Ok(builder.build())
    }

    /// The chain that checks the devices of push gateway `id`: its authentication plugins
    /// ([`PUSH_AUTH_PLUGINS`]), with the consumers they find devices' tokens among.
    pub fn push_auth_chain(
        &self,
        id: &str,
        plugins: Option<&Plugins>,
    ) -> Result<Chain, FieldError> {
        let mut builder = ChainBuilder::new();
        let auth: Plugins = (plugins.into_iter().flatten())
            .filter(|(name, _)| PUSH_AUTH_PLUGINS.contains(&name.as_str()))
            .map(|(name, config)| (name.clone(), config.clone()))
            .collect();
        let mut errors = Vec::new();
        add_all(
            &mut builder,
            &auth,
            &self.env,
            &format!("stream_routes/{id}"),
            &mut errors,
        );
        match errors.into_iter().next() {
            Some(error) => Err(error),
            None => Ok(builder.build()),
        }
    }
}

/// The configuration in force for plugin `name` on `route`: the route's own, else its plugin
/// config's, else its service's, the order [`CompiledPlugins::route_chain`] merges them in.
pub fn route_plugin<'c>(config: &'c Config, route: &'c Route, name: &str) -> Option<&'c Value> {
    let plugin_config = route
        .plugin_config_id
        .as_ref()
        .and_then(|p| config.plugin_configs.get(p));
    let service = route
        .service_id
        .as_ref()
        .and_then(|s| config.services.get(s));
    route
        .plugins
        .as_ref()
        .and_then(|p| p.get(name))
        .or_else(|| plugin_config.and_then(|p| p.plugins.get(name)))
        .or_else(|| service.and_then(|s| s.plugins.as_ref()?.get(name)))
}

/// Whether resources of `kind` feed what every plugin is built with (consumers and their
/// credentials, plugin metadata, secrets, protos): a change to one builds every plugin
/// again (a proto whose content did not change is not compiled again).
pub fn builds_every_plugin(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Consumers
            | Kind::Credentials
            | Kind::ConsumerGroups
            | Kind::PluginMetadata
            | Kind::Secrets
            | Kind::Protos
    )
}

/// The plugins of every global rule of `config`, in one chain.
fn global_chain(config: &Config, env: &Environment, errors: &mut Vec<FieldError>) -> Chain {
    let mut global = ChainBuilder::new();
    for (id, rule) in &config.global_rules {
        let location = Key::new(Kind::GlobalRules, id).to_string();
        add_all(&mut global, &rule.plugins, env, &location, errors);
    }
    global.build()
}

/// The plugins of the service or plugin config at `key`, built; or why they cannot be.
/// `None` when it does not exist or has no plugins.
fn build_shared(
    config: &Config,
    key: &Key,
    env: &Environment,
) -> Option<Result<Vec<Entry>, FieldError>> {
    let plugins = match key.kind {
        Kind::Services => config.services.get(&key.id)?.plugins.as_ref()?,
        Kind::PluginConfigs => &config.plugin_configs.get(&key.id)?.plugins,
        _ => return None,
    };
    let location = key.to_string();
    let built = plugins.iter().map(|(name, settings)| {
        build_entry(name, settings, env, &location)
            .map_err(|e| e.within(&format!("{location}.plugins.{name}")))
    });
    Some(built.collect())
}

/// What every plugin of one configuration version is built with.
#[derive(Default)]
struct Environment {
    credentials: Arc<Credentials>,
    /// Each plugin's metadata, by plugin name.
    metadata: HashMap<&'static str, Metadata>,
    protos: Protos,
}

impl Environment {
    fn for_plugin<'a>(&'a self, name: &str, owner: &'a str) -> BuildEnv<'a> {
        BuildEnv {
            credentials: &self.credentials,
            metadata: self.metadata.get(name),
            owner,
            protos: &self.protos,
        }
    }
}

/// Every `plugin_metadata` resource of `config`, parsed by its plugin; errors are located at
/// `plugin_metadata/<name>`.
fn compile_metadata(
    config: &Config,
    errors: &mut Vec<FieldError>,
) -> HashMap<&'static str, Metadata> {
    config
        .others
        .iter()
        .filter(|(key, _)| key.kind == Kind::PluginMetadata)
        .filter_map(|(key, value)| {
            parse_metadata(&key.id, value)
                .map_err(|e| errors.push(e.within(&key.to_string())))
                .ok()
        })
        .collect()
}

/// The resource fields of a `plugin_metadata` entry, not the plugin's settings.
const RESOURCE_FIELDS: [&str; 3] = ["id", "create_time", "update_time"];

/// Parses `plugin_metadata/<name>` by the metadata spec of plugin `name`. Paths are relative
/// to the resource; a plugin that is unknown or reads no metadata is an error at `id`.
fn parse_metadata(name: &str, value: &Value) -> Result<(&'static str, Metadata), FieldError> {
    let descriptor =
        find(name).ok_or_else(|| FieldError::new("id", format!("unknown plugin `{name}`")))?;
    let spec = descriptor
        .metadata
        .as_ref()
        .ok_or_else(|| FieldError::new("id", format!("plugin `{name}` has no metadata")))?;
    let mut settings = value.clone();
    if let Value::Object(map) = &mut settings {
        for field in RESOURCE_FIELDS {
            map.remove(field);
        }
    }
    let settings = resolve_env(&settings)?;
    Ok((descriptor.name, (spec.parse)(&settings)?))
}

/// Builds every plugin of `plugins` into `builder`; errors are located at `location`.
fn add_all(
    builder: &mut ChainBuilder,
    plugins: &Plugins,
    env: &Environment,
    location: &str,
    errors: &mut Vec<FieldError>,
) {
    for (name, config) in plugins {
        match build_entry(name, config, env, location) {
            Ok(entry) => builder.add(entry),
            Err(e) => errors.push(e.within(&format!("{location}.plugins.{name}"))),
        }
    }
}

fn build_entry(
    name: &str,
    config: &Value,
    env: &Environment,
    owner: &str,
) -> Result<Entry, FieldError> {
    let descriptor =
        find(name).ok_or_else(|| FieldError::new("", format!("unknown plugin `{name}`")))?;
    let config = resolve_env(config)?;
    let meta = Meta::parse(&config)?;
    let plugin = (descriptor.build)(&config, &env.for_plugin(descriptor.name, owner))?;
    Ok(Entry::new(plugin, descriptor.priority, meta))
}

/// Checks a `plugins` object where it sits (`scope`): every name is a plugin of this build
/// and every configuration builds, with `protos` as the configuration's. Paths are
/// `plugins.<name>.<field>`.
pub fn check(plugins: &Plugins, scope: Scope, protos: &Protos) -> Vec<FieldError> {
    let credentials = Arc::default();
    let env = BuildEnv {
        credentials: &credentials,
        metadata: None,
        owner: "",
        protos,
    };
    let mut errors = Vec::new();
    for (name, config) in plugins {
        let within = format!("plugins.{name}");
        let Some(descriptor) = find(name) else {
            errors.push(FieldError::new(within, format!("unknown plugin `{name}`")));
            continue;
        };
        let result = match (scope, &descriptor.credential) {
            (Scope::Consumer, Some(spec)) => (spec.parse)(config).map(drop),
            _ => Meta::parse(config).and_then(|_| (descriptor.build)(config, &env).map(drop)),
        };
        if let Err(e) = result {
            errors.push(e.within(&within));
        }
    }
    errors
}

/// The consumers of `config`, each with the plugins of its group and its own (a consumer's
/// own replacing its group's), indexed by every credential it has: those in its own
/// `plugins` and those of its credentials.
/// Credentials another consumer has too go to `clashes`, every other problem to `errors`.
fn consumers(
    config: &Config,
    env: &Environment,
    errors: &mut Vec<FieldError>,
    clashes: &mut Vec<FieldError>,
) -> Credentials {
    let groups: BTreeMap<&str, &Value> = config
        .others
        .iter()
        .filter(|(k, _)| k.kind == Kind::ConsumerGroups)
        .map(|(k, v)| (k.id.as_str(), v))
        .collect();
    let mut credentials = Credentials::default();
    for (key, value) in config
        .others
        .iter()
        .filter(|(k, _)| k.kind == Kind::Consumers)
    {
        let location = key.to_string();
        let group_id = value
            .get("group_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let own = value.get("plugins").and_then(Value::as_object);
        let mut chain = ChainBuilder::new();
        if let Some(group) = group_id.as_deref().and_then(|g| groups.get(g)) {
            if let Some(plugins) = group.get("plugins").and_then(Value::as_object) {
                let location = format!("consumer_groups/{}", group_id.as_deref().unwrap_or(""));
                add_all(&mut chain, plugins, env, &location, errors);
            }
        }
        // A consumer's authentication plugins are its credentials, not plugins to run.
        let (auth, other): (Plugins, Plugins) = own
            .into_iter()
            .flatten()
            .map(|(n, v)| (n.clone(), v.clone()))
            .partition(|(name, _)| find(name).is_some_and(|d| d.credential.is_some()));
        add_all(&mut chain, &other, env, &location, errors);
        let consumer = Arc::new(Consumer::new(key.id.clone(), group_id, chain.build()));
        let credential_configs = config
            .others
            .range(Key::new(Kind::Credentials, format!("{}/", key.id))..)
            .take_while(|(k, _)| {
                k.kind == Kind::Credentials && k.id.starts_with(&format!("{}/", key.id))
            })
            .filter_map(|(k, v)| Some((k.to_string(), v.get("plugins")?.as_object()?.clone())));
        let sources = std::iter::once((location.clone(), auth)).chain(credential_configs);
        for (location, plugins) in sources {
            for (name, config) in &plugins {
                let Some((descriptor, spec)) =
                    find(name).and_then(|d| Some((d, d.credential.as_ref()?)))
                else {
                    continue;
                };
                let path = format!("{location}.plugins.{name}");
                let parsed = resolve_env(config).and_then(|config| (spec.parse)(&config));
                let (lookup, secret) = match parsed {
                    Ok(parsed) => parsed,
                    Err(e) => {
                        errors.push(e.within(&path));
                        continue;
                    }
                };
                let credential = Credential {
                    consumer: consumer.clone(),
                    secret,
                };
                if let Err(duplicate) = credentials.insert(descriptor.name, &lookup, credential) {
                    clashes.push(FieldError::new(
                        path,
                        format!("the same credential as consumer `{}`", duplicate.consumer),
                    ));
                }
            }
        }
    }
    credentials
}

/// Checks the plugins of one resource, as it is written: `plugins` on a route, service,
/// plugin config, global rule or consumer group configures plugins to run; on a consumer or
/// credential, an authentication plugin's entry is the consumer's credential; a
/// `plugin_metadata` resource is the metadata of the plugin its `id` names; a `protos`
/// resource's content must compile. Plugins that read protos find them in `protos`.
pub fn check_resource(kind: Kind, resource: &Value, protos: &Protos) -> Vec<FieldError> {
    if kind == Kind::Protos {
        return check_proto(resource);
    }
    if kind == Kind::PluginMetadata {
        let checked = match resource.get("id").and_then(Value::as_str) {
            Some(name) => parse_metadata(name, resource).map(drop),
            None => Err(FieldError::new("id", "must name the plugin")),
        };
        return checked.err().into_iter().collect();
    }
    let mut errors = Vec::new();
    if kind == Kind::StreamRoutes {
        errors.extend(stream_protocol_errors(resource, protos));
    }
    let Some(plugins) = resource.get("plugins").and_then(Value::as_object) else {
        return errors;
    };
    let scope = match kind {
        Kind::Consumers | Kind::Credentials => Scope::Consumer,
        _ => Scope::Route,
    };
    errors.extend(check(plugins, scope, protos));
    if kind == Kind::StreamRoutes {
        let pushes = resource.pointer("/protocol/name").and_then(Value::as_str)
            == Some(pylon_push::PROTOCOL_NAME);
        let runs = |name: &str| {
            STREAM_PLUGINS.contains(&name) || pushes && PUSH_AUTH_PLUGINS.contains(&name)
        };
        errors.extend(plugins.keys().filter(|name| !runs(name)).map(|name| {
            let also = if pushes {
                format!(", and on a push gateway {}", PUSH_AUTH_PLUGINS.join(" or "))
            } else {
                String::new()
            };
            FieldError::new(
                format!("plugins.{name}"),
                format!(
                    "does not run on stream routes, which run {}{also}",
                    STREAM_PLUGINS.join(" and ")
                ),
            )
        }));
        if let Some(limit) = plugins.get("limit-conn") {
            errors.extend(stream_conn_key(limit).err());
        }
    }
    if kind == Kind::Credentials {
        errors.extend(
            plugins
                .keys()
                .filter(|name| find(name).is_some_and(|d| d.credential.is_none()))
                .map(|name| {
                    FieldError::new(
                        format!("plugins.{name}"),
                        "a credential holds authentication plugins only",
                    )
                }),
        );
    }
    errors
}

/// A stream route's `protocol.conf`, checked as its protocol reads it (the name itself is the
/// model's to check), its commands' message types looked up in `protos`.
fn stream_protocol_errors(resource: &Value, protos: &Protos) -> Vec<FieldError> {
    let Some(protocol) = resource.get("protocol") else {
        return Vec::new();
    };
    let conf = protocol.get("conf").cloned().unwrap_or(Value::Null);
    let name = protocol.get("name").and_then(Value::as_str);
    if name == Some(pylon_push::PROTOCOL_NAME) {
        return push_config(&conf)
            .err()
            .into_iter()
            .flatten()
            .map(|e| e.within("protocol.conf"))
            .collect();
    }
    if name != Some(FRAMES_PROTOCOL) {
        return Vec::new();
    }
    let checked = FramesConfig::from_json(&conf)
        .map_err(|e| vec![e])
        .and_then(|config| {
            pylon_frames::Protocol::new(&config)?;
            frame_messages(&config, protos).map(drop)
        });
    checked
        .err()
        .into_iter()
        .flatten()
        .map(|e| e.within("protocol.conf"))
        .collect()
}

/// A push gateway's `protocol.conf`, checked, with the Redis its `redis` names and that
/// Redis's key prefix; errors have paths relative to `protocol.conf`.
pub fn push_config(conf: &Value) -> Result<(PushConfig, Arc<Redis>, String), Vec<FieldError>> {
    let config = PushConfig::from_json(conf).map_err(|e| vec![e])?;
    let mut errors = config.validate();
    match shared_redis(&config.redis) {
        Ok((redis, prefix)) if errors.is_empty() => Ok((config, redis, prefix)),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.push(e.within("redis"));
            Err(errors)
        }
    }
}

/// The message types of a framed-protocol command's bodies: its frame's body is a `request`,
/// the answer frame's a `response`.
#[derive(Debug, Clone)]
pub struct FrameMessages {
    pub request: MessageDescriptor,
    pub response: MessageDescriptor,
}

/// The message types of each command of `config` that names a proto, by command id, looked
/// up in `protos`; errors have paths relative to `protocol.conf`
/// (`commands.4097.request: ...`). `config` is valid (see [`FramesConfig::validate`]).
pub fn frame_messages(
    config: &FramesConfig,
    protos: &Protos,
) -> Result<Vec<(u64, FrameMessages)>, Vec<FieldError>> {
    let mut resolved = Vec::new();
    let mut errors = Vec::new();
    for (id, command) in &config.commands {
        let (Some(proto_id), Some(request), Some(response), Ok(number)) = (
            &command.proto_id,
            &command.request,
            &command.response,
            id.parse::<u64>(),
        ) else {
            continue;
        };
        let at = |field: &str| format!("commands.{id}.{field}");
        let schema = match protos.schema(proto_id, &at("proto_id")) {
            Ok(schema) => schema,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let message = |field: &str, name: &str| {
            schema.message(name).ok_or_else(|| {
                FieldError::new(
                    at(field),
                    format!("message `{name}` is not defined in proto `{proto_id}`"),
                )
            })
        };
        match (message("request", request), message("response", response)) {
            (Ok(request), Ok(response)) => {
                resolved.push((number, FrameMessages { request, response }));
            }
            (request, response) => errors.extend(request.err().into_iter().chain(response.err())),
        }
    }
    if errors.is_empty() {
        Ok(resolved)
    } else {
        Err(errors)
    }
}

/// The plugins a stream route runs: on a connection, not on HTTP requests.
pub const STREAM_PLUGINS: [&str; 2] = ["ip-restriction", "limit-conn"];

/// The plugins a push gateway's route may have besides: they check the token of each
/// device's `auth` frame.
pub const PUSH_AUTH_PLUGINS: [&str; 2] = ["key-auth", "jwt-auth"];

/// What only a whole configuration shows of its plugins, beyond what [`check_resource`]
/// finds in each resource: two consumers with the same credential (the same API key, say).
pub fn check_config(config: &Config) -> Vec<FieldError> {
    let mut clashes = Vec::new();
    consumers(
        config,
        &Environment::default(),
        &mut Vec::new(),
        &mut clashes,
    );
    clashes
}

/// Where a resource keeps secrets that are stored sealed and never shown in the clear: the
/// secret fields of its authentication plugins (an API key, a password, an HMAC or JWT
/// secret), as JSON pointers into the resource. Only consumers and credentials hold them.
pub fn secret_pointers(kind: Kind, resource: &Value) -> Vec<String> {
    if !matches!(kind, Kind::Consumers | Kind::Credentials) {
        return Vec::new();
    }
    let Some(plugins) = resource.get("plugins").and_then(Value::as_object) else {
        return Vec::new();
    };
    plugins
        .keys()
        .filter_map(|name| Some((name, find(name)?.credential.as_ref()?)))
        .flat_map(|(name, spec)| {
            spec.secret_fields
                .iter()
                .map(move |field| format!("/plugins/{name}/{field}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config_with(entries: &[(Key, Value)]) -> Config {
        let entries: Vec<(&Key, &Value)> = entries.iter().map(|(k, v)| (k, v)).collect();
        Config::from_entries(entries).expect("a valid configuration")
    }

    #[test]
    fn metadata_is_checked_by_the_plugin_its_id_names() {
        let check = |value: Value| {
            check_resource(Kind::PluginMetadata, &value, Protos::none())
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        let written = json!({
            "id": "cors", "create_time": 1, "update_time": 2,
            "allow_origins": {"a": "https://a.example"},
        });
        assert_eq!(check(written), Vec::<String>::new());
        assert_eq!(
            check(json!({"id": "cors", "allow_origins": {"a": "a.example"}})),
            ["allow_origins.a: must be `*`, `**`, `null` or origins like `https://a.example` separated by commas"]
        );
        assert_eq!(check(json!({"id": "nope"})), ["id: unknown plugin `nope`"]);
        assert_eq!(
            check(json!({"id": "key-auth"})),
            ["id: plugin `key-auth` has no metadata"]
        );
        assert_eq!(check(json!({})), ["id: must name the plugin"]);
    }

    #[test]
    fn each_plugin_is_built_with_its_own_metadata() {
        let metadata = Key::new(Kind::PluginMetadata, "cors");
        let route = json!({
            "uri": "/a",
            "upstream": {"nodes": {"127.0.0.1:1": 1}},
            "plugins": {"cors": {"allow_origins_by_metadata": ["a"]}},
        });
        let config = config_with(&[
            (
                metadata.clone(),
                json!({"id": "cors", "allow_origins": {"a": "*"}}),
            ),
            (Key::new(Kind::Routes, "1"), route),
        ]);
        let (compiled, errors) = CompiledPlugins::compile(&config);
        assert_eq!(errors, []);
        assert!(compiled.env.for_plugin("cors", "").metadata.is_some());
        assert!(compiled.env.for_plugin("key-auth", "").metadata.is_none());
        assert!(compiled.route_chain("1", &config.routes["1"]).is_ok());

        // Refused metadata is reported where it is wrong; the plugin builds without it.
        let config = config_with(&[(metadata, json!({"id": "cors", "allow_origins": []}))]);
        let (compiled, errors) = CompiledPlugins::compile(&config);
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("plugin_metadata/cors.allow_origins: "),
            "{errors:?}"
        );
        assert!(compiled.env.for_plugin("cors", "").metadata.is_none());
    }

    /// An update builds again only what changed: the plugins of an unchanged service and of
    /// the global rules are the same instances (their buffers did not move); a consumer
    /// change builds everything again.
    #[test]
    fn an_update_keeps_the_plugins_of_what_did_not_change() {
        let service = |id: &str| Key::new(Kind::Services, id);
        let with_plugins = json!({"plugins": {"request-id": {}}});
        let mut entries = vec![
            (service("1"), with_plugins.clone()),
            (service("2"), with_plugins.clone()),
            (Key::new(Kind::GlobalRules, "g"), with_plugins.clone()),
        ];
        let (mut compiled, errors) = CompiledPlugins::compile(&config_with(&entries));
        assert_eq!(errors, []);
        let built =
            |c: &CompiledPlugins, id: &str| c.shared[&service(id)].as_ref().unwrap().as_ptr();
        let (one, two, global) = (
            built(&compiled, "1"),
            built(&compiled, "2"),
            compiled.global.entries().as_ptr(),
        );

        entries[0].1 = json!({"plugins": {"request-id": {"header_name": "x-id"}}});
        let errors = compiled.update(&config_with(&entries), &[service("1")]);
        assert_eq!(errors, []);
        assert_ne!(
            built(&compiled, "1"),
            one,
            "the changed service is built again"
        );
        assert_eq!(built(&compiled, "2"), two);
        assert_eq!(compiled.global.entries().as_ptr(), global);

        entries.push((
            Key::new(Kind::Consumers, "jack"),
            json!({"username": "jack"}),
        ));
        let consumer = Key::new(Kind::Consumers, "jack");
        compiled.update(&config_with(&entries), &[consumer]);
        assert_ne!(
            built(&compiled, "2"),
            two,
            "a consumer change builds everything"
        );

        entries.remove(1);
        compiled.update(&config_with(&entries), &[service("2")]);
        assert!(!compiled.shared.contains_key(&service("2")));
    }

    #[test]
    fn a_frames_route_names_messages_of_an_existing_proto() {
        let im = "syntax = \"proto3\";\npackage im;\nmessage SendReq { string text = 1; }\nmessage SendResp { uint64 id = 1; }\n";
        let protos = Protos::from_entries([("im", im), ("broken", "message {")], Protos::none());
        let route = |command: Value| {
            json!({"protocol": {"name": "pylon-frames", "conf": {
                "layout": {
                    "start": "09", "end": "0a", "header_length": 8,
                    "body_length": {"offset": 0, "width": 4},
                    "command": {"offset": 4, "width": 2},
                    "sequence": {"offset": 6, "width": 2}
                },
                "commands": {"4097": command, "4098": {"uri": "/raw"}}
            }}})
        };
        let check = |command: Value| {
            check_resource(Kind::StreamRoutes, &route(command), &protos)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        let send = |proto: &str, request: &str, response: &str| json!({"uri": "/im/send", "proto_id": proto, "request": request, "response": response});
        assert_eq!(
            check(send("im", "im.SendReq", "im.SendResp")),
            Vec::<String>::new()
        );
        assert_eq!(
            check(send("im", "im.Nope", "SendResp")),
            [
                "protocol.conf.commands.4097.request: message `im.Nope` is not defined in proto `im`",
                "protocol.conf.commands.4097.response: message `SendResp` is not defined in proto `im`",
            ]
        );
        assert_eq!(
            check(send("chat", "im.SendReq", "im.SendResp")),
            ["protocol.conf.commands.4097.proto_id: proto `chat` does not exist"]
        );
        let broken = check(send("broken", "im.SendReq", "im.SendResp"));
        assert_eq!(broken.len(), 1);
        assert!(
            broken[0].starts_with(
                "protocol.conf.commands.4097.proto_id: proto `broken` does not compile: "
            ),
            "{broken:?}"
        );

        let config = FramesConfig::from_json(
            &route(send("im", "im.SendReq", "im.SendResp"))["protocol"]["conf"],
        )
        .unwrap();
        let messages = frame_messages(&config, &protos).unwrap();
        assert_eq!(messages.len(), 1, "the raw command has no messages");
        let (id, found) = &messages[0];
        assert_eq!(*id, 4097);
        assert_eq!(found.request.full_name(), "im.SendReq");
        assert_eq!(found.response.full_name(), "im.SendResp");
    }
}
