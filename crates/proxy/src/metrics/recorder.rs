//! One worker's counters, and how a request is counted in them.
//!
//! Each worker owns its counters: only its thread writes them, so an update is a plain load
//! and store of a relaxed atomic (no read-modify-write, no lock, no cache line shared with
//! another worker), and the scrape reads them from the control side. A worker finds a
//! request's series in a table of its own; a series is made (and handed to the scrape
//! through a lock that only this worker and the scrape take) the first time its labels are
//! seen.

use std::cell::RefCell;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};
use pylon_plugin::MetricNames;

use super::labels::{LabelSet, RouteLabels};
use crate::error::GatewayError;

/// A histogram's buckets: their upper bounds, in a unit `per_second` of which make a second.
pub(crate) struct Scale {
    pub bounds: &'static [f64],
    pub per_second: f64,
}

/// The request latency histograms': milliseconds, APISIX's bounds.
pub(crate) const LATENCY: Scale = Scale {
    bounds: &[
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
        30000.0, 60000.0,
    ],
    per_second: 1e3,
};

/// The stream sessions' durations: seconds, from a short exchange to a day-long connection.
pub(crate) const SESSION: Scale = Scale {
    bounds: &[
        0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
    ],
    per_second: 1.0,
};

/// A histogram over [`LATENCY`]'s buckets, and a last one for longer ones.
pub(crate) type LatencyHistogram = Histogram<{ LATENCY.bounds.len() + 1 }>;
/// A histogram over [`SESSION`]'s buckets, and a last one for longer ones.
pub(crate) type SessionHistogram = Histogram<{ SESSION.bounds.len() + 1 }>;

/// What a codec refuses before routing, as counted: the error and its `cause` label.
pub(crate) const REFUSALS: [(GatewayError, &str); 5] = [
    (GatewayError::BadRequest, "bad_request"),
    (GatewayError::RequestTimeout, "request_timeout"),
    (GatewayError::UriTooLong, "uri_too_long"),
    (GatewayError::HeadersTooLarge, "headers_too_large"),
    (GatewayError::NotImplemented, "not_implemented"),
];

/// The statuses a stream connection ends with (see [`crate::stream`]), as counted.
pub(crate) const STREAM_STATUSES: [u16; 6] = [200, 403, 404, 502, 503, 504];

/// A counter written by one thread only.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    fn add(&self, n: u64) {
        // One writer: a load and a store cannot lose an update, and cost no locked
        // instruction. Release (a plain store on x86): a scrape that sees this count sees
        // every count the worker made before it.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Release);
    }

    fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Release);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Acquire)
    }
}

/// The counters of one worker, shared with the scrape.
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    /// Every request the worker answered or logged, refused ones included.
    pub requests: Counter,
    /// Client connections accepted, those served (not closed at once for being over
    /// `max_connections_per_worker`), and those open now.
    pub accepted: Counter,
    pub handled: Counter,
    pub active: Counter,
    /// By the index of [`REFUSALS`].
    pub refused: [Counter; REFUSALS.len()],
    /// Stream connections and UDP sessions ended, by the index of [`STREAM_STATUSES`].
    pub stream_connections: [Counter; STREAM_STATUSES.len()],
    /// Bytes the stream connections moved: from clients, and from upstreams.
    pub stream_bytes: [Counter; 2],
    /// How long the stream connections and UDP sessions lasted.
    pub stream_durations: SessionHistogram,
    /// What the framed-protocol connections read, wrote and refused.
    pub frames: pylon_frames::Counters,
    /// Every series this worker has made.
    series: Mutex<Vec<Arc<Series>>>,
}

impl WorkerCounters {
    /// The series made so far (more may come while the caller reads these).
    pub fn series(&self) -> Vec<Arc<Series>> {
        self.series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The requests of one set of labels.
#[derive(Debug)]
pub(crate) struct Series {
    pub labels: SeriesLabels,
    hash: u64,
    pub requests: Counter,
    /// Whole requests, upstream exchanges, and the gateway's own share (the first less the
    /// second).
    pub request_latency: LatencyHistogram,
    pub upstream_latency: LatencyHistogram,
    pub gateway_latency: LatencyHistogram,
    /// Bytes from the client (request heads) and to it (whole responses).
    pub ingress: Counter,
    pub egress: Counter,
}

/// A series' labels: the route's, then the request's own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SeriesLabels {
    pub route: Arc<str>,
    pub service: Arc<str>,
    pub matched_uri: Arc<str>,
    pub matched_host: Arc<str>,
    pub consumer: Arc<str>,
    /// The upstream node's address; none when no node was tried.
    pub node: Option<IpAddr>,
    pub code: u16,
}

/// Durations in `B` buckets: one per bound of a [`Scale`] of `B - 1`, and a last one for
/// longer ones.
#[derive(Debug)]
pub(crate) struct Histogram<const B: usize> {
    pub buckets: [Counter; B],
    pub sum_micros: Counter,
}

impl<const B: usize> Default for Histogram<B> {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| Counter::default()),
            sum_micros: Counter::default(),
        }
    }
}

