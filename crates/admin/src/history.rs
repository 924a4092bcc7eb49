//! What was done: the audit log (`/pylon/admin/audit`, `/pylon/admin/audit/verify`) and the
//! versions of each resource (`/pylon/admin/versions/<kind>/<id>[/<sequence>[/rollback]]`,
//! `.../diff?from=<sequence>&to=<sequence>`).

use http::{Method, StatusCode};
use pylon_model::{Key, Kind};
use serde_json::{json, Value};

use crate::audit::{self, sequence_id, Filter, Record};
use crate::auth::forbidden;
use crate::change_sets;
use crate::identity::Caller;
use crate::query::Query;
use crate::response::{listed, Reply};
use crate::tenancy::{self, owner};
use crate::writer::Backend;

/// `GET /pylon/admin/audit?tenant_id=&user=&resource=<kind>/<id>&since=&until=` (times in
/// milliseconds since the epoch): the records, oldest first. A tenant's users see the records
/// of their tenant only.
pub(crate) async fn audit(
    backend: &Backend,
    record: &Record,
    query: &Query,
) -> Result<Reply, Reply> {
    let caller = &record.caller;
    let time = |name: &str| -> Result<Option<u64>, Reply> {
        query
            .get(name)
            .map(|t| {
                t.parse().map_err(|_| {
                    Reply::bad_request(format!("{name}: must be milliseconds since the epoch"))
                })
            })
            .transpose()
    };
    let tenant = match (&caller.tenant, query.get("tenant_id")) {
        (Some(own), Some(asked)) if own != asked => {
            return Err(forbidden(format!(
                "tenant_id: a user of `{own}` sees its own tenant's records only"
            )))
        }
        (Some(own), _) => Some(own.clone()),
        (None, asked) => asked.map(str::to_owned),
    };
    let filter = Filter {
        tenant,
        user: query.get("user").map(str::to_owned),
        resource: query.get("resource").map(str::to_owned),
        since: time("since")?,
        until: time("until")?,
    };
    let records = audit::query(&*backend.store, &filter)
        .await
        .map_err(|e| Reply::store_error(&e))?;
    Ok(listed(records))
}

/// `GET /pylon/admin/audit/verify`: walks the whole chain; the platform's only.
pub(crate) async fn verify(backend: &Backend, record: &Record) -> Result<Reply, Reply> {
    if record.caller.tenant.is_some() {
        return Err(forbidden(
            "the audit chain spans every tenant: the platform's users verify it",
        ));
    }
    let view = backend.replica.view();
    let result = audit::verify(&*backend.store, &view)
        .await
        .map_err(|e| Reply::store_error(&e))?;
    Ok(match result {
        Ok(records) => Reply::json(
            StatusCode::OK,
            json!({ "intact": true, "records": records }),
        ),
        Err(broken) => Reply::json(
            StatusCode::CONFLICT,
            json!({ "intact": false, "broken_at": broken.seq, "reason": broken.reason }),
        ),
    })
}

/// What a versions path names: a resource, and what of its versions.
struct VersionPath {
    key: Key,
    asked: Asked,
}

#[derive(Debug, PartialEq)]
enum Asked {
    Every,
    One(u64),
    /// Two, `?from=&to=`, field by field.
    Diff,
    RollbackTo(u64),
}

impl VersionPath {
    /// `<kind>/<id parts...>[/<sequence>[/rollback]]` or `.../diff`: the kind says how many
    /// parts its ids have (a credential's `<username>/credentials/<id>`, a secret's
    /// `<manager>/<id>`).
    fn parse(rest: &[&str]) -> Option<VersionPath> {
        let (kind, rest) = rest.split_first()?;
        let kind = Kind::parse(kind)?;
        let parts = match kind {
            Kind::Credentials => 3,
            Kind::Secrets => 2,
            _ => 1,
        };
        if rest.len() < parts {
            return None;
        }
        let (id, tail) = rest.split_at(parts);
        let key = Key::new(kind, id.join("/"));
        let seq = |s: &str| s.parse::<u64>().ok();
        let asked = match tail {
            [] => Asked::Every,
            ["diff"] => Asked::Diff,
            [n] => Asked::One(seq(n)?),
            [n, "rollback"] => Asked::RollbackTo(seq(n)?),
            _ => return None,
        };
        Some(VersionPath { key, asked })
    }
}

