//! opentelemetry through the gateway, over HTTP/1.1 and HTTP/2 alike: the upstream gets a
//! W3C `traceparent` continuing the caller's trace (or a new one), and a collector on
//! loopback gets the sampled requests' spans over OTLP/HTTP, decoded here from their
//! protobuf with the request, route, service, consumer and upstream node in them.

mod support;

use std::collections::HashMap;

use prost::Message;
use serde_json::{json, Value};
use support::client::get;
use support::protocols::{call, Protocol, PROTOCOLS};
use support::upstream::Upstream;
use support::{validate, wait_until, Pylon};

/// The OTLP messages the test reads, transcribed from the OTLP protobuf definitions
/// (`opentelemetry/proto/collector/trace/v1`, `trace/v1`, `common/v1`) apart from the
/// gateway's own, so that a wrong field number on either side shows.
mod otlp {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "3")]
        pub code: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "Value", tags = "1, 3")]
        pub value: Option<Value>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(int64, tag = "3")]
        Int(i64),
    }
}

/// A span as the collector got it, with its resource's attributes.
#[derive(Debug)]
struct Exported {
    span: otlp::Span,
    resource: HashMap<String, otlp::Value>,
}

impl Exported {
    fn attributes(&self) -> HashMap<String, otlp::Value> {
        attributes(&self.span.attributes)
    }

    /// The request target the span is of.
    fn target(&self) -> String {
        match self.attributes().get("http.target") {
            Some(otlp::Value::String(target)) => target.clone(),
            other => panic!("no http.target: {other:?}"),
        }
    }
}

fn attributes(list: &[otlp::KeyValue]) -> HashMap<String, otlp::Value> {
    list.iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

fn text(s: &str) -> otlp::Value {
    otlp::Value::String(s.into())
}

/// Every span `collector` got so far, in the order it got them.
fn exported(collector: &Upstream) -> Vec<Exported> {
    let mut spans = Vec::new();
    for post in collector.received() {
        assert_eq!(
            (post.method.as_str(), post.target.as_str()),
            ("POST", "/v1/traces")
        );
        assert_eq!(post.header("content-type"), Some("application/x-protobuf"));
        let request = otlp::ExportTraceServiceRequest::decode(&post.body[..])
            .expect("an ExportTraceServiceRequest");
        for resource_spans in request.resource_spans {
            let resource = attributes(&resource_spans.resource.unwrap_or_default().attributes);
            for scope_spans in resource_spans.scope_spans {
                assert_eq!(scope_spans.scope.unwrap_or_default().name, "pylon");
                spans.extend(scope_spans.spans.into_iter().map(|span| Exported {
                    span,
                    resource: resource.clone(),
                }));
            }
        }
    }
    spans
}

/// The span of the request for `target`, once the collector has it.
fn span_of(collector: &Upstream, target: &str) -> Exported {
    wait_until(
        || exported(collector).iter().any(|s| s.target() == target),
        &format!("the span of {target}"),
    );
    exported(collector)
        .into_iter()
        .find(|s| s.target() == target)
        .unwrap()
}

/// A `traceparent` as the test reads it: trace id, span id, sampled.
fn traceparent(value: &str) -> (Vec<u8>, Vec<u8>, bool) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    let hex = |s: &str| {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<_>>()
    };
    (hex(parts[1]), hex(parts[2]), parts[3] == "01")
}

/// The `traceparent` the upstream got with its last request.
fn sent_upstream(up: &Upstream) -> (Vec<u8>, Vec<u8>, bool) {
    traceparent(
        up.last()
            .header("traceparent")
            .expect("a traceparent upstream"),
    )
}

/// A caller's `traceparent` in trace `trace` (32 hex digits), sampled or not.
fn caller(trace: &str, sampled: bool) -> String {
    format!(
        "00-{trace}-00f067aa0ba902b7-{}",
        if sampled { "01" } else { "00" }
    )
}

/// The node's metadata for the plugin: the collector at `collector`, spans exported soon.
fn metadata(collector: &Upstream) -> Value {
    json!({"id": "opentelemetry",
        "resource": {"service.name": "edge"},
        "collector": {"address": collector.addr.to_string()},
        "batch_span_processor": {"inactive_timeout": 0.05, "max_export_batch_size": 16}})
}

