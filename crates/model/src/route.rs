//! Routes: what a request must look like to match, and where it goes.

use std::collections::BTreeMap;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::config::{de_opt_id, id_schema, Labels, Plugins};
use crate::expr::Expr;
use crate::upstream::{Timeout, Upstream};
use crate::validate::METHODS;

/// A route: which requests it matches (it needs `uri` or `uris`), and where they go.
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
    /// A name for people; not used to match.
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// A description for people.
    pub desc: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    /// Key-value pairs to tag and select resources by.
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The path to match: exact, a prefix ending in `*`, or with `:param` segments.
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Several paths, each as `uri`; a request matches if it matches one.
    pub uris: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The `Host` to match; a leading `*.` matches any subdomain.
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Several hosts, each as `host`.
    pub hosts: Option<Vec<String>>,
    /// HTTP methods to match; any method when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "methods_schema")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The client address to match: an IP address or a CIDR.
    pub remote_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Several client addresses, each as `remote_addr`.
    pub remote_addrs: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Conditions on request variables (headers, arguments, cookies, ...) that must hold too.
    pub vars: Option<Expr>,
    /// Among routes whose paths match equally closely, the one with the highest priority wins.
    #[serde(default)]
    pub priority: i64,
    /// 1 enabled, 0 disabled.
    #[serde(default = "enabled")]
    #[schemars(range(min = 0, max = 1))]
    pub status: i64,
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    /// The service whose upstream (and settings) the route uses.
    pub service_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    /// The upstream requests go to, by id.
    pub upstream_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The upstream requests go to, written inline; takes precedence over `upstream_id`.
    pub upstream: Option<Upstream>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Plugins by name, with their configuration (`GET /apisix/admin/plugins/list` names them).
    pub plugins: Option<Plugins>,
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    /// A plugin config whose plugins the route uses too.
    pub plugin_config_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Whether requests may upgrade to WebSocket.
    pub enable_websocket: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Timeouts towards the upstream; the upstream's own when absent.
    pub timeout: Option<Timeout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// APISIX's Lua matching function: not supported by this build, refused when set.
    pub filter_func: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// APISIX's Lua script: not supported by this build, refused when set.
    pub script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When the resource was created, in seconds since the Unix epoch.
    pub create_time: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// When the resource was last changed, in seconds since the Unix epoch.
    pub update_time: Option<i64>,
}

fn enabled() -> i64 {
    1
}

/// `methods`: the names the validator accepts, or null.
fn methods_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": ["array", "null"],
        "items": {"type": "string", "enum": METHODS}
    })
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
