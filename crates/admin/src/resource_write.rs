//! What one resource's write stores, worked out against one view of the configuration: the
//! body checked as APISIX checks it, the server's fields stamped, the tenant settled, the whole
//! checked as the data plane will take it, and the secrets sealed. The APISIX paths write it
//! live; change sets keep it for review.

use http::StatusCode;
use pylon_model::{is_id, is_username, Key, Kind, MAX_ID_LEN, MAX_NAME_LEN};
use pylon_store::{Entry, View};
use serde_json::{json, Map, Value};

use crate::address::Address;
use crate::clock::now;
use crate::identity::Caller;
use crate::references::{self, id_text};
use crate::response::{singular, Reply};
use crate::secrets;
use crate::tenancy::{self, Via};
use crate::validation::{self, Refusal};
use crate::writer::Backend;

/// The rule of ids (APISIX's `id_schema`), as refusals state it.
pub(crate) fn id_rule() -> String {
    format!("1 to {MAX_ID_LEN} letters, digits, `-`, `_` or `.`")
}

/// The rule of consumers' and users' names, as refusals state it.
pub(crate) fn username_rule() -> String {
    format!("1 to {MAX_NAME_LEN} letters, digits, `-`, `_`")
}

/// Refuses `id`, the id of what `subject` names (`tenant id`), unless it follows [`id_rule`].
pub(crate) fn check_id(subject: &str, id: &str) -> Result<(), Reply> {
    match is_id(id) {
        true => Ok(()),
        false => Err(name_refusal(subject, id, &id_rule())),
    }
}

/// Refuses `name` (`username`) unless it follows [`username_rule`].
pub(crate) fn check_username(subject: &str, name: &str) -> Result<(), Reply> {
    match is_username(name) {
        true => Ok(()),
        false => Err(name_refusal(subject, name, &username_rule())),
    }
}

pub(crate) fn name_refusal(subject: &str, name: &str, rule: &str) -> Reply {
    Reply::bad_request(format!("invalid {subject} `{name}`: use {rule}"))
}

/// Fields the server keeps: a PUT or POST may not set them.
const SERVER_FIELDS: [&str; 2] = ["create_time", "update_time"];

/// What a PUT of `body` (checked as [`put`] checks it) at `key` by `caller` writes, checked
/// against `view`: the value as written (to show), and as stored (secrets sealed).
pub(crate) fn put_value(
    backend: &Backend,
    view: &View,
    caller: &Caller,
    key: &Key,
    stored_id: Value,
    body: &Map<String, Value>,
    via: Via,
) -> Result<(Value, Value), Reply> {
    if key.kind == Kind::Credentials && !consumer_exists(view, key) {
        return Err(Reply::error(StatusCode::NOT_FOUND, "consumer not found"));
    }
    let existing = view.entries.get(key);
    let mut value = body.clone();
    let created = existing.and_then(|e| e.value.get("create_time")).cloned();
    stamp(&mut value, key, stored_id, created, None);
    tenancy::check_write(view, caller, key, existing.map(|e| &**e), &mut value, via)?;
    let stored = prepare(backend, view, key, value.clone())?;
    Ok((Value::Object(value), stored))
}

/// Checks a body for a PUT at `key` as [`put`] does: an object, without the server's fields,
/// naming no other id.
pub(crate) fn put_body(key: &Key, body: Option<Value>) -> Result<Map<String, Value>, Reply> {
    let body = object_body(body, "missing configurations")?;
    forbid_server_fields(&body)?;
    let stated = body.get(key.kind.id_field());
    if stated.is_some_and(|id| id_text(id).as_deref() != Some(key.id.as_str())) {
        return Err(wrong_id(key.kind));
    }
    Ok(body)
}

