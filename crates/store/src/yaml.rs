//! The declarative backend: APISIX's standalone YAML file, reloaded when it changes.
//!
//! The file is the source of truth and the Admin API cannot write to it. It is polled rather
//! than watched with inotify so that editors that replace the file, symlink swaps (Kubernetes
//! ConfigMaps) and network file systems all work the same. A new version that does not validate
//! is refused and logged with every error; the last good one stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use pylon_model::{parse_standalone, Key, Kind, ValidationErrors};

use crate::{ConfigStore, Entry, EventLog, Listing, Revision, StoreError, Txn, WatchStream};

const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A file modified less than this long ago is read even when its stamp did not change: file
/// systems keep modification times at a coarse granularity (a clock tick, or 2 s on FAT), so a
/// rewrite of the same length right after a poll read the file may leave its stamp as it was.
const RECENT: Duration = Duration::from_secs(2);

pub struct YamlStore {
    path: PathBuf,
    log: Arc<EventLog>,
    poller: tokio::task::JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid:\n{errors}")]
    Invalid {
        path: String,
        errors: ValidationErrors,
    },
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, PartialEq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl YamlStore {
    /// Loads `path` and starts following it. A missing file is an empty configuration (it is
    /// picked up when created); an invalid one is an error.
    pub async fn open(path: impl Into<PathBuf>) -> Result<YamlStore, YamlError> {
        let path = path.into();
        let log = Arc::new(EventLog::new());
        let (stamp, text) = read(&path).await?;
        let entries = parse(&path, &text)?;
        log.apply(entries.into_iter().map(|(k, v)| (k, Some(v))));
        let poller = tokio::spawn(follow(path.clone(), stamp, text, log.clone()));
        Ok(YamlStore { path, log, poller })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for YamlStore {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

#[async_trait]
impl ConfigStore for YamlStore {
    async fn list(&self) -> Result<Listing, StoreError> {
        Ok(self.log.list_current())
    }

    async fn history(&self, kind: Kind, id_prefix: &str) -> Result<Vec<Entry>, StoreError> {
        Ok(self.log.history(kind, id_prefix))
    }

    async fn watch(&self, after: Revision) -> Result<WatchStream, StoreError> {
        self.log.watch(after)
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>, StoreError> {
        Ok(self.log.get(key))
    }

    async fn committed_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.log.revision())
    }

    async fn commit(&self, _: Txn) -> Result<Revision, StoreError> {
        Err(StoreError::ReadOnly(
            "the configuration comes from a YAML file; edit the file",
        ))
    }
}

async fn follow(path: PathBuf, mut stamp: Option<Stamp>, mut text: String, log: Arc<EventLog>) {
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let current = stat(&path).await;
        if current == stamp && !current.as_ref().is_some_and(Stamp::is_recent) {
            continue;
        }
        let new_text = match read(&path).await {
            // A file that disappears is far more often a deployment mistake than a wish to
            // drop every route: keep serving what it last said.
            Ok((None, _)) if stamp.is_some() => {
                tracing::warn!(file = %path.display(), "config file is gone; the last version stays in force");
                stamp = None;
                continue;
            }
            Ok((new_stamp, new_text)) => {
                stamp = new_stamp;
                new_text
            }
            Err(e) => {
                tracing::error!("config file not reloaded: {e}");
                continue;
            }
        };
        if new_text == text {
            continue;
        }
        // As in APISIX, a file that ended with `#END` is complete only when it does again: a
        // writer that rewrites the file in place is caught half-way, not taken at its word.
        if has_end_marker(&text) && !has_end_marker(&new_text) {
            tracing::debug!(file = %path.display(), "config file incomplete (no #END yet)");
            stamp = None;
            continue;
        }
        text = new_text;
        match parse(&path, &text) {
            Ok(entries) => {
                let removed: Vec<Key> = log
                    .list()
                    .entries
                    .into_iter()
                    .map(|e| e.key)
                    .filter(|k| !entries.contains_key(k))
                    .collect();
                let writes = entries
                    .into_iter()
                    .map(|(k, v)| (k, Some(v)))
                    .chain(removed.into_iter().map(|k| (k, None)));
                if let Some(revision) = log.apply(writes) {
                    tracing::info!(file = %path.display(), revision, "config file reloaded");
                }
            }
            Err(e) => tracing::error!(
                "config file change refused, the previous version stays in force: {e}"
            ),
        }
    }
}

impl Stamp {
    /// Whether a later write could have left this stamp unchanged (see [`RECENT`]). A time in
    /// the future (clock skew) or none at all counts as recent.
    fn is_recent(&self) -> bool {
        self.modified
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < RECENT)
    }
}

fn has_end_marker(text: &str) -> bool {
    text.trim_end()
        .lines()
        .next_back()
        .is_some_and(|l| l.trim() == "#END")
}

async fn stat(path: &Path) -> Option<Stamp> {
    let meta = tokio::fs::metadata(path).await.ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

async fn read(path: &Path) -> Result<(Option<Stamp>, String), YamlError> {
    let stamp = stat(path).await;
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok((stamp, text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((None, String::new())),
        Err(source) => Err(YamlError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn parse(
    path: &Path,
    text: &str,
) -> Result<std::collections::BTreeMap<Key, serde_json::Value>, YamlError> {
    parse_standalone(text)
        .map(|(entries, _)| entries)
        .map_err(|errors| YamlError::Invalid {
            path: path.display().to_string(),
            errors,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConfigStore, Event};
    use pylon_model::Kind;

    const ONE_ROUTE: &str =
        "routes:\n  - {id: r1, uri: /a, upstream: {nodes: {\"127.0.0.1:1\": 1}}}\n";
    const TWO_ROUTES: &str = "routes:\n  - {id: r1, uri: /a, upstream: {nodes: {\"127.0.0.1:1\": 1}}}\n  - {id: r2, uri: /b, upstream: {nodes: {\"127.0.0.1:1\": 1}}}\n";

    async fn next_change(rx: &mut WatchStream) -> crate::Change {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a change within 5 s")
            .expect("stream open")
            .expect("no error")
    }

    #[tokio::test]
    async fn follows_the_file_and_refuses_invalid_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apisix.yaml");
        std::fs::write(&path, ONE_ROUTE).unwrap();
        let store = YamlStore::open(&path).await.unwrap();
        let listing = store.list().await.unwrap();
        assert_eq!(listing.entries.len(), 1);
        let mut rx = store.watch(listing.revision).await.unwrap();

        std::fs::write(&path, TWO_ROUTES).unwrap();
        let change = next_change(&mut rx).await;
        assert_eq!(change.events.len(), 1, "only the new route changed");
        assert_eq!(change.events[0].key(), &Key::new(Kind::Routes, "r2"));

        // An invalid version is refused; the next valid one is diffed against the last good one.
        std::fs::write(&path, "routes:\n  - {id: r1, uri: nope}\n").unwrap();
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        assert_eq!(store.list().await.unwrap().entries.len(), 2);
        std::fs::write(&path, ONE_ROUTE).unwrap();
        let change = next_change(&mut rx).await;
        assert!(matches!(&change.events[..], [Event::Delete { key, .. }] if key.id == "r2"));
    }

    #[tokio::test]
    async fn a_rewrite_that_keeps_the_stamp_is_still_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apisix.yaml");
        std::fs::write(&path, ONE_ROUTE).unwrap();
        let store = YamlStore::open(&path).await.unwrap();
        let mut rx = store
            .watch(store.list().await.unwrap().revision)
            .await
            .unwrap();

        // Same length, same modification time: what a rewrite within one tick of the file
        // system's clock looks like.
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        let changed = ONE_ROUTE.replace("uri: /a", "uri: /z");
        assert_eq!(changed.len(), ONE_ROUTE.len());
        // Replaced atomically, so that no poll can read a half-written file.
        let tmp = dir.path().join("apisix.yaml.tmp");
        std::fs::write(&tmp, &changed).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let change = next_change(&mut rx).await;
        assert!(
            matches!(&change.events[..], [Event::Put(e)] if e.value["uri"] == "/z"),
            "{change:?}"
        );
    }

    #[tokio::test]
    async fn a_missing_file_is_empty_until_created_and_an_invalid_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apisix.yaml");
        let store = YamlStore::open(&path).await.unwrap();
        assert!(store.list().await.unwrap().entries.is_empty());
        let mut rx = store.watch(0).await.unwrap();
        std::fs::write(&path, ONE_ROUTE).unwrap();
        assert_eq!(next_change(&mut rx).await.events.len(), 1);

        std::fs::write(&path, "routes:\n  - {uri: /x, upstream_id: nope}\n").unwrap();
        let err = YamlStore::open(&path).await.err().unwrap().to_string();
        assert!(
            err.contains("routes[0].upstream_id: upstream `nope` does not exist"),
            "{err}"
        );
        assert!(matches!(
            store
                .commit(Txn::put(Key::new(Kind::Routes, "x"), serde_json::json!({})))
                .await,
            Err(StoreError::ReadOnly(_))
        ));
    }

    #[tokio::test]
    async fn a_deleted_or_half_written_file_does_not_replace_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apisix.yaml");
        std::fs::write(&path, format!("{TWO_ROUTES}#END\n")).unwrap();
        let store = YamlStore::open(&path).await.unwrap();
        let mut rx = store
            .watch(store.list().await.unwrap().revision)
            .await
            .unwrap();

        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        assert_eq!(
            store.list().await.unwrap().entries.len(),
            2,
            "deletion ignored"
        );

        // A truncated rewrite (no #END yet) is valid YAML with fewer routes: not applied.
        std::fs::write(&path, ONE_ROUTE).unwrap();
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        assert_eq!(
            store.list().await.unwrap().entries.len(),
            2,
            "incomplete file ignored"
        );

        std::fs::write(&path, format!("{ONE_ROUTE}#END\n")).unwrap();
        let change = next_change(&mut rx).await;
        assert!(matches!(&change.events[..], [Event::Delete { key, .. }] if key.id == "r2"));
    }
}
