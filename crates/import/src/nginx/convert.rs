//! From nginx's directive tree to a standalone document: each `server` × `location` becomes
//! one route (or more, for regex locations and `if` blocks), each `upstream` an upstream.
//! What has no faithful Pylon form is listed with its file and line, never dropped.
//!
//! The precedence mapping (see the crate README): an exact location is an exact route path and a
//! prefix location a `prefix*` path, so the router's most-specific-path rule is nginx's
//! longest-prefix rule. Regex locations beat every plain prefix but not a `^~` one or an exact
//! match, so each regex location is repeated, with its regex as a `uri` var, under every plain
//! prefix's path and under `/*`, with a priority above the prefix's own route and decreasing in
//! the order the regexes appear. An `if` block is a copy of its location's route with the
//! condition as vars and one more step of priority.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{json, Map, Value};

use super::parse::Directive;

/// The result of a conversion: the document and what it could not convert.
pub struct Conversion {
    /// The standalone document: `routes` and `upstreams`.
    pub document: Value,
    pub unconverted: Vec<Unconverted>,
}

/// A directive that has no Pylon form, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unconverted {
    /// `file:line`.
    pub location: String,
    pub directive: String,
    pub reason: String,
}

impl fmt::Display for Unconverted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.location, self.directive, self.reason)
    }
}

/// Directives that tune or log the nginx process itself, or that Pylon does on its own
/// (connection pooling, forwarding headers): nothing to convert, nothing lost.
const NODE_LEVEL: &[&str] = &[
    "user",
    "worker_processes",
    "worker_rlimit_nofile",
    "worker_connections",
    "multi_accept",
    "use",
    "pid",
    "events",
    "error_log",
    "access_log",
    "log_format",
    "sendfile",
    "tcp_nopush",
    "tcp_nodelay",
    "keepalive_timeout",
    "types",
    "default_type",
    "server_tokens",
    "listen",
    "keepalive",
    "proxy_http_version",
];

/// The nginx variables Pylon knows by the same name (besides `http_*`, `arg_*`, `cookie_*`).
const VARIABLES: &[&str] = &[
    "uri",
    "request_uri",
    "args",
    "query_string",
    "host",
    "request_method",
    "remote_addr",
    "remote_port",
    "server_addr",
    "server_port",
    "scheme",
    "server_protocol",
];

/// Converts the top-level directives of an nginx configuration (a whole `nginx.conf` with its
/// `http` block, or a file of `server` and `upstream` blocks as in `conf.d/`).
pub fn convert(directives: &[Directive]) -> Conversion {
    let mut converter = Converter::default();
    let http = flatten_http(directives, &mut converter);
    for d in &http {
        if d.name == "upstream" {
            converter.upstream(d);
        }
    }
    let servers: Vec<&Directive> = http
        .iter()
        .copied()
        .filter(|d| d.name == "server")
        .collect();
    let schemes: Vec<Option<&str>> = servers.iter().map(|s| listen_scheme(s)).collect();
    // Servers answering only plain or only TLS traffic need a scheme condition only when both
    // kinds exist: then the same name can mean two servers (`return 301 https://...` on 80).
    let mixed = schemes.contains(&Some("http")) && schemes.contains(&Some("https"));
    let defaults = Inherited::from_block(&http, &Inherited::default());
    for (index, server) in servers.iter().enumerate() {
        let scheme = if mixed { schemes[index] } else { None };
        converter.server(index + 1, server, scheme, &defaults);
    }
    for d in &http {
        if !matches!(
            d.name.as_str(),
            "upstream" | "server" | "proxy_set_header" | "add_header"
        ) {
            converter.unknown(d);
        }
    }
    converter.finish()
}

