//! The L4 proxy: a connection to a stream listener is matched to a stream route (by the
//! address and port it reached, the client's address and the TLS server name: the handshake's
//! on a listener that terminates TLS, else the ClientHello's, read and replayed), passes the
//! route's `ip-restriction` and `limit-conn`, and is relayed byte for byte to a node of the
//! route's upstream, tried in turn (balancer, health checks, retries) until one connects. A
//! route of the framed protocol serves the connection's frames instead ([`frames`]).
//!
//! Each connection is one access log line, in the HTTP lines' shape: method `TCP`, the server
//! name as host, nginx's stream statuses (200 relayed, 403 refused by `ip-restriction`, 404 no
//! route, 502/504 no node connected, 503 over `limit-conn`), bytes each way and durations.
//! UDP listeners take datagrams by the same routes, a session per client address ([`udp`]).

pub(crate) mod bindings;
mod frames;
pub(crate) mod push;
mod relay;
mod sni;
mod table;
pub(crate) mod udp;
pub(crate) mod websocket;

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use pylon_model::ProxyProtocolVersion;
use pylon_router::RequestView;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

pub(crate) use table::{Arrival, ConnLimit, StreamTable, StreamTarget, Transport};

use crate::access_log::AccessRecord;
use crate::attempts::{Attempts, Done, GaveUp, UpstreamAnswer};
use crate::proxy_protocol;
use crate::rewind::Rewind;
use crate::snapshot::UpstreamTarget;
use crate::tls::{self, Carries, Handshake};
use crate::upstream::connect_with_preface;
use crate::upstream::pool::UpstreamConn;
use crate::worker::Worker;
use frames::Frames;
use push::PushGateway;
use table::{Admission, ConnPermit};

/// A connection to a stream listener; `tls`: the listener terminates TLS, with the `ssls`.
pub(crate) async fn serve(
    worker: Rc<Worker>,
    stream: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    tls: bool,
) {
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    if !tls {
        let mut arrival = Arrival {
            client,
            local,
            sni: None,
            transport: Transport::Tcp,
        };
        if !worker.view().snapshot.stream.routes_by_name(&arrival) {
            return proxy(&worker, stream, &arrival, started).await;
        }
        // A TLS connection routed by name is passed through: its ClientHello is read for the
        // name, and is then read again by whatever serves the connection.
        let mut stream = stream;
        let mut early = BytesMut::new();
        let timeout = worker.limits.handshake_timeout;
        let name = read_server_name(&mut stream, &mut early, timeout).await;
        arrival.sni = name.as_deref();
        return proxy(&worker, Rewind::new(early, stream), &arrival, started).await;
    }
    // Boxed: a TLS session is large, and the plain connections' tasks need not carry it.
    Box::pin(terminate_tls(worker, stream, client, local, started)).await;
}

/// A connection to a listener that terminates TLS: the handshake with the `ssls`, then the
/// route its server name matches.
async fn terminate_tls(
    worker: Rc<Worker>,
    stream: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    started: Instant,
) {
    let certificates = worker.view().snapshot.certificates.clone();
    let timeout = worker.limits.handshake_timeout;
    match tls::accept(stream, &certificates, Carries::Bytes, timeout).await {
        Handshake::Done(tls) => {
            drop(certificates);
            let sni = tls.get_ref().1.server_name().map(str::to_owned);
            let arrival = Arrival {
                client,
                local,
                sni: sni.as_deref(),
                transport: Transport::Tcp,
            };
            proxy(&worker, tls, &arrival, started).await;
        }
        Handshake::Failed(reason) => {
            tracing::debug!(%client, "TLS handshake failed: {reason}");
        }
    }
}

/// What one connection came to, for its log line.
struct Session {
    status: u16,
    route_id: Option<Arc<str>>,
    upstream: Option<SocketAddr>,
    connect_latency: Option<Duration>,
    relayed: relay::Relayed,
    failure: Option<&'static str>,
}

