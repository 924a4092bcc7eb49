//! The record a logger writes for a request, shared by every logger (`file-logger`,
//! `http-logger`, `tcp-logger`, `udp-logger`, `syslog`): the fields `log_format` names (APISIX's
//! `log_format`, from the plugin's own configuration or else its `plugin_metadata`) or a default
//! record, for the requests `match` selects.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pylon_model::expr::Expr;
use pylon_model::FieldError;
use pylon_plugin::{LogCtx, Template};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::parse;

/// The most `match` alternatives (APISIX's `maxItems`).
const MAX_MATCH: usize = 20;

/// The fields every logger's configuration has for what it records.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordConfig {
    /// The record's fields: a string starting with `$` is that request variable (left out
    /// when the request has none), a string with `$var`s in it is rendered, anything else is
    /// written as given. Unset: the plugin metadata's `log_format`, else a default record.
    log_format: Option<Map<String, Value>>,
    /// Not supported yet: only `false`.
    #[serde(default)]
    include_req_body: bool,
    /// Not supported yet: only `false`.
    #[serde(default)]
    include_resp_body: bool,
    /// `vars` expressions: only requests that match one of them are logged. An empty list
    /// matches no request.
    #[serde(rename = "match")]
    #[schemars(with = "Option<Vec<Vec<Value>>>", length(max = 20))]
    matches: Option<Vec<Value>>,
}

impl RecordConfig {
    /// The names of its fields, to tell them from a logger's own.
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "log_format",
        "include_req_body",
        "include_resp_body",
        "match",
    ];
}

/// What a logger records, built from its [`RecordConfig`] and its metadata.
pub(crate) struct Records {
    /// The route's `log_format`, else the metadata's; `None`: the default record.
    format: Option<Arc<LogFormat>>,
    /// Alternatives: a request that matches any one is logged. `None`: every request.
    matches: Option<Vec<Expr>>,
}

