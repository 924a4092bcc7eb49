//! The embedded store, Pylon's default backend: a data directory of its own, nothing to
//! install.
//!
//! The directory holds `snapshot` (every entry at one revision), `wal.log` (each change after
//! it) and `lock` (one process at a time). A commit is appended to the log and synced before
//! it applies in memory, so no reader or watcher ever sees a change a crash could take back.
//! When the log grows past a threshold, the current state becomes the new snapshot and the log
//! starts over. Opening loads the snapshot and replays the log on top of it.

mod dir_lock;
mod format;
mod frame;
mod snapshot;
mod wal;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use pylon_model::Key;

use crate::{ConfigStore, Entry, EventLog, Listing, Revision, StoreError, Txn, WatchStream};
use dir_lock::DirLock;
use wal::Wal;

pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    options: EmbeddedOptions,
    log: EventLog,
    /// Serializes writers. Always taken before the event log's own writer lock.
    wal: Mutex<Wal>,
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
        let lock = DirLock::acquire(data_dir)?;
        let snapshot = snapshot::load(data_dir)?;
        let (wal, changes) = Wal::open(data_dir, snapshot.revision)?;
        let log = EventLog::restore(snapshot);
        // Replayed rather than folded into the snapshot: a watcher can resume from any of them.
        for change in changes {
            log.replay(change);
        }
        let inner = Inner {
            dir: data_dir.to_path_buf(),
            options,
            log,
            wal: Mutex::new(wal),
            _lock: lock,
        };
        // A log left long (by a lower threshold now, or a compaction cut short) is folded now.
        inner.compact_if_due(&mut inner.lock_wal())?;
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }
}

impl Inner {
    fn commit(&self, txn: Txn) -> Result<Revision, StoreError> {
        let mut wal = self.lock_wal();
        let revision = self.log.commit_with(txn, |change| {
            wal.append(change)
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        })?;
        if let Err(e) = self.compact_if_due(&mut wal) {
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

    fn lock_wal(&self) -> MutexGuard<'_, Wal> {
        // A panic mid-append leaves at worst a partial record, which the next append's
        // failure handling or recovery deals with.
        self.wal.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ConfigStore for EmbeddedStore {
    async fn list(&self) -> Result<Listing, StoreError> {
        Ok(self.inner.log.list())
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
