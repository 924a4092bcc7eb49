//! Field checks that types alone cannot express. Paths are relative to the resource.

use std::net::IpAddr;

use serde_json::Value;

use crate::config::{Plugins, Resource};
use crate::error::FieldError;
use crate::key::Kind;
use crate::route::Route;
use crate::upstream::{HashOn, PassHost, Timeout, Upstream, UpstreamType, MAX_SECONDS};

/// APISIX's bounds on a resource's `name` (a consumer's `username` too), on a label's value, on
/// an id, and on a route's `uri`.
pub const MAX_NAME_LEN: usize = 256;
const MAX_LABEL_LEN: usize = 256;
pub const MAX_ID_LEN: usize = 64;
const MAX_URI_LEN: usize = 4096;

/// The HTTP methods a route may list.
pub(crate) const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

pub(crate) fn resource(resource: &Resource) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match resource {
        Resource::Route(r) => route(r, &mut errors),
        Resource::Service(s) => {
            if let Some(hosts) = &s.hosts {
                hosts_list("hosts", hosts.iter(), &mut errors);
            }
            if let Some(u) = &s.upstream {
                nested(&mut errors, "upstream", |e| upstream(u, e));
            }
            plugin_objects(s.plugins.as_ref(), &mut errors);
            unsupported(&mut errors, "script", s.script.is_some());
        }
        Resource::Upstream(u) => upstream(u, &mut errors),
        Resource::GlobalRule(g) => plugin_objects(Some(&g.plugins), &mut errors),
        Resource::PluginConfig(p) => plugin_objects(Some(&p.plugins), &mut errors),
        Resource::Ssl(s) => s.validate(&mut errors),
        // Checked as it is parsed, with its own rules.
        Resource::StreamRoute(_) | Resource::Other(..) => {}
    }
    errors
}

fn route(r: &Route, errors: &mut Vec<FieldError>) {
    if r.uri.is_none() && r.uris.as_ref().is_none_or(Vec::is_empty) {
        errors.push(FieldError::new("uri", "a route needs `uri` or `uris`"));
    }
    // As APISIX's schema: one field or its list, never both; a list, when given, is not
    // empty and names each item once.
    exclusive("uri", r.uri.is_some(), "uris", r.uris.is_some(), errors);
    exclusive("host", r.host.is_some(), "hosts", r.hosts.is_some(), errors);
    exclusive(
        "remote_addr",
        r.remote_addr.is_some(),
        "remote_addrs",
        r.remote_addrs.is_some(),
        errors,
    );
    for (path, list) in [
        ("uris", &r.uris),
        ("hosts", &r.hosts),
        ("remote_addrs", &r.remote_addrs),
        ("methods", &r.methods),
    ] {
        if let Some(list) = list {
            unique_items(path, list, errors);
            if list.is_empty() && path != "methods" {
                errors.push(FieldError::new(path, "must have at least 1 item"));
            }
        }
    }
    if let Some(uri) = &r.uri {
        uri_pattern("uri", uri, errors);
        if uri.len() > MAX_URI_LEN {
            errors.push(FieldError::new(
                "uri",
                format!("must be at most {MAX_URI_LEN} bytes"),
            ));
        }
    }
    for (i, uri) in r.uris.iter().flatten().enumerate() {
        uri_pattern(&format!("uris[{i}]"), uri, errors);
    }
    if let Some(host) = &r.host {
        host_pattern("host", host, errors);
    }
    if let Some(hosts) = &r.hosts {
        hosts_list("hosts", hosts.iter(), errors);
    }
    for (i, m) in r.methods.iter().flatten().enumerate() {
        if !METHODS.contains(&m.as_str()) {
            errors.push(FieldError::new(
                format!("methods[{i}]"),
                format!("`{m}` is not one of {}", METHODS.join(", ")),
            ));
        }
    }
    if let Some(addr) = &r.remote_addr {
        remote_addr("remote_addr", addr, errors);
    }
    for (i, addr) in r.remote_addrs.iter().flatten().enumerate() {
        remote_addr(&format!("remote_addrs[{i}]"), addr, errors);
    }
    if !(r.status == 0 || r.status == 1) {
        errors.push(FieldError::new(
            "status",
            "must be 0 (disabled) or 1 (enabled)",
        ));
    }
    if let Some(t) = &r.timeout {
        timeout("timeout", t, errors);
    }
    if let Some(u) = &r.upstream {
        nested(errors, "upstream", |e| upstream(u, e));
    }
    if let Some(vars) = &r.vars {
        body_arguments(vars.source(), "vars", errors);
    }
    plugin_objects(r.plugins.as_ref(), errors);
    unsupported(errors, "filter_func", r.filter_func.is_some());
    unsupported(errors, "script", r.script.is_some());
}

