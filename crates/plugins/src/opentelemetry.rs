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

mod exporter;
mod otlp;
mod sampler;
mod trace_context;

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use pylon_model::FieldError;
use pylon_plugin::{LogCtx, Phases, Plugin, RequestCtx, Step};
use pylon_router::RequestView;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::batch::{Counts, Destinations, Queue};
use crate::config::{parse, schema_of};
use crate::descriptor::{BuildEnv, Descriptor, MetadataSpec};
use crate::log_record::LogVars;
use exporter::{parse_metadata, Exporter, MetadataConfig, Telemetry, TraceIdSource};
use otlp::KeyValue;
use sampler::{Sampler, SamplerConfig};
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

/// What became of its entries since the process started (`/v1/status`).
pub(crate) static COUNTS: Counts = Counts::new();
static EXPORTERS: Destinations<Exporter> = Destinations::new();

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OpenTelemetryConfig {
    /// Which requests' spans are recorded. Default: none (`always_off`), as APISIX's.
    #[serde(default)]
    sampler: SamplerConfig,
    /// Request variables (`http_x_tenant`, `route_id`, ...; a leading `$` is allowed) that
    /// become attributes of the span, named after the variable, when the request has them.
    #[serde(default)]
    additional_attributes: Vec<String>,
    /// Header name prefixes (any case): every request header whose name starts with one
    /// becomes an attribute, named as the header (lowercase).
    #[serde(default)]
    additional_header_prefix_attributes: Vec<String>,
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
    use crate::testing::{refusal, TestRequest};

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
