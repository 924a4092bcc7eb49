//! Where Pylon's resources live in etcd's flat key space, and how stored bytes become entries.
//!
//! A resource is the key `<prefix>/<kind>/<id>` holding its JSON. Beside them sits the guard,
//! `<prefix>/.guard`, which no resource key can ever name. Whatever else is under the prefix
//! (another tool's keys, a value that is not JSON) is ignored, and reported once per key.

use std::collections::HashSet;
use std::sync::Mutex;

use pylon_model::{Key, Kind};

use super::prefix;
use super::proto::{self, EventType};
use super::watch::Decode;
use crate::{Entry, Event, Revision};

pub(super) struct Keyspace {
    prefix: String,
    guard: Vec<u8>,
    /// Keys already reported as not Pylon's: each is logged once, not on every listing.
    reported: Mutex<HashSet<Vec<u8>>>,
}

impl Keyspace {
    pub fn new(prefix: &str) -> Keyspace {
        let prefix = prefix.trim_end_matches('/').to_owned();
        Keyspace {
            guard: format!("{prefix}/.guard").into_bytes(),
            prefix,
            reported: Mutex::default(),
        }
    }

    pub fn path(&self, key: &Key) -> Vec<u8> {
        key.to_path(&self.prefix).into_bytes()
    }

    /// The key every commit puts, so that its modification revision is that of the last commit.
    pub fn guard(&self) -> &[u8] {
        &self.guard
    }

    /// `[start, end)`, covering exactly the keys under `<prefix>/`.
    pub fn range(&self) -> (Vec<u8>, Vec<u8>) {
        prefix::range(&format!("{}/", self.prefix))
    }

    /// The ranges that cover the keys under `<prefix>/` but the history kinds', in key order.
    pub fn current_ranges(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let (mut start, end) = self.range();
        let mut history: Vec<_> = Kind::CONTROL
            .into_iter()
            .filter(|kind| kind.is_history())
            .map(|kind| self.history_range(kind, ""))
            .collect();
        history.sort();
        let mut ranges = Vec::new();
        for (skip_from, skip_to) in history {
            ranges.push((start, skip_from));
            start = skip_to;
        }
        ranges.push((start, end));
        ranges
    }

    /// `[start, end)`, covering the keys of `kind` whose id starts with `id_prefix`.
    pub fn history_range(&self, kind: Kind, id_prefix: &str) -> (Vec<u8>, Vec<u8>) {
        prefix::range(&format!("{}/{kind}/{id_prefix}", self.prefix))
    }

    /// The stored entry, or `None` for a key or value that is not Pylon's.
    pub fn entry(&self, kv: &proto::KeyValue) -> Option<Entry> {
        let key = self.key(&kv.key)?;
        let Ok(value) = serde_json::from_slice(&kv.value) else {
            self.report(&kv.key, "its value is not JSON");
            return None;
        };
        Some(Entry {
            key,
            value,
            create_revision: revision(kv.create_revision),
            mod_revision: revision(kv.mod_revision),
        })
    }

    /// A watch event as a change to Pylon's resources, or `None` for a key that is not Pylon's.
    /// A value that is not JSON reads as a deletion, as a listing would leave it out too.
    pub fn event(&self, event: &proto::Event) -> Option<Event> {
        let kv = event.kv.as_ref()?;
        if event.r#type() == EventType::Put {
            if let Some(entry) = self.entry(kv) {
                return Some(Event::Put(entry));
            }
        }
        Some(Event::Delete {
            key: self.key(&kv.key)?,
            revision: revision(kv.mod_revision),
        })
    }

    fn key(&self, path: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(path)
            .ok()
            .and_then(|path| Key::from_path(&self.prefix, path));
        if key.is_none() && path != self.guard {
            self.report(path, "it names no resource");
        }
        key
    }

    fn report(&self, path: &[u8], why: &str) {
        // A poisoned set only means a panic elsewhere while inserting; its contents are fine.
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        if reported.insert(path.to_vec()) {
            tracing::warn!(
                key = %String::from_utf8_lossy(path),
                "etcd key ignored: {why}"
            );
        }
    }
}

impl Decode for Keyspace {
    type Event = Event;

    fn decode(&self, raw: &proto::Event) -> Option<Event> {
        self.event(raw)
    }
}

/// etcd's revisions are signed but never negative.
pub(super) fn revision(etcd_revision: i64) -> Revision {
    Revision::try_from(etcd_revision).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pylon_model::Kind;
    use serde_json::json;

    fn kv(path: &str, value: &str, revision: i64) -> proto::KeyValue {
        proto::KeyValue {
            key: path.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: revision,
            value: value.as_bytes().to_vec(),
        }
    }

    fn event(kind: EventType, kv: proto::KeyValue) -> proto::Event {
        proto::Event {
            r#type: kind as i32,
            kv: Some(kv),
        }
    }

    #[test]
    fn the_range_covers_the_prefix_and_nothing_else() {
        let keyspace = Keyspace::new("/pylon/");
        let (start, end) = keyspace.range();
        let inside = |path: &str| (start.as_slice()..end.as_slice()).contains(&path.as_bytes());
        assert!(inside("/pylon/routes/1"));
        assert!(inside("/pylon/.guard"));
        assert!(inside("/pylon/\u{10ffff}"));
        assert!(!inside("/pylon"));
        assert!(!inside("/pylon0/routes/1"));
        assert!(!inside("/pylonx/routes/1"));
        assert!(!inside("/pylon-other/routes/1"));
    }

    #[test]
    fn only_resource_keys_with_json_values_are_entries() {
        let keyspace = Keyspace::new("/pylon");
        let entry = keyspace
            .entry(&kv("/pylon/routes/r1", r#"{"uri":"/"}"#, 7))
            .unwrap();
        assert_eq!(entry.key, Key::new(Kind::Routes, "r1"));
        assert_eq!(entry.value, json!({"uri": "/"}));
        assert_eq!((entry.create_revision, entry.mod_revision), (1, 7));
        assert_eq!(keyspace.entry(&kv("/pylon/.guard", "", 7)), None);
        assert_eq!(keyspace.entry(&kv("/pylon/nope/1", "{}", 7)), None);
        assert_eq!(
            keyspace.entry(&kv("/pylon/routes/r1", "{not json", 7)),
            None
        );
    }

    #[test]
    fn a_value_that_is_not_json_reads_as_a_deletion() {
        let keyspace = Keyspace::new("/pylon");
        let key = Key::new(Kind::Upstreams, "u1");
        let put =
            |value| keyspace.event(&event(EventType::Put, kv("/pylon/upstreams/u1", value, 9)));
        assert!(matches!(put("{}"), Some(Event::Put(entry)) if entry.key == key));
        assert_eq!(put("garbage"), Some(Event::Delete { key, revision: 9 }));
        let deleted = event(EventType::Delete, kv("/pylon/.guard", "", 9));
        assert_eq!(keyspace.event(&deleted), None);
    }
}
