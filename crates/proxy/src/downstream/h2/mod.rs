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
//! count, those cancelled after by [`Connection::record_reset`]. A client that does not let a
//! connection close (GOAWAY unanswered, a frame half-sent, nothing read) loses it
//! `close_timeout` after the GOAWAY, see [`Closing`].

mod body;
mod client;
mod exchange;
mod preface;
mod stream;
mod to_h1;
mod to_h2;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::settings::secs;
use crate::worker::Worker;

pub(crate) use preface::{sniff, Sniffed};

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
///
/// Closing takes the client's help: it must answer the PING that follows the GOAWAY and read
/// what is sent to it. One that does not (it ignores the PING, stalled half-way through a
/// frame, or stopped reading) cannot hold the connection, and with it one of the worker's
/// connection slots: see [`Closing`].
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
    let close_timeout = secs(settings.close_timeout);
    // Dropped with the connection: a stream cannot outlive the connection that carries it.
    let mut streams = JoinSet::new();
    let mut closing: Option<Closing> = None;
    loop {
        let stopping = worker.stopping();
        if worker.is_stopping() && closing.is_none() {
            connection.graceful_shutdown();
            closing = Some(Closing::new(close_timeout));
        }
        let idle = streams.is_empty() && closing.is_none();
        tokio::select! {
            accepted = connection.accept() => match accepted {
                Some(Ok((_, mut respond))) if closing.as_ref().is_some_and(|c| !c.takes_streams()) => {
                    // The client has had its time to see the GOAWAY. Refused, the stream may be
                    // retried elsewhere.
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
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
            Some(_) = streams.join_next(), if !streams.is_empty() => {
                if streams.is_empty() {
                    if let Some(closing) = &mut closing {
                        closing.drained();
                    }
                }
            }
            _ = stopping, if closing.is_none() => {
                connection.graceful_shutdown();
                closing = Some(Closing::new(close_timeout));
            }
            _ = tokio::time::sleep(worker.limits.keepalive_timeout), if idle => {
                connection.graceful_shutdown();
                closing = Some(Closing::new(close_timeout));
            }
            _ = until(closing.as_ref().map(|c| c.drop_at)), if streams.is_empty() => {
                tracing::debug!(client = %conn.peer.client, "HTTP/2 client did not let the connection close in time; dropped");
                break;
            }
            _ = conn.too_many_resets.notified() => {
                tracing::warn!(client = %conn.peer.client, "HTTP/2 client cancels most of its streams; closing the connection");
                connection.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                closing.get_or_insert_with(|| Closing::new(close_timeout));
                streams.abort_all();
            }
        }
    }
}

/// A connection the gateway has started to close (GOAWAY), and what its client has left.
///
/// `h2` closes the connection itself once the client has answered the PING that follows a
/// graceful GOAWAY, its streams have ended and what they sent has been written. A client that
/// does not let that happen gets `timeout` for it: after that it may open no new stream, and
/// the connection is dropped once it has had no stream in flight for `timeout`.
struct Closing {
    timeout: Duration,
    /// Streams the client opens after this are refused: they would keep the connection open
    /// for a client that ignores the GOAWAY. Before it, they may have crossed the GOAWAY.
    takes_streams_until: Instant,
    /// When the connection is dropped, if it has no stream in flight then.
    drop_at: Instant,
}

impl Closing {
    fn new(timeout: Duration) -> Self {
        let deadline = Instant::now() + timeout;
        Self {
            timeout,
            takes_streams_until: deadline,
            drop_at: deadline,
        }
    }

    fn takes_streams(&self) -> bool {
        Instant::now() < self.takes_streams_until
    }

    /// The last stream in flight has ended: the client gets `timeout` to read the end of its
    /// response before the connection is dropped.
    fn drained(&mut self) {
        self.drop_at = Instant::now() + self.timeout;
    }
}

/// Completes at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
