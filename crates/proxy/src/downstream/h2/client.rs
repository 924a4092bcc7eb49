//! The client's side of one stream: the response head, the gateway's own errors, and noticing
//! that the client cancelled.
//!
//! Gateway errors go to HTTP clients as they do over HTTP/1 (status and JSON body). A gRPC
//! client (`content-type: application/grpc...`) gets them as a gRPC status instead, in a
//! trailers-only response (HTTP 200 with `grpc-status` and `grpc-message`), as Envoy answers:
//! nginx and APISIX send the bare HTTP status, which a gRPC client can only turn into a generic
//! UNAVAILABLE or UNKNOWN with the gateway's message lost.

use std::future::poll_fn;
use std::rc::Rc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, SendStream};
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, SERVER};
use http::{HeaderMap, Response, StatusCode};

use pylon_plugin::Reply;

use super::body::Halt;
use super::Connection;
use crate::attempts::UpstreamAnswer;
use crate::error::GatewayError;
use crate::http1::is_hop_by_hop;
use crate::outbound::append_header;
use crate::outcome::{Cause, End, Outcome, Side};

pub(super) struct Client {
    respond: SendResponse<Bytes>,
    conn: Rc<Connection>,
    grpc: bool,
    /// The request is a HEAD: responses the gateway makes carry their length, not their body.
    head: bool,
    reset_recorded: bool,
}

/// What the client got.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delivered {
    pub status: u16,
    /// Body bytes (an HTTP/2 head's size on the wire depends on header compression).
    pub bytes_sent: u64,
    /// The status is the upstream's, not the gateway's.
    upstream_answered: bool,
    pub end: End,
}

impl Delivered {
    /// The client went away before its response was complete (nginx's 499).
    pub const CLIENT_GONE: Delivered = Delivered {
        status: 499,
        bytes_sent: 0,
        upstream_answered: false,
        end: End::Failed(Side::Client, Cause::Reset),
    };

    /// The upstream's response, with `status`, went whole to the client.
    pub fn upstream(status: u16, bytes_sent: u64) -> Self {
        Delivered {
            status,
            bytes_sent,
            upstream_answered: true,
            end: End::Complete,
        }
    }

    /// The upstream's response, with `status`, was cut short by `side`.
    pub fn cut_short(status: u16, bytes_sent: u64, side: Side) -> Self {
        Delivered {
            end: End::Failed(side, Cause::Reset),
            ..Delivered::upstream(status, bytes_sent)
        }
    }
}

impl From<Delivered> for Outcome {
    fn from(delivered: Delivered) -> Outcome {
        Outcome {
            end: delivered.end,
            ..Outcome::complete(delivered.status, delivered.bytes_sent, true)
        }
    }
}

impl UpstreamAnswer for Delivered {
    fn upstream_status(&self) -> Option<u16> {
        self.upstream_answered.then_some(self.status)
    }
}

/// The head of a response the gateway makes: the reply's status and headers (without its
/// length, which depends on how its body goes out).
pub(super) fn response_head(reply: &Reply) -> Response<()> {
    let mut head = Response::new(());
    *head.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let headers = head.headers_mut();
    headers.insert(SERVER, HeaderValue::from_static("Pylon"));
    for (name, value) in &reply.headers {
        if !is_hop_by_hop(name) && !name.eq_ignore_ascii_case("content-length") {
            append_header(headers, name.as_bytes(), value.as_bytes());
        }
    }
    head
}

impl Client {
    pub fn new(respond: SendResponse<Bytes>, conn: Rc<Connection>, grpc: bool, head: bool) -> Self {
        Client {
            respond,
            conn,
            grpc,
            head,
            reset_recorded: false,
        }
    }

