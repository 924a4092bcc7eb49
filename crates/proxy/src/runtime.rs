//! The thread a worker runs on: its runtime, its accept loops, its pool sweeper, and the drain
//! when it stops.

use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;

use crate::accept::{accept, Protocol, Serves};
use crate::access_log::AccessLog;
use crate::metrics::WorkerCounters;
use crate::snapshot::SnapshotCell;
use crate::stream::bindings::Bindings;
use crate::stream::udp;
use crate::worker::{Limits, Worker};

/// How often idle upstream connections are checked for expiry and remote close.
const POOL_SWEEP: Duration = Duration::from_secs(1);
/// How often a stopping worker checks whether its last connection has finished.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// A listening socket of one worker: a TCP one, or a UDP one when it serves datagrams.
pub(crate) struct Listener {
    pub socket: OwnedFd,
    pub serves: Serves,
}

/// Runs a worker on the current thread until it has stopped and drained.
pub(crate) fn run(
    listeners: Vec<Listener>,
    snapshots: SnapshotCell,
    limits: Arc<Limits>,
    access_log: AccessLog,
    counters: Arc<WorkerCounters>,
    bindings: Arc<Bindings>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let worker = Rc::new(Worker::new(
            limits, access_log, counters, snapshots, bindings,
        ));
        for Listener { socket, serves } in listeners {
            if serves.protocol == Protocol::Udp {
                let socket = UdpSocket::from_std(socket.into())?;
                tokio::task::spawn_local(udp::serve(worker.clone(), socket));
            } else {
                let socket = TcpListener::from_std(socket.into())?;
                tokio::task::spawn_local(accept(worker.clone(), socket, serves));
            }
        }
        tokio::task::spawn_local(sweep_pool(worker.clone()));

        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        worker.stop();
        // Devices are told to reconnect (to the other nodes), each after its own delay.
        for gateway in worker.view().snapshot.stream.push_gateways() {
            gateway.drain();
        }
        let deadline = Instant::now() + worker.limits.shutdown_grace;
        while worker.connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        if worker.connections() > 0 {
            tracing::warn!(
                connections = worker.connections(),
                "grace period over; closing connections still open"
            );
        }
        Ok(())
    })
}

async fn sweep_pool(worker: Rc<Worker>) {
    let mut interval = tokio::time::interval(POOL_SWEEP);
    loop {
        interval.tick().await;
        worker.pool.borrow_mut().sweep(Instant::now());
    }
}

/// The CPU priority (nice value) of the control side's threads: some steps below the workers',
/// which keep the one the process started with. On a core a worker shares, the control side
/// then waits while the worker has requests to serve, instead of adding its compiles, writes
/// and probes to their latency.
#[derive(Debug, Clone, Copy)]
pub struct ControlPriority(i32);

impl ControlPriority {
    /// `nice` steps below the calling thread's priority (Linux's lowest is 19).
    pub fn below_current(nice: i32) -> Self {
        let current = rustix::process::getpriority_process(None).unwrap_or(0);
        Self((current + nice).min(19))
    }

    /// Puts the calling thread at this priority: Linux keeps one per thread, and a new thread
    /// starts with its creator's.
    pub fn enter(self) {
        if let Err(e) = rustix::process::setpriority_process(None, self.0) {
            tracing::warn!("the control side's CPU priority stays as it was: {e}");
        }
    }
}
