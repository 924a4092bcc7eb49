//! The transports of a device connection: frames over TCP in the default layout, or
//! WebSocket messages (text JSON naming the command in `"type"`, or binary messages of one
//! TCP-layout frame each).

use std::net::SocketAddr;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async, WebSocketStream};

use crate::frame::{command_by_name, command_name, decode_frame, encode_frame, Frame};
use crate::state::CloseReason;

/// Bytes a TCP connection's read buffer starts with: enough for pings, pongs and small
/// pushes; it grows only to the largest frame received.
const READ_BUFFER: usize = 256;

pub(crate) enum Wire {
    Tcp {
        stream: TcpStream,
        buf: BytesMut,
    },
    /// Boxed: the WebSocket state is much larger than a TCP stream.
    WebSocket(Box<WebSocketStream<TcpStream>>),
}

/// A command received, whatever its transport.
pub(crate) struct Incoming {
    pub command: u8,
    /// The frame's sequence; 0 for WebSocket text messages, which carry none.
    pub sequence: u32,
    /// The JSON body; null when empty.
    pub body: Value,
}

impl Wire {
    /// Connects to `addr`, as a WebSocket client of `ws://addr{path}` when `websocket_path`
    /// is set.
    pub async fn open(addr: SocketAddr, websocket_path: Option<&str>) -> Result<Wire, CloseReason> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| CloseReason::ConnectFailed(e.to_string()))?;
        // Pings and acks are small frames that should leave at once.
        let _ = stream.set_nodelay(true);
        let Some(path) = websocket_path else {
            return Ok(Wire::Tcp {
                stream,
                buf: BytesMut::with_capacity(READ_BUFFER),
            });
        };
        let (websocket, _) = client_async(format!("ws://{addr}{path}"), stream)
            .await
            .map_err(|e| CloseReason::ConnectFailed(format!("WebSocket handshake: {e}")))?;
        Ok(Wire::WebSocket(Box::new(websocket)))
    }

    /// The next command received. Cancel safe: a partial frame stays buffered.
    pub async fn receive(&mut self, max_body: usize) -> Result<Incoming, CloseReason> {
        match self {
            Wire::Tcp { stream, buf } => loop {
                match decode_frame(buf, max_body) {
                    Ok(Some(frame)) => return from_frame(frame),
                    Ok(None) => {}
                    Err(e) => return Err(CloseReason::Protocol(e.to_string())),
                }
                match stream.read_buf(buf).await {
                    Ok(0) => return Err(CloseReason::Eof),
                    Ok(_) => {}
                    Err(e) => return Err(CloseReason::Io(e.to_string())),
                }
            },
            Wire::WebSocket(websocket) => loop {
                let message = match websocket.next().await {
                    None | Some(Ok(Message::Close(_))) => return Err(CloseReason::Eof),
                    Some(Err(e)) => return Err(CloseReason::Io(e.to_string())),
                    Some(Ok(message)) => message,
                };
                match message {
                    Message::Text(text) => return from_text(&text),
                    Message::Binary(bytes) => return from_binary(&bytes, max_body),
                    // WebSocket pings are answered by the WebSocket layer itself.
                    _ => {}
                }
            },
        }
    }

    /// Sends a command with a JSON body (null for none).
    pub async fn send(
        &mut self,
        command: u8,
        sequence: u32,
        body: &Value,
    ) -> Result<(), CloseReason> {
        match self {
            Wire::Tcp { stream, .. } => {
                let body = if body.is_null() {
                    Vec::new()
                } else {
                    body.to_string().into_bytes()
                };
                write(stream, &encode_frame(command, sequence, &body)).await
            }
            Wire::WebSocket(websocket) => {
                let mut message = match body {
                    Value::Object(fields) => fields.clone(),
                    _ => Map::new(),
                };
                let name = command_name(command).expect("a protocol command");
                message.insert("type".to_owned(), Value::from(name));
                let text = Value::Object(message).to_string();
                websocket
                    .send(Message::Text(text))
                    .await
                    .map_err(|e| CloseReason::Io(e.to_string()))
            }
        }
    }

    /// Sends bytes as they are: on TCP straight onto the stream, on WebSocket as one binary
    /// message.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> Result<(), CloseReason> {
        match self {
            Wire::Tcp { stream, .. } => write(stream, &bytes).await,
            Wire::WebSocket(websocket) => websocket
                .send(Message::Binary(bytes))
                .await
                .map_err(|e| CloseReason::Io(e.to_string())),
        }
    }
}

async fn write(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), CloseReason> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| CloseReason::Io(e.to_string()))
}

fn from_frame(frame: Frame) -> Result<Incoming, CloseReason> {
    let body = frame
        .json()
        .map_err(|e| CloseReason::Protocol(format!("body not JSON: {e}")))?;
    Ok(Incoming {
        command: frame.command,
        sequence: frame.sequence,
        body,
    })
}

/// A text message: a JSON object whose `"type"` names the command; the rest is the body.
fn from_text(text: &str) -> Result<Incoming, CloseReason> {
    let protocol = |why: String| CloseReason::Protocol(why);
    let mut body: Value =
        serde_json::from_str(text).map_err(|e| protocol(format!("message not JSON: {e}")))?;
    let kind = body
        .as_object_mut()
        .and_then(|fields| fields.remove("type"))
        .ok_or_else(|| protocol(format!("message without a type: {text}")))?;
    let command = kind
        .as_str()
        .and_then(command_by_name)
        .ok_or_else(|| protocol(format!("unknown message type {kind}")))?;
    Ok(Incoming {
        command,
        sequence: 0,
        body,
    })
}

/// A binary message: exactly one frame of the TCP layout.
fn from_binary(bytes: &[u8], max_body: usize) -> Result<Incoming, CloseReason> {
    let mut buf = BytesMut::from(bytes);
    match decode_frame(&mut buf, max_body) {
        Ok(Some(frame)) if buf.is_empty() => from_frame(frame),
        Ok(_) => Err(CloseReason::Protocol(
            "binary message not exactly one frame".to_owned(),
        )),
        Err(e) => Err(CloseReason::Protocol(e.to_string())),
    }
}
