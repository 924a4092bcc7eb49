//! Making and changing change sets: drafts, their changes (also from the APISIX paths'
//! `?change_set=`), documents imported whole.

use http::StatusCode;
use pylon_model::{Key, Kind, DEFAULT_TENANT};
use pylon_store::{Precondition, Txn, View};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::audit::Record;
use crate::auth::forbidden;
use crate::clock::now;
use crate::identity::{Caller, Role};
use crate::query::Query;
use crate::resource_write;
use crate::response::{parse_body, Reply};
use crate::tenancy::{self, owner, Via};
use crate::writer::{Backend, Committed, Plan};

use super::checks::{reply_message, require_editable, require_writer};
use super::model::{find, store_plan, ChangeSet, Editing, State};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewChangeSet {
    #[serde(default)]
    id: Option<String>,
    title: String,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    changes: Vec<ChangeBody>,
}

/// A change as written: the resource key and its new value (`null`: delete it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChangeBody {
    key: String,
    value: Option<Value>,
}

/// `POST /pylon/admin/change_sets`: a new draft, with the changes given, if any.
pub(super) async fn create(
    backend: &Backend,
    record: &Record,
    body: Option<Value>,
) -> Result<Reply, Reply> {
    let body: NewChangeSet = parse_body(body)?;
    let changes = body.changes.into_iter().map(|c| (c.key, c.value)).collect();
    let new = Draft {
        id: body.id,
        title: body.title,
        tenant: body.tenant_id,
    };
    let created = draft(backend, record, new, changes).await?;
    Ok(Reply::json(StatusCode::CREATED, created))
}

/// A change set to make: its id (none: one is made up), title and tenant (none: the caller's).
pub(super) struct Draft {
    pub id: Option<String>,
    pub title: String,
    pub tenant: Option<String>,
}

/// Makes a draft holding `changes`, each checked as it is added; returns it as stored.
pub(super) async fn draft(
    backend: &Backend,
    record: &Record,
    new: Draft,
    changes: Vec<(String, Option<Value>)>,
) -> Result<Value, Reply> {
    let caller = &record.caller;
    require_writer(caller)?;
    let tenant = tenancy::tenant_for(caller, new.tenant, DEFAULT_TENANT)?;
    if let Some(id) = &new.id {
        resource_write::check_id("change set id", id)?;
    }
    let committed = backend
        .write(record, |view| {
            tenancy::require_tenant(view, &tenant, "tenant_id")?;
            let id = new.id.clone().unwrap_or_else(|| next_id(view));
            let key = Key::new(Kind::ChangeSets, id.clone());
            if view.entries.contains_key(&key) {
                return Err(Reply::error(
                    StatusCode::CONFLICT,
                    format!("change set `{id}` exists"),
                ));
            }
            let mut cs = ChangeSet {
                id,
                tenant_id: tenant.clone(),
                title: new.title.clone(),
                author: caller.name.clone(),
                state: State::Draft,
                changes: Vec::new(),
                history: Vec::new(),
                canary: None,
                create_time: now(),
                update_time: now(),
            };
            // Added so that what a change refers to is in place before it (an upstream before
            // the route naming it), and gone after it.
            let mut ordered: Vec<(usize, &(String, Option<Value>))> =
                changes.iter().enumerate().collect();
            ordered.sort_by_key(|(_, (key, value))| application_rank(key, value.is_none()));
            for (i, (key, value)) in ordered {
                put_change(backend, view, caller, &mut cs, key, value.clone())
                    .map_err(|reply| located(reply, &format!("changes[{i}]")))?;
            }
            let stored = serde_json::to_value(&cs).expect("a change set serializes");
            Ok(Plan {
                txn: Txn::put(key.clone(), stored.clone()).when(key, Precondition::Absent),
                outcome: stored,
            })
        })
        .await?;
    Ok(committed.outcome)
}

/// Where a change of `key` goes among others: resources referred to are written before what
/// refers to them, and deleted after it.
pub(super) fn application_rank(key: &str, deletes: bool) -> i8 {
    let depth = match Key::parse(key).map(|k| k.kind) {
        Some(Kind::Services | Kind::Consumers) => 1,
        Some(Kind::Routes | Kind::StreamRoutes | Kind::Credentials) => 2,
        _ => 0,
    };
    if deletes {
        -depth
    } else {
        depth
    }
}

