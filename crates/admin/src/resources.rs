//! The resource endpoints (`/apisix/admin/<kind>[/<id>]`) with APISIX v3's semantics.
//!
//! - `GET` one (`{key, value, createdIndex, modifiedIndex}`) or a list (`{list, total}`).
//! - `PUT` creates (201) or replaces (200); the body's id, if any, must match the path; the
//!   creation time is kept, the update time set.
//! - `POST` creates with a generated id: APISIX's, a 20-digit zero-padded store revision.
//! - `PATCH` merges the body into the stored value, or replaces the field a sub-path names.
//! - `DELETE` is refused while another resource refers to this one, unless `force=true`.
//!
//! Every write is checked before it is stored (see [`crate::validation`]); an SSL's private keys
//! are stored sealed and never shown.

use std::sync::Arc;

use http::{Method, StatusCode};
use pylon_model::{is_id, is_username, Key, Kind};
use pylon_store::{Entry, Precondition, Revision, Txn, View};
use serde_json::{json, Map, Value};

use crate::address::Address;
use crate::audit::Record;
use crate::change_sets;
use crate::identity::Caller;
use crate::listing::Listing;
use crate::merge;
use crate::query::Query;
use crate::references::id_text;
use crate::resource_write::{
    delete_keys, forbid_server_fields, id_rule, name_refusal, object_body, prepare, put_value,
    stamp, username_rule, wrong_id,
};
use crate::response::{key_path, node, presentable, singular, Reply};
use crate::secrets;
use crate::tenancy::{self, Via};
use crate::writer::{Backend, Committed, Plan};

/// The methods a kind does not support (APISIX answers 405 for them).
fn unsupported(kind: Kind, method: &Method) -> bool {
    let refused: &[Method] = match kind {
        Kind::Consumers | Kind::Credentials | Kind::PluginMetadata => {
            &[Method::POST, Method::PATCH]
        }
        Kind::PluginConfigs | Kind::ConsumerGroups | Kind::GlobalRules | Kind::Secrets => {
            &[Method::POST]
        }
        Kind::Protos => &[Method::PATCH],
        Kind::Routes | Kind::Services | Kind::Upstreams | Kind::Ssls | Kind::StreamRoutes => &[],
        // Not resources: no APISIX path names them.
        pylon_model::control_kinds!() => &[
            Method::GET,
            Method::PUT,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
        ],
    };
    refused.contains(method)
}

/// Answers `method` on `address` for the caller `record` names (and records the write).
pub(crate) async fn handle(
    backend: &Backend,
    record: &Record,
    method: &Method,
    address: Address,
    query: &Query,
    body: Option<Value>,
) -> Reply {
    if unsupported(address.kind, method) {
        return Reply::method_not_supported(method, address.kind);
    }
    let caller = &record.caller;
    if let Err(reply) = tenancy::check_kind(caller, address.kind) {
        return reply;
    }
    if query.get("ttl").is_some() {
        return Reply::bad_request(
            "ttl is not supported: Pylon's stores keep no expiring resources",
        );
    }
    let to = match query.get("change_set") {
        Some(id) => Destination::ChangeSet(id),
        None => Destination::Live,
    };
    let has_sub_path = !address.sub_path.is_empty();
    if has_sub_path && *method != Method::PATCH {
        return Reply::error(StatusCode::NOT_FOUND, "not found");
    }
    let result = match *method {
        Method::GET | Method::HEAD => Ok(match address.key() {
            Some(key) => get(&backend.replica.view(), caller, &key),
            None => return list(&backend.replica.view(), caller, &address, query),
        }),
        Method::PUT => put(backend, record, to, &address, body).await,
        Method::POST if address.id.is_none() => post(backend, record, to, &address, body).await,
        // POST makes the id; one in the path is refused, as APISIX does.
        Method::POST => Err(Reply::bad_request(format!(
            "wrong {} id, do not need it",
            singular(address.kind)
        ))),
        Method::PATCH => patch(backend, record, to, &address, body).await,
        Method::DELETE => delete(backend, record, to, &address, query.flag("force")).await,
        _ => Err(Reply::error(StatusCode::NOT_FOUND, "not found")),
    };
    result.unwrap_or_else(|reply| reply)
}