/// The `http` context's directives: those inside `http { }`, and top-level ones when the file
/// has no `http` block (an included `conf.d` file). Main-context tuning is skipped.
fn flatten_http<'a>(directives: &'a [Directive], converter: &mut Converter) -> Vec<&'a Directive> {
    let mut out = Vec::new();
    for d in directives {
        match (&d.name[..], &d.block) {
            ("http", Some(block)) => out.extend(block.iter()),
            (name, _) if NODE_LEVEL.contains(&name) => {}
            ("load_module" | "stream" | "mail" | "env" | "daemon" | "master_process", _) => {
                converter.unconverted(d, "not an HTTP proxy setting Pylon has")
            }
            _ => out.push(d),
        }
    }
    out
}

/// `http` or `https` when every `listen` of the server agrees; `None` when it has none or both.
fn listen_scheme(server: &Directive) -> Option<&'static str> {
    let listens: Vec<bool> = children(server)
        .iter()
        .filter(|d| d.name == "listen")
        .map(|d| d.args.iter().any(|a| a == "ssl" || a == "quic"))
        .collect();
    match (listens.contains(&true), listens.contains(&false)) {
        (true, false) => Some("https"),
        (false, true) => Some("http"),
        _ => None,
    }
}

fn children(d: &Directive) -> &[Directive] {
    d.block.as_deref().unwrap_or(&[])
}

/// `proxy_set_header` and `add_header` are inherited from the enclosing level only when a
/// level has none of its own, as nginx does.
#[derive(Clone, Default)]
struct Inherited<'a> {
    set_headers: Vec<&'a Directive>,
    add_headers: Vec<&'a Directive>,
}

