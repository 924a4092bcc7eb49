//! `proxy-rewrite`: changes what the upstream gets: the target (`uri`, or `regex_uri` on the
//! client's path), the `Host`, the method and headers.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, RequestCtx, Step, Template};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::header_ops::{HeaderOps, Scalar};
use crate::uri_rewrite::{append_args, encode_target, escape_controls, RegexUri};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "proxy-rewrite",
    priority: 1008,
    schema: schema_of::<ProxyRewriteConfig>,
    build,
    credential: None,
    metadata: None,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProxyRewriteConfig {
    /// The upstream's new target, path and optionally a query, with `$var`s (`/v2$uri`). The
    /// client's query string is appended to it.
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^/"))]
    uri: Option<String>,
    /// Pairs of a regular expression and its replacement (`$1`, `${1}` name groups): the
    /// first pattern that matches the client's path replaces its first match. Ignored when
    /// `uri` is set.
    #[schemars(length(min = 2))]
    regex_uri: Option<Vec<String>>,
    /// The method the upstream gets.
    method: Option<Method>,
    /// The `Host` the upstream gets: a name or an address, with an optional port.
    #[schemars(regex(pattern = r"^[0-9a-zA-Z-.]+(:\d{1,5})?$"))]
    host: Option<String>,
    /// Headers for the upstream: `add`, `set` and `remove`, or a plain object of headers to
    /// set. Values may hold `$var`s and the `regex_uri` groups (`$1`).
    headers: Option<RequestHeaders>,
    /// Start from the client's target as it came, query included, and send the result
    /// without encoding it. Unsafe: what the client sent reaches the upstream as it is.
    #[serde(default)]
    use_real_request_uri_unsafe: bool,
    /// Older APISIX versions' upstream scheme: refused, the upstream's `scheme` says it.
    #[schemars(skip)]
    scheme: Option<Value>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
enum Method {
    Get,
    Post,
    Put,
    Head,
    Delete,
    Options,
    Mkcol,
    Copy,
    Move,
    Propfind,
    Lock,
    Unlock,
    Patch,
    Trace,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Head => "HEAD",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Mkcol => "MKCOL",
            Method::Copy => "COPY",
            Method::Move => "MOVE",
            Method::Propfind => "PROPFIND",
            Method::Lock => "LOCK",
            Method::Unlock => "UNLOCK",
            Method::Patch => "PATCH",
            Method::Trace => "TRACE",
        }
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum RequestHeaders {
    Operations(HeaderOperations),
    /// APISIX's older form: every header set to its value.
    Set(BTreeMap<String, Scalar>),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HeaderOperations {
    /// Headers added to the client's of the same name; an array adds one header per value.
    add: Option<BTreeMap<String, Values>>,
    /// Headers replacing the client's of the same name; an array sets several.
    set: Option<BTreeMap<String, Values>>,
    /// Headers removed.
    remove: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum Values {
    One(Scalar),
    Many(Vec<Scalar>),
}

impl Values {
    fn texts(&self) -> Vec<Cow<'_, str>> {
        match self {
            Values::One(value) => vec![value.text()],
            Values::Many(values) => values.iter().map(Scalar::text).collect(),
        }
    }
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: ProxyRewriteConfig = parse(config)?;
    if config.scheme.is_some() {
        return Err(FieldError::new(
            "scheme",
            "not supported: the upstream's `scheme` says how it is reached",
        ));
    }
    if config.uri.is_none()
        && config.regex_uri.is_none()
        && config.method.is_none()
        && config.host.is_none()
        && config.headers.is_none()
        && !config.use_real_request_uri_unsafe
    {
        return Err(FieldError::new(
            "",
            "expect object to have at least 1 properties",
        ));
    }
    if let Some(uri) = &config.uri {
        if !uri.starts_with('/') || uri.len() > 4096 {
            return Err(FieldError::new(
                "uri",
                "must start with `/` and be at most 4096 bytes",
            ));
        }
    }
    if let Some(host) = &config.host {
        check_host(host)?;
    }
    Ok(Arc::new(ProxyRewrite {
        uri: config.uri.as_deref().map(Template::parse),
        regex_uri: config
            .regex_uri
            .as_deref()
            .map(regex_pairs)
            .transpose()?
            .unwrap_or_default(),
        method: config.method,
        host: config.host,
        headers: config
            .headers
            .as_ref()
            .map(header_ops)
            .transpose()?
            .unwrap_or_default(),
        raw_target: config.use_real_request_uri_unsafe,
    }))
}

/// `host` is a name or address, with an optional port of at most 5 digits.
fn check_host(host: &str) -> Result<(), FieldError> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let port_ok =
        port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    if name_ok && port_ok {
        Ok(())
    } else {
        Err(FieldError::new(
            "host",
            "must be a host name or address, with an optional port",
        ))
    }
}

fn regex_pairs(items: &[String]) -> Result<Vec<RegexUri>, FieldError> {
    if items.len() < 2 || items.len() % 2 == 1 {
        return Err(FieldError::new(
            "regex_uri",
            "The length of regex_uri should be an even number",
        ));
    }
    items
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            RegexUri::new(&pair[0], &pair[1]).map_err(|e| {
                FieldError::new(
                    format!("regex_uri.{}", 2 * i),
                    format!("invalid regex_uri({}, {}): {e}", pair[0], pair[1]),
                )
            })
        })
        .collect()
}

