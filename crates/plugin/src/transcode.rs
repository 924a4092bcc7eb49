//! Transcoders: what a plugin that speaks gRPC to the upstream for a client that does not
//! (`grpc-transcode`, `grpc-web`) puts in the place of the proxied exchange.
//!
//! The gateway keeps the transport: it reads the client's body, picks the node, sends the
//! call on its HTTP/2 connection, and writes the client's response in the client's protocol.
//! The transcoder only translates, one request at a time: the body into a call, and the
//! call's response head, messages and trailers into the client's response.

use std::time::Duration;

use bytes::Bytes;

use crate::context::{RequestCtx, ResponseHeaders};
use crate::reply::Reply;

/// One gRPC call to the route's upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcCall {
    /// `/package.Service/Method`.
    pub path: String,
    /// Headers besides `content-type: application/grpc` and `te: trailers`, which every
    /// call has (`grpc-timeout`, metadata).
    pub headers: Vec<(String, String)>,
    /// The request messages, each in its gRPC frame.
    pub body: Bytes,
    /// The most the call may take from its start to its last trailer; past it the gateway
    /// cancels the call and asks the transcoder for its answer ([`Transcoder::expired`]).
    /// `None`: the route's timeouts apply.
    pub deadline: Option<Duration>,
}

/// The client's response head.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// What a transcoder makes of a piece of the call's response, for the client.
#[derive(Debug, Default)]
pub struct Answer {
    /// The client's response head, once the transcoder knows it: the gateway sends it before
    /// any body. One set at the end (with the trailers) goes out with the whole body, its
    /// length declared.
    pub head: Option<AnswerHead>,
    /// Body for the client, in order.
    pub body: Vec<u8>,
}

/// Made per request by [`crate::Plugin::transcoder`]. The gateway calls [`Transcoder::call`]
/// once, then [`Transcoder::head`], [`Transcoder::data`] for each piece of the response as it
/// arrives, and [`Transcoder::end`]; or [`Transcoder::expired`] when the deadline passes
/// first. An upstream that cannot be reached or breaks its response gets the gateway's own
/// error (502, 504) while no head went out, and a cut-short response after.
pub trait Transcoder: Send {
    /// The most bytes of request body it reads: a longer body is refused with 413.
    fn body_limit(&self) -> usize;

    /// The call for this request, from its whole body; `Err(reply)` answers the client
    /// instead (a body that is not the method's JSON, say).
    fn call(&mut self, ctx: &RequestCtx<'_>, body: Bytes) -> Result<GrpcCall, Reply>;

    /// The call's response head: its HTTP status and headers (the `grpc-status` of a
    /// trailers-only response among them).
    fn head(&mut self, status: u16, headers: &dyn ResponseHeaders, out: &mut Answer);

    /// The next piece of the call's response body, as it arrived (frames may be split).
    fn data(&mut self, piece: &[u8], out: &mut Answer);

    /// The call ended: with its trailers, or `None` when it ended without (then the status
    /// is in the head, or missing). `out.head` must be set by now if it was not before.
    fn end(&mut self, trailers: Option<&dyn ResponseHeaders>, out: &mut Answer);

    /// The deadline passed before the call ended (the gateway has cancelled it). `out.head`
    /// must be set by now if it was not before.
    fn expired(&mut self, out: &mut Answer);
}
