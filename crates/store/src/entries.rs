//! [`Entries`]: a store's content by key, persistent. Cloning it is one reference count per
//! chunk, a change copies the one chunk it falls in, and two versions compare by the chunks
//! they do not share: a replica of 100,000 resources takes a change, and its readers find
//! what changed, at the cost of that change rather than of the whole content.

use std::ops::Index;
use std::sync::Arc;

use pylon_model::Key;

use crate::Entry;

/// Most entries in one chunk: a chunk that grows beyond it splits in two.
const CHUNK: usize = 128;

/// Entries in key order, in chunks that versions share until one of them changes.
#[derive(Debug, Clone, Default)]
pub struct Entries {
    /// Each chunk non-empty and in key order, every key of one before every key of the next.
    chunks: Vec<Arc<Vec<Arc<Entry>>>>,
    len: usize,
}

impl Entries {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &Key) -> Option<&Arc<Entry>> {
        let chunk = self.chunks.get(self.chunk_of(key))?;
        let i = chunk.binary_search_by(|e| e.key.cmp(key)).ok()?;
        Some(&chunk[i])
    }

    pub fn contains_key(&self, key: &Key) -> bool {
        self.get(key).is_some()
    }

    /// Adds `entry` under its key, replacing the entry of that key if any.
    pub fn insert(&mut self, entry: Arc<Entry>) {
        let at = self.chunk_of(&entry.key);
        if at == self.chunks.len() {
            self.chunks.push(Arc::default());
        }
        let chunk = Arc::make_mut(&mut self.chunks[at]);
        match chunk.binary_search_by(|e| e.key.cmp(&entry.key)) {
            Ok(i) => chunk[i] = entry,
            Err(i) => {
                chunk.insert(i, entry);
                self.len += 1;
                if chunk.len() > CHUNK {
                    let upper = chunk.split_off(chunk.len() / 2);
                    self.chunks.insert(at + 1, Arc::new(upper));
                }
            }
        }
    }

    /// Removes the entry of `key`, if any.
    pub fn remove(&mut self, key: &Key) {
        let at = self.chunk_of(key);
        let Some(chunk) = self.chunks.get(at) else {
            return;
        };
        let Ok(i) = chunk.binary_search_by(|e| e.key.cmp(key)) else {
            return;
        };
        let chunk = Arc::make_mut(&mut self.chunks[at]);
        chunk.remove(i);
        self.len -= 1;
        if chunk.is_empty() {
            self.chunks.remove(at);
        }
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Arc<Entry>)> {
        self.values().map(|e| (&e.key, e))
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.chunks.iter().flat_map(|chunk| chunk.iter())
    }

    /// The entries from the first key at or after `from`, in key order.
    pub fn from_key(&self, from: &Key) -> impl Iterator<Item = &Arc<Entry>> {
        let at = self.chunk_of(from);
        let skip = self
            .chunks
            .get(at)
            .map_or(0, |chunk| chunk.partition_point(|e| e.key < *from));
        self.chunks[at..]
            .iter()
            .flat_map(|chunk| chunk.iter())
            .skip(skip)
    }

    /// The keys whose entry differs between this version and `newer`, with the newer entry
    /// (`None`: gone). An entry differs when its modification revision does. The chunks both
    /// share are skipped unread, so the cost follows what changed.
    pub fn changes<'a>(&'a self, newer: &'a Entries) -> Vec<(&'a Key, Option<&'a Arc<Entry>>)> {
        let mut changes = Vec::new();
        let (mut old, mut new) = (Cursor::new(self), Cursor::new(newer));
        loop {
            if let (Some(a), Some(b)) = (old.whole_chunk(), new.whole_chunk()) {
                if Arc::ptr_eq(a, b) {
                    old.next_chunk();
                    new.next_chunk();
                    continue;
                }
            }
            match (old.peek(), new.peek()) {
                (None, None) => return changes,
                (Some(a), Some(b)) if a.key == b.key => {
                    if a.mod_revision != b.mod_revision {
                        changes.push((&b.key, Some(b)));
                    }
                    old.advance();
                    new.advance();
                }
                (Some(gone), next) if next.is_none_or(|b| gone.key < b.key) => {
                    changes.push((&gone.key, None));
                    old.advance();
                }
                (_, next) => {
                    let came = next.expect("the older side is behind it or done");
                    changes.push((&came.key, Some(came)));
                    new.advance();
                }
            }
        }
    }

    /// The chunk where `key` is or would go: the first whose last key is not below it (the
    /// last chunk for a key beyond them all; 0 when there is none).
    fn chunk_of(&self, key: &Key) -> usize {
        let at = self
            .chunks
            .partition_point(|chunk| chunk.last().is_some_and(|e| e.key < *key));
        at.min(self.chunks.len().saturating_sub(1))
    }
}

