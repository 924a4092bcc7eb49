//! The connection engine: reads frames, runs their calls concurrently, writes each answer as
//! soon as it is ready, and writes frames pushed from elsewhere between them.
//!
//! A connection is one future, spawning nothing: its calls run inside it (a
//! `FuturesUnordered`), so a dispatcher's futures may borrow and need not be `Send`, as suits a
//! worker's single-threaded runtime. One hand-written poll reads, writes, completes calls and
//! takes pushes, none waiting for another:
//! - reading stops while `max_in_flight` calls run, or while answers wait for a client that does
//!   not read them: backpressure reaches the client through its TCP window;
//! - answers, error frames and pushes are encoded whole into one write buffer, so no frame is
//!   ever cut by another, and frames ready together leave in one write;
//! - frames are read into one buffer per connection, their bodies split from it, not copied.

use std::future::{poll_fn, Future, Pending};
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

use crate::config::CommandRoute;
use crate::counters::Counters;
use crate::layout::{EncodeError, Frame, FrameError};
use crate::protocol::{ErrorFrame, Protocol};

/// How long a closing connection gives its calls in flight, unless told otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// Room made in the read buffer when it runs low: a read takes many small frames at once.
const READ_BUFFER: usize = 8 * 1024;
/// Answers waiting for the client beyond this stop the reading of new frames.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Rounds of work in one poll before the connection lets the worker's other tasks run.
const MAX_ROUNDS: usize = 32;

/// Where frames become calls: the HTTP pipeline, for the gateway.
pub trait Dispatcher {
    /// Answers `frame`, whose command `route` names. The answer is written with the request's
    /// sequence id, whatever its own.
    fn dispatch(
        &self,
        route: &CommandRoute,
        frame: Frame,
    ) -> impl Future<Output = Result<Frame, DispatchError>>;
}

/// Why a call has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// The call failed. The client gets `on_error`'s error frame with the request's sequence
    /// id and the connection goes on, or, when `on_error` is `close`, the connection closes.
    #[error("the call failed: {0}")]
    Failed(String),
    /// The client must go (its credentials were refused, say): the connection stops reading,
    /// writes the answers of the calls in flight and closes.
    #[error("the call ended the connection: {0}")]
    Close(String),
}

/// Why a connection ended: the first cause, when there were several.
#[derive(Debug, thiserror::Error)]
pub enum Closed {
    #[error("the client closed the connection")]
    ClientClosed,
    #[error("the gateway stops")]
    Stopped,
    /// Silent between frames, or not reading the answers waiting for it.
    #[error("the client was idle for read_timeout")]
    IdleTimeout,
    #[error("the client was silent mid-frame for read_timeout")]
    FrameTimeout,
    #[error("{0}")]
    BadFrame(FrameError),
    #[error("command {0} is not a route's")]
    UnknownCommand(u64),
    #[error("{0}")]
    DispatchFailed(String),
    #[error("an answer that does not fit the layout: {0}")]
    Unencodable(EncodeError),
    #[error("{0}")]
    Refused(String),
    #[error("connection error: {0}")]
    Io(io::Error),
}

/// How a connection ended, and the bytes it moved (for its log line).
#[derive(Debug)]
pub struct Ended {
    pub why: Closed,
    /// Bytes read from the client.
    pub received: u64,
    /// Bytes written to the client.
    pub sent: u64,
}

/// A client connection speaking frames, ready to [`run`](Connection::run).
pub struct Connection<'a, IO, D, S = Pending<()>> {
    protocol: &'a Protocol,
    io: IO,
    dispatcher: &'a D,
    counters: &'a Counters,
    pushes: Option<mpsc::Receiver<Frame>>,
    stop: S,
    grace: Duration,
}

impl<'a, IO, D> Connection<'a, IO, D> {
    /// A connection that runs until the client goes or breaks the protocol.
    pub fn new(protocol: &'a Protocol, io: IO, dispatcher: &'a D, counters: &'a Counters) -> Self {
        Self {
            protocol,
            io,
            dispatcher,
            counters,
            pushes: None,
            stop: std::future::pending(),
            grace: DEFAULT_GRACE,
        }
    }
}

