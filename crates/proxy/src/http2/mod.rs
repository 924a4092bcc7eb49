//! HTTP/2 from clients (h2c with prior knowledge, and `h2` chosen by ALPN over TLS), proxied
//! to HTTP/1.1 upstreams (`scheme: http`/`https`) or to HTTP/2 upstreams (`scheme: grpc`/
//! `grpcs`, one multiplexed connection per node and worker).
//!
//! Every stream is routed, balanced and retried by the same rules and snapshot as HTTP/1, and
//! gateway errors carry the same statuses and JSON bodies (gRPC clients get them as a gRPC
//! status instead, see [`client`]). Bodies stream in both directions under flow control end to
//! end: a window is given back to the sender only once the bytes it covers have gone on, so a
//! slow reader on one side slows the writer on the other instead of filling memory.
//!
//! A connection costs no more than its settings allow: at most `max_concurrent_streams` streams
//! (beyond: REFUSED_STREAM), header blocks up to `max_header_list_size` (CONTINUATION floods
//! end the connection), and streams opened only to be cancelled ("rapid reset") end it with
//! GOAWAY ENHANCE_YOUR_CALM: those cancelled before the gateway got to them by `h2`'s own
//! count, those cancelled after by [`Connection::record_reset`].

mod body;
mod client;
mod preface;
mod settings;
mod stream;
mod to_http1;
mod upstream;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::worker::Worker;

pub(crate) use preface::{sniff, Rewind, Sniffed};
pub use settings::Http2Settings;
pub(crate) use upstream::H2Upstreams;

/// Who is at the other end of a client connection.
pub(crate) struct Peer {
    pub client: SocketAddr,
    pub local: SocketAddr,
    /// The SNI a TLS client sent; `tls` says whether the connection is TLS at all.
    pub server_name: Option<Box<str>>,
    pub tls: bool,
}

/// One client connection, as its streams see it.
pub(crate) struct Connection {
    pub peer: Peer,
    max_client_resets: u64,
    opened: Cell<u64>,
    resets: Cell<u64>,
    too_many_resets: Notify,
}

impl Connection {
    /// A stream the gateway had started on was reset by the client before its response ended.
    pub fn record_reset(&self) {
        let resets = self.resets.get() + 1;
        self.resets.set(resets);
        // Cancelling is legitimate now and then; a connection whose streams are mostly
        // cancelled is doing nothing but make the gateway start work it then drops.
        if resets > self.max_client_resets && resets * 2 > self.opened.get() {
            self.too_many_resets.notify_one();
        }
    }
}

/// Serves one HTTP/2 connection until the client closes it, it has been idle for the
/// keep-alive timeout, or the worker stops (GOAWAY, then the streams in flight finish).
pub(crate) async fn serve<IO>(worker: Rc<Worker>, io: IO, peer: Peer)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &worker.limits.http2;
    let handshake = settings.server().handshake::<_, Bytes>(io);
    let mut connection = match tokio::time::timeout(worker.limits.header_timeout, handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            tracing::debug!(client = %peer.client, "HTTP/2 handshake failed: {e}");
            return;
        }
        Err(_) => return,
    };
    let conn = Rc::new(Connection {
        peer,
        max_client_resets: settings.max_client_resets,
        opened: Cell::new(0),
        resets: Cell::new(0),
        too_many_resets: Notify::new(),
    });
    // Dropped with the connection: a stream cannot outlive the connection that carries it.
    let mut streams = JoinSet::new();
    let mut closing = false;
    loop {
        let stopping = worker.stopping();
        if worker.is_stopping() && !closing {
            connection.graceful_shutdown();
            closing = true;
        }
        let idle = streams.is_empty() && !closing;
        tokio::select! {
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    conn.opened.set(conn.opened.get() + 1);
                    streams.spawn_local(stream::serve(worker.clone(), conn.clone(), request, respond));
                }
                Some(Err(e)) => {
                    tracing::debug!(client = %conn.peer.client, "HTTP/2 connection ended: {e}");
                    break;
                }
                None => break,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
            _ = stopping, if !closing => {
                connection.graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep(worker.limits.keepalive_timeout), if idle => {
                connection.graceful_shutdown();
                closing = true;
            }
            _ = conn.too_many_resets.notified() => {
                tracing::warn!(client = %conn.peer.client, "HTTP/2 client cancels most of its streams; closing the connection");
                connection.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                closing = true;
                streams.abort_all();
            }
        }
    }
}
