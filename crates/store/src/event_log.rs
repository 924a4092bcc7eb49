//! A revisioned key-value map with a bounded history of changes and live subscribers:
//! the part of watch semantics every local backend shares.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use pylon_model::Key;
use tokio::sync::mpsc;

use crate::{Change, Entry, Event, Listing, Revision, StoreError, WatchStream};

/// Changes kept for watchers that fall behind; older ones must list again.
const HISTORY: usize = 1024;
/// Changes buffered per subscriber before it is cut off and told to list again.
const SUBSCRIBER_BUFFER: usize = 256;

#[derive(Default)]
pub struct EventLog {
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

    pub fn revision(&self) -> Revision {
        self.lock().revision
    }

    pub fn get(&self, key: &Key) -> Option<Entry> {
        self.lock().entries.get(key).cloned()
    }

    pub fn list(&self) -> Listing {
        let state = self.lock();
        Listing {
            revision: state.revision,
            entries: state.entries.values().cloned().collect(),
        }
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

    /// Applies puts (`Some`) and deletes (`None`) as one revision; returns it, or `None` when
    /// nothing actually changed.
    pub fn apply(
        &self,
        writes: impl IntoIterator<Item = (Key, Option<serde_json::Value>)>,
    ) -> Option<Revision> {
        let mut state = self.lock();
        let revision = state.revision + 1;
        let mut events = Vec::new();
        for (key, value) in writes {
            match value {
                Some(value) => {
                    if state.entries.get(&key).is_some_and(|e| e.value == value) {
                        continue;
                    }
                    let entry = Entry {
                        key: key.clone(),
                        value,
                        mod_revision: revision,
                    };
                    state.entries.insert(key, entry.clone());
                    events.push(Event::Put(entry));
                }
                None => {
                    if state.entries.remove(&key).is_some() {
                        events.push(Event::Delete { key, revision });
                    }
                }
            }
        }
        if events.is_empty() {
            return None;
        }
        state.revision = revision;
        let change = Change { revision, events };
        if state.history.len() == HISTORY {
            state.history.pop_front();
        }
        state.history.push_back(change.clone());
        // A subscriber that is gone or too far behind is dropped; a slow one learns it must
        // list again when its stream ends.
        state
            .subscribers
            .retain(|tx| tx.try_send(Ok(change.clone())).is_ok());
        Some(revision)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State half-updated in a way readers
        // could misread: every mutation above completes before the next statement can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
}
