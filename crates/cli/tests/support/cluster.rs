//! Gateway nodes on a shared etcd prefix, all with one Admin API key.

use super::Pylon;

pub const ADMIN_KEY: &str = "cluster-admin-key";

/// The etcd prefix the nodes share.
pub const PREFIX: &str = "/pylon-test";

/// A node on `endpoints` with `role`; `dir` may hold the data dir (node id, local copy) of an
/// earlier run.
pub fn node(endpoints: &[String], role: &str, dir: tempfile::TempDir) -> Pylon {
    let config = node_config(endpoints, role);
    Pylon::run_node(dir, &config).unwrap_or_else(|e| panic!("{role} node did not start: {e}"))
}

/// The node config of [`node`]: one worker, every listener on a free port.
pub fn node_config(endpoints: &[String], role: &str) -> String {
    let endpoints = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "deployment:\n  role: {role}\n\
         proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 1\n  https:\n    listen: [\"127.0.0.1:0\"]\n\
         control:\n  listen: \"127.0.0.1:0\"\n\
         metrics:\n  listen: \"127.0.0.1:0\"\n\
         admin:\n  listen: \"127.0.0.1:0\"\n  admin_key: [{{name: admin, key: {ADMIN_KEY}, role: admin}}]\n\
         data_encryption:\n  keyring: [\"a shared cluster secret\"]\n\
         config:\n  source: etcd\n  data_dir: data\n  etcd:\n    endpoints: [{endpoints}]\n    prefix: {PREFIX}\n    timeout: 2\n\
         log:\n  level: info\n"
    )
}
