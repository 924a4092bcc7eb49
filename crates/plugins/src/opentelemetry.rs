//! `opentelemetry`: one server span per request, exported to an OpenTelemetry collector over
//! OTLP/HTTP (binary protobuf) in batches.
//!
//! In `rewrite` the plugin reads the W3C `traceparent` the request came with: a valid one is
//! continued (the same trace, the caller's span as the parent, its `tracestate` kept), a
//! missing or malformed one starts a new trace. The sampler decides whether the span is
//! recorded, and the upstream gets a `traceparent` naming the gateway's span and that
//! decision either way, so that the trace goes on past the gateway. In `log` a sampled
//! request's span (start and end, status, HTTP attributes, route, service, consumer,
//! upstream node, and the configured extra attributes) is encoded and handed to the
//! exporter's queue ([`crate::batch`]), which POSTs batches to `<collector>/v1/traces`.
//!
//! The collector, the resource and the batching are the plugin's metadata
//! (`plugin_metadata/opentelemetry`, where APISIX has them too), the same for every route.

mod otlp;
mod trace_context;

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use pylon_model::FieldError;
use pylon_plugin::{LogCtx, Phases, Plugin, RequestCtx, Step};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::batch::{BatchSettings, Counts, Destinations, Queue, ShipCounts};
use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor, Metadata, MetadataSpec};
use crate::log_record::LogVars;
use crate::outbound::Endpoint;
use crate::post::Post;
use otlp::KeyValue;
use trace_context::{hex, TraceId, TraceParent};

pub(crate) const DESCRIPTOR: Descriptor = Descriptor {
    name: "opentelemetry",
    priority: 12009,
    schema: schema_of::<OpenTelemetryConfig>,
    build,
    credential: None,
    metadata: Some(MetadataSpec {
        schema: schema_of::<MetadataConfig>,
        parse: parse_metadata,
    }),
};

/// How many times a failed export is tried again, waiting [`EXPORT_RETRY_DELAY`] and then
/// twice as long each time.
const EXPORT_RETRIES: u32 = 2;
const EXPORT_RETRY_DELAY: Duration = Duration::from_secs(1);

static COUNTS: Counts = Counts::new();
static EXPORTERS: Destinations<Exporter> = Destinations::new();

