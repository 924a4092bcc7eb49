//! The upstream side: connecting to a node, the HTTP/1 and HTTP/2 client codecs and the pool of
//! idle HTTP/1 connections.

pub(crate) mod h1;
pub(crate) mod h2;
pub(crate) mod pool;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::attempts::Failure;
use crate::error::GatewayError;
use crate::snapshot::{NodeTarget, UpstreamTarget};
use crate::tls::MaybeTls;
use pool::UpstreamConn;

/// A new connection to `node`, with the TLS handshake for TLS upstreams; both within the
/// connect timeout.
pub(crate) async fn connect(
    addr: SocketAddr,
    upstream: &UpstreamTarget,
    node: &NodeTarget,
    timeout: Duration,
) -> Result<UpstreamConn, Failure> {
    connect_with_preface(addr, upstream, node, timeout, &[]).await
}

/// [`connect`], writing `preface` (a PROXY protocol header) on the TCP connection first,
/// before any TLS handshake.
pub(crate) async fn connect_with_preface(
    addr: SocketAddr,
    upstream: &UpstreamTarget,
    node: &NodeTarget,
    timeout: Duration,
    preface: &[u8],
) -> Result<UpstreamConn, Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    let connect = async {
        let mut tcp = TcpStream::connect(addr).await?;
        if !preface.is_empty() {
            tcp.write_all(preface).await?;
        }
        Ok::<_, std::io::Error>(tcp)
    };
    let tcp = match tokio::time::timeout_at(deadline, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) => return Err(Failure::before_sending(GatewayError::BadGateway)),
        Err(_) => return Err(Failure::before_sending(GatewayError::GatewayTimeout)),
    };
    let _ = tcp.set_nodelay(true);
    let stream = match (&upstream.tls, &node.tls_name) {
        (None, _) => MaybeTls::Plain(tcp),
        (Some(tls), Some(name)) => {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tls.connect(name.clone(), tcp, left).await {
                Ok(stream) => MaybeTls::Tls(Box::new(stream)),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(Failure::before_sending(GatewayError::GatewayTimeout))
                }
                Err(e) => {
                    tracing::warn!(upstream = %upstream.key, %addr, "TLS handshake failed: {e}");
                    return Err(Failure::before_sending(GatewayError::BadGateway));
                }
            }
        }
        (Some(_), None) => {
            tracing::warn!(upstream = %upstream.key, %addr, "no valid TLS server name for node");
            return Err(Failure::before_sending(GatewayError::BadGateway));
        }
    };
    Ok(UpstreamConn {
        stream,
        buf: bytes::BytesMut::with_capacity(16 * 1024),
        requests: 0,
    })
}
