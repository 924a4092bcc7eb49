//! Whether a change set may move on: valid against what is live, based on what is live, in
//! a state that allows it, touching no other canary's resources.

use http::StatusCode;
use pylon_model::{Key, Kind};
use pylon_store::View;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::forbidden;
use crate::identity::Caller;
use crate::resource_write;
use crate::response::Reply;
use crate::secrets;
use crate::tenancy::{self, Via};
use crate::validation::{self, Refusal};
use crate::writer::Backend;

use super::model::{live_revision, ChangeSet, Editing, State};

/// Why the set, applied to `view` change by change, would be refused: one message per
/// problem, each naming its resource.
pub(super) fn validate(backend: &Backend, view: &View, cs: &ChangeSet) -> Vec<String> {
    let mut errors = Vec::new();
    let author = cs.author();
    for change in &cs.changes {
        let Some(key) = Key::parse(&change.key) else {
            errors.push(format!("{}: not a resource key", change.key));
            continue;
        };
        let scratch = cs.applied_to(view, Some(&key));
        let result = match &change.value {
            Some(value) => check_put(backend, &scratch, &author, &key, value),
            None => match scratch.entries.get(&key) {
                Some(existing) => {
                    resource_write::delete_keys(&scratch, &author, existing, false, Via::ChangeSet)
                        .map(drop)
                }
                None => Ok(()),
            },
        };
        if let Err(reply) = result {
            errors.push(format!("{key}: {}", reply_message(&reply)));
        }
    }
    errors
}

/// Checks a stored value (secrets sealed) as a write of `key` in `view`.
pub(super) fn check_put(
    backend: &Backend,
    view: &View,
    author: &Caller,
    key: &Key,
    value: &Value,
) -> Result<(), Reply> {
    let mut opened = value.clone();
    secrets::open(&backend.keyring, key.kind, &mut opened)
        .map_err(|e| Reply::bad_request(format!("cannot open its secrets: {e}")))?;
    let Value::Object(mut fields) = opened.clone() else {
        return Err(Reply::bad_request("must be a JSON object"));
    };
    let existing = view.entries.get(key);
    tenancy::check_write(
        view,
        author,
        key,
        existing.map(|e| &**e),
        &mut fields,
        Via::ChangeSet,
    )?;
    validation::check_write(&backend.keyring, view, key, &opened).map_err(|refusal| match refusal {
        Refusal::Invalid(errors) => Reply::invalid(&errors),
        Refusal::MissingReference(message) => Reply::bad_request(message),
    })
}

pub(super) fn reply_message(reply: &Reply) -> String {
    reply
        .body
        .as_ref()
        .and_then(|b| b["error_msg"].as_str().or(b["message"].as_str()))
        .unwrap_or("refused")
        .to_owned()
}

/// The changes whose resource was changed (or made, or removed) since the set took it.
pub(super) fn conflicts(view: &View, cs: &ChangeSet) -> Vec<Value> {
    cs.changes
        .iter()
        .filter_map(|change| {
            let key = Key::parse(&change.key)?;
            let now = live_revision(view, &key);
            (now != change.base)
                .then(|| json!({ "key": change.key, "base": change.base, "live": now }))
        })
        .collect()
}

pub(super) fn require_editable(cs: &ChangeSet) -> Result<(), Reply> {
    if cs.state.editable() {
        Ok(())
    } else {
        Err(Reply::error(
            StatusCode::CONFLICT,
            format!(
                "change set `{}` is {}: it changes no more",
                cs.id,
                cs.state.as_str()
            ),
        ))
    }
}

pub(super) fn require_writer(caller: &Caller) -> Result<(), Reply> {
    if caller.role.writes() {
        Ok(())
    } else {
        Err(forbidden(format!(
            "role `{}` changes no change sets",
            caller.role.as_str()
        )))
    }
}

pub(super) fn require_valid(backend: &Backend, view: &View, cs: &ChangeSet) -> Result<(), Reply> {
    let errors = validate(backend, view, cs);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Reply::bad_request(format!(
            "change set `{}` is not valid against the live configuration: {}",
            cs.id,
            errors.join("; ")
        )))
    }
}

/// Refuses a set whose resources changed since it took them: it is rebased, and reviewed
/// again, first.
pub(super) fn require_current(view: &View, cs: &ChangeSet) -> Result<(), Reply> {
    let conflicts = conflicts(view, cs);
    if conflicts.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = conflicts
        .iter()
        .map(|c| {
            format!(
                "{} (revision {} when taken, {} now)",
                c["key"].as_str().unwrap_or_default(),
                c["base"],
                c["live"]
            )
        })
        .collect();
    Err(Reply::error(
        StatusCode::CONFLICT,
        format!(
            "change set `{}` is based on an older configuration: {} changed since; rebase it (POST /pylon/admin/change_sets/{}/rebase)",
            cs.id,
            keys.join(", "),
            cs.id
        ),
    ))
}

/// A set is published (or served as a canary) once approved, or, for a tenant without review,
/// from any state before.
pub(super) fn check_publishable(cs: &ChangeSet, review: bool) -> Result<(), Reply> {
    let ready = match cs.state {
        State::Approved => true,
        State::Draft | State::Submitted => !review,
        State::Canary => true,
        State::Rejected | State::Published | State::Aborted => false,
    };
    if ready {
        Ok(())
    } else {
        Err(Reply::error(
            StatusCode::CONFLICT,
            format!(
                "change set `{}` is {}: tenant `{}` publishes approved change sets only",
                cs.id,
                cs.state.as_str(),
                cs.tenant_id
            ),
        ))
    }
}

/// Two canaries may not change one resource: a node serving both would serve either.
pub(super) fn check_other_canaries(view: &View, cs: &ChangeSet) -> Result<(), Reply> {
    let mine: Vec<Key> = cs.keys().collect();
    for other in view
        .of_kind(Kind::ChangeSets)
        .filter_map(|e| ChangeSet::deserialize(&e.value).ok())
    {
        if other.id == cs.id || other.state != State::Canary {
            continue;
        }
        if let Some(shared) = other.keys().find(|k| mine.contains(k)) {
            return Err(Reply::error(
                StatusCode::CONFLICT,
                format!(
                    "{shared} is in canary change set `{}`: promote or abort it first",
                    other.id
                ),
            ));
        }
    }
    Ok(())
}
