//! An HTTP/2 stream to an HTTP/1.1 upstream (`scheme: http`/`https`), over the keep-alive pool
//! HTTP/1 clients use too.
//!
//! The request goes out with a `Content-Length` when the client gave one or the whole body
//! came with the head, else chunked (the client's trailers become chunked trailers). The
//! response comes back without its hop-by-hop headers, de-chunked into DATA frames, its chunked
//! trailers as HTTP/2 trailers. Each direction moves one read at a time and waits for the
//! other side's window, so neither holds more than a buffer.

use std::cell::Cell;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use h2::Reason;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::body::{next_data, release, trailers, BodyOut, Halt, PipeError, RequestBody};
use super::client::{Client, Delivered};
use super::exchange::{with_upload, Ended, Exchange, ResponseBody};
use crate::attempts::Failure;
use crate::error::GatewayError;
use crate::http1::{
    has_token, is_hop_by_hop, response_framing, BodyFraming, ChunkedScanner, ResponseHead,
};
use crate::outbound::{append_header, forwards_header, push_header, upstream_host};
use crate::outcome::Side;
use crate::relay::{read_more, write_all};
use crate::snapshot::NodeTarget;
use crate::upstream::connect;
use crate::upstream::h1::{read_response_head, write_request_head};

/// One attempt on `node`: on a pooled connection if there is one, unless `fresh`.
pub(super) async fn exchange(
    x: &Exchange<'_>,
    node: &NodeTarget,
    addr: SocketAddr,
    fresh: bool,
    body: &mut RequestBody,
    client: &mut Client,
) -> Result<Delivered, Failure> {
    let pooled = if fresh {
        None
    } else {
        let key = (addr, node.pool_id);
        x.worker.pool.borrow_mut().checkout(key, Instant::now())
    };
    let reused = pooled.is_some();
    let mut up = match pooled {
        Some(up) => up,
        None => connect(addr, x.upstream, node, x.timeouts.connect).await?,
    };
    up.requests += 1;
    up.buf.clear();
    let framing = request_framing(x, body)?;
    let mut out = Vec::with_capacity(1024);
    let host = upstream_host(x.context.client_host, x.upstream, node);
    write_request_head(&mut out, x.parts, &x.context, host, framing, None);
    write_early_body(&mut out, body, framing);
    if write_all(&mut up.stream, &out, x.timeouts.send)
        .await
        .is_err()
    {
        // Whatever the upstream got, it was not a whole request it could act on.
        return Err(Failure::stale_connection(reused));
    }
    body.release_early();
    let streamed = !body.complete;
    if streamed && x.expects_continue() {
        client.send_continue();
    }
    let upload_done = Cell::new(!streamed);
    let head_sent = Cell::new(false);
    let mut response = ResponseHead::default();
    let ended = {
        let (mut up_read, mut up_write) = up.stream.split();
        let download = receive(
            x,
            &mut up_read,
            &mut up.buf,
            &mut response,
            client,
            reused,
            &head_sent,
        );
        if streamed {
            let upload = upload(
                body,
                &mut up_write,
                framing,
                x.worker.limits.body_timeout,
                x.timeouts.send,
            );
            with_upload(upload, download, &upload_done).await
        } else {
            Ended::Received(download.await)
        }
    };
    let received = match ended.settle(client, head_sent.get()) {
        Ok(received) => received?,
        Err(delivered) => return Ok(delivered),
    };
    if received.upstream_reusable && upload_done.get() && up.buf.is_empty() {
        x.worker.pool.borrow_mut().checkin(
            (addr, node.pool_id),
            up,
            &x.upstream.pool,
            Instant::now(),
        );
    }
    Ok(received.delivered)
}

/// Methods whose request means nothing with a body: sent without one, not with `Content-Length: 0`.
fn takes_no_body(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
    )
}

