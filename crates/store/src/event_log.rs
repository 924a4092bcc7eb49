//! A revisioned key-value map with a bounded history of changes and live subscribers:
//! the part of watch semantics every local backend shares.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use pylon_model::{Key, Kind};
use tokio::sync::mpsc;

use crate::{Change, Entry, Event, Listing, Precondition, Revision, StoreError, Txn, WatchStream};

/// Changes kept for watchers that fall behind; older ones must list again.
const HISTORY: usize = 1024;
/// Changes buffered per subscriber before it is cut off and told to list again.
const SUBSCRIBER_BUFFER: usize = 256;

#[derive(Default)]
pub struct EventLog {
    /// Held through a whole change, persisting included: the state a transaction was checked
    /// against is still the state when it applies, while readers wait only for the in-memory
    /// update, never for a disk.
    writer: Mutex<()>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    revision: Revision,
    entries: BTreeMap<Key, Entry>,
    history: VecDeque<Change>,
    subscribers: Vec<mpsc::Sender<Result<Change, StoreError>>>,
}

impl EventLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// A log that starts from a recovered state: its revision and entries, with no history.
    pub(crate) fn restore(listing: Listing) -> Self {
        let state = State {
            revision: listing.revision,
            entries: listing
                .entries
                .into_iter()
                .map(|e| (e.key.clone(), e))
                .collect(),
            ..State::default()
        };
        EventLog {
            writer: Mutex::default(),
            state: Mutex::new(state),
        }
    }

    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    pub fn get(&self, key: &Key) -> Option<Entry> {
        self.lock().entries.get(key).cloned()
    }

    /// Every entry, history included (what a snapshot saves).
    pub fn list(&self) -> Listing {
        self.list_where(|_| true)
    }

    /// Every entry but those of the history kinds: what [`crate::ConfigStore::list`] lists.
    pub fn list_current(&self) -> Listing {
        self.list_where(|key| !key.kind.is_history())
    }

    fn list_where(&self, keep: impl Fn(&Key) -> bool) -> Listing {
        let state = self.lock();
        Listing {
            revision: state.revision,
            entries: state
                .entries
                .values()
                .filter(|e| keep(&e.key))
                .cloned()
                .collect(),
        }
    }

    /// The entries of `kind` whose id starts with `id_prefix`, in key order.
    pub fn history(&self, kind: Kind, id_prefix: &str) -> Vec<Entry> {
        let state = self.lock();
        state
            .entries
            .range(Key::new(kind, id_prefix)..)
            .take_while(|(key, _)| key.kind == kind && key.id.starts_with(id_prefix))
            .map(|(_, entry)| entry.clone())
            .collect()
    }

    /// Subscribes to the changes after `after`, replaying those still in history.
    pub fn watch(&self, after: Revision) -> Result<WatchStream, StoreError> {
        let mut state = self.lock();
        let oldest_replayable = state
            .history
            .front()
            .map_or(state.revision, |c| c.revision - 1);
        if after < oldest_replayable || after > state.revision {
            return Err(StoreError::Compacted(after));
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER.max(state.history.len() + 1));
        for change in state.history.iter().filter(|c| c.revision > after) {
            // The channel was sized to hold the whole replay.
            let _ = tx.try_send(Ok(change.clone()));
        }
        state.subscribers.push(tx);
        Ok(rx)
    }

    /// Applies `txn` as one revision if its conditions hold. Returns the revision after it:
    /// unchanged when every write was a no-op.
    pub fn commit(&self, txn: Txn) -> Result<Revision, StoreError> {
        self.commit_with(txn, |_| Ok(()))
    }

    /// Like [`commit`](Self::commit), but hands the change to `persist` before applying it:
    /// if `persist` fails, nothing is applied, no watcher hears of it, and its error is
    /// returned. A no-op transaction is not persisted.
    pub(crate) fn commit_with(
        &self,
        txn: Txn,
        persist: impl FnOnce(&Change) -> Result<(), StoreError>,
    ) -> Result<Revision, StoreError> {
        let _writer = lock(&self.writer);
        let change = {
            let state = self.lock();
            state.check(&txn)?;
            match state.prepare(txn.writes) {
                Some(change) => change,
                None => return Ok(state.revision),
            }
        };
        persist(&change)?;
        let revision = change.revision;
        self.lock().publish(change);
        Ok(revision)
    }

    /// Applies puts (`Some`) and deletes (`None`) as one revision; returns it, or `None` when
    /// nothing actually changed.
    pub fn apply(
        &self,
        writes: impl IntoIterator<Item = (Key, Option<serde_json::Value>)>,
    ) -> Option<Revision> {
        let _writer = lock(&self.writer);
        let mut state = self.lock();
        let change = state.prepare(writes)?;
        let revision = change.revision;
        state.publish(change);
        Some(revision)
    }

    /// Applies a change made before (read back from disk), as the next revision.
    pub(crate) fn replay(&self, change: Change) {
        let _writer = lock(&self.writer);
        self.lock().publish(change);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// A panic while holding either lock cannot leave State half-updated in a way readers could
/// misread: every mutation completes before the next statement can panic.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    /// Whether `txn`'s conditions hold: [`StoreError::Conflict`] if not.
    fn check(&self, txn: &Txn) -> Result<(), StoreError> {
        if txn
            .unchanged_since
            .is_some_and(|since| self.revision > since)
        {
            return Err(StoreError::Conflict);
        }
        for (key, condition) in &txn.conditions {
            let current = self.entries.get(key).map(|e| e.mod_revision);
            let holds = match condition {
                Precondition::Absent => current.is_none(),
                Precondition::ModRevision(rev) => current == Some(*rev),
            };
            if !holds {
                return Err(StoreError::Conflict);
            }
        }
        Ok(())
    }

    /// The change `writes` would make as the next revision, without making it; `None` when
    /// every write is a no-op.
    fn prepare(
        &self,
        writes: impl IntoIterator<Item = (Key, Option<serde_json::Value>)>,
    ) -> Option<Change> {
        let revision = self.revision + 1;
        // What earlier writes of the same change did, which later ones must see.
        let mut staged: BTreeMap<Key, Option<Entry>> = BTreeMap::new();
        let mut events = Vec::new();
        for (key, value) in writes {
            let current = match staged.get(&key) {
                Some(staged) => staged.as_ref(),
                None => self.entries.get(&key),
            };
            match value {
                Some(value) => {
                    let create_revision = match current {
                        Some(e) if e.value == value => continue,
                        Some(e) => e.create_revision,
                        None => revision,
                    };
                    let entry = Entry {
                        key: key.clone(),
                        value,
                        create_revision,
                        mod_revision: revision,
                    };
                    staged.insert(key, Some(entry.clone()));
                    events.push(Event::Put(entry));
                }
                None => {
                    if current.is_some() {
                        staged.insert(key.clone(), None);
                        events.push(Event::Delete { key, revision });
                    }
                }
            }
        }
        (!events.is_empty()).then_some(Change { revision, events })
    }

    /// Makes `change` the current revision and tells the watchers.
    fn publish(&mut self, change: Change) {
        for event in &change.events {
            match event {
                Event::Put(entry) => {
                    self.entries.insert(entry.key.clone(), entry.clone());
                }
                Event::Delete { key, .. } => {
                    self.entries.remove(key);
                }
            }
        }
        self.revision = change.revision;
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(change.clone());
        // A subscriber that is gone or too far behind is dropped; a slow one learns it must
        // list again when its stream ends.
        self.subscribers
            .retain(|tx| tx.try_send(Ok(change.clone())).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pylon_model::Kind;
    use serde_json::json;

    fn key(id: &str) -> Key {
        Key::new(Kind::Routes, id)
    }

    #[tokio::test]
    async fn watchers_see_each_change_once_in_order() {
        let log = EventLog::new();
        assert_eq!(log.apply([(key("1"), Some(json!({"a": 1})))]), Some(1));
        let mut rx = log.watch(1).unwrap();
        assert_eq!(
            log.apply([(key("1"), Some(json!({"a": 1})))]),
            None,
            "no-op write"
        );
        assert_eq!(
            log.apply([(key("1"), None), (key("2"), Some(json!({})))]),
            Some(2)
        );
        let change = rx.recv().await.unwrap().unwrap();
        assert_eq!(change.revision, 2);
        assert_eq!(change.events.len(), 2);
        assert!(
            matches!(&change.events[0], Event::Delete { key: k, revision: 2 } if *k == key("1"))
        );
        assert_eq!(log.list().entries.len(), 1);
    }

    #[tokio::test]
    async fn a_late_watcher_replays_history_or_is_told_to_relist() {
        let log = EventLog::new();
        for i in 0..3 {
            log.apply([(key(&i.to_string()), Some(json!(i)))]);
        }
        let mut rx = log.watch(1).unwrap();
        assert_eq!(rx.recv().await.unwrap().unwrap().revision, 2);
        assert_eq!(rx.recv().await.unwrap().unwrap().revision, 3);
        for i in 0..HISTORY {
            log.apply([(key("x"), Some(json!(i)))]);
        }
        assert_eq!(log.watch(1).unwrap_err(), StoreError::Compacted(1));
        assert!(log.watch(log.revision()).is_ok());
    }

    #[test]
    fn a_transaction_applies_whole_or_not_at_all() {
        let log = EventLog::new();
        let r1 = log.commit(Txn::put(key("1"), json!(1))).unwrap();
        let r2 = log
            .commit(Txn::put(key("2"), json!(2)).when(key("2"), Precondition::Absent))
            .unwrap();
        assert_eq!((r1, r2), (1, 2));
        assert_eq!(log.get(&key("2")).unwrap().create_revision, 2);

        let stale = Txn::delete(key("1")).unchanged_since(r1);
        assert_eq!(log.commit(stale), Err(StoreError::Conflict));
        let lost_update =
            Txn::put(key("1"), json!(10)).when(key("1"), Precondition::ModRevision(0));
        assert_eq!(log.commit(lost_update), Err(StoreError::Conflict));
        assert_eq!(log.get(&key("1")).unwrap().value, json!(1));

        let r3 = log
            .commit(Txn::put(key("1"), json!(10)).when(key("1"), Precondition::ModRevision(1)))
            .unwrap();
        let entry = log.get(&key("1")).unwrap();
        assert_eq!((entry.create_revision, entry.mod_revision), (1, r3));
        assert_eq!(
            log.commit(Txn::put(key("1"), json!(10))),
            Ok(r3),
            "a no-op keeps the revision"
        );
    }

    #[tokio::test]
    async fn a_change_that_cannot_be_persisted_is_not_applied_nor_seen() {
        let log = EventLog::new();
        log.commit(Txn::put(key("1"), json!(1))).unwrap();
        let mut rx = log.watch(1).unwrap();
        let unavailable = StoreError::Unavailable("disk full".into());
        let failed = log.commit_with(Txn::put(key("1"), json!(2)), |change| {
            assert_eq!(change.revision, 2, "the change offered for persisting");
            Err(unavailable.clone())
        });
        assert_eq!(failed, Err(unavailable));
        assert_eq!(log.get(&key("1")).unwrap().value, json!(1));
        assert_eq!(log.revision(), 1);
        assert!(rx.try_recv().is_err(), "no watcher heard of it");

        let r2 = log.commit(Txn::put(key("2"), json!(2))).unwrap();
        assert_eq!(r2, 2, "the revision of a failed change was never used");
        assert_eq!(rx.recv().await.unwrap().unwrap().revision, 2);
    }

    #[test]
    fn later_writes_of_a_transaction_see_the_earlier_ones() {
        let log = EventLog::new();
        log.commit(Txn::put(key("1"), json!(1))).unwrap();
        let txn = Txn {
            writes: vec![
                (key("1"), None),
                (key("1"), Some(json!(1))),
                (key("2"), Some(json!(2))),
                (key("2"), Some(json!(2))),
            ],
            ..Txn::default()
        };
        assert_eq!(log.commit(txn), Ok(2));
        let recreated = log.get(&key("1")).unwrap();
        assert_eq!((recreated.create_revision, recreated.mod_revision), (2, 2));
        let change = log.watch(1).unwrap().try_recv().unwrap().unwrap();
        assert_eq!(change.events.len(), 3, "the repeated put of 2 is a no-op");
    }
}
