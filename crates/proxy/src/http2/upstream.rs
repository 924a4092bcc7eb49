//! HTTP/2 upstreams (`scheme: grpc`/`grpcs`): each worker keeps one multiplexed connection per
//! node, made on first use (streams that arrive meanwhile wait for that one handshake), made
//! again once it dies or the upstream sends GOAWAY, and closed after it has carried no stream
//! for the upstream's keep-alive idle timeout.
//!
//! A stream is relayed frame by frame both ways, with each side's window given back only as
//! the other side takes the data, and the trailers (`grpc-status`, `grpc-message`) pass
//! through as trailers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, SendStream};
use http::header::{HeaderValue, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri, Version};
use tokio::sync::watch;

use super::body::{finish, pipe, send_data, with_upload, Ended, Halt, PipeError, RequestBody};
use super::client::{Client, Delivered};
use super::stream::Exchange;
use super::to_http1::append_header;
use crate::attempts::Failure;
use crate::error::GatewayError;
use crate::forward::connect;
use crate::http1::has_token;
use crate::outbound::{forwards_header, plugin_may_set, upstream_host, write_forwarding_headers};
use crate::pool::PoolKey;
use crate::snapshot::NodeTarget;
use crate::tls::UpstreamStream;

/// One worker's HTTP/2 upstream connections.
#[derive(Default)]
pub(crate) struct H2Upstreams {
    slots: HashMap<PoolKey, Slot>,
    next_id: u64,
}

struct Slot {
    /// Tells this connection from the one that replaces it under the same key.
    id: u64,
    state: State,
}

#[derive(Clone)]
enum State {
    /// A handshake is under way; its outcome is published here.
    Connecting(watch::Receiver<Option<Result<Conn, GatewayError>>>),
    Ready(Conn),
}

#[derive(Clone)]
struct Conn {
    id: u64,
    sender: SendRequest<Bytes>,
    /// Streams using the connection now: it is idle only at zero.
    in_flight: Rc<Cell<usize>>,
}

impl H2Upstreams {
    fn get(&self, key: PoolKey) -> Option<(u64, State)> {
        self.slots.get(&key).map(|s| (s.id, s.state.clone()))
    }

    fn start(
        &mut self,
        key: PoolKey,
        outcome: watch::Receiver<Option<Result<Conn, GatewayError>>>,
    ) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.slots.insert(
            key,
            Slot {
                id,
                state: State::Connecting(outcome),
            },
        );
        id
    }

    fn ready(&mut self, key: PoolKey, conn: Conn) {
        if let Some(slot) = self.slots.get_mut(&key).filter(|s| s.id == conn.id) {
            slot.state = State::Ready(conn);
        }
    }

    /// Drops the slot if it still holds connection `id` (a newer one is left alone).
    fn forget(&mut self, key: PoolKey, id: u64) {
        if self.slots.get(&key).is_some_and(|s| s.id == id) {
            self.slots.remove(&key);
        }
    }
}

/// Counts a stream on its connection for as long as it lives.
struct InFlight(Rc<Cell<usize>>);

impl InFlight {
    fn new(count: &Rc<Cell<usize>>) -> Self {
        count.set(count.get() + 1);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// One attempt on `node`; a connection that turned out to be going away gets one more try on
/// a fresh one.
pub(super) async fn exchange(
    x: &Exchange<'_>,
    node: &NodeTarget,
    addr: SocketAddr,
    body: &mut RequestBody,
    client: &mut Client,
) -> Result<Delivered, Failure> {
    match once(x, node, addr, body, client).await {
        Err(f) if f.stale && f.allows_retry(true, x.idempotent) => {
            once(x, node, addr, body, client).await
        }
        result => result,
    }
}

async fn once(
    x: &Exchange<'_>,
    node: &NodeTarget,
    addr: SocketAddr,
    body: &mut RequestBody,
    client: &mut Client,
) -> Result<Delivered, Failure> {
    let key = (addr, node.pool_id);
    let pool = &x.worker.h2_upstreams;
    let (conn, reused) = checkout(x, key, addr, node).await?;
    let _in_flight = InFlight::new(&conn.in_flight);
    // Dead or going away: the next stream to this node gets a new connection.
    let retire = || pool.borrow_mut().forget(key, conn.id);
    // Waits while the upstream's stream limit is reached.
    let mut sender =
        match tokio::time::timeout(x.timeouts.connect, conn.sender.clone().ready()).await {
            Ok(Ok(sender)) => sender,
            Ok(Err(_)) => {
                retire();
                return Err(Failure::stale_connection(reused));
            }
            Err(_) => return Err(Failure::before_sending(GatewayError::GatewayTimeout)),
        };
    let request = upstream_request(x, node)?;
    let (response, mut up_send) = match sender.send_request(request, body.is_empty()) {
        Ok(sent) => sent,
        Err(_) => {
            retire();
            return Err(Failure::stale_connection(reused));
        }
    };
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
                pipe(
                    &mut body.recv,
                    &mut up_send,
                    x.worker.limits.body_timeout,
                    x.timeouts.send,
                )
                .await
                .map(drop)
            };
            with_upload(upload, download, &upload_done).await
        } else {
            Ended::Received(download.await)
        }
    };
    match ended.settle(client, head_sent.get()) {
        Ok(received) => received.inspect_err(|failure| {
            if failure.stale {
                retire();
            }
        }),
        Err(delivered) => Ok(delivered),
    }
}

