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

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, StatusCode};
use pylon_model::{is_id, Key, Kind, DEFAULT_TENANT, MAX_ID_LEN};
use pylon_store::{Entry, Precondition, Txn, View};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::audit::Record;
use crate::auth::forbidden;
use crate::clock::now;
use crate::identity::{Caller, Role};
use crate::query::Query;
use crate::resource_write;
use crate::response::{listed, parse_body, Reply};
use crate::secrets;
use crate::tenancy::{self, owner, Tenant, Via};
use crate::validation::{self, Refusal};
use crate::writer::{Backend, Committed, Plan};

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
    fn as_str(self) -> &'static str {
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
    fn editable(self) -> bool {
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
    fn key(&self) -> Key {
        Key::new(Kind::ChangeSets, self.id.clone())
    }

    fn from_entry(entry: &Entry) -> Option<ChangeSet> {
        serde_json::from_value(entry.value.clone()).ok()
    }

    fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.changes.iter().filter_map(|c| parse_key(&c.key))
    }

    /// `view` with this set's changes in place (but the one of `except`).
    fn applied_to(&self, view: &View, except: Option<&Key>) -> View {
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
                base: view.entries.get(key).map_or(0, |e| e.mod_revision),
            }),
        }
    }

    /// After a change of content: a set under review goes back to draft, since what was
    /// reviewed is no longer what it holds.
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

    /// The caller as which the set's changes are checked: its author, within its tenant.
    fn author(&self) -> Caller {
        Caller {
            name: self.author.clone(),
            tenant: Some(self.tenant_id.clone()),
            role: Role::Editor,
        }
    }
}

/// `<kind>/<id>` of a resource kind.
pub(crate) fn parse_key(text: &str) -> Option<Key> {
    let (kind, id) = text.split_once('/')?;
    let kind = Kind::parse(kind)?;
    let parts_ok = !id.split('/').any(str::is_empty);
    (parts_ok && (kind.has_compound_id() || !id.contains('/'))).then(|| Key::new(kind, id))
}

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
        .filter_map(|e| ChangeSet::from_entry(e))
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

