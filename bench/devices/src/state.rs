//! What the fleet records of each device, and the read-only view of it that tests query.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::connection::Link;

/// Who a device is: what it sends in its `auth` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub app_id: String,
    pub device_id: String,
    pub token: String,
    pub tags: Vec<String>,
    pub network: Option<String>,
}

impl DeviceSpec {
    /// A device with no tags and no network.
    pub fn new(app_id: &str, device_id: &str, token: &str) -> DeviceSpec {
        DeviceSpec {
            app_id: app_id.to_owned(),
            device_id: device_id.to_owned(),
            token: token.to_owned(),
            tags: Vec::new(),
            network: None,
        }
    }

    pub fn with_tags(mut self, tags: &[&str]) -> DeviceSpec {
        self.tags = tags.iter().map(|tag| (*tag).to_owned()).collect();
        self
    }

    pub fn with_network(mut self, network: &str) -> DeviceSpec {
        self.network = Some(network.to_owned());
        self
    }

    /// The body of the `auth` frame; `tags` and `network` only when set.
    pub fn auth_body(&self) -> Value {
        let mut body = json!({
            "token": self.token,
            "device_id": self.device_id,
            "app_id": self.app_id,
        });
        if !self.tags.is_empty() {
            body["tags"] = json!(self.tags);
        }
        if let Some(network) = &self.network {
            body["network"] = json!(network);
        }
        body
    }
}

/// One push as a device received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub id: String,
    pub data: Value,
    pub priority: Option<String>,
    pub collapse_key: Option<String>,
    /// The push frame's sequence number.
    pub sequence: u32,
    pub at: Instant,
    /// Which connection of the device it came on: 1 for the first, counting every connection
    /// opened for it since.
    pub connection: u32,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// Closed from this side: `Fleet::disconnect`.
    Local,
    /// The gateway closed without a word (end of stream).
    Eof,
    /// The gateway sent `error` with this text.
    Error(String),
    /// The gateway sent `reconnect`.
    Reconnect { after_ms: u64 },
    /// A read or write failed (a reset, for one).
    Io(String),
    /// The gateway sent something this device cannot read.
    Protocol(String),
    /// The TCP connection could not be opened.
    ConnectFailed(String),
    /// No `auth_ok` (nor anything ending the connection) within the fleet's `auth_timeout`.
    AuthTimeout,
}

/// How a connection attempt ended: authenticated (the `auth_ok` body), or not and why.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Authenticated(Value),
    Failed(CloseReason),
}

impl Outcome {
    pub fn is_authenticated(&self) -> bool {
        matches!(self, Outcome::Authenticated(_))
    }
}

/// Everything recorded of one device except its pushes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceState {
    /// Connections opened for the device so far; the latest is the current one.
    pub connections: u32,
    /// The current connection is established and not closed.
    pub open: bool,
    /// The current connection received `auth_ok`.
    pub authenticated: bool,
    /// Every `auth_ok` body, of every connection.
    pub auth_oks: Vec<Value>,
    /// Every `error` text received, with the connection number it came on.
    pub errors: Vec<(u32, String)>,
    /// Every `reconnect` received (`after_ms`), with the connection number it came on.
    pub reconnects: Vec<(u32, u64)>,
    /// Why the current connection ended, once it has.
    pub close_reason: Option<CloseReason>,
    /// How each connection ended, in the order they did.
    pub closes: Vec<(u32, CloseReason)>,
    /// The ping interval the gateway last gave (`auth_ok` or `pong`).
    pub heartbeat: Option<Duration>,
    pub pings_sent: u64,
    pub pongs: u64,
    /// Pushes received, counted even when the fleet does not record them.
    pub pushes: u64,
    /// Whether the device acknowledges pushes.
    pub ack: bool,
}

pub(crate) struct Device {
    pub spec: Arc<DeviceSpec>,
    pub state: DeviceState,
    pub received: Vec<Received>,
    /// The control link of the current connection, while it runs.
    pub link: Option<Arc<Link>>,
}

/// All devices, by app id then device id.
#[derive(Default)]
pub(crate) struct Devices {
    pub apps: HashMap<String, HashMap<String, Device>>,
    pub total_received: u64,
}

impl Devices {
    pub fn get(&self, app: &str, device: &str) -> Option<&Device> {
        self.apps.get(app)?.get(device)
    }

    pub fn get_mut(&mut self, app: &str, device: &str) -> Option<&mut Device> {
        self.apps.get_mut(app)?.get_mut(device)
    }
}

/// A consistent look at every device's record, for `Fleet::wait_until` and the accessors.
pub struct View<'a> {
    pub(crate) devices: &'a Devices,
}

impl View<'_> {
    /// The device's pushes in arrival order (empty for an unknown device).
    pub fn received(&self, app: &str, device: &str) -> &[Received] {
        self.devices
            .get(app, device)
            .map_or(&[], |device| &device.received)
    }

    /// The ids of the device's pushes in arrival order, duplicates kept.
    pub fn ids(&self, app: &str, device: &str) -> Vec<String> {
        self.received(app, device)
            .iter()
            .map(|push| push.id.clone())
            .collect()
    }

    /// The ids of the device's pushes in order of first arrival, each once.
    pub fn distinct_ids(&self, app: &str, device: &str) -> Vec<String> {
        let mut seen = std::collections::HashSet::new();
        self.received(app, device)
            .iter()
            .filter(|push| seen.insert(push.id.as_str()))
            .map(|push| push.id.clone())
            .collect()
    }

    /// Whether the device received a push with this id.
    pub fn has(&self, app: &str, device: &str, id: &str) -> bool {
        self.received(app, device).iter().any(|push| push.id == id)
    }

    pub fn state(&self, app: &str, device: &str) -> Option<&DeviceState> {
        self.devices.get(app, device).map(|device| &device.state)
    }

    /// Pushes received by all devices together, duplicates included.
    pub fn total_received(&self) -> u64 {
        self.devices.total_received
    }

    /// Every device the fleet has opened a connection for, as (app id, device id).
    pub fn devices(&self) -> impl Iterator<Item = (&str, &str)> {
        self.devices.apps.iter().flat_map(|(app, devices)| {
            devices
                .keys()
                .map(move |device| (app.as_str(), device.as_str()))
        })
    }

    /// How many devices have their current connection open and authenticated.
    pub fn authenticated(&self) -> usize {
        self.devices
            .apps
            .values()
            .flat_map(|devices| devices.values())
            .filter(|device| device.state.open && device.state.authenticated)
            .count()
    }
}
