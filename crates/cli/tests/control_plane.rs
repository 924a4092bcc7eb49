//! The control plane for teams, through real nodes, on the embedded store and on a real etcd
//! cluster: tenants see and change only their own resources on every path and for every role;
//! a tenant that requires review publishes through change sets reviewed by someone else; a
//! publish whose base changed is refused until rebased; one route among many is rolled back;
//! the audit log's chain finds a record changed or removed behind its back; a document of
//! resources becomes one change set.

mod support;

#[path = "../../store/tests/support/etcd.rs"]
mod etcd;

use std::net::SocketAddr;
use std::sync::Arc;

use etcd::EtcdCluster;
use pylon_model::{Key, Kind};
use pylon_store::{ConfigStore, EmbeddedStore, EtcdSettings, EtcdStore, Txn};
use serde_json::{json, Value};
use support::client::{admin, Response};
use support::protocols::{call, PROTOCOLS};
use support::upstream::Upstream;
use support::{wait_until, Pylon};

const ADMIN_KEY: &str = "platform-admin-key";
const PREFIX: &str = "/pylon-teams";

/// Gateway nodes on one store: one node on the embedded store, or several on etcd.
struct Plane {
    nodes: Vec<Pylon>,
    etcd: Option<EtcdCluster>,
}

impl Plane {
    fn embedded() -> Plane {
        let config = node_config("  source: embedded\n  data_dir: data\n");
        let node = Pylon::run_node(tempfile::tempdir().unwrap(), &config)
            .unwrap_or_else(|e| panic!("node did not start: {e}"));
        Plane {
            nodes: vec![node],
            etcd: None,
        }
    }

    /// `nodes` nodes on a three-member etcd cluster.
    fn etcd(nodes: usize) -> Plane {
        let etcd = EtcdCluster::start(3);
        let config = etcd_config(&etcd.endpoints());
        let nodes = (0..nodes)
            .map(|_| {
                Pylon::run_node(tempfile::tempdir().unwrap(), &config)
                    .unwrap_or_else(|e| panic!("node did not start: {e}"))
            })
            .collect();
        Plane {
            nodes,
            etcd: Some(etcd),
        }
    }

    /// The Admin API of node `i` (modulo the nodes there are): writes go through every node.
    fn admin(&self, i: usize) -> SocketAddr {
        self.nodes[i % self.nodes.len()].admin.unwrap()
    }

    fn platform(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        admin(self.admin(0), ADMIN_KEY, method, path, body.as_ref())
    }
}

fn node_config(store: &str) -> String {
    format!(
        "proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 1\n  https:\n    listen: [\"127.0.0.1:0\"]\n\
         control:\n  listen: \"127.0.0.1:0\"\n\
         metrics:\n  listen: \"127.0.0.1:0\"\n\
         admin:\n  listen: \"127.0.0.1:0\"\n  admin_key: [{{name: ops, key: {ADMIN_KEY}, role: admin}}]\n\
         data_encryption:\n  keyring: [\"a shared cluster secret\"]\n\
         config:\n{store}\
         log:\n  level: info\n"
    )
}

fn etcd_config(endpoints: &[String]) -> String {
    let endpoints = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    node_config(&format!(
        "  source: etcd\n  data_dir: data\n  etcd:\n    endpoints: [{endpoints}]\n    prefix: {PREFIX}\n    timeout: 2\n"
    ))
}

/// A user made by the platform admin, with its token.
struct User {
    name: String,
    token: String,
}

impl User {
    fn call(
        &self,
        plane: &Plane,
        node: usize,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        admin(plane.admin(node), &self.token, method, path, body.as_ref())
    }
}

fn tenant(plane: &Plane, id: &str, review: bool) {
    let res = plane.platform(
        "PUT",
        &format!("/pylon/admin/tenants/{id}"),
        Some(json!({"review": review})),
    );
    assert_eq!(res.status, 201, "{}", res.text());
}

