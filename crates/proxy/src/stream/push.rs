//! The push gateway's device connections: a stream route with `protocol: pylon-push` (see
//! `pylon_push`). A connection's first frame is `auth`, checked by the route's `key-auth` or
//! `jwt-auth` against the consumers; the device is then attached to the node's hub, which
//! fills its outbox, and the connection writes what the hub queues, answers pings and passes
//! acknowledgements back.
//!
//! An idle device costs its task, its [`Device`] and the socket: reads go through a buffer of
//! the worker's, taken only while the socket has bytes, and nothing is kept between frames
//! but the bytes of a frame not yet whole and the messages not yet acknowledged.

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use pylon_frames::{Frame, Layout};
use pylon_model::FieldError;
use pylon_plugin::{Chain, RequestCtx, RequestPhase};
use pylon_plugins::Redis;
use pylon_push::config::Commands;
use pylon_push::hub::{Close, Delivery, Device, Hub, Outgoing, Rates};
use pylon_push::store::DeviceKey;
use pylon_push::websocket::{self, Fragments, Message};
use pylon_push::wire::{self, Hello};
use pylon_push::PushConfig;
use pylon_router::RequestView;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::access_log::AccessRecord;
use crate::worker::{OpenConnection, Worker};

use super::table::ConnPermit;

/// Bytes a worker reads a device's socket into, shared by all its devices.
const SCRATCH: usize = 16 * 1024;
/// The most messages a connection remembers as sent and not acknowledged (to drop a
/// duplicate and to know an acknowledged broadcast's place); older ones are resent on the
/// next connection.
const MAX_IN_FLIGHT: usize = 1024;
/// What a WebSocket text message may hold besides a frame's body.
const JSON_OVERHEAD: usize = 1024;
/// How long a write to a device may take before the device is let go as not reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

thread_local! {
    static SCRATCH_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// A push gateway route, compiled.
pub(crate) struct PushGateway {
    hub: Arc<Hub>,
    layout: Layout,
    commands: Commands,
    /// The route's `key-auth`/`jwt-auth`: a device's token must pass it (none: any token).
    auth: Chain,
    first_frame_timeout: Duration,
    drain_spread: Duration,
}

impl PushGateway {
    /// The gateway of route `id` on node `node`: its `protocol.conf` as checked (with its
    /// Redis and that Redis's key prefix), and the route's authentication chain.
    pub(crate) fn new(
        (config, redis, prefix): (PushConfig, Arc<Redis>, String),
        auth: Chain,
        node: &str,
        id: &str,
    ) -> Result<PushGateway, FieldError> {
        let layout = (config.layout())
            .map_err(|errors| FieldError::first_within(errors, "protocol.conf"))?;
        let rates = Rates {
            delivery: config.delivery.clone(),
            apps: config.apps.clone(),
            heartbeat: config.heartbeat.clone(),
        };
        let hub = Hub::shared(id, redis, &format!("{prefix}:push"), node, rates);
        Ok(PushGateway {
            hub,
            layout,
            commands: config.commands,
            auth,
            first_frame_timeout: Duration::from_secs(config.first_frame_timeout),
            drain_spread: Duration::from_secs(config.drain_spread),
        })
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Tells this node's devices to reconnect elsewhere, spread over the route's
    /// `drain_spread`.
    pub(crate) fn drain(&self) {
        self.hub.drain(self.drain_spread);
    }
}

/// How a device's connection ended, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The device closed it.
    Closed,
    /// Its socket failed.
    Broken,
    /// No `auth` frame in time.
    NoAuth,
    /// Its token was refused.
    Refused,
    /// It sent what is not a frame of its protocol, or a frame it may not send.
    BadFrame,
    /// It missed its heartbeats.
    Idle,
    /// It did not read what it was sent.
    NotReading,
    /// Another connection of the same device replaced it.
    Replaced,
    /// It was told to reconnect (the node is stopping, or cannot reach Redis).
    Moved,
}

impl Ended {
    /// The access log's `failure` word; `None` for a connection the device closed.
    fn failure(self) -> Option<&'static str> {
        match self {
            Ended::Closed => None,
            Ended::Broken => Some("connection_broken"),
            Ended::NoAuth => Some("client_timeout"),
            Ended::Refused => Some("unauthorized"),
            Ended::BadFrame => Some("bad_frame"),
            Ended::Idle => Some("idle_timeout"),
            Ended::NotReading => Some("write_timeout"),
            Ended::Replaced => Some("replaced"),
            Ended::Moved => Some("reconnect"),
        }
    }
}

