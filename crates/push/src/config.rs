//! The configuration of a push gateway: the `protocol.conf` of a stream route whose
//! `protocol.name` is [`PROTOCOL_NAME`]. Parsing refuses unknown fields;
//! [`PushConfig::validate`] then reports every problem with the path of its field. The
//! `redis` object is read by the caller (it has the fields of `limit-count`'s Redis policies).

use std::collections::BTreeMap;
use std::time::Duration;

use pylon_frames::{FieldSpec, Layout, LayoutConfig};
use pylon_model::FieldError;
use serde::Deserialize;
use serde_json::Value;

/// The `protocol.name` of a stream route whose connections are devices of the push gateway.
pub const PROTOCOL_NAME: &str = pylon_model::PUSH_PROTOCOL;

/// The largest `max_body`: an idle device holds no buffer, a busy one at most this.
const MAX_BODY_LIMIT: u64 = 1 << 20;
/// A day, the longest any of the intervals may be.
const MAX_SECONDS: u64 = 86_400;
/// Thirty days, the longest a message may live or its counts be kept.
const MAX_TTL: u64 = 30 * 86_400;

/// `protocol.conf` of a push gateway route.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// The frame layout of the TCP devices; [`default_layout`] when absent.
    #[serde(default)]
    pub layout: Option<LayoutConfig>,
    /// The command numbers, when they are not the defaults.
    #[serde(default)]
    pub commands: Commands,
    /// The largest frame body a device may send, in bytes.
    #[serde(default = "default_max_body")]
    pub max_body: u64,
    /// Seconds a new connection has to send its `auth` frame.
    #[serde(default = "default_first_frame_timeout")]
    pub first_frame_timeout: u64,
    #[serde(default)]
    pub heartbeat: Heartbeat,
    /// Where the devices, messages and their state live: `limit-count`'s Redis fields
    /// (`policy: redis` or `redis-cluster`, `redis_host`, ...), read by the caller.
    pub redis: Value,
    #[serde(default)]
    pub delivery: Delivery,
    /// Per app, the rates that differ from `delivery`'s.
    #[serde(default)]
    pub apps: BTreeMap<String, AppRates>,
    /// Seconds over which a stopping node's devices are told to reconnect: each gets a
    /// `reconnect` with a delay spread over this, so they do not all come back at once.
    #[serde(default = "default_drain_spread")]
    pub drain_spread: u64,
}

/// The command numbers of the device protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Commands {
    pub auth: u64,
    pub auth_ok: u64,
    pub ping: u64,
    pub pong: u64,
    pub push: u64,
    pub ack: u64,
    pub reconnect: u64,
    pub error: u64,
}

impl Default for Commands {
    fn default() -> Self {
        Commands {
            auth: 1,
            auth_ok: 2,
            ping: 3,
            pong: 4,
            push: 5,
            ack: 6,
            reconnect: 7,
            error: 8,
        }
    }
}

/// How often devices ping, and when a silent one is let go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Heartbeat {
    /// Seconds between pings the gateway asks of a device.
    pub interval: u64,
    /// The interval for devices on these networks (the `network` a device names when it
    /// connects: `wifi`, `4g` ...): mobile networks drop idle connections sooner.
    pub networks: BTreeMap<String, u64>,
    /// Intervals a device may miss before it is closed as gone.
    pub missed: u32,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            interval: 240,
            networks: BTreeMap::new(),
            missed: 2,
        }
    }
}

impl Heartbeat {
    /// The ping interval of a device on `network`.
    pub fn interval_for(&self, network: Option<&str>) -> u64 {
        network
            .and_then(|n| self.networks.get(n))
            .copied()
            .unwrap_or(self.interval)
    }

    /// How long a device on an `interval` may stay silent before it is closed.
    pub fn silence_allowed(&self, interval: u64) -> Duration {
        Duration::from_secs(interval * (u64::from(self.missed) + 1))
    }
}

