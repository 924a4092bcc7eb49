//! Proxying one HTTP/1 request: pick a node, send the request, relay the response; retry on
//! another node while that is still safe (the rules are in [`crate::attempts`]).
//!
//! A body is replayable only while it is still whole in our buffer, never once partly streamed.
//! Once the first response byte has gone to the client there is no way back: a failure then
//! aborts the client connection rather than pass off a truncated response as complete.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pylon_plugin::RequestTaps;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::client::{send_error, wants_keep_alive, write_whole_body, ClientIo};
use super::Http1;
use crate::attempts::{Attempts, Failure, UpstreamAnswer};
use crate::error::GatewayError;
use crate::http1::{
    has_other_codings, has_token, is_framing_header, is_hop_by_hop, response_framing,
    write_response_framing, BodyFraming, RequestHead, ResponseHead,
};
use crate::outbound::{plugin_may_set, push_header, upstream_host, RequestContext};
use crate::outcome::{Cause, Outcome, Side};
use crate::pipeline::{Exchange, PluginWork, ResponseChanges};
use crate::relay::{write_all, Relay, RelayError};
use crate::snapshot::{NodeTarget, RouteTarget, Timeouts, UpstreamTarget};
use crate::tunnel;
use crate::upstream::connect;
use crate::upstream::h1::{read_response_head, write_request_head};
use crate::upstream::pool::UpstreamConn;
use crate::vars::RequestVars;
use crate::worker::Worker;

/// An attempt that got as far as the client: either a complete exchange or an aborted one.
struct Delivered {
    outcome: Outcome,
    /// The status is the upstream's, not one the gateway made for a client-side failure.
    upstream_answered: bool,
}

impl Delivered {
    /// The client went away before its response was through (nginx's 499).
    fn client_gone() -> Self {
        Delivered::by_client(Outcome::failed(499, 0, Side::Client, Cause::Reset))
    }

    /// The exchange ended on the client's side (it broke its body's framing, say): it does
    /// not count against the node.
    fn by_client(outcome: Outcome) -> Self {
        Delivered {
            outcome,
            upstream_answered: false,
        }
    }

    fn by_upstream(outcome: Outcome) -> Self {
        Delivered {
            outcome,
            upstream_answered: true,
        }
    }
}

impl UpstreamAnswer for Delivered {
    fn upstream_status(&self) -> Option<u16> {
        self.upstream_answered.then_some(self.outcome.status)
    }
}

pub(super) async fn proxy(
    http1: &mut Http1<'_>,
    request: &RequestVars<'_>,
    Exchange {
        worker,
        view,
        route,
        upstream,
        timeouts,
        work,
    }: Exchange<'_>,
    mut taps: RequestTaps,
) -> Outcome {
    // Balancing sees the request as plugins left it (a consumer to hash on, say).
    let mut attempts = Attempts::new(view, upstream, work.ctx, request.head.method());
    let exchange = Exchange {
        worker,
        view,
        route,
        upstream,
        timeouts,
        work,
    };
    if upstream.grpc {
        // An HTTP/2-only upstream cannot be spoken to in HTTP/1.1, and bridging an HTTP/1
        // client to it is not built: the client is told which protocol the route needs.
        return exchange
            .give_up(http1, request, GatewayError::HttpVersionNotSupported)
            .await;
    }
    let (io, framing) = (&mut *http1.io, http1.framing);
    let body_buffered = match framing {
        BodyFraming::None => true,
        BodyFraming::Length(n) => io.buf.len() as u64 >= n,
        BodyFraming::Chunked | BodyFraming::UntilClose => false,
    };
    // A body that is all here is copied to the taps at once; one that streams, as it does.
    if body_buffered && !taps.is_empty() {
        if let BodyFraming::Length(n) = framing {
            taps.piece(&io.buf[..n as usize]);
        }
        taps.end();
    }
    let result = attempts
        .run(body_buffered, async |node, addr, fresh| {
            let pooled = if fresh {
                None
            } else {
                let key = (addr, node.pool_id);
                worker.pool.borrow_mut().checkout(key, Instant::now())
            };
            let target = Target {
                upstream,
                node,
                addr,
                route,
                timeouts,
            };
            let client = (&mut *io, request, &mut taps);
            attempt(worker, client, target, pooled, framing, work).await
        })
        .await;
    match result {
        Ok(done) => Outcome {
            upstream: done.node.addr,
            upstream_latency: Some(done.latency),
            ..done.value.outcome
        },
        Err(gave_up) => {
            let outcome = exchange.give_up(http1, request, gave_up.error).await;
            Outcome {
                upstream: gave_up.node.and_then(|n| n.addr),
                upstream_latency: gave_up.latency,
                ..outcome
            }
        }
    }
}

