//! The L4 proxy on datagrams: a UDP listener's datagrams are taken by the stream routes, a
//! session per client address.
//!
//! A client's first datagram opens its session: the route is chosen (by the listener's
//! address and port and the client's address; no route takes it by server name), its
//! `ip-restriction` and `limit-conn` pass it (a session counts as a connection), and a node is
//! picked as for a connection. The session talks to the node on a UDP socket of its own,
//! connected to it, and relays datagrams both ways as they come, each whole, until neither
//! side has sent one for `proxy.stream.udp_idle_timeout`.
//!
//! A node whose port is closed answers with an ICMP "port unreachable", which the kernel
//! reports on the connected socket as a refused connection. Until a node has answered, the
//! session keeps what it sent it (up to [`MAX_KEPT`] bytes) and, should it refuse, tries
//! the next node with them as a connection would; a node that is silent is not a dead one
//! (many UDP protocols never answer), so only a refusal counts against it.
//!
//! Sessions live in the worker that read their first datagram (`SO_REUSEPORT` sends a
//! client's datagrams to one socket), in a map only its listener task reads: no lock on the
//! datagram path. A worker holds at most `proxy.max_connections_per_worker` sessions and
//! connections together; a new client's datagram past that is dropped, so a flood of source
//! addresses costs a bounded amount of memory.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::{admit, log, relay, Arrival, Session, StreamVars, Transport};
use crate::attempts::{Attempts, Failure, UpstreamAnswer};
use crate::error::GatewayError;
use crate::snapshot::{UpstreamTarget, WorkerView};
use crate::worker::Worker;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams from a client waiting for its session to relay them (it relays each as it comes,
/// so they wait only while `limit-conn` delays the session); past this many, more are dropped,
/// as a full socket buffer would drop them.
const QUEUE: usize = 64;
/// Bytes a session keeps for the next node until its node answers (the first datagram is
/// always kept, whatever its size).
const MAX_KEPT: usize = 64 * 1024;

/// The sessions of one listener, by client address: where to pass each datagram on.
type Sessions = Rc<RefCell<HashMap<SocketAddr, mpsc::Sender<Bytes>>>>;

/// Reads datagrams from one listener socket and passes each to its client's session, opening
/// one for a new client, until the worker stops.
pub(crate) async fn serve(worker: Rc<Worker>, socket: UdpSocket) {
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let listener = Rc::new(socket);
    let sessions = Sessions::default();
    // The sessions read their nodes' datagrams here, one at a time (the worker's thread runs
    // one task at a time): one buffer per listener rather than one per session.
    let scratch = Rc::new(RefCell::new(vec![0u8; MAX_DATAGRAM]));
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let stopping = worker.stopping();
        if worker.is_stopping() {
            return;
        }
        let received = tokio::select! {
            received = listener.recv_from(&mut buf) => received,
            () = stopping => return,
        };
        let (n, client) = match received {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(%local, "UDP receive failed: {e}");
                continue;
            }
        };
        let datagram = Bytes::copy_from_slice(&buf[..n]);
        let datagram = match sessions.borrow_mut().entry(client) {
            Entry::Occupied(session) => match session.get().try_send(datagram) {
                Ok(()) | Err(TrySendError::Full(_)) => continue,
                // Its session is ending: this datagram opens the next one.
                Err(TrySendError::Closed(datagram)) => {
                    session.remove();
                    datagram
                }
            },
            Entry::Vacant(_) => datagram,
        };
        let handled = worker.connections() < worker.limits.max_connections;
        worker.metrics.accepted(handled);
        if !handled {
            continue;
        }
        let (tx, inbox) = mpsc::channel(QUEUE);
        sessions.borrow_mut().insert(client, tx);
        let open = worker.open_connection();
        let peer = Peer {
            listener: listener.clone(),
            client,
            inbox,
            scratch: scratch.clone(),
        };
        let (worker, sessions) = (worker.clone(), sessions.clone());
        tokio::task::spawn_local(async move {
            session(&worker, peer, local, datagram).await;
            let mut sessions = sessions.borrow_mut();
            // Unless a newer session of the same client took the place already.
            if sessions.get(&client).is_some_and(mpsc::Sender::is_closed) {
                sessions.remove(&client);
            }
            drop(open);
        });
    }
}

