//! Whether a write leaves a configuration the data plane accepts.
//!
//! The data plane takes a configuration only as a whole (one invalid resource and it keeps the
//! previous one), so a write is checked three ways before it is stored: the resource on its own
//! (the model's parsing and field checks), its references (every id it names must exist), and
//! the resources around it, checked together by the model as the data plane will: what it points
//! at, and what points at it (a service that loses its upstream must not leave a route without
//! one). Resources unrelated to the write are not parsed again, nor is the written one: a write
//! costs what it touches.

use std::collections::BTreeMap;

use pylon_model::{Config, FieldError, Holders, Key, Kind, Resource};
use pylon_plugins::Protos;
use pylon_store::{Keyring, View};
use serde_json::Value;

use crate::references;
use crate::secrets;

/// Why a write is refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Fields of the resource, or of another resource the write would break.
    Invalid(Vec<FieldError>),
    /// It points at a resource that does not exist: APISIX's refusal, word for word.
    MissingReference(String),
}

/// Checks `value` as the new content of `key`, with `view` as the rest of the configuration.
/// Error paths are relative to the resource, or name another resource the write would break.
/// As in APISIX, references are checked once the resource's own fields are valid, and before
/// its plugins are.
pub(crate) fn check_write(
    keyring: &Keyring,
    view: &View,
    key: &Key,
    value: &Value,
) -> Result<(), Refusal> {
    let resource = Resource::from_json(key.kind, value).map_err(|e| Refusal::Invalid(e.0))?;
    if let Some(refusal) =
        references::first_missing(key.kind, value, |k| view.entries.contains_key(k))
    {
        return Err(Refusal::MissingReference(refusal));
    }
    let missing = references::missing_nested(key.kind, value, |k| view.entries.contains_key(k));
    if !missing.is_empty() {
        return Err(Refusal::Invalid(missing));
    }
    let written = (key, value);
    let protos = referenced_protos(view, key, value, written);
    let mut errors = pylon_plugins::check_resource(key.kind, value, &protos);
    if key.kind == Kind::Protos {
        errors.extend(broken_proto_users(view, written));
    }
    errors.extend(pylon_plugins::check_bridged_stream_route(value, |id| {
        let route = view.entries.get(&Key::new(Kind::StreamRoutes, id))?;
        Some(&route.value)
    }));
    if matches!(key.kind, Kind::Consumers | Kind::Credentials) {
        errors.extend(credential_clashes(keyring, view, key, value));
    }
    if !errors.is_empty() {
        return Err(Refusal::Invalid(errors));
    }
    let neighbourhood = neighbourhood(view, key, value);
    let neighbours = neighbourhood
        .iter()
        .filter(|(k, _)| *k != key)
        .map(|(k, v)| (k, Resource::from_json(k.kind, v)));
    match Config::from_parsed(neighbours.chain([(key, Ok(resource))])) {
        Ok(_) => Ok(()),
        Err(errors) => Err(Refusal::Invalid(
            errors.0.into_iter().map(|e| relative_to(key, e)).collect(),
        )),
    }
}

/// The protos the resource names (`proto_id`: its plugins', for gRPC transcoding, and a
/// framed-protocol stream route's commands'), compiled for their checks: as stored, but for
/// the one being `written`.
fn referenced_protos(view: &View, key: &Key, value: &Value, written: (&Key, &Value)) -> Protos {
    let found = Holders::of(key.kind, value).references();
    let sources: Vec<(&str, &str)> = found
        .iter()
        .filter(|found| found.target.kind == Kind::Protos)
        .filter_map(|found| {
            let proto = match written {
                (key, value) if *key == found.target => value,
                _ => &view.entries.get(&found.target)?.value,
            };
            let content = proto.get("content")?.as_str()?;
            Some((found.target.id.as_str(), content))
        })
        .collect();
    Protos::from_entries(sources, Protos::none())
}

/// What the users of a proto (`grpc-transcode` plugins, frames commands) would lack with
/// `written`, its new content: a service, method or message they name. Each error names the
/// user's field.
fn broken_proto_users(view: &View, written: (&Key, &Value)) -> Vec<FieldError> {
    references::referrers(view, written.0)
        .into_iter()
        .filter_map(|user| Some((user, &view.entries.get(user)?.value)))
        .flat_map(|(user, value)| {
            let protos = referenced_protos(view, user, value, written);
            let errors = pylon_plugins::check_resource(user.kind, value, &protos);
            errors.into_iter().map(move |error| FieldError {
                path: match error.path.as_str() {
                    "" => user.to_string(),
                    path => format!("{user}.{path}"),
                },
                ..error
            })
        })
        .collect()
}

/// A consumer's or credential's authentication plugins that another consumer has the same
/// credential for (the same API key, say): every consumer and credential is indexed again
/// with the write in place, and the clashes located at the written resource reported.
fn credential_clashes(keyring: &Keyring, view: &View, key: &Key, value: &Value) -> Vec<FieldError> {
    // Stored credentials are sealed, each with its own nonce: compared only once opened. One
    // this keyring cannot open cannot clash with anything this node would accept either.
    let mut entries: BTreeMap<Key, Value> = view
        .entries
        .iter()
        .filter(|(k, _)| matches!(k.kind, Kind::Consumers | Kind::Credentials))
        .filter_map(|(k, entry)| {
            let mut opened = entry.value.clone();
            secrets::open(keyring, k.kind, &mut opened).ok()?;
            Some((k.clone(), opened))
        })
        .collect();
    entries.insert(key.clone(), value.clone());
    let mut config = Config::default();
    for (k, v) in &entries {
        if let Ok(resource) = Resource::from_json(k.kind, v) {
            config.insert(k, resource);
        }
    }
    let own = key.to_string();
    pylon_plugins::check_config(&config)
        .into_iter()
        .filter(|e| e.path.starts_with(&own))
        .map(|e| relative_to(key, e))
        .collect()
}

/// The written resource, what points at it, and everything those point at, transitively.
fn neighbourhood(view: &View, key: &Key, value: &Value) -> BTreeMap<Key, Value> {
    let mut found = BTreeMap::from([(key.clone(), value.clone())]);
    let mut pending: Vec<Key> = references::referrers(view, key)
        .into_iter()
        .cloned()
        .collect();
    pending.extend(references::targets(key.kind, value));
    while let Some(next) = pending.pop() {
        if found.contains_key(&next) {
            continue;
        }
        if let Some(entry) = view.entries.get(&next) {
            pending.extend(references::targets(next.kind, &entry.value));
            found.insert(next, entry.value.clone());
        }
    }
    found
}

/// An error about the written resource loses its `<kind>/<id>` prefix; one about another
/// resource keeps it, so the message says which one the write would break.
fn relative_to(key: &Key, mut error: FieldError) -> FieldError {
    let own = key.to_string();
    if let Some(rest) = error.path.strip_prefix(&own) {
        if rest.is_empty() || rest.starts_with('.') || rest.starts_with('[') {
            error.path = rest.trim_start_matches('.').to_owned();
        }
    }
    error
}