/// How a connection that passed its route is served. It keeps what it needs of the route, not
/// the configuration it was routed by: a long connection would otherwise keep every
/// configuration version it lived through.
enum Serving {
    Relay(UpstreamConn),
    Frames(Arc<Frames>),
    Push(Arc<PushGateway>),
}

/// Reads a ClientHello's server name into `early` (none: not TLS, no name, or not within
/// `timeout`); whatever was read stays in `early`.
async fn read_server_name(
    stream: &mut TcpStream,
    early: &mut BytesMut,
    timeout: Duration,
) -> Option<String> {
    let read = async {
        loop {
            match sni::client_hello(early) {
                sni::Hello::Tls(name) => return name,
                sni::Hello::NotTls => return None,
                sni::Hello::Incomplete if early.len() >= sni::MAX_HELLO => return None,
                sni::Hello::Incomplete => {}
            }
            early.reserve(sni::MAX_HELLO - early.len());
            match stream.read_buf(early).await {
                Ok(n) if n > 0 => {}
                _ => return None,
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

async fn proxy<C>(worker: &Rc<Worker>, client_io: C, arrival: &Arrival<'_>, started: Instant)
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let mut session = Session {
        status: 404,
        route_id: None,
        upstream: None,
        connect_latency: None,
        relayed: relay::Relayed::default(),
        failure: None,
    };
    if let Some((serving, permit)) = open(worker, arrival, &mut session).await {
        session.status = 200;
        match serving {
            Serving::Relay(upstream) => {
                let (idle, half_close) = (
                    worker.limits.stream_idle_timeout,
                    worker.limits.stream_half_close,
                );
                session.relayed = relay::relay(client_io, upstream.stream, idle, half_close).await;
                session.failure = if session.relayed.idle {
                    Some("idle_timeout")
                } else if session.relayed.broken {
                    Some("connection_broken")
                } else {
                    None
                };
            }
            Serving::Frames(frames) => {
                let route_id = session.route_id.clone().unwrap_or_default();
                let (client, local) = (arrival.client, arrival.local);
                (session.relayed, session.failure) =
                    frames::serve(worker, client_io, route_id, &frames, client, local).await;
            }
            Serving::Push(gateway) => {
                // A device's connection lives long and idle: it gets a task of its own,
                // which logs it when it ends.
                let route_id = session.route_id.unwrap_or_default();
                let client = arrival.client;
                return push::spawn(worker.clone(), client_io, gateway, route_id, client, permit);
            }
        }
        drop(permit);
    }
    log(worker, arrival, started, &session);
}

/// Finds the connection's route, takes it through the route's plugins and, unless the route
/// serves frames, to a node: how it is served, under its place in the route's `limit-conn`;
/// `None` when it is refused or no node took it (`session` says why).
async fn open(
    worker: &Worker,
    arrival: &Arrival<'_>,
    session: &mut Session,
) -> Option<(Serving, Option<ConnPermit>)> {
    let view = worker.view();
    let route = view.snapshot.stream.find(arrival)?;
    session.route_id = Some(route.id.clone());
    let permit = match admit(route, arrival).await {
        Ok(permit) => permit,
        Err(status) => {
            session.status = status;
            return None;
        }
    };
    if let Some(push) = &route.push {
        return Some((Serving::Push(push.clone()), permit));
    }
    let upstream = match (&route.frames, &route.upstream) {
        (Some(frames), _) => return Some((Serving::Frames(frames.clone()), permit)),
        (None, Some(upstream)) => upstream,
        // Compiled routes have one or the other.
        (None, None) => {
            session.status = 502;
            return None;
        }
    };
    match connect(&view, route, upstream, arrival).await {
        Ok(done) => {
            session.upstream = done.node.addr;
            session.connect_latency = Some(done.latency);
            Some((Serving::Relay(done.value.0), permit))
        }
        Err(gave_up) => {
            session.status = gave_up.error.status();
            session.upstream = gave_up.node.and_then(|n| n.addr);
            session.connect_latency = gave_up.latency;
            session.failure = Some("upstream_connect");
            None
        }
    }
}

/// Passes `arrival` through the route's `ip-restriction` and `limit-conn` (waiting the delay
/// it asks for): its place under the limit, if there is one; else the status it is refused
/// with.
async fn admit(route: &StreamTarget, arrival: &Arrival<'_>) -> Result<Option<ConnPermit>, u16> {
    if route
        .access
        .as_ref()
        .is_some_and(|a| !a.admits(arrival.client.ip()))
    {
        return Err(403);
    }
    match route.limit.as_ref().map(|limit| limit.admit(arrival)) {
        None => Ok(None),
        Some(Admission::Now(permit)) => Ok(Some(permit)),
        Some(Admission::After(permit, delay)) => {
            tokio::time::sleep(delay).await;
            Ok(Some(permit))
        }
        Some(Admission::Refused) => Err(503),
    }
}

/// Connects to a node of the route's `upstream` for the client of `arrival`, the nodes
/// tried in turn (balancer, health, retries), with the PROXY protocol header the route asks
/// for.
pub(crate) async fn connect<'v>(
    view: &'v crate::snapshot::WorkerView,
    route: &StreamTarget,
    upstream: &'v UpstreamTarget,
    arrival: &Arrival<'_>,
) -> Result<Done<'v, Connected>, GaveUp<'v>> {
    let preface = match route.proxy_protocol {
        None => Vec::new(),
        Some(ProxyProtocolVersion::V1) => proxy_protocol::encode_v1(arrival.client, arrival.local),
        Some(ProxyProtocolVersion::V2) => proxy_protocol::encode_v2(arrival.client, arrival.local),
    };
    let vars = StreamVars(arrival);
    let mut attempts = Attempts::new(view, upstream, &vars, "");
    attempts
        .run(true, async |node, addr, _fresh| {
            let conn =
                connect_with_preface(addr, upstream, node, route.connect_timeout, &preface).await?;
            Ok(Connected(conn))
        })
        .await
}

/// A node that took the connection.
pub(crate) struct Connected(pub UpstreamConn);

impl UpstreamAnswer for Connected {
    /// A connection made is the node's success for passive health checks, as a `tcp` check
    /// counts it.
    fn upstream_status(&self) -> Option<u16> {
        Some(200)
    }
}

fn log(worker: &Worker, arrival: &Arrival<'_>, started: Instant, session: &Session) {
    let lasted = started.elapsed();
    let moved = [session.relayed.from_client, session.relayed.from_upstream];
    worker.metrics.stream_session(session.status, moved, lasted);
    if !worker.access_log.is_enabled() {
        return;
    }
    worker.access_log.record(AccessRecord {
        time: SystemTime::now(),
        client: arrival.client.ip(),
        method: match arrival.transport {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
        }
        .to_owned(),
        uri: String::new(),
        host: arrival.sni.unwrap_or_default().to_owned(),
        status: session.status,
        bytes_sent: session.relayed.from_upstream,
        request_length: session.relayed.from_client,
        route_id: session.route_id.clone(),
        upstream: session.upstream,
        upstream_latency: session.connect_latency,
        latency: lasted,
        user_agent: String::new(),
        failure: session.failure,
    });
}

/// A stream connection as the balancer's `chash` key sees it: `remote_addr`, `remote_port`,
/// `server_addr`, `server_port` and `server_name` (the SNI).
struct StreamVars<'a>(&'a Arrival<'a>);

impl RequestView for StreamVars<'_> {
    fn path(&self) -> &str {
        ""
    }

    fn host(&self) -> Option<&str> {
        self.0.sni
    }

    fn method(&self) -> &str {
        ""
    }

    fn remote_addr(&self) -> IpAddr {
        self.0.client.ip()
    }

    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        let arrival = self.0;
        Some(Cow::Owned(match name {
            "remote_addr" => arrival.client.ip().to_string(),
            "remote_port" => arrival.client.port().to_string(),
            "server_addr" => arrival.local.ip().to_string(),
            "server_port" => arrival.local.port().to_string(),
            "server_name" => return arrival.sni.map(Cow::Borrowed),
            _ => return None,
        }))
    }
}