fn header_ops(headers: &RequestHeaders) -> Result<HeaderOps, FieldError> {
    let mut ops = HeaderOps::default();
    match headers {
        RequestHeaders::Set(set) => {
            for (name, value) in set {
                ops.set(&format!("headers.{name}"), name, &[value.text()])?;
            }
        }
        RequestHeaders::Operations(HeaderOperations { add, set, remove }) => {
            for (name, values) in add.iter().flatten() {
                for (i, value) in values.texts().iter().enumerate() {
                    let path = match values {
                        Values::One(_) => format!("headers.add.{name}"),
                        Values::Many(_) => format!("headers.add.{name}.{i}"),
                    };
                    ops.add(&path, name, value)?;
                }
            }
            for (name, values) in set.iter().flatten() {
                ops.set(&format!("headers.set.{name}"), name, &values.texts())?;
            }
            for (i, name) in remove.iter().flatten().enumerate() {
                ops.remove(&format!("headers.remove.{i}"), name)?;
            }
        }
    }
    if ops.is_empty() {
        return Err(FieldError::new(
            "headers",
            "expect object to have at least 1 properties",
        ));
    }
    Ok(ops)
}

struct ProxyRewrite {
    uri: Option<Template>,
    regex_uri: Vec<RegexUri>,
    method: Option<Method>,
    host: Option<String>,
    headers: HeaderOps,
    raw_target: bool,
}

impl Plugin for ProxyRewrite {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let (target, groups) = self.target(ctx);
        if let Some(target) = target {
            ctx.edits.uri = Some(target);
        }
        if let Some(host) = &self.host {
            ctx.edits.host = Some(host.clone());
        }
        if let Some(method) = self.method {
            ctx.edits.method = Some(method.as_str().to_owned());
        }
        if !self.headers.is_empty() {
            let vars = Vars {
                request: &*ctx,
                groups: &groups,
                escape_separator: false,
            };
            let rendered = self.headers.render(&vars);
            rendered.apply(&mut ctx.edits.headers);
        }
        Step::Continue
    }
}

