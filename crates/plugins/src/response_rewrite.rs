//! `response-rewrite`: changes the response the client gets, whoever made it: its status,
//! headers (with `$var`s), and its body (replaced whole, or edited by regular expressions),
//! when the response matches `vars`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use pylon_model::expr::Expr;
use pylon_model::FieldError;
use pylon_plugin::{BodyFilter, Phases, Plugin, ResponseCtx};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::header_ops::is_identity;
use crate::header_ops::{HeaderOps, Scalar};
use crate::regex_sub::{RegexSub, SubStream};

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
    /// The most of a body a filter that cannot stream holds in memory, in bytes: one whose
    /// regex can match the empty text or text of any length (as `.*` or `a+`), which needs
    /// the whole body. A longer body passes such a filter unedited (and a warning is logged).
    /// The other filters edit the body as it flows, holding about a match's length of it.
    #[serde(default = "default_max_resp_body_size")]
    #[schemars(range(min = 1))]
    max_resp_body_size: u64,
    /// Regular-expression edits of the response body, each applied to the whole body the
    /// one before it made.
    #[schemars(length(min = 1))]
    filters: Option<Vec<BodyFilterConfig>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct BodyFilterConfig {
    /// The pattern, as nginx's regular expressions write it.
    #[schemars(length(min = 1))]
    regex: String,
    /// `once` replaces the first match, `global` every match.
    #[serde(default)]
    scope: SubScope,
    /// What replaces a match: `$0` is the whole match, `$1` or `${1}` a group, `$$` a `$`.
    replace: String,
    /// nginx's regex option letters: `i` (ignore case), `m` (multi-line), `s` (`.` matches a
    /// newline), `x` (extended); `j`, `o` and `u` are accepted and change nothing.
    #[serde(default = "default_options")]
    options: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum SubScope {
    #[default]
    Once,
    Global,
}

fn default_options() -> String {
    "jo".into()
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
    let filters = match &config.filters {
        Some(_) if config.body.is_some() => {
            return Err(FieldError::new(
                "filters",
                "`body` and `filters` exclude each other",
            ))
        }
        Some(filters) if filters.is_empty() => {
            return Err(FieldError::new("filters", "must have at least one filter"))
        }
        Some(filters) => filters
            .iter()
            .enumerate()
            .map(|(i, f)| {
                if f.regex.is_empty() {
                    return Err(FieldError::new(
                        format!("filters[{i}].regex"),
                        "must not be empty",
                    ));
                }
                RegexSub::new(
                    &format!("filters[{i}]"),
                    &f.regex,
                    &f.replace,
                    &f.options,
                    f.scope == SubScope::Global,
                )
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
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
        filters: Arc::new(filters),
        max_held: usize::try_from(config.max_resp_body_size).unwrap_or(usize::MAX),
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
    /// Shared with the body filter of each response it edits.
    filters: Arc<Vec<RegexSub>>,
    max_held: usize,
    vars: Option<Expr>,
}

impl ResponseRewrite {
    /// Whether the response is one to rewrite: `vars` sees its own status, and its headers.
    fn matches(&self, ctx: &ResponseCtx<'_, '_>) -> bool {
        let Some(expr) = &self.vars else {
            return true;
        };
        let vars = ResponseVars {
            request: ctx.request,
            status: ctx.own_status,
            headers: ctx.headers,
        };
        pylon_router::eval_vars(expr, &vars)
    }
}

impl Plugin for ResponseRewrite {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        if self.filters.is_empty() {
            Phases::HEADER_FILTER
        } else {
            Phases::HEADER_FILTER | Phases::BODY_FILTER
        }
    }

    fn header_filter(&self, ctx: &mut ResponseCtx<'_, '_>) {
        if !self.matches(ctx) {
            return;
        }
        let mut vars = ResponseVars {
            request: ctx.request,
            status: ctx.status,
            headers: ctx.headers,
        };
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
        } else if !self.filters.is_empty() && is_identity(ctx.headers) {
            for stale in ["ETag", "Last-Modified"] {
                ctx.edits.headers.remove(stale);
            }
        }
        rendered.apply(&mut ctx.edits.headers);
    }

    fn body_filter(&self, ctx: &ResponseCtx<'_, '_>) -> Option<Box<dyn BodyFilter>> {
        // A compressed body is not the text the patterns are written for.
        (self.matches(ctx) && is_identity(ctx.headers)).then(|| {
            let stages = self
                .filters
                .iter()
                .map(|sub| sub.stream().map_or(Stage::Hold(Vec::new()), Stage::Stream))
                .collect();
            Box::new(Substitute {
                subs: self.filters.clone(),
                stages,
                max_held: self.max_held,
            }) as Box<dyn BodyFilter>
        })
    }
}

/// One response's `filters`, a stage each, each stage editing what the one before it let
/// out. A stage streams where its filter can; otherwise it holds the body until its end (a
/// match may span pieces), or lets it through unedited past `max_held`.
struct Substitute {
    subs: Arc<Vec<RegexSub>>,
    /// Beside `subs`, one for one.
    stages: Vec<Stage>,
    max_held: usize,
}

/// What one filter does with the body that reaches it.
enum Stage {
    Stream(SubStream),
    /// Holding it until its end.
    Hold(Vec<u8>),
    /// Held too much: the rest of the body passes unedited.
    Overflowed,
}

impl BodyFilter for Substitute {
    fn filter(&mut self, piece: &mut Vec<u8>, end: bool) {
        for (i, (sub, stage)) in self.subs.iter().zip(&mut self.stages).enumerate() {
            match stage {
                Stage::Stream(stream) => stream.feed(sub, piece, end),
                Stage::Hold(held) if held.len() + piece.len() > self.max_held => {
                    tracing::warn!(
                        max_resp_body_size = self.max_held,
                        filter = i,
                        "response-rewrite: the body is longer than max_resp_body_size, and a \
                         filter that cannot stream leaves it unedited"
                    );
                    held.append(piece);
                    *piece = std::mem::take(held);
                    *stage = Stage::Overflowed;
                }
                Stage::Hold(held) => {
                    held.append(piece);
                    if end {
                        let mut body = std::mem::take(held);
                        if let Cow::Owned(edited) = sub.apply(&body) {
                            body = edited;
                        }
                        *piece = body;
                    }
                }
                Stage::Overflowed => {}
            }
        }
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
    use proptest::prelude::*;
    use proptest::sample::{select, Index};
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
            own_status: status,
            headers,
            edits: &mut edits,
        });
        edits
    }

    /// The body the client gets for `pieces` of a response with these headers, or `None`
    /// when the plugin leaves the body alone.
    fn filter_body(config: Value, headers: &Headers, pieces: &[&str]) -> Option<String> {
        let plugin = build(&DESCRIPTOR, config).unwrap();
        let request = TestRequest::get("/p?v=1");
        let ctx = RequestCtx::new(&request, "r1", None);
        let mut edits = ResponseEdits::default();
        let mut filter = plugin.body_filter(&ResponseCtx {
            request: &ctx,
            status: 200,
            own_status: 200,
            headers,
            edits: &mut edits,
        })?;
        let mut out = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let mut piece = piece.as_bytes().to_vec();
            filter.filter(&mut piece, i + 1 == pieces.len());
            out.extend_from_slice(&piece);
        }
        Some(String::from_utf8(out).unwrap())
    }

    #[test]
    fn filters_edit_the_whole_body_even_across_pieces() {
        let config = json!({"filters": [
            {"regex": "hello", "replace": "bye", "scope": "global"},
            {"regex": "(\\w+)@example", "replace": "$1@example.org"}
        ]});
        let plain = Headers(vec![]);
        assert_eq!(
            filter_body(
                config.clone(),
                &plain,
                &["hel", "lo me@exam", "ple hello", ""]
            )
            .as_deref(),
            Some("bye me@example.org bye")
        );
        let gzip = Headers(vec![("Content-Encoding", "gzip")]);
        assert_eq!(filter_body(config, &gzip, &["hello", ""]), None);
    }

    #[test]
    fn a_body_over_the_limit_passes_the_filters_that_cannot_stream_unedited() {
        let filters = |filters| json!({"filters": filters, "max_resp_body_size": 4});
        let plain = Headers(vec![]);
        let pieces = ["aaa", "aaa", "a", ""];
        let unbounded = json!({"regex": "a+", "replace": "b"});
        let bounded = json!({"regex": "a", "replace": "c", "scope": "global"});
        assert_eq!(
            filter_body(filters(json!([unbounded])), &plain, &pieces).as_deref(),
            Some("aaaaaaa")
        );
        assert_eq!(
            filter_body(filters(json!([bounded])), &plain, &pieces).as_deref(),
            Some("ccccccc")
        );
        assert_eq!(
            filter_body(filters(json!([unbounded, bounded])), &plain, &pieces).as_deref(),
            Some("ccccccc")
        );
        // Under the limit, both apply.
        assert_eq!(
            filter_body(filters(json!([unbounded, bounded])), &plain, &["aa", ""]).as_deref(),
            Some("b")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Filters that stream and filters that hold, in any order: each edits what the one
        /// before it made, as if each had the whole body.
        #[test]
        fn a_chain_of_filters_edits_as_each_would_the_whole_body(
            filters in prop::collection::vec(select(CHAIN), 1..4),
            body in "[ab \\n]{0,40}",
            cuts in prop::collection::vec(any::<Index>(), 0..6),
        ) {
            let config: Vec<Value> = filters
                .iter()
                .map(|(regex, replace, scope)| {
                    json!({"regex": regex, "replace": replace, "scope": scope})
                })
                .collect();
            let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(body.len() + 1)).collect();
            cuts.sort_unstable();
            let pieces: Vec<&str> = [0]
                .iter()
                .chain(&cuts)
                .zip(cuts.iter().chain([&body.len()]))
                .map(|(&start, &end)| &body[start..end])
                .collect();
            let streamed = filter_body(json!({"filters": config}), &Headers(vec![]), &pieces);

            let mut whole = body.clone().into_bytes();
            for (regex, replace, scope) in &filters {
                let sub = RegexSub::new("f", regex, replace, "jo", *scope == "global").unwrap();
                whole = sub.apply(&whole).into_owned();
            }
            prop_assert_eq!(streamed.unwrap().into_bytes(), whole);
        }
    }

    /// Filters for [`a_chain_of_filters_edits_as_each_would_the_whole_body`]: the first two
    /// cannot stream.
    const CHAIN: &[(&str, &str, &str)] = &[
        ("a+", "<$0>", "global"),
        ("b.*$", "[$0]", "once"),
        ("ab", "ba", "global"),
        ("<a", "a<", "global"),
        (r"\bb", "B", "once"),
        ("a b|b", "$0$0", "global"),
    ];

    #[test]
    fn filters_apply_only_to_responses_matching_vars() {
        let config = json!({
            "vars": [["upstream_http_content_type", "~~", "html"]],
            "filters": [{"regex": "x", "replace": "y"}]
        });
        let html = Headers(vec![("Content-Type", "text/html")]);
        assert_eq!(
            filter_body(config.clone(), &html, &["x", ""]).as_deref(),
            Some("y")
        );
        let json = Headers(vec![("Content-Type", "application/json")]);
        assert_eq!(filter_body(config, &json, &["x", ""]), None);
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
            path(json!({"body": "b", "filters": [{"regex": "a", "replace": "b"}]})),
            "filters"
        );
        assert_eq!(path(json!({"filters": []})), "filters");
        assert_eq!(
            path(json!({"filters": [{"regex": "(", "replace": "b"}]})),
            "filters[0].regex"
        );
        assert_eq!(
            path(json!({"filters": [{"regex": "a", "replace": "b", "scope": "all"}]})),
            "filters[0].scope"
        );
        assert_eq!(
            path(json!({"filters": [{"regex": "(a)", "replace": "$2"}]})),
            "filters[0].replace"
        );
        assert!(path(json!({"vars": [["status", "~~~", 1]]})).starts_with("vars"));
        assert_eq!(path(json!({"vars": "status"})), "vars");
    }
}