impl<'a> Inherited<'a> {
    fn from_block(block: &[&'a Directive], parent: &Inherited<'a>) -> Self {
        let of = |name: &str, inherited: &Vec<&'a Directive>| {
            let own: Vec<&Directive> = block.iter().copied().filter(|d| d.name == name).collect();
            if own.is_empty() {
                inherited.clone()
            } else {
                own
            }
        };
        Inherited {
            set_headers: of("proxy_set_header", &parent.set_headers),
            add_headers: of("add_header", &parent.add_headers),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Match {
    Exact,
    Prefix,
    /// `^~`: a prefix that, when it is the longest, stops the regex search.
    StopPrefix,
    Regex {
        case_insensitive: bool,
    },
}

/// Where the request goes and what happens on the way, as a location's directives say.
#[derive(Clone, Default)]
struct Actions {
    /// `upstream_id` or an inline `upstream`.
    upstream: Option<(&'static str, Value)>,
    /// A `return` or redirecting `rewrite`: the plugin answering instead of an upstream.
    answer: Option<(&'static str, Value)>,
    proxy_rewrite: Map<String, Value>,
    request_headers: Map<String, Value>,
    response_headers: Map<String, Value>,
    pass_client_host: bool,
    websocket: bool,
}

#[derive(Default)]
struct Converter {
    upstreams: Vec<Value>,
    upstream_names: BTreeSet<String>,
    https_upstreams: BTreeSet<String>,
    routes: Vec<Value>,
    unconverted: Vec<Unconverted>,
}

impl Converter {
    fn finish(self) -> Conversion {
        let mut document = Map::new();
        let upstreams: Vec<Value> = self
            .upstreams
            .into_iter()
            .map(|mut u| {
                if self
                    .https_upstreams
                    .contains(u["id"].as_str().unwrap_or_default())
                {
                    u["scheme"] = json!("https");
                }
                u
            })
            .collect();
        if !self.routes.is_empty() {
            document.insert("routes".into(), Value::Array(self.routes));
        }
        if !upstreams.is_empty() {
            document.insert("upstreams".into(), Value::Array(upstreams));
        }
        Conversion {
            document: Value::Object(document),
            unconverted: self.unconverted,
        }
    }

    fn unconverted(&mut self, d: &Directive, reason: impl Into<String>) {
        self.unconverted.push(Unconverted {
            location: d.location(),
            directive: d.name.clone(),
            reason: reason.into(),
        });
    }

    fn unknown(&mut self, d: &Directive) {
        if !NODE_LEVEL.contains(&d.name.as_str()) {
            self.unconverted(d, "no Pylon equivalent is known to the importer");
        }
    }

    // === upstream ===

    fn upstream(&mut self, d: &Directive) {
        let [name] = d.args.as_slice() else {
            return self.unconverted(d, "expected one name");
        };
        let mut upstream = json!({"id": name, "name": name, "type": "roundrobin"});
        let mut nodes = Vec::new();
        for item in children(d) {
            match item.name.as_str() {
                "server" => nodes.extend(self.upstream_node(item)),
                "least_conn" => upstream["type"] = json!("least_conn"),
                "ip_hash" => {
                    upstream["type"] = json!("chash");
                    upstream["hash_on"] = json!("vars");
                    upstream["key"] = json!("remote_addr");
                }
                _ => self.unknown(item),
            }
        }
        if nodes.is_empty() {
            return self.unconverted(d, "no server that Pylon can send requests to");
        }
        upstream["nodes"] = Value::Array(nodes);
        self.upstreams.push(upstream);
        self.upstream_names.insert(name.clone());
    }

    /// `server host[:port] [weight=N] [backup] [down] ...` as a node, `None` when it is down
    /// or cannot be converted.
    fn upstream_node(&mut self, d: &Directive) -> Option<Value> {
        let Some((address, params)) = d.args.split_first() else {
            self.unconverted(d, "expected an address");
            return None;
        };
        if address.starts_with("unix:") {
            self.unconverted(d, "Pylon does not proxy to unix sockets");
            return None;
        }
        let Some((host, port)) = host_port(address, 80) else {
            self.unconverted(d, format!("cannot read the address {address:?}"));
            return None;
        };
        let mut node = json!({"host": host, "port": port, "weight": 1});
        let mut left = Vec::new();
        for param in params {
            match param.split_once('=') {
                Some(("weight", w)) => match w.parse::<u32>() {
                    Ok(w) => node["weight"] = json!(w),
                    Err(_) => left.push(param.as_str()),
                },
                None if param == "backup" => node["priority"] = json!(-1),
                None if param == "down" => return None,
                _ => left.push(param.as_str()),
            }
        }
        if !left.is_empty() {
            self.unconverted(
                d,
                format!(
                    "{} not converted (Pylon's passive health checks are set per upstream)",
                    left.join(" ")
                ),
            );
        }
        Some(node)
    }

    // === server ===

    fn server(
        &mut self,
        index: usize,
        server: &Directive,
        scheme: Option<&str>,
        defaults: &Inherited<'_>,
    ) {
        let block: Vec<&Directive> = children(server).iter().collect();
        let inherited = Inherited::from_block(&block, defaults);
        let mut hosts = Vec::new();
        let mut base_vars = Vec::new();
        if let Some(scheme) = scheme {
            base_vars.push(json!(["scheme", "==", scheme]));
        }
        let mut locations = Vec::new();
        let mut server_return = None;
        for d in &block {
            match d.name.as_str() {
                "server_name" => self.server_names(d, &mut hosts),
                "location" => locations.push(*d),
                "return" if server_return.is_none() => server_return = Some(*d),
                "rewrite" | "if" => self.unconverted(
                    d,
                    "server-level rewrites and conditions run before the location is chosen; only location-level ones are converted",
                ),
                "proxy_set_header" | "add_header" => {}
                // Files are served by locations, which are listed when they serve files.
                "root" | "index" => {}
                "ssl_certificate" | "ssl_certificate_key" => {
                    self.unconverted(d, "certificates are Pylon ssl resources, not converted")
                }
                _ => self.unknown(d),
            }
        }
        let route_base = |id: String, uri: &str, d: &Directive| {
            let mut route =
                json!({"id": id, "uri": uri, "desc": format!("nginx {}", d.location())});
            if !hosts.is_empty() {
                route["hosts"] = json!(hosts);
            }
            route
        };
        if let Some(ret) = server_return {
            // The server's `return` answers before any location is chosen.
            let mut actions = Actions::default();
            self.directive(ret, &mut actions, Match::Prefix, "/");
            let route = route_base(format!("server{index}"), "/*", ret);
            if let Some(route) = finish_route(route, actions, base_vars) {
                self.routes.push(route);
            }
            for location in locations {
                self.unconverted(
                    location,
                    format!(
                        "never reached: the server's return at {} answers first",
                        ret.location()
                    ),
                );
            }
            return;
        }

        struct Parsed<'d> {
            /// The location's 1-based position in the server, for its route ids.
            number: usize,
            kind: Match,
            path: String,
            directive: &'d Directive,
        }
        let mut parsed = Vec::new();
        for (n, location) in locations.into_iter().enumerate() {
            match parse_location(location) {
                Ok((kind, path)) => parsed.push(Parsed {
                    number: n + 1,
                    kind,
                    path,
                    directive: location,
                }),
                Err(reason) => self.unconverted(location, reason),
            }
        }
        let regexes = parsed
            .iter()
            .filter(|p| matches!(p.kind, Match::Regex { .. }))
            .count() as i64;
        let max_ifs = parsed
            .iter()
            .map(|p| {
                children(p.directive)
                    .iter()
                    .filter(|d| d.name == "if")
                    .count()
            })
            .max()
            .unwrap_or(0) as i64;
        // One step per `if` above each location's own route, so ifs never outrank a regex.
        let stride = max_ifs + 1;
        // Regexes repeat under every plain prefix and under `/*`.
        let mut regex_homes: Vec<String> = parsed
            .iter()
            .filter(|p| p.kind == Match::Prefix)
            .map(|p| format!("{}*", p.path))
            .collect();
        if !regex_homes.iter().any(|h| h == "/*") {
            regex_homes.push("/*".into());
        }

        let mut regex_index = 0;
        for location in &parsed {
            let id = format!("server{index}-location{}", location.number);
            let mut actions = Actions::default();
            self.inherit(
                &inherited,
                location.directive,
                &mut actions,
                location.kind,
                &location.path,
            );
            let mut ifs = Vec::new();
            for d in children(location.directive) {
                match d.name.as_str() {
                    "if" => ifs.push(d),
                    "proxy_set_header" | "add_header" => {}
                    _ => self.directive(d, &mut actions, location.kind, &location.path),
                }
            }
            let mut vars = base_vars.clone();
            let (uris, priority) = match location.kind {
                Match::Exact => (vec![location.path.clone()], 0),
                Match::Prefix | Match::StopPrefix => (vec![format!("{}*", location.path)], 0),
                Match::Regex { case_insensitive } => {
                    let op = if case_insensitive { "~*" } else { "~~" };
                    vars.push(json!(["uri", op, location.path]));
                    regex_index += 1;
                    (regex_homes.clone(), stride * (regexes - regex_index + 1))
                }
            };
            // The `if` variants, each a copy of the location with the condition and the `if`'s
            // directives; the first whose condition holds answers, as nginx's first matching
            // `if` with a `return` does.
            let mut variants = Vec::new();
            for (i, d) in ifs.iter().enumerate() {
                let Some(mut condition) = self.condition(d) else {
                    continue;
                };
                let mut variant = actions.clone();
                for inner in children(d) {
                    self.directive(inner, &mut variant, location.kind, &location.path);
                }
                let mut if_vars = vars.clone();
                if_vars.append(&mut condition);
                variants.push((i, *d, if_vars, variant));
            }
            if !actions.answers_or_proxies() {
                self.unconverted(
                    location.directive,
                    "serves files or nothing (no proxy_pass or return); Pylon only proxies",
                );
            }
            for (k, uri) in uris.iter().enumerate() {
                let id = if uris.len() > 1 {
                    format!("{id}-{}", k + 1)
                } else {
                    id.clone()
                };
                for (i, d, if_vars, variant) in &variants {
                    let mut route = route_base(format!("{id}-if{}", i + 1), uri, d);
                    route["priority"] = json!(priority + (ifs.len() - i) as i64);
                    if let Some(route) = finish_route(route, variant.clone(), if_vars.clone()) {
                        self.routes.push(route);
                    }
                }
                let mut route = route_base(id, uri, location.directive);
                if priority != 0 {
                    route["priority"] = json!(priority);
                }
                if let Some(route) = finish_route(route, actions.clone(), vars.clone()) {
                    self.routes.push(route);
                }
            }
        }
    }

    fn server_names(&mut self, d: &Directive, hosts: &mut Vec<String>) {
        for name in &d.args {
            let name = name.to_ascii_lowercase();
            if name == "_" || name.is_empty() || name == "localhost" && d.args.len() == 1 {
                continue;
            }
            if name.starts_with('~') {
                self.unconverted(
                    d,
                    format!("the regex server name {name:?} has no Pylon form"),
                );
            } else if let Some(domain) = name.strip_prefix('.') {
                hosts.push(domain.to_string());
                hosts.push(format!("*.{domain}"));
            } else if name.ends_with(".*") || name[1..].contains('*') {
                self.unconverted(
                    d,
                    format!("the wildcard {name:?}: Pylon matches only leading wildcards"),
                );
            } else {
                hosts.push(name);
            }
        }
    }

    /// The `proxy_set_header` and `add_header` a location has, or inherits when it has none.
    fn inherit(
        &mut self,
        inherited: &Inherited<'_>,
        location: &Directive,
        actions: &mut Actions,
        kind: Match,
        path: &str,
    ) {
        let block: Vec<&Directive> = children(location).iter().collect();
        let own = Inherited::from_block(&block, inherited);
        for d in own.set_headers.iter().chain(&own.add_headers) {
            self.directive(d, actions, kind, path);
        }
    }

    // === location directives ===

    fn directive(&mut self, d: &Directive, actions: &mut Actions, kind: Match, path: &str) {
        let result = match d.name.as_str() {
            "proxy_pass" => self.proxy_pass(d, actions, kind, path),
            "proxy_set_header" => proxy_set_header(d, actions),
            "add_header" => add_header(d, actions),
            "return" => ret(d, actions),
            "rewrite" => rewrite(d, actions),
            "location" => Err("nested locations are not converted".into()),
            // Where files are: the location is listed as serving files when it does not proxy.
            "root" | "alias" | "index" => Ok(()),
            name if NODE_LEVEL.contains(&name) => Ok(()),
            _ => Err("no Pylon equivalent is known to the importer".into()),
        };
        if let Err(reason) = result {
            self.unconverted(d, reason);
        }
    }

    fn proxy_pass(
        &mut self,
        d: &Directive,
        actions: &mut Actions,
        kind: Match,
        path: &str,
    ) -> Result<(), String> {
        let [target] = d.args.as_slice() else {
            return Err("expected one URL".into());
        };
        let (scheme, rest) = target
            .split_once("://")
            .filter(|(s, _)| *s == "http" || *s == "https")
            .ok_or_else(|| format!("{target:?}: only http:// and https:// URLs are converted"))?;
        if rest.contains('$') {
            return Err(
                "a URL with variables is chosen per request; Pylon's upstreams are fixed".into(),
            );
        }
        let (authority, uri) = match rest.find('/') {
            Some(slash) => (&rest[..slash], Some(&rest[slash..])),
            None => (rest, None),
        };
        if self.upstream_names.contains(authority) {
            if scheme == "https" {
                self.https_upstreams.insert(authority.to_string());
            }
            actions.upstream = Some(("upstream_id", json!(authority)));
        } else {
            let default_port = if scheme == "https" { 443 } else { 80 };
            let (host, port) = host_port(authority, default_port)
                .ok_or_else(|| format!("cannot read the address {authority:?}"))?;
            // nginx sends the proxied host's name unless `proxy_set_header Host` says otherwise.
            let mut upstream = json!({
                "type": "roundrobin",
                "scheme": scheme,
                "pass_host": "node",
                "nodes": [{"host": host, "port": port, "weight": 1}],
            });
            if actions.pass_client_host {
                upstream["pass_host"] = json!("pass");
            }
            actions.upstream = Some(("upstream", upstream));
        }
        // With a URI, nginx replaces the part of the path the location matched with it.
        if let Some(uri) = uri {
            match kind {
                Match::Exact => {
                    actions.proxy_rewrite.insert("uri".into(), json!(uri));
                }
                Match::Prefix | Match::StopPrefix => {
                    if uri != path {
                        let pattern = format!("^{}(.*)", regex_escape(path));
                        actions
                            .proxy_rewrite
                            .insert("regex_uri".into(), json!([pattern, format!("{uri}$1")]));
                    }
                }
                Match::Regex { .. } => {
                    return Err("nginx refuses a URI in proxy_pass inside a regex location".into())
                }
            }
        }
        Ok(())
    }

    /// An `if`'s condition as vars; `None` (and listed) when it has no Pylon form.
    fn condition(&mut self, d: &Directive) -> Option<Vec<Value>> {
        match parse_condition(&d.args) {
            Ok(vars) => Some(vars),
            Err(reason) => {
                self.unconverted(d, reason);
                None
            }
        }
    }
}

impl Actions {
    fn answers_or_proxies(&self) -> bool {
        self.answer.is_some() || self.upstream.is_some()
    }
}

/// `route` with vars, upstream and plugins; `None` when the actions neither proxy nor answer
/// (the location serves files, which Pylon does not).
fn finish_route(mut route: Value, actions: Actions, vars: Vec<Value>) -> Option<Value> {
    if !vars.is_empty() {
        route["vars"] = Value::Array(vars);
    }
    let mut plugins = Map::new();
    match (actions.answer, actions.upstream) {
        (Some((name, config)), _) => {
            plugins.insert(name.into(), config);
        }
        (None, Some((field, upstream))) => route[field] = upstream,
        (None, None) => return None,
    }
    let mut rewrite = actions.proxy_rewrite;
    if !actions.request_headers.is_empty() {
        rewrite.insert("headers".into(), json!({"set": actions.request_headers}));
    }
    // An answered request goes nowhere to be rewritten.
    if !rewrite.is_empty() && !plugins.contains_key("mocking") && !plugins.contains_key("redirect")
    {
        plugins.insert("proxy-rewrite".into(), Value::Object(rewrite));
    }
    if !actions.response_headers.is_empty() {
        plugins.insert(
            "response-rewrite".into(),
            json!({"headers": {"set": actions.response_headers}}),
        );
    }
    if !plugins.is_empty() {
        route["plugins"] = Value::Object(plugins);
    }
    if actions.websocket {
        route["enable_websocket"] = json!(true);
    }
    Some(route)
}

fn proxy_set_header(d: &Directive, actions: &mut Actions) -> Result<(), String> {
    let [name, value] = d.args.as_slice() else {
        return Err("expected a header name and a value".into());
    };
    let lower = name.to_ascii_lowercase();
    match (lower.as_str(), value.as_str()) {
        ("host", "$host" | "$http_host") => {
            actions.pass_client_host = true;
            if let Some(("upstream", upstream)) = &mut actions.upstream {
                upstream["pass_host"] = json!("pass");
            }
        }
        ("host", "$proxy_host") => {}
        ("host", host) if !host.contains('$') => {
            actions.proxy_rewrite.insert("host".into(), json!(host));
        }
        ("host", _) => return Err("a Host made of variables has no Pylon form".into()),
        // Pylon sends these itself, with the same values.
        ("x-forwarded-for", "$proxy_add_x_forwarded_for" | "$remote_addr")
        | ("x-real-ip", "$remote_addr")
        | ("x-forwarded-proto", "$scheme")
        | ("x-forwarded-host", "$host") => {}
        ("upgrade", "$http_upgrade")
        | ("connection", "upgrade" | "Upgrade" | "$connection_upgrade") => actions.websocket = true,
        (_, "") => {
            actions.request_headers.insert(name.clone(), json!(""));
        }
        _ => {
            let value = template(value)?;
            actions.request_headers.insert(name.clone(), json!(value));
        }
    }
    Ok(())
}

fn add_header(d: &Directive, actions: &mut Actions) -> Result<(), String> {
    let (name, value) = match d.args.as_slice() {
        [name, value] => (name, value),
        [name, value, always] if always == "always" => (name, value),
        _ => return Err("expected a header name, a value and optionally `always`".into()),
    };
    let value = template(value)?;
    actions.response_headers.insert(name.clone(), json!(value));
    Ok(())
}

fn ret(d: &Directive, actions: &mut Actions) -> Result<(), String> {
    if actions.answer.is_some() {
        return Ok(());
    }
    let (code, rest) = match d.args.as_slice() {
        [url]
            if url.starts_with("http://")
                || url.starts_with("https://")
                || url.starts_with('$') =>
        {
            (302, Some(url))
        }
        [code] => (parse_code(code)?, None),
        [code, rest] => (parse_code(code)?, Some(rest)),
        _ => return Err("expected a status and optionally a text or URL".into()),
    };
    actions.answer = Some(match (code, rest) {
        (301 | 302 | 303 | 307 | 308, Some(url)) => {
            // The commonest redirect of all is the same URL over HTTPS.
            if matches!(
                url.as_str(),
                "https://$host$request_uri" | "https://$http_host$request_uri"
            ) {
                (
                    "redirect",
                    json!({"uri": "https://$host$request_uri", "ret_code": code}),
                )
            } else {
                ("redirect", json!({"uri": template(url)?, "ret_code": code}))
            }
        }
        (_, text) => {
            let text = text.map(String::as_str).unwrap_or_default();
            if text.contains('$') {
                return Err("a response text with variables has no Pylon form".into());
            }
            let mocking = json!({
                "response_status": code,
                "content_type": "text/plain",
                "with_mock_header": false,
                "response_example": text,
            });
            ("mocking", mocking)
        }
    });
    Ok(())
}

fn parse_code(code: &str) -> Result<u16, String> {
    code.parse::<u16>()
        .ok()
        .filter(|c| (100..=999).contains(c))
        .ok_or_else(|| format!("{code:?} is not a status code"))
}

fn rewrite(d: &Directive, actions: &mut Actions) -> Result<(), String> {
    let (regex, replacement, flag) = match d.args.as_slice() {
        [r, to] => (r, to, None),
        [r, to, flag] => (r, to, Some(flag.as_str())),
        _ => return Err("expected a regex, a replacement and optionally a flag".into()),
    };
    let redirect = match flag {
        None | Some("last" | "break") => {
            replacement.starts_with("http://") || replacement.starts_with("https://")
        }
        Some("redirect" | "permanent") => true,
        Some(other) => return Err(format!("unknown flag {other:?}")),
    };
    let replacement = template(replacement)?;
    if redirect {
        let code = if flag == Some("permanent") { 301 } else { 302 };
        if actions.answer.is_none() {
            actions.answer = Some((
                "redirect",
                json!({"regex_uri": [regex, replacement], "ret_code": code}),
            ));
        }
        return Ok(());
    }
    if flag != Some("break") {
        return Err(
            "a rewrite that searches the locations again (last, or no flag) is not converted; `break` is"
                .into(),
        );
    }
    if actions.proxy_rewrite.contains_key("regex_uri") || actions.proxy_rewrite.contains_key("uri")
    {
        return Err("only one path rewrite per location is converted".into());
    }
    actions
        .proxy_rewrite
        .insert("regex_uri".into(), json!([regex, replacement]));
    Ok(())
}

/// nginx's `$name` and `${name}` as Pylon's `$name` templates.
fn template(value: &str) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let (name, after) = match rest.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => return Err(format!("unclosed ${{ in {value:?}")),
            },
            None => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            }
        };
        if name.chars().all(|c| c.is_ascii_digit()) && !name.is_empty() {
            // A regex capture, `$1`: Pylon's regex_uri uses the same.
        } else if !known_variable(name) {
            return Err(format!(
                "the nginx variable ${name} has no Pylon equivalent"
            ));
        }
        // Braces keep `${name}rest` apart; a plain name needs them only before a name character.
        if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            out.push_str(&format!("${{{name}}}"));
        } else {
            out.push('$');
            out.push_str(name);
        }
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

