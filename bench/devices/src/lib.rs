//! A device simulator for Pylon's push gateway: many device connections from one process,
//! speaking the pylon-push device protocol (frames over TCP in the default layout, or
//! WebSocket with [`Options::websocket`]), for the gateway's tests and benchmarks.
//!
//! A [`Fleet`] runs every connection as a task on one current-thread tokio runtime on its own
//! thread, and offers a blocking API so that tests can be plain `#[test]` functions:
//!
//! - [`Fleet::connect`] opens and authenticates devices a bounded number at a time and
//!   reports each device's [`Outcome`];
//! - devices ping at the interval the gateway gave (or [`Options::ping_every`]), acknowledge
//!   every push (unless [`Fleet::set_ack`] turns it off) and answer nothing else;
//! - everything a device receives is recorded: its pushes in arrival order with the instant
//!   and the connection they came on ([`Received`]), its `auth_ok`, `error` and `reconnect`
//!   frames and how each connection ended ([`DeviceState`]); [`Fleet::wait_until`] waits for
//!   a condition over all of it;
//! - [`Fleet::disconnect`], [`Fleet::reconnect`], [`Fleet::reconnect_all`] and
//!   [`Options::follow_reconnect`] move devices between connections and nodes;
//! - [`Fleet::send_raw`], [`raw_session`] and the [`frame`] codec serve hostile-input tests.
//!
//! ```no_run
//! use std::time::Duration;
//! use pylon_devices::{DeviceSpec, Fleet};
//!
//! let fleet = Fleet::start("127.0.0.1:7000".parse().unwrap());
//! let spec = DeviceSpec::new("app", "d1", "token").with_tags(&["news"]);
//! assert!(fleet.connect_one(spec).is_authenticated());
//! // ... publish message m-1 through the gateway ...
//! assert!(fleet.wait_until(Duration::from_secs(5), |view| view.has("app", "d1", "m-1")));
//! assert_eq!(fleet.distinct_ids("app", "d1"), ["m-1"]);
//! ```
//!
//! The `pylon-devices` binary holds many devices on a gateway for benchmarks; its options and
//! output are described in its own module documentation (`src/main.rs`).

#![forbid(unsafe_code)]

mod connection;
mod fleet;
pub mod frame;
mod raw;
mod state;
mod wire;

pub use fleet::{Fleet, Options};
pub use frame::{decode_frame, encode_frame, Frame};
pub use raw::raw_session;
pub use state::{CloseReason, DeviceSpec, DeviceState, Outcome, Received, View};
