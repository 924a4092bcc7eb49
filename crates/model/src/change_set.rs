//! A change set as stored under `change_sets/<id>`: the Admin API writes it, and the gateway
//! nodes a canary targets read it and serve its changes. One definition for both sides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::key::{Key, Kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeSetState {
    Draft,
    Submitted,
    Approved,
    Rejected,
    /// Served by the chosen nodes, not yet by the others.
    Canary,
    Published,
    /// Taken back from the canary nodes; final.
    Aborted,
}

impl ChangeSetState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeSetState::Draft => "draft",
            ChangeSetState::Submitted => "submitted",
            ChangeSetState::Approved => "approved",
            ChangeSetState::Rejected => "rejected",
            ChangeSetState::Canary => "canary",
            ChangeSetState::Published => "published",
            ChangeSetState::Aborted => "aborted",
        }
    }

    /// Whether changes may still be added, removed or rebased.
    pub fn editable(self) -> bool {
        matches!(
            self,
            ChangeSetState::Draft
                | ChangeSetState::Submitted
                | ChangeSetState::Approved
                | ChangeSetState::Rejected
        )
    }
}

/// One change: the resource `key` (`<kind>/<id>`, see [`Key::parse`]) as the set would leave
/// it (`None`: deleted), and the revision it had when the set took it (0: it did not exist).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub key: String,
    pub value: Option<Value>,
    #[serde(default)]
    pub base: u64,
}

/// A step of the set's way: who took it, when, with what comment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub user: String,
    /// `submitted`, `approved`, `rejected`, `canary`, `aborted`, `rebased`, `edited` or
    /// `published`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub time: i64,
}

/// Which nodes serve a canary: those named, and those with every label given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryTarget {
    #[serde(default)]
    pub nodes: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl CanaryTarget {
    /// Whether the node `id` with `labels` is one of the target's. No labels given takes no
    /// node by label: an empty target is nobody, not everybody.
    pub fn includes(&self, id: &str, labels: &BTreeMap<String, String>) -> bool {
        self.nodes.iter().any(|node| node == id)
            || (!self.labels.is_empty()
                && self
                    .labels
                    .iter()
                    .all(|(name, value)| labels.get(name) == Some(value)))
    }
}

/// A change set. The fields that only describe it default when absent, so that a node reading
/// a record needs only its state, changes and target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeSet {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub tenant_id: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub author: String,
    pub state: ChangeSetState,
    #[serde(default)]
    pub changes: Vec<Change>,
    #[serde(default)]
    pub history: Vec<Review>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryTarget>,
    #[serde(default)]
    pub create_time: i64,
    #[serde(default)]
    pub update_time: i64,
}

impl ChangeSet {
    pub fn key(&self) -> Key {
        Key::new(Kind::ChangeSets, self.id.clone())
    }

    /// The keys of the resources it changes (those that are resource keys).
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.changes.iter().filter_map(|c| Key::parse(&c.key))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_canary_targets_the_nodes_it_names_and_those_with_all_its_labels() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let target =
            |canary: serde_json::Value| serde_json::from_value::<CanaryTarget>(canary).unwrap();
        let east = labels(&[("zone", "east"), ("tier", "edge")]);
        let west = labels(&[("zone", "west")]);
        let by_id = target(json!({"nodes": ["gw-2"]}));
        assert!(!by_id.includes("gw-1", &east) && by_id.includes("gw-2", &west));
        let by_label = target(json!({"labels": {"zone": "east"}}));
        assert!(by_label.includes("gw-1", &east) && !by_label.includes("gw-2", &west));
        // Every label must match; one the node lacks is a mismatch.
        let both = target(json!({"labels": {"zone": "east", "tier": "core"}}));
        assert!(!both.includes("gw-1", &east));
        let missing = target(json!({"labels": {"rack": "r1"}}));
        assert!(!missing.includes("gw-1", &east));
        // Named or labelled: either will do.
        let either = target(json!({"nodes": ["gw-2"], "labels": {"zone": "east"}}));
        assert!(either.includes("gw-1", &east) && either.includes("gw-2", &west));
        // No labels is no target: it does not take every node.
        let nobody = target(json!({"nodes": [], "labels": {}}));
        assert!(!nobody.includes("gw-1", &east) && !nobody.includes("", &labels(&[])));
    }
}
