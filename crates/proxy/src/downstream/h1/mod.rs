//! The HTTP/1 server codec. One client connection: read a request head, answer it, repeat
//! while keep-alive allows.

mod client;
mod forward;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use pylon_plugin::{FramesBridge, Reply, RequestBodyInspectors};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::error::GatewayError;
use crate::http1::{
    request_framing, BodyFraming, ChunkedScanner, HeadError, RequestHead, ResponseHead,
};
use crate::outcome::{Cause, End, Outcome, Side};
use crate::pipeline::{self, Exchange, Logged, PluginWork};
use crate::relay::{read_more, write_all, RelayError};
use crate::stream::{websocket, Arrival, Transport};
use crate::tls::{ClientStream, MaybeTls};
use crate::vars::{normalize_host, RequestFields, RequestVars};
use crate::worker::Worker;
use client::{
    respond_error, send_reply, send_streamed, wants_keep_alive, ClientConnection, ClientIo,
    ClientRequest,
};
use forward::{expects_continue, websocket_upgrade, CONTINUE};

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
    let mut conn = ClientConnection {
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
fn client_may_still_send(conn: &ClientConnection) -> bool {
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

async fn read_head(worker: &Worker, conn: &mut ClientConnection, first: bool) -> HeadRead {
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
async fn handle(worker: &Rc<Worker>, conn: &mut ClientConnection) -> bool {
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
    // As over HTTP/2, CONNECT is refused: a 2xx would make the connection a tunnel (RFC 9112
    // §6.3), which the gateway does not proxy.
    let tunnel = head.method() == "CONNECT";
    // Without a known body length (or with a tunnel's bytes to follow) nothing after this
    // head can be trusted: the request is refused and the connection closed.
    let (framing, refused) = match request_framing(head) {
        Ok(framing) if host_ok && !tunnel => (framing, None),
        Err(error) if host_ok => (BodyFraming::None, Some(GatewayError::from(error))),
        _ => (BodyFraming::None, Some(GatewayError::BadRequest)),
    };
    let mut http1 = Http1 {
        worker,
        io: &mut conn.io,
        framing,
        body_intact: refused.is_none(),
    };
    let vars = conn.request.vars();
    pipeline::run(worker, &mut http1, &vars, refused)
        .await
        .keep_alive
}

/// A head the codec refused. It is still answered and logged, with the route it would have
/// matched if the request line could be read.
async fn reject_unparsed(worker: &Worker, conn: &mut ClientConnection, error: GatewayError) {
    let line_end = memchr::memchr(b'\n', &conn.io.buf).unwrap_or(conn.io.buf.len());
    let line = String::from_utf8_lossy(&conn.io.buf[..line_end.min(1024)]).into_owned();
    let mut parts = line.trim_end().splitn(3, ' ');
    let head = RequestLine {
        method: parts.next().unwrap_or(""),
        target: parts.next().unwrap_or(""),
        length: conn.io.buf.len() as u64,
    };
    let vars = RequestVars {
        head: &head,
        host: None,
        client: conn.request.client,
        local: conn.request.local,
        tls: None,
    };
    let started = Instant::now();
    let view = worker.view();
    let route = view.snapshot.router.find(&vars);
    let outcome = respond_error(worker, &mut conn.io, error, false).await;
    let request = Logged {
        route,
        plugin_ctx: None,
        refused: Some(error),
        counted: None,
        started,
    };
    pipeline::log(worker, &vars, &request, &outcome);
}

/// The HTTP/1 codec's side of the current request: the connection's I/O and the request
/// body's framing.
struct Http1<'c> {
    worker: &'c Rc<Worker>,
    io: &'c mut ClientIo,
    framing: BodyFraming,
    /// The body is still where the request left it: not once forwarding started, nor when
    /// the head was refused (the connection then closes after the answer).
    body_intact: bool,
}

impl Http1<'_> {
    /// Whether the connection can carry another request after an answer made here: the
    /// client must want it, and the request body (never read) must be whole in the buffer
    /// to be skipped.
    fn keeps_alive(&mut self, head: &RequestHead) -> bool {
        self.body_intact
            && skip_buffered_body(&mut self.io.buf, self.framing)
            && wants_keep_alive(head)
    }
}

impl pipeline::Downstream for Http1<'_> {
    type Head = RequestHead;

    async fn reply(&mut self, vars: &RequestVars<'_>, reply: &Reply, end: End) -> Outcome {
        let keep_alive = self.keeps_alive(vars.head);
        let head_only = vars.head.method() == "HEAD";
        send_reply(self.worker, self.io, (reply, end), head_only, keep_alive).await
    }

    async fn error(&mut self, vars: &RequestVars<'_>, error: GatewayError) -> Outcome {
        let keep_alive = self.keeps_alive(vars.head);
        respond_error(self.worker, self.io, error, keep_alive).await
    }

    async fn read_body(
        &mut self,
        vars: &RequestVars<'_>,
        limit: usize,
    ) -> Result<Option<Bytes>, GatewayError> {
        self.take_body(vars.head, limit).await
    }

    async fn stream(
        &mut self,
        vars: &RequestVars<'_>,
        head: &Reply,
        next: impl AsyncFnMut() -> Option<Result<Bytes, ()>>,
    ) -> Outcome {
        let keep_alive = self.keeps_alive(vars.head) && !self.worker.is_stopping();
        let http10 = vars.head.minor_version() == 0;
        send_streamed(
            self.worker,
            self.io,
            head,
            (keep_alive && !http10, http10),
            next,
        )
        .await
    }

    /// A WebSocket handshake (RFC 6455 §4.2) is answered here, and the connection then
    /// carries the bridge's messages until it closes; any other request gets a 426.
    async fn bridge(
        &mut self,
        vars: &RequestVars<'_>,
        bridge: FramesBridge,
        work: PluginWork<'_>,
    ) -> Outcome {
        let head = vars.head;
        let key = head.header("sec-websocket-key");
        let version_13 = head.header("sec-websocket-version") == Some(b"13");
        let (Some(key), true, Some(_)) = (key, version_13, websocket_upgrade(head)) else {
            return pipeline::upgrade_required(self, vars, work).await;
        };
        let stream_route = &bridge.stream_route_id;
        let view = self.worker.view();
        let Some(route) = view.snapshot.stream.frames_route(stream_route) else {
            // Refused when written through the Admin API; a declarative file can still say so.
            tracing::warn!(
                route = work.ctx.route_id(),
                %stream_route,
                "websocket-frames names a stream route that does not speak frames"
            );
            return self.error(vars, GatewayError::BadGateway).await;
        };
        // The connection is the WebSocket's from here: nothing after this request is HTTP.
        self.body_intact = false;
        let io = &mut *self.io;
        io.out.clear();
        io.out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        );
        io.out.extend_from_slice(derive_accept_key(key).as_bytes());
        io.out.extend_from_slice(b"\r\n\r\n");
        let sent = io.out.len() as u64;
        if write_all(&mut io.stream, &io.out, self.worker.limits.send_timeout)
            .await
            .is_err()
        {
            return Outcome::failed(101, 0, Side::Client, Cause::Reset);
        }
        let arrival = Arrival {
            client: vars.client,
            local: vars.local,
            sni: None,
            transport: Transport::Tcp,
        };
        let connection = (&mut io.stream, io.buf.split());
        websocket::serve(self.worker, route, connection, bridge.mode, &arrival).await;
        Outcome::complete(101, sent, false)
    }

    async fn forward(&mut self, vars: &RequestVars<'_>, exchange: Exchange<'_>) -> Outcome {
        let work = exchange.work;
        let mut inspectors = work.plugins.request_body(work.ctx);
        if !inspectors.is_empty() {
            match self.hold_body(vars.head, &mut inspectors).await {
                Ok(None) => {}
                Ok(Some(refusal)) => {
                    let reply = work.plugins.reply(work.ctx, refusal);
                    return self.reply(vars, &reply, End::Complete).await;
                }
                Err(error) => return exchange.give_up(self, vars, error).await,
            }
        }
        let taps = work.plugins.request_taps(work.ctx);
        self.body_intact = false;
        forward::proxy(self, vars, exchange, taps).await
    }
}

