//! Accepting client connections: plain (HTTP/1 or h2c, told by the first bytes) and TLS
//! (HTTP/2 or HTTP/1.1, as ALPN chose). The two server codecs below never import each other.

pub(crate) mod h1;
pub(crate) mod h2;

use std::net::SocketAddr;
use std::rc::Rc;

use bytes::BytesMut;
use tokio::net::TcpStream;

use self::h2::Sniffed;
use crate::rewind::Rewind;
use crate::tls::{self, Carries, Handshake, MaybeTls};
use crate::worker::Worker;

/// A connection to the plain HTTP listener.
pub(crate) async fn serve(
    worker: Rc<Worker>,
    mut stream: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
) {
    // Small writes are whole messages; delaying them only adds latency.
    let _ = stream.set_nodelay(true);
    // HTTP/2 with prior knowledge (h2c) is told from HTTP/1 by its first bytes.
    let mut buf = BytesMut::with_capacity(8 * 1024);
    match h2::sniff(&mut stream, &mut buf, worker.limits.header_timeout).await {
        Sniffed::Http1 => {
            h1::serve(worker, MaybeTls::Plain(stream), None, client, local, buf).await
        }
        Sniffed::Http2 => {
            let peer = h2::Peer {
                client,
                local,
                server_name: None,
                tls: false,
            };
            h2::serve(worker, Rewind::new(buf, stream), peer).await
        }
        Sniffed::Closed => {}
    }
}

/// A connection to the HTTPS listener: the handshake, with the certificate for the client's
/// SNI in the current snapshot, then HTTP/2 or HTTP/1.1 as ALPN chose.
pub(crate) async fn serve_tls(
    worker: Rc<Worker>,
    stream: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let snapshot = worker.view().snapshot.clone();
    let tls = match tls::accept(
        stream,
        &snapshot.certificates,
        Carries::Http,
        worker.limits.handshake_timeout,
    )
    .await
    {
        Handshake::Done(tls) => tls,
        Handshake::Failed(reason) => {
            tracing::debug!(%client, "TLS handshake failed: {reason}");
            return;
        }
    };
    drop(snapshot);
    let server_name = tls.get_ref().1.server_name().map(Box::from);
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let peer = h2::Peer {
            client,
            local,
            server_name,
            tls: true,
        };
        return h2::serve(worker, tls, peer).await;
    }
    let buf = BytesMut::with_capacity(8 * 1024);
    h1::serve(worker, MaybeTls::Tls(tls), server_name, client, local, buf).await;
}