fn user(plane: &Plane, name: &str, role: &str, tenant: Option<&str>) -> User {
    let res = plane.platform(
        "PUT",
        &format!("/pylon/admin/users/{name}"),
        Some(json!({"role": role, "tenant_id": tenant})),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    let token = res.json()["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with(&format!("{name}.")));
    User {
        name: name.to_owned(),
        token,
    }
}

fn route(uri: &str, host: &str, up: &Upstream) -> Value {
    json!({"uri": uri, "host": host, "upstream": {"nodes": {up.addr.to_string(): 1}}})
}

/// Waits until every node answers `path` with `status`, over HTTP/1 and HTTP/2.
fn wait_served(plane: &Plane, path: &str, status: u16) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for node in &plane.nodes {
        for protocol in PROTOCOLS {
            wait_until(
                || {
                    runtime
                        .block_on(call(protocol, node.addr, "GET", path, &[], b""))
                        .status
                        == status
                },
                &format!("{path} to answer {status} over {protocol:?}"),
            );
        }
    }
}

fn isolation(plane: &Plane) {
    let up = Upstream::start("one");
    tenant(plane, "team-a", false);
    tenant(plane, "team-b", false);
    let a_admin = user(plane, "a-admin", "tenant_admin", Some("team-a"));
    let a_editor = user(plane, "a-editor", "editor", Some("team-a"));
    let a_reviewer = user(plane, "a-reviewer", "reviewer", Some("team-a"));
    let a_viewer = user(plane, "a-viewer", "viewer", Some("team-a"));
    let b_editor = user(plane, "b-editor", "editor", Some("team-b"));
    let watcher = user(plane, "watcher", "viewer", None);

    // Each tenant's editor writes its own routes, through any node.
    let res = a_editor.call(
        plane,
        0,
        "PUT",
        "/apisix/admin/routes/a1",
        Some(route("/a/*", "example.com", &up)),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.json()["value"]["tenant_id"], "team-a");
    let res = b_editor.call(
        plane,
        1,
        "PUT",
        "/apisix/admin/routes/b1",
        Some(route("/b/*", "example.com", &up)),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    wait_served(plane, "/a/x", 200);
    wait_served(plane, "/b/x", 200);

    // Reads: a tenant's users see its own resources only; the platform's see all.
    for reader in [&a_admin, &a_editor, &a_reviewer, &a_viewer] {
        let list = reader
            .call(plane, 0, "GET", "/apisix/admin/routes", None)
            .json();
        assert_eq!(list["total"], 1, "{}: {list}", reader.name);
        assert_eq!(list["list"][0]["value"]["id"], "a1");
        assert_eq!(
            reader
                .call(plane, 1, "GET", "/apisix/admin/routes/b1", None)
                .status,
            404
        );
        assert_eq!(
            reader
                .call(plane, 1, "GET", "/apisix/admin/routes/a1", None)
                .status,
            200
        );
    }
    assert_eq!(
        watcher
            .call(plane, 0, "GET", "/apisix/admin/routes", None)
            .json()["total"],
        2
    );
    assert_eq!(
        plane.platform("GET", "/apisix/admin/routes", None).json()["total"],
        2
    );

    // Writes: another tenant's resource is neither changed nor removed, by any path.
    let b1 = "/apisix/admin/routes/b1";
    let res = a_editor.call(plane, 0, "PUT", b1, Some(route("/b/*", "example.com", &up)));
    assert_eq!(
        (res.status, res.json()["error_msg"].clone()),
        (403, json!("routes/b1 is another tenant's"))
    );
    assert_eq!(
        a_editor
            .call(plane, 0, "PATCH", b1, Some(json!({"uri": "/x"})))
            .status,
        404
    );
    assert_eq!(a_editor.call(plane, 0, "DELETE", b1, None).status, 404);
    assert_eq!(a_admin.call(plane, 0, "DELETE", b1, None).status, 404);
    // A resource says which tenant it is: not another.
    let mut stolen = route("/c/*", "other.com", &up);
    stolen["tenant_id"] = json!("team-b");
    let res = a_editor.call(plane, 0, "PUT", "/apisix/admin/routes/a2", Some(stolen));
    assert_eq!(res.status, 400);
    assert!(
        res.text().contains("tenant_id: must be `team-a`"),
        "{}",
        res.text()
    );
    // Readers write nothing, as APISIX refuses a viewer's key.
    for reader in [&a_reviewer, &a_viewer, &watcher] {
        let res = reader.call(
            plane,
            0,
            "PUT",
            "/apisix/admin/routes/a9",
            Some(route("/r/*", "r.com", &up)),
        );
        assert_eq!(res.status, 401, "{}", reader.name);
        assert!(res.json()["description"]
            .as_str()
            .unwrap()
            .starts_with("invalid method for role"));
    }

    // A route that would take the traffic of another tenant's route is refused, naming it.
    let res = a_editor.call(
        plane,
        1,
        "PUT",
        "/apisix/admin/routes/a3",
        Some(route("/b/*", "example.com", &up)),
    );
    assert_eq!(res.status, 409, "{}", res.text());
    assert!(
        res.text()
            .contains("is served by routes/b1 of tenant `team-b`"),
        "{}",
        res.text()
    );
    // Nor a part of it: a path under its prefix, on a host its wildcard covers.
    let res = a_editor.call(
        plane,
        0,
        "PUT",
        "/apisix/admin/routes/a5",
        Some(route("/b/orders/:id", "example.com", &up)),
    );
    assert_eq!(res.status, 409, "{}", res.text());
    assert!(
        res.text().contains("path `/b/*` is served by routes/b1"),
        "{}",
        res.text()
    );
    // Another host, or another path, is not the other tenant's traffic.
    let res = a_editor.call(
        plane,
        1,
        "PUT",
        "/apisix/admin/routes/a3",
        Some(route("/b/*", "a.example.com", &up)),
    );
    assert_eq!(res.status, 201, "{}", res.text());

    // References stay within a tenant.
    let res = b_editor.call(
        plane,
        0,
        "PUT",
        "/apisix/admin/upstreams/ub",
        Some(json!({"nodes": {up.addr.to_string(): 1}})),
    );
    assert_eq!(res.status, 201);
    let res = a_editor.call(
        plane,
        0,
        "PUT",
        "/apisix/admin/routes/a4",
        Some(json!({"uri": "/a4", "upstream_id": "ub"})),
    );
    assert_eq!(res.status, 400);
    assert!(
        res.text()
            .contains("upstream_id: upstreams/ub belongs to tenant `team-b`"),
        "{}",
        res.text()
    );

    // A whole configuration applied by the platform names existing tenants only.
    let mut nobody = route("/z", "z.example.com", &up);
    nobody["id"] = json!("z");
    nobody["tenant_id"] = json!("nope");
    let res = plane.platform(
        "POST",
        "/pylon/admin/config",
        Some(json!({"routes": [nobody]})),
    );
    assert_eq!(res.status, 400);
    assert!(
        res.text().contains("routes/z.tenant_id: no tenant `nope`"),
        "{}",
        res.text()
    );

    // The platform's own resources and the whole configuration are not a tenant's.
    let res = a_admin.call(
        plane,
        0,
        "PUT",
        "/apisix/admin/global_rules/1",
        Some(json!({"plugins": {}})),
    );
    assert_eq!(res.status, 403);
    assert_eq!(
        a_admin
            .call(plane, 0, "GET", "/apisix/admin/global_rules", None)
            .status,
        403
    );
    assert_eq!(
        a_admin
            .call(plane, 0, "GET", "/pylon/admin/config", None)
            .status,
        403
    );
    assert_eq!(
        plane.platform("GET", "/pylon/admin/config", None).status,
        200
    );

    // Users: a tenant admin manages its own tenant's, and nothing above it.
    let res = a_admin.call(
        plane,
        0,
        "PUT",
        "/pylon/admin/users/a-new",
        Some(json!({"role": "editor", "tenant_id": "team-a"})),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    let res = a_admin.call(
        plane,
        0,
        "PUT",
        "/pylon/admin/users/b-new",
        Some(json!({"role": "editor", "tenant_id": "team-b"})),
    );
    assert_eq!(res.status, 403);
    let res = a_admin.call(
        plane,
        0,
        "PUT",
        "/pylon/admin/users/boss",
        Some(json!({"role": "platform_admin"})),
    );
    assert_eq!(res.status, 403);
    let users = a_admin
        .call(plane, 0, "GET", "/pylon/admin/users", None)
        .json();
    let names: Vec<&str> = users["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["a-admin", "a-editor", "a-new", "a-reviewer", "a-viewer"]
    );
    assert!(
        !users.to_string().contains("token"),
        "no token or hash is ever shown: {users}"
    );
    assert_eq!(
        a_editor
            .call(plane, 0, "GET", "/pylon/admin/users", None)
            .status,
        403
    );
    assert_eq!(
        a_editor
            .call(
                plane,
                0,
                "PUT",
                "/pylon/admin/tenants/team-c",
                Some(json!({}))
            )
            .status,
        403
    );
    // A user's new token replaces the old one.
    let res = a_viewer.call(plane, 0, "POST", "/pylon/admin/users/a-viewer/token", None);
    assert_eq!(res.status, 200);
    let renewed = res.json()["token"].as_str().unwrap().to_owned();
    let old = a_viewer.call(plane, 1, "GET", "/apisix/admin/routes", None);
    assert_eq!(
        (old.status, old.json()["description"].clone()),
        (401, json!("wrong apikey"))
    );
    assert_eq!(
        admin(
            plane.admin(1),
            &renewed,
            "GET",
            "/apisix/admin/routes",
            None
        )
        .status,
        200
    );

    // A tenant is deleted only once nothing is left in it.
    let res = plane.platform("DELETE", "/pylon/admin/tenants/team-b", None);
    assert_eq!(res.status, 400);
    assert!(
        res.text().contains("tenant `team-b` still has"),
        "{}",
        res.text()
    );
}

/// Every control-plane path, asked by every role: the status each gets.
fn every_path_and_role(plane: &Plane) {
    let up = Upstream::start("one");
    tenant(plane, "team-a", false);
    tenant(plane, "team-b", false);
    let callers = [
        User {
            name: "platform admin".into(),
            token: ADMIN_KEY.into(),
        },
        user(plane, "watcher", "viewer", None),
        user(plane, "a-admin", "tenant_admin", Some("team-a")),
        user(plane, "a-editor", "editor", Some("team-a")),
        user(plane, "a-reviewer", "reviewer", Some("team-a")),
        user(plane, "a-viewer", "viewer", Some("team-a")),
        user(plane, "b-editor", "editor", Some("team-b")),
    ];
    let a_editor = &callers[3];
    let res = a_editor.call(
        plane,
        0,
        "PUT",
        "/apisix/admin/routes/a1",
        Some(route("/a1", "example.com", &up)),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    let res = a_editor.call(
        plane,
        0,
        "POST",
        "/pylon/admin/change_sets",
        Some(json!({"id": "csa", "title": "a", "changes": []})),
    );
    assert_eq!(res.status, 201, "{}", res.text());

    // Callers in order: platform admin, platform viewer, then team-a's tenant admin, editor,
    // reviewer and viewer, then team-b's editor.
    let matrix: [(&str, &str, Option<Value>, [u16; 7]); 18] = [
        (
            "GET",
            "/apisix/admin/routes/a1",
            None,
            [200, 200, 200, 200, 200, 200, 404],
        ),
        (
            "GET",
            "/apisix/admin/routes",
            None,
            [200, 200, 200, 200, 200, 200, 200],
        ),
        (
            "PATCH",
            "/apisix/admin/routes/a1",
            Some(json!({"desc": "d"})),
            [200, 401, 200, 200, 401, 401, 404],
        ),
        (
            "PUT",
            "/apisix/admin/global_rules/g",
            Some(json!({"plugins": {}})),
            [201, 401, 403, 403, 401, 401, 403],
        ),
        (
            "GET",
            "/apisix/admin/global_rules",
            None,
            [200, 200, 403, 403, 403, 403, 403],
        ),
        (
            "GET",
            "/pylon/admin/config",
            None,
            [200, 200, 403, 403, 403, 403, 403],
        ),
        (
            "GET",
            "/pylon/admin/tenants/team-a",
            None,
            [200, 200, 200, 200, 200, 200, 404],
        ),
        (
            "PUT",
            "/pylon/admin/tenants/team-a",
            Some(json!({"review": false})),
            [200, 403, 403, 403, 403, 403, 403],
        ),
        (
            "GET",
            "/pylon/admin/users",
            None,
            [200, 200, 200, 403, 403, 403, 403],
        ),
        (
            "GET",
            "/pylon/admin/users/a-editor",
            None,
            [200, 200, 200, 200, 404, 404, 404],
        ),
        (
            "POST",
            "/pylon/admin/change_sets",
            Some(json!({"title": "t", "tenant_id": "team-a"})),
            [201, 403, 201, 201, 403, 403, 400],
        ),
        (
            "GET",
            "/pylon/admin/change_sets/csa",
            None,
            [200, 200, 200, 200, 200, 200, 404],
        ),
        (
            "POST",
            "/pylon/admin/change_sets/csa/approve",
            None,
            [409, 403, 409, 403, 409, 403, 404],
        ),
        (
            "GET",
            "/pylon/admin/versions/routes/a1",
            None,
            [200, 200, 200, 200, 200, 200, 404],
        ),
        (
            "GET",
            "/pylon/admin/audit?tenant_id=team-b",
            None,
            [200, 200, 403, 403, 403, 403, 200],
        ),
        (
            "GET",
            "/pylon/admin/audit/verify",
            None,
            [200, 200, 403, 403, 403, 403, 403],
        ),
        (
            "GET",
            "/pylon/admin/nodes",
            None,
            [200, 200, 200, 200, 200, 200, 200],
        ),
        (
            "DELETE",
            "/pylon/admin/nodes/gone",
            None,
            [404, 403, 403, 403, 403, 403, 403],
        ),
    ];
    for (n, (method, path, body, statuses)) in matrix.iter().enumerate() {
        for (caller, expected) in callers.iter().zip(statuses) {
            let res = caller.call(plane, n, method, path, body.clone());
            assert_eq!(
                res.status,
                *expected,
                "{method} {path} by {}: {}",
                caller.name,
                res.text()
            );
        }
    }
    // What a tenant's users list is theirs alone.
    let b_editor = &callers[6];
    assert_eq!(
        b_editor
            .call(plane, 0, "GET", "/apisix/admin/routes", None)
            .json()["total"],
        0
    );
    let sets = b_editor
        .call(plane, 1, "GET", "/pylon/admin/change_sets", None)
        .json();
    assert_eq!(sets["total"], 0);
    let trail = b_editor
        .call(plane, 0, "GET", "/pylon/admin/audit", None)
        .json();
    for record in trail["list"].as_array().unwrap() {
        assert!(
            record["tenants"]
                .as_array()
                .unwrap()
                .contains(&json!("team-b")),
            "{record}"
        );
    }
}

#[test]
fn every_path_answers_every_role_as_its_tenant_allows_on_the_embedded_store() {
    every_path_and_role(&Plane::embedded());
}

#[test]
fn every_path_answers_every_role_as_its_tenant_allows_on_etcd() {
    every_path_and_role(&Plane::etcd(2));
}

#[test]
fn tenants_are_isolated_on_every_path_and_role_on_the_embedded_store() {
    isolation(&Plane::embedded());
}

#[test]
fn tenants_are_isolated_on_every_path_and_role_on_etcd() {
    isolation(&Plane::etcd(2));
}

fn review(plane: &Plane) {
    let up = Upstream::start("one");
    tenant(plane, "payments", true);
    let author = user(plane, "ann", "editor", Some("payments"));
    let reviewer = user(plane, "rev", "reviewer", Some("payments"));

    // A tenant that requires review takes no direct write, from anyone.
    let direct = route("/pay/*", "example.com", &up);
    let res = author.call(
        plane,
        0,
        "PUT",
        "/apisix/admin/routes/pay",
        Some(direct.clone()),
    );
    assert_eq!(res.status, 403);
    assert!(
        res.text().contains("requires review before publish"),
        "{}",
        res.text()
    );
    let mut platform_write = direct.clone();
    platform_write["tenant_id"] = json!("payments");
    assert_eq!(
        plane
            .platform(
                "PUT",
                "/apisix/admin/routes/pay",
                Some(platform_write.clone())
            )
            .status,
        403
    );
    platform_write["id"] = json!("pay");
    let document = json!({"routes": [platform_write]});
    let res = plane.platform("POST", "/pylon/admin/config", Some(document));
    assert_eq!(res.status, 403, "nor a whole configuration: {}", res.text());

    // A bad change is refused when it is added, with its field.
    let res = author.call(
        plane,
        0,
        "POST",
        "/pylon/admin/change_sets",
        Some(json!({"id": "bad", "title": "t", "changes": [{"key": "routes/pay", "value": {"uri": 5}}]})),
    );
    assert_eq!(res.status, 400);
    assert!(
        res.text()
            .contains("changes[0]: invalid configuration: uri"),
        "{}",
        res.text()
    );

    let res = author.call(
        plane,
        0,
        "POST",
        "/pylon/admin/change_sets",
        Some(json!({"id": "cs1", "title": "payments API", "changes": [
            {"key": "upstreams/pay", "value": {"nodes": {up.addr.to_string(): 1}}},
            {"key": "routes/pay", "value": {"uri": "/pay/*", "host": "example.com", "upstream_id": "pay"}},
        ]})),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    // Nothing is live yet; the set shows its diff and validation.
    let shown = reviewer
        .call(plane, 1, "GET", "/pylon/admin/change_sets/cs1", None)
        .json();
    assert_eq!(shown["state"], "draft");
    assert_eq!(shown["diff"][1]["key"], "routes/pay");
    assert_eq!(shown["diff"][1]["live"], Value::Null);
    assert_eq!(shown["diff"][1]["proposed"]["uri"], "/pay/*");
    assert_eq!(shown["validation"], json!([]));
    wait_served(plane, "/pay/x", 404);

    // Submitted by its author, approved by another: never by the author.
    let approve = |who: &User, node| {
        who.call(
            plane,
            node,
            "POST",
            "/pylon/admin/change_sets/cs1/approve",
            Some(json!({"comment": "ok"})),
        )
    };
    assert_eq!(approve(&reviewer, 0).status, 409, "a draft is not reviewed");
    assert_eq!(
        author
            .call(
                plane,
                0,
                "POST",
                "/pylon/admin/change_sets/cs1/submit",
                None
            )
            .status,
        200
    );
    assert_eq!(approve(&author, 1).status, 403);
    assert_eq!(
        author
            .call(
                plane,
                1,
                "POST",
                "/pylon/admin/change_sets/cs1/publish",
                None
            )
            .status,
        409
    );
    let res = approve(&reviewer, 1);
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["state"], "approved");
    let res = author.call(
        plane,
        0,
        "POST",
        "/pylon/admin/change_sets/cs1/publish",
        Some(json!({"comment": "ship"})),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["state"], "published");
    wait_served(plane, "/pay/x", 200);

    // A rejected set is not published.
    let res = author.call(
        plane,
        1,
        "POST",
        "/pylon/admin/change_sets",
        Some(json!({"id": "cs2", "title": "drop it", "changes": [{"key": "routes/pay", "value": null}]})),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    author.call(
        plane,
        1,
        "POST",
        "/pylon/admin/change_sets/cs2/submit",
        None,
    );
    let res = reviewer.call(
        plane,
        0,
        "POST",
        "/pylon/admin/change_sets/cs2/reject",
        Some(json!({"comment": "no"})),
    );
    assert_eq!(res.json()["state"], "rejected");
    assert_eq!(
        author
            .call(
                plane,
                0,
                "POST",
                "/pylon/admin/change_sets/cs2/publish",
                None
            )
            .status,
        409
    );
    wait_served(plane, "/pay/x", 200);

    // The APISIX paths build a change set with `?change_set=`: nothing goes live.
    let res = author.call(
        plane,
        1,
        "POST",
        "/pylon/admin/change_sets",
        Some(json!({"id": "cs3", "title": "via APISIX paths"})),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    let res = author.call(
        plane,
        0,
        "PUT",
        "/apisix/admin/routes/pay2?change_set=cs3",
        Some(route("/pay2", "example.com", &up)),
    );
    assert_eq!(res.status, 202, "{}", res.text());
    assert_eq!(res.json()["change_set"], "cs3");
    assert_eq!(res.json()["value"]["tenant_id"], "payments");
    let res = author.call(
        plane,
        1,
        "PATCH",
        "/apisix/admin/routes/pay?change_set=cs3",
        Some(json!({"desc": "patched"})),
    );
    assert_eq!(res.status, 202, "{}", res.text());
    let res = author.call(
        plane,
        0,
        "DELETE",
        "/apisix/admin/routes/pay2?change_set=cs3",
        None,
    );
    assert_eq!(res.status, 202, "{}", res.text());
    let cs3 = author
        .call(plane, 1, "GET", "/pylon/admin/change_sets/cs3", None)
        .json();
    let keys: Vec<&str> = cs3["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["routes/pay"],
        "a route made and deleted in the set leaves no change"
    );
    assert_eq!(cs3["diff"][0]["proposed"]["desc"], "patched");
    assert_eq!(cs3["diff"][0]["live"]["desc"], Value::Null);
    wait_served(plane, "/pay2", 404);
    let by_set = author
        .call(
            plane,
            1,
            "GET",
            "/pylon/admin/audit?resource=change_sets/cs3",
            None,
        )
        .json();
    assert_eq!(
        by_set["total"], 4,
        "made, and three writes through the APISIX paths: {by_set}"
    );

    // The audit log has it all, by user and by resource.
    let trail = reviewer
        .call(
            plane,
            0,
            "GET",
            "/pylon/admin/audit?resource=routes/pay",
            None,
        )
        .json();
    let actions: Vec<&str> = trail["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["POST /pylon/admin/change_sets/cs1/publish",]);
    let publish = &trail["list"][0];
    assert_eq!(publish["user"], "ann");
    assert_eq!(publish["change_set"], "cs1");
    assert_eq!(publish["comment"], "ship");
    let by_rev = reviewer
        .call(plane, 0, "GET", "/pylon/admin/audit?user=rev", None)
        .json();
    assert_eq!(by_rev["total"], 2, "{by_rev}");
}

#[test]
fn review_before_publish_on_the_embedded_store() {
    review(&Plane::embedded());
}

#[test]
fn review_before_publish_on_etcd() {
    review(&Plane::etcd(2));
}

/// Two change sets to one route, published at once (through two nodes, where there are two):
/// one wins, the other is refused until rebased, and then published.
fn concurrent_publishes(plane: &Plane) {
    let up = Upstream::start("one");
    tenant(plane, "shop", false);
    let ann = user(plane, "ann", "editor", Some("shop"));
    let bob = user(plane, "bob", "editor", Some("shop"));
    let res = ann.call(
        plane,
        0,
        "PUT",
        "/apisix/admin/routes/r",
        Some(route("/r/*", "example.com", &up)),
    );
    assert_eq!(res.status, 201);
    for (who, id, uri) in [(&ann, "one", "/one/*"), (&bob, "two", "/two/*")] {
        let res = who.call(
            plane,
            0,
            "POST",
            "/pylon/admin/change_sets",
            Some(json!({"id": id, "title": id, "changes": [{"key": "routes/r", "value": route(uri, "example.com", &up)}]})),
        );
        assert_eq!(res.status, 201, "{}", res.text());
    }
    // Pylon holds its output channel, not shared across threads: the threads take addresses.
    let (node0, node1) = (plane.admin(0), plane.admin(1));
    let (first, second) = std::thread::scope(|s| {
        let publish = |node, who: &User, id: &str| {
            let path = format!("/pylon/admin/change_sets/{id}/publish");
            let token = who.token.clone();
            s.spawn(move || admin(node, &token, "POST", &path, None))
        };
        let (one, two) = (publish(node0, &ann, "one"), publish(node1, &bob, "two"));
        (one.join().unwrap(), two.join().unwrap())
    });
    let mut statuses = [first.status, second.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{} / {}", first.text(), second.text());
    let (winner, loser, loser_id, loser_uri) = if first.status == 200 {
        ("/one/x", &bob, "two", "/two/x")
    } else {
        ("/two/x", &ann, "one", "/one/x")
    };
    let refused = if first.status == 409 { &first } else { &second };
    assert!(
        refused.text().contains("routes/r (revision"),
        "{}",
        refused.text()
    );
    assert!(refused.text().contains("rebase it"), "{}", refused.text());
    wait_served(plane, winner, 200);

    let path = |action: &str| format!("/pylon/admin/change_sets/{loser_id}/{action}");
    let shown = loser
        .call(plane, 0, "GET", path("").trim_end_matches('/'), None)
        .json();
    assert_eq!(shown["conflicts"][0]["key"], "routes/r");
    assert_eq!(
        loser.call(plane, 1, "POST", &path("rebase"), None).status,
        200
    );
    let res = loser.call(plane, 1, "POST", &path("publish"), None);
    assert_eq!(res.status, 200, "{}", res.text());
    wait_served(plane, loser_uri, 200);
    wait_served(plane, winner, 404);
}

#[test]
fn a_publish_whose_base_changed_is_refused_until_rebased_on_the_embedded_store() {
    concurrent_publishes(&Plane::embedded());
}

#[test]
fn a_publish_whose_base_changed_is_refused_until_rebased_on_etcd() {
    concurrent_publishes(&Plane::etcd(2));
}

fn rollback(plane: &Plane) {
    let up = Upstream::start("one");
    tenant(plane, "shop", false);
    let ann = user(plane, "ann", "editor", Some("shop"));
    for n in 0..20 {
        let res = ann.call(
            plane,
            n,
            "PUT",
            &format!("/apisix/admin/routes/r{n}"),
            Some(route(&format!("/r{n}/v1"), "example.com", &up)),
        );
        assert_eq!(res.status, 201);
    }
    for n in [3, 7] {
        let res = ann.call(
            plane,
            n,
            "PUT",
            &format!("/apisix/admin/routes/r{n}"),
            Some(route(&format!("/r{n}/v2"), "example.com", &up)),
        );
        assert_eq!(res.status, 200);
    }
    wait_served(plane, "/r7/v2", 200);
    let before: Vec<Value> = (0..20)
        .map(|n| {
            plane
                .platform("GET", &format!("/apisix/admin/routes/r{n}"), None)
                .json()
        })
        .collect();

    let versions = ann
        .call(plane, 1, "GET", "/pylon/admin/versions/routes/r7", None)
        .json();
    assert_eq!(versions["total"], 2, "{versions}");
    let first = versions["list"][0]["seq"].as_u64().unwrap();
    let second = versions["list"][1]["seq"].as_u64().unwrap();
    assert_eq!(versions["list"][1]["user"], "ann");
    let one = ann
        .call(
            plane,
            0,
            "GET",
            &format!("/pylon/admin/versions/routes/r7/{first}"),
            None,
        )
        .json();
    assert_eq!(one["value"]["uri"], "/r7/v1");
    let diff = ann
        .call(
            plane,
            0,
            "GET",
            &format!("/pylon/admin/versions/routes/r7/diff?from={first}&to={second}"),
            None,
        )
        .json();
    let uri_change = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "uri")
        .unwrap()
        .clone();
    assert_eq!(
        uri_change,
        json!({"path": "uri", "from": "/r7/v1", "to": "/r7/v2"})
    );

    let res = ann.call(
        plane,
        1,
        "POST",
        &format!("/pylon/admin/versions/routes/r7/{first}/rollback"),
        None,
    );
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["state"], "published");
    wait_served(plane, "/r7/v1", 200);
    wait_served(plane, "/r7/v2", 404);
    // Nothing else moved.
    for (n, was) in before.iter().enumerate() {
        let now = plane
            .platform("GET", &format!("/apisix/admin/routes/r{n}"), None)
            .json();
        if n == 7 {
            assert_eq!(now["value"]["uri"], "/r7/v1");
            assert_eq!(now["createdIndex"], was["createdIndex"]);
        } else {
            assert_eq!(
                now["modifiedIndex"], was["modifiedIndex"],
                "routes/r{n} was not to change"
            );
        }
    }
    // The rollback is a version too, and another tenant sees none of it.
    let versions = ann
        .call(plane, 0, "GET", "/pylon/admin/versions/routes/r7", None)
        .json();
    assert_eq!(versions["total"], 3);
    tenant(plane, "other", false);
    let stranger = user(plane, "eve", "viewer", Some("other"));
    assert_eq!(
        stranger
            .call(plane, 0, "GET", "/pylon/admin/versions/routes/r7", None)
            .status,
        404
    );
}

#[test]
fn one_route_among_many_is_rolled_back_on_the_embedded_store() {
    rollback(&Plane::embedded());
}

#[test]
fn one_route_among_many_is_rolled_back_on_etcd() {
    rollback(&Plane::etcd(2));
}

/// A few audited writes, and the chain found intact.
fn audited_writes(plane: &Plane) {
    let up = Upstream::start("one");
    for n in 0..4 {
        let res = plane.platform(
            "PUT",
            &format!("/apisix/admin/routes/t{n}"),
            Some(route(&format!("/t{n}"), "t.com", &up)),
        );
        assert_eq!(res.status, 201);
    }
    let verified = plane.platform("GET", "/pylon/admin/audit/verify", None);
    assert_eq!(verified.status, 200);
    assert_eq!(verified.json(), json!({"intact": true, "records": 4}));
}

fn audit_record(entries: &[pylon_store::Entry], seq: usize) -> (Key, Value) {
    let entry = &entries[seq - 1];
    (entry.key.clone(), entry.value.clone())
}

#[test]
fn the_audit_chain_finds_a_changed_or_removed_record_on_the_embedded_store() {
    let plane = Plane::embedded();
    audited_writes(&plane);
    let Plane { mut nodes, .. } = plane;
    let dir = nodes.remove(0).into_dir();
    // Behind the gateway's back: record 2 says something else.
    {
        let store = EmbeddedStore::open(&dir.path().join("data/store")).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let records = store.history(Kind::Audit, "").await.unwrap();
            let (key, mut value) = audit_record(&records, 2);
            value["user"] = json!("someone else");
            store.commit(Txn::put(key, value)).await.unwrap();
        });
    }
    let config = node_config("  source: embedded\n  data_dir: data\n");
    let node = Pylon::run_node(dir, &config).unwrap();
    let verified = admin(
        node.admin.unwrap(),
        ADMIN_KEY,
        "GET",
        "/pylon/admin/audit/verify",
        None,
    );
    assert_eq!(verified.status, 409);
    assert_eq!(verified.json()["broken_at"], 2);
    assert_eq!(
        verified.json()["reason"],
        "the record was changed after it was written"
    );
}

#[test]
fn the_audit_chain_finds_a_changed_or_removed_record_on_etcd() {
    let plane = Plane::etcd(1);
    audited_writes(&plane);
    let settings = EtcdSettings {
        endpoints: plane.etcd.as_ref().unwrap().endpoints(),
        prefix: PREFIX.to_owned(),
        timeout: std::time::Duration::from_secs(2),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = runtime.block_on(async { Arc::new(EtcdStore::new(&settings).unwrap()) });
    let records = runtime.block_on(store.history(Kind::Audit, "")).unwrap();
    // Record 3 removed: the chain breaks there.
    let (key, value) = audit_record(&records, 3);
    runtime
        .block_on(store.commit(Txn::delete(key.clone())))
        .unwrap();
    let verified = plane.platform("GET", "/pylon/admin/audit/verify", None);
    assert_eq!(verified.status, 409);
    assert_eq!(verified.json()["broken_at"], 3);
    // Put back as it was, the chain holds again; the last one removed, it breaks at the end.
    runtime
        .block_on(store.commit(Txn::put(key, value)))
        .unwrap();
    assert_eq!(
        plane
            .platform("GET", "/pylon/admin/audit/verify", None)
            .status,
        200
    );
    let (last, _) = audit_record(&records, 4);
    runtime.block_on(store.commit(Txn::delete(last))).unwrap();
    let verified = plane.platform("GET", "/pylon/admin/audit/verify", None);
    assert_eq!(verified.json()["broken_at"], 4, "{}", verified.text());
    assert_eq!(
        verified.json()["reason"],
        "records after this one were removed"
    );
    // Logins are recorded too.
    tenant(&plane, "t", false);
    let u = user(&plane, "lee", "viewer", Some("t"));
    let res = u.call(&plane, 0, "POST", "/pylon/admin/login", None);
    assert_eq!(
        res.json(),
        json!({"user": "lee", "tenant_id": "t", "role": "viewer"})
    );
    let logins = plane
        .platform("GET", "/pylon/admin/audit?user=lee", None)
        .json();
    assert_eq!(logins["list"][0]["action"], "login");
}

#[test]
fn a_document_of_resources_becomes_one_change_set() {
    let plane = Plane::embedded();
    let up = Upstream::start("one");
    tenant(&plane, "shop", true);
    let ann = user(&plane, "ann", "editor", Some("shop"));
    let rev = user(&plane, "rev", "reviewer", Some("shop"));
    let document = format!(
        "upstreams:\n  - id: u\n    nodes:\n      \"{}\": 1\nroutes:\n  - id: one\n    uri: /one\n    host: example.com\n    upstream_id: u\n  - id: two\n    uri: /two\n    host: example.com\n    upstream_id: u\n",
        up.addr
    );
    let res = support::client::Conn::connect(plane.admin(0)).request(
        format!(
            "POST /pylon/admin/change_sets/import?title=bulk HTTP/1.1\r\nHost: a\r\nX-API-KEY: {}\r\nContent-Length: {}\r\n\r\n{document}",
            ann.token,
            document.len()
        )
        .as_bytes(),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    let set = res.json();
    let keys: Vec<&str> = set["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["upstreams/u", "routes/one", "routes/two"]);
    let id = set["id"].as_str().unwrap();
    ann.call(
        &plane,
        0,
        "POST",
        &format!("/pylon/admin/change_sets/{id}/submit"),
        None,
    );
    rev.call(
        &plane,
        0,
        "POST",
        &format!("/pylon/admin/change_sets/{id}/approve"),
        None,
    );
    let res = ann.call(
        &plane,
        0,
        "POST",
        &format!("/pylon/admin/change_sets/{id}/publish"),
        None,
    );
    assert_eq!(res.status, 200, "{}", res.text());
    wait_served(&plane, "/one", 200);
    wait_served(&plane, "/two", 200);
    // One publish, one audit record, with every resource in it.
    let trail = rev
        .call(
            &plane,
            0,
            "GET",
            "/pylon/admin/audit?resource=upstreams/u",
            None,
        )
        .json();
    assert_eq!(trail["total"], 1);
    assert_eq!(trail["list"][0]["changes"].as_array().unwrap().len(), 4);
}

/// What node `node` answers on `path` over HTTP/1 and over HTTP/2: the upstream's name, or the
/// status.
fn answers(node: &Pylon, path: &str) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    PROTOCOLS
        .iter()
        .map(|&protocol| {
            let res = runtime.block_on(call(protocol, node.addr, "GET", path, &[], b""));
            res.header("x-upstream")
                .map_or_else(|| res.status.to_string(), str::to_owned)
        })
        .collect()
}

/// What `node` answers, the same over both protocols (where no change is under way).
fn answer(node: &Pylon, path: &str) -> String {
    let answers = answers(node, path);
    assert_eq!(answers[0], answers[1], "HTTP/1 and HTTP/2 answer alike");
    answers[0].clone()
}

fn wait_answers(node: &Pylon, path: &str, expected: &str) {
    wait_until(
        || answers(node, path).iter().all(|a| a == expected),
        &format!("{path} to be answered by {expected} over both protocols"),
    );
}

fn node_status(node: &Pylon) -> Value {
    support::client::get(node.control.unwrap(), "localhost", "/v1/status").json()
}

/// A reviewed change goes to one node of three first; promoted, every node serves it; a second
/// one is aborted and every node serves the live configuration again.
#[test]
fn a_change_set_is_served_by_one_node_then_promoted_or_aborted() {
    let plane = Plane::etcd(3);
    let (live, next) = (Upstream::start("live"), Upstream::start("next"));
    tenant(&plane, "shop", true);
    let ann = user(&plane, "ann", "editor", Some("shop"));
    let rev = user(&plane, "rev", "reviewer", Some("shop"));
    let reviewed = |id: &str, upstream: &Upstream| {
        let res = ann.call(
            &plane,
            0,
            "POST",
            "/pylon/admin/change_sets",
            Some(json!({"id": id, "title": id, "changes": [{"key": "routes/r", "value": route("/r", "example.com", upstream)}]})),
        );
        assert_eq!(res.status, 201, "{}", res.text());
        ann.call(
            &plane,
            0,
            "POST",
            &format!("/pylon/admin/change_sets/{id}/submit"),
            None,
        );
        let res = rev.call(
            &plane,
            1,
            "POST",
            &format!("/pylon/admin/change_sets/{id}/approve"),
            None,
        );
        assert_eq!(res.json()["state"], "approved", "{}", res.text());
    };
    reviewed("first", &live);
    let res = ann.call(
        &plane,
        2,
        "POST",
        "/pylon/admin/change_sets/first/publish",
        None,
    );
    assert_eq!(res.status, 200, "{}", res.text());
    for node in &plane.nodes {
        wait_answers(node, "/r", "live");
    }

    // Every node has registered itself.
    let nodes = plane.platform("GET", "/pylon/admin/nodes", None).json();
    assert_eq!(nodes["total"], 3, "{nodes}");
    let gone = nodes["list"][2]["id"].as_str().unwrap().to_owned();
    let res = plane.platform("DELETE", &format!("/pylon/admin/nodes/{gone}"), None);
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        plane.platform("GET", "/pylon/admin/nodes", None).json()["total"],
        2
    );
    let chosen = node_status(&plane.nodes[0])["id"]
        .as_str()
        .unwrap()
        .to_owned();

    reviewed("second", &next);
    let canary = json!({"nodes": [chosen]});
    let res = ann.call(
        &plane,
        1,
        "POST",
        "/pylon/admin/change_sets/second/canary",
        Some(canary.clone()),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["state"], "canary");
    wait_answers(&plane.nodes[0], "/r", "next");
    wait_until(
        || node_status(&plane.nodes[0])["canaries"] == json!(["second"]),
        "the chosen node to say it serves the canary",
    );
    for node in &plane.nodes[1..] {
        assert_eq!(answer(node, "/r"), "live");
        assert_eq!(node_status(node)["canaries"], json!([]));
    }
    // Live is untouched until promotion.
    let live_route = plane.platform("GET", "/apisix/admin/routes/r", None).json();
    assert!(live_route["value"]["upstream"]["nodes"]
        .get(live.addr.to_string())
        .is_some());

    let res = ann.call(
        &plane,
        2,
        "POST",
        "/pylon/admin/change_sets/second/promote",
        None,
    );
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.json()["state"], "published");
    for node in &plane.nodes {
        wait_answers(node, "/r", "next");
        wait_until(
            || node_status(node)["canaries"] == json!([]),
            "no node to serve a canary once promoted",
        );
    }

    // An aborted canary leaves every node on the live configuration.
    reviewed("third", &live);
    let res = ann.call(
        &plane,
        0,
        "POST",
        "/pylon/admin/change_sets/third/canary",
        Some(canary),
    );
    assert_eq!(res.status, 200, "{}", res.text());
    wait_answers(&plane.nodes[0], "/r", "live");
    assert_eq!(answer(&plane.nodes[1], "/r"), "next");
    let res = ann.call(
        &plane,
        1,
        "POST",
        "/pylon/admin/change_sets/third/abort",
        None,
    );
    assert_eq!(res.json()["state"], "aborted", "{}", res.text());
    for node in &plane.nodes {
        wait_answers(node, "/r", "next");
    }
    assert_eq!(
        ann.call(
            &plane,
            1,
            "POST",
            "/pylon/admin/change_sets/third/publish",
            None
        )
        .status,
        409
    );
}
