//! The HTTP/1 server codec. One client connection: read a request head, answer it, repeat
//! while keep-alive allows.

mod client;
mod forward;

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use pylon_plugin::RequestCtx;
use pylon_router::RequestView;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::access_log::AccessRecord;
use crate::error::GatewayError;
use crate::http1::{request_framing, BodyFraming, HeadError, RequestHead, ResponseHead};
use crate::outcome::Outcome;
use crate::pipeline::{PluginWork, Plugins};
use crate::relay::{read_more, RelayError};
use crate::snapshot::RouteTarget;
use crate::tls::{ClientStream, MaybeTls};
use crate::vars::normalize_host;
use crate::worker::Worker;
use client::{respond_error, send_reply, wants_keep_alive, ClientIo, ClientRequest, Downstream};

/// How long a stopping worker still waits for the next request on an idle keep-alive
/// connection: the time for a client to send one right after reading a response.
const DRAIN_LINGER: Duration = Duration::from_secs(1);

enum HeadRead {
    Complete,
    /// The client closed, went idle past the keep-alive timeout, or the worker is stopping.
    Closed,
    Failed(GatewayError),
}

pub(crate) async fn serve(
    worker: Rc<Worker>,
    stream: ClientStream,
    server_name: Option<Box<str>>,
    client: SocketAddr,
    local: SocketAddr,
    buf: BytesMut,
) {
    let mut conn = Downstream {
        request: ClientRequest {
            head: RequestHead::default(),
            host: String::new(),
            client,
            local,
            server_name,
            tls: matches!(stream, MaybeTls::Tls(_)),
        },
        io: ClientIo {
            stream,
            buf,
            response: ResponseHead::default(),
            out: Vec::with_capacity(1024),
        },
    };
    let mut first = true;
    loop {
        match read_head(&worker, &mut conn, first).await {
            HeadRead::Complete => {}
            HeadRead::Closed => return,
            HeadRead::Failed(error) => {
                reject_unparsed(&worker, &mut conn, error).await;
                return linger(&mut conn.io.stream).await;
            }
        }
        first = false;
        if !handle(&worker, &mut conn).await {
            if client_may_still_send(&conn) {
                linger(&mut conn.io.stream).await;
            }
            return;
        }
    }
}

/// Whether closing now could meet bytes the client is still sending: part of a body, or a next
/// request from a client that did not ask to close. A body-less request from a client that
/// asked to close (the common way a connection ends) leaves nothing to wait for, and lingering
/// there would only cost a timer and a wake-up per connection.
fn client_may_still_send(conn: &Downstream) -> bool {
    !conn.io.buf.is_empty()
        || !matches!(request_framing(&conn.request.head), Ok(BodyFraming::None))
        || wants_keep_alive(&conn.request.head)
}

/// Closing a connection the client may still be sending on (an error before its body was
/// read, say) must not reset it: unread bytes in the socket turn `close` into a RST, which can
/// destroy the response before the client reads it. So, as nginx's lingering close: send a
/// FIN first, then read and discard what still comes for a while.
async fn linger(stream: &mut ClientStream) {
    /// Longest wait for more bytes, for all of them, and most bytes discarded.
    const QUIET: Duration = Duration::from_secs(1);
    const TOTAL: Duration = Duration::from_secs(5);
    const MAX_DISCARD: usize = 1 << 20;
    if tokio::time::timeout(QUIET, stream.shutdown())
        .await
        .is_err()
    {
        return;
    }
    let deadline = Instant::now() + TOTAL;
    let mut scratch = [0u8; 4096];
    let mut discarded = 0;
    while discarded < MAX_DISCARD {
        let wait = QUIET.min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, stream.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => return,
        }
    }
}

