//! `client-control`: refuses a request whose declared body is larger than `max_body_size`,
//! before any of the body is read.

use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "client-control",
    priority: 22000,
    schema: schema_of::<ClientControlConfig>,
    build,
    credential: None,
    metadata: None,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ClientControlConfig {
    /// The largest request body allowed, in bytes; a larger `Content-Length` gets `413`.
    /// `0` or unset: no limit.
    max_body_size: Option<u64>,
}

fn build(config: &Value, _env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: ClientControlConfig = parse(config)?;
    Ok(Arc::new(ClientControl {
        max_body_size: config.max_body_size.filter(|&max| max > 0),
    }))
}

struct ClientControl {
    max_body_size: Option<u64>,
}

impl Plugin for ClientControl {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let Some(max) = self.max_body_size else {
            return Step::Continue;
        };
        // A `Content-Length` that is not a number is the codec's to refuse, not ours.
        let declared = ctx
            .header("content-length")
            .and_then(|len| len.trim().parse::<u64>().ok());
        match declared {
            Some(len) if len > max => Step::Reply(Reply::status(413)),
            _ => Step::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{build as build_plugin, refusal, replied, TestRequest};

    fn rewrite(config: Value, request: &TestRequest) -> Option<u16> {
        let plugin = build_plugin(&DESCRIPTOR, config).unwrap();
        let mut ctx = RequestCtx::new(request, "r1", None);
        replied(plugin.rewrite(&mut ctx)).map(|reply| reply.status)
    }

    fn post(len: &str) -> TestRequest {
        TestRequest::get("/upload")
            .method("POST")
            .header("Content-Length", len)
    }

    #[test]
    fn a_declared_body_over_the_limit_gets_413() {
        let config = json!({"max_body_size": 1024});
        assert_eq!(rewrite(config.clone(), &post("1025")), Some(413));
        assert_eq!(
            rewrite(config.clone(), &post("18446744073709551615")),
            Some(413)
        );
        assert_eq!(rewrite(config.clone(), &post("1024")), None);
        assert_eq!(rewrite(config.clone(), &post("0")), None);
        assert_eq!(rewrite(config, &TestRequest::get("/")), None);
    }

    #[test]
    fn zero_or_no_limit_lets_every_body_through() {
        assert_eq!(
            rewrite(json!({"max_body_size": 0}), &post("999999999")),
            None
        );
        assert_eq!(rewrite(json!({}), &post("999999999")), None);
    }

    #[test]
    fn bad_configurations_are_refused_where_they_are_wrong() {
        for bad in [json!(-1), json!(1.5), json!("10")] {
            let err = refusal(&DESCRIPTOR, json!({ "max_body_size": bad }));
            assert_eq!(err.path, "max_body_size", "{bad}");
        }
        assert_eq!(
            refusal(&DESCRIPTOR, json!({"max_size": 1})).path,
            "max_size"
        );
    }
}
