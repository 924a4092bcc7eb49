//! `GET /pylon/admin/nodes`: the gateway nodes, as each registers itself in the store (its
//! id, labels, addresses, version, the revision it serves, the canaries it serves, and when it
//! was last seen).

use pylon_model::Kind;
use serde_json::Value;

use crate::response::{listed, Reply};
use crate::writer::Backend;

pub(crate) fn list(backend: &Backend) -> Result<Reply, Reply> {
    let view = backend.replica.view();
    let nodes: Vec<Value> = view.of_kind(Kind::Nodes).map(|e| e.value.clone()).collect();
    Ok(listed(nodes))
}