impl<const B: usize> Histogram<B> {
    fn observe(&self, scale: &Scale, duration: Duration) {
        let value = duration.as_secs_f64() * scale.per_second;
        let bucket = scale.bounds.partition_point(|&bound| bound < value);
        self.buckets[bucket].add(1);
        self.sum_micros
            .add(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    }
}

/// One request, as its series counts it.
pub(crate) struct Sample<'a> {
    pub consumer: &'a str,
    pub node: Option<IpAddr>,
    pub status: u16,
    pub latency: Duration,
    pub upstream_latency: Option<Duration>,
    pub ingress: u64,
    pub egress: u64,
}

/// A worker's side of its counters.
pub(crate) struct Recorder {
    counters: Arc<WorkerCounters>,
    /// The series by their labels, for this worker to find.
    index: RefCell<HashTable<Arc<Series>>>,
    hasher: DefaultHashBuilder,
    unmatched: RouteLabels,
}

impl Recorder {
    pub fn new(counters: Arc<WorkerCounters>) -> Self {
        Recorder {
            counters,
            index: RefCell::default(),
            hasher: DefaultHashBuilder::default(),
            unmatched: RouteLabels::unmatched(),
        }
    }

    pub fn counters(&self) -> &WorkerCounters {
        &self.counters
    }

    /// Counts a request in the node's totals, after its other counts (a scrape that sees
    /// it sees them); `refused` when the codec refused it before routing.
    pub fn request(&self, refused: Option<GatewayError>) {
        if let Some(error) = refused {
            if let Some(i) = REFUSALS.iter().position(|(e, _)| *e == error) {
                self.counters.refused[i].add(1);
            }
        }
        self.counters.requests.add(1);
    }

    pub fn accepted(&self, handled: bool) {
        self.counters.accepted.add(1);
        if handled {
            self.counters.handled.add(1);
        }
    }

    pub fn connection_opened(&self) {
        self.counters.active.add(1);
    }

    pub fn connection_closed(&self) {
        self.counters.active.sub(1);
    }

    /// Counts a stream connection that ended with `status`, the bytes it moved and how long
    /// it lasted.
    pub fn stream_session(&self, status: u16, moved: [u64; 2], lasted: Duration) {
        if let Some(i) = STREAM_STATUSES.iter().position(|&s| s == status) {
            self.counters.stream_connections[i].add(1);
        }
        self.counters.stream_bytes[0].add(moved[0]);
        self.counters.stream_bytes[1].add(moved[1]);
        self.counters.stream_durations.observe(&SESSION, lasted);
    }

    /// Counts a request under its route's `labels` (none: no route matched).
    pub fn observe(&self, labels: Option<&LabelSet>, sample: &Sample<'_>) {
        let labels = labels.unwrap_or_else(|| self.unmatched.get(MetricNames::Ids));
        let hash = self.hash(labels, sample);
        let mut index = self.index.borrow_mut();
        let entry = index.entry(hash, |s| s.is(labels, sample), |s| s.hash);
        let series = match entry {
            Entry::Occupied(found) => found.into_mut(),
            Entry::Vacant(vacant) => {
                let series = Arc::new(Series::new(labels, sample, hash));
                self.counters
                    .series
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(series.clone());
                vacant.insert(series).into_mut()
            }
        };
        series.requests.add(1);
        series.request_latency.observe(&LATENCY, sample.latency);
        if let Some(latency) = sample.upstream_latency {
            series.upstream_latency.observe(&LATENCY, latency);
        }
        let upstream = sample.upstream_latency.unwrap_or_default();
        series
            .gateway_latency
            .observe(&LATENCY, sample.latency.saturating_sub(upstream));
        series.ingress.add(sample.ingress);
        series.egress.add(sample.egress);
    }

    fn hash(&self, labels: &LabelSet, sample: &Sample<'_>) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        labels.hash.hash(&mut hasher);
        sample.consumer.hash(&mut hasher);
        sample.node.hash(&mut hasher);
        sample.status.hash(&mut hasher);
        hasher.finish()
    }
}

impl Series {
    fn new(labels: &LabelSet, sample: &Sample<'_>, hash: u64) -> Self {
        Series {
            labels: SeriesLabels {
                route: labels.route.clone(),
                service: labels.service.clone(),
                matched_uri: labels.matched_uri.clone(),
                matched_host: labels.matched_host.clone(),
                consumer: Arc::from(sample.consumer),
                node: sample.node,
                code: sample.status,
            },
            hash,
            requests: Counter::default(),
            request_latency: LatencyHistogram::default(),
            upstream_latency: LatencyHistogram::default(),
            gateway_latency: LatencyHistogram::default(),
            ingress: Counter::default(),
            egress: Counter::default(),
        }
    }

    /// Whether this series counts a request with `labels` and `sample`'s own labels.
    fn is(&self, labels: &LabelSet, sample: &Sample<'_>) -> bool {
        let own = &self.labels;
        own.code == sample.status
            && own.node == sample.node
            && *own.consumer == *sample.consumer
            && *own.route == *labels.route
            && *own.service == *labels.service
            && *own.matched_uri == *labels.matched_uri
            && *own.matched_host == *labels.matched_host
    }
}