async fn read_head(worker: &Worker, conn: &mut Downstream, first: bool) -> HeadRead {
    let limits = &worker.limits;
    let mut deadline =
        (!conn.io.buf.is_empty() || first).then(|| Instant::now() + limits.header_timeout);
    loop {
        match conn.request.head.parse(&conn.io.buf, &limits.head) {
            Ok(Some(len)) => {
                conn.io.buf.advance(len);
                return HeadRead::Complete;
            }
            Ok(None) => {}
            Err(HeadError::LineTooLong) => return HeadRead::Failed(GatewayError::UriTooLong),
            Err(HeadError::HeadTooLarge | HeadError::TooManyHeaders) => {
                return HeadRead::Failed(GatewayError::HeadersTooLarge)
            }
            Err(HeadError::Malformed(_) | HeadError::Version) => {
                return HeadRead::Failed(GatewayError::BadRequest)
            }
        }
        let read = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                read_more(&mut conn.io.stream, &mut conn.io.buf, left).await
            }
            // Idle between requests: wait for the first byte. Once the worker stops, only a
            // moment longer: a request sent right after the last response may be on its way,
            // and is better answered (with `Connection: close`) than cut off.
            None => {
                let stopping = worker.stopping();
                if worker.is_stopping() {
                    let linger = DRAIN_LINGER.min(limits.keepalive_timeout);
                    read_more(&mut conn.io.stream, &mut conn.io.buf, linger).await
                } else {
                    tokio::select! {
                        read = read_more(&mut conn.io.stream, &mut conn.io.buf, limits.keepalive_timeout) => read,
                        _ = stopping => continue,
                    }
                }
            }
        };
        match read {
            Ok(0) => return HeadRead::Closed,
            Ok(_) => {
                deadline.get_or_insert_with(|| Instant::now() + limits.header_timeout);
            }
            Err(RelayError::Source(e))
                if e.kind() == std::io::ErrorKind::TimedOut
                    && deadline.is_some()
                    && !conn.io.buf.is_empty() =>
            {
                return HeadRead::Failed(GatewayError::RequestTimeout)
            }
            Err(_) => return HeadRead::Closed,
        }
    }
}

/// Handles one parsed request; returns whether the connection can carry another.
async fn handle(worker: &Worker, conn: &mut Downstream) -> bool {
    let started = Instant::now();
    let view = worker.view();
    let head = &conn.request.head;
    let host_ok = match head.client_host() {
        // More than one Host is refused (RFC 9112 §3.2): routing on one and forwarding
        // another, as a server behind might pick, would let a client slip past host rules.
        Some(raw) => normalize_host(raw, &mut conn.request.host) && host_count(head) <= 1,
        None => {
            conn.request.host.clear();
            // HTTP/1.1 requires Host (RFC 9112 §3.2); HTTP/1.0 may go without.
            head.minor_version() == 0
        }
    };
    let framing = request_framing(head);
    // As over HTTP/2, CONNECT is refused: a 2xx would make the connection a tunnel (RFC 9112
    // §6.3), which the gateway does not proxy.
    let tunnel = head.method() == "CONNECT";
    let route = view.snapshot.router.find(&conn.request.vars());
    let framing = match framing {
        Ok(framing) if host_ok && !tunnel => framing,
        // The body's length is unknown (or a tunnel's bytes may follow): nothing after this
        // head can be trusted.
        refused => {
            let error = refused
                .err()
                .filter(|_| host_ok)
                .map_or(GatewayError::BadRequest, GatewayError::from);
            let outcome = respond_error(worker, &mut conn.io, error, false).await;
            log(
                worker,
                conn,
                conn.request.client.ip(),
                route,
                started,
                &outcome,
            );
            return false;
        }
    };
    // The client as the log names it: the peer, or the address `real-ip` found.
    let mut client = conn.request.client.ip();
    let outcome = match route {
        Some(route) => {
            let vars = conn.request.vars();
            let plugins = Plugins::of(&view.snapshot, route);
            let mut ctx = RequestCtx::new(&vars, &route.id, route.service_id.as_deref());
            let outcome = match plugins.request(&mut ctx).await {
                Some(reply) => {
                    let reply = plugins.reply(&ctx, reply);
                    let keep = skip_buffered_body(&mut conn.io.buf, framing)
                        && wants_keep_alive(&conn.request.head);
                    let head_only = conn.request.head.method() == "HEAD";
                    send_reply(worker, &mut conn.io, &reply, head_only, keep).await
                }
                None => {
                    let work = PluginWork { plugins, ctx: &ctx };
                    let downstream = (&mut conn.io, &conn.request);
                    forward::proxy(worker, &view, route, downstream, framing, work).await
                }
            };
            plugins.log(&ctx, outcome.status, outcome.bytes_sent, started.elapsed());
            client = ctx.client_ip();
            outcome
        }
        None => {
            let keep = skip_buffered_body(&mut conn.io.buf, framing)
                && wants_keep_alive(&conn.request.head);
            respond_error(worker, &mut conn.io, GatewayError::RouteNotFound, keep).await
        }
    };
    log(worker, conn, client, route, started, &outcome);
    outcome.keep_alive
}

