//! Bodies over HTTP/2 streams, under flow control end to end.
//!
//! Sending waits for the receiver's window before each piece, so nothing piles up in a send
//! buffer; receiving gives window back only after the bytes went on. What a relay holds is
//! therefore bounded by the windows on either side, however large the body.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::HeaderMap;
use pylon_plugin::{BodyFilters, Reply, RequestBodyInspectors, RequestTaps};

/// Why a stream stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Halt {
    /// The peer reset the stream.
    Reset(Reason),
    /// A read or a wait for window took longer than its timeout.
    TimedOut,
    /// The connection under the stream failed or went away.
    Gone,
}

impl From<h2::Error> for Halt {
    fn from(e: h2::Error) -> Self {
        match e.reason() {
            Some(reason) if e.is_reset() && e.is_remote() => Halt::Reset(reason),
            _ => Halt::Gone,
        }
    }
}

/// Sends `data`, each piece no larger than the window the receiver has opened, waiting at
/// most `timeout` for each opening. `end` ends the stream with the last piece.
pub(super) async fn send_data(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    timeout: Duration,
) -> Result<(), Halt> {
    if data.is_empty() {
        return send.send_data(data, end).map_err(Halt::from);
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = loop {
            let capacity = send.capacity();
            if capacity > 0 {
                break capacity;
            }
            match tokio::time::timeout(timeout, poll_fn(|cx| send.poll_capacity(cx))).await {
                Err(_) => return Err(Halt::TimedOut),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(e.into()),
                // The stream can no longer send: the receiver reset it.
                Ok(None) => return Err(reset_reason(send).await),
            }
        };
        let piece = data.split_to(granted.min(data.len()));
        send.send_data(piece, end && data.is_empty())?;
    }
    Ok(())
}

/// Ends the stream: with `trailers` if there are any, else with an empty DATA frame.
pub(super) fn finish(
    send: &mut SendStream<Bytes>,
    trailers: Option<HeaderMap>,
) -> Result<(), Halt> {
    match trailers {
        Some(trailers) => send.send_trailers(trailers),
        None => send.send_data(Bytes::new(), true),
    }
    .map_err(Halt::from)
}

