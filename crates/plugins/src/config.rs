//! Parsing a plugin's configuration into its type, with errors that name the field.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use pylon_model::FieldError;
use pylon_plugin::Reply;

/// Parses `config` into `T`, leaving out `_meta` (which every plugin accepts, see
/// [`pylon_plugin::Meta`]). Error paths are relative to the plugin's configuration.
pub(crate) fn parse<T: DeserializeOwned>(config: &Value) -> Result<T, FieldError> {
    let without_meta;
    let config = match config {
        Value::Object(map) if map.contains_key("_meta") => {
            let mut map = map.clone();
            map.remove("_meta");
            without_meta = Value::Object(map);
            &without_meta
        }
        other => other,
    };
    serde_path_to_error::deserialize(config).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        FieldError::new(path, e.into_inner().to_string())
    })
}

/// Splits a configuration object in two: the fields `names` names, and the rest. Each part is
/// then parsed by its own type, so that types shared by several plugins keep their
/// `deny_unknown_fields` and their error paths (serde's `flatten` would lose both). A
/// configuration that is not an object stays whole in the rest, for its parse to refuse.
pub(crate) fn split_fields(config: &Value, names: &[&str]) -> (Value, Value) {
    let Value::Object(map) = config else {
        return (Value::Object(Map::new()), config.clone());
    };
    let (named, rest): (Map<String, Value>, Map<String, Value>) = map
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| names.contains(&k.as_str()));
    (Value::Object(named), Value::Object(rest))
}

/// The JSON Schema of a configuration whose fields are those of several types (see
/// [`split_fields`]): the first's, with the others' properties, requirements and
/// definitions added.
pub(crate) fn merged_schema(parts: &[Value]) -> Value {
    let mut parts = parts.iter().cloned();
    let mut merged = parts.next().unwrap_or_default();
    for part in parts {
        for key in ["properties", "$defs"] {
            if let Some(Value::Object(more)) = part.get(key) {
                let entry = merged
                    .as_object_mut()
                    .map(|m| m.entry(key).or_insert_with(|| Value::Object(Map::new())));
                if let Some(Value::Object(into)) = entry {
                    into.extend(more.clone());
                }
            }
        }
        if let Some(Value::Array(required)) = part.get("required") {
            let entry = merged.as_object_mut().map(|m| {
                m.entry("required")
                    .or_insert_with(|| Value::Array(Vec::new()))
            });
            if let Some(Value::Array(into)) = entry {
                into.extend(required.iter().cloned());
            }
        }
    }
    merged
}

/// The answer of a plugin that refuses requests: `rejected_code` (200 to 599), with
/// `rejected_msg` as `{"error_msg": ...}`, or an empty body without one.
pub(crate) fn refusal(rejected_code: u16, rejected_msg: Option<&str>) -> Result<Reply, FieldError> {
    if !(200..=599).contains(&rejected_code) {
        return Err(FieldError::new("rejected_code", "must be 200 to 599"));
    }
    Ok(match rejected_msg {
        Some("") => return Err(FieldError::new("rejected_msg", "must not be empty")),
        Some(msg) => Reply::json(rejected_code, &serde_json::json!({ "error_msg": msg })),
        None => Reply::status(rejected_code),
    })
}

/// The JSON Schema (draft 2020-12) of a plugin configuration type.
pub(crate) fn schema_of<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// What a string starting with this stands for: the environment variable named after it, as
/// the gateway's process sees it when the configuration is compiled.
const ENV_REFERENCE: &str = "$env://";

/// `config` with every `$env://NAME` string replaced by the variable's value. Written configs
/// keep the reference (so a secret need not be stored at all); it is resolved on each node
/// that serves the configuration. A variable that is not set is an error at its path.
pub(crate) fn resolve_env(config: &Value) -> Result<Cow<'_, Value>, FieldError> {
    resolve_env_with(config, &|name| std::env::var(name).ok())
}

fn resolve_env_with<'v>(
    config: &'v Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Cow<'v, Value>, FieldError> {
    if !mentions_env(config) {
        return Ok(Cow::Borrowed(config));
    }
    let mut resolved = config.clone();
    substitute(&mut resolved, lookup, String::new())?;
    Ok(Cow::Owned(resolved))
}

fn mentions_env(value: &Value) -> bool {
    match value {
        Value::String(s) => s.starts_with(ENV_REFERENCE),
        Value::Array(items) => items.iter().any(mentions_env),
        Value::Object(map) => map.values().any(mentions_env),
        _ => false,
    }
}

fn substitute(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    path: String,
) -> Result<(), FieldError> {
    match value {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix(ENV_REFERENCE) {
                *s = lookup(name).ok_or_else(|| {
                    FieldError::new(path, format!("environment variable `{name}` is not set"))
                })?;
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute(item, lookup, format!("{path}[{i}]"))?;
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                substitute(item, lookup, path)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn env_references_are_resolved_where_they_stand() {
        let lookup = |name: &str| (name == "KEY").then(|| "s3cret".to_owned());
        let config = json!({"key": "$env://KEY", "list": ["a", "$env://KEY"], "n": 1});
        let resolved = resolve_env_with(&config, &lookup).unwrap();
        assert_eq!(
            *resolved,
            json!({"key": "s3cret", "list": ["a", "s3cret"], "n": 1})
        );
        let plain = json!({"key": "k"});
        assert!(matches!(
            resolve_env_with(&plain, &lookup).unwrap(),
            Cow::Borrowed(_)
        ));
        let error = resolve_env_with(&json!({"a": {"b": "$env://NOPE"}}), &lookup).unwrap_err();
        assert_eq!(
            error.to_string(),
            "a.b: environment variable `NOPE` is not set"
        );
    }

    #[test]
    fn a_configuration_splits_into_its_parts_and_their_schemas_merge() {
        let (named, rest) = split_fields(&json!({"a": 1, "b": 2, "_meta": {}}), &["a"]);
        assert_eq!(
            (named, rest),
            (json!({"a": 1}), json!({"b": 2, "_meta": {}}))
        );
        let (named, rest) = split_fields(&json!([1]), &["a"]);
        assert_eq!((named, rest), (json!({}), json!([1])));

        let merged = merged_schema(&[
            json!({"type": "object", "properties": {"a": {}}, "required": ["a"]}),
            json!({"properties": {"b": {}}, "required": ["b"], "$defs": {"B": {}}}),
        ]);
        assert_eq!(
            merged,
            json!({"type": "object", "properties": {"a": {}, "b": {}},
                "required": ["a", "b"], "$defs": {"B": {}}})
        );
    }
}