fn known_variable(name: &str) -> bool {
    VARIABLES.contains(&name)
        || ["http_", "arg_", "cookie_"]
            .iter()
            .any(|p| name.len() > p.len() && name.starts_with(p))
}

/// `location [= | ^~ | ~ | ~*] path`, also written `location =/x`.
fn parse_location(d: &Directive) -> Result<(Match, String), String> {
    if d.block.is_none() {
        return Err("a location needs a block".into());
    }
    let (modifier, path) = match d.args.as_slice() {
        [m, path] => (m.as_str(), path.clone()),
        [one] => match one.strip_prefix('=') {
            Some(path) if !path.is_empty() => ("=", path.to_string()),
            _ => ("", one.clone()),
        },
        _ => return Err("expected an optional modifier and a path".into()),
    };
    let kind = match modifier {
        "=" => Match::Exact,
        "" => Match::Prefix,
        "^~" => Match::StopPrefix,
        "~" => Match::Regex {
            case_insensitive: false,
        },
        "~*" => Match::Regex {
            case_insensitive: true,
        },
        other => return Err(format!("unknown modifier {other:?}")),
    };
    if path.starts_with('@') {
        return Err(
            "named locations are reached only by internal redirects, which Pylon does not make"
                .into(),
        );
    }
    if !matches!(kind, Match::Regex { .. }) {
        if !path.starts_with('/') {
            return Err(format!("the path {path:?} does not start with /"));
        }
        // The router reads `:name` segments as parameters and `*` as the prefix mark.
        if path.contains("/:") || path.contains('*') {
            return Err(format!(
                "the path {path:?} has characters Pylon's router reads as patterns"
            ));
        }
    } else if let Err(e) = pylon_model::expr::Expr::parse(&json!([["uri", "~~", path]])) {
        return Err(format!(
            "the regex is not one Pylon's regex engine accepts: {}",
            e.message
        ));
    }
    Ok((kind, path))
}