/// Serves a device connection to `gateway`, in a task of its own: the task that routed it
/// ends, so the device's task holds only what a device needs.
pub(crate) fn spawn<C>(
    worker: Rc<Worker>,
    io: C,
    gateway: Arc<PushGateway>,
    route_id: Arc<str>,
    client: SocketAddr,
    permit: Option<ConnPermit>,
) where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let open = worker.open_connection();
    let session = Session {
        worker,
        gateway,
        route_id,
        client,
        started: Instant::now(),
        _held: (permit, open),
    };
    tokio::task::spawn_local(serve(session, io));
}

/// What a device's task keeps besides its connection: for the log line and the counts at
/// its end, and its places under `limit-conn` and among the worker's connections.
struct Session {
    worker: Rc<Worker>,
    gateway: Arc<PushGateway>,
    route_id: Arc<str>,
    client: SocketAddr,
    started: Instant,
    _held: (Option<ConnPermit>, OpenConnection),
}

/// Bytes each way, for the log.
#[derive(Default)]
struct Moved {
    received: u64,
    sent: u64,
}

async fn serve<C>(session: Session, io: C)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let hub = &session.gateway.hub;
    // Only the connection lives on, holding the socket: what the hello said is dropped at
    // the end of this block, since every local kept across an await is part of each idle
    // device's task.
    let (mut connection, welcome, sequence) = {
        // Boxed: the handshake, the hello and the plugins' futures are needed once, not
        // while the device is idle.
        let opened = Box::pin(authenticate(io, &session.gateway, session.client)).await;
        let (link, hello) = match opened {
            Ok(opened) => opened,
            Err((ended, moved)) => return session.end(None, ended, moved),
        };
        let key = DeviceKey {
            app: hello.app_id.as_str().into(),
            device: hello.device_id.as_str().into(),
        };
        let interval = hub.interval_for(hello.network.as_deref());
        let connection = DeviceConnection {
            link,
            device: Arc::new(Device::new(key, hub.next_conn(), hello.tags)),
            in_flight: Vec::new(),
            sequence: 0,
            network: hello.network.map(String::into_boxed_str),
            interval,
        };
        (
            connection,
            wire::auth_ok(interval, hub.node()),
            hello.sequence,
        )
    };
    let auth_ok = session.gateway.commands.auth_ok;
    let answered = connection.link.write_frame(auth_ok, sequence, welcome);
    let ended = match answered.await {
        Ok(()) => {
            hub.attach(connection.device.clone());
            let ended = connection.run().await;
            hub.detach(connection.device.clone());
            ended
        }
        Err(ended) => ended,
    };
    let moved = std::mem::take(&mut connection.link.moved);
    let key = connection.device.key.clone();
    drop(connection);
    session.end(Some(&key), ended, moved);
}

impl Session {
    /// Counts the connection's end and logs it.
    fn end(self, device: Option<&DeviceKey>, ended: Ended, moved: Moved) {
        let reason = ended.failure().unwrap_or("closed");
        self.gateway.hub.counters().closed(reason);
        log(&self, device, ended, moved);
    }
}

/// A checked `auth` frame's body, and its sequence id.
struct Authenticated {
    sequence: u64,
    app_id: String,
    device_id: String,
    tags: Vec<String>,
    network: Option<String>,
}

