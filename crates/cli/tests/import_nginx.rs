//! `pylon import nginx`: a realistic nginx configuration (crates/import/tests/data/api.conf,
//! its backends moved to test upstreams on loopback) imported, validated, and run, then asked
//! over HTTP/1.1 and HTTP/2 which backend answers: nginx's location precedence, rewrites and
//! headers, through the real gateway.

mod support;

use std::path::Path;

use serde_json::json;
use support::client::{admin, get};
use support::protocols::{call, PROTOCOLS};
use support::upstream::Upstream;
use support::{pylon_command, validate, Pylon};

/// api.conf with its backends on `app` (both nodes), `canary` and `legacy`, and its API host
/// renamed to the host the test client sends.
fn api_conf(app: &Upstream, canary: &Upstream, legacy: &Upstream) -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../import/tests/data/api.conf");
    std::fs::read_to_string(data)
        .unwrap()
        .replace("127.0.0.1:3000", &app.addr.to_string())
        .replace("127.0.0.1:3001", &app.addr.to_string())
        .replace("127.0.0.1:3002", &canary.addr.to_string())
        .replace("127.0.0.1:4000", &legacy.addr.to_string())
        .replace("server_name api.example.com", "server_name example.com")
}

#[tokio::test]
async fn an_imported_nginx_config_routes_as_nginx_does() {
    let (app, canary, legacy) = (
        Upstream::start("app"),
        Upstream::start("canary"),
        Upstream::start("legacy"),
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("api.conf"),
        api_conf(&app, &canary, &legacy),
    )
    .unwrap();

    let (code, document, stderr) = pylon_command(dir.path(), &["import", "nginx", "api.conf"], &[]);
    assert_eq!(code, Some(3), "some directives are not converted: {stderr}");
    let listed: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        listed,
        [
            "api.conf:4: server: max_fails=3 fail_timeout=10s not converted (Pylon's passive health checks are set per upstream)",
            "api.conf:26: proxy_set_header: the nginx variable $msec has no Pylon equivalent",
            "api.conf:56: proxy_cache: no Pylon equivalent is known to the importer",
        ]
    );
    let (code, out, err) = validate(&document);
    assert_eq!(code, Some(0), "{out}{err}");

    let pylon = Pylon::start(&document, "");
    for protocol in PROTOCOLS {
        let what = |path: &str| format!("{protocol:?} {path}");

        let res = call(protocol, pylon.addr, "GET", "/", &[], b"").await;
        assert_eq!(
            (res.status, res.text().as_str()),
            (200, "api root"),
            "{}",
            what("/")
        );

        let res = call(protocol, pylon.addr, "GET", "/orders?page=2", &[], b"").await;
        assert_eq!(res.text(), "app", "{}", what("/orders"));
        let got = app.last();
        assert_eq!(got.target, "/orders?page=2");
        assert_eq!(got.header("host"), Some("example.com"), "Host $host");

        let res = call(protocol, pylon.addr, "GET", "/v1/orders", &[], b"").await;
        assert_eq!(res.text(), "app", "{}", what("/v1/orders"));
        let canary_on = [("X-Canary", "1")];
        let res = call(protocol, pylon.addr, "GET", "/v1/orders", &canary_on, b"").await;
        assert_eq!(
            res.text(),
            "canary",
            "{}",
            what("/v1/orders with the canary header")
        );

        // The regex location beats the /v1/ prefix, and its `if`...
        let res = call(protocol, pylon.addr, "GET", "/v1/users/42", &canary_on, b"").await;
        assert_eq!(res.text(), "app", "{}", what("/v1/users/42"));
        assert_eq!(res.header("x-matched"), Some("users"));
        // ... but not the ^~ prefix.
        let res = call(protocol, pylon.addr, "GET", "/v1/users/me", &[], b"").await;
        assert_eq!(res.text(), "app", "{}", what("/v1/users/me"));
        assert_eq!(res.header("x-matched"), None);

        // proxy_pass with a URI replaces the location's prefix.
        let res = call(protocol, pylon.addr, "GET", "/legacy/report?x=1", &[], b"").await;
        assert_eq!(res.text(), "legacy", "{}", what("/legacy/report"));
        assert_eq!(legacy.last().target, "/report?x=1");
    }
}

