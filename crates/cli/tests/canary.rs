//! Canary change sets and node registration, through real nodes: on an etcd cluster, three
//! labelled nodes register themselves (`nodes/<id>`), and a change set in `canary` state is
//! served by the nodes it targets (by id, by label) while the others serve the live
//! configuration, over HTTP/1 and HTTP/2 alike, until it is aborted; a node restarted while a
//! canary is in force serves it again. A node on the embedded store registers itself too.
//!
//! The change set records are written straight into the store, as the Admin API writes them.

mod support;

#[path = "../../store/tests/support/etcd.rs"]
mod etcd;

use std::time::Duration;

use etcd::EtcdCluster;
use pylon_model::{Key, Kind};
use pylon_store::{ConfigStore, EmbeddedStore, EtcdSettings, EtcdStore, Txn};
use serde_json::{json, Value};
use support::client::{admin, get};
use support::cluster::{node_config, ADMIN_KEY, PREFIX};
use support::protocols::{call, PROTOCOLS};
use support::upstream::Upstream;
use support::{wait_until, wait_until_within, Pylon};
use tokio::runtime::Runtime;

/// A node of the test cluster: its id and labels, beating every second.
fn labelled_node(
    endpoints: &[String],
    role: &str,
    id: &str,
    labels: &str,
    dir: tempfile::TempDir,
) -> Pylon {
    let deployment =
        format!("deployment:\n  node_id: {id}\n  labels: {labels}\n  heartbeat_interval: 1\n");
    let config = node_config(endpoints, role).replace("deployment:\n", &deployment);
    Pylon::run_node(dir, &config).unwrap_or_else(|e| panic!("node {id} did not start: {e}"))
}

/// The test's own client of the cluster's store, where it writes change sets as the Admin API
/// would and reads the nodes' records.
struct Store {
    runtime: Runtime,
    etcd: EtcdStore,
}

impl Store {
    fn new(endpoints: &[String]) -> Store {
        let runtime = Runtime::new().unwrap();
        let settings = EtcdSettings {
            endpoints: endpoints.to_vec(),
            prefix: PREFIX.to_owned(),
            timeout: Duration::from_secs(2),
        };
        let etcd = runtime.block_on(async { EtcdStore::new(&settings).unwrap() });
        Store { runtime, etcd }
    }

    fn put(&self, key: Key, value: Value) {
        self.runtime
            .block_on(self.etcd.commit(Txn::put(key, value)))
            .unwrap();
    }

    fn get(&self, key: Key) -> Option<Value> {
        let entry = self.runtime.block_on(self.etcd.get(&key)).unwrap();
        entry.map(|e| e.value)
    }
}

/// A change set record in `state`, aimed at `canary`, with `changes` as `(key, value)`.
fn change_set(id: &str, state: &str, canary: Value, changes: &[(&str, &Value)]) -> Value {
    let changes: Vec<Value> = changes
        .iter()
        .map(|(key, value)| json!({"key": key, "value": value, "base": 1}))
        .collect();
    json!({
        "id": id, "tenant_id": "team-a", "title": "move /r to two", "author": "alice",
        "state": state, "changes": changes, "canary": canary,
    })
}

/// Who answers `path` on `node`: the upstream's name, or the status when no upstream did.
fn answer(node: &Pylon, path: &str) -> String {
    let res = get(node.addr, "example.com", path);
    res.header("x-upstream")
        .map_or_else(|| res.status.to_string(), str::to_owned)
}

/// Waits until `node` answers `path` with `expected` (an upstream's name, or a status), then
/// asserts that answer over HTTP/1 and HTTP/2 on new connections.
fn assert_serves(runtime: &Runtime, node: &Pylon, path: &str, expected: &str) {
    wait_until(
        || answer(node, path) == expected,
        &format!("{path} to be answered by {expected}"),
    );
    for protocol in PROTOCOLS {
        let res = runtime.block_on(call(protocol, node.addr, "GET", path, &[], b""));
        let got = res
            .header("x-upstream")
            .map_or_else(|| res.status.to_string(), str::to_owned);
        assert_eq!(got, expected, "{path} over {protocol:?}");
    }
}