/// Reads the connection's first frame (after a WebSocket handshake, if the device opens
/// with one), which must be an `auth` whose token the route's plugins accept: the device's
/// link and what it said, or how the connection ended.
async fn authenticate<C>(
    io: C,
    gateway: &PushGateway,
    client: SocketAddr,
) -> Result<(Link<'_, C>, Authenticated), (Ended, Moved)>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut link = Link {
        io,
        gateway,
        partial: BytesMut::new(),
        wire: Wire::Frames,
        moved: Moved::default(),
    };
    match hello(&mut link, client).await {
        Ok(hello) => Ok((link, hello)),
        Err(ended) => Err((ended, link.moved)),
    }
}

async fn hello<C>(link: &mut Link<'_, C>, client: SocketAddr) -> Result<Authenticated, Ended>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let gateway = link.gateway;
    let first = tokio::time::timeout(gateway.first_frame_timeout, async {
        link.open().await?;
        loop {
            match link.read().await {
                Ok(Some(Incoming::Frame(frame))) => return Ok(frame),
                Ok(Some(Incoming::Close)) => return Err(Ended::Closed),
                Ok(Some(Incoming::Ping(payload))) => link.pong(&payload).await?,
                Ok(None) => {}
                Err(failed) => return Err(link.failed(failed).await),
            }
        }
    })
    .await;
    let frame = match first {
        Ok(Ok(frame)) => frame,
        Ok(Err(ended)) => return Err(ended),
        Err(_) => return Err(link.refuse(0, "no auth frame in time", Ended::NoAuth).await),
    };
    let sequence = frame.sequence;
    if frame.command != gateway.commands.auth {
        let why = "the first frame must be auth";
        return Err(link.refuse(sequence, why, Ended::BadFrame).await);
    }
    let hello = match Hello::parse(&frame.body) {
        Ok(hello) => hello,
        Err(why) => return Err(link.refuse(sequence, &why, Ended::BadFrame).await),
    };
    let view = DeviceView {
        token: &hello.token,
        client: client.ip(),
    };
    let mut ctx = RequestCtx::new(&view, "", None);
    // The phases a request's authentication runs in (APISIX's plugins identify the
    // consumer in `rewrite`).
    for phase in [RequestPhase::Rewrite, RequestPhase::Access] {
        if gateway.auth.run(phase, &mut ctx, None).await.is_some() {
            return Err(link.refuse(sequence, "unauthorized", Ended::Refused).await);
        }
    }
    let Hello {
        device_id,
        app_id,
        tags,
        network,
        ..
    } = hello;
    Ok(Authenticated {
        sequence,
        app_id,
        device_id,
        tags,
        network,
    })
}

/// A device's `auth` frame as the authentication plugins see a request: the token is the
/// value of whichever header they read (`apikey`, `Authorization` ...).
struct DeviceView<'a> {
    token: &'a str,
    client: IpAddr,
}

impl RequestView for DeviceView<'_> {
    fn path(&self) -> &str {
        "/"
    }

    fn host(&self) -> Option<&str> {
        None
    }

    fn method(&self) -> &str {
        "POST"
    }

    fn remote_addr(&self) -> IpAddr {
        self.client
    }

    fn var(&self, name: &str) -> Option<Cow<'_, str>> {
        name.starts_with("http_")
            .then_some(Cow::Borrowed(self.token))
    }
}

/// How a device speaks on its connection.
enum Wire {
    /// Frames of the route's layout, back to back.
    Frames,
    /// WebSocket messages: text ones carry a frame's body as JSON with a `type` naming its
    /// command, binary ones one frame each. The device is answered in the kind it last
    /// sent.
    WebSocket { text: bool, fragments: Fragments },
}

/// What a device sent.
enum Incoming {
    Frame(Frame),
    /// A WebSocket ping, answered with its bytes.
    Ping(Bytes),
    /// A WebSocket close.
    Close,
}