/// Where one attempt goes.
#[derive(Clone, Copy)]
struct Target<'a> {
    upstream: &'a UpstreamTarget,
    node: &'a NodeTarget,
    addr: SocketAddr,
    route: &'a RouteTarget,
    timeouts: Timeouts,
}

async fn attempt(
    worker: &Worker,
    (io, request, taps): (&mut ClientIo, &RequestVars<'_>, &mut RequestTaps),
    Target {
        upstream,
        node,
        addr,
        route,
        timeouts,
    }: Target<'_>,
    pooled: Option<UpstreamConn>,
    framing: BodyFraming,
    work: PluginWork<'_>,
) -> Result<Delivered, Failure> {
    // A WebSocket handshake on a route that allows it: the upgrade goes to the upstream, and
    // a `101` turns both connections into a tunnel. Elsewhere the upgrade headers are dropped
    // as hop-by-hop and the request is an ordinary one.
    let upgrade = route
        .websocket
        .then(|| websocket_upgrade(request.head))
        .flatten();
    let reused = pooled.is_some();
    let mut up = match pooled {
        Some(up) => up,
        None => connect(addr, upstream, node, timeouts.connect).await?,
    };
    up.requests += 1;
    up.buf.clear();
    io.out.clear();
    let scheme = request.scheme();
    let client_host = request.head.client_host();
    write_request_head(
        &mut io.out,
        request.head,
        &RequestContext {
            client_host,
            client: work.ctx.client_ip(),
            local: request.local,
            scheme,
            edits: &work.ctx.edits,
        },
        upstream_host(client_host, upstream, node),
        framing,
        upgrade,
    );
    // A body that has fully arrived goes out with the head and stays buffered until the
    // exchange succeeds, so a retry can send it again.
    let inline_body = match framing {
        BodyFraming::Length(n) if io.buf.len() as u64 >= n => n as usize,
        _ => 0,
    };
    io.out.extend_from_slice(&io.buf[..inline_body]);
    let streamed_body = match framing {
        BodyFraming::Length(n) => n as usize > inline_body,
        BodyFraming::Chunked => true,
        BodyFraming::None | BodyFraming::UntilClose => false,
    };
    if write_all(&mut up.stream, &io.out, timeouts.send)
        .await
        .is_err()
    {
        // Whatever the upstream got, it was not a whole request it could act on.
        return Err(Failure::stale_connection(reused));
    }

    let client_http10 = request.head.minor_version() == 0;
    // A client that asked for a go-ahead (`Expect: 100-continue`) holds its body back until it
    // gets one. The gateway gives it here, once the upstream has the head: the upstream never
    // sees the expectation (see `write_request_head`), so it would never answer it itself.
    let mut continue_sent = 0;
    if streamed_body && !client_http10 && expects_continue(request.head) {
        if write_all(&mut io.stream, CONTINUE, worker.limits.send_timeout)
            .await
            .is_err()
        {
            return Ok(Delivered::client_gone());
        }
        continue_sent = CONTINUE.len() as u64;
    }
    let method_is_head = request.head.method() == "HEAD";
    let client_keep_alive = wants_keep_alive(request.head) && !worker.is_stopping();
    let upload_done = Cell::new(!streamed_body);
    let response_started = Cell::new(false);
    let ClientIo {
        stream,
        buf,
        response,
        out,
    } = io;
    let (mut client_read, mut client_write) = stream.split();
    let (mut up_read, mut up_write) = up.stream.split();
    let responder = Responder {
        response,
        out,
        timeouts,
        client_send_timeout: worker.limits.send_timeout,
        max_head: worker.limits.max_response_head,
        client_http10,
        method_is_head,
        client_keep_alive,
        upload_done: &upload_done,
        response_started: &response_started,
        reused,
        upgrade: upgrade.is_some(),
        work,
    };
    let result = {
        let download = responder.run(&mut up_read, &mut up.buf, &mut client_write);
        tokio::pin!(download);
        let early = if streamed_body {
            let upload_relay = Relay {
                framing,
                decode_chunked: false,
                read_timeout: worker.limits.body_timeout,
                write_timeout: timeouts.send,
            };
            let mut no_prefix = Vec::new();
            let upload = async {
                let copy = |piece: &[u8]| taps.piece(piece);
                let sent = upload_relay.run_observed(
                    &mut client_read,
                    buf,
                    &mut up_write,
                    &mut no_prefix,
                    copy,
                );
                let sent = sent.await;
                if sent.is_ok() {
                    taps.end();
                }
                sent
            };
            tokio::pin!(upload);
            let mut upload_failed = false;
            loop {
                tokio::select! {
                    sent = &mut upload, if !upload_failed => match sent {
                        Ok(_) => {
                            upload_done.set(true);
                            break None;
                        }
                        // The client's body broke its chunked framing, or the client stalled
                        // mid-body: it is still there to be told why (below).
                        Err(RelayError::Framing(_)) => break Some(Err(GatewayError::BadRequest)),
                        Err(RelayError::Source(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                            break Some(Err(GatewayError::RequestTimeout))
                        }
                        // The client went away: there is no one to answer.
                        Err(RelayError::Source(_)) => {
                            return Ok(Delivered::client_gone());
                        }
                        // The upstream stopped reading; it may still have answered (413, say).
                        Err(RelayError::Destination(_)) => upload_failed = true,
                    },
                    received = &mut download => break Some(Ok(received)),
                }
            }
        } else {
            None
        };
        let received = match early {
            Some(result) => result,
            None => {
                let limit = worker.limits.head.max_head;
                match unless_client_leaves(download, &mut client_read, buf, limit).await {
                    Some(received) => Ok(received),
                    None => return Ok(Delivered::client_gone()),
                }
            }
        };
        received.map(|received| {
            received.map_err(|mut f| {
                // A body partly streamed cannot be sent again.
                f.replayable &= !streamed_body;
                f
            })
        })
    };
    let result = match result {
        Ok(result) => result,
        // The client's fault, not the upstream's: answered here so that it does not count
        // against the node. The upstream connection, holding part of a body, is dropped.
        Err(error) => {
            // Once part of a response is out, all that is left is to end the connection.
            let sent = if response_started.get() {
                0
            } else {
                let sent = send_error(worker, &mut client_write, out, error, false).await;
                continue_sent + sent.unwrap_or(0)
            };
            return Ok(Delivered::by_client(Outcome::answered(error, sent, false)));
        }
    };
    let delivered = result?;
    // Only now is the inline body done with: had this attempt failed, a retry would have
    // needed it again (the bytes after it are the client's next request, not this body).
    buf.advance(inline_body);
    if delivered.upgraded {
        let relayed = tunnel::run(
            &mut client_read,
            &mut client_write,
            buf,
            &mut up_read,
            &mut up_write,
            &mut up.buf,
            timeouts.read,
        )
        .await;
        let bytes_sent = continue_sent + delivered.outcome.bytes_sent + relayed.to_client;
        return Ok(Delivered::by_upstream(Outcome::complete(
            101, bytes_sent, false,
        )));
    }
    let upstream_reusable = delivered.upstream_reusable && upload_done.get() && up.buf.is_empty();
    if upstream_reusable {
        worker
            .pool
            .borrow_mut()
            .checkin((addr, node.pool_id), up, &upstream.pool, Instant::now());
    }
    let mut outcome = delivered.outcome;
    outcome.keep_alive &= upload_done.get();
    outcome.bytes_sent += continue_sent;
    Ok(Delivered::by_upstream(outcome))
}

/// Waits for the response, watching the client meanwhile. If it closes its connection before
/// the response is through, `None`: the exchange is abandoned, closing the upstream connection,
/// rather than left to run for nobody (as nginx does unless `proxy_ignore_client_abort`).
/// Bytes the client sends meanwhile (a pipelined request) stay in `buf`; past `limit` of them
/// the client is no longer watched, so that it cannot make the gateway buffer without bound.
async fn unless_client_leaves<F, R>(
    mut download: Pin<&mut F>,
    client: &mut R,
    buf: &mut BytesMut,
    limit: usize,
) -> Option<F::Output>
where
    F: Future,
    R: AsyncRead + Unpin,
{
    loop {
        tokio::select! {
            biased;
            received = &mut download => return Some(received),
            read = client.read_buf(buf), if buf.len() < limit => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
}

/// The protocol a WebSocket handshake asks to upgrade to (`Upgrade: websocket` with
/// `Connection: upgrade`, on an HTTP/1.1 GET).
pub(super) fn websocket_upgrade(head: &RequestHead) -> Option<&[u8]> {
    let protocol = head.header("upgrade")?;
    let asked = head.method() == "GET"
        && head.minor_version() == 1
        && has_token(protocol, "websocket")
        && head
            .header("connection")
            .is_some_and(|c| has_token(c, "upgrade"));
    asked.then_some(protocol)
}

/// The go-ahead a client that expects one gets before it sends its body.
pub(super) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Whether the request carries `Expect: 100-continue`.
pub(super) fn expects_continue(head: &RequestHead) -> bool {
    head.header("expect")
        .is_some_and(|v| has_token(v, "100-continue"))
}

/// The response side of an exchange: reads the upstream's head, forwards interim (1xx)
/// responses, then the final head and body.
struct Responder<'a> {
    response: &'a mut ResponseHead,
    out: &'a mut Vec<u8>,
    timeouts: Timeouts,
    client_send_timeout: Duration,
    max_head: usize,
    client_http10: bool,
    method_is_head: bool,
    client_keep_alive: bool,
    upload_done: &'a Cell<bool>,
    /// Set before the first byte of a response (interim or final) is written to the client.
    response_started: &'a Cell<bool>,
    reused: bool,
    /// The request asked for a WebSocket upgrade the route allows: a `101` is the answer
    /// that starts the tunnel.
    upgrade: bool,
    work: PluginWork<'a>,
}

struct Received {
    /// What the client got; `keep_alive` as far as the response allows.
    outcome: Outcome,
    upstream_reusable: bool,
    /// A `101 Switching Protocols` went to the client: the connections are now a tunnel.
    upgraded: bool,
}

impl Received {
    fn complete(outcome: Outcome, upstream_reusable: bool) -> Self {
        Received {
            outcome,
            upstream_reusable,
            upgraded: false,
        }
    }

    /// The response broke off after `status` went out, by `side`'s fault.
    fn aborted(status: u16, side: Side) -> Self {
        Received::complete(Outcome::failed(status, 0, side, Cause::Reset), false)
    }
}

impl Responder<'_> {
    async fn run<R, W>(
        self,
        up: &mut R,
        up_buf: &mut bytes::BytesMut,
        client: &mut W,
    ) -> Result<Received, Failure>
    where
        R: AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let mut interim_sent = 0u64;
        let head_len = loop {
            let len = read_response_head(
                up,
                up_buf,
                self.response,
                self.max_head,
                self.timeouts.read,
                self.reused,
                interim_sent > 0,
            )
            .await?;
            let status = self.response.status();
            if (100..200).contains(&status) && status != 101 {
                // Interim responses (100 Continue, 103 Early Hints) go to HTTP/1.1 clients.
                if !self.client_http10 {
                    self.response_started.set(true);
                    self.out.clear();
                    self.response.write_forwarded(self.out);
                    self.out.extend_from_slice(b"\r\n");
                    if write_all(client, self.out, self.client_send_timeout)
                        .await
                        .is_err()
                    {
                        return Ok(Received::aborted(0, Side::Client));
                    }
                    interim_sent += self.out.len() as u64;
                }
                up_buf.advance(len);
                continue;
            }
            break len;
        };
        let status = self.response.status();
        let method = if self.method_is_head { "HEAD" } else { "GET" };
        let Ok(framing) = response_framing(self.response, method) else {
            return Err(Failure::bad_response());
        };
        // HTTP/1.0 has no transfer codings (RFC 9112 §6.1): chunked is decoded for its clients,
        // any other coding would reach them unannounced.
        if self.client_http10 && framing != BodyFraming::None && has_other_codings(self.response) {
            return Err(Failure::bad_response());
        }
        if status == 101 {
            if !self.upgrade {
                // A protocol switch nobody asked for: the upstream is not speaking HTTP.
                return Err(Failure::bad_response());
            }
            up_buf.advance(head_len);
            return self.switch_protocols(client, interim_sent).await;
        }
        up_buf.advance(head_len);

        let decode_chunked = framing == BodyFraming::Chunked && self.client_http10;
        let upstream_connection = self.response.header("connection");
        let upstream_reusable = self.response.minor_version() >= 1
            && !upstream_connection.is_some_and(|c| has_token(c, "close"))
            && framing != BodyFraming::UntilClose;
        let client_reusable = self.client_keep_alive
            && self.upload_done.get()
            && framing != BodyFraming::UntilClose
            && !decode_chunked;

        let PluginWork { plugins, ctx } = self.work;
        let ResponseChanges {
            edits,
            body: mut filters,
        } = plugins.response(ctx, status, &*self.response);
        let out = self.out;
        out.clear();
        self.response
            .write_edited(out, edits.status, |name| !edits.headers.replaces(name));
        for (name, value) in edits.headers.added() {
            if plugin_may_set(name) {
                push_header(out, name.as_bytes(), value.as_bytes());
            }
        }
        let status = edits.status.unwrap_or(status);
        if let Some(body) = &edits.body {
            let body = filters.run_whole(body.clone());
            // The upstream's body is not read: its connection cannot carry another request.
            let client_reusable = self.client_keep_alive && self.upload_done.get();
            write_whole_body(
                out,
                &body,
                self.method_is_head,
                client_reusable,
                self.client_http10,
            );
            self.response_started.set(true);
            return Ok(
                match write_all(client, out, self.client_send_timeout).await {
                    Ok(()) => Received::complete(
                        Outcome::complete(status, interim_sent + out.len() as u64, client_reusable),
                        false,
                    ),
                    Err(_) => Received::aborted(status, Side::Client),
                },
            );
        }
        // A filtered body's length is known only at its end: it goes out chunked, or to an
        // HTTP/1.0 client until the connection closes. A body under another transfer coding
        // than chunked is not the plugins' to read.
        let filtered = !filters.is_empty()
            && framing != BodyFraming::None
            && !has_other_codings(self.response);
        let client_reusable = client_reusable && !(filtered && self.client_http10);
        if filtered {
            if !self.client_http10 {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            }
        } else if !decode_chunked {
            write_response_framing(out, self.response, framing);
        }
        if !client_reusable {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if self.client_http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");

        let relay = Relay {
            framing,
            decode_chunked,
            read_timeout: self.timeouts.read,
            write_timeout: self.client_send_timeout,
        };
        self.response_started.set(true);
        let relayed = if filtered {
            let chunked = !self.client_http10;
            relay
                .run_filtered(up, up_buf, client, out, &mut filters, chunked)
                .await
        } else {
            relay.run(up, up_buf, client, out).await
        };
        match relayed {
            Ok(sent) => Ok(Received::complete(
                Outcome::complete(status, interim_sent + sent, client_reusable),
                upstream_reusable,
            )),
            // The upstream's body broke its framing or ended early while the head was still
            // held back (it leaves with the first body bytes): the client has seen nothing of
            // it and gets a 502 instead (RFC 9112 §6.3).
            Err(RelayError::Source(_) | RelayError::Framing(_)) if !out.is_empty() => {
                Err(Failure::bad_response())
            }
            // The response is cut short: the client must see its connection end, never a
            // shorter body passed off as whole.
            Err(RelayError::Destination(_)) => Ok(Received::aborted(status, Side::Client)),
            Err(_) => Ok(Received::aborted(status, Side::Upstream)),
        }
    }

    /// Sends the upstream's `101` on, with its headers (`Sec-WebSocket-Accept`, ...) and the
    /// upgrade itself.
    async fn switch_protocols<W>(
        self,
        client: &mut W,
        interim_sent: u64,
    ) -> Result<Received, Failure>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        let out = self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        for (name, value) in self.response.headers() {
            if !is_hop_by_hop(name) && !is_framing_header(name) {
                push_header(out, name.as_bytes(), value);
            }
        }
        out.extend_from_slice(b"Connection: upgrade\r\n");
        push_header(
            out,
            b"Upgrade",
            self.response.header("upgrade").unwrap_or(b"websocket"),
        );
        out.extend_from_slice(b"\r\n");
        self.response_started.set(true);
        if write_all(client, out, self.client_send_timeout)
            .await
            .is_err()
        {
            return Ok(Received::aborted(101, Side::Client));
        }
        Ok(Received {
            outcome: Outcome::complete(101, interim_sent + out.len() as u64, false),
            upstream_reusable: false,
            upgraded: true,
        })
    }
}
