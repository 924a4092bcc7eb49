//! Starting and stopping the data plane: listener sockets, worker threads, graceful shutdown.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::accept::{self, Serves};
use crate::access_log::AccessLog;
use crate::handoff::{self, Kind, Listeners};
use crate::metrics::Traffic;
use crate::runtime::{self, Listener};
use crate::settings::ProxySettings;
use crate::snapshot::SnapshotCell;
use crate::worker::Limits;

const BACKLOG: i32 = 4096;

/// The running data plane.
pub struct Gateway {
    addrs: Vec<SocketAddr>,
    https_addrs: Vec<SocketAddr>,
    /// The listeners that expect a PROXY protocol header.
    proxied_addrs: Vec<SocketAddr>,
    proxied_https_addrs: Vec<SocketAddr>,
    /// The stream listeners.
    stream_addrs: Vec<(SocketAddr, Serves)>,
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    /// Copies of the listening sockets, for a successor to take over.
    listeners: Listeners,
    traffic: Traffic,
}

impl Gateway {
    /// Starts the workers on the listening sockets `inherited` from the process this one
    /// replaces (see [`crate::Takeover`]) and binds the rest: every listen address once per
    /// worker (`SO_REUSEPORT`: the kernel spreads connections, and datagrams by their source,
    /// over the workers).
    pub fn start(
        settings: &ProxySettings,
        snapshots: SnapshotCell,
        access_log: AccessLog,
        mut inherited: Listeners,
    ) -> std::io::Result<Gateway> {
        let workers = settings.worker_count();
        let mut per_worker: Vec<Vec<Listener>> = (0..workers).map(|_| Vec::new()).collect();
        let pp = &settings.proxy_protocol;
        let listens = [
            (&settings.listen, Serves::http(false, false)),
            (&settings.https.listen, Serves::http(true, false)),
            (&pp.listen, Serves::http(false, true)),
            (&pp.https_listen, Serves::http(true, true)),
        ];
        let (mut addrs, mut https_addrs) = (Vec::new(), Vec::new());
        let (mut proxied_addrs, mut proxied_https_addrs) = (Vec::new(), Vec::new());
        let mut stream_addrs = Vec::new();
        let mut listeners = Listeners::default();
        let streams = settings
            .stream
            .tcp
            .iter()
            .map(|l| (l.addr, Serves::tcp(l.tls, l.proxy_protocol)))
            .chain(settings.stream.udp.iter().map(|l| (l.addr, Serves::udp())));
        let each = listens
            .iter()
            .flat_map(|(addrs, serves)| addrs.iter().map(move |&addr| (addr, *serves)))
            .chain(streams);
        for (requested, serves) in each {
            let kind = Kind::Proxy(serves);
            let mut sockets = inherited.take(requested, kind);
            // Port 0 is resolved by the first bind; the other sockets join that port.
            let mut addr = match sockets.first() {
                Some(socket) => handoff::local_addr(socket)?,
                None => requested,
            };
            while sockets.len() < workers {
                let socket = bind(addr, serves.protocol)?;
                addr = handoff::local_addr(&socket)?;
                sockets.push(socket);
            }
            let copies = sockets
                .iter()
                .map(|s| s.try_clone())
                .collect::<Result<_, _>>()?;
            listeners.push(requested, kind, copies)?;
            // Each socket has its own accept queue: with fewer workers than sockets (more
            // came over from the previous process), a worker serves several.
            for (i, socket) in sockets.into_iter().enumerate() {
                per_worker[i % workers].push(Listener { socket, serves });
            }
            match (serves.tls, serves.proxy_protocol) {
                _ if serves.protocol != accept::Protocol::Http => stream_addrs.push((addr, serves)),
                (false, false) => addrs.push(addr),
                (true, false) => https_addrs.push(addr),
                (false, true) => proxied_addrs.push(addr),
                (true, true) => proxied_https_addrs.push(addr),
            }
        }
        let limits = Arc::new(Limits::new(settings));
        let traffic = Traffic::new(workers);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut handles = Vec::new();
        for (i, listeners) in per_worker.into_iter().enumerate() {
            let (snapshots, limits, access_log, counters, bindings, shutdown_rx) = (
                snapshots.clone(),
                limits.clone(),
                access_log.clone(),
                traffic.worker(i),
                traffic.bindings(),
                shutdown_rx.clone(),
            );
            let handle = std::thread::Builder::new()
                .name(format!("pylon-worker-{i}"))
                .spawn(move || {
                    let run = runtime::run(
                        listeners,
                        snapshots,
                        limits,
                        access_log,
                        counters,
                        bindings,
                        shutdown_rx,
                    );
                    if let Err(e) = run {
                        tracing::error!(worker = i, "worker failed: {e}");
                    }
                })?;
            handles.push(handle);
        }
        Ok(Gateway {
            addrs,
            https_addrs,
            proxied_addrs,
            proxied_https_addrs,
            stream_addrs,
            shutdown,
            workers: handles,
            listeners,
            traffic,
        })
    }

    /// The workers' counters, for the metrics listener.
    pub fn traffic(&self) -> Traffic {
        self.traffic.clone()
    }

    /// The plain HTTP addresses actually listened on (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The HTTPS addresses actually listened on (port 0 resolved).
    pub fn https_addrs(&self) -> &[SocketAddr] {
        &self.https_addrs
    }

    /// The plain HTTP addresses whose connections start with a PROXY protocol header.
    pub fn proxied_addrs(&self) -> &[SocketAddr] {
        &self.proxied_addrs
    }

    /// The HTTPS addresses whose connections start with a PROXY protocol header.
    pub fn proxied_https_addrs(&self) -> &[SocketAddr] {
        &self.proxied_https_addrs
    }

    /// The stream listeners' addresses, each with what it is: `tcp`, `tcp+tls`, and
    /// `+proxy` when connections start with a PROXY protocol header; `udp`.
    pub fn stream_addrs(&self) -> impl Iterator<Item = (SocketAddr, String)> + '_ {
        self.stream_addrs
            .iter()
            .map(|(addr, serves)| (*addr, serves.word()))
    }

    /// Copies of the listening sockets, for [`crate::HandoffServer`]; the gateway keeps none.
    pub fn take_listeners(&mut self) -> Listeners {
        std::mem::take(&mut self.listeners)
    }

    /// Stops accepting, lets in-flight requests finish within the grace period, closes idle
    /// connections, and returns when every worker has stopped.
    pub fn shutdown(self) {
        // First, so that the sockets close (and refuse connections) as the workers let go of
        // theirs, unless a successor holds them.
        drop(self.listeners);
        let _ = self.shutdown.send(true);
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

/// A socket of one worker on `addr`: listening for TCP connections, or bound for datagrams.
fn bind(addr: SocketAddr, protocol: accept::Protocol) -> std::io::Result<OwnedFd> {
    let udp = protocol == accept::Protocol::Udp;
    let (kind, transport) = if udp {
        (Type::DGRAM, Protocol::UDP)
    } else {
        (Type::STREAM, Protocol::TCP)
    };
    let socket = Socket::new(Domain::for_address(addr), kind, Some(transport))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    if !udp {
        socket.listen(BACKLOG)?;
    }
    Ok(socket.into())
}
