//! `key-auth`: identifies the consumer by an API key in a header or the query string.

use std::sync::Arc;

use pylon_model::FieldError;
use pylon_plugin::{Phases, Plugin, Reply, RequestCtx, Step};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{parse, schema_of};
use crate::credentials::{Credentials, Secret};
use crate::descriptor::{BuildEnv, CredentialSpec, Descriptor};
use crate::query;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "key-auth",
    priority: 2500,
    schema: schema_of::<KeyAuthConfig>,
    build,
    credential: Some(CredentialSpec {
        schema: schema_of::<KeyAuthCredential>,
        parse: parse_credential,
        secret_fields: &["key"],
    }),
    metadata: None,
};

/// `key-auth` on a route: where the key is looked for.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct KeyAuthConfig {
    /// The request header that carries the key.
    #[serde(default = "default_name")]
    header: String,
    /// The query argument that carries the key when the header is absent.
    #[serde(default = "default_name")]
    query: String,
    /// Remove the key from the request before it goes upstream.
    #[serde(default)]
    hide_credentials: bool,
}

fn default_name() -> String {
    "apikey".into()
}

/// `key-auth` on a consumer: its key.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct KeyAuthCredential {
    /// The consumer's API key; unique among consumers.
    #[schemars(length(min = 1))]
    key: String,
}

fn parse_credential(config: &Value) -> Result<(String, Secret), FieldError> {
    let credential: KeyAuthCredential = parse(config)?;
    if credential.key.is_empty() {
        return Err(FieldError::new("key", "must not be empty"));
    }
    Ok((credential.key, Arc::new(())))
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let config: KeyAuthConfig = parse(config)?;
    Ok(Arc::new(KeyAuth {
        config,
        credentials: env.credentials.clone(),
    }))
}

struct KeyAuth {
    config: KeyAuthConfig,
    credentials: Arc<Credentials>,
}

impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        // The key is only looked up, never kept: it stays borrowed from the request.
        let (found, in_header) = match ctx.header(&self.config.header) {
            Some(key) => (self.credentials.find(DESCRIPTOR.name, &key), true),
            None => match ctx.var(&format!("arg_{}", self.config.query)) {
                Some(key) => (self.credentials.find(DESCRIPTOR.name, &key), false),
                None => return Step::Reply(Reply::message(401, "Missing API key in request")),
            },
        };
        let Some(credential) = found else {
            return Step::Reply(Reply::message(401, "Invalid API key in request"));
        };
        ctx.set_consumer(credential.consumer.clone());
        if self.config.hide_credentials {
            if in_header {
                ctx.edits.headers.remove(self.config.header.clone());
            } else {
                let target = ctx.var("upstream_uri").map(|t| t.into_owned());
                if let Some(target) = target {
                    ctx.edits.uri = Some(query::without_arg(&target, &self.config.query));
                }
            }
        }
        Step::Continue
    }
}
