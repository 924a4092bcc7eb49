//! A change set's stored form (the model's, which the canary nodes read too), and what the Admin
//! API does to one.

use std::sync::Arc;

use http::StatusCode;
use pylon_model::{Key, Kind};
use pylon_store::{Entry, Precondition, Txn, View};
use serde::Deserialize;
use serde_json::Value;

use crate::clock::now;
use crate::identity::{Caller, Role};
use crate::response::Reply;
use crate::writer::Plan;

pub(crate) use pylon_model::{CanaryTarget, Change, ChangeSet, ChangeSetState as State, Review};

/// What the Admin API does to a change set beyond its stored form.
pub(crate) trait Editing {
    /// `view` with the set's changes in place (but the one of `except`).
    fn applied_to(&self, view: &View, except: Option<&Key>) -> View;
    /// Sets the change of `key`; a new one takes the revision `view` (the live configuration)
    /// has for it as its base, a replaced one keeps the base the set first took. Deleting what
    /// only the set made drops its change.
    fn set(&mut self, view: &View, key: &Key, value: Option<Value>);
    /// After a change of content: a set under review goes back to draft, since what was
    /// reviewed is no longer what it holds.
    fn edited(&mut self, caller: &Caller);
    fn note(&mut self, caller: &Caller, action: &str, comment: Option<String>);
    /// The caller as which the set's changes are checked: its author, within its tenant.
    fn author(&self) -> Caller;
}

impl Editing for ChangeSet {
    fn applied_to(&self, view: &View, except: Option<&Key>) -> View {
        let mut scratch = view.clone();
        for change in &self.changes {
            let Some(key) = Key::parse(&change.key) else {
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

    fn set(&mut self, view: &View, key: &Key, value: Option<Value>) {
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

    fn edited(&mut self, caller: &Caller) {
        if self.state != State::Draft {
            self.state = State::Draft;
            self.note(caller, "edited", None);
        }
        self.update_time = now();
    }

    fn note(&mut self, caller: &Caller, action: &str, comment: Option<String>) {
        self.history.push(Review {
            user: caller.name.clone(),
            action: action.to_owned(),
            comment,
            time: now(),
        });
        self.update_time = now();
    }

    fn author(&self) -> Caller {
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
    let cs = ChangeSet::deserialize(&entry.value).map_err(|_| {
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
