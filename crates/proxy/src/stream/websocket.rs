//! WebSocket clients bridged to a frames route (`websocket-frames`): the HTTP/1 codec answers
//! the upgrade itself, and each message is then a call of the stream route's protocol, sent
//! to the HTTP route its command names by the same [`Calls`] its TCP clients' frames go
//! through (plugins, limits, logs and metrics apply alike).
//!
//! - `binary`: a binary message is one whole frame in the route's layout, and its answer is
//!   one frame in one binary message, with the request's sequence id; a failed call and an
//!   unknown command get the protocol's error frames, or a close where it has none.
//! - `json`: a text message is `{"command", "sequence", "fields"?, "body"?}`; its `body` goes
//!   as the request's JSON body as it is (it must be the command's `request` message when the
//!   command names one), and the answer comes back as `{"command", "sequence", "body"}`, or
//!   `{"command", "sequence", "error": {"status", "message"}}` for a failed call.
//! - `tcp`: a binary message is one whole frame, relayed to a node of the stream route's
//!   upstream (a framed TCP backend, one connection per WebSocket), and each frame the node
//!   sends is one binary message: answers, and frames the backend pushes.
//!
//! In the first two, calls run concurrently, up to the protocol's `max_in_flight`, and are answered in
//! completion order. A call's answer may bind the WebSocket to a key, as a TCP client's
//! connection (see [`super::bindings`]): frames pushed to the key then come as messages
//! between the answers, a binary message each (`binary`), or `{"command", "sequence",
//! "body"}` (`json`: the body decoded from the command's `response` message when it names
//! one, else the body's JSON, else its text as a string).
//!
//! A message that is not a call (a cut frame, JSON that is not a call, a message of the other
//! mode, one longer than the longest frame) is counted and closes the WebSocket: 1007, 1003
//! or 1009. A client silent for `read_timeout` with no call in flight, and every client of a
//! stopping worker, is closed with 1001 once the calls in flight are answered (within the
//! shutdown grace). Pings are answered by the WebSocket layer as it reads.

use std::collections::BTreeMap;
use std::rc::Rc;

use bytes::BytesMut;
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use pylon_frames::{CommandRoute, Counters, Dispatcher, Frame, FrameError};
use pylon_plugin::BridgeMode;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::frames::{CallFailure, Calls, Frames};
use super::{Arrival, StreamTarget};
use crate::snapshot::UpstreamTarget;
use crate::worker::Worker;

/// The close code of a gateway whose upstream failed it (IANA's WebSocket registry).
const BAD_GATEWAY: CloseCode = CloseCode::Iana(1014);

/// The largest text message of a JSON call, besides the body it carries.
const JSON_OVERHEAD: usize = 64 * 1024;

/// Serves a WebSocket whose upgrade was answered, until it closes: its messages are calls of
/// the frames route `route`, or, in `tcp` mode, frames for its upstream. `early` is what the
/// client sent after its upgrade request, read along with it.
pub(crate) async fn serve<S>(
    worker: &Rc<Worker>,
    route: &StreamTarget,
    (io, early): (S, BytesMut),
    mode: BridgeMode,
    arrival: &Arrival<'_>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Compiled frames routes have their protocol: the codec looked the route up by it.
    let Some(frames) = route.frames.as_deref() else {
        return;
    };
    let layout = frames.protocol().layout();
    // A message holds one call: nothing longer than the longest frame (or its JSON) is read.
    let longest = layout.frame_len(usize::try_from(layout.max_body()).unwrap_or(usize::MAX));
    let longest = match mode {
        BridgeMode::Binary | BridgeMode::Tcp => longest,
        BridgeMode::Json => longest.saturating_mul(2).saturating_add(JSON_OVERHEAD),
    };
    let config = WebSocketConfig {
        max_message_size: Some(longest),
        max_frame_size: Some(longest),
        ..WebSocketConfig::default()
    };
    let ws =
        WebSocketStream::from_partially_read(io, early.to_vec(), Role::Server, Some(config)).await;
    let (calls, pushes) = Calls::new(
        worker,
        route.id.clone(),
        frames,
        arrival.client,
        arrival.local,
    );
    let bridge = Bridge {
        calls,
        frames,
        mode,
        counters: &worker.metrics.counters().frames,
    };
    let closed = match (mode, &route.upstream) {
        (BridgeMode::Tcp, Some(upstream)) => {
            bridge.relay(worker, route, upstream, arrival, ws).await
        }
        (BridgeMode::Tcp, None) => {
            bridge
                .close(
                    worker,
                    ws,
                    (CloseCode::Error, "the stream route has no upstream".into()),
                )
                .await
        }
        _ => bridge.run(worker, ws, pushes).await,
    };
    tracing::debug!(client = %arrival.client, "bridged WebSocket closed: {closed}");
}

