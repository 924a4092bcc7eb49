//! `redirect`: answers with a redirection instead of proxying: to a templated `uri`, to the
//! client's path rewritten by `regex_uri`, or from plain HTTP to HTTPS.

use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step, Template};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::uri_rewrite::{append_args, encode_target, escape_controls, RegexUri};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "redirect",
    priority: 900,
    schema: schema_of::<RedirectConfig>,
    build,
    credential: None,
    metadata: None,
};

/// Exactly one of `uri`, `regex_uri` and `http_to_https`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RedirectConfig {
    /// Where to redirect, with `$var`s (`https://$host$request_uri`).
    #[schemars(length(min = 2))]
    uri: Option<String>,
    /// A regular expression on the client's path and the redirection it becomes (`$1`,
    /// `${1}` name groups). A path that does not match is proxied as usual.
    #[schemars(length(min = 2, max = 2))]
    regex_uri: Option<Vec<String>>,
    /// Redirect plain HTTP requests to the same URL over HTTPS, with 301 for `GET` and
    /// `HEAD` and 308 for other methods. `X-Forwarded-Proto` says the client's scheme when
    /// it is set.
    http_to_https: Option<bool>,
    /// The status of the redirection (`uri` and `regex_uri`).
    #[serde(default = "default_ret_code")]
    #[schemars(range(min = 200))]
    ret_code: u16,
    /// Percent-encode the path of the new location (what a path may not hold raw).
    #[serde(default)]
    encode_uri: bool,
    /// Append the client's query string to the new location.
    #[serde(default)]
    append_query_string: bool,
}

fn default_ret_code() -> u16 {
    302
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: RedirectConfig = parse(config)?;
    let given = [
        config.uri.is_some(),
        config.regex_uri.is_some(),
        config.http_to_https.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(FieldError::new(
            "",
            "exactly one of `uri`, `regex_uri` and `http_to_https` is required",
        ));
    }
    if config.ret_code < 200 {
        return Err(FieldError::new("ret_code", "must be at least 200"));
    }
    if config.http_to_https == Some(true) && config.append_query_string {
        return Err(FieldError::new(
            "",
            "only one of `http_to_https` and `append_query_string` can be configured.",
        ));
    }
    let target = if let Some(uri) = &config.uri {
        if uri.len() < 2 {
            return Err(FieldError::new("uri", "must be at least 2 characters"));
        }
        Target::Uri(Template::parse(uri))
    } else if let Some(pair) = &config.regex_uri {
        let [pattern, replacement] = pair.as_slice() else {
            return Err(FieldError::new(
                "regex_uri",
                "must be a pattern and its replacement",
            ));
        };
        let rewrite = RegexUri::new(pattern, replacement).map_err(|e| {
            FieldError::new(
                "regex_uri",
                format!("invalid regex_uri ({pattern}, {replacement}), err:{e}"),
            )
        })?;
        Target::RegexUri(rewrite)
    } else if config.http_to_https == Some(true) {
        Target::Https(Template::parse("https://$host$request_uri"))
    } else {
        Target::Nowhere
    };
    Ok(Arc::new(Redirect {
        target,
        ret_code: config.ret_code,
        encode_uri: config.encode_uri,
        append_query_string: config.append_query_string,
    }))
}

enum Target {
    Uri(Template),
    RegexUri(RegexUri),
    Https(Template),
    /// `http_to_https: false`: the plugin is configured and does nothing.
    Nowhere,
}

struct Redirect {
    target: Target,
    ret_code: u16,
    encode_uri: bool,
    append_query_string: bool,
}

impl Plugin for Redirect {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let (location, status) = match &self.target {
            Target::Uri(uri) => (uri.render(&*ctx).into_owned(), self.ret_code),
            Target::RegexUri(rewrite) => {
                let path = ctx.var("uri").unwrap_or_default();
                match rewrite.substitute(&path) {
                    Some(done) => (done.target, self.ret_code),
                    None => return Step::Continue,
                }
            }
            Target::Https(uri) => {
                let scheme = match ctx.header("x-forwarded-proto") {
                    Some(proto) => proto,
                    None => ctx.var("scheme").unwrap_or_default(),
                };
                if scheme == "https" {
                    return Step::Continue;
                }
                // 308 keeps the method and body of a non-idempotent request; 301 may not.
                let status = match ctx.method() {
                    "GET" | "HEAD" => 301,
                    _ => 308,
                };
                (uri.render(&*ctx).into_owned(), status)
            }
            Target::Nowhere => return Step::Continue,
        };
        // Whatever the configuration says, nothing a variable brings in may end the header.
        let mut location = match (self.encode_uri, location.split_once('?')) {
            (true, Some((path, query))) => encode_target(path, Some(query)),
            (true, None) => encode_target(&location, None),
            (false, _) => escape_controls(&location),
        };
        if self.append_query_string {
            if let Some(args) = ctx.var("args") {
                location = append_args(location, &escape_controls(&args));
            }
        }
        Step::Reply(Reply::status(status).header("Location", location))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{build, refusal, TestRequest};

