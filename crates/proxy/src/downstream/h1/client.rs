//! The client side of an HTTP/1 connection: its I/O and buffers, the current request, and the
//! responses the gateway writes itself.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use pylon_plugin::Reply;
use tokio::io::AsyncWrite;

use crate::error::GatewayError;
use crate::http1::{has_token, RequestHead, ResponseHead};
use crate::outbound::{plugin_may_set, push_header};
use crate::outcome::{Cause, End, Outcome, Side};
use crate::relay::write_all;
use crate::tls::ClientStream;
use crate::vars::{RequestVars, TlsInfo};
use crate::worker::Worker;

/// A client connection: its I/O with the buffers it reuses from one request to the next,
/// and the current request. Kept apart so that plugins can read the request while the
/// exchange writes to the connection.
pub(crate) struct ClientConnection {
    pub io: ClientIo,
    pub request: ClientRequest,
}

pub(crate) struct ClientIo {
    pub stream: ClientStream,
    /// Bytes read from the client and not yet consumed: the next head, or body bytes.
    pub buf: BytesMut,
    /// The upstream's response head being relayed.
    pub response: ResponseHead,
    /// Heads being written.
    pub out: Vec<u8>,
}

/// The current request and who sent it.
pub(crate) struct ClientRequest {
    pub head: RequestHead,
    /// The request's host, normalized.
    pub host: String,
    pub client: SocketAddr,
    pub local: SocketAddr,
    /// For TLS connections: the SNI the client sent.
    pub server_name: Option<Box<str>>,
    pub tls: bool,
}

impl ClientRequest {
    /// The current request's variables.
    pub fn vars(&self) -> RequestVars<'_> {
        RequestVars {
            head: &self.head,
            host: (!self.host.is_empty()).then_some(self.host.as_str()),
            client: self.client,
            local: self.local,
            tls: self.tls.then_some(TlsInfo {
                server_name: self.server_name.as_deref(),
            }),
        }
    }
}

pub(crate) async fn respond_error(
    worker: &Worker,
    io: &mut ClientIo,
    error: GatewayError,
    keep_alive: bool,
) -> Outcome {
    let keep_alive = keep_alive && !worker.is_stopping();
    match send_error(worker, &mut io.stream, &mut io.out, error, keep_alive).await {
        Some(sent) => Outcome::answered(error, sent, keep_alive),
        None => Outcome::failed(error.status(), 0, Side::Client, Cause::Reset),
    }
}

/// Answers with a complete response the gateway holds: a plugin's reply, or its own error
/// after plugins edited it (`end` says which).
pub(crate) async fn send_reply(
    worker: &Worker,
    io: &mut ClientIo,
    (reply, end): (&Reply, End),
    head_only: bool,
    keep_alive: bool,
) -> Outcome {
    let keep_alive = keep_alive && !worker.is_stopping();
    let out = &mut io.out;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    write_status(out, reply.status);
    out.extend_from_slice(b"\r\nServer: Pylon\r\n");
    for (name, value) in &reply.headers {
        if plugin_may_set(name) {
            push_header(out, name.as_bytes(), value.as_bytes());
        }
    }
    // Always HTTP/1.1 framing: an HTTP/1.0 client gets `Connection: close` (keep-alive is
    // only kept for one that asked, see `wants_keep_alive`).
    write_whole_body(out, &reply.body, head_only, keep_alive, false);
    match write_all(&mut io.stream, out, worker.limits.send_timeout).await {
        Ok(()) => Outcome {
            end,
            ..Outcome::complete(reply.status, out.len() as u64, keep_alive)
        },
        Err(_) => Outcome::failed(reply.status, 0, Side::Client, Cause::Reset),
    }
}

/// Answers with `head`, then the pieces `next` yields as they come: chunked, or (to an
/// HTTP/1.0 client, `http10`) delimited by the close. A piece that is an error cuts the
/// response short: the connection closes without the last chunk, so the client sees the
/// body broken off.
pub(crate) async fn send_streamed(
    worker: &Worker,
    io: &mut ClientIo,
    head: &Reply,
    (keep_alive, http10): (bool, bool),
    mut next: impl AsyncFnMut() -> Option<Result<Bytes, ()>>,
) -> Outcome {
    let timeout = worker.limits.send_timeout;
    let out = &mut io.out;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    write_status(out, head.status);
    out.extend_from_slice(b"\r\nServer: Pylon\r\n");
    for (name, value) in &head.headers {
        if plugin_may_set(name) && !name.eq_ignore_ascii_case("content-length") {
            push_header(out, name.as_bytes(), value.as_bytes());
        }
    }
    if !http10 {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let gone = |sent| Outcome::failed(head.status, sent, Side::Client, Cause::Reset);
    if write_all(&mut io.stream, out, timeout).await.is_err() {
        return gone(0);
    }
    let mut sent = 0;
    while let Some(piece) = next().await {
        let Ok(piece) = piece else {
            return Outcome::failed(head.status, sent, Side::Upstream, Cause::Reset);
        };
        if piece.is_empty() {
            continue;
        }
        out.clear();
        if !http10 {
            out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        }
        out.extend_from_slice(&piece);
        if !http10 {
            out.extend_from_slice(b"\r\n");
        }
        if write_all(&mut io.stream, out, timeout).await.is_err() {
            return gone(sent);
        }
        sent += piece.len() as u64;
    }
    if !http10
        && write_all(&mut io.stream, b"0\r\n\r\n", timeout)
            .await
            .is_err()
    {
        return gone(sent);
    }
    Outcome::complete(head.status, sent, keep_alive)
}

/// Writes the gateway's own response for `error` through `out`; returns the bytes written,
/// or `None` when the client could not take them.
pub(crate) async fn send_error<W: AsyncWrite + Unpin>(
    worker: &Worker,
    client: &mut W,
    out: &mut Vec<u8>,
    error: GatewayError,
    keep_alive: bool,
) -> Option<u64> {
    out.clear();
    error.write_response(out, !keep_alive);
    write_all(client, out, worker.limits.send_timeout)
        .await
        .ok()
        .map(|()| out.len() as u64)
}

/// Whether the client asked to keep the connection open.
pub(crate) fn wants_keep_alive(head: &RequestHead) -> bool {
    let connection = head.header("connection");
    if head.minor_version() >= 1 {
        !connection.is_some_and(|v| has_token(v, "close"))
    } else {
        connection.is_some_and(|v| has_token(v, "keep-alive"))
    }
}

/// The status line's code and reason for a status a plugin set.
pub(crate) fn write_status(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(reason.as_bytes());
}

/// Ends a response head with the framing of a body the gateway holds whole, and appends the
/// body (not for HEAD).
pub(crate) fn write_whole_body(
    out: &mut Vec<u8>,
    body: &[u8],
    head_only: bool,
    keep_alive: bool,
    client_http10: bool,
) {
    push_header(
        out,
        b"Content-Length",
        itoa::Buffer::new().format(body.len()).as_bytes(),
    );
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
}
