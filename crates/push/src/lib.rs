//! Pylon's push gateway: devices hold one long connection each to a stream route whose
//! `protocol.name` is `pylon-push`, and business services push messages to one device, to a
//! list, to the devices whose tags match an expression, or to all of an app's devices.
//!
//! This crate holds what does not depend on the proxy: the configuration ([`config`]), the
//! device protocol's bodies ([`wire`]), tag expressions ([`tags`]), the push API's messages
//! ([`message`]), the state the nodes share in Redis ([`store`]), and each node's hub
//! ([`hub`]): its connected devices and the delivery to them. The proxy's stream gateway runs
//! the device connections; the `device-push` plugin's routes take the API's requests.

pub mod bucket;
pub mod config;
pub mod hub;
pub mod message;
pub mod store;
pub mod tags;
pub mod websocket;
pub mod wire;

pub use config::{PushConfig, PROTOCOL_NAME};
pub use message::{Message, Priority, Target};
pub use pylon_redis::Error as StoreError;