impl Failure {
    /// A connection that could not take a new stream: dead, or the upstream said GOAWAY.
    /// Nothing reached the upstream; a reused connection earns a fresh one.
    fn stale_connection(reused: bool) -> Self {
        Failure {
            error: GatewayError::BadGateway,
            replayable: true,
            stale: reused,
            sent: false,
        }
    }
}

/// The connection for `key`: the live one, the one being made, or a new one.
async fn checkout(
    x: &Exchange<'_>,
    key: PoolKey,
    addr: SocketAddr,
    node: &NodeTarget,
) -> Result<(Conn, bool), Failure> {
    let pool = &x.worker.h2_upstreams;
    let existing = pool.borrow().get(key);
    match existing {
        Some((_, State::Ready(conn))) => Ok((conn, true)),
        Some((id, State::Connecting(mut outcome))) => {
            let settled = match outcome.wait_for(Option::is_some).await {
                Ok(settled) => settled.clone(),
                Err(_) => None,
            };
            match settled {
                Some(Ok(conn)) => Ok((conn, false)),
                Some(Err(error)) => Err(Failure::before_sending(error)),
                // The stream that was connecting went away mid-handshake: start over.
                None => {
                    pool.borrow_mut().forget(key, id);
                    connect_new(x, key, addr, node).await
                }
            }
        }
        None => connect_new(x, key, addr, node).await,
    }
}

async fn connect_new(
    x: &Exchange<'_>,
    key: PoolKey,
    addr: SocketAddr,
    node: &NodeTarget,
) -> Result<(Conn, bool), Failure> {
    let pool = &x.worker.h2_upstreams;
    let (publish, outcome) = watch::channel(None);
    let id = pool.borrow_mut().start(key, outcome);
    match handshake(x, addr, node).await {
        Ok((sender, connection)) => {
            let conn = Conn {
                id,
                sender,
                in_flight: Rc::default(),
            };
            pool.borrow_mut().ready(key, conn.clone());
            let _ = publish.send(Some(Ok(conn.clone())));
            tokio::task::spawn_local(drive(
                connection,
                pool.clone(),
                key,
                id,
                conn.in_flight.clone(),
                x.upstream.pool.idle_timeout,
            ));
            Ok((conn, false))
        }
        Err(failure) => {
            pool.borrow_mut().forget(key, id);
            let _ = publish.send(Some(Err(failure.error)));
            Err(failure)
        }
    }
}

type Driver = h2::client::Connection<UpstreamStream, Bytes>;

/// TCP (and TLS for `grpcs`) and the HTTP/2 handshake, within the connect timeout.
async fn handshake(
    x: &Exchange<'_>,
    addr: SocketAddr,
    node: &NodeTarget,
) -> Result<(SendRequest<Bytes>, Driver), Failure> {
    let deadline = Instant::now() + x.timeouts.connect;
    let up = connect(addr, x.upstream, node, x.timeouts.connect).await?;
    let limits = &x.worker.limits;
    let handshake = limits
        .http2
        .client(limits.max_response_head)
        .handshake::<_, Bytes>(up.stream);
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, handshake).await {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(e)) => {
            tracing::warn!(upstream = %x.upstream.key, %addr, "HTTP/2 handshake failed: {e}");
            Err(Failure::before_sending(GatewayError::BadGateway))
        }
        Err(_) => Err(Failure::before_sending(GatewayError::GatewayTimeout)),
    }
}

/// Runs the connection until it ends or has been idle for `idle_timeout`, then takes it out
/// of the pool.
async fn drive(
    connection: Driver,
    pool: Rc<RefCell<H2Upstreams>>,
    key: PoolKey,
    id: u64,
    in_flight: Rc<Cell<usize>>,
    idle_timeout: Duration,
) {
    tokio::pin!(connection);
    let mut idle_check = tokio::time::interval((idle_timeout / 2).max(Duration::from_millis(10)));
    let mut idle_since: Option<Instant> = None;
    loop {
        tokio::select! {
            ended = &mut connection => {
                if let Err(e) = ended {
                    tracing::debug!(addr = %key.0, "HTTP/2 upstream connection ended: {e}");
                }
                break;
            }
            _ = idle_check.tick() => {
                if in_flight.get() > 0 {
                    idle_since = None;
                } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= idle_timeout {
                    break;
                }
            }
        }
    }
    pool.borrow_mut().forget(key, id);
}

