//! The framed-protocol gateway: a stream route with `protocol: pylon-frames` reads its
//! connections as frames (`pylon_frames` decodes them, runs many at once and writes the
//! answers), and each frame becomes an HTTP request to the route its command names.
//!
//! The request goes through the very pipeline HTTP clients go through, as an HTTP/1.1 request
//! on a connection inside the process (no socket, no port): routing, plugins (auth, limits,
//! rewrites), upstream balancing and retries, the access log and the metrics all apply, with
//! the frame's client as the client. Each frame connection keeps a few such connections open,
//! one per call in flight.
//!
//! The frame's body is the request body (`application/x-protobuf`), and the answer's body is
//! the answer frame's; the command, sequence id and header fields travel as `X-Frame-*`
//! headers for the routes to match and log. A command that names a proto's message types
//! converts instead: its frame's body, a `request` message, is sent as JSON
//! (`application/json`), and the JSON answer is encoded as a `response` message. A status
//! outside 2xx, a body that is not a `request` or an answer that is not a `response` is a
//! failed call: the client gets the protocol's `on_error` frame.
//!
//! A 2xx answer carrying `X-Frame-Connection-Key` binds the connection to that key (see
//! [`super::bindings`]), and frames pushed to the key are written between the answers.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pylon_frames::{
    Closed, CommandRoute, Connection, DispatchError, Dispatcher, Frame, FramesConfig, Protocol,
};
use pylon_model::FieldError;
use pylon_plugins::{frame_messages, FrameMessages, Protos};
use pylon_protobuf::Codec;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use super::bindings::Binding;
use super::relay::Relayed;
use crate::downstream::h1;
use crate::http1::{has_token, response_framing, BodyFraming, ChunkedScanner, ResponseHead};
use crate::tls::MaybeTls;
use crate::worker::Worker;

/// Bytes buffered each way on an in-process connection.
const PIPE: usize = 64 * 1024;
/// The largest answer head accepted from the pipeline.
const MAX_HEAD: usize = 64 * 1024;
/// An answer bigger than this cannot be a frame's body.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// A frames route's protocol, compiled with the message types its commands' bodies are.
pub(crate) struct Frames {
    protocol: Protocol,
    /// By command id, sorted: the commands whose bodies convert to and from JSON.
    messages: Box<[(u64, FrameMessages)]>,
    codec: Codec,
}

impl Frames {
    /// Compiles `protocol.conf`, taking message types from `protos`; errors have paths
    /// relative to it.
    pub(crate) fn new(conf: &Value, protos: &Protos) -> Result<Frames, Vec<FieldError>> {
        let config = FramesConfig::from_json(conf).map_err(|e| vec![e])?;
        let protocol = Protocol::new(&config)?;
        let mut messages = frame_messages(&config, protos)?;
        messages.sort_unstable_by_key(|(id, _)| *id);
        Ok(Frames {
            protocol,
            messages: messages.into_boxed_slice(),
            codec: Codec::default(),
        })
    }

    pub(crate) fn protocol(&self) -> &Protocol {
        &self.protocol
    }

    /// The message types of `command`'s bodies, when they convert to and from JSON.
    pub(crate) fn messages(&self, command: u64) -> Option<&FrameMessages> {
        let index = (self.messages)
            .binary_search_by_key(&command, |(id, _)| *id)
            .ok()?;
        Some(&self.messages[index].1)
    }

    pub(crate) fn codec(&self) -> &Codec {
        &self.codec
    }
}

/// The answer header that binds the connection whose call it answers to a key.
const CONNECTION_KEY: &str = "x-frame-connection-key";

/// Serves one connection of the frames route `route` until it ends: the bytes it moved, and
/// the log's name for why it ended, if not by the client's close or the gateway's stop.
pub(crate) async fn serve<IO>(
    worker: &Rc<Worker>,
    io: IO,
    route_id: Arc<str>,
    frames: &Frames,
    client: SocketAddr,
    local: SocketAddr,
) -> (Relayed, Option<&'static str>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (calls, pushes) = Calls::new(worker, route_id, frames, client, local);
    let ended = Connection::new(
        &frames.protocol,
        io,
        &calls,
        &worker.metrics.counters().frames,
    )
    .pushes(pushes)
    .stop_on(worker.stopping())
    .grace(worker.limits.shutdown_grace)
    .run()
    .await;
    tracing::debug!(%client, "frames connection closed: {}", ended.why);
    let relayed = Relayed {
        from_client: ended.received,
        from_upstream: ended.sent,
        ..Relayed::default()
    };
    let failure = match ended.why {
        Closed::ClientClosed | Closed::Stopped => None,
        Closed::IdleTimeout => Some("idle_timeout"),
        Closed::FrameTimeout => Some("client_timeout"),
        Closed::BadFrame(_) => Some("bad_frame"),
        Closed::UnknownCommand(_) => Some("unknown_command"),
        Closed::DispatchFailed(_) => Some("call_failed"),
        Closed::Unencodable(_) => Some("bad_answer"),
        Closed::Refused(_) => Some("refused"),
        Closed::Io(_) => Some("connection_broken"),
    };
    (relayed, failure)
}

