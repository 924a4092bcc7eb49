//! A process's one local copy of the store, kept current.
//!
//! A [`Replica`] lists the store, then follows its watch, and whenever the watch breaks
//! (compaction, a lost connection, an etcd restart) lists again with backoff. Everything in the
//! process that reads configuration (the publisher that compiles snapshots, the Admin API) reads
//! a [`View`] of it: an immutable copy at one revision, replaced as a whole on every change, so a
//! reader never sees half of a change.
//!
//! With a cache file, every view taken from the store is also written to local disk, and a node
//! whose store is unreachable at start serves the last copy it saw until the store returns.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pylon_model::{Key, Kind};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{Change, ConfigStore, Entries, Entry, Event, Listing, Revision, StoreError};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The cache is rewritten at most this often: a burst of changes costs one write.
const CACHE_INTERVAL: Duration = Duration::from_millis(200);
/// And the writes take at most this share of the time: a copy of 100,000 resources takes a
/// good part of a second to write, which a stream of changes must not turn into a core.
const CACHE_SHARE: u32 = 10;

/// The store's content at one revision.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub revision: Revision,
    /// Shared with the views before and after it but for what changed in between, so that a
    /// new view costs its change and [`Entries::changes`] finds it.
    pub entries: Entries,
    /// False while serving the local cache because the store could not be reached.
    pub live: bool,
}

impl View {
    fn from_listing(listing: Listing) -> View {
        View {
            revision: listing.revision,
            entries: listing.entries.into_iter().map(Arc::new).collect(),
            live: true,
        }
    }

    /// Applies `change`, but for history (which a copy leaves out, as listings do).
    fn apply(&mut self, change: Change) {
        let current = change
            .events
            .into_iter()
            .filter(|e| !e.key().kind.is_history());
        for event in current {
            match event {
                Event::Put(entry) => self.entries.insert(Arc::new(entry)),
                Event::Delete { key, .. } => self.entries.remove(&key),
            }
        }
        self.revision = change.revision;
    }

    /// The entries of one kind, in id order.
    pub fn of_kind(&self, kind: pylon_model::Kind) -> impl Iterator<Item = &Arc<Entry>> {
        let first = Key::new(kind, String::new());
        self.entries
            .from_key(&first)
            .take_while(move |entry| entry.key.kind == kind)
    }
}

pub struct Replica {
    views: watch::Receiver<Arc<View>>,
    follower: tokio::task::JoinHandle<()>,
}

impl Replica {
    /// Lists `store` and starts following it. If the store cannot be reached and `cache` holds
    /// a copy, starts from that copy and keeps trying the store in the background.
    pub async fn start(
        store: Arc<dyn ConfigStore>,
        cache: Option<PathBuf>,
    ) -> Result<Replica, StoreError> {
        let view = match store.list().await {
            Ok(listing) => View::from_listing(listing),
            Err(e) => match cache.as_deref().map(read_cache) {
                Some(Ok(view)) => {
                    tracing::warn!(
                        "config store unavailable ({e}); serving the local copy at revision {} until it returns",
                        view.revision
                    );
                    view
                }
                Some(Err(cache_error)) => {
                    return Err(StoreError::Unavailable(format!(
                        "{e}; and no usable local copy: {cache_error}"
                    )))
                }
                None => return Err(e),
            },
        };
        let live = view.live;
        let (tx, views) = watch::channel(Arc::new(view));
        if let Some(path) = cache {
            tokio::spawn(keep_cache(path, views.clone()));
        }
        let follower = tokio::spawn(follow(store, tx, live));
        Ok(Replica { views, follower })
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        self.views.borrow().clone()
    }

