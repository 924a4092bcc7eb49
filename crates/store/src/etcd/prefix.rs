//! Any prefix of an etcd cluster, read and watched as raw keys and values: for the parts of
//! Pylon that keep their own data in etcd beside the configuration (service discovery's
//! registry). Same connections, paging, failover and watch relay as the configuration store,
//! without its key layout.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::endpoints::{Endpoints, EtcdError};
use super::list_range;
use super::proto::{self, EventType};
use super::watch::{self, Decode};
use crate::{Change, Revision, StoreError};

/// One key and its value, as etcd holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    Put(RawEntry),
    /// The key was deleted, or its lease expired or was revoked.
    Delete {
        key: Vec<u8>,
    },
}

/// What a watcher of raw keys receives: changes in revision order, or the error that ended the
/// watch ([`StoreError::Compacted`] or [`StoreError::Unavailable`]: list again).
pub type RawWatchStream = mpsc::Receiver<Result<Change<RawEvent>, StoreError>>;

/// A client for the keys under prefixes of one etcd cluster.
pub struct EtcdKeys {
    endpoints: Endpoints,
}

impl EtcdKeys {
    /// Connects lazily, on the first request, so this succeeds while etcd is down. Needs a
    /// Tokio runtime: the connections are driven by tasks on it. `timeout` bounds one request
    /// to one endpoint, connecting included.
    pub fn new(endpoints: &[String], timeout: Duration) -> Result<EtcdKeys, EtcdError> {
        Ok(EtcdKeys {
            endpoints: Endpoints::new(endpoints, timeout)?,
        })
    }

    /// Every key beginning with `prefix`, in key order, and the revision they were read at.
    pub async fn list(&self, prefix: &str) -> Result<(Revision, Vec<RawEntry>), StoreError> {
        let mut entries = Vec::new();
        let revision = list_range(&self.endpoints, range(prefix), 0, |kv| {
            entries.push(raw_entry(kv));
        })
        .await?;
        Ok((revision, entries))
    }

    /// The changes to keys beginning with `prefix` after revision `after`.
    pub async fn watch(&self, prefix: &str, after: Revision) -> Result<RawWatchStream, StoreError> {
        watch::start(&self.endpoints, Arc::new(Raw), range(prefix), after).await
    }
}

/// Passes every event on as it is.
struct Raw;

impl Decode for Raw {
    type Event = RawEvent;

    fn decode(&self, raw: &proto::Event) -> Option<RawEvent> {
        let kv = raw.kv.as_ref()?;
        Some(match raw.r#type() {
            EventType::Put => RawEvent::Put(raw_entry(kv)),
            EventType::Delete => RawEvent::Delete {
                key: kv.key.clone(),
            },
        })
    }
}

fn raw_entry(kv: &proto::KeyValue) -> RawEntry {
    RawEntry {
        key: kv.key.clone(),
        value: kv.value.clone(),
    }
}

/// `[prefix, end)`: `end` is the smallest key after every key beginning with `prefix`, the
/// prefix with its last byte below 0xff increased (and what followed it dropped).
pub(super) fn range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let start = prefix.as_bytes().to_vec();
    let mut end = start.clone();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (start, end);
        }
    }
    // Every byte 0xff (or no prefix): etcd reads `"\0"` as "to the end of the key space".
    (start, vec![0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_covers_the_prefix_and_nothing_else() {
        let (start, end) = range("/services/web/");
        let inside = |key: &str| (start.as_slice()..end.as_slice()).contains(&key.as_bytes());
        assert!(inside("/services/web/1"));
        assert!(inside("/services/web/\u{10ffff}"));
        assert!(!inside("/services/web"));
        assert!(!inside("/services/web0"));
        assert!(!inside("/services/webx/1"));
        assert_eq!(range("a\u{ff}").1, b"a\xc3\xc0".to_vec());
        assert_eq!(range(""), (Vec::new(), vec![0]));
    }
}