/// A refusal about one change of several, saying which.
pub(super) fn located(reply: Reply, location: &str) -> Reply {
    Reply {
        body: Some(json!({ "error_msg": format!("{location}: {}", reply_message(&reply)) })),
        ..reply
    }
}

/// A new id as POST makes them for resources: the store revision, zero-padded.
pub(super) fn next_id(view: &View) -> String {
    let mut number = view.revision + 1;
    loop {
        let id = format!("{number:020}");
        if !view
            .entries
            .contains_key(&Key::new(Kind::ChangeSets, id.clone()))
        {
            return id;
        }
        number += 1;
    }
}

/// Adds (or replaces) the change of resource `key_text` in `cs`, checked as the write it would
/// be against `view` with the set's other changes in place. A consumer's deletion takes its
/// credentials with it.
pub(super) fn put_change(
    backend: &Backend,
    view: &View,
    caller: &Caller,
    cs: &mut ChangeSet,
    key_text: &str,
    value: Option<Value>,
) -> Result<(), Reply> {
    let key = Key::parse(key_text).ok_or_else(|| {
        Reply::bad_request(format!(
            "invalid configuration: key: `{key_text}` is not `<kind>/<id>` of a resource"
        ))
    })?;
    let scratch = cs.applied_to(view, Some(&key));
    let author = Caller {
        tenant: Some(cs.tenant_id.clone()),
        ..caller.clone()
    };
    let writes: Vec<(Key, Option<Value>)> = match value {
        Some(body) => {
            let body = resource_write::put_body(&key, Some(body))?;
            let (_, stored) = resource_write::put_value(
                backend,
                &scratch,
                &author,
                &key,
                Value::String(key.id.clone()),
                &body,
                Via::ChangeSet,
            )?;
            vec![(key, Some(stored))]
        }
        None => {
            let existing = scratch.entries.get(&key).ok_or_else(Reply::not_found)?;
            resource_write::delete_keys(&scratch, &author, existing, false, Via::ChangeSet)?
                .into_iter()
                .map(|k| (k, None))
                .collect()
        }
    };
    for (key, value) in writes {
        cs.set(view, &key, value);
    }
    Ok(())
}

/// Plans a write as `plan` makes one to the live configuration, but against the live
/// configuration with change set `id`'s changes in place, and commits its writes as changes
/// of the set (`?change_set=<id>` on the APISIX paths): existing tools build a change set.
pub(crate) async fn write_into<T>(
    backend: &Backend,
    record: &Record,
    id: &str,
    mut plan: impl FnMut(&View) -> Result<Plan<T>, Reply>,
) -> Result<Committed<T>, Reply> {
    let caller = &record.caller;
    require_writer(caller)?;
    let record = record.for_change_set(id, None);
    backend
        .write(&record, |view| {
            let (entry, mut cs) = find(view, caller, id)?;
            require_editable(&cs)?;
            let scratch = cs.applied_to(view, None);
            let Plan { txn, outcome } = plan(&scratch)?;
            for (key, value) in txn.writes {
                let current = value
                    .as_ref()
                    .or(scratch.entries.get(&key).map(|e| &e.value));
                let tenant = current.map_or(cs.tenant_id.as_str(), owner);
                if tenant != cs.tenant_id {
                    return Err(Reply::bad_request(format!(
                        "{key} is tenant `{tenant}`'s, and change set `{id}` is tenant `{}`'s",
                        cs.tenant_id
                    )));
                }
                cs.set(view, &key, value);
            }
            cs.edited(caller);
            Ok(Plan {
                txn: store_plan(&entry, &cs).txn,
                outcome,
            })
        })
        .await
}

/// `POST /pylon/admin/change_sets/<id>/changes`: adds or replaces one change. A set under
/// review goes back to draft: what was reviewed is no longer what it holds.
pub(super) async fn add_change(
    backend: &Backend,
    record: &Record,
    id: &str,
    body: Option<Value>,
) -> Result<Reply, Reply> {
    let body: ChangeBody = parse_body(body)?;
    edit(backend, record, id, |view, cs| {
        put_change(
            backend,
            view,
            &record.caller,
            cs,
            &body.key,
            body.value.clone(),
        )
    })
    .await
}

