//! Field checks that types alone cannot express. Paths are relative to the resource.

use std::net::IpAddr;

use crate::config::{Plugins, Resource};
use crate::error::FieldError;
use crate::route::Route;
use crate::upstream::{HashOn, PassHost, Scheme, Timeout, Upstream, UpstreamType};

const METHODS: [&str; 10] = [
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
            plugins(s.plugins.as_ref(), &mut errors);
            unsupported(&mut errors, "script", s.script.is_some());
            unsupported(
                &mut errors,
                "enable_websocket",
                s.enable_websocket == Some(true),
            );
        }
        Resource::Upstream(u) => upstream(u, &mut errors),
        Resource::GlobalRule(g) => plugins(Some(&g.plugins), &mut errors),
        Resource::PluginConfig(p) => plugins(Some(&p.plugins), &mut errors),
        Resource::Other(..) => {}
    }
    errors
}

fn route(r: &Route, errors: &mut Vec<FieldError>) {
    if r.uri.is_none() && r.uris.as_ref().is_none_or(Vec::is_empty) {
        errors.push(FieldError::new("uri", "a route needs `uri` or `uris`"));
    }
    if let Some(uri) = &r.uri {
        uri_pattern("uri", uri, errors);
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
    plugins(r.plugins.as_ref(), errors);
    unsupported(errors, "filter_func", r.filter_func.is_some());
    unsupported(errors, "script", r.script.is_some());
    unsupported(errors, "enable_websocket", r.enable_websocket == Some(true));
}

fn upstream(u: &Upstream, errors: &mut Vec<FieldError>) {
    if u.nodes.is_empty() {
        errors.push(FieldError::new("nodes", "must have at least one node"));
    }
    if let Err(errs) = u.nodes.resolve(u.scheme) {
        errors.extend(errs.into_iter().map(|e| e.within("nodes")));
    }
    if u.balancer == UpstreamType::Chash {
        match (&u.key, u.hash_on) {
            (None, HashOn::Consumer) => {}
            (None, _) => errors.push(FieldError::new("key", "is required when `type` is chash")),
            (Some(k), HashOn::Vars) if !is_var_name(k) => errors.push(FieldError::new(
                "key",
                format!("`{k}` is not a request variable name (such as remote_addr, uri, arg_id)"),
            )),
            (Some(k), HashOn::VarsCombinations) if !k.contains('$') => errors.push(
                FieldError::new("key", "must reference variables, as in `$host$uri`"),
            ),
            (Some(k), HashOn::Header | HashOn::Cookie) if k.is_empty() => {
                errors.push(FieldError::new("key", "must not be empty"))
            }
            _ => {}
        }
    }
    if u.retries.is_some_and(|r| !(0..=100).contains(&r)) {
        errors.push(FieldError::new("retries", "must be 0..100"));
    }
    if u.retry_timeout.is_some_and(|t| t < 0.0 || !t.is_finite()) {
        errors.push(FieldError::new(
            "retry_timeout",
            "must be a number of seconds >= 0",
        ));
    }
    if let Some(t) = &u.timeout {
        timeout("timeout", t, errors);
    }
    if let Some(pool) = &u.keepalive_pool {
        if pool.size < 0 {
            errors.push(FieldError::new("keepalive_pool.size", "must be >= 0"));
        }
        if pool.idle_timeout < 0.0 || !pool.idle_timeout.is_finite() {
            errors.push(FieldError::new(
                "keepalive_pool.idle_timeout",
                "must be >= 0",
            ));
        }
        if pool.requests < 1 {
            errors.push(FieldError::new("keepalive_pool.requests", "must be >= 1"));
        }
    }
    if u.pass_host == PassHost::Rewrite && u.upstream_host.as_deref().is_none_or(str::is_empty) {
        errors.push(FieldError::new(
            "upstream_host",
            "is required when `pass_host` is rewrite",
        ));
    }
    if u.scheme != Scheme::Http {
        errors.push(FieldError::new(
            "scheme",
            "only `http` upstreams are supported by this build",
        ));
    }
    unsupported(errors, "checks", u.checks.is_some());
    unsupported(errors, "discovery_type", u.discovery_type.is_some());
    unsupported(errors, "tls", u.tls.is_some());
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
fn host_pattern(path: &str, host: &str, errors: &mut Vec<FieldError>) {
    let name = host.strip_prefix("*.").unwrap_or(host);
    // A leading dot (`.a.com`, `*..a.com`) is no host either; the router refuses it.
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
        });
    if !valid {
        errors.push(FieldError::new(
            path,
            format!("`{host}` is not a host name (a leading `*.` is the only wildcard)"),
        ));
    }
}

fn remote_addr(path: &str, addr: &str, errors: &mut Vec<FieldError>) {
    if addr.parse::<IpAddr>().is_err() && addr.parse::<ipnet::IpNet>().is_err() {
        errors.push(FieldError::new(
            path,
            format!("`{addr}` is not an IP address or CIDR"),
        ));
    }
}

fn timeout(path: &str, t: &Timeout, errors: &mut Vec<FieldError>) {
    for (name, v) in [("connect", t.connect), ("send", t.send), ("read", t.read)] {
        if !(v > 0.0 && v.is_finite()) {
            errors.push(FieldError::new(
                format!("{path}.{name}"),
                "must be a number of seconds > 0",
            ));
        }
    }
}

fn plugins(plugins: Option<&Plugins>, errors: &mut Vec<FieldError>) {
    for name in plugins.into_iter().flat_map(|p| p.keys()) {
        errors.push(FieldError::new(
            format!("plugins.{name}"),
            format!("unknown plugin `{name}`: this build has no plugins yet"),
        ));
    }
}

fn unsupported(errors: &mut Vec<FieldError>, field: &str, present: bool) {
    if present {
        errors.push(FieldError::new(field, "is not supported by this build yet"));
    }
}

fn nested(errors: &mut Vec<FieldError>, prefix: &str, check: impl FnOnce(&mut Vec<FieldError>)) {
    let mut inner = Vec::new();
    check(&mut inner);
    errors.extend(inner.into_iter().map(|e| e.within(prefix)));
}

fn is_var_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

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