impl Http1<'_> {
    /// Reads the whole body out of the connection, when it is at most `limit` bytes; a longer
    /// one is left where it is (the connection then closes after the answer).
    async fn take_body(
        &mut self,
        head: &RequestHead,
        limit: usize,
    ) -> Result<Option<Bytes>, GatewayError> {
        let timeout = self.worker.limits.body_timeout;
        let io = &mut *self.io;
        let length = match self.framing {
            BodyFraming::None | BodyFraming::UntilClose => return Ok(Some(Bytes::new())),
            BodyFraming::Length(n) if n > limit as u64 => return Ok(None),
            BodyFraming::Length(n) => Some(n as usize),
            BodyFraming::Chunked => None,
        };
        if expects_continue(head) && head.minor_version() == 1 {
            let sent = write_all(&mut io.stream, CONTINUE, self.worker.limits.send_timeout);
            sent.await.map_err(|_| GatewayError::BadRequest)?;
        }
        let body = match length {
            Some(n) => {
                while io.buf.len() < n {
                    body_arrived(read_more(&mut io.stream, &mut io.buf, timeout).await)?;
                }
                io.buf.split_to(n).freeze()
            }
            None => {
                let mut scanner = ChunkedScanner::default();
                let mut body = Vec::new();
                loop {
                    let used = scanner
                        .scan(&io.buf, |data| body.extend_from_slice(data))
                        .map_err(|_| GatewayError::BadRequest)?;
                    io.buf.advance(used);
                    if body.len() > limit {
                        // What was read of it is gone: the connection cannot go on.
                        self.body_intact = false;
                        return Ok(None);
                    }
                    if scanner.is_done() {
                        break Bytes::from(body);
                    }
                    body_arrived(read_more(&mut io.stream, &mut io.buf, timeout).await)?;
                }
            }
        };
        // Read whole: the next request follows in the buffer.
        self.framing = BodyFraming::None;
        Ok(Some(body))
    }

    /// Reads the start of the body into the read buffer, up to what `inspectors` look at, and
    /// shows it to them; `Some(refusal)` when one refuses the request. The held bytes stay in
    /// the buffer, where forwarding takes them from as from any body that arrived early.
    async fn hold_body(
        &mut self,
        head: &RequestHead,
        inspectors: &mut RequestBodyInspectors,
    ) -> Result<Option<Reply>, GatewayError> {
        let limit = inspectors.limit();
        let timeout = self.worker.limits.body_timeout;
        let io = &mut *self.io;
        let wanted = match self.framing {
            BodyFraming::Length(n) => usize::try_from(n).unwrap_or(usize::MAX).min(limit),
            BodyFraming::Chunked => limit,
            BodyFraming::None | BodyFraming::UntilClose => return Ok(None),
        };
        // A client that waits for a go-ahead sends nothing before it: it gets it now. (The
        // exchange may give another for the rest of a longer body: clients take several.)
        if expects_continue(head) && head.minor_version() == 1 && io.buf.len() < wanted {
            let sent = write_all(&mut io.stream, CONTINUE, self.worker.limits.send_timeout);
            sent.await.map_err(|_| GatewayError::BadRequest)?;
        }
        // Each read is shown to the inspectors as it arrives; what they look at stays in the
        // buffer, for forwarding.
        match self.framing {
            BodyFraming::Length(n) => {
                let mut inspected = 0;
                loop {
                    let arrived_now = io.buf.len().min(wanted);
                    if arrived_now > inspected {
                        let piece = &io.buf[inspected..arrived_now];
                        if let Some(refusal) = inspectors.inspect(inspected, piece) {
                            return Ok(Some(refusal));
                        }
                        inspected = arrived_now;
                    }
                    if inspected == wanted {
                        return Ok(inspectors.finish(wanted, n == wanted as u64));
                    }
                    body_arrived(read_more(&mut io.stream, &mut io.buf, timeout).await)?;
                }
            }
            _ => {
                let mut scanner = ChunkedScanner::default();
                let (mut piece, mut held, mut scanned) = (Vec::new(), 0, 0);
                loop {
                    piece.clear();
                    let used = scanner
                        .scan(&io.buf[scanned..], |data| piece.extend_from_slice(data))
                        .map_err(|_| GatewayError::BadRequest)?;
                    scanned += used;
                    if let Some(refusal) = inspectors.inspect(held, &piece) {
                        return Ok(Some(refusal));
                    }
                    held += piece.len();
                    if scanner.is_done() || held >= limit {
                        return Ok(inspectors.finish(held, scanner.is_done()));
                    }
                    body_arrived(read_more(&mut io.stream, &mut io.buf, timeout).await)?;
                }
            }
        }
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

/// What the log can tell of a request whose head could not be parsed: its request line.
struct RequestLine<'a> {
    method: &'a str,
    target: &'a str,
    /// The bytes received of the head.
    length: u64,
}

impl RequestFields for RequestLine<'_> {
    fn method(&self) -> &str {
        self.method
    }
    fn target(&self) -> &str {
        self.target
    }
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
    }
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        std::iter::empty()
    }
    fn protocol(&self) -> &'static str {
        "HTTP/1.1"
    }
    fn head_length(&self) -> u64 {
        self.length
    }
}

/// What a read of a request body came to: more bytes, or the error the client gets (a body
/// cut short is a bad request, one that stopped coming a timeout).
fn body_arrived(read: Result<usize, RelayError>) -> Result<(), GatewayError> {
    match read {
        Ok(0) => Err(GatewayError::BadRequest),
        Ok(_) => Ok(()),
        Err(RelayError::Source(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            Err(GatewayError::RequestTimeout)
        }
        Err(_) => Err(GatewayError::BadRequest),
    }
}
