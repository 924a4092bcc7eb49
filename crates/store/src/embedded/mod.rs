//! The embedded store, Pylon's default backend: a data directory of its own, nothing to
//! install.
//!
//! The directory holds `snapshot` (every entry at one revision), `wal.log` (each change after
//! it) and `lock` (one process at a time). A commit is appended to the log and synced before
//! it applies in memory, so no reader or watcher ever sees a change a crash could take back.
//! When the log grows past a threshold, the current state becomes the new snapshot and the log
//! starts over. Opening loads the snapshot and replays the log on top of it.
//!
//! A restart hands the directory over: the running process [releases](EmbeddedStore::release)
//! it (it stops writing, and serves reads from memory) for the new one to open, and
//! [reclaims](EmbeddedStore::reclaim) it if the new one fails before it wrote anything.

mod dir_lock;
mod format;
mod frame;
mod snapshot;
mod wal;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use pylon_model::{Key, Kind};

use crate::{
    Change, ConfigStore, Entry, EventLog, Listing, Revision, StoreError, Txn, WatchStream,
};
use dir_lock::DirLock;
use wal::Wal;

pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    options: EmbeddedOptions,
    log: EventLog,
    /// `None` while released to another process. Serializes writers; always taken before the
    /// event log's own writer lock.
    held: Mutex<Option<Held>>,
}

/// What this process holds of the data directory while it writes there.
struct Held {
    wal: Wal,
    _lock: DirLock,
}

/// When the log is folded into a new snapshot: after this many records or bytes, whichever
/// comes first. Opening replays the log, so these bound the time a restart takes.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedOptions {
    pub compact_after_records: usize,
    pub compact_after_bytes: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            compact_after_records: 10_000,
            compact_after_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data directory {} is in use by another process{}; a data directory serves one process at a time",
        .dir.display(),
        .pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("{} is damaged at byte {offset}: {reason}; restore the data directory from a backup", .file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Reclaiming found changes this process does not have: another process wrote there.
    #[error(
        "data directory {} was written by another process while released (revision {found}, \
         this process has {revision}); restart to serve what it holds",
        .dir.display()
    )]
    ChangedWhileReleased {
        dir: PathBuf,
        revision: Revision,
        found: Revision,
    },
}

impl EmbeddedStore {
    /// Opens the store in `data_dir`, creating the directory if missing, with the default
    /// [`EmbeddedOptions`]. This reads and may write files: call it off the async runtime.
    pub fn open(data_dir: &Path) -> Result<EmbeddedStore, EmbeddedError> {
        EmbeddedStore::open_with(data_dir, EmbeddedOptions::default())
    }

    pub fn open_with(
        data_dir: &Path,
        options: EmbeddedOptions,
    ) -> Result<EmbeddedStore, EmbeddedError> {
        let io_error = |source| EmbeddedError::Io {
            path: data_dir.to_path_buf(),
            source,
        };
        if !data_dir.try_exists().map_err(io_error)? {
            std::fs::create_dir_all(data_dir).map_err(io_error)?;
            // The first commit is durable only if the directory holding it is.
            let parent = data_dir.parent().filter(|p| !p.as_os_str().is_empty());
            sync_dir(parent.unwrap_or(Path::new(".")))?;
        }
        let (mut held, snapshot, changes) = Held::take(data_dir)?;
        let log = EventLog::restore(snapshot);
        // Replayed rather than folded into the snapshot: a watcher can resume from any of them.
        for change in changes {
            log.replay(change);
        }
        let inner = Inner {
            dir: data_dir.to_path_buf(),
            options,
            log,
            held: Mutex::new(None),
        };
        // A log left long (by a lower threshold now, or a compaction cut short) is folded now.
        inner.compact_if_due(&mut held.wal)?;
        *inner.lock_held() = Some(held);
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }

    /// Stops writing and lets go of the data directory, for another process to open: once
    /// this returns, every commit acknowledged is on disk (a commit under way is waited for)
    /// and no other will be made; commits fail until [`EmbeddedStore::reclaim`]. Reads and
    /// watches go on, from memory. Blocks: call it off the async runtime.
    pub fn release(&self) {
        drop(self.inner.lock_held().take());
    }

    /// Takes the data directory back after [`EmbeddedStore::release`] and writes again. Fails
    /// while another process holds it ([`EmbeddedError::Locked`]), and if another process wrote
    /// there meanwhile: this process's copy would no longer be the store's. Blocks: call it off
    /// the async runtime.
    pub fn reclaim(&self) -> Result<(), EmbeddedError> {
        let inner = &self.inner;
        let mut held = inner.lock_held();
        if held.is_some() {
            return Ok(());
        }
        let (taken, snapshot, changes) = Held::take(&inner.dir)?;
        let found = changes.last().map_or(snapshot.revision, |c| c.revision);
        let revision = inner.log.revision();
        if found != revision {
            return Err(EmbeddedError::ChangedWhileReleased {
                dir: inner.dir.clone(),
                revision,
                found,
            });
        }
        *held = Some(taken);
        Ok(())
    }
}