async fn request(protocol: Protocol, pylon: &Pylon, target: &str, headers: &[(&str, &str)]) {
    let res = call(protocol, pylon.addr, "GET", target, headers, b"").await;
    assert_eq!(res.status, 200, "{protocol:?} {target}: {}", res.text());
}

#[tokio::test]
async fn a_span_continues_the_callers_trace_and_carries_the_request() {
    let up = Upstream::start("up");
    let collector = Upstream::start("collector");
    let document = json!({
        "services": [{"id": "s1", "upstream": {"nodes": {up.addr.to_string(): 1}}}],
        "routes": [{"id": "traced", "uri": "/traced", "service_id": "s1",
            "plugins": {"key-auth": {}, "opentelemetry": {
                "sampler": {"name": "always_on"},
                "additional_attributes": ["http_x_tenant"]}}}],
        "consumers": [{"username": "ann", "plugins": {"key-auth": {"key": "ann-key"}}}],
        "plugin_metadata": [metadata(&collector)],
    });
    let pylon = Pylon::start(&document.to_string(), "");
    for (i, protocol) in PROTOCOLS.into_iter().enumerate() {
        let what = format!("{protocol:?}");
        let trace = format!("4bf92f3577b34da6a3ce929d0e0e47{i:02}");
        let incoming = caller(&trace, true);
        let target = format!("/traced?n={i}");
        let headers = [
            ("apikey", "ann-key"),
            ("traceparent", incoming.as_str()),
            ("tracestate", "vendor=1"),
            ("x-tenant", "t1"),
        ];
        request(protocol, &pylon, &target, &headers).await;
        let (caller_trace, caller_span, _) = traceparent(&incoming);
        let (trace_id, span_id, sampled) = sent_upstream(&up);
        assert_eq!(trace_id, caller_trace, "{what}: the caller's trace goes on");
        assert_ne!(span_id, caller_span, "{what}: the gateway's own span");
        assert!(sampled, "{what}");
        assert_eq!(up.last().header("tracestate"), Some("vendor=1"), "{what}");

        let exported = span_of(&collector, &target);
        let span = &exported.span;
        assert_eq!(span.trace_id, trace_id, "{what}");
        assert_eq!(span.span_id, span_id, "{what}");
        assert_eq!(span.parent_span_id, caller_span, "{what}");
        assert_eq!(span.trace_state, "vendor=1", "{what}");
        assert_eq!(span.name, "GET /traced", "{what}");
        assert_eq!(span.kind, 2, "{what}: a server span");
        assert!(span.start_time_unix_nano > 0, "{what}");
        assert!(
            span.end_time_unix_nano >= span.start_time_unix_nano,
            "{what}"
        );
        assert_eq!(span.status.clone().unwrap_or_default().code, 0, "{what}");
        let attributes = exported.attributes();
        for (key, value) in [
            ("http.method", text("GET")),
            ("http.status_code", otlp::Value::Int(200)),
            ("apisix.route_id", text("traced")),
            ("apisix.service_id", text("s1")),
            ("apisix.consumer_name", text("ann")),
            ("apisix.upstream_addr", text(&up.addr.to_string())),
            ("http_x_tenant", text("t1")),
        ] {
            assert_eq!(attributes.get(key), Some(&value), "{what}: {key}");
        }
        assert_eq!(exported.resource.get("service.name"), Some(&text("edge")));

        // Without a traceparent, or with a malformed one, a new trace starts here.
        for (n, headers) in [
            (0, vec![("apikey", "ann-key")]),
            (
                1,
                vec![("apikey", "ann-key"), ("traceparent", "00-not-a-trace-01")],
            ),
        ] {
            let target = format!("/traced?n={i}&new={n}");
            request(protocol, &pylon, &target, &headers).await;
            let (trace_id, span_id, sampled) = sent_upstream(&up);
            assert_ne!(trace_id, caller_trace, "{what} {target}");
            assert!(sampled, "{what} {target}");
            let span = span_of(&collector, &target).span;
            assert_eq!((span.trace_id, span.span_id), (trace_id, span_id), "{what}");
            assert!(
                span.parent_span_id.is_empty(),
                "{what} {target}: a root span"
            );
        }
    }
    let spans =
        || get(pylon.control.unwrap(), "localhost", "/v1/status").json()["opentelemetry"].clone();
    wait_until(|| spans()["sent"] == 6, "every span counted as sent");
    assert_eq!(spans()["dropped"], 0);
}

