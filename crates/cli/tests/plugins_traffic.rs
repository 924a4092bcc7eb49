//! Plugins that shape traffic, through the gateway, over HTTP/1.1 and HTTP/2 alike:
//! fault-injection (delays and aborts).
//!
//! Configurations are written as JSON, which is YAML: the standalone `apisix.yaml`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::protocols::{call, PROTOCOLS};
use support::upstream::Upstream;
use support::Pylon;

/// A route on `uri` to `addr` with `plugins`.
fn route(id: &str, uri: &str, addr: SocketAddr, plugins: Value) -> Value {
    json!({"id": id, "uri": uri, "plugins": plugins, "upstream": {"nodes": {addr.to_string(): 1}}})
}

fn routes(routes: &[Value]) -> String {
    json!({ "routes": routes }).to_string()
}

// === fault-injection ===

#[tokio::test]
async fn fault_injection_aborts_with_its_rendered_answer_and_the_response_phases_run() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[route(
            "abort",
            "/abort",
            up.addr,
            json!({
                "fault-injection": {"abort": {
                    "http_status": 418,
                    "body": "fault for $arg_name via ${http_x_via}",
                    "headers": {"X-Fault": "$uri", "Retry-After": 5}
                }},
                // A response phase: it sees the abort as it would the upstream's answer.
                "response-rewrite": {"headers": {"set": {"X-Rewritten": "yes"}}}
            }),
        )]),
        "",
    );
    for protocol in PROTOCOLS {
        let what = format!("{protocol:?}");
        let headers = [("x-via", "proxy-1")];
        let res = call(
            protocol,
            pylon.addr,
            "GET",
            "/abort?name=ann",
            &headers,
            b"",
        )
        .await;
        assert_eq!(res.status, 418, "{what}: {}", res.text());
        assert_eq!(res.text(), "fault for ann via proxy-1", "{what}");
        assert_eq!(res.header("x-fault"), Some("/abort"), "{what}");
        assert_eq!(res.header("retry-after"), Some("5"), "{what}");
        assert_eq!(res.header("content-type"), Some("text/plain"), "{what}");
        assert_eq!(res.header("x-rewritten"), Some("yes"), "{what}");
        if let Some(length) = res.header("content-length") {
            assert_eq!(length, res.body.len().to_string(), "{what}");
        }
    }
    assert_eq!(
        up.request_count(),
        0,
        "an aborted request reached the upstream"
    );
}

#[tokio::test]
async fn fault_injection_aborts_only_the_requests_its_vars_match() {
    let up = Upstream::start("up");
    let pylon = Pylon::start(
        &routes(&[route(
            "vars",
            "/vars",
            up.addr,
            json!({"fault-injection": {"abort": {
                "http_status": 503,
                "body": "injected",
                // Alternatives: the header, or both arguments.
                "vars": [
                    [["http_x_fault", "==", "yes"]],
                    [["arg_a", "==", "1"], ["arg_b", "==", "2"]]
                ]
            }}}),
        )]),
        "",
    );
    for protocol in PROTOCOLS {
        for (target, headers, aborted) in [
            ("/vars", &[("x-fault", "yes")][..], true),
            ("/vars", &[("x-fault", "no")][..], false),
            ("/vars", &[][..], false),
            ("/vars?a=1&b=2", &[][..], true),
            ("/vars?a=1", &[][..], false),
        ] {
            let what = format!("{protocol:?} {target} {headers:?}");
            let before = up.request_count();
            let res = call(protocol, pylon.addr, "GET", target, headers, b"").await;
            let expected = if aborted {
                (503, "injected")
            } else {
                (200, "up")
            };
            assert_eq!((res.status, res.text().as_str()), expected, "{what}");
            let reached = up.request_count() - before;
            assert_eq!(reached, usize::from(!aborted), "{what}: upstream requests");
        }
    }
}

#[tokio::test]
async fn fault_injection_delays_before_the_upstream_and_before_an_abort() {
    let up = Upstream::start("up");
    let delay = Duration::from_millis(500);
    let pylon = Pylon::start(
        &routes(&[
            route(
                "delay",
                "/delay",
                up.addr,
                json!({"fault-injection": {"delay": {"duration": 0.5}}}),
            ),
            route(
                "both",
                "/both",
                up.addr,
                json!({"fault-injection": {
                    "delay": {"duration": 0.5},
                    "abort": {"http_status": 500, "body": "late and broken"}
                }}),
            ),
        ]),
        "",
    );
    for protocol in PROTOCOLS {
        let what = format!("{protocol:?} /delay");
        let before = up.request_count();
        let started = Instant::now();
        let res = call(protocol, pylon.addr, "GET", "/delay", &[], b"").await;
        // Only a lower bound: the gateway must not have answered before the delay was over.
        assert!(started.elapsed() >= delay, "{what}: answered early");
        assert_eq!((res.status, res.text().as_str()), (200, "up"), "{what}");
        assert_eq!(up.request_count(), before + 1, "{what}: upstream requests");

        let what = format!("{protocol:?} /both");
        let before = up.request_count();
        let started = Instant::now();
        let res = call(protocol, pylon.addr, "GET", "/both", &[], b"").await;
        assert!(started.elapsed() >= delay, "{what}: answered early");
        assert_eq!(
            (res.status, res.text().as_str()),
            (500, "late and broken"),
            "{what}"
        );
        assert_eq!(up.request_count(), before, "{what}: upstream requests");
    }
}
