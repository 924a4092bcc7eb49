//! Metrics, as APISIX's `prometheus` plugin exports them, on a listener of their own.
//!
//! Every worker counts in counters of its own ([`recorder`]): each request once, in the log
//! step, by its route's labels, consumer, upstream node and status when the `prometheus`
//! plugin applies to it (on the route, its service or plugin config, a global rule or the
//! consumer), and in the node's totals (requests, connections, refusals before routing)
//! always. Nothing is shared between workers and nothing is locked on the request path; a
//! scrape adds the workers' counters up ([`scrape`]) and writes them, with the node's state
//! (config revisions, the store, upstream health), in Prometheus's text format
//! ([`exposition`]).
//!
//! Labels stay bounded: routes, services, consumers and nodes come from the configuration,
//! statuses have three digits, and requests no route matched count under one empty route.

mod exposition;
mod labels;
mod recorder;
mod scrape;

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::control::NodeStatus;
use crate::handoff::{Kind, Listeners};
use crate::health::HealthRegistry;
use crate::local_http::{self, Answer};
pub(crate) use labels::{Named, RouteLabels};
pub(crate) use recorder::{Recorder, Sample, WorkerCounters};
pub use scrape::Traffic;

/// Where the metrics are served: APISIX's path, and the one Prometheus scrapes by default.
pub const METRICS_PATHS: [&str; 2] = ["/apisix/prometheus/metrics", "/metrics"];

/// The `metrics` section of the node config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// Port 0 picks a free port.
    pub listen: SocketAddr,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
        }
    }
}

/// What a scrape reports on.
pub struct Exporter {
    /// The workers' counters, on a node that proxies.
    traffic: Option<Traffic>,
    status: NodeStatus,
    health: Arc<HealthRegistry>,
    etcd: bool,
    hostname: String,
}

impl Exporter {
    /// `etcd`: the node's config store is etcd.
    pub fn new(
        traffic: Option<Traffic>,
        status: NodeStatus,
        health: Arc<HealthRegistry>,
        etcd: bool,
    ) -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        Exporter {
            traffic,
            status,
            health,
            etcd,
            hostname,
        }
    }

    fn scrape(&self) -> String {
        let (store_revision, store_live) = {
            let store = self.status.store.borrow();
            (store.revision, store.live)
        };
        let node = exposition::NodeState {
            hostname: self.hostname.clone(),
            store_revision,
            store_live,
            etcd: self.etcd,
            served_revision: self
                .status
                .serving
                .as_ref()
                .map(|cell| cell.load().revision),
            upstream_nodes: self.health.node_health(),
            redis: pylon_plugins::Redis::statuses(),
        };
        exposition::render(self.traffic.as_ref().map(Traffic::totals), node)
    }

    fn answer(&self, method: &str, path: &str) -> Answer {
        if !METRICS_PATHS.contains(&path) {
            return Answer::error(404, "404 Not Found");
        }
        if method != "GET" {
            return Answer::error(405, "405 Method Not Allowed");
        }
        Answer {
            status: 200,
            content_type: exposition::CONTENT_TYPE,
            body: self.scrape(),
        }
    }
}

/// The metrics listener, bound and ready to serve.
pub struct MetricsApi {
    listener: TcpListener,
}

impl MetricsApi {
    /// Listens on `settings.listen`: on the socket a predecessor handed over if there is one
    /// among `inherited` (see [`crate::Takeover`]), else on a new one.
    pub async fn bind(settings: &MetricsSettings, inherited: &mut Listeners) -> io::Result<Self> {
        let listener = match inherited.take_tcp(settings.listen, Kind::Metrics) {
            Some(socket) => TcpListener::from_std(socket)?,
            None => TcpListener::bind(settings.listen).await?,
        };
        Ok(Self { listener })
    }

    /// Adds a copy of the listening socket to `listeners`, for a successor to take over.
    pub fn share(&self, settings: &MetricsSettings, listeners: &mut Listeners) -> io::Result<()> {
        let copy = self.listener.as_fd().try_clone_to_owned()?;
        listeners.push(settings.listen, Kind::Metrics, vec![copy])
    }

    /// The address actually listened on (port 0 resolved).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves scrapes for ever; run it on the control runtime.
    pub async fn serve(self, exporter: Exporter) {
        local_http::serve(self.listener, "metrics listener", move |method, path| {
            exporter.answer(method, path)
        })
        .await
    }
}