/// One bridged WebSocket.
struct Bridge<'a> {
    calls: Calls<'a>,
    frames: &'a Frames,
    mode: BridgeMode,
    counters: &'a Counters,
}

/// What the client gets for a message.
enum Reaction<'r> {
    /// A call of `route` to make.
    Call(&'r CommandRoute, Call),
    /// An answer of the gateway's own (an error frame or message); the WebSocket goes on.
    Answer(Message),
    /// The WebSocket closes, with this code and reason.
    Close(CloseCode, String),
}

/// A call a message holds.
enum Call {
    /// A whole frame.
    Binary(Frame),
    /// A JSON call's header values (in a frame without a body), and its body.
    Json(Frame, Option<Value>),
}

impl Call {
    fn frame(&self) -> &Frame {
        match self {
            Call::Binary(frame) | Call::Json(frame, _) => frame,
        }
    }
}

/// A JSON call, as a text message carries it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonCall {
    command: u64,
    sequence: u64,
    #[serde(default)]
    fields: BTreeMap<String, u64>,
    #[serde(default)]
    body: Option<Value>,
}

impl<'a> Bridge<'a> {
    async fn run<S>(
        &'a self,
        worker: &Worker,
        mut ws: WebSocketStream<S>,
        mut pushes: mpsc::Receiver<Frame>,
    ) -> String
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let protocol = self.frames.protocol();
        let mut in_flight = FuturesUnordered::new();
        let stopping = worker.stopping();
        tokio::pin!(stopping);
        let mut closing: Option<(CloseCode, String)> = None;
        if worker.is_stopping() {
            closing = Some((CloseCode::Away, "the gateway stops".into()));
        }
        // While reading: the client's silence, with no call in flight, for `read_timeout`.
        // Once closing: the grace period of the calls in flight.
        let timer = tokio::time::sleep(protocol.read_timeout());
        tokio::pin!(timer);
        loop {
            let reading = closing.is_none() && in_flight.len() < protocol.max_in_flight();
            let reaction = tokio::select! {
                message = ws.next(), if reading => match message {
                    Some(Ok(message)) => {
                        timer.as_mut().reset(Instant::now() + protocol.read_timeout());
                        match self.react(message) {
                            Some(reaction) => reaction,
                            None => continue,
                        }
                    }
                    Some(Err(WsError::Capacity(e))) => {
                        self.counters.bad_message();
                        Reaction::Close(CloseCode::Size, e.to_string())
                    }
                    // The client closed (its close was answered), or the connection broke.
                    Some(Err(_)) | None => {
                        self.counters.abandoned(in_flight.len());
                        return "the client closed".into();
                    }
                },
                Some(answer) = in_flight.next(), if !in_flight.is_empty() => answer,
                Some(frame) = pushes.recv(), if closing.is_none() => match self.pushed(frame) {
                    Some(message) => Reaction::Answer(message),
                    None => continue,
                },
                () = &mut stopping, if closing.is_none() => {
                    Reaction::Close(CloseCode::Away, "the gateway stops".into())
                }
                () = &mut timer, if in_flight.is_empty() || closing.is_some() => {
                    if closing.is_some() {
                        self.counters.abandoned(in_flight.len());
                        break;
                    }
                    self.counters.timeout();
                    Reaction::Close(CloseCode::Away, "idle for read_timeout".into())
                }
            };
            let message = match reaction {
                Reaction::Call(route, call) => {
                    in_flight.push(self.call(route, call));
                    continue;
                }
                Reaction::Answer(message) => message,
                Reaction::Close(code, reason) => {
                    if closing.is_none() {
                        closing = Some((code, reason));
                        timer
                            .as_mut()
                            .reset(Instant::now() + worker.limits.shutdown_grace);
                    }
                    if in_flight.is_empty() {
                        break;
                    }
                    continue;
                }
            };
            if ws.send(message).await.is_err() {
                self.counters.abandoned(in_flight.len());
                return "the client is gone".into();
            }
            self.counters.frame_out();
            if closing.is_none() {
                timer
                    .as_mut()
                    .reset(Instant::now() + protocol.read_timeout());
            } else if in_flight.is_empty() {
                break;
            }
        }
        let closing = closing.unwrap_or((CloseCode::Normal, String::new()));
        self.close(worker, ws, closing).await
    }

    /// Closes with `code` and `reason`, and waits (within the shutdown grace) for the
    /// client's close, which ends the stream; says why it closed.
    async fn close<S>(
        &self,
        worker: &Worker,
        mut ws: WebSocketStream<S>,
        (code, reason): (CloseCode, String),
    ) -> String
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let frame = CloseFrame {
            code,
            reason: reason.clone().into(),
        };
        let handshake = async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        };
        let _ = tokio::time::timeout(worker.limits.shutdown_grace, handshake).await;
        reason
    }

    /// `mode: tcp`: relays each binary message's frame to a node of the route's upstream,
    /// and each frame the node sends back as a binary message, until either side closes (or
    /// both are silent for `read_timeout`). The node is chosen as for the route's TCP clients
    /// (balancer, health, retries on connect); none connecting closes with 1014.
    async fn relay<S>(
        &self,
        worker: &Worker,
        route: &StreamTarget,
        upstream: &UpstreamTarget,
        arrival: &Arrival<'_>,
        mut ws: WebSocketStream<S>,
    ) -> String
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let protocol = self.frames.protocol();
        let view = worker.view();
        let mut backend = match super::connect(&view, route, upstream, arrival).await {
            Ok(done) => done.value.0.stream,
            Err(gave_up) => {
                let reason = format!("no node connected: {}", gave_up.error.status());
                return self.close(worker, ws, (BAD_GATEWAY, reason)).await;
            }
        };
        let mut from_backend = BytesMut::with_capacity(8 * 1024);
        let stopping = worker.stopping();
        tokio::pin!(stopping);
        let silence = tokio::time::sleep(protocol.read_timeout());
        tokio::pin!(silence);
        let closing = loop {
            if worker.is_stopping() {
                break (CloseCode::Away, "the gateway stops".into());
            }
            tokio::select! {
                message = ws.next() => match message {
                    Some(Ok(Message::Binary(bytes))) => {
                        if let Err(reason) = self.frame(&bytes) {
                            break (CloseCode::Invalid, reason);
                        }
                        self.counters.frame_in();
                        if backend.write_all(&bytes).await.is_err() {
                            break (BAD_GATEWAY, "the backend is gone".into());
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_))) => {}
                    Some(Ok(_)) => {
                        self.counters.bad_message();
                        break (CloseCode::Unsupported, "frames come in binary messages".into());
                    }
                    Some(Err(WsError::Capacity(e))) => {
                        self.counters.bad_message();
                        break (CloseCode::Size, e.to_string());
                    }
                    Some(Err(_)) | None => return "the client closed".into(),
                },
                read = backend.read_buf(&mut from_backend) => match read {
                    Ok(0) => break (CloseCode::Normal, "the backend closed".into()),
                    Err(_) => break (BAD_GATEWAY, "the backend is gone".into()),
                    Ok(_) => {
                        if let Err(reason) = self.backend_frames(&mut ws, &mut from_backend).await {
                            break reason;
                        }
                    }
                },
                () = &mut stopping => break (CloseCode::Away, "the gateway stops".into()),
                () = &mut silence => {
                    self.counters.timeout();
                    break (CloseCode::Away, "idle for read_timeout".into());
                }
            }
            silence
                .as_mut()
                .reset(Instant::now() + protocol.read_timeout());
        };
        self.close(worker, ws, closing).await
    }

    /// Sends each whole frame the backend sent, one per message; what follows the last one
    /// stays for the next read. A frame that breaks the layout ends the relay.
    async fn backend_frames<S>(
        &self,
        ws: &mut WebSocketStream<S>,
        from_backend: &mut BytesMut,
    ) -> Result<(), (CloseCode, String)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let layout = self.frames.protocol().layout();
        loop {
            let frame = match layout.decode(from_backend) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => return Err((CloseCode::Error, format!("the backend: {e}"))),
            };
            let mut message = BytesMut::with_capacity(layout.frame_len(frame.body.len()));
            if let Err(e) = layout.encode(&frame, &mut message) {
                return Err((CloseCode::Error, format!("the backend: {e}")));
            }
            if ws.send(binary(message)).await.is_err() {
                return Err((CloseCode::Away, "the client is gone".into()));
            }
            self.counters.frame_out();
        }
    }

    /// What the client gets for `message`; `None` when it needs nothing (a ping, a pong).
    fn react(&self, message: Message) -> Option<Reaction<'a>> {
        let protocol = self.frames.protocol();
        let call = match (self.mode, message) {
            (BridgeMode::Binary, Message::Binary(bytes)) => match self.frame(&bytes) {
                Ok(frame) => Call::Binary(frame),
                Err(reason) => return Some(Reaction::Close(CloseCode::Invalid, reason)),
            },
            (BridgeMode::Json, Message::Text(text)) => match self.json_call(&text) {
                Ok(call) => call,
                Err(reason) => {
                    self.counters.bad_message();
                    return Some(Reaction::Close(CloseCode::Invalid, reason));
                }
            },
            (_, Message::Ping(_) | Message::Pong(_) | Message::Close(_)) => return None,
            (_, _) => {
                self.counters.bad_message();
                let reason = match self.mode {
                    BridgeMode::Binary | BridgeMode::Tcp => "frames come in binary messages",
                    BridgeMode::Json => "calls come in text messages",
                };
                return Some(Reaction::Close(CloseCode::Unsupported, reason.into()));
            }
        };
        self.counters.frame_in();
        let Frame {
            command, sequence, ..
        } = *call.frame();
        if let Some(route) = protocol.route(command) {
            return Some(Reaction::Call(route, call));
        }
        // As over TCP: the protocol's `unknown_command` says whether the client is answered
        // (with its error frame, or an error in JSON) or closed.
        self.counters.unknown_command();
        let unknown = format!("command {command} is not a route's");
        Some(match protocol.unknown_command_frame(sequence) {
            None => Reaction::Close(CloseCode::Policy, unknown),
            Some(error) => Reaction::Answer(match self.mode {
                BridgeMode::Binary | BridgeMode::Tcp => binary(error),
                BridgeMode::Json => json_error(command, sequence, 404, &unknown),
            }),
        })
    }

    /// The message a frame pushed to the client is; `None` for one that does not fit the
    /// layout (checked before it was queued: not expected).
    fn pushed(&self, frame: Frame) -> Option<Message> {
        if self.mode == BridgeMode::Json {
            let codec = self.frames.codec();
            let body: Option<Value> = match self.frames.messages(frame.command) {
                // Encoded from JSON by the push, with the same message type.
                Some(messages) => codec.decode_value(&messages.response, &frame.body).ok(),
                None => serde_json::from_slice(&frame.body).ok(),
            };
            let body = body.unwrap_or_else(|| String::from_utf8_lossy(&frame.body).into());
            let message =
                json!({"command": frame.command, "sequence": frame.sequence, "body": body});
            return Some(Message::Text(message.to_string()));
        }
        let layout = self.frames.protocol().layout();
        let mut bytes = BytesMut::with_capacity(layout.frame_len(frame.body.len()));
        match layout.encode(&frame, &mut bytes) {
            Ok(()) => Some(binary(bytes)),
            Err(e) => {
                tracing::warn!("a pushed frame dropped: {e}");
                None
            }
        }
    }

    /// The frame a binary message holds whole, and nothing else.
    fn frame(&self, message: &[u8]) -> Result<Frame, String> {
        let layout = self.frames.protocol().layout();
        let mut bytes = BytesMut::from(message);
        let error = match layout.decode(&mut bytes) {
            Ok(Some(frame)) if bytes.is_empty() => return Ok(frame),
            Ok(Some(_)) => {
                self.counters.bad_message();
                return Err("a message holds one frame, and nothing after it".into());
            }
            Ok(None) => FrameError::Truncated {
                received: message.len(),
            },
            Err(error) => error,
        };
        self.counters.bad_frame(&error);
        Err(error.to_string())
    }

    /// The call a text message holds.
    fn json_call(&self, text: &str) -> Result<Call, String> {
        let call: JsonCall =
            serde_json::from_str(text).map_err(|e| format!("not a JSON call: {e}"))?;
        let layout = self.frames.protocol().layout();
        let mut frame = Frame {
            command: call.command,
            sequence: call.sequence,
            ..Frame::default()
        };
        for (name, value) in &call.fields {
            let id = layout
                .field(name)
                .ok_or_else(|| format!("`{name}` is not a field of the layout"))?;
            frame.fields.set(id, *value);
        }
        Ok(Call::Json(frame, call.body))
    }

    /// Makes a call: the message that answers it.
    async fn call(&self, route: &CommandRoute, call: Call) -> Reaction<'a> {
        match call {
            Call::Binary(frame) => {
                let sequence = frame.sequence;
                let answered = self.calls.dispatch(route, frame).await;
                let layout = self.frames.protocol().layout();
                let mut bytes = BytesMut::new();
                let encoded = match answered {
                    Ok(answer) => layout
                        .encode(&answer, &mut bytes)
                        .map_err(|e| e.to_string()),
                    Err(error) => Err(error.to_string()),
                };
                match encoded {
                    Ok(()) => Reaction::Answer(binary(bytes)),
                    Err(reason) => self.failed(sequence, reason),
                }
            }
            Call::Json(frame, body) => match self.json_answer(route, &frame, body).await {
                Ok(answer) => Reaction::Answer(Message::Text(
                    json!({
                        "command": frame.command,
                        "sequence": frame.sequence,
                        "body": answer,
                    })
                    .to_string(),
                )),
                Err(error) => {
                    self.counters.dispatch_error();
                    tracing::debug!(sequence = frame.sequence, "a call failed: {error}");
                    let (command, sequence) = (frame.command, frame.sequence);
                    Reaction::Answer(json_error(command, sequence, error.status, &error.message))
                }
            },
        }
    }

    /// A binary call without an answer: `on_error`'s frame, or a close.
    fn failed(&self, sequence: u64, reason: String) -> Reaction<'a> {
        self.counters.dispatch_error();
        tracing::debug!(sequence, "a frame without an answer: {reason}");
        match self.frames.protocol().on_error_frame(sequence) {
            Some(error) => Reaction::Answer(binary(error)),
            None => Reaction::Close(CloseCode::Error, reason),
        }
    }

    /// The JSON answer of a JSON call. When the command names message types, the body must
    /// be a `request` and the answer a `response` (an empty one is the empty message).
    async fn json_answer(
        &self,
        route: &CommandRoute,
        frame: &Frame,
        body: Option<Value>,
    ) -> Result<Value, CallFailure> {
        let messages = self.frames.messages(frame.command);
        let codec = self.frames.codec();
        if let Some(messages) = messages {
            let empty = json!({});
            if let Err(e) = codec.encode(&messages.request, body.as_ref().unwrap_or(&empty)) {
                let wanted = messages.request.full_name();
                return Err(CallFailure {
                    status: 400,
                    message: format!("the body is not a `{wanted}`: {e}"),
                });
            }
        }
        let body = body.map_or_else(Vec::new, |body| body.to_string().into_bytes());
        let answer = self
            .calls
            .call(route, frame, "application/json", &body)
            .await?;
        let bad_answer = |message: String| CallFailure {
            status: 502,
            message,
        };
        let value: Value = match (answer.is_empty(), messages) {
            (true, Some(_)) => json!({}),
            (true, None) => Value::Null,
            (false, _) => serde_json::from_slice(&answer)
                .map_err(|e| bad_answer(format!("the answer is not JSON: {e}")))?,
        };
        if let Some(messages) = messages {
            if let Err(e) = codec.encode(&messages.response, &value) {
                let wanted = messages.response.full_name();
                return Err(bad_answer(format!("the answer is not a `{wanted}`: {e}")));
            }
        }
        Ok(value)
    }
}

fn binary(bytes: BytesMut) -> Message {
    Message::Binary(bytes.to_vec())
}

/// A JSON call's answer when it has none.
fn json_error(command: u64, sequence: u64, status: u16, message: &str) -> Message {
    Message::Text(
        json!({
            "command": command,
            "sequence": sequence,
            "error": {"status": status, "message": message},
        })
        .to_string(),
    )
}
