//! Merging the workers' counters into the node's totals, at each scrape.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use pylon_frames::CounterValues;
use pylon_push::hub::HubTotals;

use crate::stream::bindings::Bindings;

use super::recorder::{Histogram, WorkerCounters, LATENCY, REFUSALS, SESSION, STREAM_STATUSES};

/// What goes wrong on framed-protocol connections, as counted: bad frames by kind (each
/// closes its connection), frames of unknown commands, calls without an answer, clients
/// timed out, calls abandoned when a closing connection's grace period ended, and WebSocket
/// messages that were not a frame or a JSON call.
pub(crate) const FRAME_ERRORS: [&str; 10] = [
    "missing_start",
    "bad_end",
    "too_long",
    "bad_length",
    "truncated",
    "unknown_command",
    "call_failed",
    "timeout",
    "abandoned",
    "bad_message",
];

/// A worker's frames counts by the index of [`FRAME_ERRORS`].
fn frame_errors(counts: &CounterValues) -> [u64; FRAME_ERRORS.len()] {
    [
        counts.missing_start,
        counts.bad_end,
        counts.too_long,
        counts.bad_length,
        counts.truncated,
        counts.unknown_commands,
        counts.dispatch_errors,
        counts.timeouts,
        counts.abandoned,
        counts.bad_messages,
    ]
}

/// Every worker's counters, and the node's bound frames connections: what the metrics
/// listener reads. Cheap to clone.
#[derive(Clone, Default)]
pub struct Traffic {
    workers: Arc<[Arc<WorkerCounters>]>,
    bindings: Arc<Bindings>,
}

/// The node's totals at one moment, every worker's added up.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub requests: u64,
    pub accepted: u64,
    pub handled: u64,
    pub active: u64,
    /// By the index of [`REFUSALS`].
    pub refused: [u64; REFUSALS.len()],
    /// By the index of [`STREAM_STATUSES`].
    pub stream_connections: [u64; STREAM_STATUSES.len()],
    /// From clients, from upstreams.
    pub stream_bytes: [u64; 2],
    pub stream_durations: HistogramTotals<{ SESSION.bounds.len() + 1 }>,
    /// Frames the framed-protocol connections read, and wrote.
    pub frames: [u64; 2],
    /// Frames connections bound to a key now.
    pub frames_bound: u64,
    /// By the index of [`FRAME_ERRORS`].
    pub frame_errors: [u64; FRAME_ERRORS.len()],
    /// Each push gateway's counts.
    pub push: Vec<HubTotals>,
    /// `apisix_http_status`: requests by all their labels.
    pub statuses: BTreeMap<StatusLabels, u64>,
    /// `apisix_http_latency` and `apisix_bandwidth`, whose labels leave out the status and
    /// the matched patterns.
    pub traffic: BTreeMap<TrafficLabels, TrafficTotals>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StatusLabels {
    pub code: u16,
    pub route: Arc<str>,
    pub matched_uri: Arc<str>,
    pub matched_host: Arc<str>,
    pub service: Arc<str>,
    pub consumer: Arc<str>,
    pub node: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TrafficLabels {
    pub route: Arc<str>,
    pub service: Arc<str>,
    pub consumer: Arc<str>,
    pub node: Option<IpAddr>,
}

#[derive(Debug, Default)]
pub(crate) struct TrafficTotals {
    pub request_latency: LatencyTotals,
    pub upstream_latency: LatencyTotals,
    pub gateway_latency: LatencyTotals,
    pub ingress: u64,
    pub egress: u64,
}

/// A histogram's counts by bucket (not cumulative; the last one past every bound).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramTotals<const B: usize> {
    pub buckets: [u64; B],
    pub sum_micros: u64,
}

/// The totals of a request latency histogram.
pub(crate) type LatencyTotals = HistogramTotals<{ LATENCY.bounds.len() + 1 }>;

impl<const B: usize> Default for HistogramTotals<B> {
    fn default() -> Self {
        HistogramTotals {
            buckets: [0; B],
            sum_micros: 0,
        }
    }
}

