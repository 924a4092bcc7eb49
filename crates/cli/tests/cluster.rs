//! Several gateway nodes on one etcd prefix, against real etcd: a write through any node's
//! Admin API is served by every node; data-plane nodes take no writes and control-plane nodes
//! serve no traffic; a node keeps serving, and can even start, while etcd is down, and catches
//! up when it returns; a three-member cluster loses a member, then all, then comes back.

mod support;

#[path = "../../store/tests/support/etcd.rs"]
mod etcd;

use std::net::SocketAddr;

use etcd::EtcdCluster;
use serde_json::json;
use support::client::{admin, get, try_admin, Conn};
use support::cluster::{node, node_config, ADMIN_KEY};
use support::upstream::Upstream;
use support::{wait_until, wait_until_within, Pylon};

/// Waits on things that take an etcd election or the store's reconnect backoff.
fn wait_long(cond: impl FnMut() -> bool, what: &str) {
    wait_until_within(std::time::Duration::from_secs(45), cond, what);
}

/// PUTs `body` until a write is taken (200), through an outage that is ending.
fn put_eventually(admin_addr: SocketAddr, path: &str, body: &serde_json::Value, what: &str) {
    wait_long(
        || try_admin(admin_addr, ADMIN_KEY, "PUT", path, Some(body)).is_ok_and(|r| r.status == 200),
        what,
    );
}

fn put(admin_addr: SocketAddr, path: &str, body: serde_json::Value) -> u16 {
    admin(admin_addr, ADMIN_KEY, "PUT", path, Some(&body)).status
}

fn status(node: &Pylon) -> serde_json::Value {
    get(node.control.unwrap(), "localhost", "/v1/status").json()
}

fn wait_answer(node: &Pylon, path: &str, upstream: &str) {
    wait_until(
        || get(node.addr, "example.com", path).header("x-upstream") == Some(upstream),
        &format!("{path} to be answered by {upstream}"),
    );
}