impl<'a, IO, D, S> Connection<'a, IO, D, S>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    D: Dispatcher,
    S: Future<Output = ()>,
{
    /// Frames to write to the client as they come, between answers. A frame is written with
    /// the sequence id it carries; one that does not fit the layout is dropped (and logged):
    /// check with [`crate::Layout::encode`] first. The channel closes when the connection
    /// starts closing; frames already in it are still written.
    pub fn pushes(mut self, pushes: mpsc::Receiver<Frame>) -> Self {
        self.pushes = Some(pushes);
        self
    }

    /// Stops reading when `signal` completes, then writes the answers of the calls in flight
    /// (within the grace period) and closes.
    pub fn stop_on<T: Future<Output = ()>>(self, signal: T) -> Connection<'a, IO, D, T> {
        Connection {
            protocol: self.protocol,
            io: self.io,
            dispatcher: self.dispatcher,
            counters: self.counters,
            pushes: self.pushes,
            stop: signal,
            grace: self.grace,
        }
    }

    /// How long calls in flight may take once the connection stops reading, for whichever
    /// reason ([`DEFAULT_GRACE`] unless set). Calls still running then are dropped.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Serves the connection until it ends, and says why.
    pub async fn run(self) -> Ended {
        let Connection {
            protocol,
            io,
            dispatcher,
            counters,
            pushes,
            stop,
            grace,
        } = self;
        let call = |route: &'a CommandRoute, frame: Frame| {
            let sequence = frame.sequence;
            async move { (sequence, dispatcher.dispatch(route, frame).await) }
        };
        let mut calls = FuturesUnordered::new();
        let mut stop = pin!(stop);
        let mut driver = Driver::new(protocol, counters, io, pushes, grace);
        let why = poll_fn(|cx| driver.poll(cx, &mut calls, &call, stop.as_mut())).await;
        Ended {
            why,
            received: driver.received,
            sent: driver.sent,
        }
    }
}

/// A call's request sequence id, and its outcome.
type Answer = (u64, Result<Frame, DispatchError>);

/// A running connection's state, but for its calls (whose type only `run` can name).
struct Driver<'a, IO> {
    protocol: &'a Protocol,
    counters: &'a Counters,
    io: IO,
    read: BytesMut,
    write: BytesMut,
    /// Bytes were written since the last flush.
    unflushed: bool,
    /// `None` once the channel is closed and empty.
    pushes: Option<mpsc::Receiver<Frame>>,
    grace: Duration,
    /// Why the connection stopped reading; `None` while it reads.
    closing: Option<Closed>,
    /// Fires at the read timeout, or once closing, at the end of the grace period.
    timer: Pin<Box<Sleep>>,
    /// When the client, if it stays silent, times out. Each read, and each write the client
    /// takes, moves it without touching the timer, which, when it fires early, is set again:
    /// cheaper than a timer reset per read.
    silent_until: Instant,
    /// The connection was waiting for the client at the last poll: silence counts from when
    /// it starts waiting.
    waiting: bool,
    received: u64,
    sent: u64,
}

impl<'a, IO: AsyncRead + AsyncWrite + Unpin> Driver<'a, IO> {
    fn new(
        protocol: &'a Protocol,
        counters: &'a Counters,
        io: IO,
        pushes: Option<mpsc::Receiver<Frame>>,
        grace: Duration,
    ) -> Self {
        let silent_until = Instant::now() + protocol.read_timeout();
        Self {
            protocol,
            counters,
            io,
            read: BytesMut::with_capacity(READ_BUFFER),
            write: BytesMut::new(),
            unflushed: false,
            pushes,
            grace,
            closing: None,
            timer: Box::pin(tokio::time::sleep_until(silent_until)),
            silent_until,
            waiting: false,
            received: 0,
            sent: 0,
        }
    }