/// `($var)`, `($var = value)`, `($var != value)`, `($var ~ re)`, `($var ~* re)`, `($var !~ re)`.
fn parse_condition(args: &[String]) -> Result<Vec<Value>, String> {
    let mut words: Vec<String> = args.to_vec();
    if let Some(first) = words.first_mut() {
        *first = first.strip_prefix('(').unwrap_or(first).to_string();
    }
    if let Some(last) = words.last_mut() {
        *last = last.strip_suffix(')').unwrap_or(last).to_string();
    }
    words.retain(|w| !w.is_empty());
    let unsupported = || {
        format!(
            "the condition ({}) has no Pylon form",
            args.join(" ").trim_matches(['(', ')'])
        )
    };
    let var = words
        .first()
        .and_then(|w| w.strip_prefix('$'))
        .filter(|v| known_variable(v))
        .ok_or_else(unsupported)?;
    let vars = match &words[1..] {
        // nginx: true unless empty or "0".
        [] => vec![json!([var, "~~", "."]), json!([var, "!", "==", "0"])],
        [op, value] => {
            if value.contains('$') {
                return Err(unsupported());
            }
            let test = match op.as_str() {
                "=" => json!([var, "==", value]),
                "!=" => json!([var, "!", "==", value]),
                "~" => json!([var, "~~", value]),
                "~*" => json!([var, "~*", value]),
                "!~" => json!([var, "!", "~~", value]),
                "!~*" => json!([var, "!", "~*", value]),
                _ => return Err(unsupported()),
            };
            pylon_model::expr::Expr::parse(&json!([test.clone()])).map_err(|e| e.message)?;
            vec![test]
        }
        _ => return Err(unsupported()),
    };
    Ok(vars)
}

/// `host[:port]`, `[v6]:port`; the port defaults to `default_port`.
fn host_port(address: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(v6) = address.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if rest.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match address.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None if !address.is_empty() => Some((address.to_string(), default_port)),
        None => None,
    }
}

fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
