//! The declarative workflow (a Pylon extension): the whole configuration out as one standalone
//! document, and a document in as one atomic change.
//!
//! `GET /pylon/admin/config` answers `{"revision": R, "config": {"routes": [...], ...}}`, every
//! resource with its id field and SSL private keys sealed, so that a dump can be kept in git.
//!
//! `POST /pylon/admin/config?dry_run=&prune=` takes a standalone document (YAML or JSON, as
//! `apisix.yaml`; a dump as it was given out is accepted too, its `revision` ignored), checks
//! the configuration it would result in as a whole, works out what differs, and unless
//! `dry_run`, writes that as one transaction. Resources the document leaves out are deleted only
//! with `prune=true`; resources it leaves unchanged are not written, so their revisions stay.

use std::collections::BTreeMap;

use http::StatusCode;
use pylon_model::{FieldError, Key, Kind};
use pylon_store::{Keyring, Precondition, Txn, View};
use serde_json::{json, Map, Value};

use crate::audit::Record;
use crate::query::Query;
use crate::references::{self, id_text};
use crate::response::Reply;
use crate::secrets;
use crate::tenancy;
use crate::writer::{Backend, Plan};

/// Fields the server keeps; a document may carry them (a dump does) or not (a hand-written
/// file), and neither makes a resource different.
const SERVER_FIELDS: [&str; 2] = ["create_time", "update_time"];

/// `GET /pylon/admin/config`.
pub(crate) fn dump(view: &View, keyring: &Keyring) -> Reply {
    let mut config = Map::new();
    for kind in Kind::ALL {
        let mut items = Vec::new();
        for entry in view.of_kind(kind) {
            let mut value = entry.value.clone();
            with_id(&mut value, &entry.key);
            // A secret written by hand into the store is plain: it leaves sealed all the same.
            if let Err(e) = secrets::seal(keyring, kind, &mut value) {
                return Reply::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
            items.push(value);
        }
        if !items.is_empty() {
            config.insert(kind.as_str().to_owned(), Value::Array(items));
        }
    }
    Reply::json(
        StatusCode::OK,
        json!({ "revision": view.revision, "config": config }),
    )
}

/// One difference between the store and the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    Update,
    Delete,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// `POST /pylon/admin/config`.
pub(crate) async fn apply(backend: &Backend, record: &Record, query: &Query, body: &[u8]) -> Reply {
    let dry_run = query.flag("dry_run");
    let prune = query.flag("prune");
    let document = match read_document(body) {
        Ok(document) => document,
        Err(errors) => return invalid(&errors),
    };
    let result = backend
        .write(record, |view| {
            let desired = resulting_config(&backend.keyring, view, &document, prune)
                .map_err(|errors| invalid(&errors))?;
            let (txn, changes) = difference(&backend.keyring, view, desired)?;
            for (key, value) in &txn.writes {
                let before = view.entries.get(key).map(|e| &e.value);
                tenancy::check_applied(view, key, before, value.as_ref())?;
            }
            let txn = if dry_run { Txn::default() } else { txn };
            Ok(Plan {
                txn,
                outcome: changes,
            })
        })
        .await;
    match result {
        Ok(committed) => {
            let changes: Vec<Value> = committed
                .outcome
                .iter()
                .map(|(op, key)| json!({ "op": op.as_str(), "key": key.to_string() }))
                .collect();
            Reply::json(
                StatusCode::OK,
                json!({
                    "revision": committed.revision,
                    "applied": !dry_run,
                    "changes": changes,
                }),
            )
        }
        Err(reply) => reply,
    }
}

/// Every error, each with its place in the document (or the stored resource it is about).
fn invalid(errors: &[FieldError]) -> Reply {
    let list: Vec<Value> = errors
        .iter()
        .map(|e| json!({ "path": e.path, "message": e.message }))
        .collect();
    let message = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Reply::json(
        StatusCode::BAD_REQUEST,
        json!({ "error_msg": format!("invalid configuration: {message}"), "errors": list }),
    )
}

/// The document's map of kinds to lists; a dump's `config` is unwrapped.
fn read_document(body: &[u8]) -> Result<Map<String, Value>, Vec<FieldError>> {
    let text = std::str::from_utf8(body)
        .map_err(|_| vec![FieldError::new("", "the document is not UTF-8 text")])?;
    let value: Value = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_yaml::from_str(text)
            .map_err(|e| vec![FieldError::new("", format!("not valid YAML or JSON: {e}"))])?
    };
    let mut map = match value {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        _ => return Err(vec![FieldError::new("", "must be a map of resource kinds")]),
    };
    match map.remove("config") {
        Some(Value::Object(config)) => Ok(config),
        Some(_) => Err(vec![FieldError::new(
            "config",
            "must be a map of resource kinds",
        )]),
        None => {
            // `revision` belongs to a dump; a bare document has none to ignore.
            map.remove("revision");
            Ok(map)
        }
    }
}

