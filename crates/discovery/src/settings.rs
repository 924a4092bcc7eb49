//! The `discovery` section of a node's config file, shaped as APISIX's `discovery:` where APISIX
//! has the provider (`dns`, `consul`, `consul_kv`); `etcd` is Pylon's own.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// One entry per provider; a provider left out cannot be watched, except `dns`, which then
/// uses the system's resolver config.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverySettings {
    pub dns: Option<DnsSettings>,
    pub etcd: Option<EtcdRegistrySettings>,
    pub consul: Option<ConsulSettings>,
    pub consul_kv: Option<ConsulKvSettings>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    /// Name servers, `ip` (port 53) or `ip:port` (`[ipv6]:port`); empty: those of
    /// `resolv_conf`.
    pub servers: Vec<String>,
    /// The resolver config used when `servers` is empty (its `nameserver`, `search`,
    /// `options ndots/timeout/attempts`); the system's by default.
    pub resolv_conf: Option<PathBuf>,
    /// Answers are asked again after their TTL, but never sooner than this (seconds)...
    #[serde(deserialize_with = "seconds", serialize_with = "as_seconds")]
    pub ttl_floor: Duration,
    /// ...nor later than this (seconds).
    #[serde(deserialize_with = "seconds", serialize_with = "as_seconds")]
    pub ttl_ceiling: Duration,
    /// How long one query to one server may take (seconds).
    #[serde(deserialize_with = "seconds", serialize_with = "as_seconds")]
    pub timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            servers: Vec::new(),
            resolv_conf: None,
            ttl_floor: Duration::from_secs(1),
            ttl_ceiling: Duration::from_secs(300),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Pylon's etcd registry (see the crate README for the key layout).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdRegistrySettings {
    /// The cluster's client URLs (`http://host:port`).
    pub endpoints: Vec<String>,
    /// Instances register under `<prefix>/<service name>/<instance id>`. Keep it outside the
    /// configuration's prefix, whose watchers would otherwise see every registration.
    pub prefix: String,
    /// How long one request to one endpoint may take, connecting included (seconds).
    #[serde(deserialize_with = "seconds", serialize_with = "as_seconds")]
    pub timeout: Duration,
}

impl Default for EtcdRegistrySettings {
    fn default() -> Self {
        EtcdRegistrySettings {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: "/pylon-discovery".to_owned(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Consul's catalog: every service registered with the agents of `servers`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsulSettings {
    /// `http://host:port` of one agent or server per Consul cluster (several clusters at once).
    pub servers: Vec<String>,
    /// Sent as `X-Consul-Token` when not empty.
    pub token: String,
    /// With `keepalive: false`, seconds between two polls.
    pub fetch_interval: u64,
    /// Blocking queries (long polls answered on change) rather than polling.
    pub keepalive: bool,
    /// Every instance's weight.
    pub weight: u32,
    pub timeout: ConsulTimeouts,
    /// Services never followed; `consul` itself always is skipped.
    pub skip_services: Vec<String>,
    /// The node of a service that none of the servers knows.
    pub default_service: Option<DefaultService>,
}

impl Default for ConsulSettings {
    fn default() -> Self {
        ConsulSettings {
            servers: Vec::new(),
            token: String::new(),
            fetch_interval: 3,
            keepalive: true,
            weight: 1,
            timeout: ConsulTimeouts::default(),
            skip_services: Vec::new(),
            default_service: None,
        }
    }
}

/// Consul's KV store: instances are keys `<prefix>/<service>/<ip>:<port>`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsulKvSettings {
    pub servers: Vec<String>,
    pub token: String,
    pub fetch_interval: u64,
    pub keepalive: bool,
    /// The folder of the KV store read (recursively).
    pub prefix: String,
    /// The weight of an instance whose value names none.
    pub weight: u32,
    pub timeout: ConsulTimeouts,
    /// Whole keys (`upstreams/web/10.0.0.1:80`) never read as instances.
    pub skip_keys: Vec<String>,
    pub default_service: Option<DefaultService>,
}

impl Default for ConsulKvSettings {
    fn default() -> Self {
        ConsulKvSettings {
            servers: Vec::new(),
            token: String::new(),
            fetch_interval: 3,
            keepalive: true,
            prefix: "upstreams".to_owned(),
            weight: 1,
            timeout: ConsulTimeouts::default(),
            skip_keys: Vec::new(),
            default_service: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsulTimeouts {
    /// Milliseconds to connect.
    pub connect: u64,
    /// Milliseconds an answer may take (beyond `wait` for a blocking query).
    pub read: u64,
    /// Seconds a blocking query may wait for a change.
    pub wait: u64,
}

impl Default for ConsulTimeouts {
    fn default() -> Self {
        ConsulTimeouts {
            connect: 2000,
            read: 2000,
            wait: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultService {
    /// An IP address literal.
    pub host: String,
    pub port: u16,
    /// Kept as the node's metadata (APISIX's `fail_timeout`, `weight`, `max_fails`).
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// Seconds, whole or not; never zero, which would make every wait or request end at once.
fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let seconds = f64::deserialize(deserializer)?;
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(serde::de::Error::custom(format!(
            "{seconds} is not a number of seconds above zero"
        ))),
    }
}

fn as_seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<DiscoverySettings, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn apisix_shaped_sections_parse_with_their_defaults() {
        let settings = parse(
            r#"{
                "dns": {"servers": ["127.0.0.1:8600"]},
                "consul": {"servers": ["http://127.0.0.1:8500"], "token": "t",
                           "timeout": {"wait": 30}, "skip_services": ["internal"],
                           "default_service": {"host": "10.0.0.9", "port": 80}},
                "consul_kv": {"servers": ["http://127.0.0.1:8500"], "prefix": "upstreams"}
            }"#,
        )
        .unwrap();
        let dns = settings.dns.unwrap();
        assert_eq!(dns.servers, ["127.0.0.1:8600"]);
        assert_eq!(dns.ttl_floor, Duration::from_secs(1));
        assert_eq!(dns.ttl_ceiling, Duration::from_secs(300));
        let consul = settings.consul.unwrap();
        assert_eq!((consul.timeout.wait, consul.timeout.read), (30, 2000));
        assert_eq!((consul.weight, consul.keepalive), (1, true));
        assert_eq!(consul.default_service.unwrap().port, 80);
        assert_eq!(settings.consul_kv.unwrap().weight, 1);
        assert_eq!(settings.etcd, None);
    }

    #[test]
    fn unknown_fields_and_zero_durations_are_refused() {
        let error = parse(r#"{"dns": {"server": []}}"#).unwrap_err();
        assert!(error.contains("unknown field `server`"), "{error}");
        let error = parse(r#"{"nacos": {}}"#).unwrap_err();
        assert!(error.contains("unknown field `nacos`"), "{error}");
        let error = parse(r#"{"dns": {"ttl_floor": 0}}"#).unwrap_err();
        assert!(error.contains("above zero"), "{error}");
        let settings = parse(r#"{"dns": {"ttl_floor": 0.5}}"#).unwrap();
        assert_eq!(settings.dns.unwrap().ttl_floor, Duration::from_millis(500));
    }
}
