//! The `etcd` section of a node's config file.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::deserialize_duration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdSettings {
    /// The cluster's client URLs (`http://host:port`); a request that one of them fails moves on
    /// to the next.
    pub endpoints: Vec<String>,
    /// Every key Pylon stores begins with this (a trailing `/` is ignored).
    pub prefix: String,
    /// How long one request to one endpoint may take, connecting included: seconds (`5`,
    /// `0.5`, as APISIX writes it) or a duration with its unit (`"5s"`, `"500ms"`).
    #[serde(deserialize_with = "timeout")]
    pub timeout: Duration,
}

impl Default for EtcdSettings {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: pylon_model::Key::DEFAULT_PREFIX.to_owned(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A timeout as the node config writes durations, more than zero: every request would fail
/// at once.
fn timeout<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let timeout = deserialize_duration(deserializer)?;
    if timeout.is_zero() {
        return Err(serde::de::Error::custom(
            "the timeout must be more than zero",
        ));
    }
    Ok(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<EtcdSettings, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn unset_fields_take_their_defaults() {
        let settings = parse(r#"{"prefix": "/apisix"}"#).unwrap();
        assert_eq!(settings.prefix, "/apisix");
        assert_eq!(settings.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(settings.timeout, Duration::from_secs(5));
    }

    #[test]
    fn timeouts_are_seconds_or_durations_with_a_unit() {
        let timeout = |json: &str| parse(&format!(r#"{{"timeout": {json}}}"#)).map(|s| s.timeout);
        assert_eq!(timeout("2"), Ok(Duration::from_secs(2)));
        assert_eq!(timeout("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(timeout(r#""1m 30s""#), Ok(Duration::from_secs(90)));
        assert_eq!(timeout(r#""750ms""#), Ok(Duration::from_millis(750)));
        for refused in ["0", "-1", r#""soon""#, r#""0s""#] {
            assert!(timeout(refused).is_err(), "{refused} accepted");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = parse(r#"{"endpoint": ["http://10.0.0.1:2379"]}"#).unwrap_err();
        assert!(error.contains("unknown field `endpoint`"), "{error}");
    }
}
