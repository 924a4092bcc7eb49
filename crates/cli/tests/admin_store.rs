//! A node on the embedded store (the default): routes written through the Admin API are
//! served at once, survive a crash (kill -9) with every acknowledged write, and the whole
//! configuration round-trips through `pylon config dump|diff|apply`.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use support::client::{admin, get, try_admin};
use support::protocols::{call, PROTOCOLS};
use support::upstream::Upstream;
use support::{pylon_command, wait_until, Pylon};

const ADMIN_KEY: &str = "test-admin-key";
const VIEWER_KEY: &str = "test-viewer-key";

/// The node config of a traditional node on the embedded store in `data`, every listener on
/// a free port.
fn embedded_node() -> String {
    format!(
        "proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 1\n  https:\n    listen: [\"127.0.0.1:0\"]\n\
         control:\n  listen: \"127.0.0.1:0\"\n\
         metrics:\n  listen: \"127.0.0.1:0\"\n\
         admin:\n  listen: \"127.0.0.1:0\"\n  admin_key:\n    - {{name: admin, key: {ADMIN_KEY}, role: admin}}\n    - {{name: viewer, key: {VIEWER_KEY}, role: viewer}}\n\
         config:\n  source: embedded\n  data_dir: data\n\
         log:\n  level: info\n"
    )
}

fn start(dir: tempfile::TempDir) -> Pylon {
    Pylon::run_node(dir, &embedded_node()).unwrap_or_else(|e| panic!("pylon did not start: {e}"))
}

fn admin_addr(pylon: &Pylon) -> std::net::SocketAddr {
    pylon.admin.expect("the node runs an Admin API")
}

fn put(pylon: &Pylon, path: &str, body: serde_json::Value) -> support::client::Response {
    admin(admin_addr(pylon), ADMIN_KEY, "PUT", path, Some(&body))
}

fn wait_status(pylon: &Pylon, target: &str, status: u16) {
    wait_until(
        || get(pylon.addr, "example.com", target).status == status,
        &format!("{target} to answer {status}"),
    );
}

#[test]
fn admin_writes_are_served_and_bad_ones_change_nothing() {
    let up = Upstream::start("one");
    let pylon = start(tempfile::tempdir().unwrap());
    let res = put(
        &pylon,
        "/apisix/admin/upstreams/u1",
        json!({"type": "roundrobin", "nodes": {up.addr.to_string(): 1}}),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    let res = put(
        &pylon,
        "/apisix/admin/routes/1",
        json!({"uri": "/hello", "upstream_id": "u1"}),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    assert_eq!(res.json()["value"]["uri"], "/hello");
    wait_status(&pylon, "/hello", 200);
    assert_eq!(
        get(pylon.addr, "example.com", "/hello").header("x-upstream"),
        Some("one")
    );

    // A route to an upstream that does not exist, a bad field, a viewer's write: each is
    // refused with the field and the reason, and nothing changes.
    let res = put(
        &pylon,
        "/apisix/admin/routes/2",
        json!({"uri": "/other", "upstream_id": "nope"}),
    );
    assert_eq!(res.status, 400);
    assert_eq!(
        res.json()["error_msg"],
        "failed to fetch upstream info by upstream id [nope], response code: 404"
    );
    let res = put(
        &pylon,
        "/apisix/admin/routes/1",
        json!({"uri": "/hello", "upstream_id": "u1", "methods": ["FETCH"]}),
    );
    assert_eq!(res.status, 400);
    assert!(res.json()["error_msg"]
        .as_str()
        .unwrap()
        .contains("methods[0]"));
    let viewer = admin(
        admin_addr(&pylon),
        VIEWER_KEY,
        "DELETE",
        "/apisix/admin/routes/1",
        None,
    );
    assert!(matches!(viewer.status, 401 | 403), "{}", viewer.status);
    let res = admin(
        admin_addr(&pylon),
        ADMIN_KEY,
        "DELETE",
        "/apisix/admin/upstreams/u1",
        None,
    );
    assert_eq!(
        res.status,
        400,
        "an upstream in use is not deleted: {}",
        res.text()
    );
    assert_eq!(get(pylon.addr, "example.com", "/hello").status, 200);
    assert_eq!(get(pylon.addr, "example.com", "/other").status, 404);
    let route = admin(
        admin_addr(&pylon),
        VIEWER_KEY,
        "GET",
        "/apisix/admin/routes/1",
        None,
    );
    assert_eq!(route.status, 200);
    assert_eq!(route.json()["value"].get("methods"), None);

    // The node says which revision it serves.
    let status = get(pylon.control.unwrap(), "localhost", "/v1/status").json();
    assert_eq!(status["role"], "traditional");
    assert_eq!(status["serving_revision"], status["store"]["revision"]);
    assert!(status["id"].as_str().is_some_and(|id| !id.is_empty()));
    for path in ["/status", "/status/ready"] {
        let res = get(pylon.control.unwrap(), "localhost", path);
        assert_eq!(
            (res.status, res.text().as_str()),
            (200, r#"{"status":"ok"}"#),
            "{path}"
        );
    }
}

/// An upstream with no nodes is stored, as APISIX stores it (discovery and staged roll-outs
/// fill it later), and its routes answer 503 until it has some, over HTTP/1 and HTTP/2.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_without_nodes_is_kept_and_answers_503_until_it_has_some() {
    let up = Upstream::start("one");
    let pylon = start(tempfile::tempdir().unwrap());
    let empty = json!({"type": "roundrobin", "nodes": {}});
    let res = put(&pylon, "/apisix/admin/upstreams/staged", empty);
    assert_eq!(res.status, 201, "{}", res.text());
    let route = json!({"uri": "/staged", "upstream_id": "staged"});
    let res = put(&pylon, "/apisix/admin/routes/staged", route);
    assert_eq!(res.status, 201, "{}", res.text());
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", "/staged", &[], b"").await;
        assert_eq!(res.status, 503, "{protocol:?}: {}", res.text());
        assert_eq!(
            res.json(),
            json!({"error_msg": "503 No Upstream Node Available"}),
            "{protocol:?}"
        );
    }
    let nodes = json!({"type": "roundrobin", "nodes": {up.addr.to_string(): 1}});
    let res = put(&pylon, "/apisix/admin/upstreams/staged", nodes);
    assert_eq!(res.status, 200, "{}", res.text());
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", "/staged", &[], b"").await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
    }
}

