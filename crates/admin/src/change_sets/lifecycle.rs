//! A change set's way through review, canary and publish; a rollback as a change set of one.

use http::StatusCode;
use pylon_model::{Key, DEFAULT_TENANT};
use pylon_store::{Precondition, Txn};
use serde_json::Value;

use crate::audit::Record;
use crate::auth::forbidden;
use crate::response::Reply;
use crate::tenancy::{owner, Tenant};
use crate::writer::{Backend, Plan};

use super::checks::{
    check_other_canaries, check_publishable, require_current, require_valid, require_writer,
};
use super::editing::{draft, Draft};
use super::model::{find, live_revision, store_plan, CanaryTarget, Editing, State};

pub(super) enum Action {
    Submit,
    Approve,
    Reject,
    Rebase,
    Canary(CanaryTarget),
    Abort,
}

/// Moves a set through review, rebase and canary.
pub(super) async fn transition(
    backend: &Backend,
    record: &Record,
    id: &str,
    action: Action,
    comment: Option<String>,
) -> Result<Reply, Reply> {
    let caller = &record.caller;
    let record = record.for_change_set(id, comment.clone());
    let committed = backend
        .write(&record, |view| {
            let (entry, mut cs) = find(view, caller, id)?;
            let refuse = |why: &str| {
                Err(Reply::error(
                    StatusCode::CONFLICT,
                    format!("change set `{id}` is {}: {why}", cs.state.as_str()),
                ))
            };
            let review = Tenant::requires_review(view, &cs.tenant_id);
            match &action {
                Action::Submit => {
                    require_writer(caller)?;
                    if cs.state != State::Draft {
                        return refuse("only a draft is submitted");
                    }
                    require_valid(backend, view, &cs)?;
                    cs.state = State::Submitted;
                    cs.note(caller, "submitted", comment.clone());
                }
                Action::Approve | Action::Reject => {
                    if !caller.role.reviews() {
                        return Err(forbidden(format!(
                            "role `{}` reviews no change sets",
                            caller.role.as_str()
                        )));
                    }
                    if cs.author == caller.name {
                        return Err(forbidden(
                            "a change set is reviewed by someone other than its author",
                        ));
                    }
                    if cs.state != State::Submitted {
                        return refuse("only a submitted change set is reviewed");
                    }
                    let approve = matches!(action, Action::Approve);
                    if approve {
                        require_valid(backend, view, &cs)?;
                    }
                    cs.state = if approve {
                        State::Approved
                    } else {
                        State::Rejected
                    };
                    cs.note(
                        caller,
                        if approve { "approved" } else { "rejected" },
                        comment.clone(),
                    );
                }
                Action::Rebase => {
                    require_writer(caller)?;
                    if !cs.state.editable() {
                        return refuse("it is rebased no more");
                    }
                    for change in &mut cs.changes {
                        if let Some(key) = Key::parse(&change.key) {
                            change.base = live_revision(view, &key);
                        }
                    }
                    // What was approved was checked against another base.
                    if cs.state == State::Approved {
                        cs.state = State::Submitted;
                    }
                    cs.note(caller, "rebased", comment.clone());
                }
                Action::Canary(target) => {
                    require_writer(caller)?;
                    check_publishable(&cs, review)?;
                    if target.nodes.is_empty() && target.labels.is_empty() {
                        return Err(Reply::bad_request(
                            "invalid configuration: a canary names nodes or labels",
                        ));
                    }
                    require_current(view, &cs)?;
                    require_valid(backend, view, &cs)?;
                    check_other_canaries(view, &cs)?;
                    cs.state = State::Canary;
                    cs.canary = Some(target.clone());
                    cs.note(caller, "canary", comment.clone());
                }
                Action::Abort => {
                    require_writer(caller)?;
                    if cs.state != State::Canary {
                        return refuse("only a canary is aborted");
                    }
                    cs.state = State::Aborted;
                    cs.note(caller, "aborted", comment.clone());
                }
            }
            Ok(store_plan(&entry, &cs))
        })
        .await?;
    Ok(Reply::json(StatusCode::OK, committed.outcome))
}

/// `POST .../publish` (and `.../promote` for a canary): writes every change, on condition that
/// none of its resources changed since the set took them, with the set's new state, as one
/// transaction.
pub(super) async fn publish(
    backend: &Backend,
    record: &Record,
    id: &str,
    comment: Option<String>,
) -> Result<Reply, Reply> {
    let caller = &record.caller;
    require_writer(caller)?;
    let record = record.for_change_set(id, comment.clone());
    let committed = backend
        .write(&record, |view| {
            let (entry, mut cs) = find(view, caller, id)?;
            check_publishable(&cs, Tenant::requires_review(view, &cs.tenant_id))?;
            require_current(view, &cs)?;
            require_valid(backend, view, &cs)?;
            let mut txn = Txn::default();
            for change in &cs.changes {
                let key = Key::parse(&change.key).expect("validated keys parse");
                let condition = match change.base {
                    0 => Precondition::Absent,
                    base => Precondition::ModRevision(base),
                };
                txn.conditions.push((key.clone(), condition));
                txn.writes.push((key, change.value.clone()));
            }
            cs.state = State::Published;
            cs.note(caller, "published", comment.clone());
            let plan = store_plan(&entry, &cs);
            txn.conditions.extend(plan.txn.conditions);
            txn.writes.extend(plan.txn.writes);
            Ok(Plan {
                txn,
                outcome: plan.outcome,
            })
        })
        .await?;
    Ok(Reply::json(StatusCode::OK, committed.outcome))
}

/// A single change, as a rollback makes it: written at once, or, when its tenant requires
/// review, made a submitted change set of its own.
pub(crate) async fn write_or_propose(
    backend: &Backend,
    record: &Record,
    key: &Key,
    value: Option<Value>,
    title: String,
) -> Result<Reply, Reply> {
    let view = backend.replica.view();
    let tenant = view
        .entries
        .get(key)
        .map(|e| owner(&e.value).to_owned())
        .or_else(|| value.as_ref().map(|v| owner(v).to_owned()))
        .unwrap_or_else(|| DEFAULT_TENANT.to_owned());
    let review = Tenant::requires_review(&view, &tenant);
    let value = value.map(|mut v| {
        // A version holds the server's fields; a change is written as a PUT's body is.
        if let Some(fields) = v.as_object_mut() {
            fields.remove("create_time");
            fields.remove("update_time");
        }
        v
    });
    let new = Draft {
        id: None,
        title,
        tenant: Some(tenant),
    };
    let created = draft(backend, record, new, vec![(key.to_string(), value)]).await?;
    let id = created["id"]
        .as_str()
        .expect("a stored change set has its id");
    if review {
        transition(backend, record, id, Action::Submit, None).await
    } else {
        publish(backend, record, id, None).await
    }
}
