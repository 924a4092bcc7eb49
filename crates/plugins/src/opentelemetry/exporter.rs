//! Where and how spans are exported: the plugin's metadata (`plugin_metadata/opentelemetry`,
//! as APISIX's), and the exporter it makes, which POSTs batches of spans to the collector.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prost::Message;
use pylon_model::FieldError;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::otlp::{self, KeyValue};
use super::DESCRIPTOR;
use crate::batch::BatchSettings;
use crate::config::parse;
use crate::descriptor::Metadata;
use crate::outbound::Endpoint;
use crate::post::Post;

/// How many times a failed export is tried again, waiting [`EXPORT_RETRY_DELAY`] and then
/// twice as long each time.
const EXPORT_RETRIES: u32 = 2;
const EXPORT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// `plugin_metadata/opentelemetry`: where and how spans are exported, as APISIX's.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MetadataConfig {
    /// Where a new trace's id comes from: `random`, or `x-request-id`: the request's
    /// `X-Request-Id` when it is 32 hex digits (a UUID's dashes aside), else random.
    #[serde(default)]
    trace_id_source: TraceIdSource,
    /// The resource's attributes: strings, numbers or booleans. `service.name` is `pylon`
    /// unless set here.
    #[serde(default)]
    resource: Map<String, Value>,
    #[serde(default)]
    collector: CollectorConfig,
    #[serde(default)]
    batch_span_processor: BatchSpanProcessorConfig,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
