//! The consumers' credentials, indexed for the authentication plugins.

use std::any::Any;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Arc;

use pylon_plugin::Consumer;
use subtle::ConstantTimeEq;

/// What a credential holds besides its lookup value: a password, a signing key. Each
/// authentication plugin knows its own type.
pub type Secret = Arc<dyn Any + Send + Sync>;

/// One consumer's credential for one authentication plugin.
#[derive(Clone)]
pub struct Credential {
    pub consumer: Arc<Consumer>,
    pub secret: Secret,
}

/// Every credential of a configuration version, by plugin and by lookup value.
///
/// A lookup value (an API key among them) is found by a hash keyed with a secret drawn for
/// this table, so nobody outside can aim a guess at the bucket of a real key, and it is
/// compared in constant time: the time a lookup takes says nothing about how much of a
/// guessed key was right.
#[derive(Default)]
pub struct Credentials {
    hasher: RandomState,
    /// One table per authentication plugin: a handful, found by a scan.
    tables: Vec<(&'static str, Table)>,
}

/// Lookup values by their keyed hash; a bucket holds the rare values that share one.
type Table = HashMap<u64, Vec<(Box<[u8]>, Credential)>, BuildHasherDefault<KeyedHash>>;

/// Another consumer already has this lookup value for this plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub consumer: String,
}

impl Credentials {
    /// Adds a credential; refused when another consumer has the same lookup value.
    pub fn insert(
        &mut self,
        plugin: &'static str,
        lookup: &str,
        credential: Credential,
    ) -> Result<(), Duplicate> {
        let at = match self.tables.iter().position(|(p, _)| *p == plugin) {
            Some(at) => at,
            None => {
                self.tables.push((plugin, Table::default()));
                self.tables.len() - 1
            }
        };
        let lookup = lookup.as_bytes();
        let bucket = self.tables[at]
            .1
            .entry(self.hasher.hash_one(lookup))
            .or_default();
        if let Some((_, existing)) = find_in(bucket, lookup) {
            return Err(Duplicate {
                consumer: existing.consumer.username().to_owned(),
            });
        }
        bucket.push((lookup.into(), credential));
        Ok(())
    }

    pub fn find(&self, plugin: &str, lookup: &str) -> Option<&Credential> {
        let (_, table) = self.tables.iter().find(|(p, _)| *p == plugin)?;
        let lookup = lookup.as_bytes();
        let bucket = table.get(&self.hasher.hash_one(lookup))?;
        find_in(bucket, lookup).map(|(_, credential)| credential)
    }
}

/// The entry of a bucket whose value is `lookup`, compared in constant time.
fn find_in<'b>(
    bucket: &'b [(Box<[u8]>, Credential)],
    lookup: &[u8],
) -> Option<&'b (Box<[u8]>, Credential)> {
    bucket
        .iter()
        .find(|(value, _)| bool::from(value.ct_eq(lookup)))
}

/// Hashes a keyed hash by taking it as it is: it is uniform already, and hashing it again,
/// as the default SipHash would on every lookup, spreads it no better.
#[derive(Default)]
struct KeyedHash(u64);

impl Hasher for KeyedHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use pylon_plugin::Chain;

    use super::*;

    fn credential(name: &str) -> Credential {
        Credential {
            consumer: Arc::new(Consumer::new(name.into(), None, Chain::default())),
            secret: Arc::new(()),
        }
    }

    #[test]
    fn values_are_found_per_plugin_and_taken_once() {
        let mut credentials = Credentials::default();
        credentials
            .insert("key-auth", "k1", credential("jack"))
            .unwrap();
        credentials
            .insert("key-auth", "k2", credential("rose"))
            .unwrap();
        credentials
            .insert("basic-auth", "k1", credential("rose"))
            .unwrap();
        let found = |plugin, lookup| {
            credentials
                .find(plugin, lookup)
                .map(|c| c.consumer.username().to_owned())
        };
        assert_eq!(found("key-auth", "k1").as_deref(), Some("jack"));
        assert_eq!(found("key-auth", "k2").as_deref(), Some("rose"));
        assert_eq!(found("basic-auth", "k1").as_deref(), Some("rose"));
        assert_eq!(found("key-auth", "k"), None);
        assert_eq!(found("key-auth", "k10"), None);
        assert_eq!(found("jwt-auth", "k1"), None);
        let duplicate = credentials.insert("key-auth", "k2", credential("tom"));
        assert_eq!(duplicate.unwrap_err().consumer, "rose");
    }
}