/// A device's socket: reads through the worker's buffer, frames either way.
struct Link<'g, C> {
    io: C,
    gateway: &'g PushGateway,
    /// The bytes of a frame not yet whole; empty (with no capacity) between frames.
    partial: BytesMut,
    wire: Wire,
    moved: Moved,
}

impl<C> Link<'_, C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    /// Answers the WebSocket handshake, if the connection opens with one.
    async fn open(&mut self) -> Result<(), Ended> {
        loop {
            match websocket::is_handshake(&self.partial) {
                Some(false) => return Ok(()),
                Some(true) => break,
                None => self.fill().await?,
            }
        }
        let end = loop {
            if let Some(end) = websocket::handshake_end(&self.partial) {
                break end;
            }
            if self.partial.len() > websocket::MAX_HANDSHAKE {
                return Err(self.refuse_handshake("the handshake is too long").await);
            }
            self.fill().await?;
        };
        let head = self.partial.split_to(end);
        match websocket::accept(&head) {
            Ok(answer) => {
                self.wire = Wire::WebSocket {
                    text: false,
                    fragments: Fragments::default(),
                };
                self.write(&answer).await
            }
            Err(why) => Err(self.refuse_handshake(why).await),
        }
    }

    async fn refuse_handshake(&mut self, why: &str) -> Ended {
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}",
            why.len()
        );
        let _ = self.write(answer.as_bytes()).await;
        Ended::BadFrame
    }

    /// Reads what the socket has into the worker's scratch buffer, and keeps it in
    /// `partial`.
    async fn fill(&mut self) -> Result<(), Ended> {
        let (io, partial) = (&mut self.io, &mut self.partial);
        let n = poll_fn(|cx| {
            SCRATCH_BUFFER.with_borrow_mut(|scratch| {
                let mut buf = ReadBuf::new(scratch);
                ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
                partial.extend_from_slice(buf.filled());
                Poll::Ready(Ok::<_, io::Error>(buf.filled().len()))
            })
        })
        .await
        .map_err(|_| Ended::Broken)?;
        match n {
            0 => Err(Ended::Closed),
            n => {
                self.moved.received += n as u64;
                Ok(())
            }
        }
    }

    /// The next thing the device sent, reading the socket once if none is whole yet
    /// (`None`: still not whole). Writes nothing: this future is part of every idle
    /// device's task, so it stays small, and the caller answers a [`Failed::Bad`].
    async fn read(&mut self) -> Result<Option<Incoming>, Failed> {
        if let Some(incoming) = self.take()? {
            return Ok(Some(incoming));
        }
        self.fill().await.map_err(Failed::Ended)?;
        let incoming = self.take()?;
        if self.partial.is_empty() {
            // Give the allocation back: an idle device holds no buffer.
            self.partial = BytesMut::new();
        }
        Ok(incoming)
    }

    /// Takes the next whole thing the device sent off `partial`.
    fn take(&mut self) -> Result<Option<Incoming>, Failed> {
        let gateway = self.gateway;
        let layout = &gateway.layout;
        let taken = match &mut self.wire {
            Wire::Frames => match layout.decode(&mut self.partial) {
                Ok(frame) => Ok(frame.map(Incoming::Frame)),
                Err(e) => Err(e.name()),
            },
            Wire::WebSocket { text, fragments } => {
                let max = layout.frame_len(layout.max_body() as usize) + JSON_OVERHEAD;
                match websocket::decode(&mut self.partial, fragments, max) {
                    Ok(None) => Ok(None),
                    Ok(Some(Message::Text(json))) => {
                        *text = true;
                        frame_of_json(&json, &gateway.commands).map(|f| Some(Incoming::Frame(f)))
                    }
                    Ok(Some(Message::Binary(bytes))) => {
                        *text = false;
                        let mut bytes = BytesMut::from(&bytes[..]);
                        match layout.decode(&mut bytes) {
                            Ok(Some(frame)) if bytes.is_empty() => Ok(Some(Incoming::Frame(frame))),
                            Ok(_) => Err("a binary message must be one whole frame"),
                            Err(e) => Err(e.name()),
                        }
                    }
                    Ok(Some(Message::Ping(payload))) => Ok(Some(Incoming::Ping(payload))),
                    Ok(Some(Message::Pong)) => Ok(None),
                    Ok(Some(Message::Close)) => Ok(Some(Incoming::Close)),
                    Err(e) => Err(e.name()),
                }
            }
        };
        taken.map_err(Failed::Bad)
    }

    /// Answers a failed read: an `error` frame for what is not the protocol's.
    async fn failed(&mut self, failed: Failed) -> Ended {
        match failed {
            Failed::Ended(ended) => ended,
            Failed::Bad(why) => self.refuse(0, why, Ended::BadFrame).await,
        }
    }

    /// Appends a frame to `out` as the device's wire carries it.
    fn encode(&self, command: u64, sequence: u64, body: &[u8], out: &mut BytesMut) {
        let layout = &self.gateway.layout;
        let frame = |out: &mut BytesMut| {
            let frame = Frame {
                command,
                sequence,
                fields: Default::default(),
                body: Bytes::copy_from_slice(body),
            };
            // The gateway's own bodies fit every layout's body length field; a sequence
            // wraps within its field.
            let _ = layout.encode(&frame, out);
        };
        match &self.wire {
            Wire::Frames => frame(out),
            Wire::WebSocket { text: false, .. } => {
                let mut one = BytesMut::new();
                frame(&mut one);
                websocket::encode_binary(&one, out);
            }
            Wire::WebSocket { text: true, .. } => {
                let name = self.gateway.commands.name_to_device(command);
                websocket::encode_text(&json_of_frame(name, body), out);
            }
        }
    }

    async fn write_frame(&mut self, command: u64, sequence: u64, body: Bytes) -> Result<(), Ended> {
        let mut bytes = BytesMut::new();
        self.encode(command, sequence, &body, &mut bytes);
        self.write(&bytes).await
    }

    async fn pong(&mut self, payload: &[u8]) -> Result<(), Ended> {
        let mut bytes = BytesMut::new();
        websocket::encode_pong(payload, &mut bytes);
        self.write(&bytes).await
    }

    /// Writes `bytes`: at once when the socket takes them all, as it does for a device
    /// that reads; else through a boxed future that waits (up to [`WRITE_TIMEOUT`]), so that
    /// waiting costs the idle devices' tasks nothing.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), Ended> {
        if bytes.is_empty() {
            return Ok(());
        }
        let io = &mut self.io;
        let written = poll_fn(|cx| {
            let mut written = 0;
            while written < bytes.len() {
                match Pin::new(&mut *io).poll_write(cx, &bytes[written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Pending => break,
                }
            }
            let flushed = written == bytes.len()
                && matches!(Pin::new(&mut *io).poll_flush(cx), Poll::Ready(Ok(())));
            Poll::Ready(Ok((written, flushed)))
        })
        .await;
        let (written, flushed) = written.map_err(|()| Ended::Broken)?;
        if !flushed {
            Box::pin(write_slowly(io, &bytes[written..])).await?;
        }
        self.moved.sent += bytes.len() as u64;
        Ok(())
    }

    /// Sends a last frame (`error`, `reconnect`), best effort, and closes; answers `ended`.
    async fn close_with(
        &mut self,
        command: u64,
        sequence: u64,
        body: Bytes,
        ended: Ended,
    ) -> Ended {
        let mut bytes = BytesMut::new();
        self.encode(command, sequence, &body, &mut bytes);
        if let Wire::WebSocket { .. } = self.wire {
            websocket::encode_close(&mut bytes);
        }
        let _ = self.write(&bytes).await;
        let _ = self.io.shutdown().await;
        ended
    }

    /// Sends an `error` frame saying `why` and closes; answers `ended`.
    async fn refuse(&mut self, sequence: u64, why: &str, ended: Ended) -> Ended {
        let error = self.gateway.commands.error;
        self.close_with(error, sequence, wire::error(why), ended)
            .await
    }
}