/// Read-your-writes: when the Admin API answers a write, every worker serves it. With two
/// workers, each route is requested right after its 201, on new connections (which land on
/// either worker).
#[test]
fn a_write_is_served_by_every_worker_once_the_admin_api_answers() {
    let up = Upstream::start("one");
    let config = embedded_node().replace("workers: 1", "workers: 2");
    let pylon = Pylon::run_node(tempfile::tempdir().unwrap(), &config).unwrap();
    for i in 0..150 {
        let uri = format!("/ryw/{i}");
        let res = put(
            &pylon,
            &format!("/apisix/admin/routes/ryw{i}"),
            json!({"uri": uri, "upstream": {"nodes": {up.addr.to_string(): 1}}}),
        );
        assert_eq!(res.status, 201, "{}", res.text());
        for _ in 0..2 {
            let res = get(pylon.addr, "example.com", &uri);
            assert_eq!(res.status, 200, "{uri} right after its 201: {}", res.text());
        }
    }
}

#[test]
fn every_acknowledged_write_survives_kill_9() {
    let up = Upstream::start("up");
    let pylon = start(tempfile::tempdir().unwrap());
    let res = put(
        &pylon,
        "/apisix/admin/upstreams/u",
        json!({"nodes": {up.addr.to_string(): 1}}),
    );
    assert_eq!(res.status, 201, "{}", res.text());

    // A writer puts routes as fast as it can and records each one acknowledged; the node is
    // killed in the middle of that stream.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let admin_at = admin_addr(&pylon);
    let writer = {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        std::thread::spawn(move || {
            for i in 0..10_000 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let body = json!({"uri": format!("/r{i}"), "upstream_id": "u"});
                let path = format!("/apisix/admin/routes/r{i}");
                match try_admin(admin_at, ADMIN_KEY, "PUT", &path, Some(&body)) {
                    Ok(res) if res.status == 201 => {
                        let revision = res.json()["modifiedIndex"].as_u64().unwrap();
                        acknowledged.lock().unwrap().push((i, revision));
                    }
                    _ => return,
                }
            }
        })
    };
    wait_until(
        || acknowledged.lock().unwrap().len() >= 40,
        "40 acknowledged writes",
    );
    let dir = pylon.into_dir();
    stop.store(true, Ordering::SeqCst);
    let _ = writer.join();
    let acknowledged = acknowledged.lock().unwrap().clone();

    let pylon = start(dir);
    let listing = admin(
        admin_addr(&pylon),
        ADMIN_KEY,
        "GET",
        "/apisix/admin/routes?page_size=500",
        None,
    );
    assert_eq!(listing.status, 200);
    let listing = listing.json();
    let stored: Vec<String> = listing["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["value"]["uri"].as_str().unwrap().to_owned())
        .collect();
    for (i, _) in &acknowledged {
        assert!(
            stored.contains(&format!("/r{i}")),
            "acknowledged write /r{i} lost after kill -9 ({} acknowledged, {} stored)",
            acknowledged.len(),
            stored.len()
        );
    }
    let (last, last_revision) = *acknowledged.last().unwrap();
    assert_eq!(
        get(pylon.addr, "example.com", &format!("/r{last}")).status,
        200
    );
    // The store goes on where it was: a new write gets a revision after the old ones.
    let res = put(
        &pylon,
        "/apisix/admin/routes/after",
        json!({"uri": "/after", "upstream_id": "u"}),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    let created = res.json()["createdIndex"].as_u64().unwrap();
    assert!(
        created > last_revision,
        "revision {created} reused: the last acknowledged write had {last_revision}"
    );
}

/// `pylon config ARGS` against this node's Admin API: success, stdout, stderr.
fn pylon_config(pylon: &Pylon, args: &[&str]) -> (bool, String, String) {
    let admin = admin_addr(pylon).to_string();
    let args = [&["config"], args, &["--admin", admin.as_str()]].concat();
    let (code, stdout, stderr) =
        pylon_command(pylon.dir.path(), &args, &[("PYLON_API_KEY", ADMIN_KEY)]);
    (code == Some(0), stdout, stderr)
}

#[test]
fn config_dump_diff_and_apply_keep_the_gateway_in_git() {
    let (one, two) = (Upstream::start("one"), Upstream::start("two"));
    let pylon = start(tempfile::tempdir().unwrap());
    let file = pylon.dir.path().join("gateway.yaml");
    let document = |route_b_to: &Upstream, with_c: bool| {
        let mut doc = format!(
            "upstreams:\n  - {{id: one, nodes: {{{}}}}}\n  - {{id: two, nodes: {{{}}}}}\nroutes:\n  - {{id: a, uri: /a, upstream_id: one}}\n  - {{id: b, uri: /b, upstream_id: {}}}\n",
            one.node(),
            two.node(),
            if std::ptr::eq(route_b_to, &one) { "one" } else { "two" },
        );
        if with_c {
            doc.push_str("  - {id: c, uri: /c, upstream_id: one}\n");
        }
        doc
    };

    std::fs::write(&file, document(&one, true)).unwrap();
    let (ok, out, err) = pylon_config(&pylon, &["diff", "gateway.yaml"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("+ routes/a") && out.contains("+ upstreams/one"),
        "{out}"
    );
    assert_eq!(
        get(pylon.addr, "example.com", "/a").status,
        404,
        "diff changes nothing"
    );
    let (ok, out, err) = pylon_config(&pylon, &["apply", "gateway.yaml"]);
    assert!(ok, "{err}");
    assert!(out.contains("5 resource(s) changed"), "{out}");
    wait_status(&pylon, "/c", 200);
    assert_eq!(
        get(pylon.addr, "example.com", "/b").header("x-upstream"),
        Some("one")
    );

    // The dump is the same document: applying it changes nothing.
    let (ok, dump, err) = pylon_config(&pylon, &["dump"]);
    assert!(ok, "{err}");
    std::fs::write(pylon.dir.path().join("dump.yaml"), &dump).unwrap();
    let (ok, out, err) = pylon_config(&pylon, &["diff", "dump.yaml", "--prune"]);
    assert!(ok, "{err}");
    assert!(out.contains("no changes"), "{out}\n{dump}");

    // A changed route, a removed one: without --prune the removed one stays.
    std::fs::write(&file, document(&two, false)).unwrap();
    let (ok, out, err) = pylon_config(&pylon, &["apply", "gateway.yaml"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("~ routes/b") && !out.contains("routes/c"),
        "{out}"
    );
    wait_until(
        || get(pylon.addr, "example.com", "/b").header("x-upstream") == Some("two"),
        "/b to move to upstream two",
    );
    assert_eq!(get(pylon.addr, "example.com", "/c").status, 200);
    let (ok, out, err) = pylon_config(&pylon, &["apply", "gateway.yaml", "--prune"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("- routes/c") && out.contains("1 resource(s) changed"),
        "{out}"
    );
    wait_status(&pylon, "/c", 404);

    // An invalid document is refused whole, with the path of the error, and changes nothing.
    std::fs::write(
        &file,
        "routes:\n  - {id: a, uri: /a, upstream_id: one}\n  - {id: z, uri: /z, upstream_id: missing}\n",
    )
    .unwrap();
    let (ok, _, err) = pylon_config(&pylon, &["apply", "gateway.yaml", "--prune"]);
    assert!(!ok);
    assert!(err.contains("routes[1].upstream_id"), "{err}");
    assert_eq!(
        get(pylon.addr, "example.com", "/b").header("x-upstream"),
        Some("two")
    );
}
