//! The request pipeline both protocols share, seen through the access log: one record per
//! request, built in one place, that says which side ended an exchange that broke off and why,
//! a request whose client left included.

mod support;

use std::net::TcpStream;
use std::sync::Arc;

use serde_json::{json, Value};
use support::protocols::{call, LeavingClient, LEAVINGS, PROTOCOLS};
use support::upstream::{respond, Gate, Received, Upstream};
use support::{closed_port, read_json_lines, wait_until, Pylon};

/// Routes `/refused` to a closed port, `/slow` to `slow` (with a short read timeout) and
/// `/ok` to `ok`.
fn config(closed: std::net::SocketAddr, slow: &Upstream, ok: &Upstream) -> String {
    let to = |addr: std::net::SocketAddr| json!({"nodes": {addr.to_string(): 1}});
    json!({
        "routes": [
            {"id": "refused", "uri": "/refused", "upstream": to(closed)},
            {"id": "slow", "uri": "/slow", "upstream": to(slow.addr),
             "timeout": {"connect": 1, "send": 1, "read": 0.3}},
            {"id": "ok", "uri": "/ok", "upstream": to(ok.addr)},
        ]
    })
    .to_string()
}

#[tokio::test]
async fn the_access_log_names_the_side_and_cause_of_a_failed_exchange() {
    let closed = closed_port();
    let gate = Gate::default();
    let held = gate.clone();
    let slow = Upstream::with_handler(
        "slow",
        Arc::new(move |_: &Received, stream: &mut TcpStream| {
            held.wait();
            respond(stream, 200, &[], b"too late");
            false
        }),
    );
    let ok = Upstream::start("ok");
    let pylon = Pylon::start(&config(closed.addr, &slow, &ok), "");
    let cases = [
        ("/refused", 502, Some("upstream_refused")),
        ("/slow", 504, Some("upstream_timeout")),
        ("/ok", 200, None),
        ("/none", 404, None),
    ];
    let mut logged = 0;
    for protocol in PROTOCOLS {
        for (target, status, failure) in cases {
            let res = call(protocol, pylon.addr, "GET", target, &[], b"").await;
            let what = format!("{protocol:?} {target}");
            assert_eq!(res.status, status, "{what}");
            logged += 1;
            let log = pylon.wait_access_log(logged);
            let line = &log[logged - 1];
            assert_eq!(line["uri"], target, "{what}");
            assert_eq!(line["status"], status, "{what}");
            assert_eq!(line["host"], "example.com", "{what}");
            assert_eq!(
                line.get("failure").and_then(Value::as_str),
                failure,
                "{what}: {line}"
            );
            let length = line["request_length"].as_u64().unwrap_or(0);
            assert!(
                length >= format!("GET {target}").len() as u64,
                "{what}: {line}"
            );
        }
    }
    gate.open();
}

#[tokio::test]
async fn a_request_whose_client_leaves_is_logged_and_its_log_phase_runs() {
    let cases = LEAVINGS;
    let gate = Gate::default();
    let held = gate.clone();
    let slow = Upstream::with_handler(
        "slow",
        Arc::new(move |_: &Received, stream: &mut TcpStream| {
            held.wait();
            respond(stream, 200, &[], b"too late");
            false
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let plugin_log = dir.path().join("plugin.log");
    let routes = json!({"routes": [{"id": "slow", "uri": "/slow/*",
        "upstream": {"nodes": {slow.addr.to_string(): 1}},
        "plugins": {"file-logger": {"path": plugin_log.display().to_string()}}}]});
    let pylon = Pylon::start(&routes.to_string(), "");
    for (i, leaving) in cases.into_iter().enumerate() {
        let target = format!("/slow/{i}");
        let mut client = LeavingClient::send(leaving, pylon.addr, &target);
        wait_until(
            || slow.request_count() == i + 1,
            "the request at the upstream",
        );
        client.leave();
        let log = pylon.wait_access_log(i + 1);
        let line = &log[i];
        let what = format!("{leaving:?}: {line}");
        assert_eq!(line["uri"], target, "{what}");
        assert_eq!(line["status"], 499, "{what}");
        assert_eq!(line["failure"], "client_reset", "{what}");
        assert_eq!(line["route_id"], "slow", "{what}");
        // The route's `file-logger` saw it in its log phase too.
        wait_until(
            || {
                read_json_lines(&plugin_log)
                    .iter()
                    .any(|record| record["request"]["uri"] == target.as_str())
            },
            &format!("{leaving:?}: the plugin's record"),
        );
        let records = read_json_lines(&plugin_log);
        let record = records
            .iter()
            .find(|record| record["request"]["uri"] == target.as_str())
            .unwrap();
        assert_eq!(record["response"]["status"], 499, "{leaving:?}: {record}");
    }
    gate.open();
}
