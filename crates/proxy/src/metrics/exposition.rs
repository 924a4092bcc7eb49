//! The scrape's answer: the node's totals and state in Prometheus's text format (0.0.4),
//! written by `prometheus-client`, with APISIX's metric names where APISIX has the metric.
//!
//! The library writes every counter with the `_total` suffix Prometheus's conventions ask
//! for, which two of APISIX's counters lack (`apisix_http_status`, `apisix_bandwidth`):
//! those are declared `untyped`, so that their names, and the dashboards and alerts written
//! for them, stay APISIX's. Prometheus stores and queries them as any counter.

use std::fmt::{self, Write};
use std::net::IpAddr;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
    MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::recorder::{Scale, LATENCY, REFUSALS, SESSION, STREAM_STATUSES};
use super::scrape::{HistogramTotals, StatusLabels, Totals, TrafficLabels, FRAME_ERRORS};
use crate::health::NodeHealthReport;
use pylon_plugins::RedisStatus;
use pylon_push::hub::{HubTotals, CLOSE_REASONS};

/// The `Content-Type` of the answer.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What the node reports besides its traffic.
#[derive(Debug)]
pub(crate) struct NodeState {
    pub hostname: String,
    /// The revision of the node's copy of the config store, and whether the store answers.
    pub store_revision: u64,
    pub store_live: bool,
    /// Whether the store is etcd: APISIX's `apisix_etcd_*` metrics are for it alone.
    pub etcd: bool,
    /// The revision the workers serve; none on a node without a proxy.
    pub served_revision: Option<u64>,
    pub upstream_nodes: Vec<NodeHealthReport>,
    /// Each Redis the limiting plugins use.
    pub redis: Vec<RedisStatus>,
}

/// The text of one scrape: the traffic (on a node that proxies) and the node's state.
pub(crate) fn render(traffic: Option<Totals>, node: NodeState) -> String {
    let mut registry = Registry::default();
    if let Some(totals) = traffic {
        registry.register_collector(Box::new(TrafficCollector(totals)));
    }
    registry.register_collector(Box::new(NodeCollector(node)));
    let mut text = String::new();
    // Writing to a String fails only if a collector does, and ours only write.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        tracing::error!("metrics could not be written: {e}");
    }
    text
}

#[derive(Debug)]
struct TrafficCollector(Totals);