pub(crate) fn upstream(u: &Upstream, errors: &mut Vec<FieldError>) {
    // No nodes is valid, as in APISIX: the upstream answers 503 until it has some (staged
    // roll-outs, and discovery, fill it later).
    if let Some(Err(errs)) = u.nodes.as_ref().map(|n| n.resolve(u.scheme)) {
        errors.extend(errs.into_iter().map(|e| e.within("nodes")));
    }
    if u.balancer == UpstreamType::Chash {
        chash_key(u.key.as_deref(), u.hash_on, errors);
    }
    if u.retries.is_some_and(|r| !(0..=100).contains(&r)) {
        errors.push(FieldError::new("retries", "must be 0..100"));
    }
    if let Some(t) = u.retry_timeout {
        if t < 0.0 || !t.is_finite() {
            errors.push(FieldError::new(
                "retry_timeout",
                "must be a number of seconds >= 0",
            ));
        } else {
            at_most_a_year("retry_timeout", t, errors);
        }
    }
    if let Some(t) = &u.timeout {
        timeout("timeout", t, errors);
    }
    if let Some(pool) = &u.keepalive_pool {
        if pool.size < 1 {
            errors.push(FieldError::new("keepalive_pool.size", "must be >= 1"));
        }
        if pool.idle_timeout < 0.0 || !pool.idle_timeout.is_finite() {
            errors.push(FieldError::new(
                "keepalive_pool.idle_timeout",
                "must be >= 0",
            ));
        } else {
            at_most_a_year("keepalive_pool.idle_timeout", pool.idle_timeout, errors);
        }
        if pool.requests < 1 {
            errors.push(FieldError::new("keepalive_pool.requests", "must be >= 1"));
        }
    }
    // The Host a `node` upstream sends is its node's: APISIX takes it from a single node.
    if u.pass_host == PassHost::Node && u.nodes.as_ref().is_some_and(|n| n.len() != 1) {
        errors.push(FieldError::new(
            "pass_host",
            "`node` needs exactly one node (its host is the Host sent)",
        ));
    }
    if u.pass_host == PassHost::Rewrite && u.upstream_host.as_deref().is_none_or(str::is_empty) {
        errors.push(FieldError::new(
            "upstream_host",
            "is required when `pass_host` is rewrite",
        ));
    }
    if let Some(host) = u.upstream_host.as_deref().filter(|h| !h.is_empty()) {
        if !host_chars(host) {
            errors.push(FieldError::new(
                "upstream_host",
                format!("`{host}` is not a host name or address"),
            ));
        }
    }
    if let Some(tls) = &u.tls {
        // On a clear-text upstream these settings would be silently ignored: say so instead.
        if !u.scheme.is_tls() {
            errors.push(FieldError::new(
                "tls",
                format!(
                    "applies only to `https`, `grpcs` and `tls` upstreams, and scheme is `{}`",
                    u.scheme.as_str()
                ),
            ));
        }
        nested(errors, "tls", |e| tls.validate(e));
    }
    if let Some(checks) = &u.checks {
        nested(errors, "checks", |e| checks.validate(e));
    }
    if let Some(outlier) = &u.outlier_detection {
        nested(errors, "outlier_detection", |e| outlier.validate(e));
    }
    match (&u.discovery_type, &u.service_name) {
        (Some(_), None) => errors.push(FieldError::new(
            "service_name",
            "is required with `discovery_type`",
        )),
        (None, Some(_)) => errors.push(FieldError::new(
            "discovery_type",
            "is required with `service_name`",
        )),
        (Some(_), Some(_)) if u.nodes.is_some() => errors.push(FieldError::new(
            "nodes",
            "cannot be given with `discovery_type`: discovery finds the nodes",
        )),
        (Some(kind), Some(name)) => {
            if !DISCOVERY_TYPES.contains(&kind.as_str()) {
                errors.push(FieldError::new(
                    "discovery_type",
                    format!("must be one of {}", DISCOVERY_TYPES.join(", ")),
                ));
            }
            if !(1..=MAX_NAME_LEN).contains(&name.len()) {
                errors.push(FieldError::new(
                    "service_name",
                    format!("must be 1 to {MAX_NAME_LEN} characters"),
                ));
            }
        }
        (None, None) if u.nodes.is_none() => errors.push(FieldError::new(
            "nodes",
            "is required, unless `discovery_type` and `service_name` find them",
        )),
        (None, None) => {}
    }
}

/// The discovery types this build has.
const DISCOVERY_TYPES: [&str; 4] = ["dns", "etcd", "consul", "consul_kv"];

/// APISIX's `post_arg.<JSON path>` variables match on the request body, which this build does
/// not read before routing: a route using one would never match, so it is refused.
fn body_arguments(vars: &Value, path: &str, errors: &mut Vec<FieldError>) {
    let Some(items) = vars.as_array() else {
        return;
    };
    if let Some(name) = items.first().and_then(Value::as_str) {
        if let Some(json_path) = name.strip_prefix("post_arg.") {
            let message = if is_json_path(json_path) {
                format!("`{name}`: matching on the request body (`post_arg.*`) is not supported by this build")
            } else {
                format!("`{name}`: `{json_path}` is not a JSON path")
            };
            errors.push(FieldError::new(format!("{path}[0]"), message));
            return;
        }
    }
    for (i, item) in items.iter().enumerate() {
        body_arguments(item, &format!("{path}[{i}]"), errors);
    }
}

/// Whether `path` reads as a JSON path below the root (`a.b`, `items[0].id`, `a['b c']`).
fn is_json_path(path: &str) -> bool {
    let mut depth = 0usize;
    let mut quote = None;
    for c in path.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') if depth > 0 => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') if depth > 0 => depth -= 1,
            (None, ']') => return false,
            _ => {}
        }
    }
    !path.is_empty() && !path.starts_with('.') && depth == 0 && quote.is_none()
}