/// The client's side of a session.
struct Peer {
    listener: Rc<UdpSocket>,
    client: SocketAddr,
    /// The client's datagrams after the first.
    inbox: mpsc::Receiver<Bytes>,
    scratch: Rc<RefCell<Vec<u8>>>,
}

/// One session, from its first datagram to its end, and its log line.
async fn session(worker: &Rc<Worker>, peer: Peer, local: SocketAddr, first: Bytes) {
    let started = Instant::now();
    let arrival = Arrival {
        client: peer.client,
        local,
        sni: None,
        transport: Transport::Udp,
    };
    let view = worker.view();
    let mut outcome = Session {
        status: 404,
        route_id: None,
        upstream: None,
        connect_latency: None,
        relayed: relay::Relayed::default(),
        failure: None,
    };
    if let Some(route) = view.snapshot.stream.find(&arrival) {
        outcome.route_id = Some(route.id.clone());
        let _permit = match admit(route, &arrival).await {
            Ok(permit) => permit,
            Err(status) => {
                outcome.status = status;
                return log(worker, &arrival, started, &outcome);
            }
        };
        // Routes without an upstream speak frames, over TCP only.
        match &route.upstream {
            Some(upstream) => {
                let relay = Relay {
                    worker,
                    peer,
                    from_client: first.len() as u64,
                    from_upstream: 0,
                    kept: vec![first],
                    kept_all: true,
                    last: tokio::time::Instant::now(),
                };
                relay_to(&view, upstream, &arrival, relay, &mut outcome).await;
            }
            None => outcome.status = 502,
        }
    }
    log(worker, &arrival, started, &outcome);
}

/// Relays the session to a node of `upstream` that takes it, into `outcome`.
async fn relay_to(
    view: &WorkerView,
    upstream: &UpstreamTarget,
    arrival: &Arrival<'_>,
    mut relay: Relay<'_>,
    outcome: &mut Session,
) {
    let vars = StreamVars(arrival);
    let mut attempts = Attempts::new(view, upstream, &vars, "");
    let opened = attempts
        .run(true, async |_node, addr, _fresh| relay.open(addr).await)
        .await;
    match opened {
        Ok(done) => {
            outcome.status = 200;
            outcome.upstream = done.node.addr;
            let end = match done.value {
                Opened::Answered(socket) => {
                    outcome.connect_latency = Some(done.latency);
                    relay.pump(&socket, false).await
                }
                Opened::Ended(end) => end,
            };
            outcome.failure = match end {
                End::Refused => Some("upstream_refused"),
                End::Broken => Some("connection_broken"),
                End::Answered | End::Quiet | End::Stopped => None,
            };
        }
        Err(gave_up) => {
            outcome.status = gave_up.error.status();
            outcome.upstream = gave_up.node.and_then(|n| n.addr);
            outcome.failure = gave_up.node.map(|_| "upstream_refused");
        }
    }
    outcome.relayed.from_client = relay.from_client;
    outcome.relayed.from_upstream = relay.from_upstream;
}

/// Datagrams moving between a client and a node.
struct Relay<'w> {
    worker: &'w Rc<Worker>,
    peer: Peer,
    /// What the client sent since the node now tried was picked, until it answers.
    kept: Vec<Bytes>,
    /// Nothing sent to the node was left out of `kept`: the next node can be given it all.
    kept_all: bool,
    from_client: u64,
    from_upstream: u64,
    /// When the last datagram moved, either way.
    last: tokio::time::Instant,
}

/// How an attempt on a node came out.
enum Opened {
    /// It answered: the session goes on with it.
    Answered(UdpSocket),
    /// The session ended before it answered (not by its refusal).
    Ended(End),
}