/// A change set the caller reaches, from `view`.
fn find(view: &View, caller: &Caller, id: &str) -> Result<(Arc<Entry>, ChangeSet), Reply> {
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

/// The set with, per change, what is live and what it would be; its validation against what
/// is live now; and the changes whose resource changed since the set took it.
fn show(backend: &Backend, caller: &Caller, id: &str) -> Result<Reply, Reply> {
    let view = backend.replica.view();
    let (_, cs) = find(&view, caller, id)?;
    let diff: Vec<Value> = cs
        .changes
        .iter()
        .map(|change| {
            let live = parse_key(&change.key).and_then(|k| view.entries.get(&k).cloned());
            json!({
                "key": change.key,
                "live": live.as_ref().map(|e| shown(e.key.kind, &e.value)),
                "proposed": change.value.as_ref().zip(parse_key(&change.key)).map(|(v, k)| shown(k.kind, v)),
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

/// Why the set, applied to `view` change by change, would be refused: one message per
/// problem, each naming its resource.
fn validate(backend: &Backend, view: &View, cs: &ChangeSet) -> Vec<String> {
    let mut errors = Vec::new();
    let author = cs.author();
    for change in &cs.changes {
        let Some(key) = parse_key(&change.key) else {
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
fn check_put(
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

fn reply_message(reply: &Reply) -> String {
    reply
        .body
        .as_ref()
        .and_then(|b| b["error_msg"].as_str().or(b["message"].as_str()))
        .unwrap_or("refused")
        .to_owned()
}

/// The changes whose resource was changed (or made, or removed) since the set took it.
fn conflicts(view: &View, cs: &ChangeSet) -> Vec<Value> {
    cs.changes
        .iter()
        .filter_map(|change| {
            let key = parse_key(&change.key)?;
            let now = view.entries.get(&key).map_or(0, |e| e.mod_revision);
            (now != change.base)
                .then(|| json!({ "key": change.key, "base": change.base, "live": now }))
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewChangeSet {
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
struct ChangeBody {
    key: String,
    value: Option<Value>,
}

/// `POST /pylon/admin/change_sets`: a new draft, with the changes given, if any.
async fn create(backend: &Backend, record: &Record, body: Option<Value>) -> Result<Reply, Reply> {
    let body: NewChangeSet = parse_body(body)?;
    let changes = body.changes.into_iter().map(|c| (c.key, c.value)).collect();
    let new = Draft {
        id: body.id,
        title: body.title,
        tenant: body.tenant_id,
    };
    draft(backend, record, new, changes).await
}

struct Draft {
    id: Option<String>,
    title: String,
    tenant: Option<String>,
}

/// Makes a draft holding `changes`, each checked as it is added.
async fn draft(
    backend: &Backend,
    record: &Record,
    new: Draft,
    changes: Vec<(String, Option<Value>)>,
) -> Result<Reply, Reply> {
    let caller = &record.caller;
    require_writer(caller)?;
    let tenant = match (&caller.tenant, new.tenant) {
        (Some(own), Some(stated)) if *own != stated => {
            return Err(Reply::bad_request(format!(
                "invalid configuration: tenant_id: must be `{own}`, the caller's tenant"
            )))
        }
        (Some(own), _) => own.clone(),
        (None, stated) => stated.unwrap_or_else(|| DEFAULT_TENANT.to_owned()),
    };
    if let Some(id) = &new.id {
        if !is_id(id) {
            return Err(Reply::bad_request(format!(
                "invalid change set id `{id}`: use 1 to {MAX_ID_LEN} letters, digits, `-`, `_` or `.`"
            )));
        }
    }
    let committed = backend
        .write(record, |view| {
            if Tenant::from_view(view, &tenant).is_none() {
                return Err(Reply::bad_request(format!(
                    "invalid configuration: tenant_id: no tenant `{tenant}`"
                )));
            }
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
    Ok(Reply::json(StatusCode::CREATED, committed.outcome))
}

/// Where a change of `key` goes among others: resources referred to are written before what
/// refers to them, and deleted after it.
fn application_rank(key: &str, deletes: bool) -> i8 {
    let depth = match parse_key(key).map(|k| k.kind) {
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
fn located(reply: Reply, location: &str) -> Reply {
    Reply {
        body: Some(json!({ "error_msg": format!("{location}: {}", reply_message(&reply)) })),
        ..reply
    }
}

/// A new id as POST makes them for resources: the store revision, zero-padded.
fn next_id(view: &View) -> String {
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
fn put_change(
    backend: &Backend,
    view: &View,
    caller: &Caller,
    cs: &mut ChangeSet,
    key_text: &str,
    value: Option<Value>,
) -> Result<(), Reply> {
    let key = parse_key(key_text).ok_or_else(|| {
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
    let record = Record {
        change_set: Some(id.to_owned()),
        ..record.clone()
    };
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
async fn add_change(
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
async fn drop_change(
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
async fn edit(
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

fn store_plan(entry: &Entry, cs: &ChangeSet) -> Plan<Value> {
    let stored = serde_json::to_value(cs).expect("a change set serializes");
    Plan {
        txn: Txn::put(cs.key(), stored.clone())
            .when(cs.key(), Precondition::ModRevision(entry.mod_revision)),
        outcome: stored,
    }
}

/// `DELETE /pylon/admin/change_sets/<id>`: drops a set that was never published or served.
async fn remove(backend: &Backend, record: &Record, id: &str) -> Result<Reply, Reply> {
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

enum Action {
    Submit,
    Approve,
    Reject,
    Rebase,
    Canary(CanaryTarget),
    Abort,
}

/// Moves a set through review, rebase and canary.
async fn transition(
    backend: &Backend,
    record: &Record,
    id: &str,
    action: Action,
    comment: Option<String>,
) -> Result<Reply, Reply> {
    let caller = &record.caller;
    let record = Record {
        comment: comment.clone(),
        change_set: Some(id.to_owned()),
        ..record.clone()
    };
    let committed = backend
        .write(&record, |view| {
            let (entry, mut cs) = find(view, caller, id)?;
            let refuse = |why: &str| {
                Err(Reply::error(
                    StatusCode::CONFLICT,
                    format!("change set `{id}` is {}: {why}", cs.state.as_str()),
                ))
            };
            let review = Tenant::from_view(view, &cs.tenant_id).is_some_and(|t| t.review);
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
                        let key = parse_key(&change.key);
                        change.base = key
                            .and_then(|k| view.entries.get(&k))
                            .map_or(0, |e| e.mod_revision);
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

fn require_editable(cs: &ChangeSet) -> Result<(), Reply> {
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

fn require_writer(caller: &Caller) -> Result<(), Reply> {
    if caller.role.writes() {
        Ok(())
    } else {
        Err(forbidden(format!(
            "role `{}` changes no change sets",
            caller.role.as_str()
        )))
    }
}

fn require_valid(backend: &Backend, view: &View, cs: &ChangeSet) -> Result<(), Reply> {
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
fn require_current(view: &View, cs: &ChangeSet) -> Result<(), Reply> {
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
fn check_publishable(cs: &ChangeSet, review: bool) -> Result<(), Reply> {
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
fn check_other_canaries(view: &View, cs: &ChangeSet) -> Result<(), Reply> {
    let mine: Vec<Key> = cs.keys().collect();
    for other in view
        .of_kind(Kind::ChangeSets)
        .filter_map(|e| ChangeSet::from_entry(e))
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

/// `POST .../publish` (and `.../promote` for a canary): writes every change, on condition that
/// none of its resources changed since the set took them, with the set's new state, as one
/// transaction.
async fn publish(
    backend: &Backend,
    record: &Record,
    id: &str,
    comment: Option<String>,
) -> Result<Reply, Reply> {
    let caller = &record.caller;
    require_writer(caller)?;
    let record = Record {
        comment: comment.clone(),
        change_set: Some(id.to_owned()),
        ..record.clone()
    };
    let committed = backend
        .write(&record, |view| {
            let (entry, mut cs) = find(view, caller, id)?;
            let review = Tenant::from_view(view, &cs.tenant_id).is_some_and(|t| t.review);
            check_publishable(&cs, review)?;
            require_current(view, &cs)?;
            require_valid(backend, view, &cs)?;
            let mut txn = Txn::default();
            for change in &cs.changes {
                let key = parse_key(&change.key).expect("validated keys parse");
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

/// `POST /pylon/admin/change_sets/import?title=...`: a YAML or JSON document of resources
/// (the standalone format: `routes: [...]`, `upstreams: [...]`, each with its id) becomes one
/// draft change set.
async fn import(
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
    draft(backend, record, new, changes).await
}

/// The document's resources as changes: `<kind>/<id>` and the resource.
fn document_changes(kinds: Map<String, Value>) -> Result<Vec<(String, Option<Value>)>, Reply> {
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
    let review = Tenant::from_view(&view, &tenant).is_some_and(|t| t.review);
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
    let id = created
        .body
        .as_ref()
        .and_then(|b| b["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    if review {
        transition(backend, record, &id, Action::Submit, None).await
    } else {
        publish(backend, record, &id, None).await
    }
}