/// The keys a delete of `existing` by `caller` removes, checked against `view`: the resource,
/// and a consumer's credentials with it, as APISIX removes them with the consumer. Refused
/// while another resource refers to it, unless `force`.
pub(crate) fn delete_keys(
    view: &View,
    caller: &Caller,
    existing: &Entry,
    force: bool,
    via: Via,
) -> Result<Vec<Key>, Reply> {
    let key = &existing.key;
    tenancy::check_delete(view, caller, existing, via)?;
    if !force {
        if let Some(refusal) = references::delete_refusal(view, key) {
            return Err(Reply::bad_request(refusal));
        }
    }
    let mut keys = vec![key.clone()];
    if key.kind == Kind::Consumers {
        let credentials = Address {
            kind: Kind::Credentials,
            parent: Some(key.id.clone()),
            id: None,
            sub_path: Vec::new(),
        };
        keys.extend(
            view.of_kind(Kind::Credentials)
                .filter(|e| credentials.contains(&e.key))
                .map(|e| e.key.clone()),
        );
    }
    Ok(keys)
}

/// Checks `value` as the new content of `key` and returns what to store: secrets (an SSL's
/// private keys, a consumer's credentials) are checked in the clear and stored sealed (sealed
/// ones in the body are accepted, so that a dumped resource can be written back).
pub(crate) fn prepare(
    backend: &Backend,
    view: &View,
    key: &Key,
    value: Map<String, Value>,
) -> Result<Value, Reply> {
    let mut value = Value::Object(value);
    secrets::open(&backend.keyring, key.kind, &mut value)
        .map_err(|e| Reply::bad_request(format!("invalid configuration: {e}")))?;
    validation::check_write(&backend.keyring, view, key, &value).map_err(
        |refusal| match refusal {
            Refusal::Invalid(errors) => Reply::invalid(&errors),
            Refusal::MissingReference(message) => Reply::bad_request(message),
        },
    )?;
    secrets::seal(&backend.keyring, key.kind, &mut value).map_err(|e| {
        Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot seal the secrets of {key}: {e}"),
        )
    })?;
    Ok(value)
}

/// Sets `key`'s id field to `id`, and the times: `created` and `updated`, now if `None`. The id
/// is the key's whole id (`vault/1` for a secret, `<username>/credentials/<id>` for a
/// credential), so that a dump names the resource fully; or, as given, a number.
pub(crate) fn stamp(
    value: &mut Map<String, Value>,
    key: &Key,
    id: Value,
    created: Option<Value>,
    updated: Option<Value>,
) {
    let now = now();
    value.insert(key.kind.id_field().to_owned(), id);
    value.insert(
        "create_time".to_owned(),
        created.unwrap_or_else(|| json!(now)),
    );
    value.insert(
        "update_time".to_owned(),
        updated.unwrap_or_else(|| json!(now)),
    );
}

pub(crate) fn object_body(body: Option<Value>, missing: &str) -> Result<Map<String, Value>, Reply> {
    match body {
        None => Err(Reply::bad_request(missing)),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(Reply::bad_request(
            "invalid configuration: must be a JSON object",
        )),
    }
}

pub(crate) fn forbid_server_fields(body: &Map<String, Value>) -> Result<(), Reply> {
    let nested = body.get("upstream").and_then(Value::as_object);
    for field in SERVER_FIELDS {
        let path = if body.contains_key(field) {
            field.to_owned()
        } else if nested.is_some_and(|u| u.contains_key(field)) {
            format!("upstream.{field}")
        } else {
            continue;
        };
        return Err(Reply::bad_request(format!(
            "the property is forbidden: {path}"
        )));
    }
    Ok(())
}

pub(crate) fn wrong_id(kind: Kind) -> Reply {
    match kind {
        Kind::Consumers => Reply::bad_request("wrong username"),
        _ => Reply::bad_request(format!("wrong {} id", singular(kind))),
    }
}

pub(crate) fn consumer_exists(view: &View, credential: &Key) -> bool {
    credential
        .id
        .split_once("/credentials/")
        .is_some_and(|(username, _)| {
            view.entries
                .contains_key(&Key::new(Kind::Consumers, username))
        })
}