impl UpstreamAnswer for Opened {
    /// An answer is the node's success for passive health checks; silence tells nothing.
    fn upstream_status(&self) -> Option<u16> {
        matches!(self, Opened::Answered(_)).then_some(200)
    }
}

/// Why relaying stopped.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The node sent its first datagram (while it was being tried).
    Answered,
    /// The node's port is closed.
    Refused,
    /// The node's socket failed otherwise.
    Broken,
    /// No datagram either way for the idle timeout: a session's ordinary end.
    Quiet,
    Stopped,
}

impl Relay<'_> {
    /// Tries the node at `addr`: sends it what the client has sent so far and relays until it
    /// answers, refuses (a failed attempt) or the session ends.
    async fn open(&mut self, addr: SocketAddr) -> Result<Opened, Failure> {
        let refused = Failure::before_sending(GatewayError::BadGateway);
        let Ok(socket) = connected(addr).await else {
            return Err(refused);
        };
        for datagram in &self.kept {
            if socket.send(datagram).await.is_err() {
                return Err(refused);
            }
        }
        match self.pump(&socket, true).await {
            End::Answered => {
                self.kept = Vec::new();
                Ok(Opened::Answered(socket))
            }
            End::Refused if self.kept_all => Err(refused),
            // The next node could not be given all the client sent: the session ends here.
            End::Refused => Err(Failure {
                replayable: false,
                sent: true,
                ..refused
            }),
            end => Ok(Opened::Ended(end)),
        }
    }

    /// Relays datagrams both ways on `socket` until the session ends or, while `trying` the
    /// node, it answers.
    async fn pump(&mut self, socket: &UdpSocket, trying: bool) -> End {
        let worker = self.worker;
        let idle = worker.limits.udp_idle_timeout;
        loop {
            let stopping = worker.stopping();
            if worker.is_stopping() {
                return End::Stopped;
            }
            tokio::select! {
                datagram = self.peer.inbox.recv() => {
                    let Some(datagram) = datagram else {
                        return End::Stopped;
                    };
                    self.from_client += datagram.len() as u64;
                    self.last = tokio::time::Instant::now();
                    match socket.send(&datagram).await {
                        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return End::Refused,
                        // Dropped, as a datagram may be.
                        Ok(_) | Err(_) => {}
                    }
                    if trying && self.kept_all {
                        let kept: usize = self.kept.iter().map(Bytes::len).sum();
                        if kept + datagram.len() <= MAX_KEPT {
                            self.kept.push(datagram);
                        } else {
                            self.kept_all = false;
                        }
                    }
                }
                // A refusal is an error on the socket, not data: wait for either.
                ready = socket.ready(Interest::READABLE | Interest::ERROR) => {
                    match ready {
                        Ok(ready) if ready.is_error() => {
                            return match socket.take_error() {
                                Ok(Some(e)) if e.kind() == ErrorKind::ConnectionRefused => {
                                    End::Refused
                                }
                                _ => End::Broken,
                            };
                        }
                        Ok(_) => {}
                        Err(_) => return End::Broken,
                    }
                    let datagram = {
                        let mut buf = self.peer.scratch.borrow_mut();
                        match socket.try_recv(&mut buf) {
                            Ok(n) => Bytes::copy_from_slice(&buf[..n]),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                                return End::Refused
                            }
                            Err(_) => return End::Broken,
                        }
                    };
                    self.from_upstream += datagram.len() as u64;
                    self.last = tokio::time::Instant::now();
                    // A client that cannot take it loses it, as on any UDP path.
                    let _ = self.peer.listener.send_to(&datagram, self.peer.client).await;
                    if trying {
                        return End::Answered;
                    }
                }
                () = tokio::time::sleep_until(self.last + idle) => return End::Quiet,
                () = stopping => return End::Stopped,
            }
        }
    }
}

/// A UDP socket of its own, connected to `addr`: it hears that node only, and its refusals.
async fn connected(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let any = match addr {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(addr).await?;
    Ok(socket)
}