/// The HTTP calls of one client of a frames route: a TCP connection speaking frames, or a
/// WebSocket bridged to the route.
pub(crate) struct Calls<'a> {
    worker: Rc<Worker>,
    frames: &'a Frames,
    client: SocketAddr,
    local: SocketAddr,
    /// In-process HTTP/1.1 connections between calls.
    idle: RefCell<Vec<Pipe>>,
    /// Each header field of the layout, with the request header that carries it.
    command_field_names: Vec<(String, pylon_frames::FieldId)>,
    /// The key pushes reach the client by, once an answer bound it.
    binding: Binding,
}

/// Why a call has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallFailure {
    /// The route's answer's status, when it answered outside 2xx; else the gateway's say:
    /// 400 for a request body that is not the command's, 502 for an answer that is not.
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

/// The client's end of an in-process HTTP/1.1 connection.
struct Pipe {
    io: DuplexStream,
    buf: BytesMut,
}

impl<'a> Calls<'a> {
    /// The calls of a client of the stream route `route_id`, and the frames pushed to it.
    pub(crate) fn new(
        worker: &Rc<Worker>,
        route_id: Arc<str>,
        frames: &'a Frames,
        client: SocketAddr,
        local: SocketAddr,
    ) -> (Self, mpsc::Receiver<Frame>) {
        let (binding, pushes) = worker.bindings.connection(route_id);
        let calls = Calls {
            worker: worker.clone(),
            frames,
            client,
            local,
            idle: RefCell::default(),
            command_field_names: (frames.protocol.layout().fields())
                .map(|(name, id)| (format!("x-frame-{name}"), id))
                .collect(),
            binding,
        };
        (calls, pushes)
    }

    /// Sends `frame`'s call to the HTTP route its command names, with `body` (the frame's,
    /// or its JSON) of `content_type` in place of the frame's own: the answer's body, when
    /// the route answers with a 2xx.
    pub(crate) async fn call(
        &self,
        route: &CommandRoute,
        frame: &Frame,
        content_type: &str,
        body: &[u8],
    ) -> Result<Bytes, CallFailure> {
        let request = self.request(route, frame, content_type, body);
        let answer = self.exchange(&request, &route.method).await;
        let answer = answer.map_err(|e| CallFailure {
            status: 502,
            message: format!("{}: {e}", route.uri),
        })?;
        if !(200..300).contains(&answer.status) {
            return Err(CallFailure {
                status: answer.status,
                message: format!("{}: answered {}", route.uri, answer.status),
            });
        }
        if let Some(key) = &answer.connection_key {
            self.binding.bind(key);
        }
        Ok(answer.body)
    }

