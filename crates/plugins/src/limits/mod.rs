//! What the limiting plugins (`limit-count`, `limit-req`, `limit-conn`) share: the key a
//! request counts under ([`key`]), the per-key counts of `policy: local` ([`state`]), the
//! Redis policies ([`redis`]), and holding a request without holding a worker.

pub(crate) mod key;
pub(crate) mod redis;
pub(crate) mod state;

use std::time::Duration;

use pylon_plugin::{Call, FailurePolicy, Step};
use schemars::JsonSchema;
use serde::Deserialize;

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

/// A shorter wait is not worth holding a request for (as APISIX: a millisecond).
pub(crate) const MIN_DELAY: Duration = Duration::from_millis(1);

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
