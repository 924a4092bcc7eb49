//! The references between resources (a route's `upstream_id`, a consumer's `group_id`, and
//! those nested in plugins and stream routes' protocols, as `grpc-transcode`'s `proto_id`): a
//! write must point at resources that exist, and a delete is refused while something still
//! points at its resource.

use pylon_model::{FieldError, Holders, Key, Kind, NESTED_REFERENCES};
use pylon_store::View;
use serde_json::Value;

/// `from`'s field `field` holds the id of a `to`.
struct Reference {
    from: Kind,
    field: &'static str,
    to: Kind,
}

const REFERENCES: &[Reference] = &[
    // In the order APISIX checks them: the first missing one is the one its refusal names.
    Reference {
        from: Kind::Routes,
        field: "upstream_id",
        to: Kind::Upstreams,
    },
    Reference {
        from: Kind::Routes,
        field: "service_id",
        to: Kind::Services,
    },
    Reference {
        from: Kind::Routes,
        field: "plugin_config_id",
        to: Kind::PluginConfigs,
    },
    Reference {
        from: Kind::Services,
        field: "upstream_id",
        to: Kind::Upstreams,
    },
    Reference {
        from: Kind::StreamRoutes,
        field: "upstream_id",
        to: Kind::Upstreams,
    },
    Reference {
        from: Kind::StreamRoutes,
        field: "service_id",
        to: Kind::Services,
    },
    Reference {
        from: Kind::Consumers,
        field: "group_id",
        to: Kind::ConsumerGroups,
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

/// Errors for every reference nested in `value`, a `kind` (a plugin's `proto_id`, say), to a
/// resource for which `exists` is false; paths are relative to the resource.
pub(crate) fn missing_nested(
    kind: Kind,
    value: &Value,
    exists: impl Fn(&Key) -> bool,
) -> Vec<FieldError> {
    Holders::of(kind, value)
        .references()
        .into_iter()
        .filter(|found| !exists(&found.target))
        .map(|found| found.missing())
        .collect()
}

/// Every resource `value`, a `kind`, points at, by a top-level field or a nested one.
pub(crate) fn targets(kind: Kind, value: &Value) -> Vec<Key> {
    let nested = Holders::of(kind, value).references();
    outgoing(kind, value)
        .into_iter()
        .map(|(_, key)| key)
        .chain(nested.into_iter().map(|found| found.target))
        .collect()
}

/// The resources in `view` that point at `target`: by a top-level field first, then by one
/// nested in their plugins or protocol.
pub(crate) fn referrers<'v>(view: &'v View, target: &Key) -> Vec<&'v Key> {
    let direct = REFERENCES
        .iter()
        .filter(|r| r.to == target.kind)
        .flat_map(|r| {
            view.of_kind(r.from).filter(move |entry| {
                entry.value.get(r.field).and_then(id_text).as_deref() == Some(target.id.as_str())
            })
        });
    let nested = NESTED_REFERENCES
        .iter()
        .any(|r| r.to == target.kind)
        .then(|| view.entries.values())
        .into_iter()
        .flatten()
        .filter(|entry| {
            Holders::of(entry.key.kind, &entry.value)
                .references()
                .iter()
                .any(|found| found.target == *target)
        });
    direct.chain(nested).map(|entry| &entry.key).collect()
}

/// How APISIX names a referring resource in its refusal to delete (`route [1] is still using
/// it now`).
fn label(kind: Kind) -> &'static str {
    match kind {
        Kind::Routes => "route",
        Kind::Services => "service",
        Kind::StreamRoutes => "stream_route",
        Kind::Consumers => "consumer",
        Kind::ConsumerGroups => "consumer_group",
        Kind::PluginConfigs => "plugin_config",
        Kind::GlobalRules => "global_rule",
        _ => "resource",
    }
}

/// APISIX's refusal to delete `target` while `referrer` uses it, or `None` if nothing does.
pub(crate) fn delete_refusal(view: &View, target: &Key) -> Option<String> {
    let referrer = *referrers(view, target).first()?;
    let label = label(referrer.kind);
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

    fn view(entries: &[(Kind, &str, Value)]) -> View {
        let entries = entries.iter().map(|(kind, id, value)| {
            std::sync::Arc::new(pylon_store::Entry {
                key: Key::new(*kind, *id),
                value: value.clone(),
                create_revision: 1,
                mod_revision: 1,
            })
        });
        View {
            revision: 1,
            entries: entries.collect(),
            live: true,
        }
    }

    #[test]
    fn a_proto_or_stream_route_named_inside_plugins_or_commands_is_in_use() {
        let transcode = json!({"plugins": {"grpc-transcode": {"proto_id": 1}}});
        let bridge = json!({"plugins": {"websocket-frames": {"stream_route_id": "im"}}});
        let frames = json!({"protocol": {"name": "pylon-frames", "conf": {
            "commands": {"4097": {"uri": "/send", "proto_id": "chat"}}
        }}});
        let view = view(&[
            (Kind::Routes, "r1", transcode.clone()),
            (Kind::GlobalRules, "g", transcode),
            (Kind::Consumers, "jack", bridge),
            (Kind::StreamRoutes, "im", frames),
        ]);
        let proto = Key::new(Kind::Protos, "1");
        assert_eq!(
            referrers(&view, &proto),
            [
                &Key::new(Kind::Routes, "r1"),
                &Key::new(Kind::GlobalRules, "g")
            ]
        );
        assert_eq!(
            delete_refusal(&view, &proto).as_deref(),
            Some("can not delete this proto, route [r1] is still using it now")
        );
        assert_eq!(
            delete_refusal(&view, &Key::new(Kind::Protos, "chat")).as_deref(),
            Some("can not delete this proto, stream_route [im] is still using it now")
        );
        assert_eq!(
            delete_refusal(&view, &Key::new(Kind::StreamRoutes, "im")).as_deref(),
            Some("can not delete this stream route, consumer [jack] is still using it now")
        );
        assert_eq!(delete_refusal(&view, &Key::new(Kind::Protos, "2")), None);

        let errors = missing_nested(
            Kind::Routes,
            &view.entries[&Key::new(Kind::Routes, "r1")].value,
            |_| false,
        );
        assert_eq!(
            errors[0].to_string(),
            "plugins.grpc-transcode.proto_id: proto `1` does not exist"
        );
    }
}
