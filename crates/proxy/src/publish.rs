//! The control side of configuration: follow the process's [`Replica`] of the store, and for
//! every new view validate, compile and publish a new snapshot.
//!
//! Resources are parsed once per version, and compiled as their change requires: a view that
//! changes one route of ten thousand re-parses and recompiles that route only (see
//! [`crate::compile`]). A resource that does not validate, or a route whose references are
//! missing, is left out and logged; the rest of the configuration is served. (The YAML store refuses a file with
//! any error before it gets here, so a file is applied whole or not at all.)

use std::sync::Arc;

use pylon_discovery::Registry;
use pylon_model::{Config, FieldError, Key, Kind, Resource, ValidationErrors};
use pylon_store::{Keyring, Replica, Revision, View};
use tokio::sync::watch;

use crate::compile::{Compiled, Compiler};
use crate::health::HealthRegistry;
use crate::settings::UpstreamDefaults;
use crate::snapshot::{Snapshot, SnapshotCell};
use crate::tls::TlsContext;

pub struct Publisher {
    views: watch::Receiver<Arc<View>>,
    cell: SnapshotCell,
    compiler: Compiler,
    /// Tells when discovered nodes change.
    discovery: Registry,
    /// Opens the SSL private keys, which the store holds sealed.
    keyring: Arc<Keyring>,
    health: Arc<HealthRegistry>,
    /// Every resource that validated, kept in step with the view.
    config: Config,
    /// The view `config` was last brought in step with.
    parsed: Arc<View>,
    /// The revision of the snapshot the workers serve, for whoever waits for a write to be
    /// served (the Admin API answers only then).
    served: watch::Sender<Revision>,
    /// The snapshot the last publish replaced. Kept until the next one so that, once the
    /// workers have moved on, this thread frees it: freeing 10,000 routes takes milliseconds
    /// that must not be spent in a worker between two requests.
    retired: Option<Arc<Snapshot>>,
}

impl Publisher {
    pub fn new(
        replica: &Replica,
        cell: SnapshotCell,
        defaults: UpstreamDefaults,
        tls: Arc<TlsContext>,
        keyring: Arc<Keyring>,
        discovery: Registry,
    ) -> Self {
        let health = Arc::<HealthRegistry>::default();
        Self {
            views: replica.subscribe(),
            cell,
            compiler: Compiler::new(defaults, tls, health.clone(), discovery.clone()),
            discovery,
            keyring,
            health,
            config: Config::default(),
            parsed: Arc::default(),
            served: watch::Sender::new(0),
            retired: None,
        }
    }

    /// Follows the revision the workers serve: each publish moves it on once its snapshot is
    /// in place, so a request that starts after that sees the configuration of that revision.
    pub fn served(&self) -> watch::Receiver<Revision> {
        self.served.subscribe()
    }

    /// The health state of the published upstreams, for the control API.
    pub fn health(&self) -> Arc<HealthRegistry> {
        self.health.clone()
    }

    /// Publishes the replica's current view.
    pub fn publish_current(&mut self) -> Arc<Snapshot> {
        let view = self.views.borrow_and_update().clone();
        self.publish(&view);
        self.cell.load_full()
    }

    /// The discovery registry upstreams find their nodes with, for the control API.
    pub fn discovery(&self) -> Registry {
        self.discovery.clone()
    }

    /// Publishes every new view, and every change of discovered nodes, for ever.
    pub async fn follow(mut self) {
        let mut discovered = self.discovery.changed();
        loop {
            tokio::select! {
                changed = self.views.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let view = self.views.borrow_and_update().clone();
                    self.publish(&view);
                }
                Ok(()) = discovered.changed() => {
                    discovered.borrow_and_update();
                    self.rediscover();
                }
            }
        }
    }

    /// Publishes the version in force again, with the nodes discovery has found since.
    fn rediscover(&mut self) {
        let started = std::time::Instant::now();
        let revision = self.cell.load().revision;
        if let Some(compiled) = self.compiler.rediscover(&self.config, revision) {
            self.install(compiled);
            tracing::info!(
                revision,
                publish_ms = started.elapsed().as_secs_f64() * 1e3,
                "discovered nodes published"
            );
        }
    }

    /// Puts a compiled version in the workers' hands, saying which routes it leaves out.
    fn install(&mut self, compiled: Compiled) {
        let revision = compiled.snapshot.revision;
        for e in &compiled.not_served {
            tracing::error!(revision, "route not served: {e}");
        }
        self.retired = Some(self.cell.swap(Arc::new(compiled.snapshot)));
    }

    fn publish(&mut self, view: &Arc<View>) {
        let started = std::time::Instant::now();
        let changed = self.update_config(view);
        if changed.is_empty() {
            // Only the control plane's records changed (a node's heartbeat, a change set under
            // review): the snapshot in force already serves this revision.
            self.served.send_replace(view.revision);
            return;
        }
        let compiled = self.compiler.update(&self.config, &changed, view.revision);
        let routes = compiled.snapshot.router.len();
        self.install(compiled);
        self.served.send_replace(view.revision);
        tracing::info!(
            revision = view.revision,
            routes,
            changed = changed.len(),
            publish_ms = started.elapsed().as_secs_f64() * 1e3,
            "configuration published"
        );
    }

    /// Brings `config` in step with `view`, parsing only the entries that changed since the
    /// view it was last in step with (found by the chunks the two views do not share);
    /// returns the keys that changed.
    fn update_config(&mut self, view: &Arc<View>) -> Vec<Key> {
        let previous = std::mem::replace(&mut self.parsed, view.clone());
        let mut changed = Vec::new();
        let changes = previous.entries.changes(&view.entries);
        for (key, entry) in changes
            .into_iter()
            .filter(|(key, _)| key.kind.is_resource())
        {
            match entry.map(|e| self.parse(key, &e.value)) {
                Some(Ok(resource)) => self.config.insert(key, resource),
                Some(Err(errors)) => {
                    self.config.remove(key);
                    log_invalid(key, &errors);
                }
                None => self.config.remove(key),
            }
            changed.push(key.clone());
        }
        changed
    }

    /// Parses one entry; its sealed secrets (an ssl's private keys, a consumer's credentials)
    /// are opened first.
    fn parse(&self, key: &Key, value: &serde_json::Value) -> Result<Resource, ValidationErrors> {
        let opened = match key.kind {
            Kind::Ssls => {
                let mut opened = value.clone();
                self.keyring
                    .open_ssl(&mut opened)
                    .map_err(|e| FieldError::new("key", e.to_string()))?;
                opened
            }
            Kind::Consumers | Kind::Credentials => {
                let mut opened = value.clone();
                let secrets = pylon_plugins::secret_pointers(key.kind, value);
                self.keyring
                    .open_at(&mut opened, &secrets)
                    .map_err(|e| FieldError::new("plugins", e.to_string()))?;
                opened
            }
            _ => return Resource::from_json(key.kind, value),
        };
        Resource::from_json(key.kind, &opened)
    }
}

fn log_invalid(key: &Key, errors: &ValidationErrors) {
    for e in &errors.0 {
        tracing::error!("{key} is not valid and is not served: {}", e);
    }
}