impl Records {
    pub(crate) fn new(
        config: RecordConfig,
        metadata: Option<&LoggerMetadata>,
    ) -> Result<Records, FieldError> {
        for (field, set) in [
            ("include_req_body", config.include_req_body),
            ("include_resp_body", config.include_resp_body),
        ] {
            if set {
                return Err(FieldError::new(
                    field,
                    "logging bodies is not supported yet",
                ));
            }
        }
        let matches = match config.matches {
            Some(matches) if matches.len() > MAX_MATCH => {
                return Err(FieldError::new(
                    "match",
                    format!("must have at most {MAX_MATCH} expressions"),
                ));
            }
            Some(matches) => Some(
                matches
                    .iter()
                    .enumerate()
                    .map(|(i, expr)| {
                        Expr::parse(expr).map_err(|e| e.within(&format!("match[{i}]")))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            None => None,
        };
        let format = match config.log_format {
            Some(format) => Some(Arc::new(LogFormat::parse(format))),
            None => metadata.and_then(|m| m.format.clone()),
        };
        Ok(Records { format, matches })
    }

    /// The record of a request, `None` when `match` leaves it out.
    pub(crate) fn record(&self, ctx: &LogCtx<'_, '_>) -> Option<Value> {
        let vars = LogVars(ctx);
        let selected = self.matches.as_ref().is_none_or(|alternatives| {
            alternatives
                .iter()
                .any(|expr| pylon_router::eval_vars(expr, &vars))
        });
        if !selected {
            return None;
        }
        Some(match &self.format {
            Some(format) => format.render(&vars),
            None => default_record(ctx),
        })
    }
}

/// A parsed `log_format`.
pub(crate) struct LogFormat(Vec<(String, Field)>);

impl LogFormat {
    fn parse(format: Map<String, Value>) -> LogFormat {
        LogFormat(
            format
                .into_iter()
                .map(|(name, value)| (name, Field::parse(value)))
                .collect(),
        )
    }

    fn render(&self, vars: &LogVars<'_, '_, '_>) -> Value {
        Value::Object(
            self.0
                .iter()
                .filter_map(|(name, field)| Some((name.clone(), field.render(vars)?)))
                .collect(),
        )
    }
}

/// One field of `log_format`.
enum Field {
    Value(Value),
    /// `$name`: the variable's value, the field left out without one (as APISIX's).
    Var(String),
    Text(Template),
}

impl Field {
    fn parse(value: Value) -> Field {
        let Value::String(text) = value else {
            return Field::Value(value);
        };
        if let Some(name) = text.strip_prefix('$').filter(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }) {
            return Field::Var(name.to_owned());
        }
        let template = Template::parse(&text);
        if template.is_literal() {
            Field::Value(Value::String(text))
        } else {
            Field::Text(template)
        }
    }

    fn render(&self, vars: &LogVars<'_, '_, '_>) -> Option<Value> {
        match self {
            Field::Value(value) => Some(value.clone()),
            Field::Var(name) => vars.var(name).map(|v| Value::String(v.into_owned())),
            Field::Text(template) => Some(Value::String(template.render(vars).into_owned())),
        }
    }
}

/// A logger's `plugin_metadata`: the `log_format` of the routes that set none, and (for the
/// loggers that send in batches) how many records may wait for their destination.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LoggerMetadataConfig {
    /// The record's fields for every route whose logger sets no `log_format` of its own.
    log_format: Option<Map<String, Value>>,
    /// Records waiting for the destination at most (per destination); past them, records
    /// are dropped and counted. Only for the loggers that send in batches.
    #[schemars(range(min = 1))]
    max_pending_entries: Option<usize>,
}

/// The metadata, parsed.
pub(crate) struct LoggerMetadata {
    format: Option<Arc<LogFormat>>,
    pub max_pending_entries: Option<usize>,
}

/// Parses a logger's metadata; `batches` says whether the logger has a queue to bound.
pub(crate) fn parse_metadata(
    metadata: &Value,
    batches: bool,
) -> Result<LoggerMetadata, FieldError> {
    let config: LoggerMetadataConfig = parse(metadata)?;
    match config.max_pending_entries {
        Some(_) if !batches => {
            return Err(FieldError::new(
                "max_pending_entries",
                "is only for the loggers that send in batches",
            ))
        }
        Some(0) => return Err(FieldError::new("max_pending_entries", "must be at least 1")),
        _ => {}
    }
    Ok(LoggerMetadata {
        format: config.log_format.map(|f| Arc::new(LogFormat::parse(f))),
        max_pending_entries: config.max_pending_entries,
    })
}

/// APISIX's essentials, from what the log phase knows.
fn default_record(ctx: &LogCtx<'_, '_>) -> Value {
    let request = ctx.request;
    let var = |name| request.var(name).map(|v| v.into_owned());
    let mut headers = Map::new();
    request.for_each_header(&mut |name, value| {
        let name = name.to_ascii_lowercase();
        let value = Value::String(String::from_utf8_lossy(value).into_owned());
        // A repeated header is a list of its values, as APISIX's.
        match headers.get_mut(&name) {
            Some(Value::Array(values)) => values.push(value),
            Some(first) => *first = Value::Array(vec![first.take(), value]),
            None => {
                headers.insert(name, value);
            }
        }
    });
    let uri = var("request_uri");
    let url = match (var("scheme"), request.host(), &uri) {
        (Some(scheme), Some(host), Some(uri)) => Some(match var("server_port") {
            Some(port) => format!("{scheme}://{host}:{port}{uri}"),
            None => format!("{scheme}://{host}{uri}"),
        }),
        _ => None,
    };
    let start = SystemTime::now()
        .checked_sub(ctx.latency)
        .and_then(|start| start.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    let mut record = json!({
        "request": {
            "method": request.method(),
            "uri": uri,
            "url": url,
            "headers": headers,
        },
        "response": {"status": ctx.status, "size": ctx.bytes_sent},
        "client_ip": request.client_ip().to_string(),
        "route_id": request.route_id(),
        "start_time": start.as_millis() as u64,
        "latency": millis(ctx.latency),
    });
    let more = [
        ("upstream_status", ctx.upstream_status.map(Value::from)),
        ("upstream", ctx.upstream_addr.map(|a| a.to_string().into())),
        ("service_id", request.service_id().map(Value::from)),
        (
            "consumer",
            request
                .consumer()
                .map(|c| json!({"username": c.username()})),
        ),
    ];
    for (name, value) in more {
        if let Some(value) = value {
            record[name] = value;
        }
    }
    record
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The request's variables, and those of its answer that nginx's log phase has: `status`,
/// `upstream_status`, `upstream_addr`, `bytes_sent`, `request_time` (seconds).
pub(crate) struct LogVars<'c, 'a, 'r>(pub &'c LogCtx<'a, 'r>);

impl RequestView for LogVars<'_, '_, '_> {
    fn path(&self) -> &str {
        self.0.request.path()
    }

    fn host(&self) -> Option<&str> {
        self.0.request.host()
    }

    fn method(&self) -> &str {
        self.0.request.method()
    }

    fn remote_addr(&self) -> std::net::IpAddr {
        self.0.request.client_ip()
    }

    fn for_each_header(&self, each: &mut dyn FnMut(&str, &[u8])) {
        self.0.request.for_each_header(each);
    }

    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        let ctx = self.0;
        let value = match name {
            "status" => ctx.status.to_string(),
            "upstream_status" => ctx.upstream_status?.to_string(),
            "upstream_addr" => ctx.upstream_addr?.to_string(),
            "bytes_sent" => ctx.bytes_sent.to_string(),
            "request_time" => format!("{:.3}", ctx.latency.as_secs_f64()),
            _ => return ctx.request.var(name),
        };
        Some(value.into())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use pylon_plugin::RequestCtx;
    use serde_json::json;

    use super::*;

    pub(crate) fn log_ctx<'a, 'r>(request: &'a RequestCtx<'r>, status: u16) -> LogCtx<'a, 'r> {
        LogCtx {
            request,
            status,
            upstream_status: Some(status),
            upstream_addr: Some(([192, 0, 2, 9], 8080).into()),
            bytes_sent: 321,
            latency: Duration::from_micros(12_345),
            metrics: Default::default(),
        }
    }

    fn records(config: Value) -> Records {
        Records::new(parse(&config).unwrap(), None).unwrap()
    }

    use crate::testing::TestRequest;

    #[test]
    fn bad_record_fields_are_refused_with_their_field() {
        let cases = [
            (json!({"include_req_body": true}), "include_req_body"),
            (json!({"include_resp_body": true}), "include_resp_body"),
            (json!({"log_format": ["$uri"]}), "log_format"),
            (json!({"match": {}}), "match"),
            (json!({"match": [[["uri", "~~", "("]]]}), "match[0]"),
            (json!({"match": vec![json!([]); 21]}), "match"),
        ];
        for (config, field) in cases {
            let error = parse::<RecordConfig>(&config)
                .and_then(|c| Records::new(c, None))
                .err()
                .unwrap_or_else(|| panic!("{config} was accepted"));
            assert!(error.path.starts_with(field), "{config}: {error:?}");
        }
        let error = Records::new(parse(&json!({"include_resp_body": true})).unwrap(), None)
            .err()
            .unwrap();
        assert!(error.message.contains("not supported yet"), "{error:?}");
    }

    #[test]
    fn log_format_renders_variables_and_keeps_the_rest() {
        let records = records(json!({"log_format": {
            "host": "$host",
            "client": "$remote_addr",
            "status": "$status",
            "upstream": "$upstream_addr",
            "time": "$request_time",
            "who": "user ${http_x_user} from $remote_addr",
            "missing": "$http_x_absent",
            "price": "5 $",
            "fixed": 7,
            "nested": {"a": "$host"}
        }}));
        let request = TestRequest::get("/p?q=1").header("X-User", "ann");
        let ctx = RequestCtx::new(&request, "r1", None);
        assert_eq!(
            records.record(&log_ctx(&ctx, 201)),
            Some(json!({
                "host": "example.com",
                "client": "192.0.2.7",
                "status": "201",
                "upstream": "192.0.2.9:8080",
                "time": "0.012",
                "who": "user ann from 192.0.2.7",
                "price": "5 $",
                "fixed": 7,
                "nested": {"a": "$host"}
            }))
        );
    }

    #[test]
    fn the_metadata_format_serves_the_routes_without_their_own() {
        let metadata =
            parse_metadata(&json!({"log_format": {"m": "$request_method"}}), true).unwrap();
        let request = TestRequest::get("/p");
        let ctx = RequestCtx::new(&request, "r1", None);
        let own = Records::new(
            parse(&json!({"log_format": {"own": "$uri"}})).unwrap(),
            Some(&metadata),
        )
        .unwrap();
        assert_eq!(own.record(&log_ctx(&ctx, 200)), Some(json!({"own": "/p"})));
        let none = Records::new(parse(&json!({})).unwrap(), Some(&metadata)).unwrap();
        assert_eq!(none.record(&log_ctx(&ctx, 200)), Some(json!({"m": "GET"})));

        for (metadata, batches, field) in [
            (
                json!({"max_pending_entries": 0}),
                true,
                "max_pending_entries",
            ),
            (
                json!({"max_pending_entries": 5}),
                false,
                "max_pending_entries",
            ),
            (json!({"log_format": 1}), true, "log_format"),
            (json!({"other": 1}), true, "other"),
        ] {
            let error = parse_metadata(&metadata, batches).err().unwrap();
            assert_eq!(error.path, field, "{metadata}: {error:?}");
        }
    }

    #[test]
    fn the_default_record_has_the_essentials() {
        let records = records(json!({}));
        let request = TestRequest::get("/p?q=1")
            .header("Accept", "a")
            .header("accept", "b");
        let ctx = RequestCtx::new(&request, "r1", Some("s1"));
        let record = records.record(&log_ctx(&ctx, 200)).unwrap();
        assert_eq!(record["request"]["method"], "GET");
        assert_eq!(record["request"]["uri"], "/p?q=1");
        assert_eq!(record["request"]["url"], "http://example.com/p?q=1");
        assert_eq!(record["request"]["headers"]["accept"], json!(["a", "b"]));
        assert_eq!(record["response"], json!({"status": 200, "size": 321}));
        assert_eq!(record["upstream_status"], 200);
        assert_eq!(record["upstream"], "192.0.2.9:8080");
        assert_eq!(record["client_ip"], "192.0.2.7");
        assert_eq!(
            (&record["route_id"], &record["service_id"]),
            (&json!("r1"), &json!("s1"))
        );
        assert_eq!(record["latency"], 12.345);
        assert!(record["start_time"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(record.get("consumer").is_none());
    }

    #[test]
    fn match_logs_only_the_requests_one_alternative_selects() {
        let records = records(json!({"match": [
            [["arg_name", "==", "jack"]],
            [["status", ">=", 500], ["uri", "~~", "^/api/"]]
        ]}));
        let cases = [
            ("/x?name=jack", 200, true),
            ("/x?name=jill", 200, false),
            ("/api/a", 502, true),
            ("/api/a", 200, false),
            ("/other", 502, false),
        ];
        for (target, status, logged) in cases {
            let request = TestRequest::get(target);
            let ctx = RequestCtx::new(&request, "r1", None);
            assert_eq!(
                records.record(&log_ctx(&ctx, status)).is_some(),
                logged,
                "{target} {status}"
            );
        }
        let none = self::records(json!({"match": []}));
        let request = TestRequest::get("/");
        let ctx = RequestCtx::new(&request, "r1", None);
        assert!(
            none.record(&log_ctx(&ctx, 200)).is_none(),
            "an empty match selects nothing"
        );
    }
}