/// The configuration the document results in, keyed, with SSL keys open; every error names
/// its place in the document (`routes[3].upstream_id`), or the stored resource (`routes/7`)
/// for one kept from the store without `prune`.
fn resulting_config(
    keyring: &Keyring,
    view: &View,
    document: &Map<String, Value>,
    prune: bool,
) -> Result<BTreeMap<Key, Value>, Vec<FieldError>> {
    let mut document = document.clone();
    let mut errors = Vec::new();
    // The keys the document names, found as the standalone format does: the id field, else
    // the 1-based position.
    let mut named = BTreeMap::new();
    let mut lengths = BTreeMap::new();
    for (kind_name, items) in document.iter_mut() {
        let (Some(kind), Value::Array(items)) = (Kind::parse(kind_name), items) else {
            continue;
        };
        lengths.insert(kind, items.len());
        for (i, item) in items.iter_mut().enumerate() {
            let location = format!("{kind_name}[{i}]");
            if let Err(e) = secrets::open(keyring, kind, item) {
                errors.push(FieldError::new(location.clone(), e.to_string()));
            }
            let id = match item.get(kind.id_field()) {
                None => Some((i + 1).to_string()),
                Some(id) => id_text(id),
            };
            if let Some(id) = id {
                named.entry(Key::new(kind, id)).or_insert(location);
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Without prune, what the store holds beyond the document stays: it is checked with it.
    let mut kept: BTreeMap<Kind, Vec<Key>> = BTreeMap::new();
    if !prune {
        for (key, entry) in view.entries.iter().filter(|(k, _)| k.kind.is_resource()) {
            if named.contains_key(key) {
                continue;
            }
            let mut value = entry.value.clone();
            with_id(&mut value, key);
            secrets::open(keyring, key.kind, &mut value)
                .map_err(|e| vec![FieldError::new(key.to_string(), e.to_string())])?;
            let slot = document.entry(key.kind.as_str()).or_insert(Value::Null);
            if slot.is_null() {
                *slot = Value::Array(Vec::new());
            }
            // A kind the document gives as something else than a list is refused by the
            // model; nothing is appended to it.
            if let Value::Array(items) = slot {
                items.push(value);
                kept.entry(key.kind).or_default().push(key.clone());
            }
        }
    }
    let locate = |error: FieldError| relocate(error, &lengths, &kept);
    let text = Value::Object(document).to_string();
    let (entries, config) = pylon_model::parse_standalone(&text)
        .map_err(|e| e.0.into_iter().map(locate).collect::<Vec<_>>())?;
    // What the model does not check: plugins (each resource's, then what only the whole
    // shows, as two consumers with one key), and references from the kinds it keeps as JSON
    // (a consumer's group, a credential's consumer).
    let clashes = pylon_plugins::check_config(&config);
    let protos = pylon_plugins::Protos::compile(&config, pylon_plugins::Protos::none());
    let missing: Vec<FieldError> = entries
        .iter()
        .flat_map(|(key, value)| {
            let location = named.get(key).cloned().unwrap_or_else(|| key.to_string());
            let plugins = pylon_plugins::check_resource(key.kind, value, &protos);
            let unchecked = references::missing(key.kind, value, |k| entries.contains_key(k))
                .into_iter()
                .filter(|e| !model_checks(key.kind, &e.path));
            plugins
                .into_iter()
                .chain(unchecked)
                .map(move |e| e.within(&location))
                .collect::<Vec<_>>()
        })
        .chain(clashes)
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok(entries)
}

/// Whether the model's own check of a whole configuration covers this reference already.
fn model_checks(kind: Kind, field: &str) -> bool {
    matches!(
        (kind, field),
        (
            Kind::Routes,
            "service_id" | "upstream_id" | "plugin_config_id"
        ) | (Kind::Services, "upstream_id")
    )
}

/// Turns the position of a resource appended from the store back into its key.
fn relocate(
    mut error: FieldError,
    lengths: &BTreeMap<Kind, usize>,
    kept: &BTreeMap<Kind, Vec<Key>>,
) -> FieldError {
    let Some((kind_name, rest)) = error.path.split_once('[') else {
        return error;
    };
    let Some((index, tail)) = rest.split_once(']') else {
        return error;
    };
    let (Some(kind), Ok(index)) = (Kind::parse(kind_name), index.parse::<usize>()) else {
        return error;
    };
    let in_document = lengths.get(&kind).copied().unwrap_or(0);
    if let Some(key) = index
        .checked_sub(in_document)
        .and_then(|i| kept.get(&kind)?.get(i))
    {
        error.path = format!("{key}{tail}");
    }
    error
}

/// The writes that turn the store into `desired`, and the list of them.
fn difference(
    keyring: &Keyring,
    view: &View,
    desired: BTreeMap<Key, Value>,
) -> Result<(Txn, Vec<(Op, Key)>), Reply> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut txn = Txn::default();
    let mut changes = Vec::new();
    for (key, value) in &desired {
        let mut value = value.clone();
        with_id(&mut value, key);
        let existing = view.entries.get(key);
        if let Some(entry) = existing {
            let mut stored = entry.value.clone();
            if secrets::may_hold(key.kind) && secrets::open(keyring, key.kind, &mut stored).is_err()
            {
                // A stored secret this keyring cannot open is replaced by the document's.
                stored = Value::Null;
            }
            if same_content(&stored, &value) {
                continue;
            }
        }
        if let Some(object) = value.as_object_mut() {
            let created = existing
                .and_then(|e| e.value.get("create_time"))
                .or_else(|| object.get("create_time"))
                .cloned()
                .unwrap_or_else(|| json!(now));
            object.insert("create_time".to_owned(), created);
            object.insert("update_time".to_owned(), json!(now));
        }
        secrets::seal(keyring, key.kind, &mut value)
            .map_err(|e| Reply::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let (op, condition) = match existing {
            Some(e) => (Op::Update, Precondition::ModRevision(e.mod_revision)),
            None => (Op::Create, Precondition::Absent),
        };
        txn.conditions.push((key.clone(), condition));
        txn.writes.push((key.clone(), Some(value)));
        changes.push((op, key.clone()));
    }
    // The control plane's records (users, change sets, the audit chain) are not the
    // document's to remove.
    let resources = view.entries.iter().filter(|(k, _)| k.kind.is_resource());
    for (key, entry) in resources {
        if !desired.contains_key(key) {
            txn.conditions
                .push((key.clone(), Precondition::ModRevision(entry.mod_revision)));
            txn.writes.push((key.clone(), None));
            changes.push((Op::Delete, key.clone()));
        }
    }
    changes.sort_by(|a, b| a.1.cmp(&b.1));
    Ok((txn, changes))
}

/// Whether two values are the same resource, whatever their times say.
fn same_content(stored: &Value, desired: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(object) = v.as_object_mut() {
            for field in SERVER_FIELDS {
                object.remove(field);
            }
        }
        v
    };
    strip(stored) == strip(desired)
}

/// Makes a value name itself, as a string: stored values do, but a hand-written store's or
/// document's may not (or give the id as a number).
fn with_id(value: &mut Value, key: &Key) {
    if let Some(object) = value.as_object_mut() {
        object.insert(
            key.kind.id_field().to_owned(),
            Value::String(key.id.clone()),
        );
    }
}