/// One resource; another tenant's is not found.
fn get(view: &View, caller: &Caller, key: &Key) -> Reply {
    match view.entries.get(key) {
        Some(entry) if tenancy::visible(caller, &entry.value) => {
            Reply::json(StatusCode::OK, node(entry))
        }
        _ => Reply::not_found(),
    }
}

/// The collection, as far as the caller's tenant reaches.
fn list(view: &View, caller: &Caller, address: &Address, query: &Query) -> Reply {
    let listing = match Listing::from_query(address.kind, query) {
        Ok(listing) => listing,
        Err(reply) => return reply,
    };
    let entries: Vec<Arc<Entry>> = view
        .of_kind(address.kind)
        .filter(|e| address.contains(&e.key) && tenancy::visible(caller, &e.value))
        .cloned()
        .collect();
    let (page, total) = listing.select(entries);
    let list: Vec<Value> = page.iter().map(|e| node(e)).collect();
    Reply::json(StatusCode::OK, json!({ "list": list, "total": total }))
}

/// Where a write goes: live, or (`?change_set=<id>`) into a change set, to be reviewed and
/// published with it.
#[derive(Debug, Clone, Copy)]
enum Destination<'a> {
    Live,
    ChangeSet(&'a str),
}

impl Destination<'_> {
    fn via(self) -> Via {
        match self {
            Destination::Live => Via::Direct,
            Destination::ChangeSet(_) => Via::ChangeSet,
        }
    }

    /// Commits what `plan` writes: to the live configuration, or as changes of the set.
    async fn write<T>(
        self,
        backend: &Backend,
        record: &Record,
        plan: impl FnMut(&View) -> Result<Plan<T>, Reply>,
    ) -> Result<Committed<T>, Reply> {
        match self {
            Destination::Live => backend.write(record, plan).await,
            Destination::ChangeSet(id) => change_sets::write_into(backend, record, id, plan).await,
        }
    }

    /// The answer to a write of `key`: APISIX's, or, for a change set, 202 and the set's id.
    fn reply(self, committed: Committed<Written>) -> Reply {
        match self {
            Destination::Live => Written::reply(committed),
            Destination::ChangeSet(id) => {
                let written = committed.outcome;
                Reply::json(
                    StatusCode::ACCEPTED,
                    json!({
                        "key": key_path(&written.key),
                        "value": presentable(written.key.kind, written.value),
                        "change_set": id,
                    }),
                )
            }
        }
    }
}

/// What a write answers once committed.
struct Written {
    status: StatusCode,
    key: Key,
    value: Value,
    /// The entry's revisions (created, modified) if it existed before the write.
    previous: Option<(Revision, Revision)>,
}

impl Written {
    fn reply(committed: Committed<Written>) -> Reply {
        let Committed {
            revision,
            changed,
            outcome: written,
        } = committed;
        let (created, modified) = match written.previous {
            // Rewriting what was stored changes nothing, revisions included.
            Some(previous) if !changed => previous,
            Some((created, _)) => (created, revision),
            None => (revision, revision),
        };
        Reply::json(
            written.status,
            json!({
                "key": key_path(&written.key),
                "value": presentable(written.key.kind, written.value),
                "createdIndex": created,
                "modifiedIndex": modified,
            }),
        )
    }
}