/// A place in an [`Entries`]: a chunk and an index in it.
struct Cursor<'a> {
    chunks: &'a [Arc<Vec<Arc<Entry>>>],
    index: usize,
}

impl<'a> Cursor<'a> {
    fn new(entries: &'a Entries) -> Self {
        Self {
            chunks: &entries.chunks,
            index: 0,
        }
    }

    /// The current chunk, when the cursor is at its start.
    fn whole_chunk(&self) -> Option<&'a Arc<Vec<Arc<Entry>>>> {
        self.chunks.first().filter(|_| self.index == 0)
    }

    fn next_chunk(&mut self) {
        self.chunks = &self.chunks[1..];
        self.index = 0;
    }

    fn peek(&self) -> Option<&'a Arc<Entry>> {
        self.chunks.first().map(|chunk| &chunk[self.index])
    }

    fn advance(&mut self) {
        self.index += 1;
        if self
            .chunks
            .first()
            .is_some_and(|chunk| self.index == chunk.len())
        {
            self.next_chunk();
        }
    }
}

impl FromIterator<Arc<Entry>> for Entries {
    fn from_iter<I: IntoIterator<Item = Arc<Entry>>>(entries: I) -> Self {
        let mut all = Entries::default();
        for entry in entries {
            all.insert(entry);
        }
        all
    }
}

impl<'a> IntoIterator for &'a Entries {
    type Item = (&'a Key, &'a Arc<Entry>);
    type IntoIter = Box<dyn Iterator<Item = Self::Item> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl Index<&Key> for Entries {
    type Output = Arc<Entry>;

    fn index(&self, key: &Key) -> &Arc<Entry> {
        self.get(key).expect("no entry for the key")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use pylon_model::Kind;
    use serde_json::json;

    use super::*;

    fn entry(id: usize, revision: u64) -> Arc<Entry> {
        Arc::new(Entry {
            key: Key::new(Kind::Routes, format!("{id:05}")),
            value: json!({}),
            create_revision: 1,
            mod_revision: revision,
        })
    }

    /// Random inserts, replacements and removals, against a `BTreeMap` doing the same; after
    /// each step the content, the lookups, the ranges and the changes since the last step
    /// agree.
    #[test]
    fn entries_behave_as_an_ordered_map_and_report_their_changes() {
        for seed in 0..20 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let (mut entries, mut model) = (Entries::default(), BTreeMap::new());
            for step in 0..600u64 {
                let before = entries.clone();
                let model_before = model.clone();
                let id = rng.usize(..400);
                if rng.usize(..3) == 0 {
                    let key = entry(id, 0).key.clone();
                    entries.remove(&key);
                    model.remove(&key);
                } else {
                    let e = entry(id, step + 2);
                    model.insert(e.key.clone(), e.clone());
                    entries.insert(e);
                }
                assert_eq!(entries.len(), model.len());
                let keys: Vec<&Key> = entries.iter().map(|(k, _)| k).collect();
                assert!(keys.iter().eq(model.keys().collect::<Vec<_>>().iter()));
                let probe = entry(rng.usize(..400), 0).key.clone();
                assert_eq!(entries.contains_key(&probe), model.contains_key(&probe));
                let from: Vec<&Key> = entries.from_key(&probe).map(|e| &e.key).collect();
                let expected: Vec<&Key> = model.range(probe.clone()..).map(|(k, _)| k).collect();
                assert_eq!(from, expected, "seed {seed} step {step}");

                let changes: Vec<(Key, Option<u64>)> = before
                    .changes(&entries)
                    .into_iter()
                    .map(|(k, e)| (k.clone(), e.map(|e| e.mod_revision)))
                    .collect();
                let mut expected = Vec::new();
                for key in model_before.keys().chain(model.keys()) {
                    let (old, new) = (model_before.get(key), model.get(key));
                    let revision = |e: Option<&Arc<Entry>>| e.map(|e| e.mod_revision);
                    if revision(old) != revision(new) && !expected.iter().any(|(k, _)| k == key) {
                        expected.push((key.clone(), revision(new)));
                    }
                }
                expected.sort();
                assert_eq!(changes, expected, "seed {seed} step {step}");
            }
            // Versions share what did not change.
            assert!(entries.chunks.len() > 1);
        }
    }
}
