//! What the Admin API says about the plugins of this build: their names, priorities and
//! JSON Schemas (APISIX's `/apisix/admin/plugins` endpoints).

use http::StatusCode;
use pylon_plugins::{Descriptor, CATALOG};
use serde_json::{json, Map, Value};

use crate::query::Query;
use crate::response::Reply;

/// `GET /apisix/admin/plugins/list`: the names, sorted. Stream (L4) plugins: none yet.
pub(crate) fn list(query: &Query) -> Reply {
    let names: Vec<&str> = match query.get("subsystem") {
        Some("stream") => Vec::new(),
        _ => {
            let mut names: Vec<&str> = CATALOG.iter().map(|d| d.name).collect();
            names.sort_unstable();
            names
        }
    };
    Reply::json(StatusCode::OK, json!(names))
}

/// `GET /apisix/admin/plugins?all=true`: every plugin with its priority and schemas.
pub(crate) fn all() -> Reply {
    let plugins: Map<String, Value> = CATALOG
        .iter()
        .map(|d| (d.name.to_owned(), description(d)))
        .collect();
    Reply::json(StatusCode::OK, Value::Object(plugins))
}

/// `GET /apisix/admin/plugins/<name>`: the schema of its configuration on a route, with
/// `schema_type=consumer` on a consumer (authentication plugins), with `schema_type=metadata`
/// of its `plugin_metadata` (APISIX serves that one only in `?all=true`).
pub(crate) fn schema(name: &str, query: &Query) -> Reply {
    let Some(descriptor) = pylon_plugins::find(name) else {
        return Reply::error(StatusCode::NOT_FOUND, format!("plugin not found: {name}"));
    };
    match query.get("schema_type") {
        Some("consumer") => match &descriptor.credential {
            Some(credential) => Reply::json(StatusCode::OK, (credential.schema)()),
            None => Reply::bad_request(format!("plugin {name} has no consumer schema")),
        },
        Some("metadata") => match &descriptor.metadata {
            Some(metadata) => Reply::json(StatusCode::OK, (metadata.schema)()),
            None => Reply::bad_request(format!("plugin {name} has no metadata schema")),
        },
        _ => Reply::json(StatusCode::OK, (descriptor.schema)()),
    }
}

fn description(descriptor: &Descriptor) -> Value {
    let mut described = json!({
        "priority": descriptor.priority,
        "schema": (descriptor.schema)(),
    });
    if let Some(credential) = &descriptor.credential {
        described["type"] = json!("auth");
        described["consumer_schema"] = (credential.schema)();
    }
    if let Some(metadata) = &descriptor.metadata {
        described["metadata_schema"] = (metadata.schema)();
    }
    described
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_names_every_plugin_once_in_order() {
        let reply = list(&Query::parse(""));
        let names: Vec<String> = serde_json::from_value(reply.body.clone().unwrap()).unwrap();
        assert!(names.contains(&"key-auth".to_owned()), "{names:?}");
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        let stream = list(&Query::parse("subsystem=stream"));
        assert_eq!(stream.body.unwrap(), json!([]));
    }

    #[test]
    fn schemas_are_served_per_place() {
        let route = schema("key-auth", &Query::parse(""));
        assert_eq!(route.status, StatusCode::OK);
        assert!(route.body.clone().unwrap()["properties"]["header"].is_object());
        let consumer = schema("key-auth", &Query::parse("schema_type=consumer"));
        assert_eq!(consumer.body.unwrap()["required"], json!(["key"]));
        assert_eq!(
            schema("nope", &Query::parse("")).status,
            StatusCode::NOT_FOUND
        );
        let metadata = schema("cors", &Query::parse("schema_type=metadata"));
        assert_eq!(metadata.status, StatusCode::OK);
        assert!(metadata.body.unwrap()["properties"]["allow_origins"].is_object());
        let none = schema("key-auth", &Query::parse("schema_type=metadata"));
        assert_eq!(none.status, StatusCode::BAD_REQUEST);
        let all = all().body.unwrap();
        assert_eq!(all["key-auth"]["type"], "auth");
        assert_eq!(
            all["cors"]["metadata_schema"]["properties"]["allow_origins"]["type"],
            "object"
        );
        assert!(all["key-auth"].get("metadata_schema").is_none());
    }
}