#[test]
fn a_write_through_any_node_is_served_by_every_node() {
    let cluster = EtcdCluster::single();
    let endpoints = cluster.endpoints();
    let up = Upstream::start("one");
    let a = node(&endpoints, "traditional", tempfile::tempdir().unwrap());
    let b = node(&endpoints, "traditional", tempfile::tempdir().unwrap());
    let data = node(&endpoints, "data_plane", tempfile::tempdir().unwrap());
    let control = node(&endpoints, "control_plane", tempfile::tempdir().unwrap());

    assert!(data.admin.is_none(), "a data-plane node runs no Admin API");
    assert!(control
        .startup
        .iter()
        .all(|l| !l.contains("proxy listening")));

    let upstream = json!({"nodes": {up.addr.to_string(): 1}});
    assert_eq!(
        put(a.admin.unwrap(), "/apisix/admin/upstreams/u", upstream),
        201
    );
    let route = json!({"uri": "/from-a", "upstream_id": "u"});
    assert_eq!(put(a.admin.unwrap(), "/apisix/admin/routes/a", route), 201);
    // Straight after, through another node: the upstream it names was created through a.
    let route = json!({"uri": "/from-control", "upstream_id": "u"});
    assert_eq!(
        put(control.admin.unwrap(), "/apisix/admin/routes/c", route),
        201
    );
    for node in [&a, &b, &data] {
        wait_answer(node, "/from-a", "one");
        wait_answer(node, "/from-control", "one");
    }

    // What b's Admin API reads back is what a wrote, indexes included.
    let read = admin(
        b.admin.unwrap(),
        ADMIN_KEY,
        "GET",
        "/apisix/admin/routes/a",
        None,
    )
    .json();
    assert_eq!(read["value"]["uri"], "/from-a");
    assert!(read["modifiedIndex"].as_u64().unwrap() > 0);

    // Every node reports who it is and that it serves the store's revision.
    let ids: Vec<String> = [&a, &b, &data, &control]
        .iter()
        .map(|n| {
            let s = status(n);
            wait_until(
                || {
                    let s = status(n);
                    s["role"] == "control_plane" || s["serving_revision"] == s["store"]["revision"]
                },
                "the node to serve the store's revision",
            );
            s["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(status(&data)["role"], "data_plane");
    assert_eq!(
        status(&control)["serving_revision"],
        serde_json::Value::Null
    );
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "node ids are distinct: {ids:?}");

    // Two admins racing on the same route, through two nodes: neither update is lost.
    let (addr_a, addr_b) = (a.admin.unwrap(), b.admin.unwrap());
    let racer = std::thread::spawn(move || {
        (0..20)
            .map(|i| {
                let body = json!({"desc": format!("a{i}")});
                admin(
                    addr_a,
                    ADMIN_KEY,
                    "PATCH",
                    "/apisix/admin/routes/a",
                    Some(&body),
                )
                .status
            })
            .collect::<Vec<_>>()
    });
    let mine: Vec<u16> = (0..20)
        .map(|i| {
            let body = json!({"labels": {"n": i.to_string()}});
            admin(
                addr_b,
                ADMIN_KEY,
                "PATCH",
                "/apisix/admin/routes/a",
                Some(&body),
            )
            .status
        })
        .collect();
    let theirs = racer.join().unwrap();
    assert!(
        mine.iter().chain(&theirs).all(|s| *s == 200),
        "{mine:?} {theirs:?}"
    );
    let read = admin(addr_b, ADMIN_KEY, "GET", "/apisix/admin/routes/a", None).json();
    assert_eq!(read["value"]["desc"], "a19");
    assert_eq!(read["value"]["labels"]["n"], "19");
    wait_answer(&data, "/from-a", "one");
}

/// Read-your-writes on etcd: when a node's Admin API answers a write, every one of its
/// workers serves it (the snapshot they serve has the write's revision, not only the node's
/// copy of the store).
#[test]
fn a_write_is_served_by_every_worker_of_its_node_once_the_admin_api_answers() {
    let cluster = EtcdCluster::single();
    let up = Upstream::start("one");
    let config =
        node_config(&cluster.endpoints(), "traditional").replace("workers: 1", "workers: 2");
    let node = Pylon::run_node(tempfile::tempdir().unwrap(), &config).unwrap();
    let admin_addr = node.admin.unwrap();
    for i in 0..150 {
        let uri = format!("/ryw/{i}");
        let body = json!({"uri": uri, "upstream": {"nodes": {up.addr.to_string(): 1}}});
        assert_eq!(
            put(admin_addr, &format!("/apisix/admin/routes/ryw{i}"), body),
            201
        );
        for _ in 0..2 {
            let res = get(node.addr, "example.com", &uri);
            assert_eq!(res.status, 200, "{uri} right after its 201: {}", res.text());
        }
    }
}

#[test]
fn a_node_serves_its_local_copy_while_etcd_is_down_and_catches_up() {
    let mut cluster = EtcdCluster::single();
    let endpoints = cluster.endpoints();
    let (one, two) = (Upstream::start("one"), Upstream::start("two"));
    let a = node(&endpoints, "traditional", tempfile::tempdir().unwrap());
    let admin_a = a.admin.unwrap();
    let upstream = json!({"nodes": {one.addr.to_string(): 1}});
    assert_eq!(put(admin_a, "/apisix/admin/upstreams/u", upstream), 201);
    let route = json!({"uri": "/r", "upstream_id": "u"});
    assert_eq!(put(admin_a, "/apisix/admin/routes/r", route), 201);
    wait_answer(&a, "/r", "one");

    // etcd goes away: the running node serves on, and refuses writes with 503.
    cluster.stop(0);
    assert_eq!(get(a.addr, "example.com", "/r").status, 200);
    let refused = try_admin(
        admin_a,
        ADMIN_KEY,
        "PUT",
        "/apisix/admin/routes/x",
        Some(&json!({"uri": "/x", "upstream_id": "u"})),
    )
    .unwrap();
    assert_eq!(refused.status, 503, "{}", refused.text());

    // A node restarted now starts from its local copy.
    // The node keeps its last known-good copy on disk (written a moment after each change).
    let copy = a.dir.path().join("data/etcd-copy.json");
    wait_until(
        || std::fs::read_to_string(&copy).is_ok_and(|c| c.contains("\"/r\"")),
        "the local copy to hold the route",
    );
    let dir = a.into_dir();
    let a = node(&endpoints, "traditional", dir);
    assert!(
        a.startup
            .iter()
            .any(|l| l.contains("serving the local copy")),
        "{:?}",
        a.startup
    );
    let res = get(a.addr, "example.com", "/r");
    assert_eq!(
        res.header("x-upstream"),
        Some("one"),
        "{}\n{}",
        res.status,
        a.stderr()
    );
    assert_eq!(status(&a)["store"]["connected"], false);
    // Its copy is a configuration: it is ready for traffic.
    let ready = get(a.control.unwrap(), "localhost", "/status/ready");
    assert_eq!(
        (ready.status, ready.text().as_str()),
        (200, r#"{"status":"ok"}"#)
    );

    // etcd returns: the node reconnects, and takes writes again.
    cluster.restart(&[0]);
    wait_long(
        || status(&a)["store"]["connected"] == true,
        "the node to reconnect to etcd",
    );
    let upstream = json!({"nodes": {two.addr.to_string(): 1}});
    put_eventually(
        a.admin.unwrap(),
        "/apisix/admin/upstreams/u",
        &upstream,
        "a write to succeed after etcd returned",
    );
    wait_answer(&a, "/r", "two");
}

#[test]
fn a_three_member_cluster_loses_a_member_then_all_then_comes_back() {
    let mut cluster = EtcdCluster::start(3);
    let endpoints = cluster.endpoints();
    let (one, two) = (Upstream::start("one"), Upstream::start("two"));
    let a = node(&endpoints, "traditional", tempfile::tempdir().unwrap());
    let b = node(&endpoints, "data_plane", tempfile::tempdir().unwrap());
    let admin_a = a.admin.unwrap();
    assert_eq!(
        put(
            admin_a,
            "/apisix/admin/upstreams/one",
            json!({"nodes": {one.addr.to_string(): 1}})
        ),
        201
    );
    assert_eq!(
        put(
            admin_a,
            "/apisix/admin/upstreams/two",
            json!({"nodes": {two.addr.to_string(): 1}})
        ),
        201
    );
    assert_eq!(
        put(
            admin_a,
            "/apisix/admin/routes/r",
            json!({"uri": "/r", "upstream_id": "one"})
        ),
        201
    );
    wait_answer(&b, "/r", "one");

    // One member down, the leader if possible: writes and propagation go on through the others.
    let leader = cluster.leader();
    cluster.kill(leader);
    let moved = json!({"uri": "/r", "upstream_id": "two"});
    put_eventually(
        admin_a,
        "/apisix/admin/routes/r",
        &moved,
        "a write with one member down",
    );
    wait_answer(&b, "/r", "two");

    // All members down: both nodes keep serving what they have.
    for member in 0..3 {
        if member != leader {
            cluster.kill(member);
        }
    }
    let mut conn = Conn::connect(b.addr);
    for _ in 0..20 {
        let res = conn.request(b"GET /r HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_eq!(res.header("x-upstream"), Some("two"));
    }
    assert_eq!(
        get(a.addr, "example.com", "/r").header("x-upstream"),
        Some("two")
    );
    wait_long(
        || status(&b)["store"]["connected"] == false,
        "the data plane to notice that etcd is gone",
    );

    // Back: a write through a reaches b.
    cluster.restart(&[0, 1, 2]);
    let back = json!({"uri": "/r", "upstream_id": "one"});
    put_eventually(
        admin_a,
        "/apisix/admin/routes/r",
        &back,
        "a write after the cluster returned",
    );
    wait_long(
        || get(b.addr, "example.com", "/r").header("x-upstream") == Some("one"),
        "the data plane to serve the write",
    );
    let (sa, sb) = (status(&a), status(&b));
    wait_long(
        || status(&b)["serving_revision"] == status(&a)["serving_revision"],
        "both nodes to serve the same revision",
    );
    assert_eq!(sa["role"], "traditional");
    assert_eq!(sb["role"], "data_plane");
}
