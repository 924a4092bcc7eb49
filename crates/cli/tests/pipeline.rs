//! The request pipeline both protocols share, seen through the access log: one record per
//! request, built in one place, that says which side ended an exchange that broke off and why.

mod support;

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use serde_json::{json, Value};
use support::protocols::{call, PROTOCOLS};
use support::upstream::{respond, Gate, Received, Upstream};
use support::Pylon;

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
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
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
    let pylon = Pylon::start(&config(closed, &slow, &ok), "");
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
