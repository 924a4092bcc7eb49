//! Tenants and users: `/pylon/admin/tenants[/<id>]`, `/pylon/admin/users[/<name>[/token]]` and
//! `/pylon/admin/login`.
//!
//! Tenants are the platform admin's to make. Users are made by a platform admin, or by a tenant
//! admin within its tenant; a new user's token is in the answer that made it, and only there
//! (`POST .../token` makes a new one, and the old one stops working).

use std::sync::Arc;

use http::{Method, StatusCode};
use pylon_model::{Key, Kind};
use pylon_store::{Entry, Precondition, Txn, View};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::Record;
use crate::auth::forbidden;
use crate::clock::now;
use crate::identity::{self, Caller, Role, User};
use crate::resource_write;
use crate::response::{listed, parse_body, Reply};
use crate::tenancy::{self, owner};
use crate::writer::{Backend, Plan};

/// `POST /pylon/admin/login`: says who the token is, and records that it was used to log in.
pub(crate) async fn login(backend: &Backend, record: &Record) -> Result<Reply, Reply> {
    let record = Record {
        event: true,
        action: "login".to_owned(),
        ..record.clone()
    };
    backend
        .write(&record, |_| {
            Ok(Plan {
                txn: Txn::default(),
                outcome: (),
            })
        })
        .await?;
    Ok(Reply::json(StatusCode::OK, caller_json(&record.caller)))
}

fn caller_json(caller: &Caller) -> Value {
    json!({
        "user": caller.name,
        "tenant_id": caller.tenant,
        "role": caller.role.as_str(),
    })
}

/// A tenant as written: what a `PUT` may say.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    desc: Option<String>,
    /// Changes are reviewed before they are published; direct writes are refused.
    #[serde(default)]
    review: bool,
}

pub(crate) async fn tenants(
    backend: &Backend,
    record: &Record,
    method: &Method,
    rest: &[&str],
    body: Option<Value>,
) -> Result<Reply, Reply> {
    let caller = &record.caller;
    let view = backend.replica.view();
    match (rest, method) {
        ([], &Method::GET) => {
            let list: Vec<Value> = view
                .of_kind(Kind::Tenants)
                .filter(|e| caller.reaches(&e.key.id))
                .map(|e| e.value.clone())
                .collect();
            Ok(listed(list))
        }
        ([id], &Method::GET) => match view.entries.get(&Key::new(Kind::Tenants, *id)) {
            Some(entry) if caller.reaches(id) => {
                Ok(Reply::json(StatusCode::OK, entry.value.clone()))
            }
            _ => Err(Reply::not_found()),
        },
        ([id], &Method::PUT) => {
            require_platform_admin(caller)?;
            put_tenant(backend, record, id, body).await
        }
        ([id], &Method::DELETE) => {
            require_platform_admin(caller)?;
            delete_tenant(backend, record, id).await
        }
        _ => Err(Reply::error(StatusCode::NOT_FOUND, "not found")),
    }
}

async fn put_tenant(
    backend: &Backend,
    record: &Record,
    id: &str,
    body: Option<Value>,
) -> Result<Reply, Reply> {
    resource_write::check_id("tenant id", id)?;
    let body: TenantBody = parse_body(body)?;
    let key = Key::new(Kind::Tenants, id);
    let committed = backend
        .write(record, |view| {
            let existing = view.entries.get(&key);
            let created =
                existing.map_or_else(now, |e| e.value["create_time"].as_i64().unwrap_or(0));
            let mut value = json!({
                "id": id,
                "review": body.review,
                "create_time": created,
                "update_time": now(),
            });
            for (field, text) in [("name", &body.name), ("desc", &body.desc)] {
                if let Some(text) = text {
                    value[field] = Value::String(text.clone());
                }
            }
            Ok(Plan {
                txn: Txn::put(key.clone(), value.clone()).when(key.clone(), condition(existing)),
                outcome: (value, existing.is_some()),
            })
        })
        .await?;
    let (value, existed) = committed.outcome;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(Reply::json(status, value))
}