/// The rest of a write the socket did not take at once, and the flush, waiting for a device
/// that reads slowly, up to [`WRITE_TIMEOUT`].
async fn write_slowly<C: AsyncWrite + Unpin>(io: &mut C, rest: &[u8]) -> Result<(), Ended> {
    let write = async {
        io.write_all(rest).await?;
        io.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ended::Broken),
        Err(_) => Err(Ended::NotReading),
    }
}

/// Why a read gave nothing to serve.
enum Failed {
    /// The connection ended (closed, broken).
    Ended(Ended),
    /// The device sent what is not its protocol: this says what, for its `error` frame.
    Bad(&'static str),
}

/// A WebSocket text message as a frame: its `type` names the command, `seq` (if any) is the
/// sequence id, and the rest is the body.
fn frame_of_json(json: &[u8], commands: &Commands) -> Result<Frame, &'static str> {
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice(json) else {
        return Err("a text message must be a JSON object");
    };
    let command = match fields.remove("type") {
        Some(serde_json::Value::String(name)) => commands.from_device(&name),
        _ => None,
    };
    let Some(command) = command else {
        return Err("a text message's `type` must be auth, ping or ack");
    };
    let sequence = fields.remove("seq").and_then(|s| s.as_u64()).unwrap_or(0);
    let body = serde_json::to_vec(&fields).map_err(|_| "a text message must be a JSON object")?;
    Ok(Frame {
        command,
        sequence,
        fields: Default::default(),
        body: Bytes::from(body),
    })
}