async fn reset_reason(send: &mut SendStream<Bytes>) -> Halt {
    match poll_fn(|cx| match send.poll_reset(cx) {
        Poll::Ready(result) => Poll::Ready(Some(result)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
    {
        Some(Ok(reason)) => Halt::Reset(reason),
        _ => Halt::Gone,
    }
}

/// Completes when the receiver resets the stream.
pub(super) async fn reset_by_peer(send: &mut SendStream<Bytes>) -> Halt {
    match poll_fn(|cx| send.poll_reset(cx)).await {
        Ok(reason) => Halt::Reset(reason),
        Err(e) => e.into(),
    }
}

/// The next piece of body, waiting at most `timeout`; `None` once the data is complete (the
/// trailers, if any, are still to be read).
pub(super) async fn next_data(
    recv: &mut RecvStream,
    timeout: Duration,
) -> Result<Option<Bytes>, Halt> {
    match tokio::time::timeout(timeout, recv.data()).await {
        Err(_) => Err(Halt::TimedOut),
        Ok(None) => Ok(None),
        Ok(Some(Ok(data))) => Ok(Some(data)),
        Ok(Some(Err(e))) => Err(e.into()),
    }
}

/// The trailers after the data, if the sender sent any, waiting at most `timeout`.
pub(super) async fn trailers(
    recv: &mut RecvStream,
    timeout: Duration,
) -> Result<Option<HeaderMap>, Halt> {
    match tokio::time::timeout(timeout, recv.trailers()).await {
        Err(_) => Err(Halt::TimedOut),
        Ok(result) => result.map_err(Halt::from),
    }
}

/// Gives `n` received bytes of window back to the sender: they have gone on.
pub(super) fn release(recv: &mut RecvStream, n: usize) {
    // Fails only when the stream is already gone, and then there is no one to give it to.
    let _ = recv.flow_control().release_capacity(n);
}

/// Which end of a relay stopped it.
#[derive(Debug, Clone, Copy)]
pub(super) enum PipeError {
    Source(Halt),
    Destination(Halt),
}

/// A body on its way out of a stream, through the plugins' body filters when it is a
/// response they filter.
pub(super) struct BodyOut<'s> {
    send: &'s mut SendStream<Bytes>,
    filters: BodyFilters,
    timeout: Duration,
    /// Data bytes sent so far.
    sent: u64,
}

impl<'s> BodyOut<'s> {
    /// A body sent as it comes, each wait for window at most `timeout`.
    pub fn plain(send: &'s mut SendStream<Bytes>, timeout: Duration) -> Self {
        BodyOut::filtered(send, BodyFilters::default(), timeout)
    }

    /// A body that goes through `filters` (none: as it comes).
    pub fn filtered(
        send: &'s mut SendStream<Bytes>,
        filters: BodyFilters,
        timeout: Duration,
    ) -> Self {
        BodyOut {
            send,
            filters,
            timeout,
            sent: 0,
        }
    }

    /// Data bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Sends a piece of the body; `last` ends the stream with it.
    pub async fn data(&mut self, data: Bytes, last: bool) -> Result<(), Halt> {
        if self.filters.is_empty() {
            self.sent += data.len() as u64;
            return send_data(self.send, data, last, self.timeout).await;
        }
        let mut piece = Vec::from(data);
        self.filters.run(&mut piece, false);
        self.send_filtered(piece).await?;
        if last {
            self.finish(None).await?;
        }
        Ok(())
    }

    /// Ends the stream after what the filters still hold: with `trailers` if there are
    /// any, else with an empty DATA frame.
    pub async fn finish(&mut self, trailers: Option<HeaderMap>) -> Result<(), Halt> {
        if !self.filters.is_empty() {
            let mut rest = Vec::new();
            self.filters.run(&mut rest, true);
            self.send_filtered(rest).await?;
        }
        finish(self.send, trailers)
    }

    async fn send_filtered(&mut self, piece: Vec<u8>) -> Result<(), Halt> {
        if piece.is_empty() {
            return Ok(());
        }
        self.sent += piece.len() as u64;
        send_data(self.send, Bytes::from(piece), false, self.timeout).await
    }

    /// Completes when the receiver resets the stream.
    pub async fn reset_by_peer(&mut self) -> Halt {
        reset_by_peer(self.send).await
    }

    pub fn send_reset(&mut self, reason: Reason) {
        self.send.send_reset(reason);
    }
}

/// Relays the rest of `recv` to `out`: the data, then the trailers or the end of the stream,
/// showing `observe` each piece as it passes. Returns the data bytes sent.
pub(super) async fn pipe(
    recv: &mut RecvStream,
    out: &mut BodyOut<'_>,
    read_timeout: Duration,
    mut observe: impl FnMut(&[u8]),
) -> Result<u64, PipeError> {
    loop {
        let data = tokio::select! {
            biased;
            halt = out.reset_by_peer() => return Err(PipeError::Destination(halt)),
            data = next_data(recv, read_timeout) => data.map_err(PipeError::Source)?,
        };
        let Some(data) = data else { break };
        observe(&data);
        let len = data.len();
        out.data(data, false)
            .await
            .map_err(PipeError::Destination)?;
        release(recv, len);
    }
    let trailers = trailers(recv, read_timeout)
        .await
        .map_err(PipeError::Source)?;
    out.finish(trailers).await.map_err(PipeError::Destination)?;
    Ok(out.sent())
}

/// Most request body held before the upstream is chosen; a longer one streams as it comes.
const PREFETCH_LIMIT: usize = 64 * 1024;

/// A request body, with what of it the gateway holds before the upstream is chosen: the whole
/// body when its declared length is within [`PREFETCH_LIMIT`] (as nginx reads a body before
/// proxying it), else what had arrived with the head. Unary gRPC calls and small uploads are
/// thereby whole in hand, so a failed attempt can be retried on another node, as an HTTP/1
/// body already in the read buffer can be.
pub(super) struct RequestBody {
    pub recv: RecvStream,
    early: Vec<Bytes>,
    early_len: usize,
    /// The whole body (and its trailers) is in hand.
    pub complete: bool,
    pub trailers: Option<HeaderMap>,
    /// Early bytes whose window the client has not had back yet.
    unreleased: usize,
    /// Plugins' copies of the body, which get what streams beyond the early data as it
    /// passes (see [`RequestBody::tap`]).
    pub taps: RequestTaps,
}

impl RequestBody {
    /// The body of a request, nothing of it held yet.
    pub fn new(recv: RecvStream) -> Self {
        RequestBody {
            complete: recv.is_end_stream(),
            recv,
            early: Vec::new(),
            early_len: 0,
            trailers: None,
            unreleased: 0,
            taps: RequestTaps::default(),
        }
    }

    /// Puts plugins' taps on the body: what is held is copied to them now, and what streams
    /// later is by whoever relays it.
    pub fn tap(&mut self, mut taps: RequestTaps) {
        if taps.is_empty() {
            return;
        }
        for piece in &self.early {
            taps.piece(piece);
        }
        if self.complete {
            taps.end();
        } else {
            self.taps = taps;
        }
    }

    /// Reads a body of `declared` length within the limit whole (each read at most
    /// `timeout`); of any other, takes what has already arrived without waiting.
    pub async fn prefetch(&mut self, declared: Option<u64>, timeout: Duration) -> Result<(), Halt> {
        if declared.is_some_and(|n| n <= PREFETCH_LIMIT as u64) {
            // Whole: to its end, which the declared length bounds.
            self.hold(usize::MAX, timeout).await
        } else {
            self.take_arrived()
        }
    }

    /// Reads on until `limit` bytes of the body are held, or all of it (each read at most
    /// `timeout`).
    pub async fn hold(&mut self, limit: usize, timeout: Duration) -> Result<(), Halt> {
        while !self.complete && self.early_len < limit {
            match next_data(&mut self.recv, timeout).await? {
                // The window goes back at once: what is held is bounded by the limit, and a
                // window smaller than the body must not stall it.
                Some(data) => {
                    release(&mut self.recv, data.len());
                    self.push(data);
                }
                None => {
                    self.trailers = trailers(&mut self.recv, timeout).await?;
                    self.complete = true;
                }
            }
        }
        Ok(())
    }

    /// Shows the held body to `inspectors`, piece by piece as it came; `Some(refusal)` when
    /// one refuses the request.
    pub fn inspect_held(&self, inspectors: &mut RequestBodyInspectors) -> Option<Reply> {
        if inspectors.is_empty() {
            return None;
        }
        let mut offset = 0;
        for piece in &self.early {
            if let Some(refusal) = inspectors.inspect(offset, piece) {
                return Some(refusal);
            }
            offset += piece.len();
        }
        inspectors.finish(self.early_len, self.complete)
    }

    fn take_arrived(&mut self) -> Result<(), Halt> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        while !self.complete && self.early_len < PREFETCH_LIMIT {
            match self.recv.poll_data(&mut cx) {
                Poll::Ready(Some(data)) => {
                    let data = data?;
                    self.unreleased += data.len();
                    self.push(data);
                }
                Poll::Ready(None) => {
                    if let Poll::Ready(trailers) = self.recv.poll_trailers(&mut cx) {
                        self.trailers = trailers?;
                        self.complete = true;
                    }
                    break;
                }
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    fn push(&mut self, data: Bytes) {
        self.early_len += data.len();
        self.early.push(data);
    }

    /// The data that arrived early, in order.
    pub fn early(&self) -> &[Bytes] {
        &self.early
    }

    pub fn early_len(&self) -> usize {
        self.early_len
    }

    /// Nothing at all to send after the head.
    pub fn is_empty(&self) -> bool {
        self.complete && self.early_len == 0 && self.trailers.is_none()
    }

    /// Gives the early data's window back to the client, once an attempt has sent it on; the
    /// data itself stays for a retry.
    pub fn release_early(&mut self) {
        let n = std::mem::take(&mut self.unreleased);
        release(&mut self.recv, n);
    }
}
