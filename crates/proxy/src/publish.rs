//! The control side of configuration: follow the process's [`Replica`] of the store, and for
//! every new view validate, compile and publish a new snapshot.
//!
//! Resources are parsed once per version, and compiled as their change requires: a view that
//! changes one route of ten thousand re-parses and recompiles that route only (see
//! [`crate::compile`]). A resource that does not validate, or a route whose references are
//! missing, is left out and logged; the rest of the configuration is served. (The YAML store refuses a file with
//! any error before it gets here, so a file is applied whole or not at all.)
//!
//! What is compiled is the node's *effective* view: the store's, with the changes of the
//! canary change sets that target this node laid over it (see [`crate::canary`]). A node that
//! serves no canary compiles the store's view as it is.

use std::collections::BTreeSet;
use std::sync::Arc;

use pylon_discovery::Registry;
use pylon_model::{Config, FieldError, Key, Kind, Resource, ValidationErrors};
use pylon_store::{Entries, Entry, Keyring, Replica, Revision, View};
use tokio::sync::watch;

use crate::canary::{self, Canary, NodeIdentity};
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
    /// Every resource that validated, kept in step with the effective view.
    config: Config,
    /// The effective view `config` was last brought in step with.
    parsed: EffectiveView,
    /// The revision of the snapshot the workers serve, for whoever waits for a write to be
    /// served (the Admin API answers only then).
    served: watch::Sender<Revision>,
    /// The ids of the canary change sets the workers serve.
    canaries: watch::Sender<Vec<String>>,
    /// The snapshot the last publish replaced. Kept until the next one so that, once the
    /// workers have moved on, this thread frees it: freeing 10,000 routes takes milliseconds
    /// that must not be spent in a worker between two requests.
    retired: Option<Arc<Snapshot>>,
}

