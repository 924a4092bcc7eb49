//! PATCH: a JSON merge of the body into the stored value, or the replacement of one field
//! named by a sub-path (`/routes/1/upstream/nodes`), with APISIX's rules.

use serde_json::{Map, Value};

/// Merges `patch` into `target`: objects merge key by key, `null` deletes a key, anything
/// else (arrays included) replaces what was there.
pub(crate) fn merge(target: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (name, value) in patch {
        match value {
            Value::Null => drop(target.remove(&name)),
            Value::Object(inner) => match target.get_mut(&name) {
                Some(Value::Object(existing)) => merge(existing, inner),
                _ => {
                    let mut fresh = Map::new();
                    merge(&mut fresh, inner);
                    target.insert(name, Value::Object(fresh));
                }
            },
            other => drop(target.insert(name, other)),
        }
    }
}

/// Replaces the field at `path` (object keys) with `value`. Missing objects on the way are
/// created; a path through something that is not an object is an error naming that part.
pub(crate) fn replace_at(
    target: &mut Map<String, Value>,
    path: &[String],
    value: Value,
) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty sub-path".to_owned());
    };
    let mut object = target;
    for (depth, name) in parents.iter().enumerate() {
        let slot = object
            .entry(name.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        object = match slot {
            Value::Object(inner) => inner,
            _ => return Err(format!("invalid sub-path: /{}", path[..=depth].join("/"))),
        };
    }
    object.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn merges_objects_deletes_nulls_and_replaces_arrays() {
        let mut route = object(json!({
            "methods": ["GET"],
            "upstream": {"type": "roundrobin", "nodes": {"a:1": 1, "b:1": 1}},
        }));
        merge(
            &mut route,
            object(json!({
                "methods": ["POST"],
                "upstream": {"nodes": {"a:1": null, "c:1": 5}},
                "desc": {"x": null, "y": 1},
            })),
        );
        assert_eq!(
            Value::Object(route),
            json!({
                "methods": ["POST"],
                "upstream": {"type": "roundrobin", "nodes": {"b:1": 1, "c:1": 5}},
                "desc": {"y": 1},
            })
        );
    }

    #[test]
    fn replaces_one_field_by_sub_path() {
        let mut route = object(json!({"upstream": {"nodes": {"a:1": 1}}, "uri": "/a"}));
        replace_at(
            &mut route,
            &["upstream".into(), "nodes".into()],
            json!({"b:1": 1}),
        )
        .unwrap();
        assert_eq!(route["upstream"]["nodes"], json!({"b:1": 1}));
        let err = replace_at(&mut route, &["uri".into(), "x".into()], json!(1)).unwrap_err();
        assert_eq!(err, "invalid sub-path: /uri");
    }
}
