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
use pylon_push::hub::{Delivery, Device, Hub, Outgoing, Rates};
use pylon_push::store::DeviceKey;
use pylon_push::wire::{self, Hello};
use pylon_push::PushConfig;
use pylon_router::RequestView;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::access_log::AccessRecord;
use crate::worker::Worker;

use super::table::ConnPermit;

/// Bytes a worker reads a device's socket into, shared by all its devices.
const SCRATCH: usize = 16 * 1024;
/// The most messages a connection remembers as sent and not acknowledged (to drop a
/// duplicate and to know an acknowledged broadcast's place); older ones are resent on the
/// next connection.
const MAX_IN_FLIGHT: usize = 1024;
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
    /// Compiles `conf` for route `id` on node `node`, with the route's authentication chain.
    pub(crate) fn new(
        conf: &serde_json::Value,
        auth: Chain,
        node: &str,
        id: &str,
        checked: impl FnOnce(
            &serde_json::Value,
        ) -> Result<(PushConfig, Arc<Redis>, String), Vec<FieldError>>,
    ) -> Result<PushGateway, FieldError> {
        let first_error = |errors: Vec<FieldError>| {
            errors
                .into_iter()
                .next()
                .unwrap_or_else(|| FieldError::new("", "invalid"))
                .within("protocol.conf")
        };
        let (config, redis, prefix) = checked(conf).map_err(first_error)?;
        let layout = config.layout().map_err(first_error)?;
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
    tokio::task::spawn_local(async move {
        let _open = open;
        let started = Instant::now();
        let (ended, device, moved) = serve(io, &gateway, client).await;
        drop(permit);
        log(
            &worker,
            client,
            started,
            &route_id,
            device.as_ref(),
            ended,
            moved,
        );
    });
}

/// Bytes each way, for the log.
#[derive(Default)]
struct Moved {
    received: u64,
    sent: u64,
}

async fn serve<C>(
    mut io: C,
    gateway: &PushGateway,
    client: SocketAddr,
) -> (Ended, Option<DeviceKey>, Moved)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut moved = Moved::default();
    // Boxed: the hello's buffer and the plugins' futures are needed once, not while idle.
    let hello = Box::pin(authenticate(&mut io, gateway, client, &mut moved)).await;
    let (hello, partial) = match hello {
        Ok(hello) => hello,
        Err(ended) => return (ended, None, moved),
    };
    let hub = gateway.hub.clone();
    let key = DeviceKey {
        app: hello.app_id.as_str().into(),
        device: hello.device_id.as_str().into(),
    };
    let device = Arc::new(Device::new(key.clone(), hub.next_conn(), hello.tags));
    let interval = hub.heartbeat().interval_for(hello.network.as_deref());
    let mut connection = DeviceConnection {
        io,
        gateway,
        device: device.clone(),
        partial,
        in_flight: Vec::new(),
        sequence: 0,
        network: hello.network.map(String::into_boxed_str),
        interval,
        moved,
    };
    let welcome = wire::auth_ok(interval, hub.node());
    let answered = connection
        .write_frame(gateway.commands.auth_ok, hello.sequence, welcome)
        .await;
    let ended = match answered {
        Ok(()) => {
            hub.attach(device.clone());
            let ended = connection.run().await;
            hub.detach(device);
            ended
        }
        Err(ended) => ended,
    };
    (ended, Some(key), connection.moved)
}

/// A checked `auth` frame's body, and its sequence id.
struct Authenticated {
    sequence: u64,
    app_id: String,
    device_id: String,
    tags: Vec<String>,
    network: Option<String>,
}

/// Reads the connection's first frame, which must be an `auth` whose token the route's
/// plugins accept; answers it and the bytes read past it, or how the connection ends.
async fn authenticate<C>(
    io: &mut C,
    gateway: &PushGateway,
    client: SocketAddr,
    moved: &mut Moved,
) -> Result<(Authenticated, BytesMut), Ended>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut partial = BytesMut::new();
    let first = tokio::time::timeout(gateway.first_frame_timeout, async {
        loop {
            match read_frames(io, &mut partial, &gateway.layout, 1).await {
                Ok(Some((mut frames, n))) => {
                    moved.received += n as u64;
                    if let Some(frame) = frames.pop() {
                        return Ok(frame);
                    }
                }
                Ok(None) => return Err(Ended::Closed),
                Err(ReadError::Io) => return Err(Ended::Broken),
                Err(ReadError::Frame(why)) => {
                    return Err(refuse(io, gateway, 0, why, Ended::BadFrame).await)
                }
            }
        }
    })
    .await;
    let frame = match first {
        Ok(Ok(frame)) => frame,
        Ok(Err(ended)) => return Err(ended),
        Err(_) => return Err(refuse(io, gateway, 0, "no auth frame in time", Ended::NoAuth).await),
    };
    let sequence = frame.sequence;
    if frame.command != gateway.commands.auth {
        return Err(refuse(
            io,
            gateway,
            sequence,
            "the first frame must be auth",
            Ended::BadFrame,
        )
        .await);
    }
    let hello = match Hello::parse(&frame.body) {
        Ok(hello) => hello,
        Err(why) => return Err(refuse(io, gateway, sequence, &why, Ended::BadFrame).await),
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
            return Err(refuse(io, gateway, sequence, "unauthorized", Ended::Refused).await);
        }
    }
    let Hello {
        device_id,
        app_id,
        tags,
        network,
        ..
    } = hello;
    Ok((
        Authenticated {
            sequence,
            app_id,
            device_id,
            tags,
            network,
        },
        partial,
    ))
}