fn status(node: &Pylon) -> Value {
    get(node.control.unwrap(), "localhost", "/v1/status").json()
}

/// Waits until `node` says it serves the canaries `ids`, on `/v1/status`.
fn wait_canaries(node: &Pylon, ids: &[&str]) {
    wait_until(
        || status(node)["canaries"] == json!(ids),
        &format!("the node on {} to serve the canaries {ids:?}", node.addr),
    );
}

#[test]
fn a_canary_is_served_by_the_nodes_it_targets_until_it_is_aborted() {
    let cluster = EtcdCluster::single();
    let endpoints = cluster.endpoints();
    let store = Store::new(&endpoints);
    let (one, two) = (Upstream::start("one"), Upstream::start("two"));
    let a = labelled_node(
        &endpoints,
        "traditional",
        "gw-a",
        "{zone: east, tier: edge}",
        tempfile::tempdir().unwrap(),
    );
    let b = labelled_node(
        &endpoints,
        "data_plane",
        "gw-b",
        "{zone: west}",
        tempfile::tempdir().unwrap(),
    );
    let c = labelled_node(
        &endpoints,
        "data_plane",
        "gw-c",
        "{zone: east}",
        tempfile::tempdir().unwrap(),
    );
    let nodes = [&a, &b, &c];

    // The live configuration, written through the Admin API.
    let admin_a = a.admin.unwrap();
    for (id, up) in [("one", &one), ("two", &two)] {
        let upstream = json!({"nodes": {up.addr.to_string(): 1}});
        let path = format!("/apisix/admin/upstreams/{id}");
        assert_eq!(
            admin(admin_a, ADMIN_KEY, "PUT", &path, Some(&upstream)).status,
            201
        );
    }
    for (id, uri) in [("r", "/r"), ("gone", "/gone")] {
        let route = json!({"uri": uri, "upstream_id": "one"});
        let path = format!("/apisix/admin/routes/{id}");
        assert_eq!(
            admin(admin_a, ADMIN_KEY, "PUT", &path, Some(&route)).status,
            201
        );
    }
    for node in nodes {
        assert_serves(&store.runtime, node, "/r", "one");
        assert_serves(&store.runtime, node, "/gone", "one");
    }
    let stored = admin(admin_a, ADMIN_KEY, "GET", "/apisix/admin/routes/r", None).json();
    let mut moved = stored["value"].clone();
    moved["upstream_id"] = json!("two");
    let null = Value::Null;

    // Every node has registered itself: who it is, where it listens, what it serves.
    for node in nodes {
        let id = status(node)["id"].as_str().unwrap().to_owned();
        wait_until(
            || {
                store
                    .get(Key::new(Kind::Nodes, &id))
                    .is_some_and(|r| r["revision"].as_u64() > Some(0))
            },
            &format!("the record of {id}"),
        );
        let record = store.get(Key::new(Kind::Nodes, &id)).unwrap();
        assert_eq!(record["id"], id);
        assert_eq!(record["labels"], status(node)["labels"]);
        assert_eq!(record["addresses"]["http"], json!([node.addr.to_string()]));
        assert_eq!(
            record["addresses"]["https"].as_array().map(Vec::len),
            Some(1)
        );
        assert_eq!(
            record["addresses"]["control"],
            json!(node.control.unwrap().to_string())
        );
        assert_eq!(
            record["addresses"]["admin"],
            json!(node.admin.map(|a| a.to_string()))
        );
        assert_eq!(record["role"], status(node)["role"]);
        assert_eq!(record["version"], status(node)["version"]);
        assert_eq!(record["canaries"], json!([]));
        let (started, last_seen) = (
            record["started"].as_u64().unwrap(),
            record["last_seen"].as_u64().unwrap(),
        );
        assert!(started > 1_700_000_000 && last_seen >= started, "{record}");
        // It beats: last_seen moves on.
        wait_until(
            || {
                store.get(Key::new(Kind::Nodes, &id)).unwrap()["last_seen"].as_u64()
                    > Some(last_seen)
            },
            &format!("a heartbeat of {id}"),
        );
    }
    assert_eq!(
        status(&a)["labels"],
        json!({"zone": "east", "tier": "edge"})
    );

    // A canary for gw-b by id: it serves the changed route, the others the live one.
    let by_id = json!({"nodes": ["gw-b"]});
    store.put(
        Key::new(Kind::ChangeSets, "cs1"),
        change_set("cs1", "canary", by_id.clone(), &[("routes/r", &moved)]),
    );
    assert_serves(&store.runtime, &b, "/r", "two");
    wait_canaries(&b, &["cs1"]);
    for node in [&a, &c] {
        assert_serves(&store.runtime, node, "/r", "one");
        assert_eq!(status(node)["canaries"], json!([]));
    }
    // Its record says so, written as soon as the canary was served.
    wait_until(
        || store.get(Key::new(Kind::Nodes, "gw-b")).unwrap()["canaries"] == json!(["cs1"]),
        "the record of gw-b to name its canary",
    );

    // Aimed at the east zone instead: gw-a and gw-c take it, gw-b goes back to live.
    let east = json!({"labels": {"zone": "east"}});
    store.put(
        Key::new(Kind::ChangeSets, "cs1"),
        change_set("cs1", "canary", east, &[("routes/r", &moved)]),
    );
    for node in [&a, &c] {
        assert_serves(&store.runtime, node, "/r", "two");
        wait_canaries(node, &["cs1"]);
    }
    assert_serves(&store.runtime, &b, "/r", "one");
    wait_canaries(&b, &[]);

    // A second canary, on gw-c alone, deletes a route: gw-c serves both canaries.
    let on_c = json!({"nodes": ["gw-c"]});
    store.put(
        Key::new(Kind::ChangeSets, "cs2"),
        change_set("cs2", "canary", on_c.clone(), &[("routes/gone", &null)]),
    );
    assert_serves(&store.runtime, &c, "/gone", "404");
    wait_canaries(&c, &["cs1", "cs2"]);
    assert_serves(&store.runtime, &c, "/r", "two");
    for node in [&a, &b] {
        assert_serves(&store.runtime, node, "/gone", "one");
    }

    // Both aborted: every node serves the live configuration again.
    store.put(
        Key::new(Kind::ChangeSets, "cs1"),
        change_set(
            "cs1",
            "aborted",
            json!({"labels": {"zone": "east"}}),
            &[("routes/r", &moved)],
        ),
    );
    store.put(
        Key::new(Kind::ChangeSets, "cs2"),
        change_set("cs2", "aborted", on_c, &[("routes/gone", &null)]),
    );
    for node in nodes {
        assert_serves(&store.runtime, node, "/r", "one");
        assert_serves(&store.runtime, node, "/gone", "one");
        wait_canaries(node, &[]);
    }

    // A node restarted while a canary is in force serves it from its first request.
    store.put(
        Key::new(Kind::ChangeSets, "cs3"),
        change_set("cs3", "canary", by_id, &[("routes/r", &moved)]),
    );
    assert_serves(&store.runtime, &b, "/r", "two");
    let dir = b.into_dir();
    let b = labelled_node(&endpoints, "data_plane", "gw-b", "{zone: west}", dir);
    assert_eq!(answer(&b, "/r"), "two");
    assert_serves(&store.runtime, &b, "/r", "two");
    assert_eq!(status(&b)["canaries"], json!(["cs3"]));
    assert_serves(&store.runtime, &a, "/r", "one");
}

