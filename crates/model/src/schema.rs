//! JSON Schemas of the resource kinds, as the Admin API serves them (APISIX's
//! `GET /apisix/admin/schema/<kind>`).
//!
//! The schemas are derived from the very types the resources are parsed into, so a field added,
//! renamed or given a default shows up here without further work. What the types cannot say
//! (ranges, the method list, the shape of `vars`) is written beside the field it is about.
//!
//! A schema describes what parsing accepts. The checks that run after parsing and look at
//! several fields at once (a route needs `uri` or `uris`, `chash` needs a `key`, a certificate
//! must match its key) are not in it: a resource that fits its schema may still be refused, but
//! one that does not fit is always refused.

use schemars::consts::meta_schemas;
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Value};

use crate::config::{id_schema, GlobalRule, PluginConfig, Service};
use crate::key::Kind;
use crate::route::Route;
use crate::ssl::Ssl;
use crate::upstream::Upstream;

/// The JSON Schema (draft 2020-12) of one resource of `kind`, as a self-contained document:
/// the types it refers to are under `$defs`.
///
/// Kinds the data plane does not model yet are accepted as any JSON object; their schema says
/// so rather than pretend to check fields.
pub fn json_schema(kind: Kind) -> Value {
    // Exhaustive on purpose: a new kind must decide here whether it has a model.
    match kind {
        Kind::Routes => schema_of::<Route>(),
        Kind::Services => schema_of::<Service>(),
        Kind::Upstreams => schema_of::<Upstream>(),
        Kind::GlobalRules => schema_of::<GlobalRule>(),
        Kind::PluginConfigs => schema_of::<PluginConfig>(),
        Kind::Ssls => schema_of::<Ssl>(),
        Kind::Consumers
        | Kind::ConsumerGroups
        | Kind::StreamRoutes
        | Kind::Protos
        | Kind::PluginMetadata
        | Kind::Secrets => unchecked(kind),
    }
}

fn schema_of<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Any object, with the field that names the resource.
fn unchecked(kind: Kind) -> Value {
    let id = match kind.id_field() {
        "id" => id_schema(&mut SchemaSettings::draft2020_12().into_generator()).to_value(),
        // A consumer's `username`.
        _ => json!({"type": "string"}),
    };
    json!({
        "$schema": meta_schemas::DRAFT2020_12,
        "title": kind.as_str(),
        "description": format!(
            "Pylon stores {kind} as they are written: any JSON object is accepted and its fields are not checked yet."
        ),
        "type": "object",
        "properties": {kind.id_field(): id},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_an_object_schema() {
        for kind in Kind::ALL {
            let schema = json_schema(kind);
            assert_eq!(schema["type"], "object", "{kind}");
            assert!(
                schema["$schema"].as_str().unwrap().contains("2020-12"),
                "{kind}"
            );
            assert!(schema["properties"][kind.id_field()].is_object(), "{kind}");
        }
    }

    #[test]
    fn route_schema_lists_its_fields() {
        let schema = json_schema(Kind::Routes);
        assert_eq!(schema["additionalProperties"], false);
        let props = &schema["properties"];
        for field in ["uri", "uris", "methods", "upstream", "vars", "status"] {
            assert!(props[field].is_object(), "{field}");
        }
    }
}
