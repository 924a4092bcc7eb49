//! The running process's side of a handoff: listen on the handoff socket, give a successor
//! the listening sockets and, if it asks, the config store, and report when it serves.
//!
//! The socket is served by a thread of its own with blocking calls: a handoff happens once
//! per restart, and keeping it off the runtimes means a slow peer can never delay a request.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustix::net::{Shutdown, SocketFlags};
use tokio::sync::{mpsc, oneshot};

use super::takeover::{HELLO, READY, RELEASED, RELEASE_STORE, STOPPING};
use super::{wire, HandoffError, Listeners};

/// How long a successor that has the sockets may take to start its workers and say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds each of the other steps.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The handoff socket of a running gateway.
pub struct HandoffServer {
    path: PathBuf,
    /// The socket file this process put in place; a successor replaces it with its own.
    file: (u64, u64),
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<HandoffEvent>,
}

/// What a successor needs this process to do, in the order it happens.
#[derive(Debug)]
pub enum HandoffEvent {
    /// It opens the config store next: stop taking writes, let go of the store, then say so.
    ReleaseStore(StoreRelease),
    /// The successor that was given the store stopped before it served: take the store back
    /// and write again.
    StoreReturned,
    /// A successor serves on the listening sockets (its pid): stop accepting and drain.
    Succeeded(u32),
}

/// A successor waiting for the config store; dropping this refuses it.
#[derive(Debug)]
pub struct StoreRelease(oneshot::Sender<()>);

impl StoreRelease {
    /// Tells the successor that it may open the store: this process will write to it no more.
    pub fn done(self) {
        let _ = self.0.send(());
    }
}

struct Shared {
    socket: OwnedFd,
    /// Copies of the gateway's listening sockets, for a successor; `None` once stopping, so
    /// that the sockets really close (and refuse connections) when the workers let go of
    /// theirs. Locked while they are being sent, so stopping waits for a handoff under way
    /// rather than close sockets a successor is about to rely on.
    listeners: Mutex<Option<Listeners>>,
    closed: AtomicBool,
}

impl HandoffServer {
    /// Listens at `path` (replacing a socket already there: the one of the process this one
    /// took over from, or one left behind), ready to hand `listeners` to a successor.
    pub fn start(path: &Path, listeners: Listeners) -> std::io::Result<HandoffServer> {
        let (socket, file) = wire::listen(path)?;
        let shared = Arc::new(Shared {
            socket,
            listeners: Mutex::new(Some(listeners)),
            closed: AtomicBool::new(false),
        });
        let (tx, events) = mpsc::unbounded_channel();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("pylon-handoff".to_owned())
            .spawn(move || serve(&thread_shared, &tx))?;
        Ok(HandoffServer {
            path: path.to_owned(),
            file,
            shared,
            events,
        })
    }

    /// The next thing a successor needs of this process; [`HandoffEvent::Succeeded`] is the
    /// last.
    pub async fn next(&mut self) -> HandoffEvent {
        match self.events.recv().await {
            Some(event) => event,
            // The handoff thread is gone without a successor: none will come.
            None => std::future::pending().await,
        }
    }

