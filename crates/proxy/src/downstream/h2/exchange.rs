//! What every attempt of one stream shares, and how an attempt with an upload running beside
//! its download ends.

use std::cell::Cell;
use std::future::Future;

use bytes::Bytes;
use http::header::HeaderValue;
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use pylon_plugin::{BodyFilters, HeaderEdits, RequestCtx, ResponseHeaders};

use super::body::{Halt, PipeError};
use super::client::{Client, Delivered};
use crate::attempts::Failure;
use crate::error::GatewayError;
use crate::http1::{has_token, is_hop_by_hop};
use crate::outbound::{append_header, RequestContext};
use crate::pipeline::{Plugins, ResponseChanges};
use crate::snapshot::{Timeouts, UpstreamTarget};
use crate::worker::Worker;

/// What every attempt of one stream shares.
pub(super) struct Exchange<'a> {
    pub worker: &'a Worker,
    pub parts: &'a Parts,
    /// The body's length, if the client declared it.
    pub declared: Option<u64>,
    pub context: RequestContext<'a>,
    pub upstream: &'a UpstreamTarget,
    pub timeouts: Timeouts,
    pub plugins: Plugins<'a>,
    pub ctx: &'a RequestCtx<'a>,
}

impl Exchange<'_> {
    /// The client holds its body back for a `100 Continue` (`Expect: 100-continue`), which
    /// the gateway gives once an upstream has the head: the expectation is not forwarded.
    pub fn expects_continue(&self) -> bool {
        self.parts
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| has_token(v.as_bytes(), "100-continue"))
    }
}

impl Exchange<'_> {
    /// The response head as the client gets it, after the plugins' edits, and what becomes
    /// of the body.
    pub fn filter_head(&self, head: &mut http::response::Parts) -> ResponseBody {
        let ResponseChanges {
            edits,
            body: mut filters,
        } = self.plugins.response(
            self.ctx,
            head.status.as_u16(),
            &HeaderMapView(&head.headers),
        );
        if let Some(status) = edits.status.and_then(|s| StatusCode::from_u16(s).ok()) {
            head.status = status;
        }
        apply_header_edits(&mut head.headers, &edits.headers);
        if let Some(body) = &edits.body {
            let body = filters.run_whole(body.clone());
            head.headers.remove(http::header::CONTENT_ENCODING);
            head.headers
                .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            return ResponseBody::Replaced(body);
        }
        if !filters.is_empty() {
            // The filtered body's length is known only at its end.
            head.headers.remove(http::header::CONTENT_LENGTH);
        }
        ResponseBody::Relayed(filters)
    }
}

/// What the client gets for a body, once the plugins had their say on the head.
pub(super) enum ResponseBody {
    /// The upstream's, through these filters (none, for most responses).
    Relayed(BodyFilters),
    /// This one instead; the upstream's is not read.
    Replaced(Bytes),
}

/// Applies header edits to an HTTP/2 header map; a header HTTP/2 cannot carry is left out.
pub(super) fn apply_header_edits(headers: &mut HeaderMap, edits: &HeaderEdits) {
    for name in edits.replaced() {
        headers.remove(name);
    }
    for (name, value) in edits.added() {
        if !is_hop_by_hop(name) {
            append_header(headers, name.as_bytes(), value.as_bytes());
        }
    }
}

/// An HTTP/2 header map as plugins read it.
pub(super) struct HeaderMapView<'a>(pub &'a HeaderMap);

impl ResponseHeaders for HeaderMapView<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.0.get(name).map(HeaderValue::as_bytes)
    }
}

/// How an exchange ended, seen from the client's side of it.
pub(super) enum Ended<T> {
    /// The upstream's response went to the client (or failed before any of it did).
    Received(Result<T, Failure>),
    /// The client reset the stream, or its connection failed, mid-body.
    ClientGone(Halt),
    /// The client stalled mid-body.
    ClientTimedOut,
}

/// Runs `download` (the response to the client) with `upload` (the rest of the request body
/// to the upstream) beside it, until the download ends or the client's side of the upload
/// fails. An upstream that stops taking the body does not end the exchange: it may still
/// answer (413, say). `upload_done` is set once the whole body went up.
pub(super) async fn with_upload<T>(
    upload: impl Future<Output = Result<(), PipeError>>,
    download: impl Future<Output = Result<T, Failure>>,
    upload_done: &Cell<bool>,
) -> Ended<T> {
    tokio::pin!(upload, download);
    let mut upload_failed = false;
    loop {
        tokio::select! {
            sent = &mut upload, if !upload_done.get() && !upload_failed => match sent {
                Ok(()) => upload_done.set(true),
                Err(PipeError::Source(Halt::TimedOut)) => return Ended::ClientTimedOut,
                Err(PipeError::Source(halt)) => return Ended::ClientGone(halt),
                Err(PipeError::Destination(_)) => upload_failed = true,
            },
            received = &mut download => return Ended::Received(received.map_err(|mut f| {
                // The body was partly streamed: it cannot be sent again.
                f.replayable = false;
                f
            })),
        }
    }
}

impl<T> Ended<T> {
    /// The upstream's outcome; or, when the client ended the exchange, what it got: nothing
    /// once it is gone, a 408 for a stalled body unless a response was already under way
    /// (that one is cut off: the stream is reset when its handles go). The client's faults
    /// never count against the node.
    pub fn settle(
        self,
        client: &mut Client,
        head_sent: bool,
    ) -> Result<Result<T, Failure>, Delivered> {
        match self {
            Ended::Received(received) => Ok(received),
            Ended::ClientGone(halt) => {
                client.halted(halt);
                Err(Delivered::CLIENT_GONE)
            }
            Ended::ClientTimedOut if head_sent => Err(Delivered::CLIENT_GONE),
            Ended::ClientTimedOut => Err(client.send_error(GatewayError::RequestTimeout)),
        }
    }
}