/// How messages are delivered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// Messages per second an app's devices are sent, across the nodes; 0: no limit.
    /// High-priority messages do not wait for it.
    pub rate: u64,
    /// Devices per second a message to a tag or to all of an app reaches, across the nodes,
    /// unless the message asks for less.
    pub broadcast_rate: u64,
    /// Seconds a message lives when the push does not say.
    pub ttl: u64,
    /// The longest `ttl` a push may ask for.
    pub max_ttl: u64,
    /// Seconds a message's counts stay queryable after its TTL.
    pub retention: u64,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            rate: 0,
            broadcast_rate: 100_000,
            ttl: 86_400,
            max_ttl: 7 * 86_400,
            retention: 86_400,
        }
    }
}

/// An app's own rates (see [`Delivery`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRates {
    #[serde(default)]
    pub rate: Option<u64>,
    #[serde(default)]
    pub broadcast_rate: Option<u64>,
}

fn default_max_body() -> u64 {
    4096
}

fn default_first_frame_timeout() -> u64 {
    10
}

fn default_drain_spread() -> u64 {
    30
}

/// The layout devices speak when the configuration names none: a 9-byte header (body
/// length, u32; command, u8; sequence, u32; big-endian) and a JSON body.
pub fn default_layout() -> LayoutConfig {
    let field = |offset, width| FieldSpec {
        offset,
        width,
        order: Default::default(),
    };
    LayoutConfig {
        start: None,
        end: None,
        header_length: 9,
        body_length: field(0, 4),
        length_includes: Default::default(),
        command: field(4, 1),
        sequence: field(5, 4),
        fields: BTreeMap::new(),
    }
}

impl PushConfig {
    /// Reads a configuration, refusing unknown fields; the error names the field. Call
    /// [`PushConfig::validate`] next.
    pub fn from_json(value: &Value) -> Result<Self, FieldError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            FieldError::new(path, e.into_inner().to_string())
        })
    }

    /// The frame layout devices speak.
    pub fn layout(&self) -> Result<Layout, Vec<FieldError>> {
        let config = self.layout.clone().unwrap_or_else(default_layout);
        Layout::new(&config, self.max_body)
            .map_err(|errors| errors.into_iter().map(|e| e.within("layout")).collect())
    }

    /// Every problem but the `redis` object's, with paths relative to the configuration.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = self.layout().err().unwrap_or_default();
        let mut check = |path: String, value: u64, range: std::ops::RangeInclusive<u64>| {
            if !range.contains(&value) {
                let (low, high) = range.into_inner();
                errors.push(FieldError::new(path, format!("must be {low} to {high}")));
            }
        };
        check("max_body".into(), self.max_body, 1..=MAX_BODY_LIMIT);
        check(
            "first_frame_timeout".into(),
            self.first_frame_timeout,
            1..=3600,
        );
        check(
            "heartbeat.interval".into(),
            self.heartbeat.interval,
            1..=MAX_SECONDS,
        );
        for (network, interval) in &self.heartbeat.networks {
            check(
                format!("heartbeat.networks.{network}"),
                *interval,
                1..=MAX_SECONDS,
            );
        }
        check(
            "heartbeat.missed".into(),
            self.heartbeat.missed.into(),
            1..=10,
        );
        check(
            "delivery.max_ttl".into(),
            self.delivery.max_ttl,
            1..=MAX_TTL,
        );
        check(
            "delivery.ttl".into(),
            self.delivery.ttl,
            1..=self.delivery.max_ttl.max(1),
        );
        check(
            "delivery.retention".into(),
            self.delivery.retention,
            0..=MAX_TTL,
        );
        check("drain_spread".into(), self.drain_spread, 0..=3600);
        for app in self.apps.keys() {
            if let Err(reason) = crate::message::check_id(app) {
                errors.push(FieldError::new(format!("apps.{app}"), reason));
            }
        }
        errors.extend(self.commands.clashes());
        errors
    }
}

