//! `mocking`: answers in the upstream's place with a configured example, or with one made
//! from a JSON Schema, optionally after a delay.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pylon_model::FieldError;
use pylon_plugin::{Call, FailurePolicy, Phases, Plugin, Reply, RequestCtx, Step, Template};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::header_ops::Scalar;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "mocking",
    priority: 10900,
    schema: schema_of::<MockingConfig>,
    build,
    credential: None,
    metadata: None,
};

/// One of `response_example` and `response_schema` is required.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MockingConfig {
    /// Seconds to wait before answering; none when 0 or less.
    #[serde(default)]
    delay: i64,
    /// The status of the answer.
    #[serde(default = "default_status")]
    #[schemars(range(min = 100))]
    response_status: u16,
    /// The answer's `Content-Type`: JSON, XML, plain text or HTML, with optional parameters.
    #[serde(default = "default_content_type")]
    content_type: String,
    /// The answer's body, with `$var`s.
    response_example: Option<String>,
    /// A JSON Schema whose `properties` shape a generated body (used without
    /// `response_example`): each property's `example`, or a random value of its `type`.
    #[schemars(with = "Option<Map<String, Value>>")]
    response_schema: Option<Value>,
    /// Add `x-mock-by: APISIX`, so that clients can tell a mock from the real thing.
    #[serde(default = "default_true")]
    with_mock_header: bool,
    /// Headers added to the answer, with `$var`s.
    response_headers: Option<std::collections::BTreeMap<String, Scalar>>,
}

fn default_status() -> u16 {
    200
}

fn default_content_type() -> String {
    "application/json;charset=utf8".into()
}

fn default_true() -> bool {
    true
}

/// How a generated body is written, by content type.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Format {
    Json,
    Xml,
    /// HTML: APISIX makes no body from a schema for it.
    Empty,
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: MockingConfig = parse(config)?;
    if config.response_status < 100 || config.response_status > 999 {
        return Err(FieldError::new(
            "response_status",
            "must be from 100 to 999",
        ));
    }
    let media_type = config.content_type.split(';').next().unwrap_or("");
    let format = match media_type {
        "application/json" | "text/plain" => Format::Json,
        "application/xml" | "text/xml" => Format::Xml,
        "text/html" => Format::Empty,
        _ => return Err(FieldError::new("content_type", "unsupported content type!")),
    };
    if config.content_type.chars().any(|c| c.is_control()) {
        return Err(FieldError::new("content_type", "unsupported content type!"));
    }
    let body = match (config.response_example, config.response_schema) {
        (Some(example), _) => Body::Example(Template::parse(&example)),
        (None, Some(Value::Object(schema))) => Body::Generated(schema, format),
        (None, Some(_)) => {
            return Err(FieldError::new("response_schema", "must be an object"));
        }
        (None, None) => {
            return Err(FieldError::new(
                "",
                "one of `response_example` and `response_schema` is required",
            ));
        }
    };
    let mut headers = Vec::new();
    for (name, value) in config.response_headers.iter().flatten() {
        let path = format!("response_headers.{name}");
        let value = value.text();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(FieldError::new(path, "invalid field character in header"));
        }
        if value.chars().any(|c| c.is_control()) {
            return Err(FieldError::new(path, "invalid value character in header"));
        }
        headers.push((name.clone(), Template::parse(&value)));
    }
    Ok(Arc::new(Mocking {
        delay: Duration::from_secs(config.delay.max(0).unsigned_abs()),
        status: config.response_status,
        content_type: config.content_type,
        with_mock_header: config.with_mock_header,
        headers,
        body,
    }))
}

enum Body {
    Example(Template),
    Generated(Map<String, Value>, Format),
}

struct Mocking {
    delay: Duration,
    status: u16,
    content_type: String,
    with_mock_header: bool,
    /// `response_headers`.
    headers: Vec<(String, Template)>,
    body: Body,
}

