//! Change sets: changes to one tenant's resources, made together, reviewed, and published as
//! one transaction (`/pylon/admin/change_sets[/<id>[/<action>]]`).
//!
//! A change set starts as a draft; its author adds changes (each checked as the write it would
//! be, against the live configuration with the set's other changes in place), submits it, and a
//! reviewer who is not its author approves or rejects it. Publishing writes every change, the
//! set's new state and the audit record in one store transaction, on condition that no resource
//! it changes was changed since the set took it as its base; otherwise it is refused until
//! rebased. A tenant without review may publish its drafts directly.
//!
//! Before it is published, an approved set can be served by chosen nodes only (`canary`, by
//! node id or labels); `promote` then publishes it, and `abort` takes it back from them.

mod checks;
mod editing;
mod lifecycle;
mod model;

pub(crate) use editing::write_into;
pub(crate) use lifecycle::write_or_propose;

use http::{Method, StatusCode};
use pylon_model::{Key, Kind};
use pylon_store::View;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::Record;
use crate::identity::Caller;
use crate::query::Query;
use crate::response::{listed, parse_body, Reply};
use crate::writer::Backend;

use checks::{conflicts, validate};
use editing::{add_change, create, drop_change, import, remove};
use lifecycle::{publish, transition, Action};
use model::{find, CanaryTarget, ChangeSet};

/// Answers `/pylon/admin/change_sets[/<id>[/<action>]]`; `rest` is the path after `change_sets`.
pub(crate) async fn handle(
    backend: &Backend,
    record: &Record,
    method: &Method,
    rest: &[&str],
    query: &Query,
    body: &[u8],
) -> Result<Reply, Reply> {
    let caller = &record.caller;
    let json = || crate::body::json_body(body);
    match (rest, method) {
        ([], &Method::GET) => Ok(list(&backend.replica.view(), caller, query)),
        ([], &Method::POST) => create(backend, record, json()?).await,
        (["import"], &Method::POST) => import(backend, record, query, body).await,
        ([id], &Method::GET) => show(backend, caller, id),
        ([id], &Method::DELETE) => remove(backend, record, id).await,
        ([id, "changes"], &Method::POST) => add_change(backend, record, id, json()?).await,
        ([id, "changes", key @ ..], &Method::DELETE) => {
            drop_change(backend, record, id, &key.join("/")).await
        }
        ([id, action], &Method::POST) => {
            let comment = json()?
                .as_ref()
                .and_then(|b| b.get("comment"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            match *action {
                "submit" => transition(backend, record, id, Action::Submit, comment).await,
                "approve" => transition(backend, record, id, Action::Approve, comment).await,
                "reject" => transition(backend, record, id, Action::Reject, comment).await,
                "rebase" => transition(backend, record, id, Action::Rebase, comment).await,
                "abort" => transition(backend, record, id, Action::Abort, comment).await,
                "canary" => {
                    let target: CanaryTarget = parse_body(json()?)?;
                    transition(backend, record, id, Action::Canary(target), comment).await
                }
                "publish" | "promote" => publish(backend, record, id, comment).await,
                _ => Err(Reply::error(StatusCode::NOT_FOUND, "not found")),
            }
        }
        _ => Err(Reply::error(StatusCode::NOT_FOUND, "not found")),
    }
}

fn list(view: &View, caller: &Caller, query: &Query) -> Reply {
    let state = query.get("state");
    let sets: Vec<Value> = view
        .of_kind(Kind::ChangeSets)
        .filter_map(|e| ChangeSet::deserialize(&e.value).ok())
        .filter(|cs| caller.reaches(&cs.tenant_id))
        .filter(|cs| state.is_none_or(|s| cs.state.as_str() == s))
        .map(|cs| summary(&cs))
        .collect();
    listed(sets)
}

fn summary(cs: &ChangeSet) -> Value {
    json!({
        "id": cs.id,
        "tenant_id": cs.tenant_id,
        "title": cs.title,
        "author": cs.author,
        "state": cs.state,
        "changes": cs.changes.len(),
        "update_time": cs.update_time,
    })
}

/// The set with, per change, what is live and what it would be; its validation against what
/// is live now; and the changes whose resource changed since the set took it.
fn show(backend: &Backend, caller: &Caller, id: &str) -> Result<Reply, Reply> {
    let view = backend.replica.view();
    let (_, cs) = find(&view, caller, id)?;
    let diff: Vec<Value> = cs
        .changes
        .iter()
        .map(|change| {
            let live = Key::parse(&change.key).and_then(|k| view.entries.get(&k).cloned());
            json!({
                "key": change.key,
                "live": live.as_ref().map(|e| shown(e.key.kind, &e.value)),
                "proposed": change.value.as_ref().zip(Key::parse(&change.key)).map(|(v, k)| shown(k.kind, v)),
            })
        })
        .collect();
    let mut value = serde_json::to_value(&cs).expect("a change set serializes");
    value["diff"] = Value::Array(diff);
    value["validation"] = json!(validate(backend, &view, &cs));
    value["conflicts"] = json!(conflicts(&view, &cs));
    Ok(Reply::json(StatusCode::OK, value))
}

fn shown(kind: Kind, value: &Value) -> Value {
    crate::response::presentable(kind, value.clone())
}