    fn poll<F, C, S>(
        &mut self,
        cx: &mut Context<'_>,
        calls: &mut FuturesUnordered<F>,
        call: &C,
        mut stop: Pin<&mut S>,
    ) -> Poll<Closed>
    where
        F: Future<Output = Answer>,
        C: Fn(&'a CommandRoute, Frame) -> F,
        S: Future<Output = ()>,
    {
        for _ in 0..MAX_ROUNDS {
            let mut progress = false;
            if self.closing.is_none() && stop.as_mut().poll(cx).is_ready() {
                self.stop_reading(Closed::Stopped);
                progress = true;
            }
            while let Poll::Ready(Some((sequence, outcome))) = calls.poll_next_unpin(cx) {
                self.answer(sequence, outcome);
                progress = true;
            }
            progress |= self.take_pushes(cx);
            match self.read_frames(cx, calls, call) {
                Ok(read) => progress |= read,
                Err(e) => return Poll::Ready(self.abort(e, calls.len())),
            }
            progress |= self.check_silence(cx, calls.len());
            match self.flush(cx) {
                Ok(wrote) => progress |= wrote,
                Err(e) => return Poll::Ready(self.abort(e, calls.len())),
            }
            if !progress {
                return self.poll_end(cx, calls.len());
            }
        }
        // Still busy after many rounds: let the worker's other connections run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Reads and dispatches frames while the connection may take more.
    fn read_frames<F, C>(
        &mut self,
        cx: &mut Context<'_>,
        calls: &mut FuturesUnordered<F>,
        call: &C,
    ) -> io::Result<bool>
    where
        C: Fn(&'a CommandRoute, Frame) -> F,
    {
        let protocol = self.protocol;
        let mut progress = false;
        while self.closing.is_none()
            && calls.len() < protocol.max_in_flight()
            && self.write.len() < WRITE_HIGH_WATER
        {
            match protocol.layout().decode(&mut self.read) {
                Ok(Some(frame)) => {
                    self.counters.frame_in();
                    match protocol.route(frame.command) {
                        Some(route) => calls.push(call(route, frame)),
                        None => self.unknown_command(&frame),
                    }
                }
                Ok(None) => {
                    if self.read.capacity() - self.read.len() < READ_BUFFER / 4 {
                        self.read.reserve(READ_BUFFER);
                    }
                    match poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read) {
                        Poll::Pending => break,
                        Poll::Ready(Ok(0)) => self.end_of_input(),
                        Poll::Ready(Ok(n)) => {
                            self.received += n as u64;
                            self.silent_until = Instant::now() + protocol.read_timeout();
                        }
                        Poll::Ready(Err(e)) => return Err(e),
                    }
                }
                Err(error) => self.bad_frame(error),
            }
            progress = true;
        }
        Ok(progress)
    }

    fn answer(&mut self, sequence: u64, outcome: Result<Frame, DispatchError>) {
        let failure = match outcome {
            Ok(mut frame) => {
                frame.sequence = sequence;
                match self.protocol.layout().encode(&frame, &mut self.write) {
                    Ok(()) => {
                        self.counters.frame_out();
                        return;
                    }
                    Err(e) => Closed::Unencodable(e),
                }
            }
            Err(DispatchError::Failed(reason)) => Closed::DispatchFailed(reason),
            Err(DispatchError::Close(reason)) => {
                self.stop_reading(Closed::Refused(reason));
                return;
            }
        };
        self.counters.dispatch_error();
        tracing::debug!(sequence, "a frame without an answer: {failure}");
        match self.protocol.on_error() {
            Some(error) => self.write_error(error, sequence),
            None => self.stop_reading(failure),
        }
    }

    fn unknown_command(&mut self, frame: &Frame) {
        self.counters.unknown_command();
        match self.protocol.unknown_command() {
            Some(error) => self.write_error(error, frame.sequence),
            None => self.stop_reading(Closed::UnknownCommand(frame.command)),
        }
    }

    /// The frame at the front of the read buffer is bad: the connection cannot find the next
    /// one, so it says so (if configured) and closes.
    fn bad_frame(&mut self, error: FrameError) {
        self.counters.bad_frame(&error);
        self.error_for_unread();
        self.stop_reading(Closed::BadFrame(error));
    }

    /// Writes `on_error`'s frame for the frame at the front of the read buffer, with its
    /// sequence id when its header is there.
    fn error_for_unread(&mut self) {
        if let Some(error) = self.protocol.on_error() {
            let sequence = self.protocol.layout().sequence_of(&self.read);
            self.write_error(error, sequence.unwrap_or(0));
        }
    }

    fn end_of_input(&mut self) {
        if self.read.is_empty() {
            self.stop_reading(Closed::ClientClosed);
        } else {
            let received = self.read.len();
            self.bad_frame(FrameError::Truncated { received });
        }
    }

    fn write_error(&mut self, error: &ErrorFrame, sequence: u64) {
        let at = self.write.len();
        self.write.extend_from_slice(error.bytes());
        (self.protocol.layout()).set_sequence(&mut self.write[at..], sequence);
        self.counters.frame_out();
    }

    fn take_pushes(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.write.len() < WRITE_HIGH_WATER {
            let Some(pushes) = &mut self.pushes else {
                break;
            };
            match pushes.poll_recv(cx) {
                Poll::Ready(Some(frame)) => {
                    match self.protocol.layout().encode(&frame, &mut self.write) {
                        Ok(()) => self.counters.frame_out(),
                        Err(e) => tracing::warn!("a pushed frame dropped: {e}"),
                    }
                }
                Poll::Ready(None) => self.pushes = None,
                Poll::Pending => break,
            }
            progress = true;
        }
        progress
    }

    /// Times out a client silent for `read_timeout` while the connection waits for it: to take
    /// the answers waiting for it, to send the rest of a frame, or, with no call in flight, to
    /// send the next one. A client waiting for its answers is not silent.
    fn check_silence(&mut self, cx: &mut Context<'_>, in_flight: usize) -> bool {
        let blocked_on_writes = self.write.len() >= WRITE_HIGH_WATER;
        let reads = in_flight < self.protocol.max_in_flight() && !blocked_on_writes;
        let waiting = self.closing.is_none()
            && (blocked_on_writes || (reads && (in_flight == 0 || !self.read.is_empty())));
        let starts = waiting && !self.waiting;
        self.waiting = waiting;
        if !waiting {
            return false;
        }
        if starts {
            self.silent_until = Instant::now() + self.protocol.read_timeout();
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            if self.timer.deadline() >= self.silent_until {
                self.timed_out(blocked_on_writes);
                return true;
            }
            let until = self.silent_until;
            self.timer.as_mut().reset(until);
        }
        false
    }

    fn timed_out(&mut self, blocked_on_writes: bool) {
        self.counters.timeout();
        if blocked_on_writes || self.read.is_empty() {
            self.stop_reading(Closed::IdleTimeout);
        } else {
            self.error_for_unread();
            self.stop_reading(Closed::FrameTimeout);
        }
    }

    /// Stops reading for `reason` (unless already stopped), and starts the grace period.
    fn stop_reading(&mut self, reason: Closed) {
        if self.closing.is_some() {
            return;
        }
        self.closing = Some(reason);
        let until = Instant::now() + self.grace;
        self.timer.as_mut().reset(until);
        if let Some(pushes) = &mut self.pushes {
            pushes.close();
        }
    }

    /// Writes what is waiting in the write buffer, and flushes it.
    fn flush(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut progress = false;
        while !self.write.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.write) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.write.advance(n);
                    self.sent += n as u64;
                    self.unflushed = true;
                    progress = true;
                    // The client takes what it is sent: it is not silent.
                    self.silent_until = Instant::now() + self.protocol.read_timeout();
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(progress),
            }
        }
        if self.unflushed {
            if let Poll::Ready(flushed) = Pin::new(&mut self.io).poll_flush(cx) {
                flushed?;
                self.unflushed = false;
            }
        }
        Ok(progress)
    }

    /// With nothing more to do now: ends a closing connection once everything is written, or
    /// once its grace period is over.
    fn poll_end(&mut self, cx: &mut Context<'_>, in_flight: usize) -> Poll<Closed> {
        if self.closing.is_none() {
            return Poll::Pending;
        }
        let done = in_flight == 0 && self.pushes.is_none() && self.write.is_empty();
        if done {
            // The end of the stream (a TCP FIN, a TLS close_notify); the client may be gone.
            match Pin::new(&mut self.io).poll_shutdown(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => tracing::debug!("closing a frames connection: {e}"),
                Poll::Ready(Ok(())) => {}
            }
        } else if self.timer.as_mut().poll(cx).is_ready() {
            self.counters.abandoned(in_flight);
        } else {
            return Poll::Pending;
        }
        // `closing` is set: checked above.
        Poll::Ready(self.closing.take().unwrap_or(Closed::Stopped))
    }

    /// The connection failed: it ends now, with its first cause.
    fn abort(&mut self, error: io::Error, in_flight: usize) -> Closed {
        self.counters.abandoned(in_flight);
        match self.closing.take() {
            Some(first) => {
                tracing::debug!("closing a frames connection: {error}");
                first
            }
            None => Closed::Io(error),
        }
    }
}
