//! The node's own settings file (role, listen addresses, workers, limits, timeouts, config
//! source, Admin API, logs). Every field has a default, so an empty file, or none, is a working
//! configuration: a traditional node on the embedded store in `./data`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use pylon_admin::AdminSettings;
use pylon_discovery::DiscoverySettings;
use pylon_model::MAX_SECONDS;
use pylon_proxy::{AccessLogSettings, ControlSettings, MetricsSettings, ProxySettings};
use pylon_store::EtcdSettings;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub deployment: Deployment,
    pub proxy: ProxySettings,
    pub access_log: AccessLogSettings,
    /// The control API (`/v1/healthcheck`): loopback only, as APISIX's.
    pub control: ControlSettings,
    /// The metrics listener (Prometheus's text format), as APISIX's `prometheus` export
    /// server.
    pub metrics: MetricsSettings,
    pub config: ConfigSource,
    /// The Admin API: on traditional and control-plane nodes whose store can be written.
    pub admin: AdminSettings,
    pub data_encryption: DataEncryption,
    pub log: LogSettings,
    /// Where upstreams with a `discovery_type` find their nodes, as APISIX's `discovery:`.
    pub discovery: DiscoverySettings,
}

/// What this node does in a cluster, as APISIX's deployment roles, and how it presents itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Deployment {
    pub role: Role,
    /// Reported on `/v1/status`. Default: generated once and kept in `config.data_dir/node_id`.
    pub node_id: Option<String>,
    /// Free-form `name: value` pairs (`zone: east`): reported on `/v1/status` and in the node's
    /// record, and what canary change sets target nodes by.
    pub labels: BTreeMap<String, String>,
    /// How often a node that proxies writes its record (`nodes/<id>`) to the config store:
    /// seconds, or a duration with its unit (`"10s"`).
    #[serde(deserialize_with = "pylon_store::deserialize_duration")]
    pub heartbeat_interval: Duration,
}

impl Default for Deployment {
    fn default() -> Self {
        Self {
            role: Role::default(),
            node_id: None,
            labels: BTreeMap::new(),
            heartbeat_interval: Duration::from_secs(10),
        }
    }
}

/// The longest label name and value: enough for a zone, a rack or a release, short enough to
/// list.
const MAX_LABEL_NAME: usize = 64;
const MAX_LABEL_VALUE: usize = 256;
/// Heartbeats more frequent than this would load the store (and every node that follows it)
/// for nothing.
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);

impl Deployment {
    /// Every problem with these settings, with the field's path.
    fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        for (name, value) in &self.labels {
            let field = format!("deployment.labels.{name}");
            if name.trim().is_empty() {
                errors.push(format!(
                    "deployment.labels: a label name must not be blank ({name:?})"
                ));
            } else if name.len() > MAX_LABEL_NAME {
                errors.push(format!(
                    "{field}: the name must be at most {MAX_LABEL_NAME} bytes"
                ));
            }
            if value.trim().is_empty() {
                errors.push(format!("{field}: must not be blank"));
            } else if value.len() > MAX_LABEL_VALUE {
                errors.push(format!("{field}: must be at most {MAX_LABEL_VALUE} bytes"));
            }
        }
        if !(MIN_HEARTBEAT..=Duration::from_secs_f64(MAX_SECONDS))
            .contains(&self.heartbeat_interval)
        {
            errors.push(format!(
                "deployment.heartbeat_interval: must be {}s to {MAX_SECONDS}s (a year)",
                MIN_HEARTBEAT.as_secs()
            ));
        }
        errors
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Proxy and Admin API.
    #[default]
    Traditional,
    /// Proxy only: serves what the shared store holds, takes no writes.
    DataPlane,
    /// Admin API only: writes the shared store, serves no traffic.
    ControlPlane,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Traditional => "traditional",
            Role::DataPlane => "data_plane",
            Role::ControlPlane => "control_plane",
        }
    }

    pub fn proxies(self) -> bool {
        self != Role::ControlPlane
    }

    pub fn administers(self) -> bool {
        self != Role::DataPlane
    }
}

/// Keys that seal SSL private keys in the store.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataEncryption {
    /// Secrets; the first seals, all are tried to open (so a key can be rotated). Every node
    /// of a cluster needs the same ones. Empty: on the embedded store, a secret generated
    /// into `config.data_dir/keyring`; on etcd, required as soon as an ssl is stored.
    pub keyring: Vec<String>,
}

/// Where routes, upstreams and the other resources come from. Relative paths are relative to
/// the node config file's directory (or the working directory when there is none).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigSource {
    pub source: SourceKind,
    /// The node's own files: the embedded store, the last known-good copy of an etcd
    /// configuration, the node id, a generated admin key and keyring.
    pub data_dir: PathBuf,
    /// The standalone YAML file, for `source: yaml` (written with another source: an error).
    pub file: PathBuf,
    /// The cluster, for `source: etcd` (written with another source: an error).
    pub etcd: EtcdSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A file-backed store in `data_dir`, written through the Admin API.
    #[default]
    Embedded,
    /// A shared etcd cluster: every node watches one prefix.
    Etcd,
    /// A standalone YAML file, reloaded when it changes; the Admin API is off.
    Yaml,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Embedded => "embedded",
            SourceKind::Etcd => "etcd",
            SourceKind::Yaml => "yaml",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `error`, `warn`, `info`, `debug` or `trace`; or a tracing filter such as `pylon_proxy=debug`.
    pub level: String,
}

