//! `cors`: answers CORS preflight requests itself and adds the CORS headers to every
//! response of the route.
//!
//! The headers are decided in `rewrite`, from the request's `Origin`, and go into the
//! response edits, so that they reach the upstream's response, the gateway's own errors and
//! the replies of the plugins that run after this one alike.
//!
//! The plugin's metadata (`plugin_metadata/cors`) names origin lists that every route's
//! `allow_origins_by_metadata` can refer to, so that one list serves many routes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step, Text};
use pylon_router::RequestView;
use regex::{Regex, RegexSet};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor, Metadata, MetadataSpec};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "cors",
    priority: 4000,
    schema: schema_of::<CorsConfig>,
    build,
    credential: None,
    metadata: Some(MetadataSpec {
        schema: schema_of::<CorsMetadata>,
        parse: parse_metadata,
    }),
};

/// What `allow_methods: "**"` allows.
const EVERY_METHOD: &str = "GET,POST,PUT,DELETE,PATCH,HEAD,OPTIONS,CONNECT,TRACE";

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CorsConfig {
    /// The origins allowed: `*` (any, without credentials), `**` (the request's own, even
    /// with credentials: a security risk), `null`, one origin, or several separated by
    /// commas (`https://a.example,https://b.example`).
    #[serde(default = "any")]
    allow_origins: String,
    /// The methods allowed, separated by commas: `*` (any, without credentials) or `**`
    /// (every method, even with credentials).
    #[serde(default = "any")]
    allow_methods: String,
    /// The request headers allowed, separated by commas: `*` (any, without credentials) or
    /// `**` (those the preflight asks for, even with credentials).
    #[serde(default = "any")]
    allow_headers: String,
    /// The response headers a page may read, separated by commas. Unset: none but the
    /// CORS-safelisted ones.
    expose_headers: Option<String>,
    /// How long, in seconds, a browser may cache a preflight's answer; `-1`: not at all.
    #[serde(default = "default_max_age")]
    max_age: i64,
    /// Let requests carry credentials (cookies, `Authorization`). Then no other field may
    /// be `*`.
    #[serde(default)]
    allow_credential: bool,
    /// Regular expressions an `Origin` is searched with; when set, they alone decide which
    /// origins are allowed and `allow_origins` is not used. Unique, 1 to 4096 characters.
    #[schemars(length(min = 1), inner(length(min = 1, max = 4096)))]
    allow_origins_by_regex: Option<Vec<String>>,
    /// Names of origin lists of the plugin's metadata: an `Origin` one of them allows is
    /// allowed (and echoed), before `allow_origins` or `allow_origins_by_regex` are tried,
    /// which are tried only when `allow_origins` is not `*`. Unique, 1 to 4096 characters.
    #[schemars(length(min = 1), inner(length(min = 1, max = 4096)))]
    allow_origins_by_metadata: Option<Vec<String>>,
}

/// `plugin_metadata/cors`: the origin lists routes refer to by name.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CorsMetadata {
    /// Origin lists by name, each written as `allow_origins` is: `*`, `**`, `null`, one
    /// origin, or several separated by commas.
    #[serde(default)]
    allow_origins: BTreeMap<String, String>,
}

/// The metadata, parsed: which origins each named list allows.
struct NamedOrigins(HashMap<String, SharedOrigins>);

/// The origins one or more metadata lists allow. A request's `Origin` they allow is
/// echoed back; a request without one is never allowed by them.
#[derive(Default)]
struct SharedOrigins {
    /// `*` or `**`: any origin.
    any: bool,
    listed: HashSet<String>,
}

impl SharedOrigins {
    fn allows(&self, origin: &str) -> bool {
        self.any || self.listed.contains(origin)
    }

    fn extend(&mut self, other: &SharedOrigins) {
        self.any |= other.any;
        self.listed.extend(other.listed.iter().cloned());
    }
}