/// A head the codec refused. It is still logged, with the route it would have matched if the
/// request line could be read.
async fn reject_unparsed(worker: &Worker, conn: &mut Downstream, error: GatewayError) {
    let started = Instant::now();
    let outcome = respond_error(worker, &mut conn.io, error, false).await;
    if !worker.access_log.is_enabled() {
        return;
    }
    let line_end = memchr::memchr(b'\n', &conn.io.buf).unwrap_or(conn.io.buf.len());
    let line = String::from_utf8_lossy(&conn.io.buf[..line_end.min(1024)]);
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next().unwrap_or("").to_owned();
    let uri = parts.next().unwrap_or("").to_owned();
    let view = worker.view();
    let route = view.snapshot.router.find(&RequestLine {
        method: &method,
        path: uri.split('?').next().unwrap_or(""),
        client: conn.request.client,
    });
    worker.access_log.record(AccessRecord {
        time: SystemTime::now(),
        client: conn.request.client.ip(),
        method,
        uri,
        host: String::new(),
        status: outcome.status,
        bytes_sent: outcome.bytes_sent,
        request_length: conn.io.buf.len() as u64,
        route_id: route.map(|r| r.id.clone()),
        upstream: None,
        upstream_latency: None,
        latency: started.elapsed(),
        user_agent: String::new(),
    });
}

/// What the router can see of a request whose head could not be parsed.
struct RequestLine<'a> {
    method: &'a str,
    path: &'a str,
    client: SocketAddr,
}

impl RequestView for RequestLine<'_> {
    fn path(&self) -> &str {
        self.path
    }
    fn host(&self) -> Option<&str> {
        None
    }
    fn method(&self) -> &str {
        self.method
    }
    fn remote_addr(&self) -> std::net::IpAddr {
        self.client.ip()
    }
    fn var(&self, _: &str) -> Option<std::borrow::Cow<'_, str>> {
        None
    }
}

fn host_count(head: &RequestHead) -> usize {
    head.headers()
        .filter(|(name, _)| name.eq_ignore_ascii_case("host"))
        .count()
}

/// Drops a request body that will not be forwarded, if it has fully arrived; otherwise the
/// connection cannot be reused and false is returned.
fn skip_buffered_body(buf: &mut BytesMut, framing: BodyFraming) -> bool {
    match framing {
        BodyFraming::None => true,
        BodyFraming::Length(n) if buf.len() as u64 >= n => {
            buf.advance(n as usize);
            true
        }
        _ => false,
    }
}

fn log(
    worker: &Worker,
    conn: &Downstream,
    client: IpAddr,
    route: Option<&RouteTarget>,
    started: Instant,
    outcome: &Outcome,
) {
    if !worker.access_log.is_enabled() {
        return;
    }
    let head = &conn.request.head;
    worker.access_log.record(AccessRecord {
        time: SystemTime::now(),
        client,
        method: head.method().to_owned(),
        uri: head.target().to_owned(),
        host: conn.request.host.clone(),
        status: outcome.status,
        bytes_sent: outcome.bytes_sent,
        request_length: head.raw().len() as u64,
        route_id: route.map(|r| r.id.clone()),
        upstream: outcome.upstream,
        upstream_latency: outcome.upstream_latency,
        latency: started.elapsed(),
        user_agent: head
            .header("user-agent")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default(),
    });
}