impl Commands {
    /// The command a device's WebSocket text message names in its `type`.
    pub fn from_device(&self, name: &str) -> Option<u64> {
        match name {
            "auth" => Some(self.auth),
            "ping" => Some(self.ping),
            "ack" => Some(self.ack),
            _ => None,
        }
    }

    /// The `type` of a WebSocket text message carrying the gateway's `command`.
    pub fn name_to_device(&self, command: u64) -> &'static str {
        [
            (self.auth_ok, "auth_ok"),
            (self.pong, "pong"),
            (self.push, "push"),
            (self.reconnect, "reconnect"),
            (self.error, "error"),
        ]
        .into_iter()
        .find_map(|(number, name)| (number == command).then_some(name))
        .unwrap_or("error")
    }

    /// Two commands of one direction with the same number: a frame could not say which.
    fn clashes(&self) -> Vec<FieldError> {
        let from_device = [("auth", self.auth), ("ping", self.ping), ("ack", self.ack)];
        let to_device = [
            ("auth_ok", self.auth_ok),
            ("pong", self.pong),
            ("push", self.push),
            ("reconnect", self.reconnect),
            ("error", self.error),
        ];
        let mut errors = Vec::new();
        for list in [&from_device[..], &to_device[..]] {
            for (i, (name, number)) in list.iter().enumerate() {
                if let Some((other, _)) = list[..i].iter().find(|(_, n)| n == number) {
                    errors.push(FieldError::new(
                        format!("commands.{name}"),
                        format!("is {number}, as `{other}` is"),
                    ));
                }
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(conf: Value) -> Vec<String> {
        match PushConfig::from_json(&conf) {
            Ok(config) => config.validate().iter().map(ToString::to_string).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn the_defaults_are_valid_and_the_redis_object_is_required() {
        let config = PushConfig::from_json(&json!({"redis": {}})).unwrap();
        assert!(config.validate().is_empty());
        assert_eq!(config.commands, Commands::default());
        assert_eq!(config.layout().unwrap().frame_len(3), 12);
        assert_eq!(
            config.heartbeat.silence_allowed(10),
            Duration::from_secs(30)
        );
        assert_eq!(errors(json!({})), ["missing field `redis`"]);
    }

    #[test]
    fn every_bad_field_is_named() {
        let bad = json!({
            "redis": {},
            "max_body": 0,
            "heartbeat": {"interval": 0, "networks": {"4g": 100000}, "missed": 11},
            "delivery": {"ttl": 10, "max_ttl": 5},
            "apps": {"a b": {"rate": 1}},
            "commands": {"ping": 1, "push": 2},
        });
        assert_eq!(
            errors(bad),
            [
                "max_body: must be 1 to 1048576",
                "heartbeat.interval: must be 1 to 86400",
                "heartbeat.networks.4g: must be 1 to 86400",
                "heartbeat.missed: must be 1 to 10",
                "delivery.ttl: must be 1 to 5",
                "apps.a b: may hold letters, digits and `_.:@-` only",
                "commands.ping: is 1, as `auth` is",
                "commands.push: is 2, as `auth_ok` is",
            ]
        );
        assert_eq!(
            errors(json!({"redis": {}, "heartbeat": {"every": 1}})),
            ["heartbeat.every: unknown field `every`, expected one of `interval`, `networks`, `missed`"]
        );
    }

    #[test]
    fn the_heartbeat_of_a_network() {
        let heartbeat = Heartbeat {
            networks: [("4g".to_owned(), 180)].into(),
            ..Heartbeat::default()
        };
        assert_eq!(heartbeat.interval_for(Some("4g")), 180);
        assert_eq!(heartbeat.interval_for(Some("wifi")), 240);
        assert_eq!(heartbeat.interval_for(None), 240);
    }

    #[test]
    fn command_names_of_websocket_text_messages() {
        let commands = Commands::default();
        assert_eq!(commands.from_device("ack"), Some(6));
        assert_eq!(commands.from_device("push"), None);
        assert_eq!(commands.name_to_device(5), "push");
        assert_eq!(commands.name_to_device(2), "auth_ok");
    }
}
