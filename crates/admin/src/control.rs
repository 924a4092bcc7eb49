//! The control plane's endpoints, under `/pylon/admin/`: who may do what (tenants, users,
//! login), what was done (audit, versions and rollback), what is on its way (change sets), and
//! where it is served (nodes).

use http::{Method, StatusCode};

use crate::audit::Record;
use crate::body::json_body;
use crate::change_sets;
use crate::history;
use crate::nodes;
use crate::query::Query;
use crate::response::Reply;
use crate::tenants;
use crate::writer::Backend;

pub(crate) async fn handle(
    backend: &Backend,
    record: &Record,
    method: &Method,
    path: &[String],
    query: &Query,
    body: &[u8],
) -> Reply {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    let result = match (path.as_slice(), method) {
        (["login"], &Method::POST) => tenants::login(backend, record).await,
        (["tenants", rest @ ..], _) => match json_body(body) {
            Ok(json) => tenants::tenants(backend, record, method, rest, json).await,
            Err(reply) => Err(reply),
        },
        (["users", rest @ ..], _) => match json_body(body) {
            Ok(json) => tenants::users(backend, record, method, rest, json).await,
            Err(reply) => Err(reply),
        },
        (["audit"], &Method::GET) => history::audit(backend, record, query).await,
        (["audit", "verify"], &Method::GET) => history::verify(backend, record).await,
        (["versions", rest @ ..], _) => {
            history::versions(backend, record, method, rest, query).await
        }
        (["change_sets", rest @ ..], _) => {
            change_sets::handle(backend, record, method, rest, query, body).await
        }
        (["nodes"], &Method::GET) => nodes::list(backend),
        (["nodes", id], &Method::DELETE) => nodes::forget(backend, record, id).await,
        _ => Err(Reply::error(StatusCode::NOT_FOUND, "not found")),
    };
    result.unwrap_or_else(|reply| reply)
}
