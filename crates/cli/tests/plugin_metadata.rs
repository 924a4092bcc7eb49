//! Plugin metadata (`plugin_metadata/<plugin>`): settings shared by every instance of a plugin,
//! here cors's named origin lists. A change to it is served like any other configuration
//! change, over HTTP/1.1 and HTTP/2 alike; metadata its plugin refuses is refused by the Admin
//! API, by `pylon validate` and in the standalone file, with the field and the reason.

mod support;

use serde_json::{json, Value};
use support::client::{admin, get, raw};
use support::protocols::{call, PROTOCOLS};
use support::upstream::Upstream;
use support::{validate, wait_until, Pylon};

const ADMIN_KEY: &str = "test-admin-key";

/// A standalone document: one route whose cors allows the origins of the metadata's
/// `partners` list, and `metadata` as cors's metadata.
fn document(up: &Upstream, metadata: Value) -> String {
    json!({
        "routes": [{
            "id": "c",
            "uri": "/c",
            "plugins": {"cors": {"allow_origins_by_metadata": ["partners"]}},
            "upstream": {"nodes": {up.addr.to_string(): 1}},
        }],
        "plugin_metadata": [metadata],
    })
    .to_string()
}

/// The `Access-Control-Allow-Origin` a request from `origin` gets over every protocol, the
/// same over each.
async fn allowed_origin(pylon: &Pylon, origin: &str) -> Option<String> {
    let mut answers = Vec::new();
    for protocol in PROTOCOLS {
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/c",
            &[("origin", origin)],
            b"",
        )
        .await;
        assert_eq!(res.status, 200, "{protocol:?}: {}", res.text());
        assert_eq!(res.header("vary"), Some("Origin"), "{protocol:?}");
        answers.push(res.header("access-control-allow-origin").map(str::to_owned));
    }
    assert_eq!(answers[0], answers[1], "HTTP/1.1 and HTTP/2 differ");
    answers.remove(0)
}

#[tokio::test]
async fn routes_allow_the_origins_of_the_metadata_and_follow_its_changes() {
    let up = Upstream::start("up");
    let partners = |list: &str| json!({"id": "cors", "allow_origins": {"partners": list}});
    let pylon = Pylon::start(&document(&up, partners("https://a.example")), "");
    assert_eq!(
        allowed_origin(&pylon, "https://a.example").await.as_deref(),
        Some("https://a.example")
    );
    assert_eq!(allowed_origin(&pylon, "https://b.example").await, None);

    // The route is unchanged; only the metadata is: the route's cors is rebuilt with it.
    pylon.reload(&document(
        &up,
        partners("https://b.example,https://c.example"),
    ));
    assert_eq!(
        allowed_origin(&pylon, "https://b.example").await.as_deref(),
        Some("https://b.example")
    );
    assert_eq!(allowed_origin(&pylon, "https://a.example").await, None);
}

#[test]
fn validate_checks_metadata_by_its_plugin() {
    let (code, stdout, stderr) = validate(
        r#"
plugin_metadata:
  - id: cors
    allow_origins: {partners: "a.example"}
  - id: nope
  - id: key-auth
    header: k
  - allow_origins: {}
"#,
    );
    assert_ne!(code, Some(0), "stdout: {stdout}");
    for expected in [
        "plugin_metadata[0].allow_origins.partners: must be `*`, `**`, `null` or origins like `https://a.example` separated by commas",
        "plugin_metadata[1].id: unknown plugin `nope`",
        "plugin_metadata[2].id: plugin `key-auth` has no metadata",
        "plugin_metadata[3].id: must name the plugin",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in:\n{stderr}");
    }
    let (code, stdout, stderr) = validate(
        "plugin_metadata:\n  - id: cors\n    allow_origins: {partners: \"https://a.example,https://b.example\"}\n",
    );
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
}

#[test]
fn the_admin_api_serves_metadata_writes_and_refuses_bad_ones() {
    let up = Upstream::start("up");
    let node = format!(
        "proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 1\n\
         control:\n  listen: \"127.0.0.1:0\"\n\
         metrics:\n  listen: \"127.0.0.1:0\"\n\
         admin:\n  listen: \"127.0.0.1:0\"\n  admin_key:\n    - {{name: admin, key: {ADMIN_KEY}, role: admin}}\n\
         config:\n  source: embedded\n  data_dir: data\n\
         log:\n  level: info\n"
    );
    let pylon = Pylon::run_node(tempfile::tempdir().unwrap(), &node)
        .unwrap_or_else(|e| panic!("pylon did not start: {e}"));
    let admin_addr = pylon.admin.expect("the node runs an Admin API");
    let put = |path: &str, body: Value| admin(admin_addr, ADMIN_KEY, "PUT", path, Some(&body));
    let origin_of = |origin: &str| {
        let request = format!(
            "GET /c HTTP/1.1\r\nHost: example.com\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"
        );
        raw(pylon.addr, request.as_bytes())
            .header("access-control-allow-origin")
            .map(str::to_owned)
    };

    let route = json!({
        "uri": "/c",
        "plugins": {"cors": {"allow_origins_by_metadata": ["partners"]}},
        "upstream": {"nodes": {up.addr.to_string(): 1}},
    });
    assert_eq!(put("/apisix/admin/routes/c", route).status, 201);
    wait_until(
        || get(pylon.addr, "example.com", "/c").status == 200,
        "the route to be served",
    );
    assert_eq!(origin_of("https://a.example"), None);

    let res = put(
        "/apisix/admin/plugin_metadata/cors",
        json!({"allow_origins": {"partners": "https://a.example"}}),
    );
    assert_eq!(res.status, 201, "{}", res.text());
    wait_until(
        || origin_of("https://a.example").as_deref() == Some("https://a.example"),
        "the metadata to be served",
    );

    for (path, body, message) in [
        (
            "/apisix/admin/plugin_metadata/cors",
            json!({"allow_origins": {"partners": "*.example"}}),
            "invalid configuration: allow_origins.partners: must be `*`, `**`, `null` or origins like `https://a.example` separated by commas",
        ),
        (
            "/apisix/admin/plugin_metadata/cors",
            json!({"allow_origins": {"partners": "https://b.example"}, "extra": 1}),
            "invalid configuration: extra: unknown field `extra`, expected `allow_origins`",
        ),
        (
            "/apisix/admin/plugin_metadata/nope",
            json!({}),
            "invalid configuration: id: unknown plugin `nope`",
        ),
        (
            "/apisix/admin/plugin_metadata/key-auth",
            json!({}),
            "invalid configuration: id: plugin `key-auth` has no metadata",
        ),
    ] {
        let res = put(path, body);
        assert_eq!(res.status, 400, "{path}: {}", res.text());
        assert_eq!(res.json()["error_msg"], message, "{path}");
    }
    let stored = admin(
        admin_addr,
        ADMIN_KEY,
        "GET",
        "/apisix/admin/plugin_metadata/cors",
        None,
    );
    assert_eq!(
        stored.json()["value"]["allow_origins"],
        json!({"partners": "https://a.example"})
    );
    assert_eq!(
        origin_of("https://a.example").as_deref(),
        Some("https://a.example")
    );

    let res = admin(
        admin_addr,
        ADMIN_KEY,
        "DELETE",
        "/apisix/admin/plugin_metadata/cors",
        None,
    );
    assert_eq!(res.status, 200, "{}", res.text());
    wait_until(
        || origin_of("https://a.example").is_none(),
        "the metadata's removal to be served",
    );
}