/// What became of the spans since the process started.
pub fn span_counts() -> ShipCounts {
    COUNTS.snapshot()
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OpenTelemetryConfig {
    /// Which requests' spans are recorded. Default: none (`always_off`), as APISIX's.
    #[serde(default)]
    sampler: SamplerConfig,
    /// Request variables (`http_x_tenant`, `route_id`, ...; a leading `$` is allowed) that
    /// become attributes of the span, named as given, when the request has them.
    #[serde(default)]
    additional_attributes: Vec<String>,
    /// Header name prefixes (any case): every request header whose name starts with one
    /// becomes an attribute, named as the header (lowercase).
    #[serde(default)]
    additional_header_prefix_attributes: Vec<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SamplerConfig {
    #[serde(default)]
    name: SamplerName,
    #[serde(default)]
    options: SamplerOptions,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum SamplerName {
    AlwaysOn,
    #[default]
    AlwaysOff,
    /// `options.fraction` of the traces, decided by the trace id (so every hop that samples
    /// by the same ratio decides alike).
    TraceIdRatio,
    /// The caller's decision when the request has a `traceparent`, else `options.root`'s.
    ParentBase,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SamplerOptions {
    /// For `trace_id_ratio`: 0 to 1.
    #[serde(default)]
    fraction: f64,
    /// For `parent_base`: the sampler of the requests that come without a parent.
    #[serde(default)]
    root: RootSamplerConfig,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RootSamplerConfig {
    #[serde(default)]
    name: RootSamplerName,
    #[serde(default)]
    options: RootSamplerOptions,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum RootSamplerName {
    AlwaysOn,
    #[default]
    AlwaysOff,
    TraceIdRatio,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RootSamplerOptions {
    /// For `trace_id_ratio`: 0 to 1.
    #[serde(default)]
    fraction: f64,
}

/// A sampler that decides without a parent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Root {
    AlwaysOn,
    AlwaysOff,
    /// Sampled when the trace id's last 63 bits are below this.
    Ratio(u64),
}

impl Root {
    fn ratio(fraction: f64, field: &str) -> Result<Root, FieldError> {
        if !(0.0..=1.0).contains(&fraction) {
            return Err(FieldError::new(field, "must be 0 to 1"));
        }
        Ok(if fraction == 1.0 {
            Root::AlwaysOn
        } else if fraction == 0.0 {
            Root::AlwaysOff
        } else {
            Root::Ratio((fraction * (1u64 << 63) as f64) as u64)
        })
    }

    fn samples(self, trace_id: &TraceId) -> bool {
        match self {
            Root::AlwaysOn => true,
            Root::AlwaysOff => false,
            Root::Ratio(threshold) => {
                let low: [u8; 8] = trace_id[8..].try_into().unwrap_or_default();
                u64::from_be_bytes(low) >> 1 < threshold
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sampler {
    Root(Root),
    ParentBased(Root),
}

impl Sampler {
    fn new(config: &SamplerConfig) -> Result<Sampler, FieldError> {
        let fraction = "sampler.options.fraction";
        Ok(match config.name {
            SamplerName::AlwaysOn => Sampler::Root(Root::AlwaysOn),
            SamplerName::AlwaysOff => Sampler::Root(Root::AlwaysOff),
            SamplerName::TraceIdRatio => {
                Sampler::Root(Root::ratio(config.options.fraction, fraction)?)
            }
            SamplerName::ParentBase => {
                let root = &config.options.root;
                Sampler::ParentBased(match root.name {
                    RootSamplerName::AlwaysOn => Root::AlwaysOn,
                    RootSamplerName::AlwaysOff => Root::AlwaysOff,
                    RootSamplerName::TraceIdRatio => Root::ratio(
                        root.options.fraction,
                        "sampler.options.root.options.fraction",
                    )?,
                })
            }
        })
    }

    /// Whether the span of a request in `trace_id` is recorded; `parent`: whether the
    /// caller sampled it, for a request that came with a `traceparent`.
    fn samples(self, trace_id: &TraceId, parent: Option<bool>) -> bool {
        match self {
            Sampler::Root(root) => root.samples(trace_id),
            Sampler::ParentBased(root) => parent.unwrap_or_else(|| root.samples(trace_id)),
        }
    }
}

/// `plugin_metadata/opentelemetry`: where and how spans are exported, as APISIX's.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MetadataConfig {
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
enum TraceIdSource {
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
struct Telemetry {
    trace_id_source: TraceIdSource,
    exporter: Exporter,
    batch: BatchSettings,
}

/// A collector and what each export to it carries besides the spans: instances whose
/// metadata agree share it.
#[derive(Debug, Clone, PartialEq)]
struct Exporter {
    endpoint: Endpoint,
    headers: Vec<(String, String)>,
    timeout: Duration,
    /// The encoded [`otlp::Resource`].
    resource: Vec<u8>,
}

impl Exporter {
    fn post(&self) -> Post {
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

fn parse_metadata(metadata: &Value) -> Result<Metadata, FieldError> {
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
    fn defaults() -> Arc<Telemetry> {
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

/// The plugin.
struct OpenTelemetry {
    sampler: Sampler,
    /// `additional_attributes`: variable names (a leading `$` aside).
    attributes: Vec<String>,
    /// `additional_header_prefix_attributes`, lowercase.
    header_prefixes: Vec<String>,
    telemetry: Arc<Telemetry>,
    /// Opened by the first sampled span.
    queue: OnceLock<Arc<Queue>>,
}

fn build(config: &Value, env: &BuildEnv<'_>) -> Result<Arc<dyn Plugin>, FieldError> {
    let telemetry = match env
        .metadata
        .and_then(|m| m.clone().downcast::<Telemetry>().ok())
    {
        Some(telemetry) => telemetry,
        None => Telemetry::defaults(),
    };
    Ok(Arc::new(OpenTelemetry::new(parse(config)?, telemetry)?))
}

impl OpenTelemetry {
    fn new(
        config: OpenTelemetryConfig,
        telemetry: Arc<Telemetry>,
    ) -> Result<OpenTelemetry, FieldError> {
        let sampler = Sampler::new(&config.sampler)?;
        let mut attributes = Vec::new();
        for (i, name) in config.additional_attributes.iter().enumerate() {
            let name = name.strip_prefix('$').unwrap_or(name);
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(FieldError::new(
                    format!("additional_attributes[{i}]"),
                    "must be a variable name",
                ));
            }
            attributes.push(name.to_owned());
        }
        let mut header_prefixes = Vec::new();
        for (i, prefix) in config
            .additional_header_prefix_attributes
            .iter()
            .enumerate()
        {
            if prefix.is_empty() {
                return Err(FieldError::new(
                    format!("additional_header_prefix_attributes[{i}]"),
                    "must not be empty",
                ));
            }
            header_prefixes.push(prefix.to_ascii_lowercase());
        }
        Ok(OpenTelemetry {
            sampler,
            attributes,
            header_prefixes,
            telemetry,
            queue: OnceLock::new(),
        })
    }
}

/// What `rewrite` decided, kept for `log`.
struct ServerSpan {
    /// The gateway's span, as the upstream's `traceparent` names it.
    own: TraceParent,
    /// The caller's span, when the request came with a valid `traceparent`.
    parent: Option<TraceParent>,
    /// The caller's `tracestate`, kept with its trace.
    trace_state: String,
    start: SystemTime,
}

impl OpenTelemetry {
    /// A new trace's id: from `X-Request-Id` when so configured and it is one, else random.
    fn new_trace_id(&self, ctx: &RequestCtx<'_>) -> TraceId {
        if self.telemetry.trace_id_source == TraceIdSource::XRequestId {
            let from_request = ctx.header("x-request-id").and_then(|id| {
                let digits: String = id.chars().filter(|&c| c != '-').collect();
                hex::<16>(&digits.to_ascii_lowercase()).filter(|id| id.iter().any(|&b| b != 0))
            });
            if let Some(id) = from_request {
                return id;
            }
        }
        loop {
            let id = fastrand::u128(..);
            if id != 0 {
                return id.to_be_bytes();
            }
        }
    }

    fn queue(&self) -> io::Result<&Arc<Queue>> {
        if let Some(queue) = self.queue.get() {
            return Ok(queue);
        }
        let exporter = &self.telemetry.exporter;
        let queue = EXPORTERS.queue(exporter.clone(), &self.telemetry.batch, &COUNTS, || {
            exporter.post()
        })?;
        Ok(self.queue.get_or_init(|| queue))
    }

    /// The span of a finished request.
    fn span(&self, ctx: &LogCtx<'_, '_>, span: &ServerSpan) -> otlp::Span {
        let request = ctx.request;
        let vars = LogVars(ctx);
        let mut attributes = vec![
            KeyValue::string("http.method", request.method()),
            KeyValue::new("http.status_code", otlp::Value::Int(ctx.status.into())),
            KeyValue::string("net.peer.ip", request.client_ip().to_string()),
        ];
        let optional = [
            (
                "http.target",
                vars.var("request_uri").map(|v| v.into_owned()),
            ),
            ("http.scheme", vars.var("scheme").map(|v| v.into_owned())),
            ("net.host.name", request.host().map(str::to_owned)),
            (
                "http.user_agent",
                request.header("user-agent").map(|v| v.into_owned()),
            ),
            (
                "apisix.route_id",
                vars.var("route_id").map(|v| v.into_owned()),
            ),
            ("apisix.service_id", request.service_id().map(str::to_owned)),
            (
                "apisix.consumer_name",
                request.consumer().map(|c| c.username().to_owned()),
            ),
            (
                "apisix.upstream_addr",
                ctx.upstream_addr.map(|a| a.to_string()),
            ),
        ];
        attributes.extend(
            optional
                .into_iter()
                .filter_map(|(key, value)| Some(KeyValue::string(key, value?))),
        );
        for name in &self.attributes {
            if let Some(value) = vars.var(name) {
                attributes.push(KeyValue::string(name.clone(), value.into_owned()));
            }
        }
        if !self.header_prefixes.is_empty() {
            request.for_each_header(&mut |name, value| {
                let name = name.to_ascii_lowercase();
                if self
                    .header_prefixes
                    .iter()
                    .any(|p| name.starts_with(p.as_str()))
                {
                    let value = String::from_utf8_lossy(value).into_owned();
                    attributes.push(KeyValue::string(name, value));
                }
            });
        }
        let nanos = |at: SystemTime| {
            at.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        otlp::Span {
            trace_id: span.own.trace_id.to_vec(),
            span_id: span.own.span_id.to_vec(),
            trace_state: span.trace_state.clone(),
            parent_span_id: span.parent.map_or_else(Vec::new, |p| p.span_id.to_vec()),
            name: format!("{} {}", request.method(), request.path()),
            kind: otlp::SPAN_KIND_SERVER,
            start_time_unix_nano: nanos(span.start),
            end_time_unix_nano: nanos(SystemTime::now()).max(nanos(span.start)),
            attributes,
            status: (ctx.status >= 500).then(|| otlp::Status {
                message: format!("status {}", ctx.status),
                code: otlp::STATUS_CODE_ERROR,
            }),
        }
    }
}

impl Plugin for OpenTelemetry {
    fn name(&self) -> &'static str {
        DESCRIPTOR.name
    }

    fn phases(&self) -> Phases {
        Phases::REWRITE | Phases::LOG
    }

    fn rewrite<'a>(&'a self, ctx: &'a mut RequestCtx<'_>) -> Step<'a> {
        let parent = ctx
            .header("traceparent")
            .and_then(|value| TraceParent::parse(&value));
        let trace_id = match &parent {
            Some(parent) => parent.trace_id,
            None => self.new_trace_id(ctx),
        };
        let own = TraceParent {
            trace_id,
            span_id: loop {
                let id = fastrand::u64(..);
                if id != 0 {
                    break id.to_be_bytes();
                }
            },
            sampled: self.sampler.samples(&trace_id, parent.map(|p| p.sampled)),
        };
        let trace_state = match parent {
            Some(_) => ctx
                .header("tracestate")
                .map(|state| state.into_owned())
                .unwrap_or_default(),
            None => {
                // A state belongs to the trace it came with, which is not continued.
                if ctx.header("tracestate").is_some() {
                    ctx.edits.headers.remove("tracestate");
                }
                String::new()
            }
        };
        ctx.edits.headers.set("traceparent", own.to_string());
        ctx.set_state(
            DESCRIPTOR.name,
            ServerSpan {
                own,
                parent,
                trace_state,
                start: SystemTime::now(),
            },
        );
        Step::Continue
    }

    fn log(&self, ctx: &LogCtx<'_, '_>) {
        let Some(span) = ctx.request.state::<ServerSpan>(DESCRIPTOR.name) else {
            return;
        };
        if !span.own.sampled {
            return;
        }
        let encoded = self.span(ctx, span).encode_to_vec();
        match self.queue() {
            Ok(queue) => queue.push(encoded),
            Err(e) => {
                tracing::warn!(error = %e, "a span was lost: the exporter did not start");
                COUNTS.lost(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use pylon_plugin::Consumer;
    use serde_json::json;

    use super::*;
    use crate::log_record::tests::log_ctx;
    use crate::testing::{build as build_plugin, build_with_metadata, refusal, TestRequest};

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn plugin(config: Value) -> OpenTelemetry {
        OpenTelemetry::new(parse(&config).unwrap(), Telemetry::defaults()).unwrap()
    }

    fn always_on() -> OpenTelemetry {
        plugin(json!({"sampler": {"name": "always_on"}}))
    }

    /// The `traceparent` the upstream gets after `rewrite`.
    fn upstream_traceparent(ctx: &RequestCtx<'_>) -> TraceParent {
        let sent = ctx.edits.headers.get("traceparent").flatten().unwrap();
        TraceParent::parse(sent).unwrap()
    }

    #[test]
    fn bad_configurations_are_refused_with_their_field() {
        let cases = [
            (json!({"sampler": {"name": "sometimes"}}), "sampler.name"),
            (
                json!({"sampler": {"name": "trace_id_ratio", "options": {"fraction": 1.5}}}),
                "sampler.options.fraction",
            ),
            (
                json!({"sampler": {"name": "parent_base", "options": {"root":
                    {"name": "trace_id_ratio", "options": {"fraction": -1}}}}}),
                "sampler.options.root.options.fraction",
            ),
            (
                json!({"sampler": {"name": "parent_base", "options": {"root": {"name": "parent_base"}}}}),
                "sampler.options.root.name",
            ),
            (
                json!({"additional_attributes": ["a b"]}),
                "additional_attributes[0]",
            ),
            (
                json!({"additional_header_prefix_attributes": ["x-", ""]}),
                "additional_header_prefix_attributes[1]",
            ),
            (json!({"other": 1}), "other"),
        ];
        for (config, field) in cases {
            let error = refusal(&DESCRIPTOR, config.clone());
            assert_eq!(error.path, field, "{config}: {error:?}");
        }
    }

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
        assert!(build_plugin(&DESCRIPTOR, json!({})).is_ok());
    }

    #[test]
    fn a_valid_traceparent_is_continued() {
        let plugin = plugin(json!({"sampler": {"name": "parent_base"}}));
        let request = TestRequest::get("/p")
            .header("traceparent", PARENT)
            .header("tracestate", "vendor=1");
        let mut ctx = RequestCtx::new(&request, "r1", None);
        assert!(matches!(plugin.rewrite(&mut ctx), Step::Continue));
        let incoming = TraceParent::parse(PARENT).unwrap();
        let sent = upstream_traceparent(&ctx);
        assert_eq!(sent.trace_id, incoming.trace_id);
        assert_ne!(sent.span_id, incoming.span_id);
        assert!(sent.sampled, "the parent sampled it");
        let span = ctx.state::<ServerSpan>(DESCRIPTOR.name).unwrap();
        assert_eq!(span.parent, Some(incoming));
        assert_eq!(span.trace_state, "vendor=1");
        assert_eq!(
            ctx.edits.headers.get("tracestate"),
            None,
            "passed on as it came"
        );

        let unsampled = PARENT.replace("-01", "-00");
        let request = TestRequest::get("/p").header("traceparent", &unsampled);
        let mut ctx = RequestCtx::new(&request, "r1", None);
        let _ = plugin.rewrite(&mut ctx);
        assert!(
            !upstream_traceparent(&ctx).sampled,
            "the parent did not sample it"
        );
    }

    #[test]
    fn a_missing_or_malformed_traceparent_starts_a_new_trace() {
        let plugin = always_on();
        let incoming = TraceParent::parse(PARENT).unwrap();
        for traceparent in [None, Some("00-bad"), Some(&PARENT.to_uppercase()[..])] {
            let mut request = TestRequest::get("/p").header("tracestate", "vendor=1");
            if let Some(value) = traceparent {
                request = request.header("traceparent", value);
            }
            let mut ctx = RequestCtx::new(&request, "r1", None);
            let _ = plugin.rewrite(&mut ctx);
            let sent = upstream_traceparent(&ctx);
            assert_ne!(sent.trace_id, incoming.trace_id, "{traceparent:?}");
            assert!(sent.sampled);
            let span = ctx.state::<ServerSpan>(DESCRIPTOR.name).unwrap();
            assert_eq!(span.parent, None);
            assert_eq!(span.trace_state, "");
            assert_eq!(ctx.edits.headers.get("tracestate"), Some(None), "dropped");
        }
    }

    #[test]
    fn samplers_decide_as_configured() {
        let id = |low: u64| {
            let mut id = [0xab; 16];
            id[8..].copy_from_slice(&low.to_be_bytes());
            id
        };
        let sampler =
            |config: Value| Sampler::new(&parse::<SamplerConfig>(&config).unwrap()).unwrap();
        let on = sampler(json!({"name": "always_on"}));
        let off = sampler(json!({}));
        assert!(on.samples(&id(1), Some(false)));
        assert!(!off.samples(&id(1), Some(true)));

        let half = sampler(json!({"name": "trace_id_ratio", "options": {"fraction": 0.5}}));
        assert!(half.samples(&id(0), None));
        assert!(half.samples(&id(u64::MAX / 2 - 2), None));
        assert!(!half.samples(&id(u64::MAX / 2 + 2), None));
        assert!(!half.samples(&id(u64::MAX), None));
        let all = sampler(json!({"name": "trace_id_ratio", "options": {"fraction": 1}}));
        assert!(all.samples(&id(u64::MAX), None));
        let none = sampler(json!({"name": "trace_id_ratio", "options": {"fraction": 0}}));
        assert!(!none.samples(&id(0), None));

        let parent = sampler(json!({"name": "parent_base",
            "options": {"root": {"name": "always_on"}}}));
        assert!(!parent.samples(&id(0), Some(false)));
        assert!(parent.samples(&id(0), Some(true)));
        assert!(parent.samples(&id(0), None), "the root decides");

        // Over many random trace ids, a ratio samples about its fraction.
        let quarter = sampler(json!({"name": "trace_id_ratio", "options": {"fraction": 0.25}}));
        let sampled = (0..10_000)
            .filter(|_| quarter.samples(&fastrand::u128(..).to_be_bytes(), None))
            .count();
        assert!((2_000..3_000).contains(&sampled), "{sampled}");
    }

    #[test]
    fn a_new_trace_can_take_the_request_id() {
        let metadata = parse_metadata(&json!({"trace_id_source": "x-request-id"})).unwrap();
        let mut plugin = always_on();
        plugin.telemetry = metadata.downcast::<Telemetry>().unwrap();
        let uuid = "0af76519-16cd-43dd-8448-eb211c80319c";
        let request = TestRequest::get("/").header("x-request-id", uuid);
        let ctx = RequestCtx::new(&request, "r", None);
        assert_eq!(
            plugin.new_trace_id(&ctx),
            hex::<16>("0af7651916cd43dd8448eb211c80319c").unwrap()
        );
        let request = TestRequest::get("/").header("x-request-id", "not-hex");
        let ctx = RequestCtx::new(&request, "r", None);
        assert_ne!(plugin.new_trace_id(&ctx), [0; 16]);
    }

    #[test]
    fn the_span_has_the_request_and_its_answer() {
        let plugin = plugin(json!({
            "sampler": {"name": "always_on"},
            "additional_attributes": ["$http_x_tenant", "arg_q", "http_x_absent"],
            "additional_header_prefix_attributes": ["X-Trace-"]
        }));
        let request = TestRequest::get("/orders?q=1")
            .header("traceparent", PARENT)
            .header("user-agent", "curl")
            .header("x-tenant", "t1")
            .header("X-Trace-Zone", "z");
        let mut ctx = RequestCtx::new(&request, "r1", Some("s1"));
        ctx.set_consumer(Arc::new(Consumer::new(
            "ann".into(),
            None,
            Default::default(),
        )));
        let _ = plugin.rewrite(&mut ctx);
        let span = plugin.span(
            &log_ctx(&ctx, 502),
            ctx.state::<ServerSpan>(DESCRIPTOR.name).unwrap(),
        );
        let incoming = TraceParent::parse(PARENT).unwrap();
        assert_eq!(span.trace_id, incoming.trace_id);
        assert_eq!(span.parent_span_id, incoming.span_id);
        assert_eq!(span.span_id, upstream_traceparent(&ctx).span_id);
        assert_eq!(span.name, "GET /orders");
        assert_eq!(span.kind, otlp::SPAN_KIND_SERVER);
        assert!(span.start_time_unix_nano > 0);
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
        assert_eq!(span.status.unwrap().code, otlp::STATUS_CODE_ERROR);
        let attribute = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone()?.value)
        };
        let string = |s: &str| Some(otlp::Value::String(s.into()));
        assert_eq!(attribute("http.method"), string("GET"));
        assert_eq!(attribute("http.status_code"), Some(otlp::Value::Int(502)));
        assert_eq!(attribute("http.target"), string("/orders?q=1"));
        assert_eq!(attribute("http.user_agent"), string("curl"));
        assert_eq!(attribute("net.host.name"), string("example.com"));
        assert_eq!(attribute("apisix.route_id"), string("r1"));
        assert_eq!(attribute("apisix.service_id"), string("s1"));
        assert_eq!(attribute("apisix.consumer_name"), string("ann"));
        assert_eq!(attribute("apisix.upstream_addr"), string("192.0.2.9:8080"));
        assert_eq!(attribute("http_x_tenant"), string("t1"));
        assert_eq!(attribute("arg_q"), string("1"));
        assert_eq!(attribute("http_x_absent"), None);
        assert_eq!(attribute("x-trace-zone"), string("z"));

        let ok = plugin.span(
            &log_ctx(&ctx, 200),
            ctx.state::<ServerSpan>(DESCRIPTOR.name).unwrap(),
        );
        assert_eq!(ok.status, None, "unset");
    }
}