fn request_framing(x: &Exchange<'_>, body: &RequestBody) -> Result<BodyFraming, Failure> {
    if let Some(length) = x.parts.headers.get(CONTENT_LENGTH) {
        // `h2` has refused a stream whose length does not parse; this is only belt and braces.
        return match length.to_str().ok().and_then(|v| v.trim().parse().ok()) {
            Some(n) => Ok(BodyFraming::Length(n)),
            None => Err(Failure {
                error: GatewayError::BadRequest,
                replayable: false,
                stale: false,
                sent: false,
            }),
        };
    }
    Ok(match body {
        // Trailers travel only in a chunked body.
        RequestBody {
            complete: true,
            trailers: None,
            ..
        } if body.early_len() == 0 && takes_no_body(&x.parts.method) => BodyFraming::None,
        RequestBody {
            complete: true,
            trailers: None,
            ..
        } => BodyFraming::Length(body.early_len() as u64),
        _ => BodyFraming::Chunked,
    })
}

/// Appends the body that came with the head, framed; a complete chunked one with its end.
fn write_early_body(out: &mut Vec<u8>, body: &RequestBody, framing: BodyFraming) {
    for data in body.early() {
        if framing == BodyFraming::Chunked {
            push_chunk(out, data);
        } else {
            out.extend_from_slice(data);
        }
    }
    if framing == BodyFraming::Chunked && body.complete {
        push_last_chunk(out, body.trailers.as_ref());
    }
}

fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn push_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if forwards_header(name.as_str(), value.as_bytes(), None) {
            push_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// The rest of the client's body to the upstream, framed, and to its taps; the window each
/// piece used goes back to the client once the upstream has it.
async fn upload<W: AsyncWrite + Unpin>(
    body: &mut RequestBody,
    up: &mut W,
    framing: BodyFraming,
    read_timeout: Duration,
    write_timeout: Duration,
) -> Result<(), PipeError> {
    let chunked = framing == BodyFraming::Chunked;
    let mut out = Vec::new();
    let sink = PipeError::Destination(Halt::Gone);
    let recv = &mut body.recv;
    while let Some(data) = next_data(recv, read_timeout)
        .await
        .map_err(PipeError::Source)?
    {
        body.taps.piece(&data);
        if chunked {
            out.clear();
            push_chunk(&mut out, &data);
            write_all(up, &out, write_timeout).await.map_err(|_| sink)?;
        } else {
            write_all(up, &data, write_timeout)
                .await
                .map_err(|_| sink)?;
        }
        release(recv, data.len());
    }
    if chunked {
        let trailers = trailers(recv, read_timeout)
            .await
            .map_err(PipeError::Source)?;
        out.clear();
        push_last_chunk(&mut out, trailers.as_ref());
        write_all(up, &out, write_timeout).await.map_err(|_| sink)?;
    }
    body.taps.end();
    Ok(())
}

struct Received {
    delivered: Delivered,
    upstream_reusable: bool,
}

impl Received {
    /// The upstream's response, cut short by `side`.
    fn cut_short(status: u16, bytes_sent: u64, side: Side) -> Self {
        Received {
            delivered: Delivered::cut_short(status, bytes_sent, side),
            upstream_reusable: false,
        }
    }

    /// The client left before the response began.
    fn client_gone() -> Self {
        Received {
            delivered: Delivered::CLIENT_GONE,
            upstream_reusable: false,
        }
    }
}

/// The upstream's response to the client: interim heads, the final head, the body.
async fn receive<R: AsyncRead + Unpin>(
    x: &Exchange<'_>,
    up: &mut R,
    up_buf: &mut BytesMut,
    response: &mut ResponseHead,
    client: &mut Client,
    reused: bool,
    head_sent: &Cell<bool>,
) -> Result<Received, Failure> {
    let limits = &x.worker.limits;
    let mut interim_seen = false;
    let head_len = loop {
        let len = tokio::select! {
            len = read_response_head(up, up_buf, response, limits.max_response_head, x.timeouts.read, reused, interim_seen) => len?,
            _ = client.reset() => return Ok(Received::client_gone()),
        };
        let status = response.status();
        if (100..200).contains(&status) && status != 101 {
            client.send_interim(status, response_headers(response));
            interim_seen = true;
            up_buf.advance(len);
            continue;
        }
        break len;
    };
    let status = response.status();
    let method = if x.parts.method == Method::HEAD {
        "HEAD"
    } else {
        "GET"
    };
    let (Ok(framing), Ok(code)) = (
        response_framing(response, method),
        StatusCode::from_u16(status),
    ) else {
        return Err(Failure::bad_response());
    };
    // A protocol switch has no place in an HTTP/2 stream.
    if status == 101 {
        return Err(Failure::bad_response());
    }
    up_buf.advance(head_len);
    let upstream_reusable = response.minor_version() >= 1
        && !response
            .header("connection")
            .is_some_and(|c| has_token(c, "close"))
        && framing != BodyFraming::UntilClose;
    let (mut head, ()) = Response::new(()).into_parts();
    head.status = code;
    head.headers = response_headers(response);
    let filters = match x.filter_head(&mut head) {
        ResponseBody::Relayed(filters) => filters,
        ResponseBody::Replaced(body) => {
            // The upstream's body is not read: its connection cannot carry another request.
            let status = head.status.as_u16();
            let Ok(bytes_sent) = client.send_whole(head, body) else {
                return Ok(Received::client_gone());
            };
            head_sent.set(true);
            return Ok(Received {
                delivered: Delivered::upstream(status, bytes_sent),
                upstream_reusable: false,
            });
        }
    };
    let status = head.status.as_u16();
    let end = framing.is_none();
    let Ok(mut send) = client.send_head(Response::from_parts(head, ()), end) else {
        return Ok(Received::client_gone());
    };
    head_sent.set(true);
    if end {
        return Ok(Received {
            delivered: Delivered::upstream(status, 0),
            upstream_reusable,
        });
    }
    let mut out = BodyOut::filtered(&mut send, filters, limits.send_timeout);
    let relayed = relay_body(up, up_buf, framing, &mut out, x.timeouts.read).await;
    let sent = out.sent();
    match relayed {
        Ok(()) => Ok(Received {
            delivered: Delivered::upstream(status, sent),
            upstream_reusable,
        }),
        Err(PipeError::Destination(halt)) => {
            client.halted(halt);
            Ok(Received::cut_short(status, sent, Side::Client))
        }
        // The body is cut short: the client must see the stream reset, never a shorter body
        // passed off as whole.
        Err(PipeError::Source(_)) => {
            out.send_reset(Reason::INTERNAL_ERROR);
            Ok(Received::cut_short(status, sent, Side::Upstream))
        }
    }
}

/// The response's headers as HTTP/2 carries them: no hop-by-hop ones, nor those `Connection`
/// names. A header HTTP/2 cannot carry is left out.
fn response_headers(response: &ResponseHead) -> HeaderMap {
    let connection = response.header("connection");
    let mut headers = HeaderMap::with_capacity(response.headers().count());
    for (name, value) in response.headers() {
        if is_hop_by_hop(name) || connection.is_some_and(|c| has_token(c, name)) {
            continue;
        }
        append_header(&mut headers, name.as_bytes(), value);
    }
    headers
}

/// The upstream's body to the client as DATA frames, ending with its trailers if it had any.
async fn relay_body<R: AsyncRead + Unpin>(
    up: &mut R,
    buf: &mut BytesMut,
    framing: BodyFraming,
    out: &mut BodyOut<'_>,
    read_timeout: Duration,
) -> Result<(), PipeError> {
    match framing {
        BodyFraming::None => out.finish(None).await.map_err(PipeError::Destination),
        BodyFraming::Length(mut left) => loop {
            let take = (buf.len() as u64).min(left) as usize;
            if take > 0 {
                left -= take as u64;
                let piece = buf.split_to(take).freeze();
                out.data(piece, left == 0)
                    .await
                    .map_err(PipeError::Destination)?;
            }
            if left == 0 {
                return Ok(());
            }
            read_or_reset(up, buf, read_timeout, out).await?;
        },
        BodyFraming::Chunked => {
            let mut scanner = ChunkedScanner::default();
            let mut trailer_lines = Vec::new();
            loop {
                if !buf.is_empty() {
                    let mut decoded = BytesMut::new();
                    let used = scanner
                        .scan_with_trailers(
                            buf,
                            |d| decoded.extend_from_slice(d),
                            |b| trailer_lines.push(b),
                        )
                        .map_err(|_| PipeError::Source(Halt::Gone))?;
                    buf.advance(used);
                    if !decoded.is_empty() {
                        out.data(decoded.freeze(), false)
                            .await
                            .map_err(PipeError::Destination)?;
                    }
                }
                if scanner.is_done() {
                    return out
                        .finish(parse_trailers(&trailer_lines))
                        .await
                        .map_err(PipeError::Destination);
                }
                read_or_reset(up, buf, read_timeout, out).await?;
            }
        }
        BodyFraming::UntilClose => loop {
            if !buf.is_empty() {
                let piece = buf.split().freeze();
                out.data(piece, false)
                    .await
                    .map_err(PipeError::Destination)?;
            }
            if read_more(up, buf, read_timeout)
                .await
                .map_err(|_| PipeError::Source(Halt::Gone))?
                == 0
            {
                return out.finish(None).await.map_err(PipeError::Destination);
            }
        },
    }
}

/// Reads more of the body; a body that ends before its framing says, a timeout, or a client
/// that reset the stream in the meantime stop the relay.
async fn read_or_reset<R: AsyncRead + Unpin>(
    up: &mut R,
    buf: &mut BytesMut,
    timeout: Duration,
    out: &mut BodyOut<'_>,
) -> Result<(), PipeError> {
    tokio::select! {
        halt = out.reset_by_peer() => Err(PipeError::Destination(halt)),
        read = read_more(up, buf, timeout) => match read {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(PipeError::Source(Halt::Gone)),
        },
    }
}

/// Chunked trailer lines as HTTP/2 trailers; `None` when there were none that HTTP/2 can carry.
fn parse_trailers(lines: &[u8]) -> Option<HeaderMap> {
    if lines.is_empty() {
        return None;
    }
    let mut block = Vec::with_capacity(lines.len() + 2);
    block.extend_from_slice(lines);
    block.extend_from_slice(b"\r\n");
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let Ok(httparse::Status::Complete((_, parsed))) = httparse::parse_headers(&block, &mut storage)
    else {
        return None;
    };
    let mut trailers = HeaderMap::new();
    for header in parsed {
        if is_hop_by_hop(header.name) {
            continue;
        }
        append_header(&mut trailers, header.name.as_bytes(), header.value);
    }
    (!trailers.is_empty()).then_some(trailers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_trailers_become_http2_trailers() {
        let trailers = parse_trailers(b"Grpc-Status: 0\r\nX-Sum: abc\r\nTE: trailers\r\n").unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert_eq!(trailers.get("x-sum").unwrap(), "abc");
        assert!(trailers.get("te").is_none(), "hop-by-hop");
        assert!(parse_trailers(b"").is_none());
    }

    #[test]
    fn response_heads_lose_what_http2_cannot_carry() {
        let mut head = ResponseHead::default();
        head.parse(
            b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTransfer-Encoding: chunked\r\nX-Kept: 2\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
            4096,
        )
        .unwrap();
        let headers = response_headers(&head);
        assert_eq!(headers.len(), 3, "{headers:?}");
        assert_eq!(headers.get("x-kept").unwrap(), "2");
        assert_eq!(headers.get_all("set-cookie").iter().count(), 2);
    }
}