/// `DELETE /pylon/admin/change_sets/<id>/changes/<kind>/<id>`: takes a change out of the set.
pub(super) async fn drop_change(
    backend: &Backend,
    record: &Record,
    id: &str,
    key: &str,
) -> Result<Reply, Reply> {
    edit(backend, record, id, |_, cs| {
        let before = cs.changes.len();
        cs.changes.retain(|c| c.key != key);
        if cs.changes.len() == before {
            return Err(Reply::error(
                StatusCode::NOT_FOUND,
                format!("change set `{}` has no change of `{key}`", cs.id),
            ));
        }
        Ok(())
    })
    .await
}

/// Changes the set's content with `change`: by a writer of its tenant, while it is editable.
pub(super) async fn edit(
    backend: &Backend,
    record: &Record,
    id: &str,
    change: impl Fn(&View, &mut ChangeSet) -> Result<(), Reply>,
) -> Result<Reply, Reply> {
    let caller = &record.caller;
    require_writer(caller)?;
    let committed = backend
        .write(record, |view| {
            let (entry, mut cs) = find(view, caller, id)?;
            require_editable(&cs)?;
            change(view, &mut cs)?;
            cs.edited(caller);
            Ok(store_plan(&entry, &cs))
        })
        .await?;
    Ok(Reply::json(StatusCode::OK, committed.outcome))
}

/// `DELETE /pylon/admin/change_sets/<id>`: drops a set that was never published or served.
pub(super) async fn remove(backend: &Backend, record: &Record, id: &str) -> Result<Reply, Reply> {
    let caller = &record.caller;
    backend
        .write(record, |view| {
            let (entry, cs) = find(view, caller, id)?;
            let own = cs.author == caller.name;
            if !own && !matches!(caller.role, Role::PlatformAdmin | Role::TenantAdmin) {
                return Err(forbidden(
                    "a change set is dropped by its author or an admin",
                ));
            }
            if matches!(cs.state, State::Canary | State::Published) {
                return Err(Reply::error(
                    StatusCode::CONFLICT,
                    format!("change set `{id}` is {}: it is kept", cs.state.as_str()),
                ));
            }
            Ok(Plan {
                txn: Txn::delete(cs.key())
                    .when(cs.key(), Precondition::ModRevision(entry.mod_revision)),
                outcome: (),
            })
        })
        .await?;
    Ok(Reply::json(
        StatusCode::OK,
        json!({ "deleted": "1", "key": format!("change_sets/{id}") }),
    ))
}

/// `POST /pylon/admin/change_sets/import?title=...`: a YAML or JSON document of resources
/// (the standalone format: `routes: [...]`, `upstreams: [...]`, each with its id) becomes one
/// draft change set.
pub(super) async fn import(
    backend: &Backend,
    record: &Record,
    query: &Query,
    body: &[u8],
) -> Result<Reply, Reply> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Reply::bad_request("invalid request body: not UTF-8"))?;
    let document: Value = serde_yaml::from_str(text)
        .map_err(|e| Reply::bad_request(format!("invalid request body: not YAML or JSON: {e}")))?;
    let Value::Object(kinds) = document else {
        return Err(Reply::bad_request(
            "invalid configuration: must be a map of resource kinds",
        ));
    };
    let changes = document_changes(kinds)?;
    let new = Draft {
        id: None,
        title: query.get("title").unwrap_or("import").to_owned(),
        tenant: query.get("tenant_id").map(str::to_owned),
    };
    let created = draft(backend, record, new, changes).await?;
    Ok(Reply::json(StatusCode::CREATED, created))
}

/// The document's resources as changes: `<kind>/<id>` and the resource.
pub(super) fn document_changes(
    kinds: Map<String, Value>,
) -> Result<Vec<(String, Option<Value>)>, Reply> {
    let mut changes = Vec::new();
    for (kind_name, items) in kinds {
        if kind_name.starts_with('#') {
            continue;
        }
        let kind = Kind::parse(&kind_name).ok_or_else(|| {
            Reply::bad_request(format!(
                "invalid configuration: {kind_name}: unknown resource kind"
            ))
        })?;
        let Value::Array(items) = items else {
            return Err(Reply::bad_request(format!(
                "invalid configuration: {kind_name}: must be a list"
            )));
        };
        for (i, item) in items.into_iter().enumerate() {
            let id = item
                .get(kind.id_field())
                .and_then(crate::references::id_text)
                .ok_or_else(|| {
                    Reply::bad_request(format!(
                        "invalid configuration: {kind_name}[{i}].{}: required to import",
                        kind.id_field()
                    ))
                })?;
            changes.push((format!("{kind}/{id}"), Some(item)));
        }
    }
    Ok(changes)
}