    /// A new in-process connection, served by the worker's HTTP/1 codec like any client's.
    fn open(&self) -> Pipe {
        let (ours, theirs) = tokio::io::duplex(PIPE);
        tokio::task::spawn_local(h1::serve(
            self.worker.clone(),
            MaybeTls::InProcess(theirs),
            None,
            self.client,
            self.local,
            BytesMut::with_capacity(8 * 1024),
        ));
        Pipe {
            io: ours,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// The HTTP request `frame` becomes, with `body` of `content_type`.
    fn request(
        &self,
        route: &CommandRoute,
        frame: &Frame,
        content_type: &str,
        body: &[u8],
    ) -> Vec<u8> {
        let mut head = String::with_capacity(256);
        let host = route.host.as_deref().unwrap_or("frames");
        let _ = write!(
            head,
            "{} {} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nX-Frame-Command: {}\r\nX-Frame-Sequence: {}\r\n",
            route.method,
            route.uri,
            body.len(),
            frame.command,
            frame.sequence,
        );
        for (header, id) in &self.command_field_names {
            let _ = write!(head, "{header}: {}\r\n", frame.fields.get(*id));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        request
    }

    /// Sends `request` on an in-process connection and reads the whole answer.
    async fn exchange(&self, request: &[u8], method: &str) -> std::io::Result<Answer> {
        let pipe = self.idle.borrow_mut().pop();
        let mut pipe = pipe.unwrap_or_else(|| self.open());
        pipe.io.write_all(request).await?;
        let answer = read_answer(&mut pipe, method).await?;
        if answer.keep_alive {
            self.idle.borrow_mut().push(pipe);
        }
        Ok(answer)
    }
}

impl Dispatcher for Calls<'_> {
    async fn dispatch(&self, route: &CommandRoute, frame: Frame) -> Result<Frame, DispatchError> {
        let failed = |e: &dyn std::fmt::Display| DispatchError::Failed(e.to_string());
        let messages = self.frames.messages(frame.command);
        let body = match messages {
            Some(messages) => {
                let mut json = Vec::with_capacity(frame.body.len() * 2);
                (self.frames.codec)
                    .decode(&messages.request, &frame.body, &mut json)
                    .map_err(|e| failed(&format_args!("{}: {e}", route.uri)))?;
                let answer = self.call(route, &frame, "application/json", &json);
                let answer = answer.await.map_err(|e| failed(&e))?;
                encode_answer(&self.frames.codec, messages, &answer)
                    .map_err(|e| failed(&format_args!("{}: {e}", route.uri)))?
            }
            None => {
                let answer = self.call(route, &frame, "application/x-protobuf", &frame.body);
                answer.await.map_err(|e| failed(&e))?
            }
        };
        Ok(Frame { body, ..frame })
    }
}

/// A JSON answer as a `response` message; an empty one is the empty message.
fn encode_answer(codec: &Codec, messages: &FrameMessages, json: &[u8]) -> Result<Bytes, String> {
    if json.is_empty() {
        return Ok(Bytes::new());
    }
    let value: Value =
        serde_json::from_slice(json).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let wire = codec
        .encode(&messages.response, &value)
        .map_err(|e| format!("the answer: {e}"))?;
    Ok(Bytes::from(wire))
}

struct Answer {
    status: u16,
    body: Bytes,
    keep_alive: bool,
    /// The key the answer binds the connection to.
    connection_key: Option<Box<str>>,
}

/// Reads one whole response from the pipeline.
async fn read_answer(pipe: &mut Pipe, method: &str) -> std::io::Result<Answer> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut head = ResponseHead::default();
    let head_len = loop {
        if let Some(len) = head
            .parse(&pipe.buf, MAX_HEAD)
            .map_err(|_| invalid("a malformed response head"))?
        {
            break len;
        }
        read_some(pipe).await?;
    };
    let status = head.status();
    let connection_key = (head.header(CONNECTION_KEY))
        .and_then(|key| std::str::from_utf8(key).ok())
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(Box::from);
    let closes = head
        .header("connection")
        .is_some_and(|v| has_token(v, "close"));
    let framing =
        response_framing(&head, method).map_err(|_| invalid("a response of unknown length"))?;
    let _ = pipe.buf.split_to(head_len);
    let (body, keep_alive) = match framing {
        BodyFraming::None => (Bytes::new(), !closes),
        BodyFraming::Length(n) => {
            let n = usize::try_from(n).ok().filter(|&n| n <= MAX_ANSWER);
            let n = n.ok_or_else(|| invalid("an answer too big for a frame"))?;
            while pipe.buf.len() < n {
                read_some(pipe).await?;
            }
            (pipe.buf.split_to(n).freeze(), !closes)
        }
        BodyFraming::Chunked => {
            let mut scanner = ChunkedScanner::default();
            let mut body = BytesMut::new();
            loop {
                let used = scanner
                    .scan(&pipe.buf, |data| body.extend_from_slice(data))
                    .map_err(|_| invalid("a malformed chunked answer"))?;
                let _ = pipe.buf.split_to(used);
                if scanner.is_done() {
                    break;
                }
                if body.len() > MAX_ANSWER {
                    return Err(invalid("an answer too big for a frame"));
                }
                read_some(pipe).await?;
            }
            (body.freeze(), !closes)
        }
        BodyFraming::UntilClose => {
            loop {
                if pipe.buf.len() > MAX_ANSWER {
                    return Err(invalid("an answer too big for a frame"));
                }
                if pipe.io.read_buf(&mut pipe.buf).await? == 0 {
                    break;
                }
            }
            (pipe.buf.split().freeze(), false)
        }
    };
    Ok(Answer {
        status,
        body,
        keep_alive,
        connection_key,
    })
}

async fn read_some(pipe: &mut Pipe) -> std::io::Result<()> {
    pipe.buf.reserve(8 * 1024);
    match pipe.io.read_buf(&mut pipe.buf).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}