/// Sent as a change set: a draft of the tenant named, reviewed and published like any other,
/// and then served.
#[tokio::test]
async fn an_imported_nginx_config_becomes_a_change_set() {
    const KEY: &str = "import-admin-key";
    let (app, canary, legacy) = (
        Upstream::start("app"),
        Upstream::start("canary"),
        Upstream::start("legacy"),
    );
    let node = format!(
        "proxy:\n  listen: [\"127.0.0.1:0\"]\n  workers: 1\n\
         control:\n  listen: \"127.0.0.1:0\"\n\
         metrics:\n  listen: \"127.0.0.1:0\"\n\
         admin:\n  listen: \"127.0.0.1:0\"\n  admin_key: [{{name: ops, key: {KEY}, role: admin}}]\n\
         config:\n  source: embedded\n  data_dir: data\n"
    );
    let pylon = Pylon::run_node(tempfile::tempdir().unwrap(), &node).unwrap();
    let admin_addr = pylon.admin.unwrap();
    let res = admin(
        admin_addr,
        KEY,
        "PUT",
        "/pylon/admin/tenants/web",
        Some(&json!({"review": true})),
    );
    assert_eq!(res.status, 201);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("api.conf"),
        api_conf(&app, &canary, &legacy),
    )
    .unwrap();

    let admin_arg = admin_addr.to_string();
    let args = [
        "import",
        "nginx",
        "api.conf",
        "--change-set",
        "from nginx: api.conf",
        "--tenant",
        "web",
        "--admin",
        &admin_arg,
        "--api-key",
        KEY,
    ];
    let (code, stdout, stderr) = pylon_command(dir.path(), &args, &[]);
    assert_eq!(
        code,
        Some(3),
        "what is not converted is still listed: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
    assert!(stdout.contains("is a draft of tenant web"), "{stdout}");

    let sets = admin(admin_addr, KEY, "GET", "/pylon/admin/change_sets", None).json();
    assert_eq!(sets["total"], 1);
    let set = &sets["list"][0];
    assert_eq!(set["title"], "from nginx: api.conf");
    assert_eq!(set["tenant_id"], "web");
    let id = set["id"].as_str().unwrap();
    // Nothing is served before the set is reviewed and published.
    assert_eq!(get(pylon.addr, "example.com", "/orders").status, 404);
    let reviewer = admin(
        admin_addr,
        KEY,
        "PUT",
        "/pylon/admin/users/rev",
        Some(&json!({"role": "reviewer", "tenant_id": "web"})),
    )
    .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let step = |key: &str, action: &str| {
        let res = admin(
            admin_addr,
            key,
            "POST",
            &format!("/pylon/admin/change_sets/{id}/{action}"),
            None,
        );
        assert_eq!(res.status, 200, "{action}: {}", res.text());
    };
    step(KEY, "submit");
    step(&reviewer, "approve");
    step(KEY, "publish");
    for protocol in PROTOCOLS {
        let res = call(protocol, pylon.addr, "GET", "/orders", &[], b"").await;
        assert_eq!(res.text(), "app", "{protocol:?}");
    }
}

#[test]
fn unreadable_and_unparsable_files_say_where() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = pylon_command(dir.path(), &["import", "nginx", "missing.conf"], &[]);
    assert_eq!(code, Some(1));
    assert_eq!(out, "");
    assert!(err.starts_with("pylon: missing.conf: cannot read"), "{err}");

    std::fs::write(dir.path().join("broken.conf"), "server {\n  listen 80\n}\n").unwrap();
    let (code, out, err) = pylon_command(dir.path(), &["import", "nginx", "broken.conf"], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(out, "");
    assert_eq!(
        err,
        "pylon: broken.conf:3: directive \"listen\" is not terminated by \";\"\n"
    );

    std::fs::write(
        dir.path().join("clean.conf"),
        "server { location / { return 204; } }\n",
    )
    .unwrap();
    let (code, out, err) = pylon_command(dir.path(), &["import", "nginx", "clean.conf"], &[]);
    assert_eq!((code, err.as_str()), (Some(0), ""));
    assert_eq!(validate(&out).0, Some(0), "{out}");
}
