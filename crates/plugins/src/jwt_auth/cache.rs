//! Tokens already verified, so that a client sending the same token again costs a digest
//! and a map lookup instead of a signature check (an RSA verification is tens of
//! microseconds).
//!
//! The cache belongs to one plugin instance, which is rebuilt with every configuration
//! change: an entry never outlives the consumer and key it was verified with. Entries end
//! with their token's `exp` (plus the grace period). Workers share the cache, so it is
//! split into shards each behind its own lock, held only to look up or insert.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use pylon_plugin::Consumer;
use ring::digest::{digest, SHA256};
use serde_json::{Map, Value};

const SHARDS: usize = 16;
/// 10,000 tokens in all.
const PER_SHARD: usize = 625;

/// What verifying a token established.
#[derive(Clone)]
pub(super) struct Verified {
    pub consumer: Arc<Consumer>,
    /// The payload, kept when the route stores it for other plugins.
    pub payload: Option<Arc<Map<String, Value>>>,
    /// Seconds since the epoch from which the token is no longer valid; `None` when it has
    /// no `exp`.
    pub valid_until: Option<f64>,
}

impl Verified {
    fn valid_at(&self, now: u64) -> bool {
        self.valid_until.is_none_or(|end| (now as f64) < end)
    }
}

pub(super) struct VerifiedTokens {
    shards: [Mutex<HashMap<[u8; 32], Verified>>; SHARDS],
}

impl VerifiedTokens {
    pub(super) fn new() -> VerifiedTokens {
        VerifiedTokens {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    /// What verifying `token` established, if it was verified and is still valid at `now`.
    pub(super) fn get(&self, token: &str, now: u64) -> Option<Verified> {
        let key = fingerprint(token);
        let mut shard = self.shard(&key);
        let verified = shard.get(&key)?;
        if verified.valid_at(now) {
            Some(verified.clone())
        } else {
            shard.remove(&key);
            None
        }
    }

    pub(super) fn insert(&self, token: &str, verified: Verified, now: u64) {
        let key = fingerprint(token);
        let mut shard = self.shard(&key);
        if shard.len() >= PER_SHARD {
            shard.retain(|_, v| v.valid_at(now));
            // Full of live tokens: start over rather than track usage on every hit; the
            // cost is one verification per token still in use.
            if shard.len() >= PER_SHARD {
                shard.clear();
            }
        }
        shard.insert(key, verified);
    }

    fn shard(&self, key: &[u8; 32]) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Verified>> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent.
        self.shards[usize::from(key[0]) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

fn fingerprint(token: &str) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use pylon_plugin::Chain;

    use super::*;

    fn verified(valid_until: Option<f64>) -> Verified {
        Verified {
            consumer: Arc::new(Consumer::new("jack".into(), None, Chain::default())),
            payload: None,
            valid_until,
        }
    }

    #[test]
    fn an_entry_ends_with_its_token() {
        let cache = VerifiedTokens::new();
        cache.insert("a", verified(Some(100.0)), 10);
        cache.insert("b", verified(None), 10);
        assert!(cache.get("a", 99).is_some());
        assert!(cache.get("a", 100).is_none());
        assert!(cache.get("a", 99).is_none(), "an expired entry is dropped");
        assert!(cache.get("b", u64::MAX).is_some());
        assert!(cache.get("c", 10).is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = VerifiedTokens::new();
        for i in 0..3 * SHARDS * PER_SHARD {
            cache.insert(&i.to_string(), verified(None), 0);
        }
        assert!(cache.len() <= SHARDS * PER_SHARD, "{}", cache.len());
        assert!(cache.len() > 0);
    }
}