impl ProxyRewrite {
    /// The upstream's new target (`None` when this configuration keeps the client's), and the
    /// groups of the `regex_uri` pattern that matched.
    fn target(&self, ctx: &RequestCtx<'_>) -> (Option<String>, Vec<String>) {
        let base = match self.raw_target {
            true => ctx.var("request_uri"),
            false => ctx.var("uri"),
        };
        let base = base.unwrap_or(Cow::Borrowed("/"));
        let mut groups = Vec::new();
        let rewritten = if let Some(uri) = &self.uri {
            let vars = Vars {
                request: ctx,
                groups: &[],
                escape_separator: true,
            };
            let rendered = uri.render(&vars).into_owned();
            if self.raw_target {
                // The client's query string, which `$var`s in `uri` do not carry.
                match base.split_once('?') {
                    Some((_, query)) => append_args(rendered, query),
                    None => rendered,
                }
            } else {
                rendered
            }
        } else if let Some(done) = self.regex_uri.iter().find_map(|r| r.substitute(&base)) {
            groups = done.groups;
            done.target
        } else if self.raw_target {
            base.into_owned()
        } else {
            return (None, groups);
        };
        if self.raw_target {
            return (Some(escape_controls(&rewritten)), groups);
        }
        let target = match rewritten.split_once('?') {
            Some((path, query)) => encode_target(path, Some(query)),
            None => encode_target(&rewritten, None),
        };
        let target = match ctx.var("args") {
            Some(args) => append_args(target, &escape_controls(&args)),
            None => target,
        };
        (Some(target), groups)
    }
}

/// The variables templates see: the request's, the `regex_uri` groups by number, and, for
/// `uri`, values whose `?` is escaped so that only the template's own `?` starts a query.
struct Vars<'v, V> {
    request: &'v V,
    groups: &'v [String],
    escape_separator: bool,
}