    /// Hands over nothing more: closes this process's copies of the listening sockets (after
    /// a handoff under way, if any) and removes the socket file unless a successor has put
    /// its own there.
    pub fn close(self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        drop(lock(&self.shared.listeners).take());
        // Wakes the thread out of `accept`.
        let _ = rustix::net::shutdown(&self.shared.socket, Shutdown::Read);
        if wire::is_ours(&self.path, self.file) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn lock(listeners: &Mutex<Option<Listeners>>) -> std::sync::MutexGuard<'_, Option<Listeners>> {
    // Nothing is left half-changed under this lock: a panic elsewhere does not taint it.
    listeners.lock().unwrap_or_else(PoisonError::into_inner)
}

fn serve(shared: &Shared, events: &mpsc::UnboundedSender<HandoffEvent>) {
    while !shared.closed.load(Ordering::SeqCst) {
        let connection = match rustix::net::accept_with(&shared.socket, SocketFlags::CLOEXEC) {
            Ok(connection) => connection,
            Err(_) if shared.closed.load(Ordering::SeqCst) => return,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!("handoff socket: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        match hand_over(shared, &connection, events) {
            Ok(pid) => {
                let _ = events.send(HandoffEvent::Succeeded(pid));
                return;
            }
            Err(e) => tracing::warn!("handoff to a new process failed, serving on: {e}"),
        }
    }
}

/// What a successor says once it has the sockets.
enum Request {
    ReleaseStore,
    Ready,
}

/// One successor: send it the sockets, let go of the store if it asks, and wait until it
/// serves.
fn hand_over(
    shared: &Shared,
    connection: &OwnedFd,
    events: &mpsc::UnboundedSender<HandoffEvent>,
) -> Result<u32, HandoffError> {
    wire::set_timeout(connection, STEP_TIMEOUT)?;
    let pid = wire::peer_pid(connection)?;
    match wire::recv(connection)? {
        Some(hello) if hello.text == HELLO && hello.fd.is_none() => {}
        Some(other) => {
            wire::tell(connection, "refused unsupported protocol");
            return Err(HandoffError::Protocol(other.text));
        }
        None => return Err(HandoffError::Protocol(format!("pid {pid} hung up"))),
    }
    let sent = {
        let listeners = lock(&shared.listeners);
        let Some(listeners) = listeners.as_ref() else {
            wire::tell(connection, STOPPING);
            return Err(HandoffError::Refused("this process is stopping".to_owned()));
        };
        let mut sent = 0;
        for (index, group) in listeners.groups.iter().enumerate() {
            let text = format!("socket {index} {} {}", group.kind.word(), group.configured);
            for socket in &group.sockets {
                wire::send(connection, &text, Some(socket.as_fd()))?;
                sent += 1;
            }
        }
        wire::send(connection, &format!("end {sent}"), None)?;
        sent
    };
    wire::set_timeout(connection, READY_TIMEOUT)?;
    if let Request::Ready = next_request(connection, pid)? {
        tracing::info!(pid, sockets = sent, "listening sockets handed over");
        return Ok(pid);
    }
    release_store(connection, events)?;
    // The store is the successor's now: if it stops before it serves, it comes back here.
    let served = wire::send(connection, RELEASED, None)
        .map_err(HandoffError::from)
        .and_then(|()| next_request(connection, pid))
        .and_then(|request| match request {
            Request::Ready => Ok(pid),
            Request::ReleaseStore => Err(HandoffError::Protocol(RELEASE_STORE.to_owned())),
        });
    match served {
        Ok(pid) => tracing::info!(
            pid,
            sockets = sent,
            "listening sockets and store handed over"
        ),
        Err(_) => {
            let _ = events.send(HandoffEvent::StoreReturned);
        }
    }
    served
}

/// Has the owner of the store stop writing and let go of it.
fn release_store(
    connection: &OwnedFd,
    events: &mpsc::UnboundedSender<HandoffEvent>,
) -> Result<(), HandoffError> {
    let (done, released) = oneshot::channel();
    let asked = events.send(HandoffEvent::ReleaseStore(StoreRelease(done)));
    // No answer: the owner is stopping, and the request was dropped with the server.
    if asked.is_err() || released.blocking_recv().is_err() {
        wire::tell(connection, STOPPING);
        return Err(HandoffError::Refused("this process is stopping".to_owned()));
    }
    Ok(())
}

fn next_request(connection: &OwnedFd, pid: u32) -> Result<Request, HandoffError> {
    match wire::recv(connection)? {
        Some(message) if message.text == READY => Ok(Request::Ready),
        Some(message) if message.text == RELEASE_STORE => Ok(Request::ReleaseStore),
        Some(other) => Err(HandoffError::Protocol(other.text)),
        None => Err(HandoffError::Protocol(format!(
            "pid {pid} took the sockets and hung up without serving on them"
        ))),
    }
}