async fn put(
    backend: &Backend,
    record: &Record,
    to: Destination<'_>,
    address: &Address,
    body: Option<Value>,
) -> Result<Reply, Reply> {
    let body = object_body(body, "missing configurations")?;
    forbid_server_fields(&body)?;
    let id = put_id(address, &body)?;
    let key = address.key_for(&id);
    // APISIX keeps the id as it was given: the body's, a number or a string, when the path
    // has none; else the path's, a string.
    let stored_id = match body.get(address.kind.id_field()) {
        Some(number @ Value::Number(_)) if address.id.is_none() => number.clone(),
        _ => Value::String(key.id.clone()),
    };
    let committed = to
        .write(backend, record, |view| {
            let existing = view.entries.get(&key);
            let (value, stored) = put_value(
                backend,
                view,
                &record.caller,
                &key,
                stored_id.clone(),
                &body,
                to.via(),
            )?;
            let condition = existing.map_or(Precondition::Absent, |e| {
                Precondition::ModRevision(e.mod_revision)
            });
            Ok(Plan {
                txn: Txn::put(key.clone(), stored).when(key.clone(), condition),
                outcome: Written {
                    status: if existing.is_some() {
                        StatusCode::OK
                    } else {
                        StatusCode::CREATED
                    },
                    key: key.clone(),
                    value,
                    previous: existing.map(|e| (e.create_revision, e.mod_revision)),
                },
            })
        })
        .await?;
    Ok(to.reply(committed))
}

async fn post(
    backend: &Backend,
    record: &Record,
    to: Destination<'_>,
    address: &Address,
    body: Option<Value>,
) -> Result<Reply, Reply> {
    let body = object_body(body, "missing configurations")?;
    forbid_server_fields(&body)?;
    if body.contains_key("id") {
        return Err(Reply::bad_request(format!(
            "wrong {} id, do not need it",
            singular(address.kind)
        )));
    }
    let committed = to
        .write(backend, record, |view| {
            let key = generated_key(view, address);
            let id = Value::String(key.id.clone());
            let (value, stored) =
                put_value(backend, view, &record.caller, &key, id, &body, to.via())?;
            Ok(Plan {
                txn: Txn::put(key.clone(), stored).when(key.clone(), Precondition::Absent),
                outcome: Written {
                    status: StatusCode::CREATED,
                    key,
                    value,
                    previous: None,
                },
            })
        })
        .await?;
    Ok(to.reply(committed))
}

async fn patch(
    backend: &Backend,
    record: &Record,
    to: Destination<'_>,
    address: &Address,
    body: Option<Value>,
) -> Result<Reply, Reply> {
    let Some(key) = address.key() else {
        return Err(missing_id(address.kind));
    };
    check_id_syntax(address, address.id.as_deref().unwrap_or_default())?;
    let Some(body) = body else {
        return Err(Reply::bad_request("missing new configuration"));
    };
    if address.sub_path.is_empty() && !body.is_object() {
        return Err(Reply::bad_request("invalid configuration"));
    }
    let committed = to
        .write(backend, record, |view| {
            let existing = match view.entries.get(&key) {
                Some(existing) if tenancy::visible(&record.caller, &existing.value) => existing,
                _ => return Err(Reply::not_found()),
            };
            let mut current = existing.value.clone();
            secrets::open(&backend.keyring, key.kind, &mut current).map_err(|e| {
                Reply::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the stored {key} cannot be opened: {e}"),
                )
            })?;
            let Value::Object(mut value) = current else {
                return Err(Reply::error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the stored {key} is not an object"),
                ));
            };
            // As APISIX: the times a whole-body PATCH states are kept; one by sub-path sets the
            // update time anyway (even when the sub-path is `update_time`).
            let given_update_time = match (&body, address.sub_path.is_empty()) {
                (Value::Object(patch), true) => {
                    merge::merge(&mut value, patch.clone());
                    patch.get("update_time").filter(|t| !t.is_null()).cloned()
                }
                _ => {
                    merge::replace_at(&mut value, &address.sub_path, body.clone())
                        .map_err(Reply::bad_request)?;
                    None
                }
            };
            let stated_id = value.get(key.kind.id_field()).and_then(id_text);
            if stated_id.is_some_and(|id| id != key.id) {
                return Err(wrong_id(key.kind));
            }
            let created = value.get("create_time").cloned();
            stamp(
                &mut value,
                &key,
                Value::String(key.id.clone()),
                created,
                given_update_time,
            );
            tenancy::check_write(
                view,
                &record.caller,
                &key,
                Some(existing),
                &mut value,
                to.via(),
            )?;
            let stored = prepare(backend, view, &key, value.clone())?;
            Ok(Plan {
                txn: Txn::put(key.clone(), stored).when(
                    key.clone(),
                    Precondition::ModRevision(existing.mod_revision),
                ),
                outcome: Written {
                    status: StatusCode::OK,
                    key: key.clone(),
                    value: Value::Object(value),
                    previous: Some((existing.create_revision, existing.mod_revision)),
                },
            })
        })
        .await?;
    Ok(to.reply(committed))
}