impl Collector for TrafficCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let totals = &self.0;
        let mut metric = encoder.encode_descriptor(
            "apisix_http_status",
            "HTTP requests by status code, route, service, consumer and upstream node, of the routes with the prometheus plugin",
            None,
            MetricType::Unknown,
        )?;
        for (labels, count) in &totals.statuses {
            metric.encode_family(labels)?.encode_gauge(count)?;
        }

        let mut metric = encoder.encode_descriptor(
            "apisix_http_latency",
            "HTTP request latency in milliseconds: the whole request, the upstream's share, and the gateway's own",
            None,
            MetricType::Histogram,
        )?;
        for (labels, sums) in &totals.traffic {
            let kinds = [
                ("request", &sums.request_latency),
                ("upstream", &sums.upstream_latency),
                ("apisix", &sums.gateway_latency),
            ];
            for (kind, histogram) in kinds.into_iter().filter(|(_, h)| h.count() > 0) {
                histogram_sample(&mut metric, &Typed { kind, labels }, &LATENCY, histogram)?;
            }
        }

        let mut metric = encoder.encode_descriptor(
            "apisix_bandwidth",
            "Bytes from clients (request heads) and to them, by route, service, consumer and upstream node",
            None,
            MetricType::Unknown,
        )?;
        for (labels, sums) in &totals.traffic {
            for (kind, bytes) in [("egress", sums.egress), ("ingress", sums.ingress)] {
                metric
                    .encode_family(&Typed { kind, labels })?
                    .encode_gauge(&bytes)?;
            }
        }

        let requests = encoder.encode_descriptor(
            "apisix_http_requests",
            "HTTP requests from clients, every one: routed or not, refused ones included",
            None,
            MetricType::Counter,
        )?;
        counter_sample(requests, totals.requests)?;

        let mut metric = encoder.encode_descriptor(
            "apisix_nginx_http_current_connections",
            "Client connections: accepted, handled (not closed at once for a worker's connection limit), and open now",
            None,
            MetricType::Gauge,
        )?;
        let states = [
            ("accepted", totals.accepted),
            ("active", totals.active),
            ("handled", totals.handled),
        ];
        for (state, count) in states {
            metric
                .encode_family(&[("state", state)])?
                .encode_gauge(&count)?;
        }

        let mut metric = encoder.encode_descriptor(
            "pylon_http_refused",
            "Requests the gateway refused before routing them, by status code and cause",
            None,
            MetricType::Counter,
        )?;
        for ((error, cause), count) in REFUSALS.iter().zip(totals.refused) {
            let labels = Refusal {
                code: error.status(),
                cause,
            };
            counter_sample(metric.encode_family(&labels)?, count)?;
        }

        let mut metric = encoder.encode_descriptor(
            "pylon_stream_connections",
            "Stream connections and UDP sessions ended, by status: 200 relayed, 403 ip-restriction, 404 no stream route, 502/504 no node connected, 503 limit-conn",
            None,
            MetricType::Counter,
        )?;
        for (status, count) in STREAM_STATUSES.iter().zip(totals.stream_connections) {
            counter_sample(metric.encode_family(&StreamStatus(*status))?, count)?;
        }
        let mut metric = encoder.encode_descriptor(
            "pylon_stream_bytes",
            "Bytes the stream connections moved, by direction",
            None,
            MetricType::Counter,
        )?;
        let directions = ["from_client", "from_upstream"];
        for (direction, bytes) in directions.into_iter().zip(totals.stream_bytes) {
            counter_sample(metric.encode_family(&[("direction", direction)])?, bytes)?;
        }
        let mut metric = encoder.encode_descriptor(
            "pylon_stream_session_duration_seconds",
            "How long the stream connections and UDP sessions lasted",
            None,
            MetricType::Histogram,
        )?;
        let (unlabelled, durations): ([(&str, &str); 0], _) = ([], &totals.stream_durations);
        histogram_sample(&mut metric, &unlabelled, &SESSION, durations)?;

        let mut metric = encoder.encode_descriptor(
            "pylon_frames",
            "Frames of the framed-protocol stream routes, by direction: read from clients, written to them (answers, error frames, pushed frames)",
            None,
            MetricType::Counter,
        )?;
        for (direction, count) in ["in", "out"].into_iter().zip(totals.frames) {
            counter_sample(metric.encode_family(&[("direction", direction)])?, count)?;
        }
        let mut metric = encoder.encode_descriptor(
            "pylon_frames_errors",
            "What went wrong on framed-protocol connections, by reason: a bad frame (missing_start, bad_end, too_long, bad_length, truncated), an unknown_command, a call_failed, a client timeout, calls abandoned at close, a WebSocket bad_message",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in FRAME_ERRORS.iter().zip(totals.frame_errors) {
            counter_sample(metric.encode_family(&[("reason", *reason)])?, count)?;
        }
        let mut metric = encoder.encode_descriptor(
            "pylon_frames_connections_bound",
            "Framed-protocol connections (TCP or bridged WebSocket) bound to a key that pushes reach them by, now",
            None,
            MetricType::Gauge,
        )?;
        metric.encode_gauge(&totals.frames_bound)?;
        encode_push(&mut encoder, &totals.push)
    }
}

