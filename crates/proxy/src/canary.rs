//! Canary change sets: a change set the Admin API put in `canary` state is served, before it is
//! published, by the nodes it targets (by id, or by labels), and by no other.
//!
//! Such a node serves the live resources with the change set's changes laid over them (see
//! [`crate::publish`]); this module reads change set records, says which target this node, and
//! turns their changes into the entries laid over.

use std::collections::BTreeMap;
use std::sync::Arc;

use pylon_model::{ChangeSet, ChangeSetState, Key, Kind};
use pylon_store::{Entry, Revision, View};
use serde::Deserialize;
use serde_json::json;

/// Who this node is, as change sets target it and as it reports itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    pub id: String,
    /// The node config's `deployment.labels`.
    pub labels: BTreeMap<String, String>,
}

/// One change set this node serves.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Canary {
    pub id: String,
    /// The change set's modification revision: the revision of every entry it lays over.
    pub revision: Revision,
    /// What it puts (`Some`) and deletes (`None`), by key.
    pub changes: Vec<(Key, Option<Arc<Entry>>)>,
}

/// The change sets of `view` in canary state that target `node`, in change set id order (the
/// order they are laid over in). One that cannot be read is logged and not served at all: half
/// of a change set is a configuration nobody reviewed.
pub(crate) fn targeting(view: &View, node: &NodeIdentity) -> Vec<Canary> {
    view.of_kind(Kind::ChangeSets)
        .filter(|entry| entry.value.get("state") == Some(&json!(ChangeSetState::Canary)))
        .filter_map(|entry| match read(entry, node) {
            Ok(canary) => canary,
            Err(e) => {
                tracing::error!("{} is in canary, but is not served: {e}", entry.key);
                None
            }
        })
        .collect()
}

/// The canary that `entry` is for `node`; `None` when it targets other nodes.
fn read(entry: &Entry, node: &NodeIdentity) -> Result<Option<Canary>, String> {
    let record = ChangeSet::deserialize(&entry.value).map_err(|e| e.to_string())?;
    let targeted = record.canary.as_ref();
    if !targeted.is_some_and(|target| target.includes(&node.id, &node.labels)) {
        return Ok(None);
    }
    let revision = entry.mod_revision;
    let changes = record
        .changes
        .into_iter()
        .enumerate()
        .map(|(i, change)| {
            let key = Key::parse(&change.key)
                .ok_or_else(|| format!("changes[{i}].key: `{}` is no resource", change.key))?;
            let entry = change.value.map(|value| {
                Arc::new(Entry {
                    key: key.clone(),
                    value,
                    create_revision: revision,
                    mod_revision: revision,
                })
            });
            Ok((key, entry))
        })
        .collect::<Result<_, String>>()?;
    Ok(Some(Canary {
        id: entry.key.id.clone(),
        revision,
        changes,
    }))
}

#[cfg(test)]
mod tests {
    use pylon_store::Entries;
    use serde_json::json;

    use super::*;

    fn node(id: &str, labels: &[(&str, &str)]) -> NodeIdentity {
        NodeIdentity {
            id: id.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn view(change_sets: &[(&str, serde_json::Value)]) -> View {
        let entries = change_sets.iter().enumerate().map(|(i, (id, value))| {
            Arc::new(Entry {
                key: Key::new(Kind::ChangeSets, *id),
                value: value.clone(),
                create_revision: 1,
                mod_revision: 10 + i as u64,
            })
        });
        View {
            revision: 20,
            entries: Entries::from_iter(entries),
            live: true,
        }
    }

    #[test]
    fn only_change_sets_in_canary_that_target_the_node_are_served_in_id_order() {
        let change = |key: &str, value: serde_json::Value| json!({"key": key, "value": value});
        let view = view(&[
            (
                "b",
                json!({"state": "canary", "canary": {"nodes": ["gw-1"]},
                       "changes": [change("routes/1", json!({"uri": "/b"})),
                                   change("credentials/jack/credentials/k", json!(null))]}),
            ),
            (
                "a",
                json!({"state": "canary", "canary": {"labels": {"zone": "east"}},
                       "changes": [change("upstreams/u", json!({"nodes": {}}))]}),
            ),
            (
                "c",
                json!({"state": "approved", "canary": {"nodes": ["gw-1"]},
                       "changes": [change("routes/2", json!({}))]}),
            ),
            (
                "d",
                json!({"state": "canary", "canary": {"nodes": ["gw-9"]},
                       "changes": [change("routes/3", json!({}))]}),
            ),
        ]);
        let canaries = targeting(&view, &node("gw-1", &[("zone", "east")]));
        let ids: Vec<&str> = canaries.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let b = &canaries[1];
        assert_eq!(b.revision, 10);
        let (key, put) = &b.changes[0];
        assert_eq!(*key, Key::new(Kind::Routes, "1"));
        let put = put.as_ref().expect("a put");
        assert_eq!(put.value, json!({"uri": "/b"}));
        assert_eq!(put.mod_revision, 10);
        assert_eq!(
            b.changes[1],
            (Key::new(Kind::Credentials, "jack/credentials/k"), None)
        );
    }

    #[test]
    fn a_change_set_that_cannot_be_read_is_not_served_at_all() {
        let node = node("gw-1", &[]);
        for changes in [
            json!([{"key": "routes/1", "value": {}}, {"key": "nodes/gw-1", "value": {}}]),
            json!([{"key": "routes/1", "value": {}}, {"key": "routes", "value": {}}]),
            json!([{"key": "routes/1", "value": {}}, {"value": {}}]),
            json!("routes/1"),
        ] {
            let record =
                json!({"state": "canary", "canary": {"nodes": ["gw-1"]}, "changes": changes});
            assert_eq!(targeting(&view(&[("cs", record)]), &node), [], "{changes}");
        }
    }
}
