//! How the node config writes a duration: seconds (`10`, `0.5`, as APISIX writes them) or a
//! duration with its unit (`"10s"`, `"1m 30s"`, `"500ms"`).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Reads a duration as the node config writes one (see the module documentation).
pub fn deserialize_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Seconds(f64),
        WithUnit(String),
    }
    match Written::deserialize(deserializer)? {
        Written::Seconds(seconds) => Duration::try_from_secs_f64(seconds)
            .map_err(|_| serde::de::Error::custom(format!("{seconds} is not a duration"))),
        Written::WithUnit(text) => {
            humantime::parse_duration(&text).map_err(serde::de::Error::custom)
        }
    }
}
