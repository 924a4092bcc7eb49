//! A worker: one thread, one single-threaded runtime, its own listener sockets, upstream pools
//! and balancer state. Requests never touch another worker's data, so nothing on the request
//! path takes a lock or wakes another thread.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::cache::Cache;
use pylon_plugins::IpSet;
use tokio::sync::{futures::Notified, Notify};

use crate::access_log::AccessLog;
use crate::http1::HeadLimits;
use crate::metrics::{Recorder, WorkerCounters};
use crate::settings::{secs, Http2Settings, ProxySettings};
use crate::snapshot::{Snapshot, SnapshotCell, WorkerView};
use crate::stream::bindings::Bindings;
use crate::upstream::h2::H2Upstreams;
use crate::upstream::pool::Pool;

/// Client-side limits, converted once from the settings.
pub(crate) struct Limits {
    pub head: HeadLimits,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub send_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_response_head: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    pub handshake_timeout: Duration,
    pub http2: Http2Settings,
    /// The peers allowed to send a PROXY protocol header; `None`: every peer.
    pub proxy_protocol_trusted: Option<IpSet>,
    pub stream_idle_timeout: Duration,
    /// `proxy.stream.half_close`.
    pub stream_half_close: bool,
    pub udp_idle_timeout: Duration,
}

impl Limits {
    pub fn new(settings: &ProxySettings) -> Self {
        Self {
            head: settings.head_limits(),
            header_timeout: secs(settings.client_header_timeout),
            body_timeout: secs(settings.client_body_timeout),
            send_timeout: secs(settings.client_send_timeout),
            keepalive_timeout: secs(settings.keepalive_timeout),
            max_response_head: settings.upstream.max_response_header_size,
            max_connections: settings.max_connections_per_worker,
            shutdown_grace: secs(settings.shutdown_grace),
            handshake_timeout: secs(settings.https.handshake_timeout),
            http2: settings.http2.clone(),
            // Validated with the settings; were it not, nobody would be trusted.
            proxy_protocol_trusted: settings
                .proxy_protocol
                .trusted_peers()
                .unwrap_or_else(|_| Some(IpSet::default())),
            stream_idle_timeout: secs(settings.stream.idle_timeout),
            stream_half_close: settings.stream.half_close,
            udp_idle_timeout: secs(settings.stream.udp_idle_timeout),
        }
    }
}

pub(crate) struct Worker {
    pub limits: Arc<Limits>,
    pub access_log: AccessLog,
    pub metrics: Recorder,
    pub pool: RefCell<Pool>,
    /// HTTP/2 upstream connections (gRPC), one per node.
    pub h2_upstreams: Rc<RefCell<H2Upstreams>>,
    /// The node's frames connections bound to a key, shared by every worker.
    pub bindings: Arc<Bindings>,
    snapshots: RefCell<Cache<SnapshotCell, Arc<Snapshot>>>,
    view: RefCell<Option<Rc<WorkerView>>>,
    stopping: Cell<bool>,
    stop: Notify,
}

impl Worker {
    pub fn new(
        limits: Arc<Limits>,
        access_log: AccessLog,
        counters: Arc<WorkerCounters>,
        snapshots: SnapshotCell,
        bindings: Arc<Bindings>,
    ) -> Self {
        Worker {
            limits,
            access_log,
            metrics: Recorder::new(counters),
            pool: RefCell::default(),
            h2_upstreams: Rc::default(),
            bindings,
            snapshots: RefCell::new(Cache::new(snapshots)),
            view: RefCell::default(),
            stopping: Cell::new(false),
            stop: Notify::new(),
        }
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.metrics.counters().active.get() as usize
    }

    /// Counts a client connection for as long as the returned guard lives.
    pub fn open_connection(self: &Rc<Self>) -> OpenConnection {
        self.metrics.connection_opened();
        OpenConnection(self.clone())
    }

    /// Tells every connection and accept loop that the worker stops.
    pub fn stop(&self) {
        self.stopping.set(true);
        self.stop.notify_waiters();
    }
    /// The current configuration as this worker sees it. Costs a pointer comparison unless
    /// the configuration changed since the last request.
    pub fn view(&self) -> Rc<WorkerView> {
        let mut snapshots = self.snapshots.borrow_mut();
        let current = snapshots.load();
        let mut view = self.view.borrow_mut();
        match &*view {
            Some(v) if Arc::ptr_eq(&v.snapshot, current) => v.clone(),
            previous => {
                let next = Rc::new(WorkerView::new(current.clone(), previous.as_deref()));
                *view = Some(next.clone());
                next
            }
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Completes when the worker starts stopping; create it before checking
    /// [`Worker::is_stopping`] so that no notification is missed.
    pub fn stopping(&self) -> Notified<'_> {
        self.stop.notified()
    }
}

/// A client connection of a worker, counted while it lives.
pub(crate) struct OpenConnection(Rc<Worker>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics.connection_closed();
    }
}
