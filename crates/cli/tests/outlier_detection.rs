//! Outlier detection through the real gateway, over HTTP/1.1 and HTTP/2 alike: a node that
//! keeps failing is ejected and gets no traffic until its time is over, longer each time;
//! no more nodes go than `max_ejection_percent` allows; and the ejection survives
//! configuration changes that leave the upstream's nodes and outlier detection alone.
//!
//! Each protocol gets a gateway and nodes of its own, so that both see the same history.
//! Waits are bounded polls; nothing asserts a duration: ejection times are read from the
//! control API, which reports what the configuration makes of them.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use support::client::{get, Response};
use support::protocols::{call, Protocol, PROTOCOLS};
use support::upstream::{respond, Upstream};
use support::{closed_port, validate, wait_until, Pylon};

/// Requests the test may send while waiting for something traffic brings about.
const MAX_REQUESTS: usize = 200;

/// A node that answers with the status the test sets, naming itself in `X-Upstream`.
struct Node {
    up: Upstream,
    status: Arc<AtomicU16>,
}

impl Node {
    fn start(name: &str, status: u16) -> Node {
        let status = Arc::new(AtomicU16::new(status));
        let (code, reply) = (status.clone(), name.to_owned());
        let up = Upstream::with_handler(
            name,
            Arc::new(move |_, stream| {
                let code = code.load(Ordering::SeqCst);
                respond(stream, code, &[("X-Upstream", &reply)], reply.as_bytes());
                true
            }),
        );
        Node { up, status }
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn requests(&self) -> usize {
        self.up.request_count()
    }
}

/// Upstream `u` over `nodes` with `outlier_detection`, `/t` routed to it, and `extra` routes.
fn routes(nodes: &[SocketAddr], outlier: &Value, extra: &[Value]) -> String {
    let nodes: serde_json::Map<String, Value> =
        nodes.iter().map(|a| (a.to_string(), json!(1))).collect();
    let mut routes = vec![json!({"id": "r", "uri": "/t", "upstream_id": "u"})];
    routes.extend_from_slice(extra);
    json!({
        "upstreams": [{"id": "u", "retries": 0, "nodes": nodes, "outlier_detection": outlier}],
        "routes": routes,
    })
    .to_string()
}

/// `GET /t` on a new connection (so both workers serve).
async fn ask(protocol: Protocol, pylon: &Pylon) -> Response {
    call(protocol, pylon.addr, "GET", "/t", &[], b"").await
}

/// Who answered: the node's name, or the gateway's own status.
fn who(res: &Response) -> String {
    res.header("x-upstream")
        .map_or_else(|| res.status.to_string(), str::to_owned)
}

/// Sends requests until `done` says so of the answers so far (bounded); returns who answered
/// each.
async fn ask_until(
    protocol: Protocol,
    pylon: &Pylon,
    mut done: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let mut answers = Vec::new();
    while !done(&answers) {
        assert!(
            answers.len() < MAX_REQUESTS,
            "{protocol:?}: not done after {MAX_REQUESTS} requests: {answers:?}"
        );
        answers.push(who(&ask(protocol, pylon).await));
    }
    answers
}

/// Sends `n` requests; returns who answered each.
async fn ask_n(protocol: Protocol, pylon: &Pylon, n: usize) -> Vec<String> {
    let mut answers = Vec::new();
    for _ in 0..n {
        answers.push(who(&ask(protocol, pylon).await));
    }
    answers
}

/// Upstream `u` as `/v1/healthcheck/upstreams/u` shows it.
fn report(pylon: &Pylon) -> Value {
    let res = get(
        pylon.control.expect("a control API"),
        "127.0.0.1",
        "/v1/healthcheck/upstreams/u",
    );
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()
}

/// The outlier state of the node at `addr`.
fn outlier(pylon: &Pylon, addr: SocketAddr) -> Value {
    let report = report(pylon);
    report["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["port"] == addr.port()))
        .map(|n| n["outlier"].clone())
        .unwrap_or_else(|| panic!("{addr} not in {report}"))
}

fn ejected(pylon: &Pylon, addr: SocketAddr) -> bool {
    outlier(pylon, addr)["ejected"] == true
}

#[tokio::test]
async fn consecutive_5xx_eject_a_node_for_longer_each_time() {
    for protocol in PROTOCOLS {
        let (a, b, c) = (
            Node::start("a", 200),
            Node::start("b", 200),
            Node::start("c", 500),
        );
        let config = json!({"consecutive_5xx": 3, "base_ejection_time": 2, "interval": 60,
                            "max_ejection_percent": 34});
        let pylon = Pylon::start(
            &routes(&[a.up.addr, b.up.addr, c.up.addr], &config, &[]),
            "",
        );
        let what = format!("{protocol:?}");

        // Three 500s in a row, whichever worker sent them: out, for base_ejection_time. (The
        // gateway counts an answer once it has passed it on: the count is waited for.)
        let answers = ask_until(protocol, &pylon, |_| c.requests() == 3).await;
        assert_eq!(count(&answers, "c"), 3, "{what}");
        wait_until(|| ejected(&pylon, c.up.addr), "c to be ejected");
        let state = outlier(&pylon, c.up.addr);
        assert_eq!(state["ejected"], true, "{what}: {state}");
        assert_eq!(
            (&state["ejections"], &state["ejection_time"]),
            (&json!(1), &json!(2.0))
        );
        let answers = ask_n(protocol, &pylon, 12).await;
        assert!(
            answers.iter().all(|w| w == "a" || w == "b"),
            "{what}: {answers:?}"
        );
        assert_eq!(c.requests(), 3, "{what}: an ejected node gets no traffic");

        // Back once its time is over; failing on, it goes again, for twice as long.
        wait_until(|| !ejected(&pylon, c.up.addr), "c to be back");
        ask_until(protocol, &pylon, |_| c.requests() == 6).await;
        wait_until(|| ejected(&pylon, c.up.addr), "c to be ejected again");
        let state = outlier(&pylon, c.up.addr);
        assert_eq!(state["ejected"], true, "{what}: {state}");
        assert_eq!(
            (
                &state["ejections"],
                &state["ejection_multiplier"],
                &state["ejection_time"]
            ),
            (&json!(2), &json!(2), &json!(4.0)),
            "{what}"
        );
        let counts = &report(&pylon)["outlier_detection"];
        assert_eq!(
            counts["ejections_enforced_consecutive_5xx"], 2,
            "{what}: {counts}"
        );

        // Healthy again: once back, it serves.
        c.answer(200);
        wait_until(|| !ejected(&pylon, c.up.addr), "c to be back");
        let answers = ask_until(protocol, &pylon, |_| c.requests() > 6).await;
        assert_eq!(answers.last().map(String::as_str), Some("c"), "{what}");
    }
}

#[tokio::test]
async fn gateway_failures_eject_a_node_that_cannot_be_reached() {
    for protocol in PROTOCOLS {
        let (a, b, closed) = (Node::start("a", 200), Node::start("b", 200), closed_port());
        let config = json!({"consecutive_gateway_failure": 2, "base_ejection_time": 30,
                            "max_ejection_percent": 34});
        let pylon = Pylon::start(
            &routes(&[a.up.addr, b.up.addr, closed.addr], &config, &[]),
            "",
        );
        let what = format!("{protocol:?}");

        // Each attempt on the closed port is the gateway's 502 (no retries): two eject it.
        ask_until(protocol, &pylon, |answers| count(answers, "502") == 2).await;
        wait_until(
            || ejected(&pylon, closed.addr),
            "the closed port to be ejected",
        );
        let counts = &report(&pylon)["outlier_detection"];
        assert_eq!(
            (
                &counts["ejections_enforced_consecutive_gateway_failure"],
                &counts["ejections_detected_consecutive_5xx"]
            ),
            (&json!(1), &json!(0)),
            "{what}: {counts}"
        );
        let answers = ask_n(protocol, &pylon, 12).await;
        assert!(
            answers.iter().all(|w| w == "a" || w == "b"),
            "{what}: {answers:?}"
        );
    }
}

#[tokio::test]
async fn max_ejection_percent_keeps_failing_nodes_in_rotation_beyond_it() {
    for protocol in PROTOCOLS {
        let (a, b, c) = (
            Node::start("a", 200),
            Node::start("b", 500),
            Node::start("c", 500),
        );
        // Half of three nodes, rounded down: one may be out.
        let config = json!({"consecutive_5xx": 2, "base_ejection_time": 30,
                            "max_ejection_percent": 50});
        let pylon = Pylon::start(
            &routes(&[a.up.addr, b.up.addr, c.up.addr], &config, &[]),
            "",
        );
        let what = format!("{protocol:?}");

        ask_until(protocol, &pylon, |_| b.requests() >= 2 && c.requests() >= 2).await;
        wait_until(
            || report(&pylon)["outlier_detection"]["ejections_overflow"].as_u64() >= Some(1),
            "the second failing node's ejection to be refused",
        );
        let counts = &report(&pylon)["outlier_detection"];
        assert_eq!(counts["ejections_active"], 1, "{what}: {counts}");
        let (out, kept) = if ejected(&pylon, b.up.addr) {
            (&b, &c)
        } else {
            (&c, &b)
        };
        assert!(!ejected(&pylon, kept.up.addr), "{what}");

        let (out_before, kept_before) = (out.requests(), kept.requests());
        let answers = ask_n(protocol, &pylon, 12).await;
        assert_eq!(
            out.requests(),
            out_before,
            "{what}: the ejected node gets nothing"
        );
        assert!(
            kept.requests() > kept_before,
            "{what}: the other still gets traffic"
        );
        assert!(answers.contains(&kept.up.name), "{what}: {answers:?}");
        assert!(answers.contains(&"a".to_owned()), "{what}: {answers:?}");
    }
}

#[tokio::test]
async fn an_ejection_survives_changes_that_leave_the_nodes_and_outlier_detection_alone() {
    for protocol in PROTOCOLS {
        let (a, b, c) = (
            Node::start("a", 200),
            Node::start("b", 200),
            Node::start("c", 500),
        );
        let other = Node::start("other", 200);
        let nodes = [a.up.addr, b.up.addr, c.up.addr];
        let config = json!({"consecutive_5xx": 2, "base_ejection_time": 30,
                            "max_ejection_percent": 34});
        let pylon = Pylon::start(&routes(&nodes, &config, &[]), "");
        let what = format!("{protocol:?}");
        ask_until(protocol, &pylon, |_| c.requests() == 2).await;
        wait_until(|| ejected(&pylon, c.up.addr), "c to be ejected");

        // Another route, to an upstream of its own.
        let other_route = json!({"id": "other", "uri": "/other",
                                 "upstream": {"nodes": {other.up.addr.to_string(): 1}}});
        pylon.reload(&routes(&nodes, &config, &[other_route]));
        let res = call(protocol, pylon.addr, "GET", "/other", &[], b"").await;
        assert_eq!(who(&res), "other", "{what}");
        assert!(
            ejected(&pylon, c.up.addr),
            "{what}: after another route came"
        );
        let answers = ask_n(protocol, &pylon, 12).await;
        assert!(
            answers.iter().all(|w| w == "a" || w == "b"),
            "{what}: {answers:?}"
        );
        assert_eq!(c.requests(), 2, "{what}");

        // The upstream itself changes, but not its nodes nor its outlier detection.
        let mut changed: Value = serde_json::from_str(&routes(&nodes, &config, &[])).unwrap();
        changed["upstreams"][0]["timeout"] = json!({"connect": 5, "send": 5, "read": 5});
        pylon.reload(&changed.to_string());
        assert!(
            ejected(&pylon, c.up.addr),
            "{what}: after the upstream's timeouts changed"
        );
        ask_n(protocol, &pylon, 12).await;
        assert_eq!(c.requests(), 2, "{what}");

        // Other outlier detection: the node starts afresh, and gets traffic again.
        let lenient = json!({"consecutive_5xx": 100, "base_ejection_time": 30});
        pylon.reload(&routes(&nodes, &lenient, &[]));
        assert!(!ejected(&pylon, c.up.addr), "{what}");
        assert_eq!(outlier(&pylon, c.up.addr)["ejections"], 0, "{what}");
        ask_until(protocol, &pylon, |_| c.requests() > 2).await;
    }
}

#[test]
fn bad_outlier_detection_is_refused_with_its_path() {
    let text = json!({"upstreams": [{"id": "u", "nodes": {"127.0.0.1:80": 1},
        "outlier_detection": {"consecutive_5xx": 0, "max_ejection_percent": 101,
                              "base_ejection_time": 60, "max_ejection_time": 30}}]});
    let (code, _, stderr) = validate(&text.to_string());
    assert_ne!(code, Some(0));
    for expected in [
        "upstreams[0].outlier_detection.consecutive_5xx: must be 1..65535",
        "upstreams[0].outlier_detection.max_ejection_percent: must be 0..100 (a percentage)",
        "upstreams[0].outlier_detection.max_ejection_time: must be at least base_ejection_time (60 seconds)",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

fn count(answers: &[String], who: &str) -> usize {
    answers.iter().filter(|w| *w == who).count()
}
