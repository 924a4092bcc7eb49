//! A worker: one thread, one single-threaded runtime, its own listener sockets, upstream pools
//! and balancer state. Requests never touch another worker's data, so nothing on the request
//! path takes a lock or wakes another thread.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::cache::Cache;
use tokio::net::TcpListener;
use tokio::sync::{futures::Notified, watch, Notify};

use crate::access_log::AccessLog;
use crate::connection;
use crate::http1::HeadLimits;
use crate::http2::{H2Upstreams, Http2Settings};
use crate::pool::Pool;
use crate::settings::{secs, ProxySettings};
use crate::snapshot::{Snapshot, SnapshotCell, WorkerView};

/// How often idle upstream connections are checked for expiry and remote close.
const POOL_SWEEP: Duration = Duration::from_secs(1);
/// How often a stopping worker checks whether its last connection has finished.
const DRAIN_POLL: Duration = Duration::from_millis(20);

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
        }
    }
}

pub(crate) struct Worker {
    pub limits: Arc<Limits>,
    pub access_log: AccessLog,
    pub pool: RefCell<Pool>,
    /// HTTP/2 upstream connections (gRPC), one per node.
    pub h2_upstreams: Rc<RefCell<H2Upstreams>>,
    snapshots: RefCell<Cache<SnapshotCell, Arc<Snapshot>>>,
    view: RefCell<Option<Rc<WorkerView>>>,
    connections: Cell<usize>,
    stopping: Cell<bool>,
    stop: Notify,
}

impl Worker {
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

/// Runs a worker on the current thread until it has stopped and drained.
/// A listening socket of one worker.
pub(crate) struct Listener {
    pub socket: std::net::TcpListener,
    /// Connections start with a TLS handshake.
    pub tls: bool,
}

pub(crate) fn run(
    listeners: Vec<Listener>,
    snapshots: SnapshotCell,
    limits: Arc<Limits>,
    access_log: AccessLog,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let worker = Rc::new(Worker {
            limits,
            access_log,
            pool: RefCell::default(),
            h2_upstreams: Rc::default(),
            snapshots: RefCell::new(Cache::new(snapshots)),
            view: RefCell::default(),
            connections: Cell::new(0),
            stopping: Cell::new(false),
            stop: Notify::new(),
        });
        for listener in listeners {
            let socket = TcpListener::from_std(listener.socket)?;
            tokio::task::spawn_local(accept(worker.clone(), socket, listener.tls));
        }
        tokio::task::spawn_local(sweep_pool(worker.clone()));

        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        worker.stopping.set(true);
        worker.stop.notify_waiters();
        let deadline = Instant::now() + worker.limits.shutdown_grace;
        while worker.connections.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        if worker.connections.get() > 0 {
            tracing::warn!(
                connections = worker.connections.get(),
                "grace period over; closing connections still open"
            );
        }
        Ok(())
    })
}

async fn accept(worker: Rc<Worker>, listener: TcpListener, tls: bool) {
    loop {
        let stopping = worker.stopping();
        if worker.is_stopping() {
            return;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping => return,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if worker.connections.get() >= worker.limits.max_connections {
            drop(stream);
            continue;
        }
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        worker.connections.set(worker.connections.get() + 1);
        let conn_worker = worker.clone();
        tokio::task::spawn_local(async move {
            if tls {
                connection::serve_tls(conn_worker.clone(), stream, client, local).await;
            } else {
                connection::serve(conn_worker.clone(), stream, client, local).await;
            }
            conn_worker
                .connections
                .set(conn_worker.connections.get() - 1);
        });
    }
}

async fn sweep_pool(worker: Rc<Worker>) {
    let mut interval = tokio::time::interval(POOL_SWEEP);
    loop {
        interval.tick().await;
        worker.pool.borrow_mut().sweep(Instant::now());
    }
}