fn parse_metadata(metadata: &Value) -> Result<Metadata, FieldError> {
    let metadata: CorsMetadata = parse(metadata)?;
    let mut named = HashMap::new();
    for (name, origins) in metadata.allow_origins {
        if !valid_origins(&origins) {
            return Err(FieldError::new(
                format!("allow_origins.{name}"),
                ORIGINS_SYNTAX,
            ));
        }
        let shared = match origins.as_str() {
            "*" | "**" => SharedOrigins {
                any: true,
                listed: HashSet::new(),
            },
            list => SharedOrigins {
                any: false,
                listed: list.split(',').map(str::to_owned).collect(),
            },
        };
        named.insert(name, shared);
    }
    Ok(Arc::new(NamedOrigins(named)))
}

fn any() -> String {
    "*".into()
}

fn default_max_age() -> i64 {
    5
}

/// What `allow_origins` and the metadata's lists may be.
const ORIGINS_SYNTAX: &str =
    "must be `*`, `**`, `null` or origins like `https://a.example` separated by commas";

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: CorsConfig = parse(config)?;
    if !valid_origins(&config.allow_origins) {
        return Err(FieldError::new("allow_origins", ORIGINS_SYNTAX));
    }
    if config.allow_credential {
        let starred = [
            ("allow_origins", Some(&config.allow_origins)),
            ("allow_methods", Some(&config.allow_methods)),
            ("allow_headers", Some(&config.allow_headers)),
            ("expose_headers", config.expose_headers.as_ref()),
        ]
        .into_iter()
        .find(|(_, value)| value.is_some_and(|v| v == "*"));
        if let Some((field, _)) = starred {
            return Err(FieldError::new(
                field,
                "can not be `*` when `allow_credential` is true",
            ));
        }
    }
    // The lists named but absent from the metadata allow nothing, as no metadata at all.
    let by_metadata = match &config.allow_origins_by_metadata {
        Some(names) => {
            check_list("allow_origins_by_metadata", names)?;
            let mut shared = SharedOrigins::default();
            if let Some(NamedOrigins(lists)) = env.metadata::<NamedOrigins>() {
                for list in names.iter().filter_map(|name| lists.get(name)) {
                    shared.extend(list);
                }
            }
            Some(shared)
        }
        None => None,
    };
    // APISIX tries the route's own origins after the metadata's only when `allow_origins` is
    // set to something else than `*` (its default), even if `allow_origins_by_regex` is set.
    let falls_back = by_metadata.is_none() || config.allow_origins != "*";
    let origins = match &config.allow_origins_by_regex {
        Some(rules) => Origins::Matching(regex_set(rules)?),
        None => match config.allow_origins.as_str() {
            "*" => Origins::Any,
            "**" => Origins::Reflect,
            list if list.contains(',') => {
                Origins::OneOf(list.split(',').map(str::to_owned).collect())
            }
            one => Origins::Fixed(Arc::from(one)),
        },
    };
    let allow_methods = match config.allow_methods.as_str() {
        "**" => Arc::from(EVERY_METHOD),
        methods => Arc::from(methods),
    };
    let allow_headers = match config.allow_headers.as_str() {
        "**" => None,
        headers => Some(Arc::from(headers)),
    };
    Ok(Arc::new(Cors {
        varies: !matches!(origins, Origins::Any) || by_metadata.is_some(),
        origins,
        by_metadata,
        falls_back,
        allow_methods,
        allow_headers,
        expose_headers: config
            .expose_headers
            .filter(|h| !h.is_empty())
            .map(Arc::from),
        max_age: Arc::from(config.max_age.to_string()),
        allow_credential: config.allow_credential,
    }))
}

/// APISIX's pattern for `allow_origins`: `*`, `**`, `null`, or `scheme://...` items
/// separated by commas.
fn valid_origins(origins: &str) -> bool {
    matches!(origins, "*" | "**" | "null")
        || origins.split(',').all(|origin| {
            origin.split_once("://").is_some_and(|(scheme, rest)| {
                !scheme.is_empty()
                    && scheme
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !rest.is_empty()
            })
        })
}

