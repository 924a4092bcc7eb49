//! The schema endpoints: a kind's JSON Schema (`GET /apisix/admin/schema/<name>`), and the
//! check of one body against a kind without storing it
//! (`POST /apisix/admin/schema/validate/<kind>`).

use http::StatusCode;
use pylon_model::{Kind, Resource};
use serde_json::Value;

use crate::response::Reply;

/// The kind a schema name means: the plural of the resource paths (`routes`), or APISIX's
/// singular schema names (`route`, `global_rule`, `ssl`).
fn kind_named(name: &str) -> Option<Kind> {
    Kind::parse(name).or_else(|| {
        Kind::ALL
            .into_iter()
            .find(|kind| kind.as_str().strip_suffix('s') == Some(name))
    })
}

pub(crate) fn schema(name: &str) -> Reply {
    match kind_named(name) {
        Some(kind) => Reply::json(StatusCode::OK, pylon_model::json_schema(kind)),
        None => Reply::bad_request(format!("not found schema: {name}")),
    }
}

pub(crate) fn validate(kind_name: &str, body: Option<Value>) -> Reply {
    let Some(kind) = Kind::parse(kind_name) else {
        return Reply::error(
            StatusCode::NOT_FOUND,
            format!("Unsupported resource type: {kind_name}"),
        );
    };
    let Some(body) = body else {
        return Reply::bad_request("missing configurations");
    };
    match Resource::from_json(kind, &body) {
        Ok(_) => Reply::empty(StatusCode::OK),
        Err(errors) => Reply::invalid(&errors.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plural_or_apisix_singular() {
        assert_eq!(kind_named("routes"), Some(Kind::Routes));
        assert_eq!(kind_named("route"), Some(Kind::Routes));
        assert_eq!(kind_named("global_rule"), Some(Kind::GlobalRules));
        assert_eq!(kind_named("ssl"), Some(Kind::Ssls));
        assert_eq!(kind_named("plugin_metadata"), Some(Kind::PluginMetadata));
        assert_eq!(kind_named("nope"), None);
    }
}