/// A frame's JSON body as a WebSocket text message: the body with `type` first.
fn json_of_frame(name: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{{\"type\":\"{name}\"").into_bytes();
    // The gateway's bodies are JSON objects, or empty.
    match body.strip_prefix(b"{").map(|rest| rest.trim_ascii_start()) {
        Some(b"}") | None => out.push(b'}'),
        Some(rest) => {
            out.push(b',');
            out.extend_from_slice(rest);
        }
    }
    out
}

/// An attached device's connection.
struct DeviceConnection<'g, C> {
    link: Link<'g, C>,
    device: Arc<Device>,
    /// Messages sent and not yet acknowledged, oldest first.
    in_flight: Vec<Arc<Delivery>>,
    sequence: u64,
    network: Option<Box<str>>,
    /// The ping interval the device keeps, in seconds.
    interval: u64,
}

impl<C> DeviceConnection<'_, C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    /// Serves the device until its connection ends. An idle device's task holds this
    /// future, waiting: so what it does when woken (a frame to answer, messages to write)
    /// is boxed, made when needed, and a device silent too long is closed by the hub, which
    /// watches every device's deadline, rather than by a timer in each task.
    async fn run(&mut self) -> Ended {
        self.stay_until_silent();
        loop {
            let woke = tokio::select! {
                read = self.link.read() => Woke::Read(read),
                () = self.device.ready() => Woke::Outbox,
            };
            let step = match woke {
                Woke::Read(Ok(Some(incoming))) => {
                    self.stay_until_silent();
                    Box::pin(self.on_incoming(incoming)).await
                }
                Woke::Read(Ok(None)) => Ok(()),
                Woke::Read(Err(failed)) => Err(Box::pin(self.link.failed(failed)).await),
                Woke::Outbox => Box::pin(self.on_outbox()).await,
            };
            if let Err(ended) = step {
                return ended;
            }
        }
    }

    /// Moves the device's deadline: it may now stay silent for its missed heartbeats.
    fn stay_until_silent(&self) {
        let allowed = self.link.gateway.hub.silence_allowed(self.interval);
        self.device.silent_until(Instant::now() + allowed);
    }

    async fn on_incoming(&mut self, incoming: Incoming) -> Result<(), Ended> {
        let commands = self.link.gateway.commands;
        let frame = match incoming {
            Incoming::Frame(frame) => frame,
            Incoming::Ping(payload) => return self.link.pong(&payload).await,
            Incoming::Close => {
                let mut bytes = BytesMut::new();
                websocket::encode_close(&mut bytes);
                let _ = self.link.write(&bytes).await;
                return Err(Ended::Closed);
            }
        };
        if frame.command == commands.ping {
            let hub = &self.link.gateway.hub;
            let now = hub.interval_for(self.network.as_deref());
            let body = if now == self.interval {
                Bytes::new()
            } else {
                self.interval = now;
                wire::heartbeat(now)
            };
            self.link
                .write_frame(commands.pong, frame.sequence, body)
                .await
        } else if frame.command == commands.ack {
            let id = match wire::ack_id(&frame.body) {
                Ok(id) => id,
                Err(why) => {
                    return Err(self
                        .link
                        .refuse(frame.sequence, &why, Ended::BadFrame)
                        .await)
                }
            };
            let sent = self.in_flight.iter().position(|d| *d.id == *id);
            let broadcast = sent.and_then(|at| self.in_flight.remove(at).broadcast);
            let hub = &self.link.gateway.hub;
            hub.acknowledge(self.device.clone(), id.into_boxed_str(), broadcast);
            Ok(())
        } else {
            let why = "a frame a device may not send";
            Err(self.link.refuse(frame.sequence, why, Ended::BadFrame).await)
        }
    }

    /// Writes what the hub queued for the device.
    async fn on_outbox(&mut self) -> Result<(), Ended> {
        let commands = self.link.gateway.commands;
        let max_sequence = self.link.gateway.layout.max_sequence().max(1);
        let mut bytes = BytesMut::new();
        for out in self.device.take() {
            match out {
                Outgoing::Push(delivery) => {
                    if self.in_flight.iter().any(|d| d.id == delivery.id) {
                        continue;
                    }
                    self.sequence = (self.sequence + 1) % max_sequence;
                    self.link
                        .encode(commands.push, self.sequence, &delivery.body, &mut bytes);
                    if self.in_flight.len() == MAX_IN_FLIGHT {
                        self.in_flight.remove(0);
                    }
                    self.in_flight.push(delivery);
                }
                Outgoing::Reconnect(after_ms) => {
                    self.link.write(&bytes).await?;
                    let body = wire::reconnect(after_ms);
                    let ended = self
                        .link
                        .close_with(commands.reconnect, 0, body, Ended::Moved);
                    return Err(ended.await);
                }
                Outgoing::Close(why) => {
                    self.link.write(&bytes).await?;
                    let ended = match why {
                        Close::Replaced => Ended::Replaced,
                        Close::Silent => Ended::Idle,
                    };
                    let body = wire::error(why.text());
                    let ended = self.link.close_with(commands.error, 0, body, ended);
                    return Err(ended.await);
                }
            }
        }
        self.link.write(&bytes).await
    }
}

enum Woke {
    Read(Result<Option<Incoming>, Failed>),
    Outbox,
}

/// The connection's access log line and its stream metrics.
fn log(session: &Session, device: Option<&DeviceKey>, ended: Ended, moved: Moved) {
    let worker = &session.worker;
    let lasted = session.started.elapsed();
    let status = match ended {
        Ended::Refused => 401,
        Ended::BadFrame | Ended::NoAuth if device.is_none() => 400,
        _ => 200,
    };
    worker
        .metrics
        .stream_session(status, [moved.received, moved.sent], lasted);
    if !worker.access_log.is_enabled() {
        return;
    }
    worker.access_log.record(AccessRecord {
        time: SystemTime::now(),
        client: session.client.ip(),
        method: "PUSH".to_owned(),
        uri: device.map_or_else(String::new, |d| format!("/{}/{}", d.app, d.device)),
        host: String::new(),
        status,
        bytes_sent: moved.sent,
        request_length: moved.received,
        route_id: Some(session.route_id.clone()),
        upstream: None,
        upstream_latency: None,
        latency: lasted,
        user_agent: String::new(),
        failure: ended.failure(),
    });
}