    /// A receiver that is told of every new view (the latest one: views in between may be
    /// skipped, never a part of one).
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.views.clone()
    }

    /// Waits until the view has reached `revision`: a writer reads its own writes.
    pub async fn caught_up(&self, revision: Revision) -> Arc<View> {
        let mut views = self.views.clone();
        let reached = views
            .wait_for(|v| v.revision >= revision)
            .await
            .map(|v| v.clone());
        // The follower never ends while the replica lives.
        reached.unwrap_or_else(|_| self.view())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

async fn follow(store: Arc<dyn ConfigStore>, views: watch::Sender<Arc<View>>, mut live: bool) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        if live {
            let revision = views.borrow().revision;
            match store.watch(revision).await {
                Ok(mut changes) => {
                    backoff = FIRST_BACKOFF;
                    let reason = follow_watch(&mut changes, &views).await;
                    tracing::warn!("config watch ended: {reason}; listing again");
                }
                Err(e) => tracing::warn!("config watch failed: {e}; listing again"),
            }
        }
        // List again, with backoff, until the store answers.
        loop {
            match store.list().await {
                Ok(listing) => {
                    let current = views.borrow().revision;
                    if listing.revision < current {
                        tracing::warn!(
                            "config store revision went backwards ({current} → {}): the store was restored or replaced; taking its content as it is now",
                            listing.revision
                        );
                    }
                    views.send_replace(Arc::new(View::from_listing(listing)));
                    live = true;
                    break;
                }
                Err(e) => {
                    if views.borrow().live {
                        // Same content, marked as no longer followed, for `/v1/status`.
                        let stale = View {
                            live: false,
                            ..View::clone(&views.borrow())
                        };
                        views.send_replace(Arc::new(stale));
                    }
                    tracing::warn!("config store unavailable: {e}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Applies changes until the watch ends; returns why it ended. Changes that arrive together
/// make one new view: a burst of thousands of events costs one copy, not thousands.
async fn follow_watch(
    changes: &mut crate::WatchStream,
    views: &watch::Sender<Arc<View>>,
) -> String {
    while let Some(first) = changes.recv().await {
        let mut view = View::clone(&views.borrow());
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Ok(change) if change.revision > view.revision => view.apply(change),
                Ok(_) => {}
                Err(e) => {
                    views.send_replace(Arc::new(view));
                    return e.to_string();
                }
            }
            next = changes.try_recv().ok();
        }
        views.send_replace(Arc::new(view));
    }
    "the store closed it".to_owned()
}

/// The cache file's format: what [`View`] holds, as JSON. Written from borrowed entries (a
/// copy of 100,000 values per write would cost more than the write), read into owned ones.
#[derive(Serialize, Deserialize)]
struct CachedView<'a> {
    revision: Revision,
    entries: Vec<CachedEntry<'a>>,
}

#[derive(Serialize, Deserialize)]
struct CachedEntry<'a> {
    kind: Cow<'a, str>,
    id: Cow<'a, str>,
    value: Cow<'a, serde_json::Value>,
    create_revision: Revision,
    mod_revision: Revision,
}

async fn keep_cache(path: PathBuf, mut views: watch::Receiver<Arc<View>>) {
    let mut kept: Option<Arc<View>> = None;
    loop {
        // A view that is not live holds the last content the store gave: still worth keeping.
        let view = views.borrow_and_update().clone();
        let mut pause = CACHE_INTERVAL;
        if worth_writing(kept.as_deref(), &view) {
            let (target, copy) = (path.clone(), view.clone());
            let started = tokio::time::Instant::now();
            let written = tokio::task::spawn_blocking(move || write_cache(&target, &copy)).await;
            match written {
                Ok(Ok(())) => kept = Some(view),
                Ok(Err(e)) => {
                    tracing::warn!("local config copy {} not written: {e}", path.display())
                }
                Err(_) => {}
            }
            pause = pause.max(started.elapsed() * (CACHE_SHARE - 1));
        }
        tokio::time::sleep(pause).await;
        if views.changed().await.is_err() {
            return;
        }
    }
}

/// Whether `view` is worth writing over the copy of `kept`. Nodes beat every few seconds
/// each: a copy that differs only by their records serves a start as well, and rewriting a
/// large copy for each beat would cost a good share of a core.
fn worth_writing(kept: Option<&View>, view: &View) -> bool {
    kept.is_none_or(|kept| {
        let changes = kept.entries.changes(&view.entries);
        changes.iter().any(|(key, _)| key.kind != Kind::Nodes)
    })
}

/// Writes the view to a temporary file and renames it over the cache: a crash leaves the old
/// copy or the new one, never half of one. The temporary file is this write's own: during a
/// restart the old and the new process write the same copy, and a shared one would be
/// truncated or renamed away under the other's feet.
fn write_cache(path: &Path, view: &View) -> std::io::Result<()> {
    let cached = CachedView {
        revision: view.revision,
        entries: view
            .entries
            .values()
            .map(|e| CachedEntry {
                kind: Cow::Borrowed(e.key.kind.as_str()),
                id: Cow::Borrowed(&e.key.id),
                value: Cow::Borrowed(&e.value),
                create_revision: e.create_revision,
                mod_revision: e.mod_revision,
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&cached)?;
    let temp = temp_path(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let written = std::fs::write(&temp, bytes)
        .and_then(|()| std::fs::File::open(&temp)?.sync_all())
        .and_then(|()| std::fs::rename(&temp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// A temporary name beside `path` that no other write uses, in this process or another:
/// `etcd-copy.json.<pid>.<n>.tmp`.
fn temp_path(path: &Path) -> PathBuf {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

fn read_cache(path: &Path) -> Result<View, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cached: CachedView =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut entries = Entries::default();
    for e in cached.entries {
        let kind = pylon_model::Kind::parse_stored(&e.kind)
            .ok_or_else(|| format!("{}: unknown kind `{}`", path.display(), e.kind))?;
        let entry = Entry {
            key: Key::new(kind, e.id.into_owned()),
            value: e.value.into_owned(),
            create_revision: e.create_revision,
            mod_revision: e.mod_revision,
        };
        entries.insert(Arc::new(entry));
    }
    Ok(View {
        revision: cached.revision,
        entries,
        live: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventLog, Txn, WatchStream};
    use async_trait::async_trait;
    use pylon_model::Kind;
    use serde_json::json;
    use std::sync::atomic::AtomicBool;

    /// An in-memory store that can be taken down and replaced, as an etcd that restarts.
    #[derive(Default)]
    struct Flaky {
        log: std::sync::Mutex<Arc<EventLog>>,
        down: AtomicBool,
    }

    impl Flaky {
        fn log(&self) -> Arc<EventLog> {
            self.log.lock().unwrap().clone()
        }
        fn check(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                Err(StoreError::Unavailable("down".into()))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl ConfigStore for Flaky {
        async fn list(&self) -> Result<Listing, StoreError> {
            self.check()?;
            Ok(self.log().list_current())
        }
        async fn history(&self, kind: Kind, id_prefix: &str) -> Result<Vec<Entry>, StoreError> {
            self.check()?;
            Ok(self.log().history(kind, id_prefix))
        }
        async fn get(&self, key: &Key) -> Result<Option<Entry>, StoreError> {
            self.check()?;
            Ok(self.log().get(key))
        }
        async fn committed_revision(&self) -> Result<Revision, StoreError> {
            self.check()?;
            Ok(self.log().revision())
        }
        async fn watch(&self, after: Revision) -> Result<WatchStream, StoreError> {
            self.check()?;
            self.log().watch(after)
        }
        async fn commit(&self, txn: Txn) -> Result<Revision, StoreError> {
            self.check()?;
            self.log().commit(txn)
        }
    }

    fn route(id: &str) -> Key {
        Key::new(Kind::Routes, id)
    }

    async fn until(replica: &Replica, what: impl Fn(&View) -> bool) -> Arc<View> {
        let mut views = replica.subscribe();
        let wait = views.wait_for(|v| what(v));
        let view = tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("replica did not reach the expected view")
            .unwrap();
        view.clone()
    }

    #[tokio::test]
    async fn follows_changes_and_relists_when_the_store_is_replaced() {
        let store = Arc::new(Flaky::default());
        store.log().apply([(route("1"), Some(json!(1)))]);
        let replica = Replica::start(store.clone(), None).await.unwrap();
        assert_eq!(replica.view().revision, 1);

        let rev = store.commit(Txn::put(route("2"), json!(2))).await.unwrap();
        let view = replica.caught_up(rev).await;
        assert_eq!(view.entries.len(), 2);
        assert_eq!(view.of_kind(Kind::Routes).count(), 2);

        // A restored store: a lower revision, other content. The old watch ends with it.
        let restored = Arc::new(EventLog::new());
        restored.apply([(route("9"), Some(json!(9)))]);
        let old = std::mem::replace(&mut *store.log.lock().unwrap(), restored);
        drop(old);
        let view = until(&replica, |v| v.entries.contains_key(&route("9"))).await;
        assert_eq!(view.revision, 1);
        assert_eq!(view.entries.len(), 1);
    }

    #[tokio::test]
    async fn starts_from_the_local_copy_while_the_store_is_down() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("config.json");
        let store = Arc::new(Flaky::default());
        store
            .log()
            .apply([(route("1"), Some(json!({"uri": "/a"})))]);
        {
            let _replica = Replica::start(store.clone(), Some(cache.clone()))
                .await
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !cache.exists() {
                assert!(std::time::Instant::now() < deadline, "cache not written");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        store.down.store(true, Ordering::SeqCst);
        assert!(Replica::start(store.clone(), None).await.is_err());
        let replica = Replica::start(store.clone(), Some(cache.clone()))
            .await
            .unwrap();
        let view = replica.view();
        assert!(!view.live);
        assert_eq!(view.entries[&route("1")].value, json!({"uri": "/a"}));

        store.log().apply([(route("2"), Some(json!({})))]);
        store.down.store(false, Ordering::SeqCst);
        let view = until(&replica, |v| v.live).await;
        assert_eq!(view.entries.len(), 2);
    }

    #[test]
    fn a_nodes_beat_alone_does_not_rewrite_the_local_copy() {
        let entry = |key: Key, n: u64| {
            Arc::new(Entry {
                key,
                value: json!({"n": n}),
                create_revision: 1,
                mod_revision: n,
            })
        };
        let view = |entries: Vec<Arc<Entry>>, revision| View {
            revision,
            entries: Entries::from_iter(entries),
            live: true,
        };
        let node = Key::new(Kind::Nodes, "gw-a");
        let kept = view(vec![entry(route("1"), 1), entry(node.clone(), 1)], 1);
        assert!(worth_writing(None, &kept));
        let beat = view(vec![entry(route("1"), 1), entry(node.clone(), 2)], 2);
        assert!(!worth_writing(Some(&kept), &beat));
        let change = view(vec![entry(route("1"), 3), entry(node, 2)], 3);
        assert!(worth_writing(Some(&kept), &change));
    }

    /// Two processes that follow one etcd from one data directory (the old and the new one
    /// during a restart) write the local copy at the same time: neither may lose its write
    /// or leave a copy that does not read back.
    #[test]
    fn writers_of_one_local_copy_never_clobber_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd-copy.json");
        let view = |n: u64| View {
            revision: n,
            entries: Entries::from_iter([Arc::new(Entry {
                key: route("1"),
                value: json!({"uri": "/".repeat(4096), "n": n}),
                create_revision: 1,
                mod_revision: n,
            })]),
            live: true,
        };
        std::thread::scope(|scope| {
            for writer in 0..2 {
                let (path, view) = (&path, &view);
                scope.spawn(move || {
                    for n in 0..100 {
                        write_cache(path, &view(writer * 1000 + n))
                            .unwrap_or_else(|e| panic!("writer {writer}, write {n}: {e}"));
                    }
                });
            }
        });
        let copy = read_cache(&path).unwrap();
        assert!([99, 1099].contains(&copy.revision), "{}", copy.revision);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["etcd-copy.json"], "temporary files left behind");
    }
}
