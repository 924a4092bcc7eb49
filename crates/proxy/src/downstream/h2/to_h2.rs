//! An HTTP/2 client stream relayed to an HTTP/2 upstream (gRPC): frame by frame both ways,
//! with each side's window given back only as the other side takes the data, and trailers
//! (`grpc-status`, `grpc-message`) passed through as trailers.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::{Reason, SendStream};
use http::Response;

use super::body::{finish, pipe, send_data, BodyOut, Halt, PipeError, RequestBody};
use super::client::{Client, Delivered};
use super::exchange::{with_upload, Ended, Exchange, ResponseBody};
use crate::attempts::Failure;
use crate::error::GatewayError;
use crate::outcome::Side;
use crate::snapshot::NodeTarget;
use crate::upstream::h2::{open, upstream_failure, upstream_request, Dial, OpenStream};

/// One attempt on `node`, on a shared connection to it; one found going away is retired, so
/// that the attempt's second go (see [`crate::attempts::Attempts::run`]) dials afresh.
pub(super) async fn exchange(
    x: &Exchange<'_>,
    node: &NodeTarget,
    addr: SocketAddr,
    body: &mut RequestBody,
    client: &mut Client,
) -> Result<Delivered, Failure> {
    let limits = &x.worker.limits;
    let dial = Dial {
        pool: &x.worker.h2_upstreams,
        settings: &limits.http2,
        max_head: limits.max_response_head,
        upstream: x.upstream,
        node,
        addr,
        timeout: x.timeouts.connect,
    };
    let request = upstream_request(x.parts, x.declared, &x.context, x.upstream, node)?;
    let OpenStream {
        response,
        send: mut up_send,
        connection,
    } = open(&dial, request, body.is_empty()).await?;
    if let Err(halt) = send_early_body(&mut up_send, body, x.timeouts.send).await {
        let timed_out = halt == Halt::TimedOut;
        return Err(Failure {
            error: if timed_out {
                GatewayError::GatewayTimeout
            } else {
                GatewayError::BadGateway
            },
            replayable: true,
            stale: false,
            sent: true,
        });
    }
    body.release_early();
    let streamed = !body.complete;
    if streamed && x.expects_continue() {
        client.send_continue();
    }
    let upload_done = Cell::new(!streamed);
    let head_sent = Cell::new(false);
    let ended = {
        let download = receive(x, response, client, &head_sent);
        if streamed {
            let upload = async {
                let mut out = BodyOut::plain(&mut up_send, x.timeouts.send);
                let copy = |piece: &[u8]| body.taps.piece(piece);
                pipe(&mut body.recv, &mut out, x.worker.limits.body_timeout, copy).await?;
                body.taps.end();
                Ok(())
            };
            with_upload(upload, download, &upload_done).await
        } else {
            Ended::Received(download.await)
        }
    };
    match ended.settle(client, head_sent.get()) {
        Ok(received) => received.inspect_err(|failure| {
            if failure.stale {
                connection.retire();
            }
        }),
        Err(delivered) => Ok(delivered),
    }
}

/// The body that came with the head; a complete one with its end.
async fn send_early_body(
    send: &mut SendStream<Bytes>,
    body: &RequestBody,
    timeout: Duration,
) -> Result<(), Halt> {
    if body.is_empty() {
        return Ok(());
    }
    let early = body.early();
    for (i, data) in early.iter().enumerate() {
        let last = i + 1 == early.len() && body.complete && body.trailers.is_none();
        send_data(send, data.clone(), last, timeout).await?;
    }
    if body.complete && (early.is_empty() || body.trailers.is_some()) {
        finish(send, body.trailers.clone())?;
    }
    Ok(())
}

/// The upstream's response to the client: head, data, trailers.
async fn receive(
    x: &Exchange<'_>,
    response: ResponseFuture,
    client: &mut Client,
    head_sent: &Cell<bool>,
) -> Result<Delivered, Failure> {
    let response = tokio::select! {
        response = tokio::time::timeout(x.timeouts.read, response) => response,
        _ = client.reset() => return Ok(Delivered::CLIENT_GONE),
    };
    let response = match response {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(upstream_failure(&e)),
        Err(_) => {
            return Err(Failure {
                error: GatewayError::GatewayTimeout,
                replayable: true,
                stale: false,
                sent: true,
            })
        }
    };
    let (mut head, mut up_body) = response.into_parts();
    let filters = match x.filter_head(&mut head) {
        ResponseBody::Relayed(filters) => filters,
        ResponseBody::Replaced(body) => {
            // Dropping the upstream's body cancels its stream.
            let status = head.status.as_u16();
            let Ok(bytes_sent) = client.send_whole(head, body) else {
                return Ok(Delivered::CLIENT_GONE);
            };
            head_sent.set(true);
            return Ok(Delivered::upstream(status, bytes_sent));
        }
    };
    let status = head.status.as_u16();
    let end = up_body.is_end_stream();
    let Ok(mut send) = client.send_head(Response::from_parts(head, ()), end) else {
        return Ok(Delivered::CLIENT_GONE);
    };
    head_sent.set(true);
    if end {
        return Ok(Delivered::upstream(status, 0));
    }
    let mut out = BodyOut::filtered(&mut send, filters, x.worker.limits.send_timeout);
    let relayed = pipe(&mut up_body, &mut out, x.timeouts.read, |_| {}).await;
    Ok(match relayed {
        Ok(bytes_sent) => Delivered::upstream(status, bytes_sent),
        Err(PipeError::Destination(halt)) => {
            // Dropping the upstream's half cancels its stream too.
            client.halted(halt);
            Delivered::cut_short(status, 0, Side::Client)
        }
        // The response is cut short: the client must see the stream reset, never a shorter
        // body passed off as whole.
        Err(PipeError::Source(halt)) => {
            out.send_reset(match halt {
                Halt::Reset(reason) => reason,
                Halt::TimedOut | Halt::Gone => Reason::INTERNAL_ERROR,
            });
            Delivered::cut_short(status, 0, Side::Upstream)
        }
    })
}
