//! Consumers, their credentials and consumer groups: who requests come from, as
//! authentication plugins identify them.
//!
//! These are checked here for their own fields; what their `plugins` hold (a key, a
//! password) is the plugins' to check, since only a plugin knows its configuration.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::{de_opt_id, id_schema, Labels, Plugins};
use crate::error::FieldError;
use crate::validate::{is_username, MAX_NAME_LEN};

/// A consumer, named by its `username`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Consumer {
    /// Letters, digits, `_` and `-`; at most 256 characters.
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[a-zA-Z0-9_\-]+$"))]
    pub username: String,
    /// A description for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desc: Option<String>,
    /// Key-value pairs to tag and select resources by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// Its credentials (authentication plugins) and the plugins that apply to its requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugins: Option<Plugins>,
    /// The consumer group whose plugins apply to its requests too.
    #[serde(
        default,
        deserialize_with = "de_opt_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "id_schema")]
    pub group_id: Option<String>,
    /// When the resource was created, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    /// When the resource was last changed, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

/// One credential of a consumer: authentication plugins only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// `<username>/credentials/<id>`, as the Admin API names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// The authentication plugin this credential configures (one, as in APISIX).
    #[serde(default, skip_serializing_if = "Plugins::is_empty")]
    #[schemars(extend("maxProperties" = 1))]
    pub plugins: Plugins,
    /// When the resource was created, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    /// When the resource was last changed, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

/// Plugins shared by the consumers that name the group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsumerGroup {
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
    /// The plugins that apply to the group's consumers' requests.
    pub plugins: Plugins,
    /// When the resource was created, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<i64>,
    /// When the resource was last changed, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
}

impl Consumer {
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        if !is_username(&self.username) {
            errors.push(FieldError::new(
                "username",
                format!("must be 1 to {MAX_NAME_LEN} letters, digits, `_` or `-`"),
            ));
        }
    }
}

impl Credential {
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        if self.plugins.len() > 1 {
            errors.push(FieldError::new(
                "plugins",
                "a credential configures one plugin",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::config::resource_errors as errors;
    use crate::Kind;

    #[test]
    fn consumers_groups_and_credentials_are_checked_field_by_field() {
        assert!(errors(
            Kind::Consumers,
            json!({"username": "jack_1-a", "group_id": 3})
        )
        .is_empty());
        assert_eq!(
            errors(Kind::Consumers, json!({"username": "jack smith"})),
            ["username: must be 1 to 256 letters, digits, `_` or `-`"]
        );
        assert_eq!(
            errors(
                Kind::Consumers,
                json!({"username": "j", "plugins": {"key-auth": "k"}})
            ),
            ["plugins.key-auth: must be an object"]
        );
        let unknown = errors(Kind::Consumers, json!({"username": "j", "colour": 1}));
        assert!(unknown[0].contains("colour"), "{unknown:?}");
        let missing = errors(Kind::ConsumerGroups, json!({"id": "g"}));
        assert!(missing[0].contains("plugins"), "{missing:?}");
        assert!(errors(
            Kind::Credentials,
            json!({"plugins": {"key-auth": {"key": "k"}}})
        )
        .is_empty());
        let typed = errors(Kind::Credentials, json!({"plugins": {}, "desc": 5}));
        assert!(typed[0].starts_with("desc:"), "{typed:?}");
        assert_eq!(
            errors(
                Kind::Credentials,
                json!({"plugins": {"key-auth": {"key": "k"}, "basic-auth": {"username": "u", "password": "p"}}})
            ),
            ["plugins: a credential configures one plugin"]
        );
        assert_eq!(
            errors(Kind::Consumers, json!({"username": "j".repeat(257)})),
            ["username: must be 1 to 256 letters, digits, `_` or `-`"]
        );
    }
}
