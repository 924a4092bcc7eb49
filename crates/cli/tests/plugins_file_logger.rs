//! file-logger through the gateway, over HTTP/1.1 and HTTP/2 alike: one JSON line per request
//! with the configured fields, `match` leaving requests out, and a rotated file followed.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Value};
use support::protocols::{call, PROTOCOLS};
use support::upstream::Upstream;
use support::{read_json_lines, wait_until, Pylon};

/// A route on `uri` to `addr` with a file-logger configured as `logger`.
fn route(id: &str, uri: &str, addr: SocketAddr, logger: Value) -> Value {
    json!({"id": id, "uri": uri, "plugins": {"file-logger": logger},
        "upstream": {"nodes": {addr.to_string(): 1}}})
}

fn routes(routes: &[Value]) -> String {
    json!({ "routes": routes }).to_string()
}

/// Waits until the file at `path` has `n` lines and returns them.
fn wait_lines(path: &Path, n: usize) -> Vec<Value> {
    wait_until(
        || read_json_lines(path).len() >= n,
        &format!("{n} lines in {}", path.display()),
    );
    read_json_lines(path)
}

#[tokio::test]
async fn each_request_is_one_line_with_the_configured_fields() {
    let up = Upstream::start("up");
    let dir = tempfile::tempdir().unwrap();
    let custom = dir.path().join("custom.log");
    let default = dir.path().join("default.log");
    let pylon = Pylon::start(
        &routes(&[
            route(
                "custom",
                "/custom",
                up.addr,
                json!({"path": custom, "log_format": {
                    "method": "$request_method",
                    "uri": "$request_uri",
                    "status": "$status",
                    "route": "$route_id",
                    "who": "user ${http_x_user}",
                    "absent": "$http_x_absent",
                    "fixed": 1
                }}),
            ),
            route("default", "/default", up.addr, json!({"path": default})),
        ]),
        "",
    );
    for (i, protocol) in PROTOCOLS.into_iter().enumerate() {
        let what = format!("{protocol:?}");
        let target = format!("/custom?n={i}");
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            &target,
            &[("x-user", "ann")],
            b"",
        )
        .await;
        assert_eq!(res.status, 200, "{what}");
        let lines = wait_lines(&custom, i + 1);
        assert_eq!(lines.len(), i + 1, "{what}: {lines:?}");
        assert_eq!(
            lines[i],
            json!({"method": "GET", "uri": target, "status": "200", "route": "custom",
                "who": "user ann", "fixed": 1}),
            "{what}"
        );

        let res = call(
            protocol,
            pylon.addr,
            "POST",
            "/default",
            &[("x-user", "bob")],
            b"hi",
        )
        .await;
        assert_eq!(res.status, 200, "{what}");
        let lines = wait_lines(&default, i + 1);
        assert_eq!(lines.len(), i + 1, "{what}: {lines:?}");
        let line = &lines[i];
        assert_eq!(line["request"]["method"], "POST", "{what}");
        assert_eq!(line["request"]["uri"], "/default", "{what}");
        assert_eq!(line["request"]["headers"]["x-user"], "bob", "{what}");
        assert_eq!(line["response"]["status"], 200, "{what}");
        assert!(line["response"]["size"].as_u64() > Some(0), "{what}");
        assert_eq!(line["upstream_status"], 200, "{what}");
        assert_eq!(line["route_id"], "default", "{what}");
        assert_eq!(line["client_ip"], "127.0.0.1", "{what}");
        assert!(line["latency"].is_number(), "{what}");
    }
}

#[tokio::test]
async fn match_leaves_the_other_requests_out() {
    let up = Upstream::start("up");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("matched.log");
    let pylon = Pylon::start(
        &routes(&[route(
            "m",
            "/m",
            up.addr,
            json!({"path": path, "log_format": {"uri": "$request_uri"},
                "match": [[["arg_log", "==", "yes"]], [["http_x_log", "==", "always"]]]}),
        )]),
        "",
    );
    let mut expected = Vec::new();
    for (i, protocol) in PROTOCOLS.into_iter().enumerate() {
        let what = format!("{protocol:?}");
        let skipped = format!("/m?log=no&p={i}");
        let res = call(protocol, pylon.addr, "GET", &skipped, &[], b"").await;
        assert_eq!(res.status, 200, "{what}");
        // The plugins' log phase runs before the access log's record: once the access log
        // has the request, its line (had it one) was queued ahead of the next request's.
        pylon.wait_access_log(3 * i + 1);

        for (target, headers) in [
            (format!("/m?log=yes&p={i}"), &[][..]),
            (format!("/m?p={i}"), &[("x-log", "always")][..]),
        ] {
            let res = call(protocol, pylon.addr, "GET", &target, headers, b"").await;
            assert_eq!(res.status, 200, "{what}");
            expected.push(json!({ "uri": target }));
            assert_eq!(wait_lines(&path, expected.len()), expected, "{what}");
        }
    }
}

#[tokio::test]
async fn a_rotated_file_is_recreated_and_written_on() {
    let up = Upstream::start("up");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rotated.log");
    let pylon = Pylon::start(
        &routes(&[route(
            "r",
            "/r",
            up.addr,
            json!({"path": path, "log_format": {"uri": "$request_uri"}}),
        )]),
        "",
    );
    for (i, protocol) in PROTOCOLS.into_iter().enumerate() {
        let what = format!("{protocol:?}");
        let before = format!("/r?before={i}");
        let res = call(protocol, pylon.addr, "GET", &before, &[], b"").await;
        assert_eq!(res.status, 200, "{what}");
        assert_eq!(wait_lines(&path, 1), [json!({ "uri": before })], "{what}");

        // logrotate's default: move the file away, let the writer create it anew.
        let rotated = dir.path().join(format!("rotated.log.{i}"));
        std::fs::rename(&path, &rotated).unwrap();
        let after = format!("/r?after={i}");
        let res = call(protocol, pylon.addr, "GET", &after, &[], b"").await;
        assert_eq!(res.status, 200, "{what}");
        assert_eq!(wait_lines(&path, 1), [json!({ "uri": after })], "{what}");
        assert_eq!(
            read_json_lines(&rotated),
            [json!({ "uri": before })],
            "{what}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