impl Publisher {
    pub fn new(
        replica: &Replica,
        node: NodeIdentity,
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
            compiler: Compiler::new(
                node.id.as_str().into(),
                defaults,
                tls,
                health.clone(),
                discovery.clone(),
            ),
            discovery,
            keyring,
            health,
            config: Config::default(),
            parsed: EffectiveView::new(node),
            served: watch::Sender::new(0),
            canaries: watch::Sender::new(Vec::new()),
            retired: None,
        }
    }

    /// Follows the revision the workers serve: each publish moves it on once its snapshot is
    /// in place, so a request that starts after that sees the configuration of that revision.
    pub fn served(&self) -> watch::Receiver<Revision> {
        self.served.subscribe()
    }

    /// Follows the ids of the canary change sets the workers serve, in id order: each publish
    /// moves it on once its snapshot is in place.
    pub fn canaries(&self) -> watch::Receiver<Vec<String>> {
        self.canaries.subscribe()
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
            self.served_now(view.revision);
            return;
        }
        let compiled = self.compiler.update(&self.config, &changed, view.revision);
        let routes = compiled.snapshot.router.len();
        self.install(compiled);
        self.served_now(view.revision);
        tracing::info!(
            revision = view.revision,
            routes,
            changed = changed.len(),
            publish_ms = started.elapsed().as_secs_f64() * 1e3,
            "configuration published"
        );
    }

    /// Tells the waiters that the workers serve `revision`, and the canaries of its view.
    fn served_now(&self, revision: Revision) {
        let canaries = self.parsed.canaries.iter().map(|c| &c.id);
        self.canaries.send_if_modified(|served| {
            if served.iter().eq(canaries.clone()) {
                return false;
            }
            *served = canaries.cloned().collect();
            tracing::info!(revision, "canary change sets served: {served:?}");
            true
        });
        self.served.send_replace(revision);
    }

    /// Brings `config` in step with `view`'s effective view, parsing only the entries that
    /// changed since the one it was last in step with; returns the keys that changed.
    fn update_config(&mut self, view: &Arc<View>) -> Vec<Key> {
        let mut changed = Vec::new();
        for (key, entry) in self.parsed.advance(view) {
            if !key.kind.is_resource() {
                continue;
            }
            match entry.map(|e| self.parse(&key, &e.value)) {
                Some(Ok(resource)) => self.config.insert(&key, resource),
                Some(Err(errors)) => {
                    self.config.remove(&key);
                    log_invalid(&key, &errors);
                }
                None => self.config.remove(&key),
            }
            changed.push(key);
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

/// The entries this node serves: a view of the store with the changes of the canaries that
/// target this node laid over it, kept from one view to the next so that what changed between
/// two is found by the chunks they do not share, as between two views of the store.
struct EffectiveView {
    node: NodeIdentity,
    /// The store's view last seen.
    view: Arc<View>,
    /// The canaries of `view` that target this node, in the order they are laid over.
    canaries: Vec<Canary>,
    /// `view`'s entries with `canaries` laid over them.
    entries: Entries,
}

impl EffectiveView {
    fn new(node: NodeIdentity) -> Self {
        Self {
            node,
            view: Arc::default(),
            canaries: Vec::new(),
            entries: Entries::default(),
        }
    }

    /// Moves on to `view`; returns the keys whose effective entry changed, with the entry now
    /// in effect (`None`: gone).
    ///
    /// The canaries are read again only when a change set changed; without canaries the
    /// effective view is the store's, shared chunk for chunk.
    fn advance(&mut self, view: &Arc<View>) -> Vec<(Key, Option<Arc<Entry>>)> {
        let previous = std::mem::replace(&mut self.view, view.clone());
        let mut moved = None;
        if !same_change_sets(&previous, view) {
            let canaries = canary::targeting(view, &self.node);
            if !same_canaries(&canaries, &self.canaries) {
                moved = Some(std::mem::replace(&mut self.canaries, canaries));
            }
        }
        let mut entries = view.entries.clone();
        for canary in &self.canaries {
            for (key, change) in &canary.changes {
                match change {
                    Some(entry) => entries.insert(entry.clone()),
                    None => entries.remove(key),
                }
            }
        }
        let previous = std::mem::replace(&mut self.entries, entries);
        let mut changes: Vec<(Key, Option<Arc<Entry>>)> = previous
            .changes(&self.entries)
            .into_iter()
            .map(|(key, entry)| (key.clone(), entry.cloned()))
            .collect();
        // Every key of a canary that came, went or changed is a change: a change set and a
        // resource written by one transaction share a revision, so the entry a canary leaves
        // behind could carry the revision of the one it had laid over.
        if let Some(before) = moved {
            let version = |canary: &Canary| (canary.id.clone(), canary.revision);
            let was: BTreeSet<_> = before.iter().map(version).collect();
            let is: BTreeSet<_> = self.canaries.iter().map(version).collect();
            let went = before.iter().filter(|c| !is.contains(&version(c)));
            let came = self.canaries.iter().filter(|c| !was.contains(&version(c)));
            let seen: BTreeSet<Key> = changes.iter().map(|(key, _)| key.clone()).collect();
            let laid: BTreeSet<&Key> = went
                .chain(came)
                .flat_map(|canary| canary.changes.iter().map(|(key, _)| key))
                .filter(|key| !seen.contains(*key))
                .collect();
            for key in laid {
                changes.push((key.clone(), self.entries.get(key).cloned()));
            }
        }
        changes
    }
}

/// Whether the two views hold the same change sets (by key and revision): the canaries of
/// one are those of the other. Change sets are few; a view's resources are not looked at.
fn same_change_sets(a: &View, b: &View) -> bool {
    fn versions(view: &View) -> impl Iterator<Item = (&Key, Revision)> {
        view.of_kind(Kind::ChangeSets)
            .map(|e| (&e.key, e.mod_revision))
    }
    versions(a).eq(versions(b))
}

/// Whether two lists of canaries are the same change sets at the same revisions.
fn same_canaries(a: &[Canary], b: &[Canary]) -> bool {
    fn versions(canaries: &[Canary]) -> impl Iterator<Item = (&str, Revision)> {
        canaries.iter().map(|c| (c.id.as_str(), c.revision))
    }
    versions(a).eq(versions(b))
}

fn log_invalid(key: &Key, errors: &ValidationErrors) {
    for e in &errors.0 {
        tracing::error!("{key} is not valid and is not served: {}", e);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn route(id: &str) -> Key {
        Key::new(Kind::Routes, id)
    }

    fn change_set(id: &str) -> Key {
        Key::new(Kind::ChangeSets, id)
    }

    /// A change set in `state`, for the node `gw-1`, with `changes` as `(key, value)`.
    fn record(state: &str, changes: &[(&str, serde_json::Value)]) -> serde_json::Value {
        let changes: Vec<_> = changes
            .iter()
            .map(|(key, value)| json!({"key": key, "value": value, "base": 1}))
            .collect();
        json!({"id": "cs", "state": state, "changes": changes, "canary": {"nodes": ["gw-1"]}})
    }

    /// The store's content as it evolves: each write makes the next revision.
    #[derive(Default)]
    struct Store {
        view: View,
    }

    impl Store {
        /// Puts (`Some`) and deletes (`None`) as one revision; returns the view after it.
        fn write(&mut self, writes: &[(Key, Option<serde_json::Value>)]) -> Arc<View> {
            let revision = self.view.revision + 1;
            for (key, value) in writes {
                match value {
                    Some(value) => self.view.entries.insert(Arc::new(Entry {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: revision,
                        mod_revision: revision,
                    })),
                    None => self.view.entries.remove(key),
                }
            }
            self.view.revision = revision;
            Arc::new(self.view.clone())
        }
    }

    fn node(id: &str) -> NodeIdentity {
        NodeIdentity {
            id: id.to_owned(),
            labels: Default::default(),
        }
    }

    /// The keys that changed and the value each now has (`None`: gone), in key order.
    fn changed(
        effective: &mut EffectiveView,
        view: &Arc<View>,
    ) -> Vec<(Key, Option<serde_json::Value>)> {
        let mut changes: Vec<_> = effective
            .advance(view)
            .into_iter()
            .map(|(key, entry)| (key, entry.map(|e| e.value.clone())))
            .collect();
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        changes
    }

    #[test]
    fn a_canary_is_laid_over_the_live_resources_of_the_nodes_it_targets() {
        let mut store = Store::default();
        let (mut targeted, mut other) = (
            EffectiveView::new(node("gw-1")),
            EffectiveView::new(node("gw-2")),
        );
        let live = store.write(&[
            (route("1"), Some(json!({"uri": "/live"}))),
            (route("2"), Some(json!({"uri": "/two"}))),
        ]);
        for effective in [&mut targeted, &mut other] {
            assert_eq!(changed(effective, &live).len(), 2);
        }

        // A draft is no canary: nothing changes for anyone.
        let changes = [
            ("routes/1", json!({"uri": "/canary"})),
            ("routes/3", json!({"uri": "/new"})),
            ("routes/2", json!(null)),
        ];
        let draft = store.write(&[(change_set("cs"), Some(record("draft", &changes)))]);
        assert_eq!(
            changed(&mut targeted, &draft),
            [(change_set("cs"), Some(record("draft", &changes)))]
        );

        // In canary: the targeted node sees the change set's puts and deletes, at its revision.
        let canary = store.write(&[(change_set("cs"), Some(record("canary", &changes)))]);
        let seen = changed(&mut targeted, &canary);
        assert_eq!(
            seen[..3],
            [
                (route("1"), Some(json!({"uri": "/canary"}))),
                (route("2"), None),
                (route("3"), Some(json!({"uri": "/new"}))),
            ]
        );
        assert_eq!(seen[3].0, change_set("cs"));
        assert_eq!(targeted.entries[&route("1")].mod_revision, canary.revision);
        assert_eq!(
            changed(&mut other, &canary),
            [(change_set("cs"), Some(record("canary", &changes)))],
            "the other node serves the live resources"
        );
        assert_eq!(other.entries[&route("1")].value, json!({"uri": "/live"}));

        // Another record elsewhere (a heartbeat): nothing the canary touches changes.
        let beat = store.write(&[(Key::new(Kind::Nodes, "gw-1"), Some(json!({})))]);
        assert_eq!(
            changed(&mut targeted, &beat),
            [(Key::new(Kind::Nodes, "gw-1"), Some(json!({})))]
        );
        // A live write under the canary is not seen while the canary is in force.
        let under = store.write(&[(route("1"), Some(json!({"uri": "/live-2"})))]);
        assert_eq!(changed(&mut targeted, &under), []);
        assert_eq!(changed(&mut other, &beat).len(), 1);
        assert_eq!(changed(&mut other, &under).len(), 1);

        // The change set is edited: its changes are seen again.
        let edited = [("routes/1", json!({"uri": "/canary-2"}))];
        let edit = store.write(&[(change_set("cs"), Some(record("canary", &edited)))]);
        let seen = changed(&mut targeted, &edit);
        assert_eq!(
            seen[..3],
            [
                (route("1"), Some(json!({"uri": "/canary-2"}))),
                (route("2"), Some(json!({"uri": "/two"}))),
                (route("3"), None),
            ]
        );

        // Aborted: the live resources again.
        let aborted = store.write(&[(change_set("cs"), Some(record("aborted", &edited)))]);
        assert_eq!(
            changed(&mut targeted, &aborted)[..1],
            [(route("1"), Some(json!({"uri": "/live-2"})))]
        );
        assert_eq!(targeted.entries.len(), store.view.entries.len());
        assert!(targeted.canaries.is_empty());
    }

    #[test]
    fn canaries_are_laid_over_in_id_order_and_seen_to_go_whatever_their_revision() {
        let mut store = Store::default();
        let mut effective = EffectiveView::new(node("gw-1"));
        changed(
            &mut effective,
            &store.write(&[(route("1"), Some(json!({"uri": "/live"})))]),
        );
        // One transaction puts both change sets in canary, and writes the route they change:
        // the overlay and the live route share that revision.
        let a = record(
            "canary",
            &[
                ("routes/1", json!({"uri": "/a"})),
                ("upstreams/u", json!({"nodes": {}})),
            ],
        );
        let b = record("canary", &[("routes/2", json!({"uri": "/b"}))]);
        let both = store.write(&[
            (change_set("b"), Some(b.clone())),
            (change_set("a"), Some(a.clone())),
            (route("1"), Some(json!({"uri": "/live-2"}))),
        ]);
        changed(&mut effective, &both);
        let ids: Vec<&str> = effective.canaries.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(effective.entries[&route("1")].value, json!({"uri": "/a"}));
        assert_eq!(effective.entries[&route("2")].value, json!({"uri": "/b"}));
        assert_eq!(effective.entries[&route("1")].mod_revision, both.revision);
        assert_eq!(store.view.entries[&route("1")].mod_revision, both.revision);

        // `a` is aborted: the live route of the same revision replaces its overlay.
        let aborted = store.write(&[(change_set("a"), Some(record("aborted", &[])))]);
        let seen = changed(&mut effective, &aborted);
        assert!(
            seen.contains(&(route("1"), Some(json!({"uri": "/live-2"})))),
            "{seen:?}"
        );
        assert!(
            seen.contains(&(Key::new(Kind::Upstreams, "u"), None)),
            "{seen:?}"
        );
        assert!(!seen.iter().any(|(key, _)| *key == route("2")), "{seen:?}");
        assert_eq!(
            effective.entries[&route("1")].value,
            json!({"uri": "/live-2"})
        );
    }
}