/// A URI pattern: absolute, with an optional trailing `*` and `:param` segments.
fn uri_pattern(path: &str, uri: &str, errors: &mut Vec<FieldError>) {
    if !uri.starts_with('/') {
        errors.push(FieldError::new(path, "must start with `/`"));
    } else if uri.contains(|c: char| c.is_whitespace() || c.is_control()) {
        errors.push(FieldError::new(
            path,
            "must not contain spaces or control characters",
        ));
    } else if uri.find('*').is_some_and(|i| i != uri.len() - 1) {
        errors.push(FieldError::new(path, "`*` is allowed only at the end"));
    } else if let Some(message) = bad_param(uri) {
        // The router refuses these too, but only when a snapshot is compiled: `pylon validate`
        // said "valid" and the error named no document path. Catch them here, as the router
        // would (pylon-router's `Pattern::parse`).
        errors.push(FieldError::new(path, message));
    }
}

/// Why the `:param` segments of a URI pattern (already known to start with `/` and to have `*`
/// at most at the end) would not compile.
fn bad_param(uri: &str) -> Option<&'static str> {
    let (body, is_prefix) = match uri[1..].strip_suffix('*') {
        Some(body) => (body, true),
        None => (&uri[1..], false),
    };
    let mut segments = body.split('/').peekable();
    while let Some(segment) = segments.next() {
        if is_prefix && segments.peek().is_none() && segment.starts_with(':') {
            return Some("a `:` parameter cannot end in `*`");
        }
        if segment == ":" {
            return Some("a `:` parameter needs a name");
        }
    }
    None
}

/// What people describe a resource with, as APISIX's schema bounds it: `name` (1 to 256
/// characters; any string on a plugin config), `desc` (at most 256) and `labels` (values of 1
/// to 256 characters, no spaces). A plugin's metadata and a secret manager's settings are not
/// resources people name: their fields are the plugin's and the manager's own.
pub(crate) fn descriptive_fields(kind: Kind, value: &Value, errors: &mut Vec<FieldError>) {
    if matches!(kind, Kind::PluginMetadata | Kind::Secrets) {
        return;
    }
    if let Some(name) = value.get("name").and_then(Value::as_str) {
        if kind != Kind::PluginConfigs && !(1..=MAX_NAME_LEN).contains(&name.chars().count()) {
            errors.push(FieldError::new(
                "name",
                format!("must be 1 to {MAX_NAME_LEN} characters"),
            ));
        }
    }
    if let Some(desc) = value.get("desc").and_then(Value::as_str) {
        if desc.chars().count() > 256 {
            errors.push(FieldError::new("desc", "must be at most 256 characters"));
        }
    }
    if let Some(labels) = value.get("labels").and_then(Value::as_object) {
        for (key, label) in labels {
            let valid = label.as_str().is_some_and(|v| {
                (1..=MAX_LABEL_LEN).contains(&v.chars().count()) && !v.contains(char::is_whitespace)
            });
            if !valid {
                errors.push(FieldError::new(
                    format!("labels.{key}"),
                    format!("must be 1 to {MAX_LABEL_LEN} characters without spaces"),
                ));
            }
        }
    }
}

/// The fields that hold an id, checked as APISIX's `id_schema`: 1 to 64 letters, digits, `-`,
/// `_` and `.`, or an integer from 1. A secret's and a credential's own ids are compound
/// (`vault/1`), and a plugin's metadata is named by its plugin: their `id` is not one of these.
pub(crate) fn id_fields(kind: Kind, value: &Value, errors: &mut Vec<FieldError>) {
    let own_id = !matches!(
        kind,
        Kind::Secrets | Kind::Credentials | Kind::PluginMetadata
    );
    let fields = ["upstream_id", "service_id", "plugin_config_id", "group_id"];
    for field in own_id.then_some("id").into_iter().chain(fields) {
        let valid = match value.get(field) {
            None | Some(Value::Null) => true,
            Some(Value::String(id)) => is_id(id),
            Some(Value::Number(n)) => n.as_u64().is_some_and(|n| n >= 1),
            Some(_) => false,
        };
        if !valid {
            errors.push(FieldError::new(
                field,
                format!("must be 1 to {MAX_ID_LEN} letters, digits, `-`, `_` or `.`, or an integer >= 1"),
            ));
        }
    }
}

/// A string id as APISIX's `id_schema` has it: 1 to [`MAX_ID_LEN`] letters, digits, `-`, `_`
/// and `.`.
pub fn is_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A consumer's username as APISIX has it: 1 to [`MAX_NAME_LEN`] letters, digits, `_` and `-`.
pub fn is_username(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `create_time` and `update_time` are integers (seconds since the Unix epoch), on every kind.
pub(crate) fn timestamps(value: &Value, errors: &mut Vec<FieldError>) {
    for field in ["create_time", "update_time"] {
        if value
            .get(field)
            .is_some_and(|t| !(t.is_i64() || t.is_null()))
        {
            errors.push(FieldError::new(field, "must be an integer"));
        }
    }
}

/// Two fields that may not be set together.
fn exclusive(a: &str, has_a: bool, b: &str, has_b: bool, errors: &mut Vec<FieldError>) {
    if has_a && has_b {
        errors.push(FieldError::new(
            b,
            format!("`{a}` and `{b}` exclude each other"),
        ));
    }
}

/// A list that names each item once.
fn unique_items(path: &str, items: &[String], errors: &mut Vec<FieldError>) {
    for (i, item) in items.iter().enumerate() {
        if let Some(first) = items[..i].iter().position(|earlier| earlier == item) {
            errors.push(FieldError::new(
                format!("{path}[{i}]"),
                format!("`{item}` is already {path}[{first}]"),
            ));
        }
    }
}

fn hosts_list<'a>(
    path: &str,
    hosts: impl Iterator<Item = &'a String>,
    errors: &mut Vec<FieldError>,
) {
    for (i, host) in hosts.enumerate() {
        host_pattern(&format!("{path}[{i}]"), host, errors);
    }
}

