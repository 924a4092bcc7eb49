//! What the catalog knows of each plugin, and what building one may use: the types every
//! plugin module fills in for itself.

use std::any::Any;
use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::Plugin;
use serde_json::Value;

use crate::credentials::{Credentials, Secret};
use crate::protos::Protos;

/// What building a plugin may use besides its own configuration.
pub struct BuildEnv<'a> {
    /// Every consumer's credentials, for authentication plugins.
    pub credentials: &'a Arc<Credentials>,
    /// The plugin's metadata (`plugin_metadata/<name>`) as its [`MetadataSpec`] parsed it;
    /// `None` when none is configured.
    pub metadata: Option<&'a Metadata>,
    /// Where the configuration sits (`routes/1`, `services/2`, `global_rules/g`,
    /// `consumers/jack`): what state kept beyond this node (the Redis counters) is keyed by.
    /// Empty when a configuration is only checked.
    pub owner: &'a str,
    /// The configuration's compiled `protos`, for the gRPC transcoding plugins.
    pub protos: &'a Protos,
}

impl BuildEnv<'_> {
    /// The plugin's metadata as the type its [`MetadataSpec::parse`] made.
    pub fn metadata<T: Any>(&self) -> Option<&T> {
        self.metadata?.downcast_ref()
    }
}

/// A plugin's metadata, parsed: each plugin downcasts it to its own type.
pub type Metadata = Arc<dyn Any + Send + Sync>;

/// How a plugin is built from its configuration.
pub type Build = fn(&Value, &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError>;

/// One plugin of the catalog.
pub struct Descriptor {
    pub name: &'static str,
    /// Higher runs first within a phase (APISIX's priorities).
    pub priority: i64,
    /// The JSON Schema of the plugin's configuration on a route, service, plugin config,
    /// global rule or consumer group.
    pub schema: fn() -> Value,
    /// Builds (and so validates) the plugin from its configuration, `_meta` excluded.
    pub build: Build,
    /// For authentication plugins: what a consumer or credential configures.
    pub credential: Option<CredentialSpec>,
    /// For plugins with settings shared by all their instances: their `plugin_metadata`.
    pub metadata: Option<MetadataSpec>,
}

/// The global settings of a plugin (APISIX's `metadata_schema`), one resource per plugin:
/// `plugin_metadata/<name>`. Every instance of the plugin is built with them, and rebuilt
/// when they change.
pub struct MetadataSpec {
    pub schema: fn() -> Value,
    /// Parses (and so validates) the metadata, its `id`, `create_time` and `update_time`
    /// excluded, into what the plugin's builds read through [`BuildEnv::metadata`].
    pub parse: fn(&Value) -> Result<Metadata, FieldError>,
}

/// The consumer side of an authentication plugin.
pub struct CredentialSpec {
    pub schema: fn() -> Value,
    /// Parses a consumer's configuration into the value it is looked up by (the API key,
    /// the user name) and the secret the plugin checks.
    pub parse: fn(&Value) -> Result<(String, Secret), FieldError>,
    /// The fields that hold secrets: sealed in the store, never returned by a read.
    pub secret_fields: &'static [&'static str],
}

/// Where a plugin configuration sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// On a route, service, plugin config, global rule or consumer group.
    Route,
    /// On a consumer or a credential: an authentication plugin's credential, or any other
    /// plugin's configuration for that consumer's requests.
    Consumer,
}