#[tokio::test]
async fn only_the_sampled_requests_are_exported() {
    let up = Upstream::start("up");
    let collector = Upstream::start("collector");
    let traced = |uri: &str, sampler: Value| {
        json!({"id": uri.trim_start_matches('/'), "uri": uri,
            "plugins": {"opentelemetry": {"sampler": sampler}},
            "upstream": {"nodes": {up.addr.to_string(): 1}}})
    };
    let ratio =
        |fraction: f64| json!({"name": "trace_id_ratio", "options": {"fraction": fraction}});
    let document = json!({
        "routes": [
            traced("/off", json!({"name": "always_off"})),
            traced("/default", json!({})),
            traced("/on", json!({"name": "always_on"})),
            traced("/none", ratio(0.0)),
            traced("/all", ratio(1.0)),
            traced("/half", ratio(0.5)),
            traced("/parent", json!({"name": "parent_base",
                "options": {"root": {"name": "always_off"}}})),
        ],
        "plugin_metadata": [metadata(&collector)],
    });
    let pylon = Pylon::start(&document.to_string(), "");
    // A ratio decides by the trace id's last 63 bits: these fall below half, and above it.
    let low = caller("4bf92f3577b34da60000000000000001", false);
    let high = caller("4bf92f3577b34da6ffffffffffffffff", false);
    let (sampled_parent, unsampled_parent) = (
        caller("0af7651916cd43dd8448eb211c80319c", true),
        caller("0af7651916cd43dd8448eb211c80319c", false),
    );
    let mut requests = 0;
    for (i, protocol) in PROTOCOLS.into_iter().enumerate() {
        let what = format!("{protocol:?}");
        let cases: [(&str, Option<&str>, bool); 9] = [
            ("/off", None, false),
            ("/default", None, false),
            ("/none", None, false),
            ("/all", None, true),
            ("/half", Some(&low), true),
            ("/half", Some(&high), false),
            ("/parent", Some(&sampled_parent), true),
            ("/parent", Some(&unsampled_parent), false),
            ("/parent", None, false),
        ];
        let mut expected = Vec::new();
        for (k, (uri, parent, sampled)) in cases.into_iter().enumerate() {
            let target = format!("{uri}?n={i}-{k}");
            let headers: Vec<_> = parent.map(|p| ("traceparent", p)).into_iter().collect();
            request(protocol, &pylon, &target, &headers).await;
            assert_eq!(
                sent_upstream(&up).2,
                sampled,
                "{what} {target}: the decision sent on"
            );
            if sampled {
                expected.push(target);
            }
        }
        // Once the access log has them, the plugins' log phase has queued their spans (it
        // runs first); spans leave in the order they were queued, so once a last sampled
        // request's span is there, every span of the requests above is too.
        requests += cases.len();
        pylon.wait_access_log(requests);
        let last = format!("/on?n={i}");
        request(protocol, &pylon, &last, &[]).await;
        requests += 1;
        span_of(&collector, &last);
        expected.push(last.clone());
        let round = format!("?n={i}-");
        let mut got: Vec<String> = exported(&collector)
            .iter()
            .map(Exported::target)
            .filter(|t| t.contains(&round) || *t == last)
            .collect();
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "{what}");
    }
    let status = get(pylon.control.unwrap(), "localhost", "/v1/status").json();
    assert_eq!(status["opentelemetry"]["dropped"], 0);
}

#[test]
fn bad_opentelemetry_configurations_are_refused_with_their_field() {
    let (code, stdout, stderr) = validate(
        r#"
routes:
  - id: a
    uri: /a
    upstream: {nodes: {"127.0.0.1:1": 1}}
    plugins:
      opentelemetry: {sampler: {name: trace_id_ratio, options: {fraction: 2}}}
plugin_metadata:
  - id: opentelemetry
    collector: {address: "https://otel:4318"}
"#,
    );
    assert_ne!(code, Some(0), "stdout: {stdout}");
    for expected in [
        "plugins.opentelemetry.sampler.options.fraction: must be 0 to 1",
        "plugin_metadata[0].collector.address: https is not supported yet",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in:\n{stderr}");
    }
}