async fn delete_tenant(backend: &Backend, record: &Record, id: &str) -> Result<Reply, Reply> {
    let key = Key::new(Kind::Tenants, id);
    backend
        .write(record, |view| {
            let Some(existing) = view.entries.get(&key) else {
                return Err(Reply::not_found());
            };
            if let Some(held) = held_by(view, id) {
                return Err(Reply::bad_request(format!(
                    "tenant `{id}` still has {held}: delete or move it first"
                )));
            }
            Ok(Plan {
                txn: Txn::delete(key.clone()).when(key.clone(), condition(Some(existing))),
                outcome: (),
            })
        })
        .await?;
    Ok(Reply::json(
        StatusCode::OK,
        json!({ "deleted": "1", "key": key.to_string() }),
    ))
}

/// Something that still belongs to `tenant`: a resource, a user or a change set.
fn held_by(view: &View, tenant: &str) -> Option<Key> {
    view.entries
        .iter()
        .find(|(key, entry)| match key.kind {
            Kind::Users | Kind::ChangeSets => entry.value["tenant_id"] == json!(tenant),
            kind => kind.is_resource() && owner(&entry.value) == tenant,
        })
        .map(|(key, _)| key.clone())
}

/// A user as written: what a `PUT` may say.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    role: Role,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    desc: Option<String>,
}

pub(crate) async fn users(
    backend: &Backend,
    record: &Record,
    method: &Method,
    rest: &[&str],
    body: Option<Value>,
) -> Result<Reply, Reply> {
    let caller = &record.caller;
    let view = backend.replica.view();
    match (rest, method) {
        ([], &Method::GET) => {
            if !(platform_reader(caller) || caller.role == Role::TenantAdmin) {
                return Err(forbidden(format!(
                    "role `{}` does not see users",
                    caller.role.as_str()
                )));
            }
            let list: Vec<Value> = users_of(&view)
                .filter(|u| sees(caller, u))
                .map(|u| u.shown())
                .collect();
            Ok(listed(list))
        }
        ([name], &Method::GET) => match User::from_view(&view, name) {
            Some(user) if sees(caller, &user) => Ok(Reply::json(StatusCode::OK, user.shown())),
            _ => Err(Reply::not_found()),
        },
        ([name], &Method::PUT) => {
            require_user_admin(caller)?;
            put_user(backend, record, name, parse_body(body)?).await
        }
        ([name], &Method::DELETE) => {
            require_user_admin(caller)?;
            delete_user(backend, record, name).await
        }
        ([name, "token"], &Method::POST) => new_token(backend, record, name).await,
        _ => Err(Reply::error(StatusCode::NOT_FOUND, "not found")),
    }
}

fn users_of(view: &View) -> impl Iterator<Item = User> + '_ {
    view.of_kind(Kind::Users)
        .filter_map(|e| serde_json::from_value(e.value.clone()).ok())
}

/// Whether `caller` sees `user`: itself, the users it manages, or all, for a platform viewer.
fn sees(caller: &Caller, user: &User) -> bool {
    user.username == caller.name
        || platform_reader(caller)
        || manages(caller, user.tenant_id.as_deref())
}

/// The platform's admins and viewers read everything.
fn platform_reader(caller: &Caller) -> bool {
    caller.tenant.is_none() && matches!(caller.role, Role::PlatformAdmin | Role::Viewer)
}

/// Whether `caller` manages the users of `tenant` (`None`: the platform's).
fn manages(caller: &Caller, tenant: Option<&str>) -> bool {
    match caller.role {
        Role::PlatformAdmin => true,
        Role::TenantAdmin => caller.tenant.as_deref() == tenant && tenant.is_some(),
        _ => false,
    }
}

fn require_user_admin(caller: &Caller) -> Result<(), Reply> {
    match caller.role {
        Role::PlatformAdmin | Role::TenantAdmin => Ok(()),
        role => Err(forbidden(format!(
            "role `{}` does not manage users",
            role.as_str()
        ))),
    }
}

fn require_platform_admin(caller: &Caller) -> Result<(), Reply> {
    if caller.is_platform_admin() {
        Ok(())
    } else {
        Err(forbidden("only a platform admin manages tenants"))
    }
}

/// Checks a user's role against its tenant: the platform's users are admins or viewers, a
/// tenant's anything but a platform admin.
fn check_user(view: &View, body: &UserBody) -> Result<(), Reply> {
    match (&body.tenant_id, body.role) {
        (None, Role::PlatformAdmin | Role::Viewer) => Ok(()),
        (None, role) => Err(Reply::bad_request(format!(
            "invalid configuration: role: a {} belongs to a tenant: set tenant_id",
            role.as_str()
        ))),
        (Some(_), Role::PlatformAdmin) => Err(Reply::bad_request(
            "invalid configuration: role: a platform_admin belongs to no tenant",
        )),
        (Some(tenant), _) => tenancy::require_tenant(view, tenant, "tenant_id"),
    }
}

