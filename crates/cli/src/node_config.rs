//! The node's own settings file (listen addresses, workers, limits, timeouts, config source,
//! logs). Every field has a default, so an empty file, or none, is a working configuration.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use pylon_proxy::{AccessLogSettings, ControlSettings, ProxySettings};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub proxy: ProxySettings,
    pub access_log: AccessLogSettings,
    /// The control API (`/v1/healthcheck`): loopback only, as APISIX's.
    pub control: ControlSettings,
    pub config: ConfigSource,
    pub log: LogSettings,
}

/// Where routes, upstreams and the other resources come from.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigSource {
    pub source: SourceKind,
    /// The standalone YAML file, for `source: yaml`. Relative paths are relative to the node
    /// config file's directory (or the working directory when there is none).
    pub file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    #[default]
    Yaml,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `error`, `warn`, `info`, `debug` or `trace`; or a tracing filter such as `pylon_proxy=debug`.
    pub level: String,
}

impl Default for ConfigSource {
    fn default() -> Self {
        Self {
            source: SourceKind::Yaml,
            file: PathBuf::from("conf/apisix.yaml"),
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
            return Ok(NodeConfig::default());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config =
            Self::parse(&text).with_context(|| format!("{} is not valid", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        if config.config.file.is_relative() {
            config.config.file = dir.join(&config.config.file);
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
        Ok(config)
    }

    fn parse(text: &str) -> anyhow::Result<NodeConfig> {
        let config: NodeConfig = if text.trim().is_empty() {
            NodeConfig::default()
        } else {
            // Through a Value, so that errors carry the field's path and nothing else.
            let value: serde_yaml::Value = serde_yaml::from_str(text)?;
            serde_path_to_error::deserialize(value)
                .map_err(|e| anyhow::anyhow!("{}: {}", e.path(), e.inner()))?
        };
        let errors = config.proxy.validate();
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let config = NodeConfig::parse("").unwrap();
        assert_eq!(config.proxy.listen, vec!["127.0.0.1:9080".parse().unwrap()]);
        assert_eq!(config.config.file, PathBuf::from("conf/apisix.yaml"));
        assert_eq!(config.control.listen, "127.0.0.1:9090".parse().unwrap());
        assert!(config.control.enabled);
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
}