/// A host name, optionally with a leading `*.` wildcard.
pub(crate) fn host_pattern(path: &str, host: &str, errors: &mut Vec<FieldError>) {
    let name = host.strip_prefix("*.").unwrap_or(host);
    // A leading dot (`.a.com`, `*..a.com`) is no host either; the router refuses it.
    if name.is_empty() || name.starts_with('.') || !host_chars(name) {
        errors.push(FieldError::new(
            path,
            format!("`{host}` is not a host name (a leading `*.` is the only wildcard)"),
        ));
    }
}

/// Whether `host` is made of what a host name or address (`[::1]:8080` too) is made of.
fn host_chars(host: &str) -> bool {
    host.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
}

pub(crate) fn remote_addr(path: &str, addr: &str, errors: &mut Vec<FieldError>) {
    if addr.parse::<IpAddr>().is_err() && addr.parse::<ipnet::IpNet>().is_err() {
        errors.push(FieldError::new(
            path,
            format!("`{addr}` is not an IP address or CIDR"),
        ));
    }
}

fn timeout(path: &str, t: &Timeout, errors: &mut Vec<FieldError>) {
    for (name, v) in [("connect", t.connect), ("send", t.send), ("read", t.read)] {
        let path = format!("{path}.{name}");
        if !(v > 0.0 && v.is_finite()) {
            errors.push(FieldError::new(path, "must be a number of seconds > 0"));
        } else {
            at_most_a_year(&path, v, errors);
        }
    }
}

/// A duration the data plane turns into a deadline is bounded by [`MAX_SECONDS`].
pub(crate) fn at_most_a_year(path: &str, seconds: f64, errors: &mut Vec<FieldError>) {
    if seconds > MAX_SECONDS {
        errors.push(FieldError::new(
            path,
            format!("must be at most {MAX_SECONDS} seconds (a year)"),
        ));
    }
}

/// A plugin's configuration is an object. What it may hold is the plugin's own business,
/// checked by the plugins crate, which knows every plugin of the build.
pub(crate) fn plugin_objects(plugins: Option<&Plugins>, errors: &mut Vec<FieldError>) {
    for (name, config) in plugins.into_iter().flatten() {
        if !config.is_object() {
            errors.push(FieldError::new(
                format!("plugins.{name}"),
                "must be an object",
            ));
        }
    }
}

fn unsupported(errors: &mut Vec<FieldError>, field: &str, present: bool) {
    if present {
        errors.push(FieldError::new(field, "is not supported by this build yet"));
    }
}

pub(crate) fn nested(
    errors: &mut Vec<FieldError>,
    prefix: &str,
    check: impl FnOnce(&mut Vec<FieldError>),
) {
    let mut inner = Vec::new();
    check(&mut inner);
    errors.extend(inner.into_iter().map(|e| e.within(prefix)));
}

/// The variables APISIX lets `hash_on: vars` hash on, besides `arg_*`.
const HASH_VARS: [&str; 10] = [
    "uri",
    "server_name",
    "server_addr",
    "request_uri",
    "remote_port",
    "remote_addr",
    "query_string",
    "host",
    "hostname",
    "mqtt_client_id",
];
/// Of [`HASH_VARS`], those this build has no value for: hashing on them would send every
/// request to the same node.
const UNKNOWN_HASH_VARS: [&str; 3] = ["server_name", "hostname", "mqtt_client_id"];