fn regex_set(rules: &[String]) -> Result<RegexSet, FieldError> {
    const FIELD: &str = "allow_origins_by_regex";
    check_list(FIELD, rules)?;
    for (i, rule) in rules.iter().enumerate() {
        // Compiled alone first so that an error names its rule.
        Regex::new(rule).map_err(|e| FieldError::new(format!("{FIELD}[{i}]"), e.to_string()))?;
    }
    RegexSet::new(rules).map_err(|e| FieldError::new(FIELD, e.to_string()))
}

/// APISIX's constraints on `allow_origins_by_regex` and `allow_origins_by_metadata`: at
/// least one item, each of 1 to 4096 characters, no two the same.
fn check_list(field: &str, items: &[String]) -> Result<(), FieldError> {
    if items.is_empty() {
        return Err(FieldError::new(field, "must list at least one item"));
    }
    for (i, item) in items.iter().enumerate() {
        let path = format!("{field}[{i}]");
        if !(1..=4096).contains(&item.chars().count()) {
            return Err(FieldError::new(path, "must be 1 to 4096 characters"));
        }
        if let Some(first) = items[..i].iter().position(|r| r == item) {
            return Err(FieldError::new(
                path,
                format!("the same item as {field}[{first}]"),
            ));
        }
    }
    Ok(())
}

/// Which origins a response allows, decided once at build.
enum Origins {
    /// `*`.
    Any,
    /// `**`: the request's `Origin`, `*` without one.
    Reflect,
    /// One configured origin, sent only to a request from it.
    Fixed(Arc<str>),
    /// The request's `Origin` when it is one of these; no CORS headers otherwise.
    OneOf(HashSet<String>),
    /// The request's `Origin` when a rule matches it; no CORS headers otherwise.
    Matching(RegexSet),
}

struct Cors {
    origins: Origins,
    /// What the metadata's lists named by `allow_origins_by_metadata` allow, tried first.
    by_metadata: Option<SharedOrigins>,
    /// Whether `origins` is tried for an `Origin` the metadata does not allow.
    falls_back: bool,
    /// Whether the answer depends on the `Origin`, so that caches must key on it.
    varies: bool,
    // Shared with every request's edits rather than copied into them.
    allow_methods: Arc<str>,
    /// `None` for `**`: the preflight's `Access-Control-Request-Headers`, echoed.
    allow_headers: Option<Arc<str>>,
    expose_headers: Option<Arc<str>>,
    max_age: Arc<str>,
    allow_credential: bool,
}

