//! `secrets`: the settings of a secret manager (`vault/<id>`, `aws/<id>`, `gcp/<id>`), checked
//! as APISIX checks each manager's. This build stores them for APISIX's tools and reaches no
//! manager itself.

use serde_json::Value;

use crate::error::FieldError;

/// A field of a manager's settings and what it must be.
struct Field {
    name: &'static str,
    required: bool,
    kind: FieldKind,
}

#[derive(Clone, Copy)]
enum FieldKind {
    Text,
    /// A URL with a scheme and a host (APISIX's `uri_def`).
    Url,
    Flag,
}

const fn field(name: &'static str, required: bool, kind: FieldKind) -> Field {
    Field {
        name,
        required,
        kind,
    }
}

const VAULT: &[Field] = &[
    field("uri", true, FieldKind::Url),
    field("prefix", true, FieldKind::Text),
    field("token", true, FieldKind::Text),
    field("namespace", false, FieldKind::Text),
];
const AWS: &[Field] = &[
    field("access_key_id", true, FieldKind::Text),
    field("secret_access_key", true, FieldKind::Text),
    field("session_token", false, FieldKind::Text),
    field("region", false, FieldKind::Text),
    field("endpoint_url", false, FieldKind::Url),
];
const GCP: &[Field] = &[
    field("auth_file", false, FieldKind::Text),
    field("ssl_verify", false, FieldKind::Flag),
];
const GCP_AUTH_CONFIG: &[Field] = &[
    field("client_email", true, FieldKind::Text),
    field("private_key", true, FieldKind::Text),
    field("project_id", true, FieldKind::Text),
    field("token_uri", false, FieldKind::Text),
    field("entries_uri", false, FieldKind::Text),
];

/// Checks a secret's settings against its manager's (named by its id, `<manager>/<id>`).
pub(crate) fn validate(value: &Value, errors: &mut Vec<FieldError>) {
    let Some((manager, _)) = value
        .get("id")
        .and_then(Value::as_str)
        .and_then(|id| id.split_once('/'))
    else {
        errors.push(FieldError::new("id", "must be `<manager>/<id>`"));
        return;
    };
    match manager {
        "vault" => fields(value, VAULT, "", errors),
        "aws" => fields(value, AWS, "", errors),
        "gcp" => {
            fields(value, GCP, "", errors);
            match (value.get("auth_config"), value.get("auth_file")) {
                (Some(config @ Value::Object(_)), None) => {
                    fields(config, GCP_AUTH_CONFIG, "auth_config.", errors);
                    let scope = config.get("scope");
                    let strings = |items: &Vec<Value>| items.iter().all(Value::is_string);
                    if scope.is_some_and(|s| !s.as_array().is_some_and(strings)) {
                        errors.push(FieldError::new(
                            "auth_config.scope",
                            "must be a list of strings",
                        ));
                    }
                }
                (Some(_), None) => {
                    errors.push(FieldError::new("auth_config", "must be an object"));
                }
                (None, Some(_)) => {}
                _ => errors.push(FieldError::new(
                    "auth_config",
                    "give `auth_config` or `auth_file`, one of them",
                )),
            }
        }
        // APISIX's words.
        other => errors.push(FieldError::new(
            "id",
            format!("invalid secret manager: {other}"),
        )),
    }
}

fn fields(value: &Value, expected: &[Field], prefix: &str, errors: &mut Vec<FieldError>) {
    for field in expected {
        let path = format!("{prefix}{}", field.name);
        let Some(given) = value.get(field.name) else {
            if field.required {
                errors.push(FieldError::new(path, "is required"));
            }
            continue;
        };
        let problem = match field.kind {
            FieldKind::Text => (!given.is_string()).then_some("must be a string"),
            FieldKind::Flag => (!given.is_boolean()).then_some("must be true or false"),
            FieldKind::Url => (!given.as_str().is_some_and(is_url))
                .then_some("must be a URL with a scheme and a host, as `http://127.0.0.1:8200`"),
        };
        if let Some(problem) = problem {
            errors.push(FieldError::new(path, problem));
        }
    }
}

/// `scheme://host[:port]...`, the host a name, an IPv4 address or a bracketed IPv6 one.
fn is_url(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map(|(h, _)| h),
        None => rest.split([':', '/', '?']).next(),
    };
    !scheme.is_empty()
        && !scheme.contains('/')
        && host.is_some_and(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::config::resource_errors;
    use crate::Kind;

    fn errors(value: Value) -> Vec<String> {
        resource_errors(Kind::Secrets, value)
    }

    #[test]
    fn each_manager_has_its_settings_checked() {
        let vault = json!({"id": "vault/1", "uri": "http://127.0.0.1:8200", "prefix": "kv/apisix", "token": "t"});
        assert!(errors(vault).is_empty());
        assert_eq!(
            errors(json!({"id": "vault/1", "uri": "127.0.0.1:8200", "token": 1})),
            [
                "uri: must be a URL with a scheme and a host, as `http://127.0.0.1:8200`",
                "prefix: is required",
                "token: must be a string",
            ]
        );
        assert!(errors(
            json!({"id": "aws/1", "access_key_id": "a", "secret_access_key": "s",
            "endpoint_url": "http://[::1]:4566"})
        )
        .is_empty());
        assert_eq!(
            errors(json!({"id": "aws/1", "access_key_id": "a"})),
            ["secret_access_key: is required"]
        );
        assert!(errors(json!({"id": "gcp/1", "auth_file": "/etc/gcp.json"})).is_empty());
        assert_eq!(
            errors(
                json!({"id": "gcp/1", "auth_config": {"client_email": "e", "private_key": "k"}})
            ),
            ["auth_config.project_id: is required"]
        );
        assert_eq!(
            errors(json!({"id": "gcp/1", "ssl_verify": true})),
            ["auth_config: give `auth_config` or `auth_file`, one of them"]
        );
        assert_eq!(
            errors(json!({"id": "azure/1", "token": "t"})),
            ["id: invalid secret manager: azure"]
        );
    }
}