    /// Whether the client speaks gRPC.
    pub fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// Answers with a complete response the gateway made: a plugin's reply, or its own error
    /// after plugins edited it (`end` says which).
    pub fn send_reply(&mut self, reply: &Reply, end: End) -> Delivered {
        let mut head = response_head(reply);
        let headers = head.headers_mut();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(reply.body.len()));
        let head_only = reply.body.is_empty() || self.head;
        let sent = self
            .respond
            .send_response(head, head_only)
            .and_then(|mut send| {
                if !head_only {
                    // The body is whole in memory: queued at once, sent as the window allows.
                    send.send_data(reply.body.clone(), true)?;
                }
                Ok(if head_only {
                    0
                } else {
                    reply.body.len() as u64
                })
            });
        match sent {
            Ok(bytes_sent) => Delivered {
                status: reply.status,
                bytes_sent,
                upstream_answered: false,
                end,
            },
            Err(_) => Delivered::CLIENT_GONE,
        }
    }

    /// Answers with the gateway's own response for `error`.
    pub fn send_error(&mut self, error: GatewayError) -> Delivered {
        let sent = if self.grpc {
            self.send_grpc_status(error)
        } else {
            self.send_json(error)
        };
        match sent {
            Ok(bytes_sent) => Delivered {
                status: if self.grpc { 200 } else { error.status() },
                bytes_sent,
                upstream_answered: false,
                end: End::of(error),
            },
            Err(_) => Delivered::CLIENT_GONE,
        }
    }

    fn send_json(&mut self, error: GatewayError) -> Result<u64, h2::Error> {
        let mut body = Vec::with_capacity(error.body_len());
        error.write_body(&mut body);
        let mut head = Response::new(());
        *head.status_mut() =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        let headers = head.headers_mut();
        headers.insert(SERVER, HeaderValue::from_static("Pylon"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        if self.head {
            self.respond.send_response(head, true)?;
            return Ok(0);
        }
        let mut send = self.respond.send_response(head, false)?;
        let len = body.len() as u64;
        // A few dozen bytes: queued whatever the client's window, never a build-up.
        send.send_data(Bytes::from(body), true)?;
        Ok(len)
    }

    /// A trailers-only response (gRPC over HTTP/2, "Responses").
    fn send_grpc_status(&mut self, error: GatewayError) -> Result<u64, h2::Error> {
        let mut head = Response::new(());
        let headers = head.headers_mut();
        headers.insert(SERVER, HeaderValue::from_static("Pylon"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(
            "grpc-status",
            HeaderValue::from(u16::from(error.grpc_status())),
        );
        // The messages are printable ASCII without `%`: nothing to percent-encode.
        headers.insert("grpc-message", HeaderValue::from_static(error.message()));
        self.respond.send_response(head, true)?;
        Ok(0)
    }

    /// Sends a response whose body is whole in memory (not to a HEAD); returns the body bytes
    /// sent.
    pub fn send_whole(&mut self, head: http::response::Parts, body: Bytes) -> Result<u64, Halt> {
        let end = body.is_empty() || self.head;
        let len = if end { 0 } else { body.len() as u64 };
        let mut send = self.send_head(Response::from_parts(head, ()), end)?;
        if !end {
            send.send_data(body, true)
                .map_err(|e| self.halted(e.into()))?;
        }
        Ok(len)
    }

    /// Sends the response head; the body follows on the returned stream unless `end`.
    pub fn send_head(&mut self, head: Response<()>, end: bool) -> Result<SendStream<Bytes>, Halt> {
        self.respond
            .send_response(head, end)
            .map_err(|e| self.halted(e.into()))
    }

    /// Sends an interim (1xx) response on; a client that cannot take it gets the final one.
    pub fn send_interim(&mut self, status: u16, headers: HeaderMap) {
        let Ok(status) = StatusCode::from_u16(status) else {
            return;
        };
        let mut head = Response::new(());
        *head.status_mut() = status;
        *head.headers_mut() = headers;
        let _ = self.respond.send_informational(head);
    }

    /// Tells a client waiting on `Expect: 100-continue` to send its body.
    pub fn send_continue(&mut self) {
        self.send_interim(100, HeaderMap::new());
    }

    /// Completes when the client resets the stream before the response head went out.
    pub async fn reset(&mut self) -> Reason {
        let reason = poll_fn(|cx| self.respond.poll_reset(cx))
            .await
            .unwrap_or(Reason::CANCEL);
        self.record_reset();
        reason
    }

    /// Notes why the stream to the client stopped; a reset by the client is counted against
    /// the connection (once per stream).
    pub fn halted(&mut self, halt: Halt) -> Halt {
        if matches!(halt, Halt::Reset(_)) {
            self.record_reset();
        }
        halt
    }

    fn record_reset(&mut self) {
        if !self.reset_recorded {
            self.reset_recorded = true;
            self.conn.record_reset();
        }
    }
}
