//! Parsing a plugin's configuration into its type, with errors that name the field.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use pylon_model::FieldError;

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

/// The JSON Schema (draft 2020-12) of a plugin configuration type.
pub(crate) fn schema_of<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}
