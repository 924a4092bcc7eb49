//! `api-breaker` through the gateway, over HTTP/1.1 and HTTP/2 alike: failing answers open the
//! breaker, which then answers in the upstream's place; healthy answers close it again; the
//! gateway's own 502 for an upstream it cannot reach counts as a failure too.
//!
//! Configurations are written as JSON, which is YAML: the standalone `apisix.yaml`.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::protocols::{call, Protocol, PROTOCOLS};
use support::upstream::{respond, Upstream};
use support::{closed_port, Pylon};

/// GETs `uri`, and waits until the gateway has logged it: its `log` phase, where the breaker
/// counts the answer, runs just before the access log line is written, after the response.
async fn get(protocol: Protocol, pylon: &Pylon, uri: &str) -> (u16, String) {
    let logged = pylon.access_log().len();
    let res = call(protocol, pylon.addr, "GET", uri, &[], b"").await;
    pylon.wait_access_log(logged + 1);
    (res.status, res.text())
}

#[tokio::test]
async fn failures_open_the_breaker_and_successes_close_it() {
    let failing = Arc::new(AtomicBool::new(true));
    let state = failing.clone();
    let up = Upstream::with_handler(
        "up",
        Arc::new(move |_, stream| {
            match state.load(Ordering::SeqCst) {
                true => respond(stream, 500, &[], b"failed"),
                false => respond(stream, 200, &[], b"fine"),
            }
            true
        }),
    );
    let breaker = json!({"api-breaker": {
        "break_response_code": 503,
        "break_response_body": "breaker open",
        "unhealthy": {"failures": 2},
        "healthy": {"successes": 2}
    }});
    let routes = json!({"routes": [
        {"id": "orders", "uri": "/orders/*", "plugins": breaker,
         "upstream": {"nodes": {up.addr.to_string(): 1}}}
    ]});
    let pylon = Pylon::start(&routes.to_string(), "");
    for protocol in PROTOCOLS {
        // Each protocol has a URI, so a breaker, of its own.
        let uri = format!("/orders/{protocol:?}");
        let what = format!("{protocol:?}");
        failing.store(true, Ordering::SeqCst);
        assert_eq!(get(protocol, &pylon, &uri).await.0, 500, "{what}");
        assert_eq!(get(protocol, &pylon, &uri).await.0, 500, "{what}");
        // Two failures: open, for two seconds. The upstream is not asked meanwhile.
        let asked = up.request_count();
        let open = get(protocol, &pylon, &uri).await;
        assert_eq!(open, (503, "breaker open".to_owned()), "{what}");
        assert_eq!(up.request_count(), asked, "{what}: the upstream was asked");

        // The upstream recovers; once the breaker's time is over, requests reach it again.
        failing.store(false, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        let answer = loop {
            let answer = get(protocol, &pylon, &uri).await;
            if answer.0 != 503 || Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(answer, (200, "fine".to_owned()), "{what}");
        // A second success closes it and forgets the failures: one failure is not enough.
        assert_eq!(get(protocol, &pylon, &uri).await.0, 200, "{what}");
        failing.store(true, Ordering::SeqCst);
        assert_eq!(get(protocol, &pylon, &uri).await.0, 500, "{what}");
        assert_eq!(
            get(protocol, &pylon, &uri).await.0,
            500,
            "{what}: one failure, still closed"
        );
        assert_eq!(
            get(protocol, &pylon, &uri).await.0,
            503,
            "{what}: two, open again"
        );
    }
}

#[tokio::test]
async fn an_upstream_that_cannot_be_reached_counts_as_failing() {
    let closed = closed_port();
    let breaker = json!({"api-breaker": {
        "break_response_code": 599,
        "unhealthy": {"http_statuses": [502], "failures": 1}
    }});
    let routes = json!({"routes": [
        {"id": "down", "uri": "/down/*", "plugins": breaker,
         "upstream": {"nodes": {closed.addr.to_string(): 1}}}
    ]});
    let pylon = Pylon::start(&routes.to_string(), "");
    for protocol in PROTOCOLS {
        let uri = format!("/down/{protocol:?}");
        assert_eq!(get(protocol, &pylon, &uri).await.0, 502, "{protocol:?}");
        assert_eq!(get(protocol, &pylon, &uri).await.0, 599, "{protocol:?}");
    }
}
