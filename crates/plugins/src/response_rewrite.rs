//! `response-rewrite`: changes the response the client gets, whoever made it: its status,
//! headers (with `$var`s) and whole body, when the response matches `vars`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use pylon_model::expr::Expr;
use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, ResponseCtx};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::catalog::{BuildEnv, Descriptor};
use crate::config::{parse, schema_of};
use crate::header_ops::{HeaderOps, Scalar};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "response-rewrite",
    priority: 899,
    schema: schema_of::<ResponseRewriteConfig>,
    build,
    credential: None,
    metadata: None,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ResponseRewriteConfig {
    /// The status the client gets.
    #[schemars(range(min = 200, max = 598))]
    status_code: Option<u16>,
    /// Headers for the client: `add` (`"Name: value"` strings), `set` and `remove`, or a
    /// plain object of headers to set. Values may hold `$var`s.
    headers: Option<ResponseHeaders>,
    /// The body the client gets instead of the response's own.
    body: Option<String>,
    /// `body` is base64: the client gets it decoded (for a binary body).
    #[serde(default)]
    body_base64: bool,
    /// A `vars` expression on the request and the response (`status`,
    /// `upstream_http_<name>`): the response is rewritten only when it matches.
    #[schemars(with = "Option<Vec<Value>>")]
    vars: Option<Value>,
    /// The most a body filter may hold in memory, in bytes. Accepted for APISIX's stored
    /// configurations; it only bounds `filters`.
    #[serde(default = "default_max_resp_body_size")]
    #[schemars(range(min = 1))]
    max_resp_body_size: u64,
    /// Regular-expression edits of the response body: refused, this build does not filter
    /// bodies yet.
    #[schemars(skip)]
    filters: Option<Value>,
}

fn default_max_resp_body_size() -> u64 {
    64 << 20
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum ResponseHeaders {
    Operations(HeaderOperations),
    /// APISIX's older form: every header set to its value.
    Set(BTreeMap<String, Scalar>),
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HeaderOperations {
    /// Headers added to the response's, each as `"Name: value"`.
    add: Option<Vec<String>>,
    /// Headers replacing the response's of the same name.
    set: Option<BTreeMap<String, Scalar>>,
    /// Headers removed.
    remove: Option<Vec<String>>,
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: ResponseRewriteConfig = parse(config)?;
    if config.filters.is_some() {
        return Err(FieldError::new(
            "filters",
            "not supported yet: editing the response body needs a body filter",
        ));
    }
    if let Some(status) = config.status_code {
        if !(200..=598).contains(&status) {
            return Err(FieldError::new("status_code", "must be from 200 to 598"));
        }
    }
    if config.max_resp_body_size == 0 {
        return Err(FieldError::new("max_resp_body_size", "must be at least 1"));
    }
    let body = match (config.body, config.body_base64) {
        (Some(body), false) => Some(Bytes::from(body)),
        (body, true) => {
            let decoded = body
                .as_deref()
                .filter(|b| !b.is_empty())
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
            match decoded {
                Some(decoded) => Some(Bytes::from(decoded)),
                None => return Err(FieldError::new("body", "invalid base64 content")),
            }
        }
        (None, false) => None,
    };
    let vars = match &config.vars {
        Some(vars) => Some(Expr::parse(vars).map_err(|e| {
            FieldError::new(
                format!("vars{}", suffix(&e.path)),
                format!("failed to validate the 'vars' expression: {}", e.message),
            )
        })?),
        None => None,
    };
    Ok(Arc::new(ResponseRewrite {
        status: config.status_code,
        headers: config
            .headers
            .as_ref()
            .map(header_ops)
            .transpose()?
            .unwrap_or_default(),
        body,
        vars,
    }))
}

/// `.path` to append to a containing field's path, or nothing.
fn suffix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(".{path}")
    }
}

fn header_ops(headers: &ResponseHeaders) -> Result<HeaderOps, FieldError> {
    let mut ops = HeaderOps::default();
    match headers {
        ResponseHeaders::Set(set) => {
            for (name, value) in set {
                ops.set(&format!("headers.{name}"), name, &[value.text()])?;
            }
        }
        ResponseHeaders::Operations(HeaderOperations { add, set, remove }) => {
            for (i, line) in add.iter().flatten().enumerate() {
                let path = format!("headers.add.{i}");
                let (name, value) = line
                    .split_once(':')
                    .filter(|(_, value)| !value.contains(':'))
                    .ok_or_else(|| FieldError::new(&path, "must be `Name: value`"))?;
                ops.add(&path, name.trim_end(), value.trim_start())?;
            }
            for (name, value) in set.iter().flatten() {
                ops.set(&format!("headers.set.{name}"), name, &[value.text()])?;
            }
            for (i, name) in remove.iter().flatten().enumerate() {
                ops.remove(&format!("headers.remove.{i}"), name)?;
            }
        }
    }
    Ok(ops)
}

struct ResponseRewrite {
    status: Option<u16>,
    headers: HeaderOps,
    body: Option<Bytes>,
    vars: Option<Expr>,
}