pub(crate) async fn versions(
    backend: &Backend,
    record: &Record,
    method: &Method,
    rest: &[&str],
    query: &Query,
) -> Result<Reply, Reply> {
    let path =
        VersionPath::parse(rest).ok_or_else(|| Reply::error(StatusCode::NOT_FOUND, "not found"))?;
    let caller = &record.caller;
    tenancy::check_kind(caller, path.key.kind)?;
    let versions = backend
        .store
        .history(Kind::Versions, &format!("{}/", path.key))
        .await
        .map_err(|e| Reply::store_error(&e))?;
    let versions: Vec<Value> = versions.into_iter().map(|e| e.value).collect();
    if !reaches(backend, caller, &path.key, &versions) {
        return Err(Reply::not_found());
    }
    let find = |seq: u64| {
        versions
            .iter()
            .find(|v| v["seq"].as_u64() == Some(seq))
            .ok_or_else(|| {
                Reply::error(
                    StatusCode::NOT_FOUND,
                    format!("{} has no version {seq}", path.key),
                )
            })
    };
    match (path.asked, method) {
        (Asked::Diff, &Method::GET) => {
            let number = |name: &str| {
                query
                    .get(name)
                    .and_then(|n| n.parse::<u64>().ok())
                    .ok_or_else(|| {
                        Reply::bad_request(format!(
                            "{name}: a version's sequence number is required"
                        ))
                    })
            };
            let (from, to) = (find(number("from")?)?, find(number("to")?)?);
            let mut changes = Vec::new();
            diff("", &from["value"], &to["value"], &mut changes);
            Ok(Reply::json(
                StatusCode::OK,
                json!({ "key": path.key.to_string(), "from": from["seq"], "to": to["seq"], "changes": changes }),
            ))
        }
        (Asked::Every, &Method::GET) => {
            let summaries = versions
                .iter()
                .map(|v| {
                    let mut v = v.clone();
                    if let Some(fields) = v.as_object_mut() {
                        fields.remove("value");
                    }
                    v
                })
                .collect();
            Ok(listed(summaries))
        }
        (Asked::One(seq), &Method::GET) => Ok(Reply::json(StatusCode::OK, find(seq)?.clone())),
        (Asked::RollbackTo(seq), &Method::POST) => {
            let version = find(seq)?;
            let value = version["value"].clone();
            let value = (!value.is_null()).then_some(value);
            let title = format!("roll {} back to version {seq}", path.key);
            let record = Record {
                action: format!("rollback {} to {}", path.key, sequence_id(seq)),
                ..record.clone()
            };
            change_sets::write_or_propose(backend, &record, &path.key, value, title).await
        }
        _ => Err(Reply::error(StatusCode::NOT_FOUND, "not found")),
    }
}

/// Whether the caller reaches the resource: its tenant as it is now, or as its versions say.
fn reaches(backend: &Backend, caller: &Caller, key: &Key, versions: &[Value]) -> bool {
    let view = backend.replica.view();
    let current = view.entries.get(key).map(|e| e.value.clone());
    let latest = versions
        .iter()
        .rev()
        .map(|v| &v["value"])
        .find(|v| !v.is_null())
        .cloned();
    match current.or(latest) {
        Some(value) => caller.reaches(owner(&value)),
        None => caller.tenant.is_none(),
    }
}

/// The fields that differ between `from` and `to`, by path (`plugins.limit-count.count`);
/// lists compare whole.
fn diff(path: &str, from: &Value, to: &Value, out: &mut Vec<Value>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut fields: Vec<&String> = a.keys().chain(b.keys()).collect();
            fields.sort();
            fields.dedup();
            for field in fields {
                let at = if path.is_empty() {
                    field.clone()
                } else {
                    format!("{path}.{field}")
                };
                diff(
                    &at,
                    a.get(field).unwrap_or(&Value::Null),
                    b.get(field).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(json!({ "path": path, "from": a, "to": b })),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_paths_follow_the_kinds_ids() {
        let p = VersionPath::parse(&["routes", "1", "00000000000000000042", "rollback"]).unwrap();
        assert_eq!(
            (p.key, p.asked),
            (Key::new(Kind::Routes, "1"), Asked::RollbackTo(42))
        );
        let p = VersionPath::parse(&["consumers", "jack"]).unwrap();
        assert_eq!(
            (p.key, p.asked),
            (Key::new(Kind::Consumers, "jack"), Asked::Every)
        );
        let p = VersionPath::parse(&["credentials", "jack", "credentials", "a", "7"]).unwrap();
        assert_eq!(
            (p.key.id.as_str(), p.asked),
            ("jack/credentials/a", Asked::One(7))
        );
        let p = VersionPath::parse(&["routes", "1", "diff"]).unwrap();
        assert_eq!(p.asked, Asked::Diff);
        assert!(VersionPath::parse(&["routes", "1", "x"]).is_none());
        assert!(VersionPath::parse(&["nope", "1"]).is_none());
    }

    #[test]
    fn diff_names_each_changed_field() {
        let mut out = Vec::new();
        diff(
            "",
            &json!({"uri": "/a", "plugins": {"p": {"n": 1}}, "gone": 1}),
            &json!({"uri": "/a", "plugins": {"p": {"n": 2}}, "new": [1]}),
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                json!({"path": "gone", "from": 1, "to": null}),
                json!({"path": "new", "from": null, "to": [1]}),
                json!({"path": "plugins.p.n", "from": 1, "to": 2}),
            ]
        );
    }
}
