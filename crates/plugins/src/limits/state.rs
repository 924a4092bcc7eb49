//! The per-key state of a limiting plugin on one node (`policy: local`): a counter, a bucket,
//! a number of requests in flight, for every key seen, shared by all workers.
//!
//! Keys come from clients (an address, a header), so the map is hashed with a random key, and
//! spread over shards, each behind its own lock held for a few instructions: workers counting
//! different keys rarely meet. A shard that grows past [`SWEEP_AT`] drops the entries that no
//! longer hold anything (a window that ended, a bucket that drained) before it takes a new one;
//! if most are live, it sweeps next at twice their number, so that sweeping stays a small
//! share of the work however many keys are live.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::Instant;

/// Shards per map: a power of two, a few times the cores a gateway runs on.
const SHARDS: usize = 64;
/// A shard with this many keys sweeps out its stale ones.
const SWEEP_AT: usize = 4096;

/// Whether an entry holds nothing any more at an instant.
type Stale<T> = dyn Fn(&T, Instant) -> bool + Send + Sync;

pub(crate) struct KeyedState<T> {
    hasher: RandomState,
    shards: Box<[Mutex<Shard<T>>]>,
    /// Whether an entry holds nothing any more at this instant and may be dropped: a
    /// closure, so that it can read the plugin's configuration (a window's length) instead of
    /// each entry keeping a copy.
    stale: Box<Stale<T>>,
}

struct Shard<T> {
    map: HashMap<Box<str>, T>,
    /// The size at which the next new key first sweeps.
    sweep_at: usize,
}

impl<T> KeyedState<T> {
    pub fn new(stale: impl Fn(&T, Instant) -> bool + Send + Sync + 'static) -> Self {
        KeyedState {
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        sweep_at: SWEEP_AT,
                    })
                })
                .collect(),
            stale: Box::new(stale),
        }
    }

    /// Runs `f` on `key`'s entry, made by `new` if there is none, under its shard's lock.
    pub fn with<R>(&self, key: &str, new: impl FnOnce() -> T, f: impl FnOnce(&mut T) -> R) -> R {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[hash as usize & (SHARDS - 1)];
        // A worker that panicked mid-update left a counter, which is still a counter.
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = shard.map.get_mut(key) {
            return f(entry);
        }
        if shard.map.len() >= shard.sweep_at {
            let (stale, now) = (&self.stale, Instant::now());
            shard.map.retain(|_, entry| !stale(entry, now));
            shard.sweep_at = SWEEP_AT.max(2 * shard.map.len());
        }
        f(shard.map.entry(key.into()).or_insert_with(new))
    }

    /// Runs `f` on `key`'s entry if there is one.
    pub fn with_existing<R>(&self, key: &str, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[hash as usize & (SHARDS - 1)];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        shard.map.get_mut(key).map(f)
    }

    /// How many keys are held, stale ones included.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_has_its_own_entry_and_stale_ones_are_swept() {
        let state: KeyedState<u32> = KeyedState::new(|n, _| *n == 0);
        assert_eq!(
            state.with(
                "a",
                || 0,
                |n| {
                    *n += 1;
                    *n
                }
            ),
            1
        );
        assert_eq!(
            state.with(
                "a",
                || 0,
                |n| {
                    *n += 1;
                    *n
                }
            ),
            2
        );
        assert_eq!(state.with_existing("b", |n| *n), None);
        // Far more keys than a shard sweeps at, all stale once made: the map stays bounded.
        for i in 0..SHARDS * SWEEP_AT * 2 {
            state.with(&i.to_string(), || 0, |_| ());
        }
        assert!(
            state.len() <= SHARDS * SWEEP_AT + 1,
            "{} keys held",
            state.len()
        );
        assert_eq!(
            state.with_existing("a", |n| *n),
            Some(2),
            "a live key stays"
        );
    }
}