impl Cors {
    /// The `Access-Control-Allow-Origin` for a request from `origin`, `None` when the
    /// origin is not allowed.
    fn allowed_origin(&self, origin: Option<&str>) -> Option<Text> {
        let echoed = |o: &str| Text::Owned(o.to_owned());
        if let Some(shared) = &self.by_metadata {
            if let Some(origin) = origin.filter(|o| shared.allows(o)) {
                return Some(echoed(origin));
            }
            if !self.falls_back {
                return None;
            }
        }
        match &self.origins {
            Origins::Any => Some(Text::Static("*")),
            Origins::Reflect => Some(origin.map_or(Text::Static("*"), echoed)),
            Origins::Fixed(allowed) => origin
                .filter(|o| *o == &**allowed)
                .map(|_| Text::Shared(allowed.clone())),
            Origins::OneOf(allowed) => origin.filter(|o| allowed.contains(*o)).map(echoed),
            Origins::Matching(rules) => origin.filter(|o| rules.is_match(o)).map(echoed),
        }
    }
}

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let allowed = self.allowed_origin(ctx.header("origin").as_deref());
        let requested_headers = match &self.allow_headers {
            Some(_) => None,
            None => ctx
                .header("access-control-request-headers")
                .map(|h| h.into_owned()),
        };
        let preflight =
            ctx.method() == "OPTIONS" && ctx.header("access-control-request-method").is_some();

        let headers = &mut ctx.response.headers;
        if self.varies {
            headers.add("Vary", "Origin");
        }
        if let Some(origin) = allowed {
            headers.set("Access-Control-Allow-Origin", origin);
            headers.set("Access-Control-Allow-Methods", &self.allow_methods);
            headers.set("Access-Control-Max-Age", &self.max_age);
            if let Some(expose) = &self.expose_headers {
                headers.set("Access-Control-Expose-Headers", expose);
            }
            match (&self.allow_headers, requested_headers) {
                (Some(allow), _) => headers.set("Access-Control-Allow-Headers", allow),
                (None, Some(requested)) => headers.set("Access-Control-Allow-Headers", requested),
                (None, None) => {}
            }
            if self.allow_credential {
                headers.set("Access-Control-Allow-Credentials", "true");
            }
        }
        if preflight {
            Step::Reply(Reply::status(200))
        } else {
            Step::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{
        build as build_plugin, build_with_metadata, refusal, replied, TestRequest,
    };

    /// The reply, and the response headers the plugin set, in order.
    fn rewrite(config: Value, request: &TestRequest) -> (Option<Reply>, Vec<(String, String)>) {
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let mut ctx = RequestCtx::new(request, "r1", None);
        let reply = replied(plugin.rewrite(&mut ctx));
        let headers = ctx
            .response
            .headers
            .added()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        (reply, headers)
    }

    /// The `Access-Control-Allow-Origin` and `Vary` a request from `origin` gets, with
    /// `metadata` as the plugin's metadata.
    fn with_metadata(
        config: Value,
        metadata: Value,
        origin: Option<&str>,
    ) -> (Option<String>, Option<String>) {
        let plugin = build_with_metadata(&DESCRIPTOR, config, metadata).unwrap();
        let request = match origin {
            Some(origin) => from(origin),
            None => TestRequest::get("/api"),
        };
        let mut ctx = RequestCtx::new(&request, "r1", None);
        assert_eq!(replied(plugin.rewrite(&mut ctx)), None);
        let headers: Vec<(String, String)> = ctx
            .response
            .headers
            .added()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect();
        (
            header(&headers, "access-control-allow-origin").map(str::to_owned),
            header(&headers, "vary").map(str::to_owned),
        )
    }

    fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn from(origin: &str) -> TestRequest {
        TestRequest::get("/api").header("Origin", origin)
    }

    #[test]
    fn defaults_allow_any_origin_on_every_response() {
        let (reply, headers) = rewrite(json!({}), &from("https://a.example"));
        assert_eq!(reply, None);
        let expected = [
            ("Access-Control-Allow-Origin", "*"),
            ("Access-Control-Allow-Methods", "*"),
            ("Access-Control-Max-Age", "5"),
            ("Access-Control-Allow-Headers", "*"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(headers, expected);
    }

    #[test]
    fn a_preflight_is_answered_200_by_the_gateway() {
        let preflight = from("https://a.example")
            .method("OPTIONS")
            .header("Access-Control-Request-Method", "PUT");
        let (reply, headers) = rewrite(json!({}), &preflight);
        assert_eq!(reply.map(|r| r.status), Some(200));
        assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
        // An OPTIONS request that is not a preflight goes to the upstream.
        let plain = from("https://a.example").method("OPTIONS");
        assert_eq!(rewrite(json!({}), &plain).0, None);
    }

    #[test]
    fn a_list_of_origins_allows_only_those_and_varies_on_origin() {
        let config = json!({
            "allow_origins": "https://a.example,https://b.example:8443",
            "allow_methods": "GET,POST",
            "allow_headers": "X-Token",
            "expose_headers": "X-Request-Id",
            "max_age": 600,
            "allow_credential": true,
        });
        let (_, headers) = rewrite(config.clone(), &from("https://b.example:8443"));
        assert_eq!(header(&headers, "vary"), Some("Origin"));
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            Some("https://b.example:8443")
        );
        assert_eq!(
            header(&headers, "access-control-allow-methods"),
            Some("GET,POST")
        );
        assert_eq!(
            header(&headers, "access-control-allow-headers"),
            Some("X-Token")
        );
        assert_eq!(
            header(&headers, "access-control-expose-headers"),
            Some("X-Request-Id")
        );
        assert_eq!(header(&headers, "access-control-max-age"), Some("600"));
        assert_eq!(
            header(&headers, "access-control-allow-credentials"),
            Some("true")
        );

        let (_, headers) = rewrite(config.clone(), &from("https://evil.example"));
        assert_eq!(headers, [("Vary".to_owned(), "Origin".to_owned())]);
        let (_, headers) = rewrite(config, &TestRequest::get("/api"));
        assert_eq!(header(&headers, "access-control-allow-origin"), None);
    }

    #[test]
    fn double_star_reflects_the_request() {
        let config = json!({
            "allow_origins": "**",
            "allow_methods": "**",
            "allow_headers": "**",
            "allow_credential": true,
        });
        let preflight = from("https://a.example")
            .method("OPTIONS")
            .header("Access-Control-Request-Method", "PUT")
            .header("Access-Control-Request-Headers", "X-A, X-B");
        let (reply, headers) = rewrite(config.clone(), &preflight);
        assert_eq!(reply.map(|r| r.status), Some(200));
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            Some("https://a.example")
        );
        assert_eq!(
            header(&headers, "access-control-allow-methods"),
            Some(EVERY_METHOD)
        );
        assert_eq!(
            header(&headers, "access-control-allow-headers"),
            Some("X-A, X-B")
        );
        let (_, headers) = rewrite(config, &TestRequest::get("/api"));
        assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
        assert_eq!(header(&headers, "access-control-allow-headers"), None);
    }

    #[test]
    fn regexes_alone_decide_when_set() {
        let config = json!({
            "allow_origins": "https://ignored.example",
            "allow_origins_by_regex": [r"^https://.*\.test\.com$", "^http://localhost"],
        });
        for allowed in ["https://a.test.com", "http://localhost:3000"] {
            let (_, headers) = rewrite(config.clone(), &from(allowed));
            assert_eq!(
                header(&headers, "access-control-allow-origin"),
                Some(allowed)
            );
            assert_eq!(header(&headers, "vary"), Some("Origin"));
        }
        for refused in ["https://test.com.evil", "https://ignored.example"] {
            let (_, headers) = rewrite(config.clone(), &from(refused));
            assert_eq!(
                header(&headers, "access-control-allow-origin"),
                None,
                "{refused}"
            );
        }
    }

    #[test]
    fn bad_configurations_are_refused_where_they_are_wrong() {
        let cases = [
            (json!({"allow_origins": "a.example"}), "allow_origins"),
            (
                json!({"allow_origins": "https://a.example,"}),
                "allow_origins",
            ),
            (json!({"allow_credential": true}), "allow_origins"),
            (
                json!({"allow_origins": "https://a.example", "allow_credential": true}),
                "allow_methods",
            ),
            (
                json!({
                    "allow_origins": "**", "allow_methods": "GET", "allow_headers": "X-A",
                    "expose_headers": "*", "allow_credential": true,
                }),
                "expose_headers",
            ),
            (
                json!({"allow_origins_by_regex": []}),
                "allow_origins_by_regex",
            ),
            (
                json!({"allow_origins_by_regex": ["a", "("]}),
                "allow_origins_by_regex[1]",
            ),
            (
                json!({"allow_origins_by_regex": ["a", "a"]}),
                "allow_origins_by_regex[1]",
            ),
            (json!({"max_age": "5"}), "max_age"),
            (
                json!({"allow_origins_by_metadata": []}),
                "allow_origins_by_metadata",
            ),
            (
                json!({"allow_origins_by_metadata": ["a", ""]}),
                "allow_origins_by_metadata[1]",
            ),
            (
                json!({"allow_origins_by_metadata": ["a", "a"]}),
                "allow_origins_by_metadata[1]",
            ),
        ];
        for (config, path) in cases {
            assert_eq!(refusal(&DESCRIPTOR, config.clone()).path, path, "{config}");
        }
        let err = refusal(&DESCRIPTOR, json!({"allow_credential": true}));
        assert_eq!(
            err.message,
            "can not be `*` when `allow_credential` is true"
        );
    }

    #[test]
    fn metadata_lists_allow_their_origins_by_name() {
        let metadata = json!({"allow_origins": {
            "partners": "https://a.example,https://b.example",
            "open": "*",
            "unused": "https://c.example",
        }});
        let config = json!({"allow_origins_by_metadata": ["partners", "missing"]});
        let allowed = |origin| with_metadata(config.clone(), metadata.clone(), origin);
        assert_eq!(
            allowed(Some("https://b.example")),
            (Some("https://b.example".into()), Some("Origin".into()))
        );
        // Not in the named lists, and `allow_origins` is `*`: the route's own origins are
        // not tried.
        assert_eq!(
            allowed(Some("https://c.example")),
            (None, Some("Origin".into()))
        );
        assert_eq!(allowed(None).0, None);

        // `*` in a list allows any origin, echoed; never a request without one.
        let open = json!({"allow_origins_by_metadata": ["open"]});
        assert_eq!(
            with_metadata(open.clone(), metadata.clone(), Some("https://z.example")).0,
            Some("https://z.example".into())
        );
        assert_eq!(with_metadata(open, metadata.clone(), None).0, None);

        // The route's own origins are tried when `allow_origins` is not `*`.
        let fallback = json!({
            "allow_origins_by_metadata": ["partners"],
            "allow_origins": "https://own.example",
        });
        assert_eq!(
            with_metadata(
                fallback.clone(),
                metadata.clone(),
                Some("https://own.example")
            )
            .0,
            Some("https://own.example".into())
        );
        assert_eq!(
            with_metadata(fallback, metadata, Some("https://c.example")).0,
            None
        );
    }

    #[test]
    fn without_metadata_the_named_lists_allow_nothing() {
        let plugin = build_plugin(&DESCRIPTOR, json!({"allow_origins_by_metadata": ["a"]}));
        let plugin = plugin.unwrap();
        let request = from("https://a.example");
        let mut ctx = RequestCtx::new(&request, "r1", None);
        plugin.rewrite(&mut ctx);
        let origin = ctx
            .response
            .headers
            .added()
            .find(|(n, _)| n.eq_ignore_ascii_case("access-control-allow-origin"))
            .map(|(_, v)| v.to_owned());
        assert_eq!(origin, None);
    }

    #[test]
    fn one_origin_is_sent_only_to_a_request_from_it() {
        let config = json!({"allow_origins": "https://a.example"});
        let (_, headers) = rewrite(config.clone(), &from("https://a.example"));
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            Some("https://a.example")
        );
        let (_, headers) = rewrite(config, &from("https://b.example"));
        assert_eq!(headers, [("Vary".to_owned(), "Origin".to_owned())]);
    }

    #[test]
    fn bad_metadata_is_refused_where_it_is_wrong() {
        let parse = DESCRIPTOR.metadata.as_ref().unwrap().parse;
        let cases = [
            (
                json!({"allow_origins": {"a": "a.example"}}),
                "allow_origins.a",
            ),
            (json!({"allow_origins": {"a": 1}}), "allow_origins.a"),
            (json!({"allow_origins": []}), "allow_origins"),
            (json!({"allow_origin": {}}), "allow_origin"),
        ];
        for (metadata, path) in cases {
            let error = parse(&metadata).expect_err("refused");
            assert_eq!(error.path, path, "{metadata}: {error}");
        }
        assert!(parse(&json!({})).is_ok());
        let schema = (DESCRIPTOR.metadata.as_ref().unwrap().schema)();
        assert_eq!(schema["properties"]["allow_origins"]["type"], "object");
    }
}
