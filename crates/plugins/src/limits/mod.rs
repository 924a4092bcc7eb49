//! What the limiting plugins (`limit-count`, `limit-req`, `limit-conn`) share: the key a
//! request counts under ([`key`]), the per-key counts of `policy: local` ([`state`]), the
//! policy itself, and holding a request without holding a worker.

pub(crate) mod key;
pub(crate) mod state;

use std::borrow::Cow;
use std::time::Duration;

use pylon_model::FieldError;
use pylon_plugin::{Call, FailurePolicy, Step};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// Where a limiting plugin keeps its counts.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Policy {
    /// In this node's memory, shared by its workers.
    #[default]
    Local,
    /// In one Redis server, shared by the nodes.
    Redis,
    /// In a Redis cluster, shared by the nodes.
    RedisCluster,
}

pub(crate) fn default_rejected_code() -> u16 {
    503
}

/// A limiting plugin's configuration as `policy: local` reads it. The Redis policies, not
/// built yet, are refused here, before the configuration is parsed, so that the reason is
/// not hidden behind their own fields. Those fields (`redis_host`, ..., `sync_interval`)
/// are dropped: APISIX keeps them in a configuration moved back to `local`.
pub(crate) fn local_config(config: &Value) -> Result<Cow<'_, Value>, FieldError> {
    if let Some(policy @ ("redis" | "redis-cluster")) = config.get("policy").and_then(Value::as_str)
    {
        return Err(FieldError::new(
            "policy",
            format!("`{policy}` is not built yet: only `local` is, for now"),
        ));
    }
    let is_redis_setting = |field: &str| field.starts_with("redis_") || field == "sync_interval";
    Ok(match config {
        Value::Object(map) if map.keys().any(|f| is_redis_setting(f)) => Cow::Owned(Value::Object(
            map.iter()
                .filter(|(field, _)| !is_redis_setting(field))
                .map(|(field, value)| (field.clone(), value.clone()))
                .collect(),
        )),
        other => Cow::Borrowed(other),
    })
}

/// A shorter wait is not worth holding a request for (as APISIX: a millisecond).
const MIN_DELAY: Duration = Duration::from_millis(1);

/// Holds a request for `wait` without holding a worker, then lets it go on. A wait shorter
/// than [`MIN_DELAY`] lets it go on at once.
pub(crate) fn hold<'a>(wait: Duration) -> Step<'a> {
    if wait < MIN_DELAY {
        return Step::Continue;
    }
    Step::Call(Call {
        work: Box::pin(async move {
            tokio::time::sleep(wait).await;
            Ok(None)
        }),
        // The wait is the plugin's own, on the same clock: the bound only has to be past it.
        // Were it ever reached, the request would go on (fail open), never be refused.
        timeout: wait.saturating_add(Duration::from_secs(1)),
        policy: FailurePolicy::Open,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_redis_policies_are_refused_and_their_settings_dropped() {
        for policy in ["redis", "redis-cluster"] {
            let error = local_config(&json!({"policy": policy})).unwrap_err();
            assert_eq!(error.path, "policy");
        }
        let config =
            json!({"policy": "local", "redis_host": "10.0.0.1", "sync_interval": 1, "count": 2});
        assert_eq!(
            *local_config(&config).unwrap(),
            json!({"policy": "local", "count": 2})
        );
        let plain = json!({"count": 2});
        assert!(matches!(local_config(&plain).unwrap(), Cow::Borrowed(_)));
    }
}