impl Plugin for Mocking {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::ACCESS
    }

    fn access<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let reply = self.reply(ctx);
        if self.delay.is_zero() {
            return Step::Reply(reply);
        }
        let delay = self.delay;
        Step::Call(Call {
            work: Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(Some(reply))
            }),
            // The wait is the plugin's own: the bound only has to be past it.
            timeout: delay + Duration::from_secs(1),
            policy: FailurePolicy::Closed {
                status: self.status,
            },
        })
    }
}

impl Mocking {
    fn reply(&self, ctx: &RequestCtx<'_>) -> Reply {
        let body = match &self.body {
            Body::Example(example) => Bytes::from(example.render(ctx).into_owned()),
            Body::Generated(schema, Format::Json) => {
                Bytes::from(Value::Object(object(schema)).to_string())
            }
            Body::Generated(schema, Format::Xml) => {
                let mut xml = String::new();
                write_xml(&mut xml, "data", &Value::Object(object(schema)));
                Bytes::from(xml)
            }
            Body::Generated(_, Format::Empty) => Bytes::new(),
        };
        let mut reply = Reply {
            status: self.status,
            headers: Vec::with_capacity(self.headers.len() + 2),
            body,
        }
        .header("Content-Type", self.content_type.clone());
        if self.with_mock_header {
            reply = reply.header("x-mock-by", "APISIX");
        }
        for (name, value) in &self.headers {
            let value: String = value
                .render(ctx)
                .chars()
                .filter(|c| !c.is_control())
                .collect();
            reply = reply.header(name.clone(), value);
        }
        reply
    }
}

/// An object with a value for each of the schema's `properties`.
fn object(schema: &Map<String, Value>) -> Map<String, Value> {
    let Some(Value::Object(properties)) = schema.get("properties") else {
        return Map::new();
    };
    properties
        .iter()
        .filter_map(|(name, property)| Some((name.clone(), value(property.as_object()?)?)))
        .collect()
}

/// A value for one property: its `example` when it is of the property's `type`, else a
/// random one. `None` for a property without a known type.
fn value(property: &Map<String, Value>) -> Option<Value> {
    let example = property.get("example");
    let kind = property.get("type")?.as_str()?.to_ascii_lowercase();
    Some(match kind.as_str() {
        "object" => Value::Object(object(property)),
        "array" => {
            let items = property.get("items")?.as_object()?;
            let count = fastrand::usize(1..=3);
            Value::Array((0..count).filter_map(|_| value(items)).collect())
        }
        "string" => match example {
            Some(Value::String(s)) => Value::String(s.clone()),
            _ => {
                let length = fastrand::usize(1..=10);
                Value::String((0..length).map(|_| fastrand::lowercase()).collect())
            }
        },
        "number" => match example {
            Some(Value::Number(n)) => Value::Number(n.clone()),
            _ => serde_json::json!(fastrand::f64() * 10000.0),
        },
        "integer" => match example.and_then(Value::as_f64) {
            Some(n) => serde_json::json!(n.floor() as i64),
            None => serde_json::json!(fastrand::i64(1..=10000)),
        },
        "boolean" => match example {
            Some(Value::Bool(b)) => Value::Bool(*b),
            _ => Value::Bool(fastrand::bool()),
        },
        _ => return None,
    })
}

/// `value` as XML under `tag`: an object's fields become child elements, an array repeats
/// its tag once per item.
fn write_xml(out: &mut String, tag: &str, value: &Value) {
    if let Value::Array(items) = value {
        for item in items {
            write_xml(out, tag, item);
        }
        return;
    }
    out.push('<');
    out.push_str(tag);
    out.push('>');
    match value {
        Value::Object(fields) => {
            for (name, field) in fields {
                write_xml(out, name, field);
            }
        }
        Value::String(text) => escape_xml(out, text),
        other => escape_xml(out, &other.to_string()),
    }
    out.push_str("</");
    out.push_str(tag);
    out.push('>');
}