/// The request as the upstream gets it: the client's method, path and headers (less those
/// that describe the client's hop), `:authority` per `pass_host`, and the forwarding headers.
fn upstream_request(x: &Exchange<'_>, node: &NodeTarget) -> Result<Request<()>, Failure> {
    let bad_gateway = || Failure::before_sending(GatewayError::BadGateway);
    let edits = x.context.edits;
    let host = match &edits.host {
        Some(host) => host.as_bytes(),
        None => upstream_host(x.context.client_host, x.upstream, node),
    };
    let authority =
        Authority::try_from(host).map_err(|_| Failure::before_sending(GatewayError::BadGateway))?;
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(if x.upstream.tls.is_some() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    uri.authority = Some(authority);
    uri.path_and_query = Some(match &edits.uri {
        Some(target) => PathAndQuery::try_from(target.as_str()).map_err(|_| bad_gateway())?,
        None => x
            .parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    });
    let uri = Uri::from_parts(uri).map_err(|_| bad_gateway())?;
    let mut request = Request::new(());
    *request.method_mut() = match &edits.method {
        Some(method) => Method::from_bytes(method.as_bytes()).map_err(|_| bad_gateway())?,
        None => x.parts.method.clone(),
    };
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_2;
    let headers = request.headers_mut();
    for (name, value) in &x.parts.headers {
        if *name == TE {
            // The one TE HTTP/2 allows, and gRPC requires.
            if has_token(value.as_bytes(), "trailers") {
                headers.append(TE, HeaderValue::from_static("trailers"));
            }
        } else if forwards_header(name.as_str(), value.as_bytes(), None)
            && !edits.headers.replaces(name.as_str())
        {
            headers.append(name.clone(), value.clone());
        }
    }
    for (name, value) in edits.headers.added() {
        if plugin_may_set(name) {
            append_header(headers, name.as_bytes(), value.as_bytes());
        }
    }
    let mut lines = Vec::with_capacity(256);
    write_forwarding_headers(&mut lines, x.parts, &x.context);
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        append_header(headers, &line[..colon], line[colon + 1..].trim_ascii());
    }
    Ok(request)
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
    if let Some(body) = x.filter_head(&mut head) {
        // Dropping the upstream's body cancels its stream.
        let status = head.status.as_u16();
        let Ok(bytes_sent) = client.send_whole(head, body) else {
            return Ok(Delivered::CLIENT_GONE);
        };
        head_sent.set(true);
        return Ok(Delivered::upstream(status, bytes_sent));
    }
    let status = head.status.as_u16();
    let end = up_body.is_end_stream();
    let Ok(mut send) = client.send_head(Response::from_parts(head, ()), end) else {
        return Ok(Delivered::CLIENT_GONE);
    };
    head_sent.set(true);
    if end {
        return Ok(Delivered::upstream(status, 0));
    }
    let relayed = pipe(
        &mut up_body,
        &mut send,
        x.timeouts.read,
        x.worker.limits.send_timeout,
    )
    .await;
    let bytes_sent = match relayed {
        Ok(bytes) => bytes,
        Err(PipeError::Destination(halt)) => {
            // Dropping the upstream's half cancels its stream too.
            client.halted(halt);
            0
        }
        // The response is cut short: the client must see the stream reset, never a shorter
        // body passed off as whole.
        Err(PipeError::Source(halt)) => {
            send.send_reset(match halt {
                Halt::Reset(reason) => reason,
                Halt::TimedOut | Halt::Gone => Reason::INTERNAL_ERROR,
            });
            0
        }
    };
    Ok(Delivered::upstream(status, bytes_sent))
}

/// What an upstream's failure before its response head says about retrying.
fn upstream_failure(e: &h2::Error) -> Failure {
    if e.is_go_away() && e.is_remote() {
        // The stream was above the GOAWAY's last stream id: never processed.
        return Failure {
            error: GatewayError::BadGateway,
            replayable: true,
            stale: true,
            sent: false,
        };
    }
    let refused = e.is_reset() && e.is_remote() && e.reason() == Some(Reason::REFUSED_STREAM);
    Failure {
        error: GatewayError::BadGateway,
        replayable: true,
        stale: false,
        // REFUSED_STREAM: the upstream promises it did nothing with the stream.
        sent: !refused,
    }
}
