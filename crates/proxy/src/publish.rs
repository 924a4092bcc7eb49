//! The control side of configuration: follow the store, and for every change validate,
//! compile and publish a new snapshot. A change that fails leaves the last good snapshot in
//! force.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pylon_model::{Config, Key};
use pylon_store::{ConfigStore, Event, Revision, StoreError};

use crate::health::HealthRegistry;
use crate::settings::UpstreamDefaults;
use crate::snapshot::{Snapshot, SnapshotCell};
use crate::tls::TlsContext;

const RELIST_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("configuration at revision {revision} is not valid:\n{errors}")]
    Invalid { revision: Revision, errors: String },
}

pub struct Publisher {
    store: Arc<dyn ConfigStore>,
    cell: SnapshotCell,
    defaults: UpstreamDefaults,
    tls: Arc<TlsContext>,
    entries: BTreeMap<Key, serde_json::Value>,
    revision: Revision,
    health: Arc<HealthRegistry>,
}

impl Publisher {
    pub fn new(
        store: Arc<dyn ConfigStore>,
        cell: SnapshotCell,
        defaults: UpstreamDefaults,
        tls: Arc<TlsContext>,
    ) -> Self {
        Self {
            store,
            cell,
            defaults,
            tls,
            entries: BTreeMap::new(),
            revision: 0,
            health: Arc::default(),
        }
    }

    /// The health state of the published upstreams, for the control API.
    pub fn health(&self) -> Arc<HealthRegistry> {
        self.health.clone()
    }

    /// Lists the store and publishes what it holds.
    pub async fn load(&mut self) -> Result<Arc<Snapshot>, PublishError> {
        let listing = self.store.list().await?;
        self.entries = listing
            .entries
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect();
        self.revision = listing.revision;
        self.publish()?;
        Ok(self.cell.load_full())
    }

    /// Follows the store's changes for ever, listing again whenever the watch breaks.
    pub async fn follow(mut self) {
        loop {
            match self.store.watch(self.revision).await {
                Ok(mut changes) => {
                    while let Some(Ok(change)) = changes.recv().await {
                        for event in change.events {
                            match event {
                                Event::Put(entry) => {
                                    drop(self.entries.insert(entry.key, entry.value))
                                }
                                Event::Delete { key, .. } => drop(self.entries.remove(&key)),
                            }
                        }
                        self.revision = change.revision;
                        if let Err(e) = self.publish() {
                            tracing::error!("{e}; still serving the previous configuration");
                        }
                    }
                }
                Err(e) => tracing::warn!("config watch failed: {e}"),
            }
            tokio::time::sleep(RELIST_BACKOFF).await;
            if let Err(e) = self.load().await {
                tracing::error!("config relist failed: {e}");
            }
        }
    }

    fn publish(&self) -> Result<(), PublishError> {
        let invalid = |errors: String| PublishError::Invalid {
            revision: self.revision,
            errors,
        };
        let config = Config::from_entries(&self.entries).map_err(|e| invalid(e.to_string()))?;
        let started = std::time::Instant::now();
        let mut snapshot = Snapshot::compile(&config, self.revision, &self.defaults, &self.tls)
            .map_err(|e| invalid(e.to_string()))?;
        self.health.attach(&mut snapshot);
        let routes = snapshot.router.len();
        self.cell.store(Arc::new(snapshot));
        tracing::info!(
            revision = self.revision,
            routes,
            compile_ms = started.elapsed().as_secs_f64() * 1e3,
            "configuration published"
        );
        Ok(())
    }
}
