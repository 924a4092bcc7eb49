//! `request-validation`: refuses requests whose headers do not satisfy a JSON Schema.
//!
//! The headers are checked as one JSON object, as APISIX does: `{"User-Agent": "curl/8",
//! ...}`. The gateway cannot list a request's headers, only look them up, so the object
//! holds the headers the schema names (in `properties` and `required`, by any case) and a
//! schema that would need the others (`additionalProperties`, `patternProperties`, ...) is
//! refused when built rather than checked wrongly.
//!
//! `body_schema` is refused too: plugins cannot read the request body yet, and a body schema
//! accepted but not enforced would let through what it was written to stop.

use std::sync::Arc;

use jsonschema::{Draft, PatternOptions, Validator};
use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "request-validation",
    priority: 2800,
    schema: schema_of::<RequestValidationConfig>,
    build,
    credential: None,
    metadata: None,
};

/// The schema keywords a header schema may use at its top level: those that name headers,
/// and annotations.
const HEADER_SCHEMA_KEYWORDS: &[&str] = &[
    "type",
    "properties",
    "required",
    "definitions",
    "$defs",
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
];

/// At least one of `header_schema` and `body_schema`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RequestValidationConfig {
    /// A JSON Schema (draft 7 unless `$schema` says otherwise) the request headers must
    /// satisfy, as an object of header name to value; names match in any case.
    header_schema: Option<Map<String, Value>>,
    /// A JSON Schema for the request body. Not supported yet: refused.
    body_schema: Option<Map<String, Value>>,
    /// The largest body read for `body_schema`, in bytes.
    #[serde(default = "default_max_req_body_size")]
    #[schemars(range(min = 1))]
    max_req_body_size: u64,
    /// The status of a refused request.
    #[serde(default = "default_rejected_code")]
    #[schemars(range(min = 200, max = 599))]
    rejected_code: u16,
    /// The body of a refused request. Unset: what the schema found wrong.
    #[schemars(length(min = 1, max = 256))]
    rejected_msg: Option<String>,
}

fn default_max_req_body_size() -> u64 {
    64 << 20
}

fn default_rejected_code() -> u16 {
    400
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: RequestValidationConfig = parse(config)?;
    if config.body_schema.is_some() {
        return Err(FieldError::new(
            "body_schema",
            "body validation is not supported yet",
        ));
    }
    let Some(header_schema) = config.header_schema else {
        return Err(FieldError::new(
            "",
            "one of `header_schema` and `body_schema` is required",
        ));
    };
    if config.max_req_body_size == 0 {
        return Err(FieldError::new("max_req_body_size", "must be at least 1"));
    }
    if !(200..=599).contains(&config.rejected_code) {
        return Err(FieldError::new("rejected_code", "must be 200 to 599"));
    }
    if let Some(msg) = &config.rejected_msg {
        if !(1..=256).contains(&msg.chars().count()) {
            return Err(FieldError::new(
                "rejected_msg",
                "must be 1 to 256 characters",
            ));
        }
    }
    let headers = named_headers(&header_schema)?;
    let schema = Value::Object(header_schema);
    let validator = jsonschema::options()
        .with_draft(Draft::Draft7)
        // Linear-time matching: `pattern` runs on what clients send.
        .with_pattern_options(PatternOptions::regex())
        .build(&schema)
        // Checked against its meta-schema, the schema is the instance: the error's instance
        // path is the place in the schema.
        .map_err(|e| FieldError::new(join("header_schema", e.instance_path()), e.to_string()))?;
    Ok(Arc::new(RequestValidation {
        headers,
        validator,
        rejected_code: config.rejected_code,
        rejected_msg: config.rejected_msg,
    }))
}