impl<V: RequestView> RequestView for Vars<'_, V> {
    fn path(&self) -> &str {
        self.request.path()
    }

    fn host(&self) -> Option<&str> {
        self.request.host()
    }

    fn method(&self) -> &str {
        self.request.method()
    }

    fn remote_addr(&self) -> IpAddr {
        self.request.remote_addr()
    }

    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        if name.bytes().all(|b| b.is_ascii_digit()) {
            return name
                .parse::<usize>()
                .ok()
                .and_then(|i| self.groups.get(i))
                .map(|g| Cow::Borrowed(g.as_str()));
        }
        let value = self.request.var(name)?;
        if self.escape_separator && value.contains('?') {
            return Some(Cow::Owned(value.replace('?', "%3F")));
        }
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{self, build, TestRequest};

    fn rewrite(config: Value, request: &TestRequest) -> pylon_plugin::RequestEdits {
        let plugin = build(&DESCRIPTOR, config).unwrap();
        let mut ctx = RequestCtx::new(request, "r1", None);
        assert!(matches!(plugin.rewrite(&mut ctx), Step::Continue));
        ctx.edits
    }

    fn refused(config: Value) -> FieldError {
        testing::refusal(&DESCRIPTOR, config)
    }

    #[test]
    fn uri_is_a_template_and_the_query_string_is_kept() {
        let request = TestRequest::get("/old/x?a=1&b=2");
        let edits = rewrite(json!({"uri": "/new$uri"}), &request);
        assert_eq!(edits.uri.as_deref(), Some("/new/old/x?a=1&b=2"));
        let edits = rewrite(json!({"uri": "/new?from=$arg_a"}), &request);
        assert_eq!(edits.uri.as_deref(), Some("/new?from=1&a=1&b=2"));
        let plain = TestRequest::get("/p");
        let edits = rewrite(json!({"uri": "/q/$arg_none"}), &plain);
        assert_eq!(edits.uri.as_deref(), Some("/q/"));
    }

    #[test]
    fn variables_cannot_add_a_query_or_break_the_request_line() {
        let request = TestRequest::get("/p?v=a%3Fb%20c%0D%0A");
        let edits = rewrite(json!({"uri": "/x/$arg_v"}), &request);
        assert_eq!(
            edits.uri.as_deref(),
            Some("/x/a%3Fb%20c%0D%0A?v=a%3Fb%20c%0D%0A")
        );
    }

    #[test]
    fn the_first_matching_regex_uri_rewrites_and_lends_its_groups_to_headers() {
        let config = json!({
            "regex_uri": ["^/no/(.*)", "/never/$1", "^/api/(\\w+)/(.*)", "/$2/$1"],
            "headers": {"set": {"X-Svc": "$1", "X-Path": "$uri"}}
        });
        let request = TestRequest::get("/api/users/7?x=1");
        let edits = rewrite(config.clone(), &request);
        assert_eq!(edits.uri.as_deref(), Some("/7/users?x=1"));
        assert_eq!(edits.headers.get("x-svc"), Some(Some("users")));
        assert_eq!(edits.headers.get("x-path"), Some(Some("/api/users/7")));
        let unmatched = rewrite(config, &TestRequest::get("/other"));
        assert_eq!(unmatched.uri, None);
        assert_eq!(unmatched.headers.get("x-svc"), Some(Some("")));
    }

    #[test]
    fn host_method_and_header_operations() {
        let request = TestRequest::get("/").header("X-Old", "1");
        let edits = rewrite(
            json!({
                "host": "backend.local:8080",
                "method": "POST",
                "headers": {
                    "add": {"X-Multi": ["a", 2]},
                    "set": {"X-Client": "$remote_addr"},
                    "remove": ["X-Old"]
                }
            }),
            &request,
        );
        assert_eq!(edits.uri, None);
        assert_eq!(edits.host.as_deref(), Some("backend.local:8080"));
        assert_eq!(edits.method.as_deref(), Some("POST"));
        assert_eq!(
            edits.headers.added().collect::<Vec<_>>(),
            [
                ("X-Multi", "a"),
                ("X-Multi", "2"),
                ("X-Client", "192.0.2.7")
            ]
        );
        assert_eq!(edits.headers.get("x-old"), Some(None));
    }

    #[test]
    fn the_older_plain_headers_object_sets() {
        let request = TestRequest::get("/").header("X-A", "client");
        let edits = rewrite(json!({"headers": {"X-A": "$host", "X-N": 5}}), &request);
        assert!(edits.headers.replaces("X-A"));
        assert_eq!(edits.headers.get("x-a"), Some(Some("example.com")));
        assert_eq!(edits.headers.get("x-n"), Some(Some("5")));
    }

    #[test]
    fn the_raw_target_is_rewritten_as_it_came() {
        let request = TestRequest::get("/a%2Fb?q=1");
        let edits = rewrite(
            json!({"use_real_request_uri_unsafe": true, "regex_uri": ["^/a", "/z"]}),
            &request,
        );
        assert_eq!(edits.uri.as_deref(), Some("/z%2Fb?q=1"));
        let edits = rewrite(
            json!({"use_real_request_uri_unsafe": true, "uri": "/n?x=2"}),
            &request,
        );
        assert_eq!(edits.uri.as_deref(), Some("/n?x=2&q=1"));
    }

    #[test]
    fn bad_configurations_are_refused_with_their_path() {
        assert_eq!(refused(json!({})).path, "");
        assert_eq!(refused(json!({"uri": "relative"})).path, "uri");
        assert_eq!(refused(json!({"host": "a b"})).path, "host");
        assert_eq!(refused(json!({"host": "a:123456"})).path, "host");
        assert_eq!(refused(json!({"method": "FETCH"})).path, "method");
        assert_eq!(refused(json!({"scheme": "https"})).path, "scheme");
        assert_eq!(
            refused(json!({"regex_uri": ["^/", "/", "x"]})).path,
            "regex_uri"
        );
        let e = refused(json!({"regex_uri": ["^/", "/", "(", "/"]}));
        assert_eq!(e.path, "regex_uri.2");
        assert!(e.message.starts_with("invalid regex_uri((, /): "));
        let e = refused(json!({"headers": {"set": {"X-A": "1", "X B": "2"}}}));
        assert_eq!(e.path, "headers.set.X B");
        let e = refused(json!({"headers": {"add": {"X-A": ["ok", "bad\r\n"]}}}));
        assert_eq!(e.path, "headers.add.X-A.1");
        assert_eq!(refused(json!({"headers": {"X-A": true}})).path, "headers");
        assert_eq!(refused(json!({"bogus": 1})).path, "bogus");
    }
}