/// Sends an `error` frame saying `why`, best effort, and answers how the connection ended.
async fn refuse<C>(
    io: &mut C,
    gateway: &PushGateway,
    sequence: u64,
    why: &str,
    ended: Ended,
) -> Ended
where
    C: AsyncWrite + Unpin,
{
    let mut bytes = BytesMut::new();
    if encode(
        &gateway.layout,
        gateway.commands.error,
        sequence,
        wire::error(why),
        &mut bytes,
    )
    .is_ok()
    {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, io.write_all(&bytes)).await;
    }
    let _ = io.shutdown().await;
    ended
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

/// An attached device's connection.
struct DeviceConnection<'g, C> {
    io: C,
    gateway: &'g PushGateway,
    device: Arc<Device>,
    /// The bytes of a frame not yet whole; empty (with no capacity) between frames.
    partial: BytesMut,
    /// Messages sent and not yet acknowledged, oldest first.
    in_flight: Vec<Arc<Delivery>>,
    sequence: u64,
    network: Option<Box<str>>,
    /// The ping interval the device keeps, in seconds.
    interval: u64,
    moved: Moved,
}

impl<C> DeviceConnection<'_, C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self) -> Ended {
        let hub = self.gateway.hub.clone();
        let silence = |interval| hub.heartbeat().silence_allowed(interval);
        let idle = tokio::time::sleep(silence(self.interval));
        tokio::pin!(idle);
        loop {
            let woke = tokio::select! {
                read = read_frames(&mut self.io, &mut self.partial, &self.gateway.layout, usize::MAX) => Woke::Read(read),
                () = self.device.ready() => Woke::Outbox,
                () = &mut idle => Woke::Idle,
            };
            let step = match woke {
                Woke::Read(Ok(Some((frames, n)))) => {
                    self.moved.received += n as u64;
                    idle.as_mut()
                        .reset(tokio::time::Instant::now() + silence(self.interval));
                    self.on_frames(frames).await
                }
                Woke::Read(Ok(None)) => Err(Ended::Closed),
                Woke::Read(Err(ReadError::Io)) => Err(Ended::Broken),
                Woke::Read(Err(ReadError::Frame(why))) => {
                    Err(refuse(&mut self.io, self.gateway, 0, why, Ended::BadFrame).await)
                }
                Woke::Outbox => self.on_outbox().await,
                Woke::Idle => Err(Ended::Idle),
            };
            if let Err(ended) = step {
                return ended;
            }
        }
    }

    async fn on_frames(&mut self, frames: Vec<Frame>) -> Result<(), Ended> {
        let commands = self.gateway.commands;
        for frame in frames {
            if frame.command == commands.ping {
                let now = self
                    .gateway
                    .hub
                    .heartbeat()
                    .interval_for(self.network.as_deref());
                let body = if now == self.interval {
                    Bytes::new()
                } else {
                    self.interval = now;
                    wire::heartbeat(now)
                };
                self.write_frame(commands.pong, frame.sequence, body)
                    .await?;
            } else if frame.command == commands.ack {
                let id = match wire::ack_id(&frame.body) {
                    Ok(id) => id,
                    Err(why) => {
                        return Err(refuse(
                            &mut self.io,
                            self.gateway,
                            frame.sequence,
                            &why,
                            Ended::BadFrame,
                        )
                        .await)
                    }
                };
                let sent = self.in_flight.iter().position(|d| *d.id == *id);
                let broadcast = sent.and_then(|at| self.in_flight.remove(at).broadcast);
                self.gateway
                    .hub
                    .acknowledge(self.device.clone(), id.into_boxed_str(), broadcast);
            } else {
                let why = "a frame a device may not send";
                return Err(refuse(
                    &mut self.io,
                    self.gateway,
                    frame.sequence,
                    why,
                    Ended::BadFrame,
                )
                .await);
            }
        }
        Ok(())
    }

    /// Writes what the hub queued for the device.
    async fn on_outbox(&mut self) -> Result<(), Ended> {
        let commands = self.gateway.commands;
        let mut bytes = BytesMut::new();
        let mut end = None;
        for out in self.device.take() {
            match out {
                Outgoing::Push(delivery) => {
                    if self.in_flight.iter().any(|d| d.id == delivery.id) {
                        continue;
                    }
                    self.sequence = (self.sequence + 1) % self.gateway.layout.max_sequence().max(1);
                    let body = delivery.body.clone();
                    if encode(
                        &self.gateway.layout,
                        commands.push,
                        self.sequence,
                        body,
                        &mut bytes,
                    )
                    .is_err()
                    {
                        continue;
                    }
                    if self.in_flight.len() == MAX_IN_FLIGHT {
                        self.in_flight.remove(0);
                    }
                    self.in_flight.push(delivery);
                }
                Outgoing::Reconnect(after_ms) => {
                    let _ = encode(
                        &self.gateway.layout,
                        commands.reconnect,
                        0,
                        wire::reconnect(after_ms),
                        &mut bytes,
                    );
                    end = Some(Ended::Moved);
                    break;
                }
                Outgoing::Close(why) => {
                    let _ = encode(
                        &self.gateway.layout,
                        commands.error,
                        0,
                        wire::error(why),
                        &mut bytes,
                    );
                    end = Some(Ended::Replaced);
                    break;
                }
            }
        }
        self.write(&bytes).await?;
        match end {
            Some(ended) => {
                let _ = self.io.shutdown().await;
                Err(ended)
            }
            None => Ok(()),
        }
    }

    async fn write_frame(&mut self, command: u64, sequence: u64, body: Bytes) -> Result<(), Ended> {
        let mut bytes = BytesMut::new();
        encode(&self.gateway.layout, command, sequence, body, &mut bytes)
            .map_err(|_| Ended::BadFrame)?;
        self.write(&bytes).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Ended> {
        if bytes.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.io.write_all(bytes)).await {
            Ok(Ok(())) => {
                self.moved.sent += bytes.len() as u64;
                Ok(())
            }
            Ok(Err(_)) => Err(Ended::Broken),
            Err(_) => Err(Ended::NotReading),
        }
    }
}