/// The header names `schema` looks at, or why it cannot be checked from them alone.
fn named_headers(schema: &Map<String, Value>) -> Result<Vec<String>, FieldError> {
    if let Some(keyword) = schema
        .keys()
        .find(|k| !HEADER_SCHEMA_KEYWORDS.contains(&k.as_str()))
    {
        return Err(FieldError::new(
            format!("header_schema.{keyword}"),
            "not supported in a header schema: only the headers named in `properties` \
             and `required` are checked",
        ));
    }
    let mut names: Vec<String> = Vec::new();
    if let Some(Value::Object(properties)) = schema.get("properties") {
        names.extend(properties.keys().cloned());
    }
    if let Some(Value::Array(required)) = schema.get("required") {
        names.extend(required.iter().filter_map(Value::as_str).map(str::to_owned));
    }
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

fn join(field: &str, pointer: &jsonschema::paths::Location) -> String {
    pointer
        .as_str()
        .split('/')
        .filter(|s| !s.is_empty())
        .fold(field.to_owned(), |path, step| format!("{path}.{step}"))
}

struct RequestValidation {
    /// The headers the schema names, as it spells them.
    headers: Vec<String>,
    validator: Validator,
    rejected_code: u16,
    rejected_msg: Option<String>,
}

impl RequestValidation {
    fn refusal(&self, error: &jsonschema::ValidationError<'_>) -> Reply {
        let body = match &self.rejected_msg {
            Some(msg) => msg.clone(),
            None => match error.instance_path().as_str() {
                "" => error.to_string(),
                at => format!("header {}: {error}", at.trim_start_matches('/')),
            },
        };
        Reply {
            status: self.rejected_code,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: body.into(),
        }
    }
}

impl Plugin for RequestValidation {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let headers: Map<String, Value> = self
            .headers
            .iter()
            .filter_map(|name| Some((name.clone(), Value::from(ctx.header(name)?.into_owned()))))
            .collect();
        match self.validator.validate(&Value::Object(headers)) {
            Ok(()) => Step::Continue,
            Err(error) => Step::Reply(self.refusal(&error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{build as build_plugin, refusal, replied, TestRequest};

    fn rewrite(config: Value, request: &TestRequest) -> Option<Reply> {
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let mut ctx = RequestCtx::new(request, "r1", None);
        replied(plugin.rewrite(&mut ctx))
    }

    fn user_agent_schema() -> Value {
        json!({
            "header_schema": {
                "type": "object",
                "required": ["User-Agent", "X-Version"],
                "properties": {
                    "User-Agent": {"type": "string", "pattern": "^curl/"},
                    "X-Version": {"enum": ["1", "2"]},
                    "X-Token": {"type": "string", "minLength": 8, "maxLength": 16},
                },
            }
        })
    }

    #[test]
    fn headers_that_satisfy_the_schema_pass_in_any_case() {
        let request = TestRequest::get("/")
            .header("user-agent", "curl/8.5")
            .header("X-VERSION", "2")
            .header("X-Token", "abcdefgh");
        assert_eq!(rewrite(user_agent_schema(), &request), None);
    }

    #[test]
    fn a_missing_or_wrong_header_gets_400_saying_what() {
        let missing = TestRequest::get("/").header("User-Agent", "curl/8.5");
        let reply = rewrite(user_agent_schema(), &missing).unwrap();
        assert_eq!(reply.status, 400);
        assert_eq!(reply.body, r#""X-Version" is a required property"#);

        let wrong = TestRequest::get("/")
            .header("User-Agent", "curl/8.5")
            .header("X-Version", "1")
            .header("X-Token", "short");
        let reply = rewrite(user_agent_schema(), &wrong).unwrap();
        assert_eq!(reply.status, 400);
        let body = String::from_utf8_lossy(&reply.body);
        assert!(body.starts_with("header X-Token: "), "{body}");
        assert!(body.contains("shorter than 8"), "{body}");

        let pattern = TestRequest::get("/")
            .header("User-Agent", "Mozilla/5.0")
            .header("X-Version", "1");
        assert!(rewrite(user_agent_schema(), &pattern).is_some());
    }

    #[test]
    fn the_configured_code_and_message() {
        let mut config = user_agent_schema();
        config["rejected_code"] = json!(403);
        config["rejected_msg"] = json!("customize reject message");
        let reply = rewrite(config, &TestRequest::get("/")).unwrap();
        assert_eq!(reply.status, 403);
        assert_eq!(reply.body, "customize reject message");
    }

    #[test]
    fn a_body_schema_is_refused_rather_than_left_unchecked() {
        let err = refusal(
            &DESCRIPTOR,
            json!({"body_schema": {"type": "object", "required": ["id"]}}),
        );
        assert_eq!(
            (err.path.as_str(), err.message.as_str()),
            ("body_schema", "body validation is not supported yet")
        );
    }

    #[test]
    fn bad_configurations_are_refused_where_they_are_wrong() {
        let schema = json!({"type": "object"});
        let cases = [
            (json!({}), ""),
            (json!({"header_schema": "x"}), "header_schema"),
            (
                json!({"header_schema": {"additionalProperties": false}}),
                "header_schema.additionalProperties",
            ),
            (
                json!({"header_schema": {"properties": {"X-A": {"type": "strin"}}}}),
                "header_schema.properties.X-A.type",
            ),
            (
                json!({"header_schema": schema, "rejected_code": 600}),
                "rejected_code",
            ),
            (
                json!({"header_schema": schema, "rejected_msg": ""}),
                "rejected_msg",
            ),
            (
                json!({"header_schema": schema, "max_req_body_size": 0}),
                "max_req_body_size",
            ),
        ];
        for (config, path) in cases {
            assert_eq!(refusal(&DESCRIPTOR, config.clone()).path, path, "{config}");
        }
    }

    #[test]
    fn a_remote_reference_is_refused_without_fetching_it() {
        let config = json!({"header_schema": {
            "properties": {"X-A": {"$ref": "http://schemas.invalid/x.json"}},
        }});
        assert!(refusal(&DESCRIPTOR, config)
            .path
            .starts_with("header_schema"));
    }
}
