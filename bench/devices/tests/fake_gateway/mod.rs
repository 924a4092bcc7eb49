//! A tiny push gateway that speaks the protocol spec (TCP frames, or WebSocket), for the
//! fleet's tests only: answers
//! `auth` with `auth_ok` (or `error` for the token "bad"), `ping` with `pong`, replaces an older
//! connection of the same device, pushes and sends frames on command, and records acks, pings
//! and authentications.

// Each test crate that includes this module uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use pylon_devices::frame::{
    command, command_by_name, command_name, decode_all, decode_frame, encode_frame, encode_json,
};
use pylon_devices::Frame;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

#[derive(Clone)]
pub struct GatewayOptions {
    pub node: String,
    /// Seconds, in `auth_ok`.
    pub heartbeat: f64,
    /// Seconds, in every `pong` when set.
    pub pong_heartbeat: Option<f64>,
    /// Speak WebSocket (any path) instead of frames over TCP.
    pub websocket: bool,
    /// Over WebSocket, send frames as binary messages rather than text.
    pub binary: bool,
}

impl GatewayOptions {
    pub fn node(node: &str) -> GatewayOptions {
        GatewayOptions {
            node: node.to_owned(),
            heartbeat: 240.0,
            pong_heartbeat: None,
            websocket: false,
            binary: false,
        }
    }
}

/// What a connection task is told to do: write these bytes, and close after them if asked.
type Outgoing = mpsc::UnboundedSender<(Vec<u8>, bool)>;

#[derive(Default)]
pub struct Recorded {
    /// The current connection of each (app, device).
    current: HashMap<(String, String), Outgoing>,
    /// Every `auth` body accepted, with when.
    pub auths: Vec<(Value, Instant)>,
    pub acks: HashMap<(String, String), Vec<String>>,
    pub pings: HashMap<(String, String), Vec<Instant>>,
    /// Connections accepted and not yet answered `auth_ok`, now and at most.
    pub pending: usize,
    pub max_pending: usize,
    /// Connections closed from either side.
    pub closed: usize,
}

pub struct FakeGateway {
    pub addr: SocketAddr,
    recorded: Arc<Mutex<Recorded>>,
    sequence: Mutex<u32>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeGateway {
    pub fn start(options: GatewayOptions) -> FakeGateway {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let (stop, stopped) = oneshot::channel::<()>();
        let shared = recorded.clone();
        let thread = thread::spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = stopped => {}
                    () = accept(listener, shared, options) => {}
                }
            })
        });
        FakeGateway {
            addr,
            recorded,
            sequence: Mutex::new(0),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn recorded<T>(&self, read: impl FnOnce(&Recorded) -> T) -> T {
        read(&self.recorded.lock().unwrap())
    }

    pub fn wait(&self, timeout: Duration, mut condition: impl FnMut(&Recorded) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.recorded(&mut condition) {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        false
    }

    pub fn acks(&self, app: &str, device: &str) -> Vec<String> {
        self.recorded(|r| r.acks.get(&key(app, device)).cloned().unwrap_or_default())
    }

    pub fn pings(&self, app: &str, device: &str) -> Vec<Instant> {
        self.recorded(|r| r.pings.get(&key(app, device)).cloned().unwrap_or_default())
    }

    /// Sends a frame to the device's current connection; false when it has none.
    pub fn send(&self, app: &str, device: &str, frame: Vec<u8>, close_after: bool) -> bool {
        self.recorded(|r| {
            r.current
                .get(&key(app, device))
                .is_some_and(|out| out.send((frame, close_after)).is_ok())
        })
    }

    pub fn push(&self, app: &str, device: &str, body: Value) -> bool {
        let sequence = {
            let mut sequence = self.sequence.lock().unwrap();
            *sequence += 1;
            *sequence
        };
        self.send(
            app,
            device,
            encode_json(command::PUSH, sequence, &body),
            false,
        )
    }

    pub fn reconnect(&self, app: &str, device: &str, after_ms: u64) -> bool {
        let frame = encode_json(command::RECONNECT, 0, &json!({ "after_ms": after_ms }));
        self.send(app, device, frame, true)
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.thread.take().unwrap().join();
    }
}

fn key(app: &str, device: &str) -> (String, String) {
    (app.to_owned(), device.to_owned())
}

async fn accept(listener: TcpListener, recorded: Arc<Mutex<Recorded>>, options: GatewayOptions) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        {
            let mut r = recorded.lock().unwrap();
            r.pending += 1;
            r.max_pending = r.max_pending.max(r.pending);
        }
        let recorded = recorded.clone();
        let options = options.clone();
        tokio::spawn(async move {
            let wire = if options.websocket {
                match tokio_tungstenite::accept_async(stream).await {
                    Ok(websocket) => FakeWire::WebSocket(Box::new(websocket), options.binary),
                    Err(_) => return,
                }
            } else {
                FakeWire::Tcp(stream, BytesMut::new())
            };
            serve(wire, &recorded, &options).await;
            recorded.lock().unwrap().closed += 1;
        });
    }
}