async fn delete(
    backend: &Backend,
    record: &Record,
    to: Destination<'_>,
    address: &Address,
    force: bool,
) -> Result<Reply, Reply> {
    let Some(key) = address.key() else {
        return Err(missing_id(address.kind));
    };
    to.write(backend, record, |view| {
        let existing = match view.entries.get(&key) {
            Some(existing) if tenancy::visible(&record.caller, &existing.value) => existing,
            _ => return Err(Reply::not_found()),
        };
        let mut txn = Txn::default().when(
            key.clone(),
            Precondition::ModRevision(existing.mod_revision),
        );
        let deleted = delete_keys(view, &record.caller, existing, force, to.via())?;
        txn.writes
            .extend(deleted.into_iter().map(|key| (key, None)));
        Ok(Plan { txn, outcome: () })
    })
    .await?;
    // APISIX answers the count as a string.
    let mut answer = json!({ "deleted": "1", "key": key_path(&key) });
    let status = match to {
        Destination::Live => StatusCode::OK,
        Destination::ChangeSet(id) => {
            answer["change_set"] = json!(id);
            StatusCode::ACCEPTED
        }
    };
    Ok(Reply::json(status, answer))
}

/// The id a PUT writes: the path's, else the body's; both given, they must agree.
fn put_id(address: &Address, body: &Map<String, Value>) -> Result<String, Reply> {
    let field = address.kind.id_field();
    let stated = body.get(field);
    let stated_id = match stated {
        None => None,
        Some(v) => Some(id_text(v).ok_or_else(|| wrong_id(address.kind))?),
    };
    // A secret's or a credential's body carries the whole compound id, the path only its end.
    let stated_own = stated_id.map(|id| match address.key() {
        Some(key) if key.kind.has_compound_id() && id == key.id => address.id.clone().unwrap_or(id),
        _ => id,
    });
    let id = match (&address.id, stated_own) {
        (Some(path), Some(body)) if *path != body => return Err(wrong_id(address.kind)),
        (Some(path), _) => path.clone(),
        (None, Some(body)) if !address.kind.has_compound_id() => body,
        _ => return Err(missing_id(address.kind)),
    };
    check_id_syntax(address, &id)?;
    Ok(id)
}

fn check_id_syntax(address: &Address, id: &str) -> Result<(), Reply> {
    let (ok, what, rule) = match address.kind {
        Kind::Consumers => (is_username(id), "username", username_rule()),
        _ => (is_id(id), "id", id_rule()),
    };
    let parent_ok = address.parent.as_deref().is_none_or(is_id);
    if ok && parent_ok {
        Ok(())
    } else {
        let subject = format!("{} {what}", singular(address.kind));
        Err(name_refusal(&subject, id, &rule))
    }
}

fn missing_id(kind: Kind) -> Reply {
    Reply::bad_request(format!("missing {} id", singular(kind)))
}

/// A new id as APISIX makes them: a store revision, zero-padded to 20 digits. The next
/// revision is the one this write will most likely get; ids already taken are skipped.
fn generated_key(view: &View, address: &Address) -> Key {
    let mut number = view.revision + 1;
    loop {
        let key = address.key_for(&format!("{number:020}"));
        if !view.entries.contains_key(&key) {
            return key;
        }
        number += 1;
    }
}
