//! The JSON bodies of what is stored: a log record is one change (its revision and its
//! events), a snapshot is every entry at one revision.
//!
//! Keys are stored as their kind's name and their id; a put's mod revision is its record's.
//! Whatever is read back is checked as far as the store relies on it, and refused with the
//! reason otherwise: nothing read from disk can make the store panic.

use std::borrow::Cow;

use pylon_model::{Key, Kind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Change, Entry, Event, Listing, Revision};

#[derive(Serialize, Deserialize)]
struct Record<'a> {
    revision: Revision,
    events: Vec<StoredEvent<'a>>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum StoredEvent<'a> {
    Put {
        kind: Cow<'a, str>,
        id: Cow<'a, str>,
        value: Cow<'a, Value>,
        create_revision: Revision,
    },
    Delete {
        kind: Cow<'a, str>,
        id: Cow<'a, str>,
    },
}

#[derive(Serialize, Deserialize)]
struct Snapshot<'a> {
    revision: Revision,
    entries: Vec<StoredEntry<'a>>,
}

#[derive(Serialize, Deserialize)]
struct StoredEntry<'a> {
    kind: Cow<'a, str>,
    id: Cow<'a, str>,
    value: Cow<'a, Value>,
    create_revision: Revision,
    mod_revision: Revision,
}

pub fn encode_change(change: &Change) -> serde_json::Result<Vec<u8>> {
    let events = change
        .events
        .iter()
        .map(|event| match event {
            Event::Put(entry) => StoredEvent::Put {
                kind: entry.key.kind.as_str().into(),
                id: Cow::Borrowed(&entry.key.id),
                value: Cow::Borrowed(&entry.value),
                create_revision: entry.create_revision,
            },
            Event::Delete { key, .. } => StoredEvent::Delete {
                kind: key.kind.as_str().into(),
                id: Cow::Borrowed(&key.id),
            },
        })
        .collect();
    serde_json::to_vec(&Record {
        revision: change.revision,
        events,
    })
}

pub fn decode_change(body: &[u8]) -> Result<Change, String> {
    let record: Record = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let revision = record.revision;
    let events = record
        .events
        .into_iter()
        .map(|event| match event {
            StoredEvent::Put {
                kind,
                id,
                value,
                create_revision,
            } => {
                if create_revision == 0 || create_revision > revision {
                    return Err(format!(
                        "create revision {create_revision} of a put at revision {revision}"
                    ));
                }
                Ok(Event::Put(Entry {
                    key: key(&kind, id)?,
                    value: value.into_owned(),
                    create_revision,
                    mod_revision: revision,
                }))
            }
            StoredEvent::Delete { kind, id } => Ok(Event::Delete {
                key: key(&kind, id)?,
                revision,
            }),
        })
        .collect::<Result<_, String>>()?;
    Ok(Change { revision, events })
}

pub fn encode_snapshot(listing: &Listing) -> serde_json::Result<Vec<u8>> {
    let entries = listing
        .entries
        .iter()
        .map(|entry| StoredEntry {
            kind: entry.key.kind.as_str().into(),
            id: Cow::Borrowed(&entry.key.id),
            value: Cow::Borrowed(&entry.value),
            create_revision: entry.create_revision,
            mod_revision: entry.mod_revision,
        })
        .collect();
    serde_json::to_vec(&Snapshot {
        revision: listing.revision,
        entries,
    })
}

pub fn decode_snapshot(body: &[u8]) -> Result<Listing, String> {
    let snapshot: Snapshot = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let revision = snapshot.revision;
    let entries = snapshot
        .entries
        .into_iter()
        .map(|stored| {
            let key = key(&stored.kind, stored.id)?;
            let (create, modified) = (stored.create_revision, stored.mod_revision);
            if create == 0 || create > modified || modified > revision {
                return Err(format!(
                    "{key}: create revision {create}, mod revision {modified} in a snapshot at revision {revision}"
                ));
            }
            Ok(Entry {
                key,
                value: stored.value.into_owned(),
                create_revision: create,
                mod_revision: modified,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Listing { revision, entries })
}

fn key(kind: &str, id: Cow<'_, str>) -> Result<Key, String> {
    let kind = Kind::parse_stored(kind).ok_or_else(|| format!("unknown kind `{kind}`"))?;
    Ok(Key::new(kind, id.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_and_snapshots_read_back_as_written() {
        let route = Key::new(Kind::Routes, "r1");
        let change = Change {
            revision: 7,
            events: vec![
                Event::Put(Entry {
                    key: route.clone(),
                    value: json!({"uri": "/a"}),
                    create_revision: 3,
                    mod_revision: 7,
                }),
                Event::Delete {
                    key: Key::new(Kind::Upstreams, "u1"),
                    revision: 7,
                },
            ],
        };
        let body = encode_change(&change).unwrap();
        assert_eq!(decode_change(&body), Ok(change.clone()));

        let Event::Put(entry) = &change.events[0] else {
            unreachable!()
        };
        let listing = Listing {
            revision: 9,
            entries: vec![entry.clone()],
        };
        let body = encode_snapshot(&listing).unwrap();
        assert_eq!(decode_snapshot(&body), Ok(listing));
    }

    #[test]
    fn what_the_store_could_not_rely_on_is_refused() {
        let unknown_kind = br#"{"revision":1,"events":[{"op":"delete","kind":"nope","id":"x"}]}"#;
        assert_eq!(
            decode_change(unknown_kind),
            Err("unknown kind `nope`".into())
        );
        let created_later = br#"{"revision":1,"events":[{"op":"put","kind":"routes","id":"x","value":{},"create_revision":2}]}"#;
        assert!(decode_change(created_later).is_err());
        assert!(decode_snapshot(br#"{"revision":1,"entries":[{"kind":"routes","id":"x","value":{},"create_revision":1,"mod_revision":5}]}"#).is_err());
        assert!(decode_change(b"not json").is_err());
    }
}
