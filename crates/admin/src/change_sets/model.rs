//! What a change set is, as stored under `change_sets/<id>`.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::StatusCode;
use pylon_model::{Key, Kind};
use pylon_store::{Entry, Precondition, Txn, View};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::now;
use crate::identity::{Caller, Role};
use crate::response::Reply;
use crate::writer::Plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum State {
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

impl State {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            State::Draft => "draft",
            State::Submitted => "submitted",
            State::Approved => "approved",
            State::Rejected => "rejected",
            State::Canary => "canary",
            State::Published => "published",
            State::Aborted => "aborted",
        }
    }

    /// Whether changes may still be added, removed or rebased.
    pub(super) fn editable(self) -> bool {
        matches!(
            self,
            State::Draft | State::Submitted | State::Approved | State::Rejected
        )
    }
}

/// One change: the resource `key` as the set would leave it (`None`: deleted), and the
/// revision it had when the set took it (0: it did not exist).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Change {
    pub key: String,
    pub value: Option<Value>,
    pub base: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Review {
    pub user: String,
    /// `submitted`, `approved`, `rejected`, `canary`, `aborted`, `rebased` or `published`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub time: i64,
}

/// Which nodes serve a canary: those named, and those with every label given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CanaryTarget {
    #[serde(default)]
    pub nodes: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A change set as stored under `change_sets/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ChangeSet {
    pub id: String,
    pub tenant_id: String,
    pub title: String,
    pub author: String,
    pub state: State,
    pub changes: Vec<Change>,
    #[serde(default)]
    pub history: Vec<Review>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryTarget>,
    pub create_time: i64,
    pub update_time: i64,
}

impl ChangeSet {
    pub(super) fn key(&self) -> Key {
        Key::new(Kind::ChangeSets, self.id.clone())
    }

    pub(super) fn from_entry(entry: &Entry) -> Option<ChangeSet> {
        serde_json::from_value(entry.value.clone()).ok()
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.changes.iter().filter_map(|c| parse_key(&c.key))
    }

    /// `view` with this set's changes in place (but the one of `except`).
    pub(super) fn applied_to(&self, view: &View, except: Option<&Key>) -> View {
        let mut scratch = view.clone();
        for change in &self.changes {
            let Some(key) = parse_key(&change.key) else {
                continue;
            };
            if Some(&key) == except {
                continue;
            }
            match &change.value {
                Some(value) => scratch.entries.insert(Arc::new(Entry {
                    key,
                    value: value.clone(),
                    create_revision: view.revision,
                    mod_revision: view.revision,
                })),
                None => scratch.entries.remove(&key),
            }
        }
        scratch
    }

    /// Sets the change of `key`; a new one takes the revision `view` (the live configuration)
    /// has for it as its base, a replaced one keeps the base the set first took. Deleting what
    /// only the set made drops its change.
    pub(super) fn set(&mut self, view: &View, key: &Key, value: Option<Value>) {
        let text = key.to_string();
        if value.is_none() && !view.entries.contains_key(key) {
            self.changes.retain(|c| c.key != text);
            return;
        }
        match self.changes.iter_mut().find(|c| c.key == text) {
            Some(change) => change.value = value,
            None => self.changes.push(Change {
                key: text,
                value,
                base: live_revision(view, key),
            }),
        }
    }

    /// After a change of content: a set under review goes back to draft, since what was
    /// reviewed is no longer what it holds.
    pub(super) fn edited(&mut self, caller: &Caller) {
        if self.state != State::Draft {
            self.state = State::Draft;
            self.note(caller, "edited", None);
        }
        self.update_time = now();
    }

    pub(super) fn note(&mut self, caller: &Caller, action: &str, comment: Option<String>) {
        self.history.push(Review {
            user: caller.name.clone(),
            action: action.to_owned(),
            comment,
            time: now(),
        });
        self.update_time = now();
    }

    /// The caller as which the set's changes are checked: its author, within its tenant.
    pub(super) fn author(&self) -> Caller {
        Caller {
            name: self.author.clone(),
            tenant: Some(self.tenant_id.clone()),
            role: Role::Editor,
        }
    }
}

/// The revision of `key` in the live configuration `view`: what a change takes as its base
/// (0: the resource does not exist).
pub(super) fn live_revision(view: &View, key: &Key) -> u64 {
    view.entries.get(key).map_or(0, |e| e.mod_revision)
}

/// `<kind>/<id>` of a resource kind.
pub(crate) fn parse_key(text: &str) -> Option<Key> {
    let (kind, id) = text.split_once('/')?;
    let kind = Kind::parse(kind)?;
    let parts_ok = !id.split('/').any(str::is_empty);
    (parts_ok && (kind.has_compound_id() || !id.contains('/'))).then(|| Key::new(kind, id))
}

/// A change set the caller reaches, from `view`.
pub(super) fn find(
    view: &View,
    caller: &Caller,
    id: &str,
) -> Result<(Arc<Entry>, ChangeSet), Reply> {
    let entry = view
        .entries
        .get(&Key::new(Kind::ChangeSets, id))
        .ok_or_else(Reply::not_found)?;
    let cs = ChangeSet::from_entry(entry).ok_or_else(|| {
        Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the stored change set `{id}` cannot be read"),
        )
    })?;
    if !caller.reaches(&cs.tenant_id) {
        return Err(Reply::not_found());
    }
    Ok((entry.clone(), cs))
}

pub(super) fn store_plan(entry: &Entry, cs: &ChangeSet) -> Plan<Value> {
    let stored = serde_json::to_value(cs).expect("a change set serializes");
    Plan {
        txn: Txn::put(cs.key(), stored.clone())
            .when(cs.key(), Precondition::ModRevision(entry.mod_revision)),
        outcome: stored,
    }
}