/// The push gateways' devices, messages and Redis failures, by route.
fn encode_push(encoder: &mut DescriptorEncoder, hubs: &[HubTotals]) -> fmt::Result {
    if hubs.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(
        "pylon_push_devices",
        "Devices connected to this node's push gateways, now",
        None,
        MetricType::Gauge,
    )?;
    for hub in hubs {
        metric
            .encode_family(&[("route", hub.route.as_str())])?
            .encode_gauge(&hub.connected)?;
    }
    let mut metric = encoder.encode_descriptor(
        "pylon_push_messages",
        "Messages of the push gateways by event: sent to a device (resends included), delivered (first acknowledged), expired (TTL passed before delivery)",
        None,
        MetricType::Counter,
    )?;
    for hub in hubs {
        for (event, count) in [
            ("sent", hub.sent),
            ("delivered", hub.delivered),
            ("expired", hub.expired),
        ] {
            let labels = [("route", hub.route.as_str()), ("event", event)];
            counter_sample(metric.encode_family(&labels)?, count)?;
        }
    }
    let mut metric = encoder.encode_descriptor(
        "pylon_push_device_closes",
        "Device connections of the push gateways that ended, by reason: closed by the device, or the failure (unauthorized, bad_frame, client_timeout, idle_timeout, replaced, reconnect ...)",
        None,
        MetricType::Counter,
    )?;
    for hub in hubs {
        for (reason, count) in CLOSE_REASONS.iter().zip(hub.closes) {
            let labels = [("route", hub.route.as_str()), ("reason", *reason)];
            counter_sample(metric.encode_family(&labels)?, count)?;
        }
    }
    let mut metric = encoder.encode_descriptor(
        "pylon_push_redis_failures",
        "Calls of the push gateways to Redis that failed",
        None,
        MetricType::Counter,
    )?;
    for hub in hubs {
        let labels = [("route", hub.route.as_str())];
        counter_sample(metric.encode_family(&labels)?, hub.redis_failures)?;
    }
    Ok(())
}

#[derive(Debug)]
struct NodeCollector(NodeState);

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let node = &self.0;
        let mut metric = encoder.encode_descriptor(
            "apisix_node_info",
            "The node: its host name and Pylon's version",
            None,
            MetricType::Gauge,
        )?;
        let labels = [
            ("hostname", node.hostname.as_str()),
            ("version", env!("CARGO_PKG_VERSION")),
        ];
        metric.encode_family(&labels)?.encode_gauge(&1u64)?;

        if node.etcd {
            let mut metric = encoder.encode_descriptor(
                "apisix_etcd_reachable",
                "Whether the node reaches etcd (1) or serves its last copy of it (0)",
                None,
                MetricType::Gauge,
            )?;
            metric.encode_gauge(&u64::from(node.store_live))?;
            let mut metric = encoder.encode_descriptor(
                "apisix_etcd_modify_indexes",
                "The etcd revision of the node's copy of the configuration",
                None,
                MetricType::Gauge,
            )?;
            metric
                .encode_family(&[("key", "max_modify_index")])?
                .encode_gauge(&node.store_revision)?;
        }

        let mut metric = encoder.encode_descriptor(
            "pylon_config_store_revision",
            "The revision of the node's copy of the config store",
            None,
            MetricType::Gauge,
        )?;
        metric.encode_gauge(&node.store_revision)?;
        if let Some(served) = node.served_revision {
            let mut metric = encoder.encode_descriptor(
                "pylon_config_served_revision",
                "The config store revision the workers serve: behind the store's while a change is applied, or when it was refused",
                None,
                MetricType::Gauge,
            )?;
            metric.encode_gauge(&served)?;
        }

        let mut metric = encoder.encode_descriptor(
            "apisix_upstream_status",
            "Health of the upstream nodes with health checks: 1 healthy, 0 unhealthy",
            None,
            MetricType::Gauge,
        )?;
        for checked in &node.upstream_nodes {
            let labels = UpstreamNode(checked);
            metric
                .encode_family(&labels)?
                .encode_gauge(&u64::from(checked.healthy))?;
        }

        if !node.redis.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "pylon_redis_reachable",
                "Whether the last call to each Redis the limiting plugins use succeeded (1) or failed (0)",
                None,
                MetricType::Gauge,
            )?;
            for redis in &node.redis {
                metric
                    .encode_family(&[("name", redis.name.as_str())])?
                    .encode_gauge(&u64::from(redis.reachable))?;
            }
            let mut metric = encoder.encode_descriptor(
                "pylon_redis_failures",
                "Calls and connects to each Redis that failed or timed out",
                None,
                MetricType::Counter,
            )?;
            for redis in &node.redis {
                counter_sample(
                    metric.encode_family(&[("name", redis.name.as_str())])?,
                    redis.failures,
                )?;
            }
        }
        Ok(())
    }
}