/// While the store is away, a node serves on and says that its record is not written; once the
/// store is back, its next beat writes it again.
#[test]
fn a_node_serves_on_while_its_record_cannot_be_written() {
    let mut cluster = EtcdCluster::single();
    let endpoints = cluster.endpoints();
    let up = Upstream::start("one");
    let dir = tempfile::tempdir().unwrap();
    let node = labelled_node(&endpoints, "traditional", "gw-a", "{zone: east}", dir);
    let admin_addr = node.admin.unwrap();
    let route = json!({"uri": "/r", "upstream": {"nodes": {up.addr.to_string(): 1}}});
    let res = admin(
        admin_addr,
        ADMIN_KEY,
        "PUT",
        "/apisix/admin/routes/r",
        Some(&route),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    let runtime = Runtime::new().unwrap();
    assert_serves(&runtime, &node, "/r", "one");

    let last_seen = |endpoints: &[String]| {
        let record = Store::new(endpoints).get(Key::new(Kind::Nodes, "gw-a"));
        record.unwrap()["last_seen"].as_u64().unwrap()
    };
    let before = last_seen(&endpoints);

    cluster.stop(0);
    node.wait_for_log("nodes/gw-a not written");
    assert_serves(&runtime, &node, "/r", "one");

    cluster.restart(&[0]);
    wait_until_within(
        Duration::from_secs(45),
        || node.stderr().contains("nodes/gw-a written again"),
        "the record to be written again",
    );
    // A beat begun while the store was away may land first; the next ones come after it.
    wait_until_within(
        Duration::from_secs(45),
        || last_seen(&endpoints) > before,
        "a beat after the store came back",
    );
    assert_serves(&runtime, &node, "/r", "one");
}

/// A node on the embedded store registers itself in it, beats, and leaves its record when it
/// stops.
#[test]
fn a_node_on_the_embedded_store_registers_itself() {
    let config = "deployment:\n  node_id: solo\n  labels: {zone: east}\n  heartbeat_interval: 1\n\
         proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 1\n  https:\n    listen: []\n\
         control:\n  listen: \"127.0.0.1:0\"\n\
         metrics:\n  enabled: false\n\
         admin:\n  listen: \"127.0.0.1:0\"\n\
         config:\n  source: embedded\n  data_dir: data\n";
    let mut pylon = Pylon::run_node(tempfile::tempdir().unwrap(), config).unwrap();
    let first = status(&pylon);
    assert_eq!(first["id"], "solo");
    assert_eq!(first["labels"], json!({"zone": "east"}));
    assert_eq!(first["canaries"], json!([]));
    // Each beat is a write: the store's revision moves on.
    let revision = |s: &Value| s["store"]["revision"].as_u64().unwrap();
    wait_until(
        || revision(&status(&pylon)) >= revision(&first) + 2,
        "two heartbeats",
    );
    let (addr, admin_addr, control) = (pylon.addr, pylon.admin.unwrap(), pylon.control.unwrap());
    pylon.terminate();
    let (code, _) = pylon.wait_exit();
    assert_eq!(code, Some(0));

    let store = EmbeddedStore::open(&pylon.dir.path().join("data/store")).unwrap();
    let runtime = Runtime::new().unwrap();
    let record = runtime
        .block_on(store.get(&Key::new(Kind::Nodes, "solo")))
        .unwrap()
        .expect("the node's record, left when it stopped")
        .value;
    assert_eq!(record["id"], "solo");
    assert_eq!(record["labels"], json!({"zone": "east"}));
    assert_eq!(record["role"], "traditional");
    assert_eq!(
        record["addresses"],
        json!({"http": [addr.to_string()], "https": [], "admin": admin_addr.to_string(), "control": control.to_string()})
    );
    assert!(
        record["revision"].as_u64().unwrap() >= revision(&first),
        "{record}"
    );
    assert!(
        record["last_seen"].as_u64() >= record["started"].as_u64(),
        "{record}"
    );
}