async fn put_user(
    backend: &Backend,
    record: &Record,
    name: &str,
    body: UserBody,
) -> Result<Reply, Reply> {
    resource_write::check_username("username", name)?;
    let caller = &record.caller;
    if !manages(caller, body.tenant_id.as_deref()) {
        return Err(forbidden(match &caller.tenant {
            Some(own) => format!("a tenant admin makes users of its tenant, `{own}`, only"),
            None => "only a platform admin makes the platform's users".to_owned(),
        }));
    }
    let key = Key::new(Kind::Users, name);
    let committed = backend
        .write(record, |view| {
            check_user(view, &body)?;
            let existing = User::from_view(view, name);
            if let Some(existing) = &existing {
                if !manages(caller, existing.tenant_id.as_deref()) {
                    return Err(forbidden(format!("user `{name}` is another tenant's")));
                }
            }
            let (token, token_sha256) = match &existing {
                Some(user) => (None, user.token_sha256.clone()),
                None => {
                    let (token, hash) = identity::new_token(name);
                    (Some(token), hash)
                }
            };
            let user = User {
                username: name.to_owned(),
                tenant_id: body.tenant_id.clone(),
                role: body.role,
                token_sha256,
                desc: body.desc.clone(),
                create_time: existing.as_ref().map_or_else(now, |u| u.create_time),
                update_time: now(),
            };
            let stored = serde_json::to_value(&user).expect("a user serializes");
            let entry = view.entries.get(&key);
            Ok(Plan {
                txn: Txn::put(key.clone(), stored).when(key.clone(), condition(entry)),
                outcome: (user, token),
            })
        })
        .await?;
    let (user, token) = committed.outcome;
    let mut shown = user.shown();
    let status = match token {
        Some(token) => {
            shown["token"] = Value::String(token);
            StatusCode::CREATED
        }
        None => StatusCode::OK,
    };
    Ok(Reply::json(status, shown))
}

async fn delete_user(backend: &Backend, record: &Record, name: &str) -> Result<Reply, Reply> {
    let key = Key::new(Kind::Users, name);
    backend
        .write(record, |view| {
            let (Some(entry), Some(user)) = (view.entries.get(&key), User::from_view(view, name))
            else {
                return Err(Reply::not_found());
            };
            if !manages(&record.caller, user.tenant_id.as_deref()) {
                return Err(Reply::not_found());
            }
            Ok(Plan {
                txn: Txn::delete(key.clone()).when(key.clone(), condition(Some(entry))),
                outcome: (),
            })
        })
        .await?;
    Ok(Reply::json(
        StatusCode::OK,
        json!({ "deleted": "1", "key": key.to_string() }),
    ))
}

/// A new token for user `name`, by that user or an admin of it; the old one stops working.
async fn new_token(backend: &Backend, record: &Record, name: &str) -> Result<Reply, Reply> {
    let key = Key::new(Kind::Users, name);
    let caller = &record.caller;
    let committed = backend
        .write(record, |view| {
            let (Some(entry), Some(mut user)) =
                (view.entries.get(&key), User::from_view(view, name))
            else {
                return Err(Reply::not_found());
            };
            if user.username != caller.name && !manages(caller, user.tenant_id.as_deref()) {
                return Err(Reply::not_found());
            }
            let (token, hash) = identity::new_token(name);
            user.token_sha256 = hash;
            user.update_time = now();
            let stored = serde_json::to_value(&user).expect("a user serializes");
            Ok(Plan {
                txn: Txn::put(key.clone(), stored).when(key.clone(), condition(Some(entry))),
                outcome: token,
            })
        })
        .await?;
    Ok(Reply::json(
        StatusCode::OK,
        json!({ "username": name, "token": committed.outcome }),
    ))
}

fn condition(existing: Option<&Arc<Entry>>) -> Precondition {
    existing.map_or(Precondition::Absent, |e| {
        Precondition::ModRevision(e.mod_revision)
    })
}
