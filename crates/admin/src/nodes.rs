//! `GET /pylon/admin/nodes`: the gateway nodes, as each registers itself in the store (its
//! id, labels, addresses, version, the revision it serves, the canaries it serves, and when it
//! was last seen); `DELETE /pylon/admin/nodes/<id>` forgets one that is gone (a node still
//! running registers itself again at its next beat).

use http::StatusCode;
use pylon_model::{Key, Kind};
use pylon_store::{Precondition, Txn};
use serde_json::{json, Value};

use crate::audit::Record;
use crate::auth::forbidden;
use crate::response::{listed, Reply};
use crate::writer::{Backend, Plan};

pub(crate) fn list(backend: &Backend) -> Result<Reply, Reply> {
    let view = backend.replica.view();
    let nodes: Vec<Value> = view.of_kind(Kind::Nodes).map(|e| e.value.clone()).collect();
    Ok(listed(nodes))
}

pub(crate) async fn forget(backend: &Backend, record: &Record, id: &str) -> Result<Reply, Reply> {
    if !record.caller.is_platform_admin() {
        return Err(forbidden("only a platform admin forgets nodes"));
    }
    let key = Key::new(Kind::Nodes, id);
    backend
        .write(record, |view| {
            let entry = view.entries.get(&key).ok_or_else(Reply::not_found)?;
            let condition = Precondition::ModRevision(entry.mod_revision);
            Ok(Plan {
                txn: Txn::delete(key.clone()).when(key.clone(), condition),
                outcome: (),
            })
        })
        .await?;
    let answer = json!({ "deleted": "1", "key": key.to_string() });
    Ok(Reply::json(StatusCode::OK, answer))
}