/// A chash upstream's `key`, as APISIX checks it for each `hash_on`.
fn chash_key(key: Option<&str>, hash_on: HashOn, errors: &mut Vec<FieldError>) {
    let Some(key) = key else {
        if hash_on != HashOn::Consumer {
            errors.push(FieldError::new("key", "is required when `type` is chash"));
        }
        return;
    };
    let name_chars = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    match hash_on {
        HashOn::Vars if UNKNOWN_HASH_VARS.contains(&key) => errors.push(FieldError::new(
            "key",
            format!("`{key}` is not supported by this build as a hash key"),
        )),
        HashOn::Vars
            if !HASH_VARS.contains(&key) && !key.strip_prefix("arg_").is_some_and(name_chars) =>
        {
            errors.push(FieldError::new(
                "key",
                format!(
                    "`{key}` is not a variable chash can hash on: one of {}, or arg_<name>",
                    HASH_VARS.join(", ")
                ),
            ))
        }
        HashOn::Header | HashOn::Cookie if !name_chars(key) => errors.push(FieldError::new(
            "key",
            format!(
                "`{key}` is not a {} name: use letters, digits, `_` and `-`",
                if hash_on == HashOn::Header {
                    "header"
                } else {
                    "cookie"
                }
            ),
        )),
        // `vars_combinations` is a free template, as in APISIX; `consumer` needs no key.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::config::resource_errors;
    use crate::key::Kind;
    use crate::test_certs::{ecdsa, valid_between};
    use crate::upstream::Scheme;

    fn route_errors(value: Value) -> Vec<String> {
        resource_errors(Kind::Routes, value)
    }

    fn upstream(fields: Value) -> Value {
        let mut upstream = json!({"nodes": {"127.0.0.1:1980": 1}});
        for (k, v) in fields.as_object().unwrap() {
            upstream[k] = v.clone();
        }
        upstream
    }

    fn route_with(upstream_fields: Value) -> Value {
        json!({"uri": "/a", "upstream": upstream(upstream_fields)})
    }

    fn parsed_upstream(fields: Value) -> Upstream {
        match Resource::from_json(Kind::Upstreams, &upstream(fields)) {
            Ok(Resource::Upstream(u)) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_field_and_its_list_exclude_each_other_and_lists_name_items_once() {
        let errors = |fields: Value| {
            let mut route = json!({"upstream": upstream(json!({}))});
            for (k, v) in fields.as_object().unwrap() {
                route[k] = v.clone();
            }
            route_errors(route)
        };
        assert_eq!(
            errors(json!({"uri": "/a", "uris": ["/b"]})),
            ["uris: `uri` and `uris` exclude each other"]
        );
        assert_eq!(
            errors(json!({"uri": "/a", "host": "a.com", "hosts": ["b.com"]})),
            ["hosts: `host` and `hosts` exclude each other"]
        );
        assert_eq!(
            errors(json!({"uri": "/a", "remote_addr": "10.0.0.1", "remote_addrs": ["10.0.0.2"]})),
            ["remote_addrs: `remote_addr` and `remote_addrs` exclude each other"]
        );
        assert_eq!(
            errors(json!({"uri": "/a", "methods": ["GET", "POST", "GET"]})),
            ["methods[2]: `GET` is already methods[0]"]
        );
        assert_eq!(
            errors(json!({"uri": "/a", "hosts": []})),
            ["hosts: must have at least 1 item"]
        );
        assert_eq!(
            errors(json!({"uri": "/a", "remote_addrs": []})),
            ["remote_addrs: must have at least 1 item"]
        );
        assert!(
            errors(json!({"uris": ["/a", "/b"], "hosts": ["a.com"], "methods": []})).is_empty()
        );
    }

    #[test]
    fn nodes_are_refused_where_apisix_refuses_them() {
        let errors = |nodes: Value, pass_host: &str| {
            route_errors(json!({"uri": "/a", "upstream": {"nodes": nodes, "pass_host": pass_host}}))
        };
        assert_eq!(
            errors(json!([{"host": "127.0.0.1:1980", "weight": 1}]), "pass"),
            ["upstream.nodes[0].host: `127.0.0.1:1980` holds a port: give the host alone, and the port in `port`"]
        );
        assert_eq!(
            errors(json!({"2001:db8::1": 1}), "pass"),
            ["upstream.nodes[\"2001:db8::1\"]: `2001:db8::1`: an IPv6 address is written in brackets, as `[::1]:80`"]
        );
        assert!(errors(json!({"[2001:db8::1]:80": 1}), "pass").is_empty());
        assert!(errors(
            json!([{"host": "2001:db8::1", "port": 80, "weight": 1}]),
            "pass"
        )
        .is_empty());
        assert_eq!(
            errors(json!({"127.0.0.1:80": 1, "127.0.0.2:80": 1}), "node"),
            ["upstream.pass_host: `node` needs exactly one node (its host is the Host sent)"]
        );
        assert!(errors(json!({"127.0.0.1:80": 1}), "node").is_empty());
    }

    #[test]
    fn names_descriptions_and_labels_are_bounded_on_every_kind() {
        let long_name = "n".repeat(257);
        let route = json!({"uri": "/a", "upstream": upstream(json!({})), "name": long_name,
            "desc": "d".repeat(257), "labels": {"env": "pre prod", "team": "", "ok": "a-b_c.1"}});
        assert_eq!(
            route_errors(route),
            [
                "name: must be 1 to 256 characters",
                "desc: must be at most 256 characters",
                "labels.env: must be 1 to 256 characters without spaces",
                "labels.team: must be 1 to 256 characters without spaces",
            ]
        );
        let longest = json!({"uri": "/a", "upstream": upstream(json!({})), "name": "n".repeat(256),
            "labels": {"team": "t".repeat(256)}});
        assert_eq!(route_errors(longest), Vec::<String>::new());
        let consumer = json!({"username": "jack", "labels": {"tier": "x".repeat(257)}});
        let errors = Resource::from_json(Kind::Consumers, &consumer).unwrap_err();
        assert_eq!(errors.0[0].path, "labels.tier");
        // A plugin's metadata is the plugin's own: a `name` there is not a resource name.
        let metadata = json!({"id": "cors", "name": ""});
        assert!(Resource::from_json(Kind::PluginMetadata, &metadata).is_ok());
        // APISIX's plugin config `name` is any string.
        let plugin_config = json!({"id": 1, "name": "", "plugins": {}});
        assert!(Resource::from_json(Kind::PluginConfigs, &plugin_config).is_ok());
    }

    #[test]
    fn ids_and_times_are_checked_as_apisix_checks_them_on_every_kind() {
        let route = |fields: Value| {
            let mut route = json!({"uri": "/a", "upstream": upstream(json!({}))});
            for (k, v) in fields.as_object().unwrap() {
                route[k] = v.clone();
            }
            route_errors(route)
        };
        let id_error = "must be 1 to 64 letters, digits, `-`, `_` or `.`, or an integer >= 1";
        assert!(route(json!({"id": 1, "service_id": "a-b_c.1", "plugin_config_id": 7})).is_empty());
        assert_eq!(route(json!({"id": 0})), [format!("id: {id_error}")]);
        assert_eq!(
            route(json!({"upstream_id": "invalid$"})),
            [format!("upstream_id: {id_error}")]
        );
        assert_eq!(
            route(json!({"service_id": "s".repeat(65)})),
            [format!("service_id: {id_error}")]
        );
        let consumer = json!({"username": "jack", "group_id": "a b"});
        let errors = Resource::from_json(Kind::Consumers, &consumer).unwrap_err();
        assert_eq!(errors.0[0].to_string(), format!("group_id: {id_error}"));
        let stream_route = json!({"id": "a/b", "server_port": 9100});
        let errors = Resource::from_json(Kind::StreamRoutes, &stream_route).unwrap_err();
        assert_eq!(errors.0[0].to_string(), format!("id: {id_error}"));
        // Kinds kept as written are checked too.
        let metadata = json!({"id": "limit-count", "create_time": "yesterday"});
        let errors = Resource::from_json(Kind::PluginMetadata, &metadata).unwrap_err();
        assert_eq!(errors.0[0].to_string(), "create_time: must be an integer");
        // Compound ids are the Admin API's own.
        let secret =
            json!({"id": "vault/1", "uri": "http://127.0.0.1:8200", "prefix": "kv", "token": "t"});
        assert!(Resource::from_json(Kind::Secrets, &secret).is_ok());
    }

    #[test]
    fn routes_and_upstreams_are_bounded_as_apisix_bounds_them() {
        let long_uri = format!("/{}", "a".repeat(4096));
        assert_eq!(
            route_errors(json!({"uri": long_uri, "upstream": upstream(json!({}))})),
            ["uri: must be at most 4096 bytes"]
        );
        assert_eq!(
            route_errors(route_with(json!({"keepalive_pool": {"size": 0}}))),
            ["upstream.keepalive_pool.size: must be >= 1"]
        );
        assert_eq!(
            route_errors(route_with(
                json!({"pass_host": "rewrite", "upstream_host": "a b.test"})
            )),
            ["upstream.upstream_host: `a b.test` is not a host name or address"]
        );
        assert!(route_errors(route_with(
            json!({"pass_host": "rewrite", "upstream_host": "[::1]:8080"})
        ))
        .is_empty());
    }

    #[test]
    fn durations_beyond_a_year_are_refused_where_they_are() {
        let huge = 1e300;
        let route = json!({
            "uri": "/a",
            "timeout": {"connect": huge, "send": 1, "read": 1},
            "upstream": upstream(json!({
                "timeout": {"connect": 1, "send": 31_536_001, "read": 1},
                "retry_timeout": huge,
                "keepalive_pool": {"idle_timeout": huge},
            })),
        });
        assert_eq!(
            route_errors(route),
            [
                "timeout.connect: must be at most 31536000 seconds (a year)",
                "upstream.retry_timeout: must be at most 31536000 seconds (a year)",
                "upstream.timeout.send: must be at most 31536000 seconds (a year)",
                "upstream.keepalive_pool.idle_timeout: must be at most 31536000 seconds (a year)",
            ]
        );
        let a_year = json!({"connect": 31_536_000, "send": 1, "read": 0.5});
        assert_eq!(
            route_errors(json!({"uri": "/a", "timeout": a_year, "upstream": upstream(json!({}))})),
            Vec::<String>::new()
        );
    }

    #[test]
    fn outlier_detection_errors_name_their_field_within_the_upstream() {
        assert_eq!(
            route_errors(route_with(json!({"outlier_detection": {
                "consecutive_gateway_failure": 0,
                "base_ejection_time": 60,
                "max_ejection_time": 30,
            }}))),
            [
                "upstream.outlier_detection.consecutive_gateway_failure: must be 1..65535",
                "upstream.outlier_detection.max_ejection_time: must be at least base_ejection_time (60 seconds)",
            ]
        );
        assert!(route_errors(route_with(json!({"outlier_detection": {}}))).is_empty());
        let unknown = resource_errors(
            Kind::Upstreams,
            upstream(json!({"outlier_detection": {"consecutive_errors": 3}})),
        );
        assert_eq!(unknown.len(), 1);
        assert!(
            unknown[0].starts_with(
                "outlier_detection.consecutive_errors: unknown field `consecutive_errors`"
            ),
            "{unknown:?}"
        );
    }

    #[test]
    fn every_apisix_http_scheme_is_accepted() {
        for (name, scheme, port, tls, grpc) in [
            ("http", Scheme::Http, 80, false, false),
            ("https", Scheme::Https, 443, true, false),
            ("grpc", Scheme::Grpc, 80, false, true),
            ("grpcs", Scheme::Grpcs, 443, true, true),
        ] {
            let u = parsed_upstream(json!({"scheme": name, "nodes": {"a.test": 1}}));
            assert_eq!(u.scheme, scheme);
            assert_eq!(u.scheme.as_str(), name);
            assert_eq!(
                (
                    u.scheme.default_port(),
                    u.scheme.is_tls(),
                    u.scheme.is_grpc()
                ),
                (port, tls, grpc)
            );
            assert_eq!(
                u.nodes.as_ref().unwrap().resolve(u.scheme).unwrap()[0].port,
                port
            );
        }
        let errors = route_errors(route_with(json!({"scheme": "kafka"})));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("upstream.scheme: unknown variant `kafka`, expected one of"),
            "{errors:?}"
        );
    }

    #[test]
    fn upstream_tls_verifies_by_default_and_checks_the_client_certificate() {
        let pem = ecdsa(&["client.test"]);
        let u = parsed_upstream(json!({"scheme": "https", "tls": {}}));
        let tls = u.tls.as_ref().unwrap();
        assert!(tls.verify);
        assert!(tls.client_key_pair().is_none());

        let u = parsed_upstream(json!({
            "scheme": "grpcs",
            "tls": {"client_cert": pem.cert, "client_key": pem.key, "verify": false},
        }));
        let tls = u.tls.as_ref().unwrap();
        assert!(!tls.verify);
        assert_eq!(tls.client_key_pair().unwrap().unwrap().chain.len(), 1);
        let debug = format!("{u:?}");
        assert!(debug.contains("client_key: Some(<redacted>)"), "{debug}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");

        let other = ecdsa(&["client.test"]);
        let expired = valid_between(&["client.test"], (2000, 1, 1), (2001, 1, 1));
        for (tls, expected) in [
            (
                json!({"client_cert": pem.cert}),
                "upstream.tls.client_key: required when tls.client_cert is set",
            ),
            (
                json!({"client_key": pem.key}),
                "upstream.tls.client_cert: required when tls.client_key is set",
            ),
            (
                json!({"client_cert": "x", "client_key": pem.key}),
                "upstream.tls.client_cert: not a PEM certificate",
            ),
            (
                json!({"client_cert": pem.cert, "client_key": "x"}),
                "upstream.tls.client_key: not a PEM private key",
            ),
            (
                json!({"client_cert": pem.cert, "client_key": other.key}),
                "upstream.tls.client_key: does not match the certificate",
            ),
            (
                json!({"client_cert": expired.cert, "client_key": expired.key}),
                "upstream.tls.client_cert: certificate expired at 2001-01-01T00:00:00Z",
            ),
        ] {
            assert_eq!(
                route_errors(route_with(json!({"scheme": "https", "tls": tls}))),
                [expected]
            );
        }
        assert_eq!(
            route_errors(route_with(json!({"tls": {"verify": false}}))),
            ["upstream.tls: applies only to `https`, `grpcs` and `tls` upstreams, and scheme is `http`"]
        );
        let errors = route_errors(route_with(
            json!({"scheme": "https", "tls": {"client_cert_id": 1}}),
        ));
        assert!(
            errors[0].starts_with("upstream.tls.client_cert_id: unknown field `client_cert_id`"),
            "{errors:?}"
        );
    }

    #[test]
    fn health_check_errors_have_full_paths() {
        assert_eq!(
            route_errors(route_with(json!({"checks": {"passive": {}}}))),
            ["upstream.checks.active: required when checks.passive is set"]
        );
        assert_eq!(
            route_errors(route_with(
                json!({"checks": {"active": {"healthy": {"successes": 0}}}})
            )),
            ["upstream.checks.active.healthy.successes: must be 1..254"]
        );
        let u = parsed_upstream(json!({"checks": {"active": {"http_path": "/health"}}}));
        assert_eq!(u.checks.unwrap().active.unwrap().http_path, "/health");
    }

    #[test]
    fn upstreams_with_tls_and_checks_round_trip() {
        let pem = ecdsa(&["client.test"]);
        let value = upstream(json!({
            "scheme": "https",
            "tls": {"client_cert": pem.cert, "client_key": pem.key, "verify": false},
            "checks": {
                "active": {"type": "https", "host": "h.test", "port": 8443,
                           "req_headers": ["X-Probe: 1"], "healthy": {"interval": 0.5}},
                "passive": {"unhealthy": {"http_failures": 0}},
            },
        }));
        let resource = Resource::from_json(Kind::Upstreams, &value).unwrap();
        let again = Resource::from_json(Kind::Upstreams, &resource.to_json()).unwrap();
        assert_eq!(again, resource);
        assert_eq!(
            resource.to_json()["checks"]["active"]["timeout"],
            json!(1.0)
        );
        assert_eq!(resource.to_json()["tls"]["verify"], json!(false));
    }

    #[test]
    fn websocket_is_accepted_on_routes_and_services() {
        let route = json!({"uri": "/ws", "enable_websocket": true, "upstream_id": 1});
        match Resource::from_json(Kind::Routes, &route).unwrap() {
            Resource::Route(r) => assert_eq!(r.enable_websocket, Some(true)),
            other => panic!("{other:?}"),
        }
        let service = json!({"enable_websocket": true, "upstream_id": 1});
        match Resource::from_json(Kind::Services, &service).unwrap() {
            Resource::Service(s) => assert_eq!(s.enable_websocket, Some(true)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_this_build_does_not_do_is_still_refused() {
        let errors = route_errors(json!({
            "uri": "/a", "filter_func": "function(vars) return true end", "script": "x",
            "plugins": {"limit-count": 5},
            "upstream": {"discovery_type": "eureka", "service_name": "a"},
        }));
        assert_eq!(
            errors,
            [
                "upstream.discovery_type: must be one of dns, etcd, consul, consul_kv",
                "plugins.limit-count: must be an object",
                "filter_func: is not supported by this build yet",
                "script: is not supported by this build yet",
            ]
        );
    }

    #[test]
    fn chash_keys_are_checked_for_what_they_hash_on() {
        let key_errors = |hash_on: &str, key: Value| {
            let mut fields = json!({"type": "chash", "hash_on": hash_on});
            if !key.is_null() {
                fields["key"] = key;
            }
            route_errors(route_with(fields))
        };
        for (hash_on, key) in [
            ("vars", "remote_addr"),
            ("vars", "query_string"),
            ("vars", "arg_user-id"),
            ("header", "X-User_Id"),
            ("cookie", "session-id"),
            ("vars_combinations", "any text, $host or not"),
            ("vars_combinations", ""),
        ] {
            assert_eq!(
                key_errors(hash_on, json!(key)),
                Vec::<String>::new(),
                "{key}"
            );
        }
        assert!(key_errors("consumer", Value::Null).is_empty());
        assert_eq!(
            key_errors("vars", Value::Null),
            ["upstream.key: is required when `type` is chash"]
        );
        assert_eq!(
            key_errors("vars", json!("http_x_user")),
            ["upstream.key: `http_x_user` is not a variable chash can hash on: one of uri, server_name, server_addr, request_uri, remote_port, remote_addr, query_string, host, hostname, mqtt_client_id, or arg_<name>"]
        );
        assert_eq!(
            key_errors("vars", json!("arg_")).len(),
            1,
            "an argument needs a name"
        );
        assert_eq!(
            key_errors("vars", json!("hostname")),
            ["upstream.key: `hostname` is not supported by this build as a hash key"]
        );
        assert_eq!(
            key_errors("header", json!("X User")),
            ["upstream.key: `X User` is not a header name: use letters, digits, `_` and `-`"]
        );
        assert_eq!(
            key_errors("cookie", json!("")),
            ["upstream.key: `` is not a cookie name: use letters, digits, `_` and `-`"]
        );
    }

    #[test]
    fn body_arguments_in_vars_are_refused_naming_the_element() {
        let errors = |vars: Value| {
            route_errors(json!({"uri": "/a", "vars": vars, "upstream": upstream(json!({}))}))
        };
        assert_eq!(
            errors(json!([["arg_a", "==", "1"], ["post_arg.user.name", "==", "x"]])),
            ["vars[1][0]: `post_arg.user.name`: matching on the request body (`post_arg.*`) is not supported by this build"]
        );
        assert_eq!(
            errors(json!([
                "OR",
                ["arg_a", "==", "1"],
                ["AND", ["arg_b", "==", 1], ["post_arg.items[0", "==", 1]]
            ])),
            ["vars[2][2][0]: `post_arg.items[0`: `items[0` is not a JSON path"]
        );
        assert_eq!(
            errors(json!([["post_arg.", "==", "x"]])),
            ["vars[0][0]: `post_arg.`: `` is not a JSON path"]
        );
        assert!(errors(json!([
            ["arg_post_arg.a", "==", "x"],
            ["http_post_arg", "==", "x"]
        ]))
        .is_empty());
        assert!(is_json_path("items[0].id") && is_json_path("a['b]c']") && is_json_path("a"));
        assert!(!is_json_path(".a") && !is_json_path("a]") && !is_json_path("a['b"));
    }

    fn uri_errors(uri: &str) -> Vec<String> {
        let mut errors = Vec::new();
        uri_pattern("uri", uri, &mut errors);
        errors.into_iter().map(|e| e.to_string()).collect()
    }

    fn host_ok(host: &str) -> bool {
        let mut errors = Vec::new();
        host_pattern("host", host, &mut errors);
        errors.is_empty()
    }

    /// Whatever passes here must compile in the router: the file is accepted on this check.
    #[test]
    fn uri_patterns_the_router_would_refuse_are_errors() {
        for good in [
            "/",
            "/a",
            "/a/*",
            "/a*",
            "/*",
            "/user/:id",
            "/a/:id/b/*",
            "/a/b:c",
        ] {
            assert_eq!(uri_errors(good), Vec::<String>::new(), "{good}");
        }
        assert_eq!(
            uri_errors("/a/:id*"),
            ["uri: a `:` parameter cannot end in `*`"]
        );
        assert_eq!(
            uri_errors("/:*"),
            ["uri: a `:` parameter cannot end in `*`"]
        );
        assert_eq!(uri_errors("/a/:/b"), ["uri: a `:` parameter needs a name"]);
        assert_eq!(uri_errors("/a/:"), ["uri: a `:` parameter needs a name"]);
    }

    #[test]
    fn hosts_with_a_leading_dot_are_errors() {
        assert!(host_ok("a.com") && host_ok("*.a.com"));
        assert!(!host_ok(".a.com"));
        assert!(!host_ok("*..a.com"));
        assert!(!host_ok("*."));
    }
}