impl<const B: usize> HistogramTotals<B> {
    /// Every observation: the sum of the buckets, so that it always agrees with them.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    fn add(&mut self, histogram: &Histogram<B>) {
        for (total, bucket) in self.buckets.iter_mut().zip(&histogram.buckets) {
            *total += bucket.get();
        }
        self.sum_micros += histogram.sum_micros.get();
    }
}

impl Traffic {
    /// A fresh counter set for each of `workers` workers.
    pub(crate) fn new(workers: usize) -> Self {
        Traffic {
            workers: (0..workers).map(|_| Arc::default()).collect(),
            bindings: Arc::default(),
        }
    }

    /// Worker `i`'s counters.
    pub(crate) fn worker(&self, i: usize) -> Arc<WorkerCounters> {
        self.workers[i].clone()
    }

    /// The node's bound frames connections, which every worker shares.
    pub(crate) fn bindings(&self) -> Arc<Bindings> {
        self.bindings.clone()
    }

    /// Adds every worker's counters up. Each counter is read once; a request being counted
    /// meanwhile shows in some of its counters only, and in all of them at the next scrape.
    pub(crate) fn totals(&self) -> Totals {
        let mut totals = Totals {
            frames_bound: self.bindings.bound(),
            push: pylon_push::hub::totals(),
            ..Totals::default()
        };
        for worker in self.workers.iter() {
            // First: the counts of every request it includes are read after it.
            totals.requests += worker.requests.get();
            totals.accepted += worker.accepted.get();
            totals.handled += worker.handled.get();
            totals.active += worker.active.get();
            for (total, refused) in totals.refused.iter_mut().zip(&worker.refused) {
                *total += refused.get();
            }
            let streams = &worker.stream_connections;
            for (total, count) in totals.stream_connections.iter_mut().zip(streams) {
                *total += count.get();
            }
            for (total, bytes) in totals.stream_bytes.iter_mut().zip(&worker.stream_bytes) {
                *total += bytes.get();
            }
            totals.stream_durations.add(&worker.stream_durations);
            let frames = worker.frames.read();
            totals.frames[0] += frames.frames_in;
            totals.frames[1] += frames.frames_out;
            for (total, count) in totals.frame_errors.iter_mut().zip(frame_errors(&frames)) {
                *total += count;
            }
            for series in worker.series() {
                let labels = &series.labels;
                let status = StatusLabels {
                    code: labels.code,
                    route: labels.route.clone(),
                    matched_uri: labels.matched_uri.clone(),
                    matched_host: labels.matched_host.clone(),
                    service: labels.service.clone(),
                    consumer: labels.consumer.clone(),
                    node: labels.node,
                };
                *totals.statuses.entry(status).or_default() += series.requests.get();
                let traffic = TrafficLabels {
                    route: labels.route.clone(),
                    service: labels.service.clone(),
                    consumer: labels.consumer.clone(),
                    node: labels.node,
                };
                let sums = totals.traffic.entry(traffic).or_default();
                sums.request_latency.add(&series.request_latency);
                sums.upstream_latency.add(&series.upstream_latency);
                sums.gateway_latency.add(&series.gateway_latency);
                sums.ingress += series.ingress.get();
                sums.egress += series.egress.get();
            }
        }
        totals
    }
}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traffic")
            .field("workers", &self.workers.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pylon_plugin::MetricNames;

    use super::*;
    use crate::error::GatewayError;
    use crate::metrics::labels::{Named, RouteLabels};
    use crate::metrics::recorder::{Recorder, Sample};

    fn route(id: &str) -> RouteLabels {
        let id = Arc::from(id);
        RouteLabels::new(Named { id, name: None }, None, &["/a".into()], &[])
    }

    fn sample(status: u16, millis: u64) -> Sample<'static> {
        Sample {
            consumer: "",
            node: Some([127, 0, 0, 1].into()),
            status,
            latency: Duration::from_millis(millis),
            upstream_latency: Some(Duration::from_millis(millis / 2)),
            ingress: 100,
            egress: 1000,
        }
    }

    #[test]
    fn the_workers_counts_add_up_by_labels() {
        let traffic = Traffic::new(2);
        let (first, second) = (
            Recorder::new(traffic.worker(0)),
            Recorder::new(traffic.worker(1)),
        );
        // The same route compiled twice (two versions): one series per worker all the same.
        let (v1, v2) = (route("1"), route("1"));
        first.observe(Some(v1.get(MetricNames::Ids)), &sample(200, 3));
        first.observe(Some(v2.get(MetricNames::Ids)), &sample(200, 30));
        second.observe(Some(v2.get(MetricNames::Ids)), &sample(200, 300));
        second.observe(Some(v2.get(MetricNames::Ids)), &sample(502, 3));
        assert_eq!(traffic.worker(0).series().len(), 1);

        let totals = traffic.totals();
        let codes: Vec<(u16, u64)> = totals.statuses.iter().map(|(l, n)| (l.code, *n)).collect();
        assert_eq!(codes, [(200, 3), (502, 1)]);
        // Latency and bandwidth leave the status out: one series for both codes.
        assert_eq!(totals.traffic.len(), 1);
        let sums = totals.traffic.values().next().unwrap();
        assert_eq!((sums.ingress, sums.egress), (400, 4000));
        let request = &sums.request_latency;
        assert_eq!(request.count(), 4);
        assert_eq!(request.sum_micros, 336_000);
        // 3 ms twice (le 5), 30 ms (le 50), 300 ms (le 500).
        let bucket = |bound: f64| LATENCY.bounds.iter().position(|&b| b == bound).unwrap();
        assert_eq!(request.buckets[bucket(5.0)], 2);
        assert_eq!(request.buckets[bucket(50.0)], 1);
        assert_eq!(request.buckets[bucket(500.0)], 1);
        // The gateway's own share is what the upstream (half, in whole milliseconds) did not
        // take: 2 + 15 + 150 + 2 ms.
        assert_eq!(sums.gateway_latency.sum_micros, 169_000);
    }

    #[test]
    fn requests_no_route_matched_fold_into_one_series() {
        let traffic = Traffic::new(1);
        let recorder = Recorder::new(traffic.worker(0));
        for _ in 0..100 {
            recorder.observe(None, &sample(404, 1));
        }
        let totals = traffic.totals();
        assert_eq!(totals.statuses.len(), 1);
        let (labels, count) = totals.statuses.iter().next().unwrap();
        assert_eq!((&*labels.route, labels.code, *count), ("", 404, 100));
    }

    #[test]
    fn slow_requests_land_past_the_last_bound() {
        let traffic = Traffic::new(1);
        Recorder::new(traffic.worker(0)).observe(None, &sample(200, 120_000));
        let totals = traffic.totals();
        let request = &totals.traffic.values().next().unwrap().request_latency;
        assert_eq!(request.buckets[LATENCY.bounds.len()], 1);
        assert_eq!(request.count(), 1);
    }

    #[test]
    fn node_counters_add_up_and_refusals_count_by_cause() {
        let traffic = Traffic::new(2);
        let (first, second) = (
            Recorder::new(traffic.worker(0)),
            Recorder::new(traffic.worker(1)),
        );
        first.request(None);
        first.request(Some(GatewayError::HeadersTooLarge));
        second.request(Some(GatewayError::HeadersTooLarge));
        second.request(Some(GatewayError::UriTooLong));
        first.accepted(true);
        second.accepted(false);
        first.connection_opened();
        first.connection_opened();
        first.connection_closed();
        let totals = traffic.totals();
        assert_eq!(totals.requests, 4);
        assert_eq!((totals.accepted, totals.handled, totals.active), (2, 1, 1));
        let refused = |cause: &str| {
            let i = REFUSALS.iter().position(|(_, c)| *c == cause).unwrap();
            totals.refused[i]
        };
        assert_eq!(refused("headers_too_large"), 2);
        assert_eq!(refused("uri_too_long"), 1);
        assert_eq!(refused("bad_request"), 0);
    }
}
