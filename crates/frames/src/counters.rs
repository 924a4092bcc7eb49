//! What connections count, for metrics. One [`Counters`] is shared by the connections that
//! should add up (a worker's, a route's); it can be read at any time, from any thread. The
//! engine counts for its connections; an entry point that carries frames otherwise (one per
//! WebSocket message) counts with the same methods.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::layout::FrameError;

#[derive(Debug, Default)]
pub struct Counters {
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    missing_start: AtomicU64,
    bad_end: AtomicU64,
    too_long: AtomicU64,
    bad_length: AtomicU64,
    truncated: AtomicU64,
    unknown_commands: AtomicU64,
    dispatch_errors: AtomicU64,
    bad_messages: AtomicU64,
    timeouts: AtomicU64,
    abandoned: AtomicU64,
}

/// The counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterValues {
    /// Whole frames read, of known commands or not.
    pub frames_in: u64,
    /// Frames written: answers, error frames and pushed frames.
    pub frames_out: u64,
    /// Bad frames, by [`FrameError`] kind.
    pub missing_start: u64,
    pub bad_end: u64,
    pub too_long: u64,
    pub bad_length: u64,
    pub truncated: u64,
    /// Frames whose command no route names.
    pub unknown_commands: u64,
    /// Calls that failed, or whose answer did not fit the layout.
    pub dispatch_errors: u64,
    /// WebSocket messages that are not one frame, or not one JSON call, of a bridged route.
    pub bad_messages: u64,
    /// Clients silent for `read_timeout`, mid-frame or between frames.
    pub timeouts: u64,
    /// Calls still in flight when a closing connection's grace period ended.
    pub abandoned: u64,
}

impl Counters {
    pub fn read(&self) -> CounterValues {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CounterValues {
            frames_in: get(&self.frames_in),
            frames_out: get(&self.frames_out),
            missing_start: get(&self.missing_start),
            bad_end: get(&self.bad_end),
            too_long: get(&self.too_long),
            bad_length: get(&self.bad_length),
            truncated: get(&self.truncated),
            unknown_commands: get(&self.unknown_commands),
            dispatch_errors: get(&self.dispatch_errors),
            bad_messages: get(&self.bad_messages),
            timeouts: get(&self.timeouts),
            abandoned: get(&self.abandoned),
        }
    }

    pub fn frame_in(&self) {
        add(&self.frames_in, 1);
    }

    pub fn frame_out(&self) {
        add(&self.frames_out, 1);
    }

    pub fn bad_frame(&self, error: &FrameError) {
        let counter = match error {
            FrameError::MissingStart => &self.missing_start,
            FrameError::BadEnd => &self.bad_end,
            FrameError::TooLong { .. } => &self.too_long,
            FrameError::BadLength { .. } => &self.bad_length,
            FrameError::Truncated { .. } => &self.truncated,
        };
        add(counter, 1);
    }

    pub fn unknown_command(&self) {
        add(&self.unknown_commands, 1);
    }

    pub fn dispatch_error(&self) {
        add(&self.dispatch_errors, 1);
    }

    pub fn bad_message(&self) {
        add(&self.bad_messages, 1);
    }

    pub fn timeout(&self) {
        add(&self.timeouts, 1);
    }

    pub fn abandoned(&self, calls: usize) {
        add(&self.abandoned, calls as u64);
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