/// A counter's one sample, under the labels `metric` was made for.
fn counter_sample(mut metric: MetricEncoder<'_>, value: u64) -> fmt::Result {
    metric.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

/// A histogram's sample, its bounds and sum in `scale`'s unit.
fn histogram_sample<const B: usize>(
    metric: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    scale: &Scale,
    histogram: &HistogramTotals<B>,
) -> fmt::Result {
    let bounds = scale.bounds.iter().copied().chain([f64::INFINITY]);
    let buckets: Vec<(f64, u64)> = bounds.zip(histogram.buckets.iter().copied()).collect();
    let sum = histogram.sum_micros as f64 / 1e6 * scale.per_second;
    metric
        .encode_family(labels)?
        .encode_histogram::<NoLabelSet>(sum, histogram.count(), &buckets, None)
}

// === labels ===

impl EncodeLabelSet for StatusLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        ("code", Code(self.code)).encode(encoder.encode_label())?;
        ("route", &*self.route).encode(encoder.encode_label())?;
        ("matched_uri", &*self.matched_uri).encode(encoder.encode_label())?;
        ("matched_host", &*self.matched_host).encode(encoder.encode_label())?;
        ("service", &*self.service).encode(encoder.encode_label())?;
        ("consumer", &*self.consumer).encode(encoder.encode_label())?;
        ("node", Node(self.node)).encode(encoder.encode_label())
    }
}

impl EncodeLabelSet for TrafficLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        ("route", &*self.route).encode(encoder.encode_label())?;
        ("service", &*self.service).encode(encoder.encode_label())?;
        ("consumer", &*self.consumer).encode(encoder.encode_label())?;
        ("node", Node(self.node)).encode(encoder.encode_label())
    }
}

/// Traffic labels after a `type` label (`request`, `egress`, ...).
struct Typed<'a> {
    kind: &'a str,
    labels: &'a TrafficLabels,
}

impl EncodeLabelSet for Typed<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        ("type", self.kind).encode(encoder.encode_label())?;
        self.labels.encode(encoder)
    }
}

struct Refusal<'a> {
    code: u16,
    cause: &'a str,
}

impl EncodeLabelSet for Refusal<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        ("code", Code(self.code)).encode(encoder.encode_label())?;
        ("cause", self.cause).encode(encoder.encode_label())
    }
}

struct StreamStatus(u16);

impl EncodeLabelSet for StreamStatus {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        ("status", Code(self.0)).encode(encoder.encode_label())
    }
}

struct UpstreamNode<'a>(&'a NodeHealthReport);

impl EncodeLabelSet for UpstreamNode<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        ("name", self.0.upstream.as_str()).encode(encoder.encode_label())?;
        ("ip", self.0.ip.as_str()).encode(encoder.encode_label())?;
        ("port", Code(self.0.port)).encode(encoder.encode_label())
    }
}

/// A number as a label value.
struct Code(u16);

impl EncodeLabelValue for Code {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        write!(encoder, "{}", self.0)
    }
}

/// An upstream node's address as a label value; empty when no node was tried.
struct Node(Option<IpAddr>);

impl EncodeLabelValue for Node {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        match self.0 {
            Some(ip) => write!(encoder, "{ip}"),
            None => Ok(()),
        }
    }
}
