//! Routes: what a request must look like to match, and where it goes.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{de_opt_id, id_schema, Labels, Plugins};
use crate::expr::Expr;
use crate::upstream::{Timeout, Upstream};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uris: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addrs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vars: Option<Expr>,
    #[serde(default)]
    pub priority: i64,
    /// 1 enabled, 0 disabled.
    #[serde(default = "enabled")]
    pub status: i64,
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    pub service_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    pub upstream_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugins: Option<Plugins>,
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    pub plugin_config_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_websocket: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Timeout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_func: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

fn enabled() -> i64 {
    1
}

impl Route {
    /// `uri` and `uris` together, as the router sees them.
    pub fn all_uris(&self) -> impl Iterator<Item = &str> {
        self.uri
            .iter()
            .chain(self.uris.iter().flatten())
            .map(String::as_str)
    }

    /// `host` and `hosts` together.
    pub fn all_hosts(&self) -> impl Iterator<Item = &str> {
        self.host
            .iter()
            .chain(self.hosts.iter().flatten())
            .map(String::as_str)
    }

    /// `remote_addr` and `remote_addrs` together.
    pub fn all_remote_addrs(&self) -> impl Iterator<Item = &str> {
        self.remote_addr
            .iter()
            .chain(self.remote_addrs.iter().flatten())
            .map(String::as_str)
    }

    pub fn is_enabled(&self) -> bool {
        self.status != 0
    }
}