pub(super) enum TraceIdSource {
    #[default]
    #[serde(rename = "random")]
    Random,
    #[serde(rename = "x-request-id")]
    XRequestId,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CollectorConfig {
    /// `host:port`, or an `http://` URL; spans go to its `/v1/traces`. (`https` is not
    /// supported yet.)
    #[serde(default = "default_address")]
    address: String,
    /// Seconds an export may take, connecting and reading the answer included.
    #[serde(default = "default_request_timeout")]
    #[schemars(range(min = 1))]
    request_timeout: u64,
    /// Headers every export carries (an `Authorization`, say).
    #[serde(default)]
    request_headers: BTreeMap<String, String>,
}

impl Default for CollectorConfig {
    fn default() -> CollectorConfig {
        CollectorConfig {
            address: default_address(),
            request_timeout: default_request_timeout(),
            request_headers: BTreeMap::new(),
        }
    }
}

fn default_address() -> String {
    "127.0.0.1:4318".into()
}

fn default_request_timeout() -> u64 {
    3
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct BatchSpanProcessorConfig {
    /// Only `true`: a span that finds the queue full is dropped (and counted), since a
    /// request never waits on the exporter.
    #[serde(default = "yes")]
    drop_on_queue_full: bool,
    /// Spans waiting to be exported at most.
    #[serde(default = "default_max_queue_size")]
    #[schemars(range(min = 1))]
    max_queue_size: usize,
    /// Seconds a batch gathers at most, from its first span.
    #[serde(default = "default_batch_timeout")]
    batch_timeout: f64,
    /// A batch is exported once no span joined it for this many seconds.
    #[serde(default = "default_inactive_timeout")]
    inactive_timeout: f64,
    /// The most spans one export carries.
    #[serde(default = "default_max_export_batch_size")]
    #[schemars(range(min = 1))]
    max_export_batch_size: usize,
}

impl Default for BatchSpanProcessorConfig {
    fn default() -> BatchSpanProcessorConfig {
        BatchSpanProcessorConfig {
            drop_on_queue_full: true,
            max_queue_size: default_max_queue_size(),
            batch_timeout: default_batch_timeout(),
            inactive_timeout: default_inactive_timeout(),
            max_export_batch_size: default_max_export_batch_size(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_max_queue_size() -> usize {
    1024
}

fn default_batch_timeout() -> f64 {
    2.0
}

fn default_inactive_timeout() -> f64 {
    1.0
}

fn default_max_export_batch_size() -> usize {
    16
}

/// The metadata, parsed: how every instance exports.
#[derive(Debug)]
pub(super) struct Telemetry {
    pub trace_id_source: TraceIdSource,
    pub exporter: Exporter,
    pub batch: BatchSettings,
}

/// A collector and what each export to it carries besides the spans: instances whose
/// metadata agree share it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Exporter {
    endpoint: Endpoint,
    headers: Vec<(String, String)>,
    timeout: Duration,
    /// The encoded [`otlp::Resource`].
    resource: Vec<u8>,
}

impl Exporter {
    pub(super) fn post(&self) -> Post {
        let resource = self.resource.clone();
        let scope = otlp::InstrumentationScope {
            name: "pylon".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        Post::new(
            self.endpoint.clone(),
            self.headers.clone(),
            "application/x-protobuf",
            Box::new(move |spans| otlp::export_request(&resource, &scope, spans)),
            self.timeout,
        )
    }
}

pub(super) fn parse_metadata(metadata: &Value) -> Result<Metadata, FieldError> {
    Ok(Arc::new(Telemetry::new(parse(metadata)?)?))
}

impl Telemetry {
    fn new(config: MetadataConfig) -> Result<Telemetry, FieldError> {
        let collector = config.collector;
        let endpoint = collector_endpoint(&collector.address)
            .map_err(|e| FieldError::new("collector.address", e))?;
        if collector.request_timeout == 0 {
            return Err(FieldError::new(
                "collector.request_timeout",
                "must be at least 1",
            ));
        }
        let mut headers = Vec::new();
        for (name, value) in collector.request_headers {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            let path = format!("collector.request_headers.{name}");
            if !token {
                return Err(FieldError::new(path, "is not a header name"));
            }
            if value.contains(['\r', '\n']) {
                return Err(FieldError::new(path, "must not hold CR or LF"));
            }
            headers.push((name, value));
        }
        let resource = resource(config.resource)?;
        let batch = config.batch_span_processor;
        if !batch.drop_on_queue_full {
            return Err(FieldError::new(
                "batch_span_processor.drop_on_queue_full",
                "only true: a request never waits on the exporter",
            ));
        }
        for (field, value) in [
            ("max_queue_size", batch.max_queue_size),
            ("max_export_batch_size", batch.max_export_batch_size),
        ] {
            if value == 0 {
                return Err(FieldError::new(
                    format!("batch_span_processor.{field}"),
                    "must be at least 1",
                ));
            }
        }
        let seconds = |field: &str, value: f64| {
            Duration::try_from_secs_f64(value)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    FieldError::new(
                        format!("batch_span_processor.{field}"),
                        "must be a positive number of seconds",
                    )
                })
        };
        let batch = BatchSettings {
            name: DESCRIPTOR.name.into(),
            max_entries: batch.max_export_batch_size,
            max_bytes: None,
            inactive_timeout: seconds("inactive_timeout", batch.inactive_timeout)?,
            buffer_duration: seconds("batch_timeout", batch.batch_timeout)?,
            max_retry_count: EXPORT_RETRIES,
            retry_delay: EXPORT_RETRY_DELAY,
            max_pending_entries: batch.max_queue_size,
            max_pending_bytes: None,
        };
        Ok(Telemetry {
            trace_id_source: config.trace_id_source,
            exporter: Exporter {
                endpoint,
                headers,
                timeout: Duration::from_secs(collector.request_timeout),
                resource,
            },
            batch,
        })
    }

    /// The settings of a node without `plugin_metadata/opentelemetry`.
    pub(super) fn defaults() -> Arc<Telemetry> {
        static DEFAULTS: OnceLock<Arc<Telemetry>> = OnceLock::new();
        DEFAULTS
            .get_or_init(|| {
                let config = parse(&Value::Object(Map::new()))
                    .and_then(Telemetry::new)
                    // The defaults are fixed above, and valid; the tests build them.
                    .expect("the default metadata is valid");
                Arc::new(config)
            })
            .clone()
    }
}

/// `<address>/v1/traces`, the address a `host:port` or an `http://` URL.
fn collector_endpoint(address: &str) -> Result<Endpoint, String> {
    let base = if address.contains("://") {
        address.trim_end_matches('/').to_owned()
    } else {
        format!("http://{address}")
    };
    Endpoint::parse(&format!("{base}/v1/traces"))
}

/// The encoded resource: the configured attributes, with `service.name` unless given.
fn resource(attributes: Map<String, Value>) -> Result<Vec<u8>, FieldError> {
    let mut resource = otlp::Resource::default();
    if !attributes.contains_key("service.name") {
        resource
            .attributes
            .push(KeyValue::string("service.name", "pylon"));
    }
    for (key, value) in attributes {
        let value = match value {
            Value::String(s) => otlp::Value::String(s),
            Value::Bool(b) => otlp::Value::Bool(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => otlp::Value::Int(i),
                None => otlp::Value::Double(n.as_f64().unwrap_or_default()),
            },
            _ => {
                return Err(FieldError::new(
                    format!("resource.{key}"),
                    "must be a string, a number or a boolean",
                ))
            }
        };
        resource.attributes.push(KeyValue::new(key, value));
    }
    Ok(resource.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{build, build_with_metadata};

    #[test]
    fn bad_metadata_is_refused_with_its_field() {
        let cases = [
            (
                json!({"collector": {"address": "https://c:4318"}}),
                "collector.address",
            ),
            (
                json!({"collector": {"address": "c:x"}}),
                "collector.address",
            ),
            (
                json!({"collector": {"request_timeout": 0}}),
                "collector.request_timeout",
            ),
            (
                json!({"collector": {"request_headers": {"a b": "1"}}}),
                "collector.request_headers.a b",
            ),
            (
                json!({"collector": {"request_headers": {"x": "1\r\n2"}}}),
                "collector.request_headers.x",
            ),
            (json!({"resource": {"a": [1]}}), "resource.a"),
            (json!({"trace_id_source": "uuid"}), "trace_id_source"),
            (
                json!({"batch_span_processor": {"drop_on_queue_full": false}}),
                "batch_span_processor.drop_on_queue_full",
            ),
            (
                json!({"batch_span_processor": {"max_queue_size": 0}}),
                "batch_span_processor.max_queue_size",
            ),
            (
                json!({"batch_span_processor": {"inactive_timeout": 0}}),
                "batch_span_processor.inactive_timeout",
            ),
            (
                json!({"batch_span_processor": {"batch_timeout": -1}}),
                "batch_span_processor.batch_timeout",
            ),
        ];
        for (metadata, field) in cases {
            let error = parse_metadata(&metadata).err().unwrap();
            assert_eq!(error.path, field, "{metadata}: {error:?}");
        }
    }

    #[test]
    fn metadata_says_where_and_how_spans_go() {
        let metadata = json!({
            "trace_id_source": "x-request-id",
            "resource": {"service.name": "edge", "zone": 3},
            "collector": {"address": "http://otel:4318/", "request_timeout": 5,
                "request_headers": {"Authorization": "token"}},
            "batch_span_processor": {"max_queue_size": 10, "batch_timeout": 0.5,
                "inactive_timeout": 0.1, "max_export_batch_size": 4}
        });
        let metadata = parse_metadata(&metadata).unwrap();
        let telemetry = metadata.downcast_ref::<Telemetry>().unwrap();
        assert_eq!(telemetry.exporter.endpoint.target, "/v1/traces");
        assert_eq!(telemetry.exporter.endpoint.authority, "otel:4318");
        assert_eq!(
            telemetry.exporter.headers,
            [("Authorization".to_owned(), "token".to_owned())]
        );
        assert_eq!(telemetry.exporter.timeout, Duration::from_secs(5));
        let resource = otlp::Resource::decode(&telemetry.exporter.resource[..]).unwrap();
        assert_eq!(
            resource.attributes,
            [
                KeyValue::string("service.name", "edge"),
                KeyValue::new("zone", otlp::Value::Int(3))
            ]
        );
        assert_eq!(
            (
                telemetry.batch.max_pending_entries,
                telemetry.batch.max_entries
            ),
            (10, 4)
        );
        assert_eq!(telemetry.batch.inactive_timeout, Duration::from_millis(100));
        assert_eq!(telemetry.batch.buffer_duration, Duration::from_millis(500));

        let defaults = Telemetry::defaults();
        assert_eq!(defaults.exporter.endpoint.host, "127.0.0.1");
        assert_eq!(defaults.exporter.endpoint.port, 4318);
        let resource = otlp::Resource::decode(&defaults.exporter.resource[..]).unwrap();
        assert_eq!(
            resource.attributes,
            [KeyValue::string("service.name", "pylon")]
        );

        let plugin = build_with_metadata(
            &DESCRIPTOR,
            json!({}),
            json!({"collector": {"address": "127.0.0.1:1"}}),
        );
        assert!(plugin.is_ok());
        assert!(build(&DESCRIPTOR, json!({})).is_ok());
    }
}
