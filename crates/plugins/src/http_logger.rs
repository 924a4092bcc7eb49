//! `http-logger`: POSTs the records of the requests `match` selects to an HTTP server, in
//! batches: a JSON array of records (`concat_method: json`) or one record per line
//! (`new_line`). See [`crate::batch`] for how batches gather, go and are retried, and
//! [`crate::log_record`] for the records.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pylon_model::FieldError;
use pylon_plugin::Plugin;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::batch::{Counts, Destinations};
use crate::descriptor::{BuildEnv, Descriptor};
use crate::logger::{self, json_array, Logger};
use crate::outbound::Endpoint;
use crate::post::Post;

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "http-logger",
    priority: 410,
    schema: logger::schema::<HttpLoggerConfig>,
    build,
    credential: None,
    metadata: Some(logger::METADATA),
};

/// What became of its entries since the process started (`/v1/status`).
pub(crate) static COUNTS: Counts = Counts::new();
static DESTINATIONS: Destinations<Destination> = Destinations::new();

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct HttpLoggerConfig {
    /// Where the batches are POSTed: `http://host[:port][/path][?query]`. (`https` is not
    /// supported yet.)
    uri: String,
    /// The `Authorization` header's value, if the server wants one.
    auth_header: Option<String>,
    /// Seconds each POST may take, connecting and reading the answer included.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1))]
    timeout: u64,
    /// How a batch's records are joined: `json`, one JSON array; `new_line`, one record per
    /// line.
    #[serde(default)]
    concat_method: ConcatMethod,
    /// Whether an `https` server's certificate is verified. `https` is not supported yet:
    /// only `false`.
    #[serde(default)]
    ssl_verify: bool,
}

fn default_timeout() -> u64 {
    3
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum ConcatMethod {
    #[default]
    Json,
    NewLine,
}

/// What tells one destination from another: instances configured alike share it.
#[derive(Debug, Clone, PartialEq)]
struct Destination {
    uri: String,
    auth_header: Option<String>,
    timeout: u64,
    concat_method: ConcatMethod,
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let (config, records, batch) =
        logger::parse_config::<HttpLoggerConfig>(config, env, "http logger")?;
    let endpoint = Endpoint::parse(&config.uri).map_err(|e| FieldError::new("uri", e))?;
    if config.timeout == 0 {
        return Err(FieldError::new("timeout", "must be at least 1"));
    }
    if config.ssl_verify {
        return Err(FieldError::new(
            "ssl_verify",
            "verifies https servers, and https is not supported yet",
        ));
    }
    let mut headers = Vec::new();
    if let Some(auth) = &config.auth_header {
        if auth.contains(['\r', '\n']) {
            return Err(FieldError::new("auth_header", "must not hold CR or LF"));
        }
        headers.push(("Authorization".to_owned(), auth.clone()));
    }
    let (content_type, body): (_, Join) = match config.concat_method {
        ConcatMethod::Json => ("application/json", json_array),
        ConcatMethod::NewLine => ("text/plain", lines),
    };
    let destination = Destination {
        uri: config.uri,
        auth_header: config.auth_header,
        timeout: config.timeout,
        concat_method: config.concat_method,
    };
    let timeout = Duration::from_secs(config.timeout);
    Ok(Arc::new(Logger {
        name: DESCRIPTOR.name,
        records,
        encode: logger::json,
        counts: &COUNTS,
        open: Box::new(move || {
            DESTINATIONS.queue(destination.clone(), &batch, &COUNTS, || {
                Post::new(
                    endpoint.clone(),
                    headers.clone(),
                    content_type,
                    Box::new(body),
                    timeout,
                )
            })
        }),
        queue: OnceLock::new(),
    }))
}

/// How a batch's records become a body.
type Join = fn(&[Vec<u8>]) -> Vec<u8>;

/// Records one per line.
fn lines(batch: &[Vec<u8>]) -> Vec<u8> {
    batch.join(&b'\n')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{build, build_with_metadata, refusal};

    #[test]
    fn bad_configurations_are_refused_with_their_field() {
        let cases = [
            (json!({}), ""),
            (json!({"uri": "ftp://x"}), "uri"),
            (json!({"uri": "https://x/logs"}), "uri"),
            (json!({"uri": "http://x", "timeout": 0}), "timeout"),
            (json!({"uri": "http://x", "ssl_verify": true}), "ssl_verify"),
            (
                json!({"uri": "http://x", "auth_header": "a\r\nb: c"}),
                "auth_header",
            ),
            (
                json!({"uri": "http://x", "concat_method": "xml"}),
                "concat_method",
            ),
            (
                json!({"uri": "http://x", "batch_max_size": 0}),
                "batch_max_size",
            ),
            (
                json!({"uri": "http://x", "inactive_timeout": "1"}),
                "inactive_timeout",
            ),
            (
                json!({"uri": "http://x", "include_req_body": true}),
                "include_req_body",
            ),
            (
                json!({"uri": "http://x", "match": [[["uri", "~~", "("]]]}),
                "match[0][0][2]",
            ),
            (json!({"uri": "http://x", "other": 1}), "other"),
        ];
        for (config, field) in cases {
            let error = refusal(&DESCRIPTOR, config.clone());
            assert_eq!(error.path, field, "{config}: {error:?}");
        }
        let error = refusal(&DESCRIPTOR, json!({"uri": "https://x"}));
        assert!(
            error.message.contains("https is not supported yet"),
            "{error:?}"
        );
        let error = refusal(&DESCRIPTOR, json!({"uri": "http://x", "other": 1}));
        assert!(error.message.contains("`other`"), "{error:?}");
    }

    #[test]
    fn a_configuration_with_every_field_builds() {
        let config = json!({
            "uri": "http://127.0.0.1:1/logs",
            "auth_header": "Bearer t",
            "timeout": 2,
            "concat_method": "new_line",
            "ssl_verify": false,
            "log_format": {"uri": "$uri"},
            "match": [[["status", ">=", 500]]],
            "name": "mine",
            "batch_max_size": 10,
            "inactive_timeout": 1,
            "buffer_duration": 5,
            "max_retry_count": 3,
            "retry_delay": 0,
            "_meta": {"disable": false}
        });
        assert!(build(&DESCRIPTOR, config.clone()).is_ok());
        assert!(build_with_metadata(
            &DESCRIPTOR,
            config,
            json!({"log_format": {"m": "$request_method"}, "max_pending_entries": 5})
        )
        .is_ok());
        let schema = (DESCRIPTOR.schema)();
        for field in ["uri", "concat_method", "log_format", "batch_max_size"] {
            assert!(schema["properties"].get(field).is_some(), "{field}");
        }
    }

    #[test]
    fn new_line_joins_records_with_newlines() {
        assert_eq!(lines(&[b"{}".to_vec(), b"1".to_vec()]), b"{}\n1");
    }
}
