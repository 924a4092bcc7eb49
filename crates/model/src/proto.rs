//! `protos`: protobuf definitions that gRPC transcoding reads, checked as APISIX checks them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{de_opt_id, id_schema, Labels};
use crate::error::FieldError;

/// APISIX's bound on a proto's `content`: 1 MiB.
const MAX_CONTENT_LEN: usize = 1024 * 1024;

/// A protobuf definition (the text of a `.proto` file, or a base64 descriptor set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Proto {
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    pub id: Option<String>,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A description for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Key-value pairs to tag and select resources by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// The definition: 1 byte to 1 MiB.
    #[schemars(length(min = 1, max = 1_048_576))]
    pub content: String,
    /// When the resource was created, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    /// When the resource was last changed, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

impl Proto {
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        if !(1..=MAX_CONTENT_LEN).contains(&self.content.len()) {
            errors.push(FieldError::new(
                "content",
                format!("must be 1 to {MAX_CONTENT_LEN} bytes"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::config::resource_errors;
    use crate::Kind;

    fn errors(value: serde_json::Value) -> Vec<String> {
        resource_errors(Kind::Protos, value)
    }

    #[test]
    fn a_proto_needs_content_within_apisix_bounds_and_nothing_else() {
        let content = "syntax = \"proto3\";\npackage helloworld;";
        assert!(errors(json!({"id": 1, "name": "p", "desc": "d", "content": content})).is_empty());
        assert!(errors(json!({"desc": "d"}))[0].contains("missing field `content`"));
        assert_eq!(
            errors(json!({"content": ""})),
            ["content: must be 1 to 1048576 bytes"]
        );
        assert_eq!(
            errors(json!({"content": "x".repeat(1024 * 1024 + 1)})),
            ["content: must be 1 to 1048576 bytes"]
        );
        assert!(errors(json!({"content": content, "plugins": {}}))[0].contains("unknown field"));
        assert_eq!(
            errors(json!({"content": content, "labels": {"a": " "}})),
            ["labels.a: must be 1 to 256 characters without spaces"]
        );
    }
}