impl Held {
    /// Locks the data directory `dir` and reads it: the snapshot, and the changes after it.
    fn take(dir: &Path) -> Result<(Held, Listing, Vec<Change>), EmbeddedError> {
        let lock = DirLock::acquire(dir)?;
        let snapshot = snapshot::load(dir)?;
        let (wal, changes) = Wal::open(dir, snapshot.revision)?;
        let held = Held { wal, _lock: lock };
        Ok((held, snapshot, changes))
    }
}

impl Inner {
    fn commit(&self, txn: Txn) -> Result<Revision, StoreError> {
        let mut held = self.lock_held();
        let Some(Held { wal, .. }) = held.as_mut() else {
            return Err(StoreError::Unavailable(format!(
                "the data directory {} is handed over to another process",
                self.dir.display()
            )));
        };
        let revision = self.log.commit_with(txn, |change| {
            wal.append(change)
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        })?;
        if let Err(e) = self.compact_if_due(wal) {
            // The commit is durable in the log all the same; compaction is tried again after
            // the next one.
            tracing::error!("compaction of the embedded store failed: {e}");
        }
        Ok(revision)
    }

    /// Writes the current state as the snapshot and empties the log, if the log is past a
    /// threshold. A crash between the two leaves a log the snapshot already covers, which
    /// recovery skips.
    fn compact_if_due(&self, wal: &mut Wal) -> Result<(), EmbeddedError> {
        if wal.records() < self.options.compact_after_records
            && wal.len() < self.options.compact_after_bytes
        {
            return Ok(());
        }
        // Holding the log: no commit can land between the listing and emptying the log.
        snapshot::save(&self.dir, &self.log.list())?;
        wal.reset()
    }

    fn lock_held(&self) -> MutexGuard<'_, Option<Held>> {
        // A panic mid-append leaves at worst a partial record, which the next append's
        // failure handling or recovery deals with.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ConfigStore for EmbeddedStore {
    async fn list(&self) -> Result<Listing, StoreError> {
        Ok(self.inner.log.list_current())
    }

    async fn history(&self, kind: Kind, id_prefix: &str) -> Result<Vec<Entry>, StoreError> {
        Ok(self.inner.log.history(kind, id_prefix))
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>, StoreError> {
        Ok(self.inner.log.get(key))
    }

    async fn committed_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.inner.log.revision())
    }

    async fn watch(&self, after: Revision) -> Result<WatchStream, StoreError> {
        self.inner.log.watch(after)
    }

    async fn commit(&self, txn: Txn) -> Result<Revision, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.commit(txn))
            .await
            .map_err(|e| StoreError::Unavailable(format!("commit did not complete: {e}")))?
    }
}

/// Makes the directory's entries (a file created, a rename) durable.
fn sync_dir(dir: &Path) -> Result<(), EmbeddedError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| EmbeddedError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pylon_model::Kind;
    use serde_json::json;

    fn key(id: &str) -> Key {
        Key::new(Kind::Routes, id)
    }

    fn put(id: &str) -> Txn {
        Txn::put(key(id), json!({ "uri": format!("/{id}") }))
    }

    #[tokio::test]
    async fn a_released_directory_opens_elsewhere_and_is_reclaimed_once_let_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.commit(put("a")).await.unwrap(), 1);
        store.release();

        // Reads go on from memory; a write is refused, saying why.
        assert!(store.get(&key("a")).await.unwrap().is_some());
        let refused = store.commit(put("b")).await.unwrap_err();
        assert!(refused.to_string().contains("handed over"), "{refused}");

        // The next holder has every acknowledged commit; while it holds the directory, the
        // directory cannot be reclaimed.
        let next = EmbeddedStore::open(dir.path()).unwrap();
        assert!(next.get(&key("a")).await.unwrap().is_some());
        let locked = store.reclaim().unwrap_err();
        assert!(matches!(locked, EmbeddedError::Locked { .. }), "{locked}");
        drop(next);

        store.reclaim().unwrap();
        assert_eq!(store.commit(put("b")).await.unwrap(), 2);
        drop(store);
        let reopened = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(reopened.list().await.unwrap().revision, 2);
    }

    #[tokio::test]
    async fn a_directory_written_to_while_released_is_not_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.commit(put("a")).await.unwrap();
        store.release();
        let next = EmbeddedStore::open(dir.path()).unwrap();
        next.commit(put("b")).await.unwrap();
        drop(next);

        let changed = store.reclaim().unwrap_err();
        assert!(
            matches!(
                changed,
                EmbeddedError::ChangedWhileReleased {
                    revision: 1,
                    found: 2,
                    ..
                }
            ),
            "{changed}"
        );
        // Still released: this copy is behind the directory, and must not write over it.
        assert!(store.commit(put("c")).await.is_err());
        let reopened = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(reopened.list().await.unwrap().revision, 2);
    }
}
