//! The consumers' credentials, indexed for the authentication plugins.

use std::any::Any;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use pylon_plugin::Consumer;
use ring::digest::{digest, Digest, SHA256};

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
/// Lookup values (API keys among them) are indexed by their SHA-256 digest, never by the
/// value itself: finding a key compares digests, so the time a lookup takes says nothing
/// about how much of a guessed key was right.
#[derive(Default)]
pub struct Credentials {
    /// One table per authentication plugin: a handful, found by a scan.
    tables: Vec<(&'static str, Table)>,
}

type Table = HashMap<[u8; 32], Credential, BuildHasherDefault<DigestHasher>>;

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
        let table = &mut self.tables[at].1;
        let key = fingerprint(lookup);
        if let Some(existing) = table.get(&key) {
            return Err(Duplicate {
                consumer: existing.consumer.username().to_owned(),
            });
        }
        table.insert(key, credential);
        Ok(())
    }

    pub fn find(&self, plugin: &str, lookup: &str) -> Option<&Credential> {
        let (_, table) = self.tables.iter().find(|(p, _)| *p == plugin)?;
        table.get(&fingerprint(lookup))
    }
}

/// Hashes a SHA-256 digest by its first eight bytes. A digest is uniform already: hashing it
/// again, as the default SipHash would on every lookup, spreads it no better.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // The slice's length comes first, the same for every key; then the digest.
        let mut word = [0; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
    }
}

fn fingerprint(lookup: &str) -> [u8; 32] {
    let d: Digest = digest(&SHA256, lookup.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}