/// The gateway's side of either transport; what it sends is given as TCP-layout frames.
enum FakeWire {
    Tcp(TcpStream, BytesMut),
    /// Sends frames as binary messages when the flag is set, else as text messages.
    WebSocket(Box<WebSocketStream<TcpStream>>, bool),
}

impl FakeWire {
    /// The next frame received (a text message read as one), or None at the end.
    async fn receive(&mut self) -> Option<Frame> {
        match self {
            FakeWire::Tcp(stream, buf) => loop {
                if let Some(frame) = decode_frame(buf, 1 << 16).ok()? {
                    return Some(frame);
                }
                if stream.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            },
            FakeWire::WebSocket(websocket, _) => loop {
                match websocket.next().await?.ok()? {
                    Message::Text(text) => {
                        let mut body: Value = serde_json::from_str(&text).ok()?;
                        let kind = body.as_object_mut()?.remove("type")?;
                        let command = command_by_name(kind.as_str()?)?;
                        let frame = encode_json(command, 0, &body);
                        return decode_all(&frame, 1 << 16).ok()?.0.pop();
                    }
                    Message::Binary(bytes) => return decode_all(&bytes, 1 << 16).ok()?.0.pop(),
                    Message::Close(_) => return None,
                    _ => {}
                }
            },
        }
    }

    async fn send(&mut self, frame: Vec<u8>) -> bool {
        match self {
            FakeWire::Tcp(stream, _) => stream.write_all(&frame).await.is_ok(),
            FakeWire::WebSocket(websocket, true) => {
                websocket.send(Message::Binary(frame)).await.is_ok()
            }
            FakeWire::WebSocket(websocket, false) => {
                let frame = decode_all(&frame, 1 << 16).unwrap().0.remove(0);
                let mut body = match frame.json().unwrap() {
                    Value::Null => json!({}),
                    body => body,
                };
                body["type"] = json!(command_name(frame.command).unwrap());
                websocket
                    .send(Message::Text(body.to_string()))
                    .await
                    .is_ok()
            }
        }
    }
}

async fn serve(mut wire: FakeWire, recorded: &Mutex<Recorded>, options: &GatewayOptions) {
    let Some(first) = wire.receive().await else {
        recorded.lock().unwrap().pending -= 1;
        return;
    };
    let auth = first.json().unwrap_or(Value::Null);
    if first.command != command::AUTH || auth["token"] == "bad" {
        recorded.lock().unwrap().pending -= 1;
        let why = if first.command == command::AUTH {
            "bad token"
        } else {
            "auth first"
        };
        wire.send(encode_json(command::ERROR, 0, &json!({ "error": why })))
            .await;
        return;
    }
    let device = key(
        auth["app_id"].as_str().unwrap_or(""),
        auth["device_id"].as_str().unwrap_or(""),
    );
    let (out, mut outgoing) = mpsc::unbounded_channel();
    {
        let mut r = recorded.lock().unwrap();
        r.pending -= 1;
        r.auths.push((auth, Instant::now()));
        if let Some(replaced) = r.current.insert(device.clone(), out) {
            let frame = encode_json(command::ERROR, 0, &json!({ "error": "replaced" }));
            let _ = replaced.send((frame, true));
        }
    }
    let auth_ok = json!({ "heartbeat": options.heartbeat, "node": options.node });
    if !wire
        .send(encode_json(command::AUTH_OK, first.sequence, &auth_ok))
        .await
    {
        return;
    }
    loop {
        tokio::select! {
            frame = wire.receive() => {
                let Some(frame) = frame else {
                    return;
                };
                match frame.command {
                    command::PING => {
                        let now = Instant::now();
                        recorded.lock().unwrap().pings.entry(device.clone()).or_default().push(now);
                        let body = options.pong_heartbeat.map_or(Vec::new(), |h| {
                            json!({ "heartbeat": h }).to_string().into_bytes()
                        });
                        if !wire.send(encode_frame(command::PONG, frame.sequence, &body)).await {
                            return;
                        }
                    }
                    command::ACK => {
                        let id = frame.json().unwrap()["id"].as_str().unwrap().to_owned();
                        recorded.lock().unwrap().acks.entry(device.clone()).or_default().push(id);
                    }
                    _ => {}
                }
            }
            Some((frame, close_after)) = outgoing.recv() => {
                if !wire.send(frame).await || close_after {
                    return;
                }
            }
        }
    }
}
