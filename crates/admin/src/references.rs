//! The references between resources (a route's `upstream_id`, a consumer's `group_id`, ...):
//! a write must point at resources that exist, and a delete is refused while something still
//! points at its resource.

use pylon_model::{FieldError, Key, Kind};
use pylon_store::View;
use serde_json::Value;

/// `from`'s field `field` holds the id of a `to`.
struct Reference {
    from: Kind,
    field: &'static str,
    to: Kind,
    /// How APISIX names the referring resource in its refusal (`route [1] is still using it`).
    label: &'static str,
}

const REFERENCES: &[Reference] = &[
    // In the order APISIX checks them: the first missing one is the one its refusal names.
    Reference {
        from: Kind::Routes,
        field: "upstream_id",
        to: Kind::Upstreams,
        label: "route",
    },
    Reference {
        from: Kind::Routes,
        field: "service_id",
        to: Kind::Services,
        label: "route",
    },
    Reference {
        from: Kind::Routes,
        field: "plugin_config_id",
        to: Kind::PluginConfigs,
        label: "route",
    },
    Reference {
        from: Kind::Services,
        field: "upstream_id",
        to: Kind::Upstreams,
        label: "service",
    },
    Reference {
        from: Kind::StreamRoutes,
        field: "upstream_id",
        to: Kind::Upstreams,
        label: "stream_route",
    },
    Reference {
        from: Kind::StreamRoutes,
        field: "service_id",
        to: Kind::Services,
        label: "stream_route",
    },
    Reference {
        from: Kind::Consumers,
        field: "group_id",
        to: Kind::ConsumerGroups,
        label: "consumer",
    },
];

/// An id as APISIX writes them: a string or a non-negative integer.
pub(crate) fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// The resources `value`, a `kind`, points at: `(field, key)`.
pub(crate) fn outgoing(kind: Kind, value: &Value) -> Vec<(&'static str, Key)> {
    REFERENCES
        .iter()
        .filter(|r| r.from == kind)
        .filter_map(|r| {
            let id = id_text(value.get(r.field)?)?;
            Some((r.field, Key::new(r.to, id)))
        })
        .collect()
}

/// APISIX's refusal of a write that points at a resource for which `exists` is false, for the
/// first such reference: `failed to fetch plugin config info by plugin config id [9], response
/// code: 404`. Its words name the field, and scripts match them.
pub(crate) fn first_missing(
    kind: Kind,
    value: &Value,
    exists: impl Fn(&Key) -> bool,
) -> Option<String> {
    let (_, key) = outgoing(kind, value)
        .into_iter()
        .find(|(_, key)| !exists(key))?;
    let what = crate::response::singular(key.kind);
    Some(format!(
        "failed to fetch {what} info by {what} id [{}], response code: 404",
        key.id
    ))
}

/// Errors for every reference of `value` to a resource for which `exists` is false.
pub(crate) fn missing(kind: Kind, value: &Value, exists: impl Fn(&Key) -> bool) -> Vec<FieldError> {
    let mut errors: Vec<FieldError> = outgoing(kind, value)
        .into_iter()
        .filter(|(_, key)| !exists(key))
        .map(|(field, key)| {
            FieldError::new(
                field,
                format!(
                    "{} `{}` does not exist",
                    crate::response::singular(key.kind),
                    key.id
                ),
            )
        })
        .collect();
    // A credential belongs to a consumer that must exist.
    if kind == Kind::Credentials {
        if let Some(username) = value
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| id.split_once("/credentials/"))
            .map(|(username, _)| username)
        {
            if !exists(&Key::new(Kind::Consumers, username)) {
                errors.push(FieldError::new(
                    "",
                    format!("consumer `{username}` does not exist"),
                ));
            }
        }
    }
    errors
}

/// The resources in `view` that point at `target`.
pub(crate) fn referrers<'v>(view: &'v View, target: &Key) -> Vec<&'v Key> {
    REFERENCES
        .iter()
        .filter(|r| r.to == target.kind)
        .flat_map(|r| {
            view.of_kind(r.from).filter(move |entry| {
                entry.value.get(r.field).and_then(id_text).as_deref() == Some(target.id.as_str())
            })
        })
        .map(|entry| &entry.key)
        .collect()
}

/// APISIX's refusal to delete `target` while `referrer` uses it, or `None` if nothing does.
pub(crate) fn delete_refusal(view: &View, target: &Key) -> Option<String> {
    let referrer = *referrers(view, target).first()?;
    let label = REFERENCES
        .iter()
        .find(|r| r.from == referrer.kind && r.to == target.kind)
        .map_or("resource", |r| r.label);
    let what = match target.kind {
        // APISIX's wording, kept for the scripts that match it.
        Kind::Services => "service directly",
        other => crate::response::singular(other),
    };
    Some(format!(
        "can not delete this {what}, {label} [{}] is still using it now",
        referrer.id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_references_by_string_or_integer_id() {
        let refs = outgoing(
            Kind::Routes,
            &json!({"upstream_id": 1, "service_id": "s", "plugin_config_id": null}),
        );
        assert_eq!(
            refs,
            vec![
                ("upstream_id", Key::new(Kind::Upstreams, "1")),
                ("service_id", Key::new(Kind::Services, "s")),
            ]
        );
        let route = json!({"upstream_id": 1, "plugin_config_id": 9});
        let upstream = Key::new(Kind::Upstreams, "1");
        assert_eq!(
            first_missing(Kind::Routes, &route, |k| *k == upstream).as_deref(),
            Some("failed to fetch plugin config info by plugin config id [9], response code: 404")
        );
        assert_eq!(
            first_missing(Kind::Consumers, &json!({"group_id": "g"}), |_| false).as_deref(),
            Some(
                "failed to fetch consumer group info by consumer group id [g], response code: 404"
            )
        );
        assert_eq!(first_missing(Kind::Routes, &route, |_| true), None);
        // Every reference missing, the one APISIX checks first is named.
        let dangling = json!({"service_id": "s", "plugin_config_id": 9, "upstream_id": "u"});
        assert_eq!(
            first_missing(Kind::Routes, &dangling, |_| false).as_deref(),
            Some("failed to fetch upstream info by upstream id [u], response code: 404")
        );
        let errors = missing(Kind::Consumers, &json!({"group_id": "g"}), |_| false);
        assert_eq!(
            errors[0].to_string(),
            "group_id: consumer group `g` does not exist"
        );
        let errors = missing(
            Kind::Credentials,
            &json!({"id": "jack/credentials/a"}),
            |_| false,
        );
        assert_eq!(errors[0].to_string(), "consumer `jack` does not exist");
    }
}
