//! Pylon's framed binary protocol: clients that speak frames (a start marker, a fixed-size
//! header, a body, an end marker, as HelloTalk's IM clients do) over a stream, each frame a call
//! whose answer is a frame with the same sequence id.
//!
//! - [`FramesConfig`]: a stream route's `protocol.conf`, parsed and validated with field paths.
//! - [`Layout`]: where the markers, the header's fields and the body are; the codec.
//! - [`Protocol`]: a configuration compiled once: layout, commands, error frames, limits.
//! - [`Connection`]: serves one connection with a [`Dispatcher`] that turns frames into calls,
//!   many in flight, answers in completion order, pushed frames in between, counted in
//!   [`Counters`].
//!
//! Nothing here opens a socket: the listeners hand connections over.
#![forbid(unsafe_code)]

mod config;
mod connection;
mod counters;
mod layout;
mod protocol;

pub use config::{
    ByteOrder, CommandRoute, ErrorAction, FieldSpec, FramesConfig, LayoutConfig, LengthIncludes,
    MAX_MARKER, PROTOCOL_NAME,
};
pub use connection::{Closed, Connection, DispatchError, Dispatcher, Ended, DEFAULT_GRACE};
pub use counters::{CounterValues, Counters};
pub use layout::{EncodeError, FieldId, Fields, Frame, FrameError, Layout, MAX_FIELDS};
pub use protocol::Protocol;
