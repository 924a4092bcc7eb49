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
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Value};

use crate::config::{id_schema, GlobalRule, PluginConfig, Service};
use crate::consumer::{Consumer, ConsumerGroup, Credential};
use crate::key::Kind;
use crate::proto::Proto;
use crate::route::Route;
use crate::ssl::Ssl;
use crate::stream_route::StreamRoute;
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
        Kind::Consumers => schema_of::<Consumer>(),
        Kind::Credentials => schema_of::<Credential>(),
        Kind::ConsumerGroups => schema_of::<ConsumerGroup>(),
        Kind::Protos => schema_of::<Proto>(),
        Kind::StreamRoutes => schema_of::<StreamRoute>(),
        Kind::PluginMetadata | Kind::Secrets => unchecked(kind),
        // The control plane's records are written by the Admin API only, never as documents.
        crate::control_kinds!() => unchecked(kind),
    }
}

fn schema_of<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Any object, with the field that names the resource, and its plugins where it has some.
fn unchecked(kind: Kind) -> Value {
    let id = match kind.id_field() {
        "id" => id_schema(&mut SchemaGenerator::default()).to_value(),
        // A consumer's `username`.
        _ => json!({"type": "string"}),
    };
    let properties = json!({kind.id_field(): id});
    json!({
        "$schema": meta_schemas::DRAFT2020_12,
        "title": kind.as_str(),
        "description": format!(
            "Pylon stores {kind} as they are written: any JSON object is accepted and its fields are not checked yet."
        ),
        "type": "object",
        "properties": properties,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Resource;
    use crate::test_certs::ecdsa;

    #[test]
    fn every_kind_has_an_object_schema() {
        for kind in Kind::ALL {
            let schema = json_schema(kind);
            assert_eq!(schema["$schema"], meta_schemas::DRAFT2020_12, "{kind}");
            assert_eq!(schema["type"], "object", "{kind}");
            assert!(schema["properties"][kind.id_field()].is_object(), "{kind}");
            assert!(schema["description"].is_string(), "{kind}");
        }
    }

    /// APISIX's schemas of the kinds that carry plugins name `plugins`, an object.
    #[test]
    fn every_kind_with_plugins_has_them_in_its_schema() {
        for kind in [
            Kind::Routes,
            Kind::Services,
            Kind::Consumers,
            Kind::Credentials,
            Kind::ConsumerGroups,
            Kind::PluginConfigs,
            Kind::GlobalRules,
            Kind::StreamRoutes,
        ] {
            let plugins = &json_schema(kind)["properties"]["plugins"];
            let types = match &plugins["type"] {
                Value::Array(types) => types.clone(),
                one => vec![one.clone()],
            };
            assert!(types.contains(&json!("object")), "{kind}: {plugins}");
        }
    }

    #[test]
    fn the_route_schema_has_its_fields_methods_and_upstream() {
        let schema = json_schema(Kind::Routes);
        assert_eq!(schema["additionalProperties"], false);
        let props = &schema["properties"];
        assert_eq!(props["uri"]["type"], json!(["string", "null"]));
        assert_eq!(props["uris"]["items"]["type"], "string");
        assert_eq!(
            props["methods"]["items"]["enum"],
            json!([
                "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
                "PURGE"
            ])
        );
        assert_eq!(props["status"]["default"], 1);
        assert_eq!(
            (&props["status"]["minimum"], &props["status"]["maximum"]),
            (&json!(0), &json!(1))
        );
        assert_eq!(props["id"]["type"], json!(["string", "integer", "null"]));
        assert_eq!(props["vars"]["anyOf"][0]["$ref"], "#/$defs/Expr");

        // The inline upstream is the upstream kind's own schema.
        assert_eq!(props["upstream"]["anyOf"][0]["$ref"], "#/$defs/Upstream");
        let mut upstream = json_schema(Kind::Upstreams);
        for meta in ["$schema", "$defs", "title"] {
            upstream.as_object_mut().unwrap().remove(meta);
        }
        assert_eq!(schema["$defs"]["Upstream"], upstream);
    }

    #[test]
    fn upstream_enums_defaults_and_ranges() {
        let schema = json_schema(Kind::Upstreams);
        let defs = &schema["$defs"];
        let props = &schema["properties"];
        assert_eq!(
            schema["anyOf"],
            json!([{"required": ["nodes"]}, {"required": ["discovery_type", "service_name"]}])
        );
        let names = |def: &str| -> Vec<String> {
            let def = &defs[def];
            let variants = def["oneOf"]
                .as_array()
                .map_or(vec![def.clone()], Clone::clone);
            variants
                .iter()
                .flat_map(|v| match &v["const"] {
                    Value::String(s) => vec![s.clone()],
                    _ => v["enum"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap().to_owned())
                        .collect(),
                })
                .collect()
        };
        assert_eq!(props["type"]["$ref"], "#/$defs/UpstreamType");
        assert_eq!(
            names("UpstreamType"),
            ["roundrobin", "chash", "least_conn", "ewma"]
        );
        assert_eq!(props["type"]["default"], "roundrobin");
        assert_eq!(
            names("HashOn"),
            ["vars", "header", "cookie", "consumer", "vars_combinations"]
        );
        assert_eq!(names("PassHost"), ["pass", "node", "rewrite"]);
        assert_eq!(
            names("Scheme"),
            ["http", "https", "grpc", "grpcs", "tcp", "tls", "udp"]
        );
        assert_eq!(props["scheme"]["default"], "http");
        assert_eq!(
            (&props["retries"]["minimum"], &props["retries"]["maximum"]),
            (&json!(0), &json!(100))
        );
        let port = &defs["NodeSpec"]["properties"]["port"];
        assert_eq!(
            (&port["minimum"], &port["maximum"]),
            (&json!(1), &json!(65535))
        );
        assert_eq!(defs["KeepalivePool"]["properties"]["size"]["default"], 320);
        assert_eq!(defs["UpstreamTls"]["properties"]["verify"]["default"], true);
        let outlier = &defs["OutlierDetection"]["properties"];
        assert_eq!(outlier["consecutive_5xx"]["default"], 5);
        assert_eq!(
            (
                &outlier["max_ejection_percent"]["minimum"],
                &outlier["max_ejection_percent"]["maximum"]
            ),
            (&json!(0), &json!(100))
        );
        assert_eq!(outlier["base_ejection_time"]["minimum"], 0.001);
    }

    #[test]
    fn ssl_protocols_are_the_supported_tls_versions() {
        let schema = json_schema(Kind::Ssls);
        assert_eq!(schema["required"], json!(["cert", "key"]));
        assert_eq!(
            schema["$defs"]["TlsVersion"]["enum"],
            json!(["TLSv1.2", "TLSv1.3"])
        );
    }

    /// What a schema says of `value`'s top level: an object, with every required property and,
    /// where the schema closes the object, no other.
    fn top_level_fits(schema: &Value, value: &Value) -> bool {
        let Some(object) = value.as_object() else {
            return false;
        };
        let has_all = |required: &Value| {
            let mut names = required.as_array().into_iter().flatten();
            names.all(|name| object.contains_key(name.as_str().unwrap()))
        };
        let alternatives = schema["anyOf"].as_array();
        let closed = schema["additionalProperties"] == false;
        let known = schema["properties"].as_object().unwrap();
        has_all(&schema["required"])
            && alternatives.is_none_or(|alts| alts.iter().any(|alt| has_all(&alt["required"])))
            && (!closed || object.keys().all(|k| known.contains_key(k)))
    }

    /// Parsing and the schema agree on examples whose only possible faults are at the top level
    /// (cross-field checks, which the schema does not express, are left out on purpose).
    #[test]
    fn schema_and_parser_agree_on_required_and_unknown_fields() {
        let pem = ecdsa(&["a.test"]);
        let nodes = json!({"127.0.0.1:1980": 1});
        let examples = [
            (
                Kind::Routes,
                json!({"uri": "/a", "upstream": {"nodes": nodes}}),
                true,
            ),
            (
                Kind::Routes,
                json!({"id": 1, "uris": ["/a", "/b/*"], "upstream_id": "u", "methods": ["GET"]}),
                true,
            ),
            (
                Kind::Routes,
                json!({"uri": "/a", "upstream_id": 1, "upstrem": {}}),
                false,
            ),
            (Kind::Routes, json!(["/a"]), false),
            (
                Kind::Services,
                json!({"upstream_id": 7, "hosts": ["a.test"], "enable_websocket": true}),
                true,
            ),
            (
                Kind::Services,
                json!({"upstream_id": 7, "uri": "/a"}),
                false,
            ),
            (
                Kind::Upstreams,
                json!({"nodes": nodes, "type": "chash", "key": "remote_addr"}),
                true,
            ),
            (
                Kind::Upstreams,
                json!({"nodes": [{"host": "127.0.0.1", "port": 80, "weight": 1}]}),
                true,
            ),
            (Kind::Upstreams, json!({"type": "roundrobin"}), false),
            (
                Kind::Upstreams,
                json!({"nodes": nodes, "timeouts": {}}),
                false,
            ),
            (Kind::GlobalRules, json!({"id": "g", "plugins": {}}), true),
            (Kind::GlobalRules, json!({"id": "g"}), false),
            (
                Kind::PluginConfigs,
                json!({"plugins": {}, "desc": "none"}),
                true,
            ),
            (
                Kind::PluginConfigs,
                json!({"plugins": {}, "name": "p", "enable": true}),
                false,
            ),
            (
                Kind::Ssls,
                json!({"cert": pem.cert, "key": pem.key, "snis": ["a.test"]}),
                true,
            ),
            (
                Kind::Ssls,
                json!({"cert": pem.cert, "snis": ["a.test"]}),
                false,
            ),
            (
                Kind::Ssls,
                json!({"cert": pem.cert, "key": pem.key, "sni": "a.test", "ca": "x"}),
                false,
            ),
            (
                Kind::Consumers,
                json!({"username": "jack", "plugins": {"key-auth": {"key": "k"}}}),
                true,
            ),
            (
                Kind::StreamRoutes,
                json!({"id": 1, "server_port": 9100}),
                true,
            ),
            (Kind::Secrets, json!("vault"), false),
        ];
        for (kind, value, valid) in examples {
            let parsed = Resource::from_json(kind, &value);
            assert_eq!(parsed.is_ok(), valid, "{kind} {value}: {parsed:?}");
            assert_eq!(
                top_level_fits(&json_schema(kind), &value),
                valid,
                "{kind} {value}"
            );
        }
    }
}
