//! Accepting connections on a data-plane listener: the worker's connection limit, the PROXY
//! protocol header when the listener expects one, then the protocol the listener serves.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::downstream;
use crate::proxy_protocol::{self, Header};
use crate::stream;
use crate::worker::Worker;

/// What a data-plane listener serves, and how its connections arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Serves {
    pub protocol: Protocol,
    /// Connections start with a TLS handshake, after the PROXY header if there is one.
    pub tls: bool,
    /// Connections start with a PROXY protocol header from a load balancer.
    pub proxy_protocol: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    /// The L4 proxy: the stream routes take the connections.
    Tcp,
    /// The L4 proxy on datagrams: the stream routes take a session per client address.
    Udp,
}

impl Serves {
    pub(crate) fn http(tls: bool, proxy_protocol: bool) -> Serves {
        Serves {
            protocol: Protocol::Http,
            tls,
            proxy_protocol,
        }
    }

    pub(crate) fn tcp(tls: bool, proxy_protocol: bool) -> Serves {
        Serves {
            protocol: Protocol::Tcp,
            tls,
            proxy_protocol,
        }
    }

    /// A UDP listener: neither TLS nor a PROXY header (the PROXY protocol is for streams).
    pub(crate) fn udp() -> Serves {
        Serves {
            protocol: Protocol::Udp,
            tls: false,
            proxy_protocol: false,
        }
    }

    /// Every kind of listener, for reading [`Serves::word`] back.
    pub(crate) fn all() -> impl Iterator<Item = Serves> {
        let flags = [(false, false), (false, true), (true, false), (true, true)];
        flags
            .into_iter()
            .flat_map(|(tls, proxy_protocol)| {
                [
                    Serves::http(tls, proxy_protocol),
                    Serves::tcp(tls, proxy_protocol),
                ]
            })
            .chain([Serves::udp()])
    }

    /// The listener's kind in a word: `http`, `https`, `tcp`, `tcp+tls`, and `+proxy` for
    /// a PROXY header; `udp`.
    pub(crate) fn word(self) -> String {
        let base = match (self.protocol, self.tls) {
            (Protocol::Http, false) => "http",
            (Protocol::Http, true) => "https",
            (Protocol::Tcp, false) => "tcp",
            (Protocol::Tcp, true) => "tcp+tls",
            (Protocol::Udp, _) => "udp",
        };
        if self.proxy_protocol {
            format!("{base}+proxy")
        } else {
            base.to_owned()
        }
    }
}

/// Accepts connections on one listener until the worker stops.
pub(crate) async fn accept(worker: Rc<Worker>, listener: TcpListener, serves: Serves) {
    // A listener bound to one address is the local end of all its connections: asked once,
    // not with a system call per connection (a wildcard's connections are asked each).
    let bound = listener
        .local_addr()
        .ok()
        .filter(|addr| !addr.ip().is_unspecified());
    loop {
        let stopping = worker.stopping();
        if worker.is_stopping() {
            return;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopping => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handled = worker.connections() < worker.limits.max_connections;
        worker.metrics.accepted(handled);
        if !handled {
            drop(stream);
            continue;
        }
        let Some(local) = bound.or_else(|| stream.local_addr().ok()) else {
            continue;
        };
        let open = worker.open_connection();
        let conn_worker = worker.clone();
        // A task per protocol, each future as large as its own protocol needs: a task's
        // future is moved in memory when spawned.
        match serves.protocol {
            Protocol::Http => tokio::task::spawn_local(async move {
                if let Some((stream, client)) = client_of(&conn_worker, stream, peer, serves).await
                {
                    if serves.tls {
                        downstream::serve_tls(conn_worker, stream, client, local).await;
                    } else {
                        downstream::serve(conn_worker, stream, client, local).await;
                    }
                }
                drop(open);
            }),
            Protocol::Tcp => tokio::task::spawn_local(async move {
                if let Some((stream, client)) = client_of(&conn_worker, stream, peer, serves).await
                {
                    stream::serve(conn_worker, stream, client, local, serves.tls).await;
                }
                drop(open);
            }),
            // UDP sockets are served by `stream::udp`, never accepted from.
            Protocol::Udp => continue,
        };
    }
}

/// The connection and its client: the peer, or the client its PROXY header names on a
/// listener that takes one (`None`: the connection is closed).
async fn client_of(
    worker: &Worker,
    mut stream: TcpStream,
    peer: SocketAddr,
    serves: Serves,
) -> Option<(TcpStream, SocketAddr)> {
    if !serves.proxy_protocol {
        return Some((stream, peer));
    }
    let client = proxied_client(worker, &mut stream, peer).await?;
    Some((stream, client))
}

/// The client a trusted peer's PROXY header names (the peer itself for a `LOCAL` header, a
/// load balancer's health check); `None` closes the connection: an untrusted peer, or a
/// missing, broken or late header.
async fn proxied_client(
    worker: &Worker,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    if let Some(trusted) = &worker.limits.proxy_protocol_trusted {
        if !trusted.contains(peer.ip()) {
            tracing::debug!(%peer, "PROXY protocol header from an untrusted peer: closed");
            return None;
        }
    }
    let header = tokio::time::timeout(
        worker.limits.header_timeout,
        proxy_protocol::read_header(stream),
    )
    .await;
    match header {
        Ok(Ok(Header::Proxied { source, .. })) => Some(source),
        Ok(Ok(Header::Local)) => Some(peer),
        Ok(Err(e)) => {
            tracing::debug!(%peer, "no PROXY protocol header: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "no PROXY protocol header in time");
            None
        }
    }
}