fn escape_xml(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use pylon_plugin::{ChainBuilder, Entry, Meta, RequestPhase};
    use serde_json::json;

    use super::*;
    use crate::testing::{build, refusal, TestRequest};

    fn reply(config: Value) -> Reply {
        let plugin = build(&DESCRIPTOR, config).unwrap();
        let request = TestRequest::get("/p?name=ann");
        let mut ctx = RequestCtx::new(&request, "r1", None);
        let step = plugin.access(&mut ctx);
        match step {
            Step::Reply(reply) => reply,
            _ => panic!("mocking answers at once without a delay"),
        }
    }

    fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
        reply
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_example_is_answered_with_its_headers() {
        let answer = reply(json!({
            "response_example": "{\"hello\": \"$arg_name\"}",
            "response_status": 201,
            "response_headers": {"X-Env": "test", "X-N": 1}
        }));
        assert_eq!(answer.status, 201);
        assert_eq!(&answer.body[..], b"{\"hello\": \"ann\"}");
        assert_eq!(
            header(&answer, "content-type"),
            Some("application/json;charset=utf8")
        );
        assert_eq!(header(&answer, "x-mock-by"), Some("APISIX"));
        assert_eq!(header(&answer, "x-env"), Some("test"));
        assert_eq!(header(&answer, "x-n"), Some("1"));
        let quiet = reply(json!({"response_example": "x", "with_mock_header": false}));
        assert_eq!(header(&quiet, "x-mock-by"), None);
    }

    #[test]
    fn a_body_is_made_from_the_schema() {
        let schema = json!({
            "type": "object",
            "properties": {
                "id": {"type": "integer", "example": 7.9},
                "name": {"type": "string", "example": "ann"},
                "score": {"type": "number"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "admin": {"type": "boolean", "example": false},
                "address": {"type": "object", "properties": {"city": {"type": "string", "example": "Oslo"}}},
                "unknown": {"type": "tuple"}
            }
        });
        let answer = reply(json!({"response_schema": schema}));
        let body: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["id"], 7);
        assert_eq!(body["name"], "ann");
        assert!(body["score"].is_number());
        let tags = body["tags"].as_array().unwrap();
        assert!((1..=3).contains(&tags.len()) && tags.iter().all(Value::is_string));
        assert_eq!(body["admin"], false);
        assert_eq!(body["address"], json!({"city": "Oslo"}));
        assert!(body.get("unknown").is_none());

        let xml = reply(json!({
            "content_type": "application/xml",
            "response_schema": {"properties": {
                "a": {"type": "string", "example": "<&>"},
                "b": {"type": "object", "properties": {"c": {"type": "integer", "example": 1}}}
            }}
        }));
        assert_eq!(
            &xml.body[..],
            b"<data><a>&lt;&amp;&gt;</a><b><c>1</c></b></data>"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_answer_comes_after_the_delay() {
        let plugin = build(&DESCRIPTOR, json!({"delay": 2, "response_example": "late"})).unwrap();
        let mut chain = ChainBuilder::new();
        chain.add(Entry::new(plugin, DESCRIPTOR.priority, Meta::default()));
        let chain = chain.build();
        let request = TestRequest::get("/");
        let mut ctx = RequestCtx::new(&request, "r1", None);
        let started = tokio::time::Instant::now();
        let reply = chain
            .run(RequestPhase::Access, &mut ctx, None)
            .await
            .unwrap();
        assert_eq!((reply.status, &reply.body[..]), (200, &b"late"[..]));
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    #[test]
    fn bad_configurations_are_refused_with_their_path() {
        let path = |config| refusal(&DESCRIPTOR, config).path;
        assert_eq!(path(json!({})), "");
        assert_eq!(
            path(json!({"response_example": "x", "content_type": "image/png"})),
            "content_type"
        );
        assert_eq!(
            path(json!({"response_example": "x", "response_status": 99})),
            "response_status"
        );
        assert_eq!(path(json!({"response_schema": []})), "response_schema");
        assert_eq!(
            path(json!({"response_example": "x", "response_headers": {"X A": "1"}})),
            "response_headers.X A"
        );
        assert_eq!(
            path(json!({"response_example": "x", "response_headers": {"X-A": true}})),
            "response_headers.X-A"
        );
    }
}