    /// The redirection's status and `Location`, or `None` when the request goes on.
    fn redirect(config: Value, request: &TestRequest) -> Option<(u16, String)> {
        let plugin = build(&DESCRIPTOR, config).unwrap();
        let mut ctx = RequestCtx::new(request, "r1", None);
        let location = match plugin.rewrite(&mut ctx) {
            Step::Continue => None,
            Step::Reply(reply) => {
                let [(name, location)] = reply.headers.as_slice() else {
                    panic!("headers: {:?}", reply.headers);
                };
                assert_eq!(name, "Location");
                assert!(reply.body.is_empty());
                Some((reply.status, location.clone()))
            }
            Step::Call(_) => panic!("redirect does not call out"),
        };
        location
    }

    #[test]
    fn uri_is_a_template_with_an_optional_query_string() {
        let request = TestRequest::get("/old?a=1");
        let to = |config| redirect(config, &request);
        assert_eq!(
            to(json!({"uri": "/new$uri"})),
            Some((302, "/new/old".into()))
        );
        assert_eq!(
            to(json!({"uri": "/new?x=$arg_a", "ret_code": 307, "append_query_string": true})),
            Some((307, "/new?x=1&a=1".into()))
        );
    }

    #[test]
    fn regex_uri_redirects_only_what_matches() {
        let config = json!({"regex_uri": ["^/a/(.*)", "/b/$1"], "ret_code": 301});
        let to = |target| redirect(config.clone(), &TestRequest::get(target));
        assert_eq!(to("/a/x/y?q=1"), Some((301, "/b/x/y".into())));
        assert_eq!(to("/c"), None);
    }

    #[test]
    fn http_goes_to_https_with_the_method_kept() {
        let config = json!({"http_to_https": true});
        let to = |request| redirect(config.clone(), &request);
        let url = "https://example.com/p?q=1".to_owned();
        assert_eq!(to(TestRequest::get("/p?q=1")), Some((301, url.clone())));
        assert_eq!(
            to(TestRequest::get("/p?q=1").method("POST")),
            Some((308, url))
        );
        assert_eq!(to(TestRequest::get("/p").https()), None);
        let proxied = TestRequest::get("/p").header("X-Forwarded-Proto", "https");
        assert_eq!(to(proxied), None);
        assert_eq!(
            redirect(json!({"http_to_https": false}), &TestRequest::get("/")),
            None
        );
    }

    #[test]
    fn the_location_cannot_break_the_response_head() {
        let request = TestRequest::get("/p?v=a%0D%0ASet-Cookie:%20x");
        let (_, location) = redirect(json!({"uri": "/to/$arg_v"}), &request).unwrap();
        assert_eq!(location, "/to/a%0D%0ASet-Cookie: x");
        let (_, location) =
            redirect(json!({"uri": "/to/$arg_v", "encode_uri": true}), &request).unwrap();
        assert_eq!(location, "/to/a%0D%0ASet-Cookie:%20x");
    }

    #[test]
    fn bad_configurations_are_refused_with_their_path() {
        let path = |config| refusal(&DESCRIPTOR, config).path;
        assert_eq!(path(json!({})), "");
        assert_eq!(path(json!({"uri": "/a", "http_to_https": true})), "");
        assert_eq!(
            path(json!({"http_to_https": true, "append_query_string": true})),
            ""
        );
        assert_eq!(path(json!({"uri": "/"})), "uri");
        assert_eq!(path(json!({"uri": "/a", "ret_code": 199})), "ret_code");
        assert_eq!(path(json!({"regex_uri": ["^/"]})), "regex_uri");
        assert_eq!(path(json!({"regex_uri": ["(", "/"]})), "regex_uri");
        assert_eq!(path(json!({"uri": "/a", "other": 1})), "other");
    }
}