enum Woke {
    Read(Result<Option<(Vec<Frame>, usize)>, ReadError>),
    Outbox,
    Idle,
}

enum ReadError {
    Io,
    Frame(&'static str),
}

/// Reads what the socket has into the worker's scratch buffer and takes the whole frames
/// off it (at most `most`; the rest stays in `partial`): the frames and the bytes read, or
/// `None` at the end of the stream.
async fn read_frames<C>(
    io: &mut C,
    partial: &mut BytesMut,
    layout: &Layout,
    most: usize,
) -> Result<Option<(Vec<Frame>, usize)>, ReadError>
where
    C: AsyncRead + Unpin,
{
    let n = poll_fn(|cx| {
        SCRATCH_BUFFER.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))
                .map_err(|_: io::Error| ReadError::Io)?;
            partial.extend_from_slice(buf.filled());
            Poll::Ready(Ok(buf.filled().len()))
        })
    })
    .await?;
    if n == 0 {
        return Ok(None);
    }
    let mut frames = Vec::new();
    while frames.len() < most {
        match layout.decode(partial) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => break,
            Err(e) => return Err(ReadError::Frame(e.name())),
        }
    }
    if partial.is_empty() {
        // Give the allocation back: an idle device holds no buffer.
        *partial = BytesMut::new();
    }
    Ok(Some((frames, n)))
}

fn encode(
    layout: &Layout,
    command: u64,
    sequence: u64,
    body: Bytes,
    bytes: &mut BytesMut,
) -> Result<(), ()> {
    let frame = Frame {
        command,
        sequence,
        fields: Default::default(),
        body,
    };
    layout.encode(&frame, bytes).map_err(drop)
}

fn log(
    worker: &Worker,
    client: SocketAddr,
    started: Instant,
    route_id: &Arc<str>,
    device: Option<&DeviceKey>,
    ended: Ended,
    moved: Moved,
) {
    let lasted = started.elapsed();
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
        client: client.ip(),
        method: "PUSH".to_owned(),
        uri: device.map_or_else(String::new, |d| format!("/{}/{}", d.app, d.device)),
        host: String::new(),
        status,
        bytes_sent: moved.sent,
        request_length: moved.received,
        route_id: Some(route_id.clone()),
        upstream: None,
        upstream_latency: None,
        latency: lasted,
        user_agent: String::new(),
        failure: ended.failure(),
    });
}
