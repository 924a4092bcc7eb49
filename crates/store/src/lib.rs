//! Pylon's configuration store.
//!
//! One trait, [`ConfigStore`]: list everything at a revision, watch the changes after a
//! revision, and write with compare-and-swap. The data plane only ever lists and watches, so a
//! backend (the YAML file here; the embedded store and etcd next) plugs in without touching it.
#![forbid(unsafe_code)]

mod duration;
mod embedded;
mod entries;
mod etcd;
mod event_log;
mod keyring;
mod replica;
mod secret_file;
mod yaml;

pub use duration::deserialize_duration;
pub use embedded::{EmbeddedError, EmbeddedOptions, EmbeddedStore};
pub use entries::Entries;
pub use etcd::{EtcdError, EtcdKeys, EtcdSettings, EtcdStore, RawEntry, RawEvent, RawWatchStream};
pub use event_log::EventLog;
pub use keyring::{Keyring, KeyringError};
pub use replica::{Replica, View};
pub use secret_file::read_or_create_secrets;
pub use yaml::YamlStore;

use async_trait::async_trait;
use pylon_model::{Key, Kind};
use tokio::sync::mpsc;

/// A store revision: increases with every change, never reused.
pub type Revision = u64;

/// One resource as stored: its raw JSON, checked by the reader, not the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: Key,
    pub value: serde_json::Value,
    /// The revision that created this entry (APISIX's `createdIndex`).
    pub create_revision: Revision,
    /// The revision that last modified this entry (APISIX's `modifiedIndex`).
    pub mod_revision: Revision,
}

/// Everything in the store at one revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub revision: Revision,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Put(Entry),
    Delete { key: Key, revision: Revision },
}

impl Event {
    pub fn key(&self) -> &Key {
        match self {
            Event::Put(entry) => &entry.key,
            Event::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(entry) => entry.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

/// The changes of one revision, applied together: a reader never sees half of a change.
/// Events are the configuration's, or raw keys' for a watch of [`EtcdKeys`].
#[derive(Debug, Clone, PartialEq)]
pub struct Change<E = Event> {
    pub revision: Revision,
    pub events: Vec<E>,
}

/// What a watcher receives: changes in revision order, or the error that ended the watch.
pub type WatchStream = mpsc::Receiver<Result<Change, StoreError>>;

/// The condition a key must meet for a transaction to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// The key must not exist.
    Absent,
    /// The key must exist and have been last modified at this revision.
    ModRevision(Revision),
}

/// A set of writes applied atomically, as one revision, only if every condition holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Txn {
    /// Nothing written through this store may have changed after this revision: the writer
    /// checked its change against the whole configuration as of then (references included),
    /// and that check must still hold when it commits.
    pub unchanged_since: Option<Revision>,
    pub conditions: Vec<(Key, Precondition)>,
    /// Puts (`Some`) and deletes (`None`).
    pub writes: Vec<(Key, Option<serde_json::Value>)>,
}

impl Txn {
    pub fn put(key: Key, value: serde_json::Value) -> Txn {
        Txn {
            writes: vec![(key, Some(value))],
            ..Txn::default()
        }
    }

    pub fn delete(key: Key) -> Txn {
        Txn {
            writes: vec![(key, None)],
            ..Txn::default()
        }
    }

    pub fn unchanged_since(mut self, revision: Revision) -> Txn {
        self.unchanged_since = Some(revision);
        self
    }

    pub fn when(mut self, key: Key, condition: Precondition) -> Txn {
        self.conditions.push((key, condition));
        self
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The store no longer holds the history the watch asked for; list again.
    #[error("revision {0} is no longer available; list again")]
    Compacted(Revision),
    #[error("this store is read-only: {0}")]
    ReadOnly(&'static str),
    /// A condition of a transaction did not hold; nothing was written.
    #[error("the configuration changed concurrently; nothing was written")]
    Conflict,
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait ConfigStore: Send + Sync {
    /// Every entry but those of the history kinds ([`Kind::is_history`]: versions and audit
    /// records, which only accumulate), at the store's current revision.
    async fn list(&self) -> Result<Listing, StoreError>;

    /// The entries of `kind` whose id starts with `id_prefix`, in key order: how history is
    /// read.
    async fn history(&self, kind: Kind, id_prefix: &str) -> Result<Vec<Entry>, StoreError>;

    /// One entry, as of the store's current revision.
    async fn get(&self, key: &Key) -> Result<Option<Entry>, StoreError>;

    /// The revision of the last commit made through this store, by any process. A copy that
    /// has reached it has seen every write made through Pylon (the Admin API reads its node's
    /// copy, and waits for this before it checks a write against it).
    async fn committed_revision(&self) -> Result<Revision, StoreError>;

    /// The changes after `after`, in order. The stream ends with [`StoreError::Compacted`] when
    /// the store cannot serve from that revision; the reader then lists again. It ends with
    /// another error, or just ends, when the store is lost; the reader lists again then too.
    async fn watch(&self, after: Revision) -> Result<WatchStream, StoreError>;

    /// Applies `txn` if its conditions hold, or fails with [`StoreError::Conflict`] and writes
    /// nothing. Returns the store's revision after the transaction (unchanged if every write
    /// was a no-op). Only an acknowledged commit is durable.
    async fn commit(&self, txn: Txn) -> Result<Revision, StoreError>;
}