impl Plugin for ResponseRewrite {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::HEADER_FILTER
    }

    fn header_filter(&self, ctx: &mut ResponseCtx<'_, '_>) {
        let mut vars = ResponseVars {
            request: ctx.request,
            status: ctx.status,
            headers: ctx.headers,
        };
        if let Some(expr) = &self.vars {
            if !pylon_router::eval_vars(expr, &vars) {
                return;
            }
        }
        // Header values see the status this plugin gives, as `$status` does in APISIX.
        vars.status = self.status.unwrap_or(ctx.status);
        let rendered = self.headers.render(&vars);
        if let Some(status) = self.status {
            ctx.edits.status = Some(status);
        }
        if let Some(body) = &self.body {
            ctx.edits.body = Some(body.clone());
            // The upstream's encoding and cache validators described the body it sent.
            for stale in ["Content-Encoding", "ETag", "Last-Modified"] {
                ctx.edits.headers.remove(stale);
            }
        }
        rendered.apply(&mut ctx.edits.headers);
    }
}

/// Variables in `header_filter`: the response's `status` and `upstream_http_<name>`
/// headers, then the request's.
struct ResponseVars<'v, 'r> {
    request: &'v pylon_plugin::RequestCtx<'r>,
    status: u16,
    headers: &'v dyn pylon_plugin::ResponseHeaders,
}

impl RequestView for ResponseVars<'_, '_> {
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
        if name == "status" {
            return Some(Cow::Owned(self.status.to_string()));
        }
        if let Some(header) = name.strip_prefix("upstream_http_") {
            let header = header.replace('_', "-");
            return self.headers.header(&header).map(String::from_utf8_lossy);
        }
        self.request.var(name)
    }
}

#[cfg(test)]
mod tests {
    use pylon_plugin::{RequestCtx, ResponseEdits, ResponseHeaders as _};
    use serde_json::json;

    use super::*;
    use crate::testing::{build, refusal, TestRequest};

    struct Headers(Vec<(&'static str, &'static str)>);

    impl pylon_plugin::ResponseHeaders for Headers {
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.0
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes())
        }
    }

    /// The edits the plugin makes to a response with this status and these headers.
    fn filter(config: Value, status: u16, headers: &Headers) -> ResponseEdits {
        let plugin = build(&DESCRIPTOR, config).unwrap();
        let request = TestRequest::get("/p?v=1");
        let ctx = RequestCtx::new(&request, "r1", None);
        let mut edits = ResponseEdits::default();
        plugin.header_filter(&mut ResponseCtx {
            request: &ctx,
            status,
            headers,
            edits: &mut edits,
        });
        edits
    }

    #[test]
    fn status_headers_and_body_are_replaced() {
        let upstream = Headers(vec![("Content-Encoding", "gzip"), ("X-Up", "u")]);
        assert_eq!(upstream.header("x-up"), Some(&b"u"[..]));
        let edits = filter(
            json!({
                "status_code": 403,
                "body": "{\"denied\": true}",
                "headers": {
                    "add": ["X-Trace: $arg_v"],
                    "set": {"X-Up-Was": "$upstream_http_x_up", "X-Status": "$status"},
                    "remove": ["X-Up"]
                }
            }),
            200,
            &upstream,
        );
        assert_eq!(edits.status, Some(403));
        assert_eq!(edits.body.as_deref(), Some(&b"{\"denied\": true}"[..]));
        assert_eq!(edits.headers.get("content-encoding"), Some(None));
        assert_eq!(
            edits.headers.added().collect::<Vec<_>>(),
            [("X-Trace", "1"), ("X-Status", "403"), ("X-Up-Was", "u")]
        );
        assert_eq!(edits.headers.get("x-up"), Some(None));
    }

    #[test]
    fn a_base64_body_is_sent_decoded() {
        let edits = filter(
            json!({"body": "AAEC/w==", "body_base64": true}),
            200,
            &Headers(vec![]),
        );
        assert_eq!(edits.body.as_deref(), Some(&[0, 1, 2, 255][..]));
    }

    #[test]
    fn only_responses_matching_vars_are_rewritten() {
        let config = json!({
            "vars": [["status", "==", 500], ["upstream_http_x_kind", "==", "db"]],
            "status_code": 503,
            "headers": {"X-Rewritten": "yes"}
        });
        let db = Headers(vec![("X-Kind", "db")]);
        let edits = filter(config.clone(), 500, &db);
        assert_eq!(edits.status, Some(503));
        assert_eq!(edits.headers.get("x-rewritten"), Some(Some("yes")));
        assert!(filter(config.clone(), 200, &db).is_empty());
        let other = Headers(vec![("X-Kind", "cache")]);
        assert!(filter(config, 500, &other).is_empty());
    }

    #[test]
    fn bad_configurations_are_refused_with_their_path() {
        let path = |config| refusal(&DESCRIPTOR, config).path;
        assert_eq!(path(json!({"status_code": 199})), "status_code");
        assert_eq!(path(json!({"status_code": 599})), "status_code");
        assert_eq!(path(json!({"body": "!!", "body_base64": true})), "body");
        assert_eq!(path(json!({"body_base64": true})), "body");
        assert_eq!(
            path(json!({"headers": {"add": ["no colon"]}})),
            "headers.add.0"
        );
        assert_eq!(
            path(json!({"headers": {"set": {"X A": "1"}}})),
            "headers.set.X A"
        );
        assert_eq!(
            path(json!({"filters": [{"regex": "a", "replace": "b"}]})),
            "filters"
        );
        assert!(path(json!({"vars": [["status", "~~~", 1]]})).starts_with("vars"));
        assert_eq!(path(json!({"vars": "status"})), "vars");
    }
}