impl Default for ConfigSource {
    fn default() -> Self {
        Self {
            source: SourceKind::Embedded,
            data_dir: PathBuf::from("data"),
            file: PathBuf::from("conf/apisix.yaml"),
            etcd: EtcdSettings::default(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
        }
    }
}

impl NodeConfig {
    /// Reads and checks a node config file; `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> anyhow::Result<NodeConfig> {
        let Some(path) = path else {
            let mut config = NodeConfig::default();
            config.proxy.handoff_socket = Some(PathBuf::from("pylon.sock"));
            return Ok(config);
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config =
            Self::parse(&text).with_context(|| format!("{} is not valid", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for path in [&mut config.config.file, &mut config.config.data_dir] {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
        if let Some(ca) = config
            .proxy
            .upstream
            .trusted_ca
            .as_mut()
            .filter(|p| p.is_relative())
        {
            *ca = dir.join(&*ca);
        }
        // Named after the config file, so that two nodes configured in one directory do not
        // take each other over.
        let handoff = config.proxy.handoff_socket.get_or_insert_with(|| {
            let mut name = path.file_stem().unwrap_or_default().to_owned();
            name.push(".sock");
            PathBuf::from(name)
        });
        if handoff.is_relative() && !handoff.as_os_str().is_empty() {
            *handoff = dir.join(&*handoff);
        }
        Ok(config)
    }

    /// Whether this node runs the Admin API: its role says so and its store can be written.
    pub fn runs_admin(&self) -> bool {
        self.deployment.role.administers() && self.config.source != SourceKind::Yaml
    }

    /// The configured node id, or the one generated on the first start.
    pub fn node_id(&self) -> anyhow::Result<String> {
        if let Some(id) = &self.deployment.node_id {
            return Ok(id.clone());
        }
        let path = self.config.data_dir.join("node_id");
        match std::fs::read_to_string(&path) {
            Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let id = generated_node_id();
        std::fs::create_dir_all(&self.config.data_dir)
            .and_then(|()| std::fs::write(&path, format!("{id}\n")))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(id)
    }

    /// Where a new `pylon run` takes this one over; `None`: handoff turned off.
    pub fn handoff_socket(&self) -> Option<&Path> {
        self.proxy
            .handoff_socket
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
    }

    fn parse(text: &str) -> anyhow::Result<NodeConfig> {
        // The document as written too: the defaults fill in every field that it leaves out.
        let (config, written): (NodeConfig, _) = if text.trim().is_empty() {
            (NodeConfig::default(), serde_yaml::Value::Null)
        } else {
            // Through a Value, so that errors carry the field's path and nothing else.
            let value: serde_yaml::Value = serde_yaml::from_str(text)?;
            let config = serde_path_to_error::deserialize(&value)
                .map_err(|e| anyhow::anyhow!("{}: {}", e.path(), e.inner()))?;
            (config, value)
        };
        let mut errors = config.proxy.validate();
        errors.extend(config.deployment.validate());
        let role = config.deployment.role;
        match (role, config.config.source) {
            (Role::DataPlane, SourceKind::Embedded) => errors.push(
                "deployment.role: a data_plane node serves a shared store: set config.source to etcd (or yaml)".to_owned(),
            ),
            (Role::ControlPlane, source) if source != SourceKind::Etcd => errors.push(format!(
                "deployment.role: a control_plane node writes a shared store: set config.source to etcd, not {}",
                source.as_str()
            )),
            _ => {}
        }
        if config.config.source == SourceKind::Etcd && config.config.etcd.endpoints.is_empty() {
            errors.push("config.etcd.endpoints: at least one endpoint is needed".to_owned());
        }
        errors.extend(settings_of_other_sources(&written, config.config.source));
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(config)
    }
}

/// The `config` settings that one source alone reads, and that source.
const SOURCE_SETTINGS: [(&str, SourceKind); 2] =
    [("file", SourceKind::Yaml), ("etcd", SourceKind::Etcd)];

/// An error for each setting of `SOURCE_SETTINGS` written in the node config `value` while
/// `source` is another: the user meant that source, and the node would start on this one,
/// serving a store that does not hold what they configured.
fn settings_of_other_sources(value: &serde_yaml::Value, source: SourceKind) -> Vec<String> {
    let written = |field: &str| value.get("config").and_then(|c| c.get(field)).is_some();
    SOURCE_SETTINGS
        .into_iter()
        .filter(|&(field, reader)| reader != source && written(field))
        .map(|(field, reader)| {
            format!(
                "config.{field}: set, but config.source is {}; config.{field} is read only with config.source: {}",
                source.as_str(),
                reader.as_str()
            )
        })
        .collect()
}

/// A node id that is unique without coordination: host name, time and process id.
fn generated_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let host = if host.is_empty() { "pylon" } else { &host };
    format!(
        "{host}-{:x}{:x}",
        nanos & 0xffff_ffff_ffff,
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let config = NodeConfig::parse("").unwrap();
        assert_eq!(config.proxy.listen, vec!["127.0.0.1:9080".parse().unwrap()]);
        assert_eq!(config.config.source, SourceKind::Embedded);
        assert_eq!(config.config.data_dir, PathBuf::from("data"));
        assert_eq!(config.deployment.role, Role::Traditional);
        assert!(config.runs_admin());
        assert_eq!(config.control.listen, "127.0.0.1:9090".parse().unwrap());
        assert!(config.control.enabled);
        assert_eq!(config.metrics.listen, "127.0.0.1:9091".parse().unwrap());
        assert!(config.metrics.enabled);
    }

    #[test]
    fn errors_name_the_field() {
        let err = NodeConfig::parse("proxy:\n  workerz: 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("proxy.workerz: unknown field `workerz`"),
            "{err}"
        );
        let err = NodeConfig::parse("proxy:\n  listen: [\"nope\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("proxy.listen[0]:"), "{err}");
        let err = NodeConfig::parse("proxy:\n  keepalive_timeout: 0\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "proxy.keepalive_timeout: must be a number of seconds > 0"
        );
    }

    #[test]
    fn labels_and_the_heartbeat_are_checked_with_their_field() {
        let config = NodeConfig::parse("").unwrap();
        assert!(config.deployment.labels.is_empty());
        assert_eq!(
            config.deployment.heartbeat_interval,
            Duration::from_secs(10)
        );
        let config = NodeConfig::parse(
            "deployment:\n  labels: {zone: east, tier: edge}\n  heartbeat_interval: 2.5\n",
        )
        .unwrap();
        assert_eq!(config.deployment.labels["zone"], "east");
        assert_eq!(config.deployment.labels["tier"], "edge");
        assert_eq!(
            config.deployment.heartbeat_interval,
            Duration::from_millis(2500)
        );
        let config = NodeConfig::parse("deployment:\n  heartbeat_interval: 1m 30s\n").unwrap();
        assert_eq!(
            config.deployment.heartbeat_interval,
            Duration::from_secs(90)
        );

        let error = |yaml: &str| NodeConfig::parse(yaml).unwrap_err().to_string();
        assert_eq!(
            error("deployment:\n  labels: {zone: \"\"}\n"),
            "deployment.labels.zone: must not be blank"
        );
        assert_eq!(
            error("deployment:\n  labels: {\" \": east}\n"),
            "deployment.labels: a label name must not be blank (\" \")"
        );
        let long = "x".repeat(65);
        assert_eq!(
            error(&format!("deployment:\n  labels: {{{long}: east}}\n")),
            format!("deployment.labels.{long}: the name must be at most 64 bytes")
        );
        assert_eq!(
            error(&format!(
                "deployment:\n  labels: {{zone: {}}}\n",
                "y".repeat(257)
            )),
            "deployment.labels.zone: must be at most 256 bytes"
        );
        let error = error("deployment:\n  labels: {zone: [east]}\n");
        assert!(
            error.starts_with("deployment.labels.zone: invalid type"),
            "{error}"
        );
        for written in ["0", "0.5", "\"100ms\"", "40000000"] {
            let error =
                NodeConfig::parse(&format!("deployment:\n  heartbeat_interval: {written}\n"))
                    .unwrap_err()
                    .to_string();
            assert_eq!(
                error, "deployment.heartbeat_interval: must be 1s to 31536000s (a year)",
                "{written}"
            );
        }
        for written in ["-1", "soon"] {
            let error =
                NodeConfig::parse(&format!("deployment:\n  heartbeat_interval: {written}\n"))
                    .unwrap_err()
                    .to_string();
            assert!(
                error.starts_with("deployment.heartbeat_interval: "),
                "{written}: {error}"
            );
        }
    }

    #[test]
    fn roles_need_a_store_they_can_share() {
        let err = NodeConfig::parse("deployment:\n  role: data_plane\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("deployment.role: a data_plane node"),
            "{err}"
        );
        let err =
            NodeConfig::parse("deployment:\n  role: control_plane\nconfig:\n  source: yaml\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("set config.source to etcd, not yaml"), "{err}");
        let dp = NodeConfig::parse("deployment:\n  role: data_plane\nconfig:\n  source: etcd\n")
            .unwrap();
        assert!(dp.deployment.role.proxies() && !dp.runs_admin());
        let yaml = NodeConfig::parse("config:\n  source: yaml\n").unwrap();
        assert!(
            !yaml.runs_admin(),
            "a YAML file cannot be written through the Admin API"
        );
    }
}
