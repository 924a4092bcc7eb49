//! The consumers' credentials, indexed for the authentication plugins.

use std::any::Any;
use std::collections::HashMap;
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
    tables: HashMap<&'static str, HashMap<[u8; 32], Credential>>,
}

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
        let table = self.tables.entry(plugin).or_default();
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
        self.tables.get(plugin)?.get(&fingerprint(lookup))
    }
}

fn fingerprint(lookup: &str) -> [u8; 32] {
    let d: Digest = digest(&SHA256, lookup.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}
