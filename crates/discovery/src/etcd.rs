//! Pylon's etcd registry: an instance of service `S` registers itself as the key
//! `<prefix>/S/<instance id>`, attached to a lease it keeps alive, so that the key goes when the
//! instance dies; the value is one JSON object:
//!
//! ```json
//! {"host": "10.0.0.1", "port": 8080, "weight": 1, "priority": 0, "metadata": {"zone": "a"}}
//! ```
//!
//! `host` (an IP literal) and `port` (1 to 65535) are required, `weight` defaults to 1,
//! `priority` to 0, `metadata` to `{}`; other fields are ignored. A key whose value is not such
//! an object is no instance (and is logged).
//!
//! Each watched service is listed, then watched from the listing's revision; a watch that ends
//! (etcd restarted or unreachable, history compacted) lists again, with backoff while etcd
//! fails, and the last known instances stay meanwhile.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use pylon_store::{EtcdKeys, RawEvent, Revision, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::task::AbortHandle;

use crate::backoff::Backoff;
use crate::book::{Book, Provider, Publisher};
use crate::{DiscoveryError, EtcdRegistrySettings, Node};

pub(crate) const KIND: &str = "etcd";

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(10);

pub(crate) struct Etcd {
    keys: Arc<EtcdKeys>,
    /// Without its trailing `/`.
    prefix: String,
    settings: EtcdRegistrySettings,
}

impl Etcd {
    pub fn new(settings: &EtcdRegistrySettings) -> Result<Etcd, DiscoveryError> {
        let keys = EtcdKeys::new(&settings.endpoints, settings.timeout).map_err(|e| {
            DiscoveryError::Settings {
                kind: KIND,
                reason: e.to_string(),
            }
        })?;
        Ok(Etcd {
            keys: Arc::new(keys),
            prefix: settings.prefix.trim_end_matches('/').to_owned(),
            settings: settings.clone(),
        })
    }
}

impl Provider for Etcd {
    fn service(&self, name: &str) -> Result<String, DiscoveryError> {
        if name.is_empty() || name.contains(|c: char| c == '/' || c.is_control()) {
            return Err(DiscoveryError::BadServiceName {
                kind: KIND,
                name: name.to_owned(),
                reason: "a service name is one key segment: not empty, no `/`".to_owned(),
            });
        }
        Ok(name.to_owned())
    }

    fn follow(&self, service: &str, publisher: Publisher) -> Option<AbortHandle> {
        let follower = Follower {
            keys: self.keys.clone(),
            prefix: format!("{}/{service}/", self.prefix),
            instances: BTreeMap::new(),
            publisher,
        };
        Some(tokio::spawn(follower.run()).abort_handle())
    }

    fn dump(&self, book: &Book) -> Value {
        json!({"services": book.services(), "config": self.settings})
    }
}

/// Keeps one service's instances: its keys, listed then watched.
struct Follower {
    keys: Arc<EtcdKeys>,
    /// `<prefix>/<service>/`.
    prefix: String,
    /// By key.
    instances: BTreeMap<Vec<u8>, Node>,
    publisher: Publisher,
}

impl Follower {
    async fn run(mut self) {
        let mut retry = Backoff::new(FIRST_RETRY, MAX_RETRY);
        loop {
            let end = match self.keys.list(&self.prefix).await {
                Ok((revision, entries)) => {
                    retry.succeeded();
                    self.instances = entries
                        .into_iter()
                        .filter_map(|entry| {
                            let node = self.instance(&entry.key, &entry.value)?;
                            Some((entry.key, node))
                        })
                        .collect();
                    self.publish();
                    self.follow_changes(revision).await
                }
                Err(error) => error,
            };
            let wait = retry.failed();
            match end {
                // Expected now and then: only the history is gone.
                StoreError::Compacted(_) => tracing::info!(prefix = %self.prefix, "{end}"),
                _ => tracing::warn!(
                    prefix = %self.prefix,
                    "etcd discovery keeps the last instances: {end}; listing again in {wait:?}"
                ),
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Applies the changes after `revision` until the watch ends; returns why it ended.
    async fn follow_changes(&mut self, revision: Revision) -> StoreError {
        let mut changes = match self.keys.watch(&self.prefix, revision).await {
            Ok(changes) => changes,
            Err(error) => return error,
        };
        loop {
            let change = match changes.recv().await {
                Some(Ok(change)) => change,
                Some(Err(error)) => return error,
                None => return StoreError::Unavailable("the etcd watch ended".to_owned()),
            };
            for event in change.events {
                match event {
                    RawEvent::Put(entry) => match self.instance(&entry.key, &entry.value) {
                        Some(node) => self.instances.insert(entry.key, node),
                        None => self.instances.remove(&entry.key),
                    },
                    RawEvent::Delete { key } => self.instances.remove(&key),
                };
            }
            self.publish();
        }
    }

    fn publish(&self) {
        self.publisher
            .publish(self.instances.values().cloned().collect());
    }

    fn instance(&self, key: &[u8], value: &[u8]) -> Option<Node> {
        match parse_instance(value) {
            Ok(node) => Some(node),
            Err(error) => {
                tracing::warn!(
                    key = %String::from_utf8_lossy(key),
                    "etcd discovery: not an instance: {error}"
                );
                None
            }
        }
    }
}

#[derive(Deserialize)]
struct Instance {
    host: IpAddr,
    port: u16,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    metadata: serde_json::Map<String, Value>,
}

fn one() -> u32 {
    1
}

fn parse_instance(value: &[u8]) -> Result<Node, String> {
    let instance: Instance = serde_json::from_slice(value).map_err(|e| e.to_string())?;
    if instance.port == 0 {
        return Err("port 0".to_owned());
    }
    Ok(Node {
        host: instance.host.to_string(),
        port: instance.port,
        weight: instance.weight,
        priority: instance.priority,
        metadata: instance.metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_an_address_with_optional_weight_priority_and_metadata() {
        let node = parse_instance(br#"{"host": "10.0.0.1", "port": 8080}"#).unwrap();
        assert_eq!(
            (node.host.as_str(), node.port, node.weight),
            ("10.0.0.1", 8080, 1)
        );
        let node = parse_instance(
            br#"{"host": "::1", "port": 80, "weight": 5, "priority": -1,
                 "metadata": {"zone": "a"}, "version": "2"}"#,
        )
        .unwrap();
        assert_eq!(
            (node.host.as_str(), node.weight, node.priority),
            ("::1", 5, -1)
        );
        assert_eq!(node.metadata["zone"], "a");
        for bad in [
            &br#"{"host": "web.internal", "port": 80}"#[..],
            br#"{"host": "10.0.0.1", "port": 0}"#,
            br#"{"host": "10.0.0.1"}"#,
            b"10.0.0.1:80",
        ] {
            assert!(
                parse_instance(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
