//! The HTTP/2 client codec (`scheme: grpc`/`grpcs`): each worker keeps one multiplexed
//! connection per node, made on first use (streams that arrive meanwhile wait for that one
//! handshake), made again once it dies or the upstream sends GOAWAY, and closed after it has
//! carried no stream for the upstream's keep-alive idle timeout. Whichever protocol the client
//! speaks, a request goes out as one stream of such a connection ([`open`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, SendStream};
use http::header::{HeaderValue, CONTENT_LENGTH, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Uri, Version};
use tokio::sync::watch;

use super::connect;
use super::pool::PoolKey;
use crate::attempts::Failure;
use crate::error::GatewayError;
use crate::http1::{has_token, is_framing_header};
use crate::outbound::{
    append_header, forwards_header, plugin_may_set, upstream_host, write_forwarding_headers,
    RequestContext,
};
use crate::settings::Http2Settings;
use crate::snapshot::{NodeTarget, UpstreamTarget};
use crate::tls::UpstreamStream;
use crate::vars::RequestFields;

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

/// Where a stream goes, and the connections (one worker's) it may use.
#[derive(Clone, Copy)]
pub(crate) struct Dial<'a> {
    pub pool: &'a Rc<RefCell<H2Upstreams>>,
    pub settings: &'a Http2Settings,
    /// The largest response head accepted.
    pub max_head: usize,
    pub upstream: &'a UpstreamTarget,
    pub node: &'a NodeTarget,
    pub addr: SocketAddr,
    /// Bounds the connect and handshake, and the wait for a stream slot.
    pub timeout: Duration,
}

/// A request sent as a stream of the node's connection: the response to wait for and the
/// request body's sending half.
pub(crate) struct OpenStream<'a> {
    pub response: ResponseFuture,
    pub send: SendStream<Bytes>,
    pub connection: StreamConnection<'a>,
}

/// The connection a stream is on, which counts the stream in flight while this lives.
pub(crate) struct StreamConnection<'a> {
    pool: &'a RefCell<H2Upstreams>,
    key: PoolKey,
    id: u64,
    _in_flight: InFlight,
}

impl StreamConnection<'_> {
    /// Takes the connection out of the pool: it is dead or going away, and the next stream
    /// to this node gets a new one.
    pub fn retire(&self) {
        self.pool.borrow_mut().forget(self.key, self.id);
    }
}

/// Sends `request`'s head on the node's connection (made if there is none); `end` when it
/// has no body.
pub(crate) async fn open<'a>(
    dial: &Dial<'a>,
    request: Request<()>,
    end: bool,
) -> Result<OpenStream<'a>, Failure> {
    let key = (dial.addr, dial.node.pool_id);
    let pool = dial.pool;
    let (conn, reused) = checkout(dial, key).await?;
    let in_flight = InFlight::new(&conn.in_flight);
    let retire = || pool.borrow_mut().forget(key, conn.id);
    // Waits while the upstream's stream limit is reached.
    let mut sender = match tokio::time::timeout(dial.timeout, conn.sender.clone().ready()).await {
        Ok(Ok(sender)) => sender,
        Ok(Err(_)) => {
            retire();
            return Err(Failure::stale_connection(reused));
        }
        Err(_) => return Err(Failure::before_sending(GatewayError::GatewayTimeout)),
    };
    match sender.send_request(request, end) {
        Ok((response, send)) => Ok(OpenStream {
            response,
            send,
            connection: StreamConnection {
                pool,
                key,
                id: conn.id,
                _in_flight: in_flight,
            },
        }),
        Err(_) => {
            retire();
            Err(Failure::stale_connection(reused))
        }
    }
}

/// The connection for `key`: the live one, the one being made, or a new one.
async fn checkout(x: &Dial<'_>, key: PoolKey) -> Result<(Conn, bool), Failure> {
    let pool = x.pool;
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
                    connect_new(x, key).await
                }
            }
        }
        None => connect_new(x, key).await,
    }
}

async fn connect_new(x: &Dial<'_>, key: PoolKey) -> Result<(Conn, bool), Failure> {
    let pool = x.pool;
    let (publish, outcome) = watch::channel(None);
    let id = pool.borrow_mut().start(key, outcome);
    match handshake(x).await {
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
async fn handshake(x: &Dial<'_>) -> Result<(SendRequest<Bytes>, Driver), Failure> {
    let Dial {
        upstream,
        node,
        addr,
        timeout,
        ..
    } = *x;
    let deadline = Instant::now() + timeout;
    let up = connect(addr, upstream, node, timeout).await?;
    let handshake = x
        .settings
        .client(x.max_head)
        .handshake::<_, Bytes>(up.stream);
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, handshake).await {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(e)) => {
            tracing::warn!(upstream = %upstream.key, %addr, "HTTP/2 handshake failed: {e}");
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
pub(crate) fn upstream_request(
    head: &impl RequestFields,
    content_length: Option<u64>,
    context: &RequestContext<'_>,
    upstream: &UpstreamTarget,
    node: &NodeTarget,
) -> Result<Request<()>, Failure> {
    let bad_gateway = || Failure::before_sending(GatewayError::BadGateway);
    let edits = context.edits;
    let host = match &edits.host {
        Some(host) => host.as_bytes(),
        None => upstream_host(context.client_host, upstream, node),
    };
    let authority =
        Authority::try_from(host).map_err(|_| Failure::before_sending(GatewayError::BadGateway))?;
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(if upstream.tls.is_some() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    uri.authority = Some(authority);
    uri.path_and_query = Some(match &edits.uri {
        Some(target) => PathAndQuery::try_from(target.as_str()).map_err(|_| bad_gateway())?,
        None => PathAndQuery::try_from(head.target()).map_err(|_| bad_gateway())?,
    });
    let uri = Uri::from_parts(uri).map_err(|_| bad_gateway())?;
    let mut request = Request::new(());
    *request.method_mut() = match &edits.method {
        Some(method) => Method::from_bytes(method.as_bytes()).map_err(|_| bad_gateway())?,
        None => Method::from_bytes(head.method().as_bytes()).map_err(|_| bad_gateway())?,
    };
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_2;
    let headers = request.headers_mut();
    let connection = head.header("connection");
    for (name, value) in head.headers() {
        if name.eq_ignore_ascii_case("te") {
            // The one TE HTTP/2 allows, and gRPC requires.
            if has_token(value, "trailers") {
                headers.append(TE, HeaderValue::from_static("trailers"));
            }
        } else if forwards_header(name, value, connection)
            && !is_framing_header(name)
            && !edits.headers.replaces(name)
        {
            append_header(headers, name.as_bytes(), value);
        }
    }
    if let Some(length) = content_length {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
    }
    for (name, value) in edits.headers.added() {
        if plugin_may_set(name) {
            append_header(headers, name.as_bytes(), value.as_bytes());
        }
    }
    let mut lines = Vec::with_capacity(256);
    write_forwarding_headers(&mut lines, head, context);
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        append_header(headers, &line[..colon], line[colon + 1..].trim_ascii());
    }
    Ok(request)
}

/// What an upstream's failure before its response head says about retrying.
pub(crate) fn upstream_failure(e: &h2::Error) -> Failure {
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
